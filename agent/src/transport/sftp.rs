//! SFTP copies: push (local → remote) and pull (remote → local) on an [`SshSession`].
//!
//! Both follow the transport contract (`.part`, resume, hash in the same read, fsync, verify,
//! mtime and mode, atomic rename; see [`crate::transport`]). Speed comes from pipelining:
//!
//! - requests are as large as the server allows (`limits@openssh.com`, 255 KiB on OpenSSH,
//!   32 KiB when not announced), and up to [`CopyOptions::requests_in_flight`] of them are in
//!   flight, each on its own tokio task so that it is sent at once;
//! - a push reads the local file on a reader thread ([`local_chunks`]); a pull writes the
//!   local file on a writer thread; the copy task only moves [`Bytes`] between them and hands
//!   each chunk to the [`StreamHasher`] threads;
//! - a bandwidth limit wraps the chunk stream ([`throttle`]), outside the copy loop;
//! - a long push over a long link is striped: a stock sshd grants each channel a 2 MiB
//!   window, which caps one channel at 2 MiB per round trip (100 MB/s at 20 ms), so a file of
//!   at least [`SshTarget::stripe_min_size`](crate::transport::SshTarget) whose open took at
//!   least `stripe_min_rtt` is written through every idle channel of the session ("lanes",
//!   each with its own handle on the `.part`, chunks dealt in turn). Hashing stays one
//!   ordered stream; fsync, setstat, close and rename stay on the first lane, sent only once
//!   every lane's writes were acknowledged.
//!
//! Resume: a push keeps a remote `.part` no longer than the source and hashes the source's
//! prefix locally; the verification catches a `.part` whose prefix differs, and the copy is
//! then redone from zero. Lanes are applied by separate server processes, so a cut striped
//! push can leave holes, but only among its last `STRIPE_BUDGET` bytes (the writes that were
//! in flight): a `.part` of a file long enough to be striped resumes that far before its end.
//! A pull resumes only when the result can be checked against something other than itself
//! — the manifest's SHA-256 or a remote hashing command — since the kept prefix never crossed
//! the wire.
//!
//! Symlinks: the source of a push is opened with `O_NOFOLLOW`; the source of a pull must be a
//! regular file by `lstat`.

use std::collections::VecDeque;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Status, StatusCode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::checksum::{FileDigest, StreamHasher};
use crate::transport::dest::{Kind, LINK_REFUSED};
use crate::transport::limits::{metered, throttle};
use crate::transport::local::{part_path, sync_parent};
use crate::transport::sftp_wire::{Reply, Waiting, WireError, FX_EOF, FX_OK};
use crate::transport::ssh::SftpChannel;
use crate::transport::{
    check_expected, part_name, verify, with_restart, Attempt, CopyOptions, CopyReport, Parents,
    SshSession, TransportError, Verify,
};

/// Payload of the writes one push keeps in flight. A stock sshd grants 2 MiB of window per
/// channel, so more than a few MiB only waits in queues: 8 MiB still allows 400 MB/s at 20 ms
/// RTT, and keeps 4 pushes at once under the 64 MiB RSS target (16 MiB did not: 82 MiB).
const WRITE_BUDGET: usize = 8 << 20;

/// Payload in flight for a push striped over several channels ("lanes"): about two windows
/// of a stock sshd per lane for four lanes. Also how far before its end a `.part` of a file
/// that may have been striped is resumed: writes on different channels are applied by
/// different server processes, so a cut can leave holes, but only among the writes in
/// flight, i.e. in the last `STRIPE_BUDGET` bytes of the `.part`.
const STRIPE_BUDGET: usize = 16 << 20;

/// One channel a push writes on, with its own handle to the `.part`.
struct Lane {
    ch: Arc<SftpChannel>,
    handle: String,
}

/// Close the `.part` handles of a striped push's extra lanes (best effort: the primary
/// handle's fsync and close decide the copy).
async fn close_extra_lanes(lanes: &[Lane]) {
    futures::future::join_all(lanes.iter().map(|l| l.ch.raw.close(l.handle.as_str()))).await;
}

type ChunkStream<'a> = Pin<Box<dyn Stream<Item = Result<Bytes, TransportError>> + Send + 'a>>;

/// Map an SFTP client error to a transport error naming host, path and operation.
fn sftp_err(host: &str, path: &str, op: &'static str, e: SftpError) -> TransportError {
    let (host, path) = (host.to_owned(), path.to_owned());
    match e {
        SftpError::Status(s) => match s.status_code {
            StatusCode::NoSuchFile => TransportError::NotFound { host, path, op },
            StatusCode::PermissionDenied => TransportError::PermissionDenied { host, path, op },
            StatusCode::NoConnection | StatusCode::ConnectionLost => {
                TransportError::ConnectionLost {
                    host,
                    path,
                    what: op.into(),
                }
            }
            _ => TransportError::Sftp {
                host,
                path,
                op,
                message: format!("{}: {}", s.status_code, s.error_message),
            },
        },
        SftpError::Timeout => TransportError::Timeout {
            host,
            what: format!("waiting for SFTP {op} of {path}"),
            after: std::time::Duration::ZERO,
        },
        // The request channel is gone: the session or the connection ended.
        SftpError::IO(_) | SftpError::UnexpectedBehavior(_) => TransportError::ConnectionLost {
            host,
            path,
            what: op.into(),
        },
        other => TransportError::Sftp {
            host,
            path,
            op,
            message: other.to_string(),
        },
    }
}

/// Map an error of the data path ([`crate::transport::sftp_wire`]) to a transport error.
fn wire_err(host: &str, path: &str, op: &'static str, e: WireError) -> TransportError {
    let (host, path) = (host.to_owned(), path.to_owned());
    match e {
        WireError::Timeout { after } => TransportError::Timeout {
            host,
            what: format!("waiting for SFTP {op} of {path}"),
            after,
        },
        WireError::Closed { .. } => TransportError::ConnectionLost {
            host,
            path,
            what: op.into(),
        },
        // A malformed reply: the channel is unusable, a new connection may do better.
        other => TransportError::Ssh {
            host,
            what: format!("SFTP {op} of {path}"),
            message: other.to_string(),
        },
    }
}

