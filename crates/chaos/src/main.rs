//! `pgherd-chaos`: a repeatable chaos run against a real pgherd cluster.
//!
//! Three members (`pgherd node` + PostgreSQL 15, each in its own network namespace, each
//! data directory on its own small tmpfs), a 3-member etcd cluster (one namespace each)
//! and `pgherd pooler` in a hub namespace whose bridge joins them all. The runner re-execs
//! itself inside the hub. A writer inserts rows with fresh ids through the pooler's
//! read-write port and records each acknowledged one; a reader reads through the
//! read-only port; per member a probe writes straight to its PostgreSQL (from inside the
//! member's namespace, `synchronous_commit = local`) every 150 ms. Faults drawn from the
//! seed are injected, held, healed; after each heal the cluster must be back to one
//! primary with streaming replicas, taking writes through the pooler, within a bound.
//! At the end every acknowledged id must be on the final primary (in synchronous mode),
//! and no two members may have acknowledged probe writes at the same time.
//!
//! Exit status: 0 pass, 1 a check failed, 2 the run could not be set up or was stopped.

mod lab;
mod load;
mod plan;
mod report;

use anyhow::{bail, Context};
use clap::Parser;
use lab::{EtcdMember, Member, Pooler};
use load::Shared;
use nix::sys::signal::Signal;
use pgherd_testkit::netns;
use plan::{FaultKind, FaultSpec, Target};
use report::FaultResult;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Namespaces, interfaces and the run directory are named `<BASE>-<pid>...`.
const BASE: &str = "pgchaos";
const SCOPE: &str = "chaos";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "pgherd-chaos",
    about = "Seeded faults against a pgherd cluster in network namespaces; checks that no acknowledged write is lost and that no two primaries take writes"
)]
struct Args {
    /// Number of faults to inject.
    #[arg(long, default_value_t = 10)]
    faults: usize,
    /// Seed of the fault plan (kinds, targets, hold times).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Asynchronous replication (`synchronous_mode: false`): lost writes are counted,
    /// not a failure.
    #[arg(long = "async")]
    asynchronous: bool,
    /// `failsafe_mode: true` in the cluster's dynamic configuration.
    #[arg(long)]
    failsafe: bool,
    /// Only these fault kinds (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Never these fault kinds (comma-separated).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Write a JSON summary here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The pgherd binary (default: `pgherd` beside this binary, else on PATH).
    #[arg(long, overrides_with = "pgherd")]
    pgherd: Option<PathBuf>,
    /// Seconds after a heal for the cluster to be back (one primary, streaming replicas,
    /// a write acknowledged through the pooler).
    #[arg(long, default_value_t = 60)]
    recovery_timeout: u64,
    /// Where the run directory goes.
    #[arg(long, default_value = "/tmp")]
    work_dir: PathBuf,
    /// Keep the run directory (configs, agent, PostgreSQL, etcd and pooler logs).
    #[arg(long)]
    keep: bool,
    /// Copy every `*.log` of the run (agents, PostgreSQL, etcd, pooler) into this
    /// directory before the run directory is removed (the test suite's log check).
    #[arg(long)]
    logs_to: Option<PathBuf>,
    /// Print the plan and exit.
    #[arg(long)]
    dry_run: bool,
    /// Internal: run inside the hub namespace of this run prefix.
    #[arg(long, hide = true)]
    inner: Option<String>,
}

impl Args {
    fn kinds(&self) -> anyhow::Result<Vec<FaultKind>> {
        let mut kinds: Vec<FaultKind> = if self.only.is_empty() {
            plan::ALL_KINDS.to_vec()
        } else {
            self.only
                .iter()
                .map(|s| FaultKind::parse(s.trim()))
                .collect::<anyhow::Result<_>>()?
        };
        let skip: Vec<FaultKind> = self
            .skip
            .iter()
            .map(|s| FaultKind::parse(s.trim()))
            .collect::<anyhow::Result<_>>()?;
        kinds.retain(|k| !skip.contains(k));
        if kinds.is_empty() {
            bail!("no fault kind left to inject");
        }
        Ok(kinds)
    }

