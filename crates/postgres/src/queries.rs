//! What a running server says about itself, and the objects pgherd keeps in it (roles,
//! replication slots).

use crate::conninfo::Credentials;
use crate::error::{PgError, Result};
use crate::instance::Instance;
use crate::lsn::parse_lsn;
use serde::Serialize;
use tracing::{info, warn};

/// One standby streaming from this server (`pg_stat_replication`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicationRow {
    pub usename: Option<String>,
    pub application_name: String,
    pub client_addr: Option<String>,
    /// `startup`, `catchup`, `streaming`, `backup`, `stopping`.
    pub state: String,
    /// `async`, `potential`, `sync`, `quorum`.
    pub sync_state: String,
    pub sync_priority: i32,
    pub write_lsn: Option<u64>,
    pub flush_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
}

/// A running server's role and position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PgState {
    pub in_recovery: bool,
    /// The timeline it writes (primary) or receives/replays (standby).
    pub timeline: u32,
    /// Primary: `pg_current_wal_lsn()`; standby: the larger of received and replayed.
    pub wal_lsn: u64,
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    pub replication: Vec<ReplicationRow>,
    pub system_identifier: String,
    /// `server_version_num`, e.g. 150006.
    pub server_version: u32,
    /// `pg_postmaster_start_time()` as text.
    pub postmaster_start_time: Option<String>,
    /// Some changed parameter needs a restart (`pg_settings.pending_restart`).
    pub pending_restart: bool,
    /// A standby's WAL receiver is streaming from its upstream right now.
    pub streaming: bool,
    /// `synchronous_standby_names` as applied.
    pub synchronous_standby_names: String,
    /// Physical replication slots nobody streams from right now, by name.
    pub inactive_physical_slots: Vec<String>,
}

const STATE_SQL: &str = "\
SELECT pg_catalog.pg_is_in_recovery(),
       CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
            ELSE pg_catalog.pg_current_wal_lsn()::text END,
       CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
            ELSE pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8) END,
       pg_catalog.pg_last_wal_receive_lsn()::text,
       pg_catalog.pg_last_wal_replay_lsn()::text,
       (SELECT received_tli FROM pg_catalog.pg_stat_wal_receiver),
       (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()),
       (SELECT min_recovery_end_timeline FROM pg_catalog.pg_control_recovery()),
       (SELECT system_identifier::text FROM pg_catalog.pg_control_system()),
       pg_catalog.current_setting('server_version_num')::int,
       pg_catalog.pg_postmaster_start_time()::text,
       EXISTS (SELECT 1 FROM pg_catalog.pg_settings WHERE pending_restart),
       COALESCE((SELECT status = 'streaming' FROM pg_catalog.pg_stat_wal_receiver), false),
       pg_catalog.current_setting('synchronous_standby_names'),
       ARRAY(SELECT slot_name::text FROM pg_catalog.pg_replication_slots
              WHERE slot_type = 'physical' AND NOT active ORDER BY 1)";

const REPLICATION_SQL: &str = "\
SELECT usename::text, application_name, client_addr::text, state, sync_state, sync_priority,
       write_lsn::text, flush_lsn::text, replay_lsn::text
  FROM pg_catalog.pg_stat_replication
 ORDER BY application_name";

fn lsn_col(v: Option<String>) -> Option<u64> {
    v.as_deref().and_then(parse_lsn)
}

