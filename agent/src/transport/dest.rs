//! Where a run copy may read and write: below the run directories, never through a symbolic
//! link, and never creating the destination's data directory.
//!
//! A run copy ([`crate::transport::run::RunCopy`]) names the destination's data directory
//! (its *base*) next to the run directory. Before any file is written:
//!
//! - the base must exist and be a directory ([`TransportError::DataDir`] otherwise). It is
//!   never created: a missing data directory is most often a file system that is not mounted,
//!   and creating it would put the data on the root disk. The base itself may be a link (an
//!   operator's choice in the site map, e.g. `/data` → `/mnt/vol1`);
//! - the run directory must lie strictly below the base, by its syntax (no `..`);
//! - every directory from the base (exclusive) down to a file's parent is created when
//!   missing, or checked by `lstat` to be a real directory: a symbolic link there, at the
//!   `.part` or at the final name is refused with [`TransportError::UnsafePath`], and nothing
//!   is written through it.
//!
//! The checks are cached per run copy ([`LocalDest`], [`RemoteDest`]): the chain costs one
//! pass per run, not one per file. Over SFTP the `lstat`s of a chain are sent together, one
//! round trip; only missing directories cost a `mkdir` each.
//!
//! Sources are resolved the same way ([`resolve_local`], [`resolve_remote`]): each component
//! below the run directory by `lstat`, a link anywhere refused, the file a regular file. The
//! run directory itself is checked by the caller.
//!
//! What this does not cover: a directory swapped for a link between the check and the write
//! (SFTP has no `openat`). Local file opens use `O_NOFOLLOW` and exclusive creation, so the
//! last component is never followed.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use crate::datadir::{PathError, Place};
use crate::transport::run::check_relative;
use crate::transport::{DataDirProblem, SshSession, TransportError, LOCAL};

/// Why a link is refused, in [`TransportError::UnsafePath`].
pub(crate) const LINK_REFUSED: &str = "is a symbolic link; refused";

fn unsafe_path(host: &str, path: impl std::fmt::Display, reason: &str) -> TransportError {
    TransportError::UnsafePath {
        host: host.to_owned(),
        path: path.to_string(),
        reason: reason.to_owned(),
    }
}

/// What one `lstat` found, as far as the checks here care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Missing,
    Dir,
    File,
    Link,
    Other,
}

impl Kind {
    fn of_local(m: &std::fs::Metadata) -> Self {
        let t = m.file_type();
        if t.is_symlink() {
            Kind::Link
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_file() {
            Kind::File
        } else {
            Kind::Other
        }
    }

    pub(crate) fn of_remote(a: &russh_sftp::protocol::FileAttributes) -> Self {
        if a.is_symlink() {
            Kind::Link
        } else if a.is_dir() {
            Kind::Dir
        } else if a.is_regular() {
            Kind::File
        } else {
            Kind::Other
        }
    }
}

/// Directories already checked or created in one run copy.
#[derive(Default)]
struct Checked<P> {
    base: bool,
    dirs: HashSet<P>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The components of `root` below `base`, refused unless `root` is strictly below `base` by
/// its syntax.
fn local_below(base: &Path, root: &Path) -> Result<PathBuf, TransportError> {
    let refuse = || {
        unsafe_path(
            LOCAL,
            root.display(),
            &format!(
                "run directory is not strictly below the data directory {}",
                base.display()
            ),
        )
    };
    let rel = root.strip_prefix(base).map_err(|_| refuse())?;
    if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(refuse());
    }
    if base.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(refuse());
    }
    Ok(rel.to_path_buf())
}

/// A local destination: the base, the run directory, and what was checked so far.
pub(crate) struct LocalDest {
    base: PathBuf,
    root: PathBuf,
    below: PathBuf,
    checked: Mutex<Checked<PathBuf>>,
}

impl LocalDest {
    pub(crate) fn new(base: &Path, root: &Path) -> Result<Self, TransportError> {
        let below = local_below(base, root)?;
        Ok(LocalDest {
            base: base.to_path_buf(),
            root: root.to_path_buf(),
            below,
            checked: Mutex::new(Checked::default()),
        })
    }

