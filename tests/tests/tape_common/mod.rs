//! Helpers shared by the tape tests (`tape_*.rs`): a private copy of the fake tape tools
//! (`tests/fixtures/tape-tools`) per test, runs of random files, and backends built from
//! site-map JSON exactly as the agent builds them.

// Each test file uses only some of the helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ferry::config::{LoadOptions, TapeBackendConfig};
use ferry::tape::{build, Batch, BuildContext, RunRef, TapeBackend, TapeFile};
use ferry::transport::SshTarget;
use rand::RngCore;
use serde_json::{json, Value};

/// A test's own tape library: `bin/` (the fake tools), `store/` (their state), `data/`.
pub struct Lab {
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        let dir = tempfile::tempdir().expect("test setup");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tape-tools");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("test setup");
        for e in std::fs::read_dir(&src).expect("tape-tools fixtures") {
            let e = e.expect("test setup");
            std::fs::copy(e.path(), bin.join(e.file_name())).expect("test setup");
        }
        std::fs::create_dir_all(dir.path().join("store")).expect("test setup");
        Lab { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A fake tool's absolute path.
    pub fn bin(&self, tool: &str) -> String {
        self.path().join("bin").join(tool).display().to_string()
    }

    /// Where the fake tools keep state and look for failure switches.
    pub fn store(&self) -> PathBuf {
        self.path().join("store")
    }

    /// A file-backed tape device (a directory) under the lab.
    pub fn device(&self, name: &str) -> PathBuf {
        let d = self.path().join("dev").join(name);
        std::fs::create_dir_all(&d).expect("test setup");
        d
    }
}

/// A run of random files under `root/<name>/`, with digests from Ferry's hasher.
pub fn make_run(root: &Path, name: &str, number: i64, files: &[(&str, usize)]) -> Batch {
    let mut out = Vec::new();
    for (path, size) in files {
        let local = root.join(name).join(path);
        std::fs::create_dir_all(local.parent().expect("test setup")).expect("test setup");
        let mut data = vec![0u8; *size];
        rand::rng().fill_bytes(&mut data);
        std::fs::write(&local, &data).expect("test setup");
        // hash_file blocks: a plain thread, so this works inside async tests too.
        let p = local.clone();
        let d = std::thread::spawn(move || ferry::checksum::hash_file(&p))
            .join()
            .expect("hashing thread")
            .expect("hashing");
        out.push(TapeFile {
            path: path.to_string(),
            local,
            size: d.size,
            sha256: d.sha256_hex(),
            md5: d.md5_hex(),
        });
    }
    Batch {
        run: RunRef {
            number,
            name: name.to_string(),
            period: Some("2019-11".into()),
            detector: "tpc".into(),
        },
        files: out,
    }
}

/// Parse one tape entry through the site-map loader.
pub fn tape_config(entry: Value) -> Result<TapeBackendConfig, ferry::config::ConfigError> {
    let map = json!({
        "version": 1,
        "sites": [
            { "name": "gw", "method": "sftp", "hostname": "127.0.0.1" },
            {
                "name": "site",
                "method": "local",
                "origin": true,
                "data_dirs": { "raw": "/data/raw" },
                "tape": [entry]
            }
        ]
    });
    let loaded = ferry::config::parse_str(
        &map.to_string(),
        Path::new("tape-test.json"),
        &LoadOptions::default(),
    )?;
    let (_, tape) = loaded.map.tape_backends().next().expect("one tape backend");
    Ok(tape.clone())
}

/// A backend from a site-map tape entry.
pub fn backend(entry: Value, gateway: Option<SshTarget>) -> Box<dyn TapeBackend> {
    let cfg = tape_config(entry).unwrap_or_else(|e| panic!("site map: {e}"));
    build(&cfg, &BuildContext { gateway }).unwrap_or_else(|e| panic!("build: {e}"))
}

/// `directory` on `lab/tape`.
pub fn directory_entry(lab: &Lab) -> Value {
    json!({ "name": "dir-tape", "kind": "directory", "path": lab.path().join("tape") })
}

/// JLab: jput into an `/mss` tree, stub files read with `cat`, jget to retrieve.
pub fn jlab_entry(lab: &Lab) -> Value {
    let mss = lab.path().join("mss").display().to_string();
    json!({
        "name": "jlab-mss",
        "kind": "command",
        "tape_path": format!("{mss}/halld/RunPeriod-{{period}}/Run{{number:06}}/{{path}}"),
        "put": [lab.bin("jput"), "{file}", "{tape_dir}/"],
        "stat": ["cat", "{tape_path}"],
        "retrieve": [lab.bin("jget"), "{tape_path}", "{dest}"],
        "output": "stub",
        "timeout": "30s"
    })
}

/// TSM: files staged under `lab/stage`, archived with the SHA-256 in the description,
/// `query archive` as stat, restore-verify with `retrieve`.
pub fn dsmc_entry(lab: &Lab) -> Value {
    json!({
        "name": "tsm",
        "kind": "command",
        "stage": lab.path().join("stage"),
        "put": [lab.bin("dsmc"), "archive", "{file}", "-description=ferry sha256={sha256}"],
        "stat": [lab.bin("dsmc"), "query", "archive", "{file}"],
        "retrieve": [lab.bin("dsmc"), "retrieve", "-replace=yes", "{file}", "{dest}"],
        "output": "dsmc",
        "timeout": "30s"
    })
}

/// HPSS: hsi put / hashlist / get.
pub fn hsi_entry(lab: &Lab) -> Value {
    json!({
        "name": "hpss",
        "kind": "command",
        "tape_path": "/home/halld/{run}/{path}",
        "put": [lab.bin("hsi"), "-q", "put", "{file}", ":", "{tape_path}"],
        "stat": [lab.bin("hsi"), "-q", "hashlist", "{tape_path}"],
        "retrieve": [lab.bin("hsi"), "-q", "get", "{dest}", ":", "{tape_path}"],
        "output": "hsi",
        "timeout": "30s"
    })
}

/// tar on `drives` file-backed drives with the `mt` / `tape-dd` shims.
pub fn tar_entry(lab: &Lab, drives: usize) -> Value {
    let devices: Vec<PathBuf> = (0..drives)
        .map(|i| lab.device(&format!("nst{i}")))
        .collect();
    json!({
        "name": "lto",
        "kind": "tar",
        "devices": devices,
        "batch_size": "1MiB",
        "mt": [lab.bin("mt")],
        "write": [lab.bin("tape-dd"), "of={device}"],
        "read": [lab.bin("tape-dd"), "if={device}"],
        "labels": lab.path().join("labels.json")
    })
}

/// One slot of a file-backed tape library: its number, the tape's barcode (if it has
/// one) and its capacity in bytes (`None`: unlimited).
pub struct SlotTape {
    pub slot: u32,
    pub barcode: Option<&'static str>,
    pub capacity: Option<u64>,
}

/// A file-backed tape library for the `mtx` shim at `lab/changer`: `slots` storage
/// elements, drives `nst0…` (empty at first), tapes where `tapes` says.
pub fn make_library(lab: &Lab, drives: usize, slots: u32, tapes: &[SlotTape]) -> PathBuf {
    let ch = lab.path().join("changer");
    std::fs::create_dir_all(&ch).expect("test setup");
    std::fs::write(ch.join("slots"), slots.to_string()).expect("test setup");
    for i in 0..drives {
        let dev = lab.device(&format!("nst{i}"));
        std::fs::write(dev.join("no-tape"), "").expect("test setup");
        std::fs::write(ch.join(format!("drive.{i}")), dev.display().to_string())
            .expect("test setup");
    }
    for t in tapes {
        let dir = ch.join(format!("slot.{}", t.slot));
        std::fs::create_dir_all(&dir).expect("test setup");
        if let Some(b) = t.barcode {
            std::fs::write(dir.join("barcode"), b).expect("test setup");
        }
        if let Some(c) = t.capacity {
            std::fs::write(dir.join("capacity"), c.to_string()).expect("test setup");
        }
    }
    ch
}

/// tar on `drives` drives inside the library at `lab/changer` (see [`make_library`]),
/// slots 1 to `slots`, the `mtx` shim with its default argv shape.
pub fn tar_changer_entry(lab: &Lab, drives: usize, slots: u32) -> Value {
    let mut entry = tar_entry(lab, drives);
    let mtx = lab.bin("mtx");
    entry["changer"] = json!({
        "device": lab.path().join("changer"),
        "status": [mtx, "-f", "{changer}", "status"],
        "load": [mtx, "-f", "{changer}", "load", "{slot}", "{drive}"],
        "unload": [mtx, "-f", "{changer}", "unload", "{slot}", "{drive}"],
        "slots": format!("1-{slots}"),
    });
    entry
}
