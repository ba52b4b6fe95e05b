//! The pool map: one [`Pool`] per (database, user), created on first use with the
//! settings in force, the `max_db_connections`/`max_user_connections` limits pools of
//! one database or user share, `PAUSE`/`RESUME` by database, and the janitor that keeps
//! every pool tidy (idle timeouts, `min_pool_size`).

use crate::config::{DatabaseConfig, PoolMode, PoolerConfig, RouteRole, RouteSpec};
use crate::live::LiveConfig;
use crate::pool::{ConnLimit, Endpoint, LimitKind, Pool, PoolKey, PoolLimits};
use crate::server::{ServerCredential, ServerTarget};
use crate::topology::{ClusterView, Receipt, Topology};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info};

/// Clients, servers and pools paused by `PAUSE`.
#[derive(Debug, Default)]
struct PauseState {
    all: bool,
    databases: BTreeSet<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain maps that are consistent between statements: a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type PoolMap = Arc<Mutex<HashMap<PoolKey, Arc<Pool>>>>;

/// How often the janitor looks at every pool (PgBouncer's janitor runs 3 times a
/// second).
const JANITOR_PERIOD: Duration = Duration::from_millis(300);

/// How long [`Pools::stop_janitor`] waits for the janitor to finish its step.
const JANITOR_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// The background janitor's lifecycle: started with the first pool, stopped for good at
/// shutdown.
enum Janitor {
    NotStarted,
    Running(JoinHandle<()>),
    Stopped,
}

/// The pools, by (database, user).
pub struct Pools {
    live: Arc<LiveConfig>,
    pools: PoolMap,
    /// `max_db_connections` and `max_user_connections`, by database or user name.
    conn_limits: Mutex<HashMap<(LimitKind, String), Arc<ConnLimit>>>,
    paused: Mutex<PauseState>,
    janitor: Mutex<Janitor>,
    janitor_stop: watch::Sender<bool>,
    /// The console's `SHUTDOWN`: the janitor stops too.
    shutdown: watch::Receiver<bool>,
    /// The clusters routed databases follow (`None`: no store configured).
    topology: Option<Arc<Topology>>,
}

impl Pools {
    /// No pools yet; they take their settings from `live` and their janitor stops when
    /// `shutdown` turns true. Routed databases follow their cluster in `topology`.
    pub fn new(
        live: Arc<LiveConfig>,
        shutdown: watch::Receiver<bool>,
        topology: Option<Arc<Topology>>,
    ) -> Pools {
        Pools {
            topology,
            live,
            pools: Arc::new(Mutex::new(HashMap::new())),
            conn_limits: Mutex::new(HashMap::new()),
            paused: Mutex::new(PauseState::default()),
            janitor: Mutex::new(Janitor::NotStarted),
            janitor_stop: watch::channel(false).0,
            shutdown,
        }
    }

    /// `PAUSE [db]`: new transactions on those pools wait until `RESUME`. Returns the
    /// pools now paused (to wait for their running transactions).
    pub fn pause(&self, database: Option<&str>) -> Vec<Arc<Pool>> {
        let mut paused = lock(&self.paused);
        match database {
            None => paused.all = true,
            Some(db) => {
                paused.databases.insert(db.to_string());
            }
        }
        let pools: Vec<Arc<Pool>> = self
            .pools()
            .into_iter()
            .filter(|p| database.is_none_or(|db| p.key.database == db))
            .collect();
        for p in &pools {
            p.set_paused(true);
        }
        pools
    }

    /// `RESUME [db]`; `false` if it was not paused.
    pub fn resume(&self, database: Option<&str>) -> bool {
        let mut paused = lock(&self.paused);
        let was = match database {
            None => std::mem::take(&mut paused.all),
            Some(db) => paused.databases.remove(db),
        };
        for p in self.pools() {
            p.set_paused(paused.all || paused.databases.contains(&p.key.database));
        }
        was
    }

    /// Whether everything is paused (`PAUSE` without a database).
    pub fn is_paused_all(&self) -> bool {
        lock(&self.paused).all
    }

    /// Whether `database` was paused by name (`SHOW DATABASES`' `paused`).
    pub fn is_database_paused(&self, database: &str) -> bool {
        lock(&self.paused).databases.contains(database)
    }

