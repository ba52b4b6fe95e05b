//! One connected client as the admin console and metrics see it: where it is in its
//! session (logging in, active, waiting for a server), its names, the server it holds.
//! The session and the pool write it as things happen; `SHOW CLIENTS`, `SHOW POOLS`
//! and `/metrics` read it.

use crate::net::Peer;
use futures::task::AtomicWaker;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Instant, SystemTime};

/// Where a client is, in `SHOW CLIENTS`' words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Connected, not logged in yet (not listed by `SHOW CLIENTS`, like PgBouncer).
    Login,
    /// Logged in: idle, or holding a server.
    Active,
    /// Waiting for a server (or for `RESUME`).
    Waiting,
}

/// What the console shows of a client; changes as the session goes.
#[derive(Debug, Clone)]
pub struct ClientView {
    pub state: ClientState,
    pub user: Option<String>,
    pub database: Option<String>,
    pub application_name: Option<String>,
    /// The server connection it holds (the pool's server id).
    pub link: Option<u64>,
    /// When it last asked for a server.
    pub request_time: SystemTime,
    /// Since when it waits (for `wait`, `maxwait`).
    pub waiting_since: Option<Instant>,
    /// Its BackendKeyData, once sent.
    pub cancel_key: Option<(i32, u32)>,
    /// TLS protocol and cipher (`TLSv1.3/…`), empty on plain TCP.
    pub tls: String,
}

/// One connected client.
#[derive(Debug)]
pub struct ClientInfo {
    /// Unique in the process (the console's `id`/`ptr`).
    pub id: u64,
    pub peer: Peer,
    pub local_addr: Option<SocketAddr>,
    pub connect_time: SystemTime,
    view: Mutex<ClientView>,
    /// `KILL` wakes the session's task, which then drops the session. (One waker,
    /// checked on every poll of the session's task without a lock.)
    kill_waker: AtomicWaker,
    /// `KILL` was asked (also seen by a session about to park).
    killed: AtomicBool,
}

impl ClientInfo {
    /// A client just accepted, not logged in yet.
    pub fn new(id: u64, peer: Peer, local_addr: Option<SocketAddr>) -> ClientInfo {
        ClientInfo {
            id,
            peer,
            local_addr,
            connect_time: SystemTime::now(),
            view: Mutex::new(ClientView {
                state: ClientState::Login,
                user: None,
                database: None,
                application_name: None,
                link: None,
                request_time: SystemTime::now(),
                waiting_since: None,
                cancel_key: None,
                tls: String::new(),
            }),
            kill_waker: AtomicWaker::new(),
            killed: AtomicBool::new(false),
        }
    }

    pub fn view(&self) -> ClientView {
        lock(&self.view).clone()
    }

    /// Waiting for a server since `since` (read by the caller, which needs it too).
    pub fn set_waiting(&self, since: Instant) {
        let mut v = lock(&self.view);
        v.state = ClientState::Waiting;
        v.waiting_since = Some(since);
        v.request_time = SystemTime::now();
    }

    pub fn set_state(&self, state: ClientState) {
        let mut v = lock(&self.view);
        v.state = state;
        match state {
            ClientState::Waiting => {
                v.waiting_since = Some(Instant::now());
                v.request_time = SystemTime::now();
            }
            _ => v.waiting_since = None,
        }
    }

    /// The pool it uses (its database, and user unless the console set one already).
    pub fn set_pool(&self, database: &str, user: &str) {
        let mut v = lock(&self.view);
        // Every transaction comes here: copy the names only when they change.
        if v.database.as_deref() != Some(database) {
            v.database = Some(database.to_string());
        }
        if v.user.is_none() {
            v.user = Some(user.to_string());
        }
    }

    pub fn set_login(&self, user: &str, database: &str, application_name: Option<&str>) {
        let mut v = lock(&self.view);
        v.user = Some(user.to_string());
        v.database = Some(database.to_string());
        v.application_name = application_name.map(str::to_string);
        v.state = ClientState::Active;
    }

    pub fn set_tls(&self, description: String) {
        lock(&self.view).tls = description;
    }

    pub fn set_link(&self, server: Option<u64>) {
        lock(&self.view).link = server;
    }

    /// Its BackendKeyData, once sent (CancelRequests carrying it find its server).
    pub fn set_cancel_key(&self, pid: i32, key: u32) {
        lock(&self.view).cancel_key = Some((pid, key));
    }

