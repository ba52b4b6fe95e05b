//! Manual switchover and failover, as `ctl` and the REST API ask for them: check the
//! request against the cluster up front, write the `failover` key, and wait for the
//! members to carry it out. The members act on the key in [`crate::decide`].

use crate::dynamic;
use pgherd_dcs::{Cluster, Dcs, DcsError, FailoverRequest};
use std::time::{Duration, Instant, SystemTime};

/// A planned switchover (the leader hands over) or a failover (to a named member, also
/// when there is no leader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Switchover,
    Failover,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Switchover => "switchover",
            Kind::Failover => "failover",
        }
    }
}

/// What an operator asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ask {
    pub leader: Option<String>,
    pub candidate: Option<String>,
    /// ISO 8601; only for a switchover.
    pub scheduled_at: Option<String>,
}

/// Why a request was refused up front.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The request itself is malformed (a bad time, a missing field).
    #[error("{0}")]
    Invalid(String),
    /// Well formed, but the cluster cannot do it now (Patroni answers 412).
    #[error("{0}")]
    NotPossible(String),
}

/// Check `ask` against the cluster and build the `failover` key for it.
/// `now_unix` is the wall clock in seconds (a scheduled time must be in the future).
pub fn check(
    cluster: &Cluster,
    kind: Kind,
    ask: &Ask,
    now_unix: i64,
) -> Result<FailoverRequest, Refused> {
    let config = dynamic::apply(
        &crate::runner::default_ha_config(),
        cluster.config.as_ref().map(|c| &c.value),
    );
    if config.ha.paused {
        return Err(Refused::NotPossible(format!(
            "the cluster is paused (maintenance mode): resume it before a {}",
            kind.as_str()
        )));
    }
    let leader = cluster.leader_name();
    if let Some(asked) = ask.leader.as_deref() {
        if leader != Some(asked) {
            return Err(Refused::NotPossible(match leader {
                Some(l) => format!("{asked} is not the leader; the leader is {l}"),
                None => format!("{asked} is not the leader; the cluster has no leader"),
            }));
        }
    }
    let scheduled_at = match (&ask.scheduled_at, kind) {
        (None, _) => None,
        (Some(_), Kind::Failover) => {
            return Err(Refused::Invalid(
                "a failover cannot be scheduled; schedule a switchover instead".into(),
            ))
        }
        (Some(text), Kind::Switchover) => {
            let at = parse_time(text).ok_or_else(|| {
                Refused::Invalid(format!(
                    "cannot read the time {text:?}: use ISO 8601, e.g. 2026-12-06T22:30:00+00:00"
                ))
            })?;
            if at <= now_unix {
                return Err(Refused::Invalid(format!(
                    "the time {text} is in the past; a switchover can only be scheduled ahead"
                )));
            }
            Some(crate::runner::iso8601(at))
        }
    };
    match kind {
        Kind::Switchover => {
            let Some(leader) = leader else {
                return Err(Refused::NotPossible(
                    "the cluster has no leader: a switchover needs one; use failover".into(),
                ));
            };
            match ask.candidate.as_deref() {
                Some(c) if c == leader => {
                    return Err(Refused::NotPossible(format!(
                        "{c} is already the leader; name another member as the candidate"
                    )))
                }
                Some(c) => {
                    if let Some(why) = ineligibility(cluster, &config.ha, c, kind) {
                        return Err(Refused::NotPossible(format!("{c} cannot take over: {why}")));
                    }
                }
                None => {
                    let any = cluster.members.iter().any(|m| {
                        m.name != leader
                            && ineligibility(cluster, &config.ha, &m.name, kind).is_none()
                    });
                    if !any {
                        let reasons = reasons_of_all(cluster, &config.ha, leader);
                        return Err(Refused::NotPossible(format!(
                            "no member can take over: {reasons}"
                        )));
                    }
                }
            }
            Ok(FailoverRequest {
                leader: Some(leader.to_string()),
                candidate: ask.candidate.clone(),
                scheduled_at,
            })
        }
        Kind::Failover => {
            let Some(candidate) = ask.candidate.as_deref() else {
                return Err(Refused::Invalid(
                    "a failover needs a candidate (the member to promote)".into(),
                ));
            };
            if leader == Some(candidate) {
                return Err(Refused::NotPossible(format!(
                    "{candidate} is already the leader"
                )));
            }
            if let Some(why) = ineligibility(cluster, &config.ha, candidate, kind) {
                return Err(Refused::NotPossible(format!(
                    "{candidate} cannot take over: {why}"
                )));
            }
            Ok(FailoverRequest {
                leader: leader.map(str::to_string),
                candidate: Some(candidate.to_string()),
                scheduled_at: None,
            })
        }
    }
}

