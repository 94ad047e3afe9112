use super::*;
use crate::operator::crd::RaftClusterSpec;

const UID: &str = "5a1b2c3d-0000-4000-8000-000000000001";

/// Chained constructors for the resources the tests build from.
impl RaftCluster {
    /// `etcd` in namespace `ns`, with a uid, as the API server returns it, and the default spec.
    fn test() -> RaftCluster {
        let spec: RaftClusterSpec = serde_json::from_value(serde_json::json!({})).expect("the default spec");
        RaftCluster::new("etcd", spec).in_namespace("ns").with_uid(UID)
    }

    fn named(mut self, name: &str) -> Self {
        self.metadata.name = Some(name.to_string());
        self
    }

    fn in_namespace(mut self, namespace: &str) -> Self {
        self.metadata.namespace = Some(namespace.to_string());
        self
    }

    fn with_uid(mut self, uid: &str) -> Self {
        self.metadata.uid = Some(uid.to_string());
        self
    }

    fn without_uid(mut self) -> Self {
        self.metadata.uid = None;
        self
    }
}

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

fn expected_labels(instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "kuberaft".to_string()),
        ("app.kubernetes.io/instance".to_string(), instance.to_string()),
        ("app.kubernetes.io/component".to_string(), "raft-member".to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "kuberaft-operator".to_string()),
    ])
}

/// Every owned object: named as expected, in the cluster's namespace, labelled, and controlled by
/// the cluster.
fn assert_owned(metadata: &ObjectMeta, name: &str) {
    assert_eq!(metadata.name.as_deref(), Some(name));
    assert_eq!(metadata.namespace.as_deref(), Some("ns"));
    assert_eq!(metadata.labels.as_ref(), Some(&expected_labels("etcd")));
    let owners = metadata.owner_references.as_ref().expect("owner references");
    assert_eq!(
        owners,
        &vec![OwnerReference {
            api_version: "kuberaft.io/v1alpha1".to_string(),
            kind: "RaftCluster".to_string(),
            name: "etcd".to_string(),
            uid: UID.to_string(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]
    );
}

fn ports(service: &Service) -> Vec<(String, i32)> {
    let ports = service.spec.as_ref().and_then(|spec| spec.ports.clone()).unwrap_or_default();
    ports.into_iter().map(|port| (port.name.unwrap_or_default(), port.port)).collect()
}

#[test]
fn selector_labels_name_the_instance_and_labels_add_the_manager() {
    let cluster = RaftCluster::test().named("orders");
    let mut selector = expected_labels("orders");
    selector.remove(LABEL_MANAGED_BY);
    assert_eq!(selector_labels(&cluster), selector);
    assert_eq!(labels(&cluster), expected_labels("orders"));
}

#[test]
fn headless_service_publishes_not_ready_members_on_both_ports() {
    let service = headless_service(&RaftCluster::test()).expect("builds");
    assert_owned(&service.metadata, "etcd");
    let spec = service.spec.as_ref().expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    assert_eq!(spec.selector.as_ref(), Some(&selector_labels(&RaftCluster::test())));
    assert_eq!(ports(&service), vec![("client".to_string(), 2379), ("peer".to_string(), 2380)]);
}

#[test]
fn client_service_exposes_only_the_client_port() {
    let service = client_service(&RaftCluster::test()).expect("builds");
    assert_owned(&service.metadata, "etcd-client");
    let spec = service.spec.as_ref().expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.publish_not_ready_addresses, None);
    assert_eq!(ports(&service), vec![("client".to_string(), 2379)]);
}

#[test]
fn members_config_map_lists_three_members() {
    let members = names(&["etcd-0", "etcd-1", "etcd-2"]);
    let config_map = members_config_map(&RaftCluster::test(), &members).expect("builds");
    assert_owned(&config_map.metadata, "etcd-members");
    let data = config_map.data.expect("data");
    assert_eq!(
        data[KEY_INITIAL_CLUSTER],
        "etcd-0=http://etcd-0.etcd.ns.svc:2380,etcd-1=http://etcd-1.etcd.ns.svc:2380,etcd-2=http://etcd-2.etcd.ns.svc:2380"
    );
    assert_eq!(
        data[KEY_ENDPOINTS],
        "http://etcd-0.etcd.ns.svc:2379,http://etcd-1.etcd.ns.svc:2379,http://etcd-2.etcd.ns.svc:2379"
    );
    assert_eq!(data[KEY_MEMBERS], "etcd-0,etcd-1,etcd-2");
    assert_eq!(data[KEY_ENDPOINTS_HASH], endpoints_hash(&members));
    assert_eq!(data.len(), 4);
}

#[test]
fn endpoints_hash_changes_with_the_list_and_only_with_it() {
    let three = names(&["etcd-0", "etcd-1", "etcd-2"]);
    assert_eq!(endpoints_hash(&three), endpoints_hash(&three.clone()));
    assert_eq!(endpoints_hash(&three).len(), 16);
    for other in [
        names(&["etcd-0", "etcd-1"]),
        names(&["etcd-0", "etcd-1", "etcd-2", "etcd-3"]),
        names(&["etcd-0", "etcd-1", "etcd-3"]),
        // The separator keeps ["etcd-0", "etcd-1"] apart from ["etcd-0etcd-1"].
        names(&["etcd-0etcd-1", "etcd-2"]),
    ] {
        assert_ne!(endpoints_hash(&three), endpoints_hash(&other), "{other:?}");
    }
    // The hash is of the list alone: the same list in another cluster object gives the same data.
    let hash_of = |cluster: RaftCluster| {
        members_config_map(&cluster, &three).expect("builds").data.expect("data")[KEY_ENDPOINTS_HASH].clone()
    };
    assert_eq!(hash_of(RaftCluster::test()), hash_of(RaftCluster::test().with_uid("another-uid")));
}

#[test]
fn pod_disruption_budget_allows_one_member_down() {
    let budget = pod_disruption_budget(&RaftCluster::test()).expect("builds");
    assert_owned(&budget.metadata, "etcd");
    let spec = budget.spec.expect("spec");
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(spec.min_available, None);
    assert_eq!(spec.selector.and_then(|selector| selector.match_labels), Some(selector_labels(&RaftCluster::test())));
}

#[test]
fn objects_need_the_uid_and_namespace_the_api_server_gives() {
    let without_uid = RaftCluster::test().without_uid();
    assert_eq!(owner_reference(&without_uid), Err(BuildError::MissingUid("etcd".to_string())));
    assert!(headless_service(&without_uid).is_err());
    let mut without_namespace = RaftCluster::test();
    without_namespace.metadata.namespace = None;
    assert_eq!(client_service(&without_namespace), Err(BuildError::MissingNamespace("etcd".to_string())));
}
