//! pgherd's connection pooler: PgBouncer-compatible configuration ([`config`]), server
//! connections ([`server`]), pools per (database, user) ([`pool`]), client sessions in
//! session or transaction mode ([`session`]), the listener ([`runtime`]) and the admin
//! console on the virtual database `pgbouncer` ([`admin`]).

pub mod admin;
pub mod config;
pub mod lean_writer;
pub mod metrics;
pub mod net;
pub mod park;
pub mod pool;
pub mod prepared;
pub mod runtime;
pub mod server;
pub mod service;
pub mod session;
pub mod tls;
