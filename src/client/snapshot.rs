//! `GET /v1/snapshot` of one member: its state machine as a snapshot file's bytes (DESIGN.md
//! §4), streamed into a writer. No failover: a snapshot is of the member asked (etcdctl's
//! `snapshot save` takes one endpoint too), and a cut stream is the caller's to retry.

use futures::StreamExt;
use reqwest::header::AUTHORIZATION;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::base::wire::HEADER_REVISION;

use super::{error_chain, normalize_endpoint, Client, ClientError, Reply, Result};

/// What [`Client::snapshot_to`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotSaved {
    /// The member's revision at the snapshot's point in time.
    pub revision: i64,
    pub bytes: u64,
}

impl Client {
    /// Streams a snapshot of the member at `endpoint` into `out` (which the caller checks:
    /// `store::backup::check_file`). Each wait for the next bytes is bounded by the request
    /// timeout; the whole transfer is not.
    pub async fn snapshot_to(&self, endpoint: &str, out: &mut (impl AsyncWrite + Unpin)) -> Result<SnapshotSaved> {
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
        let mut body = response.bytes_stream();
        let mut bytes = 0u64;
        loop {
            let chunk = match tokio::time::timeout(timeout, body.next()).await {
                Err(_) => return Err(unavailable(format!("the snapshot stalled for {timeout:?} after {bytes} bytes"))),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(unavailable(format!("the snapshot was cut after {bytes} bytes: {}", error_chain(&e))))
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            out.write_all(&chunk).await.map_err(|e| ClientError::Setup(format!("cannot write the snapshot: {e}")))?;
            bytes += chunk.len() as u64;
        }
        out.flush().await.map_err(|e| ClientError::Setup(format!("cannot write the snapshot: {e}")))?;
        Ok(SnapshotSaved { revision, bytes })
    }
}
