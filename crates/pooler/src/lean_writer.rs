//! A write buffer that exists only while there is something to send.
//!
//! `tokio::io::BufWriter` allocates its buffer up front and keeps it: on thousands of
//! idle clients that is most of their memory. [`LeanWriter`] allocates on the first
//! write and gives the buffer back on each explicit flush, which the sessions do after
//! every answer, so an idle client holds none.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWrite;

pub struct LeanWriter<W> {
    inner: W,
    buf: Vec<u8>,
    /// How much of `buf` has gone out already.
    written: usize,
    capacity: usize,
}

impl<W: AsyncWrite + Unpin> LeanWriter<W> {
    /// Buffer up to `capacity` bytes; larger writes go straight through.
    pub fn with_capacity(capacity: usize, inner: W) -> LeanWriter<W> {
        LeanWriter {
            inner,
            buf: Vec::new(),
            written: 0,
            capacity: capacity.max(1),
        }
    }

    /// Write all of `data`: straight to the inner writer when nothing is buffered (no
    /// copy, no buffer), else after what is. For a caller that flushes right after.
    pub async fn write_through(&mut self, data: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        if self.written >= self.buf.len() {
            return self.inner.write_all(data).await;
        }
        self.write_all(data).await
    }

    /// The inner writer, once everything buffered has gone out (`None` otherwise: the
    /// unsent bytes would be lost).
    pub fn into_inner(self) -> Option<W> {
        (self.written >= self.buf.len()).then_some(self.inner)
    }

    /// Write out what is buffered (keeping the allocation for the writes that follow).
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.written += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for LeanWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() + data.len() > this.capacity {
            ready!(this.poll_write_out(cx))?;
        }
        if data.len() >= this.capacity {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        if this.buf.capacity() == 0 {
            this.buf.reserve_exact(this.capacity);
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        // Nothing more to send for now: give the memory back.
        this.buf = Vec::new();
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        this.buf = Vec::new();
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_writes_are_batched_large_ones_pass_and_flush_releases_the_buffer() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = LeanWriter::with_capacity(16, a);
        w.write_all(b"hello ").await.unwrap();
        w.write_all(b"world").await.unwrap();
        assert_eq!(w.buf.len(), 11, "small writes wait in the buffer");
        w.write_all(&[b'x'; 40]).await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(w.buf.capacity(), 0, "flushed: nothing kept");
        let mut got = vec![0u8; 51];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..11], b"hello world");
        assert!(got[11..].iter().all(|&c| c == b'x'));
    }

    #[tokio::test]
    async fn write_through_keeps_the_order_of_what_is_buffered() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = LeanWriter::with_capacity(16, a);
        w.write_through(b"first ").await.unwrap();
        assert_eq!(
            w.buf.capacity(),
            0,
            "nothing buffered: written straight through"
        );
        w.write_all(b"second ").await.unwrap();
        w.write_through(b"third").await.unwrap();
        w.flush().await.unwrap();
        let mut got = vec![0u8; 18];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"first second third");
    }
}
