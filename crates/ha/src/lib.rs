//! pgherd's HA: the pure decision ([`decide`]), the runner that observes and acts
//! ([`runner::Agent`]), and the Patroni-compatible REST API ([`api`]).

pub mod api;
pub mod decide;
pub mod dynamic;
pub mod fence;
pub mod manual;
pub mod member;
pub mod operator;
pub mod runner;
pub mod spec;
pub mod status;
pub mod watchdog;

pub use decide::*;
pub use runner::Agent;
pub use spec::{ApiAuth, Callbacks, NodeSpec};
pub use status::{NodeStatus, Role, SharedStatus};