/// A failure status in reply to a data request, classified like russh-sftp's.
fn status_err(
    host: &str,
    path: &str,
    op: &'static str,
    code: u32,
    message: String,
) -> TransportError {
    let (status_code, error_message) = match code {
        1 => (StatusCode::Eof, message),
        2 => (StatusCode::NoSuchFile, message),
        3 => (StatusCode::PermissionDenied, message),
        5 => (StatusCode::BadMessage, message),
        6 => (StatusCode::NoConnection, message),
        7 => (StatusCode::ConnectionLost, message),
        8 => (StatusCode::OpUnsupported, message),
        4 => (StatusCode::Failure, message),
        other => (
            StatusCode::Failure,
            format!("{message} (status code {other})"),
        ),
    };
    let status = Status {
        id: 0,
        status_code,
        error_message,
        language_tag: String::new(),
    };
    sftp_err(host, path, op, SftpError::Status(status))
}

impl SshSession {
    /// Copy a local file to `remote` (an absolute path or one relative to the login directory).
    pub async fn push(
        &self,
        local: &Path,
        remote: &str,
        opts: &CopyOptions,
    ) -> Result<CopyReport, TransportError> {
        self.push_with(local, remote, opts, Parents::Create).await
    }

    /// [`push`](Self::push) whose remote parents were checked by the caller ([`Parents`]).
    pub(crate) async fn push_with(
        &self,
        local: &Path,
        remote: &str,
        opts: &CopyOptions,
        parents: Parents,
    ) -> Result<CopyReport, TransportError> {
        let ch = self.sftp().await;
        with_restart(remote, |resume| {
            self.push_once(&ch, local, remote, opts, opts.resume && resume, parents)
        })
        .await
    }

    /// Copy `remote` to a local file.
    pub async fn pull(
        &self,
        remote: &str,
        local: &Path,
        opts: &CopyOptions,
    ) -> Result<CopyReport, TransportError> {
        self.pull_with(remote, local, opts, Parents::Create).await
    }

    /// [`pull`](Self::pull) whose local parents were checked by the caller ([`Parents`]).
    pub(crate) async fn pull_with(
        &self,
        remote: &str,
        local: &Path,
        opts: &CopyOptions,
        parents: Parents,
    ) -> Result<CopyReport, TransportError> {
        let ch = self.sftp().await;
        // A pull's kept prefix never crossed the wire: resume only if something independent
        // of it will check the result.
        let checkable =
            opts.expected_sha256.is_some() || matches!(opts.verify, Verify::RemoteCommand { .. });
        with_restart(remote, |resume| {
            let allow = opts.resume && checkable && resume;
            self.pull_once(&ch, remote, local, opts, allow, parents)
        })
        .await
    }

    /// `stat` of `base` (if given, following a link) and `lstat` of each of `paths`, all sent
    /// at once on one channel: one round trip for the lot.
    pub(crate) async fn stat_and_lstat(
        &self,
        base: Option<&str>,
        paths: &[&str],
    ) -> Result<(Option<Kind>, Vec<Kind>), TransportError> {
        let ch = self.sftp().await;
        let host = self.host();
        let kind = |r: Result<russh_sftp::protocol::Attrs, SftpError>, path: &str, op| match r {
            Ok(a) => Ok(Kind::of_remote(&a.attrs)),
            Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {
                Ok(Kind::Missing)
            }
            Err(e) => Err(sftp_err(host, path, op, e)),
        };
        let base_stat = async {
            match base {
                Some(b) => Some(kind(ch.raw.stat(b).await, b, "stat")),
                None => None,
            }
        };
        let lstats = futures::future::join_all(
            paths
                .iter()
                .map(|p| async { kind(ch.raw.lstat(*p).await, p, "lstat") }),
        );
        let (base_kind, kinds) = futures::join!(base_stat, lstats);
        let base_kind = base_kind.transpose()?;
        let kinds = kinds.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok((base_kind, kinds))
    }

    /// `lstat` each of `paths`, all sent together (one round trip); each answer on its own
    /// (a missing path is [`Kind::Missing`]).
    pub(crate) async fn lstat_each(&self, paths: &[&str]) -> Vec<Result<Kind, TransportError>> {
        let ch = self.sftp().await;
        let host = self.host();
        futures::future::join_all(paths.iter().map(|p| {
            let ch = &ch;
            async move {
                match ch.raw.lstat(*p).await {
                    Ok(a) => Ok(Kind::of_remote(&a.attrs)),
                    Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {
                        Ok(Kind::Missing)
                    }
                    Err(e) => Err(sftp_err(host, p, "lstat", e)),
                }
            }
        }))
        .await
    }

    /// Size and modification time (seconds) of each of `paths` if it is a regular file
    /// (`lstat`, all sent together: one round trip); `None` when missing or not a file.
    pub async fn file_stamps(
        &self,
        paths: &[String],
    ) -> Vec<Result<Option<(u64, Option<i64>)>, TransportError>> {
        let ch = self.sftp().await;
        let host = self.host();
        futures::future::join_all(paths.iter().map(|p| {
            let ch = &ch;
            async move {
                match ch.raw.lstat(p.as_str()).await {
                    Ok(a) if a.attrs.is_regular() && !a.attrs.is_symlink() => Ok(Some((
                        a.attrs.size.unwrap_or(0),
                        a.attrs.mtime.map(i64::from),
                    ))),
                    Ok(_) => Ok(None),
                    Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {
                        Ok(None)
                    }
                    Err(e) => Err(sftp_err(host, p, "lstat", e)),
                }
            }
        }))
        .await
    }

    /// Create one remote directory whose parent was checked; one that appeared meanwhile is
    /// fine if it is a real directory.
    pub(crate) async fn mkdir_below(&self, dir: &str) -> Result<(), TransportError> {
        let ch = self.sftp().await;
        let host = self.host();
        let Err(e) = ch.raw.mkdir(dir, FileAttributes::default()).await else {
            return Ok(());
        };
        match ch.raw.lstat(dir).await.map(|a| Kind::of_remote(&a.attrs)) {
            Ok(Kind::Dir) => Ok(()),
            Ok(Kind::Link) => Err(TransportError::UnsafePath {
                host: host.to_owned(),
                path: dir.to_owned(),
                reason: LINK_REFUSED.into(),
            }),
            _ => Err(sftp_err(host, dir, "mkdir", e)),
        }
    }

    /// Create a remote directory and its missing parents.
    pub async fn mkdir_p(&self, dir: &str) -> Result<(), TransportError> {
        let ch = self.sftp().await;
        mkdir_p(&ch, self.host(), dir).await
    }

    /// Remove a remote file; a missing file is not an error.
    pub async fn remove(&self, path: &str) -> Result<(), TransportError> {
        let ch = self.sftp().await;
        match ch.raw.remove(path).await {
            Ok(_) => Ok(()),
            Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => Ok(()),
            Err(e) => Err(sftp_err(self.host(), path, "remove", e)),
        }
    }

