//! A catalogue password must never appear in a log line, an error message or `--help`,
//! whichever way it reaches Ferry and whatever the log format.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

const SECRET: &str = "hunter2-Secret";

/// A one-site map whose data directory exists, so the agent gets as far as the catalogue.
fn site_map(dir: &std::path::Path) -> std::path::PathBuf {
    let data = dir.join("raw");
    std::fs::create_dir_all(&data).unwrap();
    let map = dir.join("site-map.json");
    let text = serde_json::json!({
        "version": 1,
        "sites": [{ "name": "daq", "hostname": "localhost", "method": "local",
                    "origin": true, "data_dirs": { "raw": data } }]
    });
    std::fs::write(&map, text.to_string()).unwrap();
    map
}

fn ferry(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    // Each test its own state directory: agents of parallel tests must not share a lock.
    cmd.env_remove("FERRY_CATALOG")
        .env("FERRY_CONFIG", site_map(dir))
        .env("FERRY_STATE_DIR", dir.join("state"))
        .env("FERRY_SITE", "daq");
    cmd
}

fn uri() -> String {
    format!("mongodb://ferry:{SECRET}@127.0.0.1:9/run?authSource=admin")
}

#[test]
fn password_in_catalog_flag_not_logged_text_or_json() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["text", "json"] {
        let out = ferry(dir.path())
            .args([
                "--once",
                "--log-level",
                "trace",
                "--log-format",
                format,
                "--catalog",
            ])
            .arg(uri())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !stderr.contains(SECRET),
            "{format}: password in stderr:\n{stderr}"
        );
        assert!(
            !stdout.contains(SECRET),
            "{format}: password in stdout:\n{stdout}"
        );
        // The URI itself is logged, redacted, so this test would see a leak.
        assert!(
            stderr.contains("ferry:****@127.0.0.1:9"),
            "{format}: {stderr}"
        );
    }
}

#[test]
fn password_in_env_not_logged_to_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ferry.log");
    let out = ferry(dir.path())
        .env("FERRY_CATALOG", uri())
        .args(["--once", "--log-level", "debug", "--log-file"])
        .arg(&log)
        .output()
        .unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("ferry:****@127.0.0.1:9"), "{logged}");
    assert!(!logged.contains(SECRET), "password in log file:\n{logged}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(SECRET));
}

#[test]
fn help_never_shows_catalog_env_value() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferry(dir.path())
        .env("FERRY_CATALOG", uri())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(SECRET));
}