    /// The destination of manifest path `rel`, with every directory above it checked or
    /// created, and its final name checked not to be a link (blocking).
    pub(crate) fn prepare(&self, rel: &str) -> Result<PathBuf, TransportError> {
        check_relative(LOCAL, rel)?;
        let dst = self.root.join(rel);
        {
            let mut checked = lock(&self.checked);
            if !checked.base {
                check_local_base(&self.base)?;
                checked.base = true;
            }
            let mut dir = self.base.clone();
            let parents = Path::new(rel).parent().unwrap_or(Path::new(""));
            for c in self.below.components().chain(parents.components()) {
                dir.push(c);
                if checked.dirs.contains(&dir) {
                    continue;
                }
                ensure_local_dir(&dir)?;
                checked.dirs.insert(dir.clone());
            }
        }
        refuse_local_link(&dst)?;
        Ok(dst)
    }
}

impl LocalDest {
    /// Checks, before any file of the run is written, every directory the manifest paths
    /// `rels` need below the base and every `.part` and final name: a link or a
    /// non-directory there refuses the whole run copy, so a refused copy writes nothing.
    /// Nothing is created; what is missing is created later by [`prepare`](Self::prepare).
    /// I/O errors other than a refusal are left to `prepare` (blocking).
    pub(crate) fn precheck<'a>(
        &self,
        rels: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), TransportError> {
        let mut seen = HashSet::new();
        for rel in rels {
            if check_relative(LOCAL, rel).is_err() {
                continue;
            }
            let mut dir = self.base.clone();
            let parents = Path::new(rel).parent().unwrap_or(Path::new(""));
            let mut present = true;
            for c in self.below.components().chain(parents.components()) {
                dir.push(c);
                if !seen.insert(dir.clone()) {
                    continue;
                }
                match local_kind(&dir) {
                    Ok(Kind::Dir) => {}
                    Ok(Kind::Link) => return Err(unsafe_path(LOCAL, dir.display(), LINK_REFUSED)),
                    Ok(Kind::File | Kind::Other) => {
                        return Err(unsafe_path(
                            LOCAL,
                            dir.display(),
                            "is not a directory; refused",
                        ))
                    }
                    Ok(Kind::Missing) | Err(_) => {
                        present = false;
                        break;
                    }
                }
            }
            if present {
                let dst = self.root.join(rel);
                refuse_local_link(&crate::transport::local::part_path(&dst))?;
                refuse_local_link(&dst)?;
            }
        }
        Ok(())
    }
}

fn check_local_base(base: &Path) -> Result<(), TransportError> {
    let problem = match std::fs::metadata(base) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => DataDirProblem::NotADirectory,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DataDirProblem::Missing,
        Err(e) => return Err(TransportError::local(base, "stat", e)),
    };
    Err(TransportError::DataDir {
        host: LOCAL.into(),
        path: base.display().to_string(),
        problem,
    })
}

fn local_kind(path: &Path) -> Result<Kind, TransportError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Kind::of_local(&m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Kind::Missing),
        Err(e) => Err(TransportError::local(path, "lstat", e)),
    }
}

/// `dir` is a real directory (created when missing; its parent is one already).
fn ensure_local_dir(dir: &Path) -> Result<(), TransportError> {
    match local_kind(dir)? {
        Kind::Dir => Ok(()),
        Kind::Link => Err(unsafe_path(LOCAL, dir.display(), LINK_REFUSED)),
        Kind::File | Kind::Other => Err(unsafe_path(
            LOCAL,
            dir.display(),
            "is not a directory; refused",
        )),
        Kind::Missing => match std::fs::create_dir(dir) {
            Ok(()) => Ok(()),
            // Another copy of the run created it meanwhile: check what is there now.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match local_kind(dir)? {
                Kind::Dir => Ok(()),
                Kind::Link => Err(unsafe_path(LOCAL, dir.display(), LINK_REFUSED)),
                _ => Err(unsafe_path(
                    LOCAL,
                    dir.display(),
                    "is not a directory; refused",
                )),
            },
            Err(e) => Err(TransportError::local(dir, "create directory", e)),
        },
    }
}

