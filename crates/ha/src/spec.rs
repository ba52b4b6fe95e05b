//! What a node agent needs to know about itself: built by the CLI from the config file.

use crate::decide::HaConfig;
use pgherd_dcs::Tags;
use pgherd_postgres::{Credentials, InstanceConfig};
use std::net::SocketAddr;
use std::time::Duration;

/// Basic-auth credentials for the REST API's mutating endpoints.
#[derive(Clone, PartialEq)]
pub struct ApiAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for ApiAuth {
    /// Never the password (a spec may be logged).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAuth")
            .field("username", &self.username)
            .field("password", &"********")
            .finish()
    }
}

/// The static description of one member, fixed for the agent's lifetime.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub scope: String,
    /// Where the REST API listens.
    pub api_listen: SocketAddr,
    /// How other members and tools reach the REST API (`host:port`).
    pub api_connect_address: String,
    pub api_auth: Option<ApiAuth>,
    /// `restapi.certfile` and friends: the REST API serves HTTPS, and its `api_url`
    /// (in the member key) starts with `https://`.
    pub api_tls: Option<pgherd_http::ServerTls>,
    /// How this member calls other members' REST APIs over HTTPS (`ctl.*`).
    pub client_tls: pgherd_http::ClientTls,
    /// How other members reach this PostgreSQL (`host`, `port`).
    pub pg_connect_host: String,
    pub pg_connect_port: u16,
    pub tags: Tags,
    /// `bootstrap.initdb` as initdb arguments.
    pub initdb_args: Vec<String>,
    /// `bootstrap.dcs`: becomes the cluster's `config` key when this member bootstraps.
    pub bootstrap_dynamic: serde_json::Value,
    /// Settings until the cluster's `config` key says otherwise.
    pub ha: HaConfig,
    /// The local PostgreSQL.
    pub instance: InstanceConfig,
    /// `postgresql.authentication.rewind`: who pg_rewind logs in as on the source;
    /// `None`: the superuser.
    pub rewind: Option<Credentials>,
    /// How long pg_ctl may take to start, stop or promote.
    pub pg_ctl_timeout: Duration,
    /// `postgresql.callbacks` and `postgresql.pre_promote`.
    pub callbacks: Callbacks,
    /// `watchdog`: the device and the fencer that stop PostgreSQL when the agent stops
    /// renewing its lease.
    pub watchdog: crate::watchdog::WatchdogSpec,
}

/// Operators' scripts, as in Patroni: each a command line, called with the action, the
/// member's role and the cluster's name appended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Callbacks {
    pub on_start: Option<Vec<String>>,
    pub on_stop: Option<Vec<String>>,
    pub on_restart: Option<Vec<String>>,
    pub on_reload: Option<Vec<String>>,
    pub on_role_change: Option<Vec<String>>,
    /// Run before a promotion; a non-zero exit vetoes it.
    pub pre_promote: Option<Vec<String>>,
}

impl Callbacks {
    /// The command line for `on_start`, `on_stop`, ... by Patroni's name.
    pub fn get(&self, action: &str) -> Option<&Vec<String>> {
        match action {
            "on_start" => self.on_start.as_ref(),
            "on_stop" => self.on_stop.as_ref(),
            "on_restart" => self.on_restart.as_ref(),
            "on_reload" => self.on_reload.as_ref(),
            "on_role_change" => self.on_role_change.as_ref(),
            "pre_promote" => self.pre_promote.as_ref(),
            _ => None,
        }
    }
}

/// Split a command line as a POSIX shell would split words: blanks separate, single
/// quotes keep everything, double quotes keep everything but `\"` and `\\`, a
/// backslash outside quotes escapes the next character. `None` for an unclosed quote.
pub fn split_command_line(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => word.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\') => word.push(c),
                            c => {
                                word.push('\\');
                                word.push(c);
                            }
                        },
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next()?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

impl NodeSpec {
    pub fn conn_url(&self) -> String {
        format!(
            "postgres://{}:{}/postgres",
            self.pg_connect_host, self.pg_connect_port
        )
    }
    pub fn api_url(&self) -> String {
        let scheme = if self.api_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/patroni", self.api_connect_address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_split_like_a_shell() {
        assert_eq!(
            split_command_line("/bin/cb --tag 'a b' \"c \\\" d\" e\\ f"),
            Some(vec![
                "/bin/cb".to_string(),
                "--tag".into(),
                "a b".into(),
                "c \" d".into(),
                "e f".into()
            ])
        );
        assert_eq!(split_command_line("  "), Some(vec![]));
        assert_eq!(split_command_line("x 'open"), None);
    }
}
