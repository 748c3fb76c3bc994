//! The `command` backend: external tape tools driven by argv templates (never a shell
//! string), run locally or over SSH on a gateway host, optionally after staging each file
//! there over SFTP (JLab: write-through cache, then `jput`).
//!
//! Per file, a put runs `stat` (idempotency), stages the file when `stage` is set, runs
//! `put`, checks its exit status against `ok_exit_codes` and its output (a `dsmc` summary
//! must report no failed object), and runs `stat` again: the receipt holds what the tape
//! system reports, compared with the manifest before anything is returned.
//!
//! - `config.rs`   — [`CommandConfig`]: templates parsed once, from the site map
//! - `template.rs` — [`Template`] rendering with per-token placeholders
//! - `runner.rs`   — running argv locally (`tokio::process`) or on the gateway (SSH exec),
//!   with a timeout; SFTP staging
//! - `parse.rs`    — output parsers: key=value stubs (JLab), `dsmc`, `hsi hashlist`
//! - `backend.rs`  — [`CommandBackend`], the [`TapeBackend`](super::TapeBackend) impl
//! - `verify.rs`   — metadata (tool-reported checksums) and read-back verification

mod backend;
mod config;
pub mod parse;
mod runner;
mod template;
mod verify;

pub use backend::CommandBackend;
pub use config::{unmet_needs, CommandConfig};
pub use template::{Template, Vars};
