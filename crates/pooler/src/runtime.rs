//! The top-level composition: the parts sessions share ([`SessionContext`]: the
//! configuration in force, the pool map, the cancel-key registry), the client registry
//! the admin console lists (and `KILL`s), the parker, shutdown; plus the listener that
//! hands each client to a session, and a console client to the admin console.

use crate::admin;
use crate::cancel::CancelRegistry;
use crate::client::{ClientInfo, ClientRegistry};
use crate::config::{DatabaseConfig, HbaRules, PoolMode, PoolerConfig, Userlist};
use crate::live::LiveConfig;
use crate::net::{Listener, Peer};
use crate::park::{self as park, ParkOwner, Parkable, Parker};
use crate::pool::{ConnLimit, Pool};
use crate::pools::Pools;
use crate::session::{self, Ended, ParkedSession, SessionContext};
use crate::tls::TlsContexts;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

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
    pub fn new(
        config: PoolerConfig,
        userlist: Userlist,
        hba: Option<HbaRules>,
        tls: TlsContexts,
    ) -> Arc<Runtime> {
        let live = Arc::new(LiveConfig::new(config, userlist, hba, tls));
        let shutdown = watch::channel(false).0;
        let ctx = SessionContext {
            pools: Arc::new(Pools::new(live.clone(), shutdown.subscribe())),
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

    /// Start parking idle clients (once; inside a Tokio runtime). Without it every
    /// client keeps its task.
    fn start_parker(self: &Arc<Self>) {
        if self.parker.get().is_some() {
            return;
        }
        match Parker::new() {
            Ok(parker) => {
                let parker = Arc::new(parker);
                let ticks = parker.ticks().clone();
                let task = tokio::spawn(park::run(parker.clone(), Arc::downgrade(self)));
                match self.parker.set((parker, task)) {
                    // Sessions park from now on.
                    Ok(()) => _ = self.ctx.ticks.set(ticks),
                    Err((_, task)) => task.abort(),
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
                let session = session::run(stream, client.clone(), runtime.ctx.clone());
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
    runtime.ctx.pools.signal_janitor_stop();
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

/// Run a client's session in its own task until it leaves, is killed or parks; a client of the admin console is served by the console
/// in the same task.
fn spawn_client(
    runtime: Arc<Runtime>,
    client: Arc<ClientInfo>,
    slot: ClientSlot,
    session: impl Future<Output = Ended> + Send + 'static,
) {
    tokio::spawn(async move {
        let peer = client.peer;
        // KILL drops the session: its sockets close, a held server is closed and its
        // slot freed.
        let ended = tokio::select! {
            biased;
            ended = session => ended,
            _ = client.killed_notified() => {
                debug!(%peer, "client killed");
                Ended::Done
            }
        };
        let session = match ended {
            Ended::Parked(session) => session,
            Ended::Console(console) => {
                // Boxed, as the session's login was: the task stays small for others.
                let console = Box::pin(admin::serve(*console, &client, &runtime));
                tokio::select! {
                    _ = console => {}
                    _ = client.killed_notified() => debug!(%peer, "client killed"),
                }
                runtime.remove_client(client.id);
                drop(slot);
                return;
            }
            Ended::Done => {
                runtime.remove_client(client.id);
                drop(slot);
                return;
            }
        };
        let Some(parker) = runtime.parker() else {
            // Sessions park only when there is a parker.
            runtime.remove_client(client.id);
            session.end(&runtime.ctx);
            return;
        };
        let id = client.id;
        client.forget_kill_waker();
        drop(client);
        let parked = ParkedClient { session, slot };
        match parker.park(parked) {
            Ok(()) => {
                // A KILL that came while parking may have missed it in the parker.
                if let Some(killed) = parker.unpark_if(id, |c| c.session.client().is_killed()) {
                    runtime.remove_client(id);
                    killed.session.end(&runtime.ctx);
                }
            }
            Err(parked) => resume_client(&runtime, parked),
        }
    });
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

impl ParkOwner<ParkedClient> for Runtime {
    fn resume(self: &Arc<Self>, parked: ParkedClient) {
        resume_client(self, parked);
    }

    fn expire(&self, parked: ParkedClient) {
        info!(peer = %parked.session.client().peer, "client_idle_timeout");
        self.remove_client(parked.session.client().id);
        parked.session.end(&self.ctx);
    }

    fn idle_timeout(&self) -> Option<Duration> {
        self.config().settings.client_idle_timeout
    }
}

/// Serve a parked client again, in a new task.
fn resume_client(runtime: &Arc<Runtime>, parked: ParkedClient) {
    let ParkedClient { session, slot } = parked;
    let client = session.client().clone();
    tracing::trace!(peer = %client.peer, "resuming a parked client");
    let session = session::resume(session, runtime.ctx.clone());
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
