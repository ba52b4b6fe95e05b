//! `POST /restart`, `DELETE /restart`, `POST /reload` and `POST /reinitialize`: operator
//! requests to this member, answered as Patroni answers them (plain-text bodies, the same
//! status codes) so `patronictl restart/reload/reinit` work.

use super::{authorized, json_object, refuse, ApiState, Refusal};
use crate::decide::MemberRequest;
use crate::operator::AgentHandle;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::time::Duration;

/// The agent of this member, after the credentials check.
fn agent<'a>(api: &'a ApiState, headers: &HeaderMap) -> Result<&'a AgentHandle, Refusal> {
    authorized(api, headers)?.agent.as_ref().ok_or_else(|| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this member's agent takes no requests",
        )
    })
}

/// An optional JSON object body (`patronictl` sends `{}` or nothing).
fn body_object(body: &[u8]) -> Result<Value, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    json_object(body)
}

/// How long a request may take before the API answers anyway: a clean stop and a start.
fn request_timeout(api: &ApiState) -> Duration {
    let ha = api.status.get().ha;
    Duration::from_millis(ha.ttl + ha.retry_timeout) + Duration::from_secs(120)
}

/// `POST /restart`: `{"schedule", "restart_pending", "role"}`, all optional.
pub(super) async fn post_restart(
    State(api): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let agent = agent(&api, &headers)?;
    let body = body_object(&body)?;
    let pending_only = match body.get("restart_pending") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("restart_pending must be true or false, got {other}"),
            ))
        }
    };
    let role = match body.get("role") {
        None | Some(Value::Null) => None,
        Some(Value::String(r))
            if matches!(r.as_str(), "primary" | "master" | "replica" | "any") =>
        {
            Some(r.clone())
        }
        Some(other) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("role must be primary, replica or any, got {other}"),
            ))
        }
    };
    let s = api.status.get();
    if let Some(role) = role.as_deref().filter(|r| *r != "any") {
        let primary = matches!(role, "primary" | "master");
        if primary != super::is_leader(&s) {
            return Ok(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "restart conditions are not satisfied: the member's role differs",
            ));
        }
    }
    if let Some(schedule) = body.get("schedule").filter(|v| !v.is_null()) {
        let at = schedule
            .as_str()
            .and_then(crate::manual::parse_time)
            .ok_or_else(|| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the schedule {schedule}: use ISO 8601"),
                )
            })?;
        if at <= crate::manual::unix_now() {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "the schedule is in the past; a restart can only be scheduled ahead",
            ));
        }
        return match agent.schedule_restart(at, pending_only).await {
            Ok(m) => Ok(text(StatusCode::ACCEPTED, &m)),
            Err(e) => Ok(text(
                StatusCode::CONFLICT,
                &format!("Cannot schedule restart: {e}"),
            )),
        };
    }
    if pending_only && !s.pending_restart {
        return Ok(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "restart conditions are not satisfied: no parameter needs a restart",
        ));
    }
    answer(
        agent
            .request(MemberRequest::Restart, request_timeout(&api))
            .await,
        "restarted successfully",
        "restart failed",
    )
}

/// `DELETE /restart`: cancel a scheduled restart.
pub(super) async fn delete_restart(
    State(api): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let agent = agent(&api, &headers)?;
    Ok(match agent.cancel_scheduled_restart().await {
        Ok(m) => text(StatusCode::OK, &m),
        Err(e) => text(StatusCode::NOT_FOUND, &e),
    })
}

/// `POST /reload`: rewrite postgresql.conf and reload PostgreSQL.
pub(super) async fn post_reload(
    State(api): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let agent = agent(&api, &headers)?;
    let result = agent
        .request(MemberRequest::Reload, request_timeout(&api))
        .await;
    Ok(match result {
        // Patroni answers 202: the reload happened, its effect shows on the next loop.
        Ok(_) => text(StatusCode::ACCEPTED, "reload scheduled"),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("reload failed: {e}"),
        ),
    })
}

/// `POST /reinitialize` (`{"force": true}` accepted): wipe this replica and clone it anew.
pub(super) async fn post_reinitialize(
    State(api): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let agent = agent(&api, &headers)?;
    body_object(&body)?;
    answer(
        agent
            .request(MemberRequest::Reinitialize, request_timeout(&api))
            .await,
        "reinitialize started",
        "reinitialize failed",
    )
}

fn answer(result: Result<String, String>, done: &str, failed: &str) -> Result<Response, Refusal> {
    Ok(match result {
        Ok(_) => text(StatusCode::OK, done),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{failed}: {e}")),
    })
}

fn text(code: StatusCode, body: &str) -> Response {
    (code, body.to_string()).into_response()
}
