//! The pooler's configuration: PgBouncer's files load as-is, and pgherd's YAML says the
//! same thing.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgherd_pooler::config::{
    diff, AuthType, Balance, CheckKind, ConfigErrors, ConnInfo, ErrorKind, Fallback, HbaMethod,
    HbaRules, Loaded, PoolMode, PoolerConfig, RouteRole, SecretKind, SslMode, Userlist, SETTINGS,
};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn ini(text: &str) -> Result<Loaded, ConfigErrors> {
    PoolerConfig::from_ini_str(text, Path::new("test.ini"))
}

fn ini_ok(text: &str) -> Loaded {
    match ini(text) {
        Ok(l) => l,
        Err(e) => panic!("expected to load, got:\n{e}"),
    }
}

fn ini_err(text: &str) -> ConfigErrors {
    match ini(text) {
        Ok(l) => panic!("expected errors, loaded {:?}", l.config),
        Err(e) => e,
    }
}

fn yaml(text: &str) -> Result<Loaded, ConfigErrors> {
    PoolerConfig::from_yaml_str(text, Path::new("pooler.yml"))
}

// ---------------------------------------------------------------- tutorial

#[test]
fn tutorial_pgbouncer_ini_loads_unchanged() {
    let loaded = PoolerConfig::from_ini_file(&fixture("tutorial/pgbouncer.ini")).expect("loads");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = &loaded.config;

    let mydb = c.databases.get("mydb").expect("mydb");
    assert_eq!(mydb.host, vec!["192.168.1.1".to_string()]);
    assert_eq!(mydb.port, 5432);
    assert_eq!(mydb.dbname.as_deref(), Some("mydb"));
    assert_eq!(mydb.user, None);
    assert_eq!(c.databases.len(), 1);
    assert_eq!(c.fallback_database, None);

    let s = &c.settings;
    assert_eq!(s.listen_addr, vec!["0.0.0.0".to_string()]);
    assert_eq!(s.listen_port, 6432);
    assert_eq!(s.auth_type, AuthType::Md5);
    assert_eq!(
        s.auth_file,
        Some(PathBuf::from("/etc/pgbouncer/userlist.txt"))
    );
    assert_eq!(
        s.logfile,
        Some(PathBuf::from("/var/log/pgbouncer/pgbouncer.log"))
    );
    assert_eq!(
        s.pidfile,
        Some(PathBuf::from("/var/run/pgbouncer/pgbouncer.pid"))
    );
    assert_eq!(s.admin_users, vec!["postgres".to_string()]);
    assert_eq!(
        s.stats_users,
        vec!["stats".to_string(), "postgres".to_string()]
    );
    assert_eq!(s.pool_mode, PoolMode::Session);
    assert_eq!(s.max_client_conn, 100);
    assert_eq!(s.default_pool_size, 20);
    assert!(s.is_admin_user("postgres"));
    assert!(s.is_stats_user("stats"));
    assert!(!s.is_admin_user("stats"));

    // Everything not written keeps PgBouncer's default.
    assert_eq!(s.query_wait_timeout, Some(Duration::from_secs(120)));
    assert_eq!(s.server_reset_query.as_deref(), Some("DISCARD ALL"));
    assert_eq!(s.server_check_query.as_deref(), Some("select 1"));
    assert_eq!(s.server_lifetime, Duration::from_secs(3600));
    assert_eq!(s.server_idle_timeout, Some(Duration::from_secs(600)));
    assert_eq!(s.client_login_timeout, Some(Duration::from_secs(60)));
    assert_eq!(s.query_timeout, None);
    assert_eq!(s.max_prepared_statements, 200);
    assert_eq!(s.unix_socket_dir, Some(PathBuf::from("/tmp")));
    assert_eq!(
        s.auth_query,
        "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END \
         FROM pg_authid WHERE rolname=$1 AND rolcanlogin"
    );

    // The raw pairs are kept with their lines.
    let raw = loaded
        .raw
        .iter()
        .find(|r| r.key == "stats_users")
        .expect("raw stats_users");
    assert_eq!(raw.value, "stats, postgres");
    assert_eq!(raw.location.line, Some(12));
}

#[test]
fn tutorial_userlist_md5password_is_a_plain_text_password() {
    let users = Userlist::load(&fixture("tutorial/userlist.txt")).expect("loads");
    assert_eq!(users.len(), 1);
    let secret = users.get("postgres").expect("postgres");
    // "md5password" is not "md5" + 32 hex digits: it is the password itself.
    assert_eq!(secret.kind(), SecretKind::Plain);
    assert_eq!(secret.expose(), "md5password");
}

#[test]
fn yaml_equivalent_of_the_tutorial_ini_produces_an_identical_config() {
    let from_ini = PoolerConfig::from_ini_file(&fixture("tutorial/pgbouncer.ini")).expect("ini");
    let from_yaml = PoolerConfig::load(&fixture("tutorial/pooler.yml")).expect("yaml");
    assert!(from_yaml.warnings.is_empty(), "{:?}", from_yaml.warnings);
    assert_eq!(from_ini.config, from_yaml.config);
    assert!(diff(&from_ini.config, &from_yaml.config).is_empty());
}

