//! The `directory` backend: a directory tree standing for tape (an HSM-mounted file system
//! such as JLab's `/mss` view or a NAS; also the simplest backend for tests).
//!
//! A file with key `<run>/<path>` is stored as `ROOT/<run>/<path>`, next to a sidecar
//! `ROOT/<run>/<path>.ferry.json` holding its size, SHA-256 and MD5. A put copies to a
//! temporary name in the same directory while hashing, fsyncs, writes the sidecar (temp,
//! fsync, rename), then renames the data into place and fsyncs the directory. A file counts
//! as stored only when its sidecar exists and the data file has the sidecar's size, so a
//! crash at any point leaves either nothing or a complete file.
//!
//! - `config.rs`  — [`DirectoryConfig`] from the site map
//! - `backend.rs` — [`DirectoryBackend`], the [`TapeBackend`](super::TapeBackend) impl
//! - `verify.rs`  — metadata (sidecar) and read-back verification

mod backend;
mod config;
mod verify;

pub use backend::DirectoryBackend;
pub use config::DirectoryConfig;

/// Suffix of the sidecar next to each stored file.
pub const SIDECAR_SUFFIX: &str = ".ferry.json";
