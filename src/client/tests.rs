//! Client behaviour against tiny axum servers on 127.0.0.1:0: failover, the statuses that are
//! and are not retried, error bodies, key encoding. Every server is stopped at the end of its
//! test, and every wait is bounded by the client's own timeouts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Client, ClientConfig, ClientError, Consistency, Credentials};
use crate::base::wire::{ErrorBody, ErrorDetail, PutResponse, Status, HEADER_MOD_REVISION};

/// An HTTP server on an ephemeral port of 127.0.0.1.
struct MockServer {
    url: String,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl MockServer {
    async fn start(router: Router) -> MockServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("local address");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        MockServer { url: format!("http://{address}"), shutdown, task }
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        let mut task = self.task;
        // A handler that hangs on purpose would hold a graceful shutdown forever.
        if tokio::time::timeout(Duration::from_secs(1), &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// A URL on which nothing listens: bind an ephemeral port, then close it.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let address = listener.local_addr().expect("local address");
    drop(listener);
    format!("http://{address}")
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = ErrorBody { error: ErrorDetail::new(code, message) };
    (status, Json(body)).into_response()
}

/// A server that counts its requests and answers each with `respond()`.
fn counting(hits: Arc<AtomicUsize>, respond: fn() -> Response) -> Router {
    Router::new().fallback(any(move || {
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            respond()
        }
    }))
}

fn put_ok() -> Response {
    Json(PutResponse { revision: 7 }).into_response()
}

fn unavailable() -> Response {
    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, "no_leader", "no leader elected yet");
    response.headers_mut().insert("retry-after", HeaderValue::from_static("0"));
    response
}

fn fast_config() -> ClientConfig {
    ClientConfig::with_request_timeout(Duration::from_millis(500))
}

fn sample_status(name: &str) -> Status {
    Status {
        name: name.to_string(),
        id: "1a".to_string(),
        role: crate::base::wire::Role::Follower,
        term: 3,
        leader: "etcd-0".to_string(),
        leader_id: "1".to_string(),
        commit_index: 10,
        applied_index: 9,
        revision: 4,
        members: Vec::new(),
        membership_hash: "abc".to_string(),
        cluster_id: "c1".to_string(),
        errors: Vec::new(),
        auth_enabled: Some(false),
        last_log_term: 3,
        last_log_index: 10,
    }
}

#[tokio::test]
async fn fails_over_from_a_closed_port_to_a_live_endpoint_and_remembers_it() {
    let hits = Arc::new(AtomicUsize::new(0));
    let live = MockServer::start(counting(hits.clone(), put_ok)).await;
    let client = Client::with_config(vec![dead_endpoint(), live.url.clone()], fast_config()).expect("client");

    let first = client.put("k", Bytes::from_static(b"v"), None).await.expect("put after failover");
    assert_eq!(first.revision, 7);
    // The live endpoint is now tried first: the second call needs no failover.
    let started = Instant::now();
    client.put("k", Bytes::from_static(b"v"), None).await.expect("second put");
    assert!(started.elapsed() < Duration::from_millis(400), "second call should go straight to the live endpoint");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    live.stop().await;
}

#[tokio::test]
async fn a_503_moves_to_the_next_endpoint() {
    let busy_hits = Arc::new(AtomicUsize::new(0));
    let ok_hits = Arc::new(AtomicUsize::new(0));
    let busy = MockServer::start(counting(busy_hits.clone(), unavailable)).await;
    let ok = MockServer::start(counting(ok_hits.clone(), put_ok)).await;
    let client = Client::with_config(vec![busy.url.clone(), ok.url.clone()], fast_config()).expect("client");

    let answer = client.put("k", Bytes::from_static(b"v"), None).await.expect("put");
    assert_eq!(answer.revision, 7);
    client.put("k", Bytes::from_static(b"v"), None).await.expect("second put");
    assert_eq!(busy_hits.load(Ordering::SeqCst), 1, "the answering endpoint is remembered");
    assert_eq!(ok_hits.load(Ordering::SeqCst), 2);
    busy.stop().await;
    ok.stop().await;
}

