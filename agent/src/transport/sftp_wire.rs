//! The SFTP bulk data path on the wire: a codec for the data packets and a multiplexer that
//! shares one SFTP channel between russh-sftp and that codec.
//!
//! Why: russh-sftp 3.0.1 (de)serialises the payload of every `SSH_FXP_WRITE` and
//! `SSH_FXP_DATA` one byte at a time through serde, which cost Ferry more than twice the CPU
//! of OpenSSH's `sftp` per GiB. The bulk packets are therefore framed here, and russh-sftp
//! keeps everything else (init, open, stat, setstat, fsync, rename, close, …), whose
//! packets are small.
//!
//! ## Layout
//!
//! - **Codec** (pure functions, unit-tested): [`encode_write_header`], [`encode_read`],
//!   [`FrameDecoder`] (length-prefixed frames out of a byte stream, oversized lengths
//!   refused), [`frame_id`] and [`parse_reply`] (`SSH_FXP_STATUS` / `SSH_FXP_DATA`).
//!   Every length read from the network is checked; malformed input is a [`WireError`],
//!   never a panic.
//! - **[`SftpMux`]**: owns the SSH channel. Three tasks per channel:
//!
//! ```text
//!   russh-sftp ──duplex──▶ uplink ──frames──┐
//!   SftpMux::write / ::read ────────────────┴─▶ writer ──▶ SSH channel
//!   SSH channel ──▶ reader ─┬─ id ≥ 2^31: the waiting request's oneshot
//!                           └─ any other:  duplex ──▶ russh-sftp
//! ```
//!
//! Request ids: russh-sftp counts up from 1; the multiplexer's ids have the top bit set
//! ([`OUR_IDS`]), so the two never meet (russh-sftp would need 2^31 requests on one channel).
//!
//! No per-byte work on the data: a write's header and the first bytes of its payload go out
//! in one SSH packet, the rest of the payload is handed to the channel straight from its
//! [`Bytes`]; a `DATA` reply's payload is a [`Bytes::slice`] of the buffer the channel was
//! read into.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};

/// Largest SFTP packet accepted or sent (the value given to russh-sftp as well). OpenSSH's
/// own limit is 256 KiB.
pub(crate) const MAX_FRAME: usize = 512 * 1024;

/// Request ids used by the multiplexer: the top bit set.
pub(crate) const OUR_IDS: u32 = 0x8000_0000;

const FXP_VERSION: u8 = 2;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_STATUS: u8 = 101;
const FXP_DATA: u8 = 103;

/// `SSH_FX_OK`.
pub(crate) const FX_OK: u32 = 0;
/// `SSH_FX_EOF`.
pub(crate) const FX_EOF: u32 = 1;

/// What went wrong on the data path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A packet announced a length above [`MAX_FRAME`] (or zero).
    #[error("SFTP packet length {len} is outside 1..={max}")]
    BadLength { len: u64, max: usize },
    /// A packet ended before one of its fields.
    #[error("truncated SFTP packet: {field} needs {needed} bytes, {available} left")]
    Truncated {
        field: &'static str,
        needed: usize,
        available: usize,
    },
    /// A reply of a type the request cannot have.
    #[error("unexpected SFTP packet type {kind} in reply to request {id}")]
    UnexpectedReply { kind: u8, id: u32 },
    /// A `DATA` reply longer than the read asked for.
    #[error("SFTP DATA reply to request {id} carries {got} bytes; {asked} were asked for")]
    TooMuchData { id: u32, got: usize, asked: u32 },
    /// A request we would send is larger than [`MAX_FRAME`] (a programming error).
    #[error("SFTP request of {len} bytes exceeds the limit of {max}")]
    RequestTooLarge { len: usize, max: usize },
    /// The channel or the connection ended.
    #[error("SFTP channel closed ({reason})")]
    Closed { reason: String },
    /// No reply within the request timeout.
    #[error("no SFTP reply within {after:?}")]
    Timeout { after: Duration },
}

