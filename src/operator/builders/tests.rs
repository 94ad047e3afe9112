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
    let config_map = members_config_map(&RaftCluster::test(), &members, false).expect("builds");
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
    assert_eq!(data[KEY_INITIAL_CLUSTER_STATE], "new");
    assert_eq!(data.len(), 5);
    // Once formed, pods that start join the running cluster instead of bootstrapping one.
    let formed = members_config_map(&RaftCluster::test(), &members, true).expect("builds").data.expect("data");
    assert_eq!(formed[KEY_INITIAL_CLUSTER_STATE], "existing");
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
        members_config_map(&cluster, &three, true).expect("builds").data.expect("data")[KEY_ENDPOINTS_HASH].clone()
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
    // A member that is not ready may go: a quorum-loss recovery restarts members while none is.
    assert_eq!(spec.unhealthy_pod_eviction_policy.as_deref(), Some("AlwaysAllow"));
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

/// A RaftCluster from one of the `examples/` files, as the API server would return it.
fn example(file: &str) -> RaftCluster {
    let path = format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("the example exists");
    let mut cluster: RaftCluster = serde_saphyr::from_str(&text).expect("the example is a RaftCluster");
    cluster.metadata.namespace.get_or_insert_with(|| "ns".to_string());
    cluster.with_uid(UID)
}

fn env_of(container: &Container) -> BTreeMap<String, EnvVar> {
    container.env.clone().unwrap_or_default().into_iter().map(|e| (e.name.clone(), e)).collect()
}

fn config_map_key(var: &EnvVar) -> Option<(String, String)> {
    let selector = var.value_from.as_ref()?.config_map_key_ref.as_ref()?;
    Some((selector.name.clone(), selector.key.clone()))
}

