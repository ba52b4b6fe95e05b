//! `PATRONI_*` environment variables, with Patroni's names and meanings: each one
//! overrides one key of the config file, so that passwords (and anything else) need not
//! sit in the YAML file. Without a file, `PATRONI_CONFIGURATION` holds the whole YAML.
//!
//! The overrides are built as a YAML tree and merged over the file's before validation,
//! so an overridden value is checked like one written in the file. Values are never
//! put in messages: only the variables' names.

use yaml_serde::{Mapping, Value};

pub const PREFIX: &str = "PATRONI_";

/// The whole config, used when no file is given.
pub const CONFIGURATION: &str = "PATRONI_CONFIGURATION";

/// What the environment sets.
#[derive(Debug, Default)]
pub struct Overrides {
    /// The keys set, as a tree to merge over the file's.
    pub tree: Mapping,
    /// `(variable, key path)` for each one used.
    pub applied: Vec<(String, String)>,
    /// `PATRONI_*` variables that name no setting.
    pub unknown: Vec<String>,
}

/// libpq connection parameters Patroni takes for its PostgreSQL roles.
const AUTH_PARAMETERS: [&str; 11] = [
    "username",
    "password",
    "sslmode",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "gssencmode",
    "channel_binding",
];

/// Keys of `restapi`, `ctl`, `postgresql` and `log` that have a variable of their own.
const SECTION_KEYS: [(&str, &[&str]); 4] = [
    (
        "restapi",
        &[
            "listen",
            "connect_address",
            "certfile",
            "keyfile",
            "keyfile_password",
            "cafile",
            "ciphers",
            "verify_client",
            "http_extra_headers",
            "https_extra_headers",
            "allowlist",
            "allowlist_include_members",
        ],
    ),
    (
        "ctl",
        &[
            "insecure",
            "cacert",
            "certfile",
            "keyfile",
            "keyfile_password",
        ],
    ),
    (
        "postgresql",
        &[
            "listen",
            "connect_address",
            "proxy_address",
            "config_dir",
            "data_dir",
            "pgpass",
            "bin_dir",
        ],
    ),
    (
        "log",
        &[
            "level",
            "traceback_level",
            "format",
            "dateformat",
            "max_queue_size",
            "dir",
            "file_size",
            "file_num",
            "loggers",
        ],
    ),
];

/// Suffixes of `PATRONI_<DCS>_<SUFFIX>` (the DCS sections' keys).
const DCS_SUFFIXES: [&str; 13] = [
    "HOST",
    "HOSTS",
    "PORT",
    "USE_PROXIES",
    "PROTOCOL",
    "SRV",
    "SRV_SUFFIX",
    "URL",
    "PROXY",
    "CACERT",
    "CERT",
    "KEY",
    "KEY_PASSWORD",
];

/// The DCS sections Patroni knows (pgherd reads `etcd` and `etcd3`; the others are
/// reported by the config's own checks).
const DCS_NAMES: [&str; 6] = [
    "ETCD",
    "ETCD3",
    "CONSUL",
    "ZOOKEEPER",
    "KUBERNETES",
    "EXHIBITOR",
];

/// The overrides in `vars` (the process environment, or a test's list).
pub fn overrides<I, K, V>(vars: I) -> Overrides
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut out = Overrides::default();
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.as_ref().starts_with(PREFIX) && k.as_ref() != CONFIGURATION)
        .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
        .collect();
    vars.sort();
    for (var, value) in vars {
        // Patroni ignores empty variables.
        if value.is_empty() {
            continue;
        }
        match key_path(&var[PREFIX.len()..]) {
            Some(path) => {
                let typed = typed(&path, value);
                set(&mut out.tree, &path, typed);
                out.applied.push((var, path.join(".")));
            }
            None => out.unknown.push(var),
        }
    }
    out
}

