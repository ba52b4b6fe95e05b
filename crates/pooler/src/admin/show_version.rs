//! `SHOW VERSION`: one row, one `version` column, starting like PgBouncer's
//! `PACKAGE_STRING` so tools that parse "PgBouncer X.Y.Z" keep working.

use super::output::{text, Rows, Type};
use super::PGBOUNCER_VERSION;

pub fn run() -> Rows {
    let mut rows = Rows::new(&[("version", Type::Text)]);
    rows.push(vec![text(format!(
        "PgBouncer {PGBOUNCER_VERSION} (pgherd {})",
        env!("CARGO_PKG_VERSION")
    ))]);
    rows
}