/// Why `name` may not become the leader, judged from the DCS, if it may not: it must run
/// a replica. Whether it streams, and how far behind, the leader judges when it acts,
/// from its own pg_stat_replication (member keys are up to a loop old).
pub fn ineligibility(
    cluster: &Cluster,
    ha: &crate::HaConfig,
    name: &str,
    kind: Kind,
) -> Option<String> {
    let Some(m) = cluster.member(name) else {
        let names: Vec<&str> = cluster.members.iter().map(|m| m.name.as_str()).collect();
        return Some(format!(
            "no member {name} in the cluster (members: {})",
            names.join(", ")
        ));
    };
    if m.data.tags.nofailover {
        return Some("it is tagged nofailover".into());
    }
    if m.data.role != "replica" {
        return Some(format!("it is not a replica (role: {})", m.data.role));
    }
    let leader = cluster.leader_name().and_then(|l| cluster.member(l));
    if !matches!(m.data.state.as_str(), "running" | "streaming") {
        let what = match kind {
            Kind::Switchover => "streaming",
            Kind::Failover => "running",
        };
        return Some(format!("it is not {what} (state: {})", m.data.state));
    }
    let Some(position) = m.data.xlog_location else {
        return Some("its WAL position is unknown".into());
    };
    // With a leader, the leader judges the lag from its own pg_stat_replication when it
    // acts: member keys are up to a loop old, and comparing two of them taken at
    // different times under load would see lag that is not there.
    if leader.is_none() {
        let reference = cluster.status.as_ref().map_or(0, |s| s.optime);
        let lag = reference.saturating_sub(position);
        if lag > ha.maximum_lag_on_failover {
            return Some(format!(
                "it lags {lag} bytes behind the last primary position, more than \
                 maximum_lag_on_failover ({})",
                ha.maximum_lag_on_failover
            ));
        }
    }
    crate::decide::not_synchronous(cluster, ha, name)
}

fn reasons_of_all(cluster: &Cluster, ha: &crate::HaConfig, leader: &str) -> String {
    let reasons: Vec<String> = cluster
        .members
        .iter()
        .filter(|m| m.name != leader)
        .filter_map(|m| {
            ineligibility(cluster, ha, &m.name, Kind::Switchover)
                .map(|why| format!("{}: {why}", m.name))
        })
        .collect();
    if reasons.is_empty() {
        "the leader is the only member".into()
    } else {
        reasons.join("; ")
    }
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new leader holds the key.
    Done { leader: String },
    /// Written with a time: the leader acts on it then.
    Scheduled { at: String },
    /// The members dropped the request without moving the leader; `reason` is the
    /// leader's, when it could be read from its REST API.
    Failed {
        leader: Option<String>,
        reason: Option<String>,
    },
    /// Still pending after the wait.
    TimedOut,
}

/// Why a request could not be written or followed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Dcs(#[from] DcsError),
    #[error("another switchover or failover is pending; cancel it first (ctl switchover --cancel, DELETE /switchover)")]
    Pending,
}

/// Write the `failover` key (only if none is pending) and, unless it is scheduled, wait
/// up to `wait` for the members to carry it out.
pub async fn submit(
    dcs: &dyn Dcs,
    http: &reqwest::Client,
    request: &FailoverRequest,
    wait: Duration,
) -> Result<Outcome, SubmitError> {
    // An empty request (what `patronictl flush` leaves) asks nothing: write over it.
    let expected = match dcs.get_cluster().await?.failover {
        None => 0,
        Some(f) if f.value.leader.is_none() && f.value.candidate.is_none() => f.version,
        Some(_) => return Err(SubmitError::Pending),
    };
    if !dcs.set_failover(request, Some(expected)).await? {
        return Err(SubmitError::Pending);
    }
    if let Some(at) = &request.scheduled_at {
        return Ok(Outcome::Scheduled { at: at.clone() });
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(cluster) = dcs.get_cluster().await else {
            continue;
        };
        let leader = cluster.leader_name().map(str::to_string);
        let moved = leader.is_some() && leader != request.leader;
        let wanted = match &request.candidate {
            Some(c) => leader.as_deref() == Some(c.as_str()),
            None => moved,
        };
        if wanted && cluster.failover.is_none() {
            return Ok(Outcome::Done {
                leader: leader.unwrap_or_default(),
            });
        }
        if cluster.failover.is_none() {
            let reason = match leader.as_deref().and_then(|l| cluster.member(l)) {
                Some(m) => dropped_because(http, &m.data.api_url).await,
                None => None,
            };
            return Ok(Outcome::Failed { leader, reason });
        }
    }
    Ok(Outcome::TimedOut)
}

