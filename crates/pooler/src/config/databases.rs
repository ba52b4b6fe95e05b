//! `[databases]` and `[users]` entries: PgBouncer's connection-string parameters.

use std::fmt;
use std::time::Duration;

use super::cluster::{
    Balance, CheckKind, CheckedServer, Fallback, HealthSpec, RouteRole, RouteSpec,
    DEFAULT_CHECK_PORT,
};
use super::settings::{
    fmt_secs, parse_limit, parse_port, parse_secs, parse_secs_or_off, parse_u32, shown, PoolMode,
};
use super::{connstr, ValueError};

/// A password written in a configuration file. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(secret: impl Into<String>) -> Self {
        Password(secret.into())
    }

    /// The password itself, for the code that logs in to the server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// One `[databases]` entry: where and how the pooler connects for a client-side
/// database name. `None` means "not set here; use the global setting / default".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DatabaseConfig {
    /// Hosts, tried round-robin; empty means the Unix socket in `unix_socket_dir`.
    /// A host beginning with `/` is a socket directory.
    pub host: Vec<String>,
    /// Default 5432.
    pub port: u16,
    /// Server-side database name; `None` means the client-side name.
    pub dbname: Option<String>,
    /// Forced server user: one pool for the database instead of one per user.
    pub user: Option<String>,
    pub password: Option<Password>,
    pub auth_user: Option<String>,
    pub auth_query: Option<String>,
    pub auth_dbname: Option<String>,
    pub pool_size: Option<u32>,
    pub min_pool_size: Option<u32>,
    /// `reserve_pool_size`, or its older spelling `reserve_pool`.
    pub reserve_pool_size: Option<u32>,
    pub connect_query: Option<String>,
    pub pool_mode: Option<PoolMode>,
    /// `Some(None)`: explicitly unlimited (`0`).
    pub max_db_connections: Option<Option<u32>>,
    pub max_db_client_connections: Option<Option<u32>>,
    pub server_lifetime: Option<Duration>,
    /// `Some(None)`: explicitly disabled (`0`).
    pub query_wait_timeout: Option<Option<Duration>>,
    pub client_encoding: Option<String>,
    pub datestyle: Option<String>,
    pub timezone: Option<String>,
    pub application_name: Option<String>,
    /// pgherd: follow this cluster (scope) instead of `host`.
    pub cluster: Option<String>,
    /// pgherd: which of the cluster's members (default primary).
    pub role: Option<RouteRole>,
    /// pgherd: replicas further behind than this many bytes serve no reads.
    pub max_lag: Option<u64>,
    /// pgherd: no replica may serve: use the primary (default) or wait.
    pub fallback: Option<Fallback>,
    /// pgherd: how logins spread over several members.
    pub balance: Option<Balance>,
    /// libpq's port list: one port per `host` (`port=5432,5433`); empty: `port` for all.
    pub host_ports: Vec<u16>,
    /// pgherd: health-check the hosts and route by `role` to those that pass.
    pub check: Option<CheckKind>,
    /// The REST port of each host for `check=http` (one, or one per host; default 8008).
    pub check_ports: Vec<u16>,
    /// HAProxy's `inter`: seconds between checks (default 2).
    pub inter: Option<Duration>,
    /// HAProxy's `fall`: failed checks in a row that take a host out (default 3).
    pub fall: Option<u32>,
    /// HAProxy's `rise`: passed checks in a row that bring it back (default 2).
    pub rise: Option<u32>,
}

/// PgBouncer's default server port.
pub const DEFAULT_SERVER_PORT: u16 = 5432;

impl DatabaseConfig {
    /// Build from `(key, value)` pairs; collects one error per bad parameter.
    pub(crate) fn from_params(
        params: Vec<(String, String)>,
    ) -> Result<DatabaseConfig, Vec<ValueError>> {
        let mut db = DatabaseConfig {
            port: DEFAULT_SERVER_PORT,
            ..DatabaseConfig::default()
        };
        let mut errors = Vec::new();
        for (key, value) in params {
            if let Err(e) = db.set(&key, value) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(db)
        } else {
            Err(errors)
        }
    }

