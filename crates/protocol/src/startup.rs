//! Startup-phase packets: no type byte, just an Int32 length and a 4-byte code.
//! StartupMessage, SSLRequest, GSSENCRequest, CancelRequest
//! (`ProcessStartupPacket()` in `src/backend/postmaster/postmaster.c`).

use crate::buf::{put_cstr, write_untagged_frame, Reader};
use crate::codec::MAX_STARTUP_PACKET_LENGTH;
use crate::error::ProtocolError;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// `NEGOTIATE_SSL_CODE`, `PG_PROTOCOL(1234,5679)` in `src/include/libpq/pqcomm.h`.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// `NEGOTIATE_GSS_CODE`, `PG_PROTOCOL(1234,5680)`.
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// `CANCEL_REQUEST_CODE`, `PG_PROTOCOL(1234,5678)`.
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// Longest cancel key: `MAX_CANCEL_KEY_LENGTH` (protocol 3.2, PostgreSQL 18
/// `src/include/libpq/pqcomm.h`); protocol 3.0 keys are 4 bytes.
pub const MAX_CANCEL_KEY_LENGTH: usize = 256;

/// A frontend/backend protocol version (`major << 16 | minor` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

impl ProtocolVersion {
    pub const V3_0: ProtocolVersion = ProtocolVersion { major: 3, minor: 0 };

    pub fn from_code(code: u32) -> ProtocolVersion {
        ProtocolVersion {
            major: (code >> 16) as u16,
            minor: (code & 0xffff) as u16,
        }
    }

    pub fn code(self) -> u32 {
        (u32::from(self.major) << 16) | u32::from(self.minor)
    }
}

/// Any packet a client may open a connection (or a cancel connection) with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    Startup(StartupMessage),
    SslRequest,
    GssEncRequest,
    Cancel(CancelRequest),
}

impl StartupPacket {
    /// Split one startup-phase packet off `src`; `Ok(None)` when more bytes are needed.
    /// The length is checked against [`MAX_STARTUP_PACKET_LENGTH`] before anything is
    /// buffered for it.
    pub fn decode_from(src: &mut BytesMut) -> Result<Option<StartupPacket>, ProtocolError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        // The length counts itself; the body holds at least the 4-byte code.
        if len < 8 || len - 4 > MAX_STARTUP_PACKET_LENGTH {
            return Err(ProtocolError::InvalidStartupLength { len });
        }
        let total = len as usize; // <= 10004
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(4);
        let body = src.split_to(total - 4);
        StartupPacket::decode(&body).map(Some)
    }

    /// Decode a packet body (everything after the length word).
    pub fn decode(body: &[u8]) -> Result<StartupPacket, ProtocolError> {
        if body.len() > MAX_STARTUP_PACKET_LENGTH as usize {
            return Err(ProtocolError::InvalidStartupLength {
                len: u32::try_from(body.len() + 4).unwrap_or(u32::MAX),
            });
        }
        let mut r = Reader::new(body, "startup packet");
        let code = r.u32()?;
        match code {
            SSL_REQUEST_CODE => {
                r.finish()?;
                Ok(StartupPacket::SslRequest)
            }
            GSSENC_REQUEST_CODE => {
                r.finish()?;
                Ok(StartupPacket::GssEncRequest)
            }
            CANCEL_REQUEST_CODE => CancelRequest::decode_after_code(r).map(StartupPacket::Cancel),
            _ => StartupMessage::decode_after_code(ProtocolVersion::from_code(code), r)
                .map(StartupPacket::Startup),
        }
    }

    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            StartupPacket::Startup(m) => m.encode(dst),
            StartupPacket::SslRequest => write_untagged_frame(dst, |d| d.put_u32(SSL_REQUEST_CODE)),
            StartupPacket::GssEncRequest => {
                write_untagged_frame(dst, |d| d.put_u32(GSSENC_REQUEST_CODE))
            }
            StartupPacket::Cancel(c) => c.encode(dst),
        }
    }
}

/// StartupMessage: protocol version and `name=value` parameters (`user` required;
/// `database`, `options`, `application_name`, `replication`, `_pq_.*`, GUCs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub protocol_version: ProtocolVersion,
    /// In the order sent; names are unique after [`StartupMessage::decode`].
    pub parameters: Vec<(String, String)>,
}

impl StartupMessage {
    /// Protocol 3.0 with `user` set.
    pub fn new(user: impl Into<String>) -> StartupMessage {
        StartupMessage {
            protocol_version: ProtocolVersion::V3_0,
            parameters: vec![("user".to_owned(), user.into())],
        }
    }

    /// Set `name` (replacing an earlier value).
    pub fn with_parameter(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_parameter(name, value);
        self
    }

