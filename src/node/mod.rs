//! The runtime that drives the consensus core: the Raft loop (ticks, Ready handling, apply),
//! the peer transport, and the HTTP servers.

pub mod args;

pub use args::NodeArgs;
