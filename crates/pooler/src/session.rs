//! One client connection: the startup handshake, authentication against `auth_file`,
//! then forwarding to a server connection from the pool — held for the whole session in
//! `session` mode, or for one transaction in `transaction` mode.
//!
//! Frames pass through untouched; only their type bytes are read, to know when a
//! server's ReadyForQuery answers the last outstanding query (the moment a transaction-
//! mode client gives its server back).

use crate::cancel::{CancelRegistry, CancelSlot, CancelTarget};
use crate::client::{count_client_error, count_error, ClientInfo, ErrorKind};
use crate::config::{AuthType, DatabaseConfig, PoolMode, Secret};
use crate::lean_writer::LeanWriter;
use crate::live::LiveConfig;
use crate::net::{ParkedSocket, Peer, ReadHalf, Stream, WriteHalf};
use crate::park::Ticks;
use crate::pool::{Lease, Pool, PoolError, PoolKey};
use crate::pools::Pools;
use crate::prepared::{self, ClientStatements, Responses};
use crate::server::{send_cancel, FramedError, FramedReader, ServerCredential};
use bytes::BytesMut;
use pgherd_protocol::auth::{Md5Server, ScramServer, ScramVerifier, StoredPassword};
use pgherd_protocol::backend::{
    Authentication, BackendKeyData, ErrorResponse, ParameterStatus, ParseComplete, ReadyForQuery,
    Severity, TransactionStatus,
};
use pgherd_protocol::frontend::{PasswordMessage, SaslInitialResponse, SaslResponse};
use pgherd_protocol::{Frame, FrameDecoder, Message, StartupMessage, StartupPacket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

/// The database name that reaches the admin console instead of a server: a client
/// asking for it is handed back to the caller of [`run`] ([`Ended::Console`]).
pub const ADMIN_DATABASE: &str = "pgbouncer";

/// What sessions share, composed and handed to them by the runtime: the configuration
/// in force, the pool map, the cancel-key registry and the parker's clock.
pub struct SessionContext {
    pub live: Arc<LiveConfig>,
    pub pools: Arc<Pools>,
    pub cancels: CancelRegistry,
    /// The parker's clock, once a parker runs; without it idle clients keep their task.
    pub ticks: OnceLock<Arc<Ticks>>,
}

/// How a client's session ended (for the task that ran it).
pub enum Ended {
    /// It left, failed or was told why it must go.
    Done,
    /// It is idle and parks: its state, for the parker.
    Parked(ParkedSession),
    /// It asked for the admin console ([`ADMIN_DATABASE`]), which serves it from here.
    Console(Box<ConsoleClient>),
}

/// A client of the admin console, past the startup negotiation: the console
/// authenticates it itself, within what is left of `client_login_timeout`.
pub struct ConsoleClient {
    pub client: ClientReader,
    pub out: ClientWriter,
    pub origin: Origin,
    pub startup: StartupMessage,
    /// When `client_login_timeout` runs out (the console's own session does not).
    pub login_deadline: Option<tokio::time::Instant>,
}

/// Startup parameters PgBouncer tracks per client and applies to whichever server the
/// client is given (its "varcache").
const TRACKED_PARAMETERS: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "standard_conforming_strings",
    "application_name",
];

const STATEMENT_MODE_TRANSACTION: &str = "transaction blocks not allowed in statement pool mode";

/// Read size toward clients (the buffer grows for larger messages).
const CLIENT_READ_CHUNK: usize = 2048;
/// Write buffer toward clients; larger writes bypass it.
const CLIENT_WRITE_BUFFER: usize = 2048;

/// How many SSL/GSS negotiation rounds a client may try before its StartupMessage.
const MAX_NEGOTIATIONS: usize = 2;

pub type ClientReader = FramedReader<ReadHalf>;
pub type ClientWriter = LeanWriter<WriteHalf>;

/// Why a session ended early; what the client is told is decided where it is raised.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("client connection: {0}")]
    Client(#[from] FramedError),
    #[error("client write: {0}")]
    Io(#[from] std::io::Error),
    /// Already reported to the client.
    #[error("{0}")]
    Reported(String),
}

fn error(severity: Severity, sqlstate: &str, message: impl Into<String>) -> ErrorResponse {
    ErrorResponse::new(severity, sqlstate, message)
}

async fn send<W: AsyncWrite + Unpin>(
    out: &mut W,
    message: &impl Message,
) -> Result<(), SessionError> {
    let mut buf = BytesMut::new();
    message.encode(&mut buf);
    out.write_all(&buf).await?;
    Ok(())
}

/// Tell the client `e`, flush, and end the session with that reason.
async fn fail<W: AsyncWrite + Unpin>(out: &mut W, e: ErrorResponse) -> SessionError {
    let reason = e.message().unwrap_or("error").to_string();
    if send(out, &e).await.is_ok() {
        let _ = out.flush().await;
    }
    SessionError::Reported(reason)
}

/// Turn away a client over `max_client_conn`, with PostgreSQL's "too many connections".
pub async fn refuse(stream: Stream, peer: Peer, reason: &'static str) {
    let (read, write) = stream.split();
    let mut reader = FramedReader::new(read, FrameDecoder::frontend());
    let mut out = LeanWriter::with_capacity(CLIENT_WRITE_BUFFER, write);
    // Read its startup packet first, so a client that waits to be asked hears why.
    let _ = tokio::time::timeout(Duration::from_secs(5), reader.next_startup()).await;
    info!(%peer, reason, "refusing client");
    let _ = fail(&mut out, error(Severity::Fatal, "53300", reason)).await;
}

/// Serve one client until it leaves, fails or parks (then its state is returned for
/// the parker), or until it turns out to be an admin console client (returned to be
/// served by the console).
pub fn run(
    stream: Stream,
    info: Arc<ClientInfo>,
    ctx: Arc<SessionContext>,
) -> impl std::future::Future<Output = Ended> + Send {
    // Negotiation and login need far more state than a logged-in client: boxed, that
    // memory is given back once the client is in. (Not an `async fn`: its arguments
    // would keep a slot in the session's state for its whole life.)
    let login = Box::pin(log_in(stream, info, ctx.clone()));
    async move {
        let (session, lease, client, out) = match login.await {
            Ok(logged_in) => logged_in,
            Err(ended) => return ended,
        };
        let tracking = session.new_tracking(&ctx.live.config().settings);
        session
            .serve_until_parked(lease, tracking, client, out, &ctx)
            .await
            .map_or(Ended::Done, Ended::Parked)
    }
}

/// Serve a parked client again (its socket turned readable). Called inside the Tokio
/// runtime: the socket goes back into its reactor here.
pub fn resume(
    parked: ParkedSession,
    ctx: Arc<SessionContext>,
) -> impl std::future::Future<Output = Ended> + Send {
    let ParkedSession {
        session,
        tracking,
        socket,
        ..
    } = parked;
    let stream = socket.into_stream();
    async move {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                warn!(peer = %session.info.peer, error = %e, "cannot resume a parked client");
                ctx.cancels.unregister(session.pid, session.key);
                return Ended::Done;
            }
        };
        let (read, write) = stream.split();
        let client =
            FramedReader::with_read_chunk(read, FrameDecoder::frontend(), CLIENT_READ_CHUNK).lean();
        let out = LeanWriter::with_capacity(CLIENT_WRITE_BUFFER, write);
        let tracking = tracking.or_else(|| session.new_tracking(&ctx.live.config().settings));
        session
            .serve_until_parked(None, tracking, client, out, &ctx)
            .await
            .map_or(Ended::Done, Ended::Parked)
    }
}

/// A logged-in client idle between transactions, without a task: what its session
/// needs to go on, and its socket (out of Tokio's reactor).
pub struct ParkedSession {
    session: Session,
    /// Kept only when it holds statements.
    tracking: Option<Box<Tracking>>,
    socket: ParkedSocket,
    /// The parker's tick when it went idle.
    idle_tick: u64,
}

impl ParkedSession {
    /// The client's entry in the client list.
    pub fn client(&self) -> &Arc<ClientInfo> {
        &self.session.info
    }

    pub fn socket(&self) -> &ParkedSocket {
        &self.socket
    }

    /// The parker's tick since which the client has sent nothing (for
    /// `client_idle_timeout`).
    pub fn idle_tick(&self) -> u64 {
        self.idle_tick
    }

    /// Close the client's connection (`KILL`, `client_idle_timeout`).
    pub fn end(self, ctx: &SessionContext) {
        ctx.cancels.unregister(self.session.pid, self.session.key);
    }
}

/// A logged-in client with its connection.
type LoggedInClient = (Session, Option<Box<Lease>>, ClientReader, ClientWriter);

