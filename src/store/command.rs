//! What the replicated state machine understands: the commands carried in log entries, what
//! applying one returns, and the member records carried in membership changes.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::auth::{AuthError, AuthOutcome, AuthRequest};
use super::codec::{self, CodecError};
use super::legacy;
use super::mvcc::{CompactResponse, MvccError, RequestOp, Revision, TxnRequest, TxnResponse};

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
    /// An etcd txn: compares, then the success or the failure ops, applied as one revision. A
    /// put or a delete-range alone travels as a txn without compares.
    Txn(TxnRequest),
    /// Compacts the key history below `revision` (etcd's Compact).
    Compact { revision: Revision },
    /// Grants lease `id` (chosen by the member that proposed it) with `ttl` seconds (etcd's
    /// LeaseGrant, the minimum TTL already applied). Variants are only ever added at the end:
    /// a member of an older version skips commands it cannot decode, so every member must run
    /// a version that knows the lease commands before any is proposed.
    LeaseGrant { id: i64, ttl: i64 },
    /// Revokes lease `id`: its keys are deleted as one revision (etcd's LeaseRevoke, also how
    /// the leader carries out an expiry).
    LeaseRevoke { id: i64 },
    /// The leader's record of the remaining TTLs (ms) of some leases (etcd's LeaseCheckpoint),
    /// so that a new leader does not give them their whole TTL again.
    LeaseCheckpoint { checkpoints: Vec<(i64, i64)> },
    /// Member `id`'s record changes where a field is given: its peer URL (etcd's MemberUpdate),
    /// its client URL and name (what the member says of itself, which the leader records, as
    /// etcd's members publish theirs). A member of an older version skips it (see `LeaseGrant`).
    UpdateMember { id: NodeId, name: Option<String>, peer_url: Option<String>, client_url: Option<String> },
    /// A change of users, roles or permissions, or a token (etcd's Auth API, `store::auth`). A
    /// member of an older version skips it (see `LeaseGrant`).
    Auth(AuthRequest),
    /// `command` on behalf of a client, `user` as the member that received it resolved the
    /// caller (`None`: no credentials). With auth enabled, the command applies only if the user
    /// may make it (`store::auth`); otherwise it is refused with etcd's error and changes
    /// nothing. Every command a client's call makes travels so, as etcd's carry the user in
    /// their header; the members' own commands (lease expiry, compaction) travel bare.
    As { user: Option<String>, command: Box<Command> },
}

impl Command {
    /// Whether its outcome is a few numbers: no key-values (no range, no previous value), so
    /// that a follower may have the leader apply it and relay the outcome (`node::forward`)
    /// without an answer of unbounded size.
    pub fn answer_is_small(&self) -> bool {
        match self {
            Command::Txn(txn) => txn_answer_is_small(txn),
            Command::Put { .. } | Command::Delete { .. } | Command::Compact { .. } => true,
            Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => true,
            Command::Join { .. } | Command::Seen { .. } | Command::LeaseCheckpoint { .. } => false,
            Command::UpdateMember { .. } => false,
            Command::Auth(_) => true,
            Command::As { command, .. } => command.answer_is_small(),
        }
    }
}

/// Whether a txn's outcome is a few numbers (`Command::answer_is_small`).
pub fn txn_answer_is_small(txn: &TxnRequest) -> bool {
    fn small(ops: &[RequestOp]) -> bool {
        ops.iter().all(|op| match op {
            RequestOp::Range(_) => false,
            RequestOp::Put(put) => !put.prev_kv,
            RequestOp::DeleteRange(delete) => !delete.prev_kv,
            RequestOp::Txn(txn) => txn_answer_is_small(txn),
        })
    }
    small(&txn.success) && small(&txn.failure)
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
    /// `Command::Txn` applied.
    Txn(TxnResponse),
    /// `Command::Compact` applied.
    Compacted(CompactResponse),
    /// A `Txn` or `Compact` the store refused, with etcd's error; nothing changed.
    Refused(MvccError),
    /// `Command::LeaseGrant` applied.
    LeaseGranted {
        id: i64,
        ttl: i64,
    },
    /// `Command::LeaseRevoke` applied: the store's revision after it.
    LeaseRevoked {
        id: i64,
        revision: Revision,
    },
    /// `Command::LeaseCheckpoint` applied.
    Checkpointed {
        checkpoints: Vec<(i64, i64)>,
    },
    /// `Command::UpdateMember` applied (`found` false: no such member, nothing changed): the
    /// record as it is now.
    MemberUpdated {
        member: MemberInfo,
        found: bool,
    },
    /// `Command::Auth` applied.
    Auth(AuthOutcome),
    /// A command the caller may not make (or an auth change refused), with etcd's error;
    /// nothing changed.
    AuthRefused(AuthError),
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

/// The first byte of a command or member record in the current encoding (format 2:
/// this byte, then postcard; see `store::codec`). These bytes sit inside Raft log entries, on
/// disk and in snapshots of the log, so entries that kuberaft 0.1.0 wrote (format 1, bincode 1)
/// and entries written since live in one log, and `decode` tells them apart:
/// - a format-1 `Command` starts with its variant index as a little-endian u32 (0 to 3), so
///   never with this byte;
/// - a format-1 `MemberInfo` starts with its id, whose low byte can be anything. But a format-1
///   encoding is exactly one complete bincode-1 value, and `encode` never writes bytes that read
///   as one (it appends a zero byte in the rare case they would), so "reads as a complete
///   format-1 value" decides.
///
/// Format 3 (`0xf3`, this byte) is format 2 (`0xf2`) with revisions numbered as etcd's (an
/// empty store is at revision 1): the `prev_revision` of a Put or Delete of formats 1 and 2
/// counts from an empty store at 0, one less (see [`numbered_before_etcd`]).
pub const PAYLOAD_FORMAT: u8 = 0xf3;
/// The first byte of format 2 (postcard, revisions from 0), still read.
pub const PAYLOAD_FORMAT_2: u8 = 0xf2;

/// Whether a command's bytes were written before revisions followed etcd's numbering (formats
/// 1 and 2, revisions one less than today's for the same history).
pub fn numbered_before_etcd(bytes: &[u8]) -> bool {
    bytes.first() != Some(&PAYLOAD_FORMAT)
}

/// Encodes a command or member record in the current format (see `PAYLOAD_FORMAT`); the bytes
/// never read as a format-1 encoding of `T`.
pub fn encode<T: Serialize + DeserializeOwned>(value: &T) -> Bytes {
    let mut bytes = vec![PAYLOAD_FORMAT];
    // Encoding these plain types into memory cannot fail.
    if let Err(e) = codec::encode_into(value, &mut bytes) {
        tracing::error!(error = %e, "cannot encode a command");
    }
    // A complete value followed by one more byte is no longer a complete value.
    if legacy::from_bytes_exact::<T>(&bytes).is_ok() {
        bytes.push(0);
    }
    Bytes::from(bytes)
}

/// Decodes a command or member record of either format (see `PAYLOAD_FORMAT`). Every decode of
/// bytes from a peer or the disk returns an error instead of panicking.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let legacy_error = match legacy::from_bytes_exact::<T>(bytes) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    match bytes.split_first() {
        Some((&(PAYLOAD_FORMAT | PAYLOAD_FORMAT_2), rest)) => decode_postcard(rest),
        _ => Err(legacy_error.into()),
    }
}

