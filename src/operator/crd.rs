//! The `RaftCluster` custom resource (DESIGN.md §6), defined once as Rust types: the operator reads
//! and writes these, and the CRD that `kuberaft crd` prints (and `crds/` holds) is derived from
//! them, so the schema, its defaults and its validation cannot drift from the code.
//!
//! Defaults live in the schema (the API server fills them in) and in serde (so a spec read from a
//! file, as `kuberaft render` does, gets the same ones); both come from the functions below.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MAX_REPLICAS, MIN_REPLICAS};

pub mod snapshot;

/// The image that runs a member when `spec.image` is not given: the release of this operator.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/kuberaft/kuberaft:", env!("CARGO_PKG_VERSION"));
pub const DEFAULT_REPLICAS: u32 = 3;
pub const DEFAULT_STORAGE_SIZE: &str = "1Gi";
pub const DEFAULT_ELECTION_TIMEOUT_MIN_MS: u64 = 150;
pub const DEFAULT_ELECTION_TIMEOUT_MAX_MS: u64 = 300;
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 50;
pub const DEFAULT_SNAPSHOT_THRESHOLD: u64 = 10_000;

/// A Raft-replicated key-value store of `replicas` members, each a pod of one StatefulSet with its
/// own volume. The operator changes Raft membership one member at a time as `replicas` changes,
/// and reports the leader and the term in the status.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "kuberaft.io",
    version = "v1alpha1",
    kind = "RaftCluster",
    plural = "raftclusters",
    namespaced,
    shortname = "raft",
    status = "RaftClusterStatus",
    derive = "PartialEq",
    doc = "A Raft-replicated key-value store that the kuberaft operator runs and scales.",
    scale(spec_replicas_path = ".spec.replicas", status_replicas_path = ".status.replicas"),
    printcolumn = r#"{"name":"REPLICAS","type":"integer","description":"Members wanted","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"READY","type":"integer","description":"Members ready","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"LEADER","type":"string","description":"The leading member","jsonPath":".status.leader"}"#,
    printcolumn = r#"{"name":"TERM","type":"integer","description":"The leader's Raft term","jsonPath":".status.term"}"#,
    printcolumn = r#"{"name":"PHASE","type":"string","description":"The cluster's phase","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "has(self.tls) == has(oldSelf.tls) && (!has(self.tls) || has(self.tls.auto) == has(oldSelf.tls.auto))"
).message("spec.tls is set when the cluster is created: it cannot be turned on, off or to another issuer"))]
#[x_kube(validation = Rule::new(
    "has(self.bootstrap) == has(oldSelf.bootstrap) && (!has(self.bootstrap) || self.bootstrap == oldSelf.bootstrap)"
).message("spec.bootstrap is read when the cluster is created: it cannot be set, changed or removed afterwards"))]
pub struct RaftClusterSpec {
    /// How many members (voters) the cluster has, 1 to 9; an odd number tolerates as many
    /// failures as the next even one. Changed one member at a time (`kubectl scale raft NAME`).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = MIN_REPLICAS, max = MAX_REPLICAS))]
    pub replicas: u32,
    /// The container image of the members (the `kuberaft` binary). Defaults to the operator's own
    /// release.
    #[serde(default = "default_image")]
    pub image: String,
    /// The volume of each member, which holds its Raft log and snapshots.
    #[serde(default)]
    pub storage: StorageSpec,
    /// CPU and memory requests and limits of each member's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Raft timing. The election timeout must be above the heartbeat interval, and well above the
    /// round trip between members.
    #[serde(default)]
    pub election: ElectionSpec,
    /// How many applied log entries a member keeps before it compacts them into a snapshot.
    #[serde(default = "default_snapshot_threshold")]
    #[schemars(range(min = 1))]
    pub snapshot_threshold: u64,
    /// Labels a node must have to run a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints that members tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Where members may run. When not given, members prefer nodes apart from each other (soft
    /// pod anti-affinity on the hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// While true the operator changes nothing (no membership step, no object update) but keeps
    /// reporting the status.
    #[serde(default)]
    pub paused: bool,
    /// Who may reach the members: a NetworkPolicy, on by default.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// TLS on both ports, with certificates the operator issues (`auto`) or cert-manager issues
    /// (`certManager`). Set when the cluster is created: it cannot be turned on, off or to another
    /// issuer later (the members' URLs and trust would change under them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// etcd's user and role auth, on: the operator makes user `root` with the password in
    /// `rootPasswordSecret`, gives it the `root` role and enables auth (`etcdctl auth enable`);
    /// then it calls members as root. Other users and roles are managed with etcdctl. Removing
    /// `auth` turns auth off again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Backups of the cluster's data on a schedule, each a snapshot file (`kuberaft snapshot
    /// status` reads it; `kuberaft snapshot restore` makes members from it) taken from a
    /// healthy follower, with the oldest pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
    /// How the first members get their data: empty when not given, or restored from a backup.
    /// Set when the cluster is created; it cannot change afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,
}

