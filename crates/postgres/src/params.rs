//! PostgreSQL parameters: Patroni's defaults for a streaming-replication cluster, and
//! translation of parameters from other major versions for the running one.

use std::collections::BTreeMap;

/// Default WAL segment size in MB (what `wal_keep_segments` counts).
const WAL_SEGMENT_MB: u64 = 16;

/// Parameters that no longer exist, with the major version that removed them and what
/// to do instead. PostgreSQL refuses to start with an unknown name in postgresql.conf,
/// so these are dropped (with a note) or renamed.
const REMOVED: &[(&str, u32, Removed)] = &[
    (
        "checkpoint_segments",
        10,
        Removed::Drop("replaced by max_wal_size in 9.5"),
    ),
    (
        "custom_variable_classes",
        10,
        Removed::Drop("removed in 9.2"),
    ),
    ("silent_mode", 10, Removed::Drop("removed in 9.2")),
    (
        "max_standby_delay",
        10,
        Removed::Drop("replaced by max_standby_streaming_delay in 9.1"),
    ),
    (
        "replication_timeout",
        10,
        Removed::Rename("wal_sender_timeout"),
    ),
    (
        "unix_socket_directory",
        10,
        Removed::Rename("unix_socket_directories"),
    ),
    ("sql_inheritance", 10, Removed::Drop("removed in 10")),
    (
        "min_parallel_relation_size",
        10,
        Removed::Rename("min_parallel_table_scan_size"),
    ),
    (
        "replacement_sort_tuples",
        11,
        Removed::Drop("removed in 11"),
    ),
    (
        "standby_mode",
        12,
        Removed::Drop("removed in 12: standby.signal marks a standby"),
    ),
    (
        "operator_precedence_warning",
        14,
        Removed::Drop("removed in 14"),
    ),
    (
        "stats_temp_directory",
        15,
        Removed::Drop("removed in 15: statistics live in shared memory"),
    ),
    (
        "vacuum_defer_cleanup_age",
        16,
        Removed::Drop("removed in 16"),
    ),
    (
        "promote_trigger_file",
        16,
        Removed::Drop("removed in 16: use pg_ctl promote"),
    ),
    (
        "force_parallel_mode",
        16,
        Removed::Rename("debug_parallel_query"),
    ),
    ("old_snapshot_threshold", 17, Removed::Drop("removed in 17")),
    ("db_user_namespace", 17, Removed::Drop("removed in 17")),
    (
        "trace_recovery_messages",
        17,
        Removed::Drop("removed in 17"),
    ),
];

