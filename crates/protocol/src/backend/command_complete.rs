//! CommandComplete (`C`).

use crate::buf::{put_cstr, Reader};
use crate::error::ProtocolError;
use crate::message::Message;
use bytes::BytesMut;

/// CommandComplete: the command tag (`SELECT 3`, `INSERT 0 1`, `BEGIN`, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommandComplete {
    pub tag: String,
}

impl CommandComplete {
    pub fn new(tag: impl Into<String>) -> Self {
        CommandComplete { tag: tag.into() }
    }
}

impl Message for CommandComplete {
    const TAG: u8 = b'C';
    const NAME: &'static str = "CommandComplete";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let tag = r.string()?;
        r.finish()?;
        Ok(CommandComplete { tag })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        put_cstr(dst, self.tag.as_bytes());
    }
}
