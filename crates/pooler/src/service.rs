//! The pooler as a service: read pgbouncer.ini (or pooler.yml) with its auth_file and
//! auth_hba_file, bind the listeners, serve, reload on request, and shut down.

use crate::config::{ConfigErrors, PoolerConfig};
use crate::listener;
use crate::live::LoadError;
use crate::net::{unix_socket_path, Listener};
use crate::runtime::Runtime;
use crate::topology::Topology;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, warn};

/// Why the pooler could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    // `error`, not `source`: the message already says it (anyhow would repeat it).
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The etcd section's certificate files.
    #[error("{0}")]
    EtcdTls(#[from] pgherd_http::TlsError),
    #[error("cannot listen on Unix socket {}: {error}", path.display())]
    ListenUnix {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("Unix socket {} is in use: another pooler or PostgreSQL listens on port {port}", path.display())]
    SocketInUse { path: PathBuf, port: u16 },
    #[error("unix_socket_mode '{0}' is not an octal file mode")]
    SocketMode(String),
    #[error("unix_socket_group '{0}' is not a group on this system")]
    SocketGroup(String),
    #[error("listen_addr and unix_socket_dir give no address to listen on")]
    NoListenAddress,
    #[error("listen_addr {name}: cannot resolve it: {error}")]
    ListenName { name: String, error: String },
}

pub use crate::live::Files;

/// Read the main file, then the auth_file and auth_hba_file it names.
pub fn load(path: &Path) -> Result<Files, ServiceError> {
    Ok(Files::load(path)?)
}

impl From<LoadError> for ServiceError {
    fn from(e: LoadError) -> ServiceError {
        match e {
            LoadError::Config(e) => ServiceError::Config(e),
            LoadError::Tls(e) => ServiceError::Tls(e),
        }
    }
}

/// One TCP address to listen on. An `optional` one (the IPv6 half of `*`) is skipped with
/// a warning where the machine cannot bind it, as PgBouncer does; any other must bind.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ListenAddr {
    addr: SocketAddr,
    optional: bool,
}

/// The addresses to listen on for the `[pgbouncer]` settings, as PgBouncer reads
/// `listen_addr`: numeric IPv4 and IPv6 addresses, host names (every address they resolve
/// to), and `*` for every IPv4 and IPv6 address.
async fn listen_addrs(config: &PoolerConfig) -> Result<Vec<ListenAddr>, ServiceError> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let main = config.settings.listen_port;
    // `routes` listeners on the same addresses; one on listen_port shares its socket.
    let mut ports = vec![main];
    for route in &config.routes {
        if !ports.contains(&route.listen_port) {
            ports.push(route.listen_port);
        }
    }
    let mut ips: Vec<(IpAddr, bool)> = Vec::new();
    for a in &config.settings.listen_addr {
        let found = match a.as_str() {
            "*" => vec![
                (IpAddr::V4(Ipv4Addr::UNSPECIFIED), false),
                (IpAddr::V6(Ipv6Addr::UNSPECIFIED), true),
            ],
            a => match a.parse::<IpAddr>() {
                Ok(ip) => vec![(ip, false)],
                Err(_) => resolve(a)
                    .await?
                    .into_iter()
                    .map(|ip| (ip, false))
                    .collect(),
            },
        };
        for (ip, optional) in found {
            match ips.iter_mut().find(|(seen, _)| *seen == ip) {
                // Named on its own too: then it must bind.
                Some(seen) => seen.1 &= optional,
                None => ips.push((ip, optional)),
            }
        }
    }
    Ok(ports
        .iter()
        .flat_map(|&port| {
            ips.iter().map(move |&(ip, optional)| ListenAddr {
                addr: SocketAddr::new(ip, port),
                optional,
            })
        })
        .collect())
}

/// Every address a `listen_addr` host name resolves to (at start, like PgBouncer).
async fn resolve(name: &str) -> Result<Vec<std::net::IpAddr>, ServiceError> {
    let fail = |error: String| ServiceError::ListenName {
        name: name.to_string(),
        error,
    };
    let mut ips: Vec<std::net::IpAddr> = Vec::new();
    let found = tokio::net::lookup_host((name, 0))
        .await
        .map_err(|e| fail(e.to_string()))?;
    for a in found {
        if !ips.contains(&a.ip()) {
            ips.push(a.ip());
        }
    }
    if ips.is_empty() {
        return Err(fail("it has no address".into()));
    }
    Ok(ips)
}

