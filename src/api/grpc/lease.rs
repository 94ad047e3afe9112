//! etcd's Lease service: Grant, Revoke, KeepAlive (a stream), TimeToLive and Leases. Served by
//! the leader, as the JSON lease endpoints (`api::lease`): grants and revokes go through the
//! log, and only the leader counts the leases' time. Another member forwards each call; a
//! keep-alive stream is forwarded as one stream to the leader.
//!
//! A keep-alive of a lease that does not exist answers TTL 0, and a time-to-live TTL -1, as in
//! etcd. A keep-alive stream on a member that stops leading ends with "etcdserver: no leader"
//! (Unavailable); etcd's clients open a new one, which reaches the new leader. Every keep-alive
//! stream ends with "etcdserver: server stopped" (Unavailable) when its member stops.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::errors::{auth_status, node_status};
use super::etcdserverpb as pb;
use super::etcdserverpb::lease_client::LeaseClient;
use super::{Grpc, Route};
use crate::api::auth;
use crate::base::signal::until_stopped;
use crate::base::wire::STOPPED;
use crate::store::auth::{Access, Caller};

pub struct LeaseService(pub(super) Grpc);

type KeepAliveAnswers = Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

impl LeaseService {
    /// One keep-alive: here on the leader, through it from a follower that forwards.
    async fn keep_alive_once(&self, caller: &Caller, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
        auth::check_lease(&self.0.api, caller, id, Access::Write).map_err(node_status)?;
        let ttl = self.0.api.node.lease_keep_alive(id).await.map_err(node_status)?;
        Ok(pb::LeaseKeepAliveResponse { header: self.0.current_header(), id, ttl })
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        match self.0.write_route(&request, true)? {
            Route::Leader(leader) => forward!(self.0, leader, request, LeaseClient::lease_grant),
            Route::Here => {
                let caller = auth::of(&request);
                let asked = request.into_inner();
                let (id, ttl) = self.0.api.node.lease_grant(&caller, asked.id, asked.ttl).await.map_err(node_status)?;
                Ok(Response::new(pb::LeaseGrantResponse {
                    header: self.0.current_header(),
                    id,
                    ttl,
                    error: String::new(),
                }))
            }
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        match self.0.write_route(&request, true)? {
            Route::Leader(leader) => forward!(self.0, leader, request, LeaseClient::lease_revoke),
            Route::Here => {
                let caller = auth::of(&request);
                let revision =
                    self.0.api.node.lease_revoke(&caller, request.get_ref().id).await.map_err(node_status)?;
                Ok(Response::new(pb::LeaseRevokeResponse { header: Some(self.0.header(revision)) }))
            }
        }
    }

    type LeaseKeepAliveStream = KeepAliveAnswers;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveAnswers>, Status> {
        // A follower that forwards renews each request through the leader as it comes, as
        // etcd's followers do; otherwise the stream goes on to the leader whole.
        let route = if self.0.served_with_leader(&request) { Route::Here } else { self.0.route(&request)? };
        let answers: KeepAliveAnswers = match route {
            Route::Leader(leader) => {
                // The client's requests go on to the leader as they come, until they end or break.
                let requests = request
                    .into_inner()
                    .take_while(|r| std::future::ready(r.is_ok()))
                    .filter_map(|r: Result<pb::LeaseKeepAliveRequest, Status>| std::future::ready(r.ok()));
                let answers = leader
                    .call(requests, |c, o, r| async move { LeaseClient::with_origin(c, o).lease_keep_alive(r).await })
                    .await?
                    .into_inner();
                let grpc = self.0.clone();
                let answers = answers.map(move |answer| {
                    answer.map(|mut a| {
                        grpc.own_header(&mut a.header);
                        a
                    })
                });
                Box::pin(answers)
            }
            Route::Here => {
                let service = LeaseService(self.0.clone());
                let caller = auth::of(&request);
                let state = Some((service, caller, request.into_inner()));
                let answers = futures::stream::unfold(state, |state| async move {
                    let (service, caller, mut requests) = state?;
                    let answer = match requests.message().await {
                        Ok(None) => return None,
                        Ok(Some(asked)) => service.keep_alive_once(&caller, asked.id).await,
                        Err(status) => Err(status),
                    };
                    // After an error the stream ends.
                    let next = answer.is_ok().then_some((service, caller, requests));
                    Some((answer, next))
                });
                Box::pin(answers)
            }
        };
        // Either way the stream ends when this member stops; etcd's clients open a new one
        // through another member.
        let stop = self.0.api.node.shared.stopping.subscribe();
        let answers = until_stopped(stop, answers, || Some(Err(Status::unavailable(STOPPED))));
        Ok(Response::new(Box::pin(answers)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        match self.0.route(&request)? {
            Route::Leader(leader) => forward!(self.0, leader, request, LeaseClient::lease_time_to_live),
            Route::Here => {
                let caller = auth::of(&request);
                let asked = request.into_inner();
                // etcd 3.4.42: an authenticated caller; READ on the lease's keys to list them.
                if asked.keys {
                    auth::check_lease(&self.0.api, &caller, asked.id, Access::Read).map_err(node_status)?;
                } else {
                    auth::with_state(&self.0.api, |a| a.check_authenticated(caller.user())).map_err(auth_status)?;
                }
                let found = self.0.api.node.lease_time_to_live(asked.id, asked.keys).await.map_err(node_status)?;
                let (ttl, granted_ttl, keys) = found.unwrap_or((-1, 0, Vec::new()));
                Ok(Response::new(pb::LeaseTimeToLiveResponse {
                    header: self.0.current_header(),
                    id: asked.id,
                    ttl,
                    granted_ttl,
                    keys,
                }))
            }
        }
    }

    async fn lease_leases(
        &self,
        request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        match self.0.read_point(&request).await? {
            Route::Leader(leader) => forward!(self.0, leader, request, LeaseClient::lease_leases),
            Route::Here => {
                let leases = self.0.api.node.leases().map_err(node_status)?;
                let ids: Vec<i64> = leases.iter().map(|l| l.id).collect();
                auth::check_leases(&self.0.api, &auth::of(&request), &ids).map_err(node_status)?;
                let leases = leases.into_iter().map(|l| pb::LeaseStatus { id: l.id }).collect();
                Ok(Response::new(pb::LeaseLeasesResponse { header: self.0.current_header(), leases }))
            }
        }
    }
}
