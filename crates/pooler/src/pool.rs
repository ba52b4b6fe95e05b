//! One pool of server connections per (database, user), PgBouncer style.
//!
//! A connection slot is a semaphore permit: `pool_size` of them, plus `reserve_pool_size`
//! more that a client may take after waiting `reserve_pool_timeout`. A client holds its
//! permit for as long as it holds the server connection (the whole session in session
//! mode, one transaction in transaction mode), so the permits count active servers and
//! the semaphore's queue is the list of waiting clients.

use crate::server::{ServerConnection, ServerError, ServerTarget};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info};

/// Which clients share a pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub database: String,
    pub user: String,
}

/// The limits and timeouts of one pool (PgBouncer's names).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolLimits {
    pub pool_size: usize,
    pub reserve_pool_size: usize,
    pub reserve_pool_timeout: Option<Duration>,
    /// How long a client may wait for a server; `None`: forever.
    pub query_wait_timeout: Option<Duration>,
    pub server_lifetime: Duration,
    pub server_idle_timeout: Option<Duration>,
    /// Run `server_check_query` on a connection idle longer than this before reuse.
    pub server_check_delay: Duration,
    pub server_check_query: Option<String>,
}

/// Why no server connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Waited `query_wait_timeout` without a free slot (PgBouncer's `query_wait_timeout`).
    #[error("query_wait_timeout")]
    WaitTimeout,
    /// The pool is being shut down.
    #[error("pool is closed")]
    Closed,
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// Counters for `SHOW POOLS` / `SHOW STATS`.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub clients_waiting: AtomicUsize,
    pub max_wait_us: AtomicU64,
    pub total_wait_us: AtomicU64,
    pub total_xact_count: AtomicU64,
    pub total_query_count: AtomicU64,
    pub total_received: AtomicU64,
    pub total_sent: AtomicU64,
    pub total_xact_time_us: AtomicU64,
    pub server_connects: AtomicU64,
}

struct Idle {
    conn: ServerConnection,
    since: Instant,
}

/// A pool of server connections for one (database, user).
pub struct Pool {
    pub key: PoolKey,
    target: ServerTarget,
    limits: PoolLimits,
    slots: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
    idle: Mutex<VecDeque<Idle>>,
    pub stats: PoolStats,
}

/// A server connection lent to one client, with the slot it occupies.
pub struct Lease {
    pub conn: ServerConnection,
    _slot: OwnedSemaphorePermit,
    pub acquired_at: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The queue stays consistent between statements, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    pub fn new(key: PoolKey, target: ServerTarget, limits: PoolLimits) -> Arc<Pool> {
        Arc::new(Pool {
            key,
            slots: Arc::new(Semaphore::new(limits.pool_size)),
            reserve: Arc::new(Semaphore::new(limits.reserve_pool_size)),
            target,
            limits,
            idle: Mutex::new(VecDeque::new()),
            stats: PoolStats::default(),
        })
    }

    pub fn limits(&self) -> &PoolLimits {
        &self.limits
    }

    /// Servers lent to clients right now (a lent server holds a slot; idle ones do not).
    pub fn active(&self) -> usize {
        let main = self.limits.pool_size - self.slots.available_permits();
        let reserve = self.limits.reserve_pool_size - self.reserve.available_permits();
        main + reserve
    }

    pub fn idle_count(&self) -> usize {
        lock(&self.idle).len()
    }

    /// Wait for a slot (up to `query_wait_timeout`), then lend an idle server or log in a
    /// new one.
    pub async fn acquire(&self) -> Result<Lease, PoolError> {
        let started = Instant::now();
        self.stats.clients_waiting.fetch_add(1, Ordering::Relaxed);
        let slot = self.wait_for_slot(started).await;
        self.stats.clients_waiting.fetch_sub(1, Ordering::Relaxed);
        let slot = slot?;
        let waited = started.elapsed().as_micros() as u64;
        self.stats
            .total_wait_us
            .fetch_add(waited, Ordering::Relaxed);
        self.stats.max_wait_us.fetch_max(waited, Ordering::Relaxed);
        let conn = match self.take_idle().await {
            Some(conn) => conn,
            None => {
                self.stats.server_connects.fetch_add(1, Ordering::Relaxed);
                let conn = ServerConnection::connect(&self.target).await?;
                debug!(pool = ?self.key, server = conn.id(), "new server connection");
                conn
            }
        };
        Ok(Lease {
            conn,
            _slot: slot,
            acquired_at: Instant::now(),
        })
    }

    async fn wait_for_slot(&self, started: Instant) -> Result<OwnedSemaphorePermit, PoolError> {
        let deadline = self.limits.query_wait_timeout.map(|t| started + t);
        let until = |d: Option<Instant>| async move {
            match d {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        // First only the main slots; after reserve_pool_timeout the reserve too.
        let reserve_after = match (
            self.limits.reserve_pool_size,
            self.limits.reserve_pool_timeout,
        ) {
            (0, _) => None,
            (_, t) => Some(started + t.unwrap_or(Duration::ZERO)),
        };
        let first_phase_end = match (reserve_after, deadline) {
            (Some(r), Some(d)) => Some(r.min(d)),
            (r, d) => r.or(d),
        };
        tokio::select! {
            permit = self.slots.clone().acquire_owned() => return permit.map_err(|_| PoolError::Closed),
            _ = until(first_phase_end) => {}
        }
        if reserve_after.is_none() || deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(PoolError::WaitTimeout);
        }
        tokio::select! {
            permit = self.slots.clone().acquire_owned() => permit.map_err(|_| PoolError::Closed),
            permit = self.reserve.clone().acquire_owned() => {
                info!(pool = ?self.key, "using the reserve pool");
                permit.map_err(|_| PoolError::Closed)
            }
            _ = until(deadline) => Err(PoolError::WaitTimeout),
        }
    }

    /// The freshest usable idle connection; stale or broken ones are closed on the way.
    async fn take_idle(&self) -> Option<ServerConnection> {
        loop {
            let Idle { mut conn, since } = lock(&self.idle).pop_back()?;
            let too_old = conn.created_at().elapsed() >= self.limits.server_lifetime;
            let idle_too_long = self
                .limits
                .server_idle_timeout
                .is_some_and(|t| since.elapsed() >= t);
            if conn.is_broken() || too_old || idle_too_long {
                debug!(pool = ?self.key, server = conn.id(), too_old, idle_too_long, "closing server connection");
                conn.close().await;
                continue;
            }
            if since.elapsed() >= self.limits.server_check_delay {
                if let Some(q) = &self.limits.server_check_query {
                    if let Err(e) = conn.simple_query(q).await {
                        debug!(pool = ?self.key, server = conn.id(), error = %e, "server check failed");
                        conn.close().await;
                        continue;
                    }
                }
            }
            return Some(conn);
        }
    }

    /// Give a server back. `reusable`: it is idle (ReadyForQuery 'I') and reset.
    pub async fn release(&self, lease: Lease, reusable: bool) {
        let Lease {
            mut conn, _slot, ..
        } = lease;
        if reusable && !conn.is_broken() {
            conn.touch();
            lock(&self.idle).push_back(Idle {
                conn,
                since: Instant::now(),
            });
        } else {
            conn.close().await;
        }
        // `_slot` drops here: the next waiting client gets it.
    }

    /// Close every idle connection (RECONNECT, shutdown, a primary that was demoted).
    pub async fn close_idle(&self) {
        let idle: Vec<Idle> = lock(&self.idle).drain(..).collect();
        for i in idle {
            i.conn.close().await;
        }
    }
}
