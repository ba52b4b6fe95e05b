//! The pooler's server side against a real PostgreSQL 15: every login method, SCRAM
//! key pass-through, refusals and timeouts, pooler-run statements, forwarding and
//! cancel.
//!
//! One server for the whole file, started on first use. Roles are created in
//! single-user mode before it starts: `u_trust` (trust), `u_md5` (md5 hash, md5
//! method), `u_plain` (cleartext `password` method), `u_scram` (SCRAM verifier,
//! scram-sha-256 method). The postmaster gets SIGQUIT when this process exits
//! (parent-death signal), and the temp dir is removed at exit.

use pgherd_pooler::server::{
    send_cancel, FramedReader, LoginFailure, ServerConnection, ServerCredential, ServerError,
    ServerTarget, TransactionStatus,
};
use pgherd_protocol::auth::{ScramClient, ScramServer, ScramVerifier};
use pgherd_protocol::backend::ErrorResponse;
use pgherd_protocol::frontend::Query;
use pgherd_protocol::{FrameDecoder, Message};
use pgherd_testkit::free_port;
use pgherd_testkit::pg::{pg_available, pg_bin_dir, pg_owner, PgTempDir};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const MD5_PW: &str = "md5 pass-word";
const PLAIN_PW: &str = "clear+text pw";
const SCRAM_PW: &str = "sc:ram pässword";

/// The shared server.
struct Pg {
    port: u16,
    /// `pg_authid.rolpassword` of `u_scram`.
    scram_verifier: String,
    /// `pg_authid.rolpassword` of `u_md5`.
    md5_hash: String,
}

static PG: OnceLock<Option<Pg>> = OnceLock::new();
/// Dropped at exit: stops the postmaster and removes the directory.
static PG_DIR: Mutex<Option<PgTempDir>> = Mutex::new(None);

extern "C" fn remove_pg_dir() {
    if let Ok(mut dir) = PG_DIR.lock() {
        drop(dir.take());
    }
}

fn as_postgres(cmd: &mut Command) -> &mut Command {
    let (uid, gid) = pg_owner();
    cmd.uid(uid).gid(gid).env_remove("PGDATA")
}

/// The server, or `None` (test skipped) when PostgreSQL is not installed.
fn pg() -> Option<&'static Pg> {
    PG.get_or_init(|| {
        if !pg_available() {
            eprintln!("skipped: no PostgreSQL in {}", pg_bin_dir().display());
            return None;
        }
        Some(start_pg())
    })
    .as_ref()
}

