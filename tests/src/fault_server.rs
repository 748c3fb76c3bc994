//! An in-process SSH/SFTP server that injects faults: cuts the connection, stalls, answers
//! with an error status, or flips a bit of file data.
//!
//! The OpenSSH-based fault tests (`transport_faults.rs`) can only break the TCP stream. This
//! server breaks things at the SFTP level, where the transport must classify them: a request
//! that is never answered while the SSH connection stays healthy, a precise status on the Nth
//! write, a bit flipped on disk behind a successful write.
//!
//! Layout:
//!
//! - [`FaultServer`]: russh server on `127.0.0.1` (free port), an ed25519 host key made per
//!   instance, public-key auth accepting one user key (written to the server's temp dir with
//!   a `known_hosts` line for the client). Dropping it stops every connection.
//! - [`Fault`]: what to do ([`FaultAction`]), to which requests ([`Op`]) and when
//!   ([`Trigger`]). Set with [`FaultServer::set_fault`] at any time, also while a copy runs;
//!   a fault fires once, then disarms.
//! - `Sftp`: the `sftp` subsystem, a russh-sftp server handler serving [`FaultServer::root`]
//!   as `/`. Paths are normalised lexically and refused when `..` or a symlink leads out of
//!   the root. Extensions: `limits@openssh.com` (255 KiB requests, as OpenSSH),
//!   `posix-rename@openssh.com`, `fsync@openssh.com`, `statvfs@openssh.com`; any other gets
//!   `SSH_FX_OP_UNSUPPORTED`. `exec` channels are refused (Ferry's default verification is
//!   SFTP read-back).

use std::collections::HashMap;
use std::net::Shutdown;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context as _;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File, FileAttributes, Handle, Name, OpenFlags, Packet, Status,
    StatusCode, Version,
};
use russh_sftp::server::StatusReply;
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ports::LOOPBACK;
use crate::tempdirs::server_temp_dir;

/// The user name the server expects (any name is accepted with the right key).
pub const FAULT_USER: &str = "ferry";

/// Largest read/write request announced in `limits@openssh.com` (OpenSSH's value).
const MAX_REQUEST: u64 = 255 * 1024;

/// What an armed fault does when it fires.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultAction {
    /// Shut the TCP connection down (both directions) without an SSH goodbye.
    Cut,
    /// Never answer the request (nor, since the subsystem answers in order, any later request
    /// on the same channel). The SSH connection itself stays alive.
    Stall,
    /// Answer the request with this SFTP status and message instead of doing it.
    Error {
        /// e.g. `StatusCode::PermissionDenied`, `StatusCode::Failure`.
        code: StatusCode,
        /// The status message the client sees.
        message: String,
    },
    /// A full disk: the write fails with `SSH_FX_FAILURE` "No space left on device" (SFTP v3
    /// has no code for it), and `statvfs@openssh.com` reports no space left from then on.
    NoSpace,
    /// Flip one bit of file data: of the bytes a write puts on disk (the write still answers
    /// OK), or of the bytes a read returns. With [`Trigger::AfterBytes`]`(n)` it is the
    /// lowest bit of data byte `n`; with [`Trigger::OnRequest`], of that request's first byte.
    FlipBit,
}

impl FaultAction {
    /// `SSH_FX_PERMISSION_DENIED`.
    pub fn permission_denied() -> Self {
        FaultAction::Error {
            code: StatusCode::PermissionDenied,
            message: "Permission denied".into(),
        }
    }

    /// `SSH_FX_FAILURE` with `message`.
    pub fn failure(message: impl Into<String>) -> Self {
        FaultAction::Error {
            code: StatusCode::Failure,
            message: message.into(),
        }
    }
}

/// The requests a fault watches (and counts, for [`Trigger::OnRequest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `SSH_FXP_OPEN`.
    Open,
    /// `SSH_FXP_READ`.
    Read,
    /// `SSH_FXP_WRITE`.
    Write,
    /// `fsync@openssh.com`.
    Fsync,
    /// `SSH_FXP_RENAME` and `posix-rename@openssh.com`.
    Rename,
    /// Every request except `SSH_FXP_INIT`.
    Any,
}