#[tokio::test]
async fn a_504_is_not_retried_because_the_write_may_have_applied() {
    let first_hits = Arc::new(AtomicUsize::new(0));
    let second_hits = Arc::new(AtomicUsize::new(0));
    let first = MockServer::start(counting(first_hits.clone(), || {
        error_response(StatusCode::GATEWAY_TIMEOUT, "outcome_unknown", "leader changed")
    }))
    .await;
    let second = MockServer::start(counting(second_hits.clone(), put_ok)).await;
    let client = Client::with_config(vec![first.url.clone(), second.url.clone()], fast_config()).expect("client");

    let err = client.put("k", Bytes::from_static(b"v"), None).await.expect_err("504 is an error");
    assert!(err.is_outcome_unknown());
    assert!(matches!(&err, ClientError::Api { status: 504, code, .. } if code == "outcome_unknown"), "{err:?}");
    assert_eq!(first_hits.load(Ordering::SeqCst), 1);
    assert_eq!(second_hits.load(Ordering::SeqCst), 0);
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_4xx_error_body_is_parsed_and_not_retried() {
    let first_hits = Arc::new(AtomicUsize::new(0));
    let second_hits = Arc::new(AtomicUsize::new(0));
    let first = MockServer::start(counting(first_hits.clone(), || {
        error_response(StatusCode::PRECONDITION_FAILED, "compare_failed", "key is at revision 5")
    }))
    .await;
    let second = MockServer::start(counting(second_hits.clone(), put_ok)).await;
    let client = Client::with_config(vec![first.url.clone(), second.url.clone()], fast_config()).expect("client");

    let err = client.put("k", Bytes::from_static(b"v"), Some(4)).await.expect_err("412");
    match err {
        ClientError::Api { status, code, message } => {
            assert_eq!((status, code.as_str(), message.as_str()), (412, "compare_failed", "key is at revision 5"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    assert_eq!(first_hits.load(Ordering::SeqCst), 1);
    assert_eq!(second_hits.load(Ordering::SeqCst), 0);
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_non_json_error_body_becomes_code_http_status() {
    let server = MockServer::start(Router::new().fallback(|| async { (StatusCode::BAD_REQUEST, "nope") })).await;
    let client = Client::with_config(vec![server.url.clone()], fast_config()).expect("client");

    let err = client.members().await.expect_err("400");
    match err {
        ClientError::Api { status, code, message } => {
            assert_eq!((status, code.as_str(), message.as_str()), (400, "http_400", "nope"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn keys_are_percent_encoded_as_one_path_segment() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorder = seen.clone();
    let router = Router::new().fallback(any(move |uri: Uri| {
        let recorder = recorder.clone();
        async move {
            if let Ok(mut seen) = recorder.lock() {
                seen.push(uri.to_string());
            }
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_MOD_REVISION, HeaderValue::from_static("12"));
            (headers, "value")
        }
    }));
    let server = MockServer::start(router).await;
    let client = Client::with_config(vec![server.url.clone()], fast_config()).expect("client");

    let got = client.get("a/b c", Consistency::Serializable).await.expect("get").expect("present");
    assert_eq!(got.value, Bytes::from_static(b"value"));
    assert_eq!(got.mod_revision, 12);
    assert_eq!(got.create_revision, None);
    assert_eq!(seen.lock().expect("lock").as_slice(), ["/v1/kv/a%2Fb%20c?consistency=serializable"]);
    server.stop().await;
}

#[tokio::test]
async fn a_missing_key_is_none() {
    let server = MockServer::start(
        Router::new().fallback(|| async { error_response(StatusCode::NOT_FOUND, "not_found", "no such key") }),
    )
    .await;
    let client = Client::with_config(vec![server.url.clone()], fast_config()).expect("client");
    assert_eq!(client.get("missing", Consistency::Linearizable).await.expect("get"), None);
    server.stop().await;
}

#[tokio::test]
async fn a_read_that_times_out_moves_on_but_a_write_does_not() {
    let slow_hits = Arc::new(AtomicUsize::new(0));
    let slow_counter = slow_hits.clone();
    let slow = MockServer::start(Router::new().fallback(any(move || {
        let slow_counter = slow_counter.clone();
        async move {
            slow_counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(5)).await;
            put_ok()
        }
    })))
    .await;
    let ok = MockServer::start(
        Router::new()
            .route("/v1/members", get(|| async { Json(crate::base::wire::MembersResponse { members: Vec::new() }) })),
    )
    .await;
    let config = ClientConfig::with_request_timeout(Duration::from_millis(200));
    let client = Client::with_config(vec![slow.url.clone(), ok.url.clone()], config).expect("client");

    let members = client.members().await.expect("read fails over after a timeout");
    assert!(members.members.is_empty());

    let writer = Client::with_config(vec![slow.url.clone(), ok.url.clone()], client.config().clone()).expect("client");
    let err = writer.put("k", Bytes::from_static(b"v"), None).await.expect_err("write times out");
    assert!(matches!(err, ClientError::OutcomeUnknown { .. }), "{err:?}");
    assert!(err.is_outcome_unknown());
    assert_eq!(slow_hits.load(Ordering::SeqCst), 2);
    slow.stop().await;
    ok.stop().await;
}

#[tokio::test]
async fn when_every_endpoint_fails_the_error_names_each_attempt() {
    let dead = vec![dead_endpoint(), dead_endpoint()];
    let client = Client::with_config(dead.clone(), fast_config()).expect("client");
    let started = Instant::now();
    let err = client.members().await.expect_err("nothing listens");
    assert!(started.elapsed() < Duration::from_secs(3), "bounded by passes and deadline");
    match &err {
        ClientError::Unavailable { attempts } => {
            // Two passes over two endpoints.
            assert_eq!(attempts.len(), 4, "{attempts:?}");
            for endpoint in &dead {
                assert!(attempts.iter().any(|attempt| attempt.starts_with(endpoint.as_str())), "{attempts:?}");
            }
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("cannot connect"), "{message}");
    assert!(message.contains("(2 times)"), "each endpoint named once with a count: {message}");
}

#[tokio::test]
async fn statuses_cover_every_endpoint_in_order() {
    let router =
        |name: &'static str| Router::new().route("/v1/status", get(move || async move { Json(sample_status(name)) }));
    let first = MockServer::start(router("etcd-0")).await;
    let second = MockServer::start(router("etcd-1")).await;
    let dead = dead_endpoint();
    let endpoints = vec![first.url.clone(), dead.clone(), second.url.clone()];
    let client = Client::with_config(endpoints.clone(), fast_config()).expect("client");

    let statuses = client.statuses().await;
    let asked: Vec<&str> = statuses.iter().map(|(endpoint, _)| endpoint.as_str()).collect();
    assert_eq!(asked, endpoints.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(statuses[0].1.as_ref().expect("etcd-0 answers").name, "etcd-0");
    assert!(statuses[1].1.is_err());
    assert_eq!(statuses[2].1.as_ref().expect("etcd-1 answers").name, "etcd-1");
    first.stop().await;
    second.stop().await;
}

#[test]
fn endpoints_are_validated() {
    for bad in ["", "127.0.0.1:2379", "https://a:2379/v1", "http://a:2379/v1", "http://", "ftp://a"] {
        let result = Client::new(vec![bad.to_string()]);
        assert!(matches!(result, Err(ClientError::InvalidEndpoint { .. })), "{bad}: {result:?}");
    }
    assert!(matches!(Client::new(Vec::new()), Err(ClientError::InvalidEndpoint { .. })));
    let client = Client::new(vec!["http://127.0.0.1:2379/".to_string(), " http://[::1]:2379".to_string()])
        .expect("valid endpoints");
    assert_eq!(client.endpoints(), ["http://127.0.0.1:2379", "http://[::1]:2379"]);
}

/// `https://` endpoints need the CA to check the members against; a certificate needs its key;
/// bad files are refused naming the file. Plain endpoints ignore the TLS options.
#[test]
fn tls_options_are_checked_when_the_client_is_built() {
    use super::TlsOptions;
    let dir = tempfile::tempdir().expect("dir");
    let ca = crate::base::pki::Authority::new("ca").expect("ca");
    let files = crate::base::tls::test_files(dir.path(), "client", &ca, false);
    let build = |endpoint: &str, tls: TlsOptions| {
        Client::with_config(vec![endpoint.to_string()], ClientConfig { tls, ..ClientConfig::default() })
    };
    let setup = |r: super::Result<Client>| match r {
        Err(ClientError::Setup(why)) => why,
        other => panic!("expected a setup error, got {other:?}"),
    };
    let https = "https://127.0.0.1:2379";
    let why = setup(build(https, TlsOptions::default()));
    assert!(why.contains("https:// endpoints need --cacert"), "{why}");
    let half = TlsOptions { cacert: files.trusted_ca.clone(), cert: Some(files.cert.clone()), key: None, inline: None };
    assert_eq!(setup(build(https, half)), "--cert and --key go together");
    let missing = TlsOptions { cacert: Some(dir.path().join("nothing.pem")), ..TlsOptions::default() };
    let why = setup(build(https, missing));
    assert!(why.starts_with("TLS: ") && why.contains("nothing.pem"), "{why}");
    let whole = TlsOptions {
        cacert: files.trusted_ca.clone(),
        cert: Some(files.cert.clone()),
        key: Some(files.key),
        inline: None,
    };
    let client = build(https, whole.clone()).expect("a TLS client");
    assert_eq!(client.endpoints(), [https]);
    assert!(build("http://127.0.0.1:2379", whole).is_ok());
    let anonymous = TlsOptions { cacert: files.trusted_ca, ..TlsOptions::default() };
    assert!(build(https, anonymous).is_ok(), "a client may present no certificate");
}

#[test]
fn keys_that_cannot_be_a_path_segment_are_refused() {
    for bad in ["", ".", ".."] {
        assert!(matches!(super::key_path(bad), Err(ClientError::InvalidKey(_))), "{bad:?}");
    }
    assert_eq!(super::key_path("...").expect("a valid key"), "/v1/kv/...");
}

/// A server that records each request's method, path and query, and body, and answers `reply`.
fn recording(seen: Arc<Mutex<Vec<(String, String, String)>>>, reply: serde_json::Value) -> Router {
    Router::new().fallback(any(move |method: axum::http::Method, uri: Uri, body: Bytes| {
        let seen = seen.clone();
        let reply = reply.clone();
        async move {
            if let Ok(mut seen) = seen.lock() {
                seen.push((method.to_string(), uri.to_string(), String::from_utf8_lossy(&body).into_owned()));
            }
            Json(reply)
        }
    }))
}

#[tokio::test]
async fn range_txn_and_compact_post_their_json_and_read_etcds_answers() {
    use crate::base::wire::kv::{RangeRequest, RequestOp, TxnRequest};
    let seen: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let reply = serde_json::json!({"header": {"revision": 9}, "kvs": [{"key": "a", "createRevision": 2,
        "modRevision": 3, "version": 2, "valueBase64": "AP8=", "lease": 0}], "more": true, "count": 4,
        "succeeded": true, "responses": []});
    let server = MockServer::start(recording(seen.clone(), reply)).await;
    let client = Client::with_config(vec![server.url.clone()], fast_config()).expect("client");

    let asked = RangeRequest { key: Some("a".into()), prefix: true, limit: 1, ..Default::default() };
    let found = client.range(&asked, Consistency::Serializable).await.expect("range");
    assert_eq!((found.header.revision, found.more, found.count), (9, true, 4));
    assert_eq!(found.kvs[0].value_bytes(), Some(vec![0, 0xff]));
    let txn = TxnRequest { success: vec![RequestOp::RequestRange(asked.clone())], ..Default::default() };
    let done = client.txn(&txn).await.expect("txn");
    assert!(done.succeeded);
    let compacted = client.compact(7, false).await.expect("compact");
    assert_eq!(compacted.header.revision, 9);

    let seen = seen.lock().expect("lock").clone();
    let expected = [
        ("POST", "/v1/range?consistency=serializable", serde_json::to_value(&asked).unwrap()),
        ("POST", "/v1/txn", serde_json::to_value(&txn).unwrap()),
        ("POST", "/v1/compact", serde_json::json!({"revision": 7})),
    ];
    assert_eq!(seen.len(), expected.len());
    for ((method, path, body), (want_method, want_path, want_body)) in seen.iter().zip(expected) {
        assert_eq!((method.as_str(), path.as_str()), (want_method, want_path));
        assert_eq!(serde_json::from_str::<serde_json::Value>(body).expect("a JSON body"), want_body);
    }
    server.stop().await;
}

#[tokio::test]
async fn get_at_and_list_with_put_their_options_in_the_query() {
    use super::{ListOptions, ListSort};
    let seen: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let list = serde_json::json!({"revision": 5, "kvs": [], "more": false, "count": 0});
    let server = MockServer::start(recording(seen.clone(), list)).await;
    let client = Client::with_config(vec![server.url.clone()], fast_config()).expect("client");
    let options = ListOptions {
        prefix: "a/".into(),
        limit: Some(3),
        start_after: Some("a/b".into()),
        from_key: true,
        keys_only: true,
        sort_by: Some(ListSort::Mod),
        descending: true,
        revision: Some(4),
        consistency: Consistency::Serializable,
    };
    let listed = client.list_with(&options).await.expect("list");
    assert_eq!(listed.count, Some(0));
    client.list("p", None).await.expect("plain list");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(
        seen[0].1,
        "/v1/kv?prefix=a%2F&limit=3&startAfter=a%2Fb&fromKey=true&keysOnly=true&sortBy=mod&sortOrder=descend&rev=4\
         &consistency=serializable"
    );
    assert_eq!(seen[1].1, "/v1/kv?prefix=p", "a plain list asks what it always asked");
    server.stop().await;

    let paths: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorder = paths.clone();
    let router = Router::new().fallback(any(move |uri: Uri| {
        let recorder = recorder.clone();
        async move {
            if let Ok(mut paths) = recorder.lock() {
                paths.push(uri.to_string());
            }
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_MOD_REVISION, HeaderValue::from_static("3"));
            headers.insert(crate::base::wire::HEADER_REVISION, HeaderValue::from_static("8"));
            (headers, "old")
        }
    }));
    let server = MockServer::start(router).await;
    let client = Client::with_config(vec![server.url.clone()], fast_config()).expect("client");
    let got = client.get_at("k", Some(3), Consistency::Linearizable).await.expect("get").expect("present");
    assert_eq!((got.value, got.mod_revision, got.revision), (Bytes::from_static(b"old"), 3, Some(8)));
    assert_eq!(paths.lock().expect("lock").as_slice(), ["/v1/kv/k?consistency=linearizable&rev=3"]);
    server.stop().await;
}

/// A range is a read although it is a POST: an answer lost on one endpoint is asked again of
/// the next. A txn or a compact whose answer is lost may have applied: never sent again.
#[tokio::test]
async fn a_lost_range_moves_on_but_a_lost_txn_or_compact_does_not() {
    use crate::base::wire::kv::{RangeRequest, TxnRequest};
    let slow_hits = Arc::new(AtomicUsize::new(0));
    let slow_counter = slow_hits.clone();
    let slow = MockServer::start(Router::new().fallback(any(move || {
        let slow_counter = slow_counter.clone();
        async move {
            slow_counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(5)).await;
            put_ok()
        }
    })))
    .await;
    let ok = MockServer::start(Router::new().fallback(|| async {
        Json(serde_json::json!({"header": {"revision": 2}, "kvs": [], "more": false, "count": 0}))
    }))
    .await;
    let config = ClientConfig::with_request_timeout(Duration::from_millis(200));
    let client = Client::with_config(vec![slow.url.clone(), ok.url.clone()], config.clone()).expect("client");
    let asked = RangeRequest { key: Some("a".into()), ..Default::default() };
    let found = client.range(&asked, Consistency::Linearizable).await.expect("a range fails over");
    assert_eq!(found.header.revision, 2);

    let writer = Client::with_config(vec![slow.url.clone(), ok.url.clone()], config.clone()).expect("client");
    let err = writer.txn(&TxnRequest::default()).await.expect_err("the txn's answer is lost");
    assert!(err.is_outcome_unknown(), "{err:?}");
    let writer = Client::with_config(vec![slow.url.clone(), ok.url.clone()], config).expect("client");
    let err = writer.compact(3, false).await.expect_err("the compact's answer is lost");
    assert!(err.is_outcome_unknown(), "{err:?}");
    assert_eq!(slow_hits.load(Ordering::SeqCst), 3);
    slow.stop().await;
    ok.stop().await;
}

#[tokio::test]
async fn a_compacted_error_says_the_compact_revision() {
    let server = MockServer::start(Router::new().fallback(|| async {
        let error = ErrorDetail {
            compact_revision: Some(6),
            ..ErrorDetail::new("compacted", "mvcc: required revision has been compacted")
        };
        (StatusCode::BAD_REQUEST, Json(ErrorBody { error })).into_response()
    }))
    .await;
    let client = Client::with_config(vec![server.url.clone()], fast_config()).expect("client");
    let err = client.get_at("k", Some(2), Consistency::Linearizable).await.expect_err("compacted");
    match err {
        ClientError::Api { status, code, message } => assert_eq!(
            (status, code.as_str(), message.as_str()),
            (400, "compacted", "mvcc: required revision has been compacted (compacted at revision 6)")
        ),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

/// etcdctl's `--user`: `NAME:PASSWORD` split at the first colon, or `NAME` with `--password`.
#[test]
fn credentials_are_read_as_etcdctl_reads_them() {
    let parsed = |user: &str, password: Option<&str>| {
        Credentials::parse(user, password).map(|c| (c.name, c.password)).map_err(|e| e.to_string())
    };
    assert_eq!(parsed("alice:pa:ss", None), Ok(("alice".into(), "pa:ss".into())));
    assert_eq!(parsed("alice:pw", Some("other")), Ok(("alice:pw".into(), "other".into())));
    assert_eq!(parsed("alice", Some("pw")), Ok(("alice".into(), "pw".into())));
    assert!(parsed("alice", None).is_err_and(|e| e.contains("has no password")));
    assert!(parsed(":pw", None).is_err_and(|e| e.contains("empty user name")));
    assert!(!format!("{:?}", Credentials::parse("alice:secret", None).expect("parses")).contains("secret"));
}
