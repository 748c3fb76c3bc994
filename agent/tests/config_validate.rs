//! `ferry config validate` as users run it: the real binary on the example site maps, the
//! six legacy cax.json files, and a table of bad site maps. Every rejection must exit 2 and
//! name the file, the place (line:column and/or JSON path) and the specific problem.

// Helpers outside #[test] functions may unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `ferry config validate --config FILE [extra…]` with HOME in `home` (so the test
/// never reads the real user's ~/.ssh/config) and FERRY_CONFIG unset.
fn validate(file: &Path, extra: &[&str], home: &Path) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["config", "validate", "--config"])
        .arg(file)
        .args(extra)
        .env("HOME", home)
        .env_remove("FERRY_CONFIG")
        .env_remove("FERRY_SITE")
        .output()
        .expect("run ferry");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json") && !p.ends_with("site-map.schema.json")
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_site_map_validates() {
    let home = tempfile::tempdir().unwrap();
    let files = json_files(&repo().join("site-configs"));
    assert!(files.len() >= 3, "examples missing: {files:?}");
    for f in files {
        let o = validate(&f, &[], home.path());
        assert_eq!(o.code, 0, "{}:\n{}{}", f.display(), o.stdout, o.stderr);
        assert!(
            o.stdout.contains("format") || o.stdout.contains("site map:"),
            "{}",
            o.stdout
        );
        assert!(o.stdout.contains("links ("), "{}", o.stdout);
        assert!(o.stdout.contains("tape backends ("), "{}", o.stdout);
        // Every tape backend's entry holds what its every-cycle tasks need (an error
        // would have failed above), and the examples configure read-back too.
        assert!(
            !o.stdout.contains("notes ("),
            "{}:\n{}",
            f.display(),
            o.stdout
        );
    }
}

#[test]
fn all_six_legacy_cax_files_load() {
    let home = tempfile::tempdir().unwrap();
    let files = json_files(&repo().join("tests/fixtures/legacy-cax"));
    assert_eq!(files.len(), 6, "{files:?}");
    for f in files {
        let o = validate(&f, &["--json"], home.path());
        assert_eq!(o.code, 0, "{}:\n{}{}", f.display(), o.stdout, o.stderr);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["format"], "legacy-cax");
        assert!(
            v["sites"].as_array().unwrap().len() >= 12,
            "{}",
            f.display()
        );
    }
}

#[test]
fn legacy_duplicated_key_warns_naming_it() {
    let home = tempfile::tempdir().unwrap();
    let f = repo().join("tests/fixtures/legacy-cax/cax_tsm_upload.json");
    let o = validate(&f, &[], home.path());
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("cax_tsm_upload.json:47:5: warning: [3].download_options: duplicate key \"download_options\""),
        "{}",
        o.stdout
    );
}

/// Writes `text` as `name` in a fresh directory; returns (dir guard, file path).
fn write_map(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn legacy_last_duplicate_wins_and_null_lists_load() {
    let text = r#"[
  {"name": "a", "method": "scp", "hostname": "a.example", "dir_raw": "/d/raw",
   "upload_options": ["b"], "download_options": null, "upload_options": ["c"]},
  {"name": "b", "method": "rsync", "hostname": "b.example", "dir_raw": "/d/raw",
   "upload_options": null, "download_options": null, "dir_processed": null},
  {"name": "c", "method": "scp", "hostname": "c.example", "dir_raw": "/d/raw",
   "upload_options": null, "download_options": null}
]"#;
    let (dir, path) = write_map("cax.json", text);
    let o = validate(&path, &["--json"], dir.path());
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let links = v["links"].as_array().unwrap();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0]["to"], "c", "the last upload_options must win");
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("duplicate key \\\"upload_options\\\""),
        "{warnings}"
    );
}

#[test]
fn legacy_gfal_copy_site_warns_and_is_no_peer() {
    let text = r#"[
  {"name": "a", "method": "scp", "hostname": "a.example", "dir_raw": "/d/raw"},
  {"name": "srm", "method": "gfal-copy", "hostname": "srm://x", "dir_raw": "/grid/raw", "username": null}
]"#;
    let (dir, path) = write_map("cax.json", text);
    let o = validate(&path, &[], dir.path());
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains(
            "cax.json:3:29: warning: [1].method: method \"gfal-copy\" is not implemented"
        ),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("legacy-only"), "{}", o.stdout);
}

