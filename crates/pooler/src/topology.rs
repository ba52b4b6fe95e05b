//! The cluster's topology as the pooler routes by it: who leads, which members run and
//! how far behind they are, read from the DCS (Patroni's layout) and followed with its
//! watch, so that a new leader is seen the moment its key is written.
//!
//! One follower task per cluster (scope) publishes a [`ClusterView`] on a
//! `tokio::sync::watch` channel; pools subscribe to it. The view says whether the DCS
//! could be read lately: a pooler that cannot read it for `dcs_timeout` does not know who
//! the primary is, and routes no writes.
//!
//! Fencing (DESIGN §3 rule 7): once every pool has applied a view, the follower writes
//! what it routes by into `poolers/<id>`, bound to a lease of twice `dcs_timeout`. A new leader
//! promotes only after every live pooler has read it as the leader, so no pooler still
//! sends writes to the old primary; a pooler that cannot reach the DCS loses its key
//! with its lease, by which time it has stopped routing writes by itself.

use crate::config::{ClusterConfig, Fallback, RouteRole, RouteSpec};
use pgherd_dcs::{parse_conn_url, Cluster, Dcs, EtcdDcs, PoolerState};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// One member as the pooler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Holds the leader key (and so is the primary).
    pub leader: bool,
    /// Its PostgreSQL runs (`running`, or `streaming` on a replica).
    pub running: bool,
    /// Bytes behind the leader's last known position; `None` when unknown.
    pub lag: Option<u64>,
    /// Tagged `noloadbalance`: not a read target.
    pub noloadbalance: bool,
    /// Publishes the role `primary` (promoted).
    pub writable: bool,
}

/// A cluster's topology at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterView {
    pub scope: String,
    /// The `leader` key's value as read (also while the DCS is unreadable: the last).
    pub leader: Option<String>,
    pub members: Vec<Member>,
    /// The DCS answered within `dcs_timeout`. When false, `members` is what it said last,
    /// but no member counts as the leader.
    pub dcs_readable: bool,
    /// Why the view is empty or unreadable, for logs and `SHOW` output.
    pub problem: Option<String>,
    /// Counts the views published (routes acknowledge the number they applied).
    pub number: u64,
    /// A switchover from the current leader is pending: the `failover` key's version.
    /// Primary routes hold new transactions and let running ones finish meanwhile.
    pub switchover: Option<i64>,
}

impl ClusterView {
    /// The member holding the leader key, if the DCS is readable and it runs as a
    /// primary (a new leader before its promotion takes no writes yet).
    pub fn primary(&self) -> Option<&Member> {
        if !self.dcs_readable {
            return None;
        }
        self.members
            .iter()
            .find(|m| m.leader && m.running && m.writable)
    }

    /// Running replicas that may serve reads: not tagged `noloadbalance`, and within
    /// `max_lag` bytes of the leader when a limit is set (unknown lag counts as too far).
    pub fn readable_replicas(&self, max_lag: Option<u64>) -> Vec<&Member> {
        self.members
            .iter()
            .filter(|m| !m.leader && m.running && !m.noloadbalance)
            .filter(|m| max_lag.is_none_or(|max| m.lag.is_some_and(|l| l <= max)))
            .collect()
    }

