//! A randomized stress test of the pool in transaction mode, against a real PostgreSQL 15:
//! more clients than servers, each doing a random mix of simple-protocol queries,
//! extended-protocol queries (unnamed statements, named statements prepared once and
//! reused across many transactions, ad-hoc named statements, pipelines), transactions
//! that commit, roll back or fail, long results, cancelled `pg_sleep`s, disconnects in
//! the middle of a transaction or of a result, and reconnects — while a chaos task kills
//! server connections with `pg_terminate_backend`, resizes the pool by RELOAD and holds
//! a shrunken pool long enough for `query_wait_timeout` to fire; a few clients sit idle
//! inside a transaction past `idle_transaction_timeout`.
//!
//! Every answer is checked against the value it must have (not only for the absence of
//! an error); errors pass only when the chaos explains them. A background task checks
//! the pool's invariant (no idle server while a client waits) every 5 ms. At the end
//! every surviving client must be served, the pool must return to all-idle (also as
//! `SHOW POOLS` reports it), and each client's counter row must hold exactly the
//! increments whose COMMIT succeeded.
//!
//! `PGHERD_STRESS_SEED` replays a run's random choices (the seed is printed at the start
//! and in every failure), `PGHERD_STRESS_SECS` sets the duration (default 30 s);
//! `bench/pooler-stress.sh` runs the long form.

mod common;

use common::{ini_text, ADMIN_PASSWORD, APP_PASSWORD};
use pgherd_postgres::Instance;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, Statement};

/// Client tasks, each with its own row in `counters`.
const CLIENTS: usize = 36;
/// The pool size outside of the chaos's resizes.
const BASE_POOL_SIZE: usize = 5;
const QUERY_WAIT_TIMEOUT: Duration = Duration::from_secs(4);
const IDLE_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(2);
/// A request without any answer within this is a client left unserved.
const ANSWER_BOUND: Duration = Duration::from_secs(60);
/// A 57014 on a client's next statement within this of its own cancel request is that
/// cancel arriving late (as it can directly against PostgreSQL too).
const LATE_CANCEL: Duration = Duration::from_secs(3);
/// Only these clients sit idle in a transaction past idle_transaction_timeout...
const SLEEPERS: i32 = 4;
/// ... each at most this often.
const SLEEPER_EVERY: Duration = Duration::from_secs(10);
/// Failure messages kept for the report (all are counted).
const FAILURES_KEPT: usize = 40;

fn settings(pool_size: usize) -> String {
    format!(
        "auth_type = md5\npool_mode = transaction\nmax_client_conn = 200\n\
         default_pool_size = {pool_size}\nquery_wait_timeout = {}\n\
         idle_transaction_timeout = {}\n",
        QUERY_WAIT_TIMEOUT.as_secs(),
        IDLE_TRANSACTION_TIMEOUT.as_secs()
    )
}

/// What the whole run shares: where to connect, when to stop, what happened.
struct Ctx {
    seed: u64,
    port: u16,
    /// Clients and chaos stop their random work.
    stop: AtomicBool,
    /// The chaos is over and the pool restored: clients do their final checked query.
    finals: AtomicBool,
    tally: Mutex<Tally>,
    started: Instant,
    /// default_pool_size as last RELOADed.
    pool_size: AtomicUsize,
    /// The chaos's events: (seconds since the start, what).
    events: Mutex<Vec<(f64, String)>>,
    /// The latest cancel requests clients sent: (when, client, sent after its answer).
    cancels: Mutex<std::collections::VecDeque<(Instant, i32, bool)>>,
}

#[derive(Default)]
struct Tally {
    ok: BTreeMap<&'static str, u64>,
    /// "action: what" for each error the chaos explains.
    explained: BTreeMap<String, u64>,
    chaos: BTreeMap<&'static str, u64>,
    failures: Vec<String>,
    failure_count: usize,
    reconnects: u64,
}

impl Ctx {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fail(&self, who: &str, msg: impl AsRef<str>) {
        let line = format!(
            "[seed {} t={:.1}s] {who}: {}",
            self.seed,
            self.started.elapsed().as_secs_f64(),
            msg.as_ref()
        );
        eprintln!("STRESS FAILURE {line}");
        let mut t = self.tally();
        t.failure_count += 1;
        if t.failures.len() < FAILURES_KEPT {
            t.failures.push(line);
        }
    }

    fn ok(&self, action: &'static str) {
        *self.tally().ok.entry(action).or_default() += 1;
    }

    fn explained(&self, action: &str, what: &str) {
        *self
            .tally()
            .explained
            .entry(format!("{action}: {what}"))
            .or_default() += 1;
    }

    fn chaos(&self, what: &'static str, detail: String) {
        *self.tally().chaos.entry(what).or_default() += 1;
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if events.len() < 10_000 {
            events.push((self.started.elapsed().as_secs_f64(), detail));
        }
    }

    fn cancel_sent(&self, id: i32, at: Instant, after_answer: bool) {
        let mut c = self
            .cancels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.len() >= 2000 {
            c.pop_front();
        }
        c.push_back((at, id, after_answer));
    }

