//! Authentication requests (`R`).

use crate::buf::{put_cstr, Reader};
use crate::error::ProtocolError;
use crate::message::Message;
use bytes::{BufMut, Bytes, BytesMut};

/// Request codes (`AUTH_REQ_*` in `src/include/libpq/protocol.h`, formerly `pqcomm.h`).
pub mod code {
    pub const OK: i32 = 0;
    pub const CLEARTEXT_PASSWORD: i32 = 3;
    pub const MD5_PASSWORD: i32 = 5;
    pub const SASL: i32 = 10;
    pub const SASL_CONTINUE: i32 = 11;
    pub const SASL_FINAL: i32 = 12;
}

/// An authentication request or outcome from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    /// SASL mechanisms the server offers, in its order of preference.
    Sasl {
        mechanisms: Vec<String>,
    },
    /// SCRAM's server-first-message.
    SaslContinue {
        data: Bytes,
    },
    /// SCRAM's server-final-message.
    SaslFinal {
        data: Bytes,
    },
}

impl Message for Authentication {
    const TAG: u8 = b'R';
    const NAME: &'static str = "Authentication";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let auth = match r.i32()? {
            code::OK => Authentication::Ok,
            code::CLEARTEXT_PASSWORD => Authentication::CleartextPassword,
            code::MD5_PASSWORD => {
                let mut salt = [0u8; 4];
                salt.copy_from_slice(r.bytes(4)?);
                Authentication::Md5Password { salt }
            }
            code::SASL => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = r.string()?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m);
                }
                Authentication::Sasl { mechanisms }
            }
            code::SASL_CONTINUE => Authentication::SaslContinue {
                data: Bytes::copy_from_slice(r.rest()),
            },
            code::SASL_FINAL => Authentication::SaslFinal {
                data: Bytes::copy_from_slice(r.rest()),
            },
            code => return Err(ProtocolError::UnsupportedAuthentication { code }),
        };
        r.finish()?;
        Ok(auth)
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        match self {
            Authentication::Ok => dst.put_i32(code::OK),
            Authentication::CleartextPassword => dst.put_i32(code::CLEARTEXT_PASSWORD),
            Authentication::Md5Password { salt } => {
                dst.put_i32(code::MD5_PASSWORD);
                dst.put_slice(salt);
            }
            Authentication::Sasl { mechanisms } => {
                dst.put_i32(code::SASL);
                // An empty name would end the list early; skip it.
                for m in mechanisms.iter().filter(|m| !m.is_empty()) {
                    put_cstr(dst, m.as_bytes());
                }
                dst.put_u8(0);
            }
            Authentication::SaslContinue { data } => {
                dst.put_i32(code::SASL_CONTINUE);
                dst.put_slice(data);
            }
            Authentication::SaslFinal { data } => {
                dst.put_i32(code::SASL_FINAL);
                dst.put_slice(data);
            }
        }
    }
}
