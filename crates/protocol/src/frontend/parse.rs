//! Parse (`P`): prepare a statement.

use crate::buf::{count_u16, put_cstr, write_frame, Reader};
use crate::error::ProtocolError;
use crate::message::Message;
use bytes::{BufMut, Bytes, BytesMut};

/// Parse: name a statement (empty = unnamed), its SQL and parameter type OIDs
/// (0 = let the server infer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse {
    pub statement: String,
    /// In the client's encoding, so kept as bytes.
    pub query: Bytes,
    pub param_types: Vec<u32>,
}

impl Parse {
    /// Write this Parse under another statement name (per-server names in
    /// transaction pooling).
    pub fn encode_renamed(&self, statement: &str, dst: &mut BytesMut) {
        write_frame(dst, Self::TAG, |d| self.encode_body_named(statement, d));
    }

    fn encode_body_named(&self, statement: &str, dst: &mut BytesMut) {
        put_cstr(dst, statement.as_bytes());
        put_cstr(dst, &self.query);
        dst.put_u16(count_u16(self.param_types.len()));
        for oid in &self.param_types {
            dst.put_u32(*oid);
        }
    }

    /// Re-frame a Parse `body` under a new statement name, copying everything after
    /// the name untouched (the rest is validated only as far as the name).
    pub fn rename(body: &[u8], statement: &str, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        r.string()?;
        let rest = r.rest();
        write_frame(dst, Self::TAG, |d| {
            put_cstr(d, statement.as_bytes());
            d.extend_from_slice(rest);
        });
        Ok(())
    }
}

impl Message for Parse {
    const TAG: u8 = b'P';
    const NAME: &'static str = "Parse";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let statement = r.string()?;
        let query = Bytes::copy_from_slice(r.cstr()?);
        let count = usize::from(r.u16()?);
        let mut param_types = Vec::with_capacity(r.capacity(count, 4));
        for _ in 0..count {
            param_types.push(r.u32()?);
        }
        r.finish()?;
        Ok(Parse {
            statement,
            query,
            param_types,
        })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        self.encode_body_named(&self.statement, dst);
    }
}
