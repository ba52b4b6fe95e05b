//! Limits beyond one pool, against a real PostgreSQL 15: `min_pool_size`,
//! `max_db_connections`, `max_user_connections` (global and per `[databases]` /
//! `[users]` entry), `server_login_retry`, and the janitor closing idle server
//! connections without client activity.

mod common;

use common::{connect, pooler, server_connections, sqlstate, APP_PASSWORD, NOBODY_PASSWORD};
use pgherd_postgres::Instance;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Tests in this file share the machine: one PostgreSQL at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

async fn postgres() -> common::Server {
    common::postgres("limits").await
}

/// A second `[databases]` entry in front of the same server, appended to the ini.
fn extra_database(pg: &Instance, name: &str, params: &str) -> String {
    format!(
        "\n[databases]\n{name} = host=127.0.0.1 port={} dbname=postgres {params}\n",
        pg.config().port
    )
}

/// Also let `nobody` (in the pooler's userlist) log in to PostgreSQL.
async fn create_nobody(pg: &Instance) {
    let c = pg.connect().await.expect("connect");
    c.batch_execute(&format!(
        "CREATE ROLE nobody LOGIN PASSWORD '{NOBODY_PASSWORD}'"
    ))
    .await
    .expect("create nobody");
}

/// Client backends PostgreSQL has for `app` and `nobody`.
async fn pooled_backends(pg: &Instance) -> i64 {
    let c = pg.connect().await.expect("connect");
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE usename IN ('app', 'nobody')",
        &[],
    )
    .await
    .expect("count")
    .get(0)
}

