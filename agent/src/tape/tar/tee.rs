//! One read of each source file, teed to every drive (DESIGN §3.2: never read a file twice
//! where once will do). A feeder thread reads each file once in [`READ_CHUNK`] pieces,
//! hashes it once ([`StreamHasher`]), and hands the same [`Bytes`] to every drive's writer
//! through a bounded channel of [`TEE_DEPTH`] pieces (at most 16 MiB queued per drive), so
//! the slowest drive paces the read and memory stays bounded.
//!
//! The stream per drive is, for each archive: per file its data pieces then `FileEnd`
//! (`Abort` instead when the source failed or differs from the manifest), then
//! `ArchiveEnd`. A drive whose write fails mid-archive drains the rest of that archive, so
//! it stays in step and may write the archive again from disk on another tape (a
//! changer's tape change: the only re-read). A drive that gives up drops its channel; the
//! feeder carries on with the others.

use std::io::Read;
use std::sync::mpsc::{Receiver, SyncSender};

use bytes::Bytes;

use crate::checksum::{read_full, StreamHasher, READ_CHUNK};
use crate::tape::{key_of, RunRef, TapeError, TapeFile};

/// Pieces queued per drive: 16 × 1 MiB.
pub(super) const TEE_DEPTH: usize = 16;

/// What the feeder sends a drive.
#[derive(Debug)]
pub(super) enum Piece {
    Data(Bytes),
    FileEnd,
    Abort,
    ArchiveEnd,
}

/// One drive's end of the tee.
#[derive(Debug)]
pub(super) struct Feed {
    rx: Receiver<Piece>,
    /// Unread rest of the current piece.
    current: Bytes,
    /// Archives fully taken from the feed (written or skipped).
    pub next_archive: usize,
    /// Inside an archive (its `ArchiveEnd` not yet taken).
    in_archive: bool,
}

/// The channels of a put: the feeder's senders and each drive's [`Feed`].
pub(super) fn channels(drives: usize) -> (Vec<SyncSender<Piece>>, Vec<Feed>) {
    (0..drives)
        .map(|_| {
            let (tx, rx) = std::sync::mpsc::sync_channel(TEE_DEPTH);
            (
                tx,
                Feed {
                    rx,
                    current: Bytes::new(),
                    next_archive: 0,
                    in_archive: false,
                },
            )
        })
        .unzip()
}

fn broken(what: &str) -> std::io::Error {
    std::io::Error::other(format!("source feed: {what}"))
}

impl Feed {
    /// A reader of the next file's bytes (EOF at its `FileEnd`).
    pub fn file(&mut self) -> FileReader<'_> {
        self.in_archive = true;
        FileReader {
            feed: self,
            done: false,
        }
    }

    /// Take the `ArchiveEnd` after an archive's last file.
    pub fn end_archive(&mut self) -> std::io::Result<()> {
        match self.rx.recv() {
            Ok(Piece::ArchiveEnd) => {
                self.in_archive = false;
                self.next_archive += 1;
                Ok(())
            }
            Ok(other) => Err(broken(&format!(
                "expected the end of an archive, got {other:?}"
            ))),
            Err(_) => Err(broken("the feeder stopped")),
        }
    }

    /// After a failed write: drop the rest of the current archive, if any is left.
    pub fn skip_archive(&mut self) {
        self.current = Bytes::new();
        if !self.in_archive {
            return;
        }
        loop {
            match self.rx.recv() {
                Ok(Piece::ArchiveEnd) => {
                    self.next_archive += 1;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        self.in_archive = false;
    }
}

/// One file's bytes from a [`Feed`].
pub(super) struct FileReader<'a> {
    feed: &'a mut Feed,
    done: bool,
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.done {
                return Ok(0);
            }
            if !self.feed.current.is_empty() {
                let n = buf.len().min(self.feed.current.len());
                buf[..n].copy_from_slice(&self.feed.current.split_to(n));
                return Ok(n);
            }
            match self.feed.rx.recv() {
                Ok(Piece::Data(b)) => self.feed.current = b,
                Ok(Piece::FileEnd) => self.done = true,
                Ok(Piece::Abort) => return Err(broken("the source file could not be read")),
                Ok(Piece::ArchiveEnd) => {
                    // Keep the stream in step: this archive is over.
                    self.feed.in_archive = false;
                    self.feed.next_archive += 1;
                    return Err(broken("archive ended inside a file"));
                }
                Err(_) => return Err(broken("the feeder stopped")),
            }
        }
    }
}

/// The feeder: every file of every archive read once, hashed once, sent to every drive
/// still listening. Fails on a source that cannot be read or differs from the manifest
/// (after telling the drives to abort).
pub(super) fn feed(
    backend: &str,
    run: &RunRef,
    archives: &[Vec<TapeFile>],
    txs: Vec<SyncSender<Piece>>,
) -> Result<(), TapeError> {
    let mut live = vec![true; txs.len()];
    /// Send to every drive still listening; whether any is.
    fn send(txs: &[SyncSender<Piece>], live: &mut [bool], p: &dyn Fn() -> Piece) -> bool {
        for (tx, alive) in txs.iter().zip(live.iter_mut()) {
            if *alive && tx.send(p()).is_err() {
                *alive = false;
            }
        }
        live.iter().any(|l| *l)
    }
    for archive in archives {
        for f in archive {
            match read_one(backend, run, f, &mut |b: &Bytes| {
                send(&txs, &mut live, &|| Piece::Data(b.clone()))
            }) {
                Ok(true) => {}
                // Nobody listens any more: the drives' errors tell why.
                Ok(false) => return Ok(()),
                Err(e) => {
                    send(&txs, &mut live, &|| Piece::Abort);
                    return Err(e);
                }
            }
            if !send(&txs, &mut live, &|| Piece::FileEnd) {
                return Ok(());
            }
        }
        if !send(&txs, &mut live, &|| Piece::ArchiveEnd) {
            return Ok(());
        }
    }
    Ok(())
}

/// Read `f` once, passing each piece to `out` (false: nobody listens, stop); check it
/// against the manifest. `Ok(false)` when stopped early.
fn read_one(
    backend: &str,
    run: &RunRef,
    f: &TapeFile,
    out: &mut dyn FnMut(&Bytes) -> bool,
) -> Result<bool, TapeError> {
    let file = std::fs::File::open(&f.local)
        .map_err(|e| TapeError::io(backend, "opening source", &f.local, e))?;
    let mut src = file.take(f.size);
    let checksum = |source| TapeError::Checksum {
        backend: backend.to_owned(),
        source,
    };
    let mut hasher = StreamHasher::new().map_err(checksum)?;
    loop {
        let mut buf = vec![0u8; READ_CHUNK];
        let n = read_full(&mut src, &mut buf)
            .map_err(|e| TapeError::io(backend, "reading source", &f.local, e))?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        let b = Bytes::from(buf);
        if !out(&b) {
            return Ok(false);
        }
        hasher.blocking_update(b).map_err(checksum)?;
    }
    let d = hasher.blocking_finish().map_err(checksum)?;
    let (sha, md5) = (d.sha256_hex(), d.md5_hex());
    if d.size != f.size || sha != f.sha256 || md5 != f.md5 {
        return Err(TapeError::Mismatch {
            backend: backend.to_owned(),
            key: key_of(&run.name, &f.path),
            what: "source file while writing to tape",
            expected: format!("{} bytes sha256 {}", f.size, f.sha256),
            found: format!("{} bytes sha256 {sha}", d.size),
        });
    }
    Ok(true)
}