    /// Other clients' cancel requests in the last second, for a stray 57014.
    fn recent_cancels(&self, not: i32) -> String {
        let c = self
            .cancels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let recent: Vec<String> = c
            .iter()
            .filter(|(at, id, _)| *id != not && at.elapsed() < Duration::from_secs(1))
            .map(|(at, id, after)| {
                format!(
                    "client {id} {} ms ago{}",
                    at.elapsed().as_millis(),
                    if *after {
                        " (sent after its answer)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        format!("other clients' cancel requests in the last second: {recent:?}")
    }

    fn last_event(&self) -> String {
        let events = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match events.last() {
            Some((t, e)) => format!("{e} at {t:.3}s"),
            None => "nothing".into(),
        }
    }
}

/// Why an action did not complete normally.
#[derive(Debug)]
enum Fail {
    /// An error the chaos explains (the connection may be gone).
    Explained(String),
    /// A wrong answer, or an error nothing explains: the test fails.
    Wrong(String),
}

/// Sort an error into explained by the chaos or not.
fn judge(e: &tokio_postgres::Error, cancelled_at: Option<Instant>) -> Fail {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let msg = db.message();
        let kind = match code {
            "57P01" => Some("57P01 admin shutdown (pg_terminate_backend)"),
            "08006" => Some("08006 server conn crashed"),
            "08P01" if msg == "query_wait_timeout" => Some("query_wait_timeout"),
            "08P01" if msg.contains("idle transaction timeout") => Some("idle_transaction_timeout"),
            "57014" if cancelled_at.is_some_and(|t| t.elapsed() < LATE_CANCEL) => {
                Some("57014 own cancel arriving late")
            }
            _ => None,
        };
        return match kind {
            Some(k) => Fail::Explained(k.to_string()),
            None => Fail::Wrong(format!(
                "unexplained error {code} ({}): {msg}",
                db.severity()
            )),
        };
    }
    if e.is_closed() {
        return Fail::Explained("connection closed".into());
    }
    let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
    if let Some(io) = io {
        // A connection the pooler cut; not a login that timed out or was refused.
        use std::io::ErrorKind::*;
        if matches!(
            io.kind(),
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
        ) {
            return Fail::Explained(format!("io error {:?}", io.kind()));
        }
    }
    Fail::Wrong(format!("unexplained error: {e}"))
}

/// One client connection through the pooler with its named statements, prepared once
/// and used across many transactions (and server connections).
struct Conn {
    client: Client,
    task: JoinHandle<()>,
    /// `SELECT $1::int4 * 2 + $2::int4, $3::text`
    calc: Statement,
    /// `SELECT count(*), sum(g) FROM generate_series(1, $1) g`
    series: Statement,
    /// `SELECT g, repeat('x', g % 7) FROM generate_series(1, $1) g`
    rows: Statement,
    /// `UPDATE counters SET n = n + 1 WHERE id = $1 RETURNING n`
    bump: Statement,
    /// `SELECT pg_sleep($1), $2::int4`
    sleep: Statement,
}

impl Conn {
    async fn open(port: u16) -> Result<Conn, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={port} user=app password='{APP_PASSWORD}' dbname=appdb \
                 connect_timeout=10"
            ),
            NoTls,
        )
        .await?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        // Dropped (aborting the connection) if a prepare fails.
        let guard = AbortOnDrop(Some(task));
        let calc = client
            .prepare("SELECT $1::int4 * 2 + $2::int4, $3::text")
            .await?;
        let series = client
            .prepare(
                "SELECT count(*), coalesce(sum(g), 0)::int8 FROM generate_series(1, $1::int4) g",
            )
            .await?;
        let rows = client
            .prepare("SELECT g, repeat('x', g % 7) FROM generate_series(1, $1::int4) g")
            .await?;
        let bump = client
            .prepare("UPDATE counters SET n = n + 1 WHERE id = $1::int4 RETURNING n")
            .await?;
        let sleep = client
            .prepare("SELECT pg_sleep($1::float8)::text, $2::int4")
            .await?;
        Ok(Conn {
            client,
            task: guard.take(),
            calc,
            series,
            rows,
            bump,
            sleep,
        })
    }

    /// Cut the connection now, whatever is in flight.
    fn abort(self) {
        self.task.abort();
    }

