//! Planned switchover and manual failover on a real cluster (etcd + PostgreSQL 15 +
//! `pgherd node`), through `pgherd ctl` and the REST API, under a continuous writer.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a client writing through a switchover saw.
struct Written {
    /// Ids whose INSERT returned success.
    acknowledged: Vec<i32>,
    /// INSERTs that failed (connection lost, read-only, ...): their outcome is unknown.
    failed: u32,
    /// The longest time between two acknowledged writes.
    longest_gap: Duration,
}

/// Insert rows one at a time into whichever member is writable (libpq-style multi-host
/// connection, `target_session_attrs=read-write`), reconnecting after every error.
async fn write_until(ports: Vec<u16>, stop: Arc<AtomicBool>) -> Written {
    let hosts = vec!["127.0.0.1"; ports.len()].join(",");
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let conn = format!(
        "host={hosts} port={} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres \
         connect_timeout=1 target_session_attrs=read-write",
        ports.join(",")
    );
    let mut written = Written {
        acknowledged: Vec::new(),
        failed: 0,
        longest_gap: Duration::ZERO,
    };
    let mut client: Option<tokio_postgres::Client> = None;
    let mut next = 1;
    let mut last_ok = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let c = match client.take() {
            Some(c) if !c.is_closed() => c,
            _ => match tokio_postgres::connect(&conn, tokio_postgres::NoTls).await {
                Ok((c, connection)) => {
                    tokio::spawn(connection);
                    c
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let id = next;
        next += 1;
        match c
            .execute("INSERT INTO items (id) VALUES ($1)", &[&id])
            .await
        {
            Ok(_) => {
                written.acknowledged.push(id);
                written.longest_gap = written.longest_gap.max(last_ok.elapsed());
                last_ok = Instant::now();
                client = Some(c);
            }
            Err(_) => written.failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    written
}

async fn timeline(node: &TestNode) -> u64 {
    node.api("/patroni").await.1["timeline"]
        .as_u64()
        .unwrap_or(0)
}

/// The old primary rejoins as a streaming replica of the new one, on its timeline.
async fn wait_streaming_on(node: &TestNode, timeline: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (_, s) = node.api("/patroni").await;
        if s["role"] == "replica"
            && s["replication_state"] == "streaming"
            && s["timeline"].as_u64() == Some(timeline)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not stream on timeline {timeline}: {s}",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `name` answers 200 on `/primary` (its API publishes the promotion within a loop).
async fn wait_primary(cluster: &TestCluster, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.primary().await.as_deref() != Some(name) {
        assert!(
            Instant::now() < deadline,
            "{name} did not become the primary"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    let r = pgherd_http::client::default_client()
        .expect("HTTP client")
        .post(format!("http://127.0.0.1:{port}{path}"))
        .body(body.to_string())
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("REST API answers");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

async fn delete(port: u16, path: &str) -> (u16, String) {
    let r = pgherd_http::client::default_client()
        .expect("HTTP client")
        .delete(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("REST API answers");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// Three switchovers back and forth while a client writes: every acknowledged row is on
/// the final primary, each old primary follows the new one on its timeline without
/// pg_rewind, and bad requests are refused up front with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchovers_under_a_writer_lose_nothing_and_need_no_rewind() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(3);
    cluster.start_all();
    let first = cluster.wait_healthy(2, Duration::from_secs(120)).await;
    cluster
        .node(&first)
        .connect()
        .await
        .expect("connect to the primary")
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .expect("create table");
    cluster.wait_healthy(2, Duration::from_secs(30)).await;

    // Refused up front, nothing written.
    let refused = [
        (
            vec!["switchover", "--candidate", "nosuch", "--force"],
            "no member nosuch",
        ),
        (
            vec!["switchover", "--candidate", first.as_str(), "--force"],
            "already the leader",
        ),
        (
            vec!["switchover", "--leader", "nosuch", "--force"],
            "not the leader",
        ),
        (
            vec!["switchover", "--scheduled", "yesterday", "--force"],
            "cannot read the time",
        ),
        (vec!["failover", "--force"], "needs a candidate"),
    ];
    for (args, why) in refused {
        let out = cluster.ctl(&args);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(text(&out).contains(why), "{args:?}: {}", text(&out));
    }
    let api = cluster.node(&first).api_port;
    let (code, body) = post(api, "/switchover", "{not json").await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = post(api, "/switchover", r#"{"candidate": "node2"}"#).await;
    assert_eq!(code, 400, "a switchover names the leader: {body}");
    let (code, body) = post(api, "/switchover", r#"{"leader": 7}"#).await;
    assert_eq!(code, 400, "{body}");
    let body = format!(r#"{{"leader": "{first}", "candidate": "nosuch"}}"#);
    let (code, answer) = post(api, "/switchover", &body).await;
    assert_eq!(code, 412, "{answer}");

    // A scheduled switchover can be cancelled.
    let out = cluster.ctl(&[
        "switchover",
        "--scheduled",
        "2099-01-01T00:00:00Z",
        "--force",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("scheduled at 2099-01-01T00:00:00+00:00"));
    let out = cluster.ctl(&["switchover", "--force"]);
    assert!(
        !out.status.success() && text(&out).contains("pending"),
        "{}",
        text(&out)
    );
    assert_eq!(delete(api, "/switchover").await.0, 200);
    assert_eq!(delete(api, "/switchover").await.0, 404);

    let stop = Arc::new(AtomicBool::new(false));
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.pg_port).collect();
    let writer = tokio::spawn(write_until(ports, stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut replicas: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.name != first)
        .map(|n| n.name.clone())
        .collect();
    replicas.sort();
    // Back and forth: to a replica, back to the first primary, to the other replica.
    let targets = [replicas[0].clone(), first.clone(), replicas[1].clone()];
    let mut leader = first.clone();
    for (round, candidate) in targets.into_iter().enumerate() {
        let before = timeline(cluster.node(&leader)).await;
        let started = Instant::now();
        match round {
            // Through the REST API, as patronictl does it.
            1 => {
                let body = format!(r#"{{"leader": "{leader}", "candidate": "{candidate}"}}"#);
                let (code, answer) =
                    post(cluster.node(&leader).api_port, "/switchover", &body).await;
                assert_eq!(code, 200, "{answer}");
                assert!(
                    answer.contains(&format!("switched over to \"{candidate}\"")),
                    "{answer}"
                );
            }
            _ => {
                let out = cluster.ctl(&[
                    "switchover",
                    "--leader",
                    &leader,
                    "--candidate",
                    &candidate,
                    "--force",
                ]);
                assert!(out.status.success(), "{}", text(&out));
                assert!(
                    text(&out).contains(&format!("Successfully switched over to \"{candidate}\"")),
                    "{}",
                    text(&out)
                );
            }
        }
        eprintln!(
            "switchover {round}: {leader} -> {candidate} in {:?}",
            started.elapsed()
        );
        wait_primary(&cluster, &candidate).await;
        let after = timeline(cluster.node(&candidate)).await;
        assert_eq!(after, before + 1, "the new primary is on the next timeline");
        wait_streaming_on(cluster.node(&leader), after, Duration::from_secs(60)).await;
        leader = candidate;
        // Writes go on after each switchover.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    stop.store(true, Ordering::Relaxed);
    let written = writer.await.expect("writer");
    eprintln!(
        "writer: {} acknowledged, {} failed, longest gap {:?}",
        written.acknowledged.len(),
        written.failed,
        written.longest_gap
    );
    let client = cluster.node(&leader).connect().await.expect("connect");
    let rows = client
        .query("SELECT id FROM items", &[])
        .await
        .expect("read rows");
    let present: std::collections::HashSet<i32> = rows.iter().map(|r| r.get(0)).collect();
    let lost: Vec<&i32> = written
        .acknowledged
        .iter()
        .filter(|id| !present.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(written.acknowledged.len() > 100, "the writer made progress");
    for n in &cluster.nodes {
        assert!(
            !n.agent_log().contains("rewinding with pg_rewind"),
            "{} needed pg_rewind",
            n.name
        );
    }
    let history = text(&cluster.ctl(&["history"]));
    assert_eq!(
        history.lines().count(),
        4,
        "three promotions recorded: {history}"
    );
    // The demoted primaries dropped the slots they kept as primaries: on a replica nobody
    // would advance them, and they would keep its WAL until its disk filled.
    for n in cluster.nodes.iter().filter(|n| n.name != leader) {
        wait_no_slots(n, Duration::from_secs(30)).await;
    }
}

async fn wait_no_slots(node: &TestNode, within: Duration) {
    let deadline = Instant::now() + within;
    let mut slots = Vec::new();
    while Instant::now() < deadline {
        if let Ok(c) = node.connect().await {
            if let Ok(rows) = c
                .query("SELECT slot_name::text FROM pg_replication_slots", &[])
                .await
            {
                slots = rows.iter().map(|r| r.get::<_, String>(0)).collect();
                if slots.is_empty() {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{} still has replication slots {slots:?}", node.name);
}

/// `ctl failover --candidate` picks the member even when the leader is dead and another
/// member would win the automatic race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_promotes_the_named_member_when_the_leader_is_gone() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(3);
    cluster.start_all();
    let primary = cluster.wait_healthy(2, Duration::from_secs(120)).await;
    // The automatic race prefers the lowest name among equals: ask for the other one.
    let mut replicas: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.name != primary)
        .map(|n| n.name.clone())
        .collect();
    replicas.sort();
    let wanted = replicas[1].clone();
    cluster.node_mut(&primary).kill_node();
    let out = cluster.ctl(&["failover", "--candidate", &wanted, "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("Successfully failed over to \"{wanted}\"")),
        "{}",
        text(&out)
    );
    wait_primary(&cluster, &wanted).await;
    let other = cluster.node(&replicas[0]);
    let tl = timeline(cluster.node(&wanted)).await;
    wait_streaming_on(other, tl, Duration::from_secs(60)).await;
}
