//! The `[pgbouncer]` section: typed settings with PgBouncer 1.2x's defaults and units,
//! and the table `SHOW CONFIG` prints.
//!
//! Units follow PgBouncer: timeouts are seconds and may be fractional (`0.5`); where
//! PgBouncer documents `0` as "disabled" the field is an `Option` and `0` reads as
//! `None`. Boolean settings are integers in PgBouncer (`0`/`1`); we also accept
//! `true/false/on/off/yes/no`. Defaults are those of PgBouncer 1.21–1.23
//! (`server_check_query = select 1`, `max_prepared_statements = 200`), with 1.24.1's
//! `auth_query`, which refuses expired and NOLOGIN roles.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, ErrorKind, Location, ValueError};

/// How clients authenticate (`auth_type`). PgBouncer also has `cert`, `pam`, `ldap`
/// and `gss`; pgherd rejects those with a clear error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthType {
    /// SCRAM-SHA-256 against `auth_file`/`auth_query` secrets.
    ScramSha256,
    /// MD5 (or SCRAM, when the user's stored secret is a SCRAM verifier).
    Md5,
    /// Clear-text password over the wire.
    Plain,
    /// No password; the user must exist in `auth_file`.
    Trust,
    /// Per-connection method from `auth_hba_file`.
    Hba,
    /// No password, user name ignored.
    Any,
}

impl AuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::ScramSha256 => "scram-sha-256",
            AuthType::Md5 => "md5",
            AuthType::Plain => "plain",
            AuthType::Trust => "trust",
            AuthType::Hba => "hba",
            AuthType::Any => "any",
        }
    }

    fn parse(v: &str) -> Result<Self, ValueError> {
        match v.to_ascii_lowercase().as_str() {
            "scram-sha-256" => Ok(AuthType::ScramSha256),
            "md5" => Ok(AuthType::Md5),
            "plain" => Ok(AuthType::Plain),
            "trust" => Ok(AuthType::Trust),
            "hba" => Ok(AuthType::Hba),
            "any" => Ok(AuthType::Any),
            other @ ("cert" | "pam" | "ldap" | "gss" | "peer" | "crypt") => {
                Err(ValueError::unsupported(format!(
                    "auth_type '{other}' is not supported by pgherd \
                     (supported: scram-sha-256, md5, plain, trust, hba, any)"
                )))
            }
            _ => Err(ValueError::invalid(format!(
                "invalid value '{}': expected one of scram-sha-256, md5, plain, trust, hba, any",
                shown(v)
            ))),
        }
    }
}

