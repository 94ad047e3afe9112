//! Process assembly, above `node` and `api`: turns `kuberaft node`'s flags into a running
//! member, one named step at a time (check the flags, open the data directory, decide how to
//! start, restore the state machine, start the Raft loop's task, serve the client and peer
//! ports, stop). It owns the threads and servers; what they run lives in the rooms below.

pub mod args;
mod error;
pub mod etcd_flags;
mod join;
mod member;
mod recovery;
pub mod restore;

pub use args::NodeArgs;
pub use error::StartError;
pub use member::{raft_config, run};
