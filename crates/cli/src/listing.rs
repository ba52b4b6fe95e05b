//! The cluster listing, laid out like `patronictl list`.

use pgherd_dcs::Cluster;
use serde_json::{json, Value};

/// One row of the listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub member: String,
    pub host: String,
    pub role: String,
    pub state: String,
    pub timeline: Option<u32>,
    /// Megabytes behind the leader; `None` for the leader or when unknown.
    pub lag_mb: Option<u64>,
    /// A changed parameter waits for a restart (Patroni's `pending_restart`).
    pub pending_restart: bool,
}

/// Rows for every member, leader first, then by name (as patronictl sorts).
pub fn rows(cluster: &Cluster) -> Vec<Row> {
    let leader = cluster.leader_name();
    let leader_lsn = cluster.status.as_ref().map(|s| s.optime).or_else(|| {
        leader
            .and_then(|l| cluster.member(l))
            .and_then(|m| m.data.xlog_location)
    });
    let sync = pgherd_ha::key_members(cluster);
    let sync_role = match pgherd_ha::dynamic::synchronous_mode_of(cluster) {
        pgherd_ha::SynchronousMode::Quorum => "Quorum Standby",
        _ => "Sync Standby",
    };
    let mut rows: Vec<Row> = cluster
        .members
        .iter()
        .map(|m| {
            let is_leader = Some(m.name.as_str()) == leader;
            // patronictl's role names.
            let role = if is_leader {
                "Leader"
            } else if sync.contains(&m.name) {
                sync_role
            } else {
                "Replica"
            };
            let host = pgherd_ha::runner::parse_conn_url(&m.data.conn_url)
                .map(|(h, p)| format!("{h}:{p}"))
                .unwrap_or_else(|| m.data.conn_url.clone());
            let lag_mb = match (is_leader, leader_lsn, m.data.xlog_location) {
                (false, Some(l), Some(x)) => Some(l.saturating_sub(x) / (1 << 20)),
                _ => None,
            };
            Row {
                member: m.name.clone(),
                host,
                role: role.to_string(),
                state: m.data.state.clone(),
                timeline: m.data.timeline,
                lag_mb,
                pending_restart: m.data.extra.get("pending_restart") == Some(&Value::Bool(true)),
            }
        })
        .collect();
    rows.sort_by(|a, b| (a.role != "Leader", &a.member).cmp(&(b.role != "Leader", &b.member)));
    rows
}

/// The listing as a text table with patronictl's columns.
pub fn table(scope: &str, cluster: &Cluster) -> String {
    render(scope, cluster, rows(cluster))
}

/// `topology`: the table as a tree, each replica (`+ name`) under the leader it streams
/// from, as `patronictl topology` draws it. pgherd's replicas all follow the leader.
pub fn topology(scope: &str, cluster: &Cluster) -> String {
    let mut rows = rows(cluster);
    if cluster.leader.is_some() {
        for r in rows.iter_mut().filter(|r| r.role != "Leader") {
            r.member = format!("+ {}", r.member);
        }
    }
    render(scope, cluster, rows)
}

