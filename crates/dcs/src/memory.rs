//! In-process DCS with etcd's semantics, for the demo and tests.
//!
//! A [`MemoryStore`] is the shared "cluster"; each [`MemoryDcs`] is one member's handle on
//! it. As with etcd: every handle owns one lease; the member key and the leader key are
//! bound to it; a lease not renewed for `ttl` expires and its keys vanish (in one
//! revision); versions are a store-wide revision counter (etcd's `mod_revision`).
//!
//! Expiry is evaluated lazily against tokio's clock whenever the store is touched, and
//! watchers sleep no later than the next lease expiry, so a watcher of a dead leader
//! wakes right after the lease runs out without any background task.

use crate::codec::{parse_cluster, to_json, RawKv};
use crate::keys::KeyLayout;
use crate::{
    Cluster, ClusterStatus, Dcs, DcsError, FailoverRequest, HistoryEntry, MemberData, PoolerState,
    Result, SyncState,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// How many past changes the store remembers for watchers. A watcher that fell further
/// behind is simply woken (like a compacted etcd watch), so this bounds memory only.
const EVENT_LOG_LEN: usize = 10_000;
/// How many of its own write revisions a handle remembers, so its watch ignores them.
const OWN_WRITES_LEN: usize = 256;
/// A watcher re-checks the store at least this often (reachability, missed expiry).
const WATCH_TICK: Duration = Duration::from_millis(100);
/// How long an unreachable handle takes to fail, at most (a network timeout in small).
const UNREACHABLE_DELAY: Duration = Duration::from_millis(50);

/// Lock a std mutex, ignoring poisoning: every critical section here leaves the data
/// consistent before anything that could panic, so a poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Entry {
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
    lease: Option<i64>,
}

struct State {
    revision: i64,
    next_lease: i64,
    keys: BTreeMap<String, Entry>,
    leases: HashMap<i64, Instant>,
    /// `(revision, key)` of recent changes, oldest first.
    log: VecDeque<(i64, String)>,
}

impl State {
    fn record(&mut self, rev: i64, key: &str) {
        if self.log.len() >= EVENT_LOG_LEN {
            self.log.pop_front();
        }
        self.log.push_back((rev, key.to_string()));
    }

    fn put(&mut self, key: &str, value: Vec<u8>, lease: Option<i64>) -> i64 {
        self.revision += 1;
        let rev = self.revision;
        let create_revision = self.keys.get(key).map(|e| e.create_revision).unwrap_or(rev);
        self.keys.insert(
            key.to_string(),
            Entry {
                value,
                create_revision,
                mod_revision: rev,
                lease,
            },
        );
        self.record(rev, key);
        rev
    }

    fn delete(&mut self, key: &str) -> Option<i64> {
        self.keys.remove(key)?;
        self.revision += 1;
        let rev = self.revision;
        self.record(rev, key);
        Some(rev)
    }

    fn mod_revision(&self, key: &str) -> i64 {
        self.keys.get(key).map(|e| e.mod_revision).unwrap_or(0)
    }

    /// Expire leases whose time has come; each lease's keys vanish in one revision.
    fn purge(&mut self, now: Instant) -> bool {
        let expired: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut changed = false;
        for id in expired {
            self.leases.remove(&id);
            let doomed: Vec<String> = self
                .keys
                .iter()
                .filter(|(_, e)| e.lease == Some(id))
                .map(|(k, _)| k.clone())
                .collect();
            if doomed.is_empty() {
                continue;
            }
            self.revision += 1;
            let rev = self.revision;
            for k in doomed {
                tracing::debug!(key = %k, lease = id, "memory DCS: lease expired, key removed");
                self.keys.remove(&k);
                self.record(rev, &k);
            }
            changed = true;
        }
        changed
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.leases.values().min().copied()
    }

    /// The newest change under `prefix` after `since` that is not one of `ignore`.
    /// `Some(revision)` also when the log no longer reaches back to `since`.
    fn changed_since(
        &self,
        wakes: impl Fn(&str) -> bool,
        since: i64,
        ignore: &VecDeque<i64>,
    ) -> Option<i64> {
        if self.log.front().is_some_and(|(r, _)| *r > since + 1) && self.revision > since {
            return Some(self.revision);
        }
        self.log
            .iter()
            .rev()
            .take_while(|(r, _)| *r > since)
            .find(|(r, k)| wakes(k) && !ignore.contains(r))
            .map(|(r, _)| *r)
    }
}