    fn set(&mut self, key: &str, value: String) -> Result<(), ValueError> {
        let named = |e: ValueError| ValueError {
            kind: e.kind,
            message: format!("{key}: {}", e.message),
        };
        let v = value.trim();
        match key {
            "host" => {
                let hosts: Vec<String> = v.split(',').map(|h| h.trim().to_string()).collect();
                if hosts.iter().any(String::is_empty) {
                    return Err(ValueError::invalid(format!(
                        "host: empty entry in host list '{}'",
                        shown(v)
                    )));
                }
                self.host = hosts;
            }
            "port" if v.contains(',') => {
                let ports = parse_ports(v).map_err(named)?;
                self.port = ports[0];
                self.host_ports = ports;
            }
            "port" => self.port = parse_port(v).map_err(named)?,
            "check" => {
                self.check = Some(match v.to_ascii_lowercase().as_str() {
                    "http" => CheckKind::Http,
                    "sql" => CheckKind::Sql,
                    _ => {
                        return Err(ValueError::invalid(format!(
                            "check: invalid value '{}': expected http or sql",
                            shown(v)
                        )))
                    }
                })
            }
            "check_port" => self.check_ports = parse_ports(v).map_err(named)?,
            "inter" => self.inter = Some(parse_secs(v).map_err(named)?),
            "fall" => self.fall = Some(parse_u32(v).map_err(named)?.max(1)),
            "rise" => self.rise = Some(parse_u32(v).map_err(named)?.max(1)),
            "dbname" => self.dbname = Some(value),
            "user" => self.user = Some(value),
            // Not trimmed: a password is taken exactly as written.
            "password" => self.password = Some(Password(value)),
            "auth_user" => self.auth_user = Some(value),
            "auth_query" => self.auth_query = Some(value),
            "auth_dbname" => self.auth_dbname = Some(value),
            "pool_size" => self.pool_size = Some(parse_u32(v).map_err(named)?),
            "min_pool_size" => self.min_pool_size = Some(parse_u32(v).map_err(named)?),
            "reserve_pool" | "reserve_pool_size" => {
                self.reserve_pool_size = Some(parse_u32(v).map_err(named)?)
            }
            "connect_query" => self.connect_query = Some(value),
            "pool_mode" => self.pool_mode = Some(PoolMode::parse(v).map_err(named)?),
            "max_db_connections" => self.max_db_connections = Some(parse_limit(v).map_err(named)?),
            "max_db_client_connections" => {
                self.max_db_client_connections = Some(parse_limit(v).map_err(named)?)
            }
            "server_lifetime" => self.server_lifetime = Some(parse_secs(v).map_err(named)?),
            "query_wait_timeout" => {
                self.query_wait_timeout = Some(parse_secs_or_off(v).map_err(named)?)
            }
            "client_encoding" => self.client_encoding = Some(value),
            "datestyle" => self.datestyle = Some(value),
            "timezone" => self.timezone = Some(value),
            "application_name" => self.application_name = Some(value),
            "cluster" if v.is_empty() => return Err(ValueError::invalid("cluster: empty scope")),
            "cluster" => self.cluster = Some(v.to_string()),
            "role" => {
                self.role = Some(RouteRole::parse(v).ok_or_else(|| {
                    ValueError::invalid(format!(
                        "role: invalid value '{}': expected primary, replica or any",
                        shown(v)
                    ))
                })?)
            }
            "max_lag" => self.max_lag = Some(parse_bytes(v).map_err(named)?),
            "fallback" => {
                self.fallback = Some(match v.to_ascii_lowercase().as_str() {
                    "primary" | "master" | "leader" => Fallback::Primary,
                    "none" => Fallback::None,
                    _ => {
                        return Err(ValueError::invalid(format!(
                            "fallback: invalid value '{}': expected primary or none",
                            shown(v)
                        )))
                    }
                })
            }
            "balance" => {
                self.balance = Some(match v.to_ascii_lowercase().as_str() {
                    "least_connections" | "least-connections" => Balance::LeastConnections,
                    "round_robin" | "round-robin" => Balance::RoundRobin,
                    _ => {
                        return Err(ValueError::invalid(format!(
                            "balance: invalid value '{}': expected least_connections or \
                             round_robin",
                            shown(v)
                        )))
                    }
                })
            }
            _ => {
                return Err(ValueError::unknown(format!(
                    "unrecognized connection parameter '{}'",
                    shown(key)
                )))
            }
        }
        Ok(())
    }

    /// Routed by a cluster's topology: `cluster`, or a route key (`role`, `max_lag`,
    /// `fallback`, `balance`) without health checks.
    pub fn is_routed(&self) -> bool {
        self.cluster.is_some()
            || (self.check.is_none()
                && (self.role.is_some()
                    || self.max_lag.is_some()
                    || self.fallback.is_some()
                    || self.balance.is_some()))
    }

    /// The route of a routed database, with `default_scope` for one without `cluster=`.
    pub fn route(&self, default_scope: Option<&str>) -> Option<RouteSpec> {
        if !self.is_routed() {
            return None;
        }
        Some(RouteSpec {
            scope: self.cluster.clone().or(default_scope.map(str::to_string))?,
            role: self.role.unwrap_or(RouteRole::Primary),
            max_lag: self.max_lag,
            fallback: self.fallback.unwrap_or_default(),
            balance: self.balance.unwrap_or_default(),
        })
    }

