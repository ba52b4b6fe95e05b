//! One test per rule of [`decide`], named after the behaviour it proves.

use super::*;
use pgherd_dcs::{ClusterStatus, Member, MemberData, Tags, Versioned};

const SYSID: &str = "7000000000000000001";
/// The wall clock in the observations: 2026-12-06T12:00:00Z.
const NOW_SECS: i64 = 1_796_558_400;

fn cfg() -> HaConfig {
    HaConfig {
        ttl: 30_000,
        loop_wait: 10_000,
        retry_timeout: 10_000,
        maximum_lag_on_failover: 1_000,
        use_pg_rewind: true,
        use_slots: true,
        paused: false,
        synchronous_mode: SynchronousMode::Off,
        synchronous_mode_strict: false,
        synchronous_node_count: 1,
        member_slots_ttl: 1_800_000,
        primary_start_timeout: 300_000,
        failsafe_mode: false,
    }
}

fn pg(
    running: bool,
    in_recovery: bool,
    data_dir: DataDirState,
    timeline: u32,
    lsn: u64,
) -> LocalPg {
    LocalPg {
        data_dir,
        running,
        in_recovery,
        timeline: Some(timeline),
        wal_lsn: Some(lsn),
        following: None,
        system_identifier: Some(SYSID.into()),
        shut_down_cleanly: false,
        standbys: Vec::new(),
        sync_setting: None,
        inactive_slots: Vec::new(),
    }
}

fn primary(lsn: u64) -> LocalPg {
    pg(true, false, DataDirState::Primary, 1, lsn)
}

/// A primary with these standbys streaming from it, flushed up to the given positions.
fn primary_streaming_to(lsn: u64, standbys: &[(&str, u64)]) -> LocalPg {
    let mut local = primary(lsn);
    local.standbys = standbys
        .iter()
        .map(|(name, flushed)| Standby {
            name: name.to_string(),
            streaming: true,
            flush_lsn: Some(*flushed),
            synchronous: false,
        })
        .collect();
    local
}

fn replica(lsn: u64) -> LocalPg {
    pg(true, true, DataDirState::Standby, 1, lsn)
}

fn following(mut local: LocalPg, upstream: &str) -> LocalPg {
    local.following = Some(upstream.into());
    local
}

fn stopped(data_dir: DataDirState) -> LocalPg {
    pg(false, data_dir == DataDirState::Standby, data_dir, 1, 5_000)
}

fn empty() -> LocalPg {
    LocalPg {
        data_dir: DataDirState::Empty,
        running: false,
        in_recovery: false,
        timeline: None,
        wal_lsn: None,
        following: None,
        system_identifier: None,
        shut_down_cleanly: false,
        standbys: Vec::new(),
        sync_setting: None,
        inactive_slots: Vec::new(),
    }
}

fn member(name: &str, role: &str, timeline: u32) -> Member {
    Member {
        name: name.into(),
        data: MemberData {
            state: "running".into(),
            role: role.into(),
            timeline: Some(timeline),
            xlog_location: Some(5_000),
            ..MemberData::default()
        },
    }
}

/// An initialized cluster of pg-a, pg-b and pg-c on timeline 1.
fn cluster(leader: Option<&str>) -> Cluster {
    Cluster {
        initialize: Some(SYSID.into()),
        leader: leader.map(|l| Versioned {
            value: l.into(),
            version: 1,
        }),
        members: ["pg-a", "pg-b", "pg-c"]
            .iter()
            .map(|n| {
                member(
                    n,
                    if Some(*n) == leader {
                        "primary"
                    } else {
                        "replica"
                    },
                    1,
                )
            })
            .collect(),
        status: Some(ClusterStatus {
            optime: 5_000,
            ..ClusterStatus::default()
        }),
        ..Cluster::default()
    }
}

fn history(timeline: u32, lsn: u64, new_leader: &str) -> HistoryEntry {
    HistoryEntry {
        timeline,
        lsn,
        reason: "promoted".into(),
        timestamp: String::new(),
        new_leader: new_leader.into(),
    }
}

fn obs(me: &str, local: LocalPg, cluster: Option<Cluster>) -> Observation {
    Observation {
        now: 1_000_000,
        wall_clock_secs: NOW_SECS,
        me: me.into(),
        my_tags_nofailover: false,
        local,
        cluster,
        peers: None,
        failsafe: None,
        failsafe_heard: None,
        request: None,
        memory: AgentMemory::default(),
    }
}

fn peer(name: &str, lsn: u64) -> PeerStatus {
    PeerStatus {
        name: name.into(),
        wal_lsn: Some(lsn),
        timeline: Some(1),
        nofailover: false,
        is_primary: false,
    }
}

fn decided(obs: &Observation, cfg: &HaConfig) -> Vec<Action> {
    let decisions = decide(obs, cfg);
    assert!(
        !decisions.is_empty(),
        "decide() must never return an empty list"
    );
    for (action, reason) in &decisions {
        assert!(!reason.trim().is_empty(), "{action:?} has no reason");
    }
    decisions.into_iter().map(|(a, _)| a).collect()
}

fn reason_of(obs: &Observation, cfg: &HaConfig) -> String {
    decide(obs, cfg)
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .join("; ")
}

fn slots(names: &[&str]) -> Action {
    Action::EnsureSlots(names.iter().map(|n| n.to_string()).collect())
}

// Rule 1: without the DCS.

#[test]
fn primary_that_cannot_read_dcs_demotes() {
    let o = obs("pg-a", primary(5_000), None);
    assert_eq!(decided(&o, &cfg()), [Action::Demote(DemoteMode::Offline)]);
}

#[test]
fn replica_that_cannot_read_dcs_waits() {
    for local in [replica(5_000), stopped(DataDirState::Primary), empty()] {
        let o = obs("pg-a", local, None);
        assert_eq!(decided(&o, &cfg()), [Action::Wait]);
    }
}

// Rule 2: maintenance mode.

#[test]
fn paused_leader_only_renews_its_key() {
    let paused = HaConfig {
        paused: true,
        ..cfg()
    };
    let o = obs("pg-a", replica(5_000), Some(cluster(Some("pg-a"))));
    assert_eq!(decided(&o, &paused), [Action::RenewLeader]);
}

#[test]
fn paused_members_take_no_automatic_action() {
    let paused = HaConfig {
        paused: true,
        ..cfg()
    };
    let cases = [
        obs("pg-a", primary(5_000), None),
        obs("pg-a", primary(5_000), Some(cluster(Some("pg-b")))),
        obs("pg-b", replica(5_000), Some(cluster(None))),
        obs(
            "pg-b",
            stopped(DataDirState::Primary),
            Some(cluster(Some("pg-a"))),
        ),
        obs("pg-b", empty(), Some(cluster(Some("pg-a")))),
        obs("pg-b", empty(), Some(Cluster::default())),
    ];
    for o in cases {
        assert_eq!(decided(&o, &paused), [Action::Wait], "{o:?}");
    }
}

// Rule 3: bootstrap.

#[test]
fn empty_member_bootstraps_an_uninitialized_cluster() {
    let o = obs("pg-a", empty(), Some(Cluster::default()));
    assert_eq!(decided(&o, &cfg()), [Action::Initialize]);
}

#[test]
fn nofailover_member_does_not_bootstrap() {
    let mut o = obs("pg-a", empty(), Some(Cluster::default()));
    o.my_tags_nofailover = true;
    assert_eq!(decided(&o, &cfg()), [Action::Wait]);
}

#[test]
fn former_primary_publishes_its_existing_data() {
    let o = obs(
        "pg-a",
        stopped(DataDirState::Primary),
        Some(Cluster::default()),
    );
    assert_eq!(decided(&o, &cfg()), [Action::Initialize]);
}

#[test]
fn standby_data_waits_for_a_primary_to_publish_the_cluster() {
    let o = obs(
        "pg-a",
        stopped(DataDirState::Standby),
        Some(Cluster::default()),
    );
    assert_eq!(decided(&o, &cfg()), [Action::Wait]);
}

