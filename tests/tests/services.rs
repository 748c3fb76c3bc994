//! Proof that the test-service harness gives real, working servers.
//!
//! - SSH: SFTP round trip through the harness's OpenSSH `sshd` with russh + russh-sftp, the
//!   host key checked against the harness's `known_hosts` (a wrong or unknown key refused);
//!   ed25519, ECDSA and RSA keys; only authorized user keys log in; OpenSSH `ssh`, `scp`,
//!   `sftp` and rclone with the argv/remote the harness gives them.
//! - MongoDB: insert / find / conditional update through the official `mongodb` driver
//!   against `MongoServer` (own or shared), and SCRAM authentication required when asked.
//! - Lifecycle: restart keeps data (MongoDB) and host key and port (sshd), also when another
//!   process holds the port for a while; drop, a panicking test and a SIGKILLed test binary
//!   all leave no server running.
//! - Failures: a missing binary (by option or environment) gives the install hint; a server
//!   that exits at start is reported with its log tail.
//!
//! Tests needing another environment run this binary again as a child process (the
//! `child_*` tests, ignored when run directly).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Document};
use ferry_tests::{unique_db_name, KeyPair, KeyType, MongoServer, Sshd, SshdOptions};
use mongodb::Client;
use rand::RngCore;
use russh::client;
use russh::keys::{check_known_hosts_path, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh_sftp::client::SftpSession;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Accepts the server only if its key is recorded for `[host]:port` in `known_hosts`.
struct KnownHostsOnly {
    host: String,
    port: u16,
    known_hosts: PathBuf,
}

impl client::Handler for KnownHostsOnly {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => Ok(check_known_hosts_path(
                &self.host,
                self.port,
                key,
                &self.known_hosts,
            )?),
            PublicKeyOrCertificate::Certificate(_) => Ok(false),
        }
    }
}

/// Connects to `sshd` checking the host key against `known_hosts`, and logs in with the
/// harness's user key.
async fn connect(
    sshd: &Sshd,
    known_hosts: &Path,
) -> Result<client::Handle<KnownHostsOnly>, russh::Error> {
    let mut session = handshake(sshd, known_hosts).await?;
    let accepted = log_in(&mut session, sshd.user(), sshd.user_key_path()).await?;
    assert!(accepted, "public key authentication failed");
    Ok(session)
}

/// Connects to `sshd` and checks its host key against `known_hosts`; no login yet.
async fn handshake(
    sshd: &Sshd,
    known_hosts: &Path,
) -> Result<client::Handle<KnownHostsOnly>, russh::Error> {
    let handler = KnownHostsOnly {
        host: sshd.host().to_owned(),
        port: sshd.port(),
        known_hosts: known_hosts.to_path_buf(),
    };
    let config = Arc::new(client::Config::default());
    client::connect(config, (sshd.host(), sshd.port()), handler).await
}

/// Public-key authentication with the private key at `key_path`; whether it was accepted.
async fn log_in(
    session: &mut client::Handle<KnownHostsOnly>,
    user: &str,
    key_path: &Path,
) -> Result<bool, russh::Error> {
    let key = russh::keys::load_secret_key(key_path, None)?;
    let hash = session.best_supported_rsa_hash().await?.flatten();
    let auth = session
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
        .await?;
    Ok(auth.success())
}

async fn open_sftp(session: &client::Handle<KnownHostsOnly>) -> SftpSession {
    let channel = session
        .channel_open_session()
        .await
        .expect("opening an SSH session channel");
    channel
        .request_subsystem(true, "sftp")
        .await
        .expect("requesting the sftp subsystem");
    SftpSession::new(channel.into_stream())
        .await
        .expect("starting the SFTP session")
}

