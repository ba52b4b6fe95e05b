//! The client listeners: `so_reuseport = 1` lets several poolers share one port (as
//! several PgBouncer processes do); without it a taken port is refused with its address.

use pgherd_pooler::service::{self, Service, ServiceError};
use std::path::Path;
use std::time::Duration;

fn ini(dir: &Path, name: &str, port: u16, settings: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[databases]\nappdb = host=127.0.0.1 port=1\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nunix_socket_dir =\nauth_type = trust\n{settings}\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn so_reuseport_lets_two_poolers_share_a_port_and_without_it_the_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = pgherd_testkit::free_port();
    let shared = ini(
        dir.path(),
        "a.ini",
        port,
        "so_reuseport = 1\nlisten_backlog = 4096",
    );
    let first = Service::start(service::load(&shared).unwrap())
        .await
        .expect("first pooler");
    let second = Service::start(service::load(&shared).unwrap())
        .await
        .expect("a second pooler with so_reuseport = 1 shares the port");
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("clients still connect");

    let lone = ini(dir.path(), "b.ini", port, "");
    match Service::start(service::load(&lone).unwrap()).await {
        Err(ServiceError::Listen { addr, .. }) => assert_eq!(addr.port(), port),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("without so_reuseport a taken port must be refused"),
    }
    first.shutdown(Duration::from_secs(2)).await;
    second.shutdown(Duration::from_secs(2)).await;
}

fn ini_listening_on(dir: &Path, listen_addr: &str, port: u16) -> std::path::PathBuf {
    let path = dir.join("listen.ini");
    std::fs::write(
        &path,
        format!(
            "[databases]\nappdb = host=127.0.0.1 port=1\n[pgbouncer]\nlisten_addr = {listen_addr}\n\
             listen_port = {port}\nunix_socket_dir =\nauth_type = trust\n"
        ),
    )
    .unwrap();
    path
}

async fn connects(addr: &str, port: u16) -> bool {
    tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((addr, port)),
    )
    .await
    .is_ok_and(|c| c.is_ok())
}

/// Like PgBouncer's: host names listen on what they resolve to, `*` on every IPv4 and
/// IPv6 address, and a name that does not resolve is an error that names it (it used to
/// be dropped without a word).
#[tokio::test]
async fn listen_addr_takes_host_names_and_star_covers_ipv4_and_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();

    let port = pgherd_testkit::free_port();
    let by_name =
        Service::start(service::load(&ini_listening_on(dir.path(), "localhost", port)).unwrap())
            .await
            .expect("listen_addr = localhost");
    assert!(
        connects("127.0.0.1", port).await,
        "localhost is 127.0.0.1 here"
    );
    by_name.shutdown(Duration::from_secs(2)).await;

    let port = pgherd_testkit::free_port();
    let star = Service::start(service::load(&ini_listening_on(dir.path(), "*", port)).unwrap())
        .await
        .expect("listen_addr = *");
    assert!(connects("127.0.0.1", port).await, "IPv4");
    if ipv6 {
        assert!(connects("::1", port).await, "IPv6");
    }
    star.shutdown(Duration::from_secs(2)).await;

    let port = pgherd_testkit::free_port();
    let bad = ini_listening_on(dir.path(), "127.0.0.1, no-such-host.invalid", port);
    match Service::start(service::load(&bad).unwrap()).await {
        Err(e @ ServiceError::ListenName { .. }) => {
            assert!(e.to_string().contains("no-such-host.invalid"), "{e}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a listen_addr that does not resolve must be refused"),
    }
}
