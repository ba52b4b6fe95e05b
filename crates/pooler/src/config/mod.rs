//! The pooler's configuration: PgBouncer's `pgbouncer.ini`, `userlist.txt` and
//! `auth_hba_file` read as-is, and pgherd's YAML equivalent `pooler.yml`.
//!
//! Both file formats produce the same typed [`PoolerConfig`]:
//!
//! ```text
//! pgbouncer.ini ──ini::read──▶ entries (section, key, value, file:line) ─┐
//!                                                                        ├─▶ Builder ─▶ PoolerConfig
//! pooler.yml ────yaml::read──▶ entries (section, key, value, file:line) ─┘
//! ```
//!
//! Every value goes through the same setters ([`Settings::set`], [`DatabaseConfig`] and
//! [`UserConfig`] parameter parsing), so a YAML file and the INI file it mirrors cannot
//! disagree. All errors of a file are collected ([`ConfigErrors`]), each naming the file,
//! the line and the key; unknown keys are [`Warning`]s, not failures.
//!
//! Secrets (database passwords, userlist passwords) are wrapped in types whose `Debug`
//! prints `<redacted>`, and no error message ever quotes them.
//!
//! # Reload
//! [`PoolerConfig`] is `Clone + PartialEq`; [`diff`] lists what changed between two
//! configurations and whether each change can be applied at `RELOAD` (see
//! [`SettingDef::changeable`]; PgBouncer's `CF_NO_RELOAD` settings — listen_addr,
//! listen_port, listen_backlog, unix_socket_*, pidfile, pkt_buf, user, … — need a restart).

mod cluster;
mod connstr;
mod databases;
pub mod hba;
pub mod ini;
mod reload;
mod settings;
pub mod userlist;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use cluster::{
    Balance, CheckKind, CheckedServer, ClusterConfig, Etcd3Config, Fallback, HealthSpec, Route,
    RouteRole, RouteSpec, DEFAULT_CHECK_PORT, DEFAULT_DCS_TIMEOUT, DEFAULT_NAMESPACE,
};
pub use databases::{DatabaseConfig, Password, UserConfig};
pub use hba::{ConnInfo, HbaMethod, HbaRule, HbaRules};
pub use reload::{diff, Change};
pub use settings::{
    AuthType, ConfigRow, PassiveSettings, PoolMode, SettingDef, Settings, SslMode, SETTINGS,
};
pub use userlist::{Secret, SecretKind, Userlist};

/// Where a value came from: a file and, when known, a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    pub file: PathBuf,
    pub line: Option<usize>,
}

impl Location {
    pub fn new(file: impl Into<PathBuf>, line: Option<usize>) -> Self {
        Location {
            file: file.into(),
            line,
        }
    }

    pub fn line(file: impl Into<PathBuf>, line: usize) -> Self {
        Location::new(file, Some(line))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}", self.file.display(), line),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// What kind of mistake a [`ConfigError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The file could not be read (missing, unreadable, not UTF-8).
    Io,
    /// A line is not `[section]`, `key = value`, a comment or `%include`.
    Syntax,
    /// `%include` nested too deep or in a cycle.
    Include,
    /// A known key has a value it cannot take.
    InvalidValue,
    /// A parameter inside a connection string (or YAML mapping) that does not exist.
    UnknownParameter,
    /// A PgBouncer feature pgherd does not implement (e.g. `auth_type = pam`).
    Unsupported,
    /// A setting another setting depends on is missing or contradicts it.
    Inconsistent,
}

/// One configuration error, naming the file, line and key.
///
/// The message never contains a password or secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub location: Location,
    /// `section.key`, e.g. `pgbouncer.max_client_conn` or `databases.mydb`.
    pub key: Option<String>,
    pub kind: ErrorKind,
    pub message: String,
}

impl ConfigError {
    pub fn new(
        location: Location,
        key: Option<String>,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            location,
            key,
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: {}: {}", self.location, key, self.message),
            None => write!(f, "{}: {}", self.location, self.message),
        }
    }
}

/// All errors found in a configuration (loading does not stop at the first one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    pub(crate) fn single(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Something accepted but worth telling the operator about (unknown key, ignored
/// section, a PgBouncer setting pgherd does not act on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub location: Location,
    /// `section.key`, or `section` for whole-section warnings.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.location, self.key, self.message)
    }
}

/// One `key = value` line as written (after `%include` expansion), for diagnostics and
/// for tools that want the file's own spelling. `Debug` hides values that may hold
/// secrets (connection strings, LDAP options).
#[derive(Clone, PartialEq, Eq)]
pub struct RawSetting {
    pub section: String,
    pub key: String,
    pub value: String,
    pub location: Location,
}

