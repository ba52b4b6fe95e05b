//! On a machine without system CAs (a minimal container), clients are still built (plain
//! HTTP works) and HTTPS without `ctl.cacert` fails saying what to set. A test binary of
//! its own: it changes the process's environment.

use axum::routing::get;
use axum::Router;
use pgherd_http::{client, ServerTls, TlsFile, VerifyClient};
use pgherd_testkit::tls::Pki;

#[tokio::test]
async fn without_system_cas_plain_http_works_and_https_names_the_settings() {
    let pki = Pki::new().expect("certificates");
    let empty = pki.dir().join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    std::fs::write(empty.join("none.pem"), "").expect("file");
    // Read by the system-CA loader (rustls-native-certs) instead of the system's files.
    std::env::set_var("SSL_CERT_FILE", empty.join("none.pem"));
    std::env::set_var("SSL_CERT_DIR", &empty);

    let http = client::default_client().expect("a client without system CAs");
    let tls = ServerTls {
        certfile: TlsFile::new("restapi.certfile", &pki.server_cert),
        keyfile: Some(TlsFile::new("restapi.keyfile", &pki.server_key)),
        keyfile_password: None,
        cafile: None,
        verify_client: VerifyClient::None,
        verify_client_key: "restapi.verify_client".into(),
    };
    let app = || Router::new().route("/", get(|| async { "hello\n" }));
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let plain_addr = plain.local_addr().expect("addr");
    tokio::spawn(pgherd_http::serve(plain, app(), std::future::pending()));
    let secure = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let secure_addr = secure.local_addr().expect("addr");
    tokio::spawn(pgherd_http::serve_with(
        secure,
        app(),
        Some(tls.acceptor().expect("acceptor")),
        std::future::pending(),
    ));

    let r = http
        .get(format!("http://{plain_addr}/"))
        .send()
        .await
        .expect("plain HTTP");
    assert_eq!(r.status().as_u16(), 200);

    let e = http
        .get(format!("https://127.0.0.1:{}/", secure_addr.port()))
        .send()
        .await
        .expect_err("no CA to trust");
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    assert!(text.contains("ctl.cacert"), "{text}");
}
