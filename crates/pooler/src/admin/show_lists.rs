//! `SHOW LISTS`: sizes of the pooler's internal lists, PgBouncer's names.

use super::output::{int, text, Rows, Type};
use crate::client::ClientState;
use crate::runtime::Runtime;

pub fn run(rt: &Runtime) -> Rows {
    let config = rt.config();
    let pools = rt.pools();
    let clients = rt.clients();
    let login = clients
        .iter()
        .filter(|c| c.view().state == ClientState::Login)
        .count();
    let servers: usize = pools.iter().map(|p| p.server_count()).sum();
    let mut databases: std::collections::BTreeSet<&str> =
        config.databases.keys().map(String::as_str).collect();
    databases.extend(pools.iter().map(|p| p.key.database.as_str()));
    // +1: the console's own database, user and pool, which PgBouncer counts.
    let users = super::show_users::user_names(rt).len();
    let mut rows = Rows::new(&[("list", Type::Text), ("items", Type::Int4)]);
    for (name, n) in [
        ("databases", databases.len() + 1),
        ("users", users),
        ("peers", 0),
        ("pools", pools.len() + 1),
        ("peer_pools", 0),
        ("free_clients", 0),
        ("used_clients", clients.len()),
        ("login_clients", login),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        rows.push(vec![text(name), int(n)]);
    }
    rows
}
