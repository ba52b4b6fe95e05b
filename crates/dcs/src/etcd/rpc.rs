//! The few etcd v3 gRPC calls the backend makes, over tonic.
//!
//! The protobuf messages are written out by hand with `prost`'s derive macros instead of
//! being generated from etcd's `.proto` files: building pgherd then needs no `protoc`
//! and no protobuf include files, only `cargo`. Each message keeps only the fields pgherd
//! sends or reads, with the field numbers of etcd's `api/etcdserverpb/rpc.proto` and
//! `api/mvccpb/kv.proto` (protobuf skips fields a reader does not know, and a field left
//! out of a request is its default). Enums are sent as their `int32` values, which is
//! how protobuf encodes them.

use futures::channel::mpsc;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status, Streaming};
use tonic_prost::ProstCodec;

/// Why a call did not get an answer from etcd.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// An endpoint is not a URL etcd can be reached at.
    #[error("invalid etcd endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    /// etcd (or the connection to it) answered with a gRPC status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Status),
    /// A stream ended before etcd's answer came.
    #[error("etcd closed the {0} stream")]
    StreamClosed(&'static str),
    /// A keep-alive answer said the lease does not exist any more.
    #[error("lease not found")]
    LeaseGone,
    /// etcd refused the user name or password.
    #[error("etcd refused the authentication of user {user:?}: {}", .status.message())]
    Authentication { user: String, status: Status },
}

impl RpcError {
    /// Whether the error means "could not talk to etcd", so that retrying may help.
    /// etcd answers UNAVAILABLE for "no leader" and "request timed out", and tonic maps
    /// connection failures to UNAVAILABLE or UNKNOWN.
    pub fn is_unreachable(&self) -> bool {
        match self {
            RpcError::StreamClosed(_) => true,
            RpcError::Status(s) => matches!(
                s.code(),
                Code::Cancelled | Code::Unknown | Code::DeadlineExceeded | Code::Unavailable
            ),
            RpcError::Endpoint { .. } | RpcError::LeaseGone | RpcError::Authentication { .. } => {
                false
            }
        }
    }

    /// Whether etcd refused the authentication token a request carried.
    pub fn is_invalid_token(&self) -> bool {
        match self {
            RpcError::Status(s) => is_invalid_token(s),
            _ => false,
        }
    }

    /// Whether etcd said the lease a request named no longer exists.
    pub fn is_lease_gone(&self) -> bool {
        match self {
            RpcError::LeaseGone => true,
            RpcError::Status(s) => s.message().contains("lease not found"),
            _ => false,
        }
    }
}

pub type RpcResult<T> = std::result::Result<T, RpcError>;

/// Whether etcd said the token a request carried is not (or no longer) valid: simple
/// tokens expire after a while without use, and all of them when etcd restarts.
fn is_invalid_token(status: &Status) -> bool {
    status.message().contains("invalid auth token")
}

/// TLS toward etcd, as PEM (Patroni's `cacert`, `cert`, `key`), read by the caller.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed etcd's certificate.
    pub ca: Option<Vec<u8>>,
    /// A client certificate and its key, for etcd's `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

/// etcd's user name and password authentication (Patroni's `username`, `password`).
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for EtcdAuth {
    /// Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("username", &self.username)
            .field("password", &"********")
            .finish()
    }
}

/// Where etcd is and how to talk to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdAccess {
    /// `http://host:port`, `https://host:port` or `host:port` (plain HTTP, or HTTPS when
    /// `tls` is set).
    pub endpoints: Vec<String>,
    pub tls: Option<EtcdTls>,
    pub auth: Option<EtcdAuth>,
}

impl EtcdAccess {
    /// Plain HTTP, no authentication.
    pub fn plain(endpoints: &[String]) -> EtcdAccess {
        EtcdAccess {
            endpoints: endpoints.to_vec(),
            tls: None,
            auth: None,
        }
    }
}

/// The user's credentials and the token etcd gave for them, shared by a client's clones.
struct AuthState {
    auth: EtcdAuth,
    token: std::sync::Mutex<Option<Token>>,
    /// Held while authenticating, so concurrent calls wait for one token.
    authenticating: tokio::sync::Mutex<()>,
}

type Token = MetadataValue<tonic::metadata::Ascii>;

