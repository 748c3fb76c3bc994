//! [`CommandBackend`]: put, stat and retrieve by running the configured templates.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::parse::{
    parse_dsmc_query, parse_dsmc_summary, parse_hsi_hashlist, parse_stub, says_missing,
    DSMC_NO_MATCH,
};
use super::runner::{Output, Runner};
use super::{CommandConfig, Template, Vars};
use crate::config::CommandOutput;
use crate::tape::{
    check_batch, check_existing, check_read_back, key_of, Batch, Capabilities, Health, Receipt,
    RunRef, StoredFile, TapeBackend, TapeError, TapeFile, VerifyKind, VerifyLevel, VerifyReport,
};
use crate::transport::SshTarget;

/// External tape tools driven by argv templates.
#[derive(Debug)]
pub struct CommandBackend {
    pub(super) cfg: CommandConfig,
    pub(super) runner: Runner,
}

/// Where one file of a run is, in the template's terms.
pub(super) struct Place {
    pub key: String,
    pub tape_path: Option<String>,
    pub staged: Option<String>,
}

impl CommandBackend {
    /// A backend running its commands locally, or on `gateway` when the site map names one.
    pub fn new(cfg: CommandConfig, gateway: Option<SshTarget>) -> Result<Self, TapeError> {
        let runner = match (&cfg.gateway, gateway) {
            (None, _) => Runner::Local,
            (Some(_), Some(target)) => Runner::gateway(target),
            (Some(site), None) => {
                return Err(TapeError::Config {
                    backend: cfg.name.clone(),
                    reason: format!("gateway site {site:?} was not resolved to an SSH target"),
                })
            }
        };
        if cfg.output == CommandOutput::Dsmc && cfg.tape_path.is_none() && cfg.stage.is_none() {
            return Err(TapeError::Config {
                backend: cfg.name.clone(),
                reason: "output \"dsmc\" finds a file in `dsmc query archive` by its name: set \
                         `tape_path` or `stage`"
                    .into(),
            });
        }
        Ok(Self { cfg, runner })
    }

    fn bad_input(&self, run: &RunRef, reason: String) -> TapeError {
        TapeError::BadInput {
            backend: self.cfg.name.clone(),
            run: run.name.clone(),
            reason,
        }
    }

    /// Key, tape path and staged path of `path` in `run`.
    pub(super) fn place(&self, run: &RunRef, path: &str) -> Result<Place, TapeError> {
        let key = key_of(&run.name, path);
        let staged = self
            .cfg
            .stage
            .as_ref()
            .map(|s| format!("{}/{key}", s.trim_end_matches('/')));
        let tape_path = match &self.cfg.tape_path {
            None => None,
            Some(t) => {
                let vars = Vars {
                    file: staged.as_deref(),
                    ..run_vars(run, path, &key)
                };
                let mut r = t.render(&vars).map_err(|e| self.bad_input(run, e))?;
                r.pop()
            }
        };
        Ok(Place {
            key,
            tape_path,
            staged,
        })
    }

    /// The name the tape system lists the file under.
    pub(super) fn location(place: &Place) -> String {
        place
            .tape_path
            .clone()
            .or_else(|| place.staged.clone())
            .unwrap_or_else(|| place.key.clone())
    }

    pub(super) fn render(
        &self,
        run: &RunRef,
        t: &Template,
        vars: &Vars<'_>,
    ) -> Result<Vec<String>, TapeError> {
        t.render(vars).map_err(|e| self.bad_input(run, e))
    }

    /// Fail unless the exit status is configured as success.
    pub(super) fn judge(
        &self,
        context: &str,
        argv: &[String],
        out: &Output,
    ) -> Result<(), TapeError> {
        if out
            .status
            .is_some_and(|s| self.cfg.ok_exit_codes.contains(&s))
        {
            return Ok(());
        }
        Err(TapeError::Command {
            backend: self.cfg.name.clone(),
            context: format!("{context} on {}", self.runner.place()),
            argv: argv.to_vec(),
            status: out.status,
            stderr_tail: tail(out),
            retryable: true,
        })
    }

    /// With `output: dsmc`, the summary must show no failed object and some work done.
    pub(super) fn judge_summary(
        &self,
        context: &str,
        argv: &[String],
        out: &Output,
    ) -> Result<(), TapeError> {
        if self.cfg.output != CommandOutput::Dsmc {
            return Ok(());
        }
        let text = out.text();
        let s = parse_dsmc_summary(&text)
            .map_err(|reason| self.parse_err(context, "dsmc summary", argv, reason, &text))?;
        let done = s.archived.unwrap_or(0) + s.retrieved.unwrap_or(0);
        if s.failed.unwrap_or(0) > 0 || done == 0 {
            return Err(TapeError::Command {
                backend: self.cfg.name.clone(),
                context: format!(
                    "{context}: dsmc summary reports {} failed, {done} done",
                    s.failed.unwrap_or(0)
                ),
                argv: argv.to_vec(),
                status: out.status,
                stderr_tail: if s.messages.is_empty() {
                    tail(out)
                } else {
                    s.messages.join("\n")
                },
                retryable: true,
            });
        }
        Ok(())
    }

