//! `POST /v1/watch`: etcd's Watch stream over HTTP/1.1 (DESIGN.md §4). The request body is a
//! sequence of JSON `WatchRequest`s (create, cancel, progress), read as they arrive, so a
//! client that keeps the body open can create, cancel and ask for progress on one stream; the
//! answer is newline-delimited JSON, one `WatchResponse` per line, as long as the client
//! reads. A body that ends keeps the stream open. The first request must be whole and valid
//! (else 400); a later invalid one is answered by a cancelled create with the reason, and no
//! further requests are read (the watches already made go on).
//!
//! Served by the member asked, from its own applied state (`node::watch`), never forwarded.
//! A member cut off from the cluster serves its stale state; a client that would rather move
//! on sends `x-kuberaft-require-leader: true` (etcd's `WithRequireLeader`): once the member has
//! had no leader for [`NO_LEADER_CANCEL`], the stream ends with a response of watch id -1,
//! `canceled`, reason "etcdserver: no leader". When the member stops, every stream ends with such
//! a response, reason "etcdserver: server stopped".

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::kv::{bad, header, too_large, wire_kv, Span};
use super::server::{Api, ApiResult};
use crate::base::signal::until_stopped;
use crate::base::wire::watch::{self as wire, HEADER_REQUIRE_LEADER, NO_LEADER};
use crate::base::wire::STOPPED;
use crate::node::watch::{WatchResponse, WatchSpec, WatchStream, STREAM_QUEUE};
use crate::node::NodeError;
use crate::store::auth::{Access, AuthError, Caller};
use crate::store::mvcc::{Event, EventKind};

/// How long a member may have no leader before a stream that requires one ends.
pub const NO_LEADER_CANCEL: std::time::Duration = std::time::Duration::from_secs(1);

/// The most bytes of one watch request (a create holds at most two keys of 1 KiB).
pub const MAX_WATCH_REQUEST_BYTES: usize = 64 << 10;

/// Reads JSON values one at a time from a body that may still be arriving (an NDJSON stream of
/// requests: the watch endpoint's, the lease keep-alive's). `what` names a request in errors;
/// one request is at most `max` bytes. Each byte is scanned once for where its value ends
/// (`ValueEnd`), and a value is parsed once it is whole, however the body is cut into chunks
/// (parsing the buffer from its start at each chunk cost up to `max` bytes a chunk).
pub(super) struct JsonValues<T> {
    body: Body,
    buf: Vec<u8>,
    /// The buffer's bytes before this were taken by values already returned.
    start: usize,
    end: ValueEnd,
    ended: bool,
    what: &'static str,
    max: usize,
    /// Parses tried (for tests: one per value, whatever the chunks).
    parses: usize,
    _value: std::marker::PhantomData<fn() -> T>,
}

impl<T: serde::de::DeserializeOwned> JsonValues<T> {
    pub(super) fn new(body: Body, what: &'static str, max: usize) -> JsonValues<T> {
        JsonValues {
            body,
            buf: Vec::new(),
            start: 0,
            end: ValueEnd::default(),
            ended: false,
            what,
            max,
            parses: 0,
            _value: std::marker::PhantomData,
        }
    }

    /// The next request; `Ok(None)` at the end of the body.
    pub(super) async fn next(&mut self) -> ApiResult<Option<T>> {
        let what = self.what;
        // Bounded: each round either returns or takes one more chunk, and the buffer is capped.
        loop {
            let rest = &self.buf[self.start..];
            if self.ended || self.end.scan(rest) {
                self.parses += 1;
                let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<T>();
                match values.next() {
                    Some(Ok(request)) => {
                        self.start += values.byte_offset();
                        self.end = ValueEnd::default();
                        return Ok(Some(request));
                    }
                    Some(Err(e)) if !e.is_eof() => return Err(bad(format!("bad {what}: {e}"))),
                    Some(Err(e)) if self.ended => return Err(bad(format!("bad {what}: {e}"))),
                    None if self.ended => return Ok(None),
                    // A value the scan left to the parser that is not whole yet (a literal cut
                    // short at the top, which no request is): the scan's `parse` stays set, so it
                    // is parsed again at each chunk.
                    _ => {}
                }
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.drain(..self.start);
                        self.start = 0;
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(bad(format!("cannot read the {what}: {e}"))),
                None => self.ended = true,
            }
            if self.buf.len() - self.start > self.max {
                return Err(too_large(format!("a {what} is at most {} bytes", self.max)));
            }
        }
    }
}

