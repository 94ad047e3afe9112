//! The etcd-gateway target: etcd's JSON gateway, the HTTP API an etcd member serves on its
//! client port beside gRPC (`POST /v3/kv/put`, `/v3/kv/range`, `/v3/kv/txn`, `/v3/lease/grant`,
//! `/v3/lease/keepalive`, `/v3/lease/revoke`, `/v3/watch`), with keys and values in base64 and
//! 64-bit numbers as strings. It is how issue 19 first compared the two systems: kuberaft's HTTP
//! API against etcd's, one kind of client for both. One pooled HTTP/1.1 client per connection,
//! connection `i` on endpoint `i mod n` (etcd's member passes to its leader what it cannot
//! serve itself, as a kuberaft follower does).

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::json;

use super::{Answer, Call, Driver, EventStream, Op, OpResult};
use crate::base::output::CliError;
use crate::client::{encode_base64, http_client, normalize_endpoint, ClientConfig, LineBuffer, SecurityArgs};

pub struct GatewayDriver {
    conns: Vec<(reqwest::Client, String)>,
    timeout: Duration,
}

impl GatewayDriver {
    pub fn new(
        endpoints: &[String],
        conns: usize,
        timeout: Duration,
        security: &SecurityArgs,
    ) -> Result<GatewayDriver, CliError> {
        if security.user.is_some() {
            return Err(CliError::Usage("the etcd-gateway target does not authenticate: drop --user".into()));
        }
        let endpoints = endpoints
            .iter()
            .map(|e| normalize_endpoint(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CliError::Usage(e.to_string()))?;
        if endpoints.is_empty() {
            return Err(CliError::Usage("--endpoints names no member".into()));
        }
        let config = ClientConfig { tls: security.tls(), ..ClientConfig::with_request_timeout(timeout) };
        let conns = (0..conns)
            .map(|i| {
                let client = http_client(&endpoints, &config).map_err(|e| CliError::Usage(e.to_string()))?;
                Ok((client, endpoints[i % endpoints.len()].clone()))
            })
            .collect::<Result<Vec<_>, CliError>>()?;
        Ok(GatewayDriver { conns, timeout })
    }

    fn conn(&self, conn: usize) -> &(reqwest::Client, String) {
        &self.conns[conn % self.conns.len()]
    }

    /// One call: `body` to `path`, the answer read as `T`; an answer other than 2xx is an error
    /// with the gateway's message.
    async fn call<T: DeserializeOwned>(&self, conn: usize, path: &str, body: serde_json::Value) -> Result<T, String> {
        let (client, endpoint) = self.conn(conn);
        let answer = client
            .post(format!("{endpoint}{path}"))
            .timeout(self.timeout)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let status = answer.status();
        let bytes = answer.bytes().await.map_err(|e| format!("{path}: {e}"))?;
        if !status.is_success() {
            return Err(failure(path, status.as_u16(), &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("{path}: {e}: {}", String::from_utf8_lossy(&bytes)))
    }
}

/// The gateway's error answer: `{"error", "message", "code"}` (a gRPC code).
#[derive(Deserialize)]
struct Failure {
    message: String,
    #[serde(default)]
    code: i32,
}

fn failure(path: &str, status: u16, body: &[u8]) -> String {
    match serde_json::from_slice::<Failure>(body) {
        Ok(f) => format!("{path}: {status}: {} (gRPC code {})", f.message, f.code),
        Err(_) => format!("{path}: {status}: {}", String::from_utf8_lossy(body)),
    }
}

/// A 64-bit number as the gateway writes it: a string (a JSON number is taken too); absent is 0.
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Text(String),
        Plain(i64),
    }
    match Number::deserialize(d)? {
        Number::Text(text) => text.parse().map_err(serde::de::Error::custom),
        Number::Plain(n) => Ok(n),
    }
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default, deserialize_with = "number")]
    revision: i64,
}

#[derive(Deserialize, Default)]
struct KeyValue {
    #[serde(default, deserialize_with = "number")]
    mod_revision: i64,
}

