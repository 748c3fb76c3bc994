//! Streaming checksums (SHA-256, MD5 and ADLER32 in one pass) and the run digest.
//!
//! DESIGN §3.2: every file is hashed with SHA-256 (the primary checksum) and MD5 (what tape
//! systems and JLab stub files record), both **in the same pass** that reads the bytes for
//! sending. Hashing inline in a copy loop halves its speed, so the two hashes run on their
//! own threads:
//!
//! ```text
//!   copy loop ──Bytes──▶ [bounded channel] ──▶ thread "ferry-sha256" ──▶ [u8; 32] + ADLER32
//!             └─Bytes──▶ [bounded channel] ──▶ thread "ferry-md5"    ──▶ [u8; 16]
//! ```
//!
//! ADLER32 is what grid storage elements keep of every file (Rucio's and FTS3's default), so
//! a copy at one is checked against it. It costs a fraction of SHA-256's time and rides on
//! the SHA-256 thread (the `adler2` crate), so MD5's thread, the slower one, is untouched.
//!
//! A chunk is a [`Bytes`] handed to both channels by reference count, never copied. The
//! channels are bounded ([`CHANNEL_DEPTH`] chunks), so a slow hasher slows the copy instead of
//! buffering the file in memory.
//!
//! - [`StreamHasher`]: feed chunks with [`StreamHasher::update`] (async) or
//!   [`StreamHasher::blocking_update`], then [`StreamHasher::finish`] → [`FileDigest`].
//! - [`hash_file`]: the same pipeline over a local file (used to re-hash a copy at rest).
//! - [`run_digest`]: SHA-256 over a run's canonical manifest.
//!
//! SHA-256 comes from the `sha2` crate with its `asm` feature (SHA-NI where the CPU has it).
//! MD5 comes from AWS-LC's assembly through [`Md5`] (module `fast_md5`), about 27 % faster
//! than the `md-5` crate's; MD5 is the one hash that cannot be spread over cores, so it sets
//! the pace of a copy.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use bytes::Bytes;
use sha2::digest::{self, Digest};
use sha2::{Sha256, Sha512};
use tokio::sync::mpsc;

mod fast_md5;
pub use fast_md5::Md5;

/// Chunks queued per hashing thread before the producer waits.
pub const CHANNEL_DEPTH: usize = 16;

/// Read size used by [`hash_file`] and the local copy.
pub const READ_CHUNK: usize = 1 << 20;

/// Errors of the checksum module.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    /// A hashing thread could not be started or died before delivering its digest.
    #[error("hashing thread {thread} failed: {reason}")]
    Thread {
        thread: &'static str,
        reason: String,
    },
    /// Reading the file to hash failed.
    #[error("cannot read {path} for hashing: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A run digest over no files was asked for (DESIGN §3.2: an empty run is an error).
    #[error("a run digest needs at least one file; the manifest is empty")]
    EmptyRun,
    /// A manifest path would make the canonical manifest ambiguous, or appears twice.
    #[error("manifest path {path:?} is not allowed in a run digest: {reason}")]
    BadManifestPath { path: String, reason: &'static str },
}

impl ChecksumError {
    /// Whether doing the same thing again may succeed (an I/O error on read may be transient).
    pub fn is_retryable(&self) -> bool {
        match self {
            ChecksumError::Read { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ),
            ChecksumError::Thread { .. } => true,
            ChecksumError::EmptyRun | ChecksumError::BadManifestPath { .. } => false,
        }
    }
}

/// Size and checksums of one file's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileDigest {
    /// Number of bytes hashed.
    pub size: u64,
    /// SHA-256 of the bytes.
    pub sha256: [u8; 32],
    /// MD5 of the bytes.
    pub md5: [u8; 16],
    /// ADLER32 of the bytes (what storage elements record).
    pub adler32: u32,
}

impl FileDigest {
    /// SHA-256 as lowercase hex (the catalogue's `sha256` field).
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// MD5 as lowercase hex (the catalogue's `md5` field).
    pub fn md5_hex(&self) -> String {
        hex::encode(self.md5)
    }

    /// ADLER32 as 8 lowercase hex digits (the catalogue's `adler32` field, and how
    /// `gfal-sum` and XRootD print it).
    pub fn adler32_hex(&self) -> String {
        adler32_hex(self.adler32)
    }

