//! `SHOW USERS`: users known from `auth_file`, `[users]` and the pools.

use super::output::{int, text, Rows, Type};
use super::ADMIN_DATABASE;
use crate::runtime::Runtime;
use std::collections::BTreeSet;

const COLUMNS: &[(&str, Type)] = &[
    ("name", Type::Text),
    ("pool_size", Type::Text),
    ("reserve_pool_size", Type::Text),
    ("pool_mode", Type::Text),
    ("max_user_connections", Type::Int4),
    ("current_connections", Type::Int4),
    ("max_user_client_connections", Type::Int4),
    ("current_client_connections", Type::Int4),
];

/// Every user name the pooler knows, with the console's own `pgbouncer`.
pub(super) fn user_names(rt: &Runtime) -> BTreeSet<String> {
    let config = rt.config();
    let mut names: BTreeSet<String> = rt.userlist().iter().map(|(u, _)| u.to_string()).collect();
    names.extend(config.users.keys().cloned());
    names.extend(rt.pools().iter().map(|p| p.key.user.clone()));
    names.insert(ADMIN_DATABASE.to_string());
    names
}

pub fn run(rt: &Runtime) -> Rows {
    let config = rt.config();
    let s = &config.settings;
    let pools = rt.pools();
    let clients = rt.clients();
    let global_max_clients: u64 = s
        .passive
        .get("max_user_client_connections")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut rows = Rows::new(COLUMNS);
    for name in user_names(rt) {
        let u = config.users.get(&name);
        let servers: usize = pools
            .iter()
            .filter(|p| p.key.user == name)
            .map(|p| p.server_count())
            .sum();
        let connected = clients
            .iter()
            .filter(|c| c.view().user.as_deref() == Some(name.as_str()))
            .count();
        rows.push(vec![
            text(&name),
            text(
                u.and_then(|u| u.pool_size)
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
            ),
            text(
                u.and_then(|u| u.reserve_pool_size)
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
            ),
            u.and_then(|u| u.pool_mode).map(|m| m.as_str().to_string()),
            int(u
                .and_then(|u| u.max_user_connections)
                .unwrap_or(s.max_user_connections)
                .unwrap_or(0)),
            int(servers),
            int(u
                .and_then(|u| u.max_user_client_connections)
                .map(|m| u64::from(m.unwrap_or(0)))
                .unwrap_or(global_max_clients)),
            int(connected),
        ]);
    }
    rows
}