#[derive(Deserialize)]
struct Written {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct Lease {
    #[serde(default)]
    header: Header,
    #[serde(rename = "ID", default, deserialize_with = "number")]
    id: i64,
    #[serde(rename = "TTL", default, deserialize_with = "number")]
    ttl: i64,
}

/// A streaming method's answer: one `{"result": ...}` or `{"error": ...}` a line.
#[derive(Deserialize)]
struct Streamed<T> {
    result: Option<T>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(default)]
    kv: KeyValue,
}

#[derive(Deserialize)]
struct WatchAnswer {
    #[serde(default)]
    events: Vec<Event>,
    #[serde(default)]
    canceled: bool,
    #[serde(default)]
    cancel_reason: String,
}

fn result<T>(path: &str, answer: Streamed<T>) -> Result<T, String> {
    match (answer.result, answer.error) {
        (Some(result), None) => Ok(result),
        (_, Some(error)) => Err(format!("{path}: {error}")),
        (None, None) => Err(format!("{path}: an answer with neither a result nor an error")),
    }
}

fn written(header: &Header) -> OpResult {
    OpResult { revision: header.revision.max(0) as u64, ..OpResult::default() }
}

impl Driver for GatewayDriver {
    fn request<'a>(&'a self, Call { conn, op, key, value }: Call<'a>) -> Answer<'a, OpResult> {
        Box::pin(async move {
            let (key, value) = (encode_base64(key), encode_base64(&value));
            match op {
                Op::Put => {
                    let w: Written = self.call(conn, "/v3/kv/put", json!({"key": key, "value": value})).await?;
                    Ok(written(&w.header))
                }
                Op::Get { linearizable } => {
                    let body = json!({"key": key, "serializable": !linearizable});
                    let r: Written = self.call(conn, "/v3/kv/range", body).await?;
                    let revision = r.kvs.first().map_or(0, |kv| kv.mod_revision.max(0) as u64);
                    Ok(OpResult { revision, ..OpResult::default() })
                }
                Op::Cas { revision } => {
                    let body = json!({
                        "compare": [{"target": "MOD", "key": key, "mod_revision": revision.to_string()}],
                        "success": [{"request_put": {"key": key, "value": value}}],
                    });
                    let t: Written = self.call(conn, "/v3/kv/txn", body).await?;
                    Ok(OpResult { compare_failed: !t.succeeded, ..written(&t.header) })
                }
                Op::LeaseGrant { ttl } => {
                    let l: Lease = self.call(conn, "/v3/lease/grant", json!({"TTL": ttl.to_string()})).await?;
                    Ok(OpResult { lease: l.id, ..written(&l.header) })
                }
                Op::LeaseKeepAlive { id } => {
                    let path = "/v3/lease/keepalive";
                    let l: Lease = result(path, self.call(conn, path, json!({"ID": id.to_string()})).await?)?;
                    if l.ttl <= 0 {
                        return Err(format!("keep-alive of lease {id:x}: no such lease"));
                    }
                    Ok(OpResult { lease: id, ..written(&l.header) })
                }
                Op::LeaseRevoke { id } => {
                    let l: Lease = self.call(conn, "/v3/lease/revoke", json!({"ID": id.to_string()})).await?;
                    Ok(OpResult { lease: id, ..written(&l.header) })
                }
            }
        })
    }

    /// `POST /v3/watch` with one create request of every key as the whole body (the gateway
    /// answers once the body has ended), then its answers, one a line, for as long as it lasts.
    fn watch(&self, conn: usize) -> Answer<'_, EventStream> {
        Box::pin(async move {
            let (client, endpoint) = self.conn(conn);
            let every = json!({"create_request": {"key": "AA==", "range_end": "AA=="}});
            const PATH: &str = "/v3/watch";
            let answer =
                client.post(format!("{endpoint}{PATH}")).json(&every).send().await.map_err(|e| e.to_string())?;
            let status = answer.status();
            if !status.is_success() {
                let body = answer.bytes().await.unwrap_or_default();
                return Err(failure(PATH, status.as_u16(), &body));
            }
            let lines = Lines { body: answer.bytes_stream().boxed(), lines: LineBuffer::default() };
            let stream = futures::stream::unfold(lines, |mut lines| async move {
                let line = lines.next().await?;
                let revisions = line.and_then(|line| {
                    let answer: Streamed<WatchAnswer> =
                        serde_json::from_slice(&line).map_err(|e| format!("{PATH}: {e}"))?;
                    let answer = result(PATH, answer)?;
                    if answer.canceled {
                        return Err(format!("{PATH}: the watch was canceled: {}", answer.cancel_reason));
                    }
                    Ok(answer.events.iter().map(|e| e.kv.mod_revision).collect::<Vec<i64>>())
                });
                Some((revisions, lines))
            });
            Ok(stream.boxed())
        })
    }
}

