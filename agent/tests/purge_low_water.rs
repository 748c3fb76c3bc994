//! Purge down to the low-water mark, on a real small file system: the DAQ's data directory
//! is a 10 MiB tmpfs (mounted in a user and mount namespace, `unshare -rm`, so no
//! privileges are needed) holding eight 1 MiB runs, 81 % full. With `high_water_mark: 70`
//! and `low_water_mark: 45`, one `ferry --once --task purge` removes the four oldest runs
//! (by registration, not by number), reading the disk again after each, and keeps the
//! rest once the disk is at 41 %. Before, every eligible copy went.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use ferry::catalog::embedded::EmbeddedCatalog;
use ferry::catalog::{Catalog, RunKey};

const SCRIPT: &str = r#"
set -eu
mount -t tmpfs -o size=10m ferry-test "$DAQ"
mkrun() {
    d="$DAQ/Run$(printf %06d "$1")"
    mkdir -p "$d/sub"
    head -c 1048576 /dev/urandom > "$d/a.evio"
    echo "run $1" > "$d/sub/b.evio"
    : > "$d/RUN_COMPLETE"
}
ferry() { "$FERRY" --config "$MAP" --once "$@"; }
# Runs 5-8 are registered first: they are the oldest.
for n in 5 6 7 8; do mkrun "$n"; done
ferry --host daq --task register
sleep 0.1
for n in 1 2 3 4; do mkrun "$n"; done
ferry --host daq --task register
ferry --host daq --task push
sleep 1.2
df -P "$DAQ" | tail -1
ferry --host daq --task purge
echo "purge exit $?"
df -P "$DAQ" | tail -1
"#;

#[tokio::test]
async fn purge_stops_at_the_low_water_mark_oldest_runs_first() {
    let dir = tempfile::tempdir().unwrap();
    for d in ["daq/raw", "mirror/raw", "state"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let catalog = dir.path().join("catalog.sqlite");
    let map = serde_json::json!({
        "version": 1,
        "catalog": { "uri": format!("sqlite:{}", catalog.display()) },
        "sites": [
            { "name": "daq", "method": "local", "origin": true,
              "data_dirs": { "raw": dir.path().join("daq/raw") },
              "layout": "Run{number:06}", "completion": { "marker": "RUN_COMPLETE" },
              "push_to": ["mirror"],
              "purge": { "enabled": true, "min_copies": 1, "retention": "1s",
                         "high_water_mark": 70, "low_water_mark": 45 } },
            { "name": "mirror", "method": "local",
              "data_dirs": { "raw": dir.path().join("mirror/raw") },
              "layout": "Run{number:06}" }
        ]
    });
    let map_path = dir.path().join("map.json");
    std::fs::write(&map_path, map.to_string()).unwrap();
    let out = Command::new("unshare")
        .args(["-rm", "sh", "-c", SCRIPT])
        .env("DAQ", dir.path().join("daq/raw"))
        .env("MAP", &map_path)
        .env("FERRY", env!("CARGO_BIN_EXE_ferry"))
        .env("FERRY_STATE_DIR", dir.path().join("state"))
        .env_remove("FERRY_CATALOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = format!(
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(stdout.contains("purge exit 0"), "{text}");

    let c = EmbeddedCatalog::open(&catalog).await.unwrap();
    let mut removed = Vec::new();
    for n in 1..=8 {
        let run = c.get_run(&RunKey::new("tpc", n)).await.unwrap().unwrap();
        assert!(run.copy("mirror", "raw").is_some(), "run {n}: {text}");
        if run.copy("daq", "raw").is_none() {
            removed.push(n);
        }
    }
    assert_eq!(removed, vec![5, 6, 7, 8], "{text}");
    assert!(
        stdout.contains("at or below the low-water mark 45%"),
        "the rest is kept with the reason: {text}"
    );
    // df's last line: the disk ends at or below the low-water mark.
    let used: Vec<u32> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4)?.strip_suffix('%')?.parse().ok())
        .collect();
    assert_eq!(used.len(), 2, "{text}");
    assert!(used[0] > 70 && used[1] <= 45, "{used:?}: {text}");
}
