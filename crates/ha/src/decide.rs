//! The HA decision: a pure function from what a member observes to what it should do.
//!
//! No I/O, no clock of its own: the runner gathers an [`Observation`], calls [`decide`],
//! and executes the returned actions in order. An action that does not succeed (a lost
//! race for the leader key, a failed renewal) stops the rest of the list, and the runner
//! observes and decides again at once — so every list is written as "each step is the
//! precondition of the next". Every action is idempotent.
//!
//! Two runner obligations keep the lease rule (DESIGN §3.1) true; the simulation
//! (`tests/simulation.rs`) fails without them:
//! - while it believes it leads, the runner cuts every DCS call short at the time its lease
//!   is certain to run (send time of the last successful renewal + ttl) minus the time a
//!   demotion needs, and treats the cut as "DCS unreadable". `loop_wait + 2 * retry_timeout
//!   <= ttl` alone is not enough: a renewal, a failed `touch_member` and a failed read can
//!   follow each other with a sleep in between, and the demotion itself takes time;
//! - [`Action::Promote`] re-checks the lease and records `history` before promoting.

use pgherd_dcs::{Cluster, FailoverRequest, HistoryEntry, Versioned};

/// Milliseconds on the runner's monotonic clock (fake in the simulation).
pub type Millis = u64;

/// Dynamic settings that steer decisions (Patroni's names).
#[derive(Debug, Clone, PartialEq)]
pub struct HaConfig {
    pub ttl: Millis,
    pub loop_wait: Millis,
    pub retry_timeout: Millis,
    /// Bytes a replica may be behind the last known primary position and still take over.
    pub maximum_lag_on_failover: u64,
    pub use_pg_rewind: bool,
    pub use_slots: bool,
    /// Maintenance mode: no automatic action, only publishing state.
    pub paused: bool,
    /// `synchronous_mode`: only a member that holds every acknowledged write may take over.
    pub synchronous_mode: SynchronousMode,
    /// `synchronous_mode_strict`: with no synchronous standby, commits wait rather than
    /// going asynchronous.
    pub synchronous_mode_strict: bool,
    /// `synchronous_node_count`: how many synchronous standbys (default 1).
    pub synchronous_node_count: u32,
    /// How long the leader keeps the replication slot of a member whose key vanished
    /// (Patroni 4's `member_slots_ttl`, default 30 min; 0: drop it at once).
    pub member_slots_ttl: Millis,
    /// How long a crashed primary is restarted in place before its leader key is released
    /// (0: at once).
    pub primary_start_timeout: Millis,
    /// `failsafe_mode`: without the DCS, the leader stays primary while every member of
    /// the `failsafe` key confirms it over the REST API (`POST /failsafe`).
    pub failsafe_mode: bool,
}

/// Patroni's `synchronous_mode`: `off`, `on` (`FIRST n`) or `quorum` (`ANY n`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SynchronousMode {
    #[default]
    Off,
    /// Commits wait for the first `synchronous_node_count` standbys the `sync` key names,
    /// and only those may take over.
    On,
    /// Commits wait for any `n` of the standbys in the `sync` key; a member may take over
    /// once it has seen that enough of them are not ahead of it (`decide/quorum.rs`).
    Quorum,
}

impl SynchronousMode {
    /// `on` or `quorum`: commits wait for standbys.
    pub fn is_active(self) -> bool {
        self != SynchronousMode::Off
    }

    /// As Patroni writes it in the dynamic config: `false`, `true` or `"quorum"`.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            SynchronousMode::Off => false.into(),
            SynchronousMode::On => true.into(),
            SynchronousMode::Quorum => "quorum".into(),
        }
    }
}

/// What the member sees of its own PostgreSQL.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalPg {
    pub data_dir: DataDirState,
    /// The postmaster is running and accepts connections.
    pub running: bool,
    /// `pg_is_in_recovery()` (when running), or the control file says it was a standby
    /// (when stopped).
    pub in_recovery: bool,
    pub timeline: Option<u32>,
    /// Current WAL position: write LSN on a primary; on a replica the larger of received
    /// and replayed LSN.
    pub wal_lsn: Option<u64>,
    /// The name of the member this replica streams from, if any (from primary_conninfo).
    pub following: Option<String>,
    /// The system identifier from pg_controldata, when a data directory exists.
    pub system_identifier: Option<String>,
    /// Stopped, and the control file says this primary shut down cleanly: its WAL ends
    /// with the shutdown checkpoint, which starts at `wal_lsn`.
    pub shut_down_cleanly: bool,
    /// On a primary: the standbys connected to it (pg_stat_replication), by member name.
    pub standbys: Vec<Standby>,
    /// On a running server: `synchronous_standby_names` as PostgreSQL applies it.
    pub sync_setting: Option<SyncSetting>,
    /// On a running server: its physical replication slots that nobody streams from.
    pub inactive_slots: Vec<String>,
}

/// One standby connected to this primary, as pg_stat_replication shows it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Standby {
    /// Its `application_name`: the member's name.
    pub name: String,
    /// Its WAL sender is in the `streaming` state.
    pub streaming: bool,
    /// What it has flushed to disk.
    pub flush_lsn: Option<u64>,
    /// pg_stat_replication's `sync_state` is `sync`: commits wait for it.
    pub synchronous: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirState {
    /// Missing or empty: needs initdb or a clone.
    Empty,
    /// Holds a cluster that was last a primary (control file "in production" or "shut down").
    Primary,
    /// Holds a cluster that was last a standby.
    Standby,
}

/// One other member's answer to `GET /patroni`, asked when the leader key is gone.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    pub name: String,
    /// `None` when the member did not answer.
    pub wal_lsn: Option<u64>,
    pub timeline: Option<u32>,
    pub nofailover: bool,
    /// The peer runs a writable PostgreSQL (then nobody else may take over).
    pub is_primary: bool,
}

