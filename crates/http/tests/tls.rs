//! HTTPS on pgherd's listener and client: the modes of `verify_client` (Patroni's
//! meanings), the handshake under the header deadline, and clear errors for files.

use axum::routing::get;
use axum::Router;
use pgherd_http::{client, ClientTls, ServerTls, TlsError, TlsFile, VerifyClient};
use pgherd_testkit::tls::Pki;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

fn server_tls(pki: &Pki, verify_client: VerifyClient) -> ServerTls {
    ServerTls {
        certfile: TlsFile::new("restapi.certfile", &pki.server_cert),
        keyfile: Some(TlsFile::new("restapi.keyfile", &pki.server_key)),
        keyfile_password: None,
        cafile: Some(TlsFile::new("restapi.cafile", &pki.ca)),
        verify_client,
        verify_client_key: "restapi.verify_client".into(),
    }
}

/// An HTTPS listener answering GET and POST on `/`; its address.
async fn serve(tls: &ServerTls) -> std::net::SocketAddr {
    let acceptor = tls.acceptor().expect("acceptor");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new().route(
        "/",
        get(|| async { "read\n" }).post(|| async { "changed\n" }),
    );
    tokio::spawn(pgherd_http::serve_with(
        listener,
        app,
        Some(acceptor),
        std::future::pending(),
    ));
    addr
}

fn trusting(pki: &Pki) -> ClientTls {
    ClientTls {
        cacert: Some(TlsFile::new("ctl.cacert", &pki.ca)),
        ..ClientTls::default()
    }
}

fn certified(pki: &Pki) -> ClientTls {
    ClientTls {
        certfile: Some(TlsFile::new("ctl.certfile", &pki.client_cert)),
        keyfile: Some(TlsFile::new("ctl.keyfile", &pki.client_key)),
        ..trusting(pki)
    }
}