    /// An upper bound on the whole run.
    fn max_run(&self) -> Duration {
        Duration::from_secs(600 + self.faults as u64 * (90 + 2 * self.recovery_timeout))
    }
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let args = Args::parse();
    let code = match (&args.inner, args.dry_run) {
        (_, true) => match args.kinds() {
            Ok(kinds) => {
                for (n, f) in plan::plan(args.seed, args.faults, &kinds, lab::TTL)
                    .iter()
                    .enumerate()
                {
                    println!("#{:<3} {f}", n + 1);
                }
                0
            }
            Err(e) => {
                eprintln!("pgherd-chaos: {e:#}");
                2
            }
        },
        (None, false) => outer(&args),
        (Some(prefix), false) => inner_main(&args, prefix),
    };
    std::process::exit(code);
}

// ---------------------------------------------------------------- outside the hub

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// The pgherd binary: `--pgherd`, else beside this binary, else `pgherd` on PATH.
fn pgherd_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.pgherd {
        return std::fs::canonicalize(p).with_context(|| format!("--pgherd {}", p.display()));
    }
    let me = std::env::current_exe().context("locating this binary")?;
    if let Some(dir) = me.parent() {
        // Tests run from target/debug/deps; the binaries are one level up.
        for d in [dir, dir.parent().unwrap_or(dir)] {
            let p = d.join("pgherd");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join("pgherd");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("no pgherd binary: give --pgherd PATH")
}

/// Remove run directories of runs that are gone (unless kept with --keep).
fn remove_stale_dirs(work: &Path) {
    let Ok(rd) = std::fs::read_dir(work) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&format!("{BASE}-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if !alive && !e.path().join("KEEP").exists() {
            tracing::info!(dir = %e.path().display(), "removing a leftover run directory");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn outer(args: &Args) -> i32 {
    match outer_run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgherd-chaos: {e:#}");
            2
        }
    }
}

fn outer_run(args: &Args) -> anyhow::Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        bail!("run as root: the run creates network namespaces and mounts");
    }
    args.kinds()?;
    let pgherd = pgherd_binary(args)?;
    // Our own pid too: a dead run may have had it.
    netns::remove_stale(BASE, Some(std::process::id()));
    remove_stale_dirs(&args.work_dir);
    let prefix = format!("{BASE}-{}", std::process::id());
    let run_dir = args.work_dir.join(&prefix);
    std::fs::create_dir_all(&run_dir)?;
    std::fs::set_permissions(
        &run_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
    let code = run_in_lab(args, &prefix, &pgherd);
    if let Some(to) = &args.logs_to {
        copy_logs(&run_dir, &to.join(&prefix));
    }
    if args.keep {
        let _ = std::fs::write(run_dir.join("KEEP"), "");
        eprintln!("pgherd-chaos: logs kept in {}", run_dir.display());
    } else if let Err(e) = std::fs::remove_dir_all(&run_dir) {
        eprintln!("pgherd-chaos: removing {}: {e}", run_dir.display());
    }
    code
}

/// Create the namespaces, run the runner inside the hub, delete the namespaces (also on
/// an error or an interrupt); the runner's exit status.
fn run_in_lab(args: &Args, prefix: &str, pgherd: &Path) -> anyhow::Result<i32> {
    let mut lab = netns::Lab::create(prefix, lab::SUBNET)?;
    for i in 0..3 {
        lab.add_host(&format!("e{}", i + 1), 11 + i as u8)?;
    }
    for i in 0..3 {
        lab.add_host(&format!("m{}", i + 1), 21 + i as u8)?;
    }
    let me = std::env::current_exe()?;
    let mut child = netns::command_in(&lab.hub().ns, &me)
        .args(std::env::args_os().skip(1))
        .arg("--pgherd")
        .arg(pgherd)
        .arg("--inner")
        .arg(prefix)
        .spawn()
        .context("starting the runner inside the hub namespace")?;
    let deadline = Instant::now() + args.max_run() + Duration::from_secs(120);
    let mut signalled_at: Option<Instant> = None;
    // Bounded by the deadline, and by 20 s after an interrupt.
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s.code().unwrap_or(2);
        }
        let now = Instant::now();
        if signalled_at.is_none() && (INTERRUPTED.load(Ordering::SeqCst) || now > deadline) {
            eprintln!("pgherd-chaos: stopping the run");
            if let Ok(pid) = i32::try_from(child.id()) {
                pgherd_testkit::pg::signal(pid, Signal::SIGTERM);
            }
            signalled_at = Some(now);
        }
        if signalled_at.is_some_and(|t| now > t + Duration::from_secs(20)) {
            let _ = child.kill();
            let _ = child.wait();
            break 2;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // The lab's drop kills whatever still runs in its namespaces and deletes them.
    drop(lab);
    Ok(status)
}

/// Copy each `*.log` file under `from` (4 levels down at most) into `to`, named by its
/// path below `from`.
fn copy_logs(from: &Path, to: &Path) {
    if let Err(e) = std::fs::create_dir_all(to) {
        eprintln!("pgherd-chaos: creating {}: {e}", to.display());
        return;
    }
    let mut stack = vec![(from.to_path_buf(), 0usize)];
    // Bounded by the depth and the files present.
    while let Some((dir, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() && depth < 4 {
                stack.push((path, depth + 1));
            } else if kind.is_file() && path.extension().is_some_and(|x| x == "log") {
                let name = path
                    .strip_prefix(from)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .replace('/', "_");
                let _ = std::fs::copy(&path, to.join(name));
            }
        }
    }
}

// ---------------------------------------------------------------- inside the hub

fn inner_main(args: &Args, prefix: &str) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgherd-chaos: {e}");
            return 2;
        }
    };
    rt.block_on(async {
        let interrupted = async {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut t), Ok(mut i)) => {
                    tokio::select! {
                        _ = t.recv() => {}
                        _ = i.recv() => {}
                    }
                }
                _ => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = run(args, prefix) => match r {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(e) => {
                    eprintln!("pgherd-chaos: {e:#}");
                    2
                }
            },
            _ = interrupted => {
                eprintln!("pgherd-chaos: interrupted");
                2
            }
        }
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The members' state as their REST APIs tell it.
struct Health {
    /// The one member that is a running primary, if exactly one is.
    primary: Option<usize>,
    primaries: usize,
    streaming: usize,
    roles: Vec<String>,
}

