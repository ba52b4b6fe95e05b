//! The processes of the run, each in its namespace: three etcd members, three `pgherd
//! node` agents (with their PostgreSQL, each data directory on its own small tmpfs) and
//! the pooler in the hub. The runner itself runs in the hub namespace.

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use pgherd_testkit::netns;
use pgherd_testkit::pg::{give_to_postgres, read_postmaster_pid, signal};
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SUBNET: [u8; 3] = [10, 213, 0];
pub const TTL: u64 = 10;
pub const LOOP_WAIT: u64 = 2;
pub const RETRY_TIMEOUT: u64 = 4;
pub const PG_PORT: u16 = 5432;
pub const API_PORT: u16 = 8008;
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;
pub const RW_PORT: u16 = 6432;
pub const RO_PORT: u16 = 6433;
pub const SUPERUSER_PASSWORD: &str = "chaos-su-pass";
const REPLICATION_PASSWORD: &str = "chaos-rep-pass";
/// Each member's data directory lives on a tmpfs of this many MiB (the disk-full fault
/// fills it).
pub const DATA_FS_MIB: u64 = 512;

pub fn hub_addr() -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 1)
}

pub fn etcd_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 11 + i as u8)
}

pub fn member_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 21 + i as u8)
}

/// Signal `pid`, ignoring a process that is already gone.
fn send(pid: i32, sig: Signal) {
    signal(pid, sig);
}

