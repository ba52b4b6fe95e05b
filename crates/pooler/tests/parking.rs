//! Idle clients park (their task and reactor registration are given back) and resume
//! with their session intact: tracked parameters, named prepared statements, cancel
//! keys. KILL, client_idle_timeout and a client leaving all reach parked clients.

mod common;

use common::{connect, pooler, ADMIN_PASSWORD, APP_PASSWORD};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Tests in this file share the machine: one PostgreSQL at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// Longest wait for a client to park (it parks after 0.25 to 0.5 s of idleness).
const PARK_WAIT: Duration = Duration::from_secs(6);

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tokio-postgres client of `app` on `appdb` through the pooler.
async fn app_client(port: u16) -> tokio_postgres::Client {
    connect(port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("app logs in")
}

fn parked(p: &common::Pooler) -> usize {
    p.rt.parker().map_or(0, |k| k.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_park_and_resume_with_their_session_intact() {
    let _serial = SERIAL.lock().await;
    let server = common::postgres("parking").await;
    let p = pooler(
        &server.pg,
        "auth_type = md5\npool_mode = transaction\ndefault_pool_size = 2",
    )
    .await;
    let (c, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=app password='{APP_PASSWORD}' dbname=appdb \
             application_name=parked-app connect_timeout=5",
            p.port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("login");
    tokio::spawn(conn);
    let statement = c
        .prepare("SELECT $1::int + 1, current_setting('application_name')")
        .await
        .expect("prepare");
    let row = c.query_one(&statement, &[&1i32]).await.expect("execute");
    assert_eq!(row.get::<_, i32>(0), 2);

    wait_until("the idle client parks", PARK_WAIT, || parked(&p) == 1).await;
    // Resumed by its next message: the named statement (now on whichever server) and
    // the startup parameter are still there.
    let row = c
        .query_one(&statement, &[&41i32])
        .await
        .expect("after parking");
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "parked-app");
    assert_eq!(parked(&p), 0, "it runs again");

    // Parked again, a cancel key still works: the resumed client's query is cancelled.
    wait_until("the client parks again", PARK_WAIT, || parked(&p) == 1).await;
    let cancel = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel");
    let e = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the cancel arrived")
        .expect("task")
        .expect_err("cancelled");
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_clients_leave_time_out_and_can_be_killed() {
    let _serial = SERIAL.lock().await;
    let server = common::postgres("parking").await;
    let p = pooler(
        &server.pg,
        "auth_type = md5\npool_mode = transaction\ndefault_pool_size = 2\n\
         client_idle_timeout = 4\nmax_client_conn = 3",
    )
    .await;
    let app_clients = |p: &common::Pooler| {
        p.rt.clients()
            .iter()
            .filter(|c| c.view().database.as_deref() == Some("appdb"))
            .count()
    };

    // A client that leaves while parked is forgotten, and its max_client_conn slot
    // is free again.
    let a = app_client(p.port).await;
    let b = app_client(p.port).await;
    let c = app_client(p.port).await;
    wait_until("three clients park", PARK_WAIT, || parked(&p) == 3).await;
    drop(c);
    wait_until("the client that left is forgotten", PARK_WAIT, || {
        app_clients(&p) == 2 && parked(&p) == 2
    })
    .await;

    // KILL closes parked clients at once.
    let console = connect(p.port, "postgres", ADMIN_PASSWORD, "pgbouncer")
        .await
        .expect("console fits in the freed slot");
    console.simple_query("KILL appdb").await.expect("KILL");
    for (name, client) in [("a", &a), ("b", &b)] {
        tokio::time::timeout(Duration::from_secs(5), client.simple_query("SELECT 1"))
            .await
            .expect("no hang")
            .expect_err(name);
    }
    assert_eq!(app_clients(&p), 0, "killed clients are not listed");
    assert_eq!(parked(&p), 0);
    console.simple_query("RESUME appdb").await.expect("RESUME");
    drop(console);

    // client_idle_timeout reaches a parked client.
    let d = app_client(p.port).await;
    let started = Instant::now();
    wait_until("d parks", PARK_WAIT, || parked(&p) == 1).await;
    wait_until("d times out", Duration::from_secs(10), || d.is_closed()).await;
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_secs(4) && idle < Duration::from_secs(7),
        "closed after {idle:?}"
    );
    assert_eq!(parked(&p), 0);
    wait_until("d is forgotten", PARK_WAIT, || app_clients(&p) == 0).await;
}
