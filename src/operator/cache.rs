//! Watch-fed caches of what the operator owns (issue 19, part 7): a reconcile pass reads the
//! objects of its cluster from these stores instead of asking the API server, so a pass over a
//! cluster that needs nothing costs no API request, and an operator of hundreds of clusters
//! costs the API server its watches, not a GET per object per pass.
//!
//! The controller fills one set of stores per watched scope (a namespace, or all of them) with
//! reflectors over the same watches that wake it (`controller::run_controller`): StatefulSets,
//! ConfigMaps, Services, PodDisruptionBudgets and NetworkPolicies labelled as the operator's,
//! the members' Pods (by the members' labels), and the Secrets labelled as the operator's (the
//! certificates it issues, root's password it generates). A store is used once it has listed
//! (`ready`); before that, and for whatever a pass needs that no store holds (cert-manager's
//! Certificates, a root password Secret the user made), the pass asks the API server as before.
//!
//! A cache may be behind: an object the pass just wrote may still look old or missing on the next
//! pass. Every write is a server-side apply of the whole object, which is idempotent, so a stale
//! read costs one redundant apply, never a wrong object; the planner's membership steps rest on
//! the members' own statuses, which are asked fresh.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

/// The stores of one scope.
#[derive(Clone)]
pub struct Stores {
    pub stateful_sets: Store<StatefulSet>,
    pub config_maps: Store<ConfigMap>,
    pub services: Store<Service>,
    pub budgets: Store<PodDisruptionBudget>,
    pub network_policies: Store<NetworkPolicy>,
    pub pods: Store<Pod>,
    pub secrets: Store<Secret>,
    /// Every store above has listed once.
    pub ready: Arc<AtomicBool>,
}

impl Stores {
    /// Waits until every store has listed, then marks them ready (a task of the controller).
    pub async fn wait_until_ready(&self) {
        let all = futures::future::join_all([
            Box::pin(self.stateful_sets.wait_until_ready())
                as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>,
            Box::pin(self.config_maps.wait_until_ready()),
            Box::pin(self.services.wait_until_ready()),
            Box::pin(self.budgets.wait_until_ready()),
            Box::pin(self.network_policies.wait_until_ready()),
            Box::pin(self.pods.wait_until_ready()),
            Box::pin(self.secrets.wait_until_ready()),
        ])
        .await;
        if all.iter().all(Result::is_ok) {
            self.ready.store(true, Ordering::Release);
        }
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// A copy of the object `name` in `namespace` that `store` holds.
pub fn get<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(namespace)).map(|k| (*k).clone())
}

/// Copies of the objects in `namespace` that carry every label of `selector`, by name.
pub fn select<K>(store: &Store<K>, namespace: &str, selector: &BTreeMap<String, String>) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut found: Vec<K> = store
        .state()
        .iter()
        .filter(|k| k.namespace().as_deref() == Some(namespace))
        .filter(|k| selector.iter().all(|(key, value)| k.labels().get(key) == Some(value)))
        .map(|k| (**k).clone())
        .collect();
    found.sort_by_key(|k| k.name_any());
    found
}

/// The stores of every scope the controller watches.
#[derive(Default)]
pub struct Caches(RwLock<Vec<(Option<String>, Stores)>>);

impl Caches {
    /// The controller of `scope` (a namespace, or `None` for all) fills `stores`.
    pub fn register(&self, scope: Option<String>, stores: Stores) {
        let mut scopes = self.0.write().unwrap_or_else(|e| e.into_inner());
        scopes.retain(|(s, _)| *s != scope);
        scopes.push((scope, stores));
    }

    /// The controllers stopped (a stop, or a lost lease): nothing fills the stores any more.
    pub fn clear(&self) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The ready stores that cover `namespace`, if any.
    pub fn of(&self, namespace: &str) -> Option<Stores> {
        let scopes = self.0.read().unwrap_or_else(|e| e.into_inner());
        scopes
            .iter()
            .find(|(scope, stores)| scope.as_deref().is_none_or(|s| s == namespace) && stores.is_ready())
            .map(|(_, stores)| stores.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn pod(namespace: &str, name: &str, labels: &[(&str, &str)]) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.to_string());
        pod.metadata.namespace = Some(namespace.to_string());
        pod.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        pod
    }

    #[test]
    fn objects_are_found_by_namespace_and_name_and_selected_by_every_label() {
        let (reader, mut writer) = store::<Pod>();
        for p in [
            pod("a", "etcd-1", &[("app", "kuberaft"), ("instance", "etcd")]),
            pod("a", "etcd-0", &[("app", "kuberaft"), ("instance", "etcd")]),
            pod("a", "other-0", &[("app", "kuberaft"), ("instance", "other")]),
            pod("b", "etcd-0", &[("app", "kuberaft"), ("instance", "etcd")]),
        ] {
            writer.apply_watcher_event(&Event::Apply(p));
        }
        assert_eq!(get(&reader, "b", "etcd-0").and_then(|p| p.metadata.namespace), Some("b".to_string()));
        assert!(get(&reader, "c", "etcd-0").is_none());
        let selector =
            BTreeMap::from([("app".to_string(), "kuberaft".to_string()), ("instance".to_string(), "etcd".to_string())]);
        let names: Vec<String> = select(&reader, "a", &selector).iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["etcd-0", "etcd-1"]);
    }

    #[tokio::test]
    async fn a_scope_is_used_once_every_store_listed_and_only_for_its_namespaces() {
        let caches = Caches::default();
        let (pods, mut pod_writer) = store::<Pod>();
        let (sts, mut sts_writer) = store::<StatefulSet>();
        let (cms, mut cm_writer) = store::<ConfigMap>();
        let (svcs, mut svc_writer) = store::<Service>();
        let (pdbs, mut pdb_writer) = store::<PodDisruptionBudget>();
        let (nps, mut np_writer) = store::<NetworkPolicy>();
        let (secrets, mut secret_writer) = store::<Secret>();
        let stores = Stores {
            stateful_sets: sts,
            config_maps: cms,
            services: svcs,
            budgets: pdbs,
            network_policies: nps,
            pods,
            secrets,
            ready: Arc::default(),
        };
        caches.register(Some("a".to_string()), stores.clone());
        assert!(caches.of("a").is_none(), "not listed yet");
        pod_writer.apply_watcher_event(&Event::InitDone);
        sts_writer.apply_watcher_event(&Event::InitDone);
        cm_writer.apply_watcher_event(&Event::InitDone);
        svc_writer.apply_watcher_event(&Event::InitDone);
        pdb_writer.apply_watcher_event(&Event::InitDone);
        np_writer.apply_watcher_event(&Event::InitDone);
        secret_writer.apply_watcher_event(&Event::InitDone);
        tokio::time::timeout(std::time::Duration::from_secs(5), stores.wait_until_ready()).await.expect("ready");
        assert!(caches.of("a").is_some());
        assert!(caches.of("b").is_none(), "another namespace's");
        caches.clear();
        assert!(caches.of("a").is_none());
    }
}
