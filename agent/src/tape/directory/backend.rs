//! [`DirectoryBackend`]: put, stat, retrieve and catalogue on a directory tree.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{DirectoryConfig, SIDECAR_SUFFIX};
use crate::tape::io::{copy_hashing, sync_dir};
use crate::tape::{
    blocking, check_batch, check_existing, check_read_back, key_of, Batch, Capabilities, Health,
    Receipt, RunRef, StoredFile, TapeBackend, TapeError, TapeFile, VerifyKind, VerifyLevel,
    VerifyReport,
};

/// The sidecar written next to each stored file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Sidecar {
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub md5: String,
}

/// A directory tree standing for tape.
#[derive(Debug)]
pub struct DirectoryBackend {
    pub(super) cfg: DirectoryConfig,
}

impl DirectoryBackend {
    /// A backend over `cfg.root` (created on the first put if missing).
    pub fn new(cfg: DirectoryConfig) -> Self {
        Self { cfg }
    }

    pub(super) fn data_path(&self, key: &str) -> PathBuf {
        self.cfg.root.join(key)
    }

    fn sidecar_path(&self, key: &str) -> PathBuf {
        self.cfg.root.join(format!("{key}{SIDECAR_SUFFIX}"))
    }

    fn err(&self, op: &'static str, path: &Path, e: std::io::Error) -> TapeError {
        TapeError::io(&self.cfg.name, op, path, e)
    }