// ---------------------------------------------------------------- ini syntax

#[test]
fn include_is_relative_to_the_including_file_and_carries_the_section() {
    let loaded = PoolerConfig::from_ini_file(&fixture("include/main.ini")).expect("loads");
    let dbs = &loaded.config.databases;
    assert_eq!(dbs["included"].host, vec!["10.0.0.1".to_string()]);
    assert_eq!(dbs["included"].dbname.as_deref(), Some("inc"));
    assert_eq!(dbs["nested"].host, vec!["10.0.0.2".to_string()]);
    assert_eq!(dbs["after_include"].host, vec!["10.0.0.9".to_string()]);
    assert_eq!(loaded.config.settings.listen_port, 6543);
    let nested = loaded.raw.iter().find(|r| r.key == "nested").expect("raw");
    assert!(nested.location.file.ends_with("conf.d/more.ini"));
    assert_eq!(nested.location.line, Some(1));
}

#[test]
fn include_cycle_is_an_error() {
    let errs = PoolerConfig::from_ini_file(&fixture("cycle/a.ini")).expect_err("cycle");
    let e = errs
        .errors()
        .iter()
        .find(|e| e.kind == ErrorKind::Include)
        .expect("include error");
    assert!(e.message.contains("cycle"), "{e}");
    assert!(e.location.file.ends_with("cycle/b.ini"), "{e}");
    assert_eq!(e.location.line, Some(2));

    let errs = PoolerConfig::from_ini_file(&fixture("self_include/self.ini")).expect_err("self");
    assert!(errs.to_string().contains("cycle"), "{errs}");
}

#[test]
fn include_depth_is_bounded_and_missing_files_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..15 {
        let body = format!("%include f{}.ini\n", i + 1);
        std::fs::write(dir.path().join(format!("f{i}.ini")), body).expect("write");
    }
    std::fs::write(dir.path().join("f15.ini"), "").expect("write");
    let errs = PoolerConfig::from_ini_file(&dir.path().join("f0.ini")).expect_err("too deep");
    assert!(errs.to_string().contains("levels deep"), "{errs}");

    let errs = ini_err("[pgbouncer]\n%include does-not-exist.ini\n");
    let e = &errs.errors()[0];
    assert_eq!(e.kind, ErrorKind::Include);
    assert_eq!(e.location.line, Some(2));
    assert!(e.message.contains("does-not-exist.ini"), "{e}");
}

#[test]
fn comments_are_full_lines_starting_with_semicolon_or_hash() {
    let loaded = ini_ok(
        "; a comment\n# another\n   ; indented comment\n[pgbouncer] ; after header\n\
         server_reset_query = DEALLOCATE ALL ; not a comment\n\
         server_check_query = select 1 # neither\n\
         #listen_port = 1\n;listen_port = 2\n",
    );
    let s = &loaded.config.settings;
    // PgBouncer: ';' and '#' are not special later in the line.
    assert_eq!(
        s.server_reset_query.as_deref(),
        Some("DEALLOCATE ALL ; not a comment")
    );
    assert_eq!(s.server_check_query.as_deref(), Some("select 1 # neither"));
    assert_eq!(s.listen_port, 6432);
}

#[test]
fn keys_and_values_are_trimmed_and_setting_names_are_case_insensitive() {
    let loaded = ini_ok("[PgBouncer]\n\t Listen_Port\t=\t7432  \r\nauth_file = \"/etc/x y.txt\"\n");
    assert_eq!(loaded.config.settings.listen_port, 7432);
    assert_eq!(
        loaded.config.settings.auth_file,
        Some(PathBuf::from("/etc/x y.txt"))
    );
}

#[test]
fn quoted_connstring_values_follow_libpq_and_pgbouncer_quoting() {
    let loaded = ini_ok(concat!(
        "[databases]\n",
        "q = host=h1,h2 password='it''s a \\'secret\\'' application_name='my app' ",
        "pool_size = 7 reserve_pool=2 pool_mode=transaction max_db_connections=0 ",
        "client_encoding=UTF8 datestyle='ISO, MDY' timezone=UTC auth_user=auth\n",
        "\"odd \"\"name\"\"\" = dbname=x\n",
        "foodb =\n",
    ));
    let q = &loaded.config.databases["q"];
    assert_eq!(q.host, vec!["h1".to_string(), "h2".to_string()]);
    assert_eq!(
        q.password.as_ref().map(|p| p.expose()),
        Some("it's a 'secret'")
    );
    assert_eq!(q.application_name.as_deref(), Some("my app"));
    assert_eq!(q.pool_size, Some(7));
    assert_eq!(q.reserve_pool_size, Some(2));
    assert_eq!(q.pool_mode, Some(PoolMode::Transaction));
    assert_eq!(q.max_db_connections, Some(None));
    assert_eq!(q.datestyle.as_deref(), Some("ISO, MDY"));
    assert_eq!(q.auth_user.as_deref(), Some("auth"));
    assert_eq!(q.port, 5432);
    assert!(loaded.config.databases.contains_key("odd \"name\""));
    let foodb = &loaded.config.databases["foodb"];
    assert!(foodb.host.is_empty(), "empty connstring: Unix socket");
}

