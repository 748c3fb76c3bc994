//! A throwaway OpenSSH `ssh-agent` on a socket in a temp dir, for tests of encrypted keys.
//!
//! `ssh-agent -D -a SOCKET` runs as a [`ServerProcess`] (own process group, killed on drop
//! and with the test process); [`SshAgent::add`] loads a key with `ssh-add`, answering its
//! passphrase prompt through `SSH_ASKPASS` (a script in the temp dir), the way a desktop or
//! a site's unlock script does. Nothing touches this process's environment: the socket goes
//! to the code under test as a path.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use tempfile::TempDir;

use crate::binaries::find_on_path;
use crate::process::{ServerProcess, StartError};
use crate::tempdirs::server_temp_dir;

const HINT: &str = "install openssh-client (deploy/install-test-deps.sh)";

/// A running `ssh-agent`; stopped on drop.
#[derive(Debug)]
pub struct SshAgent {
    socket: PathBuf,
    process: ServerProcess,
    // Last field: removed after `process` is stopped.
    dir: TempDir,
}

impl SshAgent {
    /// Starts `ssh-agent -D -a <dir>/agent.sock` and waits until the socket accepts.
    pub fn start() -> anyhow::Result<SshAgent> {
        let program =
            find_on_path("ssh-agent").ok_or_else(|| anyhow!("ssh-agent not found: {HINT}"))?;
        let dir = server_temp_dir("ferry-ssh-agent-")?;
        let socket = dir.path().join("agent.sock");
        let log = dir.path().join("agent.log");
        let args = ["-D".as_ref(), "-a".as_ref(), socket.as_os_str()];
        let mut process = ServerProcess::spawn("ssh-agent", &program, &args, &log)?;
        let probe = socket.clone();
        match process.wait_ready(Duration::from_secs(10), || {
            UnixStream::connect(&probe).map(drop).map_err(Into::into)
        }) {
            Ok(()) => {}
            Err(StartError::Failed(e)) => return Err(e),
            Err(StartError::AddrInUse) => return Err(anyhow!("ssh-agent: socket in use")),
        }
        Ok(SshAgent {
            socket,
            process,
            dir,
        })
    }

    /// The agent's socket (what `SSH_AUTH_SOCK` would name).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `ssh-add KEY`, the passphrase given through `SSH_ASKPASS`.
    pub fn add(&self, key: &Path, passphrase: &str) -> anyhow::Result<()> {
        let askpass = self.dir.path().join("askpass");
        // The script prints the passphrase; single quotes in it are closed and escaped.
        let quoted = passphrase.replace('\'', r"'\''");
        std::fs::write(&askpass, format!("#!/bin/sh\nprintf '%s\\n' '{quoted}'\n"))
            .with_context(|| format!("writing {}", askpass.display()))?;
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", askpass.display()))?;
        let output = Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.socket)
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running ssh-add: {HINT}"))?;
        if !output.status.success() {
            return Err(anyhow!(
                "`ssh-add {}` failed with {}: {}; agent log: {}",
                key.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr),
                self.process.log_tail()
            ));
        }
        Ok(())
    }
}
