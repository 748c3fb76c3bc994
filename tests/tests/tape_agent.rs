//! The agent's `tape` task as operators run it: `ferry --once --task register`, then
//! `ferry --once --task tape` at a DAQ site with a `directory` backend, a two-drive `tar`
//! backend (shims) and a JLab `command` backend whose `jput` fails. The catalogue is the
//! embedded one, read back with `ferry runs list --json`.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

mod tape_common;
use tape_common::{tar_entry, Lab};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry_under_test");

fn ferry(lab: &Lab, args: &[&str]) -> Output {
    Command::new(FERRY)
        .env_remove("FERRY_CATALOG")
        .env("FERRY_STATE_DIR", lab.path().join("state"))
        .arg("--config")
        .arg(lab.path().join("map.json"))
        .args(["--host", "daq"])
        .args(args)
        .output()
        .expect("run ferry")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn runs(lab: &Lab) -> Value {
    let out = Command::new(FERRY)
        .args(["runs", "list", "--json", "--catalog"])
        .arg(format!(
            "sqlite:{}",
            lab.path().join("catalog.sqlite").display()
        ))
        .output()
        .expect("runs list");
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("json")
}

fn copy<'a>(run: &'a Value, host: &str) -> Option<&'a Value> {
    run["data"].as_array()?.iter().find(|c| c["host"] == host)
}

fn write_run(dir: &Path) {
    for (i, size) in [300_000usize, 10, 0].iter().enumerate() {
        let f = dir.join(format!("sub dir/{i:03}.evio"));
        std::fs::create_dir_all(f.parent().expect("parent")).expect("test setup");
        let bytes: Vec<u8> = (0..*size).map(|j| (j * 31 + i * 7) as u8).collect();
        std::fs::write(f, bytes).expect("test setup");
    }
    std::fs::write(dir.join("RUN_COMPLETE"), b"").expect("test setup");
}

#[test]
fn tape_task_backs_up_verifies_and_records_and_a_failing_backend_records_an_error() {
    let lab = Lab::new();
    for d in ["state", "tape"] {
        std::fs::create_dir_all(lab.path().join(d)).expect("test setup");
    }
    let raw = lab.path().join("daq/raw");
    write_run(&raw.join("Run000007"));
    std::fs::write(
        lab.store().join("jput-fail"),
        "jput: tape library offline\n",
    )
    .expect("setup");
    let mss = lab.path().join("mss").display().to_string();
    let map = json!({
        "version": 1,
        "catalog": { "uri": format!("sqlite:{}", lab.path().join("catalog.sqlite").display()) },
        "sites": [{
            "name": "daq", "method": "local", "origin": true,
            "data_dirs": { "raw": raw },
            "layout": "Run{number:06}", "completion": { "marker": "RUN_COMPLETE" },
            "tape": [
                { "name": "dir-tape", "kind": "directory", "path": lab.path().join("tape") },
                tar_entry(&lab, 2),
                { "name": "jlab-mss", "kind": "command",
                  "tape_path": format!("{mss}/Run{{number:06}}/{{path}}"),
                  "put": [lab.bin("jput"), "{file}", "{tape_dir}/"],
                  "stat": ["cat", "{tape_path}"] }
            ]
        }]
    });
    std::fs::write(lab.path().join("map.json"), map.to_string()).expect("test setup");

    let out = ferry(&lab, &["--once", "--task", "register"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = ferry(&lab, &["--once", "--task", "tape"]);
    assert!(
        !out.status.success(),
        "the jput failure is reported: {}",
        text(&out)
    );
    // The report on stdout names the failure, with the backend's own words.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("tape library offline"),
        "{}",
        text(&out)
    );

    let all = runs(&lab);
    let run = &all[0];
    let digest = run["digest"].as_str().expect("digest");
    for host in ["dir-tape", "lto"] {
        let c = copy(run, host).unwrap_or_else(|| panic!("no {host} copy: {run:#}"));
        assert_eq!(c["protocol"], "tape", "{c:#}");
        assert_eq!(c["status"], "transferred", "{c:#}");
        assert_eq!(c["checksum"], digest, "{c:#}");
        assert_eq!(c["location"], format!("{host}:Run000007/"), "{c:#}");
    }
    let failed = copy(run, "jlab-mss").expect("jlab copy");
    assert_eq!(failed["status"], "error", "{failed:#}");
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("tape library offline"),
        "{failed:#}"
    );
    // The files really are on both tapes of the tar backend and in the directory tree.
    assert!(lab.path().join("tape/Run000007/sub dir/000.evio").exists());
    assert!(lab.path().join("dev/nst1/file.1").exists());

    // A second cycle leaves recorded copies alone.
    std::fs::remove_file(lab.store().join("jput-fail")).expect("setup");
    let out = ferry(&lab, &["--once", "--task", "tape"]);
    let again = runs(&lab);
    assert_eq!(
        copy(&again[0], "dir-tape").expect("copy")["updated_time"],
        copy(run, "dir-tape").expect("copy")["updated_time"],
        "{}",
        text(&out)
    );
}

