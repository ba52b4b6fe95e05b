//! NotificationResponse (`A`).

use crate::buf::{put_cstr, Reader};
use crate::error::ProtocolError;
use crate::message::Message;
use bytes::{BufMut, BytesMut};

/// NotificationResponse: a NOTIFY delivered to a LISTENing session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NotificationResponse {
    /// The notifying backend.
    pub process_id: i32,
    pub channel: String,
    pub payload: String,
}

impl Message for NotificationResponse {
    const TAG: u8 = b'A';
    const NAME: &'static str = "NotificationResponse";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let process_id = r.i32()?;
        let channel = r.string()?;
        let payload = r.string()?;
        r.finish()?;
        Ok(NotificationResponse {
            process_id,
            channel,
            payload,
        })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_i32(self.process_id);
        put_cstr(dst, self.channel.as_bytes());
        put_cstr(dst, self.payload.as_bytes());
    }
}
