//! Reading whole protocol frames from any [`AsyncRead`]: the server side reads backend
//! frames with it, the client side frontend frames and startup packets.
//!
//! [`FramedReader::next`] and [`FramedReader::next_startup`] are cancel-safe: bytes
//! read before a `select!` drops the future stay in the buffer for the next call.

use bytes::BytesMut;
use pgherd_protocol::codec::RESERVE_AHEAD_MAX;
use pgherd_protocol::{Frame, FrameDecoder, FrameLen, ProtocolError, StartupPacket};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// How much room a read asks for when the buffer is full: PgBouncer's default
/// `pkt_buf` (4096) doubled, enough for a typical result batch in one syscall.
pub const DEFAULT_READ_CHUNK: usize = 8 * 1024;

/// The most a lean reader takes per read while it holds no buffer.
const LEAN_READ_MAX: usize = 4096;

/// An idle buffer larger than this (after a large message) is given back, so a
/// long-lived connection does not keep its largest message's allocation.
const SHRINK_ABOVE: usize = 64 * 1024;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FramedError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Malformed or oversized input; the stream has lost message sync.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The peer closed the connection in the middle of a message.
    #[error("connection closed in the middle of a message ({buffered} bytes pending)")]
    UnexpectedEof { buffered: usize },
}

/// Frames off an `AsyncRead`, buffered, with the limits of a [`FrameDecoder`].
#[derive(Debug)]
pub struct FramedReader<R> {
    inner: R,
    buf: BytesMut,
    decoder: FrameDecoder,
    chunk: usize,
    bytes_read: u64,
    /// Hold no buffer between messages (see [`FramedReader::lean`]).
    lean: bool,
}

impl<R: AsyncRead + Unpin> FramedReader<R> {
    /// A reader with [`DEFAULT_READ_CHUNK`]. Nothing is allocated until the first read.
    pub fn new(inner: R, decoder: FrameDecoder) -> Self {
        FramedReader::with_read_chunk(inner, decoder, DEFAULT_READ_CHUNK)
    }

    /// A reader that asks for `chunk` bytes of room per read (at least 64): smaller
    /// chunks save memory on many idle connections, larger ones syscalls on busy ones.
    pub fn with_read_chunk(inner: R, decoder: FrameDecoder, chunk: usize) -> Self {
        FramedReader {
            inner,
            buf: BytesMut::new(),
            decoder,
            chunk: chunk.max(64),
            bytes_read: 0,
            lean: false,
        }
    }

    /// Give the buffer back whenever it is empty, and wait for data without one (a
    /// read lands on the stack first): an idle client then holds no read buffer, at
    /// the price of one small allocation per message.
    pub fn lean(mut self) -> Self {
        self.lean = true;
        self
    }

    /// Continue with bytes already read from `inner` (e.g. after a TLS handshake
    /// or when handing a connection over).
    pub fn with_buffer(inner: R, decoder: FrameDecoder, buffered: BytesMut, chunk: usize) -> Self {
        let mut r = FramedReader::with_read_chunk(inner, decoder, chunk);
        r.buf = buffered;
        r
    }

    /// The next typed frame; `Ok(None)` on a clean EOF (between messages).
    /// Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<Frame>, FramedError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if !self.fill().await? {
                return self.eof();
            }
        }
    }

    /// The next frame already in the buffer, without reading: lets a forwarder pass on
    /// everything that arrived in one write.
    pub fn next_buffered(&mut self) -> Result<Option<Frame>, FramedError> {
        Ok(self.decoder.decode(&mut self.buf)?)
    }

    /// Wait until at least one whole frame is buffered; `Ok(false)` on a clean EOF
    /// (between messages). Cancel-safe.
    pub async fn wait_frame(&mut self) -> Result<bool, FramedError> {
        loop {
            match self.decoder.frame_len(&self.buf)? {
                FrameLen::Whole(_) => return Ok(true),
                // Room for (a bounded part of) the rest: the announced length is within
                // the limit, but memory follows the bytes that arrive.
                FrameLen::Partial(Some(total)) => self
                    .buf
                    .reserve((total - self.buf.len()).min(RESERVE_AHEAD_MAX)),
                FrameLen::Partial(None) => {}
            }
            if !self.fill().await? {
                return self.eof::<()>().map(|_| false);
            }
        }
    }

    /// Every whole frame in the buffer as (type, body), in order, without taking them.
    pub fn whole_frames(&self) -> WholeFrames<'_> {
        WholeFrames {
            buf: &self.buf,
            decoder: self.decoder,
        }
    }

    /// Every whole frame in the buffer, split off as one span of wire bytes (a partial
    /// frame stays buffered), showing `each` every frame's type and body on the way
    /// (one pass): a forwarder passes them on in one write without taking them apart.
    /// An error from `each` stops there and takes nothing.
    pub fn take_whole_frames_with<E: From<FramedError>>(
        &mut self,
        mut each: impl FnMut(u8, &[u8]) -> Result<(), E>,
    ) -> Result<BytesMut, E> {
        let mut end = 0;
        // Each pass moves past one whole frame; bounded by the buffer.
        while let FrameLen::Whole(len) = self
            .decoder
            .frame_len(&self.buf[end..])
            .map_err(FramedError::from)?
        {
            each(self.buf[end], &self.buf[end + 5..end + len])?;
            end += len;
        }
        Ok(self.buf.split_to(end))
    }

    /// The first `len` buffered bytes (whole frames the caller has looked at).
    pub fn take_bytes(&mut self, len: usize) -> BytesMut {
        self.buf.split_to(len.min(self.buf.len()))
    }

    /// The next startup-phase packet (StartupMessage, SSLRequest, GSSENCRequest,
    /// CancelRequest: no type byte); `Ok(None)` on a clean EOF. Cancel-safe.
    pub async fn next_startup(&mut self) -> Result<Option<StartupPacket>, FramedError> {
        loop {
            if let Some(packet) = StartupPacket::decode_from(&mut self.buf)? {
                return Ok(Some(packet));
            }
            if !self.fill().await? {
                return self.eof();
            }
        }
    }

    fn eof<T>(&self) -> Result<Option<T>, FramedError> {
        if self.buf.is_empty() {
            Ok(None)
        } else {
            Err(FramedError::UnexpectedEof {
                buffered: self.buf.len(),
            })
        }
    }

    /// One read into the buffer; `false` on EOF.
    async fn fill(&mut self) -> Result<bool, FramedError> {
        if self.buf.is_empty() && (self.lean || self.buf.capacity() > SHRINK_ABOVE) {
            self.buf = BytesMut::new();
        }
        if self.lean && self.buf.is_empty() {
            let room = self.chunk.min(LEAN_READ_MAX);
            let (inner, buf) = (&mut self.inner, &mut self.buf);
            // The stack array lives only inside one poll, not in this future's state.
            let n = std::future::poll_fn(|cx| {
                let mut stack = [MaybeUninit::<u8>::uninit(); LEAN_READ_MAX];
                let mut read = ReadBuf::uninit(&mut stack[..room]);
                ready!(Pin::new(&mut *inner).poll_read(cx, &mut read))?;
                buf.extend_from_slice(read.filled());
                Poll::Ready(Ok::<_, std::io::Error>(read.filled().len()))
            })
            .await?;
            self.bytes_read += n as u64;
            return Ok(n > 0);
        }
        if self.buf.capacity() - self.buf.len() < self.chunk / 2 {
            self.buf.reserve(self.chunk);
        }
        let n = self.inner.read_buf(&mut self.buf).await?;
        self.bytes_read += n as u64;
        Ok(n > 0)
    }
}