impl Instance {
    /// Role, timeline and WAL positions of the server behind `client`, and the standbys
    /// streaming from it.
    ///
    /// The timeline: on a primary the one in `pg_walfile_name(pg_current_wal_lsn())`
    /// (the checkpoint's is stale right after a promotion); on a standby
    /// `pg_stat_wal_receiver.received_tli`, else the larger of the last restartpoint's and
    /// the minimum-recovery-point's timelines.
    pub async fn query_state(client: &tokio_postgres::Client) -> Result<PgState> {
        let row = client
            .query_one(STATE_SQL, &[])
            .await
            .map_err(|e| PgError::query("reading the server state", &e))?;
        let q = |e: tokio_postgres::Error| PgError::query("decoding the server state", &e);
        let in_recovery: bool = row.try_get(0).map_err(q)?;
        let current_lsn = lsn_col(row.try_get(1).map_err(q)?);
        let walfile_tli: Option<String> = row.try_get(2).map_err(q)?;
        let receive_lsn = lsn_col(row.try_get(3).map_err(q)?);
        let replay_lsn = lsn_col(row.try_get(4).map_err(q)?);
        let received_tli: Option<i32> = row.try_get(5).map_err(q)?;
        let checkpoint_tli: Option<i32> = row.try_get(6).map_err(q)?;
        let min_recovery_tli: Option<i32> = row.try_get(7).map_err(q)?;
        let system_identifier: Option<String> = row.try_get(8).map_err(q)?;
        let server_version: i32 = row.try_get(9).map_err(q)?;
        let postmaster_start_time: Option<String> = row.try_get(10).map_err(q)?;
        let pending_restart: bool = row.try_get(11).map_err(q)?;
        let streaming: bool = row.try_get(12).map_err(q)?;
        let synchronous_standby_names: String = row.try_get(13).map_err(q)?;
        let inactive_physical_slots: Vec<String> = row.try_get(14).map_err(q)?;

        let as_tli = |v: Option<i32>| v.and_then(|t| u32::try_from(t).ok()).filter(|t| *t > 0);
        let fallback = as_tli(checkpoint_tli)
            .into_iter()
            .chain(as_tli(min_recovery_tli))
            .max();
        let timeline = if in_recovery {
            as_tli(received_tli).or(fallback)
        } else {
            walfile_tli
                .as_deref()
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .or(fallback)
        }
        .unwrap_or(0);
        let wal_lsn = if in_recovery {
            receive_lsn.max(replay_lsn).unwrap_or(0)
        } else {
            current_lsn.unwrap_or(0)
        };

        let rows = client
            .query(REPLICATION_SQL, &[])
            .await
            .map_err(|e| PgError::query("reading pg_stat_replication", &e))?;
        let mut replication = Vec::with_capacity(rows.len());
        for r in rows {
            let q = |e: tokio_postgres::Error| PgError::query("decoding pg_stat_replication", &e);
            replication.push(ReplicationRow {
                usename: r.try_get(0).map_err(q)?,
                application_name: r
                    .try_get::<_, Option<String>>(1)
                    .map_err(q)?
                    .unwrap_or_default(),
                client_addr: r.try_get(2).map_err(q)?,
                state: r
                    .try_get::<_, Option<String>>(3)
                    .map_err(q)?
                    .unwrap_or_default(),
                sync_state: r
                    .try_get::<_, Option<String>>(4)
                    .map_err(q)?
                    .unwrap_or_default(),
                sync_priority: r.try_get::<_, Option<i32>>(5).map_err(q)?.unwrap_or(0),
                write_lsn: lsn_col(r.try_get(6).map_err(q)?),
                flush_lsn: lsn_col(r.try_get(7).map_err(q)?),
                replay_lsn: lsn_col(r.try_get(8).map_err(q)?),
            });
        }
        Ok(PgState {
            in_recovery,
            timeline,
            wal_lsn,
            receive_lsn,
            replay_lsn,
            replication,
            system_identifier: system_identifier.unwrap_or_default(),
            server_version: u32::try_from(server_version).unwrap_or(0),
            postmaster_start_time,
            pending_restart,
            streaming,
            synchronous_standby_names,
            inactive_physical_slots,
        })
    }

