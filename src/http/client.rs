//! Calling another member over HTTP/1 with bounded resources: hyper-util's pooled client
//! (`hyper_util::client::legacy::Client` on an `HttpConnector`), used for every member-to-member
//! call — the peer transport, a starting member's questions to its peers, and a follower's
//! forwarding of client requests to the leader. One type, [`HttpClient`], built from a [`Dial`]:
//! - it dials from a chosen local address (`set_local_address`), so that network rules on the
//!   members' addresses cut traffic in both directions (DESIGN.md §7, nftables);
//! - a connection attempt gives up after `connect_timeout`; idle pooled connections close after
//!   `pool_idle_timeout`, kept below the serving ports' idle timeout so that this side drops a
//!   connection before the other side closes it under a request;
//! - a call has one deadline for its answer's headers and body together, and reads at most a
//!   given number of bytes of the answer (a declared length over it is refused before a byte is
//!   read; a longer body is abandoned once it passes the limit).
//!
//! Knows nothing of Raft or the store.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderMap, Request, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::serve::{declared_length, MaybeTls, CLIENT_PORT, PEER_PORT};
use super::tls::ClientTls;

impl Connection for MaybeTls<TcpStream> {
    fn connected(&self) -> Connected {
        match self {
            MaybeTls::Plain(tcp) => tcp.connected(),
            MaybeTls::Tls(tls) => {
                let (tcp, state) = tls.get_ref();
                let connected = tcp.connected();
                if state.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

/// The body of a request: whole bytes, or a stream of chunks.
pub type RequestBody = UnsyncBoxBody<Bytes, Infallible>;

/// A body sent as one buffer.
pub fn full(bytes: impl Into<Bytes>) -> RequestBody {
    UnsyncBoxBody::new(Full::new(bytes.into()))
}

/// A body sent chunk by chunk, as hyper asks for them (each chunk is handed over as it is, no
/// copy). Its length is unknown to hyper: set `content-length` on the request to send it with one.
pub fn streamed(chunks: Vec<Bytes>) -> RequestBody {
    UnsyncBoxBody::new(StreamBody::new(futures::stream::iter(chunks.into_iter().map(|c| Ok(Frame::data(c))))))
}

/// A body sent chunk by chunk as the chunks arrive on `rx`; it ends when the sender is dropped.
pub fn from_channel(rx: tokio::sync::mpsc::Receiver<Bytes>) -> RequestBody {
    from_channel_noting(rx, || {})
}

/// The same, calling `taken` each time the connection takes a chunk to write.
pub fn from_channel_noting(rx: tokio::sync::mpsc::Receiver<Bytes>, taken: impl Fn() + Send + 'static) -> RequestBody {
    let chunks = futures::stream::unfold((rx, taken), |(mut rx, taken)| async move {
        let chunk = rx.recv().await?;
        taken();
        Some((Ok(Frame::data(chunk)), (rx, taken)))
    });
    UnsyncBoxBody::new(StreamBody::new(chunks))
}

/// How a client dials.
#[derive(Clone)]
pub struct Dial {
    /// Connections leave from this address (`None`: the system chooses, 127.0.0.1 on loopback).
    pub local_ip: Option<IpAddr>,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub max_idle_per_host: usize,
    /// How `https://` URLs are called (`None`: they are refused); `http://` ones are plain.
    pub tls: Option<Arc<ClientTls>>,
}

/// Members answer on their own network: a connection that is not up in this time will not be.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Below both ports' idle timeout (`serve::PortLimits::header_timeout`).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const _: () = assert!(POOL_IDLE_TIMEOUT.as_millis() < PEER_PORT.header_timeout.as_millis());
const _: () = assert!(POOL_IDLE_TIMEOUT.as_millis() < CLIENT_PORT.header_timeout.as_millis());

impl Dial {
    /// To other members' peer ports. The transport sends to each peer from one task, one
    /// request at a time (and a starting member asks one peer at a time), so one connection
    /// per peer is in use at once: two idle ones leave room for an answer still in flight
    /// while the next request starts.
    pub fn peer(local_ip: Option<IpAddr>) -> Dial {
        Dial {
            local_ip,
            connect_timeout: CONNECT_TIMEOUT,
            pool_idle_timeout: POOL_IDLE_TIMEOUT,
            max_idle_per_host: 2,
            tls: None,
        }
    }

    /// To the leader's client port, forwarding clients' requests: many may be in flight at
    /// once (the port runs `CLIENT_PORT.max_requests` handlers); keep enough of their
    /// connections for a steady stream of forwarded writes without holding hundreds idle.
    pub fn leader(local_ip: Option<IpAddr>) -> Dial {
        Dial {
            local_ip,
            connect_timeout: CONNECT_TIMEOUT,
            pool_idle_timeout: POOL_IDLE_TIMEOUT,
            max_idle_per_host: 32,
            tls: None,
        }
    }

    /// The same, calling `https://` URLs with `tls`.
    pub fn with_tls(self, tls: Option<Arc<ClientTls>>) -> Dial {
        Dial { tls, ..self }
    }

    fn connector(&self) -> Connector {
        let mut http = HttpConnector::new();
        http.set_local_address(self.local_ip);
        http.set_connect_timeout(Some(self.connect_timeout));
        http.set_nodelay(true);
        // `https://` is this connector's to handle.
        http.enforce_http(false);
        Connector { http, tls: self.tls.clone(), handshake_timeout: self.connect_timeout }
    }
}

/// Dials TCP, then TLS for `https://` URLs (with the client configuration current at the time:
/// rotated files are used from the next connection on).
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Option<Arc<ClientTls>>,
    /// The TLS handshake's own bound, as the TCP connection's.
    handshake_timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<MaybeTls<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = match (uri.scheme_str(), &self.tls) {
            (Some("https"), Some(tls)) => Some(tls.current()),
            (Some("https"), None) => {
                return Box::pin(async move {
                    Err(format!("{uri}: https, but this member has no TLS to call it with").into())
                })
            }
            _ => None,
        };
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let dial = self.http.call(uri);
        let timeout = self.handshake_timeout;
        Box::pin(async move {
            let tcp = dial.await?.into_inner();
            let Some(config) = tls else { return Ok(TokioIo::new(MaybeTls::Plain(tcp))) };
            let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host:?} is not a host name: {e}"))?;
            let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
            let stream = tokio::time::timeout(timeout, handshake)
                .await
                .map_err(|_| format!("no TLS handshake with {host} within {} ms", timeout.as_millis()))??;
            Ok(TokioIo::new(MaybeTls::Tls(Box::new(stream.into()))))
        })
    }
}

/// A pooled client that speaks HTTP/2 over cleartext from the first byte (h2c with prior
/// knowledge, as gRPC does), for any body type `B`: the gRPC API's calls to the leader. One
/// connection per member carries every call at once (HTTP/2 streams); it dials as `dial` says.
/// Deadlines and answer sizes are the caller's (gRPC's own message limits).
pub fn h2_client<B>(dial: Dial) -> Client<Connector, B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connector = dial.connector();
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(dial.pool_idle_timeout)
        .pool_max_idle_per_host(dial.max_idle_per_host)
        .http2_only(true)
        .timer(TokioTimer::new())
        .build(connector)
}

