//! Bind (`B`): bind parameters to a prepared statement, creating a portal.

use crate::buf::{count_u16, put_cstr, put_nullable, write_frame, Reader};
use crate::error::ProtocolError;
use crate::message::Message;
use bytes::{BufMut, Bytes, BytesMut};

/// Format code of a parameter or result column: 0 text, 1 binary. Kept as the raw
/// Int16 so that anything a client sends passes through unchanged.
pub type FormatCode = i16;

/// Bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub portal: String,
    pub statement: String,
    /// Empty (all text), one (applies to all) or one per parameter.
    pub param_formats: Vec<FormatCode>,
    /// `None` is SQL NULL.
    pub params: Vec<Option<Bytes>>,
    pub result_formats: Vec<FormatCode>,
}

impl Bind {
    /// Write this Bind naming another statement.
    pub fn encode_renamed(&self, statement: &str, dst: &mut BytesMut) {
        write_frame(dst, Self::TAG, |d| self.encode_body_named(statement, d));
    }

    fn encode_body_named(&self, statement: &str, dst: &mut BytesMut) {
        put_cstr(dst, self.portal.as_bytes());
        put_cstr(dst, statement.as_bytes());
        dst.put_u16(count_u16(self.param_formats.len()));
        for f in &self.param_formats {
            dst.put_i16(*f);
        }
        dst.put_u16(count_u16(self.params.len()));
        for p in &self.params {
            put_nullable(dst, p.as_deref());
        }
        dst.put_u16(count_u16(self.result_formats.len()));
        for f in &self.result_formats {
            dst.put_i16(*f);
        }
    }

    /// The statement a Bind `body` names, without decoding the parameters.
    pub fn statement_name(body: &[u8]) -> Result<String, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        r.cstr()?;
        r.string()
    }

    /// Re-frame a Bind `body` naming another statement, copying the parameters
    /// untouched.
    pub fn rename(body: &[u8], statement: &str, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let portal = r.cstr()?;
        r.string()?;
        let rest = r.rest();
        write_frame(dst, Self::TAG, |d| {
            put_cstr(d, portal);
            put_cstr(d, statement.as_bytes());
            d.extend_from_slice(rest);
        });
        Ok(())
    }
}

fn formats(r: &mut Reader<'_>) -> Result<Vec<FormatCode>, ProtocolError> {
    let count = usize::from(r.u16()?);
    let mut out = Vec::with_capacity(r.capacity(count, 2));
    for _ in 0..count {
        out.push(r.i16()?);
    }
    Ok(out)
}

impl Message for Bind {
    const TAG: u8 = b'B';
    const NAME: &'static str = "Bind";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let portal = r.string()?;
        let statement = r.string()?;
        let param_formats = formats(&mut r)?;
        let count = usize::from(r.u16()?);
        let mut params = Vec::with_capacity(r.capacity(count, 4));
        for _ in 0..count {
            params.push(r.nullable()?.map(Bytes::copy_from_slice));
        }
        let result_formats = formats(&mut r)?;
        r.finish()?;
        Ok(Bind {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        self.encode_body_named(&self.statement, dst);
    }
}
