//! Node configuration: Patroni's `patroni.yml`, loaded and validated.
//!
//! A Patroni config file works unchanged: Patroni's keys keep their meanings and
//! defaults, keys pgherd does not implement produce a warning (never a failure), and every
//! invalid value is reported with its key path. All errors of a file are collected and
//! reported together, one per line.
//!
//! The YAML is walked as a [`yaml_serde::Value`] tree rather than derived with serde, so
//! that unknown keys can be reported by their full path and errors can be collected
//! instead of stopping at the first one.
//!
//! The result is plain typed structs ([`NodeConfig`]) that the node agent maps onto its
//! runtime types; nothing here depends on the other pgherd crates.

use pgherd_dcs::etcd::{EtcdAuth, EtcdTls};
use pgherd_http::{ClientTls, ServerTls, TlsError, TlsFile, VerifyClient};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use yaml_serde::Value;

/// A loaded config and what the user should be told about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub config: NodeConfig,
    /// One line each, starting with the key path (`postgresql.foo: unknown key, ignored`).
    pub warnings: Vec<String>,
}

/// One node's configuration (Patroni's `patroni.yml`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeConfig {
    /// `scope`: the cluster name.
    pub scope: String,
    /// `namespace` as written (default `/service`). Slashes are normalised by the DCS key
    /// layout, so `/db/` and `/db` mean the same.
    pub namespace: String,
    /// `name`: this member's name.
    pub name: String,
    pub restapi: RestApiConfig,
    /// How this node and `pgherd ctl` call members' REST APIs over HTTPS, as Patroni:
    /// trust `ctl.cacert` (else `restapi.cafile`, else the system's CAs), present
    /// `ctl.certfile`/`ctl.keyfile`, or with `ctl.insecure` check nothing.
    pub client_tls: ClientTls,
    /// From `etcd3:` or `etcd:`.
    pub dcs: DcsConfig,
    pub bootstrap: BootstrapConfig,
    pub postgresql: PostgresqlConfig,
    pub tags: TagsConfig,
    /// `watchdog`: the device, and pgherd's fencer process.
    pub watchdog: WatchdogConfig,
}

/// A `host:port` address. IPv6 hosts are stored without brackets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    /// `host:port`, with `[...]` around IPv6 hosts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `postgresql.listen`: `h1,h2:port`, PostgreSQL's `listen_addresses` and `port`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListenAddresses {
    pub hosts: Vec<String>,
    pub port: u16,
}

impl ListenAddresses {
    /// The value for PostgreSQL's `listen_addresses` (`h1,h2`).
    pub fn listen_addresses(&self) -> String {
        self.hosts.join(",")
    }
}

/// `restapi:`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RestApiConfig {
    /// `restapi.listen`: where the REST API listens.
    pub listen: HostPort,
    /// `restapi.connect_address`: how others reach it (default: `listen`, with a
    /// wildcard host replaced by 127.0.0.1).
    pub connect_address: HostPort,
    /// `restapi.authentication`: basic auth for the mutating endpoints.
    pub authentication: Option<BasicAuth>,
    /// `restapi.certfile` and friends: serve HTTPS (the files were read and fit).
    pub tls: Option<ServerTls>,
}

/// `restapi.authentication`: both keys are required when the section is present.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The distributed configuration store.
#[derive(Clone, PartialEq, Eq)]
pub enum DcsConfig {
    /// `etcd3:` or `etcd:` (both use etcd's v3 API).
    Etcd {
        /// `http://host:port` or `https://host:port`, in the order given.
        endpoints: Vec<String>,
        username: Option<String>,
        password: Option<String>,
        /// `protocol: https` or `https://` endpoints: `cacert`, `cert`, `key` as PEM.
        tls: Option<EtcdTls>,
    },
}

impl fmt::Debug for DcsConfig {
    /// Never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let DcsConfig::Etcd {
            endpoints,
            username,
            password,
            tls,
        } = self;
        f.debug_struct("Etcd")
            .field("endpoints", endpoints)
            .field("username", username)
            .field("password", &password.as_ref().map(|_| "********"))
            .field("tls", tls)
            .finish()
    }
}

impl DcsConfig {
    /// How to reach etcd: endpoints, TLS and authentication.
    pub fn etcd_access(&self) -> pgherd_dcs::etcd::EtcdAccess {
        let DcsConfig::Etcd {
            endpoints,
            username,
            password,
            tls,
        } = self;
        pgherd_dcs::etcd::EtcdAccess {
            endpoints: endpoints.clone(),
            tls: tls.clone(),
            auth: username.as_ref().map(|u| EtcdAuth {
                username: u.clone(),
                password: password.clone().unwrap_or_default(),
            }),
        }
    }
}

impl Default for DcsConfig {
    fn default() -> Self {
        DcsConfig::Etcd {
            endpoints: Vec::new(),
            username: None,
            password: None,
            tls: None,
        }
    }
}

/// `bootstrap:`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BootstrapConfig {
    /// `bootstrap.dcs`: the cluster's initial `config` key ([`DynamicConfig::to_json`]).
    pub dcs: DynamicConfig,
    /// `bootstrap.initdb` as initdb arguments (`--data-checksums`, `--encoding=UTF8`).
    pub initdb: Vec<String>,
    /// `bootstrap.pg_hba`: lines written at bootstrap.
    pub pg_hba: Option<Vec<String>>,
}

/// The cluster-wide dynamic configuration (`bootstrap.dcs`, and the DCS `config` key):
/// one type and one parser, in `pgherd_ha::dynamic`.
pub use pgherd_ha::dynamic::{DynamicConfig, DynamicPostgresql};

