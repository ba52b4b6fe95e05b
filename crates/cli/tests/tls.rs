//! TLS and authentication with Patroni's keys, with real processes: `pgherd node`
//! members serving their REST API over HTTPS (with and without required client
//! certificates) and reaching etcd over TLS with a user and password, `pgherd ctl`
//! using `ctl.cacert`/`certfile`/`keyfile`, HAProxy health-checking with `check-ssl`,
//! and a pooler following the cluster through the same etcd.

mod common;

use common::*;
use pgherd_dcs::etcd::rpc::EtcdClient;
use pgherd_dcs::etcd::{EtcdAccess, EtcdAuth, EtcdTls};
use pgherd_http::{ClientTls, TlsFile};
use pgherd_testkit::etcd::{EtcdServer, EtcdTlsFiles};
use pgherd_testkit::tls::Pki;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ETCD_USER: &str = "pgherd";
const ETCD_PASSWORD: &str = "etcd pass";

fn pem(path: &Path) -> Vec<u8> {
    fs::read(path).expect("read PEM")
}

/// An etcd on HTTPS (demanding client certificates when `client_certs`) with
/// authentication enabled and the user `pgherd`; how the test reaches it.
async fn secured_etcd(pki: &Pki, client_certs: bool) -> (EtcdServer, EtcdAccess) {
    let etcd = EtcdServer::start_tls(EtcdTlsFiles {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        trusted_ca: pki.ca.clone(),
        client_cert_auth: client_certs,
        auth_token_ttl: None,
    })
    .expect("start etcd with TLS");
    let tls = EtcdTls {
        ca: Some(pem(&pki.ca)),
        identity: Some((pem(&pki.client_cert), pem(&pki.client_key))),
    };
    let mut access = EtcdAccess {
        endpoints: vec![etcd.endpoint()],
        tls: Some(tls),
        auth: None,
    };
    EtcdClient::with_access(&access, Duration::from_secs(5))
        .expect("etcd admin client")
        .enable_auth("root pass", &[(ETCD_USER, ETCD_PASSWORD)])
        .await
        .expect("enable etcd authentication");
    access.auth = Some(EtcdAuth {
        username: ETCD_USER.into(),
        password: ETCD_PASSWORD.into(),
    });
    (etcd, access)
}

/// A member's config with Patroni's TLS keys: `etcd3` over https with a user (and
/// `etcd_extra`), `restapi_extra` at the top of `restapi`, and a `ctl` section.
fn tls_config(
    yaml: String,
    endpoint: &str,
    pki: &Pki,
    etcd_extra: &str,
    restapi_extra: &str,
    ctl: &str,
) -> String {
    let plain = format!("etcd3:\n  hosts: {endpoint}\n");
    assert!(
        yaml.contains(&plain),
        "unexpected etcd3 section in:\n{yaml}"
    );
    let host = endpoint.replace("https://", "");
    let etcd3 = format!(
        "etcd3:\n  protocol: https\n  hosts: {host}\n  cacert: {}\n  username: {ETCD_USER}\n  \
         password: {ETCD_PASSWORD}\n{etcd_extra}",
        pki.ca.display()
    );
    let yaml = yaml.replace(&plain, &etcd3).replace(
        "restapi:\n",
        &format!(
            "restapi:\n  certfile: {}\n  keyfile: {}\n{restapi_extra}",
            pki.server_cert.display(),
            pki.server_key.display()
        ),
    );
    format!("{yaml}\nctl:\n{ctl}")
}

fn trust(pki: &Pki) -> ClientTls {
    ClientTls {
        cacert: Some(TlsFile::new("test", &pki.ca)),
        ..ClientTls::default()
    }
}

fn with_client_cert(pki: &Pki) -> ClientTls {
    ClientTls {
        certfile: Some(TlsFile::new("test", &pki.client_cert)),
        keyfile: Some(TlsFile::new("test", &pki.client_key)),
        ..trust(pki)
    }
}