/// Startup negotiation, login and welcome. `Err`: nothing more to do here
/// ([`Ended::Done`]), or an admin console client to hand over ([`Ended::Console`]).
async fn log_in(
    stream: Stream,
    info: Arc<ClientInfo>,
    ctx: Arc<SessionContext>,
) -> Result<LoggedInClient, Ended> {
    let ctx = &ctx;
    let peer = info.peer;
    let login_timeout = ctx.live.config().settings.client_login_timeout;
    let deadline = login_timeout.map(|t| tokio::time::Instant::now() + t);
    let negotiated = match deadline {
        Some(d) => match tokio::time::timeout_at(d, negotiate(stream, peer, ctx)).await {
            Ok(n) => n,
            Err(_) => {
                debug!(%peer, "client_login_timeout during the startup negotiation");
                return Err(Ended::Done);
            }
        },
        None => negotiate(stream, peer, ctx).await,
    };
    let Some(Negotiated {
        stream,
        buffered,
        startup,
        tls,
    }) = negotiated
    else {
        return Err(Ended::Done);
    };
    info.set_tls(tls.clone());
    let (read, write) = stream.split();
    // Small buffers: most clients sit idle most of the time, and both grow (or are
    // bypassed) for large messages.
    let mut client =
        FramedReader::with_buffer(read, FrameDecoder::frontend(), buffered, CLIENT_READ_CHUNK)
            .lean();
    let mut out = LeanWriter::with_capacity(CLIENT_WRITE_BUFFER, write);
    let login = login(&mut client, &mut out, &info, !tls.is_empty(), startup, ctx);
    let logged_in = match deadline {
        Some(d) => match tokio::time::timeout_at(d, login).await {
            Ok(r) => r,
            Err(_) => Err(fail(
                &mut out,
                error(Severity::Fatal, "08P01", "client_login_timeout"),
            )
            .await),
        },
        None => login.await,
    };
    let (session, lease) = match logged_in {
        Ok(Some(LoggedIn::Client(logged_in))) => *logged_in,
        Ok(Some(LoggedIn::Admin(startup))) => {
            // The console is a long-lived session, outside client_login_timeout (its
            // authentication keeps to the deadline).
            let origin = Origin {
                peer,
                tls: !tls.is_empty(),
            };
            return Err(Ended::Console(Box::new(ConsoleClient {
                client,
                out,
                origin,
                startup,
                login_deadline: deadline,
            })));
        }
        Ok(None) => return Err(Ended::Done),
        Err(SessionError::Client(FramedError::Protocol(e))) => {
            // Garbage, a length beyond the limits, a malformed startup packet.
            info!(%peer, error = %e, "protocol violation during login");
            let _ = fail(
                &mut out,
                error(
                    Severity::Fatal,
                    "08P01",
                    format!("invalid frontend message: {e}"),
                ),
            )
            .await;
            return Err(Ended::Done);
        }
        Err(e) => {
            debug!(%peer, error = %e, "login ended");
            return Err(Ended::Done);
        }
    };
    Ok((session, lease, client, out))
}

/// How serving a logged-in client ended.
enum Served {
    /// It left, failed or was told why it must go.
    Left,
    /// It is idle (since this parker tick) and may park.
    Parks(u64),
}

/// What an idle client did next.
enum Next {
    Frame(Frame),
    /// Left (EOF, error, client_idle_timeout).
    Left,
    /// Nothing for two parker ticks: park.
    Park,
}

impl From<Option<Frame>> for Next {
    fn from(f: Option<Frame>) -> Next {
        f.map_or(Next::Left, Next::Frame)
    }
}

/// The client's next message, or [`Next::Park`] once it has been idle through two of
/// the parker's ticks with nothing half-read.
async fn next_or_park(client: &mut ClientReader, parker: &Ticks) -> Result<Next, FramedError> {
    let since = parker.epoch();
    loop {
        let tick = parker.next_tick();
        tokio::select! {
            biased;
            f = client.next() => return f.map(Next::from),
            _ = tick => {}
        }
        if parker.epoch() >= since + 2 && client.buffered().is_empty() {
            return Ok(Next::Park);
        }
    }
}

/// Where a client connects from, as authentication rules (auth_hba_file) see it.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub peer: Peer,
    /// It negotiated TLS (`hostssl` lines match).
    pub tls: bool,
}

/// A logged-in client.
struct Session {
    /// The client's entry in the client list (its address, what SHOW CLIENTS shows).
    info: Arc<ClientInfo>,
    user: String,
    database: String,
    mode: PoolMode,
    pool: Arc<Pool>,
    /// Tracked startup parameters the client asked for.
    wanted: Vec<(String, String)>,
    /// Session mode: the client left state on its server (see
    /// [`prepared::leaves_session_state`]), so it stays with that server when the
    /// primary moves.
    pinned: std::sync::atomic::AtomicBool,
    pid: i32,
    key: u32,
    cancel: CancelSlot,
}

/// What the server owes a client, and since when (SHOW STATS' query and transaction
/// times).
#[derive(Debug, Default)]
struct InFlight {
    /// Queries and Syncs sent whose ReadyForQuery has not come back yet.
    pending: usize,
    /// When the oldest unanswered query went out.
    query_started: Option<Instant>,
    /// When the running transaction's first query went out.
    xact_started: Option<Instant>,
    /// Session mode: the server owes nothing and is outside a transaction.
    at_rest: bool,
}

impl InFlight {
    /// `expected` more ReadyForQuery are owed (a Query or a Sync went out).
    fn sent(&mut self, expected: usize) {
        if expected == 0 {
            return;
        }
        if self.pending == 0 || self.xact_started.is_none() {
            let now = Instant::now();
            self.query_started.get_or_insert(now);
            self.xact_started.get_or_insert(now);
        }
        self.pending += expected;
    }

    /// A ReadyForQuery came back; `idle`: the transaction is over.
    fn ready(&mut self, idle: bool, stats: &crate::pool::PoolStats) {
        self.pending = self.pending.saturating_sub(1);
        let now = Instant::now();
        let micros = |since: Instant| now.duration_since(since).as_micros() as u64;
        if let Some(t) = self.query_started.take() {
            stats
                .total_query_time_us
                .fetch_add(micros(t), Ordering::Relaxed);
        }
        if self.pending > 0 {
            self.query_started = Some(now);
        }
        if idle {
            if let Some(t) = self.xact_started.take() {
                stats
                    .total_xact_time_us
                    .fetch_add(micros(t), Ordering::Relaxed);
            }
        }
    }
}

/// The client messages [`Session::plain_batch`] found plain: their bytes, the
/// Queries and Syncs among them, whether one drops every prepared statement
/// (`DEALLOCATE ALL`, `DISCARD ALL`), and the answers they owe.
#[derive(Debug, Default)]
struct PlainBatch {
    len: usize,
    queries: usize,
    drops_all: bool,
    answers: prepared::PlainAnswers,
}

/// How [`Session::prepare_only`] left a client that started with a named Parse.
enum PrepareOnly {
    /// Every message up to its Sync was answered without a server.
    Answered,
    /// The client left.
    Left,
    /// `next` needs a server; `earlier` were received before it and not answered.
    NeedsServer { earlier: Vec<Frame>, next: Frame },
}

/// Bounds on what [`Session::prepare_only`] holds before taking a server anyway.
const PREPARE_ONLY_MAX_FRAMES: usize = 64;
const PREPARE_ONLY_MAX_BYTES: usize = 1 << 20;

/// How the next transaction starts.
enum Start {
    /// Waiting for the client.
    Idle,
    /// With this first message from the client.
    Message(Frame),
    /// With the server taken at login (session mode); boxed, as a Lease is large.
    Attached(Box<Lease>),
}

/// Who got past the startup phase.
enum LoggedIn {
    /// A client of a pooled database, with the server taken at login (if one was).
    Client(Box<(Session, Option<Box<Lease>>)>),
    /// A client of the admin console (`pgbouncer`), which authenticates it itself.
    Admin(StartupMessage),
}

