//! Settings of a `command` backend, with every template parsed.

use std::time::Duration;

use super::Template;
use crate::config::{CommandOutput, TapeBackendConfig, TapeKind};
use crate::tape::needs::{Operation, Unmet};
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
        // Settings an operation needs (declared in `unmet_needs`, which `ferry config
        // validate` reports with their places): the first that refuses the entry.
        if let Some(u) = unmet_needs(&cfg.kind).into_iter().find(|u| u.refused) {
            return Err(bad(format!("{}; {}", u.problem, u.fix)));
        }
        let stat = stat
            .as_deref()
            .ok_or_else(|| bad("needs a `stat` template".into()))?;
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
        Ok(out)
    }
}

/// What a `command` entry's operations need that it lacks or cannot use (see
/// [`crate::tape::needs`]):
///
/// - `stat` is the idempotency probe of every put, and the metadata check of `verify`
///   when there is no `verify` template: required;
/// - `{file}` outside `put` is known only with a `stage` directory, `{tape_path}` and
///   `{tape_dir}` only with `tape_path`, and output `hsi` finds files by their tape path;
/// - without `retrieve` nothing can be read back: `ferry recall` skips the backend and
///   backups are verified from the tape system's metadata (not refused).
///
/// Templates that do not parse are left to [`CommandConfig::from_site_map`] and the
/// site-map reader, which name the bad placeholder.
pub fn unmet_needs(kind: &TapeKind) -> Vec<Unmet> {
    let TapeKind::Command {
        put,
        verify,
        retrieve,
        stat,
        tape_path,
        stage,
        output,
        ..
    } = kind
    else {
        return Vec::new();
    };
    let parsed = |argv: Option<&[String]>| argv.and_then(|a| Template::parse(a).ok());
    let stat_ops = |verify: &Option<Vec<String>>| {
        let mut ops = vec![Operation::Stat, Operation::Put];
        if verify.is_none() {
            ops.push(Operation::Verify);
        }
        ops
    };
    let mut out = Vec::new();
    if stat.is_none() {
        out.push(Unmet {
            operations: stat_ops(verify),
            key: "stat",
            present: false,
            refused: true,
            problem: "no `stat` template: without it a put cannot tell whether a file is \
                      already on tape"
                .into(),
            fix: "add \"stat\": an argv printing what the tape system holds of one file, \
                  such as [\"dsmc\", \"query\", \"archive\", \"{file}\"] (with \"stage\") or \
                  [\"cat\", \"{tape_path}\"] (with \"tape_path\")"
                .into(),
        });
    }
    let all = vec![
        Operation::Stat,
        Operation::Put,
        Operation::Verify,
        Operation::Retrieve,
    ];
    let templates: [(&'static str, Option<Template>, Vec<Operation>); 5] = [
        ("put", parsed(Some(put)), vec![Operation::Put]),
        ("stat", parsed(stat.as_deref()), stat_ops(verify)),
        ("verify", parsed(verify.as_deref()), vec![Operation::Verify]),
        (
            "retrieve",
            parsed(retrieve.as_deref()),
            vec![Operation::Retrieve, Operation::Verify],
        ),
        (
            "tape_path",
            parsed(tape_path.as_ref().map(std::slice::from_ref)),
            all.clone(),
        ),
    ];
    for (key, template, operations) in &templates {
        let Some(t) = template else { continue };
        let mut refuse = |problem: String, fix: &str| {
            out.push(Unmet {
                operations: operations.clone(),
                key,
                present: true,
                refused: true,
                problem,
                fix: fix.into(),
            });
        };
        if *key != "put" && t.uses("file") && stage.is_none() {
            refuse(
                format!(
                    "`{key}` uses {{file}}, which is known outside `put` only with a `stage` \
                     directory (then {{file}} is <stage>/<run>/<path>)"
                ),
                "set \"stage\", or name the tape side with \"tape_path\" and use \
                 {tape_path} instead",
            );
        }
        if (t.uses("tape_path") || t.uses("tape_dir")) && tape_path.is_none() {
            refuse(
                format!("`{key}` uses {{tape_path}} or {{tape_dir}}, but no `tape_path` is set"),
                "add \"tape_path\": a file's name on the tape side, such as \
                 \"/mss/exp/{run}/{path}\"",
            );
        }
    }
    if *output == CommandOutput::Hsi && tape_path.is_none() {
        out.push(Unmet {
            operations: all,
            key: "tape_path",
            present: false,
            refused: true,
            problem: "output \"hsi\" finds a file in `hsi hashlist` by its tape path, and no \
                      `tape_path` is set"
                .into(),
            fix: "add \"tape_path\": a file's name in HPSS, such as \"/home/e/exp/{run}/{path}\""
                .into(),
        });
    }
    if retrieve.is_none() {
        out.push(Unmet {
            operations: vec![Operation::Retrieve],
            key: "retrieve",
            present: false,
            refused: false,
            problem: "no `retrieve` template: nothing can be read back, so `ferry recall` \
                      skips this backend and backups are verified from the tape system's \
                      metadata only"
                .into(),
            fix: "add \"retrieve\": an argv reading one file back to {dest}, such as \
                  [\"dsmc\", \"retrieve\", \"{file}\", \"{dest}\"]"
                .into(),
        });
    }
    out
}
