//! CancelRequest to a server, on a fresh connection (`PQcancel()` in libpq's
//! `fe-connect.c` does the same: send, then wait for the server to close).

use super::error::ServerError;
use bytes::{Bytes, BytesMut};
use pgherd_protocol::startup::MAX_CANCEL_KEY_LENGTH;
use pgherd_protocol::CancelRequest;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// The cancel requests on their way to one server backend. A server is not lent to
/// another client while one is in flight: it could cancel that client's query instead
/// (PgBouncer's `sv_being_canceled`).
#[derive(Debug, Default)]
pub struct CancelsInFlight {
    count: AtomicUsize,
    done: Notify,
}

/// One cancel request in flight; done when dropped.
#[derive(Debug)]
pub struct CancelInFlight(Arc<CancelsInFlight>);

impl CancelsInFlight {
    /// A cancel request starts (call it where the target is looked up, so that whoever
    /// gives the server back afterwards sees it).
    pub fn start(self: &Arc<Self>) -> CancelInFlight {
        self.count.fetch_add(1, Ordering::AcqRel);
        CancelInFlight(self.clone())
    }

    pub fn pending(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Wait until no cancel request is in flight; `false` if `timeout` ran out first.
    pub async fn wait_done(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        // Each pass ends when a cancel finishes or at the deadline.
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if !self.pending() {
                return true;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return !self.pending();
            }
        }
    }
}

impl Drop for CancelInFlight {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

/// Ask the server at `addr` to cancel the query running in backend `pid`, proven by
/// `key` (from its BackendKeyData). Succeeds once the server has read the request
/// and closed the connection; PostgreSQL never says whether anything was cancelled.
/// Bounded by `timeout` as a whole.
pub async fn send_cancel(
    addr: (&str, u16),
    pid: i32,
    key: &[u8],
    timeout: Duration,
) -> Result<(), ServerError> {
    let (host, port) = addr;
    let addr_string = if host.starts_with('/') {
        crate::net::unix_socket_path(std::path::Path::new(host), port)
            .display()
            .to_string()
    } else if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    if key.len() < 4 || key.len() > MAX_CANCEL_KEY_LENGTH {
        return Err(ServerError::Protocol(
            pgherd_protocol::ProtocolError::InvalidField {
                message: "CancelRequest",
                detail: "secret key must be 4 to 256 bytes",
            },
        ));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = |during| ServerError::Timeout {
        addr: addr_string.clone(),
        during,
        after: timeout,
    };

    let mut stream = match tokio::time::timeout_at(deadline, crate::net::connect(host, port)).await
    {
        Err(_) => return Err(timed_out("connecting to")),
        Ok(Err(source)) => {
            return Err(ServerError::Connect {
                addr: addr_string.clone(),
                source,
            })
        }
        Ok(Ok(s)) => s,
    };
    let mut buf = BytesMut::new();
    CancelRequest {
        process_id: pid,
        secret_key: Bytes::copy_from_slice(key),
    }
    .encode(&mut buf);
    let exchange = async {
        stream.write_all(&buf).await?;
        // The server reads the request and closes without a reply; anything it does
        // send is ignored.
        let mut sink = [0u8; 64];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout_at(deadline, exchange).await {
        Err(_) => Err(timed_out("cancelling on")),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(())) => {
            tracing::debug!(server = %addr_string, backend_pid = pid, "cancel request sent");
            Ok(())
        }
    }
}
