//! One pool of server connections per (database, user), PgBouncer style.
//!
//! A pool holds at most `pool_size` server connections (lent, idle or logging in),
//! plus `reserve_pool_size` more for a client that waited `reserve_pool_timeout`. Its
//! [`queue`] is the one place where a free server meets a waiting client: a server given
//! back goes straight to the client that waited longest, and only to the idle list when
//! nobody waits; room freed by a closed server or a failed login goes to the next
//! client as a login. So a pool never holds an idle, usable server while one of its
//! clients waits ([`Pool::check_invariant`]; asserted after every hand-off in debug
//! builds).
//!
//! For the admin console every server connection is listed in [`Pool::servers`] while
//! it lives (a [`ServerTicket`] removes it when the connection is dropped); a pool can be
//! paused (`PAUSE`: clients queue and are served on `RESUME`) and can be told that
//! its connections are stale (`RECONNECT`: a generation counter, checked on release).
//!
//! Limits beyond one pool, PgBouncer style: every server connection (lent, idle or
//! logging in) holds a permit of its database's `max_db_connections` and its user's
//! `max_user_connections` [`ConnLimit`] for as long as it lives. A client that needs a new
//! connection while such a limit is full first closes an idle connection of another pool
//! under that limit, else waits (like for a slot, bounded by `query_wait_timeout`).
//! After a failed server login the pool makes no new login for `server_login_retry`:
//! clients that need one get that failure at once. [`Pool::maintain`] and
//! [`Pool::fill_to_min`] are the janitor's work (run by the runtime in the background):
//! close idle connections that died or outlived `server_idle_timeout` /
//! `server_lifetime`, and keep `min_pool_size` connections open once the pool was used.

mod queue;
mod route;

use crate::client::{ClientInfo, ClientState};
use crate::server::{ServerConnection, ServerError, ServerTarget, Severance};
use prometheus_client::metrics::histogram::Histogram;
use queue::{Capacity, Env, Grant, Logins, Outcome, Queue};
pub use route::{Balance, Endpoint};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

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
    /// Keep at least this many server connections open once the pool was used
    /// (capped at `pool_size`); 0: none.
    pub min_pool_size: usize,
    /// After a failed server login, no new login for this long.
    pub server_login_retry: Duration,
}

/// Which setting a [`ConnLimit`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LimitKind {
    /// `max_db_connections`: the pools of one database.
    Database,
    /// `max_user_connections`: the pools of one user.
    User,
}

/// A cap on the server connections of several pools (`max_db_connections` for one
/// database, `max_user_connections` for one user). Each open server connection holds
/// one permit until it is closed.
pub struct ConnLimit {
    pub kind: LimitKind,
    /// The database or user name.
    pub name: String,
    /// Changed by RELOAD ([`ConnLimit::set_max`]).
    max: AtomicUsize,
    permits: Arc<Semaphore>,
    /// The pools under this limit (to evict an idle connection from).
    pools: Mutex<Vec<Weak<Pool>>>,
    /// Bumped when a permit is freed or an idle connection appears under the limit.
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for ConnLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnLimit")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("max", &self.max())
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl ConnLimit {
    pub fn new(kind: LimitKind, name: impl Into<String>, max: usize) -> Arc<ConnLimit> {
        Arc::new(ConnLimit {
            kind,
            name: name.into(),
            max: AtomicUsize::new(max),
            permits: Arc::new(Semaphore::new(max)),
            pools: Mutex::new(Vec::new()),
            changes: watch::channel(0).0,
        })
    }

    /// The configured maximum.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// A reloaded maximum: more permits at once; fewer as connections close (waiters
    /// queue behind the shrink, as for a smaller pool).
    pub fn set_max(&self, max: usize) {
        let old = self.max.swap(max, Ordering::Relaxed);
        resize(&self.permits, old, max);
        self.bump();
    }

    /// Server connections counted against the limit now.
    pub fn in_use(&self) -> usize {
        self.max().saturating_sub(self.permits.available_permits())
    }

    fn join(&self, pool: &Arc<Pool>) {
        let mut pools = lock(&self.pools);
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(pool));
    }

    fn members(&self) -> Vec<Arc<Pool>> {
        lock(&self.pools).iter().filter_map(Weak::upgrade).collect()
    }

    fn is_full(&self) -> bool {
        self.permits.available_permits() == 0
    }