/// Refuse `path` if it is a symbolic link (anything else, or nothing, is fine here).
pub(crate) fn refuse_local_link(path: &Path) -> Result<(), TransportError> {
    match local_kind(path)? {
        Kind::Link => Err(unsafe_path(LOCAL, path.display(), LINK_REFUSED)),
        _ => Ok(()),
    }
}

/// The local source file for a manifest path below `root`: every component below `root` by
/// `lstat`, a link refused, the file a regular file.
pub fn resolve_local(root: &Path, path: &str) -> Result<PathBuf, TransportError> {
    check_relative(LOCAL, path)?;
    let mut at = root.to_path_buf();
    let mut parts = path.split('/').peekable();
    while let Some(part) = parts.next() {
        at.push(part);
        let last = parts.peek().is_none();
        match local_kind(&at)? {
            Kind::Link => return Err(unsafe_path(LOCAL, at.display(), LINK_REFUSED)),
            Kind::Dir if !last => {}
            Kind::File if last => {}
            Kind::Missing => {
                return Err(TransportError::local(
                    &at,
                    "open",
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ))
            }
            _ if last => return Err(unsafe_path(LOCAL, at.display(), "not a regular file")),
            _ => return Err(unsafe_path(LOCAL, at.display(), "is not a directory")),
        }
    }
    Ok(at)
}

/// `a/b` for remote paths, whatever `a` ends with.
fn remote_join(a: &str, b: &str) -> String {
    format!("{}/{}", a.trim_end_matches('/'), b)
}

/// The components of remote `root` below `base`, refused unless strictly below by syntax.
fn remote_below(host: &str, base: &str, root: &str) -> Result<Vec<String>, TransportError> {
    let refuse = || {
        unsafe_path(
            host,
            root,
            &format!("run directory is not strictly below the data directory {base}"),
        )
    };
    let trimmed = base.trim_end_matches('/');
    let rest = root
        .strip_prefix(trimmed)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(refuse)?;
    let parts: Vec<String> = rest
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    if parts.is_empty()
        || parts.iter().any(|c| c == "." || c == "..")
        || base.split('/').any(|c| c == "..")
    {
        return Err(refuse());
    }
    Ok(parts)
}

/// A remote destination: base, run directory, and what was checked so far in this run copy.
pub(crate) struct RemoteDest {
    base: String,
    root: String,
    below: Vec<String>,
    checked: tokio::sync::Mutex<Checked<String>>,
}

impl RemoteDest {
    pub(crate) fn new(host: &str, base: &str, root: &str) -> Result<Self, TransportError> {
        let below = remote_below(host, base, root)?;
        Ok(RemoteDest {
            base: base.to_owned(),
            root: root.to_owned(),
            below,
            checked: tokio::sync::Mutex::new(Checked::default()),
        })
    }

    /// The destination of manifest path `rel`, with every directory above it checked or
    /// created on the server. (Its final name is checked by the push, beside its open.)
    pub(crate) async fn prepare(
        &self,
        session: &SshSession,
        rel: &str,
    ) -> Result<String, TransportError> {
        let host = session.host();
        check_relative(host, rel)?;
        let dst = remote_join(&self.root, rel);
        let mut checked = self.checked.lock().await;
        let mut chain = Vec::new();
        let mut dir = self.base.trim_end_matches('/').to_owned();
        let parents = rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        for c in self
            .below
            .iter()
            .map(String::as_str)
            .chain(parents.split('/').filter(|c| !c.is_empty()))
        {
            dir = remote_join(&dir, c);
            if !checked.dirs.contains(&dir) {
                chain.push(dir.clone());
            }
        }
        if checked.base && chain.is_empty() {
            return Ok(dst);
        }
        let base = (!checked.base).then_some(self.base.as_str());
        let refs: Vec<&str> = chain.iter().map(String::as_str).collect();
        let (base_kind, kinds) = session.stat_and_lstat(base, &refs).await?;
        if let Some(kind) = base_kind {
            let problem = match kind {
                Kind::Dir => None,
                Kind::Missing => Some(DataDirProblem::Missing),
                _ => Some(DataDirProblem::NotADirectory),
            };
            if let Some(problem) = problem {
                return Err(TransportError::DataDir {
                    host: host.to_owned(),
                    path: self.base.clone(),
                    problem,
                });
            }
            checked.base = true;
        }
        for (dir, kind) in chain.into_iter().zip(kinds) {
            match kind {
                Kind::Dir => {}
                Kind::Link => return Err(unsafe_path(host, &dir, LINK_REFUSED)),
                Kind::Missing => session.mkdir_below(&dir).await?,
                Kind::File | Kind::Other => {
                    return Err(unsafe_path(host, &dir, "is not a directory; refused"))
                }
            }
            checked.dirs.insert(dir);
        }
        Ok(dst)
    }
}

