//! pgherd's extension to the pooler configuration: where to watch the clusters'
//! topology, and which databases route to which role of which cluster. Parsed and
//! validated here; [`crate::topology`] follows the clusters and the pools route by them.
//!
//! ```yaml
//! cluster:
//!   scope: batman            # Patroni's scope: the default for routed databases
//!   namespace: /service/     # Patroni's namespace (default /service/)
//!   etcd3:
//!     hosts: [10.0.0.1:2379, 10.0.0.2:2379]   # or "10.0.0.1:2379,10.0.0.2:2379"
//!   dcs_timeout: 10          # no DCS answer this long: no writes routed (default 10 s)
//! databases:
//!   app: {cluster: batman, role: primary, dbname: app}
//!   app_ro: {role: replica, dbname: app, max_lag: 16MB}
//! ```
//!
//! In `pgbouncer.ini` the same store is a `[pgherd]` section (`etcd_hosts`, `namespace`,
//! `scope`, `dcs_timeout`) and a database is `app = cluster=batman role=primary dbname=app`.
//!
//! etcd over TLS and with authentication takes Patroni's `etcd3` keys in YAML
//! (`protocol: https`, `cacert`, `cert`, `key`, `username`, `password`) and
//! `etcd_protocol`, `etcd_cacert`, `etcd_cert`, `etcd_key`, `etcd_username`,
//! `etcd_password` in `[pgherd]`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use pgherd_dcs::etcd::{EtcdAccess, EtcdAuth, EtcdTls};
use pgherd_http::{TlsError, TlsFile};

use super::{ConfigError, DatabaseConfig, ErrorKind, Location, PoolerConfig};

/// Where the clusters' leaders and members are published (Patroni's layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The cluster a routed database without `cluster=` follows.
    pub scope: Option<String>,
    /// Default `/service/`, as in Patroni.
    pub namespace: String,
    pub etcd3: Etcd3Config,
    /// How long the DCS may not answer before the pooler stops routing writes (it can
    /// no longer know who the primary is). Keep it below the clusters' ttl.
    pub dcs_timeout: Duration,
}

/// Default `dcs_timeout`: a third of Patroni's default ttl.
pub const DEFAULT_DCS_TIMEOUT: Duration = Duration::from_secs(10);

/// What a replica route does when no replica may serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fallback {
    /// Send the reads to the primary.
    #[default]
    Primary,
    /// Let the clients wait (up to `query_wait_timeout`).
    None,
}

/// How a route with several members spreads its server logins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// To the member with the fewest of the pool's servers (ties in turn).
    #[default]
    LeastConnections,
    /// Each member in turn.
    RoundRobin,
}

/// How a health-checked database tells which of its hosts is what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// Patroni's REST API: `GET /primary`, `GET /replica?lag=…` (200: yes).
    Http,
    /// `SELECT pg_is_in_recovery()` as the database's user.
    Sql,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Http => "http",
            CheckKind::Sql => "sql",
        }
    }
}

/// Patroni's default REST port.
pub const DEFAULT_CHECK_PORT: u16 = 8008;

/// One health-checked host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedServer {
    pub host: String,
    pub port: u16,
    /// Its REST API's port (`check=http`).
    pub check_port: u16,
}

/// A database whose hosts are health-checked, HAProxy style: a host leaves after `fall`
/// failed checks in a row and comes back after `rise` passed ones, checked every
/// `inter`; clients go to the hosts of `role` that are up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    pub kind: CheckKind,
    pub servers: Vec<CheckedServer>,
    pub role: RouteRole,
    pub max_lag: Option<u64>,
    pub fallback: Fallback,
    pub balance: Balance,
    pub inter: Duration,
    pub fall: u32,
    pub rise: u32,
}

/// A database's route: which members of which cluster its servers log in to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub scope: String,
    pub role: RouteRole,
    /// Replicas further behind than this many bytes serve no reads.
    pub max_lag: Option<u64>,
    pub fallback: Fallback,
    pub balance: Balance,
}

/// Patroni's default namespace.
pub const DEFAULT_NAMESPACE: &str = "/service/";

/// etcd v3 endpoints, and how to talk to them (Patroni's `etcd3` keys).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Etcd3Config {
    /// `host:port` endpoints (or `http://`/`https://` URLs).
    pub hosts: Vec<String>,
    /// `protocol: https`: TLS toward etcd (needs `cacert`).
    pub https: bool,
    /// The CA of etcd's certificate.
    pub cacert: Option<TlsFile>,
    /// A client certificate (and its key; without `key`, read from `cert`).
    pub cert: Option<TlsFile>,
    pub key: Option<TlsFile>,
    /// etcd's user name authentication.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for Etcd3Config {
    /// Never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Etcd3Config")
            .field("hosts", &self.hosts)
            .field("https", &self.https)
            .field("cacert", &self.cacert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .finish()
    }
}

impl Etcd3Config {
    /// Plain HTTP to `hosts`.
    pub fn plain(hosts: Vec<String>) -> Etcd3Config {
        Etcd3Config {
            hosts,
            ..Etcd3Config::default()
        }
    }

