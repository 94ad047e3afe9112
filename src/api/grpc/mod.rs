//! etcd's v3 gRPC API on the client port (issue 15), in the client API's room beside the
//! HTTP endpoints: the code generated from `proto/` by build.rs, and the services on the node.
//!
//! The client port serves both: a request with `content-type: application/grpc` (HTTP/2) comes
//! here (`server::client_router`), anything else to the JSON API. Any member answers any RPC,
//! as in etcd: serializable reads and watches are served by the member itself; writes,
//! linearizable reads and the lease and membership calls are served by the leader, and another
//! member forwards them to it over gRPC ([`Leader`]), once (a forwarded call that reaches a
//! member that does not lead fails with etcd's "no leader", and the client retries).

/// Forwards a unary call to the leader and answers with the leader's answer, its header made
/// this member's: `forward!(grpc, leader, request, KvClient::put)`.
macro_rules! forward {
    ($grpc:expr, $leader:expr, $request:expr, $client:ident :: $method:ident) => {{
        let mut answer = $leader
            .call($request.into_inner(), |c, o, r| async move { $client::with_origin(c, o).$method(r).await })
            .await?;
        $grpc.own_header(&mut answer.get_mut().header);
        Ok(answer)
    }};
}

mod auth;
mod cluster;
pub mod convert;
mod errors;
mod kv;
mod lease;
mod maintenance;
mod recipes;
mod watch;

use std::future::Future;
use std::time::Duration;

use axum::http::Uri;

use hyper_util::client::legacy::Client;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::server::Api;
use crate::base::wire::{max_txn_request_bytes, HEADER_FORWARDED};
use crate::http::client::{h2_client, Connector};
use crate::store::auth::{Access, Caller};

pub use errors::{auth_status, node_status};

/// etcd's `mvccpb` messages.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's `etcdserverpb` messages, service traits and clients.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's `authpb` messages (users, roles), as the Auth service carries them.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd's `v3lockpb` service.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's `v3electionpb` service.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

use etcdserverpb as pb;

/// The client the gRPC API forwards with (HTTP/2 to the leader's client port).
type H2Client = Client<Connector, tonic::body::Body>;

/// The leader answers a forwarded call within this time, or the call fails with etcd's
/// "request timed out" (its outcome, for a write, unknown).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC routes of the client port.
pub fn router(api: Api) -> axum::Router {
    let max_request = max_txn_request_bytes(api.node.shared.max_value_bytes);
    let grpc = Grpc::new(api);
    let mut routes = tonic::service::Routes::new(
        pb::kv_server::KvServer::new(kv::KvService(grpc.clone())).max_decoding_message_size(max_request),
    )
    .add_service(pb::watch_server::WatchServer::new(watch::WatchService(grpc.clone())))
    .add_service(pb::lease_server::LeaseServer::new(lease::LeaseService(grpc.clone())))
    .add_service(pb::cluster_server::ClusterServer::new(cluster::ClusterService(grpc.clone())))
    .add_service(pb::maintenance_server::MaintenanceServer::new(maintenance::MaintenanceService(grpc.clone())))
    .add_service(pb::auth_server::AuthServer::new(auth::AuthService(grpc.clone())));
    match recipes::Recipes::new(grpc) {
        Ok(r) => {
            routes = routes
                .add_service(v3lockpb::lock_server::LockServer::new(recipes::LockService(r.clone())))
                .add_service(v3electionpb::election_server::ElectionServer::new(recipes::ElectionService(r)));
        }
        // Without a client URL to reach itself by, the member serves no lock or election.
        Err(e) => tracing::warn!("no v3lock or v3election service: {e}"),
    }
    routes.into_axum_router()
}

/// What every service holds: the member's API state and the client to its leader.
#[derive(Clone)]
pub(crate) struct Grpc {
    api: Api,
    h2: H2Client,
}

/// Where a call is served.
enum Route {
    Here,
    Leader(Box<Leader>),
}

/// The leader, as a gRPC origin to call.
pub(crate) struct Leader {
    client: H2Client,
    origin: Uri,
    /// The caller, as this member resolved it, signed (`api::auth::forwarded_caller`).
    caller: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
}

