//! One pool of server connections per (database, user), PgBouncer style.
//!
//! A connection slot is a semaphore permit: `pool_size` of them, plus `reserve_pool_size`
//! more that a client may take after waiting `reserve_pool_timeout`. A client holds its
//! permit for as long as it holds the server connection (the whole session in session
//! mode, one transaction in transaction mode), so the permits count active servers and
//! the semaphore's queue is the list of waiting clients.
//!
//! For the admin console every server connection is listed in [`Pool::servers`] while
//! it lives (a [`ServerTicket`] removes it when the connection is dropped); a pool can be
//! paused (`PAUSE`: new transactions wait before taking a slot) and can be told that
//! its connections are stale (`RECONNECT`: a generation counter, checked on release).

use crate::runtime::{current_client, ClientState};
use crate::server::{ServerConnection, ServerError, ServerTarget};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
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
    pub total_query_time_us: AtomicU64,
    pub server_connects: AtomicU64,
    /// Times a server was lent to a client (PgBouncer's `server_assignment_count`).
    pub server_assignments: AtomicU64,
    /// Server logins in progress (`sv_login`).
    pub servers_connecting: AtomicUsize,
}

/// A point-in-time copy of the cumulative counters, for `SHOW STATS` averages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub server_assignment_count: u64,
    pub xact_count: u64,
    pub query_count: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub xact_time_us: u64,
    pub query_time_us: u64,
    pub wait_time_us: u64,
}

impl StatsSnapshot {
    fn sum(mut self, o: &StatsSnapshot) -> StatsSnapshot {
        self.server_assignment_count += o.server_assignment_count;
        self.xact_count += o.xact_count;
        self.query_count += o.query_count;
        self.bytes_received += o.bytes_received;
        self.bytes_sent += o.bytes_sent;
        self.xact_time_us += o.xact_time_us;
        self.query_time_us += o.query_time_us;
        self.wait_time_us += o.wait_time_us;
        self
    }

    /// Add up snapshots.
    pub fn total<'a>(all: impl IntoIterator<Item = &'a StatsSnapshot>) -> StatsSnapshot {
        all.into_iter()
            .fold(StatsSnapshot::default(), |acc, s| acc.sum(s))
    }
}

/// What a server connection is doing, as `SHOW SERVERS` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Lent to a client.
    Active,
    /// In the pool, ready for reuse.
    Idle,
}

/// One server connection as the admin console lists it.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// Unique in the process (the console's `ptr`/`id`).
    pub id: u64,
    pub addr: SocketAddr,
    pub local_addr: SocketAddr,
    pub backend_pid: i32,
    pub connect_time: SystemTime,
    /// When it was last lent or given back.
    pub request_time: SystemTime,
    pub state: ServerState,
    /// Since when it is in `state` (an idle one past `server_check_delay` is "used").
    pub since: Instant,
    /// The client it is lent to (client registry id).
    pub link: Option<u64>,
    /// Created before the last `RECONNECT`: closed instead of reused.
    pub generation: u64,
}

type ServerRegistry = Arc<Mutex<BTreeMap<u64, ServerInfo>>>;

/// Keeps a server connection listed in its pool's registry while it lives.
struct ServerTicket {
    id: u64,
    generation: u64,
    registry: ServerRegistry,
}

impl ServerTicket {
    fn update(&self, f: impl FnOnce(&mut ServerInfo)) {
        if let Some(info) = lock(&self.registry).get_mut(&self.id) {
            f(info);
        }
    }
}

impl Drop for ServerTicket {
    fn drop(&mut self) {
        lock(&self.registry).remove(&self.id);
    }
}

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

struct Idle {
    conn: ServerConnection,
    since: Instant,
    ticket: ServerTicket,
}

/// Snapshots taken every `stats_period` (lazily, when stats are read).
struct StatsWindow {
    older: (Instant, StatsSnapshot),
    newer: (Instant, StatsSnapshot),
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
    servers: ServerRegistry,
    generation: AtomicU64,
    paused: watch::Sender<bool>,
    window: Mutex<StatsWindow>,
}