#[test]
fn stateful_set_of_the_minimal_example_runs_members_as_the_node_expects() {
    let cluster = example("minimal.yaml");
    let sts = stateful_set(&cluster, 3).expect("builds");
    assert_owned(&sts.metadata, "etcd");
    let spec = sts.spec.expect("spec");
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.service_name.as_deref(), Some("etcd"), "stable names etcd-i.etcd through the headless Service");
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"), "a new cluster needs all its first pods");
    assert_eq!(spec.selector.match_labels, Some(selector_labels(&cluster)));
    let retention = spec.persistent_volume_claim_retention_policy.expect("retention");
    assert_eq!(retention.when_scaled.as_deref(), Some("Delete"), "a removed member's data never comes back");
    assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));

    let claims = spec.volume_claim_templates.expect("claims");
    assert_eq!(claims.len(), 1);
    let claim = claims[0].spec.as_ref().expect("claim spec");
    assert_eq!(claims[0].metadata.name.as_deref(), Some(DATA_VOLUME));
    assert_eq!(claim.storage_class_name, None, "the default class");
    let requests = claim.resources.as_ref().and_then(|r| r.requests.as_ref()).expect("requests");
    assert_eq!(requests["storage"].0, "1Gi");

    let template = spec.template;
    assert_eq!(template.metadata.and_then(|m| m.labels), Some(labels(&cluster)));
    let pod = template.spec.expect("pod spec");
    assert_eq!(pod.termination_grace_period_seconds, Some(30), "room for the leader's hand-over");
    let pod_security = pod.security_context.expect("pod security");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(pod_security.run_as_user, Some(65532));
    assert_eq!(pod_security.fs_group, Some(65532));
    // Default placement: prefer one member per node, never require it.
    let anti = pod.affinity.and_then(|a| a.pod_anti_affinity).expect("anti-affinity");
    assert_eq!(anti.required_during_scheduling_ignored_during_execution, None);
    let preferred = anti.preferred_during_scheduling_ignored_during_execution.expect("preferred");
    assert_eq!(preferred[0].pod_affinity_term.topology_key, "kubernetes.io/hostname");
    assert_eq!(
        preferred[0].pod_affinity_term.label_selector.as_ref().and_then(|s| s.match_labels.clone()),
        Some(selector_labels(&cluster))
    );

    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some(crate::operator::crd::DEFAULT_IMAGE));
    assert_eq!(container.command, Some(vec!["kuberaft".to_string()]));
    assert_eq!(container.args, Some(vec!["node".to_string()]));
    let security = container.security_context.as_ref().expect("container security");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_string()]));
    let probe_path =
        |probe: &Option<Probe>| probe.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone());
    assert_eq!(probe_path(&container.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(probe_path(&container.liveness_probe).as_deref(), Some("/healthz"));
    let mounts = container.volume_mounts.clone().expect("mounts");
    assert_eq!((mounts[0].name.as_str(), mounts[0].mount_path.as_str()), (DATA_VOLUME, DATA_MOUNT_PATH));

    // Every flag the node needs, from the downward API, the ConfigMap or the spec.
    let env = env_of(container);
    let field =
        |name: &str| env[name].value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.clone());
    assert_eq!(field("POD_NAME").as_deref(), Some("metadata.name"));
    assert_eq!(field("POD_NAMESPACE").as_deref(), Some("metadata.namespace"));
    let value = |name: &str| env[name].value.clone().unwrap_or_default();
    assert_eq!(value("KUBERAFT_NAME"), "$(POD_NAME)");
    assert_eq!(value("KUBERAFT_DATA_DIR"), DATA_DIR);
    assert!(value("KUBERAFT_DATA_DIR").starts_with(DATA_MOUNT_PATH));
    assert_eq!(value("KUBERAFT_ADVERTISE_PEER_URL"), "http://$(POD_NAME).etcd.$(POD_NAMESPACE).svc:2380");
    assert_eq!(value("KUBERAFT_ADVERTISE_CLIENT_URL"), "http://$(POD_NAME).etcd.$(POD_NAMESPACE).svc:2379");
    assert_eq!(value("KUBERAFT_INITIAL_CLUSTER_TOKEN"), UID, "the uid keeps two clusters apart");
    assert_eq!(value("KUBERAFT_ELECTION_TIMEOUT_MS"), "150-300");
    assert_eq!(value("KUBERAFT_HEARTBEAT_INTERVAL_MS"), "50");
    assert_eq!(
        config_map_key(&env["KUBERAFT_INITIAL_CLUSTER"]),
        Some(("etcd-members".to_string(), KEY_INITIAL_CLUSTER.to_string()))
    );
    assert_eq!(
        config_map_key(&env["KUBERAFT_INITIAL_CLUSTER_STATE"]),
        Some(("etcd-members".to_string(), KEY_INITIAL_CLUSTER_STATE.to_string()))
    );
    // `$(VAR)` refers only to variables defined before it, as the kubelet requires.
    let order: Vec<String> = container.env.clone().unwrap_or_default().into_iter().map(|e| e.name).collect();
    let position = |name: &str| order.iter().position(|n| n == name).expect("defined");
    assert!(position("POD_NAME") < position("KUBERAFT_NAME"));
    assert!(position("POD_NAMESPACE") < position("KUBERAFT_ADVERTISE_PEER_URL"));
    // Every KUBERAFT_ variable is a flag the node reads.
    for name in order.iter().filter(|n| n.starts_with("KUBERAFT_")) {
        let flag = name.trim_start_matches("KUBERAFT_").to_lowercase().replace('_', "-");
        let known = [
            "name",
            "data-dir",
            "listen-client-url",
            "listen-peer-url",
            "advertise-client-url",
            "advertise-peer-url",
            "initial-cluster",
            "initial-cluster-state",
            "initial-cluster-token",
            "election-timeout-ms",
            "heartbeat-interval-ms",
            "snapshot-threshold",
            "log-format",
        ];
        assert!(known.contains(&flag.as_str()), "{name}");
    }
}

