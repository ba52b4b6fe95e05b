//! Prometheus metrics on `metrics_listen`, scraped over HTTP from a pooler started the
//! way `pgherd pooler` starts it, in front of a real PostgreSQL.

mod common;

use common::{connect, ini_text, sqlstate, APP_PASSWORD};
use pgherd_pooler::config::PoolerConfig;
use pgherd_pooler::service::{self, Service};
use pgherd_testkit::free_port;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Tests in this file share the machine: one PostgreSQL at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// A pooler [`Service`] with `settings` added to the tests' pgbouncer.ini.
async fn service(pg: &pgherd_postgres::Instance, settings: &str) -> (Service, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let userlist = dir.path().join("userlist.txt");
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(&ini, ini_text(pg, free_port(), &userlist, settings)).expect("ini");
    std::fs::write(&userlist, format!("\"app\" \"{APP_PASSWORD}\"\n")).expect("userlist");
    let files = service::load(&ini).expect("config loads");
    let svc = Service::start(files).await.expect("pooler starts");
    (svc, dir)
}

async fn scrape_as(addr: SocketAddr, accept: Option<&str>) -> (String, String) {
    let mut req = pgherd_http::client::default_client()
        .expect("HTTP client")
        .get(format!("http://{addr}/metrics"));
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let resp = req.send().await.expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    (content_type, resp.text().await.expect("body"))
}

async fn scrape(addr: SocketAddr) -> String {
    scrape_as(addr, None).await.1
}

/// One sample line: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parse `name{k="v",…} value`, or `None` if the line is not one.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if !is_name(name) {
        return None;
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=')?;
            let key = &rest[..eq];
            if !is_name(key) {
                return None;
            }
            let mut chars = rest[eq + 1..].strip_prefix('"')?.char_indices();
            let mut value = String::new();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        _ => return None,
                    },
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_string(), value);
            rest = &rest[eq + 1 + 1 + end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let mut fields = rest.strip_prefix(' ')?.split(' ');
    let value = match fields.next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().ok()?,
    };
    // An optional timestamp, nothing else.
    if let Some(ts) = fields.next() {
        ts.parse::<f64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some((name.to_string(), labels, value))
}

/// Every line is `# HELP`, `# TYPE`, `# UNIT`, `# EOF` (last, OpenMetrics only) or a
/// sample of a declared metric; returns the samples.
fn parse_exposition(body: &str, openmetrics: bool) -> Vec<Sample> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    let lines: Vec<&str> = body.lines().collect();
    assert!(body.ends_with('\n'), "the body ends with a newline");
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.strip_prefix("# ") {
            if *line == "# EOF" {
                assert!(openmetrics, "# EOF in the Prometheus text format");
                assert_eq!(i, lines.len() - 1, "# EOF is the last line");
                continue;
            }
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(is_name(name), "bad metric name in {line:?}");
            let arg = parts.next().unwrap_or("");
            match kind {
                "HELP" => {}
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "untyped", "unknown"].contains(&arg),
                        "bad type in {line:?}"
                    );
                    assert!(
                        types.insert(name.to_string(), arg.to_string()).is_none(),
                        "{name} declared twice"
                    );
                }
                "UNIT" => assert!(openmetrics && !arg.is_empty(), "bad {line:?}"),
                _ => panic!("unexpected comment {line:?}"),
            }
            continue;
        }
        let sample = parse_sample(line).unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let declared = types.iter().any(|(family, ty)| {
            let suffixes: &[&str] = match ty.as_str() {
                "counter" => &["_total", "_created", ""],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                _ => &[""],
            };
            suffixes.iter().any(|s| sample.0 == format!("{family}{s}"))
        });
        assert!(declared, "sample of an undeclared metric: {line:?}");
        samples.push(sample);
    }
    if openmetrics {
        assert_eq!(lines.last(), Some(&"# EOF"));
    }
    samples
}

/// The value of `name` whose labels include all of `labels`.
fn value(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_sample)
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
}

const APP: [(&str, &str); 2] = [("database", "appdb"), ("user", "app")];

fn app(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut l = APP.to_vec();
    l.extend_from_slice(extra);
    l
}

