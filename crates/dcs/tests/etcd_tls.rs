//! etcd over TLS with client certificates and user/password authentication, against a
//! real etcd (`--client-cert-auth`, auth enabled through the gRPC API as `etcdctl auth
//! enable` does).

use pgherd_dcs::etcd::rpc::EtcdClient;
use pgherd_dcs::etcd::{EtcdAccess, EtcdAuth, EtcdTls};
use pgherd_dcs::{Dcs, DcsError, EtcdDcs, MemberData};
use pgherd_testkit::etcd::{EtcdServer, EtcdTlsFiles};
use pgherd_testkit::init_tracing;
use pgherd_testkit::tls::Pki;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);
const USER: &str = "pgherd";
const PASSWORD: &str = "etcd pass";

fn pem(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).expect("read PEM")
}

/// TLS toward `etcd`: trusting `ca`, presenting the client certificate when `identity`.
fn tls(pki: &Pki, ca: &std::path::Path, identity: bool) -> EtcdTls {
    EtcdTls {
        ca: Some(pem(ca)),
        identity: identity.then(|| (pem(&pki.client_cert), pem(&pki.client_key))),
    }
}

fn access(etcd: &EtcdServer, tls: EtcdTls, auth: Option<(&str, &str)>) -> EtcdAccess {
    EtcdAccess {
        endpoints: vec![etcd.endpoint()],
        tls: Some(tls),
        auth: auth.map(|(u, p)| EtcdAuth {
            username: u.into(),
            password: p.into(),
        }),
    }
}

/// An etcd that wants client certificates, with authentication enabled and a user
/// `pgherd` (role root); its tokens expire after `token_ttl` seconds unused.
async fn secured_etcd(pki: &Pki, token_ttl: Option<u32>) -> EtcdServer {
    init_tracing();
    let etcd = EtcdServer::start_tls(EtcdTlsFiles {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        trusted_ca: pki.ca.clone(),
        client_cert_auth: true,
        auth_token_ttl: token_ttl,
    })
    .expect("start etcd with TLS");
    let admin = EtcdClient::with_access(&access(&etcd, tls(pki, &pki.ca, true), None), TIMEOUT)
        .expect("admin client");
    admin
        .enable_auth("root pass", &[(USER, PASSWORD)])
        .await
        .expect("enable etcd authentication");
    etcd
}

async fn connect(access: &EtcdAccess) -> Result<EtcdDcs, DcsError> {
    EtcdDcs::connect_with(access, "/service", "tls", "m1", TIMEOUT * 3, TIMEOUT).await
}

fn member() -> MemberData {
    MemberData {
        conn_url: "postgres://127.0.0.1:5432/postgres".into(),
        api_url: "https://127.0.0.1:8008/patroni".into(),
        state: "running".into(),
        role: "primary".into(),
        ..MemberData::default()
    }
}

