//! Real etcd for tests: one single-node etcd on free loopback ports, in a temp dir;
//! plain HTTP, or HTTPS (optionally demanding client certificates) with [`EtcdServer::start_tls`].

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long etcd may take to answer its health check after starting.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for a killed etcd to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running etcd, killed and reaped on drop.
pub struct EtcdServer {
    binary: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// Where `/health` is served over plain HTTP (`--listen-metrics-urls`).
    metrics_port: u16,
    tls: Option<EtcdTlsFiles>,
    child: Option<Child>,
}

/// etcd's TLS toward clients.
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA clients' certificates must be signed by.
    pub trusted_ca: PathBuf,
    /// `--client-cert-auth` and `--trusted-ca-file`: refuse clients without a
    /// certificate signed by `trusted_ca` (etcd 3.4 asks for one whenever it has a
    /// trusted CA file, so without this neither is passed).
    pub client_cert_auth: bool,
    /// `--auth-token-ttl`: seconds a (simple) authentication token lives unused
    /// (etcd's default: 300).
    pub auth_token_ttl: Option<u32>,
}

fn find_etcd() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("etcd");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let p = PathBuf::from("/usr/bin/etcd");
    if p.is_file() {
        return Ok(p);
    }
    bail!("etcd binary not found on PATH or at /usr/bin/etcd (Debian package `etcd-server`)")
}

/// The last `max` bytes of a file, for error messages.
fn tail(path: &Path, max: usize) -> String {
    let mut buf = Vec::new();
    if File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .is_err()
    {
        return format!("(no log at {})", path.display());
    }
    let start = buf.len().saturating_sub(max);
    String::from_utf8_lossy(&buf[start..]).into_owned()
}

/// One HTTP `GET /health` against etcd's client port; true when it reports healthy.
fn healthy(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut resp = Vec::new();
    // HTTP/1.0: etcd closes after the answer; the read timeout bounds a stuck server.
    let _ = s.take(64 * 1024).read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    text.contains("\"health\":\"true\"")
}

impl EtcdServer {
    /// Start etcd on free loopback ports and wait (up to 15 s) until it is healthy.
    pub fn start() -> anyhow::Result<EtcdServer> {
        EtcdServer::start_with(None)
    }

    /// Start etcd serving its clients over HTTPS with `tls`.
    pub fn start_tls(tls: EtcdTlsFiles) -> anyhow::Result<EtcdServer> {
        EtcdServer::start_with(Some(tls))
    }

    fn start_with(tls: Option<EtcdTlsFiles>) -> anyhow::Result<EtcdServer> {
        let binary = find_etcd()?;
        let dir = tempfile::Builder::new()
            .prefix("pgherd-etcd-")
            .tempdir()
            .context("creating a temp dir for etcd")?;
        let mut server = EtcdServer {
            binary,
            dir,
            client_port: crate::free_port(),
            peer_port: crate::free_port(),
            metrics_port: crate::free_port(),
            tls,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("creating the etcd log file")?;
        let log2 = log
            .try_clone()
            .context("cloning the etcd log file handle")?;
        let mut command = Command::new(&self.binary);
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()));
            if tls.client_cert_auth {
                command
                    .arg(format!("--trusted-ca-file={}", tls.trusted_ca.display()))
                    .arg("--client-cert-auth");
            }
            if let Some(ttl) = tls.auth_token_ttl {
                command.arg(format!("--auth-token-ttl={ttl}"));
            }
        }
        let child = command
            .arg("--name=default")
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                self.metrics_port
            ))
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        // Bounded by the deadline (and by START_TIMEOUT / 100 ms turns).
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    bail!(
                        "etcd exited at start ({status}); log tail:\n{}",
                        tail(&self.log_path(), 4000)
                    );
                }
            }
            if healthy(self.metrics_port) {
                tracing::debug!(endpoint = %client, "etcd is up");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
        bail!(
            "etcd did not become healthy at {client} within {START_TIMEOUT:?}; log tail:\n{}",
            tail(&self.log_path(), 4000)
        )
    }

    /// `http://127.0.0.1:<client port>` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The tail of etcd's log, for diagnostics.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path(), 4000)
    }

    fn signal(&self, sig: Signal) {
        if let Some(c) = &self.child {
            let Ok(pid) = i32::try_from(c.id()) else {
                return;
            };
            if let Err(e) = kill(Pid::from_raw(pid), sig) {
                tracing::warn!(%e, ?sig, "signalling etcd failed");
            }
        }
    }

    /// Whether every thread of the process is stopped, from `/proc/<pid>/task/*/stat`
    /// (state `T`). `None` when it cannot be told (no process, no /proc).
    fn stopped(&self) -> Option<bool> {
        let pid = self.child.as_ref()?.id();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let mut all = true;
        // Bounded by the number of threads of the process.
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            // The state follows the parenthesised command name, which may contain spaces.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let state = rest.split_whitespace().next().unwrap_or("");
            all &= state == "T" || state == "t";
        }
        Some(all)
    }

    /// Signal etcd, then wait (up to 2 s) until the kernel has applied it: a signal is
    /// delivered asynchronously, and a request sent right after SIGSTOP could still be
    /// served.
    fn signal_and_wait(&self, sig: Signal, want_stopped: bool) {
        self.signal(sig);
        let deadline = Instant::now() + Duration::from_secs(2);
        // Bounded by the 2 s deadline.
        while Instant::now() < deadline {
            match self.stopped() {
                Some(s) if s != want_stopped => std::thread::sleep(Duration::from_millis(5)),
                _ => return,
            }
        }
        tracing::warn!(?sig, "etcd did not change state within 2 s");
    }

    /// Freeze etcd (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&self) {
        self.signal_and_wait(Signal::SIGSTOP, true);
    }

    /// Thaw a paused etcd (SIGCONT).
    pub fn resume(&self) {
        self.signal_and_wait(Signal::SIGCONT, false);
    }

    /// Kill etcd (SIGKILL) and reap it. Its data dir stays, so [`restart`](Self::restart) works.
    pub fn kill(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = c.kill();
        let deadline = Instant::now() + REAP_TIMEOUT;
        // Bounded by REAP_TIMEOUT.
        while Instant::now() < deadline {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        tracing::warn!(pid = c.id(), "etcd not reaped within {REAP_TIMEOUT:?}");
    }

    /// Kill etcd and start it again on the same ports and data dir (a crash and a restart).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
