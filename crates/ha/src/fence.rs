//! Fencing beside the agent: a small process (`pgherd fence`) that kills the local
//! PostgreSQL when the agent stops renewing its lease — frozen (SIGSTOP, a hung
//! runtime) or killed — before the lease can expire and another member take over.
//!
//! The lease rule (DESIGN §3.1) is kept by the agent's own loop, which demotes at its
//! cutoff; a frozen or dead agent keeps nothing, and its writable PostgreSQL would run on
//! beside the next primary. A thread in the agent cannot help (SIGSTOP stops every
//! thread), so the guard is a separate process. It is what Patroni leaves to a hardware
//! or softdog watchdog, minus the reboot, and it runs where no watchdog device exists.
//!
//! The agent arms it with an absolute CLOCK_MONOTONIC deadline after every renewal and
//! disarms it when it no longer leads. Messages are lines on the fencer's stdin:
//! `arm <nanoseconds>` and `disarm`. When the deadline passes while armed, the fencer
//! SIGKILLs the postmaster and its children. When stdin closes (the agent died), it still
//! fences at the deadline if armed, then exits. A new agent for the same data directory
//! retires the fencers of earlier agents (SIGTERM) when it starts its own: it keeps the
//! lease rule itself from then on.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// The subcommand of the `pgherd` binary that runs the fencer.
pub const SUBCOMMAND: &str = "fence";

/// Nanoseconds on CLOCK_MONOTONIC: one clock for every process on the machine.
fn monotonic_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which lives on this stack frame.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// `deadline` as nanoseconds on CLOCK_MONOTONIC. The monotonic clock is read first, so
/// a pause between the two readings can only make the result earlier, never later.
fn monotonic_deadline(deadline: Instant) -> u64 {
    let mono = monotonic_nanos();
    let left = deadline.saturating_duration_since(Instant::now());
    mono.saturating_add(left.as_nanos() as u64)
}

/// The agent's handle on its fencer process.
pub struct Fence {
    program: PathBuf,
    data_dir: PathBuf,
    child: Option<(Child, ChildStdin)>,
    /// The deadline last sent (monotonic nanoseconds); `None` while disarmed.
    armed: Option<u64>,
}

impl Fence {
    /// Start the fencer (`program fence --data-dir DATA_DIR`) after retiring those of
    /// earlier agents for the same data directory.
    pub fn start(program: &Path, data_dir: &Path) -> std::io::Result<Fence> {
        retire_stale_fencers(data_dir);
        let mut fence = Fence {
            program: program.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            child: None,
            armed: None,
        };
        fence.spawn()?;
        Ok(fence)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(&self.program)
            .arg(SUBCOMMAND)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::piped())
            // Its own process group: a Ctrl-C meant for the agent does not kill it.
            .process_group(0)
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("the fencer has no stdin"))?;
        info!(pid = child.id(), data_dir = %self.data_dir.display(), "fencer started");
        self.child = Some((child, stdin));
        Ok(())
    }

    /// Kill PostgreSQL at `deadline` unless armed again or disarmed before then.
    pub fn arm(&mut self, deadline: Instant) {
        let at = monotonic_deadline(deadline);
        self.send(&format!("arm {at}\n"));
        self.armed = Some(at);
    }

    /// This agent no longer leads (or demotes by itself): nothing to guard.
    pub fn disarm(&mut self) {
        if self.armed.take().is_some() {
            self.send("disarm\n");
        }
    }

    pub fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Write one message; a fencer that died is started again and told the same.
    fn send(&mut self, message: &str) {
        let written = match &mut self.child {
            Some((_, stdin)) => stdin
                .write_all(message.as_bytes())
                .and_then(|()| stdin.flush()),
            None => Err(std::io::Error::other("not running")),
        };
        if let Err(e) = written {
            warn!(error = %e, "the fencer is gone; starting it again");
            if let Some((mut child, _)) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let resent = self.spawn().and_then(|()| match &mut self.child {
                Some((_, stdin)) => stdin.write_all(message.as_bytes()),
                None => Ok(()),
            });
            if let Err(e) = resent {
                error!(error = %e, "cannot start the fencer: PostgreSQL is not fenced if this agent freezes");
            }
        }
    }
}

