//! SSH sessions: one connection per site, several SFTP channels on it.
//!
//! - [`SshTarget`]: where and how to connect (plain data; the caller maps the site map onto it).
//! - [`HostKeyPolicy`]: `Strict` (the key must be in known_hosts) or `AcceptNew` (an unknown
//!   host's key is appended to the first known_hosts file). Under both, a host whose recorded
//!   key differs from the presented one is refused with [`TransportError::HostKeyChanged`],
//!   naming the host and both fingerprints.
//! - [`SshSession::connect`]: TCP with a timeout, key exchange with AES-GCM preferred on
//!   AES-NI hosts, public-key authentication (identity files, then ssh-agent — the way to use
//!   encrypted keys), then one SFTP channel. Up to [`SshTarget::channels`] channels are
//!   opened as copies overlap ([`SshSession::sftp`]): uploads are capped per channel by the
//!   server's window (2 MiB for a stock sshd), so files in flight get a channel each. Opening
//!   them only when needed matters: sshd starts each `sftp-server` through the user's login
//!   shell, and a shell start-up file (conda, modules, pyenv) can cost 100 ms of server CPU
//!   per channel — a single-file copy used to pay for four.
//!
//! The session's file operations live in [`crate::transport::sftp`] (push, pull) and
//! [`crate::transport::exec`] (remote commands).

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{known_hosts, HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::rawsession::Limits as SftpLimits;
use russh_sftp::client::RawSftpSession;

use crate::transport::sftp_wire::{SftpMux, MAX_FRAME};
use crate::transport::TransportError;

/// What to do with a host whose key is not in known_hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// Refuse it (OpenSSH `StrictHostKeyChecking yes`).
    #[default]
    Strict,
    /// Record it in the first known_hosts file and go on (OpenSSH `accept-new`).
    AcceptNew,
}

/// How the connection reaches the target.
#[derive(Debug, Clone, Default)]
pub enum Route {
    /// A TCP connection to `host:port`.
    #[default]
    Direct,
    /// Through each bastion in turn (OpenSSH `ProxyJump`): the first is reached directly,
    /// each next one and then the target through a `direct-tcpip` channel of the one
    /// before. Every hop's host key is checked against its known_hosts and every hop
    /// authenticates with its own keys, as a direct connection would.
    Jump(Vec<SshTarget>),
    /// A command whose stdin and stdout carry the connection (OpenSSH `ProxyCommand`):
    /// the argv, placeholders already expanded, started without a shell.
    Command(Vec<String>),
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// How the connection reaches `host:port`.
    pub route: Route,
    /// Host name or address, as written in known_hosts.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Remote user.
    pub user: String,
    /// Private keys to offer, in order (ed25519, ECDSA, RSA). Encrypted keys are skipped;
    /// load them into ssh-agent.
    pub identity_files: Vec<PathBuf>,
    /// Also offer the keys held by an ssh-agent (the way to use encrypted keys).
    pub use_agent: bool,
    /// The agent's socket (OpenSSH `IdentityAgent`); `None`: `$SSH_AUTH_SOCK`.
    pub agent_socket: Option<PathBuf>,
    /// known_hosts files to check; the first one receives `AcceptNew` entries.
    pub known_hosts_files: Vec<PathBuf>,
    /// Unknown host policy.
    pub host_key_policy: HostKeyPolicy,
    /// Cipher names in order of preference; empty = AES-GCM first on AES-NI hosts,
    /// ChaCha20-Poly1305 first otherwise.
    pub ciphers: Vec<String>,
    /// Limit on TCP connect + key exchange + authentication.
    pub connect_timeout: Duration,
    /// Send a keep-alive after this much silence from the server.
    pub keepalive_interval: Option<Duration>,
    /// Close the connection after this much inactivity.
    pub idle_timeout: Option<Duration>,
    /// Limit on the answer to one SFTP request.
    pub request_timeout: Duration,
    /// Most SFTP channels opened on the connection (one at connect, more as copies overlap).
    pub channels: usize,
    /// SSH receive window per channel, in bytes (downloads are capped at one window per RTT).
    pub window_size: u32,
    /// A push of at least this many bytes may be striped over several channels (see
    /// [`crate::transport::sftp`]); a `.part` of a file this long resumes a little before its
    /// end, since a striped write may have left holes there.
    pub stripe_min_size: u64,
    /// ... and is striped when one round trip to the server takes at least this long: the
    /// server's window caps each channel at one window per round trip (2 MiB for a stock
    /// sshd: 100 MB/s at 20 ms, 500 MB/s at 4 ms).
    pub stripe_min_rtt: Duration,
}