    /// Close it as a client normally does (Terminate), waiting a little for that.
    async fn close(self) {
        let Conn { client, task, .. } = self;
        drop(client);
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

struct AbortOnDrop(Option<JoinHandle<()>>);

impl AbortOnDrop {
    fn take(mut self) -> JoinHandle<()> {
        match self.0.take() {
            Some(t) => t,
            None => tokio::spawn(async {}),
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// A client's knowledge of its own row in `counters`.
#[derive(Debug, Clone, Copy, Default)]
struct Counter {
    /// The committed value, as far as the client knows.
    expected: i64,
    /// A COMMIT was sent and no answer came: the row holds `expected` or `expected + 1`.
    in_doubt: bool,
}

impl Counter {
    /// The value an `UPDATE ... RETURNING n` inside our transaction returned (it waited
    /// for any older transaction on the row to end): settles a doubt; the committed base.
    fn bumped(&mut self, returned: i64) -> Result<i64, Fail> {
        let ok = returned == self.expected + 1 || (self.in_doubt && returned == self.expected + 2);
        if !ok {
            return Err(Fail::Wrong(format!(
                "counter: UPDATE returned {returned}, expected {} (in doubt: {})",
                self.expected + 1,
                self.in_doubt
            )));
        }
        self.expected = returned - 1;
        self.in_doubt = false;
        Ok(returned - 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Simple,
    Unnamed,
    NamedReuse,
    AdHocNamed,
    Pipeline,
    LongResult,
    TxCommit,
    TxRollback,
    TxError,
    Cancel,
    DropMidResult,
    DropMidTx,
    IdleInTx,
    Reconnect,
}

/// Weights per thousand.
const ACTIONS: &[(Action, u32)] = &[
    (Action::Simple, 150),
    (Action::Unnamed, 120),
    (Action::NamedReuse, 170),
    (Action::AdHocNamed, 70),
    (Action::Pipeline, 70),
    (Action::LongResult, 50),
    (Action::TxCommit, 160),
    (Action::TxRollback, 50),
    (Action::TxError, 40),
    (Action::Cancel, 25),
    (Action::DropMidResult, 20),
    (Action::DropMidTx, 25),
    (Action::IdleInTx, 10),
    (Action::Reconnect, 40),
];

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Simple => "simple query",
            Action::Unnamed => "extended, unnamed",
            Action::NamedReuse => "named prepared, reused",
            Action::AdHocNamed => "named prepared, ad hoc",
            Action::Pipeline => "pipeline of 3",
            Action::LongResult => "long result",
            Action::TxCommit => "transaction, commit",
            Action::TxRollback => "transaction, rollback",
            Action::TxError => "transaction, error + rollback",
            Action::Cancel => "cancelled pg_sleep",
            Action::DropMidResult => "drop mid-result",
            Action::DropMidTx => "drop mid-transaction",
            Action::IdleInTx => "idle in transaction past timeout",
            Action::Reconnect => "reconnect",
        }
    }

    fn pick(rng: &mut StdRng) -> Action {
        let total: u32 = ACTIONS.iter().map(|(_, w)| w).sum();
        let mut x = rng.random_range(0..total);
        for &(a, w) in ACTIONS {
            if x < w {
                return a;
            }
            x -= w;
        }
        Action::Simple
    }
}

fn conn(c: &Option<Conn>) -> Result<&Conn, Fail> {
    c.as_ref()
        .ok_or_else(|| Fail::Explained("no connection".into()))
}

fn want<T: PartialEq + std::fmt::Debug>(what: &str, got: T, expected: T) -> Result<(), Fail> {
    if got == expected {
        Ok(())
    } else {
        Err(Fail::Wrong(format!(
            "{what}: got {got:?}, expected {expected:?}"
        )))
    }
}

fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    i: usize,
) -> Result<T, Fail> {
    row.try_get(i)
        .map_err(|e| Fail::Wrong(format!("column {i}: {e}")))
}

/// The data rows of a simple-protocol answer, as text.
fn text_rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

struct Worker {
    id: i32,
    ctx: Arc<Ctx>,
    rng: StdRng,
    conn: Option<Conn>,
    counter: Counter,
    seq: u64,
    /// When this client last sent a cancel request.
    cancelled_at: Option<Instant>,
    last_idle_in_tx: Option<Instant>,
    served: u64,
}

/// What a client task reports at the end.
struct Report {
    id: i32,
    counter: Counter,
    served: u64,
}

impl Worker {
    fn who(&self) -> String {
        format!("client {}", self.id)
    }

    fn token(&mut self) -> String {
        self.seq += 1;
        format!("c{}-{}", self.id, self.seq)
    }

    fn judge(&self, e: &tokio_postgres::Error) -> Fail {
        judge(e, self.cancelled_at)
    }

    /// Log in (and prepare) again, retrying errors the chaos explains, bounded.
    async fn reconnect(&mut self) -> bool {
        if let Some(c) = self.conn.take() {
            c.abort();
        }
        let started = Instant::now();
        for attempt in 0..200u32 {
            if started.elapsed() > ANSWER_BOUND {
                break;
            }
            match tokio::time::timeout(ANSWER_BOUND, Conn::open(self.ctx.port)).await {
                Ok(Ok(c)) => {
                    self.conn = Some(c);
                    self.ctx.tally().reconnects += 1;
                    return true;
                }
                Ok(Err(e)) => match self.judge(&e) {
                    Fail::Explained(what) => self.ctx.explained("login + prepare", &what),
                    Fail::Wrong(m) => {
                        self.ctx.fail(&self.who(), format!("login + prepare: {m}"));
                    }
                },
                Err(_) => {
                    self.ctx.fail(
                        &self.who(),
                        format!("login + prepare: no answer within {ANSWER_BOUND:?}"),
                    );
                }
            }
            if self.ctx.stop.load(Ordering::Relaxed) && attempt > 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50 + 20 * u64::from(attempt.min(20)))).await;
        }
        self.ctx.fail(
            &self.who(),
            format!(
                "could not log in again within {:?}",
                started.elapsed().min(ANSWER_BOUND)
            ),
        );
        false
    }

    async fn run(mut self) -> Report {
        let mut actions = 0u64;
        while !self.ctx.stop.load(Ordering::Relaxed) && actions < 10_000_000 {
            actions += 1;
            if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) && !self.reconnect().await {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            let mut action = Action::pick(&mut self.rng);
            if action == Action::IdleInTx
                && (self.id >= SLEEPERS
                    || self
                        .last_idle_in_tx
                        .is_some_and(|t| t.elapsed() < SLEEPER_EVERY))
            {
                action = Action::NamedReuse;
            }
            self.step(action).await;
            let think = self.rng.random_range(5..60);
            tokio::time::sleep(Duration::from_millis(think)).await;
        }

        // Wait (bounded) for the chaos to end and the pool to be restored.
        let wait = Instant::now();
        while !self.ctx.finals.load(Ordering::Relaxed) && wait.elapsed() < ANSWER_BOUND * 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.final_check().await;
        if let Some(c) = self.conn.take() {
            c.close().await;
        }
        Report {
            id: self.id,
            counter: self.counter,
            served: self.served,
        }
    }

    /// Run one action, bounded, and sort out what happened.
    async fn step(&mut self, action: Action) {
        let name = action.name();
        match tokio::time::timeout(ANSWER_BOUND, self.act(action)).await {
            Ok(Ok(())) => {
                self.served += 1;
                self.ctx.ok(name);
            }
            Ok(Err(Fail::Explained(what))) => {
                self.ctx.explained(name, &what);
                self.recover().await;
            }
            Ok(Err(Fail::Wrong(m))) => {
                let m = if m.contains("57014") {
                    format!(
                        "{m} [own last cancel: {:?} ago; {}]",
                        self.cancelled_at.map(|t| t.elapsed()),
                        self.ctx.recent_cancels(self.id)
                    )
                } else {
                    m
                };
                self.ctx.fail(&self.who(), format!("{name}: {m}"));
                if let Some(c) = self.conn.take() {
                    c.abort();
                }
            }
            Err(_) => {
                self.ctx.fail(
                    &self.who(),
                    format!("{name}: no answer within {ANSWER_BOUND:?} (starved?)"),
                );
                if let Some(c) = self.conn.take() {
                    c.abort();
                }
            }
        }
    }

    /// After an explained error: keep the connection if it is still usable outside a
    /// transaction, else drop it (the next step logs in again).
    async fn recover(&mut self) {
        let Some(c) = self.conn.as_ref() else { return };
        if c.client.is_closed() {
            self.conn = None;
            return;
        }
        let rolled_back =
            tokio::time::timeout(Duration::from_secs(10), c.client.batch_execute("ROLLBACK")).await;
        match rolled_back {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if let Fail::Wrong(m) = self.judge(&e) {
                    self.ctx
                        .fail(&self.who(), format!("ROLLBACK after an error: {m}"));
                }
                if let Some(c) = self.conn.take() {
                    c.abort();
                }
            }
            Err(_) => {
                self.ctx.fail(
                    &self.who(),
                    "ROLLBACK after an error: no answer within 10 s",
                );
                if let Some(c) = self.conn.take() {
                    c.abort();
                }
            }
        }
    }

    async fn act(&mut self, action: Action) -> Result<(), Fail> {
        match action {
            Action::Simple => self.simple().await,
            Action::Unnamed => self.unnamed().await,
            Action::NamedReuse => self.named_reuse().await,
            Action::AdHocNamed => self.ad_hoc_named().await,
            Action::Pipeline => self.pipeline().await,
            Action::LongResult => self.long_result().await,
            Action::TxCommit => self.tx_commit().await,
            Action::TxRollback => self.tx_rollback().await,
            Action::TxError => self.tx_error().await,
            Action::Cancel => self.cancel().await,
            Action::DropMidResult => self.drop_mid_result().await,
            Action::DropMidTx => self.drop_mid_tx().await,
            Action::IdleInTx => self.idle_in_tx().await,
            Action::Reconnect => {
                if let Some(c) = self.conn.take() {
                    c.close().await;
                }
                if self.reconnect().await {
                    Ok(())
                } else {
                    Err(Fail::Explained("could not log in again".into()))
                }
            }
        }
    }

    /// Two statements in one simple-protocol query.
    async fn simple(&mut self) -> Result<(), Fail> {
        let a: i32 = self.rng.random_range(-100_000..100_000);
        let b: i32 = self.rng.random_range(-100_000..100_000);
        let token = self.token();
        let c = conn(&self.conn)?;
        let msgs = c
            .client
            .simple_query(&format!(
                "SELECT {a} + {b}, '{token}'; SELECT ({a})::int8 * 3"
            ))
            .await
            .map_err(|e| judge(&e, self.cancelled_at))?;
        want(
            "simple query rows",
            text_rows(&msgs),
            vec![
                vec![Some((a + b).to_string()), Some(token)],
                vec![Some((i64::from(a) * 3).to_string())],
            ],
        )
    }

