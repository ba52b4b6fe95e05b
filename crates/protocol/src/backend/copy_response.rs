//! CopyInResponse (`G`), CopyOutResponse (`H`), CopyBothResponse (`W`).

/// The three share one layout.
macro_rules! copy_response {
    ($(#[$doc:meta])* $name:ident, $tag:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            /// Overall format: 0 text, 1 binary.
            pub format: u8,
            pub column_formats: Vec<$crate::frontend::FormatCode>,
        }

        impl $crate::message::Message for $name {
            const TAG: u8 = $tag;
            const NAME: &'static str = stringify!($name);

            fn decode(body: &[u8]) -> Result<Self, $crate::error::ProtocolError> {
                let mut r = $crate::buf::Reader::new(body, Self::NAME);
                let format = r.u8()?;
                let count = usize::from(r.u16()?);
                let mut column_formats = Vec::with_capacity(r.capacity(count, 2));
                for _ in 0..count {
                    column_formats.push(r.i16()?);
                }
                r.finish()?;
                Ok($name { format, column_formats })
            }

            fn encode_body(&self, dst: &mut bytes::BytesMut) {
                use bytes::BufMut;
                dst.put_u8(self.format);
                dst.put_u16($crate::buf::count_u16(self.column_formats.len()));
                for f in &self.column_formats {
                    dst.put_i16(*f);
                }
            }
        }
    };
}

copy_response!(
    /// CopyInResponse: the server is ready for COPY FROM STDIN data.
    CopyInResponse,
    b'G'
);
copy_response!(
    /// CopyOutResponse: COPY TO STDOUT data follows.
    CopyOutResponse,
    b'H'
);
copy_response!(
    /// CopyBothResponse: streaming replication.
    CopyBothResponse,
    b'W'
);
