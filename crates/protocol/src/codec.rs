//! Framing: split typed messages (`tag`, Int32 length, body) off a byte buffer.
//!
//! Decoding is incremental: `Ok(None)` means "need more bytes" and leaves the buffer
//! untouched. The length word is checked against the limit *before* anything is
//! reserved, and at most [`RESERVE_AHEAD_MAX`] is reserved for a frame not yet
//! received, so a hostile length cannot make us allocate. After an `Err` the stream
//! has lost message sync: report and close.

use crate::buf::write_frame;
use crate::error::ProtocolError;
use bytes::{Buf, Bytes, BytesMut};

/// Limit for messages that can be long (Query, Parse, Bind, CopyData, FunctionCall):
/// `MaxAllocSize - 1` = 1 GB - 2, as `PQ_LARGE_MESSAGE_LIMIT` in
/// <https://github.com/postgres/postgres/blob/REL_15_STABLE/src/include/libpq/libpq.h>
/// (`MaxAllocSize` is 1 GB - 1, `src/include/utils/memutils.h`).
pub const PQ_LARGE_MESSAGE_LIMIT: u32 = 0x3fff_ffff - 1;

/// Limit for messages that should be short (Sync, Describe, Close, Execute, …):
/// `PQ_SMALL_MESSAGE_LIMIT` in the same `libpq.h`.
pub const PQ_SMALL_MESSAGE_LIMIT: u32 = 10_000;

/// Limit for password and SASL messages: `PG_MAX_AUTH_TOKEN_LENGTH` in
/// <https://github.com/postgres/postgres/blob/REL_15_STABLE/src/include/libpq/auth.h>.
pub const PG_MAX_AUTH_TOKEN_LENGTH: u32 = 65_535;

/// Largest startup packet body (after the length word):
/// `MAX_STARTUP_PACKET_LENGTH` in
/// <https://github.com/postgres/postgres/blob/REL_15_STABLE/src/include/libpq/pqcomm.h>.
pub const MAX_STARTUP_PACKET_LENGTH: u32 = 10_000;

/// Header of a typed message: type byte + Int32 length.
pub const HEADER_LEN: usize = 5;

/// Most room reserved ahead for the rest of a partial frame. A length word is only a
/// claim: buffers grow with the bytes that arrive, so a peer that announces a 1 GB
/// message and sends a few bytes holds 64 KiB, not 1 GB.
pub const RESERVE_AHEAD_MAX: usize = 64 * 1024;

/// One message as it came off the wire: its type byte and the body after the length
/// word. Forward it untouched with [`Frame::encode`] when the pooler need not look in.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Frame");
        d.field("tag", &char::from(self.tag));
        // `p` carries passwords: never log its body.
        if self.tag == b'p' {
            d.field(
                "body",
                &format_args!("<{} bytes redacted>", self.body.len()),
            );
        } else {
            d.field("body", &self.body);
        }
        d.finish()
    }
}

impl Frame {
    pub fn new(tag: u8, body: impl Into<Bytes>) -> Frame {
        Frame {
            tag,
            body: body.into(),
        }
    }

    /// Write the frame back in wire form.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(HEADER_LEN + self.body.len());
        write_frame(dst, self.tag, |d| d.extend_from_slice(&self.body));
    }

    /// Size on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }
}

/// The per-type limit PostgreSQL's backend applies to what clients send
/// (`SocketBackend()` in `src/backend/tcop/postgres.c`, and `PG_MAX_AUTH_TOKEN_LENGTH`
/// for `p` in `src/backend/libpq/auth.c`). `None` for types no client may send.
pub fn frontend_message_limit(tag: u8) -> Option<u32> {
    match tag {
        b'Q' | b'F' | b'B' | b'P' | b'd' => Some(PQ_LARGE_MESSAGE_LIMIT),
        b'X' | b'C' | b'D' | b'E' | b'H' | b'S' | b'c' | b'f' => Some(PQ_SMALL_MESSAGE_LIMIT),
        b'p' => Some(PG_MAX_AUTH_TOKEN_LENGTH),
        _ => None,
    }
}

/// Which limits a [`FrameDecoder`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameLimit {
    /// PostgreSQL's own per-type limits for client messages; unknown types are
    /// rejected from the type byte alone, before any length is trusted.
    Frontend,
    /// One limit (on the length word, which counts itself) for every type.
    Uniform(u32),
}

/// Incremental decoder of typed frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameDecoder {
    limit: FrameLimit,
}

impl FrameDecoder {
    /// For bytes from a client: PostgreSQL's per-type limits.
    pub fn frontend() -> FrameDecoder {
        FrameDecoder {
            limit: FrameLimit::Frontend,
        }
    }

    /// For bytes from a server: [`PQ_LARGE_MESSAGE_LIMIT`] for every type.
    pub fn backend() -> FrameDecoder {
        FrameDecoder::with_limit(FrameLimit::Uniform(PQ_LARGE_MESSAGE_LIMIT))
    }

    pub fn with_limit(limit: FrameLimit) -> FrameDecoder {
        FrameDecoder { limit }
    }

    pub fn limit(&self) -> FrameLimit {
        self.limit
    }

    /// Split the next whole frame off `src`; `Ok(None)` when more bytes are needed.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        let total = match self.frame_len(src)? {
            FrameLen::Whole(total) => total,
            FrameLen::Partial(total) => {
                // The announced length is within the limit, but not yet sent: reserve
                // a bounded part of it.
                if let Some(total) = total {
                    src.reserve((total - src.len()).min(RESERVE_AHEAD_MAX));
                }
                return Ok(None);
            }
        };
        let tag = src[0];
        src.advance(HEADER_LEN);
        let body = src.split_to(total - HEADER_LEN).freeze();
        Ok(Some(Frame { tag, body }))
    }

    /// How long the frame at the start of `src` is on the wire (type byte, length and
    /// body), checked against this decoder's limits, and whether all of it is there.
    /// Lets a forwarder pass whole frames on without splitting them off one by one.
    pub fn frame_len(&self, src: &[u8]) -> Result<FrameLen, ProtocolError> {
        let Some(&tag) = src.first() else {
            return Ok(FrameLen::Partial(None));
        };
        let limit = match self.limit {
            FrameLimit::Frontend => {
                frontend_message_limit(tag).ok_or(ProtocolError::UnknownMessageType { tag })?
            }
            FrameLimit::Uniform(limit) => limit,
        };
        if src.len() < HEADER_LEN {
            return Ok(FrameLen::Partial(None));
        }
        let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]);
        if len < 4 {
            return Err(ProtocolError::InvalidLength { len });
        }
        if len > limit {
            return Err(ProtocolError::MessageTooLarge { tag, len, limit });
        }
        // len <= limit <= u32::MAX, which fits usize on every target we build for.
        let total = 1 + len as usize;
        Ok(if src.len() < total {
            FrameLen::Partial(Some(total))
        } else {
            FrameLen::Whole(total)
        })
    }
}

/// What [`FrameDecoder::frame_len`] found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameLen {
    /// A whole frame of this many bytes (type byte and length included).
    Whole(usize),
    /// Not all of it yet; its total length once the header is there.
    Partial(Option<usize>),
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::backend()
    }
}
