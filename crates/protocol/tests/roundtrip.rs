//! Every message encodes, frames and decodes back to itself.

use bytes::{Bytes, BytesMut};
use pgherd_protocol::backend::*;
use pgherd_protocol::frontend::*;
use pgherd_protocol::*;
use proptest::prelude::*;
use std::fmt::Debug;

/// encode → frame decoder → Message::decode gives the same value, and decoding the
/// frame's body then encoding it again gives the same bytes.
fn roundtrip<M: Message + PartialEq + Debug>(m: &M) {
    let mut wire = BytesMut::new();
    m.encode(&mut wire);
    let bytes = wire.clone().freeze();
    let frame = FrameDecoder::with_limit(FrameLimit::Uniform(u32::MAX))
        .decode(&mut wire)
        .expect("valid frame")
        .expect("whole frame");
    assert!(wire.is_empty(), "decoder left bytes behind");
    assert_eq!(frame.tag, M::TAG);
    let back = M::decode(&frame.body).expect("decodes");
    assert_eq!(&back, m);
    assert_eq!(M::decode_frame(&frame).unwrap(), back);
    let mut again = BytesMut::new();
    back.encode(&mut again);
    assert_eq!(again.freeze(), bytes);
    let mut raw = BytesMut::new();
    frame.encode(&mut raw);
    assert_eq!(
        raw.freeze(),
        bytes,
        "Frame::encode passes bytes through untouched"
    );
}

fn frontend_roundtrip(m: FrontendMessage) {
    let mut wire = BytesMut::new();
    m.encode(&mut wire);
    let frame = FrameDecoder::frontend().decode(&mut wire).unwrap().unwrap();
    assert_eq!(frame.tag, m.tag());
    assert_eq!(FrontendMessage::decode_frame(&frame).unwrap(), m);
}

fn backend_roundtrip(m: BackendMessage) {
    let mut wire = BytesMut::new();
    m.encode(&mut wire);
    let frame = FrameDecoder::backend().decode(&mut wire).unwrap().unwrap();
    assert_eq!(BackendMessage::decode_frame(&frame).unwrap(), m);
}

fn bind_example() -> Bind {
    Bind {
        portal: "p1".into(),
        statement: "s1".into(),
        param_formats: vec![0, 1],
        params: vec![Some(Bytes::from_static(b"42")), None, Some(Bytes::new())],
        result_formats: vec![1],
    }
}

#[test]
fn every_frontend_message_round_trips() {
    let query = Query::new("SELECT 1; SELECT 'ü'");
    let parse = Parse {
        statement: "stmt".into(),
        query: Bytes::from_static(b"SELECT $1::int"),
        param_types: vec![23, 0],
    };
    let describe = Describe::statement("stmt");
    let describe_portal = Describe::portal("");
    let execute = Execute {
        portal: "".into(),
        max_rows: 100,
    };
    let close = Close::portal("p1");
    let close_stmt = Close::statement("s1");
    let copy_data = CopyData {
        data: Bytes::from_static(b"1\tfoo\n"),
    };
    let copy_fail = CopyFail {
        message: Bytes::from_static(b"client gave up"),
    };
    let call = FunctionCall {
        function_oid: 764,
        arg_formats: vec![1],
        args: vec![Some(Bytes::from_static(&[0, 0, 0, 1])), None],
        result_format: 1,
    };
    roundtrip(&query);
    roundtrip(&parse);
    roundtrip(&bind_example());
    roundtrip(&describe);
    roundtrip(&describe_portal);
    roundtrip(&execute);
    roundtrip(&close);
    roundtrip(&close_stmt);
    roundtrip(&Sync);
    roundtrip(&Flush);
    roundtrip(&Terminate);
    roundtrip(&PasswordMessage {
        password: Bytes::from_static(b"md5abcdef"),
    });
    roundtrip(&SaslInitialResponse {
        mechanism: "SCRAM-SHA-256".into(),
        data: Some(Bytes::from_static(b"n,,n=,r=abc")),
    });
    roundtrip(&SaslInitialResponse {
        mechanism: "SCRAM-SHA-256".into(),
        data: None,
    });
    roundtrip(&SaslResponse {
        data: Bytes::from_static(b"c=biws,r=abc,p=xyz"),
    });
    roundtrip(&copy_data);
    roundtrip(&CopyDone);
    roundtrip(&copy_fail);
    roundtrip(&call);

    for m in [
        FrontendMessage::Query(query),
        FrontendMessage::Parse(parse),
        FrontendMessage::Bind(bind_example()),
        FrontendMessage::Describe(describe),
        FrontendMessage::Execute(execute),
        FrontendMessage::Sync,
        FrontendMessage::Flush,
        FrontendMessage::Close(close),
        FrontendMessage::Terminate,
        FrontendMessage::AuthResponse(Bytes::from_static(b"secret\0")),
        FrontendMessage::CopyData(copy_data),
        FrontendMessage::CopyDone,
        FrontendMessage::CopyFail(copy_fail),
        FrontendMessage::FunctionCall(call),
    ] {
        frontend_roundtrip(m);
    }
}

