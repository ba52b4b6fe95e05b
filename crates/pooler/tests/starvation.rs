//! More clients than servers in transaction mode, with named prepared statements: the
//! tutorial's pgbouncer.ini (md5, max_client_conn 100, default_pool_size 20) with
//! `pool_mode = transaction`, and pgbench with two threads for 50 or 80 clients, as a
//! user runs it. pgbench `-M prepared` prepares each statement synchronously the first
//! time a client runs it, which blocks that client's whole thread: if the prepare had to
//! wait for a server while the thread's other clients held every server inside a
//! transaction, nobody would ever read their answers and every client would wait out
//! `query_wait_timeout`. The pooler answers a prepare-only batch without a server.

mod common;

use common::{pooler, psql, ADMIN_PASSWORD, APP_PASSWORD};
use pgherd_testkit::pg::pg_bin_dir;
use std::process::Command;

/// The tutorial's `[pgbouncer]` settings (seed §5.1) in transaction mode; a short
/// `query_wait_timeout` so that a stall fails the test in seconds, not minutes.
const TUTORIAL_TRANSACTION_MODE: &str = "auth_type = md5\nmax_client_conn = 100\n\
     default_pool_size = 20\npool_mode = transaction\nquery_wait_timeout = 15";

/// Run pgbench (`-n`, 2 threads, `-T 5`) through the pooler; its output.
fn pgbench(port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let mut all = vec![
        "-n",
        "-j",
        "2",
        "-T",
        "5",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "app",
    ];
    all.extend_from_slice(args);
    all.push("appdb");
    let out = Command::new(pg_bin_dir().join("pgbench"))
        .args(&all)
        .env("PGPASSWORD", APP_PASSWORD)
        .output()
        .expect("run pgbench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {all:?} failed:\n{text}");
    text
}

/// "number of transactions actually processed: N" from pgbench's report.
fn processed(report: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in:\n{report}"))
}

/// A database with pgbench's tables (scale 1), readable and writable by `app`.
async fn pgbench_database(server: &common::Server) {
    let out = Command::new(pg_bin_dir().join("pgbench"))
        .args(["-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p"])
        .arg(server.pg.config().port.to_string())
        .args(["-U", "postgres", "postgres"])
        .env("PGPASSWORD", "su")
        .output()
        .expect("pgbench -i");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let su = server.pg.connect().await.expect("connect");
    su.batch_execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO app")
        .await
        .expect("grant");
}

/// `SHOW POOLS` for appdb/app: (cl_active, cl_waiting, sv_active, sv_idle).
async fn pool_counts(port: u16) -> (i64, i64, i64, i64) {
    let rows = psql(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=pgbouncer"),
        ADMIN_PASSWORD,
        "SHOW POOLS",
    )
    .await
    .expect("SHOW POOLS");
    let line = rows
        .lines()
        .find(|l| l.starts_with("appdb|app|"))
        .unwrap_or_else(|| panic!("no appdb/app pool in:\n{rows}"));
    let cols: Vec<&str> = line.split('|').collect();
    let n = |i: usize| cols[i].parse::<i64>().expect("a count");
    // database, user, cl_active, cl_waiting, cl_active_cancel_req, cl_waiting_cancel_req,
    // sv_active, sv_active_cancel, sv_being_canceled, sv_idle, ...
    (n(2), n(3), n(6), n(9))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_prepared_clients_on_two_threads_share_twenty_servers() {
    let server = common::postgres("starve").await;
    pgbench_database(&server).await;
    let p = pooler(&server.pg, TUTORIAL_TRANSACTION_MODE).await;
    let out = pgbench(p.port, &["-c", "50", "-M", "prepared"]);
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    // A stall would leave one transaction per server; 5 s of TPC-B do thousands.
    assert!(processed(&out) > 500, "{out}");
    let (cl_active, cl_waiting, sv_active, _) = pool_counts(p.port).await;
    assert_eq!((cl_active, cl_waiting, sv_active), (0, 0, 0));
}

/// One long-lived pooler, several workloads one after another, as a user's pooler sees
/// them: every run completes, and the pool is all idle again after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pooler_serves_workloads_one_after_another() {
    let server = common::postgres("starve-seq").await;
    pgbench_database(&server).await;
    let p = pooler(&server.pg, TUTORIAL_TRANSACTION_MODE).await;
    let workloads: &[&[&str]] = &[
        &["-c", "21", "-M", "prepared"],
        &["-c", "50", "-M", "prepared"],
        &["-c", "80", "-M", "extended", "-S"],
        &["-c", "80", "-M", "simple"],
        &["-c", "80", "-M", "prepared"],
        &["-c", "80", "-M", "prepared", "-S"],
        &["-c", "50", "-M", "prepared"],
    ];
    for args in workloads {
        let out = pgbench(p.port, args);
        assert!(
            out.contains("number of failed transactions: 0"),
            "{args:?}:\n{out}"
        );
        assert!(processed(&out) > 500, "{args:?}:\n{out}");
        let (cl_active, cl_waiting, sv_active, sv_idle) = pool_counts(p.port).await;
        assert_eq!(
            (cl_active, cl_waiting, sv_active),
            (0, 0, 0),
            "after {args:?}"
        );
        assert!(sv_idle <= 20, "after {args:?}: {sv_idle} idle servers");
    }
}