impl SshTarget {
    /// A target with the defaults: strict host keys, 4 channels, 16 MiB window.
    pub fn new(host: impl Into<String>, port: u16, user: impl Into<String>) -> Self {
        SshTarget {
            route: Route::Direct,
            host: host.into(),
            port,
            user: user.into(),
            identity_files: Vec::new(),
            use_agent: true,
            agent_socket: None,
            known_hosts_files: Vec::new(),
            host_key_policy: HostKeyPolicy::Strict,
            ciphers: Vec::new(),
            connect_timeout: Duration::from_secs(15),
            keepalive_interval: Some(Duration::from_secs(15)),
            idle_timeout: None,
            request_timeout: Duration::from_secs(60),
            channels: 4,
            window_size: 16 << 20,
            stripe_min_size: 128 << 20,
            stripe_min_rtt: Duration::from_millis(4),
        }
    }
}

/// One SFTP channel and what its server offers: russh-sftp for the control requests, the
/// multiplexer for the data (see [`crate::transport::sftp_wire`]).
pub(crate) struct SftpChannel {
    pub(crate) raw: Arc<RawSftpSession>,
    pub(crate) mux: SftpMux,
    /// Largest read request (server limit or 32 KiB).
    pub(crate) read_len: u32,
    /// Largest write request (server limit or 32 KiB).
    pub(crate) write_len: u32,
    pub(crate) posix_rename: bool,
    pub(crate) fsync: bool,
    pub(crate) statvfs: bool,
}

/// A connected, authenticated SSH session with its SFTP channels.
pub struct SshSession {
    target: Arc<SshTarget>,
    handle: client::Handle<Client>,
    /// What carries the connection besides TCP: the bastions' sessions (a `ProxyJump`) or
    /// the proxy command's child; kept for as long as the session.
    _carrier: Carrier,
    /// The SFTP channels opened so far (at least one).
    sftp: Mutex<Vec<Arc<SftpChannel>>>,
    /// Extra channels being opened right now (counted against [`SshTarget::channels`]).
    opening: AtomicUsize,
    next: AtomicUsize,
    /// A channel of its own for background flushes of pushed files (`fsync@openssh.com` on
    /// a second handle), opened at the first push; `None` once opening it failed. Kept off
    /// the copy channels: an OpenSSH `sftp-server` answers one request at a time, so a flush
    /// there would hold up the writes queued behind it.
    writeback: tokio::sync::OnceCell<Option<Arc<SftpChannel>>>,
}

impl std::fmt::Debug for SshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSession")
            .field("host", &self.target.host)
            .field("port", &self.target.port)
            .field("user", &self.target.user)
            .field("channels", &self.channels().len())
            .finish()
    }
}

/// One extra channel being opened: counted in [`SshSession::opening`] until dropped.
struct Opening<'a>(&'a AtomicUsize);

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Request size when the server does not announce `limits@openssh.com`.
const DEFAULT_REQUEST: u32 = 32 * 1024;
/// Upper bound on requests (OpenSSH announces 255 KiB).
const MAX_REQUEST: u64 = 255 * 1024;

impl SshSession {
    /// Connect, check the host key, authenticate and open the SFTP channels.
    pub async fn connect(target: &SshTarget) -> Result<SshSession, TransportError> {
        let target = Arc::new(target.clone());
        let timeout = target.connect_timeout;
        tokio::time::timeout(timeout, Self::connect_inner(target.clone()))
            .await
            .map_err(|_| TransportError::Timeout {
                host: target.host.clone(),
                what: "connecting and authenticating".into(),
                after: timeout,
            })?
    }