/// The whole frames at the start of a buffer, as (type, body); see
/// [`FramedReader::whole_frames`]. Ends at a partial or invalid frame.
pub struct WholeFrames<'a> {
    buf: &'a [u8],
    decoder: FrameDecoder,
}

impl<'a> Iterator for WholeFrames<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let FrameLen::Whole(len) = self.decoder.frame_len(self.buf).ok()? else {
            return None;
        };
        let (frame, rest) = self.buf.split_at(len);
        self.buf = rest;
        Some((frame[0], &frame[5..]))
    }
}

impl<R> FramedReader<R> {
    /// Total bytes read from `inner` so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Bytes read but not yet returned as a frame.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    pub fn decoder(&self) -> FrameDecoder {
        self.decoder
    }

    /// Change the limits (e.g. after the startup phase).
    pub fn set_decoder(&mut self, decoder: FrameDecoder) {
        self.decoder = decoder;
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The reader and any bytes read but not consumed (check it is empty before a TLS
    /// upgrade: bytes after an SSLRequest are a protocol violation).
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgherd_protocol::StartupMessage;
    use tokio::io::AsyncWriteExt;

    fn frame_bytes(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut dst = BytesMut::new();
        Frame::new(tag, body.to_vec()).encode(&mut dst);
        dst.to_vec()
    }

    #[tokio::test]
    async fn frames_split_across_reads_come_out_whole() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut wire = frame_bytes(b'D', &[7u8; 300]);
        wire.extend(frame_bytes(b'Z', b"I"));
        let writer = tokio::spawn(async move {
            for piece in wire.chunks(7) {
                tx.write_all(piece).await.expect("write");
            }
        });
        let mut r = FramedReader::with_read_chunk(rx, FrameDecoder::backend(), 16);
        let d = r.next().await.expect("read").expect("frame");
        assert_eq!((d.tag, d.body.len()), (b'D', 300));
        let z = r.next().await.expect("read").expect("frame");
        assert_eq!((z.tag, &z.body[..]), (b'Z', &b"I"[..]));
        writer.await.expect("writer");
        assert!(r.next().await.expect("clean eof").is_none());
        assert_eq!(r.bytes_read(), 305 + 6);
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_an_error() {
        let wire = frame_bytes(b'D', b"hello");
        let mut r = FramedReader::new(&wire[..wire.len() - 1], FrameDecoder::backend());
        assert!(matches!(
            r.next().await,
            Err(FramedError::UnexpectedEof { buffered: 9 })
        ));
    }

    #[tokio::test]
    async fn hostile_length_is_refused_before_buffering() {
        let wire = [b'Q', 0x7f, 0xff, 0xff, 0xff];
        let mut r = FramedReader::new(&wire[..], FrameDecoder::frontend());
        assert!(matches!(
            r.next().await,
            Err(FramedError::Protocol(ProtocolError::MessageTooLarge { .. }))
        ));
        assert!(r.buffered().len() <= wire.len());
    }

    #[tokio::test]
    async fn startup_packet_then_frames() {
        let mut wire = BytesMut::new();
        StartupMessage::new("alice")
            .with_parameter("database", "db")
            .encode(&mut wire);
        wire.extend_from_slice(&frame_bytes(b'Q', b"SELECT 1\0"));
        let mut r = FramedReader::new(&wire[..], FrameDecoder::frontend());
        match r.next_startup().await.expect("read") {
            Some(StartupPacket::Startup(m)) => assert_eq!(m.database(), "db"),
            other => panic!("unexpected {other:?}"),
        }
        let q = r.next().await.expect("read").expect("frame");
        assert_eq!(q.tag, b'Q');
        assert!(r.next().await.expect("eof").is_none());
    }
}
