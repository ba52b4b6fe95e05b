//! pgherd's connection pooler: PgBouncer-compatible configuration ([`config`]), server
//! connections ([`server`]), pools per (database, user) ([`pool`]), client sessions in
//! session or transaction mode ([`session`]), the clients' tasks ([`listener`]) and the
//! admin console on the virtual database `pgbouncer` ([`admin`]).
//!
//! How the parts depend on each other, top to bottom (each imports only parts below it):
//!
//! - [`service`] composes the pooler: it binds the sockets, starts a [`listener`] on
//!   each and the [`metrics`] endpoint, and stops them.
//! - [`listener`] accepts clients and runs each one's session in a task, parks and
//!   resumes it, and hands a login for the virtual database `pgbouncer` (it comes back
//!   from [`session::run`] as [`session::Ended::Console`]) to [`admin`].
//! - [`admin`] and [`metrics`] read what the layers below count, through [`runtime`];
//!   the console acts through it too (`KILL`, `PAUSE`, `RELOAD`, `SHUTDOWN`).
//! - [`runtime`] is the state the pooler's parts share: the [`session::SessionContext`]
//!   handed to sessions, the client registry, the parker, shutdown, and reloading the
//!   configuration files ([`live::Files`]).
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
//! - [`topology`] follows the clusters routed databases name (through the DCS), and
//!   [`health`] checks the hosts of databases with `check=`; [`pools`] keeps each routed
//!   pool on the members its route names ([`pool::Endpoint`]).

pub mod admin;
pub mod cancel;
pub mod client;
pub mod config;
pub mod health;
pub mod lean_writer;
pub mod listener;
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
pub mod topology;