/// A valid Ferry site map the bad cases below are variations of.
const GOOD: &str = r#"{
  "version": 1,
  "catalog": {"uri": "mongodb://ferry@db.example:27017/", "password_env": "FERRY_DB_PW"},
  "sites": [
    {"name": "daq", "hostname": "daq.example", "origin": true,
     "data_dirs": {"raw": "/data/raw"}, "push_to": ["mirror"]},
    {"name": "mirror", "hostname": "mirror.example", "data_dirs": {"raw": "/data/raw"}}
  ]
}"#;

#[test]
fn the_base_of_the_bad_cases_is_valid() {
    let (dir, path) = write_map("site-map.json", GOOD);
    let o = validate(&path, &[], dir.path());
    assert_eq!(o.code, 0, "{}", o.stderr);
}

/// One bad site map: its text, then strings stderr must contain (the place and the
/// problem). Every error line must also start with `FILE:LINE:COL: error: `.
struct Bad {
    name: &'static str,
    text: String,
    expect: &'static [&'static str],
}

fn bad(name: &'static str, text: impl Into<String>, expect: &'static [&'static str]) -> Bad {
    Bad {
        name,
        text: text.into(),
        expect,
    }
}

/// GOOD with one substring replaced (the replacement must apply).
fn good_with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from:?} not in GOOD");
    GOOD.replacen(from, to, 1)
}