/// `postgresql:` (the local instance).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PostgresqlConfig {
    /// `postgresql.listen` (port defaults to 5432 when omitted, as in Patroni).
    pub listen: ListenAddresses,
    /// `postgresql.connect_address` (default: the first listen host, a wildcard host
    /// replaced by 127.0.0.1).
    pub connect_address: HostPort,
    pub data_dir: PathBuf,
    /// Where `pg_ctl`, `initdb`, ... live; `None`: search `PATH`.
    pub bin_dir: Option<PathBuf>,
    /// Default `/tmp/pgpass0`.
    pub pgpass: PathBuf,
    pub authentication: PgAuthentication,
    /// Local parameters; they override the dynamic ones (`bootstrap.dcs.postgresql.parameters`,
    /// later the DCS `config` key). Values as PostgreSQL reads them.
    pub parameters: BTreeMap<String, String>,
    /// `postgresql.pg_hba`: when set, pg_hba.conf is written from these lines.
    pub pg_hba: Option<Vec<String>>,
    /// Default 60 s.
    pub pg_ctl_timeout: Duration,
    /// pgherd extension: the OS user PostgreSQL runs as. `None`: the caller decides
    /// (`postgres` when running as root, else the current user).
    pub os_user: Option<String>,
    /// Local overrides of the dynamic `postgresql.use_pg_rewind` / `use_slots` (Patroni
    /// lets the local section override them).
    pub use_pg_rewind: Option<bool>,
    pub use_slots: Option<bool>,
    /// `postgresql.basebackup` as pg_basebackup arguments (`--max-rate=100M`).
    pub basebackup: Vec<String>,
    /// `postgresql.callbacks` (`on_start`, `on_stop`, `on_restart`, `on_reload`,
    /// `on_role_change`) and `postgresql.pre_promote`, each split into words.
    pub callbacks: pgherd_ha::Callbacks,
}

/// `postgresql.authentication`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PgAuthentication {
    pub superuser: Credentials,
    pub replication: Credentials,
    pub rewind: Option<Credentials>,
}

/// A PostgreSQL role: `username` required, `password` optional (`Debug` hides it).
pub use pgherd_postgres::Credentials;

/// `tags:`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TagsConfig {
    pub nofailover: bool,
    pub noloadbalance: bool,
    pub clonefrom: bool,
    pub nosync: bool,
    /// Any other tag (`replicatefrom`, `failover_priority`, ...), kept as written.
    pub other: BTreeMap<String, Json>,
}

/// One invalid setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted key path (`postgresql.listen`); empty for the document itself.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not YAML at all; `line` and `column` are 1-based.
    #[error("{file}{}: invalid YAML: {message}", location(*line, *column))]
    Yaml {
        file: String,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    /// YAML, but settings are missing or invalid: all of them, one per line.
    #[error("{file}: {} invalid setting{}:\n{}", errors.len(), if errors.len() == 1 { "" } else { "s" }, join_lines(errors))]
    Invalid {
        file: String,
        errors: Vec<FieldError>,
    },
}

impl ConfigError {
    /// The invalid settings (empty for read and YAML errors).
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ConfigError::Invalid { errors, .. } => errors,
            _ => &[],
        }
    }
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

fn join_lines(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

mod env;
mod watchdog;
pub use watchdog::WatchdogConfig;

/// Read and validate the node config at `path`, with the `PATRONI_*` environment
/// variables overriding its keys (as in Patroni).
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_with_env(&text, &path.display().to_string(), std::env::vars())
}

/// The config without a file, as Patroni does: the YAML in `PATRONI_CONFIGURATION`, or
/// else the `PATRONI_*` variables alone.
pub fn load_from_environment() -> Result<Loaded, ConfigError> {
    match std::env::var(env::CONFIGURATION) {
        Ok(yaml) if !yaml.trim().is_empty() => parse(&yaml, env::CONFIGURATION),
        _ => parse_with_env("", "the PATRONI_* environment", std::env::vars()),
    }
}

/// Validate a node config given as YAML text; `source` names it in messages.
pub fn parse(yaml: &str, source: &str) -> Result<Loaded, ConfigError> {
    parse_with_env(yaml, source, std::iter::empty::<(String, String)>())
}

