//! `pooler.yml`: the same settings as `pgbouncer.ini` under the same names, plus
//! pgherd's `cluster` and `routes`.
//!
//! ```yaml
//! pgbouncer:                 # the [pgbouncer] section, same keys
//!   listen_port: 6432
//!   stats_users: [stats, postgres]        # or "stats, postgres"
//! databases:                 # name -> connection string, or a mapping of its keys
//!   mydb: host=192.168.1.1 port=5432 dbname=mydb
//!   other: {host: 10.0.0.2, pool_size: 5}
//!   "*": host=10.0.0.3
//! users:                     # name -> parameter string, or a mapping
//!   alice: {pool_mode: transaction}
//! cluster: {scope: batman, etcd3: {hosts: [10.0.0.1:2379]}}
//! routes: [{listen_port: 6432, role: primary}, {listen_port: 6433, role: replica}]
//! pgherd:                    # pgherd's own settings (no PgBouncer equivalent)
//!   metrics_listen: 127.0.0.1:9127        # Prometheus GET /metrics; unset: off
//! ```
//!
//! Scalars become the text the INI file would hold (`true` → `1`, a list → `a,b`) and
//! go through the same setters, so a YAML file and the INI file it mirrors produce
//! equal [`PoolerConfig`](super::PoolerConfig)s. Lines in messages are found by
//! searching for the key (the YAML parser does not keep positions of values); when
//! the search fails, the message names the file only.

use std::path::Path;

use pgherd_http::TlsFile;
use yaml_serde::{Mapping, Value};

use super::cluster::{
    ClusterConfig, Etcd3Config, Route, RouteRole, DEFAULT_DCS_TIMEOUT, DEFAULT_NAMESPACE,
};
use super::settings::{parse_list, parse_port, parse_secs};
use super::{
    ConfigError, ConfigErrors, Document, Entry, ErrorKind, Location, RawSetting, ValueError,
    Warning,
};

/// Keys of the `pgherd:` mapping (settings PgBouncer does not have).
const PGHERD_SETTINGS: &[&str] = &["metrics_listen"];

pub(crate) fn read_str(text: &str, file: &Path) -> Result<Document, ConfigErrors> {
    let root: Value = yaml_serde::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        ConfigErrors::single(ConfigError::new(
            Location::new(file, line),
            None,
            ErrorKind::Syntax,
            format!("invalid YAML: {e}"),
        ))
    })?;
    let mut r = YamlReader {
        text,
        file,
        doc: Document::default(),
    };
    match root {
        Value::Null => {}
        Value::Mapping(m) => r.top(&m),
        _ => r.error(&[], ErrorKind::Syntax, "the file must be a mapping".into()),
    }
    Ok(r.doc)
}

struct YamlReader<'a> {
    text: &'a str,
    file: &'a Path,
    doc: Document,
}