fn bad_cases() -> Vec<Bad> {
    vec![
        bad("trailing comma", good_with("\"/data/raw\"}}\n", "\"/data/raw\"}},\n"), &[":8:3: error: JSON syntax error: trailing comma before `]`"]),
        bad("truncated file", &GOOD[..120], &[":4:13: error: JSON syntax error: unexpected end of file", "truncated"]),
        bad("missing comma", good_with("\"version\": 1,", "\"version\": 1"), &[":3:3: error: JSON syntax error: expected `,` or `}` in an object, found `\"` (missing comma?)"]),
        bad("top level is a string", "\"sites\"", &[":1:1: error: expected a JSON object (Ferry's site map) or an array (legacy cax.json), found a string"]),
        bad("wrong type for sites", "{\"version\": 1, \"sites\": {}}", &[":1:25: error: sites: expected an array of sites, found an object"]),
        bad("wrong type for a boolean", good_with("\"origin\": true", "\"origin\": \"yes\""), &[":5:58: error: sites[0].origin: expected true or false, found a string"]),
        bad("unknown key with did-you-mean", good_with("\"hostname\": \"mirror.example\"", "\"hostnme\": \"mirror.example\""), &[":7:24: error: sites[1].hostnme: unknown key \"hostnme\" (did you mean \"hostname\"?)"]),
        bad("missing required key", good_with("\"name\": \"mirror\", ", ""), &[":7:5: error: sites[1]: missing required key \"name\""]),
        bad("missing version", good_with("\"version\": 1,", ""), &[":1:1: error: version: missing required key \"version\" (add \"version\": 1)"]),
        bad("unsupported version", good_with("\"version\": 1,", "\"version\": 2,"), &[":2:14: error: version: unsupported format version 2"]),
        bad("duplicate key", good_with("\"name\": \"mirror\",", "\"name\": \"mirror\", \"name\": \"mirror\","), &[":7:24: error: sites[1].name: duplicate key \"name\" (first at line 7)"]),
        bad("duplicate site names", good_with("\"name\": \"mirror\"", "\"name\": \"daq\""), &[":7:14: error: sites[1].name: duplicate site name \"daq\" (first defined at sites[0].name, line 5)"]),
        bad("unknown site in push_to", good_with("\"push_to\": [\"mirror\"]", "\"push_to\": [\"mirorr\"]"), &[":6:53: error: sites[0].push_to[0]: unknown site \"mirorr\" (did you mean \"mirror\"?)"]),
        bad("unknown site in pull_from", good_with("\"data_dirs\": {\"raw\": \"/data/raw\"}}\n", "\"data_dirs\": {\"raw\": \"/data/raw\"}, \"pull_from\": [\"dq\"]}\n"), &["sites[1].pull_from[0]: unknown site \"dq\" (did you mean \"daq\"?)"]),
        bad("site pushing to itself", good_with("\"push_to\": [\"mirror\"]", "\"push_to\": [\"daq\"]"), &[":6:53: error: sites[0].push_to[0]: site \"daq\" cannot push to itself"]),
        bad("relative data directory", good_with("{\"raw\": \"/data/raw\"}, \"push_to\"", "{\"raw\": \"data/raw\"}, \"push_to\""), &[":6:27: error: sites[0].data_dirs.raw: data directory is relative; it must be an absolute path; the value given is not shown"]),
        bad("port 0", good_with("\"hostname\": \"mirror.example\"", "\"hostname\": \"mirror.example\", \"port\": 0"), &["sites[1].port: 0 is out of range; expected 1 to 65535"]),
        bad("port 70000", good_with("\"hostname\": \"mirror.example\"", "\"hostname\": \"mirror.example\", \"port\": 70000"), &[":7:62: error: sites[1].port: 70000 is out of range; expected 1 to 65535"]),
        bad("port as a string", good_with("\"hostname\": \"mirror.example\"", "\"hostname\": \"mirror.example\", \"port\": \"22\""), &["sites[1].port: expected an integer from 1 to 65535, found a string (write 22 without quotes)"]),
        bad("empty site name", good_with("\"name\": \"mirror\"", "\"name\": \"\""), &[":7:14: error: sites[1].name: site name must not be empty"]),
        bad("bad characters in site name", good_with("\"name\": \"mirror\"", "\"name\": \"mirror site!\""), &[":7:14: error: sites[1].name: bad site name \"mirror site!\""]),
        bad("unknown method", good_with("\"hostname\": \"mirror.example\"", "\"hostname\": \"mirror.example\", \"method\": \"scp\""), &["sites[1].method: unknown transfer method \"scp\"; Ferry implements \"sftp\" and \"local\""]),
        bad("unknown verification", good_with("\"hostname\": \"mirror.example\"", "\"hostname\": \"mirror.example\", \"verify\": \"readback\""), &["sites[1].verify: unknown verification \"readback\"", "did you mean \"read-back\"?"]),
        bad("verification command empty", good_with("\"hostname\": \"mirror.example\"", "\"hostname\": \"mirror.example\", \"verify\": {\"command\": []}"), &["sites[1].verify.command: an empty command"]),
        bad("verification object without command", good_with("\"hostname\": \"mirror.example\"", "\"hostname\": \"mirror.example\", \"verify\": {\"cmd\": [\"sha256sum\"]}"), &["sites[1].verify.cmd: unknown key"]),
        bad("bad layout placeholder", good_with("\"origin\": true", "\"origin\": true, \"layout\": \"Run{runnumber:06}\""), &["sites[0].layout: layout template \"Run{runnumber:06}\": unknown placeholder {runnumber}"]),
        bad("bad layout width", good_with("\"origin\": true", "\"origin\": true, \"layout\": \"Run{number:6}\""), &["sites[0].layout: layout template \"Run{number:6}\": bad width `6`"]),
        bad("bad duration", good_with("\"origin\": true", "\"origin\": true, \"completion\": {\"quiet_period\": \"10 minutez\"}"), &["sites[0].completion.quiet_period: bad duration \"10 minutez\""]),
        bad("duration as a number", good_with("\"origin\": true", "\"origin\": true, \"purge\": {\"retention\": 600}"), &["sites[0].purge.retention: expected a duration string, found a number"]),
        bad("bad bandwidth", good_with("\"origin\": true", "\"origin\": true, \"limits\": {\"bandwidth_per_link\": \"fast\"}"), &["sites[0].limits.bandwidth_per_link: bad bandwidth \"fast\": missing \"/s\""]),
        bad("bad bandwidth unit", good_with("\"origin\": true", "\"origin\": true, \"limits\": {\"bandwidth_per_link\": \"50XB/s\"}"), &["sites[0].limits.bandwidth_per_link: bad bandwidth \"50XB/s\""]),
        bad("min_copies 0", good_with("\"origin\": true", "\"origin\": true, \"purge\": {\"min_copies\": 0}"), &["sites[0].purge.min_copies: min_copies 0 would allow deleting the last copy"]),
        bad("min_tape_copies above min_copies", good_with("\"origin\": true", "\"origin\": true, \"purge\": {\"min_copies\": 1, \"min_tape_copies\": 2}"), &["sites[0].purge.min_tape_copies: min_tape_copies 2 is more than min_copies 1"]),
        bad("high-water mark over 100", good_with("\"origin\": true", "\"origin\": true, \"purge\": {\"high_water_mark\": 101}"), &["sites[0].purge.high_water_mark: 101 is out of range; expected 1 to 100"]),
        bad("low-water mark above the high-water mark", good_with("\"origin\": true", "\"origin\": true, \"purge\": {\"high_water_mark\": 80, \"low_water_mark\": 85}"), &["sites[0].purge.low_water_mark: low_water_mark 85 is above high_water_mark 80"]),
        bad("low-water mark over 100", good_with("\"origin\": true", "\"origin\": true, \"purge\": {\"low_water_mark\": 101}"), &["sites[0].purge.low_water_mark: 101 is out of range; expected 0 to 100"]),
        bad("password in catalogue URI", good_with("mongodb://ferry@", "mongodb://ferry:hunter2@"), &[":3:22: error: catalog.uri: the catalogue URI holds a password"]),
        bad("unknown catalogue scheme", good_with("mongodb://ferry@db.example:27017/", "postgres://db.example/run"), &[":3:22: error: catalog.uri: unknown catalogue scheme \"postgres\""]),
        bad("both password sources", good_with("\"password_env\": \"FERRY_DB_PW\"", "\"password_env\": \"FERRY_DB_PW\", \"password_file\": \"/etc/pw\""), &[":3:14: error: catalog: give password_env or password_file, not both"]),
        bad("duplicate tape backend names",
            good_with("\"name\": \"mirror\",", "\"name\": \"mirror\", \"tape\": [{\"name\": \"t1\", \"kind\": \"directory\", \"path\": \"/tape\"}, {\"name\": \"t1\", \"kind\": \"tar\", \"devices\": [\"/dev/nst0\"]}],"),
            &["sites[1].tape[1].name: duplicate tape backend name \"t1\" (first at sites[1].tape[0].name)"]),
        bad(
            "more tar copies than drives",
            good_with("\"name\": \"mirror\",", "\"name\": \"mirror\", \"tape\": [{\"name\": \"t1\", \"kind\": \"tar\", \"devices\": [\"/dev/nst0\"], \"copies\": 2}],"),
            &["sites[1].tape[0].copies: 2 copies need 2 drives, but only 1 device(s) are listed"],
        ),
        bad("unknown tape kind", good_with("\"name\": \"mirror\",", "\"name\": \"mirror\", \"tape\": [{\"name\": \"t1\", \"kind\": \"tsm\"}],"), &["sites[1].tape[0].kind: unknown tape backend kind \"tsm\"; known: directory, command, tar"]),
        bad("tape backend missing its required key", good_with("\"name\": \"mirror\",", "\"name\": \"mirror\", \"tape\": [{\"name\": \"t1\", \"kind\": \"command\"}],"), &["sites[1].tape[0]: missing required key \"put\""]),
        bad("unknown tape gateway", good_with("\"name\": \"mirror\",", "\"name\": \"mirror\", \"tape\": [{\"name\": \"t1\", \"kind\": \"command\", \"gateway\": \"ifram\", \"put\": [\"jput\", \"{file}\"]}],"), &["sites[1].tape[0].gateway: unknown gateway site \"ifram\""]),
        bad("sftp site linked to a local site", good_with("\"hostname\": \"mirror.example\"", "\"method\": \"local\""), &[":6:53: error: sites[0].push_to[0]: site \"mirror\" uses method \"local\" (same machine)"]),
        bad("host name with a user", good_with("\"hostname\": \"mirror.example\"", "\"hostname\": \"xfer@mirror.example\""), &[":7:36: error: sites[1].hostname: bad host name \"xfer@mirror.example\": put the user in \"username\""]),
        bad("host-key policy unknown", good_with("\"hostname\": \"mirror.example\"", "\"hostname\": \"mirror.example\", \"strict_host_key_checking\": \"strict\""), &["sites[1].strict_host_key_checking: unknown host-key policy \"strict\""]),
        bad("legacy relative data directory",
            "[\n {\"name\": \"a\", \"method\": \"rsync\", \"hostname\": \"a.example\", \"dir_raw\": \"raw/\"}\n]",
            &[":2:71: error: [0].dir_raw: data directory is relative"]),
        bad("data directory with ..", good_with("{\"raw\": \"/data/raw\"}, \"push_to\"", "{\"raw\": \"/data/../etc\"}, \"push_to\""), &[":6:27: error: sites[0].data_dirs.raw: data directory has a `..` component"]),
        bad("data directory with a NUL byte", good_with("{\"raw\": \"/data/raw\"}, \"push_to\"", "{\"raw\": \"/data\\u0000raw\"}, \"push_to\""), &[":6:27: error: sites[0].data_dirs.raw: data directory contains a NUL byte"]),
        bad("link root with a newline", good_with("\"origin\": true", "\"origin\": true, \"link_roots\": [\"/part\\n1\"]"), &["sites[0].link_roots[0]: link root contains a control character"]),
        bad("relative identity file", good_with("\"hostname\": \"mirror.example\"", "\"hostname\": \"mirror.example\", \"identity_file\": \"id_ed25519\""), &["sites[1].identity_file: identity file is relative"]),
        bad("secret pasted into password_env", good_with("\"password_env\": \"FERRY_DB_PW\"", "\"password_env\": \"hunter2-Secret\""), &[":3:75: error: catalog.password_env: password_env must name an environment variable ([A-Za-z_][A-Za-z0-9_]*); the value given is not shown"]),
        bad("two sites on one host share a data directory", good_with("\"hostname\": \"mirror.example\"", "\"hostname\": \"daq.example\""), &[":7:72: error: sites[1].data_dirs.raw: data directory /data/raw of site \"mirror\", data type \"raw\", is the same directory as /data/raw (data type \"raw\" of site \"daq\" (on the same machine), at sites[0].data_dirs.raw, line 6)"]),
        bad("one site's data types nested", good_with("{\"raw\": \"/data/raw\"}, \"push_to\"", "{\"raw\": \"/data\", \"processed\": \"/data/processed\"}, \"push_to\""), &["sites[0].data_dirs.processed: data directory /data/processed of site \"daq\", data type \"processed\", is inside /data (data type \"raw\" of the same site"]),
        bad("legacy unknown method", "[\n {\"name\": \"a\", \"method\": \"ftp\", \"hostname\": \"a\"}\n]", &[":2:26: error: [0].method: unknown cax method \"ftp\""]),
    ]
}