/// [`parse`], with the `PATRONI_*` variables among `vars` overriding the text's keys.
pub fn parse_with_env<I, K, V>(yaml: &str, source: &str, vars: I) -> Result<Loaded, ConfigError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut doc: Value = if yaml.trim().is_empty() {
        Value::Null
    } else {
        yaml_serde::from_str(yaml).map_err(|e| yaml_error(source, &e))?
    };
    doc.apply_merge().map_err(|e| yaml_error(source, &e))?;
    let overrides = env::overrides(vars);
    let mut ctx = Ctx::default();
    if !overrides.applied.is_empty() {
        env::merge(&mut doc, &overrides.tree);
        let applied: Vec<String> = overrides
            .applied
            .iter()
            .map(|(var, key)| format!("{var} sets {key}"))
            .collect();
        ctx.warn("", format!("from the environment: {}", applied.join(", ")));
    }
    for var in &overrides.unknown {
        ctx.warn("", format!("{var}: not a Patroni setting, ignored"));
    }
    let config = node_config(&mut ctx, &doc);
    if ctx.errors.is_empty() {
        Ok(Loaded {
            config,
            warnings: ctx.warnings,
        })
    } else {
        // An error may come from a variable rather than the file: say which were used.
        let file = match overrides.applied.len() {
            0 => source.to_string(),
            _ => format!(
                "{source} (with {})",
                overrides
                    .applied
                    .iter()
                    .map(|(var, _)| var.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Err(ConfigError::Invalid {
            file,
            errors: ctx.errors,
        })
    }
}

/// Validate the DCS `config` key (Patroni's dynamic configuration JSON). Missing keys take
/// Patroni's defaults; keys pgherd does not interpret are kept in `other`.
pub fn parse_dynamic(json: &Json) -> Result<DynamicConfig, ConfigError> {
    pgherd_ha::dynamic::parse(json).map_err(|problems| ConfigError::Invalid {
        file: "DCS config".into(),
        errors: problems
            .into_iter()
            .map(|p| FieldError {
                path: p.path,
                message: p.message,
            })
            .collect(),
    })
}

fn yaml_error(source: &str, e: &yaml_serde::Error) -> ConfigError {
    let loc = e.location();
    ConfigError::Yaml {
        file: source.to_string(),
        line: loc.as_ref().map(|l| l.line()),
        column: loc.as_ref().map(|l| l.column()),
        message: e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// The walk.

#[derive(Default)]
struct Ctx {
    errors: Vec<FieldError>,
    warnings: Vec<String>,
}

impl Ctx {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.to_string(),
            message: message.into(),
        });
    }
    fn warn(&mut self, path: &str, message: impl fmt::Display) {
        if path.is_empty() {
            self.warnings.push(message.to_string());
        } else {
            self.warnings.push(format!("{path}: {message}"));
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A mapping being consumed key by key; what is left at the end is unknown.
struct Section<'a> {
    path: String,
    entries: Vec<(String, &'a Value)>,
}

impl<'a> Section<'a> {
    fn of(ctx: &mut Ctx, path: &str, value: Option<&'a Value>) -> Self {
        let mut entries = Vec::new();
        match value.map(untag) {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(m)) => {
                for (k, v) in m {
                    entries.push((key_text(k), v));
                }
            }
            Some(other) => {
                let what = if path.is_empty() {
                    "the document"
                } else {
                    "this key"
                };
                ctx.error(
                    path,
                    format!("expected a mapping for {what}, got {}", show(other)),
                );
            }
        }
        Section {
            path: path.to_string(),
            entries,
        }
    }

    fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn has(&self, key: &str) -> bool {
        self.entries
            .iter()
            .any(|(k, v)| k == key && !matches!(untag(v), Value::Null))
    }

    /// Remove `key`; `None` when absent or null.
    fn take(&mut self, key: &str) -> Option<&'a Value> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        let (_, v) = self.entries.remove(i);
        let v = untag(v);
        (!matches!(v, Value::Null)).then_some(v)
    }

    /// A key Patroni knows and pgherd does not implement: warn when set.
    fn ignore(&mut self, ctx: &mut Ctx, key: &str, why: &str) {
        if self.take(key).is_some() {
            ctx.warn(&self.path(key), why);
        }
    }

    /// A key pgherd accepts and does not need: no warning.
    fn accept(&mut self, key: &str) {
        let _ = self.take(key);
    }

    fn finish(self, ctx: &mut Ctx) {
        for (k, _) in self.entries {
            ctx.warn(&join(&self.path, &k), "unknown key, ignored");
        }
    }

    fn string(&mut self, ctx: &mut Ctx, key: &str) -> Option<String> {
        let v = self.take(key)?;
        string_value(ctx, &self.path(key), v)
    }

    fn required_string(&mut self, ctx: &mut Ctx, key: &str) -> String {
        let path = self.path(key);
        match self.take(key) {
            None => {
                ctx.error(&path, "required, not set");
                String::new()
            }
            Some(v) => match string_value(ctx, &path, v) {
                Some(s) if s.trim().is_empty() => {
                    ctx.error(&path, "must not be empty");
                    s
                }
                Some(s) => s,
                None => String::new(),
            },
        }
    }

    fn boolean(&mut self, ctx: &mut Ctx, key: &str) -> Option<bool> {
        let v = self.take(key)?;
        bool_value(ctx, &self.path(key), v)
    }

    fn seconds(&mut self, ctx: &mut Ctx, key: &str) -> Option<Duration> {
        let v = self.take(key)?;
        seconds_value(ctx, &self.path(key), v)
    }
}

/// `postgresql.callbacks` and `postgresql.pre_promote`: command lines, split as a shell
/// would split them.
fn callbacks(ctx: &mut Ctx, s: &mut Section) -> pgherd_ha::Callbacks {
    let command = |ctx: &mut Ctx, path: String, v: Option<String>| -> Option<Vec<String>> {
        let line = v?;
        match pgherd_ha::spec::split_command_line(&line) {
            Some(words) if !words.is_empty() => Some(words),
            Some(_) => {
                ctx.error(&path, "must not be empty");
                None
            }
            None => {
                ctx.error(&path, "has an unclosed quote");
                None
            }
        }
    };
    let mut out = pgherd_ha::Callbacks::default();
    let path = s.path("pre_promote");
    let pre_promote = s.string(ctx, "pre_promote");
    out.pre_promote = command(ctx, path, pre_promote);
    let Some(v) = s.take("callbacks") else {
        return out;
    };
    let mut cb = Section::of(ctx, &s.path("callbacks"), Some(v));
    for (key, slot) in [
        ("on_start", &mut out.on_start),
        ("on_stop", &mut out.on_stop),
        ("on_restart", &mut out.on_restart),
        ("on_reload", &mut out.on_reload),
        ("on_role_change", &mut out.on_role_change),
    ] {
        let path = cb.path(key);
        let line = cb.string(ctx, key);
        *slot = command(ctx, path, line);
    }
    cb.finish(ctx);
    out
}

fn untag(mut v: &Value) -> &Value {
    while let Value::Tagged(t) = v {
        v = &t.value;
    }
    v
}

fn key_text(k: &Value) -> String {
    match untag(k) {
        Value::String(s) => s.clone(),
        other => scalar_text(other).unwrap_or_else(|| show(other)),
    }
}

/// A scalar as text (`true`, `30`, `on`); `None` for null, lists and mappings.
fn scalar_text(v: &Value) -> Option<String> {
    match untag(v) {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A value as shown in an error message: strings quoted, scalars as written.
fn show(v: &Value) -> String {
    match untag(v) {
        Value::Null => "nothing".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(_) => "a tagged value".into(),
    }
}

fn string_value(ctx: &mut Ctx, path: &str, v: &Value) -> Option<String> {
    let s = scalar_text(v);
    if s.is_none() {
        ctx.error(path, format!("expected a string, got {}", show(v)));
    }
    s
}

fn bool_value(ctx: &mut Ctx, path: &str, v: &Value) -> Option<bool> {
    // Scalars only: a list or mapping is no boolean (and is not worth converting).
    let parsed = match untag(v) {
        Value::Bool(_) | Value::String(_) | Value::Number(_) => yaml_json(v)
            .ok()
            .and_then(|j| pgherd_ha::dynamic::boolean_value(&j)),
        _ => None,
    };
    if parsed.is_none() {
        ctx.error(path, format!("expected true or false, got {}", show(v)));
    }
    parsed
}

/// A non-negative number, from a YAML number or a numeric string.
fn number_value(v: &Value) -> Option<f64> {
    let f = match untag(v) {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }?;
    (f.is_finite() && f >= 0.0).then_some(f)
}

fn seconds_value(ctx: &mut Ctx, path: &str, v: &Value) -> Option<Duration> {
    // Durations up to ~31 years; beyond that is surely a mistake, and from_secs_f64 panics
    // on overflow.
    match number_value(v).filter(|f| *f < 1e9) {
        Some(f) => Some(Duration::from_secs_f64(f)),
        None => {
            ctx.error(
                path,
                format!("must be a number of seconds, got {}", show(v)),
            );
            None
        }
    }
}

/// A PostgreSQL parameter value: any scalar, booleans as `on`/`off`.
fn parameter_value(ctx: &mut Ctx, path: &str, v: &Value) -> Option<String> {
    match untag(v) {
        Value::Bool(true) => Some("on".into()),
        Value::Bool(false) => Some("off".into()),
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        other => {
            ctx.error(
                path,
                format!(
                    "expected a parameter value (string, number or boolean), got {}",
                    show(other)
                ),
            );
            None
        }
    }
}

fn parameters(ctx: &mut Ctx, path: &str, v: Option<&Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let section = Section::of(ctx, path, v);
    for (k, v) in section.entries {
        let p = join(path, &k);
        if matches!(untag(v), Value::Null) {
            ctx.error(&p, "expected a parameter value, got nothing");
        } else if let Some(s) = parameter_value(ctx, &p, v) {
            out.insert(k, s);
        }
    }
    out
}

fn to_json(ctx: &mut Ctx, path: &str, v: &Value) -> Option<Json> {
    match serde_json::to_value(v) {
        Ok(j) => Some(j),
        Err(e) => {
            ctx.error(path, format!("cannot be represented as JSON: {e}"));
            None
        }
    }
}

/// A list of scalars (`pg_hba` lines, hosts). With `comma_separated`, a single string
/// `a,b` is accepted too.
fn string_list(
    ctx: &mut Ctx,
    path: &str,
    v: &Value,
    comma_separated: bool,
    what: &str,
) -> Option<Vec<String>> {
    match untag(v) {
        Value::Sequence(items) => {
            let mut out = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match scalar_text(item) {
                    Some(s) => out.push(s),
                    None => {
                        ok = false;
                        ctx.error(
                            &format!("{path}[{i}]"),
                            format!("expected a string, got {}", show(item)),
                        );
                    }
                }
            }
            ok.then_some(out)
        }
        Value::String(s) if comma_separated => Some(
            s.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
        ),
        other => {
            ctx.error(
                path,
                format!("expected a list of {what}, got {}", show(other)),
            );
            None
        }
    }
}

/// Patroni's option lists (`bootstrap.initdb`, `postgresql.basebackup`): strings
/// (`- data-checksums` → `--data-checksums`) or single-key maps (`- encoding: UTF8` →
/// `--encoding=UTF8`); a plain mapping is accepted too.
fn option_args(ctx: &mut Ctx, path: &str, v: &Value) -> Vec<String> {
    fn arg(name: &str, value: Option<String>) -> String {
        let name = name.trim().trim_start_matches('-');
        match value {
            Some(v) => format!("--{name}={v}"),
            None => format!("--{name}"),
        }
    }
    let mut out = Vec::new();
    fn pair(ctx: &mut Ctx, p: &str, k: &Value, val: &Value, out: &mut Vec<String>) {
        let name = key_text(k);
        if name.trim().trim_start_matches('-').is_empty() {
            ctx.error(p, "empty option name");
            return;
        }
        match scalar_text(val) {
            Some(s) => out.push(arg(&name, Some(s))),
            None => ctx.error(
                &join(p, &name),
                format!("expected an option value, got {}", show(val)),
            ),
        }
    }
    match untag(v) {
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                match untag(item) {
                    Value::String(s) if !s.trim().trim_start_matches('-').is_empty() => {
                        out.push(arg(s, None))
                    }
                    Value::Mapping(m) if m.len() == 1 => {
                        for (k, val) in m {
                            pair(ctx, &p, k, val, &mut out);
                        }
                    }
                    other => ctx.error(
                        &p,
                        format!(
                            "expected an option (`- name` or `- name: value`), got {}",
                            show(other)
                        ),
                    ),
                }
            }
        }
        Value::Mapping(m) => {
            for (k, val) in m {
                pair(ctx, path, k, val, &mut out);
            }
        }
        other => ctx.error(
            path,
            format!("expected a list of options, got {}", show(other)),
        ),
    }
    out
}

// ---------------------------------------------------------------------------------------
// Addresses.

const WILDCARD_HOSTS: [&str; 4] = ["0.0.0.0", "::", "*", ""];

/// Split `host:port` / `[v6]:port` / `host`; `None` port when omitted.
fn split_host_port(s: &str) -> Result<(String, Option<String>), ()> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(())?;
        return match after {
            "" => Ok((host.to_string(), None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host.to_string(), Some(port.to_string()))),
                None => Err(()),
            },
        };
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Ok((host.to_string(), Some(port.to_string()))),
        None => Ok((s.to_string(), None)),
    }
}

