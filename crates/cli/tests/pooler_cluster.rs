//! `pgherd pooler` following a real pgherd cluster through etcd: writes go to whoever
//! holds the leader key, a failover moves them without restarting anything, and reads
//! spread over the replicas that may serve them.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `pgherd pooler --ini`, killed on drop.
struct Pooler {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Pooler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pooler {
    /// Routing `app` to the cluster's primary and `reads` (session mode, with `reads`
    /// added) to its replicas, following the cluster in etcd.
    fn following(cluster: &TestCluster, reads: &str) -> Pooler {
        Pooler::following_with(cluster, reads, 5)
    }

    /// [`Pooler::following`] with this `dcs_timeout` (seconds).
    fn following_with(cluster: &TestCluster, reads: &str, dcs_timeout: u64) -> Pooler {
        Pooler::following_metered(cluster, reads, dcs_timeout, None)
    }

    /// [`Pooler::following_with`], serving metrics on `metrics_port` when given.
    fn following_metered(
        cluster: &TestCluster,
        reads: &str,
        dcs_timeout: u64,
        metrics_port: Option<u16>,
    ) -> Pooler {
        let databases = format!(
            "app = cluster={scope} role=primary dbname=postgres\n\
             app_session = cluster={scope} role=primary dbname=postgres pool_mode=session\n\
             reads = cluster={scope} role=replica dbname=postgres pool_mode=session {reads}\n",
            scope = cluster.scope
        );
        let etcd = cluster.etcd.endpoint();
        let store = format!(
            "[pgherd]\n\
             etcd_hosts = {}\n\
             namespace = /pgherd-test/\n\
             dcs_timeout = {dcs_timeout}\n\
             {metrics}\n",
            etcd.trim_start_matches("http://"),
            metrics = metrics_port
                .map(|p| format!("metrics_listen = 127.0.0.1:{p}"))
                .unwrap_or_default(),
        );
        Pooler::start(cluster, &databases, &store)
    }

    /// From a `pooler.yml` with `cluster:` and `routes:`: `postgres` read-write on the
    /// main port, read-only on `read_port` (one of the routes).
    fn routed_yaml(cluster: &TestCluster, read_port: u16) -> Pooler {
        let dir = cluster.dir.path();
        let port = pgherd_testkit::free_port();
        fs::write(
            dir.join("userlist.txt"),
            format!("\"postgres\" \"{SUPERUSER_PASSWORD}\"\n"),
        )
        .expect("userlist");
        let yml = dir.join("pooler.yml");
        fs::write(
            &yml,
            format!(
                "pgbouncer:\n\
                 \x20 listen_addr: 127.0.0.1\n\
                 \x20 listen_port: {port}\n\
                 \x20 unix_socket_dir: ''\n\
                 \x20 auth_type: scram-sha-256\n\
                 \x20 auth_file: {userlist}\n\
                 \x20 admin_users: postgres\n\
                 \x20 pool_mode: session\n\
                 databases:\n\
                 \x20 postgres: {{dbname: postgres}}\n\
                 cluster:\n\
                 \x20 scope: {scope}\n\
                 \x20 namespace: /pgherd-test/\n\
                 \x20 etcd3: {{hosts: [{etcd}]}}\n\
                 routes:\n\
                 \x20 - {{listen_port: {port}, role: primary}}\n\
                 \x20 - {{listen_port: {read_port}, role: replica}}\n",
                userlist = dir.join("userlist.txt").display(),
                scope = cluster.scope,
                etcd = cluster.etcd.endpoint().trim_start_matches("http://"),
            ),
        )
        .expect("write yml");
        Pooler::spawn(
            &["-c".as_ref(), yml.as_os_str()],
            port,
            dir.join("pooler-yml.log"),
        )
    }

