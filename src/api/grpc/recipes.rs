//! etcd's concurrency services, v3lock (Lock, Unlock) and v3election (Campaign, Proclaim,
//! Leader, Observe, Resign). As etcd serves them with its own client connected to the member
//! itself, these run kuberaft's client recipes (`client::concurrency`, which `kuberaft lock` and
//! `kuberaft elect` also run) against this member's client port: the contender's key is
//! `<name>/<lease in hex>` on the lease the caller gives and keeps alive (etcd's `WithLease` and
//! `Orphan`). A Lock or Campaign waits until the caller holds or leads, for as long as the
//! caller waits (its call is dropped when it gives up).
//!
//! Errors are etcd's: "election: not leader" and "election: no leader" (code Unknown, as etcd's
//! plain errors travel), and `"leader" field must be provided`. Names and keys are text (a name
//! that is not UTF-8 is refused).

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::errors::TIMEOUT;
use super::mvccpb;
use super::v3electionpb as epb;
use super::v3lockpb as lpb;
use super::Grpc;
use crate::base::wire::kv::KeyValue;
use crate::client::concurrency::{self, campaign, Mutex, Session};
use crate::client::{Client, ClientConfig, ClientError, TlsOptions};

pub const NOT_LEADER: &str = "election: not leader";
pub const NO_LEADER: &str = "election: no leader";
pub const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";
/// Leaders an Observe holds for a slow reader before it waits.
const OBSERVE_QUEUE: usize = 4;

/// What both services hold: the member, and a client of its own client port.
#[derive(Clone)]
pub struct Recipes {
    grpc: Grpc,
    client: Client,
}

impl Recipes {
    pub(super) fn new(grpc: Grpc) -> Result<Recipes, String> {
        let url = grpc.api.node.shared.advertise_client_url.clone();
        let tls = grpc.api.own_tls.as_ref().map(|files| TlsOptions {
            cacert: files.trusted_ca.clone(),
            cert: Some(files.cert.clone()),
            key: Some(files.key.clone()),
            inline: None,
        });
        let config = ClientConfig { tls: tls.unwrap_or_default(), ..ClientConfig::default() };
        let client = Client::with_config(vec![url], config).map_err(|e| e.to_string())?;
        Ok(Recipes { grpc, client })
    }

    /// The client of this member's own port, calling as the caller of `request` (signed as a
    /// forwarded caller, `api::auth`): etcd runs the recipes with the caller's token, so the
    /// caller's permissions apply.
    fn client_for<T>(&self, request: &Request<T>) -> Client {
        let caller = crate::api::auth::of(request);
        let headers = crate::api::auth::forwarded_caller(&self.grpc.api, &caller)
            .into_iter()
            .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_string())))
            .collect();
        self.client.with_headers(headers)
    }
}

fn client_status(e: ClientError) -> Status {
    match e {
        ClientError::SessionExpired(m) => Status::unknown(format!("session expired: {m}")),
        other if other.is_outcome_unknown() => Status::unavailable(TIMEOUT),
        other => Status::unavailable(other.to_string()),
    }
}

fn name(bytes: &[u8]) -> Result<String, Status> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Status::invalid_argument("kuberaft: names and keys must be UTF-8"))
}

fn pb_kv(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key_bytes().unwrap_or_default(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value_bytes().unwrap_or_default(),
        lease: kv.lease,
    }
}

pub struct LockService(pub Recipes);

#[tonic::async_trait]
impl lpb::lock_server::Lock for LockService {
    async fn lock(&self, request: Request<lpb::LockRequest>) -> Result<Response<lpb::LockResponse>, Status> {
        let client = self.0.client_for(&request);
        let asked = request.into_inner();
        let r = &self.0;
        let session = Session::orphan(&client, asked.lease);
        let mutex = Mutex::lock(&client, &session, &name(&asked.name)?).await.map_err(client_status)?;
        Ok(Response::new(lpb::LockResponse { header: r.grpc.current_header(), key: mutex.key().as_bytes().to_vec() }))
    }

