//! The cluster-wide dynamic configuration (`bootstrap.dcs`, and the DCS `config` key in
//! Patroni's JSON shape): its one parser, [`read`]. [`parse`] is the strict use of it
//! (a config file, `ctl edit-config`: every problem is an error naming its key), [`apply`]
//! the lenient one (the HA loop: a key that is missing or wrong keeps the member's own
//! value, since another tool may write junk and a running cluster must not stop over it).

use crate::decide::{HaConfig, SynchronousMode};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The dynamic configuration, typed, with Patroni's defaults for what is not set.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicConfig {
    /// Leader lease length (default 30 s).
    pub ttl: Duration,
    /// HA loop period (default 10 s).
    pub loop_wait: Duration,
    /// How long DCS and PostgreSQL operations are retried (default 10 s).
    pub retry_timeout: Duration,
    /// Bytes (default 1048576).
    pub maximum_lag_on_failover: u64,
    /// `false`, `true` or `quorum`.
    pub synchronous_mode: SynchronousMode,
    pub synchronous_mode_strict: bool,
    /// How many synchronous standbys (default 1).
    pub synchronous_node_count: u32,
    /// How long the leader keeps a vanished member's replication slot (default 30 min).
    pub member_slots_ttl: Duration,
    /// How long a crashed primary is restarted in place before its leader key is
    /// released for a failover (default 300 s; 0: release at once).
    pub primary_start_timeout: Duration,
    /// Maintenance mode.
    pub pause: bool,
    /// Patroni's `failsafe_mode`: without the DCS the leader stays primary while every
    /// member it last saw answers it (default false).
    pub failsafe_mode: bool,
    pub postgresql: DynamicPostgresql,
    /// Other keys (Patroni's `check_timeline`, `slots`, `standby_cluster`, ...): not
    /// interpreted, kept so they survive a round trip through the DCS.
    pub other: BTreeMap<String, Value>,
}

/// `postgresql` inside the dynamic configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicPostgresql {
    /// Default false.
    pub use_pg_rewind: bool,
    /// Default true.
    pub use_slots: bool,
    /// Values as PostgreSQL reads them (`true` → `on`, numbers as text).
    pub parameters: BTreeMap<String, String>,
    /// Other keys (`pg_hba`, `recovery_conf`, ...), kept as written.
    pub other: BTreeMap<String, Value>,
}

impl Default for DynamicPostgresql {
    fn default() -> Self {
        DynamicPostgresql {
            use_pg_rewind: false,
            use_slots: true,
            parameters: BTreeMap::new(),
            other: BTreeMap::new(),
        }
    }
}

impl Default for DynamicConfig {
    /// Patroni's defaults.
    fn default() -> Self {
        DynamicConfig {
            ttl: Duration::from_secs(30),
            loop_wait: Duration::from_secs(10),
            retry_timeout: Duration::from_secs(10),
            maximum_lag_on_failover: 1_048_576,
            synchronous_mode: SynchronousMode::Off,
            synchronous_mode_strict: false,
            synchronous_node_count: 1,
            member_slots_ttl: Duration::from_secs(1800),
            primary_start_timeout: Duration::from_secs(300),
            pause: false,
            failsafe_mode: false,
            postgresql: DynamicPostgresql::default(),
            other: BTreeMap::new(),
        }
    }
}