/// When a server connection goes back to the pool (`pool_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PoolMode {
    #[default]
    Session,
    Transaction,
    Statement,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }

    pub(crate) fn parse(v: &str) -> Result<Self, ValueError> {
        match v.to_ascii_lowercase().as_str() {
            "session" => Ok(PoolMode::Session),
            "transaction" => Ok(PoolMode::Transaction),
            "statement" => Ok(PoolMode::Statement),
            _ => Err(ValueError::invalid(format!(
                "invalid value '{}': expected session, transaction or statement",
                shown(v)
            ))),
        }
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TLS mode (`client_tls_sslmode`, `server_tls_sslmode`), libpq's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(v: &str) -> Result<Self, ValueError> {
        match v.to_ascii_lowercase().as_str() {
            "disable" => Ok(SslMode::Disable),
            "allow" => Ok(SslMode::Allow),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            _ => Err(ValueError::invalid(format!(
                "invalid value '{}': expected disable, allow, prefer, require, verify-ca or verify-full",
                shown(v)
            ))),
        }
    }

    /// Whether the peer's certificate is checked against a CA.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// The `[pgbouncer]` section, typed. `Default` is PgBouncer's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    // --- listening (not changeable at RELOAD) ---
    /// TCP addresses; `*` means all; empty means Unix socket only.
    pub listen_addr: Vec<String>,
    pub listen_port: u16,
    pub listen_backlog: u32,
    /// `None` (set to empty) disables the Unix socket.
    pub unix_socket_dir: Option<PathBuf>,
    pub pidfile: Option<PathBuf>,
    pub pkt_buf: u32,

    // --- authentication ---
    pub auth_type: AuthType,
    pub auth_file: Option<PathBuf>,
    pub auth_hba_file: Option<PathBuf>,
    pub auth_query: String,
    pub auth_user: Option<String>,

    // --- pools ---
    pub pool_mode: PoolMode,
    pub max_client_conn: u32,
    pub default_pool_size: u32,
    pub min_pool_size: u32,
    pub reserve_pool_size: u32,
    /// `None`: the reserve pool is never used (`0`).
    pub reserve_pool_timeout: Option<Duration>,
    /// `None`: unlimited (`0`).
    pub max_db_connections: Option<u32>,
    /// `None`: unlimited (`0`).
    pub max_user_connections: Option<u32>,
    /// `0` disables prepared statement tracking in transaction mode.
    pub max_prepared_statements: u32,

    // --- server connections ---
    /// `None`: no reset query (set to empty).
    pub server_reset_query: Option<String>,
    pub server_reset_query_always: bool,
    /// `None`: no health check (set to empty).
    pub server_check_query: Option<String>,
    /// `0`: check on every reuse.
    pub server_check_delay: Duration,
    /// `0`: use a server connection once.
    pub server_lifetime: Duration,
    /// `None`: never close idle server connections (`0`).
    pub server_idle_timeout: Option<Duration>,
    pub server_connect_timeout: Duration,
    pub server_login_retry: Duration,

    // --- clients ---
    /// `None`: disabled (`0`).
    pub query_timeout: Option<Duration>,
    /// `None`: wait forever (`0`).
    pub query_wait_timeout: Option<Duration>,
    /// `None`: disabled (`0`).
    pub client_idle_timeout: Option<Duration>,
    /// `None`: disabled (`0`).
    pub client_login_timeout: Option<Duration>,
    /// `None`: disabled (`0`).
    pub idle_transaction_timeout: Option<Duration>,
    pub ignore_startup_parameters: Vec<String>,
    pub application_name_add_host: bool,

    // --- admin console ---
    pub admin_users: Vec<String>,
    pub stats_users: Vec<String>,
    pub stats_period: Duration,

    // --- logging ---
    pub logfile: Option<PathBuf>,
    pub syslog: bool,
    pub verbose: u8,
    pub log_connections: bool,
    pub log_disconnections: bool,
    pub log_pooler_errors: bool,

    // --- TLS ---
    pub client_tls_sslmode: SslMode,
    pub client_tls_cert_file: Option<PathBuf>,
    pub client_tls_key_file: Option<PathBuf>,
    pub client_tls_ca_file: Option<PathBuf>,
    pub server_tls_sslmode: SslMode,
    pub server_tls_ca_file: Option<PathBuf>,

    // --- network ---
    pub tcp_keepalive: bool,

    // --- pgherd extensions ---
    /// Where to serve Prometheus metrics over HTTP (`GET /metrics`); `None` (empty,
    /// the default): no metrics listener. In `pooler.yml` under `pgherd:`. Needs a
    /// restart to change.
    pub metrics_listen: Option<SocketAddr>,

    /// Other PgBouncer settings that pgherd accepts (validated, shown by `SHOW
    /// CONFIG`) but does not act on; only those set explicitly, normalized.
    pub passive: PassiveSettings,
}

/// PgBouncer 1.2x's default `auth_query`.
/// PgBouncer 1.24.1's default (CVE-2025-2291): a role whose password has expired gets
/// no password, and one without LOGIN no row, so neither logs in through the pooler —
/// not even onto a server connection the pool opened before the change.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin";

impl Default for Settings {
    fn default() -> Self {
        let secs = Duration::from_secs;
        Settings {
            listen_addr: Vec::new(),
            listen_port: 6432,
            listen_backlog: 128,
            unix_socket_dir: Some(PathBuf::from("/tmp")),
            pidfile: None,
            pkt_buf: 4096,
            auth_type: AuthType::Md5,
            auth_file: None,
            auth_hba_file: None,
            auth_query: DEFAULT_AUTH_QUERY.to_string(),
            auth_user: None,
            pool_mode: PoolMode::Session,
            max_client_conn: 100,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: Some(secs(5)),
            max_db_connections: None,
            max_user_connections: None,
            max_prepared_statements: 200,
            server_reset_query: Some("DISCARD ALL".to_string()),
            server_reset_query_always: false,
            server_check_query: Some("select 1".to_string()),
            server_check_delay: secs(30),
            server_lifetime: secs(3600),
            server_idle_timeout: Some(secs(600)),
            server_connect_timeout: secs(15),
            server_login_retry: secs(15),
            query_timeout: None,
            query_wait_timeout: Some(secs(120)),
            client_idle_timeout: None,
            client_login_timeout: Some(secs(60)),
            idle_transaction_timeout: None,
            ignore_startup_parameters: Vec::new(),
            application_name_add_host: false,
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            stats_period: secs(60),
            logfile: None,
            syslog: false,
            verbose: 0,
            log_connections: true,
            log_disconnections: true,
            log_pooler_errors: true,
            client_tls_sslmode: SslMode::Disable,
            client_tls_cert_file: None,
            client_tls_key_file: None,
            client_tls_ca_file: None,
            server_tls_sslmode: SslMode::Prefer,
            server_tls_ca_file: None,
            tcp_keepalive: true,
            metrics_listen: None,
            passive: PassiveSettings::default(),
        }
    }
}

