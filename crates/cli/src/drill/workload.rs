//! The drill's clients: connections through the pooler (or to one member), a writer
//! that records every acknowledged row, and TPC-B-like workers that count failures.

use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// Where a client connects, and as whom.
#[derive(Debug, Clone)]
pub struct Address {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
}

impl Address {
    /// `host:port` for the report (never the password).
    pub fn shown(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The same login on another server.
    pub fn at(&self, host: &str, port: u16) -> Address {
        Address {
            host: host.to_string(),
            port,
            ..self.clone()
        }
    }
}

/// `postgres://user[:password]@host[:port][/db]`; the password may come from
/// PGPASSWORD, the user from PGUSER (default `postgres`), the database defaults to
/// `postgres`.
pub fn parse_address(uri: &str) -> Result<Address> {
    let u = reqwest::Url::parse(uri)
        .map_err(|e| anyhow::anyhow!("'{}' is not a URI: {e}", shown_uri(uri)))?;
    if !matches!(u.scheme(), "postgres" | "postgresql") {
        anyhow::bail!("'{}' is not a postgres:// URI", shown_uri(uri));
    }
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .with_context(|| format!("'{}' names no host", shown_uri(uri)))?;
    let decode = |s: &str| percent_decode(s);
    let user = match u.username() {
        "" => std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into()),
        name => decode(name),
    };
    let password = u
        .password()
        .map(decode)
        .or_else(|| std::env::var("PGPASSWORD").ok());
    let dbname = match u.path().trim_start_matches('/') {
        "" => "postgres".to_string(),
        db => decode(db),
    };
    Ok(Address {
        host: host.trim_matches(['[', ']']).to_string(),
        port: u.port().unwrap_or(5432),
        user,
        password,
        dbname,
    })
}

/// `uri` without its password, for messages.
fn shown_uri(uri: &str) -> String {
    match reqwest::Url::parse(uri) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => match uri.rsplit_once('@') {
            Some((_, rest)) => format!("...@{rest}"),
            None => uri.to_string(),
        },
    }
}

/// %XX escapes in a URI part.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How long one connection attempt or one statement may take before the drill calls it
/// failed (a pooler holding a client through a failover answers well within this).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Between a failed attempt and the next one.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A connected client; its connection task ends when the client is dropped.
pub async fn connect(to: &Address) -> Result<Client> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&to.host)
        .port(to.port)
        .user(&to.user)
        .dbname(&to.dbname)
        .application_name("pgherd drill")
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(p) = &to.password {
        config.password(p);
    }
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {} within {CONNECT_TIMEOUT:?}", to.shown()))?
        .with_context(|| format!("cannot connect to {}", to.shown()))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Run `sql` (simple protocol, so it works through any pool mode) within the timeout.
pub async fn execute(client: &Client, sql: &str) -> Result<()> {
    tokio::time::timeout(STATEMENT_TIMEOUT, client.batch_execute(sql))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {STATEMENT_TIMEOUT:?}"))?
        .map_err(|e| anyhow::anyhow!("{}", describe(&e)))
}

/// The first column of the first row of `sql`, as text.
pub async fn query_text(client: &Client, sql: &str) -> Result<Option<String>> {
    let messages = tokio::time::timeout(STATEMENT_TIMEOUT, client.simple_query(sql))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {STATEMENT_TIMEOUT:?}"))?
        .map_err(|e| anyhow::anyhow!("{}", describe(&e)))?;
    Ok(messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    }))
}

/// Every value of the first column of `sql`.
pub async fn query_column(client: &Client, sql: &str) -> Result<Vec<String>> {
    let messages = tokio::time::timeout(STATEMENT_TIMEOUT, client.simple_query(sql))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {STATEMENT_TIMEOUT:?}"))?
        .map_err(|e| anyhow::anyhow!("{}", describe(&e)))?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect())
}

/// The server's message when there is one (tokio-postgres' Display says only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// The drill's tables, created through the read-write address.
pub const SETUP: &str = "CREATE TABLE IF NOT EXISTS pgherd_drill_rows (
        id bigint PRIMARY KEY, run text NOT NULL, written_at timestamptz DEFAULT now());
    CREATE TABLE IF NOT EXISTS pgherd_drill_accounts (aid int PRIMARY KEY, abalance bigint NOT NULL);
    CREATE TABLE IF NOT EXISTS pgherd_drill_history (
        aid int NOT NULL, delta int NOT NULL, at timestamptz DEFAULT now());
    INSERT INTO pgherd_drill_accounts SELECT g, 0 FROM generate_series(1, 1000) g
        ON CONFLICT DO NOTHING;";

