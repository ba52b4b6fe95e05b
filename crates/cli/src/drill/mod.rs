//! `pgherd demo --drill` and `pgherd ctl drill`: the tutorial's exercises (§6), run
//! unattended against a cluster and its pooler, with a pass/fail report.
//!
//! 1. replication: a row written through the read-write address is read on every
//!    replica, directly;
//! 2. failover: kill -9 of the primary's node under a continuous writer through the
//!    read-write address: seconds without writes, acknowledged rows lost;
//! 3. switchover: TPC-B-like clients through the read-write address while the leader
//!    hands over: failed transactions (must be none), the longest stall;
//! 4. balancing: reads through the read-only address, counted by the replica that
//!    served them (`inet_server_port()`).

mod local;
mod workload;

pub use local::{kill_postmaster, LocalNodes};
pub use workload::{parse_address, Address};

use crate::switchover;
use anyhow::{bail, Context, Result};
use pgherd_dcs::{parse_conn_url, Cluster, Dcs};
use pgherd_ha::manual::Kind;
use pgherd_ha::SynchronousMode;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use workload::{connect, execute, query_column, query_text};

/// How the drill kills a node and brings it back.
pub trait Nodes: Send {
    /// kill -9 of `member`'s agent and PostgreSQL at once; says what was killed.
    fn kill<'a>(&'a mut self, member: &'a str) -> BoxFuture<'a, Result<String>>;
    /// Start `member` again after [`Nodes::kill`] (or say who will).
    fn revive<'a>(&'a mut self, member: &'a str) -> BoxFuture<'a, Result<String>>;
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The cluster under drill.
pub struct Target<'a> {
    pub scope: String,
    pub dcs: Arc<dyn Dcs>,
    /// The pooler's read-write and read-only addresses.
    pub read_write: Address,
    pub read_only: Address,
    /// The login used to read each member directly (host and port come from the
    /// member's `conn_url`).
    pub member_login: Address,
    pub nodes: Box<dyn Nodes + 'a>,
    /// For the members' REST APIs (over HTTPS as `ctl.*` says).
    pub http: reqwest::Client,
}

/// The drill's bounds.
const REPLICATION_WAIT: Duration = Duration::from_secs(10);
/// For the cluster to be whole again (a killed node rejoining, a replica streaming).
const HEALTHY_WAIT: Duration = Duration::from_secs(180);
/// For a failover to finish (ttl + loop_wait plus room).
const FAILOVER_WAIT: Duration = Duration::from_secs(120);
/// How long the writer runs before the kill, and the clients around a switchover.
const WARM_UP: Duration = Duration::from_secs(2);
const AFTER: Duration = Duration::from_secs(2);
const BENCH_CLIENTS: usize = 8;
const READS: usize = 300;
const READ_CLIENTS: usize = 10;
const READS_PER_CLIENT: usize = READS / READ_CLIENTS;

/// One exercise's outcome.
#[derive(Debug)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub took: Duration,
    pub detail: String,
}

/// Every check, in order.
#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    pub fn render(&self) -> String {
        let mut out = String::from("\ndrill report\n");
        for c in &self.checks {
            out.push_str(&format!(
                "  {}  {:<12} {:>6.1} s  {}\n",
                if c.passed { "PASS" } else { "FAIL" },
                c.name,
                c.took.as_secs_f64(),
                c.detail.replace('\n', "\n                               ")
            ));
        }
        let failed = self.checks.iter().filter(|c| !c.passed).count();
        if failed == 0 {
            out.push_str(&format!("all {} checks passed\n", self.checks.len()));
        } else {
            out.push_str(&format!(
                "{failed} of {} checks failed\n",
                self.checks.len()
            ));
        }
        out
    }
}