/// PgBouncer settings pgherd accepts but does not act on, by name, as normalized
/// text. `Debug` hides values that may hold secrets (`auth_ldap_options`).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct PassiveSettings(BTreeMap<String, String>);

impl PassiveSettings {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for PassiveSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let v = if is_sensitive(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k, v)
            }))
            .finish()
    }
}

/// How a value is checked (and normalized) for settings pgherd does not act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Typed field of [`Settings`].
    Typed,
    Str,
    Bool,
    Uint,
    Seconds,
    Octal,
}

/// One `[pgbouncer]` setting as `SHOW CONFIG` lists it.
#[derive(Debug, Clone, Copy)]
pub struct SettingDef {
    pub name: &'static str,
    /// PgBouncer's default, as `SHOW CONFIG` prints it.
    pub default: &'static str,
    /// Whether `RELOAD` applies a change (PgBouncer: not `CF_NO_RELOAD`). Others need
    /// a restart; a reload keeps the old value and logs a warning.
    pub changeable: bool,
    pub(crate) kind: Kind,
}

const fn def(
    name: &'static str,
    default: &'static str,
    changeable: bool,
    kind: Kind,
) -> SettingDef {
    SettingDef {
        name,
        default,
        changeable,
        kind,
    }
}

use Kind::{Bool as B, Octal as O, Seconds as S, Str as T, Typed as X, Uint as U};

/// Every `[pgbouncer]` setting pgherd knows, in PgBouncer's `SHOW CONFIG` order
/// (alphabetical).
pub const SETTINGS: &[SettingDef] = &[
    def("admin_users", "", true, X),
    def("application_name_add_host", "0", true, X),
    def("auth_dbname", "", true, T),
    def("auth_file", "", true, X),
    def("auth_hba_file", "", true, X),
    def("auth_ident_file", "", true, T),
    def("auth_ldap_options", "", true, T),
    def("auth_query", DEFAULT_AUTH_QUERY, true, X),
    def("auth_type", "md5", true, X),
    def("auth_user", "", true, X),
    def("autodb_idle_timeout", "3600", true, S),
    def("cancel_wait_timeout", "10", true, S),
    def("client_idle_timeout", "0", true, X),
    def("client_login_timeout", "60", true, X),
    def("client_tls13_ciphers", "", true, T),
    def("client_tls_ca_file", "", true, X),
    def("client_tls_cert_file", "", true, X),
    def("client_tls_ciphers", "default", true, T),
    def("client_tls_dheparams", "auto", true, T),
    def("client_tls_ecdhcurve", "auto", true, T),
    def("client_tls_key_file", "", true, X),
    def("client_tls_protocols", "secure", true, T),
    def("client_tls_sslmode", "disable", true, X),
    def("conffile", "", true, T),
    def("default_pool_size", "20", true, X),
    def("disable_pqexec", "0", false, B),
    def("dns_max_ttl", "15", true, S),
    def("dns_nxdomain_ttl", "15", true, S),
    def("dns_zone_check_period", "0", true, S),
    def("idle_transaction_timeout", "0", true, X),
    def("ignore_startup_parameters", "", true, X),
    def("job_name", "pgbouncer", false, T),
    def("listen_addr", "", false, X),
    def("listen_backlog", "128", false, X),
    def("listen_port", "6432", false, X),
    def("log_connections", "1", true, X),
    def("log_disconnections", "1", true, X),
    def("log_pooler_errors", "1", true, X),
    def("log_stats", "1", true, B),
    def("logfile", "", true, X),
    def("max_client_conn", "100", true, X),
    def("max_db_client_connections", "0", true, U),
    def("max_db_connections", "0", true, X),
    def("max_packet_size", "2147483647", true, U),
    def("max_prepared_statements", "200", true, X),
    def("max_user_client_connections", "0", true, U),
    def("max_user_connections", "0", true, X),
    // pgherd's own (not in PgBouncer): the Prometheus `/metrics` HTTP listener.
    def("metrics_listen", "", false, X),
    def("min_pool_size", "0", true, X),
    def("peer_id", "0", false, U),
    def("pidfile", "", false, X),
    def("pkt_buf", "4096", false, X),
    def("pool_mode", "session", true, X),
    def("query_timeout", "0", true, X),
    def("query_wait_notify", "5", true, S),
    def("query_wait_timeout", "120", true, X),
    def("reserve_pool_size", "0", true, X),
    def("reserve_pool_timeout", "5", true, X),
    def("resolv_conf", "", false, T),
    def("sbuf_loopcnt", "5", true, U),
    def("scram_iterations", "4096", true, U),
    def("server_check_delay", "30", true, X),
    def("server_check_query", "select 1", true, X),
    def("server_connect_timeout", "15", true, X),
    def("server_fast_close", "0", true, B),
    def("server_idle_timeout", "600", true, X),
    def("server_lifetime", "3600", true, X),
    def("server_login_retry", "15", true, X),
    def("server_reset_query", "DISCARD ALL", true, X),
    def("server_reset_query_always", "0", true, X),
    def("server_round_robin", "0", true, B),
    def("server_tls13_ciphers", "", true, T),
    def("server_tls_ca_file", "", true, X),
    def("server_tls_cert_file", "", true, T),
    def("server_tls_ciphers", "default", true, T),
    def("server_tls_key_file", "", true, T),
    def("server_tls_protocols", "secure", true, T),
    def("server_tls_sslmode", "prefer", true, X),
    def("service_name", "", false, T),
    def("so_reuseport", "0", false, B),
    def("stats_period", "60", true, X),
    def("stats_users", "", true, X),
    def("suspend_timeout", "10", true, S),
    def("syslog", "0", true, X),
    def("syslog_facility", "daemon", true, T),
    def("syslog_ident", "pgbouncer", true, T),
    def("tcp_defer_accept", "1", true, U),
    def("tcp_keepalive", "1", true, X),
    def("tcp_keepcnt", "0", true, U),
    def("tcp_keepidle", "0", true, U),
    def("tcp_keepintvl", "0", true, U),
    def("tcp_socket_buffer", "0", true, U),
    def("tcp_user_timeout", "0", true, U),
    def("track_extra_parameters", "IntervalStyle", true, T),
    def("transaction_timeout", "0", true, S),
    def("unix_socket_dir", "/tmp", false, X),
    def("unix_socket_group", "", false, T),
    def("unix_socket_mode", "0777", false, O),
    def("user", "", false, T),
    def("verbose", "0", true, X),
];

