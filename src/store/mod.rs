//! The replicated state machine (keys with revisions, the member table) and the durable
//! storage of the Raft log, term and vote, and snapshots. Above `raft` (its entry and snapshot
//! types) and `base`; it knows nothing of threads, networks or HTTP.

pub mod auth;
pub mod backup;
pub mod claim;
pub mod codec;
pub mod command;
mod error;
pub(crate) mod fs;
pub mod kv;
pub mod legacy;
pub mod mvcc;
#[cfg(test)]
pub(crate) mod simfs;
#[cfg(test)]
mod upgrade_tests;
pub mod wal;

pub use error::{StoreError, DISK_FULL_HINT};
pub use kv::KvStore;
pub use wal::{open_data_dir, read_meta, write_meta, DataDir, DurableState, MemberMeta, Storage};
