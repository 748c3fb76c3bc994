//! Paths below a site's data directories: where a run's copy lives, and how its files are
//! reached without following a symbolic link. Every task that reads, writes, verifies or
//! deletes a copy's files asks this module first; nothing else joins a catalogue path onto
//! a data directory.
//!
//! - [`run_dir`]: the directory the site's layout gives for a run (`data_dir/<layout>`).
//! - [`check_location`]: a copy's recorded `location` must be exactly that directory. The
//!   catalogue is written by other tools too (a DAQ, scripts, collaborators), so a location
//!   that names another run's directory, the data directory itself, a path outside it or a
//!   path with `..` is refused ([`PathError::Misplaced`]) and nothing there is touched. The
//!   check is lexical and needs no disk: it holds for a peer's copy read over SFTP as well.
//! - [`copy_dir`]: [`check_location`], then every component from the data directory down to
//!   the run directory is `lstat`ed and must be a real directory. A symbolic link is refused
//!   ([`PathError::Symlink`]), unless the site lists `link_roots` and the link resolves to a
//!   directory inside one of them (GlueX keeps `rawdata/all/RunN` as links into partitions).
//!   The data directory itself is the operator's (from the site map) and may be a link.
//! - [`file_in`] / [`remove_file_in`]: a manifest path below a run directory, with the same
//!   rule for every component (a file that is a link is refused too; removing one removes
//!   the link, never its target).
//!
//! [`roots`] owns the data directories themselves: that they exist (never created unless the
//! site map says `create_data_dirs`), that they are this site's (a marker file), that no two
//! sites on one machine share or nest them, and the per-directory agent lock.
//!
//! What `lstat` cannot close: a component swapped for a link between the check and the use
//! (a race with someone who can write in the data directory). The transport opens files with
//! `O_NOFOLLOW`, which closes it for the last component; directories above it are checked,
//! not held open.

pub mod roots;

use std::fmt;
use std::path::{Component, Path, PathBuf};

use catalog_schema::{CopyEntry, RunDoc};

use crate::config::{LayoutError, Site};

/// Which copy a path belongs to: `run 4711 raw@mirror`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The run number.
    pub run: i64,
    /// The data type.
    pub data_type: String,
    /// The site.
    pub site: String,
}

impl Place {
    /// The place of `site`'s `data_type` copy of `run`.
    pub fn new(run: &RunDoc, site: &str, data_type: &str) -> Self {
        Place {
            run: run.number,
            data_type: data_type.to_owned(),
            site: site.to_owned(),
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "run {} {}@{}", self.run, self.data_type, self.site)
    }
}

/// Why a copy's path was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The site's layout cannot place the run (e.g. `{period}` without a period).
    #[error("{place}: layout: {source}")]
    Layout {
        /// The copy.
        place: Place,
        /// Why.
        source: LayoutError,
    },
    /// The site has no data directory for the type.
    #[error("{place}: the site has no {} data directory", place.data_type)]
    NoDataDir {
        /// The copy.
        place: Place,
    },
    /// The copy records no location.
    #[error("{place}: the copy has no location")]
    NoLocation {
        /// The copy.
        place: Place,
    },
    /// The recorded location is not the run's own directory at the site.
    #[error(
        "{place}: the recorded location {recorded:?} is not this run's directory {}; \
         refused, nothing there was touched (fix the catalogue entry)",
        expected.display()
    )]
    Misplaced {
        /// The copy.
        place: Place,
        /// The `location` in the catalogue.
        recorded: String,
        /// What the site's layout gives.
        expected: PathBuf,
    },
    /// A component below the data directory is a symbolic link.
    #[error(
        "{place}: {} is a symbolic link{}; refused, not followed",
        path.display(),
        target.as_ref().map(|t| format!(" to {}", t.display())).unwrap_or_default()
    )]
    Symlink {
        /// The copy.
        place: Place,
        /// The link.
        path: PathBuf,
        /// Where it points (when it could be read).
        target: Option<PathBuf>,
    },
    /// A component that must be a directory (or a file) is something else.
    #[error("{place}: {} is not a {expected}; refused", path.display())]
    WrongKind {
        /// The copy.
        place: Place,
        /// The path.
        path: PathBuf,
        /// `directory` or `regular file`.
        expected: &'static str,
    },
    /// A manifest path that is absolute or has `..`, `.` or empty components.
    #[error("{place}: manifest path {path:?} is not a plain relative path; refused")]
    UnsafeName {
        /// The copy.
        place: Place,
        /// The manifest path.
        path: String,
    },
    /// The directory (or a component of it) is missing.
    #[error("{place}: {} does not exist", path.display())]
    Missing {
        /// The copy.
        place: Place,
        /// The path.
        path: PathBuf,
    },
    /// Another I/O error.
    #[error("{place}: {}: {message}", path.display())]
    Io {
        /// The copy.
        place: Place,
        /// The path.
        path: PathBuf,
        /// The error's text.
        message: String,
    },
}

