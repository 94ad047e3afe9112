//! The JSON shapes of leases (`POST /v1/lease/...`; DESIGN.md §4): etcd v3's Lease messages
//! (api/etcdserverpb/rpc.proto) under their proto3 JSON names (`ID`, `TTL`, `grantedTTL`), with
//! numbers as numbers and the conventions of [`super::kv`].

use serde::{Deserialize, Serialize};

use super::kv::ResponseHeader;

fn is_false(value: &bool) -> bool {
    !*value
}

/// etcd's `LeaseGrantRequest`: `ID` 0 lets the server pick one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseGrantRequest {
    #[serde(rename = "TTL", alias = "ttl")]
    pub ttl: i64,
    #[serde(rename = "ID", alias = "id", default)]
    pub id: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantResponse {
    pub header: ResponseHeader,
    #[serde(rename = "ID")]
    pub id: i64,
    #[serde(rename = "TTL")]
    pub ttl: i64,
}

/// etcd's `LeaseRevokeRequest` and `LeaseKeepAliveRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseIdRequest {
    #[serde(rename = "ID", alias = "id")]
    pub id: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevokeResponse {
    pub header: ResponseHeader,
}

/// etcd's `LeaseKeepAliveResponse`: `TTL` 0 when the lease does not exist.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseKeepAliveResponse {
    pub header: ResponseHeader,
    #[serde(rename = "ID")]
    pub id: i64,
    #[serde(rename = "TTL")]
    pub ttl: i64,
}

/// etcd's `LeaseTimeToLiveRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseTimeToLiveRequest {
    #[serde(rename = "ID", alias = "id")]
    pub id: i64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub keys: bool,
}

/// etcd's `LeaseTimeToLiveResponse`: `TTL` -1 when the lease does not exist.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseTimeToLiveResponse {
    pub header: ResponseHeader,
    #[serde(rename = "ID")]
    pub id: i64,
    #[serde(rename = "TTL")]
    pub ttl: i64,
    #[serde(rename = "grantedTTL")]
    pub granted_ttl: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<LeaseKey>,
}

/// A key attached to a lease: text, or base64 for bytes that are not (`super::kv::bytes_field`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
}

impl LeaseKey {
    pub fn new(key: Vec<u8>) -> LeaseKey {
        let (key, key_base64) = super::kv::bytes_field(key);
        LeaseKey { key, key_base64 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    #[serde(rename = "ID")]
    pub id: i64,
}

/// etcd's `LeaseLeasesResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseLeasesResponse {
    pub header: ResponseHeader,
    pub leases: Vec<LeaseStatus>,
}