/// A connection to an etcd cluster: one lazily connecting tonic channel, balanced over
/// the endpoints. Cloning shares the channel (and the authentication token).
#[derive(Clone)]
pub struct EtcdClient {
    channel: Channel,
    auth: Option<Arc<AuthState>>,
}

/// `host:port` means `http://host:port` (`https://` with `tls`).
fn endpoint(url: &str, tls: Option<&EtcdTls>, connect_timeout: Duration) -> RpcResult<Endpoint> {
    let invalid = |reason: String| RpcError::Endpoint {
        endpoint: url.to_string(),
        reason,
    };
    let full = if url.contains("://") {
        url.to_string()
    } else if tls.is_some() {
        format!("https://{url}")
    } else {
        format!("http://{url}")
    };
    let endpoint = if let Some(rest) = full.strip_prefix("https://") {
        let Some(tls) = tls else {
            return Err(invalid(
                "https:// needs TLS settings (a CA certificate)".into(),
            ));
        };
        let host = rest
            .split(['/', ':'])
            .next()
            .unwrap_or_default()
            .trim_matches(['[', ']']);
        let mut config = ClientTlsConfig::new().domain_name(host);
        if let Some(ca) = &tls.ca {
            config = config.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        Endpoint::from_shared(full.clone())
            .map_err(|e| invalid(e.to_string()))?
            .tls_config(config)
            .map_err(|e| invalid(e.to_string()))?
    } else if full.starts_with("http://") {
        Endpoint::from_shared(full.clone()).map_err(|e| invalid(e.to_string()))?
    } else {
        return Err(invalid(
            "only http:// and https:// endpoints are supported".into(),
        ));
    };
    Ok(endpoint.connect_timeout(connect_timeout))
}

/// An error and its causes, `a: b: c`, without repeats.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

/// The end of the key range that holds every key starting with `prefix`, as etcd's
/// clients compute it: the prefix with its last byte below 0xff incremented.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the key space.
    vec![0]
}

impl EtcdClient {
    /// A client for `endpoints` (`http://host:port` or `host:port`). Connects on first use.
    pub fn new(endpoints: &[String], connect_timeout: Duration) -> RpcResult<EtcdClient> {
        EtcdClient::with_access(&EtcdAccess::plain(endpoints), connect_timeout)
    }

    /// A client for `access`. Connects, and authenticates, on first use.
    pub fn with_access(access: &EtcdAccess, connect_timeout: Duration) -> RpcResult<EtcdClient> {
        let list = access
            .endpoints
            .iter()
            .map(|e| endpoint(e, access.tls.as_ref(), connect_timeout))
            .collect::<RpcResult<Vec<_>>>()?;
        Ok(EtcdClient {
            channel: Channel::balance_list(list.into_iter()),
            auth: access.auth.clone().map(|auth| {
                Arc::new(AuthState {
                    auth,
                    token: std::sync::Mutex::new(None),
                    authenticating: tokio::sync::Mutex::new(()),
                })
            }),
        })
    }