/// When an armed fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// On the watched request whose file data (written or read) crosses byte `n`, counted
    /// from when the fault was set. Only `Read`, `Write` and `Any` carry data.
    AfterBytes(u64),
    /// On the `n`th watched request (1-based) since the fault was set.
    OnRequest(u64),
}

/// A fault: `action` on the `op` request that `trigger` picks.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub action: FaultAction,
    pub op: Op,
    pub trigger: Trigger,
}

impl Fault {
    /// `action` on the `op` request whose data crosses byte `n`.
    pub fn after_bytes(action: FaultAction, op: Op, n: u64) -> Self {
        Fault {
            action,
            op,
            trigger: Trigger::AfterBytes(n),
        }
    }

    /// `action` on the `n`th `op` request.
    pub fn on_request(action: FaultAction, op: Op, n: u64) -> Self {
        Fault {
            action,
            op,
            trigger: Trigger::OnRequest(n),
        }
    }
}

/// The armed fault and its counters.
#[derive(Debug, Default)]
struct Armed {
    fault: Option<Fault>,
    bytes: u64,
    requests: u64,
}

/// One `fsync@openssh.com` the server served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsyncSeen {
    /// The file, as the client named it when opening the handle.
    pub path: String,
    /// Whether the handle was opened for writing.
    pub writable: bool,
    /// The file's size when the fsync ran.
    pub size: u64,
}

/// What the handler must do for one request: the action, and for a flip the data byte.
struct Fired {
    action: FaultAction,
    byte: usize,
}

/// State shared by the server, its connections and their SFTP handlers.
#[derive(Debug)]
struct Shared {
    armed: Mutex<Armed>,
    fired: AtomicU64,
    /// Writes that did not start where the previous write on their handle ended.
    out_of_order: AtomicU64,
    /// Every `fsync@openssh.com` served, in order.
    fsyncs: Mutex<Vec<FsyncSeen>>,
    /// `sftp` subsystems started (one per SFTP channel a client opened).
    sftp_channels: AtomicU64,
    /// Set once a `NoSpace` fault fired: statvfs reports a full disk.
    disk_full: Mutex<bool>,
    /// Bumped by `set_fault`, `clear_fault` and drop: releases stalled requests.
    release: watch::Sender<u64>,
    /// A clone of each accepted socket, to shut it down on a cut or on drop.
    sockets: Mutex<Vec<std::net::TcpStream>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Count a request of kind `op` carrying `len` bytes of file data; the fault if it fires.
    fn check(&self, op: Op, len: u64) -> Option<Fired> {
        let mut guard = lock(&self.armed);
        let armed = &mut *guard;
        let fault = armed.fault.as_ref()?;
        if fault.op != Op::Any && fault.op != op {
            return None;
        }
        let before = armed.bytes;
        armed.bytes += len;
        armed.requests += 1;
        let byte = match fault.trigger {
            Trigger::AfterBytes(n) if before + len > n => (n - before.min(n)) as usize,
            Trigger::OnRequest(n) if armed.requests == n.max(1) => 0,
            _ => return None,
        };
        let action = fault.action.clone();
        armed.fault = None;
        drop(guard);
        self.fired.fetch_add(1, Ordering::SeqCst);
        if action == FaultAction::NoSpace {
            *lock(&self.disk_full) = true;
        }
        eprintln!("fault server: {action:?} on {op:?}");
        Some(Fired { action, byte })
    }

    fn bump_release(&self) {
        self.release.send_modify(|g| *g += 1);
    }
}

/// An in-process SSH/SFTP server with fault injection, for one test. Needs a tokio runtime
/// (it spawns its accept loop); stops every connection when dropped.
pub struct FaultServer {
    port: u16,
    root: PathBuf,
    user_key: PathBuf,
    known_hosts: PathBuf,
    host_key_line: String,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
    // Last: removed after the connections are shut down.
    _dir: TempDir,
}

