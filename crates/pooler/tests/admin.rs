//! The admin console (`psql ... dbname=pgbouncer`) against a real PostgreSQL 15: SHOW
//! output with PgBouncer's columns and types, access rules, PAUSE/RESUME, RELOAD, KILL,
//! RECONNECT, SHUTDOWN, and garbage on the console.

mod common;

use bytes::{Buf, BytesMut};
use common::*;
use pgherd_protocol::backend::RowDescription;
use pgherd_protocol::{Message, StartupMessage};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio_postgres::SimpleQueryMessage;

/// Tests in this file share the machine: one PostgreSQL at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// Bound for every wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

const POOLS_COLUMNS: &[&str] = &[
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "cl_active_cancel_req",
    "cl_waiting_cancel_req",
    "sv_active",
    "sv_active_cancel",
    "sv_being_canceled",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
    "maxwait",
    "maxwait_us",
    "pool_mode",
    "load_balance_hosts",
];

const SOCKET_COLUMNS: &[&str] = &[
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
];

/// psql's unaligned output: the header and the rows, as maps.
struct Table {
    header: Vec<String>,
    rows: Vec<HashMap<String, String>>,
}

/// Run one command with psql on the console; Err(stderr) when psql fails.
async fn psql(port: u16, user: &str, password: &str, command: &str) -> Result<Table, String> {
    let mut cmd = tokio::process::Command::new("psql");
    cmd.args(["-X", "-A", "-F", "|", "-c", command])
        .arg(format!(
            "host=127.0.0.1 port={port} user={user} dbname=pgbouncer connect_timeout=5"
        ))
        .env("PGPASSWORD", password)
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("psql finishes in time")
        .expect("psql runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().filter(|l| !l.is_empty());
    let header: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split('|')
        .map(str::to_string)
        .collect();
    let rows = lines
        .take_while(|l| !l.starts_with('('))
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split('|').map(str::to_string))
                .collect()
        })
        .collect();
    Ok(Table { header, rows })
}

async fn admin(port: u16) -> tokio_postgres::Client {
    connect(port, "postgres", ADMIN_PASSWORD, "pgbouncer")
        .await
        .expect("admin console login")
}

/// Column names of a simple-query result.
async fn columns(c: &tokio_postgres::Client, query: &str) -> Vec<String> {
    let messages = c.simple_query(query).await.expect(query);
    for m in &messages {
        if let SimpleQueryMessage::RowDescription(cols) = m {
            return cols.iter().map(|c| c.name().to_string()).collect();
        }
        if let SimpleQueryMessage::Row(row) = m {
            return row.columns().iter().map(|c| c.name().to_string()).collect();
        }
    }
    panic!("{query}: no row description");
}

/// Rows of a simple-query result as maps.
async fn rows(c: &tokio_postgres::Client, query: &str) -> Vec<HashMap<String, String>> {
    c.simple_query(query)
        .await
        .expect(query)
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The server's message of a failed query (tokio-postgres' Display says only "db error").
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