/// Checks a rejection: exit 2, every error line starts with `FILE:LINE:COL: error: `, and
/// stderr holds each expected string. Returns what is wrong.
fn rejection_problems(case_name: &str, path: &Path, o: &Outcome, expect: &[&str]) -> Vec<String> {
    let file = path.display().to_string();
    let mut problems = Vec::new();
    if o.code != 2 {
        problems.push(format!("{case_name}: exit code {} (want 2)", o.code));
    }
    let error_lines: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.contains(": error: "))
        .collect();
    if error_lines.is_empty() {
        problems.push(format!("{case_name}: no error line"));
    }
    for line in &error_lines {
        let place = line.strip_prefix(&format!("{file}:")).map(|rest| {
            let mut parts = rest.splitn(3, ':');
            (parts.next().unwrap_or(""), parts.next().unwrap_or(""))
        });
        match place {
            Some((l, c)) if l.parse::<u32>().is_ok() && c.parse::<u32>().is_ok() => {}
            _ => problems.push(format!(
                "{case_name}: error line lacks FILE:LINE:COL: {line}"
            )),
        }
    }
    for e in expect {
        if !o.stderr.contains(e) {
            problems.push(format!("{case_name}: stderr lacks {e:?}"));
        }
    }
    if !problems.is_empty() {
        problems.push(format!("--- stderr of {case_name}:\n{}", o.stderr));
    }
    problems
}