    /// The digest of zero bytes.
    pub fn empty() -> Self {
        FileDigest {
            size: 0,
            sha256: Sha256::digest([]).into(),
            md5: Md5::digest([]).into(),
            adler32: 1,
        }
    }
}

impl fmt::Debug for FileDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileDigest")
            .field("size", &self.size)
            .field("sha256", &self.sha256_hex())
            .field("md5", &self.md5_hex())
            .field("adler32", &self.adler32_hex())
            .finish()
    }
}

impl fmt::Display for FileDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "size={} sha256={} md5={} adler32={}",
            self.size,
            self.sha256_hex(),
            self.md5_hex(),
            self.adler32_hex()
        )
    }
}

/// ADLER32 as 8 lowercase hex digits, zero-padded.
pub fn adler32_hex(value: u32) -> String {
    format!("{value:08x}")
}

/// What one hashing thread computes: fed chunks in order, then finished into `Out`.
trait Sink: Default + 'static {
    type Out: Send + 'static;
    fn feed(&mut self, chunk: &[u8]);
    fn done(self) -> Self::Out;
}

/// Any `digest` hash with an `N`-byte output.
#[derive(Default)]
struct Hash<D, const N: usize>(D);

impl<D, const N: usize> Sink for Hash<D, N>
where
    D: Digest + Default + Send + 'static,
    [u8; N]: From<digest::Output<D>>,
{
    type Out = [u8; N];
    fn feed(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }
    fn done(self) -> [u8; N] {
        <[u8; N]>::from(self.0.finalize())
    }
}

/// SHA-256 and ADLER32 of the same bytes on one thread.
#[derive(Default)]
struct Sha256Adler {
    sha256: Sha256,
    adler: adler2::Adler32,
}

impl Sink for Sha256Adler {
    type Out = ([u8; 32], u32);
    fn feed(&mut self, chunk: &[u8]) {
        self.sha256.update(chunk);
        self.adler.write_slice(chunk);
    }
    fn done(self) -> ([u8; 32], u32) {
        (self.sha256.finalize().into(), self.adler.checksum())
    }
}

/// ADLER32 of a byte slice (for tests and small in-memory buffers).
pub fn adler32_of(bytes: &[u8]) -> u32 {
    let mut a = adler2::Adler32::new();
    a.write_slice(bytes);
    a.checksum()
}

/// One hashing thread: its input channel and the handle that yields the digest.
struct Worker<T> {
    name: &'static str,
    tx: mpsc::Sender<Bytes>,
    handle: JoinHandle<T>,
}

impl<T: Send + 'static> Worker<T> {
    fn spawn<S>(name: &'static str) -> Result<Self, ChecksumError>
    where
        S: Sink<Out = T>,
    {
        let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
        let handle = std::thread::Builder::new()
            .name(format!("ferry-{name}"))
            .spawn(move || {
                let mut sink = S::default();
                while let Some(chunk) = rx.blocking_recv() {
                    sink.feed(&chunk);
                }
                sink.done()
            })
            .map_err(|e| ChecksumError::Thread {
                thread: name,
                reason: e.to_string(),
            })?;
        Ok(Worker { name, tx, handle })
    }

    fn dead(&self) -> ChecksumError {
        ChecksumError::Thread {
            thread: self.name,
            reason: "stopped before the end of the stream".into(),
        }
    }

    /// Close the input and wait for the digest (blocks until the queue is drained).
    fn join(self) -> Result<T, ChecksumError> {
        let name = self.name;
        drop(self.tx);
        self.handle.join().map_err(|_| ChecksumError::Thread {
            thread: name,
            reason: "panicked".into(),
        })
    }
}

/// SHA-256 (with ADLER32) and MD5 of a byte stream, each computed on its own thread.
///
/// Feed chunks in order; the digests cover exactly the concatenation of the chunks.
pub struct StreamHasher {
    sha256: Worker<([u8; 32], u32)>,
    md5: Worker<[u8; 16]>,
    size: u64,
}