impl DynamicConfig {
    /// Patroni's JSON shape for the DCS `config` key. `pause` appears only when set, as
    /// Patroni writes it; keys kept in `other` are written back as they came.
    pub fn to_json(&self) -> Value {
        let mut pg = Map::new();
        for (k, v) in &self.postgresql.other {
            pg.insert(k.clone(), v.clone());
        }
        pg.insert("use_pg_rewind".into(), self.postgresql.use_pg_rewind.into());
        pg.insert("use_slots".into(), self.postgresql.use_slots.into());
        let params: Map<String, Value> = self
            .postgresql
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), parameter_json(v)))
            .collect();
        pg.insert("parameters".into(), Value::Object(params));

        let mut out = Map::new();
        for (k, v) in &self.other {
            out.insert(k.clone(), v.clone());
        }
        out.insert("ttl".into(), seconds_json(self.ttl));
        out.insert("loop_wait".into(), seconds_json(self.loop_wait));
        out.insert("retry_timeout".into(), seconds_json(self.retry_timeout));
        out.insert(
            "maximum_lag_on_failover".into(),
            self.maximum_lag_on_failover.into(),
        );
        out.insert("synchronous_mode".into(), self.synchronous_mode.to_json());
        out.insert(
            "synchronous_mode_strict".into(),
            self.synchronous_mode_strict.into(),
        );
        out.insert(
            "synchronous_node_count".into(),
            self.synchronous_node_count.into(),
        );
        out.insert(
            "member_slots_ttl".into(),
            seconds_json(self.member_slots_ttl),
        );
        out.insert(
            "primary_start_timeout".into(),
            seconds_json(self.primary_start_timeout),
        );
        if self.failsafe_mode {
            out.insert("failsafe_mode".into(), true.into());
        }
        if self.pause {
            out.insert("pause".into(), true.into());
        } else {
            out.remove("pause");
        }
        out.insert("postgresql".into(), Value::Object(pg));
        Value::Object(out)
    }
}

/// A key of the dynamic configuration that could not be read, and why. `path` is the
/// dotted key (`postgresql.use_slots`), empty for the whole config.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// The dynamic configuration as read: every interpreted key that is set and valid
/// (`None`: missing, null or wrong; the wrong ones are in `problems`), the keys kept as
/// written, and the problems.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Read {
    pub ttl: Option<Duration>,
    pub loop_wait: Option<Duration>,
    pub retry_timeout: Option<Duration>,
    pub maximum_lag_on_failover: Option<u64>,
    pub synchronous_mode: Option<SynchronousMode>,
    pub synchronous_mode_strict: Option<bool>,
    pub synchronous_node_count: Option<u32>,
    pub member_slots_ttl: Option<Duration>,
    pub primary_start_timeout: Option<Duration>,
    pub pause: Option<bool>,
    pub failsafe_mode: Option<bool>,
    pub use_pg_rewind: Option<bool>,
    pub use_slots: Option<bool>,
    pub parameters: BTreeMap<String, String>,
    /// Keys pgherd does not interpret, at the top and in `postgresql`.
    pub other: BTreeMap<String, Value>,
    pub pg_other: BTreeMap<String, Value>,
    pub problems: Vec<Problem>,
}

impl Read {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// The typed config: what was read, Patroni's defaults for the rest.
    pub fn config(&self) -> DynamicConfig {
        let d = DynamicConfig::default();
        DynamicConfig {
            ttl: self.ttl.unwrap_or(d.ttl),
            loop_wait: self.loop_wait.unwrap_or(d.loop_wait),
            retry_timeout: self.retry_timeout.unwrap_or(d.retry_timeout),
            maximum_lag_on_failover: self
                .maximum_lag_on_failover
                .unwrap_or(d.maximum_lag_on_failover),
            synchronous_mode: self.synchronous_mode.unwrap_or(d.synchronous_mode),
            synchronous_mode_strict: self
                .synchronous_mode_strict
                .unwrap_or(d.synchronous_mode_strict),
            synchronous_node_count: self
                .synchronous_node_count
                .unwrap_or(d.synchronous_node_count),
            member_slots_ttl: self.member_slots_ttl.unwrap_or(d.member_slots_ttl),
            primary_start_timeout: self
                .primary_start_timeout
                .unwrap_or(d.primary_start_timeout),
            pause: self.pause.unwrap_or(d.pause),
            failsafe_mode: self.failsafe_mode.unwrap_or(d.failsafe_mode),
            postgresql: DynamicPostgresql {
                use_pg_rewind: self.use_pg_rewind.unwrap_or(d.postgresql.use_pg_rewind),
                use_slots: self.use_slots.unwrap_or(d.postgresql.use_slots),
                parameters: self.parameters.clone(),
                other: self.pg_other.clone(),
            },
            other: self.other.clone(),
        }
    }
}