/// Look up a setting's definition.
pub fn setting_def(name: &str) -> Option<&'static SettingDef> {
    SETTINGS.iter().find(|d| d.name == name)
}

/// Settings whose values may hold secrets: never echoed in errors or `Debug`.
pub(crate) fn is_sensitive(key: &str) -> bool {
    key == "auth_ldap_options" || key.contains("password")
}

/// One `SHOW CONFIG` row (PgBouncer's columns: key, value, default, changeable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRow {
    pub key: &'static str,
    pub value: String,
    pub default: &'static str,
    pub changeable: bool,
}

/// What [`Settings::set`] did with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// A setting pgherd implements.
    Done,
    /// A PgBouncer setting pgherd accepts but does not act on, set to a non-default.
    NotImplemented,
    /// Not a PgBouncer setting.
    Unknown,
}

/// Settings kept as text that pgherd does act on (read with [`Settings::get`] where
/// they are used), so setting them is no reason for a warning.
const READ_AS_TEXT: &[&str] = &["unix_socket_mode", "unix_socket_group", "so_reuseport"];

impl Settings {
    /// Set `key` (lower-case) from its text `value`, with PgBouncer's rules.
    pub(crate) fn set(&mut self, key: &str, value: &str) -> Result<Applied, ValueError> {
        let v = value.trim();
        let Some(def) = setting_def(key) else {
            return Ok(Applied::Unknown);
        };
        if def.kind != Kind::Typed {
            let normalized = match def.kind {
                Kind::Str => v.to_string(),
                Kind::Bool => bool_str(parse_bool(v)?),
                Kind::Uint => parse_u64(v)?.to_string(),
                Kind::Seconds => fmt_secs(parse_secs(v)?),
                Kind::Octal => format!("{:04o}", parse_octal(v)?),
                Kind::Typed => v.to_string(),
            };
            let differs = normalized != def.default && !READ_AS_TEXT.contains(&key);
            self.passive.0.insert(key.to_string(), normalized);
            return Ok(if differs {
                Applied::NotImplemented
            } else {
                Applied::Done
            });
        }
        match key {
            "listen_addr" => self.listen_addr = parse_list(v),
            "listen_port" => self.listen_port = parse_port(v)?,
            "listen_backlog" => self.listen_backlog = parse_u32(v)?,
            "unix_socket_dir" => self.unix_socket_dir = opt_path(v),
            "pidfile" => self.pidfile = opt_path(v),
            "pkt_buf" => self.pkt_buf = parse_min(v, 512)?,
            "auth_type" => self.auth_type = AuthType::parse(v)?,
            "auth_file" => self.auth_file = opt_path(v),
            "auth_hba_file" => self.auth_hba_file = opt_path(v),
            "auth_query" => self.auth_query = v.to_string(),
            "auth_user" => self.auth_user = opt_string(v),
            "pool_mode" => self.pool_mode = PoolMode::parse(v)?,
            "max_client_conn" => self.max_client_conn = parse_min(v, 1)?,
            "default_pool_size" => self.default_pool_size = parse_u32(v)?,
            "min_pool_size" => self.min_pool_size = parse_u32(v)?,
            "reserve_pool_size" => self.reserve_pool_size = parse_u32(v)?,
            "reserve_pool_timeout" => self.reserve_pool_timeout = parse_secs_or_off(v)?,
            "max_db_connections" => self.max_db_connections = parse_limit(v)?,
            "max_user_connections" => self.max_user_connections = parse_limit(v)?,
            "max_prepared_statements" => self.max_prepared_statements = parse_u32(v)?,
            "server_reset_query" => self.server_reset_query = opt_string(v),
            "server_reset_query_always" => self.server_reset_query_always = parse_bool(v)?,
            "server_check_query" => self.server_check_query = opt_string(v),
            "server_check_delay" => self.server_check_delay = parse_secs(v)?,
            "server_lifetime" => self.server_lifetime = parse_secs(v)?,
            "server_idle_timeout" => self.server_idle_timeout = parse_secs_or_off(v)?,
            "server_connect_timeout" => self.server_connect_timeout = parse_secs(v)?,
            "server_login_retry" => self.server_login_retry = parse_secs(v)?,
            "query_timeout" => self.query_timeout = parse_secs_or_off(v)?,
            "query_wait_timeout" => self.query_wait_timeout = parse_secs_or_off(v)?,
            "client_idle_timeout" => self.client_idle_timeout = parse_secs_or_off(v)?,
            "client_login_timeout" => self.client_login_timeout = parse_secs_or_off(v)?,
            "idle_transaction_timeout" => self.idle_transaction_timeout = parse_secs_or_off(v)?,
            "ignore_startup_parameters" => self.ignore_startup_parameters = parse_list(v),
            "application_name_add_host" => self.application_name_add_host = parse_bool(v)?,
            "admin_users" => self.admin_users = parse_list(v),
            "stats_users" => self.stats_users = parse_list(v),
            "stats_period" => self.stats_period = Duration::from_secs(parse_min(v, 1)?.into()),
            "logfile" => self.logfile = opt_path(v),
            "syslog" => self.syslog = parse_bool(v)?,
            "verbose" => self.verbose = parse_verbose(v)?,
            "log_connections" => self.log_connections = parse_bool(v)?,
            "log_disconnections" => self.log_disconnections = parse_bool(v)?,
            "log_pooler_errors" => self.log_pooler_errors = parse_bool(v)?,
            "client_tls_sslmode" => self.client_tls_sslmode = SslMode::parse(v)?,
            "client_tls_cert_file" => self.client_tls_cert_file = opt_path(v),
            "client_tls_key_file" => self.client_tls_key_file = opt_path(v),
            "client_tls_ca_file" => self.client_tls_ca_file = opt_path(v),
            "server_tls_sslmode" => self.server_tls_sslmode = SslMode::parse(v)?,
            "server_tls_ca_file" => self.server_tls_ca_file = opt_path(v),
            "tcp_keepalive" => self.tcp_keepalive = parse_bool(v)?,
            "metrics_listen" => self.metrics_listen = parse_listen(v)?,
            // A table entry marked Typed without a field here is a bug; treat the key
            // as unknown rather than panic.
            _ => return Ok(Applied::Unknown),
        }
        Ok(Applied::Done)
    }