    /// Why the endpoints cannot be reached, as far as connecting to each once tells
    /// (the channel itself only says "operation was canceled"): e.g. a certificate
    /// etcd refused, or one its CA did not sign.
    pub async fn diagnose(access: &EtcdAccess, timeout: Duration) -> Option<String> {
        let mut reasons = Vec::new();
        for url in &access.endpoints {
            let Ok(ep) = endpoint(url, access.tls.as_ref(), timeout) else {
                continue;
            };
            match tokio::time::timeout(timeout, ep.connect()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => reasons.push(format!("{url}: {}", causes(&e))),
                Err(_) => reasons.push(format!("{url}: no connection within {timeout:?}")),
            }
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// The token for requests (`None` without authentication): the one etcd gave last,
    /// or a fresh one when there is none yet.
    async fn token(&self) -> RpcResult<Option<Token>> {
        let Some(state) = &self.auth else {
            return Ok(None);
        };
        let current = || {
            state
                .token
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        };
        if let Some(t) = current() {
            return Ok(Some(t));
        }
        let _one = state.authenticating.lock().await;
        if let Some(t) = current() {
            return Ok(Some(t));
        }
        let request = AuthenticateRequest {
            name: state.auth.username.clone(),
            password: state.auth.password.clone(),
        };
        let resp: AuthenticateResponse = self
            .call_once("/etcdserverpb.Auth/Authenticate", request, None)
            .await
            .map_err(|e| match e {
                RpcError::Status(status) if !RpcError::Status(status.clone()).is_unreachable() => {
                    RpcError::Authentication {
                        user: state.auth.username.clone(),
                        status,
                    }
                }
                e => e,
            })?;
        let value = Token::try_from(resp.token.as_str()).map_err(|_| {
            RpcError::Status(Status::internal(
                "etcd gave an authentication token that is not ASCII",
            ))
        })?;
        *state.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(value.clone());
        Ok(Some(value))
    }

    /// Forget the token after etcd refused it: the next call authenticates again.
    pub fn forget_token(&self) {
        if let Some(state) = &self.auth {
            *state.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// `request` with the token in its metadata, as etcd expects it.
    fn request<T>(message: T, token: Option<&Token>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(t) = token {
            request.metadata_mut().insert("token", t.clone());
        }
        request
    }

    async fn grpc(&self) -> RpcResult<tonic::client::Grpc<Channel>> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| RpcError::Status(Status::unavailable(e.to_string())))?;
        Ok(grpc)
    }

    async fn call_once<Req, Resp>(
        &self,
        path: &'static str,
        request: Req,
        token: Option<&Token>,
    ) -> RpcResult<Resp>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.grpc().await?;
        let resp = grpc
            .unary(
                Self::request(request, token),
                PathAndQuery::from_static(path),
                ProstCodec::default(),
            )
            .await
            .map_err(RpcError::Status)?;
        Ok(resp.into_inner())
    }

    /// One request and its answer; with authentication, a token etcd no longer knows
    /// is renewed once and the request sent again.
    async fn unary<Req, Resp>(&self, path: &'static str, request: Req) -> RpcResult<Resp>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let token = self.token().await?;
        match self.call_once(path, request.clone(), token.as_ref()).await {
            Err(RpcError::Status(s)) if self.auth.is_some() && is_invalid_token(&s) => {
                tracing::debug!("etcd: authentication token expired, authenticating again");
                self.forget_token();
                let token = self.token().await?;
                self.call_once(path, request, token.as_ref()).await
            }
            other => other,
        }
    }

    /// A bidirectional stream: requests go through the returned sender.
    async fn stream<Req, Resp>(
        &self,
        path: &'static str,
        first: Req,
    ) -> RpcResult<(mpsc::UnboundedSender<Req>, Streaming<Resp>)>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let token = self.token().await?;
        let (tx, rx) = mpsc::unbounded();
        tx.unbounded_send(first)
            .map_err(|_| RpcError::StreamClosed("request"))?;
        let mut grpc = self.grpc().await?;
        let resp = grpc
            .streaming(
                Self::request(rx, token.as_ref()),
                PathAndQuery::from_static(path),
                ProstCodec::default(),
            )
            .await;
        match resp {
            Ok(resp) => Ok((tx, resp.into_inner())),
            Err(s) => {
                if is_invalid_token(&s) {
                    // The next call authenticates again.
                    self.forget_token();
                }
                Err(RpcError::Status(s))
            }
        }
    }

    /// The key `key`, or with `prefix` every key that starts with it.
    pub async fn range(&self, key: impl Into<Vec<u8>>, prefix: bool) -> RpcResult<RangeResponse> {
        let key = key.into();
        let range_end = if prefix {
            prefix_range_end(&key)
        } else {
            Vec::new()
        };
        self.unary("/etcdserverpb.KV/Range", RangeRequest { key, range_end })
            .await
    }

