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

/// `members` started and healthy, with table `table (id int PRIMARY KEY)` on the
/// primary; returns the cluster and the primary.
async fn cluster_with_table(members: usize, table: &str) -> (TestCluster, String) {
    let mut cluster = TestCluster::new(members);
    cluster.start_all();
    let primary = cluster
        .wait_healthy(members - 1, Duration::from_secs(120))
        .await;
    cluster
        .node(&primary)
        .connect()
        .await
        .expect("connect")
        .batch_execute(&format!("CREATE TABLE {table} (id int PRIMARY KEY)"))
        .await
        .expect("create table");
    (cluster, primary)
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
    let (mut cluster, _) = cluster_with_table(2, "acked").await;
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
    let (mut cluster, _) = cluster_with_table(2, "strict_rows").await;
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

/// The primary's `synchronous_standby_names`.
async fn standby_names(cluster: &TestCluster, primary: &str) -> String {
    let client = cluster.node(primary).connect().await.expect("connect");
    let row = client
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .expect("show");
    row.get(0)
}

/// One primary whose commits wait for `ANY 1` of `standbys`, each of which answers
/// `/quorum` with 200.
async fn wait_quorum(cluster: &TestCluster, standbys: usize, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let primary = cluster.wait_healthy(standbys, within).await;
        let mut voters = 0;
        for n in cluster.nodes.iter().filter(|n| n.name != primary) {
            if n.api("/quorum").await.0 == 200 {
                voters += 1;
            }
        }
        let names = standby_names(cluster, &primary).await;
        if voters == standbys
            && names.starts_with("ANY 1 (")
            && names.matches(',').count() + 1 == standbys
        {
            return primary;
        }
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!("no quorum of {standbys} within {within:?}: {voters} voters, {names:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Commit a row on `primary`, kill -9 its node at once, and check that whoever takes
/// over has the row. Returns the new primary.
async fn commit_then_kill_primary(cluster: &mut TestCluster, primary: &str, id: i32) -> String {
    let client = cluster.node(primary).connect().await.expect("connect");
    client
        .execute("INSERT INTO acked (id) VALUES ($1)", &[&id])
        .await
        .expect("commit acknowledged");
    cluster.node_mut(primary).kill_node();
    let deadline = Instant::now() + Duration::from_secs(90);
    let taker = loop {
        match cluster.primary().await {
            Some(p) if p != primary => break p,
            _ => {}
        }
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!("row {id}: nobody took over from {primary}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rows = cluster
        .node(&taker)
        .connect()
        .await
        .expect("connect to the new primary")
        .query("SELECT 1 FROM acked WHERE id = $1", &[&id])
        .await
        .expect("read");
    assert_eq!(rows.len(), 1, "row {id}: the acknowledged row is lost");
    taker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_mode_loses_no_acknowledged_commit_and_shrinks_with_its_standbys() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, _) = cluster_with_table(3, "acked").await;
    set(&cluster, &["synchronous_mode=quorum"]);
    let primary = wait_quorum(&cluster, 2, Duration::from_secs(60)).await;
    let list = text(&cluster.ctl(&["list"]));
    assert_eq!(list.matches("Quorum Standby").count(), 2, "{list}");
    let replica = cluster.nodes.iter().find(|n| n.name != primary).unwrap();
    assert_eq!(replica.api("/sync").await.0, 503, "quorum, not sync");
    assert_eq!(replica.api("/async").await.0, 503);
    assert_eq!(replica.api("/read-only-quorum").await.0, 200);
    assert_eq!(replica.api("/patroni").await.1["quorum_standby"], true);

    // Commits wait for any one of the two standbys; whichever takes over has them.
    let mut primary = primary;
    for id in 1..=3 {
        let old = primary.clone();
        primary = commit_then_kill_primary(&mut cluster, &old, id).await;
        cluster.node_mut(&old).start();
        primary = wait_quorum(&cluster, 2, Duration::from_secs(120))
            .await
            .max(primary);
    }

    // With one standby gone, commits go on, waiting for the other, which alone may take
    // over then.
    let primary = wait_quorum(&cluster, 2, Duration::from_secs(120)).await;
    let gone = cluster.other_than(&primary);
    cluster.node_mut(&gone).kill_node();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let names = standby_names(&cluster, &primary).await;
        let key = cluster.keys().await.sync.expect("sync key").value;
        let voters = key.sync_standby.clone().unwrap_or_default();
        if names.starts_with("ANY 1 (") && !names.contains(&gone) && !voters.contains(&gone) {
            assert_eq!(key.quorum, Some(0), "{key:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{gone} still in {names} or in {key:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let survivor = commit_then_kill_primary(&mut cluster, &primary, 100).await;
    assert_ne!(survivor, gone);
}