/// Startup, authentication and the welcome. `Ok(None)`: nothing more to do (a cancel
/// request, or a client that left).
async fn login(
    client: &mut ClientReader,
    out: &mut ClientWriter,
    info: &Arc<ClientInfo>,
    tls: bool,
    startup: StartupMessage,
    ctx: &SessionContext,
) -> Result<Option<LoggedIn>, SessionError> {
    let peer = info.peer;
    let user = startup.user().to_string();
    let database = startup.database().to_string();
    let config = ctx.live.config();
    let wanted = match tracked_parameters(&startup, &config.settings.ignore_startup_parameters) {
        Ok(w) => w,
        Err(name) => {
            return Err(fail(
                out,
                error(
                    Severity::Fatal,
                    "08P01",
                    format!("unsupported startup parameter: {name}"),
                ),
            )
            .await)
        }
    };
    if database == ADMIN_DATABASE {
        return Ok(Some(LoggedIn::Admin(startup)));
    }
    let local_port = info.local_addr.map(|a| a.port());
    let Some((pool_database, db)) = config.database_for(&database, local_port) else {
        return Err(fail(
            out,
            error(
                Severity::Fatal,
                "3D000",
                format!("database \"{database}\" does not exist"),
            ),
        )
        .await);
    };
    let authenticated =
        authenticate(client, out, ctx, &user, &database, Origin { peer, tls }).await?;
    let credential = server_credential(ctx, &db, &user, authenticated);
    let key = PoolKey {
        database: pool_database.clone(),
        user: db.user.clone().unwrap_or_else(|| user.clone()),
    };
    let pool = ctx.pools.pool(&key, &db, credential);
    // From here on the client is in the pool's database (`NAME@ROLE` on a route
    // listener), as SHOW CLIENTS and SHOW POOLS say.
    let database = pool_database;
    let mode = ctx.pools.pool_mode(&db, &user);
    // The welcome needs the server's parameters: from the pool's first login, or from
    // a server connection now (then a login failure toward the server is reported before
    // the client thinks it is in).
    let (parameters, lease) = match pool.welcome_parameters() {
        Some(p) => (p, None),
        None => match pool.acquire(Some(info)).await {
            Ok(l) => {
                pool.set_welcome_parameters(l.conn.parameters());
                (l.conn.parameters().to_vec(), Some(l))
            }
            Err(e) => return Err(fail(out, pool_error(&e)).await),
        },
    };
    let (pid, key_secret, cancel) = ctx.cancels.register(info);
    let session = Session {
        info: info.clone(),
        user,
        database,
        mode,
        wanted,
        pinned: std::sync::atomic::AtomicBool::new(false),
        pid,
        key: key_secret,
        cancel,
        pool,
    };
    if let Err(e) = welcome(out, &session, &parameters).await {
        // The client left before it was in: its cancel key goes with it.
        ctx.cancels.unregister(pid, key_secret);
        return Err(e);
    }
    // SHOW CLIENTS lists it from now on, before its first query.
    let application_name = session
        .wanted
        .iter()
        .find(|(n, _)| n == "application_name")
        .map(|(_, v)| v.as_str());
    info.set_login(&session.user, &session.database, application_name);
    info!(peer = %session.info.peer, user = %session.user, database = %session.database, mode = session.mode.as_str(), "client logged in");
    Ok(Some(LoggedIn::Client(Box::new((
        session,
        lease.map(Box::new),
    )))))
}

/// AuthenticationOk, the server's parameters (with the client's own tracked values),
/// the pooler's BackendKeyData and ReadyForQuery, in one flush.
async fn welcome(
    out: &mut ClientWriter,
    session: &Session,
    parameters: &[(String, String)],
) -> Result<(), SessionError> {
    send(out, &Authentication::Ok).await?;
    for (name, value) in parameters {
        let value = session
            .wanted
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or(value);
        send(out, &ParameterStatus::new(name.clone(), value)).await?;
    }
    send(out, &BackendKeyData::new(session.pid, session.key)).await?;
    let ready = ReadyForQuery {
        status: TransactionStatus::Idle,
    };
    send(out, &ready).await?;
    out.flush().await?;
    Ok(())
}

/// A client past the startup negotiation.
struct Negotiated {
    stream: Stream,
    /// Bytes the client sent after its StartupMessage.
    buffered: BytesMut,
    startup: StartupMessage,
    /// The TLS protocol and cipher (`SHOW CLIENTS`' `tls`); empty on plain TCP.
    tls: String,
}

/// Read startup packets until a StartupMessage: an SSLRequest gets TLS when
/// `client_tls_sslmode` offers it ('N' otherwise), a GSSENCRequest 'N', a
/// CancelRequest is passed on to the right server. `None`: nothing more to do (a
/// cancel, a client that left, or an error already told to the client).
async fn negotiate(stream: Stream, peer: Peer, ctx: &SessionContext) -> Option<Negotiated> {
    let tls = ctx.live.tls().client;
    let mut reader =
        FramedReader::with_read_chunk(stream, FrameDecoder::frontend(), CLIENT_READ_CHUNK);
    let mut encrypted = String::new();
    for _ in 0..=MAX_NEGOTIATIONS {
        let packet = match reader.next_startup().await {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(FramedError::Protocol(e)) => {
                info!(%peer, error = %e, "protocol violation during login");
                let message = format!("invalid startup packet: {e}");
                refuse_unsplit(reader.get_mut(), error(Severity::Fatal, "08P01", message)).await;
                return None;
            }
            Err(e) => {
                debug!(%peer, error = %e, "client left during the startup negotiation");
                return None;
            }
        };
        match packet {
            // TLS over TCP only: a Unix socket is local already (PostgreSQL agrees).
            StartupPacket::SslRequest
                if encrypted.is_empty() && tls.is_some() && reader.get_ref().is_tcp() =>
            {
                let acceptor = tls.as_ref()?.acceptor.clone();
                let (stream, rest) = reader.into_parts();
                let Stream::Tcp(mut tcp) = stream else {
                    return None;
                };
                if !rest.is_empty() {
                    // Bytes sent before the handshake would be taken as having come
                    // through it (CVE-2021-23222): refuse, like PostgreSQL.
                    info!(%peer, "unencrypted data after SSLRequest");
                    let message = "received unencrypted data after SSL request";
                    refuse_unsplit(&mut tcp, error(Severity::Fatal, "08P01", message)).await;
                    return None;
                }
                if tcp.write_all(b"S").await.is_err() {
                    return None;
                }
                let stream = match acceptor.accept(tcp).await {
                    Ok(s) => Stream::TlsFromClient(Box::new(s)),
                    Err(e) => {
                        info!(%peer, error = %e, "TLS handshake with client failed");
                        return None;
                    }
                };
                encrypted = stream.tls_description();
                reader = FramedReader::with_read_chunk(
                    stream,
                    FrameDecoder::frontend(),
                    CLIENT_READ_CHUNK,
                );
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                let out = reader.get_mut();
                if out.write_all(b"N").await.is_err() || out.flush().await.is_err() {
                    return None;
                }
            }
            StartupPacket::Cancel(c) => {
                forward_cancel(ctx, &c).await;
                return None;
            }
            StartupPacket::Startup(startup) => {
                if encrypted.is_empty()
                    && reader.get_ref().is_tcp()
                    && tls.as_ref().is_some_and(|t| t.insists())
                {
                    info!(%peer, "refusing a client without TLS (client_tls_sslmode)");
                    let e = error(Severity::Fatal, "08P01", "SSL required");
                    refuse_unsplit(reader.get_mut(), e).await;
                    return None;
                }
                let (stream, buffered) = reader.into_parts();
                return Some(Negotiated {
                    stream,
                    buffered,
                    startup,
                    tls: encrypted,
                });
            }
        }
    }
    let e = error(
        Severity::Fatal,
        "08P01",
        "too many encryption negotiation requests",
    );
    refuse_unsplit(reader.get_mut(), e).await;
    None
}

/// Tell a client `e` and half-close: the FIN goes out before the socket is dropped,
/// so unread input (which makes the kernel send RST) does not destroy the message.
async fn refuse_unsplit<S: AsyncWrite + Unpin>(stream: &mut S, e: ErrorResponse) {
    fail(stream, e).await;
    let _ = stream.shutdown().await;
}

/// Pass a client's CancelRequest on to the server backend its session uses now.
async fn forward_cancel(ctx: &SessionContext, c: &pgherd_protocol::CancelRequest) {
    let key = <[u8; 4]>::try_from(&c.secret_key[..])
        .map(u32::from_be_bytes)
        .ok();
    if let Some((target, _in_flight)) = key.and_then(|k| ctx.cancels.target(c.process_id, k)) {
        let timeout = ctx.live.config().settings.server_connect_timeout;
        if let Err(e) = send_cancel(
            (&target.server.host, target.server.port),
            target.backend_pid,
            &target.cancel_key,
            timeout,
        )
        .await
        {
            debug!(error = %e, "forwarding a cancel request failed");
        }
    }
}

/// The tracked parameters from the StartupMessage; `Err(name)` for one PgBouncer would
/// refuse (not tracked and not in `ignore_startup_parameters`).
fn tracked_parameters(
    m: &StartupMessage,
    ignored: &[String],
) -> Result<Vec<(String, String)>, String> {
    let mut wanted = Vec::new();
    for (name, value) in &m.parameters {
        if matches!(name.as_str(), "user" | "database")
            || ignored.iter().any(|i| i.eq_ignore_ascii_case(name))
        {
            continue;
        }
        match TRACKED_PARAMETERS
            .iter()
            .find(|t| t.eq_ignore_ascii_case(name))
        {
            Some(t) => wanted.push((t.to_string(), value.clone())),
            None => return Err(name.clone()),
        }
    }
    Ok(wanted)
}

/// What authentication established about a client.
pub(crate) struct Authenticated {
    /// SCRAM keys the client proved (to log into servers holding the same verifier).
    pub scram_keys: Option<(Vec<u8>, Vec<u8>)>,
    /// The secret checked, when it came from `auth_query` rather than `auth_file`.
    pub queried_secret: Option<StoredPassword>,
}

