//! Settings of a `command` backend, with every template parsed.

use std::time::Duration;

use super::Template;
use crate::config::{CommandOutput, TapeBackendConfig, TapeKind};
use crate::tape::TapeError;

/// A `command` backend's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandConfig {
    /// Backend name.
    pub name: String,
    /// Gateway site name, if the commands run there.
    pub gateway: Option<String>,
    /// Writes one file.
    pub put: Template,
    /// Reports one stored file (the idempotency probe; required).
    pub stat: Template,
    /// Checks one stored file (metadata verification); `stat` when absent.
    pub verify: Option<Template>,
    /// Reads one file back to `{dest}`.
    pub retrieve: Option<Template>,
    /// Exit codes that mean success.
    pub ok_exit_codes: Vec<i32>,
    /// A file's name on the tape side.
    pub tape_path: Option<Template>,
    /// Staging directory (on the gateway, or local).
    pub stage: Option<String>,
    /// How tool output is read.
    pub output: CommandOutput,
    /// Longest one command may run.
    pub timeout: Duration,
}

impl CommandConfig {
    /// From a site-map entry of kind `command`. Needs `stat`; `{file}` outside `put` and
    /// `{tape_path}` anywhere need `stage` and `tape_path` respectively.
    pub fn from_site_map(cfg: &TapeBackendConfig) -> Result<Self, TapeError> {
        let bad = |reason: String| TapeError::Config {
            backend: cfg.name.clone(),
            reason,
        };
        let TapeKind::Command {
            gateway,
            put,
            verify,
            retrieve,
            stat,
            ok_exit_codes,
            tape_path,
            stage,
            output,
            timeout,
        } = &cfg.kind
        else {
            return Err(bad(format!(
                "a {} entry is not a command backend",
                cfg.kind.name()
            )));
        };
        let parse = |what: &str, argv: &[String]| {
            Template::parse(argv).map_err(|e| bad(format!("{what}: {e}")))
        };
        let stat = stat.as_deref().ok_or_else(|| {
            bad("needs a `stat` template: without it a put cannot tell whether a file is already on tape".into())
        })?;
        let out = Self {
            name: cfg.name.clone(),
            gateway: gateway.clone(),
            put: parse("put", put)?,
            stat: parse("stat", stat)?,
            verify: verify.as_deref().map(|a| parse("verify", a)).transpose()?,
            retrieve: retrieve
                .as_deref()
                .map(|a| parse("retrieve", a))
                .transpose()?,
            ok_exit_codes: ok_exit_codes.clone(),
            tape_path: tape_path
                .as_ref()
                .map(|t| parse("tape_path", std::slice::from_ref(t)))
                .transpose()?,
            stage: stage.clone(),
            output: *output,
            timeout: *timeout,
        };
        let templates = [
            ("stat", Some(&out.stat)),
            ("verify", out.verify.as_ref()),
            ("retrieve", out.retrieve.as_ref()),
            ("tape_path", out.tape_path.as_ref()),
        ];
        for (what, t) in templates {
            if t.is_some_and(|t| t.uses("file")) && out.stage.is_none() {
                return Err(bad(format!(
                    "{what} uses {{file}}, which is known outside `put` only with a `stage` \
                     directory (then {{file}} is <stage>/<run>/<path>); name the tape side \
                     with `tape_path` and {{tape_path}} instead"
                )));
            }
        }
        for (what, t) in [("put", Some(&out.put))].into_iter().chain(templates) {
            if t.is_some_and(|t| t.uses("tape_path") || t.uses("tape_dir"))
                && out.tape_path.is_none()
            {
                return Err(bad(format!(
                    "{what} uses {{tape_path}} or {{tape_dir}}, but no `tape_path` is set"
                )));
            }
        }
        if out.output == CommandOutput::Hsi && out.tape_path.is_none() {
            return Err(bad(
                "output \"hsi\" finds a file in `hsi hashlist` by its tape path: set `tape_path`"
                    .into(),
            ));
        }
        Ok(out)
    }
}
