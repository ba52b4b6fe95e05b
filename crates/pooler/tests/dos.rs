//! PgBouncer 1.26.0's three denial-of-service fixes, replayed against pgherd's pooler
//! while a well-behaved client keeps querying through it:
//!
//! - CVE-2026-6668: a packet header declaring more than 2 GiB (an integer overflow in
//!   PgBouncer's buffer growth, an endless loop), before and after login. Also the same
//!   class in 1.26.1 (CVE-2026-107348), and a huge but legal length that is declared and
//!   never sent: it must not reserve the memory it announces.
//! - CVE-2026-19888: a SCRAM client-final-message missing a mandatory attribute (a NULL
//!   dereference before any credential is checked), and other malformed SCRAM messages.
//! - CVE-2026-6669: a server demanding a huge SCRAM iteration count (the pooler's PBKDF2
//!   would keep a core busy for hours, stalling every client).
//!
//! Each hostile client must get an error or a closed socket within a bound, the pooler
//! must keep running, and the good client's queries must keep answering promptly.

mod common;

use common::{connect, pooler, APP_PASSWORD};
use pgherd_protocol::auth::{ScramClient, MAX_SERVER_SCRAM_ITERATIONS};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

/// Tests in this file share the machine: one PostgreSQL at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// How long a hostile connection may stay open after its attack.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);
/// The slowest the good client's `SELECT 1` may get while under attack (generous: CI
/// machines are noisy; a stalled pooler takes far longer).
const PROMPT: Duration = Duration::from_secs(2);
/// How long attacks go on (in rounds) while the good client queries.
const ATTACK_FOR: Duration = Duration::from_secs(2);
const MAX_ROUNDS: usize = 50;

// ---------------------------------------------------------------------------------------
// Raw protocol

fn startup(user: &str, database: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut msg = vec![tag];
    msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(body);
    msg
}

/// A header whose length word is `len`, with no body.
fn header(tag: u8, len: u32) -> Vec<u8> {
    let mut msg = vec![tag];
    msg.extend_from_slice(&len.to_be_bytes());
    msg
}

fn sasl_initial_response(data: &[u8]) -> Vec<u8> {
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(data.len() as i32).to_be_bytes());
    body.extend_from_slice(data);
    frame(b'p', &body)
}

/// The next message (type, body); `None` once the peer closed.
async fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    tokio::time::timeout(CLOSE_WITHIN, s.read_exact(&mut head))
        .await
        .expect("a message within the bound")
        .ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    assert!((4..1 << 20).contains(&len), "length {len}");
    let mut body = vec![0u8; len - 4];
    tokio::time::timeout(CLOSE_WITHIN, s.read_exact(&mut body))
        .await
        .expect("a message within the bound")
        .ok()?;
    Some((head[0], body))
}

