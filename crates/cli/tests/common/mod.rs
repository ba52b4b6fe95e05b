//! A real cluster for tests: a real etcd, and `pgherd node` processes managing real
//! PostgreSQL 15 instances on free loopback ports, all removed on drop (even on panic).

#![allow(dead_code)]

use pgherd_testkit::etcd::EtcdServer;
use pgherd_testkit::free_port;
use pgherd_testkit::pg::PgTempDir;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SUPERUSER_PASSWORD: &str = "su-pass";
pub const REPLICATION_PASSWORD: &str = "rep-pass";

/// Tests in one binary share the machine's 2 cores: run clusters one at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Timings that keep the tests short while keeping loop_wait + 2*retry_timeout <= ttl.
pub const TTL: u64 = 10;
pub const LOOP_WAIT: u64 = 2;
pub const RETRY_TIMEOUT: u64 = 4;

pub struct TestNode {
    pub name: String,
    pub pg_port: u16,
    pub api_port: u16,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    /// Set when the REST API serves HTTPS: how the test talks to it.
    pub api_tls: Option<pgherd_http::ClientTls>,
    child: Option<Child>,
}

impl TestNode {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Start `pgherd node -c <config>`, logging to `<dir>/agent.log`.
    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// [`TestNode::start`] with these environment variables set for the agent.
    pub fn start_with_env(&mut self, vars: &[(&str, &str)]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("agent log");
        let child = Command::new(env!("CARGO_BIN_EXE_pgherd"))
            .args(["node", "-c"])
            .arg(&self.config_path)
            .env("PGHERD_LOG", "info")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn pgherd node");
        self.child = Some(child);
    }

    /// `kill -9` the agent only.
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send `signal` to the agent (e.g. SIGSTOP to freeze it, SIGCONT to thaw it).
    pub fn signal_agent(&self, signal: i32) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, signal);
            }
        }
    }

    /// Stop the agent as an init system does (SIGTERM) and wait for it to exit.
    pub fn terminate_agent(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }

    /// The running postmaster's pid (from postmaster.pid). A killed one that its parent
    /// has not reaped yet counts as gone (it answers kill 0): the fencer's victim is
    /// reparented, and how soon the new parent reaps it is up to the machine's init.
    pub fn postmaster_pid(&self) -> Option<i32> {
        pgherd_postgres::running_postmaster(&self.data_dir())
    }

    /// `kill -9` PostgreSQL: the postmaster and every process of its group.
    pub fn kill_postgres(&self) {
        if let Some(pid) = self.postmaster_pid() {
            unsafe {
                let pgid = libc::getpgid(pid);
                if pgid > 1 {
                    libc::kill(-pgid, libc::SIGKILL);
                }
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }

    /// The whole node dies at once: agent and PostgreSQL.
    pub fn kill_node(&mut self) {
        self.kill_agent();
        self.kill_postgres();
    }

    pub fn agent_log(&self) -> String {
        fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    pub async fn api(&self, path: &str) -> (u16, serde_json::Value) {
        match &self.api_tls {
            None => api_get(self.api_port, path).await,
            Some(tls) => api_get_tls(self.api_port, path, tls).await,
        }
    }

    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect(self.pg_port).await
    }
}

/// What a command printed, stdout then stderr.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub async fn api_get(port: u16, path: &str) -> (u16, serde_json::Value) {
    let url = format!("http://127.0.0.1:{port}{path}");
    get_json(&url, &pgherd_http::ClientTls::default()).await
}

/// `GET https://127.0.0.1:<port><path>` with `tls`; `(0, Null)` when it fails.
pub async fn api_get_tls(
    port: u16,
    path: &str,
    tls: &pgherd_http::ClientTls,
) -> (u16, serde_json::Value) {
    get_json(&format!("https://127.0.0.1:{port}{path}"), tls).await
}

async fn get_json(url: &str, tls: &pgherd_http::ClientTls) -> (u16, serde_json::Value) {
    let client = pgherd_http::client::builder(tls)
        .expect("HTTP client")
        .timeout(Duration::from_secs(3))
        .build()
        .expect("http client");
    match client.get(url).send().await {
        Ok(r) => {
            let code = r.status().as_u16();
            let body = r.json().await.unwrap_or(serde_json::Value::Null);
            (code, body)
        }
        Err(_) => (0, serde_json::Value::Null),
    }
}