impl std::fmt::Debug for FaultServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultServer")
            .field("port", &self.port)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl FaultServer {
    /// Start on a free port of 127.0.0.1, with fresh host and user keys and an empty root.
    pub async fn start() -> anyhow::Result<FaultServer> {
        let dir = server_temp_dir("ferry-fault-")?;
        let root = dir.path().join("root");
        std::fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
        let root = root.canonicalize()?;

        let host_key = PrivateKey::from(Ed25519Keypair::from_seed(&rand::random()));
        let user_key = PrivateKey::from(Ed25519Keypair::from_seed(&rand::random()));
        let user_key_path = dir.path().join("id_user");
        let pem = user_key
            .to_openssh(LineEnding::LF)
            .context("encoding the user key")?;
        std::fs::write(&user_key_path, pem.as_bytes())
            .with_context(|| format!("writing {}", user_key_path.display()))?;
        std::fs::set_permissions(&user_key_path, std::fs::Permissions::from_mode(0o600))?;

        let listener = tokio::net::TcpListener::bind((LOOPBACK, 0))
            .await
            .context("binding the fault server")?;
        let port = listener.local_addr()?.port();
        let host_key_line = host_key
            .public_key()
            .to_openssh()
            .context("encoding the host key")?;
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!("[{LOOPBACK}]:{port} {host_key_line}\n"),
        )
        .with_context(|| format!("writing {}", known_hosts.display()))?;

        let config = Arc::new(russh::server::Config {
            keys: vec![host_key],
            methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
            auth_rejection_time: std::time::Duration::from_millis(10),
            inactivity_timeout: None,
            nodelay: true,
            // russh's server grants window as data arrives, then waits, inside its session
            // loop, for room in the channel's buffer, while the SFTP handler that empties
            // that buffer waits for room in the session's event queue (10 by default) to
            // send its replies: with a few hundred writes in flight on a busy machine both
            // waited for ever. A queue longer than the requests a client keeps in flight
            // (64 per copy) keeps the handler moving. Likewise the channel's own buffer: a
            // stalled request must not stop the session loop (and its keep-alive answers),
            // so it holds more than the 16 MiB a client keeps in flight (32 KiB packets).
            event_buffer_size: 4096,
            channel_buffer_size: 1024,
            ..Default::default()
        });
        let (release, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            armed: Mutex::new(Armed::default()),
            fired: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            fsyncs: Mutex::new(Vec::new()),
            sftp_channels: AtomicU64::new(0),
            disk_full: Mutex::new(false),
            release,
            sockets: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(
            listener,
            config,
            shared.clone(),
            Arc::new(root.clone()),
            user_key.public_key().clone(),
        ));
        Ok(FaultServer {
            port,
            root,
            user_key: user_key_path,
            known_hosts,
            host_key_line,
            shared,
            accept,
            _dir: dir,
        })
    }

    /// The address to connect to.
    pub fn host(&self) -> &str {
        LOOPBACK
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user name to log in as.
    pub fn user(&self) -> &str {
        FAULT_USER
    }

    /// The private key the server accepts (OpenSSH format, mode 0600).
    pub fn user_key_path(&self) -> &Path {
        &self.user_key
    }

    /// A known_hosts file with the server's host key for `[127.0.0.1]:PORT`.
    pub fn known_hosts_path(&self) -> &Path {
        &self.known_hosts
    }

    /// `ssh-ed25519 AAAA…`: the host key line.
    pub fn host_key_line(&self) -> &str {
        &self.host_key_line
    }

    /// The real directory served as `/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The real path of a remote path (`/a/b` → `ROOT/a/b`).
    pub fn local_path(&self, remote: &str) -> PathBuf {
        self.root.join(remote.trim_start_matches('/'))
    }

    /// Arm `fault` (replacing any armed one; counters restart at zero) and release stalled
    /// requests.
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.shared.armed) = Armed {
            fault: Some(fault),
            ..Armed::default()
        };
        self.shared.bump_release();
    }

    /// Disarm, release stalled requests, and undo a `NoSpace` (the disk has room again).
    pub fn clear_fault(&self) {
        *lock(&self.shared.armed) = Armed::default();
        *lock(&self.shared.disk_full) = false;
        self.shared.bump_release();
    }

    /// How many faults have fired since the server started.
    pub fn fired(&self) -> u64 {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// How many SFTP channels clients have opened since the server started.
    pub fn sftp_channels_opened(&self) -> u64 {
        self.shared.sftp_channels.load(Ordering::SeqCst)
    }

    /// Every `fsync@openssh.com` served since the server started, in order.
    pub fn fsyncs(&self) -> Vec<FsyncSeen> {
        lock(&self.shared.fsyncs).clone()
    }

    /// How many writes arrived out of file order (not at the end of the previous write on
    /// the same handle) since the server started.
    pub fn out_of_order_writes(&self) -> u64 {
        self.shared.out_of_order.load(Ordering::SeqCst)
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.accept.abort();
        for socket in lock(&self.shared.sockets).drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        self.shared.bump_release();
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    config: Arc<russh::server::Config>,
    shared: Arc<Shared>,
    root: Arc<PathBuf>,
    allowed: PublicKey,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("fault server: accept failed: {e}");
                continue;
            }
        };
        // Keep a clone of the socket so that a Cut can shut it down under russh's feet.
        let (stream, socket) = match split_socket(stream) {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("fault server: cannot clone the socket: {e}");
                continue;
            }
        };
        let socket = Arc::new(socket);
        match socket.try_clone() {
            Ok(s) => lock(&shared.sockets).push(s),
            Err(e) => eprintln!("fault server: cannot clone the socket: {e}"),
        }
        let handler = Connection {
            shared: shared.clone(),
            root: root.clone(),
            allowed: allowed.clone(),
            socket,
            channels: HashMap::new(),
        };
        let config = config.clone();
        tokio::spawn(async move {
            match russh::server::run_stream(config, stream, handler).await {
                Ok(session) => {
                    if let Err(e) = session.await {
                        eprintln!("fault server: session ended: {e}");
                    }
                }
                Err(e) => eprintln!("fault server: handshake failed: {e}"),
            }
        });
    }
}