#[test]
fn star_is_the_fallback_database() {
    let loaded = ini_ok("[databases]\n* = host=fallback port=6000\nexact = host=e\n");
    let c = &loaded.config;
    assert!(!c.databases.contains_key("*"));
    let any = c.resolve_database("whatever").expect("fallback");
    assert_eq!(any.host, vec!["fallback".to_string()]);
    assert_eq!(any.port, 6000);
    assert_eq!(any.dbname.as_deref(), Some("whatever"));
    assert_eq!(
        c.resolve_database("exact").expect("exact").host,
        vec!["e".to_string()]
    );

    let none = ini_ok("[databases]\nexact = host=e\n");
    assert!(none.config.resolve_database("other").is_none());
}

#[test]
fn users_section_sets_per_user_overrides() {
    let loaded = ini_ok("[users]\nalice = pool_mode=transaction max_user_connections=5\n");
    let alice = &loaded.config.users["alice"];
    assert_eq!(alice.pool_mode, Some(PoolMode::Transaction));
    assert_eq!(alice.max_user_connections, Some(Some(5)));
}

#[test]
fn peers_section_is_accepted_and_ignored_with_a_warning() {
    let loaded = ini_ok("[peers]\n1 = host=/tmp/a\n2 = host=/tmp/b\n[pgbouncer]\nlisten_port=1\n");
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert_eq!(loaded.warnings[0].key, "peers");
    assert_eq!(loaded.config.settings.listen_port, 1);
}

// ---------------------------------------------------------------- values

#[test]
fn settings_take_pgbouncer_units_and_zero_disables() {
    let s = ini_ok(
        "[pgbouncer]\nquery_wait_timeout = 0\nserver_idle_timeout = 0.5\n\
         client_idle_timeout = 30\nmax_db_connections = 0\nmax_user_connections = 3\n\
         server_lifetime = 0\nserver_reset_query =\nlisten_addr = *, 127.0.0.1\n\
         unix_socket_dir =\ntcp_keepalive = 0\nserver_reset_query_always = 1\n\
         client_tls_sslmode = require\nclient_tls_cert_file = /c\nclient_tls_key_file = /k\n\
         server_tls_sslmode = verify-full\nserver_tls_ca_file = /ca\nauth_type = scram-sha-256\n",
    )
    .config
    .settings;
    assert_eq!(s.query_wait_timeout, None);
    assert_eq!(s.server_idle_timeout, Some(Duration::from_millis(500)));
    assert_eq!(s.client_idle_timeout, Some(Duration::from_secs(30)));
    assert_eq!(s.max_db_connections, None);
    assert_eq!(s.max_user_connections, Some(3));
    assert_eq!(s.server_lifetime, Duration::ZERO);
    assert_eq!(s.server_reset_query, None);
    assert_eq!(
        s.listen_addr,
        vec!["*".to_string(), "127.0.0.1".to_string()]
    );
    assert_eq!(s.unix_socket_dir, None);
    assert!(!s.tcp_keepalive);
    assert!(s.server_reset_query_always);
    assert_eq!(s.client_tls_sslmode, SslMode::Require);
    assert_eq!(s.server_tls_sslmode, SslMode::VerifyFull);
    assert_eq!(s.auth_type, AuthType::ScramSha256);
}

