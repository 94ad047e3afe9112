//! What the replicated state machine understands: the commands carried in log entries, what
//! applying one returns, and the member records carried in membership changes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::raft::NodeId;

/// A state-machine command, the payload of a `EntryPayload::Command` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Writes `value` under `key`. With `prev_revision`, only if the key's current
    /// mod revision equals it (0: only if the key does not exist).
    Put { key: String, value: Bytes, prev_revision: Option<u64> },
    /// Deletes `key` (same compare rule as `Put`).
    Delete { key: String, prev_revision: Option<u64> },
    /// A learner starts with empty data under its id: recorded once, so that a second start
    /// with empty data (its data lost) is refused (`node::join`).
    Join { id: NodeId },
    /// A leader heard member `id` acknowledge its log: the member holds data under its id, so a
    /// later start with empty data under it (under `new` too) means its data was lost.
    Seen { id: NodeId },
}

/// The outcome of applying one command. Every successful write moves the store's revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyResult {
    Put {
        revision: u64,
    },
    Deleted {
        revision: u64,
        deleted: u64,
    },
    /// The compare failed; nothing changed. `current` is the key's mod revision (0: absent).
    CompareFailed {
        current: u64,
    },
    /// `Command::Join` was recorded: the member may start with empty data.
    Joined,
    /// `Command::Join` was refused; with `data_lost`, the member must be replaced.
    JoinRefused {
        data_lost: bool,
        reason: String,
    },
}

/// One stored key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// How many times the key was written since it was created.
    pub version: u64,
}

/// A member as the cluster records it: the `context` of its membership change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: NodeId,
    pub name: String,
    pub peer_url: String,
    pub client_url: String,
}

/// Binary encoding of commands and member records (bincode): compact, and every decode of
/// bytes from a peer or the disk returns an error instead of panicking.
pub fn encode<T: Serialize>(value: &T) -> Bytes {
    // Serialising these plain types into memory cannot fail.
    Bytes::from(bincode::serialize(value).unwrap_or_default())
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, bincode::Error> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(bytes.len() as u64 + 64)
        .allow_trailing_bytes()
        .deserialize(bytes)
}
