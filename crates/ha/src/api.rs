//! The REST API, with Patroni's paths, JSON field names and status codes: 200 when the
//! member is what the path asks, 503 otherwise, so HAProxy's `option httpchk OPTIONS
//! /primary` and existing monitoring work unchanged. Health paths answer GET, HEAD and
//! OPTIONS alike. The mutating endpoints (`PATCH`/`PUT /config`, `POST`/`DELETE
//! /switchover`, `POST /failover`, `POST`/`DELETE /restart`, `POST /reload`, `POST
//! /reinitialize`) need a [`Control`] and,
//! when `restapi.authentication` is set, its basic-auth credentials.

use crate::decide::SynchronousMode;
use crate::dynamic;
use crate::spec::ApiAuth;
use crate::status::{NodeStatus, Role, SharedStatus};
use axum::body::Bytes;
use axum::extract::{FromRef, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use base64::Engine;
use pgherd_dcs::Dcs;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod metrics;
mod operator;
mod switchover;

/// What the mutating endpoints act through: the cluster's DCS, and the credentials of
/// `restapi.authentication` (`None`: no authentication, as in Patroni).
#[derive(Clone)]
pub struct Control {
    pub dcs: Arc<dyn Dcs>,
    pub auth: Option<ApiAuth>,
    /// The member's agent, for restart, reload and reinit (`None`: answered 503).
    pub agent: Option<crate::operator::AgentHandle>,
    /// For asking other members (over HTTPS when their `api_url` says so).
    pub http: reqwest::Client,
}

#[derive(Clone)]
struct ApiState {
    status: SharedStatus,
    control: Option<Control>,
}

impl FromRef<ApiState> for SharedStatus {
    fn from_ref(api: &ApiState) -> SharedStatus {
        api.status.clone()
    }
}

/// The API's routes over a member's shared status; without `control` the mutating
/// endpoints answer 503.
pub fn router(status: SharedStatus, control: Option<Control>) -> Router {
    Router::new()
        .route("/", any(primary))
        .route("/primary", any(primary))
        .route("/leader", any(primary))
        .route("/master", any(primary))
        .route("/read-write", any(primary))
        .route("/replica", any(replica))
        .route("/read-only", any(read_only))
        .route("/sync", any(sync))
        .route("/synchronous", any(sync))
        .route("/read-only-sync", any(read_only_sync))
        .route("/read-only-synchronous", any(read_only_sync))
        .route("/quorum", any(quorum))
        .route("/read-only-quorum", any(read_only_quorum))
        .route("/async", any(asynchronous))
        .route("/asynchronous", any(asynchronous))
        .route("/health", any(health))
        .route("/liveness", any(liveness))
        .route("/readiness", any(readiness))
        .route("/patroni", get(patroni))
        .route("/cluster", get(cluster))
        .route("/history", get(history))
        .route("/config", get(config).patch(patch_config).put(put_config))
        .route("/effective-config", get(effective_config))
        .route("/metrics", get(metrics::metrics))
        .route(
            "/switchover",
            post(switchover::post_switchover).delete(switchover::delete_switchover),
        )
        .route("/failover", post(switchover::post_failover))
        .route(
            "/restart",
            post(operator::post_restart).delete(operator::delete_restart),
        )
        .route("/reload", post(operator::post_reload))
        .route("/reinitialize", post(operator::post_reinitialize))
        .route("/failsafe", get(get_failsafe).post(post_failsafe))
        .with_state(ApiState { status, control })
}

/// Serve the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    status: SharedStatus,
    control: Option<Control>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    pgherd_http::serve(listener, router(status, control), shutdown).await
}

/// [`serve`], over TLS when `tls` is given (`restapi.certfile`).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    status: SharedStatus,
    control: Option<Control>,
    tls: Option<pgherd_http::Acceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    pgherd_http::serve_with(listener, router(status, control), tls, shutdown).await
}

type Params = Query<HashMap<String, String>>;

/// 200 or 503 with the member's status as the body (no body for HEAD/OPTIONS).
fn answer(ok: bool, method: &Method, s: &NodeStatus) -> Response {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if *method == Method::GET {
        (code, Json(patroni_json(s))).into_response()
    } else {
        code.into_response()
    }
}

fn is_leader(s: &NodeStatus) -> bool {
    s.running && s.role == Role::Primary && s.holds_leader
}

