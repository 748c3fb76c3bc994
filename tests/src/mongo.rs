//! A real MongoDB-wire server on 127.0.0.1 for one test.
//!
//! [`MongoServer::start`] runs `mongod` when one is on `PATH`, else SecantusDB's
//! `secantusd-rs` (see DESIGN §9; [`crate::binaries::mongo_binary`] has the lookup order and
//! the environment overrides). Layout of its temp dir:
//!
//! ```text
//! ferry-mongo-XXXX/
//!   data/             storage (WiredTiger home / dbpath), kept across `restart`
//!   secantusd.toml    empty config, so secantusd-rs does not pick up ~/.secantus/...
//!   server.log        stdout + stderr of every start
//!   owner             pid and start time of the test process (see `tempdirs.rs`)
//! ```
//!
//! Startup waits until a `hello` sent over the wire answers `ok: 1` (see [`crate::wire`]).
//! With [`MongoServer::start_with_auth`] the server runs with SCRAM authentication on and a
//! `root` user in `admin`, created through the localhost exception before any client sees
//! the server. Differences between the two servers that tests may meet:
//! `secantusd-rs` advertises a single-node replica set (so transactions work), `mongod` here
//! runs standalone.

use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bson::doc;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use tempfile::TempDir;

use crate::tempdirs::server_temp_dir;

use crate::binaries::{mongo_binary, ServerKind};
use crate::ports::LOOPBACK;
use crate::process::{restart_on_port, start_on_free_port, ServerProcess, StartError};
use crate::wire;

/// How long a start may take until `hello` answers.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of one wire command sent by the harness.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A user name and password; the password never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
struct Credentials {
    user: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A running MongoDB-wire server with its own storage; stopped and removed on drop.
#[derive(Debug)]
pub struct MongoServer {
    kind: ServerKind,
    binary: PathBuf,
    port: u16,
    credentials: Option<Credentials>,
    storage: PathBuf,
    config: PathBuf,
    log: PathBuf,
    process: Option<ServerProcess>,
    // Last field: dropped after `process` is stopped in `Drop`.
    _dir: TempDir,
}

impl MongoServer {
    /// Starts a server without authentication on a free port of 127.0.0.1.
    pub fn start() -> anyhow::Result<MongoServer> {
        MongoServer::start_inner(None)
    }

    /// Starts a server that requires SCRAM authentication, with `user` as a `root` user in
    /// database `admin` ([`MongoServer::uri`] carries the credentials).
    pub fn start_with_auth(user: &str, password: &str) -> anyhow::Result<MongoServer> {
        if user.is_empty() || password.is_empty() {
            bail!("start_with_auth needs a non-empty user and password");
        }
        MongoServer::start_inner(Some(Credentials {
            user: user.to_owned(),
            password: password.to_owned(),
        }))
    }