/// Everything the pooler says until it closes the socket, which it must do within
/// [`CLOSE_WITHIN`].
async fn drain(s: &mut TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + CLOSE_WITHIN;
    // Each pass reads something or ends; bounded by the deadline.
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => panic!(
                "the pooler kept a hostile connection open for {CLOSE_WITHIN:?}: {}",
                String::from_utf8_lossy(&answer)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return answer,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

/// The SQLSTATE of the last ErrorResponse in `answer`, if the last message is one.
fn last_error_code(answer: &[u8]) -> Option<String> {
    let mut last = None;
    let mut rest = answer;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let end = (1 + len).min(rest.len());
        last = Some((rest[0], &rest[5.min(end)..end]));
        rest = &rest[end..];
    }
    let (tag, body) = last?;
    if tag != b'E' {
        return None;
    }
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
}

/// Closed, and the last thing said (if anything) is an ErrorResponse with one of
/// `codes`.
fn assert_refused(what: &str, answer: &[u8], codes: &[&str]) {
    if answer.is_empty() {
        return;
    }
    match last_error_code(answer) {
        Some(code) if codes.contains(&code.as_str()) => {}
        other => panic!(
            "{what}: expected an error in {codes:?}, got {other:?} ({} bytes): {}",
            answer.len(),
            String::from_utf8_lossy(answer)
        ),
    }
}

/// Connect, send a StartupMessage and read the AuthenticationSASL request.
async fn sasl_requested(port: u16, user: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(&startup(user, "appdb")).await.expect("startup");
    let (tag, body) = read_frame(&mut s).await.expect("an authentication request");
    assert_eq!(tag, b'R');
    assert_eq!(body[..4], 10i32.to_be_bytes(), "AuthenticationSASL");
    s
}

/// Send the client-first-message; the server-first-message.
async fn server_first(s: &mut TcpStream, client: &ScramClient) -> String {
    s.write_all(&sasl_initial_response(client.client_first().as_bytes()))
        .await
        .expect("client-first");
    let (tag, body) = read_frame(s).await.expect("server-first");
    assert_eq!(tag, b'R');
    assert_eq!(body[..4], 11i32.to_be_bytes(), "AuthenticationSASLContinue");
    String::from_utf8(body[4..].to_vec()).expect("UTF-8")
}

/// A raw client logged in as `app` over SCRAM, at ReadyForQuery.
async fn logged_in(port: u16) -> TcpStream {
    let mut s = sasl_requested(port, "app").await;
    let mut client = ScramClient::new(APP_PASSWORD.as_bytes());
    let first = server_first(&mut s, &client).await;
    // Our PBKDF2 off the runtime the pooler shares with us.
    let (mut client, last) = tokio::task::spawn_blocking(move || {
        let last = client.handle_server_first(first.as_bytes());
        (client, last)
    })
    .await
    .expect("derivation");
    let last = last.expect("client-final");
    s.write_all(&frame(b'p', last.as_bytes()))
        .await
        .expect("client-final");
    // Each pass reads one message (bounded by read_frame); a login is a few messages.
    for _ in 0..100 {
        let (tag, body) = read_frame(&mut s).await.expect("login goes on");
        match tag {
            b'R' if body[..4] == 12i32.to_be_bytes() => client
                .handle_server_final(&body[4..])
                .expect("the pooler proves itself"),
            b'Z' => return s,
            b'E' => panic!("login failed: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
    panic!("no ReadyForQuery after 100 messages");
}

// ---------------------------------------------------------------------------------------
// The good client

/// A well-behaved client running `SELECT 1` over and over, timing each.
struct Probe {
    stop: watch::Sender<bool>,
    task: JoinHandle<(usize, Duration)>,
}

impl Probe {
    async fn start(port: u16) -> Probe {
        let client = connect(port, "app", APP_PASSWORD, "appdb")
            .await
            .expect("the good client logs in");
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let (mut count, mut worst) = (0usize, Duration::ZERO);
            // Until told to stop; each pass is one bounded query.
            while !*stopped.borrow() {
                let started = Instant::now();
                let answered = tokio::time::timeout(
                    Duration::from_secs(30),
                    client.query_one("SELECT 1", &[]),
                )
                .await;
                let took = started.elapsed();
                match answered {
                    Ok(Ok(row)) => assert_eq!(row.get::<_, i32>(0), 1),
                    Ok(Err(e)) => panic!("the good client's query failed: {e}"),
                    Err(_) => panic!("the good client's query hung for 30 s"),
                }
                count += 1;
                worst = worst.max(took);
                let _ = tokio::time::timeout(Duration::from_millis(20), stopped.changed()).await;
            }
            (count, worst)
        });
        Probe { stop, task }
    }

    /// Stop; (queries answered, slowest).
    async fn finish(self) -> (usize, Duration) {
        let _ = self.stop.send(true);
        self.task.await.expect("the probe")
    }
}

/// The good client's latency without any attack, for the record.
async fn baseline(port: u16) -> Duration {
    let probe = Probe::start(port).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (count, worst) = probe.finish().await;
    assert!(count > 0);
    worst
}

fn assert_prompt(what: &str, base: Duration, (count, worst): (usize, Duration)) {
    eprintln!("{what}: {count} queries, slowest {worst:?} (baseline {base:?})");
    assert!(count >= 1, "{what}: no query answered");
    assert!(
        worst < PROMPT,
        "{what}: the good client waited {worst:?} (baseline {base:?})"
    );
}

// ---------------------------------------------------------------------------------------
// CVE-2026-6668 (and 1.26.1's CVE-2026-107348): lengths above 2^31

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_headers_declaring_more_than_2_gib_are_refused_before_and_after_login() {
    let _serial = SERIAL.lock().await;
    let server = common::postgres("dos").await;
    let p = pooler(
        &server.pg,
        // max_packet_size: PgBouncer's default, taken but not applied (PostgreSQL's
        // per-type limits are).
        "auth_type = scram-sha-256\npool_mode = transaction\nclient_login_timeout = 5\n\
         max_packet_size = 2147483647",
    )
    .await;
    let base = baseline(p.port).await;
    let probe = Probe::start(p.port).await;
    let port = p.port;

    type Attack = (&'static str, u8, u32);
    // Before any authentication: a startup packet, then a password message.
    let before: [(&str, u32); 4] = [
        ("startup 2^31", 0x8000_0000),
        ("startup 2^31+1", 0x8000_0001),
        ("startup 2^32-1", u32::MAX),
        ("startup 2^31+8", 0x8000_0008),
    ];
    let during: [Attack; 3] = [
        ("password 2^32-1", b'p', u32::MAX),
        ("password 2^31", b'p', 0x8000_0000),
        ("password 1 GiB", b'p', 0x4000_0000),
    ];
    // Logged in: every message type a client may send, and one it may not.
    let after: [Attack; 7] = [
        ("Query 2^32-1", b'Q', u32::MAX),
        ("Query 2^31+4", b'Q', 0x8000_0004),
        ("Parse 2^31", b'P', 0x8000_0000),
        ("Bind 2^32-1", b'B', u32::MAX),
        ("CopyData 2^31", b'd', 0x8000_0000),
        ("Sync 2^31", b'S', 0x8000_0000),
        ("unknown type 2^31", b'~', 0x8000_0000),
    ];
    let started = Instant::now();
    let mut rounds = 0;
    // Long enough for the good client to query throughout; bounded.
    while rounds < 2 || (started.elapsed() < ATTACK_FOR && rounds < MAX_ROUNDS) {
        let mut attacks = tokio::task::JoinSet::new();
        // Two of each at once.
        for _ in 0..2 {
            for (what, len) in before {
                attacks.spawn(async move {
                    let mut s = TcpStream::connect(("127.0.0.1", port))
                        .await
                        .expect("connect");
                    let mut bytes = len.to_be_bytes().to_vec();
                    bytes.extend_from_slice(&196_608u32.to_be_bytes());
                    // Some of what was announced, to make the pooler want the rest.
                    bytes.extend(std::iter::repeat_n(b'x', 16 << 10));
                    let _ = s.write_all(&bytes).await;
                    assert_refused(what, &drain(&mut s).await, &["08P01"]);
                });
            }
            for (what, tag, len) in during {
                attacks.spawn(async move {
                    let mut s = sasl_requested(port, "app").await;
                    let _ = s.write_all(&header(tag, len)).await;
                    assert_refused(what, &drain(&mut s).await, &["08P01"]);
                });
            }
            for (what, tag, len) in after {
                attacks.spawn(async move {
                    let mut s = logged_in(port).await;
                    let mut bytes = header(tag, len);
                    bytes.extend(std::iter::repeat_n(b'x', 16 << 10));
                    let _ = s.write_all(&bytes).await;
                    assert_refused(what, &drain(&mut s).await, &["08P01"]);
                });
            }
        }
        let mut done = 0;
        while let Some(r) = attacks.join_next().await {
            r.expect("attack");
            done += 1;
        }
        assert_eq!(done, 2 * (before.len() + during.len() + after.len()));
        rounds += 1;
    }
    assert_prompt("over 2 GiB", base, probe.finish().await);
    assert!(!p.serve.is_finished(), "the pooler stopped serving");
    let c = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("new logins work");
    c.batch_execute("SELECT 1").await.expect("and queries");
}

/// Virtual memory of this process (the pooler runs in it), from /proc/self/status.
fn vm_size_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize")
}

/// A logged-in client may send a Query of up to PostgreSQL's 1 GB limit; one that only
/// announces it and then sends nothing must not make the pooler reserve a gigabyte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_message_that_is_announced_but_not_sent_reserves_no_memory() {
    const CLIENTS: usize = 16;
    let _serial = SERIAL.lock().await;
    let server = common::postgres("dos").await;
    let p = pooler(
        &server.pg,
        "auth_type = scram-sha-256\npool_mode = transaction\nclient_idle_timeout = 0",
    )
    .await;
    let base = baseline(p.port).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(logged_in(p.port).await);
    }
    let probe = Probe::start(p.port).await;
    let before = vm_size_kib();
    for s in &mut clients {
        // PQ_LARGE_MESSAGE_LIMIT (the length word counts itself): allowed, then silence.
        let mut bytes = header(b'Q', 0x3fff_fffe);
        bytes.extend_from_slice(b"SELECT ");
        s.write_all(&bytes).await.expect("header");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown_mib = vm_size_kib().saturating_sub(before) / 1024;
    eprintln!("{CLIENTS} announced 1 GiB queries: virtual memory grew by {grown_mib} MiB");
    assert!(
        grown_mib < 512,
        "{CLIENTS} clients that each announced 1 GiB and sent 12 bytes grew the pooler by \
         {grown_mib} MiB"
    );
    assert_prompt("announced 1 GiB", base, probe.finish().await);
    drop(clients);
    // Large messages that do arrive still work: the buffer grows as they come in.
    let c = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("new logins work");
    let big = "x".repeat(8 << 20);
    let row = c
        .query_one(&format!("SELECT length('{big}')"), &[])
        .await
        .expect("an 8 MiB query");
    assert_eq!(row.get::<_, i32>(0), 8 << 20);
}

// ---------------------------------------------------------------------------------------
// CVE-2026-19888: malformed SCRAM messages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_scram_messages_are_refused_and_harm_nobody() {
    let _serial = SERIAL.lock().await;
    let server = common::postgres("dos").await;
    let p = pooler(
        &server.pg,
        "auth_type = scram-sha-256\npool_mode = transaction\nclient_login_timeout = 5",
    )
    .await;
    let base = baseline(p.port).await;
    let probe = Probe::start(p.port).await;
    let port = p.port;
    // A well-formed but wrong proof (32 bytes).
    const PROOF: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    // client-final-messages, `{N}` standing for the combined nonce.
    let finals: Vec<(&str, Vec<u8>)> = vec![
        ("empty", b"".to_vec()),
        ("only c=", b"c=biws".to_vec()),
        (
            "no nonce (the CVE)",
            format!("c=biws,p={PROOF}").into_bytes(),
        ),
        ("no proof", b"c=biws,r={N}".to_vec()),
        (
            "no channel binding",
            format!("r={{N}},p={PROOF}").into_bytes(),
        ),
        ("empty proof", b"c=biws,r={N},p=".to_vec()),
        ("proof not base64", b"c=biws,r={N},p=%%%%".to_vec()),
        ("short proof", b"c=biws,r={N},p=AAAA".to_vec()),
        ("empty nonce", format!("c=biws,r=,p={PROOF}").into_bytes()),
        (
            "empty channel binding",
            format!("c=,r={{N}},p={PROOF}").into_bytes(),
        ),
        (
            "bare extension",
            format!("c=biws,r={{N}},x,p={PROOF}").into_bytes(),
        ),
        (
            "trailing comma",
            format!("c=biws,r={{N}},p={PROOF},").into_bytes(),
        ),
        ("commas", b",,,".to_vec()),
        ("y flag", format!("c=eSws,r={{N}},p={PROOF}").into_bytes()),
        (
            "wrong nonce",
            format!("c=biws,r=abc,p={PROOF}").into_bytes(),
        ),
        (
            "NUL in nonce",
            format!("c=biws,r={{N}}\0,p={PROOF}").into_bytes(),
        ),
        ("not UTF-8", vec![0xff, 0xfe, b'c', b'=', 0x80]),
        (
            "huge nonce",
            format!("c=biws,r={},p={PROOF}", "n".repeat(60_000)).into_bytes(),
        ),
        (
            "wrong proof",
            format!("c=biws,r={{N}},p={PROOF}").into_bytes(),
        ),
    ];
    // client-first-messages.
    let firsts: Vec<(&str, Vec<u8>)> = vec![
        ("empty", b"".to_vec()),
        ("gs2 header only", b"n,,".to_vec()),
        ("no nonce", b"n,,n=".to_vec()),
        ("empty nonce", b"n,,n=,r=".to_vec()),
        ("bad flag", b"x,,n=,r=abc".to_vec()),
        (
            "channel binding",
            b"p=tls-server-end-point,,n=,r=abc".to_vec(),
        ),
        ("authzid", b"n,a=postgres,n=,r=abc".to_vec()),
        ("mandatory extension", b"n,,m=x,n=,r=abc".to_vec()),
        ("not UTF-8", vec![b'n', b',', b',', 0xff]),
    ];
    let started = Instant::now();
    let mut rounds = 0;
    // Long enough for the good client to query throughout; bounded.
    while rounds < 1 || (started.elapsed() < ATTACK_FOR && rounds < MAX_ROUNDS) {
        let mut attacks = tokio::task::JoinSet::new();
        for user in ["app", "ghost"] {
            for (what, last) in finals.clone() {
                attacks.spawn(async move {
                    let mut s = sasl_requested(port, user).await;
                    let client = ScramClient::new(APP_PASSWORD.as_bytes());
                    let first = server_first(&mut s, &client).await;
                    let nonce = first
                        .split(',')
                        .find_map(|a| a.strip_prefix("r="))
                        .expect("nonce");
                    let last = String::from_utf8_lossy(&last).replace("{N}", nonce);
                    let last = if what == "not UTF-8" {
                        vec![0xff, 0xfe, b'c', b'=', 0x80]
                    } else {
                        last.into_bytes()
                    };
                    let _ = s.write_all(&frame(b'p', &last)).await;
                    let answer = drain(&mut s).await;
                    assert_refused(what, &answer, &["28P01", "08P01"]);
                    assert!(
                        !answer.windows(9).any(|w| w[0] == b'R'
                            && w[1..5] == 8u32.to_be_bytes()
                            && w[5..9] == [0, 0, 0, 0]),
                        "{what}: logged in"
                    );
                });
            }
            for (what, first) in firsts.clone() {
                attacks.spawn(async move {
                    let mut s = sasl_requested(port, user).await;
                    let _ = s.write_all(&sasl_initial_response(&first)).await;
                    assert_refused(what, &drain(&mut s).await, &["28P01", "08P01", "0A000"]);
                });
            }
            // SASLInitialResponse whose inner length lies: past the message, negative
            // other than -1, and -1 (no data).
            for (what, inner) in [
                ("inner length past the end", 0x7fff_ffffi32),
                ("inner length -2", -2),
                ("inner length -1", -1),
                ("inner length 2^31", i32::MIN),
            ] {
                attacks.spawn(async move {
                    let mut s = sasl_requested(port, user).await;
                    let mut body = b"SCRAM-SHA-256\0".to_vec();
                    body.extend_from_slice(&inner.to_be_bytes());
                    body.extend_from_slice(b"n,,n=,r=abc");
                    let _ = s.write_all(&frame(b'p', &body)).await;
                    assert_refused(what, &drain(&mut s).await, &["28P01", "08P01"]);
                });
            }
            // A mechanism name without its terminator.
            attacks.spawn(async move {
                let mut s = sasl_requested(port, user).await;
                let _ = s.write_all(&frame(b'p', b"SCRAM-SHA-256")).await;
                assert_refused("unterminated mechanism", &drain(&mut s).await, &["08P01"]);
            });
        }
        let mut done = 0;
        while let Some(r) = attacks.join_next().await {
            r.expect("attack");
            done += 1;
        }
        assert_eq!(done, 2 * (finals.len() + firsts.len() + 5));
        rounds += 1;
    }
    assert_prompt("malformed SCRAM", base, probe.finish().await);
    assert!(!p.serve.is_finished(), "the pooler stopped serving");
    let c = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("new logins work");
    c.batch_execute("SELECT 1").await.expect("and queries");
}