fn is_running_replica(s: &NodeStatus) -> bool {
    s.running && s.role == Role::Replica
}

async fn primary(State(st): State<SharedStatus>, method: Method) -> Response {
    let s = st.get();
    answer(is_leader(&s), &method, &s)
}

async fn replica(State(st): State<SharedStatus>, method: Method, Query(q): Params) -> Response {
    let s = st.get();
    let mut ok = is_running_replica(&s) && !s.tags.noloadbalance;
    if let Some(max) = q.get("lag") {
        ok &= match (parse_size(max), s.lag_bytes()) {
            (Some(max), Some(lag)) => lag <= max,
            // An unparseable limit or unknown lag cannot be vouched for.
            _ => false,
        };
    }
    answer(ok, &method, &s)
}

async fn read_only(State(st): State<SharedStatus>, method: Method) -> Response {
    let s = st.get();
    answer(is_leader(&s) || is_running_replica(&s), &method, &s)
}

/// A running replica the `sync` key names, in synchronous mode `mode`: a synchronous
/// standby under `on`, a quorum standby under `quorum`.
pub(crate) fn named_in_sync_key(s: &NodeStatus, mode: SynchronousMode) -> bool {
    s.ha.synchronous_mode == mode
        && is_running_replica(s)
        && s.cluster
            .as_ref()
            .is_some_and(|c| crate::decide::key_members(c).contains(&s.name))
}

async fn sync(State(st): State<SharedStatus>, method: Method) -> Response {
    let s = st.get();
    answer(named_in_sync_key(&s, SynchronousMode::On), &method, &s)
}

async fn quorum(State(st): State<SharedStatus>, method: Method) -> Response {
    let s = st.get();
    answer(named_in_sync_key(&s, SynchronousMode::Quorum), &method, &s)
}

async fn read_only_sync(State(st): State<SharedStatus>, method: Method) -> Response {
    let s = st.get();
    let ok = is_leader(&s) || named_in_sync_key(&s, SynchronousMode::On);
    answer(ok, &method, &s)
}

async fn read_only_quorum(State(st): State<SharedStatus>, method: Method) -> Response {
    let s = st.get();
    let ok = is_leader(&s) || named_in_sync_key(&s, SynchronousMode::Quorum);
    answer(ok, &method, &s)
}

async fn asynchronous(State(st): State<SharedStatus>, method: Method) -> Response {
    let s = st.get();
    let named = named_in_sync_key(&s, SynchronousMode::On)
        || named_in_sync_key(&s, SynchronousMode::Quorum);
    answer(is_running_replica(&s) && !named, &method, &s)
}

async fn health(State(st): State<SharedStatus>, method: Method) -> Response {
    let s = st.get();
    answer(s.running, &method, &s)
}

/// The HA loop itself is alive: it finished a tick within the last ttl.
async fn liveness(State(st): State<SharedStatus>, method: Method) -> Response {
    let s = st.get();
    let ttl = Duration::from_millis(s.ha.ttl.max(1_000));
    let alive = s.last_tick.is_some_and(|t| t.elapsed() <= ttl);
    let code = if alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if method == Method::GET {
        (code, Json(json!({}))).into_response()
    } else {
        code.into_response()
    }
}

/// Ready for traffic: the leader, or a running replica within the failover lag limit.
async fn readiness(State(st): State<SharedStatus>, method: Method) -> Response {
    let s = st.get();
    let within_lag = s
        .lag_bytes()
        .is_none_or(|lag| lag <= s.ha.maximum_lag_on_failover);
    answer(
        is_leader(&s) || (is_running_replica(&s) && within_lag),
        &method,
        &s,
    )
}

async fn patroni(State(st): State<SharedStatus>) -> Json<Value> {
    Json(patroni_json(&st.get()))
}

