//! The pooler's shared state: configuration, secrets, pools, the cancel-key registry and
//! the client registry the admin console lists (and `KILL`s); plus the listener that
//! hands each client to a session.
//!

use crate::cancel::CancelRegistry;
use crate::cancel::{CancelSlot, CancelTarget};
use crate::client::{ClientInfo, ClientRegistry};
use crate::config::{AuthType, DatabaseConfig, HbaRules, PoolMode, PoolerConfig, Userlist};
use crate::live::LiveConfig;
use crate::net::{Listener, Peer};
use crate::park::{self as park, ParkedClient, Parker};
use crate::pool::{ConnLimit, LimitKind, Pool, PoolKey, PoolLimits};
use crate::server::{CancelInFlight, ServerCredential, ServerTarget};
use crate::session::{self, ParkedSession};
use crate::tls::TlsContexts;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

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

fn replace<T>(slot: &RwLock<T>, value: T) {
    match slot.write() {
        Ok(mut g) => *g = value,
        Err(p) => *p.into_inner() = value,
    }
}

type PoolMap = Arc<Mutex<HashMap<PoolKey, Arc<Pool>>>>;

/// How often the janitor looks at every pool (PgBouncer's janitor runs 3 times a
/// second).
const JANITOR_PERIOD: Duration = Duration::from_millis(300);

/// How long [`Runtime::stop_janitor`] waits for the janitor to finish its step.
const JANITOR_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// The background janitor's lifecycle: started with the first pool, stopped for good at
/// shutdown.
enum Janitor {
    NotStarted,
    Running(JoinHandle<()>),
    Stopped,
}

/// Everything the sessions share.
pub struct Runtime {
    live: Arc<LiveConfig>,
    pools: PoolMap,
    /// `max_db_connections` and `max_user_connections`, by database or user name.
    conn_limits: Mutex<HashMap<(LimitKind, String), Arc<ConnLimit>>>,
    janitor: Mutex<Janitor>,
    janitor_stop: watch::Sender<bool>,
    /// Idle clients without a task; started by the first listener.
    parker: OnceLock<(Arc<Parker>, JoinHandle<()>)>,
    cancels: CancelRegistry,
    clients: ClientRegistry,
    paused: Mutex<PauseState>,
    shutdown: watch::Sender<bool>,
    config_path: RwLock<Option<PathBuf>>,
    started: SystemTime,
}

impl Runtime {
    pub fn new(
        config: PoolerConfig,
        userlist: Userlist,
        hba: Option<HbaRules>,
        tls: TlsContexts,
    ) -> Arc<Runtime> {
        Arc::new(Runtime {
            live: Arc::new(LiveConfig::new(config, userlist, hba, tls)),
            pools: Arc::new(Mutex::new(HashMap::new())),
            conn_limits: Mutex::new(HashMap::new()),
            janitor: Mutex::new(Janitor::NotStarted),
            janitor_stop: watch::channel(false).0,
            parker: OnceLock::new(),
            cancels: CancelRegistry::default(),
            clients: ClientRegistry::default(),
            paused: Mutex::new(PauseState::default()),
            shutdown: watch::channel(false).0,
            config_path: RwLock::new(None),
            started: SystemTime::now(),
        })
    }

    /// When this runtime was created.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// Replace only the configuration (the console's `SET`).
    pub fn set_config(&self, config: PoolerConfig) {
        self.live.set_config(config);
    }

    /// The file `RELOAD` re-reads.
    pub fn set_config_path(&self, path: &Path) {
        replace(&self.config_path, Some(path.to_path_buf()));
    }