    /// An unnamed statement with typed parameters.
    async fn unnamed(&mut self) -> Result<(), Fail> {
        let x: i32 = self.rng.random_range(-1_000_000..1_000_000);
        let token = self.token();
        let c = conn(&self.conn)?;
        let rows = c
            .client
            .query_typed(
                "SELECT $1::int4 + 1, $2::text || '/u'",
                &[
                    (&x as &(dyn ToSql + Sync), Type::INT4),
                    (&token, Type::TEXT),
                ],
            )
            .await
            .map_err(|e| judge(&e, self.cancelled_at))?;
        want("unnamed row count", rows.len(), 1)?;
        want("unnamed sum", col::<i32>(&rows[0], 0)?, x + 1)?;
        want(
            "unnamed token",
            col::<String>(&rows[0], 1)?,
            format!("{token}/u"),
        )
    }

    /// The statement prepared at login, used again (on whatever server is free).
    async fn named_reuse(&mut self) -> Result<(), Fail> {
        let a: i32 = self.rng.random_range(-1_000_000..1_000_000);
        let b: i32 = self.rng.random_range(-1_000_000..1_000_000);
        let token = self.token();
        let c = conn(&self.conn)?;
        let row = c
            .client
            .query_one(&c.calc, &[&a, &b, &token])
            .await
            .map_err(|e| judge(&e, self.cancelled_at))?;
        want("named calc", col::<i32>(&row, 0)?, a * 2 + b)?;
        want("named token", col::<String>(&row, 1)?, token)
    }

    /// tokio-postgres prepares a named statement, runs it, closes it.
    async fn ad_hoc_named(&mut self) -> Result<(), Fail> {
        let x: i64 = self.rng.random_range(-1_000_000_000..1_000_000_000);
        let y: i64 = self.rng.random_range(-1_000_000_000..1_000_000_000);
        let c = conn(&self.conn)?;
        let row = c
            .client
            .query_one("SELECT $1::int8 - $2::int8, $1::int8 + $2::int8", &[&x, &y])
            .await
            .map_err(|e| judge(&e, self.cancelled_at))?;
        want("ad hoc difference", col::<i64>(&row, 0)?, x - y)?;
        want("ad hoc sum", col::<i64>(&row, 1)?, x + y)
    }

    /// Three queries sent back to back before any answer (each its own Sync).
    async fn pipeline(&mut self) -> Result<(), Fail> {
        let a: i32 = self.rng.random_range(-1000..1000);
        let b: i32 = self.rng.random_range(-1000..1000);
        let n: i32 = self.rng.random_range(1..500);
        let t1 = self.token();
        let t2 = self.token();
        let c = conn(&self.conn)?;
        let p1: [&(dyn ToSql + Sync); 3] = [&a, &b, &t1];
        let p2: [(&(dyn ToSql + Sync), Type); 1] = [(&t2, Type::TEXT)];
        let p3: [&(dyn ToSql + Sync); 1] = [&n];
        let (r1, r2, r3) = tokio::join!(
            c.client.query_one(&c.calc, &p1),
            c.client.query_typed("SELECT $1::text || '!'", &p2),
            c.client.query_one(&c.series, &p3),
        );
        let j = |e: tokio_postgres::Error| judge(&e, self.cancelled_at);
        let (r1, r2, r3) = (r1.map_err(j)?, r2.map_err(j)?, r3.map_err(j)?);
        want("pipeline calc", col::<i32>(&r1, 0)?, a * 2 + b)?;
        want("pipeline token 1", col::<String>(&r1, 1)?, t1)?;
        want("pipeline rows", r2.len(), 1)?;
        want(
            "pipeline token 2",
            col::<String>(&r2[0], 0)?,
            format!("{t2}!"),
        )?;
        want("pipeline count", col::<i64>(&r3, 0)?, i64::from(n))?;
        want(
            "pipeline sum",
            col::<i64>(&r3, 1)?,
            i64::from(n) * i64::from(n + 1) / 2,
        )
    }

    /// Thousands of rows, every one checked.
    async fn long_result(&mut self) -> Result<(), Fail> {
        let n: i32 = self.rng.random_range(1000..20_000);
        let c = conn(&self.conn)?;
        let rows = c
            .client
            .query(&c.rows, &[&n])
            .await
            .map_err(|e| judge(&e, self.cancelled_at))?;
        want("long result row count", rows.len(), n as usize)?;
        for (i, row) in rows.iter().enumerate() {
            let g = col::<i32>(row, 0)?;
            want("long result g", g, i as i32 + 1)?;
            want(
                "long result text length",
                col::<String>(row, 1)?.len(),
                (g % 7) as usize,
            )?;
        }
        Ok(())
    }

