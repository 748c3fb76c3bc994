//! Settings of a `tar` backend.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{
    parse_tape_template, TapeBackendConfig, TapeKind, TarChanger, TemplatePiece,
    CHANGER_MOVE_PLACEHOLDERS, CHANGER_STATUS_PLACEHOLDERS,
};
use crate::tape::TapeError;

/// A `tar` backend's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarConfig {
    /// Backend name.
    pub name: String,
    /// Tape devices, one per drive.
    pub devices: Vec<PathBuf>,
    /// Copies per put (the first `copies` devices are used).
    pub copies: u32,
    /// Most bytes per tar archive.
    pub batch_size: u64,
    /// `mt` argv prefix; `-f DEVICE command [count]` is appended.
    pub mt: Vec<String>,
    /// Writes stdin as one tape file (`{device}` placeholder).
    pub write: Vec<String>,
    /// Reads one tape file to stdout (`{device}` placeholder).
    pub read: Vec<String>,
    /// The label store.
    pub labels: PathBuf,
    /// The tape library robot, if the drives sit in one.
    pub changer: Option<TarChanger>,
    /// Longest wait for the label store's lock.
    pub lock_timeout: Duration,
}

impl TarConfig {
    /// From a site-map entry of kind `tar`.
    pub fn from_site_map(cfg: &TapeBackendConfig) -> Result<Self, TapeError> {
        let TapeKind::Tar {
            devices,
            copies,
            batch_size,
            mt,
            write,
            read,
            labels,
            changer,
            lock_timeout,
        } = &cfg.kind
        else {
            return Err(TapeError::Config {
                backend: cfg.name.clone(),
                reason: format!("a {} entry is not a tar backend", cfg.kind.name()),
            });
        };
        let out = Self {
            name: cfg.name.clone(),
            devices: devices.clone(),
            copies: *copies,
            batch_size: *batch_size,
            mt: mt.clone(),
            write: write.clone(),
            read: read.clone(),
            labels: labels.clone(),
            changer: changer.clone(),
            lock_timeout: *lock_timeout,
        };
        out.check()?;
        Ok(out)
    }

    /// The settings make sense together (also for configurations built in code).
    pub fn check(&self) -> Result<(), TapeError> {
        let bad = |reason: String| TapeError::Config {
            backend: self.name.clone(),
            reason,
        };
        if self.devices.is_empty() || self.copies == 0 {
            return Err(bad("needs at least one device and one copy".into()));
        }
        if self.copies as usize > self.devices.len() {
            return Err(bad(format!(
                "{} copies need {} drives, {} listed",
                self.copies,
                self.copies,
                self.devices.len()
            )));
        }
        if self.mt.is_empty() || self.write.is_empty() || self.read.is_empty() {
            return Err(bad("mt, write and read need a program".into()));
        }
        for argv in [&self.write, &self.read] {
            for t in argv {
                parse_tape_template(t, &["device"]).map_err(bad)?;
            }
        }
        if let Some(c) = &self.changer {
            if c.slots.is_empty() {
                return Err(bad("the changer has no slots".into()));
            }
            if c.drives.len() != self.devices.len() {
                return Err(bad(format!(
                    "the changer names {} drive number(s) for {} device(s)",
                    c.drives.len(),
                    self.devices.len()
                )));
            }
            for t in &c.status {
                parse_tape_template(t, CHANGER_STATUS_PLACEHOLDERS).map_err(bad)?;
            }
            for t in c.load.iter().chain(&c.unload) {
                parse_tape_template(t, CHANGER_MOVE_PLACEHOLDERS).map_err(bad)?;
            }
            if c.status.is_empty() || c.load.is_empty() || c.unload.is_empty() {
                return Err(bad("changer status, load and unload need a program".into()));
            }
        }
        Ok(())
    }

    /// `write` or `read` for one device.
    pub(super) fn device_argv(argv: &[String], device: &Path) -> Vec<String> {
        argv.iter()
            .map(|t| match parse_tape_template(t, &["device"]) {
                Ok(pieces) => pieces
                    .into_iter()
                    .map(|p| match p {
                        TemplatePiece::Text(s) => s,
                        TemplatePiece::Field(..) => device.display().to_string(),
                    })
                    .collect(),
                // Checked in `check`; keep the token as written.
                Err(_) => t.clone(),
            })
            .collect()
    }
}