    /// With these `[databases]` lines and `extra` sections.
    fn start(cluster: &TestCluster, databases: &str, extra: &str) -> Pooler {
        let dir = cluster.dir.path();
        let port = pgherd_testkit::free_port();
        fs::write(
            dir.join("userlist.txt"),
            format!("\"postgres\" \"{SUPERUSER_PASSWORD}\"\n"),
        )
        .expect("userlist");
        // Named by port: a test may run two poolers side by side.
        let ini = dir.join(format!("pooler-{port}.ini"));
        fs::write(
            &ini,
            format!(
                "[databases]\n\
                 {databases}\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = scram-sha-256\n\
                 auth_file = {userlist}\n\
                 admin_users = postgres\n\
                 pool_mode = transaction\n\
                 default_pool_size = 4\n\
                 query_wait_timeout = 60\n\
                 {extra}",
                userlist = dir.join("userlist.txt").display(),
            ),
        )
        .expect("write ini");
        Pooler::spawn(
            &["--ini".as_ref(), ini.as_os_str()],
            port,
            dir.join(format!("pooler-{port}.log")),
        )
    }

    /// `pgherd pooler ARGS`, once it listens on `port`.
    fn spawn(args: &[&std::ffi::OsStr], port: u16, log: PathBuf) -> Pooler {
        let child = Command::new(env!("CARGO_BIN_EXE_pgherd"))
            .arg("pooler")
            .args(args)
            .env("PGHERD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start pgherd pooler");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the pooler does not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Pooler { child, port, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal the pooler");
    }

    async fn connect(&self, db: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect_to(self.port, db).await
    }

    /// The PostgreSQL port a new client of `db` ends up on.
    async fn server_port(&self, db: &str) -> Option<u16> {
        let client = self.connect(db).await.ok()?;
        let row = client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .ok()?;
        row.get::<_, Option<i32>>(0).map(|p| p as u16)
    }

    /// `SHOW SERVERS` on the admin console: (database, server port) of each.
    async fn servers(&self) -> Vec<(String, u16)> {
        let console = self.connect("pgbouncer").await.expect("admin console");
        let rows = console
            .simple_query("SHOW SERVERS")
            .await
            .expect("SHOW SERVERS");
        rows.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                    r.get("database").unwrap_or_default().to_string(),
                    r.get("port").and_then(|p| p.parse().ok()).unwrap_or(0),
                )),
                _ => None,
            })
            .collect()
    }
}

/// A client of `db` through the pooler port `port`.
async fn connect_to(port: u16, db: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .password(SUPERUSER_PASSWORD)
        .dbname(db)
        .connect_timeout(Duration::from_secs(10))
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

fn pgbench(args: &[&str], port: u16, db: &str, out: &Path) -> Child {
    Command::new(pgherd_testkit::pg::pg_bin_dir().join("pgbench"))
        .args(args)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            db,
        ])
        .env("PGPASSWORD", SUPERUSER_PASSWORD)
        .stdin(Stdio::null())
        .stdout(fs::File::create(out).expect("pgbench output"))
        .stderr(fs::File::create(out.with_extension("err")).expect("pgbench errors"))
        .spawn()
        .expect("run pgbench")
}

/// Initialize pgbench's tables on the primary at `primary_port`, then start pgbench with
/// `clients` for `seconds` through the pooler's `app` (progress every second). Returns it
/// and the file its output goes to (the progress is in `.err`).
fn pgbench_through(
    cluster: &TestCluster,
    primary_port: u16,
    pooler: &Pooler,
    clients: u32,
    seconds: u32,
) -> (Child, PathBuf) {
    let dir = cluster.dir.path();
    let init = pgbench(
        &["-i", "-s", "1", "-q"],
        primary_port,
        "postgres",
        &dir.join("init"),
    )
    .wait()
    .expect("pgbench -i");
    assert!(init.success(), "pgbench -i failed");
    let out = dir.join("bench.out");
    let (clients, seconds) = (clients.to_string(), seconds.to_string());
    let args = ["-n", "-c", &clients, "-j", "2", "-T", &seconds, "-P", "1"];
    (pgbench(&args, pooler.port, "app", &out), out)
}