/// `spec.backup`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// When to take one: a cron schedule of five fields (minute, hour, day of month, month, day
    /// of week) in UTC, such as `0 */6 * * *`.
    #[schemars(length(min = 9, max = 100))]
    pub schedule: String,
    /// Which backups to keep.
    #[serde(default)]
    pub retention: RetentionSpec,
    /// Where to keep them.
    pub destination: BackupDestination,
}

/// `spec.backup.retention`: the newest `count` are kept, and of those, none older than
/// `maxAgeHours` but the newest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// How many backups to keep, newest first (7 when not given).
    #[serde(default = "default_retention_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub count: u32,
    /// Backups older than this many hours are deleted too, but never the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_age_hours: Option<u32>,
}

impl Default for RetentionSpec {
    fn default() -> Self {
        RetentionSpec { count: default_retention_count(), max_age_hours: None }
    }
}

fn default_retention_count() -> u32 {
    7
}

/// Where backups are kept: exactly one of S3-compatible object storage and a
/// PersistentVolumeClaim.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.s3) != has(self.persistentVolumeClaim)")
    .message("a backup destination is exactly one of s3 and persistentVolumeClaim"))]
pub struct BackupDestination {
    /// A bucket of an S3-compatible store: the operator streams each backup into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
    /// A PersistentVolumeClaim of the cluster's namespace: a Job of the operator's mounts it and
    /// takes each backup (`kuberaft backup take`), so the claim must be mountable where that
    /// Job's pod runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcDestination>,
}

/// Where backups go on a PersistentVolumeClaim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcDestination {
    /// The claim, in the cluster's namespace.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub claim_name: String,
    /// The directory in the claim the files go to; `<namespace>/<cluster>` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), pattern(r"^[^/]"))]
    pub prefix: Option<String>,
}

/// Where backups go in an S3-compatible store (AWS S3, MinIO, Ceph, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    #[serde(flatten)]
    pub store: S3Store,
    /// Keys start with it; `<namespace>/<cluster>` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,
}

/// A bucket of an S3-compatible store and the credentials for it: what a backup's destination
/// and a restore's source share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Store {
    /// The store's URL, `https://...` (or `http://` inside a trusted network).
    #[schemars(length(min = 8, max = 2048), pattern(r"^https?://[^\s/]+(/.*)?$"))]
    pub endpoint: String,
    /// The bucket, which must exist.
    #[schemars(length(min = 3, max = 63), pattern(r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"))]
    pub bucket: String,
    /// The region requests are signed for (`us-east-1` when not given).
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64))]
    pub region: String,
    /// Path-style requests (`<endpoint>/<bucket>/<key>`), as MinIO and most stores other than
    /// AWS want; false: virtual-hosted style (the endpoint then names the bucket's host).
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// The Secret, in the cluster's namespace, with the access key id and the secret access key.
    pub credentials_secret: S3CredentialsRef,
}

/// `spec.bootstrap`: how a new cluster's members get their first data. Read when the cluster is
/// created; it cannot change afterwards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Start from a backup instead of empty: every first member restores it before it starts,
    /// so the cluster comes up with its keys, revisions, leases and users.
    pub restore: RestoreSpec,
}

