//! Prometheus metrics on an HTTP port (`metrics_listen`, `GET /metrics`).
//!
//! Almost everything is read at scrape time from what the admin console reads too: the
//! pools' counters ([`Pool::snapshot`], [`PoolStats`]), their server registries and the
//! runtime's client registry. Two things are recorded as they happen, by the layer
//! where they happen; this module only reads them:
//!
//! - the wait of each client for a server, in a histogram per pool
//!   ([`PoolStats::wait_histogram`], observed in [`Pool::acquire`]);
//! - errors of clients, by kind ([`ErrorKind`]), in a process-wide family kept in
//!   [`crate::client`] (a login failure happens before any pool exists).
//!
//! Every series is labelled by `database` and `user` (the pool's); labels only ever
//! take names from the configuration or of existing pools, so a client cannot create
//! series at will. The body is the Prometheus text format 0.0.4, or OpenMetrics text
//! when the scraper asks for it (`Accept: application/openmetrics-text`).
//!
//! [`Pool::snapshot`]: crate::pool::Pool::snapshot
//! [`Pool::acquire`]: crate::pool::Pool::acquire
//! [`PoolStats`]: crate::pool::PoolStats
//! [`PoolStats::wait_histogram`]: crate::pool::PoolStats::wait_histogram

pub use crate::client::ErrorKind;
use crate::client::{client_errors, ClientState};
use crate::pool::{Pool, PoolKey, ServerState};
use crate::runtime::Runtime;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, text, DescriptorEncoder, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::warn;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
struct PoolLabels {
    database: String,
    user: String,
}

impl PoolLabels {
    fn of(key: &PoolKey) -> Self {
        PoolLabels {
            database: key.database.clone(),
            user: key.user.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    database: String,
    user: String,
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    database: String,
    user: String,
    kind: &'static str,
}

/// The metrics of one runtime, computed when encoded.
struct Scrape(Arc<Runtime>);

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

/// One metric with a value per label set.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    rows: &[(L, M)],
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: Vec<(PoolLabels, ConstGauge<i64>)>,
) -> fmt::Result {
    family(enc, name, help, None, MetricType::Gauge, &rows)
}

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: Vec<(PoolLabels, ConstCounter<u64>)>,
) -> fmt::Result {
    family(enc, name, help, None, MetricType::Counter, &rows)
}

