//! The `pgbouncer.ini` reader, following PgBouncer's own parser (libusual
//! `cfparser.c` + `loader.c`):
//!
//! - Lines whose first non-blank character is `;` or `#` are comments. As PgBouncer's
//!   documentation says, `;` and `#` are *not* special later in a line: `key = a ; b`
//!   sets `key` to `a ; b`.
//! - `[section]` starts a section (names are case-insensitive). A comment may follow
//!   the closing bracket.
//! - `key = value`: blanks around the key and the value are trimmed; the value runs to
//!   the end of the line. In `[databases]`/`[users]` the key may be a double-quoted SQL
//!   identifier (`"my db" = …`, `""` for a quote). In `[pgbouncer]`, keys are
//!   case-insensitive and one pair of quotes around a whole value is removed
//!   (`auth_file = "/etc/pgbouncer/userlist.txt"`); PgBouncer itself keeps such quotes,
//!   which would make the file unusable there, so removing them loses nothing.
//! - `%include path` reads another file in place. The current section carries into and
//!   out of the included file, as in PgBouncer. Relative paths are resolved against the
//!   including file's directory (PgBouncer uses the working directory; the two agree
//!   when PgBouncer is started from the config directory, and ours does not depend on
//!   where the process was started). Nesting is bounded by [`MAX_INCLUDE_DEPTH`] (the
//!   same limit as libusual) and a file including itself, directly or not, is an error.
//! - `[peers]` is accepted and ignored with a warning; an unknown section's keys are
//!   ignored with a warning.
//! - `[pgherd]` (pgherd's own): the store routed databases follow (`etcd_hosts`,
//!   `namespace`, `scope`, `dcs_timeout`) and pgherd's settings (`metrics_listen`).

use std::path::{Path, PathBuf};

use super::cluster::{ClusterConfig, Etcd3Config, DEFAULT_DCS_TIMEOUT, DEFAULT_NAMESPACE};
use super::settings::{parse_list, parse_secs};
use super::{
    read_text, ConfigError, ConfigErrors, Document, Entry, ErrorKind, Location, RawSetting, Warning,
};
use pgherd_http::TlsFile;

/// How deep `%include` may nest (libusual's `MAX_INCLUDE`).
pub const MAX_INCLUDE_DEPTH: usize = 10;

/// Read a `pgbouncer.ini` file and everything it includes.
pub(crate) fn read_file(path: &Path) -> Result<Document, ConfigErrors> {
    let text = read_text(path)?;
    read_str(&text, path)
}

/// Read `pgbouncer.ini` text named `name` (relative includes resolve against its
/// directory).
pub(crate) fn read_str(text: &str, name: &Path) -> Result<Document, ConfigErrors> {
    let mut reader = Reader {
        doc: Document::default(),
        section: None,
        stack: vec![identity(name)],
        warned_sections: Vec::new(),
        store: Vec::new(),
    };
    reader.read_text(text, name);
    reader.finish_store();
    Ok(reader.doc)
}

/// `[pgherd]` keys that describe the store (the rest are settings).
const STORE_KEYS: &[&str] = &[
    "etcd_hosts",
    "etcd_protocol",
    "etcd_cacert",
    "etcd_cert",
    "etcd_key",
    "etcd_username",
    "etcd_password",
    "namespace",
    "scope",
    "dcs_timeout",
];

struct Reader {
    doc: Document,
    /// The current section, lower-cased; `None` before the first `[section]`.
    section: Option<String>,
    /// Files being read, outermost first, for cycle detection.
    stack: Vec<PathBuf>,
    /// Sections already warned about (warn once per section).
    warned_sections: Vec<String>,
    /// `[pgherd]` store keys, values and where they were written.
    store: Vec<(String, String, Location)>,
}

