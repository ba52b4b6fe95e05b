//! Bounds-checked reading of message bodies and frame writing.

use crate::error::ProtocolError;
use bytes::{BufMut, BytesMut};

type Result<T> = std::result::Result<T, ProtocolError>;

/// A cursor over one message body. Every read checks bounds; errors name the message.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], message: &'static str) -> Self {
        Reader { buf, message }
    }

    fn eof(&self) -> ProtocolError {
        ProtocolError::UnexpectedEof {
            message: self.message,
        }
    }

    pub(crate) fn invalid(&self, detail: &'static str) -> ProtocolError {
        ProtocolError::InvalidField {
            message: self.message,
            detail,
        }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(self.eof());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A NUL-terminated string's bytes (terminator consumed, not returned).
    pub(crate) fn cstr(&mut self) -> Result<&'a [u8]> {
        let Some(nul) = self.buf.iter().position(|&b| b == 0) else {
            return Err(ProtocolError::MissingNul {
                message: self.message,
            });
        };
        let s = &self.buf[..nul];
        self.buf = &self.buf[nul + 1..];
        Ok(s)
    }

    /// A NUL-terminated string that must be UTF-8.
    pub(crate) fn string(&mut self) -> Result<String> {
        let raw = self.cstr()?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| ProtocolError::InvalidUtf8 {
                message: self.message,
            })
    }

    /// An Int32 length then that many bytes; length -1 is NULL.
    pub(crate) fn nullable(&mut self) -> Result<Option<&'a [u8]>> {
        match self.i32()? {
            -1 => Ok(None),
            n if n < 0 => Err(self.invalid("negative value length")),
            // n >= 0 here, so the cast is lossless.
            n => self.bytes(n as usize).map(Some),
        }
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Capacity to reserve for `count` items of at least `min_size` bytes each: never
    /// more than the bytes left could hold, so a hostile count cannot make us allocate.
    pub(crate) fn capacity(&self, count: usize, min_size: usize) -> usize {
        count.min(self.buf.len() / min_size.max(1))
    }

    /// The body must be fully consumed.
    pub(crate) fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes {
                message: self.message,
                count: self.buf.len(),
            })
        }
    }
}

/// Append `s` as a C string. A string holding NUL is cut there, as C would read it,
/// so the frame stays well-formed.
pub(crate) fn put_cstr(dst: &mut BytesMut, s: &[u8]) {
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    dst.put_slice(&s[..end]);
    dst.put_u8(0);
}

/// Append an Int32 length and the bytes, or -1 for NULL.
pub(crate) fn put_nullable(dst: &mut BytesMut, value: Option<&[u8]>) {
    match value {
        None => dst.put_i32(-1),
        Some(v) => {
            dst.put_i32(len_i32(v.len()));
            dst.put_slice(v);
        }
    }
}

/// Counts and lengths on the wire are Int16/Int32; values beyond are clamped (such a
/// message is over every PostgreSQL limit anyway and the peer will reject it).
pub(crate) fn len_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

pub(crate) fn count_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Write a typed frame: tag, Int32 length (counting itself), body from `body`.
pub(crate) fn write_frame(dst: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    dst.put_u8(tag);
    write_untagged_frame(dst, body);
}

/// Write a length-prefixed frame without a type byte (startup-phase packets).
pub(crate) fn write_untagged_frame(dst: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let start = dst.len();
    dst.put_u32(0);
    body(dst);
    let len = u32::try_from(dst.len() - start).unwrap_or(u32::MAX);
    dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
}
