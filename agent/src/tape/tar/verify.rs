//! Verification of a `tar` receipt, every drive in parallel (one task per drive, its
//! volumes in turn).
//!
//! - metadata: the label store lists every key of the receipt, with the receipt's
//!   checksums, on at least one of its volumes (a copy may span volumes when a changer
//!   loaded the next tape), and each drive answers `mt status` holding its volume
//!   (loaded first by the changer, if there is one);
//! - sample: per tape file, `ceil(fraction × members)` members (at least one) chosen by the
//!   seed (`seed + file number`, so each tape file gets its own choice and the recorded seed
//!   repeats it); each chosen member is read back and its MD5 compared. Reading stops after
//!   the last chosen member of a tape file;
//! - full: every member, MD5 and SHA-256.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::checksum::Md5;
use sha2::Digest;
use sha2::Sha256;

use super::backend::TarBackend;
use super::labels::{Member, TapeFileEntry};
use super::mount::Library;
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
        let why = format!("verify of run {}", receipt.run.name);
        let (lock, store) = crate::tape::blocking(&self.cfg.name, {
            let why = why.clone();
            move || Ok((me.lock(&why)?, me.load()?))
        })
        .await?;
        let level = match level {
            VerifyLevel::Sample { fraction, seed } => VerifyLevel::Sample {
                fraction,
                seed: Some(seed_or_random(seed)),
            },
            other => other,
        };
        // Per volume: the tape files holding the receipt's keys, checked against the
        // receipt. A copy may span volumes (a changer loaded the next tape), so each key
        // is looked for on every volume and must be on at least one.
        let mut plans = Vec::new();
        let mut found: BTreeMap<&str, u32> = BTreeMap::new();
        for label in &receipt.volumes {
            let tape = store.tapes.get(label).ok_or_else(|| TapeError::NotFound {
                backend: self.cfg.name.clone(),
                key: format!("tape {label}"),
            })?;
            let mut files: BTreeMap<u64, &TapeFileEntry> = BTreeMap::new();
            for want in &receipt.files {
                let Some((entry, m)) = tape
                    .files
                    .iter()
                    .find_map(|f| f.members.iter().find(|m| m.key == want.key).map(|m| (f, m)))
                else {
                    continue;
                };
                if Some(m.size) != want.size
                    || Some(&m.sha256) != want.sha256.as_ref()
                    || Some(&m.md5) != want.md5.as_ref()
                {
                    return Err(TapeError::Mismatch {
                        backend: self.cfg.name.clone(),
                        key: want.key.clone(),
                        what: "label store entry",
                        expected: format!(
                            "{} md5 {}",
                            crate::tape::size_text(want.size),
                            crate::tape::hash_text(want.md5.as_deref())
                        ),
                        found: format!("{} bytes md5 {} on {label}", m.size, m.md5),
                    });
                }
                *found.entry(want.key.as_str()).or_default() += 1;
                files.insert(entry.file_no, entry);
            }
            let files: Vec<TapeFileEntry> = files.into_values().cloned().collect();
            plans.push((label.clone(), files));
        }
        let mut copies = u32::MAX;
        for want in &receipt.files {
            let n = found.get(want.key.as_str()).copied().unwrap_or(0);
            if n == 0 {
                return Err(TapeError::NotFound {
                    backend: self.cfg.name.clone(),
                    key: format!("{} on volumes {}", want.key, receipt.volumes.join(", ")),
                });
            }
            copies = copies.min(n);
        }
        if receipt.files.is_empty() {
            copies = 0;
        }
        // Each volume to a drive: the drive holding it, else (a changer loads it) the
        // drive with the least to do. Drives work in parallel, their volumes in turn.
        let mut queues: BTreeMap<usize, Vec<(String, Vec<TapeFileEntry>)>> = BTreeMap::new();
        let mut unplaced = Vec::new();
        for (label, files) in plans {
            let held = store.device_of(&label).and_then(|d| {
                self.cfg
                    .devices
                    .iter()
                    .position(|x| x.display().to_string() == d)
            });
            match held {
                Some(i) => queues.entry(i).or_default().push((label, files)),
                None if self.changer.is_some() => unplaced.push((label, files)),
                None => {
                    self.drive_for(&store, &label)?;
                }
            }
        }
        for plan in unplaced {
            let i = (0..self.cfg.devices.len())
                .min_by_key(|i| queues.get(i).map_or(0, Vec::len))
                .unwrap_or(0);
            queues.entry(i).or_default().push(plan);
        }
        let lib = Arc::new(std::sync::Mutex::new(Library {
            store,
            claimed: Default::default(),
        }));
        let keys: Vec<String> = receipt.files.iter().map(|f| f.key.clone()).collect();
        let mut tasks = Vec::new();
        for (i, plans) in queues {
            let me = self.clone_cfg();
            let lib = lib.clone();
            let name = self.cfg.name.clone();
            let why = why.clone();
            tasks.push(tokio::task::spawn_blocking(move || {
                let mut result = CopyResult {
                    checked: Vec::new(),
                    bytes: 0,
                };
                for (label, files) in plans {
                    let drive = me.mount_for_read(&lib, i, &label, &why)?;
                    drive.status()?;
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
                }
                Ok::<_, TapeError>(result)
            }));
        }
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
        // Tapes the changer moved are recorded whatever the outcome.
        let me = self.clone_cfg();
        crate::tape::blocking(&self.cfg.name, move || {
            let r = me.save_lib(&lib);
            drop(lock);
            r
        })
        .await?;
        if let Some(e) = first_err {
            return Err(e);
        }
        if matches!(level, VerifyLevel::Metadata) {
            checked = keys
                .iter()
                .flat_map(|k| std::iter::repeat_n(k.clone(), found[k.as_str()] as usize))
                .collect();
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
