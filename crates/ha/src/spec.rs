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
}

impl NodeSpec {
    pub fn conn_url(&self) -> String {
        format!(
            "postgres://{}:{}/postgres",
            self.pg_connect_host, self.pg_connect_port
        )
    }
    pub fn api_url(&self) -> String {
        format!("http://{}/patroni", self.api_connect_address)
    }
}
