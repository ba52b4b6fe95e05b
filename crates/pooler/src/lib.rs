//! pgherd's connection pooler: PgBouncer-compatible configuration ([`config`]), server
//! connections ([`server`]), pools per (database, user) ([`pool`]), client sessions in
//! session or transaction mode ([`session`]), the listener ([`runtime`]) and the admin
//! console on the virtual database `pgbouncer` ([`admin`]).
//!
//! How the parts depend on each other, top to bottom (each imports only parts below it):
//!
//! - [`service`] (files, listeners, reload) and [`runtime`] compose everything: the
//!   listener loop, the client registry, the parker, shutdown, and the
//!   [`session::SessionContext`] handed to sessions. A login for the virtual database
//!   `pgbouncer` comes back from [`session::run`] as [`session::Ended::Console`] and
//!   the runtime hands it to [`admin`]. [`admin`] and [`metrics`] only read what the
//!   layers below count (through [`runtime`]).
//! - [`session`] serves one client with its context: [`live`] (the configuration in
//!   force), [`pools`] (the pool map, shared connection limits, `PAUSE`, the janitor),
//!   [`cancel`] (cancel keys) and the parker's clock ([`park::Ticks`]). [`park`] parks
//!   any [`park::Parkable`] for its [`park::ParkOwner`]; it knows no session.
//! - [`pool`] owns its server connections and its queue of waiting clients; its
//!   `queue` is the one place where a free server meets a waiting client. It imports
//!   only [`server`], [`client`] (the record a client's state is shown by; also the
//!   client registry and the client error counters) and [`net`].
//! - [`server`] talks to PostgreSQL over [`net`]; [`protocol`](pgherd_protocol) frames
//!   the bytes. [`config`] and [`tls`] are plain data, read at any level.
//!
//! Left as it is: [`runtime`] and [`admin`] refer to each other (the console reads the
//! runtime, the runtime hands it its clients), and the console's `RELOAD` goes through
//! [`service`]; all three are the top layer.

pub mod admin;
pub mod cancel;
pub mod client;
pub mod config;
pub mod lean_writer;
pub mod live;
pub mod metrics;
pub mod net;
pub mod park;
pub mod pool;
pub mod pools;
pub mod prepared;
pub mod runtime;
pub mod server;
pub mod service;
pub mod session;
pub mod tls;
