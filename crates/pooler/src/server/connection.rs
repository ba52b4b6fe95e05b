//! One logged-in connection to a PostgreSQL server.

use super::cancel::CancelsInFlight;
use super::error::{LoginFailure, ServerError};
use super::framed::FramedReader;
use super::target::{ServerCredential, ServerTarget};
use crate::net::{Peer, ReadHalf, Stream, WriteHalf};
use bytes::{Bytes, BytesMut};
use pgherd_protocol::auth::{
    md5_client_response, md5_response_from_hash, select_mechanism, ScramClient, SCRAM_KEY_LEN,
};
use pgherd_protocol::backend::{
    Authentication, BackendKeyData, DataRow, ErrorResponse, NegotiateProtocolVersion,
    NoticeResponse, ParameterStatus, ReadyForQuery, TransactionStatus,
};
use pgherd_protocol::copy::CopyFail;
use pgherd_protocol::frontend::{
    PasswordMessage, Query, SaslInitialResponse, SaslResponse, Terminate,
};
use pgherd_protocol::{Frame, FrameDecoder, Message, ProtocolError, StartupMessage};
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

/// How long [`ServerConnection::close`] waits to hand Terminate to the kernel.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A server connection past login: ReadyForQuery seen, parameters and cancel key
/// known. Bytes are forwarded untouched ([`write_all`](Self::write_all),
/// [`read_frame`](Self::read_frame)); the connection watches what it forwards for
/// ParameterStatus, ReadyForQuery and fatal errors.
///
/// Once [`is_broken`](Self::is_broken) (I/O error, protocol violation, FATAL from
/// the server, a wait cut short) it must not be reused: drop or
/// [`close`](Self::close) it.
pub struct ServerConnection {
    id: u64,
    reader: FramedReader<ReadHalf>,
    writer: WriteHalf,
    peer: Peer,
    local: Option<SocketAddr>,
    database: String,
    user: String,
    backend_pid: i32,
    cancel_key: Bytes,
    parameters: Vec<(String, String)>,
    created_at: Instant,
    last_used: Instant,
    transaction_status: Option<TransactionStatus>,
    broken: bool,
    bytes_sent: u64,
    prepared_statements: HashSet<String>,
    query_timeout: Duration,
    /// `TLSv1.3/<cipher>` when encrypted (SHOW SERVERS' `tls`), else empty.
    tls: String,
    /// Cancel requests on their way to this backend.
    cancels: Arc<CancelsInFlight>,
    /// Cuts the socket from outside while a session uses it (`None` if the socket
    /// could not be duplicated).
    severance: Option<Arc<Severance>>,
}

/// A duplicate of a server connection's socket: shutting it down ends the connection
/// under whoever holds it (a session inside a transaction reads end-of-file and tells
/// its client the server is gone). Closed with the last clone, after the connection.
#[derive(Debug)]
pub struct Severance {
    fd: std::os::fd::OwnedFd,
    severed: std::sync::atomic::AtomicBool,
}

impl Severance {
    fn of(fd: std::os::fd::BorrowedFd<'_>) -> Option<Arc<Severance>> {
        fd.try_clone_to_owned().ok().map(|fd| {
            Arc::new(Severance {
                fd,
                severed: std::sync::atomic::AtomicBool::new(false),
            })
        })
    }

    /// Whether [`Severance::sever`] cut it (rather than the server or the network).
    pub fn is_severed(&self) -> bool {
        self.severed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Shut the socket down in both directions (idempotent).
    pub fn sever(&self) {
        self.severed
            .store(true, std::sync::atomic::Ordering::Release);
        // ENOTCONN once the peer is gone already: nothing left to cut.
        // SAFETY: shutdown(2) on a descriptor we own; it touches no memory.
        unsafe {
            libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&self.fd), libc::SHUT_RDWR);
        }
    }
}

impl fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConnection")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("backend_pid", &self.backend_pid)
            .field("transaction_status", &self.transaction_status)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// 32 bytes, or the keys are unusable.
fn scram_key(key: &[u8]) -> Result<[u8; SCRAM_KEY_LEN], LoginFailure> {
    <[u8; SCRAM_KEY_LEN]>::try_from(key).map_err(|_| LoginFailure::InvalidScramKeys)
}

