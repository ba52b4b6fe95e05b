//! Arbitrary bytes as the first packet of a connection.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgherd_protocol::StartupPacket;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    if let Ok(Some(packet)) = StartupPacket::decode_from(&mut buf) {
        // A packet we accept re-encodes to one we accept again, unchanged.
        let mut out = BytesMut::new();
        packet.encode(&mut out);
        let again = StartupPacket::decode_from(&mut out);
        assert_eq!(again, Ok(Some(packet)));
    }
    let _ = StartupPacket::decode(data);
});
