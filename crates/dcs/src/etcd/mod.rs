//! etcd v3 backend, with Patroni's etcd3 semantics.
//!
//! Only KV, txn, lease and watch are used (Debian's etcd is 3.4). One lease per handle,
//! granted lazily; the member key and the leader key are bound to it. Renewal is a single
//! keep-alive request/response on a fresh stream, because a keep-alive stream does not
//! reconnect by itself and a long-lived one could hand back a stale answer after a
//! timeout. Every trait call is bounded by the retry timeout as a whole.
//!
//! Reconnection: tonic's channel reconnects lazily, but to be sure a half-dead connection
//! (e.g. to a paused or partitioned etcd) is never reused, the client is rebuilt on the
//! next call after any call that found etcd unreachable, talking to the next endpoint;
//! a call that found etcd unreachable is tried again that way, within the retry timeout.
//! Building a client is cheap (it connects lazily).
//!
//! The gRPC calls themselves are in [`rpc`], with hand-written protobuf messages, so the
//! build needs no `protoc`.

pub mod rpc;

use crate::codec::{parse_cluster, to_json, RawKv};
use crate::keys::KeyLayout;
use crate::{
    Cluster, ClusterStatus, Dcs, DcsError, FailoverRequest, HistoryEntry, MemberData, PoolerState,
    Result, SyncState,
};
use rpc::{Compare, EtcdClient, RequestOp, ResponseHeader, RpcError, WatchCreateRequest};
pub use rpc::{EtcdAccess, EtcdAuth, EtcdTls};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// How many of its own write revisions a handle remembers, so its watch ignores them.
const OWN_WRITES_LEN: usize = 256;

/// How many times one call tries to reach etcd within the retry timeout.
const CALL_ATTEMPTS: u32 = 3;

/// The pause before trying a call again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How long connecting to one etcd endpoint may take: a third of the retry timeout, so
/// that a dead or partitioned member leaves time to try another.
fn connect_timeout(retry_timeout: Duration) -> Duration {
    (retry_timeout / CALL_ATTEMPTS).max(Duration::from_millis(200))
}

/// Lock a std mutex, ignoring poisoning: the guarded data is plain values that are
/// always consistent, so a poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// etcd lease TTLs are whole seconds; round up so a lease never lives shorter than asked.
fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

struct ClientSlot {
    client: EtcdClient,
    /// Set after a call found etcd unreachable: the next call builds a fresh client.
    stale: bool,
}

#[derive(Clone, Copy)]
struct Lease {
    id: i64,
    ttl_secs: i64,
}

/// A member's handle on one cluster's keys in etcd (v3 API).
pub struct EtcdDcs {
    access: EtcdAccess,
    /// The endpoint the next rebuilt client talks to: after a failure, the next one.
    next_endpoint: AtomicUsize,
    keys: KeyLayout,
    member: String,
    ttl: Mutex<Duration>,
    retry_timeout: Mutex<Duration>,
    client: Mutex<ClientSlot>,
    /// Held across a whole lease-bound call so grants are not raced by the same handle.
    lease: tokio::sync::Mutex<Option<Lease>>,
    /// Revision of the last snapshot (or watch wake-up) this handle has seen; 0 = none.
    last_seen: AtomicI64,
    own_writes: Mutex<VecDeque<i64>>,
    /// The lease and value of the last `touch_pooler` write.
    pooler_written: Mutex<Option<(i64, String)>>,
}

/// The revision an answer's header carries.
fn revision(header: &Option<ResponseHeader>) -> Option<i64> {
    header.as_ref().map(|h| h.revision)
}

impl EtcdDcs {
    /// Connect to etcd and check that it answers within `retry_timeout`.
    /// `endpoints` like `http://127.0.0.1:2379` (a bare `host:port` means http).
    pub async fn connect(
        endpoints: &[String],
        namespace: &str,
        scope: &str,
        member: &str,
        ttl: Duration,
        retry_timeout: Duration,
    ) -> Result<EtcdDcs> {
        let access = EtcdAccess::plain(endpoints);
        EtcdDcs::connect_with(&access, namespace, scope, member, ttl, retry_timeout).await
    }

