//! Real PostgreSQL (15 on this machine) on free loopback ports, in temp dirs removed
//! (servers included) even when a test fails.

use pgherd_postgres::{
    default_parameters, run_as, slot_name, Binaries, ConnInfo, Credentials, DataDirState, Instance,
    InstanceConfig, PgError, StandbyConfig, StopMode,
};
use pgherd_testkit::pg::{pg_bin_dir, processes_in_dir, PgTempDir};
use pgherd_testkit::{free_port, init_tracing, wait_until};
use std::time::Duration;

const SUPERUSER_PW: &str = "su'per:sec\\ret";
const REPLICATION_PW: &str = "re:pl pw";
const T: Duration = Duration::from_secs(30);

/// Tests that run two servers take turns, so that at most three run at once.
static TWO_SERVERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn instance(dir: &PgTempDir, name: &str) -> Instance {
    instance_with_hba(
        dir,
        name,
        Some(vec![
            "local all all trust".into(),
            "host all all 127.0.0.1/32 scram-sha-256".into(),
            "host replication replicator 127.0.0.1/32 scram-sha-256".into(),
        ]),
    )
}

/// [`instance`] with these pg_hba.conf lines (`None`: pgherd's defaults).
fn instance_with_hba(dir: &PgTempDir, name: &str, pg_hba: Option<Vec<String>>) -> Instance {
    let bin = Binaries::find(Some(&pg_bin_dir())).expect("PostgreSQL binaries");
    let mut parameters = default_parameters();
    parameters.insert(
        "unix_socket_directories".into(),
        dir.path().display().to_string(),
    );
    parameters.insert("fsync".into(), "off".into());
    parameters.insert("shared_buffers".into(), "16MB".into());
    parameters.insert("max_connections".into(), "20".into());
    // Patroni-era parameter: must come out as wal_keep_size.
    parameters.insert("wal_keep_segments".into(), "8".into());
    Instance::new(InstanceConfig {
        name: name.into(),
        data_dir: dir.join(name),
        bin,
        os_user: run_as(None).expect("OS user for PostgreSQL"),
        listen_addresses: "127.0.0.1".into(),
        port: free_port(),
        connect_host: "127.0.0.1".into(),
        superuser: Credentials {
            username: "postgres".into(),
            password: Some(SUPERUSER_PW.into()),
        },
        replication: Credentials {
            username: "replicator".into(),
            password: Some(REPLICATION_PW.into()),
        },
        parameters,
        pg_hba,
        pgpass: dir.join(&format!("{name}.pgpass")),
        log_file: dir.join(&format!("{name}.log")),
    })
}

fn replication_conn(of: &Instance) -> ConnInfo {
    let c = of.config();
    ConnInfo {
        host: c.connect_host.clone(),
        port: c.port,
        user: c.replication.username.clone(),
        password: c.replication.password.clone(),
        dbname: "postgres".into(),
        application_name: None,
    }
}

fn superuser_conn(of: &Instance) -> ConnInfo {
    let c = of.config();
    ConnInfo {
        host: c.connect_host.clone(),
        port: c.port,
        user: c.superuser.username.clone(),
        password: c.superuser.password.clone(),
        dbname: "postgres".into(),
        application_name: None,
    }
}

/// initdb, config, start, roles: a primary on timeline 1.
async fn bootstrap_primary(pg: &Instance) -> tokio_postgres::Client {
    assert_eq!(pg.data_dir_state().unwrap(), DataDirState::Missing);
    pg.initdb(&["--encoding=UTF8".into(), "no-sync".into()])
        .await
        .unwrap();
    assert_eq!(pg.data_dir_state().unwrap(), DataDirState::Initialized);
    pg.write_config(None).await.unwrap();
    pg.start(T).await.unwrap();
    let client = pg.connect().await.unwrap();
    let c = pg.config();
    Instance::create_roles(&client, &c.superuser, &c.replication, None)
        .await
        .unwrap();
    let state = Instance::query_state(&client).await.unwrap();
    assert!(!state.in_recovery, "{state:?}");
    assert_eq!(state.timeline, 1);
    assert!(state.wal_lsn > 0);
    client
}

/// Clone `standby` from `primary` and start it streaming through its slot.
async fn start_standby(
    primary: &Instance,
    primary_client: &tokio_postgres::Client,
    standby: &Instance,
) {
    let slot = slot_name(&standby.config().name);
    Instance::ensure_slots(primary_client, std::slice::from_ref(&slot))
        .await
        .unwrap();
    standby
        .basebackup(&replication_conn(primary), Duration::from_secs(60))
        .await
        .unwrap();
    follow(standby, primary).await;
}

