//! Watches through `POST /v1/watch` (DESIGN.md §4), resumed on another member when the stream
//! breaks: from the revision after the last one received, so nothing is missed or received
//! twice (any member serves watches from its applied state, in revision order).
//!
//! The stream's request body stays open: every [`PROBE_INTERVAL`] the watch asks for progress,
//! and a stream that answers nothing for [`SILENCE_LIMIT`] (a member paused, or cut off) is
//! given up for the next endpoint, as one that fails or ends is.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::header::CONTENT_TYPE;
use tokio::sync::mpsc;

use super::{error_chain, Client, ClientError, Result};
use crate::base::wire::watch::{
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse, HEADER_REQUIRE_LEADER,
};

/// How often an open watch asks its member for progress.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// A stream silent this long is given up.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(6);
/// The longest line (one response) a watch accepts.
const MAX_LINE_BYTES: usize = 64 << 20;

/// One open stream to one endpoint.
struct Connection {
    endpoint: String,
    body: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    lines: LineBuffer,
    /// The request body's other end: progress requests go there; dropping it ends the body.
    requests: mpsc::Sender<Bytes>,
    probe: tokio::time::Interval,
}

/// A watch that follows the cluster: [`Watch::next`] gives each revision's events (fragments
/// joined) and progress notifications, in revision order, across reconnects.
pub struct Watch {
    client: Client,
    request: WatchCreateRequest,
    /// The revision to resume from: every event below it was returned.
    next: i64,
    conn: Option<Connection>,
    /// Parts of a fragmented revision received so far.
    partial: Option<WatchResponse>,
    /// Streams opened so far (1 + reconnects).
    connections: u64,
    /// Endpoints tried in a row without receiving anything.
    failures: usize,
}

/// A streamed body cut into its lines (newline-delimited JSON): each byte is looked at once
/// for a newline, however many chunks a long line comes in.
#[derive(Default)]
pub struct LineBuffer {
    buf: BytesMut,
    /// How much of `buf` holds no newline.
    scanned: usize,
}

impl LineBuffer {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole line, without its newline; `None` until one has arrived.
    pub fn next_line(&mut self) -> Option<Bytes> {
        let Some(at) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') else {
            self.scanned = self.buf.len();
            return None;
        };
        let end = self.scanned + at;
        self.scanned = 0;
        let mut line = self.buf.split_to(end + 1);
        line.truncate(end);
        Some(line.freeze())
    }

    /// The bytes held: a line not yet whole.
    pub fn held(&self) -> usize {
        self.buf.len()
    }
}