#[test]
fn uninitialized_cluster_with_another_leader_waits_for_it() {
    let c = Cluster {
        initialize: None,
        ..cluster(Some("pg-b"))
    };
    let o = obs("pg-a", empty(), Some(c));
    assert_eq!(decided(&o, &cfg()), [Action::Wait]);
}

// Rule 4: clone, and never touch foreign data.

#[test]
fn empty_data_dir_clones_from_the_leader() {
    let o = obs("pg-c", empty(), Some(cluster(Some("pg-a"))));
    assert_eq!(
        decided(&o, &cfg()),
        [Action::Clone {
            from: "pg-a".into()
        }]
    );
}

#[test]
fn empty_data_dir_prefers_a_running_clonefrom_replica() {
    let mut c = cluster(Some("pg-a"));
    c.members[1].data.tags = Tags {
        clonefrom: true,
        ..Tags::default()
    };
    let o = obs("pg-c", empty(), Some(c));
    assert_eq!(
        decided(&o, &cfg()),
        [Action::Clone {
            from: "pg-b".into()
        }]
    );
}

#[test]
fn stopped_clonefrom_replica_is_not_a_clone_source() {
    let mut c = cluster(Some("pg-a"));
    c.members[1].data.tags = Tags {
        clonefrom: true,
        ..Tags::default()
    };
    c.members[1].data.state = "stopped".into();
    let o = obs("pg-c", empty(), Some(c));
    assert_eq!(
        decided(&o, &cfg()),
        [Action::Clone {
            from: "pg-a".into()
        }]
    );
}

#[test]
fn empty_data_dir_without_a_source_waits() {
    let o = obs("pg-c", empty(), Some(cluster(None)));
    assert_eq!(decided(&o, &cfg()), [Action::Wait]);
}

#[test]
fn foreign_system_identifier_is_never_touched() {
    let mut local = stopped(DataDirState::Primary);
    local.system_identifier = Some("6999999999999999999".into());
    let o = obs("pg-c", local, Some(cluster(Some("pg-a"))));
    assert_eq!(decided(&o, &cfg()), [Action::Wait]);
    assert!(reason_of(&o, &cfg()).contains("system identifier mismatch"));
}

// Rule 5: PostgreSQL stopped.

#[test]
fn stopped_former_primary_rewinds_from_the_new_leader() {
    let o = obs(
        "pg-b",
        stopped(DataDirState::Primary),
        Some(cluster(Some("pg-a"))),
    );
    assert_eq!(
        decided(&o, &cfg()),
        [Action::Rewind {
            from: "pg-a".into()
        }]
    );
}

#[test]
fn stopped_former_primary_reclones_after_a_failed_rewind() {
    let mut o = obs(
        "pg-b",
        stopped(DataDirState::Primary),
        Some(cluster(Some("pg-a"))),
    );
    o.memory.rewind_failed = true;
    assert_eq!(decided(&o, &cfg()), [Action::RemoveDataDir]);
}

#[test]
fn stopped_former_primary_reclones_without_pg_rewind() {
    let o = obs(
        "pg-b",
        stopped(DataDirState::Primary),
        Some(cluster(Some("pg-a"))),
    );
    let no_rewind = HaConfig {
        use_pg_rewind: false,
        ..cfg()
    };
    assert_eq!(decided(&o, &no_rewind), [Action::RemoveDataDir]);
}

#[test]
fn stopped_replica_starts_following_the_leader() {
    let o = obs(
        "pg-b",
        stopped(DataDirState::Standby),
        Some(cluster(Some("pg-a"))),
    );
    assert_eq!(
        decided(&o, &cfg()),
        [Action::StartReplica {
            upstream: Some("pg-a".into())
        }]
    );
}

#[test]
fn stopped_leader_with_the_newest_primary_data_restarts_as_primary() {
    let o = obs(
        "pg-a",
        stopped(DataDirState::Primary),
        Some(cluster(Some("pg-a"))),
    );
    assert_eq!(
        decided(&o, &cfg()),
        [Action::RenewLeader, Action::StartPrimary]
    );
}

#[test]
fn stopped_leader_with_standby_data_starts_as_a_replica_before_promoting() {
    let o = obs(
        "pg-a",
        stopped(DataDirState::Standby),
        Some(cluster(Some("pg-a"))),
    );
    assert_eq!(
        decided(&o, &cfg()),
        [Action::StartReplica { upstream: None }]
    );
}

#[test]
fn stopped_leader_behind_the_newest_timeline_does_not_start_writable() {
    let mut c = cluster(Some("pg-a"));
    c.history.push(history(1, 100, "pg-b"));
    c.history.push(history(2, 200, "pg-a"));
    let mut local = stopped(DataDirState::Primary);
    local.timeline = Some(1);
    let o = obs("pg-a", local, Some(c));
    assert!(!decided(&o, &cfg()).contains(&Action::StartPrimary));
}

#[test]
fn stopped_member_without_a_leader_starts_as_a_replica() {
    for data in [DataDirState::Primary, DataDirState::Standby] {
        let o = obs("pg-b", stopped(data), Some(cluster(None)));
        assert_eq!(
            decided(&o, &cfg()),
            [Action::StartReplica { upstream: None }]
        );
    }
}

// Rule 6: we hold the leader key.

#[test]
fn leader_renews_its_key_and_keeps_slots() {
    let o = obs("pg-a", primary(5_000), Some(cluster(Some("pg-a"))));
    assert_eq!(
        decided(&o, &cfg()),
        [Action::RenewLeader, slots(&["pg_b", "pg_c"])]
    );
}

#[test]
fn leader_in_recovery_renews_then_promotes() {
    let o = obs("pg-a", replica(5_000), Some(cluster(Some("pg-a"))));
    let no_slots = HaConfig {
        use_slots: false,
        ..cfg()
    };
    assert_eq!(
        decided(&o, &no_slots),
        [Action::RenewLeader, Action::Promote]
    );
    assert!(reason_of(&o, &no_slots).contains("holding the leader lock but in recovery"));
}

#[test]
fn slot_names_are_what_postgresql_accepts() {
    assert_eq!(slot_name("Node-1.example"), "node_1_example");
    assert_eq!(slot_name("pg_a9"), "pg_a9");
}

// Rule 7: another member holds the leader key.

#[test]
fn second_primary_steps_down_at_once() {
    let o = obs("pg-b", primary(9_000), Some(cluster(Some("pg-a"))));
    assert_eq!(decided(&o, &cfg()), [Action::Demote(DemoteMode::Follow)]);
}

#[test]
fn replica_repoints_to_the_new_leader() {
    let o = obs(
        "pg-b",
        following(replica(5_000), "pg-c"),
        Some(cluster(Some("pg-a"))),
    );
    assert_eq!(
        decided(&o, &cfg()),
        [Action::Follow {
            upstream: "pg-a".into()
        }]
    );
}

#[test]
fn replica_following_the_leader_waits() {
    let o = obs(
        "pg-b",
        following(replica(5_000), "pg-a"),
        Some(cluster(Some("pg-a"))),
    );
    assert_eq!(decided(&o, &cfg()), [Action::Wait]);
}

#[test]
fn replica_on_a_newer_timeline_than_the_leader_rewinds() {
    let local = following(pg(true, true, DataDirState::Standby, 3, 5_000), "pg-a");
    let o = obs("pg-b", local, Some(cluster(Some("pg-a"))));
    assert_eq!(
        decided(&o, &cfg()),
        [Action::Rewind {
            from: "pg-a".into()
        }]
    );
}

#[test]
fn replica_past_the_switch_point_rewinds() {
    let mut c = cluster(Some("pg-a"));
    c.members[0].data.timeline = Some(2);
    c.history = vec![history(1, 4_000, "pg-a")];
    let o = obs("pg-b", following(replica(4_500), "pg-a"), Some(c));
    assert_eq!(
        decided(&o, &cfg()),
        [Action::Rewind {
            from: "pg-a".into()
        }]
    );
}