#[tokio::test]
async fn sftp_round_trip_through_real_sshd() {
    let sshd = Sshd::start().unwrap();
    let session = connect(&sshd, sshd.known_hosts_path()).await.unwrap();
    let sftp = open_sftp(&session).await;

    let mut data = vec![0u8; 1024 * 1024 + 1];
    rand::rng().fill_bytes(&mut data);
    let remote = sshd.root().join("round-trip.bin");
    let remote = remote.to_str().unwrap();

    let mut file = sftp.create(remote).await.unwrap();
    file.write_all(&data).await.unwrap();
    file.shutdown().await.unwrap();

    let stat = sftp.metadata(remote).await.unwrap();
    assert_eq!(stat.size, Some(data.len() as u64));
    assert!(stat.is_regular());

    let mut back = Vec::new();
    let mut file = sftp.open(remote).await.unwrap();
    file.read_to_end(&mut back).await.unwrap();
    assert!(back == data, "bytes read back over SFTP differ");

    // The bytes really are on the server's disk, where the test site's root is.
    assert!(std::fs::read(sshd.root().join("round-trip.bin")).unwrap() == data);
    sftp.close().await.unwrap();
}

#[tokio::test]
async fn sftp_client_refuses_wrong_host_key() {
    let sshd = Sshd::start().unwrap();
    let other = tempfile::tempdir().unwrap();
    let impostor = KeyPair::generate(KeyType::Ed25519, &other.path().join("k"), "x").unwrap();
    let known_hosts = other.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!(
            "[127.0.0.1]:{} {}\n",
            sshd.port(),
            impostor.public_line().unwrap()
        ),
    )
    .unwrap();

    let err = match connect(&sshd, &known_hosts).await {
        Ok(_) => panic!("connected although known_hosts holds another key"),
        Err(e) => e,
    };
    assert!(
        matches!(
            err,
            russh::Error::Keys(russh::keys::Error::KeyChanged { .. })
        ),
        "{err:?}"
    );

    // An empty known_hosts (host unknown) is refused too.
    std::fs::write(&known_hosts, "").unwrap();
    assert!(connect(&sshd, &known_hosts).await.is_err());
}

#[tokio::test]
async fn sftp_works_with_rsa_and_ecdsa_keys() {
    for (host, user) in [
        (KeyType::Rsa, KeyType::Rsa),
        (KeyType::Ecdsa, KeyType::Ecdsa),
    ] {
        let sshd = Sshd::start_with(SshdOptions {
            host_key_type: host,
            user_key_type: user,
            sftp_start_in_root: true,
            ..SshdOptions::default()
        })
        .unwrap();
        let session = connect(&sshd, sshd.known_hosts_path()).await.unwrap();
        let sftp = open_sftp(&session).await;
        // A relative path lands in the site root (`sftp_start_in_root`).
        assert_eq!(
            sftp.canonicalize(".").await.unwrap(),
            sshd.root().to_str().unwrap()
        );
        let mut file = sftp.create("relative.txt").await.unwrap();
        file.write_all(b"hello").await.unwrap();
        file.shutdown().await.unwrap();
        assert_eq!(
            std::fs::read(sshd.root().join("relative.txt")).unwrap(),
            b"hello",
            "{host:?}"
        );
    }
}

#[test]
fn openssh_client_runs_a_command_with_ssh_argv() {
    let sshd = Sshd::start().unwrap();
    let mut argv = sshd.ssh_argv();
    argv.extend(["echo".to_owned(), "ferry-ok".to_owned()]);
    let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?} failed: {}\nsshd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log_tail()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ferry-ok");
}