    /// [`EtcdDcs::connect`] with TLS and authentication as `access` says. A user name or
    /// password etcd refuses is an error that says so (not "unreachable").
    pub async fn connect_with(
        access: &EtcdAccess,
        namespace: &str,
        scope: &str,
        member: &str,
        ttl: Duration,
        retry_timeout: Duration,
    ) -> Result<EtcdDcs> {
        if access.endpoints.is_empty() {
            return Err(DcsError::Request("no etcd endpoints configured".into()));
        }
        let at = access.endpoints.join(",");
        let keys = KeyLayout::new(namespace, scope);
        let client = EtcdClient::with_access(access, connect_timeout(retry_timeout))
            .map_err(|e| DcsError::Request(e.to_string()))?;
        let probe = async {
            client.range(keys.leader(), false).await?;
            Ok::<_, RpcError>(client)
        };
        let client = match tokio::time::timeout(retry_timeout, probe).await {
            Ok(Ok(c)) => c,
            Ok(Err(e @ RpcError::Authentication { .. })) => {
                return Err(DcsError::Request(format!("etcd at {at}: {e}")))
            }
            Ok(Err(e)) if !e.is_unreachable() => {
                return Err(DcsError::Request(format!("etcd at {at}: {e}")))
            }
            Ok(Err(e)) => {
                let why = EtcdClient::diagnose(access, retry_timeout)
                    .await
                    .unwrap_or_else(|| e.to_string());
                return Err(DcsError::Unreachable(format!(
                    "cannot reach etcd at {at}: {why}"
                )));
            }
            Err(_) => {
                return Err(DcsError::Unreachable(format!(
                    "cannot reach etcd at {at}: no answer within {retry_timeout:?}"
                )))
            }
        };
        tracing::debug!(endpoints = %at, member, prefix = keys.prefix(), "connected to etcd");
        Ok(EtcdDcs {
            access: access.clone(),
            next_endpoint: AtomicUsize::new(0),
            keys,
            member: member.to_string(),
            ttl: Mutex::new(ttl),
            retry_timeout: Mutex::new(retry_timeout),
            client: Mutex::new(ClientSlot {
                client,
                stale: false,
            }),
            lease: tokio::sync::Mutex::new(None),
            last_seen: AtomicI64::new(0),
            own_writes: Mutex::new(VecDeque::new()),
            pooler_written: Mutex::new(None),
        })
    }

    /// The key layout this handle uses.
    pub fn keys(&self) -> &KeyLayout {
        &self.keys
    }

    fn retry_timeout(&self) -> Duration {
        *lock(&self.retry_timeout)
    }

    fn mark_stale(&self) {
        lock(&self.client).stale = true;
    }

    /// The current client, rebuilt first if the last call found etcd unreachable.
    async fn client(&self) -> std::result::Result<EtcdClient, RpcError> {
        let (client, stale) = {
            let slot = lock(&self.client);
            (slot.client.clone(), slot.stale)
        };
        if !stale {
            return Ok(client);
        }
        // One endpoint at a time, the next after each failure (as Patroni's client
        // does): a channel balancing over all of them keeps sending some calls to a dead
        // member.
        let n = self.access.endpoints.len().max(1);
        let i = self.next_endpoint.fetch_add(1, Ordering::Relaxed) % n;
        let mut one = self.access.clone();
        one.endpoints = self.access.endpoints.get(i).cloned().into_iter().collect();
        if one.endpoints.is_empty() {
            one.endpoints = self.access.endpoints.clone();
        }
        tracing::debug!(member = %self.member, endpoint = ?one.endpoints, "rebuilding the etcd client");
        let fresh = EtcdClient::with_access(&one, connect_timeout(self.retry_timeout()))?;
        let mut slot = lock(&self.client);
        slot.client = fresh.clone();
        slot.stale = false;
        Ok(fresh)
    }

