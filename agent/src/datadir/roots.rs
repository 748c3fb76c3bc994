//! A data directory knows whose it is.
//!
//! Before an agent (or `ferry recall`) works as a site, [`SiteRoots::open`] checks each of
//! the site's data directories:
//!
//! 1. it exists and is a directory; a missing one is an error naming it — an unmounted file
//!    system must not turn into data written to the root disk — unless the site map sets
//!    `create_data_dirs: true` for the site, which creates it on purpose;
//! 2. its marker file [`MARKER`] (`<site>/<data type>`, written at first use) names this
//!    site and type; a marker naming another is an error naming both;
//! 3. no two data directories of sites on this machine (this site's own, and those of the
//!    sites it reaches with `method: local`) are the same directory or one inside the other,
//!    compared by device and inode, so a symbolic link or a bind mount cannot hide it from
//!    `config validate`'s path check;
//! 4. an exclusive lock ([`crate::daemon::lock::SiteLock`]) is taken in each of them, so
//!    two agents for one site on one machine cannot run side by side whatever their
//!    environment (`FERRY_STATE_DIR` only holds the agent's own state).
//!
//! A directory without a marker is marked by [`SiteRoots::mark`] once the catalogue has
//! been asked whether it records copies there: an empty, unmarked directory that the
//! catalogue says holds `transferred` copies is refused ("not mounted?"); otherwise it is
//! marked (first use, or a site taken over from another tool whose data is already there).

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::config::{Site, SiteMap, TransferMethod};
use crate::daemon::lock::{LockError, SiteLock};

/// The marker file in every data directory: `<site>/<data type>` and a newline.
pub const MARKER: &str = ".ferry-site";

/// Why a site's data directories cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// Missing, and the site map does not allow creating it.
    #[error(
        "site {site}: {data_type} data directory {} does not exist (not mounted?); it is not \
         created on the fly: mount it, or create it, or set \"create_data_dirs\": true for \
         {site} in the site map",
        dir.display()
    )]
    Missing {
        /// The site.
        site: String,
        /// The data type.
        data_type: String,
        /// The directory.
        dir: PathBuf,
    },
    /// Not a directory.
    #[error("site {site}: {data_type} data directory {} is not a directory", dir.display())]
    NotADirectory {
        /// The site.
        site: String,
        /// The data type.
        data_type: String,
        /// The path.
        dir: PathBuf,
    },
    /// The marker names another site or type.
    #[error(
        "site {site}: {data_type} data directory {} is marked as {found:?} ({}); one data \
         directory serves one site and type: fix the site map, or remove the marker if the \
         directory really changed hands",
        dir.display(),
        dir.join(MARKER).display()
    )]
    Foreign {
        /// The site.
        site: String,
        /// The data type.
        data_type: String,
        /// The directory.
        dir: PathBuf,
        /// What the marker says.
        found: String,
    },
    /// Two data directories on this machine are the same or nested.
    #[error(
        "{}'s {} data directory {} and {}'s {} data directory {} {how} on this machine \
         (device and inode); each site needs a directory of its own, or a purge would count \
         one copy twice",
        a.site, a.data_type, a.dir.display(), b.site, b.data_type, b.dir.display()
    )]
    Shared {
        /// One of them.
        a: Box<DirOf>,
        /// The other.
        b: Box<DirOf>,
        /// `are the same directory` or `lie one inside the other`.
        how: &'static str,
    },
    /// Empty and unmarked while the catalogue records copies there.
    #[error(
        "site {site}: {data_type} data directory {} is empty and has no {MARKER} marker, but \
         the catalogue records copies there: is its file system mounted? Nothing was written",
        dir.display()
    )]
    Unmounted {
        /// The site.
        site: String,
        /// The data type.
        data_type: String,
        /// The directory.
        dir: PathBuf,
    },
    /// Another agent holds a data directory's lock.
    #[error(transparent)]
    Locked(LockError),
    /// An I/O error.
    #[error("site {site}: {}: {source}", path.display())]
    Io {
        /// The site.
        site: String,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl RootError {
    /// Whether waiting can help (another agent holds the lock and may exit).
    pub fn is_locked(&self) -> bool {
        matches!(self, Self::Locked(e) if e.is_retryable())
    }
}

/// A site's data directory of one type.
#[derive(Debug)]
pub struct DirOf {
    /// The site.
    pub site: String,
    /// The data type.
    pub data_type: String,
    /// The directory.
    pub dir: PathBuf,
}

/// A data directory with the device and inode of it and of each of its ancestors.
type Identified<'a> = (&'a Site, &'a String, &'a PathBuf, Vec<(u64, u64)>);

