//! Synchronous replication (`synchronous_mode`): which standbys the primary waits for
//! (`synchronous_standby_names`), the `sync` key that names them for everyone else, and
//! who may take over.
//!
//! The key may only ever name members that hold every acknowledged write, so the leader
//! changes the two in this order: a member leaves the key before it leaves
//! `synchronous_standby_names`; it joins the key only after PostgreSQL reports it as a
//! synchronous standby and it has flushed the WAL written before it became one.

use super::quorum::{key_quorum, manage_quorum};
use super::{act, Action, HaConfig, Observation, Reason, Standby, SynchronousMode};
use pgherd_dcs::Cluster;

/// A value of `synchronous_standby_names` that pgherd writes and reads back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSetting {
    /// `FIRST count (names)`: commits wait for the first `count` connected of `names`;
    /// with `quorum`, `ANY count (names)`: for any `count` of them.
    /// `names == ["*"]`: any one standby (strict mode with no candidate: commits wait).
    pub count: usize,
    pub names: Vec<String>,
    pub quorum: bool,
}

impl SyncSetting {
    /// Commits wait for any one standby: strict mode when no member may be synchronous.
    pub fn any_standby() -> SyncSetting {
        SyncSetting {
            count: 1,
            names: vec!["*".into()],
            quorum: false,
        }
    }

    /// Whether this is `*` or a value pgherd did not write.
    pub fn is_wildcard_or_foreign(&self) -> bool {
        self.count == 0 || self.names == ["*"]
    }

    /// As written into postgresql.conf: `FIRST 2 ("node2","node3")`, `ANY 1 ("node2","node3")`
    /// or `*`.
    pub fn to_conf(&self) -> String {
        if self.names == ["*"] {
            return "*".into();
        }
        let names: Vec<String> = self
            .names
            .iter()
            .map(|n| format!("\"{}\"", n.replace('"', "\"\"")))
            .collect();
        let method = if self.quorum { "ANY" } else { "FIRST" };
        format!("{method} {} ({})", self.count, names.join(","))
    }

    /// What `SHOW synchronous_standby_names` printed: `None` for an empty value; a value
    /// pgherd did not write (another form) reads as one to replace (`count` 0).
    pub fn parse(text: &str) -> Option<SyncSetting> {
        let t = text.trim();
        if t.is_empty() {
            return None;
        }
        if t == "*" {
            return Some(SyncSetting::any_standby());
        }
        let foreign = || SyncSetting {
            count: 0,
            names: vec![t.to_string()],
            quorum: false,
        };
        let (quorum, rest) = match (t.strip_prefix("FIRST "), t.strip_prefix("ANY ")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Some(foreign()),
        };
        let Some((count, list)) = rest.split_once(' ') else {
            return Some(foreign());
        };
        let (Ok(count), Some(list)) = (
            count.parse::<usize>(),
            list.strip_prefix('(').and_then(|l| l.strip_suffix(')')),
        ) else {
            return Some(foreign());
        };
        let names = list
            .split(',')
            .map(|n| n.trim().trim_matches('"').replace("\"\"", "\""))
            .collect();
        Some(SyncSetting {
            count,
            names,
            quorum,
        })
    }
}

