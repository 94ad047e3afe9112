//! etcd v3's key-value request and response types (api/etcdserverpb/rpc.proto, api/mvccpb/kv.proto),
//! shared by the model, the store, the commands in the log and the APIs. Keys and values are
//! bytes, revisions `i64`, as in etcd's protobufs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A store revision (etcd's `int64` main revision).
pub type Revision = i64;

/// etcd's `MaxLeaseTTL`: the longest TTL a lease may be granted, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// A lease as the state machine keeps it (etcd's `leasepb.Lease`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: i64,
    /// The TTL it was granted with, in seconds.
    pub ttl: i64,
    /// The remaining TTL at the last checkpoint, in milliseconds; 0: none (the whole TTL).
    pub remaining_ms: i64,
}

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// One version of a key, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "crate::store::codec::bytes")]
    pub key: Vec<u8>,
    /// The revision of the put that created the key (since its last delete).
    pub create_revision: Revision,
    /// The revision of the last put of the key.
    pub mod_revision: Revision,
    /// How many puts since creation, 1 for a new key.
    pub version: i64,
    #[serde(with = "crate::store::codec::bytes")]
    pub value: Vec<u8>,
    /// The lease id, 0 for none.
    pub lease: i64,
}

/// The errors the model returns, with etcd's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MvccError {
    /// The requested revision is below the compacted revision.
    Compacted,
    /// The requested revision is above the current revision.
    FutureRev,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    KeyNotFound,
    /// An empty key in a range, put, delete or compare.
    EmptyKey,
    /// A value given together with `ignore_value`.
    ValueProvided,
    /// A lease given together with `ignore_lease`.
    LeaseProvided,
    /// A txn that writes a key twice (see `Model::txn`).
    DuplicateKey,
    /// A txn with more than `max_txn_ops` compares or ops on one level.
    TooManyOps,
    /// A put with a lease that does not exist; a revoke of one; a grant of lease 0.
    LeaseNotFound,
    /// A grant of a lease id that exists.
    LeaseExists,
    /// A grant with a TTL over [`MAX_LEASE_TTL`].
    LeaseTtlTooLarge,
}

impl fmt::Display for MvccError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MvccError::Compacted => "mvcc: required revision has been compacted",
            MvccError::FutureRev => "mvcc: required revision is a future revision",
            MvccError::KeyNotFound => "etcdserver: key not found",
            MvccError::EmptyKey => "etcdserver: key is not provided",
            MvccError::ValueProvided => "etcdserver: value is provided",
            MvccError::LeaseProvided => "etcdserver: lease is provided",
            MvccError::DuplicateKey => "etcdserver: duplicate key given in txn request",
            MvccError::TooManyOps => "etcdserver: too many operations in txn request",
            MvccError::LeaseNotFound => "etcdserver: requested lease not found",
            MvccError::LeaseExists => "etcdserver: lease already exists",
            MvccError::LeaseTtlTooLarge => "etcdserver: too large lease TTL",
        })
    }
}

impl std::error::Error for MvccError {}

/// The order of a range's results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    /// Key order; but with a target other than [`SortTarget::Key`] it means ascending.
    #[default]
    None,
    Ascend,
    Descend,
}

