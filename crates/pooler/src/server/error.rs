//! Errors of server connections. None ever holds a password or key: they name the
//! server (`host:port`), the user and what went wrong.

use super::framed::FramedError;
use pgherd_protocol::backend::{ErrorResponse, Severity};
use pgherd_protocol::error::{sqlstate, AuthError};
use pgherd_protocol::ProtocolError;
use std::time::Duration;

/// Why the pooler could not authenticate to a server on its own side (the server did
/// not refuse: we could not answer, or it could not prove itself).
#[derive(Debug, thiserror::Error)]
pub enum LoginFailure {
    /// The server asks for a method our credential cannot answer (e.g. cleartext with
    /// only an md5 hash, SCRAM with an md5 hash, anything with no password).
    #[error("server requested {method} authentication, but only {have} is configured")]
    CredentialUnusable {
        method: &'static str,
        have: &'static str,
    },
    /// An authentication request we do not implement (Kerberos, GSSAPI, SSPI, …).
    #[error("server requested unsupported authentication method (code {code})")]
    UnsupportedMethod { code: i32 },
    /// SASL without SCRAM-SHA-256 among the mechanisms.
    #[error("server offered no supported SASL mechanism (offered: {offered})")]
    UnsupportedMechanism { offered: String },
    /// `ScramKeys` that are not 32 bytes each.
    #[error("SCRAM pass-through keys must be 32 bytes each")]
    InvalidScramKeys,
    /// The SCRAM exchange failed on our side (bad server signature, malformed
    /// message, the server's `e=` error).
    #[error("SCRAM: {0}")]
    Scram(#[from] AuthError),
    /// The SCRAM key derivation (run on a blocking thread) did not finish.
    #[error("SCRAM key derivation was aborted")]
    ScramAborted,
    /// AuthenticationOk arrived before the server proved it knows the SCRAM secret.
    #[error("server skipped the end of the SCRAM exchange")]
    ScramIncomplete,
}

/// A server connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// TCP connect failed (refused, unreachable, name not resolved).
    #[error("could not connect to server {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// TLS could not be set up (`server_tls_sslmode`): the server declined it when
    /// required, or the handshake or certificate check failed.
    #[error("TLS with server {addr}: {reason}")]
    Tls { addr: String, reason: String },
    /// A bounded wait ran out.
    #[error("timed out after {after:?} {during} server {addr}")]
    Timeout {
        addr: String,
        /// `connecting to`, `logging into`, `running a query on`, `cancelling on`.
        during: &'static str,
        after: Duration,
    },
    /// The server refused the login with an ErrorResponse before its first
    /// ReadyForQuery: wrong password (28P01), no such role or database (28000,
    /// 3D000), too many connections (53300), starting up (57P03), … Pass
    /// `response` on to the client as it is.
    #[error("server {addr} refused login of user \"{user}\": {response}")]
    Auth {
        addr: String,
        user: String,
        response: ErrorResponse,
    },
    /// We could not complete authentication ourselves (see [`LoginFailure`]).
    #[error("login of user \"{user}\" to server {addr} failed: {reason}")]
    Login {
        addr: String,
        user: String,
        reason: LoginFailure,
    },
    /// The server broke the protocol (malformed or oversized frame).
    #[error("protocol error from server: {0}")]
    Protocol(#[from] ProtocolError),
    /// A message that cannot come at this point.
    #[error("unexpected message '{}' from server {during}", .tag.escape_ascii())]
    UnexpectedMessage { tag: u8, during: &'static str },
    #[error("I/O error on server connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("server closed the connection")]
    Closed,
    /// A statement run by the pooler (`simple_query`) failed, or the server reported
    /// a fatal error.
    #[error("server error: {0}")]
    ServerError(ErrorResponse),
    /// Statement text the pooler was asked to run cannot be sent (contains NUL).
    #[error("query text contains a NUL byte")]
    InvalidQuery,
}

impl From<FramedError> for ServerError {
    fn from(e: FramedError) -> Self {
        match e {
            FramedError::Io(e) => ServerError::Io(e),
            FramedError::Protocol(e) => ServerError::Protocol(e),
            FramedError::UnexpectedEof { .. } => ServerError::Closed,
        }
    }
}

impl ServerError {
    /// The server is not there to log in to (down, unreachable, starting up or shutting
    /// down), as opposed to refusing this login: another member may serve instead.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ServerError::Connect { .. } | ServerError::Io(_) | ServerError::Closed => true,
            ServerError::Timeout { during, .. } => *during == "connecting to",
            // cannot_connect_now (starting up, shutting down, in recovery), and a
            // backend terminated by a shutdown or a crash during the login.
            ServerError::Auth { response, .. } | ServerError::ServerError(response) => {
                matches!(response.code(), Some("57P01" | "57P02" | "57P03"))
            }
            _ => false,
        }
    }

    /// The server's own ErrorResponse, when it sent one.
    pub fn server_response(&self) -> Option<&ErrorResponse> {
        match self {
            ServerError::Auth { response, .. } | ServerError::ServerError(response) => {
                Some(response)
            }
            _ => None,
        }
    }

    /// The SQLSTATE a client should see: the server's own, else 08006 (connection
    /// failure) for trouble reaching or talking to the server.
    pub fn sqlstate(&self) -> &str {
        self.server_response()
            .and_then(ErrorResponse::code)
            .unwrap_or(sqlstate::CONNECTION_FAILURE)
    }

    /// What to send a client this failure affects: the server's ErrorResponse as-is,
    /// else a FATAL 08006 with a message that names no server internals beyond what
    /// PgBouncer would say.
    pub fn to_client_error(&self) -> ErrorResponse {
        if let Some(r) = self.server_response() {
            return r.clone();
        }
        let message = match self {
            ServerError::Connect { .. } | ServerError::Timeout { .. } => {
                "pgherd cannot connect to server".to_owned()
            }
            ServerError::Login { .. } => "server login failed: authentication with the \
                                          database server failed"
                .to_owned(),
            ServerError::Tls { .. } => "server login failed: TLS with the database server \
                                        failed (server_tls_sslmode)"
                .to_owned(),
            _ => "server conn crashed?".to_owned(),
        };
        ErrorResponse::new(Severity::Fatal, sqlstate::CONNECTION_FAILURE, message)
    }

    /// A stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerError::Connect { .. } => "connect",
            ServerError::Timeout { .. } => "timeout",
            ServerError::Auth { .. } => "auth",
            ServerError::Login { .. } => "login",
            ServerError::Tls { .. } => "tls",
            ServerError::Protocol(_) | ServerError::UnexpectedMessage { .. } => "protocol",
            ServerError::Io(_) => "io",
            ServerError::Closed => "closed",
            ServerError::ServerError(_) => "server",
            ServerError::InvalidQuery => "invalid_query",
        }
    }

    /// Whether the connection this came from may still be used. Only a failed
    /// statement ([`ServerError::ServerError`] with severity ERROR) leaves it usable.
    pub fn is_connection_fatal(&self) -> bool {
        match self {
            ServerError::ServerError(r) => {
                !matches!(r.severity(), Some("ERROR") | Some("WARNING") | None)
            }
            ServerError::InvalidQuery => false,
            _ => true,
        }
    }
}
