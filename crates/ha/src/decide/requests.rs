//! Rules for a pending switchover or failover (the `failover` key): what the leader does
//! with it, and who takes over when the leader has stepped down or is gone.

use super::quorum::{shortfall, shortfall_of, with_us};
use super::sync::not_synchronous;
use super::{
    act, cluster_timeline, healthier_peer, take_over, wait, Action, DemoteMode, HaConfig, Millis,
    Observation, PeerStatus, Reason, SynchronousMode,
};
use pgherd_dcs::{Cluster, FailoverRequest, Versioned};

/// "switchover" when the request names the leader to step down, else "failover".
pub(super) fn request_kind(req: &FailoverRequest) -> &'static str {
    if req.leader.is_some() {
        "switchover"
    } else {
        "failover"
    }
}

/// A switchover or failover may run this long after its scheduled time (the leader may
/// have been busy, or restarting); later it is dropped rather than surprising anyone.
const SCHEDULE_GRACE_SECS: i64 = 30;

/// The leader's step for a pending `failover` key: drop it when it is done or stale,
/// wait for its time, or — with the members' positions in hand — step down cleanly when
/// a member can take over.
pub(super) fn request_to_leader(
    obs: &Observation,
    cluster: &Cluster,
    cfg: &HaConfig,
    failover: &Versioned<FailoverRequest>,
) -> (Action, Reason) {
    let req = &failover.value;
    let kind = request_kind(req);
    let clear = |why: String| {
        act(
            Action::ClearFailover {
                version: failover.version,
            },
            why,
        )
    };
    match (req.leader.as_deref(), req.candidate.as_deref()) {
        (Some(l), _) if l != obs.me => {
            return clear(format!(
                "a switchover from {l} is pending, but we lead: dropping the stale request"
            ))
        }
        (_, Some(c)) if c == obs.me => {
            return clear(format!("the {kind} to us is done: dropping the request"))
        }
        (None, None) => return clear("a failover request names nobody: dropping it".into()),
        _ => {}
    }
    if obs.local.in_recovery {
        return act(
            Action::Wait,
            format!("a {kind} is pending: promoting first"),
        );
    }
    if req.leader.is_none() {
        return act(
            Action::AdoptRequest {
                version: failover.version,
            },
            "a failover to another member is requested while we lead: making it a switchover \
             from us, so the taker must hold all our WAL",
        );
    }
    if let Some(text) = &req.scheduled_at {
        let Some(at) = crate::manual::parse_time(text) else {
            return clear(format!(
                "cannot read the {kind}'s scheduled_at {text:?}: dropping the request"
            ));
        };
        let late = obs.wall_clock_secs - at;
        if late < 0 {
            return act(Action::Wait, format!("a {kind} is scheduled at {text}"));
        }
        let grace = SCHEDULE_GRACE_SECS + (cfg.loop_wait / 1000) as i64;
        if late > grace {
            return clear(format!(
                "the {kind} scheduled at {text} is {late} s overdue: dropping it"
            ));
        }
    }
    if let Some(why) = poolers_draining(obs, cluster, cfg, failover) {
        return act(Action::Wait, why);
    }
    let Some(peers) = obs.peers.as_deref() else {
        return act(
            Action::AskPeers,
            format!("a {kind} is requested: asking the members how far they got"),
        );
    };
    match switchover_target(obs, cluster, cfg, req, peers) {
        Ok(target) => act(
            Action::Demote(DemoteMode::Graceful),
            format!("{kind} to {target}: stopping cleanly and releasing the leader key"),
        ),
        Err(why) => clear(format!(
            "the {kind} is not possible: {why}; dropping the request"
        )),
    }
}

/// How long a switchover waits for the poolers to drain: a third of the ttl, at most 5 s.
/// A transaction still open after that gets an error, as it would without poolers.
fn drain_wait(cfg: &HaConfig) -> Millis {
    (cfg.ttl / 3).min(5_000)
}

/// Poolers hold new transactions during a switchover and report when none of theirs is
/// left on us; the leader stops cleanly only then, or after [`drain_wait`].
fn poolers_draining(
    obs: &Observation,
    cluster: &Cluster,
    cfg: &HaConfig,
    failover: &Versioned<FailoverRequest>,
) -> Option<String> {
    let pending: Vec<&str> = cluster
        .poolers
        .iter()
        .filter(|p| p.state.drained_for != Some(failover.version))
        .map(|p| p.id.as_str())
        .collect();
    if pending.is_empty() {
        return None;
    }
    let seen = obs
        .memory
        .request_seen
        .filter(|(v, _)| *v == failover.version)
        .map_or(obs.now, |(_, at)| at);
    let left = drain_wait(cfg).saturating_sub(obs.now.saturating_sub(seen));
    (left > 0).then(|| {
        format!(
            "switchover: poolers {pending:?} still finish transactions on us (waiting at most \
             {left} ms more)"
        )
    })
}

