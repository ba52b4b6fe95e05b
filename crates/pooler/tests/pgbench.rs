//! pgbench through the pooler, in session and transaction mode, with each query
//! protocol (`-M simple | extended | prepared`): every transaction is processed.

mod common;

use common::{pooler, APP_PASSWORD};
use pgherd_testkit::pg::pg_bin_dir;
use std::process::Command;

fn pgbench(args: &[&str], password: &str) -> String {
    let out = Command::new(pg_bin_dir().join("pgbench"))
        .args(args)
        .env("PGPASSWORD", password)
        .output()
        .expect("run pgbench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_every_transaction_in_each_mode_and_protocol() {
    let server = common::postgres("pgbench").await;
    let pg_port = server.pg.config().port.to_string();
    pgbench(
        &[
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            &pg_port,
            "-U",
            "postgres",
            "postgres",
        ],
        "su",
    );
    let su = server.pg.connect().await.expect("connect");
    su.batch_execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO app")
        .await
        .expect("grant");
    // Session mode holds a server per client for the whole run (pgbench disconnects its
    // clients only at the end), so it needs a pool as big as the client count; transaction
    // mode multiplexes 6 clients over 3 servers. One pgbench thread per client: with
    // `-M prepared` pgbench prepares synchronously, so a client waiting for a server would
    // stall the other clients of its thread, which may hold servers mid-transaction.
    for (mode, pool_size) in [("session", 6), ("transaction", 3)] {
        let p = pooler(
            &server.pg,
            &format!(
                "auth_type = scram-sha-256\npool_mode = {mode}\ndefault_pool_size = {pool_size}\nquery_wait_timeout = 20"
            ),
        )
        .await;
        let port = p.port.to_string();
        for protocol in ["simple", "extended", "prepared"] {
            let out = pgbench(
                &[
                    "-n",
                    "-c",
                    "6",
                    "-j",
                    "6",
                    "-t",
                    "40",
                    "-M",
                    protocol,
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "app",
                    "appdb",
                ],
                APP_PASSWORD,
            );
            assert!(
                out.contains("number of transactions actually processed: 240/240"),
                "{mode}/{protocol}:\n{out}"
            );
            assert!(
                out.contains("number of failed transactions: 0"),
                "{mode}/{protocol}:\n{out}"
            );
        }
    }
}
