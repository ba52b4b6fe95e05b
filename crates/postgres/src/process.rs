//! Running PostgreSQL programs as the right OS user, every wait bounded.

use crate::binaries::{Binaries, OsUser};
use crate::error::{PgError, Result};
use std::path::Path;
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;
use tokio::process::Command;

/// How many lines of a program's stderr (or a log) an error carries.
const TAIL_LINES: usize = 12;

/// A `Command` for `program` from `bin`, run as `os_user` (or as ourselves), with stdin
/// closed, stdout/stderr captured, no `PG*` variables inherited, killed on drop.
///
/// `new_session`: run in its own session (`setsid`) so that what it starts outlives us;
/// otherwise in its own process group, which is killed as a whole on timeout.
pub(crate) fn pg_command(
    bin: &Binaries,
    program: &str,
    os_user: Option<&OsUser>,
    new_session: bool,
) -> Result<Command> {
    command_as(bin.program(program).as_os_str(), os_user, new_session)
}

/// An operator's script (a Patroni-style callback): `argv[0]` with the rest of `argv`,
/// run like a PostgreSQL program (as `os_user`, its own process group, no `PG*`
/// variables) and killed after `timeout`. Its output, whatever the exit status.
pub async fn run_script(
    argv: &[String],
    os_user: Option<&OsUser>,
    timeout: Duration,
) -> Result<Output> {
    let (program, args) = argv.split_first().ok_or_else(|| {
        PgError::io(
            "an empty command line",
            std::io::ErrorKind::InvalidInput.into(),
        )
    })?;
    let mut cmd = command_as(std::ffi::OsStr::new(program), os_user, false)?;
    cmd.args(args);
    run(cmd, program, timeout, None).await
}

fn command_as(
    program: &std::ffi::OsStr,
    os_user: Option<&OsUser>,
    new_session: bool,
) -> Result<Command> {
    if os_user.is_none() && nix::unistd::geteuid().is_root() {
        return Err(PgError::RefuseRoot);
    }
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .current_dir("/");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    let ids = os_user.map(|u| {
        cmd.env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name);
        (u.groups(), u.gid, u.uid)
    });
    if !new_session {
        cmd.process_group(0);
    }
    // SAFETY: the closure only makes async-signal-safe libc calls on data prepared before
    // the fork (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            if new_session && libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((groups, gid, uid)) = &ids {
                if libc::setgroups(groups.len() as _, groups.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setgid(*gid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setuid(*uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Run `cmd` to completion within `timeout`. A non-zero exit becomes
/// [`PgError::CommandFailed`] with the last lines of its stderr (and of `log`, when
/// given); a timeout kills its process group and becomes [`PgError::Timeout`].
pub(crate) async fn run(
    mut cmd: Command,
    what: &str,
    timeout: Duration,
    log: Option<&Path>,
) -> Result<Output> {
    tracing::debug!(command = what, "running");
    let child = cmd
        .spawn()
        .map_err(|e| PgError::io(format!("cannot start {what}"), e))?;
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(out),
        Ok(Ok(out)) => Err(PgError::CommandFailed {
            program: what.to_string(),
            status: describe_status(out.status),
            detail: failure_detail(&out, log),
        }),
        Ok(Err(e)) => Err(PgError::io(format!("waiting for {what}"), e)),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // Its own process group (or session): take its helpers down with it.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Err(PgError::Timeout {
                what: what.to_string(),
                after: timeout,
            })
        }
    }
}

fn describe_status(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

fn failure_detail(out: &Output, log: Option<&Path>) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut detail = if stderr.trim().is_empty() {
        tail(&String::from_utf8_lossy(&out.stdout), TAIL_LINES)
    } else {
        tail(&stderr, TAIL_LINES)
    };
    if let Some(log) = log {
        let t = log_tail(log, TAIL_LINES);
        if !t.is_empty() {
            detail.push_str(&format!(" | log {}: {t}", log.display()));
        }
    }
    detail
}

/// The last `n` non-empty lines of `text`, joined with " / ".
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// The last `n` lines of a log file (reads at most its last 64 kB).
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    tail(&String::from_utf8_lossy(&buf), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_non_empty_lines() {
        assert_eq!(tail("a\n\nb\nc\n\n", 2), "b / c");
        assert_eq!(tail("", 3), "");
    }
}
