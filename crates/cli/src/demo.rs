//! `pgherd demo`: three members and the in-process DCS on loopback, in one command.

use crate::{drill, listing};
use anyhow::{bail, Context, Result};
use pgherd_dcs::memory::{MemoryDcs, MemoryStore};
use pgherd_dcs::{Cluster, Dcs, Tags};
use pgherd_ha::member::{self, RunningMember};
use pgherd_ha::{HaConfig, NodeSpec, Role};
use pgherd_pooler::config::{
    ClusterConfig, DatabaseConfig, Etcd3Config, PoolerConfig, RouteRole, Userlist,
};
use pgherd_pooler::service::{Files, Service};
use pgherd_pooler::tls::TlsContexts;
use pgherd_pooler::topology::{Connect, Topology};
use pgherd_postgres::{Binaries, Credentials, InstanceConfig, OsUser};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SCOPE: &str = "demo";
const NAMESPACE: &str = "/service";
const MEMBERS: usize = 3;
/// How long the cluster may take to bootstrap and clone before the demo gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Demo timings: fail over within seconds, still keeping rule 1's inequality. The drill
/// runs in synchronous mode, where a failover must lose no acknowledged commit.
fn demo_ha(synchronous: bool) -> HaConfig {
    HaConfig {
        ttl: 10_000,
        loop_wait: 2_000,
        retry_timeout: 4_000,
        maximum_lag_on_failover: 1 << 20,
        use_pg_rewind: true,
        use_slots: true,
        paused: false,
        synchronous_mode: if synchronous {
            pgherd_ha::SynchronousMode::On
        } else {
            pgherd_ha::SynchronousMode::Off
        },
        synchronous_mode_strict: false,
        synchronous_node_count: 1,
        member_slots_ttl: 1_800_000,
        primary_start_timeout: 300_000,
        failsafe_mode: false,
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Where to put the members' data (default: a new directory under /tmp).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// PostgreSQL binaries (default: pg_config, else the newest /usr/lib/postgresql/*/bin).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Start, print the topology, and exit at once after cleaning up (for scripts).
    #[arg(long, hide = true)]
    pub exit_when_ready: bool,
    /// Run the tutorial's exercises (replication, failover, switchover, read
    /// balancing) in synchronous mode, print a pass/fail report and exit: 0 only if
    /// every check passed.
    #[arg(long)]
    pub drill: bool,
}

/// One demo member as printed.
struct DemoMember {
    name: String,
    pg_port: u16,
    running: RunningMember,
    /// How to start it again (the drill's revived node).
    spec: NodeSpec,
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let bin = Binaries::find(args.bin_dir.as_deref())?;
    let os_user = pgherd_postgres::run_as(None)?;
    let base = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => tempfile::Builder::new()
            .prefix("pgherd-demo-")
            .tempdir_in("/tmp")
            .context("cannot create a directory under /tmp")?
            .keep(),
    };
    give_to(&base, os_user.as_ref())?;
    let password = random_password();
    let store = MemoryStore::new();
    let mut members = Vec::new();
    let started = start_members(
        &base,
        &bin,
        os_user.as_ref(),
        &password,
        &store,
        args.drill,
        &mut members,
    )
    .await;
    let outcome = match started {
        Ok(()) => serve(&store, &mut members, &password, &base, &args).await,
        Err(e) => Err(e),
    };
    eprintln!(
        "pgherd demo: stopping the members and removing {}",
        base.display()
    );
    for m in members {
        m.running.stop().await;
    }
    if let Err(e) = std::fs::remove_dir_all(&base) {
        eprintln!("pgherd demo: could not remove {}: {e}", base.display());
    }
    outcome
}