    fn parse_err(
        &self,
        context: &str,
        what: &'static str,
        argv: &[String],
        reason: String,
        text: &str,
    ) -> TapeError {
        let output: String = text.chars().take(500).collect();
        TapeError::Parse {
            backend: self.cfg.name.clone(),
            context: context.to_owned(),
            what,
            argv: argv.to_vec(),
            reason: format!("{reason}; output: {output:?}"),
        }
    }

    /// Run `template` (stat or verify) for one file and read what the tape system reports.
    pub(super) async fn probe(
        &self,
        template: &Template,
        run: &RunRef,
        path: &str,
    ) -> Result<Option<StoredFile>, TapeError> {
        let place = self.place(run, path)?;
        let vars = Vars {
            file: place.staged.as_deref(),
            tape_path: place.tape_path.as_deref(),
            ..run_vars(run, path, &place.key)
        };
        let argv = self.render(run, template, &vars)?;
        let context = format!("run {} key {}: probing", run.name, place.key);
        let out = self
            .runner
            .run(&self.cfg.name, &context, &argv, self.cfg.timeout)
            .await?;
        let ok = out
            .status
            .is_some_and(|s| self.cfg.ok_exit_codes.contains(&s));
        let text = out.text();
        let location = Self::location(&place);
        let mut stored = StoredFile {
            key: place.key.clone(),
            size: None,
            sha256: None,
            md5: None,
            crc32: None,
            location: location.clone(),
            source_sha256: None,
        };
        match self.cfg.output {
            CommandOutput::Stub => {
                if !ok {
                    if says_missing(&text) {
                        return Ok(None);
                    }
                    self.judge(&context, &argv, &out)?;
                }
                let stub = parse_stub(&out.stdout).map_err(|reason| {
                    self.parse_err(&context, "stub file", &argv, reason, &out.stdout)
                })?;
                stored.size = Some(stub.size);
                stored.md5 = stub.md5;
                stored.sha256 = stub.sha256;
                stored.crc32 = stub.crc32;
            }
            CommandOutput::Hsi => {
                if says_missing(&text) {
                    return Ok(None);
                }
                self.judge(&context, &argv, &out)?;
                stored.md5 = parse_hsi_hashlist(&text, &location).map_err(|reason| {
                    self.parse_err(&context, "hsi hashlist", &argv, reason, &text)
                })?;
            }
            CommandOutput::Dsmc => {
                if text.contains(DSMC_NO_MATCH) {
                    return Ok(None);
                }
                self.judge(&context, &argv, &out)?;
                let Some(obj) = parse_dsmc_query(&text, &location).map_err(|reason| {
                    self.parse_err(&context, "dsmc query", &argv, reason, &text)
                })?
                else {
                    return Ok(None);
                };
                stored.size = Some(obj.size);
                stored.sha256 = obj.sha256;
            }
        }
        Ok(Some(stored))
    }

    async fn put_one(&self, run: &RunRef, file: &TapeFile) -> Result<StoredFile, TapeError> {
        let place = self.place(run, &file.path)?;
        let context = format!("run {} key {}: put", run.name, place.key);
        let src = match &place.staged {
            Some(staged) => {
                self.runner
                    .stage(&self.cfg.name, &file.local, staged, &file.sha256)
                    .await?;
                staged.clone()
            }
            None => file
                .local
                .to_str()
                .ok_or_else(|| self.bad_input(run, format!("{:?} is not UTF-8", file.local)))?
                .to_owned(),
        };
        let vars = Vars {
            file: Some(&src),
            size: Some(file.size),
            md5: Some(&file.md5),
            sha256: Some(&file.sha256),
            tape_path: place.tape_path.as_deref(),
            ..run_vars(run, &file.path, &place.key)
        };
        let argv = self.render(run, &self.cfg.put, &vars)?;
        let out = self
            .runner
            .run(&self.cfg.name, &context, &argv, self.cfg.timeout)
            .await?;
        self.judge(&context, &argv, &out)?;
        self.judge_summary(&context, &argv, &out)?;
        // What the tape system now reports must be the manifest's file.
        let stored = self
            .probe(&self.cfg.stat, run, &file.path)
            .await?
            .ok_or_else(|| TapeError::Mismatch {
                backend: self.cfg.name.clone(),
                key: place.key.clone(),
                what: "presence after put",
                expected: "stored".into(),
                found: format!("stat does not find {}", Self::location(&place)),
            })?;
        if stored.same_digest(file) == Some(false) {
            return Err(TapeError::Mismatch {
                backend: self.cfg.name.clone(),
                key: place.key.clone(),
                what: "checksum reported by the tape system after put",
                expected: format!(
                    "{} bytes md5 {} sha256 {}",
                    file.size, file.md5, file.sha256
                ),
                found: format!(
                    "{} md5 {} sha256 {}",
                    crate::tape::size_text(stored.size),
                    crate::tape::hash_text(stored.md5.as_deref()),
                    crate::tape::hash_text(stored.sha256.as_deref())
                ),
            });
        }
        if place.staged.is_some() && place.tape_path.is_some() {
            // The tape system has its own copy under tape_path; the staged one can go.
            self.runner.unstage(&src).await;
        }
        Ok(StoredFile {
            source_sha256: Some(file.sha256.clone()),
            ..stored
        })
    }

