//! NegotiateProtocolVersion (`v`).

use crate::buf::{len_i32, put_cstr, Reader};
use crate::error::ProtocolError;
use crate::message::Message;
use bytes::{BufMut, BytesMut};

/// NegotiateProtocolVersion: the newest minor version the server supports for the
/// requested major, and the `_pq_.` options it did not recognize.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NegotiateProtocolVersion {
    pub newest_minor_version: u32,
    pub unrecognized_options: Vec<String>,
}

impl Message for NegotiateProtocolVersion {
    const TAG: u8 = b'v';
    const NAME: &'static str = "NegotiateProtocolVersion";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let newest_minor_version = r.u32()?;
        let count = r.i32()?;
        let count = usize::try_from(count).map_err(|_| r.invalid("negative option count"))?;
        let mut unrecognized_options = Vec::with_capacity(r.capacity(count, 1));
        for _ in 0..count {
            unrecognized_options.push(r.string()?);
        }
        r.finish()?;
        Ok(NegotiateProtocolVersion {
            newest_minor_version,
            unrecognized_options,
        })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u32(self.newest_minor_version);
        dst.put_i32(len_i32(self.unrecognized_options.len()));
        for o in &self.unrecognized_options {
            put_cstr(dst, o.as_bytes());
        }
    }
}