/// Memory the runner carries between ticks on the member's behalf.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentMemory {
    /// When this member last renewed the leader key successfully (runner clock).
    pub last_leader_renewal: Option<Millis>,
    /// Failed rewind attempts since the last success: after one failure, re-clone.
    pub rewind_failed: bool,
    /// Since when (runner clock) the DCS has shown no leader, as last read; kept by
    /// [`AgentMemory::saw_cluster`].
    pub no_leader_since: Option<Millis>,
    /// Since when this member has held the leader key with its PostgreSQL down; kept by
    /// [`AgentMemory::saw_own_postgres`].
    pub primary_down_since: Option<Millis>,
    /// When this member last gave up the leader key (crashed primary, switchover,
    /// shutdown): for one ttl it leaves the key to the others.
    pub released_leader_at: Option<Millis>,
    /// The primary's WAL position when it last changed `synchronous_standby_names`: a new
    /// synchronous standby joins the `sync` key once it has flushed that far.
    pub sync_set_at_lsn: Option<u64>,
    /// When each member's key was last seen (for `member_slots_ttl`).
    pub members_seen: std::collections::BTreeMap<String, Millis>,
    /// The `failover` key's version and when it was first seen (a switchover waits a
    /// bounded time for the poolers to drain).
    pub request_seen: Option<(i64, Millis)>,
    /// The `failsafe` key as last read: whom a leader without the DCS must hear from.
    pub failsafe_members: Option<std::collections::BTreeMap<String, String>>,
    /// `pg_ctl promote` failures in a row while holding the leader key (a full disk, a
    /// broken WAL directory): after [`MAX_FAILED_PROMOTIONS`] the key goes to another member.
    pub failed_promotions: u32,
}

/// How many promotions in a row may fail before the leader key is given up. A promotion
/// can fail once for a passing reason (a slow checkpoint, a timeout); one that fails every
/// time would otherwise hold the key, and block every failover, for ever.
pub const MAX_FAILED_PROMOTIONS: u32 = 3;

impl AgentMemory {
    /// Note whether PostgreSQL is down while this member holds the leader key.
    pub fn saw_own_postgres(&mut self, leads_while_down: bool, now: Millis) {
        if !leads_while_down {
            self.primary_down_since = None;
        } else if self.primary_down_since.is_none_or(|since| since > now) {
            self.primary_down_since = Some(now);
        }
    }

    /// Note a successful read of the DCS at `now`. A clock that went back restarts the
    /// count, so no wait it bounds can last longer than meant.
    pub fn saw_cluster(&mut self, cluster: &Cluster, now: Millis) {
        for m in &cluster.members {
            self.members_seen.insert(m.name.clone(), now);
        }
        if cluster.leader.is_some() {
            self.no_leader_since = None;
        } else if self.no_leader_since.is_none_or(|since| since > now) {
            self.no_leader_since = Some(now);
        }
        self.failsafe_members = cluster.failsafe.clone();
        self.request_seen = match (&cluster.failover, self.request_seen) {
            (None, _) => None,
            (Some(f), Some((v, at))) if v == f.version && at <= now => Some((v, at)),
            (Some(f), _) => Some((f.version, now)),
        };
    }
}

/// Everything `decide` may look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub now: Millis,
    /// The wall clock, seconds since the epoch (a scheduled switchover is due by it).
    pub wall_clock_secs: i64,
    pub me: String,
    pub my_tags_nofailover: bool,
    pub local: LocalPg,
    /// The DCS snapshot, or `None` when the DCS could not be read this tick.
    pub cluster: Option<Cluster>,
    /// Other members' status, present only right after an `AskPeers` action.
    pub peers: Option<Vec<PeerStatus>>,
    /// The answers of the `failsafe` key's members, present only right after an
    /// `AskFailsafe` action.
    pub failsafe: Option<FailsafeRound>,
    /// The leader that last confirmed itself to us with `POST /failsafe`, and when
    /// (runner clock).
    pub failsafe_heard: Option<(String, Millis)>,
    /// An operator's request to this member, waiting to be carried out this tick.
    pub request: Option<MemberRequest>,
    pub memory: AgentMemory,
}

/// How the members of the `failsafe` key answered a leader that cannot reach the DCS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailsafeRound {
    /// Every one of them accepted it as the primary: none will take over for a ttl.
    Confirmed,
    /// Some did not answer or refused; why, by member.
    Refused(String),
}

/// What an operator asks of one member through its REST API (`ctl restart`, `ctl
/// reload`, `ctl reinit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRequest {
    /// Stop and start PostgreSQL: a replica stays a replica (no failover), the primary
    /// restarts in place under its lease.
    Restart,
    /// Rewrite postgresql.conf and reload it.
    Reload,
    /// Throw the replica's data away and clone it afresh from the leader.
    Reinitialize,
}

/// How to stop being a primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoteMode {
    /// Lost the DCS or the lease: stop fast and restart read-only with no upstream, so no
    /// write can be acknowledged while another member may take over.
    Offline,
    /// Another member holds the leader key: stop fast, then rejoin it as a replica.
    Follow,
    /// A switchover: checkpoint, stop cleanly (connected standbys receive all WAL on the
    /// way down), record where the WAL ends as the `status` optime, release the leader
    /// key. PostgreSQL stays stopped; it rejoins the new leader without pg_rewind.
    Graceful,
}