    /// Whether `KILL` was asked for this client.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// Resolves when `KILL` is asked (or was, before this was first polled). For the
    /// client's own task: it keeps one waker.
    pub fn killed_notified(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.is_killed() {
                return Poll::Ready(());
            }
            self.kill_waker.register(cx.waker());
            // A KILL between the look and the registration has woken nobody.
            if self.is_killed() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Drop the waker of a task that is ending (the session parks): a registered waker
    /// keeps the whole finished task allocated for as long as the client stays parked.
    /// A `KILL` after this is still seen by the parker, through [`Self::is_killed`].
    pub fn forget_kill_waker(&self) {
        drop(self.kill_waker.take());
    }

    /// End this client's session (`KILL`): its connection and any server it holds
    /// are closed.
    pub fn kill(&self) {
        // Seen at the session's next poll if it is not waiting yet.
        self.killed.store(true, Ordering::Release);
        self.kill_waker.wake();
    }
}

/// The connected clients, in connection order: what `SHOW CLIENTS` lists and `KILL`
/// finds.
pub struct ClientRegistry {
    clients: Mutex<BTreeMap<u64, Arc<ClientInfo>>>,
    next_id: AtomicU64,
}

impl Default for ClientRegistry {
    fn default() -> Self {
        ClientRegistry {
            clients: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
        }
    }
}

impl ClientRegistry {
    /// A newly accepted client, listed until [`ClientRegistry::remove`].
    pub fn add(&self, peer: Peer, local_addr: Option<SocketAddr>) -> Arc<ClientInfo> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ClientInfo::new(id, peer, local_addr));
        lock(&self.clients).insert(id, info.clone());
        info
    }

    /// Forget a client that left; returns its record, if it was listed.
    pub fn remove(&self, id: u64) -> Option<Arc<ClientInfo>> {
        lock(&self.clients).remove(&id)
    }

    /// Every connected client, in connection order.
    pub fn list(&self) -> Vec<Arc<ClientInfo>> {
        lock(&self.clients).values().cloned().collect()
    }
}

/// What went wrong for a client or a pool (the `kind` label of
/// `pgherd_pooler_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A client failed authentication (wrong password, unknown user, hba reject).
    LoginFailed,
    /// A client waited `query_wait_timeout` without getting a server.
    QueryWaitTimeout,
    /// The pooler could not connect or log in to the server (or did not try again
    /// yet, within `server_login_retry` of a failure).
    ServerLoginFailed,
    /// A server connection broke while a client was using it.
    ServerLost,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 4] = [
        ErrorKind::LoginFailed,
        ErrorKind::QueryWaitTimeout,
        ErrorKind::ServerLoginFailed,
        ErrorKind::ServerLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::LoginFailed => "login_failed",
            ErrorKind::QueryWaitTimeout => "query_wait_timeout",
            ErrorKind::ServerLoginFailed => "server_login_failed",
            ErrorKind::ServerLost => "server_lost",
        }
    }
}

/// Errors of clients (failed logins, servers lost under them) in the process (every
/// runtime in it), by (database, user, kind). The pools count their own
/// (`query_wait_timeout`, failed server logins) in their `PoolStats`.
static ERRORS: LazyLock<Mutex<HashMap<ErrorKey, u64>>> = LazyLock::new(Default::default);

/// (database, user, kind) of a client error.
pub type ErrorKey = (String, String, ErrorKind);

/// Count an error of a client of `database` as `user`. The caller decides which names
/// may become labels (only configured ones: no one can create series at will).
pub fn count_error(database: &str, user: &str, kind: ErrorKind) {
    *lock(&ERRORS)
        .entry((database.to_string(), user.to_string(), kind))
        .or_default() += 1;
}

/// Count an error of `client` (labelled with the pool it uses; nothing when it has none
/// yet).
pub fn count_client_error(client: &ClientInfo, kind: ErrorKind) {
    let view = client.view();
    if let (Some(database), Some(user)) = (view.database, view.user) {
        count_error(&database, &user, kind);
    }
}

/// The client errors counted so far, by (database, user, kind).
pub fn client_errors() -> Vec<(ErrorKey, u64)> {
    lock(&ERRORS).iter().map(|(k, n)| (k.clone(), *n)).collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A plain record, consistent between statements: a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Wake, Waker};

    struct CountingWaker;
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {}
    }

    #[test]
    fn a_parking_client_lets_go_of_its_tasks_waker_and_a_later_kill_is_still_seen() {
        let client = ClientInfo::new(1, Peer::Unix { port: 6432 }, None);
        let task = Arc::new(CountingWaker);
        let waker = Waker::from(task.clone());
        let mut wait = Box::pin(client.killed_notified());
        assert!(wait
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        drop(wait);
        drop(waker);
        assert_eq!(
            Arc::strong_count(&task),
            2,
            "the registered waker holds the task"
        );
        client.forget_kill_waker();
        assert_eq!(
            Arc::strong_count(&task),
            1,
            "nothing holds the task any more"
        );
        client.kill();
        assert!(client.is_killed());
    }
}