/// `spec.bootstrap.restore`: the snapshot to start from, exactly one of `s3`,
/// `persistentVolumeClaim` and `snapshot`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.s3) ? 1 : 0) + (has(self.persistentVolumeClaim) ? 1 : 0) + (has(self.snapshot) ? 1 : 0) == 1"
).message("spec.bootstrap.restore needs exactly one of s3, persistentVolumeClaim and snapshot"))]
pub struct RestoreSpec {
    #[serde(flatten)]
    pub source: SnapshotSource,
    /// A RaftSnapshot of this namespace that has succeeded: the object it stored. It is read
    /// once, when the cluster is created (`status.restoreSource` keeps what it named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotRef>,
}

/// Where a snapshot file is: one of an S3-compatible store's objects, or a file on a
/// PersistentVolumeClaim.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSource {
    /// An object of an S3-compatible store: a backup (`status.backup.lastSuccess.location` of
    /// the cluster it came from is `s3://<bucket>/<key>`) or any `kuberaft snapshot save` file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Source>,
    /// A file on a PersistentVolumeClaim of this namespace. Every first member mounts the claim
    /// read-only before it starts, so it must allow that (ReadOnlyMany or ReadWriteMany, or
    /// ReadWriteOnce with every member on one node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcSource>,
}

impl SnapshotSource {
    /// Where it is, as the events and `kuberaft snapshot restore` name it.
    pub fn location(&self) -> String {
        match (&self.s3, &self.persistent_volume_claim) {
            (Some(s3), _) => format!("s3://{}/{}", s3.store.bucket, s3.key),
            (None, Some(pvc)) => pvc.location(),
            (None, None) => String::new(),
        }
    }
}

/// A RaftSnapshot by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRef {
    /// The RaftSnapshot's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One file on a PersistentVolumeClaim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// The claim, in the cluster's namespace.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub claim_name: String,
    /// The file's path in the claim (relative, no `..`).
    #[schemars(length(min = 1, max = 1024), pattern(r"^[^/]"))]
    pub path: String,
}

impl PvcSource {
    /// `pvc://<claim>/<path>`.
    pub fn location(&self) -> String {
        format!("pvc://{}/{}", self.claim_name, self.path)
    }
}

/// Whether `path` is a relative path that stays inside its volume: no leading `/`, no `..`,
/// no empty parts.
pub fn valid_volume_path(path: &str) -> bool {
    (1..=1024).contains(&path.len()) && path.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
}

/// One object of an S3-compatible store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Source {
    #[serde(flatten)]
    pub store: S3Store,
    /// The object's whole key in the bucket.
    #[schemars(length(min = 1, max = 1024))]
    pub key: String,
}

fn default_region() -> String {
    "us-east-1".to_string()
}

/// The keys of an S3 credentials Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3CredentialsRef {
    /// The Secret's name.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// The key of the access key id (`accessKeyId` when not given).
    #[serde(default = "default_access_key_id_key")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub access_key_id_key: String,
    /// The key of the secret access key (`secretAccessKey` when not given).
    #[serde(default = "default_secret_access_key_key")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub secret_access_key_key: String,
}

fn default_access_key_id_key() -> String {
    "accessKeyId".to_string()
}

fn default_secret_access_key_key() -> String {
    "secretAccessKey".to_string()
}

/// `spec.auth`: root's password.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// The Secret, in the cluster's namespace, that holds root's password (its bytes as they
    /// are, UTF-8). When it does not exist the operator creates it with a random password. To
    /// change the password, change it in the cluster first (`etcdctl user passwd root`), then in
    /// the Secret.
    pub root_password_secret: SecretKeyRef,
}

/// A key of a Secret in the cluster's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// The key within it; `password` when not given.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_password_key() -> String {
    "password".to_string()
}

/// Where the members' certificates come from: exactly one of `auto` and `certManager`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.auto) != has(self.certManager)")
    .message("spec.tls needs exactly one of auto and certManager"))]
pub struct TlsSpec {
    /// The operator keeps a CA per cluster (Secret `<name>-ca`) and issues every certificate
    /// from it, renewing each when a third of its validity is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<AutoTls>,
    /// cert-manager issues every certificate from this Issuer or ClusterIssuer; it must put the
    /// CA in the Secrets (`ca.crt`), as a CA, Vault or self-signed-CA issuer does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<CertManagerTls>,
}

