//! A minimal synchronous MongoDB wire-protocol client for the harness's own needs.
//!
//! The harness must probe readiness (`hello`) and create the first user without a tokio
//! runtime: `MongoServer::start` is called from plain `#[test]`s and from inside
//! `#[tokio::test]`s alike, and a runtime cannot be blocked on from within another. So this
//! sends one `OP_MSG` (opcode 2013, a single kind-0 section) over a `std::net::TcpStream`
//! and reads one reply. It is not a driver: no auth, no cursors, no retries.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bson::{doc, Bson, Document};

const OP_MSG: i32 = 2013;
const HEADER_LEN: usize = 16;
/// Replies larger than this are refused (mongod's own limit is 48 MB).
const MAX_REPLY: usize = 48 * 1024 * 1024;

/// Runs `command` against database `db` on `address` and returns the reply document.
///
/// A reply with `ok` other than 1 is an error quoting the server's `errmsg`.
pub fn run_command(
    address: SocketAddr,
    db: &str,
    mut command: Document,
    timeout: Duration,
) -> anyhow::Result<Document> {
    static REQUEST_ID: AtomicI32 = AtomicI32::new(1);
    command.insert("$db", db);
    let mut body = Vec::new();
    command
        .to_writer(&mut body)
        .context("encoding the command as BSON")?;

    let length = i32::try_from(HEADER_LEN + 4 + 1 + body.len()).context("command too large")?;
    let mut message = Vec::with_capacity(HEADER_LEN + 5 + body.len());
    message.extend_from_slice(&length.to_le_bytes());
    message.extend_from_slice(&REQUEST_ID.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    message.extend_from_slice(&0i32.to_le_bytes()); // responseTo
    message.extend_from_slice(&OP_MSG.to_le_bytes());
    message.extend_from_slice(&0u32.to_le_bytes()); // flagBits
    message.push(0); // section kind 0: body
    message.extend_from_slice(&body);

    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&message)?;

    let mut length = [0u8; 4];
    stream.read_exact(&mut length)?;
    let length = usize::try_from(i32::from_le_bytes(length))
        .map_err(|_| anyhow!("negative reply length"))?;
    if !(HEADER_LEN + 5..=MAX_REPLY).contains(&length) {
        bail!("implausible reply length {length}");
    }
    let mut reply = vec![0u8; length - 4];
    stream.read_exact(&mut reply)?;
    // reply = requestID(4) responseTo(4) opCode(4) flagBits(4) kind(1) document
    let opcode = i32::from_le_bytes([reply[8], reply[9], reply[10], reply[11]]);
    if opcode != OP_MSG {
        bail!("reply has opcode {opcode}, expected OP_MSG ({OP_MSG})");
    }
    if reply[16] != 0 {
        bail!("reply's first section has kind {}, expected 0", reply[16]);
    }
    let document = Document::from_reader(&reply[17..]).context("decoding the reply document")?;
    if !reply_ok(&document) {
        bail!(
            "{} failed: {}",
            command
                .keys()
                .next()
                .map(String::as_str)
                .unwrap_or("command"),
            document
                .get_str("errmsg")
                .map(str::to_owned)
                .unwrap_or_else(|_| document.to_string())
        );
    }
    Ok(document)
}

/// `hello` on `admin`: answered by any MongoDB-wire server without authentication.
pub fn hello(address: SocketAddr, timeout: Duration) -> anyhow::Result<Document> {
    run_command(address, "admin", doc! { "hello": 1 }, timeout)
}

fn reply_ok(document: &Document) -> bool {
    match document.get("ok") {
        Some(Bson::Double(ok)) => *ok == 1.0,
        Some(Bson::Int32(ok)) => *ok == 1,
        Some(Bson::Int64(ok)) => *ok == 1,
        Some(Bson::Boolean(ok)) => *ok,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_field_in_all_its_encodings() {
        assert!(reply_ok(&doc! { "ok": 1.0 }));
        assert!(reply_ok(&doc! { "ok": 1 }));
        assert!(reply_ok(&doc! { "ok": 1_i64 }));
        assert!(!reply_ok(&doc! { "ok": 0.0, "errmsg": "no" }));
        assert!(!reply_ok(&doc! {}));
    }

    #[test]
    fn refused_connection_is_an_error() {
        let port = crate::ports::free_port().unwrap();
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(hello(address, Duration::from_millis(500)).is_err());
    }
}