fn check_rejected(case_name: &str, path: &Path, o: &Outcome, expect: &[&str]) {
    let problems = rejection_problems(case_name, path, o, expect);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn bad_site_maps_are_rejected_with_file_place_and_problem() {
    let cases = bad_cases();
    assert!(cases.len() >= 25, "only {} cases", cases.len());
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names must be distinct");
    let mut problems = Vec::new();
    for case in cases {
        let (dir, path) = write_map("site-map.json", &case.text);
        let o = validate(&path, &[], dir.path());
        problems.extend(rejection_problems(case.name, &path, &o, case.expect));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn password_in_catalogue_uri_is_never_printed() {
    let (dir, path) = write_map(
        "site-map.json",
        &good_with("mongodb://ferry@", "mongodb://ferry:hunter2@"),
    );
    for extra in [&[][..], &["--json"][..]] {
        let o = validate(&path, extra, dir.path());
        assert_eq!(o.code, 2);
        assert!(
            !o.stderr.contains("hunter2") && !o.stdout.contains("hunter2"),
            "{}{}",
            o.stdout,
            o.stderr
        );
    }
}

#[test]
fn three_distinct_problems_are_all_reported() {
    let text = good_with("\"push_to\": [\"mirror\"]", "\"push_to\": [\"mirorr\"]")
        .replacen(
            "\"hostname\": \"mirror.example\"",
            "\"hostname\": \"mirror.example\", \"port\": 0",
            1,
        )
        .replacen("mongodb://ferry@", "mongodb://ferry:pw@", 1);
    let (dir, path) = write_map("site-map.json", &text);
    let o = validate(&path, &[], dir.path());
    check_rejected(
        "three problems",
        &path,
        &o,
        &[
            "catalog.uri: the catalogue URI holds a password",
            "sites[0].push_to[0]: unknown site \"mirorr\"",
            "sites[1].port: 0 is out of range",
            "invalid site map: 3 errors",
        ],
    );
}

#[test]
fn json_output_lists_diagnostics_with_places() {
    let text = good_with("\"push_to\": [\"mirror\"]", "\"push_to\": [\"mirorr\"]");
    let (dir, path) = write_map("site-map.json", &text);
    let o = validate(&path, &["--json"], dir.path());
    assert_eq!(o.code, 2);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let d = &v["diagnostics"][0];
    assert_eq!(d["severity"], "error");
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(6), Some(53))
    );
    assert_eq!(d["path"], "sites[0].push_to[0]");
    assert_eq!(d["suggestion"], "did you mean \"mirror\"?");
}

#[test]
fn missing_config_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["config", "validate"])
        .env("HOME", dir.path())
        .env_remove("FERRY_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("no site map: pass --config FILE or set FERRY_CONFIG"));
}

