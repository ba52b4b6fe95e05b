//! The pooler's shared state: configuration, secrets, pools, and the cancel-key registry;
//! plus the listener that hands each client to a session.

use crate::config::{
    AuthType, DatabaseConfig, HbaMethod, HbaRules, PoolMode, PoolerConfig, Userlist,
};
use crate::pool::{Pool, PoolKey, PoolLimits};
use crate::server::{ServerCredential, ServerTarget};
use crate::session;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

/// Where to send a client's CancelRequest: the server backend it is attached to now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    pub host: String,
    pub port: u16,
    pub backend_pid: i32,
    pub cancel_key: Vec<u8>,
}

/// A client's slot in the cancel registry, updated as it attaches to servers.
pub type CancelSlot = Arc<Mutex<Option<CancelTarget>>>;

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

/// Everything the sessions share.
pub struct Runtime {
    config: RwLock<Arc<PoolerConfig>>,
    userlist: RwLock<Arc<Userlist>>,
    hba: RwLock<Option<Arc<HbaRules>>>,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    cancels: Mutex<HashMap<(i32, u32), CancelSlot>>,
    next_pid: AtomicI32,
}

impl Runtime {
    pub fn new(config: PoolerConfig, userlist: Userlist, hba: Option<HbaRules>) -> Arc<Runtime> {
        Arc::new(Runtime {
            config: RwLock::new(Arc::new(config)),
            userlist: RwLock::new(Arc::new(userlist)),
            hba: RwLock::new(hba.map(Arc::new)),
            pools: Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
            next_pid: AtomicI32::new(1),
        })
    }

    /// Swap in re-read files (RELOAD, SIGHUP). Sessions pick the new settings up at
    /// their next decision; existing pools keep their size until restart.
    pub fn reload(&self, config: PoolerConfig, userlist: Userlist, hba: Option<HbaRules>) {
        replace(&self.config, Arc::new(config));
        replace(&self.userlist, Arc::new(userlist));
        replace(&self.hba, hba.map(Arc::new));
    }

    pub fn config(&self) -> Arc<PoolerConfig> {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn userlist(&self) -> Arc<Userlist> {
        match self.userlist.read() {
            Ok(u) => u.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The method `auth_hba_file` prescribes for a TCP client (first matching line);
    /// `None`: rejected, or a method pgherd does not offer.
    pub fn hba_method(&self, peer: SocketAddr, database: &str, user: &str) -> Option<AuthType> {
        let hba = match self.hba.read() {
            Ok(h) => h.clone(),
            Err(p) => p.into_inner().clone(),
        }?;
        let conn = crate::config::ConnInfo {
            local: false,
            tls: false,
            addr: peer.ip(),
            database,
            user,
            replication: false,
        };
        match hba.matches(&conn)? {
            HbaMethod::Trust => Some(AuthType::Trust),
            HbaMethod::Md5 => Some(AuthType::Md5),
            HbaMethod::ScramSha256 => Some(AuthType::ScramSha256),
            HbaMethod::Password => Some(AuthType::Plain),
            HbaMethod::Reject | HbaMethod::Cert | HbaMethod::Peer => None,
        }
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
        let target = ServerTarget {
            host: db
                .host
                .first()
                .cloned()
                .unwrap_or_else(|| "127.0.0.1".into()),
            port: db.port,
            database: db.dbname.clone().unwrap_or_else(|| key.database.clone()),
            user: db.user.clone().unwrap_or_else(|| key.user.clone()),
            credential,
            startup_params: startup_params(db),
            connect_timeout: s.server_connect_timeout,
        };
        let user = config.users.get(&key.user);
        let limits = PoolLimits {
            pool_size: user
                .and_then(|u| u.pool_size)
                .or(db.pool_size)
                .unwrap_or(s.default_pool_size) as usize,
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
        };
        info!(database = %key.database, user = %key.user, pool_size = limits.pool_size, "new pool");
        let pool = Pool::new(key.clone(), target, limits);
        pools.insert(key.clone(), pool.clone());
        pool
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

    /// A fresh (process id, secret key) for a client's BackendKeyData, registered so a
    /// CancelRequest carrying it finds the client's server.
    pub fn register_client(&self) -> (i32, u32, CancelSlot) {
        let slot: CancelSlot = Arc::new(Mutex::new(None));
        let mut cancels = lock(&self.cancels);
        loop {
            let pid = self.next_pid.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff;
            let key = rand::random::<u32>();
            if let std::collections::hash_map::Entry::Vacant(e) = cancels.entry((pid, key)) {
                e.insert(slot.clone());
                return (pid, key, slot);
            }
        }
    }

    pub fn unregister_client(&self, pid: i32, key: u32) {
        lock(&self.cancels).remove(&(pid, key));
    }

    /// Where a CancelRequest for (pid, key) should go, if that client is attached.
    pub fn cancel_target(&self, pid: i32, key: u32) -> Option<CancelTarget> {
        let slot = lock(&self.cancels).get(&(pid, key)).cloned()?;
        let target = lock(&slot).clone();
        target
    }
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
pub async fn serve(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    mut shutdown: watch::Receiver<bool>,
) {
    let max = runtime.config().settings.max_client_conn as usize;
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let runtime = runtime.clone();
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(async move {
                    session::run(stream, peer, runtime).await;
                    drop(slot);
                });
            }
            Err(_) => {
                tokio::spawn(session::refuse(
                    stream,
                    peer,
                    "no more connections allowed (max_client_conn)",
                ));
            }
        }
    }
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
