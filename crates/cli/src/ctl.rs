//! `pgherd ctl`: the operator's view of a cluster, read from the DCS like `patronictl`.

use crate::{config, drill, edit_config, listing, operate, remove, switchover};
use anyhow::{Context, Result};
use pgherd_dcs::etcd::EtcdDcs;
use pgherd_dcs::{Cluster, Dcs};
use pgherd_ha::manual::Kind;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct CtlArgs {
    /// A member's config file (only its scope, namespace and DCS settings are used).
    #[arg(short, long, value_name = "FILE", env = "PGHERD_CONFIG")]
    pub config: PathBuf,
    /// Call the members' HTTPS REST APIs without checking their certificates (like
    /// `ctl.insecure: true`; patronictl's `-k`).
    #[arg(short = 'k', long)]
    pub insecure: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlCommand {
    /// List the members: role, state, timeline and lag (like `patronictl list`).
    List {
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// The members as a tree: each replica under the member it streams from.
    Topology {
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// This program's version and each member's.
    Version {
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove every key of the cluster from the DCS, after typing its name (and, while
    /// a leader holds its key, the leader's name) to confirm. The members' data stays.
    Remove {
        /// The cluster's name (its `scope`), as a check.
        cluster: String,
    },
    /// Show the promotions recorded in the DCS.
    History {
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show the cluster's dynamic configuration; with --effective, the HA settings and PostgreSQL
    /// parameters a member runs with and where each comes from.
    ShowConfig {
        /// A member: its settings and parameters, each with its source (default, cluster,
        /// local).
        #[arg(long, value_name = "MEMBER")]
        effective: Option<String>,
        /// `table` prints YAML (or, with --effective, aligned columns).
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Maintenance mode: no automatic failover, promotion, demotion or restart until
    /// `resume` (members keep publishing their state; the leader keeps its lease).
    Pause {
        /// Wait until every member has taken it up.
        #[arg(long)]
        wait: bool,
    },
    /// Leave maintenance mode.
    Resume {
        /// Wait until every member has taken it up.
        #[arg(long)]
        wait: bool,
    },
    /// Planned switchover: the leader stops cleanly and the candidate (or the most
    /// advanced eligible replica) takes over with every WAL record; the old leader
    /// follows it without pg_rewind.
    Switchover {
        /// The current leader (checked; the switchover is refused if it is not).
        #[arg(long, alias = "master", alias = "primary")]
        leader: Option<String>,
        /// The member to take over.
        #[arg(long)]
        candidate: Option<String>,
        /// When, in ISO 8601 (`2026-12-06T22:30+00:00`; UTC without an offset) or `now`.
        #[arg(long, value_name = "TIME")]
        scheduled: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
        /// Cancel a scheduled switchover instead.
        #[arg(long, conflicts_with_all = ["leader", "candidate", "scheduled"])]
        cancel: bool,
    },
    /// Manual failover to a named member; works also when the cluster has no leader.
    Failover {
        /// The member to promote.
        #[arg(long)]
        candidate: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Restart PostgreSQL on members (all by default): a replica without failover, the
    /// primary in place.
    Restart {
        /// Members to restart (default: all).
        members: Vec<String>,
        /// Only members with this role.
        #[arg(long, value_enum, default_value_t = operate::RoleFilter::Any)]
        role: operate::RoleFilter,
        /// Only members flagged pending_restart (a changed parameter needs a restart).
        #[arg(long)]
        pending: bool,
        /// When, in ISO 8601 (UTC without an offset) or `now`.
        #[arg(long, value_name = "TIME")]
        scheduled: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Rewrite postgresql.conf and reload PostgreSQL on members (all by default).
    Reload {
        members: Vec<String>,
        #[arg(long)]
        force: bool,
    },
    /// Wipe a replica's data directory and clone it afresh from the leader.
    Reinit {
        member: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// The tutorial's exercises against this cluster and its pooler: replication,
    /// failover (kill -9 of the primary's node, which must run on this host; asks
    /// first), switchover under load, read balancing. Exits 0 only if all pass.
    Drill {
        /// The pooler's read-write address, `postgres://user[:password]@host:port/db`
        /// (the password may come from PGPASSWORD instead).
        #[arg(long, value_name = "URI")]
        rw: String,
        /// The pooler's read-only address, the same way.
        #[arg(long, value_name = "URI")]
        ro: String,
        /// Kill without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Change the dynamic configuration: shows the diff and asks before writing. Without
    /// --set, --pg or --apply, $EDITOR edits it as YAML.
    EditConfig {
        /// KEY=VALUE: a dotted key (`loop_wait`, `postgresql.use_slots`) and a YAML value;
        /// `null` (or nothing) removes the key.
        #[arg(short, long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// NAME=VALUE: the PostgreSQL parameter `postgresql.parameters.NAME`.
        #[arg(short, long = "pg", value_name = "NAME=VALUE")]
        pg: Vec<String>,
        /// Merge this YAML file (`-`: standard input) into the config (null removes).
        #[arg(long, value_name = "FILE")]
        apply: Option<PathBuf>,
        /// Write without asking.
        #[arg(long)]
        force: bool,
    },
}

/// How long ctl waits for the DCS before giving up.
const DCS_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at a compare-and-set of the `config` key that others keep changing.
const CONFIG_WRITE_ATTEMPTS: usize = 5;
/// How long `pause --wait` / `resume --wait` waits for every member.
const PAUSE_WAIT: Duration = Duration::from_secs(60);

pub async fn run(args: CtlArgs) -> Result<()> {
    let loaded = config::load(&args.config)?;
    for w in &loaded.warnings {
        tracing::debug!(warning = %w, "config");
    }
    let cfg = loaded.config;
    let mut client_tls = cfg.client_tls.clone();
    client_tls.insecure |= args.insecure;
    let http =
        pgherd_http::client::client(&client_tls, None).context("cannot make an HTTP client")?;
    let dcs = EtcdDcs::connect_with(
        &cfg.dcs.etcd_access(),
        &cfg.namespace,
        &cfg.scope,
        "pgherd-ctl",
        Duration::from_secs(30),
        DCS_TIMEOUT,
    )
    .await
    .context("cannot read the cluster")?;
    let cluster = dcs.get_cluster().await.context("cannot read the cluster")?;
    let target = operate::Target {
        cluster: &cluster,
        auth: cfg.restapi.authentication.as_ref(),
        http: &http,
    };
    let out = match args.command {
        CtlCommand::List { format } => list(&cfg.scope, &cluster, format),
        CtlCommand::Topology {
            format: Format::Table,
        } => listing::topology(&cfg.scope, &cluster),
        CtlCommand::Topology { format } => list(&cfg.scope, &cluster, format),
        CtlCommand::Version { format } => version(&cluster, format),
        CtlCommand::Remove { cluster: name } => {
            remove::run(&dcs, &cfg.scope, &cluster, &name).await?
        }
        CtlCommand::History { format } => history(&cluster, format),
        CtlCommand::ShowConfig {
            effective: None,
            format,
        } => show_config(&cluster, format)?,
        CtlCommand::ShowConfig {
            effective: Some(member),
            format,
        } => show_effective(&http, &cluster, &member, format).await?,
        CtlCommand::Pause { wait } => set_pause(&dcs, true, wait).await?,
        CtlCommand::Resume { wait } => set_pause(&dcs, false, wait).await?,
        CtlCommand::EditConfig {
            set,
            pg,
            apply,
            force,
        } => {
            let edits = edit_config::Edits { set, pg, apply };
            edit_config::run(&dcs, &edits, force).await?
        }
        CtlCommand::Switchover { cancel: true, .. } => switchover::cancel(&dcs).await?,
        CtlCommand::Switchover {
            leader,
            candidate,
            scheduled,
            force,
            cancel: false,
        } => {
            let asked = switchover::Request {
                leader,
                candidate,
                scheduled,
                force,
            };
            switchover::run(&dcs, &http, &cfg.scope, Kind::Switchover, asked).await?
        }
        CtlCommand::Restart {
            members,
            role,
            pending,
            scheduled,
            force,
        } => {
            operate::restart(
                &target,
                &members,
                role,
                pending,
                scheduled.as_deref(),
                force,
            )
            .await?
        }
        CtlCommand::Reload { members, force } => operate::reload(&target, &members, force).await?,
        CtlCommand::Reinit { member, force } => operate::reinit(&target, &member, force).await?,
        CtlCommand::Drill { rw, ro, yes } => drill(&cfg, &rw, &ro, yes).await?,
        CtlCommand::Failover { candidate, force } => {
            let asked = switchover::Request {
                candidate,
                force,
                ..switchover::Request::default()
            };
            switchover::run(&dcs, &http, &cfg.scope, Kind::Failover, asked).await?
        }
    };
    print!("{out}");
    Ok(())
}

/// A member's parameters as it last wrote them, with their sources, from its REST API.
async fn show_effective(
    http: &reqwest::Client,
    cluster: &Cluster,
    member: &str,
    format: Format,
) -> Result<String> {
    let Some(m) = cluster.member(member) else {
        let names: Vec<&str> = cluster.members.iter().map(|m| m.name.as_str()).collect();
        anyhow::bail!(
            "no member {member} in the cluster (members: {})",
            names.join(", ")
        );
    };
    let base = m
        .data
        .api_url
        .trim_end_matches("/patroni")
        .trim_end_matches('/');
    let url = format!("{base}/effective-config");
    let answer: serde_json::Value = http
        .get(&url)
        .timeout(DCS_TIMEOUT)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("{member}'s REST API ({url}) did not answer"))?
        .json()
        .await
        .with_context(|| format!("{member}'s REST API ({url}) answered no JSON"))?;
    let Some(params) = answer["parameters"].as_object().filter(|p| !p.is_empty()) else {
        anyhow::bail!("{member} has not written its PostgreSQL configuration yet");
    };
    if format == Format::Json {
        return Ok(format!("{answer}\n"));
    }
    let settings = answer["settings"].as_object().cloned().unwrap_or_default();
    Ok(format!(
        "{}\n{}",
        source_table("setting", &settings),
        source_table("parameter", params)
    ))
}

/// `name  value  source` rows, aligned, under a header naming the first column `what`.
fn source_table(what: &str, rows: &serde_json::Map<String, serde_json::Value>) -> String {
    let shown = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows: Vec<(&str, String, &str)> = rows
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                shown(&v["value"]),
                v["source"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let name_w = rows
        .iter()
        .map(|r| r.0.len())
        .max()
        .unwrap_or(0)
        .max(what.len());
    let value_w = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(5);
    let mut out = format!("{what:name_w$}  {:value_w$}  source\n", "value");
    for (name, value, source) in rows {
        out.push_str(&format!("{name:name_w$}  {value:value_w$}  {source}\n"));
    }
    out
}

fn is_paused(cluster: &Cluster) -> bool {
    cluster
        .config
        .as_ref()
        .and_then(|c| c.value.get("pause"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false)
}

/// `pause` / `resume`: set or remove `pause` in the `config` key (Patroni's shape: `resume`
/// removes the key), by compare-and-set so no concurrent change of the config is lost.
async fn set_pause(dcs: &impl Dcs, pause: bool, wait: bool) -> Result<String> {
    let what = if pause { "paused" } else { "resumed" };
    let mut written = false;
    for _ in 0..CONFIG_WRITE_ATTEMPTS {
        let cluster = dcs.get_cluster().await.context("cannot read the cluster")?;
        if is_paused(&cluster) == pause {
            anyhow::bail!(
                "the cluster is {}",
                if pause {
                    "already paused"
                } else {
                    "not paused"
                }
            );
        }
        let (mut value, version) = match &cluster.config {
            Some(c) => (c.value.clone(), c.version),
            None => (serde_json::json!({}), 0),
        };
        let Some(map) = value.as_object_mut() else {
            anyhow::bail!("the cluster's config key is not a JSON object; fix it with edit-config");
        };
        if pause {
            map.insert("pause".into(), true.into());
        } else {
            map.remove("pause");
        }
        if dcs
            .set_config(&value, Some(version))
            .await
            .context("cannot write the cluster's config")?
        {
            written = true;
            break;
        }
    }
    if !written {
        anyhow::bail!("the cluster's config kept changing; try again");
    }
    if !wait {
        return Ok(format!("Success: cluster management is {what}\n"));
    }
    let deadline = tokio::time::Instant::now() + PAUSE_WAIT;
    loop {
        let cluster = dcs.get_cluster().await.context("cannot read the cluster")?;
        let behind: Vec<&str> = cluster
            .members
            .iter()
            .filter(|m| m.data.pause.unwrap_or(false) != pause)
            .map(|m| m.name.as_str())
            .collect();
        if behind.is_empty() {
            return Ok(format!(
                "Success: cluster management is {what} (every member has taken it up)\n"
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "cluster management is {what} in the DCS, but after {} s these members have \
                 not taken it up: {}",
                PAUSE_WAIT.as_secs(),
                behind.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn list(scope: &str, cluster: &Cluster, format: Format) -> String {
    match format {
        Format::Table => listing::table(scope, cluster),
        Format::Json => format!("{}\n", listing::json(scope, cluster)),
    }
}

fn version(cluster: &Cluster, format: Format) -> String {
    let mine = env!("CARGO_PKG_VERSION");
    match format {
        Format::Json => {
            let members: serde_json::Map<String, serde_json::Value> = cluster
                .members
                .iter()
                .map(|m| (m.name.clone(), m.data.version.clone().into()))
                .collect();
            format!(
                "{}\n",
                serde_json::json!({"pgherd": mine, "members": members})
            )
        }
        Format::Table => {
            let mut out = format!("pgherd ctl version {mine}\n");
            for m in &cluster.members {
                let v = if m.data.version.is_empty() {
                    "unknown"
                } else {
                    &m.data.version
                };
                out.push_str(&format!("{}: agent version {v}\n", m.name));
            }
            out
        }
    }
}

fn history(cluster: &Cluster, format: Format) -> String {
    match format {
        Format::Json => format!("{}\n", serde_json::json!(cluster.history)),
        Format::Table => {
            let mut out = String::from("TL\tLSN\tReason\tTimestamp\tNew Leader\n");
            for h in &cluster.history {
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\n",
                    h.timeline, h.lsn, h.reason, h.timestamp, h.new_leader
                ));
            }
            out
        }
    }
}

fn show_config(cluster: &Cluster, format: Format) -> Result<String> {
    let value = cluster
        .config
        .as_ref()
        .map(|c| c.value.clone())
        .unwrap_or(serde_json::Value::Object(Default::default()));
    match format {
        Format::Json => Ok(format!("{value}\n")),
        Format::Table => yaml_serde::to_string(&value).context("cannot render the config as YAML"),
    }
}

/// `ctl drill`: the report, or an error when a check failed (the exit code says so).
async fn drill(cfg: &config::NodeConfig, rw: &str, ro: &str, yes: bool) -> Result<String> {
    let read_write = drill::parse_address(rw).context("--rw")?;
    let read_only = drill::parse_address(ro).context("--ro")?;
    let dcs: Arc<dyn Dcs> = Arc::new(
        EtcdDcs::connect_with(
            &cfg.dcs.etcd_access(),
            &cfg.namespace,
            &cfg.scope,
            "pgherd-ctl-drill",
            Duration::from_secs(30),
            DCS_TIMEOUT,
        )
        .await
        .context("cannot read the cluster")?,
    );
    let superuser = &cfg.postgresql.authentication.superuser;
    let member_login = drill::Address {
        host: String::new(),
        port: 0,
        user: superuser.username.clone(),
        password: superuser.password.clone(),
        dbname: "postgres".into(),
    };
    let mut target = drill::Target {
        scope: cfg.scope.clone(),
        dcs: dcs.clone(),
        read_write,
        read_only,
        member_login,
        nodes: Box::new(drill::LocalNodes::new(dcs, yes)),
        http: pgherd_http::client::client(&cfg.client_tls, None)
            .context("cannot make an HTTP client")?,
    };
    let report = drill::run(&mut target).await;
    print!("{}", report.render());
    if !report.passed() {
        anyhow::bail!("the drill failed");
    }
    Ok(String::new())
}
