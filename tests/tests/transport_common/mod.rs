//! Helpers shared by the transport integration tests (`transport_*.rs`).

// Each test file uses only some of the helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry::checksum::FileDigest;
use ferry::transport::SshTarget;
use ferry_tests::Sshd;
use rand::RngCore;

/// A target for the harness's sshd: its user key, its known_hosts, strict host keys.
pub fn target(sshd: &Sshd) -> SshTarget {
    let mut t = SshTarget::new(sshd.host(), sshd.port(), sshd.user());
    t.identity_files = vec![sshd.user_key_path().to_path_buf()];
    t.known_hosts_files = vec![sshd.known_hosts_path().to_path_buf()];
    t.use_agent = false;
    t.connect_timeout = Duration::from_secs(10);
    t
}

/// SHA-256 + MD5 of a local file, computed on a plain thread (`hash_file` blocks).
pub fn digest(path: &Path) -> FileDigest {
    let path = path.to_path_buf();
    std::thread::spawn(move || ferry::checksum::hash_file(&path))
        .join()
        .expect("hashing thread")
        .expect("hashing the file")
}

/// A file of `size` random bytes (parents created).
pub fn random_file(path: &Path, size: usize) {
    std::fs::create_dir_all(path.parent().expect("test setup")).expect("test setup");
    let mut data = vec![0u8; size];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(path, data).expect("test setup");
}

/// A tmpfs mounted for the test; unmounted on drop.
pub struct SmallTmpfs(pub PathBuf);

impl SmallTmpfs {
    /// Mount a tmpfs of `size` (e.g. `2m`) on `dir`, created if missing.
    pub fn mount(dir: PathBuf, size: &str) -> SmallTmpfs {
        std::fs::create_dir_all(&dir).expect("test setup");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CAP_SYS_ADMIN): {status}"
        );
        SmallTmpfs(dir)
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Every entry below `dir` (links not followed): path, kind, permission bits and contents,
/// to show that nothing there changed.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, (String, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("listing for a snapshot") {
            let path = entry.expect("listing for a snapshot").path();
            let meta = std::fs::symlink_metadata(&path).expect("lstat for a snapshot");
            let mode = meta.permissions().mode();
            let (kind, data) = if meta.file_type().is_symlink() {
                let to = std::fs::read_link(&path).expect("readlink");
                ("link".to_owned(), to.into_os_string().into_encoded_bytes())
            } else if meta.is_dir() {
                todo.push(path.clone());
                ("dir".to_owned(), Vec::new())
            } else {
                (
                    "file".to_owned(),
                    std::fs::read(&path).expect("reading for a snapshot"),
                )
            };
            out.insert(path, (kind, mode, data));
        }
    }
    out
}

/// Whether anything (a link included) is at `p`.
pub fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

/// Permission bits of `p` (not following a link).
pub fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p)
        .expect("lstat")
        .permissions()
        .mode()
        & 0o7777
}
