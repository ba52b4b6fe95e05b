//! `pgherd ctl drill` on a real cluster: kill -9 of a member whose agent and PostgreSQL
//! run on this host, found by the ports they listen on, after asking.

use super::{BoxFuture, Nodes};
use crate::prompt::confirm;
use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgherd_dcs::{parse_conn_url, Dcs};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Members of the cluster in `dcs` that run here.
pub struct LocalNodes {
    dcs: Arc<dyn Dcs>,
    /// Kill without asking (`--yes`).
    assume_yes: bool,
}

impl LocalNodes {
    pub fn new(dcs: Arc<dyn Dcs>, assume_yes: bool) -> LocalNodes {
        LocalNodes { dcs, assume_yes }
    }

    async fn kill_member(&self, member: &str) -> Result<String> {
        let cluster = self
            .dcs
            .get_cluster()
            .await
            .context("cannot read the cluster")?;
        let m = cluster
            .member(member)
            .with_context(|| format!("{member} is not a member any more"))?;
        let (api_host, api_port) = host_port(&m.data.api_url)
            .with_context(|| format!("{member}'s api_url '{}' is unreadable", m.data.api_url))?;
        let (pg_host, pg_port) = parse_conn_url(&m.data.conn_url)
            .with_context(|| format!("{member}'s conn_url '{}' is unreadable", m.data.conn_url))?;
        for host in [&api_host, &pg_host] {
            if !is_this_host(host) {
                bail!(
                    "{member} runs on {host}, not on this host: run `pgherd ctl drill` \
                     there to kill it"
                );
            }
        }
        let agent = listener_pid(api_port).with_context(|| {
            format!("no process here listens on {member}'s REST port {api_port}")
        })?;
        let postmaster = listener_pid(pg_port).with_context(|| {
            format!("no process here listens on {member}'s PostgreSQL port {pg_port}")
        })?;
        let what = format!("agent pid {agent}, postmaster pid {postmaster}");
        if !self.assume_yes && !confirm(&format!("kill -9 {member} ({what}) on this host?"))? {
            bail!("not confirmed: nothing was killed");
        }
        // Already gone is fine: the node is down either way.
        let _ = kill(Pid::from_raw(agent), Signal::SIGKILL);
        kill_postmaster(postmaster);
        Ok(format!("kill -9 of {what}"))
    }
}

impl Nodes for LocalNodes {
    fn kill<'a>(&'a mut self, member: &'a str) -> BoxFuture<'a, Result<String>> {
        Box::pin(self.kill_member(member))
    }

    fn revive<'a>(&'a mut self, member: &'a str) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            Ok(format!(
                "{member} was not restarted by the drill: start it as your service manager \
                 does; it rejoins as a replica"
            ))
        })
    }
}

/// `http://host:port/...` → (host, port).
fn host_port(url: &str) -> Option<(String, u16)> {
    let u = reqwest::Url::parse(url).ok()?;
    Some((
        u.host_str()?.trim_matches(['[', ']']).to_string(),
        u.port_or_known_default()?,
    ))
}

/// Whether `host` names an address of this machine: one a socket can bind to.
fn is_this_host(host: &str) -> bool {
    use std::net::ToSocketAddrs;
    let Ok(addrs) = (host, 0).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| std::net::UdpSocket::bind((a.ip(), 0)).is_ok())
}

/// The process listening on TCP `port` here, from /proc.
fn listener_pid(port: u16) -> Option<i32> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return None;
    }
    let wanted: BTreeSet<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                if wanted.contains(link.to_string_lossy().as_ref()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Socket inodes listening on `port` (IPv4 and IPv6).
fn listening_inodes(port: u16) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT, st 0A is LISTEN, field 9 the inode.
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let listening_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && listening_port == Some(port) {
                inodes.push(inode.to_string());
            }
        }
    }
    inodes
}

/// kill -9 of a postmaster and of its backends and helpers at once, as the loss of its
/// node would end them.
pub fn kill_postmaster(pid: i32) {
    let children = children_of(pid);
    for p in std::iter::once(pid).chain(children) {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

/// Direct children of `parent` (the postmaster's backends and helpers).
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // The command may hold spaces and parentheses: fields follow the last ')'.
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}
