//! `RELOAD`: re-read the configuration file (and auth_file, auth_hba_file) that the
//! pooler was started with; clients stay connected.

use super::output::Reply;
use super::{AdminError, Ctx};
use tracing::{info, warn};

pub fn run(ctx: &Ctx<'_>, arg: Option<&str>, query: &str) -> Result<Reply, AdminError> {
    if arg.is_some() {
        return Err(AdminError::invalid(query));
    }
    ctx.require_admin()?;
    info!("RELOAD command issued");
    let Some(path) = ctx.rt.config_path() else {
        return Err(AdminError::new(
            "F0000",
            "RELOAD failed: the pooler was not started from a configuration file",
        ));
    };
    match ctx.rt.reload_from(&path) {
        Ok(()) => Ok(Reply::done("RELOAD")),
        Err(e) => {
            warn!(file = %path.display(), error = %e, "RELOAD failed; keeping the running configuration");
            Err(AdminError::new(
                "F0000",
                "RELOAD failed, see logs for additional details",
            ))
        }
    }
}