    /// The view of a cluster as its keys say.
    pub fn from_cluster(scope: &str, c: &Cluster) -> ClusterView {
        let leader = c.leader_name();
        let leader_lsn = c.status.as_ref().map(|s| s.optime).or_else(|| {
            leader
                .and_then(|l| c.member(l))
                .and_then(|m| m.data.xlog_location)
        });
        let members = c
            .members
            .iter()
            .filter_map(|m| {
                let (host, port) = parse_conn_url(&m.data.conn_url)?;
                let is_leader = Some(m.name.as_str()) == leader;
                Some(Member {
                    name: m.name.clone(),
                    host,
                    port,
                    leader: is_leader,
                    running: matches!(m.data.state.as_str(), "running" | "streaming"),
                    lag: match (is_leader, leader_lsn, m.data.xlog_location) {
                        (true, _, _) => Some(0),
                        (false, Some(l), Some(x)) => Some(l.saturating_sub(x)),
                        _ => None,
                    },
                    noloadbalance: m.data.tags.noloadbalance,
                    writable: matches!(m.data.role.as_str(), "primary" | "master"),
                })
            })
            .collect();
        ClusterView {
            scope: scope.to_string(),
            leader: leader.map(str::to_string),
            members,
            dcs_readable: true,
            problem: None,
            number: 0,
            switchover: c
                .failover
                .as_ref()
                .filter(|f| f.value.leader.is_some() && f.value.leader.as_deref() == leader)
                .map(|f| f.version),
        }
    }
}

impl ClusterView {
    /// The members `spec` routes to now: the primary; readable replicas (else the
    /// primary, unless `fallback: none`); or both for `any`.
    pub fn route_members(&self, spec: &RouteSpec) -> Vec<&Member> {
        let primary = self.primary();
        match spec.role {
            RouteRole::Primary => primary.into_iter().collect(),
            RouteRole::Replica => {
                let replicas = self.readable_replicas(spec.max_lag);
                if replicas.is_empty() && spec.fallback == Fallback::Primary {
                    primary.into_iter().collect()
                } else {
                    replicas
                }
            }
            RouteRole::Any => primary
                .into_iter()
                .chain(self.readable_replicas(spec.max_lag))
                .collect(),
        }
    }
}

/// Connects a handle on one cluster's keys (etcd in production, the in-process store in
/// the demo and tests).
pub type Connect = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<Arc<dyn Dcs>, String>> + Send>>
        + Send
        + Sync,
>;

/// How often the follower reads the members' keys even without a wake-up: member keys
/// (lag, state) do not wake the DCS watch, the leader key does.
const REFRESH: Duration = Duration::from_secs(1);

/// How often it reads them while the leader key names a member whose own key does not
/// say `primary` yet: a new leader is promoting, and its writes wait for that key (a
/// full [`REFRESH`] here was most of a switchover's pause).
const PROMOTION_REFRESH: Duration = Duration::from_millis(25);

/// For how long after the leader key changed the follower reads that often (a leader
/// that never says `primary`, e.g. a stopped one in maintenance mode, gets [`REFRESH`]).
const PROMOTION_WATCH: Duration = Duration::from_secs(30);

/// How long to wait before connecting again after the DCS could not be reached.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// This pooler's id in `poolers/`: the host name and the process id.
fn pooler_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .unwrap_or_else(|| "pooler".into());
    format!("{host}-{}", std::process::id())
}

/// The clusters this pooler follows, one follower task each, started on first use.
pub struct Topology {
    connect: Connect,
    dcs_timeout: Duration,
    clusters: Mutex<HashMap<String, Followed>>,
    stop: watch::Sender<bool>,
}

/// One followed cluster: its views, and the views each route applied.
struct Followed {
    views: watch::Receiver<Arc<ClusterView>>,
    applied: Arc<Applied>,
}

/// What each route reports (dropped routes count no more), and the follower's wake-up
/// when one reports.
#[derive(Default)]
struct Applied {
    routes: Mutex<Vec<std::sync::Weak<RouteReport>>>,
    reported: tokio::sync::Notify,
}

/// One route's report: the last view it applied, and whether it has no transaction
/// left on the primary while a switchover is pending.
#[derive(Default)]
struct RouteReport {
    number: AtomicU64,
    drained: std::sync::atomic::AtomicBool,
}

/// A route's receipt: report each view once applied, and when drained.
pub struct Receipt {
    report: Arc<RouteReport>,
    applied: Arc<Applied>,
}

