//! `KILL [db]`: drop every client and server connection of a database (or of all) at
//! once. Like PgBouncer, the database is left paused: new clients wait until `RESUME`.

use super::output::Reply;
use super::pause::check_database;
use super::{AdminError, Ctx, ADMIN_DATABASE};
use tracing::info;

pub async fn run(ctx: &Ctx<'_>, db: Option<&str>) -> Result<Reply, AdminError> {
    ctx.require_admin()?;
    if ctx.rt.is_paused_all() {
        return Err(AdminError::failed("already suspended/paused"));
    }
    if let Some(db) = db {
        check_database(ctx, db, "kill")?;
    }
    info!(database = db.unwrap_or("*"), "KILL command issued");
    let pools = match db {
        Some(db) => ctx.rt.pause(Some(db)),
        None => {
            let mut dbs: Vec<String> = ctx
                .rt
                .pools()
                .iter()
                .map(|p| p.key.database.clone())
                .collect();
            dbs.dedup();
            dbs.iter().flat_map(|d| ctx.rt.pause(Some(d))).collect()
        }
    };
    let mut killed = 0usize;
    for c in ctx.rt.clients() {
        let database = c.view().database;
        let hit = match (db, database.as_deref()) {
            (_, Some(ADMIN_DATABASE)) | (_, None) => false,
            (Some(db), Some(d)) => d == db,
            (None, Some(_)) => true,
        };
        if hit {
            ctx.rt.kill_client(&c);
            killed += 1;
        }
    }
    for p in &pools {
        p.close_idle().await;
    }
    info!(clients = killed, "KILL done");
    Ok(Reply::done("KILL"))
}