    async fn connect_inner(target: Arc<SshTarget>) -> Result<SshSession, TransportError> {
        let (mut handle, carrier) = match &target.route {
            Route::Direct => (open_direct(&target).await?, Carrier::None),
            Route::Jump(hops) => {
                let mut held: Vec<client::Handle<Client>> = Vec::with_capacity(hops.len());
                for hop in hops {
                    let hop = Arc::new(hop.clone());
                    let mut next = match held.last() {
                        None => open_direct(&hop).await?,
                        Some(via) => open_through(via, &hop).await?,
                    };
                    authenticate(&mut next, &hop).await?;
                    held.push(next);
                }
                let handle = match held.last() {
                    None => open_direct(&target).await?,
                    Some(via) => open_through(via, &target).await?,
                };
                (handle, Carrier::Jump(held))
            }
            Route::Command(argv) => open_command(&target, argv).await?,
        };
        authenticate(&mut handle, &target).await?;
        // One channel now; more when copies overlap (see `sftp`).
        let first = Arc::new(open_sftp(&handle, &target).await?);
        Ok(SshSession {
            target,
            handle,
            _carrier: carrier,
            sftp: Mutex::new(vec![first]),
            opening: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            writeback: tokio::sync::OnceCell::new(),
        })
    }

    /// The host this session is connected to.
    pub fn host(&self) -> &str {
        &self.target.host
    }

    /// The target this session was made from.
    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, Vec<Arc<SftpChannel>>> {
        self.sftp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The SFTP channel for the next operation: one no operation holds; else a new one while
    /// fewer than [`SshTarget::channels`] are open or opening (overlapping callers open theirs
    /// side by side); else the open ones in turn. A channel that cannot be opened is not an
    /// error while another is there to share.
    pub(crate) async fn sftp(&self) -> Arc<SftpChannel> {
        if let Some(ch) = self.idle_sftp().await {
            return ch;
        }
        let open = self.channels();
        open[self.next.fetch_add(1, Ordering::Relaxed) % open.len()].clone()
    }

    /// A channel no operation holds, or a new one while fewer than [`SshTarget::channels`]
    /// are open or opening; `None` when every channel is busy and no more may be opened (or
    /// opening one failed). A striped push takes its extra lanes here, never sharing.
    ///
    /// A channel is in use while someone besides the session holds its `Arc`; the choice is
    /// made and the `Arc` cloned under the lock, so two callers never take the same idle one.
    pub(crate) async fn idle_sftp(&self) -> Option<Arc<SftpChannel>> {
        let max = self.target.channels.max(1);
        {
            let open = self.channels();
            if let Some(ch) = open.iter().find(|ch| Arc::strong_count(ch) == 1) {
                return Some(ch.clone());
            }
            if open.len() + self.opening.load(Ordering::SeqCst) >= max {
                return None;
            }
            self.opening.fetch_add(1, Ordering::SeqCst);
        }
        // Counted down however this ends, also when the caller gives up mid-open.
        let counted = Opening(&self.opening);
        let opened = open_sftp(&self.handle, &self.target).await;
        let mut open = self.channels();
        drop(counted);
        match opened {
            Ok(ch) => {
                let ch = Arc::new(ch);
                open.push(ch.clone());
                Some(ch)
            }
            Err(e) => {
                tracing::debug!(host = %self.target.host, "no further channel: {e}");
                None
            }
        }
    }

    /// The channel for background flushes, opened on first use. `None` when the server has
    /// no `fsync@openssh.com` or the channel cannot be opened: the flushes are only an
    /// optimisation, the copy's own final `fsync` is what makes it durable.
    pub(crate) async fn writeback_channel(&self) -> Option<Arc<SftpChannel>> {
        self.writeback
            .get_or_init(|| async {
                match open_sftp(&self.handle, &self.target).await {
                    Ok(ch) if ch.fsync => Some(Arc::new(ch)),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::debug!(host = %self.target.host, "no writeback channel: {e}");
                        None
                    }
                }
            })
            .await
            .clone()
    }