impl RawSetting {
    /// Whether the value may contain a secret (and is hidden from `Debug`).
    pub fn is_sensitive(&self) -> bool {
        self.section != "pgbouncer" || settings::is_sensitive(&self.key)
    }
}

impl fmt::Debug for RawSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value: &dyn fmt::Debug = if self.is_sensitive() {
            &"<redacted>"
        } else {
            &self.value
        };
        f.debug_struct("RawSetting")
            .field("section", &self.section)
            .field("key", &self.key)
            .field("value", value)
            .field("location", &self.location)
            .finish()
    }
}

/// The typed pooler configuration. Built from `pgbouncer.ini` or `pooler.yml`; two
/// files that say the same thing produce equal values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolerConfig {
    /// The `[pgbouncer]` section / `pgbouncer:` mapping.
    pub settings: Settings,
    /// `[databases]`, by client-side database name (without the `*` fallback).
    pub databases: BTreeMap<String, DatabaseConfig>,
    /// The `* = …` fallback database, used for names not in `databases`.
    pub fallback_database: Option<DatabaseConfig>,
    /// `[users]`, by user name.
    pub users: BTreeMap<String, UserConfig>,
    /// pgherd extension (YAML `cluster:`, INI `[pgherd]`): where the clusters'
    /// topology lives.
    pub cluster: Option<ClusterConfig>,
    /// pgherd extension (YAML only): listeners that route by role.
    pub routes: Vec<Route>,
}

/// A loaded configuration with what the loader noticed on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: PoolerConfig,
    pub warnings: Vec<Warning>,
    /// Every `key = value` as written, in file order (includes expanded).
    pub raw: Vec<RawSetting>,
}

impl Loaded {
    /// Send the warnings to the log.
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!(location = %w.location, key = %w.key, "{}", w.message);
        }
    }
}

/// The file format of a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PgBouncer's `pgbouncer.ini`.
    Ini,
    /// pgherd's `pooler.yml`.
    Yaml,
}

impl Format {
    /// `.yml`/`.yaml` are YAML, anything else is PgBouncer INI.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("yml") || ext.eq_ignore_ascii_case("yaml") => {
                Format::Yaml
            }
            _ => Format::Ini,
        }
    }
}

impl PoolerConfig {
    /// Load a file, choosing the format by extension ([`Format::from_path`]).
    pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
        match Format::from_path(path) {
            Format::Ini => Self::from_ini_file(path),
            Format::Yaml => Self::from_yaml_file(path),
        }
    }

    /// Load a `pgbouncer.ini`, following `%include` directives.
    pub fn from_ini_file(path: &Path) -> Result<Loaded, ConfigErrors> {
        let doc = ini::read_file(path)?;
        build(doc)
    }

    /// Parse `pgbouncer.ini` text; `name` is used in messages and relative `%include`
    /// paths are resolved against its directory.
    pub fn from_ini_str(text: &str, name: &Path) -> Result<Loaded, ConfigErrors> {
        let doc = ini::read_str(text, name)?;
        build(doc)
    }

    /// Load a `pooler.yml`.
    pub fn from_yaml_file(path: &Path) -> Result<Loaded, ConfigErrors> {
        let text = read_text(path)?;
        Self::from_yaml_str(&text, path)
    }

    /// Parse `pooler.yml` text; `name` is used in messages.
    pub fn from_yaml_str(text: &str, name: &Path) -> Result<Loaded, ConfigErrors> {
        let doc = yaml::read_str(text, name)?;
        build(doc)
    }

    /// The database a client asking for `name` gets: the exact entry, else the `*`
    /// fallback with `dbname` defaulting to `name`. The admin console (`pgbouncer`) is
    /// never a configured database.
    ///
    /// `NAME@ROLE` names the pools of `NAME` served on a `routes` listener of that role
    /// (see [`PoolerConfig::database_for`]).
    pub fn resolve_database(&self, name: &str) -> Option<DatabaseConfig> {
        if let Some(db) = self.databases.get(name) {
            return Some(db.clone());
        }
        if let Some((base, role)) = self.routed_name(name) {
            return self.route_database(base, role);
        }
        let mut db = self.fallback_database.clone()?;
        if db.dbname.is_none() {
            db.dbname = Some(name.to_string());
        }
        Some(db)
    }

    /// The database a client asking for `name` gets on local port `port`, and the
    /// name its pools go by. On a `routes` listener the route's role replaces the
    /// database's own and the pools are `NAME@ROLE`, so one database can be read-write
    /// on one port and read-only on another.
    pub fn database_for(&self, name: &str, port: Option<u16>) -> Option<(String, DatabaseConfig)> {
        let route = port.and_then(|p| self.routes.iter().find(|r| r.listen_port == p));
        match route {
            Some(route) => {
                let db = self.route_database(name, route.role)?;
                Some((format!("{name}@{}", route.role), db))
            }
            None => Some((name.to_string(), self.resolve_database(name)?)),
        }
    }

    /// `name` under a route of `role`. A database pinned to fixed hosts without
    /// health checks cannot be told primary from replica, so routes do not serve it.
    fn route_database(&self, name: &str, role: RouteRole) -> Option<DatabaseConfig> {
        let mut db = match self.databases.get(name) {
            Some(db) => db.clone(),
            None => {
                let mut db = self.fallback_database.clone()?;
                db.dbname.get_or_insert_with(|| name.to_string());
                db
            }
        };
        if !db.host.is_empty() && db.check.is_none() {
            return None;
        }
        db.role = Some(role);
        Some(db)
    }

    /// `NAME@ROLE` split, when some route has that role.
    fn routed_name<'a>(&self, name: &'a str) -> Option<(&'a str, RouteRole)> {
        let (base, text) = name.rsplit_once('@')?;
        let route = self.routes.iter().find(|r| r.role.as_str() == text)?;
        Some((base, route.role))
    }

    /// Rows for `SHOW CONFIG`: every `[pgbouncer]` setting with its value, PgBouncer's
    /// default and whether `RELOAD` can change it.
    pub fn show_config(&self) -> Vec<ConfigRow> {
        self.settings.show_config()
    }
}

