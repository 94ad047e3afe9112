//! The objects that a `RaftCluster` owns (DESIGN.md §6), built by pure functions from the
//! resource alone: the headless Service that gives each member a stable DNS name, the client
//! Service, the ConfigMap with the endpoint list every peer reads, the StatefulSet that runs the
//! members, the PodDisruptionBudget, and the NetworkPolicy. The controller applies what these return with
//! server-side apply; every object carries a controller owner reference to its `RaftCluster`, so
//! the garbage collector removes it with the cluster.
//!
//! Label keys, port names and object names live here once, so the StatefulSet, the Services and
//! the selectors cannot disagree.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapKeySelector, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ProjectedVolumeSource, SeccompProfile, SecretKeySelector, SecretProjection, SecurityContext, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeProjection, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use super::crd::{RaftCluster, S3CredentialsRef, S3Store};
use crate::base::ids::fnv1a;
use crate::base::wire::{DEFAULT_CLIENT_PORT, DEFAULT_PEER_PORT};

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

pub const APP_NAME: &str = "kuberaft";
pub const COMPONENT_MEMBER: &str = "raft-member";
pub const MANAGED_BY: &str = "kuberaft-operator";

pub const CLIENT_PORT_NAME: &str = "client";
pub const PEER_PORT_NAME: &str = "peer";
/// With `spec.tls`, probes and scrapes go to a plain listener of their own
/// (`--listen-metrics-urls`), on etcd's metrics port: the kubelet presents no client certificate.
pub const METRICS_PORT_NAME: &str = "metrics";
pub const METRICS_PORT: u16 = 2381;
/// Where the members' certificates are mounted (`<member>.crt`, `<member>.key`, `ca.crt`).
pub const TLS_VOLUME: &str = "tls";
pub const TLS_MOUNT_PATH: &str = "/var/run/secrets/kuberaft/tls";

/// The keys of the members ConfigMap.
pub const KEY_INITIAL_CLUSTER: &str = "initial-cluster";
pub const KEY_ENDPOINTS: &str = "endpoints";
pub const KEY_MEMBERS: &str = "members";
pub const KEY_ENDPOINTS_HASH: &str = "endpoints-hash";
/// `new` until the cluster has elected its first leader, then `existing` (DESIGN.md §6): a pod that
/// starts with empty data after that joins under the id the cluster knows it by, and never
/// bootstraps a second cluster.
pub const KEY_INITIAL_CLUSTER_STATE: &str = "initial-cluster-state";

/// The state values of [`KEY_INITIAL_CLUSTER_STATE`], as `kuberaft node --initial-cluster-state`
/// spells them.
pub const STATE_NEW: &str = "new";
pub const STATE_EXISTING: &str = "existing";

/// The name of each member's volume claim template (its PVCs are `data-<member>`), and where the
/// volume is mounted. The data directory is a subdirectory, so that a fresh file system's
/// `lost+found` is not in it.
pub const DATA_VOLUME: &str = "data";
pub const DATA_MOUNT_PATH: &str = "/var/lib/kuberaft";
pub const DATA_DIR: &str = "/var/lib/kuberaft/data";
/// The container's name, and the command it runs (the image puts the binary on `PATH`).
pub const CONTAINER_NAME: &str = "kuberaft";
pub const CONTAINER_COMMAND: &str = "kuberaft";
/// The pod template annotation with the hash of what the pods are made from.
pub const POD_TEMPLATE_HASH_ANNOTATION: &str = "kuberaft.io/pod-template-hash";
/// A RaftCluster annotation that asks for a rolling restart of its members when it changes
/// (`kubectl annotate raft etcd kuberaft.io/restart="$(date)" --overwrite`).
pub const RESTART_ANNOTATION: &str = "kuberaft.io/restart";
/// A RaftCluster annotation that asks for a quorum-loss recovery (DESIGN.md §6), once per new
/// value (`kubectl annotate raft etcd kuberaft.io/recover-quorum="$(date)" --overwrite`).
pub const RECOVER_QUORUM_ANNOTATION: &str = "kuberaft.io/recover-quorum";
/// The members' variable that carries a recovery that was carried out (`--quorum-recovery`).
pub const ENV_QUORUM_RECOVERY: &str = "KUBERAFT_QUORUM_RECOVERY";
/// The init container that restores `spec.bootstrap.restore` into each first member.
pub const RESTORE_CONTAINER_NAME: &str = "restore";
/// The volume and the mount path of a restore's claim (`spec.bootstrap.restore.persistentVolumeClaim`).
pub const RESTORE_VOLUME: &str = "restore";
pub const RESTORE_MOUNT_PATH: &str = "/var/lib/kuberaft-restore";
/// Where it reads the store's credentials (`kuberaft snapshot restore` of an `s3://` file).
pub const ENV_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const ENV_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// The user and group members run as (no root; the volume is group-writable through fsGroup).
pub const RUN_AS_USER: i64 = 65532;
/// Long enough for a leader's hand-over on SIGTERM (at most 5 s) and a final fsync.
pub const TERMINATION_GRACE_SECONDS: i64 = 30;
/// The exit codes of `kuberaft node` when it refuses to start because its data is gone while the
/// cluster still counts on it (DESIGN.md §6), or damaged (DESIGN.md §3): the operator reads them
/// from the pod to replace the member.
pub use crate::base::exit::{EXIT_CORRUPT, EXIT_DATA_LOST};