/// Scrape until `cond` holds (or panic after 5 s).
async fn scrape_until(addr: SocketAddr, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = scrape(addr).await;
        if cond(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what} never showed up:\n{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_pools_clients_servers_waits_and_errors() {
    let _serial = SERIAL.lock().await;
    let server = common::postgres("metrics").await;
    let (svc, _dir) = service(
        &server.pg,
        "auth_type = md5\npool_mode = transaction\ndefault_pool_size = 1\n\
         max_client_conn = 10\nquery_wait_timeout = 1\nmetrics_listen = 127.0.0.1:0",
    )
    .await;
    let addr = svc.metrics_addr.expect("metrics listener");
    let port = svc.addrs[0].port();

    let body = scrape(addr).await;
    assert_eq!(value(&body, "pgherd_pooler_up", &[]), Some(1.0));
    assert_eq!(
        value(&body, "pgherd_pooler_max_client_conn", &[]),
        Some(10.0)
    );

    // A few queries through the pooler.
    let a = connect(port, "app", APP_PASSWORD, "appdb")
        .await
        .expect("a logs in");
    for _ in 0..3 {
        a.simple_query("SELECT 1").await.expect("query");
    }
    // The pooler hands the server back just after the client has its answer: scrape
    // once it has (bounded), between transactions.
    let mut body = scrape(addr).await;
    for _ in 0..50 {
        if value(&body, "pgherd_pooler_servers", &app(&[("state", "idle")])) == Some(1.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        body = scrape(addr).await;
    }
    let queries = value(&body, "pgherd_pooler_queries_total", &APP).expect("queries");
    assert!(queries >= 3.0, "{body}");
    assert!(value(&body, "pgherd_pooler_transactions_total", &APP).unwrap() >= 3.0);
    assert!(value(&body, "pgherd_pooler_bytes_received_total", &APP).unwrap() > 0.0);
    assert!(value(&body, "pgherd_pooler_bytes_sent_total", &APP).unwrap() > 0.0);
    assert_eq!(
        value(&body, "pgherd_pooler_server_connects_total", &APP),
        Some(1.0)
    );
    assert_eq!(value(&body, "pgherd_pooler_pool_size", &APP), Some(1.0));
    // Fixed hosts: no route to hold.
    assert_eq!(value(&body, "pgherd_pooler_route_held", &APP), Some(0.0));
    assert_eq!(
        value(&body, "pgherd_pooler_route_members", &APP),
        Some(-1.0)
    );
    // Between transactions: the client is idle, the server back in the pool.
    assert_eq!(
        value(&body, "pgherd_pooler_clients", &app(&[("state", "idle")])),
        Some(1.0)
    );
    assert_eq!(
        value(&body, "pgherd_pooler_servers", &app(&[("state", "idle")])),
        Some(1.0)
    );
    assert_eq!(
        value(&body, "pgherd_pooler_servers", &app(&[("state", "active")])),
        Some(0.0)
    );

    // `a` holds the only server inside a transaction.
    a.batch_execute("BEGIN; SELECT 1").await.expect("begin");
    let body = scrape(addr).await;
    assert_eq!(
        value(&body, "pgherd_pooler_servers", &app(&[("state", "active")])),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value(&body, "pgherd_pooler_clients", &app(&[("state", "active")])),
        Some(1.0)
    );
    let timeouts = |body: &str| {
        value(
            body,
            "pgherd_pooler_errors_total",
            &app(&[("kind", "query_wait_timeout")]),
        )
        .expect("query_wait_timeout series")
    };
    let timeouts_before = timeouts(&body);
    let waits_before = value(&body, "pgherd_pooler_client_wait_seconds_count", &APP).unwrap();
    assert!(waits_before >= 4.0, "one wait per transaction: {body}");

    // `b` waits for it, and gives up after query_wait_timeout.
    // A transaction-mode login takes a server too: with `a` holding it, the login
    // itself waits (and times out).
    let waiting = tokio::spawn(async move {
        let b = connect(port, "app", APP_PASSWORD, "appdb").await?;
        b.simple_query("SELECT 1").await.map(|_| ())
    });
    scrape_until(addr, "a waiting client", |body| {
        value(body, "pgherd_pooler_clients", &app(&[("state", "waiting")])) == Some(1.0)
    })
    .await;
    let e = waiting
        .await
        .expect("task")
        .expect_err("the waiting client times out");
    assert_eq!(sqlstate(&e), "08P01", "{e}");
    let body = scrape_until(addr, "the timeout", |body| timeouts(body) > timeouts_before).await;
    assert_eq!(
        value(
            &body,
            "pgherd_pooler_clients",
            &app(&[("state", "waiting")])
        ),
        Some(0.0)
    );
    // The histogram saw the ~1 s wait (above the 0.5 s bucket).
    let count = value(&body, "pgherd_pooler_client_wait_seconds_count", &APP).unwrap();
    assert!(count > waits_before, "{body}");
    let inf = value(
        &body,
        "pgherd_pooler_client_wait_seconds_bucket",
        &app(&[("le", "+Inf")]),
    );
    assert_eq!(inf, Some(count));
    let fast = value(
        &body,
        "pgherd_pooler_client_wait_seconds_bucket",
        &app(&[("le", "0.5")]),
    )
    .expect("0.5 bucket");
    assert!(fast < count, "{body}");
    assert!(value(&body, "pgherd_pooler_client_wait_seconds_sum", &APP).unwrap() >= 0.9);
    a.batch_execute("COMMIT").await.expect("commit");

    // A wrong password is a login failure of (appdb, app).
    let failed = |body: &str| {
        value(
            body,
            "pgherd_pooler_errors_total",
            &app(&[("kind", "login_failed")]),
        )
        .unwrap_or(0.0)
    };
    let before = failed(&scrape(addr).await);
    let e = connect(port, "app", "wrong", "appdb")
        .await
        .expect_err("wrong password");
    assert_eq!(sqlstate(&e), "28P01");
    // A user nobody configured is counted without its name.
    connect(port, "mallory", "x", "appdb")
        .await
        .expect_err("unknown user");
    let body = scrape(addr).await;
    assert!(failed(&body) > before, "{body}");
    assert!(!body.contains("mallory"), "{body}");
    assert!(
        value(
            &body,
            "pgherd_pooler_errors_total",
            &[("user", ""), ("kind", "login_failed")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{body}"
    );

    // Both formats parse line by line.
    let (ct, body) = scrape_as(addr, None).await;
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let samples = parse_exposition(&body, false);
    assert!(samples.len() > 20);
    let (ct, body) = scrape_as(
        addr,
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    )
    .await;
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    parse_exposition(&body, true);
    assert!(body.contains("# UNIT pgherd_pooler_client_wait_seconds seconds"));
    assert!(value(&body, "pgherd_pooler_queries_total", &APP).unwrap() >= queries);

    // Only /metrics is served.
    let resp = pgherd_http::client::default_client()
        .expect("HTTP client")
        .get(format!("http://{addr}/"))
        .send()
        .await
        .expect("GET /");
    assert_eq!(resp.status(), 404);

    drop(a);
    assert!(svc.shutdown(Duration::from_secs(5)).await);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the metrics listener stops with the pooler"
    );
}

#[tokio::test]
async fn metrics_listen_is_off_by_default_and_read_from_ini_and_yaml() {
    let ini = |extra: &str| {
        PoolerConfig::from_ini_str(
            &format!("[databases]\na = host=x\n[pgbouncer]\n{extra}\n"),
            Path::new("p.ini"),
        )
    };
    let yaml = |text: &str| PoolerConfig::from_yaml_str(text, Path::new("p.yml"));
    assert_eq!(ini("").expect("loads").config.settings.metrics_listen, None);

    let from_ini = ini("metrics_listen = 127.0.0.1:9127").expect("ini loads");
    let from_yaml = yaml("databases: {a: host=x}\npgherd:\n  metrics_listen: 127.0.0.1:9127\n")
        .expect("yaml loads");
    assert_eq!(
        from_ini.config.settings.metrics_listen,
        Some("127.0.0.1:9127".parse().unwrap())
    );
    assert_eq!(from_ini.config, from_yaml.config);
    assert!(from_yaml.warnings.is_empty(), "{:?}", from_yaml.warnings);

    let row = from_ini
        .config
        .show_config()
        .into_iter()
        .find(|r| r.key == "metrics_listen")
        .expect("SHOW CONFIG lists it");
    assert_eq!(row.value, "127.0.0.1:9127");
    assert_eq!(row.default, "");
    assert!(!row.changeable, "a new address needs a restart");

    let e = yaml("pgherd: {metrics_listen: 'localhost'}\n").expect_err("not an address");
    assert!(e.to_string().contains("pgherd.metrics_listen"), "{e}");
    let e = ini("metrics_listen = nowhere").expect_err("not an address");
    assert!(e.to_string().contains("pgbouncer.metrics_listen"), "{e}");
    let warned = yaml("pgherd: {listen_port: 1}\n").expect("loads");
    assert_eq!(warned.warnings.len(), 1, "{:?}", warned.warnings);
    assert_eq!(warned.warnings[0].key, "pgherd.listen_port");
}

/// A client that opens many connections and leaves them hanging mid-request does not
/// keep the scraper from the metrics; the extra connections are closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_clients_do_not_keep_scrapers_from_the_metrics() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _serial = SERIAL.lock().await;
    let server = common::postgres("metrics-hostile").await;
    let (svc, _dir) = service(
        &server.pg,
        "auth_type = md5\npool_mode = transaction\nmetrics_listen = 127.0.0.1:0",
    )
    .await;
    let addr = svc.metrics_addr.expect("metrics listener");
    let mut hanging = Vec::new();
    for _ in 0..(pgherd_http::MAX_PER_PEER + 8) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.5:0".parse().unwrap()).unwrap();
        let mut s = socket.connect(addr).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        hanging.push(s);
    }
    // The address's connections past its share are closed without an answer.
    let mut last = hanging.pop().expect("one");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), last.read_to_end(&mut buf)).await;
    // (A reset when the server closes with our request unread.)
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?} {buf:?}");
    for _ in 0..5 {
        let started = Instant::now();
        let body = scrape(addr).await;
        assert!(body.contains("pgherd_pooler_up 1"), "{body}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    drop(hanging);
}