/// What the runner should do. Names of other members refer to `cluster.members`.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Race for the `initialize` key, then initdb, start, create users, take the leader
    /// key and publish the system identifier. Only when the cluster has no `initialize`.
    Initialize,
    /// Take the leader key if absent (fails when another member won the race).
    AcquireLeader,
    /// Renew the lease and confirm the leader key is still ours (fails otherwise).
    RenewLeader,
    /// Give up the leader key.
    ReleaseLeader,
    /// Promote the local standby. In this order: check by the runner's own clock that the
    /// lease taken or renewed this tick still runs; record the promotion in `history`
    /// ([`history_after_promotion`] with the timeline being left and the current LSN);
    /// then `pg_ctl promote`. Recording first means every timeline that can exist is in
    /// the DCS, so no later promotion reuses its number. Nothing to do on a primary.
    Promote,
    Demote(DemoteMode),
    /// Start the stopped PostgreSQL as a standby of `upstream` (`None`: no upstream yet).
    StartReplica {
        upstream: Option<String>,
    },
    /// Start the stopped PostgreSQL writable. Only right after `RenewLeader` succeeded,
    /// for data that was last the primary of the cluster's newest timeline: a crashed
    /// primary that still holds its key comes back without a needless timeline switch.
    StartPrimary,
    /// Point a running standby at `upstream` (rewrite primary_conninfo, reload).
    Follow {
        upstream: String,
    },
    /// Clone an empty data directory from `from` with pg_basebackup.
    Clone {
        from: String,
    },
    /// Stop if needed, pg_rewind from `from`, then start as its standby.
    Rewind {
        from: String,
    },
    /// Stop PostgreSQL if it runs (a diverged replica that cannot rewind), then remove the
    /// data directory so that the next tick clones afresh.
    RemoveDataDir,
    /// Ask other members for their WAL positions; the runner decides again with `peers`.
    AskPeers,
    /// Without the DCS, on a primary in failsafe mode: `POST /failsafe` to every other
    /// member of the `failsafe` key; the runner decides again with `failsafe`. Confirmed,
    /// it counts as a lease renewal sent when the round started: each member that
    /// accepted stays out of the race for a ttl from then.
    AskFailsafe,
    /// Write the `failsafe` key: these members (name → API URL).
    SetFailsafe(std::collections::BTreeMap<String, String>),
    /// The operator's restart: stop (fast), then start writable when `as_primary` and
    /// the lease still runs by the runner's clock, otherwise as a standby of the leader.
    Restart {
        as_primary: bool,
    },
    /// The operator's reload: rewrite postgresql.conf, then `pg_ctl reload`.
    Reload,
    /// The operator's reinit: stop, remove the data directory, clone it from `from` and
    /// start as its standby — in one step, so it also runs in maintenance mode.
    Reinitialize {
        from: String,
    },
    /// On the primary: make the physical slots exactly these (one per other member).
    EnsureSlots(Vec<String>),
    /// Delete the `failover` key if it is still at this version: the switchover or
    /// failover it asked for is done, stale or impossible.
    ClearFailover {
        version: i64,
    },
    /// Name us as the leader stepping down in the `failover` key, if it is still at this
    /// version; then observe again at once.
    AdoptRequest {
        version: i64,
    },
    /// Write `synchronous_standby_names` (`None`: leave it unset) and reload; remember
    /// the WAL position it took effect at.
    SetSyncStandbys(Option<SyncSetting>),
    /// Write the `sync` key naming us as leader and these synchronous standbys, if it is
    /// still at `version` (0: absent). `quorum`: in quorum mode, how many of them besides
    /// itself a member must see before it may take over (0 otherwise).
    SetSyncKey {
        standbys: Vec<String>,
        quorum: u32,
        version: i64,
    },
    /// Nothing to do until the next tick.
    Wait,
}

impl Action {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Initialize => "initialize",
            Action::AcquireLeader => "acquire_leader",
            Action::RenewLeader => "renew_leader",
            Action::ReleaseLeader => "release_leader",
            Action::Promote => "promote",
            Action::Demote(DemoteMode::Offline) => "demote_offline",
            Action::Demote(DemoteMode::Follow) => "demote_follow",
            Action::Demote(DemoteMode::Graceful) => "step_down",
            Action::StartReplica { .. } => "start_replica",
            Action::StartPrimary => "start_primary",
            Action::Follow { .. } => "follow",
            Action::Clone { .. } => "clone",
            Action::Rewind { .. } => "rewind",
            Action::RemoveDataDir => "remove_data_dir",
            Action::AskPeers => "ask_peers",
            Action::AskFailsafe => "ask_failsafe",
            Action::SetFailsafe(_) => "set_failsafe",
            Action::Restart { .. } => "restart",
            Action::Reload => "reload",
            Action::Reinitialize { .. } => "reinitialize",
            Action::EnsureSlots(_) => "ensure_slots",
            Action::ClearFailover { .. } => "clear_failover",
            Action::AdoptRequest { .. } => "adopt_request",
            Action::SetSyncStandbys(_) => "set_sync_standbys",
            Action::SetSyncKey { .. } => "set_sync_key",
            Action::Wait => "wait",
        }
    }

    /// Carries out an operator's [`MemberRequest`].
    pub fn is_operator_request(&self) -> bool {
        matches!(
            self,
            Action::Restart { .. } | Action::Reload | Action::Reinitialize { .. }
        )
    }
}

/// Why an action was chosen; logged with every decision.
pub type Reason = String;

/// Append-only history helper used by the runner after a promotion.
pub fn history_after_promotion(
    history: &[HistoryEntry],
    ended_timeline: u32,
    switch_lsn: u64,
    reason: &str,
    timestamp: &str,
    new_leader: &str,
) -> Vec<HistoryEntry> {
    let mut h = history.to_vec();
    if h.last().is_none_or(|e| e.timeline < ended_timeline) {
        h.push(HistoryEntry {
            timeline: ended_timeline,
            lsn: switch_lsn,
            reason: reason.to_string(),
            timestamp: timestamp.to_string(),
            new_leader: new_leader.to_string(),
        });
    }
    h
}

/// The member's view of itself that it publishes (kept here so the simulation can use it).
pub fn is_writable(local: &LocalPg) -> bool {
    local.running && !local.in_recovery
}

/// The physical replication slot the leader keeps for `member` (Patroni's naming, so a
/// migrated cluster keeps its slots).
pub use pgherd_postgres::slot_name;

