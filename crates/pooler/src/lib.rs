//! pgherd's connection pooler: PgBouncer-compatible configuration ([`config`]), server
//! connections ([`server`]), pools per (database, user) ([`pool`]), client sessions in
//! session or transaction mode ([`session`]) and the listener ([`runtime`]).

pub mod config;
pub mod pool;
pub mod runtime;
pub mod server;
pub mod service;
pub mod session;