#[tokio::test]
async fn a_member_works_over_tls_with_a_client_certificate_and_a_password() {
    let pki = Pki::new().expect("certificates");
    let etcd = secured_etcd(&pki, None).await;
    let good = access(&etcd, tls(&pki, &pki.ca, true), Some((USER, PASSWORD)));
    let dcs = connect(&good)
        .await
        .expect("connect with TLS and a password");
    dcs.touch_member(&member()).await.expect("touch_member");
    assert!(dcs.acquire_leader().await.expect("acquire_leader"));
    assert!(dcs
        .update_leader()
        .await
        .expect("update_leader (lease renewal)"));
    let cluster = dcs.get_cluster().await.expect("get_cluster");
    assert_eq!(cluster.leader_name(), Some("m1"));
    assert_eq!(cluster.members.len(), 1);
    assert_eq!(
        cluster.members[0].data.api_url,
        "https://127.0.0.1:8008/patroni"
    );

    // A second handle's write wakes the first one's watch: the watch stream carries the
    // token too.
    let other = EtcdDcs::connect_with(&good, "/service", "tls", "m2", TIMEOUT * 3, TIMEOUT)
        .await
        .expect("second handle");
    let watching = tokio::spawn(async move {
        let woke = dcs.watch(Duration::from_secs(5)).await;
        (dcs, woke)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let config = serde_json::json!({"ttl": 30});
    assert!(other
        .set_config(&config, None)
        .await
        .expect("m2 set_config"));
    let (_dcs, woke) = watching.await.expect("watch task");
    assert!(woke.expect("watch"), "the watch did not wake up");
}

#[tokio::test]
async fn wrong_credentials_missing_certificates_and_untrusted_servers_are_clear_errors() {
    let pki = Pki::new().expect("certificates");
    let etcd = secured_etcd(&pki, None).await;

    // A wrong password: etcd's answer, naming the user, and not "unreachable".
    let e = connect(&access(
        &etcd,
        tls(&pki, &pki.ca, true),
        Some((USER, "wrong")),
    ))
    .await
    .map(|_| ())
    .expect_err("a wrong password must fail");
    let text = e.to_string();
    assert!(matches!(e, DcsError::Request(_)), "{text}");
    assert!(
        text.contains("authentication") && text.contains(USER),
        "{text}"
    );
    assert!(!text.contains("wrong"), "the password leaked: {text}");

    // No user at all while etcd requires authentication (the client certificate's CN
    // is no etcd user).
    let e = connect(&access(&etcd, tls(&pki, &pki.ca, true), None))
        .await
        .map(|_| ())
        .expect_err("no credentials must fail");
    assert!(matches!(e, DcsError::Request(_)), "{e}");

    // No client certificate: etcd (--client-cert-auth) ends the handshake.
    let e = connect(&access(
        &etcd,
        tls(&pki, &pki.ca, false),
        Some((USER, PASSWORD)),
    ))
    .await
    .map(|_| ())
    .expect_err("no client certificate must fail");
    assert!(matches!(e, DcsError::Unreachable(_)), "{e}");

    // A CA that did not sign etcd's certificate: we do not talk to it.
    let e = connect(&access(
        &etcd,
        tls(&pki, &pki.other_ca, true),
        Some((USER, PASSWORD)),
    ))
    .await
    .map(|_| ())
    .expect_err("an untrusted server must fail");
    assert!(matches!(e, DcsError::Unreachable(_)), "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");

    // Plain HTTP to a TLS port does not work either.
    let plain = EtcdAccess {
        endpoints: vec![etcd.endpoint().replace("https://", "http://")],
        tls: None,
        auth: Some(EtcdAuth {
            username: USER.into(),
            password: PASSWORD.into(),
        }),
    };
    assert!(connect(&plain).await.is_err());
}

/// etcd forgets a (simple) token unused for `--auth-token-ttl`: the client's next
/// request is refused with "invalid auth token", and the client authenticates again and
/// sends it once more, so the caller sees no error.
#[tokio::test]
async fn a_token_etcd_no_longer_knows_is_renewed() {
    let pki = Pki::new().expect("certificates");
    let etcd = secured_etcd(&pki, Some(1)).await;
    let good = access(&etcd, tls(&pki, &pki.ca, true), Some((USER, PASSWORD)));
    let client = EtcdClient::with_access(&good, TIMEOUT).expect("client");
    client.put("/k", "v1", 0).await.expect("put");
    // etcd checks its simple tokens' TTL every second or so.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = client
        .range("/k", false)
        .await
        .expect("range with an expired token");
    assert_eq!(
        r.kvs.first().map(|kv| kv.value.clone()),
        Some(b"v1".to_vec())
    );
    assert!(
        etcd.log_tail().contains("invalid auth token"),
        "etcd did not refuse the old token: the test proves nothing"
    );

    // The member handle (watch, lease keep-alive) too.
    let dcs = connect(&good).await.expect("connect");
    dcs.touch_member(&member()).await.expect("touch_member");
    tokio::time::sleep(Duration::from_secs(3)).await;
    dcs.touch_member(&member())
        .await
        .expect("touch_member (lease keep-alive) with an expired token");
    let mut woke = Ok(false);
    // A watch with an expired token may fail once; the next one authenticates again.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        woke = dcs.watch(Duration::from_millis(300)).await;
        if woke.is_ok() {
            break;
        }
    }
    assert!(woke.is_ok(), "watch after the token expired: {woke:?}");
    dcs.get_cluster().await.expect("get_cluster");
}
