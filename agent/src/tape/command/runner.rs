//! Where a `command` backend's commands run: locally (`tokio::process`, argv, no shell) or
//! on a gateway over SSH exec ([`SshSession::exec_status`] quotes every token). Both give the
//! same [`Output`], both enforce the timeout, and both report a missing program as
//! [`TapeError::NotInstalled`]. The gateway session is opened on first use and reopened
//! when it has dropped.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

use crate::checksum::FileDigest;
use crate::tape::TapeError;
use crate::transport::{CopyOptions, SshSession, SshTarget, TransportError};

/// Bytes of stderr kept.
const STDERR_TAIL: usize = 4096;
/// Bytes of stdout kept.
const MAX_STDOUT: usize = 1 << 20;

/// How a command ended.
#[derive(Debug, Clone)]
pub(super) struct Output {
    /// Exit status (`None`: killed by a signal).
    pub status: Option<i32>,
    /// Standard output (bounded).
    pub stdout: String,
    /// The end of standard error.
    pub stderr_tail: String,
}

impl Output {
    /// stdout and stderr together, for parsers of tools that print to either.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr_tail)
    }
}

/// Local machine or an SSH gateway.
#[derive(Debug)]
pub(super) enum Runner {
    Local,
    Gateway {
        target: Box<SshTarget>,
        session: Mutex<Option<Arc<SshSession>>>,
    },
}

impl Runner {
    pub fn gateway(target: SshTarget) -> Self {
        Runner::Gateway {
            target: Box::new(target),
            session: Mutex::new(None),
        }
    }

    /// `gateway HOST` or `local`, for messages.
    pub fn place(&self) -> String {
        match self {
            Runner::Local => "local".into(),
            Runner::Gateway { target, .. } => format!("gateway {}", target.host),
        }
    }

    async fn session(&self, backend: &str) -> Result<Arc<SshSession>, TapeError> {
        let Runner::Gateway { target, session } = self else {
            return Err(TapeError::Internal {
                backend: backend.to_owned(),
                reason: "no gateway configured".into(),
            });
        };
        let mut slot = session.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let s = Arc::new(SshSession::connect(target).await.map_err(|e| {
            transport(backend, format!("connecting to gateway {}", target.host), e)
        })?);
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Run `argv`; any exit status is returned (the caller judges it).
    pub async fn run(
        &self,
        backend: &str,
        context: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<Output, TapeError> {
        let timed_out = || TapeError::Timeout {
            backend: backend.to_owned(),
            context: context.to_owned(),
            argv: argv.to_vec(),
            after: timeout,
        };
        let out = match self {
            Runner::Local => tokio::time::timeout(timeout, run_local(backend, context, argv))
                .await
                .map_err(|_| timed_out())??,
            Runner::Gateway { .. } => {
                let s = self.session(backend).await?;
                let out = tokio::time::timeout(timeout, s.exec_status(argv))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|e| transport(backend, context.to_owned(), e))?;
                Output {
                    status: i32::try_from(out.status).ok(),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr_tail: out.stderr_tail,
                }
            }
        };
        // The shell on the gateway (or exec) says 127 when the program is not there.
        if out.status == Some(127) {
            return Err(TapeError::NotInstalled {
                backend: backend.to_owned(),
                context: format!("{context} on {}", self.place()),
                program: argv.first().cloned().unwrap_or_default(),
                argv: argv.to_vec(),
                stderr: tail_suffix(&out.stderr_tail),
            });
        }
        Ok(out)
    }

    /// Copy a local file to `remote` on the gateway (SFTP, verified against `sha256`), or to
    /// `remote` on this machine when there is no gateway.
    pub async fn stage(
        &self,
        backend: &str,
        local: &Path,
        remote: &str,
        sha256: &str,
    ) -> Result<FileDigest, TapeError> {
        let opts = CopyOptions {
            expected_sha256: Some(sha256.to_owned()),
            ..CopyOptions::default()
        };
        let ctx = format!("staging {} to {remote}", local.display());
        match self {
            Runner::Local => {
                if let Some(parent) = Path::new(remote).parent() {
                    tokio::fs::create_dir_all(parent).await.map_err(|e| {
                        TapeError::io(backend, "creating stage directory", parent, e)
                    })?;
                }
                crate::transport::local::copy_async(local.to_path_buf(), remote.into(), opts)
                    .await
                    .map(|r| r.digest)
                    .map_err(|e| transport(backend, ctx, e))
            }
            Runner::Gateway { .. } => {
                let s = self.session(backend).await?;
                if let Some((dir, _)) = remote.rsplit_once('/') {
                    if !dir.is_empty() {
                        s.mkdir_p(dir)
                            .await
                            .map_err(|e| transport(backend, ctx.clone(), e))?;
                    }
                }
                s.push(local, remote, &opts)
                    .await
                    .map(|r| r.digest)
                    .map_err(|e| transport(backend, ctx, e))
            }
        }
    }

    /// Create the directory `remote` will be written into, where the commands run.
    pub async fn make_parent(&self, backend: &str, remote: &str) -> Result<(), TapeError> {
        let Some((dir, _)) = remote.rsplit_once('/').filter(|(d, _)| !d.is_empty()) else {
            return Ok(());
        };
        match self {
            Runner::Local => tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| TapeError::io(backend, "creating directory", dir, e)),
            Runner::Gateway { .. } => self
                .session(backend)
                .await?
                .mkdir_p(dir)
                .await
                .map_err(|e| transport(backend, format!("creating {dir}"), e)),
        }
    }

