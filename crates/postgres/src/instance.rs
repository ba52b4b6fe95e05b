//! One local PostgreSQL instance: its data directory, config files and server process.

use crate::binaries::{Binaries, OsUser};
use crate::conninfo::{ConnInfo, Credentials};
use crate::controldata::ControlData;
use crate::error::{describe_pg_error, PgError, Result};
use crate::params::{quote_conf_value, translate_parameters, UNSETTABLE};
use crate::process::{log_tail, pg_command, run};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{debug, info, warn};

/// First line of the postgresql.conf we write; a file without it is initdb's (or the
/// user's) and becomes postgresql.base.conf.
const MANAGED_MARKER: &str = "# Managed by pgherd";
const BASE_CONF: &str = "postgresql.base.conf";
const STANDBY_SIGNAL: &str = "standby.signal";
/// Config files pg_rewind would overwrite with the source's copies; kept across a rewind.
const KEPT_ACROSS_REWIND: &[&str] = &["postgresql.conf", BASE_CONF, "pg_hba.conf", "pg_ident.conf"];
const INITDB_TIMEOUT: Duration = Duration::from_secs(600);
const SHORT_TOOL_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Extra time we give pg_ctl beyond its own `-t`.
const PG_CTL_GRACE: Duration = Duration::from_secs(5);
/// How long a postmaster launched by `pg_ctl start -W` may take to write its pid file.
const POSTMASTER_APPEARS: Duration = Duration::from_secs(10);
/// How long we wait for a killed postmaster to be reaped by its parent.
const ZOMBIE_WAIT: Duration = Duration::from_secs(10);

/// Everything needed to manage one local PostgreSQL instance.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// Member name; the default `application_name` in primary_conninfo.
    pub name: String,
    pub data_dir: PathBuf,
    pub bin: Binaries,
    /// Who runs the PostgreSQL programs (`None`: ourselves, when not root).
    pub os_user: Option<OsUser>,
    /// PostgreSQL's `listen_addresses` (`*`, `127.0.0.1,::1`, ...).
    pub listen_addresses: String,
    pub port: u16,
    /// Where we connect to it (a host name, IP, or a Unix socket directory).
    pub connect_host: String,
    pub superuser: Credentials,
    pub replication: Credentials,
    /// postgresql.conf parameters (Patroni's `postgresql.parameters`); translated for
    /// the running major version when written.
    pub parameters: BTreeMap<String, String>,
    /// Lines of pg_hba.conf; `None` keeps the existing file.
    pub pg_hba: Option<Vec<String>>,
    /// The libpq password file we write and hand to pg_basebackup, pg_rewind and
    /// primary_conninfo.
    pub pgpass: PathBuf,
    /// pg_ctl's `-l` log file.
    pub log_file: PathBuf,
}

/// What is in the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirState {
    /// It does not exist.
    Missing,
    /// It exists and is empty (dot files and `lost+found` aside).
    Empty,
    /// It holds files but no cluster (no PG_VERSION or global/pg_control): an interrupted
    /// clone or initdb. Remove it before cloning again.
    Incomplete,
    /// It holds a cluster (PG_VERSION and global/pg_control).
    Initialized,
}

/// A postmaster's state as it records it in `postmaster.pid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostmasterStatus {
    /// Listening, but recovering: connections are refused until a consistent state.
    Starting,
    /// A hot standby accepting read-only connections.
    Standby,
    /// Accepting connections.
    Ready,
    /// Shutting down.
    Stopping,
}

impl PostmasterStatus {
    /// The postmaster has opened its sockets and is not shutting down.
    pub fn is_up(self) -> bool {
        self != PostmasterStatus::Stopping
    }
}

/// How `pg_ctl stop` shuts down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Wait for clients to disconnect.
    Smart,
    /// Disconnect clients, checkpoint, stop.
    Fast,
    /// Stop without a checkpoint (crash recovery at next start).
    Immediate,
}

impl StopMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// How a standby replicates: from `primary` (none: a standby without upstream, e.g.
/// while there is no leader), through replication slot `slot` on it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StandbyConfig {
    pub primary: Option<ConnInfo>,
    pub slot: Option<String>,
}

/// One local PostgreSQL instance. Cheap to clone; holds no process handle: the running
/// postmaster is found through `postmaster.pid`, so a new `Instance` adopts one that an
/// earlier agent started.
#[derive(Debug, Clone)]
pub struct Instance {
    cfg: InstanceConfig,
}

