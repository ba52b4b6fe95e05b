//! One suite of DCS behaviours, run against both backends: the in-process `memory` store
//! and a real etcd (each etcd test starts its own server on free loopback ports).
//!
//! Each behaviour is written once as a generic async fn over a [`Harness`]; the thin
//! `memory_*` / `etcd_*` tests at the bottom run it on one backend.

use pgherd_dcs::etcd::rpc::EtcdClient;
use pgherd_dcs::keys::KeyLayout;
use pgherd_dcs::{
    Dcs, DcsError, EtcdDcs, FailoverRequest, HistoryEntry, MemberData, MemoryDcs, MemoryStore,
    PoolerState, SyncState, Tags,
};
use pgherd_testkit::etcd::EtcdServer;
use pgherd_testkit::{init_tracing, wait_until};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NAMESPACE: &str = "/service";
const SCOPE: &str = "pg";
const RETRY_TIMEOUT: Duration = Duration::from_secs(1);
/// Short enough for quick expiry tests, above etcd's minimum TTL (~1.5 s).
const SHORT_TTL: Duration = Duration::from_secs(2);
const LONG_TTL: Duration = Duration::from_secs(30);

/// A backend under test: makes member handles and can cut them off from the store.
trait Harness {
    async fn member(&self, name: &str, ttl: Duration) -> Arc<dyn Dcs>;
    /// Make the store unreachable for every handle (etcd: SIGSTOP the server).
    fn cut(&self);
    /// Undo [`cut`](Harness::cut).
    fn heal(&self);
    /// The raw bytes stored at a full key, as another tool (patronictl) would read them.
    async fn raw(&self, key: &str) -> Option<Vec<u8>>;
    /// Store raw bytes at a full key (no lease), as a broken tool might.
    async fn put_raw(&self, key: &str, value: &[u8]);
}

struct MemoryHarness {
    store: MemoryStore,
    handles: Mutex<Vec<Arc<MemoryDcs>>>,
}

impl MemoryHarness {
    fn new() -> Self {
        init_tracing();
        MemoryHarness {
            store: MemoryStore::new(),
            handles: Mutex::new(Vec::new()),
        }
    }
}

impl Harness for MemoryHarness {
    async fn member(&self, name: &str, ttl: Duration) -> Arc<dyn Dcs> {
        let h = Arc::new(MemoryDcs::new(
            self.store.clone(),
            NAMESPACE,
            SCOPE,
            name,
            ttl,
        ));
        h.set_retry_timeout(RETRY_TIMEOUT);
        self.handles.lock().unwrap().push(h.clone());
        h
    }
    fn cut(&self) {
        for h in self.handles.lock().unwrap().iter() {
            h.set_reachable(false);
        }
    }
    fn heal(&self) {
        for h in self.handles.lock().unwrap().iter() {
            h.set_reachable(true);
        }
    }
    async fn raw(&self, key: &str) -> Option<Vec<u8>> {
        self.store.get_raw(key)
    }
    async fn put_raw(&self, key: &str, value: &[u8]) {
        self.store.put_raw(key, value)
    }
}

struct EtcdHarness {
    server: Mutex<EtcdServer>,
    endpoint: String,
}

impl EtcdHarness {
    fn new() -> Self {
        init_tracing();
        let server = EtcdServer::start().expect("start etcd");
        let endpoint = server.endpoint();
        EtcdHarness {
            server: Mutex::new(server),
            endpoint,
        }
    }
    fn raw_client(&self) -> EtcdClient {
        EtcdClient::new(std::slice::from_ref(&self.endpoint), RETRY_TIMEOUT)
            .expect("raw etcd client")
    }
}

impl Harness for EtcdHarness {
    async fn member(&self, name: &str, ttl: Duration) -> Arc<dyn Dcs> {
        let h = EtcdDcs::connect(
            std::slice::from_ref(&self.endpoint),
            NAMESPACE,
            SCOPE,
            name,
            ttl,
            RETRY_TIMEOUT,
        )
        .await
        .expect("connect to etcd");
        Arc::new(h)
    }
    fn cut(&self) {
        self.server.lock().unwrap().pause();
    }
    fn heal(&self) {
        self.server.lock().unwrap().resume();
    }
    async fn raw(&self, key: &str) -> Option<Vec<u8>> {
        let r = self.raw_client().range(key, false).await.expect("raw get");
        r.kvs.into_iter().next().map(|kv| kv.value)
    }
    async fn put_raw(&self, key: &str, value: &[u8]) {
        self.raw_client().put(key, value, 0).await.expect("raw put");
    }
}

