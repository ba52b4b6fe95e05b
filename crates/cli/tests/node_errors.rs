//! `pgherd node` refuses bad setups at start with a one-line reason naming the cause,
//! and exits non-zero instead of hanging.

mod common;

use pgherd_testkit::free_port;
use pgherd_testkit::pg::{give_to_postgres, PgTempDir};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn config(dir: &Path, etcd_port: u16, pg_port: u16, extra_pg: &str) -> String {
    let d = dir.display();
    format!(
        r#"scope: errors
name: node1
restapi:
  listen: 127.0.0.1:{api}
etcd3:
  hosts: 127.0.0.1:{etcd_port}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 2
    retry_timeout: 2
postgresql:
  listen: 127.0.0.1:{pg_port}
  data_dir: {d}/data
  pgpass: {d}/pgpass
  authentication:
    superuser: {{username: postgres, password: x}}
    replication: {{username: replicator, password: y}}
{extra_pg}"#,
        api = free_port()
    )
}

/// Run `pgherd node` and return its output; it must finish within `within`.
fn run_node(dir: &Path, yaml: &str, within: Duration) -> Output {
    let path = dir.join("node.yml");
    std::fs::write(&path, yaml).expect("write config");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pgherd"))
        .args(["node", "-c"])
        .arg(&path)
        .output()
        .expect("run pgherd");
    assert!(
        started.elapsed() < within,
        "pgherd node took {:?} to fail",
        started.elapsed()
    );
    assert!(!out.status.success(), "pgherd node must fail");
    out
}

fn last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

fn temp() -> PgTempDir {
    let dir = PgTempDir::new().expect("temp dir");
    give_to_postgres(dir.path()).expect("chown");
    dir
}

#[test]
fn unreachable_etcd_is_named() {
    let dir = temp();
    let (_reserved, etcd_port) = pgherd_testkit::refusing_port();
    let out = run_node(
        dir.path(),
        &config(dir.path(), etcd_port, free_port(), ""),
        Duration::from_secs(20),
    );
    let line = last_line(&out);
    assert!(line.starts_with("pgherd: error:"), "{line}");
    assert!(
        line.contains("etcd") && line.contains(&etcd_port.to_string()),
        "{line}"
    );
}

#[test]
fn missing_binaries_are_named() {
    let dir = temp();
    let yaml = config(
        dir.path(),
        free_port(),
        free_port(),
        "  bin_dir: /nonexistent/pg/bin\n",
    );
    let line = last_line(&run_node(dir.path(), &yaml, Duration::from_secs(10)));
    assert!(line.contains("/nonexistent/pg/bin"), "{line}");
}

#[test]
fn postgres_port_in_use_is_named() {
    let dir = temp();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let line = last_line(&run_node(
        dir.path(),
        &config(dir.path(), free_port(), port, ""),
        Duration::from_secs(10),
    ));
    assert!(
        line.contains(&port.to_string()) && line.contains("in use"),
        "{line}"
    );
}

#[test]
fn data_dir_owned_by_another_user_is_refused() {
    if !pgherd_testkit::pg::running_as_root() {
        return; // only root can make a directory the agent's OS user does not own
    }
    let dir = temp();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::write(data.join("PG_VERSION"), "15\n").expect("write");
    // root owns it, PostgreSQL would run as postgres.
    let line = last_line(&run_node(
        dir.path(),
        &config(dir.path(), free_port(), free_port(), ""),
        Duration::from_secs(10),
    ));
    assert!(line.contains("owned by"), "{line}");
}

#[test]
fn invalid_config_value_names_its_key() {
    let dir = temp();
    let yaml = config(dir.path(), free_port(), free_port(), "").replace("ttl: 10", "ttl: soon");
    let out = run_node(dir.path(), &yaml, Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bootstrap.dcs.ttl"), "{err}");
}