impl StreamHasher {
    /// Start the two hashing threads.
    pub fn new() -> Result<Self, ChecksumError> {
        Ok(StreamHasher {
            sha256: Worker::spawn::<Sha256Adler>("sha256")?,
            md5: Worker::spawn::<Hash<Md5, 16>>("md5")?,
            size: 0,
        })
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Queue a chunk for both hashers, waiting (asynchronously) while their queues are full.
    pub async fn update(&mut self, chunk: Bytes) -> Result<(), ChecksumError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.size += chunk.len() as u64;
        self.sha256
            .tx
            .send(chunk.clone())
            .await
            .map_err(|_| self.sha256.dead())?;
        self.md5.tx.send(chunk).await.map_err(|_| self.md5.dead())
    }

    /// Like [`update`](Self::update), for synchronous code: call it from a plain or
    /// `spawn_blocking` thread. Called on an async task it panics (tokio's `blocking_send`),
    /// rather than stalling the executor.
    pub fn blocking_update(&mut self, chunk: Bytes) -> Result<(), ChecksumError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.size += chunk.len() as u64;
        self.sha256
            .tx
            .blocking_send(chunk.clone())
            .map_err(|_| self.sha256.dead())?;
        self.md5
            .tx
            .blocking_send(chunk)
            .map_err(|_| self.md5.dead())
    }

    /// Wait for both threads to drain their queues and return the digest (blocking).
    pub fn blocking_finish(self) -> Result<FileDigest, ChecksumError> {
        let size = self.size;
        let (sha256, adler32) = self.sha256.join()?;
        let md5 = self.md5.join()?;
        Ok(FileDigest {
            size,
            sha256,
            md5,
            adler32,
        })
    }

    /// [`blocking_finish`](Self::blocking_finish) off the async executor.
    pub async fn finish(self) -> Result<FileDigest, ChecksumError> {
        tokio::task::spawn_blocking(move || self.blocking_finish())
            .await
            .map_err(|e| ChecksumError::Thread {
                thread: "finish",
                reason: e.to_string(),
            })?
    }
}