fn single(enc: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    let metric = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// Clients per pool and state, and the longest current wait (seconds).
#[derive(Default)]
struct ClientCounts {
    active: i64,
    waiting: i64,
    idle: i64,
    max_wait: f64,
}

/// Servers per state, as `SHOW POOLS` counts them.
fn server_counts(pool: &Pool) -> [(&'static str, i64); 4] {
    let limits = pool.limits();
    let (mut active, mut idle, mut used) = (0, 0, 0);
    for s in pool.servers() {
        match s.state {
            ServerState::Active => active += 1,
            // Idle past server_check_delay: checked before reuse (PgBouncer's "used").
            ServerState::Idle
                if limits.server_check_query.is_some()
                    && s.since.elapsed() >= limits.server_check_delay =>
            {
                used += 1
            }
            ServerState::Idle => idle += 1,
        }
    }
    let login = pool.stats.servers_connecting.load(Ordering::Relaxed) as i64;
    [
        ("active", active),
        ("idle", idle),
        ("used", used),
        ("login", login),
    ]
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let rt = &self.0;
        let config = rt.config();
        let mut pools = rt.pools();
        pools.sort_by(|a, b| a.key.cmp(&b.key));

        single(&mut enc, "pgherd_pooler_up", "1 while the pooler runs.", 1)?;
        let clients = rt.clients();
        single(
            &mut enc,
            "pgherd_pooler_max_client_conn",
            "Client connections allowed (max_client_conn).",
            i64::from(config.settings.max_client_conn),
        )?;
        single(
            &mut enc,
            "pgherd_pooler_client_connections",
            "Client connections open, logging in or logged in.",
            clients.len() as i64,
        )?;

        // Clients by pool: every pool is listed, with zeros, so series do not vanish.
        let mut by_pool: BTreeMap<PoolLabels, ClientCounts> = pools
            .iter()
            .map(|p| (PoolLabels::of(&p.key), ClientCounts::default()))
            .collect();
        let now = Instant::now();
        for c in &clients {
            let v = c.view();
            let (Some(database), Some(user)) = (v.database, v.user) else {
                continue;
            };
            let counts = by_pool.entry(PoolLabels { database, user }).or_default();
            match (v.state, v.link) {
                (ClientState::Login, _) => {}
                (ClientState::Waiting, _) => {
                    counts.waiting += 1;
                    if let Some(since) = v.waiting_since {
                        let waited = now.duration_since(since).as_secs_f64();
                        counts.max_wait = counts.max_wait.max(waited);
                    }
                }
                (ClientState::Active, Some(_)) => counts.active += 1,
                (ClientState::Active, None) => counts.idle += 1,
            }
        }
        let mut rows = Vec::new();
        for (labels, counts) in &by_pool {
            for (state, n) in [
                ("active", counts.active),
                ("waiting", counts.waiting),
                ("idle", counts.idle),
            ] {
                let labels = StateLabels {
                    database: labels.database.clone(),
                    user: labels.user.clone(),
                    state,
                };
                rows.push((labels, ConstGauge::new(n)));
            }
        }
        family(
            &mut enc,
            "pgherd_pooler_clients",
            "Clients by state: active (holding a server), waiting (for a server), idle.",
            None,
            MetricType::Gauge,
            &rows,
        )?;
        let maxwait: Vec<_> = by_pool
            .iter()
            .map(|(l, c)| (l.clone(), ConstGauge::new(c.max_wait)))
            .collect();
        family(
            &mut enc,
            "pgherd_pooler_client_maxwait",
            "How long the longest-waiting client has waited for a server so far.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            &maxwait,
        )?;

        let mut rows = Vec::new();
        for p in &pools {
            for (state, n) in server_counts(p) {
                let labels = StateLabels {
                    database: p.key.database.clone(),
                    user: p.key.user.clone(),
                    state,
                };
                rows.push((labels, ConstGauge::new(n)));
            }
        }
        family(
            &mut enc,
            "pgherd_pooler_servers",
            "Server connections by state: active (lent to a client), idle, used (idle, to be \
             checked before reuse), login (connecting).",
            None,
            MetricType::Gauge,
            &rows,
        )?;
        let per_pool = |f: &dyn Fn(&Pool) -> i64| -> Vec<(PoolLabels, ConstGauge<i64>)> {
            pools
                .iter()
                .map(|p| (PoolLabels::of(&p.key), ConstGauge::new(f(p))))
                .collect()
        };
        gauges(
            &mut enc,
            "pgherd_pooler_pool_size",
            "Server connections the pool may open (pool_size, without the reserve).",
            per_pool(&|p| p.limits().pool_size as i64),
        )?;
        gauges(
            &mut enc,
            "pgherd_pooler_route_held",
            "1 while a routed pool holds its clients: no member to route to (no primary, \
             the DCS unreadable) or a switchover drains it.",
            per_pool(&|p| i64::from(p.is_held())),
        )?;
        gauges(
            &mut enc,
            "pgherd_pooler_route_members",
            "Members a routed pool logs in to now (-1: a pool with fixed hosts).",
            per_pool(&|p| p.routed_endpoints().map_or(-1, |e| e.len() as i64)),
        )?;

        let rows: Vec<_> = pools
            .iter()
            .map(|p| (PoolLabels::of(&p.key), p.stats.wait_histogram.0.clone()))
            .collect();
        family(
            &mut enc,
            "pgherd_pooler_client_wait",
            "How long clients waited for a server (timed-out waits included).",
            Some(&Unit::Seconds),
            MetricType::Histogram,
            &rows,
        )?;

        // Cumulative counters, from the same snapshot SHOW STATS reads.
        let snapshots: Vec<_> = pools
            .iter()
            .map(|p| (PoolLabels::of(&p.key), p.snapshot()))
            .collect();
        let count = |f: &dyn Fn(&crate::pool::StatsSnapshot) -> u64| -> Vec<_> {
            snapshots
                .iter()
                .map(|(l, s)| (l.clone(), ConstCounter::new(f(s))))
                .collect()
        };
        counters(
            &mut enc,
            "pgherd_pooler_transactions",
            "Transactions run through the pool (SHOW STATS total_xact_count).",
            count(&|s| s.xact_count),
        )?;
        counters(
            &mut enc,
            "pgherd_pooler_queries",
            "Queries run through the pool (SHOW STATS total_query_count).",
            count(&|s| s.query_count),
        )?;
        counters(
            &mut enc,
            "pgherd_pooler_bytes_received",
            "Bytes received from clients (SHOW STATS total_received).",
            count(&|s| s.bytes_received),
        )?;
        counters(
            &mut enc,
            "pgherd_pooler_bytes_sent",
            "Bytes sent to clients (SHOW STATS total_sent).",
            count(&|s| s.bytes_sent),
        )?;
        counters(
            &mut enc,
            "pgherd_pooler_server_assignments",
            "Times a server was lent to a client (SHOW STATS total_server_assignment_count).",
            count(&|s| s.server_assignment_count),
        )?;
        let connects: Vec<_> = pools
            .iter()
            .map(|p| {
                let n = p.stats.server_connects.load(Ordering::Relaxed);
                (PoolLabels::of(&p.key), ConstCounter::new(n))
            })
            .collect();
        counters(
            &mut enc,
            "pgherd_pooler_server_connects",
            "Server connections opened (attempts, failed ones included).",
            connects,
        )?;

        // Every kind for every pool, at zero until it happens.
        let mut errors: BTreeMap<(String, String, &'static str), u64> = client_errors()
            .into_iter()
            .map(|((database, user, kind), n)| ((database, user, kind.as_str()), n))
            .collect();
        for p in &pools {
            let of_pool =
                |kind: ErrorKind| (p.key.database.clone(), p.key.user.clone(), kind.as_str());
            for kind in ErrorKind::ALL {
                errors.entry(of_pool(kind)).or_default();
            }
            let counted = [
                (ErrorKind::QueryWaitTimeout, &p.stats.wait_timeouts),
                (ErrorKind::ServerLoginFailed, &p.stats.server_login_failures),
            ];
            for (kind, n) in counted {
                *errors.entry(of_pool(kind)).or_default() += n.load(Ordering::Relaxed);
            }
        }
        let rows: Vec<_> = errors
            .into_iter()
            .map(|((database, user, kind), n)| {
                (
                    ErrorLabels {
                        database,
                        user,
                        kind,
                    },
                    ConstCounter::new(n),
                )
            })
            .collect();
        family(
            &mut enc,
            "pgherd_pooler_errors",
            "Errors by kind: login_failed, query_wait_timeout, server_login_failed, \
             server_lost (login_failed and server_lost counted for the whole process).",
            None,
            MetricType::Counter,
            &rows,
        )
    }
}

/// The `Content-Type` of [`render`]'s output.
pub fn content_type(openmetrics: bool) -> &'static str {
    if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        prometheus_text::CONTENT_TYPE
    }
}