/// The members the `sync` key names as synchronous standbys (empty when none).
pub fn key_members(cluster: &Cluster) -> Vec<String> {
    cluster
        .sync
        .as_ref()
        .and_then(|k| k.value.sync_standby.as_deref())
        .map(|names| {
            names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Why `name` may not take over in synchronous mode `on`: the `sync` key, once written,
/// names the members that hold every acknowledged write — its synchronous standbys and
/// the leader that wrote it. Before the key exists nothing restricts. (In quorum mode
/// anyone may, after seeing enough voters: `quorum::shortfall`.)
pub(crate) fn not_synchronous(cluster: &Cluster, cfg: &HaConfig, name: &str) -> Option<String> {
    if cfg.synchronous_mode != SynchronousMode::On {
        return None;
    }
    let key = cluster.sync.as_ref()?;
    if key.value.leader.as_deref() == Some(name) || key_members(cluster).iter().any(|n| n == name) {
        return None;
    }
    Some(format!(
        "{name} is not a synchronous standby (synchronous_mode is on)"
    ))
}

/// `synchronous_standby_names` for a primary that starts again under its lease (after a
/// crash or an agent restart): the standbys its `sync` key names, so commits keep waiting
/// for exactly the members that may take over (in quorum mode: for as many of them as
/// the key's quorum counts on).
pub fn sync_setting_on_restart(cfg: &HaConfig, cluster: &Cluster, me: &str) -> Option<SyncSetting> {
    if !cfg.synchronous_mode.is_active() {
        return None;
    }
    let ours = cluster
        .sync
        .as_ref()
        .is_some_and(|k| k.value.leader.as_deref() == Some(me));
    let names = if ours {
        key_members(cluster)
    } else {
        Vec::new()
    };
    let quorum = key_quorum(cluster) as usize;
    if names.len() <= quorum {
        return cfg.synchronous_mode_strict.then(SyncSetting::any_standby);
    }
    Some(SyncSetting {
        count: names.len() - quorum,
        names,
        quorum: cfg.synchronous_mode == SynchronousMode::Quorum,
    })
}

/// A new leader in synchronous mode writes the `sync` key naming itself and nobody else
/// before it promotes: the old key may name standbys that will not receive the commits
/// it acknowledges before it has synchronous standbys of its own.
pub(super) fn claim_sync_key(
    obs: &Observation,
    cluster: &Cluster,
    cfg: &HaConfig,
) -> Option<(Action, Reason)> {
    let key = cluster.sync.as_ref();
    let ours = key.is_some_and(|k| k.value.leader.as_deref() == Some(obs.me.as_str()));
    (cfg.synchronous_mode.is_active() && !ours).then(|| {
        act(
            Action::SetSyncKey {
                standbys: Vec::new(),
                quorum: 0,
                version: key.map_or(0, |k| k.version),
            },
            "synchronous mode: naming us alone in the sync key before promoting",
        )
    })
}

/// The leader's one step towards the synchronous standbys it should have, if any.
pub(super) fn manage_sync(
    obs: &Observation,
    cluster: &Cluster,
    cfg: &HaConfig,
) -> Option<(Action, Reason)> {
    let me = obs.me.as_str();
    let key = cluster.sync.as_ref();
    let ours = key.is_some_and(|k| k.value.leader.as_deref() == Some(me));
    let version = key.map_or(0, |k| k.version);
    let named = if ours {
        key_members(cluster)
    } else {
        Vec::new()
    };
    let set_key = |standbys: Vec<String>, why: String| {
        act(
            Action::SetSyncKey {
                standbys,
                quorum: 0,
                version,
            },
            why,
        )
    };
    let current = obs.local.sync_setting.as_ref();
    if !cfg.synchronous_mode.is_active() {
        if ours && !named.is_empty() {
            return Some(set_key(
                Vec::new(),
                "synchronous_mode is off: emptying the sync key first".into(),
            ));
        }
        return current.map(|_| {
            act(
                Action::SetSyncStandbys(None),
                "synchronous_mode is off: clearing synchronous_standby_names",
            )
        });
    }
    let mut wanted = eligible_standbys(obs, cluster, &named);
    if cfg.synchronous_mode == SynchronousMode::Quorum {
        return manage_quorum(obs, cluster, cfg, &wanted);
    }
    if ours && key_quorum(cluster) > 0 {
        // Written in quorum mode: its members need not each hold every write.
        return Some(set_key(
            Vec::new(),
            "synchronous_mode is on: the quorum sync key names nobody until standbys confirm"
                .into(),
        ));
    }
    wanted.truncate(cfg.synchronous_node_count.max(1) as usize);
    // 1. Leave the key first.
    let kept: Vec<String> = named
        .iter()
        .filter(|n| wanted.contains(n))
        .cloned()
        .collect();
    if !ours || kept.len() != named.len() {
        let gone: Vec<&String> = named.iter().filter(|n| !wanted.contains(n)).collect();
        let why = if ours {
            format!("{gone:?} can no longer be synchronous: removing them from the sync key first")
        } else {
            "we lead: taking over the sync key".to_string()
        };
        return Some(set_key(kept, why));
    }
    // 2. Then PostgreSQL's setting.
    let setting = match (wanted.is_empty(), cfg.synchronous_mode_strict) {
        (false, _) => Some(SyncSetting {
            count: wanted.len(),
            names: wanted.clone(),
            quorum: false,
        }),
        (true, true) => Some(SyncSetting::any_standby()),
        (true, false) => None,
    };
    if current != setting.as_ref() {
        let why = match &setting {
            Some(s) if s.names == ["*"] => "synchronous_mode_strict and no standby may be \
                synchronous: commits wait for any standby"
                .to_string(),
            Some(s) => format!("synchronous standbys should be {:?}", s.names),
            None => "no standby may be synchronous: commits no longer wait (not strict)".into(),
        };
        return Some(act(Action::SetSyncStandbys(setting), why));
    }
    // 3. Join the key once PostgreSQL confirms, with the WAL from before flushed.
    let confirmed: Vec<String> = wanted
        .iter()
        .filter(|n| named.contains(n) || confirmed_sync(obs, n))
        .cloned()
        .collect();
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    (sorted(&confirmed) != sorted(&named)).then(|| {
        set_key(
            confirmed.clone(),
            format!("{confirmed:?} are synchronous now: naming them in the sync key"),
        )
    })
}

/// The standbys that may be synchronous: streaming, known to the DCS, not tagged
/// `nosync`; the current ones first (no needless change), then the most advanced.
fn eligible_standbys(obs: &Observation, cluster: &Cluster, named: &[String]) -> Vec<String> {
    let mut candidates: Vec<&Standby> = obs
        .local
        .standbys
        .iter()
        .filter(|s| s.streaming)
        .filter(|s| cluster.member(&s.name).is_some_and(|m| !m.data.tags.nosync))
        .collect();
    candidates.sort_by(|a, b| {
        let current = |s: &Standby| !named.contains(&s.name);
        (current(a), std::cmp::Reverse(a.flush_lsn), &a.name).cmp(&(
            current(b),
            std::cmp::Reverse(b.flush_lsn),
            &b.name,
        ))
    });
    candidates.into_iter().map(|s| s.name.clone()).collect()
}

/// PostgreSQL reports `name` as synchronous, and it has flushed everything written
/// before our setting took effect (commits acknowledged before that did not wait for it).
pub(super) fn confirmed_sync(obs: &Observation, name: &str) -> bool {
    let since = obs.memory.sync_set_at_lsn.unwrap_or(u64::MAX);
    obs.local
        .standbys
        .iter()
        .any(|s| s.name == name && s.synchronous && s.flush_lsn.is_some_and(|f| f >= since))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_through_postgresql_conf() {
        for s in [
            SyncSetting {
                count: 2,
                names: vec!["node2".into(), "no\"de3".into()],
                quorum: false,
            },
            SyncSetting {
                count: 1,
                names: vec!["node2".into(), "node3".into()],
                quorum: true,
            },
            SyncSetting::any_standby(),
        ] {
            assert_eq!(SyncSetting::parse(&s.to_conf()), Some(s.clone()));
        }
        assert_eq!(SyncSetting::parse(""), None);
        let foreign = SyncSetting::parse("2 (a, b)").unwrap();
        assert_eq!(foreign.count, 0, "not ours: to be replaced");
    }
}
