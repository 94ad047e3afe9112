//! The Raft consensus core: a pure, deterministic state machine in the style of etcd-io/raft
//! and raft-rs. It does no I/O, reads no clock and spawns nothing: time arrives as `tick`,
//! peers' messages as `step`, and everything to persist, send and apply leaves through
//! `RawNode::ready` (see `ready.rs` for the order the host must follow). It uses nothing of ours
//! but `crate::base` (majority arithmetic, the seeded Rng): no store, no node, no tokio.

mod config;
mod log;
mod memory;
mod progress;
mod quorum;
#[allow(clippy::module_inception)]
mod raft;
mod read_only;
mod ready;
mod types;

#[cfg(test)]
mod tests;

pub use config::{Config, ConfigError, PlantedBug};
pub use log::RaftLog;
pub use memory::MemoryStorage;
pub use progress::{Progress, ProgressState};
pub use quorum::majority;
pub use raft::{Campaign, Campaigns, DataLoss, InitialState, ProposeError, Raft};
pub use ready::{RawNode, Ready, SoftState};
pub use types::*;