/// The longest line of a streamed answer kept: an answer of a watch holds the events of one
/// revision at most (one put each, here).
const MAX_LINE: usize = 16 << 20;

/// A streamed body cut into its lines.
struct Lines {
    body: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    lines: LineBuffer,
}

impl Lines {
    /// The next whole line that is not blank (without its newline); `None` when the body ends.
    async fn next(&mut self) -> Option<Result<Bytes, String>> {
        loop {
            if let Some(line) = self.lines.next_line() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(Ok(line));
            }
            if self.lines.held() > MAX_LINE {
                return Some(Err(format!("a line of the watch's answer is longer than {MAX_LINE} bytes")));
            }
            match self.body.next().await? {
                Ok(chunk) => self.lines.push(&chunk),
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_as_the_gateway_writes_them() {
        let w: Written = serde_json::from_str(
            r#"{"header":{"cluster_id":"1","revision":"42","raft_term":"2"},"succeeded":true,
                "kvs":[{"key":"azE=","mod_revision":"40","version":"1"}]}"#,
        )
        .unwrap();
        assert_eq!((w.header.revision, w.succeeded, w.kvs[0].mod_revision), (42, true, 40));
        // A failed compare: `succeeded` (false) is left out, as every default is.
        let w: Written = serde_json::from_str(r#"{"header":{"revision":"3"}}"#).unwrap();
        assert_eq!((w.header.revision, w.succeeded, w.kvs.len()), (3, false, 0));
        let l: Lease =
            serde_json::from_str(r#"{"header":{"revision":"4"},"ID":"6524205472043759626","TTL":"60"}"#).unwrap();
        assert_eq!((l.id, l.ttl), (6524205472043759626, 60));
        let l: Streamed<Lease> = serde_json::from_str(r#"{"result":{"header":{},"ID":"123"}}"#).unwrap();
        assert_eq!(result("k", l).unwrap().ttl, 0, "an unknown lease's keep-alive has no TTL");
        let e: Streamed<Lease> = serde_json::from_str(r#"{"error":{"grpc_code":5,"message":"x"}}"#).unwrap();
        assert!(result("k", e).is_err());
        assert!(serde_json::from_str::<Header>(r#"{"revision":"x"}"#).is_err());
    }

    #[test]
    fn an_error_answer_says_the_gateways_message() {
        let body = br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
        assert_eq!(
            failure("/v3/lease/revoke", 404, body),
            "/v3/lease/revoke: 404: etcdserver: requested lease not found (gRPC code 5)"
        );
        assert_eq!(failure("/v3/kv/put", 502, b"bad gateway"), "/v3/kv/put: 502: bad gateway");
    }

    #[test]
    fn a_streamed_body_is_read_line_by_line_whatever_its_chunks() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let chunks: Vec<reqwest::Result<Bytes>> =
                vec![Ok(Bytes::from_static(b"{\"a\":1}\n{\"b\"")), Ok(Bytes::from_static(b":2}\n\n{\"c\":3}\n"))];
            let mut lines = Lines { body: futures::stream::iter(chunks).boxed(), lines: LineBuffer::default() };
            let mut seen = Vec::new();
            while let Some(line) = lines.next().await {
                seen.push(String::from_utf8(line.unwrap().to_vec()).unwrap());
            }
            assert_eq!(seen, ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]);
        });
    }
}