/// The member that will take over from us in a switchover: the named candidate or the
/// most advanced eligible member. Whether it streams from us and how far behind it is
/// come from our own pg_stat_replication, read this tick (the members' answers are as old
/// as their last loop, and under load that alone can look like megabytes of lag); the
/// answers tell whether it is alive and may lead.
fn switchover_target(
    obs: &Observation,
    cluster: &Cluster,
    cfg: &HaConfig,
    req: &FailoverRequest,
    peers: &[PeerStatus],
) -> Result<String, String> {
    let my_lsn = obs.local.wal_lsn.unwrap_or(0);
    let why_not = |p: &PeerStatus| -> Option<String> {
        if p.wal_lsn.is_none() {
            return Some("it did not answer".into());
        }
        if p.nofailover {
            return Some("it is tagged nofailover".into());
        }
        if p.is_primary {
            return Some("it runs a primary".into());
        }
        let Some(standby) = obs
            .local
            .standbys
            .iter()
            .find(|s| s.name == p.name && s.streaming)
        else {
            return Some("it does not stream from us".into());
        };
        let lag = my_lsn.saturating_sub(standby.flush_lsn.unwrap_or(0));
        if lag > cfg.maximum_lag_on_failover {
            return Some(format!(
                "it lags {lag} bytes, more than maximum_lag_on_failover {}",
                cfg.maximum_lag_on_failover
            ));
        }
        not_synchronous(cluster, cfg, &p.name)
    };
    if let Some(c) = req.candidate.as_deref() {
        let Some(p) = peers.iter().find(|p| p.name == c) else {
            return Err(format!("{c} is not a member"));
        };
        return match why_not(p) {
            None => Ok(c.to_string()),
            Some(why) => Err(format!("{c} cannot take over: {why}")),
        };
    }
    let flushed = |p: &&PeerStatus| {
        let standby = obs.local.standbys.iter().find(|s| s.name == p.name);
        standby.and_then(|s| s.flush_lsn)
    };
    let others = || peers.iter().filter(|p| p.name != obs.me);
    others()
        .filter(|p| why_not(p).is_none())
        .max_by_key(flushed)
        .map(|p| p.name.clone())
        .ok_or_else(|| {
            // Say why for each, so that the operator knows what to wait for.
            let reasons: Vec<String> = others()
                .filter_map(|p| why_not(p).map(|why| format!("{}: {why}", p.name)))
                .collect();
            match reasons.is_empty() {
                true => "no member can take over: no other member answered".into(),
                false => format!("no member can take over ({})", reasons.join("; ")),
            }
        })
}