#[test]
fn every_backend_message_round_trips() {
    let auths = [
        Authentication::Ok,
        Authentication::CleartextPassword,
        Authentication::Md5Password { salt: [1, 2, 3, 4] },
        Authentication::Sasl {
            mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()],
        },
        Authentication::SaslContinue {
            data: Bytes::from_static(b"r=abc,s=c2FsdA==,i=4096"),
        },
        Authentication::SaslFinal {
            data: Bytes::from_static(b"v=abc="),
        },
    ];
    for a in &auths {
        roundtrip(a);
        backend_roundtrip(BackendMessage::Authentication(a.clone()));
    }
    let error = ErrorResponse::new(Severity::Error, "42P01", "relation \"t\" does not exist")
        .position(15)
        .with(field::FILE, "parse_relation.c")
        .with(field::LINE, "1392")
        .with(field::ROUTINE, "parserOpenTable");
    let notice = NoticeResponse::new(Severity::Notice, "00000", "hello")
        .detail("d")
        .hint("h");
    let rows = RowDescription {
        fields: vec![
            FieldDescription::text("database", 25, -1),
            FieldDescription {
                name: "id".into(),
                table_oid: 16384,
                column_id: 1,
                type_oid: 23,
                type_size: 4,
                type_modifier: -1,
                format: 1,
            },
        ],
    };
    let messages = vec![
        BackendMessage::ParameterStatus(ParameterStatus::new("server_version", "15.8")),
        BackendMessage::BackendKeyData(BackendKeyData::new(4242, 0xdead_beef)),
        BackendMessage::BackendKeyData(BackendKeyData {
            process_id: 1,
            secret_key: Bytes::from(vec![7u8; 32]),
        }),
        BackendMessage::ReadyForQuery(ReadyForQuery {
            status: TransactionStatus::Idle,
        }),
        BackendMessage::ReadyForQuery(ReadyForQuery {
            status: TransactionStatus::InTransaction,
        }),
        BackendMessage::ReadyForQuery(ReadyForQuery {
            status: TransactionStatus::Failed,
        }),
        BackendMessage::ErrorResponse(error.clone()),
        BackendMessage::NoticeResponse(notice.clone()),
        BackendMessage::RowDescription(rows.clone()),
        BackendMessage::DataRow(DataRow::from_text([Some("a"), None, Some("")])),
        BackendMessage::CommandComplete(CommandComplete::new("SELECT 1")),
        BackendMessage::EmptyQueryResponse,
        BackendMessage::ParseComplete,
        BackendMessage::BindComplete,
        BackendMessage::CloseComplete,
        BackendMessage::NoData,
        BackendMessage::ParameterDescription(ParameterDescription {
            param_types: vec![23, 25],
        }),
        BackendMessage::PortalSuspended,
        BackendMessage::CopyInResponse(CopyInResponse {
            format: 0,
            column_formats: vec![0, 0],
        }),
        BackendMessage::CopyOutResponse(CopyOutResponse {
            format: 1,
            column_formats: vec![1],
        }),
        BackendMessage::CopyBothResponse(CopyBothResponse::default()),
        BackendMessage::CopyData(CopyData {
            data: Bytes::from_static(b"w..."),
        }),
        BackendMessage::CopyDone,
        BackendMessage::NotificationResponse(NotificationResponse {
            process_id: 77,
            channel: "jobs".into(),
            payload: "{\"id\":1}".into(),
        }),
        BackendMessage::NegotiateProtocolVersion(NegotiateProtocolVersion {
            newest_minor_version: 0,
            unrecognized_options: vec!["_pq_.compression".into()],
        }),
        BackendMessage::FunctionCallResponse(FunctionCallResponse {
            result: Some(Bytes::from_static(b"x")),
        }),
        BackendMessage::FunctionCallResponse(FunctionCallResponse { result: None }),
    ];
    for m in messages {
        backend_roundtrip(m);
    }
    roundtrip(&error);
    roundtrip(&notice);
    roundtrip(&rows);
    roundtrip(&EmptyQueryResponse);
    roundtrip(&ParseComplete);
    roundtrip(&BindComplete);
    roundtrip(&CloseComplete);
    roundtrip(&NoData);
    roundtrip(&PortalSuspended);
    roundtrip(&CommandComplete::new("INSERT 0 1"));
}