#[test]
fn help_shows_cax_compatible_flags_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferry(dir.path()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--host",
        "--catalog",
        "--once",
        "--run",
        "--name",
        "--task",
        "--log-file",
        "--log-level",
        "--log-format",
        "--dry-run",
        "Exit codes:",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn bad_catalog_uri_is_usage_error_without_password() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferry(dir.path())
        .args(["--once", "--catalog", "postgres://u:hunter2-Secret@h/db"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("catalogue URI"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
}

/// Every character a URI reserves, and `%`.
const RESERVED: [char; 8] = ['/', '?', '#', '@', ':', '[', ']', '%'];

/// A password holding `c`, written plainly (refused before the driver sees it) and
/// percent-encoded (accepted; the catalogue at port 9 is unreachable).
fn reserved_uris(c: char) -> [String; 2] {
    let pw = format!("hunter2{c}Secret");
    let encoded: String =
        percent_encoding::utf8_percent_encode(&pw, percent_encoding::NON_ALPHANUMERIC).to_string();
    let opts = "authSource=admin&serverSelectionTimeoutMS=300&connectTimeoutMS=300";
    [
        format!("mongodb://ferry:{pw}@127.0.0.1:9/run?{opts}"),
        format!("mongodb://ferry:{encoded}@127.0.0.1:9/run?{opts}"),
    ]
}

fn assert_unprinted(what: &str, out: &std::process::Output) {
    for (name, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(text);
        assert!(
            !text.contains("hunter2") && !text.contains("Secret"),
            "{what}: password in {name}:\n{text}"
        );
    }
}

/// Regression: a password with `/` or `?` was printed in clear, in the error and in the
/// agent's start-up log line.
#[test]
fn a_password_with_any_reserved_character_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    for c in RESERVED {
        for (form, uri) in reserved_uris(c).into_iter().enumerate() {
            for args in [
                &["--once", "--log-level", "trace"][..],
                &["runs", "list"][..],
                &["runs", "show", "1"][..],
                &["check"][..],
            ] {
                let out = ferry(dir.path())
                    .args(args)
                    .args(["--catalog", &uri])
                    .output()
                    .unwrap();
                let what = format!("{args:?} with {c:?} ({})", ["plain", "encoded"][form]);
                assert_unprinted(&what, &out);
                let code = out.status.code();
                if args[0] == "check" {
                    assert_eq!(code, Some(3), "{what}: check is UNKNOWN");
                } else if form == 0 {
                    assert_eq!(
                        code,
                        Some(2),
                        "{what}: a plain reserved character is bad input"
                    );
                } else {
                    assert_eq!(code, Some(3), "{what}: unreachable");
                }
            }
        }
    }
}

/// The site map's URI with a password holding a reserved character, and a secret pasted
/// into `password_env`: `config validate` refuses both without printing them.
#[test]
fn config_validate_never_prints_a_password_or_a_pasted_secret() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("map.json");
    for c in RESERVED {
        for uri in reserved_uris(c) {
            for catalog in [
                serde_json::json!({ "uri": uri }),
                serde_json::json!({ "uri": "mongodb://ferry@db/", "password_env": format!("hunter2{c}Secret") }),
                serde_json::json!({ "uri": "mongodb://ferry@db/", "password_file": format!("hunter2{c}Secret") }),
            ] {
                let text = serde_json::json!({ "version": 1, "catalog": catalog,
                    "sites": [{ "name": "daq", "origin": true, "data_dirs": { "raw": "/r" } }] });
                std::fs::write(&map, text.to_string()).unwrap();
                for json in [false, true] {
                    let mut cmd = ferry(dir.path());
                    cmd.args(["config", "validate", "--config"]).arg(&map);
                    if json {
                        cmd.arg("--json");
                    }
                    let out = cmd.output().unwrap();
                    assert_eq!(out.status.code(), Some(2), "{catalog}");
                    assert_unprinted(&format!("config validate {catalog}"), &out);
                }
            }
        }
    }
}

/// The embedded catalogue named by a file that is not one: exit 2 in every command (check:
/// UNKNOWN), whatever the command.
#[test]
fn a_file_that_is_no_catalogue_is_bad_input_in_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "this is not an SQLite file, just some text to be safe\n".repeat(100),
    )
    .unwrap();
    let not_dir = text.join("catalog.sqlite");
    for catalog in [
        format!("sqlite:{}", text.display()),
        format!("sqlite:{}", dir.path().display()),
        format!("sqlite:{}", not_dir.display()),
    ] {
        for (args, want) in [
            (&["--once"][..], 2),
            (&["runs", "list"][..], 2),
            (&["runs", "show", "1"][..], 2),
            (&["recall", "--run", "1"][..], 2),
            (&["check"][..], 3),
        ] {
            let out = ferry(dir.path())
                .args(args)
                .args(["--catalog", &catalog])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(want),
                "{args:?} on {catalog}:\n{stdout}{stderr}"
            );
            if args[0] == "check" {
                assert!(stdout.starts_with("FERRY UNKNOWN - "), "{stdout}");
            } else {
                assert!(stderr.contains("catalogue sqlite:"), "{args:?}: {stderr}");
            }
        }
    }
    assert_eq!(
        std::fs::read_to_string(&text).unwrap().len(),
        5400,
        "the file was changed"
    );
}

/// An embedded catalogue locked by another process past the busy timeout: exit 3.
#[test]
fn a_locked_embedded_catalogue_is_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("catalog.sqlite");
    let out = ferry(dir.path())
        .args(["runs", "list", "--catalog"])
        .arg(format!("sqlite:{}", db.display()))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Create it, then hold an exclusive lock while ferry tries.
    let out = ferry(dir.path())
        .args(["--once", "--task", "register", "--catalog"])
        .arg(format!("sqlite:{}", db.display()))
        .output()
        .unwrap();
    assert!(db.exists(), "{}", String::from_utf8_lossy(&out.stderr));
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
        .unwrap();
    let out = ferry(dir.path())
        .args(["runs", "list", "--catalog"])
        .arg(format!("sqlite:{}", db.display()))
        .output()
        .unwrap();
    drop(conn);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