/// A prepared host for `--host daq`: a temp HOME holding the data directory `raw` (if
/// `data_dir`) and the private key `key` for site `mirror` (with `key_mode`, if given).
struct HostFixture {
    home: tempfile::TempDir,
    data: PathBuf,
    key: PathBuf,
}

impl HostFixture {
    fn new(data_dir: bool, key_mode: Option<u32>) -> Self {
        let home = tempfile::tempdir().unwrap();
        let data = home.path().join("raw");
        if data_dir {
            fs::create_dir(&data).unwrap();
        }
        let key = home.path().join("key");
        if let Some(mode) = key_mode {
            fs::write(&key, "not really a key").unwrap();
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
        }
        Self { home, data, key }
    }

    /// Site `daq` (data directory `data_dir`) pushes over SFTP to `mirror`, whose key is
    /// `key` (no `identity_file` when `None`).
    fn map(&self, data_dir: &Path, key: Option<&Path>) -> String {
        let identity = key
            .map(|k| format!("\"identity_file\": \"{}\",", k.display()))
            .unwrap_or_default();
        format!(
            r#"{{
  "version": 1,
  "sites": [
    {{"name": "daq", "method": "sftp", "hostname": "localhost", "origin": true,
     "data_dirs": {{"raw": "{}"}}, "push_to": ["mirror"]}},
    {{"name": "mirror", "hostname": "127.0.0.1", "port": 2222,
     {identity}
     "data_dirs": {{"raw": "/srv/mirror"}}}}
  ]
}}"#,
            data_dir.display()
        )
    }

    /// Writes `map` and runs `ferry config validate --host daq` on it.
    fn validate(&self, map: &str) -> (PathBuf, Outcome) {
        let path = self.home.path().join("site-map.json");
        fs::write(&path, map).unwrap();
        let o = validate(&path, &["--host", "daq"], self.home.path());
        (path, o)
    }
}