fn start_pg() -> Pg {
    let bin = pg_bin_dir();
    let dir = PgTempDir::with_prefix("pooler-server").expect("temp dir");
    let data = dir.join("data");
    let data_s = data.to_str().expect("utf-8 path").to_owned();
    let out = as_postgres(Command::new(bin.join("initdb")).current_dir(dir.path()))
        .args(["-D", &data_s, "-U", "postgres", "-A", "trust"])
        .args(["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"])
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let sql = format!(
        "CREATE ROLE u_trust LOGIN;\n\
         SET password_encryption = 'md5';\n\
         CREATE ROLE u_md5 LOGIN PASSWORD '{MD5_PW}';\n\
         SET password_encryption = 'scram-sha-256';\n\
         CREATE ROLE u_scram LOGIN PASSWORD '{SCRAM_PW}';\n\
         CREATE ROLE u_plain LOGIN PASSWORD '{PLAIN_PW}';\n\
         SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN ('u_md5', 'u_scram') ORDER BY rolname;\n"
    );
    let mut child = as_postgres(Command::new(bin.join("postgres")).current_dir(dir.path()))
        .args([
            "--single",
            "-D",
            &data_s,
            "-c",
            "client_encoding=UTF8",
            "postgres",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run postgres --single");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(sql.as_bytes())
        .expect("write SQL");
    let out = child.wait_with_output().expect("postgres --single");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "postgres --single: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `\t 2: rolpassword = "SCRAM-SHA-256$…"\t(typeid = …)`, rows ordered by name.
    let secrets: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.trim().split_once("rolpassword = \""))
        .filter_map(|(_, rest)| rest.split_once('"').map(|(v, _)| v.to_owned()))
        .collect();
    assert_eq!(secrets.len(), 2, "single-user output: {stdout}");

    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\n\
         host all u_trust 127.0.0.1/32 trust\n\
         host all u_md5 127.0.0.1/32 md5\n\
         host all u_plain 127.0.0.1/32 password\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
    )
    .expect("write pg_hba.conf");

    let port = free_port();
    let log = std::fs::File::create(dir.join("postgres.log")).expect("log file");
    let mut cmd = Command::new(bin.join("postgres"));
    as_postgres(cmd.current_dir(dir.path()))
        .args(["-D", &data_s, "-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args([
            "-c",
            &format!("unix_socket_directories={}", dir.path().display()),
        ])
        .args(["-c", "fsync=off", "-c", "shared_buffers=16MB"])
        .args(["-c", "max_connections=40"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    // SAFETY: prctl is async-signal-safe; it runs in the child after setuid, so the
    // setting survives (a uid change would clear it).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The parent-death signal fires when the *thread* that forked exits: fork from a
    // thread that lives (waiting on the postmaster) as long as the process.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || match cmd.spawn() {
        Ok(mut child) => {
            let _ = tx.send(Ok(()));
            let _ = child.wait();
        }
        Err(e) => {
            let _ = tx.send(Err(e));
        }
    });
    rx.recv().expect("spawner thread").expect("start postgres");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = std::fs::read_to_string(data.join("postmaster.pid"))
            .map(|pid| pid.lines().any(|l| l.trim() == "ready"))
            .unwrap_or(false);
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not become ready: {}",
            std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    *PG_DIR.lock().expect("lock") = Some(dir);
    // SAFETY: registering a plain extern "C" function with no captured state.
    unsafe {
        libc::atexit(remove_pg_dir);
    }
    Pg {
        port,
        md5_hash: secrets[0].clone(),
        scram_verifier: secrets[1].clone(),
    }
}

fn target(pg: &Pg, user: &str, credential: ServerCredential) -> ServerTarget {
    ServerTarget::new("127.0.0.1", pg.port, "postgres", user)
        .with_credential(credential)
        .with_connect_timeout(Duration::from_secs(10))
}

fn plain(pw: &str) -> ServerCredential {
    ServerCredential::Plain(pw.to_owned())
}

/// SQLSTATE of a login refusal.
fn refused_code(e: &ServerError) -> Option<&str> {
    match e {
        ServerError::Auth { response, .. } => response.code(),
        _ => None,
    }
}

/// The connection still works: a statement round-trips.
async fn assert_usable(conn: &mut ServerConnection) {
    conn.simple_query("SELECT 1").await.expect("SELECT 1");
    assert_eq!(conn.transaction_status(), Some(TransactionStatus::Idle));
}

#[tokio::test]
async fn trust_login_reports_parameters_and_cancel_key() {
    let Some(pg) = pg() else { return };
    let t = target(pg, "u_trust", ServerCredential::None)
        .with_param("application_name", "pgherd-test")
        .with_param("client_encoding", "UTF8");
    let before = Instant::now();
    let mut conn = ServerConnection::connect(&t).await.expect("trust login");
    let other = ServerConnection::connect(&t).await.expect("second login");

    assert!(conn
        .parameter("server_version")
        .is_some_and(|v| v.starts_with("15")));
    assert_eq!(conn.parameter("client_encoding"), Some("UTF8"));
    assert_eq!(conn.parameter("application_name"), Some("pgherd-test"));
    assert!(conn.parameters().iter().any(|(n, _)| n == "TimeZone"));
    assert!(conn.backend_pid() > 0);
    assert_eq!(conn.cancel_key().len(), 4);
    assert_ne!(conn.backend_pid(), other.backend_pid());
    assert_ne!(conn.id(), other.id());
    assert_eq!(conn.transaction_status(), Some(TransactionStatus::Idle));
    assert_eq!(
        conn.addr().addr_and_port(),
        ("127.0.0.1".to_string(), pg.port)
    );
    assert!(conn.local_addr().expect("TCP").ip().is_loopback());
    assert_eq!((conn.database(), conn.user()), ("postgres", "u_trust"));
    assert!(conn.created_at() >= before);
    assert!(conn.bytes_sent() > 0 && conn.bytes_received() > 0);
    assert!(!conn.is_broken());

    let used = conn.last_used();
    std::thread::sleep(Duration::from_millis(5));
    conn.touch();
    assert!(conn.last_used() > used);
    assert_usable(&mut conn).await;
    conn.close().await;
    other.close().await;
}

