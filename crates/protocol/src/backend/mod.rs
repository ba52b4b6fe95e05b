//! Messages a server (backend) sends, one file per message family.

mod authentication;
mod backend_key_data;
mod command_complete;
mod copy_response;
mod data_row;
mod error_response;
mod negotiate_protocol_version;
mod notification_response;
mod parameter_description;
mod parameter_status;
mod ready_for_query;
mod row_description;
mod status;

pub use authentication::{code as auth_code, Authentication};
pub use backend_key_data::BackendKeyData;
pub use command_complete::CommandComplete;
pub use copy_response::{CopyBothResponse, CopyInResponse, CopyOutResponse};
pub use data_row::DataRow;
pub use error_response::{field, ErrorResponse, NoticeResponse, Severity};
pub use negotiate_protocol_version::NegotiateProtocolVersion;
pub use notification_response::NotificationResponse;
pub use parameter_description::ParameterDescription;
pub use parameter_status::ParameterStatus;
pub use ready_for_query::{ReadyForQuery, TransactionStatus};
pub use row_description::{FieldDescription, RowDescription};
pub use status::{
    BindComplete, CloseComplete, EmptyQueryResponse, NoData, ParseComplete, PortalSuspended,
};

use crate::codec::Frame;
use crate::copy::{CopyData, CopyDone};
use crate::error::ProtocolError;
use crate::frontend::FunctionCallResponse;
use crate::message::Message;
use bytes::BytesMut;

/// Any message a server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    Authentication(Authentication),
    ParameterStatus(ParameterStatus),
    BackendKeyData(BackendKeyData),
    ReadyForQuery(ReadyForQuery),
    ErrorResponse(ErrorResponse),
    NoticeResponse(NoticeResponse),
    RowDescription(RowDescription),
    DataRow(DataRow),
    CommandComplete(CommandComplete),
    EmptyQueryResponse,
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    ParameterDescription(ParameterDescription),
    PortalSuspended,
    CopyInResponse(CopyInResponse),
    CopyOutResponse(CopyOutResponse),
    CopyBothResponse(CopyBothResponse),
    CopyData(CopyData),
    CopyDone,
    NotificationResponse(NotificationResponse),
    NegotiateProtocolVersion(NegotiateProtocolVersion),
    FunctionCallResponse(FunctionCallResponse),
}

/// Decode a bodiless message (checking it is empty) into its variant.
fn empty<M: Message>(body: &[u8], v: BackendMessage) -> Result<BackendMessage, ProtocolError> {
    M::decode(body)?;
    Ok(v)
}

impl BackendMessage {
    pub fn decode(tag: u8, body: &[u8]) -> Result<BackendMessage, ProtocolError> {
        use BackendMessage as B;
        Ok(match tag {
            Authentication::TAG => B::Authentication(Authentication::decode(body)?),
            ParameterStatus::TAG => B::ParameterStatus(ParameterStatus::decode(body)?),
            BackendKeyData::TAG => B::BackendKeyData(BackendKeyData::decode(body)?),
            ReadyForQuery::TAG => B::ReadyForQuery(ReadyForQuery::decode(body)?),
            ErrorResponse::TAG => B::ErrorResponse(ErrorResponse::decode(body)?),
            NoticeResponse::TAG => B::NoticeResponse(NoticeResponse::decode(body)?),
            RowDescription::TAG => B::RowDescription(RowDescription::decode(body)?),
            DataRow::TAG => B::DataRow(DataRow::decode(body)?),
            CommandComplete::TAG => B::CommandComplete(CommandComplete::decode(body)?),
            EmptyQueryResponse::TAG => empty::<EmptyQueryResponse>(body, B::EmptyQueryResponse)?,
            ParseComplete::TAG => empty::<ParseComplete>(body, B::ParseComplete)?,
            BindComplete::TAG => empty::<BindComplete>(body, B::BindComplete)?,
            CloseComplete::TAG => empty::<CloseComplete>(body, B::CloseComplete)?,
            NoData::TAG => empty::<NoData>(body, B::NoData)?,
            ParameterDescription::TAG => {
                B::ParameterDescription(ParameterDescription::decode(body)?)
            }
            PortalSuspended::TAG => empty::<PortalSuspended>(body, B::PortalSuspended)?,
            CopyInResponse::TAG => B::CopyInResponse(CopyInResponse::decode(body)?),
            CopyOutResponse::TAG => B::CopyOutResponse(CopyOutResponse::decode(body)?),
            CopyBothResponse::TAG => B::CopyBothResponse(CopyBothResponse::decode(body)?),
            CopyData::TAG => B::CopyData(CopyData::decode(body)?),
            CopyDone::TAG => empty::<CopyDone>(body, B::CopyDone)?,
            NotificationResponse::TAG => {
                B::NotificationResponse(NotificationResponse::decode(body)?)
            }
            NegotiateProtocolVersion::TAG => {
                B::NegotiateProtocolVersion(NegotiateProtocolVersion::decode(body)?)
            }
            FunctionCallResponse::TAG => {
                B::FunctionCallResponse(FunctionCallResponse::decode(body)?)
            }
            tag => return Err(ProtocolError::UnknownMessageType { tag }),
        })
    }

    pub fn decode_frame(frame: &Frame) -> Result<BackendMessage, ProtocolError> {
        BackendMessage::decode(frame.tag, &frame.body)
    }

    pub fn encode(&self, dst: &mut BytesMut) {
        use BackendMessage as B;
        match self {
            B::Authentication(m) => m.encode(dst),
            B::ParameterStatus(m) => m.encode(dst),
            B::BackendKeyData(m) => m.encode(dst),
            B::ReadyForQuery(m) => m.encode(dst),
            B::ErrorResponse(m) => m.encode(dst),
            B::NoticeResponse(m) => m.encode(dst),
            B::RowDescription(m) => m.encode(dst),
            B::DataRow(m) => m.encode(dst),
            B::CommandComplete(m) => m.encode(dst),
            B::EmptyQueryResponse => EmptyQueryResponse.encode(dst),
            B::ParseComplete => ParseComplete.encode(dst),
            B::BindComplete => BindComplete.encode(dst),
            B::CloseComplete => CloseComplete.encode(dst),
            B::NoData => NoData.encode(dst),
            B::ParameterDescription(m) => m.encode(dst),
            B::PortalSuspended => PortalSuspended.encode(dst),
            B::CopyInResponse(m) => m.encode(dst),
            B::CopyOutResponse(m) => m.encode(dst),
            B::CopyBothResponse(m) => m.encode(dst),
            B::CopyData(m) => m.encode(dst),
            B::CopyDone => CopyDone.encode(dst),
            B::NotificationResponse(m) => m.encode(dst),
            B::NegotiateProtocolVersion(m) => m.encode(dst),
            B::FunctionCallResponse(m) => m.encode(dst),
        }
    }
}
