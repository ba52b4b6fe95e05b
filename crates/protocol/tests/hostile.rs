//! Truncated, oversized and malformed input: `Ok(None)` or a typed error, never a
//! panic, never an allocation sized by an untrusted length.

use bytes::{BufMut, Bytes, BytesMut};
use pgherd_protocol::backend::*;
use pgherd_protocol::codec::*;
use pgherd_protocol::frontend::*;
use pgherd_protocol::*;
use proptest::prelude::*;

fn sample_frontend_frames() -> Vec<BytesMut> {
    let mut out = Vec::new();
    let msgs = [
        FrontendMessage::Query(Query::new("SELECT 1")),
        FrontendMessage::Parse(Parse {
            statement: "s".into(),
            query: Bytes::from_static(b"SELECT $1"),
            param_types: vec![23],
        }),
        FrontendMessage::Bind(Bind {
            portal: "".into(),
            statement: "s".into(),
            param_formats: vec![0],
            params: vec![Some(Bytes::from_static(b"1")), None],
            result_formats: vec![],
        }),
        FrontendMessage::Describe(Describe::portal("")),
        FrontendMessage::Execute(Execute {
            portal: "".into(),
            max_rows: 0,
        }),
        FrontendMessage::Sync,
        FrontendMessage::Terminate,
    ];
    for m in msgs {
        let mut b = BytesMut::new();
        m.encode(&mut b);
        out.push(b);
    }
    out
}

fn sample_backend_frames() -> Vec<BytesMut> {
    let msgs = [
        BackendMessage::Authentication(Authentication::Sasl {
            mechanisms: vec!["SCRAM-SHA-256".into()],
        }),
        BackendMessage::ReadyForQuery(ReadyForQuery {
            status: TransactionStatus::Idle,
        }),
        BackendMessage::ErrorResponse(ErrorResponse::new(Severity::Error, "XX000", "x")),
        BackendMessage::DataRow(DataRow::from_text([Some("1"), None])),
        BackendMessage::ParseComplete,
    ];
    msgs.iter()
        .map(|m| {
            let mut b = BytesMut::new();
            m.encode(&mut b);
            b
        })
        .collect()
}

#[test]
fn every_prefix_of_a_valid_frame_needs_more_bytes() {
    for (decoder, frames) in [
        (FrameDecoder::frontend(), sample_frontend_frames()),
        (FrameDecoder::backend(), sample_backend_frames()),
    ] {
        for frame in frames {
            for n in 0..frame.len() {
                let mut buf = BytesMut::from(&frame[..n]);
                assert_eq!(
                    decoder.decode(&mut buf),
                    Ok(None),
                    "prefix {n} of {frame:?}"
                );
                assert_eq!(&buf[..], &frame[..n], "a prefix must stay in the buffer");
            }
            let mut buf = frame.clone();
            assert!(decoder.decode(&mut buf).unwrap().is_some());
        }
    }
}

#[test]
fn every_prefix_of_a_startup_packet_needs_more_bytes() {
    let packets = [
        StartupPacket::Startup(StartupMessage::new("alice").with_parameter("database", "db")),
        StartupPacket::SslRequest,
        StartupPacket::GssEncRequest,
        StartupPacket::Cancel(CancelRequest::new(1, 2)),
    ];
    for p in packets {
        let mut wire = BytesMut::new();
        p.encode(&mut wire);
        for n in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..n]);
            assert_eq!(StartupPacket::decode_from(&mut buf), Ok(None), "prefix {n}");
            assert_eq!(buf.len(), n);
        }
    }
}

#[test]
fn frames_split_off_one_at_a_time() {
    let mut buf = BytesMut::new();
    for f in sample_frontend_frames() {
        buf.extend_from_slice(&f);
    }
    let d = FrameDecoder::frontend();
    let mut n = 0;
    while let Some(frame) = d.decode(&mut buf).unwrap() {
        FrontendMessage::decode_frame(&frame).unwrap();
        n += 1;
    }
    assert_eq!(n, sample_frontend_frames().len());
    assert!(buf.is_empty());
}

