//! Arbitrary bytes through both frame decoders and every message decoder: must only
//! ever return `Ok(None)`, a frame, or a typed error.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgherd_protocol::frontend::{Bind, Parse};
use pgherd_protocol::{BackendMessage, FrameDecoder, FrontendMessage};

fuzz_target!(|data: &[u8]| {
    for decoder in [FrameDecoder::frontend(), FrameDecoder::backend()] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(frame)) = decoder.decode(&mut buf) {
            if let Ok(m) = FrontendMessage::decode_frame(&frame) {
                // What decodes must re-encode.
                let mut out = BytesMut::new();
                m.encode(&mut out);
            }
            if let Ok(m) = BackendMessage::decode_frame(&frame) {
                let mut out = BytesMut::new();
                m.encode(&mut out);
            }
            let mut out = BytesMut::new();
            let _ = Parse::rename(&frame.body, "s", &mut out);
            let _ = Bind::rename(&frame.body, "s", &mut out);
        }
    }
});