async fn wait_primary(cluster: &TestCluster, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while cluster.primary().await.as_deref() != Some(want) {
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!("{want} did not become the primary within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `text` without ANSI colour codes (the agent's log has them).
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // Up to and including the final letter of the escape sequence.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `pgherd ctl` succeeded; its output.
fn ctl_ok(cluster: &TestCluster, args: &[&str]) -> String {
    let out = cluster.ctl(args);
    let text = text(&out);
    if !out.status.success() {
        cluster.dump_logs();
        panic!("pgherd ctl {args:?} failed:\n{text}");
    }
    text
}

/// HTTPS without client certificates: members publish `https://` API URLs, plain HTTP
/// and clients that do not trust the CA get nothing, `ctl` works with `ctl.cacert`,
/// HAProxy checks `/primary` with `check-ssl verify none`, and etcd is reached over
/// TLS with a user and password.
#[tokio::test]
async fn rest_api_over_https_for_ctl_haproxy_and_switchover() {
    let _serial = SERIAL.lock().await;
    pgherd_testkit::init_tracing();
    let pki = Pki::new().expect("certificates");
    let (etcd, access) = secured_etcd(&pki, false).await;
    let endpoint = etcd.endpoint();
    let ctl = format!("  cacert: {}\n", pki.ca.display());
    let mut cluster = TestCluster::with_etcd(2, etcd, access, |_, _, yaml| {
        tls_config(yaml, &endpoint, &pki, "", "", &ctl)
    });
    for n in &mut cluster.nodes {
        n.api_tls = Some(trust(&pki));
    }
    cluster.start_all();
    let primary = cluster.wait_healthy(1, Duration::from_secs(120)).await;
    let replica = cluster.other_than(&primary);

    // The member keys carry https:// URLs, as Patroni's do.
    let keys = cluster.keys().await;
    for m in &keys.members {
        assert!(
            m.data.api_url.starts_with("https://127.0.0.1:"),
            "{}: {}",
            m.name,
            m.data.api_url
        );
    }

    // Plain HTTP to the HTTPS port, and HTTPS without trusting the CA: no answer.
    let port = cluster.node(&primary).api_port;
    assert_eq!(api_get(port, "/primary").await.0, 0);
    assert_eq!(
        api_get_tls(port, "/primary", &ClientTls::default()).await.0,
        0
    );
    // `ctl.insecure`: encrypted, not verified.
    let insecure = ClientTls {
        insecure: true,
        ..ClientTls::default()
    };
    assert_eq!(api_get_tls(port, "/primary", &insecure).await.0, 200);

    // HAProxy health-checks over TLS and routes to the primary.
    let haproxy =
        HaProxy::start_checking(cluster.dir.path(), &cluster.nodes, "check-ssl verify none");
    haproxy
        .wait_routes_to(cluster.node(&primary).pg_port, Duration::from_secs(30))
        .await;

    // ctl reads etcd (TLS, user and password) and calls the REST APIs (ctl.cacert).
    let list = ctl_ok(&cluster, &["list"]);
    assert!(list.contains(&primary) && list.contains(&replica), "{list}");
    let reload = ctl_ok(&cluster, &["reload", "--force"]);
    assert_eq!(reload.matches("Success: reload").count(), 2, "{reload}");
    let out = ctl_ok(
        &cluster,
        &["switchover", "--candidate", &replica, "--force"],
    );
    assert!(out.contains("Successfully switched over"), "{out}");
    wait_primary(&cluster, &replica, Duration::from_secs(60)).await;
    haproxy
        .wait_routes_to(cluster.node(&replica).pg_port, Duration::from_secs(30))
        .await;

    // A ctl that trusts nothing cannot call the REST APIs; with ctl.insecure (or
    // patronictl's `-k`) it can.
    let cfg = fs::read_to_string(&cluster.nodes[0].config_path).expect("config");
    let (head, _) = cfg.rsplit_once("\nctl:\n").expect("ctl section");
    for (ctl, flag, works) in [
        ("  insecure: false\n", None, false),
        ("  insecure: true\n", None, true),
        ("  insecure: false\n", Some("-k"), true),
        ("  insecure: false\n", Some("--insecure"), true),
    ] {
        let path = cluster.dir.path().join("ctl-only.yml");
        fs::write(&path, format!("{head}\nctl:\n{ctl}")).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_pgherd"))
            .args(["ctl", "-c"])
            .arg(&path)
            .args(flag)
            .args(["reload", "--force"])
            .output()
            .expect("run ctl");
        let text = text(&out);
        assert_eq!(
            text.matches("Success: reload").count(),
            if works { 2 } else { 0 },
            "{ctl} {flag:?}: {text}"
        );
    }
}

/// `verify_client: required`: no connection without a certificate the CA signed; the
/// members present `ctl.certfile` to each other (a failover asks the survivors over
/// HTTPS), ctl and a REST switchover work, and a pooler follows the cluster through an
/// etcd that demands client certificates and a password.
#[tokio::test]
async fn required_client_certificates_for_members_ctl_and_the_pooler() {
    let _serial = SERIAL.lock().await;
    pgherd_testkit::init_tracing();
    let pki = Pki::new().expect("certificates");
    let (etcd, access) = secured_etcd(&pki, true).await;
    let endpoint = etcd.endpoint();
    let client_files = format!(
        "  cert: {}\n  key: {}\n",
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let restapi = format!(
        "  cafile: {}\n  verify_client: required\n",
        pki.ca.display()
    );
    let ctl = format!(
        "  certfile: {}\n  keyfile: {}\n",
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let mut cluster = TestCluster::with_etcd(3, etcd, access, |_, _, yaml| {
        tls_config(yaml, &endpoint, &pki, &client_files, &restapi, &ctl)
    });
    for n in &mut cluster.nodes {
        n.api_tls = Some(with_client_cert(&pki));
    }
    cluster.start_all();
    let primary = cluster.wait_healthy(2, Duration::from_secs(180)).await;
    let port = cluster.node(&primary).api_port;

    // Without a client certificate, or with one another CA signed: no answer.
    assert_eq!(api_get_tls(port, "/patroni", &trust(&pki)).await.0, 0);
    let stranger = ClientTls {
        certfile: Some(TlsFile::new("test", &pki.stranger_cert)),
        keyfile: Some(TlsFile::new("test", &pki.stranger_key)),
        ..trust(&pki)
    };
    assert_eq!(api_get_tls(port, "/patroni", &stranger).await.0, 0);
    assert_eq!(
        api_get_tls(port, "/patroni", &with_client_cert(&pki))
            .await
            .0,
        200
    );

    // ctl: etcd and the REST APIs with the client certificate (ctl.certfile and
    // restapi.cafile as the CA, as Patroni does without ctl.cacert).
    let reload = ctl_ok(&cluster, &["reload", "--force"]);
    assert_eq!(reload.matches("Success: reload").count(), 3, "{reload}");

    // A pooler following the cluster through the same etcd ([pgherd] keys).
    let pooler = Pooler::start(&cluster, &pki, ETCD_PASSWORD);
    pooler
        .wait_routes_to(cluster.node(&primary).pg_port, Duration::from_secs(30))
        .await;

    // A switchover through the REST API.
    let candidate = cluster.other_than(&primary);
    let http = pgherd_http::client::client(&with_client_cert(&pki), None).expect("client");
    let answer = http
        .post(format!("https://127.0.0.1:{port}/switchover"))
        .json(&serde_json::json!({"leader": primary, "candidate": candidate}))
        .send()
        .await
        .expect("POST /switchover");
    let code = answer.status().as_u16();
    assert_eq!(code, 200, "{}", answer.text().await.unwrap_or_default());
    wait_primary(&cluster, &candidate, Duration::from_secs(60)).await;
    pooler
        .wait_routes_to(cluster.node(&candidate).pg_port, Duration::from_secs(30))
        .await;

    // Both replicas follow the new primary's timeline before it goes.
    assert_eq!(
        cluster.wait_healthy(2, Duration::from_secs(60)).await,
        candidate
    );

    // A failover: the survivors ask each other's REST API over HTTPS, presenting
    // their certificate; only the dead member cannot be asked.
    cluster.node_mut(&candidate).kill_node();
    let survivors: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.name != candidate)
        .map(|n| n.name.clone())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let new_primary = loop {
        if let Some(p) = cluster.primary().await.filter(|p| p != &candidate) {
            break p;
        }
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!("no failover within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(survivors.contains(&new_primary));
    // The new primary asked the other survivor (over HTTPS, with its certificate)
    // before taking the leader key.
    let other = survivors
        .iter()
        .find(|s| **s != new_primary)
        .expect("a second survivor");
    let log = without_colours(&cluster.node(&new_primary).agent_log());
    let asked = log
        .lines()
        .filter(|l| l.contains("asked the other members"))
        .any(|l| l.contains(&format!("answered={other}")));
    assert!(asked, "{new_primary} did not ask {other}:\n{log}");
    assert!(
        !log.contains(&format!("cannot ask {other} ")),
        "{new_primary} could not ask {other}:\n{log}"
    );
    pooler
        .wait_routes_to(cluster.node(&new_primary).pg_port, Duration::from_secs(30))
        .await;
    assert!(
        !pooler.log().contains(ETCD_PASSWORD),
        "the pooler logged the etcd password"
    );
    for n in &cluster.nodes {
        assert!(
            !n.agent_log().contains(ETCD_PASSWORD),
            "{} logged the etcd password",
            n.name
        );
    }
}

/// Mistakes in the TLS and authentication settings stop `pgherd node` and `pgherd
/// pooler` at start with a message naming the key, the file or the user.
#[tokio::test]
async fn wrong_passwords_and_bad_files_are_clear_errors() {
    let _serial = SERIAL.lock().await;
    pgherd_testkit::init_tracing();
    let pki = Pki::new().expect("certificates");
    let (etcd, access) = secured_etcd(&pki, false).await;
    let endpoint = etcd.endpoint();
    let cluster = TestCluster::with_etcd(1, etcd, access, |_, _, yaml| {
        tls_config(yaml, &endpoint, &pki, "", "", "")
    });
    let node = &cluster.nodes[0];
    let good = fs::read_to_string(&node.config_path).expect("config");
    let run = |yaml: String| {
        let path = node.dir.join("bad.yml");
        fs::write(&path, yaml).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_pgherd"))
            .args(["node", "-c"])
            .arg(&path)
            .env("PGHERD_LOG", "info")
            .output()
            .expect("run pgherd node");
        assert!(!out.status.success());
        text(&out)
    };

    let e = run(good.replace(&format!("password: {ETCD_PASSWORD}"), "password: not-it"));
    assert!(e.contains("authentication") && e.contains(ETCD_USER), "{e}");
    assert!(!e.contains("not-it"), "the password leaked: {e}");

    let missing = pki.dir().join("missing.pem");
    let e = run(good.replace(
        &format!("certfile: {}", pki.server_cert.display()),
        &format!("certfile: {}", missing.display()),
    ));
    assert!(
        e.contains("restapi.certfile") && e.contains(&missing.display().to_string()),
        "{e}"
    );

    let e = run(good.replace(
        &format!("keyfile: {}", pki.server_key.display()),
        &format!("keyfile: {}", pki.client_key.display()),
    ));
    assert!(e.contains("restapi.keyfile"), "{e}");

    let e = run(good.replace(
        &format!("cacert: {}", pki.ca.display()),
        &format!("cacert: {}", missing.display()),
    ));
    assert!(e.contains("etcd3.cacert"), "{e}");

    // The pooler: a CA file that is not there, and a wrong password.
    let e = Pooler::fails(
        &cluster,
        &pki,
        &format!("etcd_cacert = {}\n", missing.display()),
    );
    assert!(e.contains("pgherd.etcd_cacert"), "{e}");
}

/// A `pgherd pooler --ini` whose `app` follows the cluster's primary through the TLS
/// etcd; killed on drop.
struct Pooler {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Pooler {
    fn ini(cluster: &TestCluster, pki: &Pki, port: u16, store: &str) -> PathBuf {
        let dir = cluster.dir.path();
        let userlist = dir.join("userlist.txt");
        fs::write(
            &userlist,
            format!("\"postgres\" \"{SUPERUSER_PASSWORD}\"\n"),
        )
        .expect("userlist");
        let ini = dir.join(format!("pooler-{port}.ini"));
        let etcd = cluster.etcd.endpoint().replace("https://", "");
        fs::write(
            &ini,
            format!(
                "[databases]\n\
                 app = cluster={scope} role=primary dbname=postgres\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = scram-sha-256\n\
                 auth_file = {userlist}\n\
                 pool_mode = transaction\n\
                 [pgherd]\n\
                 etcd_hosts = {etcd}\n\
                 etcd_protocol = https\n\
                 etcd_cert = {cert}\n\
                 etcd_key = {key}\n\
                 etcd_username = {ETCD_USER}\n\
                 namespace = /pgherd-test/\n\
                 dcs_timeout = 5\n\
                 {store}",
                scope = cluster.scope,
                userlist = userlist.display(),
                cert = pki.client_cert.display(),
                key = pki.client_key.display(),
            ),
        )
        .expect("write ini");
        ini
    }

    fn command(ini: &Path, log: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pgherd"));
        c.arg("pooler")
            .arg("--ini")
            .arg(ini)
            .env("PGHERD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).expect("log"));
        c
    }

    fn start(cluster: &TestCluster, pki: &Pki, password: &str) -> Pooler {
        let port = pgherd_testkit::free_port();
        let store = format!(
            "etcd_cacert = {}\netcd_password = {password}\n",
            pki.ca.display()
        );
        let ini = Pooler::ini(cluster, pki, port, &store);
        let log = cluster.dir.path().join(format!("pooler-{port}.log"));
        let child = Pooler::command(&ini, &log)
            .spawn()
            .expect("start pgherd pooler");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the pooler does not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Pooler { child, port, log }
    }

    /// Run a pooler with `store` lines added; it must exit: what it printed.
    fn fails(cluster: &TestCluster, pki: &Pki, store: &str) -> String {
        let port = pgherd_testkit::free_port();
        let ini = Pooler::ini(cluster, pki, port, store);
        let log = cluster.dir.path().join(format!("pooler-{port}.log"));
        let mut child = Pooler::command(&ini, &log).spawn().expect("start pooler");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(!status.success());
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the pooler did not stop: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        fs::read_to_string(&log).unwrap_or_default()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_routes_to(&self, pg_port: u16, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let conn = format!(
                "host=127.0.0.1 port={} user=postgres password={SUPERUSER_PASSWORD} \
                 dbname=app connect_timeout=3",
                self.port
            );
            if let Ok((client, connection)) =
                tokio_postgres::connect(&conn, tokio_postgres::NoTls).await
            {
                tokio::spawn(connection);
                if let Ok(row) = client
                    .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
                    .await
                {
                    let (port, recovery): (i32, bool) = (row.get(0), row.get(1));
                    if port == i32::from(pg_port) && !recovery {
                        return;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "the pooler did not route to port {pg_port} within {within:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