impl Drop for Fence {
    /// A clean exit: disarm, then close stdin so the fencer exits.
    fn drop(&mut self) {
        self.disarm();
        if let Some((mut child, stdin)) = self.child.take() {
            drop(stdin);
            // It exits at once on a closed, disarmed stdin; do not wait long for it.
            let until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < until {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM every `… fence --data-dir DATA_DIR` process but our own children: they guard
/// for an agent that is gone, and this one takes over.
fn retire_stale_fencers(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    let wanted = data_dir.as_os_str().as_encoded_bytes();
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_fencer = args.get(1) == Some(&SUBCOMMAND.as_bytes())
            && args
                .windows(2)
                .any(|w| w[0] == b"--data-dir" && w[1] == wanted);
        if is_fencer {
            info!(pid, "retiring the fencer of an earlier agent");
            // SAFETY: kill(2) with a pid read from /proc and a constant signal.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
}

/// What the agent told the fencer.
#[derive(Debug, PartialEq, Eq)]
enum Message {
    Arm(u64),
    Disarm,
}

fn parse(line: &str) -> Option<Message> {
    let mut words = line.split_whitespace();
    match (words.next()?, words.next(), words.next()) {
        ("arm", Some(at), None) => at.parse().ok().map(Message::Arm),
        ("disarm", None, None) => Some(Message::Disarm),
        _ => None,
    }
}

/// How a fencer's run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum FenceOutcome {
    /// The agent closed stdin while disarmed: nothing to guard.
    Released,
    /// The deadline passed while armed: PostgreSQL was killed (this many processes).
    Fenced { killed: usize },
}

/// The fencer's loop (`pgherd fence --data-dir DATA_DIR`), reading the agent's messages
/// from `input`. It returns after fencing, or when the agent closes `input` disarmed.
pub fn run_fencer(data_dir: &Path, input: impl BufRead + Send + 'static) -> FenceOutcome {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in input.lines() {
            let Ok(line) = line else { break };
            match parse(&line) {
                Some(m) => {
                    if tx.send(m).is_err() {
                        break;
                    }
                }
                None => warn!(line, "fencer: ignoring a message it does not understand"),
            }
        }
        // Dropping `tx` tells the loop that the agent is gone.
    });
    let mut armed: Option<u64> = None;
    let mut agent_gone = false;
    loop {
        let received = match armed {
            Some(at) => {
                let now = monotonic_nanos();
                if now >= at {
                    return fence(data_dir, agent_gone);
                }
                rx.recv_timeout(Duration::from_nanos(at - now))
            }
            None if agent_gone => return FenceOutcome::Released,
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(Message::Arm(at)) => armed = Some(at),
            Ok(Message::Disarm) => armed = None,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let Some(at) = armed else {
                    return FenceOutcome::Released;
                };
                if !agent_gone {
                    warn!("fencer: the agent is gone while leading; PostgreSQL will be stopped before its lease can expire");
                    agent_gone = true;
                }
                // Only the deadline is left to wait for.
                std::thread::sleep(Duration::from_nanos(at.saturating_sub(monotonic_nanos())));
            }
        }
    }
}

fn fence(data_dir: &Path, agent_gone: bool) -> FenceOutcome {
    let why = if agent_gone {
        "the agent died"
    } else {
        "the agent stopped renewing its leader lease"
    };
    let Some(pid) = pgherd_postgres::running_postmaster(data_dir) else {
        info!(data_dir = %data_dir.display(), "fencer: {why}, and PostgreSQL is not running");
        return FenceOutcome::Fenced { killed: 0 };
    };
    let killed = pgherd_postgres::kill_server_now(pid);
    error!(
        postmaster = pid,
        killed,
        data_dir = %data_dir.display(),
        "fencer: {why}; killed PostgreSQL before the lease could expire, so no other \
         primary can run beside it"
    );
    FenceOutcome::Fenced { killed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_junk_does_not() {
        assert_eq!(parse("arm 123"), Some(Message::Arm(123)));
        assert_eq!(parse("disarm"), Some(Message::Disarm));
        assert_eq!(parse("arm"), None);
        assert_eq!(parse("arm x"), None);
        assert_eq!(parse("arm 1 2"), None);
        assert_eq!(parse("fire"), None);
    }

    #[test]
    fn a_disarmed_fencer_is_released_when_the_agent_closes_its_input() {
        let dir = tempfile::tempdir().unwrap();
        let input = std::io::Cursor::new(format!(
            "arm {}\ndisarm\n",
            monotonic_nanos() + 60_000_000_000
        ));
        assert_eq!(run_fencer(dir.path(), input), FenceOutcome::Released);
    }

    #[test]
    fn an_armed_fencer_fences_at_the_deadline_after_the_agent_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let input = std::io::Cursor::new(format!(
            "arm {}\n",
            monotonic_deadline(started + Duration::from_millis(300))
        ));
        // No postmaster runs here: nothing to kill, but the deadline is kept.
        assert_eq!(
            run_fencer(dir.path(), input),
            FenceOutcome::Fenced { killed: 0 }
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(290),
            "fenced after {waited:?}"
        );
    }

    #[test]
    fn a_renewed_deadline_postpones_fencing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, reader) = std::os::unix::net::UnixStream::pair().unwrap();
        let data_dir = dir.path().to_path_buf();
        let started = Instant::now();
        let fencer =
            std::thread::spawn(move || run_fencer(&data_dir, std::io::BufReader::new(reader)));
        for _ in 0..4 {
            let at = monotonic_deadline(Instant::now() + Duration::from_millis(200));
            writeln!(writer, "arm {at}").unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        writeln!(writer, "disarm").unwrap();
        drop(writer);
        assert_eq!(fencer.join().unwrap(), FenceOutcome::Released);
        assert!(started.elapsed() >= Duration::from_millis(400));
    }
}