fn keys() -> KeyLayout {
    KeyLayout::new(NAMESPACE, SCOPE)
}

fn member_data(name: &str, port: u16) -> MemberData {
    MemberData {
        conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
        api_url: format!("http://127.0.0.1:{}/patroni", port + 3000),
        state: "running".into(),
        role: "replica".into(),
        version: "3.0.2".into(),
        xlog_location: Some(67108960),
        timeline: Some(1),
        tags: Tags {
            nofailover: name.ends_with('3'),
            other: BTreeMap::from([("zone".to_string(), serde_json::json!("a"))]),
            ..Tags::default()
        },
        ..MemberData::default()
    }
}

async fn leader_of(h: &Arc<dyn Dcs>) -> Option<String> {
    h.get_cluster()
        .await
        .expect("get_cluster")
        .leader
        .map(|l| l.value)
}

// ---------------------------------------------------------------------------------------
// Behaviours

async fn leader_taken_only_when_absent<H: Harness>(h: H) {
    let a = h.member("node1", LONG_TTL).await;
    let b = h.member("node2", LONG_TTL).await;
    let (ra, rb) = tokio::join!(a.acquire_leader(), b.acquire_leader());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra ^ rb, "exactly one member must win the race: {ra} {rb}");
    let (winner, loser) = if ra { (&a, &b) } else { (&b, &a) };
    assert_eq!(leader_of(&a).await.as_deref(), Some(winner.member_name()));
    // Present: nobody takes it again, not even the holder (it renews instead).
    assert!(!loser.acquire_leader().await.unwrap());
    assert!(!winner.acquire_leader().await.unwrap());
    assert_eq!(leader_of(&b).await.as_deref(), Some(winner.member_name()));
    // Leader key holds the plain member name, as Patroni writes it.
    assert_eq!(
        h.raw(&keys().leader()).await.as_deref(),
        Some(winner.member_name().as_bytes())
    );
}

async fn leader_renewed_only_by_its_holder<H: Harness>(h: H) {
    let a = h.member("node1", LONG_TTL).await;
    let b = h.member("node2", LONG_TTL).await;
    assert!(
        !a.update_leader().await.unwrap(),
        "no leader yet: nothing to renew"
    );
    assert!(a.acquire_leader().await.unwrap());
    assert!(
        !b.update_leader().await.unwrap(),
        "a non-holder cannot renew"
    );
    assert!(a.update_leader().await.unwrap());
    assert!(
        !b.delete_leader().await.unwrap(),
        "a non-holder cannot delete"
    );
    assert_eq!(leader_of(&b).await.as_deref(), Some("node1"));
    assert!(a.delete_leader().await.unwrap());
    assert_eq!(leader_of(&b).await, None);
    assert!(!a.update_leader().await.unwrap(), "deleted: no longer held");
    assert!(b.acquire_leader().await.unwrap());
}

async fn leader_kept_while_renewed<H: Harness>(h: H) {
    let a = h.member("node1", SHORT_TTL).await;
    let b = h.member("node2", SHORT_TTL).await;
    assert!(a.acquire_leader().await.unwrap());
    let start = Instant::now();
    while start.elapsed() < SHORT_TTL * 2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(a.update_leader().await.unwrap());
        assert_eq!(leader_of(&b).await.as_deref(), Some("node1"));
    }
}

async fn leader_gone_after_ttl_without_renewal<H: Harness>(h: H) {
    let a = h.member("node1", SHORT_TTL).await;
    let b = h.member("node2", SHORT_TTL).await;
    assert!(a.acquire_leader().await.unwrap());
    let taken = Instant::now();
    tokio::time::sleep(SHORT_TTL / 2).await;
    assert_eq!(
        leader_of(&b).await.as_deref(),
        Some("node1"),
        "gone too early"
    );
    wait_until(
        "leader key to expire",
        SHORT_TTL * 3,
        Duration::from_millis(50),
        || {
            let b = b.clone();
            async move { leader_of(&b).await.is_none().then_some(()) }
        },
    )
    .await;
    let gone_after = taken.elapsed();
    assert!(
        gone_after >= SHORT_TTL - Duration::from_millis(100),
        "expired after {gone_after:?}"
    );
    // The old holder's lease is gone: it must not believe it still leads.
    assert!(!a.update_leader().await.unwrap());
    assert!(b.acquire_leader().await.unwrap());
    assert!(!a.acquire_leader().await.unwrap());
}

