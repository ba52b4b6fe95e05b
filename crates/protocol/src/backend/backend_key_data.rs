//! BackendKeyData (`K`).

use crate::error::ProtocolError;
use crate::message::Message;
use crate::startup::MAX_CANCEL_KEY_LENGTH;
use bytes::{BufMut, Bytes, BytesMut};

/// BackendKeyData: what a client needs to send a CancelRequest later.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BackendKeyData {
    pub process_id: i32,
    /// 4 bytes in protocol 3.0; up to 256 in 3.2.
    pub secret_key: Bytes,
}

impl std::fmt::Debug for BackendKeyData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendKeyData")
            .field("process_id", &self.process_id)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl BackendKeyData {
    /// A protocol 3.0 key.
    pub fn new(process_id: i32, secret_key: u32) -> Self {
        BackendKeyData {
            process_id,
            secret_key: Bytes::copy_from_slice(&secret_key.to_be_bytes()),
        }
    }
}

impl Message for BackendKeyData {
    const TAG: u8 = b'K';
    const NAME: &'static str = "BackendKeyData";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = crate::buf::Reader::new(body, Self::NAME);
        let process_id = r.i32()?;
        let key = r.rest();
        if key.len() < 4 || key.len() > MAX_CANCEL_KEY_LENGTH {
            return Err(ProtocolError::InvalidField {
                message: Self::NAME,
                detail: "secret key must be 4 to 256 bytes",
            });
        }
        Ok(BackendKeyData {
            process_id,
            secret_key: Bytes::copy_from_slice(key),
        })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_i32(self.process_id);
        dst.put_slice(&self.secret_key);
    }
}
