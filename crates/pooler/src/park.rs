//! Parking idle clients.
//!
//! A logged-in client between transactions needs no task: nothing happens until it
//! sends something. A task and its socket's registration with Tokio's reactor cost
//! about 2.5 KB per client, most of an idle client's memory (PgBouncer keeps under
//! 1 KB in all). So a plain (non-TLS) client that has been idle through two ticks of
//! [`PARK_TICK`] hands its session state to the [`Parker`]: its socket moves into one
//! epoll set that a single task watches, and its session waits in a table. When the
//! socket turns readable (a message, or the client leaving) the session resumes in a
//! new task; busy clients never park, so the hot path pays nothing but one wait-list
//! entry while idle.
//!
//! The parker knows neither sessions nor the runtime: it holds any [`Parkable`] item
//! and hands it back to its [`ParkOwner`] (the runtime) to resume or end. Sessions see
//! only its clock ([`Ticks`]).

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;
use tracing::warn;

/// How often idle sessions are asked to park, and parked ones checked for
/// `client_idle_timeout`. A client parks after one to two ticks of idleness: soon
/// enough that a burst of new, idle clients never holds many tasks at once (their
/// memory would stay with the process), late enough that busy clients do not park.
pub const PARK_TICK: Duration = Duration::from_millis(250);

/// Clients that, once parked in a burst, make it worth calling the memory release hook.
const RELEASE_AFTER_PARKING: usize = 64;

/// What the binary's allocator does to give back memory that parked clients' tasks
/// left in its caches (set once, by the binary that chose the allocator).
static RELEASE_MEMORY: OnceLock<fn()> = OnceLock::new();

/// Set the hook called after a burst of clients has parked.
pub fn set_memory_release(release: fn()) {
    let _ = RELEASE_MEMORY.set(release);
}

/// Ready sockets taken from the epoll set per wake-up.
const EVENTS_PER_WAKE: usize = 64;

/// What can be parked: an idle client's state, with the socket to watch.
pub trait Parkable: Send + 'static {
    /// The client's id (unique among those parked).
    fn id(&self) -> u64;
    /// The socket whose readability ends the parking.
    fn socket(&self) -> BorrowedFd<'_>;
    /// The [`Ticks::epoch`] since which the client has sent nothing (for
    /// `client_idle_timeout`).
    fn idle_tick(&self) -> u64;
}

/// Who parks items and takes them back: resumes those whose socket turned readable,
/// ends those idle too long.
pub trait ParkOwner<T>: Send + Sync + 'static {
    /// `item`'s socket turned readable (a message, or the client leaving).
    fn resume(self: &Arc<Self>, item: T);
    /// `item` was idle longer than [`ParkOwner::idle_timeout`].
    fn expire(&self, item: T);
    /// `client_idle_timeout` as now configured.
    fn idle_timeout(&self) -> Option<Duration>;
}

/// The parker's clock: idle sessions wait on it and park once it has ticked twice.
#[derive(Default)]
pub struct Ticks {
    /// Advanced at every tick; a session parks once it has waited through two.
    epoch: AtomicU64,
    /// Wakes every idle session at each tick.
    tick: Notify,
}

impl Ticks {
    /// The current tick.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Resolves at the next tick (register before checking [`Ticks::epoch`]).
    pub fn next_tick(&self) -> tokio::sync::futures::Notified<'_> {
        self.tick.notified()
    }

    fn advance(&self) -> u64 {
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        self.tick.notify_waiters();
        epoch
    }
}

/// The epoll set, readable (for Tokio) when a parked socket is.
struct EpollSet(Epoll);

impl AsRawFd for EpollSet {
    fn as_raw_fd(&self) -> RawFd {
        self.0 .0.as_raw_fd()
    }
}