/// The operator's own CA (`spec.tls.auto`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoTls {
    /// How long each member, client and operator certificate is valid, in days. The CA is valid
    /// for ten years.
    #[serde(default = "default_certificate_days")]
    #[schemars(range(min = 1, max = 3650))]
    pub certificate_days: u32,
}

impl Default for AutoTls {
    fn default() -> Self {
        AutoTls { certificate_days: default_certificate_days() }
    }
}

fn default_certificate_days() -> u32 {
    DEFAULT_CERTIFICATE_DAYS
}

pub const DEFAULT_CERTIFICATE_DAYS: u32 = 90;

/// cert-manager's issuer of the certificates (`spec.tls.certManager`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertManagerTls {
    /// The Issuer (in the cluster's namespace) or ClusterIssuer.
    pub issuer_ref: IssuerRef,
}

/// A cert-manager issuer, as a `Certificate`'s `issuerRef` names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// The issuer's name.
    pub name: String,
    /// `Issuer` (the default) or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    #[schemars(extend("enum" = ["Issuer", "ClusterIssuer"]))]
    pub kind: String,
    /// The issuer's API group: cert-manager.io unless an external issuer's.
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".to_string()
}

fn default_issuer_group() -> String {
    "cert-manager.io".to_string()
}

/// The NetworkPolicy `<name>` of the members (issue 16): only members reach the peer port; the
/// members, the operator and the pods `clientsFrom` selects reach the client port; nothing
/// else reaches a member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Whether the operator creates the NetworkPolicy. Turning it off later leaves the policy in
    /// place (the operator never deletes); delete it by hand.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Who may reach the client port besides the members and the operator, as NetworkPolicy
    /// peers (pod and namespace selectors, IP blocks). When not given: every pod in the
    /// cluster's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients_from: Option<Vec<NetworkPolicyPeer>>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        NetworkPolicySpec { enabled: true, clients_from: None }
    }
}

fn default_true() -> bool {
    true
}

/// The persistent volume of each member (one PersistentVolumeClaim per member).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// The size of each member's volume, as a Kubernetes quantity (`1Gi`, `500Mi`).
    #[serde(default = "default_storage_size")]
    pub size: Quantity,
    /// The StorageClass of the volumes; the cluster's default class when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec { size: default_storage_size(), storage_class_name: None }
    }
}

/// Raft timing, in milliseconds. A member starts an election when it has heard from no leader for
/// a random time between `timeoutMinMs` and `timeoutMaxMs`; a leader sends a heartbeat every
/// `heartbeatIntervalMs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.timeoutMinMs < self.timeoutMaxMs")
        .message("election.timeoutMinMs must be less than election.timeoutMaxMs"),
    validation = Rule::new("self.heartbeatIntervalMs < self.timeoutMinMs")
        .message("election.heartbeatIntervalMs must be less than election.timeoutMinMs")
)]
pub struct ElectionSpec {
    /// The shortest election timeout, in milliseconds.
    #[serde(default = "default_election_timeout_min_ms")]
    #[schemars(range(min = 1, max = MAX_TIMING_MS))]
    pub timeout_min_ms: u64,
    /// The longest election timeout, in milliseconds.
    #[serde(default = "default_election_timeout_max_ms")]
    #[schemars(range(min = 1, max = MAX_TIMING_MS))]
    pub timeout_max_ms: u64,
    /// How often the leader sends heartbeats, in milliseconds.
    #[serde(default = "default_heartbeat_interval_ms")]
    #[schemars(range(min = 1, max = MAX_TIMING_MS))]
    pub heartbeat_interval_ms: u64,
}

impl Default for ElectionSpec {
    fn default() -> Self {
        ElectionSpec {
            timeout_min_ms: DEFAULT_ELECTION_TIMEOUT_MIN_MS,
            timeout_max_ms: DEFAULT_ELECTION_TIMEOUT_MAX_MS,
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
        }
    }
}