#[test]
fn replica_before_the_switch_point_keeps_following() {
    let mut c = cluster(Some("pg-a"));
    c.members[0].data.timeline = Some(2);
    c.history = vec![history(1, 4_000, "pg-a")];
    let o = obs("pg-b", following(replica(3_500), "pg-a"), Some(c));
    assert_eq!(decided(&o, &cfg()), [Action::Wait]);
}

#[test]
fn leader_promotion_recorded_in_history_counts_before_it_publishes() {
    // pg-a promoted (history says so) but its member key still shows timeline 1: we know
    // we diverged, but rewinding now would read pg-a's stale control file.
    let mut c = cluster(Some("pg-a"));
    c.history = vec![history(1, 4_000, "pg-a")];
    let o = obs("pg-b", following(replica(4_500), "pg-a"), Some(c.clone()));
    assert_eq!(decided(&o, &cfg()), [Action::Wait]);
    assert!(reason_of(&o, &cfg()).contains("finish promoting"));
    // Once it publishes itself as a primary on timeline 2, we rewind from it.
    c.members[0].data.timeline = Some(2);
    let o = obs("pg-b", following(replica(4_500), "pg-a"), Some(c));
    assert_eq!(
        decided(&o, &cfg()),
        [Action::Rewind {
            from: "pg-a".into()
        }]
    );
}

#[test]
fn stopped_replica_that_diverged_rewinds_instead_of_starting() {
    let mut c = cluster(Some("pg-a"));
    c.members[0].data.timeline = Some(2);
    c.history = vec![history(1, 4_000, "pg-a")];
    let o = obs("pg-b", stopped(DataDirState::Standby), Some(c));
    assert_eq!(
        decided(&o, &cfg()),
        [Action::Rewind {
            from: "pg-a".into()
        }]
    );
}

// Rule 8: no leader.

#[test]
fn eligible_replica_asks_peers_before_racing() {
    let o = obs("pg-b", replica(5_000), Some(cluster(None)));
    assert_eq!(decided(&o, &cfg()), [Action::AskPeers]);
}

#[test]
fn healthiest_replica_acquires_the_key_and_promotes() {
    let mut o = obs("pg-b", replica(5_000), Some(cluster(None)));
    o.peers = Some(vec![peer("pg-a", 4_000), peer("pg-c", 4_900)]);
    assert_eq!(
        decided(&o, &cfg()),
        [
            Action::AcquireLeader,
            Action::Promote,
            slots(&["pg_a", "pg_c"])
        ]
    );
}

#[test]
fn replica_beyond_lag_limit_does_not_race() {
    let o = obs("pg-b", replica(3_000), Some(cluster(None)));
    assert_eq!(decided(&o, &cfg()), [Action::Wait]);
    assert!(reason_of(&o, &cfg()).contains("lag 2000 bytes"));
}

#[test]
fn nofailover_replica_does_not_race() {
    let mut o = obs("pg-b", replica(5_000), Some(cluster(None)));
    o.my_tags_nofailover = true;
    assert_eq!(decided(&o, &cfg()), [Action::Wait]);
}

#[test]
fn replica_behind_a_peer_waits() {
    let mut o = obs("pg-b", replica(5_000), Some(cluster(None)));
    o.peers = Some(vec![peer("pg-c", 5_001)]);
    assert_eq!(decided(&o, &cfg()), [Action::Wait]);
    assert!(reason_of(&o, &cfg()).contains("not the healthiest"));
}

#[test]
fn live_primary_peer_blocks_the_race() {
    let mut o = obs("pg-b", replica(5_000), Some(cluster(None)));
    o.peers = Some(vec![PeerStatus {
        is_primary: true,
        ..peer("pg-a", 100)
    }]);
    assert_eq!(decided(&o, &cfg()), [Action::Wait]);
}

#[test]
fn healthiest_replica_wins_ties_by_name() {
    let mut b = obs("pg-b", replica(5_000), Some(cluster(None)));
    b.peers = Some(vec![peer("pg-c", 5_000)]);
    assert_eq!(decided(&b, &cfg())[0], Action::AcquireLeader);
    let mut c = obs("pg-c", replica(5_000), Some(cluster(None)));
    c.peers = Some(vec![peer("pg-b", 5_000)]);
    assert_eq!(decided(&c, &cfg()), [Action::Wait]);
}

#[test]
fn silent_nofailover_and_older_timeline_peers_do_not_block() {
    let mut o = obs(
        "pg-b",
        pg(true, true, DataDirState::Standby, 2, 5_000),
        Some(cluster(None)),
    );
    o.peers = Some(vec![
        PeerStatus {
            wal_lsn: None,
            timeline: None,
            ..peer("pg-a", 0)
        },
        PeerStatus {
            nofailover: true,
            ..peer("pg-c", 9_000)
        },
        PeerStatus {
            timeline: Some(1),
            ..peer("pg-d", 9_000)
        },
    ]);
    assert_eq!(decided(&o, &cfg())[0], Action::AcquireLeader);
}

#[test]
fn replica_on_an_older_timeline_than_the_cluster_does_not_race() {
    // Promoting it would fork history again and reuse timeline 2.
    let mut c = cluster(None);
    c.history = vec![history(1, 4_000, "pg-a")];
    c.members.retain(|m| m.name != "pg-a");
    let o = obs("pg-b", replica(4_000), Some(c));
    assert_eq!(decided(&o, &cfg()), [Action::Wait]);
    assert!(reason_of(&o, &cfg()).contains("behind the cluster's timeline 2"));
}

#[test]
fn recorded_promotion_that_never_happened_does_not_block_failover() {
    // pg-a recorded its promotion but still publishes timeline 1: it never promoted.
    let mut c = cluster(None);
    c.history = vec![history(1, 4_000, "pg-a")];
    let o = obs("pg-b", replica(5_000), Some(c.clone()));
    assert_eq!(decided(&o, &cfg()), [Action::AskPeers]);
    assert_eq!(cluster_timeline(&c), Some(1));
}

#[test]
fn primary_without_the_leader_key_takes_it_back() {
    let o = obs("pg-a", primary(5_000), Some(cluster(None)));
    assert_eq!(
        decided(&o, &cfg()),
        [Action::AcquireLeader, slots(&["pg_b", "pg_c"])]
    );
}

#[test]
fn ineligible_primary_without_the_leader_key_demotes() {
    let mut o = obs("pg-a", primary(5_000), Some(cluster(None)));
    o.my_tags_nofailover = true;
    assert_eq!(decided(&o, &cfg()), [Action::Demote(DemoteMode::Offline)]);
}

// Rule 9: every decision has an action and a reason.