    /// Retrieve one file of a receipt to `local`; returns the digest of the bytes there.
    pub(super) async fn retrieve_one(
        &self,
        receipt: &Receipt,
        stored: &StoredFile,
        local: &Path,
    ) -> Result<u64, TapeError> {
        let Some(template) = &self.cfg.retrieve else {
            return Err(self.unsupported("retrieve"));
        };
        let run = &receipt.run;
        let path = rel_path(run, &stored.key);
        let place = self.place(run, path)?;
        let remote_dest = match (&self.runner, &self.cfg.stage) {
            (Runner::Local, _) => local.to_string_lossy().into_owned(),
            (Runner::Gateway { .. }, Some(stage)) => format!(
                "{}/.ferry-retrieve-{}/{}",
                stage.trim_end_matches('/'),
                std::process::id(),
                place.key
            ),
            (Runner::Gateway { .. }, None) => {
                return Err(TapeError::Config {
                    backend: self.cfg.name.clone(),
                    reason: "retrieving through a gateway needs a `stage` directory there".into(),
                })
            }
        };
        if let Some(parent) = local.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| TapeError::io(&self.cfg.name, "creating directory", parent, e))?;
        }
        self.runner
            .make_parent(&self.cfg.name, &remote_dest)
            .await?;
        let vars = Vars {
            file: place.staged.as_deref(),
            tape_path: place.tape_path.as_deref(),
            dest: Some(&remote_dest),
            ..run_vars(run, path, &place.key)
        };
        let argv = self.render(run, template, &vars)?;
        let context = format!("run {} key {}: retrieve", run.name, place.key);
        let out = self
            .runner
            .run(&self.cfg.name, &context, &argv, self.cfg.timeout)
            .await?;
        self.judge(&context, &argv, &out)?;
        self.judge_summary(&context, &argv, &out)?;
        let digest = self
            .runner
            .fetch(&self.cfg.name, &remote_dest, local)
            .await?;
        check_read_back(&self.cfg.name, stored, &digest)?;
        Ok(digest.size)
    }

    fn unsupported(&self, op: &'static str) -> TapeError {
        TapeError::Unsupported {
            backend: self.cfg.name.clone(),
            op,
            hint: format!(" (no `{op}` template in the site map)"),
        }
    }
}

/// The run's and file's placeholders.
pub(super) fn run_vars<'a>(run: &'a RunRef, path: &'a str, key: &'a str) -> Vars<'a> {
    Vars {
        path: Some(path),
        key: Some(key),
        run: Some(&run.name),
        number: Some(run.number),
        period: run.period.as_deref(),
        detector: Some(&run.detector),
        ..Vars::default()
    }
}

/// `<path>` of a key `<run>/<path>`.
pub(super) fn rel_path<'a>(run: &RunRef, key: &'a str) -> &'a str {
    key.strip_prefix(&run.name)
        .and_then(|k| k.strip_prefix('/'))
        .unwrap_or(key)
}

fn tail(out: &Output) -> String {
    if out.stderr_tail.is_empty() {
        out.stdout
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        out.stderr_tail.clone()
    }
}

/// Whether `program` is an executable file, by path or on `PATH`.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| executable(&dir.join(program)))
    })
}

/// The longest common directory of the locations: the receipt's reference.
fn common_dir(locations: &[&str]) -> String {
    let Some(first) = locations.first() else {
        return String::new();
    };
    let mut prefix: Vec<&str> = first.split('/').collect();
    prefix.pop();
    for l in &locations[1..] {
        let parts: Vec<&str> = l.split('/').collect();
        let n = prefix
            .iter()
            .zip(&parts)
            .take_while(|(a, b)| a == b)
            .count();
        prefix.truncate(n.min(parts.len().saturating_sub(1)));
    }
    prefix.join("/")
}

