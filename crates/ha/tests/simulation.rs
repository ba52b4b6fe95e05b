//! Deterministic simulation of the HA loop: several members, each an agent running
//! `decide()` under the runner's execution contract, against a fake DCS (leases, leader
//! key, members, history, status) and fake PostgreSQL instances, with faults injected
//! between steps by a seeded RNG. No real time, no threads.
//!
//! Invariants are checked after every event; a violation panics with the seed and the
//! tail of the step log. `PGHERD_SIM_SEEDS=N` runs N seeds per timing instead of the
//! default; `PGHERD_SIM_SEED=S` runs just seed S (with its full log on failure).

use pgherd_dcs::{
    Cluster, ClusterStatus, FailoverRequest, HistoryEntry, Member, MemberData, Pooler, PoolerState,
    SyncState, Tags, Versioned,
};
use pgherd_ha::runner::iso8601;
use pgherd_ha::{
    decide, history_after_promotion, sync_setting_on_restart, Action, AgentMemory, DataDirState,
    DemoteMode, HaConfig, LocalPg, Millis, Observation, PeerStatus, Standby, SyncSetting,
    SynchronousMode,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

// ---------------------------------------------------------------------------------------
// Timings and durations

#[derive(Debug, Clone, Copy)]
struct Timing {
    ttl: Millis,
    loop_wait: Millis,
    retry_timeout: Millis,
}

const TIMINGS: [Timing; 2] = [
    Timing {
        ttl: 30_000,
        loop_wait: 10_000,
        retry_timeout: 10_000,
    },
    Timing {
        ttl: 10_000,
        loop_wait: 2_000,
        retry_timeout: 4_000,
    },
];

const MAX_LAG: u64 = 1 << 20;
/// Where the agents' clocks start, so that a clock stepped back (a fault) still runs.
const AGENT_CLOCK_START: i64 = 10 * 3_600_000;
/// A watch sees a changed or expired leader key this long after the change.
const WATCH_DELAY: Millis = 200;
/// How long the runner waits for a member that does not answer `GET /patroni`.
const PEER_TIMEOUT: Millis = 2_000;
const DEMOTE: (Millis, Millis) = (100, 600);
/// While it leads, the runner cuts each DCS call short so that it can still demote before
/// its lease may have expired: the call's deadline is the lease end minus this much.
const DEMOTE_BUDGET: Millis = DEMOTE.1 + 400;

// ---------------------------------------------------------------------------------------
// Fake DCS

#[derive(Debug, Clone, Copy)]
struct Lease {
    id: u64,
    expiry: Millis,
}

#[derive(Debug, Default)]
struct FakeDcs {
    /// Each member's current lease (its member key and, while it leads, the leader key).
    leases: BTreeMap<String, Lease>,
    next_lease: u64,
    /// Holder and the lease the key is bound to.
    leader: Option<(String, u64)>,
    leader_version: i64,
    members: BTreeMap<String, (MemberData, u64)>,
    initialize: Option<String>,
    history: Vec<HistoryEntry>,
    status: Option<ClusterStatus>,
    /// The `failover` key and its version.
    failover: Option<(FailoverRequest, i64)>,
    failover_version: i64,
    /// The `sync` key and its version.
    sync: Option<(SyncState, i64)>,
    sync_version: i64,
    /// `poolers/<id>` keys and when their leases run out.
    poolers: BTreeMap<String, (PoolerState, Millis)>,
}

impl FakeDcs {
    fn live_lease(&self, member: &str, now: Millis) -> Option<Lease> {
        self.leases.get(member).copied().filter(|l| l.expiry > now)
    }

    /// Keep-alive (or re-grant) the member's lease; returns its id and new expiry.
    fn renew(&mut self, member: &str, now: Millis, ttl: Millis) -> Lease {
        let id = match self.live_lease(member, now) {
            Some(l) => l.id,
            None => {
                self.next_lease += 1;
                self.next_lease
            }
        };
        let lease = Lease {
            id,
            expiry: now + ttl,
        };
        self.leases.insert(member.to_string(), lease);
        lease
    }

    /// Drop keys bound to expired leases. True when the leader key went away.
    fn expire(&mut self, now: Millis) -> bool {
        if self.leases.values().all(|l| l.expiry > now) {
            return false;
        }
        let live: BTreeSet<u64> = self
            .leases
            .values()
            .filter(|l| l.expiry > now)
            .map(|l| l.id)
            .collect();
        self.leases.retain(|_, l| l.expiry > now);
        self.members.retain(|_, (_, id)| live.contains(id));
        self.poolers.retain(|_, (_, expiry)| *expiry > now);
        match &self.leader {
            Some((_, id)) if !live.contains(id) => {
                self.leader = None;
                self.leader_version += 1;
                true
            }
            _ => false,
        }
    }

    /// The `status` key's optime (its slots kept).
    fn set_optime(&mut self, optime: u64) {
        let slots = self
            .status
            .as_ref()
            .map(|s| s.slots.clone())
            .unwrap_or_default();
        self.status = Some(ClusterStatus { optime, slots });
    }

    fn write_sync(&mut self, leader: &str, standbys: &[String], quorum: Option<u32>) {
        self.sync_version += 1;
        let value = SyncState {
            leader: Some(leader.to_string()),
            sync_standby: (!standbys.is_empty()).then(|| standbys.join(",")),
            quorum,
        };
        self.sync = Some((value, self.sync_version));
    }

    fn snapshot(&self) -> Cluster {
        Cluster {
            initialize: self.initialize.clone(),
            config: None,
            leader: self.leader.as_ref().map(|(n, _)| Versioned {
                value: n.clone(),
                version: self.leader_version,
            }),
            members: self
                .members
                .iter()
                .map(|(name, (data, _))| Member {
                    name: name.clone(),
                    data: data.clone(),
                })
                .collect(),
            history: self.history.clone(),
            failover: self.failover.as_ref().map(|(r, v)| Versioned {
                value: r.clone(),
                version: *v,
            }),
            sync: self.sync.as_ref().map(|(v, version)| Versioned {
                value: v.clone(),
                version: *version,
            }),
            status: self.status.clone(),
            poolers: self
                .poolers
                .iter()
                .map(|(id, (state, _))| Pooler {
                    id: id.clone(),
                    state: state.clone(),
                })
                .collect(),
            failsafe: None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fake poolers

/// A pooler stops routing writes when it could not read the DCS this long (its
/// `dcs_timeout`)...
fn pooler_fence(timing: &Timing) -> Millis {
    timing.ttl / 3
}

/// ...and its key's lease is twice that, so it has stopped before the key can vanish.
fn pooler_lease(timing: &Timing) -> Millis {
    2 * pooler_fence(timing)
}

/// How often a pooler reads the DCS without a wake-up.
const POOLER_REFRESH: Millis = 1_000;

/// A pooler as the HA loop sees it: it reads the DCS (every [`POOLER_REFRESH`], or soon
/// after a watched key changes), routes writes to the leader it read once that leader's
/// member key says `primary`, and publishes both in its key.
#[derive(Debug)]
struct SimPooler {
    id: String,
    reachable: bool,
    last_read: Millis,
    routes_to: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Fake PostgreSQL

#[derive(Debug, Clone)]
struct Pg {
    data: DataDirState,
    running: bool,
    in_recovery: bool,
    timeline: u32,
    /// This instance's own timeline history: (timeline, where it ended).
    history: Vec<(u32, u64)>,
    lsn: u64,
    following: Option<String>,
    sysid: Option<String>,
    /// Stopped cleanly as a primary: the WAL ends with a shutdown checkpoint record that
    /// starts one byte before `lsn`.
    clean_stop: bool,
    /// `synchronous_standby_names` as applied.
    ssn: Option<SyncSetting>,
}

impl Pg {
    fn empty() -> Pg {
        Pg {
            data: DataDirState::Empty,
            running: false,
            in_recovery: false,
            timeline: 0,
            history: vec![],
            lsn: 0,
            following: None,
            sysid: None,
            clean_stop: false,
            ssn: None,
        }
    }

    fn writable(&self) -> bool {
        self.running && !self.in_recovery
    }

    fn local(&self) -> LocalPg {
        let has_data = self.data != DataDirState::Empty;
        LocalPg {
            data_dir: self.data,
            running: self.running,
            in_recovery: if self.running {
                self.in_recovery
            } else {
                self.data == DataDirState::Standby
            },
            timeline: has_data.then_some(self.timeline),
            wal_lsn: has_data.then_some(if self.shut_down_cleanly() {
                self.lsn - 1
            } else {
                self.lsn
            }),
            following: if self.running {
                self.following.clone()
            } else {
                None
            },
            system_identifier: self.sysid.clone(),
            shut_down_cleanly: self.shut_down_cleanly(),
            standbys: Vec::new(),
            sync_setting: if self.running { self.ssn.clone() } else { None },
            inactive_slots: Vec::new(),
        }
    }

    fn shut_down_cleanly(&self) -> bool {
        !self.running && self.clean_stop && self.data == DataDirState::Primary
    }

    fn start_standby(&mut self, upstream: Option<String>) {
        self.clean_stop = false;
        self.ssn = None;
        self.running = true;
        self.in_recovery = true;
        self.following = upstream;
        self.data = DataDirState::Standby;
    }

    fn copy_from(&mut self, source: &Pg) {
        self.timeline = source.timeline;
        self.history = source.history.clone();
        self.lsn = source.lsn;
        self.sysid = source.sysid.clone();
        self.data = DataDirState::Standby;
    }
}

// ---------------------------------------------------------------------------------------
// Nodes and agents

#[derive(Debug, Clone)]
enum Op {
    /// Read the DCS (and local PG), then decide. `peers` after an `AskPeers`.
    Observe {
        peers: Option<Vec<PeerStatus>>,
    },
    Act(Action),
    /// touch_member (and the leader's status).
    Publish,
    Sleep,
}

#[derive(Debug)]
struct Node {
    name: String,
    nofailover: bool,
    clonefrom: bool,
    alive: bool,
    frozen: bool,
    /// Cannot reach the DCS.
    dcs_blocked: bool,
    /// Cannot reach anything over the network (DCS, peers, replication).
    isolated: bool,
    pg: Pg,
    memory: AgentMemory,
    /// Bumped on kill and on every new sleep so stale events are ignored.
    epoch: u64,
    plan: VecDeque<Op>,
    /// The leader in the observation the current plan came from.
    observed_leader: Option<String>,
    sleeping_until: Option<Millis>,
    /// Events that fired while frozen, replayed on thaw.
    deferred: Vec<Event>,
    /// Replica catch-up speed, bytes/ms.
    catchup_rate: u64,
    clock_offset: i64,
    resumed_at: Option<Millis>,
    /// The lease this member last took or renewed the leader key under.
    leader_lease: Option<u64>,
    /// When (monotonic) the runner sent its last successful leader-key renewal: the lease
    /// runs at least until this plus ttl.
    lease_sent_at: Option<Millis>,
    /// When the current op started.
    op_started: Millis,
    /// Highest timeline of the current data directory.
    max_timeline: u32,
}

impl Node {
    fn summary(&self) -> String {
        format!(
            "{} alive={} frozen={} dcs_blocked={} isolated={} pg={:?} memory={:?} leader_lease={:?}",
            self.name, self.alive, self.frozen, self.dcs_blocked, self.isolated, self.pg, self.memory, self.leader_lease
        )
    }
    fn reachable_dcs(&self) -> bool {
        self.alive && !self.frozen && !self.dcs_blocked && !self.isolated
    }
    fn on_network(&self) -> bool {
        self.alive && !self.frozen && !self.isolated
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The agent's current op finished (`dcs_ok_at_start`: reachable when it began).
    OpDone {
        node: usize,
        epoch: u64,
        dcs_ok_at_start: bool,
    },
    Wake {
        node: usize,
        epoch: u64,
    },
    /// A pooler reads the DCS.
    PoolerRead(usize),
    Heal(Fault),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Restart(usize),
    DcsBack(usize),
    NetworkBack(usize),
    Thaw(usize),
    ReplicationNormal(usize),
    Resume,
    PoolerBack(usize),
}

// ---------------------------------------------------------------------------------------
// The world

struct Sim {
    seed: u64,
    rng: StdRng,
    now: Millis,
    timing: Timing,
    cfg: HaConfig,
    dcs: FakeDcs,
    nodes: Vec<Node>,
    poolers: Vec<SimPooler>,
    queue: BinaryHeap<Reverse<(Millis, u64, Event)>>,
    seq: u64,
    write_rate: u64,
    /// The step log, kept only when replaying a failed seed.
    log: Option<Vec<String>>,
    created_timelines: BTreeSet<u32>,
    promotions: u32,
    /// Promotions while a switchover or failover request was pending.
    requested_promotions: u32,
    /// The last clean step-down that released the leader key: who, on which timeline,
    /// and where its WAL ends. Cleared by the next promotion.
    handed_over: Option<(String, u32, u64)>,
    /// Per timeline, the highest WAL position a commit was acknowledged at: with no
    /// synchronous standby set at once, else once the synchronous standbys flushed it.
    acked: BTreeMap<u32, u64>,
    faults: u32,
    events: u64,
    /// When maintenance mode last ended: a primary whose lease ran out while paused gets
    /// one loop to take the key back or step down.
    resumed_from_pause_at: Option<Millis>,
}

impl Sim {
    fn new(seed: u64, timing: Timing, logging: bool) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let count = rng.random_range(3..=5);
        let nofailover_node = rng.random_bool(0.3).then(|| rng.random_range(1..count));
        let clonefrom_node = rng.random_bool(0.3).then(|| rng.random_range(0..count));
        let nodes = (0..count)
            .map(|i| Node {
                name: format!("pg-{}", (b'a' + i as u8) as char),
                nofailover: nofailover_node == Some(i),
                clonefrom: clonefrom_node == Some(i),
                alive: true,
                frozen: false,
                dcs_blocked: false,
                isolated: false,
                pg: Pg::empty(),
                memory: AgentMemory::default(),
                epoch: 0,
                plan: VecDeque::new(),
                observed_leader: None,
                sleeping_until: None,
                deferred: vec![],
                catchup_rate: 0,
                clock_offset: 0,
                resumed_at: None,
                leader_lease: None,
                lease_sent_at: None,
                op_started: 0,
                max_timeline: 0,
            })
            .collect();
        let write_rate = rng.random_range(5..200);
        let cfg = HaConfig {
            ttl: timing.ttl,
            loop_wait: timing.loop_wait,
            retry_timeout: timing.retry_timeout,
            maximum_lag_on_failover: MAX_LAG,
            use_pg_rewind: rng.random_bool(0.7),
            use_slots: rng.random_bool(0.5),
            paused: false,
            synchronous_mode: match rng.random_range(0..20) {
                0..=2 => SynchronousMode::On,
                3..=5 => SynchronousMode::Quorum,
                _ => SynchronousMode::Off,
            },
            synchronous_mode_strict: rng.random_bool(0.5),
            synchronous_node_count: rng.random_range(1..=2),
            member_slots_ttl: 1_800_000,
            primary_start_timeout: if rng.random_bool(0.5) { 0 } else { 300_000 },
            failsafe_mode: false,
        };
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            timing,
            cfg,
            dcs: FakeDcs::default(),
            nodes,
            poolers: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            write_rate,
            log: logging.then(Vec::new),
            created_timelines: BTreeSet::new(),
            promotions: 0,
            requested_promotions: 0,
            handed_over: None,
            acked: BTreeMap::new(),
            faults: 0,
            events: 0,
            resumed_from_pause_at: None,
        };
        for i in 0..sim.nodes.len() {
            sim.nodes[i].catchup_rate = sim.normal_catchup();
            let start = sim.rng.random_range(0..2_000);
            sim.start_agent(i, start);
        }
        for k in 0..sim.rng.random_range(0..=2) {
            sim.poolers.push(SimPooler {
                id: format!("pooler-{k}"),
                reachable: true,
                last_read: 0,
                routes_to: None,
            });
            let first = sim.rng.random_range(0..POOLER_REFRESH);
            sim.schedule(first, Event::PoolerRead(k));
        }
        sim
    }

    /// A pooler reads the DCS and publishes what it routes by; one that could not read
    /// for its fence time routes no writes.
    fn pooler_read(&mut self, k: usize) {
        let next = self.now + POOLER_REFRESH;
        self.schedule(next, Event::PoolerRead(k));
        let fence = pooler_fence(&self.timing);
        let p = &mut self.poolers[k];
        if !p.reachable {
            if self.now.saturating_sub(p.last_read) >= fence && p.routes_to.is_some() {
                p.routes_to = None;
                let id = p.id.clone();
                self.note(|| format!("{id}: cannot read the DCS: routes no writes"));
            }
            return;
        }
        p.last_read = self.now;
        let leader = self.dcs.leader.as_ref().map(|(l, _)| l.clone());
        let routes_to = leader.clone().filter(|l| {
            self.dcs
                .members
                .get(l)
                .is_some_and(|(data, _)| data.role == "primary")
        });
        let p = &mut self.poolers[k];
        p.routes_to = routes_to.clone();
        let id = p.id.clone();
        // It holds new transactions during a switchover from the leader it read, and
        // (having none running in the model) is drained at once.
        let drained_for = self
            .dcs
            .failover
            .as_ref()
            .filter(|(r, _)| r.leader.is_some() && r.leader == leader)
            .map(|(_, v)| *v);
        let state = PoolerState {
            leader,
            routes_to,
            drained_for,
        };
        let expiry = self.now + pooler_lease(&self.timing);
        let changed = self.dcs.poolers.get(&id).map(|(s, _)| s) != Some(&state);
        self.dcs.poolers.insert(id.clone(), (state.clone(), expiry));
        if changed {
            self.note(|| format!("{id}: publishes {state:?}"));
            self.wake_nodes();
        }
    }

    fn normal_catchup(&mut self) -> u64 {
        self.write_rate * self.rng.random_range(3..20)
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(log) = self.log.as_mut() {
            log.push(format!("{:>9} {}", self.now, line()));
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "invariant violated (seed {} timing {:?}) at t={}: {what}\n--- last steps ---\n{}\n--- nodes ---\n{}",
            self.seed,
            self.timing,
            self.now,
            self.log.as_ref().map_or("(replay the seed for the log)".into(), |l| l.join("\n")),
            self.nodes.iter().map(Node::summary).collect::<Vec<_>>().join("\n")
        )
    }

    fn schedule(&mut self, at: Millis, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, event)));
    }

    fn start_agent(&mut self, i: usize, delay: Millis) {
        let node = &mut self.nodes[i];
        node.plan = VecDeque::from([Op::Observe { peers: None }]);
        node.sleeping_until = Some(self.now + delay);
        let epoch = node.epoch;
        self.schedule(self.now + delay, Event::Wake { node: i, epoch });
    }

    // -----------------------------------------------------------------------------------
    // Time

    /// Run events up to `until`, checking invariants after each (a lease running out is
    /// an event too).
    fn run_until(&mut self, until: Millis) {
        loop {
            let next_event = self
                .queue
                .peek()
                .map_or(Millis::MAX, |Reverse((at, _, _))| *at);
            let next_expiry = self
                .dcs
                .leases
                .values()
                .map(|l| l.expiry)
                .min()
                .unwrap_or(Millis::MAX);
            if next_expiry <= next_event.min(until) {
                self.advance(next_expiry);
                self.check_invariants();
                continue;
            }
            if next_event > until {
                break;
            }
            let Reverse((at, _, event)) = self.queue.pop().unwrap();
            self.events += 1;
            self.advance(at);
            self.handle(event);
            self.check_invariants();
        }
        self.advance(until);
        self.check_invariants();
    }

    /// Writes on primaries, replication on replicas, lease expiry.
    fn advance(&mut self, to: Millis) {
        let dt = to.saturating_sub(self.now);
        self.now = to;
        if dt > 0 {
            for n in self.nodes.iter_mut() {
                if n.alive && !n.frozen && n.pg.writable() {
                    n.pg.lsn += self.write_rate * dt;
                }
            }
            for i in 0..self.nodes.len() {
                self.replicate(i, dt);
            }
            for i in 0..self.nodes.len() {
                self.acknowledge(i);
            }
        }
        if self.dcs.expire(self.now) {
            self.note(|| "leader key expired".into());
            self.watch_fires();
        }
    }

    /// Commits on a primary are acknowledged at once without synchronous standbys, else
    /// up to where all of them (FIRST n) or any n of them (ANY n) have flushed; with too
    /// few connected they wait.
    fn acknowledge(&mut self, i: usize) {
        let n = &self.nodes[i];
        if !(n.alive && !n.frozen && n.pg.writable()) {
            return;
        }
        let acked = match &n.pg.ssn {
            None => Some(n.pg.lsn),
            Some(setting) => {
                let sync = self.sync_standbys_of(i);
                let mut lsns: Vec<u64> = sync
                    .iter()
                    .filter_map(|name| self.nodes.iter().find(|m| m.name == *name))
                    .map(|m| m.pg.lsn.min(n.pg.lsn))
                    .collect();
                // FIRST n: all n waited-for standbys; ANY n: the n-th most advanced.
                lsns.sort_unstable_by(|a, b| b.cmp(a));
                let wanted = setting.count.max(1);
                (lsns.len() >= wanted).then(|| lsns[wanted - 1])
            }
        };
        if let Some(a) = acked {
            let t = n.pg.timeline;
            let e = self.acked.entry(t).or_insert(0);
            *e = (*e).max(a);
        }
    }

    /// The standbys node `i`'s commits wait for: of the streaming ones, the first
    /// `count` named in its setting (any of those named, for `ANY`), or for `*` the
    /// first one.
    fn sync_standbys_of(&self, i: usize) -> Vec<String> {
        let Some(setting) = &self.nodes[i].pg.ssn else {
            return Vec::new();
        };
        let streaming: Vec<String> = self.standbys_of(i).into_iter().map(|s| s.name).collect();
        if setting.names == ["*"] {
            return streaming.into_iter().take(1).collect();
        }
        // Under ANY n every listed standby counts (`sync_state` is `quorum`).
        let take = if setting.quorum {
            usize::MAX
        } else {
            setting.count
        };
        setting
            .names
            .iter()
            .filter(|n| streaming.contains(n))
            .take(take)
            .cloned()
            .collect()
    }

    fn replicate(&mut self, i: usize, dt: Millis) {
        let r = &self.nodes[i];
        if !(r.on_network() && r.pg.running && r.pg.in_recovery) {
            return;
        }
        let Some(upstream) = r.pg.following.as_deref() else {
            return;
        };
        let Some(u) = self.nodes.iter().find(|n| n.name == upstream) else {
            return;
        };
        if !(u.on_network() && u.pg.running) || u.pg.sysid != r.pg.sysid {
            return;
        }
        let (u_timeline, u_lsn) = (u.pg.timeline, u.pg.lsn);
        if r.pg.timeline > u_timeline {
            return;
        }
        if r.pg.timeline < u_timeline {
            // Streaming crosses a timeline switch only if we did not pass where ours ended.
            match u.pg.history.iter().find(|(t, _)| *t == r.pg.timeline) {
                Some((_, end)) if r.pg.lsn <= *end => {
                    let history = u.pg.history.clone();
                    let r = &mut self.nodes[i];
                    r.pg.timeline = u_timeline;
                    r.pg.history = history;
                }
                _ => return,
            }
        }
        let r = &mut self.nodes[i];
        let target = u_lsn.min(r.pg.lsn + r.catchup_rate * dt);
        r.pg.lsn = r.pg.lsn.max(target);
        r.max_timeline = r.max_timeline.max(r.pg.timeline);
    }

    /// A watched key changed: the agents and the poolers look soon.
    fn watch_fires(&mut self) {
        for k in 0..self.poolers.len() {
            if self.poolers[k].reachable {
                let delay = self.rng.random_range(5..200);
                self.schedule(self.now + delay, Event::PoolerRead(k));
            }
        }
        self.wake_nodes();
    }

    fn wake_nodes(&mut self) {
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if let Some(until) = n.sleeping_until {
                if n.reachable_dcs() && until > self.now + WATCH_DELAY {
                    let node = &mut self.nodes[i];
                    node.epoch += 1;
                    node.sleeping_until = Some(self.now + WATCH_DELAY);
                    let epoch = node.epoch;
                    self.schedule(self.now + WATCH_DELAY, Event::Wake { node: i, epoch });
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Events

    fn handle(&mut self, event: Event) {
        match event {
            Event::Heal(fault) => self.heal(fault),
            Event::PoolerRead(k) => self.pooler_read(k),
            Event::Wake { node, epoch } | Event::OpDone { node, epoch, .. } => {
                let n = &mut self.nodes[node];
                if n.epoch != epoch || !n.alive {
                    return;
                }
                if n.frozen {
                    n.deferred.push(event);
                    return;
                }
                match event {
                    Event::Wake { .. } => {
                        n.sleeping_until = None;
                        self.start_op(node);
                    }
                    Event::OpDone {
                        dcs_ok_at_start, ..
                    } => self.finish_op(node, dcs_ok_at_start),
                    _ => unreachable!(),
                }
            }
        }
    }

    /// retry_timeout, or less while leading: what is left of the lease minus the time a
    /// demotion needs.
    fn dcs_timeout(&self, i: usize) -> Millis {
        match self.nodes[i].lease_sent_at {
            Some(sent) => (sent + self.timing.ttl)
                .saturating_sub(self.now + DEMOTE_BUDGET)
                .min(self.timing.retry_timeout),
            None => self.timing.retry_timeout,
        }
    }

    /// The runner's own check, by its monotonic clock, that its lease has not run out.
    fn lease_still_ours(&self, i: usize) -> bool {
        self.nodes[i]
            .lease_sent_at
            .is_some_and(|sent| self.now + DEMOTE_BUDGET < sent + self.timing.ttl)
    }

    fn dcs_latency(&mut self) -> Millis {
        self.rng.random_range(1..20)
    }

    /// Begin the op at the front of the plan: work out how long it takes.
    fn start_op(&mut self, i: usize) {
        let dcs_ok = self.nodes[i].reachable_dcs();
        self.nodes[i].op_started = self.now;
        if !self.lease_still_ours(i) && !self.nodes[i].pg.writable() {
            // Out of lease time and demoted: calls get the full retry_timeout again.
            self.nodes[i].lease_sent_at = None;
        }
        let timeout = self.dcs_timeout(i);
        let dcs_call = |sim: &mut Sim| {
            if dcs_ok {
                sim.dcs_latency().min(timeout)
            } else {
                timeout
            }
        };
        let Some(op) = self.nodes[i].plan.front().cloned() else {
            self.nodes[i].plan.push_back(Op::Observe { peers: None });
            return self.start_op(i);
        };
        let duration = match op {
            Op::Observe { .. } | Op::Publish => dcs_call(self),
            Op::Sleep => {
                self.nodes[i].plan.clear();
                self.nodes[i].plan.push_back(Op::Observe { peers: None });
                let node = &mut self.nodes[i];
                node.epoch += 1;
                let until = self.now + self.timing.loop_wait;
                node.sleeping_until = Some(until);
                let epoch = node.epoch;
                self.schedule(until, Event::Wake { node: i, epoch });
                return;
            }
            Op::Act(ref action) => match action {
                Action::AcquireLeader | Action::RenewLeader | Action::ReleaseLeader => {
                    dcs_call(self)
                }
                Action::Initialize => dcs_call(self) + 2_000,
                Action::Promote => dcs_call(self) + self.rng.random_range(50..300),
                Action::Demote(_) => self.rng.random_range(DEMOTE.0..DEMOTE.1),
                Action::StartReplica { .. } | Action::StartPrimary => {
                    self.rng.random_range(300..1_500)
                }
                Action::Follow { .. } => self.rng.random_range(50..300),
                Action::Clone { .. } => self.rng.random_range(1_000..5_000),
                Action::Rewind { .. } => self.rng.random_range(500..3_000),
                Action::RemoveDataDir => 100,
                Action::AskFailsafe | Action::SetFailsafe(_) => {
                    unreachable!("the simulation runs without failsafe mode")
                }
                Action::AskPeers => {
                    if self.peers_all_answer(i) {
                        self.rng.random_range(5..50)
                    } else {
                        PEER_TIMEOUT
                    }
                }
                Action::EnsureSlots(_)
                | Action::ClearFailover { .. }
                | Action::AdoptRequest { .. } => 10,
                Action::Wait => 0,
                Action::Restart { .. } | Action::Reload | Action::Reinitialize { .. } => {
                    unreachable!("the simulation sends no operator requests")
                }
                Action::SetSyncStandbys(_) => self.rng.random_range(20..200),
                Action::SetSyncKey { .. } => dcs_call(self),
            },
        };
        if duration == 0 {
            return self.finish_op(i, dcs_ok);
        }
        let epoch = self.nodes[i].epoch;
        self.schedule(
            self.now + duration,
            Event::OpDone {
                node: i,
                epoch,
                dcs_ok_at_start: dcs_ok,
            },
        );
    }

    /// The DCS timeout that applied when the current op started (the lease bound moves
    /// only on renewal, which happens at the end of an op).
    fn dcs_timeout_at_start(&self, i: usize) -> Millis {
        let started = self.nodes[i].op_started;
        match self.nodes[i].lease_sent_at {
            Some(sent) => (sent + self.timing.ttl)
                .saturating_sub(started + DEMOTE_BUDGET)
                .min(self.timing.retry_timeout)
                .max(1),
            None => self.timing.retry_timeout,
        }
    }

    fn peers_all_answer(&self, i: usize) -> bool {
        let me = &self.nodes[i];
        let names: Vec<&str> = self
            .dcs
            .members
            .keys()
            .map(String::as_str)
            .filter(|n| *n != me.name)
            .collect();
        names.iter().all(|name| {
            me.on_network() && self.nodes.iter().any(|n| n.name == *name && n.on_network())
        })
    }

    fn finish_op(&mut self, i: usize, dcs_ok_at_start: bool) {
        let op = self.nodes[i].plan.pop_front().expect("an op in progress");
        let in_time = self.now < self.nodes[i].op_started + self.dcs_timeout_at_start(i);
        let dcs_ok = dcs_ok_at_start && self.nodes[i].reachable_dcs() && in_time;
        match op {
            Op::Observe { peers } => self.observe_and_decide(i, dcs_ok, peers),
            Op::Publish => {
                if dcs_ok {
                    self.publish(i);
                }
            }
            Op::Sleep => unreachable!("sleep is not timed"),
            Op::Act(action) => {
                if !self.execute(i, &action, dcs_ok) {
                    let name = self.nodes[i].name.clone();
                    self.note(|| format!("{name}: {action:?} failed; re-observing"));
                    let node = &mut self.nodes[i];
                    node.plan.clear();
                    node.plan.push_back(Op::Observe { peers: None });
                }
            }
        }
        self.start_op(i);
    }

    fn observe_and_decide(&mut self, i: usize, dcs_ok: bool, peers: Option<Vec<PeerStatus>>) {
        let cluster = dcs_ok.then(|| self.dcs.snapshot());
        if let Some(c) = &cluster {
            let now = self.agent_clock(i);
            let node = &mut self.nodes[i];
            node.memory.saw_cluster(c, now);
            let leads = c.leader_name() == Some(node.name.as_str());
            node.memory.saw_own_postgres(leads && !node.pg.running, now);
        }
        if cluster
            .as_ref()
            .is_some_and(|c| c.leader_name() != Some(self.nodes[i].name.as_str()))
        {
            self.nodes[i].lease_sent_at = None;
        }
        let mut local = self.nodes[i].pg.local();
        if self.nodes[i].pg.writable() {
            let sync = self.sync_standbys_of(i);
            local.standbys = self.standbys_of(i);
            for s in local.standbys.iter_mut() {
                s.synchronous = sync.contains(&s.name);
            }
        }
        let node = &self.nodes[i];
        let obs = Observation {
            now: self.agent_clock(i),
            wall_clock_secs: 1_796_558_400 + (self.now as i64 + node.clock_offset) / 1000,
            me: node.name.clone(),
            my_tags_nofailover: node.nofailover,
            local,
            cluster,
            peers,
            failsafe: None,
            failsafe_heard: None,
            request: None,
            memory: node.memory.clone(),
        };
        let decisions = decide(&obs, &self.cfg);
        assert!(!decisions.is_empty(), "decide() returned no action");
        if obs.peers.is_some() && decisions.iter().any(|(a, _)| *a == Action::AskPeers) {
            self.fail("decide() asked peers again although it had their answers");
        }
        let automatic = |a: &Action| !matches!(a, Action::Wait | Action::RenewLeader);
        if self.cfg.paused && decisions.iter().any(|(a, _)| automatic(a)) {
            self.fail(&format!("automatic action while paused: {decisions:?}"));
        }
        let name = obs.me.clone();
        self.note(|| {
            let summary: Vec<String> = decisions
                .iter()
                .map(|(a, r)| format!("{a:?} ({r})"))
                .collect();
            format!("{name}: {}", summary.join("; "))
        });
        let node = &mut self.nodes[i];
        node.observed_leader = obs.cluster.and_then(|c| c.leader.map(|l| l.value));
        node.plan = decisions.into_iter().map(|(a, _)| Op::Act(a)).collect();
        node.plan.push_back(Op::Publish);
        node.plan.push_back(Op::Sleep);
    }

    /// What pg_stat_replication on node `i` shows: the running standbys that follow it
    /// over the network on its timeline.
    fn standbys_of(&self, i: usize) -> Vec<Standby> {
        let me = &self.nodes[i];
        if !me.on_network() {
            return Vec::new();
        }
        self.nodes
            .iter()
            .filter(|n| n.on_network() && n.pg.running && n.pg.in_recovery)
            .filter(|n| n.pg.following.as_deref() == Some(me.name.as_str()))
            .filter(|n| n.pg.sysid == me.pg.sysid && n.pg.timeline == me.pg.timeline)
            .map(|n| Standby {
                name: n.name.clone(),
                streaming: true,
                flush_lsn: Some(n.pg.lsn),
                synchronous: false,
            })
            .collect()
    }

    fn agent_clock(&self, i: usize) -> Millis {
        (AGENT_CLOCK_START + self.now as i64 + self.nodes[i].clock_offset).max(0) as Millis
    }

    fn member_data(&self, i: usize) -> MemberData {
        let n = &self.nodes[i];
        let local = n.pg.local();
        MemberData {
            state: if n.pg.running { "running" } else { "stopped" }.into(),
            role: if n.pg.writable() {
                "primary"
            } else {
                "replica"
            }
            .into(),
            xlog_location: local.wal_lsn,
            timeline: local.timeline,
            tags: Tags {
                nofailover: n.nofailover,
                clonefrom: n.clonefrom,
                ..Tags::default()
            },
            ..MemberData::default()
        }
    }

    fn publish(&mut self, i: usize) {
        let data = self.member_data(i);
        let name = self.nodes[i].name.clone();
        let lease = self.dcs.renew(&name, self.now, self.timing.ttl);
        self.dcs.members.insert(name.clone(), (data, lease.id));
        let leads = self.dcs.leader.as_ref().is_some_and(|(l, _)| *l == name);
        if leads && self.nodes[i].pg.writable() {
            let optime = self.nodes[i].pg.lsn;
            self.dcs.set_optime(optime);
        }
    }

    fn take_leader_key(&mut self, i: usize, lease: Lease) {
        let name = self.nodes[i].name.clone();
        self.dcs.leader = Some((name, lease.id));
        self.dcs.leader_version += 1;
        self.nodes[i].leader_lease = Some(lease.id);
        self.nodes[i].lease_sent_at = Some(self.nodes[i].op_started);
        self.nodes[i].memory.last_leader_renewal = Some(self.agent_clock(i));
    }

    /// Apply one action at its completion. False when it failed.
    fn execute(&mut self, i: usize, action: &Action, dcs_ok: bool) -> bool {
        let name = self.nodes[i].name.clone();
        let ttl = self.timing.ttl;
        let observed_leader = self.nodes[i].observed_leader.clone();
        match action {
            Action::Wait | Action::EnsureSlots(_) => true,
            Action::AskFailsafe | Action::SetFailsafe(_) => {
                unreachable!("the simulation runs without failsafe mode")
            }
            Action::Restart { .. } | Action::Reload | Action::Reinitialize { .. } => {
                unreachable!("the simulation sends no operator requests")
            }
            Action::SetSyncStandbys(setting) => {
                let node = &mut self.nodes[i];
                if !node.pg.writable() {
                    return false;
                }
                node.pg.ssn = setting.clone();
                node.memory.sync_set_at_lsn = Some(node.pg.lsn);
                true
            }
            Action::SetSyncKey {
                standbys,
                quorum,
                version,
            } => {
                let current = self.dcs.sync.as_ref().map_or(0, |(_, v)| *v);
                if !dcs_ok || current != *version {
                    return false;
                }
                let quorum_mode = self.cfg.synchronous_mode == SynchronousMode::Quorum;
                self.dcs
                    .write_sync(&name, standbys, quorum_mode.then_some(*quorum));
                true
            }
            Action::ClearFailover { version } => {
                if !dcs_ok {
                    return false;
                }
                match &self.dcs.failover {
                    Some((_, v)) if v == version => {
                        self.dcs.failover = None;
                        true
                    }
                    _ => false,
                }
            }
            Action::Demote(DemoteMode::Graceful) => self.step_down(i, dcs_ok),
            Action::AdoptRequest { version } => {
                if dcs_ok {
                    if let Some((request, v)) = self.dcs.failover.as_mut() {
                        if v == version {
                            request.leader = Some(name.clone());
                            self.dcs.failover_version += 1;
                            *v = self.dcs.failover_version;
                            self.watch_fires();
                        }
                    }
                }
                // The runner observes again at once.
                false
            }
            Action::AcquireLeader => {
                if !dcs_ok || self.dcs.leader.as_ref().is_some_and(|(l, _)| *l != name) {
                    return false;
                }
                let lease = self.dcs.renew(&name, self.now, ttl);
                let had = self.dcs.leader.is_some();
                self.take_leader_key(i, lease);
                if !had {
                    self.watch_fires();
                }
                true
            }
            Action::RenewLeader => {
                if !dcs_ok {
                    return false;
                }
                if self.dcs.leader.as_ref().is_none_or(|(l, _)| *l != name) {
                    self.nodes[i].memory.last_leader_renewal = None;
                    self.nodes[i].lease_sent_at = None;
                    return false;
                }
                let lease = self.dcs.renew(&name, self.now, ttl);
                self.take_leader_key(i, lease);
                true
            }
            Action::ReleaseLeader => {
                if !dcs_ok {
                    return false;
                }
                self.release_leader_key(i);
                true
            }
            Action::Initialize => self.initialize(i, dcs_ok),
            Action::Promote => self.promote(i, dcs_ok),
            Action::Demote(mode) => {
                let pg = &mut self.nodes[i].pg;
                if !pg.running {
                    return true;
                }
                let upstream = match mode {
                    DemoteMode::Offline => None,
                    DemoteMode::Follow => observed_leader.filter(|l| *l != name),
                    DemoteMode::Graceful => unreachable!("handled above"),
                };
                pg.start_standby(upstream);
                true
            }
            Action::StartReplica { upstream } => {
                let pg = &mut self.nodes[i].pg;
                if pg.data == DataDirState::Empty {
                    return false;
                }
                if !pg.running {
                    pg.start_standby(upstream.clone());
                }
                true
            }
            Action::StartPrimary => {
                // The runner re-checks its lease by its own clock before starting writable.
                if !self.lease_still_ours(i) {
                    return false;
                }
                let ssn = sync_setting_on_restart(&self.cfg, &self.dcs.snapshot(), &name);
                let pg = &mut self.nodes[i].pg;
                if pg.data != DataDirState::Primary {
                    return false;
                }
                if !pg.running {
                    pg.clean_stop = false;
                    pg.running = true;
                    pg.in_recovery = false;
                    pg.ssn = ssn;
                    pg.following = None;
                }
                true
            }
            Action::Follow { upstream } => {
                let pg = &mut self.nodes[i].pg;
                if !pg.running || !pg.in_recovery {
                    return false;
                }
                pg.following = Some(upstream.clone());
                true
            }
            Action::Clone { from } => {
                let Some(source) = self.reachable_source(i, from) else {
                    return false;
                };
                let node = &mut self.nodes[i];
                node.pg = Pg::empty();
                node.pg.copy_from(&source);
                node.max_timeline = node.pg.timeline;
                node.memory.rewind_failed = false;
                true
            }
            Action::Rewind { from } => {
                let source = self.reachable_source(i, from);
                let fails = self.rng.random_bool(0.1);
                let node = &mut self.nodes[i];
                node.pg.running = false;
                let Some(source) = source.filter(|_| !fails) else {
                    node.memory.rewind_failed = true;
                    return false;
                };
                node.pg.copy_from(&source);
                node.pg.start_standby(Some(from.clone()));
                node.memory.rewind_failed = false;
                true
            }
            Action::RemoveDataDir => {
                let node = &mut self.nodes[i];
                node.pg = Pg::empty();
                node.max_timeline = 0;
                true
            }
            Action::AskPeers => {
                let peers = self.ask_peers(i);
                let node = &mut self.nodes[i];
                node.plan.clear();
                node.plan.push_back(Op::Observe { peers: Some(peers) });
                // The runner decides again from a fresh observation with the answers.
                true
            }
        }
    }

    fn reachable_source(&self, i: usize, from: &str) -> Option<Pg> {
        let me = &self.nodes[i];
        let src = self.nodes.iter().find(|n| n.name == from)?;
        (me.on_network() && src.on_network() && src.pg.running).then(|| src.pg.clone())
    }

    fn ask_peers(&self, i: usize) -> Vec<PeerStatus> {
        let me = &self.nodes[i];
        let asked: Vec<String> = self
            .dcs
            .members
            .keys()
            .filter(|n| **n != me.name)
            .cloned()
            .collect();
        asked
            .into_iter()
            .map(|name| {
                let peer = self.nodes.iter().find(|n| n.name == name);
                let answers = me.on_network() && peer.is_some_and(|p| p.on_network());
                match peer.filter(|p| answers && p.pg.running) {
                    Some(p) => PeerStatus {
                        name,
                        wal_lsn: Some(p.pg.lsn),
                        timeline: Some(p.pg.timeline),
                        nofailover: p.nofailover,
                        is_primary: p.pg.writable(),
                    },
                    None => PeerStatus {
                        name,
                        wal_lsn: None,
                        timeline: None,
                        nofailover: false,
                        is_primary: false,
                    },
                }
            })
            .collect()
    }

    fn initialize(&mut self, i: usize, dcs_ok: bool) -> bool {
        let name = self.nodes[i].name.clone();
        if !dcs_ok || self.dcs.initialize.is_some() {
            return false;
        }
        let sysid = match self.nodes[i].pg.sysid.clone() {
            Some(existing) => existing,
            None => format!("sys-{}", self.seed),
        };
        self.dcs.initialize = Some(sysid.clone());
        if self.dcs.leader.is_some() {
            return false;
        }
        let lease = self.dcs.renew(&name, self.now, self.timing.ttl);
        self.take_leader_key(i, lease);
        self.watch_fires();
        if self.cfg.synchronous_mode.is_active() {
            // The runner's bootstrap: the sync key names the new leader before any commit.
            self.dcs.write_sync(&name, &[], None);
        }
        let pg = &mut self.nodes[i].pg;
        if pg.data == DataDirState::Empty {
            // initdb, then start the fresh primary under the lease just taken.
            *pg = Pg {
                data: DataDirState::Primary,
                running: true,
                in_recovery: false,
                timeline: 1,
                history: vec![],
                lsn: 1_000,
                following: None,
                sysid: Some(sysid),
                clean_stop: false,
                ssn: None,
            };
            self.created_timelines.insert(1);
            self.nodes[i].max_timeline = 1;
        }
        true
    }

    /// The runner's promotion: check the lease by its own clock, record the promotion in
    /// `history` FIRST (so that every timeline that can exist is known to the DCS), then
    /// `pg_ctl promote`. Idempotent on a primary.
    fn promote(&mut self, i: usize, dcs_ok: bool) -> bool {
        let name = self.nodes[i].name.clone();
        let pg = &self.nodes[i].pg;
        if !pg.running {
            return false;
        }
        if !pg.in_recovery {
            return true;
        }
        // A frozen agent may wake up long after it acquired the key.
        if !self.lease_still_ours(i) || !dcs_ok {
            return false;
        }
        let (ended, lsn) = (pg.timeline, pg.lsn);
        self.dcs.history =
            history_after_promotion(&self.dcs.history, ended, lsn, "promoted", "", &name);
        // Fencing at the routers: no pooler still sends writes elsewhere.
        if let Some(p) = self
            .poolers
            .iter()
            .find(|p| p.routes_to.as_ref().is_some_and(|r| *r != name))
        {
            self.fail(&format!(
                "{name} promoted while {} still routes writes to {:?}",
                p.id, p.routes_to
            ));
        }
        // Invariant b: never promote beyond the lag limit.
        let optime = self.dcs.status.as_ref().map_or(0, |s| s.optime);
        if lsn + MAX_LAG < optime {
            self.fail(&format!(
                "{name} promoted at {lsn}, beyond the lag limit of optime {optime}"
            ));
        }
        // Synchronous mode: no acknowledged commit is lost.
        if self.cfg.synchronous_mode.is_active() {
            if let Some(acked) = self.acked.get(&ended).copied().filter(|a| lsn < *a) {
                self.fail(&format!(
                    "{name} promoted at {lsn} on timeline {ended}, but commits were \
                     acknowledged up to {acked} in synchronous mode"
                ));
            }
        }
        // A switchover loses no write: whoever takes over after the old leader stopped
        // cleanly and released the key holds all of its WAL. (When the release did not
        // reach the DCS, the lease runs out and it is an ordinary failover.)
        if let Some((old, timeline, end)) = self.handed_over.take() {
            if old != name && timeline == ended && lsn < end {
                self.fail(&format!(
                    "{name} promoted at {lsn} in a switchover, before the end of the old \
                     leader {old}'s WAL at {end}"
                ));
            }
        }
        let ssn = sync_setting_on_restart(&self.cfg, &self.dcs.snapshot(), &name);
        // The runner's `observe` records where the setting took effect.
        self.nodes[i].memory.sync_set_at_lsn = Some(lsn);
        let pg = &mut self.nodes[i].pg;
        pg.ssn = ssn;
        pg.history.push((ended, lsn));
        pg.timeline += 1;
        pg.in_recovery = false;
        pg.following = None;
        pg.data = DataDirState::Primary;
        let new_timeline = pg.timeline;
        self.nodes[i].max_timeline = new_timeline;
        if !self.created_timelines.insert(new_timeline) {
            self.fail(&format!(
                "{name} promoted to timeline {new_timeline}, which already exists"
            ));
        }
        self.promotions += 1;
        if self.dcs.failover.is_some() {
            self.requested_promotions += 1;
        }
        self.note(|| format!("{name}: promoted to timeline {new_timeline} at {lsn}"));
        true
    }

    // -----------------------------------------------------------------------------------
    // Faults

    fn inject_fault(&mut self) {
        self.faults += 1;
        let i = self.rng.random_range(0..self.nodes.len());
        let name = self.nodes[i].name.clone();
        let ttl = self.timing.ttl;
        let kind = self.rng.random_range(0..13);
        match kind {
            0 | 1 => {
                let back = self.rng.random_range(500..3 * ttl);
                self.note(|| format!("FAULT kill {name}; restart in {back} ms"));
                self.kill(i);
                self.schedule(self.now + back, Event::Heal(Fault::Restart(i)));
            }
            2 => {
                let back = self.rng.random_range(1_000..2 * ttl);
                self.note(|| format!("FAULT {name} cannot reach the DCS for {back} ms"));
                self.nodes[i].dcs_blocked = true;
                self.schedule(self.now + back, Event::Heal(Fault::DcsBack(i)));
            }
            3 => {
                let back = self.rng.random_range(1_000..2 * ttl);
                self.note(|| format!("FAULT DCS outage for everyone for {back} ms"));
                for j in 0..self.nodes.len() {
                    self.nodes[j].dcs_blocked = true;
                    self.schedule(self.now + back, Event::Heal(Fault::DcsBack(j)));
                }
            }
            4 => {
                let back = self.rng.random_range(1_000..2 * ttl);
                self.note(|| format!("FAULT {name} isolated from the network for {back} ms"));
                self.nodes[i].isolated = true;
                self.schedule(self.now + back, Event::Heal(Fault::NetworkBack(i)));
            }
            5 => {
                let back = ttl + self.rng.random_range(1..ttl);
                self.note(|| format!("FAULT {name} frozen for {back} ms"));
                self.nodes[i].frozen = true;
                self.schedule(self.now + back, Event::Heal(Fault::Thaw(i)));
            }
            6 => {
                let back = self.rng.random_range(5_000..5 * ttl);
                self.note(|| format!("FAULT {name} replicates slowly for {back} ms"));
                self.nodes[i].catchup_rate = self.write_rate / 4;
                self.schedule(self.now + back, Event::Heal(Fault::ReplicationNormal(i)));
            }
            7 => {
                let step = self.rng.random_range(-3_600_000i64..3_600_000);
                self.note(|| format!("FAULT {name}'s clock steps by {step} ms"));
                self.nodes[i].clock_offset += step;
            }
            8 if !self.cfg.paused => {
                let back = self.rng.random_range(1_000..3 * ttl);
                self.note(|| format!("FAULT maintenance mode for {back} ms"));
                self.cfg.paused = true;
                self.schedule(self.now + back, Event::Heal(Fault::Resume));
            }
            9 if !self.poolers.is_empty() => {
                let k = self.rng.random_range(0..self.poolers.len());
                let back = self.rng.random_range(1_000..3 * ttl);
                let id = self.poolers[k].id.clone();
                self.note(|| format!("FAULT {id} cannot reach the DCS for {back} ms"));
                self.poolers[k].reachable = false;
                self.schedule(self.now + back, Event::Heal(Fault::PoolerBack(k)));
            }
            10 | 11 => self.request_switchover(kind == 10),
            12 => {
                self.note(|| format!("FAULT {name}'s PostgreSQL crashes (the agent lives)"));
                let pg = &mut self.nodes[i].pg;
                if pg.running {
                    pg.running = false;
                    pg.clean_stop = false;
                    pg.following = None;
                }
            }
            _ => {
                self.note(|| format!("FAULT restart {name}"));
                self.kill(i);
                self.schedule(self.now + 500, Event::Heal(Fault::Restart(i)));
            }
        }
    }

    /// An operator asks for a switchover (from the current leader) or a failover, to a
    /// random member or (switchover only) to none in particular, sometimes scheduled. The
    /// members are not checked up front: the nodes must cope with any request.
    fn request_switchover(&mut self, switchover: bool) {
        if self.dcs.failover.is_some() || self.cfg.paused {
            return;
        }
        let leader = self.dcs.leader.as_ref().map(|(l, _)| l.clone());
        if switchover && leader.is_none() {
            return;
        }
        let j = self.rng.random_range(0..self.nodes.len());
        let candidate =
            (!switchover || self.rng.random_bool(0.7)).then(|| self.nodes[j].name.clone());
        let scheduled_at = (switchover && self.rng.random_bool(0.2)).then(|| {
            let at = 1_796_558_400 + (self.now / 1000) as i64 + self.rng.random_range(1..30);
            iso8601(at)
        });
        let request = FailoverRequest {
            leader: if switchover { leader } else { None },
            candidate,
            scheduled_at,
        };
        self.note(|| format!("OPERATOR requests {request:?}"));
        self.dcs.failover_version += 1;
        self.dcs.failover = Some((request, self.dcs.failover_version));
        self.watch_fires();
    }

    /// A switchover's clean stop: the streaming standbys receive the WAL up to and
    /// including the shutdown checkpoint; then `status` and the leader key.
    fn step_down(&mut self, i: usize, dcs_ok: bool) -> bool {
        let name = self.nodes[i].name.clone();
        let (timeline, sysid) = (self.nodes[i].pg.timeline, self.nodes[i].pg.sysid.clone());
        if self.nodes[i].pg.writable() {
            let pg = &mut self.nodes[i].pg;
            pg.lsn += 1;
            pg.running = false;
            pg.clean_stop = true;
            let end = pg.lsn;
            let sender_up = self.nodes[i].on_network();
            for n in self.nodes.iter_mut() {
                let streaming = n.on_network()
                    && n.pg.running
                    && n.pg.in_recovery
                    && n.pg.following.as_deref() == Some(name.as_str())
                    && n.pg.timeline == timeline
                    && n.pg.sysid == sysid;
                if sender_up && streaming {
                    n.pg.lsn = n.pg.lsn.max(end);
                }
            }
        }
        if !self.nodes[i].pg.shut_down_cleanly() || !dcs_ok {
            return false;
        }
        let end = self.nodes[i].pg.lsn - 1;
        self.dcs.set_optime(end);
        self.release_leader_key(i);
        self.handed_over = Some((name.clone(), timeline, end));
        self.note(|| format!("{name}: stopped cleanly at {end} and released the leader key"));
        true
    }

    /// Node `i` deletes the leader key if it holds it, and forgets its lease.
    fn release_leader_key(&mut self, i: usize) {
        let name = self.nodes[i].name.clone();
        if self.dcs.leader.as_ref().is_some_and(|(l, _)| *l == name) {
            self.dcs.leader = None;
            self.dcs.leader_version += 1;
            self.watch_fires();
        }
        let at = self.agent_clock(i);
        let node = &mut self.nodes[i];
        node.memory.last_leader_renewal = None;
        node.lease_sent_at = None;
        node.memory.released_leader_at = Some(at);
    }

    /// kill -9 of the agent and PostgreSQL.
    fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if !node.alive {
            return;
        }
        node.alive = false;
        node.frozen = false;
        node.epoch += 1;
        node.plan.clear();
        node.deferred.clear();
        node.sleeping_until = None;
        node.lease_sent_at = None;
        if node.pg.running {
            node.pg.clean_stop = false;
        }
        node.pg.running = false;
        node.pg.following = None;
    }

    fn heal(&mut self, fault: Fault) {
        match fault {
            Fault::PoolerBack(k) => {
                self.poolers[k].reachable = true;
                let id = self.poolers[k].id.clone();
                self.note(|| format!("HEAL {id} reaches the DCS again"));
            }
            Fault::Restart(i) => {
                if !self.nodes[i].alive {
                    let node = &mut self.nodes[i];
                    node.alive = true;
                    node.memory = AgentMemory::default();
                    node.resumed_at = None;
                    let name = node.name.clone();
                    self.note(|| format!("HEAL {name} restarts"));
                    self.start_agent(i, 100);
                }
            }
            Fault::DcsBack(i) => self.nodes[i].dcs_blocked = false,
            Fault::NetworkBack(i) => self.nodes[i].isolated = false,
            Fault::Thaw(i) => {
                let node = &mut self.nodes[i];
                if node.frozen {
                    node.frozen = false;
                    // Only a primary that was already writable when frozen is excused.
                    node.resumed_at = node.pg.writable().then_some(self.now);
                    let deferred = std::mem::take(&mut node.deferred);
                    let name = node.name.clone();
                    self.note(|| format!("HEAL {name} thaws"));
                    for e in deferred {
                        self.schedule(self.now, e);
                    }
                }
            }
            Fault::ReplicationNormal(i) => self.nodes[i].catchup_rate = self.normal_catchup(),
            Fault::Resume => {
                if self.cfg.paused {
                    self.cfg.paused = false;
                    self.resumed_from_pause_at = Some(self.now);
                    self.note(|| "HEAL maintenance mode ends".into());
                }
            }
        }
    }

    fn heal_everything(&mut self) {
        for i in 0..self.nodes.len() {
            self.heal(Fault::Restart(i));
            self.heal(Fault::DcsBack(i));
            self.heal(Fault::NetworkBack(i));
            self.heal(Fault::Thaw(i));
            self.heal(Fault::ReplicationNormal(i));
        }
        self.heal(Fault::Resume);
        self.note(|| "HEAL everything; leaving the cluster alone".into());
    }

    // -----------------------------------------------------------------------------------
    // Invariants

    fn check_invariants(&mut self) {
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            // (a) writable only under a live leader lease (a node frozen by the fault is
            // fenced by the routers until its agent has had one loop to demote it).
            if n.alive && !n.frozen && n.pg.writable() {
                let holds = match (&self.dcs.leader, n.leader_lease) {
                    (Some((l, id)), Some(mine)) => {
                        *l == n.name
                            && *id == mine
                            && self
                                .dcs
                                .live_lease(&n.name, self.now)
                                .is_some_and(|l| l.id == mine)
                    }
                    _ => false,
                };
                let grace = 2 * self.timing.retry_timeout + DEMOTE.1 + PEER_TIMEOUT;
                let thawing = n.resumed_at.is_some_and(|t| self.now <= t + grace);
                // Maintenance mode promises no automatic demotion; nobody promotes either.
                let pause_grace = self.timing.loop_wait + grace;
                let paused = self.cfg.paused
                    || self
                        .resumed_from_pause_at
                        .is_some_and(|t| self.now <= t + pause_grace);
                if !holds && !thawing && !paused {
                    let what = format!(
                        "{} is writable without a live leader lease (leader: {:?})",
                        n.name, self.dcs.leader
                    );
                    self.fail(&what);
                }
            }
            // (c) a data directory's timeline never goes back.
            if n.pg.data != DataDirState::Empty && n.pg.timeline < n.max_timeline {
                let what = format!(
                    "{}'s timeline went back from {} to {}",
                    n.name, n.max_timeline, n.pg.timeline
                );
                self.fail(&what);
            }
            let t = n.pg.timeline;
            self.nodes[i].max_timeline = self.nodes[i].max_timeline.max(t);
        }
        let writable_with_lease = self
            .nodes
            .iter()
            .filter(|n| {
                n.alive && n.pg.writable() && self.dcs.live_lease(&n.name, self.now).is_some()
            })
            .filter(|n| self.dcs.leader.as_ref().is_some_and(|(l, _)| *l == n.name))
            .count();
        if writable_with_lease > 1 {
            self.fail("two writable primaries with live leader leases");
        }
        // (c) history only grows, timelines strictly increasing.
        let h = &self.dcs.history;
        if h.windows(2).any(|w| w[0].timeline >= w[1].timeline) {
            self.fail("DCS history timelines do not strictly increase");
        }
    }

    fn check_history_grew(&self, before: &[HistoryEntry]) {
        if !self.dcs.history.starts_with(before) {
            self.fail("DCS history lost or rewrote entries");
        }
    }

    /// (d) After healing and 3×ttl alone: one primary under the lease, everyone follows it.
    fn check_liveness(&self) {
        let eligible_alive = self.nodes.iter().any(|n| n.alive && !n.nofailover);
        if !eligible_alive {
            return;
        }
        let primaries: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| n.alive && n.pg.writable())
            .collect();
        if primaries.len() != 1 {
            self.fail(&format!(
                "liveness: {} writable primaries after 3×ttl alone",
                primaries.len()
            ));
        }
        let leader = &primaries[0].name;
        if self.dcs.leader.as_ref().is_none_or(|(l, _)| l != leader) {
            self.fail("liveness: the primary does not hold the leader key");
        }
        let primary = &primaries[0].pg;
        for n in self.nodes.iter().filter(|n| n.alive && n.name != *leader) {
            if !(n.pg.running
                && n.pg.in_recovery
                && n.pg.following.as_deref() == Some(leader.as_str()))
            {
                self.fail(&format!(
                    "liveness: {} does not follow the leader {leader}",
                    n.name
                ));
            }
            // Following is not enough: it must stream, i.e. share the leader's history.
            if n.pg.timeline != primary.timeline || n.pg.lsn > primary.lsn {
                self.fail(&format!(
                    "liveness: {} follows {leader} but cannot stream from it",
                    n.name
                ));
            }
        }
    }
}

fn is_bootstrapped(sim: &Sim) -> bool {
    sim.dcs.initialize.is_some() && sim.nodes.iter().any(|n| n.pg.writable())
}

struct RunStats {
    promotions: u32,
    requested_promotions: u32,
    faults: u32,
    events: u64,
}

/// One seeded run: bootstrap, a few hundred steps with faults, then healing and a check
/// that the cluster settles.
fn run_seed(seed: u64, timing: Timing, full_log: bool) -> RunStats {
    let mut sim = Sim::new(seed, timing, full_log);
    let steps = 200;
    let fault_steps = 140;
    for step in 0..steps {
        let dt = sim.rng.random_range(100..3_000);
        let before = sim.dcs.history.clone();
        sim.run_until(sim.now + dt);
        sim.check_history_grew(&before);
        if step < fault_steps && is_bootstrapped(&sim) && sim.rng.random_bool(0.1) {
            sim.inject_fault();
        }
        if step == fault_steps {
            sim.heal_everything();
        }
    }
    sim.run_until(sim.now + 3 * timing.ttl);
    sim.check_liveness();
    RunStats {
        promotions: sim.promotions,
        requested_promotions: sim.requested_promotions,
        faults: sim.faults,
        events: sim.events,
    }
}

fn seeds_per_timing() -> u64 {
    std::env::var("PGHERD_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500)
}

#[test]
fn simulated_clusters_keep_the_safety_invariants() {
    if let Some(seed) = std::env::var("PGHERD_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        for timing in TIMINGS {
            eprintln!("=== seed {seed} {timing:?}");
            run_seed(seed, timing, true);
        }
        return;
    }
    let (mut promotions, mut faults, mut runs, mut events) = (0, 0, 0, 0);
    let mut requested = 0;
    for timing in TIMINGS {
        for seed in 0..seeds_per_timing() {
            let Ok(stats) = std::panic::catch_unwind(|| run_seed(seed, timing, false)) else {
                // Deterministic: replay the seed with the step log for the report.
                run_seed(seed, timing, true);
                unreachable!("seed {seed} failed once but not on replay");
            };
            promotions += stats.promotions;
            requested += stats.requested_promotions;
            faults += stats.faults;
            events += stats.events;
            runs += 1;
        }
    }
    eprintln!(
        "{runs} simulated runs, {events} events, {faults} faults, {promotions} promotions \
         ({requested} while a switchover or failover request was pending)"
    );
    // The faults must actually exercise failover.
    assert!(
        promotions > runs as u32 / 2,
        "too few failovers: {promotions} in {runs} runs"
    );
    assert!(
        requested > runs as u32 / 4,
        "too few requested switchovers and failovers: {requested} in {runs} runs"
    );
}
