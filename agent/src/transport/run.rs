//! Copying a whole run: the files of a manifest, with bounded concurrency and progress events.
//!
//! [`copy_run`] takes a [`RunCopy`] (push, pull or local, with the two run directories), the
//! manifest's files ([`FileJob`]), and the [`Gates`] that bound files in flight per run, per
//! link and globally. Each file is admitted by the gates, copied with the method's
//! `push`/`pull`/`local::copy`, and reported through the `progress` callback. Every file's
//! result is returned; one failed file does not stop the others.
//!
//! Paths in the manifest are relative to the run directory. A path that is absolute, has a
//! `..` or empty component, or has a symbolic link anywhere below the run directory is
//! refused with [`TransportError::UnsafePath`] and never opened. The destination side is
//! checked by [`crate::transport::dest`]: the data directory must exist (never created),
//! the run directory lies strictly below it, and nothing is written through a link. That
//! whole chain (every directory the manifest needs, every `.part` and final name) is
//! checked before the first file is sent, so a run copy refused at a planted link writes
//! nothing at all.

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::stream::{FuturesUnordered, StreamExt};

use crate::transport::dest::{resolve_remote, LocalDest, RemoteDest};
use crate::transport::limits::{ByteMeter, Gates};
use crate::transport::{
    local, CopyOptions, CopyReport, Parents, SshSession, TransportError, LOCAL,
};

/// One file of a run to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileJob {
    /// Path relative to the run directory, `/`-separated.
    pub path: String,
    /// Expected size (for progress), from the manifest.
    pub size: u64,
    /// SHA-256 from the manifest, if known; the copy must match it.
    pub sha256: Option<String>,
}

/// Which way a run goes. Each names the destination's data directory (its *base*): it must
/// exist and is never created, the destination run directory must lie strictly below it,
/// and nothing below it is written through a symbolic link ([`crate::transport::dest`]).
#[derive(Debug, Clone)]
pub enum RunCopy {
    /// Local run directory → remote run directory.
    Push {
        session: Arc<SshSession>,
        local_root: PathBuf,
        remote_root: String,
        /// The destination site's data directory on the remote host.
        remote_base: String,
    },
    /// Remote run directory → local run directory.
    Pull {
        session: Arc<SshSession>,
        remote_root: String,
        local_root: PathBuf,
        /// The destination site's (this site's) data directory.
        local_base: PathBuf,
    },
    /// Between two directories of a shared file system.
    Local {
        src_root: PathBuf,
        dst_root: PathBuf,
        /// The destination site's data directory.
        dst_base: PathBuf,
    },
}