#[tokio::test]
async fn md5_login_with_password_and_with_stored_hash() {
    let Some(pg) = pg() else { return };
    let mut conn = ServerConnection::connect(&target(pg, "u_md5", plain(MD5_PW)))
        .await
        .expect("md5 login with password");
    assert_usable(&mut conn).await;
    conn.close().await;

    assert!(pg.md5_hash.starts_with("md5"));
    let hash = ServerCredential::from_password(&pg.md5_hash);
    assert!(matches!(hash, ServerCredential::Md5Hash(_)));
    let mut conn = ServerConnection::connect(&target(pg, "u_md5", hash))
        .await
        .expect("md5 login with the stored hash");
    assert_usable(&mut conn).await;
    conn.close().await;
}

#[tokio::test]
async fn scram_login_with_password() {
    let Some(pg) = pg() else { return };
    let mut conn = ServerConnection::connect(&target(pg, "u_scram", plain(SCRAM_PW)))
        .await
        .expect("SCRAM login");
    assert_usable(&mut conn).await;
    conn.close().await;
}

#[tokio::test]
async fn cleartext_login() {
    let Some(pg) = pg() else { return };
    let mut conn = ServerConnection::connect(&target(pg, "u_plain", plain(PLAIN_PW)))
        .await
        .expect("cleartext login");
    assert_usable(&mut conn).await;
    conn.close().await;
}

#[tokio::test]
async fn wrong_password_is_refused_with_28p01_and_never_shown() {
    let Some(pg) = pg() else { return };
    for (user, wrong) in [
        ("u_md5", "wrong-md5-secret"),
        ("u_scram", "wrong-scram-secret"),
        ("u_plain", "wrong-plain-secret"),
    ] {
        let err = ServerConnection::connect(&target(pg, user, plain(wrong)))
            .await
            .expect_err("wrong password must fail");
        assert_eq!(refused_code(&err), Some("28P01"), "{user}: {err}");
        assert_eq!(err.sqlstate(), "28P01");
        assert_eq!(err.to_client_error().code(), Some("28P01"));
        assert_eq!(err.kind(), "auth");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(wrong), "{user}: password leaked: {shown}");
        assert!(shown.contains(user), "{shown}");
        assert!(shown.contains(&format!("127.0.0.1:{}", pg.port)), "{shown}");
    }
}

/// What the pooler holds after a client's SCRAM exchange with it: the ClientKey the
/// client proved, and the ServerKey of the verifier.
fn keys_from_client_exchange(verifier: &ScramVerifier, password: &str) -> (Vec<u8>, Vec<u8>) {
    let mut server = ScramServer::new(verifier.clone());
    let mut client = ScramClient::new(password.as_bytes());
    let first = server
        .handle_client_first(client.client_first().as_bytes())
        .expect("client-first");
    let client_final = client
        .handle_server_first(first.as_bytes())
        .expect("server-first");
    let server_final = server
        .handle_client_final(client_final.as_bytes())
        .expect("client proof");
    client
        .handle_server_final(server_final.as_bytes())
        .expect("server proof");
    let client_key = server.client_key().expect("client key after the exchange");
    (client_key.to_vec(), verifier.keys.server_key.to_vec())
}