/// The tokio stream for russh and a std handle on the same socket.
fn split_socket(
    stream: tokio::net::TcpStream,
) -> std::io::Result<(tokio::net::TcpStream, std::net::TcpStream)> {
    let std_stream = stream.into_std()?;
    let clone = std_stream.try_clone()?;
    Ok((tokio::net::TcpStream::from_std(std_stream)?, clone))
}

/// One SSH connection: auth, session channels, the `sftp` subsystem.
struct Connection {
    shared: Arc<Shared>,
    root: Arc<PathBuf>,
    allowed: PublicKey,
    socket: Arc<std::net::TcpStream>,
    channels: HashMap<ChannelId, Channel<Msg>>,
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if offer.public_key.key_data() == self.allowed.key_data() {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if key.public_key.key_data() == self.allowed.key_data() {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let channel = match (name, self.channels.remove(&id)) {
            ("sftp", Some(channel)) => channel,
            _ => return session.channel_failure(id),
        };
        session.channel_success(id)?;
        let sftp = Sftp {
            shared: self.shared.clone(),
            root: self.root.clone(),
            socket: self.socket.clone(),
            handles: HashMap::new(),
            next_handle: 0,
            write_ends: HashMap::new(),
            opened: HashMap::new(),
        };
        self.shared.sftp_channels.fetch_add(1, Ordering::SeqCst);
        let config = russh_sftp::server::Config {
            max_client_packet_len: 512 * 1024,
        };
        russh_sftp::server::run_with_config(channel.into_stream(), sftp, config).await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        id: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // No remote commands here: Ferry verifies over SFTP read-back against this server.
        session.channel_failure(id)
    }

    async fn channel_eof(
        &mut self,
        id: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.close(id)
    }
}

/// An open handle: a file, or a directory listing not yet read.
enum Open {
    File(Arc<std::fs::File>),
    Dir(Option<Vec<File>>),
}

/// The SFTP subsystem of one channel.
struct Sftp {
    shared: Arc<Shared>,
    root: Arc<PathBuf>,
    socket: Arc<std::net::TcpStream>,
    handles: HashMap<String, Open>,
    next_handle: u64,
    /// Per file handle: where the last write ended.
    write_ends: HashMap<String, u64>,
    /// Per file handle: the name it was opened with and whether for writing.
    opened: HashMap<String, (String, bool)>,
}

fn status(code: StatusCode, message: impl Into<String>) -> StatusReply {
    code.with_message(message)
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Success".into(),
        language_tag: "en-US".into(),
    }
}

