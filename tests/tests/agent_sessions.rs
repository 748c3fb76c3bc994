//! The agent's SSH session pool against a real OpenSSH sshd: one session per site, reused;
//! a new one after the server side of the connection died (its sshd session processes are
//! killed, as a reboot or a firewall reset between two cycles of a daemon would); a fresh
//! one after a copy reported the connection lost ([`SessionPool::forget`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::config::{HostKeyPolicy, LayoutTemplate, Site, SshEnvironment, TransferMethod};
use ferry::tasks::sessions::SessionPool;
use ferry_tests::Sshd;

mod agent_common;
use agent_common::kill_connections;

fn site_for(sshd: &Sshd) -> Site {
    Site {
        name: "mirror".into(),
        description: None,
        hostname: Some(sshd.host().into()),
        port: Some(sshd.port()),
        username: Some(sshd.user().into()),
        identity_file: Some(sshd.user_key_path().to_path_buf()),
        host_key_policy: Some(HostKeyPolicy::Strict),
        known_hosts: Some(sshd.known_hosts_path().to_path_buf()),
        method: TransferMethod::Sftp,
        verify: Default::default(),
        origin: false,
        data_dirs: [("raw".to_string(), sshd.root().to_path_buf())].into(),
        layout: LayoutTemplate::default(),
        create_data_dirs: false,
        link_roots: Vec::new(),
        push_to: vec![],
        pull_from: vec![],
        completion: Default::default(),
        tape: vec![],
        purge: Default::default(),
        limits: Default::default(),
    }
}

fn pool() -> SessionPool {
    // An empty ~/.ssh/config in a home that does not exist: only the site map counts.
    let env = SshEnvironment::from_text("", &PathBuf::from("/nonexistent"), "nobody")
        .expect("empty ssh config parses");
    SessionPool::new(env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_per_site_reused_and_reopened_after_its_connection_died() {
    let sshd = Sshd::start().expect("sshd");
    let site = site_for(&sshd);
    let pool = pool();
    let root = sshd.root().display().to_string();

    let first = pool.session(&site).await.expect("connect");
    let again = pool.session(&site).await.expect("reuse");
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!(pool.connects(), 1);
    assert!(first.remote_size(&root).await.expect("lstat").is_some());

    // The server side of the connection dies. (Restarting sshd would not do: OpenSSH's
    // per-connection processes outlive the listener.)
    kill_connections(&sshd);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !first.is_closed() {
        assert!(
            Instant::now() < deadline,
            "the session never noticed: {}",
            sshd.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = pool.session(&site).await.expect("reconnect");
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(pool.connects(), 2);
    assert!(second.remote_size(&root).await.expect("lstat").is_some());

    // A copy that saw its connection fail drops the session; the next call connects anew.
    pool.forget(&site.name).await;
    let third = pool.session(&site).await.expect("connect after forget");
    assert!(!Arc::ptr_eq(&second, &third));
    assert_eq!(pool.connects(), 3);
    let logins = std::fs::read_to_string(sshd.log_path())
        .expect("sshd log")
        .matches("Accepted publickey")
        .count();
    assert_eq!(logins, 3, "{}", sshd.log_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_key_not_in_known_hosts_is_refused_and_not_retryable() {
    let sshd = Sshd::start().expect("sshd");
    let mut site = site_for(&sshd);
    let empty = tempfile::tempdir().expect("tempdir");
    site.known_hosts = Some(empty.path().join("known_hosts"));
    let err = pool().session(&site).await.expect_err("strict policy");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("not in"), "{err}");
}
