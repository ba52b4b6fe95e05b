//! Unix sockets both ways: clients connect through `.s.PGSQL.<port>` in
//! `unix_socket_dir`, and a `[databases]` host that is a directory reaches PostgreSQL
//! through its socket. hba `local` lines apply to socket clients.

mod common;

use common::*;
use pgherd_pooler::service::{self, Service, ServiceError};
use std::path::Path;
use std::time::Duration;

/// The directory PostgreSQL keeps its socket in.
fn pg_socket_dir(pg: &pgherd_postgres::Instance) -> String {
    pg.config().parameters["unix_socket_directories"].clone()
}

/// Write pgbouncer.ini (and userlist.txt) into `dir` and start the pooler as
/// `pgherd pooler` would.
async fn start(dir: &Path, port: u16, databases: &str, settings: &str) -> Service {
    let userlist = dir.join("userlist.txt");
    std::fs::write(
        &userlist,
        format!("\"app\" \"{APP_PASSWORD}\"\n\"postgres\" \"{ADMIN_PASSWORD}\"\n"),
    )
    .unwrap();
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\n{databases}\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nunix_socket_dir = {}\nauth_file = {}\n\
             admin_users = postgres\n{settings}\n",
            dir.display(),
            userlist.display()
        ),
    )
    .unwrap();
    Service::start(service::load(&ini).expect("config loads"))
        .await
        .expect("pooler starts")
}

#[tokio::test]
async fn clients_and_servers_over_unix_sockets() {
    let server = postgres("unix").await;
    let dir = tempfile::tempdir().unwrap();
    let port = pgherd_testkit::free_port();
    let pg_port = server.pg.config().port;
    let service = start(
        dir.path(),
        port,
        &format!(
            "appdb = host={} port={pg_port} dbname=postgres",
            pg_socket_dir(&server.pg)
        ),
        "auth_type = md5\nunix_socket_mode = 0700\n",
    )
    .await;
    let socket = dir.path().join(format!(".s.PGSQL.{port}"));
    assert_eq!(service.unix_socket.as_deref(), Some(socket.as_path()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "unix_socket_mode applies");

    // psql through the pooler's socket; the server connection is a socket too
    // (inet_server_addr() is NULL there).
    let via_socket = format!(
        "host={} port={port} user=app dbname=appdb",
        dir.path().display()
    );
    let answer = psql(
        &via_socket,
        APP_PASSWORD,
        "SELECT 6 * 7, coalesce(inet_server_addr()::text, 'socket')",
    )
    .await
    .unwrap();
    assert_eq!(answer, "42|socket");

    // tokio-postgres over the socket, and the console lists it as PgBouncer does.
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={port} user=app password='{APP_PASSWORD}' dbname=appdb",
            dir.path().display()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("tokio-postgres over the socket");
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.unwrap();
    let clients = psql(
        &format!(
            "host={} port={port} user=postgres dbname=pgbouncer",
            dir.path().display()
        ),
        ADMIN_PASSWORD,
        "SHOW CLIENTS",
    )
    .await
    .unwrap();
    assert!(
        clients
            .lines()
            .any(|l| l.contains("|app|appdb|") && l.contains("|unix|")),
        "{clients}"
    );

    // A second pooler on the same socket is refused; the socket stays the first one's.
    let other = tempfile::tempdir().unwrap();
    let ini = other.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\nappdb = host=127.0.0.1\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nunix_socket_dir = {}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    match Service::start(service::load(&ini).unwrap()).await {
        Err(ServiceError::SocketInUse { path, .. }) => assert_eq!(path, socket),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second pooler must not take the socket"),
    }
    assert!(socket.exists());
    client.simple_query("SELECT 1").await.unwrap();

    // Shutting down removes the socket file.
    drop(client);
    service.shutdown(Duration::from_secs(5)).await;
    assert!(!socket.exists(), "socket file left behind");
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_hba_local_lines_apply_to_socket_clients() {
    let server = postgres("unix-hba").await;
    let dir = tempfile::tempdir().unwrap();
    let port = pgherd_testkit::free_port();
    // A socket file left by a crashed pooler: nobody listens on it.
    let stale = std::os::unix::net::UnixListener::bind(dir.path().join(format!(".s.PGSQL.{port}")))
        .unwrap();
    drop(stale);
    let hba = dir.path().join("hba.conf");
    std::fs::write(
        &hba,
        "local all app trust\nhost all app 127.0.0.1/32 reject\n",
    )
    .unwrap();
    let service = start(
        dir.path(),
        port,
        &format!(
            "appdb = host=127.0.0.1 port={} dbname=postgres",
            server.pg.config().port
        ),
        &format!("auth_type = hba\nauth_hba_file = {}\n", hba.display()),
    )
    .await;
    // Trusted over the socket (no password given)...
    let socket = format!(
        "host={} port={port} user=app dbname=appdb",
        dir.path().display()
    );
    assert_eq!(psql(&socket, "", "SELECT 1").await.unwrap(), "1");
    // ...rejected over TCP.
    let err = psql(
        &format!("host=127.0.0.1 port={port} user=app dbname=appdb"),
        APP_PASSWORD,
        "SELECT 1",
    )
    .await
    .unwrap_err();
    assert!(err.contains("no pg_hba.conf entry"), "{err}");
    service.shutdown(Duration::from_secs(5)).await;
}