/// A prepare-only batch answered without a server still prepares what the client
/// asked for: executing it works on whichever server runs it, and a mistake in the
/// statement's text is reported when it is first used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_without_a_server_runs_and_reports_its_errors() {
    let server = common::postgres("starve-prep").await;
    let p = pooler(&server.pg, TUTORIAL_TRANSACTION_MODE).await;
    let c = common::connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("connect");
    // tokio-postgres prepares with Parse + Describe + Sync: that needs a server (the
    // Describe), so this is the usual path; psql's \parse is not in PostgreSQL 15.
    let stmt = c.prepare("SELECT $1::int + 1").await.expect("prepare");
    let row = c.query_one(&stmt, &[&41i32]).await.expect("execute");
    assert_eq!(row.get::<_, i32>(0), 42);
    drop(c);

    // libpq's PQprepare (Parse + Sync) through the pooler, by hand on the wire.
    let answers = raw_prepare_then_execute(p.port).await;
    assert_eq!(answers.prepared, vec![b'1', b'Z']);
    assert!(answers.executed.contains(&b'D'), "{:?}", answers.executed);
    assert!(answers.bad.contains(&b'E'), "{:?}", answers.bad);
}

struct RawAnswers {
    /// Message types answering Parse + Sync.
    prepared: Vec<u8>,
    /// ... answering Bind + Execute + Sync of that statement.
    executed: Vec<u8>,
    /// ... answering Parse + Sync of a bad statement, then its Bind + Execute + Sync.
    bad: Vec<u8>,
}

/// Log in over a raw socket (md5), then prepare and run statements as libpq does.
async fn raw_prepare_then_execute(port: u16) -> RawAnswers {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut startup = Vec::new();
    startup.extend_from_slice(&196608u32.to_be_bytes());
    for (k, v) in [("user", "app"), ("database", "appdb")] {
        startup.extend_from_slice(k.as_bytes());
        startup.push(0);
        startup.extend_from_slice(v.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    let mut packet = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend(startup);
    s.write_all(&packet).await.expect("startup");

    async fn read_msg(s: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
        let mut head = [0u8; 5];
        tokio::time::timeout(std::time::Duration::from_secs(10), s.read_exact(&mut head))
            .await
            .expect("an answer in time")
            .expect("read");
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.expect("read body");
        (head[0], body)
    }
    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }
    async fn until_ready(s: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut tags = Vec::new();
        for _ in 0..100 {
            let (tag, _) = read_msg(s).await;
            tags.push(tag);
            if tag == b'Z' {
                return tags;
            }
        }
        panic!("no ReadyForQuery: {tags:?}");
    }

    // Authentication: md5 with the salt the pooler sends.
    let (tag, body) = read_msg(&mut s).await;
    assert_eq!(tag, b'R');
    assert_eq!(&body[..4], &5u32.to_be_bytes(), "md5 asked for");
    let salt = [body[4], body[5], body[6], body[7]];
    let mut password =
        pgherd_protocol::auth::md5_client_response("app", APP_PASSWORD.as_bytes(), salt)
            .into_bytes();
    password.push(0);
    s.write_all(&msg(b'p', &password)).await.expect("password");
    until_ready(&mut s).await;

    let parse = |name: &str, sql: &str| {
        let mut b = Vec::new();
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend_from_slice(sql.as_bytes());
        b.push(0);
        b.extend_from_slice(&0u16.to_be_bytes());
        msg(b'P', &b)
    };
    let bind_execute_sync = |name: &str| {
        let mut bind = vec![0u8]; // unnamed portal
        bind.extend_from_slice(name.as_bytes());
        bind.push(0);
        bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // no formats, params, result formats
        let mut out = msg(b'B', &bind);
        out.extend(msg(b'E', &[0, 0, 0, 0, 0]));
        out.extend(msg(b'S', &[]));
        out
    };
    let sync = msg(b'S', &[]);

    let mut batch = parse("s1", "SELECT 42");
    batch.extend_from_slice(&sync);
    s.write_all(&batch).await.expect("prepare");
    let prepared = until_ready(&mut s).await;
    s.write_all(&bind_execute_sync("s1"))
        .await
        .expect("execute");
    let executed = until_ready(&mut s).await;

    let mut batch = parse("bad", "SELEC 1");
    batch.extend_from_slice(&sync);
    s.write_all(&batch).await.expect("prepare bad");
    let mut bad = until_ready(&mut s).await;
    s.write_all(&bind_execute_sync("bad"))
        .await
        .expect("execute bad");
    bad.extend(until_ready(&mut s).await);
    RawAnswers {
        prepared,
        executed,
        bad,
    }
}
