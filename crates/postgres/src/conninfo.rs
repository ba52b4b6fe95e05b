//! Credentials and libpq connection strings.

use std::fmt;
use std::path::Path;

/// A role name and its password. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    pub username: String,
    pub password: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where and how to connect to a PostgreSQL server. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub application_name: Option<String>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .finish()
    }
}

impl ConnInfo {
    /// A libpq `key=value` connection string. With a `passfile` the password is never
    /// written into it (libpq reads it from the file); without one it is.
    pub fn to_libpq(&self, passfile: Option<&Path>) -> String {
        let mut parts = vec![
            kv("host", &self.host),
            kv("port", &self.port.to_string()),
            kv("user", &self.user),
            kv("dbname", &self.dbname),
        ];
        if let Some(app) = &self.application_name {
            parts.push(kv("application_name", app));
        }
        match passfile {
            Some(pf) => parts.push(kv("passfile", &pf.to_string_lossy())),
            None => {
                if let Some(pw) = &self.password {
                    parts.push(kv("password", pw));
                }
            }
        }
        parts.join(" ")
    }

    /// `host:port user=... dbname=...`, safe for logs and error messages.
    pub fn describe(&self) -> String {
        format!(
            "{}:{} user={} dbname={}",
            self.host, self.port, self.user, self.dbname
        )
    }
}

fn kv(key: &str, value: &str) -> String {
    format!("{key}={}", libpq_quote(value))
}

/// Quote a conninfo value per libpq: bare when it is non-empty and has no space, quote
/// or backslash; otherwise in single quotes with `'` and `\` escaped by a backslash.
pub fn libpq_quote(value: &str) -> String {
    let needs = value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\' || c == '=');
    if !needs {
        return value.to_string();
    }
    let mut s = String::with_capacity(value.len() + 2);
    s.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ci() -> ConnInfo {
        ConnInfo {
            host: "10.0.0.1".into(),
            port: 5432,
            user: "repl user".into(),
            password: Some(r"pa'ss\word".into()),
            dbname: "postgres".into(),
            application_name: Some("node1".into()),
        }
    }

    #[test]
    fn conninfo_quotes_and_escapes_values() {
        assert_eq!(
            ci().to_libpq(None),
            r"host=10.0.0.1 port=5432 user='repl user' dbname=postgres application_name=node1 password='pa\'ss\\word'"
        );
        assert_eq!(libpq_quote(""), "''");
        assert_eq!(libpq_quote("a=b"), "'a=b'");
    }

    #[test]
    fn conninfo_with_passfile_never_holds_the_password() {
        let s = ci().to_libpq(Some(Path::new("/var/lib/pg pass")));
        assert!(!s.contains("pa'ss") && !s.contains("password"), "{s}");
        assert!(s.ends_with(r"passfile='/var/lib/pg pass'"), "{s}");
    }

    #[test]
    fn debug_redacts_passwords() {
        let s = format!("{:?}", ci());
        assert!(!s.contains("pa'ss") && s.contains("redacted"), "{s}");
        let c = Credentials {
            username: "u".into(),
            password: Some("secret".into()),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