fn port_value(ctx: &mut Ctx, path: &str, whole: &str, port: &str) -> Option<u16> {
    let port = port.trim();
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        ctx.error(path, format!("{whole:?} is not host:port"));
        return None;
    }
    match port.parse::<u64>() {
        Ok(p) if (1..=65535).contains(&p) => u16::try_from(p).ok(),
        _ => {
            ctx.error(path, format!("port {port} out of range (1-65535)"));
            None
        }
    }
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && !h
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == ',' || c == '[' || c == ']')
}

/// `host:port` (one host). `default_port` applies when the port is omitted.
fn host_port_value(
    ctx: &mut Ctx,
    path: &str,
    v: &Value,
    default_port: Option<u16>,
) -> Option<HostPort> {
    let s = string_value(ctx, path, v)?;
    let Ok((host, port)) = split_host_port(&s) else {
        ctx.error(path, format!("{s:?} is not host:port"));
        return None;
    };
    let host = host.trim().to_string();
    if !valid_host(&host) {
        ctx.error(path, format!("{s:?} is not host:port"));
        return None;
    }
    let port = match (port, default_port) {
        (Some(p), _) => port_value(ctx, path, &s, &p)?,
        (None, Some(d)) => d,
        (None, None) => {
            ctx.error(path, format!("{s:?} is not host:port"));
            return None;
        }
    };
    Some(HostPort { host, port })
}