    pub(crate) fn handle(&self) -> &client::Handle<Client> {
        &self.handle
    }

    /// Close the connection politely.
    pub async fn close(self) -> Result<(), TransportError> {
        for ch in self.channels().iter() {
            let _ = ch.raw.close_session();
        }
        if let Some(Some(ch)) = self.writeback.get() {
            let _ = ch.raw.close_session();
        }
        self.handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await
            .map_err(|e| ssh_error(&self.target.host, "disconnecting", e))
    }
}

pub(crate) fn ssh_error(host: &str, what: &str, e: russh::Error) -> TransportError {
    TransportError::Ssh {
        host: host.to_owned(),
        what: what.to_owned(),
        message: e.to_string(),
    }
}

fn cipher_preference(target: &SshTarget) -> Result<Vec<russh::cipher::Name>, TransportError> {
    use russh::cipher::{AES_128_CTR, AES_128_GCM, AES_256_CTR, AES_256_GCM, CHACHA20_POLY1305};
    if !target.ciphers.is_empty() {
        return target
            .ciphers
            .iter()
            .map(|c| {
                russh::cipher::Name::try_from(c.as_str()).map_err(|_| TransportError::Ssh {
                    host: target.host.clone(),
                    what: "choosing ciphers".into(),
                    message: format!("unknown cipher {c:?}"),
                })
            })
            .collect();
    }
    Ok(if has_aes_ni() {
        vec![
            AES_128_GCM,
            AES_256_GCM,
            CHACHA20_POLY1305,
            AES_256_CTR,
            AES_128_CTR,
        ]
    } else {
        vec![
            CHACHA20_POLY1305,
            AES_128_GCM,
            AES_256_GCM,
            AES_256_CTR,
            AES_128_CTR,
        ]
    })
}

fn has_aes_ni() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The russh client handler: checks the server's host key.
pub(crate) struct Client {
    target: Arc<SshTarget>,
    /// Why the host key was refused, for the error returned by `connect`.
    rejection: Arc<Mutex<Option<TransportError>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let verdict = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => check_host_key(&self.target, key),
            PublicKeyOrCertificate::Certificate(_) => Err(TransportError::Ssh {
                host: self.target.host.clone(),
                what: "checking the host key".into(),
                message: "host certificates are not supported; list the host key in known_hosts"
                    .into(),
            }),
        };
        match verdict {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::error!(host = %self.target.host, error = %e, "host key refused");
                match self.rejection.lock() {
                    Ok(mut g) => *g = Some(e),
                    Err(p) => *p.into_inner() = Some(e),
                }
                Ok(false)
            }
        }
    }
}

/// The known_hosts decision for a presented key.
pub fn check_host_key(target: &SshTarget, key: &PublicKey) -> Result<(), TransportError> {
    let presented = key.fingerprint(HashAlg::Sha256).to_string();
    let mut first_other: Option<(PathBuf, usize, PublicKey)> = None;
    for file in &target.known_hosts_files {
        let entries =
            known_hosts::known_host_keys_path(&target.host, target.port, file).map_err(|e| {
                TransportError::KnownHosts {
                    path: file.clone(),
                    reason: e.to_string(),
                }
            })?;
        for (line, recorded) in entries {
            if recorded.key_data() == key.key_data() {
                return Ok(());
            }
            if first_other.is_none() {
                first_other = Some((file.clone(), line, recorded));
            }
        }
    }
    if let Some((file, line, recorded)) = first_other {
        return Err(TransportError::HostKeyChanged {
            host: target.host.clone(),
            port: target.port,
            known: format!(
                "{} {}",
                recorded.algorithm(),
                recorded.fingerprint(HashAlg::Sha256)
            ),
            presented: format!("{} {presented}", key.algorithm()),
            file,
            line,
        });
    }
    match (target.host_key_policy, target.known_hosts_files.first()) {
        (HostKeyPolicy::AcceptNew, Some(file)) => {
            known_hosts::learn_known_hosts_path(&target.host, target.port, key, file).map_err(
                |e| TransportError::KnownHosts {
                    path: file.clone(),
                    reason: format!("cannot record the new host key: {e}"),
                },
            )?;
            tracing::warn!(host = %target.host, port = target.port, fingerprint = %presented,
                file = %file.display(), "new host key recorded (accept-new)");
            Ok(())
        }
        _ => Err(TransportError::HostKeyUnknown {
            host: target.host.clone(),
            port: target.port,
            fingerprint: presented,
            known_hosts: target.known_hosts_files.clone(),
        }),
    }
}