    /// Whether any endpoint is reached over TLS.
    pub fn uses_tls(&self) -> bool {
        self.https || self.hosts.iter().any(|h| h.starts_with("https://"))
    }

    /// How to reach etcd: reads the certificate files, so errors name the key and file.
    pub fn access(&self) -> Result<EtcdAccess, TlsError> {
        let tls = if self.uses_tls() {
            let Some(cacert) = &self.cacert else {
                return Err(TlsError::Setting {
                    key: "cluster.etcd3.cacert (pgherd.etcd_cacert)".into(),
                    reason: "required with https: the CA that signed etcd's certificate".into(),
                });
            };
            cacert.certificates()?;
            let mut tls = EtcdTls {
                ca: Some(cacert.read()?),
                identity: None,
            };
            if let Some(cert) = &self.cert {
                let key = self.key.as_ref().unwrap_or(cert);
                cert.check_pair(key)?;
                tls.identity = Some((cert.read()?, key.read()?));
            }
            Some(tls)
        } else {
            None
        };
        let scheme = if self.https { "https" } else { "http" };
        let endpoints = self
            .hosts
            .iter()
            .map(|h| {
                if h.contains("://") {
                    h.clone()
                } else {
                    format!("{scheme}://{h}")
                }
            })
            .collect();
        Ok(EtcdAccess {
            endpoints,
            tls,
            auth: self.username.as_ref().map(|u| EtcdAuth {
                username: u.clone(),
                password: self.password.clone().unwrap_or_default(),
            }),
        })
    }
}

/// Which members a route's listener sends clients to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteRole {
    /// The leader only.
    Primary,
    /// Healthy replicas not tagged `noloadbalance`, falling back to the primary.
    Replica,
    /// Any healthy member.
    Any,
}

impl RouteRole {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteRole::Primary => "primary",
            RouteRole::Replica => "replica",
            RouteRole::Any => "any",
        }
    }

    pub(crate) fn parse(v: &str) -> Option<RouteRole> {
        match v.to_ascii_lowercase().as_str() {
            // Patroni's REST API spells the primary three ways.
            "primary" | "master" | "leader" => Some(RouteRole::Primary),
            "replica" | "standby" => Some(RouteRole::Replica),
            "any" => Some(RouteRole::Any),
            _ => None,
        }
    }
}

impl fmt::Display for RouteRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A listener that routes by role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub listen_port: u16,
    pub role: RouteRole,
}

/// Why a routed database (`cluster=`, `role=`, …) cannot be routed under `cluster`
/// (the store section), if it cannot.
pub(crate) fn route_problems(
    cluster: Option<&ClusterConfig>,
    db: &DatabaseConfig,
) -> Vec<&'static str> {
    let mut problems = Vec::new();
    if !db.is_routed() {
        return problems;
    }
    match cluster {
        None => problems.push(
            "a routed database (cluster=, role=) needs the store: a [pgherd] section with \
             etcd_hosts (YAML: cluster.etcd3.hosts)",
        ),
        Some(c) if db.cluster.is_none() && c.scope.is_none() => problems.push(
            "no cluster to route to: set cluster=SCOPE, or scope in [pgherd] (YAML: \
             cluster.scope)",
        ),
        _ => {}
    }
    if !db.host.is_empty() {
        problems.push(
            "host= and cluster= exclude each other: the cluster names the hosts (or add \
             check=http|sql to health-check the hosts instead)",
        );
    }
    problems
}

/// Cross-checks once everything is read: routes need a cluster and distinct ports.
pub(crate) fn check(config: &PoolerConfig, at: Option<&Location>, errors: &mut Vec<ConfigError>) {
    if config.routes.is_empty() {
        return;
    }
    let at = at
        .cloned()
        .unwrap_or_else(|| Location::new("<config>", None));
    if config.cluster.is_none() {
        errors.push(ConfigError::new(
            at.clone(),
            Some("routes".into()),
            ErrorKind::Inconsistent,
            "routes need a cluster section to learn the topology from",
        ));
    }
    // A database served on a route follows a cluster: its own, or cluster.scope.
    let no_scope = config.cluster.as_ref().is_some_and(|c| c.scope.is_none());
    let scopeless = config
        .databases
        .iter()
        .map(|(name, db)| (name.as_str(), db))
        .chain(config.fallback_database.iter().map(|db| ("*", db)))
        .filter(|(_, db)| db.cluster.is_none() && db.check.is_none() && db.host.is_empty());
    for (name, _) in scopeless.filter(|_| no_scope) {
        errors.push(ConfigError::new(
            at.clone(),
            Some(format!("databases.{name}")),
            ErrorKind::Inconsistent,
            "served on the routes' ports, but follows no cluster: set cluster.scope, or \
             the database's own cluster",
        ));
    }
    let mut seen: BTreeMap<u16, usize> = BTreeMap::new();
    for (i, r) in config.routes.iter().enumerate() {
        if let Some(first) = seen.insert(r.listen_port, i) {
            errors.push(ConfigError::new(
                at.clone(),
                Some(format!("routes[{i}].listen_port")),
                ErrorKind::Inconsistent,
                format!("port {} is already used by routes[{first}]", r.listen_port),
            ));
        }
    }
}