fn render(scope: &str, cluster: &Cluster, rows: Vec<Row>) -> String {
    // As patronictl: the column only when some member has a restart pending.
    let pending = rows.iter().any(|r| r.pending_restart);
    let mut header = vec!["Member", "Host", "Role", "State", "TL", "Lag in MB"];
    if pending {
        header.push("Pending restart");
    }
    let body: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            let mut cells = vec![
                r.member,
                r.host,
                r.role,
                r.state,
                r.timeline.map(|t| t.to_string()).unwrap_or_default(),
                r.lag_mb.map(|l| l.to_string()).unwrap_or_default(),
            ];
            if pending {
                cells.push(if r.pending_restart { "*" } else { "" }.to_string());
            }
            cells
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &body {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let rule = |out: &mut String| {
        out.push('+');
        for w in &widths {
            out.push_str(&"-".repeat(w + 2));
            out.push('+');
        }
        out.push('\n');
    };
    let line = |out: &mut String, cells: &[String]| {
        out.push('|');
        for (i, (w, cell)) in widths.iter().zip(cells).enumerate() {
            // Numbers right-aligned, text left-aligned, as patronictl does.
            if i >= 4 {
                out.push_str(&format!(" {cell:>w$} |"));
            } else {
                out.push_str(&format!(" {cell:<w$} |"));
            }
        }
        out.push('\n');
    };
    let mut out = String::new();
    let title = format!(
        "+ Cluster: {scope} ({}) ",
        cluster.initialize.as_deref().unwrap_or("uninitialized")
    );
    let total: usize = widths.iter().map(|w| w + 3).sum::<usize>() + 1;
    out.push_str(&title);
    out.push_str(&"-".repeat(total.saturating_sub(title.len() + 1)));
    out.push_str("+\n");
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    line(&mut out, &header);
    rule(&mut out);
    for row in &body {
        line(&mut out, row);
    }
    rule(&mut out);
    if cluster
        .config
        .as_ref()
        .and_then(|c| c.value.get("pause"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        out.push_str(" Maintenance mode: on\n");
    }
    out
}

/// The listing as JSON, with the keys `patronictl list -f json` prints.
pub fn json(scope: &str, cluster: &Cluster) -> Value {
    let rows: Vec<Value> = rows(cluster)
        .into_iter()
        .map(|r| {
            let mut v = json!({"Cluster": scope, "Member": r.member, "Host": r.host,
                               "Role": r.role, "State": r.state});
            if let Some(t) = r.timeline {
                v["TL"] = json!(t);
            }
            if let Some(l) = r.lag_mb {
                v["Lag in MB"] = json!(l);
            }
            if r.pending_restart {
                v["Pending restart"] = json!("*");
            }
            v
        })
        .collect();
    json!(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgherd_dcs::{ClusterStatus, Member, MemberData, Versioned};

    fn member(name: &str, port: u16, state: &str, lsn: u64) -> Member {
        Member {
            name: name.into(),
            data: MemberData {
                conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
                api_url: String::new(),
                state: state.into(),
                role: String::new(),
                xlog_location: Some(lsn),
                timeline: Some(2),
                ..Default::default()
            },
        }
    }

    #[test]
    fn listing_shows_leader_first_and_lag_in_megabytes() {
        let cluster = Cluster {
            initialize: Some("7300".into()),
            leader: Some(Versioned {
                value: "node2".into(),
                version: 1,
            }),
            members: vec![
                member("node1", 5433, "streaming", 0),
                member("node2", 5432, "running", 5 << 20),
            ],
            status: Some(ClusterStatus {
                optime: 5 << 20,
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = table("postgres", &cluster);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("+ Cluster: postgres (7300) "));
        assert!(lines[1].contains("| Member | Host"));
        assert!(
            lines[3].contains("| node2  | 127.0.0.1:5432 | Leader  | running   |  2 |           |"),
            "{t}"
        );
        assert!(
            lines[4].contains("| node1  | 127.0.0.1:5433 | Replica | streaming |  2 |         5 |"),
            "{t}"
        );
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() == lines[1].chars().count()),
            "{t}"
        );
        let j = json("postgres", &cluster);
        assert_eq!(j[1]["Lag in MB"], 5);
        assert_eq!(j[0]["Role"], "Leader");
        assert!(!t.contains("Pending restart"), "{t}");
    }

    #[test]
    fn topology_draws_replicas_under_the_leader() {
        let cluster = Cluster {
            leader: Some(Versioned {
                value: "node2".into(),
                version: 1,
            }),
            members: vec![
                member("node1", 5433, "streaming", 0),
                member("node2", 5432, "running", 0),
            ],
            ..Default::default()
        };
        let t = topology("postgres", &cluster);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[3].starts_with("| node2   |"), "{t}");
        assert!(lines[4].starts_with("| + node1 |"), "{t}");
    }

    #[test]
    fn a_pending_restart_adds_patronictls_column() {
        let mut waiting = member("node1", 5433, "streaming", 0);
        waiting
            .data
            .extra
            .insert("pending_restart".into(), Value::Bool(true));
        let cluster = Cluster {
            leader: Some(Versioned {
                value: "node2".into(),
                version: 1,
            }),
            members: vec![waiting, member("node2", 5432, "running", 0)],
            ..Default::default()
        };
        let t = table("postgres", &cluster);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].contains("| Pending restart |"), "{t}");
        assert!(
            lines[4].starts_with("| node1 ") && lines[4].ends_with("* |"),
            "{t}"
        );
        assert!(!lines[3].contains('*'), "{t}");
        let j = json("postgres", &cluster);
        assert_eq!(j[1]["Pending restart"], "*");
        assert!(j[0].get("Pending restart").is_none());
    }
}
