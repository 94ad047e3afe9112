//! Serving one port (client or peer) with bounded resources: our own accept loop around hyper's
//! HTTP/1 connection, with
//! - at most `max_connections` open connections. When a new one arrives at the limit, the
//!   connection that has been idle longest (no request in a handler, or headers not complete,
//!   for at least `MIN_IDLE_TO_EVICT`) is closed to make room; if every connection is busy or
//!   recently active, the new one is closed at once (refused). Connections that carry requests
//!   all the time (peers' heartbeats, a busy client) are never the ones evicted.
//! - a header read timeout: a request's headers must arrive within `header_timeout`, counted
//!   from when the connection starts waiting for them, so the same timeout closes keep-alive
//!   connections that stay idle (hyper starts the timer when it waits for the next request).
//! - at most `max_requests` requests in handlers at once. Beyond that a request waits for a
//!   slot, first come first served, for at most `queue_wait` and with at most `max_waiting`
//!   waiting; otherwise it is shed with 503 and `Retry-After`. A waiting request holds only its
//!   headers: its handler, which reads the body, starts with the slot.
//! - a deadline for each request in its handler (`request_timeout`): 504, whose outcome is
//!   unknown.
//!
//! Bodies are read by the handlers with [`read_body`]: the declared length is checked before a
//! byte is read, the streamed bytes against the same limit, and a body that stalls or takes too
//! long is abandoned. Stopping (the `stop` watch) stops accepting, closes idle connections and
//! lets requests in flight finish.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, Response, StatusCode};
use axum::Router;
use bytes::BytesMut;
use futures::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use super::tls::{PeerCertificate, ServerTls};
use crate::base::signal::stopped;

/// A connection must have been idle this long before a new one may replace it.
pub const MIN_IDLE_TO_EVICT: Duration = Duration::from_secs(1);
/// How long a new connection waits for the slot of the connection evicted for it.
const EVICT_WAIT: Duration = Duration::from_secs(1);

/// The bounds of one port.
#[derive(Clone, Copy, Debug)]
pub struct PortLimits {
    pub max_connections: usize,
    pub max_requests: usize,
    /// How long a request may wait for one of the `max_requests` slots (zero: shed at once).
    pub queue_wait: Duration,
    /// At most this many requests wait for a slot; more are shed at once.
    pub max_waiting: usize,
    /// For a request's headers, and for an idle keep-alive connection.
    pub header_timeout: Duration,
    /// For a whole request in its handler.
    pub request_timeout: Duration,
    /// Paths whose handler waits for as long as its client does (no `request_timeout`): etcd's
    /// Lock and Campaign, which return once the lock is held or the election won.
    pub waits: &'static [&'static str],
}

/// The client port: enough connections and requests for many clients (and `kuberaft bench`);
/// its bodies are at most `--max-value-bytes` each. Requests beyond the handlers' slots queue, as
/// etcd's do (a gRPC server takes every stream a connection opens): a burst of a thousand
/// clients is served in turn rather than sent back to retry. The wait is bounded, so that an
/// overloaded member still answers (503) within a client's usual timeout; and the queue is, so
/// that its memory is (a waiting request holds its headers: at most 16 KiB each with hyper's
/// default limits, 4,096 of them 64 MiB at the very worst). HTTP/1.1 carries one request per
/// connection, so a thousand clients with a request each hold a thousand connections, to the
/// leader once they follow its hint: the connections are bounded well above that (1,024 refused
/// the bench's 1,024 clients' last connections, which they saw as resets of sent requests).
pub const CLIENT_PORT: PortLimits = PortLimits {
    max_connections: 4096,
    max_requests: 256,
    queue_wait: Duration::from_secs(2),
    max_waiting: 4096,
    header_timeout: Duration::from_secs(10),
    request_timeout: Duration::from_secs(30),
    waits: &["/v3lockpb.Lock/Lock", "/v3electionpb.Election/Campaign"],
};

