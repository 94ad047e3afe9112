//! A Kubernetes API server in memory, behind kube's tower-test mock service: it answers the calls
//! the operator makes (get, list pods, server-side apply and merge patches, status apply, events) from a map of
//! objects by path, and records every call so that tests can assert the exact sequence.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};

/// One call the operator made: method and path (without the query).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub method: Method,
    pub path: String,
}

impl Call {
    pub fn new(method: Method, path: &str) -> Call {
        Call { method, path: path.to_string() }
    }
}

#[derive(Default)]
pub struct State {
    /// Objects by their path, e.g. `/api/v1/namespaces/ns/configmaps/etcd-members`.
    pub objects: BTreeMap<String, Value>,
    pub calls: Vec<Call>,
    /// Every call ever made (`calls` is drained by tests; this is not).
    pub history: Vec<Call>,
    /// The bodies of created events.
    pub events: Vec<Value>,
    /// The paths of the pods each eviction the disruption budget allowed deleted, in order.
    pub evicted: Vec<String>,
    resource_version: u64,
}

/// The fake API server: a kube `Client` talks to it; tests read and change its objects.
#[derive(Clone, Default)]
pub struct FakeApi {
    pub state: Arc<Mutex<State>>,
}

pub const NS: &str = "ns";

pub fn cluster_path(name: &str) -> String {
    format!("/apis/kuberaft.io/v1alpha1/namespaces/{NS}/raftclusters/{name}")
}
pub fn sts_path(name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{NS}/statefulsets/{name}")
}
pub fn cm_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/configmaps/{name}")
}
pub fn svc_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/services/{name}")
}
pub fn pdb_path(name: &str) -> String {
    format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/{name}")
}
pub fn netpol_path(name: &str) -> String {
    format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/{name}")
}
pub fn secret_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/secrets/{name}")
}
pub fn certificate_path(name: &str) -> String {
    format!("/apis/cert-manager.io/v1/namespaces/{NS}/certificates/{name}")
}
pub fn snapshot_path(name: &str) -> String {
    format!("/apis/kuberaft.io/v1alpha1/namespaces/{NS}/raftsnapshots/{name}")
}
pub fn jobs_path() -> String {
    format!("/apis/batch/v1/namespaces/{NS}/jobs")
}
pub fn pods_path() -> String {
    format!("/api/v1/namespaces/{NS}/pods")
}
pub fn pod_path(name: &str) -> String {
    format!("{}/{name}", pods_path())
}
pub fn events_path() -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{NS}/events")
}

impl FakeApi {
    /// A kube client whose requests this fake answers, on a task of the current runtime.
    pub fn client(&self) -> kube::Client {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut handle = pin!(handle);
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let (status, reply) = {
                    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                    state.answer(&parts.method, parts.uri.path(), &bytes)
                };
                let body = Body::from(serde_json::to_vec(&reply).unwrap_or_default());
                let response = Response::builder().status(status).body(body);
                match response {
                    Ok(response) => send.send_response(response),
                    Err(err) => send.send_error(err),
                }
            }
        });
        kube::Client::new(service, NS)
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    pub fn put(&self, path: &str, value: Value) {
        self.lock().objects.insert(path.to_string(), value);
    }

    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.lock().calls)
    }

    pub fn take_events(&self) -> Vec<Value> {
        std::mem::take(&mut self.lock().events)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn status(code: u16, reason: &str, path: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{path}: {reason}"), "reason": reason, "code": code})
}

fn not_found(path: &str) -> (StatusCode, Value) {
    (StatusCode::NOT_FOUND, status(404, "NotFound", path))
}

/// Whether `path` names a namespaced collection (`/api/v1/namespaces/NS/pods`,
/// `/apis/GROUP/VERSION/namespaces/NS/RESOURCE`) rather than an object.
fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.first() {
        Some(&"api") => parts.len() == 5,
        Some(&"apis") => parts.len() == 6,
        _ => false,
    }
}

