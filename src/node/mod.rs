//! The member's runtime around the consensus core: the Raft loop on its own thread (ticks,
//! Ready handling, persistence, apply, snapshots), the peer transport (sending, and the peer
//! port's routes), the join decisions, and the state the loop shares with the servers. Above
//! `raft` and `store`; it starts no process and serves no client: `crate::process` assembles
//! a member and `crate::api` serves clients through [`NodeHandle`], the face listed here.

pub mod compactor;
pub mod forward;
pub mod handle;
pub mod join;
pub mod latency;
pub mod lessor;
pub mod runtime;
pub mod shared;
pub mod timeline;
pub mod transport;
pub mod watch;
pub mod writer;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod transport_tests;

pub use handle::NodeHandle;
pub use runtime::NodeError;
pub use shared::{LoopStatus, Metrics, FSYNC_BUCKETS};