impl WireError {
    /// Whether a new attempt (on a new connection) may succeed. A malformed reply ends the
    /// channel, so it is retryable like a lost connection; an oversized request is not.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, WireError::RequestTooLarge { .. })
    }
}

// ---- codec -------------------------------------------------------------------------------

/// The header of an `SSH_FXP_WRITE` of `data_len` bytes: `u32 length, u8 6, u32 id,
/// string handle, u64 offset, u32 data_len` (the data follows).
pub fn encode_write_header(
    id: u32,
    handle: &[u8],
    offset: u64,
    data_len: usize,
) -> Result<BytesMut, WireError> {
    let n = u32::try_from(data_len).map_err(|_| WireError::RequestTooLarge {
        len: data_len,
        max: MAX_FRAME,
    })?;
    handle_offset_request(FXP_WRITE, id, handle, offset, n, data_len)
}

/// A whole `SSH_FXP_READ`: `u32 length, u8 5, u32 id, string handle, u64 offset, u32 len`.
pub fn encode_read(id: u32, handle: &[u8], offset: u64, len: u32) -> Result<Bytes, WireError> {
    handle_offset_request(FXP_READ, id, handle, offset, len, 0).map(BytesMut::freeze)
}

/// `u32 length, u8 kind, u32 id, string handle, u64 offset, u32 n`, with `trailing` more
/// bytes (a write's data) counted in the length but not included.
fn handle_offset_request(
    kind: u8,
    id: u32,
    handle: &[u8],
    offset: u64,
    n: u32,
    trailing: usize,
) -> Result<BytesMut, WireError> {
    let head = 1 + 4 + 4 + handle.len() + 8 + 4;
    let body = head.saturating_add(trailing);
    if body > MAX_FRAME {
        return Err(WireError::RequestTooLarge {
            len: body,
            max: MAX_FRAME,
        });
    }
    let mut b = BytesMut::with_capacity(4 + head);
    b.put_u32(body as u32);
    b.put_u8(kind);
    b.put_u32(id);
    b.put_u32(handle.len() as u32);
    b.put_slice(handle);
    b.put_u64(offset);
    b.put_u32(n);
    Ok(b)
}

/// Splits a byte stream into SFTP packets (`u32 length` + body).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

/// Bytes reserved at a time for incoming data (a few 255 KiB replies).
const READ_RESERVE: usize = 1 << 20;

impl FrameDecoder {
    /// Append received bytes (used by tests; the reader task reads into [`Self::spare`]).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to read into, with room for at least 64 KiB more.
    fn spare(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < 64 * 1024 {
            self.buf.reserve(READ_RESERVE);
        }
        &mut self.buf
    }

    /// The next whole packet, length prefix included, or `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, WireError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if len == 0 || len as usize > MAX_FRAME {
            return Err(WireError::BadLength {
                len: len.into(),
                max: MAX_FRAME,
            });
        }
        let total = 4 + len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(total).freeze()))
    }

    /// Bytes received but not yet returned as a packet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// The request id of a packet (length prefix included); `None` for `SSH_FXP_VERSION`, which
/// has none, or a packet too short to hold one.
pub fn frame_id(frame: &[u8]) -> Option<u32> {
    match frame {
        [_, _, _, _, kind, a, b, c, d, ..] if *kind != FXP_VERSION => {
            Some(u32::from_be_bytes([*a, *b, *c, *d]))
        }
        _ => None,
    }
}

/// A reply to one of the multiplexer's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `SSH_FXP_STATUS`.
    Status { id: u32, code: u32, message: String },
    /// `SSH_FXP_DATA`: the payload, sharing the received buffer.
    Data { id: u32, data: Bytes },
}

/// Cursor over a packet body with checked reads.
struct Fields {
    body: Bytes,
}

impl Fields {
    fn need(&self, field: &'static str, n: usize) -> Result<(), WireError> {
        if self.body.remaining() < n {
            return Err(WireError::Truncated {
                field,
                needed: n,
                available: self.body.remaining(),
            });
        }
        Ok(())
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        self.need(field, 1)?;
        Ok(self.body.get_u8())
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        self.need(field, 4)?;
        Ok(self.body.get_u32())
    }