impl Receipt {
    /// `view` is applied; `drained`: no transaction of this route is left on the
    /// primary (always true unless a switchover is pending).
    pub fn applied(&self, view: &ClusterView, drained: bool) {
        self.report.drained.store(drained, Ordering::Release);
        self.report.number.store(view.number, Ordering::Release);
        self.applied.reported.notify_one();
    }
}

impl Topology {
    /// Followers connect with `connect` and count the DCS as unreadable after
    /// `dcs_timeout` without an answer.
    pub fn new(connect: Connect, dcs_timeout: Duration) -> Topology {
        Topology {
            connect,
            dcs_timeout,
            clusters: Mutex::new(HashMap::new()),
            stop: watch::channel(false).0,
        }
    }

    /// Followers of clusters in the etcd the store section names.
    pub fn etcd(store: &ClusterConfig) -> Topology {
        let etcd3 = store.etcd3.clone();
        let namespace = store.namespace.clone();
        let timeout = store.dcs_timeout;
        let connect: Connect = Arc::new(move |scope: String| {
            let (etcd3, namespace) = (etcd3.clone(), namespace.clone());
            Box::pin(async move {
                // Its name is the pooler's id under `poolers/`: host and process.
                let member = pooler_id();
                // The certificate files are read at each connection (so renewed ones
                // are picked up); the service checked them at start.
                let access = etcd3.access().map_err(|e| e.to_string())?;
                // Its key's lease: twice `dcs_timeout`, by when a pooler that cannot
                // renew it has stopped routing writes (after `dcs_timeout`).
                EtcdDcs::connect_with(&access, &namespace, &scope, &member, timeout * 2, timeout)
                    .await
                    .map(|d| Arc::new(d) as Arc<dyn Dcs>)
                    .map_err(|e| e.to_string())
            })
        });
        Topology::new(connect, timeout)
    }

    /// The view of `scope`, followed from now on (inside a Tokio runtime), and the
    /// receipt on which the caller says which view it applied: the pooler acknowledges
    /// a view to the cluster only once every route applied it.
    pub fn follow(&self, scope: &str) -> (watch::Receiver<Arc<ClusterView>>, Receipt) {
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        let followed = clusters.entry(scope.to_string()).or_insert_with(|| {
            let (tx, rx) = watch::channel(Arc::new(ClusterView {
                scope: scope.to_string(),
                problem: Some("the DCS has not been read yet".into()),
                ..ClusterView::default()
            }));
            let applied = Arc::new(Applied::default());
            tokio::spawn(follow_cluster(
                scope.to_string(),
                self.connect.clone(),
                self.dcs_timeout,
                tx,
                applied.clone(),
                self.stop.subscribe(),
            ));
            Followed { views: rx, applied }
        });
        let report = Arc::new(RouteReport::default());
        lock(&followed.applied.routes).push(Arc::downgrade(&report));
        let receipt = Receipt {
            report,
            applied: followed.applied.clone(),
        };
        (followed.views.clone(), receipt)
    }

