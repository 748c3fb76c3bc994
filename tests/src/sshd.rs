//! A real OpenSSH `sshd` on 127.0.0.1 for one test.
//!
//! [`Sshd::start`] makes a temp dir holding everything the server and its clients need:
//!
//! ```text
//! ferry-sshd-XXXX/
//!   sshd_config       ListenAddress 127.0.0.1, Port, HostKey, AuthorizedKeysFile, PidFile, ...
//!   ssh_host_key(.pub)  throwaway host key (ed25519 unless SshdOptions says otherwise)
//!   id_user(.pub)     throwaway user key, in authorized_keys (`Sshd::authorize_key` adds more)
//!   authorized_keys
//!   known_hosts       "[127.0.0.1]:PORT <host key>"
//!   sshd.pid, sshd.log  (the log is `sshd -D -e` stderr, LogLevel VERBOSE)
//!   root/             the test site's data directory (`Sshd::root`)
//!   owner             pid and start time of the test process (see `tempdirs.rs`)
//! ```
//!
//! The server runs as the current user, who is also the login user (root in CI; sshd needs
//! its privilege-separation directory `/run/sshd` then, created here if missing). Startup
//! waits until the port answers with an `SSH-2.0-` banner; a port lost to another process
//! between choosing and binding is retried on a new port. `restart` keeps port and keys, so a
//! `known_hosts` entry stays valid. Drop stops the server and removes the temp dir.

