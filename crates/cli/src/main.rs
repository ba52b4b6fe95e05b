//! The `pgherd` binary: parse arguments, set up logging, run the command, and turn any
//! error into a one-line reason with a non-zero exit code.

use clap::Parser;
use pgherd_cli::{ctl, demo, node, pooler};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// jemalloc, not glibc's malloc: the pooler's clients come and go in bursts, leaving
/// short-lived login and task memory between long-lived client state. glibc's heap
/// cannot reuse or return those holes (an idle pooler kept about 3 KB of RSS per idle
/// client that held 0.8 KB); jemalloc's size classes reuse them, and with the decay
/// settings in .cargo/config.toml give freed pages back within half a second.
/// [`flush_allocator_cache`] returns what its thread cache holds.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Give jemalloc's thread cache back to its arenas (and from there to the kernel): the
/// pooler calls it when a burst of idle clients has parked and their tasks' memory sits
/// in that cache.
fn flush_allocator_cache() {
    // SAFETY: "thread.tcache.flush" takes no input and writes no output.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"thread.tcache.flush".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

/// How long the runtime's leftover tasks get once the command is done.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(2);
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Parser)]
#[command(
    name = "pgherd",
    version,
    about = "Highly available PostgreSQL: node agent, pooler, operator CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run the node agent for one PostgreSQL (Patroni-compatible YAML config).
    Node {
        /// The config file (patroni.yml works unchanged).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The config file, Patroni style (`pgherd node patroni.yml`).
        #[arg(value_name = "FILE", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// Check the config and exit.
        #[arg(long)]
        validate_config: bool,
    },
    /// Run the connection pooler (PgBouncer-compatible).
    Pooler(pooler::PoolerArgs),
    /// Look at and operate a cluster.
    Ctl(ctl::CtlArgs),
    /// Run a 3-member cluster on this machine, with an in-process DCS.
    Demo(demo::DemoArgs),
    /// The fencer the node agent starts beside itself (not run by hand).
    #[command(hide = true)]
    Fence {
        /// The data directory of the PostgreSQL to stop.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
}

/// Log to stderr (level from `PGHERD_LOG`, else `default_level`), and to the pooler's
/// `logfile` when given.
fn init_logging(default_level: &str, logfile: Option<pooler::LogFile>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGHERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let file_layer = logfile.map(|f| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(f)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(file_layer)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Fence { data_dir } = &cli.command {
        // No async runtime: a few threads reading a pipe and waiting on a deadline.
        init_logging("info", None);
        let stdin = std::io::BufReader::new(std::io::stdin());
        pgherd_ha::fence::run_fencer(data_dir, stdin);
        return ExitCode::SUCCESS;
    }
    pgherd_pooler::park::set_memory_release(flush_allocator_cache);
    let default_level = match cli.command {
        Command::Node { .. } | Command::Pooler(_) => "info",
        _ => "warn",
    };
    // The pooler may also log to its `logfile`; it opens the file once the config is read.
    let logfile = matches!(cli.command, Command::Pooler(_)).then(pooler::LogFile::default);
    init_logging(default_level, logfile.clone());
    let mut builder = match pooler_threads(&cli.command) {
        Ok(1) => tokio::runtime::Builder::new_current_thread(),
        Ok(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n);
            }
            b
        }
        Err(e) => {
            eprintln!("pgherd: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgherd: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Node {
                config,
                file,
                validate_config,
            } => {
                // No file: PATRONI_CONFIGURATION or the PATRONI_* variables (as Patroni).
                let path = config.or(file);
                node::run(path.as_deref(), validate_config).await
            }
            Command::Pooler(args) => pooler::run(args, logfile.unwrap_or_default()).await,
            Command::Ctl(args) => ctl::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Fence { .. } => Ok(()),
        }
    });
    // Whatever still runs (a blocking task, a child's pipe) gets a moment, not forever:
    // a failed start must end the process.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgherd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Worker threads of the async runtime; 0 means tokio's default (one per core).
///
/// The pooler runs on one thread, as PgBouncer does: next to PostgreSQL on a small
/// machine, waking a second worker for each message costs more CPU than the second
/// core gives back (bench/README.md measures it). `PGHERD_POOLER_THREADS=N` runs N
/// workers instead. Everything else uses one worker per core.
fn pooler_threads(command: &Command) -> Result<usize, String> {
    if !matches!(command, Command::Pooler(_)) {
        return Ok(0);
    }
    match std::env::var("PGHERD_POOLER_THREADS") {
        Err(_) => Ok(1),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(n),
            _ => Err(format!(
                "PGHERD_POOLER_THREADS must be a number of threads from 1 to 1024, not '{v}'"
            )),
        },
    }
}
