//! The state the pooler's parts share: what sessions share ([`SessionContext`]: the
//! configuration in force, the pool map, the cancel-key registry), the client registry
//! the admin console lists (and `KILL`s), the parker, shutdown, and reloading the
//! configuration files. The listener runs the clients on it; the console and metrics
//! read it.

use crate::cancel::CancelRegistry;
use crate::client::{ClientInfo, ClientRegistry};
use crate::config::{DatabaseConfig, HbaRules, PoolMode, PoolerConfig, Userlist};
use crate::live::{Files, LiveConfig, LoadError};
use crate::net::Peer;
use crate::park::{Parkable, Parker};
use crate::pool::{ConnLimit, Pool};
use crate::pools::Pools;
use crate::session::{ParkedSession, SessionContext};
use crate::tls::TlsContexts;
use crate::topology::Topology;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::SystemTime;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{info, warn};

fn replace<T>(slot: &RwLock<T>, value: T) {
    match slot.write() {
        Ok(mut g) => *g = value,
        Err(p) => *p.into_inner() = value,
    }
}

/// The pooler's parts, composed.
pub struct Runtime {
    /// What sessions share (and the console and metrics read).
    ctx: Arc<SessionContext>,
    /// Idle clients without a task; started by the first listener.
    parker: OnceLock<(Arc<Parker<ParkedClient>>, JoinHandle<()>)>,
    clients: ClientRegistry,
    shutdown: watch::Sender<bool>,
    config_path: RwLock<Option<PathBuf>>,
    started: SystemTime,
}

impl Runtime {
    /// A runtime whose routed databases follow the etcd the configuration names.
    pub fn new(
        config: PoolerConfig,
        userlist: Userlist,
        hba: Option<HbaRules>,
        tls: TlsContexts,
    ) -> Arc<Runtime> {
        let topology = config
            .cluster
            .as_ref()
            .map(|store| Arc::new(Topology::etcd(store)));
        Runtime::with_topology(config, userlist, hba, tls, topology)
    }

    /// A runtime whose routed databases follow `topology` (the demo's in-process store).
    pub fn with_topology(
        config: PoolerConfig,
        userlist: Userlist,
        hba: Option<HbaRules>,
        tls: TlsContexts,
        topology: Option<Arc<Topology>>,
    ) -> Arc<Runtime> {
        let live = Arc::new(LiveConfig::new(config, userlist, hba, tls));
        let shutdown = watch::channel(false).0;
        let ctx = SessionContext {
            pools: Arc::new(Pools::new(live.clone(), shutdown.subscribe(), topology)),
            live,
            cancels: CancelRegistry::default(),
            ticks: OnceLock::new(),
        };
        Arc::new(Runtime {
            ctx: Arc::new(ctx),
            parker: OnceLock::new(),
            clients: ClientRegistry::default(),
            shutdown,
            config_path: RwLock::new(None),
            started: SystemTime::now(),
        })
    }

    /// What sessions share: the configuration in force, the pool map, the cancel keys.
    pub fn session_context(&self) -> &Arc<SessionContext> {
        &self.ctx
    }

