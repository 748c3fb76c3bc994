//! Re-hashing a copy on this host's disk against the run's manifest: every manifest file
//! below the copy's directory (resolved by [`crate::datadir`], so a planted link is a bad
//! file, never followed), its size and SHA-256, and the run digest over what could be read.
//! Verify, audit and the journal's replay build on it; it builds on no task.

use std::path::Path;

use catalog_schema::FileEntry;

use crate::checksum;
use crate::datadir::{self, Place};

/// A manifest file that does not match.
pub(super) struct BadFile {
    pub(super) path: String,
    pub(super) why: String,
}

/// What re-hashing a copy found.
pub(super) struct Rehash {
    /// The run digest over the files that could be read (`None`: none could).
    pub(super) digest: Option<String>,
    pub(super) bad: Vec<BadFile>,
}

/// Hashes every manifest file below `dir` and compares it with the manifest. Blocking.
pub(super) fn rehash(place: &Place, dir: &Path, files: &[FileEntry]) -> Rehash {
    let mut measured: Vec<(String, u64, String)> = Vec::with_capacity(files.len());
    let mut bad = Vec::new();
    for f in files {
        let mut flag = |why: String| {
            bad.push(BadFile {
                path: f.path.clone(),
                why,
            })
        };
        let path = match datadir::file_in(place, dir, &f.path) {
            Ok(p) => p,
            Err(why) => {
                flag(why.to_string());
                continue;
            }
        };
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                flag("not a regular file".into());
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                flag("missing".into());
                continue;
            }
            Err(e) => {
                flag(format!("cannot stat: {e}"));
                continue;
            }
        }
        match checksum::hash_file(&path) {
            Ok(d) => {
                let sha = d.sha256_hex();
                let size_ok = i64::try_from(d.size).ok() == Some(f.size);
                if !size_ok || sha != f.sha256 {
                    flag(format!(
                        "{} bytes sha256 {sha}, manifest {} bytes sha256 {}",
                        d.size, f.size, f.sha256
                    ));
                }
                measured.push((f.path.clone(), d.size, sha));
            }
            Err(e) => flag(format!("cannot hash: {e}")),
        }
    }
    Rehash {
        digest: checksum::run_digest_of(&measured).ok(),
        bad,
    }
}