/// The peer port: a cluster has at most 9 members, each with two message streams to each other
/// (`transport`, at most 16 requests held here) and a connection or two for snapshots, joins and
/// forwarded requests (at most a third of the requests). The request timeout leaves room for a whole streamed snapshot (whose sender waits up to
/// an hour, `transport::SNAPSHOT_TIMEOUT`): its receiver bounds each chunk by its own stall
/// limit, and the other peer handlers bound their bodies and proposals themselves.
pub const PEER_PORT: PortLimits = PortLimits {
    max_connections: 256,
    max_requests: 96,
    // Raft's messages are better dropped than late; forwarded requests are retried by followers.
    queue_wait: Duration::ZERO,
    max_waiting: 0,
    header_timeout: Duration::from_secs(10),
    request_timeout: Duration::from_secs(3660),
    waits: &[],
};

/// `--listen-metrics-urls`: probes and scrapes, small and quick.
pub const METRICS_PORT: PortLimits = PortLimits {
    max_connections: 64,
    max_requests: 16,
    queue_wait: Duration::ZERO,
    max_waiting: 0,
    header_timeout: Duration::from_secs(10),
    request_timeout: Duration::from_secs(10),
    waits: &[],
};

/// What happened on a port, for `/metrics`.
#[derive(Debug, Default)]
pub struct PortStats {
    pub accepted: AtomicU64,
    /// Closed at once: the port was full and no connection was idle long enough to evict.
    pub refused: AtomicU64,
    /// Idle connections closed to make room for new ones.
    pub evicted: AtomicU64,
    pub open: AtomicU64,
    /// Requests that found every slot taken and waited for one.
    pub queued: AtomicU64,
    /// Requests answered 503: no slot within `queue_wait`, or too many waiting.
    pub shed: AtomicU64,
}

