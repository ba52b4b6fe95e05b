//! pgherd's connection pooler: PgBouncer-compatible configuration ([`config`]), server
//! connections ([`server`]), pools per (database, user) ([`pool`]), client sessions in
//! session or transaction mode ([`session`]), the listener ([`runtime`]) and the admin
//! console on the virtual database `pgbouncer` ([`admin`]).
//!
//! How the parts depend on each other, top to bottom:
//!
//! - [`service`] and [`runtime`] compose everything: listeners, the pool map, the
//!   janitor, parking ([`park`]).
//! - [`session`] serves one client; [`admin`] and [`metrics`] only read what the layers
//!   below count.
//! - [`pool`] owns its server connections and its queue of waiting clients; its
//!   `queue` is the one place where a free server meets a waiting client. It imports
//!   only [`server`], [`client`] (the record a client's state is shown by) and [`net`].
//! - [`server`] talks to PostgreSQL over [`net`]; [`protocol`](pgherd_protocol) frames
//!   the bytes.
//!
//! Still tangled (to be undone): [`session`] reaches up into [`runtime`] (config,
//! pools, cancel keys) and [`park`] into both.

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