/// Listen on `.s.PGSQL.<listen_port>` in `unix_socket_dir` (empty: no socket), with
/// `unix_socket_mode` and `unix_socket_group`. A socket file nobody answers on is a
/// leftover of a crash and is replaced; one that answers is another server's.
fn bind_unix_socket(settings: &crate::config::Settings) -> Result<Option<Listener>, ServiceError> {
    let Some(dir) = settings
        .unix_socket_dir
        .as_deref()
        .filter(|d| !d.as_os_str().is_empty())
    else {
        return Ok(None);
    };
    let port = settings.listen_port;
    let path = unix_socket_path(dir, port);
    let mode_text = settings
        .get("unix_socket_mode")
        .unwrap_or_else(|| "0777".into());
    let mode = u32::from_str_radix(mode_text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| ServiceError::SocketMode(mode_text.clone()))?;
    let group = match settings.get("unix_socket_group").filter(|g| !g.is_empty()) {
        Some(name) => Some(
            nix::unistd::Group::from_name(&name)
                .ok()
                .flatten()
                .ok_or(ServiceError::SocketGroup(name))?
                .gid,
        ),
        None => None,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(ServiceError::SocketInUse { path, port });
        }
        warn!(path = %path.display(), "removing a stale Unix socket");
        let _ = std::fs::remove_file(&path);
    }
    let listen_error = |error| ServiceError::ListenUnix {
        path: path.clone(),
        error,
    };
    let listener = tokio::net::UnixListener::bind(&path).map_err(listen_error)?;
    // From here on the file is removed when the listener is dropped.
    let listener = Listener::Unix {
        listener,
        path: path.clone(),
        port,
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(listen_error)?;
    if let Some(gid) = group {
        nix::unistd::chown(&path, None, Some(gid))
            .map_err(|e| listen_error(std::io::Error::from(e)))?;
    }
    info!(path = %path.display(), "listening");
    Ok(Some(listener))
}

/// A running pooler.
pub struct Service {
    pub runtime: Arc<Runtime>,
    pub addrs: Vec<SocketAddr>,
    /// The Unix socket file clients can use (`unix_socket_dir`), if any.
    pub unix_socket: Option<PathBuf>,
    /// Where `GET /metrics` is served (`metrics_listen`), if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    stop_accepting: watch::Sender<bool>,
    listeners: JoinSet<()>,
    /// The metrics listener: its stop signal and task.
    metrics: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

/// A TCP listener for clients as PgBouncer makes one: up to `listen_backlog` pending
/// connections, and with `so_reuseport = 1` other processes may listen on the same
/// address and port (the kernel spreads new connections over them).
fn bind_client_listener(
    addr: SocketAddr,
    backlog: u32,
    reuseport: bool,
) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        let socket = TcpSocket::new_v6()?;
        // `::` must not take the IPv4 port too: `*` binds 0.0.0.0 beside it.
        set_ipv6_only(&socket)?;
        socket
    };
    socket.set_reuseaddr(true)?;
    if reuseport {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(backlog.max(1))
}