/// The newest timeline the cluster is known to have reached: one past the last promotion
/// in `history`, or a newer one a live member publishes.
///
/// The runner records a promotion in `history` *before* `pg_ctl promote`, so that every
/// timeline that may exist is known here. A recorded promotion whose new leader still
/// publishes the timeline it was leaving never happened (member and leader keys share one
/// lease, so that member key is not stale): it does not count.
pub fn cluster_timeline(cluster: &Cluster) -> Option<u32> {
    let from_history = cluster.history.last().map(|e| {
        let never_promoted = cluster
            .member(&e.new_leader)
            .and_then(|m| m.data.timeline)
            .is_some_and(|t| t <= e.timeline);
        if never_promoted {
            e.timeline
        } else {
            e.timeline + 1
        }
    });
    let from_members = cluster.members.iter().filter_map(|m| m.data.timeline).max();
    from_history.max(from_members)
}

#[path = "decide/quorum.rs"]
mod quorum;
#[path = "decide/requests.rs"]
mod requests;
#[path = "decide/sync.rs"]
mod sync;
#[cfg(test)]
#[path = "decide/tests.rs"]
mod tests;

pub use quorum::key_quorum;
use requests::{race_with_request, request_kind, request_to_leader};
pub(crate) use sync::not_synchronous;
pub use sync::{key_members, sync_setting_on_restart, SyncSetting};

/// Decide what this member does now. See the module docs for the execution rule.
///
/// The rules, in the order they are checked:
/// 1. without the DCS, a writable PostgreSQL demotes itself; nothing else happens;
///    then an operator's request to this member (restart, reload, reinit) is carried out;
/// 2. in maintenance mode only the leader key is renewed;
/// 3. an uninitialized cluster is bootstrapped (or published from existing primary data);
/// 4. an empty data directory is cloned; foreign data is never touched;
/// 5. a stopped PostgreSQL starts as a replica (after a rewind if it led a diverged history);
/// 6. the leader renews its key, then promotes and keeps slots (it releases the key
///    after [`MAX_FAILED_PROMOTIONS`] failed promotions in a row); a pending switchover
///    (the `failover` key) makes it stop cleanly and release the key once a member can
///    take over;
/// 7. a member that follows another leader steps down, rewinds or re-points as needed;
/// 8. with no leader, the healthiest eligible member races for the key — or, with a
///    switchover or failover pending, its candidate (holding all the old leader's WAL).
pub fn decide(obs: &Observation, cfg: &HaConfig) -> Vec<(Action, Reason)> {
    let Some(cluster) = obs.cluster.as_ref() else {
        return without_dcs(obs, cfg);
    };
    if let Some(request) = obs.request {
        return member_request(obs, cluster, request);
    }
    if cfg.paused {
        return while_paused(obs, cluster);
    }
    let Some(initialize) = cluster.initialize.as_deref() else {
        return bootstrap(obs, cluster);
    };
    if obs.local.data_dir == DataDirState::Empty {
        return clone_data_dir(obs, cluster);
    }
    if obs.local.system_identifier.as_deref() != Some(initialize) {
        let ours = obs.local.system_identifier.as_deref().unwrap_or("unknown");
        return wait(format!(
            "system identifier mismatch: data directory has {ours}, cluster has {initialize}; \
             leaving the data untouched"
        ));
    }
    if let Some(release) = give_up_failing_promotion(obs, cluster) {
        return release;
    }
    if !obs.local.running {
        return start_stopped(obs, cluster, cfg);
    }
    match cluster.leader_name() {
        Some(leader) if leader == obs.me => lead(obs, cluster, cfg),
        Some(leader) => follow_leader(obs, cluster, cfg, leader),
        None => race_for_leader(obs, cluster, cfg),
    }
}

fn act(action: Action, reason: impl Into<Reason>) -> (Action, Reason) {
    (action, reason.into())
}

fn wait(reason: impl Into<Reason>) -> Vec<(Action, Reason)> {
    vec![act(Action::Wait, reason)]
}

/// Rule 1: the lease cannot be renewed, so a primary must stop accepting writes before
/// another member may take over — unless, in failsafe mode, every member it last saw
/// confirms it, each promising not to take over for a ttl. Everything else waits for the
/// DCS.
fn without_dcs(obs: &Observation, cfg: &HaConfig) -> Vec<(Action, Reason)> {
    if cfg.paused {
        return wait("DCS is not accessible; paused, so taking no action");
    }
    if !is_writable(&obs.local) {
        return wait("DCS is not accessible; waiting for it");
    }
    if !cfg.failsafe_mode {
        return vec![act(
            Action::Demote(DemoteMode::Offline),
            "DCS is not accessible and this member runs a writable primary: demoting",
        )];
    }
    let demote = |why: String| {
        vec![act(
            Action::Demote(DemoteMode::Offline),
            format!("DCS is not accessible and {why}: demoting"),
        )]
    };
    match &obs.failsafe {
        Some(FailsafeRound::Confirmed) => wait(
            "DCS is not accessible, but every member of the failsafe key confirmed us: \
             continuing as the primary (failsafe mode)",
        ),
        Some(FailsafeRound::Refused(why)) => {
            demote(format!("failsafe mode could not confirm us ({why})"))
        }
        // Only a lease still held can be extended: once it lapsed, the members' promises
        // may have too, and someone may be taking over.
        None if obs.memory.last_leader_renewal.is_none() => {
            demote("this member holds no leader lease that failsafe mode could extend".into())
        }
        None => match &obs.memory.failsafe_members {
            Some(members) if members.contains_key(&obs.me) => vec![act(
                Action::AskFailsafe,
                "DCS is not accessible; failsafe mode: asking every member to confirm us",
            )],
            _ => demote("the failsafe key does not name this member".into()),
        },
    }
}