    /// Stop every follower.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long the follower waits for the routes to apply a view before acknowledging
/// what they have applied (they do so at once; this bounds a stuck one).
const APPLY_WAIT: Duration = Duration::from_secs(1);

/// Whether every live route applied view `number` (`.0`) and is drained (`.1`).
fn routes_report(applied: &Applied, number: u64) -> (bool, bool) {
    let mut list = lock(&applied.routes);
    list.retain(|w| w.strong_count() > 0);
    let reports: Vec<Arc<RouteReport>> = list.iter().filter_map(|w| w.upgrade()).collect();
    let done = reports
        .iter()
        .all(|r| r.number.load(Ordering::Acquire) >= number);
    let drained = done && reports.iter().all(|r| r.drained.load(Ordering::Acquire));
    (done, drained)
}

/// Wait (up to [`APPLY_WAIT`]) until every live route applied view `number`.
async fn routes_applied(applied: &Applied, number: u64) -> bool {
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    loop {
        let notified = applied.reported.notified();
        if routes_report(applied, number).0 {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return routes_report(applied, number).0;
        }
    }
}

/// Read the cluster, publish its view, acknowledge it once the routes applied it, wait
/// for a change (or [`REFRESH`]); again, until `stop`. A DCS that does not answer for
/// `dcs_timeout` makes the view unreadable.
async fn follow_cluster(
    scope: String,
    connect: Connect,
    dcs_timeout: Duration,
    tx: watch::Sender<Arc<ClusterView>>,
    applied: Arc<Applied>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_read = Instant::now();
    let mut dcs: Option<Arc<dyn Dcs>> = None;
    // The leader key's value and when this follower first read it.
    let mut leader_seen: (Option<String>, Instant) = (None, Instant::now());
    while !*stop.borrow() {
        // Every wait below ends by the time the view must turn unreadable, so that the
        // pooler stops routing writes within `dcs_timeout` of its last read, well before
        // its key's lease (twice that) can run out and let a new leader promote.
        // (Once fenced, a read may take `dcs_timeout` again.)
        let fence_at = tokio::time::Instant::from_std(if last_read.elapsed() < dcs_timeout {
            last_read + dcs_timeout
        } else {
            Instant::now() + dcs_timeout
        });
        let step = async {
            let handle = match &dcs {
                Some(d) => d.clone(),
                None => {
                    let d = connect(scope.clone()).await?;
                    dcs = Some(d.clone());
                    d
                }
            };
            let cluster = handle.get_cluster().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((handle, cluster))
        };
        let outcome = tokio::time::timeout_at(fence_at, step)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {dcs_timeout:?}")));
        match outcome {
            Ok((handle, cluster)) => {
                last_read = Instant::now();
                let fence_at = tokio::time::Instant::from_std(last_read + dcs_timeout);
                let view = ClusterView::from_cluster(&scope, &cluster);
                let shown = publish(&tx, view);
                if routes_applied(&applied, shown.number).await {
                    let drained = routes_report(&applied, shown.number).1;
                    let state = PoolerState {
                        leader: shown.leader.clone(),
                        routes_to: shown.primary().map(|m| m.name.clone()),
                        drained_for: shown.switchover.filter(|_| drained),
                    };
                    let touched = tokio::time::timeout_at(fence_at, handle.touch_pooler(&state));
                    match touched.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            debug!(%scope, error = %e, "could not publish what the pooler routes by")
                        }
                        Err(_) => {
                            debug!(%scope, "could not publish what the pooler routes by in time")
                        }
                    }
                } else {
                    warn!(%scope, "a route did not apply the new view within {APPLY_WAIT:?}: \
                        not acknowledging it");
                }
                if shown.leader != leader_seen.0 {
                    leader_seen = (shown.leader.clone(), Instant::now());
                }
                let promoting = shown.leader.is_some()
                    && shown.primary().is_none()
                    && leader_seen.1.elapsed() < PROMOTION_WATCH;
                let refresh = if promoting {
                    PROMOTION_REFRESH
                } else {
                    REFRESH
                };
                tokio::select! {
                    _ = handle.watch(refresh) => {}
                    _ = tokio::time::sleep(refresh) => {}
                    // A route drained for a switchover: say so at once.
                    _ = applied.reported.notified(), if shown.switchover.is_some() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            Err(e) => {
                dcs = None;
                if last_read.elapsed() >= dcs_timeout {
                    let mut view = (**tx.borrow()).clone();
                    if view.dcs_readable {
                        warn!(%scope, error = %e, ?dcs_timeout,
                            "cannot read the DCS: no primary until it answers again");
                    }
                    view.dcs_readable = false;
                    view.problem = Some(format!("cannot read the DCS: {e}"));
                    publish(&tx, view);
                } else {
                    debug!(%scope, error = %e, "DCS read failed; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT_AFTER) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }
    }
}

/// Send `view` if it differs from the last one (subscribers wake only on a change),
/// numbered after it; returns the view now current.
fn publish(tx: &watch::Sender<Arc<ClusterView>>, mut view: ClusterView) -> Arc<ClusterView> {
    tx.send_if_modified(|current| {
        view.number = current.number;
        if **current == view {
            return false;
        }
        view.number = current.number + 1;
        let old_leader = current.primary().map(|m| m.name.clone());
        let new_leader = view.primary().map(|m| m.name.clone());
        if old_leader != new_leader {
            info!(scope = %view.scope, from = ?old_leader, to = ?new_leader, "primary changed");
        }
        *current = Arc::new(view.clone());
        true
    });
    tx.borrow().clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgherd_dcs::{ClusterStatus, Member as DcsMember, MemberData, Tags, Versioned};

    fn member(name: &str, port: u16, state: &str, xlog: u64, noloadbalance: bool) -> DcsMember {
        DcsMember {
            name: name.into(),
            data: MemberData {
                conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
                state: state.into(),
                role: if state == "running" {
                    "primary"
                } else {
                    "replica"
                }
                .into(),
                xlog_location: Some(xlog),
                tags: Tags {
                    noloadbalance,
                    ..Tags::default()
                },
                ..MemberData::default()
            },
        }
    }

    fn cluster() -> Cluster {
        Cluster {
            leader: Some(Versioned {
                value: "a".into(),
                version: 1,
            }),
            members: vec![
                member("a", 5001, "running", 1000, false),
                member("b", 5002, "streaming", 990, false),
                member("c", 5003, "streaming", 100, false),
                member("d", 5004, "streaming", 1000, true),
                member("e", 5005, "stopped", 1000, false),
            ],
            status: Some(ClusterStatus {
                optime: 1000,
                ..ClusterStatus::default()
            }),
            ..Cluster::default()
        }
    }

    #[test]
    fn the_primary_is_the_running_leader_while_the_dcs_is_readable() {
        let mut c = cluster();
        c.members[0].data.role = "replica".into();
        let view = ClusterView::from_cluster("s", &c);
        assert_eq!(
            view.primary(),
            None,
            "a leader not promoted yet takes no writes"
        );
        let mut view = ClusterView::from_cluster("s", &cluster());
        assert_eq!(view.primary().map(|m| m.port), Some(5001));
        view.dcs_readable = false;
        assert_eq!(view.primary(), None, "no DCS: nobody is known to lead");
    }

    fn spec(role: RouteRole, max_lag: Option<u64>, fallback: Fallback) -> RouteSpec {
        RouteSpec {
            scope: "s".into(),
            role,
            max_lag,
            fallback,
            balance: Default::default(),
        }
    }

    #[test]
    fn routes_name_the_members_of_their_role() {
        let view = ClusterView::from_cluster("s", &cluster());
        let names = |spec: RouteSpec| {
            view.route_members(&spec)
                .iter()
                .map(|m| m.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(spec(RouteRole::Primary, None, Fallback::Primary)),
            ["a"]
        );
        assert_eq!(
            names(spec(RouteRole::Any, Some(10), Fallback::Primary)),
            ["a", "b"]
        );
        // No replica close enough: the primary, or nobody.
        assert_eq!(
            names(spec(RouteRole::Replica, Some(1), Fallback::Primary)),
            ["a"]
        );
        assert!(names(spec(RouteRole::Replica, Some(1), Fallback::None)).is_empty());
    }

    #[test]
    fn reads_go_to_running_replicas_within_the_lag_not_tagged_noloadbalance() {
        let view = ClusterView::from_cluster("s", &cluster());
        let names = |max| {
            view.readable_replicas(max)
                .iter()
                .map(|m| m.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(None), ["b", "c"]);
        assert_eq!(names(Some(100)), ["b"]);
    }
}
