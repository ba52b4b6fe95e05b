//! Where and as whom the pooler logs into a PostgreSQL server.

use crate::tls::ServerTls;
use pgherd_protocol::auth::is_md5_hash;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// PgBouncer's default `server_connect_timeout` (15 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// What the pooler proves to the server. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerCredential {
    /// A cleartext password: answers cleartext, md5 and SCRAM requests.
    Plain(String),
    /// A stored md5 hash, `"md5" + 32 hex` (`md5(password || user)`): answers md5
    /// requests only.
    Md5Hash(String),
    /// SCRAM ClientKey and ServerKey (32 bytes each), from the client's own SCRAM
    /// exchange with the pooler (pass-through): answers SCRAM requests only, and only
    /// when the server holds the verifier they came from.
    ScramKeys {
        client_key: Vec<u8>,
        server_key: Vec<u8>,
    },
    /// No secret: only `trust` logins succeed.
    None,
}

impl ServerCredential {
    /// A password as written in a config file or `userlist.txt`: an `md5…` hash
    /// becomes [`ServerCredential::Md5Hash`], anything else [`ServerCredential::Plain`].
    pub fn from_password(password: &str) -> ServerCredential {
        if is_md5_hash(password) {
            ServerCredential::Md5Hash(password.to_ascii_lowercase())
        } else {
            ServerCredential::Plain(password.to_owned())
        }
    }

    /// A short name of the kind of secret, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerCredential::Plain(_) => "password",
            ServerCredential::Md5Hash(_) => "md5 hash",
            ServerCredential::ScramKeys { .. } => "SCRAM keys",
            ServerCredential::None => "no password",
        }
    }
}

impl fmt::Debug for ServerCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerCredential::None => f.write_str("None"),
            other => write!(f, "{}(<redacted>)", other.kind()),
        }
    }
}

/// One server login: address, database, user, secret and startup parameters.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    /// Host name or IP address, or a Unix socket directory (starts with '/').
    pub host: String,
    pub port: u16,
    /// The database on the server (`dbname` of the `[databases]` entry).
    pub database: String,
    pub user: String,
    pub credential: ServerCredential,
    /// Extra StartupMessage parameters (`application_name`, `client_encoding`,
    /// `DateStyle`, `TimeZone`, `options`, …), in order. `user` and `database` here
    /// are ignored: the fields above win.
    pub startup_params: Vec<(String, String)>,
    /// Bound on the whole login: TCP connect, authentication and startup until the
    /// first ReadyForQuery (PgBouncer's `server_connect_timeout`). Also the default
    /// bound of [`ServerConnection::simple_query`](super::ServerConnection::simple_query).
    pub connect_timeout: Duration,
    /// TLS toward the server (`server_tls_sslmode`).
    pub tls: Arc<ServerTls>,
}

impl ServerTarget {
    /// A target with no credential, no extra parameters and
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn new(
        host: impl Into<String>,
        port: u16,
        database: impl Into<String>,
        user: impl Into<String>,
    ) -> ServerTarget {
        ServerTarget {
            host: host.into(),
            port,
            database: database.into(),
            user: user.into(),
            credential: ServerCredential::None,
            startup_params: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tls: ServerTls::disabled(),
        }
    }

    pub fn with_tls(mut self, tls: Arc<ServerTls>) -> Self {
        self.tls = tls;
        self
    }

    pub fn with_credential(mut self, credential: ServerCredential) -> Self {
        self.credential = credential;
        self
    }

    /// Add (or replace) a startup parameter.
    pub fn with_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        match self.startup_params.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.startup_params.push((name, value)),
        }
        self
    }

    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// `host:port` (IPv6 literals in brackets), as errors and logs name the server.
    pub fn addr_string(&self) -> String {
        if self.host.starts_with('/') {
            crate::net::unix_socket_path(std::path::Path::new(&self.host), self.port)
                .display()
                .to_string()
        } else if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let t = ServerTarget::new("db1", 5432, "app", "alice")
            .with_credential(ServerCredential::Plain("s3cret-pw".into()));
        let shown = format!("{t:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("password(<redacted>)"), "{shown}");
        let keys = ServerCredential::ScramKeys {
            client_key: vec![0xab; 32],
            server_key: vec![0xcd; 32],
        };
        assert_eq!(format!("{keys:?}"), "SCRAM keys(<redacted>)");
    }

    #[test]
    fn md5_hashes_are_recognised() {
        let h = "md5".to_owned() + &"A".repeat(32);
        assert!(matches!(
            ServerCredential::from_password(&h),
            ServerCredential::Md5Hash(s) if s == h.to_ascii_lowercase()
        ));
        assert!(matches!(
            ServerCredential::from_password("md5short"),
            ServerCredential::Plain(_)
        ));
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        assert_eq!(
            ServerTarget::new("::1", 5432, "d", "u").addr_string(),
            "[::1]:5432"
        );
        assert_eq!(
            ServerTarget::new("db1", 6432, "d", "u").addr_string(),
            "db1:6432"
        );
    }
}
