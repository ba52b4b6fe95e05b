//! `pgherd pooler`: the PgBouncer-compatible pooler, from pgbouncer.ini or pooler.yml.

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use pgherd_pooler::service::{self, Service};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{info, warn};
use tracing_subscriber::fmt::MakeWriter;

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

/// Load the config, open the logfile, write the pidfile, then serve until a signal.
pub async fn run(args: PoolerArgs, log: LogFile) -> Result<()> {
    let path = args
        .config
        .or(args.ini)
        .context("no config file: use `pgherd pooler --ini pgbouncer.ini` or `-c pooler.yml`")?;
    let files = service::load(&path)?;
    let settings = &files.config.settings;
    log.open(settings.logfile.as_deref())?;
    // Installed before the pidfile is written, so a signal during start-up still runs
    // the guard's cleanup instead of killing the process outright.
    let signals = Signals::install()?;
    let _pidfile = match &settings.pidfile {
        Some(p) => Some(PidFile::create(p)?),
        None => None,
    };
    let service = Service::start(files).await?;
    serve_until_signal(service, &path, signals, &log).await
}

struct Signals {
    hup: Signal,
    int: Signal,
    term: Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }
}

/// SIGHUP reloads and reopens the logfile, SIGINT shuts down after in-flight
/// transactions, SIGTERM at once.
async fn serve_until_signal(
    service: Service,
    path: &Path,
    mut signals: Signals,
    log: &LogFile,
) -> Result<()> {
    let mut console_shutdown = service.shutdown_requested();
    loop {
        tokio::select! {
            _ = signals.hup.recv() => {
                let reloaded = service.reload(path);
                // Reopened before logging the outcome, so after logrotate moved the file
                // away the outcome lands in the new one; `logfile` may also have changed.
                let logfile = service.runtime.config().settings.logfile.clone();
                if let Err(e) = log.open(logfile.as_deref()) {
                    warn!(error = %format!("{e:#}"), "keeping the previous logfile");
                }
                match reloaded {
                    Ok(()) => info!(file = %path.display(), "configuration reloaded"),
                    Err(e) => warn!(file = %path.display(), error = %e, "reload failed; keeping the running configuration"),
                }
            }
            _ = signals.int.recv() => {
                info!("SIGINT: shutting down after in-flight transactions");
                service.shutdown(SAFE_SHUTDOWN_GRACE).await;
                return Ok(());
            }
            _ = signals.term.recv() => {
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

/// PgBouncer's `pidfile`: holds our pid while we run, keeps a second instance from
/// starting, and is removed when dropped (every way out of [`run`]).
#[derive(Debug)]
struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    fn create(path: &Path) -> Result<PidFile> {
        let pid = std::process::id();
        let replacing = match std::fs::read_to_string(path) {
            Ok(text) => {
                if let Some(other) = live_pid(&text).filter(|&p| p != pid) {
                    anyhow::bail!(
                        "pidfile {}: pgherd pooler (or another process) is already running with pid {other}",
                        path.display()
                    );
                }
                warn!(file = %path.display(), "replacing a stale pidfile");
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read pidfile {}", path.display()))
            }
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            anyhow::bail!(
                "cannot write pidfile {}: directory {} does not exist",
                path.display(),
                dir.display()
            );
        }
        let write = || -> std::io::Result<()> {
            // Written whole under a temporary name, then renamed: readers never see a
            // partial pid.
            let mut tmp = tempfile::Builder::new()
                .prefix(".pgherd-pid")
                .permissions(std::fs::Permissions::from_mode(0o644))
                .tempfile_in(dir)?;
            writeln!(tmp, "{pid}")?;
            tmp.as_file().sync_all()?;
            if replacing {
                tmp.persist(path)?;
            } else {
                // Fails if another instance created the file since we looked.
                tmp.persist_noclobber(path)?;
            }
            Ok(())
        };
        write().with_context(|| format!("cannot write pidfile {}", path.display()))?;
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Leave the file alone if someone replaced it with another pid meanwhile.
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|t| t.trim().parse::<u32>().ok() == Some(self.pid));
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                warn!(file = %self.path.display(), error = %e, "cannot remove the pidfile");
            }
        }
    }
}

/// The pid in a pidfile's text, if it names a running process (EPERM: running as
/// another user).
fn live_pid(text: &str) -> Option<u32> {
    let pid: i32 = text.trim().parse().ok().filter(|&p| p > 0)?;
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => u32::try_from(pid).ok(),
        Err(_) => None,
    }
}

/// PgBouncer's `logfile`: a second log destination next to stderr, reopened on SIGHUP
/// so logrotate can move it away. Until [`LogFile::open`] names a file, writes go nowhere.
#[derive(Debug, Clone, Default)]
pub struct LogFile(Arc<Mutex<Option<File>>>);

impl LogFile {
    /// Open `path` for appending (mode 0640 if created) and switch to it; `None` stops
    /// writing to a file.
    pub fn open(&self, path: Option<&Path>) -> Result<()> {
        let file = match path {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(p)
                    .with_context(|| format!("cannot open logfile {}", p.display()))?,
            ),
            None => None,
        };
        *self.lock() = file;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Option<File>> {
        // A panic while writing a log line leaves the file usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Write for &LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // One write_all under the lock: lines from different threads never interleave.
        match self.lock().as_mut() {
            Some(f) => f.write_all(buf).map(|()| buf.len()),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = &'a LogFile;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}
