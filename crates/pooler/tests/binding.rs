//! The pooler binds nothing wider than configured: with `listen_addr = 127.0.0.1` its
//! client port and its metrics listener (`metrics_listen = 127.0.0.1:PORT`) listen on
//! 127.0.0.1 alone — not 0.0.0.0, not `::` — as the kernel reports in /proc/net/tcp*,
//! and other local addresses are refused.

use pgherd_pooler::service::{self, Service};
use pgherd_testkit::free_port;
use pgherd_testkit::sockets::listening_on;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// A connection to `addr` is refused (nothing listens there).
async fn refused(addr: SocketAddr) -> bool {
    match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await {
        Ok(Err(e)) => {
            // An address this host lacks (no IPv6 loopback) is as good as refused.
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            ) || e.raw_os_error() == Some(libc::ENETUNREACH)
        }
        Ok(Ok(_)) => false,
        Err(_) => panic!("connecting to {addr} hung"),
    }
}

/// Only `127.0.0.1:port` listens, and only it accepts.
async fn only_loopback_v4(what: &str, port: u16) {
    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    assert_eq!(
        listening_on(port).expect("/proc/net/tcp"),
        vec![v4],
        "{what}: bound addresses"
    );
    tokio::net::TcpStream::connect(v4)
        .await
        .unwrap_or_else(|e| panic!("{what}: {v4} accepts: {e}"));
    // The rest of 127.0.0.0/8 and IPv6 loopback reach a wildcard listener; not this one.
    for other in [
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), port),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
    ] {
        assert!(
            refused(other).await,
            "{what}: {other} accepted a connection"
        );
    }
}

#[tokio::test]
async fn listen_addr_127_0_0_1_binds_the_client_port_and_metrics_to_127_0_0_1_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let metrics = free_port();
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\nappdb = host=127.0.0.1 port=1\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nunix_socket_dir = {}\nauth_type = trust\n\
             metrics_listen = 127.0.0.1:{metrics}\n",
            dir.path().display()
        ),
    )
    .expect("ini");
    let pooler = Service::start(service::load(&ini).expect("loads"))
        .await
        .expect("starts");
    assert_eq!(
        pooler.metrics_addr,
        Some(SocketAddr::from(([127, 0, 0, 1], metrics)))
    );
    only_loopback_v4("client port", port).await;
    only_loopback_v4("metrics", metrics).await;
    // The Unix socket is a file, not a TCP port.
    assert!(dir.path().join(format!(".s.PGSQL.{port}")).exists());
    pooler.shutdown(Duration::from_secs(2)).await;
    assert!(listening_on(port).expect("/proc").is_empty());
    assert!(listening_on(metrics).expect("/proc").is_empty());
}