    /// Set one setting by name with the same rules as the files (for the admin
    /// console's `SET key = value`). Unknown keys are errors here; whether the key is
    /// [`SettingDef::changeable`] at run time is the caller's decision.
    pub fn apply(&mut self, key: &str, value: &str) -> Result<(), String> {
        let key = key.trim().to_ascii_lowercase();
        match self.set(&key, value) {
            Ok(Applied::Unknown) => Err(format!("unknown setting '{}'", shown(&key))),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{key}: {}", e.message)),
        }
    }

    /// The current value of `key` as `SHOW CONFIG` prints it.
    pub fn get(&self, key: &str) -> Option<String> {
        let def = setting_def(key)?;
        if def.kind != Kind::Typed {
            return Some(
                self.passive
                    .get(key)
                    .map(str::to_string)
                    .unwrap_or_else(|| def.default.to_string()),
            );
        }
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let opt_secs = |d: &Option<Duration>| d.map(fmt_secs).unwrap_or_else(|| "0".into());
        let limit = |l: &Option<u32>| l.unwrap_or(0).to_string();
        let value = match key {
            "listen_addr" => self.listen_addr.join(","),
            "listen_port" => self.listen_port.to_string(),
            "listen_backlog" => self.listen_backlog.to_string(),
            "unix_socket_dir" => path(&self.unix_socket_dir),
            "pidfile" => path(&self.pidfile),
            "pkt_buf" => self.pkt_buf.to_string(),
            "auth_type" => self.auth_type.as_str().to_string(),
            "auth_file" => path(&self.auth_file),
            "auth_hba_file" => path(&self.auth_hba_file),
            "auth_query" => self.auth_query.clone(),
            "auth_user" => self.auth_user.clone().unwrap_or_default(),
            "pool_mode" => self.pool_mode.as_str().to_string(),
            "max_client_conn" => self.max_client_conn.to_string(),
            "default_pool_size" => self.default_pool_size.to_string(),
            "min_pool_size" => self.min_pool_size.to_string(),
            "reserve_pool_size" => self.reserve_pool_size.to_string(),
            "reserve_pool_timeout" => opt_secs(&self.reserve_pool_timeout),
            "max_db_connections" => limit(&self.max_db_connections),
            "max_user_connections" => limit(&self.max_user_connections),
            "max_prepared_statements" => self.max_prepared_statements.to_string(),
            "server_reset_query" => self.server_reset_query.clone().unwrap_or_default(),
            "server_reset_query_always" => bool_str(self.server_reset_query_always),
            "server_check_query" => self.server_check_query.clone().unwrap_or_default(),
            "server_check_delay" => fmt_secs(self.server_check_delay),
            "server_lifetime" => fmt_secs(self.server_lifetime),
            "server_idle_timeout" => opt_secs(&self.server_idle_timeout),
            "server_connect_timeout" => fmt_secs(self.server_connect_timeout),
            "server_login_retry" => fmt_secs(self.server_login_retry),
            "query_timeout" => opt_secs(&self.query_timeout),
            "query_wait_timeout" => opt_secs(&self.query_wait_timeout),
            "client_idle_timeout" => opt_secs(&self.client_idle_timeout),
            "client_login_timeout" => opt_secs(&self.client_login_timeout),
            "idle_transaction_timeout" => opt_secs(&self.idle_transaction_timeout),
            "ignore_startup_parameters" => self.ignore_startup_parameters.join(","),
            "application_name_add_host" => bool_str(self.application_name_add_host),
            "admin_users" => self.admin_users.join(","),
            "stats_users" => self.stats_users.join(","),
            "stats_period" => self.stats_period.as_secs().to_string(),
            "logfile" => path(&self.logfile),
            "syslog" => bool_str(self.syslog),
            "verbose" => self.verbose.to_string(),
            "log_connections" => bool_str(self.log_connections),
            "log_disconnections" => bool_str(self.log_disconnections),
            "log_pooler_errors" => bool_str(self.log_pooler_errors),
            "client_tls_sslmode" => self.client_tls_sslmode.as_str().to_string(),
            "client_tls_cert_file" => path(&self.client_tls_cert_file),
            "client_tls_key_file" => path(&self.client_tls_key_file),
            "client_tls_ca_file" => path(&self.client_tls_ca_file),
            "server_tls_sslmode" => self.server_tls_sslmode.as_str().to_string(),
            "server_tls_ca_file" => path(&self.server_tls_ca_file),
            "tcp_keepalive" => bool_str(self.tcp_keepalive),
            "metrics_listen" => self
                .metrics_listen
                .map(|a| a.to_string())
                .unwrap_or_default(),
            _ => def.default.to_string(),
        };
        Some(value)
    }

