//! `PAUSE [db]` and `RESUME [db]`.
//!
//! PAUSE marks the pools paused (new transactions queue in `Pool::acquire`, counted as
//! waiting, until RESUME), waits until no server is lent any more (running transactions finished), then
//! closes the idle servers, as PgBouncer does. The wait is bounded: when it runs out
//! the pools stay paused and the command reports it.

use super::output::Reply;
use super::{AdminError, Ctx, ADMIN_DATABASE};
use crate::pool::Pool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long PAUSE waits for running transactions before answering with an error.
pub(super) const PAUSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// How often the drain is checked.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// A database the console may act on: configured (or reachable through `*`), and not
/// the console itself.
pub(super) fn check_database(ctx: &Ctx<'_>, db: &str, verb: &str) -> Result<(), AdminError> {
    if db == ADMIN_DATABASE {
        return Err(AdminError::failed(format!("cannot {verb} admin db: {db}")));
    }
    if ctx.rt.config().resolve_database(db).is_none() {
        return Err(AdminError::no_such_database(db));
    }
    Ok(())
}

/// Wait until none of `pools` lends a server; `false` if `limit` ran out first.
pub(super) async fn drain(pools: &[Arc<Pool>], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while pools.iter().any(|p| p.active() > 0) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    true
}

pub async fn pause(ctx: &Ctx<'_>, db: Option<&str>) -> Result<Reply, AdminError> {
    ctx.require_admin()?;
    if ctx.rt.is_paused_all() {
        return Err(AdminError::failed("already suspended/paused"));
    }
    if let Some(db) = db {
        check_database(ctx, db, "pause")?;
    }
    info!(database = db.unwrap_or("*"), "PAUSE command issued");
    let pools = ctx.rt.pause(db);
    if !drain(&pools, PAUSE_DRAIN_TIMEOUT).await {
        warn!(
            database = db.unwrap_or("*"),
            "PAUSE: transactions still running"
        );
        return Err(AdminError::failed(format!(
            "PAUSE timed out after {}s with transactions still running; new ones stay held until RESUME",
            PAUSE_DRAIN_TIMEOUT.as_secs()
        )));
    }
    for p in &pools {
        p.close_idle().await;
    }
    Ok(Reply::done("PAUSE"))
}

pub fn resume(ctx: &Ctx<'_>, db: Option<&str>) -> Result<Reply, AdminError> {
    ctx.require_admin()?;
    info!(database = db.unwrap_or("*"), "RESUME command issued");
    match db {
        None => {
            if !ctx.rt.resume(None) {
                return Err(AdminError::failed("pooler is not paused/suspended"));
            }
        }
        Some(db) => {
            if ctx.rt.config().resolve_database(db).is_none() {
                return Err(AdminError::no_such_database(db));
            }
            if !ctx.rt.resume(Some(db)) {
                return Err(AdminError::failed(format!("database {db} is not paused")));
            }
        }
    }
    Ok(Reply::done("RESUME"))
}
