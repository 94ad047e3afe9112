//! A Kubernetes API server in memory, behind kube's tower-test mock service: it answers the calls
//! the operator makes (get, list pods, server-side apply and merge patches, status apply, events) from a map of
//! objects by path, and records every call so that tests can assert the exact sequence. Lists and
//! watches select by their `labelSelector` (equality and existence), as the API server does, so
//! an object the operator's selectors miss is missed here too.
//!
//! The same server also listens on a loopback port ([`FakeApi::serve`]), for a kube client made
//! from a URL or a kubeconfig (the operator run whole, `kubectl raft`). There it also streams
//! watches (every change since the list's resourceVersion, then each as it comes) and answers
//! the pod proxy (`/api/v1/namespaces/NS/pods/[https:]POD:PORT/proxy/...`) by forwarding to the
//! address [`FakeApi::proxy_to`] gave that pod's port, as the API server forwards to the pod.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
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
    /// The changes watches stream: (sequence, object path, ADDED|MODIFIED|DELETED, object). A
    /// list's resourceVersion is the sequence it saw; a watch from it gets what came after.
    changes: VecDeque<(u64, String, &'static str, Value)>,
    sequence: u64,
    changed: Arc<tokio::sync::Notify>,
    /// Where the pod proxy forwards, by `pod:port`.
    proxies: BTreeMap<String, SocketAddr>,
}

