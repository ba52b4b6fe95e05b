//! RowDescription (`T`).

use crate::buf::{count_u16, put_cstr, Reader};
use crate::error::ProtocolError;
use crate::frontend::FormatCode;
use crate::message::Message;
use bytes::{BufMut, BytesMut};

/// One result column.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldDescription {
    pub name: String,
    /// Table OID, or 0.
    pub table_oid: u32,
    /// Column number in that table, or 0.
    pub column_id: i16,
    pub type_oid: u32,
    /// `pg_type.typlen`; negative for variable width.
    pub type_size: i16,
    /// `pg_attribute.atttypmod`.
    pub type_modifier: i32,
    pub format: FormatCode,
}

impl FieldDescription {
    /// A text-format column of type `type_oid`, not from a table (admin console rows).
    pub fn text(name: impl Into<String>, type_oid: u32, type_size: i16) -> Self {
        FieldDescription {
            name: name.into(),
            table_oid: 0,
            column_id: 0,
            type_oid,
            type_size,
            type_modifier: -1,
            format: 0,
        }
    }
}

/// RowDescription.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowDescription {
    pub fields: Vec<FieldDescription>,
}

impl Message for RowDescription {
    const TAG: u8 = b'T';
    const NAME: &'static str = "RowDescription";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let count = usize::from(r.u16()?);
        // A field is at least 19 bytes (empty name + 18 fixed).
        let mut fields = Vec::with_capacity(r.capacity(count, 19));
        for _ in 0..count {
            fields.push(FieldDescription {
                name: r.string()?,
                table_oid: r.u32()?,
                column_id: r.i16()?,
                type_oid: r.u32()?,
                type_size: r.i16()?,
                type_modifier: r.i32()?,
                format: r.i16()?,
            });
        }
        r.finish()?;
        Ok(RowDescription { fields })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u16(count_u16(self.fields.len()));
        for f in &self.fields {
            put_cstr(dst, f.name.as_bytes());
            dst.put_u32(f.table_oid);
            dst.put_i16(f.column_id);
            dst.put_u32(f.type_oid);
            dst.put_i16(f.type_size);
            dst.put_i32(f.type_modifier);
            dst.put_i16(f.format);
        }
    }
}