/// Read a dynamic configuration (a JSON object; null values count as not set).
pub fn read(value: &Value) -> Read {
    let mut r = Read::default();
    let Some(top) = mapping(&mut r, "", Some(value)) else {
        return r;
    };
    for (key, v) in top {
        if v.is_null() {
            continue;
        }
        match key.as_str() {
            "ttl" => r.ttl = seconds(&mut r, key, v, 2),
            "loop_wait" => r.loop_wait = seconds(&mut r, key, v, 1),
            "retry_timeout" => r.retry_timeout = seconds(&mut r, key, v, 1),
            "maximum_lag_on_failover" => {
                r.maximum_lag_on_failover = unsigned(&mut r, key, v, "bytes")
            }
            "synchronous_mode" => r.synchronous_mode = synchronous_mode(&mut r, key, v),
            "synchronous_mode_strict" => r.synchronous_mode_strict = boolean(&mut r, key, v),
            "synchronous_node_count" => {
                let n = unsigned(&mut r, key, v, "standbys");
                r.synchronous_node_count = match n.map(u32::try_from) {
                    Some(Ok(n)) if n >= 1 => Some(n),
                    Some(_) => {
                        r.problem(key, "must be at least 1");
                        None
                    }
                    None => None,
                };
            }
            "member_slots_ttl" => r.member_slots_ttl = seconds(&mut r, key, v, 0),
            // Patroni's older name for the same setting.
            "primary_start_timeout" | "master_start_timeout" => {
                r.primary_start_timeout = seconds(&mut r, key, v, 0)
            }
            "pause" => r.pause = boolean(&mut r, key, v),
            "failsafe_mode" => r.failsafe_mode = boolean(&mut r, key, v),
            "postgresql" => read_postgresql(&mut r, v),
            _ => {
                r.other.insert(key.clone(), v.clone());
            }
        }
    }
    r
}

fn read_postgresql(r: &mut Read, v: &Value) {
    let Some(pg) = mapping(r, "postgresql", Some(v)) else {
        return;
    };
    for (key, v) in pg {
        if v.is_null() {
            continue;
        }
        let path = format!("postgresql.{key}");
        match key.as_str() {
            "use_pg_rewind" => r.use_pg_rewind = boolean(r, &path, v),
            "use_slots" => r.use_slots = boolean(r, &path, v),
            "parameters" => {
                let Some(params) = mapping(r, &path, Some(v)) else {
                    continue;
                };
                for (name, v) in params {
                    let p = format!("{path}.{name}");
                    if let Some(text) = parameter(r, &p, v) {
                        r.parameters.insert(name.clone(), text);
                    }
                }
            }
            _ => {
                r.pg_other.insert(key.clone(), v.clone());
            }
        }
    }
}

/// Strict: the typed config, or every problem (with the timing rule of DESIGN §3.1).
pub fn parse(value: &Value) -> Result<DynamicConfig, Vec<Problem>> {
    let mut r = read(value);
    let timings_read = !r
        .problems
        .iter()
        .any(|p| ["ttl", "loop_wait", "retry_timeout"].contains(&p.path.as_str()));
    let config = r.config();
    // Only when all three are valid (or defaulted): otherwise the message would mislead.
    if timings_read && !timings_safe(&config) {
        r.problem(
            "",
            format!(
                "loop_wait ({}) + 2 * retry_timeout ({}) = {} must not exceed ttl ({}): a \
                 primary that cannot reach the DCS must demote before its leader lease expires",
                secs_text(config.loop_wait),
                secs_text(config.retry_timeout),
                secs_text(config.loop_wait + 2 * config.retry_timeout),
                secs_text(config.ttl),
            ),
        );
    }
    if r.problems.is_empty() {
        Ok(config)
    } else {
        Err(r.problems)
    }
}

