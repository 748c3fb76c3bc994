//! Settings of a `directory` backend.

use std::path::PathBuf;

use crate::config::{TapeBackendConfig, TapeKind};
use crate::tape::TapeError;

/// A `directory` backend's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryConfig {
    /// Backend name.
    pub name: String,
    /// Root of the tree (absolute).
    pub root: PathBuf,
}

impl DirectoryConfig {
    /// From a site-map entry of kind `directory`.
    pub fn from_site_map(cfg: &TapeBackendConfig) -> Result<Self, TapeError> {
        match &cfg.kind {
            TapeKind::Directory { path } => Ok(Self {
                name: cfg.name.clone(),
                root: path.clone(),
            }),
            other => Err(TapeError::Config {
                backend: cfg.name.clone(),
                reason: format!("a {} entry is not a directory backend", other.name()),
            }),
        }
    }
}