/// The backend pids of `app`.
async fn app_pids(pg: &Instance) -> Vec<i32> {
    let c = pg.connect().await.expect("connect");
    c.query(
        "SELECT pid FROM pg_stat_activity WHERE usename = 'app' ORDER BY pid",
        &[],
    )
    .await
    .expect("pids")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Poll `check` every 100 ms until it holds or `within` passes; how long it took.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < within {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn is_wait_timeout(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| d.message() == "query_wait_timeout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_opens_connections_after_first_use_and_replaces_killed_ones() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    // The [databases] entry's min_pool_size overrides the global 0.
    let settings = format!(
        "auth_type = md5\npool_mode = transaction\ndefault_pool_size = 5\n{}",
        extra_database(&server.pg, "mindb", "min_pool_size=3")
    );
    let p = pooler(&server.pg, &settings).await;
    assert_eq!(
        server_connections(&server.pg).await,
        0,
        "nothing before use"
    );

    let c = connect(p.port, "app", APP_PASSWORD, "mindb")
        .await
        .expect("login");
    c.batch_execute("SELECT 1").await.expect("query");
    let took = eventually(Duration::from_secs(5), || async {
        server_connections(&server.pg).await >= 3
    })
    .await
    .expect("min_pool_size = 3 connections within 5 s of first use");
    assert!(took < Duration::from_secs(3), "filled in {took:?}");
    assert!(
        server_connections(&server.pg).await <= 5,
        "never past pool_size"
    );

    // Kill them all: the janitor notices and opens new ones.
    let old = app_pids(&server.pg).await;
    let su = server.pg.connect().await.expect("connect");
    su.batch_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'",
    )
    .await
    .expect("terminate");
    let refilled = eventually(Duration::from_secs(5), || async {
        let now = app_pids(&server.pg).await;
        now.iter().filter(|pid| !old.contains(pid)).count() >= 3
    })
    .await;
    assert!(
        refilled.is_some(),
        "3 new server connections after the kill"
    );
    c.batch_execute("SELECT 1")
        .await
        .expect("the client gets a live server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_connections_caps_server_connections_across_users() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    create_nobody(&server.pg).await;
    // Per-database max_db_connections (the global setting stays unlimited).
    let settings = format!(
        "auth_type = md5\npool_mode = transaction\ndefault_pool_size = 5\nquery_wait_timeout = 1\n{}",
        extra_database(&server.pg, "capdb", "max_db_connections=2")
    );
    let p = pooler(&server.pg, &settings).await;
    let a1 = connect(p.port, "app", APP_PASSWORD, "capdb")
        .await
        .expect("a1");
    let n1 = connect(p.port, "nobody", NOBODY_PASSWORD, "capdb")
        .await
        .expect("n1");
    let a2 = connect(p.port, "app", APP_PASSWORD, "capdb")
        .await
        .expect("a2 (reuses app's idle server)");
    a1.batch_execute("BEGIN; SELECT 1").await.expect("a1 begin");
    n1.batch_execute("BEGIN; SELECT 1").await.expect("n1 begin");
    assert_eq!(pooled_backends(&server.pg).await, 2);

    // The third client's pool has room (5) but the database does not: it waits.
    let started = Instant::now();
    let e = a2
        .batch_execute("SELECT 1")
        .await
        .expect_err("a2 waits for max_db_connections");
    let waited = started.elapsed();
    assert!(is_wait_timeout(&e), "{e:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "waited {waited:?}"
    );
    // A fourth client waits too: at login if the pool has no server parameters to
    // welcome it with, else at its first query.
    let e = match connect(p.port, "nobody", NOBODY_PASSWORD, "capdb").await {
        Ok(n) => n
            .batch_execute("SELECT 1")
            .await
            .expect_err("a fourth client waits for max_db_connections"),
        Err(e) => e,
    };
    assert!(is_wait_timeout(&e), "{e:?}");
    assert_eq!(pooled_backends(&server.pg).await, 2, "never more than 2");

    // Once app's server is idle, nobody's pool takes its place (closes it, logs in).
    a1.batch_execute("COMMIT").await.expect("a1 commit");
    let n2 = connect(p.port, "nobody", NOBODY_PASSWORD, "capdb")
        .await
        .expect("n2 gets app's idle slot");
    n2.batch_execute("SELECT 1").await.expect("n2 query");
    let limit =
        p.rt.db_connection_limit("capdb")
            .expect("capdb has a limit");
    assert_eq!(limit.max(), 2);
    assert!(limit.in_use() <= 2, "{limit:?}");
    // The evicted backend may take a moment to exit after Terminate.
    let settled = eventually(Duration::from_secs(3), || async {
        pooled_backends(&server.pg).await <= 2
    })
    .await;
    assert!(settled.is_some(), "still at most 2");
    n1.batch_execute("COMMIT").await.expect("n1 commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_user_connections_caps_server_connections_across_databases() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    // The [users] entry overrides the global max_user_connections.
    let settings = format!(
        "auth_type = md5\npool_mode = transaction\ndefault_pool_size = 5\nquery_wait_timeout = 1\n\
         max_user_connections = 10\n{}\n[users]\napp = max_user_connections=2\n",
        extra_database(&server.pg, "appdb2", "")
    );
    let p = pooler(&server.pg, &settings).await;
    let a1 = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("a1");
    let b1 = connect(p.port, "app", APP_PASSWORD, "appdb2")
        .await
        .expect("b1");
    let a2 = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("a2");
    a1.batch_execute("BEGIN; SELECT 1").await.expect("a1 begin");
    b1.batch_execute("BEGIN; SELECT 1").await.expect("b1 begin");
    assert_eq!(server_connections(&server.pg).await, 2);

    let started = Instant::now();
    let e = a2
        .batch_execute("SELECT 1")
        .await
        .expect_err("a2 waits for max_user_connections");
    let waited = started.elapsed();
    assert!(is_wait_timeout(&e), "{e:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "waited {waited:?}"
    );
    assert_eq!(server_connections(&server.pg).await, 2, "never more than 2");

    // When one transaction ends, another database's pool can use the user's slot.
    a1.batch_execute("COMMIT").await.expect("a1 commit");
    let b2 = connect(p.port, "app", APP_PASSWORD, "appdb2")
        .await
        .expect("b2");
    b2.batch_execute("SELECT 1").await.expect("b2 query");
    let limit = p.rt.user_connection_limit("app").expect("app has a limit");
    assert_eq!(limit.max(), 2, "the [users] entry wins");
    assert!(limit.in_use() <= 2, "{limit:?}");
    let settled = eventually(Duration::from_secs(3), || async {
        server_connections(&server.pg).await <= 2
    })
    .await;
    assert!(settled.is_some(), "still at most 2");
    b1.batch_execute("COMMIT").await.expect("b1 commit");
}

/// A "server" that accepts TCP connections, counts them and never answers.
async fn silent_server() -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: the test makes a handful of connections at most.
        while held.len() < 64 {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (port, accepted, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_login_retry_fails_waiting_and_new_clients_fast_then_retries() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    let (port, accepted, silent) = silent_server().await;
    let settings = format!(
        "auth_type = md5\npool_mode = transaction\ndefault_pool_size = 1\nquery_wait_timeout = 10\n\
         server_connect_timeout = 1\nserver_login_retry = 3\n\
         [databases]\ndeaddb = host=127.0.0.1 port={port} dbname=postgres\n"
    );
    let p = pooler(&server.pg, &settings).await;

    // Two clients at once on a pool of 1: the first logs in to the server and times
    // out; the second, waiting for the slot, gets the same error, not another wait.
    let started = Instant::now();
    let first = tokio::spawn(connect(p.port, "app", APP_PASSWORD, "deaddb"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn(connect(p.port, "app", APP_PASSWORD, "deaddb"));
    let e1 = first
        .await
        .expect("task")
        .expect_err("the server never answers");
    let e2 = second
        .await
        .expect("task")
        .expect_err("the waiting client gets the login error");
    let both = started.elapsed();
    assert_eq!(sqlstate(&e1), "08006", "{e1:?}");
    assert_eq!(sqlstate(&e2), "08006", "{e2:?}");
    assert!(
        both < Duration::from_millis(1900),
        "both failed in {both:?}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one login attempt");

    // Within server_login_retry: fails at once, without a TCP connection.
    let t = Instant::now();
    let e3 = connect(p.port, "app", APP_PASSWORD, "deaddb")
        .await
        .expect_err("still failing");
    assert_eq!(sqlstate(&e3), "08006", "{e3:?}");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "no new login attempt");

    // After server_login_retry (3 s after the failure), a login is tried again.
    let retry_at = started + Duration::from_millis(1000 + 3500);
    tokio::time::sleep_until(retry_at.into()).await;
    let t = Instant::now();
    let e4 = connect(p.port, "app", APP_PASSWORD, "deaddb")
        .await
        .expect_err("the server still never answers");
    assert_eq!(sqlstate(&e4), "08006", "{e4:?}");
    assert!(t.elapsed() >= Duration::from_millis(900), "a real attempt");
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new login attempt");
    silent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_server_port_fails_quickly_and_is_not_retried_within_server_login_retry() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    let (_reserved, closed) = pgherd_testkit::refusing_port();
    let settings = format!(
        "auth_type = md5\nserver_login_retry = 15\n\
         [databases]\ndeaddb = host=127.0.0.1 port={closed} dbname=postgres\n"
    );
    let p = pooler(&server.pg, &settings).await;
    for attempt in 0..2 {
        let t = Instant::now();
        let e = connect(p.port, "app", APP_PASSWORD, "deaddb")
            .await
            .expect_err("nothing listens there");
        assert_eq!(sqlstate(&e), "08006", "attempt {attempt}: {e:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    let connects: u64 =
        p.rt.pools()
            .iter()
            .map(|pool| pool.stats.server_connects.load(Ordering::Relaxed))
            .sum();
    assert_eq!(connects, 1, "the second client did not try again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janitor_closes_idle_servers_without_client_activity() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    let p = pooler(
        &server.pg,
        "auth_type = md5\npool_mode = transaction\ndefault_pool_size = 5\nserver_idle_timeout = 1",
    )
    .await;
    let c = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("login");
    c.batch_execute("SELECT 1").await.expect("query");
    assert_eq!(server_connections(&server.pg).await, 1);
    // The client stays connected and quiet: only the janitor can close the server.
    let gone = eventually(Duration::from_secs(5), || async {
        server_connections(&server.pg).await == 0
    })
    .await
    .expect("the idle server connection is closed");
    assert!(gone < Duration::from_secs(3), "closed after {gone:?}");
    c.batch_execute("SELECT 1")
        .await
        .expect("a new server connection for the next transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janitor_closes_idle_servers_past_server_lifetime() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    let p = pooler(
        &server.pg,
        "auth_type = md5\npool_mode = transaction\nserver_lifetime = 1\nserver_idle_timeout = 0",
    )
    .await;
    let c = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("login");
    c.batch_execute("SELECT 1").await.expect("query");
    let gone = eventually(Duration::from_secs(5), || async {
        server_connections(&server.pg).await == 0
    })
    .await
    .expect("the old server connection is closed");
    assert!(gone < Duration::from_secs(3), "closed after {gone:?}");
    c.batch_execute("SELECT 1").await.expect("next transaction");
}

/// Rewrite the pooler's pgbouncer.ini with `settings` and reload it, as `RELOAD` does.
fn reload_with(p: &common::Pooler, pg: &Instance, settings: &str) {
    let userlist = p.ini.with_file_name("userlist.txt");
    std::fs::write(&p.ini, common::ini_text(pg, p.port, &userlist, settings)).expect("ini");
    p.rt.reload_from(&p.ini).expect("reload");
}

/// Open `n` transaction-mode clients that each hold a server (inside BEGIN).
async fn holders(port: u16, n: usize) -> Vec<tokio_postgres::Client> {
    let mut held = Vec::new();
    for _ in 0..n {
        let c = connect(port, "app", APP_PASSWORD, "appdb")
            .await
            .expect("login");
        c.batch_execute("BEGIN; SELECT 1").await.expect("begin");
        held.push(c);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_grows_and_shrinks_pools_and_reconnects_moved_servers() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    let pg = &server.pg;
    let base = "pool_mode = transaction\nquery_wait_timeout = 2\n";
    let p = pooler(pg, &format!("{base}default_pool_size = 2")).await;

    // Two servers, both in transactions: a third client waits and times out.
    let held = holders(p.port, 2).await;
    let third = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("login");
    let e = third.simple_query("SELECT 1").await.expect_err("pool full");
    assert_eq!(sqlstate(&e), "08P01", "{e}");

    // default_pool_size = 4 by RELOAD: a new client gets a third server right away.
    reload_with(&p, pg, &format!("{base}default_pool_size = 4"));
    let more = holders(p.port, 2).await;
    assert_eq!(server_connections(pg).await, 4);
    drop(more);
    for c in &held {
        c.batch_execute("COMMIT").await.expect("commit");
    }

    // Back to 1: two transactions now take turns on one server.
    reload_with(&p, pg, &format!("{base}default_pool_size = 1"));
    let a = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("a");
    let b = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("b");
    let mut in_use = None;
    for _ in 0..100 {
        // The shrink takes slots back as servers return; the clients above are done.
        a.batch_execute("BEGIN; SELECT 1").await.expect("a begins");
        let blocked = tokio::time::timeout(Duration::from_millis(500), b.simple_query("SELECT 1"))
            .await
            .is_err();
        a.batch_execute("COMMIT").await.expect("a commits");
        if blocked {
            in_use = Some(());
            break;
        }
    }
    assert!(in_use.is_some(), "b never had to wait for a's server");
    b.simple_query("SELECT 1")
        .await
        .expect("b runs once a is done");

    // A changed [databases] entry (here its application_name) reconnects the pool.
    let before = app_pids(pg).await;
    let userlist = p.ini.with_file_name("userlist.txt");
    let text = common::ini_text(
        pg,
        p.port,
        &userlist,
        &format!("{base}default_pool_size = 1"),
    )
    .replace("dbname=postgres", "dbname=postgres application_name=moved");
    std::fs::write(&p.ini, text).expect("ini");
    p.rt.reload_from(&p.ini).expect("reload");
    let row = a
        .query_one(
            "SELECT current_setting('application_name'), pg_backend_pid()",
            &[],
        )
        .await
        .expect("query after the move");
    let (name, pid): (String, i32) = (row.get(0), row.get(1));
    assert_eq!(name, "moved");
    assert!(
        !before.contains(&pid),
        "a new server connection: {pid} in {before:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_max_db_connections_of_existing_pools() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    let pg = &server.pg;
    let base = "pool_mode = transaction\nquery_wait_timeout = 2\ndefault_pool_size = 5\n";
    let p = pooler(pg, &format!("{base}max_db_connections = 1")).await;

    // One server for the database: a second transaction waits and times out.
    let held = holders(p.port, 1).await;
    let second = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("login");
    let e = second
        .simple_query("SELECT 1")
        .await
        .expect_err("over the limit");
    assert_eq!(sqlstate(&e), "08P01", "{e}");

    // Raised to 3 by RELOAD: two more transactions run next to the first.
    reload_with(&p, pg, &format!("{base}max_db_connections = 3"));
    let more = holders(p.port, 2).await;
    assert_eq!(server_connections(pg).await, 3);
    drop((held, more));
}