impl Health {
    fn healthy(&self) -> bool {
        self.primary.is_some() && self.streaming == 2
    }

    fn shown(&self) -> String {
        self.roles
            .iter()
            .enumerate()
            .map(|(i, r)| format!("m{}={r}", i + 1))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

async fn health(http: &reqwest::Client) -> Health {
    let asks = (0..3).map(|i| {
        let url = format!("http://{}:{}/patroni", lab::member_addr(i), lab::API_PORT);
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.ok()?;
            r.json::<serde_json::Value>().await.ok()
        }
    });
    let answers = futures_join(asks).await;
    let mut h = Health {
        primary: None,
        primaries: 0,
        streaming: 0,
        roles: Vec::new(),
    };
    for (i, a) in answers.iter().enumerate() {
        let Some(v) = a else {
            h.roles.push("?".into());
            continue;
        };
        let role = v["role"].as_str().unwrap_or("");
        let state = v["state"].as_str().unwrap_or("");
        if matches!(role, "primary" | "master") && state == "running" {
            h.primaries += 1;
            h.primary = Some(i);
        }
        if role == "replica" && v["replication_state"] == "streaming" {
            h.streaming += 1;
        }
        let repl = v["replication_state"].as_str().unwrap_or("");
        h.roles.push(format!(
            "{role}/{state}{}{repl}",
            if repl.is_empty() { "" } else { "/" }
        ));
    }
    if h.primaries != 1 {
        h.primary = None;
    }
    h
}

/// Run the futures concurrently, in order.
async fn futures_join<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

/// Wait until one primary and two streaming replicas (and, with `ack_after`, a write
/// acknowledged through the pooler after that time); the primary's index.
async fn wait_healthy(
    http: &reqwest::Client,
    sh: Option<&Shared>,
    ack_after: u64,
    within: Duration,
) -> Result<usize, Health> {
    let deadline = Instant::now() + within;
    // Bounded by the deadline.
    loop {
        let h = health(http).await;
        let acked = match sh {
            None => true,
            Some(sh) => sh.last_ack().is_some_and(|t| t > ack_after),
        };
        if let (true, Some(p), true) = (h.healthy(), h.primary, acked) {
            return Ok(p);
        }
        if Instant::now() > deadline {
            return Err(h);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_etcd(http: &reqwest::Client, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    // Bounded by the deadline.
    loop {
        let mut ok = 0;
        for i in 0..3 {
            let url = format!(
                "http://{}:{}/health",
                lab::etcd_addr(i),
                lab::ETCD_CLIENT_PORT
            );
            if let Ok(r) = http.get(url).send().await {
                if r.text()
                    .await
                    .is_ok_and(|t| t.contains("\"health\":\"true\""))
                {
                    ok += 1;
                }
            }
        }
        if ok == 3 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("etcd: {ok} of 3 members healthy after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// What a fault changed, to undo at the heal.
enum Undo {
    RestartAgent(usize),
    Nothing,
    Cont { pid: i32 },
    Heal(String),
    StartEtcd(Vec<usize>),
    FreeDisk(usize),
}

struct Cluster {
    members: Arc<Mutex<Vec<Member>>>,
    etcd: Vec<EtcdMember>,
}

impl Cluster {
    /// Inject `spec` with `primary` being the primary now; the hit target and the undo.
    fn inject(&mut self, spec: &FaultSpec, primary: usize) -> anyhow::Result<(String, Undo)> {
        let member = match &spec.target {
            Target::Primary => primary,
            Target::Replica(k) => (0..3)
                .filter(|&i| i != primary)
                .nth(*k)
                .unwrap_or((primary + 1) % 3),
            Target::Etcd(v) => {
                for &i in v {
                    self.etcd[i].kill();
                }
                let names: Vec<String> = v.iter().map(|&i| self.etcd[i].name.clone()).collect();
                return Ok((names.join("+"), Undo::StartEtcd(v.clone())));
            }
        };
        let mut ms = lock(&self.members);
        let m = &mut ms[member];
        let name = m.name.clone();
        let others = |me: usize| -> Vec<std::net::Ipv4Addr> {
            (0..3).filter(|&i| i != me).map(lab::member_addr).collect()
        };
        let etcds: Vec<std::net::Ipv4Addr> = (0..3).map(lab::etcd_addr).collect();
        let undo = match spec.kind {
            FaultKind::KillAgent => {
                m.held_down = true;
                m.kill_agent();
                Undo::RestartAgent(member)
            }
            FaultKind::KillPostmaster => {
                if !m.kill_postgres() {
                    bail!("{name}: no postmaster to kill");
                }
                Undo::Nothing
            }
            FaultKind::KillBoth => {
                m.held_down = true;
                m.kill_agent();
                m.kill_postgres();
                Undo::RestartAgent(member)
            }
            FaultKind::StopAgent => {
                let pid = m.agent_pid().context("no agent to stop")?;
                pgherd_testkit::pg::signal(pid, Signal::SIGSTOP);
                Undo::Cont { pid }
            }
            FaultKind::StopPostmaster => {
                let pid = m
                    .signal_postmaster(Signal::SIGSTOP)
                    .context("no postmaster to stop")?;
                Undo::Cont { pid }
            }
            FaultKind::PartitionEtcd => {
                netns::cut(&m.ns, &etcds)?;
                Undo::Heal(m.ns.clone())
            }
            FaultKind::PartitionPeers => {
                netns::cut(&m.ns, &others(member))?;
                Undo::Heal(m.ns.clone())
            }
            FaultKind::PartitionAll => {
                let mut all = others(member);
                all.extend(etcds);
                all.push(lab::hub_addr());
                netns::cut(&m.ns, &all)?;
                Undo::Heal(m.ns.clone())
            }
            FaultKind::DiskFull => {
                let bytes = m.fill_disk()?;
                tracing::info!(member = %name, mib = bytes >> 20, "data filesystem filled");
                Undo::FreeDisk(member)
            }
            FaultKind::EtcdOne | FaultKind::EtcdQuorum => Undo::Nothing,
        };
        Ok((name, undo))
    }

    fn heal(&mut self, undo: Undo) -> anyhow::Result<()> {
        match undo {
            Undo::RestartAgent(i) => {
                let mut ms = lock(&self.members);
                ms[i].held_down = false;
                ms[i].start_agent()?;
            }
            Undo::Nothing => {}
            Undo::Cont { pid } => pgherd_testkit::pg::signal(pid, Signal::SIGCONT),
            Undo::Heal(ns) => netns::heal(&ns)?,
            Undo::StartEtcd(v) => {
                for i in v {
                    self.etcd[i].start()?;
                }
            }
            Undo::FreeDisk(i) => lock(&self.members)[i].free_disk(),
        }
        Ok(())
    }
}

/// Restart agents that exited by themselves, as an init system would (every second).
async fn supervise(members: Arc<Mutex<Vec<Member>>>, sh: Arc<Shared>) {
    // Bounded by the clients' stop flag and deadline.
    while !sh.stop.load(Ordering::Relaxed) && Instant::now() < sh.deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut ms = lock(&members);
        for m in ms.iter_mut() {
            if !m.held_down && m.agent_gone() {
                m.unexpected_exits += 1;
                tracing::warn!(member = %m.name, "the agent exited; restarting it");
                if let Err(e) = m.start_agent() {
                    tracing::error!(member = %m.name, %e, "restarting the agent");
                }
            }
        }
    }
}

async fn run(args: &Args, prefix: &str) -> anyhow::Result<bool> {
    let kinds = args.kinds()?;
    let pgherd = args.pgherd.clone().context("--pgherd")?;
    let run_dir = args.work_dir.join(prefix);
    let synchronous = !args.asynchronous;
    let faults = plan::plan(args.seed, args.faults, &kinds, lab::TTL);
    let mode = match (synchronous, args.failsafe) {
        (true, false) => "synchronous",
        (false, false) => "asynchronous",
        (true, true) => "synchronous, failsafe",
        (false, true) => "asynchronous, failsafe",
    };
    println!(
        "pgherd-chaos: seed {}, {mode} mode, {} faults, ttl/loop_wait/retry_timeout {}/{}/{}, recovery bound {} s",
        args.seed,
        faults.len(),
        lab::TTL,
        lab::LOOP_WAIT,
        lab::RETRY_TIMEOUT,
        args.recovery_timeout
    );
    let http = pgherd_http::client::client(
        &pgherd_http::tls::ClientTls::default(),
        Some(Duration::from_secs(2)),
    )?;

    // etcd, the members, the pooler.
    let mut etcd: Vec<EtcdMember> = (0..3)
        .map(|i| EtcdMember::new(i, prefix, &run_dir))
        .collect();
    for e in &mut etcd {
        e.start()?;
    }
    wait_etcd(&http, Duration::from_secs(30)).await?;
    let mut members: Vec<Member> = (0..3)
        .map(|i| Member::new(i, prefix, &run_dir, &pgherd))
        .collect();
    for m in &mut members {
        m.prepare(SCOPE, synchronous, args.failsafe)?;
        m.start_agent()?;
    }
    let members = Arc::new(Mutex::new(members));
    let mut cluster = Cluster {
        members: members.clone(),
        etcd,
    };
    let setup_start = Instant::now();
    let primary = match wait_healthy(&http, None, 0, Duration::from_secs(180)).await {
        Ok(p) => p,
        Err(h) => {
            dump_logs(&cluster, 40);
            bail!("the cluster did not come up within 180 s ({})", h.shown());
        }
    };
    let c = load::connect(
        lab::member_addr(primary),
        lab::PG_PORT,
        Duration::from_secs(5),
    )
    .await
    .context("connecting to the primary")?;
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS chaos_acks (id bigint PRIMARY KEY, at timestamptz DEFAULT now());
         CREATE TABLE IF NOT EXISTS chaos_probe (n bigserial PRIMARY KEY, member text, at timestamptz DEFAULT now())",
    )
    .await
    .context("creating the tables")?;
    drop(c);
    let mut pooler = Pooler::start(&run_dir, &pgherd, SCOPE)?;
    let sh = Shared::new(3, args.max_run());
    let clock_zero = report::utc_clock(std::time::SystemTime::now());
    let writer = tokio::spawn(load::writer(sh.clone()));
    let reader = tokio::spawn(load::reader(sh.clone()));
    let probes: Vec<_> = {
        let ms = lock(&members);
        ms.iter()
            .map(|m| load::spawn_probe(sh.clone(), m.idx, m.ns.clone()))
            .collect()
    };
    let supervisor = tokio::spawn(supervise(members.clone(), sh.clone()));
    if wait_healthy(&http, Some(&*sh), 0, Duration::from_secs(60))
        .await
        .is_err()
    {
        dump_logs(&cluster, 40);
        bail!("no write acknowledged through the pooler within 60 s of the start");
    }
    println!(
        "cluster up in {:.1} s (primary m{}); times below are seconds since {clock_zero} UTC",
        setup_start.elapsed().as_secs_f64(),
        primary + 1
    );

    let mut results: Vec<FaultResult> = Vec::new();
    // The most each member's data filesystem held after a fault (MiB).
    let mut fs_peak = [0u64; 3];
    let mut aborted: Option<String> = None;
    for (n, spec) in faults.iter().enumerate() {
        let n = n + 1;
        let before = match wait_healthy(
            &http,
            Some(&*sh),
            sh.ms(),
            Duration::from_secs(args.recovery_timeout),
        )
        .await
        {
            Ok(p) => p,
            Err(h) => {
                aborted = Some(format!(
                    "the cluster was not healthy before fault #{n} ({})",
                    h.shown()
                ));
                break;
            }
        };
        let injected_ms = sh.ms();
        let (target, undo) = match cluster.inject(spec, before) {
            Ok(x) => x,
            Err(e) => {
                aborted = Some(format!("injecting fault #{n} ({spec}): {e:#}"));
                break;
            }
        };
        println!(
            "#{n:<3} {:>7.1} s  {} on {target} (primary m{}), held {:.1} s",
            injected_ms as f64 / 1000.0,
            spec.kind.name(),
            before + 1,
            spec.hold.as_secs_f64()
        );
        tokio::time::sleep(spec.hold).await;
        let healed_ms = sh.ms();
        let heal_err = cluster.heal(undo).err();
        let within = Duration::from_secs(args.recovery_timeout);
        let outcome = wait_healthy(&http, Some(&*sh), healed_ms, within).await;
        let recovered_ms = outcome.is_ok().then(|| sh.ms());
        let acks: Vec<u64> = lock(&sh.acked).iter().map(|&(_, t)| t).collect();
        let gap_end = recovered_ms.unwrap_or_else(|| sh.ms());
        let mut r = FaultResult {
            n,
            spec: spec.clone(),
            target: target.clone(),
            primary_before: format!("m{}", before + 1),
            primary_after: outcome.as_ref().ok().map(|p| format!("m{}", p + 1)),
            injected_ms,
            healed_ms,
            recovered_ms,
            recovery_s: recovered_ms.map(|t| (t - healed_ms) as f64 / 1000.0),
            max_write_gap_s: report::max_gap(&acks, injected_ms, gap_end),
            survived: outcome.is_ok() && heal_err.is_none(),
            note: String::new(),
        };
        if let Some(e) = heal_err {
            r.note = format!("healing failed: {e:#}");
        }
        let fs_used: Vec<Option<u64>> = lock(&members)
            .iter()
            .map(|m| m.data_fs_used_mib())
            .collect();
        for (peak, used) in fs_peak.iter_mut().zip(&fs_used) {
            *peak = (*peak).max(used.unwrap_or(0));
        }
        let fs_shown: Vec<String> = fs_used
            .iter()
            .map(|u| u.map_or("?".into(), |u| u.to_string()))
            .collect();
        match &outcome {
            Ok(p) => println!(
                "     recovered {:.1} s after the heal, primary m{}; longest write pause {:.1} s; \
                 data fs MiB used {}",
                r.recovery_s.unwrap_or(0.0),
                p + 1,
                r.max_write_gap_s,
                fs_shown.join("/")
            ),
            Err(h) => {
                r.note = format!("not recovered within {within:?} of the heal: {}", h.shown());
                println!("     NOT RECOVERED: {}", r.note);
                dump_logs(&cluster, 25);
            }
        }
        let survived = r.survived;
        results.push(r);
        if !survived {
            // Give it longer before the next fault; stop if it never comes back.
            if let Err(h) = wait_healthy(&http, Some(&*sh), sh.ms(), Duration::from_secs(120)).await
            {
                aborted = Some(format!(
                    "the cluster did not recover from fault #{n} within a further 120 s ({})",
                    h.shown()
                ));
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // Let the writer finish its statement, then stop everything.
    sh.stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(20), writer).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), supervisor).await;
    for p in probes {
        let _ = tokio::task::spawn_blocking(move || p.join()).await;
    }
    let final_primary = wait_healthy(&http, None, 0, Duration::from_secs(60)).await;
    let acked: Vec<(i64, u64)> = lock(&sh.acked).clone();
    let (lost, final_name) = match &final_primary {
        Ok(p) => {
            let c = load::connect(lab::member_addr(*p), lab::PG_PORT, Duration::from_secs(5))
                .await
                .context("connecting to the final primary")?;
            let rows = c.query("SELECT id FROM chaos_acks", &[]).await?;
            let present: HashSet<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
            let lost: Vec<i64> = acked
                .iter()
                .map(|&(id, _)| id)
                .filter(|id| !present.contains(id))
                .collect();
            (Some(lost), format!("m{}", p + 1))
        }
        Err(h) => (None, format!("none ({})", h.shown())),
    };
    let probe_data: Vec<Vec<load::Attempt>> = sh.probes.iter().map(|p| lock(p).clone()).collect();
    let probe_acks: Vec<usize> = probe_data
        .iter()
        .map(|v| v.iter().filter(|a| a.acked.is_some()).count())
        .collect();
    let split: Vec<report::SplitBrain> = report::split_brains(&probe_data)
        .into_iter()
        .map(|(a, b, from, to)| report::SplitBrain {
            members: [format!("m{}", a + 1), format!("m{}", b + 1)],
            from_s: from as f64 / 1000.0,
            to_s: to as f64 / 1000.0,
            during: results
                .iter()
                .find(|r| from >= r.injected_ms && from <= r.recovered_ms.unwrap_or(u64::MAX))
                .map(|r| format!("#{} {} on {}", r.n, r.spec.kind.name(), r.target)),
        })
        .collect();
    let exits: Vec<u32> = lock(&members).iter().map(|m| m.unexpected_exits).collect();
    let pooler_died = pooler.gone();

    // Verdict.
    let injected = results.len();
    let survived = results.iter().filter(|r| r.survived).count();
    let mut failures: Vec<String> = Vec::new();
    if let Some(a) = &aborted {
        failures.push(format!("aborted: {a}"));
    }
    if survived < injected {
        failures.push(format!("{} fault(s) not survived", injected - survived));
    }
    match &lost {
        Some(l) if !l.is_empty() && synchronous => {
            failures.push(format!("{} acknowledged write(s) lost", l.len()))
        }
        None => failures.push("no primary at the end to check the writes on".into()),
        _ => {}
    }
    if !split.is_empty() {
        failures.push(format!("{} split-brain interval(s)", split.len()));
    }
    if pooler_died {
        failures.push("the pooler exited".into());
    }
    let pass = failures.is_empty();

    // Summary.
    let stats = report::per_kind(&results);
    println!(
        "\n===== pgherd chaos summary (seed {}, {mode} mode) =====",
        args.seed
    );
    println!("faults injected: {injected} of {} planned", faults.len());
    println!("faults survived: {survived}");
    println!(
        "{:<16} {:>4} {:>4} {:>10} {:>10} {:>12}",
        "kind", "n", "ok", "median s", "max s", "write gap s"
    );
    for (kind, s) in &stats {
        let f = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
        println!(
            "{kind:<16} {:>4} {:>4} {:>10} {:>10} {:>12.1}",
            s.injected,
            s.survived,
            f(s.recovery_median_s),
            f(s.recovery_max_s),
            s.write_gap_max_s
        );
    }
    println!("(recovery: from the heal to one primary + 2 streaming replicas + a write acknowledged through the pooler)");
    println!(
        "acknowledged writes: {} (errors {}, unanswered {})",
        acked.len(),
        sh.write_errors.load(Ordering::Relaxed),
        sh.write_unknown.load(Ordering::Relaxed)
    );
    match &lost {
        Some(l) => println!(
            "acknowledged writes lost: {} (checked on the final primary {final_name}){}",
            l.len(),
            if l.is_empty() {
                String::new()
            } else {
                format!(", first ids {:?}", &l[..l.len().min(10)])
            }
        ),
        None => println!("acknowledged writes lost: unknown (final primary: {final_name})"),
    }
    println!(
        "reads through the read-only port: {} ok, {} failed",
        sh.reads_ok.load(Ordering::Relaxed),
        sh.reads_failed.load(Ordering::Relaxed)
    );
    println!("probe writes acknowledged per member: {probe_acks:?}");
    println!("split-brain intervals: {}", split.len());
    for s in &split {
        println!(
            "  {}+{} both acknowledged writes {:.2}..{:.2} s{}",
            s.members[0],
            s.members[1],
            s.from_s,
            s.to_s,
            s.during
                .as_ref()
                .map(|d| format!(" (during {d})"))
                .unwrap_or_default()
        );
    }
    if exits.iter().any(|&e| e > 0) {
        println!("agents that exited by themselves (restarted): {exits:?}");
    }
    println!(
        "data filesystems, most MiB used after a fault (of {}): {fs_peak:?}",
        lab::DATA_FS_MIB
    );
    println!(
        "RESULT: {}",
        if pass {
            "PASS".to_string()
        } else {
            format!("FAIL: {}", failures.join("; "))
        }
    );

    if let Some(path) = &args.report {
        let json = serde_json::json!({
            "seed": args.seed,
            "mode": mode,
            "synchronous_mode": synchronous,
            "failsafe_mode": args.failsafe,
            "ttl": lab::TTL, "loop_wait": lab::LOOP_WAIT, "retry_timeout": lab::RETRY_TIMEOUT,
            "recovery_timeout_s": args.recovery_timeout,
            "faults_planned": faults.len(),
            "faults_injected": injected,
            "faults_survived": survived,
            "per_kind": stats,
            "faults": results,
            "acknowledged_writes": acked.len(),
            "write_errors": sh.write_errors.load(Ordering::Relaxed),
            "writes_unanswered": sh.write_unknown.load(Ordering::Relaxed),
            "acknowledged_writes_lost": lost.as_ref().map(|l| l.len()),
            "lost_ids": lost.as_ref().map(|l| l.iter().take(100).collect::<Vec<_>>()),
            "final_primary": final_name,
            "reads_ok": sh.reads_ok.load(Ordering::Relaxed),
            "reads_failed": sh.reads_failed.load(Ordering::Relaxed),
            "probe_acks": probe_acks,
            "clock_zero_utc": clock_zero,
            "writable_runs_s": probe_data
                .iter()
                .map(|p| report::certain_runs(p)
                    .into_iter()
                    .map(|(a, b)| [a as f64 / 1000.0, b as f64 / 1000.0])
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>(),
            "split_brain": split,
            "agent_unexpected_exits": exits,
            "data_fs_mib": lab::DATA_FS_MIB,
            "data_fs_peak_used_mib": fs_peak,
            "aborted": aborted,
            "pass": pass,
            "failures": failures,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }

    // Tear down (the outer process deletes the namespaces and whatever is left in them).
    drop(pooler);
    {
        let mut ms = lock(&members);
        for m in ms.iter_mut() {
            m.teardown();
        }
    }
    for e in &mut cluster.etcd {
        e.kill();
    }
    Ok(pass)
}

fn dump_logs(cluster: &Cluster, lines: usize) {
    let ms = lock(&cluster.members);
    for m in ms.iter() {
        eprintln!("----- {} agent log (last {lines} lines) -----", m.name);
        eprintln!("{}", m.log_tail(lines));
    }
}
