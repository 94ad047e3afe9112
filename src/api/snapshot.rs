//! A member's state machine as a snapshot to keep (`store::backup`: the MVCC stream framed as
//! etcd frames its snapshots), streamed to whoever asked: etcd's Maintenance.Snapshot and
//! `GET /v1/snapshot` (root's while auth is on), which `kuberaft snapshot save` and the
//! operator's backups read. Served by the member called, from a point-in-time read of its own
//! state, never forwarded: a backup taken from a follower costs the leader nothing.

use std::pin::Pin;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;

use super::server::{require_admin, Api, ApiError, ApiResult};
use crate::base::wire::HEADER_REVISION;
use crate::store::backup::Framer;
use crate::store::StoreError;

/// Snapshot chunks read ahead of the client.
const SNAPSHOT_AHEAD: usize = 2;

/// A snapshot being sent: its revision, and its bytes in chunks (the last one the framing).
pub struct Sending {
    pub revision: i64,
    pub chunks: Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>,
}

struct Progress {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, StoreError>>,
    framer: Option<Framer>,
}

/// Starts streaming this member's state machine as it is now.
pub fn start(api: &Api) -> Result<Sending, StoreError> {
    let reader = api.node.with_kv(|kv| kv.snapshot())?;
    let revision = reader.revision();
    // The reader does blocking reads: it runs on a blocking thread, a chunk or two ahead.
    let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_AHEAD);
    tokio::task::spawn_blocking(move || {
        for chunk in reader {
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    let chunks = futures::stream::unfold(Progress { rx, framer: Some(Framer::new()) }, |mut state| async move {
        let framer = state.framer.as_mut()?;
        match state.rx.recv().await {
            Some(Ok(chunk)) => {
                framer.add(&chunk);
                Some((Ok(chunk), state))
            }
            Some(Err(e)) => {
                state.framer = None;
                Some((Err(e), state))
            }
            None => {
                let tail = state.framer.take().map(Framer::tail).unwrap_or_default();
                Some((Ok(Bytes::from(tail)), state))
            }
        }
    });
    Ok(Sending { revision, chunks: Box::pin(chunks) })
}

/// `GET /v1/snapshot`: the snapshot file's bytes (`application/octet-stream`), its revision in
/// [`HEADER_REVISION`]. A failure after the first bytes cuts the stream, which the reader's
/// check of the SHA-256 finds.
pub async fn save(State(api): State<Api>) -> ApiResult<Response> {
    require_admin(&api)?;
    let sending =
        start(&api).map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()))?;
    let mut response = Body::from_stream(sending.chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/octet-stream"));
    headers.insert(HEADER_REVISION, header::HeaderValue::from(sending.revision));
    Ok(response)
}
