//! FunctionCall (`F`, frontend) and FunctionCallResponse (`V`, backend): the legacy
//! fast-path interface (large objects still use it).

use crate::buf::{count_u16, put_nullable, Reader};
use crate::error::ProtocolError;
use crate::frontend::FormatCode;
use crate::message::Message;
use bytes::{BufMut, Bytes, BytesMut};

/// FunctionCall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCall {
    pub function_oid: u32,
    pub arg_formats: Vec<FormatCode>,
    pub args: Vec<Option<Bytes>>,
    pub result_format: FormatCode,
}

impl Message for FunctionCall {
    const TAG: u8 = b'F';
    const NAME: &'static str = "FunctionCall";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let function_oid = r.u32()?;
        let count = usize::from(r.u16()?);
        let mut arg_formats = Vec::with_capacity(r.capacity(count, 2));
        for _ in 0..count {
            arg_formats.push(r.i16()?);
        }
        let count = usize::from(r.u16()?);
        let mut args = Vec::with_capacity(r.capacity(count, 4));
        for _ in 0..count {
            args.push(r.nullable()?.map(Bytes::copy_from_slice));
        }
        let result_format = r.i16()?;
        r.finish()?;
        Ok(FunctionCall {
            function_oid,
            arg_formats,
            args,
            result_format,
        })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u32(self.function_oid);
        dst.put_u16(count_u16(self.arg_formats.len()));
        for f in &self.arg_formats {
            dst.put_i16(*f);
        }
        dst.put_u16(count_u16(self.args.len()));
        for a in &self.args {
            put_nullable(dst, a.as_deref());
        }
        dst.put_i16(self.result_format);
    }
}

/// FunctionCallResponse: the result, `None` for NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCallResponse {
    pub result: Option<Bytes>,
}

impl Message for FunctionCallResponse {
    const TAG: u8 = b'V';
    const NAME: &'static str = "FunctionCallResponse";

    fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, Self::NAME);
        let result = r.nullable()?.map(Bytes::copy_from_slice);
        r.finish()?;
        Ok(FunctionCallResponse { result })
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        put_nullable(dst, self.result.as_deref());
    }
}
