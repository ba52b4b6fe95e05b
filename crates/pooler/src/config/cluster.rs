//! pgherd's extension to the pooler configuration (YAML only): where to watch the
//! cluster's topology and which listeners route to which role. Parsed and validated
//! here; the runtime that uses it lives elsewhere.
//!
//! ```yaml
//! cluster:
//!   scope: batman            # Patroni's scope
//!   namespace: /service/     # Patroni's namespace (default /service/)
//!   etcd3:
//!     hosts: [10.0.0.1:2379, 10.0.0.2:2379]   # or "10.0.0.1:2379,10.0.0.2:2379"
//! routes:
//!   - listen_port: 6432
//!     role: primary
//!   - listen_port: 6433
//!     role: replica
//! ```

use std::collections::BTreeMap;
use std::fmt;

use super::{ConfigError, ErrorKind, Location, PoolerConfig};

/// Where the cluster's leader and members are published (Patroni's layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub scope: String,
    /// Default `/service/`, as in Patroni.
    pub namespace: String,
    pub etcd3: Etcd3Config,
}

/// Patroni's default namespace.
pub const DEFAULT_NAMESPACE: &str = "/service/";

/// etcd v3 endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etcd3Config {
    /// `host:port` endpoints.
    pub hosts: Vec<String>,
}

/// Which members a route's listener sends clients to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteRole {
    /// The leader only.
    Primary,
    /// Healthy replicas not tagged `noloadbalance`, falling back to the primary.
    Replica,
    /// Any healthy member.
    Any,
}

impl RouteRole {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteRole::Primary => "primary",
            RouteRole::Replica => "replica",
            RouteRole::Any => "any",
        }
    }

    pub(crate) fn parse(v: &str) -> Option<RouteRole> {
        match v.to_ascii_lowercase().as_str() {
            // Patroni's REST API spells the primary three ways.
            "primary" | "master" | "leader" => Some(RouteRole::Primary),
            "replica" | "standby" => Some(RouteRole::Replica),
            "any" => Some(RouteRole::Any),
            _ => None,
        }
    }
}

impl fmt::Display for RouteRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A listener that routes by role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub listen_port: u16,
    pub role: RouteRole,
}

/// Cross-checks once everything is read: routes need a cluster and distinct ports.
pub(crate) fn check(config: &PoolerConfig, at: Option<&Location>, errors: &mut Vec<ConfigError>) {
    if config.routes.is_empty() {
        return;
    }
    let at = at
        .cloned()
        .unwrap_or_else(|| Location::new("<config>", None));
    if config.cluster.is_none() {
        errors.push(ConfigError::new(
            at.clone(),
            Some("routes".into()),
            ErrorKind::Inconsistent,
            "routes need a cluster section to learn the topology from",
        ));
    }
    let mut seen: BTreeMap<u16, usize> = BTreeMap::new();
    for (i, r) in config.routes.iter().enumerate() {
        if let Some(first) = seen.insert(r.listen_port, i) {
            errors.push(ConfigError::new(
                at.clone(),
                Some(format!("routes[{i}].listen_port")),
                ErrorKind::Inconsistent,
                format!("port {} is already used by routes[{first}]", r.listen_port),
            ));
        }
    }
}
