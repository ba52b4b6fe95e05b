//! Result sets as the console sends them: RowDescription with PgBouncer's type OIDs,
//! DataRows in text format, CommandComplete.

use bytes::BytesMut;
use pgherd_protocol::backend::{
    CommandComplete, DataRow, FieldDescription, NoticeResponse, RowDescription,
};
use pgherd_protocol::Message;
use std::time::{SystemTime, UNIX_EPOCH};

/// A column type, as PgBouncer's `pktbuf_write_RowDescription` letters map them
/// (its `q`, int8, is used by no command pgherd has).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// `s` (and `T`, timestamps sent as text): text, OID 25.
    Text,
    /// `i`: int4, OID 23.
    Int4,
    /// `N`: numeric, OID 1700 (statistics counters).
    Numeric,
}

impl Type {
    pub fn oid(self) -> u32 {
        match self {
            Type::Text => 25,
            Type::Int4 => 23,
            Type::Numeric => 1700,
        }
    }

    fn size(self) -> i16 {
        match self {
            Type::Text | Type::Numeric => -1,
            Type::Int4 => 4,
        }
    }
}

/// One value of a row.
pub type Value = Option<String>;

pub fn text(s: impl Into<String>) -> Value {
    Some(s.into())
}

pub fn int(n: impl std::fmt::Display) -> Value {
    Some(n.to_string())
}

/// A result set: columns (name, type) and rows of text values (`None`: NULL).
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub columns: Vec<(&'static str, Type)>,
    pub rows: Vec<Vec<Value>>,
}

impl Rows {
    pub fn new(columns: &[(&'static str, Type)]) -> Rows {
        Rows {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Add a row; it must have one value per column.
    pub fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }
}

/// What a command answers (before ReadyForQuery).
#[derive(Debug, Clone)]
pub enum Reply {
    /// Notices, an optional result set, then CommandComplete with `tag`.
    Done {
        notices: Vec<NoticeResponse>,
        rows: Option<Rows>,
        tag: String,
    },
    /// `SHUTDOWN`: no answer; the connection closes.
    Shutdown,
}

impl Reply {
    pub fn rows(rows: Rows, tag: &str) -> Reply {
        Reply::Done {
            notices: Vec::new(),
            rows: Some(rows),
            tag: tag.to_string(),
        }
    }

    pub fn done(tag: impl Into<String>) -> Reply {
        Reply::Done {
            notices: Vec::new(),
            rows: None,
            tag: tag.into(),
        }
    }

    pub fn notice(notice: NoticeResponse, tag: &str) -> Reply {
        Reply::Done {
            notices: vec![notice],
            rows: None,
            tag: tag.to_string(),
        }
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        let Reply::Done { notices, rows, tag } = self else {
            return;
        };
        for n in notices {
            n.encode(buf);
        }
        if let Some(rows) = rows {
            RowDescription {
                fields: rows
                    .columns
                    .iter()
                    .map(|(name, t)| FieldDescription::text(*name, t.oid(), t.size()))
                    .collect(),
            }
            .encode(buf);
            for row in &rows.rows {
                DataRow::from_text(row.iter().map(|v| v.as_deref())).encode(buf);
            }
        }
        CommandComplete::new(tag.clone()).encode(buf);
    }
}

/// A time as PgBouncer prints it: `YYYY-MM-DD HH:MM:SS UTC`.
pub fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// PgBouncer prints socket pointers; pgherd prints a stable id in the same shape.
pub fn client_ptr(id: u64) -> String {
    format!("{:#x}", 0x7c00_0000_0000u64 + id)
}

pub fn server_ptr(id: u64) -> String {
    format!("{:#x}", 0x5e00_0000_0000u64 + id)
}

#[cfg(test)]
mod tests {
    use super::timestamp;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_print_like_pgbouncer() {
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(timestamp(t), "2024-02-29 12:34:56 UTC");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
    }
}