fn timings_safe(c: &DynamicConfig) -> bool {
    c.loop_wait + 2 * c.retry_timeout <= c.ttl
}

/// The parts of the `config` key the agent acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Dynamic {
    pub ha: HaConfig,
    /// `postgresql.parameters`, values as PostgreSQL would read them.
    pub parameters: BTreeMap<String, String>,
}

/// The cluster's `synchronous_mode`, as its `config` key says (off when unset or invalid).
pub fn synchronous_mode_of(cluster: &pgherd_dcs::Cluster) -> SynchronousMode {
    cluster
        .config
        .as_ref()
        .and_then(|c| read(&c.value).synchronous_mode)
        .unwrap_or_default()
}

/// Lenient: overlay the `config` key on `base` (the member's own settings). A key that is
/// missing or wrong keeps the base value; timings that break the lease rule are ignored
/// as a whole, since rule 1 depends on them.
pub fn apply(base: &HaConfig, config: Option<&Value>) -> Dynamic {
    let Some(config) = config else {
        return Dynamic {
            ha: base.clone(),
            parameters: BTreeMap::new(),
        };
    };
    let r = read(config);
    let mut ha = base.clone();
    let set = |field: &mut u64, v: Option<Duration>| {
        if let Some(v) = v {
            *field = millis(v);
        }
    };
    set(&mut ha.ttl, r.ttl);
    set(&mut ha.loop_wait, r.loop_wait);
    set(&mut ha.retry_timeout, r.retry_timeout);
    if ha.loop_wait + 2 * ha.retry_timeout > ha.ttl || ha.ttl == 0 {
        ha.ttl = base.ttl;
        ha.loop_wait = base.loop_wait;
        ha.retry_timeout = base.retry_timeout;
    }
    ha.maximum_lag_on_failover = r
        .maximum_lag_on_failover
        .unwrap_or(base.maximum_lag_on_failover);
    ha.paused = r.pause.unwrap_or(base.paused);
    ha.failsafe_mode = r.failsafe_mode.unwrap_or(base.failsafe_mode);
    ha.synchronous_mode = r.synchronous_mode.unwrap_or(base.synchronous_mode);
    ha.synchronous_mode_strict = r
        .synchronous_mode_strict
        .unwrap_or(base.synchronous_mode_strict);
    ha.synchronous_node_count = r
        .synchronous_node_count
        .unwrap_or(base.synchronous_node_count);
    if let Some(t) = r.member_slots_ttl {
        ha.member_slots_ttl = millis(t);
    }
    if let Some(t) = r.primary_start_timeout {
        ha.primary_start_timeout = millis(t);
    }
    ha.use_pg_rewind = r.use_pg_rewind.unwrap_or(base.use_pg_rewind);
    ha.use_slots = r.use_slots.unwrap_or(base.use_slots);
    Dynamic {
        ha,
        parameters: r.parameters,
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------
// Values, with the messages every user of the parser shows.

fn mapping<'a>(r: &mut Read, path: &str, v: Option<&'a Value>) -> Option<&'a Map<String, Value>> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(other) => {
            let what = if path.is_empty() {
                "the document"
            } else {
                "this key"
            };
            r.problem(
                path,
                format!("expected a mapping for {what}, got {}", show(other)),
            );
            None
        }
    }
}