/// The status of GET or POST `/`, 0 when the connection failed.
async fn status(addr: std::net::SocketAddr, tls: &ClientTls, post: bool) -> u16 {
    let http = client::client(tls, Some(Duration::from_secs(3))).expect("client");
    let url = format!("https://127.0.0.1:{}/", addr.port());
    let request = if post { http.post(url) } else { http.get(url) };
    request
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn verify_client_none_optional_and_required_keep_patronis_meanings() {
    let pki = Pki::new().expect("certificates");
    let stranger = ClientTls {
        certfile: Some(TlsFile::new("ctl.certfile", &pki.stranger_cert)),
        keyfile: Some(TlsFile::new("ctl.keyfile", &pki.stranger_key)),
        ..trusting(&pki)
    };
    let insecure = ClientTls {
        insecure: true,
        ..ClientTls::default()
    };

    // none: anyone who trusts the CA (or does not check) gets in.
    let addr = serve(&server_tls(&pki, VerifyClient::None)).await;
    assert_eq!(status(addr, &trusting(&pki), false).await, 200);
    assert_eq!(status(addr, &trusting(&pki), true).await, 200);
    assert_eq!(status(addr, &insecure, true).await, 200);
    // The system's CAs did not sign our test CA; plain HTTP gets no answer either.
    assert_eq!(status(addr, &ClientTls::default(), false).await, 0);
    let plain = client::default_client()
        .expect("client")
        .get(format!("http://127.0.0.1:{}/", addr.port()))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");

    // optional: reading without a certificate, changing needs one.
    let addr = serve(&server_tls(&pki, VerifyClient::Optional)).await;
    assert_eq!(status(addr, &trusting(&pki), false).await, 200);
    assert_eq!(status(addr, &trusting(&pki), true).await, 403);
    assert_eq!(status(addr, &certified(&pki), true).await, 200);
    // A certificate the CA did not sign is refused even where none is needed.
    assert_eq!(status(addr, &stranger, false).await, 0);

    // required: no connection without a certificate the CA signed.
    let addr = serve(&server_tls(&pki, VerifyClient::Required)).await;
    assert_eq!(status(addr, &trusting(&pki), false).await, 0);
    assert_eq!(status(addr, &stranger, false).await, 0);
    assert_eq!(status(addr, &certified(&pki), false).await, 200);
    assert_eq!(status(addr, &certified(&pki), true).await, 200);
}

/// A client that connects and never starts the handshake is dropped at the header
/// deadline, and does not keep others out meanwhile.
#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_dropped_at_the_deadline() {
    let pki = Pki::new().expect("certificates");
    let addr = serve(&server_tls(&pki, VerifyClient::None)).await;
    let start = Instant::now();
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    assert_eq!(status(addr, &trusting(&pki), false).await, 200);
    let mut buf = [0u8; 16];
    let limit = pgherd_http::HEADER_READ_TIMEOUT + Duration::from_secs(5);
    let read = tokio::time::timeout(limit, idle.read(&mut buf))
        .await
        .expect("the idle connection was not closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(start.elapsed() >= pgherd_http::HEADER_READ_TIMEOUT - Duration::from_secs(1));
}

fn error(tls: &ServerTls) -> String {
    match tls.acceptor() {
        Ok(_) => panic!("expected an error"),
        Err(e @ (TlsError::File { .. } | TlsError::Setting { .. })) => e.to_string(),
    }
}

#[test]
fn bad_files_and_settings_name_the_key_and_the_file() {
    let pki = Pki::new().expect("certificates");
    let good = server_tls(&pki, VerifyClient::Required);
    let missing = pki.dir().join("missing.pem");

    let e = error(&ServerTls {
        certfile: TlsFile::new("restapi.certfile", &missing),
        ..good.clone()
    });
    assert!(
        e.starts_with("restapi.certfile: ") && e.contains(&missing.display().to_string()),
        "{e}"
    );

    // A key that is not the certificate's.
    let e = error(&ServerTls {
        keyfile: Some(TlsFile::new("restapi.keyfile", &pki.client_key)),
        ..good.clone()
    });
    assert!(e.starts_with("restapi.keyfile: "), "{e}");

    // A certificate where the key should be.
    let e = error(&ServerTls {
        keyfile: Some(TlsFile::new("restapi.keyfile", &pki.server_cert)),
        ..good.clone()
    });
    assert!(
        e.contains("restapi.keyfile") && e.contains("no PEM private key"),
        "{e}"
    );

    // An encrypted key: refused, with what to do.
    let e = error(&ServerTls {
        keyfile: Some(TlsFile::new("restapi.keyfile", &pki.encrypted_key)),
        keyfile_password: Some("secret".into()),
        ..good.clone()
    });
    assert!(
        e.contains("restapi.keyfile") && e.contains("encrypted"),
        "{e}"
    );
    assert!(!e.contains("secret"), "{e}");

    // Checking client certificates needs a CA.
    let e = error(&ServerTls {
        cafile: None,
        ..good.clone()
    });
    assert!(e.starts_with("restapi.verify_client: "), "{e}");

    // The key may sit in the certificate file, as Patroni allows.
    let both = pki.dir().join("both.pem");
    let text = std::fs::read_to_string(&pki.server_cert).expect("cert")
        + &std::fs::read_to_string(&pki.server_key).expect("key");
    std::fs::write(&both, text).expect("write");
    ServerTls {
        certfile: TlsFile::new("restapi.certfile", &both),
        keyfile: None,
        ..good
    }
    .acceptor()
    .expect("certificate and key in one file");

    // The client side too.
    let bad_ca = ClientTls {
        cacert: Some(TlsFile::new("ctl.cacert", &missing)),
        ..ClientTls::default()
    };
    let e = client::client(&bad_ca, None)
        .expect_err("error")
        .to_string();
    assert!(e.starts_with("ctl.cacert: "), "{e}");
}
