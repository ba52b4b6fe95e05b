//! The TLS and authentication keys of the node config (`restapi`, `ctl`, `etcd3`):
//! what they load into, and errors that name the key and the file.

use pgherd_cli::config::{self, DcsConfig, Loaded};
use pgherd_http::VerifyClient;
use pgherd_testkit::tls::Pki;

fn minimal(restapi: &str, etcd3: &str, rest: &str) -> String {
    format!(
        "scope: demo\nname: node1\nrestapi:\n  listen: 127.0.0.1:8008\n{restapi}\
         etcd3:\n  hosts: 127.0.0.1:2379\n{etcd3}\
         postgresql:\n  listen: 127.0.0.1:5432\n  data_dir: /tmp/data\n  authentication:\n    \
         superuser:\n      username: postgres\n    replication:\n      username: replicator\n\
         {rest}"
    )
}

fn ok(yaml: &str) -> Loaded {
    match config::parse(yaml, "test.yml") {
        Ok(l) => l,
        Err(e) => panic!("expected the config to load, got:\n{e}\n{yaml}"),
    }
}

fn err(yaml: &str) -> String {
    match config::parse(yaml, "test.yml") {
        Ok(l) => panic!("expected an error, got {:#?}", l.config),
        Err(e) => e.to_string(),
    }
}