async fn ttl_change_applies_at_next_renewal<H: Harness>(h: H) {
    let a = h.member("node1", LONG_TTL).await;
    let b = h.member("node2", LONG_TTL).await;
    assert!(a.acquire_leader().await.unwrap());
    a.set_ttl(SHORT_TTL);
    assert!(
        a.update_leader().await.unwrap(),
        "still the leader after a TTL change"
    );
    let renewed = Instant::now();
    // Not renewed any more: gone after the new, short TTL (not the old long one).
    wait_until(
        "leader key to expire with the new TTL",
        SHORT_TTL * 3,
        Duration::from_millis(50),
        || {
            let b = b.clone();
            async move { leader_of(&b).await.is_none().then_some(()) }
        },
    )
    .await;
    assert!(renewed.elapsed() >= SHORT_TTL - Duration::from_millis(100));
}

async fn leader_key_survives_a_restart_of_its_holder<H: Harness>(h: H) {
    let old = h.member("node1", SHORT_TTL).await;
    let b = h.member("node2", SHORT_TTL).await;
    assert!(old.acquire_leader().await.unwrap());
    // The agent restarts: a new handle, same member name, new lease; the old one is
    // never renewed again.
    drop(old);
    let new = h.member("node1", SHORT_TTL).await;
    assert!(
        new.update_leader().await.unwrap(),
        "the restarted holder takes its key over"
    );
    let start = Instant::now();
    while start.elapsed() < SHORT_TTL * 2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(new.update_leader().await.unwrap());
        assert_eq!(leader_of(&b).await.as_deref(), Some("node1"));
    }
}

async fn member_keys_expire_with_their_lease<H: Harness>(h: H) {
    let a = h.member("node1", SHORT_TTL).await;
    let b = h.member("node2", LONG_TTL).await;
    a.touch_member(&member_data("node1", 5432)).await.unwrap();
    b.touch_member(&member_data("node2", 5433)).await.unwrap();
    let c = b.get_cluster().await.unwrap();
    assert_eq!(c.members.len(), 2);
    wait_until(
        "node1's member key to expire",
        SHORT_TTL * 3,
        Duration::from_millis(50),
        || {
            let b = b.clone();
            async move {
                let c = b.get_cluster().await.unwrap();
                c.member("node1").is_none().then_some(c)
            }
        },
    )
    .await;
    let c = b.get_cluster().await.unwrap();
    assert!(c.member("node2").is_some(), "a live member's key stays");
    // Touching again brings it back (with a fresh lease).
    a.touch_member(&member_data("node1", 5432)).await.unwrap();
    assert!(b.get_cluster().await.unwrap().member("node1").is_some());
    a.delete_member().await.unwrap();
    assert!(b.get_cluster().await.unwrap().member("node1").is_none());
}

async fn member_data_round_trips<H: Harness>(h: H) {
    let a = h.member("node3", LONG_TTL).await;
    let mut data = member_data("node3", 5434);
    data.extra
        .insert("pending_restart".into(), serde_json::json!(true));
    data.replication_state = Some("streaming".into());
    a.touch_member(&data).await.unwrap();
    let c = a.get_cluster().await.unwrap();
    let m = c.member("node3").expect("member present");
    assert_eq!(m.data, data);
    // Stored as Patroni's JSON, readable by patronictl.
    let raw = h.raw(&keys().member("node3")).await.expect("raw member");
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(v["conn_url"], "postgres://127.0.0.1:5434/postgres");
    assert_eq!(v["api_url"], "http://127.0.0.1:8434/patroni");
    assert_eq!(v["xlog_location"], 67108960);
    assert_eq!(v["tags"]["nofailover"], true);
    assert_eq!(v["pending_restart"], true);
    // A member written by Patroni 3 is read as-is.
    h.put_raw(
        &keys().member("patroni"),
        br#"{"conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"http://127.0.0.1:8008/patroni","state":"running","role":"primary","version":"3.0.2","xlog_location":67108960,"timeline":1}"#,
    )
    .await;
    let c = a.get_cluster().await.unwrap();
    let p = c.member("patroni").expect("patroni member");
    assert_eq!(p.data.role, "primary");
    assert_eq!(p.data.timeline, Some(1));
}