pub async fn connect(port: u16) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let conn = format!(
        "host=127.0.0.1 port={port} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres connect_timeout=3"
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

pub struct TestCluster {
    pub scope: String,
    pub nodes: Vec<TestNode>,
    pub etcd: EtcdServer,
    /// How the test reaches `etcd` (TLS, authentication).
    pub etcd_access: pgherd_dcs::etcd::EtcdAccess,
    // Dropped last: the directories outlive the processes using them.
    pub dir: PgTempDir,
}

impl TestCluster {
    /// Write configs for `n` members (not started yet).
    pub fn new(n: usize) -> TestCluster {
        Self::new_with(n, |_, _| String::new())
    }

    /// As [`TestCluster::new`], with `extra(name, node_dir)` appended to each member's
    /// `postgresql:` section (lines indented by two spaces).
    pub fn new_with(n: usize, extra: impl Fn(&str, &Path) -> String) -> TestCluster {
        pgherd_testkit::init_tracing();
        let etcd = EtcdServer::start().expect("start etcd");
        let access = pgherd_dcs::etcd::EtcdAccess::plain(&[etcd.endpoint()]);
        Self::with_etcd(n, etcd, access, |name, dir, yaml| yaml + &extra(name, dir))
    }

    /// `n` members using `etcd` (reached by the test with `access`); `edit(name,
    /// node_dir, yaml)` gives each member's config from the default one.
    pub fn with_etcd(
        n: usize,
        etcd: EtcdServer,
        access: pgherd_dcs::etcd::EtcdAccess,
        edit: impl Fn(&str, &Path, String) -> String,
    ) -> TestCluster {
        pgherd_testkit::init_tracing();
        let dir = PgTempDir::new().expect("temp dir");
        let scope = "pgherd-test".to_string();
        let nodes = (1..=n)
            .map(|i| {
                let name = format!("node{i}");
                let node_dir = dir.path().join(&name);
                fs::create_dir_all(&node_dir).expect("node dir");
                pgherd_testkit::pg::give_to_postgres(&node_dir).expect("chown node dir");
                let pg_port = free_port();
                let api_port = free_port();
                let config_path = node_dir.join("node.yml");
                let yaml = node_yaml(
                    &scope,
                    &name,
                    pg_port,
                    api_port,
                    &etcd.endpoint(),
                    &node_dir,
                );
                let yaml = edit(&name, &node_dir, yaml);
                fs::write(&config_path, yaml).expect("write config");
                TestNode {
                    name,
                    pg_port,
                    api_port,
                    dir: node_dir,
                    config_path,
                    api_tls: None,
                    child: None,
                }
            })
            .collect();
        TestCluster {
            scope,
            nodes,
            etcd,
            etcd_access: access,
            dir,
        }
    }

    pub fn start_all(&mut self) {
        for n in &mut self.nodes {
            n.start();
        }
    }

    pub fn node(&self, name: &str) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("node by name")
    }

    pub fn node_mut(&mut self, name: &str) -> &mut TestNode {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("node by name")
    }

    /// The name of a member other than `name` (the first such by name).
    pub fn other_than(&self, name: &str) -> String {
        let other = self.nodes.iter().find(|n| n.name != name);
        other.expect("a second member").name.clone()
    }

    /// The cluster's keys as etcd holds them now.
    pub async fn keys(&self) -> pgherd_dcs::Cluster {
        use pgherd_dcs::Dcs;
        let dcs = pgherd_dcs::etcd::EtcdDcs::connect_with(
            &self.etcd_access,
            "/pgherd-test/",
            &self.scope,
            "test-observer",
            Duration::from_secs(TTL),
            Duration::from_secs(RETRY_TIMEOUT),
        )
        .await
        .expect("connect to etcd");
        dcs.get_cluster().await.expect("read the cluster's keys")
    }

    /// The member that answers 200 on `/primary`, if exactly one does.
    pub async fn primary(&self) -> Option<String> {
        let mut found = Vec::new();
        for n in &self.nodes {
            if n.api("/primary").await.0 == 200 {
                found.push(n.name.clone());
            }
        }
        (found.len() == 1).then(|| found.remove(0))
    }

    /// Wait until one primary and `replicas` streaming replicas; returns the primary's name.
    pub async fn wait_healthy(&self, replicas: usize, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(p) = self.primary().await {
                let mut streaming = 0;
                for n in self.nodes.iter().filter(|n| n.name != p) {
                    let (code, body) = n.api("/patroni").await;
                    if code == 200
                        && body["role"] == "replica"
                        && body["replication_state"] == "streaming"
                    {
                        streaming += 1;
                    }
                }
                if streaming >= replicas {
                    return p;
                }
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("cluster not healthy with {replicas} streaming replicas within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub fn dump_logs(&self) {
        for n in &self.nodes {
            let log = n.agent_log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("===== {} agent log (last 60 lines) =====", n.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            let pglog = fs::read_to_string(n.dir.join("data.log")).unwrap_or_default();
            let tail: Vec<&str> = pglog.lines().rev().take(20).collect();
            eprintln!("===== {} postgres log (last 20 lines) =====", n.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }

    /// Run `pgherd ctl -c <first node's config> <args>`.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        self.ctl_command(args).output().expect("run pgherd ctl")
    }

    /// `pgherd ctl -c <first node's config> <args>`, to be given stdin or environment.
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pgherd"));
        c.arg("ctl")
            .arg("-c")
            .arg(&self.nodes[0].config_path)
            .args(args);
        c
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for n in &mut self.nodes {
            n.kill_node();
        }
        // Give killed backends a moment to exit before the directories go.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A Patroni-style config for one member.
pub fn node_yaml(
    scope: &str,
    name: &str,
    pg_port: u16,
    api_port: u16,
    etcd: &str,
    dir: &Path,
) -> String {
    let etcd_host = etcd.trim_start_matches("http://");
    let dir = dir.display();
    format!(
        r#"scope: {scope}
namespace: /pgherd-test/
name: {name}

restapi:
  listen: 127.0.0.1:{api_port}
  connect_address: 127.0.0.1:{api_port}

etcd3:
  hosts: {etcd_host}

bootstrap:
  dcs:
    ttl: {TTL}
    loop_wait: {LOOP_WAIT}
    retry_timeout: {RETRY_TIMEOUT}
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_keep_segments: 8
        max_connections: 50
  initdb:
    - encoding: UTF8
    - data-checksums
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 scram-sha-256
    - host replication replicator 127.0.0.1/32 scram-sha-256

postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {dir}/data
  pgpass: {dir}/pgpass
  authentication:
    replication:
      username: replicator
      password: {REPLICATION_PASSWORD}
    superuser:
      username: postgres
      password: {SUPERUSER_PASSWORD}
    rewind:
      username: rewinder
      password: rewind-pass
  parameters:
    unix_socket_directories: '{dir}'
    shared_buffers: 16MB
"#
    )
}

/// A real HAProxy routing to whichever member answers 200 on `OPTIONS /primary`, as
/// Patroni's documented HAProxy setup does. Killed on drop.
pub struct HaProxy {
    pub port: u16,
    child: Child,
}

impl HaProxy {
    pub fn start(dir: &Path, nodes: &[TestNode]) -> HaProxy {
        Self::start_checking(dir, nodes, "")
    }

    /// [`HaProxy::start`] with `options` added to each server's health check (e.g.
    /// `check-ssl verify none` for a REST API on HTTPS).
    pub fn start_checking(dir: &Path, nodes: &[TestNode], options: &str) -> HaProxy {
        let port = free_port();
        let mut cfg = format!(
            "global\n    maxconn 200\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\
             listen primary\n    bind 127.0.0.1:{port}\n    option httpchk OPTIONS /primary\n    http-check expect status 200\n\
             \x20   default-server inter 300ms fall 2 rise 1 on-marked-down shutdown-sessions\n"
        );
        for n in nodes {
            cfg.push_str(&format!(
                "    server {} 127.0.0.1:{} check port {} {options}\n",
                n.name, n.pg_port, n.api_port
            ));
        }
        let path = dir.join("haproxy.cfg");
        fs::write(&path, cfg).expect("write haproxy.cfg");
        let log = fs::File::create(dir.join("haproxy.log")).expect("haproxy log");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start haproxy (Debian package haproxy; scripts/setup-debian.sh installs it)");
        HaProxy { port, child }
    }

    /// The PostgreSQL port HAProxy's connection lands on, with its recovery state.
    pub async fn backend(&self) -> Option<(i32, bool)> {
        let c = connect(self.port).await.ok()?;
        let row = c
            .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
            .await
            .ok()?;
        Some((row.get(0), row.get(1)))
    }

    /// Wait until HAProxy routes to the primary on `pg_port`.
    pub async fn wait_routes_to(&self, pg_port: u16, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.backend().await == Some((i32::from(pg_port), false)) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "HAProxy did not route to the primary on port {pg_port} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