    /// Put `value` at `key`, bound to `lease` unless it is 0.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: i64,
    ) -> RpcResult<PutResponse> {
        self.unary("/etcdserverpb.KV/Put", put_request(key, value, lease))
            .await
    }

    /// Delete `key`.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> RpcResult<DeleteRangeResponse> {
        self.unary("/etcdserverpb.KV/DeleteRange", delete_request(key))
            .await
    }

    /// Delete every key that starts with `prefix`.
    pub async fn delete_prefix(
        &self,
        prefix: impl Into<Vec<u8>>,
    ) -> RpcResult<DeleteRangeResponse> {
        let key = prefix.into();
        let range_end = prefix_range_end(&key);
        self.unary(
            "/etcdserverpb.KV/DeleteRange",
            DeleteRangeRequest { key, range_end },
        )
        .await
    }

    /// Run `then` if every comparison in `when` holds; nothing otherwise.
    pub async fn txn(&self, when: Compare, then: RequestOp) -> RpcResult<TxnResponse> {
        let request = TxnRequest {
            compare: vec![when],
            success: vec![then],
        };
        self.unary("/etcdserverpb.KV/Txn", request).await
    }

    /// Grant a lease of `ttl_secs` seconds.
    pub async fn lease_grant(&self, ttl_secs: i64) -> RpcResult<LeaseGrantResponse> {
        let resp: LeaseGrantResponse = self
            .unary(
                "/etcdserverpb.Lease/LeaseGrant",
                LeaseGrantRequest { ttl: ttl_secs },
            )
            .await?;
        if !resp.error.is_empty() {
            return Err(RpcError::Status(Status::unknown(resp.error)));
        }
        Ok(resp)
    }

    /// Renew lease `id` once: one request and one answer on a fresh keep-alive stream,
    /// which is dropped afterwards (a long-lived one does not reconnect by itself).
    pub async fn lease_keep_alive_once(&self, id: i64) -> RpcResult<LeaseKeepAliveResponse> {
        let (_requests, mut answers) = self
            .stream::<_, LeaseKeepAliveResponse>(
                "/etcdserverpb.Lease/LeaseKeepAlive",
                LeaseKeepAliveRequest { id },
            )
            .await?;
        let answer = answers.message().await.map_err(|s| {
            if is_invalid_token(&s) {
                self.forget_token();
            }
            RpcError::Status(s)
        })?;
        match answer {
            Some(resp) if resp.ttl > 0 => Ok(resp),
            Some(_) => Err(RpcError::LeaseGone),
            None => Err(RpcError::StreamClosed("lease keep-alive")),
        }
    }

    /// Start a watch; its first message says whether etcd created it.
    pub async fn watch(&self, create: WatchCreateRequest) -> RpcResult<Watch> {
        let first = WatchRequest {
            request: Some(watch_request::Request::Create(create)),
        };
        let (requests, responses) = self.stream("/etcdserverpb.Watch/Watch", first).await?;
        Ok(Watch {
            requests,
            responses,
        })
    }

    /// Turn on etcd's authentication, as `etcdctl user add root`, `etcdctl user add`
    /// (each of `users`, given the root role) and `etcdctl auth enable` would. For
    /// setting up tests and demos; pgherd itself never changes etcd's users.
    pub async fn enable_auth(&self, root_password: &str, users: &[(&str, &str)]) -> RpcResult<()> {
        let mut all = vec![("root", root_password)];
        all.extend_from_slice(users);
        let _: AuthAnswer = self
            .unary(
                "/etcdserverpb.Auth/RoleAdd",
                AuthRoleAddRequest {
                    name: "root".into(),
                },
            )
            .await
            .or_else(|e| match &e {
                RpcError::Status(s) if s.message().contains("already exists") => Ok(AuthAnswer {}),
                _ => Err(e),
            })?;
        for (name, password) in all {
            let _: AuthAnswer = self
                .unary(
                    "/etcdserverpb.Auth/UserAdd",
                    AuthUserAddRequest {
                        name: name.into(),
                        password: password.into(),
                    },
                )
                .await?;
            let _: AuthAnswer = self
                .unary(
                    "/etcdserverpb.Auth/UserGrantRole",
                    AuthUserGrantRoleRequest {
                        user: name.into(),
                        role: "root".into(),
                    },
                )
                .await?;
        }
        let _: AuthAnswer = self
            .unary("/etcdserverpb.Auth/AuthEnable", AuthAnswer {})
            .await?;
        Ok(())
    }
}

/// An open watch stream.
pub struct Watch {
    requests: mpsc::UnboundedSender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

impl Watch {
    /// The next message, or `None` when etcd ended the stream.
    pub async fn message(&mut self) -> RpcResult<Option<WatchResponse>> {
        self.responses.message().await.map_err(RpcError::Status)
    }

