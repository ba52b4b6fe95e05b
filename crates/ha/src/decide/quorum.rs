//! Quorum commit (`synchronous_mode: quorum`): commits wait for any `n` of the standbys
//! in `synchronous_standby_names = 'ANY n (…)'`, and the `sync` key promises who can
//! vouch for them: of its `voters` (`sync_standby`), any `quorum + 1` include one that
//! holds every acknowledged write. So a member may take over once it has seen `quorum + 1`
//! voters (itself included, if it is one) that are not ahead of it.
//!
//! The promise holds for a setting `ANY n (S)` when `n + quorum >= |S ∪ voters|`: then
//! every `n` standbys that acknowledged a commit share one with every `quorum + 1` voters.
//! The leader moves both towards "all streaming standbys, `n = synchronous_node_count`,
//! `quorum = |standbys| - n`" one step at a time, each step keeping the promise true:
//! - a setting changes only to one the current key still covers;
//! - a key changes only to one that covers the current setting, and that is either at
//!   least as strict as the old one (every `quorum + 1` of the new voters contain
//!   `quorum + 1` of the old) or written once every standby in the current setting has
//!   flushed the WAL from before that setting took effect, so that they hold every commit
//!   acknowledged under older settings.

use super::sync::key_members;
use super::{act, Action, HaConfig, Observation, PeerStatus, Reason, SyncSetting};
use pgherd_dcs::Cluster;
use std::collections::BTreeSet;

/// The `sync` key's promise: any `quorum + 1` of `voters` include a member holding every
/// acknowledged write. No voters: only the leader that wrote it holds them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Promise {
    pub voters: BTreeSet<String>,
    pub quorum: usize,
}

impl Promise {
    fn leader_only() -> Promise {
        Promise {
            voters: BTreeSet::new(),
            quorum: 0,
        }
    }

    /// Nobody but the leader may take over: no voters, or fewer than `quorum + 1`.
    fn nobody_else(&self) -> bool {
        self.quorum >= self.voters.len()
    }

    /// Commits acknowledged under `setting` (`None`: they wait for nobody) are covered.
    fn covers(&self, setting: Option<&SyncSetting>) -> bool {
        if self.nobody_else() {
            return true;
        }
        match setting {
            None => false,
            Some(s) if s.is_wildcard_or_foreign() => false,
            // `FIRST n (S)` acknowledges with n members of S too, so it counts as `ANY`.
            Some(s) => {
                let union: BTreeSet<&String> = s.names.iter().chain(&self.voters).collect();
                s.count >= 1 && s.count + self.quorum >= union.len()
            }
        }
    }

    /// Every `quorum + 1` of `new`'s voters contain `quorum + 1` of ours: whatever we
    /// promised, `new` promises too.
    fn implied_by(&self, new: &Promise) -> bool {
        let added = new.voters.difference(&self.voters).count();
        new.nobody_else() || new.quorum >= self.quorum + added
    }
}

/// One step of the leader towards the wanted state.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Step {
    Key(Promise),
    Setting(Option<SyncSetting>),
}

/// Where the leader wants to be: every standby that may be synchronous in both the
/// setting and the key, `ANY n` with `n = synchronous_node_count` (or fewer standbys).
/// With none: commits wait for nobody, or for any standby in strict mode.
pub(super) fn target(
    standbys: &BTreeSet<String>,
    node_count: usize,
    strict: bool,
) -> (Promise, Option<SyncSetting>) {
    if standbys.is_empty() {
        let setting = strict.then(SyncSetting::any_standby);
        return (Promise::leader_only(), setting);
    }
    let n = node_count.clamp(1, standbys.len());
    let promise = Promise {
        voters: standbys.clone(),
        quorum: standbys.len() - n,
    };
    let setting = SyncSetting {
        count: n,
        names: standbys.iter().cloned().collect(),
        quorum: true,
    };
    (promise, Some(setting))
}

/// The next safe step from `(promise, setting)` towards `want`, or `None` when there or
/// when waiting for the standbys to confirm. `confirmed`: every standby in `setting` has
/// flushed the WAL written before it took effect.
pub(super) fn next_step(
    promise: &Promise,
    setting: Option<&SyncSetting>,
    want: &(Promise, Option<SyncSetting>),
    confirmed: bool,
) -> Option<Step> {
    let (want_promise, want_setting) = want;
    if !promise.covers(setting) {
        // Not ours to trust (another writer, another mode): start from the safe end.
        return (*promise != Promise::leader_only()).then(|| Step::Key(Promise::leader_only()));
    }
    if promise != want_promise
        && want_promise.covers(setting)
        && (promise.implied_by(want_promise) || confirmed)
    {
        return Some(Step::Key(want_promise.clone()));
    }
    if setting != want_setting.as_ref() {
        if promise.covers(want_setting.as_ref()) {
            return Some(Step::Setting(want_setting.clone()));
        }
        // Widen the key first: add the new standbys and raise the quorum so that it
        // covers both the current setting and the wanted one.
        let voters: BTreeSet<String> = promise
            .voters
            .union(&want_promise.voters)
            .cloned()
            .collect();
        let added = voters.len() - promise.voters.len();
        let wanted_count = want_setting.as_ref().map_or(0, |s| s.count);
        let wider = Promise {
            quorum: (promise.quorum + added).max(voters.len().saturating_sub(wanted_count)),
            voters,
        };
        return (wider != *promise).then_some(Step::Key(wider));
    }
    None
}

