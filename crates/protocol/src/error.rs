//! Errors, and what each may tell the peer.
//!
//! After neon's `proxy/src/error.rs`: every error knows its [`ErrorKind`] (who is to
//! blame; doubles as a metric label) and which text is safe to send to a client.
//! No error here ever carries a password or a stored secret.

use crate::backend::{ErrorResponse, Severity};
use thiserror::Error;

/// SQLSTATE codes this crate reports (`src/backend/utils/errcodes.txt`).
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const QUERY_CANCELED: &str = "57014";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const INTERNAL_ERROR: &str = "XX000";
}

/// Who is to blame for an error; decides what a client may be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The peer sent bytes that break the protocol. The message only describes the
    /// peer's own input, so it is safe to show.
    Protocol,
    /// Authentication failed (wrong password, unknown user). Show only the generic
    /// "password authentication failed" text, never why.
    AuthFailed,
    /// The server we logged into misbehaved (bad SCRAM signature, `e=` error).
    Server,
    /// Our configuration or our own API use is wrong (bad stored verifier, steps out of
    /// order). Log it; the client sees only a generic authentication failure.
    Internal,
}

impl ErrorKind {
    /// A stable label for metrics.
    pub fn as_label(self) -> &'static str {
        match self {
            ErrorKind::Protocol => "protocol",
            ErrorKind::AuthFailed => "auth_failed",
            ErrorKind::Server => "server",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error that can be reported to a PostgreSQL client.
pub trait UserFacingError: std::error::Error {
    fn kind(&self) -> ErrorKind;
    /// SQLSTATE to send with the error.
    fn sqlstate(&self) -> &'static str;
    /// Text safe to send to the client (never internal details).
    fn client_message(&self) -> String;

    /// A FATAL ErrorResponse to send before closing the connection.
    fn to_error_response(&self) -> ErrorResponse {
        ErrorResponse::new(Severity::Fatal, self.sqlstate(), self.client_message())
    }
}

/// Malformed or oversized wire data. All of these are the peer's fault
/// ([`ErrorKind::Protocol`]); after one, the connection has lost message sync and
/// should be closed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A length word below 4 (it counts itself).
    #[error("invalid message length {len}")]
    InvalidLength { len: u32 },
    /// A length word above the limit for this message type.
    #[error("message of type '{}' is {len} bytes, over the limit of {limit}", .tag.escape_ascii())]
    MessageTooLarge { tag: u8, len: u32, limit: u32 },
    /// A startup-phase packet outside `8..=4 + MAX_STARTUP_PACKET_LENGTH` bytes.
    #[error("invalid length of startup packet: {len}")]
    InvalidStartupLength { len: u32 },
    #[error("invalid message type '{}'", .tag.escape_ascii())]
    UnknownMessageType { tag: u8 },
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2")]
    UnsupportedProtocolVersion { major: u16, minor: u16 },
    #[error("{message}: unexpected end of message")]
    UnexpectedEof { message: &'static str },
    #[error("{message}: string is missing its NUL terminator")]
    MissingNul { message: &'static str },
    #[error("{message}: invalid UTF-8 in a string")]
    InvalidUtf8 { message: &'static str },
    #[error("{message}: {count} unexpected bytes at the end")]
    TrailingBytes { message: &'static str, count: usize },
    #[error("{message}: {detail}")]
    InvalidField {
        message: &'static str,
        detail: &'static str,
    },
    #[error("no PostgreSQL user name specified in startup packet")]
    MissingUser,
    #[error("startup packet: parameter \"{name}\" is given more than once")]
    DuplicateParameter { name: String },
    #[error("invalid startup packet layout: expected terminator as last byte")]
    MissingStartupTerminator,
    #[error("unsupported authentication request {code}")]
    UnsupportedAuthentication { code: i32 },
}

impl UserFacingError for ProtocolError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Protocol
    }

    fn sqlstate(&self) -> &'static str {
        match self {
            ProtocolError::UnsupportedProtocolVersion { .. }
            | ProtocolError::UnsupportedAuthentication { .. } => sqlstate::FEATURE_NOT_SUPPORTED,
            ProtocolError::MissingUser => sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            _ => sqlstate::PROTOCOL_VIOLATION,
        }
    }

    fn client_message(&self) -> String {
        self.to_string()
    }
}

/// Authentication failures, SCRAM and md5, either side. Never holds a password or a
/// stored secret; the `&'static str` details name what was wrong, not the data.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// Wrong password (or a mock exchange for an unknown user).
    #[error("password authentication failed")]
    PasswordMismatch,
    /// A SCRAM message that does not follow RFC 5802.
    #[error("malformed SCRAM message: {0}")]
    MalformedScram(&'static str),
    #[error("unsupported SASL mechanism")]
    UnsupportedMechanism,
    /// The client asked for channel binding (`p=`); we offer only SCRAM-SHA-256.
    #[error("channel binding is not supported; use SCRAM-SHA-256 without channel binding")]
    ChannelBindingUnsupported,
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// A stored `SCRAM-SHA-256$…` verifier that does not parse.
    #[error("invalid SCRAM verifier: {0}")]
    InvalidVerifier(&'static str),
    /// A stored secret unusable for this method (e.g. a SCRAM verifier for md5).
    #[error("stored password cannot be used for {0} authentication")]
    UnusableSecret(&'static str),
    /// Client side: the server could not prove it knows the password.
    #[error("server SCRAM signature does not match")]
    InvalidServerSignature,
    /// Client side: the server ended SCRAM with `e=<reason>` (its own text).
    #[error("server rejected SCRAM authentication: {0}")]
    ServerError(String),
    /// Client side: the server asked for more PBKDF2 iterations than
    /// [`MAX_SERVER_SCRAM_ITERATIONS`](crate::auth::MAX_SERVER_SCRAM_ITERATIONS): a
    /// hostile or broken server could otherwise keep a CPU busy for hours per login.
    #[error("server asks for {iterations} SCRAM iterations, more than the limit of {limit}")]
    TooManyIterations { iterations: u32, limit: u32 },
    /// A state-machine method called out of order.
    #[error("authentication step called out of order")]
    OutOfOrder,
}

impl UserFacingError for AuthError {
    fn kind(&self) -> ErrorKind {
        match self {
            AuthError::PasswordMismatch => ErrorKind::AuthFailed,
            AuthError::MalformedScram(_)
            | AuthError::UnsupportedMechanism
            | AuthError::ChannelBindingUnsupported
            | AuthError::ChannelBindingMismatch
            | AuthError::NonceMismatch => ErrorKind::Protocol,
            AuthError::InvalidServerSignature
            | AuthError::ServerError(_)
            | AuthError::TooManyIterations { .. } => ErrorKind::Server,
            AuthError::InvalidVerifier(_)
            | AuthError::UnusableSecret(_)
            | AuthError::OutOfOrder => ErrorKind::Internal,
        }
    }

    fn sqlstate(&self) -> &'static str {
        match self.kind() {
            ErrorKind::Protocol => match self {
                AuthError::ChannelBindingUnsupported | AuthError::UnsupportedMechanism => {
                    sqlstate::FEATURE_NOT_SUPPORTED
                }
                _ => sqlstate::PROTOCOL_VIOLATION,
            },
            ErrorKind::AuthFailed | ErrorKind::Internal => sqlstate::INVALID_PASSWORD,
            ErrorKind::Server => sqlstate::CONNECTION_FAILURE,
        }
    }

    fn client_message(&self) -> String {
        match self.kind() {
            ErrorKind::Protocol => self.to_string(),
            // Internal and server trouble: the client learns only that it failed.
            _ => "password authentication failed".to_string(),
        }
    }
}

impl AuthError {
    /// PostgreSQL's FATAL for a failed login:
    /// `password authentication failed for user "alice"` (28P01) for auth failures and
    /// internal trouble; the protocol text for protocol errors.
    pub fn to_error_response_for_user(&self, user: &str) -> ErrorResponse {
        match self.kind() {
            ErrorKind::Protocol => self.to_error_response(),
            _ => ErrorResponse::new(
                Severity::Fatal,
                sqlstate::INVALID_PASSWORD,
                format!("password authentication failed for user \"{user}\""),
            ),
        }
    }
}