/// Run the four exercises in order, printing progress; each one's failure is reported
/// and the drill goes on where it can.
pub async fn run(target: &mut Target<'_>) -> Report {
    let mut report = Report::default();
    let run_id = format!(
        "drill-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    );
    let exercises: [(&'static str, Exercise); 4] = [
        ("replication", Exercise::Replication),
        ("failover", Exercise::Failover),
        ("switchover", Exercise::Switchover),
        ("balancing", Exercise::Balancing),
    ];
    for (name, exercise) in exercises {
        eprintln!("drill: {name} ...");
        let started = Instant::now();
        let outcome = match exercise {
            Exercise::Replication => replication(target, &run_id).await,
            Exercise::Failover => failover(target, &run_id).await,
            Exercise::Switchover => switchover_check(target).await,
            Exercise::Balancing => balancing(target).await,
        };
        let (passed, detail) = match outcome {
            Ok(o) => (o.passed, o.detail),
            Err(e) => (false, format!("{e:#}")),
        };
        eprintln!(
            "drill: {name} {}: {detail}",
            if passed { "passed" } else { "FAILED" }
        );
        report.checks.push(Check {
            name,
            passed,
            took: started.elapsed(),
            detail,
        });
    }
    report
}

#[derive(Clone, Copy)]
enum Exercise {
    Replication,
    Failover,
    Switchover,
    Balancing,
}

struct Outcome {
    passed: bool,
    detail: String,
}

/// Members as the store shows them now.
async fn cluster(target: &Target<'_>) -> Result<Cluster> {
    target
        .dcs
        .get_cluster()
        .await
        .context("cannot read the cluster")
}

fn synchronous(cluster: &Cluster) -> SynchronousMode {
    pgherd_ha::dynamic::apply(
        &pgherd_ha::runner::default_ha_config(),
        cluster.config.as_ref().map(|c| &c.value),
    )
    .ha
    .synchronous_mode
}

/// Replicas that are streaming from the leader, by name, with their address.
fn streaming_replicas(cluster: &Cluster) -> Vec<(String, String, u16)> {
    let leader = cluster.leader_name();
    cluster
        .members
        .iter()
        .filter(|m| Some(m.name.as_str()) != leader && m.data.role == "replica")
        .filter(|m| m.data.state == "streaming")
        .filter_map(|m| {
            let (host, port) = parse_conn_url(&m.data.conn_url)?;
            Some((m.name.clone(), host, port))
        })
        .collect()
}

/// Streaming replicas the `sync` key names for the current leader: those a switchover
/// may hand over to in synchronous mode.
fn sync_standbys(cluster: &Cluster) -> Vec<String> {
    let Some(sync) = &cluster.sync else {
        return Vec::new();
    };
    if sync.value.leader.as_deref() != cluster.leader_name() {
        return Vec::new();
    }
    let named: Vec<&str> = sync
        .value
        .sync_standby
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .collect();
    streaming_replicas(cluster)
        .into_iter()
        .map(|(name, _, _)| name)
        .filter(|n| named.contains(&n.as_str()))
        .collect()
}

/// A leader whose member key says primary and every other member streaming.
async fn wait_healthy(target: &Target<'_>, within: Duration) -> Result<Cluster> {
    let deadline = Instant::now() + within;
    loop {
        let c = cluster(target).await;
        if let Ok(c) = &c {
            let leader = c.leader_name().and_then(|l| c.member(l));
            let leading = leader.is_some_and(|l| l.data.role == "primary");
            let others = c.members.len().saturating_sub(1);
            let whole = leading && others > 0 && streaming_replicas(c).len() == others;
            if whole && (synchronous(c) == SynchronousMode::Off || !sync_standbys(c).is_empty()) {
                return Ok(c.clone());
            }
        }
        if Instant::now() > deadline {
            let c = c?;
            bail!(
                "the cluster is not whole after {} s: leader {}, members {}",
                within.as_secs(),
                c.leader_name().unwrap_or("none"),
                c.members
                    .iter()
                    .map(|m| format!("{} {} {}", m.name, m.data.role, m.data.state))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// (a) A row written through the read-write address appears on every replica.
async fn replication(target: &Target<'_>, run: &str) -> Result<Outcome> {
    let c = wait_healthy(target, HEALTHY_WAIT).await?;
    let rw = connect(&target.read_write)
        .await
        .context("read-write address")?;
    execute(&rw, workload::SETUP)
        .await
        .context("creating the drill's tables")?;
    let id = next_id(&rw).await?;
    execute(
        &rw,
        &format!("INSERT INTO pgherd_drill_rows (id, run) VALUES ({id}, '{run}')"),
    )
    .await
    .context("writing through the read-write address")?;
    let written = Instant::now();
    let mut seen = Vec::new();
    let mut missing = Vec::new();
    for (name, host, port) in streaming_replicas(&c) {
        let replica = connect(&target.member_login.at(&host, port))
            .await
            .with_context(|| format!("reading {name} directly"))?;
        let sql = format!("SELECT count(*) FROM pgherd_drill_rows WHERE id = {id}");
        let found = loop {
            if query_text(&replica, &sql).await?.as_deref() == Some("1") {
                break Some(written.elapsed());
            }
            if written.elapsed() > REPLICATION_WAIT {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        match found {
            Some(after) => seen.push(format!("{name} after {} ms", after.as_millis())),
            None => missing.push(name),
        }
    }
    let passed = missing.is_empty() && !seen.is_empty();
    let detail = if missing.is_empty() {
        format!(
            "row {id} written through {} read on {}",
            target.read_write.shown(),
            seen.join(", ")
        )
    } else {
        format!(
            "row {id} not on {} after {} s",
            missing.join(", "),
            REPLICATION_WAIT.as_secs()
        )
    };
    Ok(Outcome { passed, detail })
}

/// The next free row id (rows of earlier drills stay).
async fn next_id(client: &tokio_postgres::Client) -> Result<i64> {
    let max = query_text(client, "SELECT coalesce(max(id), 0) FROM pgherd_drill_rows").await?;
    Ok(max.and_then(|m| m.parse::<i64>().ok()).unwrap_or(0) + 1)
}

/// (b) kill -9 of the primary's node under a writer through the read-write address.
async fn failover(target: &mut Target<'_>, run: &str) -> Result<Outcome> {
    let before = wait_healthy(target, HEALTHY_WAIT).await?;
    let old = before
        .leader_name()
        .context("no leader to kill")?
        .to_string();
    let sync = synchronous(&before);
    let rw = connect(&target.read_write)
        .await
        .context("read-write address")?;
    let first_id = next_id(&rw).await?;
    drop(rw);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(None));
    let writer = workload::start_writer(
        target.read_write.clone(),
        run.to_string(),
        first_id,
        stop.clone(),
        acked.clone(),
    );
    tokio::time::sleep(WARM_UP).await;
    let killed_what = match target.nodes.kill(&old).await {
        Ok(what) => what,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            let _ = writer.await;
            return Err(e.context(format!("cannot kill {old}")));
        }
    };
    let killed = Instant::now();
    // The new leader, then writes through the pooler again.
    let deadline = killed + FAILOVER_WAIT;
    let new = loop {
        if let Ok(c) = cluster(target).await {
            if let Some(l) = c.leader_name().filter(|l| *l != old) {
                if c.member(l).is_some_and(|m| m.data.role == "primary") {
                    break Some(l.to_string());
                }
            }
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elected = killed.elapsed();
    // The writer goes on until writes have come back for a while (or the bound).
    let back_deadline = Instant::now() + FAILOVER_WAIT;
    while new.is_some() && !acked_since(&acked, killed) && Instant::now() < back_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    let log = writer.await.context("the writer task")?;
    let revived = target.nodes.revive(&old).await;
    let Some(new) = new else {
        bail!(
            "no new leader {} s after killing {old} ({killed_what})",
            FAILOVER_WAIT.as_secs()
        );
    };
    let Some(back) = log.first_after(killed) else {
        bail!("{new} leads, but no write went through the pooler after the kill");
    };
    let unavailable = back - killed;
    // Every acknowledged row must be on the new primary.
    let rw = connect(&target.read_write)
        .await
        .context("read-write address")?;
    let stored: std::collections::HashSet<i64> = query_column(
        &rw,
        &format!("SELECT id FROM pgherd_drill_rows WHERE run = '{run}'"),
    )
    .await?
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect();
    let lost = log
        .acknowledged
        .iter()
        .filter(|(id, _)| !stored.contains(id))
        .count();
    let mode = match sync {
        SynchronousMode::Off => "asynchronous",
        SynchronousMode::On => "synchronous",
        SynchronousMode::Quorum => "quorum",
    };
    // Losses are possible only without synchronous replication; then they are shown.
    let passed = lost == 0 || sync == SynchronousMode::Off;
    let mut detail = format!(
        "killed {old} ({killed_what}); {new} leads after {:.1} s; no write acknowledged \
         for {:.1} s (longest gap {:.1} s); {} rows acknowledged, {lost} lost ({mode} mode); \
         {} attempts failed",
        elapsed_s(elected),
        elapsed_s(unavailable),
        elapsed_s(log.longest_gap(killed)),
        log.acknowledged.len(),
        log.failures.len(),
    );
    match revived {
        Ok(what) => detail.push_str(&format!("\n{what}")),
        Err(e) => detail.push_str(&format!("\ncould not start {old} again: {e:#}")),
    }
    Ok(Outcome { passed, detail })
}

/// Whether the writer had a write acknowledged after `t`.
fn acked_since(last_ack: &Mutex<Option<Instant>>, t: Instant) -> bool {
    last_ack
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some_and(|a| a > t)
}

fn elapsed_s(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// (c) TPC-B-like clients through the read-write address across a switchover.
async fn switchover_check(target: &mut Target<'_>) -> Result<Outcome> {
    let before = wait_healthy(target, HEALTHY_WAIT).await?;
    let leader = before.leader_name().context("no leader")?.to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers = workload::start_bench(target.read_write.clone(), BENCH_CLIENTS, stop.clone());
    tokio::time::sleep(WARM_UP).await;
    // In synchronous mode only a synchronous standby may take over.
    let candidate = match synchronous(&before) {
        SynchronousMode::Off => None,
        _ => sync_standbys(&before).into_iter().next(),
    };
    let asked = switchover::Request {
        leader: Some(leader.clone()),
        candidate,
        scheduled: None,
        force: true,
    };
    let switched = Instant::now();
    let done = switch_over(target, asked).await;
    let handed_over = switched.elapsed();
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    let ended = Instant::now();
    let mut committed = 0;
    let mut failed = 0;
    let mut messages = Vec::new();
    let mut commits = Vec::new();
    for w in workers {
        let log = w.await.context("a client task")?;
        committed += log.committed;
        failed += log.failed;
        messages.extend(log.messages);
        commits.extend(log.commits);
    }
    messages.dedup();
    messages.truncate(3);
    done.context("the switchover")?;
    let after = cluster(target).await?;
    let new = after.leader_name().unwrap_or("nobody").to_string();
    let stall = workload::longest_stall(&mut commits, started + WARM_UP, ended);
    let mut detail = format!(
        "{leader} -> {new} in {:.1} s under {BENCH_CLIENTS} clients: {committed} \
         transactions, {failed} failed, longest stall {:.2} s",
        handed_over.as_secs_f64(),
        stall.as_secs_f64()
    );
    if !messages.is_empty() {
        detail.push_str(&format!("\nerrors: {}", messages.join("; ")));
    }
    Ok(Outcome {
        passed: failed == 0 && committed > 0 && new != leader,
        detail,
    })
}

/// Attempts at the switchover: a replica that has just started following a new leader
/// may not be streaming in the leader's own view yet, and the leader then drops the
/// request as impossible; an operator would try again a moment later.
const SWITCHOVER_ATTEMPTS: usize = 3;

/// Ask for the switchover until the leader changes (at most [`SWITCHOVER_ATTEMPTS`]).
async fn switch_over(target: &Target<'_>, asked: switchover::Request) -> Result<String> {
    let mut attempt = 1;
    loop {
        let outcome = switchover::run(
            target.dcs.as_ref(),
            &target.http,
            &target.scope,
            Kind::Switchover,
            asked.clone(),
        )
        .await;
        let moved = cluster(target)
            .await
            .is_ok_and(|c| c.leader_name().is_some() && c.leader_name() != asked.leader.as_deref());
        match outcome {
            Ok(done) => return Ok(done),
            Err(_) if moved => return Ok("switched over".into()),
            Err(e) if attempt >= SWITCHOVER_ATTEMPTS => return Err(e),
            Err(e) => eprintln!("drill: switchover attempt {attempt}: {e:#}; trying again"),
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// (d) Reads through the read-only address, by the replica that served them.
async fn balancing(target: &Target<'_>) -> Result<Outcome> {
    let c = wait_healthy(target, HEALTHY_WAIT).await?;
    let leader = c.leader_name().unwrap_or_default().to_string();
    let mut names: BTreeMap<u16, String> = BTreeMap::new();
    for m in &c.members {
        if let Some((_, port)) = parse_conn_url(&m.data.conn_url) {
            names.insert(port, m.name.clone());
        }
    }
    let eligible: Vec<String> = streaming_replicas(&c)
        .into_iter()
        .filter(|(name, _, _)| c.member(name).is_some_and(|m| !m.data.tags.noloadbalance))
        .map(|(name, _, _)| name)
        .collect();
    let mut tasks = Vec::new();
    for _ in 0..READ_CLIENTS {
        let to = target.read_only.clone();
        tasks.push(tokio::spawn(async move {
            let client = connect(&to).await?;
            let mut ports = Vec::with_capacity(READS_PER_CLIENT);
            for _ in 0..READS_PER_CLIENT {
                let port = query_text(&client, "SELECT inet_server_port()").await?;
                ports.push(port.and_then(|p| p.parse::<u16>().ok()).unwrap_or(0));
            }
            Ok::<_, anyhow::Error>(ports)
        }));
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        for port in t.await.context("a reader task")?? {
            let name = names
                .get(&port)
                .cloned()
                .unwrap_or_else(|| format!("port {port}"));
            *counts.entry(name).or_default() += 1;
        }
    }
    let on_primary = counts.get(&leader).copied().unwrap_or(0);
    let fair = READS / eligible.len().max(1);
    // Spread: every eligible replica serves at least a third of its fair share.
    let spread = eligible
        .iter()
        .all(|r| counts.get(r).copied().unwrap_or(0) * 3 >= fair);
    let passed = !eligible.is_empty() && on_primary == 0 && spread;
    let shown: Vec<String> = counts.iter().map(|(n, k)| format!("{n} {k}")).collect();
    let mut detail = format!(
        "{READS} reads through {} by {READ_CLIENTS} clients: {} (primary {leader}: {on_primary})",
        target.read_only.shown(),
        shown.join(", ")
    );
    if eligible.is_empty() {
        detail.push_str("; no replica may serve reads");
    }
    Ok(Outcome { passed, detail })
}
