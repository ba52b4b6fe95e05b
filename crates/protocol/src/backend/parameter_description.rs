//! ParameterDescription (`t`).

use crate::buf::{count_u16, Reader};
use crate::error::ProtocolError;
use crate::message::Message;
use bytes::{BufMut, BytesMut};

/// ParameterDescription: the type OIDs of a statement's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParameterDescription {
    pub param_types: Vec<u32>,
}

impl Message for ParameterDescription {
    const TAG: u8 = b't';
    const NAME: &'static str = "ParameterDescription";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let count = usize::from(r.u16()?);
        let mut param_types = Vec::with_capacity(r.capacity(count, 4));
        for _ in 0..count {
            param_types.push(r.u32()?);
        }
        r.finish()?;
        Ok(ParameterDescription { param_types })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u16(count_u16(self.param_types.len()));
        for oid in &self.param_types {
            dst.put_u32(*oid);
        }
    }
}
