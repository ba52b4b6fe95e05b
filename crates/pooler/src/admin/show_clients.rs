//! `SHOW CLIENTS` and `SHOW SERVERS`: one row per socket, with PgBouncer's socket
//! columns (`socket_header` in its admin.c), then pgherd's `member` when databases follow
//! a cluster.

use super::output::{client_ptr, int, server_ptr, text, timestamp, Rows, Type};
use crate::client::ClientState;
use crate::pool::ServerState;
use crate::runtime::Runtime;
use std::time::Instant;

const COLUMNS: &[(&str, Type)] = &[
    ("type", Type::Text),
    ("user", Type::Text),
    ("database", Type::Text),
    ("replication", Type::Text),
    ("state", Type::Text),
    ("addr", Type::Text),
    ("port", Type::Int4),
    ("local_addr", Type::Text),
    ("local_port", Type::Int4),
    ("connect_time", Type::Text),
    ("request_time", Type::Text),
    ("wait", Type::Int4),
    ("wait_us", Type::Int4),
    ("close_needed", Type::Int4),
    ("ptr", Type::Text),
    ("link", Type::Text),
    ("remote_pid", Type::Int4),
    ("tls", Type::Text),
    ("application_name", Type::Text),
    ("prepared_statements", Type::Int4),
    ("id", Type::Int4),
];

/// pgherd's column, shown only when databases follow a cluster (PgBouncer's columns stay
/// exactly PgBouncer's otherwise): the member a routed pool's server is on.
const MEMBER: (&str, Type) = ("member", Type::Text);

/// The socket columns, with `member` when the configuration follows a cluster.
fn columns(rt: &Runtime) -> (Rows, bool) {
    let routed = rt.config().cluster.is_some();
    let mut rows = Rows::new(COLUMNS);
    if routed {
        rows.columns.push(MEMBER);
    }
    (rows, routed)
}

pub fn clients(rt: &Runtime) -> Rows {
    let (mut rows, routed) = columns(rt);
    let now = Instant::now();
    for c in rt.clients() {
        let v = c.view();
        let state = match (v.state, v.link) {
            // PgBouncer lists logging-in clients only in SHOW SOCKETS.
            (ClientState::Login, _) => continue,
            (ClientState::Waiting, _) => "waiting",
            (ClientState::Active, Some(_)) => "active",
            (ClientState::Active, None) => "idle",
        };
        let wait = v
            .waiting_since
            .map(|s| now.duration_since(s).as_micros())
            .unwrap_or(0);
        let local = c.local_addr;
        let mut row = vec![
            text("C"),
            v.user.clone(),
            v.database.clone(),
            text("none"),
            text(state),
            text(c.peer.addr_and_port().0),
            int(c.peer.addr_and_port().1),
            local.map(|a| a.ip().to_string()),
            int(local.map(|a| a.port()).unwrap_or(0)),
            text(timestamp(c.connect_time)),
            text(timestamp(v.request_time)),
            int(wait / 1_000_000),
            int(wait % 1_000_000),
            int(0),
            text(client_ptr(c.id)),
            text(v.link.map(server_ptr).unwrap_or_default()),
            int(0),
            text(v.tls.clone()),
            text(v.application_name.clone().unwrap_or_default()),
            int(0),
            int(c.id),
        ];
        if routed {
            row.push(None);
        }
        rows.push(row);
    }
    rows
}

pub fn servers(rt: &Runtime) -> Rows {
    let (mut rows, routed) = columns(rt);
    let mut pools = rt.pools();
    pools.sort_by(|a, b| a.key.cmp(&b.key));
    for pool in pools {
        let limits = pool.limits();
        let generation = pool.generation();
        for s in pool.servers() {
            let state = match s.state {
                ServerState::Active => "active",
                ServerState::Idle
                    if limits.server_check_query.is_some()
                        && s.since.elapsed() >= limits.server_check_delay =>
                {
                    "used"
                }
                ServerState::Idle => "idle",
            };
            let mut row = vec![
                text("S"),
                text(&pool.key.user),
                text(&pool.key.database),
                text("none"),
                text(state),
                text(s.addr.addr_and_port().0),
                int(s.addr.addr_and_port().1),
                s.local_addr.map(|a| a.ip().to_string()),
                int(s.local_addr.map(|a| a.port()).unwrap_or(0)),
                text(timestamp(s.connect_time)),
                text(timestamp(s.request_time)),
                int(0),
                int(0),
                int(u8::from(s.generation < generation)),
                text(server_ptr(s.id)),
                text(s.link.map(client_ptr).unwrap_or_default()),
                int(s.backend_pid),
                text(s.tls.clone()),
                text(""),
                int(0),
                int(s.id),
            ];
            if routed {
                row.push(s.endpoint.as_ref().map(|e| e.member.clone()));
            }
            rows.push(row);
        }
    }
    rows
}