/// What the operator last observed of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RaftClusterStatus {
    /// The `metadata.generation` of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Bootstrapping, Running, Scaling, Degraded, QuorumLost or Paused (the planner's `Phase`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// How many members the StatefulSet runs (the scale subresource reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// How many members are ready (healthy and following the leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<u32>,
    /// The name of the leading member (`<cluster>-<ordinal>`); absent without a leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The leader's Raft term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// The leader's commit index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_index: Option<u64>,
    /// Every member of the committed Raft membership, by ordinal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// The client URLs of the members: the endpoint list that every peer reads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// The hash of the committed membership, equal on every member that agrees on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership_hash: Option<String>,
    /// With `spec.tls`: the Secret that applications mount to reach the cluster: `ca.crt`, and a
    /// client certificate (`tls.crt`, `tls.key`) for the etcd user `client`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// With `spec.auth`, and after it is removed until auth is off: whether auth is on (as the
    /// leader reports it), and the Secret whose password the operator uses as root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthStatus>,
    /// With `spec.backup`: when the last one was due, the last that succeeded and the last
    /// that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
    /// With `spec.bootstrap.restore.snapshot`: the file that RaftSnapshot stored, read when the
    /// cluster was created. The members restore from this, so the RaftSnapshot may go afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_source: Option<SnapshotSource>,
    /// The last quorum-loss recovery asked for with the annotation `kuberaft.io/recover-quorum`:
    /// refused, under way or completed, and what it kept and replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryStatus>,
    /// Available (a leader with quorum), Progressing, Degraded and MembershipConsistent (every
    /// healthy member reports the membership that the endpoint list names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `status.backup`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// The schedule's time of the last backup taken or tried (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    /// The last backup that was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<BackupRecord>,
    /// The last backup that failed, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<BackupFailure>,
}

/// A backup that was kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// When it was finished (RFC 3339).
    pub time: String,
    /// `s3://<bucket>/<key>` or `pvc://<claim>/<path>`.
    pub location: String,
    /// The member it was taken from.
    pub member: String,
    /// The store revision it holds.
    pub revision: i64,
    /// Its size in bytes.
    pub size: u64,
    /// The SHA-256 at its end (lowercase hex), which `kuberaft snapshot status` checks.
    pub sha256: String,
}

/// A backup that failed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupFailure {
    /// When it failed (RFC 3339).
    pub time: String,
    /// CredentialsRejected, EndpointUnreachable, BucketNotFound, NoMember or BackupFailed.
    pub reason: String,
    /// What the store, the member or the Secret said.
    pub message: String,
}

/// `status.recovery`. `request`, `phase` and `message` are about the last request; the other
/// fields about the last recovery that was carried out (a refused request leaves them as they
/// were).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryStatus {
    /// The annotation's value that asked: each new value is one request.
    pub request: String,
    /// Refused, Recovering or Completed.
    pub phase: String,
    /// Why it was refused, or what it does and what may have been lost.
    pub message: String,
    /// The recovery's id, which the members start with (`--quorum-recovery ID:SURVIVOR`) and
    /// which names the set-aside data directories (`data.before-recovery-<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The member whose log was kept: the most complete one that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survivor: Option<String>,
    /// The term of the survivor's last log entry when it was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survivor_last_log_term: Option<u64>,
    /// The index of the survivor's last log entry when it was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survivor_last_log_index: Option<u64>,
    /// The members that were removed and added back with empty data. Writes acknowledged only
    /// by them (and not by the survivor) are lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<String>,
    /// When it started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the cluster was back to what the spec asks for (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
}

/// `status.auth`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthStatus {
    /// Whether auth is on, as the leader last reported it.
    pub enabled: bool,
    /// The Secret holding root's password, which the operator calls members with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_password_secret: Option<SecretKeyRef>,
}

/// One member of the cluster, as it reports itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// The member's name, which is its pod's name (`<cluster>-<ordinal>`).
    pub name: String,
    /// The member's Raft id, in hex as `kuberaft member list` prints it.
    pub id: String,
    /// leader, follower, candidate or learner.
    pub role: String,
    /// Whether the member answers and follows the leader in its term.
    pub healthy: bool,
    /// The index of the last log entry that the member has applied.
    pub applied_index: u64,
    /// How many entries the member's applied index is behind the leader's commit index.
    pub lag: u64,
}

