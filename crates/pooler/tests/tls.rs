//! TLS both ways with real clients and a real server: psql (libpq) verifying the
//! pooler's certificate, the pooler verifying PostgreSQL's, and the modes that refuse
//! plain connections.

mod common;

use common::*;
use pgherd_testkit::pg::give_to_postgres;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A CA and one certificate it signed for `localhost` and `127.0.0.1`, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// A CA that signed nothing here.
    other_ca: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = ca("pgherd test CA");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("sign");
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write PEM");
        path
    };
    Pki {
        ca: write("ca.pem", issuer.pem()),
        cert: write("server.pem", cert.pem()),
        key: write("server.key", key.serialize_pem()),
        other_ca: write("other-ca.pem", ca("someone else").pem()),
        dir,
    }
}

/// What the server (or pooler) said, not just "db error".
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

fn client_tls_settings(pki: &Pki, mode: &str) -> String {
    format!(
        "client_tls_sslmode = {mode}\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
        pki.cert.display(),
        pki.key.display()
    )
}

#[tokio::test]
async fn clients_get_tls_with_a_certificate_they_can_verify_and_plain_ones_are_refused() {
    let server = postgres("tls-client").await;
    let pki = pki();
    let pooler = pooler(&server.pg, &client_tls_settings(&pki, "require")).await;
    let base = format!("host=127.0.0.1 port={} user=app dbname=appdb", pooler.port);

    // libpq checks the chain and the host name against our CA.
    let verified = format!(
        "{base} sslmode=verify-full sslrootcert={}",
        pki.ca.display()
    );
    assert_eq!(
        psql(&verified, APP_PASSWORD, "SELECT 40 + 2")
            .await
            .unwrap(),
        "42"
    );
    let info = psql(&verified, APP_PASSWORD, "\\conninfo").await.unwrap();
    assert!(info.contains("SSL connection"), "{info}");

    // The wrong CA: libpq refuses the pooler's certificate.
    let wrong = format!(
        "{base} sslmode=verify-full sslrootcert={}",
        pki.other_ca.display()
    );
    let err = psql(&wrong, APP_PASSWORD, "SELECT 1").await.unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");

    // client_tls_sslmode = require: a client on plain TCP is told so.
    let err = psql(&format!("{base} sslmode=disable"), APP_PASSWORD, "SELECT 1")
        .await
        .unwrap_err();
    assert!(err.contains("SSL required"), "{err}");

    // tokio-postgres without TLS: refused the same way, not hung.
    let err = connect(pooler.port, "app", APP_PASSWORD, "appdb")
        .await
        .unwrap_err();
    assert!(message(&err).contains("SSL required"), "{err:?}");
}

#[tokio::test]
async fn prefer_serves_both_tls_and_plain_clients() {
    let server = postgres("tls-prefer").await;
    let pki = pki();
    let pooler = pooler(&server.pg, &client_tls_settings(&pki, "prefer")).await;
    let base = format!("host=127.0.0.1 port={} user=app dbname=appdb", pooler.port);
    let tls = psql(
        &format!("{base} sslmode=require"),
        APP_PASSWORD,
        "\\conninfo",
    )
    .await
    .unwrap();
    assert!(tls.contains("SSL connection"), "{tls}");
    let plain = psql(
        &format!("{base} sslmode=disable"),
        APP_PASSWORD,
        "\\conninfo",
    )
    .await
    .unwrap();
    assert!(!plain.contains("SSL connection"), "{plain}");
    let c = connect(pooler.port, "app", APP_PASSWORD, "appdb")
        .await
        .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
}

/// Serve TLS from `pg` with `pki`'s certificate and accept only TLS connections over
/// TCP (hostssl).
async fn server_tls_only(pg: &pgherd_postgres::Instance, pki: &Pki) {
    let data = pg.data_dir();
    for (from, to) in [(&pki.cert, "server.crt"), (&pki.key, "server.key")] {
        let dest = data.join(to);
        std::fs::copy(from, &dest).expect("copy into the data directory");
        std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        give_to_postgres(&dest).expect("chown");
    }
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
    )
    .expect("pg_hba.conf");
    let c = pg.connect().await.expect("connect over the socket");
    c.batch_execute("ALTER SYSTEM SET ssl = on")
        .await
        .expect("ssl = on");
    c.batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");
    // The reload is asynchronous: wait until TLS is served.
    for _ in 0..50 {
        let on: String = c.query_one("SHOW ssl", &[]).await.expect("SHOW ssl").get(0);
        if on == "on" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("PostgreSQL did not turn ssl on");
}

fn server_tls_settings(mode: &str, ca: &Path) -> String {
    format!(
        "server_tls_sslmode = {mode}\nserver_tls_ca_file = {}\n",
        ca.display()
    )
}

const SSL_IN_USE: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[tokio::test]
async fn the_pooler_verifies_the_server_and_refuses_plain_or_unverified_servers() {
    let server = postgres("tls-server").await;
    let pki = pki();
    server_tls_only(&server.pg, &pki).await;

    // verify-full against our CA: the server connection is encrypted.
    let pooler_ok = pooler(&server.pg, &server_tls_settings("verify-full", &pki.ca)).await;
    let c = connect(pooler_ok.port, "app", APP_PASSWORD, "appdb")
        .await
        .unwrap();
    let ssl: bool = c.query_one(SSL_IN_USE, &[]).await.unwrap().get(0);
    assert!(ssl, "the server connection uses TLS");

    // The default (prefer) uses TLS when the server offers it.
    let pooler_prefer = pooler(&server.pg, "").await;
    let c = connect(pooler_prefer.port, "app", APP_PASSWORD, "appdb")
        .await
        .unwrap();
    let ssl: bool = c.query_one(SSL_IN_USE, &[]).await.unwrap().get(0);
    assert!(ssl, "prefer negotiates TLS");

    // A certificate from a CA we do not trust: the login fails, naming TLS.
    let pooler_bad = pooler(&server.pg, &server_tls_settings("verify-ca", &pki.other_ca)).await;
    let err = connect(pooler_bad.port, "app", APP_PASSWORD, "appdb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "08006", "{err}");
    assert!(message(&err).contains("TLS"), "{err:?}");

    // disable: plain TCP, which this server's hostssl-only pg_hba refuses.
    let pooler_plain = pooler(&server.pg, "server_tls_sslmode = disable\n").await;
    let err = connect(pooler_plain.port, "app", APP_PASSWORD, "appdb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "28000", "{err}");
    assert!(message(&err).contains("no encryption"), "{err:?}");
    drop(pki.dir);
}

#[tokio::test]
async fn require_refuses_a_server_without_tls() {
    let server = postgres("tls-require").await;
    let pooler = pooler(&server.pg, "server_tls_sslmode = require\n").await;
    let err = connect(pooler.port, "app", APP_PASSWORD, "appdb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "08006", "{err}");
    assert!(message(&err).contains("TLS"), "{err:?}");
}

#[test]
fn a_missing_certificate_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        "[databases]\nappdb = host=127.0.0.1\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
         client_tls_sslmode = require\nclient_tls_cert_file = /nonexistent/server.pem\n\
         client_tls_key_file = /nonexistent/server.key\n",
    )
    .unwrap();
    let err = match pgherd_pooler::service::load(&ini) {
        Ok(_) => panic!("a missing certificate must not load"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("client_tls_cert_file") && err.contains("/nonexistent/server.pem"),
        "{err}"
    );
}