/// The most changes kept for watches that start late.
const MAX_CHANGES: usize = 10_000;

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
                    state.answer(&parts.method, parts.uri.path(), parts.uri.query().unwrap_or_default(), &bytes)
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
        let mut state = self.lock();
        let kind = if state.objects.contains_key(path) { "MODIFIED" } else { "ADDED" };
        state.objects.insert(path.to_string(), value.clone());
        state.change(path, kind, value);
    }

    /// Removes an object, as a delete by someone else would (watches see it go).
    pub fn remove(&self, path: &str) -> Option<Value> {
        let mut state = self.lock();
        let object = state.objects.remove(path)?;
        state.change(path, "DELETED", object.clone());
        Some(object)
    }

    /// The pod proxy forwards `pod:port` to `to`.
    pub fn proxy_to(&self, pod: &str, port: u16, to: SocketAddr) {
        self.lock().proxies.insert(format!("{pod}:{port}"), to);
    }

    /// Serves this fake on a loopback port until the returned handle is dropped.
    pub async fn serve(&self) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let router = axum::Router::new().fallback(handle).with_state(self.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Served { addr, task }
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
    /// The objects directly in `collection` that `selector` selects (all without one).
    fn list(&self, collection: &str, selector: Option<&str>) -> Vec<Value> {
        let prefix = format!("{collection}/");
        self.objects
            .iter()
            .filter(|(p, _)| p.strip_prefix(&prefix).is_some_and(|name| !name.contains('/')))
            .filter(|(_, object)| selects(selector, object))
            .map(|(_, object)| object.clone())
            .collect()
    }

    fn answer(&mut self, method: &Method, path: &str, query: &str, body: &[u8]) -> (StatusCode, Value) {
        self.calls.push(Call::new(method.clone(), path));
        self.history.push(Call::new(method.clone(), path));
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        match *method {
            Method::GET if is_collection(path) => {
                // A list, of the objects its label selector selects.
                let items = self.list(path, query_value(query, "labelSelector"));
                let version = self.sequence.to_string();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": version}, "items": items}),
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
                if let Some(object) = self.objects.remove(pod) {
                    self.change(pod, "DELETED", object);
                }
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
                self.objects.insert(at.clone(), object.clone());
                self.change(&at, "ADDED", object.clone());
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
                self.change(path, "MODIFIED", object.clone());
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
                let object = object.clone();
                self.change(base, "MODIFIED", object.clone());
                (StatusCode::OK, object)
            }
            Method::PATCH => {
                // Server-side apply of a whole object: what it sets replaces what the object has
                // (maps merged key by key, lists replaced whole), and what it does not set stays
                // (as the fields another manager owns do), as do the server's own (uid, status).
                self.resource_version += 1;
                let previous = self.objects.get(path);
                let existed = previous.is_some();
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
                    self.change(path, "DELETED", object.clone());
                } else {
                    let kind = if existed { "MODIFIED" } else { "ADDED" };
                    self.objects.insert(path.to_string(), object.clone());
                    self.change(path, kind, object.clone());
                }
                (StatusCode::OK, object)
            }
            Method::DELETE => match self.objects.remove(path) {
                // Deleted at once (no finalizers here). A Job's pods go with it (the garbage
                // collector, in the background); other owned objects are the test's to remove.
                Some(object) => {
                    self.change(path, "DELETED", object);
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

impl State {
    /// Records a change for the watches, and wakes them. As from the API server, every object a
    /// watch sees has a resourceVersion (kube's watcher lists everything again when one has
    /// none): a deletion gets a new one, and an object a test put without one gets one.
    fn change(&mut self, path: &str, kind: &'static str, mut object: Value) {
        let missing = object["metadata"]["resourceVersion"].as_str().is_none_or(str::is_empty);
        if (kind == "DELETED" || missing) && object["metadata"].is_object() {
            self.resource_version += 1;
            object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        }
        self.sequence += 1;
        self.changes.push_back((self.sequence, path.to_string(), kind, object));
        while self.changes.len() > MAX_CHANGES {
            self.changes.pop_front();
        }
        self.changed.notify_waiters();
    }
}

/// [`FakeApi::serve`]'s server; dropping it stops listening.
pub struct Served {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Served {
    /// A kube client of this server, in namespace `NS`.
    pub fn client(&self) -> kube::Client {
        client_of(self.addr)
    }
}

/// A kube client of the fake served at `addr` (perhaps by another process), in namespace `NS`.
pub fn client_of(addr: SocketAddr) -> kube::Client {
    kuberaft::base::tls::install_default_provider();
    let url = format!("http://{addr}").parse().expect("a URL");
    let mut config = kube::Config::new(url);
    config.default_namespace = NS.to_string();
    kube::Client::try_from(config).expect("a kube client")
}

/// The collection an object path is in (`.../pods/etcd-0` is in `.../pods`).
pub fn collection_of(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(collection, _)| collection)
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// One request to the served fake: the pod proxy, a watch, or what [`State::answer`] answers.
async fn handle(
    axum::extract::State(api): axum::extract::State<FakeApi>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    if let Some(what) = path.strip_prefix("/fake/v1/") {
        return inspect(&api, &parts.method, what, &query, &bytes).into_response();
    }
    if path.contains("/proxy") && path.starts_with(&pods_path()) {
        return forward(&api, &parts, &path, &query, bytes).await;
    }
    if parts.method == Method::GET && matches!(query_value(&query, "watch"), Some("true" | "1")) {
        let since = query_value(&query, "resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let selector = query_value(&query, "labelSelector").map(str::to_string);
        return watch(api, path, since, selector).into_response();
    }
    let (status, reply) = api.lock().answer(&parts.method, &path, &query, &bytes);
    (status, [("content-type", "application/json")], serde_json::to_vec(&reply).unwrap_or_default()).into_response()
}

/// What a test in another process reads and changes of the fake (not recorded as calls):
/// - `GET object?path=P`, `PUT object?path=P` (as [`FakeApi::get`] and [`FakeApi::put`]);
/// - `GET list?collection=C`: the objects directly in collection `C`;
/// - `GET history?from=N`: `{"length": L, "calls": [[method, path], ...]}`, the calls from the Nth.
fn inspect(api: &FakeApi, method: &Method, what: &str, query: &str, body: &[u8]) -> (StatusCode, axum::Json<Value>) {
    let param = |key: &str| query_value(query, key).map(percent_decoded).unwrap_or_default();
    match (method.clone(), what) {
        (Method::GET, "object") => match api.get(&param("path")) {
            Some(object) => (StatusCode::OK, axum::Json(object)),
            None => (StatusCode::NOT_FOUND, axum::Json(Value::Null)),
        },
        (Method::PUT, "object") => match serde_json::from_slice::<Value>(body) {
            Ok(object) => {
                api.put(&param("path"), object);
                (StatusCode::OK, axum::Json(Value::Null))
            }
            Err(err) => (StatusCode::BAD_REQUEST, axum::Json(json!(err.to_string()))),
        },
        (Method::GET, "list") => {
            (StatusCode::OK, axum::Json(Value::Array(api.lock().list(&param("collection"), None))))
        }
        (Method::GET, "history") => {
            let from: usize = param("from").parse().unwrap_or(0);
            let state = api.lock();
            let calls: Vec<Value> =
                state.history.iter().skip(from).map(|c| json!([c.method.as_str(), c.path])).collect();
            (StatusCode::OK, axum::Json(json!({"length": state.history.len(), "calls": calls})))
        }
        _ => (StatusCode::NOT_FOUND, axum::Json(Value::Null)),
    }
}

/// Whether `object`'s labels satisfy a `labelSelector` (percent-encoded, as in the query): its
/// comma-separated requirements `k=v`, `k==v`, `k!=v`, `k` and `!k`, as the API server reads them.
/// No selector selects everything.
fn selects(selector: Option<&str>, object: &Value) -> bool {
    let Some(selector) = selector else { return true };
    let selector = percent_decoded(selector);
    let label = |key: &str| object["metadata"]["labels"][key.trim()].as_str();
    selector.split(',').filter(|r| !r.trim().is_empty()).all(|requirement| {
        if let Some((key, value)) = requirement.split_once("!=") {
            label(key) != Some(value.trim())
        } else if let Some((key, value)) = requirement.split_once("==").or_else(|| requirement.split_once('=')) {
            label(key) == Some(value.trim())
        } else if let Some(key) = requirement.trim().strip_prefix('!') {
            label(key).is_none()
        } else {
            label(requirement).is_some()
        }
    })
}

/// `%XX` escapes and `+` decoded (a query's form encoding).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A watch of the collection at `path`, of the objects `selector` selects: every change after
/// `since`, then each as it comes, one JSON event per line, until the client goes.
fn watch(api: FakeApi, path: String, since: u64, selector: Option<String>) -> axum::response::Response {
    let changed = api.lock().changed.clone();
    let events = futures::stream::unfold(since, move |mut since| {
        let (api, path, changed, selector) = (api.clone(), path.clone(), changed.clone(), selector.clone());
        async move {
            loop {
                let notified = changed.notified();
                let mut notified = pin!(notified);
                notified.as_mut().enable();
                let lines: Vec<u8> = {
                    let state = api.lock();
                    let lines = state
                        .changes
                        .iter()
                        .filter(|(seq, object, ..)| *seq > since && collection_of(object) == path)
                        .filter(|(.., object)| selects(selector.as_deref(), object))
                        .flat_map(|(_, _, kind, object)| {
                            let mut line =
                                serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
                            line.push(b'\n');
                            line
                        })
                        .collect();
                    since = state.sequence;
                    lines
                };
                if !lines.is_empty() {
                    return Some((Ok::<_, std::convert::Infallible>(bytes::Bytes::from(lines)), since));
                }
                notified.await;
            }
        }
    });
    axum::response::Response::builder()
        .header("content-type", "application/json")
        .body(axum::body::Body::from_stream(events))
        .expect("a response")
}

/// The pod proxy: `.../pods/[SCHEME:]POD[:PORT]/proxy/REST` forwarded to the address given for
/// `POD:PORT`, with the method, query, body and headers (but `Authorization`, which the API
/// server keeps), answered with what the pod answered; 503 as the API server says it when the
/// pod cannot be reached.
async fn forward(
    api: &FakeApi,
    parts: &http::request::Parts,
    path: &str,
    query: &str,
    body: bytes::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    {
        let mut state = api.lock();
        state.calls.push(Call::new(parts.method.clone(), path));
        state.history.push(Call::new(parts.method.clone(), path));
    }
    let rest = path.strip_prefix(&format!("{}/", pods_path())).unwrap_or_default();
    let (target, rest) = rest.split_once("/proxy").unwrap_or((rest, ""));
    let pieces: Vec<&str> = target.split(':').collect();
    let (scheme, pod, port) = match pieces.as_slice() {
        [scheme @ ("http" | "https"), pod, port] => (*scheme, *pod, *port),
        [scheme @ ("http" | "https"), pod] => (*scheme, *pod, "80"),
        [pod, port] => ("http", *pod, *port),
        [pod] => ("http", *pod, "80"),
        _ => ("http", target, "80"),
    };
    let unreachable = |why: String| {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": format!("error trying to reach service: {why}"),
                            "reason": "ServiceUnavailable", "code": 503});
        (StatusCode::SERVICE_UNAVAILABLE, [("content-type", "application/json")], status.to_string()).into_response()
    };
    let Some(addr) = api.lock().proxies.get(&format!("{pod}:{port}")).copied() else {
        return unreachable(format!("no pod {pod} with port {port}"));
    };
    let url =
        if query.is_empty() { format!("{scheme}://{addr}{rest}") } else { format!("{scheme}://{addr}{rest}?{query}") };
    // The API server does not check a pod's certificate.
    let client = match crate::http_support::client().danger_accept_invalid_certs(true).build() {
        Ok(client) => client,
        Err(e) => return unreachable(e.to_string()),
    };
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).expect("a method");
    let mut request = client.request(method, &url).body(body.to_vec()).timeout(std::time::Duration::from_secs(10));
    for (name, value) in &parts.headers {
        if !matches!(name.as_str(), "host" | "authorization" | "content-length" | "connection") {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    match request.send().await {
        Ok(answer) => {
            let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let content_type = answer
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_string();
            let body = answer.bytes().await.unwrap_or_default();
            (status, [("content-type", content_type)], body).into_response()
        }
        Err(e) => {
            // The innermost cause, as the API server says it ("connect: connection refused").
            let mut cause: &dyn std::error::Error = &e;
            while let Some(inner) = cause.source() {
                cause = inner;
            }
            unreachable(format!("{addr}: {cause}"))
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