    fn string(&mut self, field: &'static str) -> Result<Bytes, WireError> {
        let len = self.u32(field)? as usize;
        self.need(field, len)?;
        Ok(self.body.split_to(len))
    }
}

/// Parse a `STATUS` or `DATA` packet (length prefix included). A `STATUS` from an SFTP v3
/// server may stop after the code (the message and language fields came later).
pub fn parse_reply(frame: Bytes) -> Result<Reply, WireError> {
    let mut f = Fields { body: frame };
    let len = f.u32("length")? as usize;
    if len != f.body.remaining() {
        return Err(WireError::Truncated {
            field: "packet",
            needed: len,
            available: f.body.remaining(),
        });
    }
    let kind = f.u8("type")?;
    let id = f.u32("request id")?;
    match kind {
        FXP_STATUS => {
            let code = f.u32("status code")?;
            let message = if f.body.has_remaining() {
                String::from_utf8_lossy(&f.string("status message")?).into_owned()
            } else {
                String::new()
            };
            Ok(Reply::Status { id, code, message })
        }
        FXP_DATA => Ok(Reply::Data {
            id,
            data: f.string("data")?,
        }),
        kind => Err(WireError::UnexpectedReply { kind, id }),
    }
}

// ---- multiplexer -------------------------------------------------------------------------

type Waiters = HashMap<u32, oneshot::Sender<Result<Reply, WireError>>>;

/// Requests waiting for a reply, and why the channel ended once it has.
#[derive(Default)]
struct Pending {
    waiters: Mutex<Waiters>,
    ended: Mutex<Option<WireError>>,
}

impl Pending {
    fn waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ended(&self) -> Option<WireError> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Record why the channel ended (the first reason wins) and fail every waiter.
    fn end(&self, reason: WireError) {
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if ended.is_none() {
            *ended = Some(reason.clone());
        }
        drop(ended);
        for (_, tx) in self.waiters().drain() {
            let _ = tx.send(Err(reason.clone()));
        }
    }
}

/// What the writer task sends on the channel.
enum Outgoing {
    /// A whole packet (from russh-sftp, or a read request).
    Frame(Bytes),
    /// A write request: header, then payload.
    Write { header: BytesMut, data: Bytes },
    /// russh-sftp closed its side: send EOF on the channel.
    Eof,
}

/// One SFTP channel shared by russh-sftp (through a duplex stream) and the data path.
pub struct SftpMux {
    out: mpsc::Sender<Outgoing>,
    pending: Arc<Pending>,
    next_id: AtomicU32,
    timeout: Duration,
}

/// A request sent, its reply not yet awaited. Dropping it forgets the request.
pub struct Waiting {
    id: u32,
    rx: oneshot::Receiver<Result<Reply, WireError>>,
    pending: Arc<Pending>,
    timeout: Duration,
}

impl Waiting {
    /// The reply, or why there is none.
    pub async fn reply(mut self) -> Result<Reply, WireError> {
        let pending = self.pending.clone();
        match tokio::time::timeout(self.timeout, &mut self.rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(pending.ended().unwrap_or_else(|| WireError::Closed {
                reason: "request dropped".into(),
            })),
            Err(_) => Err(WireError::Timeout {
                after: self.timeout,
            }),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.pending.waiters().remove(&self.id);
    }
}

/// Capacity of the duplex pipe between the multiplexer and russh-sftp.
const DUPLEX_CAPACITY: usize = 1 << 20;

impl SftpMux {
    /// Take over an SFTP channel. Returns the multiplexer and the stream to give russh-sftp
    /// (`RawSftpSession::new_with_config`). `packet_size` is the channel's largest SSH
    /// packet; `timeout` bounds each data request.
    pub fn start<R, W>(
        mut reader: R,
        mut writer: W,
        packet_size: usize,
        timeout: Duration,
    ) -> (SftpMux, DuplexStream)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (ours, theirs) = tokio::io::duplex(DUPLEX_CAPACITY);
        let (mut from_sftp, mut to_sftp) = tokio::io::split(ours);
        let (out, mut rx) = mpsc::channel::<Outgoing>(64);
        let pending = Arc::new(Pending::default());

