//! The objects that a `RaftCluster` owns (DESIGN.md §6), built by pure functions from the
//! resource alone: the headless Service that gives each member a stable DNS name, the client
//! Service, the ConfigMap with the endpoint list every peer reads, and the PodDisruptionBudget.
//! (The StatefulSet comes with the controller.) The controller applies what these return with
//! server-side apply; every object carries a controller owner reference to its `RaftCluster`, so
//! the garbage collector removes it with the cluster.
//!
//! Label keys, port names and object names live here once, so the StatefulSet, the Services and
//! the selectors cannot disagree.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use super::crd::RaftCluster;
use crate::api::types::{DEFAULT_CLIENT_PORT, DEFAULT_PEER_PORT};
use crate::node::ids::fnv1a;

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

pub const APP_NAME: &str = "kuberaft";
pub const COMPONENT_MEMBER: &str = "raft-member";
pub const MANAGED_BY: &str = "kuberaft-operator";

pub const CLIENT_PORT_NAME: &str = "client";
pub const PEER_PORT_NAME: &str = "peer";

/// The keys of the members ConfigMap.
pub const KEY_INITIAL_CLUSTER: &str = "initial-cluster";
pub const KEY_ENDPOINTS: &str = "endpoints";
pub const KEY_MEMBERS: &str = "members";
pub const KEY_ENDPOINTS_HASH: &str = "endpoints-hash";

/// Why an owned object cannot be built yet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("RaftCluster {0} has no namespace; it is a namespaced resource, so read it from the API server")]
    MissingNamespace(String),
    #[error("RaftCluster {0} has no uid yet; build its objects from the resource as the API server returns it")]
    MissingUid(String),
}

/// The name of the headless Service (and of the StatefulSet and PodDisruptionBudget): the cluster's.
pub fn headless_service_name(cluster: &RaftCluster) -> String {
    cluster.name_any()
}

pub fn client_service_name(cluster: &RaftCluster) -> String {
    format!("{}-client", cluster.name_any())
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

pub fn peer_url(cluster: &RaftCluster, namespace: &str, member: &str) -> String {
    format!("http://{}:{DEFAULT_PEER_PORT}", member_host(cluster, namespace, member))
}

pub fn client_url(cluster: &RaftCluster, namespace: &str, member: &str) -> String {
    format!("http://{}:{DEFAULT_CLIENT_PORT}", member_host(cluster, namespace, member))
}

/// The metadata of an owned object named `name`.
fn object_meta(cluster: &RaftCluster, name: String) -> Result<ObjectMeta, BuildError> {
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
/// the planner decided on (it names a learner before its pod starts, DESIGN.md §6).
pub fn members_config_map(cluster: &RaftCluster, member_names: &[String]) -> Result<ConfigMap, BuildError> {
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
pub fn pod_disruption_budget(cluster: &RaftCluster) -> Result<PodDisruptionBudget, BuildError> {
    Ok(PodDisruptionBudget {
        metadata: object_meta(cluster, cluster.name_any())?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector_labels(cluster)), ..LabelSelector::default() }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

#[cfg(test)]
mod tests;