    /// Every setting with its value, default and changeable flag, for `SHOW CONFIG`.
    pub fn show_config(&self) -> Vec<ConfigRow> {
        SETTINGS
            .iter()
            .map(|d| ConfigRow {
                key: d.name,
                value: self.get(d.name).unwrap_or_default(),
                default: d.default,
                changeable: d.changeable,
            })
            .collect()
    }

    /// Whether `user` may run every admin console command.
    pub fn is_admin_user(&self, user: &str) -> bool {
        self.admin_users.iter().any(|u| u == user)
    }

    /// Whether `user` may run read-only admin console commands (`SHOW …`).
    pub fn is_stats_user(&self, user: &str) -> bool {
        self.is_admin_user(user) || self.stats_users.iter().any(|u| u == user)
    }
}

/// Cross-setting checks, after all values are set. `set_at` says where each key was
/// last set, so the error can point at it.
pub(crate) fn check(
    s: &Settings,
    set_at: &BTreeMap<String, Location>,
    errors: &mut Vec<ConfigError>,
) {
    let at = |key: &str| {
        set_at
            .get(key)
            .cloned()
            .or_else(|| set_at.values().next().cloned())
            .unwrap_or_else(|| Location::new("<config>", None))
    };
    let mut fail = |key: &str, message: String| {
        errors.push(ConfigError::new(
            at(key),
            Some(format!("pgbouncer.{key}")),
            ErrorKind::Inconsistent,
            message,
        ));
    };
    if s.auth_type == AuthType::Hba && s.auth_hba_file.is_none() {
        fail("auth_type", "auth_type = hba needs auth_hba_file".into());
    }
    if s.client_tls_sslmode != SslMode::Disable
        && (s.client_tls_cert_file.is_none() || s.client_tls_key_file.is_none())
    {
        fail(
            "client_tls_sslmode",
            format!(
                "client_tls_sslmode = {} needs client_tls_cert_file and client_tls_key_file",
                s.client_tls_sslmode.as_str()
            ),
        );
    }
    if s.client_tls_sslmode.verifies() && s.client_tls_ca_file.is_none() {
        fail(
            "client_tls_sslmode",
            format!(
                "client_tls_sslmode = {} needs client_tls_ca_file",
                s.client_tls_sslmode.as_str()
            ),
        );
    }
    if s.server_tls_sslmode.verifies() && s.server_tls_ca_file.is_none() {
        fail(
            "server_tls_sslmode",
            format!(
                "server_tls_sslmode = {} needs server_tls_ca_file",
                s.server_tls_sslmode.as_str()
            ),
        );
    }
}

