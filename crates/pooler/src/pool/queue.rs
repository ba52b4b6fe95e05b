//! The hand-off: the one place where a free server meets a waiting client.
//!
//! A [`Queue`] holds a pool's idle servers, its waiting clients (first come, first
//! served) and how many servers are lent or logging in. Every change that can free a
//! server or room for one — a server given back, a login finished or failed, a server
//! closed, a larger pool, `RESUME` — ends in [`Queue::hand_off`], which gives idle
//! servers, then room for new logins, to the waiting clients in order. So the pool's
//! invariant holds by construction, and [`Queue::check`] states it: never an idle
//! server while a client waits (unless the pool is paused).
//!
//! No I/O and no clock here: the server type is a parameter, and whether an idle
//! server is still usable, whether a login may start and what time it is are passed
//! in; unit and property tests drive it with plain numbers.

use std::collections::VecDeque;
use std::task::Waker;
use std::time::Instant;

/// What a waiting client is given.
#[derive(Debug)]
pub enum Grant<S, P> {
    /// An idle server, with the time it went idle; it counts as lent from now on.
    Server(S, Instant),
    /// Room to log in a new server (counted as a login from now on), with the shared
    /// limits' permits for it.
    Login(P),
    /// Logins are failing (`server_login_retry`) and the pool has no server that could
    /// come back: the client gets the failure now (PgBouncer does the same).
    LoginFailing,
}

/// Whether a new server login may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logins {
    Allowed,
    /// The last login failed less than `server_login_retry` ago.
    Retrying,
}

/// The pool's size and state, as the hand-off needs them.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub pool_size: usize,
    pub reserve_pool_size: usize,
    pub paused: bool,
    pub logins: Logins,
}

struct IdleServer<S> {
    server: S,
    since: Instant,
}

struct Waiter {
    id: u64,
    /// From then on it may use the reserve pool (`reserve_pool_timeout`).
    reserve_at: Option<Instant>,
    waker: Option<Waker>,
}

/// A pool's servers and waiting clients; see the module documentation.
pub struct Queue<S, P> {
    idle: VecDeque<IdleServer<S>>,
    /// Clients without a grant yet, oldest first.
    waiters: VecDeque<Waiter>,
    /// Grants not picked up yet by their waiter (a few at most).
    granted: Vec<(u64, Grant<S, P>)>,
    /// Servers lent to clients (grants of a server included).
    lent: usize,
    /// Logins granted and not finished (grants of a login included).
    logins: usize,
    next_id: u64,
}

impl<S, P> Default for Queue<S, P> {
    fn default() -> Self {
        Queue {
            idle: VecDeque::new(),
            waiters: VecDeque::new(),
            granted: Vec::new(),
            lent: 0,
            logins: 0,
            next_id: 0,
        }
    }
}

/// What the hand-off needs from the pool around it.
pub struct Env<'a, S, P> {
    pub capacity: Capacity,
    pub now: Instant,
    /// Whether an idle server (idle since the given time) may still be used; one that
    /// may not is closed by the caller.
    pub usable: &'a mut dyn FnMut(&mut S, Instant) -> bool,
    /// The shared limits' permits for one more server, if they have room.
    pub permits: &'a mut dyn FnMut() -> Option<P>,
}

/// What a hand-off did: servers to close, and clients to wake once the lock is let go.
pub struct Outcome<S> {
    pub doomed: Vec<S>,
    pub wake: Vec<Waker>,
    /// A client waits, the pool has room, but a shared limit
    /// (`max_db_connections`/`max_user_connections`) is full.
    pub limit_full: bool,
}

impl<S> Default for Outcome<S> {
    fn default() -> Self {
        Outcome {
            doomed: Vec::new(),
            wake: Vec::new(),
            limit_full: false,
        }
    }
}

impl<S> Outcome<S> {
    /// Wake the clients that got something (call after unlocking).
    pub fn wake_all(&mut self) {
        for w in self.wake.drain(..) {
            w.wake();
        }
    }
}

impl<S, P> Queue<S, P> {
    /// Servers that exist or are being logged in: they count against the pool's size.
    pub fn open(&self) -> usize {
        self.idle.len() + self.lent + self.logins
    }

    pub fn idle_len(&self) -> usize {
        self.idle.len()
    }

    /// Clients waiting for a server, granted ones not picked up yet included.
    pub fn waiting(&self) -> usize {
        self.waiters.len() + self.granted.len()
    }

