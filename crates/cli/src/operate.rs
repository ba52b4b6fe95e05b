//! `ctl restart`, `ctl reload`, `ctl reinit`: requests to the members' REST APIs (with
//! the config's `restapi.authentication`), one line of outcome per member.

use crate::config::BasicAuth;
use crate::prompt::confirm;
use anyhow::{bail, Context, Result};
use pgherd_dcs::{Cluster, Member};
use std::time::Duration;

/// Which members a restart is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleFilter {
    Primary,
    Replica,
    Any,
}

/// How long a member may take to answer (a clean stop and a start, or a clone starting).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Target<'a> {
    pub cluster: &'a Cluster,
    pub auth: Option<&'a BasicAuth>,
    /// Speaks HTTPS as `ctl.*` says (see [`pgherd_http::client`]).
    pub http: &'a reqwest::Client,
}

impl Target<'_> {
    /// The named members (all when none is named), each known to the DCS.
    fn members(&self, names: &[String]) -> Result<Vec<&Member>> {
        if names.is_empty() {
            return Ok(self.cluster.members.iter().collect());
        }
        names
            .iter()
            .map(|n| {
                self.cluster.member(n).with_context(|| {
                    let known: Vec<&str> = self
                        .cluster
                        .members
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect();
                    format!(
                        "no member {n} in the cluster (members: {})",
                        known.join(", ")
                    )
                })
            })
            .collect()
    }

    /// POST `path` on `member`'s REST API; the status code and the body's text.
    async fn post(
        &self,
        member: &Member,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(u16, String)> {
        let base = member
            .data
            .api_url
            .trim_end_matches("/patroni")
            .trim_end_matches('/');
        let url = format!("{base}/{path}");
        let mut request = self.http.post(&url).timeout(REQUEST_TIMEOUT).json(&body);
        if let Some(a) = self.auth {
            request = request.basic_auth(&a.username, Some(&a.password));
        }
        let answer = request
            .send()
            .await
            .with_context(|| format!("{}'s REST API ({url}) did not answer", member.name))?;
        let code = answer.status().as_u16();
        Ok((code, answer.text().await.unwrap_or_default()))
    }
}

/// `ctl restart [MEMBER…] [--role] [--pending] [--scheduled TIME] [--force]`.
pub async fn restart(
    target: &Target<'_>,
    names: &[String],
    role: RoleFilter,
    pending: bool,
    scheduled: Option<&str>,
    force: bool,
) -> Result<String> {
    let leader = target.cluster.leader_name();
    let members: Vec<&Member> = target
        .members(names)?
        .into_iter()
        .filter(|m| match role {
            RoleFilter::Any => true,
            RoleFilter::Primary => Some(m.name.as_str()) == leader,
            RoleFilter::Replica => Some(m.name.as_str()) != leader,
        })
        .filter(|m| !pending || m.data.extra.get("pending_restart") == Some(&true.into()))
        .collect();
    if members.is_empty() {
        bail!("no member matches: nothing to restart");
    }
    let schedule = match scheduled.filter(|s| !s.eq_ignore_ascii_case("now")) {
        None => None,
        Some(text) => {
            let at = pgherd_ha::manual::parse_time(text).with_context(|| {
                format!(
                    "cannot read the time {text:?}: use ISO 8601, e.g. 2026-12-06T22:30:00+00:00"
                )
            })?;
            Some(pgherd_ha::runner::iso8601(at))
        }
    };
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    if !force {
        let when = schedule
            .as_deref()
            .map(|s| format!(" at {s}"))
            .unwrap_or_default();
        if !confirm(&format!("Restart {}{when}?", names.join(", ")))? {
            bail!("restart aborted: not confirmed");
        }
    }
    let mut body = serde_json::json!({});
    if pending {
        body["restart_pending"] = true.into();
    }
    if let Some(s) = &schedule {
        body["schedule"] = s.clone().into();
    }
    each(target, &members, "restart", body, &[200, 202]).await
}

/// `ctl reload [MEMBER…] [--force]`.
pub async fn reload(target: &Target<'_>, names: &[String], force: bool) -> Result<String> {
    let members = target.members(names)?;
    let list: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    if !force && !confirm(&format!("Reload {}?", list.join(", ")))? {
        bail!("reload aborted: not confirmed");
    }
    each(
        target,
        &members,
        "reload",
        serde_json::json!({}),
        &[200, 202],
    )
    .await
}

/// `ctl reinit MEMBER [--force]`: refused on the leader up front.
pub async fn reinit(target: &Target<'_>, name: &str, force: bool) -> Result<String> {
    let members = target.members(&[name.to_string()])?;
    if target.cluster.leader_name() == Some(name) {
        bail!("{name} is the leader: a leader cannot be reinitialized (switch over first)");
    }
    if !force
        && !confirm(&format!(
            "Wipe {name}'s data directory and clone it afresh from the leader?"
        ))?
    {
        bail!("reinit aborted: not confirmed");
    }
    each(
        target,
        &members,
        "reinitialize",
        serde_json::json!({"force": force}),
        &[200],
    )
    .await
}

/// POST to each member in turn; fails (after trying all) when any did not succeed.
async fn each(
    target: &Target<'_>,
    members: &[&Member],
    path: &str,
    body: serde_json::Value,
    ok: &[u16],
) -> Result<String> {
    let mut out = String::new();
    let mut failed = Vec::new();
    for m in members {
        match target.post(m, path, body.clone()).await {
            Ok((code, text)) if ok.contains(&code) => {
                out.push_str(&format!("Success: {path} on member {}: {text}\n", m.name));
            }
            Ok((code, text)) => failed.push(format!("{}: {code} {text}", m.name)),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    if !failed.is_empty() {
        print!("{out}");
        bail!("{path} failed on {}", failed.join("; "));
    }
    Ok(out)
}