    /// Map a client error, remembering to rebuild the client if etcd was unreachable.
    fn error(&self, what: &str, e: RpcError) -> DcsError {
        if e.is_invalid_token() {
            // The next call authenticates again.
            lock(&self.client).client.forget_token();
        }
        if e.is_unreachable() {
            self.mark_stale();
            DcsError::Unreachable(format!("etcd {what}: {e}"))
        } else {
            DcsError::Request(format!("etcd {what}: {e}"))
        }
    }

    /// Run one trait call under the retry timeout. A call that could not reach etcd is
    /// made again on a fresh client (up to [`CALL_ATTEMPTS`] times, all within the retry
    /// timeout), as Patroni retries: one dead member of an etcd cluster, or a leader
    /// election inside etcd, must not look like a lost DCS to the HA loop.
    async fn bounded<T, Fut>(&self, what: &str, mut call: impl FnMut() -> Fut) -> Result<T>
    where
        Fut: Future<Output = std::result::Result<T, RpcError>>,
    {
        let rt = self.retry_timeout();
        let deadline = Instant::now() + rt;
        let mut attempt = 1;
        loop {
            match tokio::time::timeout_at(deadline, call()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e))
                    if e.is_unreachable()
                        && attempt < CALL_ATTEMPTS
                        && Instant::now() + RETRY_PAUSE < deadline =>
                {
                    tracing::debug!(member = %self.member, what, attempt, error = %e, "etcd call failed; trying again on a fresh client");
                    self.mark_stale();
                    attempt += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Ok(Err(e)) => return Err(self.error(what, e)),
                Err(_) => {
                    self.mark_stale();
                    return Err(DcsError::Unreachable(format!(
                        "etcd did not answer {what} within {rt:?}"
                    )));
                }
            }
        }
    }

    fn own(&self, rev: Option<i64>) {
        let Some(rev) = rev else { return };
        let mut w = lock(&self.own_writes);
        if w.len() >= OWN_WRITES_LEN {
            w.pop_front();
        }
        w.push_back(rev);
    }

    /// Renew the lease with one keep-alive round trip, or grant one if there is none or
    /// it is gone. Returns the lease id. Called with the lease lock held.
    /// Renew this handle's lease and put `key` bound to it, unless `unchanged(lease)`
    /// says the key already holds this value under that lease. `Some(lease)` when it
    /// wrote.
    async fn put_leased(
        &self,
        op: &'static str,
        key: String,
        value: String,
        unchanged: impl Fn(i64) -> bool + Send + Sync,
    ) -> Result<Option<i64>> {
        self.bounded(op, || async {
            let mut slot = self.lease.lock().await;
            let client = self.client().await?;
            let lease = self.renew_lease(&client, &mut slot).await?;
            if unchanged(lease) {
                return Ok(None);
            }
            match client.put(key.clone(), value.clone(), lease).await {
                Ok(r) => {
                    self.own(revision(&r.header));
                    Ok(Some(lease))
                }
                Err(e) => {
                    // The lease vanished between renewal and put: forget it.
                    if e.is_lease_gone() {
                        *slot = None;
                    }
                    Err(e)
                }
            }
        })
        .await
    }

    async fn renew_lease(
        &self,
        client: &EtcdClient,
        slot: &mut Option<Lease>,
    ) -> std::result::Result<i64, RpcError> {
        let want = ttl_secs(*lock(&self.ttl));
        if let Some(lease) = *slot {
            if lease.ttl_secs != want {
                // TTL changed (dynamic config): take a new lease; update_leader and
                // touch_member rebind our keys to it, the old one just runs out.
                tracing::info!(member = %self.member, old = lease.ttl_secs, new = want, "lease TTL changed, granting a new lease");
            } else {
                match client.lease_keep_alive_once(lease.id).await {
                    Ok(_) => return Ok(lease.id),
                    Err(e) if e.is_lease_gone() => {
                        tracing::warn!(member = %self.member, lease = lease.id, "lease expired, granting a new one");
                    }
                    Err(e) => return Err(e),
                }
            }
            *slot = None;
        }
        let granted = client.lease_grant(want).await?;
        tracing::debug!(member = %self.member, lease = granted.id, ttl = granted.ttl, "granted lease");
        *slot = Some(Lease {
            id: granted.id,
            ttl_secs: want,
        });
        Ok(granted.id)
    }

    /// Compare-and-set put by `mod_revision` (`Some(0)`: only if absent).
    async fn cas_put(
        &self,
        what: &str,
        key: String,
        value: String,
        expected: Option<i64>,
    ) -> Result<bool> {
        self.bounded(what, || async {
            let client = self.client().await?;
            match expected {
                None => {
                    let r = client.put(key.clone(), value.clone(), 0).await?;
                    self.own(revision(&r.header));
                    Ok(true)
                }
                Some(v) => {
                    let cmp = if v == 0 {
                        Compare::create_revision(key.clone(), 0)
                    } else {
                        Compare::mod_revision(key.clone(), v)
                    };
                    let r = client
                        .txn(cmp, RequestOp::put(key.clone(), value.clone(), 0))
                        .await?;
                    if r.succeeded {
                        self.own(revision(&r.header));
                    }
                    Ok(r.succeeded)
                }
            }
        })
        .await
    }

    async fn delete(&self, what: &str, key: String) -> Result<()> {
        self.bounded(what, || async {
            let r = self.client().await?.delete(key.clone()).await?;
            if r.deleted > 0 {
                self.own(revision(&r.header));
            }
            Ok(())
        })
        .await
    }
}

