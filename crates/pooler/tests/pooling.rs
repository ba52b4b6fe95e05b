//! Clients through the pooler against a real PostgreSQL 15: session and transaction
//! pooling, authentication against userlist.txt, limits and timeouts, cancel.

use pgherd_pooler::config::{PoolerConfig, Userlist};
use pgherd_pooler::runtime::{self, Runtime};
use pgherd_postgres::{
    default_parameters, run_as, Binaries, Credentials, Instance, InstanceConfig,
};
use pgherd_testkit::free_port;
use pgherd_testkit::pg::{give_to_postgres, pg_bin_dir, PgTempDir};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Mutex};

const APP_PASSWORD: &str = "app pass";

/// Tests in this file share the machine: one PostgreSQL at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

struct Server {
    pg: Instance,
    _dir: PgTempDir,
}

async fn postgres() -> Server {
    pgherd_testkit::init_tracing();
    let dir = PgTempDir::with_prefix("pooling").expect("temp dir");
    give_to_postgres(dir.path()).expect("chown");
    let mut parameters = default_parameters();
    parameters.insert(
        "unix_socket_directories".into(),
        dir.path().display().to_string(),
    );
    parameters.insert("fsync".into(), "off".into());
    parameters.insert("max_connections".into(), "40".into());
    let pg = Instance::new(InstanceConfig {
        name: "pg".into(),
        data_dir: dir.join("data"),
        bin: Binaries::find(Some(&pg_bin_dir())).expect("binaries"),
        os_user: run_as(None).expect("os user"),
        listen_addresses: "127.0.0.1".into(),
        port: free_port(),
        connect_host: "127.0.0.1".into(),
        superuser: Credentials {
            username: "postgres".into(),
            password: Some("su".into()),
        },
        replication: Credentials {
            username: "replicator".into(),
            password: Some("rep".into()),
        },
        parameters,
        pg_hba: Some(vec![
            "local all all trust".into(),
            "host all all 127.0.0.1/32 scram-sha-256".into(),
        ]),
        pgpass: dir.join("pgpass"),
        log_file: dir.join("pg.log"),
    });
    pg.initdb(&["--encoding=UTF8".into()])
        .await
        .expect("initdb");
    pg.write_config(None).await.expect("config");
    pg.start(Duration::from_secs(60)).await.expect("start");
    let c = pg.connect().await.expect("connect");
    let cfg = pg.config();
    Instance::create_roles(&c, &cfg.superuser, &cfg.replication, None)
        .await
        .expect("roles");
    c.batch_execute(&format!(
        "CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'; GRANT ALL ON SCHEMA public TO app"
    ))
    .await
    .expect("create app role");
    Server { pg, _dir: dir }
}

struct Pooler {
    port: u16,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Drop for Pooler {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Start a pooler in-process with `settings` added to a pgbouncer.ini in front of `pg`.
async fn pooler(pg: &Instance, settings: &str) -> Pooler {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let ini = format!(
        "[databases]\nappdb = host=127.0.0.1 port={} dbname=postgres\n\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
         auth_file = {}\nadmin_users = postgres\n{settings}\n",
        pg.config().port,
        dir.path().join("userlist.txt").display()
    );
    std::fs::write(dir.path().join("pgbouncer.ini"), ini).expect("ini");
    std::fs::write(
        dir.path().join("userlist.txt"),
        format!("\"app\" \"{APP_PASSWORD}\"\n"),
    )
    .expect("userlist");
    let loaded = PoolerConfig::load(&dir.path().join("pgbouncer.ini")).expect("config loads");
    let userlist = Userlist::load(&dir.path().join("userlist.txt")).expect("userlist loads");
    let rt = Runtime::new(loaded.config, userlist, None);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let (stop, rx) = watch::channel(false);
    tokio::spawn(runtime::serve(listener, rt, rx));
    Pooler {
        port,
        stop,
        _dir: dir,
    }
}

async fn client(
    port: u16,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=app password='{password}' dbname=appdb connect_timeout=5"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    Ok(c)
}

async fn server_connections(pg: &Instance) -> i64 {
    let c = pg.connect().await.expect("connect");
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
        &[],
    )
    .await
    .expect("count")
    .get(0)
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| e.to_string())
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