#[test]
fn stateful_set_of_the_production_example_carries_its_storage_resources_and_placement() {
    let cluster = example("production.yaml");
    assert_eq!(cluster.metadata.namespace.as_deref(), Some("storage"));
    let sts = stateful_set(&cluster, 4).expect("builds");
    let spec = sts.spec.expect("spec");
    assert_eq!(spec.replicas, Some(4), "the planner's size, not the spec's");
    let claim = spec.volume_claim_templates.expect("claims")[0].spec.clone().expect("claim spec");
    assert_eq!(claim.storage_class_name.as_deref(), Some("fast-ssd"));
    assert_eq!(claim.resources.and_then(|r| r.requests).expect("requests")["storage"].0, "20Gi");
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.affinity, cluster.spec.affinity, "the user's placement replaces the default");
    assert_eq!(pod.node_selector, cluster.spec.node_selector);
    assert_eq!(pod.tolerations, cluster.spec.tolerations);
    let container = &pod.containers[0];
    assert_eq!(container.resources, cluster.spec.resources);
    let env = env_of(container);
    assert_eq!(env["KUBERAFT_ELECTION_TIMEOUT_MS"].value.as_deref(), Some("300-600"));
    assert_eq!(env["KUBERAFT_HEARTBEAT_INTERVAL_MS"].value.as_deref(), Some("100"));
    assert_eq!(env["KUBERAFT_SNAPSHOT_THRESHOLD"].value.as_deref(), Some("50000"));
    assert_eq!(
        env["KUBERAFT_ADVERTISE_PEER_URL"].value.as_deref(),
        Some("http://$(POD_NAME).config-store.$(POD_NAMESPACE).svc:2380")
    );
    assert_eq!(config_map_key(&env["KUBERAFT_INITIAL_CLUSTER"]).map(|k| k.0).as_deref(), Some("config-store-members"));
}

#[test]
fn bootstrap_objects_are_the_six_owned_objects_in_apply_order() {
    let objects = bootstrap_objects(&example("minimal.yaml")).expect("builds");
    let kinds: Vec<(String, String)> = objects
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or_default().to_string(),
                o["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let expected = [
        ("Service", "etcd"),
        ("Service", "etcd-client"),
        ("ConfigMap", "etcd-members"),
        ("StatefulSet", "etcd"),
        ("PodDisruptionBudget", "etcd"),
        ("NetworkPolicy", "etcd"),
    ];
    assert_eq!(kinds, expected.map(|(k, n)| (k.to_string(), n.to_string())).to_vec());
    assert_eq!(objects[2]["data"]["members"], "etcd-0,etcd-1,etcd-2");
    assert_eq!(objects[2]["data"]["initial-cluster-state"], "new");
    assert_eq!(objects[3]["spec"]["replicas"], 3);
}

/// Issue 16: only members reach the peer port; members, the operator and (by default) the
/// cluster's namespace reach the client port; `clientsFrom` replaces the namespace; off, no
/// policy is rendered.
#[test]
fn the_network_policy_lets_members_reach_peers_and_chosen_clients_reach_the_client_port() {
    let cluster = example("minimal.yaml");
    let operator = OperatorPeer {
        namespace: "ops".into(),
        pod_labels: BTreeMap::from([("app.kubernetes.io/name".to_string(), "kuberaft".to_string())]),
    };
    let policy = serde_json::to_value(network_policy(&cluster, &operator).expect("builds")).expect("json");
    let spec = &policy["spec"];
    assert_eq!(spec["podSelector"]["matchLabels"], serde_json::to_value(selector_labels(&cluster)).expect("json"));
    assert_eq!(spec["policyTypes"], serde_json::json!(["Ingress"]));
    let rules = spec["ingress"].as_array().expect("rules");
    assert_eq!(rules.len(), 2);
    let members = serde_json::json!({"podSelector": {"matchLabels": selector_labels(&cluster)}});
    assert_eq!(rules[0]["ports"], serde_json::json!([{"port": "peer", "protocol": "TCP"}]));
    assert_eq!(rules[0]["from"], serde_json::json!([members.clone()]), "only members reach the peer port");
    assert_eq!(rules[1]["ports"], serde_json::json!([{"port": "client", "protocol": "TCP"}]));
    let operator_peer = serde_json::json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberaft"}},
    });
    // The operator's backup Jobs (a claim destination) take their snapshots through the client port.
    let backups = serde_json::json!({"podSelector": {"matchLabels": {
        "app.kubernetes.io/component": "backup", "app.kubernetes.io/instance": "etcd", "app.kubernetes.io/name": "kuberaft"}}});
    assert_eq!(
        rules[1]["from"],
        serde_json::json!([members.clone(), operator_peer.clone(), backups.clone(), {"podSelector": {}}])
    );

    let mut chosen = cluster.clone();
    chosen.spec.network_policy.clients_from =
        Some(vec![serde_json::from_value(serde_json::json!({"namespaceSelector": {"matchLabels": {"team": "apps"}}}))
            .expect("peer")]);
    let policy = serde_json::to_value(network_policy(&chosen, &operator).expect("builds")).expect("json");
    assert_eq!(
        policy["spec"]["ingress"][1]["from"],
        serde_json::json!([members, operator_peer, backups, {"namespaceSelector": {"matchLabels": {"team": "apps"}}}])
    );

    let mut off = cluster;
    off.spec.network_policy.enabled = false;
    let kinds: Vec<String> = bootstrap_objects(&off)
        .expect("builds")
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(!kinds.contains(&"NetworkPolicy".to_string()), "{kinds:?}");
}

