//! `SHOW DATABASES`: the `[databases]` entries (and databases reached through the `*`
//! fallback), plus the console's own.

use super::output::{int, text, Rows, Type};
use super::ADMIN_DATABASE;
use crate::config::DatabaseConfig;
use crate::runtime::Runtime;
use std::collections::BTreeMap;

const COLUMNS: &[(&str, Type)] = &[
    ("name", Type::Text),
    ("host", Type::Text),
    ("port", Type::Int4),
    ("database", Type::Text),
    ("force_user", Type::Text),
    ("pool_size", Type::Int4),
    ("min_pool_size", Type::Int4),
    ("reserve_pool_size", Type::Int4),
    ("server_lifetime", Type::Int4),
    ("pool_mode", Type::Text),
    ("load_balance_hosts", Type::Text),
    ("max_connections", Type::Int4),
    ("current_connections", Type::Int4),
    ("max_client_connections", Type::Int4),
    ("current_client_connections", Type::Int4),
    ("paused", Type::Int4),
    ("disabled", Type::Int4),
];

/// pgherd's column, shown only when databases follow a cluster: a routed database's
/// cluster, role and the members it routes to now.
const ROUTE: (&str, Type) = ("route", Type::Text);

fn client_connections(rt: &Runtime, database: &str) -> usize {
    rt.clients()
        .iter()
        .filter(|c| c.view().database.as_deref() == Some(database))
        .count()
}

pub fn run(rt: &Runtime) -> Rows {
    let config = rt.config();
    let s = &config.settings;
    let mut databases: BTreeMap<String, DatabaseConfig> = config.databases.clone();
    for pool in rt.pools() {
        if !databases.contains_key(&pool.key.database) {
            if let Some(db) = config.resolve_database(&pool.key.database) {
                databases.insert(pool.key.database.clone(), db);
            }
        }
    }
    let global_max_clients: u64 = s
        .passive
        .get("max_db_client_connections")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let pools = rt.pools();
    let routed = config.cluster.is_some();
    let mut rows = Rows::new(COLUMNS);
    if routed {
        rows.columns.push(ROUTE);
    }
    for (name, db) in &databases {
        let current: usize = pools
            .iter()
            .filter(|p| &p.key.database == name)
            .map(|p| p.server_count())
            .sum();
        let paused = rt.is_database_paused(name);
        let default_scope = config.cluster.as_ref().and_then(|c| c.scope.as_deref());
        let spec = db.route(default_scope);
        // A routed database's members now (from any of its pools; none yet: no pool).
        let members = pools
            .iter()
            .filter(|p| &p.key.database == name)
            .find_map(|p| p.routed_endpoints())
            .unwrap_or_default();
        let route = spec.as_ref().map(|r| {
            let names: Vec<&str> = members.iter().map(|e| e.member.as_str()).collect();
            let to = if names.is_empty() {
                "none".to_string()
            } else {
                names.join(",")
            };
            format!("{} {}: {to}", r.scope, r.role)
        });
        let (host, port) = match (spec.is_some(), members.first()) {
            (true, Some(e)) => (Some(e.host.clone()), e.port),
            (true, None) => (None, 0),
            (false, _) => ((!db.host.is_empty()).then(|| db.host.join(",")), db.port),
        };
        let mut row = vec![
            text(name),
            host,
            int(port),
            text(db.server_dbname(name)),
            db.user.clone(),
            int(db.pool_size.unwrap_or(s.default_pool_size)),
            int(db.min_pool_size.unwrap_or(s.min_pool_size)),
            int(db.reserve_pool_size.unwrap_or(s.reserve_pool_size)),
            int(db.server_lifetime.unwrap_or(s.server_lifetime).as_secs()),
            db.pool_mode.map(|m| m.as_str().to_string()),
            (db.host.len() > 1).then(|| "round-robin".to_string()),
            int(db
                .max_db_connections
                .unwrap_or(s.max_db_connections)
                .unwrap_or(0)),
            int(current),
            int(db
                .max_db_client_connections
                .map(|m| u64::from(m.unwrap_or(0)))
                .unwrap_or(global_max_clients)),
            int(client_connections(rt, name)),
            int(u8::from(paused)),
            int(0),
        ];
        if routed {
            row.push(route);
        }
        rows.push(row);
    }
    let mut row = vec![
        text(ADMIN_DATABASE),
        None,
        int(s.listen_port),
        text(ADMIN_DATABASE),
        text(ADMIN_DATABASE),
        int(2),
        int(0),
        int(0),
        int(s.server_lifetime.as_secs()),
        text("statement"),
        None,
        int(0),
        int(0),
        int(0),
        int(client_connections(rt, ADMIN_DATABASE)),
        int(0),
        int(0),
    ];
    if routed {
        row.push(None);
    }
    rows.push(row);
    rows
}