/// The config keys a variable (without its prefix) sets, in Patroni's order of
/// precedence: named settings, role credentials, DCS keys, then bootstrap users.
fn key_path(name: &str) -> Option<Vec<String>> {
    let lower = name.to_ascii_lowercase();
    let path = |parts: &[&str]| Some(parts.iter().map(|p| p.to_string()).collect());
    if matches!(lower.as_str(), "name" | "namespace" | "scope") {
        return path(&[lower.as_str()]);
    }
    for (section, keys) in SECTION_KEYS {
        if let Some(key) = lower
            .strip_prefix(section)
            .and_then(|k| k.strip_prefix('_'))
        {
            if keys.contains(&key) {
                return path(&[section, key]);
            }
        }
    }
    if let Some(key) = lower.strip_prefix("restapi_") {
        if matches!(key, "username" | "password") {
            return path(&["restapi", "authentication", key]);
        }
    }
    for role in ["replication", "superuser", "rewind"] {
        if let Some(key) = lower.strip_prefix(role).and_then(|k| k.strip_prefix('_')) {
            if AUTH_PARAMETERS.contains(&key) {
                return path(&["postgresql", "authentication", role, key]);
            }
        }
    }
    if let Some((dcs, suffix)) = name.split_once('_') {
        if DCS_NAMES.contains(&dcs) {
            let is_auth = dcs.starts_with("ETCD") && matches!(suffix, "USERNAME" | "PASSWORD");
            if DCS_SUFFIXES.contains(&suffix) || is_auth {
                let (dcs, suffix) = (dcs.to_ascii_lowercase(), suffix.to_ascii_lowercase());
                return path(&[dcs.as_str(), suffix.as_str()]);
            }
        }
    }
    // PATRONI_<user>_PASSWORD / _OPTIONS: a user to create at bootstrap (the config
    // reports bootstrap.users as unsupported).
    if let Some((user, key)) = name.rsplit_once('_') {
        if !user.is_empty() && matches!(key, "PASSWORD" | "OPTIONS") {
            let key = key.to_ascii_lowercase();
            return path(&["bootstrap", "users", user, key.as_str()]);
        }
    }
    None
}

/// A variable's text as the YAML value the file would hold: ports are numbers, flags
/// booleans, lists and mappings parsed as YAML flow collections, the rest strings.
fn typed(path: &[String], value: String) -> Value {
    let key = path.last().map(String::as_str).unwrap_or_default();
    let parsed = |text: &str| yaml_serde::from_str::<Value>(text).ok();
    match key {
        "port" | "max_queue_size" | "file_size" | "file_num" => value
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or(Value::String(value)),
        "insecure" | "allowlist_include_members" | "use_proxies" | "verify" => {
            match value.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Value::Bool(true),
                "0" | "false" | "no" | "off" => Value::Bool(false),
                _ => Value::String(value),
            }
        }
        "allowlist" | "options" => {
            let text = value.trim();
            let list = if text.starts_with('-') || text.starts_with('[') {
                text.to_string()
            } else {
                format!("[{text}]")
            };
            parsed(&list).unwrap_or(Value::String(value))
        }
        "http_extra_headers" | "https_extra_headers" | "loggers" => {
            let text = value.trim();
            let map = if text.starts_with('{') {
                text.to_string()
            } else {
                format!("{{{text}}}")
            };
            parsed(&map).unwrap_or(Value::String(value))
        }
        // `hosts` stays a string: the config takes `a:1,b:2` as Patroni does.
        _ => Value::String(value),
    }
}

/// Set `path` in `tree` to `value`, making mappings on the way.
fn set(tree: &mut Mapping, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = tree;
    for p in parents {
        let key = Value::String(p.clone());
        if !matches!(node.get(&key), Some(Value::Mapping(_))) {
            node.insert(key.clone(), Value::Mapping(Mapping::new()));
        }
        let Some(Value::Mapping(next)) = node.get_mut(&key) else {
            return;
        };
        node = next;
    }
    node.insert(Value::String(last.clone()), value);
}

