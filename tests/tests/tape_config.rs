//! Tape settings in the site map: template placeholders checked at load time, the example
//! site maps in `site-configs/` load and build.

use std::path::Path;

use ferry::config::{LoadOptions, TapeKind};
use ferry::tape::{build, BuildContext, TapeError};
use serde_json::json;

mod tape_common;
use tape_common::tape_config;

fn error_text(entry: serde_json::Value) -> String {
    tape_config(entry).expect_err("site map error").to_string()
}

#[test]
fn an_unknown_placeholder_is_a_site_map_error_at_its_path() {
    let e = error_text(json!({
        "name": "jlab", "kind": "command",
        "put": ["jput", "{fiel}", "/mss/x/"],
        "stat": ["cat", "/mss/x/{file_name}"]
    }));
    assert!(e.contains("sites[1].tape[0].put[1]"), "{e}");
    assert!(e.contains("unknown placeholder {fiel}"), "{e}");
    assert!(e.contains("did you mean \"file\""), "{e}");
}

#[test]
fn placeholders_are_checked_per_operation() {
    // {dest} is where retrieve writes: meaningless in put.
    let e = error_text(json!({
        "name": "t", "kind": "command", "put": ["x", "{dest}"], "stat": ["y"]
    }));
    assert!(e.contains("put[1]") && e.contains("{dest}"), "{e}");
    // {md5} is not known when asking whether a file is stored.
    let e = error_text(json!({
        "name": "t", "kind": "command", "put": ["x"], "stat": ["y", "{md5}"]
    }));
    assert!(e.contains("stat[1]"), "{e}");
    let e = error_text(json!({
        "name": "t", "kind": "command", "put": ["x"], "output": "dsmcc"
    }));
    assert!(e.contains("did you mean \"dsmc\""), "{e}");
    let e = error_text(json!({
        "name": "t", "kind": "tar", "devices": ["/dev/nst0"], "labels": "/var/lib/l.json",
        "write": ["dd", "of={dev}"]
    }));
    assert!(e.contains("unknown placeholder {dev}"), "{e}");
    let e = error_text(json!({
        "name": "t", "kind": "tar", "devices": ["/dev/nst0"], "labels": "relative.json"
    }));
    assert!(e.contains("labels"), "{e}");
}

#[test]
fn changer_settings_are_checked_at_their_paths() {
    let tar = |changer: serde_json::Value| {
        json!({
            "name": "t", "kind": "tar", "devices": ["/dev/nst0", "/dev/nst1"],
            "labels": "/var/lib/l.json", "changer": changer
        })
    };
    let e = error_text(tar(json!({
        "device": "/dev/sg3", "slots": "1-10",
        "load": ["mtx", "-f", "{changer}", "load", "{slott}", "{drive}"]
    })));
    assert!(e.contains("sites[1].tape[0].changer.load[4]"), "{e}");
    assert!(e.contains("unknown placeholder {slott}"), "{e}");
    assert!(e.contains("did you mean \"slot\""), "{e}");
    // status knows only the changer.
    let e = error_text(tar(json!({
        "device": "/dev/sg3", "slots": [1, 2], "status": ["mtx", "-f", "{changer}", "{slot}"]
    })));
    assert!(e.contains("changer.status[3]"), "{e}");
    let e = error_text(tar(json!({ "device": "/dev/sg3", "slots": "10-1" })));
    assert!(
        e.contains("changer.slots") && e.contains("bad slot range"),
        "{e}"
    );
    let e = error_text(tar(json!({ "device": "/dev/sg3", "slots": [1, 1] })));
    assert!(e.contains("slot 1 is listed twice"), "{e}");
    let e = error_text(tar(
        json!({ "device": "/dev/sg3", "slots": [1], "drives": [0] }),
    ));
    assert!(
        e.contains("changer.drives") && e.contains("one per device"),
        "{e}"
    );
    let e = error_text(tar(json!({ "device": "/dev/sg3", "slot": [1] })));
    assert!(e.contains("unknown key \"slot\""), "{e}");
    assert!(e.contains("missing required key \"slots\""), "{e}");
    let cfg = tape_config(tar(
        json!({ "device": "/dev/sg3", "slots": "3-5", "drives": [2, 0] }),
    ))
    .unwrap();
    let TapeKind::Tar {
        changer: Some(c), ..
    } = &cfg.kind
    else {
        panic!("{cfg:?}")
    };
    assert_eq!(c.slots, [3, 4, 5]);
    assert_eq!(c.drives, [2, 0]);
    assert_eq!(
        c.load,
        ["mtx", "-f", "{changer}", "load", "{slot}", "{drive}"]
    );
}

#[test]
fn backend_settings_that_cannot_work_fail_at_build() {
    // The site map refuses these entries (`config validate` names their places); a
    // configuration built in code is refused by the backend itself, with the same words.
    let command = |stat: Option<&str>| ferry::config::TapeBackendConfig {
        name: "t".into(),
        kind: TapeKind::Command {
            gateway: None,
            put: vec!["x".into(), "{file}".into()],
            verify: None,
            retrieve: None,
            stat: stat.map(|s| vec!["y".to_string(), s.to_string()]),
            ok_exit_codes: vec![0],
            tape_path: None,
            stage: None,
            output: ferry::config::CommandOutput::Stub,
            timeout: std::time::Duration::from_secs(60),
        },
    };
    // No stat: a put could not be idempotent.
    assert!(tape_config(json!({ "name": "t", "kind": "command", "put": ["x"] })).is_err());
    let e = build(&command(None), &BuildContext::default()).expect_err("no stat");
    assert!(matches!(e, TapeError::Config { .. }), "{e:?}");
    assert!(e.to_string().contains("stat"), "{e}");
    // {file} outside put needs a stage directory.
    let e = build(&command(Some("{file}")), &BuildContext::default()).expect_err("file in stat");
    assert!(e.to_string().contains("stage"), "{e}");
    // A gateway the caller did not resolve.
    let cfg = tape_config(json!({
        "name": "t", "kind": "command", "gateway": "gw", "put": ["x"], "stat": ["y"]
    }))
    .unwrap();
    assert!(build(&cfg, &BuildContext::default()).is_err());
}

#[test]
fn example_tape_site_maps_load_and_build() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../site-configs");
    let mut seen = Vec::new();
    for name in [
        "jlab-tape.json",
        "tsm-tape.json",
        "hpss-tape.json",
        "tar-tape.json",
    ] {
        let loaded = ferry::config::load(&root.join(name), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for (_, t) in loaded.map.tape_backends() {
            let gateway = match &t.kind {
                TapeKind::Command {
                    gateway: Some(_), ..
                } => Some(ferry::transport::SshTarget::new(
                    "gateway.example",
                    22,
                    "ferry",
                )),
                _ => None,
            };
            build(t, &BuildContext { gateway }).unwrap_or_else(|e| panic!("{name}: {e}"));
            seen.push(t.kind.name());
        }
    }
    for kind in ["command", "tar"] {
        assert!(seen.contains(&kind), "{seen:?}");
    }
}
