//! Verification of a `directory` receipt: metadata compares the sidecars with the receipt;
//! sample and full read the data files back and hash them.

use std::fs::File;

use super::DirectoryBackend;
use crate::tape::io::copy_hashing;
use crate::tape::sample::plan;
use crate::tape::{check_read_back, Receipt, TapeError, VerifyLevel, VerifyReport};

impl DirectoryBackend {
    pub(super) fn verify_blocking(
        &self,
        receipt: &Receipt,
        level: VerifyLevel,
    ) -> Result<VerifyReport, TapeError> {
        let name = &self.cfg.name;
        // Every level starts with the metadata: each file is there, as the receipt says.
        for want in &receipt.files {
            let Some(got) = self.stat_blocking(&want.key)? else {
                return Err(TapeError::NotFound {
                    backend: name.clone(),
                    key: want.key.clone(),
                });
            };
            if got.size != want.size || got.sha256 != want.sha256 || got.md5 != want.md5 {
                return Err(TapeError::Mismatch {
                    backend: name.clone(),
                    key: want.key.clone(),
                    what: "sidecar",
                    expected: format!(
                        "{} sha256 {}",
                        crate::tape::size_text(want.size),
                        crate::tape::hash_text(want.sha256.as_deref())
                    ),
                    found: format!(
                        "{} sha256 {}",
                        crate::tape::size_text(got.size),
                        crate::tape::hash_text(got.sha256.as_deref())
                    ),
                });
            }
        }
        let Some((picked, level)) = plan(level, receipt.files.len()) else {
            return Ok(VerifyReport {
                level,
                checked: receipt.files.iter().map(|f| f.key.clone()).collect(),
                copies: 1,
                bytes_read: 0,
            });
        };
        let mut bytes_read = 0;
        let mut checked = Vec::new();
        for i in picked {
            let want = &receipt.files[i];
            let path = self.data_path(&want.key);
            let mut f = File::open(&path).map_err(|e| TapeError::io(name, "opening", &path, e))?;
            let digest = copy_hashing(&mut f, None)
                .map_err(|e| TapeError::io(name, "reading back", &path, e))?;
            check_read_back(name, want, &digest)?;
            bytes_read += digest.size;
            checked.push(want.key.clone());
        }
        Ok(VerifyReport {
            level,
            checked,
            copies: 1,
            bytes_read,
        })
    }
}
