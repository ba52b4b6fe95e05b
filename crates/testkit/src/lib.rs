//! Test support: start real PostgreSQL and etcd on free loopback ports in temp dirs, as
//! the right OS user, and wait for conditions with deadlines. Never used by production code.

pub mod etcd;
pub mod logs;
pub mod netns;
pub mod pg;
pub mod sockets;
pub mod tls;

use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago, for a test server to listen on.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`, 32768–60999 by
/// default): a port from that range can become the source port of any outgoing
/// connection, or another `bind(0)`, between this call and the server's bind. A
/// process-wide counter from a per-process start keeps concurrent tests apart.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = fixed_port_range();
    let span = u32::from(high - low);
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span.min(2000) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + ((start + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    l.local_addr().expect("local addr").port()
}

/// Ports tests may pick: from 10000 up to the start of the ephemeral range.
fn fixed_port_range() -> (u16, u16) {
    const LOW: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_start > LOW + 1000 {
        (LOW, ephemeral_start)
    } else {
        // An unusual range: above it instead.
        (61_000, 65_000)
    }
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

/// Initialise logging for a test once (RUST_LOG controls the level, default `info`):
/// to the test's captured output, and to a file in the suite's log directory.
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let file =
        std::fs::File::create(logs::suite_log_dir().join(format!("{}.log", logs::process_label())))
            .ok()
            .map(|f| {
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(std::sync::Mutex::new(f))
            });
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with(tracing_subscriber::fmt::layer().with_test_writer())
        .with(file)
        .try_init();
}