fn set_ipv6_only(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is the socket's own, open for the call; the value is a
    // c_int and the length says so.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Service {
    /// Bind every listen address (failing fast with the address that is taken) and
    /// start accepting clients.
    pub async fn start(files: Files) -> Result<Service, ServiceError> {
        if let Some(store) = &files.config.cluster {
            // Fail fast on a wrong path or a key that does not fit.
            store.etcd3.access()?;
        }
        let topology = files
            .config
            .cluster
            .as_ref()
            .map(|store| Arc::new(Topology::etcd(store)));
        Service::start_following(files, topology).await
    }

    /// [`Service::start`], with routed databases following `topology` instead of the
    /// etcd the configuration names (the demo's in-process store).
    pub async fn start_following(
        files: Files,
        topology: Option<Arc<Topology>>,
    ) -> Result<Service, ServiceError> {
        let addrs = listen_addrs(&files.config).await?;
        let unix_socket = bind_unix_socket(&files.config.settings)?;
        if addrs.is_empty() && unix_socket.is_none() {
            return Err(ServiceError::NoListenAddress);
        }
        let conffile = files
            .config
            .settings
            .get("conffile")
            .filter(|f| !f.is_empty());
        let metrics_listen = files.config.settings.metrics_listen;
        let backlog = files.config.settings.listen_backlog;
        let reuseport = files.config.settings.get("so_reuseport").as_deref() == Some("1");
        let rt =
            Runtime::with_topology(files.config, files.userlist, files.hba, files.tls, topology);
        if let Some(f) = conffile {
            rt.set_config_path(Path::new(&f));
        }
        let (stop_accepting, rx) = watch::channel(false);
        let mut listeners = JoinSet::new();
        let mut bound = Vec::new();
        for ListenAddr { addr, optional } in addrs {
            let listener = match bind_client_listener(addr, backlog, reuseport) {
                Ok(listener) => listener,
                Err(error) if optional => {
                    warn!(%addr, %error, "not listening on this wildcard address");
                    continue;
                }
                Err(error) => return Err(ServiceError::Listen { addr, error }),
            };
            let local = listener.local_addr().unwrap_or(addr);
            info!(addr = %local, "listening");
            bound.push(local);
            listeners.spawn(listener::serve(
                Listener::Tcp(listener),
                rt.clone(),
                rx.clone(),
            ));
        }
        let unix_socket_path = match unix_socket {
            Some(listener) => {
                let path = match &listener {
                    Listener::Unix { path, .. } => Some(path.clone()),
                    Listener::Tcp(_) => None,
                };
                listeners.spawn(listener::serve(listener, rt.clone(), rx.clone()));
                path
            }
            None => None,
        };
        let (metrics_addr, metrics) = match metrics_listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|error| ServiceError::Listen { addr, error })?;
                let local = listener.local_addr().unwrap_or(addr);
                info!(addr = %local, "serving metrics on /metrics");
                let (stop, rx) = watch::channel(false);
                let task = tokio::spawn(crate::metrics::serve(listener, rt.clone(), rx));
                (Some(local), Some((stop, task)))
            }
            None => (None, None),
        };
        Ok(Service {
            runtime: rt,
            addrs: bound,
            unix_socket: unix_socket_path,
            metrics_addr,
            stop_accepting,
            listeners,
            metrics,
        })
    }

    /// Re-read the files and apply what can change without a restart; clients stay
    /// connected. A file that does not load leaves the running configuration alone.
    pub fn reload(&self, path: &Path) -> Result<(), ServiceError> {
        Ok(self.runtime.reload_from(path)?)
    }

    /// Turns true when the admin console asked for `SHUTDOWN`.
    pub fn shutdown_requested(&self) -> watch::Receiver<bool> {
        self.runtime.shutdown_requested()
    }

    /// Stop accepting clients, then wait up to `grace` until no client holds a server
    /// (every in-flight transaction finished). Returns whether all finished in time.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        let _ = self.stop_accepting.send(true);
        while self.listeners.join_next().await.is_some() {}
        let deadline = Instant::now() + grace;
        loop {
            let busy: usize = self.runtime.pools().iter().map(|p| p.active()).sum();
            if busy == 0 {
                break;
            }
            if Instant::now() >= deadline {
                warn!(busy, "shutting down with transactions still running");
                self.stop_metrics().await;
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for pool in self.runtime.pools() {
            pool.close_idle().await;
        }
        self.stop_metrics().await;
        true
    }

    /// Stop the metrics listener (last, so the drain can be watched from outside).
    async fn stop_metrics(&mut self) {
        if let Some((stop, mut task)) = self.metrics.take() {
            let _ = stop.send(true);
            if tokio::time::timeout(Duration::from_secs(1), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Like the client listeners (a JoinSet), the metrics listener ends with us.
        if let Some((_, task)) = &self.metrics {
            task.abort();
        }
    }
}