/// An I/O error as an SFTP status, the way OpenSSH's sftp-server maps errno.
fn io_status(e: &std::io::Error) -> StatusReply {
    use std::io::ErrorKind::*;
    let code = match e.kind() {
        NotFound => StatusCode::NoSuchFile,
        PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    status(code, e.to_string())
}

/// Run blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, StatusReply> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(io_status(&e)),
        Err(e) => Err(status(StatusCode::Failure, e.to_string())),
    }
}

/// SFTP attributes of `meta`, file type bits included (as OpenSSH sends them).
fn attrs_of(meta: &std::fs::Metadata) -> FileAttributes {
    FileAttributes {
        size: Some(meta.size()),
        uid: Some(meta.uid()),
        gid: Some(meta.gid()),
        permissions: Some(meta.mode()),
        atime: Some(meta.atime().clamp(0, u32::MAX as i64) as u32),
        mtime: Some(meta.mtime().clamp(0, u32::MAX as i64) as u32),
        ..Default::default()
    }
}

/// Normalise a client path to a path below `/`, refusing `..` above it.
fn virtual_path(path: &str) -> Result<String, StatusReply> {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(status(
                        StatusCode::PermissionDenied,
                        format!("{path}: outside the served root"),
                    ));
                }
            }
            Component::Normal(p) => match p.to_str() {
                Some(s) => parts.push(s),
                None => return Err(status(StatusCode::BadMessage, "path is not UTF-8")),
            },
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Read one SSH string (`u32` length + bytes) from extension data.
fn take_string(data: &mut &[u8]) -> Result<String, StatusReply> {
    let bad = || status(StatusCode::BadMessage, "malformed extension data");
    let (len, rest) = data.split_first_chunk::<4>().ok_or_else(bad)?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(bad());
    }
    let (s, rest) = rest.split_at(len);
    *data = rest;
    String::from_utf8(s.to_vec()).map_err(|_| bad())
}

impl Sftp {
    /// The real path for a client path, checked to stay inside the root: the deepest
    /// existing ancestor (the path itself when `follow`) must resolve inside it.
    fn real(&self, path: &str, follow: bool) -> Result<PathBuf, StatusReply> {
        let v = virtual_path(path)?;
        let real = self.root.join(v.trim_start_matches('/'));
        let mut probe: &Path = if follow {
            &real
        } else {
            real.parent().unwrap_or(&real)
        };
        loop {
            match probe.canonicalize() {
                Ok(canon) if canon.starts_with(self.root.as_path()) => return Ok(real),
                Ok(_) => {
                    return Err(status(
                        StatusCode::PermissionDenied,
                        format!("{path}: resolves outside the served root"),
                    ))
                }
                Err(_) => match probe.parent() {
                    Some(parent) => probe = parent,
                    None => return Ok(real),
                },
            }
        }
    }

    fn file(&self, handle: &str) -> Result<Arc<std::fs::File>, StatusReply> {
        match self.handles.get(handle) {
            Some(Open::File(f)) => Ok(f.clone()),
            _ => Err(status(StatusCode::Failure, "invalid handle")),
        }
    }

    fn new_handle(&mut self, open: Open) -> String {
        self.next_handle += 1;
        let h = self.next_handle.to_string();
        self.handles.insert(h.clone(), open);
        h
    }

