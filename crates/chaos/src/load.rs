//! The clients: a writer through the pooler's read-write port that records every
//! acknowledged id, a reader through the read-only port, and per member a split-brain
//! probe that writes directly to that member's PostgreSQL from inside its namespace.

use crate::lab::{self, SUPERUSER_PASSWORD};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

/// One probe write: when it was sent and, if acknowledged, when (ms since the run began).
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub sent: u64,
    pub acked: Option<u64>,
}

/// What the clients saw, shared with the runner.
pub struct Shared {
    pub start: Instant,
    /// The clients stop at this point at the latest, whatever happens.
    pub deadline: Instant,
    pub stop: AtomicBool,
    /// (id, ms) of every acknowledged insert.
    pub acked: Mutex<Vec<(i64, u64)>>,
    pub write_errors: AtomicU64,
    /// Inserts without an answer within the statement bound (neither acked nor refused).
    pub write_unknown: AtomicU64,
    pub reads_ok: AtomicU64,
    pub reads_failed: AtomicU64,
    /// Per member, every probe attempt.
    pub probes: Vec<Mutex<Vec<Attempt>>>,
}

impl Shared {
    pub fn new(members: usize, max_run: Duration) -> Arc<Shared> {
        let start = Instant::now();
        Arc::new(Shared {
            start,
            deadline: start + max_run,
            stop: AtomicBool::new(false),
            acked: Mutex::new(Vec::new()),
            write_errors: AtomicU64::new(0),
            write_unknown: AtomicU64::new(0),
            reads_ok: AtomicU64::new(0),
            reads_failed: AtomicU64::new(0),
            probes: (0..members).map(|_| Mutex::new(Vec::new())).collect(),
        })
    }

    pub fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < self.deadline
    }

    /// The time (ms) of the last acknowledged insert.
    pub fn last_ack(&self) -> Option<u64> {
        self.acked.lock().ok()?.last().map(|&(_, t)| t)
    }
}

/// Connect as the superuser to `addr:port`, within `within`.
pub async fn connect(addr: Ipv4Addr, port: u16, within: Duration) -> Option<Client> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(addr.to_string())
        .hostaddr(IpAddr::V4(addr))
        .port(port)
        .user("postgres")
        .password(SUPERUSER_PASSWORD)
        .dbname("postgres")
        .connect_timeout(within);
    match tokio::time::timeout(within, cfg.connect(NoTls)).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            Some(client)
        }
        Ok(Err(e)) => {
            tracing::debug!(%addr, port, %e, "connect failed");
            None
        }
        Err(_) => None,
    }
}

/// How long an insert through the pooler may take before it counts as unanswered (a
/// commit waits for the synchronous standby, which may be changing).
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
const WRITE_PAUSE: Duration = Duration::from_millis(20);

/// Insert rows with fresh ids through the pooler's read-write port until stopped.
pub async fn writer(sh: Arc<Shared>) {
    let mut next_id: i64 = 1;
    let mut client: Option<Client> = None;
    // Bounded by the stop flag and the deadline.
    while sh.running() {
        let c = match client.take() {
            Some(c) => c,
            None => match connect(lab::hub_addr(), lab::RW_PORT, Duration::from_secs(2)).await {
                Some(c) => c,
                None => {
                    sh.write_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let id = next_id;
        next_id += 1;
        let sql = format!("INSERT INTO chaos_acks(id) VALUES ({id})");
        match tokio::time::timeout(WRITE_TIMEOUT, c.simple_query(&sql)).await {
            Ok(Ok(_)) => {
                let t = sh.ms();
                if let Ok(mut v) = sh.acked.lock() {
                    v.push((id, t));
                }
                client = Some(c);
                tokio::time::sleep(WRITE_PAUSE).await;
            }
            Ok(Err(e)) => {
                tracing::debug!(%e, id, "insert failed");
                sh.write_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => {
                tracing::debug!(id, "insert unanswered");
                sh.write_unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Count rows through the read-only port every 200 ms until stopped.
pub async fn reader(sh: Arc<Shared>) {
    let mut client: Option<Client> = None;
    // Bounded by the stop flag and the deadline.
    while sh.running() {
        let c = match client.take() {
            Some(c) => Some(c),
            None => connect(lab::hub_addr(), lab::RO_PORT, Duration::from_secs(2)).await,
        };
        let ok = match c {
            Some(c) => {
                let q = c.simple_query("SELECT count(*) FROM chaos_acks");
                match tokio::time::timeout(Duration::from_secs(5), q).await {
                    Ok(Ok(_)) => {
                        client = Some(c);
                        true
                    }
                    _ => false,
                }
            }
            None => false,
        };
        let counter = if ok { &sh.reads_ok } else { &sh.reads_failed };
        counter.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const PROBE_EVERY: Duration = Duration::from_millis(150);
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// Start member `idx`'s probe on its own thread, inside namespace `ns`: every 150 ms a
/// one-row insert with `synchronous_commit = local` into `chaos_probe`, straight to the
/// member's PostgreSQL on 127.0.0.1 (so a member cut from the network is probed too).
pub fn spawn_probe(sh: Arc<Shared>, idx: usize, ns: String) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        if let Err(e) = pgherd_testkit::netns::enter(&ns) {
            tracing::error!(ns, %e, "the probe cannot enter the member's namespace");
            return;
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(%e, "the probe's runtime");
                return;
            }
        };
        rt.block_on(probe(sh, idx));
    })
}

async fn probe(sh: Arc<Shared>, idx: usize) {
    let mut client: Option<Client> = None;
    let sql = format!("INSERT INTO chaos_probe(member) VALUES ('m{}')", idx + 1);
    // Bounded by the stop flag and the deadline.
    while sh.running() {
        let turn = Instant::now();
        let c = match client.take() {
            Some(c) => Some(c),
            None => match connect(Ipv4Addr::LOCALHOST, lab::PG_PORT, PROBE_TIMEOUT).await {
                Some(c) => {
                    let set = c.simple_query(
                        "SET synchronous_commit = local; SET statement_timeout = 1000",
                    );
                    match tokio::time::timeout(PROBE_TIMEOUT, set).await {
                        Ok(Ok(_)) => Some(c),
                        _ => None,
                    }
                }
                None => None,
            },
        };
        let Some(c) = c else {
            // A failed connection ends a run of acknowledged probes too.
            let now = sh.ms();
            if let Ok(mut v) = sh.probes[idx].lock() {
                v.push(Attempt {
                    sent: now,
                    acked: None,
                });
            }
            tokio::time::sleep(PROBE_EVERY).await;
            continue;
        };
        {
            let sent = sh.ms();
            let r = tokio::time::timeout(PROBE_TIMEOUT, c.simple_query(&sql)).await;
            let acked = matches!(r, Ok(Ok(_))).then(|| sh.ms());
            if let Ok(mut v) = sh.probes[idx].lock() {
                v.push(Attempt { sent, acked });
            }
            // Keep a connection that answered (a replica refuses the insert but stays).
            if let Ok(Ok(_)) | Ok(Err(_)) = r {
                if !c.is_closed() {
                    client = Some(c);
                }
            }
        }
        let spent = turn.elapsed();
        if spent < PROBE_EVERY {
            tokio::time::sleep(PROBE_EVERY - spent).await;
        }
    }
}