#[test]
fn every_invalid_value_names_file_line_and_key_and_all_are_reported() {
    let errs = ini_err(concat!(
        "[pgbouncer]\n",                      // 1
        "max_client_conn = lots\n",           // 2  not an integer
        "listen_port = 70000\n",              // 3  out of range
        "pool_mode = sometimes\n",            // 4  bad enum
        "query_timeout = -1\n",               // 5  negative seconds
        "server_lifetime = 1h\n",             // 6  not a number
        "log_connections = maybe\n",          // 7  not a boolean
        "auth_type = pam\n",                  // 8  unsupported
        "client_tls_sslmode = sometimes\n",   // 9 bad enum
        "just some text\n",                   // 10 syntax
        "[databases]\n",                      // 11
        "bad = host=x port=abc\n",            // 12 bad connstring value
        "worse = host=x flavour=vanilla\n",   // 13 unknown connstring parameter
        "unterminated = password='hunter9\n", // 14 unterminated quote
        "pgbouncer = host=x\n",               // 15 reserved name
        "[users]\n",                          // 16
        "u = pool_mode=never\n",              // 17
    ));
    let expect = [
        (2, "pgbouncer.max_client_conn", ErrorKind::InvalidValue),
        (3, "pgbouncer.listen_port", ErrorKind::InvalidValue),
        (4, "pgbouncer.pool_mode", ErrorKind::InvalidValue),
        (5, "pgbouncer.query_timeout", ErrorKind::InvalidValue),
        (6, "pgbouncer.server_lifetime", ErrorKind::InvalidValue),
        (7, "pgbouncer.log_connections", ErrorKind::InvalidValue),
        (8, "pgbouncer.auth_type", ErrorKind::Unsupported),
        (9, "pgbouncer.client_tls_sslmode", ErrorKind::InvalidValue),
        (10, "pgbouncer", ErrorKind::Syntax),
        (12, "databases.bad", ErrorKind::InvalidValue),
        (13, "databases.worse", ErrorKind::UnknownParameter),
        (14, "databases.unterminated", ErrorKind::Syntax),
        (15, "databases.pgbouncer", ErrorKind::InvalidValue),
        (17, "users.u", ErrorKind::InvalidValue),
    ];
    let got: Vec<_> = errs
        .errors()
        .iter()
        .map(|e| {
            (
                e.location.line.unwrap_or(0),
                e.key.clone().unwrap_or_default(),
                e.kind,
            )
        })
        .collect();
    let want: Vec<_> = expect
        .iter()
        .map(|(l, k, kind)| (*l, k.to_string(), *kind))
        .collect();
    assert_eq!(got, want, "{errs}");
    for e in errs.errors() {
        let text = e.to_string();
        let line = e.location.line.unwrap_or(0);
        assert!(text.starts_with(&format!("test.ini:{line}: ")), "{text}");
    }
    let text = errs.to_string();
    assert!(
        text.contains("test.ini:8: pgbouncer.auth_type: auth_type 'pam' is not supported"),
        "{text}"
    );
    assert!(
        text.contains("test.ini:13: databases.worse: unrecognized connection parameter 'flavour'"),
        "{text}"
    );
    assert!(!text.contains("hunter9"), "no password in errors: {text}");
}

#[test]
fn inconsistent_settings_are_errors_pointing_at_the_setting() {
    let errs = ini_err("[pgbouncer]\nlisten_port = 1\nauth_type = hba\n");
    let e = &errs.errors()[0];
    assert_eq!(e.kind, ErrorKind::Inconsistent);
    assert_eq!(e.key.as_deref(), Some("pgbouncer.auth_type"));
    assert_eq!(e.location.line, Some(3));

    let errs = ini_err("[pgbouncer]\nclient_tls_sslmode = require\n");
    assert!(errs.to_string().contains("client_tls_cert_file"), "{errs}");
}

#[test]
fn unknown_setting_warns_naming_section_and_key() {
    let loaded = ini_ok("[pgbouncer]\nlisten_port = 1\nfrobnicate = yes\n[mystery]\nx = 1\n");
    let keys: Vec<_> = loaded.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, vec!["pgbouncer.frobnicate", "mystery"]);
    assert_eq!(loaded.warnings[0].location.line, Some(3));
    assert!(loaded.warnings[0]
        .to_string()
        .starts_with("test.ini:3: pgbouncer.frobnicate"));
}

#[test]
fn pgbouncer_settings_pgherd_does_not_act_on_are_accepted_and_shown() {
    let loaded = ini_ok(
        "[pgbouncer]\nso_reuseport = 1\ndns_max_ttl = 15\ndns_zone_check_period = 60\nunix_socket_mode = 0700\n",
    );
    // Default value: silent. Non-default: a warning, not an error. (unix_socket_mode
    // and so_reuseport are acted on, by the listeners: no warning.)
    let keys: Vec<_> = loaded.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, vec!["pgbouncer.dns_zone_check_period"]);
    let rows = loaded.config.show_config();
    let row = |k: &str| rows.iter().find(|r| r.key == k).expect(k).clone();
    assert_eq!(row("so_reuseport").value, "1");
    assert_eq!(row("unix_socket_mode").value, "0700");
    assert!(!row("unix_socket_mode").changeable);
    assert!(ini_err("[pgbouncer]\nso_reuseport = perhaps\n")
        .to_string()
        .contains("pgbouncer.so_reuseport"));
}

#[test]
fn show_config_lists_every_setting_with_value_default_and_changeable() {
    let loaded = PoolerConfig::from_ini_file(&fixture("tutorial/pgbouncer.ini")).expect("loads");
    let rows = loaded.config.show_config();
    assert_eq!(rows.len(), SETTINGS.len());
    let row = |k: &str| rows.iter().find(|r| r.key == k).expect(k).clone();
    assert_eq!(row("listen_port").value, "6432");
    assert!(!row("listen_port").changeable);
    assert!(!row("listen_addr").changeable);
    assert!(!row("unix_socket_dir").changeable);
    assert!(!row("pidfile").changeable);
    assert_eq!(row("stats_users").value, "stats,postgres");
    assert_eq!(row("max_client_conn").value, "100");
    assert!(row("max_client_conn").changeable);
    assert_eq!(row("query_wait_timeout").value, "120");
    assert_eq!(row("query_wait_timeout").default, "120");
    assert_eq!(row("auth_type").value, "md5");
}

// ---------------------------------------------------------------- reload