// ---------------------------------------------------------------------------------------
// CVE-2026-6669: a server demanding a huge SCRAM iteration count

/// What the fake server saw.
#[derive(Default)]
struct FakeServerLog {
    logins: AtomicUsize,
    /// SASLResponses received: the pooler derived its keys and answered.
    answered: AtomicUsize,
}

/// A "PostgreSQL" that asks for SCRAM with `iterations` and, if answered, sends a
/// server signature that cannot be right.
async fn fake_server(iterations: u32) -> (u16, Arc<FakeServerLog>, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let log = Arc::new(FakeServerLog::default());
    let seen = log.clone();
    let task = tokio::spawn(async move {
        // One task per connection, for as many as a test makes (bounded); aborted by the
        // test when done.
        for _ in 0..10_000 {
            let Ok((mut s, _)) = listener.accept().await else {
                break;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                // The StartupMessage, after an SSLRequest (declined) if one comes.
                let mut body = Vec::new();
                for _ in 0..2 {
                    let mut len = [0u8; 4];
                    if s.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    body = vec![0u8; (u32::from_be_bytes(len) as usize).clamp(4, 10_000) - 4];
                    if s.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if body[..] != 80_877_103u32.to_be_bytes() {
                        break;
                    }
                    if s.write_all(b"N").await.is_err() {
                        return;
                    }
                }
                if body[..4] != 196_608u32.to_be_bytes() {
                    return;
                }
                seen.logins.fetch_add(1, Ordering::SeqCst);
                let mut sasl = 10i32.to_be_bytes().to_vec();
                sasl.extend_from_slice(b"SCRAM-SHA-256\0\0");
                if s.write_all(&frame(b'R', &sasl)).await.is_err() {
                    return;
                }
                let Some((b'p', first)) = read_frame(&mut s).await else {
                    return;
                };
                let first = String::from_utf8_lossy(&first).into_owned();
                let Some(nonce) = first.split(',').find_map(|a| a.strip_prefix("r=")) else {
                    return;
                };
                let mut cont = 11i32.to_be_bytes().to_vec();
                cont.extend_from_slice(
                    format!("r={nonce}fake,s=c2FsdHNhbHRzYWx0,i={iterations}").as_bytes(),
                );
                if s.write_all(&frame(b'R', &cont)).await.is_err() {
                    return;
                }
                if let Some((b'p', _)) = read_frame(&mut s).await {
                    seen.answered.fetch_add(1, Ordering::SeqCst);
                    let mut fin = 12i32.to_be_bytes().to_vec();
                    fin.extend_from_slice(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
                    let _ = s.write_all(&frame(b'R', &fin)).await;
                    let _ = read_frame(&mut s).await;
                }
            });
        }
    });
    (port, log, task)
}