#[test]
fn error_response_builder_writes_postgres_style_fields() {
    let e = ErrorResponse::new(
        Severity::Fatal,
        error::sqlstate::INVALID_PASSWORD,
        "password authentication failed for user \"alice\"",
    )
    .hint("check userlist.txt");
    assert_eq!(e.severity(), Some("FATAL"));
    assert_eq!(e.get(field::SEVERITY), Some("FATAL"));
    assert_eq!(e.code(), Some("28P01"));
    assert_eq!(
        e.message(),
        Some("password authentication failed for user \"alice\"")
    );
    assert_eq!(e.get(field::HINT), Some("check userlist.txt"));
    let mut wire = BytesMut::new();
    e.encode(&mut wire);
    assert_eq!(
        &wire[5..],
        &b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"alice\"\0Hcheck userlist.txt\0\0"[..]
    );
}

#[test]
fn startup_packets_round_trip() {
    let startup = StartupMessage::new("alice")
        .with_parameter("database", "app")
        .with_parameter("application_name", "psql")
        .with_parameter("options", "-c search_path=x");
    assert_eq!(startup.database(), "app");
    assert_eq!(StartupMessage::new("bob").database(), "bob");
    for p in [
        StartupPacket::Startup(startup),
        StartupPacket::SslRequest,
        StartupPacket::GssEncRequest,
        StartupPacket::Cancel(CancelRequest::new(1234, 0x0102_0304)),
        StartupPacket::Cancel(CancelRequest {
            process_id: 9,
            secret_key: Bytes::from(vec![1u8; 256]),
        }),
    ] {
        let mut wire = BytesMut::new();
        p.encode(&mut wire);
        let back = StartupPacket::decode_from(&mut wire).unwrap().unwrap();
        assert!(wire.is_empty());
        assert_eq!(back, p);
    }
}

#[test]
fn ssl_request_is_the_well_known_eight_bytes() {
    let mut wire = BytesMut::new();
    StartupPacket::SslRequest.encode(&mut wire);
    assert_eq!(&wire[..], &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
    let mut wire = BytesMut::new();
    StartupPacket::GssEncRequest.encode(&mut wire);
    assert_eq!(&wire[..], &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]);
    let mut wire = BytesMut::new();
    CancelRequest::new(7, 9).encode(&mut wire);
    assert_eq!(
        &wire[..],
        &[0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 7, 0, 0, 0, 9]
    );
}