/// pgherd's pg_hba.conf when the config has no `pg_hba`: SCRAM passwords from anywhere
/// (`listen_addresses` decides who can reach the server), replication for
/// `replication_user` only.
pub fn default_pg_hba(replication_user: &str) -> String {
    let role = quote_hba_name(replication_user);
    format!(
        "{MANAGED_MARKER}: default (postgresql.pg_hba is not set); written once after initdb.\n\
         # TYPE  DATABASE     USER   ADDRESS       METHOD\n\
         local   all          all                  scram-sha-256\n\
         host    all          all    0.0.0.0/0     scram-sha-256\n\
         host    all          all    ::/0          scram-sha-256\n\
         local   replication  {role}               scram-sha-256\n\
         host    replication  {role}  0.0.0.0/0    scram-sha-256\n\
         host    replication  {role}  ::/0         scram-sha-256\n"
    )
}

/// A role name as pg_hba.conf reads it: double-quoted when it is not a plain word.
fn quote_hba_name(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain && !matches!(name, "all" | "sameuser" | "samerole" | "samegroup") {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

impl Instance {
    pub fn new(cfg: InstanceConfig) -> Instance {
        Instance { cfg }
    }

    pub fn config(&self) -> &InstanceConfig {
        &self.cfg
    }

    /// Change settings (e.g. parameters from the DCS) before the next `write_config`.
    pub fn config_mut(&mut self) -> &mut InstanceConfig {
        &mut self.cfg
    }

    pub fn data_dir(&self) -> &Path {
        &self.cfg.data_dir
    }

    fn os_user(&self) -> Option<&OsUser> {
        self.cfg.os_user.as_ref()
    }

    fn expected_owner(&self) -> (String, u32) {
        match self.os_user() {
            Some(u) => (u.name.clone(), u.uid),
            None => {
                let uid = nix::unistd::geteuid();
                let name = nix::unistd::User::from_uid(uid)
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| format!("uid {uid}"));
                (name, uid.as_raw())
            }
        }
    }

    /// Missing, empty, incomplete or initialized; an error when it is not a directory,
    /// belongs to another user than the one running PostgreSQL, or (initialized) has
    /// permissions PostgreSQL refuses.
    pub fn data_dir_state(&self) -> Result<DataDirState> {
        let path = &self.cfg.data_dir;
        let md = match std::fs::metadata(path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DataDirState::Missing),
            Err(e) => return Err(PgError::io(format!("inspecting {}", path.display()), e)),
        };
        if !md.is_dir() {
            return Err(PgError::DataDirNotDirectory { path: path.clone() });
        }
        let (expected, expected_uid) = self.expected_owner();
        if md.uid() != expected_uid {
            return Err(PgError::DataDirOwner {
                path: path.clone(),
                owner_uid: md.uid(),
                expected,
                expected_uid,
            });
        }
        if path.join("PG_VERSION").is_file() && path.join("global/pg_control").is_file() {
            let mode = md.permissions().mode() & 0o7777;
            if mode & 0o027 != 0 {
                return Err(PgError::DataDirPermissions {
                    path: path.clone(),
                    mode,
                });
            }
            return Ok(DataDirState::Initialized);
        }
        let entries = std::fs::read_dir(path)
            .map_err(|e| PgError::io(format!("listing {}", path.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| PgError::io(format!("listing {}", path.display()), e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with('.') && name != "lost+found" {
                return Ok(DataDirState::Incomplete);
            }
        }
        Ok(DataDirState::Empty)
    }

    /// `pg_controldata` of the data directory.
    pub async fn controldata(&self) -> Result<ControlData> {
        let mut cmd = pg_command(&self.cfg.bin, "pg_controldata", self.os_user(), false)?;
        cmd.env("LANG", "C")
            .env("LC_ALL", "C")
            .arg("-D")
            .arg(&self.cfg.data_dir);
        let out = run(cmd, "pg_controldata", SHORT_TOOL_TIMEOUT, None).await?;
        ControlData::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// Create the (missing or empty) data directory with mode 0700, owned by the OS user;
    /// missing parents are created (owned by us) on the way.
    fn prepare_empty_data_dir(&self) -> Result<()> {
        let path = &self.cfg.data_dir;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| PgError::io(format!("creating {}", parent.display()), e))?;
        }
        match std::fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(PgError::io(format!("creating {}", path.display()), e)),
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| PgError::io(format!("chmod 0700 {}", path.display()), e))?;
        self.chown(path)
    }

    fn chown(&self, path: &Path) -> Result<()> {
        if let Some(u) = self.os_user() {
            std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
                .map_err(|e| PgError::io(format!("chown {} {}", u.name, path.display()), e))?;
        }
        Ok(())
    }

    /// Write `contents` to `path` atomically (temp file + rename), with `mode`, owned by
    /// the OS user.
    fn write_owned(&self, path: &Path, contents: &[u8], mode: u32) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}.pgherd-tmp"));
        let write = || -> std::io::Result<()> {
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)?;
            f.write_all(contents)?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            if let Some(u) = self.os_user() {
                std::os::unix::fs::fchown(&f, Some(u.uid), Some(u.gid))?;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            PgError::io(format!("writing {}", path.display()), e)
        })
    }

    /// `initdb` into the missing or empty data directory. `args` are Patroni's
    /// `bootstrap.initdb` items as initdb options (`--encoding=UTF8`,
    /// `--data-checksums`; a leading `--` is added when missing). The superuser's name and
    /// password go in through `--username` and a temporary `--pwfile`.
    pub async fn initdb(&self, args: &[String]) -> Result<()> {
        match self.data_dir_state()? {
            DataDirState::Missing | DataDirState::Empty => {}
            state => {
                return Err(PgError::DataDirNotEmpty {
                    path: self.cfg.data_dir.clone(),
                    state: format!("{state:?}").to_lowercase(),
                    action: "run initdb".into(),
                })
            }
        }
        self.prepare_empty_data_dir()?;
        let mut cmd = pg_command(&self.cfg.bin, "initdb", self.os_user(), false)?;
        cmd.arg("-D")
            .arg(&self.cfg.data_dir)
            .arg(format!("--username={}", self.cfg.superuser.username));
        for a in args {
            let a = if a.starts_with('-') {
                a.clone()
            } else {
                format!("--{a}")
            };
            let name = a.split('=').next().unwrap_or_default();
            if matches!(
                name,
                "-D" | "--pgdata" | "-U" | "--username" | "--pwfile" | "-W" | "--pwprompt"
            ) {
                warn!(arg = %name, "ignoring initdb option that pgherd sets itself");
                continue;
            }
            cmd.arg(a);
        }
        // Keep the temporary file alive until initdb is done; removed on drop.
        let _pwfile = match &self.cfg.superuser.password {
            Some(pw) => {
                let f = tempfile::Builder::new()
                    .prefix("pgherd-pwfile-")
                    .tempfile()
                    .map_err(|e| PgError::io("creating initdb's password file", e))?;
                let write = || -> std::io::Result<()> {
                    let mut file = f.as_file();
                    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                    if let Some(u) = self.os_user() {
                        std::os::unix::fs::fchown(file, Some(u.uid), Some(u.gid))?;
                    }
                    file.write_all(pw.as_bytes())?;
                    file.write_all(b"\n")?;
                    file.flush()
                };
                write().map_err(|e| PgError::io("writing initdb's password file", e))?;
                cmd.arg(format!("--pwfile={}", f.path().display()));
                Some(f)
            }
            None => None,
        };
        info!(data_dir = %self.cfg.data_dir.display(), "running initdb");
        run(cmd, "initdb", INITDB_TIMEOUT, None).await?;
        self.replace_initdb_pg_hba()?;
        Ok(())
    }

    /// initdb's pg_hba.conf trusts every local connection, and lets any role replicate.
    /// Without `pg_hba` in the config, replace it once, after initdb, with password
    /// (SCRAM) authentication for everyone and replication for the replication role only
    /// (replicas clone it). A file the operator edits later is left alone. Without a
    /// superuser password the agent could not log in under it: initdb's file stays, with
    /// a warning.
    fn replace_initdb_pg_hba(&self) -> Result<()> {
        if self.cfg.pg_hba.is_some() {
            return Ok(());
        }
        if self.cfg.superuser.password.is_none() {
            warn!(
                "no superuser password: pg_hba.conf keeps initdb's trust authentication; \
                set postgresql.authentication.superuser.password (or postgresql.pg_hba)"
            );
            return Ok(());
        }
        let text = default_pg_hba(&self.cfg.replication.username);
        self.write_owned(
            &self.cfg.data_dir.join("pg_hba.conf"),
            text.as_bytes(),
            0o600,
        )?;
        info!(
            "wrote pg_hba.conf: SCRAM for every role, replication for {} only",
            self.cfg.replication.username
        );
        Ok(())
    }

    /// Write the config files, Patroni style: initdb's postgresql.conf becomes
    /// postgresql.base.conf (once), and postgresql.conf includes it and sets our managed
    /// parameters; as a standby also primary_conninfo (password from the pgpass file),
    /// primary_slot_name, recovery_target_timeline and `standby.signal`. pg_hba.conf only
    /// when `pg_hba` is set. Also writes the pgpass file. Takes effect at the next start
    /// (or reload, for reloadable parameters).
    pub async fn write_config(&self, standby: Option<&StandbyConfig>) -> Result<()> {
        let dd = &self.cfg.data_dir;
        let conf = dd.join("postgresql.conf");
        let base = dd.join(BASE_CONF);
        if !base.exists() {
            if conf.exists() && !is_managed(&conf) {
                std::fs::rename(&conf, &base).map_err(|e| {
                    PgError::io(format!("renaming {} to {BASE_CONF}", conf.display()), e)
                })?;
                info!(file = %base.display(), "kept initdb's postgresql.conf as {BASE_CONF}");
            } else {
                self.write_owned(&base, b"", 0o600)?;
            }
        }

        let (mut params, notes) =
            translate_parameters(self.cfg.bin.major_version, &self.cfg.parameters);
        for note in notes {
            debug!("parameters: {note}");
        }
        let mut managed: Vec<(&str, String)> = vec![
            ("listen_addresses", self.cfg.listen_addresses.clone()),
            ("port", self.cfg.port.to_string()),
        ];
        if let Some(sb) = standby {
            managed.push(("hot_standby", "on".into()));
            managed.push(("recovery_target_timeline", "latest".into()));
            if let Some(primary) = &sb.primary {
                let mut p = primary.clone();
                if p.application_name.is_none() {
                    p.application_name = Some(self.cfg.name.clone());
                }
                managed.push(("primary_conninfo", p.to_libpq(Some(&self.cfg.pgpass))));
            }
            if let Some(slot) = &sb.slot {
                managed.push(("primary_slot_name", slot.clone()));
            }
        }
        for key in [
            "primary_conninfo",
            "primary_slot_name",
            "recovery_target_timeline",
        ]
        .iter()
        .chain(UNSETTABLE)
        {
            if params.remove(*key).is_some() {
                warn!(parameter = %key, "ignoring parameter that pgherd manages itself");
            }
        }
        for (k, _) in &managed {
            params.remove(*k);
        }

        let mut text = format!(
            "{MANAGED_MARKER}: rewritten on every change. Put local settings in \
             {BASE_CONF} or in postgresql.parameters.\ninclude '{BASE_CONF}'\n\n"
        );
        for (k, v) in managed
            .iter()
            .map(|(k, v)| (*k, v))
            .chain(params.iter().map(|(k, v)| (k.as_str(), v)))
        {
            if !is_parameter_name(k) {
                warn!(parameter = %k, "skipping parameter with an invalid name");
                continue;
            }
            text.push_str(&format!("{k} = {}\n", quote_conf_value(v)));
        }
        self.write_owned(&conf, text.as_bytes(), 0o600)?;

        let signal = dd.join(STANDBY_SIGNAL);
        if standby.is_some() {
            if !signal.exists() {
                self.write_owned(&signal, b"", 0o600)?;
            }
        } else {
            match std::fs::remove_file(&signal) {
                Ok(()) => info!("removed {STANDBY_SIGNAL}"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(PgError::io(format!("removing {}", signal.display()), e)),
            }
        }

        if let Some(lines) = &self.cfg.pg_hba {
            let mut hba = format!("{MANAGED_MARKER}: from postgresql.pg_hba.\n");
            for l in lines {
                hba.push_str(l.trim_end());
                hba.push('\n');
            }
            self.write_owned(&dd.join("pg_hba.conf"), hba.as_bytes(), 0o600)?;
        }

        self.write_pgpass(standby.and_then(|s| s.primary.as_ref()))?;
        debug!(data_dir = %dd.display(), standby = standby.is_some(), "wrote config");
        Ok(())
    }

    /// The pgpass file: `extra`'s password first (libpq takes the first match), then the
    /// replication and superuser credentials, for any host, port and database.
    fn write_pgpass(&self, extra: Option<&ConnInfo>) -> Result<()> {
        let mut seen = Vec::new();
        let mut text = String::new();
        let extra = extra.map(|c| (c.user.as_str(), c.password.as_deref()));
        let creds = [
            (
                self.cfg.replication.username.as_str(),
                self.cfg.replication.password.as_deref(),
            ),
            (
                self.cfg.superuser.username.as_str(),
                self.cfg.superuser.password.as_deref(),
            ),
        ];
        for (user, pw) in extra.into_iter().chain(creds) {
            let Some(pw) = pw else { continue };
            if seen.contains(&user) {
                continue;
            }
            seen.push(user);
            text.push_str(&format!(
                "*:*:*:{}:{}\n",
                pgpass_escape(user),
                pgpass_escape(pw)
            ));
        }
        if let Some(parent) = self.cfg.pgpass.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| PgError::io(format!("creating {}", parent.display()), e))?;
            }
        }
        self.write_owned(&self.cfg.pgpass, text.as_bytes(), 0o600)
    }

    /// The postmaster's pid from `postmaster.pid`, when that process is alive (and is a
    /// postgres process): how a restarted agent adopts a running server.
    pub fn postmaster_pid(&self) -> Option<i32> {
        running_postmaster(&self.cfg.data_dir)
    }

    /// When `postmaster.pid` names a killed postmaster that its parent has not reaped
    /// yet, wait (up to `ZOMBIE_WAIT`) until it is: PostgreSQL's own lock-file check
    /// (kill 0) would take the zombie for a running server and refuse to start.
    async fn wait_for_unreaped_postmaster(&self) {
        let Some(pid) = std::fs::read_to_string(self.cfg.data_dir.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
            .filter(|p| *p > 0)
        else {
            return;
        };
        let deadline = tokio::time::Instant::now() + ZOMBIE_WAIT;
        loop {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parse_proc_stat(&s).map(|(_, st)| st == 'Z'))
                .unwrap_or(false);
            if !zombie {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    pid,
                    "the old postmaster is still an unreaped zombie; going on"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A postmaster is running on this data directory.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    /// Fails with [`PgError::PortInUse`] when something listens on our port on any of
    /// `listen_addresses`.
    pub fn check_port_free(&self) -> Result<()> {
        let port = self.cfg.port;
        for addr in self.cfg.listen_addresses.split(',').map(str::trim) {
            if addr.is_empty() {
                continue;
            }
            let host = match addr {
                "*" => "0.0.0.0",
                "localhost" => "127.0.0.1",
                a => a.trim_start_matches('[').trim_end_matches(']'),
            };
            let targets: Vec<std::net::SocketAddr> =
                match std::net::ToSocketAddrs::to_socket_addrs(&(host, port)) {
                    Ok(it) => it.collect(),
                    Err(e) => {
                        warn!(address = %addr, error = %e, "cannot resolve a listen address");
                        continue;
                    }
                };
            for sa in targets {
                if let Err(e) = std::net::TcpListener::bind(sa) {
                    if e.kind() == std::io::ErrorKind::AddrInUse {
                        return Err(PgError::PortInUse {
                            addr: sa.ip().to_string(),
                            port,
                            detail: "another program listens there (another PostgreSQL?)".into(),
                        });
                    }
                    debug!(address = %sa, error = %e, "cannot test-bind a listen address");
                }
            }
        }
        Ok(())
    }

    fn prepare_log_file(&self) -> Result<()> {
        let log = &self.cfg.log_file;
        if let Some(parent) = log.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| PgError::io(format!("creating {}", parent.display()), e))?;
            }
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(log)
            .map_err(|e| PgError::io(format!("opening {}", log.display()), e))?;
        self.chown(log)
    }

    /// `pg_ctl start -w`, in its own session so the server outlives the agent. Does
    /// nothing when a postmaster already runs here. Checks the port is free first. A
    /// failure carries the end of the log.
    pub async fn start(&self, timeout: Duration) -> Result<()> {
        if !self.prepare_start().await? {
            return Ok(());
        }
        let secs = timeout.as_secs().max(1);
        let mut cmd = pg_command(&self.cfg.bin, "pg_ctl", self.os_user(), true)?;
        cmd.arg("start")
            .arg("-w")
            .arg("-t")
            .arg(secs.to_string())
            .arg("-D")
            .arg(&self.cfg.data_dir)
            .arg("-l")
            .arg(&self.cfg.log_file);
        info!(data_dir = %self.cfg.data_dir.display(), port = self.cfg.port, "starting PostgreSQL");
        match run(
            cmd,
            "pg_ctl start",
            timeout + PG_CTL_GRACE,
            Some(&self.cfg.log_file),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(e) => match self.postmaster_pid() {
                // pg_ctl gave up waiting but the server is still coming up (e.g. a standby
                // that has not reached consistency).
                Some(pid) => Err(PgError::Timeout {
                    what: format!(
                        "PostgreSQL start (postmaster pid {pid} keeps starting; log: {})",
                        log_tail(&self.cfg.log_file, 3)
                    ),
                    after: timeout,
                }),
                None => Err(e),
            },
        }
    }

    /// Starts a standby and returns once its postmaster is up, without waiting for a
    /// consistent state (`pg_ctl start -w` would): a rewound or lagging standby may need
    /// WAL that only streaming brings, and streaming may need a slot the leader creates
    /// only after this member has published itself again.
    pub async fn start_standby(&self, timeout: Duration) -> Result<()> {
        if !self.prepare_start().await? {
            return Ok(());
        }
        let mut cmd = pg_command(&self.cfg.bin, "pg_ctl", self.os_user(), true)?;
        cmd.arg("start")
            .arg("-W")
            .arg("-D")
            .arg(&self.cfg.data_dir)
            .arg("-l")
            .arg(&self.cfg.log_file);
        info!(data_dir = %self.cfg.data_dir.display(), port = self.cfg.port, "starting PostgreSQL as a standby");
        run(
            cmd,
            "pg_ctl start",
            SHORT_TOOL_TIMEOUT,
            Some(&self.cfg.log_file),
        )
        .await?;
        let launched = std::time::Instant::now();
        loop {
            if self
                .postmaster_status()
                .is_some_and(PostmasterStatus::is_up)
            {
                return Ok(());
            }
            let waited = launched.elapsed();
            if self.postmaster_pid().is_none() && waited >= POSTMASTER_APPEARS {
                return Err(PgError::CommandFailed {
                    program: "postgres".into(),
                    status: "exited during start-up".into(),
                    detail: log_tail(&self.cfg.log_file, 5),
                });
            }
            if waited >= timeout {
                return Err(PgError::Timeout {
                    what: format!(
                        "PostgreSQL start (log: {})",
                        log_tail(&self.cfg.log_file, 3)
                    ),
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What both starts check first. `false`: a postmaster already runs here (adopted).
    async fn prepare_start(&self) -> Result<bool> {
        if let Some(pid) = self.postmaster_pid() {
            info!(pid, "PostgreSQL already running; adopting it");
            return Ok(false);
        }
        self.wait_for_unreaped_postmaster().await;
        self.check_port_free()?;
        self.prepare_log_file()?;
        Ok(true)
    }

    /// The running postmaster's own account of its state (`postmaster.pid`'s status
    /// line). `None` when no postmaster runs or it has not written the line yet.
    pub fn postmaster_status(&self) -> Option<PostmasterStatus> {
        self.postmaster_pid()?;
        let text = std::fs::read_to_string(self.cfg.data_dir.join("postmaster.pid")).ok()?;
        // Line 8 (LOCK_FILE_LINE_PM_STATUS), padded with spaces.
        match text.lines().nth(7)?.trim() {
            "starting" => Some(PostmasterStatus::Starting),
            "standby" => Some(PostmasterStatus::Standby),
            "ready" => Some(PostmasterStatus::Ready),
            "stopping" => Some(PostmasterStatus::Stopping),
            _ => None,
        }
    }

    /// `pg_ctl stop -m <mode> -w`. Nothing to do when it is not running.
    pub async fn stop(&self, mode: StopMode, timeout: Duration) -> Result<()> {
        if self.postmaster_pid().is_none() {
            debug!("PostgreSQL is not running; nothing to stop");
            return Ok(());
        }
        let mut cmd = pg_command(&self.cfg.bin, "pg_ctl", self.os_user(), false)?;
        cmd.arg("stop")
            .arg("-m")
            .arg(mode.as_str())
            .arg("-w")
            .arg("-t")
            .arg(timeout.as_secs().max(1).to_string())
            .arg("-D")
            .arg(&self.cfg.data_dir);
        info!(mode = mode.as_str(), "stopping PostgreSQL");
        match run(
            cmd,
            "pg_ctl stop",
            timeout + PG_CTL_GRACE,
            Some(&self.cfg.log_file),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(_) if self.postmaster_pid().is_none() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stop (with `mode`) then start, each within `timeout`.
    pub async fn restart(&self, mode: StopMode, timeout: Duration) -> Result<()> {
        self.stop(mode, timeout).await?;
        self.start(timeout).await
    }

    /// `pg_ctl reload`: re-read the config files.
    pub async fn reload(&self) -> Result<()> {
        let mut cmd = pg_command(&self.cfg.bin, "pg_ctl", self.os_user(), false)?;
        cmd.arg("reload").arg("-D").arg(&self.cfg.data_dir);
        run(cmd, "pg_ctl reload", SHORT_TOOL_TIMEOUT, None).await?;
        Ok(())
    }

    /// `pg_ctl promote -w`: end recovery and become writable. Also removes
    /// `standby.signal`'s effect for future starts (PostgreSQL removes the file itself).
    /// Succeeds when it already is a primary.
    pub async fn promote(&self, timeout: Duration) -> Result<()> {
        let mut cmd = pg_command(&self.cfg.bin, "pg_ctl", self.os_user(), false)?;
        cmd.arg("promote")
            .arg("-w")
            .arg("-t")
            .arg(timeout.as_secs().max(1).to_string())
            .arg("-D")
            .arg(&self.cfg.data_dir);
        info!("promoting PostgreSQL");
        match run(
            cmd,
            "pg_ctl promote",
            timeout + PG_CTL_GRACE,
            Some(&self.cfg.log_file),
        )
        .await
        {
            Ok(_) => {}
            Err(PgError::CommandFailed { detail, .. })
                if detail.contains("not in standby mode") =>
            {
                info!("already a primary; nothing to promote");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        // PostgreSQL writes the new timeline into pg_control only at its next checkpoint.
        // Until then pg_rewind, which reads it, finds "source and target are on the same
        // timeline" and leaves a diverged old primary unrewound (Patroni waits for this
        // checkpoint too). So checkpoint now.
        let client = self.connect().await?;
        tokio::time::timeout(timeout, client.batch_execute("CHECKPOINT"))
            .await
            .map_err(|_| PgError::Timeout {
                what: "the checkpoint after promotion".into(),
                after: timeout,
            })?
            .map_err(|e| PgError::query("CHECKPOINT after promotion", &e))?;
        Ok(())
    }

    /// Clone `from` into the missing or empty data directory with
    /// `pg_basebackup -X stream --checkpoint=fast` (password from the pgpass file). On
    /// failure the partial data directory is removed. Call
    /// [`write_config`](Self::write_config) before starting it: the copied config files
    /// are the source's.
    pub async fn basebackup(&self, from: &ConnInfo, timeout: Duration) -> Result<()> {
        match self.data_dir_state()? {
            DataDirState::Missing | DataDirState::Empty => {}
            state => {
                return Err(PgError::DataDirNotEmpty {
                    path: self.cfg.data_dir.clone(),
                    state: format!("{state:?}").to_lowercase(),
                    action: "clone into it".into(),
                })
            }
        }
        self.write_pgpass(Some(from))?;
        self.prepare_empty_data_dir()?;
        let mut cmd = pg_command(&self.cfg.bin, "pg_basebackup", self.os_user(), false)?;
        cmd.env("PGPASSFILE", &self.cfg.pgpass)
            .arg("-D")
            .arg(&self.cfg.data_dir)
            .arg("-X")
            .arg("stream")
            .arg("--checkpoint=fast")
            .arg("--no-password")
            .arg("--label=pgherd clone")
            .arg("-d")
            .arg(from.to_libpq(Some(&self.cfg.pgpass)));
        info!(from = %from.describe(), data_dir = %self.cfg.data_dir.display(), "cloning with pg_basebackup");
        let result = run(cmd, "pg_basebackup", timeout, None).await;
        if let Err(e) = &result {
            warn!(error = %e, "pg_basebackup failed; removing the partial data directory");
            if let Err(e2) = self.remove_data_dir().await {
                warn!(error = %e2, "could not remove the partial data directory");
            }
        }
        result.map(|_| ())
    }

    /// `pg_rewind` the stopped data directory onto `from`'s timeline (PG 13+ first runs
    /// crash recovery itself when the server was not shut down cleanly). Our
    /// postgresql.conf, postgresql.base.conf, pg_hba.conf and pg_ident.conf survive (pg_rewind
    /// would copy the source's). Call [`write_config`](Self::write_config) with a
    /// [`StandbyConfig`] before starting it.
    pub async fn rewind(&self, from: &ConnInfo, timeout: Duration) -> Result<()> {
        if let Some(pid) = self.postmaster_pid() {
            return Err(PgError::Running {
                pid,
                data_dir: self.cfg.data_dir.clone(),
                action: "pg_rewind".into(),
            });
        }
        self.wait_for_unreaped_postmaster().await;
        self.write_pgpass(Some(from))?;
        let kept: Vec<(PathBuf, Vec<u8>)> = KEPT_ACROSS_REWIND
            .iter()
            .map(|f| self.cfg.data_dir.join(f))
            .filter_map(|p| std::fs::read(&p).ok().map(|c| (p, c)))
            .collect();
        let mut cmd = pg_command(&self.cfg.bin, "pg_rewind", self.os_user(), false)?;
        cmd.env("PGPASSFILE", &self.cfg.pgpass)
            .env("LANG", "C")
            .env("LC_ALL", "C")
            .arg(format!("--target-pgdata={}", self.cfg.data_dir.display()))
            .arg(format!(
                "--source-server={}",
                from.to_libpq(Some(&self.cfg.pgpass))
            ));
        info!(from = %from.describe(), data_dir = %self.cfg.data_dir.display(), "running pg_rewind");
        let result = run(cmd, "pg_rewind", timeout, None).await;
        for (path, contents) in &kept {
            if let Err(e) = self.write_owned(path, contents, 0o600) {
                warn!(error = %e, "could not restore a config file after pg_rewind");
            }
        }
        result.map(|_| ())
    }

    /// Remove the data directory (it must not be running). Missing is fine.
    pub async fn remove_data_dir(&self) -> Result<()> {
        if let Some(pid) = self.postmaster_pid() {
            return Err(PgError::Running {
                pid,
                data_dir: self.cfg.data_dir.clone(),
                action: "removing its data directory".into(),
            });
        }
        let path = self.cfg.data_dir.clone();
        info!(data_dir = %path.display(), "removing data directory");
        let res = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        })
        .await
        .map_err(|e| PgError::io("removing the data directory", std::io::Error::other(e)))?;
        res.map_err(|e| PgError::io(format!("removing {}", self.cfg.data_dir.display()), e))
    }

    /// A connection as the superuser over TCP to `connect_host:port`, database
    /// `postgres`; the connection task runs in the background.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let target = format!(
            "{}:{} as {}",
            self.cfg.connect_host, self.cfg.port, self.cfg.superuser.username
        );
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.cfg.connect_host)
            .port(self.cfg.port)
            .user(&self.cfg.superuser.username)
            .dbname("postgres")
            .application_name("pgherd")
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(pw) = &self.cfg.superuser.password {
            config.password(pw);
        }
        let connecting = config.connect(tokio_postgres::NoTls);
        let (client, connection) = match tokio::time::timeout(
            CONNECT_TIMEOUT + Duration::from_secs(2),
            connecting,
        )
        .await
        {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                return Err(PgError::Connect {
                    target,
                    detail: describe_pg_error(&e),
                })
            }
            Err(_) => {
                return Err(PgError::Timeout {
                    what: format!("connecting to {target}"),
                    after: CONNECT_TIMEOUT,
                })
            }
        };
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }
}

/// `(comm, state)` from the text of `/proc/<pid>/stat`: `1234 (postgres) S 1 ...`.
/// The pid of the postmaster running on `data_dir`, from its `postmaster.pid`, when that
/// process is alive and is a postgres process.
pub fn running_postmaster(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return None,
    }
    // Guard against a stale file whose pid now belongs to another program, and
    // against a killed postmaster nobody has reaped yet (a zombie answers kill 0).
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        let (comm, state) = parse_proc_stat(&stat)?;
        if (comm != "postgres" && comm != "postmaster") || matches!(state, 'Z' | 'X' | 'x') {
            return None;
        }
    }
    Some(pid)
}

pub(crate) fn parse_proc_stat(stat: &str) -> Option<(&str, char)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let state = stat.get(close + 1..)?.trim_start().chars().next()?;
    Some((comm, state))
}

