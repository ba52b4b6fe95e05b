//! `GET /metrics`: the member in Prometheus text format — Patroni's metric names (so
//! existing dashboards keep working) and pgherd's own counters and last decision.

use super::named_in_sync_key;
use crate::decide::SynchronousMode;
use crate::status::{NodeStatus, Role, SharedStatus};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::fmt::Write;
use std::time::SystemTime;

pub(super) async fn metrics(State(st): State<SharedStatus>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&st.get()),
    )
        .into_response()
}

/// The exposition text for one status snapshot.
pub fn render(s: &NodeStatus) -> String {
    let labels = format!(
        "scope=\"{}\",name=\"{}\"",
        escape(&s.scope),
        escape(&s.name)
    );
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    };
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let primary = s.role == Role::Primary && s.holds_leader && s.running;
    gauge(
        "patroni_postgres_running",
        "PostgreSQL answers queries.",
        flag(s.running),
    );
    gauge(
        "patroni_primary",
        "This member is the running primary holding the leader key.",
        flag(primary),
    );
    gauge(
        "patroni_master",
        "Same as patroni_primary (older name).",
        flag(primary),
    );
    gauge(
        "patroni_replica",
        "This member runs a replica.",
        flag(s.running && s.in_recovery),
    );
    gauge(
        "patroni_sync_standby",
        "This member is a synchronous standby.",
        flag(named_in_sync_key(s, SynchronousMode::On)),
    );
    gauge(
        "patroni_quorum_standby",
        "This member is a quorum standby (synchronous_mode: quorum).",
        flag(named_in_sync_key(s, SynchronousMode::Quorum)),
    );
    gauge(
        "patroni_postgres_timeline",
        "PostgreSQL's timeline.",
        f64::from(s.timeline.unwrap_or(0)),
    );
    let lsn = |v: Option<u64>| v.unwrap_or(0) as f64;
    if s.in_recovery {
        gauge(
            "patroni_xlog_received_location",
            "Last WAL position received.",
            lsn(s.receive_lsn.or(s.wal_lsn)),
        );
        gauge(
            "patroni_xlog_replayed_location",
            "Last WAL position replayed.",
            lsn(s.replay_lsn.or(s.wal_lsn)),
        );
    } else {
        gauge(
            "patroni_xlog_location",
            "Current WAL position.",
            lsn(s.wal_lsn),
        );
    }
    gauge(
        "patroni_postgres_server_version",
        "PostgreSQL's version number.",
        f64::from(s.server_version.unwrap_or(0)),
    );
    let unlocked = s.cluster.as_ref().is_some_and(|c| c.leader.is_none());
    gauge(
        "patroni_cluster_unlocked",
        "Nobody holds the leader key.",
        flag(unlocked),
    );
    let seen = s
        .dcs_last_seen
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs() as f64);
    gauge(
        "patroni_dcs_last_seen",
        "When the DCS was last read (seconds since the epoch).",
        seen,
    );
    gauge(
        "patroni_pending_restart",
        "A changed parameter needs a restart.",
        flag(s.pending_restart),
    );
    gauge("patroni_is_paused", "Maintenance mode.", flag(s.ha.paused));
    gauge(
        "patroni_failsafe_mode_is_active",
        "Failsafe mode keeps the primary running without the DCS.",
        flag(super::failsafe_is_active(s)),
    );
    gauge(
        "pgherd_replication_lag_bytes",
        "Bytes behind the cluster's last known primary position (0 on the primary).",
        if primary {
            0.0
        } else {
            s.lag_bytes().unwrap_or(0) as f64
        },
    );
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    };
    counter(
        "pgherd_leader_lease_renewals_total",
        "Successful takes and renewals of the leader key by this agent.",
        s.lease_renewals,
    );
    counter(
        "pgherd_promotions_total",
        "Promotions of this member's PostgreSQL by this agent (failovers and switchovers).",
        s.promotions,
    );
    if let Some((action, reason)) = &s.last_decision {
        let _ = writeln!(
            out,
            "# HELP pgherd_last_decision_info The HA loop's last decision and its reason."
        );
        let _ = writeln!(out, "# TYPE pgherd_last_decision_info gauge");
        let _ = writeln!(
            out,
            "pgherd_last_decision_info{{{labels},action=\"{}\",reason=\"{}\"}} 1",
            escape(action),
            escape(reason)
        );
    }
    out
}

/// A label value: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::default_ha_config;
    use pgherd_dcs::Tags;

    #[test]
    fn a_primary_renders_patronis_names_and_pgherds_counters() {
        let mut s = NodeStatus::new(
            "node1",
            "demo",
            String::new(),
            String::new(),
            default_ha_config(),
            Tags::default(),
        );
        s.role = Role::Primary;
        s.running = true;
        s.holds_leader = true;
        s.timeline = Some(3);
        s.wal_lsn = Some(1234);
        s.lease_renewals = 7;
        s.promotions = 1;
        s.last_decision = Some(("renew_leader".into(), "holding the \"leader\" key".into()));
        let text = render(&s);
        for line in [
            "patroni_primary{scope=\"demo\",name=\"node1\"} 1",
            "patroni_postgres_timeline{scope=\"demo\",name=\"node1\"} 3",
            "patroni_xlog_location{scope=\"demo\",name=\"node1\"} 1234",
            "pgherd_leader_lease_renewals_total{scope=\"demo\",name=\"node1\"} 7",
            "pgherd_promotions_total{scope=\"demo\",name=\"node1\"} 1",
            "pgherd_last_decision_info{scope=\"demo\",name=\"node1\",action=\"renew_leader\",reason=\"holding the \\\"leader\\\" key\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }
}
