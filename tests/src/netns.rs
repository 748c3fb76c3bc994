//! A private network namespace for servers that must not be reachable from the test
//! process, as a DAQ machine behind a firewall is not reachable from the sites it sends to.
//!
//! [`Netns::create`] holds a namespace open with `unshare --net sleep infinity` and brings
//! its loopback up (`nsenter --net=… ip link set lo up`). A server started inside it
//! (see [`crate::sshd::SshdOptions::netns`]) listens on the namespace's own 127.0.0.1, which
//! the host's 127.0.0.1 does not reach: a connection from the test process is refused.
//! [`Netns::publish`] exposes one port of the namespace on the host's 127.0.0.1 under the
//! same number, as a container runtime publishes a port, so a bastion inside the namespace
//! is reachable while the hosts behind it are not. [`Netns::connect`] opens a connection
//! from inside (readiness probes of unpublished servers).
//!
//! Creating a network namespace needs `CAP_SYS_ADMIN` (root, as in CI) and util-linux's
//! `unshare`/`nsenter` and iproute2's `ip`; without them [`Netns::create`] fails saying so.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

const HOW_TO: &str = "a test that needs a private network namespace runs as root \
    (CAP_SYS_ADMIN) with util-linux (`unshare`, `nsenter`) and iproute2 (`ip`): \
    apt-get install util-linux iproute2";

/// A network namespace with only a loopback interface; removed when dropped.
#[derive(Debug)]
pub struct Netns {
    holder: Child,
    path: PathBuf,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn create() -> anyhow::Result<Arc<Netns>> {
        let holder = Command::new("unshare")
            .args(["--net", "--", "sleep", "infinity"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `unshare --net sleep infinity`; {HOW_TO}"))?;
        let mut netns = Netns {
            path: PathBuf::from(format!("/proc/{}/ns/net", holder.id())),
            holder,
        };
        netns.wait_entered()?;
        let out = Command::new("nsenter")
            .arg(format!("--net={}", netns.path.display()))
            .args(["--", "ip", "link", "set", "lo", "up"])
            .output()
            .with_context(|| format!("running nsenter … ip link set lo up; {HOW_TO}"))?;
        if !out.status.success() {
            bail!(
                "`nsenter --net={} ip link set lo up` failed ({}): {}; {HOW_TO}",
                netns.path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Arc::new(netns))
    }

    /// Waits until the holder has left the test's namespace (unshare runs before the exec).
    fn wait_entered(&mut self) -> anyhow::Result<()> {
        let ours = std::fs::read_link("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self.holder.try_wait()? {
                let mut stderr = String::new();
                if let Some(mut e) = self.holder.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                bail!(
                    "`unshare --net` exited with {status}: {}; {HOW_TO}",
                    stderr.trim()
                );
            }
            if let Ok(theirs) = std::fs::read_link(&self.path) {
                if theirs != ours {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "`unshare --net` (pid {}) did not enter a new namespace within 5 s",
                    self.holder.id()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `/proc/PID/ns/net` of the holder: what `nsenter --net=` takes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The argv prefix that runs a program inside the namespace: `nsenter --net=PATH --`.
    pub fn enter_argv(&self) -> Vec<String> {
        vec![
            "nsenter".to_owned(),
            format!("--net={}", self.path.display()),
            "--".to_owned(),
        ]
    }

    /// Connects to `address` from inside the namespace (a helper thread joins it; the
    /// socket stays there).
    pub fn connect(&self, address: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let ns = File::open(&self.path)?;
        thread::spawn(move || {
            // setns(2) moves only this thread, which ends here.
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            TcpStream::connect_timeout(&address, timeout)
        })
        .join()
        .map_err(|_| io::Error::other("the namespace connect thread panicked"))?
    }

    /// Publishes the namespace's `127.0.0.1:port` on the host's `127.0.0.1:port`: every
    /// connection accepted outside is relayed to a connection opened inside.
    pub fn publish(self: &Arc<Self>, port: u16) -> io::Result<Published> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let stop = Arc::new(AtomicBool::new(false));
        let netns = Arc::clone(self);
        let flag = Arc::clone(&stop);
        thread::spawn(move || {
            for outside in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(outside) = outside else { continue };
                let inside = netns.connect(
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_secs(5),
                );
                match inside {
                    Ok(inside) => relay(outside, inside),
                    Err(_) => drop(outside),
                }
            }
        });
        Ok(Published { port, stop })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Copies both ways until each side has closed its half.
fn relay(a: TcpStream, b: TcpStream) {
    let pairs = [
        (a.try_clone(), b.try_clone()),
        (b.try_clone(), a.try_clone()),
    ];
    drop((a, b));
    for pair in pairs {
        if let (Ok(mut from), Ok(mut to)) = pair {
            thread::spawn(move || {
                let _ = io::copy(&mut from, &mut to);
                let _ = to.flush();
                let _ = to.shutdown(Shutdown::Write);
            });
        }
    }
}

/// A port of a namespace published on the host; the relay stops accepting when dropped
/// (connections already relayed run on until their ends close).
#[derive(Debug)]
pub struct Published {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Drop for Published {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(200),
        );
    }
}

/// Fails unless `address` refuses a connection from the test's own namespace.
pub fn assert_unreachable(address: SocketAddr) -> anyhow::Result<()> {
    match TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
        Ok(_) => Err(anyhow!(
            "{address} accepted a connection from outside its namespace"
        )),
        Err(_) => Ok(()),
    }
}
