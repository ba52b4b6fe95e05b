//! The cancel-key registry: the (process id, secret key) each client was given in its
//! BackendKeyData, and where a CancelRequest carrying it goes — the server backend the
//! client is attached to now.

use crate::client::ClientInfo;
use crate::server::{CancelInFlight, CancelsInFlight, ServerTarget};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Where to send a client's CancelRequest: the server backend it is attached to now.
///
/// Set each time a client attaches to a server, so nothing here allocates.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// The pool's server (host and port).
    pub server: Arc<ServerTarget>,
    pub backend_pid: i32,
    pub cancel_key: bytes::Bytes,
    /// The backend's cancels in flight, so its server is not lent on meanwhile.
    pub cancels: Arc<CancelsInFlight>,
}

/// A client's slot in the cancel registry, updated as it attaches to servers.
pub type CancelSlot = Arc<Mutex<Option<CancelTarget>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A plain map, consistent between statements: a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The cancel keys handed out, each with its client's slot.
pub struct CancelRegistry {
    cancels: Mutex<HashMap<(i32, u32), CancelSlot>>,
    next_pid: AtomicI32,
}

impl Default for CancelRegistry {
    fn default() -> Self {
        CancelRegistry {
            cancels: Mutex::new(HashMap::new()),
            next_pid: AtomicI32::new(1),
        }
    }
}

impl CancelRegistry {
    /// A fresh (process id, secret key) for a client's BackendKeyData, registered so a
    /// CancelRequest carrying it finds the client's server; `client` shows it.
    pub fn register(&self, client: &ClientInfo) -> (i32, u32, CancelSlot) {
        let slot: CancelSlot = Arc::new(Mutex::new(None));
        let mut cancels = lock(&self.cancels);
        loop {
            let pid = self.next_pid.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff;
            let key = rand::random::<u32>();
            if let std::collections::hash_map::Entry::Vacant(e) = cancels.entry((pid, key)) {
                e.insert(slot.clone());
                client.set_cancel_key(pid, key);
                return (pid, key, slot);
            }
        }
    }

    pub fn unregister(&self, pid: i32, key: u32) {
        lock(&self.cancels).remove(&(pid, key));
    }

    /// Where a CancelRequest for (pid, key) should go, if that client is attached.
    /// The cancel is counted as in flight from here (under the client's slot lock, so
    /// a session that detaches from the server afterwards sees it when giving the
    /// server back) until the returned guard drops.
    pub fn target(&self, pid: i32, key: u32) -> Option<(CancelTarget, CancelInFlight)> {
        let slot = lock(&self.cancels).get(&(pid, key)).cloned()?;
        let slot = lock(&slot);
        let target = slot.as_ref()?;
        Some((target.clone(), target.cancels.start()))
    }
}
