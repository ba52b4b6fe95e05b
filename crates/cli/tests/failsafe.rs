//! Failsafe mode on a real cluster (Patroni's `failsafe_mode`): with etcd gone, the
//! primary keeps taking writes for as long as every member answers it; once one member
//! stops answering, it demotes as the lease rule demands.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// The member commits a write (and so is a writable primary).
async fn takes_writes(node: &TestNode) -> bool {
    let Ok(client) = node.connect().await else {
        return false;
    };
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS failsafe_probe (at timestamptz); \
             INSERT INTO failsafe_probe VALUES (now())",
        )
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failsafe_primary_runs_on_without_etcd_until_a_member_stops_answering() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(3);
    cluster.start_all();
    let primary = cluster.wait_healthy(2, Duration::from_secs(120)).await;

    let out = cluster.ctl(&["edit-config", "--set", "failsafe_mode=true", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    // The leader records every member in the failsafe key.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let members = cluster.keys().await.failsafe.unwrap_or_default();
        if members.len() == 3 {
            assert!(members.values().all(|url| url.ends_with("/patroni")));
            break;
        }
        assert!(Instant::now() < deadline, "failsafe key: {members:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // GET /failsafe shows it once the leader has read it back.
    loop {
        let (code, body) = cluster.node(&primary).api("/failsafe").await;
        assert_eq!(code, 200, "{body}");
        if body.as_object().map(|o| o.len()) == Some(3) {
            break;
        }
        assert!(Instant::now() < deadline, "GET /failsafe: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // etcd goes away. Without failsafe mode the primary would demote within a ttl; here
    // every replica confirms it, so it keeps taking writes for well over two ttls.
    cluster.etcd.kill();
    let until = Instant::now() + Duration::from_secs(TTL * 5 / 2);
    let mut checks = 0;
    while Instant::now() < until {
        assert!(
            takes_writes(cluster.node(&primary)).await,
            "the primary stopped taking writes {checks} s after etcd went away"
        );
        checks += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (code, body) = cluster.node(&primary).api("/patroni").await;
    assert_eq!(code, 200);
    assert_eq!(body["failsafe_mode_is_active"], true, "{body}");
    assert_eq!(cluster.node(&primary).api("/primary").await.0, 200);
    let replica = cluster.other_than(&primary);
    let (_, body) = cluster.node(&replica).api("/patroni").await;
    assert_eq!(body["failsafe_mode_is_active"], true, "{body}");
    assert!(cluster.node(&primary).agent_log().contains("failsafe mode"));

    // One replica stops answering: the primary can no longer be sure nobody takes over,
    // so it demotes before its extended lease runs out.
    cluster.node_mut(&replica).kill_agent();
    let stopped = Instant::now();
    let deadline = stopped + Duration::from_secs(TTL + 2 * LOOP_WAIT + 5);
    while takes_writes(cluster.node(&primary)).await {
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!("the primary still takes writes with a member unreachable and no etcd");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let demoted_after = stopped.elapsed();
    assert!(
        demoted_after < Duration::from_secs(TTL),
        "demoted only after {demoted_after:?}"
    );
    assert!(cluster
        .node(&primary)
        .agent_log()
        .contains("could not confirm"));

    // etcd and the member come back: one primary and two streaming replicas again.
    cluster.etcd.restart().expect("restart etcd");
    cluster.node_mut(&replica).start();
    cluster.wait_healthy(2, Duration::from_secs(120)).await;
}