#[test]
fn length_below_four_is_rejected() {
    for len in 0..4u32 {
        let mut buf = BytesMut::new();
        buf.put_u8(b'Q');
        buf.put_u32(len);
        assert_eq!(
            FrameDecoder::frontend().decode(&mut buf),
            Err(ProtocolError::InvalidLength { len })
        );
    }
}

#[test]
fn huge_length_prefix_is_rejected_before_buffering() {
    let mut buf = BytesMut::from(&[b'D', 0xff, 0xff, 0xff, 0xff][..]);
    let cap = buf.capacity();
    assert_eq!(
        FrameDecoder::backend().decode(&mut buf),
        Err(ProtocolError::MessageTooLarge {
            tag: b'D',
            len: u32::MAX,
            limit: PQ_LARGE_MESSAGE_LIMIT
        })
    );
    assert_eq!(
        buf.capacity(),
        cap,
        "nothing reserved for a rejected length"
    );

    let mut buf = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xff][..]);
    assert!(matches!(
        FrameDecoder::frontend().decode(&mut buf),
        Err(ProtocolError::MessageTooLarge { .. })
    ));
}

#[test]
fn frontend_limits_follow_postgres_per_message_type() {
    // Sync may be at most PQ_SMALL_MESSAGE_LIMIT; Query may be large.
    let mut sync = BytesMut::new();
    sync.put_u8(b'S');
    sync.put_u32(PQ_SMALL_MESSAGE_LIMIT + 1);
    assert!(matches!(
        FrameDecoder::frontend().decode(&mut sync),
        Err(ProtocolError::MessageTooLarge {
            tag: b'S',
            limit: PQ_SMALL_MESSAGE_LIMIT,
            ..
        })
    ));
    let mut query = BytesMut::new();
    query.put_u8(b'Q');
    query.put_u32(PQ_SMALL_MESSAGE_LIMIT + 1);
    assert_eq!(FrameDecoder::frontend().decode(&mut query), Ok(None));
    let mut password = BytesMut::new();
    password.put_u8(b'p');
    password.put_u32(PG_MAX_AUTH_TOKEN_LENGTH + 1);
    assert!(FrameDecoder::frontend().decode(&mut password).is_err());
    // A configured uniform limit.
    let mut big = BytesMut::new();
    big.put_u8(b'D');
    big.put_u32(101);
    assert!(matches!(
        FrameDecoder::with_limit(FrameLimit::Uniform(100)).decode(&mut big),
        Err(ProtocolError::MessageTooLarge { limit: 100, .. })
    ));
}

#[test]
fn unknown_client_message_type_is_rejected_from_its_first_byte() {
    let mut buf = BytesMut::from(&b"z"[..]);
    assert_eq!(
        FrameDecoder::frontend().decode(&mut buf),
        Err(ProtocolError::UnknownMessageType { tag: b'z' })
    );
    assert!(matches!(
        FrontendMessage::decode(b'z', b""),
        Err(ProtocolError::UnknownMessageType { tag: b'z' })
    ));
    assert!(matches!(
        BackendMessage::decode(b'!', b""),
        Err(ProtocolError::UnknownMessageType { tag: b'!' })
    ));
}

fn startup_body(code: u32, rest: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32(8 + rest.len() as u32);
    buf.put_u32(code);
    buf.put_slice(rest);
    buf
}

#[test]
fn startup_packet_length_is_bounded() {
    let mut buf = BytesMut::new();
    buf.put_u32(10_005);
    assert_eq!(
        StartupPacket::decode_from(&mut buf),
        Err(ProtocolError::InvalidStartupLength { len: 10_005 })
    );
    let mut buf = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
    assert!(matches!(
        StartupPacket::decode_from(&mut buf),
        Err(ProtocolError::InvalidStartupLength { .. })
    ));
    for len in 0..8u32 {
        let mut buf = BytesMut::new();
        buf.put_u32(len);
        assert_eq!(
            StartupPacket::decode_from(&mut buf),
            Err(ProtocolError::InvalidStartupLength { len })
        );
    }
    // Exactly at the limit is fine as far as length goes.
    let mut params = b"user\0u\0application_name\0".to_vec();
    params.resize(10_000 - 4 - 2, b'a');
    params.push(0);
    params.push(0);
    let mut buf = startup_body(0x0003_0000, &params);
    assert_eq!(buf.len(), 10_004);
    assert!(StartupPacket::decode_from(&mut buf).unwrap().is_some());
}

