//! The JSON shapes of etcd-style ranges, txns and compaction (`POST /v1/range`, `/v1/txn`,
//! `/v1/compact`; DESIGN.md §4). They follow etcd v3's messages (api/etcdserverpb/rpc.proto,
//! api/mvccpb/kv.proto) field for field, under their proto3 JSON names (camelCase:
//! `rangeEnd`, `sortOrder`, `modRevision`, `requestPut`, ...; etcd's own snake_case names are
//! accepted too) and with etcd's enum names (`"ASCEND"`, `"MOD"`, `"NOT_EQUAL"`, ...).
//!
//! Two things differ from etcd's JSON gateway, on purpose:
//! - Byte strings (keys, range ends, values) are UTF-8 text under the field's own name
//!   (`"key": "a/b"`), or standard base64 under the name with `Base64` appended
//!   (`"keyBase64": "AP8="`). A request may use either (not both) for each field. An answer
//!   uses text when the bytes are UTF-8 with no control characters other than tab, newline and
//!   carriage return, and base64 otherwise, so a reader looks for `keyBase64` first, then `key`
//!   (both absent: empty). That keeps every answer at most twice its bytes.
//! - Numbers (revisions, versions, counts, leases) are JSON numbers, not strings.
//!
//! A few conveniences that etcd leaves to its client library: `prefix: true` (the keys that
//! start with `key`, `rangeEnd` = `key` + 1) and `fromKey: true` (every key from `key` on,
//! `rangeEnd` = `"\0"`) on ranges, deletes and compares. Requests refuse unknown fields, so a
//! misspelt option is an error rather than silently ignored.

use serde::{Deserialize, Serialize};

use crate::base::base64::{decode_base64, encode_base64};

/// A store revision, as etcd's `int64`.
pub type Revision = i64;

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

fn is_zero_u64(value: &u64) -> bool {
    *value == 0
}

/// The bytes of a field given as `text` (UTF-8) or `base64`; absent: empty. `name` is the
/// field's JSON name, for the message.
pub fn field_bytes(name: &str, text: &Option<String>, base64: &Option<String>) -> Result<Vec<u8>, String> {
    match (text, base64) {
        (Some(_), Some(_)) => Err(format!("give `{name}` or `{name}Base64`, not both")),
        (Some(text), None) => Ok(text.clone().into_bytes()),
        (None, Some(encoded)) => {
            decode_base64(encoded).ok_or_else(|| format!("`{name}Base64` is not standard base64 (with padding)"))
        }
        (None, None) => Ok(Vec::new()),
    }
}

/// How an answer carries `bytes`: `(Some(text), None)` when they read as text (UTF-8 without
/// control characters other than tab, newline and carriage return), else `(None, Some(base64))`.
pub fn bytes_field(bytes: Vec<u8>) -> (Option<String>, Option<String>) {
    match String::from_utf8(bytes) {
        Ok(text) if !text.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) => (Some(text), None),
        Ok(text) => (None, Some(encode_base64(text.as_bytes()))),
        Err(e) => (None, Some(encode_base64(e.as_bytes()))),
    }
}

/// The bytes of a field of an answer: `base64` if present, else `text`, else empty. `None` when
/// the base64 is invalid.
pub fn answer_bytes(text: &Option<String>, base64: &Option<String>) -> Option<Vec<u8>> {
    match base64 {
        Some(encoded) => decode_base64(encoded),
        None => Some(text.clone().unwrap_or_default().into_bytes()),
    }
}

/// etcd's `RangeRequest.SortOrder`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SortOrder {
    /// Key order; with a `sortTarget` other than `KEY`, ascending (etcd's rule).
    #[default]
    None,
    Ascend,
    Descend,
}