    fn bump(&self) {
        if self.changes.receiver_count() > 0 {
            self.changes.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Close the idle connection that waited longest among the pools under this limit
    /// (PgBouncer's eviction); `false` if there is none.
    async fn evict_idle(&self) -> bool {
        let mut oldest: Option<(Instant, Arc<Pool>)> = None;
        for pool in self.members() {
            if let Some(since) = pool.oldest_idle_since() {
                if oldest.as_ref().is_none_or(|(s, _)| since < *s) {
                    oldest = Some((since, pool));
                }
            }
        }
        let Some((_, pool)) = oldest else {
            return false;
        };
        let Some(idle) = lock(&pool.queue).take_oldest_idle() else {
            // Taken meanwhile: something changed, the caller looks again.
            return true;
        };
        debug!(limit = ?self.kind, name = %self.name, pool = ?pool.key, server = idle.conn.id(),
            "closing an idle server connection for another pool");
        idle.conn.close().await;
        drop(idle.ticket);
        pool.hand_off();
        true
    }
}

/// One permit of a [`ConnLimit`], held by a server connection; tells waiters when freed.
struct LimitPermit {
    permit: Option<OwnedSemaphorePermit>,
    limit: Arc<ConnLimit>,
}

impl Drop for LimitPermit {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.limit.bump();
    }
}

/// The shared-limit permits of one server connection.
#[derive(Default)]
struct Permits {
    _db: Option<LimitPermit>,
    _user: Option<LimitPermit>,
}

/// Why no server connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Waited `query_wait_timeout` without a free slot (PgBouncer's `query_wait_timeout`).
    #[error("query_wait_timeout")]
    WaitTimeout,
    /// A routed pool has no member to log in to (no primary right now).
    #[error("no server to route to: {0}")]
    NoServer(String),
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// Counters for `SHOW POOLS` / `SHOW STATS`.
#[derive(Debug, Default)]
pub struct PoolStats {
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
    /// Each client's wait for a server, for `/metrics`.
    pub wait_histogram: WaitHistogram,
    /// Clients that waited `query_wait_timeout` in vain.
    pub wait_timeouts: AtomicU64,
    /// Clients that got a failed server login (now, or within `server_login_retry`).
    pub server_login_failures: AtomicU64,
}

impl PoolStats {
    /// Count why a client got no server.
    fn count_error(&self, e: &PoolError) {
        let counter = match e {
            PoolError::WaitTimeout | PoolError::NoServer(_) => &self.wait_timeouts,
            PoolError::Server(_) => &self.server_login_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Upper bounds (seconds) of the wait histogram's buckets: from a free server at once
/// to PgBouncer's default `query_wait_timeout` (120 s).
const WAIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// How long clients waited for a server in one pool
/// (`pgherd_pooler_client_wait_seconds`).
#[derive(Debug, Clone)]
pub struct WaitHistogram(pub Histogram);

impl Default for WaitHistogram {
    fn default() -> Self {
        WaitHistogram(Histogram::new(WAIT_BUCKETS.iter().copied()))
    }
}

impl WaitHistogram {
    pub fn observe(&self, waited: Duration) {
        self.0.observe(waited.as_secs_f64());
    }
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
    pub addr: crate::net::Peer,
    pub local_addr: Option<SocketAddr>,
    /// TLS protocol and cipher, empty on plain TCP.
    pub tls: String,
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
    /// The cluster member it is on, in a routed pool.
    pub endpoint: Option<Endpoint>,
    /// Cuts it from outside (a primary that is no longer one).
    pub severance: Option<Arc<Severance>>,
}

type ServerRegistry = Arc<Mutex<BTreeMap<u64, ServerInfo>>>;

/// Keeps a server connection listed in its pool's registry while it lives.
struct ServerTicket {
    id: u64,
    generation: u64,
    /// The member it is on, in a routed pool.
    endpoint: Option<Endpoint>,
    registry: ServerRegistry,
    /// Released (after the registry entry) when the connection is gone.
    _permits: Permits,
}

impl ServerTicket {
    fn update(&self, f: impl FnOnce(&mut ServerInfo)) {
        if let Some(info) = lock(&self.registry).get_mut(&self.id) {
            f(info);
        }
    }

    /// Listed as `state` (lent to client `link`, if known) from now on.
    fn set_state(&self, state: ServerState, link: Option<u64>) {
        self.set_state_at(state, link, Instant::now());
    }

    /// [`ServerTicket::set_state`] with the time already read.
    fn set_state_at(&self, state: ServerState, link: Option<u64>, now: Instant) {
        self.update(|s| {
            s.state = state;
            s.since = now;
            s.request_time = SystemTime::now();
            s.link = link;
        });
    }
}

impl Drop for ServerTicket {
    fn drop(&mut self) {
        lock(&self.registry).remove(&self.id);
    }
}

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// A server connection with its registry entry: what the queue holds and hands out.
struct Pooled {
    /// Boxed: it moves between the queue, a grant and a lease on every transaction.
    conn: Box<ServerConnection>,
    ticket: ServerTicket,
}

type PoolQueue = Queue<Pooled, Permits>;

/// Snapshots taken every `stats_period` (lazily, when stats are read).
struct StatsWindow {
    older: (Instant, StatsSnapshot),
    newer: (Instant, StatsSnapshot),
}

/// Grow or shrink a shared limit's semaphore from `from` to `to` permits. Shrinking
/// takes the permits back as connections close: new logins wait behind that, which is
/// what a smaller limit means.
fn resize(slots: &Arc<Semaphore>, from: usize, to: usize) {
    if to > from {
        slots.add_permits(to - from);
    } else if to < from {
        let n = u32::try_from(from - to).unwrap_or(u32::MAX);
        let slots = slots.clone();
        tokio::spawn(async move {
            if let Ok(p) = slots.acquire_many_owned(n).await {
                p.forget();
            }
        });
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A pool of server connections for one (database, user).
pub struct Pool {
    pub key: PoolKey,
    /// Both replaced by RELOAD ([`Pool::reconfigure`]).
    target: RwLock<Arc<ServerTarget>>,
    limits: RwLock<Arc<PoolLimits>>,
    /// Idle servers, waiting clients, lent and logging-in counts: the hand-off.
    queue: Mutex<PoolQueue>,
    pub stats: PoolStats,
    servers: ServerRegistry,
    generation: AtomicU64,
    paused: watch::Sender<bool>,
    window: Mutex<StatsWindow>,
    db_limit: Option<Arc<ConnLimit>>,
    user_limit: Option<Arc<ConnLimit>>,
    /// A client asked for a server once (`min_pool_size` applies from then on).
    used: AtomicBool,
    /// A `min_pool_size` fill is running.
    filling: AtomicBool,
    /// The last failed server login and when it happened (`server_login_retry`).
    login_failure: Mutex<Option<(Instant, ServerError)>>,
    /// Where a cluster route sends new logins, and how it spreads them (`None`: the
    /// static `target`). Replaced by [`Pool::route_to`].
    routing: RwLock<Option<(Arc<[Endpoint]>, Balance)>>,
    /// The route names no member, or a switchover drains it: clients wait as while
    /// paused.
    held: AtomicBool,
    /// A switchover is pending (see [`Pool::set_draining`]).
    draining: AtomicBool,
    /// Counts the times the primary moved or a switchover began: session-mode clients
    /// between transactions leave their server then (see [`Pool::moves`]).
    moves: tokio::sync::watch::Sender<u64>,
    /// Turns for spreading logins over endpoints.
    next_endpoint: AtomicUsize,
    /// Endpoints that refused a login, skipped until the time given.
    down: Mutex<std::collections::HashMap<Endpoint, Instant>>,
    /// Endpoints whose refusal was logged as a warning, until a login there works again
    /// (a dead primary is retried every second until its lease runs out: one warning).
    reported_down: Mutex<std::collections::HashSet<Endpoint>>,
    /// `login_failure` holds a failure (read on every hand-off without the lock).
    login_failed: AtomicBool,
    /// The server's ParameterStatus values from this pool's first login: what later
    /// clients are welcomed with, so logging in needs no free server (PgBouncer too).
    welcome: Mutex<Option<Vec<(String, String)>>>,
}

/// A copy of a login failure, for the clients that get it during `server_login_retry`.
fn replay(e: &ServerError) -> ServerError {
    match e {
        ServerError::Connect { addr, source } => ServerError::Connect {
            addr: addr.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        ServerError::Timeout {
            addr,
            during,
            after,
        } => ServerError::Timeout {
            addr: addr.clone(),
            during,
            after: *after,
        },
        ServerError::Auth {
            addr,
            user,
            response,
        } => ServerError::Auth {
            addr: addr.clone(),
            user: user.clone(),
            response: response.clone(),
        },
        // The client sees the same ErrorResponse either way.
        other => ServerError::ServerError(other.to_client_error()),
    }
}

/// Whether an idle connection is still there: reads what the server sent meanwhile
/// without waiting. A FATAL error (`pg_terminate_backend`, server shutdown), EOF, or
/// anything but a notice or parameter change means it is gone.
fn still_alive(conn: &mut ServerConnection) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    // A handful of buffered notices at most; bounded anyway.
    for _ in 0..16 {
        if conn.is_broken() {
            return false;
        }
        let mut read = pin!(conn.read_frame());
        match read.as_mut().poll(&mut cx) {
            Poll::Pending => return true,
            Poll::Ready(Err(_)) => return false,
            Poll::Ready(Ok(frame)) => match frame.tag {
                // NoticeResponse, ParameterStatus (recorded by read_frame).
                b'N' | b'S' => continue,
                _ => return false,
            },
        }
    }
    !conn.is_broken()
}

/// Resolves when the limit's state changed since `rx` last looked; never without one.
async fn limit_changed(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
    }
}

/// A waiting client looks again this often even without news: a login retry that ran
/// out, a shared-limit permit freed by a racing client that took and gave it back.
const RECHECK: Duration = Duration::from_millis(200);

/// How long a server given back waits for cancel requests still on their way to it
/// before it is closed instead of lent again.
const CANCEL_WAIT: Duration = Duration::from_secs(2);

/// Idle servers one client may find failing `server_check_query` before it gives up.
const MAX_CHECK_FAILURES: usize = 64;

/// Close servers the hand-off dropped (dead, too old, over the pool's size) without
/// holding up whoever made the change.
fn close_in_background(doomed: Vec<Pooled>) {
    if doomed.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move {
                for p in doomed {
                    p.conn.close().await;
                    drop(p.ticket);
                }
            });
        }
        // No runtime (a pool dropped at exit): dropping closes the sockets.
        Err(_) => drop(doomed),
    }
}

/// Clears a flag when dropped.
struct FlagGuard<'a>(&'a AtomicBool);

impl Drop for FlagGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A server connection lent to one client. Given back with [`Pool::release`]; dropped
/// instead (the client was killed), the connection closes and its room in the pool is
/// free again.
pub struct Lease {
    pub conn: Box<ServerConnection>,
    pub acquired_at: Instant,
    ticket: ServerTicket,
    lent: LentSlot,
}

/// A lent server's place in its pool's count; tells the pool when it is gone without
/// being given back.
struct LentSlot(Option<Arc<Pool>>);

impl LentSlot {
    /// The server is being given back through the queue, which counts it there.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for LentSlot {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            pool.with_queue(|q, env, out| q.lent_gone(env, out));
        }
    }
}