/// Check the client's password against its `auth_file` (or `auth_query`) secret per
/// `auth_type`.
pub(crate) async fn authenticate(
    client: &mut ClientReader,
    out: &mut ClientWriter,
    ctx: &SessionContext,
    user: &str,
    database: &str,
    origin: Origin,
) -> Result<Authenticated, SessionError> {
    let config = ctx.live.config();
    let userlist = ctx.live.userlist();
    let mut queried_secret = None;
    let stored = match userlist.get(user) {
        Some(s) => Some(StoredPassword::parse(s.expose())),
        None => {
            queried_secret = match config.resolve_database(database) {
                Some(db) => auth_query(ctx, &db, database, user).await,
                None => None,
            };
            queried_secret.clone()
        }
    };
    let scram_keys = check_password(client, out, ctx, user, database, origin, stored).await?;
    Ok(Authenticated {
        scram_keys,
        queried_secret,
    })
}

/// Look a user's secret up with `auth_query`, logged in as `auth_user` (PgBouncer's
/// `auth_user`/`auth_query`, per database or global). `None`: no such user, no
/// `auth_user`, or the lookup failed (logged; the login then fails like a wrong password).
async fn auth_query(
    ctx: &SessionContext,
    db: &DatabaseConfig,
    database: &str,
    user: &str,
) -> Option<StoredPassword> {
    let config = ctx.live.config();
    let auth_user = db
        .auth_user
        .clone()
        .or_else(|| config.settings.auth_user.clone())?;
    if auth_user == user {
        return None;
    }
    let query = db
        .auth_query
        .clone()
        .unwrap_or_else(|| config.settings.auth_query.clone());
    let sql = query.replace("$1", &quote_e_literal(user));
    let credential = match ctx.live.userlist().get(&auth_user) {
        Some(Secret::Plain(p)) => ServerCredential::Plain(p.clone()),
        Some(Secret::Md5(h)) => ServerCredential::Md5Hash(h.clone()),
        _ => ServerCredential::None,
    };
    let lookup_db = crate::pools::auth_lookup_database(db);
    let key = PoolKey {
        database: database.to_string(),
        user: auth_user.clone(),
    };
    let pool = ctx.pools.pool(&key, &lookup_db, credential);
    // The client logs in: it is not waiting in this pool in SHOW CLIENTS' sense.
    let mut lease = match pool.acquire(None).await {
        Ok(l) => l,
        Err(e) => {
            warn!(auth_user = %auth_user, error = %e, "auth_query: cannot log in as auth_user");
            return None;
        }
    };
    let row = lease.conn.query_first_row(&sql).await;
    pool.release(lease, row.is_ok(), None).await;
    match row {
        Ok(Some(row)) => row
            .get(1)
            .cloned()
            .flatten()
            .map(|p| StoredPassword::parse(&p)),
        Ok(None) => None,
        Err(e) => {
            warn!(auth_user = %auth_user, error = %e, "auth_query failed");
            None
        }
    }
}

/// An `E'…'` string literal: safe whatever `standard_conforming_strings` says.
fn quote_e_literal(value: &str) -> String {
    format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Count a failed login. The names come from the client, so only configured ones are
/// used as labels (others are reported as empty): no one can create series at will.
fn count_login_failed(ctx: &SessionContext, database: &str, user: &str) {
    let config = ctx.live.config();
    let known_db = config.databases.contains_key(database)
        || ctx.pools.pools().iter().any(|p| p.key.database == database);
    let known_user = ctx.live.userlist().get(user).is_some() || config.users.contains_key(user);
    count_error(
        if known_db { database } else { "" },
        if known_user { user } else { "" },
        ErrorKind::LoginFailed,
    );
}

/// Check the client's password against `stored` per `auth_type` (or the hba method).
async fn check_password(
    client: &mut ClientReader,
    out: &mut ClientWriter,
    ctx: &SessionContext,
    user: &str,
    database: &str,
    origin: Origin,
    stored: Option<StoredPassword>,
) -> Result<Option<(Vec<u8>, Vec<u8>)>, SessionError> {
    let config = ctx.live.config();
    let method = match config.settings.auth_type {
        AuthType::Hba => match ctx.live.hba_method(origin.peer, origin.tls, database, user) {
            Some(m) => m,
            None => {
                count_login_failed(ctx, database, user);
                return Err(fail(
                    out,
                    error(
                        Severity::Fatal,
                        "28000",
                        format!("no pg_hba.conf entry for host \"{}\", user \"{user}\", database \"{database}\"", origin.peer.ip().map_or("[local]".to_string(), |ip| ip.to_string())),
                    ),
                )
                .await);
            }
        },
        other => other,
    };
    let denied = || {
        count_login_failed(ctx, database, user);
        error(
            Severity::Fatal,
            "28P01",
            format!("password authentication failed for user \"{user}\""),
        )
    };
    match method {
        AuthType::Any => Ok(None),
        AuthType::Trust => match stored {
            Some(_) => Ok(None),
            None => Err(fail(out, denied()).await),
        },
        AuthType::Plain => {
            send(out, &Authentication::CleartextPassword).await?;
            out.flush().await?;
            let body = password_response(client, out).await?;
            let pw = PasswordMessage::decode(&body)
                .map_err(|e| SessionError::Reported(e.to_string()))?;
            match stored.map(|s| s.verify_cleartext(user, &pw.password)) {
                Some(Ok(())) => Ok(None),
                _ => Err(fail(out, denied()).await),
            }
        }
        AuthType::Md5 => match stored {
            // A SCRAM secret cannot answer md5: PgBouncer switches to SCRAM, so do we.
            Some(StoredPassword::Scram(_)) => {
                scram(client, out, user, stored.as_ref(), denied).await
            }
            _ => md5(client, out, user, stored.as_ref(), denied).await,
        },
        AuthType::ScramSha256 => scram(client, out, user, stored.as_ref(), denied).await,
        AuthType::Hba => Err(fail(out, denied()).await),
    }
}

/// The body of the client's next password message ('p').
async fn password_response(
    client: &mut ClientReader,
    out: &mut ClientWriter,
) -> Result<bytes::Bytes, SessionError> {
    match client.next().await? {
        Some(f) if f.tag == b'p' => Ok(f.body),
        Some(_) => Err(fail(
            out,
            error(Severity::Fatal, "08P01", "expected a password response"),
        )
        .await),
        None => Err(SessionError::Reported(
            "client left during authentication".into(),
        )),
    }
}

async fn md5(
    client: &mut ClientReader,
    out: &mut ClientWriter,
    user: &str,
    stored: Option<&StoredPassword>,
    denied: impl Fn() -> ErrorResponse,
) -> Result<Option<(Vec<u8>, Vec<u8>)>, SessionError> {
    // An unknown user still gets a challenge, so the answer does not reveal who exists.
    let fallback = StoredPassword::Plain(String::new());
    let server = Md5Server::new(user, stored.unwrap_or(&fallback))
        .map_err(|e| SessionError::Reported(e.to_string()))?;
    send(out, &server.request()).await?;
    out.flush().await?;
    let body = password_response(client, out).await?;
    let pw = PasswordMessage::decode(&body).map_err(|e| SessionError::Reported(e.to_string()))?;
    match (stored, server.verify(&pw.password)) {
        (Some(_), Ok(())) => Ok(None),
        _ => Err(fail(out, denied()).await),
    }
}

/// SCRAM verifiers derived from cleartext secrets (`auth_file`, `auth_query`), by user
/// and secret: PBKDF2 runs once per password, not on every login attempt, which anyone
/// who can connect could otherwise repeat to keep the pooler's threads busy (PostgreSQL
/// stores verifiers and derives nothing at login). Bounded: emptied when full.
fn cleartext_verifier(user: &str, password: &str) -> ScramVerifier {
    const MAX_ENTRIES: usize = 10_000;
    type Cache = std::collections::HashMap<(String, String), ScramVerifier>;
    static CACHE: OnceLock<std::sync::Mutex<Cache>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (user.to_owned(), password.to_owned());
    if let Some(v) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return v.clone();
    }
    // Outside the lock: other users' logins do not wait for this derivation.
    let derived = ScramVerifier::from_password(password.as_bytes());
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= MAX_ENTRIES {
        cache.clear();
    }
    cache.entry(key).or_insert(derived).clone()
}

async fn scram(
    client: &mut ClientReader,
    out: &mut ClientWriter,
    user: &str,
    stored: Option<&StoredPassword>,
    denied: impl Fn() -> ErrorResponse,
) -> Result<Option<(Vec<u8>, Vec<u8>)>, SessionError> {
    // Unknown users (and md5 secrets, which cannot do SCRAM) run a mock exchange that
    // fails at the end, like PostgreSQL.
    let known = stored.and_then(|s| match s {
        StoredPassword::Plain(p) => Some(ScramServer::new(cleartext_verifier(user, p))),
        other => ScramServer::from_stored(other).ok(),
    });
    let real = known.is_some();
    let mut server = known.unwrap_or_else(|| ScramServer::mock(user));
    send(
        out,
        &Authentication::Sasl {
            mechanisms: vec!["SCRAM-SHA-256".to_string()],
        },
    )
    .await?;
    out.flush().await?;
    let body = password_response(client, out).await?;
    let first =
        SaslInitialResponse::decode(&body).map_err(|e| SessionError::Reported(e.to_string()))?;
    if first.mechanism != "SCRAM-SHA-256" {
        return Err(fail(
            out,
            error(
                Severity::Fatal,
                "28000",
                format!("unsupported SASL mechanism {}", first.mechanism),
            ),
        )
        .await);
    }
    let server_first = match server.handle_client_first(first.data.as_deref().unwrap_or(&[])) {
        Ok(s) => s,
        Err(_) => return Err(fail(out, denied()).await),
    };
    send(
        out,
        &Authentication::SaslContinue {
            data: bytes::Bytes::from(server_first.into_bytes()),
        },
    )
    .await?;
    out.flush().await?;
    let body = password_response(client, out).await?;
    let response =
        SaslResponse::decode(&body).map_err(|e| SessionError::Reported(e.to_string()))?;
    let server_final = match server.handle_client_final(&response.data) {
        Ok(s) if real => s,
        _ => return Err(fail(out, denied()).await),
    };
    send(
        out,
        &Authentication::SaslFinal {
            data: bytes::Bytes::from(server_final.into_bytes()),
        },
    )
    .await?;
    let keys = server
        .client_key()
        .map(|ck| (ck.to_vec(), server.verifier().keys.server_key.to_vec()));
    Ok(keys)
}