async fn start_members(
    base: &Path,
    bin: &Binaries,
    os_user: Option<&OsUser>,
    password: &str,
    store: &MemoryStore,
    synchronous: bool,
    out: &mut Vec<DemoMember>,
) -> Result<()> {
    for i in 1..=MEMBERS {
        let name = format!("node{i}");
        let dir = base.join(&name);
        std::fs::create_dir_all(&dir)?;
        give_to(&dir, os_user)?;
        let pg_port = free_port()?;
        let api_listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut parameters = BTreeMap::new();
        parameters.insert(
            "unix_socket_directories".to_string(),
            dir.to_string_lossy().into_owned(),
        );
        let instance = InstanceConfig {
            name: name.clone(),
            data_dir: dir.join("data"),
            bin: bin.clone(),
            os_user: os_user.cloned(),
            listen_addresses: "127.0.0.1".into(),
            port: pg_port,
            connect_host: "127.0.0.1".into(),
            superuser: Credentials {
                username: "postgres".into(),
                password: Some(password.to_string()),
            },
            replication: Credentials {
                username: "replicator".into(),
                password: Some(password.to_string()),
            },
            parameters,
            pg_hba: Some(vec![
                "local all all scram-sha-256".into(),
                "host all all 127.0.0.1/32 scram-sha-256".into(),
                "host replication replicator 127.0.0.1/32 scram-sha-256".into(),
            ]),
            pgpass: dir.join("pgpass"),
            log_file: dir.join("postgresql.log"),
        };
        let ha = demo_ha(synchronous);
        let spec = NodeSpec {
            name: name.clone(),
            scope: SCOPE.into(),
            api_listen,
            api_connect_address: api_listen.to_string(),
            api_auth: None,
            api_tls: None,
            client_tls: pgherd_http::ClientTls::default(),
            pg_connect_host: "127.0.0.1".into(),
            pg_connect_port: pg_port,
            tags: Tags::default(),
            initdb_args: vec!["--encoding=UTF8".into(), "--data-checksums".into()],
            bootstrap_dynamic: serde_json::json!({
                "ttl": ha.ttl / 1000, "loop_wait": ha.loop_wait / 1000,
                "retry_timeout": ha.retry_timeout / 1000,
                "maximum_lag_on_failover": ha.maximum_lag_on_failover,
                "synchronous_mode": synchronous,
                "postgresql": {"use_pg_rewind": true, "use_slots": true}
            }),
            ha,
            instance,
            rewind: None,
            pg_ctl_timeout: Duration::from_secs(60),
            callbacks: Default::default(),
            // The demo's agents share one process, which no fencer could tell apart, and
            // a laptop's watchdog device must not reset it.
            watchdog: pgherd_ha::watchdog::WatchdogSpec {
                mode: pgherd_ha::watchdog::WatchdogMode::Off,
                fencer: None,
                ..Default::default()
            },
        };
        let running = member::start(spec.clone(), member_dcs(store, &name)).await?;
        out.push(DemoMember {
            name,
            pg_port,
            running,
            spec,
        });
    }
    Ok(())
}

/// A member's connection to the in-process store.
fn member_dcs(store: &MemoryStore, name: &str) -> Arc<dyn Dcs> {
    Arc::new(MemoryDcs::new(
        store.clone(),
        NAMESPACE,
        SCOPE,
        name,
        Duration::from_millis(demo_ha(false).ttl),
    ))
}

