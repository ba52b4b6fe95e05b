//! `pgherd pooler`: the PgBouncer-compatible pooler, from pgbouncer.ini or pooler.yml.

use anyhow::{Context, Result};
use pgherd_pooler::service::{self, Service};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

/// How long SIGINT waits for in-flight transactions before giving up on them.
const SAFE_SHUTDOWN_GRACE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, clap::Args)]
pub struct PoolerArgs {
    /// pgherd's YAML config (pooler.yml).
    #[arg(
        short,
        long,
        value_name = "FILE",
        conflicts_with = "ini",
        required_unless_present = "ini"
    )]
    pub config: Option<PathBuf>,
    /// A PgBouncer pgbouncer.ini, read as-is.
    #[arg(long, value_name = "FILE")]
    pub ini: Option<PathBuf>,
}

pub async fn run(args: PoolerArgs) -> Result<()> {
    let path = args
        .config
        .or(args.ini)
        .context("no config file: use `pgherd pooler --ini pgbouncer.ini` or `-c pooler.yml`")?;
    let files = service::load(&path)?;
    let service = Service::start(files).await?;
    serve_until_signal(service, &path).await
}

/// SIGHUP reloads, SIGINT shuts down after in-flight transactions, SIGTERM at once.
async fn serve_until_signal(service: Service, path: &Path) -> Result<()> {
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut console_shutdown = service.shutdown_requested();
    loop {
        tokio::select! {
            _ = hup.recv() => match service.reload(path) {
                Ok(()) => info!(file = %path.display(), "configuration reloaded"),
                Err(e) => warn!(file = %path.display(), error = %e, "reload failed; keeping the running configuration"),
            },
            _ = int.recv() => {
                info!("SIGINT: shutting down after in-flight transactions");
                service.shutdown(SAFE_SHUTDOWN_GRACE).await;
                return Ok(());
            }
            _ = term.recv() => {
                info!("SIGTERM: shutting down now");
                return Ok(());
            }
            _ = console_shutdown.wait_for(|s| *s) => {
                info!("SHUTDOWN from the admin console: shutting down now");
                service.shutdown(Duration::ZERO).await;
                return Ok(());
            }
        }
    }
}