/// A value as shown in a message: strings quoted, scalars as written.
fn show(v: &Value) -> String {
    match v {
        Value::Null => "nothing".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// A boolean as Patroni and YAML write it: true/false, yes/no, on/off, 1/0 (every
/// boolean of a pgherd config file is read this way).
pub fn boolean_value(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Some(true),
            "false" | "no" | "off" | "0" => Some(false),
            _ => None,
        },
        Value::Number(n) => match n.as_u64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn boolean(r: &mut Read, path: &str, v: &Value) -> Option<bool> {
    let parsed = boolean_value(v);
    if parsed.is_none() {
        r.problem(path, format!("expected true or false, got {}", show(v)));
    }
    parsed
}

/// `synchronous_mode`: a boolean, or Patroni 4's `quorum`.
fn synchronous_mode(r: &mut Read, path: &str, v: &Value) -> Option<SynchronousMode> {
    if v.as_str()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("quorum"))
    {
        return Some(SynchronousMode::Quorum);
    }
    match boolean_value(v) {
        Some(true) => Some(SynchronousMode::On),
        Some(false) => Some(SynchronousMode::Off),
        None => {
            r.problem(
                path,
                format!("expected true, false or quorum, got {}", show(v)),
            );
            None
        }
    }
}

/// A non-negative number, from a number or a numeric string.
fn number(v: &Value) -> Option<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }?;
    (f.is_finite() && f >= 0.0).then_some(f)
}

/// A number of seconds, or a string with Patroni's units: `45`, `"45s"`, `"30min"`,
/// `"1h"`, `"1d"`, `"500ms"`.
fn seconds_value(v: &Value) -> Option<f64> {
    let Value::String(text) = v else {
        return number(v);
    };
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (amount, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return None,
    };
    number(&Value::String(amount.trim().to_string())).map(|f| f * scale)
}

/// Seconds, at least `min`.
fn seconds(r: &mut Read, path: &str, v: &Value, min: u64) -> Option<Duration> {
    // Durations up to ~31 years; beyond that is surely a mistake, and from_secs_f64
    // panics on overflow.
    let Some(d) = seconds_value(v)
        .filter(|f| *f < 1e9)
        .map(Duration::from_secs_f64)
    else {
        r.problem(
            path,
            format!("must be a number of seconds, got {}", show(v)),
        );
        return None;
    };
    if d < Duration::from_secs(min) {
        r.problem(
            path,
            format!("must be at least {min} seconds, got {}", secs_text(d)),
        );
        return None;
    }
    Some(d)
}

fn unsigned(r: &mut Read, path: &str, v: &Value, unit: &str) -> Option<u64> {
    let parsed = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    if parsed.is_none() {
        r.problem(path, format!("must be a number of {unit}, got {}", show(v)));
    }
    parsed
}

/// A PostgreSQL parameter value: any scalar, booleans as `on`/`off`.
fn parameter(r: &mut Read, path: &str, v: &Value) -> Option<String> {
    match v {
        Value::Bool(true) => Some("on".into()),
        Value::Bool(false) => Some("off".into()),
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => {
            r.problem(path, "expected a parameter value, got nothing");
            None
        }
        other => {
            r.problem(
                path,
                format!(
                    "expected a parameter value (string, number or boolean), got {}",
                    show(other)
                ),
            );
            None
        }
    }
}

/// Seconds as written: `30`, or `0.5`.
pub fn secs_text(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{}", d.as_secs_f64())
    }
}

