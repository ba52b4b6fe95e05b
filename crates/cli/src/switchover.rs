//! `ctl switchover` and `ctl failover`: checked up front against the cluster (the same
//! rules as `POST /switchover`), confirmed, written to the DCS, and followed until the
//! new leader holds the key.

use crate::listing;
use crate::prompt::confirm;
use anyhow::{bail, Context, Result};
use pgherd_dcs::Dcs;
use pgherd_ha::manual::{self, Ask, Kind, Outcome};

/// What the operator typed.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub leader: Option<String>,
    pub candidate: Option<String>,
    /// ISO 8601, or `now`.
    pub scheduled: Option<String>,
    pub force: bool,
}

/// Run a switchover or failover; the text to print when it is done.
pub async fn run(
    dcs: &dyn Dcs,
    http: &reqwest::Client,
    scope: &str,
    kind: Kind,
    asked: Request,
) -> Result<String> {
    let cluster = dcs.get_cluster().await.context("cannot read the cluster")?;
    let ask = Ask {
        leader: asked.leader,
        candidate: asked.candidate,
        scheduled_at: asked.scheduled.filter(|s| !s.eq_ignore_ascii_case("now")),
    };
    let request = manual::check(&cluster, kind, &ask, manual::unix_now())
        .map_err(|e| anyhow::anyhow!("{} refused: {e}", kind.as_str()))?;
    if !asked.force {
        print!("{}", listing::table(scope, &cluster));
        let from = match &request.leader {
            Some(l) => format!(", demoting the current leader {l}"),
            None => ", which has no leader".to_string(),
        };
        let to = match &request.candidate {
            Some(c) => format!("to {c}"),
            None => "to the most advanced eligible replica".to_string(),
        };
        let when = match &request.scheduled_at {
            Some(at) => format!(" at {at}"),
            None => " now".to_string(),
        };
        let question = format!(
            "{} cluster {scope}{from}, {to}{when}: are you sure?",
            capitalized(kind.as_str())
        );
        if !confirm(&question)? {
            bail!("{} aborted: not confirmed", kind.as_str());
        }
    }
    let ha = pgherd_ha::dynamic::apply(
        &pgherd_ha::runner::default_ha_config(),
        cluster.config.as_ref().map(|c| &c.value),
    )
    .ha;
    let wait = manual::default_wait(&ha);
    let outcome = manual::submit(dcs, http, &request, wait)
        .await
        .with_context(|| format!("{} not started", kind.as_str()))?;
    match outcome {
        Outcome::Done { leader } => {
            let cluster = dcs.get_cluster().await.context("cannot read the cluster")?;
            let done = match kind {
                Kind::Switchover => "switched over",
                Kind::Failover => "failed over",
            };
            Ok(format!(
                "Successfully {done} to \"{leader}\"\n{}",
                listing::table(scope, &cluster)
            ))
        }
        Outcome::Scheduled { at } => Ok(format!(
            "Switchover scheduled at {at} (cancel it with: pgherd ctl switchover --cancel)\n"
        )),
        Outcome::Failed { leader, reason } => bail!(
            "{} failed: {}; {} still leads",
            kind.as_str(),
            reason
                .as_deref()
                .unwrap_or("the members dropped the request (the leader's log says why)"),
            leader.as_deref().unwrap_or("nobody")
        ),
        Outcome::TimedOut => bail!(
            "{} not done after {} s; the request is still pending (cancel it with: pgherd ctl switchover --cancel)",
            kind.as_str(),
            wait.as_secs()
        ),
    }
}

/// `ctl switchover --cancel`: remove a pending (scheduled) request.
pub async fn cancel(dcs: &dyn Dcs) -> Result<String> {
    match manual::cancel(dcs).await.context("cannot cancel")? {
        Some(r) => Ok(format!(
            "Cancelled the pending request{}{}\n",
            r.candidate.map(|c| format!(" to {c}")).unwrap_or_default(),
            r.scheduled_at
                .map(|at| format!(" scheduled at {at}"))
                .unwrap_or_default()
        )),
        None => bail!("no switchover or failover is pending"),
    }
}

fn capitalized(word: &str) -> String {
    let mut c = word.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}