#[async_trait]
impl TapeBackend for CommandBackend {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn capabilities(&self) -> Capabilities {
        let mut verify = vec![VerifyKind::Metadata];
        if self.cfg.retrieve.is_some() {
            verify.extend([VerifyKind::Sample, VerifyKind::Full]);
        }
        Capabilities {
            verify,
            retrieve: self.cfg.retrieve.is_some(),
            batch_bytes: None,
            copies: 1,
            records_sha256: self.cfg.output == CommandOutput::Dsmc && self.cfg.put.uses("sha256"),
            catalogue: false,
        }
    }

    async fn health(&self) -> Result<Health, TapeError> {
        // The put program must be runnable where the commands run.
        let program = self.cfg.put.as_argv()[0].clone();
        if matches!(self.runner, Runner::Local) {
            let found = on_path(&program);
            return Ok(Health {
                ok: found,
                detail: format!(
                    "{program} {} on this machine",
                    if found { "found" } else { "not found" }
                ),
            });
        }
        // On the gateway, the login shell's `command -v` looks the program up.
        let argv = vec!["command".to_owned(), "-v".to_owned(), program.clone()];
        match self
            .runner
            .run(&self.cfg.name, "health", &argv, self.cfg.timeout)
            .await
        {
            Ok(out) if out.status == Some(0) => Ok(Health {
                ok: true,
                detail: format!("{program} found on {}", self.runner.place()),
            }),
            Ok(out) => Ok(Health {
                ok: false,
                detail: format!(
                    "{program} not found on {} ({})",
                    self.runner.place(),
                    crate::transport::exit_text(out.status)
                ),
            }),
            Err(e) if !e.is_retryable() => Ok(Health {
                ok: false,
                detail: e.to_string(),
            }),
            Err(e) => Err(e),
        }
    }

    async fn stat(&self, run: &RunRef, path: &str) -> Result<Option<StoredFile>, TapeError> {
        self.probe(&self.cfg.stat, run, path).await
    }

    async fn put(&self, batch: &Batch) -> Result<Receipt, TapeError> {
        check_batch(&self.cfg.name, batch)?;
        let mut existing = Vec::with_capacity(batch.files.len());
        for f in &batch.files {
            let stored = self.probe(&self.cfg.stat, &batch.run, &f.path).await?;
            let present = check_existing(&self.cfg.name, &batch.key(f), f, stored.as_ref())?;
            existing.push(if present { stored } else { None });
        }
        let mut files = Vec::with_capacity(batch.files.len());
        let mut written = 0;
        for (f, stored) in batch.files.iter().zip(existing) {
            match stored {
                Some(s) => files.push(StoredFile {
                    source_sha256: Some(f.sha256.clone()),
                    ..s
                }),
                None => {
                    files.push(self.put_one(&batch.run, f).await?);
                    written += 1;
                }
            }
        }
        let locations: Vec<&str> = files.iter().map(|f| f.location.as_str()).collect();
        Ok(Receipt {
            backend: self.cfg.name.clone(),
            run: batch.run.clone(),
            reference: common_dir(&locations),
            volumes: Vec::new(),
            files,
            written,
        })
    }

    async fn verify(
        &self,
        receipt: &Receipt,
        level: VerifyLevel,
    ) -> Result<VerifyReport, TapeError> {
        self.verify_receipt(receipt, level).await
    }

    async fn retrieve(&self, receipt: &Receipt, to_dir: &Path) -> Result<Vec<PathBuf>, TapeError> {
        let mut out = Vec::new();
        for stored in &receipt.files {
            let local = to_dir.join(rel_path(&receipt.run, &stored.key));
            self.retrieve_one(receipt, stored, &local).await?;
            out.push(local);
        }
        Ok(out)
    }

    async fn catalogue(&self) -> Result<Vec<StoredFile>, TapeError> {
        Err(TapeError::Unsupported {
            backend: self.cfg.name.clone(),
            op: "catalogue",
            hint: " (tape tools are asked per file; the run catalogue lists what Ferry put)".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::common_dir;

    #[test]
    fn reference_is_the_common_directory() {
        assert_eq!(
            common_dir(&["/mss/h/Run1/raw/a", "/mss/h/Run1/raw/b", "/mss/h/Run1/c"]),
            "/mss/h/Run1"
        );
        assert_eq!(common_dir(&["/mss/h/Run1/a"]), "/mss/h/Run1");
    }
}