    /// One server without authentication shared by all tests of this process, started on
    /// first use. Give each test its own database ([`crate::unique_db_name`]). It cannot be
    /// stopped or restarted (tests that do that start their own); it dies with the process
    /// (see `process.rs`) and its temp dir is swept by a later run.
    pub fn shared() -> anyhow::Result<&'static MongoServer> {
        static SHARED: OnceLock<Result<MongoServer, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| MongoServer::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("starting the shared MongoDB-wire server: {e}"))
    }

    fn start_inner(credentials: Option<Credentials>) -> anyhow::Result<MongoServer> {
        let (kind, binary) = mongo_binary()?;
        let dir = server_temp_dir("ferry-mongo-")?;
        let storage = dir.path().join("data");
        fs::create_dir(&storage).with_context(|| format!("creating {}", storage.display()))?;
        let config = dir.path().join("secantusd.toml");
        fs::write(&config, "# empty: all settings are on the command line\n")
            .with_context(|| format!("writing {}", config.display()))?;
        let mut server = MongoServer {
            kind,
            binary,
            port: 0,
            credentials,
            storage,
            config,
            log: dir.path().join("server.log"),
            process: None,
            _dir: dir,
        };
        let name = server.name();
        server.port = start_on_free_port(name, |port| {
            server.port = port;
            server.spawn()
        })?;
        server.create_user()?;
        Ok(server)
    }

    /// `mongodb://[user:password@]127.0.0.1:PORT/?directConnection=true[&authSource=admin]`,
    /// user and password percent-encoded.
    pub fn uri(&self) -> String {
        match &self.credentials {
            None => format!("mongodb://{LOOPBACK}:{}/?directConnection=true", self.port),
            Some(c) => format!(
                "mongodb://{}:{}@{LOOPBACK}:{}/?directConnection=true&authSource=admin",
                utf8_percent_encode(&c.user, NON_ALPHANUMERIC),
                utf8_percent_encode(&c.password, NON_ALPHANUMERIC),
                self.port
            ),
        }
    }

    /// [`MongoServer::uri`] without credentials (for testing that authentication is
    /// required).
    pub fn uri_without_credentials(&self) -> String {
        format!("mongodb://{LOOPBACK}:{}/?directConnection=true", self.port)
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Which server program runs.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The server's storage directory (kept across [`MongoServer::restart`]).
    pub fn storage_path(&self) -> &Path {
        &self.storage
    }

    /// The server log (all starts).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    /// Stops the server (SIGTERM, SIGKILL after a grace period). Data and port number stay;
    /// [`MongoServer::restart`] brings it back. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Stops the server if running and starts it again on the same port with the same data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let port = self.port;
        restart_on_port(self.name(), port, || self.spawn())
    }

    fn name(&self) -> &'static str {
        match self.kind {
            ServerKind::Mongod => "mongod",
            ServerKind::Secantus => "secantusd-rs",
        }
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn args(&self) -> Vec<String> {
        let port = self.port.to_string();
        let storage = self.storage.display().to_string();
        let mut args: Vec<String> = match self.kind {
            ServerKind::Secantus => vec![
                "--config".into(),
                self.config.display().to_string(),
                "--host".into(),
                LOOPBACK.into(),
                "--port".into(),
                port,
                "--storage-path".into(),
                storage,
                "--cache-size".into(),
                "256M".into(),
                // The WAL file is preallocated in full (default 128 MB per server).
                "--log-file-max".into(),
                "16MB".into(),
            ],
            ServerKind::Mongod => vec![
                "--bind_ip".into(),
                LOOPBACK.into(),
                "--port".into(),
                port,
                "--dbpath".into(),
                storage,
                "--wiredTigerCacheSizeGB".into(),
                "0.25".into(),
                "--nounixsocket".into(),
            ],
        };
        if self.credentials.is_some() {
            args.push("--auth".into());
        }
        args
    }

    fn spawn(&mut self) -> Result<(), StartError> {
        let mut process = ServerProcess::spawn(self.name(), &self.binary, &self.args(), &self.log)
            .map_err(StartError::Failed)?;
        let address = self.address();
        process.wait_ready(START_TIMEOUT, || {
            wire::hello(address, COMMAND_TIMEOUT).map(drop)
        })?;
        self.process = Some(process);
        Ok(())
    }

    /// Creates the `root` user through the localhost exception (no user exists yet).
    fn create_user(&self) -> anyhow::Result<()> {
        let Some(credentials) = &self.credentials else {
            return Ok(());
        };
        let command = doc! {
            "createUser": &credentials.user,
            "pwd": &credentials.password,
            "roles": [ { "role": "root", "db": "admin" } ],
        };
        wire::run_command(self.address(), "admin", command, COMMAND_TIMEOUT)
            .map(drop)
            .with_context(|| {
                format!(
                    "creating user {:?} on {:?} at port {}",
                    credentials.user, self.kind, self.port
                )
            })
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_hides_password() {
        let c = Credentials {
            user: "ferry".into(),
            password: "hunter2".into(),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("ferry"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