/// A path's identity for cycle detection: canonical when it exists.
fn identity(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

impl Reader {
    fn error(&mut self, location: Location, key: Option<String>, kind: ErrorKind, msg: &str) {
        self.doc
            .errors
            .push(ConfigError::new(location, key, kind, msg));
    }

    fn read_text(&mut self, text: &str, file: &Path) {
        for (index, line) in text.split('\n').enumerate() {
            let location = Location::line(file, index + 1);
            let line = line.strip_suffix('\r').unwrap_or(line);
            self.read_line(line, location);
        }
    }

    fn read_line(&mut self, line: &str, location: Location) {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            return;
        }
        if let Some(rest) = line.strip_prefix("%include") {
            if rest.starts_with([' ', '\t']) {
                self.include(rest.trim(), location);
                return;
            }
        }
        if let Some(rest) = line.strip_prefix('[') {
            self.section_line(rest, location);
            return;
        }
        self.key_value_line(line, location);
    }

    fn section_line(&mut self, rest: &str, location: Location) {
        let Some(end) = rest.find(']') else {
            self.error(
                location,
                None,
                ErrorKind::Syntax,
                "section header is missing its closing ']'",
            );
            return;
        };
        let after = rest[end + 1..].trim_start();
        if !(after.is_empty() || after.starts_with(';') || after.starts_with('#')) {
            self.error(
                location,
                None,
                ErrorKind::Syntax,
                "unexpected text after section header",
            );
            return;
        }
        let name = rest[..end].trim().to_ascii_lowercase();
        match name.as_str() {
            "pgbouncer" | "databases" | "users" | "pgherd" => {}
            "peers" => self.warn_section(
                &name,
                location,
                "[peers] is accepted but ignored: pgherd poolers do not forward cancel requests between peers",
            ),
            _ => self.warn_section(&name, location, "unknown section; its keys are ignored"),
        }
        self.section = Some(name);
    }

    fn warn_section(&mut self, name: &str, location: Location, message: &str) {
        if self.warned_sections.iter().any(|s| s == name) {
            return;
        }
        self.warned_sections.push(name.to_string());
        self.doc.warnings.push(Warning {
            location,
            key: name.to_string(),
            message: message.to_string(),
        });
    }

    fn key_value_line(&mut self, line: &str, location: Location) {
        let (key, rest) = match split_key(line) {
            Ok(kv) => kv,
            Err(msg) => {
                let key = self.section.clone();
                self.error(location, key, ErrorKind::Syntax, msg);
                return;
            }
        };
        let value = rest.trim();
        let Some(section) = self.section.clone() else {
            self.error(
                location,
                Some(key),
                ErrorKind::Syntax,
                "key = value before any [section]",
            );
            return;
        };
        let raw = |key: String, value: String| RawSetting {
            section: section.clone(),
            key,
            value,
            location: location.clone(),
        };
        let entry = match section.as_str() {
            "pgbouncer" => Entry::Setting(raw(
                key.to_ascii_lowercase(),
                unquote_setting(value).to_string(),
            )),
            "pgherd" => {
                let key = key.to_ascii_lowercase();
                let value = unquote_setting(value).to_string();
                if STORE_KEYS.contains(&key.as_str()) {
                    self.store.push((key, value, location));
                    return;
                }
                Entry::Setting(raw(key, value))
            }
            "databases" => Entry::Database(raw(key, value.to_string())),
            "users" => Entry::User(raw(key, value.to_string())),
            // [peers] and unknown sections were warned about at their header.
            _ => return,
        };
        self.doc.entries.push(entry);
    }

    /// The `[pgherd]` store keys as the document's cluster section.
    fn finish_store(&mut self) {
        let store = std::mem::take(&mut self.store);
        let Some(first) = store.first().map(|(_, _, at)| at.clone()) else {
            return;
        };
        let mut hosts = None;
        let mut etcd = Etcd3Config::default();
        let mut scope = None;
        let mut namespace = DEFAULT_NAMESPACE.to_string();
        let mut dcs_timeout = DEFAULT_DCS_TIMEOUT;
        for (key, value, at) in store {
            let path = Some(format!("pgherd.{key}"));
            let v = value.trim();
            match key.as_str() {
                "etcd_hosts" => match parse_list(v) {
                    list if !list.is_empty() => hosts = Some(list),
                    _ => self.error(at, path, ErrorKind::InvalidValue, "expected host:port, …"),
                },
                "etcd_protocol" => match v {
                    "http" => etcd.https = false,
                    "https" => etcd.https = true,
                    _ => self.error(at, path, ErrorKind::InvalidValue, "expected http or https"),
                },
                "etcd_cacert" if !v.is_empty() => {
                    etcd.cacert = Some(TlsFile::new(format!("pgherd.{key}"), v))
                }
                "etcd_cert" if !v.is_empty() => {
                    etcd.cert = Some(TlsFile::new(format!("pgherd.{key}"), v))
                }
                "etcd_key" if !v.is_empty() => {
                    etcd.key = Some(TlsFile::new(format!("pgherd.{key}"), v))
                }
                "etcd_username" if !v.is_empty() => etcd.username = Some(v.to_string()),
                // Not trimmed: a password may end in a blank.
                "etcd_password" if !value.is_empty() => etcd.password = Some(value.clone()),
                "scope" if !v.is_empty() => scope = Some(v.to_string()),
                "namespace" if !v.is_empty() => namespace = v.to_string(),
                "dcs_timeout" => match parse_secs(v) {
                    Ok(t) => dcs_timeout = t,
                    Err(e) => self.error(at, path, e.kind, &e.message),
                },
                _ => self.error(
                    at,
                    path,
                    ErrorKind::InvalidValue,
                    "expected a non-empty value",
                ),
            }
        }
        if etcd.password.is_some() && etcd.username.is_none() {
            self.error(
                first.clone(),
                Some("pgherd.etcd_password".into()),
                ErrorKind::Inconsistent,
                "set, but no etcd_username to go with it",
            );
        }
        let Some(hosts) = hosts else {
            self.error(
                first,
                Some("pgherd".into()),
                ErrorKind::Inconsistent,
                "[pgherd] needs etcd_hosts (the etcd endpoints of the clusters to follow)",
            );
            return;
        };
        self.doc.cluster = Some(ClusterConfig {
            scope,
            namespace,
            etcd3: Etcd3Config { hosts, ..etcd },
            dcs_timeout,
        });
    }

    fn include(&mut self, target: &str, location: Location) {
        if target.is_empty() {
            self.error(
                location,
                None,
                ErrorKind::Syntax,
                "%include needs a file name",
            );
            return;
        }
        let target = unquote_setting(target);
        let path = resolve_include(&location.file, Path::new(target));
        if self.stack.len() > MAX_INCLUDE_DEPTH {
            let msg = format!(
                "%include {}: nested more than {MAX_INCLUDE_DEPTH} levels deep",
                path.display()
            );
            self.error(location, None, ErrorKind::Include, &msg);
            return;
        }
        let id = identity(&path);
        if self.stack.contains(&id) {
            let chain: Vec<String> = self
                .stack
                .iter()
                .chain(std::iter::once(&id))
                .map(|p| p.display().to_string())
                .collect();
            let msg = format!("%include cycle: {}", chain.join(" -> "));
            self.error(location, None, ErrorKind::Include, &msg);
            return;
        }
        let text = match read_text(&path) {
            Ok(text) => text,
            Err(errs) => {
                for e in errs {
                    let msg = format!("%include {}: {}", path.display(), e.message);
                    let loc = if e.location.line.is_some() {
                        e.location
                    } else {
                        location.clone()
                    };
                    self.error(loc, None, ErrorKind::Include, &msg);
                }
                return;
            }
        };
        self.stack.push(id);
        self.read_text(&text, &path);
        self.stack.pop();
    }
}