    /// Make the physical replication slots exactly `names`: create the missing ones
    /// (reserving WAL at once) and drop inactive physical slots not listed. Logical slots
    /// are left alone; an active unlisted slot is kept (and dropped on a later call).
    pub async fn ensure_slots(client: &tokio_postgres::Client, names: &[String]) -> Result<()> {
        for n in names {
            if !is_valid_slot_name(n) {
                return Err(PgError::Query {
                    context: "ensuring replication slots".into(),
                    detail: format!("{n:?} is not a valid slot name (a-z, 0-9, _; at most 63)"),
                });
            }
        }
        let rows = client
            .query(
                "SELECT slot_name::text, slot_type, active FROM pg_catalog.pg_replication_slots",
                &[],
            )
            .await
            .map_err(|e| PgError::query("listing replication slots", &e))?;
        let mut existing = Vec::new();
        for r in rows {
            let q = |e: tokio_postgres::Error| PgError::query("listing replication slots", &e);
            let name: String = r.try_get(0).map_err(q)?;
            let kind: String = r.try_get(1).map_err(q)?;
            let active: bool = r.try_get(2).map_err(q)?;
            existing.push((name, kind, active));
        }
        for n in names {
            if existing.iter().any(|(e, _, _)| e == n) {
                continue;
            }
            match client
                .execute(
                    "SELECT pg_catalog.pg_create_physical_replication_slot($1, true)",
                    &[n],
                )
                .await
            {
                Ok(_) => info!(slot = %n, "created physical replication slot"),
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
                Err(e) => return Err(PgError::query(format!("creating slot {n}"), &e)),
            }
        }
        for (name, kind, active) in &existing {
            if kind != "physical" || names.contains(name) {
                continue;
            }
            if *active {
                warn!(slot = %name, "unlisted replication slot is in use; keeping it for now");
                continue;
            }
            match client
                .execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[name])
                .await
            {
                Ok(_) => info!(slot = %name, "dropped physical replication slot"),
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => {}
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => {
                    warn!(slot = %name, "replication slot became active; keeping it for now")
                }
                Err(e) => return Err(PgError::query(format!("dropping slot {name}"), &e)),
            }
        }
        Ok(())
    }

    /// Set the superuser's password, create (or update) the replication role
    /// `WITH LOGIN REPLICATION`, and the rewind role when one is configured apart from the
    /// superuser (granted the functions pg_rewind calls, as Patroni does). Passwords are
    /// sent as SCRAM-SHA-256 verifiers computed here, never in clear, and statement
    /// logging is off for the session.
    pub async fn create_roles(
        client: &tokio_postgres::Client,
        superuser: &Credentials,
        replication: &Credentials,
        rewind: Option<&Credentials>,
    ) -> Result<()> {
        client
            .batch_execute(
                "SET log_statement TO 'none'; SET log_min_duration_statement TO -1; \
                 SET log_min_error_statement TO 'panic'; \
                 SET pg_stat_statements.track_utility TO off",
            )
            .await
            .map_err(|e| PgError::query("turning statement logging off", &e))?;
        if let Some(pw) = &superuser.password {
            let sql = format!(
                "ALTER ROLE {} WITH PASSWORD {}",
                quote_ident(&superuser.username),
                quote_literal(&postgres_protocol::password::scram_sha_256(pw.as_bytes()))
            );
            client.batch_execute(&sql).await.map_err(|e| {
                PgError::query(
                    format!("setting the password of {}", superuser.username),
                    &e,
                )
            })?;
        }
        if replication.username != superuser.username {
            ensure_login_role(client, replication, "REPLICATION").await?;
        }
        if let Some(rewind) = rewind.filter(|r| r.username != superuser.username) {
            ensure_login_role(client, rewind, "").await?;
            // What pg_rewind calls on the source (PostgreSQL docs, pg_rewind "Notes").
            let who = quote_ident(&rewind.username);
            let sql = format!(
                "GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO {who}; \
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO {who}; \
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO {who}; \
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO {who}"
            );
            client.batch_execute(&sql).await.map_err(|e| {
                PgError::query(
                    format!("granting pg_rewind's functions to {}", rewind.username),
                    &e,
                )
            })?;
        }
        Ok(())
    }
}

/// Create or update a login role with its password (as a SCRAM verifier) and `options`.
async fn ensure_login_role(
    client: &tokio_postgres::Client,
    role: &Credentials,
    options: &str,
) -> Result<()> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[&role.username],
        )
        .await
        .map_err(|e| PgError::query(format!("looking up role {}", role.username), &e))?
        .is_some();
    let mut sql = format!(
        "{} ROLE {} WITH LOGIN {options}",
        if exists { "ALTER" } else { "CREATE" },
        quote_ident(&role.username)
    );
    if let Some(pw) = &role.password {
        sql.push_str(" PASSWORD ");
        sql.push_str(&quote_literal(&postgres_protocol::password::scram_sha_256(
            pw.as_bytes(),
        )));
    }
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| PgError::query(format!("creating role {}", role.username), &e))?;
    info!(role = %role.username, created = !exists, "role ready");
    Ok(())
}

/// A replication slot name for a member, as Patroni makes it: lowercased, `-` and `.`
/// become `_`, any other character outside `[a-z0-9_]` becomes `u` + its code point in
/// 4+ decimal digits; at most 63 characters.
pub fn slot_name(member: &str) -> String {
    let mut out = String::new();
    for c in member.to_lowercase().chars() {
        match c {
            'a'..='z' | '0'..='9' | '_' => out.push(c),
            '-' | '.' => out.push('_'),
            c => out.push_str(&format!("u{:04}", u32::from(c))),
        }
    }
    out.chars().take(63).collect()
}

fn is_valid_slot_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// An SQL identifier, always double-quoted (`"` doubled).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// An SQL string literal like PostgreSQL's `quote_literal`: `'` doubled, and with
/// backslashes an `E'…'` literal with them doubled.
pub fn quote_literal(s: &str) -> String {
    let body = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_follow_patroni() {
        assert_eq!(slot_name("Node-1.example"), "node_1_example");
        assert_eq!(slot_name("pg_2"), "pg_2");
        assert_eq!(slot_name("a b"), "au0032b");
        assert_eq!(slot_name(&"x".repeat(80)).len(), 63);
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b'"), r"E'a\\b'''");
    }
}