#[async_trait::async_trait]
impl Dcs for EtcdDcs {
    fn member_name(&self) -> &str {
        &self.member
    }

    fn set_ttl(&self, ttl: Duration) {
        *lock(&self.ttl) = ttl;
    }

    fn set_retry_timeout(&self, timeout: Duration) {
        *lock(&self.retry_timeout) = timeout;
    }

    async fn get_cluster(&self) -> Result<Cluster> {
        let prefix = self.keys.prefix().to_string();
        let resp = self
            .bounded("get_cluster", || async {
                self.client().await?.range(prefix.clone(), true).await
            })
            .await?;
        if let Some(rev) = revision(&resp.header) {
            self.last_seen.store(rev, Ordering::SeqCst);
        }
        let kvs = resp.kvs.iter().map(|kv| RawKv {
            key: &kv.key,
            value: &kv.value,
            mod_revision: kv.mod_revision,
        });
        parse_cluster(&self.keys, kvs)
    }

    async fn initialize(&self, system_identifier: &str) -> Result<bool> {
        self.cas_put(
            "initialize",
            self.keys.initialize(),
            system_identifier.to_string(),
            Some(0),
        )
        .await
    }

    async fn set_initialize(&self, system_identifier: &str) -> Result<()> {
        self.cas_put(
            "set_initialize",
            self.keys.initialize(),
            system_identifier.to_string(),
            None,
        )
        .await
        .map(|_| ())
    }

    async fn delete_cluster(&self) -> Result<()> {
        let prefix = self.keys.prefix().to_string();
        self.bounded("delete_cluster", || async {
            let r = self.client().await?.delete_prefix(prefix.clone()).await?;
            if r.deleted > 0 {
                self.own(revision(&r.header));
            }
            Ok(())
        })
        .await
    }

    async fn cancel_initialization(&self) -> Result<()> {
        self.delete("cancel_initialization", self.keys.initialize())
            .await
    }

    async fn acquire_leader(&self) -> Result<bool> {
        let key = self.keys.leader();
        self.bounded("acquire_leader", || async {
            // Inside the bound: waiting for another call of this handle counts too.
            let mut slot = self.lease.lock().await;
            let client = self.client().await?;
            let lease = self.renew_lease(&client, &mut slot).await?;
            let r = client
                .txn(
                    Compare::create_revision(key.clone(), 0),
                    RequestOp::put(key.clone(), self.member.clone(), lease),
                )
                .await?;
            if r.succeeded {
                self.own(revision(&r.header));
            }
            Ok(r.succeeded)
        })
        .await
    }

