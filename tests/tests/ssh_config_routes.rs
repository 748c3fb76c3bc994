//! `~/.ssh/config` as `ssh` reads it, against real OpenSSH servers: an alias's `HostName`,
//! `Port`, `User` and `IdentityFile`; `ProxyJump` through one and two bastions;
//! `ProxyCommand` as an argv (`ssh -W %h:%p`). Every hop's host key is checked against
//! known_hosts as a direct connection's would be.

use std::path::Path;

use ferry::config::{LayoutTemplate, Site, SshEnvironment, TransferMethod};
use ferry::tasks::sessions::target_for;
use ferry::transport::SshSession;
use ferry_tests::Sshd;

/// A site whose only SSH setting is the site map's `hostname`.
fn site(alias: &str) -> Site {
    Site {
        name: "daq-site".into(),
        description: None,
        hostname: Some(alias.into()),
        port: None,
        username: None,
        identity_file: None,
        host_key_policy: None,
        known_hosts: None,
        method: TransferMethod::Sftp,
        verify: Default::default(),
        origin: false,
        data_dirs: Default::default(),
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

/// One known_hosts file for every server.
fn known_hosts(dir: &Path, servers: &[&Sshd]) -> std::path::PathBuf {
    let mut text = String::new();
    for s in servers {
        text.push_str(&std::fs::read_to_string(s.known_hosts_path()).expect("test setup"));
    }
    let path = dir.join("known_hosts");
    std::fs::write(&path, text).expect("test setup");
    path
}

fn host_block(alias: &str, s: &Sshd, known: &Path, extra: &str) -> String {
    format!(
        "Host {alias}\n  HostName {}\n  Port {}\n  User {}\n  IdentityFile {}\n  \
         UserKnownHostsFile {}\n  IdentitiesOnly yes\n{extra}",
        s.host(),
        s.port(),
        s.user(),
        s.user_key_path().display(),
        known.display()
    )
}

/// Runs `sha256sum FILE` on the far side: proves the session reached that server.
async fn remote_sha(session: &SshSession, file: &Path) -> String {
    let out = session
        .exec(&["sha256sum".to_string(), file.display().to_string()])
        .await
        .expect("sha256sum over SSH");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_of_the_ssh_config_connects_with_its_hostname_port_user_and_key() {
    let target = Sshd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kh = known_hosts(dir.path(), &[&target]);
    let config = host_block("daq", &target, &kh, "");
    let env = SshEnvironment::from_text(&config, dir.path(), "nobody-here").unwrap();
    let t = target_for(&env, &site("daq"));
    assert_eq!((t.host.as_str(), t.port), (target.host(), target.port()));
    assert!(
        !t.use_agent,
        "IdentitiesOnly yes must keep ssh-agent keys out"
    );
    let file = target.root().join("marker");
    std::fs::write(&file, b"target").unwrap();
    let session = SshSession::connect(&t).await.unwrap();
    assert_eq!(remote_sha(&session, &file).await, sha(b"target"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_jump_through_one_and_two_bastions_reaches_the_target() {
    let target = Sshd::start().unwrap();
    let b1 = Sshd::start().unwrap();
    let b2 = Sshd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kh = known_hosts(dir.path(), &[&target, &b1, &b2]);
    let config = [
        host_block("daq", &target, &kh, "  ProxyJump gw1\n"),
        host_block("daq2", &target, &kh, "  ProxyJump gw1,gw2\n"),
        host_block("gw1", &b1, &kh, ""),
        host_block("gw2", &b2, &kh, ""),
    ]
    .join("");
    let env = SshEnvironment::from_text(&config, dir.path(), "nobody-here").unwrap();
    let file = target.root().join("marker");
    std::fs::write(&file, b"behind the bastion").unwrap();
    for alias in ["daq", "daq2"] {
        let t = target_for(&env, &site(alias));
        let session = SshSession::connect(&t).await.unwrap();
        assert_eq!(
            remote_sha(&session, &file).await,
            sha(b"behind the bastion"),
            "{alias}"
        );
    }
    // With the bastion gone, the jump cannot be made: the route really goes through it.
    let mut b1 = b1;
    b1.stop();
    let t = target_for(&env, &site("daq"));
    let err = SshSession::connect(&t).await.unwrap_err();
    assert!(err.to_string().contains(&b1.port().to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bastion_whose_host_key_is_unknown_is_refused() {
    let target = Sshd::start().unwrap();
    let b1 = Sshd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Only the target's key is known.
    let kh = known_hosts(dir.path(), &[&target]);
    let config = [
        host_block("daq", &target, &kh, "  ProxyJump gw1\n"),
        host_block("gw1", &b1, &kh, ""),
    ]
    .join("");
    let env = SshEnvironment::from_text(&config, dir.path(), "nobody-here").unwrap();
    let err = SshSession::connect(&target_for(&env, &site("daq")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ferry::transport::TransportError::HostKeyUnknown { port, .. } if port == b1.port()),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_command_runs_as_an_argv_and_a_failing_one_reports_its_stderr() {
    let target = Sshd::start().unwrap();
    let b1 = Sshd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kh = known_hosts(dir.path(), &[&target, &b1]);
    let mut via = b1.ssh_argv();
    via.pop(); // the destination
    let proxy = format!("  ProxyCommand {} -W %h:%p {}\n", via.join(" "), b1.host());
    let config = [
        host_block("daq", &target, &kh, &proxy),
        host_block(
            "broken",
            &target,
            &kh,
            "  ProxyCommand sh -c 'echo no route to the DAQ >&2; exit 3'\n",
        ),
    ]
    .join("");
    let env = SshEnvironment::from_text(&config, dir.path(), "nobody-here").unwrap();
    let file = target.root().join("marker");
    std::fs::write(&file, b"via command").unwrap();
    let session = SshSession::connect(&target_for(&env, &site("daq")))
        .await
        .unwrap();
    assert_eq!(remote_sha(&session, &file).await, sha(b"via command"));
    let err = SshSession::connect(&target_for(&env, &site("broken")))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("no route to the DAQ"), "{msg}");
    assert!(msg.contains("\"sh\", \"-c\""), "{msg}");
}