impl YamlReader<'_> {
    fn location(&self, path: &[&str]) -> Location {
        Location::new(self.file, locate(self.text, path))
    }

    fn error(&mut self, path: &[&str], kind: ErrorKind, message: String) {
        let key = (!path.is_empty()).then(|| path.join("."));
        let location = self.location(path);
        self.doc
            .errors
            .push(ConfigError::new(location, key, kind, message));
    }

    fn warn(&mut self, path: &[&str], message: &str) {
        let location = self.location(path);
        self.doc.warnings.push(Warning {
            location,
            key: path.join("."),
            message: message.into(),
        });
    }

    fn top(&mut self, m: &Mapping) {
        for (k, v) in m {
            let Some(key) = key_string(k) else {
                self.error(
                    &[],
                    ErrorKind::Syntax,
                    "top-level keys must be strings".into(),
                );
                continue;
            };
            match key.as_str() {
                "pgbouncer" => self.section(&key, v, Section::Settings),
                "databases" => self.section(&key, v, Section::Databases),
                "users" => self.section(&key, v, Section::Users),
                "peers" => self.warn(&["peers"], "accepted but ignored: pgherd poolers do not forward cancel requests between peers"),
                "cluster" => self.cluster(v),
                "routes" => self.routes(v),
                "pgherd" => self.pgherd(v),
                _ => self.warn(&[&key], "unknown section; ignored"),
            }
        }
    }

    fn section(&mut self, name: &str, v: &Value, section: Section) {
        let m = match v {
            Value::Null => return,
            Value::Mapping(m) => m,
            _ => {
                self.error(&[name], ErrorKind::Syntax, "expected a mapping".into());
                return;
            }
        };
        for (k, v) in m {
            let Some(key) = key_string(k) else {
                self.error(&[name], ErrorKind::Syntax, "keys must be strings".into());
                continue;
            };
            let key = match section {
                Section::Settings => key.to_ascii_lowercase(),
                _ => key,
            };
            let location = self.location(&[name, &key]);
            let raw = |value: String| RawSetting {
                section: name.to_string(),
                key: key.clone(),
                value,
                location: location.clone(),
            };
            let entry = match (section, v) {
                (Section::Databases | Section::Users, Value::Mapping(params)) => {
                    let mut list = Vec::new();
                    for (pk, pv) in params {
                        let Some(pk) = key_string(pk) else {
                            self.error(
                                &[name, &key],
                                ErrorKind::Syntax,
                                "parameter names must be strings".into(),
                            );
                            continue;
                        };
                        match scalar_text(pv) {
                            Ok(text) => list.push((pk.to_ascii_lowercase(), text)),
                            Err(msg) => {
                                self.error(&[name, &key, &pk], ErrorKind::InvalidValue, msg.into())
                            }
                        }
                    }
                    let raw = raw(String::new());
                    if section == Section::Databases {
                        Entry::DatabaseParams { raw, params: list }
                    } else {
                        Entry::UserParams { raw, params: list }
                    }
                }
                _ => match scalar_text(v) {
                    Ok(text) => match section {
                        Section::Settings => Entry::Setting(raw(text)),
                        Section::Databases => Entry::Database(raw(text)),
                        Section::Users => Entry::User(raw(text)),
                    },
                    Err(msg) => {
                        self.error(&[name, &key], ErrorKind::InvalidValue, msg.into());
                        continue;
                    }
                },
            };
            self.doc.entries.push(entry);
        }
    }

    /// `pgherd:`: pgherd's own settings, applied like `[pgbouncer]` keys (the INI file
    /// takes them in `[pgbouncer]`).
    fn pgherd(&mut self, v: &Value) {
        let m = match v {
            Value::Null => return,
            Value::Mapping(m) => m,
            _ => {
                self.error(&["pgherd"], ErrorKind::Syntax, "expected a mapping".into());
                return;
            }
        };
        for (k, v) in m {
            let key = key_string(k).unwrap_or_default().to_ascii_lowercase();
            if !PGHERD_SETTINGS.contains(&key.as_str()) {
                self.warn(&["pgherd", &key], "unknown key; ignored");
                continue;
            }
            match scalar_text(v) {
                Ok(value) => {
                    let location = self.location(&["pgherd", &key]);
                    self.doc.entries.push(Entry::Setting(RawSetting {
                        section: "pgherd".into(),
                        key,
                        value,
                        location,
                    }));
                }
                Err(msg) => self.error(&["pgherd", &key], ErrorKind::InvalidValue, msg.into()),
            }
        }
    }

    fn cluster(&mut self, v: &Value) {
        let Value::Mapping(m) = v else {
            self.error(&["cluster"], ErrorKind::Syntax, "expected a mapping".into());
            return;
        };
        let mut scope = None;
        let mut namespace = DEFAULT_NAMESPACE.to_string();
        let mut etcd: Option<Etcd3Config> = None;
        let mut dcs_timeout = DEFAULT_DCS_TIMEOUT;
        for (k, v) in m {
            let key = key_string(k).unwrap_or_default();
            match key.as_str() {
                "scope" => match scalar_text(v) {
                    Ok(s) if !s.trim().is_empty() => scope = Some(s.trim().to_string()),
                    _ => self.error(
                        &["cluster", "scope"],
                        ErrorKind::InvalidValue,
                        "expected a non-empty name".into(),
                    ),
                },
                "namespace" => match scalar_text(v) {
                    Ok(s) if !s.trim().is_empty() => namespace = s.trim().to_string(),
                    _ => self.error(
                        &["cluster", "namespace"],
                        ErrorKind::InvalidValue,
                        "expected a non-empty path such as /service/".into(),
                    ),
                },
                "etcd3" | "etcd" => etcd = self.etcd(&key, v),
                "dcs_timeout" => {
                    match scalar_text(v)
                        .map_err(ValueError::invalid)
                        .and_then(|t| parse_secs(t.trim()))
                    {
                        Ok(t) => dcs_timeout = t,
                        Err(e) => self.error(&["cluster", "dcs_timeout"], e.kind, e.message),
                    }
                }
                _ => self.warn(&["cluster", &key], "unknown key; ignored"),
            }
        }
        let Some(etcd3) = etcd else {
            self.error(
                &["cluster"],
                ErrorKind::Inconsistent,
                "cluster.etcd3.hosts is required".into(),
            );
            return;
        };
        self.doc.cluster = Some(ClusterConfig {
            scope,
            namespace,
            etcd3,
            dcs_timeout,
        });
    }

    fn etcd(&mut self, name: &str, v: &Value) -> Option<Etcd3Config> {
        let Value::Mapping(m) = v else {
            self.error(
                &["cluster", name],
                ErrorKind::Syntax,
                "expected a mapping".into(),
            );
            return None;
        };
        let mut hosts = None;
        let mut etcd = Etcd3Config::default();
        for (k, v) in m {
            let key = key_string(k).unwrap_or_default();
            let text = || scalar_text(v).ok().map(|s| s.trim().to_string());
            let path = format!("cluster.{name}.{key}");
            match key.as_str() {
                "protocol" => match text().as_deref() {
                    Some("http") => etcd.https = false,
                    Some("https") => etcd.https = true,
                    _ => self.error(
                        &["cluster", name, &key],
                        ErrorKind::InvalidValue,
                        "expected http or https".into(),
                    ),
                },
                "cacert" | "ca_cert" | "cert" | "key" | "username" | "user" | "password" => {
                    let Some(t) = text().filter(|t| !t.is_empty()) else {
                        self.error(
                            &["cluster", name, &key],
                            ErrorKind::InvalidValue,
                            "expected a non-empty string".into(),
                        );
                        continue;
                    };
                    match key.as_str() {
                        "cacert" | "ca_cert" => etcd.cacert = Some(TlsFile::new(path, t)),
                        "cert" => etcd.cert = Some(TlsFile::new(path, t)),
                        "key" => etcd.key = Some(TlsFile::new(path, t)),
                        "password" => etcd.password = Some(t),
                        _ => etcd.username = Some(t),
                    }
                }
                "hosts" | "host" => {
                    let list = scalar_text(v).map(|s| parse_list(&s)).unwrap_or_default();
                    if list.is_empty() || list.iter().any(|h| h.contains(char::is_whitespace)) {
                        self.error(
                            &["cluster", name, &key],
                            ErrorKind::InvalidValue,
                            "expected host:port endpoints, as a list or comma-separated".into(),
                        );
                        return None;
                    }
                    hosts = Some(list);
                }
                _ => self.warn(&["cluster", name, &key], "unknown key; ignored"),
            }
        }
        if etcd.password.is_some() && etcd.username.is_none() {
            self.error(
                &["cluster", name, "password"],
                ErrorKind::Inconsistent,
                "set, but no username to go with it".into(),
            );
        }
        etcd.hosts = hosts?;
        Some(etcd)
    }

    fn routes(&mut self, v: &Value) {
        self.doc.routes_location = Some(self.location(&["routes"]));
        let Value::Sequence(items) = v else {
            self.error(
                &["routes"],
                ErrorKind::Syntax,
                "expected a list of {listen_port, role}".into(),
            );
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let name = format!("routes[{i}]");
            let Value::Mapping(m) = item else {
                self.error(
                    &[&name],
                    ErrorKind::Syntax,
                    "expected a mapping {listen_port, role}".into(),
                );
                continue;
            };
            let mut port = None;
            let mut role = None;
            for (k, v) in m {
                let key = key_string(k).unwrap_or_default();
                let text = scalar_text(v).unwrap_or_default();
                match key.as_str() {
                    "listen_port" => match parse_port(text.trim()) {
                        Ok(p) => port = Some(p),
                        Err(e) => self.error(&[&name, "listen_port"], e.kind, e.message),
                    },
                    "role" => match RouteRole::parse(text.trim()) {
                        Some(r) => role = Some(r),
                        None => self.error(
                            &[&name, "role"],
                            ErrorKind::InvalidValue,
                            format!(
                                "invalid role '{}': expected primary, replica or any",
                                super::settings::shown(&text)
                            ),
                        ),
                    },
                    _ => self.warn(&[&name, &key], "unknown key; ignored"),
                }
            }
            match (port, role) {
                (Some(listen_port), Some(role)) => {
                    self.doc.routes.push(Route { listen_port, role })
                }
                (None, _) if !m.contains_key("listen_port") => self.error(
                    &[&name],
                    ErrorKind::Inconsistent,
                    "listen_port is required".into(),
                ),
                (_, None) if !m.contains_key("role") => {
                    self.error(&[&name], ErrorKind::Inconsistent, "role is required".into())
                }
                _ => {} // already reported
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Settings,
    Databases,
    Users,
}

fn key_string(k: &Value) -> Option<String> {
    match k {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The INI text of a YAML scalar (or a list of scalars, joined with commas).
fn scalar_text(v: &Value) -> Result<String, &'static str> {
    match v {
        Value::Null => Ok(String::new()),
        Value::Bool(b) => Ok(if *b { "1" } else { "0" }.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        Value::String(s) => Ok(s.clone()),
        Value::Sequence(items) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => {
                        return Err("expected a value or a list of values")
                    }
                    other => parts.push(scalar_text(other)?),
                }
            }
            Ok(parts.join(","))
        }
        Value::Mapping(_) => Err("expected a value, found a mapping"),
        Value::Tagged(_) => Err("tagged values are not supported"),
    }
}

/// Best-effort line of a key path: each component is searched for as `key:` at the
/// start of a line after the previous component's line. `routes[N]` finds the
/// N-th list item after `routes:`.
fn locate(text: &str, path: &[&str]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0usize;
    let mut found = None;
    for comp in path {
        let (name, index) = match comp.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (*comp, None),
        };
        let pos = (from..lines.len()).find(|&i| key_on_line(lines[i], name))?;
        let mut line = pos;
        if let Some(n) = index {
            line = (pos + 1..lines.len())
                .filter(|&i| lines[i].trim_start().starts_with('-'))
                .nth(n)?;
        }
        found = Some(line + 1);
        from = line;
    }
    found
}

fn key_on_line(line: &str, name: &str) -> bool {
    let t = line.trim_start().trim_start_matches("- ").trim_start();
    for candidate in [name.to_string(), format!("\"{name}\""), format!("'{name}'")] {
        if let Some(rest) = t.strip_prefix(candidate.as_str()) {
            if rest.trim_start().starts_with(':') {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_nested_keys() {
        let text = "pgbouncer:\n  listen_port: 1\ndatabases:\n  a: x\nroutes:\n  - listen_port: 1\n    role: primary\n  - listen_port: 2\n    role: bad\n";
        assert_eq!(locate(text, &["pgbouncer", "listen_port"]), Some(2));
        assert_eq!(locate(text, &["databases", "a"]), Some(4));
        assert_eq!(locate(text, &["routes[1]", "role"]), Some(9));
        assert_eq!(locate(text, &["nope"]), None);
    }
}
