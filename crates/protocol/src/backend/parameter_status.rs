//! ParameterStatus (`S`).

use crate::buf::{put_cstr, Reader};
use crate::error::ProtocolError;
use crate::message::Message;
use bytes::BytesMut;

/// ParameterStatus: the server reports a GUC_REPORT setting (server_version,
/// client_encoding, TimeZone, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParameterStatus {
    pub name: String,
    pub value: String,
}

impl ParameterStatus {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        ParameterStatus {
            name: name.into(),
            value: value.into(),
        }
    }
}

impl Message for ParameterStatus {
    const TAG: u8 = b'S';
    const NAME: &'static str = "ParameterStatus";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let name = r.string()?;
        let value = r.string()?;
        r.finish()?;
        Ok(ParameterStatus { name, value })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        put_cstr(dst, self.name.as_bytes());
        put_cstr(dst, self.value.as_bytes());
    }
}