#[test]
fn reload_diff_marks_listen_settings_as_needing_a_restart() {
    let old = ini_ok("[databases]\na = host=x password=s1\n[pgbouncer]\nlisten_port = 6432\ndefault_pool_size = 20\n").config;
    let new = ini_ok("[databases]\na = host=x password=s2\nb = host=y\n[pgbouncer]\nlisten_port = 7000\ndefault_pool_size = 30\n").config;
    let changes = diff(&old, &new);
    let keys: Vec<_> = changes
        .iter()
        .map(|c| (c.key.as_str(), c.changeable))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("pgbouncer.default_pool_size", true),
            ("pgbouncer.listen_port", false),
            ("databases.a", true),
            ("databases.b", true),
        ]
    );
    let shown = format!("{changes:?}");
    assert!(!shown.contains("s1") && !shown.contains("s2"), "{shown}");
    assert_eq!(old.restart_required(&new).len(), 1);
    assert!(diff(&old, &old.clone()).is_empty());
}

// ---------------------------------------------------------------- userlist

#[test]
fn userlist_quotes_escape_by_doubling_and_secrets_are_classified() {
    let users = Userlist::load(&fixture("userlist_escapes.txt")).expect("loads");
    assert_eq!(users.len(), 5);
    assert_eq!(users.get("say \"hi\"").map(|s| s.expose()), Some("pa\"ss"));
    assert_eq!(
        users.get("postgres").map(|s| s.kind()),
        Some(SecretKind::Plain)
    );
    assert_eq!(
        users.get("md5user").map(|s| s.kind()),
        Some(SecretKind::Md5)
    );
    assert_eq!(
        users.get("scram").map(|s| s.kind()),
        Some(SecretKind::ScramVerifier)
    );
    assert_eq!(users.get("indented").map(|s| s.expose()), Some(""));
}

#[test]
fn malformed_userlist_lines_are_errors_with_line_numbers_and_no_password() {
    let text = "\"ok\" \"fine\"\nnot quoted\n\"open \"hunter2\n\"u\" \"hunter3\n\"v\" \"SCRAM-SHA-256$hunter4\"\n\"\" \"x\"\n";
    let errs = Userlist::parse(text, Path::new("userlist.txt")).expect_err("malformed");
    let lines: Vec<_> = errs.errors().iter().map(|e| e.location.line).collect();
    assert_eq!(lines, vec![Some(2), Some(3), Some(4), Some(5), Some(6)]);
    let text = errs.to_string();
    for secret in ["hunter2", "hunter3", "hunter4"] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(!format!("{errs:?}").contains("hunter"));
}

// ---------------------------------------------------------------- hba

fn conn<'a>(local: bool, tls: bool, addr: &str, database: &'a str, user: &'a str) -> ConnInfo<'a> {
    ConnInfo {
        local,
        tls,
        addr: addr.parse::<IpAddr>().expect("ip"),
        database,
        user,
        replication: false,
    }
}

#[test]
fn hba_rules_apply_first_match() {
    let rules = HbaRules::load(&fixture("hba.conf")).expect("loads");
    assert_eq!(rules.rules.len(), 8);
    let m = |c: ConnInfo<'_>| rules.matches(&c);

    // local → peer for postgres only; others fall through to no match.
    assert_eq!(
        m(conn(true, false, "0.0.0.0", "db", "postgres")),
        Some(HbaMethod::Peer)
    );
    assert_eq!(m(conn(true, false, "0.0.0.0", "db", "alice")), None);
    // TLS from 10/8 → scram before the md5 rule for alice.
    assert_eq!(
        m(conn(false, true, "10.1.2.3", "app", "alice")),
        Some(HbaMethod::ScramSha256)
    );
    // Without TLS: the md5 rule (netmask form), database list incl. quoted "all" as a name.
    assert_eq!(
        m(conn(false, false, "10.1.2.3", "app", "bob")),
        Some(HbaMethod::Md5)
    );
    assert_eq!(
        m(conn(false, false, "10.1.2.3", "all", "bob")),
        Some(HbaMethod::Md5)
    );
    assert_eq!(m(conn(false, false, "10.2.0.1", "app", "bob")), None);
    // sameuser over IPv6 loopback.
    assert_eq!(
        m(conn(false, false, "::1", "carl", "carl")),
        Some(HbaMethod::Trust)
    );
    assert_eq!(m(conn(false, false, "::1", "other", "carl")), None);
    // reject wins for mallory before anything later; IPv4-mapped IPv6 matches IPv4 rules.
    assert_eq!(
        m(conn(false, false, "::ffff:8.8.8.8", "db", "mallory")),
        Some(HbaMethod::Reject)
    );
    // @file user list.
    assert_eq!(
        m(conn(false, false, "8.8.8.8", "db", "dave")),
        Some(HbaMethod::Password)
    );
    // hostnossl only without TLS.
    assert_eq!(
        m(conn(false, false, "192.168.3.4", "db", "zed")),
        Some(HbaMethod::Md5)
    );
    assert_eq!(m(conn(false, true, "192.168.3.4", "db", "zed")), None);
    // Replication connections match only the replication keyword.
    let mut repl = conn(false, false, "192.168.1.1", "db", "repl");
    repl.replication = true;
    assert_eq!(rules.first_match(&repl).map(|r| r.line), Some(6));
}

