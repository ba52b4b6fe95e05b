//! Network namespaces for fault injection: a hub namespace holding a bridge, and one
//! namespace per host (a cluster member, an etcd member) joined to the hub's bridge by a
//! veth pair, with an address in a private subnet that exists only inside these
//! namespaces. Nothing is added to the root namespace. Partitions are routes in the cut
//! host's namespace: its packets to the cut addresses are dropped silently, so the far
//! side sees silence too (its packets arrive, the answers never leave); see [`cut`].
//!
//! Every name starts with a per-run prefix (`<base>-<pid>-`); [`remove_stale`] removes what
//! a run that died left behind, and [`Lab`]'s drop kills every process inside its
//! namespaces and deletes them.

use anyhow::{bail, Context};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The `ip` program (Debian package `iproute2`).
const IP: &str = "ip";

/// Run `ip ARGS`, failing with its stderr when it fails.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(IP)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Names of every network namespace (`ip netns list`).
pub fn list_namespaces() -> Vec<String> {
    let Ok(out) = Command::new(IP).args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Pids of the processes inside namespace `ns` (`ip netns pids`).
pub fn pids_in(ns: &str) -> Vec<i32> {
    let Ok(out) = Command::new(IP).args(["netns", "pids", ns]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGKILL every process in `ns` (SIGCONT first: a stopped process dies only when it
/// runs), then wait up to 5 s until none is left.
pub fn kill_all_in(ns: &str) {
    let me = std::process::id() as i32;
    // Bounded: 50 turns of 100 ms.
    for _ in 0..50 {
        let pids: Vec<i32> = pids_in(ns).into_iter().filter(|&p| p != me).collect();
        if pids.is_empty() {
            return;
        }
        for p in pids {
            crate::pg::signal(p, nix::sys::signal::Signal::SIGCONT);
            crate::pg::signal(p, nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::warn!(ns, "processes still inside the namespace after 5 s");
}

/// Kill the processes inside namespace `ns`, then delete it.
pub fn delete_namespace(ns: &str) {
    kill_all_in(ns);
    if let Err(e) = ip(&["netns", "delete", ns]) {
        tracing::warn!(ns, %e, "deleting the namespace failed");
    }
}

/// Remove what runs with this `base` left behind: namespaces named `<base>-<pid>-...`
/// whose pid is no longer alive (or is `also_pid`). Returns the pids of the dead runs.
pub fn remove_stale(base: &str, also_pid: Option<u32>) -> Vec<u32> {
    let mut dead = Vec::new();
    for ns in list_namespaces() {
        let Some(rest) = ns.strip_prefix(&format!("{base}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive || Some(pid) == also_pid {
            tracing::info!(ns, "removing a leftover namespace");
            delete_namespace(&ns);
            if !dead.contains(&pid) {
                dead.push(pid);
            }
        }
    }
    dead
}

/// Move the calling thread into namespace `ns`: sockets it creates afterwards live there.
pub fn enter(ns: &str) -> std::io::Result<()> {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
    // SAFETY: setns on a valid fd we own; it changes only this thread's network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `ip netns exec NS PROGRAM`: `ip` execs the program, so the child's pid is the
/// program's (it also gets a private mount namespace, where /sys is remounted).
pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(IP);
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// One host of the lab: its namespace, its address on the hub's bridge.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub addr: Ipv4Addr,
}

/// A hub namespace with a bridge, hosts attached to it; removed on drop.
pub struct Lab {
    prefix: String,
    hub: Host,
    hosts: Vec<Host>,
    subnet: [u8; 3],
}

impl Lab {
    /// Create namespace `<prefix>-hub` with bridge `br0` at `<subnet>.1/24`.
    pub fn create(prefix: &str, subnet: [u8; 3]) -> anyhow::Result<Lab> {
        let hub = Host {
            name: "hub".into(),
            ns: format!("{prefix}-hub"),
            addr: Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 1),
        };
        ip(&["netns", "add", &hub.ns])?;
        let lab = Lab {
            prefix: prefix.to_string(),
            hub,
            hosts: Vec::new(),
            subnet,
        };
        let ns = lab.hub.ns.clone();
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", lab.hub.addr),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &ns, "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    pub fn hub(&self) -> &Host {
        &self.hub
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Add host `name` (namespace `<prefix>-<name>`) at `<subnet>.<octet>`, its `eth0`
    /// paired with port `<name>` on the hub's bridge.
    pub fn add_host(&mut self, name: &str, octet: u8) -> anyhow::Result<Host> {
        if name.len() > 15 || octet <= 1 || octet == SINK_OCTET {
            bail!("host name {name:?} too long for an interface, or octet {octet} taken");
        }
        let s = self.subnet;
        let host = Host {
            name: name.to_string(),
            ns: format!("{}-{name}", self.prefix),
            addr: Ipv4Addr::new(s[0], s[1], s[2], octet),
        };
        ip(&["netns", "add", &host.ns])?;
        // Pushed now: drop deletes it even if the rest fails.
        self.hosts.push(host.clone());
        let (ns, hub) = (host.ns.as_str(), self.hub.ns.as_str());
        ip(&[
            "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", name, "netns", hub,
        ])?;
        ip(&["-n", hub, "link", "set", name, "master", "br0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", host.addr),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        Ok(host)
    }

    pub fn host(&self, name: &str) -> anyhow::Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .with_context(|| format!("no host {name} in the lab"))
    }

    /// Drop `name`'s packets to each of `to` (see [`cut`]).
    pub fn cut(&self, name: &str, to: &[Ipv4Addr]) -> anyhow::Result<()> {
        cut(&self.host(name)?.ns, to)
    }

    /// Cut `name` from every other host and from the hub.
    pub fn isolate(&self, name: &str) -> anyhow::Result<()> {
        let others: Vec<Ipv4Addr> = std::iter::once(self.hub.addr)
            .chain(self.hosts.iter().filter(|h| h.name != name).map(|h| h.addr))
            .collect();
        self.cut(name, &others)
    }

    /// Remove every cut of `name`.
    pub fn heal(&self, name: &str) -> anyhow::Result<()> {
        heal(&self.host(name)?.ns)
    }
}

/// In namespace `ns`, send the packets for each of `to` to a gateway that does not exist
/// (`<its /24>.254`, which no host of a lab may use): they are dropped silently, as in a
/// real partition — connections hang and time out, nothing is refused — and what the
/// others send this host gets no answer.
pub fn cut(ns: &str, to: &[Ipv4Addr]) -> anyhow::Result<()> {
    for a in to {
        let o = a.octets();
        let sink = Ipv4Addr::new(o[0], o[1], o[2], SINK_OCTET).to_string();
        ip(&[
            "-n",
            ns,
            "route",
            "replace",
            &format!("{a}/32"),
            "via",
            &sink,
        ])?;
    }
    Ok(())
}

/// As [`cut`], but with blackhole routes: this host's own attempts fail at once
/// (`EINVAL`), like a cable pulled on its side.
pub fn cut_reject(ns: &str, to: &[Ipv4Addr]) -> anyhow::Result<()> {
    for a in to {
        ip(&[
            "-n",
            ns,
            "route",
            "replace",
            "blackhole",
            &format!("{a}/32"),
        ])?;
    }
    Ok(())
}

/// Remove every cut made in namespace `ns` (both kinds).
pub fn heal(ns: &str) -> anyhow::Result<()> {
    ip(&["-n", ns, "route", "flush", "type", "blackhole"])?;
    let out = Command::new(IP)
        .args(["-n", ns, "-4", "route", "show"])
        .output()
        .context("ip route show")?;
    // `A via X.Y.Z.254 dev eth0`: the silent cuts.
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [dst, "via", gw, ..] = words.as_slice() {
            if gw.rsplit('.').next() == Some(&SINK_OCTET.to_string()) {
                ip(&["-n", ns, "route", "delete", dst, "via", gw])?;
            }
        }
    }
    Ok(())
}

/// The last octet of the gateway that silently drops what is routed to it.
pub const SINK_OCTET: u8 = 254;

impl Drop for Lab {
    fn drop(&mut self) {
        for h in self.hosts.iter().rev() {
            delete_namespace(&h.ns);
        }
        delete_namespace(&self.hub.ns);
    }
}