#[test]
fn startup_message_layout_errors_are_typed() {
    let v3 = 0x0003_0000;
    let cases: Vec<(&[u8], ProtocolError)> = vec![
        (b"database\0db\0\0", ProtocolError::MissingUser),
        (b"user\0\0\0", ProtocolError::MissingUser),
        (
            b"user\0a\0user\0b\0\0",
            ProtocolError::DuplicateParameter {
                name: "user".into(),
            },
        ),
        (b"user\0alice\0", ProtocolError::MissingStartupTerminator),
        (b"user\0alice", ProtocolError::MissingStartupTerminator),
        (
            b"user\0al\xffice\0\0",
            ProtocolError::InvalidUtf8 {
                message: "startup packet",
            },
        ),
    ];
    for (params, want) in cases {
        let mut buf = startup_body(v3, params);
        assert_eq!(
            StartupPacket::decode_from(&mut buf),
            Err(want),
            "{params:?}"
        );
    }
    let mut buf = startup_body(0x0002_0000, b"user\0a\0\0");
    assert_eq!(
        StartupPacket::decode_from(&mut buf),
        Err(ProtocolError::UnsupportedProtocolVersion { major: 2, minor: 0 })
    );
    let mut buf = startup_body(0x0003_0002, b"user\0a\0\0");
    assert!(
        StartupPacket::decode_from(&mut buf).unwrap().is_some(),
        "3.2 is 3.x"
    );
    // Trailing garbage after the terminator.
    let mut buf = startup_body(v3, b"user\0a\0\0junk");
    assert!(matches!(
        StartupPacket::decode_from(&mut buf),
        Err(ProtocolError::TrailingBytes { .. })
    ));
    // SSLRequest with a body, short cancel key.
    let mut buf = startup_body(startup::SSL_REQUEST_CODE, b"x");
    assert!(StartupPacket::decode_from(&mut buf).is_err());
    let mut buf = startup_body(startup::CANCEL_REQUEST_CODE, &[0, 0, 0, 1, 0, 0]);
    assert!(matches!(
        StartupPacket::decode_from(&mut buf),
        Err(ProtocolError::InvalidField { .. })
    ));
}

#[test]
fn malformed_bodies_give_typed_errors() {
    assert!(matches!(
        Query::decode(b"SELECT 1"),
        Err(ProtocolError::MissingNul { .. })
    ));
    assert!(matches!(
        Parse::decode(b"st\xffmt\0SELECT 1\0\0\0"),
        Err(ProtocolError::InvalidUtf8 { .. })
    ));
    assert!(matches!(
        Sync::decode(b"x"),
        Err(ProtocolError::TrailingBytes { count: 1, .. })
    ));
    // Bind claiming 65535 parameters in a tiny body: EOF, not a huge allocation.
    assert!(matches!(
        Bind::decode(b"\0\0\0\0\xff\xff\0\0\0\x01"),
        Err(ProtocolError::UnexpectedEof { .. })
    ));
    assert!(matches!(
        DataRow::decode(b"\0\x01\xff\xff\xff\xfe"),
        Err(ProtocolError::InvalidField { .. })
    ));
    assert!(matches!(
        DataRow::decode(b"\0\x01\0\0\0\x10ab"),
        Err(ProtocolError::UnexpectedEof { .. })
    ));
    assert!(matches!(
        ReadyForQuery::decode(b"X"),
        Err(ProtocolError::InvalidField { .. })
    ));
    assert_eq!(
        Authentication::decode(&7i32.to_be_bytes()),
        Err(ProtocolError::UnsupportedAuthentication { code: 7 })
    );
    assert!(matches!(
        ErrorResponse::decode(b"SERROR\0Mno end"),
        Err(ProtocolError::MissingNul { .. })
    ));
    assert!(matches!(
        ErrorResponse::decode(b"SERROR\0"),
        Err(ProtocolError::UnexpectedEof { .. })
    ));
    assert!(matches!(
        Describe::decode(b"Xname\0"),
        Err(ProtocolError::InvalidField { .. })
    ));
    assert!(matches!(
        NegotiateProtocolVersion::decode(b"\0\0\0\0\xff\xff\xff\xff"),
        Err(ProtocolError::InvalidField { .. })
    ));
    assert!(matches!(
        NegotiateProtocolVersion::decode(b"\0\0\0\0\x7f\xff\xff\xff"),
        Err(ProtocolError::MissingNul { .. })
    ));
    assert!(matches!(
        BackendKeyData::decode(b"\0\0\0\x01\0\0"),
        Err(ProtocolError::InvalidField { .. })
    ));
}