/// The key as it stands, if we wrote it; else the strictest promise.
fn current_promise(cluster: &Cluster, me: &str) -> (Promise, bool) {
    let ours = cluster
        .sync
        .as_ref()
        .is_some_and(|k| k.value.leader.as_deref() == Some(me));
    if !ours {
        return (Promise::leader_only(), false);
    }
    let promise = Promise {
        voters: key_members(cluster).into_iter().collect(),
        quorum: key_quorum(cluster) as usize,
    };
    (promise, true)
}

/// The `quorum` field of the `sync` key (0 when absent).
pub fn key_quorum(cluster: &Cluster) -> u32 {
    cluster
        .sync
        .as_ref()
        .and_then(|k| k.value.quorum)
        .unwrap_or(0)
}

/// The leader's one step in quorum mode, if any.
pub(super) fn manage_quorum(
    obs: &Observation,
    cluster: &Cluster,
    cfg: &HaConfig,
    standbys: &[String],
) -> Option<(Action, Reason)> {
    let (promise, ours) = current_promise(cluster, &obs.me);
    let version = cluster.sync.as_ref().map_or(0, |k| k.version);
    let set_key = |p: Promise, why: String| {
        act(
            Action::SetSyncKey {
                standbys: p.voters.into_iter().collect(),
                quorum: p.quorum as u32,
                version,
            },
            why,
        )
    };
    if !ours {
        return Some(set_key(
            Promise::leader_only(),
            "we lead: taking over the sync key".into(),
        ));
    }
    let setting = obs.local.sync_setting.as_ref();
    let standbys: BTreeSet<String> = standbys.iter().cloned().collect();
    let want = target(
        &standbys,
        cfg.synchronous_node_count as usize,
        cfg.synchronous_mode_strict,
    );
    let confirmed = setting.is_none_or(|s| {
        s.names
            .iter()
            .all(|name| super::sync::confirmed_sync(obs, name))
    });
    match next_step(&promise, setting, &want, confirmed)? {
        Step::Key(p) => {
            let why = format!(
                "quorum commit: any {} of synchronous standbys {:?} hold every \
                 acknowledged write",
                p.quorum + 1,
                p.voters
            );
            Some(set_key(p, why))
        }
        Step::Setting(s) => {
            let why = match &s {
                Some(s) if s.names == ["*"] => "synchronous_mode_strict and no standby may be \
                    synchronous: commits wait for any standby"
                    .to_string(),
                Some(s) => format!("commits should wait for any {} of {:?}", s.count, s.names),
                None => "no standby may be synchronous: commits no longer wait (not strict)".into(),
            };
            Some(act(Action::SetSyncStandbys(s), why))
        }
    }
}

/// Why we may not take over in quorum mode yet: we must have seen `quorum + 1` of the
/// key's voters (ourselves included, if we are one) that are not ahead of us, unless we
/// are, or have seen, the leader that wrote the key not ahead of us. No key: nothing is
/// promised yet, nothing restricts.
pub(super) fn shortfall(
    obs: &Observation,
    cluster: &Cluster,
    peers: &[PeerStatus],
) -> Option<String> {
    let everyone = with_us(obs, peers);
    shortfall_of(everyone.last()?, cluster, &everyone)
}

/// The peers' answers and ours, ours last.
pub(super) fn with_us(obs: &Observation, peers: &[PeerStatus]) -> Vec<PeerStatus> {
    let me = PeerStatus {
        name: obs.me.clone(),
        wal_lsn: obs.local.wal_lsn,
        timeline: obs.local.timeline,
        nofailover: obs.my_tags_nofailover,
        is_primary: false,
    };
    let others = peers.iter().filter(|p| p.name != obs.me);
    others.cloned().chain([me]).collect()
}