/// Turns a failure of the limiting layers into the port's kind of answer (JSON on the client
/// port, text on the peer port).
pub type RenderError = fn(StatusCode, &'static str, String) -> Response<Body>;

struct ConnEntry {
    /// Requests of this connection in a handler or sending their answer.
    busy: usize,
    /// Since when `busy` is 0 (or since accepted).
    idle_since: Instant,
    evict: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, ConnEntry>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ConnEntry>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the connection idle longest (at least `min_idle`) to close; false if there is none.
    fn evict_one(&self, min_idle: Duration) -> bool {
        let mut conns = self.lock();
        let now = Instant::now();
        let victim = conns
            .iter()
            .filter(|(_, c)| c.busy == 0 && c.evict.is_some() && now.duration_since(c.idle_since) >= min_idle)
            .min_by_key(|(_, c)| c.idle_since)
            .map(|(id, _)| *id);
        let Some(id) = victim else { return false };
        conns.get_mut(&id).and_then(|c| c.evict.take()).is_some_and(|tx| tx.send(()).is_ok())
    }

    fn is_busy(&self, id: u64) -> bool {
        self.lock().get(&id).is_some_and(|c| c.busy > 0)
    }
}

/// Marks a connection busy from a request's start until its answer has been sent.
struct BusyGuard {
    registry: Arc<Registry>,
    id: u64,
}

impl BusyGuard {
    fn enter(registry: &Arc<Registry>, id: u64) -> BusyGuard {
        if let Some(c) = registry.lock().get_mut(&id) {
            c.busy += 1;
        }
        BusyGuard { registry: registry.clone(), id }
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if let Some(c) = self.registry.lock().get_mut(&self.id) {
            c.busy = c.busy.saturating_sub(1);
            if c.busy == 0 {
                c.idle_since = Instant::now();
            }
        }
    }
}

/// An answer's body that keeps its connection marked busy until it has been sent.
struct TrackedBody {
    inner: Body,
    _busy: BusyGuard,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a request that took longer than the port's request timeout.
fn timed_out(render: RenderError) -> Response<Body> {
    render(
        StatusCode::GATEWAY_TIMEOUT,
        "outcome_unknown",
        "the request took too long and was abandoned; a write may or may not have applied".into(),
    )
}

/// The answer to a request shed for want of a slot.
fn overloaded(render: RenderError) -> Response<Body> {
    let mut response = render(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "too many requests in progress on this member; retry shortly".into(),
    );
    response.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
    response
}

/// The port's slots for requests in handlers, and the requests waiting for one.
struct RequestSlots {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl RequestSlots {
    /// A slot: at once when one is free; else the first to come free within `queue_wait`, in the
    /// order requests asked (tokio's semaphore is fair), if fewer than `max_waiting` wait. `None`:
    /// shed.
    async fn take(&self, limits: &PortLimits, stats: &PortStats) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Some(slot);
        }
        let queues = !limits.queue_wait.is_zero() && self.waiting.fetch_add(1, Ordering::Relaxed) < limits.max_waiting;
        let slot = if queues {
            stats.queued.fetch_add(1, Ordering::Relaxed);
            let slot = tokio::time::timeout(limits.queue_wait, self.slots.clone().acquire_owned()).await;
            slot.ok().and_then(Result::ok)
        } else {
            None
        };
        if !limits.queue_wait.is_zero() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        if slot.is_none() {
            stats.shed.fetch_add(1, Ordering::Relaxed);
        }
        slot
    }
}

/// Serves `router` on `listener` within `limits` until `stop` turns true, then lets the
/// requests in flight finish (the caller bounds how long it waits).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: PortLimits,
    render: RenderError,
    stats: Arc<PortStats>,
    tls: Option<Arc<ServerTls>>,
    mut stop: watch::Receiver<bool>,
) {
    let handshakes = Arc::new(HandshakeLog::default());
    let requests = Arc::new(RequestSlots {
        slots: Arc::new(Semaphore::new(limits.max_requests.max(1))),
        waiting: AtomicUsize::new(0),
    });
    // Each request in a slot, within `request_timeout` but for the paths that wait for their
    // client. The slot is held until the answer's head is ready (a streamed body, such as a
    // watch's, goes on without it).
    let stack = {
        let stats = stats.clone();
        tower::service_fn(move |request: Request<Body>| {
            let waits = limits.waits.contains(&request.uri().path());
            let (router, requests, stats) = (router.clone(), requests.clone(), stats.clone());
            async move {
                let Some(_slot) = requests.take(&limits, &stats).await else {
                    return Ok::<_, Infallible>(overloaded(render));
                };
                let answer = router.oneshot(request);
                if waits {
                    return answer.await;
                }
                match tokio::time::timeout(limits.request_timeout, answer).await {
                    Ok(answer) => answer,
                    Err(_) => Ok(timed_out(render)),
                }
            }
        })
    };
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let registry = Arc::new(Registry::default());
    // hyper's header timer did not always close connections whose headers trickle in a byte at
    // a time (the flood test saw them outlive it under load), so a reaper also closes every
    // connection that has had nothing in a handler for longer than the header timeout: idle,
    // or with headers still arriving. A request in a handler is never cut.
    let reaper = {
        let (registry, stats, mut stop) = (registry.clone(), stats.clone(), stop.clone());
        let max_idle = limits.header_timeout + Duration::from_secs(1);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopped(&mut stop) => break,
                }
                while registry.evict_one(max_idle) {
                    stats.evicted.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let mut next_id: u64 = 0;
    loop {
        let (tcp, from) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or the peer gave up before we accepted: wait a
                    // moment rather than spin.
                    tracing::debug!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if registry.evict_one(MIN_IDLE_TO_EVICT) => {
                stats.evicted.fetch_add(1, Ordering::Relaxed);
                tokio::time::timeout(EVICT_WAIT, slots.clone().acquire_owned()).await.ok().and_then(|p| p.ok())
            }
            Err(_) => None,
        };
        let Some(permit) = permit else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(tcp);
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = tcp.set_nodelay(true) {
            // Small requests and answers go out at once (no Nagle delay).
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        next_id += 1;
        let id = next_id;
        let (evict_tx, mut evict_rx) = oneshot::channel();
        registry.lock().insert(id, ConnEntry { busy: 0, idle_since: Instant::now(), evict: Some(evict_tx) });
        let registry = registry.clone();
        let stats = stats.clone();
        let mut stop = stop.clone();
        let (stack, tls, handshakes) = (stack.clone(), tls.clone(), handshakes.clone());
        stats.open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            // The TLS handshake, in this connection's task (a slow one holds up nobody else),
            // within the header timeout.
            let (io, peer_cert) = match handshake(tls.as_deref(), tcp, limits.header_timeout).await {
                Ok(accepted) => accepted,
                Err(why) => {
                    handshakes.failed(from, &why);
                    registry.lock().remove(&id);
                    stats.open.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            };
            let service = {
                let registry = registry.clone();
                hyper::service::service_fn(move |mut request: Request<Incoming>| {
                    let busy = BusyGuard::enter(&registry, id);
                    let stack = stack.clone();
                    if let Some(cert) = &peer_cert {
                        request.extensions_mut().insert(cert.clone());
                    }
                    async move {
                        let response = match stack.oneshot(request.map(Body::new)).await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        };
                        Ok::<_, Infallible>(response.map(|inner| TrackedBody { inner, _busy: busy }))
                    }
                })
            };
            // HTTP/1.1, or HTTP/2 when the client opens with its preface (h2c with prior
            // knowledge, as gRPC clients do over cleartext; issue 15), or chose it by ALPN.
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
            builder.http2().timer(TokioTimer::new());
            // etcd's clients may send a URL as the HTTP/2 `:authority`, which h2 refuses.
            let conn = builder.serve_connection(TokioIo::new(super::authority::AuthorityFix::new(io)), service);
            tokio::pin!(conn);
            let (mut evicted, mut stopping) = (false, false);
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::trace!("connection ended: {e}");
                        }
                        break;
                    }
                    _ = &mut evict_rx, if !evicted => {
                        evicted = true;
                        // Nothing in a handler: close now (a request whose headers were still
                        // arriving had no effect). Otherwise finish that request, then close.
                        if !registry.is_busy(id) {
                            break;
                        }
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = stopped(&mut stop), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            registry.lock().remove(&id);
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    reaper.abort();
    // Wait until every connection has closed: each holds one slot.
    let _ = slots.acquire_many(limits.max_connections.max(1) as u32).await;
}

/// A connection's stream: plain TCP, or TLS over it.
pub enum MaybeTls<S> {
    Plain(S),
    Tls(Box<tokio_rustls::TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    /// Vectored writes pass through, so a plain connection writes head and body with one call
    /// as it did before TLS came.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts a connection: as it is without TLS; with TLS, once its handshake completed within
/// `timeout`, with the certificate the client presented (checked against the CA when the port
/// requires one).
async fn handshake(
    tls: Option<&ServerTls>,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<(MaybeTls<TcpStream>, Option<PeerCertificate>), String> {
    let Some(tls) = tls else { return Ok((MaybeTls::Plain(tcp), None)) };
    let accept = tokio_rustls::TlsAcceptor::from(tls.current()).accept(tcp);
    match tokio::time::timeout(timeout, accept).await {
        Ok(Ok(stream)) => {
            let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
            Ok((MaybeTls::Tls(Box::new(stream.into())), cert.map(|c| PeerCertificate(Arc::new(c)))))
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no TLS handshake within {} s", timeout.as_secs())),
    }
}

/// Failed TLS handshakes, said in the log: each reason at once, then at most once a minute with
/// how many more there were (a foreign peer retries several times a second).
#[derive(Default)]
struct HandshakeLog {
    /// By reason: when it was last said, and how often it happened since.
    said: Mutex<HashMap<String, (Option<Instant>, u64)>>,
}

/// How often a failed handshake's reason is said again while it repeats.
const HANDSHAKE_LOG_REPEAT: Duration = Duration::from_secs(60);
/// Reasons remembered at most (a flood of distinct ones cannot grow the map without bound).
const HANDSHAKE_REASONS: usize = 64;

impl HandshakeLog {
    fn failed(&self, from: SocketAddr, why: &str) {
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if said.len() >= HANDSHAKE_REASONS && !said.contains_key(why) {
            said.retain(|_, (at, _)| at.is_some_and(|at| now.duration_since(at) < HANDSHAKE_LOG_REPEAT));
            if said.len() >= HANDSHAKE_REASONS {
                return;
            }
        }
        let (at, unsaid) = said.entry(why.to_string()).or_insert((None, 0));
        if at.is_none_or(|at| now.duration_since(at) >= HANDSHAKE_LOG_REPEAT) {
            tracing::warn!(%from, more_since_last = *unsaid, "refused a connection: TLS handshake failed: {why}");
            (*at, *unsaid) = (Some(now), 0);
        } else {
            *unsaid += 1;
        }
    }
}

/// Why a body was not read.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Declared (before a byte was read) or streamed past the limit.
    TooLarge { limit: usize, declared: Option<u64> },
    /// No byte for the stall timeout, or the whole body took longer than its deadline.
    TooSlow(Duration),
    /// The connection failed or the body was malformed.
    Broken(String),
}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TooSlow(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Broken(_) => StatusCode::BAD_REQUEST,
        }
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge { limit, declared: Some(declared) } => {
                write!(f, "the body declares {declared} bytes; the limit is {limit}")
            }
            BodyError::TooLarge { limit, declared: None } => write!(f, "the body is larger than {limit} bytes"),
            BodyError::TooSlow(d) => write!(f, "the body did not arrive in time ({} ms)", d.as_millis()),
            BodyError::Broken(e) => write!(f, "the body could not be read: {e}"),
        }
    }
}

/// The declared length of a request's body (`Content-Length`), if any and readable.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
}