#[test]
fn protocol_errors_say_what_a_client_may_see() {
    let e = ProtocolError::MissingUser;
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert_eq!(e.sqlstate(), "28000");
    let resp = e.to_error_response();
    assert_eq!(resp.severity(), Some("FATAL"));
    assert_eq!(
        resp.message(),
        Some("no PostgreSQL user name specified in startup packet")
    );
    assert_eq!(
        ProtocolError::UnknownMessageType { tag: b'z' }.to_string(),
        "invalid message type 'z'"
    );
    assert_eq!(ProtocolError::InvalidLength { len: 2 }.sqlstate(), "08P01");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        for decoder in [FrameDecoder::frontend(), FrameDecoder::backend()] {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(frame)) = decoder.decode(&mut buf) {
                let _ = FrontendMessage::decode_frame(&frame);
                let _ = BackendMessage::decode_frame(&frame);
            }
        }
        let mut buf = BytesMut::from(&data[..]);
        let _ = StartupPacket::decode_from(&mut buf);
        let _ = StartupPacket::decode(&data);
        if let Some((&tag, body)) = data.split_first() {
            let _ = FrontendMessage::decode(tag, body);
            let _ = BackendMessage::decode(tag, body);
        }
        let _ = PasswordMessage::decode(&data);
        let _ = SaslInitialResponse::decode(&data);
        let mut out = BytesMut::new();
        let _ = Parse::rename(&data, "x", &mut out);
        let _ = Bind::rename(&data, "x", &mut out);
        let _ = Bind::statement_name(&data);
    }

    /// Valid framing around random bodies: the decoder splits them exactly, and
    /// message decoders only ever return typed errors.
    #[test]
    fn random_bodies_in_valid_frames_never_panic(
        tag in prop::sample::select(b"QPBDECSHXpdcfFRKZENTt1234nsIGWAv".to_vec()),
        body in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let frame = Frame::new(tag, body.clone());
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let got = FrameDecoder::backend().decode(&mut buf).unwrap().unwrap();
        prop_assert_eq!(&got, &frame);
        let _ = FrontendMessage::decode_frame(&got);
        let _ = BackendMessage::decode_frame(&got);
    }
}

/// A length word within the limit is still only a claim: a 1 GB Query announced with a
/// few bytes must not reserve 1 GB (16 such clients held 16 GiB before), and neither
/// may lengths above 2^31 (PgBouncer 1.26.0's CVE-2026-6668) get past the limit.
#[test]
fn an_announced_length_reserves_a_bounded_amount() {
    let mut src = BytesMut::new();
    src.put_u8(b'Q');
    src.put_u32(PQ_LARGE_MESSAGE_LIMIT);
    src.put_slice(b"SELECT ");
    assert_eq!(FrameDecoder::frontend().decode(&mut src), Ok(None));
    assert!(
        src.capacity() <= RESERVE_AHEAD_MAX + 64,
        "reserved {} bytes",
        src.capacity()
    );
    for len in [0x8000_0000u32, 0x8000_0004, u32::MAX] {
        for tag in [b'Q', b'p', b'd', b'S'] {
            let mut src = BytesMut::new();
            src.put_u8(tag);
            src.put_u32(len);
            assert!(matches!(
                FrameDecoder::frontend().decode(&mut src),
                Err(ProtocolError::MessageTooLarge { .. })
            ));
            assert!(src.capacity() < 1024);
        }
        let mut src = BytesMut::new();
        src.put_u8(b'D');
        src.put_u32(len);
        assert!(FrameDecoder::backend().decode(&mut src).is_err());
    }
}