fn appdb_pool(t: &[HashMap<String, String>]) -> HashMap<String, String> {
    t.iter()
        .find(|r| r["database"] == "appdb" && r["user"] == "app")
        .cloned()
        .expect("a row for the appdb/app pool")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_pools_via_psql_has_pgbouncer_columns_and_counts_a_client_in_a_transaction() {
    let _serial = SERIAL.lock().await;
    let server = postgres("admin").await;
    let p = pooler(&server.pg, "pool_mode = transaction\ndefault_pool_size = 3").await;
    let app = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("app login");
    app.batch_execute("BEGIN; SELECT 1").await.expect("begin");

    let t = psql(p.port, "postgres", ADMIN_PASSWORD, "SHOW POOLS")
        .await
        .expect("SHOW POOLS");
    assert_eq!(
        t.header, POOLS_COLUMNS,
        "PgBouncer's SHOW POOLS columns, in order"
    );
    let row = appdb_pool(&t.rows);
    assert_eq!(
        row["cl_active"], "1",
        "the client holding a transaction: {row:?}"
    );
    assert_eq!(row["cl_waiting"], "0");
    assert_eq!(row["sv_active"], "1", "its server is lent: {row:?}");
    assert_eq!(row["pool_mode"], "transaction");
    let console = t
        .rows
        .iter()
        .find(|r| r["database"] == "pgbouncer")
        .expect("the console's own pool");
    assert_eq!(console["cl_active"], "1", "psql itself");

    app.batch_execute("COMMIT").await.expect("commit");
    let t = psql(p.port, "postgres", ADMIN_PASSWORD, "show pools;")
        .await
        .expect("show pools");
    let row = appdb_pool(&t.rows);
    assert_eq!(
        row["sv_active"], "0",
        "released at the end of the transaction"
    );
    assert_eq!(
        row["sv_idle"].parse::<u32>().unwrap() + row["sv_used"].parse::<u32>().unwrap(),
        1,
        "kept for reuse: {row:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_return_pgbouncer_columns_and_types() {
    let _serial = SERIAL.lock().await;
    let server = postgres("admin").await;
    let p = pooler(&server.pg, "pool_mode = session\nmax_client_conn = 57").await;
    let app = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("app login");
    app.simple_query("SELECT pg_sleep(0.05)")
        .await
        .expect("query");
    let c = admin(p.port).await;

    let stats = columns(&c, "SHOW STATS").await;
    assert_eq!(stats[0], "database");
    for name in [
        "total_server_assignment_count",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_xact_time",
        "total_query_time",
        "total_wait_time",
        "avg_xact_count",
        "avg_query_count",
        "avg_recv",
        "avg_sent",
        "avg_wait_time",
    ] {
        assert!(stats.iter().any(|c| c == name), "SHOW STATS has {name}");
    }
    let app_stats = rows(&c, "SHOW STATS").await;
    let appdb = app_stats
        .iter()
        .find(|r| r["database"] == "appdb")
        .expect("appdb stats");
    assert!(appdb["total_query_count"].parse::<u64>().unwrap() >= 1);
    // Microseconds, as exporters expect: the 50 ms query counts in both.
    for time in ["total_query_time", "total_xact_time"] {
        let us: u64 = appdb[time].parse().unwrap();
        assert!((50_000..10_000_000).contains(&us), "{time} = {us}");
    }
    assert_eq!(
        columns(&c, "SHOW STATS_TOTALS").await[1],
        "server_assignment_count"
    );
    assert_eq!(
        columns(&c, "SHOW STATS_AVERAGES").await[4],
        "bytes_received"
    );

    assert_eq!(columns(&c, "SHOW CLIENTS").await, SOCKET_COLUMNS);
    let clients = rows(&c, "SHOW CLIENTS").await;
    let app_client = clients
        .iter()
        .find(|r| r["database"] == "appdb")
        .expect("the app client");
    assert_eq!(app_client["type"], "C");
    assert_eq!(app_client["user"], "app");
    assert_eq!(
        app_client["state"], "active",
        "session mode: linked to its server"
    );
    assert_eq!(app_client["addr"], "127.0.0.1");
    assert!(app_client["connect_time"].ends_with(" UTC"));

    assert_eq!(columns(&c, "SHOW SERVERS").await, SOCKET_COLUMNS);
    let servers = rows(&c, "SHOW SERVERS").await;
    let s = servers
        .iter()
        .find(|r| r["database"] == "appdb")
        .expect("server row");
    assert_eq!(s["type"], "S");
    assert_eq!(s["port"], server.pg.config().port.to_string());
    assert_eq!(
        s["link"], app_client["ptr"],
        "the server links to its client"
    );
    assert_eq!(app_client["link"], s["ptr"], "and the client to its server");
    assert!(s["remote_pid"].parse::<i32>().unwrap() > 0);

    assert_eq!(
        columns(&c, "SHOW DATABASES").await,
        [
            "name",
            "host",
            "port",
            "database",
            "force_user",
            "pool_size",
            "min_pool_size",
            "reserve_pool_size",
            "server_lifetime",
            "pool_mode",
            "load_balance_hosts",
            "max_connections",
            "current_connections",
            "max_client_connections",
            "current_client_connections",
            "paused",
            "disabled",
        ]
    );
    let dbs = rows(&c, "SHOW DATABASES").await;
    let appdb = dbs.iter().find(|r| r["name"] == "appdb").expect("appdb");
    assert_eq!(appdb["database"], "postgres");
    assert_eq!(appdb["current_connections"], "1");
    assert_eq!(appdb["paused"], "0");

    assert_eq!(
        columns(&c, "SHOW CONFIG").await,
        ["key", "value", "default", "changeable"]
    );
    let config = rows(&c, "SHOW CONFIG").await;
    let max = config
        .iter()
        .find(|r| r["key"] == "max_client_conn")
        .expect("max_client_conn");
    assert_eq!(max["value"], "57");
    assert_eq!(max["default"], "100");
    assert_eq!(max["changeable"], "yes");

    assert_eq!(columns(&c, "SHOW LISTS").await, ["list", "items"]);
    let lists = rows(&c, "SHOW LISTS").await;
    let names: Vec<&str> = lists.iter().map(|r| r["list"].as_str()).collect();
    assert_eq!(&names[..4], ["databases", "users", "peers", "pools"]);

    let version = rows(&c, "SHOW VERSION").await;
    assert_eq!(columns(&c, "SHOW VERSION").await, ["version"]);
    assert!(
        version[0]["version"].starts_with("PgBouncer 1."),
        "{version:?}"
    );

    assert_eq!(
        columns(&c, "SHOW USERS").await,
        [
            "name",
            "pool_size",
            "reserve_pool_size",
            "pool_mode",
            "max_user_connections",
            "current_connections",
            "max_user_client_connections",
            "current_client_connections",
        ]
    );

    // Types as exporters see them, from the RowDescription itself.
    let pools = row_description(p.port, "SHOW POOLS").await;
    let oid = |d: &RowDescription, name: &str| {
        d.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.type_oid)
            .expect(name)
    };
    assert_eq!(oid(&pools, "database"), 25, "text");
    assert_eq!(oid(&pools, "cl_active"), 23, "int4");
    assert_eq!(oid(&pools, "maxwait_us"), 23, "int4");
    let stats = row_description(p.port, "SHOW STATS").await;
    assert_eq!(oid(&stats, "total_xact_count"), 1700, "numeric");
    assert_eq!(oid(&stats, "avg_wait_time"), 1700, "numeric");
    let clients = row_description(p.port, "SHOW CLIENTS").await;
    assert_eq!(oid(&clients, "port"), 23);
    assert_eq!(oid(&clients, "connect_time"), 25);
}

/// The RowDescription of `query`, read off the wire (md5 login as the admin user).
async fn row_description(port: u16, query: &str) -> RowDescription {
    tokio::time::timeout(WAIT, async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut buf = BytesMut::new();
        StartupMessage::new("postgres")
            .with_parameter("database", "pgbouncer")
            .encode(&mut buf);
        s.write_all(&buf).await.expect("startup");
        let mut inbox = BytesMut::new();
        loop {
            let (tag, body) = read_message(&mut s, &mut inbox).await;
            match tag {
                b'R' => {
                    let code = (&body[..4]).get_i32();
                    if code == 5 {
                        let salt: [u8; 4] = body[4..8].try_into().unwrap();
                        let pw = pgherd_protocol::auth::md5_client_response(
                            "postgres",
                            ADMIN_PASSWORD.as_bytes(),
                            salt,
                        );
                        let mut out = BytesMut::new();
                        pgherd_protocol::frontend::PasswordMessage {
                            password: pw.into_bytes().into(),
                        }
                        .encode(&mut out);
                        s.write_all(&out).await.expect("password");
                    } else {
                        assert_eq!(code, 0, "md5 or ok");
                    }
                }
                b'Z' => break,
                b'E' => panic!("login failed: {body:?}"),
                _ => {}
            }
        }
        let mut out = BytesMut::new();
        pgherd_protocol::frontend::Query::new(query.as_bytes().to_vec()).encode(&mut out);
        s.write_all(&out).await.expect("query");
        loop {
            let (tag, body) = read_message(&mut s, &mut inbox).await;
            match tag {
                b'T' => return RowDescription::decode(&body).expect("row description"),
                b'E' | b'Z' => panic!("{query}: no row description"),
                _ => {}
            }
        }
    })
    .await
    .expect("in time")
}