/// A progress event for one file.
#[derive(Debug)]
pub enum Progress<'a> {
    /// The file got its slot and is being copied.
    Started { path: &'a str, size: u64 },
    /// How far a file in flight has got: `done` of `size` bytes (a kept `.part` prefix
    /// counts as done). Sent every [`BYTES_EVERY`] while the file is in flight.
    Bytes { path: &'a str, done: u64, size: u64 },
    /// The file is copied (and verified, unless deferred).
    Finished {
        path: &'a str,
        report: &'a CopyReport,
    },
    /// The file failed.
    Failed {
        path: &'a str,
        error: &'a TransportError,
    },
}

/// How often [`copy_run`] reports [`Progress::Bytes`] for the files in flight.
pub const BYTES_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Check that a manifest path is relative and stays inside the run directory by its syntax.
pub fn check_relative(host: &str, path: &str) -> Result<(), TransportError> {
    let refuse = |reason: &str| TransportError::UnsafePath {
        host: host.to_owned(),
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if path.is_empty() || path.starts_with('/') {
        return Err(refuse("not a relative path"));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(refuse("empty, '.' or '..' component"));
    }
    if Path::new(path)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(refuse("not a plain relative path"));
    }
    Ok(())
}

pub use crate::transport::dest::resolve_local;

/// The destination side of a run copy, checked as its files go ([`crate::transport::dest`]).
enum Dest {
    Local(Arc<LocalDest>),
    Remote(RemoteDest),
    /// The run directory is not strictly below the data directory: every file is refused.
    Refused {
        host: String,
        path: String,
        reason: String,
    },
}

impl Dest {
    fn of(method: &RunCopy) -> Dest {
        let made = match method {
            RunCopy::Push {
                session,
                remote_root,
                remote_base,
                ..
            } => RemoteDest::new(session.host(), remote_base, remote_root).map(Dest::Remote),
            RunCopy::Pull {
                local_root,
                local_base,
                ..
            } => LocalDest::new(local_base, local_root).map(|d| Dest::Local(Arc::new(d))),
            RunCopy::Local {
                dst_root, dst_base, ..
            } => LocalDest::new(dst_base, dst_root).map(|d| Dest::Local(Arc::new(d))),
        };
        match made {
            Ok(dest) => dest,
            Err(TransportError::UnsafePath { host, path, reason }) => {
                Dest::Refused { host, path, reason }
            }
            Err(other) => Dest::Refused {
                host: method.link().to_owned(),
                path: String::new(),
                reason: other.to_string(),
            },
        }
    }
}

impl Dest {
    /// The whole destination chain of `files` checked before any of them is sent
    /// ([`LocalDest::precheck`], [`RemoteDest::precheck`]): a link or a non-directory
    /// anywhere refuses every file, so a refused run copy writes nothing.
    async fn prechecked(self, method: &RunCopy, files: &[FileJob]) -> Dest {
        let found = match (&self, method) {
            (Dest::Local(dest), _) => {
                let (dest, rels) = (
                    dest.clone(),
                    files.iter().map(|f| f.path.clone()).collect::<Vec<_>>(),
                );
                let at = PathBuf::from(method.link());
                local::blocking(at, move || dest.precheck(rels.iter().map(String::as_str))).await
            }
            (Dest::Remote(dest), RunCopy::Push { session, .. }) => {
                dest.precheck(session, files.iter().map(|f| f.path.as_str()))
                    .await
            }
            _ => Ok(()),
        };
        match found {
            Err(TransportError::UnsafePath { host, path, reason }) => {
                Dest::Refused { host, path, reason }
            }
            _ => self,
        }
    }
}

impl RunCopy {
    /// Host name used to pick the link's gates and bandwidth limiter.
    pub fn link(&self) -> &str {
        match self {
            RunCopy::Push { session, .. } | RunCopy::Pull { session, .. } => session.host(),
            RunCopy::Local { .. } => LOCAL,
        }
    }

    async fn copy_one(
        &self,
        dest: &Dest,
        job: &FileJob,
        opts: &CopyOptions,
    ) -> Result<CopyReport, TransportError> {
        match (self, dest) {
            (_, Dest::Refused { host, path, reason }) => Err(TransportError::UnsafePath {
                host: host.clone(),
                path: path.clone(),
                reason: reason.clone(),
            }),
            (
                RunCopy::Push {
                    session,
                    local_root,
                    ..
                },
                Dest::Remote(dest),
            ) => {
                let src = resolve_local(local_root, &job.path)?;
                let dst = dest.prepare(session, &job.path).await?;
                session.push_with(&src, &dst, opts, Parents::Checked).await
            }
            (
                RunCopy::Pull {
                    session,
                    remote_root,
                    local_root,
                    ..
                },
                Dest::Local(dest),
            ) => {
                let src = resolve_remote(session, remote_root, &job.path).await?;
                let (dest, rel) = (dest.clone(), job.path.clone());
                let dst =
                    local::blocking(local_root.join(&job.path), move || dest.prepare(&rel)).await?;
                session.pull_with(&src, &dst, opts, Parents::Checked).await
            }
            (
                RunCopy::Local {
                    src_root, dst_root, ..
                },
                Dest::Local(dest),
            ) => {
                let (src_root, dest, rel) = (src_root.clone(), dest.clone(), job.path.clone());
                let opts = opts.clone();
                local::blocking(dst_root.join(&job.path), move || {
                    let src = resolve_local(&src_root, &rel)?;
                    let dst = dest.prepare(&rel)?;
                    local::copy_with(&src, &dst, &opts, Parents::Checked)
                })
                .await
            }
            // `Dest::of` pairs each method with its side; nothing else is built.
            (_, _) => Err(TransportError::UnsafePath {
                host: self.link().to_owned(),
                path: String::new(),
                reason: "destination does not match the copy's method".into(),
            }),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Copy the files of a run; returns each file's result in the order of `files`. The
/// files count on the link named by the method's host ([`RunCopy::link`]).
pub async fn copy_run(
    method: &RunCopy,
    files: &[FileJob],
    opts: &CopyOptions,
    gates: &Gates,
    progress: impl Fn(Progress<'_>),
) -> Vec<Result<CopyReport, TransportError>> {
    copy_run_on(method.link(), method, files, opts, gates, progress).await
}

/// [`copy_run`] with the files counted on the gates (transfers, bandwidth) of `link`: the
/// agent names a link by its peer site, so two sites on one host are two links.
pub async fn copy_run_on(
    link: &str,
    method: &RunCopy,
    files: &[FileJob],
    opts: &CopyOptions,
    gates: &Gates,
    progress: impl Fn(Progress<'_>),
) -> Vec<Result<CopyReport, TransportError>> {
    let run_gate = gates.run_gate();
    let link = link.to_owned();
    let mut opts = opts.clone();
    if opts.bandwidth.is_none() {
        opts.bandwidth = gates.bandwidth(&link);
    }
    let opts = &opts;
    let progress = &progress;
    let dest = &Dest::of(method).prechecked(method, files).await;
    // Files in flight and their meters, for the byte-level progress events.
    let in_flight: Mutex<Vec<(usize, ByteMeter)>> = Mutex::new(Vec::new());
    let in_flight = &in_flight;
    let mut tasks: FuturesUnordered<_> = files
        .iter()
        .enumerate()
        .map(|(i, job)| {
            let run_gate = run_gate.clone();
            let link = link.clone();
            async move {
                let _permit = gates.admit(&link, &run_gate).await;
                progress(Progress::Started {
                    path: &job.path,
                    size: job.size,
                });
                let mut file_opts = opts.clone();
                if job.sha256.is_some() {
                    file_opts.expected_sha256 = job.sha256.clone();
                }
                let meter = ByteMeter::new();
                file_opts.meter = Some(meter.clone());
                lock(in_flight).push((i, meter));
                let result = method.copy_one(dest, job, &file_opts).await;
                lock(in_flight).retain(|(j, _)| *j != i);
                match &result {
                    Ok(report) => progress(Progress::Finished {
                        path: &job.path,
                        report,
                    }),
                    Err(error) => progress(Progress::Failed {
                        path: &job.path,
                        error,
                    }),
                }
                (i, result)
            }
        })
        .collect();
    let mut results: Vec<Option<Result<CopyReport, TransportError>>> =
        (0..files.len()).map(|_| None).collect();
    let mut tick = tokio::time::interval(BYTES_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            next = tasks.next() => match next {
                Some((i, result)) => results[i] = Some(result),
                None => break,
            },
            _ = tick.tick() => {
                let snapshot: Vec<(usize, u64)> =
                    lock(in_flight).iter().map(|(i, m)| (*i, m.get())).collect();
                for (i, done) in snapshot {
                    if let Some(job) = files.get(i) {
                        progress(Progress::Bytes { path: &job.path, done, size: job.size });
                    }
                }
            }
        }
    }
    results.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::limits::Limits;

    #[test]
    fn relative_path_rules() {
        for ok in ["a", "raw/000.evio", "ü n/ï c✓.bin"] {
            check_relative("h", ok).unwrap();
        }
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a/"] {
            assert!(check_relative("h", bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn local_run_copy_refuses_symlink_out_of_run_and_copies_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("run");
        std::fs::create_dir_all(src.join("raw")).unwrap();
        std::fs::write(src.join("raw/a b.bin"), b"alpha").unwrap();
        std::fs::write(dir.path().join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), src.join("raw/link")).unwrap();
        let method = RunCopy::Local {
            src_root: src.clone(),
            dst_root: dir.path().join("copy"),
            dst_base: dir.path().to_path_buf(),
        };
        let files = vec![
            FileJob {
                path: "raw/a b.bin".into(),
                size: 5,
                sha256: None,
            },
            FileJob {
                path: "raw/link".into(),
                size: 7,
                sha256: None,
            },
        ];
        let events = Mutex::new(Vec::new());
        let results = copy_run(
            &method,
            &files,
            &CopyOptions::default(),
            &Gates::new(Limits::default()),
            |p| {
                if !matches!(p, Progress::Bytes { .. }) {
                    events.lock().unwrap().push(format!("{p:?}"));
                }
            },
        )
        .await;
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].as_ref().unwrap().digest.size, 5);
        assert!(matches!(results[1], Err(TransportError::UnsafePath { .. })));
        assert!(!dir.path().join("copy/raw/link").exists());
        assert_eq!(
            std::fs::read(dir.path().join("copy/raw/a b.bin")).unwrap(),
            b"alpha"
        );
        assert_eq!(events.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn files_in_flight_report_bytes_as_they_go() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("run");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("big"), vec![7u8; 4 << 20]).unwrap();
        let method = RunCopy::Local {
            src_root: src,
            dst_root: dir.path().join("copy"),
            dst_base: dir.path().to_path_buf(),
        };
        let files = vec![FileJob {
            path: "big".into(),
            size: 4 << 20,
            sha256: None,
        }];
        // 4 MiB read 1 MiB at a time at 4 MB/s: about a second, so several progress ticks.
        let gates = Gates::new(Limits {
            bandwidth_per_link: Some(4_000_000),
            ..Limits::default()
        });
        let seen = Mutex::new(Vec::new());
        let results = copy_run(&method, &files, &CopyOptions::default(), &gates, |p| {
            if let Progress::Bytes { path, done, size } = p {
                assert_eq!((path, size), ("big", 4 << 20));
                seen.lock().unwrap().push(done);
            }
        })
        .await;
        assert!(results[0].is_ok());
        let seen = seen.into_inner().unwrap();
        assert!(seen.len() >= 3, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert!(
            seen.iter().any(|&d| d > 0 && d < 4 << 20),
            "a file part way through: {seen:?}"
        );
    }
}