/// Patroni's `GET /patroni` body.
pub fn patroni_json(s: &NodeStatus) -> Value {
    let mut j = json!({
        "state": if s.running { "running" } else { s.state.as_str() },
        "role": s.role.as_str(),
        "patroni": {"version": env!("CARGO_PKG_VERSION"), "scope": s.scope, "name": s.name},
    });
    // `json!({...})` above is an object literal: this cannot fail.
    let o = j.as_object_mut().expect("json! object");
    if let Some(v) = s.server_version {
        o.insert("server_version".into(), json!(v));
    }
    if let Some(t) = &s.postmaster_start_time {
        o.insert("postmaster_start_time".into(), json!(t));
    }
    if let Some(t) = s.timeline {
        o.insert("timeline".into(), json!(t));
    }
    if s.running {
        let xlog = if s.in_recovery {
            json!({"received_location": s.receive_lsn.or(s.wal_lsn),
                   "replayed_location": s.replay_lsn.or(s.wal_lsn),
                   "replayed_timestamp": null, "paused": false})
        } else {
            json!({"location": s.wal_lsn})
        };
        o.insert("xlog".into(), xlog);
        if s.in_recovery && s.state == "streaming" {
            o.insert("replication_state".into(), json!("streaming"));
        }
    }
    if !s.replication.is_empty() {
        let rows: Vec<Value> = s
            .replication
            .iter()
            .map(|r| {
                json!({"usename": r.usename, "application_name": r.application_name,
                       "client_addr": r.client_addr, "state": r.state,
                       "sync_state": r.sync_state, "sync_priority": 0})
            })
            .collect();
        o.insert("replication".into(), json!(rows));
    }
    if let Some(seen) = s.dcs_last_seen {
        let secs = seen
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        o.insert("dcs_last_seen".into(), json!(secs));
    }
    if let Some(id) = &s.system_identifier {
        o.insert("database_system_identifier".into(), json!(id));
    }
    if s.cluster.as_ref().is_some_and(|c| c.leader.is_none()) {
        o.insert("cluster_unlocked".into(), json!(true));
    }
    if named_in_sync_key(s, SynchronousMode::On) {
        o.insert("sync_standby".into(), json!(true));
    }
    if named_in_sync_key(s, SynchronousMode::Quorum) {
        o.insert("quorum_standby".into(), json!(true));
    }
    if s.ha.paused {
        o.insert("pause".into(), json!(true));
    }
    if failsafe_is_active(s) {
        o.insert("failsafe_mode_is_active".into(), json!(true));
    }
    if s.pending_restart {
        o.insert("pending_restart".into(), json!(true));
    }
    if s.promotion_vetoed {
        o.insert("pre_promote_vetoed".into(), json!(true));
    }
    if let Some(why) = &s.last_request_dropped {
        o.insert("last_request_dropped".into(), json!(why));
    }
    if !s.tags.is_default() {
        o.insert("tags".into(), json!(s.tags));
    }
    j
}

async fn cluster(State(st): State<SharedStatus>) -> Response {
    let s = st.get();
    match &s.cluster {
        Some(c) => Json(cluster_json(&s.scope, c)).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "the DCS has not been read yet"})),
        )
            .into_response(),
    }
}

/// Patroni's `GET /cluster` body; also what `pgherd ctl list` prints.
pub fn cluster_json(scope: &str, c: &pgherd_dcs::Cluster) -> Value {
    let leader = c.leader_name();
    let leader_lsn = c.status.as_ref().map(|s| s.optime).or_else(|| {
        leader
            .and_then(|l| c.member(l))
            .and_then(|m| m.data.xlog_location)
    });
    let sync = crate::decide::key_members(c);
    let sync_role = match dynamic::synchronous_mode_of(c) {
        SynchronousMode::Off => "replica",
        SynchronousMode::On => "sync_standby",
        SynchronousMode::Quorum => "quorum_standby",
    };
    let members: Vec<Value> = c
        .members
        .iter()
        .map(|m| {
            let is_leader = Some(m.name.as_str()) == leader;
            let (host, port) = crate::runner::parse_conn_url(&m.data.conn_url).unwrap_or_default();
            let role = match (is_leader, sync.contains(&m.name)) {
                (true, _) => "leader",
                (false, true) => sync_role,
                (false, false) => "replica",
            };
            let mut v = json!({
                "name": m.name,
                "role": role,
                "state": m.data.state,
                "api_url": m.data.api_url,
                "host": host,
                "port": port,
            });
            if let Some(t) = m.data.timeline {
                v["timeline"] = json!(t);
            }
            if !is_leader {
                v["lag"] = match (leader_lsn, m.data.xlog_location) {
                    (Some(l), Some(x)) => json!(l.saturating_sub(x)),
                    _ => json!("unknown"),
                };
            }
            if !m.data.tags.is_default() {
                v["tags"] = json!(m.data.tags);
            }
            v
        })
        .collect();
    let mut out = json!({"members": members, "scope": scope});
    if c.config
        .as_ref()
        .and_then(|cfg| cfg.value.get("pause"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        out["pause"] = json!(true);
    }
    out
}

async fn history(State(st): State<SharedStatus>) -> Json<Value> {
    let s = st.get();
    let h = s.cluster.map(|c| c.history).unwrap_or_default();
    Json(json!(h))
}

/// pgherd's own: the PostgreSQL parameters this member last wrote, each with its value
/// and where it came from (`default`, `cluster`, `local`).
async fn effective_config(State(st): State<SharedStatus>) -> Json<Value> {
    let s = st.get();
    let params: serde_json::Map<String, Value> = s
        .parameters
        .iter()
        .map(|(k, (v, source))| (k.clone(), json!({"value": v, "source": source})))
        .collect();
    let settings: serde_json::Map<String, Value> = s
        .ha_settings
        .iter()
        .map(|(k, v, source)| (k.to_string(), json!({"value": v, "source": source})))
        .collect();
    Json(json!({"member": s.name, "settings": settings, "parameters": params}))
}

async fn config(State(st): State<SharedStatus>) -> Response {
    let s = st.get();
    match s.cluster.and_then(|c| c.config) {
        Some(cfg) => Json(cfg.value).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "no dynamic configuration in the DCS"})),
        )
            .into_response(),
    }
}

