//! Clients through the pooler against a real PostgreSQL 15: session and transaction
//! pooling, authentication against userlist.txt, limits and timeouts, cancel.

mod common;

use common::{connect, pooler, server_connections, sqlstate, APP_PASSWORD};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Tests in this file share the machine: one PostgreSQL at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

async fn postgres() -> common::Server {
    common::postgres("pooling").await
}

async fn client(
    port: u16,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect(port, "app", password, "appdb").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_serves_50_clients_over_5_server_connections() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    let p = pooler(
        &server.pg,
        "auth_type = md5\npool_mode = transaction\ndefault_pool_size = 5\nmax_client_conn = 100",
    )
    .await;
    let setup = client(p.port, APP_PASSWORD)
        .await
        .expect("login through the pooler");
    setup
        .batch_execute("CREATE TABLE counter (n int); INSERT INTO counter VALUES (0)")
        .await
        .expect("setup");
    let mut tasks = Vec::new();
    for i in 0..50 {
        let port = p.port;
        tasks.push(tokio::spawn(async move {
            let c = client(port, APP_PASSWORD).await.expect("login");
            for _ in 0..10 {
                c.batch_execute("BEGIN; UPDATE counter SET n = n + 1; COMMIT")
                    .await
                    .expect("transaction");
                // The extended protocol too, with the unnamed statement (named prepared
                // statements across transactions need the pooler's statement tracking).
                let row = c
                    .query_typed(
                        "SELECT $1::int + 1",
                        &[(&i, tokio_postgres::types::Type::INT4)],
                    )
                    .await
                    .expect("query");
                let row = &row[0];
                assert_eq!(row.get::<_, i32>(0), i + 1);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let n: i32 = setup
        .query_one("SELECT n FROM counter", &[])
        .await
        .expect("read")
        .get(0);
    assert_eq!(n, 500, "every transaction committed once");
    assert!(
        server_connections(&server.pg).await <= 5,
        "the pool never exceeds default_pool_size"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_resets_session_state_between_clients() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    let p = pooler(
        &server.pg,
        "auth_type = scram-sha-256\npool_mode = session\ndefault_pool_size = 1",
    )
    .await;
    let a = client(p.port, APP_PASSWORD).await.expect("login");
    a.batch_execute("SET statement_timeout = 1234; CREATE TEMP TABLE mine (x int)")
        .await
        .expect("set");
    let pid_a: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = client(p.port, APP_PASSWORD).await.expect("login");
    let pid_b: i32 = b
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    assert_eq!(
        pid_a, pid_b,
        "pool_size 1: the same server connection was reused"
    );
    let timeout: String = b
        .query_one("SHOW statement_timeout", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(
        timeout, "0",
        "server_reset_query (DISCARD ALL) ran between the clients"
    );
    assert!(
        b.batch_execute("SELECT * FROM mine").await.is_err(),
        "temp table gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_gets_postgres_own_error() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    for auth in ["md5", "scram-sha-256", "plain"] {
        let p = pooler(&server.pg, &format!("auth_type = {auth}")).await;
        let e = client(p.port, "not it").await.expect_err("login must fail");
        assert_eq!(sqlstate(&e), "28P01", "{auth}: {e}");
        let e = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=nobody password=x dbname=appdb",
                p.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .map(|(client, _)| client)
        .expect_err("unknown user must fail");
        assert_eq!(
            sqlstate(&e),
            "28P01",
            "{auth}: an unknown user looks like a wrong password"
        );
        client(p.port, APP_PASSWORD)
            .await
            .expect("right password works");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_with_postgres_errors_instead_of_hanging() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    let p = pooler(
        &server.pg,
        "auth_type = md5\npool_mode = transaction\ndefault_pool_size = 1\nmax_client_conn = 2\nquery_wait_timeout = 1",
    )
    .await;
    let a = client(p.port, APP_PASSWORD).await.expect("first client");
    let b = client(p.port, APP_PASSWORD).await.expect("second client");
    let e = client(p.port, APP_PASSWORD)
        .await
        .expect_err("third client is over max_client_conn");
    assert_eq!(sqlstate(&e), "53300", "{e}");

    // `a` holds the only server inside a transaction; `b` waits query_wait_timeout.
    a.batch_execute("BEGIN; SELECT 1").await.expect("begin");
    let started = Instant::now();
    let e = b
        .batch_execute("SELECT 1")
        .await
        .expect_err("b must time out");
    let message = e.as_db_error().map(|d| d.message().to_string());
    assert_eq!(message.as_deref(), Some("query_wait_timeout"), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    a.batch_execute("COMMIT").await.expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_reaches_the_right_server_backend() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    let p = pooler(
        &server.pg,
        "auth_type = md5\npool_mode = transaction\ndefault_pool_size = 2",
    )
    .await;
    let c = client(p.port, APP_PASSWORD).await.expect("login");
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send cancel");
    let e = sleeper
        .await
        .expect("task")
        .expect_err("the sleep was cancelled");
    assert_eq!(sqlstate(&e), "57014", "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prepared_statements_work_across_transactions_in_transaction_mode() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    let p = pooler(
        &server.pg,
        "auth_type = md5\npool_mode = transaction\ndefault_pool_size = 5\nmax_client_conn = 100",
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..50i32 {
        let port = p.port;
        tasks.push(tokio::spawn(async move {
            let c = client(port, APP_PASSWORD).await.expect("login");
            // tokio-postgres prepares named statements (s0, s1, …) and binds them later,
            // each time possibly on another server connection.
            let add = c
                .prepare("SELECT $1::int + $2::int")
                .await
                .expect("prepare");
            for j in 0..10i32 {
                let row = c
                    .query_one(&add, &[&i, &j])
                    .await
                    .expect("bind a named statement");
                assert_eq!(row.get::<_, i32>(0), i + j);
                let row = c
                    .query_one(
                        "SELECT $1::text || '-' || $2::text",
                        &[&"a", &format!("{i}")],
                    )
                    .await
                    .expect("query() prepares on the fly");
                assert_eq!(row.get::<_, String>(0), format!("a-{i}"));
            }
            drop(add); // Close of a named statement is answered by the pooler.
            let again = c
                .prepare("SELECT $1::int * 2")
                .await
                .expect("prepare after close");
            assert_eq!(
                c.query_one(&again, &[&i])
                    .await
                    .expect("run")
                    .get::<_, i32>(0),
                i * 2
            );
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert!(server_connections(&server.pg).await <= 5);
    // A syntax error in a named statement is the server's error, and the session goes on.
    let c = client(p.port, APP_PASSWORD).await.expect("login");
    let e = c.prepare("SELEC 1").await.expect_err("syntax error");
    assert_eq!(sqlstate(&e), "42601");
    assert_eq!(
        c.query_one("SELECT 7", &[])
            .await
            .expect("after the error")
            .get::<_, i32>(0),
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_fails_clearly_and_deallocate_all_keeps_named_statements_working() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    let p = pooler(
        &server.pg,
        "auth_type = md5\npool_mode = transaction\ndefault_pool_size = 1",
    )
    .await;
    let c = client(p.port, APP_PASSWORD).await.expect("login");

    // PREPARE would live on one server and vanish for the next transaction: refused.
    let e = c
        .simple_query("/* hi */ PREPARE p AS SELECT 1")
        .await
        .expect_err("PREPARE is refused");
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("PREPARE is not supported"), "{message}");
    // Inside a transaction it fails that transaction, as any error would.
    c.batch_execute("BEGIN").await.expect("begin");
    c.simple_query("PREPARE p AS SELECT 1")
        .await
        .expect_err("refused");
    let e = c.simple_query("SELECT 1").await.expect_err("aborted");
    assert_eq!(sqlstate(&e), "25P02");
    c.batch_execute("ROLLBACK").await.expect("rollback");

    // DEALLOCATE ALL drops the pooler's statements on that server too: a named
    // statement prepared before it still runs after it.
    let add = c.prepare("SELECT $1::int + 1").await.expect("prepare");
    assert_eq!(
        c.query_one(&add, &[&1i32]).await.unwrap().get::<_, i32>(0),
        2
    );
    c.batch_execute("DEALLOCATE ALL")
        .await
        .expect("DEALLOCATE ALL");
    assert_eq!(
        c.query_one(&add, &[&2i32]).await.unwrap().get::<_, i32>(0),
        3
    );
    c.batch_execute("DISCARD ALL").await.expect("DISCARD ALL");
    assert_eq!(
        c.query_one(&add, &[&3i32]).await.unwrap().get::<_, i32>(0),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_and_idle_transaction_timeouts_close_the_client() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    let p = pooler(
        &server.pg,
        "auth_type = md5\npool_mode = transaction\ndefault_pool_size = 2\nquery_timeout = 1\nidle_transaction_timeout = 1",
    )
    .await;
    // query_timeout: a query running longer than 1 s ends the client's connection.
    let c = client(p.port, APP_PASSWORD).await.expect("login");
    let started = Instant::now();
    let e = c
        .batch_execute("SELECT pg_sleep(10)")
        .await
        .expect_err("query_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let message = e.as_db_error().map(|d| d.message().to_string());
    assert_eq!(message.as_deref(), Some("query_timeout"), "{e:?}");

    // idle_transaction_timeout: sitting inside a transaction for over 1 s.
    let c = client(p.port, APP_PASSWORD).await.expect("login");
    c.batch_execute("BEGIN").await.expect("begin");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        c.batch_execute("SELECT 1").await.is_err(),
        "the idle transaction was closed"
    );
    // Other clients are unaffected, and the pool is usable.
    let d = client(p.port, APP_PASSWORD).await.expect("login");
    assert_eq!(
        d.query_one("SELECT 1", &[])
            .await
            .expect("query")
            .get::<_, i32>(0),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_mode_runs_statements_and_refuses_transaction_blocks() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    let p = pooler(
        &server.pg,
        "auth_type = md5\npool_mode = statement\ndefault_pool_size = 1",
    )
    .await;
    let a = client(p.port, APP_PASSWORD).await.expect("login");
    let b = client(p.port, APP_PASSWORD).await.expect("login");
    // One server serves both clients statement by statement.
    for _ in 0..5 {
        assert_eq!(
            a.query_one("SELECT 1", &[])
                .await
                .expect("a")
                .get::<_, i32>(0),
            1
        );
        assert_eq!(
            b.query_one("SELECT 2", &[])
                .await
                .expect("b")
                .get::<_, i32>(0),
            2
        );
    }
    let e = a
        .batch_execute("BEGIN")
        .await
        .expect_err("a transaction block");
    let message = e.as_db_error().map(|d| d.message().to_string());
    assert_eq!(
        message.as_deref(),
        Some("transaction blocks not allowed in statement pool mode"),
        "{e:?}"
    );
    assert_eq!(
        b.query_one("SELECT 3", &[])
            .await
            .expect("b goes on")
            .get::<_, i32>(0),
        3
    );
}

/// CVE-2025-2291 and PgBouncer issue 423: with the default `auth_query`, a role whose
/// password has expired, or that lost LOGIN, no longer gets in through the pooler —
/// also while the pool still holds an idle server connection logged in as that role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_auth_query_refuses_expired_and_nologin_roles() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    let su = server.pg.connect().await.expect("connect");
    su.batch_execute(
        "CREATE ROLE lapsing LOGIN PASSWORD 'lapsing pass';
         CREATE ROLE barred LOGIN PASSWORD 'barred pass';",
    )
    .await
    .expect("roles");
    let p = common::pooler_with_userlist(
        &server.pg,
        "auth_type = scram-sha-256\npool_mode = transaction\nauth_user = postgres",
        "\"postgres\" \"su\"\n",
    )
    .await;
    // Both log in, and leave a server connection idle in their pools.
    for (role, password) in [("lapsing", "lapsing pass"), ("barred", "barred pass")] {
        let c = connect(p.port, role, password, "appdb")
            .await
            .unwrap_or_else(|e| panic!("{role} logs in: {e}"));
        c.query_one("SELECT 1", &[]).await.expect("query");
    }
    su.batch_execute(
        "ALTER ROLE lapsing VALID UNTIL '2000-01-01';
         ALTER ROLE barred NOLOGIN;",
    )
    .await
    .expect("expire and bar");
    for (role, password) in [("lapsing", "lapsing pass"), ("barred", "barred pass")] {
        let e = connect(p.port, role, password, "appdb")
            .await
            .expect_err(role);
        assert_eq!(sqlstate(&e), "28P01", "{role}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_finds_users_missing_from_auth_file() {
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    let su = server.pg.connect().await.expect("connect");
    // PgBouncer's documented setup: a SECURITY DEFINER lookup the auth_user may call.
    su.batch_execute(
        "CREATE ROLE authuser LOGIN PASSWORD 'auth pass';
         CREATE ROLE dyn LOGIN PASSWORD 'dyn pass';
         CREATE FUNCTION public.lookup(name text, OUT usename name, OUT passwd text)
           RETURNS record LANGUAGE sql SECURITY DEFINER
           AS $$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = name $$;
         REVOKE ALL ON FUNCTION public.lookup(text) FROM public;
         GRANT EXECUTE ON FUNCTION public.lookup(text) TO authuser;",
    )
    .await
    .expect("setup");
    let p = common::pooler_with_userlist(
        &server.pg,
        "auth_type = scram-sha-256\npool_mode = transaction\n\
         auth_user = authuser\nauth_query = SELECT usename, passwd FROM public.lookup($1)",
        "\"authuser\" \"auth pass\"\n",
    )
    .await;
    // `dyn` is not in userlist.txt: its SCRAM verifier comes from auth_query, and the
    // pooler logs into PostgreSQL with the keys the client just proved.
    let c = connect(p.port, "dyn", "dyn pass", "appdb")
        .await
        .expect("login via auth_query");
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(who, "dyn");
    let e = connect(p.port, "dyn", "wrong", "appdb")
        .await
        .expect_err("wrong password");
    assert_eq!(sqlstate(&e), "28P01");
    let e = connect(p.port, "ghost", "x", "appdb")
        .await
        .expect_err("unknown user");
    assert_eq!(sqlstate(&e), "28P01");
    // A name that tries to break out of the query is just a name.
    let e = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(p.port)
        .user("x' OR '1'='1")
        .password("x")
        .dbname("appdb")
        .connect(tokio_postgres::NoTls)
        .await
        .map(|(client, _)| client)
        .expect_err("injection");
    assert_eq!(sqlstate(&e), "28P01");
}

/// The authentication bypass fixed in PgBouncer 1.26.1: a client that answers the SCRAM
/// challenge with a second StartupMessage must be disconnected, never logged in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_startup_message_inside_a_scram_exchange_ends_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _serial = SERIAL.lock().await;
    let server = postgres().await;
    let p = pooler(
        &server.pg,
        "auth_type = scram-sha-256\npool_mode = transaction",
    )
    .await;
    let startup = |user: &str| {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in [("user", user), ("database", "appdb")] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        msg
    };
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", p.port))
        .await
        .expect("connect");
    s.write_all(&startup("app")).await.unwrap();
    // AuthenticationSASL: 'R', length, code 10.
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.expect("the SCRAM challenge");
    assert_eq!(head[0], b'R');
    assert_eq!(u32::from_be_bytes(head[5..9].try_into().unwrap()), 10);
    let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; len - 8];
    s.read_exact(&mut rest).await.unwrap();
    // Instead of SASLInitialResponse, a new StartupMessage (for a user with no password
    // problem of its own).
    s.write_all(&startup("postgres")).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the pooler kept the connection open");
    // An ErrorResponse, then the end; never AuthenticationOk ('R' with code 0).
    assert_eq!(answer.first(), Some(&b'E'), "{answer:?}");
    let ok = answer
        .windows(9)
        .any(|w| w[0] == b'R' && w[1..5] == 8u32.to_be_bytes() && w[5..9] == [0, 0, 0, 0]);
    assert!(!ok, "logged in: {answer:?}");
    // The pooler serves others as before.
    client(p.port, APP_PASSWORD).await.expect("a normal login");
}