use std::fs::{self, DirBuilder};
use std::io::{self, Read, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use tempfile::TempDir;

use crate::binaries::sshd_binary;
use crate::keys::{KeyPair, KeyType};
use crate::netns::{Netns, Published};
use crate::ports::LOOPBACK;
use crate::process::{restart_on_port, run_tool, start_on_free_port, ServerProcess, StartError};
use crate::tempdirs::server_temp_dir;

/// Debian's sshd refuses to start as root without this directory.
const PRIVSEP_DIR: &str = "/run/sshd";
/// How long a readiness probe waits for the TCP connection.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How to set up an [`Sshd`]. `SshdOptions::default()` is what [`Sshd::start`] uses.
#[derive(Debug, Clone)]
pub struct SshdOptions {
    /// Algorithm of the throwaway host key.
    pub host_key_type: KeyType,
    /// Algorithm of the throwaway user key.
    pub user_key_type: KeyType,
    /// Extra `sshd_config` lines, appended after the harness's own (sshd uses the first
    /// value it reads for most keywords, so these cannot override the harness's lines;
    /// `Match` blocks work).
    pub extra_config: Vec<String>,
    /// Start SFTP sessions in [`Sshd::root`] (`internal-sftp -d ROOT`), so relative paths
    /// land in the test site's directory. Off: sessions start in the user's home.
    pub sftp_start_in_root: bool,
    /// The `Subsystem sftp` command, run by the login shell (so it may redirect), e.g.
    /// `/usr/lib/openssh/sftp-server -e -l INFO 2>>LOG` to log every open and close;
    /// `None`: `internal-sftp`.
    pub sftp_command: Option<String>,
    /// The sshd binary; `None`: `$FERRY_TEST_SSHD`, else `/usr/sbin/sshd`.
    pub sshd_path: Option<PathBuf>,
    /// How long to wait for the banner after spawning sshd.
    pub start_timeout: Duration,
    /// Run sshd inside this private network namespace: unreachable from the test's own
    /// 127.0.0.1 unless [`InNetns::publish`] is set.
    pub netns: Option<InNetns>,
}

/// Where an sshd in a private network namespace is reachable from.
#[derive(Debug, Clone)]
pub struct InNetns {
    /// The namespace.
    pub netns: Arc<Netns>,
    /// Also publish its port on the host's 127.0.0.1 (a bastion); off: reachable only from
    /// inside the namespace (a host behind the bastion).
    pub publish: bool,
}

impl Default for SshdOptions {
    fn default() -> Self {
        SshdOptions {
            host_key_type: KeyType::Ed25519,
            user_key_type: KeyType::Ed25519,
            extra_config: Vec::new(),
            sftp_start_in_root: false,
            sftp_command: None,
            sshd_path: None,
            start_timeout: Duration::from_secs(10),
            netns: None,
        }
    }
}

/// A running OpenSSH server with throwaway keys; stopped and removed on drop.
#[derive(Debug)]
pub struct Sshd {
    sshd_path: PathBuf,
    port: u16,
    user: String,
    host_key: KeyPair,
    host_key_fingerprint: String,
    user_key: KeyPair,
    known_hosts: PathBuf,
    config: PathBuf,
    log: PathBuf,
    root: PathBuf,
    options: SshdOptions,
    process: Option<ServerProcess>,
    /// The host-side relay of a published sshd in a namespace.
    published: Option<Published>,
    // Last field: dropped after `process` is stopped in `Drop`.
    dir: TempDir,
}

impl Sshd {
    /// Starts sshd with [`SshdOptions::default`] on a free port of 127.0.0.1.
    pub fn start() -> anyhow::Result<Sshd> {
        Sshd::start_with(SshdOptions::default())
    }

    /// Starts sshd with `options` on a free port of 127.0.0.1.
    pub fn start_with(options: SshdOptions) -> anyhow::Result<Sshd> {
        let sshd_path = sshd_binary(options.sshd_path.as_deref())?;
        ensure_privsep_dir()?;
        let dir = server_temp_dir("ferry-sshd-")?;
        let base = dir.path();
        if base.to_string_lossy().contains(char::is_whitespace) {
            bail!(
                "sshd temp dir {} contains whitespace, which sshd_config cannot quote everywhere: set TMPDIR",
                base.display()
            );
        }
        let root = base.join("root");
        fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;

        let host_key = KeyPair::generate(
            options.host_key_type,
            &base.join("ssh_host_key"),
            "ferry-test-host",
        )?;
        let user_key = KeyPair::generate(
            options.user_key_type,
            &base.join("id_user"),
            "ferry-test-user",
        )?;
        let authorized_keys = base.join("authorized_keys");
        fs::write(&authorized_keys, format!("{}\n", user_key.public_line()?))
            .with_context(|| format!("writing {}", authorized_keys.display()))?;
        let host_key_fingerprint = host_key.fingerprint()?;

        let mut sshd = Sshd {
            sshd_path,
            port: 0,
            user: current_user()?,
            known_hosts: base.join("known_hosts"),
            config: base.join("sshd_config"),
            log: base.join("sshd.log"),
            host_key,
            host_key_fingerprint,
            user_key,
            root,
            options,
            process: None,
            published: None,
            dir,
        };
        sshd.port = start_on_free_port("sshd", |port| {
            sshd.port = port;
            sshd.spawn()
        })?;
        sshd.write_known_hosts()?;
        Ok(sshd)
    }

    /// The TCP port sshd listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        LOOPBACK
    }

    /// The login user: the user running the tests (root in CI).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The user's private key (OpenSSH format, no passphrase, mode 0600).
    pub fn user_key_path(&self) -> &Path {
        self.user_key.private_path()
    }

    /// Lets `key` log in too (appends its public key to the server's `authorized_keys`; sshd
    /// reads that file at each login, so no restart is needed).
    pub fn authorize_key(&self, key: &KeyPair) -> anyhow::Result<()> {
        let path = self.authorized_keys_path();
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(file, "{}", key.public_line()?)
            .with_context(|| format!("appending to {}", path.display()))
    }

    fn authorized_keys_path(&self) -> PathBuf {
        self.dir.path().join("authorized_keys")
    }

    /// A `known_hosts` file holding the line `[127.0.0.1]:PORT <host key>`.
    pub fn known_hosts_path(&self) -> &Path {
        &self.known_hosts
    }

    /// The host key's fingerprint, `SHA256:...` as `ssh-keygen -lf` prints it.
    pub fn host_key_fingerprint(&self) -> String {
        self.host_key_fingerprint.clone()
    }

    /// The host public key as `"<algorithm> <base64>"`.
    pub fn host_public_key_line(&self) -> anyhow::Result<String> {
        self.host_key.public_line()
    }

    /// A fresh, empty data directory for this test site (removed on drop).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The sshd log (`-e` stderr at `LogLevel VERBOSE`), kept across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last few KiB of the sshd log, for assertion messages.
    pub fn log_tail(&self) -> String {
        crate::process::file_tail(&self.log, 0)
    }

    /// argv for OpenSSH `ssh` to this server, ending with the destination host; append the
    /// remote command. Host keys are checked strictly against [`Sshd::known_hosts_path`],
    /// `~/.ssh/config` is ignored, and nothing prompts.
    pub fn ssh_argv(&self) -> Vec<String> {
        let mut argv = vec![
            "ssh".to_owned(),
            "-F".to_owned(),
            "/dev/null".to_owned(),
            "-p".to_owned(),
            self.port.to_string(),
            "-i".to_owned(),
            self.user_key_path().display().to_string(),
            "-l".to_owned(),
            self.user.clone(),
        ];
        argv.extend(self.common_client_options());
        argv.push(LOOPBACK.to_owned());
        argv
    }

    /// The same settings as [`Sshd::ssh_argv`] as `-F /dev/null` plus `-o Key=value` pairs
    /// only, which `ssh`, `sftp`, `scp` and `rsync -e` all accept (no `-p`/`-P` clash).
    /// Callers add the destination `127.0.0.1`.
    pub fn ssh_options(&self) -> Vec<String> {
        let mut argv = vec!["-F".to_owned(), "/dev/null".to_owned()];
        for option in [
            format!("Port={}", self.port),
            format!("User={}", self.user),
            format!("IdentityFile={}", self.user_key_path().display()),
        ] {
            argv.push("-o".to_owned());
            argv.push(option);
        }
        argv.extend(self.common_client_options());
        argv
    }

    /// An rclone on-the-fly SFTP remote for this server, host key checked against
    /// [`Sshd::known_hosts_path`]: append a path, e.g.
    /// `format!("{}{}", sshd.rclone_remote(), sshd.root().join("x").display())`.
    pub fn rclone_remote(&self) -> String {
        format!(
            ":sftp,host={LOOPBACK},port={},user={},key_file=\"{}\",known_hosts_file=\"{}\":",
            self.port,
            self.user,
            self.user_key_path().display(),
            self.known_hosts.display()
        )
    }

    fn common_client_options(&self) -> Vec<String> {
        [
            "IdentitiesOnly=yes".to_owned(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "GlobalKnownHostsFile=/dev/null".to_owned(),
            "StrictHostKeyChecking=yes".to_owned(),
            "BatchMode=yes".to_owned(),
            "LogLevel=ERROR".to_owned(),
        ]
        .into_iter()
        .flat_map(|option| ["-o".to_owned(), option])
        .collect()
    }

    /// The sshd process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    /// Stops sshd (SIGTERM to it and its session processes, SIGKILL after a grace period).
    /// Keys, files and port number stay; [`Sshd::restart`] brings it back. Idempotent.
    pub fn stop(&mut self) {
        self.published = None;
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Stops sshd if running and starts it again on the same port with the same keys.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let port = self.port;
        restart_on_port("sshd", port, || self.spawn())
    }

    /// Writes the config for the current port and runs `sshd -D -e -f CONFIG` until the
    /// banner answers.
    fn spawn(&mut self) -> Result<(), StartError> {
        fs::write(&self.config, self.config_text())
            .with_context(|| format!("writing {}", self.config.display()))
            .map_err(StartError::Failed)?;
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let sshd_args = [
            "-D".as_ref(),
            "-e".as_ref(),
            "-f".as_ref(),
            self.config.as_os_str(),
        ];
        let Some(inside) = self.options.netns.clone() else {
            let mut process = ServerProcess::spawn("sshd", &self.sshd_path, &sshd_args, &self.log)
                .map_err(StartError::Failed)?;
            process.wait_ready(self.options.start_timeout, || {
                read_ssh_banner(
                    address,
                    TcpStream::connect_timeout(&address, PROBE_TIMEOUT)?,
                )
            })?;
            self.process = Some(process);
            return Ok(());
        };
        // `nsenter --net=NS -- sshd …`: nsenter joins the namespace and execs sshd.
        let mut argv: Vec<std::ffi::OsString> = inside
            .netns
            .enter_argv()
            .into_iter()
            .map(Into::into)
            .collect();
        argv.push(self.sshd_path.clone().into_os_string());
        argv.extend(sshd_args.iter().map(|a| a.to_os_string()));
        let program = PathBuf::from(argv.remove(0));
        let rest: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
        let mut process =
            ServerProcess::spawn("sshd", &program, &rest, &self.log).map_err(StartError::Failed)?;
        process.wait_ready(self.options.start_timeout, || {
            read_ssh_banner(address, inside.netns.connect(address, PROBE_TIMEOUT)?)
        })?;
        if inside.publish {
            match inside.netns.publish(self.port) {
                Ok(published) => self.published = Some(published),
                Err(e) => {
                    process.stop();
                    return Err(if e.kind() == io::ErrorKind::AddrInUse {
                        StartError::AddrInUse
                    } else {
                        StartError::Failed(anyhow!("publishing port {}: {e}", self.port))
                    });
                }
            }
        }
        self.process = Some(process);
        Ok(())
    }

    fn config_text(&self) -> String {
        let base = self.dir.path();
        let sftp = if let Some(command) = &self.options.sftp_command {
            command.clone()
        } else if self.options.sftp_start_in_root {
            format!("internal-sftp -d {}", self.root.display())
        } else {
            "internal-sftp".to_owned()
        };
        let mut text = format!(
            "# Written by ferry-tests for one test; see tests/src/sshd.rs.\n\
             ListenAddress {LOOPBACK}\n\
             Port {port}\n\
             HostKey \"{host_key}\"\n\
             AuthorizedKeysFile \"{authorized_keys}\"\n\
             PidFile \"{pid}\"\n\
             StrictModes no\n\
             UsePAM no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\n\
             UseDNS no\n\
             PrintMotd no\n\
             X11Forwarding no\n\
             Subsystem sftp {sftp}\n\
             LogLevel VERBOSE\n\
             MaxSessions 64\n\
             MaxStartups 64:30:128\n",
            port = self.port,
            host_key = self.host_key.private_path().display(),
            authorized_keys = self.authorized_keys_path().display(),
            pid = base.join("sshd.pid").display(),
        );
        for line in &self.options.extra_config {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    fn write_known_hosts(&self) -> anyhow::Result<()> {
        let line = format!(
            "[{LOOPBACK}]:{} {}\n",
            self.port,
            self.host_key.public_line()?
        );
        fs::write(&self.known_hosts, line)
            .with_context(|| format!("writing {}", self.known_hosts.display()))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects and reads the server's identification line; ready once it starts `SSH-2.0-`.
fn read_ssh_banner(address: SocketAddr, mut stream: TcpStream) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut banner = Vec::new();
    let mut byte = [0u8; 1];
    while banner.len() < 255 && !banner.ends_with(b"\n") {
        match stream.read(&mut byte)? {
            0 => break,
            _ => banner.push(byte[0]),
        }
    }
    if banner.starts_with(b"SSH-2.0-") {
        Ok(())
    } else {
        Err(anyhow!(
            "no SSH banner from {address}, got {:?}",
            String::from_utf8_lossy(&banner)
        ))
    }
}

/// Creates `/run/sshd` (root-owned, 0755) when missing, as Debian's systemd unit would. Only
/// root's sshd needs it; for other users a permission error is ignored.
fn ensure_privsep_dir() -> anyhow::Result<()> {
    if Path::new(PRIVSEP_DIR).is_dir() {
        return Ok(());
    }
    match DirBuilder::new().mode(0o755).create(PRIVSEP_DIR) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
        Err(e) => Err(anyhow!(
            "creating sshd's privilege-separation dir {PRIVSEP_DIR}: {e}"
        )),
    }
}

/// The name of the user running this process (`id -un`; `$USER` is unset in many CI
/// containers).
fn current_user() -> anyhow::Result<String> {
    let argv = ["id".as_ref(), "-un".as_ref()];
    let name = run_tool(&argv, "install coreutils")?.trim().to_owned();
    if name.is_empty() {
        bail!("`id -un` printed nothing");
    }
    Ok(name)
}
