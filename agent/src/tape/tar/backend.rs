//! [`TarBackend`]: write sessions on N drives in parallel, the label store as the index.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::checksum::Md5;
use async_trait::async_trait;
use sha2::Digest;
use sha2::Sha256;
use tokio::sync::Mutex;

use super::changer::Changer;
use super::drive::Drive;
use super::labels::{LabelStore, Member, TapeFileEntry, TapeFileKind, TapeRecord};
use super::lock::{lock_labels, LabelsLock};
use super::mount::Library;
use super::tee::{self, Feed};
use super::{TarConfig, CATALOGUE_MEMBER};
use crate::tape::io::copy_hashing;
use crate::tape::{
    blocking, check_batch, check_existing, check_read_back, key_of, Batch, Capabilities, Health,
    Receipt, RunRef, StoredFile, TapeBackend, TapeError, TapeFile, VerifyKind, VerifyLevel,
    VerifyReport,
};

/// tar archives on tape drives, papertape style.
#[derive(Debug)]
pub struct TarBackend {
    pub(super) cfg: TarConfig,
    /// One put, verify or retrieve at a time: drives are serial devices.
    pub(super) busy: Mutex<()>,
    /// The tape library robot, if any.
    pub(super) changer: Option<Changer>,
}

/// What one write session did: the tape files written (even when it failed later), how
/// many archives of those asked for, and how it ended.
struct Session {
    entries: Vec<TapeFileEntry>,
    done: usize,
    result: Result<(), TapeError>,
}

/// One copy of a batch: the tape files written, per tape label.
type Written = Vec<(String, Vec<TapeFileEntry>)>;

/// A reader that hashes what passes through (SHA-256 and MD5), for files going to tape.
struct HashingReader<R> {
    inner: R,
    sha256: Sha256,
    md5: Md5,
    size: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha256.update(&buf[..n]);
        self.md5.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Split files into archives of at most `limit` bytes (each archive at least one file).
pub(super) fn split_archives(files: &[TapeFile], limit: u64) -> Vec<Vec<&TapeFile>> {
    let mut out: Vec<Vec<&TapeFile>> = Vec::new();
    let mut size = 0;
    for f in files {
        match out.last_mut() {
            Some(cur) if size + f.size <= limit => {
                cur.push(f);
                size += f.size;
            }
            _ => {
                out.push(vec![f]);
                size = f.size;
            }
        }
    }
    out
}

impl TarBackend {
    /// A backend over the configured drives.
    pub fn new(cfg: TarConfig) -> Result<Self, TapeError> {
        cfg.check()?;
        Ok(Self {
            changer: cfg.changer.clone().map(|c| Changer::new(&cfg.name, c)),
            cfg,
            busy: Mutex::new(()),
        })
    }

    pub(super) fn load(&self) -> Result<LabelStore, TapeError> {
        LabelStore::load(&self.cfg.name, &self.cfg.labels)
    }

    pub(super) fn drive_for(&self, store: &LabelStore, label: &str) -> Result<Drive, TapeError> {
        let device = store.device_of(label).ok_or_else(|| TapeError::Drive {
            backend: self.cfg.name.clone(),
            device: PathBuf::new(),
            what: format!("tape {label} is not loaded in any drive of this backend"),
            command: Box::new(crate::tape::CommandRun {
                argv: Vec::new(),
                status: None,
                stderr_tail: String::new(),
            }),
        })?;
        Ok(Drive::new(&self.cfg, PathBuf::from(device)))
    }

    /// Label for a tape seen for the first time in `device`.
    pub(super) fn new_label(&self, copy: usize) -> String {
        format!(
            "{}-{}-{:06x}",
            self.cfg.name,
            copy,
            rand::random::<u32>() & 0x00ff_ffff
        )
    }