/// Clients of the `evil` database (in front of the fake server) all get an error within
/// the bound; how long the slowest took.
async fn evil_clients(port: u16, n: usize) -> Duration {
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..n {
        clients.spawn(async move {
            let started = Instant::now();
            let failed = tokio::time::timeout(Duration::from_secs(20), async {
                match connect(port, "app", APP_PASSWORD, "evil").await {
                    Err(e) => e,
                    Ok(c) => c.batch_execute("SELECT 1").await.expect_err("no server"),
                }
            })
            .await
            .expect("the client of the hostile server got an answer");
            let message = failed
                .as_db_error()
                .map_or_else(|| failed.to_string(), |d| d.message().to_string());
            eprintln!("evil client: {message:?} after {:?}", started.elapsed());
            started.elapsed()
        });
    }
    let mut worst = Duration::ZERO;
    while let Some(took) = clients.join_next().await {
        worst = worst.max(took.expect("client"));
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_demanding_a_huge_scram_iteration_count_is_refused_and_stalls_nobody() {
    let _serial = SERIAL.lock().await;
    let server = common::postgres("dos").await;
    let (evil_port, log, fake) = fake_server(u32::MAX).await;
    let settings = format!(
        "auth_type = md5\npool_mode = transaction\nserver_login_retry = 1\n\
         query_wait_timeout = 15\n\
         [databases]\nevil = host=127.0.0.1 port={evil_port} dbname=evil\n"
    );
    let p = pooler(&server.pg, &settings).await;
    let base = baseline(p.port).await;

    // Over the limit: refused before any derivation, so never answered.
    let probe = Probe::start(p.port).await;
    let mut worst = Duration::ZERO;
    // Rounds past server_login_retry, so that each one reaches the server again.
    for _ in 0..3 {
        worst = worst.max(evil_clients(p.port, 4).await);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_prompt("i=2^32-1", base, probe.finish().await);
    assert!(
        log.logins.load(Ordering::SeqCst) >= 3,
        "the pooler tried {} times",
        log.logins.load(Ordering::SeqCst)
    );
    assert_eq!(
        log.answered.load(Ordering::SeqCst),
        0,
        "the pooler ran PBKDF2 with 2^32-1 iterations"
    );
    assert!(worst < Duration::from_secs(20), "{worst:?}");
    fake.abort();

    // High but allowed: the derivation runs off the pooler's I/O threads, the fake server's
    // signature is refused, and the good client does not wait for either.
    let iterations = (MAX_SERVER_SCRAM_ITERATIONS / 10).max(1);
    let (slow_port, log, fake) = fake_server(iterations).await;
    let settings = format!(
        "auth_type = md5\npool_mode = transaction\nserver_login_retry = 1\n\
         query_wait_timeout = 30\n\
         [databases]\nevil = host=127.0.0.1 port={slow_port} dbname=evil\n"
    );
    drop(p);
    let p = pooler(&server.pg, &settings).await;
    let probe = Probe::start(p.port).await;
    evil_clients(p.port, 2).await;
    assert_prompt(&format!("i={iterations}"), base, probe.finish().await);
    assert!(
        log.answered.load(Ordering::SeqCst) > 0,
        "the pooler refused an allowed iteration count"
    );
    fake.abort();
    assert!(!p.serve.is_finished(), "the pooler stopped serving");
}

// ---------------------------------------------------------------------------------------
// PgBouncer 1.26.1's CVE-2026-107349: an empty option name in the startup `options`

fn startup_with(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// PgBouncer looped forever looking up an empty name from `options` (`-c=`) in a
/// non-empty `ignore_startup_parameters` that lacks `options`. pgherd does not take
/// `options` apart: it is refused as a whole unless ignored, then skipped as a whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_option_names_in_startup_options_are_answered_promptly() {
    let _serial = SERIAL.lock().await;
    let server = common::postgres("dos").await;
    let options = [
        "-c=",
        "-c =",
        "-c",
        "--=",
        "-c=x",
        "-c= -c= -c=",
        "-c\\=",
        "--",
        "-c=\\",
    ];
    for (ignored, expect_login) in [("extra_float_digits", false), ("options", true)] {
        let p = pooler(
            &server.pg,
            &format!(
                "auth_type = scram-sha-256\npool_mode = transaction\n\
                 ignore_startup_parameters = {ignored}"
            ),
        )
        .await;
        let base = baseline(p.port).await;
        let probe = Probe::start(p.port).await;
        let mut attacks = tokio::task::JoinSet::new();
        for round in 0..5 {
            for o in options {
                let port = p.port;
                attacks.spawn(async move {
                    let mut s = TcpStream::connect(("127.0.0.1", port))
                        .await
                        .expect("connect");
                    let long = o.repeat(500);
                    let o = if round == 0 { long.as_str() } else { o };
                    let packet = startup_with(&[
                        ("user", "app"),
                        ("database", "appdb"),
                        ("options", &o[..o.len().min(9_000)]),
                    ]);
                    s.write_all(&packet).await.expect("startup");
                    let (tag, body) = read_frame(&mut s).await.expect("an answer");
                    if expect_login {
                        // Skipped: the login goes on (SCRAM requested).
                        assert_eq!((tag, &body[..4]), (b'R', &10i32.to_be_bytes()[..]));
                    } else {
                        assert_eq!(tag, b'E', "{o:?}");
                        let mut answer = frame(tag, &body);
                        answer.extend(drain(&mut s).await);
                        assert_refused(o, &answer, &["08P01"]);
                    }
                });
            }
        }
        while let Some(r) = attacks.join_next().await {
            r.expect("attack");
        }
        assert_prompt(
            &format!("options with ignore_startup_parameters = {ignored}"),
            base,
            probe.finish().await,
        );
        assert!(!p.serve.is_finished(), "the pooler stopped serving");
    }
}

// ---------------------------------------------------------------------------------------
// No PBKDF2 per login attempt, and nothing told away by it

/// Cleartext secrets get one cached verifier (one salt) and unknown users a mock salt
/// that is just as stable, so asking twice does not tell the two apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_salts_do_not_tell_unknown_users_from_known_ones() {
    let _serial = SERIAL.lock().await;
    let server = common::postgres("dos").await;
    let p = pooler(
        &server.pg,
        "auth_type = scram-sha-256\npool_mode = transaction",
    )
    .await;
    let salt = |user: &'static str| async move {
        let mut s = sasl_requested(p.port, user).await;
        let first = server_first(&mut s, &ScramClient::new(b"guess")).await;
        first
            .split(',')
            .find_map(|a| a.strip_prefix("s="))
            .expect("salt")
            .to_owned()
    };
    for user in ["app", "ghost", "phantom"] {
        assert_eq!(salt(user).await, salt(user).await, "{user}");
    }
    assert_ne!(salt("ghost").await, salt("phantom").await);
}