/// `h1,h2:port` (PostgreSQL's `listen_addresses` and `port`; port default 5432).
fn listen_value(ctx: &mut Ctx, path: &str, v: &Value) -> Option<ListenAddresses> {
    let s = string_value(ctx, path, v)?;
    let trimmed = s.trim();
    let (hosts, port) = if trimmed.ends_with(']') {
        (trimmed.to_string(), None)
    } else {
        match trimmed.rsplit_once(':') {
            // `::1` without brackets or port: not a port.
            Some((h, p)) if !h.ends_with(':') => (h.to_string(), Some(p.to_string())),
            Some(_) => (trimmed.to_string(), None),
            None => (trimmed.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => port_value(ctx, path, &s, &p)?,
        None => 5432,
    };
    let hosts: Vec<String> = hosts
        .split(',')
        .map(|h| {
            h.trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        })
        .collect();
    if hosts.iter().any(|h| !valid_host(h)) {
        ctx.error(path, format!("{s:?} is not host:port or host1,host2:port"));
        return None;
    }
    Some(ListenAddresses { hosts, port })
}

/// The address others use: `connect_address` when set, else derived from the listen host.
/// A wildcard host cannot be connected to: 127.0.0.1 instead, with a warning.
fn connect_address(
    ctx: &mut Ctx,
    section: &mut Section<'_>,
    listen: Option<HostPort>,
    default_port: Option<u16>,
) -> HostPort {
    let path = section.path("connect_address");
    if let Some(v) = section.take("connect_address") {
        let Some(mut addr) = host_port_value(ctx, &path, v, default_port) else {
            return HostPort::default();
        };
        if WILDCARD_HOSTS.contains(&addr.host.as_str()) {
            let was = addr.to_string();
            addr.host = "127.0.0.1".into();
            ctx.warn(
                &path,
                format_args!("{was} is not an address others can connect to; using {addr}"),
            );
        }
        return addr;
    }
    let Some(mut addr) = listen else {
        return HostPort::default();
    };
    if WILDCARD_HOSTS.contains(&addr.host.as_str()) {
        let host = addr.host.clone();
        addr.host = "127.0.0.1".into();
        ctx.warn(
            &path,
            format_args!(
                "not set and the listen host {host:?} is not an address others can connect \
                 to; using {addr} (set it for a cluster spanning hosts)"
            ),
        );
    }
    addr
}

// ---------------------------------------------------------------------------------------
// Sections.

const UNSUPPORTED_SECTIONS: [&str; 3] = ["log", "citus", "exhibitor"];
const OTHER_DCS: [&str; 4] = ["kubernetes", "consul", "zookeeper", "raft"];

fn node_config(ctx: &mut Ctx, doc: &Value) -> NodeConfig {
    if !matches!(untag(doc), Value::Mapping(_) | Value::Null) {
        // Every required key would be missing too: one error says it all.
        ctx.error(
            "",
            format!("expected a mapping for the document, got {}", show(doc)),
        );
        return NodeConfig::default();
    }
    let mut root = Section::of(ctx, "", Some(doc));

    let scope = root.required_string(ctx, "scope");
    check_name(ctx, "scope", &scope);
    let namespace = root
        .string(ctx, "namespace")
        .unwrap_or_else(|| "/service".into());
    let name = root.required_string(ctx, "name");
    check_name(ctx, "name", &name);

    let restapi = restapi(ctx, &mut root);
    let client_tls = ctl(ctx, &mut root, &restapi);
    let dcs = dcs(ctx, &mut root);
    let bootstrap = bootstrap(ctx, &mut root);
    let postgresql = postgresql(ctx, &mut root);
    let tags = tags(ctx, &mut root);
    let watchdog = watchdog::watchdog(ctx, &mut root);

    for key in UNSUPPORTED_SECTIONS {
        root.ignore(ctx, key, "not supported, ignored");
    }
    root.finish(ctx);

    NodeConfig {
        scope,
        namespace,
        name,
        restapi,
        client_tls,
        dcs,
        bootstrap,
        postgresql,
        tags,
        watchdog,
    }
}

fn check_name(ctx: &mut Ctx, path: &str, value: &str) {
    if value.contains('/') {
        ctx.error(
            path,
            format!("{value:?} must not contain '/' (it is part of DCS keys)"),
        );
    }
}

fn restapi(ctx: &mut Ctx, root: &mut Section<'_>) -> RestApiConfig {
    let path = root.path("restapi");
    let v = root.take("restapi");
    if v.is_none() {
        ctx.error(
            &path,
            "required, not set (needs at least `listen: host:port`)",
        );
        return RestApiConfig::default();
    }
    let mut s = Section::of(ctx, &path, v);
    let listen_path = s.path("listen");
    let listen = match s.take("listen") {
        Some(v) => host_port_value(ctx, &listen_path, v, None),
        None => {
            ctx.error(&listen_path, "required, not set");
            None
        }
    };
    let connect_address = connect_address(ctx, &mut s, listen.clone(), None);
    let authentication = s.take("authentication").map(|v| {
        let mut a = Section::of(ctx, &s.path("authentication"), Some(v));
        let username = a.required_string(ctx, "username");
        let password = a.required_string(ctx, "password");
        a.finish(ctx);
        BasicAuth { username, password }
    });
    let tls = restapi_tls(ctx, &mut s);
    for key in ["ciphers", "https_extra_headers"] {
        s.ignore(
            ctx,
            key,
            "not supported yet, ignored (rustls' default cipher suites are used)",
        );
    }
    for key in [
        "http_extra_headers",
        "request_queue_size",
        "allowlist",
        "allowlist_include_members",
        "server_tokens",
    ] {
        s.ignore(ctx, key, "not supported yet, ignored");
    }
    s.finish(ctx);
    RestApiConfig {
        listen: listen.unwrap_or_default(),
        connect_address,
        authentication,
        tls,
    }
}

/// A TLS file key: its path, or an error when it is not a string.
fn tls_file(ctx: &mut Ctx, s: &mut Section<'_>, key: &str) -> Option<TlsFile> {
    let path = s.path(key);
    let v = s.string(ctx, key)?;
    if v.trim().is_empty() {
        ctx.error(&path, "must not be empty");
        return None;
    }
    Some(TlsFile::new(path, v))
}

/// Report a TLS problem on the key it names.
fn tls_error(ctx: &mut Ctx, e: TlsError) {
    match e {
        TlsError::File { key, path, reason } => {
            ctx.error(&key, format!("{}: {reason}", path.display()))
        }
        TlsError::Setting { key, reason } => ctx.error(&key, reason),
    }
}

/// `restapi.certfile`, `keyfile`, `keyfile_password`, `cafile`, `verify_client`: HTTPS
/// when `certfile` is set. The files are read now, so a wrong path or a key that does
/// not fit its certificate is reported with the config's other errors.
fn restapi_tls(ctx: &mut Ctx, s: &mut Section<'_>) -> Option<ServerTls> {
    let certfile = tls_file(ctx, s, "certfile");
    let keyfile = tls_file(ctx, s, "keyfile");
    let keyfile_password = s.string(ctx, "keyfile_password");
    let cafile = tls_file(ctx, s, "cafile");
    let verify_path = s.path("verify_client");
    let verify_client = match s.string(ctx, "verify_client") {
        None => VerifyClient::None,
        Some(v) => VerifyClient::parse(&v).unwrap_or_else(|| {
            ctx.error(
                &verify_path,
                format!("expected none, optional or required, got {v:?}"),
            );
            VerifyClient::None
        }),
    };
    let Some(certfile) = certfile else {
        for (key, set) in [
            ("keyfile", keyfile.is_some()),
            ("keyfile_password", keyfile_password.is_some()),
            ("verify_client", verify_client != VerifyClient::None),
        ] {
            if set {
                ctx.warn(
                    &s.path(key),
                    "ignored: the REST API serves plain HTTP without `certfile`",
                );
            }
        }
        return None;
    };
    let tls = ServerTls {
        certfile,
        keyfile,
        keyfile_password,
        cafile,
        verify_client,
        verify_client_key: verify_path,
    };
    match tls.acceptor() {
        Ok(_) => Some(tls),
        Err(e) => {
            tls_error(ctx, e);
            None
        }
    }
}

/// `ctl:`: how this node's agent and `pgherd ctl` call REST APIs (Patroni uses the same
/// keys for both): `cacert` (else `restapi.cafile`), `certfile`, `keyfile`, `insecure`.
fn ctl(ctx: &mut Ctx, root: &mut Section<'_>, restapi: &RestApiConfig) -> ClientTls {
    let path = root.path("ctl");
    let v = root.take("ctl");
    let mut s = Section::of(ctx, &path, v);
    let cacert = tls_file(ctx, &mut s, "cacert");
    let certfile = tls_file(ctx, &mut s, "certfile");
    let keyfile = tls_file(ctx, &mut s, "keyfile");
    // Accepted for an unencrypted key (encrypted ones are refused when read).
    let _ = s.string(ctx, "keyfile_password");
    let insecure = s.boolean(ctx, "insecure").unwrap_or(false);
    for key in ["authentication", "auth"] {
        s.ignore(
            ctx,
            key,
            "not supported yet, ignored (restapi.authentication is used)",
        );
    }
    s.finish(ctx);
    let cafile = restapi.tls.as_ref().and_then(|t| t.cafile.clone());
    let tls = ClientTls {
        cacert: cacert.or(cafile),
        certfile,
        keyfile,
        insecure,
    };
    if let Err(e) = tls.rustls_config() {
        tls_error(ctx, e);
    }
    tls
}

fn dcs(ctx: &mut Ctx, root: &mut Section<'_>) -> DcsConfig {
    let key = if root.has("etcd3") {
        if root.has("etcd") {
            root.ignore(ctx, "etcd", "ignored: `etcd3` is set and takes precedence");
        }
        Some("etcd3")
    } else if root.has("etcd") {
        Some("etcd")
    } else {
        None
    };
    match key {
        Some(key) => {
            for other in OTHER_DCS {
                root.ignore(
                    ctx,
                    other,
                    format!("not supported, ignored (using {key})").as_str(),
                );
            }
            let path = root.path(key);
            let v = root.take(key);
            etcd(ctx, &path, v)
        }
        None => {
            match OTHER_DCS.iter().find(|k| root.has(k)) {
                Some(other) => {
                    let _ = root.take(other);
                    ctx.error(
                        other,
                        "this DCS is not supported: pgherd uses etcd (add an `etcd3:` \
                         section with `hosts`)",
                    );
                }
                None => ctx.error(
                    "",
                    "no DCS configured: add an `etcd3:` (or `etcd:`) section with `hosts` \
                     (or `host`, `url`, `urls`)",
                ),
            }
            DcsConfig::default()
        }
    }
}

fn etcd(ctx: &mut Ctx, path: &str, v: Option<&Value>) -> DcsConfig {
    let mut s = Section::of(ctx, path, v);
    let protocol_path = s.path("protocol");
    let mut https = match s.string(ctx, "protocol").as_deref().map(str::trim) {
        None | Some("http") => false,
        Some("https") => true,
        Some(other) => {
            ctx.error(
                &protocol_path,
                format!("expected http or https, got {other:?}"),
            );
            false
        }
    };
    let protocol = if https { "https" } else { "http" };
    let username = s.string(ctx, "username").or_else(|| s.string(ctx, "user"));
    let password = s.string(ctx, "password");

    // Patroni's precedence: hosts, then host; url/urls last.
    let mut endpoints = Vec::new();
    let mut chosen: Option<String> = None;
    let mut any_error = false;
    for key in ["hosts", "host", "urls", "url"] {
        let key_path = s.path(key);
        let Some(v) = s.take(key) else { continue };
        if let Some(first) = &chosen {
            ctx.warn(&key_path, format_args!("ignored: `{first}` is set"));
            continue;
        }
        chosen = Some(key.to_string());
        let items = match key {
            "hosts" | "urls" => string_list(ctx, &key_path, v, true, "host:port"),
            _ => string_value(ctx, &key_path, v).map(|s| vec![s]),
        };
        let Some(items) = items else {
            any_error = true;
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let item_path = if items.len() > 1 || matches!(key, "hosts" | "urls") {
                format!("{key_path}[{i}]")
            } else {
                key_path.clone()
            };
            match etcd_endpoint(ctx, &item_path, item, protocol) {
                Some(e) => {
                    https |= e.starts_with("https://");
                    endpoints.push(e)
                }
                None => any_error = true,
            }
        }
    }
    if endpoints.is_empty() && !any_error {
        ctx.error(
            path,
            "no etcd endpoints: set `hosts`, `host`, `url` or `urls`",
        );
    }
    let tls = etcd_tls(ctx, &mut s, https);
    if password.is_some() && username.is_none() {
        ctx.error(&s.path("password"), "set, but no `username` to go with it");
    }
    for key in ["srv", "srv_suffix", "proxy", "use_proxies"] {
        s.ignore(ctx, key, "not supported yet, ignored");
    }
    s.finish(ctx);
    DcsConfig::Etcd {
        endpoints,
        username,
        password,
        tls,
    }
}

/// `cacert` (or `ca_cert`), `cert`, `key` of an etcd section, read now: PEM for tonic,
/// checked here so that errors name the key and the file.
fn etcd_tls(ctx: &mut Ctx, s: &mut Section<'_>, https: bool) -> Option<EtcdTls> {
    let cacert = tls_file(ctx, s, "cacert").or_else(|| tls_file(ctx, s, "ca_cert"));
    let cert = tls_file(ctx, s, "cert");
    let key = tls_file(ctx, s, "key");
    // Accepted for an unencrypted key (encrypted ones are refused when read).
    let _ = s.string(ctx, "key_password");
    if !https {
        for (name, set) in [("cacert", cacert.is_some()), ("cert", cert.is_some())] {
            if set {
                ctx.warn(
                    &s.path(name),
                    "ignored: etcd is reached over plain http (set `protocol: https`)",
                );
            }
        }
        return None;
    }
    let Some(cacert) = cacert else {
        ctx.error(
            &s.path("cacert"),
            "required with https: the CA that signed etcd's certificate",
        );
        return None;
    };
    let mut tls = EtcdTls::default();
    let ca = cacert.certificates().and_then(|_| cacert.read());
    match ca {
        Ok(pem) => tls.ca = Some(pem),
        Err(e) => tls_error(ctx, e),
    }
    match (cert, key) {
        (None, None) => {}
        (None, Some(key)) => ctx.error(&key.key, "set, but no `cert` to go with it"),
        (Some(cert), key) => {
            let key = key.unwrap_or_else(|| cert.clone());
            let pems = cert
                .check_pair(&key)
                .and_then(|_| cert.read())
                .and_then(|c| key.read().map(|k| (c, k)));
            match pems {
                Ok(pair) => tls.identity = Some(pair),
                Err(e) => tls_error(ctx, e),
            }
        }
    }
    Some(tls)
}

/// `host:port`, `host` (port 2379) → `protocol://host:port`; `http://host:port` and
/// `https://host:port` keep their scheme.
fn etcd_endpoint(ctx: &mut Ctx, path: &str, item: &str, protocol: &str) -> Option<String> {
    let item = item.trim();
    let (scheme, rest) = if let Some(rest) = item.strip_prefix("http://") {
        ("http", rest)
    } else if let Some(rest) = item.strip_prefix("https://") {
        ("https", rest)
    } else if item.contains("://") {
        ctx.error(
            path,
            format!("{item:?}: only http:// and https:// endpoints are supported"),
        );
        return None;
    } else {
        (protocol, item)
    };
    let rest = rest.trim_end_matches('/');
    let addr = host_port_value(ctx, path, &Value::String(rest.to_string()), Some(2379))?;
    Some(format!("{scheme}://{addr}"))
}

fn bootstrap(ctx: &mut Ctx, root: &mut Section<'_>) -> BootstrapConfig {
    let path = root.path("bootstrap");
    let v = root.take("bootstrap");
    let mut s = Section::of(ctx, &path, v);
    let dcs_path = s.path("dcs");
    let dcs_value = s.take("dcs");
    let dcs = dynamic_config(ctx, &dcs_path, dcs_value);
    let initdb = match s.take("initdb") {
        Some(v) => option_args(ctx, &s.path("initdb"), v),
        None => Vec::new(),
    };
    let pg_hba = s
        .take("pg_hba")
        .and_then(|v| string_list(ctx, &join(&path, "pg_hba"), v, false, "pg_hba lines"));
    s.ignore(
        ctx,
        "users",
        "not supported, ignored (Patroni 3 dropped it too; create users in post_bootstrap)",
    );
    let method_path = s.path("method");
    if let Some(method) = s.string(ctx, "method") {
        if method != "initdb" {
            ctx.warn(
                &method_path,
                "custom bootstrap methods are not supported yet; using initdb",
            );
            s.ignore(
                ctx,
                &method,
                "custom bootstrap method, not supported yet; ignored",
            );
        }
    }
    for key in ["post_bootstrap", "post_init"] {
        s.ignore(ctx, key, "not supported yet, ignored");
    }
    s.finish(ctx);
    BootstrapConfig {
        dcs,
        initdb,
        pg_hba,
    }
}

/// `bootstrap.dcs`, read by the one dynamic-config parser; its problems become errors
/// under `path`, and keys it does not interpret warnings.
fn dynamic_config(ctx: &mut Ctx, path: &str, v: Option<&Value>) -> DynamicConfig {
    let json = match v.map(untag) {
        None | Some(Value::Null) => Json::Object(Default::default()),
        Some(v) => match yaml_json(v) {
            Ok(j) => j,
            Err(e) => {
                ctx.error(path, format!("cannot be represented as JSON: {e}"));
                return DynamicConfig::default();
            }
        },
    };
    match pgherd_ha::dynamic::parse(&json) {
        Ok(config) => {
            let kept = "not interpreted by pgherd; kept in the cluster config as written";
            for k in config.other.keys() {
                ctx.warn(&join(path, k), kept);
            }
            for k in config.postgresql.other.keys() {
                ctx.warn(&join(path, &format!("postgresql.{k}")), kept);
            }
            config
        }
        Err(problems) => {
            for p in problems {
                let at = if p.path.is_empty() {
                    path.to_string()
                } else {
                    join(path, &p.path)
                };
                ctx.error(&at, p.message);
            }
            pgherd_ha::dynamic::read(&json).config()
        }
    }
}

/// A YAML value as JSON: tags dropped, keys as text.
fn yaml_json(v: &Value) -> Result<Json, String> {
    Ok(match untag(v) {
        Value::Null | Value::Tagged(_) => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Number(n) => serde_json::to_value(n).map_err(|e| e.to_string())?,
        Value::String(s) => Json::String(s.clone()),
        Value::Sequence(items) => {
            Json::Array(items.iter().map(yaml_json).collect::<Result<_, _>>()?)
        }
        Value::Mapping(m) => Json::Object(
            m.iter()
                .map(|(k, v)| Ok((key_text(k), yaml_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

fn postgresql(ctx: &mut Ctx, root: &mut Section<'_>) -> PostgresqlConfig {
    let path = root.path("postgresql");
    let v = root.take("postgresql");
    if v.is_none() {
        ctx.error(
            &path,
            "required, not set (needs at least `listen`, `data_dir` and `authentication`)",
        );
        return PostgresqlConfig::default();
    }
    let mut s = Section::of(ctx, &path, v);

    let listen_path = s.path("listen");
    let listen = match s.take("listen") {
        Some(v) => listen_value(ctx, &listen_path, v),
        None => {
            ctx.error(&listen_path, "required, not set");
            None
        }
    };
    let first = listen.as_ref().map(|l| HostPort {
        host: l.hosts.first().cloned().unwrap_or_default(),
        port: l.port,
    });
    let connect_address = connect_address(ctx, &mut s, first, Some(5432));
    let data_dir = PathBuf::from(s.required_string(ctx, "data_dir"));
    let bin_dir = s.string(ctx, "bin_dir").map(PathBuf::from);
    let pgpass = s
        .string(ctx, "pgpass")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/pgpass0"));
    let authentication = pg_authentication(ctx, &mut s);
    let params_path = s.path("parameters");
    let params_value = s.take("parameters");
    let parameters = parameters(ctx, &params_path, params_value);
    let pg_hba = s
        .take("pg_hba")
        .and_then(|v| string_list(ctx, &join(&path, "pg_hba"), v, false, "pg_hba lines"));
    let pg_ctl_timeout = s
        .seconds(ctx, "pg_ctl_timeout")
        .unwrap_or(Duration::from_secs(60));
    let os_user = s.string(ctx, "os_user");
    let use_pg_rewind = s.boolean(ctx, "use_pg_rewind");
    let use_slots = s.boolean(ctx, "use_slots");
    let basebackup = match s.take("basebackup") {
        Some(v) => option_args(ctx, &join(&path, "basebackup"), v),
        None => Vec::new(),
    };
    let methods_path = s.path("create_replica_methods");
    if let Some(v) = s.take("create_replica_methods") {
        if let Some(methods) = string_list(ctx, &methods_path, v, false, "method names") {
            let others: Vec<&String> = methods.iter().filter(|m| *m != "basebackup").collect();
            if !others.is_empty() {
                ctx.warn(
                    &methods_path,
                    format_args!(
                        "only basebackup is supported yet; {} ignored",
                        others
                            .iter()
                            .map(|m| m.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
    }
    for key in ["use_unix_socket", "use_unix_socket_repl"] {
        s.accept(key);
    }
    let callbacks = callbacks(ctx, &mut s);
    for key in [
        "before_stop",
        "config_dir",
        "custom_conf",
        "pg_ident",
        "recovery_conf",
        "remove_data_directory_on_rewind_failure",
        "remove_data_directory_on_diverged_timelines",
        "proxy_address",
        "bin_name",
        "retry_timeout",
    ] {
        s.ignore(ctx, key, "not supported yet, ignored");
    }
    // Custom replica-creation methods are sections named after them.
    s.finish(ctx);

    PostgresqlConfig {
        listen: listen.unwrap_or_default(),
        connect_address,
        data_dir,
        bin_dir,
        pgpass,
        authentication,
        parameters,
        pg_hba,
        pg_ctl_timeout,
        os_user,
        use_pg_rewind,
        use_slots,
        basebackup,
        callbacks,
    }
}

fn pg_authentication(ctx: &mut Ctx, pg: &mut Section<'_>) -> PgAuthentication {
    let path = pg.path("authentication");
    let v = pg.take("authentication");
    if v.is_none() {
        ctx.error(
            &path,
            "required, not set (needs `superuser` and `replication` with `username`)",
        );
        return PgAuthentication::default();
    }
    let mut s = Section::of(ctx, &path, v);
    fn user(ctx: &mut Ctx, s: &mut Section<'_>, key: &str, required: bool) -> Option<Credentials> {
        let p = s.path(key);
        match s.take(key) {
            None => {
                if required {
                    ctx.error(&p, "required, not set (needs `username`)");
                }
                None
            }
            Some(v) => {
                let mut u = Section::of(ctx, &p, Some(v));
                let username = u.required_string(ctx, "username");
                let password = u.string(ctx, "password");
                for key in [
                    "sslmode",
                    "sslkey",
                    "sslpassword",
                    "sslcert",
                    "sslrootcert",
                    "sslcrl",
                    "sslcrldir",
                    "gssencmode",
                    "channel_binding",
                ] {
                    u.ignore(ctx, key, "not supported yet, ignored");
                }
                u.finish(ctx);
                Some(Credentials { username, password })
            }
        }
    }
    let superuser = user(ctx, &mut s, "superuser", true).unwrap_or_default();
    let replication = user(ctx, &mut s, "replication", true).unwrap_or_default();
    let rewind = user(ctx, &mut s, "rewind", false);
    s.finish(ctx);
    PgAuthentication {
        superuser,
        replication,
        rewind,
    }
}

fn tags(ctx: &mut Ctx, root: &mut Section<'_>) -> TagsConfig {
    let path = root.path("tags");
    let v = root.take("tags");
    let mut s = Section::of(ctx, &path, v);
    let nofailover = s.boolean(ctx, "nofailover").unwrap_or(false);
    let noloadbalance = s.boolean(ctx, "noloadbalance").unwrap_or(false);
    let clonefrom = s.boolean(ctx, "clonefrom").unwrap_or(false);
    let nosync = s.boolean(ctx, "nosync").unwrap_or(false);
    let mut other = BTreeMap::new();
    for (k, v) in std::mem::take(&mut s.entries) {
        let p = join(&path, &k);
        if let Some(j) = to_json(ctx, &p, v) {
            other.insert(k, j);
        }
    }
    TagsConfig {
        nofailover,
        noloadbalance,
        clonefrom,
        nosync,
        other,
    }
}