/// etcd's `RangeRequest.SortTarget`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// etcd's `RangeRequest`. `rangeEnd` absent or empty: the one key `key`; `"\0"`: every key from
/// `key` on; otherwise the keys in `[key, rangeEnd)`. `revision` <= 0 reads the current
/// revision; `limit` <= 0 means no limit (the server still caps one answer, see DESIGN.md §4).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RangeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "range_end")]
    pub range_end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end_base64: Option<String>,
    /// Every key that starts with `key` (instead of `rangeEnd`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub prefix: bool,
    /// Every key from `key` on (instead of `rangeEnd`).
    #[serde(default, skip_serializing_if = "is_false", alias = "from_key")]
    pub from_key: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limit: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: Revision,
    #[serde(default, skip_serializing_if = "is_default", alias = "sort_order")]
    pub sort_order: SortOrder,
    #[serde(default, skip_serializing_if = "is_default", alias = "sort_target")]
    pub sort_target: SortTarget,
    /// Served by the member asked, from its own state (as `?consistency=serializable`).
    /// Ignored inside a txn.
    #[serde(default, skip_serializing_if = "is_false")]
    pub serializable: bool,
    #[serde(default, skip_serializing_if = "is_false", alias = "keys_only")]
    pub keys_only: bool,
    #[serde(default, skip_serializing_if = "is_false", alias = "count_only")]
    pub count_only: bool,
    #[serde(default, skip_serializing_if = "is_zero", alias = "min_mod_revision")]
    pub min_mod_revision: Revision,
    #[serde(default, skip_serializing_if = "is_zero", alias = "max_mod_revision")]
    pub max_mod_revision: Revision,
    #[serde(default, skip_serializing_if = "is_zero", alias = "min_create_revision")]
    pub min_create_revision: Revision,
    #[serde(default, skip_serializing_if = "is_zero", alias = "max_create_revision")]
    pub max_create_revision: Revision,
}

/// etcd's `ResponseHeader`. Inside a txn's responses only `revision` is set, as in etcd.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseHeader {
    /// Hex, as `/v1/status` prints it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_id: String,
    /// The member that answered (hex).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub member_id: String,
    /// The store's revision when the request was served.
    pub revision: Revision,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub raft_term: u64,
}

/// etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    #[serde(default)]
    pub lease: i64,
}

impl KeyValue {
    /// A key-value with its bytes in the answer's form ([`bytes_field`]).
    pub fn new(key: Vec<u8>, value: Vec<u8>, create_revision: Revision, mod_revision: Revision, version: i64) -> Self {
        let (key, key_base64) = bytes_field(key);
        let (value, value_base64) = bytes_field(value);
        KeyValue { key, key_base64, create_revision, mod_revision, version, value, value_base64, lease: 0 }
    }

    /// The key's bytes (`None`: invalid base64).
    pub fn key_bytes(&self) -> Option<Vec<u8>> {
        answer_bytes(&self.key, &self.key_base64)
    }

    /// The value's bytes (`None`: invalid base64).
    pub fn value_bytes(&self) -> Option<Vec<u8>> {
        answer_bytes(&self.value, &self.value_base64)
    }
}

/// etcd's `RangeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeResponse {
    pub header: ResponseHeader,
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
    /// More keys are in the range than this answer holds.
    #[serde(default)]
    pub more: bool,
    /// How many keys are in the range at the revision read (regardless of `limit`).
    #[serde(default)]
    pub count: i64,
}

/// etcd's `PutRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PutRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    /// The lease id, 0 for none (stored as given; leases come in a later version).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease: i64,
    #[serde(default, skip_serializing_if = "is_false", alias = "prev_kv")]
    pub prev_kv: bool,
    #[serde(default, skip_serializing_if = "is_false", alias = "ignore_value")]
    pub ignore_value: bool,
    #[serde(default, skip_serializing_if = "is_false", alias = "ignore_lease")]
    pub ignore_lease: bool,
}

/// etcd's `PutResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutResponse {
    pub header: ResponseHeader,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KeyValue>,
}

