//! What the agent knows about its member right now, shared with the REST API.

use crate::decide::HaConfig;
use pgherd_dcs::{Cluster, Tags};
use pgherd_postgres::ReplicationRow;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

/// The role this member's PostgreSQL plays, as Patroni names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
    /// No data directory yet.
    Uninitialized,
    /// Stopped after giving up the leader key.
    Demoted,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Uninitialized => "uninitialized",
            Role::Demoted => "demoted",
        }
    }
}

/// One snapshot of the member, refreshed every tick.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub name: String,
    pub scope: String,
    pub api_url: String,
    pub conn_url: String,
    /// Patroni's `state`: `running`, `streaming`, `stopped`, `starting`, `creating replica`, ...
    pub state: String,
    pub role: Role,
    /// PostgreSQL answers queries (a postmaster still recovering is not running yet).
    pub running: bool,
    pub in_recovery: bool,
    pub timeline: Option<u32>,
    pub wal_lsn: Option<u64>,
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    /// Standbys streaming from us.
    pub replication: Vec<ReplicationRow>,
    /// This member holds the leader key.
    pub holds_leader: bool,
    /// The last DCS snapshot that could be read.
    pub cluster: Option<Cluster>,
    pub dcs_last_seen: Option<SystemTime>,
    pub last_tick: Option<Instant>,
    pub ha: HaConfig,
    pub tags: Tags,
    pub system_identifier: Option<String>,
    pub server_version: Option<u32>,
    pub postmaster_start_time: Option<String>,
    pub pending_restart: bool,
    /// pre_promote vetoed a promotion lately: not a candidate for now.
    pub promotion_vetoed: bool,
    /// The PostgreSQL parameters last written, as PostgreSQL reads them, with where
    /// each came from (`default`, `cluster`, `local`).
    pub parameters: BTreeMap<String, (String, &'static str)>,
    /// The HA settings in effect (Patroni's names, values as in the `config` key), with
    /// where each came from.
    pub ha_settings: Vec<(&'static str, serde_json::Value, &'static str)>,
    /// Successful takes and renewals of the leader key since the agent started.
    pub lease_renewals: u64,
    /// Promotions since the agent started.
    pub promotions: u64,
    /// The last decision's action (`Action::name`) and reason.
    pub last_decision: Option<(String, String)>,
    /// Why this member, as leader, last dropped a switchover or failover request.
    pub last_request_dropped: Option<String>,
    /// On the primary: the DCS is unreachable and every member confirmed us lately
    /// (failsafe mode).
    pub failsafe_active: bool,
    /// On a replica: the leader that last confirmed itself with `POST /failsafe`, and when.
    pub failsafe_heard: Option<(String, Instant)>,
}

impl NodeStatus {
    pub fn new(
        name: &str,
        scope: &str,
        api_url: String,
        conn_url: String,
        ha: HaConfig,
        tags: Tags,
    ) -> Self {
        NodeStatus {
            name: name.to_string(),
            scope: scope.to_string(),
            api_url,
            conn_url,
            state: "starting".into(),
            role: Role::Uninitialized,
            running: false,
            in_recovery: false,
            timeline: None,
            wal_lsn: None,
            receive_lsn: None,
            replay_lsn: None,
            replication: Vec::new(),
            holds_leader: false,
            cluster: None,
            dcs_last_seen: None,
            last_tick: None,
            ha,
            tags,
            system_identifier: None,
            server_version: None,
            postmaster_start_time: None,
            pending_restart: false,
            promotion_vetoed: false,
            parameters: BTreeMap::new(),
            ha_settings: Vec::new(),
            lease_renewals: 0,
            promotions: 0,
            last_decision: None,
            last_request_dropped: None,
            failsafe_active: false,
            failsafe_heard: None,
        }
    }

    /// Bytes this member is behind the cluster's last known primary position.
    pub fn lag_bytes(&self) -> Option<u64> {
        let optime = self
            .cluster
            .as_ref()
            .and_then(|c| c.status.as_ref())
            .map(|s| s.optime)?;
        Some(optime.saturating_sub(self.wal_lsn.unwrap_or(0)))
    }
}

/// The status shared between the agent loop (writer) and the REST API (readers).
#[derive(Debug, Clone)]
pub struct SharedStatus(Arc<RwLock<NodeStatus>>);

impl SharedStatus {
    pub fn new(status: NodeStatus) -> Self {
        SharedStatus(Arc::new(RwLock::new(status)))
    }
    /// A copy of the current status.
    pub fn get(&self) -> NodeStatus {
        // A poisoned lock only means a writer panicked mid-update; the data is still the
        // best we have, so keep serving it.
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
    pub fn update(&self, f: impl FnOnce(&mut NodeStatus)) {
        match self.0.write() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }
}
