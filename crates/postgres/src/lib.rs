//! One local PostgreSQL instance: find its binaries, initdb, pg_ctl start/stop/promote/
//! reload, pg_basebackup clones, pg_rewind, pg_controldata, the config files
//! (postgresql.conf include, pg_hba.conf, standby.signal, primary_conninfo, pgpass), and
//! state queries (role, timeline, LSNs, pg_stat_replication, slots) — all run as an
//! unprivileged OS user when we are root.
//!
//! This crate decides nothing about the cluster: the HA loop tells it what to do.

mod binaries;
mod conninfo;
mod controldata;
mod error;
mod instance;
mod kill;
mod lsn;
mod params;
mod process;
mod queries;

pub use binaries::{parse_major_version, run_as, Binaries, OsUser, REQUIRED_PROGRAMS};
pub use conninfo::{libpq_quote, ConnInfo, Credentials};
pub use controldata::ControlData;
pub use error::{PgError, Result};
pub use instance::{
    pgpass_escape, running_postmaster, DataDirState, Instance, InstanceConfig, PostmasterStatus,
    StandbyConfig, StopMode,
};
pub use kill::kill_server_now;
pub use lsn::{format_lsn, parse_lsn};
pub use params::{default_parameters, quote_conf_value, translate_parameters};
pub use process::run_script;
pub use queries::{quote_ident, quote_literal, slot_name, PgState, ReplicationRow};