#[test]
fn host_local_checks_pass_on_a_prepared_host() {
    let h = HostFixture::new(true, Some(0o600));
    let (path, o) = h.validate(&h.map(&h.data, Some(&h.key)));
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("host-local checks for site daq"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains(":6:5: warning: sites[1]: no known_hosts file"),
        "{}",
        o.stdout
    );
    // Without --host the same map is valid on any machine, whatever is on this one.
    fs::remove_dir(&h.data).unwrap();
    assert_eq!(validate(&path, &[], h.home.path()).code, 0);
}

#[test]
fn host_local_data_dir_missing() {
    let h = HostFixture::new(false, Some(0o600));
    let (path, o) = h.validate(&h.map(&h.data, Some(&h.key)));
    let expect = [
        ":5:27: error: sites[0].data_dirs.raw: data directory",
        "does not exist on this host",
    ];
    check_rejected("data dir missing", &path, &o, &expect);
}

#[test]
fn host_local_data_dir_is_a_file() {
    let h = HostFixture::new(true, Some(0o600));
    let (path, o) = h.validate(&h.map(&h.key, Some(&h.key)));
    let expect = [
        ":5:27: error: sites[0].data_dirs.raw: data directory",
        "is not a directory",
    ];
    check_rejected("data dir is a file", &path, &o, &expect);
}

#[test]
fn host_local_identity_file_too_open() {
    let h = HostFixture::new(true, Some(0o644));
    let (path, o) = h.validate(&h.map(&h.data, Some(&h.key)));
    let expect = [
        ":7:23: error: sites[1].identity_file: UNPROTECTED PRIVATE KEY FILE: permissions 0644 for",
        "are too open",
        "chmod 600",
    ];
    check_rejected("identity file 0644", &path, &o, &expect);
}

#[test]
fn host_local_identity_file_missing() {
    let h = HostFixture::new(true, None);
    let (path, o) = h.validate(&h.map(&h.data, Some(&h.key)));
    let expect = [
        ":7:23: error: sites[1].identity_file: identity file",
        "for site \"mirror\" cannot be read",
    ];
    check_rejected("identity file missing", &path, &o, &expect);
}

#[test]
fn host_local_identity_file_from_ssh_config_too_open() {
    let h = HostFixture::new(true, Some(0o640));
    let ssh = h.home.path().join(".ssh");
    fs::create_dir(&ssh).unwrap();
    fs::write(ssh.join("config"), "Host 127.0.0.1\n  IdentityFile ~/key\n").unwrap();
    let (path, o) = h.validate(&h.map(&h.data, None));
    let expect = [
        ":6:5: error: sites[1]: UNPROTECTED PRIVATE KEY FILE: permissions 0640",
        "key' (IdentityFile from the SSH config)",
    ];
    check_rejected("identity file from ssh config 0640", &path, &o, &expect);
}

#[test]
fn host_local_tape_directory_and_device_missing() {
    let h = HostFixture::new(true, Some(0o600));
    let tape = r#""tape": [{"name": "t-dir", "kind": "directory", "path": "/nonexistent/ferry-tape"},
                 {"name": "t-tar", "kind": "tar", "devices": ["/nonexistent/nst0"]}],"#;
    let map = h.map(&h.data, Some(&h.key)).replacen(
        "\"origin\": true,",
        &format!("\"origin\": true, {tape}"),
        1,
    );
    let (path, o) = h.validate(&map);
    let expect = [
        ":4:89: error: sites[0].tape[0]: tape backend \"t-dir\": directory /nonexistent/ferry-tape does not exist on this host",
        ":5:18: error: sites[0].tape[1]: tape backend \"t-tar\": device /nonexistent/nst0 does not exist on this host",
    ];
    check_rejected("tape directory and device missing", &path, &o, &expect);
}

#[test]
fn host_unknown_site_lists_known_sites() {
    let (dir, path) = write_map("site-map.json", GOOD);
    let o = validate(&path, &["--host", "mirorr"], dir.path());
    check_rejected(
        "--host unknown",
        &path,
        &o,
        &[":4:12: error: sites: --host \"mirorr\" is not a site in this site map; known sites: daq, mirror (did you mean \"mirror\"?)"],
    );
}

