//! The cluster-wide dynamic configuration (the DCS `config` key, Patroni's JSON shape)
//! as the HA loop reads it.

use crate::decide::HaConfig;
use serde_json::Value;
use std::collections::BTreeMap;

/// The parts of the `config` key the agent acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Dynamic {
    pub ha: HaConfig,
    /// `postgresql.parameters`, values as PostgreSQL would read them.
    pub parameters: BTreeMap<String, String>,
}

/// Overlay the `config` key on `base`. Keys that are missing or of the wrong type keep
/// the base value (the CLI validates what it writes; another tool may write junk, and a
/// running cluster must not stop over it).
pub fn apply(base: &HaConfig, config: Option<&Value>) -> Dynamic {
    let mut ha = base.clone();
    let mut parameters = BTreeMap::new();
    let Some(config) = config else {
        return Dynamic { ha, parameters };
    };
    let secs = |key: &str| {
        config
            .get(key)
            .and_then(number)
            .map(|s| (s * 1000.0) as u64)
    };
    if let Some(v) = secs("ttl") {
        ha.ttl = v;
    }
    if let Some(v) = secs("loop_wait") {
        ha.loop_wait = v;
    }
    if let Some(v) = secs("retry_timeout") {
        ha.retry_timeout = v;
    }
    // An unsafe combination from the DCS is ignored as a whole: rule 1 depends on it.
    if ha.loop_wait + 2 * ha.retry_timeout > ha.ttl || ha.ttl == 0 {
        ha.ttl = base.ttl;
        ha.loop_wait = base.loop_wait;
        ha.retry_timeout = base.retry_timeout;
    }
    if let Some(v) = config.get("maximum_lag_on_failover").and_then(number) {
        ha.maximum_lag_on_failover = v as u64;
    }
    if let Some(v) = config.get("pause").and_then(boolean) {
        ha.paused = v;
    }
    if let Some(pg) = config.get("postgresql") {
        if let Some(v) = pg.get("use_pg_rewind").and_then(boolean) {
            ha.use_pg_rewind = v;
        }
        if let Some(v) = pg.get("use_slots").and_then(boolean) {
            ha.use_slots = v;
        }
        if let Some(Value::Object(params)) = pg.get("parameters") {
            for (k, v) in params {
                if let Some(s) = parameter_value(v) {
                    parameters.insert(k.clone(), s);
                }
            }
        }
    }
    Dynamic { ha, parameters }
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

/// A PostgreSQL parameter value as written in YAML/JSON.
pub fn parameter_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(true) => Some("on".into()),
        Value::Bool(false) => Some("off".into()),
        _ => None,
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|f: &f64| f.is_finite() && *f >= 0.0)
}

fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Some(true),
            "false" | "off" | "no" | "0" => Some(false),
            _ => None,
        },
        _ => None,
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
    fn unsafe_timings_from_the_dcs_are_ignored() {
        let d = apply(&base(), Some(&json!({"ttl": 10, "loop_wait": 10})));
        assert_eq!((d.ha.ttl, d.ha.loop_wait), (30_000, 10_000));
    }
}
