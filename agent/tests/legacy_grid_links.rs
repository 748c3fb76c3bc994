//! A cax.json whose `upload_options`/`download_options` name a `gfal-copy`, `lcg-cp` or
//! `rucio` site loads: each such link is warned about (site, method, file position) and
//! skipped, and the rest of the map works. Run through the real binary, as users do.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn validate(file: &Path, extra: &[&str]) -> (i32, String, String) {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["config", "validate", "--config"])
        .arg(file)
        .args(extra)
        .env("HOME", home.path())
        .env_remove("FERRY_CONFIG")
        .env_remove("FERRY_SITE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Two scp/rsync sites linked to each other and to one site of each grid method.
const CRAFTED: &str = r#"[
  {"name": "daq", "method": "rsync", "hostname": "daq.example", "dir_raw": "/data/raw",
   "upload_options": ["srm-site", "store", "lfc-site", "rucio-catalogue"],
   "download_options": null},
  {"name": "store", "method": "scp", "hostname": "store.example", "dir_raw": "/store/raw",
   "upload_options": null,
   "download_options": ["rucio-catalogue", "daq"]},
  {"name": "srm-site", "method": "gfal-copy", "hostname": "srm://srm.example:8443/srm?SFN=",
   "dir_raw": "/pnfs/raw", "upload_options": null, "download_options": null},
  {"name": "lfc-site", "method": "lcg-cp", "hostname": "srm://lfc.example", "dir_raw": "/grid/raw",
   "upload_options": null, "download_options": null},
  {"name": "rucio-catalogue", "method": "rucio", "hostname": null, "dir_raw": null,
   "upload_options": null, "download_options": null}
]
"#;

#[test]
fn links_to_gfal_lcg_and_rucio_sites_are_warned_about_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cax.json");
    std::fs::write(&path, CRAFTED).unwrap();
    let (code, stdout, stderr) = validate(&path, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let all = format!("{stdout}{stderr}");
    for (pos, path, site, peer, method) in [
        (
            "3:23",
            "[0].upload_options[0]",
            "daq",
            "srm-site",
            "gfal-copy",
        ),
        ("3:44", "[0].upload_options[2]", "daq", "lfc-site", "lcg-cp"),
        (
            "3:56",
            "[0].upload_options[3]",
            "daq",
            "rucio-catalogue",
            "rucio",
        ),
        (
            "7:25",
            "[1].download_options[0]",
            "store",
            "rucio-catalogue",
            "rucio",
        ),
    ] {
        let want = format!("cax.json:{pos}: warning: {path}: \"{site}\" would");
        let line = all
            .lines()
            .find(|l| l.contains(&want))
            .unwrap_or_else(|| panic!("no warning {want:?} in:\n{all}"));
        assert!(
            line.contains(&format!("{peer:?}"))
                && line.contains(&format!("{method:?}"))
                && line.contains("link skipped"),
            "{line}"
        );
    }
    // The rest of the map works: the scp/rsync links are kept, the grid ones are not.
    let (_, json, _) = validate(&path, &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let links = v["links"].to_string();
    assert!(links.contains("daq") && links.contains("store"), "{links}");
    for grid in ["srm-site", "lfc-site", "rucio-catalogue"] {
        assert!(!links.contains(grid), "{grid} still linked: {links}");
    }
}

#[test]
fn the_shared_cax_fixtures_load_unmodified() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/legacy-cax");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let (code, stdout, stderr) = validate(&path, &[]);
            assert_eq!(code, 0, "{}:\n{stdout}{stderr}", path.display());
            n += 1;
        }
    }
    assert_eq!(n, 6);
}