/// Transactions per second in pgbench's `-P` lines, by the second they end at.
fn progress(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("progress: ")?;
            let (at, rest) = rest.split_once(" s, ")?;
            let tps = rest.split_whitespace().next()?;
            Some((at.parse().ok()?, tps.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_failover_and_nothing_stays_on_the_old_primary() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(2);
    cluster.start_all();
    let old = cluster.wait_healthy(1, Duration::from_secs(120)).await;
    let other = cluster.other_than(&old);
    let (old_port, new_port) = (cluster.node(&old).pg_port, cluster.node(&other).pg_port);
    let pooler = Pooler::following(&cluster, "");
    assert_eq!(
        pooler.server_port("app").await,
        Some(old_port),
        "{}",
        pooler.log()
    );

    // More clients than the pool's four servers, as users run it.
    let (mut bench, out) = pgbench_through(&cluster, old_port, &pooler, 8, 40);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let killed_at = Instant::now();
    cluster.node_mut(&old).kill_node();

    // The pooler moves to the new primary by itself: a write through it lands there.
    let deadline = Instant::now() + Duration::from_secs(60);
    let moved_after = loop {
        if pooler.server_port("app").await == Some(new_port) {
            let client = pooler
                .connect("app")
                .await
                .expect("connect through the pooler");
            client
                .execute("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 1, now())", &[])
                .await
                .expect("a write through the pooler after the failover");
            break killed_at.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the pooler did not move to {other}: {}",
            pooler.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = bench.wait();
    // pgbench reports progress on stderr.
    let report = fs::read_to_string(out.with_extension("err")).unwrap_or_default();
    let tps = progress(&report);
    let after: Vec<f64> = tps
        .iter()
        .filter(|(at, _)| *at > 5.0 + moved_after.as_secs_f64() + 2.0)
        .map(|(_, tps)| *tps)
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|t| *t > 0.0),
        "pgbench did not keep committing after the failover ({moved_after:?}): {report}\n{}",
        pooler.log()
    );

    // The old primary comes back as a replica; the pooler keeps nothing on it.
    cluster.node_mut(&old).start();
    cluster.wait_healthy(1, Duration::from_secs(120)).await;
    for _ in 0..10 {
        assert_eq!(pooler.server_port("app").await, Some(new_port));
    }
    let servers = pooler.servers().await;
    assert!(
        servers
            .iter()
            .filter(|(db, _)| db == "app")
            .all(|(_, p)| *p == new_port),
        "{servers:?}"
    );
    let pooled: i64 = cluster
        .node(&old)
        .connect()
        .await
        .expect("connect to the old primary")
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);
    assert_eq!(pooled, 0, "server connections left on the old primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_spread_over_replicas_skip_noloadbalance_and_fall_back_to_the_primary() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(4);
    // node4 serves no reads (and never leads, so that it stays a replica).
    let tagged = cluster.nodes[3].config_path.clone();
    let mut yaml = fs::read_to_string(&tagged).expect("read config");
    yaml.push_str("\ntags:\n  noloadbalance: true\n  nofailover: true\n");
    fs::write(&tagged, yaml).expect("write config");
    cluster.start_all();
    let primary = cluster.wait_healthy(3, Duration::from_secs(180)).await;
    let primary_port = cluster.node(&primary).pg_port;
    let untouched_port = cluster.node("node4").pg_port;
    let readable: Vec<u16> = cluster
        .nodes
        .iter()
        .filter(|n| n.name != primary && n.name != "node4")
        .map(|n| n.pg_port)
        .collect();
    let pooler = Pooler::following(&cluster, "");

    // Session mode: each client holds its own server, logged in on the replica with
    // the fewest of the pool's servers.
    let mut clients = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let c = pooler.connect("reads").await.expect("connect");
        let port: i32 = c
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        seen.push(port as u16);
        clients.push(c);
    }
    for p in &readable {
        assert_eq!(
            seen.iter().filter(|s| *s == p).count(),
            2,
            "reads spread evenly: {seen:?} over {readable:?}"
        );
    }
    assert!(!seen.contains(&untouched_port), "noloadbalance: {seen:?}");
    assert!(!seen.contains(&primary_port), "{seen:?}");
    drop(clients);

    // The same from pooler.yml's routes: one database, read-write on one port and
    // read-only on the other.
    let read_port = pgherd_testkit::free_port();
    let routed = Pooler::routed_yaml(&cluster, read_port);
    let mut read_ports = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..2 {
        let c = connect_to(read_port, "postgres").await.expect("read route");
        let row = c.query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[]);
        let row = row.await.expect("read");
        assert!(row.get::<_, bool>(1), "the read route is on a replica");
        read_ports.push(row.get::<_, i32>(0) as u16);
        readers.push(c);
    }
    read_ports.sort();
    let mut expected = readable.clone();
    expected.sort();
    assert_eq!(read_ports, expected, "one reader on each replica");
    assert_eq!(routed.server_port("postgres").await, Some(primary_port));
    let pools: Vec<String> = routed
        .servers()
        .await
        .into_iter()
        .map(|(db, _)| db)
        .collect();
    assert!(
        pools.contains(&"postgres@replica".to_string())
            && pools.contains(&"postgres@primary".to_string()),
        "route pools are named by role: {pools:?}"
    );
    drop(readers);
    drop(routed);

    // A replica further behind than max_lag serves no reads: its WAL receiver stopped
    // while the primary writes.
    let (behind, caught_up) = (readable[0], readable[1]);
    let replica = connect(behind).await.expect("the replica");
    let receiver: i32 = replica
        .query_one("SELECT pid FROM pg_stat_wal_receiver", &[])
        .await
        .expect("its WAL receiver")
        .get(0);
    let receiver = nix::unistd::Pid::from_raw(receiver);
    nix::sys::signal::kill(receiver, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let writer = connect(primary_port).await.expect("the primary");
    writer
        .batch_execute("CREATE TABLE lag_probe AS SELECT g FROM generate_series(1, 100000) g")
        .await
        .expect("write 3 MB of WAL");
    let tight = Pooler::start(
        &cluster,
        &format!(
            "tight = cluster={} role=replica dbname=postgres pool_mode=session max_lag=64kB\n",
            cluster.scope
        ),
        &format!(
            "[pgherd]\netcd_hosts = {}\nnamespace = /pgherd-test/\n",
            cluster.etcd.endpoint().trim_start_matches("http://")
        ),
    );
    // The members publish their positions every loop_wait: wait for the lag to show.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tight_clients = Vec::new();
    loop {
        let c = tight.connect("tight").await.expect("connect");
        let port: i32 = c
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        if port as u16 == caught_up {
            tight_clients.push(c);
            if tight_clients.len() == 3 {
                break;
            }
        } else {
            tight_clients.clear();
        }
        assert!(
            Instant::now() < deadline,
            "reads still go to the replica beyond max_lag: {}",
            tight.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    nix::sys::signal::kill(receiver, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    drop(tight_clients);
    drop(tight);

    // With no replica left to read from, reads go to the primary.
    let replicas: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.name != primary && n.name != "node4")
        .map(|n| n.name.clone())
        .collect();
    for r in &replicas {
        cluster.node_mut(r).kill_node();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while pooler.server_port("reads").await != Some(primary_port) {
        assert!(
            Instant::now() < deadline,
            "reads did not fall back to the primary: {}",
            pooler.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checked_servers_take_writes_only_on_the_primary_and_follow_a_switchover() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(2);
    cluster.start_all();
    let primary = cluster.wait_healthy(1, Duration::from_secs(120)).await;
    let replica = cluster.other_than(&primary);
    let list = |f: &dyn Fn(&TestNode) -> u16| {
        cluster
            .nodes
            .iter()
            .map(|n| f(n).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let (ports, api_ports) = (list(&|n| n.pg_port), list(&|n| n.api_port));
    // The tutorial's two HAProxy backends, as a pooler: HTTP checks on Patroni's
    // REST API, or SQL checks, every half second.
    let servers =
        format!("host=127.0.0.1,127.0.0.1 port={ports} dbname=postgres inter=0.5 fall=1 rise=1");
    let databases = format!(
        "app = {servers} check=http check_port={api_ports}\n\
         app_sql = {servers} check=sql\n\
         reads = {servers} check=http check_port={api_ports} role=replica pool_mode=session\n"
    );
    let pooler = Pooler::start(&cluster, &databases, "");
    let port_of = |name: &str| Some(cluster.node(name).pg_port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = (
            pooler.server_port("app").await,
            pooler.server_port("app_sql").await,
            pooler.server_port("reads").await,
        );
        if seen == (port_of(&primary), port_of(&primary), port_of(&replica)) {
            break;
        }
        assert!(Instant::now() < deadline, "{seen:?}: {}", pooler.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let out = cluster.ctl(&["switchover", "--candidate", &replica, "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = (
            pooler.server_port("app").await,
            pooler.server_port("app_sql").await,
            pooler.server_port("reads").await,
        );
        if seen == (port_of(&replica), port_of(&replica), port_of(&primary)) {
            break;
        }
        assert!(Instant::now() < deadline, "{seen:?}: {}", pooler.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Writes through the pooler land on the new primary.
    pooler
        .connect("app")
        .await
        .expect("connect")
        .batch_execute("CREATE TABLE after_switchover (id int)")
        .await
        .expect("a write through the health-checked route");
}

/// A write through the pooler to `app` that returns within `within`: `Ok` if it
/// committed, `Err` if it failed or did not return.
async fn write_within(pooler: &Pooler, within: Duration) -> Result<(), String> {
    let attempt = async {
        let client = pooler.connect("app").await.map_err(|e| e.to_string())?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS fenced (id int); INSERT INTO fenced VALUES (1)",
            )
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(within, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {within:?}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_pooler_stops_writes_and_a_new_leader_waits_for_every_pooler() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(2);
    cluster.start_all();
    let old = cluster.wait_healthy(1, Duration::from_secs(120)).await;
    // dcs_timeout 8 s < ttl 10 s; the pooler's key lives twice that.
    let metrics_port = pgherd_testkit::free_port();
    let pooler = Pooler::following_metered(&cluster, "", 8, Some(metrics_port));
    let held = || async move {
        let body = pgherd_http::client::default_client()
            .expect("HTTP client")
            .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text");
        body.lines()
            .find(|l| l.starts_with("pgherd_pooler_route_held{") && l.contains("database=\"app\""))
            .map(|l| l.ends_with(" 1"))
    };
    write_within(&pooler, Duration::from_secs(30))
        .await
        .expect("a write through the pooler");
    let keys = cluster.keys().await;
    assert_eq!(keys.poolers.len(), 1, "the pooler publishes its key");
    assert_eq!(keys.poolers[0].state.leader.as_deref(), Some(old.as_str()));
    assert_eq!(
        keys.poolers[0].state.routes_to.as_deref(),
        Some(old.as_str())
    );
    assert_eq!(held().await, Some(false), "routing writes");

    // etcd falls silent: within dcs_timeout the pooler stops routing writes.
    cluster.etcd.pause();
    let paused_at = Instant::now();
    let deadline = paused_at + Duration::from_secs(20);
    while !pooler.log().contains("cannot read the DCS: no primary") {
        assert!(Instant::now() < deadline, "{}", pooler.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fenced_after = paused_at.elapsed();
    assert!(
        fenced_after < Duration::from_secs(8) + Duration::from_millis(1500),
        "fenced after {fenced_after:?}"
    );
    assert!(
        write_within(&pooler, Duration::from_secs(2)).await.is_err(),
        "no write goes through while the pooler cannot know who leads"
    );
    assert_eq!(held().await, Some(true), "the metrics say the clients wait");
    cluster.etcd.resume();
    cluster.wait_healthy(1, Duration::from_secs(120)).await;
    if let Err(e) = write_within(&pooler, Duration::from_secs(60)).await {
        panic!("writes did not resume with the DCS: {e}\n{}", pooler.log());
    }

    // A frozen pooler holds up the next promotion until its key's lease runs out.
    let old = cluster.wait_healthy(1, Duration::from_secs(60)).await;
    pooler.signal(nix::sys::signal::Signal::SIGSTOP);
    cluster.node_mut(&old).kill_node();
    let new = cluster.other_than(&old);
    let deadline = Instant::now() + Duration::from_secs(90);
    while cluster.primary().await.as_deref() != Some(new.as_str()) {
        assert!(Instant::now() < deadline, "{new} did not take over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = cluster.node(&new).agent_log();
    assert!(
        log.contains("have not read us as the leader yet"),
        "the new leader waited for the pooler: {log}"
    );
    pooler.signal(nix::sys::signal::Signal::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pooler.server_port("app").await != Some(cluster.node(&new).pg_port) {
        assert!(Instant::now() < deadline, "{}", pooler.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchovers_through_the_pooler_fail_no_transaction() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(2);
    cluster.start_all();
    let first = cluster.wait_healthy(1, Duration::from_secs(120)).await;
    let pooler = Pooler::following(&cluster, "");
    let primary_port = cluster.node(&first).pg_port;
    let (mut bench, out) = pgbench_through(&cluster, primary_port, &pooler, 10, 45);
    // Session mode too: each client keeps a server, and moves with the primary between
    // its transactions.
    let session_out = cluster.dir.path().join("bench-session.out");
    let args = ["-n", "-c", "3", "-j", "1", "-T", "45", "-P", "5"];
    let mut session_bench = pgbench(&args, pooler.port, "app_session", &session_out);
    // Three switchovers, back and forth, under the writer.
    for round in 1..=3 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let from = cluster.primary().await.expect("a primary");
        let to = cluster.other_than(&from);
        let done = cluster.ctl(&["switchover", "--candidate", &to, "--force"]);
        assert!(done.status.success(), "round {round}: {}", text(&done));
        let deadline = Instant::now() + Duration::from_secs(60);
        while pooler.server_port("app").await != Some(cluster.node(&to).pg_port) {
            assert!(
                Instant::now() < deadline,
                "round {round}: the pooler did not move to {to}: {}",
                pooler.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cluster.wait_healthy(1, Duration::from_secs(60)).await;
    }
    let status = bench.wait().expect("pgbench");
    let report = fs::read_to_string(&out).unwrap_or_default();
    let errors = fs::read_to_string(out.with_extension("err")).unwrap_or_default();
    assert!(
        status.success() && !errors.contains("aborted") && !errors.contains("error"),
        "pgbench saw errors over the switchovers:\n{report}\n{errors}\n{}",
        pooler.log()
    );
    assert!(
        report.contains("number of failed transactions: 0 "),
        "{report}"
    );
    let status = session_bench.wait().expect("pgbench");
    let report = fs::read_to_string(&session_out).unwrap_or_default();
    let errors = fs::read_to_string(session_out.with_extension("err")).unwrap_or_default();
    assert!(
        status.success() && !errors.contains("aborted") && !errors.contains("error"),
        "session-mode pgbench saw errors over the switchovers:\n{report}\n{errors}\n{}",
        pooler.log()
    );
    assert!(
        report.contains("number of failed transactions: 0 "),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drill_runs_the_exercises_against_a_real_cluster_and_its_pooler() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(3);
    cluster.start_all();
    let primary = cluster.wait_healthy(2, Duration::from_secs(180)).await;
    let pooler = Pooler::following(&cluster, "");
    let uri = |db: &str| format!("postgres://postgres@127.0.0.1:{}/{db}", pooler.port);
    // The password from the environment, as a user would keep it out of the command.
    let out = cluster
        .ctl_command(&["drill", "--rw", &uri("app"), "--ro", &uri("reads"), "--yes"])
        .env("PGPASSWORD", SUPERUSER_PASSWORD)
        .output()
        .expect("run pgherd ctl drill");
    let report = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}\n{log}");
    assert!(report.contains("all 4 checks passed"), "{report}");
    assert!(
        report.contains(&format!("killed {primary} (kill -9 of agent pid")),
        "the drill killed the primary's node here: {report}"
    );
    assert!(!report.contains(SUPERUSER_PASSWORD), "{report}");
    assert!(!log.contains(SUPERUSER_PASSWORD), "{log}");
}