#[test]
fn with_tls_members_serve_https_with_their_own_certificates_and_probes_use_the_plain_metrics_port() {
    let mut cluster = RaftCluster::test();
    cluster.spec.tls = serde_json::from_value(serde_json::json!({"auto": {}})).expect("tls");
    let sts = stateful_set(&cluster, 3).expect("sts");
    let pod = sts.spec.expect("spec").template.spec.expect("pod");
    let container = &pod.containers[0];
    let env = env_of(container);
    let value = |name: &str| env.get(name).and_then(|v| v.value.clone()).unwrap_or_default();
    assert_eq!(value("KUBERAFT_LISTEN_CLIENT_URL"), "https://0.0.0.0:2379");
    assert_eq!(value("KUBERAFT_ADVERTISE_PEER_URL"), "https://$(POD_NAME).etcd.$(POD_NAMESPACE).svc:2380");
    assert_eq!(value("KUBERAFT_CERT_FILE"), format!("{TLS_MOUNT_PATH}/$(POD_NAME).crt"));
    assert_eq!(value("KUBERAFT_PEER_KEY_FILE"), format!("{TLS_MOUNT_PATH}/$(POD_NAME).key"));
    assert_eq!(value("KUBERAFT_TRUSTED_CA_FILE"), format!("{TLS_MOUNT_PATH}/ca.crt"));
    assert_eq!(value("KUBERAFT_CLIENT_CERT_AUTH"), "true");
    assert_eq!(value("KUBERAFT_PEER_CLIENT_CERT_AUTH"), "true");
    assert_eq!(value("KUBERAFT_LISTEN_METRICS_URLS"), "http://0.0.0.0:2381");
    let probe_port = |probe: &Option<Probe>| probe.as_ref().and_then(|p| p.http_get.as_ref()).map(|h| h.port.clone());
    for probe in [&container.startup_probe, &container.liveness_probe, &container.readiness_probe] {
        assert_eq!(probe_port(probe), Some(IntOrString::String(METRICS_PORT_NAME.into())));
    }
    let ports: Vec<(Option<String>, i32)> =
        container.ports.iter().flatten().map(|p| (p.name.clone(), p.container_port)).collect();
    assert!(ports.contains(&(Some(METRICS_PORT_NAME.into()), 2381)), "{ports:?}");
    let volume = &pod.volumes.as_ref().expect("volumes")[0];
    let sources = volume.projected.as_ref().and_then(|p| p.sources.clone()).expect("projected");
    assert_eq!(sources.len(), 9, "every possible member's certificate");
    let secrets: Vec<String> = sources.iter().filter_map(|s| s.secret.as_ref().map(|s| s.name.clone())).collect();
    assert_eq!(secrets[0], "etcd-0-tls");
    assert_eq!(secrets[8], "etcd-8-tls");
    let mount = container.volume_mounts.iter().flatten().find(|m| m.name == TLS_VOLUME).expect("mounted");
    assert_eq!((mount.mount_path.as_str(), mount.read_only), (TLS_MOUNT_PATH, Some(true)));

    let cm = members_config_map(&cluster, &names(&["etcd-0"]), false).expect("cm");
    let data = cm.data.expect("data");
    assert_eq!(data[KEY_INITIAL_CLUSTER], "etcd-0=https://etcd-0.etcd.ns.svc:2380");
    assert_eq!(data[KEY_ENDPOINTS], "https://etcd-0.etcd.ns.svc:2379");

    let policy = network_policy(&cluster, &OperatorPeer::default()).expect("policy");
    let rules = policy.spec.expect("spec").ingress.expect("ingress");
    let metrics = rules.last().expect("a metrics rule");
    assert_eq!(metrics.from, None, "probes and scrapes from anywhere");
    assert_eq!(metrics.ports.as_ref().expect("ports")[0].port, Some(IntOrString::String(METRICS_PORT_NAME.into())));

    // Without TLS: none of it.
    let plain = stateful_set(&RaftCluster::test(), 3).expect("sts");
    let pod = plain.spec.expect("spec").template.spec.expect("pod");
    assert!(pod.volumes.is_none());
    assert!(!env_of(&pod.containers[0]).contains_key("KUBERAFT_CERT_FILE"));
}

