//! The fencer beside each agent: a primary whose agent freezes (SIGSTOP longer than the
//! ttl) or dies (kill -9) while its PostgreSQL runs on is killed before the lease can
//! expire, so the member promoted next never runs beside a second writable primary.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Which members accept a write right now, probed directly (not through any router).
async fn writable(cluster: &TestCluster) -> Vec<String> {
    let mut found = Vec::new();
    for n in &cluster.nodes {
        let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(1), n.connect()).await else {
            continue;
        };
        let probe = client.batch_execute(
            "SET statement_timeout = 1000; SET synchronous_commit = local; \
             CREATE TABLE IF NOT EXISTS fence_probe (at timestamptz); \
             INSERT INTO fence_probe VALUES (now())",
        );
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), probe).await {
            found.push(n.name.clone());
        }
    }
    found
}

/// Probe until a member other than `old` takes writes; fail on any sample with two
/// writable members. Returns when `old` stopped taking writes and when the new one began.
async fn watch_failover(cluster: &TestCluster, old: &str) -> (Duration, Duration) {
    let started = Instant::now();
    let mut old_stopped = None;
    loop {
        let now = writable(cluster).await;
        assert!(now.len() <= 1, "two writable primaries at once: {now:?}");
        if old_stopped.is_none() && !now.iter().any(|n| n == old) {
            old_stopped = Some(started.elapsed());
        }
        if let Some(new) = now.iter().find(|n| *n != old) {
            let stopped = old_stopped.unwrap_or_default();
            eprintln!(
                "{old} stopped taking writes after {stopped:?}; {new} took writes after {:?}",
                started.elapsed()
            );
            return (stopped, started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(TTL * 6) {
            cluster.dump_logs();
            panic!("no new primary within {}s", TTL * 6);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_or_dead_agents_primary_is_fenced_before_another_member_takes_over() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(3);
    cluster.start_all();
    let first = cluster.wait_healthy(2, Duration::from_secs(120)).await;

    // The agent freezes; its PostgreSQL would run on as a primary without the fencer.
    cluster.node(&first).signal_agent(libc::SIGSTOP);
    let (stopped, taken) = watch_failover(&cluster, &first).await;
    assert!(stopped < taken);
    assert!(
        stopped < Duration::from_secs(TTL),
        "fenced only after {stopped:?}, past the lease"
    );
    assert!(cluster.node(&first).postmaster_pid().is_none());
    assert!(cluster
        .node(&first)
        .agent_log()
        .contains("the agent stopped renewing"));

    // Thawed, the agent finds another leader and rejoins as its replica.
    cluster.node(&first).signal_agent(libc::SIGCONT);
    let second = cluster.wait_healthy(2, Duration::from_secs(120)).await;
    assert_ne!(second, first);

    // The agent dies outright (kill -9) and nobody restarts it for a while.
    cluster.node_mut(&second).kill_agent();
    let (stopped, taken) = watch_failover(&cluster, &second).await;
    assert!(stopped < taken);
    assert!(cluster.node(&second).postmaster_pid().is_none());
    assert!(cluster.node(&second).agent_log().contains("the agent died"));
    cluster.node_mut(&second).start();
    cluster.wait_healthy(2, Duration::from_secs(120)).await;
}
