//! One tape drive: `mt` for positioning and status, the `write`/`read` commands for one
//! tape file at the current position (`dd` on a no-rewind device by default). Blocking:
//! each drive's work runs on its own blocking task.

use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::TarConfig;
use crate::tape::{CommandRun, TapeError};

/// Bytes of stderr kept.
const STDERR_TAIL: usize = 4096;

/// One drive of a `tar` backend.
#[derive(Debug, Clone)]
pub(super) struct Drive {
    pub backend: String,
    pub device: PathBuf,
    mt: Vec<String>,
    write: Vec<String>,
    read: Vec<String>,
}

/// Keep the end of a text.
fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

/// Read a child's stderr on a thread (so a chatty child never blocks on a full pipe).
fn drain_stderr(child: &mut Child) -> std::thread::JoinHandle<Vec<u8>> {
    let stderr = child.stderr.take();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut s) = stderr {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    })
}

impl Drive {
    pub fn new(cfg: &TarConfig, device: PathBuf) -> Self {
        Self {
            backend: cfg.name.clone(),
            write: TarConfig::device_argv(&cfg.write, &device),
            read: TarConfig::device_argv(&cfg.read, &device),
            mt: cfg.mt.clone(),
            device,
        }
    }

    fn drive_err(&self, what: impl Into<String>, run: CommandRun) -> TapeError {
        TapeError::Drive {
            backend: self.backend.clone(),
            device: self.device.clone(),
            what: what.into(),
            command: Box::new(run),
        }
    }

    fn spawn(
        &self,
        argv: &[String],
        what: &str,
        stdin: Stdio,
        stdout: Stdio,
    ) -> Result<Child, TapeError> {
        let Some((program, args)) = argv.split_first() else {
            return Err(self.drive_err(
                what,
                CommandRun {
                    argv: argv.to_vec(),
                    status: None,
                    stderr_tail: "empty argv".into(),
                },
            ));
        };
        Command::new(program)
            .args(args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    TapeError::NotInstalled {
                        backend: self.backend.clone(),
                        context: format!("drive {}: {what}", self.device.display()),
                        program: program.clone(),
                        argv: argv.to_vec(),
                        stderr: format!(": {e}"),
                    }
                } else {
                    self.drive_err(
                        what,
                        CommandRun {
                            argv: argv.to_vec(),
                            status: None,
                            stderr_tail: e.to_string(),
                        },
                    )
                }
            })
    }

    /// `mt -f DEVICE args…`; its stdout on success.
    pub fn mt(&self, args: &[&str], what: &str) -> Result<String, TapeError> {
        let mut argv = self.mt.clone();
        argv.push("-f".into());
        argv.push(self.device.display().to_string());
        argv.extend(args.iter().map(|a| a.to_string()));
        let child = self.spawn(&argv, what, Stdio::null(), Stdio::piped())?;
        let out = child.wait_with_output().map_err(|e| {
            self.drive_err(
                what,
                CommandRun {
                    argv: argv.clone(),
                    status: None,
                    stderr_tail: e.to_string(),
                },
            )
        })?;
        if !out.status.success() {
            return Err(self.drive_err(
                what,
                CommandRun {
                    argv,
                    status: out.status.code(),
                    stderr_tail: tail(&out.stderr),
                },
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether a tape is loaded and the drive answers (`mt status`).
    pub fn status(&self) -> Result<String, TapeError> {
        self.mt(&["status"], "drive status (is a tape loaded?)")
    }

    /// Absolute positioning at tape file `n`: rewind, then forward-space `n` file marks.
    pub fn position(&self, n: u64) -> Result<(), TapeError> {
        self.mt(&["rewind"], "rewinding")?;
        if n > 0 {
            self.mt(
                &["fsf", &n.to_string()],
                &format!("spacing to tape file {n}"),
            )?;
        }
        Ok(())
    }

    /// Write one tape file at the current position from what `fill` writes.
    /// `full(run)` builds the error for a full tape.
    pub fn write_file<T>(
        &self,
        fill: impl FnOnce(&mut dyn Write) -> Result<T, TapeError>,
        full: impl FnOnce(CommandRun) -> TapeError,
    ) -> Result<T, TapeError> {
        let mut child = self.spawn(
            &self.write,
            "writing a tape file",
            Stdio::piped(),
            Stdio::null(),
        )?;
        let stderr = drain_stderr(&mut child);
        let result = match child.stdin.take() {
            Some(stdin) => {
                let mut w = BufWriter::with_capacity(1 << 20, stdin);
                let r = fill(&mut w);
                match (r, w.flush()) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Err(e), _) => Err(Some(e)),
                    (Ok(_), Err(_)) => Err(None),
                }
            }
            None => Err(None),
        };
        // Closing stdin ends the tape file (the device writes its file mark).
        let status = child.wait();
        let stderr = stderr.join().unwrap_or_default();
        let run = CommandRun {
            argv: self.write.clone(),
            status: status.as_ref().ok().and_then(|s| s.code()),
            stderr_tail: tail(&stderr),
        };
        let exited_ok = status.as_ref().is_ok_and(|s| s.success());
        match result {
            Ok(v) if exited_ok => Ok(v),
            // A write error on our side is usually the writer having died: its stderr says
            // why. A source problem (TapeError from `fill` not caused by the pipe) wins.
            Err(Some(e)) if !matches!(e, TapeError::Io { .. }) => Err(e),
            _ => {
                let text = run.stderr_tail.to_ascii_lowercase();
                if text.contains("no space left") || text.contains("end of medium") {
                    Err(full(run))
                } else {
                    Err(self.drive_err("writing a tape file", run))
                }
            }
        }
    }

    /// Read one tape file at the current position through `consume`. When `consume` stops
    /// early (a sample is done), the reader is killed; the position is then undefined, which
    /// is fine as every use positions absolutely first.
    pub fn read_file<T>(
        &self,
        consume: impl FnOnce(&mut dyn Read) -> Result<T, TapeError>,
    ) -> Result<T, TapeError> {
        let mut child = self.spawn(
            &self.read,
            "reading a tape file",
            Stdio::null(),
            Stdio::piped(),
        )?;
        let stderr = drain_stderr(&mut child);
        let result = match child.stdout.take() {
            Some(mut out) => {
                let r = consume(&mut out);
                // Whatever is left is not needed.
                drop(out);
                r
            }
            None => Err(self.drive_err(
                "reading a tape file",
                CommandRun {
                    argv: self.read.clone(),
                    status: None,
                    stderr_tail: "no stdout".into(),
                },
            )),
        };
        let status = child.wait();
        let stderr = stderr.join().unwrap_or_default();
        let run = CommandRun {
            argv: self.read.clone(),
            status: status.as_ref().ok().and_then(|s| s.code()),
            stderr_tail: tail(&stderr),
        };
        let reader_failed = run.status.is_some_and(|code| code != 0);
        match result {
            Ok(v) => Ok(v),
            // The reader failing explains a short or broken read better than tar does.
            Err(_) if reader_failed => Err(self.drive_err("reading a tape file", run)),
            Err(e) => Err(e),
        }
    }
}