/// An operator's request, also in maintenance mode: it is not an automatic action.
fn member_request(
    obs: &Observation,
    cluster: &Cluster,
    request: MemberRequest,
) -> Vec<(Action, Reason)> {
    if obs.local.data_dir == DataDirState::Empty {
        return wait(format!(
            "{request:?} requested, but there is no data directory yet"
        ));
    }
    let leads = cluster.leader_name() == Some(obs.me.as_str());
    match request {
        MemberRequest::Reload => vec![act(Action::Reload, "reload requested")],
        MemberRequest::Restart if leads && is_writable(&obs.local) => vec![
            act(
                Action::RenewLeader,
                "restart requested: renewing the leader key first",
            ),
            act(
                Action::Restart { as_primary: true },
                "restart requested: restarting the primary in place",
            ),
        ],
        MemberRequest::Restart => vec![act(
            Action::Restart { as_primary: false },
            "restart requested: restarting the replica (no failover)",
        )],
        MemberRequest::Reinitialize if leads => {
            wait("reinitialize refused: this member holds the leader key")
        }
        MemberRequest::Reinitialize => match leader_member(obs, cluster) {
            Some(leader) => vec![act(
                Action::Reinitialize {
                    from: leader.to_string(),
                },
                format!("reinitialize requested: cloning afresh from leader {leader}"),
            )],
            None => wait("reinitialize refused: there is no leader to clone from"),
        },
    }
}

/// Rule 2: maintenance mode. Keep the leader key so nobody races for it on resume.
fn while_paused(obs: &Observation, cluster: &Cluster) -> Vec<(Action, Reason)> {
    if cluster.leader_name() == Some(obs.me.as_str()) {
        return vec![act(
            Action::RenewLeader,
            "paused: renewing the leader key we hold",
        )];
    }
    wait("paused: no automatic action")
}

/// Rule 3: no `initialize` key yet.
fn bootstrap(obs: &Observation, cluster: &Cluster) -> Vec<(Action, Reason)> {
    match cluster.leader_name() {
        Some(leader) if leader != obs.me => {
            return wait(format!(
                "cluster not initialized but {leader} holds the leader key: waiting for it to \
                 publish the system identifier"
            ))
        }
        _ => {}
    }
    if obs.my_tags_nofailover {
        return wait("cluster not initialized; tagged nofailover, so not bootstrapping it");
    }
    match obs.local.data_dir {
        DataDirState::Empty => vec![act(
            Action::Initialize,
            "cluster not initialized and the data directory is empty: bootstrapping",
        )],
        DataDirState::Primary => vec![act(
            Action::Initialize,
            "cluster not initialized and our data directory was last a primary: publishing it",
        )],
        DataDirState::Standby => wait(
            "cluster not initialized and our data directory holds a standby: waiting for a \
             primary to publish the cluster",
        ),
    }
}

/// Rule 4: an empty data directory in an initialized cluster.
fn clone_data_dir(obs: &Observation, cluster: &Cluster) -> Vec<(Action, Reason)> {
    if let Some(source) = clonefrom_replica(obs, cluster) {
        return vec![act(
            Action::Clone {
                from: source.to_string(),
            },
            format!("data directory is empty: cloning from replica {source} (tagged clonefrom)"),
        )];
    }
    match leader_member(obs, cluster) {
        Some(leader) => vec![act(
            Action::Clone {
                from: leader.to_string(),
            },
            format!("data directory is empty: cloning from leader {leader}"),
        )],
        None => wait(
            "data directory is empty and there is no leader or clonefrom replica to clone from",
        ),
    }
}

/// A running replica tagged `clonefrom`, the most advanced one first (ties by name).
fn clonefrom_replica<'a>(obs: &Observation, cluster: &'a Cluster) -> Option<&'a str> {
    cluster
        .members
        .iter()
        .filter(|m| m.name != obs.me && m.data.tags.clonefrom)
        .filter(|m| {
            m.data.role == "replica" && matches!(m.data.state.as_str(), "running" | "streaming")
        })
        .min_by(|a, b| {
            let lsn = |m: &pgherd_dcs::Member| m.data.xlog_location.unwrap_or(0);
            lsn(b).cmp(&lsn(a)).then_with(|| a.name.cmp(&b.name))
        })
        .map(|m| m.name.as_str())
}

/// The leader, when it is another member whose member key we can connect to.
fn leader_member<'a>(obs: &Observation, cluster: &'a Cluster) -> Option<&'a str> {
    let leader = cluster.leader_name().filter(|l| *l != obs.me)?;
    cluster.member(leader).map(|m| m.name.as_str())
}

/// Rule 5: PostgreSQL is stopped. It always starts as a replica; leadership only ever
/// comes through the lease.
fn start_stopped(obs: &Observation, cluster: &Cluster, cfg: &HaConfig) -> Vec<(Action, Reason)> {
    // We gave the leader key up (our primary crashed, or we stepped down): stay stopped
    // for a ttl, so that we neither answer as a candidate nor race for the key while
    // another member takes over.
    // (A clock that went back ends the wait rather than stretching it.)
    let released_for = obs
        .memory
        .released_leader_at
        .and_then(|at| obs.now.checked_sub(at));
    if cluster.leader.is_none() && released_for.is_some_and(|t| t < cfg.ttl) {
        return wait(
            "we released the leader key less than a ttl ago: staying stopped while another \
             member takes over",
        );
    }
    let leader = cluster.leader_name().filter(|l| *l != obs.me);
    if let Some(leader) = leader {
        // A primary that stopped cleanly ends with its shutdown checkpoint, so the leader's
        // history tells whether it can follow; after a crash its WAL end is unknown.
        if obs.local.data_dir == DataDirState::Primary && !obs.local.shut_down_cleanly {
            return rejoin_diverged(
                obs,
                cluster,
                cfg,
                leader,
                format!(
                    "our data directory was last a primary that did not shut down cleanly, \
                     and {leader} holds the leader key"
                ),
            );
        }
        if let Some(why) = divergence(&obs.local, cluster, leader) {
            return rejoin_diverged(obs, cluster, cfg, leader, why);
        }
    }
    if leader.is_none() && cluster.leader_name() == Some(obs.me.as_str()) {
        let newest = cluster_timeline(cluster);
        let ours_is_newest = obs.local.timeline.is_some() && obs.local.timeline >= newest;
        if obs.local.data_dir == DataDirState::Primary && ours_is_newest {
            let down_for = obs
                .memory
                .primary_down_since
                .map_or(0, |since| obs.now.saturating_sub(since));
            if down_for >= cfg.primary_start_timeout {
                return vec![act(
                    Action::ReleaseLeader,
                    format!(
                        "the primary's PostgreSQL has been down {} s, primary_start_timeout is \
                         {} s: releasing the leader key for a failover",
                        down_for / 1000,
                        cfg.primary_start_timeout / 1000
                    ),
                )];
            }
            return vec![
                act(Action::RenewLeader, "holding the leader key: renewing it"),
                act(
                    Action::StartPrimary,
                    "PostgreSQL is stopped, we hold the leader key and our data is the newest \
                     primary's: starting it as the primary",
                ),
            ];
        }
    }
    let upstream = leader
        .filter(|l| cluster.member(l).is_some())
        .map(str::to_string);
    let reason = match (&upstream, cluster.leader_name()) {
        (Some(l), _) => format!("PostgreSQL is stopped: starting it as a replica of {l}"),
        (None, Some(l)) if l == obs.me => {
            "PostgreSQL is stopped and we hold the leader key: starting it as a replica, \
             promotion follows after renewing the key"
                .to_string()
        }
        (None, Some(l)) => {
            format!(
                "PostgreSQL is stopped: starting it as a replica; leader {l} has no member key yet"
            )
        }
        (None, None) => {
            "PostgreSQL is stopped and there is no leader: starting it as a replica".to_string()
        }
    };
    vec![act(Action::StartReplica { upstream }, reason)]
}