#[tokio::test]
async fn scram_keys_pass_through_logs_in() {
    let Some(pg) = pg() else { return };
    let verifier = ScramVerifier::parse(&pg.scram_verifier).expect("PostgreSQL's verifier");
    let (client_key, server_key) = keys_from_client_exchange(&verifier, SCRAM_PW);
    let keys = ServerCredential::ScramKeys {
        client_key: client_key.clone(),
        server_key: server_key.clone(),
    };
    let mut conn = ServerConnection::connect(&target(pg, "u_scram", keys))
        .await
        .expect("login with pass-through keys");
    assert_usable(&mut conn).await;
    conn.close().await;

    // Keys of another password: the server refuses the proof.
    let other = ScramVerifier::derive(b"not the password", &verifier.salt, verifier.iterations);
    let (wrong_client_key, _) = keys_from_client_exchange(&other, "not the password");
    let wrong = ServerCredential::ScramKeys {
        client_key: wrong_client_key,
        server_key: server_key.clone(),
    };
    let err = ServerConnection::connect(&target(pg, "u_scram", wrong))
        .await
        .expect_err("wrong keys");
    assert_eq!(refused_code(&err), Some("28P01"), "{err}");

    // A right ClientKey with a wrong ServerKey: the server cannot prove itself.
    let forged_server = ServerCredential::ScramKeys {
        client_key,
        server_key: vec![7; 32],
    };
    let err = ServerConnection::connect(&target(pg, "u_scram", forged_server))
        .await
        .expect_err("server signature must not verify");
    assert!(
        matches!(
            err,
            ServerError::Login {
                reason: LoginFailure::Scram(_),
                ..
            }
        ),
        "{err:?}"
    );

    let short = ServerCredential::ScramKeys {
        client_key: vec![1; 31],
        server_key,
    };
    let err = ServerConnection::connect(&target(pg, "u_scram", short))
        .await
        .expect_err("short key");
    assert!(
        matches!(
            err,
            ServerError::Login {
                reason: LoginFailure::InvalidScramKeys,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn credential_that_cannot_answer_fails_clearly() {
    let Some(pg) = pg() else { return };
    let err = ServerConnection::connect(&target(pg, "u_md5", ServerCredential::None))
        .await
        .expect_err("no password for md5");
    assert!(
        matches!(
            err,
            ServerError::Login {
                reason: LoginFailure::CredentialUnusable { method: "md5", .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.sqlstate(), "08006");

    let hash = ServerCredential::Md5Hash(pg.md5_hash.clone());
    let err = ServerConnection::connect(&target(pg, "u_scram", hash))
        .await
        .expect_err("md5 hash for SCRAM");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("SCRAM-SHA-256"), "{shown}");
    assert!(!shown.contains(&pg.md5_hash), "{shown}");
}

#[tokio::test]
async fn missing_database_is_refused_with_the_servers_error() {
    let Some(pg) = pg() else { return };
    let mut t = target(pg, "u_trust", ServerCredential::None);
    t.database = "no_such_db".into();
    let err = ServerConnection::connect(&t)
        .await
        .expect_err("no database");
    assert_eq!(refused_code(&err), Some("3D000"), "{err}");
}

#[tokio::test]
async fn login_to_a_silent_server_times_out() {
    // Accepted by the kernel (backlog), never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let t = ServerTarget::new("127.0.0.1", port, "db", "u")
        .with_connect_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let err = ServerConnection::connect(&t).await.expect_err("timeout");
    let elapsed = started.elapsed();
    assert!(
        matches!(err, ServerError::Timeout { ref addr, .. } if *addr == format!("127.0.0.1:{port}")),
        "{err:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    drop(silent);
}

#[tokio::test]
async fn refused_connection_names_the_address() {
    let (_reserved, port) = pgherd_testkit::refusing_port();
    let t = ServerTarget::new("127.0.0.1", port, "db", "u");
    let err = ServerConnection::connect(&t).await.expect_err("refused");
    match &err {
        ServerError::Connect { addr, source } => {
            assert_eq!(addr, &format!("127.0.0.1:{port}"));
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected Connect, got {other:?}"),
    }
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")));
}

#[tokio::test]
async fn simple_query_runs_reset_and_reports_failures() {
    let Some(pg) = pg() else { return };
    let mut conn = ServerConnection::connect(&target(pg, "u_trust", ServerCredential::None))
        .await
        .expect("login");
    conn.simple_query("DISCARD ALL").await.expect("DISCARD ALL");

    let err = conn
        .simple_query("SELECT 1/0")
        .await
        .expect_err("division by zero");
    match &err {
        ServerError::ServerError(e) => assert_eq!(e.code(), Some("22012")),
        other => panic!("expected ServerError, got {other:?}"),
    }
    assert!(!err.is_connection_fatal());
    assert!(!conn.is_broken());
    assert_eq!(conn.transaction_status(), Some(TransactionStatus::Idle));

    // ParameterStatus after login is tracked.
    conn.simple_query("SET application_name = 'renamed'")
        .await
        .expect("SET");
    assert_eq!(conn.parameter("application_name"), Some("renamed"));
    conn.simple_query("DISCARD ALL").await.expect("reset");
    assert_eq!(conn.parameter("application_name"), Some(""));

    // Transaction status follows each ReadyForQuery.
    conn.simple_query("BEGIN").await.expect("BEGIN");
    assert_eq!(
        conn.transaction_status(),
        Some(TransactionStatus::InTransaction)
    );
    conn.simple_query("SELECT nope").await.expect_err("error");
    assert_eq!(conn.transaction_status(), Some(TransactionStatus::Failed));
    conn.simple_query("ROLLBACK").await.expect("ROLLBACK");
    assert_eq!(conn.transaction_status(), Some(TransactionStatus::Idle));

    // COPY FROM STDIN cannot hang a pooler statement.
    conn.simple_query("CREATE TEMP TABLE t (x int)")
        .await
        .expect("create");
    let err = conn
        .simple_query("COPY t FROM STDIN")
        .await
        .expect_err("COPY is failed");
    assert_eq!(err.sqlstate(), "57014", "{err}");
    assert_usable(&mut conn).await;

    assert!(matches!(
        conn.simple_query("SELECT '\0'").await,
        Err(ServerError::InvalidQuery)
    ));
    assert_usable(&mut conn).await;

    // A FATAL from the server breaks the connection.
    let err = conn
        .simple_query("SELECT pg_terminate_backend(pg_backend_pid())")
        .await
        .expect_err("terminated");
    assert_eq!(err.sqlstate(), "57P01", "{err}");
    assert!(err.is_connection_fatal());
    assert!(conn.is_broken());
    assert!(matches!(
        conn.write_all(b"x").await,
        Err(ServerError::Closed)
    ));
    conn.close().await;
}

#[tokio::test]
async fn simple_query_is_bounded() {
    let Some(pg) = pg() else { return };
    let mut conn = ServerConnection::connect(&target(pg, "u_trust", ServerCredential::None))
        .await
        .expect("login");
    conn.set_query_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = conn
        .simple_query("SELECT pg_sleep(5)")
        .await
        .expect_err("timeout");
    assert!(matches!(err, ServerError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(conn.is_broken());
}

#[tokio::test]
async fn forwarded_query_frames_end_with_ready_for_query() {
    let Some(pg) = pg() else { return };
    let mut conn = ServerConnection::connect(&target(pg, "u_trust", ServerCredential::None))
        .await
        .expect("login");
    let (sent, received) = (conn.bytes_sent(), conn.bytes_received());

    let query = Query::new("SELECT g FROM generate_series(1, 3) g; SELECT 'x'").to_frame();
    let mut wire = bytes::BytesMut::new();
    query.encode(&mut wire);
    conn.write_all(&wire).await.expect("forward");
    conn.flush().await.expect("flush");

    let mut tags = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), conn.read_frame())
            .await
            .expect("bounded")
            .expect("frame");
        tags.push(frame.tag);
        if frame.tag == b'Z' {
            assert_eq!(&frame.body[..], b"I");
            break;
        }
    }
    assert_eq!(tags, b"TDDDCTDCZ");
    assert_eq!(conn.bytes_sent(), sent + wire.len() as u64);
    assert!(conn.bytes_received() > received);

    // An error is forwarded as a frame, not turned into Err.
    let mut wire = bytes::BytesMut::new();
    Query::new("BEGIN; SELECT 1/0").encode(&mut wire);
    conn.write_all(&wire).await.expect("forward");
    let mut error = None;
    loop {
        let frame = conn.read_frame().await.expect("frame");
        if frame.tag == b'E' {
            error = Some(ErrorResponse::decode(&frame.body).expect("decode"));
        }
        if frame.tag == b'Z' {
            break;
        }
    }
    assert_eq!(
        error.and_then(|e| e.code().map(str::to_owned)).as_deref(),
        Some("22012")
    );
    assert_eq!(conn.transaction_status(), Some(TransactionStatus::Failed));
    assert!(!conn.is_broken());

    conn.prepared_statements().insert("pgherd_1".into());
    assert!(conn.prepared_statements().contains("pgherd_1"));
    conn.close().await;
}

#[tokio::test]
async fn cancel_request_stops_a_running_query() {
    let Some(pg) = pg() else { return };
    let mut conn = ServerConnection::connect(&target(pg, "u_trust", ServerCredential::None))
        .await
        .expect("login");
    let mut wire = bytes::BytesMut::new();
    Query::new("SELECT pg_sleep(30)").encode(&mut wire);
    conn.write_all(&wire).await.expect("send");
    // Let the query start.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    send_cancel(
        ("127.0.0.1", pg.port),
        conn.backend_pid(),
        conn.cancel_key(),
        Duration::from_secs(5),
    )
    .await
    .expect("cancel sent");
    let mut code = None;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), conn.read_frame())
            .await
            .expect("query ends within 10 s")
            .expect("frame");
        if frame.tag == b'E' {
            code = ErrorResponse::decode(&frame.body)
                .expect("decode")
                .code()
                .map(str::to_owned);
        }
        if frame.tag == b'Z' {
            break;
        }
    }
    assert_eq!(code.as_deref(), Some("57014"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_usable(&mut conn).await;
    conn.close().await;
}

#[tokio::test]
async fn cancel_to_a_closed_port_fails_with_connect() {
    let (_reserved, port) = pgherd_testkit::refusing_port();
    let err = send_cancel(
        ("127.0.0.1", port),
        1,
        &[0, 0, 0, 1],
        Duration::from_secs(2),
    )
    .await
    .expect_err("refused");
    assert!(matches!(err, ServerError::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn framed_reader_reads_a_servers_frames() {
    // The generic reader on a plain TCP stream: startup answer of a real server.
    let Some(pg) = pg() else { return };
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", pg.port))
        .await
        .expect("connect");
    let mut wire = bytes::BytesMut::new();
    pgherd_protocol::StartupMessage::new("u_trust")
        .with_parameter("database", "postgres")
        .encode(&mut wire);
    tokio::io::AsyncWriteExt::write_all(&mut stream, &wire)
        .await
        .expect("startup");
    let mut reader = FramedReader::new(stream, FrameDecoder::backend());
    let mut tags = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), reader.next())
        .await
        .expect("bounded")
        .expect("frame")
    {
        tags.push(frame.tag);
        if frame.tag == b'Z' {
            break;
        }
    }
    assert_eq!(tags.first(), Some(&b'R'));
    assert!(tags.contains(&b'K') && tags.contains(&b'S'));
}