async fn broken_member_key_is_skipped_but_broken_config_is_an_error<H: Harness>(h: H) {
    let a = h.member("node1", LONG_TTL).await;
    a.touch_member(&member_data("node1", 5432)).await.unwrap();
    h.put_raw(&keys().member("broken"), b"{not json").await;
    let c = a.get_cluster().await.unwrap();
    assert_eq!(
        c.members.len(),
        1,
        "the broken member is skipped, the good one kept"
    );
    h.put_raw(&keys().config(), b"{not json").await;
    match a.get_cluster().await {
        Err(DcsError::InvalidValue { key, .. }) => assert_eq!(key, keys().config()),
        other => panic!("expected InvalidValue for config, got {other:?}"),
    }
}

async fn initialize_taken_only_once<H: Harness>(h: H) {
    let a = h.member("node1", LONG_TTL).await;
    let b = h.member("node2", LONG_TTL).await;
    let (ra, rb) = tokio::join!(a.initialize("init-a"), b.initialize("init-b"));
    assert!(ra.unwrap() ^ rb.unwrap(), "exactly one member bootstraps");
    a.set_initialize("7234567890123456789").await.unwrap();
    assert_eq!(
        b.get_cluster().await.unwrap().initialize.as_deref(),
        Some("7234567890123456789")
    );
    assert_eq!(
        h.raw(&keys().initialize()).await.as_deref(),
        Some(&b"7234567890123456789"[..])
    );
    a.cancel_initialization().await.unwrap();
    assert_eq!(b.get_cluster().await.unwrap().initialize, None);
    assert!(b.initialize("init-b").await.unwrap());
}

async fn delete_cluster_removes_only_this_clusters_keys<H: Harness>(h: H) {
    let a = h.member("node1", LONG_TTL).await;
    a.set_initialize("7234567890123456789").await.unwrap();
    assert!(a.acquire_leader().await.unwrap());
    a.touch_member(&member_data("node1", 5432)).await.unwrap();
    a.set_config(&serde_json::json!({"ttl": 30}), None)
        .await
        .unwrap();
    // Another cluster whose name starts with ours.
    let other = KeyLayout::new(NAMESPACE, &format!("{SCOPE}2")).config();
    h.put_raw(&other, b"{}").await;
    a.delete_cluster().await.unwrap();
    let c = a.get_cluster().await.unwrap();
    assert_eq!(
        c,
        pgherd_dcs::Cluster::default(),
        "every key of the cluster is gone"
    );
    assert_eq!(h.raw(&other).await.as_deref(), Some(&b"{}"[..]));
}

async fn compare_and_set_on_config<H: Harness>(h: H) {
    let a = h.member("node1", LONG_TTL).await;
    let v1 = serde_json::json!({"ttl": 30, "loop_wait": 10});
    let v2 = serde_json::json!({"ttl": 30, "loop_wait": 5});
    assert!(
        a.set_config(&v1, Some(0)).await.unwrap(),
        "Some(0) creates when absent"
    );
    assert!(
        !a.set_config(&v2, Some(0)).await.unwrap(),
        "Some(0) fails when present"
    );
    let first = a.get_cluster().await.unwrap().config.expect("config");
    assert_eq!(first.value, v1);
    assert!(
        a.set_config(&v2, Some(first.version)).await.unwrap(),
        "current version wins"
    );
    let second = a.get_cluster().await.unwrap().config.expect("config");
    assert_eq!(second.value, v2);
    assert!(second.version > first.version);
    assert!(
        !a.set_config(&v1, Some(first.version)).await.unwrap(),
        "stale version fails"
    );
    assert_eq!(a.get_cluster().await.unwrap().config.unwrap().value, v2);
    assert!(
        a.set_config(&v1, None).await.unwrap(),
        "None writes unconditionally"
    );
    assert_eq!(a.get_cluster().await.unwrap().config.unwrap().value, v1);
}