struct Shared {
    state: Mutex<State>,
    /// Bumped after every change so watchers re-check.
    changed: tokio::sync::watch::Sender<u64>,
}

/// A shared in-process key-value store with leases: the "etcd cluster" of the demo and
/// of tests. Cloning gives another reference to the same store.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        let (changed, _) = tokio::sync::watch::channel(0);
        MemoryStore {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    revision: 1,
                    next_lease: 1,
                    keys: BTreeMap::new(),
                    leases: HashMap::new(),
                    log: VecDeque::new(),
                }),
                changed,
            }),
        }
    }

    /// Run `f` on the state after expiring due leases; wakes watchers if anything changed.
    fn with_state<R>(&self, f: impl FnOnce(&mut State, Instant) -> R) -> R {
        let now = Instant::now();
        let (r, changed) = {
            let mut st = lock(&self.shared.state);
            let before = st.revision;
            st.purge(now);
            let r = f(&mut st, now);
            (r, st.revision != before)
        };
        if changed {
            self.shared.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
        r
    }

    /// The store's current revision (for tests and diagnostics).
    pub fn revision(&self) -> i64 {
        self.with_state(|st, _| st.revision)
    }

    /// The raw value of `key` (full key, e.g. `/service/pg/leader`), as etcd would hold it.
    /// For diagnostics and tests.
    pub fn get_raw(&self, key: &str) -> Option<Vec<u8>> {
        self.with_state(|st, _| st.keys.get(key).map(|e| e.value.clone()))
    }

    /// Write `key` without a lease, bypassing every check. Fault injection (e.g. a
    /// corrupt value) for tests and the demo.
    pub fn put_raw(&self, key: &str, value: &[u8]) {
        self.with_state(|st, _| st.put(key, value.to_vec(), None));
    }
}

/// One member's handle on a [`MemoryStore`], implementing [`Dcs`] with etcd's semantics.
pub struct MemoryDcs {
    store: MemoryStore,
    keys: KeyLayout,
    member: String,
    ttl: Mutex<Duration>,
    retry_timeout: Mutex<Duration>,
    reachable: AtomicBool,
    lease: Mutex<Option<i64>>,
    /// Revision of the last snapshot (or watch wake-up) this handle has seen.
    last_seen: Mutex<Option<i64>>,
    own_writes: Mutex<VecDeque<i64>>,
    /// The lease and value of the last `touch_pooler` write.
    pooler_written: Mutex<Option<(i64, String)>>,
}

impl MemoryDcs {
    pub fn new(
        store: MemoryStore,
        namespace: &str,
        scope: &str,
        member: &str,
        ttl: Duration,
    ) -> MemoryDcs {
        MemoryDcs {
            store,
            keys: KeyLayout::new(namespace, scope),
            member: member.to_string(),
            ttl: Mutex::new(ttl),
            retry_timeout: Mutex::new(Duration::from_secs(10)),
            reachable: AtomicBool::new(true),
            lease: Mutex::new(None),
            last_seen: Mutex::new(None),
            own_writes: Mutex::new(VecDeque::new()),
            pooler_written: Mutex::new(None),
        }
    }

    /// Fault injection: while `false`, every call of this handle fails with
    /// [`DcsError::Unreachable`] after a short delay and its lease is not renewed.
    pub fn set_reachable(&self, reachable: bool) {
        tracing::info!(member = %self.member, reachable, "memory DCS: reachability changed");
        self.reachable.store(reachable, Ordering::SeqCst);
    }

    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::SeqCst)
    }

    /// The store this handle works on.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    fn ttl(&self) -> Duration {
        *lock(&self.ttl)
    }

    async fn gate(&self) -> Result<()> {
        if self.is_reachable() {
            return Ok(());
        }
        let delay = (*lock(&self.retry_timeout)).min(UNREACHABLE_DELAY);
        tokio::time::sleep(delay).await;
        Err(DcsError::Unreachable(format!(
            "memory DCS cut off for member {} (fault injection)",
            self.member
        )))
    }

    fn own(&self, rev: i64) {
        let mut w = lock(&self.own_writes);
        if w.len() >= OWN_WRITES_LEN {
            w.pop_front();
        }
        w.push_back(rev);
    }

    /// Renew this handle's lease, granting a new one if it never existed or expired.
    /// Returns the lease id and whether it is new.
    fn renew_lease(&self, st: &mut State, now: Instant) -> (i64, bool) {
        let ttl = self.ttl();
        let mut lease = lock(&self.lease);
        if let Some(id) = *lease {
            if let Some(at) = st.leases.get_mut(&id) {
                *at = now + ttl;
                return (id, false);
            }
            tracing::info!(member = %self.member, lease = id, "memory DCS: lease gone, granting a new one");
        }
        let id = st.next_lease;
        st.next_lease += 1;
        st.leases.insert(id, now + ttl);
        *lease = Some(id);
        (id, true)
    }

    fn cas_put(&self, key: &str, value: String, expected_version: Option<i64>) -> bool {
        let rev = self.store.with_state(|st, _| {
            if let Some(v) = expected_version {
                if st.mod_revision(key) != v {
                    return None;
                }
            }
            Some(st.put(key, value.into_bytes(), None))
        });
        rev.map(|r| self.own(r)).is_some()
    }
}