/// The exposition of `rt`'s metrics: OpenMetrics text or Prometheus text 0.0.4.
pub fn render(rt: &Arc<Runtime>, openmetrics: bool) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(rt.clone())));
    let mut body = String::new();
    let encoded = if openmetrics {
        text::encode(&mut body, &registry)
    } else {
        prometheus_text::encode(&mut body, &registry)
    };
    if encoded.is_err() {
        // Writing to a String does not fail; an encoder error would be a bug.
        warn!("cannot encode metrics");
    }
    body
}

async fn scrape(State(rt): State<Arc<Runtime>>, headers: HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let body = render(&rt, openmetrics);
    ([(header::CONTENT_TYPE, content_type(openmetrics))], body)
}

/// Serve `GET /metrics` on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, rt: Arc<Runtime>, mut shutdown: watch::Receiver<bool>) {
    let app = Router::new().route("/metrics", get(scrape)).with_state(rt);
    let stopped = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = pgherd_http::serve(listener, app, stopped).await {
        warn!(error = %e, "metrics listener failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PoolerConfig, Userlist};

    #[test]
    fn an_idle_pooler_renders_both_formats() {
        let rt = Runtime::new(
            PoolerConfig::default(),
            Userlist::default(),
            None,
            crate::tls::TlsContexts::disabled(),
        );
        let text = render(&rt, false);
        assert!(text.starts_with("# HELP pgherd_pooler_up "), "{text}");
        assert!(text.contains("\npgherd_pooler_up 1\n"), "{text}");
        assert!(
            text.contains("\npgherd_pooler_max_client_conn 100\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE pgherd_pooler_errors_total counter\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        let om = render(&rt, true);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE pgherd_pooler_errors counter\n"), "{om}");
        assert!(om.contains("# UNIT pgherd_pooler_client_wait_seconds seconds\n"));
    }
}
