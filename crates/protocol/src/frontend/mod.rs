//! Messages a client (frontend) sends, one file per message family.

mod bind;
mod close;
mod control;
mod describe;
mod execute;
mod function_call;
mod parse;
mod password;
mod query;
mod target;

pub use bind::{Bind, FormatCode};
pub use close::Close;
pub use control::{Flush, Sync, Terminate};
pub use describe::Describe;
pub use execute::Execute;
pub use function_call::{FunctionCall, FunctionCallResponse};
pub use parse::Parse;
pub use password::{PasswordMessage, SaslInitialResponse, SaslResponse};
pub use query::Query;
pub use target::Target;

use crate::codec::Frame;
use crate::copy::{CopyData, CopyDone, CopyFail};
use crate::error::ProtocolError;
use crate::message::Message;
use bytes::{Bytes, BytesMut};

/// Any message a client sends after startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    Query(Query),
    Parse(Parse),
    Bind(Bind),
    Describe(Describe),
    Execute(Execute),
    Sync,
    Flush,
    Close(Close),
    Terminate,
    /// A `p` message, kept raw: PasswordMessage, SASLInitialResponse or SASLResponse
    /// depending on the authentication request outstanding; decode it with one of
    /// those types.
    AuthResponse(Bytes),
    CopyData(CopyData),
    CopyDone,
    CopyFail(CopyFail),
    FunctionCall(FunctionCall),
}

impl FrontendMessage {
    pub fn decode(tag: u8, body: &[u8]) -> Result<FrontendMessage, ProtocolError> {
        Ok(match tag {
            Query::TAG => FrontendMessage::Query(Query::decode(body)?),
            Parse::TAG => FrontendMessage::Parse(Parse::decode(body)?),
            Bind::TAG => FrontendMessage::Bind(Bind::decode(body)?),
            Describe::TAG => FrontendMessage::Describe(Describe::decode(body)?),
            Execute::TAG => FrontendMessage::Execute(Execute::decode(body)?),
            Sync::TAG => {
                Sync::decode(body)?;
                FrontendMessage::Sync
            }
            Flush::TAG => {
                Flush::decode(body)?;
                FrontendMessage::Flush
            }
            Close::TAG => FrontendMessage::Close(Close::decode(body)?),
            Terminate::TAG => {
                Terminate::decode(body)?;
                FrontendMessage::Terminate
            }
            PasswordMessage::TAG => FrontendMessage::AuthResponse(Bytes::copy_from_slice(body)),
            CopyData::TAG => FrontendMessage::CopyData(CopyData::decode(body)?),
            CopyDone::TAG => {
                CopyDone::decode(body)?;
                FrontendMessage::CopyDone
            }
            CopyFail::TAG => FrontendMessage::CopyFail(CopyFail::decode(body)?),
            FunctionCall::TAG => FrontendMessage::FunctionCall(FunctionCall::decode(body)?),
            tag => return Err(ProtocolError::UnknownMessageType { tag }),
        })
    }

    pub fn decode_frame(frame: &Frame) -> Result<FrontendMessage, ProtocolError> {
        FrontendMessage::decode(frame.tag, &frame.body)
    }

    pub fn tag(&self) -> u8 {
        match self {
            FrontendMessage::Query(_) => Query::TAG,
            FrontendMessage::Parse(_) => Parse::TAG,
            FrontendMessage::Bind(_) => Bind::TAG,
            FrontendMessage::Describe(_) => Describe::TAG,
            FrontendMessage::Execute(_) => Execute::TAG,
            FrontendMessage::Sync => Sync::TAG,
            FrontendMessage::Flush => Flush::TAG,
            FrontendMessage::Close(_) => Close::TAG,
            FrontendMessage::Terminate => Terminate::TAG,
            FrontendMessage::AuthResponse(_) => PasswordMessage::TAG,
            FrontendMessage::CopyData(_) => CopyData::TAG,
            FrontendMessage::CopyDone => CopyDone::TAG,
            FrontendMessage::CopyFail(_) => CopyFail::TAG,
            FrontendMessage::FunctionCall(_) => FunctionCall::TAG,
        }
    }

    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            FrontendMessage::Query(m) => m.encode(dst),
            FrontendMessage::Parse(m) => m.encode(dst),
            FrontendMessage::Bind(m) => m.encode(dst),
            FrontendMessage::Describe(m) => m.encode(dst),
            FrontendMessage::Execute(m) => m.encode(dst),
            FrontendMessage::Sync => Sync.encode(dst),
            FrontendMessage::Flush => Flush.encode(dst),
            FrontendMessage::Close(m) => m.encode(dst),
            FrontendMessage::Terminate => Terminate.encode(dst),
            FrontendMessage::AuthResponse(b) => SaslResponse { data: b.clone() }.encode(dst),
            FrontendMessage::CopyData(m) => m.encode(dst),
            FrontendMessage::CopyDone => CopyDone.encode(dst),
            FrontendMessage::CopyFail(m) => m.encode(dst),
            FrontendMessage::FunctionCall(m) => m.encode(dst),
        }
    }
}
