//! `ctl remove CLUSTER`: wipe the cluster's keys from the DCS, after the operator types
//! the cluster's name (and the leader's, while one holds the key) to confirm.

use anyhow::{bail, Context, Result};
use pgherd_dcs::{Cluster, Dcs};
use std::io::{BufRead, Write};

pub async fn run(dcs: &dyn Dcs, scope: &str, cluster: &Cluster, named: &str) -> Result<String> {
    if named != scope {
        bail!("the config is for cluster {scope}, not {named}: nothing removed");
    }
    let typed = ask(&format!(
        "Remove every key of cluster {scope} from the DCS? Type the cluster's name to confirm"
    ))?;
    if typed != scope {
        bail!("not confirmed (typed {typed:?}, not {scope:?}): nothing removed");
    }
    if let Some(leader) = cluster.leader_name() {
        let typed = ask(&format!(
            "{leader} holds the leader key: the cluster is running. Type the leader's name to remove it anyway"
        ))?;
        if typed != leader {
            bail!("not confirmed (typed {typed:?}, not {leader:?}): nothing removed");
        }
    }
    dcs.delete_cluster()
        .await
        .context("cannot remove the cluster's keys")?;
    Ok(format!(
        "Removed every key of cluster {scope} from the DCS\n"
    ))
}

/// One line from standard input (a terminal or a pipe), trimmed.
fn ask(question: &str) -> Result<String> {
    eprint!("{question}: ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    Ok(answer.trim().to_string())
}
