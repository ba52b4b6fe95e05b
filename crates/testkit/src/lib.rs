//! Test support: start real PostgreSQL and etcd on free loopback ports in temp dirs, as
//! the right OS user, and wait for conditions with deadlines. Never used by production code.

pub mod etcd;
pub mod pg;

use std::future::Future;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    l.local_addr().expect("local addr").port()
}

/// A loopback port where connections are refused, reserved while the returned socket
/// lives: it is bound but not listening, so no other test can take it meanwhile (a
/// port from [`free_port`] that nobody listens on can be taken at any time).
pub fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(([127, 0, 0, 1], 0).into())
        .expect("bind an ephemeral loopback port");
    let port = socket.local_addr().expect("local addr").port();
    (socket, port)
}

/// Poll `check` every `every` until it returns `Some`, or fail after `within`.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, every: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Initialise logging for a test once (RUST_LOG controls the level, default `info`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}