    /// The configuration in force was reloaded: existing pools take the new sizes,
    /// limits and server settings and, when their server moved, reconnect.
    pub fn reconfigure(&self) {
        let config = self.live.config();
        for pool in self.pools() {
            let Some(mut db) = config.resolve_database(&pool.key.database) else {
                continue;
            };
            let auth_user = db.auth_user.as_ref().or(config.settings.auth_user.as_ref());
            if auth_user == Some(&pool.key.user) {
                db = auth_lookup_database(&db);
            }
            let credential = pool.target().credential.clone();
            let (target, limits) = self.pool_settings(&config, &pool.key, &db, credential);
            pool.reconfigure(target, limits);
        }
        self.reload_conn_limits(&config);
    }

    /// New `max_db_connections`/`max_user_connections` for the limits pools already
    /// count against. (A limit set where there was none applies to new pools only.)
    fn reload_conn_limits(&self, config: &PoolerConfig) {
        let s = &config.settings;
        let limits: Vec<_> = lock(&self.conn_limits)
            .iter()
            .map(|((kind, name), limit)| (*kind, name.clone(), limit.clone()))
            .collect();
        for (kind, name, limit) in limits {
            let max = match kind {
                LimitKind::Database => match config.resolve_database(&name) {
                    Some(db) => db.max_db_connections.unwrap_or(s.max_db_connections),
                    None => continue,
                },
                LimitKind::User => config
                    .users
                    .get(&name)
                    .and_then(|u| u.max_user_connections)
                    .unwrap_or(s.max_user_connections),
            };
            // Unlimited now: as many permits as the semaphore takes.
            let max = max.map_or(Semaphore::MAX_PERMITS / 2, |n| n as usize);
            if max != limit.max() {
                info!(limit = ?kind, %name, max, "connection limit changed");
                limit.set_max(max);
            }
        }
    }

    /// The server target and limits of `key`'s pool under `config`.
    fn pool_settings(
        &self,
        config: &PoolerConfig,
        key: &PoolKey,
        db: &DatabaseConfig,
        credential: ServerCredential,
    ) -> (ServerTarget, PoolLimits) {
        let s = &config.settings;
        let target = ServerTarget {
            // No host: the Unix socket in unix_socket_dir, as PgBouncer does.
            host: db.host.first().cloned().unwrap_or_else(|| {
                s.unix_socket_dir
                    .as_deref()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("/tmp"))
                    .display()
                    .to_string()
            }),
            port: db.port,
            database: db.dbname.clone().unwrap_or_else(|| key.database.clone()),
            user: db.user.clone().unwrap_or_else(|| key.user.clone()),
            credential,
            startup_params: startup_params(db),
            connect_timeout: s.server_connect_timeout,
            tls: self.live.tls().server,
        };
        let user = config.users.get(&key.user);
        let pool_size = user
            .and_then(|u| u.pool_size)
            .or(db.pool_size)
            .unwrap_or(s.default_pool_size) as usize;
        let limits = PoolLimits {
            pool_size,
            reserve_pool_size: user
                .and_then(|u| u.reserve_pool_size)
                .or(db.reserve_pool_size)
                .unwrap_or(s.reserve_pool_size) as usize,
            reserve_pool_timeout: s.reserve_pool_timeout,
            query_wait_timeout: db.query_wait_timeout.unwrap_or(s.query_wait_timeout),
            server_lifetime: db.server_lifetime.unwrap_or(s.server_lifetime),
            server_idle_timeout: s.server_idle_timeout,
            server_check_delay: s.server_check_delay,
            server_check_query: s.server_check_query.clone(),
            min_pool_size: db.min_pool_size.unwrap_or(s.min_pool_size) as usize,
            server_login_retry: s.server_login_retry,
        };
        (target, limits)
    }