    /// Bring `remote` (on the gateway) to `local`; without a gateway the file is already
    /// local and only hashed. Returns the digest of the bytes now at `local`.
    pub async fn fetch(
        &self,
        backend: &str,
        remote: &str,
        local: &Path,
    ) -> Result<FileDigest, TapeError> {
        match self {
            Runner::Local => crate::tape::hash_local(backend, local).await,
            Runner::Gateway { .. } => {
                let s = self.session(backend).await?;
                let opts = CopyOptions {
                    resume: false,
                    ..CopyOptions::default()
                };
                let digest = s
                    .pull(remote, local, &opts)
                    .await
                    .map(|r| r.digest)
                    .map_err(|e| transport(backend, format!("fetching {remote}"), e))?;
                // Best effort: the staged copy on the gateway is no longer needed.
                let _ = s.remove(remote).await;
                Ok(digest)
            }
        }
    }

    /// Remove a staged file (best effort: a leftover only costs space in the stage).
    pub async fn unstage(&self, remote: &str) {
        match self {
            Runner::Local => {
                let _ = tokio::fs::remove_file(remote).await;
            }
            Runner::Gateway { session, .. } => {
                let s = session.lock().await.clone();
                if let Some(s) = s {
                    let _ = s.remove(remote).await;
                }
            }
        }
    }
}

fn transport(backend: &str, context: String, source: TransportError) -> TapeError {
    TapeError::Transport {
        backend: backend.to_owned(),
        context,
        source: Box::new(source),
    }
}

fn tail_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

async fn run_local(backend: &str, context: &str, argv: &[String]) -> Result<Output, TapeError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(TapeError::Internal {
            backend: backend.to_owned(),
            reason: format!("{context}: empty argv"),
        });
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                TapeError::NotInstalled {
                    backend: backend.to_owned(),
                    context: context.to_owned(),
                    program: program.clone(),
                    argv: argv.to_vec(),
                    stderr: format!(": {e}"),
                }
            }
            _ => TapeError::io(backend, "starting", program, e),
        })?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let read_out = async {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = (&mut *s)
                .take(MAX_STDOUT as u64)
                .read_to_end(&mut buf)
                .await;
            // Drain the rest so the child never blocks on a full pipe.
            let _ = tokio::io::copy(s, &mut tokio::io::sink()).await;
        }
        buf
    };
    let read_err = async {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf).await;
        }
        buf
    };
    let (out, err, status) = tokio::join!(read_out, read_err, child.wait());
    let status = status.map_err(|e| TapeError::io(backend, "waiting for", program, e))?;
    let start = err.len().saturating_sub(STDERR_TAIL);
    Ok(Output {
        status: status.code(),
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr_tail: String::from_utf8_lossy(&err[start..]).trim().to_owned(),
    })
}