/// One data directory of the site, checked.
#[derive(Debug)]
pub struct Root {
    /// The data type.
    pub data_type: String,
    /// The directory.
    pub dir: PathBuf,
    /// Whether it still needs its marker ([`SiteRoots::mark`]).
    unmarked: bool,
}

/// The site's data directories, checked and locked; dropping it releases the locks.
#[derive(Debug)]
pub struct SiteRoots {
    site: String,
    roots: Vec<Root>,
    _locks: Vec<SiteLock>,
}

/// The data directories on this machine that must not coincide with `site`'s: its own and
/// those of the sites reached from it, or reaching it, with `method: local`.
fn local_sites<'a>(map: &'a SiteMap, site: &'a Site) -> Vec<&'a Site> {
    let mut out = vec![site];
    for other in &map.sites {
        if other.name == site.name {
            continue;
        }
        let linked = site.push_to.contains(&other.name)
            || site.pull_from.contains(&other.name)
            || other.push_to.contains(&site.name)
            || other.pull_from.contains(&site.name);
        if (linked && on_this_machine(site, other)) || same_host(site, other) {
            out.push(other);
        }
    }
    out
}

/// Whether [`SiteRoots::open`] takes the per-directory agent lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locking {
    /// The agent (daemon or `--once`): one per site per machine.
    Take,
    /// A command that works beside the agent through the catalogue's claims (`recall`).
    Skip,
}

impl SiteRoots {
    /// Checks `site`'s data directories and, with [`Locking::Take`], locks them (steps 1–4
    /// of the module docs).
    pub fn open(map: &SiteMap, site: &Site, locking: Locking) -> Result<Self, RootError> {
        let io = |path: &Path, source| RootError::Io {
            site: site.name.clone(),
            path: path.to_path_buf(),
            source,
        };
        let mut roots = Vec::new();
        for (data_type, dir) in &site.data_dirs {
            let meta = match std::fs::metadata(dir) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !site.create_data_dirs {
                        return Err(RootError::Missing {
                            site: site.name.clone(),
                            data_type: data_type.clone(),
                            dir: dir.clone(),
                        });
                    }
                    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
                    // Created on purpose: marked at once (it is new, not unmounted).
                    let marker = dir.join(MARKER);
                    write_marker(&marker, &marker_text(&site.name, data_type))
                        .map_err(|e| io(&marker, e))?;
                    tracing::info!(site = %site.name, dir = %dir.display(), "created the {data_type} data directory (create_data_dirs)");
                    std::fs::metadata(dir).map_err(|e| io(dir, e))?
                }
                Err(e) => return Err(io(dir, e)),
            };
            if !meta.is_dir() {
                return Err(RootError::NotADirectory {
                    site: site.name.clone(),
                    data_type: data_type.clone(),
                    dir: dir.clone(),
                });
            }
            let unmarked = match read_marker(dir).map_err(|e| io(&dir.join(MARKER), e))? {
                Some(found) if found == marker_text(&site.name, data_type) => false,
                // An empty marker names no site: the write of an agent that was killed
                // before the marker was made atomic. Written again by `mark`.
                Some(found) if found.is_empty() => {
                    let marker = dir.join(MARKER);
                    std::fs::remove_file(&marker).map_err(|e| io(&marker, e))?;
                    true
                }
                Some(found) => {
                    return Err(RootError::Foreign {
                        site: site.name.clone(),
                        data_type: data_type.clone(),
                        dir: dir.clone(),
                        found,
                    })
                }
                None => true,
            };
            roots.push(Root {
                data_type: data_type.clone(),
                dir: dir.clone(),
                unmarked,
            });
        }
        check_disjoint(&local_sites(map, site))?;
        let mut locks = Vec::new();
        for root in roots.iter().filter(|_| locking == Locking::Take) {
            let lock =
                SiteLock::acquire_in(&root.dir, &format!(".ferry-{}.lock", site.name), &site.name)
                    .map_err(RootError::Locked)?;
            locks.push(lock);
        }
        Ok(SiteRoots {
            site: site.name.clone(),
            roots,
            _locks: locks,
        })
    }

    /// The data directories that have no marker yet.
    pub fn unmarked(&self) -> impl Iterator<Item = &Root> {
        self.roots.iter().filter(|r| r.unmarked)
    }

    /// Writes the marker of each unmarked directory, unless it is empty while
    /// `holds_copies(data_type)` says the catalogue records copies there.
    pub fn mark(&mut self, holds_copies: impl Fn(&str) -> bool) -> Result<(), RootError> {
        for root in self.roots.iter_mut().filter(|r| r.unmarked) {
            let io = |path: &Path, source| RootError::Io {
                site: self.site.clone(),
                path: path.to_path_buf(),
                source,
            };
            let empty = std::fs::read_dir(&root.dir)
                .map_err(|e| io(&root.dir, e))?
                .filter_map(Result::ok)
                .all(|e| e.file_name().to_string_lossy().starts_with(".ferry-"));
            if empty && holds_copies(&root.data_type) {
                return Err(RootError::Unmounted {
                    site: self.site.clone(),
                    data_type: root.data_type.clone(),
                    dir: root.dir.clone(),
                });
            }
            let path = root.dir.join(MARKER);
            write_marker(&path, &marker_text(&self.site, &root.data_type))
                .map_err(|e| io(&path, e))?;
            root.unmarked = false;
        }
        Ok(())
    }
}