async fn follow(standby: &Instance, primary: &Instance) {
    standby
        .write_config(Some(&StandbyConfig {
            primary: Some(replication_conn(primary)),
            slot: Some(slot_name(&standby.config().name)),
        }))
        .await
        .unwrap();
    // Returns once the postmaster is up, consistent or not.
    standby.start_standby(T).await.unwrap();
    assert!(standby.postmaster_status().is_some_and(|s| s.is_up()));
}

async fn count(client: &tokio_postgres::Client, table: &str) -> Option<i64> {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .ok()
        .map(|r| r.get(0))
}

/// Wait until `pg` accepts connections and runs as a standby on `timeline` with
/// `table` holding `rows` rows.
async fn wait_standby(
    pg: &Instance,
    timeline: u32,
    table: &str,
    rows: i64,
) -> tokio_postgres::Client {
    wait_until(
        &format!(
            "{} streaming on timeline {timeline} with {rows} rows in {table}",
            pg.config().name
        ),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let client = pg.connect().await.ok()?;
            let st = Instance::query_state(&client).await.ok()?;
            (st.in_recovery && st.timeline == timeline && count(&client, table).await == Some(rows))
                .then_some(client)
        },
    )
    .await
}

/// The whole failover story; `kill_old_primary` picks how the old primary goes down.
async fn failover_and_rewind(kill_old_primary: bool) {
    init_tracing();
    let _turn = TWO_SERVERS.lock().await;
    let dir = PgTempDir::with_prefix("failover").unwrap();
    let a = instance(&dir, "a");
    let b = instance(&dir, "b");

    let ca = bootstrap_primary(&a).await;
    ca.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    // A second Instance value for the same data dir adopts the running server.
    let adopted = Instance::new(a.config().clone());
    assert!(adopted.postmaster_pid().is_some());
    assert_eq!(adopted.postmaster_pid(), a.postmaster_pid());
    assert_eq!(
        a.controldata().await.unwrap().cluster_state,
        "in production"
    );

    // The config file carries the translated parameters.
    let conf = std::fs::read_to_string(a.data_dir().join("postgresql.conf")).unwrap();
    assert!(conf.contains("wal_keep_size = '128MB'"), "{conf}");
    assert!(!conf.contains("wal_keep_segments"), "{conf}");
    assert!(conf.contains("include 'postgresql.base.conf'"), "{conf}");
    assert!(a.data_dir().join("postgresql.base.conf").is_file());
    {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(&a.config().pgpass).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600);
        if let Some(u) = &a.config().os_user {
            assert_eq!(md.uid(), u.uid);
        }
        let pgpass = std::fs::read_to_string(&a.config().pgpass).unwrap();
        assert!(
            pgpass.contains(r"*:*:*:postgres:su'per\:sec\\ret"),
            "{pgpass}"
        );
    }

    // Clone B, stream through slot "b".
    start_standby(&a, &ca, &b).await;
    let cb = wait_standby(&b, 1, "t", 1).await;
    ca.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    wait_standby(&b, 1, "t", 2).await;
    let pa = Instance::query_state(&ca).await.unwrap();
    let row = pa
        .replication
        .iter()
        .find(|r| r.application_name == "b")
        .unwrap_or_else(|| panic!("b streams from a: {pa:?}"));
    assert_eq!(row.state, "streaming");
    let slot_active: bool = ca
        .query_one(
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'b'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(slot_active);
    let conninfo = std::fs::read_to_string(b.data_dir().join("postgresql.conf")).unwrap();
    assert!(
        !conninfo.contains(REPLICATION_PW),
        "password leaked into postgresql.conf"
    );
    assert!(b.data_dir().join("standby.signal").exists());
    drop(cb);

    // Promote B: timeline 2.
    b.promote(T).await.unwrap();
    b.write_config(None).await.unwrap();
    let cb = b.connect().await.unwrap();
    let pb = Instance::query_state(&cb).await.unwrap();
    assert!(!pb.in_recovery, "{pb:?}");
    assert_eq!(pb.timeline, 2);
    cb.batch_execute("INSERT INTO t VALUES (3)").await.unwrap();

    // A diverges (a write B never sees), then goes down.
    ca.batch_execute("INSERT INTO t SELECT generate_series(100, 1000)")
        .await
        .unwrap();
    drop(ca);
    if kill_old_primary {
        let pid = a.postmaster_pid().unwrap();
        pgherd_testkit::pg::signal(pid, nix::sys::signal::Signal::SIGKILL);
        // The postmaster may stay an unreaped zombie for a while (pid 1 here reaps
        // orphans lazily): is_running() and rewind() cope with that themselves.
        wait_until(
            "the killed primary's processes to exit",
            Duration::from_secs(15),
            Duration::from_millis(100),
            || async { processes_in_dir(a.data_dir()).is_empty().then_some(()) },
        )
        .await;
        assert!(!a.is_running());
        assert_eq!(
            a.controldata().await.unwrap().cluster_state,
            "in production"
        );
    } else {
        a.stop(StopMode::Fast, T).await.unwrap();
        assert!(a.controldata().await.unwrap().was_primary());
    }
    // Stopping a stopped server is fine.
    a.stop(StopMode::Fast, T).await.unwrap();

    // Rewind A from B and follow B on timeline 2.
    a.rewind(&superuser_conn(&b), Duration::from_secs(60))
        .await
        .unwrap();
    let conf = std::fs::read_to_string(a.data_dir().join("postgresql.conf")).unwrap();
    assert!(
        conf.contains(&format!("port = '{}'", a.config().port)),
        "our config survives pg_rewind: {conf}"
    );
    // A starts before B has a slot for it (as when its member key expired while it
    // was down): A's start must not wait for streaming, which needs that slot.
    follow(&a, &b).await;
    Instance::ensure_slots(&cb, &[slot_name("a")])
        .await
        .unwrap();
    let ca = wait_standby(&a, 2, "t", 3).await;
    let sa = Instance::query_state(&ca).await.unwrap();
    assert!(
        sa.receive_lsn.is_some() && sa.replay_lsn.is_some(),
        "{sa:?}"
    );

    a.stop(StopMode::Fast, T).await.unwrap();
    b.stop(StopMode::Fast, T).await.unwrap();
    assert!(!a.is_running() && !b.is_running());
}

