//! Shared setup for the pooler's integration tests: a throwaway PostgreSQL 15 and an
//! in-process pooler in front of it, configured by a real pgbouncer.ini.
#![allow(dead_code)] // each test file uses its own part

use pgherd_pooler::listener;
use pgherd_pooler::runtime::Runtime;
use pgherd_pooler::service;
use pgherd_postgres::{
    default_parameters, run_as, Binaries, Credentials, Instance, InstanceConfig,
};
use pgherd_testkit::free_port;
use pgherd_testkit::pg::{give_to_postgres, pg_bin_dir, PgTempDir};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const APP_PASSWORD: &str = "app pass";
pub const ADMIN_PASSWORD: &str = "admin pass";
pub const STATS_PASSWORD: &str = "stats pass";
pub const NOBODY_PASSWORD: &str = "nobody pass";

pub struct Server {
    pub pg: Instance,
    _dir: PgTempDir,
}

/// A fresh PostgreSQL with an `app` login role (password [`APP_PASSWORD`]).
pub async fn postgres(prefix: &str) -> Server {
    pgherd_testkit::init_tracing();
    let dir = PgTempDir::with_prefix(prefix).expect("temp dir");
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

/// An in-process pooler; stops accepting when dropped.
pub struct Pooler {
    pub port: u16,
    pub rt: Arc<Runtime>,
    /// The listener task: ends on stop or on the console's SHUTDOWN.
    pub serve: JoinHandle<()>,
    pub ini: PathBuf,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Drop for Pooler {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The pgbouncer.ini the pooler reads: database `appdb` in front of `pg`, users `app`,
/// `postgres` (admin_users), `stats` (stats_users) and `nobody` in userlist.txt, then
/// `settings`.
pub fn ini_text(pg: &Instance, port: u16, userlist: &std::path::Path, settings: &str) -> String {
    format!(
        "[databases]\nappdb = host=127.0.0.1 port={} dbname=postgres\n\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
         auth_file = {}\nadmin_users = postgres\nstats_users = stats\n{settings}\n",
        pg.config().port,
        userlist.display()
    )
}

/// Start a pooler in-process with `settings` added to a pgbouncer.ini in front of `pg`,
/// loaded the way `pgherd pooler --ini` loads it.
pub async fn pooler(pg: &Instance, settings: &str) -> Pooler {
    let userlist = format!(
        "\"app\" \"{APP_PASSWORD}\"\n\"postgres\" \"{ADMIN_PASSWORD}\"\n\
         \"stats\" \"{STATS_PASSWORD}\"\n\"nobody\" \"{NOBODY_PASSWORD}\"\n"
    );
    pooler_with_userlist(pg, settings, &userlist).await
}

/// [`pooler`] with the given userlist.txt contents.
pub async fn pooler_with_userlist(pg: &Instance, settings: &str, userlist_text: &str) -> Pooler {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let userlist = dir.path().join("userlist.txt");
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(&ini, ini_text(pg, port, &userlist, settings)).expect("ini");
    std::fs::write(&userlist, userlist_text).expect("userlist");
    let files = service::load(&ini).expect("config loads");
    let rt = Runtime::new(files.config, files.userlist, files.hba, files.tls);
    rt.set_config_path(&ini);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let (stop, rx) = watch::channel(false);
    let serve = tokio::spawn(listener::serve(
        pgherd_pooler::net::Listener::Tcp(listener),
        rt.clone(),
        rx,
    ));
    Pooler {
        port,
        rt,
        serve,
        ini,
        stop,
        _dir: dir,
    }
}

/// A tokio-postgres client through the pooler.
pub async fn connect(
    port: u16,
    user: &str,
    password: &str,
    dbname: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={port} user={user} password='{password}' dbname={dbname} connect_timeout=5"
        ),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    Ok(c)
}

/// Server connections PostgreSQL has for `app`.
pub async fn server_connections(pg: &Instance) -> i64 {
    let c = pg.connect().await.expect("connect");
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
        &[],
    )
    .await
    .expect("count")
    .get(0)
}

pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// psql `-c sql` (unaligned, tuples only, `|` between columns) with a libpq connection
/// string and `password`; Ok(stdout) or Err(stderr).
pub async fn psql(conninfo: &str, password: &str, sql: &str) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new("psql");
    cmd.args(["-X", "-A", "-t", "-F", "|", "-c", sql, conninfo])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("psql finishes in time")
        .expect("psql runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