/// What carries a session's connection besides its own TCP socket.
enum Carrier {
    /// Nothing: a direct connection.
    None,
    /// The bastions' sessions, first hop first (their channels carry the connection).
    Jump(#[allow(dead_code)] Vec<client::Handle<Client>>),
    /// The proxy command's child (killed when the session is dropped).
    Command(#[allow(dead_code)] tokio::process::Child),
}

fn client_config(target: &SshTarget) -> Result<Arc<client::Config>, TransportError> {
    Ok(Arc::new(client::Config {
        window_size: target.window_size,
        // The largest russh accepts without logging an error on every connection.
        maximum_packet_size: 65_535,
        inactivity_timeout: target.idle_timeout,
        keepalive_interval: target.keepalive_interval,
        keepalive_max: 3,
        nodelay: true,
        preferred: russh::Preferred {
            cipher: Cow::Owned(cipher_preference(target)?),
            ..russh::Preferred::DEFAULT
        },
        ..Default::default()
    }))
}

/// The handler for `target` and the slot where it leaves why it refused a host key.
fn handler_for(target: &Arc<SshTarget>) -> (Client, Arc<Mutex<Option<TransportError>>>) {
    let rejection = Arc::new(Mutex::new(None));
    let handler = Client {
        target: target.clone(),
        rejection: rejection.clone(),
    };
    (handler, rejection)
}

/// The error for a failed handshake: the host-key refusal if there was one.
fn handshake_error(
    target: &SshTarget,
    rejection: &Mutex<Option<TransportError>>,
    e: russh::Error,
) -> TransportError {
    let taken = match rejection.lock() {
        Ok(mut g) => g.take(),
        Err(p) => p.into_inner().take(),
    };
    taken.unwrap_or_else(|| match e {
        russh::Error::IO(source) => TransportError::Connect {
            host: target.host.clone(),
            port: target.port,
            source,
        },
        other => ssh_error(&target.host, "connecting", other),
    })
}

/// A TCP connection to `target` and the SSH handshake on it (host key checked).
async fn open_direct(target: &Arc<SshTarget>) -> Result<client::Handle<Client>, TransportError> {
    let (handler, rejection) = handler_for(target);
    let addr = (target.host.as_str(), target.port);
    client::connect(client_config(target)?, addr, handler)
        .await
        .map_err(|e| handshake_error(target, &rejection, e))
}

/// A `direct-tcpip` channel of `via` to `target`, and the SSH handshake over it.
async fn open_through(
    via: &client::Handle<Client>,
    target: &Arc<SshTarget>,
) -> Result<client::Handle<Client>, TransportError> {
    let channel = via
        .channel_open_direct_tcpip(target.host.clone(), u32::from(target.port), "127.0.0.1", 0)
        .await
        .map_err(|e| TransportError::Ssh {
            host: target.host.clone(),
            what: format!(
                "opening a ProxyJump channel to {}:{}",
                target.host, target.port
            ),
            message: e.to_string(),
        })?;
    let (handler, rejection) = handler_for(target);
    client::connect_stream(client_config(target)?, channel.into_stream(), handler)
        .await
        .map_err(|e| handshake_error(target, &rejection, e))
}

/// Starts the proxy command (no shell) and makes the SSH handshake over its stdin/stdout.
/// A failure names the argv and ends with the tail of the command's stderr.
async fn open_command(
    target: &Arc<SshTarget>,
    argv: &[String],
) -> Result<(client::Handle<Client>, Carrier), TransportError> {
    use tokio::io::AsyncReadExt;
    let failed = |message: String| TransportError::Ssh {
        host: target.host.clone(),
        what: format!("running ProxyCommand {argv:?}"),
        message,
    };
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| failed("the command is empty".into()))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("cannot start it: {e}")))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(failed("its stdin/stdout are not pipes".into()));
    };
    let mut stderr = child.stderr.take();
    let (handler, rejection) = handler_for(target);
    let stream = tokio::io::join(stdout, stdin);
    match client::connect_stream(client_config(target)?, stream, handler).await {
        Ok(handle) => {
            // Keep its stderr drained so that a chatty command never blocks on it.
            if let Some(mut err) = stderr {
                tokio::spawn(async move {
                    let mut sink = tokio::io::sink();
                    let _ = tokio::io::copy(&mut err, &mut sink).await;
                });
            }
            Ok((handle, Carrier::Command(child)))
        }
        Err(e) => {
            let refused = match rejection.lock() {
                Ok(mut g) => g.take(),
                Err(p) => p.into_inner().take(),
            };
            if let Some(refused) = refused {
                return Err(refused);
            }
            let _ = child.start_kill();
            let mut tail = Vec::new();
            if let Some(err) = stderr.as_mut() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), err.read_to_end(&mut tail)).await;
            }
            let tail = String::from_utf8_lossy(&tail);
            let tail: String = {
                let t = tail.trim();
                let start = t.len().saturating_sub(2000);
                let start = (start..t.len())
                    .find(|i| t.is_char_boundary(*i))
                    .unwrap_or(t.len());
                t[start..].to_string()
            };
            Err(failed(format!("{e}; its stderr: {tail:?}")))
        }
    }
}

