//! `SET key = value`: change one `[pgbouncer]` setting at run time (admins only, and
//! only settings `RELOAD` could change). Also PgBouncer's fake session parameters,
//! which some drivers SET or SHOW on connect.

use super::output::{text, Reply, Rows, Type};
use super::{AdminError, Ctx};
use crate::config::SETTINGS;
use pgherd_protocol::backend::{NoticeResponse, Severity};
use tracing::info;

/// Parameters drivers ask about; SET is ignored, SHOW answers these values.
const FAKE_PARAMETERS: &[(&str, &str)] = &[
    ("client_encoding", "UTF-8"),
    ("default_transaction_isolation", "read committed"),
    ("standard_conforming_strings", "on"),
    ("datestyle", "ISO"),
    ("timezone", "GMT"),
    ("extra_float_digits", "2"),
];

fn fake(name: &str) -> Option<(&'static str, &'static str)> {
    FAKE_PARAMETERS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .copied()
}

/// `SHOW client_encoding` and friends.
pub fn fake_show(name: &str) -> Option<Reply> {
    let (name, value) = fake(name)?;
    let mut rows = Rows::new(&[(name, Type::Text)]);
    rows.push(vec![text(value)]);
    Some(Reply::rows(rows, "SHOW"))
}

pub fn run(ctx: &Ctx<'_>, key: &str, value: &str) -> Result<Reply, AdminError> {
    if fake(key).is_some() {
        return Ok(Reply::notice(
            NoticeResponse::new(Severity::Notice, "00000", "SET ignored"),
            "SET",
        ));
    }
    ctx.require_admin()?;
    let name = key.to_ascii_lowercase();
    let Some(def) = SETTINGS.iter().find(|d| d.name == name) else {
        return Err(AdminError::new(
            "42704",
            format!("SET failed: unknown setting '{name}'"),
        ));
    };
    if !def.changeable {
        return Err(AdminError::new(
            "55P02",
            format!("SET failed: {name} cannot be changed without a restart"),
        ));
    }
    let mut config = (*ctx.rt.config()).clone();
    config
        .settings
        .apply(&name, value)
        .map_err(|e| AdminError::new("22023", format!("SET failed: {e}")))?;
    ctx.rt.set_config(config);
    // The value is not logged: some settings hold secrets.
    info!(key = %name, "SET command issued");
    Ok(Reply::done(format!("SET {name}={value}")))
}
