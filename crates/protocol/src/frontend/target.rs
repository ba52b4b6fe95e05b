//! What Describe and Close act on: a prepared statement or a portal.

use crate::buf::{put_cstr, Reader};
use crate::error::ProtocolError;
use bytes::{BufMut, BytesMut};

/// `S` + statement name or `P` + portal name (empty = unnamed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Statement(String),
    Portal(String),
}

impl Target {
    pub fn name(&self) -> &str {
        match self {
            Target::Statement(n) | Target::Portal(n) => n,
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Target, ProtocolError> {
        let kind = r.u8()?;
        let name = r.string()?;
        match kind {
            b'S' => Ok(Target::Statement(name)),
            b'P' => Ok(Target::Portal(name)),
            _ => Err(r.invalid("target must be 'S' or 'P'")),
        }
    }

    pub(crate) fn encode(&self, dst: &mut BytesMut) {
        self.encode_named(self.name(), dst);
    }

    pub(crate) fn encode_named(&self, name: &str, dst: &mut BytesMut) {
        dst.put_u8(match self {
            Target::Statement(_) => b'S',
            Target::Portal(_) => b'P',
        });
        put_cstr(dst, name.as_bytes());
    }
}

/// Describe and Close share their layout; this implements both.
macro_rules! target_message {
    ($(#[$doc:meta])* $name:ident, $tag:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name {
            pub target: $crate::frontend::Target,
        }

        impl $name {
            pub fn statement(name: impl Into<String>) -> Self {
                $name { target: $crate::frontend::Target::Statement(name.into()) }
            }

            pub fn portal(name: impl Into<String>) -> Self {
                $name { target: $crate::frontend::Target::Portal(name.into()) }
            }

            /// Write with another name (statement or portal, as the target says).
            pub fn encode_renamed(&self, name: &str, dst: &mut bytes::BytesMut) {
                $crate::buf::write_frame(dst, <Self as $crate::message::Message>::TAG, |d| {
                    self.target.encode_named(name, d)
                });
            }
        }

        impl $crate::message::Message for $name {
            const TAG: u8 = $tag;
            const NAME: &'static str = stringify!($name);

            fn decode(body: &[u8]) -> Result<Self, $crate::error::ProtocolError> {
                let mut r = $crate::buf::Reader::new(body, Self::NAME);
                let target = $crate::frontend::Target::decode(&mut r)?;
                r.finish()?;
                Ok($name { target })
            }

            fn encode_body(&self, dst: &mut bytes::BytesMut) {
                self.target.encode(dst);
            }
        }
    };
}
pub(crate) use target_message;