fn marker_text(site: &str, data_type: &str) -> String {
    format!("{site}/{data_type}")
}

/// The marker's first line, or `None` when there is none. A marker that is a link, or
/// not a regular file, reads as what it is, never as a name.
fn read_marker(dir: &Path) -> std::io::Result<Option<String>> {
    let path = dir.join(MARKER);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => {
            let text = std::fs::read_to_string(&path)?;
            Ok(Some(text.lines().next().unwrap_or("").trim().to_owned()))
        }
        Ok(_) => Ok(Some(format!("(not a regular file: {})", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the marker whole or not at all: into `.ferry-site.new` (fsynced), then hard-linked
/// to its name, which fails if a marker is there already; an agent killed on the way leaves
/// at most the `.new` file, which the next write replaces.
fn write_marker(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_file_name(format!("{MARKER}.new"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    writeln!(f, "{text}")?;
    f.sync_all()?;
    drop(f);
    let linked = std::fs::hard_link(&tmp, path);
    std::fs::remove_file(&tmp)?;
    linked?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Device and inode of a directory and of each of its ancestors, the directory first.
fn identities(dir: &Path) -> Vec<(u64, u64)> {
    let Ok(real) = dir.canonicalize() else {
        return Vec::new();
    };
    real.ancestors()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

/// Step 3: no two of these sites' existing data directories are the same or nested.
fn check_disjoint(sites: &[&Site]) -> Result<(), RootError> {
    let dirs: Vec<Identified<'_>> = sites
        .iter()
        .flat_map(|s| {
            s.data_dirs
                .iter()
                .map(move |(t, d)| (*s, t, d, identities(d)))
        })
        .filter(|(_, _, _, ids)| !ids.is_empty())
        .collect();
    for (i, (a, at, ad, aids)) in dirs.iter().enumerate() {
        for (b, bt, bd, bids) in &dirs[i + 1..] {
            let how = if aids[0] == bids[0] {
                "are the same directory"
            } else if aids[1..].contains(&bids[0]) || bids[1..].contains(&aids[0]) {
                "lie one inside the other"
            } else {
                continue;
            };
            let of = |s: &Site, t: &String, d: &PathBuf| {
                Box::new(DirOf {
                    site: s.name.clone(),
                    data_type: t.clone(),
                    dir: d.clone(),
                })
            };
            return Err(RootError::Shared {
                a: of(a, at, ad),
                b: of(b, bt, bd),
                how,
            });
        }
    }
    Ok(())
}

/// Whether two directories on this machine are the same one (device and inode).
pub fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether `other` is on this machine as seen from `site`: one of them is reached with
/// `method: local`, or both name the same `hostname`.
pub fn on_this_machine(site: &Site, other: &Site) -> bool {
    other.method == TransferMethod::Local
        || site.method == TransferMethod::Local
        || same_host(site, other)
}

/// Both name the same `hostname` and port (an unset port is 22).
fn same_host(a: &Site, b: &Site) -> bool {
    let port = |s: &Site| s.port.unwrap_or(22);
    matches!((&a.hostname, &b.hostname), (Some(x), Some(y)) if x.eq_ignore_ascii_case(y))
        && port(a) == port(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn map(json: &str) -> SiteMap {
        crate::config::parse_str(json, Path::new("m.json"), &Default::default())
            .unwrap()
            .map
    }

    fn two_sites(a: &Path, b: &Path, extra: &str) -> SiteMap {
        map(&format!(
            r#"{{"version": 1, "sites": [
              {{"name": "a", "origin": true, "method": "local", "data_dirs": {{"raw": "{}"}}, "push_to": ["b"]{extra}}},
              {{"name": "b", "method": "local", "data_dirs": {{"raw": "{}"}}}}]}}"#,
            a.display(),
            b.display()
        ))
    }

    #[test]
    fn a_missing_data_directory_is_not_created_unless_asked() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir(&b).unwrap();
        let m = two_sites(&a, &b, "");
        let e = SiteRoots::open(&m, m.site("a").unwrap(), Locking::Take).unwrap_err();
        assert!(matches!(e, RootError::Missing { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&a.display().to_string()) && msg.contains("create_data_dirs"));
        assert!(!a.exists());
        let m = two_sites(&a, &b, r#", "create_data_dirs": true"#);
        let mut roots = SiteRoots::open(&m, m.site("a").unwrap(), Locking::Take).unwrap();
        assert!(a.is_dir());
        roots.mark(|_| false).unwrap();
        assert_eq!(std::fs::read_to_string(a.join(MARKER)).unwrap(), "a/raw\n");
    }

    #[test]
    fn an_empty_marker_left_by_a_killed_agent_is_written_again_not_refused() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let m = two_sites(&a, &b, "");
        // What a kill between the marker's creation and its write used to leave.
        std::fs::write(a.join(MARKER), b"").unwrap();
        std::fs::write(a.join(format!("{MARKER}.new")), b"a/r").unwrap();
        std::fs::write(a.join("Run1"), b"x").unwrap();
        let site = m.site("a").unwrap();
        let mut roots = SiteRoots::open(&m, site, Locking::Skip).unwrap();
        roots.mark(|_| true).unwrap();
        assert_eq!(std::fs::read_to_string(a.join(MARKER)).unwrap(), "a/raw\n");
        assert!(!a.join(format!("{MARKER}.new")).exists());
        SiteRoots::open(&m, site, Locking::Skip).unwrap();
    }

    #[test]
    fn a_data_directory_marked_for_another_site_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join(MARKER), "mirror/raw\n").unwrap();
        let m = two_sites(&a, &b, "");
        let e = SiteRoots::open(&m, m.site("a").unwrap(), Locking::Take).unwrap_err();
        assert!(matches!(e, RootError::Foreign { .. }), "{e}");
        assert!(e.to_string().contains("mirror/raw"), "{e}");
    }

    #[test]
    fn a_data_directory_shared_through_a_link_is_refused_by_inode() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let m = two_sites(&a, &b, "");
        let e = SiteRoots::open(&m, m.site("a").unwrap(), Locking::Take).unwrap_err();
        assert!(matches!(e, RootError::Shared { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("a's raw") && msg.contains("b's raw"), "{msg}");
        // Nested, through a link.
        std::fs::remove_file(&b).unwrap();
        std::fs::create_dir(a.join("sub")).unwrap();
        std::os::unix::fs::symlink(a.join("sub"), &b).unwrap();
        let e = SiteRoots::open(&m, m.site("a").unwrap(), Locking::Take).unwrap_err();
        assert!(e.to_string().contains("one inside the other"), "{e}");
    }

    #[test]
    fn an_empty_unmarked_directory_with_recorded_copies_is_not_mounted() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let m = two_sites(&a, &b, "");
        let mut roots = SiteRoots::open(&m, m.site("a").unwrap(), Locking::Take).unwrap();
        let e = roots.mark(|t| t == "raw").unwrap_err();
        assert!(matches!(e, RootError::Unmounted { .. }), "{e}");
        assert!(!a.join(MARKER).exists());
        // With data in it (a site taken over from another tool), it is marked.
        std::fs::write(a.join("Run1"), b"x").unwrap();
        roots.mark(|t| t == "raw").unwrap();
        assert!(a.join(MARKER).exists());
    }

    #[test]
    fn a_second_agent_is_locked_out_whatever_its_state_directory() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let m = two_sites(&a, &b, "");
        let _first = SiteRoots::open(&m, m.site("a").unwrap(), Locking::Take).unwrap();
        let e = SiteRoots::open(&m, m.site("a").unwrap(), Locking::Take).unwrap_err();
        assert!(e.is_locked(), "{e}");
        assert!(
            e.to_string().contains(&std::process::id().to_string()),
            "{e}"
        );
        // A command working beside the agent takes no lock.
        SiteRoots::open(&m, m.site("a").unwrap(), Locking::Skip).unwrap();
    }
}