/// A pooled HTTP/1 client (cheap to clone: clones share the pool).
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<Connector, RequestBody>,
}

/// A whole answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why a call has no (whole) answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The request may have reached the other side; no answer came back.
    #[error("no answer: {0}")]
    Failed(String),
    #[error("no answer within {0:?}")]
    NoAnswerInTime(Duration),
    #[error("the answer ({status}) is larger than {limit} bytes")]
    TooLarge { status: StatusCode, limit: usize },
    #[error("the answer ({status}) was cut off: {reason}")]
    CutOff { status: StatusCode, reason: String },
    #[error("the answer ({status}) did not arrive whole within {timeout:?}")]
    SlowAnswer { status: StatusCode, timeout: Duration },
}

impl CallError {
    /// The request never left this member (it had no effect on the other side).
    pub fn never_sent(&self) -> bool {
        matches!(self, CallError::Invalid(_) | CallError::Connect(_))
    }

    /// The other side answered (status and headers), but its body was lost.
    pub fn answered(&self) -> bool {
        matches!(self, CallError::TooLarge { .. } | CallError::CutOff { .. } | CallError::SlowAnswer { .. })
    }
}

/// An error and its sources, as one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl HttpClient {
    pub fn new(dial: Dial) -> HttpClient {
        let connector = dial.connector();
        let inner = Client::builder(TokioExecutor::new())
            // Without a timer the pool never closes idle connections by age.
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(dial.pool_idle_timeout)
            .pool_max_idle_per_host(dial.max_idle_per_host)
            .build(connector);
        HttpClient { inner }
    }

    /// Sends `request` and reads its answer, at most `limit` bytes of body, all within `timeout`.
    pub async fn call(
        &self,
        request: Result<Request<RequestBody>, axum::http::Error>,
        timeout: Duration,
        limit: usize,
    ) -> Result<Answer, CallError> {
        let request = request.map_err(|e| CallError::Invalid(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let response = match tokio::time::timeout_at(deadline, self.inner.request(request)).await {
            Err(_) => return Err(CallError::NoAnswerInTime(timeout)),
            Ok(Err(e)) if e.is_connect() => return Err(CallError::Connect(chain(&e))),
            Ok(Err(e)) => return Err(CallError::Failed(chain(&e))),
            Ok(Ok(response)) => response,
        };
        let (parts, body) = response.into_parts();
        let status = parts.status;
        if declared_length(&parts.headers).is_some_and(|n| n > limit as u64) {
            return Err(CallError::TooLarge { status, limit });
        }
        let body = match tokio::time::timeout_at(deadline, Limited::new(body, limit).collect()).await {
            Err(_) => return Err(CallError::SlowAnswer { status, timeout }),
            Ok(Err(e)) if e.is::<LengthLimitError>() => return Err(CallError::TooLarge { status, limit }),
            Ok(Err(e)) => return Err(CallError::CutOff { status, reason: chain(&*e) }),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        Ok(Answer { status, headers: parts.headers, body })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// Accepts one connection, reads the request's head, writes `answer` (then, with `more`,
    /// 64 MiB of chunked data that never ends: no last chunk), and with `hold` keeps the
    /// connection open until the client closes it. Returns the client's address.
    async fn answer_once(listener: TcpListener, answer: &'static [u8], more: bool, hold: bool) -> SocketAddr {
        let (mut conn, from) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return from,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        if conn.write_all(answer).await.is_err() {
            return from;
        }
        if more {
            let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, "x".repeat(64 << 10));
            for _ in 0..1024 {
                if conn.write_all(chunk.as_bytes()).await.is_err() {
                    return from;
                }
            }
        }
        if hold {
            let _ = conn.read(&mut buf).await;
        }
        from
    }

    fn get(url: &str) -> Result<Request<RequestBody>, axum::http::Error> {
        Request::get(url).body(full(Bytes::new()))
    }

    #[test]
    fn a_peer_client_dials_from_its_local_address() {
        runtime().block_on(async {
            let listener = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 1), 0)).await.unwrap();
            let url = format!("http://{}/raft/v1/members", listener.local_addr().unwrap());
            let server = tokio::spawn(answer_once(listener, b"HTTP/1.1 204 No Content\r\n\r\n", false, false));
            let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7));
            let client = HttpClient::new(Dial::peer(Some(from)));
            let answer = client.call(get(&url), Duration::from_secs(5), 1024).await.unwrap();
            assert_eq!(answer.status, StatusCode::NO_CONTENT);
            let seen = tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
            assert_eq!(seen.ip(), from, "the connection left from the configured address");
        });
    }

    #[test]
    fn an_oversized_answer_is_refused_not_read_whole() {
        runtime().block_on(async {
            let client = HttpClient::new(Dial::peer(None));
            // A body without end: refused once it passes the limit (without the limit the read
            // would take all 64 MiB sent and then wait into the deadline).
            let listener = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 1), 0)).await.unwrap();
            let url = format!("http://{}/", listener.local_addr().unwrap());
            let server = tokio::spawn(answer_once(
                listener,
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                true,
                true,
            ));
            let e = client.call(get(&url), Duration::from_secs(10), 1 << 20).await.unwrap_err();
            assert!(matches!(e, CallError::TooLarge { status: StatusCode::OK, limit } if limit == 1 << 20), "{e}");
            assert!(e.answered() && !e.never_sent());
            tokio::time::timeout(Duration::from_secs(20), server).await.unwrap().unwrap();

            // A declared length over the limit: refused before a byte of it is read (the body
            // never comes; waiting for it would run into the deadline).
            let listener = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 1), 0)).await.unwrap();
            let url = format!("http://{}/", listener.local_addr().unwrap());
            let server = tokio::spawn(answer_once(
                listener,
                b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n",
                false,
                true,
            ));
            let e = client.call(get(&url), Duration::from_secs(10), 1 << 20).await.unwrap_err();
            assert!(matches!(e, CallError::TooLarge { .. }), "{e}");
            tokio::time::timeout(Duration::from_secs(20), server).await.unwrap().unwrap();
        });
    }

    #[test]
    fn a_refused_connection_is_a_connect_error_and_a_silent_peer_a_timeout() {
        runtime().block_on(async {
            let client = HttpClient::new(Dial::peer(None));
            // A port nobody listens on (bound, then closed).
            let listener = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 1), 0)).await.unwrap();
            let url = format!("http://{}/", listener.local_addr().unwrap());
            drop(listener);
            let e = client.call(get(&url), Duration::from_secs(5), 1024).await.unwrap_err();
            assert!(matches!(e, CallError::Connect(_)) && e.never_sent(), "{e}");
            // A listener that accepts and never answers.
            let listener = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 1), 0)).await.unwrap();
            let url = format!("http://{}/", listener.local_addr().unwrap());
            let e = client.call(get(&url), Duration::from_millis(300), 1024).await.unwrap_err();
            assert!(matches!(e, CallError::NoAnswerInTime(_)) && !e.never_sent() && !e.answered(), "{e}");
            drop(listener);
            // A URL that cannot be a request.
            let e = client.call(get("http://bad url/"), Duration::from_secs(1), 1024).await.unwrap_err();
            assert!(matches!(e, CallError::Invalid(_)), "{e}");
        });
    }
}
