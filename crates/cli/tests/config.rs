//! Node config loading and validation (`pgherd_cli::config`).

use pgherd_cli::config::{self, ConfigError, DcsConfig, DynamicConfig, HostPort, Loaded};
use pgherd_ha::SynchronousMode;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A minimal valid config; tests append or replace sections.
const MINIMAL: &str = "\
scope: demo
name: node1
restapi:
  listen: 127.0.0.1:8008
etcd3:
  hosts: 127.0.0.1:2379
postgresql:
  listen: 127.0.0.1:5432
  data_dir: /tmp/data
  authentication:
    superuser:
      username: postgres
    replication:
      username: replicator
";

fn ok(yaml: &str) -> Loaded {
    match config::parse(yaml, "test.yml") {
        Ok(l) => l,
        Err(e) => panic!("expected the config to load, got:\n{e}"),
    }
}

fn err(yaml: &str) -> String {
    match config::parse(yaml, "test.yml") {
        Ok(l) => panic!("expected an error, got {:#?}", l.config),
        Err(e) => e.to_string(),
    }
}

/// MINIMAL with `extra` appended (top-level sections not already in MINIMAL).
fn with(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

fn endpoints(l: &Loaded) -> Vec<String> {
    match &l.config.dcs {
        DcsConfig::Etcd { endpoints, .. } => endpoints.clone(),
    }
}

// --- the tutorial's patroni.yml ------------------------------------------------------------

#[test]
fn tutorial_patroni_yml_loads_unchanged() {
    let loaded = config::load(&fixture("tutorial-patroni.yml")).expect("tutorial config loads");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = &loaded.config;
    assert_eq!(c.scope, "postgres");
    assert_eq!(c.namespace, "/db/");
    assert_eq!(c.name, "node1");
    assert_eq!(c.restapi.listen, hp("0.0.0.0", 8008));
    assert_eq!(c.restapi.connect_address, hp("192.168.1.1", 8008));
    assert!(c.restapi.authentication.is_none());
    assert_eq!(endpoints(&loaded), ["http://127.0.0.1:2379"]);

    let d = &c.bootstrap.dcs;
    assert_eq!(d.ttl, Duration::from_secs(30));
    assert_eq!(d.loop_wait, Duration::from_secs(10));
    assert_eq!(d.retry_timeout, Duration::from_secs(10));
    assert_eq!(d.maximum_lag_on_failover, 1_048_576);
    assert!(d.postgresql.use_pg_rewind);
    assert!(d.postgresql.use_slots);
    let p = &d.postgresql.parameters;
    assert_eq!(p["wal_level"], "replica");
    assert_eq!(p["hot_standby"], "on");
    assert_eq!(p["wal_keep_segments"], "8", "kept; translated later");
    assert_eq!(p["max_wal_senders"], "5");
    assert_eq!(p["max_replication_slots"], "5");
    assert_eq!(p["checkpoint_timeout"], "30");
    assert_eq!(p.len(), 6);

    let pg = &c.postgresql;
    assert_eq!(pg.listen.hosts, ["0.0.0.0"]);
    assert_eq!(pg.listen.port, 5432);
    assert_eq!(pg.connect_address, hp("192.168.1.1", 5432));
    assert_eq!(pg.data_dir, Path::new("/var/lib/postgresql/13/main"));
    assert_eq!(pg.pgpass, Path::new("/tmp/pgpass"));
    assert_eq!(pg.bin_dir, None);
    assert_eq!(pg.authentication.replication.username, "replicator");
    assert_eq!(
        pg.authentication.replication.password.as_deref(),
        Some("password")
    );
    assert_eq!(pg.authentication.superuser.username, "postgres");
    assert!(pg.authentication.rewind.is_none());
    assert_eq!(
        pg.parameters["unix_socket_directories"],
        "/var/run/postgresql"
    );
    assert_eq!(pg.pg_ctl_timeout, Duration::from_secs(60));

    let t = &c.tags;
    assert!(!t.nofailover && !t.noloadbalance && !t.clonefrom && !t.nosync);
    assert!(t.other.is_empty());
}

#[test]
fn tutorial_loopback_variant_loads_with_loopback_addresses() {
    let loaded = config::load(&fixture("tutorial-patroni-loopback.yml")).expect("loads");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = &loaded.config;
    assert_eq!(c.restapi.listen, hp("127.0.0.1", 8008));
    assert_eq!(c.postgresql.connect_address, hp("127.0.0.1", 5432));
    assert_eq!(
        c.postgresql.data_dir,
        Path::new("/tmp/pgherd-tutorial/node1/data")
    );
    assert_eq!(
        c.postgresql.parameters["unix_socket_directories"],
        "/tmp/pgherd-tutorial/node1"
    );
}

#[test]
fn bootstrap_dcs_becomes_patroni_shaped_config_json() {
    let loaded = config::load(&fixture("tutorial-patroni.yml")).expect("loads");
    let j = loaded.config.bootstrap.dcs.to_json();
    assert_eq!(
        j,
        json!({
            "ttl": 30, "loop_wait": 10, "retry_timeout": 10,
            "maximum_lag_on_failover": 1048576,
            "synchronous_mode": false, "synchronous_mode_strict": false,
            "synchronous_node_count": 1, "member_slots_ttl": 1800,
            "primary_start_timeout": 300,
            "postgresql": {
                "use_pg_rewind": true, "use_slots": true,
                "parameters": {
                    "wal_level": "replica", "hot_standby": "on", "wal_keep_segments": 8,
                    "max_wal_senders": 5, "max_replication_slots": 5, "checkpoint_timeout": 30
                }
            }
        })
    );
}

#[test]
fn load_of_a_missing_file_names_the_file() {
    let e = config::load(Path::new("/nonexistent/pgherd.yml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/pgherd.yml"), "{e}");
}

// --- defaults --------------------------------------------------------------------------------

#[test]
fn missing_optional_keys_take_patroni_defaults() {
    let l = ok(MINIMAL);
    let c = &l.config;
    assert_eq!(c.namespace, "/service");
    assert_eq!(c.postgresql.pgpass, Path::new("/tmp/pgpass0"));
    assert_eq!(c.postgresql.pg_ctl_timeout, Duration::from_secs(60));
    assert_eq!(c.postgresql.os_user, None);
    assert_eq!(c.postgresql.pg_hba, None);
    assert_eq!(c.bootstrap.dcs, DynamicConfig::default());
    assert_eq!(c.bootstrap.initdb, Vec::<String>::new());
    assert_eq!(c.restapi.connect_address, hp("127.0.0.1", 8008));
    assert_eq!(c.postgresql.connect_address, hp("127.0.0.1", 5432));
    assert_eq!(c.postgresql.authentication.superuser.password, None);
    let d = DynamicConfig::default();
    assert_eq!(
        (d.ttl, d.loop_wait, d.retry_timeout),
        (
            Duration::from_secs(30),
            Duration::from_secs(10),
            Duration::from_secs(10)
        )
    );
    assert_eq!(d.maximum_lag_on_failover, 1_048_576);
    assert!(!d.synchronous_mode.is_active() && !d.synchronous_mode_strict && !d.pause);
    assert!(!d.postgresql.use_pg_rewind && d.postgresql.use_slots);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn wildcard_listen_gives_loopback_connect_address_with_a_warning() {
    let yaml = MINIMAL
        .replace("listen: 127.0.0.1:8008", "listen: 0.0.0.0:8008")
        .replace("listen: 127.0.0.1:5432", "listen: '*'");
    let l = ok(&yaml);
    assert_eq!(l.config.restapi.connect_address, hp("127.0.0.1", 8008));
    assert_eq!(l.config.postgresql.connect_address, hp("127.0.0.1", 5432));
    assert_eq!(l.config.postgresql.listen.hosts, ["*"]);
    assert!(
        l.warnings
            .iter()
            .any(|w| w.starts_with("restapi.connect_address:") && w.contains("127.0.0.1")),
        "{:?}",
        l.warnings
    );
    assert!(l
        .warnings
        .iter()
        .any(|w| w.starts_with("postgresql.connect_address:")));
}

#[test]
fn postgresql_listen_takes_several_hosts_and_defaults_port_5432() {
    let yaml = MINIMAL.replace("listen: 127.0.0.1:5432", "listen: 127.0.0.1,10.0.0.5:5433");
    let pg = ok(&yaml).config.postgresql;
    assert_eq!(pg.listen.hosts, ["127.0.0.1", "10.0.0.5"]);
    assert_eq!(pg.listen.port, 5433);
    assert_eq!(pg.listen.listen_addresses(), "127.0.0.1,10.0.0.5");
    assert_eq!(pg.connect_address, hp("127.0.0.1", 5433));

    let yaml = MINIMAL.replace("listen: 127.0.0.1:5432", "listen: localhost");
    assert_eq!(ok(&yaml).config.postgresql.listen.port, 5432);

    let yaml = MINIMAL.replace("listen: 127.0.0.1:8008", "listen: '[::1]:8008'");
    let api = ok(&yaml).config.restapi;
    assert_eq!(api.listen, hp("::1", 8008));
    assert_eq!(api.listen.to_string(), "[::1]:8008");
}

#[test]
fn numbers_and_booleans_may_be_written_as_strings() {
    let l = ok(&with(
        "\
bootstrap:
  dcs:
    ttl: '20'
    loop_wait: \"5\"
    retry_timeout: 5
    maximum_lag_on_failover: '1024'
    synchronous_mode: 'true'
    postgresql:
      use_pg_rewind: 'yes'
tags:
  nofailover: 'true'
  nosync: true
",
    ));
    let d = &l.config.bootstrap.dcs;
    assert_eq!(d.ttl, Duration::from_secs(20));
    assert_eq!(d.loop_wait, Duration::from_secs(5));
    assert_eq!(d.maximum_lag_on_failover, 1024);
    assert_eq!(d.synchronous_mode, SynchronousMode::On);
    assert!(d.postgresql.use_pg_rewind);
    assert!(l.config.tags.nofailover && l.config.tags.nosync);
}

#[test]
fn parameter_values_of_any_scalar_type_become_postgresql_text() {
    let yaml = MINIMAL.replace(
        "  data_dir: /tmp/data\n",
        "  data_dir: /tmp/data\n  parameters:\n    fsync: false\n    hot_standby: true\n    \
         max_connections: 100\n    random_page_cost: 1.1\n    shared_buffers: 128MB\n    \
         wal_log_hints: 'on'\n",
    );
    let p = ok(&yaml).config.postgresql.parameters;
    assert_eq!(p["fsync"], "off");
    assert_eq!(p["hot_standby"], "on");
    assert_eq!(p["max_connections"], "100");
    assert_eq!(p["random_page_cost"], "1.1");
    assert_eq!(p["shared_buffers"], "128MB");
    assert_eq!(p["wal_log_hints"], "on");
}

#[test]
fn other_tags_are_kept_as_written() {
    let l = ok(&with(
        "tags:\n  replicatefrom: node2\n  failover_priority: 2\n  noloadbalance: false\n",
    ));
    let t = &l.config.tags;
    assert_eq!(t.other["replicatefrom"], json!("node2"));
    assert_eq!(t.other["failover_priority"], json!(2));
    assert!(!t.noloadbalance);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn local_postgresql_section_accepts_patroni_and_pgherd_keys() {
    let yaml = MINIMAL.replace(
        "  data_dir: /tmp/data\n",
        "  data_dir: /tmp/data\n  bin_dir: /usr/lib/postgresql/15/bin\n  pg_ctl_timeout: 90\n  \
         os_user: postgres\n  use_unix_socket: true\n  pg_hba:\n    - local all all trust\n    \
         - host replication replicator 127.0.0.1/32 md5\n  basebackup:\n    - verbose\n    \
         - max-rate: 100M\n  create_replica_methods:\n    - basebackup\n",
    );
    let l = ok(&yaml);
    let pg = &l.config.postgresql;
    assert_eq!(
        pg.bin_dir.as_deref(),
        Some(Path::new("/usr/lib/postgresql/15/bin"))
    );
    assert_eq!(pg.pg_ctl_timeout, Duration::from_secs(90));
    assert_eq!(pg.os_user.as_deref(), Some("postgres"));
    assert_eq!(pg.pg_hba.as_ref().map(Vec::len), Some(2));
    assert_eq!(pg.basebackup, ["--verbose", "--max-rate=100M"]);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

// --- DCS -------------------------------------------------------------------------------------

#[test]
fn etcd_host_becomes_an_http_endpoint() {
    let yaml = MINIMAL.replace(
        "etcd3:\n  hosts: 127.0.0.1:2379",
        "etcd:\n  host: 10.0.0.1:2379",
    );
    assert_eq!(endpoints(&ok(&yaml)), ["http://10.0.0.1:2379"]);
}

#[test]
fn etcd3_with_a_hosts_list_works() {
    let yaml = MINIMAL.replace(
        "  hosts: 127.0.0.1:2379",
        "  hosts:\n    - 10.0.0.1:2379\n    - 10.0.0.2:2380\n    - etcd3\n",
    );
    assert_eq!(
        endpoints(&ok(&yaml)),
        [
            "http://10.0.0.1:2379",
            "http://10.0.0.2:2380",
            "http://etcd3:2379"
        ]
    );
}

#[test]
fn etcd_hosts_may_be_a_comma_separated_string_and_urls_are_accepted() {
    let yaml = MINIMAL.replace("  hosts: 127.0.0.1:2379", "  hosts: a:1, b:2");
    assert_eq!(endpoints(&ok(&yaml)), ["http://a:1", "http://b:2"]);
    let yaml = MINIMAL.replace("  hosts: 127.0.0.1:2379", "  url: http://127.0.0.1:2379/");
    assert_eq!(endpoints(&ok(&yaml)), ["http://127.0.0.1:2379"]);
    let yaml = MINIMAL.replace(
        "  hosts: 127.0.0.1:2379",
        "  urls: [http://a:2379, http://b:2379]\n  username: root\n  password: secret",
    );
    let l = ok(&yaml);
    assert_eq!(endpoints(&l), ["http://a:2379", "http://b:2379"]);
    let DcsConfig::Etcd {
        username, password, ..
    } = &l.config.dcs;
    assert_eq!(username.as_deref(), Some("root"));
    assert_eq!(password.as_deref(), Some("secret"));
}

#[test]
fn etcd_over_https_needs_a_ca_certificate() {
    let yaml = MINIMAL.replace(
        "  hosts: 127.0.0.1:2379",
        "  hosts: a:2379\n  protocol: https",
    );
    let e = err(&yaml);
    assert!(e.contains("etcd3.cacert") && e.contains("https"), "{e}");
    let yaml = MINIMAL.replace("  hosts: 127.0.0.1:2379", "  url: https://a:2379");
    let e = err(&yaml);
    assert!(e.contains("etcd3.cacert") && e.contains("https"), "{e}");
}

#[test]
fn both_etcd_and_etcd3_uses_etcd3_with_a_warning() {
    let l = ok(&with("etcd:\n  host: 10.9.9.9:2379\n"));
    assert_eq!(endpoints(&l), ["http://127.0.0.1:2379"]);
    assert!(
        l.warnings.iter().any(|w| w.starts_with("etcd:")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn no_dcs_section_is_an_error_naming_the_keys() {
    let yaml = MINIMAL.replace("etcd3:\n  hosts: 127.0.0.1:2379\n", "");
    let e = err(&yaml);
    assert!(e.contains("etcd3") && e.contains("etcd:"), "{e}");
}

#[test]
fn another_dcs_without_etcd_is_an_error_naming_it() {
    let yaml = MINIMAL.replace(
        "etcd3:\n  hosts: 127.0.0.1:2379\n",
        "consul:\n  host: c:8500\n",
    );
    let e = err(&yaml);
    assert!(e.contains("consul:") && e.contains("not supported"), "{e}");
}

#[test]
fn etcd_without_endpoints_is_an_error() {
    let yaml = MINIMAL.replace("  hosts: 127.0.0.1:2379", "  username: root");
    let e = err(&yaml);
    assert!(e.contains("etcd3: no etcd endpoints"), "{e}");
}

// --- invalid values: one test per class, each naming the key path --------------------------

#[test]
fn address_that_is_not_host_port_names_the_key() {
    let e = err(&MINIMAL.replace("listen: 127.0.0.1:8008", "listen: abc"));
    assert!(
        e.contains(r#"restapi.listen: "abc" is not host:port"#),
        "{e}"
    );
    let e = err(&MINIMAL.replace("listen: 127.0.0.1:8008", "listen: 'h:http'"));
    assert!(
        e.contains(r#"restapi.listen: "h:http" is not host:port"#),
        "{e}"
    );
}

#[test]
fn port_out_of_range_names_the_key_and_port() {
    let e = err(&MINIMAL.replace("listen: 127.0.0.1:5432", "listen: 127.0.0.1:99999"));
    assert!(
        e.contains("postgresql.listen: port 99999 out of range"),
        "{e}"
    );
    let e = err(&MINIMAL.replace("listen: 127.0.0.1:8008", "listen: 127.0.0.1:0"));
    assert!(e.contains("restapi.listen: port 0 out of range"), "{e}");
}

#[test]
fn duration_that_is_not_a_number_names_the_key_and_value() {
    let e = err(&with("bootstrap:\n  dcs:\n    ttl: x\n"));
    assert!(
        e.contains(r#"bootstrap.dcs.ttl: must be a number of seconds, got "x""#),
        "{e}"
    );
    let e = err(&MINIMAL.replace(
        "  data_dir: /tmp/data\n",
        "  data_dir: /tmp/data\n  pg_ctl_timeout: -5\n",
    ));
    assert!(
        e.contains("postgresql.pg_ctl_timeout: must be a number of seconds, got -5"),
        "{e}"
    );
}

#[test]
fn boolean_that_is_not_true_or_false_names_the_key_and_value() {
    let e = err(&with("tags:\n  nofailover: maybe\n"));
    assert!(
        e.contains(r#"tags.nofailover: expected true or false, got "maybe""#),
        "{e}"
    );
}

#[test]
fn byte_count_that_is_not_a_number_names_the_key() {
    let e = err(&with(
        "bootstrap:\n  dcs:\n    maximum_lag_on_failover: 1MB\n",
    ));
    assert!(
        e.contains(
            r#"bootstrap.dcs.maximum_lag_on_failover: must be a number of bytes, got "1MB""#
        ),
        "{e}"
    );
}

#[test]
fn missing_required_keys_are_each_named() {
    let e = err("restapi:\n  connect_address: 1.2.3.4:8008\netcd:\n  host: a:2379\npostgresql:\n  authentication:\n    superuser:\n      password: x\n");
    for key in [
        "scope: required",
        "name: required",
        "restapi.listen: required",
        "postgresql.listen: required",
        "postgresql.data_dir: required",
        "postgresql.authentication.superuser.username: required",
        "postgresql.authentication.replication: required",
    ] {
        assert!(e.contains(key), "missing {key:?} in:\n{e}");
    }
}

#[test]
fn empty_document_reports_the_required_sections() {
    let e = err("");
    assert!(
        e.contains("scope: required") && e.contains("postgresql: required"),
        "{e}"
    );
}

#[test]
fn wrong_shape_names_the_key() {
    let e = err(&with("tags: [a, b]\n"));
    assert!(e.contains("tags: expected a mapping"), "{e}");
    let e = err(&MINIMAL.replace("data_dir: /tmp/data", "data_dir: [a]"));
    assert!(
        e.contains("postgresql.data_dir: expected a string, got a list"),
        "{e}"
    );
    let e = err(&MINIMAL.replace(
        "  data_dir: /tmp/data\n",
        "  data_dir: /tmp/data\n  parameters:\n    shared_preload_libraries: [a, b]\n",
    ));
    assert!(
        e.contains("postgresql.parameters.shared_preload_libraries: expected a parameter value"),
        "{e}"
    );
    let e = err("- just\n- a list\n");
    assert!(
        e.contains("expected a mapping for the document, got a list"),
        "{e}"
    );
}

#[test]
fn names_with_a_slash_are_rejected() {
    let e = err(&MINIMAL.replace("name: node1", "name: a/b"));
    assert!(e.contains("name: \"a/b\" must not contain '/'"), "{e}");
}

#[test]
fn bad_yaml_reports_line_and_column() {
    let e = config::parse("scope: x\nname: [unclosed\nrestapi: {}\n", "node.yml").unwrap_err();
    let ConfigError::Yaml { line, column, .. } = &e else {
        panic!("expected a YAML error, got {e}");
    };
    assert!(line.is_some() && column.is_some());
    let msg = e.to_string();
    assert!(
        msg.starts_with("node.yml:") && msg.contains("invalid YAML"),
        "{msg}"
    );
}

#[test]
fn several_errors_are_reported_together_one_per_line() {
    let yaml = MINIMAL
        .replace("listen: 127.0.0.1:8008", "listen: abc")
        .replace("listen: 127.0.0.1:5432", "listen: 127.0.0.1:70000")
        + "tags:\n  nosync: perhaps\nbootstrap:\n  dcs:\n    loop_wait: soon\n";
    let e = config::parse(&yaml, "node.yml").unwrap_err();
    assert_eq!(e.field_errors().len(), 4, "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with("node.yml: 4 invalid settings:\n"), "{msg}");
    let lines: Vec<&str> = msg.lines().skip(1).collect();
    assert_eq!(lines.len(), 4, "{msg}");
    for key in [
        "restapi.listen",
        "postgresql.listen",
        "tags.nosync",
        "bootstrap.dcs.loop_wait",
    ] {
        assert!(
            lines.iter().any(|l| l.trim_start().starts_with(key)),
            "{key} in {msg}"
        );
    }
}

// --- the safety rule -------------------------------------------------------------------------

#[test]
fn loop_wait_plus_twice_retry_timeout_may_not_exceed_ttl() {
    let e = err(&with(
        "bootstrap:\n  dcs:\n    ttl: 30\n    loop_wait: 10\n    retry_timeout: 15\n",
    ));
    assert!(e.contains("bootstrap.dcs:"), "{e}");
    for part in ["loop_wait (10)", "retry_timeout (15)", "ttl (30)"] {
        assert!(e.contains(part), "{part} in {e}");
    }
    // Defaults fill the missing ones: 10 + 2*10 > 25.
    let e = err(&with("bootstrap:\n  dcs:\n    ttl: 25\n"));
    assert!(e.contains("ttl (25)"), "{e}");
}

#[test]
fn equality_and_short_test_timings_satisfy_the_safety_rule() {
    let d = ok(&with(
        "bootstrap:\n  dcs:\n    ttl: 30\n    loop_wait: 10\n    retry_timeout: 10\n",
    ))
    .config
    .bootstrap
    .dcs;
    assert_eq!(d.ttl, Duration::from_secs(30));
    let d = ok(&with(
        "bootstrap:\n  dcs:\n    ttl: 4\n    loop_wait: 1\n    retry_timeout: 1.5\n",
    ))
    .config
    .bootstrap
    .dcs;
    assert_eq!(d.retry_timeout, Duration::from_millis(1500));
}

#[test]
fn timings_below_their_minimum_are_rejected() {
    let e = err(&with(
        "bootstrap:\n  dcs:\n    ttl: 1\n    loop_wait: 0\n    retry_timeout: 0\n",
    ));
    assert!(
        e.contains("bootstrap.dcs.ttl: must be at least 2 seconds, got 1"),
        "{e}"
    );
    assert!(
        e.contains("bootstrap.dcs.loop_wait: must be at least 1 seconds, got 0"),
        "{e}"
    );
    assert!(
        e.contains("bootstrap.dcs.retry_timeout: must be at least 1"),
        "{e}"
    );
    // Not also the combined rule, which would only repeat the same mistake.
    assert!(!e.contains("must not exceed"), "{e}");
}

// --- warnings --------------------------------------------------------------------------------

#[test]
fn unknown_keys_are_warnings_naming_the_full_path() {
    let yaml = MINIMAL
        .replace(
            "      username: postgres\n",
            "      username: postgres\n      colour: blue\n",
        )
        .replace(
            "  data_dir: /tmp/data\n",
            "  data_dir: /tmp/data\n  foo:\n    bar: 1\n",
        )
        + "frobnicate: true\nrestapi_typo: {}\n";
    let l = ok(&yaml);
    for path in [
        "postgresql.authentication.superuser.colour:",
        "postgresql.foo:",
        "frobnicate:",
        "restapi_typo:",
    ] {
        assert!(
            l.warnings.iter().any(|w| w.starts_with(path)),
            "no warning for {path}: {:?}",
            l.warnings
        );
    }
}

#[test]
fn unsupported_patroni_sections_are_ignored_with_a_warning() {
    let l = ok(&with(
        "log:\n  level: INFO\n\
         zookeeper:\n  hosts: [z:2181]\nbootstrap:\n  users:\n    admin:\n      password: x\n",
    ));
    for key in ["log:", "zookeeper:", "bootstrap.users:"] {
        assert!(
            l.warnings
                .iter()
                .any(|w| w.starts_with(key) && w.contains("not supported")),
            "{key} in {:?}",
            l.warnings
        );
    }
}

#[test]
fn watchdog_section_takes_patronis_keys_and_names_bad_values() {
    use pgherd_ha::watchdog::WatchdogMode;
    let l = ok(&with(
        "watchdog:\n  mode: required\n  device: /dev/watchdog1\n  safety_margin: -1\n",
    ));
    assert_eq!(l.config.watchdog.mode, WatchdogMode::Required);
    assert_eq!(
        l.config.watchdog.device,
        std::path::PathBuf::from("/dev/watchdog1")
    );
    assert_eq!(l.config.watchdog.safety_margin, -1);
    // YAML's `off` is a boolean; Patroni accepts it all the same.
    let l = ok(&with("watchdog:\n  mode: off\n"));
    assert_eq!(l.config.watchdog.mode, WatchdogMode::Off);
    // Without the section: automatic, /dev/watchdog, 5 s.
    let l = ok(MINIMAL);
    assert_eq!(l.config.watchdog.mode, WatchdogMode::Automatic);
    assert_eq!(l.config.watchdog.safety_margin, 5);

    let e = err(&with("watchdog:\n  mode: sometimes\n  safety_margin: -7\n"));
    assert!(
        e.contains("watchdog.mode: expected off, automatic or required"),
        "{e}"
    );
    assert!(
        e.contains("watchdog.safety_margin: expected whole seconds"),
        "{e}"
    );
}

#[test]
fn callbacks_are_read_and_other_replica_methods_accepted_with_a_warning() {
    let yaml = MINIMAL.replace(
        "  data_dir: /tmp/data\n",
        "  data_dir: /tmp/data\n  callbacks:\n    on_start: /bin/cb --tag 'a b'\n    \
         on_role_change: /bin/true\n  pre_promote: /bin/check\n  \
         create_replica_methods: [wal_e, basebackup]\n",
    );
    let l = ok(&yaml);
    let cb = &l.config.postgresql.callbacks;
    assert_eq!(
        cb.on_start,
        Some(vec!["/bin/cb".into(), "--tag".into(), "a b".into()])
    );
    assert_eq!(cb.on_role_change, Some(vec!["/bin/true".to_string()]));
    assert_eq!(cb.pre_promote, Some(vec!["/bin/check".to_string()]));
    assert_eq!(cb.on_stop, None);
    assert!(!l
        .warnings
        .iter()
        .any(|w| w.starts_with("postgresql.callbacks")));
    assert!(l
        .warnings
        .iter()
        .any(|w| w.starts_with("postgresql.create_replica_methods:") && w.contains("wal_e")));
    let e = err(&MINIMAL.replace(
        "  data_dir: /tmp/data\n",
        "  data_dir: /tmp/data\n  callbacks:\n    on_stop: \"/bin/x 'open\"\n",
    ));
    assert!(
        e.contains("postgresql.callbacks.on_stop: has an unclosed quote"),
        "{e}"
    );
}

#[test]
fn unknown_bootstrap_dcs_keys_are_kept_for_the_cluster_config() {
    let l = ok(&with(
        "bootstrap:\n  dcs:\n    check_timeline: true\n    postgresql:\n      pg_hba: [x]\n",
    ));
    let d = &l.config.bootstrap.dcs;
    assert_eq!(d.other["check_timeline"], json!(true));
    assert_eq!(d.postgresql.other["pg_hba"], json!(["x"]));
    assert_eq!(d.to_json()["check_timeline"], json!(true));
    assert!(l
        .warnings
        .iter()
        .any(|w| w.starts_with("bootstrap.dcs.check_timeline:")));
}

// --- bootstrap.initdb ------------------------------------------------------------------------

#[test]
fn initdb_list_form_becomes_initdb_arguments() {
    let l = ok(&with(
        "bootstrap:\n  initdb:\n    - data-checksums\n    - encoding: UTF8\n    - locale: en_US.UTF-8\n  \
         pg_hba:\n    - host all all 0.0.0.0/0 md5\n",
    ));
    assert_eq!(
        l.config.bootstrap.initdb,
        [
            "--data-checksums",
            "--encoding=UTF8",
            "--locale=en_US.UTF-8"
        ]
    );
    assert_eq!(
        l.config.bootstrap.pg_hba.as_deref(),
        Some(&["host all all 0.0.0.0/0 md5".to_string()][..])
    );
}

#[test]
fn initdb_item_of_the_wrong_shape_names_its_index() {
    let e = err(&with(
        "bootstrap:\n  initdb:\n    - data-checksums\n    - {a: 1, b: 2}\n",
    ));
    assert!(e.contains("bootstrap.initdb[1]: expected an option"), "{e}");
}

// --- dynamic config (the DCS `config` key) ---------------------------------------------------

#[test]
fn dynamic_config_json_round_trips() {
    let patroni = json!({
        "ttl": 20, "loop_wait": 5, "retry_timeout": 5,
        "maximum_lag_on_failover": 33554432,
        "synchronous_mode": true, "synchronous_mode_strict": false,
        "pause": true,
        "check_timeline": true,
        "postgresql": {
            "use_pg_rewind": true, "use_slots": false,
            "parameters": {"max_connections": 100, "hot_standby": "on", "wal_log_hints": true},
            "pg_hba": ["host all all 0.0.0.0/0 md5"]
        }
    });
    let d = config::parse_dynamic(&patroni).expect("valid");
    assert_eq!(d.ttl, Duration::from_secs(20));
    assert!(d.pause && d.synchronous_mode == SynchronousMode::On);
    assert!(!d.postgresql.use_slots);
    assert_eq!(d.postgresql.parameters["wal_log_hints"], "on");
    assert_eq!(d.postgresql.parameters["max_connections"], "100");
    let out = d.to_json();
    assert_eq!(out["ttl"], json!(20));
    assert_eq!(out["pause"], json!(true));
    assert_eq!(out["check_timeline"], json!(true));
    assert_eq!(out["postgresql"]["pg_hba"], patroni["postgresql"]["pg_hba"]);
    assert_eq!(
        out["postgresql"]["parameters"]["max_connections"],
        json!(100)
    );
    assert_eq!(config::parse_dynamic(&out).expect("valid"), d);
}

#[test]
fn synchronous_mode_may_be_quorum_as_in_patroni_4() {
    for (value, mode) in [
        (json!("quorum"), SynchronousMode::Quorum),
        (json!("QUORUM"), SynchronousMode::Quorum),
        (json!("on"), SynchronousMode::On),
        (json!(false), SynchronousMode::Off),
    ] {
        let d = config::parse_dynamic(&json!({ "synchronous_mode": value })).expect("valid");
        assert_eq!(d.synchronous_mode, mode, "{value}");
        assert_eq!(config::parse_dynamic(&d.to_json()).expect("valid"), d);
    }
    assert_eq!(
        DynamicConfig {
            synchronous_mode: SynchronousMode::Quorum,
            ..DynamicConfig::default()
        }
        .to_json()["synchronous_mode"],
        json!("quorum")
    );
    let e = config::parse_dynamic(&json!({"synchronous_mode": "majority"}))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(r#"synchronous_mode: expected true, false or quorum, got "majority""#),
        "{e}"
    );
}

#[test]
fn empty_dynamic_config_takes_defaults_and_pause_is_omitted_when_off() {
    let d = config::parse_dynamic(&json!({})).expect("valid");
    assert_eq!(d, DynamicConfig::default());
    let j = d.to_json();
    assert!(j.get("pause").is_none());
    assert_eq!(j["postgresql"]["use_slots"], json!(true));
    assert_eq!(config::parse_dynamic(&j).expect("valid"), d);
}

#[test]
fn invalid_dynamic_config_names_the_keys() {
    let e = config::parse_dynamic(&json!({"ttl": "soon", "postgresql": {"use_slots": "maybe"}}))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(r#"ttl: must be a number of seconds, got "soon""#),
        "{e}"
    );
    assert!(
        e.contains("postgresql.use_slots: expected true or false"),
        "{e}"
    );
    let e = config::parse_dynamic(&json!({"ttl": 20, "loop_wait": 10, "retry_timeout": 10}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("loop_wait (10) + 2 * retry_timeout (10)"), "{e}");
    assert!(config::parse_dynamic(&json!([1, 2])).is_err());
}

// --- robustness ------------------------------------------------------------------------------

#[test]
fn no_input_panics_every_prefix_of_the_tutorial_config() {
    let text = std::fs::read_to_string(fixture("tutorial-patroni.yml")).expect("fixture");
    for (i, _) in text.char_indices() {
        let _ = config::parse(&text[..i], "prefix");
    }
    for weird in [
        "~",
        "[]",
        "{}",
        "'",
        "scope: !custom x",
        "scope: &a x\nname: *a",
        "? [a]\n: b",
        "scope:\n  - 1\nname: {a: b}\nrestapi: 3\netcd3: x\npostgresql: []",
        "etcd3: {hosts: [[1]]}",
        "etcd: {host: ':'}",
        "etcd: {host: '[::1'}",
        "postgresql: {listen: ','}",
        "postgresql: {listen: '[]:1'}",
        "bootstrap: {dcs: {ttl: 1e300, loop_wait: .nan, retry_timeout: -.inf}}",
        "bootstrap: {initdb: [{}, '', '--', {'': 1}, {a: [1]}]}",
        "tags: {1: 2, [a]: b}",
        "<<: {scope: x}",
    ] {
        let _ = config::parse(weird, "weird");
    }
}

fn hp(host: &str, port: u16) -> HostPort {
    HostPort {
        host: host.into(),
        port,
    }
}