/// Merge `over` into `doc`: mappings key by key, anything else replaced (the
/// environment wins, as in Patroni).
pub fn merge(doc: &mut Value, over: &Mapping) {
    if !matches!(doc, Value::Mapping(_)) {
        *doc = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(target) = doc else {
        return;
    };
    for (k, v) in over {
        match (target.get_mut(k), v) {
            (Some(existing @ Value::Mapping(_)), Value::Mapping(inner)) => merge(existing, inner),
            _ => {
                target.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(var: &str) -> Option<String> {
        key_path(var.strip_prefix(PREFIX).unwrap()).map(|p| p.join("."))
    }

    #[test]
    fn variables_map_to_patronis_keys() {
        let cases = [
            ("PATRONI_NAME", "name"),
            ("PATRONI_SCOPE", "scope"),
            ("PATRONI_RESTAPI_LISTEN", "restapi.listen"),
            (
                "PATRONI_RESTAPI_PASSWORD",
                "restapi.authentication.password",
            ),
            ("PATRONI_RESTAPI_CERTFILE", "restapi.certfile"),
            ("PATRONI_CTL_INSECURE", "ctl.insecure"),
            ("PATRONI_POSTGRESQL_DATA_DIR", "postgresql.data_dir"),
            (
                "PATRONI_SUPERUSER_PASSWORD",
                "postgresql.authentication.superuser.password",
            ),
            (
                "PATRONI_REPLICATION_USERNAME",
                "postgresql.authentication.replication.username",
            ),
            (
                "PATRONI_REWIND_SSLMODE",
                "postgresql.authentication.rewind.sslmode",
            ),
            ("PATRONI_ETCD3_HOSTS", "etcd3.hosts"),
            ("PATRONI_ETCD3_PASSWORD", "etcd3.password"),
            ("PATRONI_ETCD_HOST", "etcd.host"),
            ("PATRONI_ETCD3_KEY_PASSWORD", "etcd3.key_password"),
            ("PATRONI_LOG_LEVEL", "log.level"),
            ("PATRONI_admin_PASSWORD", "bootstrap.users.admin.password"),
        ];
        for (var, want) in cases {
            assert_eq!(path_of(var).as_deref(), Some(want), "{var}");
        }
        assert_eq!(path_of("PATRONI_SOMETHING"), None);
        assert_eq!(path_of("PATRONI_ETCD3_WHATEVER"), None);
    }

    #[test]
    fn values_take_the_types_the_file_would_hold() {
        let o = overrides([
            ("PATRONI_ETCD3_PORT", "2379"),
            ("PATRONI_CTL_INSECURE", "true"),
            ("PATRONI_RESTAPI_ALLOWLIST", "10.0.0.0/8, 127.0.0.1"),
            ("PATRONI_SUPERUSER_PASSWORD", "s3cret: with colon"),
            ("PATRONI_EMPTY_PASSWORD", ""),
            ("HOME", "/root"),
            ("PATRONI_NOT_A_SETTING", "x"),
        ]);
        let tree = Value::Mapping(o.tree);
        assert_eq!(tree["etcd3"]["port"], Value::from(2379u64));
        assert_eq!(tree["ctl"]["insecure"], Value::Bool(true));
        assert_eq!(
            tree["restapi"]["allowlist"].as_sequence().map(Vec::len),
            Some(2)
        );
        assert_eq!(
            tree["postgresql"]["authentication"]["superuser"]["password"],
            Value::String("s3cret: with colon".into())
        );
        assert_eq!(o.unknown, vec!["PATRONI_NOT_A_SETTING".to_string()]);
        assert_eq!(o.applied.len(), 4, "{:?}", o.applied);
    }

    #[test]
    fn the_environment_wins_key_by_key() {
        let mut doc: Value = yaml_serde::from_str(
            "postgresql:\n  data_dir: /a\n  authentication:\n    superuser: {username: postgres, password: file}\n",
        )
        .unwrap();
        let o = overrides([("PATRONI_SUPERUSER_PASSWORD", "env")]);
        merge(&mut doc, &o.tree);
        let su = &doc["postgresql"]["authentication"]["superuser"];
        assert_eq!(su["password"], Value::String("env".into()));
        assert_eq!(su["username"], Value::String("postgres".into()));
        assert_eq!(doc["postgresql"]["data_dir"], Value::String("/a".into()));
    }
}
