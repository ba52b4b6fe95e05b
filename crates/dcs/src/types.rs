//! Values stored in the DCS, in Patroni's JSON shapes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A value together with the store's version of its key (etcd `mod_revision`), used for
/// compare-and-set.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: i64,
}

/// Everything the DCS knows about one cluster, read in one snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cluster {
    /// `initialize`: the system identifier of the cluster, once bootstrapped.
    pub initialize: Option<String>,
    /// `config`: dynamic configuration (Patroni's JSON).
    pub config: Option<Versioned<serde_json::Value>>,
    /// `leader`: the member name holding the leader lease.
    pub leader: Option<Versioned<String>>,
    /// `members/*`, sorted by name.
    pub members: Vec<Member>,
    /// `history`: one entry per promotion, oldest first.
    pub history: Vec<HistoryEntry>,
    /// `failover`: a pending switchover/failover request.
    pub failover: Option<Versioned<FailoverRequest>>,
    /// `sync`: who is the synchronous standby.
    pub sync: Option<Versioned<SyncState>>,
    /// `status`: the leader's last published WAL position.
    pub status: Option<ClusterStatus>,
    /// `poolers/*` (pgherd): what each live pooler routes writes by, sorted by id.
    pub poolers: Vec<Pooler>,
    /// `failsafe`: the members (name → REST API URL) the leader last saw, written while
    /// `failsafe_mode` is on. Without the DCS the leader stays primary only while every
    /// one of them answers it; a member missing from it may not race for the key.
    pub failsafe: Option<BTreeMap<String, String>>,
}

impl Cluster {
    pub fn leader_name(&self) -> Option<&str> {
        self.leader.as_ref().map(|l| l.value.as_str())
    }
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
}

/// One `poolers/<id>` key (pgherd's; Patroni ignores it), bound to the pooler's lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Pooler {
    pub id: String,
    pub state: PoolerState,
}

/// What a pooler publishes: the leader key it last read and the member it sends writes
/// to. A new leader promotes only once every live pooler has read it as the leader
/// (and so dropped the old primary).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolerState {
    /// The `leader` key's value when the pooler last read the cluster.
    #[serde(default)]
    pub leader: Option<String>,
    /// The member it routes writes to now (`None`: none, clients wait).
    #[serde(default)]
    pub routes_to: Option<String>,
    /// A switchover (this `failover` key version) is pending, and the pooler holds new
    /// transactions and has none left running on the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained_for: Option<i64>,
}

/// One `members/<name>` key.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub data: MemberData,
}

/// `postgres://[user@]host:port/db` (a member's `conn_url`) → (host, port); port 5432
/// when absent, brackets around an IPv6 address removed.
pub fn parse_conn_url(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split('/').next()?;
    let hostport = authority.rsplit('@').next()?;
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, 5432),
    };
    Some((host.trim_matches(['[', ']']).to_string(), port))
}

/// The JSON a member publishes about itself (Patroni field names).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberData {
    /// `postgres://host:port/postgres`
    pub conn_url: String,
    /// `http://host:port/patroni`
    pub api_url: String,
    /// `running`, `streaming`, `starting`, `stopped`, `crashed`, `creating replica`, ...
    pub state: String,
    /// `primary`, `replica`, `uninitialized`, `demoted`
    pub role: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Current WAL position (write LSN on a primary, replay/receive LSN on a replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xlog_location: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(default, skip_serializing_if = "Tags::is_default")]
    pub tags: Tags,
    /// `pause` is set while the cluster is in maintenance mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<bool>,
    /// Fields we do not interpret but keep (other tools may write them).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Patroni's member tags.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tags {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nofailover: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub noloadbalance: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clonefrom: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nosync: bool,
    /// Any other tag, kept as written.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Tags {
    pub fn is_default(&self) -> bool {
        *self == Tags::default()
    }
}

/// One promotion, stored as Patroni's array `[timeline, lsn, reason, timestamp, new_leader]`.
/// `timeline` is the timeline that ended, `lsn` where it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub timeline: u32,
    pub lsn: u64,
    pub reason: String,
    /// ISO-8601 time of the promotion.
    pub timestamp: String,
    pub new_leader: String,
}

impl Serialize for HistoryEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (
            &self.timeline,
            &self.lsn,
            &self.reason,
            &self.timestamp,
            &self.new_leader,
        )
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for HistoryEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // Patroni writes 3 to 5 elements depending on its version.
        let v: Vec<serde_json::Value> = Vec::deserialize(d)?;
        let num = |i: usize| v.get(i).and_then(|x| x.as_u64());
        let text = |i: usize| v.get(i).and_then(|x| x.as_str()).unwrap_or("").to_string();
        Ok(HistoryEntry {
            timeline: num(0)
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| serde::de::Error::custom("history entry without a timeline"))?,
            lsn: num(1).unwrap_or(0),
            reason: text(2),
            timestamp: text(3),
            new_leader: text(4),
        })
    }
}