/// Where the JSON value at the start of a buffer ends, found by a scan that goes on where it
/// stopped as the buffer grows: an object or array ends at the bracket that closes it, a
/// string at its closing quote (brackets and quotes in strings are skipped). Anything else at the
/// top (a number, a literal, a stray bracket, a byte no value starts with) is left to the parser
/// at once, which reads or refuses it.
#[derive(Default)]
struct ValueEnd {
    /// Bytes of the value scanned so far.
    at: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Found: parse now.
    parse: bool,
}

impl ValueEnd {
    /// Scans the bytes of `rest` not yet scanned; true once the value at its start is whole
    /// (or is for the parser to judge).
    fn scan(&mut self, rest: &[u8]) -> bool {
        while !self.parse && self.at < rest.len() {
            let byte = rest[self.at];
            self.at += 1;
            if self.in_string {
                match byte {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => {
                        self.in_string = false;
                        self.parse = self.depth == 0;
                    }
                    _ => {}
                }
                continue;
            }
            match byte {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' if self.depth > 1 => self.depth -= 1,
                b'}' | b']' => self.parse = true,
                _ => self.parse = self.depth == 0,
            }
        }
        self.parse
    }
}

/// A create request as the store's watch.
fn watch_spec(c: &wire::WatchCreateRequest) -> ApiResult<WatchSpec> {
    let (key, range_end) = Span {
        key: &c.key,
        key_base64: &c.key_base64,
        range_end: &c.range_end,
        range_end_base64: &c.range_end_base64,
        prefix: c.prefix,
        from_key: c.from_key,
    }
    .resolve()?;
    Ok(WatchSpec {
        key,
        range_end,
        start_revision: c.start_revision,
        prev_kv: c.prev_kv,
        no_put: c.filters.contains(&wire::FilterType::NoPut),
        no_delete: c.filters.contains(&wire::FilterType::NoDelete),
        progress_notify: c.progress_notify,
        fragment: c.fragment,
        watch_id: c.watch_id,
    })
}

/// What a request on the stream asks, checked.
pub(super) enum Ask {
    Create(WatchSpec),
    Cancel(i64),
    Progress,
}

fn ask(request: wire::WatchRequest) -> ApiResult<Ask> {
    match (request.create_request, request.cancel_request, request.progress_request) {
        (Some(c), None, None) => Ok(Ask::Create(watch_spec(&c)?)),
        (None, Some(c), None) => Ok(Ask::Cancel(c.watch_id)),
        (None, None, Some(_)) => Ok(Ask::Progress),
        _ => Err(bad("a watch request holds exactly one of `createRequest`, `cancelRequest`, `progressRequest`")),
    }
}

async fn serve_ask(stream: &mut WatchStream, ask: Ask) {
    match ask {
        Ask::Create(spec) => {
            stream.create(spec).await;
        }
        Ask::Cancel(id) => stream.cancel(id).await,
        Ask::Progress => {
            stream.request_progress();
        }
    }
}

fn wire_event(e: Event) -> wire::Event {
    let kind = match e.kind {
        EventKind::Put => wire::EventType::Put,
        EventKind::Delete => wire::EventType::Delete,
    };
    wire::Event { kind, kv: wire_kv(e.kv), prev_kv: e.prev_kv.map(wire_kv) }
}

fn wire_response(api: &Api, r: WatchResponse) -> wire::WatchResponse {
    wire::WatchResponse {
        header: header(api, r.revision),
        watch_id: r.watch_id,
        created: r.created,
        canceled: r.canceled,
        compact_revision: r.compact_revision,
        cancel_reason: r.cancel_reason,
        fragment: r.fragment,
        events: r.events.into_iter().map(wire_event).collect(),
    }
}

fn line(response: &wire::WatchResponse) -> Bytes {
    let mut out = serde_json::to_vec(response).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// A client's requests on one watch stream, in either API's encoding (JSON here, protobuf in
/// `api::grpc`).
pub(super) trait Requests: Send + 'static {
    /// The next request, checked; `Ok(None)` once the client has sent its last; `Err(reason)`
    /// for a request that is invalid or a stream of requests that broke (none is read after).
    fn next(&mut self) -> impl std::future::Future<Output = Result<Option<Ask>, String>> + Send;
}

impl Requests for JsonValues<wire::WatchRequest> {
    async fn next(&mut self) -> Result<Option<Ask>, String> {
        match JsonValues::next(self).await {
            Ok(Some(request)) => ask(request).map(Some).map_err(|e| e.message),
            Ok(None) => Ok(None),
            Err(e) => Err(e.message),
        }
    }
}