/// Why an owned object cannot be built yet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("RaftCluster {0} has no namespace; it is a namespaced resource, so read it from the API server")]
    MissingNamespace(String),
    #[error("RaftCluster {0} has no uid yet; build its objects from the resource as the API server returns it")]
    MissingUid(String),
    #[error("cannot encode an object: {0}")]
    Encode(String),
    #[error(
        "spec.bootstrap.restore.snapshot names RaftSnapshot {0}: the operator reads its file from the API server before it builds the pods"
    )]
    UnresolvedRestore(String),
}

/// The name of the headless Service (and of the StatefulSet and PodDisruptionBudget): the cluster's.
pub fn headless_service_name(cluster: &RaftCluster) -> String {
    cluster.name_any()
}

pub fn client_service_name(cluster: &RaftCluster) -> String {
    client_service_name_of(&cluster.name_any())
}

/// The client Service's name for the cluster named `cluster`.
pub fn client_service_name_of(cluster: &str) -> String {
    format!("{cluster}-client")
}

pub fn members_config_map_name(cluster: &RaftCluster) -> String {
    format!("{}-members", cluster.name_any())
}

/// The labels that select the members of this cluster; they never change, since a StatefulSet's
/// selector is immutable.
pub fn selector_labels(cluster: &RaftCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), APP_NAME.to_string()),
        (LABEL_INSTANCE.to_string(), cluster.name_any()),
        (LABEL_COMPONENT.to_string(), COMPONENT_MEMBER.to_string()),
    ])
}

/// The labels of every owned object: the selector labels and who manages it.
pub fn labels(cluster: &RaftCluster) -> BTreeMap<String, String> {
    let mut labels = selector_labels(cluster);
    labels.insert(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string());
    labels
}

/// The controller owner reference that every owned object carries.
pub fn owner_reference(cluster: &RaftCluster) -> Result<OwnerReference, BuildError> {
    let uid = cluster.uid().ok_or_else(|| BuildError::MissingUid(cluster.name_any()))?;
    Ok(OwnerReference {
        api_version: RaftCluster::api_version(&()).into_owned(),
        kind: RaftCluster::kind(&()).into_owned(),
        name: cluster.name_any(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// The DNS name of a member through the headless Service: `etcd-0.etcd.ns.svc`.
pub fn member_host(cluster: &RaftCluster, namespace: &str, member: &str) -> String {
    format!("{member}.{}.{namespace}.svc", headless_service_name(cluster))
}

/// `https` with `spec.tls`, `http` without.
pub fn scheme(cluster: &RaftCluster) -> &'static str {
    if cluster.spec.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

pub fn peer_url(cluster: &RaftCluster, namespace: &str, member: &str) -> String {
    format!("{}://{}:{DEFAULT_PEER_PORT}", scheme(cluster), member_host(cluster, namespace, member))
}

pub fn client_url(cluster: &RaftCluster, namespace: &str, member: &str) -> String {
    format!("{}://{}:{DEFAULT_CLIENT_PORT}", scheme(cluster), member_host(cluster, namespace, member))
}

/// The metadata of an owned object named `name`.
pub(super) fn object_meta(cluster: &RaftCluster, name: String) -> Result<ObjectMeta, BuildError> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(namespace(cluster)?),
        labels: Some(labels(cluster)),
        owner_references: Some(vec![owner_reference(cluster)?]),
        ..ObjectMeta::default()
    })
}

fn namespace(cluster: &RaftCluster) -> Result<String, BuildError> {
    cluster.namespace().ok_or_else(|| BuildError::MissingNamespace(cluster.name_any()))
}

fn service_port(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    }
}

