//! The one error type of this crate. Every variant reads as a one-line cause a DBA can
//! act on; none ever carries a password.

use std::path::PathBuf;
use std::time::Duration;

pub type Result<T, E = PgError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL binaries not found: {detail} (looked in {looked_in})")]
    BinariesNotFound { looked_in: String, detail: String },

    #[error("OS user {name:?}: {detail}")]
    OsUser { name: String, detail: String },

    #[error("refusing to run PostgreSQL as root (uid 0); set postgresql.os_user to an unprivileged user")]
    RefuseRoot,

    #[error("data directory {} is not a directory", path.display())]
    DataDirNotDirectory { path: PathBuf },

    #[error("data directory {} is owned by uid {owner_uid}, not by {expected} (uid {expected_uid}); chown it or fix postgresql.os_user", path.display())]
    DataDirOwner {
        path: PathBuf,
        owner_uid: u32,
        expected: String,
        expected_uid: u32,
    },

    #[error("data directory {} has permissions {mode:04o}; PostgreSQL needs 0700 or 0750", path.display())]
    DataDirPermissions { path: PathBuf, mode: u32 },

    #[error("data directory {} is not empty ({state}); refusing to {action}", path.display())]
    DataDirNotEmpty {
        path: PathBuf,
        state: String,
        action: String,
    },

    #[error("PostgreSQL is running (postmaster pid {pid}) in {}; stop it before {action}", data_dir.display())]
    Running {
        pid: i32,
        data_dir: PathBuf,
        action: String,
    },

    #[error("port {port} is already in use on {addr}: {detail}")]
    PortInUse {
        addr: String,
        port: u16,
        detail: String,
    },

    #[error("{program} failed ({status}){}", fmt_detail(detail))]
    CommandFailed {
        program: String,
        status: String,
        detail: String,
    },

    #[error("{what} timed out after {}s", after.as_secs_f64())]
    Timeout { what: String, after: Duration },

    #[error("cannot connect to PostgreSQL at {target}: {detail}")]
    Connect { target: String, detail: String },

    #[error("query failed ({context}): {detail}")]
    Query { context: String, detail: String },

    #[error("unexpected output from {what}: {detail}")]
    Parse { what: String, detail: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn fmt_detail(detail: &str) -> String {
    if detail.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", detail.trim())
    }
}

impl PgError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> PgError {
        PgError::Io {
            context: context.into(),
            source,
        }
    }

    /// A query error with the server's message (and detail/hint) when there is one.
    pub(crate) fn query(context: impl Into<String>, e: &tokio_postgres::Error) -> PgError {
        PgError::Query {
            context: context.into(),
            detail: describe_pg_error(e),
        }
    }
}

/// Server message (+ detail) of a tokio-postgres error, or its own text.
pub(crate) fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(" (");
            s.push_str(d);
            s.push(')');
        }
        s
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s.push_str(": ");
            s.push_str(&inner.to_string());
            src = inner.source();
        }
        s
    }
}