#[test]
fn every_observation_yields_actions_with_reasons() {
    let locals = [
        empty(),
        stopped(DataDirState::Primary),
        stopped(DataDirState::Standby),
        primary(5_000),
        replica(5_000),
        replica(0),
    ];
    let clusters = [
        None,
        Some(Cluster::default()),
        Some(cluster(None)),
        Some(cluster(Some("pg-a"))),
    ];
    let configs = [
        cfg(),
        HaConfig {
            paused: true,
            ..cfg()
        },
        HaConfig {
            use_pg_rewind: false,
            ..cfg()
        },
    ];
    for local in &locals {
        for c in &clusters {
            for config in &configs {
                for me in ["pg-a", "pg-b"] {
                    for peers in [None, Some(vec![peer("pg-c", 5_000)])] {
                        let mut o = obs(me, local.clone(), c.clone());
                        o.peers = peers;
                        let actions = decided(&o, config);
                        if o.peers.is_some() {
                            assert!(!actions.contains(&Action::AskPeers), "asked twice: {o:?}");
                        }
                        if o.cluster.is_none() || config.paused {
                            assert!(
                                actions.iter().all(|a| matches!(
                                    a,
                                    Action::Wait
                                        | Action::RenewLeader
                                        | Action::Demote(DemoteMode::Offline)
                                )),
                                "{actions:?} for {o:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}

// ----- switchover and failover (the `failover` key) -----

fn with_request(
    mut c: Cluster,
    leader: Option<&str>,
    candidate: Option<&str>,
    scheduled_at: Option<&str>,
) -> Cluster {
    c.failover = Some(Versioned {
        value: FailoverRequest {
            leader: leader.map(Into::into),
            candidate: candidate.map(Into::into),
            scheduled_at: scheduled_at.map(Into::into),
        },
        version: 7,
    });
    c
}

#[test]
fn leader_asks_the_members_before_a_switchover() {
    let c = with_request(cluster(Some("pg-a")), Some("pg-a"), Some("pg-b"), None);
    let o = obs("pg-a", primary(5_000), Some(c));
    assert_eq!(
        decided(&o, &cfg()),
        vec![Action::RenewLeader, Action::AskPeers]
    );
}

#[test]
fn leader_steps_down_cleanly_for_an_able_candidate() {
    let c = with_request(cluster(Some("pg-a")), Some("pg-a"), Some("pg-b"), None);
    let local = primary_streaming_to(5_000, &[("pg-b", 4_500), ("pg-c", 4_000)]);
    let mut o = obs("pg-a", local, Some(c));
    // The answers may be a loop old; our own pg_stat_replication is what counts.
    o.peers = Some(vec![peer("pg-b", 1), peer("pg-c", 1)]);
    assert_eq!(
        decided(&o, &cfg()),
        vec![Action::RenewLeader, Action::Demote(DemoteMode::Graceful)]
    );
}

#[test]
fn leader_drops_a_switchover_to_a_candidate_that_cannot_take_over() {
    let c = with_request(cluster(Some("pg-a")), Some("pg-a"), Some("pg-b"), None);
    let local = primary_streaming_to(5_000, &[("pg-b", 5_000), ("pg-c", 5_000)]);
    let mut o = obs("pg-a", local, Some(c.clone()));
    let mut tagged = peer("pg-b", 5_000);
    tagged.nofailover = true;
    o.peers = Some(vec![tagged, peer("pg-c", 5_000)]);
    let plan = decided(&o, &cfg());
    assert!(
        plan.contains(&Action::ClearFailover { version: 7 }),
        "{plan:?}"
    );
    assert!(!plan.contains(&Action::Demote(DemoteMode::Graceful)));
    assert!(reason_of(&o, &cfg()).contains("nofailover"));
    // Lagging beyond maximum_lag_on_failover, not streaming from us, or silent: the same.
    o.peers = Some(vec![peer("pg-b", 5_000)]);
    o.local = primary_streaming_to(5_000, &[("pg-b", 3_000)]);
    assert!(decided(&o, &cfg()).contains(&Action::ClearFailover { version: 7 }));
    assert!(reason_of(&o, &cfg()).contains("lags 2000 bytes"));
    o.local = primary_streaming_to(5_000, &[]);
    assert!(reason_of(&o, &cfg()).contains("does not stream from us"));
    o.local = primary_streaming_to(5_000, &[("pg-b", 5_000)]);
    o.peers = Some(vec![PeerStatus {
        wal_lsn: None,
        ..peer("pg-b", 0)
    }]);
    assert!(decided(&o, &cfg()).contains(&Action::ClearFailover { version: 7 }));
}

#[test]
fn a_switchover_without_a_candidate_needs_one_able_member() {
    let c = with_request(cluster(Some("pg-a")), Some("pg-a"), None, None);
    let local = primary_streaming_to(5_000, &[("pg-b", 1_000), ("pg-c", 4_500)]);
    let mut o = obs("pg-a", local, Some(c));
    o.peers = Some(vec![peer("pg-b", 5_000), peer("pg-c", 5_000)]);
    assert!(decided(&o, &cfg()).contains(&Action::Demote(DemoteMode::Graceful)));
    assert!(reason_of(&o, &cfg()).contains("pg-c"));
}

#[test]
fn scheduled_switchover_waits_for_its_time_and_is_dropped_when_long_overdue() {
    let later = crate::runner::iso8601(NOW_SECS + 600);
    let c = with_request(cluster(Some("pg-a")), Some("pg-a"), None, Some(&later));
    let o = obs("pg-a", primary(5_000), Some(c));
    let plan = decided(&o, &cfg());
    assert!(!plan.contains(&Action::AskPeers), "{plan:?}");
    assert!(!plan.contains(&Action::Demote(DemoteMode::Graceful)));
    let due = crate::runner::iso8601(NOW_SECS - 1);
    let c = with_request(cluster(Some("pg-a")), Some("pg-a"), None, Some(&due));
    assert!(decided(&obs("pg-a", primary(5_000), Some(c)), &cfg()).contains(&Action::AskPeers));
    let missed = crate::runner::iso8601(NOW_SECS - 3_600);
    let c = with_request(cluster(Some("pg-a")), Some("pg-a"), None, Some(&missed));
    assert!(decided(&obs("pg-a", primary(5_000), Some(c)), &cfg())
        .contains(&Action::ClearFailover { version: 7 }));
}

#[test]
fn new_leader_drops_the_fulfilled_or_stale_request() {
    let fulfilled = with_request(cluster(Some("pg-b")), Some("pg-a"), Some("pg-b"), None);
    let o = obs("pg-b", primary(5_000), Some(fulfilled));
    assert!(decided(&o, &cfg()).contains(&Action::ClearFailover { version: 7 }));
    let stale = with_request(cluster(Some("pg-c")), Some("pg-a"), Some("pg-b"), None);
    let o = obs("pg-c", primary(5_000), Some(stale));
    assert!(decided(&o, &cfg()).contains(&Action::ClearFailover { version: 7 }));
}

#[test]
fn candidate_takes_over_at_once_when_it_holds_all_the_wal() {
    let c = with_request(cluster(None), Some("pg-a"), Some("pg-b"), None);
    let o = obs("pg-b", replica(5_000), Some(c));
    assert_eq!(
        decided(&o, &cfg()),
        vec![
            Action::AcquireLeader,
            Action::Promote,
            Action::ClearFailover { version: 7 },
            slots(&["pg_a", "pg_c"]),
        ]
    );
}

#[test]
fn switchover_candidate_missing_wal_does_not_take_over() {
    // The old leader published where its clean stop ended the WAL: 5_000.
    let c = with_request(cluster(None), Some("pg-a"), Some("pg-b"), None);
    let o = obs("pg-b", replica(4_999), Some(c));
    assert_eq!(decided(&o, &cfg()), vec![Action::Wait]);
    assert!(reason_of(&o, &cfg()).contains("short"));
}

#[test]
fn others_leave_the_key_to_an_able_candidate() {
    let c = with_request(cluster(None), Some("pg-a"), Some("pg-b"), None);
    let mut o = obs("pg-c", replica(5_000), Some(c));
    assert_eq!(decided(&o, &cfg()), vec![Action::AskPeers]);
    o.peers = Some(vec![peer("pg-a", 5_000), peer("pg-b", 5_000)]);
    assert_eq!(decided(&o, &cfg()), vec![Action::Wait]);
}

#[test]
fn others_race_when_the_candidate_cannot_take_over() {
    let c = with_request(cluster(None), Some("pg-a"), Some("pg-b"), None);
    let mut o = obs("pg-c", replica(5_000), Some(c));
    o.peers = Some(vec![
        peer("pg-a", 5_000),
        PeerStatus {
            wal_lsn: None,
            ..peer("pg-b", 0)
        },
    ]);
    let plan = decided(&o, &cfg());
    assert_eq!(plan[..2], [Action::AcquireLeader, Action::Promote]);
}

#[test]
fn the_old_leader_takes_the_key_back_only_when_nobody_else_can() {
    let c = with_request(cluster(None), Some("pg-a"), Some("pg-b"), None);
    let mut o = obs("pg-a", replica(5_000), Some(c));
    o.peers = Some(vec![peer("pg-b", 4_000), peer("pg-c", 5_000)]);
    assert_eq!(decided(&o, &cfg()), vec![Action::Wait]);
    // Answers may be a loop old: within a ttl of the key going away, a member that
    // answers is trusted to judge its own position.
    o.peers = Some(vec![peer("pg-b", 4_000), peer("pg-c", 4_000)]);
    o.memory.no_leader_since = Some(o.now - 1_000);
    assert_eq!(decided(&o, &cfg()), vec![Action::Wait]);
    o.memory.no_leader_since = Some(o.now - cfg().ttl - 1);
    let plan = decided(&o, &cfg());
    assert_eq!(
        plan[..3],
        [
            Action::AcquireLeader,
            Action::Promote,
            Action::ClearFailover { version: 7 }
        ]
    );
}

#[test]
fn others_wait_a_ttl_for_a_candidate_whose_answer_looks_short() {
    let c = with_request(cluster(None), Some("pg-a"), Some("pg-b"), None);
    let mut o = obs("pg-c", replica(5_000), Some(c));
    o.peers = Some(vec![peer("pg-a", 5_000), peer("pg-b", 4_000)]);
    o.memory.no_leader_since = Some(o.now - 1_000);
    assert_eq!(decided(&o, &cfg()), vec![Action::Wait]);
    o.memory.no_leader_since = Some(o.now - cfg().ttl - 1);
    assert_eq!(
        decided(&o, &cfg())[..2],
        [Action::AcquireLeader, Action::Promote]
    );
}

#[test]
fn memory_tracks_since_when_there_is_no_leader() {
    let mut m = AgentMemory::default();
    m.saw_cluster(&cluster(None), 10);
    m.saw_cluster(&cluster(None), 20);
    assert_eq!(m.no_leader_since, Some(10));
    m.saw_cluster(&cluster(Some("pg-a")), 30);
    assert_eq!(m.no_leader_since, None);
}

#[test]
fn failover_candidate_takes_over_with_no_leader_within_the_lag_limit() {
    let c = with_request(cluster(None), None, Some("pg-c"), None);
    let o = obs("pg-c", replica(4_500), Some(c.clone()));
    assert_eq!(
        decided(&o, &cfg())[..2],
        [Action::AcquireLeader, Action::Promote]
    );
    let o = obs("pg-c", replica(1_000), Some(c));
    assert_eq!(decided(&o, &cfg()), vec![Action::Wait]);
}

#[test]
fn leader_makes_a_failover_request_naming_another_member_its_switchover() {
    let c = with_request(cluster(Some("pg-a")), None, Some("pg-c"), None);
    let o = obs("pg-a", primary(5_000), Some(c));
    assert_eq!(
        decided(&o, &cfg()),
        vec![Action::RenewLeader, Action::AdoptRequest { version: 7 }]
    );
}

#[test]
fn cleanly_stopped_old_primary_follows_the_new_leader_without_rewind() {
    let mut c = cluster(Some("pg-b"));
    c.history = vec![history(1, 5_100, "pg-b")];
    c.members[1].data.timeline = Some(2);
    let mut local = stopped(DataDirState::Primary);
    local.shut_down_cleanly = true;
    local.wal_lsn = Some(5_000);
    let o = obs("pg-a", local.clone(), Some(c.clone()));
    assert_eq!(
        decided(&o, &cfg()),
        vec![Action::StartReplica {
            upstream: Some("pg-b".into())
        }]
    );
    // The new leader's timeline began at or before our shutdown checkpoint: we diverged.
    c.history = vec![history(1, 5_000, "pg-b")];
    let o = obs("pg-a", local, Some(c));
    assert_eq!(
        decided(&o, &cfg()),
        vec![Action::Rewind {
            from: "pg-b".into()
        }]
    );
}

#[test]
fn synchronous_mode_allows_only_the_sync_standby_to_take_over_a_switchover() {
    let mut c = with_request(cluster(Some("pg-a")), Some("pg-a"), None, None);
    c.sync = Some(Versioned {
        value: pgherd_dcs::SyncState {
            leader: Some("pg-a".into()),
            sync_standby: Some("pg-c".into()),
            quorum: None,
        },
        version: 1,
    });
    let sync_cfg = HaConfig {
        synchronous_mode: SynchronousMode::On,
        ..cfg()
    };
    let local = primary_streaming_to(5_000, &[("pg-b", 5_000), ("pg-c", 4_900)]);
    let mut o = obs("pg-a", local, Some(c));
    o.peers = Some(vec![peer("pg-b", 5_000), peer("pg-c", 4_900)]);
    assert!(
        reason_of(&o, &sync_cfg).contains("pg-c"),
        "{}",
        reason_of(&o, &sync_cfg)
    );
}

// ----- operator requests to one member -----

fn requesting(mut o: Observation, request: MemberRequest) -> Observation {
    o.request = Some(request);
    o
}

#[test]
fn restart_of_the_primary_renews_then_restarts_in_place() {
    let o = requesting(
        obs("pg-a", primary(5_000), Some(cluster(Some("pg-a")))),
        MemberRequest::Restart,
    );
    assert_eq!(
        decided(&o, &cfg()),
        vec![Action::RenewLeader, Action::Restart { as_primary: true }]
    );
}

#[test]
fn restart_of_a_replica_keeps_it_a_replica_also_when_paused() {
    let paused = HaConfig {
        paused: true,
        ..cfg()
    };
    let o = requesting(
        obs("pg-b", replica(5_000), Some(cluster(Some("pg-a")))),
        MemberRequest::Restart,
    );
    assert_eq!(
        decided(&o, &paused),
        vec![Action::Restart { as_primary: false }]
    );
}

#[test]
fn reinit_clones_a_replica_afresh_and_is_refused_on_the_leader() {
    let o = requesting(
        obs("pg-b", replica(5_000), Some(cluster(Some("pg-a")))),
        MemberRequest::Reinitialize,
    );
    assert_eq!(
        decided(&o, &cfg()),
        vec![Action::Reinitialize {
            from: "pg-a".into()
        }]
    );
    let o = requesting(
        obs("pg-a", primary(5_000), Some(cluster(Some("pg-a")))),
        MemberRequest::Reinitialize,
    );
    assert_eq!(decided(&o, &cfg()), vec![Action::Wait]);
    assert!(reason_of(&o, &cfg()).contains("leader key"));
    let o = requesting(
        obs("pg-b", replica(5_000), Some(cluster(None))),
        MemberRequest::Reinitialize,
    );
    assert!(reason_of(&o, &cfg()).contains("no leader"));
}

#[test]
fn requests_wait_for_the_dcs_and_for_a_data_directory() {
    let o = requesting(obs("pg-b", replica(5_000), None), MemberRequest::Reload);
    assert_eq!(decided(&o, &cfg()), vec![Action::Wait]);
    let o = requesting(
        obs("pg-b", empty(), Some(cluster(Some("pg-a")))),
        MemberRequest::Restart,
    );
    assert_eq!(decided(&o, &cfg()), vec![Action::Wait]);
    let o = requesting(
        obs("pg-b", replica(5_000), Some(cluster(Some("pg-a")))),
        MemberRequest::Reload,
    );
    assert_eq!(decided(&o, &cfg()), vec![Action::Reload]);
}

// ----- a crashed primary (agent alive) -----

#[test]
fn crashed_primary_restarts_in_place_until_primary_start_timeout() {
    let mut o = obs(
        "pg-a",
        stopped(DataDirState::Primary),
        Some(cluster(Some("pg-a"))),
    );
    o.memory.primary_down_since = Some(o.now - 60_000);
    assert_eq!(
        decided(&o, &cfg()),
        [Action::RenewLeader, Action::StartPrimary]
    );
    o.memory.primary_down_since = Some(o.now - 300_000);
    assert_eq!(decided(&o, &cfg()), [Action::ReleaseLeader]);
    assert!(reason_of(&o, &cfg()).contains("primary_start_timeout"));
}

#[test]
fn with_primary_start_timeout_zero_a_crashed_primary_releases_the_key_at_once() {
    let mut o = obs(
        "pg-a",
        stopped(DataDirState::Primary),
        Some(cluster(Some("pg-a"))),
    );
    o.memory.primary_down_since = Some(o.now);
    let at_once = HaConfig {
        primary_start_timeout: 0,
        failsafe_mode: false,
        ..cfg()
    };
    assert_eq!(decided(&o, &at_once), [Action::ReleaseLeader]);
}

#[test]
fn a_member_that_released_the_key_stays_stopped_for_a_ttl() {
    let mut o = obs("pg-a", stopped(DataDirState::Primary), Some(cluster(None)));
    o.memory.released_leader_at = Some(o.now - 1_000);
    assert_eq!(decided(&o, &cfg()), [Action::Wait]);
    o.memory.released_leader_at = Some(o.now - cfg().ttl);
    assert_eq!(
        decided(&o, &cfg()),
        [Action::StartReplica { upstream: None }]
    );
    // Once another member leads, it follows it at once.
    let mut o = obs(
        "pg-a",
        stopped(DataDirState::Standby),
        Some(cluster(Some("pg-b"))),
    );
    o.memory.released_leader_at = Some(o.now - 1_000);
    assert_eq!(
        decided(&o, &cfg()),
        [Action::StartReplica {
            upstream: Some("pg-b".into())
        }]
    );
}

#[test]
fn a_leader_whose_promotion_keeps_failing_releases_the_key() {
    // The chaos run's case: the new leader's disk is full, so `pg_ctl promote` fails and
    // PostgreSQL crashes each time; the key must not stay with it for ever.
    let mut o = obs("pg-a", replica(100), Some(cluster(Some("pg-a"))));
    o.memory.failed_promotions = MAX_FAILED_PROMOTIONS - 1;
    assert_eq!(
        decided(&o, &cfg())[..2],
        [Action::RenewLeader, Action::Promote],
        "one more attempt first"
    );
    o.memory.failed_promotions = MAX_FAILED_PROMOTIONS;
    assert_eq!(decided(&o, &cfg()), [Action::ReleaseLeader]);
    assert!(reason_of(&o, &cfg()).contains("promoting PostgreSQL failed 3 times"));
    // Also when the failed promotion took PostgreSQL down with it.
    o.local = stopped(DataDirState::Standby);
    assert_eq!(decided(&o, &cfg()), [Action::ReleaseLeader]);
    // A primary that runs is not given up, nor is anything decided in maintenance mode.
    o.local = primary(100);
    assert_eq!(decided(&o, &cfg())[0], Action::RenewLeader);
    o.local = replica(100);
    let paused = HaConfig {
        paused: true,
        ..cfg()
    };
    assert!(!decided(&o, &paused).contains(&Action::ReleaseLeader));
    // A member that does not lead has nothing to give up.
    let mut o = obs("pg-a", replica(100), Some(cluster(Some("pg-b"))));
    o.memory.failed_promotions = MAX_FAILED_PROMOTIONS;
    assert!(!decided(&o, &cfg()).contains(&Action::ReleaseLeader));
}

#[test]
fn a_replica_drops_the_slots_it_kept_as_a_primary() {
    // A demoted primary keeps its slots; on a replica nobody advances them, so they would
    // hold its WAL until the disk fills.
    let mut local = following(replica(100), "pg-b");
    local.inactive_slots = vec!["pg_c".into()];
    let o = obs("pg-a", local, Some(cluster(Some("pg-b"))));
    assert_eq!(decided(&o, &cfg()), [Action::EnsureSlots(Vec::new())]);
    assert!(reason_of(&o, &cfg()).contains("pg_c"));
    // Without use_slots the slots are the operator's.
    let theirs = HaConfig {
        use_slots: false,
        ..cfg()
    };
    assert_eq!(decided(&o, &theirs), [Action::Wait]);
}

#[test]
fn memory_tracks_since_when_the_leaders_postgres_is_down() {
    let mut m = AgentMemory::default();
    m.saw_own_postgres(true, 10);
    m.saw_own_postgres(true, 20);
    assert_eq!(m.primary_down_since, Some(10));
    m.saw_own_postgres(false, 30);
    assert_eq!(m.primary_down_since, None);
}

// ----- synchronous replication -----

fn sync_cfg(strict: bool) -> HaConfig {
    HaConfig {
        synchronous_mode: SynchronousMode::On,
        synchronous_mode_strict: strict,
        ..cfg()
    }
}

fn with_sync_key(mut c: Cluster, leader: &str, standbys: &[&str]) -> Cluster {
    c.sync = Some(Versioned {
        value: pgherd_dcs::SyncState {
            leader: Some(leader.into()),
            sync_standby: (!standbys.is_empty()).then(|| standbys.join(",")),
            quorum: None,
        },
        version: 3,
    });
    c
}

fn sync_standby(name: &str, flushed: u64, synchronous: bool) -> Standby {
    Standby {
        name: name.into(),
        streaming: true,
        flush_lsn: Some(flushed),
        synchronous,
    }
}

fn first(names: &[&str]) -> SyncSetting {
    SyncSetting {
        count: names.len(),
        names: names.iter().map(|n| n.to_string()).collect(),
        quorum: false,
    }
}

/// The leader's plan without its heartbeat.
fn sync_steps(o: &Observation, cfg: &HaConfig) -> Vec<Action> {
    decided(o, cfg)
        .into_iter()
        .filter(|a| !matches!(a, Action::RenewLeader | Action::EnsureSlots(_)))
        .collect()
}

#[test]
fn a_new_leader_takes_the_sync_key_before_anything_else() {
    let c = with_sync_key(cluster(Some("pg-a")), "pg-z", &["pg-a"]);
    let o = obs(
        "pg-a",
        primary_streaming_to(5_000, &[("pg-b", 5_000)]),
        Some(c),
    );
    assert_eq!(
        sync_steps(&o, &sync_cfg(false)),
        [Action::SetSyncKey {
            standbys: vec![],
            quorum: 0,
            version: 3
        }]
    );
}

#[test]
fn a_standby_becomes_synchronous_in_postgresql_first_then_in_the_key() {
    let c = with_sync_key(cluster(Some("pg-a")), "pg-a", &[]);
    let mut local = primary(5_000);
    local.standbys = vec![
        sync_standby("pg-b", 5_000, false),
        sync_standby("pg-c", 5_000, false),
    ];
    let o = obs("pg-a", local.clone(), Some(c.clone()));
    assert_eq!(
        sync_steps(&o, &sync_cfg(false)),
        [Action::SetSyncStandbys(Some(first(&["pg-b"])))]
    );
    // PostgreSQL applied it and reports pg-b as sync, but pg-b has not flushed what was
    // written before: not yet in the key.
    local.sync_setting = Some(first(&["pg-b"]));
    local.standbys[0].synchronous = true;
    let mut o = obs("pg-a", local.clone(), Some(c.clone()));
    o.memory.sync_set_at_lsn = Some(5_001);
    assert_eq!(sync_steps(&o, &sync_cfg(false)), Vec::<Action>::new());
    o.memory.sync_set_at_lsn = Some(5_000);
    assert_eq!(
        sync_steps(&o, &sync_cfg(false)),
        [Action::SetSyncKey {
            standbys: vec!["pg-b".into()],
            quorum: 0,
            version: 3
        }]
    );
}

#[test]
fn a_lost_sync_standby_leaves_the_key_first_then_postgresql() {
    let c = with_sync_key(cluster(Some("pg-a")), "pg-a", &["pg-b"]);
    let mut local = primary(5_000);
    local.sync_setting = Some(first(&["pg-b"]));
    let o = obs("pg-a", local.clone(), Some(c));
    assert_eq!(
        sync_steps(&o, &sync_cfg(false)),
        [Action::SetSyncKey {
            standbys: vec![],
            quorum: 0,
            version: 3
        }]
    );
    let c = with_sync_key(cluster(Some("pg-a")), "pg-a", &[]);
    let o = obs("pg-a", local.clone(), Some(c.clone()));
    assert_eq!(
        sync_steps(&o, &sync_cfg(false)),
        [Action::SetSyncStandbys(None)],
        "not strict: commits go on without a synchronous standby"
    );
    assert_eq!(
        sync_steps(&o, &sync_cfg(true)),
        [Action::SetSyncStandbys(Some(SyncSetting::any_standby()))],
        "strict: commits wait"
    );
}

#[test]
fn nosync_members_and_the_node_count_shape_the_choice() {
    let mut c = with_sync_key(cluster(Some("pg-a")), "pg-a", &[]);
    c.members[1].data.tags.nosync = true;
    let mut local = primary(5_000);
    local.standbys = vec![
        sync_standby("pg-b", 5_000, false),
        sync_standby("pg-c", 4_000, false),
    ];
    let o = obs("pg-a", local.clone(), Some(c));
    assert_eq!(
        sync_steps(&o, &sync_cfg(false)),
        [Action::SetSyncStandbys(Some(first(&["pg-c"])))]
    );
    let two = HaConfig {
        synchronous_node_count: 2,
        ..sync_cfg(false)
    };
    let c = with_sync_key(cluster(Some("pg-a")), "pg-a", &[]);
    let o = obs("pg-a", local, Some(c));
    assert_eq!(
        sync_steps(&o, &two),
        [Action::SetSyncStandbys(Some(first(&["pg-b", "pg-c"])))]
    );
}

#[test]
fn turning_synchronous_mode_off_empties_the_key_then_the_setting() {
    let c = with_sync_key(cluster(Some("pg-a")), "pg-a", &["pg-b"]);
    let mut local = primary(5_000);
    local.sync_setting = Some(first(&["pg-b"]));
    let o = obs("pg-a", local.clone(), Some(c));
    assert_eq!(
        sync_steps(&o, &cfg()),
        [Action::SetSyncKey {
            standbys: vec![],
            quorum: 0,
            version: 3
        }]
    );
    let c = with_sync_key(cluster(Some("pg-a")), "pg-a", &[]);
    let o = obs("pg-a", local, Some(c));
    assert_eq!(sync_steps(&o, &cfg()), [Action::SetSyncStandbys(None)]);
}

#[test]
fn only_a_synchronous_standby_or_the_old_leader_may_take_over() {
    let c = with_sync_key(cluster(None), "pg-a", &["pg-b"]);
    let o = obs("pg-c", replica(5_000), Some(c.clone()));
    assert_eq!(decided(&o, &sync_cfg(false)), [Action::Wait]);
    assert!(reason_of(&o, &sync_cfg(false)).contains("not a synchronous standby"));
    let o = obs("pg-b", replica(5_000), Some(c.clone()));
    assert_eq!(decided(&o, &sync_cfg(false)), [Action::AskPeers]);
    let o = obs("pg-a", replica(5_000), Some(c));
    assert_eq!(decided(&o, &sync_cfg(false)), [Action::AskPeers]);
}

#[test]
fn a_vanished_members_slot_is_kept_for_member_slots_ttl() {
    let mut c = cluster(Some("pg-a"));
    c.members.retain(|m| m.name != "pg-c");
    let ten_minutes = HaConfig {
        member_slots_ttl: 600_000,
        ..cfg()
    };
    let mut o = obs("pg-a", primary(5_000), Some(c));
    o.memory.members_seen.insert("pg-c".into(), o.now - 60_000);
    assert!(decided(&o, &ten_minutes).contains(&slots(&["pg_b", "pg_c"])));
    o.memory.members_seen.insert("pg-c".into(), o.now - 600_000);
    assert!(decided(&o, &ten_minutes).contains(&slots(&["pg_b"])));
}

// ----- quorum commit -----

fn quorum_cfg() -> HaConfig {
    HaConfig {
        synchronous_mode: SynchronousMode::Quorum,
        ..cfg()
    }
}

/// The leaderless cluster after pg-a died, with its key: any `quorum + 1` of `voters`.
fn with_quorum_key(voters: &[&str], quorum: u32) -> Cluster {
    let mut c = with_sync_key(cluster(None), "pg-a", voters);
    c.sync.as_mut().unwrap().value.quorum = Some(quorum);
    c
}

#[test]
fn a_quorum_standby_takes_over_after_seeing_enough_voters_not_ahead() {
    let c = with_quorum_key(&["pg-b", "pg-c"], 1);
    let mut o = obs("pg-b", replica(5_000), Some(c));
    o.peers = Some(vec![peer("pg-a", 0), peer("pg-c", 4_900)]);
    o.peers.as_mut().unwrap()[0].wal_lsn = None; // the old primary is gone
    assert_eq!(decided(&o, &quorum_cfg())[0], Action::AcquireLeader);
    // pg-c does not answer: pg-b alone is not `quorum + 1` voters.
    o.peers = Some(vec![PeerStatus {
        wal_lsn: None,
        ..peer("pg-c", 0)
    }]);
    assert_eq!(decided(&o, &quorum_cfg()), [Action::Wait]);
    assert!(reason_of(&o, &quorum_cfg()).contains("quorum commit"));
}

#[test]
fn a_member_outside_the_key_needs_quorum_plus_one_voters() {
    // pg-c is not a voter: it must see `quorum + 1` = 1 voter, pg-b, not ahead of it.
    let c = with_quorum_key(&["pg-b"], 0);
    let mut o = obs("pg-c", replica(5_000), Some(c));
    o.peers = Some(vec![peer("pg-b", 4_000)]);
    assert_eq!(decided(&o, &quorum_cfg())[0], Action::AcquireLeader);
    o.peers = Some(vec![PeerStatus {
        wal_lsn: None,
        ..peer("pg-b", 0)
    }]);
    assert_eq!(decided(&o, &quorum_cfg()), [Action::Wait]);
}

#[test]
fn a_key_with_no_voters_lets_only_its_leader_or_one_who_saw_it_take_over() {
    let c = with_quorum_key(&[], 0);
    let mut o = obs("pg-b", replica(5_000), Some(c));
    o.peers = Some(vec![peer("pg-c", 4_000)]);
    assert_eq!(decided(&o, &quorum_cfg()), [Action::Wait]);
    // The old leader answers (back as a replica) and is not ahead: we hold its writes.
    // (At our position it would go first: it holds them all, and its name is lower.)
    o.peers = Some(vec![peer("pg-a", 4_900), peer("pg-c", 4_000)]);
    assert_eq!(decided(&o, &quorum_cfg())[0], Action::AcquireLeader);
}

#[test]
fn a_peer_ahead_that_reaches_the_quorum_holds_us_back() {
    // pg-c is ahead and no voter; it sees the only voter, pg-b, not ahead of it, so it
    // may take over, and pg-b waits for it.
    let c = with_quorum_key(&["pg-b"], 0);
    let mut o = obs("pg-b", replica(5_000), Some(c));
    o.peers = Some(vec![peer("pg-c", 5_100)]);
    assert_eq!(decided(&o, &quorum_cfg()), [Action::Wait]);
    assert!(reason_of(&o, &quorum_cfg()).contains("not the healthiest"));
}

#[test]
fn the_quorum_leader_moves_its_setting_before_its_key() {
    let mut c = with_sync_key(cluster(Some("pg-a")), "pg-a", &["pg-b", "pg-c"]);
    c.sync.as_mut().unwrap().value.quorum = Some(1);
    let mut local = primary_streaming_to(5_000, &[("pg-b", 5_000)]);
    local.sync_setting = SyncSetting::parse(r#"ANY 1 ("pg-b","pg-c")"#);
    let o = obs("pg-a", local, Some(c));
    // pg-c stopped streaming: commits first wait for pg-b alone, the key follows later.
    assert_eq!(
        sync_steps(&o, &quorum_cfg()),
        [Action::SetSyncStandbys(SyncSetting::parse(
            r#"ANY 1 ("pg-b")"#
        ))]
    );
}

// ----- fencing at the poolers -----

fn pooler(id: &str, leader: Option<&str>) -> pgherd_dcs::Pooler {
    pgherd_dcs::Pooler {
        id: id.into(),
        state: pgherd_dcs::PoolerState {
            leader: leader.map(str::to_string),
            routes_to: leader.map(str::to_string),
            drained_for: None,
        },
    }
}

#[test]
fn a_new_leader_promotes_only_once_every_pooler_read_it_as_the_leader() {
    let mut c = cluster(Some("pg-b"));
    c.poolers = vec![pooler("p1", Some("pg-b")), pooler("p2", Some("pg-a"))];
    let o = obs("pg-b", replica(5_000), Some(c.clone()));
    assert_eq!(decided(&o, &cfg()), [Action::RenewLeader, Action::Wait]);
    assert!(reason_of(&o, &cfg()).contains("[\"p2\"]"));
    c.poolers[1] = pooler("p2", Some("pg-b"));
    let o = obs("pg-b", replica(5_000), Some(c));
    assert_eq!(
        decided(&o, &cfg())[..2],
        [Action::RenewLeader, Action::Promote]
    );
}

#[test]
fn a_switchover_waits_a_bounded_time_for_the_poolers_to_drain() {
    let mut c = cluster(Some("pg-a"));
    c.failover = Some(Versioned {
        value: FailoverRequest {
            leader: Some("pg-a".into()),
            candidate: Some("pg-b".into()),
            scheduled_at: None,
        },
        version: 7,
    });
    c.poolers = vec![pooler("p1", Some("pg-a"))];
    let mut o = obs(
        "pg-a",
        primary_streaming_to(5_000, &[("pg-b", 5_000)]),
        Some(c.clone()),
    );
    o.memory.request_seen = Some((7, o.now - 1_000));
    let steps = decided(&o, &cfg());
    assert!(steps.contains(&Action::Wait), "{steps:?}");
    assert!(reason_of(&o, &cfg()).contains("still finish transactions"));
    // Drained: on with the switchover.
    c.poolers[0].state.drained_for = Some(7);
    let mut drained = obs(
        "pg-a",
        primary_streaming_to(5_000, &[("pg-b", 5_000)]),
        Some(c),
    );
    drained.memory.request_seen = Some((7, drained.now - 1_000));
    assert!(decided(&drained, &cfg()).contains(&Action::AskPeers));
    // Not drained after the bound: on anyway.
    o.memory.request_seen = Some((7, o.now - 60_000));
    assert!(decided(&o, &cfg()).contains(&Action::AskPeers));
}

// Failsafe mode (Patroni's `failsafe_mode`).

fn failsafe_cfg() -> HaConfig {
    HaConfig {
        failsafe_mode: true,
        ..cfg()
    }
}

fn failsafe_key(names: &[&str]) -> std::collections::BTreeMap<String, String> {
    names
        .iter()
        .map(|n| (n.to_string(), format!("http://{n}:8008/patroni")))
        .collect()
}

/// The leader `pg-a` without the DCS, having last read a failsafe key naming everyone.
fn failsafe_primary_without_dcs() -> Observation {
    let mut o = obs("pg-a", primary(5_000), None);
    o.memory.failsafe_members = Some(failsafe_key(&["pg-a", "pg-b", "pg-c"]));
    o.memory.last_leader_renewal = Some(o.now - 2_000);
    o
}

#[test]
fn failsafe_primary_without_dcs_asks_the_members_first() {
    let o = failsafe_primary_without_dcs();
    assert_eq!(decided(&o, &failsafe_cfg()), vec![Action::AskFailsafe]);
}

#[test]
fn failsafe_primary_stays_primary_when_every_member_confirms_it() {
    let mut o = failsafe_primary_without_dcs();
    o.failsafe = Some(FailsafeRound::Confirmed);
    assert_eq!(decided(&o, &failsafe_cfg()), vec![Action::Wait]);
    assert!(reason_of(&o, &failsafe_cfg()).contains("continuing as the primary"));
}

#[test]
fn failsafe_primary_demotes_when_a_member_does_not_confirm_it() {
    let mut o = failsafe_primary_without_dcs();
    o.failsafe = Some(FailsafeRound::Refused("pg-c: connection refused".into()));
    assert_eq!(
        decided(&o, &failsafe_cfg()),
        vec![Action::Demote(DemoteMode::Offline)]
    );
    assert!(reason_of(&o, &failsafe_cfg()).contains("pg-c: connection refused"));
}

#[test]
fn failsafe_primary_not_named_in_the_key_demotes() {
    let mut o = failsafe_primary_without_dcs();
    o.memory.failsafe_members = Some(failsafe_key(&["pg-b", "pg-c"]));
    assert_eq!(
        decided(&o, &failsafe_cfg()),
        vec![Action::Demote(DemoteMode::Offline)]
    );
    o.memory.failsafe_members = None;
    assert_eq!(
        decided(&o, &failsafe_cfg()),
        vec![Action::Demote(DemoteMode::Offline)]
    );
}

#[test]
fn failsafe_cannot_extend_a_lease_that_already_lapsed() {
    let mut o = failsafe_primary_without_dcs();
    o.memory.last_leader_renewal = None;
    assert_eq!(
        decided(&o, &failsafe_cfg()),
        vec![Action::Demote(DemoteMode::Offline)]
    );
}

#[test]
fn without_failsafe_mode_the_primary_demotes_without_asking() {
    let o = failsafe_primary_without_dcs();
    assert_eq!(
        decided(&o, &cfg()),
        vec![Action::Demote(DemoteMode::Offline)]
    );
}

#[test]
fn leader_records_the_members_in_the_failsafe_key_once() {
    let mut c = cluster(Some("pg-a"));
    for m in &mut c.members {
        m.data.api_url = format!("http://{}:8008/patroni", m.name);
    }
    let o = obs("pg-a", primary(5_000), Some(c.clone()));
    let want = Action::SetFailsafe(failsafe_key(&["pg-a", "pg-b", "pg-c"]));
    assert!(decided(&o, &failsafe_cfg()).contains(&want));
    assert!(
        !decided(&o, &cfg()).contains(&want),
        "only in failsafe mode"
    );

    c.failsafe = Some(failsafe_key(&["pg-a", "pg-b", "pg-c"]));
    let o = obs("pg-a", primary(5_000), Some(c));
    let written = decided(&o, &failsafe_cfg());
    assert!(!written.iter().any(|a| matches!(a, Action::SetFailsafe(_))));
}

#[test]
fn replica_confirmed_to_by_a_failsafe_primary_does_not_race() {
    let mut o = obs("pg-b", replica(5_000), Some(cluster(None)));
    o.failsafe_heard = Some(("pg-a".into(), o.now - 1_000));
    assert_eq!(decided(&o, &failsafe_cfg()), vec![Action::Wait]);
    assert!(reason_of(&o, &failsafe_cfg()).contains("pg-a confirmed"));

    // A ttl later the promise has run out: the usual race.
    o.failsafe_heard = Some(("pg-a".into(), o.now - 30_000));
    assert_eq!(decided(&o, &failsafe_cfg()), vec![Action::AskPeers]);
}

#[test]
fn member_missing_from_the_failsafe_key_does_not_race() {
    let mut c = cluster(None);
    c.failsafe = Some(failsafe_key(&["pg-a", "pg-c"]));
    let o = obs("pg-b", replica(5_000), Some(c));
    assert_eq!(decided(&o, &failsafe_cfg()), vec![Action::Wait]);
    assert!(reason_of(&o, &failsafe_cfg()).contains("does not name us"));
    assert_eq!(decided(&o, &cfg()), vec![Action::AskPeers]);
}