/// How a body may arrive: at most `limit` bytes, a chunk at least every `stall`, all of it
/// within `deadline`.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    pub limit: usize,
    pub stall: Duration,
    pub deadline: Duration,
}

/// Checks a body's declared length against its limit without reading it.
pub fn check_declared(headers: &HeaderMap, limit: usize) -> Result<(), BodyError> {
    match declared_length(headers) {
        Some(declared) if declared > limit as u64 => Err(BodyError::TooLarge { limit, declared: Some(declared) }),
        _ => Ok(()),
    }
}

/// Reads a body in chunks within `limits`: refused before the first byte if its declared length
/// is too large, and as soon as the streamed bytes pass the limit otherwise. A body with a
/// declared length is read into one buffer of that size (no growth copies).
pub async fn read_body(headers: &HeaderMap, body: Body, limits: BodyLimits) -> Result<Bytes, BodyError> {
    check_declared(headers, limits.limit)?;
    let declared = declared_length(headers).map(|d| d as usize);
    let read = async {
        let mut stream = body.into_data_stream();
        let mut first: Option<Bytes> = None;
        let mut buffer: Option<BytesMut> = None;
        let mut total = 0usize;
        loop {
            let chunk = match tokio::time::timeout(limits.stall, stream.next()).await {
                Err(_) => return Err(BodyError::TooSlow(limits.stall)),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(BodyError::Broken(e.to_string())),
                Ok(Some(Ok(chunk))) => chunk,
            };
            total = total.saturating_add(chunk.len());
            if total > limits.limit {
                return Err(BodyError::TooLarge { limit: limits.limit, declared: None });
            }
            if let Some(buffer) = buffer.as_mut() {
                buffer.extend_from_slice(&chunk);
            } else if let Some(previous) = first.take() {
                let mut b = BytesMut::with_capacity(declared.unwrap_or(0).max(previous.len() + chunk.len()));
                b.extend_from_slice(&previous);
                b.extend_from_slice(&chunk);
                buffer = Some(b);
            } else {
                first = Some(chunk);
            }
        }
        Ok(match (buffer, first) {
            (Some(b), _) => b.freeze(),
            (None, Some(one)) => one,
            (None, None) => Bytes::new(),
        })
    };
    match tokio::time::timeout(limits.deadline, read).await {
        Ok(result) => result,
        Err(_) => Err(BodyError::TooSlow(limits.deadline)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(limit: usize) -> BodyLimits {
        BodyLimits { limit, stall: Duration::from_millis(200), deadline: Duration::from_secs(2) }
    }

    fn headers(length: Option<u64>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(l) = length {
            h.insert(axum::http::header::CONTENT_LENGTH, l.into());
        }
        h
    }

    fn chunks(parts: Vec<&'static [u8]>) -> Body {
        Body::from_stream(futures::stream::iter(parts.into_iter().map(|p| Ok::<_, Infallible>(Bytes::from_static(p)))))
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn plain(status: StatusCode, _code: &'static str, message: String) -> Response<Body> {
        let mut r = Response::new(Body::from(message));
        *r.status_mut() = status;
        r
    }

    /// Polls `done` every 10 ms for at most 5 s.
    async fn wait_for(done: impl Fn() -> bool, what: &str) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not within 5 s: {what}");
    }

    /// Whether the server closed `s` within `within` (without sending anything).
    async fn closed(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(within, s.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
    }

    /// The status of a GET on a fresh connection.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let Ok(mut s) = TcpStream::connect(addr).await else { return "connect failed".into() };
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if s.write_all(request.as_bytes()).await.is_err() {
            return "write failed".into();
        }
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).lines().next().unwrap_or("closed").to_string()
    }

    use std::net::SocketAddr;

    #[tokio::test]
    async fn connections_requests_and_slow_headers_are_bounded() {
        // `/gate` holds its slot until the test lets one through; `entered` counts its requests.
        let (gate, entered) = (Arc::new(Semaphore::new(0)), Arc::new(AtomicUsize::new(0)));
        let router = Router::new()
            .route("/ok", axum::routing::get(|| async { "ok" }))
            .route("/slow", axum::routing::get(|| async { tokio::time::sleep(Duration::from_secs(10)).await }))
            .route("/waits", axum::routing::get(|| async { tokio::time::sleep(Duration::from_secs(2)).await }))
            .route(
                "/gate",
                axum::routing::get({
                    let (gate, entered) = (gate.clone(), entered.clone());
                    move || {
                        let (gate, entered) = (gate.clone(), entered.clone());
                        async move {
                            entered.fetch_add(1, Ordering::SeqCst);
                            gate.acquire().await.map(|p| p.forget()).map_or("closed", |_| "through")
                        }
                    }
                }),
            );
        let limits = PortLimits {
            max_connections: 3,
            max_requests: 1,
            queue_wait: Duration::from_secs(3),
            max_waiting: 1,
            header_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_millis(1500),
            waits: &["/waits", "/gate"],
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(PortStats::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, router, limits, plain, stats.clone(), None, stop_rx));

        // Three idle connections fill the port; a fourth, while they are fresh, is refused.
        let mut idle1 = TcpStream::connect(addr).await.unwrap();
        let mut idle2 = TcpStream::connect(addr).await.unwrap();
        let idle3 = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(get(addr, "/ok").await, "closed", "refused: all three connections are recent");
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        // Once they have been idle a while, a new connection replaces the one idle longest.
        tokio::time::sleep(MIN_IDLE_TO_EVICT).await;
        assert_eq!(get(addr, "/ok").await, "HTTP/1.1 200 OK");
        assert_eq!(stats.evicted.load(Ordering::Relaxed), 1);
        assert!(closed(&mut idle1, Duration::from_millis(500)).await, "the oldest idle connection was closed");
        drop(idle3);
        // Headers that never finish: closed after the header timeout.
        idle2.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Slow: a").await.unwrap();
        assert!(closed(&mut idle2, Duration::from_secs(4)).await, "slow headers time out");

        // One request at a time. A second one waits for the slot and is served once it is free;
        // a third, beyond the one that may wait, is shed at once with 503.
        let held = tokio::spawn(get(addr, "/gate"));
        wait_for(|| entered.load(Ordering::SeqCst) == 1, "the gated request holds the slot").await;
        let waiting = tokio::spawn(get(addr, "/ok"));
        wait_for(|| stats.queued.load(Ordering::Relaxed) == 1, "the second request waits").await;
        assert_eq!(get(addr, "/ok").await, "HTTP/1.1 503 Service Unavailable", "the third is shed");
        assert_eq!(stats.shed.load(Ordering::Relaxed), 1);
        assert!(!waiting.is_finished() && !held.is_finished(), "the second waits while the slot is held");
        gate.add_permits(1);
        assert_eq!(held.await.unwrap(), "HTTP/1.1 200 OK");
        assert_eq!(waiting.await.unwrap(), "HTTP/1.1 200 OK", "the waiting request got the slot");
        // One that waits longer than `queue_wait` is shed.
        let held = tokio::spawn(get(addr, "/gate"));
        wait_for(|| entered.load(Ordering::SeqCst) == 2, "the gated request holds the slot").await;
        assert_eq!(get(addr, "/ok").await, "HTTP/1.1 503 Service Unavailable", "no slot within the wait");
        assert_eq!((stats.queued.load(Ordering::Relaxed), stats.shed.load(Ordering::Relaxed)), (2, 2));
        gate.add_permits(1);
        assert_eq!(held.await.unwrap(), "HTTP/1.1 200 OK");
        // The slow one times out (504); the port serves again.
        assert_eq!(get(addr, "/slow").await, "HTTP/1.1 504 Gateway Timeout");
        assert_eq!(get(addr, "/ok").await, "HTTP/1.1 200 OK");
        // A path that waits for as long as its client does is not cut at the request timeout.
        assert_eq!(get(addr, "/waits").await, "HTTP/1.1 200 OK");

        // Stopping ends the server once its connections are gone.
        let _ = stop_tx.send(true);
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("the server stops").unwrap();
    }

    /// A TLS port that requires client certificates serves a client with one of its CA (and
    /// hands the certificate to the handler), and refuses, at the handshake, a client without
    /// one, one of another CA, and a plain-HTTP client; our client refuses a server of another CA.
    #[tokio::test]
    async fn a_tls_port_serves_only_clients_with_a_certificate_of_its_ca() {
        use crate::base::pki::Authority;
        use crate::base::tls::TlsFiles;
        use crate::http::client::{full, Dial, HttpClient};
        use crate::http::tls::ClientTls;

        let dir = tempfile::tempdir().expect("dir");
        let write = |name: &str, ca: &Authority| crate::base::tls::test_files(dir.path(), name, ca, true);
        let (ours, theirs) = (Authority::new("ours").expect("ca"), Authority::new("theirs").expect("ca"));
        let server_files = write("server", &ours);
        let router = Router::new().route(
            "/who",
            axum::routing::get(|request: Request<Body>| async move {
                match request.extensions().get::<PeerCertificate>() {
                    Some(_) => "a certificate",
                    None => "none",
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = watch::channel(false);
        let tls = Arc::new(ServerTls::server(server_files).expect("tls"));
        let server = tokio::spawn(serve(listener, router, CLIENT_PORT, plain, Arc::default(), Some(tls), stop_rx));

        let url = format!("https://127.0.0.1:{}/who", addr.port());
        let call = |files: TlsFiles| {
            let url = url.clone();
            async move {
                let tls = ClientTls::http1(files).expect("client tls");
                let client = HttpClient::new(Dial::peer(None).with_tls(Some(Arc::new(tls))));
                client.call(Request::get(url).body(full(Vec::new())), Duration::from_secs(5), 1024).await
            }
        };
        let answer = call(write("friend", &ours)).await.expect("served");
        assert_eq!((answer.status, &answer.body[..]), (StatusCode::OK, &b"a certificate"[..]));

        // A client whose certificate is of another CA, though it trusts ours: refused.
        let stranger = TlsFiles { trusted_ca: Some(dir.path().join("friend-ca.pem")), ..write("stranger", &theirs) };
        // (In TLS 1.3 the client hears it with its first request, as the server's alert.)
        let refused = call(stranger).await.expect_err("refused");
        assert!(refused.to_string().contains("UnknownCA"), "{refused}");
        // A server of another CA: our client refuses it.
        let refused = call(write("wary", &theirs)).await.expect_err("refused");
        assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");
        // Plain HTTP to a TLS port: closed without an answer.
        let plain_client = HttpClient::new(Dial::peer(None));
        let url = format!("http://127.0.0.1:{}/who", addr.port());
        let plain_call =
            plain_client.call(Request::get(url).body(full(Vec::new())), Duration::from_secs(5), 1024).await;
        assert!(plain_call.is_err(), "{plain_call:?}");
        // An https URL without TLS to call it with is refused before dialing.
        let url = format!("https://127.0.0.1:{}/who", addr.port());
        let no_tls = plain_client.call(Request::get(url).body(full(Vec::new())), Duration::from_secs(5), 1024).await;
        assert!(no_tls.as_ref().is_err_and(|e| e.to_string().contains("no TLS")), "{no_tls:?}");

        let _ = stop_tx.send(true);
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("the server stops").expect("joins");
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_reading() {
        // The body never yields: reading it would hang until the stall timeout.
        let body = Body::from_stream(futures::stream::pending::<Result<Bytes, Infallible>>());
        let err = read_body(&headers(Some(1 << 30)), body, limits(1024)).await.unwrap_err();
        assert_eq!(err, BodyError::TooLarge { limit: 1024, declared: Some(1 << 30) });
    }

    #[tokio::test]
    async fn streamed_bytes_over_the_limit_are_refused() {
        let err = read_body(&headers(None), chunks(vec![b"abcd", b"efgh", b"ij"]), limits(9)).await.unwrap_err();
        assert_eq!(err, BodyError::TooLarge { limit: 9, declared: None });
        let ok = read_body(&headers(None), chunks(vec![b"abcd", b"efgh", b"i"]), limits(9)).await.unwrap();
        assert_eq!(&ok[..], b"abcdefghi");
        let one = read_body(&headers(Some(4)), chunks(vec![b"abcd"]), limits(9)).await.unwrap();
        assert_eq!(&one[..], b"abcd");
    }

    #[tokio::test]
    async fn a_stalled_body_times_out() {
        let stalled = futures::stream::iter(vec![Ok::<_, Infallible>(Bytes::from_static(b"ab"))])
            .chain(futures::stream::pending());
        let err = read_body(&headers(None), Body::from_stream(stalled), limits(100)).await.unwrap_err();
        assert_eq!(err, BodyError::TooSlow(Duration::from_millis(200)));
    }

    #[tokio::test]
    async fn a_trickling_body_hits_its_deadline() {
        // A byte every 50 ms never stalls for 200 ms, but 100 of them take longer than 1 s.
        let trickle = futures::stream::iter(0..100).then(|_| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, Infallible>(Bytes::from_static(b"x"))
        });
        let limits = BodyLimits { limit: 1000, stall: Duration::from_millis(200), deadline: Duration::from_secs(1) };
        let err = read_body(&headers(None), Body::from_stream(trickle), limits).await.unwrap_err();
        assert_eq!(err, BodyError::TooSlow(Duration::from_secs(1)));
    }
}