/// A server connection lent to one client, with the slot it occupies.
pub struct Lease {
    pub conn: ServerConnection,
    _slot: OwnedSemaphorePermit,
    pub acquired_at: Instant,
    ticket: ServerTicket,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The queue stays consistent between statements, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts a waiting client for as long as it exists (also when the wait is abandoned).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

impl Pool {
    pub fn new(key: PoolKey, target: ServerTarget, limits: PoolLimits) -> Arc<Pool> {
        let now = Instant::now();
        Arc::new(Pool {
            key,
            slots: Arc::new(Semaphore::new(limits.pool_size)),
            reserve: Arc::new(Semaphore::new(limits.reserve_pool_size)),
            target,
            limits,
            idle: Mutex::new(VecDeque::new()),
            stats: PoolStats::default(),
            servers: Arc::new(Mutex::new(BTreeMap::new())),
            generation: AtomicU64::new(0),
            paused: watch::channel(false).0,
            window: Mutex::new(StatsWindow {
                older: (now, StatsSnapshot::default()),
                newer: (now, StatsSnapshot::default()),
            }),
        })
    }

    pub fn limits(&self) -> &PoolLimits {
        &self.limits
    }

    pub fn target(&self) -> &ServerTarget {
        &self.target
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

    /// Every server connection of this pool, oldest first.
    pub fn servers(&self) -> Vec<ServerInfo> {
        lock(&self.servers).values().cloned().collect()
    }

    /// Server connections open now (lent, idle, or logging in).
    pub fn server_count(&self) -> usize {
        lock(&self.servers).len() + self.stats.servers_connecting.load(Ordering::Relaxed)
    }

    /// `PAUSE`/`RESUME`: while paused, clients wait before taking a slot.
    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// The current generation; connections from older ones are closed, not reused.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// `RECONNECT`: close idle connections now and lent ones when they come back.
    pub async fn reconnect(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.close_idle().await;
    }

    /// The cumulative counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            server_assignment_count: get(&s.server_assignments),
            xact_count: get(&s.total_xact_count),
            query_count: get(&s.total_query_count),
            bytes_received: get(&s.total_received),
            bytes_sent: get(&s.total_sent),
            xact_time_us: get(&s.total_xact_time_us),
            query_time_us: get(&s.total_query_time_us),
            wait_time_us: get(&s.total_wait_us),
        }
    }

    /// The snapshot from the start of the last complete `period` and when it was taken
    /// (what `SHOW STATS` averages are computed against).
    pub fn stats_baseline(&self, period: Duration) -> (Instant, StatsSnapshot) {
        let mut w = lock(&self.window);
        let now = Instant::now();
        if now.duration_since(w.newer.0) >= period {
            w.older = w.newer;
            w.newer = (now, self.snapshot());
        }
        w.older
    }

