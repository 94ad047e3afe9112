//! `GET /v1/snapshot` of one member: its state machine as a snapshot file's bytes (DESIGN.md
//! §4), as a stream of chunks ([`Client::snapshot`]) or into a writer
//! ([`Client::snapshot_to`]). No failover: a snapshot is of the member asked (etcdctl's
//! `snapshot save` takes one endpoint too), and a cut stream is the caller's to retry.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest::header::AUTHORIZATION;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{error_chain, normalize_endpoint, Client, ClientError, Reply, Result};
use crate::base::wire::HEADER_REVISION;

/// What [`Client::snapshot_to`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotSaved {
    /// The member's revision at the snapshot's point in time.
    pub revision: i64,
    pub bytes: u64,
}

/// A snapshot arriving from a member: its revision, then its bytes ([`Snapshot::next_chunk`]).
pub struct Snapshot {
    pub endpoint: String,
    /// The member's revision at the snapshot's point in time.
    pub revision: i64,
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    /// The longest wait for the next bytes.
    stall: Duration,
    received: u64,
}

impl Snapshot {
    /// The next bytes, or `None` at the end. Each wait is bounded by the client's request
    /// timeout; the whole transfer is not.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        let unavailable =
            |endpoint: &str, why: String| ClientError::Unavailable { attempts: vec![format!("{endpoint}: {why}")] };
        match tokio::time::timeout(self.stall, self.body.next()).await {
            Err(_) => Err(unavailable(
                &self.endpoint,
                format!("the snapshot stalled for {:?} after {} bytes", self.stall, self.received),
            )),
            Ok(None) => Ok(None),
            Ok(Some(Err(e))) => Err(unavailable(
                &self.endpoint,
                format!("the snapshot was cut after {} bytes: {}", self.received, error_chain(&e)),
            )),
            Ok(Some(Ok(chunk))) => {
                self.received += chunk.len() as u64;
                Ok(Some(chunk))
            }
        }
    }

    /// The bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }
}

impl Client {
    /// Starts a snapshot of the member at `endpoint`: its answer's head has arrived, the bytes
    /// follow. The caller checks them (`base::framing::FrameCheck`, or the whole file with
    /// `store::backup::check_file`).
    pub async fn snapshot(&self, endpoint: &str) -> Result<Snapshot> {
        let endpoint = normalize_endpoint(endpoint)?;
        let timeout = self.config.request_timeout;
        let mut request = self.http.get(format!("{endpoint}/v1/snapshot"));
        if let Some(token) = self.token().await? {
            request = request.header(AUTHORIZATION, token);
        }
        for (name, value) in &self.config.headers {
            request = request.header(name, value);
        }
        let unavailable = |why: String| ClientError::Unavailable { attempts: vec![format!("{endpoint}: {why}")] };
        let response = tokio::time::timeout(timeout, request.send())
            .await
            .map_err(|_| unavailable(format!("no answer within {timeout:?}")))?
            .map_err(|e| unavailable(error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return Err(Reply { endpoint: endpoint.clone(), status, headers: Default::default(), body }.api_error());
        }
        let revision = response
            .headers()
            .get(HEADER_REVISION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ClientError::Decode {
                endpoint: endpoint.clone(),
                message: format!("the answer has no {HEADER_REVISION} header"),
            })?;
        Ok(Snapshot { endpoint, revision, body: response.bytes_stream().boxed(), stall: timeout, received: 0 })
    }

    /// Streams a snapshot of the member at `endpoint` into `out` (which the caller checks).
    pub async fn snapshot_to(&self, endpoint: &str, out: &mut (impl AsyncWrite + Unpin)) -> Result<SnapshotSaved> {
        let mut snapshot = self.snapshot(endpoint).await?;
        let write = |e: std::io::Error| ClientError::Setup(format!("cannot write the snapshot: {e}"));
        while let Some(chunk) = snapshot.next_chunk().await? {
            out.write_all(&chunk).await.map_err(write)?;
        }
        out.flush().await.map_err(write)?;
        Ok(SnapshotSaved { revision: snapshot.revision, bytes: snapshot.received })
    }
}