/// The firewall the cax takeover test builds: an sshd in a private namespace refuses the
/// test's direct connection; a published bastion in the same namespace reaches it.
#[test]
fn an_sshd_behind_the_firewall_is_reached_only_through_the_published_bastion() {
    use ferry_tests::netns::{assert_unreachable, Netns};
    use ferry_tests::sshd::InNetns;
    let netns = Netns::create().unwrap();
    let inside = |publish| SshdOptions {
        netns: Some(InNetns {
            netns: Arc::clone(&netns),
            publish,
        }),
        ..SshdOptions::default()
    };
    let hidden = Sshd::start_with(inside(false)).unwrap();
    let bastion = Sshd::start_with(inside(true)).unwrap();
    assert_unreachable(std::net::SocketAddr::from(([127, 0, 0, 1], hidden.port()))).unwrap();
    // Through the bastion, as OpenSSH's client does it: `ProxyCommand ssh … -W %h:%p`.
    let mut proxy = bastion.ssh_argv();
    let destination = proxy.pop().unwrap();
    proxy.extend(["-W".to_owned(), "%h:%p".to_owned(), destination]);
    let mut argv = hidden.ssh_argv();
    argv.splice(
        1..1,
        ["-o".to_owned(), format!("ProxyCommand={}", proxy.join(" "))],
    );
    argv.extend(["echo".to_owned(), "behind-ok".to_owned()]);
    let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?} failed: {}\nbastion log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        bastion.log_tail()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "behind-ok");
}

#[test]
fn openssh_sftp_scp_and_rclone_reach_the_server() {
    let sshd = Sshd::start().unwrap();
    let local = tempfile::tempdir().unwrap();
    let source = local.path().join("source.bin");
    let mut data = vec![0u8; 64 * 1024];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(&source, &data).unwrap();

    let scp_target = sshd.root().join("by-scp.bin");
    let out = Command::new("scp")
        .args(sshd.ssh_options())
        .arg(&source)
        .arg(format!("{}:{}", sshd.host(), scp_target.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&scp_target).unwrap() == data);

    let sftp_target = sshd.root().join("by-sftp.bin");
    let mut sftp = Command::new("sftp")
        .args(sshd.ssh_options())
        .args(["-b", "-", sshd.host()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let batch = format!("put {} {}\n", source.display(), sftp_target.display());
    std::io::Write::write_all(&mut sftp.stdin.take().unwrap(), batch.as_bytes()).unwrap();
    let out = sftp.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sftp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&sftp_target).unwrap() == data);

    let rclone_target = sshd.root().join("by-rclone.bin");
    let out = Command::new("rclone")
        .arg("copyto")
        .arg(&source)
        .arg(format!(
            "{}{}",
            sshd.rclone_remote(),
            rclone_target.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rclone: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&rclone_target).unwrap() == data);

    // rclone checks the host key: with another key recorded it refuses to copy.
    let impostor = KeyPair::generate(KeyType::Ed25519, &local.path().join("k"), "x").unwrap();
    let line = format!(
        "[127.0.0.1]:{} {}\n",
        sshd.port(),
        impostor.public_line().unwrap()
    );
    std::fs::write(sshd.known_hosts_path(), line).unwrap();
    let refused = Command::new("rclone")
        .args(["--retries", "1", "--low-level-retries", "1", "copyto"])
        .arg(&source)
        .arg(format!(
            "{}{}",
            sshd.rclone_remote(),
            sshd.root().join("no.bin").display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("key mismatch"),
        "{stderr}"
    );
    assert!(!sshd.root().join("no.bin").exists());
}

#[test]
fn host_key_fingerprint_matches_what_openssh_sees() {
    let sshd = Sshd::start().unwrap();
    // ssh-keyscan asks the running server for its key; ssh-keygen fingerprints it.
    let scan = Command::new("ssh-keyscan")
        .args(["-t", "ed25519", "-p", &sshd.port().to_string(), "127.0.0.1"])
        .output()
        .unwrap();
    assert!(scan.status.success());
    let dir = tempfile::tempdir().unwrap();
    let scanned = dir.path().join("scanned");
    std::fs::write(&scanned, &scan.stdout).unwrap();
    let fp = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&scanned)
        .output()
        .unwrap();
    let fp = String::from_utf8(fp.stdout).unwrap();
    assert_eq!(
        fp.split_whitespace().nth(1),
        Some(sshd.host_key_fingerprint().as_str())
    );
    // ... and the known_hosts line is exactly what the server presents.
    let known = std::fs::read_to_string(sshd.known_hosts_path()).unwrap();
    let scanned_line = String::from_utf8(scan.stdout).unwrap();
    let scanned_key: Vec<&str> = scanned_line.split_whitespace().skip(1).take(2).collect();
    let known_key: Vec<&str> = known.split_whitespace().skip(1).take(2).collect();
    assert_eq!(scanned_key, known_key);
    assert!(known.starts_with(&format!("[127.0.0.1]:{} ", sshd.port())));
}

