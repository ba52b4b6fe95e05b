//! The REST API answers Patroni's paths with Patroni's status codes and JSON fields, for
//! a primary and for a replica, over real HTTP (GET and HAProxy's OPTIONS).

use pgherd_dcs::{Cluster, ClusterStatus, HistoryEntry, Member, MemberData, Versioned};
use pgherd_ha::runner::default_ha_config;
use pgherd_ha::{NodeStatus, Role, SharedStatus};
use std::time::Instant;

fn cluster() -> Cluster {
    let member = |name: &str, port: u16, lsn: u64| Member {
        name: name.into(),
        data: MemberData {
            conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
            api_url: format!("http://127.0.0.1:{}/patroni", port + 1000),
            state: "running".into(),
            role: "replica".into(),
            xlog_location: Some(lsn),
            timeline: Some(2),
            ..Default::default()
        },
    };
    Cluster {
        initialize: Some("7300000000000000001".into()),
        config: Some(Versioned {
            value: serde_json::json!({"ttl": 30, "loop_wait": 10}),
            version: 3,
        }),
        leader: Some(Versioned {
            value: "node1".into(),
            version: 4,
        }),
        members: vec![
            member("node1", 5432, 50 << 20),
            member("node2", 5433, 30 << 20),
        ],
        history: vec![HistoryEntry {
            timeline: 1,
            lsn: 1234,
            reason: "pgherd: leader lost".into(),
            timestamp: "2026-11-29T10:00:00+00:00".into(),
            new_leader: "node1".into(),
        }],
        status: Some(ClusterStatus {
            optime: 50 << 20,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn status(role: Role, wal_lsn: u64) -> SharedStatus {
    let mut s = NodeStatus::new(
        "node",
        "demo",
        "http://127.0.0.1:8008/patroni".into(),
        "postgres://127.0.0.1:5432/postgres".into(),
        default_ha_config(),
        Default::default(),
    );
    s.running = true;
    s.role = role;
    s.in_recovery = role == Role::Replica;
    s.holds_leader = role == Role::Primary;
    s.state = if role == Role::Replica {
        "streaming"
    } else {
        "running"
    }
    .into();
    s.timeline = Some(2);
    s.wal_lsn = Some(wal_lsn);
    s.cluster = Some(cluster());
    s.last_tick = Some(Instant::now());
    s.system_identifier = Some("7300000000000000001".into());
    SharedStatus::new(s)
}

async fn serve(status: SharedStatus) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(pgherd_ha::api::serve(
        listener,
        status,
        None,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

async fn code(base: &str, method: reqwest::Method, path: &str) -> u16 {
    pgherd_http::client::default_client()
        .expect("HTTP client")
        .request(method, format!("{base}{path}"))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

async fn get_json(base: &str, path: &str) -> serde_json::Value {
    pgherd_http::client::default_client()
        .expect("HTTP client")
        .get(format!("{base}{path}"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn primary_answers_200_only_on_primary_paths() {
    let base = serve(status(Role::Primary, 50 << 20)).await;
    for path in [
        "/",
        "/primary",
        "/leader",
        "/master",
        "/read-write",
        "/read-only",
        "/health",
        "/liveness",
        "/readiness",
    ] {
        assert_eq!(
            code(&base, reqwest::Method::GET, path).await,
            200,
            "GET {path}"
        );
    }
    for path in ["/replica", "/async", "/sync"] {
        assert_eq!(
            code(&base, reqwest::Method::GET, path).await,
            503,
            "GET {path}"
        );
    }
    // HAProxy's `option httpchk OPTIONS /primary`, and HEAD.
    assert_eq!(code(&base, reqwest::Method::OPTIONS, "/primary").await, 200);
    assert_eq!(code(&base, reqwest::Method::HEAD, "/primary").await, 200);
    assert_eq!(code(&base, reqwest::Method::OPTIONS, "/replica").await, 503);

    let p = get_json(&base, "/patroni").await;
    assert_eq!(p["role"], "primary");
    assert_eq!(p["state"], "running");
    assert_eq!(p["timeline"], 2);
    assert_eq!(p["xlog"]["location"], 50u64 << 20);
    assert_eq!(p["database_system_identifier"], "7300000000000000001");
    assert_eq!(p["patroni"]["scope"], "demo");
}

#[tokio::test]
async fn replica_answers_200_on_replica_paths_and_honours_the_lag_limit() {
    // 20 MB behind the leader's last known position.
    let base = serve(status(Role::Replica, 30 << 20)).await;
    for path in [
        "/replica",
        "/read-only",
        "/async",
        "/health",
        "/replica?lag=32MB",
        "/replica?lag=50000000",
    ] {
        assert_eq!(
            code(&base, reqwest::Method::GET, path).await,
            200,
            "GET {path}"
        );
    }
    for path in [
        "/",
        "/primary",
        "/master",
        "/replica?lag=16MB",
        "/replica?lag=1048576",
        "/replica?lag=nonsense",
    ] {
        assert_eq!(
            code(&base, reqwest::Method::GET, path).await,
            503,
            "GET {path}"
        );
    }
    // 20 MB is beyond maximum_lag_on_failover (1 MB): not ready to take traffic.
    assert_eq!(code(&base, reqwest::Method::GET, "/readiness").await, 503);
    let p = get_json(&base, "/patroni").await;
    assert_eq!(p["role"], "replica");
    assert_eq!(p["replication_state"], "streaming");
    assert!(p["xlog"]["received_location"].is_u64(), "{p}");
}

#[tokio::test]
async fn cluster_history_and_config_use_patronis_shapes() {
    let base = serve(status(Role::Replica, 30 << 20)).await;
    let c = get_json(&base, "/cluster").await;
    assert_eq!(c["scope"], "demo");
    assert_eq!(c["members"][0]["name"], "node1");
    assert_eq!(c["members"][0]["role"], "leader");
    assert_eq!(c["members"][0]["port"], 5432);
    assert_eq!(c["members"][1]["role"], "replica");
    assert_eq!(c["members"][1]["lag"], 20u64 << 20);
    let h = get_json(&base, "/history").await;
    assert_eq!(
        h,
        serde_json::json!([[
            1,
            1234,
            "pgherd: leader lost",
            "2026-11-29T10:00:00+00:00",
            "node1"
        ]])
    );
    assert_eq!(get_json(&base, "/config").await["ttl"], 30);
}

#[tokio::test]
async fn stopped_postgres_fails_health_and_a_stale_loop_fails_liveness() {
    let st = status(Role::Replica, 0);
    st.update(|s| {
        s.running = false;
        s.state = "stopped".into();
        s.last_tick = Some(Instant::now() - std::time::Duration::from_secs(120));
    });
    let base = serve(st).await;
    for path in ["/health", "/liveness", "/replica", "/read-only", "/primary"] {
        assert_eq!(
            code(&base, reqwest::Method::GET, path).await,
            503,
            "GET {path}"
        );
    }
}

/// `PATCH /config` merges with Patroni's rules by compare-and-set, `PUT /config` replaces;
/// both need `restapi.authentication`'s credentials and refuse a config pgherd would not
/// start with, naming the key.
#[tokio::test]
async fn patch_and_put_config_change_the_dcs_with_basic_auth_and_checks() {
    use pgherd_dcs::memory::{MemoryDcs, MemoryStore};
    use pgherd_dcs::Dcs;
    use std::sync::Arc;
    use std::time::Duration;

    let store = MemoryStore::new();
    let dcs: Arc<dyn Dcs> = Arc::new(MemoryDcs::new(
        store.clone(),
        "/service",
        "demo",
        "node1",
        Duration::from_secs(30),
    ));
    let initial = serde_json::json!({"ttl": 30, "loop_wait": 10, "retry_timeout": 10,
        "postgresql": {"parameters": {"work_mem": "4MB", "max_connections": 100}}});
    assert!(dcs.set_config(&initial, Some(0)).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let control = pgherd_ha::api::Control {
        dcs: dcs.clone(),
        auth: Some(pgherd_ha::spec::ApiAuth {
            username: "admin".into(),
            password: "s3cret".into(),
        }),
        agent: None,
        http: pgherd_http::client::default_client().expect("HTTP client"),
    };
    tokio::spawn(pgherd_ha::api::serve(
        listener,
        status(Role::Primary, 0),
        Some(control),
        std::future::pending(),
    ));
    let http = pgherd_http::client::default_client().expect("HTTP client");
    let send = |method: reqwest::Method, body: &str, auth: Option<(&str, &str)>| {
        let mut r = http
            .request(method, format!("{base}/config"))
            .body(body.to_string());
        if let Some((u, p)) = auth {
            r = r.basic_auth(u, Some(p));
        }
        r.send()
    };
    let good = Some(("admin", "s3cret"));
    let patch = r#"{"loop_wait": 5, "postgresql": {"parameters": {"work_mem": null, "shared_buffers": "256MB"}}}"#;

    // Without credentials, or with wrong ones: 401 and Patroni's realm; nothing written.
    for auth in [None, Some(("admin", "wrong")), Some(("other", "s3cret"))] {
        let r = send(reqwest::Method::PATCH, patch, auth).await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"Patroni\"");
    }
    assert_eq!(
        dcs.get_cluster().await.unwrap().config.unwrap().value,
        initial
    );

    let r = send(reqwest::Method::PATCH, patch, good).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let merged: serde_json::Value = r.json().await.unwrap();
    let expected = serde_json::json!({"ttl": 30, "loop_wait": 5, "retry_timeout": 10,
        "postgresql": {"parameters": {"shared_buffers": "256MB", "max_connections": 100}}});
    assert_eq!(merged, expected);
    assert_eq!(
        dcs.get_cluster().await.unwrap().config.unwrap().value,
        expected
    );

    // Unsafe timings and wrong types are refused with the key; bodies that are not an
    // object are refused too.
    let r = send(reqwest::Method::PATCH, r#"{"ttl": 8}"#, good)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("must not exceed ttl"));
    let r = send(reqwest::Method::PATCH, r#"{"pause": "maybe"}"#, good)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("pause: expected true or false"));
    for body in ["[1]", "not json"] {
        let r = send(reqwest::Method::PATCH, body, good).await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{body}");
    }
    assert_eq!(
        dcs.get_cluster().await.unwrap().config.unwrap().value,
        expected
    );

    // PUT replaces the whole config.
    let whole = r#"{"ttl": 20, "loop_wait": 4, "retry_timeout": 8, "pause": true}"#;
    let r = send(reqwest::Method::PUT, whole, good).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        dcs.get_cluster().await.unwrap().config.unwrap().value,
        serde_json::from_str::<serde_json::Value>(whole).unwrap()
    );

    // A problem another tool wrote (patronictl edit-config does not check the timings)
    // does not block an unrelated change such as `patronictl pause`; a new one does.
    let foreign = serde_json::json!({"ttl": 10, "loop_wait": 3, "retry_timeout": 4});
    dcs.set_config(&foreign, None).await.unwrap();
    let r = send(reqwest::Method::PATCH, r#"{"pause": true}"#, good)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = send(reqwest::Method::PATCH, r#"{"use_slots": "x"}"#, good)
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "an unknown key is kept, not refused"
    );
    let r = send(reqwest::Method::PATCH, r#"{"pause": "maybe"}"#, good)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

/// Send `request` raw from `from` (an address on loopback) and read what comes back until
/// the server closes or `within` passes.
async fn raw(from: &str, base: &str, request: &[u8], within: std::time::Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// Hostile or broken clients get an error naming the problem, and the API keeps
/// answering everyone else: huge and slow bodies, slow headers, malformed JSON, wrong
/// methods, and more connections from one address than it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_errors_and_the_api_keeps_answering_others() {
    use pgherd_dcs::memory::{MemoryDcs, MemoryStore};
    use pgherd_dcs::Dcs;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    let dcs: Arc<dyn Dcs> = Arc::new(MemoryDcs::new(
        MemoryStore::new(),
        "/service",
        "demo",
        "node1",
        Duration::from_secs(30),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let control = pgherd_ha::api::Control {
        dcs,
        auth: None,
        agent: None,
        http: pgherd_http::client::default_client().expect("HTTP client"),
    };
    tokio::spawn(pgherd_ha::api::serve(
        listener,
        status(Role::Primary, 0),
        Some(control),
        std::future::pending(),
    ));
    let http = pgherd_http::client::default_client().expect("HTTP client");
    let health = || async {
        let started = std::time::Instant::now();
        let code = pgherd_http::client::default_client()
            .expect("HTTP client")
            .get(format!("{base}/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map(|r| r.status().as_u16());
        (code.ok(), started.elapsed())
    };

    // A body announced as 100 MB: refused at once, before it is sent.
    let huge = raw(
        "127.0.0.1",
        &base,
        b"PATCH /config HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n{",
        Duration::from_secs(5),
    )
    .await;
    assert!(huge.starts_with("HTTP/1.1 413"), "{huge}");
    // Malformed JSON and wrong methods.
    let bad = http
        .patch(format!("{base}/config"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    assert!(bad.text().await.unwrap().to_lowercase().contains("json"));
    for (method, path) in [
        (reqwest::Method::DELETE, "/patroni"),
        (reqwest::Method::PUT, "/switchover"),
        (reqwest::Method::POST, "/history"),
    ] {
        let r = http
            .request(method.clone(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 405, "{method} {path}");
    }

    // One address opens more connections than it may and leaves them hanging mid-header;
    // another sends a body that never ends.
    let mut hanging = Vec::new();
    for _ in 0..40 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        let addr = base.trim_start_matches("http://").parse().unwrap();
        let mut s = socket.connect(addr).await.expect("connect");
        s.write_all(b"GET /patroni HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        hanging.push(s);
    }
    let slow_body = {
        let base = base.clone();
        tokio::spawn(async move {
            let request =
                b"POST /switchover HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"leader\":";
            raw("127.0.0.4", &base, request, Duration::from_secs(20)).await
        })
    };
    // Everyone else is served at once meanwhile.
    for _ in 0..5 {
        let (code, took) = health().await;
        assert_eq!(code, Some(200));
        assert!(took < Duration::from_secs(1), "{took:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The hanging address gets no more connections served...
    let refused = raw(
        "127.0.0.3",
        &base,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(refused.is_empty(), "{refused}");
    // ...until the server closes its hanging ones (header read timeout), and the slow
    // body gets 408.
    let slow = slow_body.await.unwrap();
    assert!(slow.starts_with("HTTP/1.1 408"), "{slow}");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let again = raw(
            "127.0.0.3",
            &base,
            b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        if again.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hanging connections were never closed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(hanging);
}

/// `POST /failsafe` (failsafe mode): a replica accepts a primary that cannot reach the
/// DCS and says so in `/patroni`; a primary refuses; without failsafe mode, or without
/// the credentials when `restapi.authentication` is set, nothing is accepted.
#[tokio::test]
async fn failsafe_posts_are_accepted_by_replicas_only() {
    use pgherd_dcs::memory::{MemoryDcs, MemoryStore};
    use std::sync::Arc;
    use std::time::Duration;

    let serve_with_auth = |status: SharedStatus| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let control = pgherd_ha::api::Control {
            dcs: Arc::new(MemoryDcs::new(
                MemoryStore::new(),
                "/service",
                "demo",
                "node2",
                Duration::from_secs(30),
            )),
            auth: Some(pgherd_ha::spec::ApiAuth {
                username: "admin".into(),
                password: "s3cret".into(),
            }),
            agent: None,
            http: pgherd_http::client::default_client().expect("HTTP client"),
        };
        tokio::spawn(pgherd_ha::api::serve(
            listener,
            status,
            Some(control),
            std::future::pending(),
        ));
        base
    };
    let http = pgherd_http::client::default_client().expect("HTTP client");
    let post = |base: String, body: &'static str, auth: bool| {
        let mut r = http.post(format!("{base}/failsafe")).body(body);
        if auth {
            r = r.basic_auth("admin", Some("s3cret"));
        }
        async move { r.send().await.expect("POST /failsafe") }
    };
    let leader = r#"{"name": "node1", "conn_url": "postgres://127.0.0.1:5432/postgres",
                     "api_url": "http://127.0.0.1:8008/patroni"}"#;

    // Failsafe mode off: 502, as Patroni answers.
    let replica = status(Role::Replica, 30 << 20);
    let base = serve_with_auth(replica.clone()).await;
    assert_eq!(post(base.clone(), leader, true).await.status(), 502);
    assert_eq!(code(&base, reqwest::Method::GET, "/failsafe").await, 502);

    replica.update(|s| s.ha.failsafe_mode = true);
    assert_eq!(post(base.clone(), leader, false).await.status(), 401);
    assert_eq!(post(base.clone(), "{not json", true).await.status(), 400);
    assert_eq!(
        post(base.clone(), r#"{"conn_url": "x"}"#, true)
            .await
            .status(),
        400
    );
    assert!(get_json(&base, "/patroni")
        .await
        .get("failsafe_mode_is_active")
        .is_none());

    let accepted = post(base.clone(), leader, true).await;
    assert_eq!(accepted.status(), 200);
    let lsn = accepted
        .headers()
        .get("lsn")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(lsn.as_deref(), Some((30u64 << 20).to_string().as_str()));
    assert_eq!(accepted.text().await.unwrap(), "Accepted");
    assert_eq!(
        get_json(&base, "/patroni").await["failsafe_mode_is_active"],
        true
    );
    let heard = replica.get().failsafe_heard.map(|(name, _)| name);
    assert_eq!(heard.as_deref(), Some("node1"));

    // A writable primary never accepts another primary.
    let primary = status(Role::Primary, 50 << 20);
    primary.update(|s| s.ha.failsafe_mode = true);
    let base = serve_with_auth(primary).await;
    let refused = post(base, leader, true).await;
    assert_eq!(refused.status(), 500);
    assert_eq!(refused.text().await.unwrap(), "Running as a leader");
}