    /// When this runtime was created.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// Replace only the configuration (the console's `SET`).
    pub fn set_config(&self, config: PoolerConfig) {
        self.ctx.live.set_config(config);
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
    pub fn parker(&self) -> Option<&Parker<ParkedClient>> {
        self.parker.get().map(|(p, _)| &**p)
    }

    /// Park idle clients with `parker` from now on (whose task is `task`). Only the
    /// first parker counts: a later one's task is stopped.
    pub(crate) fn install_parker(&self, parker: Arc<Parker<ParkedClient>>, task: JoinHandle<()>) {
        let ticks = parker.ticks().clone();
        match self.parker.set((parker, task)) {
            // Sessions park from now on.
            Ok(()) => _ = self.ctx.ticks.set(ticks),
            Err((_, task)) => task.abort(),
        }
    }

    /// Whether a parker was installed.
    pub(crate) fn has_parker(&self) -> bool {
        self.parker.get().is_some()
    }

    /// End a client's session (`KILL`): its connection and any server it holds are
    /// closed, whether it runs or is parked.
    pub fn kill_client(&self, client: &ClientInfo) {
        client.kill();
        if let Some(parked) = self.parker().and_then(|p| p.unpark(client.id)) {
            self.remove_client(client.id);
            parked.session.end(&self.ctx);
        }
    }

    /// Forget a client that left; also its cancel key.
    pub fn remove_client(&self, id: u64) {
        let removed = self.clients.remove(id);
        if let Some((pid, key)) = removed.and_then(|c| c.view().cancel_key) {
            self.ctx.cancels.unregister(pid, key);
        }
    }

    /// Every connected client, in connection order.
    pub fn clients(&self) -> Vec<Arc<ClientInfo>> {
        self.clients.list()
    }

    /// `PAUSE [db]`: new transactions on those pools wait until `RESUME`. Returns the
    /// pools now paused (to wait for their running transactions).
    pub fn pause(&self, database: Option<&str>) -> Vec<Arc<Pool>> {
        self.ctx.pools.pause(database)
    }

    /// `RESUME [db]`; `false` if it was not paused.
    pub fn resume(&self, database: Option<&str>) -> bool {
        self.ctx.pools.resume(database)
    }

    /// Whether everything is paused (`PAUSE` without a database).
    pub fn is_paused_all(&self) -> bool {
        self.ctx.pools.is_paused_all()
    }

    /// Whether `database` was paused by name (`SHOW DATABASES`' `paused`).
    pub fn is_database_paused(&self, database: &str) -> bool {
        self.ctx.pools.is_database_paused(database)
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
        self.ctx.live.replace(config, userlist, hba, tls);
        self.ctx.pools.reconfigure();
    }

    /// Re-read `path` (with its auth_file and auth_hba_file) and swap it in (SIGHUP, the
    /// console's `RELOAD`); a file that does not load leaves the running configuration
    /// alone.
    pub fn reload_from(&self, path: &Path) -> Result<(), LoadError> {
        let files = Files::load(path)?;
        for change in crate::config::diff(&self.config(), &files.config) {
            if change.changeable {
                info!(key = %change.key, "setting changed");
            } else {
                warn!(key = %change.key, "setting needs a restart to take effect");
            }
        }
        self.set_config_path(path);
        self.reload(files.config, files.userlist, files.hba, files.tls);
        Ok(())
    }

    /// TLS toward clients and servers, as last loaded.
    pub fn tls(&self) -> TlsContexts {
        self.ctx.live.tls()
    }

    pub fn config(&self) -> Arc<PoolerConfig> {
        self.ctx.live.config()
    }

    pub fn userlist(&self) -> Arc<Userlist> {
        self.ctx.live.userlist()
    }

    /// `max_db_connections` of `database` as the pools use it (`None`: unlimited or no
    /// pool yet).
    pub fn db_connection_limit(&self, database: &str) -> Option<Arc<ConnLimit>> {
        self.ctx.pools.db_connection_limit(database)
    }

    /// `max_user_connections` of `user` as the pools use it (`None`: unlimited or no
    /// pool yet).
    pub fn user_connection_limit(&self, user: &str) -> Option<Arc<ConnLimit>> {
        self.ctx.pools.user_connection_limit(user)
    }

    /// Stop the janitor for good (see [`Pools::stop_janitor`]).
    pub async fn stop_janitor(&self) {
        self.ctx.pools.stop_janitor().await
    }

    /// The pool mode for a client of `db` logged in as `user`.
    pub fn pool_mode(&self, db: &DatabaseConfig, user: &str) -> PoolMode {
        self.ctx.pools.pool_mode(db, user)
    }

    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.ctx.pools.pools()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some((_, task)) = self.parker.get() {
            task.abort();
        }
    }
}

/// A client's place under `max_client_conn`, given back when dropped. (A pointer:
/// tokio's OwnedSemaphorePermit takes twice that in every parked client.)
pub struct ClientSlot(Arc<Semaphore>);

impl ClientSlot {
    pub(crate) fn take(slots: &Arc<Semaphore>) -> Option<ClientSlot> {
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

/// A parked client: its session (with its entry in the client list) and its
/// `max_client_conn` slot.
pub struct ParkedClient {
    pub session: ParkedSession,
    pub slot: ClientSlot,
}

impl Parkable for ParkedClient {
    fn id(&self) -> u64 {
        self.session.client().id
    }

    fn socket(&self) -> BorrowedFd<'_> {
        self.session.socket().as_fd()
    }

    fn idle_tick(&self) -> u64 {
        self.session.idle_tick()
    }
}
