//! End-to-end behaviour of `pgherd node` with real etcd and real PostgreSQL 15:
//! bootstrap, replication, failover after kill -9, rejoin with pg_rewind, demotion when
//! the DCS goes away, adopting a running PostgreSQL after an agent restart.

mod common;

use common::*;
use std::time::{Duration, Instant};

async fn wait_for_row(port: u16, id: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(c) = connect(port).await {
            if let Ok(rows) = c.query("SELECT 1 FROM items WHERE id = $1", &[&id]).await {
                if !rows.is_empty() {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn insert(port: u16, id: i32) -> Result<(), String> {
    let c = connect(port).await.map_err(|e| e.to_string())?;
    c.execute("INSERT INTO items (id) VALUES ($1)", &[&id])
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_bootstrap_replicate_fail_over_and_rejoin() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(3);
    cluster.start_all();
    let primary = cluster.wait_healthy(2, Duration::from_secs(120)).await;
    let p = cluster.node(&primary);

    // HAProxy-style checks: 200 only where the path matches the role.
    assert_eq!(p.api("/primary").await.0, 200);
    assert_eq!(p.api("/replica").await.0, 503);
    let replicas: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.name != primary)
        .map(|n| n.name.clone())
        .collect();
    for r in &replicas {
        let n = cluster.node(r);
        assert_eq!(
            n.api("/primary").await.0,
            503,
            "{r} must not claim to be primary"
        );
        assert_eq!(n.api("/replica").await.0, 200);
        assert_eq!(n.api("/read-only").await.0, 200);
        assert_eq!(n.api("/replica?lag=16MB").await.0, 200);
    }

    // HAProxy with Patroni's documented check selects the primary.
    let haproxy = HaProxy::start(cluster.dir.path(), &cluster.nodes);
    haproxy
        .wait_routes_to(p.pg_port, Duration::from_secs(10))
        .await;
    for r in &replicas {
        let n = cluster.node(r);
        let options = pgherd_http::client::default_client()
            .expect("HTTP client")
            .request(
                reqwest::Method::OPTIONS,
                format!("http://127.0.0.1:{}/primary", n.api_port),
            )
            .send()
            .await
            .expect("OPTIONS /primary");
        assert_eq!(options.status().as_u16(), 503);
    }

    // Each replica streams through its own replication slot on the primary.
    let c = p.connect().await.expect("connect to primary");
    let slots = c
        .query(
            "SELECT slot_name FROM pg_replication_slots WHERE active ORDER BY 1",
            &[],
        )
        .await
        .expect("slots");
    let slots: Vec<String> = slots.iter().map(|r| r.get(0)).collect();
    let mut expected = replicas.clone();
    expected.sort();
    assert_eq!(slots, expected);

    // A committed row reaches both replicas.
    c.batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .expect("create table");
    c.execute("INSERT INTO items VALUES (1)", &[])
        .await
        .expect("insert");
    for r in &replicas {
        assert!(
            wait_for_row(cluster.node(r).pg_port, 1, Duration::from_secs(20)).await,
            "row 1 did not replicate to {r}"
        );
    }
    // wal_keep_segments from the tutorial's config became wal_keep_size on PostgreSQL 15.
    let keep: String = c
        .query_one("SHOW wal_keep_size", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(keep, "128MB");
    drop(c);

    // ctl list shows the cluster like patronictl.
    let out = cluster.ctl(&["list", "--format", "json"]);
    assert!(
        out.status.success(),
        "ctl list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ctl json");
    assert_eq!(rows.as_array().map(|a| a.len()), Some(3));
    assert_eq!(rows[0]["Member"], primary.as_str());
    assert_eq!(rows[0]["Role"], "Leader");
    let table = cluster.ctl(&["list"]);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.contains("| Member") && table.contains("Lag in MB"),
        "{table}"
    );

    // kill -9 the primary's node (agent and PostgreSQL): a replica takes over.
    let killed_at = Instant::now();
    cluster.node_mut(&primary).kill_node();
    let deadline = killed_at + Duration::from_secs(TTL + LOOP_WAIT + 5);
    let mut new_primary = None;
    while Instant::now() < deadline && new_primary.is_none() {
        for r in &replicas {
            if insert(cluster.node(r).pg_port, 2).await.is_ok() {
                new_primary = Some(r.clone());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new_primary = new_primary.unwrap_or_else(|| {
        cluster.dump_logs();
        panic!("no replica accepted writes within ttl + loop_wait + 5 s after kill -9")
    });
    eprintln!("failover to {new_primary} took {:?}", killed_at.elapsed());
    let rerouted = haproxy
        .wait_routes_to(cluster.node(&new_primary).pg_port, Duration::from_secs(10))
        .await;
    eprintln!("HAProxy routed to the new primary {rerouted:?} after it accepted writes");
    let np = cluster.node(&new_primary);
    let np_port = np.pg_port;
    assert!(
        wait_for_row(np.pg_port, 1, Duration::from_secs(1)).await,
        "committed row 1 lost in failover"
    );

    // The other replica follows the new primary.
    let other = replicas
        .iter()
        .find(|r| **r != new_primary)
        .expect("third node")
        .clone();
    assert!(
        wait_for_row(cluster.node(&other).pg_port, 2, Duration::from_secs(30)).await,
        "{other} does not follow the new primary"
    );
    // History gained the promotion (the API serves the snapshot of its last tick).
    let mut history = serde_json::Value::Null;
    for _ in 0..20 {
        history = np.api("/history").await.1;
        if history.as_array().is_some_and(|h| !h.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let entries = history.as_array().expect("history is a JSON array");
    assert_eq!(entries.len(), 1, "history: {history}");
    assert_eq!(
        entries[0][0], 1,
        "the entry records the timeline that ended: {history}"
    );
    assert_eq!(
        entries[0][4],
        new_primary.as_str(),
        "the entry names the new leader: {history}"
    );

    // The old primary comes back and rejoins as a replica of the new timeline (pg_rewind).
    cluster.node_mut(&primary).start();
    let old = cluster.node(&primary);
    assert!(
        wait_for_row(old.pg_port, 2, Duration::from_secs(60)).await,
        "old primary did not rejoin the new timeline"
    );
    // Its API reports it once the tick that started it has published.
    let mut status = serde_json::Value::Null;
    for _ in 0..80 {
        status = old.api("/patroni").await.1;
        if status["state"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(status["role"], "replica", "old primary status: {status}");
    assert_eq!(status["timeline"], 2, "old primary status: {status}");
    assert!(
        old.agent_log().contains("rewound with pg_rewind")
            && !old.agent_log().contains("RemoveDataDir"),
        "old primary did not rejoin through pg_rewind (a failed rewind falls back to a fresh clone)"
    );
    insert(np_port, 3).await.expect("write on the new primary");
    assert!(wait_for_row(old.pg_port, 3, Duration::from_secs(20)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_demotes_itself_when_the_dcs_is_unreachable() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(1);
    cluster.start_all();
    let primary = cluster.wait_healthy(0, Duration::from_secs(90)).await;
    let port = cluster.node(&primary).pg_port;

    cluster.etcd.pause();
    let paused_at = Instant::now();
    // It must stop accepting writes before its lease (ttl) could expire elsewhere.
    let mut read_only_after = None;
    while paused_at.elapsed() < Duration::from_secs(TTL) {
        let writable = match connect(port).await {
            Ok(c) => match c.query_one("SELECT pg_is_in_recovery()", &[]).await {
                Ok(row) => !row.get::<_, bool>(0),
                Err(_) => false,
            },
            Err(_) => false,
        };
        if !writable {
            read_only_after = Some(paused_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.etcd.resume();
    let after = read_only_after.expect("primary still writable a full ttl after losing the DCS");
    eprintln!("primary stopped accepting writes {after:?} after the DCS went away");

    // With the DCS back, the member leads again.
    cluster.wait_healthy(0, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_adopts_the_running_postgres() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(1);
    cluster.start_all();
    let primary = cluster.wait_healthy(0, Duration::from_secs(90)).await;
    let pid = cluster
        .node(&primary)
        .postmaster_pid()
        .expect("postmaster running");

    cluster.node_mut(&primary).kill_agent();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        cluster.node(&primary).postmaster_pid(),
        Some(pid),
        "postgres must outlive the agent"
    );
    cluster.node_mut(&primary).start();
    cluster.wait_healthy(0, Duration::from_secs(60)).await;
    assert_eq!(
        cluster.node(&primary).postmaster_pid(),
        Some(pid),
        "the restarted agent must adopt the running postmaster, not restart it"
    );
    // The dead agent's fencer was armed; the new agent retired it, so a ttl later the
    // postmaster still runs.
    tokio::time::sleep(Duration::from_secs(TTL)).await;
    assert_eq!(
        cluster.node(&primary).postmaster_pid(),
        Some(pid),
        "the earlier agent's fencer must stand down for the new agent"
    );
    assert!(cluster
        .node(&primary)
        .agent_log()
        .contains("retiring the fencer of an earlier agent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_postgres_of_the_leader_comes_back_as_primary_on_the_same_timeline() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(1);
    cluster.start_all();
    let primary = cluster.wait_healthy(0, Duration::from_secs(90)).await;
    let node = cluster.node(&primary);
    let (_, before) = node.api("/patroni").await;
    let pid = node.postmaster_pid().expect("postmaster running");

    // Only PostgreSQL dies; the agent still holds the leader key.
    node.kill_postgres();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let restarted = node.postmaster_pid().is_some_and(|p| p != pid);
        if restarted && node.api("/primary").await.0 == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not bring its primary back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, after) = node.api("/patroni").await;
    assert_eq!(
        after["timeline"], before["timeline"],
        "no needless timeline switch: {after}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(c) = node.connect().await {
            if let Ok(row) = c.query_one("SELECT pg_is_in_recovery()", &[]).await {
                assert!(!row.get::<_, bool>(0), "restarted as a standby");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "restarted primary does not accept connections"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Real `patronictl` (Debian package patroni, 3.0.2) reads a pgherd cluster from etcd and
/// operates it through pgherd's REST API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patronictl_3_operates_a_pgherd_cluster() {
    let _serial = SERIAL.lock().await;
    patronictl_operates_a_pgherd_cluster("patronictl", "3.0.2").await;
}

/// Where scripts/setup-debian.sh installs Patroni 4 from PyPI (Debian 12 has 3.0.2).
const PATRONI4: &str = "/opt/pgherd/patroni4/bin/patronictl";

/// Patroni 4's `patronictl` (PyPI) does the same, and shows quorum commit as Patroni 4
/// does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patronictl_4_operates_a_pgherd_cluster() {
    let _serial = SERIAL.lock().await;
    let cluster = patronictl_operates_a_pgherd_cluster(PATRONI4, "4.").await;
    let out = std::process::Command::new(PATRONI4)
        .arg("-c")
        .arg(&cluster.nodes[0].config_path)
        .args(["edit-config", "--set", "synchronous_mode=quorum", "--force"])
        .output()
        .expect("run patronictl");
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = std::process::Command::new(PATRONI4)
            .arg("-c")
            .arg(&cluster.nodes[0].config_path)
            .args(["list", "-f", "json"])
            .output()
            .expect("run patronictl");
        let rows: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
        if rows
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["Role"] == "Quorum Standby"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no Quorum Standby: {rows}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `list`, `switchover`, `failover`, `restart`, `reload`, `reinit`, `topology`,
/// `history`, `edit-config`, `show-config`, `pause` and `resume` with the `patronictl`
/// at `bin`, whose `version` must contain `version`. Returns the cluster, still running.
async fn patronictl_operates_a_pgherd_cluster(bin: &str, version: &str) -> TestCluster {
    let installed = std::process::Command::new(bin).arg("version").output();
    match installed {
        Ok(out) if text(&out).contains(version) => {}
        _ => {
            panic!("patronictl {version} is missing at {bin}: scripts/setup-debian.sh installs it")
        }
    }
    let mut cluster = TestCluster::new(2);
    cluster.start_all();
    let primary = cluster.wait_healthy(1, Duration::from_secs(120)).await;
    let out = std::process::Command::new(bin)
        .arg("-c")
        .arg(&cluster.nodes[0].config_path)
        .args(["list", "-f", "json"])
        .output()
        .expect("run patronictl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "patronictl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_str(&stdout).expect("patronictl json");
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{stdout}");
    let leader = rows
        .iter()
        .find(|r| r["Role"] == "Leader")
        .expect("a Leader row");
    assert_eq!(leader["Member"], primary.as_str());
    assert_eq!(leader["State"], "running");
    let replica = rows
        .iter()
        .find(|r| r["Role"] == "Replica")
        .expect("a Replica row");
    assert_eq!(replica["State"], "streaming", "{stdout}");
    assert_eq!(replica["TL"], 1, "{stdout}");

    let other = replica["Member"].as_str().expect("member name").to_string();
    let patronictl = |args: &[&str]| {
        std::process::Command::new(bin)
            .arg("-c")
            .arg(&cluster.nodes[0].config_path)
            .args(args)
            .output()
            .expect("run patronictl")
    };
    let out = patronictl(&[
        "switchover",
        "--leader",
        &primary,
        "--candidate",
        &other,
        "--force",
    ]);
    assert!(
        text(&out).contains(&format!("Successfully switched over to \"{other}\"")),
        "{}",
        text(&out)
    );
    cluster.wait_healthy(1, Duration::from_secs(60)).await;
    assert_eq!(cluster.primary().await.as_deref(), Some(other.as_str()));
    // patronictl failover names the candidate; the live leader hands over to it.
    let out = patronictl(&["failover", "--candidate", &primary, "--force"]);
    assert!(
        text(&out).contains(&format!("Successfully failed over to \"{primary}\"")),
        "{}",
        text(&out)
    );
    let back = cluster.wait_healthy(1, Duration::from_secs(60)).await;
    assert_eq!(back, primary);

    // Member requests go to the members' REST APIs.
    let scope = cluster.scope.clone();
    let out = patronictl(&["restart", &scope, &other, "--force"]);
    assert!(
        text(&out).contains(&format!("Success: restart on member {other}")),
        "{}",
        text(&out)
    );
    let out = patronictl(&["reload", &scope, "--force"]);
    assert!(
        text(&out).contains(&format!("Reload request received for member {other}")),
        "{}",
        text(&out)
    );
    let out = patronictl(&["reinit", &scope, &other, "--force"]);
    assert!(
        text(&out).contains(&format!("Success: reinitialize for member {other}")),
        "{}",
        text(&out)
    );
    cluster.wait_healthy(1, Duration::from_secs(120)).await;

    // The read-only views and the dynamic config.
    let out = patronictl(&["topology"]);
    assert!(
        out.status.success() && text(&out).contains(&other),
        "{}",
        text(&out)
    );
    let out = patronictl(&["history", "-f", "json"]);
    let history: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(
        history.as_array().map(Vec::len),
        Some(2),
        "two promotions: {history}"
    );
    let out = patronictl(&["edit-config", "--set", "loop_wait=3", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = patronictl(&["show-config"]);
    assert!(text(&out).contains("loop_wait: 3"), "{}", text(&out));
    let ours = cluster.ctl(&["show-config"]);
    assert!(text(&ours).contains("loop_wait: 3"), "{}", text(&ours));

    // Maintenance mode through the leader's REST API (PATCH /config).
    let out = patronictl(&["pause", "--wait"]);
    assert!(text(&out).contains("paused"), "{}", text(&out));
    assert!(
        text(&cluster.ctl(&["list"])).contains("Maintenance mode: on"),
        "pgherd sees the pause"
    );
    let out = patronictl(&["resume", "--wait"]);
    assert!(text(&out).contains("resumed"), "{}", text(&out));
    assert!(!text(&cluster.ctl(&["list"])).contains("Maintenance mode"));
    cluster
}

/// Maintenance mode: `ctl pause --wait` stops automatic actions (a PostgreSQL that dies
/// is left stopped) while the leader keeps its key past the ttl; `ctl resume --wait`
/// brings them back and the primary is restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_automatic_actions_and_resume_brings_them_back() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(1);
    cluster.start_all();
    let primary = cluster.wait_healthy(0, Duration::from_secs(90)).await;

    let paused = cluster.ctl(&["pause", "--wait"]);
    assert!(paused.status.success(), "{}", text(&paused));
    assert!(
        text(&paused).contains("cluster management is paused"),
        "{}",
        text(&paused)
    );
    let again = cluster.ctl(&["pause"]);
    assert!(!again.status.success(), "pausing twice must fail");
    assert!(text(&again).contains("already paused"), "{}", text(&again));
    let list = cluster.ctl(&["list"]);
    assert!(
        text(&list).contains("Maintenance mode: on"),
        "{}",
        text(&list)
    );
    let (_, status) = cluster.node(&primary).api("/patroni").await;
    assert_eq!(status["pause"], true, "{status}");

    // PostgreSQL dies while paused: nobody restarts it, and the leader key outlives the ttl.
    cluster.node(&primary).kill_postgres();
    tokio::time::sleep(Duration::from_secs(TTL + LOOP_WAIT)).await;
    assert_eq!(
        cluster.node(&primary).postmaster_pid(),
        None,
        "paused: PostgreSQL must not be restarted"
    );
    let list = cluster.ctl(&["list", "--format", "json"]);
    assert!(
        text(&list).contains(&format!("\"{primary}\"")) && text(&list).contains("Leader"),
        "the paused leader must keep its key: {}",
        text(&list)
    );

    let resumed = cluster.ctl(&["resume", "--wait"]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(
        text(&resumed).contains("cluster management is resumed"),
        "{}",
        text(&resumed)
    );
    let not_paused = cluster.ctl(&["resume"]);
    assert!(!not_paused.status.success(), "resuming twice must fail");
    assert!(
        text(&not_paused).contains("not paused"),
        "{}",
        text(&not_paused)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.node(&primary).api("/primary").await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "after resume the agent did not bring its primary back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `ctl edit-config`: `--set`/`--pg` with Patroni's merge rules, a diff and a question
/// before writing, an unsafe result refused, `$EDITOR` for the whole config; a changed
/// PostgreSQL parameter reaches the running primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_config_merges_validates_asks_and_reaches_postgres() {
    use std::io::Write;
    use std::process::Stdio;
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(1);
    cluster.start_all();
    let primary = cluster.wait_healthy(0, Duration::from_secs(90)).await;
    let with_input = |args: &[&str], input: &str| {
        let mut child = cluster
            .ctl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run pgherd ctl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let config = || {
        let out = cluster.ctl(&["show-config"]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };

    // Asked, and not confirmed: nothing is written.
    let no = with_input(&["edit-config", "--pg", "work_mem=8MB"], "n\n");
    assert!(!no.status.success(), "{}", text(&no));
    assert!(
        text(&no).contains("+    work_mem: 8MB"),
        "the diff: {}",
        text(&no)
    );
    assert!(!config().contains("work_mem"), "{}", config());

    // Confirmed.
    let yes = with_input(
        &[
            "edit-config",
            "--pg",
            "work_mem=8MB",
            "--set",
            "maximum_lag_on_failover=2097152",
        ],
        "y\n",
    );
    assert!(yes.status.success(), "{}", text(&yes));
    assert!(
        text(&yes).contains("Configuration changed"),
        "{}",
        text(&yes)
    );
    assert!(config().contains("work_mem: 8MB"), "{}", config());
    assert!(
        config().contains("maximum_lag_on_failover: 2097152"),
        "{}",
        config()
    );

    // An unsafe combination is refused with the reason; nothing is written.
    let unsafe_ttl = cluster.ctl(&["edit-config", "--set", "ttl=5", "--force"]);
    assert!(!unsafe_ttl.status.success(), "{}", text(&unsafe_ttl));
    assert!(
        text(&unsafe_ttl).contains("must not exceed ttl"),
        "{}",
        text(&unsafe_ttl)
    );
    assert!(!config().contains("ttl: 5\n"), "{}", config());

    // null removes; the same edit twice changes nothing the second time.
    let removed = cluster.ctl(&[
        "edit-config",
        "--set",
        "maximum_lag_on_failover=null",
        "--force",
    ]);
    assert!(removed.status.success(), "{}", text(&removed));
    assert!(
        !config().contains("maximum_lag_on_failover"),
        "{}",
        config()
    );
    let again = cluster.ctl(&[
        "edit-config",
        "--set",
        "maximum_lag_on_failover=null",
        "--force",
    ]);
    assert!(text(&again).contains("Not changed"), "{}", text(&again));

    // The whole config in $EDITOR.
    let edited = cluster
        .ctl_command(&["edit-config", "--force"])
        .env("VISUAL", "sed -i 's/work_mem: 8MB/work_mem: 16MB/'")
        .output()
        .unwrap();
    assert!(edited.status.success(), "{}", text(&edited));
    assert!(config().contains("work_mem: 16MB"), "{}", config());

    // A parameter that needs a restart shows as pending, in /patroni and in `list`.
    let restart = cluster.ctl(&["edit-config", "--pg", "max_connections=120", "--force"]);
    assert!(restart.status.success(), "{}", text(&restart));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, status) = cluster.node(&primary).api("/patroni").await;
        let list = cluster.ctl(&["list"]);
        if status["pending_restart"] == true && text(&list).contains("Pending restart") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "max_connections did not show as a pending restart: {status} {}",
            text(&list)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The agent reloads PostgreSQL with the new value.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(c) = cluster.node(&primary).connect().await {
            if let Ok(row) = c.query_one("SHOW work_mem", &[]).await {
                if row.get::<_, String>(0) == "16MB" {
                    break;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "work_mem from the DCS did not reach PostgreSQL"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // `restart --pending` restarts exactly the flagged members, in place.
    let restarted = cluster.ctl(&["restart", "--pending", "--force"]);
    assert!(restarted.status.success(), "{}", text(&restarted));
    assert!(
        text(&restarted).contains(&format!("Success: restart on member {primary}")),
        "{}",
        text(&restarted)
    );
    let c = cluster.node(&primary).connect().await.expect("connect");
    let max: String = c
        .query_one("SHOW max_connections", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(max, "120");
    assert_eq!(cluster.primary().await.as_deref(), Some(primary.as_str()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.node(&primary).api("/patroni").await.1["pending_restart"] == true {
        assert!(
            Instant::now() < deadline,
            "pending_restart stayed after the restart"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let nothing = cluster.ctl(&["restart", "--pending", "--force"]);
    assert!(!nothing.status.success(), "nothing is pending any more");

    // Each effective parameter with where it came from.
    let effective = cluster.ctl(&["show-config", "--effective", &primary]);
    assert!(effective.status.success(), "{}", text(&effective));
    let line = |name: &str| {
        text(&effective)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
    };
    assert_eq!(
        line("work_mem"),
        Some(vec!["work_mem".into(), "16MB".into(), "cluster".into()]),
        "{}",
        text(&effective)
    );
    assert_eq!(
        line("hot_standby"),
        Some(vec!["hot_standby".into(), "on".into(), "default".into()]),
        "{}",
        text(&effective)
    );
    // The HA settings too: the timings came from bootstrap.dcs into the cluster's config.
    assert_eq!(
        line("ttl"),
        Some(vec!["ttl".into(), TTL.to_string(), "cluster".into()]),
        "{}",
        text(&effective)
    );
    let json = cluster.ctl(&["show-config", "--effective", &primary, "--format", "json"]);
    let json: serde_json::Value =
        serde_json::from_slice(&json.stdout).unwrap_or_else(|_| panic!("{}", text(&json)));
    assert_eq!(json["settings"]["ttl"]["source"], "cluster", "{json}");
    assert_eq!(json["parameters"]["work_mem"]["value"], "16MB", "{json}");
    let config = cluster.ctl(&["show-config", "--format", "json"]);
    let config: serde_json::Value =
        serde_json::from_slice(&config.stdout).unwrap_or_else(|_| panic!("{}", text(&config)));
    assert_eq!(
        config["postgresql"]["parameters"]["work_mem"], "16MB",
        "{config}"
    );
    let unknown = cluster.ctl(&["show-config", "--effective", "nobody"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("no member nobody"),
        "{}",
        text(&unknown)
    );
}