#[derive(Clone, Copy)]
enum Removed {
    Drop(&'static str),
    Rename(&'static str),
}

/// Parameters set at server start that PostgreSQL may not be told by `parameters`
/// because the instance manages them itself (file locations).
pub const UNSETTABLE: &[&str] = &[
    "config_file",
    "data_directory",
    "hba_file",
    "ident_file",
    "lc_collate",
    "lc_ctype",
];

/// Translate `params` (Patroni style, possibly written for another major version) for
/// PostgreSQL `major`. Returns the parameters to write and human-readable notes about
/// every change.
///
/// * 13+: `wal_keep_segments: N` becomes `wal_keep_size: N*16MB` unless `wal_keep_size`
///   is set; before 13 `wal_keep_size` becomes `wal_keep_segments` the other way round.
/// * names removed before `major` are dropped or renamed (see the table above).
pub fn translate_parameters(
    major: u32,
    params: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut notes = Vec::new();
    for (k, v) in params {
        let key = k.to_ascii_lowercase();
        if key == "wal_keep_segments" && major >= 13 {
            if params.contains_key("wal_keep_size") {
                notes.push(format!(
                    "dropped wal_keep_segments={v}: PostgreSQL {major} uses wal_keep_size, which is set"
                ));
            } else {
                match v.trim().parse::<u64>() {
                    Ok(n) => {
                        let size = format!("{}MB", n * WAL_SEGMENT_MB);
                        notes.push(format!(
                            "translated wal_keep_segments={n} to wal_keep_size={size} for PostgreSQL {major}"
                        ));
                        out.insert("wal_keep_size".to_string(), size);
                    }
                    Err(_) => notes.push(format!(
                        "dropped wal_keep_segments={v:?}: not a number of segments"
                    )),
                }
            }
            continue;
        }
        if key == "wal_keep_size" && major < 13 {
            if params.contains_key("wal_keep_segments") {
                notes.push(format!(
                    "dropped wal_keep_size={v}: PostgreSQL {major} uses wal_keep_segments, which is set"
                ));
            } else {
                match parse_size_mb(v) {
                    Some(mb) => {
                        let segs = mb.div_ceil(WAL_SEGMENT_MB);
                        notes.push(format!(
                            "translated wal_keep_size={v} to wal_keep_segments={segs} for PostgreSQL {major}"
                        ));
                        out.insert("wal_keep_segments".to_string(), segs.to_string());
                    }
                    None => notes.push(format!("dropped wal_keep_size={v:?}: not a size")),
                }
            }
            continue;
        }
        if let Some((_, since, what)) = REMOVED.iter().find(|(n, _, _)| *n == key) {
            if major >= *since {
                match what {
                    Removed::Drop(why) => {
                        notes.push(format!("dropped {k}={v}: {why}"));
                    }
                    Removed::Rename(new) => {
                        if params.contains_key(*new) {
                            notes.push(format!("dropped {k}={v}: {new} is set"));
                        } else {
                            notes.push(format!("renamed {k} to {new} for PostgreSQL {major}"));
                            out.insert(new.to_string(), v.clone());
                        }
                    }
                }
                continue;
            }
        }
        out.insert(k.clone(), v.clone());
    }
    (out, notes)
}

/// A size in MB from `128MB`, `1GB`, `512kB` or a bare number (MB, wal_keep_size's unit).
fn parse_size_mb(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mb = match unit.trim() {
        "" | "MB" => n,
        "kB" => n.div_ceil(1024),
        "GB" => n * 1024,
        "TB" => n * 1024 * 1024,
        _ => return None,
    };
    Some(mb)
}

/// What a streaming-replication cluster needs (Patroni's defaults). Apply user
/// parameters on top.
pub fn default_parameters() -> BTreeMap<String, String> {
    [
        ("wal_level", "replica"),
        ("hot_standby", "on"),
        ("max_connections", "100"),
        ("max_wal_senders", "10"),
        ("max_replication_slots", "10"),
        ("max_worker_processes", "8"),
        ("max_locks_per_transaction", "64"),
        ("max_prepared_transactions", "0"),
        ("track_commit_timestamp", "off"),
        // pg_rewind needs either this or data checksums.
        ("wal_log_hints", "on"),
        ("wal_keep_size", "128MB"),
        // Passwords set through pgherd are SCRAM verifiers; keep the server's the same.
        ("password_encryption", "scram-sha-256"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A value as a postgresql.conf string literal: single-quoted, `'` doubled and `\`
/// doubled (the config file parser treats backslash as an escape inside quotes).
pub fn quote_conf_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        match c {
            '\'' => s.push_str("''"),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            c => s.push(c),
        }
    }
    s.push('\'');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn wal_keep_segments_becomes_wal_keep_size_on_15() {
        let (out, notes) = translate_parameters(15, &map(&[("wal_keep_segments", "8")]));
        assert_eq!(out, map(&[("wal_keep_size", "128MB")]));
        assert_eq!(notes.len(), 1, "{notes:?}");
    }

    #[test]
    fn wal_keep_segments_is_kept_on_12() {
        let p = map(&[("wal_keep_segments", "8"), ("max_connections", "50")]);
        let (out, notes) = translate_parameters(12, &p);
        assert_eq!(out, p);
        assert!(notes.is_empty());
    }

    #[test]
    fn explicit_wal_keep_size_wins_over_wal_keep_segments() {
        let p = map(&[("wal_keep_segments", "8"), ("wal_keep_size", "1GB")]);
        let (out, _) = translate_parameters(15, &p);
        assert_eq!(out, map(&[("wal_keep_size", "1GB")]));
    }

    #[test]
    fn wal_keep_size_becomes_segments_before_13() {
        let (out, _) = translate_parameters(12, &map(&[("wal_keep_size", "1GB")]));
        assert_eq!(out, map(&[("wal_keep_segments", "64")]));
    }

    #[test]
    fn parameters_pg15_no_longer_knows_are_dropped_with_a_note() {
        let p = map(&[
            ("checkpoint_segments", "32"),
            ("stats_temp_directory", "/tmp/x"),
            ("shared_buffers", "128MB"),
        ]);
        let (out, notes) = translate_parameters(15, &p);
        assert_eq!(out, map(&[("shared_buffers", "128MB")]));
        assert_eq!(notes.len(), 2);
        assert!(notes.iter().any(|n| n.contains("checkpoint_segments")));
        // Still known on 14.
        let (out14, _) = translate_parameters(14, &p);
        assert!(out14.contains_key("stats_temp_directory"));
    }

    #[test]
    fn defaults_translate_cleanly_for_15() {
        let (out, notes) = translate_parameters(15, &default_parameters());
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(out["wal_log_hints"], "on");
    }

    #[test]
    fn conf_values_are_quoted() {
        assert_eq!(quote_conf_value("on"), "'on'");
        assert_eq!(quote_conf_value("it's"), "'it''s'");
        assert_eq!(quote_conf_value(r"a\b"), r"'a\\b'");
    }
}
