//! Real PostgreSQL for tests: where the binaries are, which OS user runs them, and temp
//! directories that user can write and that are cleaned up (servers included) on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The OS user PostgreSQL runs as when tests run as root.
pub const PG_OS_USER: &str = "postgres";

/// PostgreSQL's bin directory: `$PGHERD_PG_BIN`, else `pg_config --bindir`, else
/// `/usr/lib/postgresql/15/bin`.
pub fn pg_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PGHERD_PG_BIN") {
        return PathBuf::from(d);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !s.is_empty() && Path::new(&s).join("postgres").is_file() {
            return PathBuf::from(s);
        }
    }
    PathBuf::from("/usr/lib/postgresql/15/bin")
}

/// Whether the PostgreSQL server binaries are installed (tests may skip otherwise).
pub fn pg_available() -> bool {
    pg_bin_dir().join("postgres").is_file()
}

/// True when the tests run as root (then PostgreSQL runs as [`PG_OS_USER`]).
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `(uid, gid)` of the user PostgreSQL runs as: [`PG_OS_USER`] when root, else ourselves.
pub fn pg_owner() -> (u32, u32) {
    if running_as_root() {
        let u = nix::unistd::User::from_name(PG_OS_USER)
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!("OS user {PG_OS_USER:?} is needed to run PostgreSQL as root")
            });
        (u.uid.as_raw(), u.gid.as_raw())
    } else {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    }
}

/// Give `path` to the PostgreSQL user (no-op when not root).
pub fn give_to_postgres(path: &Path) -> std::io::Result<()> {
    if running_as_root() {
        let (uid, gid) = pg_owner();
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// A temp directory under /tmp that the PostgreSQL user can write (0755, owned by it
/// when root). On drop, every postmaster whose `postmaster.pid` lies within two levels
/// below it is stopped (SIGQUIT, then SIGKILL), then the directory is removed.
pub struct PgTempDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl PgTempDir {
    pub fn new() -> std::io::Result<PgTempDir> {
        PgTempDir::with_prefix("pg")
    }

    /// Named `/tmp/pgherd-<prefix>-XXXXXX`.
    pub fn with_prefix(prefix: &str) -> std::io::Result<PgTempDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("pgherd-{prefix}-"))
            .tempdir_in("/tmp")?;
        let path = dir.path().to_path_buf();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        give_to_postgres(&path)?;
        Ok(PgTempDir {
            dir: Some(dir),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path/name` (not created).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Create `path/name` as a directory owned by the PostgreSQL user, mode 0755.
    pub fn subdir(&self, name: &str) -> std::io::Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        give_to_postgres(&p)?;
        Ok(p)
    }

    /// Postmaster pids found in `postmaster.pid` files up to two levels down.
    pub fn postmaster_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let mut dirs = vec![(self.path.clone(), 0)];
        while let Some((d, depth)) = dirs.pop() {
            if let Some(pid) = read_postmaster_pid(&d) {
                pids.push(pid);
            }
            if depth < 2 {
                if let Ok(rd) = std::fs::read_dir(&d) {
                    for e in rd.flatten() {
                        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            dirs.push((e.path(), depth + 1));
                        }
                    }
                }
            }
        }
        pids
    }
}

/// The live postgres process named in `dir/postmaster.pid`, if any.
pub fn read_postmaster_pid(dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    (pid > 0 && process_is_postgres(pid)).then_some(pid)
}

/// `pid` is a live (not zombie) process named `postgres`.
fn process_is_postgres(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let state = stat[close + 1..].trim_start().chars().next();
    &stat[open + 1..close] == "postgres" && !matches!(state, Some('Z' | 'X' | 'x') | None)
}

/// Send `sig` to `pid` (ignoring errors).
pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Stop a postmaster at once: SIGQUIT (immediate shutdown), SIGKILL after `grace`.
pub fn stop_postmaster(pid: i32, grace: Duration) {
    use nix::sys::signal::Signal;
    signal(pid, Signal::SIGQUIT);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !process_is_postgres(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(pid, Signal::SIGKILL);
}

impl Drop for PgTempDir {
    fn drop(&mut self) {
        for pid in self.postmaster_pids() {
            stop_postmaster(pid, Duration::from_secs(5));
        }
        crate::logs::harvest(&self.path);
        if let Some(dir) = self.dir.take() {
            if std::thread::panicking() && std::env::var_os("PGHERD_KEEP_FAILED").is_some() {
                // Debugging a failed test: keep its logs and data directories.
                eprintln!("PGHERD_KEEP_FAILED: keeping {}", dir.keep().display());
            } else {
                let _ = dir.close();
            }
        }
    }
}

/// Pids of processes whose working directory is `dir` (PostgreSQL's processes all work
/// in their data directory): lets a test wait until a killed server is fully gone.
pub fn processes_in_dir(dir: &Path) -> Vec<i32> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .collect()
}
