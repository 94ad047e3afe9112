//! The kuberaft target: one `crate::client::Client` per connection (an HTTP/1.1 pool), each
//! starting at another member. Writes and linearizable reads follow the leader hint of a
//! forwarded answer to the leader; serializable reads stay on the member they started at.
//! Leases: `POST /v1/lease/grant`, `/v1/lease/keepalive` (one request, one answer) and
//! `/v1/lease/revoke`, which go to the leader the same way.

use std::time::Duration;

use futures::StreamExt;

use super::{Answer, Call, Driver, EventStream, Op, OpResult};
use crate::base::output::CliError;
use crate::base::wire::watch::WatchCreateRequest;
use crate::client::{Client, ClientConfig, ClientError, Consistency, SecurityArgs};

pub struct KuberaftDriver {
    conns: Vec<Client>,
}

impl KuberaftDriver {
    pub fn new(
        endpoints: &[String],
        conns: usize,
        timeout: Duration,
        security: &SecurityArgs,
    ) -> Result<KuberaftDriver, CliError> {
        let user = security.credentials().map_err(|e| CliError::Usage(e.to_string()))?;
        if endpoints.is_empty() {
            return Err(CliError::Usage("--endpoints names no member".into()));
        }
        let conns = (0..conns)
            .map(|i| {
                let mut rotated = endpoints.to_vec();
                rotated.rotate_left(i % endpoints.len());
                let config = ClientConfig {
                    tls: security.tls(),
                    user: user.clone(),
                    ..ClientConfig::with_request_timeout(timeout)
                };
                Client::with_config(rotated, config).map_err(|e| CliError::Usage(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KuberaftDriver { conns })
    }
}

fn text(key: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(key).map_err(|_| "keys are UTF-8".to_string())
}

impl Driver for KuberaftDriver {
    fn watch(&self, conn: usize) -> Answer<'_, EventStream> {
        Box::pin(async move {
            let client = &self.conns[conn % self.conns.len()];
            let every = WatchCreateRequest { key: Some(String::new()), prefix: true, ..WatchCreateRequest::default() };
            let watch = client.watch(every).await.map_err(|e| e.to_string())?;
            let stream = futures::stream::unfold(watch, |mut watch| async move {
                let answer = watch.next().await.map_err(|e| e.to_string());
                let revisions = answer.map(|a| a.events.iter().map(|e| e.kv.mod_revision).collect::<Vec<i64>>());
                Some((revisions, watch))
            });
            Ok(stream.boxed())
        })
    }

    fn request<'a>(&'a self, Call { conn, op, key, value }: Call<'a>) -> Answer<'a, OpResult> {
        Box::pin(async move {
            let client = &self.conns[conn % self.conns.len()];
            match op {
                Op::Put => client
                    .put(text(key)?, value, None)
                    .await
                    .map(|r| OpResult { revision: r.revision, ..OpResult::default() })
                    .map_err(|e| e.to_string()),
                Op::Cas { revision } => match client.put(text(key)?, value, Some(revision)).await {
                    Ok(r) => Ok(OpResult { revision: r.revision, ..OpResult::default() }),
                    Err(ClientError::Api { status: 412, .. }) => {
                        Ok(OpResult { compare_failed: true, ..OpResult::default() })
                    }
                    Err(e) => Err(e.to_string()),
                },
                Op::Get { linearizable } => {
                    let consistency = if linearizable { Consistency::Linearizable } else { Consistency::Serializable };
                    client
                        .get(text(key)?, consistency)
                        .await
                        .map(|r| OpResult { revision: r.map_or(0, |r| r.mod_revision), ..OpResult::default() })
                        .map_err(|e| e.to_string())
                }
                Op::LeaseGrant { ttl } => {
                    let r = client.lease_grant(ttl, 0).await.map_err(|e| e.to_string())?;
                    Ok(OpResult { revision: r.header.revision as u64, lease: r.id, ..OpResult::default() })
                }
                Op::LeaseKeepAlive { id } => {
                    let r = client.lease_keep_alive(id).await.map_err(|e| e.to_string())?;
                    if r.ttl <= 0 {
                        return Err(format!("keep-alive of lease {id:x}: no such lease"));
                    }
                    Ok(OpResult { revision: r.header.revision as u64, lease: id, ..OpResult::default() })
                }
                Op::LeaseRevoke { id } => {
                    let r = client.lease_revoke(id).await.map_err(|e| e.to_string())?;
                    Ok(OpResult { revision: r.header.revision as u64, lease: id, ..OpResult::default() })
                }
            }
        })
    }
}