    /// Ask etcd to cancel watch `watch_id` and wait for its answer.
    pub async fn cancel(&mut self, watch_id: i64) -> RpcResult<()> {
        let cancel = WatchRequest {
            request: Some(watch_request::Request::Cancel(WatchCancelRequest {
                watch_id,
            })),
        };
        self.requests
            .unbounded_send(cancel)
            .map_err(|_| RpcError::StreamClosed("watch"))?;
        while let Some(msg) = self.responses.next().await {
            if msg.map_err(RpcError::Status)?.canceled {
                return Ok(());
            }
        }
        Ok(())
    }
}

// ---- messages (etcdserverpb / mvccpb), only the fields pgherd uses ----

#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthenticateRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub password: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthenticateResponse {
    #[prost(string, tag = "2")]
    pub token: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthUserAddRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub password: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthUserGrantRoleRequest {
    #[prost(string, tag = "1")]
    pub user: String,
    #[prost(string, tag = "2")]
    pub role: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthRoleAddRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// The answers of the auth admin calls (only a header, which pgherd does not read), and
/// `AuthEnableRequest`, which is empty.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthAnswer {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    #[prost(int64, tag = "3")]
    pub revision: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub lease: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteRangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// Empty: just `key`; else every key in [key, range_end).
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteRangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub deleted: i64,
}

fn put_request(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        lease,
    }
}

fn delete_request(key: impl Into<Vec<u8>>) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key.into(),
        range_end: Vec::new(),
    }
}

/// One operation of a transaction.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestOp {
    #[prost(oneof = "request_op::Request", tags = "2, 3")]
    pub request: Option<request_op::Request>,
}

pub mod request_op {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Request {
        #[prost(message, tag = "2")]
        Put(super::PutRequest),
        #[prost(message, tag = "3")]
        Delete(super::DeleteRangeRequest),
    }
}

impl RequestOp {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::Put(put_request(key, value, lease))),
        }
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::Delete(delete_request(key))),
        }
    }
}

/// A transaction's condition: `target` of `key` compared for equality.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Compare {
    /// `Compare.CompareResult`; pgherd only compares for equality (EQUAL = 0).
    #[prost(int32, tag = "1")]
    pub result: i32,
    /// `Compare.CompareTarget`.
    #[prost(int32, tag = "2")]
    pub target: i32,
    #[prost(bytes = "vec", tag = "3")]
    pub key: Vec<u8>,
    #[prost(oneof = "compare::Target", tags = "5, 6, 7")]
    pub target_union: Option<compare::Target>,
}

pub mod compare {
    pub const CREATE: i32 = 1;
    pub const MOD: i32 = 2;
    pub const VALUE: i32 = 3;

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Target {
        #[prost(int64, tag = "5")]
        CreateRevision(i64),
        #[prost(int64, tag = "6")]
        ModRevision(i64),
        #[prost(bytes = "vec", tag = "7")]
        Value(Vec<u8>),
    }
}

impl Compare {
    fn equal(target: i32, key: impl Into<Vec<u8>>, union: compare::Target) -> Compare {
        Compare {
            result: 0,
            target,
            key: key.into(),
            target_union: Some(union),
        }
    }

    /// The key was created at `revision` (0: the key does not exist).
    pub fn create_revision(key: impl Into<Vec<u8>>, revision: i64) -> Compare {
        Compare::equal(
            compare::CREATE,
            key,
            compare::Target::CreateRevision(revision),
        )
    }

    /// The key was last modified at `revision`.
    pub fn mod_revision(key: impl Into<Vec<u8>>, revision: i64) -> Compare {
        Compare::equal(compare::MOD, key, compare::Target::ModRevision(revision))
    }

