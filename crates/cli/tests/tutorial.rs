//! The tutorial's patroni.yml (../shared/tutorial.md §4.1.2), with only its addresses and
//! paths moved to loopback and a temp dir, starts a working node with real etcd and
//! PostgreSQL 15.

mod common;

use common::*;
use pgherd_testkit::etcd::EtcdServer;
use pgherd_testkit::free_port;
use pgherd_testkit::pg::{give_to_postgres, PgTempDir};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TUTORIAL: &str = include_str!("fixtures/tutorial-patroni.yml");

/// The tutorial's file with addresses and paths replaced, nothing else.
fn tutorial_on_loopback(api: u16, pg: u16, etcd: &str, dir: &std::path::Path) -> String {
    let d = dir.display();
    TUTORIAL
        .replace("0.0.0.0:8008", &format!("127.0.0.1:{api}"))
        .replace("192.168.1.1:8008", &format!("127.0.0.1:{api}"))
        .replace("127.0.0.1:2379", etcd.trim_start_matches("http://"))
        .replace("0.0.0.0:5432", &format!("127.0.0.1:{pg}"))
        .replace("192.168.1.1:5432", &format!("127.0.0.1:{pg}"))
        .replace("/var/lib/postgresql/13/main", &format!("{d}/main"))
        .replace("/tmp/pgpass", &format!("{d}/pgpass"))
        .replace("/var/run/postgresql", &format!("{d}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_patroni_yml_starts_a_primary_with_translated_parameters() {
    let _serial = SERIAL.lock().await;
    pgherd_testkit::init_tracing();
    let etcd = EtcdServer::start().expect("etcd");
    let dir = PgTempDir::new().expect("temp dir");
    give_to_postgres(dir.path()).expect("chown");
    let (api, pg) = (free_port(), free_port());
    let config = dir.path().join("patroni.yml");
    std::fs::write(
        &config,
        tutorial_on_loopback(api, pg, &etcd.endpoint(), dir.path()),
    )
    .expect("write");

    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_pgherd"))
        .arg("node")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(90);
    while api_get(api, "/primary").await.0 != 200 {
        if Instant::now() > deadline {
            let _ = agent.kill();
            panic!(
                "tutorial node did not become primary:\n{}",
                std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The tutorial's PostgreSQL 13-era parameters, as PostgreSQL 15 runs them.
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={pg} user=postgres password=password dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect as the tutorial's superuser");
    tokio::spawn(connection);
    let show = |name: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .expect("show");
            row.get::<_, String>(0)
        }
    };
    assert_eq!(show("wal_keep_size").await, "128MB");
    assert_eq!(show("max_wal_senders").await, "5");
    assert_eq!(show("checkpoint_timeout").await, "30s");

    // patronictl's layout under the tutorial's namespace: ctl reads it back.
    let out = Command::new(env!("CARGO_BIN_EXE_pgherd"))
        .args(["ctl", "-c"])
        .arg(&config)
        .args(["list", "-f", "json"])
        .output()
        .expect("ctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rows[0]["Cluster"], "postgres");
    assert_eq!(rows[0]["Member"], "node1");
    assert_eq!(rows[0]["Role"], "Leader");

    let _ = agent.kill();
    let _ = agent.wait();
    // PgTempDir's drop stops the postmaster the killed agent left behind.
}