    pub fn config_path(&self) -> Option<PathBuf> {
        match self.config_path.read() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Ask the service to stop (the console's `SHUTDOWN`): listeners stop accepting.
    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Turns true when a shutdown was requested.
    pub fn shutdown_requested(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// A newly accepted client, listed until [`Runtime::remove_client`].
    pub fn add_client(&self, peer: Peer, local_addr: Option<SocketAddr>) -> Arc<ClientInfo> {
        self.clients.add(peer, local_addr)
    }

    /// The parker for idle clients, once a listener has started it.
    pub fn parker(&self) -> Option<&Parker> {
        self.parker.get().map(|(p, _)| &**p)
    }

    /// Start parking idle clients (once; inside a Tokio runtime). Without it every
    /// client keeps its task.
    fn start_parker(self: &Arc<Self>) {
        if self.parker.get().is_some() {
            return;
        }
        match Parker::new() {
            Ok(parker) => {
                let parker = Arc::new(parker);
                let task = tokio::spawn(park::run(parker.clone(), Arc::downgrade(self)));
                if let Err((_, task)) = self.parker.set((parker, task)) {
                    task.abort();
                }
            }
            Err(e) => warn!(error = %e, "cannot park idle clients: each keeps its task"),
        }
    }

    /// End a client's session (`KILL`): its connection and any server it holds are
    /// closed, whether it runs or is parked.
    pub fn kill_client(&self, client: &ClientInfo) {
        client.kill();
        if let Some(parked) = self.parker().and_then(|p| p.unpark(client.id)) {
            self.remove_client(client.id);
            parked.session.end(self);
        }
    }

    /// Forget a client that left; also its cancel key.
    pub fn remove_client(&self, id: u64) {
        let removed = self.clients.remove(id);
        if let Some((pid, key)) = removed.and_then(|c| c.view().cancel_key) {
            self.unregister_client(pid, key);
        }
    }

    /// Every connected client, in connection order.
    pub fn clients(&self) -> Vec<Arc<ClientInfo>> {
        self.clients.list()
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

    /// Swap in re-read files (RELOAD, SIGHUP). Sessions pick the new settings up at
    /// their next decision; existing pools are resized and, when their server moved,
    /// reconnected.
    pub fn reload(
        &self,
        config: PoolerConfig,
        userlist: Userlist,
        hba: Option<HbaRules>,
        tls: TlsContexts,
    ) {
        self.live.replace(config, userlist, hba, tls);
        // Existing pools take the new sizes, limits and server settings.
        let config = self.config();
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

    /// The configuration in force.
    pub fn live(&self) -> &Arc<LiveConfig> {
        &self.live
    }

    /// TLS toward clients and servers, as last loaded.
    pub fn tls(&self) -> TlsContexts {
        self.live.tls()
    }

    pub fn config(&self) -> Arc<PoolerConfig> {
        self.live.config()
    }

    pub fn userlist(&self) -> Arc<Userlist> {
        self.live.userlist()
    }

    /// The method `auth_hba_file` prescribes for a TCP client (see
    /// [`LiveConfig::hba_method`]).
    pub fn hba_method(
        &self,
        peer: Peer,
        tls: bool,
        database: &str,
        user: &str,
    ) -> Option<AuthType> {
        self.live.hba_method(peer, tls, database, user)
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
            tls: self.tls().server,
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
        let config = self.config();
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
        pools.insert(key.clone(), pool.clone());
        drop(pools);
        self.start_janitor();
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
            self.shutdown.subscribe(),
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
    fn signal_janitor_stop(&self) {
        self.janitor_stop.send_replace(true);
        *lock(&self.janitor) = Janitor::Stopped;
    }

    /// The pool mode for a client of `db` logged in as `user`.
    pub fn pool_mode(&self, db: &DatabaseConfig, user: &str) -> PoolMode {
        let config = self.config();
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

    /// A fresh (process id, secret key) for a client's BackendKeyData (see
    /// [`CancelRegistry::register`]).
    pub fn register_client(&self) -> (i32, u32, CancelSlot) {
        self.cancels.register()
    }

    pub fn unregister_client(&self, pid: i32, key: u32) {
        self.cancels.unregister(pid, key);
    }

    /// Where a CancelRequest for (pid, key) should go (see [`CancelRegistry::target`]).
    pub fn cancel_target(&self, pid: i32, key: u32) -> Option<(CancelTarget, CancelInFlight)> {
        self.cancels.target(pid, key)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some((_, task)) = self.parker.get() {
            task.abort();
        }
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
/// `SHUTDOWN` turns true, or when the runtime is gone; running fills are aborted then.
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

/// The database entry `auth_query` logs in with as `auth_user`: `auth_dbname` if set,
/// and never the entry's forced `user`/`password`.
pub(crate) fn auth_lookup_database(db: &DatabaseConfig) -> DatabaseConfig {
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

/// Accept clients until `shutdown` turns true; at most `max_client_conn` at once (the
/// one over the limit is told so and closed, as PgBouncer does).
pub async fn serve(listener: Listener, runtime: Arc<Runtime>, mut shutdown: watch::Receiver<bool>) {
    runtime.start_parker();
    let max = runtime.config().settings.max_client_conn as usize;
    let slots = Arc::new(Semaphore::new(max));
    let mut console_shutdown = runtime.shutdown_requested();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
            _ = console_shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer, local) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let runtime = runtime.clone();
        match ClientSlot::take(&slots) {
            Some(slot) => {
                let client = runtime.add_client(peer, local);
                let session = session::run(stream, client.clone(), runtime.clone());
                spawn_client(runtime, client, slot, session);
            }
            None => {
                tokio::spawn(session::refuse(
                    stream,
                    peer,
                    "no more connections allowed (max_client_conn)",
                ));
            }
        }
    }
    // Shutting down: no more min_pool_size fills or janitor passes.
    runtime.signal_janitor_stop();
}

/// A client's place under `max_client_conn`, given back when dropped. (A pointer:
/// tokio's OwnedSemaphorePermit takes twice that in every parked client.)
pub struct ClientSlot(Arc<Semaphore>);

impl ClientSlot {
    fn take(slots: &Arc<Semaphore>) -> Option<ClientSlot> {
        let permit = slots.try_acquire().ok()?;
        permit.forget();
        Some(ClientSlot(slots.clone()))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}

/// Run a client's session in its own task, as [`crate::client::CURRENT_CLIENT`], until it leaves, is
/// killed or parks.
fn spawn_client(
    runtime: Arc<Runtime>,
    client: Arc<ClientInfo>,
    slot: ClientSlot,
    session: impl Future<Output = Option<ParkedSession>> + Send + 'static,
) {
    tokio::spawn(async move {
        let peer = client.peer;
        let session = crate::client::CURRENT_CLIENT.scope(client.clone(), session);
        // KILL drops the session: its sockets close, a held server is closed and its
        // slot freed.
        let parked = tokio::select! {
            parked = session => parked,
            _ = client.killed_notified() => {
                debug!(%peer, "client killed");
                None
            }
        };
        if let Some(session) = parked {
            let Some(parker) = runtime.parker() else {
                // Sessions park only when there is a parker.
                runtime.remove_client(client.id);
                session.end(&runtime);
                return;
            };
            let id = client.id;
            drop(client);
            let parked = ParkedClient { session, slot };
            match parker.park(parked) {
                Ok(()) => {
                    // A KILL that came while parking may have missed it in the parker.
                    if let Some(killed) = parker.unpark_if(id, |c| c.session.client().is_killed()) {
                        runtime.remove_client(id);
                        killed.session.end(&runtime);
                    }
                }
                Err(parked) => resume_client(&runtime, parked),
            }
            return;
        }
        runtime.remove_client(client.id);
        drop(slot);
    });
}

/// Serve a parked client again, in a new task.
pub(crate) fn resume_client(runtime: &Arc<Runtime>, parked: ParkedClient) {
    let ParkedClient { session, slot } = parked;
    let client = session.client().clone();
    tracing::trace!(peer = %client.peer, "resuming a parked client");
    let session = session::resume(session, runtime.clone());
    spawn_client(runtime.clone(), client, slot, session);
}

/// The address a listener should bind for the `[pgbouncer]` settings.
pub fn listen_addrs(config: &PoolerConfig) -> Vec<SocketAddr> {
    let port = config.settings.listen_port;
    config
        .settings
        .listen_addr
        .iter()
        .filter_map(|a| match a.as_str() {
            "*" => Some(SocketAddr::from(([0, 0, 0, 0], port))),
            a => a
                .parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, port)),
        })
        .collect()
}
