//! Verification of a `tar` receipt, every copy in parallel (one task per drive).
//!
//! - metadata: the label store lists every key on every volume of the receipt with the
//!   receipt's checksums, and each drive answers `mt status` holding that volume;
//! - sample: per tape file, `ceil(fraction × members)` members (at least one) chosen by the
//!   seed (`seed + file number`, so each tape file gets its own choice and the recorded seed
//!   repeats it); each chosen member is read back and its MD5 compared. Reading stops after
//!   the last chosen member of a tape file;
//! - full: every member, MD5 and SHA-256.

use std::collections::BTreeMap;

use md5::{Digest, Md5};
use sha2::Sha256;

use super::backend::TarBackend;
use super::labels::{Member, TapeFileEntry};
use crate::tape::sample::{sample_indices, seed_or_random};
use crate::tape::{Receipt, TapeError, VerifyLevel, VerifyReport};

/// What one copy's verification read.
struct CopyResult {
    checked: Vec<String>,
    bytes: u64,
}

impl TarBackend {
    pub(super) async fn verify_copies(
        &self,
        receipt: &Receipt,
        level: VerifyLevel,
    ) -> Result<VerifyReport, TapeError> {
        let me = self.clone_cfg();
        let store = crate::tape::blocking(&self.cfg.name, move || me.load()).await?;
        let level = match level {
            VerifyLevel::Sample { fraction, seed } => VerifyLevel::Sample {
                fraction,
                seed: Some(seed_or_random(seed)),
            },
            other => other,
        };
        // Per volume: the tape files holding the receipt's keys, checked against the receipt.
        let mut plans = Vec::new();
        for label in &receipt.volumes {
            let tape = store.tapes.get(label).ok_or_else(|| TapeError::NotFound {
                backend: self.cfg.name.clone(),
                key: format!("tape {label}"),
            })?;
            let mut files: BTreeMap<u64, &TapeFileEntry> = BTreeMap::new();
            for want in &receipt.files {
                let entry = tape
                    .files
                    .iter()
                    .find(|f| f.members.iter().any(|m| m.key == want.key))
                    .ok_or_else(|| TapeError::NotFound {
                        backend: self.cfg.name.clone(),
                        key: format!("{} on tape {label}", want.key),
                    })?;
                let m = entry.members.iter().find(|m| m.key == want.key);
                if let Some(m) = m {
                    if Some(m.size) != want.size
                        || Some(&m.sha256) != want.sha256.as_ref()
                        || Some(&m.md5) != want.md5.as_ref()
                    {
                        return Err(TapeError::Mismatch {
                            backend: self.cfg.name.clone(),
                            key: want.key.clone(),
                            what: "label store entry",
                            expected: format!("{:?} bytes md5 {:?}", want.size, want.md5),
                            found: format!("{} bytes md5 {} on {label}", m.size, m.md5),
                        });
                    }
                }
                files.insert(entry.file_no, entry);
            }
            let files: Vec<TapeFileEntry> = files.into_values().cloned().collect();
            plans.push((label.clone(), files));
        }
        let keys: Vec<String> = receipt.files.iter().map(|f| f.key.clone()).collect();
        // One task per drive, all at once.
        let mut tasks = Vec::new();
        for (label, files) in plans {
            let drive = self.drive_for(&store, &label)?;
            let keys = keys.clone();
            let name = self.cfg.name.clone();
            tasks.push(tokio::task::spawn_blocking(move || {
                drive.status()?;
                let mut result = CopyResult {
                    checked: Vec::new(),
                    bytes: 0,
                };
                for entry in &files {
                    let picked: Vec<usize> = match level {
                        VerifyLevel::Metadata => continue,
                        VerifyLevel::Full => (0..entry.members.len()).collect(),
                        VerifyLevel::Sample { fraction, seed } => sample_indices(
                            entry.members.len(),
                            fraction,
                            seed.unwrap_or(0).wrapping_add(entry.file_no),
                        ),
                    };
                    let full = matches!(level, VerifyLevel::Full);
                    drive.position(entry.file_no)?;
                    let (checked, bytes) = drive.read_file(|r| {
                        check_members(&name, &label, entry, &picked, full, r, &drive.device)
                    })?;
                    result.checked.extend(checked);
                    result.bytes += bytes;
                }
                if matches!(level, VerifyLevel::Metadata) {
                    result.checked = keys;
                }
                Ok(result)
            }));
        }
        let copies = tasks.len() as u32;
        let mut checked = Vec::new();
        let mut bytes_read = 0;
        let mut first_err = None;
        for t in tasks {
            match t.await {
                Ok(Ok(r)) => {
                    checked.extend(r.checked);
                    bytes_read += r.bytes;
                }
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(TapeError::Internal {
                        backend: self.cfg.name.clone(),
                        reason: format!("verify task: {e}"),
                    });
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(VerifyReport {
            level,
            checked,
            copies,
            bytes_read,
        })
    }
}

/// Read one tape file's tar stream and check the picked members (by index in `entry`).
fn check_members(
    backend: &str,
    label: &str,
    entry: &TapeFileEntry,
    picked: &[usize],
    full: bool,
    reader: &mut dyn std::io::Read,
    device: &std::path::Path,
) -> Result<(Vec<String>, u64), TapeError> {
    let io = |e| TapeError::io(backend, "reading tar from", device, e);
    let wanted: Vec<&Member> = picked
        .iter()
        .filter_map(|i| entry.members.get(*i))
        .collect();
    let mut checked = Vec::new();
    let mut bytes = 0;
    let mut archive = ::tar::Archive::new(reader);
    for e in archive.entries().map_err(io)? {
        let mut e = e.map_err(io)?;
        let key = e.path().map_err(io)?.to_string_lossy().into_owned();
        let Some(m) = wanted.iter().find(|m| m.key == key) else {
            continue;
        };
        let mut md5 = Md5::new();
        let mut sha = full.then(Sha256::new);
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = std::io::Read::read(&mut e, &mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            md5.update(&buf[..n]);
            if let Some(s) = sha.as_mut() {
                s.update(&buf[..n]);
            }
            size += n as u64;
        }
        let mismatch = |what, expected: String, found: String| TapeError::Mismatch {
            backend: backend.to_owned(),
            key: format!("{key} on {label}:{}", entry.file_no),
            what,
            expected,
            found,
        };
        if size != m.size {
            return Err(mismatch("size", m.size.to_string(), size.to_string()));
        }
        let got = hex::encode(md5.finalize());
        if got != m.md5 {
            return Err(mismatch("md5", m.md5.clone(), got));
        }
        if let Some(s) = sha {
            let got = hex::encode(s.finalize());
            if got != m.sha256 {
                return Err(mismatch("sha256", m.sha256.clone(), got));
            }
        }
        bytes += size;
        checked.push(key);
        if checked.len() == wanted.len() {
            break;
        }
    }
    if checked.len() != wanted.len() {
        return Err(TapeError::Mismatch {
            backend: backend.to_owned(),
            key: format!("{label}:{}", entry.file_no),
            what: "members found in tape file",
            expected: wanted.len().to_string(),
            found: checked.len().to_string(),
        });
    }
    Ok((checked, bytes))
}