fn line(request: &WatchRequest) -> Bytes {
    let mut out = serde_json::to_vec(request).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

impl Client {
    /// Starts a watch. `request.start_revision` 0 means "from now": the revision after the
    /// store's current one on the first member that answers.
    pub async fn watch(&self, request: WatchCreateRequest) -> Result<Watch> {
        let mut watch = Watch {
            client: self.clone(),
            next: request.start_revision,
            request,
            conn: None,
            partial: None,
            failures: 0,
            connections: 0,
        };
        watch.connect().await?;
        Ok(watch)
    }
}

impl Watch {
    /// The revision the watch resumes from: every event before it has been returned.
    pub fn next_revision(&self) -> i64 {
        self.next
    }

    /// How many streams this watch has opened (1 + the reconnects).
    pub fn connections(&self) -> u64 {
        self.connections
    }

    /// The endpoint streaming now.
    pub fn endpoint(&self) -> Option<&str> {
        self.conn.as_ref().map(|c| c.endpoint.as_str())
    }

    /// Opens a stream on the first endpoint (from the preferred one on) that accepts the
    /// watch, and reads its `created` answer.
    async fn connect(&mut self) -> Result<()> {
        self.conn = None;
        self.partial = None;
        let endpoints = self.client.endpoints.clone();
        let count = endpoints.len();
        let mut attempts = Vec::new();
        let deadline = tokio::time::Instant::now() + self.client.config.deadline;
        for offset in 0..count * 2 {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            let index =
                (self.client.preferred.load(std::sync::atomic::Ordering::Relaxed) + self.failures + offset) % count;
            let endpoint = &endpoints[index];
            let mut create = self.request.clone();
            create.start_revision = self.next.max(0);
            match open(&self.client, create, endpoint).await {
                Ok(conn) => {
                    self.conn = Some(conn);
                    match self.read_line().await {
                        Ok(created) if created.created && !created.canceled => {
                            self.connections += 1;
                            if self.next <= 0 {
                                self.next = created.header.revision + 1;
                            }
                            return Ok(());
                        }
                        Ok(refused) if refused.created => {
                            return Err(ClientError::Api {
                                status: 400,
                                code: "watch_refused".to_string(),
                                message: refused.cancel_reason,
                            })
                        }
                        Ok(other) => attempts.push(format!("{endpoint}: answered {other:?} instead of created")),
                        Err(e) => attempts.push(format!("{endpoint}: {e}")),
                    }
                    self.conn = None;
                }
                Err(ClientError::Api { status, code, message }) if status != 503 => {
                    return Err(ClientError::Api { status, code, message })
                }
                Err(e) => attempts.push(format!("{endpoint}: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ClientError::Unavailable { attempts })
    }
}

/// Sends `create` to `endpoint` and waits for the answer's head. (Takes no `&Watch`, which is
/// not `Sync`, so that a watch's future can move between threads.)
async fn open(client: &Client, create: WatchCreateRequest, endpoint: &str) -> Result<Connection> {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tx.try_send(line(&WatchRequest { create_request: Some(create), ..WatchRequest::default() }))
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    let body =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx)) });
    let url = format!("{endpoint}/v1/watch");
    let mut request = client.http.post(url);
    if let Some(token) = client.token().await? {
        request = request.header(reqwest::header::AUTHORIZATION, token);
    }
    for (name, value) in &client.config.headers {
        request = request.header(name, value);
    }
    let send = request
        .header(CONTENT_TYPE, "application/x-ndjson")
        .header(HEADER_REQUIRE_LEADER, "true")
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let response = tokio::time::timeout(client.config.request_timeout, send)
        .await
        .map_err(|_| ClientError::Setup(format!("{endpoint}: no answer within {:?}", client.config.request_timeout)))?
        .map_err(|e| ClientError::Setup(error_chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.bytes().await.unwrap_or_default();
        let reply = super::Reply { endpoint: endpoint.to_string(), status, headers: Default::default(), body };
        return Err(reply.api_error());
    }
    let mut probe = tokio::time::interval(PROBE_INTERVAL);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    probe.tick().await;
    Ok(Connection {
        endpoint: endpoint.to_string(),
        body: response.bytes_stream().boxed(),
        lines: LineBuffer::default(),
        requests: tx,
        probe,
    })
}

impl Watch {
    /// The next line of the open stream, probing while it is quiet.
    async fn read_line(&mut self) -> Result<WatchResponse> {
        let conn = self.conn.as_mut().ok_or_else(|| ClientError::Setup("no stream".to_string()))?;
        let mut silent_since = tokio::time::Instant::now();
        loop {
            if let Some(line) = conn.lines.next_line() {
                return serde_json::from_slice(&line)
                    .map_err(|e| ClientError::Decode { endpoint: conn.endpoint.clone(), message: e.to_string() });
            }
            if conn.lines.held() > MAX_LINE_BYTES {
                return Err(ClientError::Decode {
                    endpoint: conn.endpoint.clone(),
                    message: "a line too long".to_string(),
                });
            }
            tokio::select! {
                chunk = conn.body.next() => match chunk {
                    Some(Ok(bytes)) => {
                        conn.lines.push(&bytes);
                        silent_since = tokio::time::Instant::now();
                    }
                    Some(Err(e)) => return Err(ClientError::Setup(format!("{}: {}", conn.endpoint, error_chain(&e)))),
                    None => return Err(ClientError::Setup(format!("{}: the stream ended", conn.endpoint))),
                },
                _ = conn.probe.tick() => {
                    if silent_since.elapsed() >= SILENCE_LIMIT {
                        return Err(ClientError::Setup(format!("{}: nothing for {:?}", conn.endpoint, SILENCE_LIMIT)));
                    }
                    let progress = WatchRequest { progress_request: Some(WatchProgressRequest {}), ..WatchRequest::default() };
                    let _ = conn.requests.try_send(line(&progress));
                }
            }
        }
    }

    /// The next response with events (a whole revision), or a progress notification (no
    /// events; every event up to its header's revision was returned). Reconnects elsewhere
    /// when the stream breaks. An error ends the watch: the history it needs was compacted
    /// (code `compacted`), or no endpoint could be reached.
    pub async fn next(&mut self) -> Result<WatchResponse> {
        // Bounded: each round returns, or reconnects, which fails after the client's deadline.
        loop {
            if self.conn.is_none() {
                self.connect().await?;
            }
            let response = match self.read_line().await {
                Ok(response) => response,
                Err(_) => {
                    self.failures += 1;
                    self.conn = None;
                    continue;
                }
            };
            if response.canceled && response.watch_id == -1 && !response.created {
                // The stream ended (its member has no leader, or stops): go on elsewhere.
                self.failures += 1;
                self.conn = None;
                continue;
            }
            self.failures = 0;
            if response.created && !response.canceled {
                // A `created` read here, not in `connect` (a caller's timeout cut `connect`
                // short): its revision is no progress of this watch.
                continue;
            }
            if response.canceled {
                self.conn = None;
                let code = if response.compact_revision > 0 { "compacted" } else { "watch_canceled" };
                let mut message = response.cancel_reason.clone();
                if response.compact_revision > 0 {
                    message.push_str(&format!(" (compacted at revision {})", response.compact_revision));
                }
                return Err(ClientError::Api { status: 400, code: code.to_string(), message });
            }
            if response.fragment {
                match &mut self.partial {
                    Some(p) => p.events.extend(response.events),
                    None => self.partial = Some(response),
                }
                continue;
            }
            let mut whole = match self.partial.take() {
                Some(mut p) => {
                    p.events.extend(response.events);
                    p.fragment = false;
                    p
                }
                None => response,
            };
            let revision = whole.header.revision;
            if whole.events.is_empty() {
                // Progress: for the stream (-1) or this watch.
                if revision + 1 > self.next {
                    self.next = revision + 1;
                }
                whole.watch_id = whole.watch_id.max(0);
                return Ok(whole);
            }
            if revision < self.next {
                // Already returned (cannot happen on one stream; kept as a guard).
                continue;
            }
            self.next = revision + 1;
            return Ok(whole);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LineBuffer;

    /// Lines come out whole whatever chunks they arrive in, a blank line as an empty one; a
    /// line not yet ended is held, and its scanned part is not looked at again.
    #[test]
    fn a_line_buffer_gives_whole_lines_across_chunks() {
        let mut lines = LineBuffer::default();
        lines.push(b"{\"a\":1}\n{\"b\"");
        assert_eq!(lines.next_line().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(lines.next_line(), None);
        assert_eq!((lines.held(), lines.scanned), (4, 4));
        lines.push(b":2");
        assert_eq!(lines.next_line(), None);
        lines.push(b"}\n\n{\"c\":3}\n");
        let rest: Vec<_> = std::iter::from_fn(|| lines.next_line()).collect();
        assert_eq!(rest, [&b"{\"b\":2}"[..], b"", b"{\"c\":3}"]);
        assert_eq!(lines.held(), 0);
    }
}