#[test]
fn hba_errors_name_the_line() {
    let text = "host all all 10.0.0.0/33 md5\nhost all all samenet md5\nlocal all all ldap\nhost all all 1.2.3.4 md5\nhost all +grp all md5\nhost all all all trust\n";
    let errs = HbaRules::parse(text, Path::new("hba.conf")).expect_err("bad");
    let lines: Vec<_> = errs.errors().iter().map(|e| e.location.line).collect();
    assert_eq!(lines, vec![Some(1), Some(2), Some(3), Some(4), Some(5)]);
}

// ---------------------------------------------------------------- YAML

#[test]
fn yaml_databases_accept_a_mapping_of_connstring_keys() {
    let loaded = yaml(
        "databases:\n  a: {host: [h1, h2], port: 5433, password: \"it's\", pool_mode: transaction}\n  \"*\": host=fb\n  empty:\nusers:\n  bob: {max_user_connections: 4}\n  carol: pool_mode=statement\n",
    )
    .expect("loads");
    let c = &loaded.config;
    assert_eq!(
        c.databases["a"].host,
        vec!["h1".to_string(), "h2".to_string()]
    );
    assert_eq!(c.databases["a"].port, 5433);
    assert_eq!(
        c.databases["a"].password.as_ref().map(|p| p.expose()),
        Some("it's")
    );
    assert!(c.databases["empty"].host.is_empty());
    assert!(c.fallback_database.is_some());
    assert_eq!(c.users["bob"].max_user_connections, Some(Some(4)));
    assert_eq!(c.users["carol"].pool_mode, Some(PoolMode::Statement));
}

#[test]
fn yaml_cluster_and_routes_are_parsed_and_validated() {
    let loaded = yaml(
        "pgbouncer:\n  listen_port: 6432\ncluster:\n  scope: batman\n  etcd3:\n    hosts: 10.0.0.1:2379,10.0.0.2:2379\nroutes:\n  - listen_port: 6432\n    role: primary\n  - {listen_port: 6433, role: replica}\n",
    )
    .expect("loads");
    let c = &loaded.config;
    let cluster = c.cluster.as_ref().expect("cluster");
    assert_eq!(cluster.scope.as_deref(), Some("batman"));
    assert_eq!(cluster.namespace, "/service/");
    assert_eq!(
        cluster.etcd3.hosts,
        vec!["10.0.0.1:2379".to_string(), "10.0.0.2:2379".to_string()]
    );
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[1].role, RouteRole::Replica);

    let errs = yaml(
        "routes:\n  - listen_port: 1\n    role: primary\n  - listen_port: 1\n    role: sideways\n",
    )
    .expect_err("bad");
    let keys: Vec<_> = errs
        .errors()
        .iter()
        .map(|e| e.key.clone().unwrap_or_default())
        .collect();
    assert!(keys.contains(&"routes[1].role".to_string()), "{errs}");
    assert!(
        keys.contains(&"routes".to_string()),
        "routes without cluster: {errs}"
    );
    let role = errs
        .errors()
        .iter()
        .find(|e| e.key.as_deref() == Some("routes[1].role"))
        .expect("role");
    assert_eq!(role.location.line, Some(5));

    let errs = yaml("cluster:\n  scope: x\n  etcd3: {hosts: [a:1]}\nroutes:\n  - {listen_port: 7, role: any}\n  - {listen_port: 7, role: primary}\n").expect_err("dup");
    assert!(errs.to_string().contains("already used"), "{errs}");
}

#[test]
fn a_route_listener_serves_each_database_in_its_role() {
    let loaded = yaml(
        "pgbouncer:\n  listen_port: 6432\ndatabases:\n  app: {dbname: appdb}\n  pinned: host=10.0.0.9\n  checked: {host: 'a,b', check: http}\n  '*': ''\ncluster:\n  scope: batman\n  etcd3: {hosts: [10.0.0.1:2379]}\nroutes:\n  - {listen_port: 6432, role: primary}\n  - {listen_port: 6433, role: replica}\n",
    )
    .expect("loads");
    let c = &loaded.config;
    let (name, db) = c.database_for("app", Some(6433)).expect("routed");
    assert_eq!(name, "app@replica");
    assert_eq!(db.role, Some(RouteRole::Replica));
    assert_eq!(db.dbname.as_deref(), Some("appdb"));
    let spec = db.route(Some("batman")).expect("follows the cluster");
    assert_eq!(
        (spec.scope.as_str(), spec.role),
        ("batman", RouteRole::Replica)
    );
    // The pools' names resolve back (SHOW POOLS, RELOAD, PAUSE).
    assert_eq!(c.resolve_database("app@replica"), Some(db));
    assert_eq!(
        c.database_for("app", Some(6432)).expect("rw").0,
        "app@primary"
    );
    // Not on a route's port: the database as configured.
    assert_eq!(c.database_for("app", Some(7000)).expect("plain").0, "app");
    // Health-checked hosts take the route's role; a fixed host cannot.
    let (_, checked) = c.database_for("checked", Some(6433)).expect("checked");
    assert_eq!(checked.health().expect("health").role, RouteRole::Replica);
    assert!(c.database_for("pinned", Some(6433)).is_none());
    // The `*` fallback serves any name.
    let (name, other) = c.database_for("other", Some(6433)).expect("fallback");
    assert_eq!(
        (name.as_str(), other.dbname.as_deref()),
        ("other@replica", Some("other"))
    );

    let errs = yaml(
        "databases:\n  app: {dbname: appdb}\ncluster:\n  etcd3: {hosts: [a:1]}\nroutes:\n  - {listen_port: 7, role: replica}\n",
    )
    .expect_err("no scope");
    assert!(errs.to_string().contains("databases.app"), "{errs}");
}

