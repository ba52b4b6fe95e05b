//! `SHOW STATS`, `SHOW STATS_TOTALS`, `SHOW STATS_AVERAGES`, `SHOW TOTALS`: counters
//! per database (numeric columns, as PgBouncer sends them). Averages are per second
//! (or per transaction/query for times) over the last `stats_period`.

use super::output::{int, text, Rows, Type};
use super::ADMIN_DATABASE;
use crate::pool::StatsSnapshot;
use crate::runtime::Runtime;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const STATS: &[(&str, Type)] = &[
    ("database", Type::Text),
    ("total_server_assignment_count", Type::Numeric),
    ("total_xact_count", Type::Numeric),
    ("total_query_count", Type::Numeric),
    ("total_received", Type::Numeric),
    ("total_sent", Type::Numeric),
    ("total_xact_time", Type::Numeric),
    ("total_query_time", Type::Numeric),
    ("total_wait_time", Type::Numeric),
    ("total_client_parse_count", Type::Numeric),
    ("total_server_parse_count", Type::Numeric),
    ("total_bind_count", Type::Numeric),
    ("avg_server_assignment_count", Type::Numeric),
    ("avg_xact_count", Type::Numeric),
    ("avg_query_count", Type::Numeric),
    ("avg_recv", Type::Numeric),
    ("avg_sent", Type::Numeric),
    ("avg_xact_time", Type::Numeric),
    ("avg_query_time", Type::Numeric),
    ("avg_wait_time", Type::Numeric),
    ("avg_client_parse_count", Type::Numeric),
    ("avg_server_parse_count", Type::Numeric),
    ("avg_bind_count", Type::Numeric),
];

const TOTALS: &[(&str, Type)] = &[
    ("database", Type::Text),
    ("server_assignment_count", Type::Numeric),
    ("xact_count", Type::Numeric),
    ("query_count", Type::Numeric),
    ("bytes_received", Type::Numeric),
    ("bytes_sent", Type::Numeric),
    ("xact_time", Type::Numeric),
    ("query_time", Type::Numeric),
    ("wait_time", Type::Numeric),
    ("client_parse_count", Type::Numeric),
    ("server_parse_count", Type::Numeric),
    ("bind_count", Type::Numeric),
];

// PgBouncer's own (inconsistent) names for the last three.
const AVERAGES: &[(&str, Type)] = &[
    ("database", Type::Text),
    ("server_assignment_count", Type::Numeric),
    ("xact_count", Type::Numeric),
    ("query_count", Type::Numeric),
    ("bytes_received", Type::Numeric),
    ("bytes_sent", Type::Numeric),
    ("xact_time", Type::Numeric),
    ("query_time", Type::Numeric),
    ("wait_time", Type::Numeric),
    ("avg_client_parse_count", Type::Numeric),
    ("avg_server_parse_count", Type::Numeric),
    ("avg_bind_count", Type::Numeric),
];

/// Per database: (current totals, the period's baseline, seconds since the baseline).
struct DbStats {
    now: StatsSnapshot,
    then: StatsSnapshot,
    elapsed: Duration,
}

fn per_database(rt: &Runtime) -> BTreeMap<String, DbStats> {
    let period = rt.config().settings.stats_period;
    let mut out: BTreeMap<String, DbStats> = BTreeMap::new();
    let started = Instant::now();
    for pool in rt.pools() {
        let (at, then) = pool.stats_baseline(period);
        let now = pool.snapshot();
        let e = out
            .entry(pool.key.database.clone())
            .or_insert_with(|| DbStats {
                now: StatsSnapshot::default(),
                then: StatsSnapshot::default(),
                elapsed: Duration::ZERO,
            });
        e.now = StatsSnapshot::total([&e.now, &now]);
        e.then = StatsSnapshot::total([&e.then, &then]);
        e.elapsed = e.elapsed.max(started.duration_since(at));
    }
    out.entry(ADMIN_DATABASE.to_string()).or_insert(DbStats {
        now: StatsSnapshot::default(),
        then: StatsSnapshot::default(),
        elapsed: Duration::ZERO,
    });
    out
}