/// Our history left the leader's: rewind onto it, or start afresh when we cannot.
fn rejoin_diverged(
    obs: &Observation,
    cluster: &Cluster,
    cfg: &HaConfig,
    leader: &str,
    why: String,
) -> Vec<(Action, Reason)> {
    if cluster.member(leader).is_none() {
        return wait(format!(
            "{why}; waiting for leader {leader} to publish its member key"
        ));
    }
    if cfg.use_pg_rewind && !obs.memory.rewind_failed {
        // pg_rewind reads the source's timeline from its control file, which a fresh
        // primary updates only at its first checkpoint after promotion: rewinding earlier
        // finds "same timeline" and leaves us diverged. Wait for the leader to publish
        // itself as a primary on its new timeline.
        let published = cluster.member(leader).and_then(|m| {
            (m.data.role == "primary")
                .then_some(m.data.timeline)
                .flatten()
        });
        if published.is_none() || published < leader_timeline(cluster, leader) {
            return wait(format!(
                "{why}; waiting for leader {leader} to finish promoting before rewinding from it"
            ));
        }
        return vec![act(
            Action::Rewind {
                from: leader.to_string(),
            },
            format!("{why}: rewinding from {leader}"),
        )];
    }
    let how = if cfg.use_pg_rewind {
        "the last rewind failed"
    } else {
        "use_pg_rewind is off"
    };
    vec![act(
        Action::RemoveDataDir,
        format!("{why} and {how}: removing the data directory to clone afresh"),
    )]
}

/// Why our WAL cannot be streamed from `leader`'s timeline history, if it cannot.
///
/// A `history` entry `{timeline t, lsn L}` says timeline t ended at L. We diverged when we
/// are on a newer timeline than the leader, or on an older one past where it ended. A
/// cleanly stopped primary's WAL goes on past `wal_lsn` (its shutdown checkpoint starts
/// there), so it diverged unless the leader's timeline ended after that point.
fn divergence(local: &LocalPg, cluster: &Cluster, leader: &str) -> Option<String> {
    let (mine, lsn) = (local.timeline?, local.wal_lsn?);
    let theirs = leader_timeline(cluster, leader)?;
    if mine > theirs {
        return Some(format!(
            "our timeline {mine} is newer than leader {leader}'s timeline {theirs}"
        ));
    }
    if mine == theirs {
        return None;
    }
    let past = |end: u64| {
        if local.shut_down_cleanly {
            lsn >= end
        } else {
            lsn > end
        }
    };
    match cluster.history.iter().find(|e| e.timeline == mine) {
        Some(end) if past(end.lsn) => Some(format!(
            "our WAL position {lsn} on timeline {mine} is past where that timeline ended ({})",
            end.lsn
        )),
        Some(_) => None,
        // Without the switch point we cannot prove we did not diverge; a rewind is safe.
        None => Some(format!(
            "timeline {mine} ended before leader {leader}'s timeline {theirs} but history has no entry for it"
        )),
    }
}

/// The leader's timeline: what it publishes, or newer if `history` records its promotion
/// and it has not published since.
fn leader_timeline(cluster: &Cluster, leader: &str) -> Option<u32> {
    let published = cluster.member(leader).and_then(|m| m.data.timeline);
    let promoted = cluster
        .history
        .last()
        .filter(|e| e.new_leader == leader)
        .map(|e| e.timeline + 1);
    published.max(promoted)
}

/// We hold the leader key but promoting keeps failing: release it, so that a member that
/// can become primary takes over (the runner keeps us out of the race for a ttl).
fn give_up_failing_promotion(
    obs: &Observation,
    cluster: &Cluster,
) -> Option<Vec<(Action, Reason)>> {
    let failures = obs.memory.failed_promotions;
    let leads = cluster.leader_name() == Some(obs.me.as_str());
    (leads && failures >= MAX_FAILED_PROMOTIONS && !is_writable(&obs.local)).then(|| {
        vec![act(
            Action::ReleaseLeader,
            format!(
                "promoting PostgreSQL failed {failures} times in a row: releasing the leader \
                 key so that another member takes over"
            ),
        )]
    })
}