    /// Wait for a slot (up to `query_wait_timeout`), then lend an idle server or log in a
    /// new one.
    pub async fn acquire(&self) -> Result<Lease, PoolError> {
        let started = Instant::now();
        let client = current_client();
        if let Some(c) = &client {
            c.set_pool(&self.key);
            c.set_state(ClientState::Waiting);
        }
        let slot = {
            let _waiting = Waiting::new(&self.stats.clients_waiting);
            self.wait_for_slot(started).await
        };
        let slot = match slot {
            Ok(s) => s,
            Err(e) => {
                if let Some(c) = &client {
                    c.set_state(ClientState::Active);
                }
                return Err(e);
            }
        };
        let waited = started.elapsed().as_micros() as u64;
        self.stats
            .total_wait_us
            .fetch_add(waited, Ordering::Relaxed);
        self.stats.max_wait_us.fetch_max(waited, Ordering::Relaxed);
        let (conn, ticket) = match self.take_idle().await {
            Some(idle) => idle,
            None => {
                self.stats.server_connects.fetch_add(1, Ordering::Relaxed);
                let connecting = Waiting::new(&self.stats.servers_connecting);
                let conn = ServerConnection::connect(&self.target).await;
                drop(connecting);
                let conn = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        if let Some(c) = &client {
                            c.set_state(ClientState::Active);
                        }
                        return Err(e.into());
                    }
                };
                debug!(pool = ?self.key, server = conn.id(), "new server connection");
                let ticket = self.register(&conn);
                (conn, ticket)
            }
        };
        self.stats
            .server_assignments
            .fetch_add(1, Ordering::Relaxed);
        let link = client.as_ref().map(|c| c.id);
        ticket.update(|s| {
            s.state = ServerState::Active;
            s.since = Instant::now();
            s.request_time = SystemTime::now();
            s.link = link;
        });
        if let Some(c) = &client {
            c.set_state(ClientState::Active);
            c.set_link(Some(ticket.id));
        }
        Ok(Lease {
            conn,
            _slot: slot,
            acquired_at: Instant::now(),
            ticket,
        })
    }

    fn register(&self, conn: &ServerConnection) -> ServerTicket {
        let id = NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation();
        let now = SystemTime::now();
        lock(&self.servers).insert(
            id,
            ServerInfo {
                id,
                addr: conn.addr(),
                local_addr: conn.local_addr(),
                backend_pid: conn.backend_pid(),
                connect_time: now,
                request_time: now,
                state: ServerState::Active,
                since: Instant::now(),
                link: None,
                generation,
            },
        );
        ServerTicket {
            id,
            generation,
            registry: self.servers.clone(),
        }
    }

    /// Wait while the pool is paused, at most until `deadline`.
    async fn wait_unpaused(&self, deadline: Option<Instant>) -> Result<(), PoolError> {
        let mut paused = self.paused.subscribe();
        tokio::select! {
            r = paused.wait_for(|p| !*p) => r.map(|_| ()).map_err(|_| PoolError::Closed),
            _ = sleep_until(deadline) => Err(PoolError::WaitTimeout),
        }
    }

    async fn wait_for_slot(&self, started: Instant) -> Result<OwnedSemaphorePermit, PoolError> {
        let deadline = self.limits.query_wait_timeout.map(|t| started + t);
        self.wait_unpaused(deadline).await?;
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
            _ = sleep_until(first_phase_end) => {}
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
            _ = sleep_until(deadline) => Err(PoolError::WaitTimeout),
        }
    }

    /// The freshest usable idle connection; stale or broken ones are closed on the way.
    async fn take_idle(&self) -> Option<(ServerConnection, ServerTicket)> {
        loop {
            let Idle {
                mut conn,
                since,
                ticket,
            } = lock(&self.idle).pop_back()?;
            let too_old = conn.created_at().elapsed() >= self.limits.server_lifetime;
            let idle_too_long = self
                .limits
                .server_idle_timeout
                .is_some_and(|t| since.elapsed() >= t);
            let stale = ticket.generation < self.generation();
            if conn.is_broken() || too_old || idle_too_long || stale {
                debug!(pool = ?self.key, server = conn.id(), too_old, idle_too_long, stale, "closing server connection");
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
            return Some((conn, ticket));
        }
    }

    /// Give a server back. `reusable`: it is idle (ReadyForQuery 'I') and reset.
    pub async fn release(&self, lease: Lease, reusable: bool) {
        let Lease {
            mut conn,
            _slot,
            ticket,
            ..
        } = lease;
        if let Some(c) = current_client() {
            c.set_link(None);
        }
        let stale = ticket.generation < self.generation();
        if reusable && !conn.is_broken() && !stale {
            conn.touch();
            ticket.update(|s| {
                s.state = ServerState::Idle;
                s.since = Instant::now();
                s.request_time = SystemTime::now();
                s.link = None;
            });
            lock(&self.idle).push_back(Idle {
                conn,
                since: Instant::now(),
                ticket,
            });
        } else {
            conn.close().await;
            drop(ticket);
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