impl PathError {
    /// Whether this is a refusal of what the catalogue or the disk says (a forged or wrong
    /// location, a planted link): recorded with its own failure class, never retried on its
    /// own, never acted on. A missing directory is not a refusal (the copy may be lost).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Misplaced { .. }
                | Self::Symlink { .. }
                | Self::WrongKind { .. }
                | Self::UnsafeName { .. }
        )
    }

    /// The copy the error is about.
    pub fn place(&self) -> &Place {
        match self {
            Self::Layout { place, .. }
            | Self::NoDataDir { place }
            | Self::NoLocation { place }
            | Self::Misplaced { place, .. }
            | Self::Symlink { place, .. }
            | Self::WrongKind { place, .. }
            | Self::UnsafeName { place, .. }
            | Self::Missing { place, .. }
            | Self::Io { place, .. } => place,
        }
    }

    fn io(place: &Place, path: &Path, e: &std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Self::Missing {
                place: place.clone(),
                path: path.to_path_buf(),
            };
        }
        Self::Io {
            place: place.clone(),
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}

/// The run's directory at `site` for `data_type`: the data directory joined with the
/// layout's rendering of the run (whose values are checked to stay one component each).
pub fn run_dir(site: &Site, data_type: &str, run: &RunDoc) -> Result<PathBuf, PathError> {
    let place = Place::new(run, &site.name, data_type);
    let root = site
        .data_dir(data_type)
        .ok_or_else(|| PathError::NoDataDir {
            place: place.clone(),
        })?;
    let name = run.name.clone().unwrap_or_else(|| run.number.to_string());
    let period = run.extra.get_str("period").ok();
    let rel = site
        .layout
        .render(run.number, &name, period, &run.detector)
        .map_err(|source| PathError::Layout {
            place: place.clone(),
            source,
        })?;
    let rel = Path::new(&rel);
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain || rel.as_os_str().is_empty() {
        return Err(PathError::UnsafeName {
            place,
            path: rel.display().to_string(),
        });
    }
    Ok(root.join(rel))
}

/// `recorded` (a copy's `location`) checked to be exactly [`run_dir`]: the same path, with
/// at most a trailing `/`. Pure: no disk is read, so it serves a peer's copy too.
pub fn check_location(
    site: &Site,
    data_type: &str,
    run: &RunDoc,
    recorded: Option<&str>,
) -> Result<PathBuf, PathError> {
    let place = Place::new(run, &site.name, data_type);
    let expected = run_dir(site, data_type, run)?;
    let Some(recorded) = recorded else {
        return Err(PathError::NoLocation { place });
    };
    let trimmed = match recorded.strip_suffix('/') {
        Some(t) if !t.is_empty() && !t.ends_with('/') => t,
        _ => recorded,
    };
    if Path::new(trimmed) != expected || trimmed != expected.to_string_lossy() {
        return Err(PathError::Misplaced {
            place,
            recorded: recorded.to_owned(),
            expected,
        });
    }
    Ok(expected)
}

/// The directory of `c` (a copy of `run` at `site`) on this machine: [`check_location`],
/// then every component below the data directory `lstat`ed (see the module docs). The
/// directory must exist.
pub fn copy_dir(site: &Site, run: &RunDoc, c: &CopyEntry) -> Result<PathBuf, PathError> {
    let dir = check_location(site, &c.data_type, run, c.location.as_deref())?;
    let place = Place::new(run, &site.name, &c.data_type);
    let root = site
        .data_dir(&c.data_type)
        .ok_or_else(|| PathError::NoDataDir {
            place: place.clone(),
        })?;
    walk_dirs(&place, root, &dir, &site.link_roots)?;
    Ok(dir)
}

/// Checks every component of `dir` below `root` with `lstat`: a real directory, or (with
/// `link_roots`) a link to a directory inside one of them. `dir` must lie below `root`.
pub fn walk_dirs(
    place: &Place,
    root: &Path,
    dir: &Path,
    link_roots: &[PathBuf],
) -> Result<(), PathError> {
    let rel = dir.strip_prefix(root).map_err(|_| PathError::WrongKind {
        place: place.clone(),
        path: dir.to_path_buf(),
        expected: "directory below the data directory",
    })?;
    let mut path = root.to_path_buf();
    for part in rel.components() {
        let Component::Normal(part) = part else {
            return Err(PathError::UnsafeName {
                place: place.clone(),
                path: rel.display().to_string(),
            });
        };
        path.push(part);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| PathError::io(place, &path, &e))?;
        if meta.file_type().is_symlink() {
            linked_dir(place, &path, link_roots)?;
        } else if !meta.is_dir() {
            return Err(PathError::WrongKind {
                place: place.clone(),
                path,
                expected: "directory",
            });
        }
    }
    Ok(())
}