#[tokio::test]
async fn sshd_restart_keeps_port_and_host_key() {
    let mut sshd = Sshd::start().unwrap();
    let port = sshd.port();
    let fingerprint = sshd.host_key_fingerprint();
    let session = connect(&sshd, sshd.known_hosts_path()).await.unwrap();
    drop(session);

    let old_pid = sshd.pid().unwrap();
    sshd.stop();
    assert!(is_dead(old_pid) && sshd.pid().is_none());
    sshd.restart().unwrap();
    assert_eq!(sshd.port(), port);
    assert_eq!(sshd.host_key_fingerprint(), fingerprint);
    // The old known_hosts entry still verifies the restarted server.
    let session = connect(&sshd, sshd.known_hosts_path()).await.unwrap();
    let sftp = open_sftp(&session).await;
    assert!(sftp
        .try_exists(sshd.root().to_str().unwrap())
        .await
        .unwrap());
}

#[test]
fn dropping_sshd_stops_it_and_removes_its_files() {
    let sshd = Sshd::start().unwrap();
    let pid = sshd.pid().unwrap();
    let root = sshd.root().to_path_buf();
    assert!(root.is_dir());
    drop(sshd);
    // Not checked by connecting: a concurrent test may already have been given the port.
    assert!(is_dead(pid), "sshd {pid} survived the drop");
    assert!(!root.exists(), "{} survived the drop", root.display());
}

#[tokio::test]
async fn only_authorized_user_keys_log_in() {
    let sshd = Sshd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let other = KeyPair::generate(KeyType::Ed25519, &dir.path().join("other"), "o").unwrap();
    let mut session = handshake(&sshd, sshd.known_hosts_path()).await.unwrap();
    let accepted = log_in(&mut session, sshd.user(), other.private_path()).await;
    assert!(!accepted.unwrap(), "a key not in authorized_keys logged in");

    sshd.authorize_key(&other).unwrap();
    let mut session = handshake(&sshd, sshd.known_hosts_path()).await.unwrap();
    let accepted = log_in(&mut session, sshd.user(), other.private_path()).await;
    assert!(accepted.unwrap(), "an authorized key was refused");
}

#[test]
fn sshd_config_error_is_reported_with_the_log_tail() {
    let err = Sshd::start_with(SshdOptions {
        extra_config: vec!["NoSuchKeyword yes".to_owned()],
        ..SshdOptions::default()
    })
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("sshd exited with"), "{err}");
    assert!(err.contains("NoSuchKeyword"), "{err}");
}

#[test]
fn servers_stop_when_the_test_panics() {
    let pids = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let sshd = Sshd::start().unwrap();
        let mongo = MongoServer::start().unwrap();
        pids.lock()
            .unwrap()
            .extend([sshd.pid().unwrap(), mongo.pid().unwrap()]);
        panic!("test failure while servers run");
    });
    assert!(result.is_err());
    for pid in pids.into_inner().unwrap() {
        assert!(is_dead(pid), "server {pid} outlived the panicking test");
    }
}