    fn blocking_put(&self, batch: &Batch) -> Result<Receipt, TapeError> {
        let name = &self.cfg.name;
        check_batch(name, batch)?;
        let _lock = self.lock(&format!("put of run {}", batch.run.name))?;
        let store = self.load()?;
        let mut missing = Vec::new();
        let mut existing: Vec<Option<StoredFile>> = Vec::new();
        for f in &batch.files {
            let key = batch.key(f);
            let stored = stored_from(&store, &key);
            if check_existing(name, &key, f, stored.as_ref())? {
                existing.push(stored);
            } else {
                existing.push(None);
                missing.push(f.clone());
            }
        }
        let copies = self.cfg.copies as usize;
        let lib = std::sync::Mutex::new(Library {
            store,
            claimed: BTreeSet::new(),
        });
        if !missing.is_empty() {
            // Every drive gets a known tape with room first (tapes seen for the first time
            // get a label now, before anything is written, so a failed session leaves a
            // known tape whose partial data the next put overwrites).
            let mut labels = Vec::new();
            for i in 0..copies {
                let mounted = self.mount_for_write(&lib, i, &batch.run);
                self.save_lib(&lib)?;
                labels.push(mounted?);
            }
            let archives: Vec<Vec<TapeFile>> = split_archives(&missing, self.cfg.batch_size)
                .into_iter()
                .map(|a| a.into_iter().cloned().collect())
                .collect();
            // One thread per drive, all copies at once, fed by one reader of the sources.
            let (txs, feeds) = tee::channels(copies);
            let (fed, results) = std::thread::scope(|s| {
                let (archives, run) = (&archives, &batch.run);
                let feeder = s.spawn(move || tee::feed(name, run, archives, txs));
                let handles: Vec<_> = labels
                    .iter()
                    .zip(feeds)
                    .enumerate()
                    .map(|(i, (label, feed))| {
                        let lib = &lib;
                        s.spawn(move || self.write_copy(lib, i, label.clone(), run, archives, feed))
                    })
                    .collect();
                let panicked = |what: &str| TapeError::Internal {
                    backend: name.clone(),
                    reason: format!("{what} thread panicked"),
                };
                let results: Vec<Result<Written, TapeError>> = handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(panicked("drive"))))
                    .collect();
                let fed = feeder
                    .join()
                    .unwrap_or_else(|_| Err(panicked("source reader")));
                (fed, results)
            });
            let mut written = Vec::new();
            // A source that cannot be read or differs explains the drives' failures.
            let mut first_err = fed.err();
            for r in results {
                match r {
                    Ok(w) => written.push(w),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            // Tape changes happened whatever the outcome: record them; the batch's
            // tape files only when every copy is complete.
            if first_err.is_none() {
                let mut lib = self.lib(&lib)?;
                for (label, entries) in written.into_iter().flatten() {
                    if let Some(t) = lib.store.tapes.get_mut(&label) {
                        t.files.extend(entries);
                    }
                }
            }
            self.save_lib(&lib)?;
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        let store = lib.into_inner().map_err(|_| self.poisoned())?.store;
        let mut files = Vec::with_capacity(batch.files.len());
        for (f, e) in batch.files.iter().zip(existing) {
            let stored = match e {
                Some(s) => s,
                None => stored_from(&store, &batch.key(f)).ok_or_else(|| TapeError::Internal {
                    backend: name.clone(),
                    reason: format!(
                        "{} missing from the label store after writing",
                        batch.key(f)
                    ),
                })?,
            };
            files.push(StoredFile {
                source_sha256: Some(f.sha256.clone()),
                ..stored
            });
        }
        let mut volumes: Vec<String> = Vec::new();
        for f in &batch.files {
            for (label, _, _) in store.find(&batch.key(f)) {
                if !volumes.iter().any(|v| v == label) {
                    volumes.push(label.to_owned());
                }
            }
        }
        let reference = files
            .first()
            .map(|f| f.location.split('/').next().unwrap_or("").to_owned())
            .unwrap_or_default();
        Ok(Receipt {
            backend: name.clone(),
            run: batch.run.clone(),
            reference: format!(
                "{reference} ({} volumes: {})",
                volumes.len(),
                volumes.join(", ")
            ),
            volumes,
            files,
            written: missing.len(),
        })
    }

    /// The label store's cross-process lock, for `op`.
    pub(super) fn lock(&self, op: &str) -> Result<LabelsLock, TapeError> {
        lock_labels(&self.cfg.name, &self.cfg.labels, self.cfg.lock_timeout, op)
    }

    fn poisoned(&self) -> TapeError {
        TapeError::Internal {
            backend: self.cfg.name.clone(),
            reason: "a drive thread panicked holding the label store".into(),
        }
    }

    pub(super) fn lib<'a>(
        &self,
        lib: &'a std::sync::Mutex<Library>,
    ) -> Result<std::sync::MutexGuard<'a, Library>, TapeError> {
        lib.lock().map_err(|_| self.poisoned())
    }