/// Creates `dir` below the existing data directory `root` one component at a time: a
/// missing component is created (mode 0755), one that exists must be a real directory (a
/// link is refused, whatever it points to); `root` itself is never created.
pub fn make_dirs(place: &Place, root: &Path, dir: &Path) -> Result<(), PathError> {
    let meta = std::fs::metadata(root).map_err(|e| PathError::io(place, root, &e))?;
    if !meta.is_dir() {
        return Err(PathError::WrongKind {
            place: place.clone(),
            path: root.to_path_buf(),
            expected: "directory",
        });
    }
    let rel = dir.strip_prefix(root).map_err(|_| PathError::WrongKind {
        place: place.clone(),
        path: dir.to_path_buf(),
        expected: "directory below the data directory",
    })?;
    let mut path = root.to_path_buf();
    for part in rel.components() {
        let Component::Normal(part) = part else {
            return Err(PathError::UnsafeName {
                place: place.clone(),
                path: rel.display().to_string(),
            });
        };
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(PathError::Symlink {
                    place: place.clone(),
                    target: std::fs::read_link(&path).ok(),
                    path,
                })
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(PathError::WrongKind {
                    place: place.clone(),
                    path,
                    expected: "directory",
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::create_dir(&path) {
                    Ok(()) => {}
                    // Created meanwhile by someone else: checked on the next component's
                    // way down, or by the caller.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let m = std::fs::symlink_metadata(&path)
                            .map_err(|e| PathError::io(place, &path, &e))?;
                        if !m.is_dir() || m.file_type().is_symlink() {
                            return Err(PathError::Symlink {
                                place: place.clone(),
                                target: std::fs::read_link(&path).ok(),
                                path,
                            });
                        }
                    }
                    Err(e) => return Err(PathError::io(place, &path, &e)),
                }
            }
            Err(e) => return Err(PathError::io(place, &path, &e)),
        }
    }
    Ok(())
}

/// A link below a data directory is followed only into a `link_roots` directory.
fn linked_dir(place: &Place, link: &Path, link_roots: &[PathBuf]) -> Result<(), PathError> {
    match allowed_link(link, link_roots) {
        Some(_) => Ok(()),
        None => Err(PathError::Symlink {
            place: place.clone(),
            path: link.to_path_buf(),
            target: std::fs::read_link(link).ok(),
        }),
    }
}

/// Where the symbolic link `link` leads, when that is a directory strictly inside one of
/// `link_roots` (the site map's `link_roots`); `None`: the link is not to be followed.
pub fn allowed_link(link: &Path, link_roots: &[PathBuf]) -> Option<PathBuf> {
    if link_roots.is_empty() {
        return None;
    }
    let real = link.canonicalize().ok()?;
    let inside = link_roots.iter().any(|r| {
        r.canonicalize()
            .is_ok_and(|r| real != r && real.starts_with(&r))
    });
    (inside && real.is_dir()).then_some(real)
}

/// The path of manifest file `rel` below the run directory `dir`, refusing a path that
/// leaves `dir` by its syntax or passes through (or is) a symbolic link. The file itself
/// may be missing.
pub fn file_in(place: &Place, dir: &Path, rel: &str) -> Result<PathBuf, PathError> {
    let path = plain_below(place, dir, rel)?;
    let mut at = dir.to_path_buf();
    for part in Path::new(rel).components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(PathError::Symlink {
                    place: place.clone(),
                    target: std::fs::read_link(&at).ok(),
                    path: at,
                })
            }
            Ok(m) if at != path && !m.is_dir() => {
                return Err(PathError::WrongKind {
                    place: place.clone(),
                    path: at,
                    expected: "directory",
                })
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(path)
}

/// Removes manifest file `rel` below `dir`: a link there is removed itself, never followed;
/// a file already gone is fine; a directory is refused.
pub fn remove_file_in(place: &Place, dir: &Path, rel: &str) -> Result<(), PathError> {
    let path = plain_below(place, dir, rel)?;
    if let Some(parent) = path.parent() {
        walk_dirs(place, dir, parent, &[]).or_else(|e| match e {
            PathError::Missing { .. } => Ok(()),
            e => Err(e),
        })?;
    }
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => Err(PathError::WrongKind {
            place: place.clone(),
            path,
            expected: "file",
        }),
        Ok(_) => std::fs::remove_file(&path).map_err(|e| PathError::io(place, &path, &e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PathError::io(place, &path, &e)),
    }
}

/// `dir/rel` for a plain relative `rel` (no absolute, empty, `.` or `..` component).
fn plain_below(place: &Place, dir: &Path, rel: &str) -> Result<PathBuf, PathError> {
    let unsafe_name = || PathError::UnsafeName {
        place: place.clone(),
        path: rel.to_owned(),
    };
    if rel.is_empty()
        || rel.starts_with('/')
        || rel.contains('\0')
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(unsafe_name());
    }
    if !Path::new(rel)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(unsafe_name());
    }
    Ok(dir.join(rel))
}

#[cfg(test)]
mod tests;
