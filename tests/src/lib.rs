//! Test-service harness for Ferry's end-to-end tests: real servers, started per test.
//!
//! - [`Sshd`] — Debian's OpenSSH `sshd` on 127.0.0.1 with throwaway host and user keys
//!   (`sshd.rs`, keys made by `ssh-keygen` in `keys.rs`).
//! - [`MongoServer`] — a real `mongod` if on `PATH`, else `secantusd-rs` (`mongo.rs`; its
//!   readiness probe speaks the wire protocol through `wire.rs`).
//! - [`SshAgent`] — OpenSSH `ssh-agent` on a socket of its own, holding encrypted keys
//!   (`agent.rs`).
//! - [`ThrottleProxy`] — a TCP proxy pacing a link to a bandwidth, optionally delayed
//!   (`throttle.rs`).
//! - [`ChromeDriver`] — Debian's `chromedriver` driving a headless `chromium`, for the
//!   browser tests of `ferry serve` (`chromedriver.rs`).
//! - [`unique_db_name`] — a database name no other test uses.
//!
//! Servers listen on free ports (`ports.rs`), are ready when their constructor returns, and
//! stop when dropped — also when the test panics. If the test binary is SIGKILLed they die
//! with it (`process.rs`), and the next server sweeps their temp dirs (`tempdirs.rs`). A
//! missing program is an error that says how to install it (`binaries.rs`): tests fail, they
//! do not skip. The constructors are synchronous and may be called from plain tests and from
//! inside `#[tokio::test]` alike.
//!
//! ```no_run
//! let sshd = ferry_tests::Sshd::start()?;
//! let mongo = ferry_tests::MongoServer::start()?;
//! let db = ferry_tests::unique_db_name("copy_state");
//! println!("{} {} {db}", sshd.port(), mongo.uri());
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod agent;
pub mod binaries;
pub mod chromedriver;
pub mod fault_server;
pub mod keys;
pub mod mongo;
pub mod netns;
pub mod ports;
mod process;
pub mod sshd;
mod tempdirs;
pub mod throttle;
pub mod wire;

use std::sync::atomic::{AtomicU32, Ordering};

pub use agent::SshAgent;
pub use binaries::ServerKind;
pub use chromedriver::ChromeDriver;
pub use fault_server::{Fault, FaultAction, FaultServer, FsyncSeen, Op, Trigger};
pub use keys::{KeyPair, KeyType};
pub use mongo::MongoServer;
pub use sshd::{Sshd, SshdOptions};
pub use throttle::{Shape, ThrottleProxy};

/// MongoDB limits database names to 63 bytes.
const MAX_DB_NAME: usize = 63;

/// A database name for one test: `prefix` (reduced to `[A-Za-z0-9_]`, at most 32 bytes),
/// then process id, a per-process counter and random hex, e.g. `catalog_claim_4711_3_9f2c1a`.
pub fn unique_db_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut clean: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect();
    if clean.is_empty() {
        clean.push_str("test");
    }
    let name = format!(
        "{clean}_{}_{}_{:06x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>() & 0x00ff_ffff
    );
    name.chars().take(MAX_DB_NAME).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_db_names_differ_and_are_valid() {
        let a = unique_db_name("copy/state machine.v1$");
        let b = unique_db_name("copy/state machine.v1$");
        assert_ne!(a, b);
        for name in [&a, &b] {
            assert!(name.len() <= MAX_DB_NAME, "{name}");
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}"
            );
            assert!(name.starts_with("copy_state_machine_v1_"), "{name}");
        }
        assert!(unique_db_name(&"x".repeat(200)).len() <= MAX_DB_NAME);
        assert!(unique_db_name("").starts_with("test_"));
    }
}
