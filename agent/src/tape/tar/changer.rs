//! A tape library robot driven by `mtx` (or anything printing `mtx status` output): which
//! tape is in which slot and drive, and moving tapes between them. Blocking.
//!
//! `mtx status` looks like this (the parser keeps the element numbers, Full/Empty, the
//! slot a drive's tape came from and the barcode, and ignores everything else):
//!
//! ```text
//!   Storage Changer /dev/sg3:2 Drives, 24 Slots ( 1 Import/Export )
//! Data Transfer Element 0:Full (Storage Element 3 Loaded):VolumeTag = A00003L5
//! Data Transfer Element 1:Empty
//!       Storage Element 1:Full :VolumeTag=A00001L5
//!       Storage Element 2:Empty
//!       Storage Element 24 IMPORT/EXPORT:Empty
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::config::{parse_tape_template, TarChanger, TemplatePiece};
use crate::tape::{CommandRun, TapeError};

/// Bytes of stderr kept.
const STDERR_TAIL: usize = 4096;

/// What a data transfer element (drive) holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveState {
    /// The storage element the tape came from, when the library knows.
    pub from_slot: Option<u32>,
    /// The tape's barcode.
    pub tag: Option<String>,
}

/// The library as `mtx status` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MtxStatus {
    /// Drive number → its tape (`None`: empty).
    pub drives: BTreeMap<u32, Option<DriveState>>,
    /// Slot number → its tape's barcode (`None`: empty slot; `Some(None)`: a tape
    /// without a readable barcode). Import/export slots are left out.
    pub slots: BTreeMap<u32, Option<Option<String>>>,
}

/// The `VolumeTag` in `…:VolumeTag = A00003L5` or `…:VolumeTag=A00003L5:…`.
fn volume_tag(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("VolumeTag")?;
    let rest = rest.trim_start().strip_prefix('=')?;
    let tag = rest.split(':').next().unwrap_or("").trim();
    (!tag.is_empty()).then(|| tag.to_owned())
}

/// Parse `mtx status` output.
pub fn parse_status(text: &str) -> Result<MtxStatus, String> {
    let mut out = MtxStatus::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Data Transfer Element ") {
            let (num, state) = rest
                .split_once(':')
                .ok_or_else(|| format!("no `:` in {line:?}"))?;
            let n: u32 = num
                .trim()
                .parse()
                .map_err(|_| format!("bad drive number in {line:?}"))?;
            let drive = if state.starts_with("Empty") {
                None
            } else if state.starts_with("Full") {
                let from_slot = state
                    .split_once("(Storage Element ")
                    .and_then(|(_, r)| r.split_whitespace().next())
                    .and_then(|s| s.parse().ok());
                Some(DriveState {
                    from_slot,
                    tag: volume_tag(state),
                })
            } else {
                return Err(format!("neither Full nor Empty: {line:?}"));
            };
            out.drives.insert(n, drive);
        } else if let Some(rest) = line.strip_prefix("Storage Element ") {
            let (num, state) = rest
                .split_once(':')
                .ok_or_else(|| format!("no `:` in {line:?}"))?;
            if num.contains("IMPORT/EXPORT") {
                continue;
            }
            let n: u32 = num
                .trim()
                .parse()
                .map_err(|_| format!("bad slot number in {line:?}"))?;
            let slot = if state.starts_with("Empty") {
                None
            } else if state.starts_with("Full") {
                Some(volume_tag(state))
            } else {
                return Err(format!("neither Full nor Empty: {line:?}"));
            };
            out.slots.insert(n, slot);
        }
    }
    if out.drives.is_empty() {
        return Err("no `Data Transfer Element` line".into());
    }
    Ok(out)
}

/// Keep the end of a text.
fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

/// The robot of one `tar` backend.
#[derive(Debug, Clone)]
pub(super) struct Changer {
    backend: String,
    pub cfg: TarChanger,
}

impl Changer {
    pub fn new(backend: &str, cfg: TarChanger) -> Self {
        Self {
            backend: backend.to_owned(),
            cfg,
        }
    }

    /// A template with `{changer}`, `{slot}`, `{drive}` filled in.
    fn argv(&self, template: &[String], slot: u32, drive: u32) -> Vec<String> {
        template
            .iter()
            .map(
                |t| match parse_tape_template(t, crate::config::CHANGER_MOVE_PLACEHOLDERS) {
                    Ok(pieces) => pieces
                        .into_iter()
                        .map(|p| match p {
                            TemplatePiece::Text(s) => s,
                            TemplatePiece::Field("slot", _) => slot.to_string(),
                            TemplatePiece::Field("drive", _) => drive.to_string(),
                            TemplatePiece::Field(..) => self.cfg.device.display().to_string(),
                        })
                        .collect(),
                    // Checked when the configuration was read.
                    Err(_) => t.clone(),
                },
            )
            .collect()
    }

