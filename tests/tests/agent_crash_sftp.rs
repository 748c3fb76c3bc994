//! Crash trials over SFTP (issue 5, "Crashes"): the real `ferry` binary is killed with
//! SIGKILL at a random moment of a push, a pull or a verification by the destination's
//! agent, with both sites behind real OpenSSH sshd servers (the harness's [`Sshd`]), then
//! restarted until a cycle finds nothing left to do; the invariants of `crash_common` are
//! then checked with code independent of the agent (each site's data directory is a local
//! directory the test reads directly).
//!
//! Each phase starts one sshd for `daq` and one for `mirror`; each trial gets fresh data
//! directories below their roots and its own embedded catalogue. `daq` is the origin with
//! purge enabled (`min_copies` 1, retention 200 ms, high-water mark 1 %), so the restarts
//! also purge it once the mirror holds a verified copy, as in the local trials. The copying
//! agent has a bandwidth limit (20 MB/s) so a copy lasts long enough to be cut; lease 10 min,
//! so a prompt recovery goes through the dead-holder path, not expiry.
//!
//! - **push**: the runs registered, then `ferry --once --host daq` (push over SFTP to
//!   `mirror`, read back; then purge) is killed. Remote `.part` files must be resumed or
//!   cleaned by the restarts;
//! - **pull**: the runs registered at `daq`, then `ferry --once --host mirror` (pulling from
//!   `daq` over SFTP) is killed;
//! - **verify-agent**: `mirror` has `"verify": "agent"`, so the push stops at `verifying`;
//!   then `ferry --once --host mirror --task verify`, which re-hashes the copies, is killed;
//! - **push-mongo**: the push phase with the catalogue in the MongoDB-wire server
//!   ([`MongoServer::shared`], a database per trial) instead of the embedded one.
//!
//! `the_invariant_checks_catch_…` shows the checks can fail: a damaged mirror file, an
//! origin file gone behind the catalogue's back and a stray `.part` are each reported.
//!
//! `FERRY_CRASH_SEED=N` replays a seed, `FERRY_CRASH_TRIALS=N` sets the trials per phase
//! (default 7). `deploy/crash-trials.sh` runs these with the local ones.

#![allow(clippy::unwrap_used)]

use ferry_tests::{unique_db_name, MongoServer, Sshd};
use rand::rngs::StdRng;
use serde_json::Value;

mod crash_common;
use crash_common::{origin_purge, trials, Phase, World};

/// How the copying agent is limited: slow enough that a kill lands mid-copy.
fn limits() -> Value {
    serde_json::json!({ "bandwidth_per_link": "20MB/s", "lease": "10m" })
}

/// A site behind `sshd`, with `extra` settings.
fn site(sshd: &Sshd, extra: Value) -> Value {
    let mut site = serde_json::json!({
        "method": "sftp",
        "hostname": sshd.host(),
        "port": sshd.port(),
        "username": sshd.user(),
        "identity_file": sshd.user_key_path(),
        "known_hosts": sshd.known_hosts_path(),
        "strict_host_key_checking": "yes",
    });
    for (k, v) in extra.as_object().unwrap() {
        site[k] = v.clone();
    }
    site
}

/// The origin's settings: completion marker, purge, `extra`.
fn origin(extra: Value) -> Value {
    let mut daq = serde_json::json!({
        "origin": true,
        "completion": { "marker": "RUN_COMPLETE" },
        "purge": origin_purge(),
    });
    for (k, v) in extra.as_object().unwrap() {
        daq[k] = v.clone();
    }
    daq
}

/// The two servers of a phase; a trial's data directories lie below their roots.
struct Servers {
    daq: Sshd,
    mirror: Sshd,
}

impl Servers {
    fn start() -> Self {
        Servers {
            daq: Sshd::start().unwrap(),
            mirror: Sshd::start().unwrap(),
        }
    }

    /// A trial's world: `daq` and `mirror` with these settings (the SFTP ones added), data
    /// directories `t<trial>/raw` below each server's root, catalogue `catalog`
    /// (`None`: embedded).
    fn world(
        &self,
        rng: &mut StdRng,
        trial: Option<u64>,
        catalog: Option<String>,
        daq: Value,
        mirror: Value,
    ) -> World {
        let sub = trial.map_or("measure".to_string(), |t| format!("t{t}"));
        World::new(
            rng,
            |_| {
                (
                    self.daq.root().join(&sub).join("raw"),
                    self.mirror.root().join(&sub).join("raw"),
                )
            },
            catalog,
            [site(&self.daq, daq), site(&self.mirror, mirror)],
        )
    }
}