        // writer: the only task that writes on the channel.
        let writer_pending = pending.clone();
        tokio::spawn(async move {
            let mut first = Vec::with_capacity(packet_size.max(64));
            let result = async {
                while let Some(msg) = rx.recv().await {
                    match msg {
                        Outgoing::Frame(b) => writer.write_all(&b).await?,
                        Outgoing::Write { header, data } => {
                            // The header and the payload's first bytes fill one SSH packet.
                            let n = packet_size.saturating_sub(header.len()).min(data.len());
                            first.clear();
                            first.extend_from_slice(&header);
                            first.extend_from_slice(&data[..n]);
                            writer.write_all(&first).await?;
                            if n < data.len() {
                                writer.write_all(&data[n..]).await?;
                            }
                        }
                        Outgoing::Eof => {
                            writer.shutdown().await?;
                            break;
                        }
                    }
                }
                Ok::<_, std::io::Error>(())
            }
            .await;
            if let Err(e) = result {
                writer_pending.end(WireError::Closed {
                    reason: format!("writing: {e}"),
                });
            }
        });

        // uplink: russh-sftp's packets to the writer, one whole packet at a time.
        let uplink = out.clone();
        tokio::spawn(async move {
            let mut decoder = FrameDecoder::default();
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        if uplink.send(Outgoing::Frame(frame)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "malformed packet from russh-sftp");
                        break;
                    }
                }
                match from_sftp.read_buf(decoder.spare()).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = uplink.send(Outgoing::Eof).await;
        });

        // reader: replies to their requester.
        let reader_pending = pending.clone();
        tokio::spawn(async move {
            let mut decoder = FrameDecoder::default();
            let reason = loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        match frame_id(&frame) {
                            Some(id) if id & OUR_IDS != 0 => {
                                let waiter = reader_pending.waiters().remove(&id);
                                match waiter {
                                    Some(tx) => {
                                        let _ = tx.send(parse_reply(frame));
                                    }
                                    None => tracing::debug!(id, "reply to a forgotten request"),
                                }
                            }
                            // russh-sftp's: if it is gone, its replies have no reader.
                            _ => {
                                let _ = to_sftp.write_all(&frame).await;
                            }
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => break e,
                }
                match reader.read_buf(decoder.spare()).await {
                    Ok(0) => {
                        break WireError::Closed {
                            reason: "end of channel".into(),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        break WireError::Closed {
                            reason: format!("reading: {e}"),
                        }
                    }
                }
            };
            if decoder.buffered() > 0 {
                tracing::debug!(bytes = decoder.buffered(), "SFTP channel ended mid-packet");
            }
            reader_pending.end(reason);
            // russh-sftp sees the end of its stream too.
            let _ = to_sftp.shutdown().await;
        });

        let mux = SftpMux {
            out,
            pending,
            next_id: AtomicU32::new(0),
            timeout,
        };
        (mux, theirs)
    }

    fn register(&self) -> Result<Waiting, WireError> {
        if let Some(reason) = self.pending.ended() {
            return Err(reason);
        }
        let id = OUR_IDS | (self.next_id.fetch_add(1, Ordering::Relaxed) & !OUR_IDS);
        let (tx, rx) = oneshot::channel();
        self.pending.waiters().insert(id, tx);
        Ok(Waiting {
            id,
            rx,
            pending: self.pending.clone(),
            timeout: self.timeout,
        })
    }

    /// Queue a packet for the writer. A channel that takes nothing (no window from the
    /// server) fills the queue: waiting for room is bounded by the request timeout too.
    async fn send(&self, msg: Outgoing) -> Result<(), WireError> {
        match tokio::time::timeout(self.timeout, self.out.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.pending.ended().unwrap_or_else(|| WireError::Closed {
                reason: "writer stopped".into(),
            })),
            Err(_) => Err(WireError::Timeout {
                after: self.timeout,
            }),
        }
    }

    /// Send `SSH_FXP_WRITE` of `data` at `offset`; await the returned [`Waiting`] for the
    /// status. Waits while the writer's queue is full.
    pub async fn write(
        &self,
        handle: &[u8],
        offset: u64,
        data: Bytes,
    ) -> Result<Waiting, WireError> {
        let waiting = self.register()?;
        let header = encode_write_header(waiting.id, handle, offset, data.len())?;
        self.send(Outgoing::Write { header, data }).await?;
        Ok(waiting)
    }

    /// Send `SSH_FXP_READ` of `len` bytes at `offset`; await the returned [`Waiting`] for
    /// the data (or an `EOF` status).
    pub async fn read(&self, handle: &[u8], offset: u64, len: u32) -> Result<Waiting, WireError> {
        let waiting = self.register()?;
        let frame = encode_read(waiting.id, handle, offset, len)?;
        self.send(Outgoing::Frame(frame)).await?;
        Ok(waiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: u32, code: u32, message: Option<&str>) -> Vec<u8> {
        let mut body = vec![FXP_STATUS];
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(&code.to_be_bytes());
        if let Some(m) = message {
            body.extend_from_slice(&(m.len() as u32).to_be_bytes());
            body.extend_from_slice(m.as_bytes());
            body.extend_from_slice(&2u32.to_be_bytes());
            body.extend_from_slice(b"en");
        }
        framed(&body)
    }

    fn data(id: u32, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![FXP_DATA];
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        body.extend_from_slice(payload);
        framed(&body)
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn write_header_plus_payload_is_a_well_formed_write() {
        let payload = b"hello world";
        let h = encode_write_header(0x8000_0007, b"\0\0\0\x01", 1 << 33, payload.len()).unwrap();
        let mut packet = h.to_vec();
        packet.extend_from_slice(payload);
        let mut f = Fields {
            body: Bytes::from(packet),
        };
        assert_eq!(f.u32("len").unwrap() as usize, f.body.remaining());
        assert_eq!(f.u8("type").unwrap(), FXP_WRITE);
        assert_eq!(f.u32("id").unwrap(), 0x8000_0007);
        assert_eq!(&f.string("handle").unwrap()[..], b"\0\0\0\x01");
        assert_eq!(f.body.get_u64(), 1 << 33);
        assert_eq!(&f.string("data").unwrap()[..], payload);
        assert!(!f.body.has_remaining());
    }

    #[test]
    fn read_request_layout() {
        let r = encode_read(9, b"hh", 42, 255 * 1024).unwrap();
        assert_eq!(
            &r[..],
            &framed(
                &[
                    &[FXP_READ][..],
                    &9u32.to_be_bytes(),
                    &2u32.to_be_bytes(),
                    b"hh",
                    &42u64.to_be_bytes(),
                    &(255u32 * 1024).to_be_bytes(),
                ]
                .concat()
            )[..]
        );
    }

    #[test]
    fn oversized_requests_are_refused() {
        let err = encode_write_header(1, b"h", 0, MAX_FRAME).unwrap_err();
        assert!(matches!(err, WireError::RequestTooLarge { .. }));
        assert!(!err.is_retryable());
        assert!(encode_read(1, &vec![0; MAX_FRAME], 0, 1).is_err());
    }

    #[test]
    fn decoder_round_trips_replies_split_anywhere() {
        let mut stream = data(OUR_IDS | 3, b"payload bytes");
        stream.extend(status(OUR_IDS | 4, FX_EOF, Some("End of file")));
        stream.extend(status(5, FX_OK, None));
        for cut in 0..stream.len() {
            let mut d = FrameDecoder::default();
            let mut frames = Vec::new();
            for piece in [&stream[..cut], &stream[cut..]] {
                d.extend(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    frames.push(f);
                }
            }
            assert_eq!(frames.len(), 3, "cut at {cut}");
            assert_eq!(d.buffered(), 0);
            assert_eq!(frame_id(&frames[0]), Some(OUR_IDS | 3));
            assert_eq!(
                parse_reply(frames[0].clone()).unwrap(),
                Reply::Data {
                    id: OUR_IDS | 3,
                    data: Bytes::from_static(b"payload bytes")
                }
            );
            assert_eq!(
                parse_reply(frames[1].clone()).unwrap(),
                Reply::Status {
                    id: OUR_IDS | 4,
                    code: FX_EOF,
                    message: "End of file".into()
                }
            );
            // An SFTP v3 status may end after the code.
            assert_eq!(
                parse_reply(frames[2].clone()).unwrap(),
                Reply::Status {
                    id: 5,
                    code: FX_OK,
                    message: String::new()
                }
            );
        }
    }

    #[test]
    fn oversized_and_zero_lengths_are_rejected() {
        let mut d = FrameDecoder::default();
        d.extend(&((MAX_FRAME as u32) + 1).to_be_bytes());
        assert!(matches!(
            d.next_frame(),
            Err(WireError::BadLength { len, .. }) if len == MAX_FRAME as u64 + 1
        ));
        let mut d = FrameDecoder::default();
        d.extend(&u32::MAX.to_be_bytes());
        assert!(d.next_frame().is_err());
        let mut d = FrameDecoder::default();
        d.extend(&[0, 0, 0, 0, 1]);
        assert!(matches!(
            d.next_frame(),
            Err(WireError::BadLength { len: 0, .. })
        ));
    }

    #[test]
    fn truncated_replies_are_typed_errors() {
        // A DATA whose string claims more bytes than the packet holds.
        let mut body = vec![FXP_DATA];
        body.extend_from_slice(&7u32.to_be_bytes());
        body.extend_from_slice(&1000u32.to_be_bytes());
        body.extend_from_slice(b"short");
        assert!(matches!(
            parse_reply(Bytes::from(framed(&body))),
            Err(WireError::Truncated { field: "data", .. })
        ));
        // Prefixes of a valid status, presented as packets of that size, fail cleanly where
        // they cut a field: before the code ends, or inside the message.
        let full = status(1, 4, Some("Failure"));
        let cuts = (0..9).chain(10..9 + 4 + "Failure".len());
        for n in cuts {
            let body = &full[4..4 + n];
            assert!(
                parse_reply(Bytes::from(framed(body))).is_err(),
                "prefix {n}"
            );
        }
        // A length prefix that disagrees with the bytes present.
        let mut bad = data(1, b"abc");
        bad.pop();
        assert!(parse_reply(Bytes::from(bad)).is_err());
        assert!(parse_reply(Bytes::new()).is_err());
    }

    #[test]
    fn other_reply_types_and_versions() {
        let mut handle = vec![102u8];
        handle.extend_from_slice(&(OUR_IDS | 1).to_be_bytes());
        handle.extend_from_slice(&1u32.to_be_bytes());
        handle.push(b'h');
        assert_eq!(
            parse_reply(Bytes::from(framed(&handle))),
            Err(WireError::UnexpectedReply {
                kind: 102,
                id: OUR_IDS | 1
            })
        );
        let version = framed(&[&[FXP_VERSION][..], &3u32.to_be_bytes()].concat());
        assert_eq!(frame_id(&version), None);
        assert_eq!(frame_id(&[0, 0, 0, 1, FXP_STATUS]), None);
    }

    /// The multiplexer against a scripted peer: its requests reach the channel whole, replies
    /// reach the right requester, and other packets pass through to the duplex unchanged.
    #[tokio::test]
    async fn mux_routes_replies_by_id_and_passes_the_rest_through() {
        let (client_side, mut server) = tokio::io::duplex(1 << 20);
        let (rd, wr) = tokio::io::split(client_side);
        let (mux, mut sftp) = SftpMux::start(rd, wr, 1000, Duration::from_secs(5));

        // A packet from "russh-sftp" goes out unchanged.
        let open = framed(&[&[3u8][..], &1u32.to_be_bytes(), b"rest"].concat());
        sftp.write_all(&open).await.unwrap();
        let w = mux
            .write(b"HH", 7, Bytes::from(vec![0xAB; 3000]))
            .await
            .unwrap();
        let r = mux.read(b"HH", 0, 10).await.unwrap();

        let mut d = FrameDecoder::default();
        let mut frames = Vec::new();
        while frames.len() < 3 {
            server.read_buf(&mut d.buf).await.unwrap();
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
        }
        // The uplink task runs on its own: russh-sftp's packet may come first or last.
        let of_type = |t: u8| frames.iter().find(|f| f[4] == t).unwrap().clone();
        let (passed, write, read) = (of_type(3), of_type(FXP_WRITE), of_type(FXP_READ));
        assert!(passed[..] == open[..]);
        let (wid, rid) = (frame_id(&write).unwrap(), frame_id(&read).unwrap());
        assert_eq!(write.len(), 4 + 1 + 4 + 6 + 8 + 4 + 3000);
        assert!(write[write.len() - 3000..].iter().all(|&b| b == 0xAB));
        assert!(wid & OUR_IDS != 0 && rid & OUR_IDS != 0 && wid != rid);

        // Replies out of order, with one for russh-sftp in between.
        let theirs = status(1, FX_OK, Some("ok"));
        server.write_all(&data(rid, b"0123456789")).await.unwrap();
        server.write_all(&theirs).await.unwrap();
        server.write_all(&status(wid, FX_OK, None)).await.unwrap();
        assert!(matches!(
            w.reply().await.unwrap(),
            Reply::Status { code: FX_OK, .. }
        ));
        assert_eq!(
            r.reply().await.unwrap(),
            Reply::Data {
                id: rid,
                data: Bytes::from_static(b"0123456789")
            }
        );
        let mut got = vec![0; theirs.len()];
        sftp.read_exact(&mut got).await.unwrap();
        assert_eq!(got, theirs);

        // The peer goes away: waiting requests fail as closed, new ones are refused.
        let pending = mux.read(b"HH", 10, 10).await.unwrap();
        drop(server);
        assert!(matches!(
            pending.reply().await,
            Err(WireError::Closed { .. })
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(mux.read(b"HH", 20, 10).await.is_err());
    }

    #[tokio::test]
    async fn a_malformed_reply_fails_the_waiters_with_its_reason() {
        let (client_side, mut server) = tokio::io::duplex(1 << 16);
        let (rd, wr) = tokio::io::split(client_side);
        let (mux, _sftp) = SftpMux::start(rd, wr, 1000, Duration::from_secs(5));
        let r = mux.read(b"H", 0, 10).await.unwrap();
        server
            .write_all(&((MAX_FRAME as u32) * 2).to_be_bytes())
            .await
            .unwrap();
        assert!(matches!(r.reply().await, Err(WireError::BadLength { .. })));
    }

    #[tokio::test]
    async fn a_peer_that_takes_nothing_times_out_the_sender_instead_of_blocking_it() {
        let (client_side, _server) = tokio::io::duplex(1 << 14);
        let (rd, wr) = tokio::io::split(client_side);
        let (mux, _sftp) = SftpMux::start(rd, wr, 1000, Duration::from_millis(100));
        let mut kept = Vec::new();
        let err = loop {
            match mux.write(b"H", 0, Bytes::from(vec![0; 4096])).await {
                Ok(w) => kept.push(w),
                Err(e) => break e,
            }
            assert!(kept.len() < 1000, "the writer queue never filled");
        };
        assert!(matches!(err, WireError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let (client_side, _server) = tokio::io::duplex(1 << 16);
        let (rd, wr) = tokio::io::split(client_side);
        let (mux, _sftp) = SftpMux::start(rd, wr, 1000, Duration::from_millis(100));
        let r = mux.read(b"H", 0, 10).await.unwrap();
        assert!(matches!(r.reply().await, Err(WireError::Timeout { .. })));
    }
}