#[test]
fn missing_sshd_binary_fails_with_install_hint() {
    let err = Sshd::start_with(SshdOptions {
        sshd_path: Some(PathBuf::from("/nonexistent/sshd")),
        ..SshdOptions::default()
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "sshd not found at /nonexistent/sshd: run deploy/install-test-deps.sh (installs openssh-server)"
    );
}

/// Runs in a child process started by [`start_error_in_child`]: starts the server named by
/// `$FERRY_CHILD_SERVER` (`sshd` or `mongo`), which must fail, and prints the error.
#[test]
#[ignore = "run in a child process by start_error_in_child"]
fn child_print_start_error() {
    let err = match std::env::var("FERRY_CHILD_SERVER").as_deref() {
        Ok("sshd") => Sshd::start().map(drop).unwrap_err(),
        Ok("mongo") => MongoServer::start().map(drop).unwrap_err(),
        other => panic!("FERRY_CHILD_SERVER={other:?}"),
    };
    println!("CHILD-ERROR-BEGIN\n{err:#}\nCHILD-ERROR-END");
}

/// Starts `server` (`sshd` or `mongo`) in a child process of this test binary with `env` set
/// (`None`: removed) and returns the start error it printed. Environment overrides are
/// tested this way because setting them here would race the servers of concurrent tests.
fn start_error_in_child(server: &str, env: &[(&str, Option<&str>)]) -> String {
    let mut child = Command::new(std::env::current_exe().expect("path of this test binary"));
    child
        .args([
            "--exact",
            "child_print_start_error",
            "--ignored",
            "--nocapture",
        ])
        .env("FERRY_CHILD_SERVER", server);
    for (key, value) in env {
        match value {
            Some(value) => child.env(key, value),
            None => child.env_remove(key),
        };
    }
    let out = child.output().expect("running this test binary as a child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "child test failed: {stdout}");
    stdout
        .split_once("CHILD-ERROR-BEGIN\n")
        .and_then(|(_, rest)| rest.split_once("\nCHILD-ERROR-END"))
        .map(|(error, _)| error.to_owned())
        .unwrap_or_else(|| panic!("no CHILD-ERROR block in {stdout}"))
}

#[test]
fn env_override_of_sshd_binary_is_honoured() {
    let error = start_error_in_child(
        "sshd",
        &[("FERRY_TEST_SSHD", Some("/nonexistent/env-sshd"))],
    );
    assert_eq!(
        error,
        "sshd not found at /nonexistent/env-sshd: run deploy/install-test-deps.sh (installs openssh-server)"
    );
}

async fn client(uri: &str) -> Client {
    Client::with_uri_str(uri)
        .await
        .expect("parsing the MongoDB URI")
}

#[tokio::test]
async fn mongo_insert_and_find_with_official_driver() {
    let mongo = MongoServer::start().unwrap();
    let client = client(&mongo.uri()).await;
    let runs = client
        .database(&unique_db_name("services_insert"))
        .collection::<Document>("runs");

    runs.insert_many([
        doc! { "number": 4711, "name": "170330_1234", "detector": "tpc" },
        doc! { "number": 4712, "name": "170330_1300", "detector": "tpc" },
    ])
    .await
    .unwrap();
    let found = runs
        .find_one(doc! { "number": 4712 })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.get_str("name").unwrap(), "170330_1300");
    assert_eq!(runs.count_documents(doc! {}).await.unwrap(), 2);
    assert!(runs.find_one(doc! { "number": 1 }).await.unwrap().is_none());
}

#[tokio::test]
async fn mongo_conditional_update_changes_only_the_expected_state() {
    let mongo = MongoServer::shared().unwrap();
    let client = client(&mongo.uri()).await;
    let runs = client
        .database(&unique_db_name("services_cond"))
        .collection::<Document>("runs");
    runs.insert_one(doc! {
        "number": 4711,
        "data": [ { "host": "lngs", "status": "transferring" } ],
    })
    .await
    .unwrap();

    let filter = doc! {
        "number": 4711,
        "data": { "$elemMatch": { "host": "lngs", "status": "transferring" } },
    };
    let update = doc! { "$set": { "data.$.status": "verifying" } };
    let first = runs
        .update_one(filter.clone(), update.clone())
        .await
        .unwrap();
    assert_eq!((first.matched_count, first.modified_count), (1, 1));
    // The same claim again: the expected state is gone, nothing changes.
    let second = runs.update_one(filter, update).await.unwrap();
    assert_eq!((second.matched_count, second.modified_count), (0, 0));

    let run = runs
        .find_one(doc! { "number": 4711 })
        .await
        .unwrap()
        .unwrap();
    let status = run.get_array("data").unwrap()[0]
        .as_document()
        .unwrap()
        .get_str("status")
        .unwrap()
        .to_owned();
    assert_eq!(status, "verifying");
}

#[tokio::test]
async fn shared_mongo_is_one_server_per_process() {
    let first = MongoServer::shared().unwrap();
    let second = MongoServer::shared().unwrap();
    assert!(std::ptr::eq(first, second));
    let client = client(&first.uri()).await;
    let db = client.database(&unique_db_name("services_shared"));
    db.collection::<Document>("runs")
        .insert_one(doc! { "number": 7 })
        .await
        .unwrap();
    assert_eq!(
        db.collection::<Document>("runs")
            .count_documents(doc! {})
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn mongo_restart_keeps_data_and_port() {
    let mut mongo = MongoServer::start().unwrap();
    let db = unique_db_name("services_restart");
    let port = mongo.port();
    {
        let client = client(&mongo.uri()).await;
        let runs = client.database(&db).collection::<Document>("runs");
        runs.insert_one(doc! { "number": 1, "name": "kept" })
            .await
            .unwrap();
        client.shutdown().await;
    }
    mongo.restart().unwrap();
    assert_eq!(mongo.port(), port);
    let client = client(&mongo.uri()).await;
    let runs = client.database(&db).collection::<Document>("runs");
    let found = runs.find_one(doc! { "number": 1 }).await.unwrap().unwrap();
    assert_eq!(found.get_str("name").unwrap(), "kept");
}

#[tokio::test]
async fn mongo_with_auth_requires_credentials() {
    let mongo = MongoServer::start_with_auth("ferry", "s3cret:/@pw").unwrap();
    assert!(
        !format!("{mongo:?}").contains("s3cret"),
        "password in Debug"
    );

    let db = unique_db_name("services_auth");
    let good = client(&mongo.uri()).await;
    good.database(&db)
        .collection::<Document>("runs")
        .insert_one(doc! { "number": 1 })
        .await
        .unwrap();

    let anonymous = Client::with_options({
        let mut options = mongodb::options::ClientOptions::parse(mongo.uri_without_credentials())
            .await
            .unwrap();
        options.server_selection_timeout = Some(Duration::from_secs(5));
        options
    })
    .unwrap();
    let denied = anonymous
        .database(&db)
        .collection::<Document>("runs")
        .find_one(doc! {})
        .await;
    assert!(denied.is_err(), "read without credentials succeeded");
}

#[test]
fn dropping_mongo_stops_it_and_removes_its_storage() {
    let mongo = MongoServer::start().unwrap();
    let pid = mongo.pid().unwrap();
    let storage = mongo.storage_path().to_path_buf();
    assert!(storage.is_dir());
    drop(mongo);
    assert!(is_dead(pid), "server {pid} survived the drop");
    assert!(!storage.exists());
}

#[test]
fn mongo_server_that_exits_at_once_is_reported_with_its_output() {
    // `ls` as the server: it rejects `--config` and exits 2 with a message on stderr.
    let error = start_error_in_child(
        "mongo",
        &[
            ("FERRY_TEST_SECANTUSD", Some("/bin/ls")),
            ("FERRY_TEST_MONGOD", None),
        ],
    );
    assert!(
        error.contains("secantusd-rs exited with exit status: 2 before it was ready"),
        "{error}"
    );
    assert!(error.contains("--config"), "log tail missing: {error}");
}

#[test]
fn env_override_of_mongo_binary_is_honoured() {
    let error = start_error_in_child(
        "mongo",
        &[
            ("FERRY_TEST_SECANTUSD", Some("/nonexistent/secantusd-rs")),
            ("FERRY_TEST_MONGOD", None),
        ],
    );
    assert!(
        error.starts_with("FERRY_TEST_SECANTUSD=/nonexistent/secantusd-rs does not exist")
            && error.contains("deploy/install-test-deps.sh"),
        "{error}"
    );
}

/// Runs in a child process started by `servers_die_when_the_test_process_is_killed`: starts
/// both servers, reports their pids and waits to be SIGKILLed (no Drop will run).
#[test]
#[ignore = "run by servers_die_when_the_test_process_is_killed in a child process"]
fn child_hold_servers_until_killed() {
    let sshd = Sshd::start().unwrap();
    let mongo = MongoServer::start().unwrap();
    println!(
        "PIDS {} {} {} {}",
        sshd.pid().unwrap(),
        mongo.pid().unwrap(),
        sshd.root().parent().unwrap().display(),
        mongo.storage_path().parent().unwrap().display(),
    );
    std::thread::sleep(Duration::from_secs(120));
}

/// Whether `pid` is gone or a zombie (killed, waiting for a reaper that may never come in a
/// container without an init).
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

#[test]
fn servers_die_when_the_test_process_is_killed() {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_hold_servers_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    let mut lines = std::io::BufReader::new(stdout);
    while !line.starts_with("PIDS ") {
        line.clear();
        assert_ne!(lines.read_line(&mut line).unwrap(), 0, "child ended early");
    }
    let fields: Vec<&str> = line.split_whitespace().skip(1).collect();
    let [sshd_pid, mongo_pid, sshd_dir, mongo_dir] = fields[..] else {
        panic!("bad line {line:?}");
    };
    let [sshd_pid, mongo_pid] = [sshd_pid, mongo_pid].map(|p| p.parse::<u32>().unwrap());
    assert!(!is_dead(sshd_pid) && !is_dead(mongo_pid));

    child.kill().unwrap(); // SIGKILL: no destructor runs in the child
    child.wait().unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(is_dead(sshd_pid) && is_dead(mongo_pid)) {
        assert!(
            std::time::Instant::now() < deadline,
            "servers outlived the killed test process: sshd {} mongo {}",
            is_dead(sshd_pid),
            is_dead(mongo_pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // (Their ports are not checked: a concurrent test may already have been given them.)

    // No destructor removed the temp dirs; the next servers sweep them. (Servers of
    // concurrent tests may sweep them first, so their presence is not asserted here.)
    let _sshd = Sshd::start().unwrap();
    let _mongo = MongoServer::start().unwrap();
    assert!(!Path::new(sshd_dir).exists(), "{sshd_dir} not swept");
    assert!(!Path::new(mongo_dir).exists(), "{mongo_dir} not swept");
}

/// Holds `port` for `hold`, so that a restart first meets "address already in use".
fn occupy_port(port: u16, hold: Duration) -> std::thread::JoinHandle<()> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("binding the port to hold");
    std::thread::spawn(move || {
        std::thread::sleep(hold);
        drop(listener);
    })
}

#[test]
fn restart_waits_for_a_port_held_by_another_process() {
    let mut sshd = Sshd::start().unwrap();
    let mut mongo = MongoServer::start().unwrap();
    sshd.stop();
    mongo.stop();
    let holders = [
        occupy_port(sshd.port(), Duration::from_millis(800)),
        occupy_port(mongo.port(), Duration::from_millis(800)),
    ];
    sshd.restart().unwrap();
    mongo.restart().unwrap();
    for holder in holders {
        holder.join().unwrap();
    }
    let log = std::fs::read_to_string(sshd.log_path()).unwrap();
    assert!(log.contains("Address already in use"), "{log}");
    std::net::TcpStream::connect(("127.0.0.1", sshd.port())).unwrap();
    std::net::TcpStream::connect(("127.0.0.1", mongo.port())).unwrap();
}