/// etcd's `DeleteRangeRequest`; the keys are chosen as in [`RangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteRangeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "range_end")]
    pub range_end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end_base64: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub prefix: bool,
    #[serde(default, skip_serializing_if = "is_false", alias = "from_key")]
    pub from_key: bool,
    #[serde(default, skip_serializing_if = "is_false", alias = "prev_kv")]
    pub prev_kv: bool,
}

/// etcd's `DeleteRangeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteRangeResponse {
    pub header: ResponseHeader,
    #[serde(default)]
    pub deleted: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prev_kvs: Vec<KeyValue>,
}

/// etcd's `Compare.CompareTarget`: which field of each key is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompareTarget {
    Version,
    Create,
    Mod,
    Value,
    Lease,
}

/// etcd's `Compare.CompareResult`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// etcd's `Compare`: holds when `<target of every key in the range> <result> <operand>`. The
/// operand is the one field that `target` names (`version`, `createRevision`, `modRevision`,
/// `value`/`valueBase64` or `lease`); `target` and `result` are required.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Compare {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "range_end")]
    pub range_end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end_base64: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub prefix: bool,
    #[serde(default, skip_serializing_if = "is_false", alias = "from_key")]
    pub from_key: bool,
    pub target: CompareTarget,
    pub result: CompareResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "create_revision")]
    pub create_revision: Option<Revision>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "mod_revision")]
    pub mod_revision: Option<Revision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
}

impl Compare {
    /// A compare of `key` with no operand yet (set the field that `target` names).
    pub fn new(key: &str, target: CompareTarget, result: CompareResult) -> Compare {
        Compare {
            key: Some(key.to_string()),
            key_base64: None,
            range_end: None,
            range_end_base64: None,
            prefix: false,
            from_key: false,
            target,
            result,
            version: None,
            create_revision: None,
            mod_revision: None,
            value: None,
            value_base64: None,
            lease: None,
        }
    }
}

/// etcd's `RequestOp`: `{"requestRange": {...}}`, `{"requestPut": {...}}`,
/// `{"requestDeleteRange": {...}}` or `{"requestTxn": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RequestOp {
    #[serde(alias = "request_range")]
    RequestRange(RangeRequest),
    #[serde(alias = "request_put")]
    RequestPut(PutRequest),
    #[serde(alias = "request_delete_range")]
    RequestDeleteRange(DeleteRangeRequest),
    #[serde(alias = "request_txn")]
    RequestTxn(TxnRequest),
}

/// etcd's `TxnRequest`: if every compare holds, the `success` ops run, else the `failure` ops;
/// all of it as one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TxnRequest {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compare: Vec<Compare>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub success: Vec<RequestOp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure: Vec<RequestOp>,
}

/// etcd's `ResponseOp`, one per op of the branch that ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ResponseOp {
    ResponseRange(RangeResponse),
    ResponsePut(PutResponse),
    ResponseDeleteRange(DeleteRangeResponse),
    ResponseTxn(TxnResponse),
}

/// etcd's `TxnResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TxnResponse {
    pub header: ResponseHeader,
    /// Whether every compare held (the `success` ops ran).
    pub succeeded: bool,
    #[serde(default)]
    pub responses: Vec<ResponseOp>,
    /// The answer was cut to its bounds (DESIGN.md §4): ranges past them say `more`, and
    /// `prevKv`/`prevKvs` past them are left out. The txn itself applied whole.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

/// etcd's `CompactionRequest`. With `physical`, the answer waits until the member that applied
/// the compaction has also reclaimed the discarded history's space (etcd's physical compaction);
/// without it, the answer comes once reads below the revision are refused, and the space is
/// reclaimed after, in bounded chunks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompactionRequest {
    pub revision: Revision,
    #[serde(default, skip_serializing_if = "is_false")]
    pub physical: bool,
}

/// etcd's `CompactionResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompactionResponse {
    pub header: ResponseHeader,
}

#[cfg(test)]
mod tests;