/// Rule 6: we hold the leader key. Renew first: every later step needs the lease.
fn lead(obs: &Observation, cluster: &Cluster, cfg: &HaConfig) -> Vec<(Action, Reason)> {
    let mut actions = vec![act(
        Action::RenewLeader,
        "holding the leader key: renewing it",
    )];
    if obs.local.in_recovery {
        if let Some(why) = poolers_behind(cluster, &obs.me) {
            actions.push(act(Action::Wait, why));
            return actions;
        }
        actions.extend(sync::claim_sync_key(obs, cluster, cfg));
        actions.push(act(
            Action::Promote,
            "holding the leader lock but in recovery: promoting",
        ));
    }
    if !obs.local.in_recovery {
        if let Some(step) = sync::manage_sync(obs, cluster, cfg) {
            actions.push(step);
        }
    }
    if let Some(failover) = &cluster.failover {
        let step = request_to_leader(obs, cluster, cfg, failover);
        let ends_tick = matches!(
            step.0,
            Action::AskPeers | Action::Demote(_) | Action::AdoptRequest { .. }
        );
        actions.push(step);
        if ends_tick {
            return actions;
        }
    }
    actions.extend(failsafe_topology(obs, cluster, cfg));
    actions.extend(keep_slots(obs, cluster, cfg));
    actions
}

/// In failsafe mode, the leader keeps the `failsafe` key naming every member with a REST
/// API, itself included: the members that must confirm it when the DCS is gone.
fn failsafe_topology(
    obs: &Observation,
    cluster: &Cluster,
    cfg: &HaConfig,
) -> Option<(Action, Reason)> {
    if !cfg.failsafe_mode || cluster.member(&obs.me).is_none() {
        return None;
    }
    let members: std::collections::BTreeMap<String, String> = cluster
        .members
        .iter()
        .filter(|m| !m.data.api_url.is_empty())
        .map(|m| (m.name.clone(), m.data.api_url.clone()))
        .collect();
    if cluster.failsafe.as_ref() == Some(&members) || !members.contains_key(&obs.me) {
        return None;
    }
    let names: Vec<&str> = members.keys().map(String::as_str).collect();
    Some(act(
        Action::SetFailsafe(members.clone()),
        format!("failsafe mode: recording the members {names:?} in the failsafe key"),
    ))
}

/// Fencing at the routers (DESIGN §3 rule 7): before we take writes, every live pooler
/// must have read us as the leader, and so dropped the old primary. A pooler that
/// cannot reach the DCS loses its key with its lease (and stops routing writes before).
fn poolers_behind(cluster: &Cluster, me: &str) -> Option<String> {
    let behind: Vec<&str> = cluster
        .poolers
        .iter()
        .filter(|p| p.state.leader.as_deref() != Some(me))
        .map(|p| p.id.as_str())
        .collect();
    (!behind.is_empty()).then(|| {
        format!(
            "holding the leader key, but poolers {behind:?} have not read us as the leader \
             yet: promoting once they have (or their leases run out)"
        )
    })
}

/// One physical slot per other member, so none of them loses WAL it still needs.
/// A member whose key vanished (it reboots, its agent restarts) keeps its slot for
/// `member_slots_ttl`, so that it can resume streaming instead of being cloned again.
fn keep_slots(obs: &Observation, cluster: &Cluster, cfg: &HaConfig) -> Option<(Action, Reason)> {
    if !cfg.use_slots {
        return None;
    }
    let recently_seen = obs
        .memory
        .members_seen
        .iter()
        .filter(|(_, at)| {
            obs.now
                .checked_sub(**at)
                .is_some_and(|ago| ago < cfg.member_slots_ttl)
        })
        .map(|(name, _)| name.as_str());
    let names: std::collections::BTreeSet<&str> = cluster
        .members
        .iter()
        .map(|m| m.name.as_str())
        .chain(recently_seen)
        .filter(|n| *n != obs.me)
        .collect();
    let slots = names.into_iter().map(slot_name).collect();
    Some(act(
        Action::EnsureSlots(slots),
        "keeping one replication slot per other member (and for member_slots_ttl after one \
         vanished)",
    ))
}

/// Rule 7: another member holds the leader key.
fn follow_leader(
    obs: &Observation,
    cluster: &Cluster,
    cfg: &HaConfig,
    leader: &str,
) -> Vec<(Action, Reason)> {
    let local = &obs.local;
    if is_writable(local) {
        return vec![act(
            Action::Demote(DemoteMode::Follow),
            format!(
                "running as a primary but {leader} holds the leader key: demoting to follow it"
            ),
        )];
    }
    if let Some(why) = divergence(local, cluster, leader) {
        return rejoin_diverged(obs, cluster, cfg, leader, why);
    }
    if local.following.as_deref() == Some(leader) {
        if cfg.use_slots && !local.inactive_slots.is_empty() {
            return vec![drop_replica_slots(local)];
        }
        return wait(format!("following leader {leader}"));
    }
    if cluster.member(leader).is_none() {
        return wait(format!(
            "leader {leader} has no member key yet: cannot follow it"
        ));
    }
    vec![act(
        Action::Follow {
            upstream: leader.to_string(),
        },
        format!("replica not following leader {leader}: re-pointing it"),
    )]
}

/// Nobody streams from a replica (pgherd does not cascade), but the slots a demoted
/// primary kept (a clean demotion needs no pg_rewind, which would have removed them) hold
/// its WAL for ever, until its disk fills. With `use_slots` pgherd owns the physical
/// slots: drop them.
fn drop_replica_slots(local: &LocalPg) -> (Action, Reason) {
    act(
        Action::EnsureSlots(Vec::new()),
        format!(
            "a replica keeps no replication slots: dropping {:?}, left from when it was a \
             primary (they would keep its WAL for ever)",
            local.inactive_slots
        ),
    )
}

