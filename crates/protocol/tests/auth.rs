//! SCRAM-SHA-256 (RFC 7677 vector, both sides, end to end) and md5.

use pgherd_protocol::auth::*;
use pgherd_protocol::error::{AuthError, ErrorKind, UserFacingError};

// RFC 7677 section 3.
const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn rfc_verifier() -> ScramVerifier {
    use base64::Engine;
    let salt = base64::engine::general_purpose::STANDARD
        .decode(SALT_B64)
        .unwrap();
    ScramVerifier::derive(b"pencil", &salt, 4096)
}

#[test]
fn client_side_matches_rfc7677_vector() {
    let mut client = ScramClient::with_nonce("user", b"pencil", CLIENT_NONCE.into());
    assert_eq!(client.client_first(), CLIENT_FIRST);
    let client_final = client.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
    assert_eq!(client_final, CLIENT_FINAL);
    client.handle_server_final(SERVER_FINAL.as_bytes()).unwrap();
}

#[test]
fn server_side_matches_rfc7677_vector() {
    let mut server = ScramServer::with_server_nonce(rfc_verifier(), SERVER_NONCE.into());
    let server_first = server.handle_client_first(CLIENT_FIRST.as_bytes()).unwrap();
    assert_eq!(server_first, SERVER_FIRST);
    let server_final = server.handle_client_final(CLIENT_FINAL.as_bytes()).unwrap();
    assert_eq!(server_final, SERVER_FINAL);
    assert!(server.client_key().is_some());
}