/// Ages a tape copy's verification by `days` through the catalogue's own update.
fn age_tape_copy(lab: &Lab, number: i64, host: &str, days: i64) {
    use ferry::catalog::{Catalog, CopyRef, CopyStatus, RunKey};
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let c = ferry::catalog::embedded::EmbeddedCatalog::open(&lab.path().join("catalog.sqlite"))
            .await
            .expect("catalogue");
        let key = RunKey::new("tpc", number);
        let run = c.get_run(&key).await.expect("read").expect("run");
        let at = bson::DateTime::from_millis(
            bson::DateTime::now().timestamp_millis() - days * 86_400_000,
        );
        let cas = c
            .record_checksum(
                &CopyRef::new(key, host, "raw"),
                CopyStatus::Transferred,
                None,
                run.digest.as_deref().expect("digest"),
                at,
            )
            .await
            .expect("update");
        assert_eq!(cas, ferry::catalog::Cas::Done);
    });
}

/// A tape copy verified longer ago than the purge's `max_verify_age` no longer protects
/// its run; the tape task's schedule re-verifies it (stat of every file, then the
/// backend's sample read-back) and the run can then be purged. A tape copy whose files
/// are gone from the tape side goes to `error` instead.
#[test]
fn a_tape_copy_older_than_max_verify_age_is_reverified_and_the_run_can_then_be_purged() {
    let lab = Lab::new();
    for d in ["state", "tape"] {
        std::fs::create_dir_all(lab.path().join(d)).expect("test setup");
    }
    let raw = lab.path().join("daq/raw");
    write_run(&raw.join("Run000007"));
    write_run(&raw.join("Run000008"));
    let map = json!({
        "version": 1,
        "catalog": { "uri": format!("sqlite:{}", lab.path().join("catalog.sqlite").display()) },
        "sites": [{
            "name": "daq", "method": "local", "origin": true,
            "data_dirs": { "raw": raw },
            "layout": "Run{number:06}", "completion": { "marker": "RUN_COMPLETE" },
            "tape": [
                { "name": "dir-tape", "kind": "directory", "path": lab.path().join("tape") }
            ],
            "purge": { "enabled": true, "min_copies": 1, "min_tape_copies": 1,
                       "max_verify_age": "1h", "retention": "1s", "high_water_mark": 100 }
        }]
    });
    std::fs::write(lab.path().join("map.json"), map.to_string()).expect("test setup");
    let out = ferry(&lab, &["--once", "--task", "register"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = ferry(&lab, &["--once", "--task", "tape"]);
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(std::time::Duration::from_millis(1100));

    // Verified two days ago: over max_verify_age, the purge keeps the run.
    age_tape_copy(&lab, 7, "dir-tape", 2);
    age_tape_copy(&lab, 8, "dir-tape", 2);
    let out = ferry(&lab, &["--once", "--task", "purge", "--run", "7"]);
    let kept = String::from_utf8_lossy(&out.stdout).to_string() + &text(&out);
    assert!(
        kept.contains("0 verified copies elsewhere within 1h"),
        "{kept}"
    );
    assert!(raw.join("Run000007/sub dir/000.evio").exists());

    // Run 8's files are gone from the tape side.
    std::fs::remove_dir_all(lab.path().join("tape/Run000008")).expect("setup");
    let out = ferry(&lab, &["--once", "--task", "tape"]);
    assert!(
        !out.status.success(),
        "the lost tape copy is reported: {}",
        text(&out)
    );
    let all = runs(&lab);
    let by = |n: i64| {
        all.as_array()
            .expect("list")
            .iter()
            .find(|r| r["number"] == n)
            .unwrap_or_else(|| panic!("run {n}: {all:#}"))
            .clone()
    };
    let good = by(7);
    let tape7 = copy(&good, "dir-tape").expect("tape copy");
    assert_eq!(tape7["status"], "transferred", "{tape7:#}");
    let lost = by(8);
    let tape8 = copy(&lost, "dir-tape").expect("tape copy");
    assert_eq!(tape8["status"], "error", "{tape8:#}");
    assert!(
        tape8["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("no longer on tape"),
        "{tape8:#}"
    );

    // Fresh again: the purge now counts the tape copy.
    let out = ferry(&lab, &["--once", "--task", "purge", "--run", "7"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !raw.join("Run000007/sub dir/000.evio").exists(),
        "{}",
        text(&out)
    );
    let after = runs(&lab);
    let seven = after
        .as_array()
        .expect("list")
        .iter()
        .find(|r| r["number"] == 7)
        .expect("run 7")
        .clone();
    assert!(copy(&seven, "daq").is_none(), "{seven:#}");
}