    /// Count the request; act on a fault that fires. `Ok(Some(byte))`: flip that data byte.
    async fn fault(&self, op: Op, len: u64) -> Result<Option<usize>, StatusReply> {
        let Some(fired) = self.shared.check(op, len) else {
            return Ok(None);
        };
        match fired.action {
            FaultAction::FlipBit => Ok(Some(fired.byte)),
            FaultAction::Error { code, message } => Err(status(code, message)),
            FaultAction::NoSpace => Err(status(StatusCode::Failure, "No space left on device")),
            FaultAction::Cut => {
                let _ = self.socket.shutdown(Shutdown::Both);
                self.stall().await;
                Err(status(StatusCode::Failure, "connection cut"))
            }
            FaultAction::Stall => {
                self.stall().await;
                Err(status(StatusCode::Failure, "stalled request released"))
            }
        }
    }

    /// Wait until the fault is changed or cleared, or the server dropped.
    async fn stall(&self) {
        let mut rx = self.shared.release.subscribe();
        let _ = rx.changed().await;
    }
}

impl russh_sftp::server::Handler for Sftp {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusReply::new(StatusCode::OpUnsupported)
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        let mut version = Version::new();
        for ext in [
            russh_sftp::extensions::LIMITS,
            "posix-rename@openssh.com",
            russh_sftp::extensions::FSYNC,
            russh_sftp::extensions::STATVFS,
        ] {
            version.extensions.insert(ext.into(), "1".into());
        }
        Ok(version)
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        self.fault(Op::Open, 0).await?;
        let real = self.real(&filename, true)?;
        let writable = pflags.contains(OpenFlags::WRITE);
        let mut options: std::fs::OpenOptions = pflags.into();
        // As OpenSSH's sftp-server: a created file gets the permission bits the client sent
        // (then the umask), 0666 when it sent none.
        if let Some(mode) = attrs.permissions {
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode & 0o7777);
        }
        let file = blocking(move || options.open(real)).await?;
        let handle = self.new_handle(Open::File(Arc::new(file)));
        self.opened.insert(handle.clone(), (filename, writable));
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        self.fault(Op::Any, 0).await?;
        self.write_ends.remove(&handle);
        self.opened.remove(&handle);
        match self.handles.remove(&handle) {
            Some(_) => Ok(ok(id)),
            None => Err(status(StatusCode::Failure, "invalid handle")),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let file = self.file(&handle)?;
        let len = (len as u64).min(MAX_REQUEST) as usize;
        let mut data = blocking(move || {
            let mut buf = vec![0u8; len];
            let n = file.read_at(&mut buf, offset)?;
            buf.truncate(n);
            Ok(buf)
        })
        .await?;
        if data.is_empty() {
            return Err(status(StatusCode::Eof, "end of file"));
        }
        if let Some(byte) = self.fault(Op::Read, data.len() as u64).await? {
            if let Some(b) = data.get_mut(byte) {
                *b ^= 1;
            }
        }
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        mut data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let file = self.file(&handle)?;
        let end = offset + data.len() as u64;
        if self
            .write_ends
            .insert(handle, end)
            .is_some_and(|e| e != offset)
        {
            self.shared.out_of_order.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(byte) = self.fault(Op::Write, data.len() as u64).await? {
            if let Some(b) = data.get_mut(byte) {
                *b ^= 1;
            }
        }
        blocking(move || file.write_all_at(&data, offset)).await?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.fault(Op::Any, 0).await?;
        let real = self.real(&path, false)?;
        let meta = blocking(move || std::fs::symlink_metadata(real)).await?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&meta),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.fault(Op::Any, 0).await?;
        let real = self.real(&path, true)?;
        let meta = blocking(move || std::fs::metadata(real)).await?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&meta),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        self.fault(Op::Any, 0).await?;
        let file = self.file(&handle)?;
        let meta = blocking(move || file.metadata()).await?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&meta),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        self.fault(Op::Any, 0).await?;
        let real = self.real(&path, true)?;
        blocking(move || {
            let file = if attrs.size.is_some() {
                std::fs::OpenOptions::new().write(true).open(&real)?
            } else {
                std::fs::File::open(&real)?
            };
            apply_attrs(&file, &attrs)
        })
        .await?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        self.fault(Op::Any, 0).await?;
        let file = self.file(&handle)?;
        blocking(move || apply_attrs(&file, &attrs)).await?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        self.fault(Op::Any, 0).await?;
        let real = self.real(&path, true)?;
        let entries = blocking(move || {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(real)? {
                let entry = entry?;
                let meta = entry.metadata()?;
                files.push(File::new(
                    entry.file_name().to_string_lossy().into_owned(),
                    attrs_of(&meta),
                ));
            }
            Ok(files)
        })
        .await?;
        let handle = self.new_handle(Open::Dir(Some(entries)));
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        self.fault(Op::Any, 0).await?;
        match self.handles.get_mut(&handle) {
            Some(Open::Dir(entries)) => match entries.take() {
                Some(files) if !files.is_empty() => Ok(Name { id, files }),
                _ => Err(status(StatusCode::Eof, "end of directory")),
            },
            _ => Err(status(StatusCode::Failure, "invalid handle")),
        }
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        self.fault(Op::Any, 0).await?;
        let real = self.real(&filename, false)?;
        blocking(move || std::fs::remove_file(real)).await?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        self.fault(Op::Any, 0).await?;
        let real = self.real(&path, false)?;
        blocking(move || std::fs::create_dir(real)).await?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        self.fault(Op::Any, 0).await?;
        let real = self.real(&path, false)?;
        blocking(move || std::fs::remove_dir(real)).await?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        self.fault(Op::Any, 0).await?;
        let real = self.real(&path, true)?;
        // Symlinks resolved where the path exists; the answer is in the client's namespace.
        let canon = real.canonicalize().unwrap_or(real);
        let inside = canon
            .strip_prefix(self.root.as_path())
            .map_err(|_| status(StatusCode::PermissionDenied, "outside the served root"))?;
        let name = virtual_path(&inside.to_string_lossy())?;
        Ok(Name {
            id,
            files: vec![File::dummy(name)],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        self.fault(Op::Rename, 0).await?;
        let (from, to) = (self.real(&oldpath, false)?, self.real(&newpath, false)?);
        // SFTP v3 rename does not replace (OpenSSH: link + unlink); posix-rename does.
        blocking(move || {
            if to.symlink_metadata().is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "destination exists",
                ));
            }
            std::fs::rename(from, to)
        })
        .await?;
        Ok(ok(id))
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        data: Vec<u8>,
    ) -> Result<Packet, Self::Error> {
        let mut data = data.as_slice();
        match request.as_str() {
            russh_sftp::extensions::LIMITS => {
                self.fault(Op::Any, 0).await?;
                let mut reply = Vec::with_capacity(32);
                for v in [MAX_REQUEST + 1024, MAX_REQUEST, MAX_REQUEST, 0] {
                    reply.extend_from_slice(&v.to_be_bytes());
                }
                Ok(Packet::ExtendedReply(ExtendedReply { id, data: reply }))
            }
            "posix-rename@openssh.com" => {
                self.fault(Op::Rename, 0).await?;
                let from = self.real(&take_string(&mut data)?, false)?;
                let to = self.real(&take_string(&mut data)?, false)?;
                blocking(move || std::fs::rename(from, to)).await?;
                Ok(Packet::Status(ok(id)))
            }
            russh_sftp::extensions::FSYNC => {
                self.fault(Op::Fsync, 0).await?;
                let handle = take_string(&mut data)?;
                let file = self.file(&handle)?;
                let size = blocking(move || file.sync_all().and_then(|()| file.metadata()))
                    .await?
                    .len();
                let (path, writable) = self.opened.get(&handle).cloned().unwrap_or_default();
                lock(&self.shared.fsyncs).push(FsyncSeen {
                    path,
                    writable,
                    size,
                });
                Ok(Packet::Status(ok(id)))
            }
            russh_sftp::extensions::STATVFS => {
                self.fault(Op::Any, 0).await?;
                let real = self.real(&take_string(&mut data)?, true)?;
                let full = *lock(&self.shared.disk_full);
                let vfs =
                    blocking(move || rustix::fs::statvfs(&real).map_err(std::io::Error::from))
                        .await?;
                let avail = if full { 0 } else { vfs.f_bavail };
                let free = if full { 0 } else { vfs.f_bfree };
                let mut reply = Vec::with_capacity(88);
                for v in [
                    vfs.f_bsize,
                    vfs.f_frsize,
                    vfs.f_blocks,
                    free,
                    avail,
                    vfs.f_files,
                    vfs.f_ffree,
                    vfs.f_favail,
                    vfs.f_fsid,
                    0, // flags
                    vfs.f_namemax,
                ] {
                    reply.extend_from_slice(&v.to_be_bytes());
                }
                Ok(Packet::ExtendedReply(ExtendedReply { id, data: reply }))
            }
            other => Err(status(
                StatusCode::OpUnsupported,
                format!("extension {other} not supported"),
            )),
        }
    }
}

