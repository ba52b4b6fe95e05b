//! The agent loop: observe → decide → act → publish.
//!
//! All judgement lives in [`decide`]; this module only gathers observations, carries
//! out actions, and publishes the member's state. An action that does not succeed stops
//! the rest of the tick's list, and the loop observes again at once.

use crate::decide::{
    decide, history_after_promotion, Action, AgentMemory, DataDirState, DemoteMode, FailsafeRound,
    HaConfig, LocalPg, MemberRequest, Millis, Observation, PeerStatus, Standby, SyncSetting,
    SynchronousMode,
};
use crate::dynamic;
use crate::fence::Fence;
use crate::operator::{self, Answer, Command, ScheduledRestart};
use crate::spec::NodeSpec;
use crate::status::{Role, SharedStatus};
use crate::watchdog::{Watchdog, WatchdogMode};
use pgherd_dcs::{Cluster, ClusterStatus, Dcs, DcsError, MemberData};
use pgherd_postgres::{
    self as pg, ConnInfo, Instance, PgError, PostmasterStatus, StandbyConfig, StopMode,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

/// How long an operator's callback may run before it is killed.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the agent looks whether its postmaster still runs, between ticks.
const POSTMASTER_CHECK: Duration = Duration::from_millis(250);

/// How often a replica that does not stream yet looks again.
const STREAM_CHECK: Duration = Duration::from_secs(1);

/// How many times in a row a tick may ask to be repeated at once before the loop sleeps.
const MAX_IMMEDIATE_RETICKS: u32 = 5;

/// Why an action did not go through.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Dcs(#[from] DcsError),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error("{0}")]
    Other(String),
}

/// The node agent of one member.
pub struct Agent {
    spec: NodeSpec,
    dcs: Arc<dyn Dcs>,
    pg: Instance,
    memory: AgentMemory,
    status: SharedStatus,
    client: Option<tokio_postgres::Client>,
    http: reqwest::Client,
    epoch: Instant,
    /// The effective dynamic configuration, from the DCS `config` key.
    dynamic: dynamic::Dynamic,
    /// Parameters last written to postgresql.conf, to notice changes.
    written_parameters: Option<BTreeMap<String, String>>,
    /// A DCS call failed during the last actions: skip the (slow) read next tick.
    dcs_just_failed: bool,
    /// Since when PostgreSQL has had a postmaster that does not accept connections.
    unresponsive_since: Option<Instant>,
    system_identifier: Option<String>,
    /// While this member leads: until when its lease surely runs (send time of the last
    /// successful acquire/renew + ttl).
    lease_expires: Option<Instant>,
    /// The standby's WAL receiver streamed at the last look.
    streaming: bool,
    /// The highest timeline this standby reported, and the postmaster start time it
    /// belongs to.
    standby_timeline_seen: Option<(String, u32)>,
    /// The reason of the last `Wait`, to log each new one once.
    last_wait_reason: Option<String>,
    /// The actions of the previous tick, so a leader's heartbeat (renew, keep slots)
    /// is logged when it starts rather than every loop_wait.
    last_actions: Vec<Action>,
    /// Operator commands from the REST API, until `run` takes them.
    commands: Option<mpsc::Receiver<Command>>,
    /// `synchronous_standby_names` as the HA loop wants it on this primary (synchronous
    /// mode); `None`: not managed, the configured value applies.
    sync_standbys: Option<SyncSetting>,
    /// The operator's request this tick carries out, and where the answer goes (none for
    /// a scheduled restart).
    pending: Option<Pending>,
    scheduled_restart: Option<ScheduledRestart>,
    /// When pre_promote last vetoed a promotion.
    vetoed_at: Option<Instant>,
    /// The fencer process: kills PostgreSQL if this agent stops renewing its lease.
    fence: Option<Fence>,
    /// The watchdog device, open while this member leads.
    watchdog: Option<Watchdog>,
    /// Why the watchdog device cannot be used, once logged.
    watchdog_unusable: Option<String>,
}

/// An operator's request waiting for the next tick.
struct Pending {
    request: MemberRequest,
    reply: Option<oneshot::Sender<Answer>>,
}

