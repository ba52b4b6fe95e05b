//! What the run found: split-brain intervals from the probes, recovery times per fault
//! kind, the summary printed and the JSON written.

use crate::load::Attempt;
use crate::plan::FaultSpec;
use serde::Serialize;
use std::collections::BTreeMap;

/// One injected fault and how the cluster came back.
#[derive(Debug, Clone, Serialize)]
pub struct FaultResult {
    pub n: usize,
    pub spec: FaultSpec,
    /// The member (or etcd members) hit.
    pub target: String,
    /// The primary before the fault and once recovered.
    pub primary_before: String,
    pub primary_after: Option<String>,
    /// ms since the run began.
    pub injected_ms: u64,
    pub healed_ms: u64,
    pub recovered_ms: Option<u64>,
    /// Seconds from the heal to one primary, streaming replicas and a write acknowledged
    /// through the pooler.
    pub recovery_s: Option<f64>,
    /// The longest pause between acknowledged writes from the injection to the recovery.
    pub max_write_gap_s: f64,
    pub survived: bool,
    pub note: String,
}

/// Two members acknowledging writes at the same time.
#[derive(Debug, Clone, Serialize)]
pub struct SplitBrain {
    pub members: [String; 2],
    pub from_s: f64,
    pub to_s: f64,
    /// The fault (its number and kind) in force then, if any.
    pub during: Option<String>,
}

/// A member's runs of acknowledged probes, each as the interval it was certainly
/// writable: from the first run's acknowledgement to the last one's sending (each commit
/// lies between its sending and its acknowledgement).
pub fn certain_runs(attempts: &[Attempt]) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    let mut cur: Option<(u64, u64)> = None;
    for a in attempts {
        match (a.acked, cur) {
            (Some(ack), None) => cur = Some((ack, a.sent)),
            (Some(_), Some((first, _))) => cur = Some((first, a.sent)),
            (None, Some(run)) => {
                runs.push(run);
                cur = None;
            }
            (None, None) => {}
        }
    }
    if let Some(run) = cur {
        runs.push(run);
    }
    runs.into_iter().filter(|(a, b)| a <= b).collect()
}

/// Acknowledged probes of one member whose whole window (sent..acked) lies inside a run
/// in which another member was certainly writable: both acknowledged writes at once.
/// Overlapping windows are merged into intervals.
pub fn split_brains(probes: &[Vec<Attempt>]) -> Vec<(usize, usize, u64, u64)> {
    let runs: Vec<Vec<(u64, u64)>> = probes.iter().map(|p| certain_runs(p)).collect();
    let mut windows: Vec<(usize, usize, u64, u64)> = Vec::new();
    for (b, attempts) in probes.iter().enumerate() {
        for (a, a_runs) in runs.iter().enumerate() {
            if a == b {
                continue;
            }
            for at in attempts {
                let Some(ack) = at.acked else { continue };
                if a_runs.iter().any(|&(s, e)| at.sent >= s && ack <= e) {
                    windows.push((a.min(b), a.max(b), at.sent, ack));
                }
            }
        }
    }
    windows.sort();
    let mut merged: Vec<(usize, usize, u64, u64)> = Vec::new();
    for w in windows {
        match merged.last_mut() {
            Some(last) if last.0 == w.0 && last.1 == w.1 && w.2 <= last.3 + 1000 => {
                last.3 = last.3.max(w.3);
            }
            _ => merged.push(w),
        }
    }
    merged
}

pub fn median_max(mut v: Vec<f64>) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    Some((median, v[v.len() - 1]))
}

#[derive(Debug, Serialize)]
pub struct KindStats {
    pub injected: usize,
    pub survived: usize,
    pub recovery_median_s: Option<f64>,
    pub recovery_max_s: Option<f64>,
    pub write_gap_max_s: f64,
}

pub fn per_kind(results: &[FaultResult]) -> BTreeMap<&'static str, KindStats> {
    let mut out = BTreeMap::new();
    for r in results {
        let e = out.entry(r.spec.kind.name()).or_insert(KindStats {
            injected: 0,
            survived: 0,
            recovery_median_s: None,
            recovery_max_s: None,
            write_gap_max_s: 0.0,
        });
        e.injected += 1;
        e.survived += usize::from(r.survived);
        e.write_gap_max_s = e.write_gap_max_s.max(r.max_write_gap_s);
    }
    for (kind, e) in out.iter_mut() {
        let times: Vec<f64> = results
            .iter()
            .filter(|r| r.spec.kind.name() == *kind && r.survived)
            .filter_map(|r| r.recovery_s)
            .collect();
        if let Some((m, x)) = median_max(times) {
            e.recovery_median_s = Some(m);
            e.recovery_max_s = Some(x);
        }
    }
    out
}

/// The longest pause between consecutive acknowledged writes within `from..to` ms
/// (counting from `from` to the first and from the last to `to`).
pub fn max_gap(acks: &[u64], from: u64, to: u64) -> f64 {
    let mut prev = from;
    let mut gap = 0u64;
    for &t in acks.iter().filter(|&&t| t >= from && t <= to) {
        gap = gap.max(t - prev);
        prev = t;
    }
    gap = gap.max(to.saturating_sub(prev));
    gap as f64 / 1000.0
}

/// Wall-clock `HH:MM:SS.mmm` UTC of `t`, to find a moment of the run in the logs.
pub fn utc_clock(t: std::time::SystemTime) -> String {
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(v: &[(u64, Option<u64>)]) -> Vec<Attempt> {
        v.iter()
            .map(|&(sent, acked)| Attempt { sent, acked })
            .collect()
    }

    #[test]
    fn a_clean_handover_is_no_split_brain() {
        let a = att(&[(0, Some(5)), (150, Some(155)), (300, None), (450, None)]);
        let b = att(&[(0, None), (150, None), (300, Some(310)), (450, Some(455))]);
        assert!(split_brains(&[a, b]).is_empty());
    }

    #[test]
    fn overlapping_writes_are_split_brain() {
        let a = att(&[
            (0, Some(5)),
            (150, Some(155)),
            (300, Some(305)),
            (450, Some(455)),
        ]);
        let b = att(&[(0, None), (150, Some(160)), (300, Some(310)), (450, None)]);
        let sb = split_brains(&[a, b]);
        assert_eq!(sb, vec![(0, 1, 150, 310)]);
    }

    #[test]
    fn gaps_and_medians() {
        assert_eq!(max_gap(&[100, 200, 1200], 0, 1500), 1.0);
        assert_eq!(median_max(vec![3.0, 1.0, 2.0]), Some((2.0, 3.0)));
        assert_eq!(median_max(vec![]), None);
    }
}
