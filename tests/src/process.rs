//! Server child processes: spawn, wait for readiness, log tail, stop.
//!
//! Every server the harness starts is a [`ServerProcess`]: the child runs in its own process
//! group with stdout and stderr appended to a log file in the server's temp dir. Stopping sends
//! SIGTERM to the whole group (so `sshd`'s per-connection children go too), waits up to
//! [`STOP_GRACE`], then sends SIGKILL.
//!
//! Dying with the test process: `Drop` of the owning server covers normal exit and panics.
//! For a test binary killed with SIGKILL, children are spawned with `PR_SET_PDEATHSIG`
//! (SIGKILL). That signal fires when the *thread* that forked the child exits, and test
//! threads exit as soon as their test ends, so all forks happen on one long-lived spawner
//! thread that lives as long as the process.
//!
//! [`run_tool`] runs short helper commands (`ssh-keygen`, `id`) as argv arrays and turns a
//! non-zero exit into an error carrying the argv and the stderr tail.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use crate::ports::{free_port, log_says_addr_in_use};

/// How long a server gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How many bytes of a log or stderr go into an error message.
const TAIL_BYTES: u64 = 4096;

/// Why a server did not become ready.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The port was taken between choosing it and binding it; try another (or the same
    /// one a moment later, on restart).
    AddrInUse,
    /// Anything else; the error already carries the log tail.
    Failed(anyhow::Error),
}

/// A running server child process with its log file.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    name: &'static str,
    child: Child,
    log_path: PathBuf,
    /// Length of the log file when this process started: the tail shown in errors starts
    /// here, so a restart's error does not quote the previous run.
    log_start: u64,
}

impl ServerProcess {
    /// Spawns `program args..` in its own process group, stdout and stderr appended to
    /// `log_path`.
    pub(crate) fn spawn(
        name: &'static str,
        program: &Path,
        args: &[impl AsRef<OsStr>],
        log_path: &Path,
    ) -> anyhow::Result<ServerProcess> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening {name} log {}", log_path.display()))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log
            .try_clone()
            .with_context(|| format!("opening {name} log {}", log_path.display()))?;

        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        die_with_parent(&mut command);
        let child = spawn_on_long_lived_thread(command).with_context(|| {
            format!(
                "starting {name}: {} {}",
                program.display(),
                args.iter()
                    .map(|a| a.as_ref().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })?;
        Ok(ServerProcess {
            name,
            child,
            log_path: log_path.to_path_buf(),
            log_start,
        })
    }

    /// The OS process id (also the process group id).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `probe` until it succeeds, the process exits, or `timeout` passes.
    ///
    /// On failure the process is stopped and the error quotes the log tail.
    pub(crate) fn wait_ready(
        &mut self,
        timeout: Duration,
        mut probe: impl FnMut() -> anyhow::Result<()>,
    ) -> Result<(), StartError> {
        let deadline = Instant::now() + timeout;
        let mut last_error = anyhow!("not probed yet");
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Err(self.exited_early(status)),
                Ok(None) => {}
                Err(e) => {
                    return Err(StartError::Failed(anyhow!(
                        "waiting for {} (pid {}): {e}",
                        self.name,
                        self.pid()
                    )))
                }
            }
            match probe() {
                Ok(()) => return Ok(()),
                Err(e) => last_error = e,
            }
            if Instant::now() >= deadline {
                self.stop();
                let tail = self.log_tail();
                if log_says_addr_in_use(&tail) {
                    return Err(StartError::AddrInUse);
                }
                return Err(StartError::Failed(anyhow!(
                    "{} (pid {}) not ready after {:?}: last probe: {last_error:#}\n{} log tail ({}):\n{tail}",
                    self.name,
                    self.pid(),
                    timeout,
                    self.name,
                    self.log_path.display()
                )));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    fn exited_early(&mut self, status: ExitStatus) -> StartError {
        // The child may still be flushing its last line; give the log a moment.
        thread::sleep(Duration::from_millis(20));
        let tail = self.log_tail();
        if log_says_addr_in_use(&tail) {
            return StartError::AddrInUse;
        }
        StartError::Failed(anyhow!(
            "{} exited with {status} before it was ready\n{} log tail ({}):\n{tail}",
            self.name,
            self.name,
            self.log_path.display()
        ))
    }

    /// The last few KiB this process wrote to its log.
    pub(crate) fn log_tail(&self) -> String {
        file_tail(&self.log_path, self.log_start)
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM to the process group, wait up to [`STOP_GRACE`], then SIGKILL. Idempotent.
    pub(crate) fn stop(&mut self) {
        let pgid = self.pid();
        if self.is_running() {
            signal_group(pgid, libc::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while self.is_running() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if self.is_running() {
                signal_group(pgid, libc::SIGKILL);
                // Reaps the child; the result only says how it died.
                let _ = self.child.wait();
            }
        }
        // The leader is gone; kill what is left of its group (e.g. sshd session processes).
        signal_group(pgid, libc::SIGKILL);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How many fresh ports [`start_on_free_port`] tries.
const START_ATTEMPTS: usize = 5;
/// How long [`restart_on_port`] keeps retrying while the old socket lingers.
const RESTART_PATIENCE: Duration = Duration::from_secs(5);

/// Calls `spawn` with a free port of 127.0.0.1 until it does not fail with
/// [`StartError::AddrInUse`] (the port was taken between choosing and binding it), at most
/// [`START_ATTEMPTS`] times. Returns the port the server runs on.
pub(crate) fn start_on_free_port(
    name: &str,
    mut spawn: impl FnMut(u16) -> Result<(), StartError>,
) -> anyhow::Result<u16> {
    let mut tried = Vec::new();
    for _ in 0..START_ATTEMPTS {
        let port = free_port().with_context(|| format!("choosing a port for {name}"))?;
        match spawn(port) {
            Ok(()) => return Ok(port),
            Err(StartError::AddrInUse) => tried.push(port),
            Err(StartError::Failed(e)) => return Err(e),
        }
    }
    Err(anyhow!(
        "{name} found each of the ports {tried:?} taken by another process when it tried to bind"
    ))
}

/// Calls `spawn` (which restarts a server on its old port) until it does not fail with
/// [`StartError::AddrInUse`], for at most [`RESTART_PATIENCE`].
pub(crate) fn restart_on_port(
    name: &str,
    port: u16,
    mut spawn: impl FnMut() -> Result<(), StartError>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + RESTART_PATIENCE;
    loop {
        match spawn() {
            Ok(()) => return Ok(()),
            Err(StartError::AddrInUse) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(100));
            }
            Err(StartError::AddrInUse) => {
                bail!("restarting {name}: port {port} is still in use after {RESTART_PATIENCE:?}")
            }
            Err(StartError::Failed(e)) => return Err(e.context(format!("restarting {name}"))),
        }
    }
}

/// Sends `signal` to every process in group `pgid`. A group that no longer exists is fine.
#[allow(unsafe_code)]
fn signal_group(pgid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) takes two integers and touches no memory of this process. The negative
    // pid addresses the process group the child leads (it was spawned with process_group(0)),
    // and pgid > 1 rules out the "every process" (-1) and "own group" (0) forms.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Asks the kernel to SIGKILL the child when the thread that forked it exits.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only prctl(2) and
    // getppid(2), which are async-signal-safe; it allocates nothing (the error path builds an
    // io::Error from errno or a static kind, without allocation).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would signal us.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            Ok(())
        });
    }
}

