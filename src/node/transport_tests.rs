//! The peer transport's streams (`transport`), over real HTTP on loopback: what one member's
//! `Transport` sends reaches another's peer port in order on two streams; a heartbeat passes an
//! append the peer does not read, and a stream the peer stopped reading is dialled again; a
//! stopping member ends the streams it receives; a peer without streams gets posted batches; and
//! the receiving side refuses bad frames.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::runtime::{input_queue, Input, InputReceiver, Outbox};
use super::shared::Shared;
use super::timeline::EventKind;
use super::transport::*;
use crate::http::serve::{serve, PEER_PORT};
use crate::raft::{Entry, EntryPayload, Message, MessageBody};

const SENDER: u64 = 1;
const RECEIVER: u64 = 2;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn heartbeat(commit: u64) -> Message {
    Message { from: SENDER, to: RECEIVER, term: 1, body: MessageBody::Heartbeat { commit, read_seq: 0 } }
}

fn append(index: u64, bytes: usize) -> Message {
    let entry = Entry { index, term: 1, payload: EntryPayload::Command(Bytes::from(vec![7u8; bytes])) };
    let body = MessageBody::Append { prev_index: index - 1, prev_term: 1, entries: vec![entry], commit: 0 };
    Message { from: SENDER, to: RECEIVER, term: 1, body }
}

/// The receiving member's peer server, its Raft loop's input, and the paths (with the stream
/// header) of the requests it was sent.
struct Receiving {
    server: PeerServer,
    input: InputReceiver,
    seen: Arc<Mutex<Vec<String>>>,
}

fn receiving() -> Receiving {
    let shared = Arc::new(Shared::for_tests(RECEIVER, "etcd-1", 1, ""));
    let (tx, input) = input_queue(100_000);
    let server = PeerServer::new(shared, tx, PeerLimits::new(1 << 20, 1 << 20));
    Receiving { server, input, seen: Arc::default() }
}

