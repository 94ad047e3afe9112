//! etcd's Watch service: the bidirectional stream of create, cancel and progress requests,
//! served by the member called from its own applied state (`node::watch`), never forwarded,
//! as etcd serves watches. It runs the same stream as the JSON API's `POST /v1/watch`
//! (`api::watch::run_stream`).
//!
//! A request with none of the three is ignored, as etcd does. A client that sets etcd's
//! `hasleader: true` metadata (Go's `clientv3.WithRequireLeader`, which kube-apiserver uses) has
//! its stream ended with etcd's "etcdserver: no leader" (Unavailable) once the member has had
//! no leader for a while. Every stream ends with "etcdserver: server stopped" (Unavailable) when
//! the member stops.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::errors::{node_status, NO_LEADER, REQUEST_TOO_LARGE};
use super::etcdserverpb as pb;
use super::Grpc;
use crate::api::watch::{ends_stream, run_stream, Ask, Requests};
use crate::base::signal::until_stopped;
use crate::base::wire::{MAX_KEY_BYTES, STOPPED};
use crate::node::watch::{WatchResponse, WatchSpec};

/// etcd's metadata key for "serve only while there is a leader" (`rpctypes.MetadataRequireLeaderKey`).
pub const REQUIRE_LEADER: &str = "hasleader";

pub struct WatchService(pub(super) Grpc);

struct GrpcRequests(Streaming<pb::WatchRequest>);

fn ask(request: pb::watch_request::RequestUnion) -> Result<Ask, String> {
    use pb::watch_request::RequestUnion as U;
    Ok(match request {
        U::CreateRequest(c) => {
            if c.key.len() > MAX_KEY_BYTES || c.range_end.len() > MAX_KEY_BYTES {
                return Err(REQUEST_TOO_LARGE.to_string());
            }
            let has = |f: pb::watch_create_request::FilterType| c.filters.contains(&(f as i32));
            Ask::Create(WatchSpec {
                no_put: has(pb::watch_create_request::FilterType::Noput),
                no_delete: has(pb::watch_create_request::FilterType::Nodelete),
                key: c.key,
                range_end: c.range_end,
                start_revision: c.start_revision,
                prev_kv: c.prev_kv,
                progress_notify: c.progress_notify,
                fragment: c.fragment,
                watch_id: c.watch_id,
            })
        }
        U::CancelRequest(c) => Ask::Cancel(c.watch_id),
        U::ProgressRequest(_) => Ask::Progress,
    })
}

impl Requests for GrpcRequests {
    async fn next(&mut self) -> Result<Option<Ask>, String> {
        // Bounded by the client's messages: each round takes one.
        loop {
            match self.0.message().await {
                Ok(Some(pb::WatchRequest { request_union: Some(request) })) => return ask(request).map(Some),
                Ok(Some(pb::WatchRequest { request_union: None })) => continue,
                Ok(None) => return Ok(None),
                Err(status) => return Err(status.message().to_string()),
            }
        }
    }
}

type WatchAnswers = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

impl WatchService {
    fn response(&self, r: WatchResponse) -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(self.0.header(r.revision)),
            watch_id: r.watch_id,
            created: r.created,
            canceled: r.canceled,
            compact_revision: r.compact_revision,
            cancel_reason: r.cancel_reason,
            fragment: r.fragment,
            events: r.events.into_iter().map(convert::event).collect(),
        }
    }
}

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = WatchAnswers;

    async fn watch(&self, request: Request<Streaming<pb::WatchRequest>>) -> Result<Response<WatchAnswers>, Status> {
        let require_leader = request.metadata().get(REQUIRE_LEADER).is_some_and(|v| v.as_bytes() == b"true");
        if require_leader && self.0.api.node.shared.leader().is_none() {
            return Err(Status::unavailable(NO_LEADER));
        }
        let caller = crate::api::auth::of(&request);
        let rx = run_stream(&self.0.api, caller, None, GrpcRequests(request.into_inner()), require_leader)
            .await
            .map_err(node_status)?;
        let service = WatchService(self.0.clone());
        let answers = futures::stream::unfold((rx, service, false), |(mut rx, service, ended)| async move {
            if ended {
                return None;
            }
            let response = rx.recv().await?;
            if ends_stream(&response) {
                return Some((Err(Status::unavailable(NO_LEADER)), (rx, service, true)));
            }
            let answer = service.response(response);
            Some((Ok(answer), (rx, service, false)))
        });
        // Ends when the member stops as when it loses its leader: Unavailable, which etcd's
        // clients answer by watching again through another member.
        let stop = self.0.api.node.shared.stopping.subscribe();
        let answers = until_stopped(stop, answers, || Some(Err(Status::unavailable(STOPPED))));
        Ok(Response::new(Box::pin(answers)))
    }
}