    /// When the longest-waiting idle server went idle.
    pub fn oldest_idle_since(&self) -> Option<Instant> {
        self.idle.front().map(|i| i.since)
    }

    /// The invariant: no idle server while a client waits without a grant, unless the
    /// pool is paused (then clients wait by design).
    pub fn check(&self, paused: bool) -> Result<(), String> {
        if !paused && !self.idle.is_empty() && !self.waiters.is_empty() {
            return Err(format!(
                "{} idle server(s) while {} client(s) wait",
                self.idle.len(),
                self.waiters.len()
            ));
        }
        Ok(())
    }

    /// A client that asks for a server: served at once when nobody waits before it
    /// and a server or room for a login is there; else queued (`Err(id)`), to be
    /// served by a later hand-off.
    pub fn ask(
        &mut self,
        reserve_at: Option<Instant>,
        env: &mut Env<'_, S, P>,
        out: &mut Outcome<S>,
    ) -> Result<Grant<S, P>, u64> {
        if self.waiters.is_empty() && !env.capacity.paused {
            let reserve_ok = reserve_at.is_some_and(|r| env.now >= r);
            if let Some(grant) = self.next_grant(reserve_ok, env, out) {
                return Ok(grant);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.waiters.push_back(Waiter {
            id,
            reserve_at,
            waker: None,
        });
        Err(id)
    }

    /// The grant of waiter `id`, if it has one; else its waker is kept for the
    /// hand-off that serves it.
    pub fn poll_grant(&mut self, id: u64, waker: &Waker) -> Option<Grant<S, P>> {
        if let Some(i) = self.granted.iter().position(|(g, _)| *g == id) {
            return Some(self.granted.swap_remove(i).1);
        }
        if let Some(w) = self.waiters.iter_mut().find(|w| w.id == id) {
            match &w.waker {
                Some(old) if old.will_wake(waker) => {}
                _ => w.waker = Some(waker.clone()),
            }
        }
        None
    }

    /// Waiter `id` leaves (timed out, or its client left): its grant, if it had one,
    /// goes back and on to the next client.
    pub fn leave(&mut self, id: u64, env: &mut Env<'_, S, P>, out: &mut Outcome<S>) {
        if let Some(i) = self.waiters.iter().position(|w| w.id == id) {
            self.waiters.remove(i);
            return;
        }
        if let Some(i) = self.granted.iter().position(|(g, _)| *g == id) {
            match self.granted.swap_remove(i).1 {
                Grant::Server(server, since) => {
                    self.lent -= 1;
                    self.idle.push_back(IdleServer { server, since });
                }
                // The permits go back as they drop.
                Grant::Login(_) => self.logins -= 1,
                Grant::LoginFailing => {}
            }
            self.hand_off(env, out);
        }
    }

    /// A lent server comes back, reusable.
    pub fn give_back(&mut self, server: S, env: &mut Env<'_, S, P>, out: &mut Outcome<S>) {
        self.lent -= 1;
        self.add_idle(server, env, out);
    }

    /// A lent server is gone (closed, broken): room for a login.
    pub fn lent_gone(&mut self, env: &mut Env<'_, S, P>, out: &mut Outcome<S>) {
        self.lent -= 1;
        self.hand_off(env, out);
    }

    /// A login of a client finished: the server is lent to it (`true`), or the login
    /// failed and its room is free again.
    pub fn login_done(&mut self, lent: bool, env: &mut Env<'_, S, P>, out: &mut Outcome<S>) {
        self.logins -= 1;
        if lent {
            self.lent += 1;
        } else {
            self.hand_off(env, out);
        }
    }

    /// Room for one login that no client asked for (`min_pool_size`): only while
    /// nobody waits and below `below` open servers.
    pub fn start_fill(&mut self, below: usize, env: &mut Env<'_, S, P>) -> Option<P> {
        if !self.waiters.is_empty() || env.capacity.paused || env.capacity.logins != Logins::Allowed
        {
            return None;
        }
        if self.open() >= below.min(env.capacity.pool_size) {
            return None;
        }
        let permits = (env.permits)()?;
        self.logins += 1;
        Some(permits)
    }

    /// A fill login finished: its server joins the idle ones (or a waiting client).
    pub fn fill_done(&mut self, server: Option<S>, env: &mut Env<'_, S, P>, out: &mut Outcome<S>) {
        self.logins -= 1;
        match server {
            Some(s) => self.add_idle(s, env, out),
            None => self.hand_off(env, out),
        }
    }

    /// A server joins the idle ones, unless a client waits for it, or the pool is over
    /// its size (a smaller pool after RELOAD, a reserve server nobody waits for) or
    /// paused (`PAUSE`, `KILL`: its servers are closed as they come back): then it is
    /// closed.
    fn add_idle(&mut self, server: S, env: &mut Env<'_, S, P>, out: &mut Outcome<S>) {
        if env.capacity.paused {
            out.doomed.push(server);
            return;
        }
        let reserve_wanted = self
            .waiters
            .front()
            .is_some_and(|w| w.reserve_at.is_some_and(|r| env.now >= r));
        let size = env.capacity.pool_size
            + if reserve_wanted {
                env.capacity.reserve_pool_size
            } else {
                0
            };
        if self.open() >= size {
            out.doomed.push(server);
            self.hand_off(env, out);
            return;
        }
        self.idle.push_back(IdleServer {
            server,
            since: env.now,
        });
        self.hand_off(env, out);
    }

    /// Give idle servers, then room for new logins, to the waiting clients in order,
    /// as far as they go. Bounded: each pass serves a client or closes an idle server.
    pub fn hand_off(&mut self, env: &mut Env<'_, S, P>, out: &mut Outcome<S>) {
        if env.capacity.paused {
            return;
        }
        while let Some(front) = self.waiters.front() {
            let reserve_ok = front.reserve_at.is_some_and(|r| env.now >= r);
            let Some(grant) = self.next_grant(reserve_ok, env, out) else {
                break;
            };
            let Some(waiter) = self.waiters.pop_front() else {
                break;
            };
            if let Some(w) = waiter.waker {
                out.wake.push(w);
            }
            let failing = matches!(grant, Grant::LoginFailing);
            self.granted.push((waiter.id, grant));
            if failing {
                // Every waiter gets the failure: nothing can come back for them.
                for w in self.waiters.drain(..) {
                    if let Some(k) = w.waker {
                        out.wake.push(k);
                    }
                    self.granted.push((w.id, Grant::LoginFailing));
                }
            }
        }
        debug_assert!(self.check(env.capacity.paused).is_ok());
    }

    /// For the client at the front: the newest usable idle server (closing unusable
    /// ones on the way), else room for a login if the pool (with the reserve, when the
    /// client waited long enough) and the shared limits have it.
    fn next_grant(
        &mut self,
        reserve_ok: bool,
        env: &mut Env<'_, S, P>,
        out: &mut Outcome<S>,
    ) -> Option<Grant<S, P>> {
        while let Some(IdleServer { mut server, since }) = self.idle.pop_back() {
            if (env.usable)(&mut server, since) {
                self.lent += 1;
                return Some(Grant::Server(server, since));
            }
            out.doomed.push(server);
        }
        let size = env.capacity.pool_size
            + if reserve_ok {
                env.capacity.reserve_pool_size
            } else {
                0
            };
        if self.open() >= size {
            return None;
        }
        if env.capacity.logins == Logins::Retrying {
            // Servers lent to others may come back; with none, fail now.
            return (self.open() == 0).then_some(Grant::LoginFailing);
        }
        match (env.permits)() {
            Some(p) => {
                self.logins += 1;
                Some(Grant::Login(p))
            }
            None => {
                out.limit_full = true;
                None
            }
        }
    }

    /// Remove the idle servers `doomed` says must go (the janitor's pass), oldest first.
    pub fn remove_idle(&mut self, mut doomed: impl FnMut(&mut S, Instant) -> bool) -> Vec<S> {
        let mut gone = Vec::new();
        let mut kept = VecDeque::with_capacity(self.idle.len());
        for mut i in self.idle.drain(..) {
            if doomed(&mut i.server, i.since) {
                gone.push(i.server);
            } else {
                kept.push_back(i);
            }
        }
        self.idle = kept;
        gone
    }

    /// The idle server that waited longest (a shared limit evicts it).
    pub fn take_oldest_idle(&mut self) -> Option<S> {
        self.idle.pop_front().map(|i| i.server)
    }

    /// Every idle server (RECONNECT, shutdown).
    pub fn drain_idle(&mut self) -> Vec<S> {
        self.idle.drain(..).map(|i| i.server).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::task::Waker;
    use std::time::Duration;

    type Q = Queue<u32, ()>;

    fn capacity(pool_size: usize) -> Capacity {
        Capacity {
            pool_size,
            reserve_pool_size: 0,
            paused: false,
            logins: Logins::Allowed,
        }
    }

    /// Run `f` with an environment where every idle server is usable and the shared
    /// limits have room unless `limit_full`.
    fn with_env<R>(
        cap: Capacity,
        now: Instant,
        limit_full: bool,
        f: impl FnOnce(&mut Env<'_, u32, ()>, &mut Outcome<u32>) -> R,
    ) -> (R, Outcome<u32>) {
        let mut usable = |_: &mut u32, _: Instant| true;
        let mut permits = || (!limit_full).then_some(());
        let mut env = Env {
            capacity: cap,
            now,
            usable: &mut usable,
            permits: &mut permits,
        };
        let mut out = Outcome::default();
        let r = f(&mut env, &mut out);
        (r, out)
    }

    #[test]
    fn a_returned_server_goes_to_the_waiting_client_not_to_the_idle_list() {
        let now = Instant::now();
        let mut q = Q::default();
        let cap = capacity(1);
        let (first, _) = with_env(cap, now, false, |e, o| q.ask(None, e, o));
        assert!(matches!(first, Ok(Grant::Login(()))));
        q.logins -= 1;
        q.lent += 1; // the login succeeded
        let (second, _) = with_env(cap, now, false, |e, o| q.ask(None, e, o));
        let id = second.expect_err("the pool is full: the client waits");
        assert_eq!(q.waiting(), 1);
        with_env(cap, now, false, |e, o| q.give_back(7, e, o));
        assert_eq!(q.idle_len(), 0, "no idle server while a client waits");
        match q.poll_grant(id, Waker::noop()) {
            Some(Grant::Server(7, _)) => {}
            other => panic!("expected server 7, got {other:?}"),
        }
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn paused_pools_queue_clients_and_serve_them_on_resume() {
        let now = Instant::now();
        let mut q = Q::default();
        q.idle.push_back(IdleServer {
            server: 1,
            since: now,
        });
        let paused = Capacity {
            paused: true,
            ..capacity(2)
        };
        let (asked, _) = with_env(paused, now, false, |e, o| q.ask(None, e, o));
        let id = asked.expect_err("paused: the client waits");
        assert!(q.check(true).is_ok());
        assert!(
            q.check(false).is_err(),
            "unpaused, this would break the invariant"
        );
        with_env(capacity(2), now, false, |e, o| q.hand_off(e, o));
        assert!(matches!(
            q.poll_grant(id, Waker::noop()),
            Some(Grant::Server(1, _))
        ));
    }

    #[test]
    fn a_waiter_that_leaves_passes_its_grant_on() {
        let now = Instant::now();
        let mut q = Q::default();
        let cap = capacity(1);
        q.lent = 1;
        let (a, _) = with_env(cap, now, false, |e, o| q.ask(None, e, o));
        let (b, _) = with_env(cap, now, false, |e, o| q.ask(None, e, o));
        let (a, b) = (a.unwrap_err(), b.unwrap_err());
        with_env(cap, now, false, |e, o| q.give_back(3, e, o));
        // `a` was granted the server but leaves before picking it up.
        with_env(cap, now, false, |e, o| q.leave(a, e, o));
        assert!(matches!(
            q.poll_grant(b, Waker::noop()),
            Some(Grant::Server(3, _))
        ));
        assert_eq!((q.waiting(), q.idle_len(), q.open()), (0, 0, 1));
    }

    #[test]
    fn failing_logins_fail_every_waiter_only_when_no_server_can_come_back() {
        let now = Instant::now();
        let mut q = Q::default();
        let retrying = Capacity {
            logins: Logins::Retrying,
            ..capacity(2)
        };
        let (asked, _) = with_env(retrying, now, false, |e, o| q.ask(None, e, o));
        assert!(matches!(asked, Ok(Grant::LoginFailing)));
        q.lent = 1; // one server lent to someone: it may come back
        let (asked, _) = with_env(retrying, now, false, |e, o| q.ask(None, e, o));
        let id = asked.expect_err("waits for the lent server");
        with_env(retrying, now, false, |e, o| q.give_back(5, e, o));
        assert!(matches!(
            q.poll_grant(id, Waker::noop()),
            Some(Grant::Server(5, _))
        ));
    }

    #[test]
    fn the_reserve_opens_after_the_reserve_timeout() {
        let now = Instant::now();
        let mut q = Q::default();
        let cap = Capacity {
            reserve_pool_size: 1,
            ..capacity(1)
        };
        q.lent = 1;
        let later = now + Duration::from_secs(1);
        let (asked, _) = with_env(cap, now, false, |e, o| q.ask(Some(later), e, o));
        let id = asked.expect_err("the main pool is full");
        with_env(cap, later, false, |e, o| q.hand_off(e, o));
        assert!(matches!(
            q.poll_grant(id, Waker::noop()),
            Some(Grant::Login(()))
        ));
        assert_eq!(q.open(), 2);
    }

    /// Random sequences of everything that happens to a pool; after each step the
    /// invariant holds, the counts add up, and the pool never exceeds its size.
    #[test]
    fn random_operations_keep_the_invariant_and_the_counts() {
        for seed in 0..300u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut q = Q::default();
            let start = Instant::now();
            let mut now = start;
            let mut size = rng.random_range(1..5usize);
            let mut paused = false;
            let mut limit_full = false;
            let mut waiting: Vec<u64> = Vec::new();
            // What clients hold: servers (by number) and logins in progress.
            let mut holding: Vec<u32> = Vec::new();
            let mut logging_in = 0usize;
            let mut next_server = 0u32;
            for step in 0..400 {
                now += Duration::from_millis(rng.random_range(0..50));
                let cap = Capacity {
                    pool_size: size,
                    reserve_pool_size: 1,
                    paused,
                    logins: Logins::Allowed,
                };
                let reserve_at = Some(now + Duration::from_millis(100));
                let take =
                    |g: Grant<u32, ()>, holding: &mut Vec<u32>, logging_in: &mut usize| match g {
                        Grant::Server(s, _) => holding.push(s),
                        Grant::Login(()) => *logging_in += 1,
                        Grant::LoginFailing => unreachable!("logins are allowed"),
                    };
                match rng.random_range(0..10) {
                    0 | 1 => {
                        let (r, _) = with_env(cap, now, limit_full, |e, o| q.ask(reserve_at, e, o));
                        match r {
                            Ok(g) => take(g, &mut holding, &mut logging_in),
                            Err(id) => waiting.push(id),
                        }
                    }
                    2 if !holding.is_empty() => {
                        let s = holding.swap_remove(rng.random_range(0..holding.len()));
                        with_env(cap, now, limit_full, |e, o| q.give_back(s, e, o));
                    }
                    3 if !holding.is_empty() => {
                        holding.swap_remove(rng.random_range(0..holding.len()));
                        with_env(cap, now, limit_full, |e, o| q.lent_gone(e, o));
                    }
                    4 if logging_in > 0 => {
                        logging_in -= 1;
                        let ok = rng.random_bool(0.8);
                        with_env(cap, now, limit_full, |e, o| q.login_done(ok, e, o));
                        if ok {
                            next_server += 1;
                            holding.push(next_server);
                        }
                    }
                    5 if !waiting.is_empty() => {
                        let id = waiting.swap_remove(rng.random_range(0..waiting.len()));
                        with_env(cap, now, limit_full, |e, o| q.leave(id, e, o));
                    }
                    6 => paused = rng.random_bool(0.3),
                    7 => size = rng.random_range(1..5),
                    8 => limit_full = rng.random_bool(0.2),
                    _ => {}
                }
                let cap = Capacity {
                    pool_size: size,
                    paused,
                    ..cap
                };
                // Changes the queue does not see (pause, size, limit) end in a hand-off.
                with_env(cap, now, limit_full, |e, o| q.hand_off(e, o));
                waiting.retain(|&id| match q.poll_grant(id, Waker::noop()) {
                    Some(g) => {
                        take(g, &mut holding, &mut logging_in);
                        false
                    }
                    None => true,
                });
                let ctx = format!("seed {seed} step {step}");
                assert!(q.check(paused).is_ok(), "{ctx}: {:?}", q.check(paused));
                assert_eq!(q.lent, holding.len(), "{ctx}: lent");
                assert_eq!(q.logins, logging_in, "{ctx}: logins");
                assert_eq!(q.waiting(), waiting.len(), "{ctx}: waiting");
            }
        }
    }
}
