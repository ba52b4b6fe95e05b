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