/// What a continuous writer saw.
#[derive(Debug, Default)]
pub struct WriterLog {
    /// Each acknowledged id with when its commit returned.
    pub acknowledged: Vec<(i64, Instant)>,
    /// Attempts that failed (error text), with when.
    pub failures: Vec<(Instant, String)>,
}

impl WriterLog {
    /// The longest time between two acknowledged writes (or from `from` to the first).
    pub fn longest_gap(&self, from: Instant) -> Duration {
        let mut last = from;
        let mut gap = Duration::ZERO;
        for (_, at) in &self.acknowledged {
            if *at >= last {
                gap = gap.max(*at - last);
                last = *at;
            }
        }
        gap
    }

    /// The first acknowledgement at or after `t`.
    pub fn first_after(&self, t: Instant) -> Option<Instant> {
        self.acknowledged.iter().map(|(_, a)| *a).find(|a| *a >= t)
    }
}

/// One client inserting one row per transaction (ids from `first_id` up) until `stop`,
/// reconnecting after any error; a new id for every attempt, so an attempt whose fate
/// is unknown never collides with a later one.
/// `last_ack` holds the time of its latest acknowledged write, as it goes.
pub fn start_writer(
    to: Address,
    run: String,
    first_id: i64,
    stop: Arc<AtomicBool>,
    last_ack: Arc<Mutex<Option<Instant>>>,
) -> JoinHandle<WriterLog> {
    tokio::spawn(async move {
        let mut log = WriterLog::default();
        let mut client: Option<Client> = None;
        let mut id = first_id;
        // Bounded by `stop`, which the drill sets after at most its own deadline.
        while !stop.load(Ordering::Relaxed) {
            let c = match &client {
                Some(c) => c,
                None => match connect(&to).await {
                    Ok(c) => client.insert(c),
                    Err(e) => {
                        log.failures.push((Instant::now(), format!("{e:#}")));
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                },
            };
            let sql = format!("INSERT INTO pgherd_drill_rows (id, run) VALUES ({id}, '{run}')");
            match execute(c, &sql).await {
                Ok(()) => {
                    let now = Instant::now();
                    log.acknowledged.push((id, now));
                    *last_ack.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
                }
                Err(e) => {
                    log.failures.push((Instant::now(), format!("{e:#}")));
                    client = None;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
            id += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        log
    })
}

/// What the TPC-B-like workers saw together.
#[derive(Debug, Default)]
pub struct BenchLog {
    pub committed: usize,
    /// Failed transactions (including connections lost or refused), with the first
    /// few messages.
    pub failed: usize,
    pub messages: Vec<String>,
    /// When each transaction committed, all workers together (sorted by the caller).
    pub commits: Vec<Instant>,
}

/// `clients` workers, each on its own connection, running pgbench's TPC-B-like
/// transaction (update an account, record the change) until `stop`.
pub fn start_bench(
    to: Address,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<JoinHandle<BenchLog>> {
    (0..clients)
        .map(|worker| {
            let to = to.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut log = BenchLog::default();
                let mut client: Option<Client> = None;
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let c = match &client {
                        Some(c) => c,
                        None => match connect(&to).await {
                            Ok(c) => client.insert(c),
                            Err(e) => {
                                log.failed += 1;
                                note(&mut log.messages, format!("{e:#}"));
                                tokio::time::sleep(RETRY_PAUSE).await;
                                continue;
                            }
                        },
                    };
                    let aid = (n * 7919 + worker as u64 * 104_729) % 1000 + 1;
                    let delta = (n % 9) as i64 - 4;
                    let sql = format!(
                        "BEGIN; UPDATE pgherd_drill_accounts SET abalance = abalance + {delta} \
                         WHERE aid = {aid}; INSERT INTO pgherd_drill_history (aid, delta) \
                         VALUES ({aid}, {delta}); COMMIT;"
                    );
                    match execute(c, &sql).await {
                        Ok(()) => {
                            log.committed += 1;
                            log.commits.push(Instant::now());
                        }
                        Err(e) => {
                            log.failed += 1;
                            note(&mut log.messages, format!("{e:#}"));
                            client = None;
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                    }
                }
                log
            })
        })
        .collect()
}

/// Keep the first few distinct messages.
fn note(messages: &mut Vec<String>, m: String) {
    if messages.len() < 3 && !messages.contains(&m) {
        messages.push(m);
    }
}

/// The longest time without a commit between `from` and `to`.
pub fn longest_stall(commits: &mut [Instant], from: Instant, to: Instant) -> Duration {
    commits.sort();
    let mut last = from;
    let mut stall = Duration::ZERO;
    for &c in commits.iter().filter(|c| **c >= from && **c <= to) {
        stall = stall.max(c - last);
        last = c;
    }
    stall.max(to.saturating_duration_since(last))
}
