//! The `RaftSnapshot` custom resource (DESIGN.md §6, one-shot backups): one backup of one
//! RaftCluster, taken once, to the cluster's backup destination or its own. Its status says
//! where the object is, what it holds and how it went; `deletionPolicy: Delete` removes the
//! object with the resource (a finalizer holds the resource until the object is gone).

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BackupDestination, SnapshotSource};

/// The finalizer that holds a `deletionPolicy: Delete` snapshot until its object is deleted.
pub const FINALIZER: &str = "kuberaft.io/snapshot-object";

/// One backup of a RaftCluster, taken once.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "kuberaft.io",
    version = "v1alpha1",
    kind = "RaftSnapshot",
    plural = "raftsnapshots",
    namespaced,
    shortname = "raftsnap",
    status = "RaftSnapshotStatus",
    derive = "PartialEq",
    doc = "One backup of a RaftCluster, taken once by the kuberaft operator.",
    printcolumn = r#"{"name":"CLUSTER","type":"string","description":"The RaftCluster","jsonPath":".spec.clusterName"}"#,
    printcolumn = r#"{"name":"PHASE","type":"string","description":"Pending, Running, Succeeded or Failed","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"REVISION","type":"integer","description":"The store revision it holds","jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"SIZE","type":"integer","description":"Bytes","jsonPath":".status.size"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("a RaftSnapshot's spec cannot change: create another one"))]
pub struct RaftSnapshotSpec {
    /// The RaftCluster, in this namespace, to back up.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub cluster_name: String,
    /// Where to keep it: the cluster's `spec.backup.destination` when not given. The object is
    /// `<prefix>/snapshots/<name>-<time>-r<revision>.snap`, apart from the scheduled backups,
    /// so their retention never prunes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<BackupDestination>,
    /// What happens to the stored object when this resource is deleted: `Retain` (the default)
    /// keeps it, `Delete` deletes it first.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// `spec.deletionPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Delete,
}

/// `status` of a RaftSnapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RaftSnapshotStatus {
    /// Pending (waiting for the cluster or a leader), Running, Succeeded or Failed. Succeeded
    /// and Failed are final: create another RaftSnapshot to try again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why it waits or failed: ClusterNotFound, ClusterPaused, NoMember, NoDestination,
    /// InvalidSpec, CredentialsMissing, CredentialsRejected, EndpointUnreachable,
    /// BucketNotFound, BackupFailed; or DeleteFailed while the object cannot be deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `s3://<bucket>/<key>` or `pvc://<claim>/<path>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The file, as `spec.bootstrap.restore` of a new RaftCluster takes it (`s3` or
    /// `persistentVolumeClaim`); or name this RaftSnapshot there (`snapshot.name`).
    #[serde(flatten)]
    pub source: SnapshotSource,
    /// The member it was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The store revision it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Its size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The SHA-256 at its end (lowercase hex), which `kuberaft snapshot status` checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// When the transfer started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it succeeded or failed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
}

/// The phases.
pub const PENDING: &str = "Pending";
pub const RUNNING: &str = "Running";
pub const SUCCEEDED: &str = "Succeeded";
pub const FAILED: &str = "Failed";

impl RaftSnapshotStatus {
    /// Succeeded or Failed: nothing more is done but the deletion.
    pub fn finished(&self) -> bool {
        matches!(self.phase.as_deref(), Some(SUCCEEDED | FAILED))
    }
}

impl RaftSnapshotSpec {
    /// The schema's rules, checked again (a resource written past an older CRD).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !super::valid_dns_label(&self.cluster_name) {
            problems.push(format!("spec.clusterName {:?} is not a RaftCluster's name", self.cluster_name));
        }
        if let Some(destination) = &self.destination {
            super::destination_problems(&mut problems, "spec.destination", destination);
        }
        problems
    }
}