#[test]
fn rendering_a_tls_cluster_adds_its_secrets_or_its_certificates() {
    let mut cluster = RaftCluster::test();
    cluster.spec.tls = serde_json::from_value(serde_json::json!({"auto": {}})).expect("tls");
    let objects = bootstrap_objects(&cluster).expect("objects");
    let secrets: Vec<&serde_json::Value> = objects.iter().filter(|o| o["kind"] == "Secret").collect();
    assert_eq!(secrets.len(), 12, "the CA, nine members, the client, the operator");
    assert_eq!(secrets[0]["metadata"]["name"], "etcd-ca");
    cluster.spec.tls =
        serde_json::from_value(serde_json::json!({"certManager": {"issuerRef": {"name": "ca"}}})).expect("tls");
    let objects = bootstrap_objects(&cluster).expect("objects");
    assert_eq!(objects.iter().filter(|o| o["kind"] == "Certificate").count(), 11);
    assert!(objects.iter().all(|o| o["kind"] != "Secret"), "cert-manager writes the Secrets");
}

#[test]
fn with_a_restore_each_pod_restores_the_backup_first_as_the_member_it_will_be_and_only_while_the_cluster_is_new() {
    let plain = stateful_set(&example("minimal.yaml"), 3).expect("sts");
    assert_eq!(plain.spec.expect("spec").template.spec.expect("pod").init_containers, None);

    let cluster = example("restore.yaml");
    let sts = stateful_set(&cluster, 3).expect("sts");
    let pod = sts.spec.expect("spec").template.spec.expect("pod");
    let inits = pod.init_containers.expect("an init container");
    assert_eq!(inits.len(), 1);
    let (restore, member) = (&inits[0], &pod.containers[0]);
    assert_eq!(restore.name, RESTORE_CONTAINER_NAME);
    assert_eq!((&restore.image, &restore.command), (&member.image, &member.command));
    assert_eq!(restore.volume_mounts, Some(vec![member.volume_mounts.clone().expect("mounts")[0].clone()]));
    assert_eq!(restore.security_context, member.security_context);
    let args = restore.args.clone().expect("args");
    let flag = |name: &str| args.iter().position(|a| a == name).map(|i| args[i + 1].as_str());
    assert_eq!(
        &args[..3],
        ["snapshot", "restore", "s3://etcd-backups/default/etcd/etcd-20261203T060000.000Z-r48213.snap"]
    );
    assert_eq!(flag("--data-dir"), Some(DATA_DIR));
    assert_eq!(flag("--s3-endpoint"), Some("https://s3.eu-west-1.amazonaws.com"));
    assert_eq!((flag("--s3-region"), flag("--s3-path-style")), (Some("eu-west-1"), Some("false")));
    assert!(args.iter().any(|a| a == "--keep-existing"), "{args:?}");
    // The member's own name, list, token and peer URL, and the ConfigMap's state: a member that
    // joins a formed cluster restores nothing.
    let env = env_of(member);
    assert_eq!(flag("--name"), Some("$(POD_NAME)"));
    assert_eq!(flag("--initial-cluster"), Some("$(KUBERAFT_INITIAL_CLUSTER)"));
    assert_eq!(flag("--initial-cluster-state"), Some("$(KUBERAFT_INITIAL_CLUSTER_STATE)"));
    assert_eq!(flag("--initial-cluster-token").map(str::to_string), env["KUBERAFT_INITIAL_CLUSTER_TOKEN"].value);
    assert_eq!(flag("--advertise-peer-url").map(str::to_string), env["KUBERAFT_ADVERTISE_PEER_URL"].value);
    let restore_env = env_of(restore);
    for (name, var) in &env {
        assert_eq!(restore_env.get(name), Some(var), "{name} as the member has it");
    }
    let secret = |name: &str| {
        let selector = restore_env[name].value_from.as_ref().and_then(|v| v.secret_key_ref.clone()).expect("a Secret");
        (selector.name, selector.key)
    };
    assert_eq!(secret(ENV_ACCESS_KEY_ID), ("etcd-backup-s3".to_string(), "accessKeyId".to_string()));
    assert_eq!(secret(ENV_SECRET_ACCESS_KEY), ("etcd-backup-s3".to_string(), "secretAccessKey".to_string()));
}

