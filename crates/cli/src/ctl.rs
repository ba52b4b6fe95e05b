//! `pgherd ctl`: the operator's view of a cluster, read from the DCS like `patronictl`.

use crate::{config, listing};
use anyhow::{Context, Result};
use pgherd_dcs::etcd::EtcdDcs;
use pgherd_dcs::{Cluster, Dcs};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct CtlArgs {
    /// A member's config file (only its scope, namespace and DCS settings are used).
    #[arg(short, long, value_name = "FILE", env = "PGHERD_CONFIG")]
    pub config: PathBuf,
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
    /// Same as `list` (patronictl's `topology`).
    Topology {
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show the promotions recorded in the DCS.
    History {
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show the cluster's dynamic configuration.
    ShowConfig,
}

/// How long ctl waits for the DCS before giving up.
const DCS_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(args: CtlArgs) -> Result<()> {
    let loaded = config::load(&args.config)?;
    for w in &loaded.warnings {
        tracing::debug!(warning = %w, "config");
    }
    let cfg = loaded.config;
    let config::DcsConfig::Etcd { endpoints, .. } = &cfg.dcs;
    let dcs = EtcdDcs::connect(
        endpoints,
        &cfg.namespace,
        &cfg.scope,
        "pgherd-ctl",
        Duration::from_secs(30),
        DCS_TIMEOUT,
    )
    .await
    .context("cannot read the cluster")?;
    let cluster = dcs.get_cluster().await.context("cannot read the cluster")?;
    let out = match args.command {
        CtlCommand::List { format } | CtlCommand::Topology { format } => {
            list(&cfg.scope, &cluster, format)
        }
        CtlCommand::History { format } => history(&cluster, format),
        CtlCommand::ShowConfig => show_config(&cluster)?,
    };
    print!("{out}");
    Ok(())
}

fn list(scope: &str, cluster: &Cluster, format: Format) -> String {
    match format {
        Format::Table => listing::table(scope, cluster),
        Format::Json => format!("{}\n", listing::json(scope, cluster)),
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

fn show_config(cluster: &Cluster) -> Result<String> {
    let value = cluster
        .config
        .as_ref()
        .map(|c| c.value.clone())
        .unwrap_or(serde_json::Value::Object(Default::default()));
    yaml_serde::to_string(&value).context("cannot render the config as YAML")
}
