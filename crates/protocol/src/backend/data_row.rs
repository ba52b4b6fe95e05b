//! DataRow (`D`).

use crate::buf::{count_u16, put_nullable, Reader};
use crate::error::ProtocolError;
use crate::message::Message;
use bytes::{BufMut, Bytes, BytesMut};

/// DataRow: one row's column values, `None` for NULL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataRow {
    pub values: Vec<Option<Bytes>>,
}

impl DataRow {
    /// A row of text values (admin console output).
    pub fn from_text<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> Self {
        DataRow {
            values: values
                .into_iter()
                .map(|v| v.map(|s| Bytes::copy_from_slice(s.as_bytes())))
                .collect(),
        }
    }
}

impl Message for DataRow {
    const TAG: u8 = b'D';
    const NAME: &'static str = "DataRow";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let count = usize::from(r.u16()?);
        let mut values = Vec::with_capacity(r.capacity(count, 4));
        for _ in 0..count {
            values.push(r.nullable()?.map(Bytes::copy_from_slice));
        }
        r.finish()?;
        Ok(DataRow { values })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u16(count_u16(self.values.len()));
        for v in &self.values {
            put_nullable(dst, v.as_deref());
        }
    }
}