/// Read a whole file as UTF-8, naming the file on error.
pub(crate) fn read_text(path: &Path) -> Result<String, ConfigErrors> {
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigErrors::single(ConfigError::new(
            Location::new(path, None),
            None,
            ErrorKind::Io,
            format!("cannot read file: {e}"),
        ))
    })?;
    let mut text = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        ConfigErrors::single(ConfigError::new(
            Location::line(path, line),
            None,
            ErrorKind::Io,
            "file is not valid UTF-8",
        ))
    })?;
    if text.starts_with('\u{feff}') {
        text.remove(0);
    }
    Ok(text)
}

/// One value to apply, whichever file format it came from.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    /// `[pgbouncer]` key (lower-cased) and value.
    Setting(RawSetting),
    /// `[databases]` name and connection string.
    Database(RawSetting),
    /// `[databases]` name and YAML mapping of parameters (already stringified).
    DatabaseParams {
        raw: RawSetting,
        params: Vec<(String, String)>,
    },
    /// `[users]` name and parameter string.
    User(RawSetting),
    /// `[users]` name and YAML mapping of parameters.
    UserParams {
        raw: RawSetting,
        params: Vec<(String, String)>,
    },
}

/// What a reader hands to [`build`]: entries in file order, plus the reader's own
/// warnings and any pgherd extension sections.
#[derive(Debug, Default)]
pub(crate) struct Document {
    pub entries: Vec<Entry>,
    pub warnings: Vec<Warning>,
    pub errors: Vec<ConfigError>,
    pub cluster: Option<ClusterConfig>,
    pub routes: Vec<Route>,
    /// Where `routes` was written, for cross-checks.
    pub routes_location: Option<Location>,
}