async fn compare_and_set_on_failover<H: Harness>(h: H) {
    let a = h.member("node1", LONG_TTL).await;
    let f1 = FailoverRequest {
        leader: Some("node1".into()),
        candidate: Some("node2".into()),
        scheduled_at: None,
    };
    let f2 = FailoverRequest {
        candidate: Some("node3".into()),
        ..FailoverRequest::default()
    };
    assert!(a.set_failover(&f1, Some(0)).await.unwrap());
    assert!(!a.set_failover(&f2, Some(0)).await.unwrap());
    let first = a.get_cluster().await.unwrap().failover.expect("failover");
    assert_eq!(first.value, f1);
    // Patroni's field names: leader / member.
    let raw: serde_json::Value =
        serde_json::from_slice(&h.raw(&keys().failover()).await.unwrap()).unwrap();
    assert_eq!(
        raw,
        serde_json::json!({"leader": "node1", "member": "node2"})
    );
    assert!(a.set_failover(&f2, Some(first.version)).await.unwrap());
    assert!(
        !a.set_failover(&f1, Some(first.version)).await.unwrap(),
        "stale version fails"
    );
    let second = a.get_cluster().await.unwrap().failover.expect("failover");
    assert_eq!(second.value, f2);
    assert!(
        !a.delete_failover(Some(first.version)).await.unwrap(),
        "stale delete fails"
    );
    assert!(a.get_cluster().await.unwrap().failover.is_some());
    assert!(a.delete_failover(Some(second.version)).await.unwrap());
    assert!(a.get_cluster().await.unwrap().failover.is_none());
    assert!(
        a.delete_failover(Some(0)).await.unwrap(),
        "Some(0): absent, as asked"
    );
    assert!(a.set_failover(&f1, None).await.unwrap());
    assert!(a.delete_failover(None).await.unwrap());
    assert!(a.get_cluster().await.unwrap().failover.is_none());
}

async fn compare_and_set_on_sync<H: Harness>(h: H) {
    let a = h.member("node1", LONG_TTL).await;
    let s1 = SyncState {
        leader: Some("node1".into()),
        sync_standby: Some("node2".into()),
        quorum: None,
    };
    let s2 = SyncState {
        leader: Some("node1".into()),
        sync_standby: None,
        quorum: Some(1),
    };
    assert!(a.set_sync(&s1, Some(0)).await.unwrap());
    assert!(!a.set_sync(&s2, Some(0)).await.unwrap());
    let v = a.get_cluster().await.unwrap().sync.expect("sync");
    assert!(!a.set_sync(&s2, Some(v.version + 1000)).await.unwrap());
    assert!(a.set_sync(&s2, Some(v.version)).await.unwrap());
    assert_eq!(a.get_cluster().await.unwrap().sync.unwrap().value, s2);
}

/// Wait for `w`'s watch to wake; returns how long it took. Fails if it timed out.
async fn expect_wake(w: &Arc<dyn Dcs>, within: Duration) -> Duration {
    let start = Instant::now();
    assert!(
        w.watch(within).await.unwrap(),
        "watch should wake within {within:?}"
    );
    start.elapsed()
}

async fn watch_wakes_on_leader_change<H: Harness>(h: H) {
    let a = h.member("node1", SHORT_TTL).await;
    let w = h.member("node2", LONG_TTL).await;

    // Nothing changes: the watch times out.
    w.get_cluster().await.unwrap();
    let start = Instant::now();
    assert!(!w.watch(Duration::from_millis(300)).await.unwrap());
    assert!(start.elapsed() >= Duration::from_millis(290));

    // Acquire.
    w.get_cluster().await.unwrap();
    let a2 = a.clone();
    let t = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        a2.acquire_leader().await.unwrap()
    });
    let took = expect_wake(&w, Duration::from_secs(5)).await;
    assert!(t.await.unwrap());
    assert!(took < Duration::from_secs(2), "woke after {took:?}");
    assert_eq!(leader_of(&w).await.as_deref(), Some("node1"));

    // A change made between the snapshot and the watch call is not missed.
    assert!(a.delete_leader().await.unwrap());
    let took = expect_wake(&w, Duration::from_secs(5)).await;
    assert!(took < Duration::from_millis(500), "woke after {took:?}");
    assert_eq!(leader_of(&w).await, None);

    // Expiry: the leader stops renewing; the watcher wakes soon after the TTL.
    assert!(a.acquire_leader().await.unwrap());
    let acquired = Instant::now();
    assert_eq!(leader_of(&w).await.as_deref(), Some("node1"));
    let mut woke_for_expiry = false;
    // A couple of turns at most: the first wake must be the expiry (nothing else writes).
    for _ in 0..3 {
        if !w.watch(SHORT_TTL * 3).await.unwrap() {
            break;
        }
        if leader_of(&w).await.is_none() {
            woke_for_expiry = true;
            break;
        }
    }
    let after = acquired.elapsed();
    assert!(
        woke_for_expiry,
        "watch did not wake on the leader's lease expiring"
    );
    assert!(
        after >= SHORT_TTL - Duration::from_millis(100),
        "woke after {after:?}"
    );
    assert!(
        after < SHORT_TTL + Duration::from_millis(1500),
        "woke after {after:?}"
    );
}

