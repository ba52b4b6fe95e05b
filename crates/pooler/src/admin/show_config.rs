//! `SHOW CONFIG`: every `[pgbouncer]` setting with its value, default and whether
//! `RELOAD`/`SET` can change it.

use super::output::{text, Rows, Type};
use crate::runtime::Runtime;

const COLUMNS: &[(&str, Type)] = &[
    ("key", Type::Text),
    ("value", Type::Text),
    ("default", Type::Text),
    ("changeable", Type::Text),
];

pub fn run(rt: &Runtime) -> Rows {
    let mut rows = Rows::new(COLUMNS);
    for r in rt.config().show_config() {
        rows.push(vec![
            text(r.key),
            text(r.value),
            text(r.default),
            text(if r.changeable { "yes" } else { "no" }),
        ]);
    }
    rows
}