/// The `failover` key: a request to move leadership (Patroni's shape).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailoverRequest {
    /// The current leader that should step down (switchover); absent for failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The member that should take over; absent means "the best one". Patroni stores
    /// and reads it as `member`, so that is the name on the wire.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "member",
        alias = "candidate"
    )]
    pub candidate: Option<String>,
    /// ISO-8601 time for a scheduled switchover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
}

/// The `sync` key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncState {
    #[serde(default)]
    pub leader: Option<String>,
    #[serde(default)]
    pub sync_standby: Option<String>,
    /// Quorum commit (Patroni 4): how many of `sync_standby` besides itself a member
    /// must see before it may take over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
}

/// The `status` key: the leader's last WAL position and its replication slots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    #[serde(default)]
    pub optime: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slots: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATRONI3_MEMBER: &str = r#"{"conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"http://127.0.0.1:8008/patroni","state":"running","role":"primary","version":"3.0.2","xlog_location":67108960,"timeline":1}"#;

    #[test]
    fn patroni3_member_json_parses_and_round_trips() {
        let m: MemberData = serde_json::from_str(PATRONI3_MEMBER).unwrap();
        assert_eq!(m.conn_url, "postgres://127.0.0.1:5432/postgres");
        assert_eq!(m.api_url, "http://127.0.0.1:8008/patroni");
        assert_eq!(m.state, "running");
        assert_eq!(m.role, "primary");
        assert_eq!(m.version, "3.0.2");
        assert_eq!(m.xlog_location, Some(67108960));
        assert_eq!(m.timeline, Some(1));
        assert!(m.tags.is_default());
        assert!(m.extra.is_empty());
        let back: serde_json::Value = serde_json::to_value(&m).unwrap();
        let orig: serde_json::Value = serde_json::from_str(PATRONI3_MEMBER).unwrap();
        assert_eq!(back, orig);
    }

    #[test]
    fn member_json_keeps_tags_and_unknown_fields() {
        let text = r#"{"conn_url":"postgres://h:5432/postgres","api_url":"http://h:8008/patroni","state":"streaming","role":"replica","tags":{"nofailover":true,"zone":"a"},"pending_restart":true,"replication_state":"streaming"}"#;
        let m: MemberData = serde_json::from_str(text).unwrap();
        assert!(m.tags.nofailover);
        assert_eq!(m.tags.other.get("zone"), Some(&serde_json::json!("a")));
        assert_eq!(
            m.extra.get("pending_restart"),
            Some(&serde_json::json!(true))
        );
        assert_eq!(m.replication_state.as_deref(), Some("streaming"));
        let back: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(text).unwrap()
        );
    }

    #[test]
    fn patroni_history_parses() {
        let text =
            r#"[[1,25165984,"no recovery target specified","2024-01-01T00:00:00+00:00","node2"]]"#;
        let h: Vec<HistoryEntry> = serde_json::from_str(text).unwrap();
        assert_eq!(
            h,
            vec![HistoryEntry {
                timeline: 1,
                lsn: 25165984,
                reason: "no recovery target specified".into(),
                timestamp: "2024-01-01T00:00:00+00:00".into(),
                new_leader: "node2".into(),
            }]
        );
        assert_eq!(serde_json::to_string(&h).unwrap(), text);
    }

    #[test]
    fn old_patroni_history_with_three_fields_parses() {
        let h: Vec<HistoryEntry> =
            serde_json::from_str(r#"[[1,100,"no recovery target specified"]]"#).unwrap();
        assert_eq!(h[0].timeline, 1);
        assert_eq!(h[0].new_leader, "");
    }

    #[test]
    fn history_entry_without_timeline_is_an_error_not_a_panic() {
        assert!(serde_json::from_str::<Vec<HistoryEntry>>(r#"[["x"]]"#).is_err());
        assert!(serde_json::from_str::<Vec<HistoryEntry>>(r#"[[]]"#).is_err());
        assert!(serde_json::from_str::<Vec<HistoryEntry>>(r#"{"a":1}"#).is_err());
    }

    #[test]
    fn failover_uses_patroni_member_field() {
        let f: FailoverRequest =
            serde_json::from_str(r#"{"leader":"node1","member":"node2","scheduled_at":null}"#)
                .unwrap();
        assert_eq!(f.leader.as_deref(), Some("node1"));
        assert_eq!(f.candidate.as_deref(), Some("node2"));
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"leader":"node1","member":"node2"}"#
        );
        let old: FailoverRequest = serde_json::from_str(r#"{"candidate":"node3"}"#).unwrap();
        assert_eq!(old.candidate.as_deref(), Some("node3"));
    }

    #[test]
    fn sync_and_status_parse_patroni_shapes() {
        let s: SyncState =
            serde_json::from_str(r#"{"leader":"node1","sync_standby":"node2","quorum":0}"#)
                .unwrap();
        assert_eq!(s.sync_standby.as_deref(), Some("node2"));
        assert_eq!(s.quorum, Some(0));
        let st: ClusterStatus = serde_json::from_str(
            r#"{"optime":67108960,"slots":{"node2":67108960},"retain_slots":["node2"]}"#,
        )
        .unwrap();
        assert_eq!(st.optime, 67108960);
        assert_eq!(st.slots.get("node2"), Some(&67108960));
    }
}
