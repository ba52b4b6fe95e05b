//! Execute (`E`).

use crate::buf::{put_cstr, Reader};
use crate::error::ProtocolError;
use crate::message::Message;
use bytes::{BufMut, BytesMut};

/// Execute a portal, returning at most `max_rows` rows (0 = all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execute {
    pub portal: String,
    pub max_rows: i32,
}

impl Message for Execute {
    const TAG: u8 = b'E';
    const NAME: &'static str = "Execute";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let portal = r.string()?;
        let max_rows = r.i32()?;
        r.finish()?;
        Ok(Execute { portal, max_rows })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        put_cstr(dst, self.portal.as_bytes());
        dst.put_i32(self.max_rows);
    }
}