fn totals_row(s: &StatsSnapshot) -> Vec<Option<String>> {
    vec![
        int(s.server_assignment_count),
        int(s.xact_count),
        int(s.query_count),
        int(s.bytes_received),
        int(s.bytes_sent),
        int(s.xact_time_us),
        int(s.query_time_us),
        int(s.wait_time_us),
        int(0),
        int(0),
        int(0),
    ]
}

/// PgBouncer's `calc_average`: rates per second; times per transaction, query, or
/// server assignment.
fn averages(d: &DbStats) -> StatsSnapshot {
    let us = d.elapsed.as_micros().max(1) as u64;
    let delta = |now: u64, then: u64| now.saturating_sub(then);
    let rate = |now: u64, then: u64| delta(now, then).saturating_mul(1_000_000) / us;
    let per = |num: u64, den: u64| num.checked_div(den).unwrap_or(0);
    let (n, t) = (&d.now, &d.then);
    let xacts = delta(n.xact_count, t.xact_count);
    let queries = delta(n.query_count, t.query_count);
    let assignments = delta(n.server_assignment_count, t.server_assignment_count);
    StatsSnapshot {
        server_assignment_count: rate(n.server_assignment_count, t.server_assignment_count),
        xact_count: rate(n.xact_count, t.xact_count),
        query_count: rate(n.query_count, t.query_count),
        bytes_received: rate(n.bytes_received, t.bytes_received),
        bytes_sent: rate(n.bytes_sent, t.bytes_sent),
        xact_time_us: per(delta(n.xact_time_us, t.xact_time_us), xacts),
        query_time_us: per(delta(n.query_time_us, t.query_time_us), queries),
        wait_time_us: per(delta(n.wait_time_us, t.wait_time_us), assignments),
    }
}

pub fn stats(rt: &Runtime) -> Rows {
    let mut rows = Rows::new(STATS);
    for (db, d) in per_database(rt) {
        let mut row = vec![text(db)];
        row.extend(totals_row(&d.now));
        row.extend(totals_row(&averages(&d)));
        rows.push(row);
    }
    rows
}

pub fn totals(rt: &Runtime) -> Rows {
    let mut rows = Rows::new(TOTALS);
    for (db, d) in per_database(rt) {
        let mut row = vec![text(db)];
        row.extend(totals_row(&d.now));
        rows.push(row);
    }
    rows
}

pub fn averages_rows(rt: &Runtime) -> Rows {
    let mut rows = Rows::new(AVERAGES);
    for (db, d) in per_database(rt) {
        let mut row = vec![text(db)];
        row.extend(totals_row(&averages(&d)));
        rows.push(row);
    }
    rows
}

/// `SHOW TOTALS`: the same over all databases, as name/value rows.
pub fn grand_totals(rt: &Runtime) -> Rows {
    let all = per_database(rt);
    let combined = DbStats {
        now: StatsSnapshot::total(all.values().map(|d| &d.now)),
        then: StatsSnapshot::total(all.values().map(|d| &d.then)),
        elapsed: all
            .values()
            .map(|d| d.elapsed)
            .max()
            .unwrap_or(Duration::ZERO),
    };
    let avg = averages(&combined);
    let mut rows = Rows::new(&[("name", Type::Text), ("value", Type::Numeric)]);
    for (prefix, s) in [("total", &combined.now), ("avg", &avg)] {
        for (name, v) in [
            ("server_assignment_count", s.server_assignment_count),
            ("xact_count", s.xact_count),
            ("query_count", s.query_count),
            ("client_bytes", s.bytes_received),
            ("server_bytes", s.bytes_sent),
            ("xact_time", s.xact_time_us),
            ("query_time", s.query_time_us),
            ("wait_time", s.wait_time_us),
            ("ps_client_parse_count", 0),
            ("ps_server_parse_count", 0),
            ("ps_bind_count", 0),
        ] {
            rows.push(vec![text(format!("{prefix}_{name}")), int(v)]);
        }
    }
    rows
}