    /// The key holds `value`.
    pub fn value(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Compare {
        Compare::equal(compare::VALUE, key, compare::Target::Value(value.into()))
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnRequest {
    #[prost(message, repeated, tag = "1")]
    pub compare: Vec<Compare>,
    #[prost(message, repeated, tag = "2")]
    pub success: Vec<RequestOp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(bool, tag = "2")]
    pub succeeded: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseGrantRequest {
    #[prost(int64, tag = "1")]
    pub ttl: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseGrantResponse {
    #[prost(int64, tag = "2")]
    pub id: i64,
    #[prost(int64, tag = "3")]
    pub ttl: i64,
    #[prost(string, tag = "4")]
    pub error: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseKeepAliveRequest {
    #[prost(int64, tag = "1")]
    pub id: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseKeepAliveResponse {
    #[prost(int64, tag = "2")]
    pub id: i64,
    #[prost(int64, tag = "3")]
    pub ttl: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchRequest {
    #[prost(oneof = "watch_request::Request", tags = "1, 2")]
    pub request: Option<watch_request::Request>,
}

pub mod watch_request {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Request {
        #[prost(message, tag = "1")]
        Create(super::WatchCreateRequest),
        #[prost(message, tag = "2")]
        Cancel(super::WatchCancelRequest),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchCreateRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub start_revision: i64,
}

impl WatchCreateRequest {
    /// Watch every key under `prefix`, from `start_revision` on (0: from now).
    pub fn prefix(prefix: impl Into<Vec<u8>>, start_revision: i64) -> WatchCreateRequest {
        let key = prefix.into();
        WatchCreateRequest {
            range_end: prefix_range_end(&key),
            key,
            start_revision,
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchCancelRequest {
    #[prost(int64, tag = "1")]
    pub watch_id: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub watch_id: i64,
    #[prost(bool, tag = "3")]
    pub created: bool,
    #[prost(bool, tag = "4")]
    pub canceled: bool,
    #[prost(int64, tag = "5")]
    pub compact_revision: i64,
    #[prost(string, tag = "6")]
    pub cancel_reason: String,
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn prefix_range_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_range_end(b"/service/demo/"), b"/service/demo0");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_range_end(b""), vec![0]);
    }

    #[test]
    fn endpoints_without_a_scheme_are_http_and_https_needs_tls() {
        let t = Duration::from_secs(1);
        assert!(endpoint("127.0.0.1:2379", None, t).is_ok());
        assert!(endpoint("http://127.0.0.1:2379", None, t).is_ok());
        let err = endpoint("https://etcd:2379", None, t).unwrap_err();
        assert!(err.to_string().contains("https://etcd:2379"), "{err}");
        let tls = EtcdTls::default();
        assert!(endpoint("https://etcd:2379", Some(&tls), t).is_ok());
        let err = endpoint("unix://etcd", Some(&tls), t).unwrap_err();
        assert!(err.to_string().contains("unix://etcd"), "{err}");
    }

    /// The bytes etcd's own (generated) messages produce for the same values, as
    /// protobuf defines them: field 1 bytes, field 3 varint.
    #[test]
    fn a_put_request_encodes_as_etcds_proto_does() {
        let bytes = put_request("k", "v", 5).encode_to_vec();
        assert_eq!(bytes, [0x0a, 1, b'k', 0x12, 1, b'v', 0x18, 5]);
        let cmp = Compare::create_revision("k", 0).encode_to_vec();
        // result EQUAL (0) is the default and not sent; target CREATE = 1; key; create_revision 0.
        assert_eq!(cmp, [0x10, 1, 0x1a, 1, b'k', 0x28, 0]);
    }

    #[test]
    fn a_watch_response_decodes_its_events_and_skips_unknown_fields() {
        // header{revision: 9}, watch_id 1, created, an event {type PUT, kv{key "a", mod_revision 9}}
        // and field 7 (fragment), which pgherd does not model.
        let kv = KeyValue {
            key: b"a".to_vec(),
            mod_revision: 9,
            ..KeyValue::default()
        };
        let mut event = vec![0x08, 0];
        let kv_bytes = kv.encode_to_vec();
        event.push(0x12);
        event.push(kv_bytes.len() as u8);
        event.extend(kv_bytes);
        let mut msg = vec![0x0a, 2, 0x18, 9, 0x10, 1, 0x18, 1, 0x38, 1, 0x5a];
        msg.push(event.len() as u8);
        msg.extend(event);
        let resp = WatchResponse::decode(msg.as_slice()).expect("decode");
        assert_eq!(resp.header.map(|h| h.revision), Some(9));
        assert_eq!(resp.watch_id, 1);
        assert!(resp.created);
        assert_eq!(resp.events.len(), 1);
        assert_eq!(
            resp.events[0].kv.as_ref().map(|kv| kv.mod_revision),
            Some(9)
        );
    }
}