#[test]
fn statements_can_be_renamed_for_a_server_connection() {
    let parse = Parse {
        statement: "client_stmt".into(),
        query: Bytes::from_static(b"SELECT $1"),
        param_types: vec![25],
    };
    let bind = bind_example();

    let mut renamed = BytesMut::new();
    parse.encode_renamed("pgherd_1", &mut renamed);
    let got = Parse::decode(&renamed[5..]).unwrap();
    assert_eq!(got.statement, "pgherd_1");
    assert_eq!(
        (got.query, got.param_types),
        (parse.query.clone(), parse.param_types.clone())
    );

    // Raw rename copies the rest of the body untouched.
    let body = parse.to_frame().body;
    let mut raw = BytesMut::new();
    Parse::rename(&body, "pgherd_1", &mut raw).unwrap();
    assert_eq!(raw, renamed);

    let mut renamed = BytesMut::new();
    bind.encode_renamed("pgherd_1", &mut renamed);
    let got = Bind::decode(&renamed[5..]).unwrap();
    assert_eq!(
        got,
        Bind {
            statement: "pgherd_1".into(),
            ..bind.clone()
        }
    );
    let body = bind.to_frame().body;
    assert_eq!(Bind::statement_name(&body).unwrap(), "s1");
    let mut raw = BytesMut::new();
    Bind::rename(&body, "pgherd_1", &mut raw).unwrap();
    assert_eq!(raw, renamed);

    let mut renamed = BytesMut::new();
    Describe::statement("a").encode_renamed("b", &mut renamed);
    assert_eq!(
        Describe::decode(&renamed[5..]).unwrap(),
        Describe::statement("b")
    );
    let mut renamed = BytesMut::new();
    Close::statement("a").encode_renamed("b", &mut renamed);
    assert_eq!(Close::decode(&renamed[5..]).unwrap(), Close::statement("b"));
}

// --- property tests -------------------------------------------------------------

/// Strings as the protocol can carry them: no NUL.
fn pg_string() -> impl Strategy<Value = String> {
    "[^\0]{0,24}"
}

fn pg_bytes_no_nul() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(1u8..=255, 0..64).prop_map(Bytes::from)
}

fn value() -> impl Strategy<Value = Option<Bytes>> {
    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32).prop_map(Bytes::from))
}

proptest! {
    #[test]
    fn query_round_trips(query in pg_bytes_no_nul()) {
        roundtrip(&Query { query });
    }

    #[test]
    fn parse_round_trips(
        statement in pg_string(),
        query in pg_bytes_no_nul(),
        param_types in proptest::collection::vec(any::<u32>(), 0..16),
    ) {
        roundtrip(&Parse { statement, query, param_types });
    }

    #[test]
    fn bind_round_trips(
        portal in pg_string(),
        statement in pg_string(),
        param_formats in proptest::collection::vec(any::<i16>(), 0..8),
        params in proptest::collection::vec(value(), 0..12),
        result_formats in proptest::collection::vec(any::<i16>(), 0..8),
    ) {
        roundtrip(&Bind { portal, statement, param_formats, params, result_formats });
    }

    #[test]
    fn data_row_round_trips(values in proptest::collection::vec(value(), 0..20)) {
        roundtrip(&DataRow { values });
    }

    #[test]
    fn error_response_round_trips(
        fields in proptest::collection::vec((1u8..=255, pg_string()), 0..12),
    ) {
        roundtrip(&ErrorResponse { fields: fields.clone() });
        roundtrip(&NoticeResponse { fields });
    }

    #[test]
    fn startup_message_round_trips(
        user in "[^\0]{1,16}",
        params in proptest::collection::btree_map("[a-z_]{1,12}", pg_string(), 0..8),
        minor in 0u16..4,
    ) {
        let mut m = StartupMessage::new(user);
        m.protocol_version.minor = minor;
        for (k, v) in params {
            if k != "user" {
                m.set_parameter(k, v);
            }
        }
        let mut wire = BytesMut::new();
        m.encode(&mut wire);
        let back = StartupPacket::decode_from(&mut wire).unwrap().unwrap();
        prop_assert_eq!(back, StartupPacket::Startup(m));
    }
}