/// The headless Service `<name>`, which gives each member the DNS name `<member>.<name>.<ns>.svc`.
/// It publishes members that are not ready, because members must reach each other to elect the
/// leader that makes them ready.
pub fn headless_service(cluster: &RaftCluster) -> Result<Service, BuildError> {
    Ok(Service {
        metadata: object_meta(cluster, headless_service_name(cluster))?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(cluster)),
            ports: Some(vec![
                service_port(CLIENT_PORT_NAME, DEFAULT_CLIENT_PORT),
                service_port(PEER_PORT_NAME, DEFAULT_PEER_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The client Service `<name>-client`: one stable address for clients, over ready members only.
pub fn client_service(cluster: &RaftCluster) -> Result<Service, BuildError> {
    Ok(Service {
        metadata: object_meta(cluster, client_service_name(cluster))?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(selector_labels(cluster)),
            ports: Some(vec![service_port(CLIENT_PORT_NAME, DEFAULT_CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The hash of a member list, in hex: equal for equal lists (in order), so a pod template can
/// carry it and a reader can tell whether its list is current.
pub fn endpoints_hash(member_names: &[String]) -> String {
    let parts: Vec<&[u8]> = member_names.iter().map(|name| name.as_bytes()).collect();
    format!("{:016x}", fnv1a(&parts))
}

/// The ConfigMap `<name>-members`: the endpoint list every peer reads. `member_names` is the list
/// the planner decided on (it names a learner before its pod starts, DESIGN.md §6); `formed` says
/// whether the cluster has elected its first leader (the `initial-cluster-state` pods start with).
pub fn members_config_map(
    cluster: &RaftCluster,
    member_names: &[String],
    formed: bool,
) -> Result<ConfigMap, BuildError> {
    let namespace = namespace(cluster)?;
    let join = |url: fn(&RaftCluster, &str, &str) -> String, with_name: bool| {
        member_names
            .iter()
            .map(|member| {
                let url = url(cluster, &namespace, member);
                if with_name {
                    format!("{member}={url}")
                } else {
                    url
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let data = BTreeMap::from([
        (KEY_INITIAL_CLUSTER.to_string(), join(peer_url, true)),
        (KEY_ENDPOINTS.to_string(), join(client_url, false)),
        (KEY_MEMBERS.to_string(), member_names.join(",")),
        (KEY_ENDPOINTS_HASH.to_string(), endpoints_hash(member_names)),
        (KEY_INITIAL_CLUSTER_STATE.to_string(), if formed { STATE_EXISTING } else { STATE_NEW }.to_string()),
    ]);
    Ok(ConfigMap {
        metadata: object_meta(cluster, members_config_map_name(cluster))?,
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// The PodDisruptionBudget `<name>`. It allows one voluntary disruption at a time rather than
/// requiring `minAvailable` = quorum: with maxUnavailable 1 the budget stays right while the
/// operator scales one member at a time (no update of the budget per step), never lets a drain
/// take two members of a 3-member cluster, and still lets a 1-member cluster's node drain.
/// A pod that is not ready may always be evicted (`unhealthyPodEvictionPolicy: AlwaysAllow`):
/// a quorum-loss recovery must restart members while none is ready (with the default policy the
/// budget would refuse every eviction then), as must a drain of a node whose member crash-loops.
/// The cost (DESIGN.md §6): a drain may take a member that is not ready only because it is
/// catching up, while it counts toward commits.
pub fn pod_disruption_budget(cluster: &RaftCluster) -> Result<PodDisruptionBudget, BuildError> {
    Ok(PodDisruptionBudget {
        metadata: object_meta(cluster, cluster.name_any())?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector_labels(cluster)), ..LabelSelector::default() }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_string()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// Where the operator runs, so that the members' NetworkPolicy lets it reach their client port:
/// its namespace and its pods' labels (the chart passes both; `kuberaft render` assumes the
/// chart's defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorPeer {
    pub namespace: String,
    /// Empty: every pod of the namespace.
    pub pod_labels: BTreeMap<String, String>,
}

impl Default for OperatorPeer {
    fn default() -> Self {
        OperatorPeer {
            namespace: "kuberaft-system".to_string(),
            pod_labels: BTreeMap::from([
                (LABEL_NAME.to_string(), APP_NAME.to_string()),
                (LABEL_COMPONENT.to_string(), "operator".to_string()),
            ]),
        }
    }
}

/// The NetworkPolicy `<name>` (`spec.networkPolicy`): ingress to the members only on the peer
/// port from members, and on the client port from members (followers forward to the leader),
/// the operator, and `clientsFrom` (the cluster's namespace when not given). Egress is left
/// alone. Kubelet probes come from the node, which NetworkPolicy implementations let through.
pub fn network_policy(cluster: &RaftCluster, operator: &OperatorPeer) -> Result<NetworkPolicy, BuildError> {
    let selector =
        |labels: BTreeMap<String, String>| LabelSelector { match_labels: Some(labels), ..LabelSelector::default() };
    let members =
        NetworkPolicyPeer { pod_selector: Some(selector(selector_labels(cluster))), ..NetworkPolicyPeer::default() };
    let port = |name: &str| NetworkPolicyPort {
        port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".to_string()),
        ..NetworkPolicyPort::default()
    };
    let operator_namespace = BTreeMap::from([("kubernetes.io/metadata.name".to_string(), operator.namespace.clone())]);
    let operator = NetworkPolicyPeer {
        namespace_selector: Some(selector(operator_namespace)),
        pod_selector: Some(selector(operator.pod_labels.clone())),
        ..NetworkPolicyPeer::default()
    };
    let same_namespace =
        NetworkPolicyPeer { pod_selector: Some(LabelSelector::default()), ..NetworkPolicyPeer::default() };
    let clients = cluster.spec.network_policy.clients_from.clone().unwrap_or_else(|| vec![same_namespace]);
    // The operator's backup Jobs (a claim destination) take their snapshots from a member.
    let backups = NetworkPolicyPeer {
        pod_selector: Some(selector(super::backup::job::pod_labels(&cluster.name_any()))),
        ..NetworkPolicyPeer::default()
    };
    let mut client_peers = vec![members.clone(), operator, backups];
    client_peers.extend(clients);
    let mut ingress = vec![
        NetworkPolicyIngressRule { from: Some(vec![members]), ports: Some(vec![port(PEER_PORT_NAME)]) },
        NetworkPolicyIngressRule { from: Some(client_peers), ports: Some(vec![port(CLIENT_PORT_NAME)]) },
    ];
    if cluster.spec.tls.is_some() {
        // Probes and scrapes: health and metrics only, no keys, from anywhere.
        ingress.push(NetworkPolicyIngressRule { from: None, ports: Some(vec![port(METRICS_PORT_NAME)]) });
    }
    Ok(NetworkPolicy {
        metadata: object_meta(cluster, cluster.name_any())?,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(selector_labels(cluster))),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    })
}

/// The `initial-cluster-token` of the members: the resource's uid, so that two clusters, even
/// of the same name, never accept each other's messages.
pub fn cluster_token(cluster: &RaftCluster) -> Result<String, BuildError> {
    cluster.uid().ok_or_else(|| BuildError::MissingUid(cluster.name_any()))
}

/// The StatefulSet `<name>` with `replicas` pods (the planner decides how many; the spec's count
/// is reached one member at a time). Pods start in parallel, since a cluster's first members must
/// all run to elect a leader; each reads the endpoint list from the members ConfigMap when it
/// starts, and its own name and namespace from the downward API.
pub fn stateful_set(cluster: &RaftCluster, replicas: u32) -> Result<StatefulSet, BuildError> {
    let spec = &cluster.spec;
    let headless = headless_service_name(cluster);
    let config_map = members_config_map_name(cluster);
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector { field_path: path.to_string(), ..ObjectFieldSelector::default() }),
        ..EnvVarSource::default()
    };
    let from_config_map = |key: &str| EnvVarSource {
        config_map_key_ref: Some(ConfigMapKeySelector {
            name: config_map.clone(),
            key: key.to_string(),
            optional: Some(false),
        }),
        ..EnvVarSource::default()
    };
    let value = |name: &str, value: String| EnvVar { name: name.to_string(), value: Some(value), value_from: None };
    let from =
        |name: &str, source: EnvVarSource| EnvVar { name: name.to_string(), value: None, value_from: Some(source) };
    // `$(POD_NAME)` is expanded by the kubelet from the variables defined before it.
    let scheme = scheme(cluster);
    let member_url = |port: u16| format!("{scheme}://$(POD_NAME).{headless}.$(POD_NAMESPACE).svc:{port}");
    let token = cluster_token(cluster)?;
    let mut env = vec![
        from("POD_NAME", field("metadata.name")),
        from("POD_NAMESPACE", field("metadata.namespace")),
        value("KUBERAFT_NAME", "$(POD_NAME)".to_string()),
        value("KUBERAFT_DATA_DIR", DATA_DIR.to_string()),
        value("KUBERAFT_LISTEN_CLIENT_URL", format!("{scheme}://0.0.0.0:{DEFAULT_CLIENT_PORT}")),
        value("KUBERAFT_LISTEN_PEER_URL", format!("{scheme}://0.0.0.0:{DEFAULT_PEER_PORT}")),
        value("KUBERAFT_ADVERTISE_CLIENT_URL", member_url(DEFAULT_CLIENT_PORT)),
        value("KUBERAFT_ADVERTISE_PEER_URL", member_url(DEFAULT_PEER_PORT)),
        from("KUBERAFT_INITIAL_CLUSTER", from_config_map(KEY_INITIAL_CLUSTER)),
        from("KUBERAFT_INITIAL_CLUSTER_STATE", from_config_map(KEY_INITIAL_CLUSTER_STATE)),
        value("KUBERAFT_INITIAL_CLUSTER_TOKEN", token.clone()),
        value(
            "KUBERAFT_ELECTION_TIMEOUT_MS",
            format!("{}-{}", spec.election.timeout_min_ms, spec.election.timeout_max_ms),
        ),
        value("KUBERAFT_HEARTBEAT_INTERVAL_MS", spec.election.heartbeat_interval_ms.to_string()),
        value("KUBERAFT_SNAPSHOT_THRESHOLD", spec.snapshot_threshold.to_string()),
        value("KUBERAFT_LOG_FORMAT", "json".to_string()),
    ];
    // After a quorum-loss recovery every pod starts with it: the survivor's once forces a new
    // cluster, every other's once sets its old data aside (`kuberaft node --quorum-recovery`).
    let recovery = cluster.status.as_ref().and_then(|s| s.recovery.as_ref());
    if let Some((id, survivor)) = recovery.and_then(|r| r.id.as_ref().zip(r.survivor.as_ref())) {
        env.push(value(ENV_QUORUM_RECOVERY, format!("{id}:{survivor}")));
    }
    let tls = spec.tls.is_some();
    if tls {
        // Each member its own certificate, for both ports and its calls; clients and peers must
        // present one of the cluster's CA, and a peer's must name it (DESIGN.md §6).
        let own = |ext: &str| format!("{TLS_MOUNT_PATH}/$(POD_NAME).{ext}");
        let ca = format!("{TLS_MOUNT_PATH}/{}", super::certs::KEY_CA);
        env.extend([
            value("KUBERAFT_CERT_FILE", own("crt")),
            value("KUBERAFT_KEY_FILE", own("key")),
            value("KUBERAFT_TRUSTED_CA_FILE", ca.clone()),
            value("KUBERAFT_CLIENT_CERT_AUTH", "true".to_string()),
            value("KUBERAFT_PEER_CERT_FILE", own("crt")),
            value("KUBERAFT_PEER_KEY_FILE", own("key")),
            value("KUBERAFT_PEER_TRUSTED_CA_FILE", ca),
            value("KUBERAFT_PEER_CLIENT_CERT_AUTH", "true".to_string()),
            value("KUBERAFT_LISTEN_METRICS_URLS", format!("http://0.0.0.0:{METRICS_PORT}")),
        ]);
    }
    let probe_port = if tls { METRICS_PORT_NAME } else { CLIENT_PORT_NAME };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(probe_port.to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let container_port = |name: &str, port: u16| ContainerPort {
        name: Some(name.to_string()),
        container_port: i32::from(port),
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    };
    let security_context = container_security_context();
    let data_mount = VolumeMount {
        name: DATA_VOLUME.to_string(),
        mount_path: DATA_MOUNT_PATH.to_string(),
        ..VolumeMount::default()
    };
    // The restore's source: an object of a store, or a file of a claim mounted read-only. A
    // RaftSnapshot named is resolved to one of them first (`backup::snapshot::restore_source`).
    if let Some(named) = spec.bootstrap.as_ref().and_then(|b| b.restore.snapshot.as_ref()) {
        return Err(BuildError::UnresolvedRestore(named.name.clone()));
    }
    let source = spec.bootstrap.as_ref().map(|bootstrap| &bootstrap.restore.source);
    let restore_claim = source.and_then(|s| s.persistent_volume_claim.as_ref());
    let restore = source.map(|source| {
        let file = match (&source.s3, restore_claim) {
            (Some(s3), _) => format!("s3://{}/{}", s3.store.bucket, s3.key),
            (None, Some(pvc)) => format!("{RESTORE_MOUNT_PATH}/{}", pvc.path),
            // Refused by the schema and `problems()`.
            (None, None) => String::new(),
        };
        let mut args = restore_args(&file, &token, member_url(DEFAULT_PEER_PORT));
        let mut env = env.clone();
        let mut mounts = vec![data_mount.clone()];
        if let Some(s3) = &source.s3 {
            args.extend(s3_args(&s3.store));
            env.extend(s3_env(&s3.store.credentials_secret));
        }
        if restore_claim.is_some() {
            mounts.push(VolumeMount {
                name: RESTORE_VOLUME.to_string(),
                mount_path: RESTORE_MOUNT_PATH.to_string(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        Container {
            name: RESTORE_CONTAINER_NAME.to_string(),
            image: Some(spec.image.clone()),
            image_pull_policy: Some("IfNotPresent".to_string()),
            command: Some(vec![CONTAINER_COMMAND.to_string()]),
            args: Some(args),
            env: Some(env),
            resources: spec.resources.clone(),
            volume_mounts: Some(mounts),
            security_context: Some(security_context.clone()),
            termination_message_policy: Some("FallbackToLogsOnError".to_string()),
            ..Container::default()
        }
    });
    let container = Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        command: Some(vec![CONTAINER_COMMAND.to_string()]),
        args: Some(vec!["node".to_string()]),
        env: Some(env),
        ports: Some(
            [container_port(CLIENT_PORT_NAME, DEFAULT_CLIENT_PORT), container_port(PEER_PORT_NAME, DEFAULT_PEER_PORT)]
                .into_iter()
                .chain(tls.then(|| container_port(METRICS_PORT_NAME, METRICS_PORT)))
                .collect(),
        ),
        // A member that joins may spend a while finding its peers before it serves.
        startup_probe: Some(probe("/healthz", 2, 60)),
        liveness_probe: Some(probe("/healthz", 10, 6)),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        resources: spec.resources.clone(),
        volume_mounts: Some(
            [data_mount]
                .into_iter()
                .chain(tls.then(|| VolumeMount {
                    name: TLS_VOLUME.to_string(),
                    mount_path: TLS_MOUNT_PATH.to_string(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                }))
                .collect(),
        ),
        security_context: Some(security_context),
        // The refusal to start (lost data, a wrong flag) is the last thing a member logs.
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Container::default()
    };
    let pod_spec = PodSpec {
        init_containers: restore.map(|c| vec![c]),
        containers: vec![container],
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        enable_service_links: Some(false),
        security_context: Some(pod_security_context()),
        affinity: Some(spec.affinity.clone().unwrap_or_else(|| soft_anti_affinity(cluster))),
        node_selector: spec.node_selector.clone(),
        tolerations: spec.tolerations.clone(),
        volumes: {
            let volumes: Vec<Volume> = tls
                .then(|| tls_volume(cluster))
                .into_iter()
                .chain(restore_claim.map(|pvc| claim_volume(RESTORE_VOLUME, &pvc.claim_name, true)))
                .collect();
            (!volumes.is_empty()).then_some(volumes)
        },
        ..PodSpec::default()
    };
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.to_string()),
            labels: Some(selector_labels(cluster)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), spec.storage.size.clone())])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    Ok(StatefulSet {
        metadata: object_meta(cluster, cluster.name_any())?,
        spec: Some(StatefulSetSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            service_name: Some(headless),
            pod_management_policy: Some("Parallel".to_string()),
            selector: LabelSelector { match_labels: Some(selector_labels(cluster)), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(cluster)),
                    annotations: Some(template_annotations(cluster, &pod_spec)?),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            // The operator restarts the pods itself, one at a time and the leader last
            // (`planner::Plan::RestartMember`), never the controller in ordinal order.
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_string()),
                rolling_update: None,
            }),
            volume_claim_templates: Some(vec![claim]),
            // A member removed by scaling down is gone from the membership: its data must not
            // come back with a later scale-up (that member joins again under a new id).
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_scaled: Some("Delete".to_string()),
                when_deleted: Some("Retain".to_string()),
            }),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    })
}

/// The pod template's annotations: the hash of the pod spec and of a restart request, which
/// each pod keeps from the template it was made from, so that the operator tells the pods of an
/// older template (`reconcile::pod_facts`); and the restart request itself.
fn template_annotations(cluster: &RaftCluster, pod_spec: &PodSpec) -> Result<BTreeMap<String, String>, BuildError> {
    let restart = cluster.annotations().get(RESTART_ANNOTATION).cloned();
    let spec = serde_json::to_vec(pod_spec).map_err(|e| BuildError::Encode(e.to_string()))?;
    let hash = format!("{:016x}", fnv1a(&[&spec, restart.as_deref().unwrap_or_default().as_bytes()]));
    let mut annotations = BTreeMap::from([(POD_TEMPLATE_HASH_ANNOTATION.to_string(), hash)]);
    if let Some(restart) = restart {
        annotations.insert(RESTART_ANNOTATION.to_string(), restart);
    }
    Ok(annotations)
}

/// The security context of every container the operator makes: no privilege, no capability,
/// a read-only root file system.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_string()]), add: None }),
        ..SecurityContext::default()
    }
}

/// The security context of every pod the operator makes: no root; volumes group-writable
/// (`fsGroup`) for the user the containers run as.
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_string(), localhost_profile: None }),
        ..PodSecurityContext::default()
    }
}

/// The arguments of the init container that restores `spec.bootstrap.restore` (DESIGN.md §6):
/// `kuberaft snapshot restore` of `file` into the data directory, with the flags the member
/// starts with, only while the cluster is new (`--initial-cluster-state` from the ConfigMap: a
/// member that joins later gets its data from the leader) and only once (`--keep-existing`:
/// the pod is made again after a restart of its node).
fn restore_args(file: &str, token: &str, peer_url: String) -> Vec<String> {
    [
        "snapshot",
        "restore",
        file,
        "--data-dir",
        DATA_DIR,
        "--name",
        "$(POD_NAME)",
        "--initial-cluster",
        "$(KUBERAFT_INITIAL_CLUSTER)",
        "--initial-cluster-token",
        token,
        "--advertise-peer-url",
        &peer_url,
        "--initial-cluster-state",
        "$(KUBERAFT_INITIAL_CLUSTER_STATE)",
        "--keep-existing",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// The flags that say where an S3-compatible store is (`kuberaft snapshot restore` of an `s3://`
/// file, `kuberaft backup` into one).
pub fn s3_args(store: &S3Store) -> Vec<String> {
    [
        "--s3-endpoint",
        &store.endpoint,
        "--s3-region",
        &store.region,
        "--s3-path-style",
        if store.path_style { "true" } else { "false" },
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// The store's credentials from their Secret, under the names S3 tools read.
pub fn s3_env(secret: &S3CredentialsRef) -> Vec<EnvVar> {
    let from_secret = |name: &str, key: &str| EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: key.to_string(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    };
    vec![
        from_secret(ENV_ACCESS_KEY_ID, &secret.access_key_id_key),
        from_secret(ENV_SECRET_ACCESS_KEY, &secret.secret_access_key_key),
    ]
}

/// The pod volume of the claim `claim`.
pub fn claim_volume(name: &str, claim: &str, read_only: bool) -> Volume {
    Volume {
        name: name.to_string(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.to_string(),
            read_only: Some(read_only),
        }),
        ..Volume::default()
    }
}

/// The projected volume of the members' certificates: every possible member's certificate and key
/// (`<member>.crt`, `<member>.key`) and the CA, from the Secrets the issuer fills
/// (`super::certs`). Files are readable by the members' group only.
fn tls_volume(cluster: &RaftCluster) -> Volume {
    use super::certs::{member_secret_name, KEY_CA, KEY_CERT, KEY_KEY};
    let item = |key: &str, path: String| KeyToPath { key: key.to_string(), path, mode: None };
    let sources = (0..super::MAX_REPLICAS)
        .map(|ordinal| {
            let member = super::member_name(&cluster.name_any(), ordinal);
            let mut items = vec![item(KEY_CERT, format!("{member}.crt")), item(KEY_KEY, format!("{member}.key"))];
            if ordinal == 0 {
                items.push(item(KEY_CA, KEY_CA.to_string()));
            }
            VolumeProjection {
                secret: Some(SecretProjection {
                    name: member_secret_name(cluster, ordinal),
                    items: Some(items),
                    optional: Some(false),
                }),
                ..VolumeProjection::default()
            }
        })
        .collect();
    Volume {
        name: TLS_VOLUME.to_string(),
        projected: Some(ProjectedVolumeSource { sources: Some(sources), default_mode: Some(0o440) }),
        ..Volume::default()
    }
}

/// Members prefer nodes apart from each other: losing one node then costs one member.
fn soft_anti_affinity(cluster: &RaftCluster) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(selector_labels(cluster)),
                        ..LabelSelector::default()
                    }),
                    topology_key: "kubernetes.io/hostname".to_string(),
                    ..PodAffinityTerm::default()
                },
            }]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// Everything the operator creates for `cluster` when it bootstraps, in the order it applies them
/// (`kuberaft render` prints these).
pub fn bootstrap_objects(cluster: &RaftCluster) -> Result<Vec<serde_json::Value>, BuildError> {
    let names: Vec<String> = (0..cluster.spec.replicas).map(|i| super::member_name(&cluster.name_any(), i)).collect();
    let json =
        |value: Result<serde_json::Value, serde_json::Error>| value.map_err(|e| BuildError::Encode(e.to_string()));
    let mut objects = vec![
        json(serde_json::to_value(headless_service(cluster)?))?,
        json(serde_json::to_value(client_service(cluster)?))?,
        json(serde_json::to_value(members_config_map(cluster, &names, false)?))?,
        json(serde_json::to_value(stateful_set(cluster, cluster.spec.replicas)?))?,
        json(serde_json::to_value(pod_disruption_budget(cluster)?))?,
    ];
    if cluster.spec.network_policy.enabled {
        objects.push(json(serde_json::to_value(network_policy(cluster, &OperatorPeer::default())?))?);
    }
    if let Some(tls) = &cluster.spec.tls {
        let requests = super::certs::requests(cluster)?;
        if let Some(issuer) = tls.cert_manager.as_ref().map(|cm| &cm.issuer_ref) {
            for request in &requests {
                objects.push(super::certs::certificate(cluster, request, issuer)?);
            }
        } else {
            // What the operator would write: a CA of this render's own, and what it issues.
            let now = now_seconds();
            let (ca, secret) = super::certs::mint_ca(cluster, now).map_err(BuildError::Encode)?;
            objects.push(json(serde_json::to_value(secret))?);
            for request in &requests {
                let secret = super::certs::issue(cluster, &ca, request, now).map_err(BuildError::Encode)?;
                objects.push(json(serde_json::to_value(secret))?);
            }
        }
    }
    Ok(objects)
}

/// Seconds since the Unix epoch, now.
pub fn now_seconds() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