/// What a range sorts by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// etcd's `RangeRequest`. `range_end`: empty = the one key `key`; `"\0"` = every key from
/// `key` on; otherwise the keys in `[key, range_end)`. Revisions and limits <= 0 mean "none".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    #[serde(with = "crate::store::codec::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::store::codec::bytes")]
    pub range_end: Vec<u8>,
    pub limit: i64,
    pub revision: Revision,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    /// Accepted and ignored: the model has one copy, so every read is linearizable.
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: Revision,
    pub max_mod_revision: Revision,
    pub min_create_revision: Revision,
    pub max_create_revision: Revision,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The store's revision seen by the read (etcd's header.revision), not the one read at.
    pub revision: Revision,
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` let through.
    pub more: bool,
    /// How many keys are in the range at the revision read, regardless of `limit` and of the
    /// min/max revision filters (etcd counts before it filters).
    pub count: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    #[serde(with = "crate::store::codec::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::store::codec::bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    pub revision: Revision,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    #[serde(with = "crate::store::codec::bytes")]
    pub key: Vec<u8>,
    /// As in [`RangeRequest::range_end`].
    #[serde(with = "crate::store::codec::bytes")]
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    pub revision: Revision,
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

/// What a compare looks at, with the operand to compare it against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Value(#[serde(with = "crate::store::codec::bytes")] Vec<u8>),
    Version(i64),
    Create(Revision),
    Mod(Revision),
    Lease(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// etcd's `Compare`: true when `<field of each key in range> <result> <operand>` holds for every
/// key in the range. On a range with no keys a value compare is false and the others compare
/// 0 (version, create, mod and lease of a missing key) against the operand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    #[serde(with = "crate::store::codec::bytes")]
    pub key: Vec<u8>,
    /// As in [`RangeRequest::range_end`].
    #[serde(with = "crate::store::codec::bytes")]
    pub range_end: Vec<u8>,
    pub result: CompareResult,
    pub target: CompareTarget,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// The store's revision after the txn (for a nested txn: as seen after its ops).
    pub revision: Revision,
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactResponse {
    pub revision: Revision,
}

/// What an event did to its key (etcd's `mvccpb.Event.EventType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change of one key, as etcd's `mvccpb.Event`. A delete's `kv` holds only the key and
/// the revision of the delete (`mod_revision`), as etcd's does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The key's version before this change, when asked for and still kept.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The bytes the event carries (keys and values), to bound what is held at once.
    pub fn size(&self) -> usize {
        let kv = |kv: &KeyValue| kv.key.len() + kv.value.len() + 48;
        kv(&self.kv) + self.prev_kv.as_ref().map_or(0, kv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec;

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// Keys and values are encoded as bytes in one piece (`codec::bytes`), and that encoding is
    /// the one serde's default gave them (a sequence of `u8`), which the log, the peer messages
    /// and snapshots of earlier versions hold: here each type against a tuple of its fields with
    /// plain `Vec<u8>`s, encoded as `codec::encode` did before (`postcard::to_stdvec`), in both
    /// directions.
    #[test]
    fn keys_and_values_encode_as_before_and_read_back() {
        for len in [0, 1, 127, 128, 300, 70_000] {
            let (key, value, end) = (bytes(len.min(300), 1), bytes(len, 2), bytes(len.min(300), 3));
            let put =
                PutRequest { key: key.clone(), value: value.clone(), lease: 7, prev_kv: true, ..Default::default() };
            let plain = (key.clone(), value.clone(), 7i64, true, false, false);
            assert_eq!(codec::encode(&put).unwrap(), postcard::to_stdvec(&plain).unwrap(), "put of {len}");
            assert_eq!(codec::decode::<PutRequest>(&postcard::to_stdvec(&plain).unwrap()).unwrap(), put);

            let kv = KeyValue {
                key: key.clone(),
                create_revision: 2,
                mod_revision: 3,
                version: 1,
                value: value.clone(),
                lease: 0,
            };
            let plain = (key.clone(), 2i64, 3i64, 1i64, value.clone(), 0i64);
            assert_eq!(codec::encode(&kv).unwrap(), postcard::to_stdvec(&plain).unwrap(), "key-value of {len}");
            assert_eq!(codec::decode::<KeyValue>(&postcard::to_stdvec(&plain).unwrap()).unwrap(), kv);

            let delete = DeleteRangeRequest { key: key.clone(), range_end: end.clone(), prev_kv: true };
            assert_eq!(
                codec::encode(&delete).unwrap(),
                postcard::to_stdvec(&(key.clone(), end.clone(), true)).unwrap()
            );

            let compare = Compare {
                key: key.clone(),
                range_end: end.clone(),
                result: CompareResult::Equal,
                target: CompareTarget::Value(value.clone()),
            };
            // Enum variants are their index, then their fields.
            let plain = (key.clone(), end.clone(), 0u32, (0u32, value.clone()));
            assert_eq!(codec::encode(&compare).unwrap(), postcard::to_stdvec(&plain).unwrap(), "compare of {len}");
            let txn = TxnRequest { compare: vec![compare], success: vec![RequestOp::Put(put)], failure: vec![] };
            let bytes = codec::encode(&txn).unwrap();
            assert_eq!(codec::decode::<TxnRequest>(&bytes).unwrap(), txn);
            // Damage is an error, never a panic.
            for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
                assert!(codec::decode::<TxnRequest>(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
        let range = RangeRequest { key: b"a".to_vec(), range_end: b"b".to_vec(), limit: 3, ..Default::default() };
        assert_eq!(codec::decode::<RangeRequest>(&codec::encode(&range).unwrap()).unwrap(), range);
        // A length far past the input is refused (before, as now).
        assert!(codec::decode::<PutRequest>(&[0xff, 0xff, 0xff, 0x7f, 1, 2]).is_err());
        // JSON keeps arrays of numbers.
        let put = PutRequest { key: b"k".to_vec(), value: vec![1, 2], ..Default::default() };
        let json = serde_json::to_value(&put).unwrap();
        assert_eq!(json["key"], serde_json::json!([107]));
        assert_eq!(json["value"], serde_json::json!([1, 2]));
        assert_eq!(serde_json::from_value::<PutRequest>(json).unwrap(), put);
    }
}