/// What a connection records from a server frame on its way to the client: the
/// transaction status (ReadyForQuery), parameter changes, and that a FATAL error
/// broke it. A malformed frame breaks it too.
fn observe_frame(
    tag: u8,
    body: &[u8],
    transaction_status: &mut Option<TransactionStatus>,
    parameters: &mut Vec<(String, String)>,
    broken: &mut bool,
    peer: &Peer,
    id: u64,
) -> Result<(), ServerError> {
    let mut violation = |e: ProtocolError| {
        *broken = true;
        ServerError::Protocol(e)
    };
    match tag {
        ReadyForQuery::TAG => {
            let z = ReadyForQuery::decode(body).map_err(&mut violation)?;
            *transaction_status = Some(z.status);
        }
        ParameterStatus::TAG => {
            let p = ParameterStatus::decode(body).map_err(&mut violation)?;
            match parameters.iter_mut().find(|(n, _)| *n == p.name) {
                Some(slot) => slot.1 = p.value,
                None => parameters.push((p.name, p.value)),
            }
        }
        ErrorResponse::TAG => {
            let e = ErrorResponse::decode(body).map_err(&mut violation)?;
            if is_fatal(&e) {
                tracing::debug!(server = %peer, id, error = %e, "server reported a fatal error");
                *broken = true;
            }
        }
        _ => {}
    }
    Ok(())
}

fn is_fatal(e: &ErrorResponse) -> bool {
    matches!(e.severity(), Some("FATAL") | Some("PANIC"))
}

/// PostgreSQL's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Ask for TLS when `server_tls_sslmode` says so; the server answers one byte, 'S'
/// (handshake follows) or 'N' (plain TCP, refused when the mode insists).
async fn negotiate_tls(
    stream: Stream,
    target: &ServerTarget,
    addr: &str,
) -> Result<Stream, ServerError> {
    // PostgreSQL does not do TLS over Unix sockets (libpq does not ask there either).
    let Stream::Tcp(mut tcp) = stream else {
        return Ok(stream);
    };
    if !target.tls.asks() {
        return Ok(Stream::Tcp(tcp));
    }
    let tls_error = |reason: String| ServerError::Tls {
        addr: addr.to_owned(),
        reason,
    };
    tcp.write_all(&SSL_REQUEST).await?;
    match tcp.read_u8().await? {
        b'S' => match target.tls.connect(tcp, &target.host).await {
            Ok(tls) => Ok(Stream::TlsToServer(Box::new(tls))),
            Err(e) => Err(tls_error(e.to_string())),
        },
        b'N' if target.tls.insists() => Err(tls_error(format!(
            "the server does not accept TLS connections (server_tls_sslmode = {})",
            target.tls.mode.as_str()
        ))),
        b'N' => Ok(Stream::Tcp(tcp)),
        other => Err(tls_error(format!(
            "unexpected answer '{}' to SSLRequest",
            other.escape_ascii()
        ))),
    }
}

impl ServerConnection {
    /// Connect and log in: TCP connect (TCP_NODELAY), StartupMessage, authentication
    /// (trust, cleartext, md5, SCRAM-SHA-256 with a password or pass-through keys),
    /// then ParameterStatus and BackendKeyData until the first ReadyForQuery. The
    /// whole login is bounded by `target.connect_timeout`.
    pub async fn connect(target: &ServerTarget) -> Result<ServerConnection, ServerError> {
        let addr = target.addr_string();
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + target.connect_timeout;
        let timeout = |during| ServerError::Timeout {
            addr: addr.clone(),
            during,
            after: target.connect_timeout,
        };

        let connecting = crate::net::connect(&target.host, target.port);
        let stream = match tokio::time::timeout_at(deadline, connecting).await {
            Err(_) => return Err(timeout("connecting to")),
            Ok(Err(source)) => {
                return Err(ServerError::Connect {
                    addr: addr.clone(),
                    source,
                })
            }
            Ok(Ok(stream)) => stream,
        };
        let (peer, local) = match &stream {
            Stream::Tcp(tcp) => (Peer::Tcp(tcp.peer_addr()?), Some(tcp.local_addr()?)),
            _ => (Peer::Unix { port: target.port }, None),
        };
        let severance = match &stream {
            Stream::Tcp(tcp) => Severance::of(std::os::fd::AsFd::as_fd(tcp)),
            Stream::Unix(unix) => Severance::of(std::os::fd::AsFd::as_fd(unix)),
            _ => None,
        };
        let stream =
            match tokio::time::timeout_at(deadline, negotiate_tls(stream, target, &addr)).await {
                Err(_) => return Err(timeout("negotiating TLS with")),
                Ok(r) => r?,
            };
        let tls = stream.tls_description();
        let (read, write) = stream.split();
        let now = Instant::now();
        let mut conn = ServerConnection {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            reader: FramedReader::new(read, FrameDecoder::backend()),
            writer: write,
            peer,
            local,
            database: target.database.clone(),
            user: target.user.clone(),
            backend_pid: 0,
            cancel_key: Bytes::new(),
            parameters: Vec::new(),
            created_at: now,
            last_used: now,
            transaction_status: None,
            broken: false,
            bytes_sent: 0,
            prepared_statements: HashSet::new(),
            query_timeout: target.connect_timeout,
            tls,
            cancels: Arc::default(),
            severance,
        };
        match tokio::time::timeout_at(deadline, conn.login(target, &addr)).await {
            Err(_) => Err(timeout("logging into")),
            Ok(Err(e)) => {
                tracing::debug!(server = %addr, user = %target.user, error = %e, "server login failed");
                Err(e)
            }
            Ok(Ok(())) => {
                tracing::debug!(
                    server = %addr,
                    database = %target.database,
                    user = %target.user,
                    id = conn.id,
                    backend_pid = conn.backend_pid,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "server connection ready"
                );
                Ok(conn)
            }
        }
    }