/// The same judgement for `who`, from the positions in `everyone` (who included): used
/// to tell whether a peer ahead of us could take over, or blocks nobody.
pub(super) fn shortfall_of(
    who: &PeerStatus,
    cluster: &Cluster,
    everyone: &[PeerStatus],
) -> Option<String> {
    let key = cluster.sync.as_ref()?;
    let leader = key.value.leader.as_deref()?;
    let lsn = who.wal_lsn.unwrap_or(0);
    let timeline = who.timeline.unwrap_or(0);
    let not_ahead = |name: &str| {
        name == who.name
            || everyone.iter().any(|p| {
                p.name == name
                    && !p.is_primary
                    && p.wal_lsn.is_some_and(|l| l <= lsn)
                    && p.timeline.is_none_or(|t| t <= timeline)
            })
    };
    // The leader that wrote the key holds every write it acknowledged: if it is seen not
    // ahead (after a clean switchover, or back up as a replica), so are we.
    if not_ahead(leader) {
        return None;
    }
    let needed = key_quorum(cluster) as usize + 1;
    let voters = key_members(cluster);
    let seen: Vec<&String> = voters.iter().filter(|n| not_ahead(n)).collect();
    (seen.len() < needed).then(|| {
        format!(
            "quorum commit: {needed} of the synchronous standbys {voters:?} must be seen not \
             ahead of {}, only {seen:?} are",
            who.name
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn any_of(n: usize, list: &[&str]) -> Option<SyncSetting> {
        Some(SyncSetting {
            count: n,
            names: list.iter().map(|s| s.to_string()).collect(),
            quorum: true,
        })
    }

    fn promise(list: &[&str], quorum: usize) -> Promise {
        Promise {
            voters: names(list),
            quorum,
        }
    }

    /// Walk from a state to the target, confirming every time it waits; every state on
    /// the way keeps the promise.
    fn walk(mut p: Promise, mut s: Option<SyncSetting>, want: &(Promise, Option<SyncSetting>)) {
        for _ in 0..8 {
            assert!(p.covers(s.as_ref()), "{p:?} does not cover {s:?}");
            let step = next_step(&p, s.as_ref(), want, false)
                .or_else(|| next_step(&p, s.as_ref(), want, true));
            match step {
                Some(Step::Key(new)) => {
                    assert!(new.covers(s.as_ref()), "{new:?} written under {s:?}");
                    p = new;
                }
                Some(Step::Setting(new)) => {
                    assert!(p.covers(new.as_ref()), "{new:?} under key {p:?}");
                    s = new;
                }
                None => {
                    assert_eq!((&p, &s), (&want.0, &want.1));
                    return;
                }
            }
        }
        panic!("no convergence: at {p:?} {s:?}, want {want:?}");
    }

    #[test]
    fn a_new_leader_adds_its_standbys_setting_first() {
        let want = target(&names(&["b", "c"]), 1, false);
        assert_eq!(want.0, promise(&["b", "c"], 1));
        let start = Promise::leader_only();
        assert_eq!(
            next_step(&start, None, &want, false),
            Some(Step::Setting(any_of(1, &["b", "c"])))
        );
        // The key names them only once they hold the WAL from before.
        let set = any_of(1, &["b", "c"]);
        assert_eq!(next_step(&start, set.as_ref(), &want, false), None);
        assert_eq!(
            next_step(&start, set.as_ref(), &want, true),
            Some(Step::Key(promise(&["b", "c"], 1)))
        );
    }

    #[test]
    fn a_lost_standby_leaves_the_setting_before_the_key() {
        let want = target(&names(&["b"]), 1, false);
        let key = promise(&["b", "c"], 1);
        assert_eq!(
            next_step(&key, any_of(1, &["b", "c"]).as_ref(), &want, true),
            Some(Step::Setting(any_of(1, &["b"])))
        );
        walk(key, any_of(1, &["b", "c"]), &want);
    }

    #[test]
    fn a_new_standby_joins_the_key_first_with_a_higher_quorum() {
        let want = target(&names(&["b", "c"]), 1, false);
        assert_eq!(
            next_step(
                &promise(&["b"], 0),
                any_of(1, &["b"]).as_ref(),
                &want,
                false
            ),
            Some(Step::Key(promise(&["b", "c"], 1)))
        );
    }

    #[test]
    fn swapping_the_only_standby_widens_the_key_first() {
        let want = target(&names(&["c"]), 1, false);
        let (p, s) = (promise(&["b"], 0), any_of(1, &["b"]));
        assert_eq!(
            next_step(&p, s.as_ref(), &want, true),
            Some(Step::Key(promise(&["b", "c"], 1)))
        );
        walk(p, s, &want);
    }

    #[test]
    fn a_setting_it_did_not_write_resets_the_key() {
        let foreign = SyncSetting::parse("2 (x, y)");
        let want = target(&names(&["b"]), 1, false);
        assert_eq!(
            next_step(&promise(&["b"], 0), foreign.as_ref(), &want, true),
            Some(Step::Key(Promise::leader_only()))
        );
    }

    fn member() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c", "d", "e"]).prop_map(str::to_string)
    }

    proptest! {
        /// From any state that keeps the promise, to any wanted state, every step keeps it.
        #[test]
        fn every_step_keeps_the_promise(
            voters in prop::collection::btree_set(member(), 0..5),
            quorum in 0usize..5,
            named in prop::collection::btree_set(member(), 0..5),
            count in 0usize..4,
            first in any::<bool>(),
            standbys in prop::collection::btree_set(member(), 0..5),
            node_count in 1usize..4,
            strict in any::<bool>(),
        ) {
            let s = (count > 0 && !named.is_empty()).then(|| SyncSetting {
                count: count.min(named.len()),
                names: named.iter().cloned().collect(),
                quorum: !first,
            });
            // The smallest quorum at or above the drawn one that keeps the promise.
            let needed = match &s {
                Some(s) => named.union(&voters).count().saturating_sub(s.count),
                None => voters.len(),
            };
            let p = Promise { quorum: quorum.max(needed), voters };
            prop_assert!(p.covers(s.as_ref()));
            walk(p, s, &target(&standbys, node_count, strict));
        }
    }
}