#[tokio::test]
async fn standby_clones_streams_is_promoted_and_old_primary_rewinds_after_fast_stop() {
    failover_and_rewind(false).await;
}

#[tokio::test]
async fn old_primary_killed_with_sigkill_rewinds_and_follows_the_new_primary() {
    failover_and_rewind(true).await;
}

#[tokio::test]
async fn start_on_a_port_in_use_names_the_port_then_lifecycle_is_idempotent() {
    init_tracing();
    let dir = PgTempDir::with_prefix("port").unwrap();
    let pg = instance(&dir, "p");
    pg.initdb(&[]).await.unwrap();
    pg.write_config(None).await.unwrap();

    let port = pg.config().port;
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let err = pg.start(T).await.unwrap_err();
    assert!(matches!(err, PgError::PortInUse { .. }), "{err:?}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    assert!(!pg.is_running());
    drop(squatter);

    pg.start(T).await.unwrap();
    pg.start(T).await.unwrap(); // already running: adopted, no error
    pg.reload().await.unwrap();
    pg.promote(T).await.unwrap(); // already a primary
    pg.restart(StopMode::Fast, T).await.unwrap();
    let client = pg.connect().await.unwrap();
    assert!(!Instance::query_state(&client).await.unwrap().in_recovery);
    let err = pg.remove_data_dir().await.unwrap_err();
    assert!(matches!(err, PgError::Running { .. }), "{err:?}");
    pg.stop(StopMode::Immediate, T).await.unwrap();
    pg.stop(StopMode::Fast, T).await.unwrap();
    assert_eq!(
        pg.controldata().await.unwrap().cluster_state,
        "in production"
    );
    pg.remove_data_dir().await.unwrap();
    assert_eq!(pg.data_dir_state().unwrap(), DataDirState::Missing);
}

#[tokio::test]
async fn failed_basebackup_removes_the_partial_data_dir_and_hides_the_password() {
    init_tracing();
    let dir = PgTempDir::with_prefix("clonefail").unwrap();
    let pg = instance(&dir, "c");
    let nobody = ConnInfo {
        host: "127.0.0.1".into(),
        port: free_port(),
        user: "replicator".into(),
        password: Some(REPLICATION_PW.into()),
        dbname: "postgres".into(),
        application_name: None,
    };
    let err = pg.basebackup(&nobody, T).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("pg_basebackup"), "{msg}");
    assert!(!msg.contains(REPLICATION_PW), "{msg}");
    assert_eq!(pg.data_dir_state().unwrap(), DataDirState::Missing);
}