/// The parked clients of one runtime.
pub struct Parker<T> {
    epoll: AsyncFd<EpollSet>,
    /// Boxed: the table's empty slots then cost a pointer, not a whole client.
    parked: Mutex<HashMap<u64, Box<T>>>,
    ticks: Arc<Ticks>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: Parkable> Parker<T> {
    /// A parker with an empty epoll set (inside a Tokio runtime).
    pub fn new() -> io::Result<Parker<T>> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
        // SAFETY: `EpollSet` owns its descriptor, which stays open and the same until
        // the AsyncFd (and with it the EpollSet) is dropped.
        let epoll = unsafe { AsyncFd::register_with_interest(EpollSet(epoll), Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Parker {
            epoll,
            parked: Mutex::new(HashMap::new()),
            ticks: Arc::new(Ticks::default()),
        })
    }

    /// The clock idle sessions wait on.
    pub fn ticks(&self) -> &Arc<Ticks> {
        &self.ticks
    }

    /// How many clients are parked.
    pub fn len(&self) -> usize {
        lock(&self.parked).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Park `c` until its socket turns readable; `Err` gives it back (the epoll set
    /// refused the socket).
    #[allow(clippy::result_large_err)]
    pub fn park(&self, c: T) -> Result<(), T> {
        let id = c.id();
        // Level-triggered, once: bytes that came in before this call wake it at once.
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT;
        let mut parked = lock(&self.parked);
        if let Err(e) = self
            .epoll
            .get_ref()
            .0
            .add(c.socket(), EpollEvent::new(flags, id))
        {
            warn!(error = %e, "cannot park an idle client: its session keeps its task");
            return Err(c);
        }
        parked.insert(id, Box::new(c));
        Ok(())
    }

    /// Take client `id` out (its socket leaves the epoll set), if it is parked.
    pub fn unpark(&self, id: u64) -> Option<T> {
        let c = lock(&self.parked).remove(&id)?;
        let _ = self.epoll.get_ref().0.delete(c.socket());
        Some(*c)
    }

    /// Take client `id` out if it is parked and `pred` holds for it.
    pub fn unpark_if(&self, id: u64, pred: impl FnOnce(&T) -> bool) -> Option<T> {
        let c = {
            let mut parked = lock(&self.parked);
            if !parked.get(&id).is_some_and(|c| pred(c)) {
                return None;
            }
            parked.remove(&id)?
        };
        let _ = self.epoll.get_ref().0.delete(c.socket());
        Some(*c)
    }

    /// Wait until some parked sockets are readable and take their clients out.
    async fn ready(&self) -> io::Result<Vec<T>> {
        loop {
            let mut guard = self.epoll.readable().await?;
            let mut events = [EpollEvent::empty(); EVENTS_PER_WAKE];
            let n = match guard.get_inner().0.wait(&mut events, EpollTimeout::ZERO) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if n < events.len() {
                guard.clear_ready();
            }
            let ready: Vec<T> = events[..n]
                .iter()
                .filter_map(|e| self.unpark(e.data()))
                .collect();
            if !ready.is_empty() {
                return Ok(ready);
            }
        }
    }

    /// One tick: advance the epoch, wake the idle sessions (those idle for two ticks
    /// park), and take out the parked clients idle longer than `idle_timeout`.
    fn tick(&self, idle_timeout: Option<Duration>) -> Vec<T> {
        let epoch = self.ticks.advance();
        let Some(timeout) = idle_timeout else {
            return Vec::new();
        };
        // Counted from the tick before the one it went idle in: never early.
        let expired: Vec<u64> = lock(&self.parked)
            .iter()
            .filter(|(_, c)| {
                let ticks = epoch.saturating_sub(c.idle_tick() + 1);
                PARK_TICK.saturating_mul(u32::try_from(ticks).unwrap_or(u32::MAX)) >= timeout
            })
            .map(|(id, _)| *id)
            .collect();
        expired
            .into_iter()
            .filter_map(|id| self.unpark(id))
            .collect()
    }
}

/// Drive `parker` for `owner`: resume clients whose sockets turn readable, tick every
/// [`PARK_TICK`]. Ends when the owner is gone.
pub async fn run<T: Parkable, O: ParkOwner<T>>(parker: Arc<Parker<T>>, owner: Weak<O>) {
    // Clients parked since the last release, and how many were parked at the last tick.
    let (mut parked_since_release, mut parked_before) = (0, 0);
    let mut ticks = tokio::time::interval(PARK_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ready = parker.ready() => {
                let Some(owner) = owner.upgrade() else { return };
                match ready {
                    Ok(clients) => {
                        for c in clients {
                            owner.resume(c);
                        }
                    }
                    Err(e) => {
                        // Cannot happen with a valid epoll descriptor; do not spin.
                        warn!(error = %e, "waiting on parked clients failed");
                        tokio::time::sleep(PARK_TICK).await;
                    }
                }
            }
            _ = ticks.tick() => {
                let Some(owner) = owner.upgrade() else { return };
                for c in parker.tick(owner.idle_timeout()) {
                    owner.expire(c);
                }
                // Once a burst has parked (the count stopped rising), release its memory.
                let parked = parker.len();
                if parked > parked_before {
                    parked_since_release += parked - parked_before;
                } else if parked_since_release >= RELEASE_AFTER_PARKING {
                    parked_since_release = 0;
                    if let Some(release) = RELEASE_MEMORY.get() {
                        release();
                    }
                }
                parked_before = parked;
            }
        }
    }
}