    /// The health-checked servers of a database with `check=`: each host with its port
    /// and check port, and how to judge them.
    pub fn health(&self) -> Option<HealthSpec> {
        let kind = self.check?;
        let nth = |list: &[u16], i: usize, default: u16| match list.len() {
            0 => default,
            1 => list[0],
            _ => list.get(i).copied().unwrap_or(default),
        };
        let servers = self
            .host
            .iter()
            .enumerate()
            .map(|(i, host)| CheckedServer {
                host: host.clone(),
                port: nth(&self.host_ports, i, self.port),
                check_port: nth(&self.check_ports, i, DEFAULT_CHECK_PORT),
            })
            .collect();
        Some(HealthSpec {
            kind,
            servers,
            role: self.role.unwrap_or(RouteRole::Primary),
            max_lag: self.max_lag,
            fallback: self.fallback.unwrap_or_default(),
            balance: self.balance.unwrap_or_default(),
            inter: self.inter.unwrap_or(Duration::from_secs(2)),
            fall: self.fall.unwrap_or(3),
            rise: self.rise.unwrap_or(2),
        })
    }

    /// Why the health-check keys do not fit together, if they do not.
    pub(crate) fn health_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let any_check_key = !self.check_ports.is_empty()
            || self.inter.is_some()
            || self.fall.is_some()
            || self.rise.is_some();
        if self.check.is_none() {
            if any_check_key {
                problems.push("check_port/inter/fall/rise need check=http or check=sql".into());
            }
            return problems;
        }
        if self.host.is_empty() || self.host.iter().any(|h| h.starts_with('/')) {
            problems.push("check= needs host= with one or more TCP hosts".into());
        }
        if self.cluster.is_some() {
            problems
                .push("check= and cluster= exclude each other: the cluster says who leads".into());
        }
        for (key, list) in [
            ("port", &self.host_ports),
            ("check_port", &self.check_ports),
        ] {
            if list.len() > 1 && list.len() != self.host.len() {
                problems.push(format!(
                    "{key}: {} values for {} hosts (give one, or one per host)",
                    list.len(),
                    self.host.len()
                ));
            }
        }
        problems
    }

    /// The server-side database name for a client that asked for `client_db`.
    pub fn server_dbname<'a>(&'a self, client_db: &'a str) -> &'a str {
        self.dbname.as_deref().unwrap_or(client_db)
    }

    /// The entry as a connection string, with the password shown as `****`
    /// (for `SHOW DATABASES`-style output and reload diffs).
    pub fn to_connstr_redacted(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut push = |k: &str, v: String| parts.push(format!("{k}={}", connstr::quote(&v)));
        if !self.host.is_empty() {
            push("host", self.host.join(","));
        }
        if self.host_ports.is_empty() {
            push("port", self.port.to_string());
        } else {
            push("port", join_ports(&self.host_ports));
        }
        if let Some(kind) = self.check {
            push("check", kind.as_str().into());
        }
        if !self.check_ports.is_empty() {
            push("check_port", join_ports(&self.check_ports));
        }
        for (k, v) in [("fall", self.fall), ("rise", self.rise)] {
            if let Some(v) = v {
                push(k, v.to_string());
            }
        }
        if let Some(d) = self.inter {
            push("inter", fmt_secs(d));
        }
        let strings = [
            ("dbname", &self.dbname),
            ("user", &self.user),
            ("auth_user", &self.auth_user),
            ("auth_query", &self.auth_query),
            ("auth_dbname", &self.auth_dbname),
            ("connect_query", &self.connect_query),
            ("client_encoding", &self.client_encoding),
            ("datestyle", &self.datestyle),
            ("timezone", &self.timezone),
            ("application_name", &self.application_name),
            ("cluster", &self.cluster),
        ];
        for (k, v) in strings {
            if let Some(v) = v {
                push(k, v.clone());
            }
        }
        if self.password.is_some() {
            push("password", "****".into());
        }
        let numbers = [
            ("pool_size", self.pool_size),
            ("min_pool_size", self.min_pool_size),
            ("reserve_pool_size", self.reserve_pool_size),
            (
                "max_db_connections",
                self.max_db_connections.map(|l| l.unwrap_or(0)),
            ),
            (
                "max_db_client_connections",
                self.max_db_client_connections.map(|l| l.unwrap_or(0)),
            ),
        ];
        for (k, v) in numbers {
            if let Some(v) = v {
                push(k, v.to_string());
            }
        }
        if let Some(mode) = self.pool_mode {
            push("pool_mode", mode.as_str().into());
        }
        if let Some(role) = self.role {
            push("role", role.as_str().into());
        }
        if let Some(lag) = self.max_lag {
            push("max_lag", lag.to_string());
        }
        if let Some(f) = self.fallback {
            push(
                "fallback",
                if f == Fallback::None {
                    "none"
                } else {
                    "primary"
                }
                .into(),
            );
        }
        if let Some(b) = self.balance {
            let name = match b {
                Balance::LeastConnections => "least_connections",
                Balance::RoundRobin => "round_robin",
            };
            push("balance", name.into());
        }
        if let Some(d) = self.server_lifetime {
            push("server_lifetime", fmt_secs(d));
        }
        if let Some(d) = self.query_wait_timeout {
            push(
                "query_wait_timeout",
                d.map(fmt_secs).unwrap_or_else(|| "0".into()),
            );
        }
        parts.join(" ")
    }
}

fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A port list: `5432,5433`.
fn parse_ports(v: &str) -> Result<Vec<u16>, ValueError> {
    let ports = v
        .split(',')
        .map(|p| parse_port(p.trim()))
        .collect::<Result<Vec<u16>, ValueError>>()?;
    if ports.is_empty() {
        return Err(ValueError::invalid("expected a port or a list of ports"));
    }
    Ok(ports)
}

/// A size in bytes: `1048576`, or with a unit as in Patroni's `?lag=`: `16MB`, `512kB`,
/// `1GB` (powers of 1024).
fn parse_bytes(v: &str) -> Result<u64, ValueError> {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        _ => 0,
    };
    match number.trim().parse::<u64>() {
        Ok(n) if scale > 0 => n
            .checked_mul(scale)
            .ok_or_else(|| ValueError::invalid(format!("invalid value '{}': too large", shown(v)))),
        _ => Err(ValueError::invalid(format!(
            "invalid value '{}': expected bytes, e.g. 1048576 or 16MB",
            shown(v)
        ))),
    }
}

/// One `[users]` entry: per-user overrides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserConfig {
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<u32>,
    pub reserve_pool_size: Option<u32>,
    /// `Some(None)`: explicitly unlimited (`0`).
    pub max_user_connections: Option<Option<u32>>,
    pub max_user_client_connections: Option<Option<u32>>,
    /// `Some(None)`: explicitly disabled (`0`).
    pub query_timeout: Option<Option<Duration>>,
    pub query_wait_timeout: Option<Option<Duration>>,
    pub idle_transaction_timeout: Option<Option<Duration>>,
    pub transaction_timeout: Option<Option<Duration>>,
    pub client_idle_timeout: Option<Option<Duration>>,
}

impl UserConfig {
    pub(crate) fn from_params(
        params: Vec<(String, String)>,
    ) -> Result<UserConfig, Vec<ValueError>> {
        let mut user = UserConfig::default();
        let mut errors = Vec::new();
        for (key, value) in params {
            if let Err(e) = user.set(&key, value.trim()) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(user)
        } else {
            Err(errors)
        }
    }

    fn set(&mut self, key: &str, v: &str) -> Result<(), ValueError> {
        let named = |e: ValueError| ValueError {
            kind: e.kind,
            message: format!("{key}: {}", e.message),
        };
        match key {
            "pool_mode" => self.pool_mode = Some(PoolMode::parse(v).map_err(named)?),
            "pool_size" => self.pool_size = Some(parse_u32(v).map_err(named)?),
            "reserve_pool" | "reserve_pool_size" => {
                self.reserve_pool_size = Some(parse_u32(v).map_err(named)?)
            }
            "max_user_connections" => {
                self.max_user_connections = Some(parse_limit(v).map_err(named)?)
            }
            "max_user_client_connections" => {
                self.max_user_client_connections = Some(parse_limit(v).map_err(named)?)
            }
            "query_timeout" => self.query_timeout = Some(parse_secs_or_off(v).map_err(named)?),
            "query_wait_timeout" => {
                self.query_wait_timeout = Some(parse_secs_or_off(v).map_err(named)?)
            }
            "idle_transaction_timeout" => {
                self.idle_transaction_timeout = Some(parse_secs_or_off(v).map_err(named)?)
            }
            "transaction_timeout" => {
                self.transaction_timeout = Some(parse_secs_or_off(v).map_err(named)?)
            }
            "client_idle_timeout" => {
                self.client_idle_timeout = Some(parse_secs_or_off(v).map_err(named)?)
            }
            _ => {
                return Err(ValueError::unknown(format!(
                    "unrecognized user parameter '{}'",
                    shown(key)
                )))
            }
        }
        Ok(())
    }
}
