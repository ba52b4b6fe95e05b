//! Operator requests to single members on a real cluster: `ctl restart` (a replica
//! without failover, the primary in place), `ctl reload`, `ctl reinit` (refused on the
//! leader), and a scheduled restart cancelled through the REST API.

mod common;

use common::*;
use std::time::{Duration, Instant};

async fn postmaster_start(node: &TestNode) -> String {
    node.api("/patroni").await.1["postmaster_start_time"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The member's PostgreSQL started anew (its API shows it within a loop).
async fn restarted_since(node: &TestNode, started: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while postmaster_start(node).await == started {
        assert!(Instant::now() < deadline, "{} was not restarted", node.name);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reload_and_reinit_act_on_one_member_without_failover() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(2);
    cluster.start_all();
    let primary = cluster.wait_healthy(1, Duration::from_secs(120)).await;
    let replica = cluster
        .nodes
        .iter()
        .find(|n| n.name != primary)
        .map(|n| n.name.clone())
        .expect("a replica");
    let (_, before) = cluster.node(&primary).api("/patroni").await;

    // The replica restarts; the primary stays where it is.
    let started = postmaster_start(cluster.node(&replica)).await;
    let out = cluster.ctl(&["restart", &replica, "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    restarted_since(cluster.node(&replica), &started).await;
    cluster.wait_healthy(1, Duration::from_secs(60)).await;
    assert_eq!(cluster.primary().await.as_deref(), Some(primary.as_str()));

    // The primary restarts in place: same leader, same timeline.
    let started = postmaster_start(cluster.node(&primary)).await;
    let out = cluster.ctl(&["restart", "--role", "primary", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("restart on member {primary}")));
    assert!(!text(&out).contains(&format!("restart on member {replica}")));
    let back = cluster.wait_healthy(1, Duration::from_secs(60)).await;
    assert_eq!(back, primary);
    let (_, after) = cluster.node(&primary).api("/patroni").await;
    assert_ne!(
        after["postmaster_start_time"].as_str(),
        Some(started.as_str())
    );
    assert_eq!(
        after["timeline"], before["timeline"],
        "no failover happened"
    );

    let out = cluster.ctl(&["reload", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        text(&out).matches("Success: reload").count(),
        2,
        "{}",
        text(&out)
    );

    // A scheduled restart waits and can be cancelled (patronictl flush uses DELETE).
    let out = cluster.ctl(&[
        "restart",
        &replica,
        "--scheduled",
        "2099-01-01T00:00:00Z",
        "--force",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("restart scheduled at 2099-01-01T00:00:00+00:00"));
    let url = format!(
        "http://127.0.0.1:{}/restart",
        cluster.node(&replica).api_port
    );
    let http = pgherd_http::client::default_client().expect("HTTP client");
    let cancelled = http.delete(&url).send().await.expect("DELETE /restart");
    assert_eq!(cancelled.status().as_u16(), 200);
    let again = http.delete(&url).send().await.expect("DELETE /restart");
    assert_eq!(again.status().as_u16(), 404);
    let bad = http
        .post(&url)
        .body(r#"{"restart_pending": "yes"}"#)
        .send()
        .await
        .expect("POST /restart");
    assert_eq!(bad.status().as_u16(), 400);

    // Reinit: refused on the leader, and a replica's data is cloned afresh.
    let out = cluster.ctl(&["reinit", &primary, "--force"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is the leader"), "{}", text(&out));
    let marker = cluster.node(&replica).data_dir().join("reinit-marker");
    std::fs::write(&marker, "x").expect("write a marker into the replica's data");
    let out = cluster.ctl(&["reinit", &replica, "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("reinitialize started"),
        "{}",
        text(&out)
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while marker.exists() {
        assert!(Instant::now() < deadline, "the replica was not re-cloned");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    cluster.wait_healthy(1, Duration::from_secs(120)).await;
    assert_eq!(cluster.primary().await.as_deref(), Some(primary.as_str()));

    // Prometheus metrics on the node's REST API.
    let metrics = pgherd_http::client::default_client()
        .expect("HTTP client")
        .get(format!(
            "http://127.0.0.1:{}/metrics",
            cluster.node(&primary).api_port
        ))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let labels = format!("{{scope=\"{}\",name=\"{primary}\"}}", cluster.scope);
    assert!(
        metrics.contains(&format!("patroni_primary{labels} 1")),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("patroni_postgres_running{labels} 1")));
    let renewals = metrics
        .lines()
        .find(|l| l.starts_with("pgherd_leader_lease_renewals_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("a renewal counter");
    assert!(renewals > 0, "{metrics}");
    assert!(metrics.contains("pgherd_last_decision_info{"), "{metrics}");

    // version and topology.
    let out = cluster.ctl(&["version"]);
    assert!(
        text(&out).contains(&format!("{primary}: agent version ")),
        "{}",
        text(&out)
    );
    let out = cluster.ctl(&["topology"]);
    assert!(
        text(&out).contains(&format!("| + {replica} ")),
        "{}",
        text(&out)
    );
}

/// `ctl remove` wipes the cluster's keys only after the cluster's and the leader's names
/// are typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_wipes_the_cluster_after_typed_confirmation() {
    use std::io::Write;
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(1);
    cluster.start_all();
    let primary = cluster.wait_healthy(0, Duration::from_secs(90)).await;
    cluster.node_mut(&primary).kill_node();
    let scope = cluster.scope.clone();
    let remove = |answers: &str, name: &str| {
        let mut child = cluster
            .ctl_command(&["remove", name])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run ctl remove");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(answers.as_bytes())
            .expect("answer");
        child.wait_with_output().expect("ctl remove")
    };
    let out = remove("other\n", &scope);
    assert!(!out.status.success(), "{}", text(&out));
    let out = remove(&format!("{scope}\nnot-the-leader\n"), &scope);
    assert!(
        !out.status.success(),
        "the leader still holds its key: {}",
        text(&out)
    );
    let out = remove(&format!("{scope}\n{primary}\n"), "wrong-cluster");
    assert!(!out.status.success());
    let list = cluster.ctl(&["list", "--format", "json"]);
    assert!(text(&list).contains(&primary), "nothing was removed yet");
    let out = remove(&format!("{scope}\n{primary}\n"), &scope);
    assert!(out.status.success(), "{}", text(&out));
    let list = cluster.ctl(&["list", "--format", "json"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
}

/// The member other than `name` that answers 200 on `/primary`, once one does.
async fn wait_for_new_primary(cluster: &TestCluster, old: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some(p) = cluster.primary().await.filter(|p| p != old) {
            return p;
        }
        assert!(Instant::now() < deadline, "no member took over from {old}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `primary_start_timeout: 0`: a primary whose PostgreSQL crashed gives its key up at
/// once and a replica takes over; a primary whose agent is stopped with SIGTERM hands
/// over cleanly too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_or_stopped_primary_hands_over_without_waiting_for_the_ttl() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(2);
    cluster.start_all();
    let first = cluster.wait_healthy(1, Duration::from_secs(120)).await;
    let out = cluster.ctl(&["edit-config", "--set", "primary_start_timeout=0", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    tokio::time::sleep(Duration::from_secs(LOOP_WAIT + 1)).await;

    let crashed = Instant::now();
    cluster.node(&first).kill_postgres();
    let second = wait_for_new_primary(&cluster, &first, Duration::from_secs(60)).await;
    eprintln!(
        "crash of {first}'s postmaster: {second} writable after {:?}",
        crashed.elapsed()
    );
    // The crashed primary comes back as a replica of the new one.
    cluster.wait_healthy(1, Duration::from_secs(120)).await;

    let stopped = Instant::now();
    cluster.node_mut(&second).terminate_agent();
    assert_eq!(
        cluster.node(&second).postmaster_pid(),
        None,
        "SIGTERM stops PostgreSQL"
    );
    let third = wait_for_new_primary(&cluster, &second, Duration::from_secs(60)).await;
    assert_eq!(third, first);
    eprintln!(
        "SIGTERM of {second}'s agent: {third} writable after {:?}",
        stopped.elapsed()
    );
    assert!(
        cluster
            .node(&second)
            .agent_log()
            .contains("released the leader key"),
        "the stopped agent released its key"
    );
}
