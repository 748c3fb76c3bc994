//! Faults on the wire between Ferry and a real OpenSSH sshd: the connection cut mid-file, a
//! stalled link, a flipped bit. A small TCP proxy in this file sits between the two and
//! injects the fault; the server is the harness's [`ferry_tests::Sshd`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry::transport::{CopyOptions, RateLimiter, SshSession, SshTarget, TransportError};
use ferry_tests::Sshd;
mod transport_common;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use transport_common::{digest, random_file};

/// What the proxy does to the bytes it forwards.
const PASS: u8 = 0;
/// Close every connection.
const CUT: u8 = 1;
/// Keep connections open but forward nothing.
const STALL: u8 = 2;

/// A TCP proxy to sshd that can cut, stall, or flip one bit of the client→server stream.
struct FaultProxy {
    port: u16,
    mode: watch::Sender<u8>,
    /// Flip the lowest bit of the client→server byte at this offset (u64::MAX: never).
    flip_at: Arc<AtomicU64>,
    flipped: Arc<AtomicU8>,
}

impl FaultProxy {
    async fn start(to_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("test setup");
        let port = listener.local_addr().expect("test setup").port();
        let (mode, _) = watch::channel(PASS);
        let flip_at = Arc::new(AtomicU64::new(u64::MAX));
        let flipped = Arc::new(AtomicU8::new(0));
        let (mode2, flip2, flipped2) = (mode.clone(), flip_at.clone(), flipped.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(("127.0.0.1", to_port))
                    .await
                    .expect("test setup");
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let seen = Arc::new(AtomicU64::new(0));
                tokio::spawn(pump(
                    cr,
                    sw,
                    mode2.subscribe(),
                    Some((flip2.clone(), flipped2.clone(), seen)),
                ));
                tokio::spawn(pump(sr, cw, mode2.subscribe(), None));
            }
        });
        FaultProxy {
            port,
            mode,
            flip_at,
            flipped,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.send_replace(mode);
    }

    /// A target for sshd through this proxy (known_hosts gets an entry for the proxy port).
    fn target(&self, sshd: &Sshd, dir: &Path) -> SshTarget {
        let line = std::fs::read_to_string(sshd.known_hosts_path()).expect("test setup");
        let key = line.split_once(' ').expect("test setup").1;
        let kh = dir.join("known_hosts_proxy");
        std::fs::write(&kh, format!("[127.0.0.1]:{} {key}", self.port)).expect("test setup");
        let mut t = SshTarget::new("127.0.0.1", self.port, sshd.user());
        t.identity_files = vec![sshd.user_key_path().to_path_buf()];
        t.known_hosts_files = vec![kh];
        t.use_agent = false;
        t.request_timeout = Duration::from_secs(3);
        t.keepalive_interval = Some(Duration::from_secs(1));
        t
    }
}

