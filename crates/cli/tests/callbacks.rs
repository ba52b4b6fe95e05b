//! Patroni's callbacks on a real cluster: `on_start`, `on_stop`, `on_role_change` called
//! with action, role and scope; a `pre_promote` that exits non-zero keeps its member from
//! being promoted.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The member that may never be promoted: its pre_promote script refuses.
const VETOING: &str = "node3";

fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
    pgherd_testkit::pg::give_to_postgres(path).expect("chown script");
}

fn callbacks_yaml(name: &str, dir: &Path) -> String {
    let log = dir.join("callbacks.log");
    let cb = dir.join("callback.sh");
    script(&cb, &format!("echo \"$1 $2 $3\" >> {}", log.display()));
    let pre = dir.join("pre_promote.sh");
    let verdict = if name == VETOING { "exit 1" } else { "exit 0" };
    script(&pre, &format!("echo vetting; {verdict}"));
    format!(
        "  callbacks:\n    on_start: {cb}\n    on_stop: {cb}\n    on_role_change: {cb}\n    on_restart: {cb}\n    on_reload: {cb}\n  pre_promote: {pre}\n",
        cb = cb.display(),
        pre = pre.display()
    )
}

/// Wait until `node`'s callbacks.log has `line`.
async fn wait_for_callback(node: &TestNode, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = fs::read_to_string(node.dir.join("callbacks.log")).unwrap_or_default();
        if log.lines().any(|l| l == line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: no callback line {line:?} in:\n{log}",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_run_and_pre_promote_vetoes_a_promotion() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new_with(3, callbacks_yaml);
    cluster.start_all();
    let primary = cluster.wait_healthy(2, Duration::from_secs(120)).await;
    let scope = cluster.scope.clone();
    for n in &cluster.nodes {
        let role = if n.name == primary {
            "primary"
        } else {
            "replica"
        };
        wait_for_callback(n, &format!("on_start {role} {scope}")).await;
    }

    // A switchover to a member whose pre_promote allows it.
    let candidate = ["node1", "node2"]
        .into_iter()
        .find(|n| *n != primary)
        .expect("a candidate");
    let out = cluster.ctl(&["switchover", "--candidate", candidate, "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_callback(
        cluster.node(candidate),
        &format!("on_role_change primary {scope}"),
    )
    .await;
    wait_for_callback(cluster.node(&primary), &format!("on_stop primary {scope}")).await;
    cluster.wait_healthy(2, Duration::from_secs(60)).await;

    // The vetoing member is never promoted, however it is asked.
    let out = cluster.ctl(&["switchover", "--candidate", VETOING, "--force"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = loop {
        if let Some(p) = cluster.primary().await {
            break p;
        }
        assert!(Instant::now() < deadline, "nobody took over after the veto");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(
        leader,
        VETOING,
        "pre_promote vetoed it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cluster
            .node(VETOING)
            .agent_log()
            .contains("pre_promote vetoed the promotion"),
        "the veto is logged"
    );
}
