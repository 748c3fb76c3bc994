//! The label store: which tape is in which drive and what each tape holds, as a JSON file
//! written atomically (temp, fsync, rename). The same record, for one tape, is what the
//! catalogue tape file holds.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::tape::io::sync_dir;
use crate::tape::TapeError;

/// One file inside a tar archive on tape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `<run>/<path>`; also the member's name in the archive.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes written, lowercase hex.
    pub sha256: String,
    /// MD5 of the bytes written, lowercase hex.
    pub md5: String,
}

/// What a tape file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TapeFileKind {
    /// A catalogue (file 0, and after each appending session).
    Catalogue,
    /// A tar archive of run files.
    Archive,
}

/// One tape file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapeFileEntry {
    /// Position on the tape (0 = first file).
    pub file_no: u64,
    /// Catalogue or archive.
    pub kind: TapeFileKind,
    /// The run an archive belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// An archive's members, in archive order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
}

/// One tape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapeRecord {
    /// The tape's label.
    pub label: String,
    /// Its files, in order; the next write goes to `files.len()`.
    pub files: Vec<TapeFileEntry>,
    /// The tape ran out of space: it is not written again (a changer loads another).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
}

/// Every tape of one backend, and which device holds which tape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelStore {
    /// Label → tape.
    pub tapes: BTreeMap<String, TapeRecord>,
    /// Device path → label of the tape loaded there.
    pub devices: BTreeMap<String, String>,
    /// With a changer: slot number → label of the tape whose home is that slot.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slots: BTreeMap<u32, String>,
}

impl LabelStore {
    /// Read the store; a missing file is an empty store.
    pub fn load(backend: &str, path: &Path) -> Result<Self, TapeError> {
        let bad = |reason: String| TapeError::Labels {
            backend: backend.to_owned(),
            path: path.to_path_buf(),
            reason,
        };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(bad(e.to_string())),
        }
    }

    /// Write the store atomically.
    pub fn save(&self, backend: &str, path: &Path) -> Result<(), TapeError> {
        let bad = |reason: String| TapeError::Labels {
            backend: backend.to_owned(),
            path: path.to_path_buf(),
            reason,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|e| bad(e.to_string()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            sync_dir(dir)
        };
        write().map_err(|e| bad(e.to_string()))
    }

    /// The label of the tape in `device`.
    pub fn label_in(&self, device: &Path) -> Option<&str> {
        self.devices
            .get(&device.display().to_string())
            .map(String::as_str)
    }

    /// The device holding the tape `label`.
    pub fn device_of(&self, label: &str) -> Option<&str> {
        self.devices
            .iter()
            .find(|(_, l)| *l == label)
            .map(|(d, _)| d.as_str())
    }

    /// The slot a tape lives in, with a changer.
    pub fn home_slot(&self, label: &str) -> Option<u32> {
        self.slots
            .iter()
            .find(|(_, l)| *l == label)
            .map(|(s, _)| *s)
    }

    /// Every copy of `key`: (label, tape file, member), tapes in label order.
    pub fn find(&self, key: &str) -> Vec<(&str, &TapeFileEntry, &Member)> {
        let mut out = Vec::new();
        for (label, tape) in &self.tapes {
            for f in &tape.files {
                if let Some(m) = f.members.iter().find(|m| m.key == key) {
                    out.push((label.as_str(), f, m));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_find() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.json");
        let mut s = LabelStore::load("t", &path).unwrap();
        assert!(s.tapes.is_empty());
        let m = Member {
            key: "r/a".into(),
            size: 1,
            sha256: "s".into(),
            md5: "m".into(),
        };
        s.tapes.insert(
            "L1".into(),
            TapeRecord {
                label: "L1".into(),
                files: vec![TapeFileEntry {
                    file_no: 1,
                    kind: TapeFileKind::Archive,
                    run: Some("r".into()),
                    members: vec![m],
                }],
                full: false,
            },
        );
        s.slots.insert(3, "L1".into());
        s.devices.insert("/dev/nst0".into(), "L1".into());
        s.save("t", &path).unwrap();
        let back = LabelStore::load("t", &path).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.find("r/a").len(), 1);
        assert_eq!(back.device_of("L1"), Some("/dev/nst0"));
        assert_eq!(back.home_slot("L1"), Some(3));
        std::fs::write(&path, "{not json").unwrap();
        assert!(LabelStore::load("t", &path).is_err());
    }
}