type Flip = (Arc<AtomicU64>, Arc<AtomicU8>, Arc<AtomicU64>);

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<u8>,
    flip: Option<Flip>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if *mode.borrow() == STALL {
            if mode.changed().await.is_err() {
                return;
            }
            continue;
        }
        if *mode.borrow() == CUT {
            return;
        }
        tokio::select! {
            n = from.read(&mut buf) => {
                let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                if let Some((at, flipped, seen)) = &flip {
                    let start = seen.fetch_add(n as u64, Ordering::SeqCst);
                    let target = at.load(Ordering::SeqCst);
                    if target >= start && target < start + n as u64 {
                        buf[(target - start) as usize] ^= 1;
                        flipped.store(1, Ordering::SeqCst);
                    }
                }
                // Hold the bytes while stalled; drop them on a cut.
                while *mode.borrow() == STALL {
                    if mode.changed().await.is_err() { return; }
                }
                if *mode.borrow() == CUT || to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            _ = mode.changed() => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_resumes_a_part_left_when_the_connection_was_cut() {
    let sshd = Sshd::start().unwrap();
    let proxy = FaultProxy::start(sshd.port()).await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("big.evio");
    random_file(&src, 24 << 20);
    let remote = format!("{}/dst/big.evio", sshd.root().display());
    let part = PathBuf::from(format!("{remote}.part"));

    // Slow the copy (8 MB/s) so that the cut lands mid-file.
    let opts = CopyOptions {
        bandwidth: Some(Arc::new(RateLimiter::new(8_000_000))),
        ..CopyOptions::default()
    };
    let target = proxy.target(&sshd, work.path());
    let session = Arc::new(SshSession::connect(&target).await.unwrap());
    let copy = {
        let (session, src, remote) = (session.clone(), src.clone(), remote.clone());
        tokio::spawn(async move { session.push(&src, &remote, &opts).await })
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    proxy.set(CUT);
    let err = copy.await.unwrap().unwrap_err();
    assert!(
        err.is_retryable(),
        "a cut connection must be retryable: {err}"
    );
    // sshd notices the closed socket and closes the file: wait for the .part to settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept < 24 << 20, "kept {kept}");
    assert!(!Path::new(&remote).exists());

    proxy.set(PASS);
    let session = SshSession::connect(&target).await.unwrap();
    let report = session
        .push(&src, &remote, &CopyOptions::default())
        .await
        .unwrap();
    assert!(report.resumed_from > 0, "{report:?}");
    assert_eq!(report.bytes + report.resumed_from, 24 << 20);
    assert_eq!(digest(Path::new(&remote)), report.digest);
    assert_eq!(report.digest, digest(&src));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_cut_mid_file_resumes_against_the_manifest_digest() {
    let sshd = Sshd::start().unwrap();
    let proxy = FaultProxy::start(sshd.port()).await;
    let work = tempfile::tempdir().unwrap();
    let remote = sshd.root().join("r.evio");
    random_file(&remote, 24 << 20);
    let expected = digest(&remote);
    let local = work.path().join("r.evio");
    let target = proxy.target(&sshd, work.path());
    let opts = CopyOptions {
        expected_sha256: Some(expected.sha256_hex()),
        bandwidth: Some(Arc::new(RateLimiter::new(8_000_000))),
        // Few reads ahead, so that most of the file is still on the server at the cut.
        requests_in_flight: 4,
        ..CopyOptions::default()
    };
    let session = Arc::new(SshSession::connect(&target).await.unwrap());
    let copy = {
        let (session, remote, local, opts) = (
            session.clone(),
            remote.display().to_string(),
            local.clone(),
            opts.clone(),
        );
        tokio::spawn(async move { session.pull(&remote, &local, &opts).await })
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    proxy.set(CUT);
    let err = copy.await.unwrap().unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(!local.exists());
    assert!(work.path().join("r.evio.part").exists());

    proxy.set(PASS);
    let session = SshSession::connect(&target).await.unwrap();
    let opts = CopyOptions {
        bandwidth: None,
        ..opts
    };
    let report = session
        .pull(&remote.display().to_string(), &local, &opts)
        .await
        .unwrap();
    assert!(report.resumed_from > 0, "{report:?}");
    assert_eq!(report.digest, expected);
    assert_eq!(digest(&local), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_link_times_out_as_retryable_instead_of_hanging() {
    let sshd = Sshd::start().unwrap();
    let proxy = FaultProxy::start(sshd.port()).await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("f");
    random_file(&src, 8 << 20);
    let mut target = proxy.target(&sshd, work.path());
    target.idle_timeout = Some(Duration::from_secs(4));
    let session = SshSession::connect(&target).await.unwrap();
    proxy.set(STALL);
    let remote = format!("{}/f", sshd.root().display());
    let started = std::time::Instant::now();
    let err = session
        .push(&src, &remote, &CopyOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(!Path::new(&remote).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bit_flipped_on_the_wire_fails_the_copy_and_installs_nothing() {
    let sshd = Sshd::start().unwrap();
    let proxy = FaultProxy::start(sshd.port()).await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("f");
    random_file(&src, 4 << 20);
    let target = proxy.target(&sshd, work.path());
    let session = SshSession::connect(&target).await.unwrap();
    // Well inside the file's data, after the handshake.
    proxy.flip_at.store(
        proxy.flipped.load(Ordering::SeqCst) as u64 + (2 << 20),
        Ordering::SeqCst,
    );
    let remote = format!("{}/f", sshd.root().display());
    let err = session
        .push(&src, &remote, &CopyOptions::default())
        .await
        .unwrap_err();
    assert_eq!(proxy.flipped.load(Ordering::SeqCst), 1, "the fault fired");
    assert!(err.is_retryable(), "{err}");
    assert!(
        matches!(
            err,
            TransportError::ConnectionLost { .. }
                | TransportError::Ssh { .. }
                | TransportError::Timeout { .. }
        ),
        "SSH's MAC must reject the packet: {err}"
    );
    assert!(!Path::new(&remote).exists());
}
