//! The pieces of the `pgherd` binary: config loading, the node command, the operator
//! CLI and the demo. Logic that is not about the command line lives in the other crates.

pub mod config;
pub mod ctl;
pub mod demo;
pub mod drill;
pub mod edit_config;
pub mod listing;
pub mod node;
pub mod operate;
pub mod pooler;
pub mod prompt;
pub mod remove;
pub mod signals;
pub mod switchover;
