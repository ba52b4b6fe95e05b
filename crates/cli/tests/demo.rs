//! `pgherd demo` as a user runs it: the URIs it prints work as printed with `psql`, a
//! row written on the primary is readable on both replicas, and Ctrl-C removes
//! everything the demo made.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn psql(uri: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .arg(uri)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_uris_that_work_with_psql_and_cleans_up_on_ctrl_c() {
    let _serial = common::SERIAL.lock().await;
    let mut demo = Command::new(env!("CARGO_BIN_EXE_pgherd"))
        .arg("demo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start pgherd demo");
    let stdout = demo.stdout.take().expect("stdout");
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    // Read until the demo says how to stop it: by then it printed the topology and URIs.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut printed = Vec::new();
    let base_dir = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => {
                let _ = demo.kill();
                panic!(
                    "demo did not become ready; it printed:\n{}",
                    printed.join("\n")
                );
            }
        };
        printed.push(line.clone());
        if let Some(rest) = line.strip_prefix("Press Ctrl-C to stop the cluster and remove ") {
            break PathBuf::from(rest.trim_end_matches('.'));
        }
    };
    let text = printed.join("\n");
    assert!(
        text.contains("| Member") && text.contains("Leader"),
        "{text}"
    );
    let uri_of = |role: &str| -> Vec<String> {
        printed
            .iter()
            .filter(|l| l.starts_with(role))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("postgres://")))
            .map(str::to_string)
            .collect()
    };
    let primary = uri_of("primary");
    let replicas = uri_of("replica");
    assert_eq!((primary.len(), replicas.len()), (1, 2), "{text}");

    psql(
        &primary[0],
        "CREATE TABLE demo_check (v text); INSERT INTO demo_check VALUES ('hello')",
    )
    .expect("write on the primary through its printed URI");
    for uri in &replicas {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match psql(uri, "SELECT v FROM demo_check") {
                Ok(v) if v == "hello" => break,
                other => assert!(
                    Instant::now() < deadline,
                    "replica {uri} never showed the row: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(psql(uri, "SELECT pg_is_in_recovery()").as_deref(), Ok("t"));
    }

    // The pooler: writes through one printed URI reach the primary, reads through the
    // other come from the replicas.
    let pooler_uri = |role: &str| -> String {
        printed
            .iter()
            .find(|l| l.starts_with("pooler") && l.contains(role))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("postgres://")))
            .unwrap_or_else(|| panic!("no {role} pooler URI in:\n{text}"))
            .to_string()
    };
    let (rw, ro) = (pooler_uri("read-write"), pooler_uri("read-only"));
    psql(&rw, "INSERT INTO demo_check VALUES ('through the pooler')")
        .expect("write through the read-write pooler URI");
    assert_eq!(psql(&rw, "SELECT pg_is_in_recovery()").as_deref(), Ok("f"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match psql(
            &ro,
            "SELECT count(*) FROM demo_check WHERE v = 'through the pooler'",
        ) {
            Ok(v) if v == "1" => break,
            other => assert!(
                Instant::now() < deadline,
                "the read-only pooler never showed the row: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(psql(&ro, "SELECT pg_is_in_recovery()").as_deref(), Ok("t"));

    // Ctrl-C: the demo stops its members and removes what it made.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(demo.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("send SIGINT");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = demo.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = demo.kill();
            panic!("demo did not exit after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "demo exit status {status}");
    assert!(!base_dir.exists(), "{} was not removed", base_dir.display());
    assert!(
        psql(&primary[0], "SELECT 1").is_err(),
        "PostgreSQL still runs after Ctrl-C"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_drill_passes_every_exercise_and_exits_0() {
    let _serial = common::SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("demo");
    let out = dir.path().join("drill.out");
    let mut drill = Command::new(env!("CARGO_BIN_EXE_pgherd"))
        .args(["demo", "--drill", "--dir"])
        .arg(&base)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("output file"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start pgherd demo --drill");
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = drill.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = drill.kill();
            panic!("the drill did not end within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let report = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(status.success(), "drill exit status {status}:\n{report}");
    for check in ["replication", "failover", "switchover", "balancing"] {
        assert!(
            report
                .lines()
                .any(|l| l.trim_start().starts_with("PASS") && l.contains(check)),
            "{check} did not pass:\n{report}"
        );
    }
    assert!(report.contains("0 lost (synchronous mode)"), "{report}");
    assert!(report.contains(", 0 failed,"), "{report}");
    assert!(report.contains("all 4 checks passed"), "{report}");
    assert!(!base.exists(), "{} was not removed", base.display());
}