fn default_replicas() -> u32 {
    DEFAULT_REPLICAS
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_string()
}

fn default_storage_size() -> Quantity {
    Quantity(DEFAULT_STORAGE_SIZE.to_string())
}

fn default_election_timeout_min_ms() -> u64 {
    DEFAULT_ELECTION_TIMEOUT_MIN_MS
}

fn default_election_timeout_max_ms() -> u64 {
    DEFAULT_ELECTION_TIMEOUT_MAX_MS
}

fn default_heartbeat_interval_ms() -> u64 {
    DEFAULT_HEARTBEAT_INTERVAL_MS
}

fn default_snapshot_threshold() -> u64 {
    DEFAULT_SNAPSHOT_THRESHOLD
}

impl RaftClusterSpec {
    /// The same rules as the CRD schema, checked again by the operator and `kuberaft render`: a
    /// resource stored before the schema had a rule, or written past it (an older CRD, a
    /// `kubectl replace --validate=false`), must wait with a clear condition rather than run.
    /// Returns every problem found, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(MIN_REPLICAS..=MAX_REPLICAS).contains(&self.replicas) {
            problems.push(format!("spec.replicas is {}; it must be {MIN_REPLICAS} to {MAX_REPLICAS}", self.replicas));
        }
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            problems.push(format!("spec.image {:?} is not an image reference", self.image));
        }
        if !valid_quantity(&self.storage.size.0) {
            problems.push(format!(
                "spec.storage.size {:?} is not a positive quantity such as 1Gi or 500Mi",
                self.storage.size.0
            ));
        }
        let e = &self.election;
        for (field, value) in [
            ("timeoutMinMs", e.timeout_min_ms),
            ("timeoutMaxMs", e.timeout_max_ms),
            ("heartbeatIntervalMs", e.heartbeat_interval_ms),
        ] {
            if value == 0 || value > MAX_TIMING_MS {
                problems.push(format!("spec.election.{field} is {value}; it must be 1 to {MAX_TIMING_MS}"));
            }
        }
        if e.timeout_min_ms >= e.timeout_max_ms {
            problems.push(format!(
                "spec.election.timeoutMinMs ({}) must be less than spec.election.timeoutMaxMs ({})",
                e.timeout_min_ms, e.timeout_max_ms
            ));
        }
        if e.heartbeat_interval_ms >= e.timeout_min_ms {
            problems.push(format!(
                "spec.election.heartbeatIntervalMs ({}) must be less than spec.election.timeoutMinMs ({})",
                e.heartbeat_interval_ms, e.timeout_min_ms
            ));
        }
        if self.snapshot_threshold == 0 {
            problems.push("spec.snapshotThreshold must be at least 1".to_string());
        }
        if let Some(tls) = &self.tls {
            match (&tls.auto, &tls.cert_manager) {
                (Some(_), Some(_)) | (None, None) => {
                    problems.push("spec.tls needs exactly one of auto and certManager".to_string())
                }
                (Some(auto), None) if !(1..=3650).contains(&auto.certificate_days) => problems
                    .push(format!("spec.tls.auto.certificateDays is {}; it must be 1 to 3650", auto.certificate_days)),
                (None, Some(cm)) => {
                    let issuer = &cm.issuer_ref;
                    if issuer.name.trim().is_empty() {
                        problems.push("spec.tls.certManager.issuerRef.name is empty".to_string());
                    }
                    if !matches!(issuer.kind.as_str(), "Issuer" | "ClusterIssuer") {
                        problems.push(format!(
                            "spec.tls.certManager.issuerRef.kind {:?} is neither Issuer nor ClusterIssuer",
                            issuer.kind
                        ));
                    }
                }
                _ => {}
            }
        }
        if let Some(auth) = &self.auth {
            let secret = &auth.root_password_secret;
            secret_name_problem(&mut problems, "spec.auth.rootPasswordSecret.name", &secret.name);
            secret_key_problem(&mut problems, "spec.auth.rootPasswordSecret.key", &secret.key);
        }
        if let Some(backup) = &self.backup {
            if let Err(why) = super::backup::parse_schedule(&backup.schedule) {
                problems.push(format!(
                    "spec.backup.schedule {:?} is not a cron schedule of five fields: {why}",
                    backup.schedule
                ));
            }
            if backup.retention.count == 0 || backup.retention.count > 1000 {
                problems
                    .push(format!("spec.backup.retention.count is {}; it must be 1 to 1000", backup.retention.count));
            }
            if backup.retention.max_age_hours == Some(0) {
                problems.push("spec.backup.retention.maxAgeHours must be at least 1".to_string());
            }
            destination_problems(&mut problems, "spec.backup.destination", &backup.destination);
        }
        if let Some(bootstrap) = &self.bootstrap {
            let restore = &bootstrap.restore;
            source_problems(&mut problems, "spec.bootstrap.restore", &restore.source);
            let given = [
                restore.source.s3.is_some(),
                restore.source.persistent_volume_claim.is_some(),
                restore.snapshot.is_some(),
            ];
            if given.iter().filter(|g| **g).count() != 1 {
                problems.push(
                    "spec.bootstrap.restore needs exactly one of s3, persistentVolumeClaim and snapshot".to_string(),
                );
            }
            if let Some(snapshot) = &restore.snapshot {
                if !valid_dns_subdomain(&snapshot.name) {
                    problems.push(format!(
                        "spec.bootstrap.restore.snapshot.name {:?} is not a resource name",
                        snapshot.name
                    ));
                }
            }
        }
        problems
    }
}

