//! The `tar` backend, papertape style: tar archives written to tape drives, N copies in
//! parallel (one task per drive), verified by sampled MD5 of every copy in parallel.
//!
//! Tape layout. A fresh tape gets tape file 0: a small tar holding `FERRY-CATALOGUE.json`
//! (the tape's label and everything the write session puts on it), then one tar archive per
//! part of the batch (a batch is split into archives of at most `batch_size` bytes). A put
//! onto a tape that already holds data appends its archives and then a fresh catalogue
//! file, so file 0 names the tape and the last catalogue lists all of it; the label store
//! on disk is the index Ferry works from.
//!
//! Positioning is always absolute: `mt -f DEV rewind`, then `mt -f DEV fsf N` — never a
//! relative move from wherever the drive happens to be. A tape Ferry does not know is never
//! written: a device without a label in the store must read back empty at file 0.
//!
//! Failure: a put returns a receipt only when every copy of every archive was written and
//! the label store updated. A drive that does not load fails the whole put; so does a
//! full tape, unless a changer (`mtx`) can load the next tape, on which the archive that
//! did not fit is written again. Partly written data beyond the store's end is
//! overwritten by the next put.
//!
//! Every put, verify and retrieve holds the label store's cross-process lock.
//!
//! - `config.rs`  — [`TarConfig`] from the site map
//! - `labels.rs`  — the label store (JSON file, written atomically)
//! - `lock.rs`    — the label store's `flock`, with a timeout naming the holder
//! - `changer.rs` — the `mtx` robot: `status` parsing, `load`, `unload`
//! - `mount.rs`   — which tape goes into which drive (changer or operator)
//! - `tee.rs`     — one read (and hash) of each source file, teed to every drive
//! - `drive.rs`   — one drive: `mt` positioning, writing/reading one tape file
//! - `backend.rs` — [`TarBackend`], the [`TapeBackend`](super::TapeBackend) impl
//! - `verify.rs`  — sampled / full MD5 verification of every copy, in parallel

mod backend;
mod changer;
mod config;
mod drive;
mod labels;
mod lock;
mod mount;
mod tee;
mod verify;

pub use backend::TarBackend;
pub use changer::{parse_status as parse_mtx_status, DriveState, MtxStatus};
pub use config::TarConfig;
pub use labels::{LabelStore, Member, TapeFileEntry, TapeFileKind, TapeRecord};

/// Name of the catalogue member in a catalogue tape file.
pub const CATALOGUE_MEMBER: &str = "FERRY-CATALOGUE.json";
