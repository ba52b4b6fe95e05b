//! Verifiers made by real PostgreSQL 15 (`CREATE ROLE … PASSWORD` with
//! `password_encryption=scram-sha-256`) work with our SCRAM server and client.
//!
//! One throwaway cluster, driven in single-user mode (`postgres --single`): no
//! listener, no port, gone when stdin closes; the temp dir (and any leftover server)
//! is removed by `PgTempDir`. Skipped when PostgreSQL is not installed.

use pgherd_protocol::auth::{md5_password_hash, ScramClient, ScramServer, ScramVerifier};
use pgherd_protocol::error::AuthError;
use pgherd_testkit::pg::{pg_available, pg_bin_dir, pg_owner, PgTempDir};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// (role, password as given to CREATE ROLE, password a client types)
const ROLES: &[(&str, &str, &str)] = &[
    (
        "alice",
        "correct horse battery staple",
        "correct horse battery staple",
    ),
    // SASLprep: soft hyphen maps to nothing, so "IX" is the same password.
    ("bob", "I\u{00AD}X", "IX"),
    ("carol", "pässwörd", "pässwörd"),
];

fn run_as_postgres(cmd: &mut Command) -> &mut Command {
    let (uid, gid) = pg_owner();
    cmd.uid(uid).gid(gid).env_remove("PGDATA")
}

/// Returns `(role, rolpassword)` pairs and PostgreSQL's own md5() of a string.
fn verifiers_from_postgres(dir: &PgTempDir) -> (Vec<(String, String)>, String) {
    let bin = pg_bin_dir();
    let data = dir.join("data");
    let out = run_as_postgres(Command::new(bin.join("initdb")).current_dir(dir.path()))
        .args([
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "-A",
            "trust",
        ])
        .args(["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"])
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut sql = String::new();
    for (role, password, _) in ROLES {
        sql += &format!("CREATE ROLE {role} LOGIN PASSWORD '{password}';\n");
    }
    sql += "SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN ('alice','bob','carol') ORDER BY rolname;\n";
    sql += "SELECT md5('secretalice') AS md5hash;\n";
    let mut child = run_as_postgres(Command::new(bin.join("postgres")).current_dir(dir.path()))
        .args(["--single", "-D", data.to_str().unwrap()])
        .args([
            "-c",
            "password_encryption=scram-sha-256",
            "-c",
            "client_encoding=UTF8",
        ])
        .arg("postgres")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run postgres --single");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "postgres --single: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Single-user output: `\t 1: rolname = "alice"\t(typeid = …)`.
    let values = |attr: &str| -> Vec<String> {
        stdout
            .lines()
            .filter_map(|l| l.trim().split_once(&format!("{attr} = \"")))
            .filter_map(|(_, rest)| rest.split_once('"').map(|(v, _)| v.to_owned()))
            .collect()
    };
    let roles = values("rolname");
    let secrets = values("rolpassword");
    let md5 = values("md5hash");
    assert_eq!(roles.len(), ROLES.len(), "output: {stdout}");
    (roles.into_iter().zip(secrets).collect(), md5[0].clone())
}

#[test]
fn postgres_15_verifiers_work_with_our_scram() {
    if !pg_available() {
        eprintln!(
            "skipped: PostgreSQL binaries not found in {}",
            pg_bin_dir().display()
        );
        return;
    }
    let dir = PgTempDir::with_prefix("protocol").expect("temp dir");
    let (secrets, md5) = verifiers_from_postgres(&dir);

    for ((role, secret), (want_role, password, typed)) in secrets.iter().zip(ROLES) {
        assert_eq!(role, want_role);
        assert!(
            secret.starts_with("SCRAM-SHA-256$4096:"),
            "{role}: not a SCRAM verifier"
        );
        let verifier = ScramVerifier::parse(secret).expect("PostgreSQL verifier parses");
        assert_eq!(
            &verifier.to_string(),
            secret,
            "text form survives a round trip"
        );
        // Our derivation with PostgreSQL's salt gives PostgreSQL's keys.
        let ours = ScramVerifier::derive(password.as_bytes(), &verifier.salt, verifier.iterations);
        assert_eq!(
            ours, verifier,
            "{role}: derivation differs from PostgreSQL's"
        );

        let mut server = ScramServer::new(verifier.clone());
        let mut client = ScramClient::new(typed.as_bytes());
        let first = server
            .handle_client_first(client.client_first().as_bytes())
            .unwrap();
        let fin = client.handle_server_first(first.as_bytes()).unwrap();
        let server_final = server.handle_client_final(fin.as_bytes()).unwrap();
        client.handle_server_final(server_final.as_bytes()).unwrap();

        let mut server = ScramServer::new(verifier);
        let mut client = ScramClient::new(b"wrong");
        let first = server
            .handle_client_first(client.client_first().as_bytes())
            .unwrap();
        let fin = client.handle_server_first(first.as_bytes()).unwrap();
        assert_eq!(
            server.handle_client_final(fin.as_bytes()),
            Err(AuthError::PasswordMismatch)
        );
    }
    // PostgreSQL's md5() agrees with our md5 password hash input.
    assert_eq!(format!("md5{md5}"), md5_password_hash("alice", b"secret"));
}