async fn authenticate(
    handle: &mut client::Handle<Client>,
    target: &SshTarget,
) -> Result<(), TransportError> {
    let host = &target.host;
    let mut tried = Vec::new();
    let rsa_hash = handle
        .best_supported_rsa_hash()
        .await
        .map_err(|e| ssh_error(host, "asking for RSA hashes", e))?
        .flatten();
    for path in &target.identity_files {
        let key = match russh::keys::load_secret_key(path, None) {
            Ok(key) => key,
            Err(russh::keys::Error::KeyIsEncrypted) => {
                tracing::debug!(path = %path.display(), "encrypted key skipped; use ssh-agent");
                tried.push(format!(
                    "{} (encrypted: skipped, load it into ssh-agent)",
                    path.display()
                ));
                continue;
            }
            Err(e) => {
                return Err(TransportError::Key {
                    path: path.clone(),
                    reason: e.to_string(),
                })
            }
        };
        tried.push(path.display().to_string());
        let key = PrivateKeyWithHashAlg::new(Arc::new(key), rsa_hash);
        let result = handle
            .authenticate_publickey(&target.user, key)
            .await
            .map_err(|e| ssh_error(host, "authenticating", e))?;
        if result.success() {
            return Ok(());
        }
    }
    let socket = target
        .agent_socket
        .clone()
        .or_else(|| std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from))
        .filter(|_| target.use_agent);
    if let Some(socket) = socket {
        let mut agent = None;
        match russh::keys::agent::client::AgentClient::connect_uds(&socket).await {
            Err(e) => tried.push(format!("ssh-agent at {} ({e})", socket.display())),
            Ok(mut client) => match client.request_identities().await {
                Err(e) => tried.push(format!(
                    "ssh-agent at {} (listing keys: {e})",
                    socket.display()
                )),
                Ok(ids) if ids.is_empty() => {
                    tried.push(format!("ssh-agent at {} (holds no key)", socket.display()))
                }
                Ok(ids) => agent = Some((client, ids)),
            },
        }
        if let Some((mut agent, identities)) = agent {
            for identity in identities {
                let key = identity.public_key().into_owned();
                tried.push(format!("agent key {}", key.fingerprint(HashAlg::Sha256)));
                let result = handle
                    .authenticate_publickey_with(&target.user, key, rsa_hash, &mut agent)
                    .await;
                if matches!(result, Ok(r) if r.success()) {
                    return Ok(());
                }
            }
        }
    }
    Err(TransportError::AuthFailed {
        host: host.clone(),
        user: target.user.clone(),
        tried,
    })
}