/// Serves `router` on the peer port's limits at 127.0.0.1; returns its URL and the stop switch.
async fn start(router: Router, seen: Arc<Mutex<Vec<String>>>) -> (String, watch::Sender<bool>) {
    let router = router.layer(axum::middleware::from_fn(move |request: Request, next: axum::middleware::Next| {
        let seen = seen.clone();
        async move {
            let lane = request.headers().get(HEADER_STREAM).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            seen.lock().expect("seen").push(format!("{} {lane}", request.uri().path()).trim().to_string());
            next.run(request).await
        }
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(serve(listener, router, PEER_PORT, render_error, Arc::default(), None, stopped));
    (url, stop)
}

/// The sending member's transport, knowing the receiver at `url`.
fn sender(url: &str) -> (Transport, Arc<Shared>) {
    let shared = Arc::new(Shared::for_tests(SENDER, "etcd-0", 1, ""));
    shared.addresses.learn(RECEIVER, "etcd-1", url, "");
    let (tx, _rx) = input_queue(16);
    (Transport::new(shared.clone(), tokio::runtime::Handle::current(), tx, None, None), shared)
}

/// The next message the receiving loop got, waiting at most `within`.
async fn next_step(input: &mut InputReceiver, within: Duration) -> Option<Message> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match input.try_recv() {
            Ok(Input::Step(m)) => return Some(m),
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    None
}

#[test]
fn every_batch_reaches_the_peer_in_order_on_two_streams() {
    runtime().block_on(async {
        let mut r = receiving();
        let (url, _stop) = start(peer_router(r.server.clone()), r.seen.clone()).await;
        let (mut transport, _) = sender(&url);
        let mut sent = Vec::new();
        for i in 1..=600u64 {
            let mut batch = vec![append(i, 100)];
            if i % 10 == 0 {
                batch.push(heartbeat(i));
            }
            sent.extend(batch.iter().cloned());
            transport.send(batch);
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let mut got = Vec::new();
        while got.len() < sent.len() {
            let Some(m) = next_step(&mut r.input, Duration::from_secs(10)).await else { break };
            got.push(m);
        }
        assert_eq!(got.len(), sent.len(), "every message arrived");
        let appends = |ms: &[Message]| {
            ms.iter().filter(|m| matches!(m.body, MessageBody::Append { .. })).cloned().collect::<Vec<_>>()
        };
        let heartbeats = |ms: &[Message]| {
            ms.iter().filter(|m| matches!(m.body, MessageBody::Heartbeat { .. })).cloned().collect::<Vec<_>>()
        };
        assert_eq!(appends(&got), appends(&sent), "appends in the order sent");
        assert_eq!(heartbeats(&got), heartbeats(&sent), "heartbeats in the order sent");
        let mut seen = r.seen.lock().expect("seen").clone();
        seen.sort();
        assert_eq!(seen, ["/raft/v1/stream control", "/raft/v1/stream data"], "two requests carried them all");
    });
}

/// What a peer that takes a data stream and never reads it would do: the control stream is the
/// real one.
#[derive(Clone)]
struct Stuck {
    server: PeerServer,
    data_streams: Arc<AtomicUsize>,
}

async fn stuck_stream(State(stuck): State<Stuck>, request: Request) -> Response {
    if request.headers().get(HEADER_STREAM).is_some_and(|v| v == "data") {
        stuck.data_streams.fetch_add(1, Ordering::SeqCst);
        // Held, never read, until the connection goes.
        let _unread = request;
        return std::future::pending::<Response>().await;
    }
    let router = peer_router(stuck.server.clone());
    match tower::ServiceExt::oneshot(router, request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

#[test]
fn a_heartbeat_passes_appends_the_peer_does_not_read_and_a_stalled_stream_is_dialled_again() {
    runtime().block_on(async {
        let mut r = receiving();
        let data_streams = Arc::new(AtomicUsize::new(0));
        let stuck = Stuck { server: r.server.clone(), data_streams: data_streams.clone() };
        let router = Router::new().route(STREAM_PATH, post(stuck_stream)).with_state(stuck);
        let (url, _stop) = start(router, r.seen.clone()).await;
        let (mut transport, shared) = sender(&url);
        // 48 MiB of appends: more than the connection's buffers hold unread.
        for i in 1..=48u64 {
            transport.send(vec![append(i, 1 << 20)]);
        }
        let mut heard = Vec::new();
        let mut dialled_again = false;
        for n in 1..=100u64 {
            transport.send(vec![heartbeat(n)]);
            if n % 10 == 0 {
                // As the core does once heartbeats are answered: an append again.
                transport.send(vec![append(48 + n, 10)]);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Some(m) = next_step(&mut r.input, Duration::from_millis(1)).await {
                heard.push(m);
            }
            if data_streams.load(Ordering::SeqCst) >= 2 && !heard.is_empty() {
                dialled_again = true;
                break;
            }
        }
        assert!(heard.iter().all(|m| matches!(m.body, MessageBody::Heartbeat { .. })), "no append was read");
        assert!(!heard.is_empty(), "heartbeats arrived while the appends were stuck");
        assert!(dialled_again, "the stalled data stream was closed and opened anew");
        let unreachable = shared
            .timeline
            .since(0)
            .into_iter()
            .any(|e| matches!(&e.kind, EventKind::PeerUnreachable { error, .. } if error.contains("took nothing")));
        assert!(unreachable, "the stall is on the timeline: {:?}", shared.timeline.since(0));
        assert!(shared.metrics.peer_messages_dropped.load(Ordering::Relaxed) > 0, "the stuck appends count as dropped");
    });
}

#[test]
fn a_stopping_member_ends_the_streams_it_receives() {
    runtime().block_on(async {
        let mut r = receiving();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let stopped = r.server.shared.stopping.subscribe();
        let router = peer_router(r.server.clone());
        let server = tokio::spawn(serve(listener, router, PEER_PORT, render_error, Arc::default(), None, stopped));
        let (mut transport, shared) = sender(&url);
        transport.send(vec![heartbeat(1)]);
        assert_eq!(next_step(&mut r.input, Duration::from_secs(10)).await, Some(heartbeat(1)), "the stream is open");
        // The server's graceful stop waits for the requests in flight, and the sender keeps its
        // stream open (it closes one only after STREAM_IDLE, 30 s without a message).
        r.server.shared.stopping.send_replace(true);
        let ended = tokio::time::timeout(Duration::from_secs(10), server).await;
        assert!(ended.is_ok(), "the peer server stopped although the sender's stream was open");
        // The sender learns why on its next send.
        let stopping = |shared: &Shared| {
            shared.timeline.since(0).into_iter().any(
                |e| matches!(&e.kind, EventKind::PeerUnreachable { error, .. } if error.contains("etcd-1 is stopping")),
            )
        };
        for n in 2..=50u64 {
            transport.send(vec![heartbeat(n)]);
            if stopping(&shared) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(stopping(&shared), "the stream's answer says the peer stops: {:?}", shared.timeline.since(0));
    });
}

#[test]
fn a_peer_without_streams_gets_posted_batches() {
    runtime().block_on(async {
        let mut r = receiving();
        // An older member's peer port: messages, no streams.
        let server = r.server.clone();
        let router = Router::new().route(
            MESSAGES_PATH,
            post(move |request: Request| {
                let router = peer_router(server.clone());
                async move {
                    match tower::ServiceExt::oneshot(router, request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                }
            }),
        );
        let (url, _stop) = start(router, r.seen.clone()).await;
        let (mut transport, _) = sender(&url);
        let mut heard = None;
        for n in 1..=50u64 {
            transport.send(vec![heartbeat(n)]);
            if let Some(m) = next_step(&mut r.input, Duration::from_millis(100)).await {
                heard = Some(m);
                break;
            }
        }
        let heard = heard.expect("a heartbeat arrived");
        for n in 1..=3 {
            transport.send(vec![append(n, 10)]);
            let m = next_step(&mut r.input, Duration::from_secs(5)).await.expect("the append arrived");
            assert_eq!(m, append(n, 10));
        }
        assert!(matches!(heard.body, MessageBody::Heartbeat { .. }));
        let seen = r.seen.lock().expect("seen").clone();
        assert!(seen.iter().any(|s| s.starts_with("/raft/v1/stream")), "a stream was tried: {seen:?}");
        assert!(seen.iter().filter(|s| *s == "/raft/v1/messages").count() >= 4, "then batches were posted: {seen:?}");
    });
}

/// A frame as the sender writes it: the length of a `/raft/v1/messages` body, then the body.
fn frame(messages: &[Message]) -> Vec<u8> {
    let body = encode_messages(messages).expect("encode");
    [&(body.len() as u32).to_be_bytes()[..], &body].concat()
}

/// Posts `chunks` as one stream body to the receiver's router; returns its status and message.
async fn post_stream(r: &Receiving, cluster: &str, chunks: Vec<Vec<u8>>) -> (StatusCode, String) {
    let chunks = futures::stream::iter(chunks.into_iter().map(|c| Ok::<_, std::convert::Infallible>(Bytes::from(c))));
    let request = axum::http::Request::post(STREAM_PATH)
        .header(HEADER_CLUSTER_ID, cluster)
        .header(HEADER_FROM, format!("{SENDER:x}"))
        .header("content-type", PEER_CONTENT_TYPE)
        .body(Body::from_stream(chunks))
        .expect("request");
    let response = tower::ServiceExt::oneshot(peer_router(r.server.clone()), request).await.expect("infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn drain(input: &mut InputReceiver) -> Vec<Message> {
    std::iter::from_fn(|| input.try_recv().ok())
        .filter_map(|i| match i {
            Input::Step(m) => Some(m),
            _ => None,
        })
        .collect()
}

#[test]
fn the_receiver_reads_frames_split_anywhere_and_refuses_bad_ones() {
    runtime().block_on(async {
        let mut r = receiving();
        let cluster = "7";
        // Two frames, cut into pieces of 3 bytes: both arrive, in order.
        let batches = [vec![heartbeat(1), append(1, 5)], vec![append(2, 5)]];
        let bytes: Vec<u8> = batches.iter().flat_map(|b| frame(b)).collect();
        let (status, _) = post_stream(&r, cluster, bytes.chunks(3).map(<[u8]>::to_vec).collect()).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(drain(&mut r.input), batches.concat());

        // Another cluster's stream: refused before a frame is read.
        let (status, why) = post_stream(&r, "8", vec![frame(&[heartbeat(2)])]).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{why}");
        assert!(why.contains("cluster id mismatch"), "{why}");
        // A frame over the limit: refused by its length, its body never read.
        let huge = (u32::MAX).to_be_bytes().to_vec();
        let (status, why) = post_stream(&r, cluster, vec![frame(&[heartbeat(3)]), huge]).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{why}");
        assert!(why.contains("a frame of 4294967295 bytes"), "{why}");
        // Undecodable, and cut inside a frame.
        let (status, why) = post_stream(&r, cluster, vec![[&3u32.to_be_bytes()[..], b"abc"].concat()]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{why}");
        assert!(why.contains("undecodable messages"), "{why}");
        let cut = frame(&[heartbeat(4)]);
        let (status, why) = post_stream(&r, cluster, vec![cut[..cut.len() - 1].to_vec()]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{why}");
        assert!(why.contains("ended inside a frame"), "{why}");
        // Only the whole frames before each refusal reached the loop.
        assert_eq!(drain(&mut r.input), vec![heartbeat(3)]);
        // A message that names another sender or recipient is dropped, not stepped.
        let mut other = heartbeat(5);
        other.to = 9;
        let (status, _) = post_stream(&r, cluster, vec![frame(&[other, heartbeat(6)])]).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(drain(&mut r.input), vec![heartbeat(6)]);
        assert_eq!(r.server.shared.metrics.peer_messages_rejected.load(Ordering::Relaxed), 2);
    });
}
