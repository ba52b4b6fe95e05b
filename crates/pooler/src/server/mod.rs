//! The pooler's server side: logging into PostgreSQL servers and talking to them.
//!
//! - [`ServerConnection::connect`] logs into a [`ServerTarget`] (trust, cleartext,
//!   md5, SCRAM-SHA-256 with a password or with keys passed through from the
//!   client's own SCRAM exchange), bounded by `connect_timeout`.
//! - A connection forwards bytes untouched ([`ServerConnection::write_all`],
//!   [`ServerConnection::read_frame`]) while keeping what the pool needs to know:
//!   transaction status from ReadyForQuery, ParameterStatus values, whether it is
//!   broken, byte counters, the statements the pooler prepared on it.
//! - [`send_cancel`] delivers a CancelRequest on a fresh connection.
//! - [`FramedReader`] reads frames (or startup packets) from any `AsyncRead`; the
//!   client side uses it too.
//!
//! Errors ([`ServerError`]) never hold a password or key; a login the server
//! refuses keeps its ErrorResponse ([`ServerError::Auth`]) to pass on to clients.

mod cancel;
mod connection;
mod error;
pub mod framed;
mod target;

pub use cancel::{send_cancel, CancelInFlight, CancelsInFlight};
pub use connection::{ServerConnection, Severance};
pub use error::{LoginFailure, ServerError};
pub use framed::{FramedError, FramedReader};
pub use pgherd_protocol::backend::TransactionStatus;
pub use target::{ServerCredential, ServerTarget, DEFAULT_CONNECT_TIMEOUT};