    pub(super) fn save_lib(&self, lib: &std::sync::Mutex<Library>) -> Result<(), TapeError> {
        self.lib(lib)?.store.save(&self.cfg.name, &self.cfg.labels)
    }

    /// One copy of the batch on drive `i`, starting on tape `label`: with a changer, a
    /// full tape is swapped for the next one and the archive that did not fit is written
    /// again on it. The tape files written, per tape.
    fn write_copy(
        &self,
        lib: &std::sync::Mutex<Library>,
        i: usize,
        mut label: String,
        run: &RunRef,
        archives: &[Vec<TapeFile>],
        mut feed: Feed,
    ) -> Result<Written, TapeError> {
        let drive = Drive::new(&self.cfg, self.cfg.devices[i].clone());
        let mut out = Vec::new();
        let mut rest = archives;
        loop {
            let record = self
                .lib(lib)?
                .store
                .tapes
                .get(&label)
                .cloned()
                .unwrap_or_else(|| TapeRecord {
                    label: label.clone(),
                    ..TapeRecord::default()
                });
            let base = archives.len() - rest.len();
            let s = self.session(&drive, record, run, rest, base, &mut feed);
            if !s.entries.is_empty() {
                out.push((label.clone(), s.entries));
            }
            match s.result {
                Ok(()) => return Ok(out),
                Err(e @ TapeError::TapeFull { .. }) if self.changer.is_some() => {
                    rest = &rest[s.done..];
                    label = self.swap_full(lib, i, &label, run, e)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A tape Ferry has no label for must be empty: file 0 reads back no bytes.
    fn ensure_blank(&self, device: &Path, label: &str) -> Result<(), TapeError> {
        let drive = Drive::new(&self.cfg, device.to_path_buf());
        drive.position(0)?;
        let n = drive.read_file(|r| {
            let mut buf = [0u8; 512];
            r.read(&mut buf)
                .map_err(|e| TapeError::io(&self.cfg.name, "reading tape file 0", device, e))
        })?;
        if n > 0 {
            return Err(TapeError::Labels {
                backend: self.cfg.name.clone(),
                path: self.cfg.labels.clone(),
                reason: format!(
                    "the tape in {} holds data but is not in the label store; refusing to \
                     overwrite it (would have labelled it {label})",
                    device.display()
                ),
            });
        }
        Ok(())
    }

    /// Take a tape Ferry sees for the first time in drive `i` into the store as `label`,
    /// after checking it is blank.
    pub(super) fn adopt_blank(
        &self,
        store: &mut LabelStore,
        i: usize,
        label: String,
    ) -> Result<String, TapeError> {
        let device = &self.cfg.devices[i];
        Drive::new(&self.cfg, device.clone()).status()?;
        self.ensure_blank(device, &label)?;
        store
            .devices
            .insert(device.display().to_string(), label.clone());
        store.tapes.insert(
            label.clone(),
            TapeRecord {
                label: label.clone(),
                ..TapeRecord::default()
            },
        );
        Ok(label)
    }

    /// One drive's write session: archives (and catalogue) at the end of `record`. On a
    /// fresh tape: catalogue (file 0), archives; on a tape with data: archives, then a
    /// catalogue of the whole tape. Reports what was written even when it fails.
    /// `archives` are the batch's archives from number `base` on; each comes from the
    /// feed, or from disk when the feed is past it (written again after a tape change).
    fn session(
        &self,
        drive: &Drive,
        record: TapeRecord,
        run: &RunRef,
        archives: &[Vec<TapeFile>],
        base: usize,
        feed: &mut Feed,
    ) -> Session {
        let mut out = Session {
            entries: Vec::new(),
            done: 0,
            result: Ok(()),
        };
        out.result = self.session_steps(drive, record, run, archives, base, feed, &mut out);
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn session_steps(
        &self,
        drive: &Drive,
        record: TapeRecord,
        run: &RunRef,
        archives: &[Vec<TapeFile>],
        base: usize,
        feed: &mut Feed,
        out: &mut Session,
    ) -> Result<(), TapeError> {
        drive.status()?;
        let start = record.files.len() as u64;
        let fresh = start == 0;
        // Plan the entries (with the manifest's checksums; the write checks they hold).
        let first_archive = if fresh { 1 } else { start };
        let planned: Vec<TapeFileEntry> = archives
            .iter()
            .enumerate()
            .map(|(i, files)| TapeFileEntry {
                file_no: first_archive + i as u64,
                kind: TapeFileKind::Archive,
                run: Some(run.name.clone()),
                members: files
                    .iter()
                    .map(|f| Member {
                        key: key_of(&run.name, &f.path),
                        size: f.size,
                        sha256: f.sha256.clone(),
                        md5: f.md5.clone(),
                    })
                    .collect(),
            })
            .collect();
        let catalogue = |file_no| TapeFileEntry {
            file_no,
            kind: TapeFileKind::Catalogue,
            run: None,
            members: Vec::new(),
        };
        let mut after = record.clone();
        after.full = false;
        if fresh {
            after.files.push(catalogue(0));
        }
        after.files.extend(planned.iter().cloned());
        let trailing = catalogue(first_archive + archives.len() as u64);
        if !fresh {
            after.files.push(trailing.clone());
        }
        drive.position(start)?;
        if fresh {
            self.write_catalogue(drive, &after, run)?;
            out.entries.push(catalogue(0));
        }
        for (i, (files, entry)) in archives.iter().zip(planned).enumerate() {
            let from_feed = feed.next_archive == base + i;
            let source = if from_feed { Some(&mut *feed) } else { None };
            let written = self.write_archive(drive, &record.label, run, files, &entry, source);
            if written.is_err() && from_feed {
                feed.skip_archive();
            }
            written?;
            out.entries.push(entry);
            out.done += 1;
        }
        if !fresh {
            self.write_catalogue(drive, &after, run)?;
            out.entries.push(trailing);
        }
        Ok(())
    }

    fn full_err(
        &self,
        drive: &Drive,
        label: &str,
        run: &RunRef,
    ) -> impl FnOnce(crate::tape::CommandRun) -> TapeError {
        let (backend, device, label, run) = (
            self.cfg.name.clone(),
            drive.device.clone(),
            label.to_owned(),
            run.name.clone(),
        );
        move |command| TapeError::TapeFull {
            backend,
            run,
            volume: label,
            device,
            command: Box::new(command),
        }
    }

    fn write_catalogue(
        &self,
        drive: &Drive,
        record: &TapeRecord,
        run: &RunRef,
    ) -> Result<(), TapeError> {
        let json = serde_json::to_vec_pretty(record).map_err(|e| TapeError::Internal {
            backend: self.cfg.name.clone(),
            reason: format!("encoding catalogue: {e}"),
        })?;
        let device = drive.device.clone();
        drive.write_file(
            |w| {
                let mut b = ::tar::Builder::new(w);
                let mut h = ::tar::Header::new_ustar();
                h.set_size(json.len() as u64);
                h.set_mode(0o644);
                h.set_mtime(unix_now());
                b.append_data(&mut h, CATALOGUE_MEMBER, json.as_slice())
                    .and_then(|()| b.finish())
                    .map_err(|e| TapeError::io(&self.cfg.name, "writing catalogue to", &device, e))
            },
            self.full_err(drive, &record.label, run),
        )
    }

    fn write_archive(
        &self,
        drive: &Drive,
        label: &str,
        run: &RunRef,
        files: &[TapeFile],
        entry: &TapeFileEntry,
        feed: Option<&mut Feed>,
    ) -> Result<(), TapeError> {
        let name = &self.cfg.name;
        let device = drive.device.clone();
        let header = |f: &TapeFile| {
            let mut h = ::tar::Header::new_gnu();
            h.set_size(f.size);
            h.set_mode(0o644);
            h.set_mtime(unix_now());
            h
        };
        if let Some(feed) = feed {
            // The bytes come read and hashed once, for every drive (see `tee.rs`).
            return drive.write_file(
                |w| {
                    let to_tape = |e| TapeError::io(name, "writing to tape", &device, e);
                    let mut b = ::tar::Builder::new(w);
                    for (f, m) in files.iter().zip(&entry.members) {
                        b.append_data(&mut header(f), &m.key, feed.file())
                            .map_err(to_tape)?;
                    }
                    feed.end_archive().map_err(to_tape)?;
                    b.finish().map_err(to_tape)
                },
                self.full_err(drive, label, run),
            );
        }
        // Written again from disk after a tape change: read and checked once more.
        drive.write_file(
            |w| {
                let mut b = ::tar::Builder::new(w);
                for (f, m) in files.iter().zip(&entry.members) {
                    let src = File::open(&f.local)
                        .map_err(|e| TapeError::io(name, "opening source", &f.local, e))?;
                    let mut h = header(f);
                    let mut reader = HashingReader {
                        inner: src.take(f.size),
                        sha256: Sha256::new(),
                        md5: Md5::new(),
                        size: 0,
                    };
                    b.append_data(&mut h, &m.key, &mut reader)
                        .map_err(|e| TapeError::io(name, "writing to tape", &device, e))?;
                    let sha = hex::encode(reader.sha256.finalize());
                    let md5 = hex::encode(reader.md5.finalize());
                    if reader.size != f.size || sha != f.sha256 || md5 != f.md5 {
                        return Err(TapeError::Mismatch {
                            backend: name.clone(),
                            key: m.key.clone(),
                            what: "source file while writing to tape",
                            expected: format!("{} bytes sha256 {}", f.size, f.sha256),
                            found: format!("{} bytes sha256 {sha}", reader.size),
                        });
                    }
                }
                b.finish()
                    .map_err(|e| TapeError::io(name, "writing to tape", &device, e))
            },
            self.full_err(drive, label, run),
        )
    }

    fn blocking_retrieve(
        &self,
        receipt: &Receipt,
        to_dir: &Path,
    ) -> Result<Vec<PathBuf>, TapeError> {
        let why = format!("retrieve of run {}", receipt.run.name);
        let _lock = self.lock(&why)?;
        let lib = std::sync::Mutex::new(Library {
            store: self.load()?,
            claimed: BTreeSet::new(),
        });
        let mut remaining: Vec<&StoredFile> = receipt.files.iter().collect();
        let mut out = Vec::new();
        let mut last_err = None;
        // A receipt without volumes (rebuilt from `stat` answers, as `ferry recall` does for
        // a copy recorded before volumes were): every tape the label store says holds it.
        let mut labels = receipt.volumes.clone();
        if labels.is_empty() {
            let library = self.lib(&lib)?;
            for s in &receipt.files {
                for (label, _, _) in library.store.find(&s.key) {
                    if !labels.iter().any(|l| l == label) {
                        labels.push(label.to_owned());
                    }
                }
            }
        }
        // Each file from the first volume holding it whose drive reads; another copy if
        // it does not.
        for label in &labels {
            if remaining.is_empty() {
                break;
            }
            let holds = self.lib(&lib)?.store.tapes.get(label).is_some_and(|t| {
                t.files
                    .iter()
                    .flat_map(|f| &f.members)
                    .any(|m| remaining.iter().any(|s| s.key == m.key))
            });
            if !holds {
                continue;
            }
            let got = self.mount_for_read(&lib, 0, label, &why).and_then(|drive| {
                let store = self.lib(&lib)?.store.clone();
                self.retrieve_from(&drive, &store, label, &remaining, receipt, to_dir)
            });
            match got {
                Ok(got) => {
                    remaining.retain(|s| !got.iter().any(|(k, _)| *k == s.key));
                    out.extend(got.into_iter().map(|(_, p)| p));
                }
                Err(e @ TapeError::Mismatch { .. }) => {
                    self.save_lib(&lib)?;
                    return Err(e);
                }
                Err(e) => last_err = Some(e),
            }
        }
        self.save_lib(&lib)?;
        if !remaining.is_empty() {
            return Err(last_err.unwrap_or_else(|| TapeError::NotFound {
                backend: self.cfg.name.clone(),
                key: format!(
                    "{} of {} files of run {} on volumes {}",
                    remaining.len(),
                    receipt.files.len(),
                    receipt.run.name,
                    receipt.volumes.join(", ")
                ),
            }));
        }
        Ok(out)
    }

    /// The files of `wanted` that tape `label` (in `drive`) holds, into `to_dir`.
    fn retrieve_from(
        &self,
        drive: &Drive,
        store: &LabelStore,
        label: &str,
        wanted: &[&StoredFile],
        receipt: &Receipt,
        to_dir: &Path,
    ) -> Result<Vec<(String, PathBuf)>, TapeError> {
        let name = &self.cfg.name;
        let tape = store.tapes.get(label).ok_or_else(|| TapeError::NotFound {
            backend: name.clone(),
            key: label.to_owned(),
        })?;
        let prefix = format!("{}/", receipt.run.name);
        let mut out = Vec::new();
        for entry in &tape.files {
            let wanted: Vec<&StoredFile> = wanted
                .iter()
                .copied()
                .filter(|s| entry.members.iter().any(|m| m.key == s.key))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            drive.position(entry.file_no)?;
            let got = drive.read_file(|r| {
                let mut archive = ::tar::Archive::new(r);
                let mut got = Vec::new();
                let entries = archive
                    .entries()
                    .map_err(|e| TapeError::io(name, "reading tar from", &drive.device, e))?;
                for e in entries {
                    let mut e =
                        e.map_err(|e| TapeError::io(name, "reading tar from", &drive.device, e))?;
                    let key = e
                        .path()
                        .map_err(|e| TapeError::io(name, "reading tar from", &drive.device, e))?
                        .to_string_lossy()
                        .into_owned();
                    let Some(s) = wanted.iter().find(|s| s.key == key) else {
                        continue;
                    };
                    let rel = key.strip_prefix(&prefix).unwrap_or(&key);
                    let dest = to_dir.join(rel);
                    if let Some(p) = dest.parent() {
                        std::fs::create_dir_all(p)
                            .map_err(|e| TapeError::io(name, "creating directory", p, e))?;
                    }
                    let mut f = File::create(&dest)
                        .map_err(|e| TapeError::io(name, "creating", &dest, e))?;
                    let digest = copy_hashing(&mut e, Some(&mut f as &mut dyn Write))
                        .map_err(|e| TapeError::io(name, "retrieving to", &dest, e))?;
                    f.sync_all()
                        .map_err(|e| TapeError::io(name, "fsync", &dest, e))?;
                    check_read_back(name, s, &digest)?;
                    got.push((key.clone(), dest));
                    if got.len() == wanted.len() {
                        break;
                    }
                }
                Ok(got)
            })?;
            if got.len() != wanted.len() {
                return Err(TapeError::Mismatch {
                    backend: name.clone(),
                    key: format!("{label}:{}", entry.file_no),
                    what: "members in tape file",
                    expected: wanted.len().to_string(),
                    found: got.len().to_string(),
                });
            }
            out.extend(got);
        }
        Ok(out)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The first copy of `key` in the store, as a stored file.
pub(super) fn stored_from(store: &LabelStore, key: &str) -> Option<StoredFile> {
    store.find(key).first().map(|(label, entry, m)| StoredFile {
        key: key.to_owned(),
        size: Some(m.size),
        sha256: Some(m.sha256.clone()),
        md5: Some(m.md5.clone()),
        crc32: None,
        location: format!("{label}:{}/{}", entry.file_no, m.key),
        source_sha256: None,
    })
}

impl TarBackend {
    pub(super) fn clone_cfg(&self) -> TarBackend {
        TarBackend {
            cfg: self.cfg.clone(),
            busy: Mutex::new(()),
            changer: self.changer.clone(),
        }
    }
}

#[async_trait]
impl TapeBackend for TarBackend {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            verify: vec![VerifyKind::Metadata, VerifyKind::Sample, VerifyKind::Full],
            retrieve: true,
            batch_bytes: Some(self.cfg.batch_size),
            copies: self.cfg.copies,
            records_sha256: true,
            catalogue: true,
        }
    }

    async fn health(&self) -> Result<Health, TapeError> {
        let _busy = self.busy.lock().await;
        let me = self.clone_cfg();
        blocking(&self.cfg.name, move || {
            let store = me.load()?;
            let mut problems = Vec::new();
            // With a changer, an empty drive is fine: a tape is loaded when needed.
            let library = match &me.changer {
                Some(c) => match c.status() {
                    Ok(s) => Some((c, s)),
                    Err(e) => {
                        problems.push(format!("changer: {e}"));
                        None
                    }
                },
                None => None,
            };
            for (i, dev) in me
                .cfg
                .devices
                .iter()
                .enumerate()
                .take(me.cfg.copies as usize)
            {
                if let Some((c, s)) = &library {
                    if matches!(s.drives.get(&c.drive_no(i)), Some(None)) {
                        continue;
                    }
                }
                let label = store.label_in(dev).unwrap_or("(blank)");
                if let Err(e) = Drive::new(&me.cfg, dev.clone()).status() {
                    problems.push(format!("{} [{label}]: {e}", dev.display()));
                }
            }
            Ok(Health {
                ok: problems.is_empty(),
                detail: if problems.is_empty() {
                    format!("{} drive(s) answer", me.cfg.copies)
                } else {
                    problems.join("; ")
                },
            })
        })
        .await
    }

    async fn stat(&self, run: &RunRef, path: &str) -> Result<Option<StoredFile>, TapeError> {
        let me = self.clone_cfg();
        let key = key_of(&run.name, path);
        blocking(&self.cfg.name, move || Ok(stored_from(&me.load()?, &key))).await
    }

    async fn put(&self, batch: &Batch) -> Result<Receipt, TapeError> {
        let _busy = self.busy.lock().await;
        let me = self.clone_cfg();
        let batch = batch.clone();
        blocking(&self.cfg.name, move || me.blocking_put(&batch)).await
    }

    async fn verify(
        &self,
        receipt: &Receipt,
        level: VerifyLevel,
    ) -> Result<VerifyReport, TapeError> {
        let _busy = self.busy.lock().await;
        self.verify_copies(receipt, level).await
    }

    async fn retrieve(&self, receipt: &Receipt, to_dir: &Path) -> Result<Vec<PathBuf>, TapeError> {
        let _busy = self.busy.lock().await;
        let me = self.clone_cfg();
        let receipt = receipt.clone();
        let to_dir = to_dir.to_path_buf();
        blocking(&self.cfg.name, move || {
            me.blocking_retrieve(&receipt, &to_dir)
        })
        .await
    }

    async fn catalogue(&self) -> Result<Vec<StoredFile>, TapeError> {
        let me = self.clone_cfg();
        let store = blocking(&self.cfg.name, move || me.load()).await?;
        let mut keys: Vec<&str> = store
            .tapes
            .values()
            .flat_map(|t| t.files.iter())
            .flat_map(|f| f.members.iter().map(|m| m.key.as_str()))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        Ok(keys
            .into_iter()
            .filter_map(|k| stored_from(&store, k))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, size: u64) -> TapeFile {
        TapeFile {
            path: path.into(),
            local: PathBuf::new(),
            size,
            sha256: String::new(),
            md5: String::new(),
        }
    }

    #[test]
    fn archives_respect_the_batch_size() {
        let files = [f("a", 40), f("b", 40), f("c", 40), f("d", 200)];
        let parts = split_archives(&files, 100);
        let names: Vec<Vec<&str>> = parts
            .iter()
            .map(|p| p.iter().map(|f| f.path.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d"]]);
    }
}