/// `decode::<Command>`, without its first try as format 1 for bytes that start with a format
/// byte: a format-1 command starts with its variant index as a little-endian u32, whose first
/// byte is below the number of variants (far fewer than `PAYLOAD_FORMAT_2`), so such bytes never
/// read as one, and `decode` learns that from a failed read that costs an error message each
/// time (1.4 % of the members' CPU at 256 clients: every member decodes every command it
/// applies).
pub fn decode_command(bytes: &[u8]) -> Result<Command, CodecError> {
    match bytes.split_first() {
        Some((&(PAYLOAD_FORMAT | PAYLOAD_FORMAT_2), rest)) => decode_postcard(rest),
        _ => decode(bytes),
    }
}

/// The value in `rest`, the bytes after a format byte (formats 2 and 3), and nothing after it
/// but zeros (`encode`'s padding).
fn decode_postcard<T: DeserializeOwned>(rest: &[u8]) -> Result<T, CodecError> {
    let (value, padding) = codec::decode_prefix(rest)?;
    if padding.iter().any(|b| *b != 0) {
        return Err(CodecError::new(format!("{} bytes after the value", padding.len())));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le(n: u64) -> Vec<u8> {
        n.to_le_bytes().to_vec()
    }

    #[test]
    fn commands_and_member_records_of_both_formats_decode() {
        let put = Command::Put { key: "k".into(), value: Bytes::from_static(b"v"), prev_revision: Some(3) };
        let bytes = encode(&put);
        assert_eq!(bytes[0], PAYLOAD_FORMAT);
        assert_eq!(decode::<Command>(&bytes), Ok(put.clone()));
        // The same command as kuberaft 0.1.0 wrote it (bincode 1: variant 0 as a u32, u64 lengths).
        let v1 = [&[0, 0, 0, 0][..], &le(1), b"k", &le(1), b"v", &[1], &le(3)].concat();
        assert_eq!(decode::<Command>(&v1), Ok(put));

        // A 0.1.0 member record whose id's low byte is the format byte still reads as format 1.
        let id = 0x1122_3344_5566_7700 | u64::from(PAYLOAD_FORMAT);
        let v1 = [&le(id)[..], &le(2), b"e0", &le(3), b"p:1", &le(3), b"c:2"].concat();
        assert_eq!(v1[0], PAYLOAD_FORMAT);
        let info = MemberInfo { id, name: "e0".into(), peer_url: "p:1".into(), client_url: "c:2".into() };
        assert_eq!(decode::<MemberInfo>(&v1), Ok(info.clone()));
        assert_eq!(decode::<MemberInfo>(&encode(&info)), Ok(info));
    }

    #[test]
    fn an_encoding_that_would_read_as_format_1_gets_a_padding_byte() {
        // The format byte and a 7-byte varint make 8 bytes, a complete bincode-1 u64: without the
        // padding byte, `decode` would take it for a format-1 value.
        let value = 1u64 << 45;
        let bytes = encode(&value);
        assert_eq!((bytes.len(), bytes[0], bytes[8]), (9, PAYLOAD_FORMAT, 0));
        assert_eq!(decode::<u64>(&bytes), Ok(value));
        assert_eq!(decode::<u64>(&bytes[..8]).ok(), Some(u64::from_le_bytes(bytes[..8].try_into().unwrap())));
        // Only zeros may follow a value in format 2.
        let mut tail = bytes.to_vec();
        tail[8] = 1;
        assert!(decode::<u64>(&tail).is_err());
    }

    #[test]
    fn damaged_payloads_are_errors() {
        let bytes = encode(&Command::Delete { key: "key".into(), prev_revision: None });
        for cut in 0..bytes.len() {
            assert!(decode::<Command>(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode::<Command>(&[PAYLOAD_FORMAT, 9]).is_err(), "no variant 9");
        assert!(decode::<Command>(&[7, 0, 0, 0]).is_err(), "no variant 7 in format 1 either");
    }
}
