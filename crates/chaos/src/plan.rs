//! The faults and the seeded plan: which fault, against whom, held how long.

use anyhow::bail;
use serde::Serialize;
use std::time::Duration;

/// A deterministic generator (splitmix64): the same seed gives the same plan on every
/// machine and with every dependency version.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    KillAgent,
    KillPostmaster,
    KillBoth,
    StopAgent,
    StopPostmaster,
    PartitionEtcd,
    PartitionPeers,
    PartitionAll,
    EtcdOne,
    EtcdQuorum,
    DiskFull,
}

pub const ALL_KINDS: [FaultKind; 11] = [
    FaultKind::KillAgent,
    FaultKind::KillPostmaster,
    FaultKind::KillBoth,
    FaultKind::StopAgent,
    FaultKind::StopPostmaster,
    FaultKind::PartitionEtcd,
    FaultKind::PartitionPeers,
    FaultKind::PartitionAll,
    FaultKind::EtcdOne,
    FaultKind::EtcdQuorum,
    FaultKind::DiskFull,
];

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillAgent => "kill-agent",
            FaultKind::KillPostmaster => "kill-postmaster",
            FaultKind::KillBoth => "kill-both",
            FaultKind::StopAgent => "stop-agent",
            FaultKind::StopPostmaster => "stop-postmaster",
            FaultKind::PartitionEtcd => "partition-etcd",
            FaultKind::PartitionPeers => "partition-peers",
            FaultKind::PartitionAll => "partition-all",
            FaultKind::EtcdOne => "etcd-one",
            FaultKind::EtcdQuorum => "etcd-quorum",
            FaultKind::DiskFull => "disk-full",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<FaultKind> {
        match ALL_KINDS.iter().find(|k| k.name() == s) {
            Some(k) => Ok(*k),
            None => bail!(
                "unknown fault kind {s:?}; kinds: {}",
                ALL_KINDS.map(|k| k.name()).join(",")
            ),
        }
    }

    /// How long the fault is held, in seconds (inclusive range), for a ttl of `ttl` s.
    /// Stops are held longer than the ttl, as the issue asks.
    fn hold_range(self, ttl: u64) -> (u64, u64) {
        match self {
            FaultKind::KillAgent | FaultKind::KillBoth => (3, ttl + 8),
            FaultKind::KillPostmaster => (2, 10),
            FaultKind::StopAgent | FaultKind::StopPostmaster => (ttl + 2, ttl + 10),
            FaultKind::PartitionEtcd | FaultKind::PartitionPeers | FaultKind::PartitionAll => {
                (ttl / 2, ttl + 12)
            }
            FaultKind::EtcdOne => (5, 15),
            FaultKind::EtcdQuorum => (ttl / 2, ttl + 10),
            FaultKind::DiskFull => (8, 20),
        }
    }

    /// Whether the fault may hit a replica instead of the primary (else always the primary).
    fn may_hit_replica(self) -> bool {
        matches!(
            self,
            FaultKind::KillAgent
                | FaultKind::KillPostmaster
                | FaultKind::KillBoth
                | FaultKind::PartitionAll
                | FaultKind::PartitionEtcd
        )
    }

    fn is_etcd(self) -> bool {
        matches!(self, FaultKind::EtcdOne | FaultKind::EtcdQuorum)
    }
}

/// Whom a fault hits.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Whichever member is the primary when the fault starts.
    Primary,
    /// The `n`-th (0 or 1) other member then.
    Replica(usize),
    /// These etcd members (indexes 0..3).
    Etcd(Vec<usize>),
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultSpec {
    pub kind: FaultKind,
    pub target: Target,
    #[serde(serialize_with = "as_secs")]
    pub hold: Duration,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl std::fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.target {
            Target::Primary => "the primary".to_string(),
            Target::Replica(n) => format!("replica #{n}"),
            Target::Etcd(v) => format!(
                "etcd {}",
                v.iter()
                    .map(|i| format!("e{}", i + 1))
                    .collect::<Vec<_>>()
                    .join("+")
            ),
        };
        write!(
            f,
            "{} on {target} for {:.1} s",
            self.kind.name(),
            self.hold.as_secs_f64()
        )
    }
}

/// `count` faults from `kinds`, drawn as successive shuffles of the list (so a run of
/// `kinds.len()` faults meets each kind once), with targets and hold times.
pub fn plan(seed: u64, count: usize, kinds: &[FaultKind], ttl: u64) -> Vec<FaultSpec> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(count);
    let mut deck: Vec<FaultKind> = Vec::new();
    // Bounded by `count`.
    while out.len() < count && !kinds.is_empty() {
        if deck.is_empty() {
            deck = kinds.to_vec();
            // Fisher-Yates.
            for i in (1..deck.len()).rev() {
                let j = rng.range(0, i as u64) as usize;
                deck.swap(i, j);
            }
        }
        let Some(kind) = deck.pop() else { break };
        let target = if kind.is_etcd() {
            let first = rng.range(0, 2) as usize;
            if kind == FaultKind::EtcdQuorum {
                let second = (first + 1 + rng.range(0, 1) as usize) % 3;
                Target::Etcd(vec![first, second])
            } else {
                Target::Etcd(vec![first])
            }
        } else if kind.may_hit_replica() && rng.chance(25) {
            Target::Replica(rng.range(0, 1) as usize)
        } else {
            Target::Primary
        };
        let (lo, hi) = kind.hold_range(ttl);
        let hold = Duration::from_millis(rng.range(lo * 1000, hi * 1000));
        out.push(FaultSpec { kind, target, hold });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_depends_only_on_the_seed() {
        let a = plan(7, 25, &ALL_KINDS, 10);
        let b = plan(7, 25, &ALL_KINDS, 10);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let c = plan(8, 25, &ALL_KINDS, 10);
        assert_ne!(format!("{a:?}"), format!("{c:?}"));
        // Each kind once in the first shuffle.
        let mut first: Vec<FaultKind> = a[..11].iter().map(|f| f.kind).collect();
        first.sort();
        first.dedup();
        assert_eq!(first.len(), 11);
        for f in &a {
            if let Target::Etcd(v) = &f.target {
                assert!(v.iter().all(|&i| i < 3));
                if f.kind == FaultKind::EtcdQuorum {
                    assert_eq!(v.len(), 2);
                    assert_ne!(v[0], v[1]);
                }
            }
        }
    }
}