/// Wait for the cluster, print how to reach it, then follow it until Ctrl-C (or run
/// the drill).
async fn serve(
    store: &MemoryStore,
    members: &mut Vec<DemoMember>,
    password: &str,
    base: &Path,
    args: &DemoArgs,
) -> Result<()> {
    let observer = MemoryDcs::new(
        store.clone(),
        NAMESPACE,
        SCOPE,
        "pgherd-demo",
        Duration::from_secs(10),
    );
    eprintln!(
        "pgherd demo: bootstrapping {MEMBERS} members in {} ...",
        base.display()
    );
    let deadline = Instant::now() + READY_TIMEOUT;
    let cluster = loop {
        let cluster = observer.get_cluster().await?;
        if is_ready(&cluster, members) {
            break cluster;
        }
        if Instant::now() > deadline {
            bail!(
                "the demo cluster did not become ready within {READY_TIMEOUT:?}; see the PostgreSQL logs under {}",
                base.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let poolers = start_poolers(store, password).await?;
    println!("{}", listing::table(SCOPE, &cluster));
    print_uris(&cluster, members, password);
    for (role, service) in [("read-write", &poolers.0), ("read-only", &poolers.1)] {
        if let Some(addr) = service.addrs.first() {
            println!("pooler   {role:<10} postgres://postgres:{password}@{addr}/postgres",);
        }
    }
    let outcome = if args.drill {
        let login = |port: u16| drill::Address {
            host: "127.0.0.1".into(),
            port,
            user: "postgres".into(),
            password: Some(password.to_string()),
            dbname: "postgres".into(),
        };
        let address = |s: &Service| s.addrs.first().map(|a| a.port()).unwrap_or_default();
        let mut target = drill::Target {
            scope: SCOPE.into(),
            dcs: Arc::new(observer),
            read_write: login(address(&poolers.0)),
            read_only: login(address(&poolers.1)),
            member_login: login(0),
            nodes: Box::new(DemoNodes {
                members,
                store,
                killed: Vec::new(),
            }),
            http: pgherd_http::client::default_client()?,
        };
        let report = drill::run(&mut target).await;
        print!("{}", report.render());
        match report.passed() {
            true => Ok(()),
            false => Err(anyhow::anyhow!("the drill failed")),
        }
    } else {
        follow(&observer, base, args.exit_when_ready).await
    };
    for service in [poolers.0, poolers.1] {
        service.shutdown(Duration::from_secs(2)).await;
    }
    outcome
}

/// Until Ctrl-C: print the topology again whenever the leader changes.
async fn follow(observer: &MemoryDcs, base: &Path, exit_when_ready: bool) -> Result<()> {
    let cluster = observer.get_cluster().await?;
    if exit_when_ready {
        return Ok(());
    }
    println!(
        "\nPress Ctrl-C to stop the cluster and remove {}.",
        base.display()
    );
    let mut last_leader = cluster.leader_name().map(str::to_string);
    loop {
        tokio::select! {
            _ = crate::signals::shutdown_signal() => return Ok(()),
            _ = observer.watch(Duration::from_secs(5)) => {}
        }
        let Ok(cluster) = observer.get_cluster().await else {
            continue;
        };
        let leader = cluster.leader_name().map(str::to_string);
        if leader != last_leader {
            match &leader {
                Some(l) => println!("\nleader is now {l}"),
                None => println!("\nno leader: failover in progress"),
            }
            println!("{}", listing::table(SCOPE, &cluster));
            last_leader = leader;
        }
    }
}

/// The demo's pooler: writes through one port to whoever leads, reads through the next
/// to the replicas; both follow the cluster in the in-process store.
async fn start_poolers(store: &MemoryStore, password: &str) -> Result<(Service, Service)> {
    let store = store.clone();
    let connect: Connect = Arc::new(move |scope: String| {
        let store = store.clone();
        Box::pin(async move {
            let dcs = MemoryDcs::new(
                store,
                NAMESPACE,
                &scope,
                "pgherd-demo-pooler",
                POOLER_DCS_TIMEOUT * 2,
            );
            Ok(Arc::new(dcs) as Arc<dyn Dcs>)
        })
    });
    let topology = Arc::new(Topology::new(connect, POOLER_DCS_TIMEOUT));
    let rw_port = free_port_from(6432)?;
    let rw = start_pooler(rw_port, RouteRole::Primary, password, &topology).await?;
    let ro_port = free_port_from(rw_port + 1)?;
    let ro = start_pooler(ro_port, RouteRole::Replica, password, &topology).await?;
    Ok((rw, ro))
}

/// How long the demo's pooler goes without reading the store before it routes no writes.
const POOLER_DCS_TIMEOUT: Duration = Duration::from_secs(5);

/// One pooler listening on `port`, routing every database to the members of `role`.
async fn start_pooler(
    port: u16,
    role: RouteRole,
    password: &str,
    topology: &Arc<Topology>,
) -> Result<Service> {
    let ini = format!(
        "[pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = scram-sha-256\n\
         pool_mode = transaction\n\
         default_pool_size = 10\n\
         query_wait_timeout = 60\n\
         admin_users = postgres\n"
    );
    let name = Path::new("pgherd-demo-pooler.ini");
    let mut config = PoolerConfig::from_ini_str(&ini, name)
        .context("the demo's pooler configuration")?
        .config;
    config.cluster = Some(ClusterConfig {
        scope: Some(SCOPE.into()),
        namespace: NAMESPACE.into(),
        etcd3: Etcd3Config::plain(Vec::new()),
        dcs_timeout: POOLER_DCS_TIMEOUT,
    });
    config.fallback_database = Some(DatabaseConfig {
        port: 5432,
        cluster: Some(SCOPE.into()),
        role: Some(role),
        ..DatabaseConfig::default()
    });
    let userlist = Userlist::parse(&format!("\"postgres\" \"{password}\"\n"), name)
        .context("the demo's pooler users")?;
    let files = Files {
        config,
        userlist,
        hba: None,
        tls: TlsContexts::disabled(),
    };
    Service::start_following(files, Some(topology.clone()))
        .await
        .with_context(|| format!("cannot start the demo's pooler on port {port}"))
}

/// The first port from `start` up that is free on loopback.
fn free_port_from(start: u16) -> Result<u16> {
    (start..start.saturating_add(100))
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .with_context(|| format!("no free loopback port from {start}"))
}

/// A leader and every other member streaming from it.
fn is_ready(cluster: &Cluster, members: &[DemoMember]) -> bool {
    let Some(leader) = cluster.leader_name() else {
        return false;
    };
    members.iter().all(|m| {
        let s = m.running.status.get();
        if m.name == leader {
            s.role == Role::Primary && s.running
        } else {
            s.role == Role::Replica && s.state == "streaming"
        }
    })
}

fn print_uris(cluster: &Cluster, members: &[DemoMember], password: &str) {
    let leader = cluster.leader_name().unwrap_or_default();
    let mut ordered: Vec<&DemoMember> = members.iter().collect();
    ordered.sort_by_key(|m| (m.name != leader, m.name.clone()));
    println!();
    for m in ordered {
        let role = if m.name == leader {
            "primary"
        } else {
            "replica"
        };
        println!(
            "{role:<8} {:<6} postgres://postgres:{password}@127.0.0.1:{}/postgres   REST: http://{}/patroni",
            m.name, m.pg_port, m.running.api_addr
        );
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("no free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// Make `dir` writable by the OS user PostgreSQL runs as.
fn give_to(dir: &Path, os_user: Option<&OsUser>) -> Result<()> {
    if let Some(u) = os_user {
        nix::unistd::chown(
            dir,
            Some(nix::unistd::Uid::from_raw(u.uid)),
            Some(nix::unistd::Gid::from_raw(u.gid)),
        )
        .with_context(|| format!("cannot give {} to OS user {}", dir.display(), u.name))?;
    }
    Ok(())
}

/// 16 letters and digits from the OS's random source.
fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The drill's hands on the demo's members: a crash of the agent's tasks plus kill -9 of
/// its PostgreSQL, and a fresh agent on the same data directory.
struct DemoNodes<'a> {
    members: &'a mut Vec<DemoMember>,
    store: &'a MemoryStore,
    /// Crashed members, to start again.
    killed: Vec<(NodeSpec, u16)>,
}

impl DemoNodes<'_> {
    async fn crash(&mut self, name: &str) -> Result<String> {
        let at = self
            .members
            .iter()
            .position(|m| m.name == name)
            .with_context(|| format!("{name} is not running"))?;
        let m = self.members.remove(at);
        let postmaster = pgherd_postgres::Instance::new(m.spec.instance.clone()).postmaster_pid();
        m.running.crash().await;
        if let Some(pid) = postmaster {
            drill::kill_postmaster(pid);
        }
        let pid = postmaster.map_or("none".to_string(), |p| p.to_string());
        self.killed.push((m.spec, m.pg_port));
        Ok(format!(
            "agent stopped dead, kill -9 of postmaster pid {pid}"
        ))
    }
}

impl drill::Nodes for DemoNodes<'_> {
    fn kill<'b>(&'b mut self, member: &'b str) -> drill::BoxFuture<'b, Result<String>> {
        Box::pin(self.crash(member))
    }

    fn revive<'b>(&'b mut self, member: &'b str) -> drill::BoxFuture<'b, Result<String>> {
        Box::pin(async move {
            let at = self
                .killed
                .iter()
                .position(|(spec, _)| spec.name == member)
                .with_context(|| format!("{member} was not killed"))?;
            let (spec, pg_port) = self.killed.remove(at);
            let running = member::start(spec.clone(), member_dcs(self.store, member)).await?;
            self.members.push(DemoMember {
                name: member.to_string(),
                pg_port,
                running,
                spec,
            });
            Ok(format!("{member} started again: it rejoins as a replica"))
        })
    }
}
