//! ReadyForQuery (`Z`).

use crate::buf::Reader;
use crate::error::ProtocolError;
use crate::message::Message;
use bytes::{BufMut, BytesMut};

/// Transaction status reported with ReadyForQuery. In transaction pooling a server
/// connection goes back to the pool only at `Idle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TransactionStatus {
    pub fn as_byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadyForQuery {
    pub status: TransactionStatus,
}

impl Message for ReadyForQuery {
    const TAG: u8 = b'Z';
    const NAME: &'static str = "ReadyForQuery";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let status = match r.u8()? {
            b'I' => TransactionStatus::Idle,
            b'T' => TransactionStatus::InTransaction,
            b'E' => TransactionStatus::Failed,
            _ => return Err(r.invalid("transaction status must be I, T or E")),
        };
        r.finish()?;
        Ok(ReadyForQuery { status })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u8(self.status.as_byte());
    }
}
