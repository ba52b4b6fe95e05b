//! Stopping a server at once, for fencing: no shutdown checkpoint, no waiting for clients.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The pids whose parent is `parent`, from `/proc`.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parent_pid(&stat))
                == Some(parent)
        })
        .collect()
}

/// The fourth field of `/proc/<pid>/stat`, after the parenthesised command name.
fn parent_pid(stat: &str) -> Option<i32> {
    let close = stat.rfind(')')?;
    stat.get(close + 1..)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// SIGKILL the postmaster `postmaster` and every process it started (backends, WAL
/// senders, the WAL writer): none of them may acknowledge another commit. The postmaster
/// goes first so that it starts nothing new. Returns how many processes were signalled.
pub fn kill_server_now(postmaster: i32) -> usize {
    let children = children_of(postmaster);
    let mut killed = 0;
    for pid in std::iter::once(postmaster).chain(children) {
        if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pid_is_read_past_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(
            parent_pid("4242 (postgres: walwriter ) S 4200 4200 4200"),
            Some(4200)
        );
        assert_eq!(parent_pid("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parent_pid("garbage"), None);
    }

    #[test]
    fn children_of_finds_a_spawned_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let me = std::process::id() as i32;
        assert!(children_of(me).contains(&(child.id() as i32)));
        let _ = child.kill();
        let _ = child.wait();
    }
}
