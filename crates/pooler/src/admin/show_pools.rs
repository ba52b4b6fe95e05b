//! `SHOW POOLS`: one row per (database, user) pool, plus the console's own.

use super::output::{int, text, Rows, Type};
use super::ADMIN_DATABASE;
use crate::client::ClientState;
use crate::pool::ServerState;
use crate::runtime::Runtime;
use std::time::Instant;

const COLUMNS: &[(&str, Type)] = &[
    ("database", Type::Text),
    ("user", Type::Text),
    ("cl_active", Type::Int4),
    ("cl_waiting", Type::Int4),
    ("cl_active_cancel_req", Type::Int4),
    ("cl_waiting_cancel_req", Type::Int4),
    ("sv_active", Type::Int4),
    ("sv_active_cancel", Type::Int4),
    ("sv_being_canceled", Type::Int4),
    ("sv_idle", Type::Int4),
    ("sv_used", Type::Int4),
    ("sv_tested", Type::Int4),
    ("sv_login", Type::Int4),
    ("maxwait", Type::Int4),
    ("maxwait_us", Type::Int4),
    ("pool_mode", Type::Text),
    ("load_balance_hosts", Type::Text),
];

/// Client counts of one pool: (active, waiting, longest wait so far).
pub(super) fn client_counts(rt: &Runtime, database: &str, user: &str) -> (usize, usize, u128) {
    let now = Instant::now();
    let (mut active, mut waiting, mut max_wait) = (0, 0, 0u128);
    for c in rt.clients() {
        let v = c.view();
        if v.database.as_deref() != Some(database) || v.user.as_deref() != Some(user) {
            continue;
        }
        match v.state {
            ClientState::Active => active += 1,
            ClientState::Waiting => {
                waiting += 1;
                if let Some(s) = v.waiting_since {
                    max_wait = max_wait.max(now.duration_since(s).as_micros());
                }
            }
            ClientState::Login => {}
        }
    }
    (active, waiting, max_wait)
}

pub fn run(rt: &Runtime) -> Rows {
    let config = rt.config();
    let mut rows = Rows::new(COLUMNS);
    let mut pools = rt.pools();
    pools.sort_by(|a, b| a.key.cmp(&b.key));
    for pool in pools {
        let key = &pool.key;
        let (cl_active, cl_waiting, max_wait) = client_counts(rt, &key.database, &key.user);
        let limits = pool.limits();
        let check_due = |since: Instant| {
            limits.server_check_query.is_some() && since.elapsed() >= limits.server_check_delay
        };
        let (mut sv_active, mut sv_idle, mut sv_used) = (0, 0, 0);
        for s in pool.servers() {
            match s.state {
                ServerState::Active => sv_active += 1,
                ServerState::Idle if check_due(s.since) => sv_used += 1,
                ServerState::Idle => sv_idle += 1,
            }
        }
        let sv_login = pool
            .stats
            .servers_connecting
            .load(std::sync::atomic::Ordering::Relaxed);
        let db = config.resolve_database(&key.database);
        let mode = match &db {
            Some(db) => rt.pool_mode(db, &key.user),
            None => config.settings.pool_mode,
        };
        let load_balance = db
            .as_ref()
            .filter(|d| d.host.len() > 1)
            .map(|_| "round-robin".to_string());
        rows.push(vec![
            text(&key.database),
            text(&key.user),
            int(cl_active),
            int(cl_waiting),
            int(0),
            int(0),
            int(sv_active),
            int(0),
            int(0),
            int(sv_idle),
            int(sv_used),
            int(0),
            int(sv_login),
            int(max_wait / 1_000_000),
            int(max_wait % 1_000_000),
            text(mode.as_str()),
            load_balance,
        ]);
    }
    // The console's own pool, as PgBouncer lists it (statement mode, no servers).
    let mut admins = 0;
    for c in rt.clients() {
        if c.view().database.as_deref() == Some(ADMIN_DATABASE) {
            admins += 1;
        }
    }
    rows.push(vec![
        text(ADMIN_DATABASE),
        text(ADMIN_DATABASE),
        int(admins),
        int(0),
        int(0),
        int(0),
        int(0),
        int(0),
        int(0),
        int(0),
        int(0),
        int(0),
        int(0),
        int(0),
        int(0),
        text("statement"),
        None,
    ]);
    rows
}