async fn watch_ignores_own_writes_and_member_keys<H: Harness>(h: H) {
    let a = h.member("node1", LONG_TTL).await;
    a.get_cluster().await.unwrap();
    a.touch_member(&member_data("node1", 5432)).await.unwrap();
    assert!(a.acquire_leader().await.unwrap());
    let start = Instant::now();
    assert!(
        !a.watch(Duration::from_millis(400)).await.unwrap(),
        "a member's own publish must not wake its own watch"
    );
    assert!(start.elapsed() >= Duration::from_millis(390));
    // Another member's publish does not wake it either: every member publishes every
    // tick, and waking on that would make all of them tick whenever one does.
    let b = h.member("node2", LONG_TTL).await;
    b.touch_member(&member_data("node2", 5433)).await.unwrap();
    assert!(!a.watch(Duration::from_millis(400)).await.unwrap());
    // ...but another member's change to a control key does.
    b.set_config(&serde_json::json!({"ttl": 30}), None)
        .await
        .unwrap();
    expect_wake(&a, Duration::from_secs(2)).await;
}

async fn history_round_trips_in_patroni_format<H: Harness>(h: H) {
    let a = h.member("node1", LONG_TTL).await;
    let history = vec![
        HistoryEntry {
            timeline: 1,
            lsn: 25165984,
            reason: "no recovery target specified".into(),
            timestamp: "2024-01-01T00:00:00+00:00".into(),
            new_leader: "node2".into(),
        },
        HistoryEntry {
            timeline: 2,
            lsn: 50331744,
            reason: "no recovery target specified".into(),
            timestamp: "2024-01-02T00:00:00+00:00".into(),
            new_leader: "node1".into(),
        },
    ];
    a.set_history(&history).await.unwrap();
    assert_eq!(a.get_cluster().await.unwrap().history, history);
    let raw = h.raw(&keys().history()).await.expect("raw history");
    assert_eq!(
        std::str::from_utf8(&raw).unwrap(),
        r#"[[1,25165984,"no recovery target specified","2024-01-01T00:00:00+00:00","node2"],[2,50331744,"no recovery target specified","2024-01-02T00:00:00+00:00","node1"]]"#
    );
    // As Patroni writes it (older versions: 3 fields).
    h.put_raw(
        &keys().history(),
        br#"[[1,25165984,"no recovery target specified"]]"#,
    )
    .await;
    let c = a.get_cluster().await.unwrap();
    assert_eq!(c.history.len(), 1);
    assert_eq!(c.history[0].lsn, 25165984);
}

async fn unreachable_store_fails_fast_and_recovers<H: Harness>(h: H) {
    let a = h.member("node1", LONG_TTL).await;
    assert!(a.acquire_leader().await.unwrap());
    a.touch_member(&member_data("node1", 5432)).await.unwrap();
    a.get_cluster().await.unwrap();
    h.cut();
    let bound = RETRY_TIMEOUT + Duration::from_millis(500);
    macro_rules! unreachable_within_bound {
        ($call:expr) => {{
            let start = Instant::now();
            let r = $call.await;
            let took = start.elapsed();
            assert!(
                matches!(r, Err(DcsError::Unreachable(_))),
                "{}: expected Unreachable, got {r:?}",
                stringify!($call)
            );
            assert!(took <= bound, "{} took {took:?}", stringify!($call));
        }};
    }
    unreachable_within_bound!(a.get_cluster());
    unreachable_within_bound!(a.update_leader());
    unreachable_within_bound!(a.touch_member(&member_data("node1", 5432)));
    unreachable_within_bound!(a.set_config(&serde_json::json!({}), None));
    // A watch does not hang past the retry timeout either.
    let start = Instant::now();
    let r = a.watch(Duration::from_secs(10)).await;
    assert!(
        !matches!(r, Ok(true)),
        "a cut-off watch must not report a change: {r:?}"
    );
    assert!(start.elapsed() <= bound, "watch took {:?}", start.elapsed());
    h.heal();
    let c = wait_until(
        "the store to answer again",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let a = a.clone();
            async move { a.get_cluster().await.ok() }
        },
    )
    .await;
    assert_eq!(c.leader_name(), Some("node1"));
    assert!(
        a.update_leader().await.unwrap(),
        "the handle works again after the outage"
    );
    a.touch_member(&member_data("node1", 5432)).await.unwrap();
}

