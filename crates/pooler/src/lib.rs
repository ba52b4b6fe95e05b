//! Connection pooler (being written).

pub mod config;