#[test]
fn yaml_errors_name_file_line_and_key_and_unknown_keys_warn() {
    let errs = yaml("pgbouncer:\n  listen_port: 6432\n  max_client_conn: many\n").expect_err("bad");
    assert_eq!(
        errs.to_string(),
        "pooler.yml:3: pgbouncer.max_client_conn: invalid value 'many': expected a non-negative integer"
    );
    let loaded = yaml("pgbouncer:\n  nonsense: 1\nextra: {}\n").expect("loads");
    let keys: Vec<_> = loaded.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, vec!["pgbouncer.nonsense", "extra"]);
    let errs = yaml("pgbouncer: [\n").expect_err("syntax");
    assert_eq!(errs.errors()[0].kind, ErrorKind::Syntax);
}

// ---------------------------------------------------------------- secrets & robustness

#[test]
fn no_password_appears_in_debug_output() {
    let loaded = ini_ok("[databases]\nd = host=h password=TopSecret1\n* = password='TopSecret2'\n[pgbouncer]\nauth_ldap_options = ldapbindpasswd=TopSecret3\n");
    let users = Userlist::parse(
        "\"u\" \"TopSecret4\"\n\"m\" \"md5a3556571e93b0d20722ba62be61e8c2d\"\n",
        Path::new("u.txt"),
    )
    .expect("users");
    let everything = format!("{loaded:?}{:?}{users:?}{:?}", loaded.config, users.get("u"));
    for secret in [
        "TopSecret1",
        "TopSecret2",
        "TopSecret3",
        "TopSecret4",
        "a3556571e93b",
    ] {
        assert!(
            !everything.contains(secret),
            "{secret} leaked: {everything}"
        );
    }
    assert!(everything.contains("<redacted>"));
}

/// A tiny deterministic generator, so the test needs no extra crate.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn arbitrary_input_never_panics() {
    let seeds = [
        std::fs::read_to_string(fixture("tutorial/pgbouncer.ini")).expect("ini"),
        std::fs::read_to_string(fixture("tutorial/pooler.yml")).expect("yml"),
        std::fs::read_to_string(fixture("hba.conf")).expect("hba"),
        std::fs::read_to_string(fixture("userlist_escapes.txt")).expect("users"),
    ];
    let alphabet: Vec<char> = "[]=;#%\"'\\,/ :-*@\n\tabc019.é".chars().collect();
    let mut rng = Lcg(42);
    let dir = fixture("");
    for round in 0..3000 {
        let mut chars: Vec<char> = seeds[round % seeds.len()].chars().collect();
        for _ in 0..(1 + rng.next() % 8) {
            let pos = (rng.next() as usize) % (chars.len() + 1);
            let c = alphabet[(rng.next() as usize) % alphabet.len()];
            match rng.next() % 3 {
                0 if pos < chars.len() => chars[pos] = c,
                1 if pos < chars.len() => {
                    chars.remove(pos);
                }
                _ => chars.insert(pos, c),
            }
        }
        let text: String = chars.into_iter().collect();
        let name = dir.join("fuzz.ini");
        let _ = PoolerConfig::from_ini_str(&text, &name);
        let _ = PoolerConfig::from_yaml_str(&text, &name);
        let _ = Userlist::parse(&text, &name);
        let _ = HbaRules::parse(&text, &dir.join("fuzz.conf"));
    }
}

#[test]
fn admin_set_uses_the_same_rules_as_the_files() {
    let mut s = PoolerConfig::default().settings;
    assert_eq!(s.apply("Default_Pool_Size", "7"), Ok(()));
    assert_eq!(s.default_pool_size, 7);
    assert!(s.apply("default_pool_size", "-1").is_err());
    assert!(s.apply("no_such_thing", "1").is_err());
    assert_eq!(s.get("default_pool_size").as_deref(), Some("7"));
}

