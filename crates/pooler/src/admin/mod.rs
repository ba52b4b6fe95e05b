//! The admin console: the virtual database `pgbouncer`, with PgBouncer's commands,
//! column names and column types (exporters such as pgbouncer_exporter parse them).
//!
//! One file per command family, pgdog-style: [`command`] parses a query into a
//! [`command::Command`], [`output`] turns results into protocol messages, and each
//! `show_*`/verb module computes one answer from the [`Runtime`].

mod command;
mod kill;
mod output;
mod pause;
mod reconnect;
mod reload;
mod set;
mod show_clients;
mod show_config;
mod show_databases;
mod show_help;
mod show_lists;
mod show_pools;
mod show_stats;
mod show_users;
mod show_version;
mod shutdown;

use crate::client::ClientInfo;
use crate::lean_writer::LeanWriter;
use crate::net::{ReadHalf, WriteHalf};
use crate::runtime::Runtime;
use crate::server::FramedReader;
use crate::session::{ConsoleClient, Origin};
use bytes::BytesMut;
use command::Command;
use output::Reply;
use pgherd_protocol::backend::{
    Authentication, BackendKeyData, ErrorResponse, ParameterStatus, ReadyForQuery, Severity,
    TransactionStatus,
};
use pgherd_protocol::frontend::Query;
use pgherd_protocol::{Message, StartupMessage};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

/// The database name that reaches the console instead of a server.
pub use crate::session::ADMIN_DATABASE;

/// The PgBouncer release whose console (commands, columns, types) this one mirrors.
pub const PGBOUNCER_VERSION: &str = "1.25.1";

type ClientReader = FramedReader<ReadHalf>;
type ClientWriter = LeanWriter<WriteHalf>;

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `admin_users`: everything.
    Admin,
    /// `stats_users`: `SHOW` only.
    Stats,
}

/// A command that failed; the client gets an ErrorResponse and stays connected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    pub sqlstate: &'static str,
    pub message: String,
}

impl AdminError {
    fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
        AdminError {
            sqlstate,
            message: message.into(),
        }
    }

    /// PgBouncer's reply to a command it does not know.
    fn invalid(query: &str) -> Self {
        Self::new(
            "42601",
            format!("invalid command '{query}', use SHOW HELP;"),
        )
    }

    fn admin_needed() -> Self {
        Self::new("42501", "admin access needed")
    }

    /// A command that cannot be done now (PgBouncer's generic admin error).
    fn failed(message: impl Into<String>) -> Self {
        Self::new("55000", message)
    }

    fn no_such_database(db: &str) -> Self {
        Self::new("3D000", format!("no such database: {db}"))
    }

    fn to_response(&self) -> ErrorResponse {
        ErrorResponse::new(Severity::Error, self.sqlstate, self.message.clone())
    }
}

/// What a command runs with.
pub(crate) struct Ctx<'a> {
    pub rt: &'a Arc<Runtime>,
    pub access: Access,
}

impl Ctx<'_> {
    fn require_admin(&self) -> Result<(), AdminError> {
        match self.access {
            Access::Admin => Ok(()),
            Access::Stats => Err(AdminError::admin_needed()),
        }
    }
}

async fn send(out: &mut ClientWriter, message: &impl Message) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    message.encode(&mut buf);
    out.write_all(&buf).await
}

async fn ready(out: &mut ClientWriter) -> std::io::Result<()> {
    send(
        out,
        &ReadyForQuery {
            status: TransactionStatus::Idle,
        },
    )
    .await?;
    out.flush().await
}

/// Serve a client that asked for the `pgbouncer` database (handed over by its session's
/// login), from authentication until it leaves (or `SHUTDOWN`). Errors are reported to
/// the client where they arise.
pub async fn serve(console: ConsoleClient, me: &ClientInfo, rt: &Arc<Runtime>) {
    let ConsoleClient {
        mut client,
        mut out,
        origin,
        startup,
        login_deadline,
    } = console;
    serve_console(
        &mut client,
        &mut out,
        origin,
        me,
        rt,
        &startup,
        login_deadline,
    )
    .await
}

async fn serve_console(
    client: &mut ClientReader,
    out: &mut ClientWriter,
    origin: Origin,
    me: &ClientInfo,
    rt: &Arc<Runtime>,
    startup: &StartupMessage,
    login_deadline: Option<tokio::time::Instant>,
) {
    let peer = origin.peer;
    let user = startup.user().to_string();
    // The password check of auth_type/auth_file, exactly as for a pooled database,
    // and within client_login_timeout like it (the session after it is not).
    let auth = crate::session::authenticate(
        client,
        out,
        rt.session_context(),
        &user,
        ADMIN_DATABASE,
        origin,
    );
    let authenticated = match login_deadline {
        Some(d) => match tokio::time::timeout_at(d, auth).await {
            Ok(r) => r,
            Err(_) => {
                info!(%peer, %user, "admin console: client_login_timeout");
                let e = ErrorResponse::new(Severity::Fatal, "08P01", "client_login_timeout");
                if send(out, &e).await.is_ok() {
                    let _ = out.flush().await;
                }
                return;
            }
        },
        None => auth.await,
    };
    if let Err(e) = authenticated {
        debug!(%peer, %user, error = %e, "admin console login failed");
        return;
    }
    let settings = rt.config().settings.clone();
    let access = if settings.is_admin_user(&user) {
        Access::Admin
    } else if settings.is_stats_user(&user) {
        Access::Stats
    } else {
        info!(%peer, %user, "admin console: not allowed");
        let e = ErrorResponse::new(Severity::Fatal, "28000", "not allowed");
        if send(out, &e).await.is_ok() {
            let _ = out.flush().await;
        }
        return;
    };
    if let Err(e) = welcome(out, me, rt, &user, startup).await {
        debug!(%peer, error = %e, "admin console client gone");
        return;
    }
    info!(%peer, %user, ?access, "admin console login");
    if let Err(e) = query_loop(client, out, &Ctx { rt, access }).await {
        debug!(%peer, error = %e, "admin console session ended");
    }
}

