//! `pgherd node`: one member's agent, configured by a Patroni-compatible YAML file.

use crate::config::{self, NodeConfig};
use anyhow::{bail, Context, Result};
use pgherd_dcs::etcd::EtcdDcs;
use pgherd_dcs::{Dcs, Tags};
use pgherd_ha::watchdog::{WatchdogMode, WatchdogSpec};
use pgherd_ha::{member, ApiAuth, HaConfig, NodeSpec};
use pgherd_postgres::{Binaries, Instance, InstanceConfig, OsUser};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};

/// Run the agent from the config at `path`, or (without one) from `PATRONI_CONFIGURATION`
/// or the `PATRONI_*` variables, as Patroni does.
pub async fn run(path: Option<&Path>, validate_only: bool) -> Result<()> {
    let (loaded, source) = match path {
        Some(p) => (config::load(p)?, p.display().to_string()),
        None => (config::load_from_environment()?, "environment".to_string()),
    };
    for w in &loaded.warnings {
        warn!("{source}: {w}");
    }
    let cfg = loaded.config;
    let bin = Binaries::find(cfg.postgresql.bin_dir.as_deref())?;
    let os_user = pgherd_postgres::run_as(cfg.postgresql.os_user.as_deref())?;
    let spec = spec_from_config(&cfg, bin, os_user)?;
    preflight(&spec)?;
    if validate_only {
        println!("{source}: configuration is valid");
        return Ok(());
    }
    let dcs = EtcdDcs::connect_with(
        &cfg.dcs.etcd_access(),
        &cfg.namespace,
        &cfg.scope,
        &cfg.name,
        cfg.bootstrap.dcs.ttl,
        cfg.bootstrap.dcs.retry_timeout,
    )
    .await
    .context("cannot start without the DCS")?;
    let dcs: Arc<dyn Dcs> = Arc::new(dcs);
    let running = member::start(spec, dcs).await?;
    info!(api = %running.api_addr, "REST API listening");
    crate::signals::shutdown_signal().await;
    info!("shutdown requested");
    running.stop().await;
    Ok(())
}

/// Checks that give a one-line reason before anything is started.
fn preflight(spec: &NodeSpec) -> Result<()> {
    if spec.watchdog.mode == WatchdogMode::Required {
        let device = &spec.watchdog.device;
        if let Err(why) = pgherd_ha::watchdog::check_usable(device) {
            bail!(
                "watchdog.mode is required, but the watchdog device {} cannot be used: {why} \
                 (load softdog, or set watchdog.mode: automatic to rely on the fencer process)",
                device.display()
            );
        }
    }
    let instance = Instance::new(spec.instance.clone());
    instance.data_dir_state()?;
    // A running postmaster for this data dir is adopted; otherwise the port must be free.
    if instance.postmaster_pid().is_none() {
        let host = spec.instance.connect_host.as_str();
        let port = spec.instance.port;
        if let Some(addr) = (host, port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
        {
            if TcpListener::bind(addr).is_err() {
                bail!(
                    "postgresql.listen: port {port} on {host} is already in use by another process"
                );
            }
        }
    }
    Ok(())
}

/// Map the Patroni-style config onto the agent's runtime description.
pub fn spec_from_config(
    cfg: &NodeConfig,
    bin: Binaries,
    os_user: Option<OsUser>,
) -> Result<NodeSpec> {
    let d = &cfg.bootstrap.dcs;
    let pg = &cfg.postgresql;
    let ha = HaConfig {
        ttl: d.ttl.as_millis() as u64,
        loop_wait: d.loop_wait.as_millis() as u64,
        retry_timeout: d.retry_timeout.as_millis() as u64,
        maximum_lag_on_failover: d.maximum_lag_on_failover,
        use_pg_rewind: pg.use_pg_rewind.unwrap_or(d.postgresql.use_pg_rewind),
        use_slots: pg.use_slots.unwrap_or(d.postgresql.use_slots),
        paused: d.pause,
        synchronous_mode: d.synchronous_mode,
        synchronous_mode_strict: d.synchronous_mode_strict,
        synchronous_node_count: d.synchronous_node_count,
        member_slots_ttl: d.member_slots_ttl.as_millis() as u64,
        primary_start_timeout: d.primary_start_timeout.as_millis() as u64,
        failsafe_mode: d.failsafe_mode,
    };
    let api_listen = resolve(&cfg.restapi.listen.host, cfg.restapi.listen.port)
        .with_context(|| format!("restapi.listen: cannot resolve {}", cfg.restapi.listen))?;
    let instance = InstanceConfig {
        name: cfg.name.clone(),
        data_dir: pg.data_dir.clone(),
        bin,
        os_user,
        listen_addresses: pg.listen.listen_addresses(),
        port: pg.listen.port,
        connect_host: local_connect_host(&pg.listen.hosts),
        superuser: pg.authentication.superuser.clone(),
        replication: pg.authentication.replication.clone(),
        parameters: pg.parameters.clone(),
        pg_hba: pg.pg_hba.clone().or_else(|| cfg.bootstrap.pg_hba.clone()),
        pgpass: pg.pgpass.clone(),
        log_file: log_file_for(&pg.data_dir),
    };
    Ok(NodeSpec {
        name: cfg.name.clone(),
        scope: cfg.scope.clone(),
        api_listen,
        api_connect_address: cfg.restapi.connect_address.to_string(),
        api_auth: cfg.restapi.authentication.as_ref().map(|a| ApiAuth {
            username: a.username.clone(),
            password: a.password.clone(),
        }),
        api_tls: cfg.restapi.tls.clone(),
        client_tls: cfg.client_tls.clone(),
        pg_connect_host: pg.connect_address.host.clone(),
        pg_connect_port: pg.connect_address.port,
        tags: Tags {
            nofailover: cfg.tags.nofailover,
            noloadbalance: cfg.tags.noloadbalance,
            clonefrom: cfg.tags.clonefrom,
            nosync: cfg.tags.nosync,
            other: cfg.tags.other.clone().into_iter().collect(),
        },
        initdb_args: cfg.bootstrap.initdb.clone(),
        bootstrap_dynamic: d.to_json(),
        ha,
        instance,
        rewind: pg.authentication.rewind.clone(),
        pg_ctl_timeout: pg.pg_ctl_timeout,
        callbacks: pg.callbacks.clone(),
        watchdog: WatchdogSpec {
            mode: cfg.watchdog.mode,
            device: cfg.watchdog.device.clone(),
            safety_margin: cfg.watchdog.safety_margin,
            // This very binary runs the fencer (`pgherd fence`).
            fencer: std::env::current_exe().ok(),
        },
    })
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    (host, port).to_socket_addrs()?.next().context("no address")
}

/// The agent talks to its own PostgreSQL over loopback when PostgreSQL listens there.
fn local_connect_host(listen_hosts: &[String]) -> String {
    let loopback = listen_hosts.iter().any(|h| {
        matches!(
            h.as_str(),
            "*" | "0.0.0.0" | "127.0.0.1" | "localhost" | "::" | "::1"
        )
    });
    match listen_hosts.first() {
        Some(first) if !loopback => first.clone(),
        _ => "127.0.0.1".into(),
    }
}

/// PostgreSQL's server log sits next to the data directory (not inside it, so that
/// pg_basebackup and pg_rewind do not copy it between members).
fn log_file_for(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "postgresql".into());
    name.push(".log");
    data_dir.with_file_name(name)
}