fn is_managed(conf: &Path) -> bool {
    std::fs::read_to_string(conf)
        .map(|s| s.starts_with(MANAGED_MARKER))
        .unwrap_or(false)
}

/// A GUC name: letters, digits, `_`, and `.` for extension namespaces.
fn is_parameter_name(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Escape `:` and `\` for a pgpass field.
pub fn pgpass_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == ':' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn default_pg_hba_quotes_a_replication_role_that_is_not_a_plain_name() {
        let plain = super::default_pg_hba("replicator");
        assert!(
            plain.contains("host    replication  replicator  0.0.0.0/0"),
            "{plain}"
        );
        let odd = super::default_pg_hba("Repl \"user\"");
        assert!(odd.contains("replication  \"Repl \"\"user\"\"\""), "{odd}");
        // A role named like a keyword is quoted, or it would mean every role.
        assert!(super::default_pg_hba("all").contains("replication  \"all\""));
        assert!(!plain.contains("trust") && !plain.contains("md5"));
    }
    use super::*;

    #[test]
    fn pgpass_fields_escape_colon_and_backslash() {
        assert_eq!(pgpass_escape(r"a:b\c"), r"a\:b\\c");
    }

    #[test]
    fn proc_stat_gives_comm_and_state() {
        assert_eq!(
            parse_proc_stat("4242 (postgres) Z 1 4242 4242 0 -1"),
            Some(("postgres", 'Z'))
        );
        assert_eq!(parse_proc_stat("7 (a) b) S 1"), Some(("a) b", 'S')));
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    #[test]
    fn parameter_names_are_checked() {
        assert!(is_parameter_name("shared_buffers"));
        assert!(is_parameter_name("pg_stat_statements.max"));
        assert!(!is_parameter_name("x = 1\nfsync"));
    }
}