    async fn update_leader(&self) -> Result<bool> {
        let key = self.keys.leader();
        self.bounded("update_leader", || async {
            // Inside the bound: waiting for another call of this handle counts too.
            let mut slot = self.lease.lock().await;
            let client = self.client().await?;
            let lease = self.renew_lease(&client, &mut slot).await?;
            let resp = client.range(key.clone(), false).await?;
            let Some(cur) = resp.kvs.first() else {
                return Ok(false);
            };
            if cur.value != self.member.as_bytes() {
                return Ok(false);
            }
            if cur.lease == lease {
                return Ok(true);
            }
            // Ours but bound to an older lease (TTL change, agent restart): rebind it,
            // unless someone changed it meanwhile.
            tracing::info!(member = %self.member, old = cur.lease, new = lease, "rebinding the leader key to our current lease");
            let r = client
                .txn(
                    Compare::mod_revision(key.clone(), cur.mod_revision),
                    RequestOp::put(key.clone(), self.member.clone(), lease),
                )
                .await?;
            if r.succeeded {
                self.own(revision(&r.header));
            }
            Ok(r.succeeded)
        })
        .await
    }

    async fn delete_leader(&self) -> Result<bool> {
        let key = self.keys.leader();
        self.bounded("delete_leader", || async {
            let r = self
                .client()
                .await?
                .txn(
                    Compare::value(key.clone(), self.member.clone()),
                    RequestOp::delete(key.clone()),
                )
                .await?;
            if r.succeeded {
                self.own(revision(&r.header));
            }
            Ok(r.succeeded)
        })
        .await
    }

    async fn touch_member(&self, data: &MemberData) -> Result<()> {
        let key = self.keys.member(&self.member);
        let value = to_json(&key, data)?;
        self.put_leased("touch_member", key, value, |_| false)
            .await
            .map(|_| ())
    }

    async fn delete_member(&self) -> Result<()> {
        self.delete("delete_member", self.keys.member(&self.member))
            .await
    }

    async fn touch_pooler(&self, state: &PoolerState) -> Result<()> {
        let key = self.keys.pooler(&self.member);
        let value = to_json(&key, state)?;
        let same =
            |lease: i64| lock(&self.pooler_written).as_ref() == Some(&(lease, value.clone()));
        if let Some(lease) = self
            .put_leased("touch_pooler", key, value.clone(), same)
            .await?
        {
            *lock(&self.pooler_written) = Some((lease, value));
        }
        Ok(())
    }

    async fn set_config(
        &self,
        value: &serde_json::Value,
        expected_version: Option<i64>,
    ) -> Result<bool> {
        let key = self.keys.config();
        let text = to_json(&key, value)?;
        self.cas_put("set_config", key, text, expected_version)
            .await
    }

    async fn set_failover(
        &self,
        value: &FailoverRequest,
        expected_version: Option<i64>,
    ) -> Result<bool> {
        let key = self.keys.failover();
        let text = to_json(&key, value)?;
        self.cas_put("set_failover", key, text, expected_version)
            .await
    }

    async fn delete_failover(&self, expected_version: Option<i64>) -> Result<bool> {
        let key = self.keys.failover();
        self.bounded("delete_failover", || async {
            let client = self.client().await?;
            let Some(v) = expected_version else {
                let r = client.delete(key.clone()).await?;
                if r.deleted > 0 {
                    self.own(revision(&r.header));
                }
                return Ok(true);
            };
            let cmp = if v == 0 {
                Compare::create_revision(key.clone(), 0)
            } else {
                Compare::mod_revision(key.clone(), v)
            };
            let r = client.txn(cmp, RequestOp::delete(key.clone())).await?;
            if r.succeeded && v != 0 {
                self.own(revision(&r.header));
            }
            Ok(r.succeeded)
        })
        .await
    }