/// Kill a child and reap it (bounded: the kernel reaps a SIGKILLed process at once,
/// unless it is stopped, hence SIGCONT first).
fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        if let Ok(pid) = i32::try_from(c.id()) {
            send(pid, Signal::SIGCONT);
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn log_file(path: &Path) -> anyhow::Result<(fs::File, fs::File)> {
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let g = f.try_clone().context("cloning a log handle")?;
    Ok((f, g))
}

fn mkdir_for_postgres(p: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    give_to_postgres(p).with_context(|| format!("chown {}", p.display()))
}

pub struct EtcdMember {
    pub idx: usize,
    pub name: String,
    pub ns: String,
    dir: PathBuf,
    initial_cluster: String,
    token: String,
    child: Option<Child>,
}

impl EtcdMember {
    pub fn new(idx: usize, prefix: &str, run_dir: &Path) -> EtcdMember {
        let name = format!("e{}", idx + 1);
        let initial_cluster = (0..3)
            .map(|i| format!("e{}=http://{}:{ETCD_PEER_PORT}", i + 1, etcd_addr(i)))
            .collect::<Vec<_>>()
            .join(",");
        EtcdMember {
            idx,
            ns: format!("{prefix}-{name}"),
            dir: run_dir.join(&name),
            name,
            initial_cluster,
            token: prefix.to_string(),
            child: None,
        }
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let (out, err) = log_file(&self.dir.join("etcd.log"))?;
        let a = etcd_addr(self.idx);
        let child = netns::command_in(&self.ns, "etcd")
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!(
                "--listen-client-urls=http://{a}:{ETCD_CLIENT_PORT},http://127.0.0.1:{ETCD_CLIENT_PORT}"
            ))
            .arg(format!("--advertise-client-urls=http://{a}:{ETCD_CLIENT_PORT}"))
            .arg(format!("--listen-peer-urls=http://{a}:{ETCD_PEER_PORT}"))
            .arg(format!("--initial-advertise-peer-urls=http://{a}:{ETCD_PEER_PORT}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg("--initial-cluster-state=new")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting etcd (Debian package etcd-server)")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn etcd_hosts() -> String {
    (0..3)
        .map(|i| format!("{}:{ETCD_CLIENT_PORT}", etcd_addr(i)))
        .collect::<Vec<_>>()
        .join(",")
}

pub struct Member {
    pub idx: usize,
    pub name: String,
    pub ns: String,
    pub dir: PathBuf,
    config: PathBuf,
    pgherd: PathBuf,
    child: Option<Child>,
    /// Kept down by a fault: the supervisor does not restart it.
    pub held_down: bool,
    /// Restarts by the supervisor after the agent exited by itself.
    pub unexpected_exits: u32,
    mounted: bool,
}

impl Member {
    pub fn new(idx: usize, prefix: &str, run_dir: &Path, pgherd: &Path) -> Member {
        let name = format!("m{}", idx + 1);
        let dir = run_dir.join(&name);
        Member {
            idx,
            ns: format!("{prefix}-{name}"),
            config: dir.join("node.yml"),
            dir,
            name,
            pgherd: pgherd.to_path_buf(),
            child: None,
            held_down: false,
            unexpected_exits: 0,
            mounted: false,
        }
    }

    /// The tmpfs holding the data directory.
    pub fn fs_dir(&self) -> PathBuf {
        self.dir.join("fs")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.fs_dir().join("data")
    }

    /// MiB in use on the data filesystem: WAL that nothing frees (a forgotten slot) shows
    /// here long before the disk is full.
    pub fn data_fs_used_mib(&self) -> Option<u64> {
        let st = nix::sys::statvfs::statvfs(&self.fs_dir()).ok()?;
        let block = st.fragment_size() as u64;
        let used = (st.blocks() as u64).saturating_sub(st.blocks_free() as u64);
        Some(used * block / (1 << 20))
    }

    pub fn fill_file(&self) -> PathBuf {
        self.fs_dir().join("chaos-fill")
    }

    /// Directories, the data filesystem and node.yml.
    pub fn prepare(
        &mut self,
        scope: &str,
        synchronous: bool,
        failsafe: bool,
    ) -> anyhow::Result<()> {
        mkdir_for_postgres(&self.dir)?;
        let fs_dir = self.fs_dir();
        fs::create_dir_all(&fs_dir)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={DATA_FS_MIB}m,mode=0755"))
            .arg(format!("{}-data", self.ns))
            .arg(&fs_dir)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "mounting a tmpfs at {}: {}",
                fs_dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        self.mounted = true;
        give_to_postgres(&fs_dir)?;
        fs::write(&self.config, self.yaml(scope, synchronous, failsafe))?;
        Ok(())
    }

    fn yaml(&self, scope: &str, synchronous: bool, failsafe: bool) -> String {
        let a = member_addr(self.idx);
        let dir = self.dir.display();
        let data = self.data_dir();
        let data = data.display();
        let etcd = etcd_hosts();
        let net = format!("{}.{}.{}.0/24", SUBNET[0], SUBNET[1], SUBNET[2]);
        format!(
            r#"scope: {scope}
namespace: /pgherd-chaos/
name: {name}

restapi:
  listen: {a}:{API_PORT}
  connect_address: {a}:{API_PORT}

etcd3:
  hosts: {etcd}

bootstrap:
  dcs:
    ttl: {TTL}
    loop_wait: {LOOP_WAIT}
    retry_timeout: {RETRY_TIMEOUT}
    maximum_lag_on_failover: 1048576
    synchronous_mode: {synchronous}
    failsafe_mode: {failsafe}
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_keep_size: 64MB
        max_wal_size: 96MB
        min_wal_size: 32MB
        max_connections: 60
  # 1 MiB WAL segments: every promotion starts its timeline with a copy of the current
  # segment, and each timeline's copy stays until WAL moves past it. With a few writes a
  # second and a failover every other fault, 16 MiB segments fill the data filesystem in
  # about 40 faults (seen at fault 46 of a 100-fault run).
  initdb:
    - encoding: UTF8
    - data-checksums
    - wal-segsize: 1
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 scram-sha-256
    - host all all {net} scram-sha-256
    - host replication replicator {net} scram-sha-256

postgresql:
  listen: 127.0.0.1,{a}:{PG_PORT}
  connect_address: {a}:{PG_PORT}
  data_dir: {data}
  pgpass: {dir}/pgpass
  authentication:
    replication:
      username: replicator
      password: {REPLICATION_PASSWORD}
    superuser:
      username: postgres
      password: {SUPERUSER_PASSWORD}
    rewind:
      username: rewinder
      password: chaos-rewind-pass
  parameters:
    unix_socket_directories: '{dir}'
    shared_buffers: 16MB
"#,
            name = self.name,
        )
    }

    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        let (out, err) = log_file(&self.dir.join("agent.log"))?;
        let child = netns::command_in(&self.ns, &self.pgherd)
            .args(["node", "-c"])
            .arg(&self.config)
            .env("PGHERD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} node", self.pgherd.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn agent_pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    /// The agent exited (or was never started).
    pub fn agent_gone(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    pub fn kill_agent(&mut self) {
        kill_child(&mut self.child);
    }

    pub fn postmaster_pid(&self) -> Option<i32> {
        read_postmaster_pid(&self.data_dir())
    }

    /// `kill -9` PostgreSQL: the postmaster and its process group (its own: the agent
    /// starts it in a new session).
    pub fn kill_postgres(&self) -> bool {
        let Some(pid) = self.postmaster_pid() else {
            return false;
        };
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
            .map(|p| p.as_raw())
            .unwrap_or(0);
        if pgid > 1 && Some(pgid) != self.agent_pid() {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), Signal::SIGKILL);
        }
        send(pid, Signal::SIGKILL);
        true
    }

    pub fn signal_postmaster(&self, sig: Signal) -> Option<i32> {
        let pid = self.postmaster_pid()?;
        send(pid, sig);
        Some(pid)
    }

    /// Fill the data filesystem with a file, up to ENOSPC (bounded by the fs size).
    pub fn fill_disk(&self) -> anyhow::Result<u64> {
        let mut f = fs::File::create(self.fill_file())?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        // Bounded: at most 4096 MiB, far more than the tmpfs holds.
        for _ in 0..4096 {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(_) => break,
            }
        }
        // Fill the last partial chunk too.
        for _ in 0..1024 {
            match f.write(&chunk[..1024]) {
                Ok(n) if n > 0 => written += n as u64,
                _ => break,
            }
        }
        Ok(written)
    }

    pub fn free_disk(&self) {
        let _ = fs::remove_file(self.fill_file());
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Copy PostgreSQL's logs (`*.log` beside and in the data directory) out of the data
    /// filesystem before it goes.
    fn save_pg_logs(&self) {
        for dir in [self.fs_dir(), self.data_dir(), self.data_dir().join("log")] {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".log") {
                    let _ = fs::copy(e.path(), self.dir.join(format!("pg-{name}")));
                }
            }
        }
    }

    /// Kill the agent and PostgreSQL, unmount the data filesystem.
    pub fn teardown(&mut self) {
        self.kill_agent();
        if let Some(pid) = self.postmaster_pid() {
            send(pid, Signal::SIGCONT);
        }
        self.kill_postgres();
        self.save_pg_logs();
        if self.mounted {
            let deadline = Instant::now() + Duration::from_secs(5);
            // Bounded by the deadline: backends may take a moment to exit.
            while Instant::now() < deadline {
                let ok = Command::new("umount")
                    .arg(self.fs_dir())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            self.mounted = false;
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// `pgherd pooler -c pooler.yml` in the hub: `postgres` read-write on RW_PORT,
/// read-only on RO_PORT, following the cluster through etcd.
pub struct Pooler {
    child: Option<Child>,
}

impl Pooler {
    pub fn start(run_dir: &Path, pgherd: &Path, scope: &str) -> anyhow::Result<Pooler> {
        let dir = run_dir.join("pooler");
        fs::create_dir_all(&dir)?;
        let userlist = dir.join("userlist.txt");
        fs::write(
            &userlist,
            format!("\"postgres\" \"{SUPERUSER_PASSWORD}\"\n"),
        )?;
        let yml = dir.join("pooler.yml");
        let hosts = (0..3)
            .map(|i| format!("\"{}:{ETCD_CLIENT_PORT}\"", etcd_addr(i)))
            .collect::<Vec<_>>()
            .join(", ");
        fs::write(
            &yml,
            format!(
                "pgbouncer:\n\
                 \x20 listen_addr: {hub}\n\
                 \x20 listen_port: {RW_PORT}\n\
                 \x20 unix_socket_dir: ''\n\
                 \x20 auth_type: scram-sha-256\n\
                 \x20 auth_file: {userlist}\n\
                 \x20 admin_users: postgres\n\
                 \x20 pool_mode: transaction\n\
                 \x20 default_pool_size: 8\n\
                 \x20 query_wait_timeout: 30\n\
                 \x20 server_login_retry: 1\n\
                 databases:\n\
                 \x20 postgres: {{dbname: postgres}}\n\
                 cluster:\n\
                 \x20 scope: {scope}\n\
                 \x20 namespace: /pgherd-chaos/\n\
                 \x20 etcd3: {{hosts: [{hosts}]}}\n\
                 routes:\n\
                 \x20 - {{listen_port: {RW_PORT}, role: primary}}\n\
                 \x20 - {{listen_port: {RO_PORT}, role: replica}}\n",
                hub = hub_addr(),
                userlist = userlist.display(),
            ),
        )?;
        let (out, err) = log_file(&dir.join("pooler.log"))?;
        let child = Command::new(pgherd)
            .args(["pooler", "-c"])
            .arg(&yml)
            .env("PGHERD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting pgherd pooler")?;
        let mut p = Pooler { child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(20);
        // Bounded by the deadline.
        while std::net::TcpStream::connect((hub_addr(), RW_PORT)).is_err() {
            if Instant::now() > deadline || p.gone() {
                bail!("the pooler does not listen on {}:{RW_PORT}", hub_addr());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(p)
    }

    pub fn gone(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}
