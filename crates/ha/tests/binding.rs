//! The REST API binds nothing wider than configured: `restapi.listen: 127.0.0.1:PORT`
//! gives a listener on 127.0.0.1 alone — not 0.0.0.0, not `::` — as the kernel reports
//! in /proc/net/tcp*, and the API server opens no other socket. Bound as the node does
//! (`member::start` binds the resolved `restapi.listen` address), served in-process.

use pgherd_ha::runner::default_ha_config;
use pgherd_ha::{NodeStatus, SharedStatus};
use pgherd_testkit::free_port;
use pgherd_testkit::sockets::listening_on;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// A connection to `addr` is refused (nothing listens there).
async fn refused(addr: SocketAddr) -> bool {
    match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await {
        Ok(Err(e)) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::AddrNotAvailable
                | std::io::ErrorKind::NetworkUnreachable
        ),
        Ok(Ok(_)) => false,
        Err(_) => panic!("connecting to {addr} hung"),
    }
}

#[tokio::test]
async fn restapi_listen_127_0_0_1_binds_127_0_0_1_only() {
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    let status = SharedStatus::new(NodeStatus::new(
        "node",
        "demo",
        format!("http://{listen}/patroni"),
        "postgres://127.0.0.1:5432/postgres".into(),
        default_ha_config(),
        Default::default(),
    ));
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let api = tokio::spawn(pgherd_ha::api::serve(listener, status, None, async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));

    // The API answers (HTTP, whatever the status of this idle node) on that address.
    pgherd_http::client::default_client()
        .expect("HTTP client")
        .get(format!("http://{listen}/patroni"))
        .send()
        .await
        .expect("GET /patroni");
    assert_eq!(
        listening_on(port).expect("/proc/net/tcp"),
        vec![listen],
        "bound addresses"
    );
    // The rest of 127.0.0.0/8 and IPv6 loopback reach a wildcard listener; not this one.
    for other in [
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), port),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
    ] {
        assert!(refused(other).await, "{other} accepted a connection");
    }

    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), api).await;
    assert!(listening_on(port).expect("/proc").is_empty());
}