    async fn login(&mut self, target: &ServerTarget, addr: &str) -> Result<(), ServerError> {
        let login_failed = |reason: LoginFailure| ServerError::Login {
            addr: addr.to_owned(),
            user: target.user.clone(),
            reason,
        };
        let refused = |response: ErrorResponse| ServerError::Auth {
            addr: addr.to_owned(),
            user: target.user.clone(),
            response,
        };

        let mut startup = StartupMessage::new(target.user.as_str())
            .with_parameter("database", target.database.as_str());
        for (name, value) in &target.startup_params {
            if name != "user" && name != "database" {
                startup.set_parameter(name.as_str(), value.as_str());
            }
        }
        let mut buf = BytesMut::new();
        startup.encode(&mut buf);
        self.write_all(&buf).await?;

        // Authentication, until AuthenticationOk.
        let mut scram: Option<ScramClient> = None;
        let mut scram_verified = false;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                Authentication::TAG => {
                    let request = match Authentication::decode(&frame.body) {
                        Ok(r) => r,
                        Err(ProtocolError::UnsupportedAuthentication { code }) => {
                            return Err(login_failed(LoginFailure::UnsupportedMethod { code }))
                        }
                        Err(e) => return Err(self.violation(e)),
                    };
                    match request {
                        Authentication::Ok => {
                            if scram.is_some() && !scram_verified {
                                return Err(login_failed(LoginFailure::ScramIncomplete));
                            }
                            break;
                        }
                        Authentication::CleartextPassword => {
                            let ServerCredential::Plain(password) = &target.credential else {
                                return Err(login_failed(LoginFailure::CredentialUnusable {
                                    method: "cleartext password",
                                    have: target.credential.kind(),
                                }));
                            };
                            self.send(&PasswordMessage {
                                password: Bytes::copy_from_slice(password.as_bytes()),
                            })
                            .await?;
                        }
                        Authentication::Md5Password { salt } => {
                            let response = match &target.credential {
                                ServerCredential::Plain(password) => {
                                    md5_client_response(&target.user, password.as_bytes(), salt)
                                }
                                ServerCredential::Md5Hash(hash) => {
                                    md5_response_from_hash(hash, salt)
                                }
                                other => {
                                    return Err(login_failed(LoginFailure::CredentialUnusable {
                                        method: "md5",
                                        have: other.kind(),
                                    }))
                                }
                            };
                            self.send(&PasswordMessage {
                                password: Bytes::from(response),
                            })
                            .await?;
                        }
                        Authentication::Sasl { mechanisms } => {
                            if scram.is_some() {
                                return Err(self.unexpected(frame.tag, "during SCRAM"));
                            }
                            if select_mechanism(&mechanisms).is_err() {
                                return Err(login_failed(LoginFailure::UnsupportedMechanism {
                                    offered: mechanisms.join(", "),
                                }));
                            }
                            let client = match &target.credential {
                                ServerCredential::Plain(password) => {
                                    ScramClient::new(password.as_bytes())
                                }
                                ServerCredential::ScramKeys {
                                    client_key,
                                    server_key,
                                } => ScramClient::with_keys(
                                    scram_key(client_key).map_err(login_failed)?,
                                    scram_key(server_key).map_err(login_failed)?,
                                ),
                                other => {
                                    return Err(login_failed(LoginFailure::CredentialUnusable {
                                        method: "SCRAM-SHA-256",
                                        have: other.kind(),
                                    }))
                                }
                            };
                            self.send(&SaslInitialResponse {
                                mechanism: client.mechanism().to_owned(),
                                data: Some(Bytes::from(client.client_first())),
                            })
                            .await?;
                            scram = Some(client);
                        }
                        Authentication::SaslContinue { data } => {
                            let Some(mut client) = scram.take() else {
                                return Err(self.unexpected(frame.tag, "before SASL"));
                            };
                            // PBKDF2 with the server's iteration count (bounded by the
                            // protocol crate): off the I/O threads, so one slow or hostile
                            // server does not stall every other client.
                            let (client, client_final) = tokio::task::spawn_blocking(move || {
                                let client_final = client.handle_server_first(&data);
                                (client, client_final)
                            })
                            .await
                            .map_err(|_| login_failed(LoginFailure::ScramAborted))?;
                            scram = Some(client);
                            let client_final = client_final.map_err(|e| login_failed(e.into()))?;
                            self.send(&SaslResponse {
                                data: Bytes::from(client_final),
                            })
                            .await?;
                        }
                        Authentication::SaslFinal { data } => {
                            let Some(client) = scram.as_mut() else {
                                return Err(self.unexpected(frame.tag, "before SASL"));
                            };
                            client
                                .handle_server_final(&data)
                                .map_err(|e| login_failed(e.into()))?;
                            scram_verified = true;
                        }
                    }
                }
                ErrorResponse::TAG => {
                    let response = ErrorResponse::decode(&frame.body)?;
                    self.broken = true;
                    return Err(refused(response));
                }
                NegotiateProtocolVersion::TAG => {
                    // Only when startup_params hold `_pq_.*` options it does not know.
                    let n = NegotiateProtocolVersion::decode(&frame.body)?;
                    tracing::debug!(server = %addr, unrecognized = ?n.unrecognized_options,
                        "server does not support some protocol options");
                }
                NoticeResponse::TAG => {}
                tag => return Err(self.unexpected(tag, "during authentication")),
            }
        }

        // Startup, until ReadyForQuery (read_frame records S and Z).
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                ReadyForQuery::TAG => return Ok(()),
                BackendKeyData::TAG => {
                    let key = BackendKeyData::decode(&frame.body)?;
                    self.backend_pid = key.process_id;
                    self.cancel_key = key.secret_key;
                }
                ErrorResponse::TAG => {
                    let response = ErrorResponse::decode(&frame.body)?;
                    self.broken = true;
                    return Err(refused(response));
                }
                ParameterStatus::TAG | NoticeResponse::TAG => {}
                tag => return Err(self.unexpected(tag, "during startup")),
            }
        }
    }

    fn violation(&mut self, e: ProtocolError) -> ServerError {
        self.broken = true;
        ServerError::Protocol(e)
    }

    fn unexpected(&mut self, tag: u8, during: &'static str) -> ServerError {
        self.broken = true;
        ServerError::UnexpectedMessage { tag, during }
    }

    /// Encode and send one message.
    pub async fn send<M: Message>(&mut self, message: &M) -> Result<(), ServerError> {
        let mut buf = BytesMut::new();
        message.encode(&mut buf);
        self.write_all(&buf).await
    }

    /// Unique within this process (never reused), for logs, `SHOW SERVERS` and maps.
    /// The TLS protocol and cipher in use (`TLSv1.3/…`), empty on plain TCP.
    pub fn tls(&self) -> &str {
        &self.tls
    }

    /// The cancel key, shared (no copy).
    pub fn cancel_key_bytes(&self) -> Bytes {
        self.cancel_key.clone()
    }

    /// The cancel requests on their way to this backend (see [`CancelsInFlight`]).
    pub fn cancels(&self) -> &Arc<CancelsInFlight> {
        &self.cancels
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The server backend's process id (BackendKeyData); 0 if the server sent none.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// The cancel secret (4 bytes in protocol 3.0); empty if the server sent none.
    pub fn cancel_key(&self) -> &[u8] {
        &self.cancel_key
    }

    /// ParameterStatus values, as first reported at login and updated since.
    pub fn parameters(&self) -> &[(String, String)] {
        &self.parameters
    }

    /// One ParameterStatus value (names compare as the server reports them).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The database logged into.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The user logged in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn created_at(&self) -> Instant {
        self.created_at
    }

    pub fn last_used(&self) -> Instant {
        self.last_used
    }

    /// Mark the connection as used now (for `server_idle_timeout` and `SHOW SERVERS`);
    /// returns that time.
    pub fn touch(&mut self) -> Instant {
        self.last_used = Instant::now();
        self.last_used
    }

    /// The server's address.
    pub fn addr(&self) -> Peer {
        self.peer
    }

    /// A handle that cuts this connection from outside ([`Severance::sever`]).
    pub fn severance(&self) -> Option<Arc<Severance>> {
        self.severance.clone()
    }

    /// Our end of the connection (`None` over a Unix socket).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// Send bytes as they are (client messages being forwarded). Written through to
    /// the socket: no [`flush`](Self::flush) needed. Not cancel-safe: if the future
    /// is dropped part-way, the connection is broken. Fails with
    /// [`ServerError::Closed`] on a broken connection.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ServerError> {
        if self.broken {
            return Err(ServerError::Closed);
        }
        // Marked broken while the write is in progress, so a dropped future leaves
        // the connection marked.
        self.broken = true;
        self.writer.write_all(bytes).await?;
        self.broken = false;
        self.bytes_sent += bytes.len() as u64;
        Ok(())
    }

    /// Flush the socket (a no-op on plain TCP; kept for writers that buffer).
    pub async fn flush(&mut self) -> Result<(), ServerError> {
        if let Err(e) = self.writer.flush().await {
            self.broken = true;
            return Err(e.into());
        }
        Ok(())
    }

    /// The next frame from the server, untouched. Records ParameterStatus changes,
    /// the status of each ReadyForQuery, and marks the connection broken on a FATAL
    /// ErrorResponse (still returned, to forward), EOF, I/O or protocol errors.
    /// Cancel-safe: a dropped call loses no bytes. Not bounded: the caller bounds it
    /// (`query_timeout`).
    pub async fn read_frame(&mut self) -> Result<Frame, ServerError> {
        let frame = match self.reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                self.broken = true;
                return Err(ServerError::Closed);
            }
            Err(e) => {
                self.broken = true;
                return Err(e.into());
            }
        };
        self.observe(frame.tag, &frame.body)?;
        Ok(frame)
    }

    /// Wait until a whole frame from the server is buffered (cancel-safe); then
    /// [`take_frames`](Self::take_frames) has at least one.
    pub async fn wait_frame(&mut self) -> Result<(), ServerError> {
        match self.reader.wait_frame().await {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.broken = true;
                Err(ServerError::Closed)
            }
            Err(e) => {
                self.broken = true;
                Err(e.into())
            }
        }
    }

    /// Every whole frame received so far as one span of wire bytes, to pass on
    /// untouched; `each` sees every frame's type and body, in order, after the
    /// connection recorded what it needs (as [`read_frame`](Self::read_frame) does).
    pub fn take_frames(
        &mut self,
        mut each: impl FnMut(u8, &[u8]),
    ) -> Result<BytesMut, ServerError> {
        let (status, parameters, broken) = (
            &mut self.transaction_status,
            &mut self.parameters,
            &mut self.broken,
        );
        let (peer, id) = (&self.peer, self.id);
        let taken = self.reader.take_whole_frames_with(|tag, body| {
            observe_frame(tag, body, status, parameters, broken, peer, id)?;
            each(tag, body);
            Ok::<_, ServerError>(())
        });
        if taken.is_err() {
            self.broken = true;
        }
        taken
    }

    /// The next frame already received, without waiting for the socket (see
    /// [`read_frame`](Self::read_frame) for what is recorded on the way).
    pub fn next_buffered_frame(&mut self) -> Result<Option<Frame>, ServerError> {
        let frame = match self.reader.next_buffered() {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.broken = true;
                return Err(e.into());
            }
        };
        self.observe(frame.tag, &frame.body)?;
        Ok(Some(frame))
    }

    fn observe(&mut self, tag: u8, body: &[u8]) -> Result<(), ServerError> {
        observe_frame(
            tag,
            body,
            &mut self.transaction_status,
            &mut self.parameters,
            &mut self.broken,
            &self.peer,
            self.id,
        )
    }

    /// Transaction status from the last ReadyForQuery (`Idle` right after login).
    pub fn transaction_status(&self) -> Option<TransactionStatus> {
        self.transaction_status
    }

    /// How long [`simple_query`](Self::simple_query) may take (defaults to the
    /// target's `connect_timeout`).
    pub fn set_query_timeout(&mut self, timeout: Duration) {
        self.query_timeout = timeout;
    }

    pub fn query_timeout(&self) -> Duration {
        self.query_timeout
    }

    /// Run a statement of the pooler's own (`server_reset_query` such as `DISCARD
    /// ALL`, `server_check_query`, `connect_query`) with the simple protocol and read
    /// until ReadyForQuery, discarding results. Fails with
    /// [`ServerError::ServerError`] carrying the server's ErrorResponse when the
    /// statement fails (the connection stays usable unless it was FATAL). Bounded by
    /// [`query_timeout`](Self::query_timeout); a timeout breaks the connection.
    pub async fn simple_query(&mut self, sql: &str) -> Result<(), ServerError> {
        self.query_first_row(sql).await.map(|_| ())
    }

    /// Run `sql` like [`simple_query`](Self::simple_query) and return its first row as
    /// text (the pooler's own lookups, e.g. `auth_query`).
    pub async fn query_first_row(
        &mut self,
        sql: &str,
    ) -> Result<Option<Vec<Option<String>>>, ServerError> {
        let limit = self.query_timeout;
        match tokio::time::timeout(limit, self.run_simple_query(sql)).await {
            Ok(result) => result,
            Err(_) => {
                self.broken = true;
                Err(ServerError::Timeout {
                    addr: self.peer.to_string(),
                    during: "running a query on",
                    after: limit,
                })
            }
        }
    }

    async fn run_simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Option<Vec<Option<String>>>, ServerError> {
        if sql.contains('\0') {
            return Err(ServerError::InvalidQuery);
        }
        self.send(&Query::new(sql.to_owned())).await?;
        let mut failed: Option<ErrorResponse> = None;
        let mut first_row = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                ReadyForQuery::TAG => {
                    return match failed {
                        Some(e) => Err(ServerError::ServerError(e)),
                        None => Ok(first_row),
                    }
                }
                DataRow::TAG if first_row.is_none() => {
                    let row = DataRow::decode(&frame.body)?;
                    first_row = Some(
                        row.values
                            .iter()
                            .map(|v| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
                            .collect(),
                    );
                }
                ErrorResponse::TAG => {
                    let e = ErrorResponse::decode(&frame.body)?;
                    if is_fatal(&e) {
                        return Err(ServerError::ServerError(e));
                    }
                    failed.get_or_insert(e);
                }
                // CopyInResponse: nothing to send; fail the COPY, the server answers
                // with an ErrorResponse and ReadyForQuery.
                b'G' => {
                    self.send(&CopyFail {
                        message: Bytes::from_static(b"COPY FROM STDIN is not supported here"),
                    })
                    .await?
                }
                // CopyBothResponse (replication): no way back to ReadyForQuery.
                b'W' => return Err(self.unexpected(frame.tag, "after a pooler query")),
                _ => {}
            }
        }
    }

    /// Whether an I/O error, protocol violation, FATAL error or interrupted
    /// operation happened: never reuse the connection.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Mark the connection as not reusable (e.g. the client vanished mid-query).
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Bytes written to the server (`SHOW STATS`' `total_sent` counts these).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Bytes read from the server.
    pub fn bytes_received(&self) -> u64 {
        self.reader.bytes_read()
    }

    /// Names of the statements the pooler prepared on this server connection
    /// (transaction-mode prepared statements). Cleared by nothing here: after
    /// `DISCARD ALL`/`DEALLOCATE ALL` the caller clears it.
    pub fn prepared_statements(&mut self) -> &mut HashSet<String> {
        &mut self.prepared_statements
    }

    /// Send Terminate and close, waiting at most a second. Skips Terminate on a
    /// broken connection.
    pub async fn close(mut self) {
        if !self.broken {
            let bye = async {
                self.send(&Terminate).await?;
                self.writer.shutdown().await?;
                Ok::<_, ServerError>(())
            };
            match tokio::time::timeout(CLOSE_TIMEOUT, bye).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(server = %self.peer, id = self.id, error = %e, "closing server connection")
                }
                Err(_) => {
                    tracing::debug!(server = %self.peer, id = self.id, "timed out closing server connection")
                }
            }
        }
        tracing::debug!(server = %self.peer, id = self.id, "server connection closed");
    }
}