    pub fn set_parameter(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let (name, value) = (name.into(), value.into());
        match self.parameters.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.parameters.push((name, value)),
        }
    }

    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `user`; always present and non-empty in a decoded message.
    pub fn user(&self) -> &str {
        self.parameter("user").unwrap_or("")
    }

    /// `database`, defaulting to the user name as PostgreSQL does.
    pub fn database(&self) -> &str {
        match self.parameter("database") {
            Some(db) if !db.is_empty() => db,
            _ => self.user(),
        }
    }

    pub fn application_name(&self) -> Option<&str> {
        self.parameter("application_name")
    }

    pub fn options(&self) -> Option<&str> {
        self.parameter("options")
    }

    /// Decode a body (after the length word) that must be a StartupMessage.
    pub fn decode(body: &[u8]) -> Result<StartupMessage, ProtocolError> {
        match StartupPacket::decode(body)? {
            StartupPacket::Startup(m) => Ok(m),
            _ => Err(ProtocolError::InvalidField {
                message: "startup packet",
                detail: "expected a StartupMessage",
            }),
        }
    }

    fn decode_after_code(
        version: ProtocolVersion,
        mut r: Reader<'_>,
    ) -> Result<StartupMessage, ProtocolError> {
        // Protocol 3.x only (PostgreSQL 14+ refuses 2.0); newer minors are answered
        // with NegotiateProtocolVersion by the caller.
        if version.major != 3 {
            return Err(ProtocolError::UnsupportedProtocolVersion {
                major: version.major,
                minor: version.minor,
            });
        }
        let mut parameters: Vec<(String, String)> = Vec::new();
        loop {
            let name = match r.cstr() {
                Ok(n) => n,
                Err(ProtocolError::MissingNul { .. }) => {
                    return Err(ProtocolError::MissingStartupTerminator)
                }
                Err(e) => return Err(e),
            };
            if name.is_empty() {
                break;
            }
            let value = match r.cstr() {
                Ok(v) => v,
                Err(ProtocolError::MissingNul { .. }) => {
                    return Err(ProtocolError::MissingStartupTerminator)
                }
                Err(e) => return Err(e),
            };
            let utf8 = |b: &[u8]| {
                std::str::from_utf8(b)
                    .map(str::to_owned)
                    .map_err(|_| ProtocolError::InvalidUtf8 {
                        message: "startup packet",
                    })
            };
            let (name, value) = (utf8(name)?, utf8(value)?);
            if parameters.iter().any(|(n, _)| *n == name) {
                return Err(ProtocolError::DuplicateParameter { name });
            }
            parameters.push((name, value));
        }
        r.finish()?;
        let m = StartupMessage {
            protocol_version: version,
            parameters,
        };
        if m.user().is_empty() {
            return Err(ProtocolError::MissingUser);
        }
        Ok(m)
    }

    pub fn encode(&self, dst: &mut BytesMut) {
        write_untagged_frame(dst, |d| {
            d.put_u32(self.protocol_version.code());
            for (name, value) in &self.parameters {
                put_cstr(d, name.as_bytes());
                put_cstr(d, value.as_bytes());
            }
            d.put_u8(0);
        });
    }
}

/// CancelRequest: sent on a fresh connection to cancel the query of backend
/// `process_id`, proven by the secret key from BackendKeyData.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CancelRequest {
    pub process_id: i32,
    /// 4 bytes in protocol 3.0; up to [`MAX_CANCEL_KEY_LENGTH`] in 3.2.
    pub secret_key: Bytes,
}

impl std::fmt::Debug for CancelRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelRequest")
            .field("process_id", &self.process_id)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl CancelRequest {
    /// A protocol 3.0 request (4-byte key).
    pub fn new(process_id: i32, secret_key: u32) -> CancelRequest {
        CancelRequest {
            process_id,
            secret_key: Bytes::copy_from_slice(&secret_key.to_be_bytes()),
        }
    }

    fn decode_after_code(mut r: Reader<'_>) -> Result<CancelRequest, ProtocolError> {
        let process_id = r.i32()?;
        let key = r.rest();
        if key.len() < 4 || key.len() > MAX_CANCEL_KEY_LENGTH {
            return Err(ProtocolError::InvalidField {
                message: "CancelRequest",
                detail: "secret key must be 4 to 256 bytes",
            });
        }
        Ok(CancelRequest {
            process_id,
            secret_key: Bytes::copy_from_slice(key),
        })
    }

    pub fn encode(&self, dst: &mut BytesMut) {
        write_untagged_frame(dst, |d| {
            d.put_u32(CANCEL_REQUEST_CODE);
            d.put_i32(self.process_id);
            d.put_slice(&self.secret_key);
        });
    }
}