/// Runs a watch stream: serves `first`, then each later request, for as long as the client
/// reads the answers (the receiver). With `require_leader`, once the member has had no leader
/// for [`NO_LEADER_CANCEL`] the stream ends with watch id -1, `canceled`, reason
/// [`NO_LEADER`]. An invalid request is answered by a cancelled create (watch id -1) with the
/// reason, and no further requests are read (the watches already made go on).
///
/// A create the caller may not read (`caller`, checked against the auth state when the watch is
/// made, as etcd checks it) is answered by a cancelled create (watch id -1) whose reason is
/// etcd's whole gRPC error text, and the stream goes on.
///
/// A watch starts from what this member applied, as a serializable read does, and so waits as
/// one does after a restart (`NodeHandle::serializable_point`): its revisions never go back
/// before a write this member answered. Fails, opening nothing, when that wait fails.
pub(super) async fn run_stream(
    api: &Api,
    caller: Caller,
    first: Option<Ask>,
    mut requests: impl Requests,
    require_leader: bool,
) -> Result<mpsc::Receiver<WatchResponse>, NodeError> {
    api.node.serializable_point().await?;
    let (tx, rx) = mpsc::channel::<WatchResponse>(STREAM_QUEUE);
    let mut stream = api.watch.stream(tx.clone());
    let hub = api.watch.clone();
    let node = api.node.clone();
    let permitted_api = api.clone();
    let refusal = move |ask: &Ask| -> Option<WatchResponse> {
        let Ask::Create(spec) = ask else { return None };
        let denied =
            super::auth::check_range(&permitted_api, &caller, Access::Read, &spec.key, &spec.range_end).err()?;
        Some(WatchResponse {
            watch_id: -1,
            revision: permitted_api.watch.current_revision(),
            created: true,
            canceled: true,
            cancel_reason: grpc_error_text(denied),
            ..WatchResponse::default()
        })
    };
    if let Some(first) = first {
        match refusal(&first) {
            Some(refused) => {
                let _ = tx.send(refused).await;
            }
            None => serve_ask(&mut stream, first).await,
        }
    }
    tokio::spawn(async move {
        let mut body_open = true;
        let mut leaderless_since: Option<tokio::time::Instant> = None;
        let mut check = tokio::time::interval(NO_LEADER_CANCEL / 4);
        loop {
            let next = tokio::select! {
                next = requests.next(), if body_open => next,
                _ = tx.closed() => return,
                _ = check.tick(), if require_leader => {
                    let now = tokio::time::Instant::now();
                    if node.shared.leader().is_some() {
                        leaderless_since = None;
                    } else if now.duration_since(*leaderless_since.get_or_insert(now)) >= NO_LEADER_CANCEL {
                        let end = WatchResponse {
                            watch_id: -1,
                            revision: hub.current_revision(),
                            canceled: true,
                            cancel_reason: NO_LEADER.to_string(),
                            ..WatchResponse::default()
                        };
                        let _ = tx.send(end).await;
                        return;
                    }
                    continue;
                }
            };
            match next {
                Ok(Some(ask)) => match refusal(&ask) {
                    Some(refused) => {
                        if tx.send(refused).await.is_err() {
                            return;
                        }
                    }
                    None => serve_ask(&mut stream, ask).await,
                },
                Ok(None) => body_open = false,
                Err(reason) => {
                    let refused = WatchResponse {
                        watch_id: -1,
                        revision: hub.current_revision(),
                        created: true,
                        canceled: true,
                        cancel_reason: reason,
                        ..WatchResponse::default()
                    };
                    if tx.send(refused).await.is_err() {
                        return;
                    }
                    // Where the next request starts is unknown: read no more of them.
                    body_open = false;
                }
            }
        }
    });
    Ok(rx)
}

/// An auth refusal as etcd's watch gives its reason: the whole text of the gRPC error
/// (`rpc error: code = PermissionDenied desc = etcdserver: permission denied`).
/// The code is the one the gRPC API answers (`grpc::auth_status`), named as Go names it.
fn grpc_error_text(e: AuthError) -> String {
    let status = super::grpc::auth_status(e);
    format!("rpc error: code = {:?} desc = {}", status.code(), status.message())
}

/// Whether a response ends its stream (the member lost its leader, with `require_leader`).
pub(super) fn ends_stream(response: &WatchResponse) -> bool {
    response.watch_id == -1 && response.canceled && !response.created
}

