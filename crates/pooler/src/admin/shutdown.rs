//! `SHUTDOWN`: ask the service to stop (listeners stop accepting; `pgherd pooler`
//! exits). Like PgBouncer, the console gets no answer: its connection closes.

use super::output::Reply;
use super::{AdminError, Ctx};
use tracing::info;

pub fn run(ctx: &Ctx<'_>, arg: Option<&str>, query: &str) -> Result<Reply, AdminError> {
    if arg.is_some() {
        return Err(AdminError::invalid(query));
    }
    ctx.require_admin()?;
    info!("SHUTDOWN command issued");
    ctx.rt.request_shutdown();
    Ok(Reply::Shutdown)
}