    async fn unlock(&self, request: Request<lpb::UnlockRequest>) -> Result<Response<lpb::UnlockResponse>, Status> {
        let client = self.0.client_for(&request);
        let r = &self.0;
        let done = client.delete(&name(&request.get_ref().key)?, None).await.map_err(client_status)?;
        let revision = i64::try_from(done.revision).unwrap_or(i64::MAX);
        Ok(Response::new(lpb::UnlockResponse { header: Some(r.grpc.header(revision)) }))
    }
}

pub struct ElectionService(pub Recipes);

type Leaders = Pin<Box<dyn Stream<Item = Result<epb::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl epb::election_server::Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        let client = self.0.client_for(&request);
        let asked = request.into_inner();
        let r = &self.0;
        let session = Session::orphan(&client, asked.lease);
        let election = name(&asked.name)?;
        let value = name(&asked.value)?;
        let revision = campaign(&client, &session, &election, &value).await.map_err(client_status)?;
        let key = format!("{election}/{:x}", asked.lease);
        Ok(Response::new(epb::CampaignResponse {
            header: r.grpc.current_header(),
            leader: Some(epb::LeaderKey { name: asked.name, key: key.into_bytes(), rev: revision, lease: asked.lease }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        let client = self.0.client_for(&request);
        let asked = request.into_inner();
        let leader = asked.leader.ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        let r = &self.0;
        let (key, value) = (name(&leader.key)?, name(&asked.value)?);
        let done =
            concurrency::proclaim(&client, &key, leader.rev, leader.lease, &value).await.map_err(client_status)?;
        if !done {
            return Err(Status::unknown(NOT_LEADER));
        }
        Ok(Response::new(epb::ProclaimResponse { header: r.grpc.current_header() }))
    }

    async fn leader(&self, request: Request<epb::LeaderRequest>) -> Result<Response<epb::LeaderResponse>, Status> {
        let client = self.0.client_for(&request);
        let r = &self.0;
        let (found, revision) =
            concurrency::leader(&client, &name(&request.get_ref().name)?).await.map_err(client_status)?;
        let kv = found.ok_or_else(|| Status::unknown(NO_LEADER))?;
        Ok(Response::new(epb::LeaderResponse { header: Some(r.grpc.header(revision)), kv: Some(pb_kv(kv)) }))
    }

    type ObserveStream = Leaders;

    async fn observe(&self, request: Request<epb::LeaderRequest>) -> Result<Response<Leaders>, Status> {
        let client = self.0.client_for(&request);
        let election = name(&request.get_ref().name)?;
        let r = self.0.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<(KeyValue, i64)>(OBSERVE_QUEUE);
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<Status>();
        tokio::spawn(async move {
            if let Err(e) = concurrency::observe(&client, &election, tx).await {
                let _ = end_tx.send(client_status(e));
            }
        });
        let answers = futures::stream::unfold((rx, Some(end_rx), r), |(mut rx, end_rx, r)| async move {
            match rx.recv().await {
                Some((kv, revision)) => {
                    let answer = epb::LeaderResponse { header: Some(r.grpc.header(revision)), kv: Some(pb_kv(kv)) };
                    Some((Ok(answer), (rx, end_rx, r)))
                }
                // The observer ended: with an error, the stream ends with it.
                None => match end_rx?.await {
                    Ok(status) => Some((Err(status), (rx, None, r))),
                    Err(_) => None,
                },
            }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn resign(&self, request: Request<epb::ResignRequest>) -> Result<Response<epb::ResignResponse>, Status> {
        let client = self.0.client_for(&request);
        let leader = request.into_inner().leader.ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        let r = &self.0;
        let revision = concurrency::resign(&client, &name(&leader.key)?, leader.rev).await.map_err(client_status)?;
        Ok(Response::new(epb::ResignResponse { header: Some(r.grpc.header(revision)) }))
    }
}
