//! Hostile or broken clients get an error and a closed socket, and nobody else's session
//! is affected: garbage bytes, huge length prefixes, oversized startup packets, silent
//! half-open connections, slow logins.

mod common;

use common::{connect, pooler, APP_PASSWORD};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Send `bytes`, then read until the pooler closes the socket (bounded); returns what it
/// said.
fn send_and_drain(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.write_all(bytes);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return answer,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the pooler kept a hostile connection open: {e}"),
        }
    }
    panic!("the pooler kept a hostile connection open");
}

/// The socket was closed, and what the pooler said last (if anything) is an
/// ErrorResponse (an authentication request may come first).
fn refused(answer: &[u8]) {
    let mut last = None;
    let mut rest = answer;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        last = Some(rest[0]);
        rest = &rest[(1 + len).min(rest.len())..];
    }
    assert!(
        answer.is_empty() || last == Some(b'E'),
        "unexpected answer ({} bytes, last frame {:?}): {}",
        answer.len(),
        last.map(char::from),
        String::from_utf8_lossy(answer)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_closed_and_others_are_unaffected() {
    let server = common::postgres("hostile").await;
    let p = pooler(
        &server.pg,
        "auth_type = md5\npool_mode = transaction\nclient_login_timeout = 2",
    )
    .await;
    // A well-behaved client in the middle of it all.
    let good = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("login");
    good.batch_execute("BEGIN").await.expect("begin");

    let port = p.port;
    let attacks = tokio::task::spawn_blocking(move || {
        // Garbage instead of a startup packet.
        refused(&send_and_drain(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        // A startup packet claiming 2 GB.
        refused(&send_and_drain(port, &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]));
        // A startup packet over PostgreSQL's 10,000-byte limit.
        let mut big = (20_008u32).to_be_bytes().to_vec();
        big.extend_from_slice(&196_608u32.to_be_bytes());
        big.extend(std::iter::repeat_n(b'a', 20_000));
        refused(&send_and_drain(port, &big));
        // A length prefix below the minimum.
        refused(&send_and_drain(port, &[0, 0, 0, 2]));
        // A valid startup, then a message with a 1 GB length.
        let mut startup = Vec::new();
        let params = b"user\0app\0database\0appdb\0\0";
        startup.extend_from_slice(&((8 + params.len()) as u32).to_be_bytes());
        startup.extend_from_slice(&196_608u32.to_be_bytes());
        startup.extend_from_slice(params);
        startup.extend_from_slice(&[b'p', 0x40, 0, 0, 0]);
        refused(&send_and_drain(port, &startup));
        // Half-open: connects, says nothing; closed after client_login_timeout.
        let started = Instant::now();
        refused(&send_and_drain(port, b""));
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
        // A console login that never answers the password request: cut off the same way.
        let mut console = Vec::new();
        let params = b"user\0postgres\0database\0pgbouncer\0\0";
        console.extend_from_slice(&((8 + params.len()) as u32).to_be_bytes());
        console.extend_from_slice(&196_608u32.to_be_bytes());
        console.extend_from_slice(params);
        let started = Instant::now();
        refused(&send_and_drain(port, &console));
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "console login: {:?}",
            started.elapsed()
        );
        // Slowloris: the startup packet one byte a second; also bounded by the timeout.
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(8)))
            .expect("timeout");
        let started = Instant::now();
        let mut closed = false;
        for b in startup.iter().take(8) {
            if s.write_all(&[*b]).is_err() {
                closed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(700));
        }
        if !closed {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
        }
        assert!(started.elapsed() < Duration::from_secs(8));
    });
    attacks.await.expect("attacks");

    // The good client's transaction survived all of that.
    good.batch_execute("SELECT 1; COMMIT")
        .await
        .expect("the good client is unaffected");
    let other = connect(p.port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("new logins work");
    assert_eq!(
        other
            .query_one("SELECT 42", &[])
            .await
            .expect("query")
            .get::<_, i32>(0),
        42
    );
}