/// Started with no `--host` (nor FERRY_SITE), the agent tries the machine's host name; that
/// it was tried, and what to do, must be said: it used to read `--host "vm" is not a site`.
#[test]
fn an_agent_started_without_host_says_the_host_name_was_tried() {
    let (dir, path) = write_map("site-map.json", GOOD);
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let short = host.split('.').next().unwrap_or_default().to_string();
    assert!(
        !["daq", "mirror"].contains(&short.as_str()),
        "this machine is named like a site of the test map"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--once", "--config"])
        .arg(&path)
        .env("HOME", dir.path())
        .env_remove("FERRY_CONFIG")
        .env_remove("FERRY_SITE")
        .output()
        .expect("run ferry");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no --host given (nor FERRY_SITE), so this machine's host name {short:?} was tried"
        )) && stderr.contains("known sites: daq, mirror")
            && stderr.contains("pass --host SITE"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&format!("--host {short:?} is not a site")),
        "{stderr}"
    );

    // From FERRY_SITE: that variable is named.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--once", "--config"])
        .arg(&path)
        .env("HOME", dir.path())
        .env_remove("FERRY_CONFIG")
        .env("FERRY_SITE", "mirrror")
        .output()
        .expect("run ferry");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FERRY_SITE=\"mirrror\" is not a site"),
        "{stderr}"
    );
}

/// A site map with one `command` tape backend at the origin, written as `entry`.
fn map_with_tape(entry: &str) -> String {
    format!(
        r#"{{
  "version": 1,
  "sites": [
    {{"name": "daq", "method": "local", "origin": true,
     "data_dirs": {{"raw": "/data/raw"}},
     "tape": [
       {entry}
     ]}}
  ]
}}"#
    )
}

/// A `command` backend without `stat` passed `config validate --host` and then failed every
/// cycle (the backend could not be built).
#[test]
fn a_command_tape_backend_without_stat_is_refused_naming_its_place_and_task() {
    let (dir, path) = write_map(
        "site-map.json",
        &map_with_tape(
            r#"{"name": "lab-tape", "kind": "command", "put": ["dsmc", "archive", "{file}"],
        "retrieve": ["dsmc", "retrieve", "{tape_path}", "{dest}"], "tape_path": "/t/{key}"}"#,
        ),
    );
    for extra in [&[][..], &["--host", "daq"][..]] {
        let o = validate(&path, extra, dir.path());
        assert_eq!(o.code, 2, "{extra:?}: {}{}", o.stdout, o.stderr);
        let line = o
            .stderr
            .lines()
            .find(|l| l.contains("`stat`"))
            .unwrap_or_else(|| panic!("no stat error: {}", o.stderr));
        assert!(
            line.contains("site-map.json:7:8: error: sites[0].tape[0]: "),
            "{line}"
        );
        assert!(line.contains("tape backend \"lab-tape\""), "{line}");
        assert!(line.contains("tape backup"), "{line}");
        assert!(line.contains("every cycle"), "{line}");
        assert!(line.contains("add \"stat\""), "{line}");
    }
}

#[test]
fn a_template_using_file_without_stage_is_an_error_at_the_key() {
    let (dir, path) = write_map(
        "site-map.json",
        &map_with_tape(
            r#"{"name": "lab-tape", "kind": "command", "put": ["dsmc", "archive", "{file}"],
        "stat": ["dsmc", "query", "archive", "{file}"]}"#,
        ),
    );
    let o = validate(&path, &[], dir.path());
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stderr
            .contains("site-map.json:8:9: error: sites[0].tape[0].stat: tape backend \"lab-tape\": `stat` uses {file}"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("set \"stage\""), "{}", o.stderr);
}

/// Without `retrieve` only `ferry recall` (run on request) is affected: a note, valid.
#[test]
fn a_command_tape_backend_without_retrieve_is_a_note_not_an_error() {
    let (dir, path) = write_map(
        "site-map.json",
        &map_with_tape(
            r#"{"name": "lab-tape", "kind": "command", "tape_path": "/t/{key}",
        "put": ["cp", "{file}", "{tape_path}"], "stat": ["cat", "{tape_path}"]}"#,
        ),
    );
    let o = validate(&path, &[], dir.path());
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("notes (1):"), "{}", o.stdout);
    assert!(
        o.stdout
            .contains(": note: sites[0].tape[0]: tape backend \"lab-tape\": no `retrieve`"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("`ferry recall`"), "{}", o.stdout);
    let o = validate(&path, &["--json"], dir.path());
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["notes"][0]["severity"], "note", "{v}");
    assert_eq!(v["warnings"].as_array().unwrap().len(), 0, "{v}");
}