#[test]
fn restapi_tls_keys_load_and_the_api_url_is_https() {
    let pki = Pki::new().expect("certificates");
    let restapi = format!(
        "  certfile: {}\n  keyfile: {}\n  keyfile_password: ignored-for-a-plain-key\n  \
         cafile: {}\n  verify_client: Required\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    );
    let l = ok(&minimal(&restapi, "", ""));
    let tls = l.config.restapi.tls.as_ref().expect("restapi TLS");
    assert_eq!(tls.verify_client, VerifyClient::Required);
    assert_eq!(tls.certfile.path, pki.server_cert);
    // Without ctl.cacert, clients trust restapi.cafile (as Patroni).
    let cacert = l.config.client_tls.cacert.as_ref().expect("client CA");
    assert_eq!(cacert.key, "restapi.cafile");
    assert!(!l.config.client_tls.insecure);
    let debug = format!("{:?}", l.config);
    assert!(!debug.contains("ignored-for-a-plain-key"), "{debug}");

    // The spec publishes https:// (checked through the node's mapping).
    let spec = pgherd_cli::node::spec_from_config(
        &l.config,
        pgherd_postgres::Binaries::find(Some(std::path::Path::new("/usr/lib/postgresql/15/bin")))
            .expect("PostgreSQL 15 binaries"),
        None,
    )
    .expect("spec");
    assert_eq!(spec.api_url(), "https://127.0.0.1:8008/patroni");
}

#[test]
fn restapi_tls_mistakes_name_the_key_and_the_file() {
    let pki = Pki::new().expect("certificates");
    let missing = pki.dir().join("nope.pem");
    let e = err(&minimal(
        &format!("  certfile: {}\n", missing.display()),
        "",
        "",
    ));
    assert!(
        e.contains("restapi.certfile") && e.contains(&missing.display().to_string()),
        "{e}"
    );
    let e = err(&minimal(
        &format!(
            "  certfile: {}\n  keyfile: {}\n",
            pki.server_cert.display(),
            pki.client_key.display()
        ),
        "",
        "",
    ));
    assert!(e.contains("restapi.keyfile"), "{e}");
    let e = err(&minimal(
        &format!(
            "  certfile: {}\n  keyfile: {}\n  keyfile_password: pw\n",
            pki.server_cert.display(),
            pki.encrypted_key.display()
        ),
        "",
        "",
    ));
    assert!(
        e.contains("restapi.keyfile") && e.contains("encrypted"),
        "{e}"
    );
    let e = err(&minimal(
        &format!(
            "  certfile: {}\n  keyfile: {}\n  verify_client: sometimes\n",
            pki.server_cert.display(),
            pki.server_key.display()
        ),
        "",
        "",
    ));
    assert!(
        e.contains("restapi.verify_client") && e.contains("sometimes"),
        "{e}"
    );
    let e = err(&minimal(
        &format!(
            "  certfile: {}\n  keyfile: {}\n  verify_client: optional\n",
            pki.server_cert.display(),
            pki.server_key.display()
        ),
        "",
        "",
    ));
    assert!(
        e.contains("restapi.verify_client") && e.contains("cafile"),
        "{e}"
    );
    // Without certfile the API serves plain HTTP; the other keys are reported.
    let l = ok(&minimal("  verify_client: required\n", "", ""));
    assert!(l.config.restapi.tls.is_none());
    assert!(
        l.warnings
            .iter()
            .any(|w| w.starts_with("restapi.verify_client")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn ctl_tls_keys_load_and_bad_files_are_errors() {
    let pki = Pki::new().expect("certificates");
    let ctl = format!(
        "ctl:\n  insecure: true\n  cacert: {}\n  certfile: {}\n  keyfile: {}\n  \
         authentication:\n    username: a\n    password: b\n",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let l = ok(&minimal("", "", &ctl));
    let c = &l.config.client_tls;
    assert!(c.insecure);
    assert_eq!(
        c.cacert.as_ref().map(|f| f.key.as_str()),
        Some("ctl.cacert")
    );
    assert_eq!(c.certfile.as_ref().map(|f| &f.path), Some(&pki.client_cert));
    assert!(
        l.warnings
            .iter()
            .any(|w| w.starts_with("ctl.authentication")),
        "{:?}",
        l.warnings
    );
    assert!(
        !l.warnings.iter().any(|w| w.starts_with("ctl:")),
        "{:?}",
        l.warnings
    );

    let missing = pki.dir().join("nope.key");
    let e = err(&minimal(
        "",
        "",
        &format!(
            "ctl:\n  certfile: {}\n  keyfile: {}\n",
            pki.client_cert.display(),
            missing.display()
        ),
    ));
    assert!(
        e.contains("ctl.keyfile") && e.contains(&missing.display().to_string()),
        "{e}"
    );
    let e = err(&minimal("", "", "ctl:\n  insecure: maybe\n"));
    assert!(e.contains("ctl.insecure"), "{e}");
}

#[test]
fn etcd3_tls_and_authentication_keys_load() {
    let pki = Pki::new().expect("certificates");
    let etcd3 = format!(
        "  protocol: https\n  cacert: {}\n  cert: {}\n  key: {}\n  username: pgherd\n  \
         password: etcd-secret\n",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let l = ok(&minimal("", &etcd3, ""));
    let access = l.config.dcs.etcd_access();
    assert_eq!(access.endpoints, ["https://127.0.0.1:2379"]);
    let tls = access.tls.as_ref().expect("TLS");
    assert!(tls.ca.is_some() && tls.identity.is_some());
    let auth = access.auth.as_ref().expect("auth");
    assert_eq!(
        (auth.username.as_str(), auth.password.as_str()),
        ("pgherd", "etcd-secret")
    );
    let debug = format!("{:?} {:?}", l.config, access);
    assert!(!debug.contains("etcd-secret"), "{debug}");

    // https:// URLs work without `protocol`.
    let l = ok(&minimal(
        "",
        &format!(
            "  url: https://10.0.0.1:2379\n  cacert: {}\n",
            pki.ca.display()
        ),
        "",
    )
    .replace("  hosts: 127.0.0.1:2379\n", ""));
    let DcsConfig::Etcd { endpoints, .. } = &l.config.dcs;
    assert_eq!(endpoints, &["https://10.0.0.1:2379"]);
}

#[test]
fn etcd3_mistakes_name_the_key_and_the_file() {
    let pki = Pki::new().expect("certificates");
    let missing = pki.dir().join("nope.pem");
    let e = err(&minimal(
        "",
        &format!("  protocol: https\n  cacert: {}\n", missing.display()),
        "",
    ));
    assert!(
        e.contains("etcd3.cacert") && e.contains(&missing.display().to_string()),
        "{e}"
    );
    let e = err(&minimal(
        "",
        &format!(
            "  protocol: https\n  cacert: {}\n  cert: {}\n  key: {}\n",
            pki.ca.display(),
            pki.client_cert.display(),
            pki.server_cert.display()
        ),
        "",
    ));
    assert!(e.contains("etcd3.key"), "{e}");
    // A key, but of another certificate.
    let e = err(&minimal(
        "",
        &format!(
            "  protocol: https\n  cacert: {}\n  cert: {}\n  key: {}\n",
            pki.ca.display(),
            pki.client_cert.display(),
            pki.server_key.display()
        ),
        "",
    ));
    assert!(e.contains("etcd3.key") && e.contains("does not fit"), "{e}");
    let e = err(&minimal("", "  password: lonely\n", ""));
    assert!(e.contains("etcd3.password") && !e.contains("lonely"), "{e}");
    // TLS files for plain http are reported, not used.
    let l = ok(&minimal(
        "",
        &format!("  cacert: {}\n", pki.ca.display()),
        "",
    ));
    assert!(l.config.dcs.etcd_access().tls.is_none());
    assert!(
        l.warnings.iter().any(|w| w.starts_with("etcd3.cacert")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn patroni_variables_set_the_tls_keys() {
    let pki = Pki::new().expect("certificates");
    let ca = pki.ca.display().to_string();
    let cert = pki.server_cert.display().to_string();
    let key = pki.server_key.display().to_string();
    let vars = [
        ("PATRONI_RESTAPI_CERTFILE", cert.as_str()),
        ("PATRONI_RESTAPI_KEYFILE", key.as_str()),
        ("PATRONI_RESTAPI_CAFILE", ca.as_str()),
        ("PATRONI_RESTAPI_VERIFY_CLIENT", "optional"),
        ("PATRONI_CTL_INSECURE", "true"),
        ("PATRONI_ETCD3_PROTOCOL", "https"),
        ("PATRONI_ETCD3_CACERT", ca.as_str()),
        ("PATRONI_ETCD3_USERNAME", "pgherd"),
        ("PATRONI_ETCD3_PASSWORD", "pw"),
    ];
    let l = config::parse_with_env(&minimal("", "", ""), "test.yml", vars).expect("loads");
    let tls = l.config.restapi.tls.as_ref().expect("restapi TLS");
    assert_eq!(tls.verify_client, VerifyClient::Optional);
    assert!(l.config.client_tls.insecure);
    let access = l.config.dcs.etcd_access();
    assert_eq!(access.endpoints, ["https://127.0.0.1:2379"]);
    assert_eq!(access.auth.map(|a| a.username).as_deref(), Some("pgherd"));
}