    /// Size of a remote file or directory (`lstat`), `None` if it does not exist.
    pub async fn remote_size(&self, path: &str) -> Result<Option<u64>, TransportError> {
        let ch = self.sftp().await;
        match ch.raw.lstat(path).await {
            Ok(a) => Ok(Some(a.attrs.size.unwrap_or(0))),
            Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => Ok(None),
            Err(e) => Err(sftp_err(self.host(), path, "lstat", e)),
        }
    }

    /// The canonical form of a remote path (symlinks resolved by the server).
    pub async fn realpath(&self, path: &str) -> Result<String, TransportError> {
        let ch = self.sftp().await;
        let name = ch
            .raw
            .realpath(path)
            .await
            .map_err(|e| sftp_err(self.host(), path, "realpath", e))?;
        name.files
            .into_iter()
            .next()
            .map(|f| f.filename)
            .ok_or_else(|| TransportError::Sftp {
                host: self.host().to_owned(),
                path: path.to_owned(),
                op: "realpath",
                message: "empty reply".into(),
            })
    }

    /// Read a remote file back over SFTP and hash it (the read-back verification).
    pub async fn read_back(
        &self,
        remote: &str,
        opts: &CopyOptions,
    ) -> Result<FileDigest, TransportError> {
        let ch = self.sftp().await;
        self.read_back_on(&ch, remote, opts).await
    }

    /// [`read_back`](Self::read_back) on a given channel (a push verifies on its own).
    async fn read_back_on(
        &self,
        ch: &SftpChannel,
        remote: &str,
        opts: &CopyOptions,
    ) -> Result<FileDigest, TransportError> {
        let host = self.host();
        let attrs = ch
            .raw
            .lstat(remote)
            .await
            .map_err(|e| sftp_err(host, remote, "lstat", e))?
            .attrs;
        let size = attrs.size.unwrap_or(0);
        let handle = ch
            .raw
            .open(remote, OpenFlags::READ, FileAttributes::default())
            .await
            .map_err(|e| sftp_err(host, remote, "open", e))?
            .handle;
        let mut hasher = StreamHasher::new()?;
        let mut reads = ReadPipeline::new(ch, host, remote, &handle, 0, size, opts);
        let result = async {
            while let Some(chunk) = reads.next().await {
                hasher.update(chunk?).await?;
            }
            Ok::<_, TransportError>(())
        }
        .await;
        drop(reads);
        let _ = ch.raw.close(handle).await;
        result?;
        Ok(hasher.finish().await?)
    }

