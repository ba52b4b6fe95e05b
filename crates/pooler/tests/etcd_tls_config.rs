//! The pooler's etcd over TLS and with a password: Patroni's `etcd3` keys under
//! `cluster:` in YAML, `etcd_*` keys in `[pgherd]`, and errors that name the key.

use pgherd_pooler::config::{ConfigErrors, Loaded, PoolerConfig};
use pgherd_testkit::tls::Pki;
use std::path::Path;

fn ini(text: &str) -> Result<Loaded, ConfigErrors> {
    PoolerConfig::from_ini_str(text, Path::new("test.ini"))
}

fn yaml(text: &str) -> Result<Loaded, ConfigErrors> {
    PoolerConfig::from_yaml_str(text, Path::new("pooler.yml"))
}

#[test]
fn yaml_etcd3_takes_patronis_tls_and_authentication_keys() {
    let pki = Pki::new().expect("certificates");
    let text = format!(
        "pgbouncer:\n  listen_port: 6432\ncluster:\n  scope: batman\n  etcd3:\n    \
         hosts: [127.0.0.1:2379]\n    protocol: https\n    cacert: {}\n    cert: {}\n    \
         key: {}\n    username: pooler\n    password: pool-secret\n",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let loaded = yaml(&text).expect("loads");
    let etcd3 = &loaded.config.cluster.as_ref().expect("cluster").etcd3;
    assert!(etcd3.uses_tls());
    let access = etcd3.access().expect("access");
    assert_eq!(access.endpoints, ["https://127.0.0.1:2379"]);
    let tls = access.tls.as_ref().expect("TLS");
    assert!(tls.ca.is_some() && tls.identity.is_some());
    assert_eq!(
        access.auth.as_ref().map(|a| a.password.as_str()),
        Some("pool-secret")
    );
    let debug = format!("{:?} {:?}", loaded.config, access);
    assert!(!debug.contains("pool-secret"), "{debug}");

    let e = yaml(&text.replace("protocol: https", "protocol: gopher"))
        .expect_err("a bad protocol")
        .to_string();
    assert!(e.contains("cluster.etcd3.protocol"), "{e}");
    let e = yaml(&text.replace("    username: pooler\n", ""))
        .expect_err("a password without a user")
        .to_string();
    assert!(
        e.contains("cluster.etcd3.password") && !e.contains("pool-secret"),
        "{e}"
    );
}

#[test]
fn ini_pgherd_section_takes_etcd_tls_and_authentication_keys() {
    let pki = Pki::new().expect("certificates");
    let text = format!(
        "[databases]\napp = cluster=batman role=primary dbname=app\n[pgbouncer]\n\
         listen_port = 6432\n[pgherd]\netcd_hosts = 127.0.0.1:2379\netcd_protocol = https\n\
         etcd_cacert = {}\netcd_cert = {}\netcd_key = {}\netcd_username = pooler\n\
         etcd_password = pool-secret\n",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let loaded = ini(&text).expect("loads");
    let etcd3 = &loaded.config.cluster.as_ref().expect("store").etcd3;
    let access = etcd3.access().expect("access");
    assert_eq!(access.endpoints, ["https://127.0.0.1:2379"]);
    assert_eq!(
        access.auth.as_ref().map(|a| a.username.as_str()),
        Some("pooler")
    );
    assert!(!format!("{:?}", loaded.config).contains("pool-secret"));

    // Files are read when the pooler starts: errors name the key and the file.
    let missing = pki.dir().join("nope.pem");
    let bad = text.replace(
        &format!("etcd_cacert = {}", pki.ca.display()),
        &format!("etcd_cacert = {}", missing.display()),
    );
    let loaded = ini(&bad).expect("loads");
    let e = loaded
        .config
        .cluster
        .as_ref()
        .expect("store")
        .etcd3
        .access();
    let e = e.expect_err("a missing CA file").to_string();
    assert!(
        e.starts_with("pgherd.etcd_cacert: ") && e.contains(&missing.display().to_string()),
        "{e}"
    );
    let bad = text.replace(
        &format!("etcd_key = {}", pki.client_key.display()),
        &format!("etcd_key = {}", pki.server_key.display()),
    );
    let e = ini(&bad)
        .expect("loads")
        .config
        .cluster
        .expect("store")
        .etcd3
        .access();
    let e = e.expect_err("a key of another certificate").to_string();
    assert!(
        e.starts_with("pgherd.etcd_key: ") && e.contains("does not fit"),
        "{e}"
    );
    let e = ini(&text.replace("etcd_protocol = https", "etcd_protocol = ftp"))
        .expect_err("a bad protocol")
        .to_string();
    assert!(e.contains("pgherd.etcd_protocol"), "{e}");
    // https without a CA file.
    let no_ca = text.replace(&format!("etcd_cacert = {}\n", pki.ca.display()), "");
    let e = ini(&no_ca)
        .expect("loads")
        .config
        .cluster
        .expect("store")
        .etcd3
        .access();
    assert!(e.expect_err("no CA").to_string().contains("cacert"));
}