/// A restore from a file on a claim: the init container mounts the claim read-only, away
/// from the data, and restores the file at its path; no S3 flags or credentials. The member
/// itself never mounts the claim.
#[test]
fn a_restore_from_a_claim_mounts_it_read_only_in_the_init_container_only() {
    let mut cluster = RaftCluster::test();
    cluster.spec.bootstrap = serde_json::from_value(serde_json::json!(
        {"restore": {"persistentVolumeClaim": {"claimName": "etcd-backups", "path": "ns/etcd/etcd-1.snap"}}}
    ))
    .expect("a bootstrap");
    let pod = stateful_set(&cluster, 3).expect("sts").spec.expect("spec").template.spec.expect("pod");
    let inits = pod.init_containers.expect("an init container");
    let (restore, member) = (&inits[0], &pod.containers[0]);
    let args = restore.args.clone().expect("args");
    assert_eq!(&args[..3], ["snapshot", "restore", &format!("{RESTORE_MOUNT_PATH}/ns/etcd/etcd-1.snap")]);
    assert!(!args.iter().any(|a| a.starts_with("--s3")), "{args:?}");
    assert!(!env_of(restore).contains_key(ENV_ACCESS_KEY_ID));
    let mounts = restore.volume_mounts.clone().expect("mounts");
    assert_eq!(mounts[0], member.volume_mounts.clone().expect("mounts")[0], "the data first");
    assert_eq!(
        (mounts[1].name.as_str(), mounts[1].mount_path.as_str(), mounts[1].read_only),
        (RESTORE_VOLUME, RESTORE_MOUNT_PATH, Some(true))
    );
    let volume = pod.volumes.expect("volumes").into_iter().find(|v| v.name == RESTORE_VOLUME).expect("the claim");
    let claim = volume.persistent_volume_claim.expect("a claim");
    assert_eq!((claim.claim_name.as_str(), claim.read_only), ("etcd-backups", Some(true)));
    assert!(member.volume_mounts.clone().expect("mounts").iter().all(|m| m.name != RESTORE_VOLUME));
}

