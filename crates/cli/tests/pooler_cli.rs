//! `pgherd pooler --ini` with the tutorial's pgbouncer.ini and userlist.txt (§5.1;
//! addresses and paths moved to loopback and a temp dir) in front of real PostgreSQL 15:
//! psql and tokio-postgres connect as if it were PgBouncer; SIGHUP reloads without
//! dropping clients; SIGINT shuts down.

mod common;

use pgherd_postgres::{
    default_parameters, run_as, Binaries, Credentials, Instance, InstanceConfig,
};
use pgherd_testkit::free_port;
use pgherd_testkit::pg::{give_to_postgres, pg_bin_dir, PgTempDir};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TUTORIAL_INI: &str = include_str!("../../pooler/tests/fixtures/tutorial/pgbouncer.ini");
const TUTORIAL_USERLIST: &str = include_str!("../../pooler/tests/fixtures/tutorial/userlist.txt");

struct Pooler(Child);

impl Drop for Pooler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).expect("signal");
}

fn psql(port: u16, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user=postgres password=md5password dbname=mydb"
        ))
        .args(["-X", "-A", "-t", "-c", sql])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_pgbouncer_ini_serves_psql_and_tokio_postgres() {
    let _serial = common::SERIAL.lock().await;
    pgherd_testkit::init_tracing();
    let dir = PgTempDir::with_prefix("pooler-cli").expect("temp dir");
    give_to_postgres(dir.path()).expect("chown");
    let mut parameters = default_parameters();
    parameters.insert(
        "unix_socket_directories".into(),
        dir.path().display().to_string(),
    );
    parameters.insert("fsync".into(), "off".into());
    // The tutorial's userlist holds the plain password "md5password" for postgres.
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
            password: Some("md5password".into()),
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
    pg.initdb(&[]).await.expect("initdb");
    pg.write_config(None).await.expect("config");
    pg.start(Duration::from_secs(60)).await.expect("start");
    let c = pg.connect().await.expect("connect");
    let cfg = pg.config();
    Instance::create_roles(&c, &cfg.superuser, &cfg.replication, None)
        .await
        .expect("roles");
    c.batch_execute("CREATE DATABASE mydb")
        .await
        .expect("create mydb");

    let port = free_port();
    let d = dir.path().display();
    let ini = TUTORIAL_INI
        .replace(
            "host=192.168.1.1 port=5432",
            &format!("host=127.0.0.1 port={}", cfg.port),
        )
        .replace("listen_addr = 0.0.0.0", "listen_addr = 127.0.0.1")
        .replace("listen_port = 6432", &format!("listen_port = {port}"))
        .replace("/etc/pgbouncer/userlist.txt", &format!("{d}/userlist.txt"))
        .replace(
            "/var/log/pgbouncer/pgbouncer.log",
            &format!("{d}/pgbouncer.log"),
        )
        .replace(
            "/var/run/pgbouncer/pgbouncer.pid",
            &format!("{d}/pgbouncer.pid"),
        );
    std::fs::write(dir.join("pgbouncer.ini"), ini).expect("ini");
    std::fs::write(dir.join("userlist.txt"), TUTORIAL_USERLIST).expect("userlist");
    let log = std::fs::File::create(dir.join("pooler.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_pgherd"))
        .arg("pooler")
        .arg("--ini")
        .arg(dir.join("pgbouncer.ini"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start pgherd pooler");
    let pooler = Pooler(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "pooler did not listen: {}",
            std::fs::read_to_string(dir.join("pooler.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(
        psql(port, "SELECT current_database()").as_deref(),
        Ok("mydb")
    );
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres password=md5password dbname=mydb"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("tokio-postgres through the pooler");
    tokio::spawn(conn);
    // Session mode: named prepared statements work as on a direct connection.
    let stmt = client
        .prepare("SELECT $1::text || '!'")
        .await
        .expect("prepare");
    let row = client.query_one(&stmt, &[&"hello"]).await.expect("execute");
    assert_eq!(row.get::<_, String>(0), "hello!");
    assert!(psql(port, "SELECT 1").is_ok());
    let wrong = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user=postgres password=nope dbname=mydb"
        ))
        .args(["-X", "-c", "SELECT 1"])
        .output()
        .expect("psql");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"));

    // SIGHUP re-reads the files; the connected client keeps working.
    signal(&pooler.0, nix::sys::signal::Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let row = client
        .query_one(&stmt, &[&"again"])
        .await
        .expect("still connected after SIGHUP");
    assert_eq!(row.get::<_, String>(0), "again!");
    drop(client);

    // SIGINT: shut down once no transaction runs.
    let mut pooler = pooler;
    signal(&pooler.0, nix::sys::signal::Signal::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = pooler.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "pooler did not exit after SIGINT"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit status {status}");
}