#[async_trait::async_trait]
impl Dcs for MemoryDcs {
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
        self.gate().await?;
        let prefix = self.keys.prefix().to_string();
        let (rev, cluster) = self.store.with_state(|st, _| {
            let kvs = st
                .keys
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, e)| RawKv {
                    key: k.as_bytes(),
                    value: &e.value,
                    mod_revision: e.mod_revision,
                });
            (st.revision, parse_cluster(&self.keys, kvs))
        });
        *lock(&self.last_seen) = Some(rev);
        cluster
    }

    async fn initialize(&self, system_identifier: &str) -> Result<bool> {
        self.gate().await?;
        Ok(self.cas_put(
            &self.keys.initialize(),
            system_identifier.to_string(),
            Some(0),
        ))
    }

    async fn set_initialize(&self, system_identifier: &str) -> Result<()> {
        self.gate().await?;
        self.cas_put(&self.keys.initialize(), system_identifier.to_string(), None);
        Ok(())
    }

    async fn cancel_initialization(&self) -> Result<()> {
        self.gate().await?;
        let key = self.keys.initialize();
        if let Some(r) = self.store.with_state(|st, _| st.delete(&key)) {
            self.own(r);
        }
        Ok(())
    }

    async fn acquire_leader(&self) -> Result<bool> {
        self.gate().await?;
        let key = self.keys.leader();
        let rev = self.store.with_state(|st, now| {
            let (lease, _) = self.renew_lease(st, now);
            if st.keys.contains_key(&key) {
                return None;
            }
            Some(st.put(&key, self.member.clone().into_bytes(), Some(lease)))
        });
        Ok(rev.map(|r| self.own(r)).is_some())
    }

    async fn update_leader(&self) -> Result<bool> {
        self.gate().await?;
        let key = self.keys.leader();
        let (held, rev) = self.store.with_state(|st, now| {
            let (lease, _) = self.renew_lease(st, now);
            match st.keys.get(&key) {
                Some(e) if e.value == self.member.as_bytes() => {
                    // Ours but bound to an older lease (e.g. before a restart): rebind it.
                    if e.lease != Some(lease) {
                        let r = st.put(&key, self.member.clone().into_bytes(), Some(lease));
                        (true, Some(r))
                    } else {
                        (true, None)
                    }
                }
                _ => (false, None),
            }
        });
        if let Some(r) = rev {
            self.own(r);
        }
        Ok(held)
    }

    async fn delete_leader(&self) -> Result<bool> {
        self.gate().await?;
        let key = self.keys.leader();
        let rev = self.store.with_state(|st, _| match st.keys.get(&key) {
            Some(e) if e.value == self.member.as_bytes() => st.delete(&key),
            _ => None,
        });
        Ok(rev.map(|r| self.own(r)).is_some())
    }

    async fn touch_member(&self, data: &MemberData) -> Result<()> {
        self.gate().await?;
        let key = self.keys.member(&self.member);
        let value = to_json(&key, data)?;
        let rev = self.store.with_state(|st, now| {
            let (lease, _) = self.renew_lease(st, now);
            st.put(&key, value.into_bytes(), Some(lease))
        });
        self.own(rev);
        Ok(())
    }

    async fn touch_pooler(&self, state: &PoolerState) -> Result<()> {
        self.gate().await?;
        let key = self.keys.pooler(&self.member);
        let value = to_json(&key, state)?;
        let rev = self.store.with_state(|st, now| {
            let (lease, _) = self.renew_lease(st, now);
            let mut written = lock(&self.pooler_written);
            if written.as_ref() == Some(&(lease, value.clone())) && st.keys.contains_key(&key) {
                return None;
            }
            *written = Some((lease, value.clone()));
            Some(st.put(&key, value.into_bytes(), Some(lease)))
        });
        if let Some(rev) = rev {
            self.own(rev);
        }
        Ok(())
    }

    async fn delete_cluster(&self) -> Result<()> {
        self.gate().await?;
        let prefix = self.keys.prefix().to_string();
        let last = self.store.with_state(|st, _| {
            let doomed: Vec<String> = st
                .keys
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            doomed.iter().filter_map(|k| st.delete(k)).last()
        });
        if let Some(r) = last {
            self.own(r);
        }
        Ok(())
    }

    async fn delete_member(&self) -> Result<()> {
        self.gate().await?;
        let key = self.keys.member(&self.member);
        if let Some(r) = self.store.with_state(|st, _| st.delete(&key)) {
            self.own(r);
        }
        Ok(())
    }

    async fn set_config(
        &self,
        value: &serde_json::Value,
        expected_version: Option<i64>,
    ) -> Result<bool> {
        self.gate().await?;
        let key = self.keys.config();
        let text = to_json(&key, value)?;
        Ok(self.cas_put(&key, text, expected_version))
    }

    async fn set_failover(
        &self,
        value: &FailoverRequest,
        expected_version: Option<i64>,
    ) -> Result<bool> {
        self.gate().await?;
        let key = self.keys.failover();
        let text = to_json(&key, value)?;
        Ok(self.cas_put(&key, text, expected_version))
    }

    async fn delete_failover(&self, expected_version: Option<i64>) -> Result<bool> {
        self.gate().await?;
        let key = self.keys.failover();
        let (ok, rev) = self.store.with_state(|st, _| {
            if let Some(v) = expected_version {
                if st.mod_revision(&key) != v {
                    return (false, None);
                }
            }
            (true, st.delete(&key))
        });
        if let Some(r) = rev {
            self.own(r);
        }
        Ok(ok)
    }

    async fn set_sync(&self, value: &SyncState, expected_version: Option<i64>) -> Result<bool> {
        self.gate().await?;
        let key = self.keys.sync();
        let text = to_json(&key, value)?;
        Ok(self.cas_put(&key, text, expected_version))
    }

    async fn set_history(&self, history: &[HistoryEntry]) -> Result<()> {
        self.gate().await?;
        let key = self.keys.history();
        let text = to_json(&key, history)?;
        self.cas_put(&key, text, None);
        Ok(())
    }

    async fn set_status(&self, status: &ClusterStatus) -> Result<()> {
        self.gate().await?;
        let key = self.keys.status();
        let text = to_json(&key, status)?;
        self.cas_put(&key, text, None);
        Ok(())
    }

    async fn set_failsafe(&self, members: &BTreeMap<String, String>) -> Result<()> {
        self.gate().await?;
        let key = self.keys.failsafe();
        let text = to_json(&key, members)?;
        self.cas_put(&key, text, None);
        Ok(())
    }

    async fn watch(&self, timeout: Duration) -> Result<bool> {
        self.gate().await?;
        let deadline = Instant::now() + timeout;
        let mut rx = self.store.shared.changed.subscribe();
        let since = {
            let seen = *lock(&self.last_seen);
            match seen {
                Some(r) => r,
                None => {
                    // Never read: watch from now, and remember it so that changes between
                    // two watch calls are not missed.
                    let r = self.store.revision();
                    *lock(&self.last_seen) = Some(r);
                    r
                }
            }
        };
        // Bounded by `deadline`: every turn either returns or sleeps until a wake-up that
        // is no later than the deadline.
        loop {
            self.gate().await?;
            rx.borrow_and_update();
            let (hit, next_expiry) = self.store.with_state(|st, _| {
                let own = lock(&self.own_writes);
                let wakes = |k: &str| self.keys.wakes_watchers(k);
                (st.changed_since(wakes, since, &own), st.next_expiry())
            });
            if let Some(rev) = hit {
                *lock(&self.last_seen) = Some(rev);
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let mut wake = deadline.min(now + WATCH_TICK);
            if let Some(at) = next_expiry {
                wake = wake.min(at.max(now));
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}
