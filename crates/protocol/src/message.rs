//! The [`Message`] trait every typed message implements.

use crate::buf::write_frame;
use crate::codec::Frame;
use crate::error::ProtocolError;
use bytes::BytesMut;

/// A typed protocol message. `decode` takes the body (what follows the type byte and
/// length word, as in [`Frame::body`]); `encode` writes the whole frame.
pub trait Message: Sized {
    /// The type byte.
    const TAG: u8;
    /// The protocol's name for the message, used in errors.
    const NAME: &'static str;

    fn decode(body: &[u8]) -> Result<Self, ProtocolError>;

    /// Write the body only.
    fn encode_body(&self, dst: &mut BytesMut);

    /// Write the whole frame: type byte, length, body.
    fn encode(&self, dst: &mut BytesMut) {
        write_frame(dst, Self::TAG, |d| self.encode_body(d));
    }

    /// Decode a frame, checking its type byte.
    fn decode_frame(frame: &Frame) -> Result<Self, ProtocolError> {
        if frame.tag != Self::TAG {
            return Err(ProtocolError::UnknownMessageType { tag: frame.tag });
        }
        Self::decode(&frame.body)
    }

    fn to_frame(&self) -> Frame {
        let mut body = BytesMut::new();
        self.encode_body(&mut body);
        Frame::new(Self::TAG, body.freeze())
    }
}

/// Messages with an empty body.
macro_rules! empty_message {
    ($(#[$doc:meta])* $name:ident, $tag:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
        pub struct $name;

        impl $crate::message::Message for $name {
            const TAG: u8 = $tag;
            const NAME: &'static str = stringify!($name);

            fn decode(body: &[u8]) -> Result<Self, $crate::error::ProtocolError> {
                $crate::buf::Reader::new(body, Self::NAME).finish()?;
                Ok($name)
            }

            fn encode_body(&self, _dst: &mut bytes::BytesMut) {}
        }
    };
}
pub(crate) use empty_message;