/// Apply a document's entries in order to a default configuration, collecting errors.
fn build(doc: Document) -> Result<Loaded, ConfigErrors> {
    let Document {
        entries,
        mut warnings,
        mut errors,
        cluster,
        routes,
        routes_location,
    } = doc;
    let mut config = PoolerConfig {
        cluster,
        routes,
        ..PoolerConfig::default()
    };
    let mut raw_all = Vec::new();
    // Where each setting was last set, for cross-setting checks.
    let mut set_at: BTreeMap<String, Location> = BTreeMap::new();

    for entry in entries {
        match entry {
            Entry::Setting(raw) => {
                let key = raw.key.clone();
                match config.settings.set(&key, &raw.value) {
                    Ok(settings::Applied::Done) => {
                        set_at.insert(key, raw.location.clone());
                    }
                    Ok(settings::Applied::NotImplemented) => {
                        set_at.insert(key.clone(), raw.location.clone());
                        warnings.push(Warning {
                            location: raw.location.clone(),
                            key: format!("{}.{key}", raw.section),
                            message: "accepted, but pgherd does not act on this setting".into(),
                        });
                    }
                    Ok(settings::Applied::Unknown) => warnings.push(Warning {
                        location: raw.location.clone(),
                        key: format!("{}.{key}", raw.section),
                        message: "unknown setting, ignored".into(),
                    }),
                    Err(e) => errors.push(ConfigError::new(
                        raw.location.clone(),
                        Some(format!("{}.{key}", raw.section)),
                        e.kind,
                        e.message,
                    )),
                }
                raw_all.push(raw);
            }
            Entry::Database(raw) => {
                let params = match connstr::parse(&raw.value) {
                    Ok(p) => p,
                    Err(message) => {
                        errors.push(ConfigError::new(
                            raw.location.clone(),
                            Some(format!("databases.{}", raw.key)),
                            ErrorKind::Syntax,
                            message,
                        ));
                        raw_all.push(raw);
                        continue;
                    }
                };
                add_database(&mut config, &raw, params, &mut errors, &mut warnings);
                raw_all.push(raw);
            }
            Entry::DatabaseParams { raw, params } => {
                add_database(&mut config, &raw, params, &mut errors, &mut warnings);
                raw_all.push(raw);
            }
            Entry::User(raw) => {
                match connstr::parse(&raw.value) {
                    Ok(params) => add_user(&mut config, &raw, params, &mut errors),
                    Err(message) => errors.push(ConfigError::new(
                        raw.location.clone(),
                        Some(format!("users.{}", raw.key)),
                        ErrorKind::Syntax,
                        message,
                    )),
                }
                raw_all.push(raw);
            }
            Entry::UserParams { raw, params } => {
                add_user(&mut config, &raw, params, &mut errors);
                raw_all.push(raw);
            }
        }
    }

    settings::check(&config.settings, &set_at, &mut errors);
    cluster::check(&config, routes_location.as_ref(), &mut errors);

    // Readers report some problems before the builder sees the values: show them all
    // in file order (stable, so one line's problems keep their order).
    errors.sort_by(|a, b| by_location(&a.location, &b.location));
    warnings.sort_by(|a, b| by_location(&a.location, &b.location));

    if errors.is_empty() {
        Ok(Loaded {
            config,
            warnings,
            raw: raw_all,
        })
    } else {
        Err(ConfigErrors(errors))
    }
}

fn by_location(a: &Location, b: &Location) -> std::cmp::Ordering {
    (&a.file, a.line).cmp(&(&b.file, b.line))
}

fn add_database(
    config: &mut PoolerConfig,
    raw: &RawSetting,
    params: Vec<(String, String)>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<Warning>,
) {
    let key = format!("databases.{}", raw.key);
    if raw.key.eq_ignore_ascii_case("pgbouncer") {
        errors.push(ConfigError::new(
            raw.location.clone(),
            Some(key),
            ErrorKind::InvalidValue,
            "the database name \"pgbouncer\" is reserved for the admin console",
        ));
        return;
    }
    match DatabaseConfig::from_params(params) {
        Ok(db) => {
            let problems = cluster::route_problems(config.cluster.as_ref(), &db)
                .into_iter()
                .map(str::to_string)
                .chain(db.health_problems());
            for problem in problems {
                errors.push(ConfigError::new(
                    raw.location.clone(),
                    Some(key.clone()),
                    ErrorKind::Inconsistent,
                    problem,
                ));
            }
            let replaced = if raw.key == "*" {
                config.fallback_database.replace(db).is_some()
            } else {
                config.databases.insert(raw.key.clone(), db).is_some()
            };
            if replaced {
                warnings.push(Warning {
                    location: raw.location.clone(),
                    key,
                    message: "defined again; this later definition wins".into(),
                });
            }
        }
        Err(errs) => {
            errors.extend(errs.into_iter().map(|e| {
                ConfigError::new(raw.location.clone(), Some(key.clone()), e.kind, e.message)
            }))
        }
    }
}

fn add_user(
    config: &mut PoolerConfig,
    raw: &RawSetting,
    params: Vec<(String, String)>,
    errors: &mut Vec<ConfigError>,
) {
    let key = format!("users.{}", raw.key);
    match UserConfig::from_params(params) {
        Ok(user) => {
            config.users.insert(raw.key.clone(), user);
        }
        Err(errs) => {
            errors.extend(errs.into_iter().map(|e| {
                ConfigError::new(raw.location.clone(), Some(key.clone()), e.kind, e.message)
            }))
        }
    }
}

/// A value error before it is given a location (setters do not know the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ValueError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ValueError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        ValueError {
            kind: ErrorKind::InvalidValue,
            message: message.into(),
        }
    }
    pub(crate) fn unsupported(message: impl Into<String>) -> Self {
        ValueError {
            kind: ErrorKind::Unsupported,
            message: message.into(),
        }
    }
    pub(crate) fn unknown(message: impl Into<String>) -> Self {
        ValueError {
            kind: ErrorKind::UnknownParameter,
            message: message.into(),
        }
    }
}