    /// BEGIN, bump the client's own counter (checked), maybe another statement; the
    /// committed base value.
    async fn begin_and_bump(&mut self) -> Result<i64, Fail> {
        let id = self.id;
        let simple_begin = self.rng.random_bool(0.3);
        let c = conn(&self.conn)?;
        let returned: i64 = if simple_begin {
            // BEGIN and the UPDATE in one simple-protocol query.
            let msgs = c
                .client
                .simple_query(&format!(
                    "BEGIN; UPDATE counters SET n = n + 1 WHERE id = {id} RETURNING n"
                ))
                .await
                .map_err(|e| judge(&e, self.cancelled_at))?;
            let rows = text_rows(&msgs);
            let n = rows
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .and_then(|v| v.parse().ok());
            match n {
                Some(n) => n,
                None => return Err(Fail::Wrong(format!("UPDATE RETURNING rows: {rows:?}"))),
            }
        } else {
            c.client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| judge(&e, self.cancelled_at))?;
            let row = c
                .client
                .query_one(&c.bump, &[&id])
                .await
                .map_err(|e| judge(&e, self.cancelled_at))?;
            col::<i64>(&row, 0)?
        };
        self.counter.bumped(returned)
    }

    async fn tx_commit(&mut self) -> Result<(), Fail> {
        let base = self.begin_and_bump().await?;
        if self.rng.random_bool(0.5) {
            self.named_reuse().await?;
        }
        let c = conn(&self.conn)?;
        match c.client.batch_execute("COMMIT").await {
            Ok(()) => {
                self.counter.expected = base + 1;
                Ok(())
            }
            Err(e) => {
                // The COMMIT may or may not have happened.
                self.counter.in_doubt = true;
                Err(judge(&e, self.cancelled_at))
            }
        }
    }

    async fn tx_rollback(&mut self) -> Result<(), Fail> {
        self.begin_and_bump().await?;
        if self.rng.random_bool(0.5) {
            self.unnamed().await?;
        }
        let c = conn(&self.conn)?;
        c.client
            .batch_execute("ROLLBACK")
            .await
            .map_err(|e| judge(&e, self.cancelled_at))
    }

    /// A statement fails inside the transaction: the error, then 25P02 for the next
    /// statement, then ROLLBACK, then the connection works normally.
    async fn tx_error(&mut self) -> Result<(), Fail> {
        self.begin_and_bump().await?;
        let c = conn(&self.conn)?;
        match c.client.simple_query("SELECT 1 / 0").await {
            Ok(m) => return Err(Fail::Wrong(format!("1 / 0 answered {:?}", text_rows(&m)))),
            Err(e) if e.code().is_some_and(|s| s.code() == "22012") => {}
            Err(e) => return Err(judge(&e, self.cancelled_at)),
        }
        match c.client.query_one(&c.calc, &[&1i32, &2i32, &"x"]).await {
            Ok(_) => {
                return Err(Fail::Wrong(
                    "a statement ran in an aborted transaction".into(),
                ))
            }
            Err(e) if e.code().is_some_and(|s| s.code() == "25P02") => {}
            Err(e) => return Err(judge(&e, self.cancelled_at)),
        }
        c.client
            .batch_execute("ROLLBACK")
            .await
            .map_err(|e| judge(&e, self.cancelled_at))?;
        self.named_reuse().await
    }

    /// `pg_sleep` with a cancel request after a random delay (maybe after the answer).
    async fn cancel(&mut self) -> Result<(), Fail> {
        let secs: f64 = self.rng.random_range(0.05..0.4);
        let delay = Duration::from_millis(self.rng.random_range(0..500));
        let v: i32 = self.rng.random_range(0..1_000_000);
        let c = conn(&self.conn)?;
        let token = c.client.cancel_token();
        let params: [&(dyn ToSql + Sync); 2] = [&secs, &v];
        let ((res, answered_at), (cancelled, sent_at)) = tokio::join!(
            async {
                let r = c.client.query_one(&c.sleep, &params).await;
                (r, Instant::now())
            },
            async {
                tokio::time::sleep(delay).await;
                let at = Instant::now();
                (token.cancel_query(NoTls).await, at)
            }
        );
        self.cancelled_at = Some(Instant::now());
        let after_answer = sent_at >= answered_at;
        self.ctx.cancel_sent(self.id, sent_at, after_answer);
        if after_answer {
            self.ctx.explained(
                "cancelled pg_sleep (expected)",
                "cancel request sent after the answer",
            );
        }
        if let Err(e) = cancelled {
            return Err(Fail::Wrong(format!("cancel request failed: {e}")));
        }
        match res {
            Ok(row) => want("pg_sleep value", col::<i32>(&row, 1)?, v),
            Err(e) if e.code().is_some_and(|s| s.code() == "57014") => {
                self.ctx
                    .explained("cancelled pg_sleep (expected)", "57014 canceled");
                Ok(())
            }
            Err(e) => Err(judge(&e, self.cancelled_at)),
        }
    }

    /// Start a big result and cut the connection while it streams in.
    async fn drop_mid_result(&mut self) -> Result<(), Fail> {
        let n: i32 = 50_000;
        let after = Duration::from_millis(self.rng.random_range(1..25));
        let c = conn(&self.conn)?;
        let params: [&(dyn ToSql + Sync); 1] = [&n];
        let answered = tokio::select! {
            r = c.client.query(&c.series, &params) => Some(r),
            _ = tokio::time::sleep(after) => None,
        };
        match answered {
            Some(r) => {
                let rows = r.map_err(|e| judge(&e, self.cancelled_at))?;
                want("series rows", rows.len(), 1)?;
                want("series count", col::<i64>(&rows[0], 0)?, i64::from(n))?;
                if let Some(c) = self.conn.take() {
                    c.abort();
                }
            }
            None => {
                if let Some(c) = self.conn.take() {
                    c.abort();
                }
            }
        }
        // A big streamed result, cut: the rows statement.
        if !self.reconnect().await {
            return Err(Fail::Explained("could not log in again".into()));
        }
        let n: i32 = 200_000;
        let after = Duration::from_millis(self.rng.random_range(1..40));
        let c = conn(&self.conn)?;
        let params: [&(dyn ToSql + Sync); 1] = [&n];
        tokio::select! {
            r = c.client.query(&c.rows, &params) => {
                let rows = r.map_err(|e| judge(&e, self.cancelled_at))?;
                want("rows count", rows.len(), n as usize)?;
            }
            _ = tokio::time::sleep(after) => {}
        }
        if let Some(c) = self.conn.take() {
            c.abort();
        }
        Ok(())
    }

    /// Inside a transaction (its UPDATE done), cut the connection: idle, or during a
    /// statement. Nothing was committed.
    async fn drop_mid_tx(&mut self) -> Result<(), Fail> {
        self.begin_and_bump().await?;
        if self.rng.random_bool(0.5) {
            let after = Duration::from_millis(self.rng.random_range(5..150));
            let c = conn(&self.conn)?;
            let params: [&(dyn ToSql + Sync); 2] = [&0.3f64, &7i32];
            tokio::select! {
                r = c.client.query_one(&c.sleep, &params) => {
                    let row = r.map_err(|e| judge(&e, self.cancelled_at))?;
                    want("pg_sleep value", col::<i32>(&row, 1)?, 7)?;
                }
                _ = tokio::time::sleep(after) => {}
            }
        }
        if let Some(c) = self.conn.take() {
            c.abort();
        }
        Ok(())
    }

    /// Sit inside a transaction longer than idle_transaction_timeout: the pooler must
    /// end the client.
    async fn idle_in_tx(&mut self) -> Result<(), Fail> {
        self.last_idle_in_tx = Some(Instant::now());
        self.begin_and_bump().await?;
        tokio::time::sleep(IDLE_TRANSACTION_TIMEOUT + Duration::from_millis(1500)).await;
        let c = conn(&self.conn)?;
        let r = c.client.simple_query("SELECT 1").await;
        if let Some(c) = self.conn.take() {
            c.abort();
        }
        match r {
            Ok(_) => Err(Fail::Wrong(format!(
                "idle in transaction for {:?}: still served (idle_transaction_timeout = {:?})",
                IDLE_TRANSACTION_TIMEOUT + Duration::from_millis(1500),
                IDLE_TRANSACTION_TIMEOUT
            ))),
            Err(e) => match judge(&e, self.cancelled_at) {
                Fail::Explained(what) => {
                    self.ctx.explained("idle in transaction (expected)", &what);
                    Ok(())
                }
                wrong => Err(wrong),
            },
        }
    }

    /// After the chaos: this client must be served, right, on its first try.
    async fn final_check(&mut self) {
        let reconnected = match self.conn.as_ref() {
            Some(c) if !c.client.is_closed() => true,
            _ => self.reconnect().await,
        };
        if !reconnected {
            self.ctx
                .fail(&self.who(), "final: could not log in after the chaos");
            return;
        }
        for action in [
            Action::NamedReuse,
            Action::Simple,
            Action::Unnamed,
            Action::TxCommit,
            Action::Pipeline,
        ] {
            match tokio::time::timeout(ANSWER_BOUND, self.act(action)).await {
                Ok(Ok(())) => self.ctx.ok("final check"),
                Ok(Err(f)) => {
                    self.ctx.fail(
                        &self.who(),
                        format!("final {} after the chaos: {f:?}", action.name()),
                    );
                    return;
                }
                Err(_) => {
                    self.ctx.fail(
                        &self.who(),
                        format!(
                            "final {} after the chaos: no answer within {ANSWER_BOUND:?}",
                            action.name()
                        ),
                    );
                    return;
                }
            }
        }
    }
}

