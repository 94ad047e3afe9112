//! The etcd target: `--conns` clients of the `etcd-client` crate, each over all endpoints (as
//! etcd's own benchmark tool does); workers share them round robin. A lease keep-alive is etcd's
//! `KeepAliveOnce`: a keep-alive stream opened, one request and its answer, and closed (as
//! etcd's `benchmark lease-keepalive` does it).

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, WatchOptions};
use futures::StreamExt;

use super::{Answer, Call, Driver, EventStream, Op, OpResult};
use crate::base::output::CliError;
use crate::client::{SecurityArgs, TlsOptions};

pub struct EtcdDriver {
    conns: Vec<Client>,
}

impl EtcdDriver {
    pub fn connect(
        endpoints: &[String],
        conns: usize,
        timeout: Duration,
        security: &SecurityArgs,
    ) -> Result<EtcdDriver, CliError> {
        let mut options = ConnectOptions::new().with_timeout(timeout).with_connect_timeout(timeout);
        if let Some(tls) = tls_options(endpoints, &security.tls())? {
            options = options.with_tls(tls);
        }
        if let Some(user) = security.credentials().map_err(|e| CliError::Usage(e.to_string()))? {
            options = options.with_user(user.name, user.password);
        }
        let handle = tokio::runtime::Handle::current();
        let conns = tokio::task::block_in_place(|| {
            (0..conns)
                .map(|_| handle.block_on(Client::connect(endpoints, Some(options.clone()))))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| CliError::Failed(format!("cannot connect to etcd at {}: {e}", endpoints.join(","))))?;
        Ok(EtcdDriver { conns })
    }
}

/// etcd-client's TLS settings (tonic's, on rustls and ring) for https:// endpoints: the CA of
/// `--cacert`, and the identity of `--cert` and `--key` when given; none for http:// ones.
fn tls_options(endpoints: &[String], tls: &TlsOptions) -> Result<Option<etcd_client::TlsOptions>, CliError> {
    let read =
        |path: &std::path::Path| crate::base::tls::read_pem(path).map_err(|e| CliError::Usage(format!("TLS: {e}")));
    if !endpoints.iter().any(|e| e.starts_with("https://")) {
        return Ok(None);
    }
    let Some(ca) = &tls.cacert else {
        return Err(CliError::Usage(
            "https:// endpoints need --cacert, the CA file the members' certificates chain to".into(),
        ));
    };
    let mut options = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        options = options.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(options))
}

impl Driver for EtcdDriver {
    fn watch(&self, conn: usize) -> Answer<'_, EventStream> {
        Box::pin(async move {
            let mut client = self.conns[conn % self.conns.len()].clone();
            // Every key: from "\0" with the range end "\0".
            let every = WatchOptions::new().with_range(vec![0u8]);
            let stream = client.watch(vec![0u8], Some(every)).await.map_err(|e| e.to_string())?;
            let stream = futures::stream::unfold(stream, |mut stream| async move {
                let answer = match stream.message().await {
                    Ok(Some(answer)) => {
                        Ok(answer.events().iter().filter_map(|e| e.kv().map(|kv| kv.mod_revision())).collect())
                    }
                    Ok(None) => return None,
                    Err(e) => Err(e.to_string()),
                };
                Some((answer, stream))
            });
            Ok(stream.boxed())
        })
    }

    fn request<'a>(&'a self, Call { conn, op, key, value }: Call<'a>) -> Answer<'a, OpResult> {
        Box::pin(async move {
            let mut client = self.conns[conn % self.conns.len()].clone();
            let revision_of = |header: Option<&etcd_client::ResponseHeader>| header.map_or(0, |h| h.revision() as u64);
            match op {
                Op::Put => {
                    let response = client.put(key, value.to_vec(), None).await.map_err(|e| e.to_string())?;
                    Ok(OpResult { revision: revision_of(response.header()), ..OpResult::default() })
                }
                Op::Cas { revision } => {
                    let txn = Txn::new()
                        .when([Compare::mod_revision(key, CompareOp::Equal, revision as i64)])
                        .and_then([TxnOp::put(key, value.to_vec(), None)]);
                    let response = client.txn(txn).await.map_err(|e| e.to_string())?;
                    let compare_failed = !response.succeeded();
                    Ok(OpResult { revision: revision_of(response.header()), compare_failed, ..OpResult::default() })
                }
                Op::Get { linearizable } => {
                    let options = (!linearizable).then(|| GetOptions::new().with_serializable());
                    let response = client.get(key, options).await.map_err(|e| e.to_string())?;
                    let revision = response.kvs().first().map_or(0, |kv| kv.mod_revision() as u64);
                    Ok(OpResult { revision, ..OpResult::default() })
                }
                Op::LeaseGrant { ttl } => {
                    let response = client.lease_grant(ttl, None).await.map_err(|e| e.to_string())?;
                    Ok(OpResult {
                        revision: revision_of(response.header()),
                        lease: response.id(),
                        ..OpResult::default()
                    })
                }
                Op::LeaseKeepAlive { id } => {
                    // The stream's first answer (an error when the lease does not exist); dropping
                    // the keeper and the stream closes it.
                    let (keeper, stream) = client.lease_keep_alive(id).await.map_err(|e| e.to_string())?;
                    drop((keeper, stream));
                    Ok(OpResult { lease: id, ..OpResult::default() })
                }
                Op::LeaseRevoke { id } => {
                    let response = client.lease_revoke(id).await.map_err(|e| e.to_string())?;
                    Ok(OpResult { revision: revision_of(response.header()), lease: id, ..OpResult::default() })
                }
            }
        })
    }
}