/// Why a mutating request was not carried out: its status code and message.
struct Refusal {
    code: StatusCode,
    message: String,
}

fn refuse(code: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut r = (self.code, Json(json!({"error": self.message}))).into_response();
        if self.code == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"Patroni\""),
            );
        }
        r
    }
}

/// The control of a request that may change the cluster: 401 (with Patroni's realm)
/// without the right basic-auth credentials, 503 on a member that has none.
fn authorized<'a>(api: &'a ApiState, headers: &HeaderMap) -> Result<&'a Control, Refusal> {
    let Some(control) = &api.control else {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this member's API cannot change the cluster",
        ));
    };
    let Some(auth) = &control.auth else {
        return Ok(control);
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .unwrap_or_default();
    let expected = format!("{}:{}", auth.username, auth.password);
    if same_bytes(&given, expected.as_bytes()) {
        Ok(control)
    } else {
        Err(refuse(StatusCode::UNAUTHORIZED, "authentication required"))
    }
}

/// Equal, in a time that does not depend on where the first difference is.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A request body that must be a JSON object.
/// Failsafe mode is at work: on the primary, it runs on without the DCS; on a replica,
/// the primary confirmed itself to us less than a ttl ago.
pub fn failsafe_is_active(s: &NodeStatus) -> bool {
    let heard = s
        .failsafe_heard
        .as_ref()
        .is_some_and(|(_, at)| at.elapsed() < Duration::from_millis(s.ha.ttl));
    s.ha.failsafe_mode && (s.failsafe_active || heard)
}

/// `GET /failsafe`: the members of the `failsafe` key (502 when failsafe mode is off).
async fn get_failsafe(State(st): State<SharedStatus>) -> Response {
    let s = st.get();
    if !s.ha.failsafe_mode {
        return refuse(StatusCode::BAD_GATEWAY, "failsafe_mode is not enabled").into_response();
    }
    let members = s.cluster.as_ref().and_then(|c| c.failsafe.clone());
    Json(json!(members.unwrap_or_default())).into_response()
}

/// `POST /failsafe`: a primary that cannot reach the DCS asks us to accept it. A replica
/// answers `Accepted` (with its WAL position in the `lsn` header) and, for a ttl, does not
/// race for the leader key; a writable primary refuses with 500. It changes what this
/// member does, so it needs `restapi.authentication` when that is set.
async fn post_failsafe(State(api): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let s = api.status.get();
    if !s.ha.failsafe_mode {
        return refuse(StatusCode::BAD_GATEWAY, "failsafe_mode is not enabled").into_response();
    }
    if let Err(refusal) = authorized(&api, &headers) {
        if refusal.code == StatusCode::UNAUTHORIZED {
            return refusal.into_response();
        }
    }
    let request = match json_object(&body) {
        Ok(v) => v,
        Err(refusal) => return refusal.into_response(),
    };
    let Some(name) = request
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "`name` (the primary's member name) is required",
        )
        .into_response();
    };
    if s.running && !s.in_recovery {
        return (StatusCode::INTERNAL_SERVER_ERROR, "Running as a leader").into_response();
    }
    let name = name.to_string();
    api.status
        .update(|s| s.failsafe_heard = Some((name, std::time::Instant::now())));
    let lsn = s.receive_lsn.or(s.replay_lsn).or(s.wal_lsn).unwrap_or(0);
    (StatusCode::OK, [("lsn", lsn.to_string())], "Accepted").into_response()
}