/// A login's place in its pool's count while it runs: if the login fails or is
/// abandoned (the client left), the room goes to the next client.
struct LoginSlot<'a> {
    pool: &'a Pool,
    /// A fill for `min_pool_size` rather than a client's login.
    fill: bool,
    armed: bool,
}

impl Drop for LoginSlot<'_> {
    fn drop(&mut self) {
        if self.armed {
            let fill = self.fill;
            self.pool.with_queue(|q, env, out| {
                if fill {
                    q.fill_done(None, env, out)
                } else {
                    q.login_done(false, env, out)
                }
            });
        }
    }
}

/// A client's place in its pool's queue while it waits; leaving it (timeout, client
/// gone) gives a grant it did not pick up to the next client.
struct WaitTicket<'a> {
    pool: &'a Pool,
    id: u64,
    done: bool,
}

impl WaitTicket<'_> {
    fn poll_grant(&mut self, cx: &mut Context<'_>) -> Poll<Grant<Pooled, Permits>> {
        match lock(&self.pool.queue).poll_grant(self.id, cx.waker()) {
            Some(g) => {
                self.done = true;
                Poll::Ready(g)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for WaitTicket<'_> {
    fn drop(&mut self) {
        if !self.done {
            let id = self.id;
            self.pool.with_queue(|q, env, out| q.leave(id, env, out));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The queue stays consistent between statements, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts a login in progress for as long as it exists (also when it is abandoned).
struct Connecting<'a>(&'a AtomicUsize);

impl<'a> Connecting<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Connecting(counter)
    }
}

impl Drop for Connecting<'_> {
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
        Pool::with_shared_limits(key, target, limits, None, None)
    }

    /// A pool whose server connections also count against its database's
    /// `max_db_connections` and its user's `max_user_connections`.
    pub fn with_shared_limits(
        key: PoolKey,
        target: ServerTarget,
        limits: PoolLimits,
        db_limit: Option<Arc<ConnLimit>>,
        user_limit: Option<Arc<ConnLimit>>,
    ) -> Arc<Pool> {
        let now = Instant::now();
        let pool = Arc::new(Pool {
            key,
            target: RwLock::new(Arc::new(target)),
            limits: RwLock::new(Arc::new(limits)),
            queue: Mutex::new(Queue::default()),
            stats: PoolStats::default(),
            servers: Arc::new(Mutex::new(BTreeMap::new())),
            generation: AtomicU64::new(0),
            paused: watch::channel(false).0,
            window: Mutex::new(StatsWindow {
                older: (now, StatsSnapshot::default()),
                newer: (now, StatsSnapshot::default()),
            }),
            db_limit,
            user_limit,
            used: AtomicBool::new(false),
            filling: AtomicBool::new(false),
            login_failure: Mutex::new(None),
            login_failed: AtomicBool::new(false),
            welcome: Mutex::new(None),
            routing: RwLock::new(None),
            held: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            moves: tokio::sync::watch::channel(0).0,
            next_endpoint: AtomicUsize::new(0),
            down: Mutex::new(std::collections::HashMap::new()),
            reported_down: Mutex::new(std::collections::HashSet::new()),
        });
        for limit in [&pool.db_limit, &pool.user_limit].into_iter().flatten() {
            limit.join(&pool);
        }
        pool
    }

    /// The `max_db_connections` limit this pool counts against, if any.
    pub fn db_limit(&self) -> Option<&Arc<ConnLimit>> {
        self.db_limit.as_ref()
    }

    /// The `max_user_connections` limit this pool counts against, if any.
    pub fn user_limit(&self) -> Option<&Arc<ConnLimit>> {
        self.user_limit.as_ref()
    }

    /// The welcome parameters, once a server of this pool has logged in.
    pub fn welcome_parameters(&self) -> Option<Vec<(String, String)>> {
        lock(&self.welcome).clone()
    }

    pub fn set_welcome_parameters(&self, parameters: &[(String, String)]) {
        *lock(&self.welcome) = Some(parameters.to_vec());
    }

    pub fn limits(&self) -> Arc<PoolLimits> {
        read(&self.limits).clone()
    }

    pub fn target(&self) -> Arc<ServerTarget> {
        read(&self.target).clone()
    }

    /// Apply a reloaded configuration: new limits at once (a smaller pool takes back
    /// slots as lent servers return, so clients wait rather than exceed it); a changed
    /// server address, database, user or parameters reconnects like `RECONNECT`.
    pub fn reconfigure(self: &Arc<Self>, target: ServerTarget, limits: PoolLimits) {
        *write(&self.limits) = Arc::new(limits);
        // A larger pool serves waiting clients at once.
        self.hand_off();
        let old = self.target();
        let moved = old.host != target.host
            || old.port != target.port
            || old.database != target.database
            || old.user != target.user
            || old.startup_params != target.startup_params
            || old.tls.mode != target.tls.mode;
        *write(&self.target) = Arc::new(target);
        if moved {
            info!(pool = ?self.key, "server settings changed: reconnecting");
            let pool = self.clone();
            tokio::spawn(async move { pool.reconnect().await });
        }
    }

    /// Servers lent to clients right now.
    pub fn active(&self) -> usize {
        lock(&self.servers)
            .values()
            .filter(|s| s.state == ServerState::Active)
            .count()
    }

    pub fn idle_count(&self) -> usize {
        lock(&self.queue).idle_len()
    }

    /// The pool's hand-off invariant, checked in one atomic look: no idle, usable
    /// server connection while one of its clients waits for one. `Err` says what was
    /// seen.
    pub fn check_invariant(&self) -> Result<(), String> {
        let paused = self.is_paused();
        lock(&self.queue)
            .check(paused)
            .map_err(|e| format!("pool {:?}: {e}", self.key))
    }

    /// Clients waiting for a server of this pool now (queued, or granted one and not
    /// running yet).
    pub fn waiting(&self) -> usize {
        lock(&self.queue).waiting()
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
        if !paused {
            self.hand_off();
        }
    }

    /// Paused by `PAUSE`, or held because its route names no member.
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow() || self.is_held()
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

    /// Run `f` on the queue under its lock, with what the hand-off needs to know of the
    /// pool now; then wake the clients it served and close the servers it dropped.
    fn with_queue<R>(
        &self,
        f: impl FnOnce(&mut PoolQueue, &mut Env<'_, Pooled, Permits>, &mut Outcome<Pooled>) -> R,
    ) -> (R, bool) {
        self.with_queue_at(Instant::now(), f)
    }

    /// [`Pool::with_queue`] with the time already read.
    fn with_queue_at<R>(
        &self,
        now: Instant,
        f: impl FnOnce(&mut PoolQueue, &mut Env<'_, Pooled, Permits>, &mut Outcome<Pooled>) -> R,
    ) -> (R, bool) {
        let limits = self.limits();
        let generation = self.generation();
        let capacity = Capacity {
            pool_size: limits.pool_size,
            reserve_pool_size: limits.reserve_pool_size,
            paused: self.is_paused(),
            logins: if self.login_retrying(now) {
                Logins::Retrying
            } else {
                Logins::Allowed
            },
        };
        let mut usable = |p: &mut Pooled, since: Instant| {
            let fresh = now.saturating_duration_since(p.conn.created_at()) < limits.server_lifetime;
            let idle_ok = limits
                .server_idle_timeout
                .is_none_or(|t| now.saturating_duration_since(since) < t);
            let current = p.ticket.generation >= generation
                && !p
                    .ticket
                    .endpoint
                    .as_ref()
                    .is_some_and(|e| self.routed_away(e));
            let ok = fresh && idle_ok && current && still_alive(&mut p.conn);
            if !ok {
                debug!(pool = ?self.key, server = p.conn.id(), fresh, idle_ok, current,
                    "closing an idle server connection instead of lending it");
            }
            ok
        };
        let mut permits = || self.try_permits().ok();
        let mut env = Env {
            capacity,
            now,
            usable: &mut usable,
            permits: &mut permits,
        };
        let mut out = Outcome::default();
        let r = f(&mut lock(&self.queue), &mut env, &mut out);
        out.wake_all();
        close_in_background(std::mem::take(&mut out.doomed));
        (r, out.limit_full)
    }

    /// Serve waiting clients with what the pool has now (after a change that the queue
    /// does not see itself: a pause lifted, a larger pool, a login retry over, a shared
    /// limit with room again).
    pub fn hand_off(&self) {
        self.with_queue(|q, env, out| q.hand_off(env, out));
    }

    /// Lend a server: an idle one, or a new login, in the order clients asked, waiting
    /// up to `query_wait_timeout` (also while the pool is paused, and for the
    /// database's and user's shared limits). During `server_login_retry` after a
    /// failed login, a client gets that failure at once when the pool has no server
    /// that could come back to it.
    pub async fn acquire(
        self: &Arc<Self>,
        client: Option<&ClientInfo>,
    ) -> Result<Lease, PoolError> {
        let started = Instant::now();
        self.used.store(true, Ordering::Relaxed);
        if let Some(c) = client {
            c.set_pool(&self.key.database, &self.key.user);
            c.set_waiting(started);
        }
        let obtained = self.obtain(started).await;
        let (Pooled { conn, ticket }, now) = match obtained {
            // Served at once: no second clock read.
            Ok((p, false)) => (p, started),
            Ok((p, true)) => (p, Instant::now()),
            Err(e) => {
                self.stats.wait_histogram.observe(started.elapsed());
                self.stats.count_error(&e);
                if let Some(c) = client {
                    c.set_state(ClientState::Active);
                }
                return Err(e);
            }
        };
        let waited_for = now.saturating_duration_since(started);
        self.stats.wait_histogram.observe(waited_for);
        let waited = waited_for.as_micros() as u64;
        self.stats
            .total_wait_us
            .fetch_add(waited, Ordering::Relaxed);
        self.stats.max_wait_us.fetch_max(waited, Ordering::Relaxed);
        self.stats
            .server_assignments
            .fetch_add(1, Ordering::Relaxed);
        ticket.set_state_at(ServerState::Active, client.map(|c| c.id), now);
        if let Some(c) = client {
            c.set_state(ClientState::Active);
            c.set_link(Some(ticket.id));
        }
        Ok(Lease {
            conn,
            acquired_at: now,
            ticket,
            lent: LentSlot(Some(self.clone())),
        })
    }

    /// Wait for a grant and turn it into a server: check an idle one that sat past
    /// `server_check_delay`, or log in a new one. `true` with it: that took time (a
    /// wait, a check or a login).
    async fn obtain(&self, started: Instant) -> Result<(Pooled, bool), PoolError> {
        let limits = self.limits();
        let deadline = limits.query_wait_timeout.map(|t| started + t);
        let reserve_at = (limits.reserve_pool_size > 0)
            .then(|| started + limits.reserve_pool_timeout.unwrap_or(Duration::ZERO));
        // Each pass ends with a server, an error, or a server closed that failed its
        // check (bounded by the pool's servers); and all passes by `deadline`.
        for _ in 0..MAX_CHECK_FAILURES {
            let (grant, queued) = self.wait_grant(started, reserve_at, deadline).await?;
            match grant {
                Grant::Server(mut p, since) => {
                    if started.saturating_duration_since(since) >= limits.server_check_delay {
                        if let Some(q) = &limits.server_check_query {
                            if let Err(e) = p.conn.simple_query(q).await {
                                debug!(pool = ?self.key, server = p.conn.id(), error = %e,
                                    "server check failed");
                                self.with_queue(|q, env, out| q.lent_gone(env, out));
                                close_in_background(vec![p]);
                                continue;
                            }
                            return Ok((p, true));
                        }
                    }
                    return Ok((p, queued));
                }
                Grant::Login(permits) => {
                    let mut slot = LoginSlot {
                        pool: self,
                        fill: false,
                        armed: true,
                    };
                    // Boxed: a login's state is large and rare; every acquire's future
                    // would carry it.
                    let p = match Box::pin(self.connect_new(permits)).await {
                        Ok(p) => p,
                        // A routed pool's member is gone or names nobody: wait for the
                        // route to change (the pool holds its clients meanwhile).
                        Err(PoolError::NoServer(why)) => {
                            debug!(pool = ?self.key, %why, "no server to route to: waiting");
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    slot.armed = false;
                    self.with_queue(|q, env, out| q.login_done(true, env, out));
                    return Ok((p, true));
                }
                Grant::LoginFailing => {
                    return Err(match self.login_retry_pending() {
                        Some((e, _)) => PoolError::Server(e),
                        // The retry time passed meanwhile: nothing failed for this client.
                        None => PoolError::WaitTimeout,
                    });
                }
            }
        }
        Err(PoolError::WaitTimeout)
    }

    /// Take a grant at once, or queue and wait for one until `deadline`. While queued,
    /// look again when the reserve pool opens for this client, when a shared limit has
    /// room, and every [`RECHECK`] (a login retry that ran out; a shared limit full of
    /// another pool's idle servers, one of which is then closed).
    async fn wait_grant(
        &self,
        now: Instant,
        reserve_at: Option<Instant>,
        deadline: Option<Instant>,
    ) -> Result<(Grant<Pooled, Permits>, bool), PoolError> {
        let (asked, mut limit_full) =
            self.with_queue_at(now, |q, env, out| q.ask(reserve_at, env, out));
        let id = match asked {
            Ok(grant) => return Ok((grant, false)),
            Err(id) => id,
        };
        let mut ticket = WaitTicket {
            pool: self,
            id,
            done: false,
        };
        let mut db_rx = self.db_limit.as_ref().map(|l| l.changes.subscribe());
        let mut user_rx = self.user_limit.as_ref().map(|l| l.changes.subscribe());
        let mut reserve_pending = reserve_at.filter(|r| Instant::now() < *r);
        // Bounded by `deadline` (or the client's life without one): each pass waits.
        loop {
            if limit_full {
                if let Some(full) = self.full_limit() {
                    full.evict_idle().await;
                }
            }
            tokio::select! {
                grant = std::future::poll_fn(|cx| ticket.poll_grant(cx)) => return Ok((grant, true)),
                _ = sleep_until(reserve_pending) => reserve_pending = None,
                _ = limit_changed(&mut db_rx) => {}
                _ = limit_changed(&mut user_rx) => {}
                _ = tokio::time::sleep(RECHECK) => {}
                _ = sleep_until(deadline) => return Err(PoolError::WaitTimeout),
            }
            limit_full = self.with_queue(|q, env, out| q.hand_off(env, out)).1;
        }
    }

    /// A shared limit of this pool that has no room, if any.
    fn full_limit(&self) -> Option<Arc<ConnLimit>> {
        [&self.db_limit, &self.user_limit]
            .into_iter()
            .flatten()
            .find(|l| l.is_full())
            .cloned()
    }

    /// The shared-limit permits for one more server connection, or the limit that is
    /// full. Takes nothing unless it can take all.
    fn try_permits(&self) -> Result<Permits, Arc<ConnLimit>> {
        let take = |limit: &Option<Arc<ConnLimit>>| match limit {
            None => Ok(None),
            Some(l) => match l.permits.clone().try_acquire_owned() {
                Ok(p) => Ok(Some((p, l.clone()))),
                Err(_) => Err(l.clone()),
            },
        };
        // A permit taken here and dropped because the other limit is full goes back
        // silently (no LimitPermit yet): waking the waiters for it could make two of
        // them hand it back and forth.
        let db = take(&self.db_limit)?;
        let user = take(&self.user_limit)?;
        let wrap = |t: Option<(OwnedSemaphorePermit, Arc<ConnLimit>)>| {
            t.map(|(permit, limit)| LimitPermit {
                permit: Some(permit),
                limit,
            })
        };
        Ok(Permits {
            _db: wrap(db),
            _user: wrap(user),
        })
    }

    /// Log in a new server connection holding `permits`; a failure is remembered for
    /// `server_login_retry`.
    async fn connect_new(&self, permits: Permits) -> Result<Pooled, PoolError> {
        self.stats.server_connects.fetch_add(1, Ordering::Relaxed);
        let connecting = Connecting::new(&self.stats.servers_connecting);
        let mut target = self.target();
        let endpoint = match self.next_endpoint() {
            None => None,
            Some(None) => {
                return Err(PoolError::NoServer(
                    "the route names no member right now".into(),
                ))
            }
            Some(Some(e)) => {
                let t = Arc::make_mut(&mut target);
                t.host = e.host.clone();
                t.port = e.port;
                Some(e)
            }
        };
        let conn = ServerConnection::connect(&target).await;
        drop(connecting);
        match conn {
            Ok(conn) => {
                if self.login_failed.swap(false, Ordering::Relaxed) {
                    lock(&self.login_failure).take();
                }
                if let Some(e) = &endpoint {
                    self.endpoint_up(e);
                }
                debug!(pool = ?self.key, server = conn.id(), member = ?endpoint.as_ref().map(|e| &e.member),
                    "new server connection");
                let ticket = self.register(&conn, permits, endpoint);
                Ok(Pooled {
                    conn: Box::new(conn),
                    ticket,
                })
            }
            Err(e) => {
                if let Some(endpoint) = endpoint.filter(|_| e.is_unreachable()) {
                    // Down, not refusing us: the route will move on; clients wait.
                    self.endpoint_down(&endpoint, &e.to_string());
                    return Err(PoolError::NoServer(format!(
                        "{} is unreachable",
                        endpoint.member
                    )));
                }
                warn!(pool = ?self.key, error = %e, retry_after = ?self.limits().server_login_retry,
                    "server login failed");
                *lock(&self.login_failure) = Some((Instant::now(), replay(&e)));
                self.login_failed.store(true, Ordering::Relaxed);
                Err(e.into())
            }
        }
    }

    /// The last login failure and when logins may be tried again, while
    /// `server_login_retry` has not passed since.
    fn login_retry_pending(&self) -> Option<(ServerError, Instant)> {
        let failure = lock(&self.login_failure);
        let (at, e) = failure.as_ref()?;
        let retry_at = *at + self.limits().server_login_retry;
        (Instant::now() < retry_at).then(|| (replay(e), retry_at))
    }

    /// Whether the last server login failed less than `server_login_retry` ago (no new
    /// login is made until then).
    pub fn login_retry_wait(&self) -> bool {
        self.login_retrying(Instant::now())
    }

    /// [`Pool::login_retry_wait`] at `now`, without copying the failure.
    fn login_retrying(&self, now: Instant) -> bool {
        self.login_failed.load(Ordering::Relaxed)
            && lock(&self.login_failure)
                .as_ref()
                .is_some_and(|(at, _)| now < *at + self.limits().server_login_retry)
    }

    fn register(
        &self,
        conn: &ServerConnection,
        permits: Permits,
        endpoint: Option<Endpoint>,
    ) -> ServerTicket {
        let id = NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation();
        let now = SystemTime::now();
        lock(&self.servers).insert(
            id,
            ServerInfo {
                id,
                addr: conn.addr(),
                local_addr: conn.local_addr(),
                tls: conn.tls().to_string(),
                backend_pid: conn.backend_pid(),
                connect_time: now,
                request_time: now,
                state: ServerState::Active,
                since: Instant::now(),
                link: None,
                generation,
                endpoint: endpoint.clone(),
                severance: conn.severance(),
            },
        );
        ServerTicket {
            id,
            generation,
            endpoint,
            registry: self.servers.clone(),
            _permits: permits,
        }
    }

    /// Give a server back. `reusable`: it is idle (ReadyForQuery 'I') and reset. The
    /// queue hands it to the next waiting client, or keeps it idle. `client` holds it
    /// no more.
    pub async fn release(&self, lease: Lease, reusable: bool, client: Option<&ClientInfo>) {
        if let Some(c) = client {
            c.set_link(None);
        }
        let Lease {
            mut conn,
            ticket,
            mut lent,
            ..
        } = lease;
        lent.disarm();
        let stale = ticket.generation < self.generation()
            || ticket
                .endpoint
                .as_ref()
                .is_some_and(|e| self.routed_away(e));
        // A cancel on its way could hit the next client's query: wait for it (boxed:
        // rare), or close the server if it takes too long.
        let cancels_done =
            !conn.cancels().pending() || Box::pin(conn.cancels().wait_done(CANCEL_WAIT)).await;
        if reusable && cancels_done && !conn.is_broken() && !stale {
            let now = conn.touch();
            ticket.set_state_at(ServerState::Idle, None, now);
            let server = Pooled { conn, ticket };
            self.with_queue_at(now, |q, env, out| q.give_back(server, env, out));
            self.bump_full_limits();
        } else {
            self.with_queue(|q, env, out| q.lent_gone(env, out));
            // Boxed: the connection moves into it, so this future (awaited after every
            // transaction) does not hold one.
            Box::pin(conn.close()).await;
            drop(ticket);
        }
    }

    /// Close every idle connection (RECONNECT, shutdown, a primary that was demoted).
    pub async fn close_idle(&self) {
        let idle = lock(&self.queue).drain_idle();
        for i in idle {
            i.conn.close().await;
        }
        self.hand_off();
    }

    /// A server went idle: a client of another pool waiting for a full shared limit may
    /// evict it.
    fn bump_full_limits(&self) {
        for limit in [&self.db_limit, &self.user_limit].into_iter().flatten() {
            if limit.is_full() {
                limit.bump();
            }
        }
    }

    fn oldest_idle_since(&self) -> Option<Instant> {
        lock(&self.queue).oldest_idle_since()
    }

    /// `min_pool_size` in effect: capped at `pool_size`, and 0 until a client used the
    /// pool.
    fn min_servers(&self) -> usize {
        if self.used.load(Ordering::Relaxed) {
            self.limits().min_pool_size.min(self.limits().pool_size)
        } else {
            0
        }
    }

    /// Whether [`Pool::fill_to_min`] has work: fewer servers than `min_pool_size` in a
    /// used, unpaused pool that is not waiting out `server_login_retry`.
    pub fn needs_fill(&self) -> bool {
        let min = self.min_servers();
        min > 0
            && self.server_count() < min
            && !self.is_paused()
            && !self.filling.load(Ordering::Acquire)
            && !self.login_retry_wait()
    }

    /// The janitor's pass over the idle list: close connections that died (e.g.
    /// `pg_terminate_backend`), outlived `server_lifetime`, predate a `RECONNECT`, or
    /// sat idle past `server_idle_timeout` (oldest first, keeping `min_pool_size`).
    /// Returns how many were closed. Each close is bounded (a second at most).
    pub async fn maintain(&self) -> usize {
        let keep = self.min_servers();
        let mut total = self.server_count();
        let generation = self.generation();
        let limits = self.limits();
        let now = Instant::now();
        let doomed = lock(&self.queue).remove_idle(|p, since| {
            let dead = !still_alive(&mut p.conn);
            let too_old =
                now.saturating_duration_since(p.conn.created_at()) >= limits.server_lifetime;
            let stale = p.ticket.generation < generation
                || p.ticket
                    .endpoint
                    .as_ref()
                    .is_some_and(|e| self.routed_away(e));
            let idle_too_long = total > keep
                && limits
                    .server_idle_timeout
                    .is_some_and(|t| now.saturating_duration_since(since) >= t);
            let gone = dead || too_old || stale || idle_too_long;
            if gone {
                debug!(pool = ?self.key, server = p.conn.id(), dead, too_old, stale,
                    idle_too_long, "janitor closing server connection");
                total = total.saturating_sub(1);
            }
            gone
        });
        let closed = doomed.len();
        for gone in doomed {
            gone.conn.close().await;
            drop(gone.ticket);
        }
        // Also what no event announces: a login retry that ran out, a member skipped
        // long enough.
        self.refresh_held();
        self.hand_off();
        closed
    }

    /// Open idle server connections until the pool has `min_pool_size` (PgBouncer
    /// fills only pools that were used, never past `pool_size` or a full shared limit,
    /// and not while `server_login_retry` runs after a failed login). One fill at a
    /// time per pool; each login is bounded by `server_connect_timeout`.
    pub async fn fill_to_min(&self) {
        if self.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        let _filling = FlagGuard(&self.filling);
        let min = self.min_servers();
        for _ in 0..min {
            if self.server_count() >= min {
                return;
            }
            let (permits, _) = self.with_queue(|q, env, _| q.start_fill(min, env));
            let Some(permits) = permits else {
                return;
            };
            let mut slot = LoginSlot {
                pool: self,
                fill: true,
                armed: true,
            };
            let Ok(server) = self.connect_new(permits).await else {
                return;
            };
            slot.armed = false;
            debug!(pool = ?self.key, server = server.conn.id(), "opened for min_pool_size");
            server.ticket.set_state(ServerState::Idle, None);
            self.with_queue(|q, env, out| q.fill_done(Some(server), env, out));
        }
    }
}