    async fn push_once(
        &self,
        ch: &Arc<SftpChannel>,
        local: &Path,
        remote: &str,
        opts: &CopyOptions,
        allow_resume: bool,
        parents: Parents,
    ) -> Result<Attempt, TransportError> {
        let host = self.host();
        let raw = &ch.raw;
        let source = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(local)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => TransportError::UnsafePath {
                    host: crate::transport::LOCAL.into(),
                    path: local.display().to_string(),
                    reason: "is a symbolic link".into(),
                },
                _ => TransportError::local(local, "open", e),
            })?;
        let meta = source
            .metadata()
            .map_err(|e| TransportError::local(local, "stat", e))?;
        if !meta.is_file() {
            return Err(TransportError::UnsafePath {
                host: crate::transport::LOCAL.into(),
                path: local.display().to_string(),
                reason: "not a regular file".into(),
            });
        }
        let size = meta.len();
        let part = part_name(remote);
        let target = self.target();
        let stripable = target.channels > 1 && size >= target.stripe_min_size;
        let resumed_from = if allow_resume {
            match raw.lstat(part.as_str()).await {
                Ok(a) if a.attrs.is_symlink() => return Err(link_refused(host, &part)),
                Ok(a) if a.attrs.is_regular() && a.attrs.size.unwrap_or(u64::MAX) <= size => {
                    let len = a.attrs.size.unwrap_or(0);
                    // A striped push may leave holes, but only in its last STRIPE_BUDGET
                    // bytes (see `write_pipeline`).
                    if stripable {
                        len.saturating_sub(STRIPE_BUDGET as u64)
                    } else {
                        len
                    }
                }
                _ => 0,
            }
        } else {
            0
        };
        // A fresh start creates the `.part` exclusively: one round trip when none is there
        // (the usual case), and never through a symlink. Only when that fails is whatever
        // is there removed and the file created again.
        let fresh = resumed_from == 0;
        let flags = if fresh {
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE
        } else {
            OpenFlags::WRITE
        };
        // Created with the source's permission bits (never wider: the server applies its
        // umask), not with the server's default and narrowed at the end.
        let create_attrs = FileAttributes {
            permissions: Some(meta.mode() & 0o777),
            ..Default::default()
        };
        let open = |flags| raw.open(part.as_str(), flags, create_attrs.clone());
        // The writeback channel (first long push of a session: opened while the file is).
        // Background flushes only pay off for files longer than one flush step.
        let want_writeback = opts.fsync && ch.fsync && size - resumed_from > WRITEBACK_STEP;
        // The open is one round trip: timed, it tells whether striping pays (`striped` below).
        let timed_open = async {
            let started = std::time::Instant::now();
            let opened = open(flags).await;
            (opened, started.elapsed())
        };
        // The final name is looked at beside the open (no round trip of its own): a link
        // planted there is refused, though the rename would only replace the link itself.
        let final_name = async { raw.lstat(remote).await.map(|a| a.attrs.is_symlink()) };
        let ((opened, rtt), side, final_is_link) = futures::join!(
            timed_open,
            async {
                if want_writeback {
                    self.writeback_channel().await
                } else {
                    None
                }
            },
            final_name
        );
        let handle = match opened {
            Ok(h) => h,
            // No parent directory: create it and try again (single-file pushes only; a run
            // copy checked its directories before). Checking for it first would cost every
            // file a round trip.
            Err(SftpError::Status(s))
                if s.status_code == StatusCode::NoSuchFile && parents == Parents::Create =>
            {
                if let Some((parent, _)) = remote.rsplit_once('/').filter(|(p, _)| !p.is_empty()) {
                    mkdir_p(ch, host, parent).await?;
                }
                open(flags)
                    .await
                    .map_err(|e| sftp_err(host, &part, "open", e))?
            }
            // SFTP v3 has no "exists" status: a generic failure of the exclusive create means
            // a leftover `.part` in the usual case. A link there is refused; a file is
            // dropped and the `.part` created afresh, exclusively again; a real failure
            // shows up again on this second open.
            Err(SftpError::Status(s)) if fresh && s.status_code == StatusCode::Failure => {
                if let Ok(a) = raw.lstat(part.as_str()).await {
                    if a.attrs.is_symlink() {
                        return Err(link_refused(host, &part));
                    }
                }
                let _ = raw.remove(part.as_str()).await;
                open(OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE)
                    .await
                    .map_err(|e| sftp_err(host, &part, "open", e))?
            }
            Err(e) => return Err(sftp_err(host, &part, "open", e)),
        }
        .handle;
        if let Ok(true) = final_is_link {
            let _ = raw.close(handle.as_str()).await;
            let _ = raw.remove(part.as_str()).await;
            return Err(link_refused(host, remote));
        }

        let striped = stripable && rtt >= target.stripe_min_rtt && size - resumed_from > 0;
        let mut lanes = vec![Lane {
            ch: ch.clone(),
            handle: handle.clone(),
        }];
        if striped {
            lanes.extend(self.extra_lanes(&part).await);
            tracing::debug!(
                path = %part,
                lanes = lanes.len(),
                rtt_ms = rtt.as_secs_f64() * 1e3,
                "striping the push over channels"
            );
        }
        let result = self
            .push_lanes(
                &lanes,
                local,
                source,
                &meta,
                remote,
                &part,
                resumed_from,
                side,
                opts,
            )
            .await;
        // The extra lanes' handles: closed here whatever happened (the primary's is the
        // caller's); the copy's own fsync and close on the primary decide durability.
        close_extra_lanes(&lanes[1..]).await;
        result
    }

    /// The body of [`push_once`](Self::push_once) once the `.part` is open on every lane:
    /// hash, write, flush, verify, rename. The first lane is the copy's own channel and handle.
    #[allow(clippy::too_many_arguments)]
    async fn push_lanes(
        &self,
        lanes: &[Lane],
        local: &Path,
        source: std::fs::File,
        meta: &std::fs::Metadata,
        remote: &str,
        part: &str,
        resumed_from: u64,
        side: Option<Arc<SftpChannel>>,
        opts: &CopyOptions,
    ) -> Result<Attempt, TransportError> {
        let host = self.host();
        let (ch, handle) = (&lanes[0].ch, lanes[0].handle.as_str());
        let raw = &ch.raw;
        let size = meta.len();
        let mut hasher = StreamHasher::new()?;
        if let Some(m) = &opts.meter {
            m.restart(resumed_from);
        }
        let chunk = ch.write_len as usize;
        let mut chunks = local_chunks(source, local.to_path_buf(), resumed_from, chunk);
        // The kept prefix: hashed, not sent.
        let mut hashed = 0u64;
        while hashed < resumed_from {
            match chunks.next().await {
                Some(c) => {
                    let c = c?;
                    hashed += c.len() as u64;
                    hasher.update(c).await?;
                }
                None => return Err(changed(local, size, hashed)),
            }
        }
        let chunks = metered(throttle(chunks, opts.bandwidth.clone()), opts.meter.clone());
        // Writes in flight: bounded by count and by WRITE_BUDGET of payload (STRIPE_BUDGET
        // over several lanes: each lane wants about two windows' worth).
        let budget = if lanes.len() > 1 {
            STRIPE_BUDGET
        } else {
            WRITE_BUDGET
        };
        let depth = opts
            .requests_in_flight
            .clamp(1, (budget / chunk.max(1)).max(1));
        let writeback = side.map(|side| RemoteWriteback::start(side, part.to_owned()));
        // Mode and mtime, then fsync: sent right behind the last write, before its reply
        // (a server processes the requests on one file in order, draft-ietf-secsh-filexfer
        // "Request Synchronization and Reordering"), so a small file does not pay a round
        // trip for them. Their results only count once every write was acknowledged.
        let setstat = async {
            if opts.preserve {
                let attrs = FileAttributes {
                    permissions: Some(meta.mode() & 0o7777),
                    atime: Some(unix_secs(meta.atime())),
                    mtime: Some(unix_secs(meta.mtime())),
                    ..Default::default()
                };
                raw.fsetstat(handle, attrs)
                    .await
                    .map_err(|e| sftp_err(host, part, "setstat", e))?;
            }
            Ok::<_, TransportError>(())
        };
        let fsync = async {
            if opts.fsync && ch.fsync {
                raw.fsync(handle)
                    .await
                    .map_err(|e| sftp_err(host, part, "fsync", e))?;
            }
            Ok::<_, TransportError>(())
        };
        let tail = async {
            let (set, synced) = futures::join!(setstat, fsync);
            set.and(synced)
        };
        let sent = write_pipeline(
            lanes,
            host,
            part,
            resumed_from,
            depth,
            chunks,
            &mut hasher,
            writeback.as_ref(),
            tail,
        )
        .await;
        if let Some(w) = writeback {
            w.stop();
        }
        let (sent, finish) = match sent {
            Ok(done) => done,
            Err(err) => {
                let _ = raw.close(handle).await;
                let err = self.diagnose_full(ch, part, size, err).await;
                if let TransportError::NoSpace { .. } = err {
                    // Resuming cannot help a full disk; give the space back.
                    let _ = raw.remove(part).await;
                }
                return Err(err);
            }
        };
        if resumed_from + sent != size {
            // What was sent is not the file: nothing of it stays.
            let _ = raw.close(handle).await;
            let _ = raw.remove(part).await;
            return Err(changed(local, size, resumed_from + sent));
        }
        let digest = hasher.finish().await?;
        if let Err(err) = finish {
            let _ = raw.close(handle).await;
            return Err(err);
        }
        if let Err(err) = check_expected(host, remote, &digest, opts.expected_sha256.as_deref()) {
            // Bytes that do not hash to the manifest never stay at the destination (a forged
            // manifest must not leave a copy of any readable file there). A resumed one may
            // have had a bad prefix: copied again from zero.
            let _ = raw.close(handle).await;
            let _ = raw.remove(part).await;
            if resumed_from > 0 {
                return Ok(Attempt::BadPrefix(err));
            }
            return Err(err);
        }

        let verified = !matches!(opts.verify, Verify::Deferred);
        if !verified {
            // Nothing reads the `.part` between close and rename: both go at once (in order,
            // as above). A failed close still fails the copy, which is then not recorded.
            let close = async {
                raw.close(handle)
                    .await
                    .map_err(|e| sftp_err(host, part, "close", e))
            };
            let (closed, renamed) = futures::join!(close, rename(ch, host, part, remote));
            closed?;
            renamed?;
            return Ok(Attempt::done(sent, digest, resumed_from, verified));
        }
        raw.close(handle)
            .await
            .map_err(|e| sftp_err(host, part, "close", e))?;
        let check = match &opts.verify {
            Verify::Deferred => Ok(()),
            Verify::ReadBack => match self.read_back_on(ch, part, opts).await {
                Ok(found) => verify::compare(host, part, &digest, &found),
                Err(e) => Err(e),
            },
            Verify::RemoteCommand { argv } => {
                verify::remote_command(self, argv, part, &digest).await
            }
        };
        if let Err(err) = check {
            if let TransportError::ChecksumMismatch { .. } = err {
                let _ = raw.remove(part).await;
                if resumed_from > 0 {
                    return Ok(Attempt::BadPrefix(err));
                }
            }
            return Err(err);
        }
        rename(ch, host, part, remote).await?;
        Ok(Attempt::done(sent, digest, resumed_from, verified))
    }

    /// Extra lanes for a striped push of `part` (already created): channels no other copy
    /// holds, opened side by side up to [`SshTarget::channels`](crate::transport::SshTarget),
    /// each with its own write handle. A channel that cannot be had or a handle that cannot
    /// be opened just means one lane fewer.
    async fn extra_lanes(&self, part: &str) -> Vec<Lane> {
        let wanted = self.target().channels.saturating_sub(1);
        let lanes = (0..wanted).map(|_| async {
            let ch = self.idle_sftp().await?;
            match ch
                .raw
                .open(part, OpenFlags::WRITE, FileAttributes::default())
                .await
            {
                Ok(h) => Some(Lane {
                    ch,
                    handle: h.handle,
                }),
                Err(e) => {
                    tracing::debug!(path = %part, "no extra lane: {e}");
                    None
                }
            }
        });
        futures::future::join_all(lanes)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// A write failure with a generic status may be a full disk (SFTP v3 has no code for it):
    /// ask `statvfs@openssh.com` and say so if the space is not there.
    async fn diagnose_full(
        &self,
        ch: &SftpChannel,
        part: &str,
        size: u64,
        err: TransportError,
    ) -> TransportError {
        if !matches!(err, TransportError::Sftp { .. }) || !ch.statvfs {
            return err;
        }
        let Ok(vfs) = ch.raw.statvfs(part).await else {
            return err;
        };
        let available = vfs.blocks_avail.saturating_mul(vfs.fragment_size.max(1));
        let written = match ch.raw.lstat(part).await {
            Ok(a) => a.attrs.size.unwrap_or(0),
            Err(_) => 0,
        };
        let needed = size.saturating_sub(written);
        if available < needed {
            TransportError::NoSpace {
                host: self.host().to_owned(),
                path: part.to_owned(),
                needed,
                available: Some(available),
            }
        } else {
            err
        }
    }

    async fn pull_once(
        &self,
        ch: &Arc<SftpChannel>,
        remote: &str,
        local: &Path,
        opts: &CopyOptions,
        allow_resume: bool,
        parents: Parents,
    ) -> Result<Attempt, TransportError> {
        let host = self.host();
        let raw = &ch.raw;
        let attrs = raw
            .lstat(remote)
            .await
            .map_err(|e| sftp_err(host, remote, "lstat", e))?
            .attrs;
        if !attrs.is_regular() {
            return Err(TransportError::UnsafePath {
                host: host.to_owned(),
                path: remote.to_owned(),
                reason: if attrs.is_symlink() {
                    "is a symbolic link".into()
                } else {
                    "not a regular file".into()
                },
            });
        }
        let size = attrs.size.unwrap_or(0);
        if let (Some(parent), Parents::Create) = (local.parent(), parents) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| TransportError::local(parent, "create directory", e))?;
        }
        let part = part_path(local);
        let resumed_from = match tokio::fs::symlink_metadata(&part).await {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(link_refused(
                    crate::transport::LOCAL,
                    &part.display().to_string(),
                ))
            }
            Ok(m) if allow_resume && m.is_file() && m.len() <= size => m.len(),
            _ => 0,
        };
        crate::transport::dest::refuse_local_link(local)?;
        // Created with the remote file's permission bits (0600 when it gives none).
        let mode = attrs.permissions.map_or(0o600, |m| m & 0o777);
        let handle = raw
            .open(remote, OpenFlags::READ, FileAttributes::default())
            .await
            .map_err(|e| sftp_err(host, remote, "open", e))?
            .handle;

        let mut hasher = StreamHasher::new()?;
        let (writer, tx) = spawn_writer(part.clone(), resumed_from, opts.fsync, mode)?;
        // The kept prefix is hashed from the local .part (it is checked later, see module docs).
        let mut prefix = local_chunks_of_part(&part, resumed_from, ch.read_len as usize)?;
        let mut result = async {
            while let Some(c) = prefix.next().await {
                hasher.update(c?).await?;
            }
            if let Some(m) = &opts.meter {
                m.restart(resumed_from);
            }
            let reads = ReadPipeline::new(ch, host, remote, &handle, resumed_from, size, opts);
            let mut stream = std::pin::pin!(metered(
                throttle(reads.into_stream(), opts.bandwidth.clone()),
                opts.meter.clone()
            ));
            let mut got = 0u64;
            while let Some(c) = stream.next().await {
                let c = c?;
                got += c.len() as u64;
                hasher.update(c.clone()).await?;
                if tx.send(c).await.is_err() {
                    break; // the writer failed; its error is collected below
                }
            }
            drop(tx);
            Ok::<_, TransportError>(got)
        }
        .await;
        let _ = raw.close(handle.as_str()).await;
        let written = writer
            .await
            .map_err(|e| TransportError::local(&part, "writer thread", std::io::Error::other(e)))?;
        let file = match written {
            Err(e) => {
                if let TransportError::NoSpace { .. } = e {
                    let _ = tokio::fs::remove_file(&part).await;
                }
                result = Err(e);
                None
            }
            Ok(f) => Some(f),
        };
        let sent = result?;
        let Some(file) = file else {
            return Err(TransportError::local(
                &part,
                "write",
                std::io::Error::other("writer ended"),
            ));
        };
        if resumed_from + sent != size {
            drop(file);
            let _ = tokio::fs::remove_file(&part).await;
            return Err(changed_remote(host, remote, size, resumed_from + sent));
        }
        let digest = hasher.finish().await?;
        if let Err(err) = check_expected(host, remote, &digest, opts.expected_sha256.as_deref()) {
            // A `.part` that does not hash to the manifest is never resumed again: gone, and
            // a resumed one is copied again from zero.
            drop(file);
            let _ = tokio::fs::remove_file(&part).await;
            if resumed_from > 0 {
                return Ok(Attempt::BadPrefix(err));
            }
            return Err(err);
        }
        let (preserve, fsync) = (opts.preserve, opts.fsync);
        let part2 = part.clone();
        tokio::task::spawn_blocking(move || -> Result<(), TransportError> {
            if preserve {
                use std::os::unix::fs::PermissionsExt;
                if let Some(mode) = attrs.permissions {
                    file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
                        .map_err(|e| TransportError::local(&part2, "chmod", e))?;
                }
                if let Some(mtime) = attrs.mtime {
                    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.into());
                    file.set_modified(t)
                        .map_err(|e| TransportError::local(&part2, "set mtime", e))?;
                }
            }
            if fsync {
                file.sync_all()
                    .map_err(|e| TransportError::local(&part2, "fsync", e))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| TransportError::local(&part, "finish", std::io::Error::other(e)))??;

        let verified = !matches!(opts.verify, Verify::Deferred);
        let check = match &opts.verify {
            Verify::Deferred => Ok(()),
            Verify::ReadBack => {
                let (p, d) = (part.clone(), digest);
                tokio::task::spawn_blocking(move || verify::local_file(&p, &d))
                    .await
                    .map_err(|e| TransportError::local(&part, "verify", std::io::Error::other(e)))?
            }
            Verify::RemoteCommand { argv } => {
                verify::remote_command(self, argv, remote, &digest).await
            }
        };
        if let Err(err) = check {
            if let TransportError::ChecksumMismatch { .. } = err {
                let _ = tokio::fs::remove_file(&part).await;
                if resumed_from > 0 {
                    return Ok(Attempt::BadPrefix(err));
                }
            }
            return Err(err);
        }
        tokio::fs::rename(&part, local)
            .await
            .map_err(|e| TransportError::local(local, "rename", e))?;
        if opts.fsync {
            let l = local.to_path_buf();
            tokio::task::spawn_blocking(move || sync_parent(&l))
                .await
                .map_err(|e| {
                    TransportError::local(local, "fsync directory", std::io::Error::other(e))
                })??;
        }
        Ok(Attempt::done(sent, digest, resumed_from, verified))
    }
}