impl State {
    fn answer(&mut self, method: &Method, path: &str, body: &[u8]) -> (StatusCode, Value) {
        self.calls.push(Call::new(method.clone(), path));
        self.history.push(Call::new(method.clone(), path));
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        match *method {
            Method::GET if is_collection(path) => {
                // A list (label selectors are not applied: the objects here are the cluster's).
                let prefix = format!("{path}/");
                let items: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|(p, _)| p.strip_prefix(&prefix).is_some_and(|name| !name.contains('/')))
                    .map(|(_, v)| v.clone())
                    .collect();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            Method::GET => match self.objects.get(path) {
                Some(object) => (StatusCode::OK, object.clone()),
                None => not_found(path),
            },
            Method::POST if path == events_path() => {
                self.events.push(body.clone());
                (StatusCode::CREATED, body)
            }
            Method::POST if path.ends_with("/eviction") => {
                // An eviction: the pod is deleted, if the disruption budget allows it.
                let pod = path.trim_end_matches("/eviction");
                let Some(object) = self.objects.get(pod) else { return not_found(pod) };
                if let Err(why) = self.budget_allows(object) {
                    return (StatusCode::TOO_MANY_REQUESTS, status(429, "TooManyRequests", &why));
                }
                self.objects.remove(pod);
                self.evicted.push(pod.to_string());
                (StatusCode::CREATED, json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}))
            }
            Method::POST => {
                // Create: the object goes under its name; a second create conflicts.
                let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let at = format!("{path}/{name}");
                if self.objects.contains_key(&at) {
                    return (StatusCode::CONFLICT, status(409, "AlreadyExists", &at));
                }
                self.resource_version += 1;
                let mut object = body;
                object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
                self.objects.insert(at, object.clone());
                (StatusCode::CREATED, object)
            }
            Method::PUT => {
                // Replace, with optimistic concurrency on the resourceVersion.
                let Some(current) = self.objects.get(path) else { return not_found(path) };
                if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    return (StatusCode::CONFLICT, status(409, "Conflict", path));
                }
                self.resource_version += 1;
                let mut object = body;
                object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
                self.objects.insert(path.to_string(), object.clone());
                (StatusCode::OK, object)
            }
            Method::PATCH if path.starts_with(&events_path()) => {
                // A repeated event: the recorder counts it in a series on the first one.
                self.events.push(body.clone());
                (StatusCode::OK, body)
            }
            Method::PATCH if path.ends_with("/status") => {
                let base = path.trim_end_matches("/status");
                let Some(object) = self.objects.get_mut(base) else { return not_found(base) };
                object["status"] = body.get("status").cloned().unwrap_or(Value::Null);
                (StatusCode::OK, object.clone())
            }
            Method::PATCH => {
                // Server-side apply of a whole object: what it sets replaces what the object has
                // (maps merged key by key, lists replaced whole), and what it does not set stays
                // (as the fields another manager owns do), as do the server's own (uid, status).
                self.resource_version += 1;
                let previous = self.objects.get(path);
                let mut object = previous.cloned().unwrap_or(Value::Null);
                merge(&mut object, body);
                if let Some(fields) = object.as_object_mut() {
                    fields.remove("status");
                }
                let uid = previous
                    .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("uid-{}", self.resource_version));
                if let Some(status) = previous.and_then(|p| p.get("status")).cloned() {
                    object["status"] = status;
                }
                object["metadata"]["uid"] = json!(uid);
                object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
                // A deleted object goes once its last finalizer does.
                let finalized = object["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
                if !object["metadata"]["deletionTimestamp"].is_null() && finalized {
                    self.objects.remove(path);
                } else {
                    self.objects.insert(path.to_string(), object.clone());
                }
                (StatusCode::OK, object)
            }
            Method::DELETE => match self.objects.remove(path) {
                // Deleted at once (no finalizers here). A Job's pods go with it (the garbage
                // collector, in the background); other owned objects are the test's to remove.
                Some(_) => {
                    if let Some(job) = path.strip_prefix(&format!("{}/", jobs_path())) {
                        let pods = format!("{}/", pods_path());
                        self.objects
                            .retain(|p, o| !(p.starts_with(&pods) && o["metadata"]["labels"]["job-name"] == job));
                    }
                    (StatusCode::OK, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
                }
                None => not_found(path),
            },
            _ => (StatusCode::METHOD_NOT_ALLOWED, json!({"kind": "Status", "code": 405})),
        }
    }
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

impl State {
    /// Whether the namespace's PodDisruptionBudget (if any) lets `pod` be evicted, as the API
    /// server decides it from the disruption controller's counts: the pods expected (the
    /// StatefulSet's replicas), those healthy (ready), and `maxUnavailable`. A healthy pod may
    /// go while one fewer would still be enough; an unhealthy one, while enough are healthy,
    /// or always with `unhealthyPodEvictionPolicy: AlwaysAllow`.
    fn budget_allows(&self, pod: &Value) -> Result<(), String> {
        // `<collection>/` of each kind: the paths of its objects start with it.
        let Some(budget) = self.objects.iter().find(|(p, _)| p.starts_with(&pdb_path(""))).map(|(_, v)| v) else {
            return Ok(());
        };
        let pods: Vec<&Value> =
            self.objects.iter().filter(|(p, _)| p.starts_with(&pod_path(""))).map(|(_, v)| v).collect();
        let expected = self
            .objects
            .iter()
            .find(|(p, _)| p.starts_with(&sts_path("")))
            .and_then(|(_, sts)| sts["spec"]["replicas"].as_i64())
            .unwrap_or(pods.len() as i64);
        let healthy = pods.iter().filter(|p| ready(p)).count() as i64;
        let max_unavailable = budget["spec"]["maxUnavailable"].as_i64().unwrap_or(0);
        let desired = (expected - max_unavailable).max(0);
        let always = budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow";
        let allowed = if ready(pod) { healthy > desired } else { always || healthy >= desired };
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "Cannot evict pod as it would violate the pod's disruption budget (healthy {healthy}, desired {desired})"
            ))
        }
    }
}

/// `patch` merged into `into`: maps key by key, anything else replaced.
fn merge(into: &mut Value, patch: Value) {
    match (into, patch) {
        (Value::Object(into), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(into.entry(key).or_insert(Value::Null), value);
            }
        }
        (into, patch) => *into = patch,
    }
}