fn json_object(body: &[u8]) -> Result<Value, Refusal> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        )),
        Err(e) => Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )),
    }
}

/// A config that pgherd would refuse to start with is not written: 400 naming each key.
/// Problems already in `before` (another tool wrote them) do not block an unrelated change.
fn checked(config: &Value, before: Option<&Value>) -> Result<(), Refusal> {
    let Err(problems) = dynamic::parse(config) else {
        return Ok(());
    };
    let known = before
        .and_then(|b| dynamic::parse(b).err())
        .unwrap_or_default();
    let list: Vec<String> = problems
        .iter()
        .filter(|p| !known.contains(p))
        .map(|p| {
            if p.path.is_empty() {
                p.message.clone()
            } else {
                format!("{}: {}", p.path, p.message)
            }
        })
        .collect();
    if list.is_empty() {
        return Ok(());
    }
    Err(refuse(
        StatusCode::BAD_REQUEST,
        format!("invalid configuration: {}", list.join("; ")),
    ))
}

fn dcs_down(what: &str, e: impl std::fmt::Display) -> Refusal {
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot {what} the DCS: {e}"),
    )
}

/// `PATCH /config`: merge the body into the `config` key with Patroni's rules (`null`
/// removes a key), by compare-and-set; answers the new config.
async fn patch_config(
    State(api): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Refusal> {
    let control = authorized(&api, &headers)?;
    let patch = json_object(&body)?;
    let cluster = control
        .dcs
        .get_cluster()
        .await
        .map_err(|e| dcs_down("read", e))?;
    let Some(current) = cluster.config else {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no dynamic configuration in the DCS",
        ));
    };
    let mut config = current.value.clone();
    if !dynamic::patch(&mut config, &patch) {
        return Ok(Json(config));
    }
    checked(&config, Some(&current.value))?;
    match control.dcs.set_config(&config, Some(current.version)).await {
        Ok(true) => Ok(Json(config)),
        Ok(false) => Err(refuse(
            StatusCode::CONFLICT,
            "the configuration was changed meanwhile; nothing was written",
        )),
        Err(e) => Err(dcs_down("write", e)),
    }
}

/// `PUT /config`: replace the `config` key with the body; answers it.
async fn put_config(
    State(api): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Refusal> {
    let control = authorized(&api, &headers)?;
    let config = json_object(&body)?;
    checked(&config, None)?;
    control
        .dcs
        .set_config(&config, None)
        .await
        .map_err(|e| dcs_down("write", e))?;
    Ok(Json(config))
}

/// `1048576`, `16MB`, `1 kB`, `1GB` → bytes (Patroni accepts these for `?lag=`).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::HaConfig;

    #[test]
    fn lag_limits_parse_like_patroni() {
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("1 kB"), Some(1024));
        assert_eq!(parse_size("abc"), None);
        assert_eq!(parse_size("5XB"), None);
    }

    #[test]
    fn a_standby_still_recovering_is_starting_not_running() {
        let mut s = NodeStatus::new(
            "node2",
            "demo",
            String::new(),
            String::new(),
            HaConfig {
                ttl: 30_000,
                loop_wait: 10_000,
                retry_timeout: 10_000,
                maximum_lag_on_failover: 1 << 20,
                use_pg_rewind: true,
                use_slots: true,
                paused: false,
                synchronous_mode: crate::decide::SynchronousMode::Off,
                synchronous_mode_strict: false,
                synchronous_node_count: 1,
                member_slots_ttl: 1_800_000,
                primary_start_timeout: 300_000,
                failsafe_mode: false,
            },
            Default::default(),
        );
        s.role = Role::Replica;
        s.state = "starting".into();
        let body = patroni_json(&s);
        assert_eq!(body["state"], "starting");
        assert!(body.get("xlog").is_none(), "{body}");
        assert!(!is_running_replica(&s));
    }
}