    async fn set_sync(&self, value: &SyncState, expected_version: Option<i64>) -> Result<bool> {
        let key = self.keys.sync();
        let text = to_json(&key, value)?;
        self.cas_put("set_sync", key, text, expected_version).await
    }

    async fn set_history(&self, history: &[HistoryEntry]) -> Result<()> {
        let key = self.keys.history();
        let text = to_json(&key, history)?;
        self.cas_put("set_history", key, text, None)
            .await
            .map(|_| ())
    }

    async fn set_status(&self, status: &ClusterStatus) -> Result<()> {
        let key = self.keys.status();
        let text = to_json(&key, status)?;
        self.cas_put("set_status", key, text, None)
            .await
            .map(|_| ())
    }

    async fn set_failsafe(&self, members: &BTreeMap<String, String>) -> Result<()> {
        let key = self.keys.failsafe();
        let text = to_json(&key, members)?;
        self.cas_put("set_failsafe", key, text, None)
            .await
            .map(|_| ())
    }

    async fn watch(&self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let prefix = self.keys.prefix().to_string();
        let since = self.last_seen.load(Ordering::SeqCst);
        // Start right after the last snapshot so nothing between it and now is missed.
        let start = if since > 0 { since + 1 } else { 0 };
        let create = WatchCreateRequest::prefix(prefix, start);
        let mut stream = self
            .bounded("watch", || async {
                self.client().await?.watch(create.clone()).await
            })
            .await?;
        let mut watch_id = None;
        // Bounded by `deadline`: each turn waits for one message, at most until then.
        let result = loop {
            let msg = match tokio::time::timeout_at(deadline, stream.message()).await {
                Err(_) => break Ok(false),
                Ok(Err(e)) => break Err(self.error("watch", e)),
                Ok(Ok(None)) => {
                    self.mark_stale();
                    break Err(DcsError::Unreachable("etcd closed the watch stream".into()));
                }
                Ok(Ok(Some(m))) => m,
            };
            watch_id = Some(msg.watch_id);
            if since == 0 {
                // Never read a snapshot: remember where this watch started so the next
                // watch call does not miss what happens in between.
                if let Some(rev) = revision(&msg.header) {
                    let _ =
                        self.last_seen
                            .compare_exchange(0, rev, Ordering::SeqCst, Ordering::SeqCst);
                }
            }
            if msg.canceled {
                if msg.compact_revision > 0 {
                    // Our start revision was compacted away: we cannot know what changed,
                    // so report a change and let the caller read a fresh snapshot.
                    self.last_seen.store(0, Ordering::SeqCst);
                    break Ok(true);
                }
                if msg.cancel_reason.contains("invalid auth token") {
                    // The next call authenticates again.
                    lock(&self.client).client.forget_token();
                }
                break Err(DcsError::Request(format!(
                    "etcd cancelled the watch: {}",
                    msg.cancel_reason
                )));
            }
            let own = lock(&self.own_writes).clone();
            let mut newest_foreign = None;
            let mut newest = None;
            for ev in &msg.events {
                let Some(kv) = &ev.kv else { continue };
                let rev = kv.mod_revision;
                newest = newest.max(Some(rev));
                let key = String::from_utf8_lossy(&kv.key);
                if !own.contains(&rev) && self.keys.wakes_watchers(&key) {
                    newest_foreign = newest_foreign.max(Some(rev));
                }
            }
            if let Some(rev) = newest {
                self.last_seen.fetch_max(rev, Ordering::SeqCst);
            }
            if newest_foreign.is_some() {
                break Ok(true);
            }
        };
        if let Some(id) = watch_id {
            // Best effort: dropping the stream ends it anyway.
            let _ = tokio::time::timeout(Duration::from_millis(100), stream.cancel(id)).await;
        }
        result
    }
}