// ---- value parsers, shared with [databases]/[users] ----

/// Show a bad value in a message, cut to a sane length.
pub(crate) fn shown(v: &str) -> String {
    const MAX: usize = 80;
    let mut s: String = v.chars().filter(|c| !c.is_control()).take(MAX).collect();
    if v.chars().count() > MAX {
        s.push('…');
    }
    s
}

pub(crate) fn parse_u64(v: &str) -> Result<u64, ValueError> {
    let digits = v.strip_prefix('+').unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueError::invalid(format!(
            "invalid value '{}': expected a non-negative integer",
            shown(v)
        )));
    }
    digits
        .parse::<u64>()
        .map_err(|_| ValueError::invalid(format!("value '{}' is too large", shown(v))))
}

pub(crate) fn parse_u32(v: &str) -> Result<u32, ValueError> {
    let n = parse_u64(v)?;
    u32::try_from(n).map_err(|_| {
        ValueError::invalid(format!(
            "value '{}' is too large (at most {})",
            shown(v),
            u32::MAX
        ))
    })
}

fn parse_min(v: &str, min: u32) -> Result<u32, ValueError> {
    let n = parse_u32(v)?;
    if n < min {
        return Err(ValueError::invalid(format!(
            "value {n} is too small (at least {min})"
        )));
    }
    Ok(n)
}

pub(crate) fn parse_port(v: &str) -> Result<u16, ValueError> {
    let n = parse_u64(v)?;
    u16::try_from(n).map_err(|_| {
        ValueError::invalid(format!("invalid port '{}': expected 0 to 65535", shown(v)))
    })
}

/// `0` means unlimited.
pub(crate) fn parse_limit(v: &str) -> Result<Option<u32>, ValueError> {
    Ok(Some(parse_u32(v)?).filter(|&n| n > 0))
}

fn parse_verbose(v: &str) -> Result<u8, ValueError> {
    let n = parse_u64(v)?;
    u8::try_from(n)
        .ok()
        .filter(|&n| n <= 3)
        .ok_or_else(|| ValueError::invalid(format!("invalid verbose level '{}': 0 to 3", shown(v))))
}