#[test]
fn routed_databases_follow_a_cluster_named_in_the_pgherd_section() {
    let loaded = ini_ok(
        "[databases]\n\
         app = cluster=batman role=primary dbname=app\n\
         app_ro = role=replica dbname=app max_lag=16MB fallback=none balance=round_robin\n\
         plain = host=db1 dbname=plain\n\
         [pgbouncer]\n\
         listen_port = 6432\n\
         [pgherd]\n\
         etcd_hosts = 10.0.0.1:2379, 10.0.0.2:2379\n\
         scope = robin\n\
         dcs_timeout = 4\n\
         metrics_listen = 127.0.0.1:9127\n",
    );
    let c = &loaded.config;
    let store = c.cluster.as_ref().expect("the [pgherd] store");
    assert_eq!(store.etcd3.hosts, ["10.0.0.1:2379", "10.0.0.2:2379"]);
    assert_eq!(store.namespace, "/service/");
    assert_eq!(store.scope.as_deref(), Some("robin"));
    assert_eq!(store.dcs_timeout, Duration::from_secs(4));
    assert!(c.settings.metrics_listen.is_some(), "pgherd settings too");
    let app = c.databases["app"].route(Some("robin")).expect("routed");
    assert_eq!(
        (app.scope.as_str(), app.role),
        ("batman", RouteRole::Primary)
    );
    let ro = c.databases["app_ro"].route(Some("robin")).expect("routed");
    assert_eq!((ro.scope.as_str(), ro.role), ("robin", RouteRole::Replica));
    assert_eq!(ro.max_lag, Some(16 << 20));
    assert_eq!(ro.fallback, Fallback::None);
    assert_eq!(ro.balance, Balance::RoundRobin);
    assert!(c.databases["plain"].route(Some("robin")).is_none());

    // The same in YAML.
    let yaml = yaml(
        "pgbouncer:\n  listen_port: 6432\n\
         pgherd:\n  metrics_listen: 127.0.0.1:9127\n\
         cluster:\n  scope: robin\n  etcd3:\n    hosts: [10.0.0.1:2379, 10.0.0.2:2379]\n  dcs_timeout: 4\n\
         databases:\n  app: {cluster: batman, role: primary, dbname: app}\n  \
         app_ro: {role: replica, dbname: app, max_lag: 16MB, fallback: none, balance: round_robin}\n  \
         plain: {host: db1, dbname: plain}\n",
    )
    .expect("yaml loads");
    assert_eq!(yaml.config.cluster, c.cluster);
    assert_eq!(yaml.config.databases, c.databases);
}

#[test]
fn routed_databases_need_the_store_and_no_host() {
    let e = ini_err("[databases]\napp = cluster=batman dbname=app\n[pgbouncer]\nlisten_port = 1\n")
        .to_string();
    assert!(e.contains("needs the store"), "{e}");
    let e = ini_err("[databases]\napp = role=replica host=db1\n[pgherd]\netcd_hosts = e:2379\n")
        .to_string();
    assert!(e.contains("no cluster to route to"), "{e}");
    assert!(e.contains("host= and cluster="), "{e}");
    let e =
        ini_err("[databases]\napp = role=sideways max_lag=lots\n[pgherd]\nscope = s\n").to_string();
    assert!(e.contains("role: invalid value 'sideways'"), "{e}");
    assert!(e.contains("max_lag: invalid value 'lots'"), "{e}");
    assert!(e.contains("[pgherd] needs etcd_hosts"), "{e}");
}

#[test]
fn health_checked_servers_take_haproxy_keys_and_libpq_port_lists() {
    let loaded = ini_ok(
        "[databases]\n\
         app = host=db1,db2 port=5432,5433 check=http check_port=8008,8009 inter=1.5 fall=2 rise=1\n\
         ro = host=db1,db2 check=sql role=replica\n",
    );
    let app = loaded.config.databases["app"].health().expect("checked");
    assert_eq!(app.kind, CheckKind::Http);
    let hosts: Vec<_> = app
        .servers
        .iter()
        .map(|s| (s.host.as_str(), s.port, s.check_port))
        .collect();
    assert_eq!(hosts, [("db1", 5432, 8008), ("db2", 5433, 8009)]);
    assert_eq!(
        (app.inter, app.fall, app.rise),
        (Duration::from_millis(1500), 2, 1)
    );
    assert_eq!(app.role, RouteRole::Primary);
    let ro = loaded.config.databases["ro"].health().expect("checked");
    assert_eq!((ro.kind, ro.role), (CheckKind::Sql, RouteRole::Replica));
    assert_eq!(
        (ro.inter, ro.fall, ro.rise),
        (Duration::from_secs(2), 3, 2),
        "HAProxy's defaults"
    );
    assert!(
        loaded.config.databases["ro"].route(None).is_none(),
        "no cluster needed"
    );

    let e = ini_err(
        "[databases]\n\
         a = check=http\n\
         b = host=x,y,z port=1,2 check=sql\n\
         c = host=x fall=2\n\
         d = host=x check=tcp\n",
    )
    .to_string();
    assert!(e.contains("check= needs host="), "{e}");
    assert!(e.contains("port: 2 values for 3 hosts"), "{e}");
    assert!(e.contains("need check=http or check=sql"), "{e}");
    assert!(e.contains("check: invalid value 'tcp'"), "{e}");
}
