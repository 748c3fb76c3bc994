//! Verification of a `command` receipt.
//!
//! - metadata: run `verify` (or `stat`) per file and compare what the tape system reports
//!   (size, MD5, SHA-256, CRC-32 as a number) with the receipt;
//! - sample / full ("restore-verify" for TSM): retrieve the chosen files into a scratch
//!   directory, hash them and compare with the receipt and the manifest's SHA-256.

use super::backend::{rel_path, CommandBackend};
use crate::tape::sample::plan;
use crate::tape::{Receipt, StoredFile, TapeError, VerifyLevel, VerifyReport};

impl CommandBackend {
    pub(super) async fn verify_receipt(
        &self,
        receipt: &Receipt,
        level: VerifyLevel,
    ) -> Result<VerifyReport, TapeError> {
        let template = self.cfg.verify.as_ref().unwrap_or(&self.cfg.stat);
        for want in &receipt.files {
            let path = rel_path(&receipt.run, &want.key);
            let got = self
                .probe(template, &receipt.run, path)
                .await?
                .ok_or_else(|| TapeError::NotFound {
                    backend: self.cfg.name.clone(),
                    key: want.key.clone(),
                })?;
            self.compare(want, &got)?;
        }
        let Some((picked, level)) = plan(level, receipt.files.len()) else {
            return Ok(VerifyReport {
                level,
                checked: receipt.files.iter().map(|f| f.key.clone()).collect(),
                copies: 1,
                bytes_read: 0,
            });
        };
        if self.cfg.retrieve.is_none() {
            return Err(TapeError::Unsupported {
                backend: self.cfg.name.clone(),
                op: "read-back verification",
                hint: " (no `retrieve` template in the site map; use the metadata level)".into(),
            });
        }
        let scratch = std::env::temp_dir().join(format!(
            "ferry-verify-{}-{}-{:08x}",
            self.cfg.name,
            std::process::id(),
            rand::random::<u32>()
        ));
        let result = async {
            let mut bytes_read = 0;
            let mut checked = Vec::new();
            for i in picked {
                let want = &receipt.files[i];
                let local = scratch.join(rel_path(&receipt.run, &want.key));
                bytes_read += self.retrieve_one(receipt, want, &local).await?;
                let _ = tokio::fs::remove_file(&local).await;
                checked.push(want.key.clone());
            }
            Ok(VerifyReport {
                level,
                checked,
                copies: 1,
                bytes_read,
            })
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&scratch).await;
        result
    }

    /// What the tape system reports now against what the receipt recorded.
    fn compare(&self, want: &StoredFile, got: &StoredFile) -> Result<(), TapeError> {
        let mismatch = |what: &'static str, expected: String, found: String| TapeError::Mismatch {
            backend: self.cfg.name.clone(),
            key: want.key.clone(),
            what,
            expected,
            found,
        };
        if let (Some(w), Some(g)) = (want.size, got.size) {
            if w != g {
                return Err(mismatch("size", w.to_string(), g.to_string()));
            }
        }
        let strings = [
            ("md5", &want.md5, &got.md5),
            ("sha256", &want.sha256, &got.sha256),
        ];
        for (what, w, g) in strings {
            if let (Some(w), Some(g)) = (w, g) {
                if !w.eq_ignore_ascii_case(g) {
                    return Err(mismatch(what, w.clone(), g.clone()));
                }
            }
            if let (Some(w), None) = (w, g) {
                return Err(mismatch(what, w.clone(), "none reported".into()));
            }
        }
        // CRC-32 as numbers: JLab stubs drop leading zeros.
        if let (Some(w), Some(g)) = (want.crc32, got.crc32) {
            if w != g {
                return Err(mismatch("crc32", format!("{w:08x}"), format!("{g:08x}")));
            }
        }
        Ok(())
    }
}
