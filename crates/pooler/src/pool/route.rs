//! Where a pool's new servers log in when a cluster route drives it: the members the
//! route names now ([`Endpoint`]s), chosen per login; servers on a member the route
//! dropped are closed (idle ones at once, lent ones when they come back, or at once when
//! the primary changed); with no member to go to the pool holds its clients, who wait
//! (counted in `cl_waiting`) up to `query_wait_timeout`.

use super::{lock, read, write, Pool, ServerState};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How long a member that refused a login is skipped. The DCS usually says sooner that
/// it is gone (a new leader key); until then its clients wait instead of failing.
pub const ENDPOINT_RETRY: Duration = Duration::from_secs(1);

/// One member a routed pool may log in to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub member: String,
    pub host: String,
    pub port: u16,
}

pub use crate::config::Balance;

impl Pool {
    /// Route new logins to `endpoints` from now on. Servers on members no longer named
    /// are closed: idle ones now, lent ones when given back — or at once with `sever`
    /// (the primary changed: a transaction there must not go on). No endpoint: clients
    /// wait until one appears.
    pub fn route_to(self: &Arc<Self>, endpoints: Vec<Endpoint>, balance: Balance, sever: bool) {
        let old = write(&self.routing).replace((Arc::from(endpoints), balance));
        lock(&self.down).clear();
        let dropped = old.is_some_and(|(old, _)| old.iter().any(|e| self.routed_away(e)));
        if dropped {
            let lent: Vec<_> = lock(&self.servers)
                .values()
                .filter(|s| s.state == ServerState::Active)
                .filter(|s| s.endpoint.as_ref().is_some_and(|e| self.routed_away(e)))
                .map(|s| (s.id, s.severance.clone()))
                .collect();
            if sever {
                self.moves.send_modify(|n| *n += 1);
                for (id, severance) in lent {
                    debug!(pool = ?self.key, server = id, "closing a lent server on a member \
                        the route no longer names");
                    if let Some(s) = severance {
                        s.sever();
                    }
                }
            }
            let doomed = lock(&self.queue).remove_idle(|p, _| {
                p.ticket
                    .endpoint
                    .as_ref()
                    .is_some_and(|e| self.routed_away(e))
            });
            super::close_in_background(doomed);
        }
        self.refresh_held();
        self.hand_off();
    }

    /// `endpoint` refused a login: skip it for [`ENDPOINT_RETRY`]; with no other
    /// endpoint, clients wait meanwhile.
    pub(super) fn endpoint_down(&self, endpoint: &Endpoint, why: &str) {
        if lock(&self.reported_down).insert(endpoint.clone()) {
            warn!(pool = ?self.key, member = %endpoint.member, %why,
                "cannot log in to the member: skipping it for {ENDPOINT_RETRY:?} at a time");
        } else {
            debug!(pool = ?self.key, member = %endpoint.member, %why,
                "cannot log in to the member yet");
        }
        lock(&self.down).insert(endpoint.clone(), Instant::now() + ENDPOINT_RETRY);
        self.refresh_held();
    }

    /// A login on `endpoint` worked: a later refusal there is news again.
    pub(super) fn endpoint_up(&self, endpoint: &Endpoint) {
        if lock(&self.reported_down).remove(endpoint) {
            info!(pool = ?self.key, member = %endpoint.member, "the member takes logins again");
        }
    }

    /// A switchover is pending (`true`) or over: while it is, new transactions wait and
    /// running ones finish, so that the old primary stops with none of ours open.
    pub fn set_draining(&self, draining: bool) {
        if draining != self.draining.swap(draining, Ordering::AcqRel) {
            if draining {
                self.moves.send_modify(|n| *n += 1);
            }
            info!(pool = ?self.key, draining, "switchover: {}",
                if draining { "holding new transactions" } else { "no longer holding" });
        }
        self.refresh_held();
    }

    /// Recompute whether clients must wait (draining for a switchover, no endpoint, or
    /// all of them down); a pool that stops holding serves its waiting clients.
    pub(super) fn refresh_held(&self) {
        // One read of `routing` at a time: a second one in the same expression could
        // wait behind a writer that waits for the first.
        let routed = read(&self.routing).is_some();
        let held =
            routed && (self.draining.load(Ordering::Acquire) || self.usable_endpoints().is_empty());
        if held != self.held.swap(held, Ordering::AcqRel) {
            info!(pool = ?self.key, held, "route: clients {}",
                if held { "wait for a server to route to" } else { "are served again" });
            if !held {
                self.hand_off();
            }
        }
    }

    /// The routed endpoints not skipped for a refused login.
    fn usable_endpoints(&self) -> Vec<Endpoint> {
        let Some((list, _)) = read(&self.routing).clone() else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut down = lock(&self.down);
        down.retain(|_, until| *until > now);
        list.iter()
            .filter(|e| !down.contains_key(*e))
            .cloned()
            .collect()
    }

    /// Tells session-mode clients of a routed pool when to leave their server between
    /// transactions: the primary moved (their server was cut) or a switchover began
    /// (the old primary is about to stop). `None`: a static pool, whose servers stay.
    pub fn moves(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        read(&self.routing)
            .is_some()
            .then(|| self.moves.subscribe())
    }

    /// The members a routed pool logs in to now (`None`: a static pool).
    pub fn routed_endpoints(&self) -> Option<Vec<Endpoint>> {
        read(&self.routing).as_ref().map(|(list, _)| list.to_vec())
    }

    /// Clients wait: the route names no member that takes logins now, or a switchover
    /// drains the pool.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// A routed pool no longer names `endpoint` (a static pool names everything).
    pub(super) fn routed_away(&self, endpoint: &Endpoint) -> bool {
        read(&self.routing)
            .as_ref()
            .is_some_and(|(list, _)| !list.contains(endpoint))
    }

    /// The endpoint for the next login of a routed pool: `None` for a static pool,
    /// `Some(None)` when the route names nobody.
    pub(super) fn next_endpoint(&self) -> Option<Option<Endpoint>> {
        let balance = read(&self.routing).as_ref()?.1;
        let list = self.usable_endpoints();
        if list.is_empty() {
            return Some(None);
        }
        let turn = self.next_endpoint.fetch_add(1, Ordering::Relaxed);
        let chosen = match balance {
            Balance::RoundRobin => &list[turn % list.len()],
            Balance::LeastConnections => {
                let servers = lock(&self.servers);
                let count = |e: &Endpoint| {
                    servers
                        .values()
                        .filter(|s| s.endpoint.as_ref() == Some(e))
                        .count()
                };
                let fewest = list.iter().map(count).min().unwrap_or(0);
                let tied: Vec<&Endpoint> = list.iter().filter(|e| count(e) == fewest).collect();
                tied[turn % tied.len()]
            }
        };
        Some(Some(chosen.clone()))
    }
}
