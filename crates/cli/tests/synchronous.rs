//! Synchronous replication on a real cluster: no acknowledged commit is lost when the
//! primary's node dies right after it, and in strict mode a commit waits while no
//! synchronous standby is there.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// One primary, and `replica` named in the sync key (its `/sync` answers 200).
async fn wait_synchronous(cluster: &TestCluster, within: Duration) -> (String, String) {
    let deadline = Instant::now() + within;
    loop {
        let primary = cluster.wait_healthy(1, within).await;
        for n in cluster.nodes.iter().filter(|n| n.name != primary) {
            if n.api("/sync").await.0 == 200 {
                return (primary, n.name.clone());
            }
        }
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!("no synchronous standby within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn set(cluster: &TestCluster, settings: &[&str]) {
    let mut args = vec!["edit-config", "--force"];
    for s in settings {
        args.extend(["--set", s]);
    }
    let out = cluster.ctl(&args);
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_commit_is_lost_when_the_primary_dies_at_once() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(2);
    cluster.start_all();
    let first = cluster.wait_healthy(1, Duration::from_secs(120)).await;
    cluster
        .node(&first)
        .connect()
        .await
        .expect("connect")
        .batch_execute("CREATE TABLE acked (id int PRIMARY KEY)")
        .await
        .expect("create table");
    set(&cluster, &["synchronous_mode=true"]);
    let (_, standby) = wait_synchronous(&cluster, Duration::from_secs(60)).await;
    let list = text(&cluster.ctl(&["list"]));
    assert!(list.contains("Sync Standby"), "{list}");
    let standby_node = cluster.node(&standby);
    assert_eq!(standby_node.api("/async").await.0, 503);

    for round in 1..=10 {
        let (primary, standby) = wait_synchronous(&cluster, Duration::from_secs(120)).await;
        let client = cluster.node(&primary).connect().await.expect("connect");
        client
            .execute("INSERT INTO acked (id) VALUES ($1)", &[&round])
            .await
            .expect("commit acknowledged");
        cluster.node_mut(&primary).kill_node();
        let deadline = Instant::now() + Duration::from_secs(90);
        while cluster.primary().await.as_deref() != Some(standby.as_str()) {
            assert!(
                Instant::now() < deadline,
                "round {round}: {standby} did not take over"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let rows = cluster
            .node(&standby)
            .connect()
            .await
            .expect("connect to the new primary")
            .query("SELECT 1 FROM acked WHERE id = $1", &[&round])
            .await
            .expect("read");
        assert_eq!(rows.len(), 1, "round {round}: the acknowledged row is lost");
        cluster.node_mut(&primary).start();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_makes_a_commit_wait_until_a_standby_is_back() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(2);
    cluster.start_all();
    let primary = cluster.wait_healthy(1, Duration::from_secs(120)).await;
    cluster
        .node(&primary)
        .connect()
        .await
        .expect("connect")
        .batch_execute("CREATE TABLE strict_rows (id int PRIMARY KEY)")
        .await
        .expect("create table");
    set(
        &cluster,
        &["synchronous_mode=true", "synchronous_mode_strict=true"],
    );
    let (primary, standby) = wait_synchronous(&cluster, Duration::from_secs(60)).await;
    cluster.node_mut(&standby).kill_node();

    let port = cluster.node(&primary).pg_port;
    let writer = tokio::spawn(async move {
        let client = connect(port).await.expect("connect");
        client
            .execute("INSERT INTO strict_rows (id) VALUES (1)", &[])
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_secs(3 * LOOP_WAIT)).await;
    assert!(
        !writer.is_finished(),
        "strict mode: a commit must wait while no synchronous standby is there"
    );
    assert_eq!(
        cluster.primary().await.as_deref(),
        Some(primary.as_str()),
        "the primary stays the primary"
    );

    cluster.node_mut(&standby).start();
    let result = tokio::time::timeout(Duration::from_secs(120), writer)
        .await
        .expect("the commit returns once the standby is back")
        .expect("writer task");
    result.expect("the waiting commit succeeds");
    let rows = cluster
        .node(&primary)
        .connect()
        .await
        .expect("connect")
        .query("SELECT 1 FROM strict_rows", &[])
        .await
        .expect("read");
    assert_eq!(rows.len(), 1);
}
