//! PostgreSQL v3 wire protocol for pgherd, without I/O: framing over `bytes`
//! buffers, startup-phase packets, typed messages both directions, and SCRAM-SHA-256
//! and md5 authentication (server and client side) as plain state machines.
//!
//! - [`codec`]: [`FrameDecoder`] splits `tag + length + body` frames off a `BytesMut`,
//!   enforcing PostgreSQL's own limits; [`Frame`] forwards bytes untouched.
//! - [`startup`]: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.
//! - [`frontend`] / [`backend`]: one type per message implementing [`Message`]
//!   (`decode(body)`, `encode(dst)`), gathered in [`FrontendMessage`] /
//!   [`BackendMessage`].
//! - [`auth`]: SCRAM-SHA-256 ([`auth::ScramServer`], [`auth::ScramClient`],
//!   [`auth::ScramVerifier`]) and md5.
//! - [`error`]: [`ProtocolError`], [`AuthError`] and what a client may be told.
//!
//! Decoding never panics and never allocates from an untrusted length before checking
//! it against a limit.

pub mod auth;
pub mod backend;
mod buf;
pub mod codec;
pub mod copy;
pub mod error;
pub mod frontend;
mod message;
pub mod startup;

pub use backend::BackendMessage;
pub use codec::{Frame, FrameDecoder, FrameLen, FrameLimit};
pub use copy::{CopyData, CopyDone, CopyFail};
pub use error::{AuthError, ErrorKind, ProtocolError, UserFacingError};
pub use frontend::FrontendMessage;
pub use message::Message;
pub use startup::{CancelRequest, ProtocolVersion, StartupMessage, StartupPacket};