/// Issue 17, part 5: the operator restarts the pods itself (`OnDelete`), and tells a pod of an
/// older template by the hash each pod keeps from the template it was made from; the hash moves
/// with the pod spec and with a `kuberaft.io/restart` request, and only with them.
#[test]
fn the_pods_are_restarted_by_the_operator_and_their_template_hash_moves_with_the_pod_spec_and_a_restart_request() {
    let template_annotations = |cluster: &RaftCluster| {
        let sts = stateful_set(cluster, 3).expect("builds");
        let spec = sts.spec.expect("spec");
        let strategy = spec.update_strategy.expect("strategy");
        assert_eq!(strategy.type_.as_deref(), Some("OnDelete"), "never the controller's ordinal order");
        spec.template.metadata.and_then(|m| m.annotations).unwrap_or_default()
    };
    let hash = |cluster: &RaftCluster| template_annotations(cluster)[POD_TEMPLATE_HASH_ANNOTATION].clone();
    let cluster = RaftCluster::test();
    assert_eq!(hash(&cluster), hash(&RaftCluster::test()), "the same spec, the same hash");
    assert!(!template_annotations(&cluster).contains_key(RESTART_ANNOTATION));

    let mut other_image = RaftCluster::test();
    other_image.spec.image = "ghcr.io/kuberaft/kuberaft:next".to_string();
    assert_ne!(hash(&other_image), hash(&cluster), "a new image");

    let mut noted = RaftCluster::test();
    noted.metadata.annotations = Some(BTreeMap::from([("example.com/note".to_string(), "x".to_string())]));
    assert_eq!(hash(&noted), hash(&cluster), "another annotation restarts nothing");

    let restart = |value: &str| {
        let mut cluster = RaftCluster::test();
        cluster.metadata.annotations = Some(BTreeMap::from([(RESTART_ANNOTATION.to_string(), value.to_string())]));
        cluster
    };
    assert_ne!(hash(&restart("1")), hash(&cluster), "a restart request");
    assert_ne!(hash(&restart("2")), hash(&restart("1")), "each new request");
    assert_eq!(template_annotations(&restart("1"))[RESTART_ANNOTATION], "1");
}

#[test]
fn after_a_quorum_loss_recovery_every_pod_starts_with_it_and_a_refused_request_changes_nothing() {
    use crate::operator::crd::{RaftClusterStatus, RecoveryStatus};
    let with = |recovery: Option<RecoveryStatus>| {
        let mut cluster = RaftCluster::test();
        cluster.status = Some(RaftClusterStatus { recovery, ..RaftClusterStatus::default() });
        stateful_set(&cluster, 3).expect("builds")
    };
    let env = |sts: &StatefulSet| env_of(&sts.spec.clone().expect("spec").template.spec.expect("pod").containers[0]);
    let hash = |sts: &StatefulSet| {
        sts.spec.clone().expect("spec").template.metadata.expect("meta").annotations.expect("annotations")
            [POD_TEMPLATE_HASH_ANNOTATION]
            .clone()
    };
    let none = with(None);
    assert!(!env(&none).contains_key(ENV_QUORUM_RECOVERY));
    let refused =
        with(Some(RecoveryStatus { request: "r".into(), phase: "Refused".into(), ..RecoveryStatus::default() }));
    assert_eq!(hash(&refused), hash(&none), "a refused request restarts nothing");
    let recovered = RecoveryStatus {
        request: "r".into(),
        phase: "Recovering".into(),
        id: Some("0123456789abcdef".into()),
        survivor: Some("etcd-1".into()),
        ..RecoveryStatus::default()
    };
    let recovering = with(Some(recovered.clone()));
    assert_eq!(env(&recovering)[ENV_QUORUM_RECOVERY].value.as_deref(), Some("0123456789abcdef:etcd-1"));
    assert_ne!(hash(&recovering), hash(&none), "the pods are made again with it");
    // Completed, or a later request refused: the template stays as it is, so nothing restarts.
    let completed = with(Some(RecoveryStatus { phase: "Completed".into(), ..recovered.clone() }));
    let refused_later = with(Some(RecoveryStatus { request: "r2".into(), phase: "Refused".into(), ..recovered }));
    assert_eq!(hash(&completed), hash(&recovering));
    assert_eq!(hash(&refused_later), hash(&recovering));
}