/// Hash a local file with the two-thread pipeline. Blocking: from async code, run it with
/// `tokio::task::spawn_blocking`.
pub fn hash_file(path: &Path) -> Result<FileDigest, ChecksumError> {
    let read_err = |source| ChecksumError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mut hasher = StreamHasher::new()?;
    loop {
        let mut buf = vec![0u8; READ_CHUNK];
        let n = read_full(&mut file, &mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        hasher.blocking_update(Bytes::from(buf))?;
    }
    hasher.blocking_finish()
}

/// [`hash_file`] plus the file's SHA-512, in the same read: the bytes go to a third hashing
/// thread beside SHA-256 and MD5. This is what a copy recorded by cax needs to be adopted:
/// its `checksum` is a [`dirhash`] over per-file SHA-512s, the manifest Ferry's SHA-256s, and
/// both come from one read of the copy.
pub fn hash_file_with_sha512(path: &Path) -> Result<(FileDigest, [u8; 64]), ChecksumError> {
    let read_err = |source| ChecksumError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mut hasher = StreamHasher::new()?;
    let sha512 = Worker::<[u8; 64]>::spawn::<Hash<Sha512, 64>>("sha512")?;
    loop {
        let mut buf = vec![0u8; READ_CHUNK];
        let n = read_full(&mut file, &mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        let chunk = Bytes::from(buf);
        sha512
            .tx
            .blocking_send(chunk.clone())
            .map_err(|_| sha512.dead())?;
        hasher.blocking_update(chunk)?;
    }
    let digest = hasher.blocking_finish()?;
    Ok((digest, sha512.join()?))
}

/// cax's directory checksum (`checksumdir.dirhash(dir, 'sha512')`, as cax's `AddChecksum`
/// recorded it): the SHA-512 of every file as lowercase hex, the hex digests sorted, and the
/// SHA-512 of their concatenation (UTF-8), as lowercase hex. File names and layout are not
/// part of it. `files` are the per-file SHA-512s, in any order.
pub fn dirhash(files: &[[u8; 64]]) -> String {
    let mut hexes: Vec<String> = files.iter().map(hex::encode).collect();
    hexes.sort_unstable();
    let mut outer = Sha512::new();
    for h in &hexes {
        outer.update(h.as_bytes());
    }
    hex::encode(outer.finalize())
}

/// Whether `checksum` has the shape of a cax [`dirhash`] (128 hex digits) rather than a
/// Ferry run digest (64).
pub fn is_dirhash(checksum: &str) -> bool {
    checksum.len() == 128 && checksum.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Read until `buf` is full or end of file; returns the number of bytes read.
pub(crate) fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// One line of a run's manifest as the run digest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestLine<'a> {
    /// Path relative to the run directory, `/`-separated.
    pub path: &'a str,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: &'a str,
}

/// [`run_digest`] of owned `(path, size, sha256 hex)` lines, as measured per file.
pub fn run_digest_of(lines: &[(String, u64, String)]) -> Result<String, ChecksumError> {
    let lines: Vec<ManifestLine<'_>> = lines
        .iter()
        .map(|(path, size, sha256)| ManifestLine {
            path,
            size: *size,
            sha256,
        })
        .collect();
    run_digest(&lines)
}

/// The run digest: SHA-256 over lines `path \0 size \0 sha256 \n`, sorted by path (bytewise),
/// as lowercase hex. Covers names and layout, not only contents.
///
/// An empty manifest, a duplicated path, or a path containing NUL or newline is an error.
pub fn run_digest(files: &[ManifestLine<'_>]) -> Result<String, ChecksumError> {
    if files.is_empty() {
        return Err(ChecksumError::EmptyRun);
    }
    let mut sorted: Vec<&ManifestLine<'_>> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    let mut hasher = Sha256::new();
    let mut previous: Option<&str> = None;
    for line in sorted {
        let bad = |reason| ChecksumError::BadManifestPath {
            path: line.path.to_owned(),
            reason,
        };
        if line.path.is_empty() {
            return Err(bad("empty path"));
        }
        if line.path.contains(['\0', '\n']) {
            return Err(bad("contains NUL or newline"));
        }
        if previous == Some(line.path) {
            return Err(bad("listed twice"));
        }
        previous = Some(line.path);
        hasher.update(line.path.as_bytes());
        hasher.update(b"\0");
        hasher.update(line.size.to_string().as_bytes());
        hasher.update(b"\0");
        hasher.update(line.sha256.to_ascii_lowercase().as_bytes());
        hasher.update(b"\n");
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(chunks: &[&[u8]]) -> FileDigest {
        let mut h = StreamHasher::new().unwrap();
        for c in chunks {
            h.blocking_update(Bytes::copy_from_slice(c)).unwrap();
        }
        h.blocking_finish().unwrap()
    }

    #[test]
    fn dirhash_is_checksumdirs_sha512_of_sorted_file_digests() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b"), b"bbb").unwrap();
        std::fs::write(dir.path().join("a"), vec![b'a'; 100_000]).unwrap();
        let mut sums = Vec::new();
        for name in ["b", "a"] {
            let path = dir.path().join(name);
            let (d, sha512) = hash_file_with_sha512(&path).unwrap();
            assert_eq!(d, hash_file(&path).unwrap());
            sums.push(sha512);
        }
        // python: checksumdir.dirhash(dir, 'sha512') (hashlib, as in reference/cax.md §4)
        let want = "584cfde4f3c85bb39856688567aa5136e6bb3a8a534ea854542f8627d6e7bd46994b6d9986bf11993618ee67ce1ff88b34f6bfecd92f728be1a3e4766df0c6b7";
        assert_eq!(dirhash(&sums), want);
        sums.reverse();
        assert_eq!(dirhash(&sums), want);
        assert!(is_dirhash(want));
        assert!(dirhash(&[]).starts_with("cf83e135"));
        assert!(!is_dirhash(&"0".repeat(64)));
    }

    #[test]
    fn known_vectors_empty_and_abc() {
        let empty = digest_of(&[]);
        assert_eq!(empty.size, 0);
        assert_eq!(
            empty.sha256_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(empty.md5_hex(), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(empty.adler32, 1);
        assert_eq!(empty.adler32_hex(), "00000001");
        assert_eq!(empty, FileDigest::empty());

        let abc = digest_of(&[b"a", b"", b"bc"]);
        assert_eq!(abc.size, 3);
        assert_eq!(
            abc.sha256_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(abc.md5_hex(), "900150983cd24fb0d6963f7d28e17f72");
        // python: zlib.adler32(b"abc")
        assert_eq!(abc.adler32, 0x024d_0127);
    }

    #[test]
    fn adler32_of_wikipedia_is_the_published_value_in_one_pass_with_the_others() {
        // The worked example of Wikipedia's "Adler-32" article.
        let d = digest_of(&[b"Wiki", b"pedia"]);
        assert_eq!(d.adler32, 0x11E6_0398);
        assert_eq!(d.adler32_hex(), "11e60398");
        assert_eq!(adler32_of(b"Wikipedia"), 0x11E6_0398);
        assert_eq!(adler32_of(b""), 1);
        assert_eq!(adler32_hex(1), "00000001");
    }

    #[test]
    fn one_mib_of_a_matches_reference_digests_whatever_the_chunking() {
        // Reference values: `head -c 1048576 /dev/zero | tr '\0' a | sha256sum` / `md5sum`.
        let data = vec![b'a'; 1 << 20];
        let whole = digest_of(&[&data]);
        let pieces: Vec<&[u8]> = data.chunks(4097).collect();
        let chunked = digest_of(&pieces);
        assert_eq!(whole, chunked);
        assert_eq!(whole.size, 1 << 20);
        assert_eq!(
            whole.sha256_hex(),
            "9bc1b2a288b26af7257a36277ae3816a7d4f16e89c1e7e77d0a5c48bad62b360"
        );
        assert_eq!(whole.md5_hex(), "7202826a7791073fe2787f0c94603278");
        // python: hex(zlib.adler32(b"a" * 1048576))
        assert_eq!(whole.adler32, 0xd15e_5af1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_update_and_finish_match_blocking() {
        let mut h = StreamHasher::new().unwrap();
        for i in 0..100u8 {
            h.update(Bytes::from(vec![i; 10_000])).await.unwrap();
        }
        let d = h.finish().await.unwrap();
        let mut all = Vec::new();
        for i in 0..100u8 {
            all.extend(std::iter::repeat_n(i, 10_000));
        }
        assert_eq!(d.size, 1_000_000);
        assert_eq!(d.sha256, <[u8; 32]>::from(Sha256::digest(&all)));
    }

    #[test]
    fn hash_file_matches_in_memory_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(3 * READ_CHUNK + 7)).map(|i| (i * 31) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let d = hash_file(&path).unwrap();
        assert_eq!(d, digest_of(&[&data]));
        let err = hash_file(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, ChecksumError::Read { .. }));
        assert!(!err.is_retryable());
    }

    #[test]
    fn run_digest_is_order_independent_and_covers_names() {
        let sha = "ab".repeat(32);
        let a = ManifestLine {
            path: "raw/000.evio",
            size: 10,
            sha256: &sha,
        };
        let b = ManifestLine {
            path: "raw/001.evio",
            size: 0,
            sha256: &sha,
        };
        let d1 = run_digest(&[a, b]).unwrap();
        let d2 = run_digest(&[b, a]).unwrap();
        assert_eq!(d1, d2);
        // Reference: printf 'raw/000.evio\0 10\0 <sha>\n...' without spaces, through sha256sum.
        let mut canonical = Vec::new();
        canonical.extend_from_slice(format!("raw/000.evio\x0010\x00{sha}\n").as_bytes());
        canonical.extend_from_slice(format!("raw/001.evio\x000\x00{sha}\n").as_bytes());
        assert_eq!(d1, hex::encode(Sha256::digest(&canonical)));
        let renamed = ManifestLine {
            path: "raw/002.evio",
            ..b
        };
        assert_ne!(d1, run_digest(&[a, renamed]).unwrap());
    }

    #[test]
    fn run_digest_rejects_empty_duplicate_and_ambiguous_manifests() {
        assert!(matches!(run_digest(&[]), Err(ChecksumError::EmptyRun)));
        let sha = "00".repeat(32);
        let a = ManifestLine {
            path: "x",
            size: 1,
            sha256: &sha,
        };
        assert!(matches!(
            run_digest(&[a, a]),
            Err(ChecksumError::BadManifestPath { .. })
        ));
        let nl = ManifestLine { path: "x\ny", ..a };
        assert!(matches!(
            run_digest(&[nl]),
            Err(ChecksumError::BadManifestPath { .. })
        ));
    }
}
