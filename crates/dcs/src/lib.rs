//! The distributed configuration store (DCS): where members of a cluster agree on who
//! leads. Keys follow Patroni's layout under `<namespace>/<scope>/` so that `patronictl`
//! can read and operate a pgherd cluster.
//!
//! One [`Dcs`] handle belongs to one member (or to a read-only client such as the CLI or
//! the pooler). Each member owns one lease: its member key and, while it leads, the
//! leader key are bound to that lease, so both vanish `ttl` after the member stops
//! renewing.

mod codec;
pub mod etcd;
pub mod keys;
pub mod memory;
pub mod types;

pub use etcd::EtcdDcs;
pub use memory::{MemoryDcs, MemoryStore};
pub use types::*;

use std::collections::BTreeMap;
use std::time::Duration;

/// Errors from a DCS backend. The variant says whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum DcsError {
    /// The store could not be reached or did not answer within the retry timeout.
    #[error("DCS unreachable: {0}")]
    Unreachable(String),
    /// The store answered with an error.
    #[error("DCS request failed: {0}")]
    Request(String),
    /// A key held a value we cannot parse.
    #[error("invalid value at DCS key {key}: {reason}")]
    InvalidValue { key: String, reason: String },
}

pub type Result<T> = std::result::Result<T, DcsError>;

/// A member's (or a client's) handle on one cluster's keys in the DCS.
///
/// Every call is bounded by the handle's retry timeout: a store that does not answer
/// yields [`DcsError::Unreachable`], never a hang.
#[async_trait::async_trait]
pub trait Dcs: Send + Sync {
    /// The member name this handle acts for.
    fn member_name(&self) -> &str;

    /// Change the lease TTL used for the next lease grant/renewal (dynamic config).
    fn set_ttl(&self, ttl: Duration);

    /// Change the timeout applied to every request.
    fn set_retry_timeout(&self, timeout: Duration);

    /// Read everything under `<namespace>/<scope>/` in one consistent snapshot.
    async fn get_cluster(&self) -> Result<Cluster>;

    /// Race for the `initialize` key (create-if-absent). `true` when this member won.
    async fn initialize(&self, system_identifier: &str) -> Result<bool>;

    /// Overwrite the `initialize` key with the real system identifier (after initdb).
    async fn set_initialize(&self, system_identifier: &str) -> Result<()>;

    /// Remove the `initialize` key (a bootstrap that failed gives others a turn).
    async fn cancel_initialization(&self) -> Result<()>;

    /// Take the leader key if it is absent, bound to this member's lease.
    /// `true` when this member now holds it.
    async fn acquire_leader(&self) -> Result<bool>;

    /// Renew this member's lease and check it still holds the leader key.
    /// `false` when the key is gone or held by someone else.
    async fn update_leader(&self) -> Result<bool>;

    /// Delete the leader key if (and only if) this member holds it.
    async fn delete_leader(&self) -> Result<bool>;

    /// Write this member's key (bound to its lease) and renew the lease.
    async fn touch_member(&self, data: &MemberData) -> Result<()>;

    /// Remove this member's key.
    async fn delete_member(&self) -> Result<()>;

    /// A pooler's key `poolers/<member name of this handle>`, bound to this handle's
    /// lease: renew the lease, and write the value only when it (or the lease) changed,
    /// so that watchers wake only when what the pooler routes by changes.
    async fn touch_pooler(&self, state: &PoolerState) -> Result<()>;

    /// Write the dynamic `config`. `expected_version`: `Some(v)` succeeds only if the key's
    /// current version is `v` (`Some(0)`: only if absent); `None` writes unconditionally.
    async fn set_config(
        &self,
        value: &serde_json::Value,
        expected_version: Option<i64>,
    ) -> Result<bool>;

    /// Write the `failover` key, with the same compare-and-set rule as `set_config`.
    async fn set_failover(
        &self,
        value: &FailoverRequest,
        expected_version: Option<i64>,
    ) -> Result<bool>;

    /// Delete the `failover` key (`expected_version` as in `set_config`; `Some(0)` just
    /// checks it is absent). `true` when the condition held and the key is now gone.
    async fn delete_failover(&self, expected_version: Option<i64>) -> Result<bool>;

    /// Write the `sync` key, with the same compare-and-set rule as `set_config`.
    async fn set_sync(&self, value: &SyncState, expected_version: Option<i64>) -> Result<bool>;

    /// Delete every key of this cluster (`ctl remove`).
    async fn delete_cluster(&self) -> Result<()>;

    /// Replace the `history` key.
    async fn set_history(&self, history: &[HistoryEntry]) -> Result<()>;

    /// Write the `status` key (leader's last known WAL position, slots).
    async fn set_status(&self, status: &ClusterStatus) -> Result<()>;

    /// Write the `failsafe` key: the members the leader vouches for (name → API URL).
    async fn set_failsafe(&self, members: &BTreeMap<String, String>) -> Result<()>;

    /// Wait until a control key of this cluster (leader, config, failover, sync,
    /// initialize — see [`keys::KeyLayout::wakes_watchers`]) changes, including the leader
    /// key vanishing with its lease, or `timeout` passes. `Ok(true)` when woken by a change.
    ///
    /// Changes are counted from the last [`get_cluster`](Dcs::get_cluster) snapshot (or the
    /// last wake-up), so a change made between the snapshot and this call wakes at once;
    /// each change wakes a handle once. This handle's own writes do not wake it (the HA
    /// loop publishes its member key every tick and must not wake itself). A store that
    /// cannot be reached gives `Unreachable` within the retry timeout, or `Ok(false)` if it
    /// stops answering while the watch is already established.
    async fn watch(&self, timeout: Duration) -> Result<bool>;
}