#[test]
fn binaries_in_a_missing_directory_name_the_path() {
    let err = Binaries::find(Some(std::path::Path::new("/nonexistent"))).unwrap_err();
    assert!(err.to_string().contains("/nonexistent"), "{err}");
    let found = Binaries::find(None).unwrap();
    assert!(found.major_version >= 13, "{found:?}");
}

#[tokio::test]
async fn data_dir_owned_by_another_user_is_refused() {
    let dir = PgTempDir::with_prefix("owner").unwrap();
    let pg = instance(&dir, "o");
    if pg.config().os_user.is_none() {
        eprintln!("not root: cannot make a directory owned by someone else; skipped");
        return;
    }
    // Root owns it; PostgreSQL would run as the postgres user.
    std::fs::create_dir(pg.data_dir()).unwrap();
    let err = pg.data_dir_state().unwrap_err();
    assert!(matches!(err, PgError::DataDirOwner { .. }), "{err:?}");
    assert!(err.to_string().contains("uid 0"), "{err}");
    let err = pg.initdb(&[]).await.unwrap_err();
    assert!(matches!(err, PgError::DataDirOwner { .. }), "{err:?}");

    // A file where the data dir should be.
    let file = dir.join("file");
    std::fs::write(&file, b"x").unwrap();
    let mut cfg = pg.config().clone();
    cfg.data_dir = file;
    let err = Instance::new(cfg).data_dir_state().unwrap_err();
    assert!(
        matches!(err, PgError::DataDirNotDirectory { .. }),
        "{err:?}"
    );
}

/// A replication connection (`IDENTIFY_SYSTEM`) as `user` with `password` through psql.
fn replication_login(pg: &Instance, user: &str, password: &str) -> Result<(), String> {
    let out = std::process::Command::new(pg_bin_dir().join("psql"))
        .arg(format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres replication=true",
            pg.config().port
        ))
        .args(["-X", "-A", "-t", "-c", "IDENTIFY_SYSTEM"])
        .env("PGPASSWORD", password)
        .output()
        .map_err(|e| e.to_string())?;
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

#[tokio::test]
async fn without_pg_hba_the_defaults_are_scram_replication_for_its_role_and_private_files() {
    use std::os::unix::fs::PermissionsExt;
    init_tracing();
    let dir = PgTempDir::new().unwrap();
    let pg = instance_with_hba(&dir, "secure", None);
    let client = bootstrap_primary(&pg).await;

    // initdb's "trust" lines are gone: SCRAM for everyone, replication for one role.
    let hba = std::fs::read_to_string(dir.join("secure").join("pg_hba.conf")).unwrap();
    let rules: Vec<&str> = hba
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(!rules.is_empty(), "{hba}");
    for rule in &rules {
        assert!(rule.ends_with("scram-sha-256"), "{rule}");
        let words: Vec<&str> = rule.split_whitespace().collect();
        if words[1] == "replication" {
            assert_eq!(words[2], "replicator", "{rule}");
        }
    }
    assert!(!hba.contains("trust") && !hba.contains("md5"), "{hba}");
    let encryption = client
        .query_one("SHOW password_encryption", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    assert_eq!(encryption, "scram-sha-256");
    let verifiers: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_authid WHERE rolname IN ('postgres', 'replicator') \
             AND rolpassword LIKE 'SCRAM-SHA-256$%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(verifiers, 2, "both passwords are stored as SCRAM verifiers");

    // Replication: the replication role with its password only.
    replication_login(&pg, "replicator", REPLICATION_PW).expect("the replication role");
    let superuser = replication_login(&pg, "postgres", SUPERUSER_PW).unwrap_err();
    assert!(superuser.contains("pg_hba.conf"), "{superuser}");
    let wrong = replication_login(&pg, "replicator", "wrong").unwrap_err();
    assert!(wrong.contains("password authentication failed"), "{wrong}");

    // The data directory and the password file are the OS user's alone.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("secure")), 0o700);
    assert_eq!(mode(&dir.join("secure.pgpass")), 0o600);
    assert_eq!(mode(&dir.join("secure").join("pg_hba.conf")), 0o600);
    drop(client);
    pg.stop(StopMode::Fast, T).await.unwrap();
}
