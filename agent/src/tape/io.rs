//! Blocking byte copies that hash what they move, shared by the backends: every byte that
//! goes to or comes from a tape is hashed in the same pass (DESIGN §3.2).

use std::io::{Read, Write};
use std::path::Path;

use bytes::Bytes;

use crate::checksum::{FileDigest, StreamHasher, READ_CHUNK};

/// Copy `reader` to `writer` (when given), hashing every byte; blocking.
pub(crate) fn copy_hashing(
    reader: &mut impl Read,
    mut writer: Option<&mut dyn Write>,
) -> std::io::Result<FileDigest> {
    let mut hasher = StreamHasher::new().map_err(std::io::Error::other)?;
    loop {
        let mut buf = vec![0u8; READ_CHUNK];
        let n = crate::checksum::read_full(reader, &mut buf)?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        if let Some(w) = writer.as_deref_mut() {
            w.write_all(&buf)?;
        }
        hasher
            .blocking_update(Bytes::from(buf))
            .map_err(std::io::Error::other)?;
    }
    hasher.blocking_finish().map_err(std::io::Error::other)
}

/// fsync a directory so a rename inside it is durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