/// The rules of a backup's destination (`field` is where it is in the spec) the schema has too.
pub(crate) fn destination_problems(problems: &mut Vec<String>, field: &str, destination: &BackupDestination) {
    match (&destination.s3, &destination.persistent_volume_claim) {
        (Some(s3), None) => s3_store_problems(problems, &format!("{field}.s3"), &s3.store),
        (None, Some(pvc)) => {
            if !valid_dns_subdomain(&pvc.claim_name) {
                problems.push(format!(
                    "{field}.persistentVolumeClaim.claimName {:?} is not a claim's name",
                    pvc.claim_name
                ));
            }
            if let Some(prefix) = pvc.prefix.as_deref().filter(|p| !valid_volume_path(p)) {
                problems.push(format!(
                    "{field}.persistentVolumeClaim.prefix {prefix:?} is not a relative path inside the claim"
                ));
            }
        }
        _ => problems.push(format!("{field} needs exactly one of s3 and persistentVolumeClaim")),
    }
}

/// The rules of a snapshot's source (`field` is where it is in the spec) the schema has too.
pub(crate) fn source_problems(problems: &mut Vec<String>, field: &str, source: &SnapshotSource) {
    if let Some(s3) = &source.s3 {
        s3_store_problems(problems, &format!("{field}.s3"), &s3.store);
        if s3.key.is_empty() || s3.key.len() > 1024 {
            problems.push(format!("{field}.s3.key must be 1 to 1024 bytes"));
        }
    }
    if let Some(pvc) = &source.persistent_volume_claim {
        if !valid_dns_subdomain(&pvc.claim_name) {
            problems
                .push(format!("{field}.persistentVolumeClaim.claimName {:?} is not a claim's name", pvc.claim_name));
        }
        if !valid_volume_path(&pvc.path) {
            problems.push(format!(
                "{field}.persistentVolumeClaim.path {:?} is not a relative path inside the claim",
                pvc.path
            ));
        }
    }
}

/// The rules of an S3 store (`field` is where it is in the spec) the schema has too.
fn s3_store_problems(problems: &mut Vec<String>, field: &str, s3: &S3Store) {
    let host = s3.endpoint.strip_prefix("https://").or_else(|| s3.endpoint.strip_prefix("http://"));
    let host = host.map(|rest| rest.split('/').next().unwrap_or_default());
    if !host.is_some_and(|h| !h.is_empty() && !h.contains(char::is_whitespace)) {
        problems.push(format!("{field}.endpoint {:?} is not an http(s) URL", s3.endpoint));
    }
    let bucket_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.');
    if !(3..=63).contains(&s3.bucket.len()) || !s3.bucket.chars().all(bucket_char) {
        problems.push(format!(
            "{field}.bucket {:?} is not a bucket name (3 to 63 lowercase letters, digits, '-' and '.')",
            s3.bucket
        ));
    }
    let secret = &s3.credentials_secret;
    secret_name_problem(problems, &format!("{field}.credentialsSecret.name"), &secret.name);
    for (key_field, key) in
        [("accessKeyIdKey", &secret.access_key_id_key), ("secretAccessKeyKey", &secret.secret_access_key_key)]
    {
        secret_key_problem(problems, &format!("{field}.credentialsSecret.{key_field}"), key);
    }
}