type SpawnJob = (Command, mpsc::SyncSender<io::Result<Child>>);

/// Spawns `command` from a thread that lives as long as the process, so that
/// `PR_SET_PDEATHSIG` fires only when the whole test process dies.
fn spawn_on_long_lived_thread(mut command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs, rx) = mpsc::channel::<SpawnJob>();
        thread::Builder::new()
            .name("ferry-test-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    // The requester may have gone away; nothing to do then.
                    let _ = reply.send(command.spawn());
                }
            })
            .ok()
            .map(|_| jobs)
    });
    let Some(jobs) = spawner else {
        // No spawner thread: still spawn, only the SIGKILL-of-the-test-binary case leaks.
        return command.spawn();
    };
    let (reply, result) = mpsc::sync_channel(1);
    if let Err(mpsc::SendError((mut command, _))) = jobs.send((command, reply)) {
        return command.spawn();
    }
    result
        .recv()
        .map_err(|_| io::Error::other("test-process spawner thread is gone"))?
}

/// The last [`TAIL_BYTES`] of `path` from byte `start` on, lossily decoded.
pub(crate) fn file_tail(path: &Path, start: u64) -> String {
    let mut out = Vec::new();
    let read = File::open(path).and_then(|mut f| {
        let len = f.metadata()?.len();
        let from = start.max(len.saturating_sub(TAIL_BYTES));
        f.seek(SeekFrom::Start(from))?;
        f.read_to_end(&mut out)
    });
    match read {
        Ok(_) => String::from_utf8_lossy(&out).into_owned(),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Runs a short helper command and returns its stdout.
///
/// A missing program or a non-zero exit is an error naming the argv, the exit status and the
/// stderr tail, plus `hint` (how to install the program).
pub(crate) fn run_tool(argv: &[&OsStr], hint: &str) -> anyhow::Result<String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| anyhow!("run_tool called with an empty argv"))?;
    let shown = || {
        argv.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => anyhow!("`{}` not found: {hint}", shown()),
            _ => anyhow!("running `{}`: {e}", shown()),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail_from = stderr.len().saturating_sub(TAIL_BYTES as usize);
        let tail = stderr.get(tail_from..).unwrap_or(&stderr);
        return Err(anyhow!(
            "`{}` failed with {}: {}",
            shown(),
            output.status,
            tail.trim_end()
        ));
    }
    String::from_utf8(output.stdout).with_context(|| format!("`{}` printed non-UTF-8", shown()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_tool_reports_argv_status_and_stderr() {
        let argv = [OsStr::new("ls"), OsStr::new("/definitely/not/here")];
        let err = run_tool(&argv, "install coreutils")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ls /definitely/not/here"), "{err}");
        assert!(err.contains("exit status"), "{err}");
        assert!(err.contains("No such file"), "{err}");
    }

    #[test]
    fn run_tool_missing_program_gives_hint() {
        let argv = [OsStr::new("/nonexistent/tool")];
        let err = run_tool(&argv, "install the tool package")
            .unwrap_err()
            .to_string();
        assert!(err.contains("install the tool package"), "{err}");
    }

    #[test]
    fn stop_kills_a_process_that_ignores_nothing_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut p = ServerProcess::spawn("sleep", Path::new("/bin/sleep"), &["600"], &log).unwrap();
        assert!(p.is_running());
        p.stop();
        assert!(!p.is_running());
        p.stop();
    }

    #[test]
    fn early_exit_quotes_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut p =
            ServerProcess::spawn("ls", Path::new("/bin/ls"), &["/no/such/dir/x"], &log).unwrap();
        let err = p
            .wait_ready(Duration::from_secs(5), || Err(anyhow!("never ready")))
            .unwrap_err();
        match err {
            StartError::Failed(e) => {
                let e = format!("{e:#}");
                assert!(e.contains("exited with"), "{e}");
                assert!(e.contains("/no/such/dir/x"), "{e}");
            }
            StartError::AddrInUse => panic!("not an address-in-use failure"),
        }
    }
}