impl Leader {
    /// Calls the leader (a client made by `call` on this origin) with `message`, marked as
    /// forwarded, within [`FORWARD_TIMEOUT`].
    async fn call<T, R, F, Fut>(self, message: T, call: F) -> Result<Response<R>, Status>
    where
        F: FnOnce(H2Client, Uri, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let mut request = Request::new(message);
        request.metadata_mut().insert(HEADER_FORWARDED, MetadataValue::from_static("1"));
        for (name, value) in &self.caller {
            if let (Ok(name), Ok(Ok(value))) = (
                tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes()),
                value.to_str().map(MetadataValue::try_from),
            ) {
                request.metadata_mut().insert(name, value);
            }
        }
        match tokio::time::timeout(FORWARD_TIMEOUT, call(self.client, self.origin, request)).await {
            Ok(answer) => answer,
            Err(_) => Err(Status::unavailable(errors::TIMEOUT)),
        }
    }
}

impl Grpc {
    fn new(api: Api) -> Grpc {
        Grpc { h2: h2_client(api.leader_dial.clone()), api }
    }

    /// The header of a top-level answer, as etcd fills it: this member, its term, and the
    /// store's revision of the answer.
    fn header(&self, revision: i64) -> pb::ResponseHeader {
        let shared = &self.api.node.shared;
        pb::ResponseHeader { cluster_id: shared.cluster_id, member_id: shared.id, revision, raft_term: shared.term() }
    }

    /// The header of an answer at the store's current revision.
    fn current_header(&self) -> Option<pb::ResponseHeader> {
        let revision = self.api.node.with_kv(|kv| kv.current_revision());
        Some(self.header(revision))
    }

    /// A header the leader filled, made this member's (etcd answers from the member called).
    fn own_header(&self, header: &mut Option<pb::ResponseHeader>) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = Some(self.header(revision));
    }

    /// Fails unless the caller may read (`Access::Read`) or write `[key, range_end)` here.
    fn may(&self, caller: &Caller, access: Access, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        super::auth::check_range(&self.api, caller, access, key, range_end).map_err(auth_status)
    }

    /// Fails unless the caller is root (while auth is on).
    fn admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let caller = super::auth::of(request);
        super::auth::with_state(&self.api, |a| a.check_admin(caller.user())).map_err(auth_status)
    }

    /// Serve here (the leader), or forward to the leader.
    fn route<T>(&self, request: &Request<T>) -> Result<Route, Status> {
        let node = &self.api.node;
        if node.is_leader() {
            return Ok(Route::Here);
        }
        if request.metadata().contains_key(HEADER_FORWARDED) {
            // Forwarded to a member that no longer leads: leadership moved; the client retries.
            return Err(Status::unavailable(errors::NO_LEADER));
        }
        let url = node.leader_client_url().ok_or_else(|| Status::unavailable(errors::NO_LEADER))?;
        let origin = url.parse::<Uri>().map_err(|e| Status::unavailable(format!("the leader's URL {url}: {e}")))?;
        let caller = super::auth::forwarded_caller(&self.api, &super::auth::of(request));
        Ok(Route::Leader(Box::new(Leader { client: self.h2.clone(), origin, caller })))
    }

    /// A linearizable read: confirmed here on the leader (ReadIndex), or forwarded.
    async fn read_point<T>(&self, request: &Request<T>) -> Result<Route, Status> {
        let route = self.route(request)?;
        if let Route::Here = route {
            self.api.node.read_barrier().await.map_err(node_status)?;
        }
        Ok(route)
    }

    /// `NodeHandle::serves_with_leader` for a call.
    fn served_with_leader<T>(&self, request: &Request<T>) -> bool {
        self.api.node.serves_with_leader(request.metadata().contains_key(HEADER_FORWARDED))
    }

    /// A linearizable read of the key space, served here as etcd's members serve it: on the
    /// leader after its ReadIndex, on a follower after the leader's read index is applied
    /// (`NodeHandle::read_point`). A member that cannot (an older leader, a halted state
    /// machine) forwards the call.
    async fn kv_read_point<T>(&self, request: &Request<T>) -> Result<Route, Status> {
        let route = if self.served_with_leader(request) { Route::Here } else { self.route(request)? };
        if let Route::Here = route {
            self.api.node.read_point().await.map_err(node_status)?;
        }
        Ok(route)
    }

    /// A write: served here on the leader, and on a follower that has the leader apply it
    /// (`NodeHandle::submit`) when its answer is small; otherwise the call is forwarded.
    fn write_route<T>(&self, request: &Request<T>, small: bool) -> Result<Route, Status> {
        if small && self.served_with_leader(request) {
            return Ok(Route::Here);
        }
        self.route(request)
    }
}