/// Resolve an `%include` target relative to the including file's directory.
fn resolve_include(including: &Path, target: &Path) -> PathBuf {
    if target.is_absolute() {
        return target.to_path_buf();
    }
    match including.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(target),
        _ => target.to_path_buf(),
    }
}

/// Split `key = value` into the key (unquoted) and the text after `=`.
fn split_key(line: &str) -> Result<(String, &str), &'static str> {
    if let Some(rest) = line.strip_prefix('"') {
        // SQL-quoted identifier: "" is a literal quote.
        let mut key = String::new();
        let mut chars = rest.char_indices();
        loop {
            match chars.next() {
                None => return Err("unterminated quoted name"),
                Some((i, '"')) => {
                    if rest[i + 1..].starts_with('"') {
                        key.push('"');
                        chars.next();
                    } else {
                        let after = rest[i + 1..].trim_start();
                        return match after.strip_prefix('=') {
                            Some(value) if !key.is_empty() => Ok((key, value)),
                            Some(_) => Err("empty name before '='"),
                            None => Err("expected '=' after quoted name"),
                        };
                    }
                }
                Some((_, c)) => key.push(c),
            }
        }
    }
    let Some(eq) = line.find('=') else {
        return Err("expected 'key = value', '[section]', a comment or %include");
    };
    let key = line[..eq].trim();
    if key.is_empty() {
        return Err("empty name before '='");
    }
    if key.contains(char::is_whitespace) {
        return Err("a name cannot contain blanks (quote it with double quotes)");
    }
    Ok((key.to_string(), &line[eq + 1..]))
}

/// Remove one pair of matching quotes around a whole `[pgbouncer]` value.
fn unquote_setting(value: &str) -> &str {
    for q in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
            return &value[1..value.len() - 1];
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_key_handles_quoted_names() {
        assert_eq!(
            split_key(r#""my ""db""" = host=x"#),
            Ok((r#"my "db""#.to_string(), " host=x"))
        );
        assert!(split_key("no equals").is_err());
        assert!(split_key("a b = c").is_err());
        assert!(split_key(r#""open = x"#).is_err());
    }
}
