//! `RECONNECT [db]`: close idle server connections now and the ones in use when they
//! are released (each pool's generation moves on), so the next transactions get fresh
//! connections — e.g. after the database moved.

use super::output::Reply;
use super::pause::check_database;
use super::{AdminError, Ctx};
use tracing::info;

pub async fn run(ctx: &Ctx<'_>, db: Option<&str>) -> Result<Reply, AdminError> {
    ctx.require_admin()?;
    if let Some(db) = db {
        check_database(ctx, db, "reconnect")?;
    }
    info!(database = db.unwrap_or("*"), "RECONNECT command issued");
    for pool in ctx.rt.pools() {
        if db.is_none_or(|db| pool.key.database == db) {
            pool.reconnect().await;
        }
    }
    Ok(Reply::done("RECONNECT"))
}