/// The runs registered (hashing the origin takes most of a first cycle), so the kills land
/// in the copy; then the origin's whole cycle (push, then purge).
fn prepare_push(w: &World) -> (&'static str, &'static [&'static str]) {
    w.cycle_ok("daq", &["--task", "register"]);
    ("daq", &[])
}

#[test]
fn kill_during_sftp_push_then_restart_keeps_every_invariant() {
    let servers = Servers::start();
    let world = |rng: &mut StdRng, trial| {
        servers.world(
            rng,
            trial,
            None,
            origin(serde_json::json!({ "push_to": ["mirror"], "limits": limits() })),
            serde_json::json!({}),
        )
    };
    trials(&Phase {
        name: "push-sftp",
        salt: 10,
        world: &world,
        prepare: &prepare_push,
    });
}

#[test]
fn kill_during_sftp_pull_then_restart_keeps_every_invariant() {
    let servers = Servers::start();
    let world = |rng: &mut StdRng, trial| {
        servers.world(
            rng,
            trial,
            None,
            origin(serde_json::json!({})),
            serde_json::json!({ "pull_from": ["daq"], "limits": limits() }),
        )
    };
    // The runs registered at the origin; then the mirror's whole cycle pulls them.
    let prepare = |w: &World| -> (&'static str, &'static [&'static str]) {
        w.cycle_ok("daq", &["--task", "register"]);
        ("mirror", &[])
    };
    trials(&Phase {
        name: "pull-sftp",
        salt: 11,
        world: &world,
        prepare: &prepare,
    });
}

#[test]
fn kill_during_verify_by_the_destination_agent_then_restart_keeps_every_invariant() {
    let servers = Servers::start();
    let world = |rng: &mut StdRng, trial| {
        servers.world(
            rng,
            trial,
            None,
            origin(serde_json::json!({ "push_to": ["mirror"], "limits": limits() })),
            serde_json::json!({ "verify": "agent" }),
        )
    };
    // Pushed, left `verifying` for the mirror's agent; then its verify task re-hashes them
    // (the task alone, so the kills spread over the re-hash rather than the whole cycle).
    let prepare = |w: &World| -> (&'static str, &'static [&'static str]) {
        w.copied("verifying");
        ("mirror", &["--task", "verify"])
    };
    trials(&Phase {
        name: "verify-agent-sftp",
        salt: 12,
        world: &world,
        prepare: &prepare,
    });
}

#[test]
fn kill_during_sftp_push_with_the_mongo_catalogue_keeps_every_invariant() {
    let mongo = MongoServer::shared().unwrap();
    let servers = Servers::start();
    let world = |rng: &mut StdRng, trial| {
        let db = unique_db_name("crash_sftp");
        let uri = match mongo.uri().split_once("/?") {
            Some((head, opts)) => format!("{head}/{db}?{opts}"),
            None => format!("{}/{db}", mongo.uri()),
        };
        servers.world(
            rng,
            trial,
            Some(uri),
            origin(serde_json::json!({ "push_to": ["mirror"], "limits": limits() })),
            serde_json::json!({}),
        )
    };
    trials(&Phase {
        name: "push-sftp-mongo",
        salt: 13,
        world: &world,
        prepare: &prepare_push,
    });
}

/// The checks can fail: a flipped byte in a `transferred` mirror copy, an origin file
/// deleted behind the catalogue's back and a `.part` left at the mirror are each reported.
#[test]
fn the_invariant_checks_catch_a_damaged_copy_a_lost_origin_file_and_a_part_file() {
    let servers = Servers::start();
    let w = servers.world(
        &mut rand::SeedableRng::seed_from_u64(5),
        Some(0),
        None,
        origin(serde_json::json!({ "push_to": ["mirror"] })),
        serde_json::json!({}),
    );
    w.copied("transferred");
    assert!(w.check_always().is_empty(), "{:?}", w.check_always());
    assert!(w.check_end().iter().any(|v| v.contains("not purged")));

    let damaged = w.root("mirror").join("Run000001/a.evio");
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&damaged, bytes).unwrap();
    std::fs::remove_file(w.root("daq").join("Run000001/small.evio")).unwrap();
    std::fs::write(w.root("mirror").join("Run000002/x.evio.part"), b"half").unwrap();

    let always = w.check_always();
    assert!(
        always
            .iter()
            .any(|v| v.contains("run 1@mirror: transferred but") && v.contains("a.evio")),
        "{always:?}"
    );
    assert!(
        always
            .iter()
            .any(|v| v.contains("run 1: origin files deleted without a verified mirror copy")),
        "{always:?}"
    );
    let end = w.check_end();
    assert!(
        end.iter().any(|v| v.contains(".part files left")),
        "{end:?}"
    );
    assert!(w.in_flight());
}
