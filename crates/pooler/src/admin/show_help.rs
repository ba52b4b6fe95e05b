//! `SHOW HELP`: the command list, as a NOTICE (like PgBouncer).

use super::output::Reply;
use pgherd_protocol::backend::{NoticeResponse, Severity};

const USAGE: &str = "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n\
\tSHOW LISTS\n\
\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n\
\tSET key = arg\n\
\tRELOAD\n\
\tPAUSE [<db>]\n\
\tRESUME [<db>]\n\
\tRECONNECT [<db>]\n\
\tKILL [<db>]\n\
\tSHUTDOWN";

pub fn run() -> Reply {
    Reply::notice(
        NoticeResponse::new(Severity::Notice, "00000", "Console usage").detail(USAGE),
        "SHOW",
    )
}