/// A Secret's name that is not one, said at `field`.
fn secret_name_problem(problems: &mut Vec<String>, field: &str, name: &str) {
    if !valid_dns_subdomain(name) {
        problems.push(format!(
            "{field} {name:?} is not a Secret name (a DNS subdomain: lowercase letters, digits, '-' and '.', at most 253)"
        ));
    }
}

/// A Secret's key that is not one, said at `field`.
fn secret_key_problem(problems: &mut Vec<String>, field: &str, key: &str) {
    let key_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if key.is_empty() || key.len() > 253 || !key.chars().all(key_char) {
        problems.push(format!("{field} {key:?} is not a Secret key (letters, digits, '-', '_' and '.', at most 253)"));
    }
}

/// A DNS subdomain (RFC 1123), as Kubernetes names most objects: at most 253 characters of
/// dot-separated labels, each lowercase letters, digits and '-', starting and ending alphanumeric.
fn valid_dns_subdomain(text: &str) -> bool {
    !text.is_empty() && text.len() <= 253 && text.split('.').all(valid_dns_label)
}

/// A DNS label (RFC 1123): at most 63 lowercase letters, digits and '-', starting and ending
/// alphanumeric.
fn valid_dns_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// The longest timing (an election timeout of ten minutes is already no election at all).
pub const MAX_TIMING_MS: u64 = 600_000;

/// A Kubernetes quantity that is positive: digits (with an optional fraction), then an optional
/// binary or decimal suffix or exponent.
fn valid_quantity(text: &str) -> bool {
    let number_end = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let positive = number.parse::<f64>().is_ok_and(|n| n > 0.0 && n.is_finite());
    let suffix_ok = matches!(suffix, "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "k" | "M" | "G" | "T" | "P" | "E")
        || suffix.strip_prefix(['e', 'E']).is_some_and(|exp| {
            !exp.is_empty() && exp.trim_start_matches(['+', '-']).chars().all(|c| c.is_ascii_digit())
        });
    positive && suffix_ok
}

/// The CRDs `kuberaft crd NAME` prints, each with the file in `crds/` (and the chart's) that
/// holds it: `crds/<plural>.kuberaft.io.yaml`.
pub const CRD_NAMES: [&str; 2] = ["raftclusters", "raftsnapshots"];

/// The CRD named by its plural (one of [`CRD_NAMES`]) as YAML, without the header comment.
pub fn crd_yaml(plural: &str) -> Result<String, String> {
    let crd = match plural {
        "raftclusters" => RaftCluster::crd(),
        "raftsnapshots" => snapshot::RaftSnapshot::crd(),
        other => return Err(format!("no CRD {other:?}: one of {}", CRD_NAMES.join(", "))),
    };
    serde_saphyr::to_string(&crd).map_err(|e| format!("encode the CRD {plural} as YAML: {e}"))
}

/// What `kuberaft crd NAME` prints, and `crds/<NAME>.kuberaft.io.yaml` holds: the header comment
/// and the CRD as YAML.
pub fn crd_file(plural: &str) -> Result<String, String> {
    Ok(format!("{}{}", crd_header(plural), crd_yaml(plural)?))
}

/// The comment line ahead of a CRD file, so that the file says where it comes from.
pub fn crd_header(plural: &str) -> String {
    format!(
        "# Generated by `kuberaft crd {plural}` from src/operator/crd.rs; never edit by hand: \
         `kuberaft crd {plural} > crds/{plural}.kuberaft.io.yaml`.\n"
    )
}

#[cfg(test)]
mod tests;