impl RemoteDest {
    /// As [`LocalDest::precheck`], over SFTP: the `lstat`s of every directory the manifest
    /// paths `rels` need, and of every `.part` and final name, sent together (one round
    /// trip). A link or a non-directory there refuses the whole run copy before any file is
    /// written; errors other than a refusal are left to [`prepare`](Self::prepare).
    pub(crate) async fn precheck<'a>(
        &self,
        session: &SshSession,
        rels: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), TransportError> {
        let host = session.host();
        let mut seen = HashSet::new();
        let mut dirs = Vec::new();
        let mut names = Vec::new();
        for rel in rels {
            if check_relative(host, rel).is_err() {
                continue;
            }
            let mut dir = self.base.trim_end_matches('/').to_owned();
            let parents = rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
            for c in self
                .below
                .iter()
                .map(String::as_str)
                .chain(parents.split('/').filter(|c| !c.is_empty()))
            {
                dir = remote_join(&dir, c);
                if seen.insert(dir.clone()) {
                    dirs.push(dir.clone());
                }
            }
            let dst = remote_join(&self.root, rel);
            names.push(crate::transport::part_name(&dst));
            names.push(dst);
        }
        let all: Vec<&str> = dirs.iter().chain(&names).map(String::as_str).collect();
        let kinds = session.lstat_each(&all).await;
        for (i, (path, kind)) in all.iter().zip(kinds).enumerate() {
            let is_dir = i < dirs.len();
            match kind {
                Ok(Kind::Link) => return Err(unsafe_path(host, path, LINK_REFUSED)),
                Ok(Kind::File | Kind::Other) if is_dir => {
                    return Err(unsafe_path(host, path, "is not a directory; refused"))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The remote source file for a manifest path below `root`: every component's `lstat` sent
/// together, a link refused, the file a regular file.
pub(crate) async fn resolve_remote(
    session: &SshSession,
    root: &str,
    path: &str,
) -> Result<String, TransportError> {
    let host = session.host();
    check_relative(host, path)?;
    let mut at = root.trim_end_matches('/').to_owned();
    let mut chain = Vec::new();
    for part in path.split('/') {
        at = remote_join(&at, part);
        chain.push(at.clone());
    }
    let refs: Vec<&str> = chain.iter().map(String::as_str).collect();
    let (_, kinds) = session.stat_and_lstat(None, &refs).await?;
    let n = chain.len();
    for (i, (p, kind)) in chain.iter().zip(kinds).enumerate() {
        let last = i + 1 == n;
        match kind {
            Kind::Link => return Err(unsafe_path(host, p, LINK_REFUSED)),
            Kind::Dir if !last => {}
            Kind::File if last => {}
            Kind::Missing => {
                return Err(TransportError::NotFound {
                    host: host.to_owned(),
                    path: p.clone(),
                    op: "lstat",
                })
            }
            _ if last => return Err(unsafe_path(host, p, "not a regular file")),
            _ => return Err(unsafe_path(host, p, "is not a directory")),
        }
    }
    Ok(at)
}

/// A peer's run directory `dir` read over SFTP: every component from the peer's data
/// directory `base` (exclusive) down to `dir` `lstat`ed, all in one round trip, each a real
/// directory. A symbolic link is refused ([`PathError::Symlink`]) unless the peer lists
/// `link_roots` and the link resolves (by `realpath` on the peer) to a directory strictly
/// inside one of them, as [`crate::datadir::copy_dir`] does for local copies.
pub(crate) async fn check_remote_run_dir(
    session: &SshSession,
    place: &Place,
    base: &Path,
    dir: &Path,
    link_roots: &[PathBuf],
) -> Result<(), PathError> {
    let io = |path: &str, e: TransportError| PathError::Io {
        place: place.clone(),
        path: PathBuf::from(path),
        message: e.to_string(),
    };
    let host = session.host();
    let below =
        remote_below(host, &base.to_string_lossy(), &dir.to_string_lossy()).map_err(|_| {
            PathError::WrongKind {
                place: place.clone(),
                path: dir.to_path_buf(),
                expected: "directory below the data directory",
            }
        })?;
    let mut at = base.to_string_lossy().trim_end_matches('/').to_owned();
    let chain: Vec<String> = below
        .iter()
        .map(|c| {
            at = remote_join(&at, c);
            at.clone()
        })
        .collect();
    let refs: Vec<&str> = chain.iter().map(String::as_str).collect();
    for (path, kind) in chain.iter().zip(session.lstat_each(&refs).await) {
        match kind.map_err(|e| io(path, e))? {
            Kind::Dir => {}
            Kind::Missing => {
                return Err(PathError::Missing {
                    place: place.clone(),
                    path: PathBuf::from(path),
                })
            }
            Kind::Link => {
                let real = session.realpath(path).await.map_err(|e| io(path, e))?;
                if !remote_link_allowed(session, &real, link_roots).await {
                    return Err(PathError::Symlink {
                        place: place.clone(),
                        path: PathBuf::from(path),
                        target: Some(PathBuf::from(real)),
                    });
                }
            }
            Kind::File | Kind::Other => {
                return Err(PathError::WrongKind {
                    place: place.clone(),
                    path: PathBuf::from(path),
                    expected: "directory",
                })
            }
        }
    }
    Ok(())
}

/// Whether `real` (a link's `realpath` on the peer) is a directory strictly inside one of
/// the peer's `link_roots` (each resolved on the peer too).
async fn remote_link_allowed(session: &SshSession, real: &str, link_roots: &[PathBuf]) -> bool {
    for root in link_roots {
        let Ok(root) = session.realpath(&root.to_string_lossy()).await else {
            continue;
        };
        let inside = Path::new(real)
            .strip_prefix(&root)
            .is_ok_and(|rest| !rest.as_os_str().is_empty());
        if inside {
            let (_, kinds) = match session.stat_and_lstat(None, &[real]).await {
                Ok(k) => k,
                Err(_) => return false,
            };
            return kinds.first() == Some(&Kind::Dir);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_directory_must_be_strictly_below_its_base() {
        let ok = local_below(Path::new("/d"), Path::new("/d/2024/run 1")).unwrap();
        assert_eq!(ok, PathBuf::from("2024/run 1"));
        for bad in ["/d", "/d/", "/e/x", "/d/../x", "/dd/x"] {
            assert!(
                local_below(Path::new("/d"), Path::new(bad)).is_err(),
                "{bad}"
            );
        }
        assert_eq!(remote_below("h", "/d/", "/d/a//b").unwrap(), ["a", "b"]);
        for bad in ["/d", "/d/", "/e/x", "/d/../x", "/dd/x", "/d/./x"] {
            assert!(remote_below("h", "/d", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_missing_base_is_not_created_and_links_below_it_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("data");
        let dest = LocalDest::new(&base, &base.join("run")).unwrap();
        let err = dest.prepare("f").unwrap_err();
        assert!(
            matches!(
                err,
                TransportError::DataDir {
                    problem: DataDirProblem::Missing,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("not created"), "{err}");
        assert!(!base.exists());

        std::fs::create_dir(&base).unwrap();
        std::os::unix::fs::symlink(dir.path(), base.join("run")).unwrap();
        let err = dest.prepare("f").unwrap_err();
        assert!(err.to_string().contains(LINK_REFUSED), "{err}");
    }
}