    /// The stored file under `key`, blocking.
    pub(super) fn stat_blocking(&self, key: &str) -> Result<Option<StoredFile>, TapeError> {
        let side = self.sidecar_path(key);
        let text = match std::fs::read(&side) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err("reading sidecar", &side, e)),
        };
        let sc: Sidecar = serde_json::from_slice(&text).map_err(|e| TapeError::Parse {
            backend: self.cfg.name.clone(),
            context: format!("key {key}"),
            what: "sidecar",
            argv: Vec::new(),
            reason: format!(
                "{e}; content: {:?}",
                String::from_utf8_lossy(&text)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ),
        })?;
        let data = self.data_path(key);
        match std::fs::symlink_metadata(&data) {
            // A sidecar without its data (crash between the two renames) is not stored.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err("stat", &data, e)),
            Ok(m) if !m.is_file() || m.len() != sc.size => return Ok(None),
            Ok(_) => {}
        }
        Ok(Some(StoredFile {
            key: key.to_owned(),
            size: Some(sc.size),
            sha256: Some(sc.sha256),
            md5: Some(sc.md5),
            crc32: None,
            location: data.display().to_string(),
            source_sha256: None,
        }))
    }

    /// Write one file: temp copy with hashing, fsync, sidecar, rename, directory fsync.
    fn write_one(&self, key: &str, file: &TapeFile) -> Result<StoredFile, TapeError> {
        let dest = self.data_path(key);
        let dir = dest.parent().unwrap_or(&self.cfg.root).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| self.err("creating directory", &dir, e))?;
        let tmp = dir.join(format!(
            ".{}.ferry-tmp-{}",
            dest.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let mut src =
            File::open(&file.local).map_err(|e| self.err("opening source", &file.local, e))?;
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| self.err("creating", &tmp, e))?;
        let result = (|| {
            let digest = copy_hashing(&mut src, Some(&mut out as &mut dyn Write))
                .map_err(|e| self.err("copying to", &tmp, e))?;
            out.sync_all().map_err(|e| self.err("fsync", &tmp, e))?;
            let stored = StoredFile {
                key: key.to_owned(),
                size: Some(digest.size),
                sha256: Some(digest.sha256_hex()),
                md5: Some(digest.md5_hex()),
                crc32: None,
                location: dest.display().to_string(),
                source_sha256: None,
            };
            // The bytes read must be the manifest's bytes: a source changed since the
            // manifest was made is not backed up under the manifest's digest.
            check_read_back(
                &self.cfg.name,
                &StoredFile {
                    sha256: Some(file.sha256.clone()),
                    md5: Some(file.md5.clone()),
                    size: Some(file.size),
                    ..stored.clone()
                },
                &digest,
            )?;
            let sidecar = Sidecar {
                key: key.to_owned(),
                size: digest.size,
                sha256: digest.sha256_hex(),
                md5: digest.md5_hex(),
            };
            self.write_sidecar(key, &sidecar)?;
            std::fs::rename(&tmp, &dest).map_err(|e| self.err("renaming into place", &dest, e))?;
            sync_dir(&dir).map_err(|e| self.err("fsync directory", &dir, e))?;
            Ok(stored)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn write_sidecar(&self, key: &str, sc: &Sidecar) -> Result<(), TapeError> {
        let side = self.sidecar_path(key);
        let tmp = PathBuf::from(format!("{}.tmp-{}", side.display(), std::process::id()));
        let json = serde_json::to_vec_pretty(sc).map_err(|e| TapeError::Internal {
            backend: self.cfg.name.clone(),
            reason: format!("encoding sidecar: {e}"),
        })?;
        let mut f = File::create(&tmp).map_err(|e| self.err("creating sidecar", &tmp, e))?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .map_err(|e| self.err("writing sidecar", &tmp, e))?;
        std::fs::rename(&tmp, &side).map_err(|e| self.err("renaming sidecar", &side, e))
    }

    fn put_blocking(&self, batch: &Batch) -> Result<Receipt, TapeError> {
        check_batch(&self.cfg.name, batch)?;
        // Probe every key first: a conflict anywhere writes nothing.
        let mut existing = Vec::with_capacity(batch.files.len());
        for f in &batch.files {
            let key = batch.key(f);
            let stored = self.stat_blocking(&key)?;
            let present = check_existing(&self.cfg.name, &key, f, stored.as_ref())?;
            existing.push(if present { stored } else { None });
        }
        let mut files = Vec::with_capacity(batch.files.len());
        let mut written = 0;
        for (f, stored) in batch.files.iter().zip(existing) {
            match stored {
                Some(s) => files.push(s),
                None => {
                    files.push(self.write_one(&batch.key(f), f)?);
                    written += 1;
                }
            }
        }
        Ok(Receipt {
            backend: self.cfg.name.clone(),
            run: batch.run.clone(),
            reference: self.cfg.root.join(&batch.run.name).display().to_string(),
            volumes: Vec::new(),
            files,
            written,
        })
    }

    fn retrieve_blocking(
        &self,
        receipt: &Receipt,
        to_dir: &Path,
    ) -> Result<Vec<PathBuf>, TapeError> {
        let mut out = Vec::new();
        let prefix = format!("{}/", receipt.run.name);
        for s in &receipt.files {
            let rel = s.key.strip_prefix(&prefix).unwrap_or(&s.key);
            let dest = to_dir.join(rel);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| self.err("creating directory", parent, e))?;
            }
            let src_path = self.data_path(&s.key);
            let mut src = match File::open(&src_path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(TapeError::NotFound {
                        backend: self.cfg.name.clone(),
                        key: s.key.clone(),
                    })
                }
                r => r.map_err(|e| self.err("opening", &src_path, e))?,
            };
            let mut f = File::create(&dest).map_err(|e| self.err("creating", &dest, e))?;
            let digest = copy_hashing(&mut src, Some(&mut f as &mut dyn Write))
                .map_err(|e| self.err("retrieving to", &dest, e))?;
            f.sync_all().map_err(|e| self.err("fsync", &dest, e))?;
            check_read_back(&self.cfg.name, s, &digest)?;
            out.push(dest);
        }
        Ok(out)
    }

    fn catalogue_blocking(&self) -> Result<Vec<StoredFile>, TapeError> {
        let mut out = Vec::new();
        let mut stack = vec![self.cfg.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                r => r.map_err(|e| self.err("listing", &dir, e))?,
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.err("listing", &dir, e))?;
                let path = entry.path();
                let ft = entry.file_type().map_err(|e| self.err("stat", &path, e))?;
                if ft.is_dir() {
                    stack.push(path);
                } else if let Some(key) = path
                    .strip_prefix(&self.cfg.root)
                    .ok()
                    .and_then(|rel| rel.to_str())
                    .and_then(|rel| rel.strip_suffix(SIDECAR_SUFFIX))
                {
                    if let Some(s) = self.stat_blocking(key)? {
                        out.push(s);
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

#[async_trait]
impl TapeBackend for DirectoryBackend {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            verify: vec![VerifyKind::Metadata, VerifyKind::Sample, VerifyKind::Full],
            retrieve: true,
            batch_bytes: None,
            copies: 1,
            records_sha256: true,
            catalogue: true,
        }
    }

    async fn health(&self) -> Result<Health, TapeError> {
        let root = self.cfg.root.clone();
        let name = self.cfg.name.clone();
        blocking(&name, move || {
            let probe = root.join(format!(".ferry-health-{}", std::process::id()));
            let r = std::fs::create_dir_all(&root)
                .and_then(|()| File::create(&probe).map(drop))
                .and_then(|()| std::fs::remove_file(&probe));
            Ok(match r {
                Ok(()) => Health {
                    ok: true,
                    detail: format!("{} is writable", root.display()),
                },
                Err(e) => Health {
                    ok: false,
                    detail: format!("{} is not writable: {e}", root.display()),
                },
            })
        })
        .await
    }

    async fn stat(&self, run: &RunRef, path: &str) -> Result<Option<StoredFile>, TapeError> {
        let me = self.clone_cfg();
        let key = key_of(&run.name, path);
        blocking(&self.cfg.name, move || me.stat_blocking(&key)).await
    }

    async fn put(&self, batch: &Batch) -> Result<Receipt, TapeError> {
        let me = self.clone_cfg();
        let batch = batch.clone();
        blocking(&self.cfg.name, move || me.put_blocking(&batch)).await
    }

    async fn verify(
        &self,
        receipt: &Receipt,
        level: VerifyLevel,
    ) -> Result<VerifyReport, TapeError> {
        let me = self.clone_cfg();
        let receipt = receipt.clone();
        blocking(&self.cfg.name, move || me.verify_blocking(&receipt, level)).await
    }

    async fn retrieve(&self, receipt: &Receipt, to_dir: &Path) -> Result<Vec<PathBuf>, TapeError> {
        let me = self.clone_cfg();
        let receipt = receipt.clone();
        let to_dir = to_dir.to_path_buf();
        blocking(&self.cfg.name, move || {
            me.retrieve_blocking(&receipt, &to_dir)
        })
        .await
    }

    async fn catalogue(&self) -> Result<Vec<StoredFile>, TapeError> {
        let me = self.clone_cfg();
        blocking(&self.cfg.name, move || me.catalogue_blocking()).await
    }
}

impl DirectoryBackend {
    /// A copy for a blocking task (the backend is only its settings).
    fn clone_cfg(&self) -> DirectoryBackend {
        DirectoryBackend {
            cfg: self.cfg.clone(),
        }
    }
}