fn parse_octal(v: &str) -> Result<u32, ValueError> {
    if v.is_empty() || !v.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(ValueError::invalid(format!(
            "invalid value '{}': expected an octal file mode such as 0777",
            shown(v)
        )));
    }
    u32::from_str_radix(v, 8)
        .ok()
        .filter(|&m| m <= 0o7777)
        .ok_or_else(|| ValueError::invalid(format!("file mode '{}' is too large", shown(v))))
}

pub(crate) fn parse_bool(v: &str) -> Result<bool, ValueError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        _ => Err(ValueError::invalid(format!(
            "invalid value '{}': expected 0 or 1",
            shown(v)
        ))),
    }
}

/// Seconds, possibly fractional, not negative.
pub(crate) fn parse_secs(v: &str) -> Result<Duration, ValueError> {
    let bad = || {
        ValueError::invalid(format!(
            "invalid value '{}': expected a number of seconds, e.g. 30 or 0.5",
            shown(v)
        ))
    };
    if v.is_empty()
        || !v
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return Err(bad());
    }
    let secs: f64 = v.parse().map_err(|_| bad())?;
    if secs < 0.0 {
        return Err(ValueError::invalid(format!(
            "invalid value '{}': seconds cannot be negative",
            shown(v)
        )));
    }
    Duration::try_from_secs_f64(secs)
        .map_err(|_| ValueError::invalid(format!("value '{}' is too large", shown(v))))
}

/// Seconds where `0` means disabled.
pub(crate) fn parse_secs_or_off(v: &str) -> Result<Option<Duration>, ValueError> {
    Ok(Some(parse_secs(v)?).filter(|d| !d.is_zero()))
}

/// Seconds as PgBouncer prints them: `30`, `0.5`.
pub(crate) fn fmt_secs(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{}", d.as_secs_f64())
    }
}

fn bool_str(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

/// A comma-separated list; blanks around items and empty items are dropped.
pub(crate) fn parse_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `host:port` for a listener (`127.0.0.1:9127`, `[::1]:9127`; `*:9127` is every IPv4
/// address); empty: none.
fn parse_listen(v: &str) -> Result<Option<SocketAddr>, ValueError> {
    if v.is_empty() {
        return Ok(None);
    }
    let bad = || {
        ValueError::invalid(format!(
            "invalid address '{}': expected host:port with an IP address, e.g. 127.0.0.1:9127",
            shown(v)
        ))
    };
    if let Some(port) = v.strip_prefix("*:") {
        let port = parse_port(port).map_err(|_| bad())?;
        return Ok(Some(SocketAddr::from(([0, 0, 0, 0], port))));
    }
    v.parse::<SocketAddr>().map(Some).map_err(|_| bad())
}

fn opt_path(v: &str) -> Option<PathBuf> {
    (!v.is_empty()).then(|| PathBuf::from(v))
}

fn opt_string(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_typed_keys_round_trip() {
        let names: Vec<_> = SETTINGS.iter().map(|d| d.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        // Every default parses and shows back as itself.
        let mut s = Settings::default();
        for d in SETTINGS {
            assert!(
                matches!(s.set(d.name, d.default), Ok(Applied::Done)),
                "default of {} does not apply",
                d.name
            );
            assert_eq!(s.get(d.name).as_deref(), Some(d.default), "{}", d.name);
        }
        let expected = Settings {
            passive: s.passive.clone(),
            ..Settings::default()
        };
        assert_eq!(s, expected);
    }

    #[test]
    fn seconds_parse_and_print() {
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(fmt_secs(Duration::from_millis(1500)), "1.5");
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("1e400").is_err());
        assert!(parse_secs("NaN").is_err());
        assert!(parse_secs("inf").is_err());
        assert!(parse_secs("5s").is_err());
    }

    #[test]
    fn metrics_listen_is_an_address_or_empty() {
        assert_eq!(parse_listen(""), Ok(None));
        assert_eq!(
            parse_listen("127.0.0.1:9127"),
            Ok(Some(SocketAddr::from(([127, 0, 0, 1], 9127))))
        );
        assert_eq!(
            parse_listen("*:9127"),
            Ok(Some(SocketAddr::from(([0, 0, 0, 0], 9127))))
        );
        assert!(parse_listen("[::1]:9127").is_ok_and(|a| a.is_some()));
        assert!(parse_listen("localhost:9127").is_err());
        assert!(parse_listen("127.0.0.1").is_err());
        assert!(parse_listen("*:70000").is_err());
        let mut s = Settings::default();
        s.apply("metrics_listen", "127.0.0.1:9127")
            .expect("applies");
        assert_eq!(s.get("metrics_listen").as_deref(), Some("127.0.0.1:9127"));
    }
}