async fn open_sftp(
    handle: &client::Handle<Client>,
    target: &SshTarget,
) -> Result<SftpChannel, TransportError> {
    let host = &target.host;
    let channel = handle
        .channel_open_session()
        .await
        .map_err(|e| ssh_error(host, "opening a channel", e))?;
    channel
        .request_subsystem(true, "sftp")
        .await
        .map_err(|e| ssh_error(host, "starting the sftp subsystem", e))?;
    // The server's largest packet (OpenSSH: 32 KiB), so that a write's header shares the
    // first packet of its payload.
    let packet_size = channel.writable_packet_size().await;
    let (reader, writer) = tokio::io::split(channel.into_stream());
    let (mux, stream) = SftpMux::start(reader, writer, packet_size, target.request_timeout);
    let config = russh_sftp::client::Config {
        max_packet_len: MAX_FRAME as u32,
        request_timeout_secs: target.request_timeout.as_secs().max(1),
        ..Default::default()
    };
    let mut raw = RawSftpSession::new_with_config(stream, config);
    let version = raw.init().await.map_err(|e| TransportError::Sftp {
        host: host.clone(),
        path: String::new(),
        op: "init",
        message: e.to_string(),
    })?;
    let has = |name: &str| version.extensions.contains_key(name);
    let (mut read_len, mut write_len) = (DEFAULT_REQUEST, DEFAULT_REQUEST);
    if has(russh_sftp::extensions::LIMITS) {
        if let Ok(limits) = raw.limits().await {
            let limits = SftpLimits::from(limits);
            let clamp = |v: Option<u64>| v.map_or(DEFAULT_REQUEST, |v| v.min(MAX_REQUEST) as u32);
            read_len = clamp(limits.read_len);
            write_len = clamp(limits.write_len);
            raw.set_limits(limits);
        }
    }
    Ok(SftpChannel {
        raw: Arc::new(raw),
        mux,
        read_len,
        write_len,
        posix_rename: has("posix-rename@openssh.com"),
        fsync: has(russh_sftp::extensions::FSYNC),
        statvfs: has(russh_sftp::extensions::STATVFS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> PublicKey {
        let private = russh::keys::PrivateKey::from(
            russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]),
        );
        private.public_key().clone()
    }

    #[test]
    fn accept_new_records_then_a_changed_key_is_refused_with_both_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        let mut target = SshTarget::new("127.0.0.1", 2222, "u");
        target.known_hosts_files = vec![kh.clone()];

        let err = check_host_key(&target, &key(1)).unwrap_err();
        assert!(
            matches!(err, TransportError::HostKeyUnknown { .. }),
            "{err}"
        );
        assert!(!kh.exists(), "strict policy must not write known_hosts");

        target.host_key_policy = HostKeyPolicy::AcceptNew;
        check_host_key(&target, &key(1)).unwrap();
        assert!(std::fs::read_to_string(&kh)
            .unwrap()
            .contains("[127.0.0.1]:2222"));
        target.host_key_policy = HostKeyPolicy::Strict;
        check_host_key(&target, &key(1)).unwrap();

        for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
            target.host_key_policy = policy;
            let err = check_host_key(&target, &key(2)).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, TransportError::HostKeyChanged { .. }),
                "{msg}"
            );
            assert!(
                msg.contains(&key(1).fingerprint(HashAlg::Sha256).to_string()),
                "{msg}"
            );
            assert!(
                msg.contains(&key(2).fingerprint(HashAlg::Sha256).to_string()),
                "{msg}"
            );
            assert!(msg.contains("127.0.0.1:2222"), "{msg}");
        }
    }

    #[test]
    fn cipher_names_are_validated() {
        let mut target = SshTarget::new("h", 22, "u");
        assert!(!cipher_preference(&target).unwrap().is_empty());
        target.ciphers = vec!["aes128-gcm@openssh.com".into()];
        assert_eq!(cipher_preference(&target).unwrap().len(), 1);
        target.ciphers = vec!["rot13".into()];
        assert!(cipher_preference(&target).is_err());
    }
}
