//! The JSON shapes of watches (`POST /v1/watch`; DESIGN.md §4): etcd v3's `WatchRequest` and
//! `WatchResponse` (api/etcdserverpb/rpc.proto) and `mvccpb.Event`, with the conventions of
//! [`super::kv`]: camelCase names (etcd's snake_case accepted in requests), byte fields as text
//! or `...Base64`, numbers as numbers, `prefix`/`fromKey` conveniences, unknown fields refused.

use serde::{Deserialize, Serialize};

use super::kv::{KeyValue, ResponseHeader, Revision};

/// The request header of `POST /v1/watch` that asks for the stream to end when its member has
/// no leader (etcd's `WithRequireLeader`).
pub const HEADER_REQUIRE_LEADER: &str = "x-kuberaft-require-leader";
/// The reason such a stream ends, as etcd words it.
pub const NO_LEADER: &str = "etcdserver: no leader";

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// One request on a watch stream: exactly one of the three.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "create_request")]
    pub create_request: Option<WatchCreateRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "cancel_request")]
    pub cancel_request: Option<WatchCancelRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "progress_request")]
    pub progress_request: Option<WatchProgressRequest>,
}

/// etcd's `WatchCreateRequest.FilterType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilterType {
    /// Leave out put events.
    #[serde(rename = "NOPUT")]
    NoPut,
    /// Leave out delete events.
    #[serde(rename = "NODELETE")]
    NoDelete,
}

/// etcd's `WatchCreateRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchCreateRequest {
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
    /// The first revision to report (inclusive); 0: from the next one.
    #[serde(default, skip_serializing_if = "is_zero", alias = "start_revision")]
    pub start_revision: Revision,
    #[serde(default, skip_serializing_if = "is_false", alias = "progress_notify")]
    pub progress_notify: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterType>,
    #[serde(default, skip_serializing_if = "is_false", alias = "prev_kv")]
    pub prev_kv: bool,
    /// 0: the server picks the id.
    #[serde(default, skip_serializing_if = "is_zero", alias = "watch_id")]
    pub watch_id: i64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub fragment: bool,
}

/// etcd's `WatchCancelRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchCancelRequest {
    #[serde(default, alias = "watch_id")]
    pub watch_id: i64,
}

/// etcd's `WatchProgressRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchProgressRequest {}

/// etcd's `mvccpb.Event.EventType`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[default]
    #[serde(rename = "PUT")]
    Put,
    #[serde(rename = "DELETE")]
    Delete,
}

/// etcd's `mvccpb.Event`. A delete's `kv` holds the key and the delete's revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub kv: KeyValue,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KeyValue>,
}

/// etcd's `WatchResponse`, one line of the stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchResponse {
    pub header: ResponseHeader,
    /// -1 for a progress answer meant for every watch of the stream.
    pub watch_id: i64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub created: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub canceled: bool,
    /// With `canceled`: the store's compacted revision, when the watch's start was compacted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compact_revision: Revision,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cancel_reason: String,
    /// More events of this revision follow in the next response.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fragment: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
}