/// Apply SFTP attributes (size, permission bits, times) to an open file.
fn apply_attrs(file: &std::fs::File, attrs: &FileAttributes) -> std::io::Result<()> {
    if let Some(size) = attrs.size {
        file.set_len(size)?;
    }
    if let Some(mode) = attrs.permissions {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    }
    let at = |t: u32| std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.into());
    let mut times = std::fs::FileTimes::new();
    if let Some(a) = attrs.atime {
        times = times.set_accessed(at(a));
    }
    if let Some(m) = attrs.mtime {
        times = times.set_modified(at(m));
    }
    if attrs.atime.is_some() || attrs.mtime.is_some() {
        file.set_times(times)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_paths_stay_below_the_root() {
        assert_eq!(virtual_path("/a/./b/../c").ok(), Some("/a/c".into()));
        assert_eq!(virtual_path("a/b").ok(), Some("/a/b".into()));
        assert_eq!(virtual_path(".").ok(), Some("/".into()));
        assert!(virtual_path("/../etc/passwd").is_err());
        assert!(virtual_path("a/../../x").is_err());
    }

    #[test]
    fn faults_fire_once_at_the_byte_or_request_they_name() {
        let (release, _) = watch::channel(0);
        let shared = Shared {
            armed: Mutex::new(Armed {
                fault: Some(Fault::after_bytes(FaultAction::FlipBit, Op::Write, 100)),
                ..Armed::default()
            }),
            fired: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            fsyncs: Mutex::new(Vec::new()),
            sftp_channels: AtomicU64::new(0),
            disk_full: Mutex::new(false),
            release,
            sockets: Mutex::new(Vec::new()),
        };
        assert!(shared.check(Op::Read, 1000).is_none(), "other op");
        assert!(shared.check(Op::Write, 64).is_none());
        let fired = shared.check(Op::Write, 64).unwrap();
        assert_eq!((fired.action, fired.byte), (FaultAction::FlipBit, 36));
        assert!(shared.check(Op::Write, 64).is_none(), "fires once");

        *lock(&shared.armed) = Armed {
            fault: Some(Fault::on_request(FaultAction::Cut, Op::Any, 3)),
            ..Armed::default()
        };
        assert!(shared.check(Op::Open, 0).is_none());
        assert!(shared.check(Op::Write, 10).is_none());
        assert_eq!(shared.check(Op::Fsync, 0).unwrap().action, FaultAction::Cut);
        assert_eq!(shared.fired.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn extension_strings_parse_and_reject_truncation() {
        let mut data: &[u8] = &[0, 0, 0, 2, b'h', b'1', 0, 0, 0, 9, b'x'];
        assert_eq!(take_string(&mut data).ok(), Some("h1".into()));
        assert!(take_string(&mut data).is_err());
    }
}