    /// The pool for `key`, created on first use with the database's settings.
    pub fn pool(
        &self,
        key: &PoolKey,
        db: &DatabaseConfig,
        credential: ServerCredential,
    ) -> Arc<Pool> {
        let mut pools = lock(&self.pools);
        if let Some(p) = pools.get(key) {
            return p.clone();
        }
        let config = self.live.config();
        let s = &config.settings;
        let (target, limits) = self.pool_settings(&config, key, db, credential);
        let user = config.users.get(&key.user);
        // `[databases]`/`[users]` override the global limit; 0 there means unlimited.
        let max_db = db.max_db_connections.unwrap_or(s.max_db_connections);
        let max_user = user
            .and_then(|u| u.max_user_connections)
            .unwrap_or(s.max_user_connections);
        let db_limit = max_db.map(|n| self.conn_limit(LimitKind::Database, &key.database, n));
        let user_limit = max_user.map(|n| self.conn_limit(LimitKind::User, &key.user, n));
        info!(database = %key.database, user = %key.user, pool_size = limits.pool_size,
            min_pool_size = limits.min_pool_size, max_db_connections = ?max_db,
            max_user_connections = ?max_user, "new pool");
        let pool = Pool::with_shared_limits(key.clone(), target, limits, db_limit, user_limit);
        {
            let paused = lock(&self.paused);
            pool.set_paused(paused.all || paused.databases.contains(&key.database));
        }
        let default_scope = config.cluster.as_ref().and_then(|c| c.scope.as_deref());
        let route = db.route(default_scope).zip(self.topology.as_ref());
        let health = db.health();
        // Held before anyone can see it, until the first view or check says where to go.
        if let Some((spec, _)) = &route {
            pool.route_to(Vec::new(), spec.balance, false);
        }
        if let Some(spec) = &health {
            pool.route_to(Vec::new(), spec.balance, false);
        }
        pools.insert(key.clone(), pool.clone());
        drop(pools);
        self.start_janitor();
        if let Some((spec, topology)) = route {
            let (view, receipt) = topology.follow(&spec.scope);
            // A session-mode client keeps its server between transactions: waiting for
            // it to give it back would only delay a switchover.
            let waits_for_transactions = self.pool_mode(db, &key.user) != PoolMode::Session;
            tokio::spawn(follow_route(
                Arc::downgrade(&pool),
                spec,
                waits_for_transactions,
                view,
                receipt,
                self.shutdown.clone(),
            ));
        }
        if let Some(spec) = health {
            tokio::spawn(crate::health::follow_health(
                Arc::downgrade(&pool),
                spec,
                self.shutdown.clone(),
            ));
        }
        pool
    }

    /// The shared limit for a database or user, created with `max` on first use (a
    /// changed maximum takes effect after a restart, like pool sizes).
    fn conn_limit(&self, kind: LimitKind, name: &str, max: u32) -> Arc<ConnLimit> {
        lock(&self.conn_limits)
            .entry((kind, name.to_string()))
            .or_insert_with(|| ConnLimit::new(kind, name, max as usize))
            .clone()
    }

    /// `max_db_connections` of `database` as the pools use it (`None`: unlimited or no
    /// pool yet).
    pub fn db_connection_limit(&self, database: &str) -> Option<Arc<ConnLimit>> {
        lock(&self.conn_limits)
            .get(&(LimitKind::Database, database.to_string()))
            .cloned()
    }

    /// `max_user_connections` of `user` as the pools use it (`None`: unlimited or no
    /// pool yet).
    pub fn user_connection_limit(&self, user: &str) -> Option<Arc<ConnLimit>> {
        lock(&self.conn_limits)
            .get(&(LimitKind::User, user.to_string()))
            .cloned()
    }

    /// Start the background janitor (once, inside a Tokio runtime, unless stopped).
    fn start_janitor(&self) {
        let mut janitor = lock(&self.janitor);
        if !matches!(*janitor, Janitor::NotStarted) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            debug!("no Tokio runtime: the pool janitor does not run");
            return;
        };
        let task = handle.spawn(janitor_loop(
            Arc::downgrade(&self.pools),
            self.janitor_stop.subscribe(),
            self.shutdown.clone(),
        ));
        *janitor = Janitor::Running(task);
    }

    /// Stop the janitor for good (shutdown): no more `min_pool_size` fills or idle
    /// checks. Waits up to two seconds for its current step, then aborts it.
    pub async fn stop_janitor(&self) {
        self.janitor_stop.send_replace(true);
        let task = match std::mem::replace(&mut *lock(&self.janitor), Janitor::Stopped) {
            Janitor::Running(task) => task,
            _ => return,
        };
        let abort = task.abort_handle();
        if tokio::time::timeout(JANITOR_STOP_TIMEOUT, task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }

    /// Ask the janitor to stop without waiting for it (it ends at its next step).
    pub fn signal_janitor_stop(&self) {
        self.janitor_stop.send_replace(true);
        *lock(&self.janitor) = Janitor::Stopped;
    }

    /// The pool mode for a client of `db` logged in as `user`.
    pub fn pool_mode(&self, db: &DatabaseConfig, user: &str) -> PoolMode {
        let config = self.live.config();
        config
            .users
            .get(user)
            .and_then(|u| u.pool_mode)
            .or(db.pool_mode)
            .unwrap_or(config.settings.pool_mode)
    }

    pub fn pools(&self) -> Vec<Arc<Pool>> {
        lock(&self.pools).values().cloned().collect()
    }
}

impl Drop for Pools {
    fn drop(&mut self) {
        self.janitor_stop.send_replace(true);
        if let Janitor::Running(task) =
            std::mem::replace(&mut *lock(&self.janitor), Janitor::Stopped)
        {
            task.abort();
        }
    }
}

