//! COPY data, both directions: CopyData, CopyDone (either side), CopyFail (frontend).

use crate::buf::{put_cstr, Reader};
use crate::error::ProtocolError;
use crate::message::{empty_message, Message};
use bytes::{Bytes, BytesMut};

/// CopyData (`d`): opaque bytes of the COPY stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyData {
    pub data: Bytes,
}

impl Message for CopyData {
    const TAG: u8 = b'd';
    const NAME: &'static str = "CopyData";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        Ok(CopyData {
            data: Bytes::copy_from_slice(body),
        })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.extend_from_slice(&self.data);
    }
}

empty_message!(
    /// CopyDone (`c`).
    CopyDone,
    b'c'
);

/// CopyFail (`f`): the client aborts COPY FROM STDIN with a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFail {
    /// In the client's encoding, so kept as bytes.
    pub message: Bytes,
}

impl Message for CopyFail {
    const TAG: u8 = b'f';
    const NAME: &'static str = "CopyFail";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let message = Bytes::copy_from_slice(r.cstr()?);
        r.finish()?;
        Ok(CopyFail { message })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        put_cstr(dst, &self.message);
    }
}