fn seconds_json(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        d.as_secs().into()
    } else {
        serde_json::Number::from_f64(d.as_secs_f64())
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

/// A parameter value in JSON: integers as numbers (as Patroni stores them), the rest as
/// strings.
fn parameter_json(v: &str) -> Value {
    match v.parse::<i64>() {
        Ok(n) if n.to_string() == v => n.into(),
        _ => Value::String(v.to_string()),
    }
}

/// Parameters that must be the same on every member (a standby does not start with less
/// than its primary has, and `wal_level` and `track_commit_timestamp` shape the WAL it
/// replays): their value in the cluster's config wins over a member's own.
pub const CLUSTER_WIDE_PARAMETERS: &[&str] = &[
    "max_connections",
    "max_locks_per_transaction",
    "max_prepared_transactions",
    "max_wal_senders",
    "max_worker_processes",
    "track_commit_timestamp",
    "wal_level",
];

/// A member's effective HA settings (Patroni's names), each with where it comes from: the
/// cluster's `config` key when that is what applies, else the member's own file
/// (`bootstrap.dcs`) when it differs from pgherd's default, else the default. A value the
/// cluster sets but that is not applied (unsafe timings) shows the value that is.
pub fn ha_settings(
    defaults: &HaConfig,
    base: &HaConfig,
    effective: &HaConfig,
    config: Option<&Value>,
) -> Vec<(&'static str, Value, Source)> {
    let r = config.map(read).unwrap_or_default();
    let from_dcs = |v: Option<Duration>| v.map(seconds_json);
    type Field = fn(&HaConfig) -> Value;
    let rows: [(&'static str, Field, Option<Value>); 13] = [
        (
            "ttl",
            |h| seconds_json(Duration::from_millis(h.ttl)),
            from_dcs(r.ttl),
        ),
        (
            "loop_wait",
            |h| seconds_json(Duration::from_millis(h.loop_wait)),
            from_dcs(r.loop_wait),
        ),
        (
            "retry_timeout",
            |h| seconds_json(Duration::from_millis(h.retry_timeout)),
            from_dcs(r.retry_timeout),
        ),
        (
            "maximum_lag_on_failover",
            |h| h.maximum_lag_on_failover.into(),
            r.maximum_lag_on_failover.map(Value::from),
        ),
        ("pause", |h| h.paused.into(), r.pause.map(Value::from)),
        (
            "failsafe_mode",
            |h| h.failsafe_mode.into(),
            r.failsafe_mode.map(Value::from),
        ),
        (
            "synchronous_mode",
            |h| h.synchronous_mode.to_json(),
            r.synchronous_mode.map(SynchronousMode::to_json),
        ),
        (
            "synchronous_mode_strict",
            |h| h.synchronous_mode_strict.into(),
            r.synchronous_mode_strict.map(Value::from),
        ),
        (
            "synchronous_node_count",
            |h| h.synchronous_node_count.into(),
            r.synchronous_node_count.map(Value::from),
        ),
        (
            "member_slots_ttl",
            |h| seconds_json(Duration::from_millis(h.member_slots_ttl)),
            from_dcs(r.member_slots_ttl),
        ),
        (
            "primary_start_timeout",
            |h| seconds_json(Duration::from_millis(h.primary_start_timeout)),
            from_dcs(r.primary_start_timeout),
        ),
        (
            "postgresql.use_pg_rewind",
            |h| h.use_pg_rewind.into(),
            r.use_pg_rewind.map(Value::from),
        ),
        (
            "postgresql.use_slots",
            |h| h.use_slots.into(),
            r.use_slots.map(Value::from),
        ),
    ];
    rows.into_iter()
        .map(|(name, field, dcs)| {
            let value = field(effective);
            let source = if dcs.as_ref() == Some(&value) {
                Source::Cluster
            } else if value == field(base) && field(base) != field(defaults) {
                Source::Local
            } else {
                Source::Default
            };
            (name, value, source)
        })
        .collect()
}

/// Where a member's effective setting comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// pgherd's default for a replicating cluster.
    Default,
    /// The cluster's dynamic configuration (the DCS `config` key).
    Cluster,
    /// The member's own configuration file.
    Local,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Cluster => "cluster",
            Source::Local => "local",
        }
    }
}

/// A member's PostgreSQL parameters with where each comes from: `defaults`, then the
/// cluster's (`dcs`), then the member's own (`local`, as in Patroni), except that
/// [`CLUSTER_WIDE_PARAMETERS`] the cluster sets always come from it. Also returns the
/// local settings overruled that way.
pub fn merge_parameters(
    defaults: BTreeMap<String, String>,
    dcs: &BTreeMap<String, String>,
    local: &BTreeMap<String, String>,
) -> (BTreeMap<String, (String, Source)>, Vec<String>) {
    let mut params: BTreeMap<String, (String, Source)> = defaults
        .into_iter()
        .map(|(k, v)| (k, (v, Source::Default)))
        .collect();
    for (k, v) in dcs {
        params.insert(k.clone(), (v.clone(), Source::Cluster));
    }
    let mut overruled = Vec::new();
    for (name, value) in local {
        match dcs.get(name) {
            Some(cluster) if CLUSTER_WIDE_PARAMETERS.contains(&name.as_str()) => {
                if cluster != value {
                    overruled.push(name.clone());
                }
            }
            _ => {
                params.insert(name.clone(), (value.clone(), Source::Local));
            }
        }
    }
    (params, overruled)
}

