//! etcd's KV service: Range, Put, DeleteRange, Txn and Compact on the MVCC store, with the
//! same checks and answer bounds as the JSON API (`api::kv`): keys up to `MAX_KEY_BYTES`, values
//! up to `--max-value-bytes`, a txn's static errors found before it is proposed, and an
//! answer cut to `MAX_LIST_LIMIT` keys and `MAX_LIST_PAGE_BYTES` of values (`more` set, `count`
//! still counting every key; COMPATIBILITY.md).

use tonic::{Request, Response, Status};

use super::convert;
use super::errors::{mvcc_status, node_status, REQUEST_TOO_LARGE};
use super::etcdserverpb as pb;
use super::etcdserverpb::kv_client::KvClient;
use super::{Grpc, Route};
use crate::api::auth;
use crate::api::kv::{bound_range, bound_txn, capped, static_check, Budget, ANSWER_KEYS};
use crate::base::wire::MAX_KEY_BYTES;
use crate::node::handle::PHYSICAL_COMPACT_LIMIT;
use crate::store::auth::{Access, Caller};
use crate::store::command::txn_answer_is_small;
use crate::store::mvcc;

pub struct KvService(pub(super) Grpc);

/// Refuses keys over `MAX_KEY_BYTES` and values over `max_value_bytes` anywhere in a txn (etcd
/// refuses a request over its `--max-request-bytes` with the same error).
fn check_sizes(t: &mvcc::TxnRequest, max_value_bytes: usize) -> Result<(), Status> {
    let too_large = || Err(Status::invalid_argument(REQUEST_TOO_LARGE));
    let key_ok = |key: &[u8], end: &[u8]| key.len() <= MAX_KEY_BYTES && end.len() <= MAX_KEY_BYTES;
    for c in &t.compare {
        let value_ok = !matches!(&c.target, mvcc::CompareTarget::Value(v) if v.len() > max_value_bytes);
        if !key_ok(&c.key, &c.range_end) || !value_ok {
            return too_large();
        }
    }
    for op in t.success.iter().chain(&t.failure) {
        let ok = match op {
            mvcc::RequestOp::Range(r) => key_ok(&r.key, &r.range_end),
            mvcc::RequestOp::Put(p) => key_ok(&p.key, b"") && p.value.len() <= max_value_bytes,
            mvcc::RequestOp::DeleteRange(d) => key_ok(&d.key, &d.range_end),
            mvcc::RequestOp::Txn(inner) => {
                check_sizes(inner, max_value_bytes)?;
                true
            }
        };
        if !ok {
            return too_large();
        }
    }
    Ok(())
}

/// A request of one op as the txn it is applied as, checked.
fn single(op: mvcc::RequestOp, max_value_bytes: usize) -> Result<mvcc::TxnRequest, Status> {
    let txn = mvcc::TxnRequest { compare: Vec::new(), success: vec![op], failure: Vec::new() };
    check_sizes(&txn, max_value_bytes)?;
    static_check(&txn).map_err(mvcc_status)?;
    Ok(txn)
}

impl KvService {
    fn max_value_bytes(&self) -> usize {
        self.0.api.node.shared.max_value_bytes
    }

    /// Applies `txn` through the log on this member (the leader), its answer cut to its bounds.
    async fn apply(&self, caller: &Caller, txn: mvcc::TxnRequest) -> Result<mvcc::TxnResponse, Status> {
        let done = self.0.api.node.txn(caller, txn).await.map_err(node_status)?;
        Ok(bound_txn(done, &mut Budget::new()).0)
    }

    /// The answer of a txn of one op: its only response.
    fn only(done: mvcc::TxnResponse) -> Result<mvcc::ResponseOp, Status> {
        done.responses.into_iter().next().ok_or_else(|| Status::internal("a txn of one op answered nothing"))
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(&self, request: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let asked = convert::range_request(request.get_ref().clone())?;
        let op = mvcc::RequestOp::Range(asked.clone());
        single(op, self.max_value_bytes())?;
        let started = std::time::Instant::now();
        let linearizable = !asked.serializable;
        if linearizable {
            if let Route::Leader(leader) = self.0.kv_read_point(&request).await? {
                return forward!(self.0, leader, request, KvClient::range);
            }
        } else {
            self.0.api.node.serializable_point().await.map_err(node_status)?;
        }
        self.0.may(&auth::of(&request), Access::Read, &asked.key, &asked.range_end)?;
        let found = self.0.api.node.range(&capped(asked), ANSWER_KEYS).map_err(node_status)?;
        if linearizable {
            self.0.api.node.read_replied(started);
        }
        let (found, _) = bound_range(found, &mut Budget::new());
        let mut answer = convert::range_response(found);
        self.0.own_header(&mut answer.header);
        Ok(Response::new(answer))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let txn =
            single(mvcc::RequestOp::Put(convert::put_request(request.get_ref().clone())), self.max_value_bytes())?;
        match self.0.write_route(&request, txn_answer_is_small(&txn))? {
            Route::Leader(leader) => forward!(self.0, leader, request, KvClient::put),
            Route::Here => match Self::only(self.apply(&auth::of(&request), txn).await?)? {
                mvcc::ResponseOp::Put(done) => {
                    let mut answer = convert::put_response(done);
                    self.0.own_header(&mut answer.header);
                    Ok(Response::new(answer))
                }
                other => Err(Status::internal(format!("a put answered {other:?}"))),
            },
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let op = mvcc::RequestOp::DeleteRange(convert::delete_request(request.get_ref().clone()));
        let txn = single(op, self.max_value_bytes())?;
        match self.0.write_route(&request, txn_answer_is_small(&txn))? {
            Route::Leader(leader) => forward!(self.0, leader, request, KvClient::delete_range),
            Route::Here => match Self::only(self.apply(&auth::of(&request), txn).await?)? {
                mvcc::ResponseOp::DeleteRange(done) => {
                    let mut answer = convert::delete_response(done);
                    self.0.own_header(&mut answer.header);
                    Ok(Response::new(answer))
                }
                other => Err(Status::internal(format!("a delete answered {other:?}"))),
            },
        }
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let txn = convert::txn_request(request.get_ref().clone())?;
        check_sizes(&txn, self.max_value_bytes())?;
        static_check(&txn).map_err(mvcc_status)?;
        match self.0.write_route(&request, txn_answer_is_small(&txn))? {
            Route::Leader(leader) => forward!(self.0, leader, request, KvClient::txn),
            Route::Here => {
                let mut answer = convert::txn_response(self.apply(&auth::of(&request), txn).await?);
                self.0.own_header(&mut answer.header);
                Ok(Response::new(answer))
            }
        }
    }

    /// etcd's Compact; `physical` waits for this member's own reclaim, also when the leader
    /// compacted (as the JSON API's compact does).
    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let asked = *request.get_ref();
        let mut answer = match self.0.write_route(&request, true)? {
            Route::Leader(leader) => {
                let logical = pb::CompactionRequest { physical: false, ..asked };
                leader
                    .call(logical, |c, o, r| async move { KvClient::with_origin(c, o).compact(r).await })
                    .await?
                    .into_inner()
            }
            Route::Here => {
                let done = self.0.api.node.compact(&auth::of(&request), asked.revision).await.map_err(node_status)?;
                pb::CompactionResponse { header: Some(self.0.header(done.revision)) }
            }
        };
        if asked.physical {
            self.0.api.node.wait_reclaimed(asked.revision, PHYSICAL_COMPACT_LIMIT).await.map_err(node_status)?;
        }
        self.0.own_header(&mut answer.header);
        Ok(Response::new(answer))
    }
}