/// Rule 8: nobody holds the leader key.
fn race_for_leader(obs: &Observation, cluster: &Cluster, cfg: &HaConfig) -> Vec<(Action, Reason)> {
    let writable = is_writable(&obs.local);
    if let Some(why) = failover_ineligibility(obs, cluster, cfg) {
        if writable {
            // A primary without the lease that may not lead must not stay writable.
            return vec![act(
                Action::Demote(DemoteMode::Offline),
                format!("no leader key and we run a primary that may not lead ({why}): demoting"),
            )];
        }
        return wait(format!(
            "no leader, but not racing for the leader key: {why}"
        ));
    }
    if writable {
        let mut actions = vec![act(
            Action::AcquireLeader,
            "no leader key and we run the primary: taking the key back",
        )];
        actions.extend(keep_slots(obs, cluster, cfg));
        return actions;
    }
    if let Some(why) = failsafe_leader_alive(obs, cfg) {
        return wait(format!("no leader key, but not racing for it: {why}"));
    }
    // `patronictl flush … switchover` leaves an empty request behind: it asks nothing.
    let named =
        |f: &&Versioned<FailoverRequest>| f.value.leader.is_some() || f.value.candidate.is_some();
    if let Some(failover) = cluster.failover.as_ref().filter(named) {
        return race_with_request(obs, cluster, cfg, failover);
    }
    let Some(peers) = obs.peers.as_deref() else {
        return vec![act(
            Action::AskPeers,
            "no leader: asking other members how far they got",
        )];
    };
    if let Some(why) = healthier_peer(obs, cluster, cfg, peers) {
        return wait(format!("no leader, but not the healthiest member: {why}"));
    }
    if cfg.synchronous_mode == SynchronousMode::Quorum {
        if let Some(why) = quorum::shortfall(obs, cluster, peers) {
            return wait(format!("no leader, but we may not take over yet: {why}"));
        }
    }
    take_over(
        obs,
        cluster,
        cfg,
        "no leader and we are the healthiest member: racing for the key",
    )
}

fn take_over(
    obs: &Observation,
    cluster: &Cluster,
    cfg: &HaConfig,
    why: impl Into<Reason>,
) -> Vec<(Action, Reason)> {
    let mut actions = vec![act(Action::AcquireLeader, why)];
    if !cluster.poolers.is_empty() {
        // They read the old leader: promote on a later tick, once they read us.
        actions.push(act(
            Action::Wait,
            "acquired the leader lock: promoting once every pooler has read us as the leader",
        ));
        return actions;
    }
    actions.extend(sync::claim_sync_key(obs, cluster, cfg));
    actions.push(act(Action::Promote, "acquired the leader lock: promoting"));
    if let Some(failover) = &cluster.failover {
        actions.push(act(
            Action::ClearFailover {
                version: failover.version,
            },
            format!(
                "we lead now: the {} request is done",
                request_kind(&failover.value)
            ),
        ));
    }
    actions.extend(keep_slots(obs, cluster, cfg));
    actions
}

/// Why this member may not take over automatically, if it may not.
/// In failsafe mode, a leader that cannot reach the DCS confirmed itself to us less than
/// a ttl ago: it runs on, so nobody may take over.
fn failsafe_leader_alive(obs: &Observation, cfg: &HaConfig) -> Option<String> {
    let (leader, at) = obs.failsafe_heard.as_ref()?;
    let ago = obs.now.checked_sub(*at)?;
    (cfg.failsafe_mode && ago < cfg.ttl && *leader != obs.me)
        .then(|| format!("{leader} confirmed it runs as the primary {ago} ms ago (failsafe mode)"))
}

fn failover_ineligibility(obs: &Observation, cluster: &Cluster, cfg: &HaConfig) -> Option<String> {
    if obs.my_tags_nofailover {
        return Some("tagged nofailover".into());
    }
    if let Some(members) = cluster.failsafe.as_ref().filter(|_| cfg.failsafe_mode) {
        // The leader did not vouch for us: it would not have asked us before running on
        // without the DCS.
        if !members.is_empty() && !members.contains_key(&obs.me) {
            return Some("failsafe mode, and the failsafe key does not name us".into());
        }
    }
    let Some(lsn) = obs.local.wal_lsn else {
        return Some("our WAL position is unknown".into());
    };
    let last_primary_lsn = cluster.status.as_ref().map_or(0, |s| s.optime);
    let lag = last_primary_lsn.saturating_sub(lsn);
    if lag > cfg.maximum_lag_on_failover {
        return Some(format!(
            "lag {lag} bytes behind the last known primary position {last_primary_lsn} exceeds \
             maximum_lag_on_failover {}",
            cfg.maximum_lag_on_failover
        ));
    }
    if let Some(why) = not_synchronous(cluster, cfg, &obs.me) {
        return Some(why);
    }
    // Promoting from an older timeline would fork history a second time and could reuse a
    // timeline number that already exists.
    let mine = obs.local.timeline?;
    match cluster_timeline(cluster) {
        Some(newest) if mine < newest => Some(format!(
            "our timeline {mine} is behind the cluster's timeline {newest}"
        )),
        _ => None,
    }
}

/// A peer that should take over rather than us, if any. A live primary blocks everyone;
/// otherwise, among the peers that may take over, the furthest WAL position on the same
/// or a newer timeline wins, and equal positions go to the lowest name so that exactly one
/// member tries first.
fn healthier_peer(
    obs: &Observation,
    cluster: &Cluster,
    cfg: &HaConfig,
    peers: &[PeerStatus],
) -> Option<String> {
    let my_lsn = obs.local.wal_lsn.unwrap_or(0);
    let my_timeline = obs.local.timeline.unwrap_or(0);
    let quorum_mode = cfg.synchronous_mode == SynchronousMode::Quorum;
    let everyone = if quorum_mode {
        quorum::with_us(obs, peers)
    } else {
        Vec::new()
    };
    for peer in peers.iter().filter(|p| p.name != obs.me) {
        if peer.is_primary {
            return Some(format!("{} still runs a primary", peer.name));
        }
        let Some(lsn) = peer.wal_lsn else { continue };
        // A peer that may not take over does not hold us back.
        if peer.nofailover
            || peer.timeline.is_some_and(|t| t < my_timeline)
            || not_synchronous(cluster, cfg, &peer.name).is_some()
            || (quorum_mode && quorum::shortfall_of(peer, cluster, &everyone).is_some())
        {
            continue;
        }
        if lsn > my_lsn || (lsn == my_lsn && peer.name < obs.me) {
            return Some(format!(
                "{} is at WAL position {lsn}, we are at {my_lsn}",
                peer.name
            ));
        }
    }
    None
}