/// Merge `patch` into `config` with Patroni's rules (its `PATCH /config` and
/// `patronictl edit-config --set`): an object merges key by key, recursively; `null`
/// removes the key; any other value replaces what was there. Returns whether `config`
/// changed.
pub fn patch(config: &mut Value, patch: &Value) -> bool {
    let Value::Object(changes) = patch else {
        if config != patch {
            *config = without_nulls(patch);
            return true;
        }
        return false;
    };
    if !config.is_object() {
        *config = Value::Object(Default::default());
    }
    let Value::Object(target) = config else {
        unreachable!("made an object above")
    };
    let mut changed = false;
    for (key, value) in changes {
        if value.is_null() {
            changed |= target.remove(key).is_some();
            continue;
        }
        if let (Value::Object(_), Some(existing @ Value::Object(_))) = (value, target.get_mut(key))
        {
            changed |= self::patch(existing, value);
            continue;
        }
        let new = without_nulls(value);
        if target.get(key) != Some(&new) {
            target.insert(key.clone(), new);
            changed = true;
        }
    }
    changed
}

/// `v` without the object keys whose value is `null` (a patch's "remove" has nothing to
/// remove in a value that is new).
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> HaConfig {
        HaConfig {
            ttl: 30_000,
            loop_wait: 10_000,
            retry_timeout: 10_000,
            maximum_lag_on_failover: 1 << 20,
            use_pg_rewind: false,
            use_slots: true,
            paused: false,
            synchronous_mode: SynchronousMode::Off,
            synchronous_mode_strict: false,
            synchronous_node_count: 1,
            member_slots_ttl: 1_800_000,
            primary_start_timeout: 300_000,
            failsafe_mode: false,
        }
    }

    #[test]
    fn patroni_config_key_overrides_timings_and_flags() {
        let d = apply(
            &base(),
            Some(
                &json!({"ttl": 10, "loop_wait": 2, "retry_timeout": "4", "pause": true,
                "postgresql": {"use_pg_rewind": true, "parameters": {"max_connections": 200, "hot_standby": "on"}}}),
            ),
        );
        assert_eq!(
            (d.ha.ttl, d.ha.loop_wait, d.ha.retry_timeout),
            (10_000, 2_000, 4_000)
        );
        assert!(d.ha.paused && d.ha.use_pg_rewind && d.ha.use_slots);
        assert_eq!(d.parameters["max_connections"], "200");
    }

    #[test]
    fn patch_merges_objects_replaces_values_and_null_removes() {
        let mut c = json!({"ttl": 30, "pause": true,
            "postgresql": {"use_slots": true, "parameters": {"max_connections": 100, "work_mem": "4MB"}}});
        let changed = patch(
            &mut c,
            &json!({"ttl": 20, "pause": null, "synchronous_mode": true,
                "postgresql": {"parameters": {"work_mem": null, "shared_buffers": "1GB"}},
                "slots": {"s1": {"type": "physical", "plugin": null}}}),
        );
        assert!(changed);
        assert_eq!(
            c,
            json!({"ttl": 20, "synchronous_mode": true, "slots": {"s1": {"type": "physical"}},
                "postgresql": {"use_slots": true,
                    "parameters": {"max_connections": 100, "shared_buffers": "1GB"}}})
        );
        // The same patch again changes nothing; removing what is absent neither.
        assert!(!patch(&mut c.clone(), &json!({"ttl": 20, "pause": null})));
        // A value replaces an object and an object a value.
        assert!(patch(&mut c, &json!({"slots": 1, "ttl": {"a": 1}})));
        assert_eq!(
            (c["slots"].clone(), c["ttl"].clone()),
            (json!(1), json!({"a": 1}))
        );
    }

    #[test]
    fn one_parser_strict_names_every_wrong_key_lenient_keeps_the_base_for_them() {
        let junk = json!({"ttl": "soon", "pause": "maybe", "loop_wait": 5,
            "postgresql": {"use_slots": [1], "parameters": {"work_mem": "8MB", "bad": {}}},
            "check_timeline": true});
        let problems = parse(&junk).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "pause",
                "postgresql.parameters.bad",
                "postgresql.use_slots",
                "ttl"
            ]
        );
        assert!(problems[3].message.contains(r#"got "soon""#));
        let d = apply(&base(), Some(&junk));
        assert_eq!((d.ha.ttl, d.ha.loop_wait), (30_000, 5_000));
        assert!(!d.ha.paused && d.ha.use_slots);
        assert_eq!(
            d.parameters.get("work_mem").map(String::as_str),
            Some("8MB")
        );
        assert!(!d.parameters.contains_key("bad"));
        // What is not interpreted is kept for the round trip.
        assert_eq!(read(&junk).config().other["check_timeline"], json!(true));
        let good = parse(&json!({"ttl": 20, "loop_wait": 5, "retry_timeout": 5})).unwrap();
        assert_eq!(parse(&good.to_json()).unwrap(), good);
    }

    #[test]
    fn cluster_wide_parameters_come_from_the_cluster_and_the_rest_from_the_member() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let (params, overruled) = merge_parameters(
            map(&[("wal_level", "replica"), ("max_connections", "100")]),
            &map(&[("max_connections", "200"), ("work_mem", "4MB")]),
            &map(&[
                ("max_connections", "50"),
                ("work_mem", "8MB"),
                ("wal_level", "logical"),
                ("shared_buffers", "1GB"),
            ]),
        );
        let values: BTreeMap<String, String> = params
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            values,
            map(&[
                ("max_connections", "200"),
                ("work_mem", "8MB"),
                ("wal_level", "logical"),
                ("shared_buffers", "1GB"),
            ])
        );
        let source = |k: &str| params[k].1;
        assert_eq!(source("max_connections"), Source::Cluster);
        assert_eq!(source("work_mem"), Source::Local);
        assert_eq!(source("wal_level"), Source::Local);
        // wal_level is not set in the cluster's config, so the member's own applies.
        assert_eq!(overruled, vec!["max_connections".to_string()]);
    }

    #[test]
    fn unsafe_timings_from_the_dcs_are_ignored() {
        let d = apply(&base(), Some(&json!({"ttl": 10, "loop_wait": 10})));
        assert_eq!((d.ha.ttl, d.ha.loop_wait), (30_000, 10_000));
    }

    #[test]
    fn ha_settings_say_where_each_value_comes_from() {
        let defaults = base();
        let local = HaConfig {
            ttl: 40_000,
            ..base()
        };
        let source = |config: Value, name: &str| {
            let effective = apply(&local, Some(&config)).ha;
            ha_settings(&defaults, &local, &effective, Some(&config))
                .into_iter()
                .find(|(n, _, _)| *n == name)
                .map(|(_, v, s)| (v, s))
                .unwrap()
        };
        let config = json!({"loop_wait": 5, "synchronous_mode": "quorum"});
        assert_eq!(source(config.clone(), "ttl"), (json!(40), Source::Local));
        assert_eq!(
            source(config.clone(), "loop_wait"),
            (json!(5), Source::Cluster)
        );
        assert_eq!(
            source(config.clone(), "synchronous_mode"),
            (json!("quorum"), Source::Cluster)
        );
        assert_eq!(
            source(config, "retry_timeout"),
            (json!(10), Source::Default)
        );
        // Unsafe timings in the cluster's config are not applied: the local ones are.
        assert_eq!(source(json!({"ttl": 5}), "ttl"), (json!(40), Source::Local));
    }
}