/// The background janitor: every [`JANITOR_PERIOD`], close idle server connections
/// that died or timed out ([`Pool::maintain`]) and start `min_pool_size` fills
/// ([`Pool::fill_to_min`], one task per pool at a time). Ends when `stop` or the console's
/// `SHUTDOWN` turns true, or when the pool map is gone; running fills are aborted then.
async fn janitor_loop(
    pools: Weak<Mutex<HashMap<PoolKey, Arc<Pool>>>>,
    mut stop: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(JANITOR_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fills = JoinSet::new();
    'run: loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
            _ = shutdown.wait_for(|s| *s) => break,
        }
        let Some(map) = pools.upgrade() else { break };
        let list: Vec<Arc<Pool>> = lock(&map).values().cloned().collect();
        drop(map);
        while fills.try_join_next().is_some() {}
        for pool in list {
            tokio::select! {
                _ = pool.maintain() => {}
                _ = stop.wait_for(|s| *s) => break 'run,
                _ = shutdown.wait_for(|s| *s) => break 'run,
            }
            if pool.needs_fill() {
                fills.spawn(async move { pool.fill_to_min().await });
            }
        }
    }
    fills.shutdown().await;
    debug!("pool janitor stopped");
}

/// Keep a routed pool on the members its route names, as the cluster's view changes,
/// until the pool or the pooler is gone. When the primary changes (or goes), a primary
/// route cuts its lent servers on the old one: a transaction there must not go on.
async fn follow_route(
    pool: Weak<Pool>,
    spec: RouteSpec,
    waits_for_transactions: bool,
    mut view: watch::Receiver<Arc<ClusterView>>,
    receipt: Receipt,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_primary: Option<Endpoint> = None;
    let pool_ref = pool;
    loop {
        let current = view.borrow_and_update().clone();
        let Some(pool) = pool_ref.upgrade() else {
            break;
        };
        let endpoints: Vec<Endpoint> = current
            .route_members(&spec)
            .into_iter()
            .map(endpoint)
            .collect();
        let primary = current.primary().map(endpoint);
        let sever = spec.role == RouteRole::Primary && primary != last_primary;
        if endpoints.is_empty() {
            let why = current
                .problem
                .as_deref()
                .unwrap_or("no member to route to");
            info!(pool = ?pool.key, scope = %spec.scope, role = %spec.role, %why,
                "clients wait for a server");
        }
        pool.route_to(endpoints, spec.balance, sever);
        // A switchover from the leader is pending: hold new transactions, let running
        // ones finish, and say when none is left (the leader waits for that).
        let draining = spec.role == RouteRole::Primary && current.switchover.is_some();
        pool.set_draining(draining);
        let mut drained = !draining || !waits_for_transactions || pool.active() == 0;
        receipt.applied(&current, drained);
        last_primary = primary;
        drop(pool);
        loop {
            tokio::select! {
                changed = view.changed() => if changed.is_err() { return } else { break },
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(DRAIN_CHECK), if !drained => {
                    let Some(pool) = pool_ref.upgrade() else { return };
                    drained = pool.active() == 0;
                    if drained {
                        receipt.applied(&current, true);
                    }
                }
            }
        }
    }
}

/// How often a draining route looks whether its last transaction on the primary ended.
const DRAIN_CHECK: Duration = Duration::from_millis(20);

fn endpoint(m: &crate::topology::Member) -> Endpoint {
    Endpoint {
        member: m.name.clone(),
        host: m.host.clone(),
        port: m.port,
    }
}

/// The database entry `auth_query` logs in with as `auth_user`: `auth_dbname` if set,
/// and never the entry's forced `user`/`password`.
pub fn auth_lookup_database(db: &DatabaseConfig) -> DatabaseConfig {
    let mut lookup = db.clone();
    lookup.dbname = db.auth_dbname.clone().or_else(|| db.dbname.clone());
    lookup.user = None;
    lookup.password = None;
    lookup
}

/// Session parameters a `[databases]` entry asks the server for.
fn startup_params(db: &DatabaseConfig) -> Vec<(String, String)> {
    let mut params = Vec::new();
    if let Some(v) = &db.client_encoding {
        params.push(("client_encoding".to_string(), v.clone()));
    }
    if let Some(v) = &db.datestyle {
        params.push(("DateStyle".to_string(), v.clone()));
    }
    if let Some(v) = &db.timezone {
        params.push(("TimeZone".to_string(), v.clone()));
    }
    if let Some(v) = &db.application_name {
        params.push(("application_name".to_string(), v.clone()));
    }
    params
}