impl Agent {
    /// `http` calls the other members' REST APIs (built for `spec.client_tls`).
    pub fn new(
        spec: NodeSpec,
        dcs: Arc<dyn Dcs>,
        status: SharedStatus,
        http: reqwest::Client,
    ) -> Self {
        let pg = Instance::new(spec.instance.clone());
        let dynamic = dynamic::apply(&spec.ha, None);
        dcs.set_ttl(Duration::from_millis(spec.ha.ttl));
        dcs.set_retry_timeout(Duration::from_millis(spec.ha.retry_timeout));
        let fence = match (&spec.watchdog.fencer, spec.watchdog.mode) {
            (Some(program), WatchdogMode::Automatic | WatchdogMode::Required) => {
                match Fence::start(program, &spec.instance.data_dir) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        tracing::error!(member = %spec.name, error = %e, "cannot start the fencer: PostgreSQL is not fenced if this agent freezes");
                        None
                    }
                }
            }
            _ => None,
        };
        Agent {
            spec,
            dcs,
            pg,
            memory: AgentMemory::default(),
            status,
            client: None,
            http,
            epoch: Instant::now(),
            dynamic,
            written_parameters: None,
            dcs_just_failed: false,
            unresponsive_since: None,
            system_identifier: None,
            lease_expires: None,
            streaming: false,
            standby_timeline_seen: None,
            last_wait_reason: None,
            last_actions: Vec::new(),
            commands: None,
            sync_standbys: None,
            pending: None,
            scheduled_restart: None,
            vetoed_at: None,
            fence,
            watchdog: None,
            watchdog_unusable: None,
        }
    }

    /// The handle through which the REST API sends this agent operator commands.
    pub fn handle(&mut self) -> operator::AgentHandle {
        let (handle, commands) = operator::channel();
        self.commands = Some(commands);
        handle
    }

    /// Take an operator command: a request runs on the next tick (one at a time).
    fn accept(&mut self, command: Command) {
        match command {
            Command::Now { request, reply } => {
                if self.pending.is_some() {
                    let _ = reply.send(Err("another request is being carried out".into()));
                    return;
                }
                info!(member = %self.spec.name, ?request, "operator request");
                self.pending = Some(Pending {
                    request,
                    reply: Some(reply),
                });
            }
            Command::ScheduleRestart {
                at,
                pending_only,
                reply,
            } => {
                if self.scheduled_restart.is_some() {
                    let _ = reply.send(Err("another restart is already scheduled".into()));
                    return;
                }
                info!(member = %self.spec.name, at = %iso8601(at), pending_only, "restart scheduled");
                self.scheduled_restart = Some(ScheduledRestart { at, pending_only });
                let _ = reply.send(Ok(format!("restart scheduled at {}", iso8601(at))));
            }
            Command::CancelScheduledRestart { reply } => {
                let answer = match self.scheduled_restart.take() {
                    Some(_) => Ok("scheduled restart deleted".to_string()),
                    None => Err("no restart is scheduled".to_string()),
                };
                let _ = reply.send(answer);
            }
        }
    }

    /// A scheduled restart that is due becomes the pending request.
    fn start_due_restart(&mut self) {
        let Some(s) = self.scheduled_restart else {
            return;
        };
        if self.pending.is_some() || s.at > crate::manual::unix_now() {
            return;
        }
        self.scheduled_restart = None;
        if s.pending_only && !self.status.get().pending_restart {
            info!(member = %self.spec.name, "scheduled restart skipped: no parameter needs a restart");
            return;
        }
        self.pending = Some(Pending {
            request: MemberRequest::Restart,
            reply: None,
        });
    }

    /// Answer the pending request, if any.
    fn answer_pending(&mut self, answer: Answer) {
        if let Some(p) = self.pending.take() {
            match &answer {
                Ok(m) => {
                    info!(member = %self.spec.name, request = ?p.request, result = %m, "operator request done")
                }
                Err(e) => {
                    warn!(member = %self.spec.name, request = ?p.request, error = %e, "operator request not done")
                }
            }
            if let Some(reply) = p.reply {
                let _ = reply.send(answer);
            }
        }
    }

    /// Time kept in hand for a demotion (a fast stop) before the lease runs out.
    fn demote_budget(&self) -> Duration {
        Duration::from_millis((self.dynamic.ha.ttl / 4).clamp(1_000, 5_000))
    }

    /// While leading, the instant by which every DCS call must have answered: after it a
    /// demotion could no longer finish before the lease expires and another member may
    /// take over. `None` when not leading.
    fn dcs_cutoff(&self) -> Option<Instant> {
        self.lease_expires
            .map(|e| e.checked_sub(self.demote_budget()).unwrap_or(e))
    }

    /// Run a DCS call, cut short at the lease cutoff while leading (DESIGN §3 rule 1;
    /// `loop_wait + 2*retry_timeout <= ttl` alone does not cover a renewal, a failed
    /// publish and a failed read in a row). A cut call counts as an unreachable DCS.
    async fn leased<T>(
        &self,
        call: impl std::future::Future<Output = pgherd_dcs::Result<T>>,
    ) -> pgherd_dcs::Result<T> {
        let Some(cutoff) = self.dcs_cutoff() else {
            return call.await;
        };
        match tokio::time::timeout_at(cutoff.into(), call).await {
            Ok(result) => result,
            Err(_) => Err(DcsError::Unreachable(
                "the leader lease would run out before the DCS answered".into(),
            )),
        }
    }

    /// Record a successful acquire/renew that was sent at `sent`.
    fn lease_renewed(&mut self, sent: Instant) {
        self.lease_expires = Some(sent + Duration::from_millis(self.dynamic.ha.ttl));
        self.memory.last_leader_renewal = Some(self.now());
        self.status.update(|s| s.lease_renewals += 1);
        self.guard_lease();
    }

    fn lease_lost(&mut self) {
        self.lease_expires = None;
        self.memory.last_leader_renewal = None;
        self.unguard();
    }

    /// While leading (and not paused): arm the fencer to kill PostgreSQL halfway
    /// between our own demotion cutoff and the lease's end — only an agent that missed
    /// its cutoff gets there — and feed the watchdog device.
    fn guard_lease(&mut self) {
        let Some(expires) = self.lease_expires else {
            return self.unguard();
        };
        if self.dynamic.ha.paused || self.spec.watchdog.mode == WatchdogMode::Off {
            // Patroni disables the watchdog in maintenance mode: nobody takes over then.
            return self.unguard();
        }
        let margin = self.demote_budget() / 2;
        if let Some(fence) = &mut self.fence {
            fence.arm(expires.checked_sub(margin).unwrap_or(expires));
        }
        if let Some(watchdog) = &mut self.watchdog {
            if let Err(e) = watchdog.keepalive() {
                warn!(member = %self.spec.name, error = %e, "watchdog: keepalive failed");
            }
            return;
        }
        let device = self.spec.watchdog.device.clone();
        let timeout = self
            .spec
            .watchdog
            .device_timeout(Duration::from_millis(self.dynamic.ha.ttl));
        let opened = crate::watchdog::check_usable(&device)
            .and_then(|()| Watchdog::activate(&device, timeout).map_err(|e| e.to_string()));
        match opened {
            Ok(w) => {
                info!(member = %self.spec.name, device = %device.display(), timeout_secs = timeout.as_secs(), "watchdog activated");
                self.watchdog = Some(w);
                self.watchdog_unusable = None;
            }
            Err(why) => {
                if self.watchdog_unusable.as_deref() != Some(why.as_str()) {
                    let fenced = if self.fence.is_some() {
                        "the fencer process guards the lease instead"
                    } else {
                        "nothing stops PostgreSQL if this agent freezes"
                    };
                    warn!(member = %self.spec.name, device = %device.display(), reason = %why, "watchdog device not usable; {fenced}");
                    self.watchdog_unusable = Some(why);
                }
            }
        }
    }

    /// Not leading (or demoting by ourselves): stand the fencer and the watchdog down.
    fn unguard(&mut self) {
        if let Some(fence) = &mut self.fence {
            fence.disarm();
        }
        if let Some(w) = self.watchdog.take() {
            w.disable();
            info!(member = %self.spec.name, "watchdog disabled");
        }
    }

    fn now(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    /// Run until `shutdown` turns true; then stop PostgreSQL and give up the leader key,
    /// as Patroni does on a clean shutdown.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        info!(member = %self.spec.name, scope = %self.spec.scope, "agent starting");
        let mut commands = self.commands.take();
        let mut immediate = 0u32;
        loop {
            if *shutdown.borrow() {
                break;
            }
            self.start_due_restart();
            let again = self.tick().await;
            if again && immediate < MAX_IMMEDIATE_RETICKS {
                immediate += 1;
                continue;
            }
            immediate = 0;
            let mut wait = Duration::from_millis(self.dynamic.ha.loop_wait);
            if let Some(due) = self.until_scheduled_request() {
                wait = wait.min(due);
            }
            if self.awaiting_stream() {
                // Publish "streaming" soon after re-pointing, not a loop later: a
                // switchover to this member is judged by what it publishes.
                wait = wait.min(STREAM_CHECK);
            }
            if let Some(s) = self.scheduled_restart {
                let secs = (s.at - crate::manual::unix_now()).max(0) as u64;
                wait = wait.min(Duration::from_secs(secs));
            }
            if let Some(cutoff) = self.dcs_cutoff() {
                // A leader wakes in time to renew, or to demote at the cutoff.
                wait = wait.min(cutoff.saturating_duration_since(Instant::now()));
            }
            let command = tokio::select! {
                _ = self.wait_for_change(wait) => None,
                _ = self.postmaster_exit() => None,
                _ = shutdown.changed() => None,
                c = next_command(&mut commands) => c,
            };
            if let Some(c) = command {
                self.accept(c);
            }
        }
        self.answer_pending(Err("the agent is shutting down".into()));
        self.shutdown().await;
    }

    /// Resolves when a postmaster that ran at the last tick has gone (a crash is acted on
    /// at once, not a loop later); never while none runs.
    async fn postmaster_exit(&self) {
        if !self.status.get().running || self.pg.postmaster_pid().is_none() {
            return std::future::pending().await;
        }
        while self.pg.postmaster_pid().is_some() {
            tokio::time::sleep(POSTMASTER_CHECK).await;
        }
        info!(member = %self.spec.name, "PostgreSQL's postmaster exited");
    }

    /// Run an `on_*` callback in the background (`script action role scope`), bounded by
    /// CALLBACK_TIMEOUT, its output logged: the HA loop does not wait for it.
    fn callback(&self, action: &'static str, role: Role) {
        tokio::spawn(self.run_callback(action, role));
    }

    /// The callback `action` as a future that runs it and logs the outcome.
    fn run_callback(
        &self,
        action: &'static str,
        role: Role,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let argv = self.spec.callbacks.get(action).map(|argv| {
            let mut argv = argv.clone();
            argv.extend([
                action.to_string(),
                role.as_str().to_string(),
                self.spec.scope.clone(),
            ]);
            argv
        });
        let os_user = self.spec.instance.os_user.clone();
        let member = self.spec.name.clone();
        async move {
            let Some(argv) = argv else {
                return;
            };
            match pg::run_script(&argv, os_user.as_ref(), CALLBACK_TIMEOUT).await {
                Ok(out) => info!(%member, callback = action,
                    output = %String::from_utf8_lossy(&out.stdout).trim(), "callback ran"),
                Err(e) => warn!(%member, callback = action, error = %e, "callback failed"),
            }
        }
    }

    /// `pre_promote`, waited for: a non-zero exit (or a timeout) vetoes the promotion.
    async fn pre_promote(&self) -> Result<(), ActionError> {
        let Some(argv) = self.spec.callbacks.pre_promote.as_ref() else {
            return Ok(());
        };
        let mut argv = argv.clone();
        argv.extend([
            "pre_promote".to_string(),
            Role::Replica.as_str().to_string(),
            self.spec.scope.clone(),
        ]);
        let out = pg::run_script(&argv, self.spec.instance.os_user.as_ref(), CALLBACK_TIMEOUT)
            .await
            .map_err(|e| ActionError::Other(format!("pre_promote vetoed the promotion: {e}")))?;
        info!(member = %self.spec.name, output = %String::from_utf8_lossy(&out.stdout).trim(), "pre_promote allowed the promotion");
        Ok(())
    }

    /// Our pre_promote vetoed a promotion less than a ttl ago.
    fn promotion_vetoed(&self) -> bool {
        self.vetoed_at
            .is_some_and(|at| at.elapsed() < Duration::from_millis(self.dynamic.ha.ttl))
    }

    /// A running replica of another leader whose WAL receiver does not stream yet.
    fn awaiting_stream(&self) -> bool {
        let s = self.status.get();
        let leader = s
            .cluster
            .as_ref()
            .and_then(|c| c.leader_name().map(str::to_string));
        s.running && s.in_recovery && !self.streaming && leader.is_some_and(|l| l != self.spec.name)
    }

    /// Time left until a scheduled switchover is due, so the leader wakes for it.
    fn until_scheduled_request(&self) -> Option<Duration> {
        let cluster = self.status.get().cluster?;
        let at = cluster.failover?.value.scheduled_at?;
        let secs = crate::manual::parse_time(&at)? - crate::manual::unix_now();
        Some(Duration::from_secs(secs.max(0) as u64 + 1))
    }

    /// Sleep up to `wait`, waking early when the cluster's keys change.
    async fn wait_for_change(&self, wait: Duration) {
        let started = Instant::now();
        match self.leased(self.dcs.watch(wait)).await {
            Ok(true) => {
                // Let a burst of changes settle so one tick sees them all.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(false) => {}
            Err(_) => {
                // An unreachable DCS answers fast: do not spin.
                tokio::time::sleep(wait.saturating_sub(started.elapsed())).await;
            }
        }
    }

    async fn shutdown(&mut self) {
        info!(member = %self.spec.name, "agent shutting down: stopping PostgreSQL");
        let was_running = self.pg.postmaster_pid().is_some();
        let role = self.status.get().role;
        if self.lease_expires.is_some() && self.pg.postmaster_pid().is_some() {
            // As in a switchover: the replicas receive every WAL record on the way down
            // and learn where it ends, so one of them takes over within a loop.
            if let Err(e) = self.step_down().await {
                warn!(error = %e, "clean step-down failed; stopping anyway");
            }
        }
        if let Err(e) = self.pg.stop(StopMode::Fast, self.spec.pg_ctl_timeout).await {
            warn!(error = %e, "stopping PostgreSQL failed");
        }
        self.unguard();
        if was_running {
            // Waited for: the process ends right after.
            self.run_callback("on_stop", role).await;
        }
        if self.lease_expires.take().is_some() {
            match self.dcs.delete_leader().await {
                Ok(_) => info!("released the leader key"),
                Err(e) => warn!(error = %e, "could not release the leader key"),
            }
        }
        let _ = self.dcs.delete_member().await;
    }

    /// One pass of observe → decide → act → publish. Returns true when the loop should
    /// observe again at once (an action failed, or peers were asked).
    pub async fn tick(&mut self) -> bool {
        let past_cutoff = self.dcs_cutoff().is_some_and(|c| Instant::now() >= c);
        if past_cutoff && self.pg.postmaster_pid().is_none() {
            // No renewal can go out in time any more (the agent was frozen and fenced,
            // or the DCS too slow) and no PostgreSQL runs to demote: stop counting on
            // the lease. (A running one is demoted first: every DCS call is cut now.)
            warn!(member = %self.spec.name, "the leader lease was not renewed before its cutoff: no longer counting on it");
            self.lease_lost();
        }
        let mut obs = match self.observe().await {
            Ok(o) => o,
            Err(reason) => {
                self.answer_pending(Err(format!("not now: {reason}")));
                if self.last_wait_reason.as_deref() != Some(reason.as_str()) {
                    info!(member = %self.spec.name, %reason, "waiting");
                    self.last_wait_reason = Some(reason);
                }
                self.last_actions.clear();
                self.publish(None).await;
                return false;
            }
        };
        let cfg = self.dynamic.ha.clone();
        let mut plan = decide(&obs, &cfg);
        if plan.iter().any(|(a, _)| *a == Action::AskPeers) {
            let peers = self.ask_peers(obs.cluster.as_ref()).await;
            obs.peers = Some(peers);
            plan = decide(&obs, &cfg);
        }
        if plan.iter().any(|(a, _)| *a == Action::AskFailsafe) {
            obs.failsafe = Some(self.ask_failsafe().await);
            plan = decide(&obs, &cfg);
        }
        // The leader's heartbeat (renew, keep slots) is the decision only when it is all.
        let heartbeat = |a: &Action| matches!(a, Action::RenewLeader | Action::EnsureSlots(_));
        let telling = plan.iter().find(|(a, _)| !heartbeat(a)).or(plan.first());
        if let Some((action, reason)) = telling {
            let decision = (action.name().to_string(), reason.clone());
            self.status.update(|s| s.last_decision = Some(decision));
        }
        let mut again = false;
        let mut acted = Vec::new();
        // Without the request's own action in the plan, the first reason says why not.
        let mut answer: Answer = Err(plan.first().map(|(_, r)| r.clone()).unwrap_or_default());
        for (action, reason) in plan {
            let requested = action.is_operator_request();
            if matches!(action, Action::Reinitialize { .. }) {
                // A clone can take long: answer when it starts, as Patroni does.
                self.answer_pending(Ok("reinitialize started".into()));
            }
            if action == Action::Wait {
                // Every decision is logged with its reason; a wait repeated each tick
                // only once, so the log shows changes rather than the heartbeat.
                if self.last_wait_reason.as_deref() != Some(reason.as_str()) {
                    info!(member = %self.spec.name, %reason, "waiting");
                    self.last_wait_reason = Some(reason);
                } else {
                    debug!(member = %self.spec.name, %reason, "waiting");
                }
                continue;
            }
            self.last_wait_reason = None;
            if matches!(action, Action::AskPeers | Action::AskFailsafe) {
                // Asked already this tick; decide() wants another round.
                again = true;
                break;
            }
            if self.last_actions.contains(&action) {
                debug!(member = %self.spec.name, action = ?action, %reason, "acting");
            } else {
                info!(member = %self.spec.name, action = ?action, %reason, "acting");
            }
            acted.push(action.clone());
            match self.execute(&action, obs.cluster.as_ref(), &reason).await {
                Ok(true) if matches!(action, Action::AdoptRequest { .. }) => {
                    // Decide again from the rewritten request at once.
                    again = true;
                    break;
                }
                Ok(true) => {
                    if requested {
                        answer = Ok(reason.clone());
                    }
                }
                Ok(false) => {
                    info!(member = %self.spec.name, action = ?action, "did not go through; observing again");
                    answer = Err(format!("{action:?} did not go through"));
                    again = true;
                    break;
                }
                Err(e) => {
                    answer = Err(e.to_string());
                    warn!(member = %self.spec.name, action = ?action, error = %e, "action failed");
                    if matches!(e, ActionError::Dcs(_)) {
                        self.dcs_just_failed = true;
                    }
                    again = true;
                    break;
                }
            }
        }
        self.last_actions = acted;
        // Answer after publishing, so the API already shows the result.
        self.publish(obs.cluster.as_ref()).await;
        if obs.request.is_some() {
            self.answer_pending(answer);
        }
        again
    }

    // ----- observe -----

    async fn observe(&mut self) -> Result<Observation, String> {
        let cluster = if std::mem::take(&mut self.dcs_just_failed) {
            None
        } else {
            match self.leased(self.dcs.get_cluster()).await {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(member = %self.spec.name, error = %e, "cannot read the DCS");
                    None
                }
            }
        };
        if let Some(c) = &cluster {
            let now = self.now();
            self.memory.saw_cluster(c, now);
            self.apply_dynamic(c);
            self.status.update(|s| {
                s.cluster = Some(c.clone());
                s.dcs_last_seen = Some(SystemTime::now());
                s.failsafe_active = false;
            });
        }
        let local = self.observe_local().await?;
        if self.memory.sync_set_at_lsn.is_none() && local.running && !local.in_recovery {
            // A primary we did not configure in this process (the agent restarted): its
            // setting took effect no later than now, so a standby that flushed this far
            // holds every commit acknowledged before it.
            self.memory.sync_set_at_lsn = local.wal_lsn;
        }
        if let Some(c) = &cluster {
            let leads = c.leader_name() == Some(self.spec.name.as_str());
            let now = self.now();
            self.memory.saw_own_postgres(leads && !local.running, now);
            if !leads {
                // Failures count in a row, within one term as the leader.
                self.memory.failed_promotions = 0;
            }
        }
        if let (Some(c), true) = (&cluster, self.lease_expires.is_some()) {
            if c.leader_name() != Some(self.spec.name.as_str()) {
                self.lease_lost();
            }
        }
        let vetoed = self.promotion_vetoed();
        self.status.update(|s| s.promotion_vetoed = vetoed);
        Ok(Observation {
            now: self.now(),
            wall_clock_secs: crate::manual::unix_now(),
            me: self.spec.name.clone(),
            // After a pre_promote veto, for a ttl: neither race nor look like a candidate.
            my_tags_nofailover: self.spec.tags.nofailover || vetoed,
            local,
            cluster,
            peers: None,
            failsafe: None,
            failsafe_heard: self.failsafe_heard(),
            request: self.pending.as_ref().map(|p| p.request),
            memory: self.memory.clone(),
        })
    }

    fn apply_dynamic(&mut self, cluster: &Cluster) {
        let d = dynamic::apply(&self.spec.ha, cluster.config.as_ref().map(|v| &v.value));
        if d.ha.ttl != self.dynamic.ha.ttl {
            self.dcs.set_ttl(Duration::from_millis(d.ha.ttl));
        }
        if d.ha.retry_timeout != self.dynamic.ha.retry_timeout {
            self.dcs
                .set_retry_timeout(Duration::from_millis(d.ha.retry_timeout));
        }
        if d != self.dynamic {
            info!(member = %self.spec.name, ha = ?d.ha, "dynamic configuration applied");
        }
        let settings = dynamic::ha_settings(
            &default_ha_config(),
            &self.spec.ha,
            &d.ha,
            cluster.config.as_ref().map(|v| &v.value),
        );
        let shown = settings
            .into_iter()
            .map(|(name, value, source)| (name, value, source.as_str()))
            .collect();
        self.status.update(|s| s.ha_settings = shown);
        self.dynamic = d;
    }

    /// Local PostgreSQL state. `Err` means "nothing sensible can be decided this tick".
    async fn observe_local(&mut self) -> Result<LocalPg, String> {
        let state = self.pg.data_dir_state().map_err(|e| e.to_string())?;
        if state != pg::DataDirState::Initialized {
            self.client = None;
            self.system_identifier = None;
            return Ok(LocalPg {
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
            });
        }
        if self.pg.postmaster_pid().is_some() {
            match self.query_running().await {
                Ok(local) => {
                    self.unresponsive_since = None;
                    return Ok(local);
                }
                Err(e) if self.pg.postmaster_status() == Some(PostmasterStatus::Starting) => {
                    // Recovering towards a consistent state (a standby may be waiting
                    // for WAL from its upstream): alive, not unresponsive.
                    self.client = None;
                    self.unresponsive_since = None;
                    return Err(format!("PostgreSQL is starting up: {e}"));
                }
                Err(e) => {
                    self.client = None;
                    let since = *self.unresponsive_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < self.spec.pg_ctl_timeout {
                        return Err(format!(
                            "PostgreSQL is running but does not answer yet: {e}"
                        ));
                    }
                    warn!(member = %self.spec.name, error = %e, "PostgreSQL stopped answering; stopping it");
                    let _ = self
                        .pg
                        .stop(StopMode::Immediate, self.spec.pg_ctl_timeout)
                        .await;
                    self.unresponsive_since = None;
                }
            }
        }
        let control = self.pg.controldata().await.map_err(|e| e.to_string())?;
        self.system_identifier = Some(control.system_identifier.clone());
        // A fresh clone carries the source primary's control file ("in production") but
        // also backup_label; a configured standby has standby.signal. Neither is a primary.
        let data_dir = self.pg.data_dir();
        let standby_files =
            data_dir.join("standby.signal").exists() || data_dir.join("backup_label").exists();
        let was_primary = control.was_primary() && !standby_files;
        Ok(LocalPg {
            data_dir: if was_primary {
                DataDirState::Primary
            } else {
                DataDirState::Standby
            },
            running: false,
            in_recovery: !was_primary,
            timeline: Some(control.timeline),
            wal_lsn: Some(control.checkpoint_lsn.max(control.min_recovery_end_lsn)),
            following: None,
            shut_down_cleanly: was_primary && control.shut_down_cleanly(),
            standbys: Vec::new(),
            sync_setting: None,
            inactive_slots: Vec::new(),
            system_identifier: Some(control.system_identifier),
        })
    }

    /// The agent's connection to its PostgreSQL, reconnecting when it was closed.
    async fn client(&mut self) -> Result<&tokio_postgres::Client, PgError> {
        let client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.pg.connect().await?,
        };
        Ok(&*self.client.insert(client))
    }

    async fn query_running(&mut self) -> Result<LocalPg, String> {
        if self.system_identifier.is_none() {
            let control = self.pg.controldata().await.map_err(|e| e.to_string())?;
            self.system_identifier = Some(control.system_identifier);
        }
        let client = self.client().await.map_err(|e| e.to_string())?;
        let state = Instance::query_state(client)
            .await
            .map_err(|e| e.to_string())?;
        let upstream = if state.in_recovery {
            upstream_of(client).await
        } else {
            None
        };
        let cluster = self.status.get().cluster;
        let following = upstream.and_then(|(host, port)| member_at(cluster.as_ref(), &host, port));
        self.streaming = state.streaming;
        let timeline = self.standby_timeline(&state);
        self.status.update(|s| {
            s.receive_lsn = state.receive_lsn;
            s.replay_lsn = state.replay_lsn;
            s.replication = state.replication.clone();
            s.server_version = Some(state.server_version);
            s.postmaster_start_time = state.postmaster_start_time.clone();
            s.pending_restart = state.pending_restart;
        });
        Ok(LocalPg {
            data_dir: if state.in_recovery {
                DataDirState::Standby
            } else {
                DataDirState::Primary
            },
            running: true,
            in_recovery: state.in_recovery,
            timeline: Some(timeline),
            wal_lsn: Some(state.wal_lsn),
            following,
            system_identifier: self.system_identifier.clone(),
            shut_down_cleanly: false,
            standbys: state
                .replication
                .iter()
                .map(|r| Standby {
                    name: r.application_name.clone(),
                    streaming: r.state == "streaming",
                    flush_lsn: r.flush_lsn,
                    // `quorum` under `ANY n`.
                    synchronous: r.sync_state == "sync" || r.sync_state == "quorum",
                })
                .collect(),
            sync_setting: SyncSetting::parse(&state.synchronous_standby_names),
            inactive_slots: state.inactive_physical_slots.clone(),
        })
    }

    /// A standby's timeline shows in pg_stat_wal_receiver only while it streams, and the
    /// control file's lags until the next restartpoint: without its upstream (a
    /// switchover's old primary just stopped) a standby would seem to fall back a
    /// timeline. It never does while it runs, so keep the highest seen since the
    /// postmaster started.
    fn standby_timeline(&mut self, state: &pg::PgState) -> u32 {
        if !state.in_recovery {
            self.standby_timeline_seen = None;
            return state.timeline;
        }
        let started = state.postmaster_start_time.clone().unwrap_or_default();
        let timeline = match &self.standby_timeline_seen {
            Some((since, seen)) if *since == started => state.timeline.max(*seen),
            _ => state.timeline,
        };
        self.standby_timeline_seen = Some((started, timeline));
        timeline
    }

    /// Ask every other member's REST API for its WAL position (bounded by the HTTP timeout).
    async fn ask_peers(&self, cluster: Option<&Cluster>) -> Vec<PeerStatus> {
        let Some(cluster) = cluster else {
            return Vec::new();
        };
        let asks = cluster
            .members
            .iter()
            .filter(|m| m.name != self.spec.name)
            .map(|m| async move {
                let answer = self.http.get(&m.data.api_url).send().await;
                let json: Option<serde_json::Value> = match answer {
                    Ok(r) => r.json().await.ok(),
                    Err(e) => {
                        info!(
                            member = %self.spec.name,
                            "cannot ask {} ({}): {}",
                            m.name,
                            m.data.api_url,
                            with_causes(&e)
                        );
                        None
                    }
                };
                let answered = json.is_some();
                (
                    peer_status(&m.name, json.as_ref(), m.data.tags.nofailover),
                    answered,
                )
            });
        let answers = futures::future::join_all(asks).await;
        let names = |want: bool| {
            answers
                .iter()
                .filter(|(_, a)| *a == want)
                .map(|(p, _)| p.name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        info!(
            member = %self.spec.name,
            answered = %names(true),
            unanswered = %names(false),
            "asked the other members for their WAL positions"
        );
        answers.into_iter().map(|(p, _)| p).collect()
    }

    /// The leader that last confirmed itself to our REST API (`POST /failsafe`), and
    /// when, on the runner's clock.
    fn failsafe_heard(&self) -> Option<(String, Millis)> {
        let (leader, at) = self.status.get().failsafe_heard?;
        let ago = at.elapsed().as_millis() as Millis;
        Some((leader, self.now().saturating_sub(ago)))
    }

    /// Failsafe mode without the DCS: ask every other member of the `failsafe` key to
    /// accept us as the primary. The round ends by the lease cutoff, so a refusal still
    /// leaves time to demote. Confirmed, it extends our lease as a renewal sent now
    /// would: each member that accepted stays out of the race for a ttl from its answer.
    async fn ask_failsafe(&mut self) -> FailsafeRound {
        let sent = Instant::now();
        let members: Vec<(String, String)> = self
            .memory
            .failsafe_members
            .iter()
            .flatten()
            .filter(|(name, _)| **name != self.spec.name)
            .map(|(name, url)| (name.clone(), url.clone()))
            .collect();
        let me = self.status.get();
        let body = serde_json::json!({
            "name": self.spec.name,
            "conn_url": me.conn_url,
            "api_url": me.api_url,
        });
        let this = &*self;
        let asks = members.iter().map(|(name, url)| {
            let body = &body;
            async move {
                let refusal = this.post_failsafe(url, body).await.err();
                (name.as_str(), refusal)
            }
        });
        let round = futures::future::join_all(asks);
        let answers = match self.dcs_cutoff() {
            Some(cutoff) => match tokio::time::timeout_at(cutoff.into(), round).await {
                Ok(answers) => answers,
                Err(_) => {
                    return FailsafeRound::Refused(
                        "the members did not answer before the lease cutoff".into(),
                    )
                }
            },
            None => round.await,
        };
        let refusals: Vec<String> = answers
            .into_iter()
            .filter_map(|(name, refusal)| refusal.map(|why| format!("{name}: {why}")))
            .collect();
        if !refusals.is_empty() {
            return FailsafeRound::Refused(refusals.join("; "));
        }
        self.lease_expires = Some(sent + Duration::from_millis(self.dynamic.ha.ttl));
        self.guard_lease();
        self.status.update(|s| s.failsafe_active = true);
        FailsafeRound::Confirmed
    }

    /// `POST /failsafe` to one member: `Ok` when it answers 200 `Accepted`.
    async fn post_failsafe(&self, api_url: &str, body: &serde_json::Value) -> Result<(), String> {
        let mut url = reqwest::Url::parse(api_url).map_err(|e| format!("bad API URL: {e}"))?;
        url.set_path("/failsafe");
        url.set_query(None);
        let mut request = self.http.post(url).json(body);
        if let Some(auth) = &self.spec.api_auth {
            request = request.basic_auth(&auth.username, Some(&auth.password));
        }
        let answer = request.send().await.map_err(|e| e.to_string())?;
        let code = answer.status();
        let text = answer.text().await.unwrap_or_default();
        if code == reqwest::StatusCode::OK && text.trim() == "Accepted" {
            Ok(())
        } else {
            Err(format!("answered {code}: {}", text.trim()))
        }
    }

    // ----- act -----

    /// Carry out one action. `Ok(false)`: it did not go through (lost a race).
    async fn execute(
        &mut self,
        action: &Action,
        cluster: Option<&Cluster>,
        reason: &str,
    ) -> Result<bool, ActionError> {
        match action {
            Action::Wait | Action::AskPeers | Action::AskFailsafe => Ok(true),
            Action::SetFailsafe(members) => {
                self.leased(self.dcs.set_failsafe(members)).await?;
                Ok(true)
            }
            Action::Initialize => self.initialize().await,
            Action::AcquireLeader => {
                let sent = Instant::now();
                let won = self.dcs.acquire_leader().await?;
                if won {
                    self.lease_renewed(sent);
                    info!(member = %self.spec.name, "took the leader key");
                }
                Ok(won)
            }
            Action::RenewLeader => {
                let sent = Instant::now();
                let held = self.leased(self.dcs.update_leader()).await?;
                if held {
                    self.lease_renewed(sent);
                } else {
                    self.lease_lost();
                }
                Ok(held)
            }
            Action::ReleaseLeader => {
                self.leased(self.dcs.delete_leader()).await?;
                self.lease_lost();
                self.memory.released_leader_at = Some(self.now());
                if self.memory.failed_promotions >= crate::decide::MAX_FAILED_PROMOTIONS {
                    // Promoting kept failing here: for a ttl, stay out of the race (and
                    // answer the others as not a candidate), as after a pre_promote veto.
                    self.memory.failed_promotions = 0;
                    self.vetoed_at = Some(Instant::now());
                }
                Ok(true)
            }
            Action::Promote => self.promote(cluster, reason).await,
            Action::Demote(mode) => self.demote(*mode).await,
            Action::StartReplica { upstream } => {
                self.configure_standby(cluster, upstream.as_deref()).await?;
                self.status.update(starting);
                self.pg.start_standby(self.spec.pg_ctl_timeout).await?;
                self.callback("on_start", Role::Replica);
                Ok(true)
            }
            Action::StartPrimary => {
                if self.dcs_cutoff().is_none_or(|c| Instant::now() >= c) {
                    self.lease_lost();
                    return Ok(false);
                }
                if let Some(c) = cluster {
                    self.sync_standbys = crate::decide::sync_setting_on_restart(
                        &self.dynamic.ha,
                        c,
                        &self.spec.name,
                    );
                }
                self.write_config(None).await?;
                self.status.update(starting);
                self.pg.start(self.spec.pg_ctl_timeout).await?;
                self.callback("on_start", Role::Primary);
                Ok(true)
            }
            Action::Follow { upstream } => {
                self.configure_standby(cluster, Some(upstream)).await?;
                self.pg.reload().await?;
                Ok(true)
            }
            Action::Clone { from } => {
                self.clone_from(cluster, from).await?;
                Ok(true)
            }
            Action::Restart { as_primary } => {
                let restarted = self.restart(cluster, *as_primary).await?;
                let role = if restarted && *as_primary {
                    Role::Primary
                } else {
                    Role::Replica
                };
                self.callback("on_restart", role);
                Ok(restarted)
            }
            Action::Reload => {
                self.rewrite_config_and_reload().await?;
                self.callback("on_reload", self.status.get().role);
                Ok(true)
            }
            Action::Reinitialize { from } => {
                self.remove_data_dir().await?;
                self.clone_from(cluster, from).await?;
                self.status.update(starting);
                self.pg.start_standby(self.spec.pg_ctl_timeout).await?;
                Ok(true)
            }
            Action::Rewind { from } => self.rewind(cluster, from).await,
            Action::RemoveDataDir => {
                self.remove_data_dir().await?;
                Ok(true)
            }
            Action::EnsureSlots(names) => {
                let client = self.client().await?;
                Instance::ensure_slots(client, names).await?;
                Ok(true)
            }
            Action::AdoptRequest { version } => {
                let Some(pending) = cluster.and_then(|c| c.failover.as_ref()) else {
                    return Ok(false);
                };
                let mut request = pending.value.clone();
                request.leader = Some(self.spec.name.clone());
                let adopted = self
                    .leased(self.dcs.set_failover(&request, Some(*version)))
                    .await?;
                Ok(adopted)
            }
            Action::SetSyncStandbys(setting) => {
                self.sync_standbys = setting.clone();
                self.rewrite_config_and_reload().await?;
                let client = self.client().await?;
                let at = Instance::query_state(client).await?.wal_lsn;
                self.memory.sync_set_at_lsn = Some(at);
                Ok(true)
            }
            Action::SetSyncKey {
                standbys,
                quorum,
                version,
            } => {
                let quorum_mode = self.dynamic.ha.synchronous_mode == SynchronousMode::Quorum;
                let value = pgherd_dcs::SyncState {
                    leader: Some(self.spec.name.clone()),
                    sync_standby: (!standbys.is_empty()).then(|| standbys.join(",")),
                    quorum: quorum_mode.then_some(*quorum),
                };
                let written = self
                    .leased(self.dcs.set_sync(&value, Some(*version)))
                    .await?;
                Ok(written)
            }
            Action::ClearFailover { version } => {
                let cleared = self
                    .leased(self.dcs.delete_failover(Some(*version)))
                    .await?;
                if cleared {
                    let why = reason.to_string();
                    self.status.update(|s| s.last_request_dropped = Some(why));
                }
                Ok(cleared)
            }
        }
    }

    async fn remove_data_dir(&mut self) -> Result<(), ActionError> {
        self.client = None;
        self.pg
            .stop(StopMode::Immediate, self.spec.pg_ctl_timeout)
            .await?;
        self.pg.remove_data_dir().await?;
        self.memory.rewind_failed = false;
        self.system_identifier = None;
        Ok(())
    }

    /// pg_basebackup from `from` into the empty data directory, configured as its standby.
    async fn clone_from(
        &mut self,
        cluster: Option<&Cluster>,
        from: &str,
    ) -> Result<(), ActionError> {
        let source = self.conninfo_of(cluster, from)?;
        self.status.update(|s| s.state = "creating replica".into());
        info!(member = %self.spec.name, from = %from, "cloning with pg_basebackup");
        self.pg.basebackup(&source, clone_timeout()).await?;
        self.written_parameters = None;
        self.configure_standby(cluster, Some(from)).await
    }

    /// The operator's restart. A primary comes back writable only while its lease surely
    /// runs; otherwise (and for a replica) as a standby of the current leader.
    async fn restart(
        &mut self,
        cluster: Option<&Cluster>,
        as_primary: bool,
    ) -> Result<bool, ActionError> {
        info!(member = %self.spec.name, as_primary, "restarting PostgreSQL");
        self.client = None;
        self.status.update(|s| s.state = "restarting".into());
        self.pg
            .stop(StopMode::Fast, self.spec.pg_ctl_timeout)
            .await?;
        let lease_runs = self.dcs_cutoff().is_some_and(|c| Instant::now() < c);
        self.status.update(starting);
        if as_primary && lease_runs {
            self.write_config(None).await?;
            self.pg.start(self.spec.pg_ctl_timeout).await?;
            return Ok(true);
        }
        let upstream = cluster
            .and_then(|c| c.leader_name())
            .filter(|l| *l != self.spec.name && cluster.and_then(|c| c.member(l)).is_some())
            .map(str::to_string);
        self.configure_standby(cluster, upstream.as_deref()).await?;
        self.pg.start_standby(self.spec.pg_ctl_timeout).await?;
        Ok(!as_primary)
    }

    async fn initialize(&mut self) -> Result<bool, ActionError> {
        let existing = self.pg.data_dir_state()? == pg::DataDirState::Initialized;
        let sysid = if existing {
            self.pg.controldata().await?.system_identifier
        } else {
            String::new()
        };
        if !self.dcs.initialize(&sysid).await? {
            info!(member = %self.spec.name, "another member is bootstrapping the cluster");
            return Ok(false);
        }
        if existing {
            info!(member = %self.spec.name, system_identifier = %sysid, "cluster initialized from the existing data directory");
            self.write_bootstrap_config().await?;
            return Ok(true);
        }
        info!(member = %self.spec.name, "won the initialize race: running initdb");
        self.status
            .update(|s| s.state = "initializing new cluster".into());
        match self.bootstrap().await {
            Ok(()) => Ok(true),
            Err(e) => {
                warn!(member = %self.spec.name, error = %e, "bootstrap failed; giving others a turn");
                let _ = self
                    .pg
                    .stop(StopMode::Immediate, self.spec.pg_ctl_timeout)
                    .await;
                let _ = self.pg.remove_data_dir().await;
                let _ = self.dcs.delete_leader().await;
                self.lease_lost();
                let _ = self.dcs.cancel_initialization().await;
                Err(e)
            }
        }
    }

    /// initdb with the bootstrap settings; publish the system identifier and the initial
    /// dynamic config; take the leader key; only then start writable and create the
    /// users. A member that sees the leader also sees the cluster it should clone, and
    /// the new primary is writable only under a lease.
    async fn bootstrap(&mut self) -> Result<(), ActionError> {
        self.dynamic = dynamic::apply(&self.spec.ha, Some(&self.spec.bootstrap_dynamic));
        self.pg.initdb(&self.spec.initdb_args).await?;
        let control = self.pg.controldata().await?;
        self.dcs.set_initialize(&control.system_identifier).await?;
        self.system_identifier = Some(control.system_identifier);
        self.write_bootstrap_config().await?;
        let sent = Instant::now();
        if !self.dcs.acquire_leader().await? {
            return Err(ActionError::Other(
                "the leader key was taken during bootstrap".into(),
            ));
        }
        self.lease_renewed(sent);
        if self.dynamic.ha.synchronous_mode.is_active() {
            // Before any commit: until a standby is synchronous, only we may lead.
            let sync = pgherd_dcs::SyncState {
                leader: Some(self.spec.name.clone()),
                sync_standby: None,
                quorum: None,
            };
            self.dcs.set_sync(&sync, None).await?;
            self.sync_standbys = self
                .dynamic
                .ha
                .synchronous_mode_strict
                .then(SyncSetting::any_standby);
        }
        self.write_config(None).await?;
        self.pg.start(self.spec.pg_ctl_timeout).await?;
        self.callback("on_start", Role::Primary);
        let (superuser, replication, rewind) = (
            self.spec.instance.superuser.clone(),
            self.spec.instance.replication.clone(),
            self.spec.rewind.clone(),
        );
        let client = self.client().await?;
        Instance::create_roles(client, &superuser, &replication, rewind.as_ref()).await?;
        Ok(())
    }

    async fn write_bootstrap_config(&self) -> Result<(), ActionError> {
        self.dcs
            .set_config(&self.spec.bootstrap_dynamic, Some(0))
            .await?;
        Ok(())
    }

    async fn promote(
        &mut self,
        cluster: Option<&Cluster>,
        reason: &str,
    ) -> Result<bool, ActionError> {
        let before = self.query_running().await.map_err(ActionError::Other)?;
        if !before.in_recovery {
            return Ok(true);
        }
        // A frozen agent may wake long after it took the key: check the lease by our own
        // clock before anything becomes writable.
        if self.dcs_cutoff().is_none_or(|c| Instant::now() >= c) {
            info!(member = %self.spec.name, "not promoting: the leader lease may have run out");
            self.lease_lost();
            return Ok(false);
        }
        if let Err(veto) = self.pre_promote().await {
            // Give the key up, and for a ttl count as tagged nofailover (in our own
            // decisions and in our answers to the others), so another member takes over.
            self.vetoed_at = Some(Instant::now());
            let _ = self.leased(self.dcs.delete_leader()).await;
            self.lease_lost();
            return Err(veto);
        }
        let ended_timeline = before.timeline.unwrap_or(1);
        let switch_lsn = before.wal_lsn.unwrap_or(0);
        // History first: every timeline that may exist must be on record, or a later
        // failover could create the same timeline number twice.
        let history = cluster.map(|c| c.history.clone()).unwrap_or_default();
        let entry_reason = format!("pgherd: {reason}");
        let history = history_after_promotion(
            &history,
            ended_timeline,
            switch_lsn,
            &entry_reason,
            &now_iso8601(),
            &self.spec.name,
        );
        self.leased(self.dcs.set_history(&history)).await?;
        if self.dynamic.ha.synchronous_mode.is_active() {
            // Written while still a standby, so that not one commit of the new primary is
            // acknowledged without the synchronous standbys it must wait for.
            if let Some(c) = cluster {
                self.sync_standbys =
                    crate::decide::sync_setting_on_restart(&self.dynamic.ha, c, &self.spec.name);
            }
            self.rewrite_config_and_reload().await?;
        }
        if let Err(e) = self.pg.promote(self.spec.pg_ctl_timeout).await {
            // Counted so that `decide` gives the key up if it keeps failing.
            self.memory.failed_promotions += 1;
            return Err(e.into());
        }
        self.memory.failed_promotions = 0;
        // Our setting takes effect now; `observe` records where.
        self.memory.sync_set_at_lsn = None;
        self.status.update(|s| s.promotions += 1);
        self.callback("on_role_change", Role::Primary);
        info!(member = %self.spec.name, ended_timeline, switch_lsn = %pg::format_lsn(switch_lsn), "promoted");
        // No upstream any more: drop the standby settings.
        self.write_config(None).await?;
        Ok(true)
    }

    async fn demote(&mut self, mode: DemoteMode) -> Result<bool, ActionError> {
        if mode == DemoteMode::Graceful {
            let stepped_down = self.step_down().await?;
            self.callback("on_stop", Role::Primary);
            return Ok(stepped_down);
        }
        warn!(member = %self.spec.name, ?mode, "demoting: stopping the writable PostgreSQL");
        // We demote by ourselves: the fencer must not kill the read-only restart.
        self.unguard();
        self.client = None;
        self.pg
            .stop(StopMode::Fast, self.spec.pg_ctl_timeout)
            .await?;
        self.lease_lost();
        self.status.update(|s| {
            s.role = Role::Demoted;
            s.holds_leader = false;
        });
        self.callback("on_role_change", Role::Replica);
        self.sync_standbys = None;
        if mode == DemoteMode::Offline {
            // Read-only until the DCS says who leads.
            self.write_config(Some(&StandbyConfig {
                primary: None,
                slot: None,
            }))
            .await?;
            self.pg.start(self.spec.pg_ctl_timeout).await?;
        }
        Ok(true)
    }

    /// A switchover's demotion: checkpoint (so the shutdown checkpoint is short), stop
    /// cleanly — PostgreSQL's walsenders send every WAL record to connected standbys
    /// before it exits — then publish where the WAL ends and release the leader key.
    async fn step_down(&mut self) -> Result<bool, ActionError> {
        info!(member = %self.spec.name, "stepping down: checkpoint, clean stop, releasing the leader key");
        if let Ok(client) = self.client().await {
            if let Err(e) = client.batch_execute("CHECKPOINT").await {
                warn!(member = %self.spec.name, error = %e, "checkpoint before stopping failed");
            }
        }
        self.client = None;
        self.status.update(|s| s.state = "stopping".into());
        self.pg
            .stop(StopMode::Fast, self.spec.pg_ctl_timeout)
            .await?;
        self.status.update(|s| {
            s.role = Role::Demoted;
            s.running = false;
        });
        let control = self.pg.controldata().await?;
        let status = ClusterStatus {
            optime: control.checkpoint_lsn,
            slots: BTreeMap::new(),
        };
        // Without these two writes the lease runs out and the others take over the usual
        // way; the data is safe either way.
        self.leased(self.dcs.set_status(&status)).await?;
        self.leased(self.dcs.delete_leader()).await?;
        self.lease_lost();
        self.memory.released_leader_at = Some(self.now());
        self.status.update(|s| s.holds_leader = false);
        info!(member = %self.spec.name, wal_end = %pg::format_lsn(control.checkpoint_lsn), "stopped cleanly and released the leader key");
        Ok(true)
    }

    async fn rewind(&mut self, cluster: Option<&Cluster>, from: &str) -> Result<bool, ActionError> {
        // pg_rewind reads files through SQL functions the replication role may not call.
        let mut source = self.conninfo_of(cluster, from)?;
        let login = self
            .spec
            .rewind
            .as_ref()
            .unwrap_or(&self.spec.instance.superuser);
        source.user = login.username.clone();
        source.password = login.password.clone();
        self.client = None;
        self.pg
            .stop(StopMode::Fast, self.spec.pg_ctl_timeout)
            .await?;
        self.status.update(|s| s.state = "rewinding".into());
        info!(member = %self.spec.name, from = %from, "rewinding with pg_rewind");
        if let Err(e) = self.pg.rewind(&source, clone_timeout()).await {
            self.memory.rewind_failed = true;
            return Err(e.into());
        }
        self.memory.rewind_failed = false;
        info!(member = %self.spec.name, from = %from, "rewound with pg_rewind");
        self.written_parameters = None;
        self.configure_standby(cluster, Some(from)).await?;
        self.pg.start_standby(self.spec.pg_ctl_timeout).await?;
        Ok(true)
    }

    /// Write postgresql.conf for a standby of `upstream` (or with no upstream).
    async fn configure_standby(
        &mut self,
        cluster: Option<&Cluster>,
        upstream: Option<&str>,
    ) -> Result<(), ActionError> {
        let primary = match upstream {
            Some(name) => Some(self.conninfo_of(cluster, name)?),
            None => None,
        };
        let slot = (self.dynamic.ha.use_slots && primary.is_some())
            .then(|| pg::slot_name(&self.spec.name));
        // A standby waits for nobody; a later promotion chooses afresh.
        self.sync_standbys = None;
        self.write_config(Some(&StandbyConfig { primary, slot }))
            .await
    }

    async fn write_config(&mut self, standby: Option<&StandbyConfig>) -> Result<(), ActionError> {
        let Merged {
            params,
            overruled,
            sources,
        } = self.merged_parameters();
        for name in overruled {
            warn!(member = %self.spec.name, parameter = %name,
                "the cluster's config sets this parameter, which must be the same on every member: the local value is not used");
        }
        let shown = params
            .iter()
            .map(|(k, v)| {
                // A name the version translation made (wal_keep_size from
                // wal_keep_segments) keeps no source of its own: it is the member's.
                let source = sources.get(k).copied().unwrap_or(dynamic::Source::Local);
                (k.clone(), (v.clone(), source.as_str()))
            })
            .collect();
        self.status.update(|s| s.parameters = shown);
        self.pg.config_mut().parameters = params.clone();
        self.pg.write_config(standby).await?;
        self.written_parameters = Some(params);
        Ok(())
    }

    /// Defaults, then the cluster's dynamic parameters, then this node's own (except the
    /// cluster-wide ones the cluster sets), translated for the running PostgreSQL version.
    fn effective_parameters(&self) -> BTreeMap<String, String> {
        self.merged_parameters().params
    }

    /// [`Self::effective_parameters`], the local settings the cluster overrules, and
    /// where each setting came from.
    fn merged_parameters(&self) -> Merged {
        let (merged, overruled) = dynamic::merge_parameters(
            pg::default_parameters(),
            &self.dynamic.parameters,
            &self.spec.instance.parameters,
        );
        let mut sources: BTreeMap<String, dynamic::Source> =
            merged.iter().map(|(k, (_, s))| (k.clone(), *s)).collect();
        let mut values: BTreeMap<String, String> =
            merged.into_iter().map(|(k, (v, _))| (k, v)).collect();
        if self.dynamic.ha.synchronous_mode.is_active() {
            // Synchronous mode owns the setting: the HA loop's choice, else empty.
            let names = self.sync_standbys.as_ref().map(SyncSetting::to_conf);
            values.insert(
                "synchronous_standby_names".into(),
                names.unwrap_or_default(),
            );
            sources.insert("synchronous_standby_names".into(), dynamic::Source::Cluster);
        }
        let (params, notes) = pg::translate_parameters(self.pg.config().bin.major_version, &values);
        for note in notes {
            debug!(member = %self.spec.name, %note, "parameter translated");
        }
        Merged {
            params,
            overruled,
            sources,
        }
    }

    fn conninfo_of(
        &self,
        cluster: Option<&Cluster>,
        member: &str,
    ) -> Result<ConnInfo, ActionError> {
        let m = cluster
            .and_then(|c| c.member(member))
            .ok_or_else(|| ActionError::Other(format!("member {member} is not in the DCS")))?;
        let (host, port) = parse_conn_url(&m.data.conn_url).ok_or_else(|| {
            ActionError::Other(format!(
                "member {member} has a bad conn_url {:?}",
                m.data.conn_url
            ))
        })?;
        let repl = &self.spec.instance.replication;
        Ok(ConnInfo {
            host,
            port,
            user: repl.username.clone(),
            password: repl.password.clone(),
            dbname: "postgres".into(),
            application_name: Some(self.spec.name.clone()),
        })
    }

    // ----- publish -----

    async fn publish(&mut self, cluster: Option<&Cluster>) {
        let running = self.pg.postmaster_pid().is_some();
        let local = if running {
            self.query_running().await.ok()
        } else {
            None
        };
        let holds_leader = self.lease_expires.is_some();
        let data_state = self.pg.data_dir_state().ok();
        let (role, state) = match &local {
            Some(l) if !l.in_recovery => (Role::Primary, "running"),
            Some(_) if self.streaming => (Role::Replica, "streaming"),
            Some(_) => (Role::Replica, "running"),
            None if data_state != Some(pg::DataDirState::Initialized) => {
                (Role::Uninitialized, "stopped")
            }
            None if running && self.pg.postmaster_status() == Some(PostmasterStatus::Starting) => {
                (Role::Replica, "starting")
            }
            None => (Role::Replica, "stopped"),
        };
        let params_changed = running
            && self
                .written_parameters
                .as_ref()
                .is_some_and(|w| *w != self.effective_parameters());
        let mut pending_restart = false;
        self.status.update(|s| {
            // "running" for the API (health checks, /patroni) means answering queries: a
            // postmaster still recovering towards consistency is "starting".
            s.running = local.is_some();
            s.in_recovery = local.as_ref().is_some_and(|l| l.in_recovery);
            s.timeline = local.as_ref().and_then(|l| l.timeline);
            s.wal_lsn = local.as_ref().and_then(|l| l.wal_lsn);
            s.role = role;
            s.state = state.to_string();
            s.holds_leader = holds_leader;
            s.last_tick = Some(Instant::now());
            s.ha = self.dynamic.ha.clone();
            s.system_identifier = self.system_identifier.clone();
            if local.is_none() {
                s.replication.clear();
                s.pending_restart = false;
            }
            pending_restart = s.pending_restart;
        });
        if params_changed {
            info!(member = %self.spec.name, "parameters changed: reloading PostgreSQL");
            if let Err(e) = self.rewrite_config_and_reload().await {
                warn!(member = %self.spec.name, error = %e, "could not apply the changed parameters");
            }
        }
        let data = MemberData {
            conn_url: self.spec.conn_url(),
            api_url: self.spec.api_url(),
            state: state.to_string(),
            role: role.as_str().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            xlog_location: local.as_ref().and_then(|l| l.wal_lsn),
            replication_state: (state == "streaming").then(|| "streaming".to_string()),
            timeline: local.as_ref().and_then(|l| l.timeline),
            tags: self.spec.tags.clone(),
            pause: self.dynamic.ha.paused.then_some(true),
            // Patroni's key: `list` and patronictl show a pending restart from it.
            extra: pending_restart
                .then(|| ("pending_restart".to_string(), serde_json::Value::Bool(true)))
                .into_iter()
                .collect(),
        };
        if let Err(e) = self.leased(self.dcs.touch_member(&data)).await {
            debug!(member = %self.spec.name, error = %e, "could not publish the member key");
            return;
        }
        if holds_leader && role == Role::Primary && cluster.is_some() {
            let status = ClusterStatus {
                optime: data.xlog_location.unwrap_or(0),
                slots: BTreeMap::new(),
            };
            if let Err(e) = self.leased(self.dcs.set_status(&status)).await {
                debug!(member = %self.spec.name, error = %e, "could not publish the status key");
            }
        }
    }

    /// Rewrite postgresql.conf from the current configuration (keeping a standby's
    /// upstream) and reload PostgreSQL.
    async fn rewrite_config_and_reload(&mut self) -> Result<(), ActionError> {
        let s = self.status.get();
        let standby = if s.in_recovery {
            let upstream = s
                .cluster
                .as_ref()
                .and_then(|c| c.leader_name().map(str::to_string))
                .filter(|l| *l != self.spec.name);
            let cluster = s.cluster.clone();
            match self.conninfo_of(cluster.as_ref(), upstream.as_deref().unwrap_or("")) {
                Ok(ci) => Some(StandbyConfig {
                    primary: Some(ci),
                    slot: self
                        .dynamic
                        .ha
                        .use_slots
                        .then(|| pg::slot_name(&self.spec.name)),
                }),
                Err(_) => Some(StandbyConfig {
                    primary: None,
                    slot: None,
                }),
            }
        } else {
            None
        };
        self.write_config(standby.as_ref()).await?;
        self.pg.reload().await?;
        Ok(())
    }
}

/// A member's PostgreSQL parameters, merged.
struct Merged {
    /// As PostgreSQL reads them (translated for its version).
    params: BTreeMap<String, String>,
    /// Local settings the cluster overrules (cluster-wide parameters).
    overruled: Vec<String>,
    /// Where each came from, by name before translation.
    sources: BTreeMap<String, dynamic::Source>,
}

/// The next operator command; never resolves without a channel or once it is closed.
async fn next_command(commands: &mut Option<mpsc::Receiver<Command>>) -> Option<Command> {
    match commands {
        Some(rx) => match rx.recv().await {
            Some(c) => Some(c),
            None => {
                *commands = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// PostgreSQL is being started: the API must not answer from the last tick's snapshot.
fn starting(s: &mut crate::status::NodeStatus) {
    s.state = "starting".into();
    s.running = false;
}

/// pg_basebackup and pg_rewind of a large database take long; bound them anyway.
fn clone_timeout() -> Duration {
    Duration::from_secs(3600)
}

/// Where a standby streams from: host and port from `primary_conninfo`.
async fn upstream_of(client: &tokio_postgres::Client) -> Option<(String, u16)> {
    let row = client.query_one("SHOW primary_conninfo", &[]).await.ok()?;
    let conninfo: String = row.try_get(0).ok()?;
    let mut host = None;
    let mut port = None;
    for part in conninfo.split_whitespace() {
        if let Some((k, v)) = part.split_once('=') {
            let v = v.trim_matches('\'');
            match k {
                "host" => host = Some(v.to_string()),
                "port" => port = v.parse().ok(),
                _ => {}
            }
        }
    }
    Some((host?, port.unwrap_or(5432)))
}

fn member_at(cluster: Option<&Cluster>, host: &str, port: u16) -> Option<String> {
    cluster?
        .members
        .iter()
        .find(|m| parse_conn_url(&m.data.conn_url).is_some_and(|(h, p)| h == host && p == port))
        .map(|m| m.name.clone())
}

pub use pgherd_dcs::parse_conn_url;

/// A peer's `GET /patroni` answer, reduced to what the failover race needs.
/// An error with its causes (`a: b: c`): reqwest's own message leaves out what failed
/// (connection refused, a certificate the CA did not sign).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

fn peer_status(name: &str, json: Option<&serde_json::Value>, nofailover: bool) -> PeerStatus {
    let Some(j) = json else {
        return PeerStatus {
            name: name.to_string(),
            wal_lsn: None,
            timeline: None,
            nofailover,
            is_primary: false,
        };
    };
    let xlog = j.get("xlog");
    let field = |k: &str| xlog.and_then(|x| x.get(k)).and_then(|v| v.as_u64());
    let wal_lsn = field("location").or_else(|| {
        match (field("received_location"), field("replayed_location")) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    });
    let role = j.get("role").and_then(|v| v.as_str()).unwrap_or("");
    let state = j.get("state").and_then(|v| v.as_str()).unwrap_or("");
    PeerStatus {
        name: name.to_string(),
        wal_lsn,
        timeline: j.get("timeline").and_then(|v| v.as_u64()).map(|t| t as u32),
        nofailover: nofailover
            || j.pointer("/tags/nofailover")
                .and_then(|v| v.as_bool())
                .unwrap_or(false)
            || j["pre_promote_vetoed"] == true,
        is_primary: (role == "primary" || role == "master") && state == "running",
    }
}

/// Current time as ISO 8601 (UTC), the format Patroni writes in `history`.
pub fn now_iso8601() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    iso8601(secs)
}

/// Seconds since the epoch → `YYYY-MM-DDTHH:MM:SS+00:00` (civil-from-days, proleptic Gregorian).
pub fn iso8601(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `HaConfig` with Patroni's defaults (ttl 30 s, loop_wait 10 s, retry_timeout 10 s).
pub fn default_ha_config() -> HaConfig {
    HaConfig {
        ttl: 30_000,
        loop_wait: 10_000,
        retry_timeout: 10_000,
        maximum_lag_on_failover: 1_048_576,
        use_pg_rewind: false,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_urls_parse_like_patroni_writes_them() {
        assert_eq!(
            parse_conn_url("postgres://127.0.0.1:5433/postgres"),
            Some(("127.0.0.1".into(), 5433))
        );
        assert_eq!(
            parse_conn_url("postgresql://u:p@[::1]:6000/db"),
            Some(("::1".into(), 6000))
        );
        assert_eq!(
            parse_conn_url("postgres://db1/postgres"),
            Some(("db1".into(), 5432))
        );
        assert_eq!(parse_conn_url("http://x"), None);
    }

    #[test]
    fn iso8601_matches_known_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20+00:00");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00+00:00");
    }

    #[test]
    fn peer_answers_give_the_furthest_wal_position() {
        let replica = serde_json::json!({"state":"running","role":"replica","timeline":2,
            "xlog":{"received_location":100,"replayed_location":90}});
        let p = peer_status("n2", Some(&replica), false);
        assert_eq!(
            (p.wal_lsn, p.timeline, p.is_primary),
            (Some(100), Some(2), false)
        );
        let primary =
            serde_json::json!({"state":"running","role":"primary","xlog":{"location":500}});
        assert!(peer_status("n1", Some(&primary), false).is_primary);
        assert_eq!(peer_status("n3", None, false).wal_lsn, None);
    }
}