/// Why the leader dropped the last request, from its `GET /patroni`.
async fn dropped_because(http: &reqwest::Client, api_url: &str) -> Option<String> {
    let status: serde_json::Value = http.get(api_url).send().await.ok()?.json().await.ok()?;
    status["last_request_dropped"].as_str().map(str::to_string)
}

/// Remove a scheduled switchover. `Ok(None)` when none was scheduled.
pub async fn cancel(dcs: &dyn Dcs) -> Result<Option<FailoverRequest>, DcsError> {
    let cluster = dcs.get_cluster().await?;
    let Some(pending) = cluster.failover else {
        return Ok(None);
    };
    dcs.delete_failover(Some(pending.version)).await?;
    Ok(Some(pending.value))
}

/// How long a caller waits for a switchover: long enough for a clean stop of the old
/// primary and a promotion, bounded by the cluster's timings.
pub fn default_wait(ha: &crate::HaConfig) -> Duration {
    Duration::from_millis(ha.ttl + 2 * ha.loop_wait + 30_000)
}

/// Seconds since the epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// ISO 8601 date and time → seconds since the epoch: `2026-12-06T22:30`,
/// `2026-12-06 22:30:15.5Z`, `2026-12-06T22:30:00+01:00`. A time without an offset is UTC.
pub fn parse_time(text: &str) -> Option<i64> {
    let t = text.trim();
    let (date, rest) = t.split_at_checked(10)?;
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    // Split the offset off the clock time.
    let (clock, offset) = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let mut c = clock.split(':');
    let hour: i64 = c.next()?.parse().ok()?;
    let minute: i64 = c.next()?.parse().ok()?;
    let second: f64 = match c.next() {
        Some(s) => s.parse().ok()?,
        None => 0.0,
    };
    if c.next().is_some() {
        return None;
    }
    let offset_secs = match offset {
        "" | "Z" | "z" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let digits: String = o[1..].chars().filter(|c| *c != ':').collect();
            if digits.len() != 4 {
                return None;
            }
            let h: i64 = digits[..2].parse().ok()?;
            let m: i64 = digits[2..].parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
    };
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&minute)
        && (0.0..61.0).contains(&second);
    if !valid {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second as i64 - offset_secs)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgherd_dcs::{Member, MemberData, Versioned};

    #[test]
    fn times_parse_in_the_forms_operators_type() {
        assert_eq!(parse_time("1970-01-01T00:00:00+00:00"), Some(0));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(parse_time("2023-11-14 22:13:20"), Some(1_700_000_000));
        assert_eq!(parse_time("2023-11-14T23:13:20+01:00"), Some(1_700_000_000));
        assert_eq!(parse_time("2023-11-14T21:13:20-0100"), Some(1_700_000_000));
        assert_eq!(parse_time("2023-11-14T22:13"), Some(1_699_999_980));
        assert_eq!(parse_time("2000-02-29T00:00:00.25Z"), Some(951_782_400));
        for bad in [
            "",
            "tomorrow",
            "2023-13-01T00:00",
            "2023-02-29T00:00",
            "2023-11-14T25:00",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        for secs in [0, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_time(&crate::runner::iso8601(secs)), Some(secs));
        }
    }

    fn member(name: &str, role: &str, state: &str, lsn: u64) -> Member {
        Member {
            name: name.into(),
            data: MemberData {
                role: role.into(),
                state: state.into(),
                xlog_location: Some(lsn),
                ..MemberData::default()
            },
        }
    }

    fn cluster() -> Cluster {
        Cluster {
            initialize: Some("1".into()),
            leader: Some(Versioned {
                value: "a".into(),
                version: 1,
            }),
            members: vec![
                member("a", "primary", "running", 100_000_000),
                member("b", "replica", "streaming", 100_000_000),
                member("c", "replica", "running", 100_000_000),
            ],
            ..Cluster::default()
        }
    }

    #[test]
    fn a_switchover_names_the_leader_and_an_eligible_candidate() {
        let ask = Ask {
            candidate: Some("b".into()),
            ..Ask::default()
        };
        let req = check(&cluster(), Kind::Switchover, &ask, 0).unwrap();
        assert_eq!(req.leader.as_deref(), Some("a"));
        assert_eq!(req.candidate.as_deref(), Some("b"));
    }

    #[test]
    fn ineligible_candidates_are_refused_with_the_reason() {
        let refuse = |c: &Cluster, candidate: &str| {
            let ask = Ask {
                candidate: Some(candidate.into()),
                ..Ask::default()
            };
            check(c, Kind::Switchover, &ask, 0).unwrap_err().to_string()
        };
        let c = cluster();
        let mut stopped = cluster();
        stopped.members[2].data.state = "stopped".into();
        assert!(
            refuse(&stopped, "c").contains("not streaming"),
            "{}",
            refuse(&stopped, "c")
        );
        assert!(refuse(&c, "zz").contains("no member zz"));
        assert!(refuse(&c, "a").contains("already the leader"));
        // Lag is the leader's to judge, with live data; without a leader it is judged here.
        let mut lagging = cluster();
        lagging.members[1].data.xlog_location = Some(1);
        assert!(check(
            &lagging,
            Kind::Switchover,
            &Ask {
                candidate: Some("b".into()),
                ..Ask::default()
            },
            0
        )
        .is_ok());
        lagging.leader = None;
        lagging.status = Some(pgherd_dcs::ClusterStatus {
            optime: 100_000_000,
            ..Default::default()
        });
        let ask = Ask {
            candidate: Some("b".into()),
            ..Ask::default()
        };
        let err = check(&lagging, Kind::Failover, &ask, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lags"), "{err}");
        let mut tagged = cluster();
        tagged.members[1].data.tags.nofailover = true;
        assert!(refuse(&tagged, "b").contains("nofailover"));
        let mut sync = cluster();
        sync.config = Some(Versioned {
            value: serde_json::json!({"synchronous_mode": true}),
            version: 1,
        });
        sync.sync = Some(Versioned {
            value: pgherd_dcs::SyncState {
                leader: Some("a".into()),
                sync_standby: Some("c".into()),
                quorum: None,
            },
            version: 1,
        });
        assert!(refuse(&sync, "b").contains("not a synchronous standby"));
        let ask = Ask::default();
        let mut alone = cluster();
        alone.members.truncate(1);
        let err = check(&alone, Kind::Switchover, &ask, 0).unwrap_err();
        assert!(err.to_string().contains("no member can take over"), "{err}");
    }

    #[test]
    fn scheduling_checks_the_time_and_the_kind() {
        let ask = Ask {
            scheduled_at: Some("2030-01-01T00:00:00Z".into()),
            ..Ask::default()
        };
        let req = check(&cluster(), Kind::Switchover, &ask, 0).unwrap();
        assert_eq!(
            req.scheduled_at.as_deref(),
            Some("2030-01-01T00:00:00+00:00")
        );
        let past = check(&cluster(), Kind::Switchover, &ask, 2_000_000_000).unwrap_err();
        assert!(matches!(past, Refused::Invalid(_)));
        let failover = Ask {
            candidate: Some("b".into()),
            ..ask
        };
        assert!(check(&cluster(), Kind::Failover, &failover, 0).is_err());
    }

    #[test]
    fn a_failover_works_without_a_leader_and_needs_a_candidate() {
        let mut c = cluster();
        c.leader = None;
        c.members[0].data.state = "stopped".into();
        let ask = Ask {
            candidate: Some("c".into()),
            ..Ask::default()
        };
        let req = check(&c, Kind::Failover, &ask, 0).unwrap();
        assert_eq!((req.leader, req.candidate.as_deref()), (None, Some("c")));
        assert!(matches!(
            check(&c, Kind::Failover, &Ask::default(), 0),
            Err(Refused::Invalid(_))
        ));
        assert!(check(&c, Kind::Switchover, &ask, 0).is_err());
    }

    #[test]
    fn paused_clusters_refuse() {
        let mut c = cluster();
        c.config = Some(Versioned {
            value: serde_json::json!({"pause": true}),
            version: 1,
        });
        let err = check(&c, Kind::Switchover, &Ask::default(), 0).unwrap_err();
        assert!(err.to_string().contains("paused"));
    }
}