fn unix_secs(t: i64) -> u32 {
    t.clamp(0, u32::MAX as i64) as u32
}

fn changed(local: &Path, before: u64, after: u64) -> TransportError {
    TransportError::SourceChanged {
        host: crate::transport::LOCAL.into(),
        path: local.display().to_string(),
        before,
        after,
    }
}

fn link_refused(host: &str, path: &str) -> TransportError {
    TransportError::UnsafePath {
        host: host.to_owned(),
        path: path.to_owned(),
        reason: LINK_REFUSED.into(),
    }
}

fn changed_remote(host: &str, remote: &str, before: u64, after: u64) -> TransportError {
    TransportError::SourceChanged {
        host: host.to_owned(),
        path: remote.to_owned(),
        before,
        after,
    }
}

/// Create `dir` and its missing parents on the server.
async fn mkdir_p(ch: &SftpChannel, host: &str, dir: &str) -> Result<(), TransportError> {
    let is_dir = |a: &FileAttributes| a.is_dir();
    if let Ok(a) = ch.raw.stat(dir).await {
        if is_dir(&a.attrs) {
            return Ok(());
        }
    }
    let mut prefix = String::new();
    for (i, part) in dir.split('/').enumerate() {
        if i > 0 {
            prefix.push('/');
        }
        prefix.push_str(part);
        if part.is_empty() || part == "." {
            continue;
        }
        match ch.raw.stat(prefix.as_str()).await {
            Ok(a) if is_dir(&a.attrs) => continue,
            Ok(_) => {
                return Err(TransportError::Sftp {
                    host: host.to_owned(),
                    path: prefix,
                    op: "mkdir",
                    message: "exists and is not a directory".into(),
                })
            }
            Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {}
            Err(e) => return Err(sftp_err(host, &prefix, "stat", e)),
        }
        if let Err(e) = ch
            .raw
            .mkdir(prefix.as_str(), FileAttributes::default())
            .await
        {
            // Another copy may have created it meanwhile.
            match ch.raw.stat(prefix.as_str()).await {
                Ok(a) if is_dir(&a.attrs) => {}
                _ => return Err(sftp_err(host, &prefix, "mkdir", e)),
            }
        }
    }
    Ok(())
}