/// Rewrite the ini with `pool_size` and RELOAD through the admin console.
async fn reload(
    ctx: &Ctx,
    p: &common::Pooler,
    pg: &Instance,
    pool_size: usize,
) -> Result<(), String> {
    let userlist = p.ini.with_file_name("userlist.txt");
    std::fs::write(
        &p.ini,
        ini_text(pg, p.port, &userlist, &settings(pool_size)),
    )
    .map_err(|e| format!("write ini: {e}"))?;
    let admin = admin(p.port).await?;
    tokio::time::timeout(Duration::from_secs(10), admin.simple_query("RELOAD"))
        .await
        .map_err(|_| "RELOAD: no answer in 10 s".to_string())?
        .map_err(|e| format!("RELOAD: {e}"))?;
    ctx.pool_size.store(pool_size, Ordering::Relaxed);
    ctx.chaos(
        "RELOAD with a new pool size",
        format!("RELOAD default_pool_size = {pool_size}"),
    );
    Ok(())
}

async fn admin(port: u16) -> Result<Client, String> {
    tokio::time::timeout(
        Duration::from_secs(10),
        common::connect(port, "postgres", ADMIN_PASSWORD, "pgbouncer"),
    )
    .await
    .map_err(|_| "admin console: no login in 10 s".to_string())?
    .map_err(|e| format!("admin console: {e}"))
}