/// How the pooler logs into servers for this client: the database entry's password,
/// else the (forced or client's) user's `auth_file` secret, else the SCRAM keys the
/// client just proved.
fn server_credential(
    ctx: &SessionContext,
    db: &DatabaseConfig,
    user: &str,
    authenticated: Authenticated,
) -> ServerCredential {
    let Authenticated {
        scram_keys,
        queried_secret,
    } = authenticated;
    if let Some(pw) = &db.password {
        return ServerCredential::Plain(pw.expose().to_string());
    }
    let server_user = db.user.as_deref().unwrap_or(user);
    match ctx.live.userlist().get(server_user) {
        Some(Secret::Plain(p)) => ServerCredential::Plain(p.clone()),
        Some(Secret::Md5(h)) => ServerCredential::Md5Hash(h.clone()),
        Some(Secret::ScramVerifier(_)) if db.user.is_none() => match scram_keys {
            Some((client_key, server_key)) => ServerCredential::ScramKeys {
                client_key,
                server_key,
            },
            None => ServerCredential::None,
        },
        // Not in auth_file: the secret auth_query found.
        None if db.user.is_none() => match (queried_secret, scram_keys) {
            (Some(StoredPassword::Md5(h)), _) => ServerCredential::Md5Hash(h),
            (Some(StoredPassword::Plain(p)), _) => ServerCredential::Plain(p),
            (Some(StoredPassword::Scram(_)), Some((client_key, server_key))) => {
                ServerCredential::ScramKeys {
                    client_key,
                    server_key,
                }
            }
            _ => ServerCredential::None,
        },
        _ => ServerCredential::None,
    }
}

fn pool_error(e: &PoolError) -> ErrorResponse {
    match e {
        PoolError::WaitTimeout => error(Severity::Fatal, "08P01", "query_wait_timeout"),
        PoolError::NoServer(why) => error(Severity::Fatal, "08006", format!("no server: {why}")),
        PoolError::Server(s) => s.to_client_error(),
    }
}

/// Named prepared statements across transactions (transaction mode with
/// `max_prepared_statements` > 0); see [`crate::prepared`].
struct Tracking {
    statements: ClientStatements,
    responses: Responses,
    limit: usize,
}

/// Encode a client frame for the server: rewritten when statements are tracked.
fn encode_for_server(
    frame: &Frame,
    mode: PoolMode,
    tracking: &mut Option<Box<Tracking>>,
    lease: &mut Lease,
    batch: &mut BytesMut,
) -> Result<(), SessionError> {
    let refusal;
    let mut frame = frame;
    if frame.tag == b'Q' && mode != PoolMode::Session {
        // SQL-level PREPARE cannot survive the change of server between transactions:
        // the server answers it with a clear error instead. DEALLOCATE ALL and DISCARD
        // ALL also drop the statements we prepared there.
        let query = frame.body.strip_suffix(b"\0").unwrap_or(&frame.body);
        match prepared::sql_prepare_kind(query) {
            prepared::SqlPrepare::Prepare => {
                let mut body = prepared::PREPARE_REFUSAL.as_bytes().to_vec();
                body.push(0);
                refusal = Frame::new(b'Q', body);
                frame = &refusal;
            }
            prepared::SqlPrepare::DropsAll => lease.conn.prepared_statements().clear(),
            prepared::SqlPrepare::Other => {}
        }
    }
    match tracking {
        Some(t) => prepared::rewrite(
            frame,
            &mut t.statements,
            lease.conn.prepared_statements(),
            t.limit,
            batch,
            &mut t.responses,
        )
        .map_err(|e| SessionError::Reported(format!("malformed client message: {e}"))),
        None => {
            frame.encode(batch);
            Ok(())
        }
    }
}

/// How forwarding with a server ended.
enum Pump {
    /// The client closed or sent Terminate.
    ClientGone,
    /// Transaction mode: the server answered every query and is idle again.
    TransactionDone,
    /// The server connection failed.
    ServerFailed(String),
    /// Session mode, between transactions: the primary moved (or is about to), so the
    /// client leaves its server and takes one where the route points with its next
    /// message.
    Moved,
    /// A timeout ran out or a pool-mode rule was broken (PgBouncer's wording): the
    /// client is told and closed.
    Ended(&'static str),
}

/// Queries a client message makes the server answer with a ReadyForQuery.
fn ready_for_queries_expected(tag: u8) -> usize {
    // 'Q' simple query, 'S' Sync of the extended protocol.
    usize::from(matches!(tag, b'Q' | b'S'))
}

impl Session {
    /// Forward until the client leaves. `login` is the server connection taken at login.
    ///
    /// Between transactions this future holds little: everything a transaction needs
    /// lives in a boxed future that exists only while the transaction runs, so an idle
    /// client costs a few hundred bytes here rather than the whole state machine.
    /// The prepared statements this client's named statements are tracked in, unless
    /// it keeps one server for the whole session.
    fn new_tracking(&self, settings: &crate::config::Settings) -> Option<Box<Tracking>> {
        (self.mode != PoolMode::Session && settings.max_prepared_statements > 0).then(|| {
            Box::new(Tracking {
                statements: ClientStatements::default(),
                responses: Responses::default(),
                limit: settings.max_prepared_statements as usize,
            })
        })
    }