#[test]
fn verifier_text_form_round_trips() {
    let v = rfc_verifier();
    let text = v.to_string();
    assert!(text.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
    assert_eq!(ScramVerifier::parse(&text).unwrap(), v);
    assert_eq!(StoredPassword::parse(&text), StoredPassword::Scram(v));
}

fn exchange(server: &mut ScramServer, client: &mut ScramClient) -> Result<(), AuthError> {
    let server_first = server.handle_client_first(client.client_first().as_bytes())?;
    let client_final = client.handle_server_first(server_first.as_bytes())?;
    let server_final = server.handle_client_final(client_final.as_bytes())?;
    client.handle_server_final(server_final.as_bytes())
}

#[test]
fn server_verifies_our_client_end_to_end() {
    let mut server = ScramServer::from_password(b"s3cr3t");
    let mut client = ScramClient::new(b"s3cr3t");
    exchange(&mut server, &mut client).unwrap();
    assert_eq!(server.verifier().iterations, SCRAM_DEFAULT_ITERATIONS);
    assert_eq!(server.verifier().salt.len(), SCRAM_DEFAULT_SALT_LEN);
}

#[test]
fn wrong_password_fails_as_auth_failed() {
    let mut server = ScramServer::from_password(b"right");
    let mut client = ScramClient::new(b"wrong");
    let err = exchange(&mut server, &mut client).unwrap_err();
    assert_eq!(err, AuthError::PasswordMismatch);
    assert_eq!(err.kind(), ErrorKind::AuthFailed);
    assert_eq!(err.sqlstate(), "28P01");
    let resp = err.to_error_response_for_user("alice");
    assert_eq!(
        resp.message(),
        Some("password authentication failed for user \"alice\"")
    );
    assert!(!format!("{err:?} {err}").contains("wrong"));
}

#[test]
fn mock_exchange_for_unknown_user_always_fails() {
    let mut server = ScramServer::mock("nobody");
    let mut client = ScramClient::new(b"anything");
    assert_eq!(
        exchange(&mut server, &mut client),
        Err(AuthError::PasswordMismatch)
    );
}

#[test]
fn saslprep_is_applied_to_passwords() {
    // U+00AD SOFT HYPHEN maps to nothing; U+2168 ROMAN NUMERAL NINE NFKC-normalizes to "IX".
    let mut server = ScramServer::from_password("I\u{00AD}X".as_bytes());
    let mut client = ScramClient::new("\u{2168}".as_bytes());
    exchange(&mut server, &mut client).unwrap();
    // Not UTF-8: used raw, as PostgreSQL does.
    let mut server = ScramServer::from_password(b"\xffraw");
    let mut client = ScramClient::new(b"\xffraw");
    exchange(&mut server, &mut client).unwrap();
}

#[test]
fn scram_pass_through_logs_in_with_the_clients_keys() {
    let verifier = ScramVerifier::from_password(b"pw");
    let mut front = ScramServer::new(verifier.clone());
    let mut client = ScramClient::new(b"pw");
    exchange(&mut front, &mut client).unwrap();
    let client_key = front.client_key().unwrap();
    let mut server = ScramServer::new(verifier.clone());
    let mut pooler = ScramClient::with_keys(client_key, verifier.keys.server_key);
    exchange(&mut server, &mut pooler).unwrap();
}

#[test]
fn channel_binding_flags_are_handled() {
    let verifier = ScramVerifier::from_password(b"pw");
    // y,, : client supports channel binding but thinks we do not: accepted.
    let mut server = ScramServer::new(verifier.clone());
    let first = server.handle_client_first(b"y,,n=,r=abcdef").unwrap();
    assert!(first.starts_with("r=abcdef"));
    // ...and its client-final must carry c=base64("y,,").
    let nonce = first.split(',').next().unwrap();
    let wrong = format!("c=biws,{nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
    assert_eq!(
        server.handle_client_final(wrong.as_bytes()),
        Err(AuthError::ChannelBindingMismatch)
    );
    // p= : channel binding requested: refused clearly.
    let mut server = ScramServer::new(verifier.clone());
    let err = server
        .handle_client_first(b"p=tls-server-end-point,,n=,r=abc")
        .unwrap_err();
    assert_eq!(err, AuthError::ChannelBindingUnsupported);
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(err.client_message().contains("channel binding"));
}

#[test]
fn malformed_scram_messages_are_protocol_errors() {
    let v = ScramVerifier::from_password(b"pw");
    for bad in [
        &b""[..],
        b"x,,n=,r=abc",
        b"n,a=admin,n=,r=abc",
        b"n,,m=ext,n=,r=abc",
        b"n,,n=,r=",
        b"n,,n=,r=a,b",
        b"n,,r=abc",
        b"n,,n=\xff,r=abc",
    ] {
        let mut server = ScramServer::new(v.clone());
        let err = server.handle_client_first(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{bad:?}: {err}");
    }
    let mut server = ScramServer::new(v.clone());
    let first = server.handle_client_first(b"n,,n=,r=abc").unwrap();
    let nonce = first.split(',').next().unwrap();
    for bad in [
        "c=biws,r=other,p=AAAA".to_string(),
        format!("c=biws,{nonce}"),
        format!("c=biws,{nonce},p=!!!"),
        format!("c=biws,{nonce},p=AAAA"),
    ] {
        let mut server = ScramServer::new(v.clone());
        server.handle_client_first(b"n,,n=,r=abc").unwrap();
        let got = server.handle_client_final(bad.as_bytes());
        assert!(
            matches!(got, Err(e) if e.kind() == ErrorKind::Protocol),
            "{bad}"
        );
    }
    // Steps out of order.
    let mut server = ScramServer::new(v);
    assert_eq!(
        server.handle_client_final(b"c=biws"),
        Err(AuthError::OutOfOrder)
    );
}

#[test]
fn client_rejects_a_server_that_cannot_prove_itself() {
    let mut client = ScramClient::with_nonce("user", b"pencil", CLIENT_NONCE.into());
    client.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
    assert_eq!(
        client.handle_server_final(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        Err(AuthError::InvalidServerSignature)
    );
    let mut client = ScramClient::with_nonce("user", b"pencil", CLIENT_NONCE.into());
    client.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
    assert_eq!(
        client.handle_server_final(b"e=invalid-proof"),
        Err(AuthError::ServerError("invalid-proof".into()))
    );
    // Server nonce must extend ours.
    let mut client = ScramClient::with_nonce("user", b"pencil", CLIENT_NONCE.into());
    assert_eq!(
        client.handle_server_first(b"r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
        Err(AuthError::NonceMismatch)
    );
    let mut client = ScramClient::with_nonce("user", b"pencil", CLIENT_NONCE.into());
    assert!(client
        .handle_server_first(b"r=rOprNGfwEbeRWgbNEkqOxx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0")
        .is_err());
    assert_eq!(
        select_mechanism(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]),
        Ok("SCRAM-SHA-256")
    );
    assert_eq!(
        select_mechanism(&["OAUTHBEARER"]),
        Err(AuthError::UnsupportedMechanism)
    );
}

#[test]
fn invalid_verifiers_are_internal_errors_that_do_not_echo_the_secret() {
    for bad in [
        "SCRAM-SHA-256$4096:c2FsdA==$AAAA:BBBB",
        "SCRAM-SHA-256$0:c2FsdA==$AAAA:BBBB",
        "SCRAM-SHA-256$x:c2FsdA==$AAAA:BBBB",
        "SCRAM-SHA-256$4096c2FsdA==",
        "md5abc",
    ] {
        let err = ScramVerifier::parse(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert!(!err.to_string().contains("c2Fsd"));
        assert_eq!(err.client_message(), "password authentication failed");
    }
}

#[test]
fn md5_matches_postgres() {
    // SELECT 'md5' || md5('secret' || 'alice');
    let hash = md5_password_hash("alice", b"secret");
    assert_eq!(hash.len(), MD5_PASSWD_LEN);
    assert!(is_md5_hash(&hash));
    let salt = [0x01, 0x02, 0x03, 0x04];
    let response = md5_client_response("alice", b"secret", salt);
    assert_eq!(response, md5_response_from_hash(&hash, salt));

    // Server side accepts both a cleartext userlist entry and an md5 one.
    for stored in [
        StoredPassword::parse("secret"),
        StoredPassword::parse(&hash),
        StoredPassword::parse(&hash.to_uppercase().replacen("MD5", "md5", 1)),
    ] {
        let server = Md5Server::with_salt("alice", &stored, salt).unwrap();
        server.verify(response.as_bytes()).unwrap();
        assert_eq!(
            server.verify(md5_client_response("alice", b"nope", salt).as_bytes()),
            Err(AuthError::PasswordMismatch)
        );
        stored.verify_cleartext("alice", b"secret").unwrap();
        assert!(stored.verify_cleartext("alice", b"nope").is_err());
    }
    let scram = StoredPassword::Scram(ScramVerifier::from_password(b"secret"));
    assert_eq!(
        Md5Server::new("alice", &scram).unwrap_err(),
        AuthError::UnusableSecret("md5")
    );
    scram.verify_cleartext("alice", b"secret").unwrap();
    assert!(format!("{scram:?}").contains("redacted"));
}

#[test]
fn md5_known_answer() {
    // md5('secretalice'), then md5(that || '\x01020304') (computed independently).
    assert_eq!(
        md5_password_hash("alice", b"secret"),
        "md54a0a68b43b6cd5cf266fa02f196e2371"
    );
    assert_eq!(
        md5_client_response("alice", b"secret", [1, 2, 3, 4]),
        "md598a0412b9c31436fc53776e863350083"
    );
}

#[test]
fn client_final_extensions_before_the_proof_are_accepted() {
    // An `x=…` extension parses; the proof covers the whole message, so slipping one
    // in afterwards must fail the proof, not the parser.
    let v = ScramVerifier::from_password(b"pw");
    let mut server = ScramServer::with_server_nonce(v.clone(), "fixed".into());
    let mut client = ScramClient::new(b"pw");
    let first = server
        .handle_client_first(client.client_first().as_bytes())
        .unwrap();
    let fin = client.handle_server_first(first.as_bytes()).unwrap();
    let (head, proof) = fin.rsplit_once(",p=").unwrap();
    let with_ext = format!("{head},x=ext,p={proof}");
    assert_eq!(
        server.handle_client_final(with_ext.as_bytes()),
        Err(AuthError::PasswordMismatch)
    );
    let mut server = ScramServer::with_server_nonce(v, "fixed".into());
    server
        .handle_client_first(client.client_first().as_bytes())
        .unwrap();
    let bad_ext = format!("{head},garbage,p={proof}");
    assert!(matches!(
        server.handle_client_final(bad_ext.as_bytes()),
        Err(AuthError::MalformedScram(_))
    ));
}

#[test]
fn secrets_stay_out_of_debug_output() {
    use pgherd_protocol::frontend::PasswordMessage;
    use pgherd_protocol::{Frame, Message};
    let m = PasswordMessage {
        password: bytes::Bytes::from_static(b"hunter2"),
    };
    assert!(!format!("{m:?}").contains("hunter2"));
    assert!(!format!("{:?}", m.to_frame()).contains("hunter2"));
    assert!(!format!("{:?}", Frame::new(b'p', &b"hunter2\0"[..])).contains("hunter2"));
    let v = ScramVerifier::from_password(b"hunter2");
    assert!(!format!("{v:?}").contains(&v.to_string()[20..]));
    assert!(!format!("{:?}", ScramClient::new(b"hunter2")).contains("hunter2"));
}

/// PgBouncer 1.26.0's CVE-2026-6669: a server may not make the client run PBKDF2 for
/// hours. Over the limit is refused before any derivation (this test would take hours
/// otherwise); a pass-through login derives nothing and is not limited.
#[test]
fn client_refuses_a_server_iteration_count_over_the_limit() {
    let first = |i: u64| format!("r={CLIENT_NONCE}xyz,s={SALT_B64},i={i}");
    for i in [
        u64::from(MAX_SERVER_SCRAM_ITERATIONS) + 1,
        u64::from(i32::MAX as u32),
        u64::from(u32::MAX),
    ] {
        let mut client = ScramClient::with_nonce("user", b"pencil", CLIENT_NONCE.into());
        let started = std::time::Instant::now();
        let e = client
            .handle_server_first(first(i).as_bytes())
            .expect_err("over the limit");
        assert_eq!(
            e,
            AuthError::TooManyIterations {
                iterations: i as u32,
                limit: MAX_SERVER_SCRAM_ITERATIONS
            }
        );
        assert_eq!(e.kind(), ErrorKind::Server);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
    // Past u32: not a number we take.
    let mut client = ScramClient::with_nonce("user", b"pencil", CLIENT_NONCE.into());
    assert!(matches!(
        client.handle_server_first(first(u64::from(u32::MAX) + 1).as_bytes()),
        Err(AuthError::MalformedScram(_))
    ));
    // Pass-through: the keys are given, any count is fine.
    let mut pass_through = ScramClient::with_keys([7; 32], rfc_verifier().keys.server_key);
    let first_message = pass_through.client_first();
    let nonce = first_message
        .rsplit_once("r=")
        .map(|(_, n)| n)
        .expect("client nonce");
    assert!(pass_through
        .handle_server_first(format!("r={nonce}xyz,s={SALT_B64},i={}", u32::MAX).as_bytes())
        .is_ok());
}

/// An unknown user's mock exchange offers the same salt on every attempt, as a known
/// user's stored verifier does, so two attempts do not tell them apart; another name
/// gets another salt.
#[test]
fn mock_salts_are_stable_per_user() {
    let salt = |user: &str| {
        let mut server = ScramServer::mock(user);
        let first = server
            .handle_client_first(b"n,,n=,r=abcdefgh")
            .expect("server-first");
        first
            .split(',')
            .find_map(|a| a.strip_prefix("s="))
            .expect("salt")
            .to_owned()
    };
    assert_eq!(salt("ghost"), salt("ghost"));
    assert_ne!(salt("ghost"), salt("phantom"));
}