/// `SHOW <what>` on the admin console as a list of column -> value maps.
async fn show(port: u16, what: &str) -> Result<Vec<BTreeMap<String, String>>, String> {
    let admin = admin(port).await?;
    let msgs = tokio::time::timeout(
        Duration::from_secs(10),
        admin.simple_query(&format!("SHOW {what}")),
    )
    .await
    .map_err(|_| format!("SHOW {what}: no answer in 10 s"))?
    .map_err(|e| format!("SHOW {what}: {e}"))?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// The appdb/app row of SHOW POOLS and each server of SHOW SERVERS, in short.
async fn console_view(port: u16) -> String {
    let pick = |row: &BTreeMap<String, String>, keys: &[&str]| -> String {
        keys.iter()
            .map(|k| format!("{k}={}", row.get(*k).map(String::as_str).unwrap_or("?")))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = String::new();
    match show(port, "POOLS").await {
        Ok(rows) => {
            for r in rows
                .iter()
                .filter(|r| r.get("database").map(String::as_str) == Some("appdb"))
            {
                out.push_str(&format!(
                    "        SHOW POOLS: {}\n",
                    pick(
                        r,
                        &[
                            "cl_active",
                            "cl_waiting",
                            "sv_active",
                            "sv_idle",
                            "sv_used",
                            "sv_tested",
                            "sv_login",
                            "maxwait_us",
                        ]
                    )
                ));
            }
        }
        Err(e) => out.push_str(&format!("        SHOW POOLS: {e}\n")),
    }
    match show(port, "SERVERS").await {
        Ok(rows) => {
            let servers: Vec<String> = rows
                .iter()
                .map(|r| pick(r, &["remote_pid", "state", "link", "close_needed"]))
                .collect();
            out.push_str(&format!("        SHOW SERVERS: {}\n", servers.join("; ")));
        }
        Err(e) => out.push_str(&format!("        SHOW SERVERS: {e}\n")),
    }
    out
}

/// appdb/app's (cl_active, cl_waiting, sv_active) from SHOW POOLS.
async fn pool_counts(port: u16) -> Result<(i64, i64, i64), String> {
    let pools = show(port, "POOLS").await?;
    let row = pools
        .iter()
        .find(|r| {
            r.get("database").map(String::as_str) == Some("appdb")
                && r.get("user").map(String::as_str) == Some("app")
        })
        .ok_or_else(|| format!("no appdb/app pool in {pools:?}"))?;
    let n = |k: &str| -> Result<i64, String> {
        row.get(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {k} in {row:?}"))
    };
    Ok((n("cl_active")?, n("cl_waiting")?, n("sv_active")?))
}

/// Server kills, pool resizes and bursts that outlast query_wait_timeout, until stopped.
async fn chaos(ctx: Arc<Ctx>, p: &common::Pooler, pg: &Instance, mut rng: StdRng) {
    let mut su: Option<Client> = None;
    let mut last_burst = Instant::now();
    for _ in 0..100_000 {
        let pause = Duration::from_millis(rng.random_range(300..2500));
        tokio::time::sleep(pause).await;
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let roll = rng.random_range(0..100);
        if roll < 50 {
            // pg_terminate_backend on one to three of app's server connections.
            if su.as_ref().is_none_or(Client::is_closed) {
                su = pg.connect().await.ok();
            }
            let Some(c) = su.as_ref() else {
                ctx.fail("chaos", "no superuser connection to PostgreSQL");
                continue;
            };
            let pids: Vec<i32> = match c
                .query(
                    "SELECT pid FROM pg_stat_activity WHERE usename = 'app' ORDER BY pid",
                    &[],
                )
                .await
            {
                Ok(rows) => rows.iter().filter_map(|r| r.try_get(0).ok()).collect(),
                Err(e) => {
                    ctx.fail("chaos", format!("list backends: {e}"));
                    continue;
                }
            };
            if pids.is_empty() {
                continue;
            }
            let k = rng.random_range(1..=3usize).min(pids.len());
            let mut pids = pids;
            for _ in 0..k {
                let pid = pids.swap_remove(rng.random_range(0..pids.len()));
                if let Err(e) = c.execute("SELECT pg_terminate_backend($1)", &[&pid]).await {
                    ctx.fail("chaos", format!("pg_terminate_backend({pid}): {e}"));
                }
                ctx.chaos(
                    "pg_terminate_backend",
                    format!("pg_terminate_backend({pid})"),
                );
            }
        } else if roll < 85 || last_burst.elapsed() < Duration::from_secs(10) {
            let size = rng.random_range(2..=6usize);
            if let Err(e) = reload(&ctx, p, pg, size).await {
                ctx.fail("chaos", e);
            }
        } else {
            // Pool of 1, held by a statement longer than query_wait_timeout: waiting
            // clients time out.
            last_burst = Instant::now();
            if let Err(e) = reload(&ctx, p, pg, 1).await {
                ctx.fail("chaos", e);
                continue;
            }
            ctx.chaos(
                "burst: pool of 1 held past query_wait_timeout",
                "burst starts".into(),
            );
            let hold = QUERY_WAIT_TIMEOUT + Duration::from_millis(1500);
            let held = async {
                let c = Conn::open(ctx.port).await?;
                let r = c
                    .client
                    .query_one(&c.sleep, &[&hold.as_secs_f64(), &99i32])
                    .await;
                c.close().await;
                r
            };
            match tokio::time::timeout(ANSWER_BOUND, held).await {
                Ok(Ok(row)) => {
                    if row.try_get::<_, i32>(1).ok() != Some(99) {
                        ctx.fail("chaos holder", format!("wrong answer {row:?}"));
                    }
                }
                Ok(Err(e)) => match judge(&e, None) {
                    Fail::Explained(what) => ctx.explained("burst holder", &what),
                    Fail::Wrong(m) => ctx.fail("chaos holder", m),
                },
                Err(_) => ctx.fail("chaos holder", "no answer within the bound"),
            }
            ctx.chaos("burst over", "burst holder done".into());
            let size = rng.random_range(3..=6usize);
            if let Err(e) = reload(&ctx, p, pg, size).await {
                ctx.fail("chaos", e);
            }
        }
    }
    if let Err(e) = reload(&ctx, p, pg, BASE_POOL_SIZE).await {
        ctx.fail("chaos", format!("restoring the pool size: {e}"));
    }
}

/// What the invariant monitor saw.
#[derive(Default, Debug)]
struct Watch {
    checks: u64,
    violations: u64,
    /// Runs of consecutive violating checks of one pool (the first few).
    episodes: Vec<Episode>,
    episode_count: usize,
    /// The most consecutive checks of one pool that each saw a violation.
    longest_streak: u64,
    /// Runs of at most [`TRANSIENT_CHECKS`] checks (a hand-off seen half-way?).
    transient: usize,
}

/// A violation seen by at most this many consecutive checks counts as transient in the
/// report (it still fails the test).
const TRANSIENT_CHECKS: u64 = 2;
/// After this many consecutive violating checks, the console's view is recorded.
const SNAPSHOT_AFTER: u64 = 20;

#[derive(Debug)]
struct Episode {
    /// Seconds since the run started.
    from: f64,
    to: f64,
    checks: u64,
    first: String,
    /// The configured pool size when it began, and the chaos's last event before.
    pool_size: usize,
    after: String,
    /// SHOW POOLS / SHOW SERVERS while it lasted (for the first few long ones).
    console: Arc<Mutex<String>>,
}

const EPISODES_KEPT: usize = 20;

/// Check every pool's invariant every 5 ms until `done`.
async fn monitor(
    rt: Arc<pgherd_pooler::runtime::Runtime>,
    ctx: Arc<Ctx>,
    done: Arc<AtomicBool>,
    limit: Duration,
) -> Watch {
    let mut w = Watch::default();
    // pool (by address) -> (index of its open episode, or usize::MAX if not kept; streak).
    let mut open: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let started = Instant::now();
    let mut snapshots = 0;
    while !done.load(Ordering::Relaxed) && started.elapsed() < limit {
        for pool in rt.pools() {
            w.checks += 1;
            let key = format!("{:p}", Arc::as_ptr(&pool));
            let now = ctx.started.elapsed().as_secs_f64();
            match pool.check_invariant() {
                Ok(()) => {
                    if let Some((_, streak)) = open.remove(&key) {
                        if streak <= TRANSIENT_CHECKS {
                            w.transient += 1;
                        }
                    }
                }
                Err(m) => {
                    w.violations += 1;
                    let (at, streak) = open.entry(key.clone()).or_insert_with(|| {
                        w.episode_count += 1;
                        if w.episodes.len() < EPISODES_KEPT {
                            w.episodes.push(Episode {
                                from: now,
                                to: now,
                                checks: 0,
                                first: format!(
                                    "{m} (active {}, servers {})",
                                    pool.active(),
                                    pool.server_count()
                                ),
                                pool_size: ctx.pool_size.load(Ordering::Relaxed),
                                after: ctx.last_event(),
                                console: Arc::default(),
                            });
                            (w.episodes.len() - 1, 0)
                        } else {
                            (usize::MAX, 0)
                        }
                    });
                    *streak += 1;
                    w.longest_streak = w.longest_streak.max(*streak);
                    if let Some(e) = w.episodes.get_mut(*at) {
                        e.to = now;
                        e.checks = *streak;
                        if *streak == SNAPSHOT_AFTER && snapshots < 3 {
                            snapshots += 1;
                            let (console, port) = (e.console.clone(), ctx.port);
                            tokio::spawn(async move {
                                let text = console_view(port).await;
                                *console
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner) = text;
                            });
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    w
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workload_with_chaos_serves_every_client_with_right_answers() {
    let seed = env_u64("PGHERD_STRESS_SEED").unwrap_or_else(rand::random);
    let secs = env_u64("PGHERD_STRESS_SECS").unwrap_or(30);
    println!(
        "stress: seed {seed}, {secs} s (replay: PGHERD_STRESS_SEED={seed} PGHERD_STRESS_SECS={secs})"
    );
    let server = common::postgres("stress").await;
    let su = server.pg.connect().await.expect("superuser connection");
    su.batch_execute(&format!(
        "CREATE TABLE counters (id int4 PRIMARY KEY, n int8 NOT NULL);\n\
         INSERT INTO counters SELECT g, 0 FROM generate_series(0, {}) g;\n\
         GRANT ALL ON counters TO app",
        CLIENTS - 1
    ))
    .await
    .expect("counters table");
    let p = common::pooler(&server.pg, &settings(BASE_POOL_SIZE)).await;
    let ctx = Arc::new(Ctx {
        seed,
        port: p.port,
        stop: AtomicBool::new(false),
        finals: AtomicBool::new(false),
        tally: Mutex::new(Tally::default()),
        started: Instant::now(),
        pool_size: AtomicUsize::new(BASE_POOL_SIZE),
        events: Mutex::new(Vec::new()),
        cancels: Mutex::default(),
    });

    let monitor_done = Arc::new(AtomicBool::new(false));
    let watch = tokio::spawn(monitor(
        p.rt.clone(),
        ctx.clone(),
        monitor_done.clone(),
        Duration::from_secs(secs) + Duration::from_secs(600),
    ));
    let mut workers = Vec::new();
    for id in 0..CLIENTS as i32 {
        let w = Worker {
            id,
            ctx: ctx.clone(),
            rng: StdRng::seed_from_u64(seed.wrapping_add(1 + id as u64)),
            conn: None,
            counter: Counter::default(),
            seq: 0,
            cancelled_at: None,
            last_idle_in_tx: None,
            served: 0,
        };
        workers.push(tokio::spawn(w.run()));
    }
    let chaos_rng = StdRng::seed_from_u64(seed);
    let timer = async {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        ctx.stop.store(true, Ordering::Relaxed);
    };
    let bounded_chaos = tokio::time::timeout(
        Duration::from_secs(secs) + Duration::from_secs(120),
        chaos(ctx.clone(), &p, &server.pg, chaos_rng),
    );
    let (chaos_done, ()) = tokio::join!(bounded_chaos, timer);
    if chaos_done.is_err() {
        ctx.fail("chaos", "did not stop in time");
    }
    ctx.stop.store(true, Ordering::Relaxed);
    let chaos_over = ctx.started.elapsed();
    ctx.finals.store(true, Ordering::Relaxed);

    // Every client task ends (after its final checked query) and reports its counter.
    let mut reports = Vec::new();
    for (id, w) in workers.into_iter().enumerate() {
        let abort = w.abort_handle();
        match tokio::time::timeout(ANSWER_BOUND * 4, w).await {
            Ok(Ok(r)) => reports.push(r),
            Ok(Err(e)) => ctx.fail(&format!("client {id}"), format!("task failed: {e}")),
            Err(_) => {
                abort.abort();
                ctx.fail(&format!("client {id}"), "task did not end");
            }
        }
    }
    let clients_done = ctx.started.elapsed();

    // The pool returns to all idle.
    let settle = Instant::now();
    let mut idle = false;
    while settle.elapsed() < Duration::from_secs(10) {
        let pools = p.rt.pools();
        if pools
            .iter()
            .all(|pool| pool.waiting() == 0 && pool.active() == 0)
        {
            idle = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pool_state: Vec<String> =
        p.rt.pools()
            .iter()
            .map(|pool| {
                format!(
                    "waiting {}, active {}, idle {}, servers {}",
                    pool.waiting(),
                    pool.active(),
                    pool.idle_count(),
                    pool.server_count()
                )
            })
            .collect();
    if !idle {
        let dump = async {
            let mut out = String::new();
            for what in ["POOLS", "CLIENTS", "SERVERS"] {
                out.push_str(&format!("SHOW {what}: {:?}\n", show(p.port, what).await));
            }
            out
        };
        ctx.fail(
            "end",
            format!(
                "the pool is not all idle 10 s after the clients left: {pool_state:?}\n{}",
                dump.await
            ),
        );
    }
    // SHOW POOLS agrees (clients may take a moment to be forgotten).
    let mut counts = Err(String::new());
    for _ in 0..50 {
        counts = pool_counts(p.port).await;
        if counts == Ok((0, 0, 0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if counts != Ok((0, 0, 0)) {
        ctx.fail(
            "end",
            format!("SHOW POOLS (cl_active, cl_waiting, sv_active) = {counts:?}, want (0, 0, 0)"),
        );
    }
    // No server connection left inside a transaction.
    let busy: Vec<String> = match su
        .query(
            "SELECT pid::text || ' ' || coalesce(state, '?') || ' ' || left(coalesce(query, ''), 60) \
             FROM pg_stat_activity WHERE usename = 'app' AND state IS DISTINCT FROM 'idle'",
            &[],
        )
        .await
    {
        Ok(rows) => rows.iter().filter_map(|r| r.try_get(0).ok()).collect(),
        Err(e) => vec![format!("query failed: {e}")],
    };
    if !busy.is_empty() {
        ctx.fail("end", format!("app backends not idle: {busy:?}"));
    }
    // Every counter holds exactly the increments whose COMMIT succeeded.
    let rows = su
        .query("SELECT id, n FROM counters ORDER BY id", &[])
        .await
        .expect("read counters");
    let actual: BTreeMap<i32, i64> = rows
        .iter()
        .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?)))
        .collect();
    let mut in_doubt = 0;
    for r in &reports {
        let n = actual.get(&r.id).copied();
        let c = r.counter;
        let ok = n == Some(c.expected) || (c.in_doubt && n == Some(c.expected + 1));
        if c.in_doubt {
            in_doubt += 1;
        }
        if !ok {
            ctx.fail(
                &format!("client {}", r.id),
                format!(
                    "counter row holds {n:?}, expected {} (in doubt: {})",
                    c.expected, c.in_doubt
                ),
            );
        }
        if r.served == 0 {
            ctx.fail(&format!("client {}", r.id), "never served during the run");
        }
    }
    monitor_done.store(true, Ordering::Relaxed);
    let watch = watch.await.unwrap_or_default();
    let commits: i64 = reports.iter().map(|r| r.counter.expected).sum();

    let t = ctx.tally();
    let mut summary = format!(
        "stress summary (seed {seed}, {secs} s; chaos over at {:.1} s, clients done at {:.1} s, \
         {} clients, pool {BASE_POOL_SIZE} by default)\n",
        chaos_over.as_secs_f64(),
        clients_done.as_secs_f64(),
        CLIENTS
    );
    summary.push_str("  actions answered right:\n");
    for (k, v) in &t.ok {
        summary.push_str(&format!("    {v:>7}  {k}\n"));
    }
    summary.push_str("  errors explained by the chaos:\n");
    for (k, v) in &t.explained {
        summary.push_str(&format!("    {v:>7}  {k}\n"));
    }
    summary.push_str("  chaos:\n");
    for (k, v) in &t.chaos {
        summary.push_str(&format!("    {v:>7}  {k}\n"));
    }
    summary.push_str(&format!(
        "  logins (first ones and after drops): {}; committed increments: {commits}; clients with a COMMIT in \
         doubt: {in_doubt}\n  invariant: {} checks, {} violations (longest streak {} checks)\n\
         \x20 pool at the end: {pool_state:?}\n  failures (wrong answers, unexplained errors, \
         unserved clients): {}\n",
        t.reconnects, watch.checks, watch.violations, watch.longest_streak, t.failure_count
    ));
    if watch.episode_count > 0 {
        summary.push_str(&format!(
            "  invariant violated in {} run(s) of consecutive checks ({} transient: at most \
             {TRANSIENT_CHECKS} checks); the first {}:\n",
            watch.episode_count,
            watch.transient,
            watch.episodes.len()
        ));
    }
    for e in &watch.episodes {
        summary.push_str(&format!(
            "    {:.3}s..{:.3}s ({} checks) {}; default_pool_size {}, after {}\n",
            e.from, e.to, e.checks, e.first, e.pool_size, e.after
        ));
        summary.push_str(
            &e.console
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }
    for f in &t.failures {
        summary.push_str(&format!("  failure: {f}\n"));
    }
    if watch.violations > 0 || t.failure_count > 0 {
        let events = ctx
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        summary.push_str(&format!("  chaos timeline ({} events):\n", events.len()));
        for (at, e) in events.iter().take(300) {
            summary.push_str(&format!("    {at:8.3}s  {e}\n"));
        }
    }
    println!("{summary}");
    let replay = format!("replay with PGHERD_STRESS_SEED={seed} PGHERD_STRESS_SECS={secs}");
    assert!(
        watch.checks > 0,
        "seed {seed}: the invariant monitor never ran ({replay})"
    );
    assert_eq!(
        watch.violations, 0,
        "seed {seed}: the pool's invariant was violated, see the summary above ({replay})"
    );
    assert_eq!(
        t.failure_count, 0,
        "seed {seed}: failures, see the summary above ({replay})"
    );
}