async fn read_message(s: &mut tokio::net::TcpStream, inbox: &mut BytesMut) -> (u8, Vec<u8>) {
    loop {
        if inbox.len() >= 5 {
            let len = u32::from_be_bytes(inbox[1..5].try_into().unwrap()) as usize;
            if inbox.len() > len {
                let tag = inbox[0];
                inbox.advance(5);
                let body = inbox.split_to(len - 4).to_vec();
                return (tag, body);
            }
        }
        let n = s.read_buf(inbox).await.expect("read");
        assert!(n > 0, "connection closed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_users_may_only_show_and_other_users_are_refused() {
    let _serial = SERIAL.lock().await;
    let server = postgres("admin").await;
    let p = pooler(&server.pg, "").await;

    let t = psql(p.port, "stats", STATS_PASSWORD, "SHOW POOLS")
        .await
        .expect("a stats user may SHOW");
    assert_eq!(t.header, POOLS_COLUMNS);

    let stats = connect(p.port, "stats", STATS_PASSWORD, "pgbouncer")
        .await
        .expect("stats login");
    for cmd in [
        "PAUSE",
        "RESUME",
        "RELOAD",
        "KILL appdb",
        "RECONNECT",
        "SHUTDOWN",
        "SET max_client_conn = 5",
    ] {
        let e = stats.simple_query(cmd).await.expect_err(cmd);
        assert_eq!(sqlstate(&e), "42501", "{cmd}: {e}");
        assert!(message(&e).contains("admin access needed"), "{e}");
    }
    assert!(!p.rt.is_paused_all(), "nothing was paused");
    rows(&stats, "SHOW VERSION").await;

    let e = connect(p.port, "nobody", NOBODY_PASSWORD, "pgbouncer")
        .await
        .expect_err("not in admin_users or stats_users");
    assert_eq!(sqlstate(&e), "28000", "{e}");
    assert!(message(&e).contains("not allowed"), "{e}");
    let e = connect(p.port, "postgres", "wrong", "pgbouncer")
        .await
        .expect_err("wrong password");
    assert_eq!(sqlstate(&e), "28P01", "{e}");
    let e = psql(p.port, "nobody", NOBODY_PASSWORD, "SHOW POOLS")
        .await
        .err()
        .expect("psql is refused too");
    assert!(e.contains("not allowed"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_the_running_transaction_and_holds_new_ones_until_resume() {
    let _serial = SERIAL.lock().await;
    let server = postgres("admin").await;
    let p = pooler(&server.pg, "pool_mode = transaction\ndefault_pool_size = 2").await;
    let a = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("a");
    let b = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("b");
    a.batch_execute("BEGIN; SELECT 1").await.expect("a begins");

    let port = p.port;
    let pause = tokio::spawn(async move {
        let c = admin(port).await;
        let r = c.simple_query("PAUSE appdb").await.map(|_| ());
        (r, Instant::now(), c)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE waits for the running transaction"
    );
    let committed = Instant::now();
    a.batch_execute("COMMIT").await.expect("a commits");
    let (r, paused_at, console) = tokio::time::timeout(WAIT, pause)
        .await
        .expect("PAUSE returns once the transaction is over")
        .expect("task");
    r.expect("PAUSE succeeds");
    assert!(paused_at >= committed, "PAUSE returned after the COMMIT");
    let dbs = rows(&console, "SHOW DATABASES").await;
    assert_eq!(
        dbs.iter().find(|r| r["name"] == "appdb").unwrap()["paused"],
        "1"
    );

    let query = tokio::spawn(async move {
        let r = b.simple_query("SELECT 2").await.map(|_| ());
        (r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!query.is_finished(), "a new transaction waits while paused");
    let pools = rows(&console, "SHOW POOLS").await;
    assert_eq!(appdb_pool(&pools)["cl_waiting"], "1", "{pools:?}");

    let resumed = Instant::now();
    console.simple_query("RESUME appdb").await.expect("RESUME");
    let (r, ran_at) = tokio::time::timeout(WAIT, query)
        .await
        .expect("RESUME lets it through")
        .expect("task");
    r.expect("the held query succeeds");
    assert!(ran_at >= resumed, "the query ran after RESUME");

    let e = console
        .simple_query("RESUME appdb")
        .await
        .expect_err("not paused");
    assert!(message(&e).contains("not paused"), "{e}");
    console
        .simple_query("PAUSE")
        .await
        .expect("PAUSE everything (idle)");
    console
        .simple_query("RESUME")
        .await
        .expect("RESUME everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_kill_reconnect_and_set_do_what_pgbouncer_does() {
    let _serial = SERIAL.lock().await;
    let server = postgres("admin").await;
    let p = pooler(&server.pg, "pool_mode = transaction\nmax_client_conn = 100").await;
    let console = admin(p.port).await;

    // RELOAD picks up a changed setting.
    let userlist = p.ini.with_file_name("userlist.txt");
    std::fs::write(
        &p.ini,
        ini_text(
            &server.pg,
            p.port,
            &userlist,
            "pool_mode = transaction\nmax_client_conn = 77",
        ),
    )
    .expect("rewrite ini");
    console.simple_query("RELOAD").await.expect("RELOAD");
    let config = rows(&console, "SHOW CONFIG").await;
    let value = |config: &[HashMap<String, String>], key: &str| {
        config.iter().find(|r| r["key"] == key).expect(key)["value"].clone()
    };
    assert_eq!(value(&config, "max_client_conn"), "77");

    // SET changes a changeable setting, refuses one that needs a restart.
    console
        .simple_query("SET server_reset_query = 'DISCARD PLANS'")
        .await
        .expect("SET");
    let config = rows(&console, "SHOW CONFIG").await;
    assert_eq!(value(&config, "server_reset_query"), "DISCARD PLANS");
    console
        .simple_query("SET listen_port = 1")
        .await
        .expect_err("listen_port needs a restart");

    // RECONNECT: idle servers close now, lent ones when they come back.
    let a = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("a");
    let b = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("b");
    a.batch_execute("BEGIN; SELECT 1").await.expect("a begins");
    b.simple_query("SELECT 1").await.expect("b queries");
    assert_eq!(server_connections(&server.pg).await, 2);
    console
        .simple_query("RECONNECT appdb")
        .await
        .expect("RECONNECT");
    wait_for_server_connections(&server.pg, 1).await;
    let servers = rows(&console, "SHOW SERVERS").await;
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0]["close_needed"], "1", "the lent one is marked");
    a.batch_execute("COMMIT").await.expect("a commits");
    wait_for_server_connections(&server.pg, 0).await;
    b.simple_query("SELECT 1")
        .await
        .expect("b gets a fresh server");

    // KILL drops the database's clients and servers; the database stays paused.
    console.simple_query("KILL appdb").await.expect("KILL");
    let e = tokio::time::timeout(WAIT, a.simple_query("SELECT 1"))
        .await
        .expect("no hang")
        .expect_err("a was disconnected");
    assert!(a.is_closed(), "{e}");
    tokio::time::timeout(WAIT, b.simple_query("SELECT 1"))
        .await
        .expect("no hang")
        .expect_err("b was disconnected");
    wait_for_server_connections(&server.pg, 0).await;
    assert!(
        rows(&console, "SHOW CLIENTS")
            .await
            .iter()
            .all(|r| r["database"] == "pgbouncer"),
        "only the console is left"
    );
    let port = p.port;
    let late = tokio::spawn(async move {
        let c = connect(port, "app", APP_PASSWORD, "appdb").await?;
        c.simple_query("SELECT 1").await.map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!late.is_finished(), "a killed database is paused");
    console.simple_query("RESUME appdb").await.expect("RESUME");
    tokio::time::timeout(WAIT, late)
        .await
        .expect("in time")
        .expect("task")
        .expect("works after RESUME");
}

async fn wait_for_server_connections(pg: &pgherd_postgres::Instance, n: i64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = server_connections(pg).await;
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{now} server connections, want {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_console_gets_errors_and_the_session_stays_usable() {
    let _serial = SERIAL.lock().await;
    let server = postgres("admin").await;
    let p = pooler(&server.pg, "").await;
    let c = admin(p.port).await;

    let e = c
        .simple_query("FROBNICATE everything now")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42601", "{e}");
    assert!(message(&e).contains("invalid command"), "{e}");
    let e = c.simple_query("SHOW NONSENSE").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42601", "{e}");
    let e = c.simple_query("").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42601", "empty query: {e}");
    // tokio-postgres' query() uses the extended protocol.
    let e = c.query("SHOW POOLS", &[]).await.unwrap_err();
    assert!(
        message(&e).contains("extended protocol not supported"),
        "{e}"
    );
    let e = c
        .simple_query("PAUSE no_such_db_name_here")
        .await
        .unwrap_err();
    assert!(message(&e).contains("no such database"), "{e}");
    assert_eq!(columns(&c, "show version").await, ["version"]);
    assert!(!c.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_makes_serve_return() {
    let _serial = SERIAL.lock().await;
    let server = postgres("admin").await;
    let mut p = pooler(&server.pg, "").await;
    let c = admin(p.port).await;
    // Like PgBouncer, SHUTDOWN gets no answer: the connection just closes.
    let _ = tokio::time::timeout(WAIT, c.simple_query("SHUTDOWN"))
        .await
        .expect("SHUTDOWN does not hang");
    tokio::time::timeout(WAIT, &mut p.serve)
        .await
        .expect("serve returns after SHUTDOWN")
        .expect("serve task");
    assert!(*p.rt.shutdown_requested().borrow());
}
