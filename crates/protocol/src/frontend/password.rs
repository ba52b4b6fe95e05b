//! The `p` family: PasswordMessage, SASLInitialResponse, SASLResponse. They share one
//! type byte; which one a `p` holds depends on the authentication request the server
//! sent, so the caller picks the decoder.

use crate::buf::{len_i32, put_cstr, Reader};
use crate::error::ProtocolError;
use crate::message::Message;
use bytes::{BufMut, Bytes, BytesMut};

/// PasswordMessage: a cleartext password, or `md5…` answering an MD5 request.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordMessage {
    /// Not necessarily UTF-8 (it is in the client's encoding).
    pub password: Bytes,
}

impl std::fmt::Debug for PasswordMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordMessage { password: <redacted> }")
    }
}

impl Message for PasswordMessage {
    const TAG: u8 = b'p';
    const NAME: &'static str = "PasswordMessage";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let password = Bytes::copy_from_slice(r.cstr()?);
        r.finish()?;
        Ok(PasswordMessage { password })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        put_cstr(dst, &self.password);
    }
}

/// SASLInitialResponse: the chosen mechanism and the client-first-message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInitialResponse {
    pub mechanism: String,
    /// `None` when the client sent length -1 (no initial response).
    pub data: Option<Bytes>,
}

impl Message for SaslInitialResponse {
    const TAG: u8 = b'p';
    const NAME: &'static str = "SASLInitialResponse";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let mechanism = r.string()?;
        let data = r.nullable()?.map(Bytes::copy_from_slice);
        r.finish()?;
        Ok(SaslInitialResponse { mechanism, data })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        put_cstr(dst, self.mechanism.as_bytes());
        match &self.data {
            None => dst.put_i32(-1),
            Some(d) => {
                dst.put_i32(len_i32(d.len()));
                dst.put_slice(d);
            }
        }
    }
}

/// SASLResponse: later SASL messages (SCRAM's client-final-message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslResponse {
    pub data: Bytes,
}

impl Message for SaslResponse {
    const TAG: u8 = b'p';
    const NAME: &'static str = "SASLResponse";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        Ok(SaslResponse {
            data: Bytes::copy_from_slice(body),
        })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_slice(&self.data);
    }
}
