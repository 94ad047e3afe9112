//! etcd's Cluster service: MemberList, MemberAdd (with `isLearner`), MemberRemove,
//! MemberPromote and MemberUpdate, on the membership the JSON API changes
//! (`NodeHandle::add_member`, ...): one Raft configuration change at a time, on the leader (a
//! follower forwards). MemberList answers from this member's committed membership, as etcd's
//! does. The header has no revision, as etcd's Cluster answers (a forwarded answer's, filled by
//! the leader with revision 0, is made this member's by `forward!`).
//!
//! A member that MemberAdd adds has no name until the member starts, as in etcd; kuberaft keeps
//! it nameless (etcd's member records its name when it first starts; COMPATIBILITY.md). One peer
//! URL per member: more are refused as invalid URLs.

use tonic::{Request, Response, Status};

use super::errors::node_status;
use super::etcdserverpb as pb;
use super::etcdserverpb::cluster_client::ClusterClient;
use super::{Grpc, Route};
use crate::api::server::members_with_client_urls;
use crate::base::ids::validate_url;
use crate::base::wire::learner_caught_up;

pub const MEMBER_BAD_URLS: &str = "etcdserver: given member URLs are invalid";
pub const PEER_URL_EXISTS: &str = "etcdserver: Peer URLs already exists";
pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
pub const MEMBER_NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
pub const LEARNER_NOT_READY: &str = "etcdserver: can only promote a learner member which is in sync with leader";

pub struct ClusterService(pub(super) Grpc);

impl ClusterService {
    /// etcd's Cluster header: cluster, member and term, no revision.
    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(self.0.header(0))
    }

    fn members(&self) -> Vec<pb::Member> {
        members_with_client_urls(&self.0.api)
            .into_iter()
            .map(|(info, voter)| pb::Member {
                id: info.id,
                name: info.name,
                peer_ur_ls: vec![info.peer_url],
                client_ur_ls: if info.client_url.is_empty() { Vec::new() } else { vec![info.client_url] },
                is_learner: !voter,
            })
            .collect()
    }

    fn must_exist(&self, id: u64) -> Result<bool, Status> {
        match self.0.api.node.with_kv(|kv| kv.member(id)) {
            Some((_, voter)) => Ok(voter),
            None => Err(Status::not_found(MEMBER_NOT_FOUND)),
        }
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        self.0.admin(&request)?;
        let asked = request.get_ref();
        let [peer_url] = asked.peer_ur_ls.as_slice() else {
            return Err(Status::invalid_argument(MEMBER_BAD_URLS));
        };
        let peer_url = peer_url.trim_end_matches('/').to_string();
        validate_url(&peer_url).map_err(|_| Status::invalid_argument(MEMBER_BAD_URLS))?;
        let learner = asked.is_learner;
        match self.0.route(&request)? {
            Route::Leader(leader) => forward!(self.0, leader, request, ClusterClient::member_add),
            Route::Here => {
                if self.0.api.node.with_kv(|kv| kv.members()).iter().any(|(m, _)| m.peer_url == peer_url) {
                    return Err(Status::failed_precondition(PEER_URL_EXISTS));
                }
                let id = self
                    .0
                    .api
                    .node
                    .add_member(String::new(), peer_url.clone(), String::new(), learner)
                    .await
                    .map_err(node_status)?;
                let member = pb::Member { id, peer_ur_ls: vec![peer_url], is_learner: learner, ..Default::default() };
                Ok(Response::new(pb::MemberAddResponse {
                    header: self.header(),
                    member: Some(member),
                    members: self.members(),
                }))
            }
        }
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.0.admin(&request)?;
        match self.0.route(&request)? {
            Route::Leader(leader) => forward!(self.0, leader, request, ClusterClient::member_remove),
            Route::Here => {
                let id = request.get_ref().id;
                self.must_exist(id)?;
                self.0.api.node.remove_member(id).await.map_err(node_status)?;
                Ok(Response::new(pb::MemberRemoveResponse { header: self.header(), members: self.members() }))
            }
        }
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        self.0.admin(&request)?;
        let asked = request.get_ref();
        let [peer_url] = asked.peer_ur_ls.as_slice() else {
            return Err(Status::invalid_argument(MEMBER_BAD_URLS));
        };
        validate_url(peer_url.trim_end_matches('/')).map_err(|_| Status::invalid_argument(MEMBER_BAD_URLS))?;
        match self.0.route(&request)? {
            Route::Leader(leader) => forward!(self.0, leader, request, ClusterClient::member_update),
            Route::Here => {
                let id = request.get_ref().id;
                self.must_exist(id)?;
                let peer_url = peer_url.trim_end_matches('/').to_string();
                if !self.0.api.node.update_member(id, peer_url).await.map_err(node_status)? {
                    return Err(Status::not_found(MEMBER_NOT_FOUND));
                }
                Ok(Response::new(pb::MemberUpdateResponse { header: self.header(), members: self.members() }))
            }
        }
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse { header: self.header(), members: self.members() }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        self.0.admin(&request)?;
        match self.0.route(&request)? {
            Route::Leader(leader) => forward!(self.0, leader, request, ClusterClient::member_promote),
            Route::Here => {
                let id = request.get_ref().id;
                if self.must_exist(id)? {
                    return Err(Status::failed_precondition(MEMBER_NOT_LEARNER));
                }
                let status = self.0.api.node.shared.status();
                let matched = status.matched.get(&id).copied().unwrap_or(0);
                if !learner_caught_up(matched, status.commit_index) {
                    return Err(Status::failed_precondition(LEARNER_NOT_READY));
                }
                self.0.api.node.promote(id).await.map_err(node_status)?;
                Ok(Response::new(pb::MemberPromoteResponse { header: self.header(), members: self.members() }))
            }
        }
    }
}
