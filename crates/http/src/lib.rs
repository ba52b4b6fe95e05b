//! pgherd's HTTP listeners (the node's REST API, the pooler's metrics), kept safe from
//! hostile or broken clients: a bounded number of connections at once (and from one
//! address), headers and bodies read within a deadline, bodies of bounded size, and idle
//! keep-alive connections closed, so that one client cannot hold a listener away from
//! the health checks, scrapers and operators that need it.

pub mod client;
pub mod tls;

pub use tls::{Acceptor, ClientTls, ServerTls, TlsError, TlsFile, VerifyClient};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, warn};

/// Connections served at once; more are closed as they come (health checks retry).
pub const MAX_CONNECTIONS: usize = 512;
/// Connections from one address at once: a client that opens many (or leaves them
/// hanging) does not use up the API for the others.
pub const MAX_PER_PEER: usize = 32;
/// A request's headers must arrive within this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's body must arrive within this.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest body accepted: a config PATCH is a few kilobytes.
pub const MAX_BODY: usize = 1 << 20;
/// A connection is asked to close after this (its running request finishes first), so
/// idle keep-alive connections do not pile up.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serve `app` on `listener` (plain HTTP) until `shutdown` resolves; then stop accepting
/// and let running requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, app, None, shutdown).await
}

/// Serve `app` on `listener`, over TLS when `tls` is given, until `shutdown` resolves;
/// then stop accepting and let running requests finish. The TLS handshake must end
/// within [`HEADER_READ_TIMEOUT`], and counts against the same connection limits.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    tls: Option<Acceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app.layer(axum::middleware::from_fn(read_body));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_peer: PeerCounts = Arc::new(Mutex::new(HashMap::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    warn!(error = %e, "HTTP: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "HTTP: {MAX_CONNECTIONS} connections open already: closing this one");
            drop(stream);
            continue;
        };
        let Some(peer_slot) = PeerSlot::take(&per_peer, peer.ip()) else {
            debug!(%peer, "HTTP: {MAX_PER_PEER} connections from this address already: \
                closing this one");
            drop(stream);
            continue;
        };
        let app = app.clone();
        let stop = stop_rx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => {
                    let service = TowerToHyperService::new(app);
                    connection(stream, service, peer, stop).await;
                }
                Some(tls) => {
                    // The handshake under the header deadline: a client that opens a
                    // connection and never finishes it does not keep its slot.
                    let handshake = tls.acceptor.accept(stream);
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, handshake).await {
                        Ok(Ok(stream)) => {
                            let certified = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .is_some_and(|c| !c.is_empty());
                            let service = TlsService {
                                inner: TowerToHyperService::new(app),
                                certified,
                                verify_client: tls.verify_client,
                            };
                            connection(stream, service, peer, stop).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "HTTPS: TLS handshake failed"),
                        Err(_) => {
                            debug!(%peer, "HTTPS: no TLS handshake within {} s", HEADER_READ_TIMEOUT.as_secs())
                        }
                    }
                }
            }
            drop(peer_slot);
            drop(slot);
        });
    }
    let _ = stop_tx.send(true);
    // Running requests finish (bounded by their own deadlines); new ones are refused.
    let drained = Arc::clone(&slots);
    let all = MAX_CONNECTIONS as u32;
    let _ = tokio::time::timeout(Duration::from_secs(5), drained.acquire_many(all)).await;
    Ok(())
}

/// Serve HTTP/1.1 on one connection until it ends, its lifetime runs out or the
/// listener stops.
async fn connection<I, S>(io: I, service: S, peer: SocketAddr, mut stop: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // HTTP/1.1 only, as Patroni's API.
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let lifetime = tokio::time::sleep(CONNECTION_LIFETIME);
    tokio::pin!(lifetime);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, error = %e, "HTTP connection ended");
                }
                break;
            }
            _ = &mut lifetime, if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = stop.wait_for(|s| *s), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Present in a request's extensions when it came over TLS with a client certificate
/// that the listener's CA verified.
#[derive(Debug, Clone, Copy)]
pub struct ClientCertificate;

/// The service of one TLS connection: marks requests that came with a verified client
/// certificate, and (`verify_client: optional`, Patroni's meaning) refuses requests
/// that change something without one.
#[derive(Clone)]
struct TlsService<S> {
    inner: S,
    certified: bool,
    verify_client: VerifyClient,
}

impl<S> hyper::service::Service<Request<Incoming>> for TlsService<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if self.certified {
            request.extensions_mut().insert(ClientCertificate);
        } else if self.verify_client != VerifyClient::None && !is_safe(request.method()) {
            let refused = (
                StatusCode::FORBIDDEN,
                "client certificate required\n".to_string(),
            )
                .into_response();
            return Box::pin(async move { Ok(refused) });
        }
        Box::pin(self.inner.call(request))
    }
}

/// Methods that only read.
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

type PeerCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One connection counted against its address; uncounted when dropped.
struct PeerSlot {
    counts: PeerCounts,
    ip: IpAddr,
}

impl PeerSlot {
    /// A slot for `ip`, unless it has [`MAX_PER_PEER`] already.
    fn take(counts: &PeerCounts, ip: IpAddr) -> Option<PeerSlot> {
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= MAX_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Read the whole body within [`BODY_READ_TIMEOUT`] and [`MAX_BODY`] before any handler
/// sees the request: 408 for a client too slow, 413 for a body too large.
async fn read_body(request: Request, next: Next) -> Response {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {MAX_BODY} bytes\n"),
        )
            .into_response()
    };
    // An announced length over the limit is refused before a byte of it is read.
    let announced = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, MAX_BODY));
    match read.await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        // Over the limit as it came (chunked), or the client went away mid-body.
        Ok(Err(_)) => too_large(),
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} s\n",
                BODY_READ_TIMEOUT.as_secs()
            ),
        )
            .into_response(),
    }
}
