//! Query (`Q`): simple query protocol.

use crate::buf::{put_cstr, Reader};
use crate::error::ProtocolError;
use crate::message::Message;
use bytes::{Bytes, BytesMut};

/// Query: SQL text, possibly several statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// In the client's encoding (not necessarily UTF-8), so kept as bytes.
    pub query: Bytes,
}

impl Query {
    pub fn new(query: impl Into<Bytes>) -> Query {
        Query {
            query: query.into(),
        }
    }

    /// The text, when it is UTF-8.
    pub fn as_str(&self) -> Result<&str, ProtocolError> {
        std::str::from_utf8(&self.query).map_err(|_| ProtocolError::InvalidUtf8 {
            message: Self::NAME,
        })
    }
}

impl Message for Query {
    const TAG: u8 = b'Q';
    const NAME: &'static str = "Query";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let query = Bytes::copy_from_slice(r.cstr()?);
        r.finish()?;
        Ok(Query { query })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        put_cstr(dst, &self.query);
    }
}
