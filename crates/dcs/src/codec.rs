//! Encoding values for the store and decoding one snapshot of a cluster's keys, shared by
//! both backends so they agree byte for byte on what Patroni reads and writes.

use crate::keys::KeyLayout;
use crate::{Cluster, DcsError, Member, MemberData, Pooler, PoolerState, Result, Versioned};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;

/// One key as read from the store.
pub(crate) struct RawKv<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub mod_revision: i64,
}

/// JSON for a value stored under `key`.
pub(crate) fn to_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| DcsError::InvalidValue {
        key: key.to_string(),
        reason: format!("cannot encode: {e}"),
    })
}

fn text<'a>(key: &str, value: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(value).map_err(|e| DcsError::InvalidValue {
        key: key.to_string(),
        reason: format!("not UTF-8: {e}"),
    })
}

fn json<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| DcsError::InvalidValue {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Builds a [`Cluster`] from every key under the cluster's prefix. Keys we do not know
/// (other tools, other Patroni versions) are ignored. A broken member key is skipped with
/// a warning so one bad member cannot blind the others; any other bad key is an error.
pub(crate) fn parse_cluster<'a>(
    keys: &KeyLayout,
    kvs: impl IntoIterator<Item = RawKv<'a>>,
) -> Result<Cluster> {
    let mut c = Cluster::default();
    let prefix = keys.prefix();
    for kv in kvs {
        let Ok(key) = std::str::from_utf8(kv.key) else {
            tracing::warn!(key = ?String::from_utf8_lossy(kv.key), "ignoring a DCS key that is not UTF-8");
            continue;
        };
        let Some(rel) = key.strip_prefix(prefix) else {
            continue;
        };
        let version = kv.mod_revision;
        match rel {
            "leader" => {
                c.leader = Some(Versioned {
                    value: text(key, kv.value)?.trim().to_string(),
                    version,
                })
            }
            "initialize" => c.initialize = Some(text(key, kv.value)?.trim().to_string()),
            "config" => {
                c.config = Some(Versioned {
                    value: json(key, kv.value)?,
                    version,
                })
            }
            "history" => {
                // Patroni may leave the key empty before the first promotion.
                if !kv.value.iter().all(u8::is_ascii_whitespace) {
                    c.history = json(key, kv.value)?;
                }
            }
            "failover" => {
                if !kv.value.iter().all(u8::is_ascii_whitespace) {
                    c.failover = Some(Versioned {
                        value: json(key, kv.value)?,
                        version,
                    })
                }
            }
            "sync" => {
                c.sync = Some(Versioned {
                    value: json(key, kv.value)?,
                    version,
                })
            }
            "status" => c.status = Some(json(key, kv.value)?),
            "failsafe" => {
                // Patroni discards a failsafe topology it cannot read; so do we.
                match serde_json::from_slice::<BTreeMap<String, String>>(kv.value) {
                    Ok(members) => c.failsafe = Some(members),
                    Err(e) => {
                        tracing::warn!(key, error = %e, "ignoring a failsafe key that does not parse")
                    }
                }
            }
            _ if rel.starts_with("poolers/") => {
                let id = &rel["poolers/".len()..];
                if id.is_empty() || id.contains('/') {
                    continue;
                }
                match serde_json::from_slice::<PoolerState>(kv.value) {
                    Ok(state) => c.poolers.push(Pooler {
                        id: id.to_string(),
                        state,
                    }),
                    Err(e) => {
                        tracing::warn!(key, error = %e, "skipping a pooler key that does not parse")
                    }
                }
            }
            _ => {
                let Some(name) = rel.strip_prefix("members/") else {
                    continue;
                };
                if name.is_empty() || name.contains('/') {
                    continue;
                }
                match serde_json::from_slice::<MemberData>(kv.value) {
                    Ok(data) => c.members.push(Member {
                        name: name.to_string(),
                        data,
                    }),
                    Err(e) => {
                        tracing::warn!(key, error = %e, "skipping a member key that does not parse")
                    }
                }
            }
        }
    }
    c.members.sort_by(|a, b| a.name.cmp(&b.name));
    c.poolers.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv<'a>(key: &'a str, value: &'a str, rev: i64) -> RawKv<'a> {
        RawKv {
            key: key.as_bytes(),
            value: value.as_bytes(),
            mod_revision: rev,
        }
    }

    #[test]
    fn patroni_snapshot_parses() {
        let k = KeyLayout::new("/service", "pg");
        let c = parse_cluster(
            &k,
            vec![
                kv("/service/pg/leader", "node1", 7),
                kv("/service/pg/initialize", "7234567890123456789", 2),
                kv("/service/pg/config", r#"{"ttl":30,"loop_wait":10}"#, 3),
                kv(
                    "/service/pg/members/node2",
                    r#"{"conn_url":"postgres://h2:5432/postgres","api_url":"http://h2:8008/patroni","state":"streaming","role":"replica"}"#,
                    9,
                ),
                kv(
                    "/service/pg/members/node1",
                    r#"{"conn_url":"postgres://h1:5432/postgres","api_url":"http://h1:8008/patroni","state":"running","role":"primary"}"#,
                    8,
                ),
                kv("/service/pg/history", r#"[[1,25165984,"no recovery target specified","2024-01-01T00:00:00+00:00","node1"]]"#, 4),
                kv("/service/pg/failover", r#"{"leader":"node1","member":"node2"}"#, 5),
                kv("/service/pg/sync", r#"{"leader":"node1","sync_standby":"node2"}"#, 6),
                kv("/service/pg/status", r#"{"optime":67108960}"#, 10),
                kv("/service/pg/optime/leader", "67108960", 11),
            ],
        )
        .unwrap();
        assert_eq!(c.leader_name(), Some("node1"));
        assert_eq!(c.leader.as_ref().unwrap().version, 7);
        assert_eq!(c.initialize.as_deref(), Some("7234567890123456789"));
        assert_eq!(c.config.as_ref().unwrap().version, 3);
        assert_eq!(
            c.members
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>(),
            ["node1", "node2"]
        );
        assert_eq!(c.history.len(), 1);
        assert_eq!(
            c.failover.as_ref().unwrap().value.candidate.as_deref(),
            Some("node2")
        );
        assert_eq!(
            c.sync.as_ref().unwrap().value.sync_standby.as_deref(),
            Some("node2")
        );
        assert_eq!(c.status.as_ref().unwrap().optime, 67108960);
    }

    #[test]
    fn broken_member_is_skipped_but_broken_config_is_an_error() {
        let k = KeyLayout::new("/service", "pg");
        let c = parse_cluster(&k, vec![kv("/service/pg/members/bad", "{not json", 1)]).unwrap();
        assert!(c.members.is_empty());
        let err = parse_cluster(&k, vec![kv("/service/pg/config", "{not json", 1)]).unwrap_err();
        match err {
            DcsError::InvalidValue { key, .. } => assert_eq!(key, "/service/pg/config"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