/// Rename `from` over `to`: `posix-rename@openssh.com` when offered (atomic replace),
/// else remove + rename.
async fn rename(ch: &SftpChannel, host: &str, from: &str, to: &str) -> Result<(), TransportError> {
    if ch.posix_rename {
        let mut data = Vec::with_capacity(8 + from.len() + to.len());
        for s in [from, to] {
            data.extend_from_slice(&(s.len() as u32).to_be_bytes());
            data.extend_from_slice(s.as_bytes());
        }
        let reply = ch
            .raw
            .extended("posix-rename@openssh.com", data)
            .await
            .map_err(|e| sftp_err(host, to, "posix-rename", e))?;
        return match reply {
            russh_sftp::protocol::Packet::Status(s) if s.status_code == StatusCode::Ok => Ok(()),
            russh_sftp::protocol::Packet::Status(s) => {
                Err(sftp_err(host, to, "posix-rename", SftpError::Status(s)))
            }
            _ => Err(TransportError::Sftp {
                host: host.to_owned(),
                path: to.to_owned(),
                op: "posix-rename",
                message: "unexpected reply".into(),
            }),
        };
    }
    match ch.raw.remove(to).await {
        Ok(_) => {}
        Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {}
        Err(e) => return Err(sftp_err(host, to, "remove", e)),
    }
    ch.raw
        .rename(from, to)
        .await
        .map(|_| ())
        .map_err(|e| sftp_err(host, to, "rename", e))
}