pub(super) async fn watch(State(api): State<Api>, request: Request) -> ApiResult<Response> {
    let require_leader = request.headers().get(HEADER_REQUIRE_LEADER).is_some_and(|v| v.as_bytes() == b"true");
    let mut requests: JsonValues<wire::WatchRequest> =
        JsonValues::new(request.into_body(), "watch request", MAX_WATCH_REQUEST_BYTES);
    let first = match requests.next().await? {
        Some(first) => ask(first)?,
        None => return Err(bad("the body holds no watch request")),
    };
    let rx = run_stream(&api, super::auth::current(), Some(first), requests, require_leader).await?;
    let at_end = api.clone();
    // The answer ends after a stream-ending response (no leader), or when every sender is gone.
    let lines = futures::stream::unfold((rx, api, false), |(mut rx, api, ended)| async move {
        if ended {
            return None;
        }
        let response = rx.recv().await?;
        let ends = ends_stream(&response);
        Some((Ok::<_, Infallible>(line(&wire_response(&api, response))), (rx, api, ends)))
    });
    // When the member stops, the stream ends as when it loses its leader, with the reason.
    let stop = at_end.node.shared.stopping.subscribe();
    let end = move || {
        let end = WatchResponse {
            watch_id: -1,
            revision: at_end.watch.current_revision(),
            canceled: true,
            cancel_reason: STOPPED.to_string(),
            ..WatchResponse::default()
        };
        Some(Ok(line(&wire_response(&at_end, end))))
    };
    let mut response = Body::from_stream(until_stopped(stop, lines, end)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(text: &[u8], size: usize) -> Body {
        let chunks: Vec<Result<Bytes, Infallible>> = text.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Body::from_stream(futures::stream::iter(chunks))
    }

    /// Every value of `text` cut into chunks of `size`, then the error or the end; and the parses.
    async fn read_all(text: &[u8], size: usize, max: usize) -> (Vec<serde_json::Value>, Result<(), String>, usize) {
        let mut values = JsonValues::<serde_json::Value>::new(chunked(text, size), "request", max);
        let mut out = Vec::new();
        for _ in 0..1_000 {
            match values.next().await {
                Ok(Some(value)) => out.push(value),
                Ok(None) => return (out, Ok(()), values.parses),
                Err(e) => return (out, Err(format!("{} {}", e.status.as_u16(), e.message)), values.parses),
            }
        }
        panic!("more than 1,000 values");
    }

    #[tokio::test]
    async fn values_cut_anywhere_read_as_the_whole_text_parses() {
        let text = br#" {"a":"}{\"]","b":[1,{"c":[]}]}
[1,[2,{}],"]"]"x\"y{"  {"k":"\\"}{}
"#;
        let expected: Vec<serde_json::Value> =
            serde_json::Deserializer::from_slice(text).into_iter().collect::<Result<_, _>>().expect("valid");
        assert_eq!(expected.len(), 5);
        for size in [1, 2, 3, 5, 8, 13, text.len()] {
            let (values, end, parses) = read_all(text, size, 1 << 10).await;
            assert_eq!(values, expected, "chunks of {size}");
            assert_eq!(end, Ok(()));
            assert_eq!(parses, 6, "one parse a value and one for the end, in chunks of {size}");
        }
    }

    #[tokio::test]
    async fn a_value_that_arrives_a_byte_at_a_time_is_parsed_once() {
        let long = format!(r#"{{"create_request":{{"key":"{}"}}}}"#, "k".repeat(60_000));
        let text = format!("{long}\n{long}");
        let (values, end, parses) = read_all(text.as_bytes(), 1, 64 << 10).await;
        assert_eq!((values.len(), end), (2, Ok(())));
        // Parsing the buffer at each byte until the value was whole took 60,000 parses a value.
        assert_eq!(parses, 3);
    }

    #[tokio::test]
    async fn bad_cut_short_and_oversized_values_are_refused_as_before() {
        let (values, end, _) = read_all(br#"{"a":1} {"a": ]"#, 1, 1 << 10).await;
        assert_eq!(values.len(), 1);
        assert_eq!(end, Err("400 bad request: expected value at line 1 column 8".to_string()));
        let (_, end, _) = read_all(br#"{"a":"b"#, 2, 1 << 10).await;
        assert_eq!(end, Err("400 bad request: EOF while parsing a string at line 1 column 7".to_string()));
        let (_, end, _) = read_all(br#"{"a":"long enough"}"#, 4, 8).await;
        assert_eq!(end, Err("413 a request is at most 8 bytes".to_string()));
        let (_, end, parses) = read_all(b"nul", 1, 1 << 10).await;
        assert_eq!(end, Err("400 bad request: EOF while parsing a value at line 1 column 3".to_string()));
        assert!(parses <= 4, "a literal cut short is parsed again at each chunk: {parses}");
    }
}