/// No leader, and a switchover or failover is pending: the candidate takes over when it
/// holds everything it must; the others leave it the key while it can, and otherwise race
/// among themselves; the member that stepped down takes the key back only when nobody
/// else can take over.
pub(super) fn race_with_request(
    obs: &Observation,
    cluster: &Cluster,
    cfg: &HaConfig,
    failover: &Versioned<FailoverRequest>,
) -> Vec<(Action, Reason)> {
    let req = &failover.value;
    let kind = request_kind(req);
    let me = obs.me.as_str();
    if req.candidate.as_deref() == Some(me) {
        // The leader key is gone: the old leader stopped before releasing it, or its
        // lease ran out (and by then it had demoted itself). Nobody else writes.
        if let Some(not_yet) = quorum_gate(obs, cluster, cfg, kind) {
            return not_yet;
        }
        return match request_ineligibility(obs, cluster, cfg, req) {
            None => take_over(
                obs,
                cluster,
                cfg,
                format!("{kind} to us: taking the leader key"),
            ),
            Some(why) => wait(format!(
                "a {kind} to us is pending, but we may not take over: {why}"
            )),
        };
    }
    let Some(peers) = obs.peers.as_deref() else {
        return vec![act(
            Action::AskPeers,
            format!("a {kind} is pending and there is no leader: asking the members"),
        )];
    };
    if let Some(p) = peers.iter().find(|p| p.is_primary && p.name != me) {
        return wait(format!(
            "a {kind} is pending, but {} still runs a primary",
            p.name
        ));
    }
    // A peer's answer is as old as its last loop: right after the old leader's clean
    // stop it may not show the WAL the peer already holds. So for one ttl a peer that
    // answers and may lead gets the benefit of the doubt (it judges its own position
    // when it decides); after that only what it reports counts.
    let leaderless_for = obs
        .memory
        .no_leader_since
        .map_or(0, |since| obs.now.saturating_sub(since));
    let patient = leaderless_for < cfg.ttl;
    let everyone = with_us(obs, peers);
    let quorum_mode = cfg.synchronous_mode == SynchronousMode::Quorum;
    let able = |p: &PeerStatus| {
        p.wal_lsn.is_some()
            && !p.nofailover
            && not_synchronous(cluster, cfg, &p.name).is_none()
            && (patient
                || (position_ineligibility(p.wal_lsn, p.timeline, cluster, cfg, req).is_none()
                    && !(quorum_mode && shortfall_of(p, cluster, &everyone).is_some())))
    };
    if let Some(c) = req.candidate.as_deref() {
        if peers.iter().any(|p| p.name == c && able(p)) {
            return wait(format!(
                "{kind} to {c} in progress: leaving the leader key to it"
            ));
        }
    }
    let old_leader = req.leader.as_deref();
    if old_leader == Some(me) {
        if let Some(p) = peers.iter().find(|p| p.name != me && able(p)) {
            return wait(format!(
                "we stepped down for a {kind}: leaving the leader key to {}",
                p.name
            ));
        }
    }
    if let Some(why) = request_ineligibility(obs, cluster, cfg, req) {
        return wait(format!(
            "a {kind} is pending, but we may not take over: {why}"
        ));
    }
    // The old leader (when it is not us) takes part only as the last resort.
    let others: Vec<PeerStatus> = peers
        .iter()
        .filter(|p| Some(p.name.as_str()) != old_leader)
        .cloned()
        .collect();
    if let Some(why) = healthier_peer(obs, cluster, cfg, &others) {
        return wait(format!(
            "a {kind} is pending, but not the healthiest member: {why}"
        ));
    }
    if let Some(not_yet) = quorum_gate(obs, cluster, cfg, kind) {
        return not_yet;
    }
    let why = match (old_leader == Some(me), req.candidate.as_deref()) {
        (true, _) => format!("nobody else can take over after our {kind}: taking the key back"),
        (false, Some(c)) => format!("{c} cannot take over in the {kind}: racing for the key"),
        (false, None) => {
            format!("{kind} with no leader: we are the healthiest, racing for the key")
        }
    };
    take_over(obs, cluster, cfg, why)
}

/// In quorum mode a requested take-over, too, needs enough voters seen not ahead of us
/// (the old leader may have stopped without writing where its WAL ended).
fn quorum_gate(
    obs: &Observation,
    cluster: &Cluster,
    cfg: &HaConfig,
    kind: &str,
) -> Option<Vec<(Action, Reason)>> {
    if cfg.synchronous_mode != SynchronousMode::Quorum {
        return None;
    }
    let Some(peers) = obs.peers.as_deref() else {
        return Some(vec![act(
            Action::AskPeers,
            format!("a {kind} is pending in quorum mode: asking the synchronous standbys"),
        )]);
    };
    shortfall(obs, cluster, peers).map(|why| {
        wait(format!(
            "a {kind} is pending, but we may not take over: {why}"
        ))
    })
}

/// Why this member may not take over in the requested switchover or failover.
fn request_ineligibility(
    obs: &Observation,
    cluster: &Cluster,
    cfg: &HaConfig,
    req: &FailoverRequest,
) -> Option<String> {
    if obs.my_tags_nofailover {
        return Some("tagged nofailover".into());
    }
    if let Some(why) = not_synchronous(cluster, cfg, &obs.me) {
        return Some(why);
    }
    position_ineligibility(obs.local.wal_lsn, obs.local.timeline, cluster, cfg, req)
}

/// A switchover loses nothing: the taker must hold all WAL up to where the old leader's
/// clean stop ended it (the `status` optime). A failover allows maximum_lag_on_failover.
fn position_ineligibility(
    lsn: Option<u64>,
    timeline: Option<u32>,
    cluster: &Cluster,
    cfg: &HaConfig,
    req: &FailoverRequest,
) -> Option<String> {
    let Some(lsn) = lsn else {
        return Some("WAL position unknown".into());
    };
    let end = cluster.status.as_ref().map_or(0, |s| s.optime);
    let allowed = if req.leader.is_some() {
        0
    } else {
        cfg.maximum_lag_on_failover
    };
    let lag = end.saturating_sub(lsn);
    if lag > allowed {
        return Some(format!(
            "WAL position {lsn} is {lag} bytes short of the last primary position {end}"
        ));
    }
    match (timeline, cluster_timeline(cluster)) {
        (Some(mine), Some(newest)) if mine < newest => Some(format!(
            "timeline {mine} is behind the cluster's timeline {newest}"
        )),
        (None, _) => Some("timeline unknown".into()),
        _ => None,
    }
}