async fn pooler_keys_wake_watchers_only_when_they_change_and_expire_with_their_lease<H: Harness>(
    h: H,
) {
    let pooler = h.member("pooler-1", SHORT_TTL).await;
    let w = h.member("node1", LONG_TTL).await;
    let state = PoolerState {
        leader: Some("node1".into()),
        routes_to: Some("node1".into()),
        drained_for: None,
    };
    w.get_cluster().await.unwrap();
    pooler.touch_pooler(&state).await.unwrap();
    expect_wake(&w, Duration::from_secs(5)).await;
    let c = w.get_cluster().await.unwrap();
    assert_eq!(c.poolers.len(), 1);
    assert_eq!(
        (c.poolers[0].id.as_str(), &c.poolers[0].state),
        ("pooler-1", &state)
    );
    assert!(c.members.is_empty(), "a pooler is no member");

    // The same again only renews the lease: nobody wakes.
    pooler.touch_pooler(&state).await.unwrap();
    assert!(!w.watch(Duration::from_millis(300)).await.unwrap());
    // A change wakes the HA loops at once.
    let moved = PoolerState {
        leader: None,
        routes_to: None,
        drained_for: Some(3),
    };
    pooler.touch_pooler(&moved).await.unwrap();
    expect_wake(&w, Duration::from_secs(5)).await;
    assert_eq!(w.get_cluster().await.unwrap().poolers[0].state, moved);

    // A pooler that stops renewing vanishes with its lease.
    let deadline = Instant::now() + SHORT_TTL * 5;
    while !w.get_cluster().await.unwrap().poolers.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the pooler key outlived its lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The two backends.

macro_rules! memory_tests {
    ($($test:ident => $behaviour:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $test() {
            $behaviour(MemoryHarness::new()).await;
        }
    )*};
}

macro_rules! etcd_tests {
    ($($test:ident => $behaviour:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $test() {
            $behaviour(EtcdHarness::new()).await;
        }
    )*};
}

memory_tests! {
    memory_leader_taken_only_when_absent => leader_taken_only_when_absent,
    memory_leader_renewed_only_by_its_holder => leader_renewed_only_by_its_holder,
    memory_leader_kept_while_renewed => leader_kept_while_renewed,
    memory_leader_gone_after_ttl_without_renewal => leader_gone_after_ttl_without_renewal,
    memory_ttl_change_applies_at_next_renewal => ttl_change_applies_at_next_renewal,
    memory_leader_key_survives_a_restart_of_its_holder => leader_key_survives_a_restart_of_its_holder,
    memory_member_keys_expire_with_their_lease => member_keys_expire_with_their_lease,
    memory_member_data_round_trips => member_data_round_trips,
    memory_broken_member_key_is_skipped_but_broken_config_is_an_error => broken_member_key_is_skipped_but_broken_config_is_an_error,
    memory_initialize_taken_only_once => initialize_taken_only_once,
    memory_compare_and_set_on_config => compare_and_set_on_config,
    memory_delete_cluster_removes_only_this_clusters_keys => delete_cluster_removes_only_this_clusters_keys,
    memory_compare_and_set_on_failover => compare_and_set_on_failover,
    memory_compare_and_set_on_sync => compare_and_set_on_sync,
    memory_watch_wakes_on_leader_change => watch_wakes_on_leader_change,
    memory_watch_ignores_own_writes_and_member_keys => watch_ignores_own_writes_and_member_keys,
    memory_history_round_trips_in_patroni_format => history_round_trips_in_patroni_format,
    memory_unreachable_store_fails_fast_and_recovers => unreachable_store_fails_fast_and_recovers,
    memory_pooler_keys => pooler_keys_wake_watchers_only_when_they_change_and_expire_with_their_lease,
}

etcd_tests! {
    etcd_leader_taken_only_when_absent => leader_taken_only_when_absent,
    etcd_leader_renewed_only_by_its_holder => leader_renewed_only_by_its_holder,
    etcd_leader_kept_while_renewed => leader_kept_while_renewed,
    etcd_leader_gone_after_ttl_without_renewal => leader_gone_after_ttl_without_renewal,
    etcd_ttl_change_applies_at_next_renewal => ttl_change_applies_at_next_renewal,
    etcd_leader_key_survives_a_restart_of_its_holder => leader_key_survives_a_restart_of_its_holder,
    etcd_member_keys_expire_with_their_lease => member_keys_expire_with_their_lease,
    etcd_member_data_round_trips => member_data_round_trips,
    etcd_broken_member_key_is_skipped_but_broken_config_is_an_error => broken_member_key_is_skipped_but_broken_config_is_an_error,
    etcd_initialize_taken_only_once => initialize_taken_only_once,
    etcd_compare_and_set_on_config => compare_and_set_on_config,
    etcd_delete_cluster_removes_only_this_clusters_keys => delete_cluster_removes_only_this_clusters_keys,
    etcd_compare_and_set_on_failover => compare_and_set_on_failover,
    etcd_compare_and_set_on_sync => compare_and_set_on_sync,
    etcd_watch_wakes_on_leader_change => watch_wakes_on_leader_change,
    etcd_watch_ignores_own_writes_and_member_keys => watch_ignores_own_writes_and_member_keys,
    etcd_history_round_trips_in_patroni_format => history_round_trips_in_patroni_format,
    etcd_unreachable_store_fails_fast_and_recovers => unreachable_store_fails_fast_and_recovers,
    etcd_pooler_keys => pooler_keys_wake_watchers_only_when_they_change_and_expire_with_their_lease,
}

// ---------------------------------------------------------------------------------------
// etcd only.

#[tokio::test]
async fn etcd_connect_fails_clearly_when_nothing_listens() {
    init_tracing();
    let (_reserved, port) = pgherd_testkit::refusing_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    let r = EtcdDcs::connect(
        std::slice::from_ref(&endpoint),
        NAMESPACE,
        SCOPE,
        "node1",
        LONG_TTL,
        RETRY_TIMEOUT,
    )
    .await;
    match r {
        Err(DcsError::Unreachable(msg)) => {
            assert!(
                msg.contains(&format!("cannot reach etcd at {endpoint}")),
                "{msg}"
            )
        }
        Err(e) => panic!("expected Unreachable, got {e:?}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(start.elapsed() <= RETRY_TIMEOUT + Duration::from_millis(500));
}

#[tokio::test]
async fn etcd_handle_reconnects_after_etcd_restarts() {
    let h = EtcdHarness::new();
    let a = h.member("node1", LONG_TTL).await;
    let w = h.member("node2", LONG_TTL).await;
    assert!(a.acquire_leader().await.unwrap());
    a.touch_member(&member_data("node1", 5432)).await.unwrap();
    w.get_cluster().await.unwrap();
    h.server.lock().unwrap().kill();
    assert!(matches!(
        a.get_cluster().await,
        Err(DcsError::Unreachable(_))
    ));
    assert!(matches!(
        a.update_leader().await,
        Err(DcsError::Unreachable(_))
    ));
    h.server.lock().unwrap().restart().expect("restart etcd");
    let c = wait_until(
        "etcd to answer after restart",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let a = a.clone();
            async move { a.get_cluster().await.ok() }
        },
    )
    .await;
    // Leases survive a restart of etcd: the leader key is still ours.
    assert_eq!(c.leader_name(), Some("node1"));
    assert!(a.update_leader().await.unwrap());
    // The other handle (which saw no error yet) works too, and its watch as well.
    w.get_cluster().await.unwrap();
    a.set_config(&serde_json::json!({"ttl": 30}), None)
        .await
        .unwrap();
    expect_wake(&w, Duration::from_secs(3)).await;
}