/// AuthenticationOk, the console's ParameterStatus set, BackendKeyData, ReadyForQuery.
async fn welcome(
    out: &mut ClientWriter,
    me: &ClientInfo,
    rt: &Runtime,
    user: &str,
    startup: &StartupMessage,
) -> std::io::Result<()> {
    let application_name = startup.application_name().unwrap_or("");
    me.set_login(
        user,
        ADMIN_DATABASE,
        Some(application_name).filter(|a| !a.is_empty()),
    );
    send(out, &Authentication::Ok).await?;
    let server_version = format!("{PGBOUNCER_VERSION}/pgherd");
    let params = [
        ("server_version", server_version.as_str()),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "UTC"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "on"),
        ("application_name", application_name),
    ];
    for (name, value) in params {
        send(out, &ParameterStatus::new(name, value)).await?;
    }
    let (pid, key, _slot) = rt.session_context().cancels.register(me);
    send(out, &BackendKeyData::new(pid, key)).await?;
    ready(out).await
}

/// Simple queries until the client leaves. Extended-protocol messages get an error and
/// are skipped up to the next Sync, as PostgreSQL skips after an error.
async fn query_loop(
    client: &mut ClientReader,
    out: &mut ClientWriter,
    ctx: &Ctx<'_>,
) -> Result<(), crate::server::FramedError> {
    let mut skipping_to_sync = false;
    loop {
        let Some(frame) = client.next().await? else {
            return Ok(());
        };
        match frame.tag {
            b'X' => return Ok(()),
            b'Q' if !skipping_to_sync => {
                let text = match Query::decode(&frame.body) {
                    Ok(q) => q.as_str().map(str::to_string).ok(),
                    Err(_) => None,
                };
                let result = match &text {
                    Some(t) => execute(ctx, t).await,
                    None => Err(AdminError::new(
                        "22021",
                        "query is not valid UTF-8 or malformed",
                    )),
                };
                match result {
                    Ok(Reply::Shutdown) => {
                        // Like PgBouncer: no answer; the connection closes with the pooler.
                        let _ = out.flush().await;
                        return Ok(());
                    }
                    Ok(reply) => write_reply(out, reply).await?,
                    Err(e) => send(out, &e.to_response()).await?,
                }
                ready(out).await?;
            }
            b'S' => {
                skipping_to_sync = false;
                ready(out).await?;
            }
            b'H' => out.flush().await?,
            b'P' | b'B' | b'E' | b'D' | b'C' | b'F' => {
                if !skipping_to_sync {
                    skipping_to_sync = true;
                    let e = AdminError::new(
                        "0A000",
                        "extended protocol not supported on the admin console",
                    );
                    send(out, &e.to_response()).await?;
                    out.flush().await?;
                }
            }
            _ if skipping_to_sync => {}
            other => {
                let e = AdminError::new(
                    "08P01",
                    format!(
                        "unsupported packet type for admin console: {}",
                        char::from(other)
                    ),
                );
                send(out, &e.to_response()).await?;
                ready(out).await?;
            }
        }
    }
}

async fn write_reply(out: &mut ClientWriter, reply: Reply) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    reply.encode(&mut buf);
    out.write_all(&buf).await
}

/// Parse and run one console query.
async fn execute(ctx: &Ctx<'_>, query: &str) -> Result<Reply, AdminError> {
    let command = Command::parse(query).ok_or_else(|| AdminError::invalid(query))?;
    debug!(?command, "admin console command");
    match command {
        Command::Show(what) => show(ctx, &what, query),
        Command::Set { key, value } => set::run(ctx, &key, &value),
        Command::Verb { verb, arg } => {
            let arg = arg.as_deref();
            match verb.as_str() {
                "show" | "select" => show(ctx, arg.unwrap_or(""), query),
                "pause" => pause::pause(ctx, arg).await,
                "resume" => pause::resume(ctx, arg),
                "reload" => reload::run(ctx, arg, query),
                "kill" => kill::run(ctx, arg).await,
                "reconnect" => reconnect::run(ctx, arg).await,
                "shutdown" => shutdown::run(ctx, arg, query),
                _ => Err(AdminError::invalid(query)),
            }
        }
    }
}

/// `SHOW what`: every user of the console may.
fn show(ctx: &Ctx<'_>, what: &str, query: &str) -> Result<Reply, AdminError> {
    if let Some(reply) = set::fake_show(what) {
        return Ok(reply);
    }
    let rt = ctx.rt;
    let rows = match what.to_ascii_lowercase().as_str() {
        "pools" => show_pools::run(rt),
        "stats" => show_stats::stats(rt),
        "stats_totals" => show_stats::totals(rt),
        "stats_averages" => show_stats::averages_rows(rt),
        "totals" => show_stats::grand_totals(rt),
        "clients" => show_clients::clients(rt),
        "servers" => show_clients::servers(rt),
        "databases" => show_databases::run(rt),
        "config" => show_config::run(rt),
        "lists" => show_lists::run(rt),
        "users" => show_users::run(rt),
        "version" => show_version::run(),
        "help" => return Ok(show_help::run()),
        _ => return Err(AdminError::invalid(query)),
    };
    Ok(Reply::rows(rows, "SHOW"))
}
