//! The replicated state machine (keys with revisions, the member table) and the durable
//! storage of the Raft log, term and vote, and snapshots.

pub mod command;