    /// Run one command; its stdout on success, [`TapeError::Drive`] naming `device`
    /// (the tape drive concerned, or the changer) otherwise.
    fn run(&self, argv: Vec<String>, device: &Path, what: String) -> Result<String, TapeError> {
        let fail = |status: Option<i32>, stderr_tail: String, argv: Vec<String>| TapeError::Drive {
            backend: self.backend.clone(),
            device: device.to_path_buf(),
            what: what.clone(),
            command: Box::new(CommandRun {
                argv,
                status,
                stderr_tail,
            }),
        };
        let Some((program, args)) = argv.split_first() else {
            return Err(fail(None, "empty argv".into(), argv));
        };
        let out = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TapeError::NotInstalled {
                    backend: self.backend.clone(),
                    context: format!("changer {}: {what}", self.cfg.device.display()),
                    program: program.clone(),
                    argv,
                    stderr: format!(": {e}"),
                })
            }
            Err(e) => return Err(fail(None, e.to_string(), argv)),
        };
        if !out.status.success() {
            return Err(fail(out.status.code(), tail(&out.stderr), argv));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `mtx status`, parsed.
    pub fn status(&self) -> Result<MtxStatus, TapeError> {
        let argv = self.argv(&self.cfg.status, 0, 0);
        let text = self.run(argv.clone(), &self.cfg.device, "changer status".to_owned())?;
        parse_status(&text).map_err(|reason| TapeError::Parse {
            backend: self.backend.clone(),
            context: format!("changer {}", self.cfg.device.display()),
            what: "mtx status",
            argv,
            reason: format!(
                "{reason}; output starts {:?}",
                text.chars().take(200).collect::<String>()
            ),
        })
    }

    /// The drive number of device `i` of the backend.
    pub fn drive_no(&self, i: usize) -> u32 {
        self.cfg.drives.get(i).copied().unwrap_or(i as u32)
    }

    /// Load `slot` into the drive `device` (drive number `drive`); `why` says for what.
    pub fn load(&self, slot: u32, drive: u32, device: &Path, why: &str) -> Result<(), TapeError> {
        let argv = self.argv(&self.cfg.load, slot, drive);
        self.run(
            argv,
            device,
            format!(
                "loading slot {slot} into drive {drive} of changer {} ({why})",
                self.cfg.device.display()
            ),
        )
        .map(drop)
    }

    /// Put the tape in drive `drive` back into `slot`.
    pub fn unload(&self, slot: u32, drive: u32, device: &Path, why: &str) -> Result<(), TapeError> {
        let argv = self.argv(&self.cfg.unload, slot, drive);
        self.run(
            argv,
            device,
            format!(
                "unloading drive {drive} into slot {slot} of changer {} ({why})",
                self.cfg.device.display()
            ),
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_mtx_status() {
        let text = "  Storage Changer /dev/sg3:2 Drives, 4 Slots ( 1 Import/Export )
Data Transfer Element 0:Full (Storage Element 3 Loaded):VolumeTag = A00003L5
Data Transfer Element 1:Empty
      Storage Element 1:Full :VolumeTag=A00001L5
      Storage Element 2:Empty
      Storage Element 3:Empty
      Storage Element 4:Full 
      Storage Element 5 IMPORT/EXPORT:Full :VolumeTag=CLN001L1
";
        let s = parse_status(text).unwrap();
        assert_eq!(
            s.drives[&0],
            Some(DriveState {
                from_slot: Some(3),
                tag: Some("A00003L5".into())
            })
        );
        assert_eq!(s.drives[&1], None);
        assert_eq!(s.slots[&1], Some(Some("A00001L5".into())));
        assert_eq!(s.slots[&2], None);
        assert_eq!(s.slots[&4], Some(None));
        assert!(!s.slots.contains_key(&5));
        let unknown =
            "Data Transfer Element 0:Full (Unknown Storage Element Loaded):VolumeTag = X1\n";
        assert_eq!(
            parse_status(unknown).unwrap().drives[&0],
            Some(DriveState {
                from_slot: None,
                tag: Some("X1".into())
            })
        );
        assert!(parse_status("garbage").is_err());
        assert!(parse_status("Data Transfer Element 0:Weird\n").is_err());
    }
}