    /// Serve the client until it leaves or fails (`None`), or until it parks: then its
    /// state, to be resumed when its socket turns readable. (Not an `async fn`: its
    /// arguments would be stored twice in the future, which lives as long as the client.)
    #[allow(clippy::manual_async_fn)]
    fn serve_until_parked<'a>(
        self,
        login: Option<Box<Lease>>,
        mut tracking: Option<Box<Tracking>>,
        mut client: ClientReader,
        mut out: ClientWriter,
        ctx: &'a SessionContext,
    ) -> impl std::future::Future<Output = Option<ParkedSession>> + Send + 'a {
        async move {
            match self
                .serve(login, &mut tracking, &mut client, &mut out, ctx)
                .await
            {
                Ok(Served::Parks(idle_tick)) => {
                    // Only a plain socket with nothing buffered either way parks.
                    let (read, _) = client.into_parts();
                    match out
                        .into_inner()
                        .map(|write| ParkedSocket::from_halves(read, write))
                    {
                        Some(Ok(Ok(socket))) => {
                            return Some(ParkedSession {
                                session: self,
                                // Made again on resuming, unless it holds statements.
                                tracking: tracking.filter(|t| !t.statements.is_empty()),
                                socket,
                                idle_tick,
                            });
                        }
                        Some(Ok(Err(e))) => {
                            debug!(peer = %self.info.peer, error = %e, "client lost while parking")
                        }
                        _ => warn!(peer = %self.info.peer, "client cannot park: closing it"),
                    }
                }
                Ok(Served::Left) => {}
                Err(e) => debug!(peer = %self.info.peer, error = %e, "session ended"),
            }
            ctx.cancels.unregister(self.pid, self.key);
            None
        }
    }

    async fn serve(
        &self,
        login: Option<Box<Lease>>,
        tracking: &mut Option<Box<Tracking>>,
        client: &mut ClientReader,
        out: &mut ClientWriter,
        ctx: &SessionContext,
    ) -> Result<Served, SessionError> {
        let config = ctx.live.config();
        let settings = &config.settings;
        // TLS state cannot leave the task: only plain sockets park.
        let parker = if client.get_ref().is_plain() {
            ctx.ticks.get().map(|t| &**t)
        } else {
            None
        };
        let mut next = match (self.mode, login) {
            // Session mode keeps the server it logged in with.
            (PoolMode::Session, Some(login)) => Start::Attached(login),
            (_, Some(login)) => {
                Box::pin(self.pool.release(*login, true, Some(&self.info))).await;
                Start::Idle
            }
            // Session mode too takes its server with the first message.
            (_, None) => Start::Idle,
        };
        loop {
            if let Start::Idle = next {
                // Between transactions: wait for the client's next message.
                let idle_tick = parker.map_or(0, Ticks::epoch);
                next = match self
                    .next_from_client(client, settings.client_idle_timeout, parker)
                    .await?
                {
                    Next::Frame(f) if f.tag != b'X' => Start::Message(f),
                    Next::Park => return Ok(Served::Parks(idle_tick)),
                    _ => return Ok(Served::Left),
                };
            }
            let transaction = self.transaction(next, client, out, settings, tracking);
            if !Box::pin(transaction).await? {
                return Ok(Served::Left);
            }
            next = Start::Idle;
        }
    }

    /// One transaction (transaction mode), or the rest of the session (session mode):
    /// take a server unless attached already, forward until it is done. `Ok(false)`:
    /// the client left.
    async fn transaction(
        &self,
        start: Start,
        client: &mut ClientReader,
        out: &mut ClientWriter,
        settings: &crate::config::Settings,
        tracking: &mut Option<Box<Tracking>>,
    ) -> Result<bool, SessionError> {
        // Queries and Syncs sent whose ReadyForQuery has not come back yet. Session mode:
        // a client that only logged in owes its server nothing yet.
        let mut flight = InFlight {
            at_rest: matches!(start, Start::Attached(_)),
            ..InFlight::default()
        };
        let mut attached = match start {
            Start::Attached(login) => match self.prepare(*login).await {
                Ok(l) => l,
                Err(e) => return Err(fail(out, e).await),
            },
            Start::Message(first) => {
                // A client that only prepares needs no server (see prepare_only).
                let (earlier, first) = match tracking.as_deref_mut() {
                    Some(t) if prepared::is_named_parse(&first) => {
                        match Box::pin(self.prepare_only(first, client, out, t, settings)).await? {
                            PrepareOnly::Answered => return Ok(true),
                            PrepareOnly::Left => return Ok(false),
                            PrepareOnly::NeedsServer { earlier, next } => (earlier, next),
                        }
                    }
                    _ => (Vec::new(), first),
                };
                let acquired = match self.pool.acquire(Some(&self.info)).await {
                    Ok(l) => l,
                    Err(e) => return Err(fail(out, pool_error(&e)).await),
                };
                let mut attached = match self.prepare(acquired).await {
                    Ok(l) => l,
                    Err(e) => return Err(fail(out, e).await),
                };
                let (batch, gone) = match self.client_batch(
                    earlier,
                    first,
                    client,
                    tracking,
                    &mut attached,
                    &mut flight,
                ) {
                    Ok(b) => b,
                    Err(e) => {
                        self.detach();
                        self.pool.release(attached, false, Some(&self.info)).await;
                        let e = error(Severity::Fatal, "08P01", e.to_string());
                        return Err(fail(out, e).await);
                    }
                };
                if let Err(e) = attached.conn.write_all(&batch).await {
                    self.detach();
                    self.pool.release(attached, false, Some(&self.info)).await;
                    return Err(fail(out, server_lost(&self.info, &e.to_string())).await);
                }
                if gone {
                    Box::pin(self.finish(attached, flight.pending, settings)).await;
                    return Ok(false);
                }
                self.synthetic_answers(out, tracking).await?;
                out.flush().await?;
                attached
            }
            Start::Idle => return Ok(true),
        };
        match self
            .pump(&mut attached, client, out, &mut flight, settings, tracking)
            .await?
        {
            Pump::Moved => {
                info!(peer = %self.info.peer, user = %self.user, database = %self.database,
                    "the primary moved: the session leaves its server between transactions");
                self.detach();
                self.pool.release(attached, false, Some(&self.info)).await;
                Ok(true)
            }
            Pump::ClientGone => {
                Box::pin(self.finish(attached, flight.pending, settings)).await;
                Ok(false)
            }
            Pump::TransactionDone => {
                self.detach();
                let reset = settings.server_reset_query_always;
                let reusable = !reset || self.reset(&mut attached, settings).await;
                self.pool
                    .release(attached, reusable, Some(&self.info))
                    .await;
                Ok(true)
            }
            Pump::Ended(which) => {
                info!(peer = %self.info.peer, user = %self.user, reason = which, "closing client");
                Box::pin(self.finish(attached, flight.pending, settings)).await;
                Err(fail(out, error(Severity::Fatal, "08P01", which)).await)
            }
            Pump::ServerFailed(why) => {
                self.detach();
                self.pool.release(attached, false, Some(&self.info)).await;
                Err(fail(out, server_lost(&self.info, &why)).await)
            }
        }
    }

    /// Forward both ways until the client leaves, the server fails, or (transaction mode)
    /// the transaction is over.
    async fn pump(
        &self,
        lease: &mut Lease,
        client: &mut ClientReader,
        out: &mut ClientWriter,
        flight: &mut InFlight,
        settings: &crate::config::Settings,
        tracking: &mut Option<Box<Tracking>>,
    ) -> Result<Pump, SessionError> {
        // Session mode on a routed pool: between transactions the client may move to
        // the new primary (see Pump::Moved); `move_due` waits for its transaction.
        let mut moves = match self.mode {
            PoolMode::Session => self.pool.moves(),
            _ => None,
        };
        let mut move_due = false;
        // When the client last sent something, and the server last said ReadyForQuery:
        // read from the clock only when a timeout needs them.
        let timed = settings.query_timeout.is_some()
            || settings.idle_transaction_timeout.is_some()
            || settings.client_idle_timeout.is_some();
        let clock = || timed.then(tokio::time::Instant::now);
        let mut sent_at = clock();
        let mut ready_at = sent_at;
        loop {
            let (deadline, which) =
                self.next_timeout(lease, flight.pending, sent_at, ready_at, settings);
            // In a fixed order (no random draw per poll): the server's answers first,
            // then the client, then the timeout.
            tokio::select! {
                biased;
                ready = lease.conn.wait_frame() => {
                    if let Err(e) = ready {
                        // Cut because the primary moved, while the client owed nothing:
                        // it goes on with a server on the new primary.
                        let cut = lease.conn.severance().is_some_and(|s| s.is_severed());
                        if moves.is_some() && flight.at_rest && cut && self.movable() {
                            return Ok(Pump::Moved);
                        }
                        return Ok(Pump::ServerFailed(e.to_string()));
                    }
                    // Nothing to rewrite or hold back: everything that arrived goes on
                    // in one piece.
                    let whole = self.mode != PoolMode::Statement
                        && tracking.as_ref().is_none_or(|t| t.responses.passes_everything());
                    let answered = if whole {
                        self.forward_whole(lease, out, flight, tracking).await?
                    } else {
                        self.forward_each(lease, out, flight, tracking).await?
                    };
                    let (idle, saw_ready) = match answered {
                        Ok(a) => a,
                        Err(pump) => return Ok(pump),
                    };
                    self.synthetic_answers(out, tracking).await?;
                    out.flush().await?;
                    if saw_ready || flight.pending == 0 {
                        ready_at = clock();
                    }
                    let owed = tracking.as_ref().is_some_and(|t| !t.responses.is_empty());
                    flight.at_rest = idle && flight.pending == 0 && !owed;
                    if flight.at_rest && self.mode != PoolMode::Session {
                        return Ok(Pump::TransactionDone);
                    }
                    if flight.at_rest && move_due && self.movable() {
                        return Ok(Pump::Moved);
                    }
                }
                moved = async { moves.as_mut()?.changed().await.ok() }, if moves.is_some() => {
                    if moved.is_none() {
                        moves = None;
                    } else if flight.at_rest && self.movable() {
                        return Ok(Pump::Moved);
                    } else {
                        move_due = true;
                    }
                }
                ready = client.wait_frame() => {
                    flight.at_rest = false;
                    match ready {
                        Ok(true) => {}
                        Ok(false) => return Ok(Pump::ClientGone),
                        Err(e) => {
                            debug!(peer = %self.info.peer, error = %e, "client connection failed");
                            return Ok(Pump::ClientGone);
                        }
                    }
                    // Nothing to rewrite: what arrived goes to the server as it is.
                    if let Some(batch) = self.plain_batch(client, tracking) {
                        sent_at = clock();
                        if let Err(e) = self.send_plain(batch, client, tracking, lease, flight).await {
                            return Ok(Pump::ServerFailed(e));
                        }
                        continue;
                    }
                    let first = match client.next_buffered() {
                        Ok(Some(f)) if f.tag != b'X' => f,
                        Ok(_) => return Ok(Pump::ClientGone),
                        Err(e) => {
                            debug!(peer = %self.info.peer, error = %e, "client connection failed");
                            return Ok(Pump::ClientGone);
                        }
                    };
                    let (batch, gone) =
                        self.client_batch(Vec::new(), first, client, tracking, lease, flight)?;
                    if !batch.is_empty() {
                        sent_at = clock();
                        if let Err(e) = lease.conn.write_all(&batch).await {
                            return Ok(Pump::ServerFailed(e.to_string()));
                        }
                    }
                    if gone {
                        return Ok(Pump::ClientGone);
                    }
                    // Answers of ours that owe nothing to the server go out at once.
                    self.synthetic_answers(out, tracking).await?;
                    out.flush().await?;
                }
                _ = sleep_until(deadline) => return Ok(Pump::Ended(which)),
            }
        }
    }

    /// Pass every whole frame the server sent on to the client in one write, untouched.
    /// `(idle, saw_ready)`: the last frame is a ReadyForQuery saying the server is idle;
    /// some frame was a ReadyForQuery. `Err`: how the pump ends.
    async fn forward_whole(
        &self,
        lease: &mut Lease,
        out: &mut ClientWriter,
        flight: &mut InFlight,
        tracking: &mut Option<Box<Tracking>>,
    ) -> Result<Result<(bool, bool), Pump>, SessionError> {
        let stats = &self.pool.stats;
        let (mut idle, mut saw_ready, mut transactions) = (false, false, 0);
        let span = lease.conn.take_frames(|tag, body| {
            if let Some(t) = tracking.as_deref_mut() {
                t.responses.on_untracked_frame(tag);
            }
            idle = tag == ReadyForQuery::TAG && body.first() == Some(&b'I');
            if tag == ReadyForQuery::TAG {
                saw_ready = true;
                flight.ready(idle, stats);
                transactions += u64::from(idle);
            }
        });
        let span = match span {
            Ok(span) => span,
            Err(e) => return Ok(Err(Pump::ServerFailed(e.to_string()))),
        };
        stats
            .total_sent
            .fetch_add(span.len() as u64, Ordering::Relaxed);
        if transactions > 0 {
            stats
                .total_xact_count
                .fetch_add(transactions, Ordering::Relaxed);
        }
        // Flushed right after: no need to copy it into the write buffer first.
        out.write_through(&span).await?;
        Ok(Ok((idle, saw_ready)))
    }

    /// Pass the frames the server sent on one by one, through the prepared-statement
    /// bookkeeping and the statement-mode check; same answer as
    /// [`Session::forward_whole`].
    async fn forward_each(
        &self,
        lease: &mut Lease,
        out: &mut ClientWriter,
        flight: &mut InFlight,
        tracking: &mut Option<Box<Tracking>>,
    ) -> Result<Result<(bool, bool), Pump>, SessionError> {
        let (mut idle, mut saw_ready) = (false, false);
        // Bounded by what is buffered.
        loop {
            match lease.conn.next_buffered_frame() {
                Ok(Some(f)) if self.opens_transaction_in_statement_mode(&f) => {
                    out.flush().await?;
                    return Ok(Err(Pump::Ended(STATEMENT_MODE_TRANSACTION)));
                }
                Ok(Some(f)) => {
                    saw_ready |= f.tag == ReadyForQuery::TAG;
                    idle = self.answer(&f, lease, out, flight, tracking).await?;
                }
                Ok(None) => return Ok(Ok((idle, saw_ready))),
                Err(e) => return Ok(Err(Pump::ServerFailed(e.to_string()))),
            }
        }
    }

    /// If every whole frame the client sent can go to the server untouched — no
    /// prepared-statement bookkeeping is pending for this client, and none of them
    /// names a statement, is a Terminate, or is a SQL `PREPARE` that transaction mode
    /// refuses — what they are, found in one pass.
    fn plain_batch(
        &self,
        client: &ClientReader,
        tracking: &Option<Box<Tracking>>,
    ) -> Option<PlainBatch> {
        if tracking
            .as_ref()
            .is_some_and(|t| !t.responses.passes_everything())
        {
            return None;
        }
        let mut batch = PlainBatch::default();
        for (tag, body) in client.whole_frames() {
            let query = (tag == b'Q' && self.mode != PoolMode::Session)
                .then(|| prepared::sql_prepare_kind(body.strip_suffix(b"\0").unwrap_or(body)));
            let untracked = tracking.is_none() && tag != b'X';
            if !(untracked || prepared::is_plain(tag, body))
                || query == Some(prepared::SqlPrepare::Prepare)
            {
                return None;
            }
            self.note_session_state(tag, body);
            batch.len += 5 + body.len();
            batch.queries += ready_for_queries_expected(tag);
            batch.drops_all |= query == Some(prepared::SqlPrepare::DropsAll);
            batch.answers.note(tag);
        }
        Some(batch)
    }

    /// Send the client's frames that [`Session::plain_batch`] looked at to the server
    /// in one write, as they are, counting what they owe. `Err`: the server connection
    /// failed.
    async fn send_plain(
        &self,
        batch: PlainBatch,
        client: &mut ClientReader,
        tracking: &mut Option<Box<Tracking>>,
        lease: &mut Lease,
        flight: &mut InFlight,
    ) -> Result<(), String> {
        let span = client.take_bytes(batch.len);
        let stats = &self.pool.stats;
        stats
            .total_received
            .fetch_add(span.len() as u64, Ordering::Relaxed);
        if batch.queries > 0 {
            flight.sent(batch.queries);
            stats
                .total_query_count
                .fetch_add(batch.queries as u64, Ordering::Relaxed);
        }
        if batch.drops_all {
            lease.conn.prepared_statements().clear();
        }
        if let Some(t) = tracking.as_deref_mut() {
            t.responses.note_plain_batch(&batch.answers);
        }
        lease.conn.write_all(&span).await.map_err(|e| e.to_string())
    }

    /// `earlier` (received before, not sent yet), `first` and every client frame already
    /// received after it, encoded for the server in one buffer (one send). `true`: the
    /// client said Terminate.
    fn client_batch(
        &self,
        earlier: Vec<Frame>,
        first: Frame,
        client: &mut ClientReader,
        tracking: &mut Option<Box<Tracking>>,
        lease: &mut Lease,
        flight: &mut InFlight,
    ) -> Result<(BytesMut, bool), SessionError> {
        // Room for these frames and what already arrived after them: one allocation.
        let held: usize = earlier.iter().map(Frame::wire_len).sum();
        let mut batch = BytesMut::with_capacity(held + first.wire_len() + client.buffered().len());
        for f in &earlier {
            flight.sent(ready_for_queries_expected(f.tag));
            self.count_query(f);
            encode_for_server(f, self.mode, tracking, lease, &mut batch)?;
        }
        let mut next = Some(first);
        while let Some(f) = next.take() {
            if f.tag == b'X' {
                return Ok((batch, true));
            }
            flight.sent(ready_for_queries_expected(f.tag));
            self.count_query(&f);
            encode_for_server(&f, self.mode, tracking, lease, &mut batch)?;
            next = client.next_buffered()?;
        }
        Ok((batch, false))
    }

    /// Between transactions, a client whose messages are named Parses (and Flushes) up
    /// to a Sync — libpq's `PQprepare` — is answered without a server: the statements
    /// are remembered and prepared on whichever server runs the client's first Bind or
    /// Describe of them (as for any tracked statement), each Parse gets a ParseComplete
    /// and the Sync a ReadyForQuery. A client that prepares while it cannot be given a
    /// server — pgbench `-M prepared` prepares synchronously, and its other clients on
    /// the same thread may hold every server of the pool mid-transaction — then does not
    /// wait for one; a mistake in a statement's text is reported at that first Bind or
    /// Describe. Any other message before the Sync takes a server as usual and the held
    /// frames go first.
    async fn prepare_only(
        &self,
        first: Frame,
        client: &mut ClientReader,
        out: &mut ClientWriter,
        tracking: &mut Tracking,
        settings: &crate::config::Settings,
    ) -> Result<PrepareOnly, SessionError> {
        let mut held = vec![first];
        let mut held_bytes = held[0].wire_len();
        loop {
            let next = match client.next_buffered()? {
                Some(f) => f,
                None => {
                    // The rest of the batch is on its way: answer what a Flush asked for.
                    out.flush().await?;
                    match self
                        .next_from_client(client, settings.client_idle_timeout, None)
                        .await?
                    {
                        Next::Frame(f) => f,
                        _ => return Ok(PrepareOnly::Left),
                    }
                }
            };
            let too_much = held.len() >= PREPARE_ONLY_MAX_FRAMES
                || held_bytes + next.wire_len() > PREPARE_ONLY_MAX_BYTES;
            match next.tag {
                b'P' if prepared::is_named_parse(&next) && !too_much => {
                    held_bytes += next.wire_len();
                    held.push(next);
                }
                // Flush: the client may wait for these answers before it sends Sync.
                b'H' => {
                    self.answer_parses(&mut held, out, tracking).await?;
                    held_bytes = 0;
                }
                b'S' => {
                    self.answer_parses(&mut held, out, tracking).await?;
                    self.count_query(&next);
                    let mut ready = BytesMut::new();
                    ReadyForQuery {
                        status: TransactionStatus::Idle,
                    }
                    .encode(&mut ready);
                    out.write_all(&ready).await?;
                    out.flush().await?;
                    return Ok(PrepareOnly::Answered);
                }
                b'X' => return Ok(PrepareOnly::Left),
                _ => {
                    return Ok(PrepareOnly::NeedsServer {
                        earlier: held,
                        next,
                    })
                }
            }
        }
    }

    /// Remember each held Parse and give the client its ParseComplete.
    async fn answer_parses(
        &self,
        held: &mut Vec<Frame>,
        out: &mut ClientWriter,
        tracking: &mut Tracking,
    ) -> Result<(), SessionError> {
        let mut answers = BytesMut::new();
        for parse in held.drain(..) {
            self.count_query(&parse);
            if let Err(e) = tracking.statements.remember_parse(&parse) {
                let e = error(
                    Severity::Fatal,
                    "08P01",
                    format!("malformed client message: {e}"),
                );
                return Err(fail(out, e).await);
            }
            ParseComplete.encode(&mut answers);
        }
        out.write_all(&answers).await?;
        Ok(())
    }

    /// The first timeout that applies while attached, and its name:
    /// `query_timeout` while the server owes an answer, `idle_transaction_timeout` while
    /// the client sits inside a transaction, `client_idle_timeout` while it is idle.
    fn next_timeout(
        &self,
        lease: &Lease,
        pending: usize,
        sent_at: Option<tokio::time::Instant>,
        ready_at: Option<tokio::time::Instant>,
        settings: &crate::config::Settings,
    ) -> (Option<tokio::time::Instant>, &'static str) {
        // Both are read whenever any of these timeouts is set.
        let (Some(sent_at), Some(ready_at)) = (sent_at, ready_at) else {
            return (None, "");
        };
        if pending > 0 {
            return (settings.query_timeout.map(|t| sent_at + t), "query_timeout");
        }
        match lease.conn.transaction_status() {
            Some(TransactionStatus::InTransaction) | Some(TransactionStatus::Failed) => (
                settings.idle_transaction_timeout.map(|t| ready_at + t),
                "idle transaction timeout",
            ),
            _ => (
                settings
                    .client_idle_timeout
                    .map(|t| ready_at.max(sent_at) + t),
                "client_idle_timeout",
            ),
        }
    }

    /// Statement pooling hands the server back after every statement, so a
    /// ReadyForQuery inside a transaction block ends the client (as in PgBouncer).
    fn opens_transaction_in_statement_mode(&self, frame: &Frame) -> bool {
        self.mode == PoolMode::Statement
            && frame.tag == ReadyForQuery::TAG
            && frame.body.first() != Some(&b'I')
    }

    /// Pass one server frame on (unless it answers a message of ours); `true` when it is
    /// a ReadyForQuery saying the server is idle.
    async fn answer(
        &self,
        frame: &Frame,
        lease: &mut Lease,
        out: &mut ClientWriter,
        flight: &mut InFlight,
        tracking: &mut Option<Box<Tracking>>,
    ) -> Result<bool, SessionError> {
        if let Some(t) = tracking {
            let mut ours = BytesMut::new();
            t.responses.take_synthetic(&mut ours);
            out.write_all(&ours).await?;
            if !t
                .responses
                .on_server_frame(frame.tag, lease.conn.prepared_statements())
            {
                return Ok(false);
            }
        }
        self.to_client(frame, out, flight).await
    }

    /// Frames of ours whose turn has come.
    async fn synthetic_answers(
        &self,
        out: &mut ClientWriter,
        tracking: &mut Option<Box<Tracking>>,
    ) -> Result<(), SessionError> {
        if let Some(t) = tracking {
            let mut ours = BytesMut::new();
            t.responses.take_synthetic(&mut ours);
            out.write_all(&ours).await?;
        }
        Ok(())
    }

    /// Write one server frame to the client; `true` when it is a ReadyForQuery saying
    /// the server is idle (outside any transaction).
    async fn to_client(
        &self,
        frame: &Frame,
        out: &mut ClientWriter,
        flight: &mut InFlight,
    ) -> Result<bool, SessionError> {
        // Straight into the client's write buffer: no allocation per frame.
        let mut header = [0u8; 5];
        header[0] = frame.tag;
        header[1..].copy_from_slice(&((frame.body.len() + 4) as u32).to_be_bytes());
        out.write_all(&header).await?;
        out.write_all(&frame.body).await?;
        let stats = &self.pool.stats;
        stats
            .total_sent
            .fetch_add(frame.wire_len() as u64, Ordering::Relaxed);
        if frame.tag != ReadyForQuery::TAG {
            return Ok(false);
        }
        let idle = frame.body.first() == Some(&b'I');
        flight.ready(idle, stats);
        if idle {
            stats.total_xact_count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(idle)
    }

    /// Count a client message toward `SHOW STATS` (its bytes, and a query if it is one).
    fn count_query(&self, frame: &Frame) {
        self.note_session_state(frame.tag, &frame.body);
        let stats = &self.pool.stats;
        stats
            .total_received
            .fetch_add(frame.wire_len() as u64, Ordering::Relaxed);
        if ready_for_queries_expected(frame.tag) > 0 {
            stats.total_query_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Session mode: remember that the client left state on its server.
    fn note_session_state(&self, tag: u8, body: &[u8]) {
        if self.mode == PoolMode::Session && prepared::leaves_session_state(tag, body) {
            self.pinned.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a session-mode client may move to another server between transactions.
    fn movable(&self) -> bool {
        !self.pinned.load(Ordering::Relaxed)
    }

    async fn next_from_client(
        &self,
        client: &mut ClientReader,
        idle_timeout: Option<Duration>,
        parker: Option<&Ticks>,
    ) -> Result<Next, SessionError> {
        let wait = async {
            match parker {
                Some(parker) => next_or_park(client, parker).await,
                None => client.next().await.map(Next::from),
            }
        };
        // Awaited by every idle client: the timer (large) is boxed, and only when
        // client_idle_timeout is set.
        let next = match idle_timeout {
            Some(t) => match Box::pin(tokio::time::timeout(t, wait)).await {
                Ok(f) => f,
                Err(_) => {
                    info!(peer = %self.info.peer, "client_idle_timeout");
                    return Ok(Next::Left);
                }
            },
            None => wait.await,
        };
        match next {
            Ok(n) => Ok(n),
            Err(e) => {
                debug!(peer = %self.info.peer, error = %e, "client connection failed");
                Ok(Next::Left)
            }
        }
    }

    /// Give a server this client's tracked parameters, and register it for cancels.
    async fn prepare(&self, mut lease: Lease) -> Result<Lease, ErrorResponse> {
        for (name, value) in &self.wanted {
            if lease.conn.parameter(name) == Some(value.as_str()) {
                continue;
            }
            // Boxed: rare, and every transaction's future would carry its state.
            lease = Box::pin(self.set_parameter(lease, name, value)).await?;
        }
        *lock(&self.cancel) = Some(CancelTarget {
            server: self.pool.target(),
            backend_pid: lease.conn.backend_pid(),
            cancel_key: lease.conn.cancel_key_bytes(),
            cancels: lease.conn.cancels().clone(),
        });
        Ok(lease)
    }

    /// `SET name TO value` on the server; on failure the server is closed.
    async fn set_parameter(
        &self,
        mut lease: Lease,
        name: &str,
        value: &str,
    ) -> Result<Lease, ErrorResponse> {
        let sql = format!("SET {name} TO {}", quote_literal(value));
        if let Err(e) = lease.conn.simple_query(&sql).await {
            let answer = e.to_client_error();
            self.pool.release(lease, false, Some(&self.info)).await;
            return Err(answer);
        }
        Ok(lease)
    }

    fn detach(&self) {
        *lock(&self.cancel) = None;
    }

    /// Run `server_reset_query`; `false` if the server cannot be reused.
    async fn reset(&self, lease: &mut Lease, settings: &crate::config::Settings) -> bool {
        match &settings.server_reset_query {
            Some(q) if !q.trim().is_empty() => {
                // DISCARD ALL (and the like) drops the server's prepared statements.
                lease.conn.prepared_statements().clear();
                lease.conn.simple_query(q).await.is_ok()
            }
            _ => true,
        }
    }

    /// The client left while holding `lease`: reuse the server only if it is idle.
    async fn finish(&self, mut lease: Lease, pending: usize, settings: &crate::config::Settings) {
        self.detach();
        let idle = pending == 0 && lease.conn.transaction_status() == Some(TransactionStatus::Idle);
        let reset_due = self.mode == PoolMode::Session || settings.server_reset_query_always;
        let reusable = idle && (!reset_due || self.reset(&mut lease, settings).await);
        if pending > 0 && !lease.conn.is_broken() {
            // A query still runs for nobody: cancel it rather than let it hold the backend.
            let target = self.pool.target();
            let (pid, key) = (lease.conn.backend_pid(), lease.conn.cancel_key().to_vec());
            if let Err(e) = send_cancel(
                (&target.host, target.port),
                pid,
                &key,
                Duration::from_secs(2),
            )
            .await
            {
                debug!(error = %e, "cancelling an abandoned query failed");
            }
        }
        self.pool.release(lease, reusable, Some(&self.info)).await;
        info!(peer = %self.info.peer, user = %self.user, database = %self.database, "client left");
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A SQL string literal.
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Sleep until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn server_lost(client: &ClientInfo, why: &str) -> ErrorResponse {
    debug!(reason = why, "server connection lost");
    count_client_error(client, ErrorKind::ServerLost);
    error(Severity::Fatal, "08006", "server conn crashed?")
}