/// Send chunks as pipelined writes from `offset`, in turn on each lane (one lane: the usual
/// case); returns the bytes written and the result of `tail`. On one lane, `tail`'s requests
/// go out right behind the last write, before its reply (the server applies one channel's
/// requests in order); on several, only once every write was acknowledged. Each chunk is
/// also handed to the hasher (its threads do the hashing).
///
/// Writes in flight are awaited oldest first, whatever their lane, so every byte before the
/// oldest unacknowledged write is on the server: what a cut can leave unwritten lies in the
/// last `depth` chunks sent.
#[allow(clippy::too_many_arguments)]
async fn write_pipeline(
    lanes: &[Lane],
    host: &str,
    part: &str,
    mut offset: u64,
    depth: usize,
    chunks: impl Stream<Item = Result<Bytes, TransportError>>,
    hasher: &mut StreamHasher,
    writeback: Option<&RemoteWriteback>,
    tail: impl std::future::Future<Output = Result<(), TransportError>>,
) -> Result<(u64, Result<(), TransportError>), TransportError> {
    let mut chunks = std::pin::pin!(chunks);
    let mut unflushed = 0u64;
    // Dropping a `Waiting` (on an error) forgets its request.
    let mut inflight: VecDeque<Waiting> = VecDeque::with_capacity(depth);
    let written = |w: Waiting| async move {
        match w.reply().await {
            Ok(Reply::Status { code: FX_OK, .. }) => Ok(()),
            Ok(Reply::Status { code, message, .. }) => {
                Err(status_err(host, part, "write", code, message))
            }
            Ok(Reply::Data { id, .. }) => Err(wire_err(
                host,
                part,
                "write",
                WireError::UnexpectedReply { kind: 103, id },
            )),
            Err(e) => Err(wire_err(host, part, "write", e)),
        }
    };
    let start = offset;
    let mut turn = 0usize;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if inflight.len() >= depth {
            if let Some(oldest) = inflight.pop_front() {
                written(oldest).await?;
            }
        }
        let lane = &lanes[turn % lanes.len()];
        turn += 1;
        let sent = lane
            .ch
            .mux
            .write(lane.handle.as_bytes(), offset, chunk.clone())
            .await
            .map_err(|e| wire_err(host, part, "write", e))?;
        inflight.push_back(sent);
        offset += chunk.len() as u64;
        unflushed += chunk.len() as u64;
        if unflushed >= WRITEBACK_STEP {
            if let Some(w) = writeback {
                w.nudge();
            }
            unflushed = 0;
        }
        hasher.update(chunk).await?;
    }
    // `tail` is polled (its requests sent) right after the first wait below starts.
    let drain = async {
        while let Some(oldest) = inflight.pop_front() {
            written(oldest).await?;
        }
        Ok::<_, TransportError>(())
    };
    if lanes.len() > 1 {
        drain.await?;
        return Ok((offset - start, tail.await));
    }
    let (drained, tail) = futures::join!(drain, tail);
    drained?;
    Ok((offset - start, tail))
}

/// Background flushes of a file being pushed: on the session's writeback channel, a second
/// handle to the remote `.part` gets `fsync@openssh.com` every [`WRITEBACK_STEP`] bytes sent,
/// so the remote disk writes during the copy and the final `fsync` on the copy's own handle
/// has little left (without: 2.5 s for 2 GiB here, after the last byte was sent).
///
/// Failures here are logged and otherwise ignored. The final `fsync` decides durability, and
/// it sees any writeback error too: Linux reports a file's writeback errors to every open
/// file description that existed when they happened.
struct RemoteWriteback {
    nudge: mpsc::Sender<()>,
    task: JoinHandle<()>,
}

impl RemoteWriteback {
    fn start(side: Arc<SftpChannel>, part: String) -> Self {
        // One pending nudge at most: one that comes while a flush runs is covered by the next.
        let (nudge, mut rx) = mpsc::channel::<()>(1);
        let task = tokio::spawn(async move {
            let raw = &side.raw;
            let handle = match raw
                .open(part.as_str(), OpenFlags::READ, FileAttributes::default())
                .await
            {
                Ok(h) => h.handle,
                Err(e) => {
                    tracing::debug!(path = %part, "writeback handle: {e}");
                    return;
                }
            };
            while rx.recv().await.is_some() {
                if let Err(e) = raw.fsync(handle.as_str()).await {
                    tracing::debug!(path = %part, "background fsync: {e}");
                    break;
                }
            }
            let _ = raw.close(handle.as_str()).await;
        });
        RemoteWriteback { nudge, task }
    }

    /// Ask for a flush of everything sent so far; never waits.
    fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }

    /// No more flushes: the task lets a running one end, closes its handle and exits on its
    /// own (nothing waits for that: the copy's own fsync follows anyway).
    fn stop(self) {
        drop(self.nudge);
        drop(self.task);
    }
}

/// Read a local file on a reader thread: `first` bytes in pieces ending exactly at `first`,
/// then `chunk`-sized pieces. At most a few chunks are buffered.
fn local_chunks(
    mut file: impl std::io::Read + Send + 'static,
    path: PathBuf,
    first: u64,
    chunk: usize,
) -> ChunkStream<'static> {
    use std::io::Read;
    let (tx, rx) = mpsc::channel::<Result<Bytes, TransportError>>(8);
    std::thread::spawn(move || {
        let mut pos = 0u64;
        loop {
            let want = if pos < first {
                (first - pos).min(chunk as u64) as usize
            } else {
                chunk
            };
            // Read into spare capacity: no zero-filling of a buffer about to be overwritten.
            let mut buf = Vec::with_capacity(want);
            match file.by_ref().take(want as u64).read_to_end(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    pos += n as u64;
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(TransportError::local(&path, "read", e)));
                    break;
                }
            }
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// The first `len` bytes of a local `.part`, as chunks (empty when `len` is 0).
fn local_chunks_of_part(
    part: &Path,
    len: u64,
    chunk: usize,
) -> Result<ChunkStream<'static>, TransportError> {
    if len == 0 {
        return Ok(Box::pin(futures::stream::empty()));
    }
    let file = std::fs::File::open(part).map_err(|e| TransportError::local(part, "open", e))?;
    Ok(local_chunks(
        std::io::Read::take(file, len),
        part.to_path_buf(),
        0,
        chunk,
    ))
}

/// A writer thread appending chunks to a local `.part` from `offset` (truncating it when 0).
/// Returns the open file when the channel closes, for mtime/mode/fsync.
///
/// With `fsync`, a [`Writeback`] thread flushes what was written so far every
/// [`WRITEBACK_STEP`] bytes, while the copy goes on, so the final `fsync` has little left to
/// do instead of the whole file (2.5 s for 2 GiB here, after the last byte arrived).
#[allow(clippy::type_complexity)]
fn spawn_writer(
    part: PathBuf,
    offset: u64,
    fsync: bool,
    mode: u32,
) -> Result<
    (
        JoinHandle<Result<std::fs::File, TransportError>>,
        mpsc::Sender<Bytes>,
    ),
    TransportError,
