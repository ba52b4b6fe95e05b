//! `POST /switchover`, `POST /failover` and `DELETE /switchover`, answered as Patroni
//! answers them (plain-text bodies, the same status codes) so `patronictl` works.

use super::{authorized, dcs_down, json_object, refuse, ApiState, Refusal};
use crate::manual::{self, Ask, Kind, Outcome, Refused, SubmitError};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

pub(super) async fn post_switchover(
    State(api): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    request(&api, &headers, &body, Kind::Switchover).await
}

pub(super) async fn post_failover(
    State(api): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    request(&api, &headers, &body, Kind::Failover).await
}

/// `DELETE /switchover`: cancel a scheduled switchover.
pub(super) async fn delete_switchover(
    State(api): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let control = authorized(&api, &headers)?;
    let cluster = control
        .dcs
        .get_cluster()
        .await
        .map_err(|e| dcs_down("read", e))?;
    if cluster
        .failover
        .as_ref()
        .is_none_or(|f| f.value.scheduled_at.is_none())
    {
        return Err(refuse(StatusCode::NOT_FOUND, "no switchover is scheduled"));
    }
    manual::cancel(control.dcs.as_ref())
        .await
        .map_err(|e| dcs_down("write", e))?;
    Ok(text(StatusCode::OK, "scheduled switchover deleted"))
}

async fn request(
    api: &ApiState,
    headers: &HeaderMap,
    body: &[u8],
    kind: Kind,
) -> Result<Response, Refusal> {
    let control = authorized(api, headers)?;
    let ask = ask_from(&json_object(body)?)?;
    if kind == Kind::Switchover && ask.leader.is_none() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "a switchover needs the current leader's name (\"leader\")",
        ));
    }
    let cluster = control
        .dcs
        .get_cluster()
        .await
        .map_err(|e| dcs_down("read", e))?;
    let request = manual::check(&cluster, kind, &ask, manual::unix_now()).map_err(|e| match e {
        Refused::Invalid(m) => refuse(StatusCode::BAD_REQUEST, m),
        Refused::NotPossible(m) => refuse(StatusCode::PRECONDITION_FAILED, m),
    })?;
    let wait = manual::default_wait(&api.status.get().ha);
    let outcome = manual::submit(control.dcs.as_ref(), &control.http, &request, wait)
        .await
        .map_err(|e| match e {
            SubmitError::Pending => refuse(StatusCode::CONFLICT, e.to_string()),
            SubmitError::Dcs(e) => dcs_down("write", e),
        })?;
    let done = match kind {
        Kind::Switchover => "switched over",
        Kind::Failover => "failed over",
    };
    Ok(match outcome {
        Outcome::Done { leader } => text(
            StatusCode::OK,
            &format!("Successfully {done} to \"{leader}\""),
        ),
        Outcome::Scheduled { at } => text(
            StatusCode::ACCEPTED,
            &format!("Switchover scheduled at {at}"),
        ),
        Outcome::Failed { leader, reason } => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "{} failed: {} (leader: {})",
                kind.as_str(),
                reason
                    .as_deref()
                    .unwrap_or("the members dropped the request; their logs say why"),
                leader.as_deref().unwrap_or("none")
            ),
        ),
        Outcome::TimedOut => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "{} not done after {} s; the request is still pending",
                kind.as_str(),
                wait.as_secs()
            ),
        ),
    })
}

/// The body's `leader` (or Patroni 2's `master`), `candidate` (or `member`) and
/// `scheduled_at`; each a string when present.
fn ask_from(body: &Value) -> Result<Ask, Refusal> {
    let field = |names: &[&str]| -> Result<Option<String>, Refusal> {
        for name in names {
            match body.get(*name) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) if s.is_empty() => continue,
                Some(Value::String(s)) => return Ok(Some(s.clone())),
                Some(other) => {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        format!("{name} must be a string, got {other}"),
                    ))
                }
            }
        }
        Ok(None)
    };
    Ok(Ask {
        leader: field(&["leader", "master"])?,
        candidate: field(&["candidate", "member"])?,
        scheduled_at: field(&["scheduled_at"])?,
    })
}

fn text(code: StatusCode, body: &str) -> Response {
    (code, body.to_string()).into_response()
}
