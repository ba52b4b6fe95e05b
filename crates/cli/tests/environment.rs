//! `PATRONI_*` environment variables override the config file's keys, as in Patroni, so
//! that no password has to sit in the YAML file; and none of them shows up anywhere.

mod common;

use common::*;
use std::fs;
use std::process::Command;
use std::time::Duration;

const ENV_SUPERUSER: &str = "su-from-the-environment";
const ENV_REPLICATION: &str = "rep-from-the-environment";
const ENV_RESTAPI: &str = "api-from-the-environment";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_its_passwords_from_patroni_variables_and_never_shows_them() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(1);
    // The file holds other passwords: the environment must win.
    let node = &cluster.nodes[0];
    let yaml = fs::read_to_string(&node.config_path).expect("config");
    let yaml = yaml
        .replace(SUPERUSER_PASSWORD, "not-this-one")
        .replace(REPLICATION_PASSWORD, "nor-this-one");
    fs::write(&node.config_path, yaml).expect("write config");
    cluster.nodes[0].start_with_env(&[
        ("PATRONI_SUPERUSER_PASSWORD", ENV_SUPERUSER),
        ("PATRONI_REPLICATION_PASSWORD", ENV_REPLICATION),
        ("PATRONI_RESTAPI_USERNAME", "operator"),
        ("PATRONI_RESTAPI_PASSWORD", ENV_RESTAPI),
    ]);
    cluster.wait_healthy(0, Duration::from_secs(120)).await;
    let node = &cluster.nodes[0];

    // The superuser was created with the environment's password.
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(node.pg_port)
        .user("postgres")
        .password(ENV_SUPERUSER)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("log in with PATRONI_SUPERUSER_PASSWORD");
    tokio::spawn(conn);
    let replicator: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = 'replicator' AND rolreplication",
            &[],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(replicator, 1);
    let file_password = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(node.pg_port)
        .user("postgres")
        .password("not-this-one")
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await;
    assert!(file_password.is_err(), "the file's password must not work");

    // The REST API asks for the environment's credentials before it changes anything.
    let http = pgherd_http::client::default_client().expect("HTTP client");
    let url = format!("http://127.0.0.1:{}/restart", node.api_port);
    let refused = http.post(&url).body("{}").send().await.expect("POST");
    assert_eq!(refused.status().as_u16(), 401);
    let wrong = http
        .post(&url)
        .basic_auth("operator", Some("not-this-one"))
        .body("{}")
        .send()
        .await
        .expect("POST");
    assert_eq!(wrong.status().as_u16(), 401);

    // No password in what the node shows or logs.
    let (_, patroni) = api_get(node.api_port, "/patroni").await;
    let (_, config) = api_get(node.api_port, "/config").await;
    let shown = cluster.ctl(&["show-config", "--effective", "node1"]);
    let mut everything = vec![
        patroni.to_string(),
        config.to_string(),
        text(&shown),
        node.agent_log(),
    ];
    everything.push(String::from_utf8_lossy(&cluster.ctl(&["list"]).stdout).into_owned());
    for password in [ENV_SUPERUSER, ENV_REPLICATION, ENV_RESTAPI] {
        for (i, t) in everything.iter().enumerate() {
            assert!(!t.contains(password), "output {i} shows a password:\n{t}");
        }
    }
    // The log says which variables were used, by name.
    assert!(
        node.agent_log().contains(
            "PATRONI_SUPERUSER_PASSWORD sets postgresql.authentication.superuser.password"
        ),
        "{}",
        node.agent_log()
    );
}

#[test]
fn without_a_file_the_config_comes_from_patroni_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = node_yaml(
        "env-only",
        "node1",
        pgherd_testkit::free_port(),
        pgherd_testkit::free_port(),
        "127.0.0.1:2379",
        dir.path(),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_pgherd"))
        .args(["node", "--validate-config"])
        .env("PATRONI_CONFIGURATION", &yaml)
        .output()
        .expect("run pgherd node");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("environment: configuration is valid"),
        "{}",
        text(&out)
    );

    // Or from the variables alone; a bad value names the variables that were used,
    // never their values.
    let out = Command::new(env!("CARGO_BIN_EXE_pgherd"))
        .args(["node", "--validate-config"])
        .env("PATRONI_SCOPE", "env-only")
        .env("PATRONI_NAME", "node1")
        .env("PATRONI_RESTAPI_LISTEN", "not-an-address")
        .env("PATRONI_SUPERUSER_PASSWORD", ENV_SUPERUSER)
        .output()
        .expect("run pgherd node");
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("restapi.listen"), "{all}");
    assert!(all.contains("PATRONI_RESTAPI_LISTEN"), "{all}");
    assert!(!all.contains(ENV_SUPERUSER), "{all}");
}