> {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = if offset > 0 {
        let mut f = crate::transport::local::open_part(&part, mode)?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| TransportError::local(&part, "seek", e))?;
        f.set_len(offset)
            .map_err(|e| TransportError::local(&part, "truncate", e))?;
        f
    } else {
        crate::transport::local::create_part(&part, mode)?
    };
    let writeback = if fsync {
        Some(Writeback::start(&file, &part)?)
    } else {
        None
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let task = tokio::task::spawn_blocking(move || {
        let mut unflushed = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            file.write_all(&chunk)
                .map_err(|e| TransportError::local(&part, "write", e))?;
            unflushed += chunk.len() as u64;
            if unflushed >= WRITEBACK_STEP {
                if let Some(w) = &writeback {
                    w.nudge();
                }
                unflushed = 0;
            }
        }
        if let Some(w) = writeback {
            w.finish(&part)?;
        }
        Ok(file)
    });
    Ok((task, tx))
}

/// Bytes written (pull) or sent (push) between two background flushes of a file.
const WRITEBACK_STEP: u64 = 32 << 20;

/// A thread that runs `fdatasync` on a file being written, when nudged, so that its dirty
/// pages go to disk during the copy rather than all at the final `fsync`.
///
/// A failed flush is kept and returned by [`Writeback::finish`]: the descriptor is shared
/// with the writer (`dup`), and Linux reports a writeback error once per open file, so an
/// error swallowed here would not be seen by the final `fsync` either.
struct Writeback {
    nudge: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl Writeback {
    fn start(file: &std::fs::File, part: &Path) -> Result<Self, TransportError> {
        let file = file
            .try_clone()
            .map_err(|e| TransportError::local(part, "dup", e))?;
        // One pending nudge at most: a nudge while a flush runs is covered by the next one.
        let (nudge, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("ferry-writeback".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    file.sync_data()?;
                }
                Ok(())
            })
            .map_err(|e| TransportError::local(part, "start writeback thread", e))?;
        Ok(Writeback { nudge, thread })
    }

    /// Ask for a flush of everything written so far; never waits.
    fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }

    /// Stop the thread; the error of any flush it ran.
    fn finish(self, part: &Path) -> Result<(), TransportError> {
        drop(self.nudge);
        match self.thread.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(TransportError::local(part, "fsync", e)),
            Err(_) => Err(TransportError::local(
                part,
                "fsync",
                std::io::Error::other("writeback thread panicked"),
            )),
        }
    }
}

/// Pipelined reads of `[offset, size)` of an open remote file, yielded in order. Dropping it
/// forgets the reads in flight.
struct ReadPipeline<'a> {
    ch: &'a SftpChannel,
    host: &'a str,
    path: &'a str,
    handle: String,
    /// Next offset to request.
    next: u64,
    size: u64,
    depth: usize,
    inflight: VecDeque<(u64, u32, Waiting)>,
}

impl<'a> ReadPipeline<'a> {
    fn new(
        ch: &'a SftpChannel,
        host: &'a str,
        path: &'a str,
        handle: &str,
        offset: u64,
        size: u64,
        opts: &CopyOptions,
    ) -> Self {
        ReadPipeline {
            ch,
            host,
            path,
            handle: handle.to_owned(),
            next: offset,
            size,
            depth: opts.requests_in_flight.max(1),
            inflight: VecDeque::new(),
        }
    }

    async fn request(&self, offset: u64, len: u32) -> Result<Waiting, TransportError> {
        self.ch
            .mux
            .read(self.handle.as_bytes(), offset, len)
            .await
            .map_err(|e| wire_err(self.host, self.path, "read", e))
    }

    async fn fill(&mut self) -> Result<(), TransportError> {
        while self.inflight.len() < self.depth && self.next < self.size {
            let len = (self.size - self.next).min(self.ch.read_len as u64) as u32;
            let waiting = self.request(self.next, len).await?;
            self.inflight.push_back((self.next, len, waiting));
            self.next += len as u64;
        }
        Ok(())
    }

    /// The next chunk in file order; `None` at the end.
    async fn next(&mut self) -> Option<Result<Bytes, TransportError>> {
        if let Err(e) = self.fill().await {
            return Some(Err(e));
        }
        let (offset, len, waiting) = self.inflight.pop_front()?;
        let (host, path) = (self.host, self.path);
        let (id, data) = match waiting.reply().await {
            Ok(Reply::Data { id, data }) => (id, data),
            Ok(Reply::Status { code: FX_EOF, .. }) => {
                return Some(Err(changed_remote(host, path, self.size, offset)));
            }
            Ok(Reply::Status {
                id, code: FX_OK, ..
            }) => {
                let e = WireError::UnexpectedReply { kind: 101, id };
                return Some(Err(wire_err(host, path, "read", e)));
            }
            Ok(Reply::Status { code, message, .. }) => {
                return Some(Err(status_err(host, path, "read", code, message)));
            }
            Err(e) => return Some(Err(wire_err(host, path, "read", e))),
        };
        if data.is_empty() {
            return Some(Err(changed_remote(host, path, self.size, offset)));
        }
        if data.len() > len as usize {
            let e = WireError::TooMuchData {
                id,
                got: data.len(),
                asked: len,
            };
            return Some(Err(wire_err(host, path, "read", e)));
        }
        let got = data.len() as u32;
        if got < len {
            // Short read: ask for the rest before anything queued behind it.
            let rest = offset + got as u64;
            match self.request(rest, len - got).await {
                Ok(waiting) => self.inflight.push_front((rest, len - got, waiting)),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(data))
    }

    fn into_stream(self) -> impl Stream<Item = Result<Bytes, TransportError>> + 'a {
        futures::stream::unfold(
            self,
            |mut p| async move { p.next().await.map(|item| (item, p)) },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_flushes_of_a_pulled_file_succeed_and_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.part");
        let mut file = std::fs::File::create(&path).unwrap();
        let w = Writeback::start(&file, &path).unwrap();
        for _ in 0..3 {
            std::io::Write::write_all(&mut file, &[7u8; 4096]).unwrap();
            w.nudge();
        }
        w.finish(&path).unwrap();
    }

    /// Linux reports a writeback error once per open file, and the flusher shares the
    /// writer's: an error it met must fail the copy, not vanish with the thread.
    #[test]
    fn a_failed_background_flush_fails_the_copy() {
        let path = Path::new("/dev/null");
        // fdatasync on a character device fails with EINVAL.
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let w = Writeback::start(&file, path).unwrap();
        w.nudge();
        match w.finish(path) {
            Err(TransportError::Local { op: "fsync", .. }) => {}
            other => panic!("expected the flush's fsync error, got {other:?}"),
        }
    }
}
