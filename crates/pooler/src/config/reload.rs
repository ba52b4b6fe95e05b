//! What a `RELOAD` changes.
//!
//! [`diff`] compares two configurations key by key. Changes to settings PgBouncer
//! marks `CF_NO_RELOAD` (listen_addr, listen_port, listen_backlog, unix_socket_dir,
//! unix_socket_mode, unix_socket_group, pidfile, pkt_buf, user, so_reuseport,
//! disable_pqexec, resolv_conf, job_name, peer_id) and to pgherd's `cluster` and
//! `routes` (they define listeners and the DCS connection) are `changeable: false`:
//! the runtime keeps the old value and says a restart is needed. Everything else —
//! databases, users, pool sizes, timeouts, auth settings, TLS files — applies at
//! `RELOAD`.

use std::collections::BTreeSet;

use super::cluster::{ClusterConfig, Route};
use super::PoolerConfig;

/// One difference between two configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `pgbouncer.<setting>`, `databases.<name>` (`databases.*` for the fallback),
    /// `users.<name>`, `cluster` or `routes`.
    pub key: String,
    /// The old value as text (`None`: absent). Database passwords show as `****`.
    pub old: Option<String>,
    pub new: Option<String>,
    /// Whether `RELOAD` applies it (otherwise a restart is needed).
    pub changeable: bool,
}

/// Every difference from `old` to `new`, settings first (in `SHOW CONFIG` order), then
/// databases, users, cluster and routes.
pub fn diff(old: &PoolerConfig, new: &PoolerConfig) -> Vec<Change> {
    let mut changes = Vec::new();
    for (a, b) in old
        .settings
        .show_config()
        .into_iter()
        .zip(new.settings.show_config())
    {
        if a.value != b.value {
            changes.push(Change {
                key: format!("pgbouncer.{}", a.key),
                old: Some(a.value),
                new: Some(b.value),
                changeable: a.changeable,
            });
        }
    }

    let names: BTreeSet<&String> = old.databases.keys().chain(new.databases.keys()).collect();
    for name in names {
        let (a, b) = (old.databases.get(name), new.databases.get(name));
        if a != b {
            changes.push(Change {
                key: format!("databases.{name}"),
                old: a.map(|d| d.to_connstr_redacted()),
                new: b.map(|d| d.to_connstr_redacted()),
                changeable: true,
            });
        }
    }
    if old.fallback_database != new.fallback_database {
        changes.push(Change {
            key: "databases.*".into(),
            old: old
                .fallback_database
                .as_ref()
                .map(|d| d.to_connstr_redacted()),
            new: new
                .fallback_database
                .as_ref()
                .map(|d| d.to_connstr_redacted()),
            changeable: true,
        });
    }

    let users: BTreeSet<&String> = old.users.keys().chain(new.users.keys()).collect();
    for name in users {
        let (a, b) = (old.users.get(name), new.users.get(name));
        if a != b {
            changes.push(Change {
                key: format!("users.{name}"),
                old: a.map(|u| format!("{u:?}")),
                new: b.map(|u| format!("{u:?}")),
                changeable: true,
            });
        }
    }

    if old.cluster != new.cluster {
        changes.push(Change {
            key: "cluster".into(),
            old: old.cluster.as_ref().map(show_cluster),
            new: new.cluster.as_ref().map(show_cluster),
            changeable: false,
        });
    }
    if old.routes != new.routes {
        changes.push(Change {
            key: "routes".into(),
            old: Some(show_routes(&old.routes)),
            new: Some(show_routes(&new.routes)),
            changeable: false,
        });
    }
    changes
}

fn show_cluster(c: &ClusterConfig) -> String {
    format!(
        "scope={} namespace={} etcd3.hosts={} https={} username={} dcs_timeout={}",
        c.scope.as_deref().unwrap_or(""),
        c.namespace,
        c.etcd3.hosts.join(","),
        c.etcd3.uses_tls(),
        c.etcd3.username.as_deref().unwrap_or(""),
        c.dcs_timeout.as_secs_f64()
    )
}

fn show_routes(routes: &[Route]) -> String {
    routes
        .iter()
        .map(|r| format!("{}:{}", r.listen_port, r.role))
        .collect::<Vec<_>>()
        .join(",")
}

impl PoolerConfig {
    /// The changes from `self` to `new` that `RELOAD` cannot apply.
    pub fn restart_required(&self, new: &PoolerConfig) -> Vec<Change> {
        diff(self, new)
            .into_iter()
            .filter(|c| !c.changeable)
            .collect()
    }
}
