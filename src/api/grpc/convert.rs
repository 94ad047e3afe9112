//! etcd's protobuf messages to and from the MVCC store's types (`store::mvcc`), which follow
//! etcd's fields one for one. Enum values a client sends are checked: an unknown sort order or
//! target is refused with etcd's "etcdserver: invalid sort option" (InvalidArgument).
//!
//! A compare's operand is the `target_union` variant that matches its `target`; when the client
//! set another variant (or none), the operand is the zero value (0, or no bytes), which is what
//! etcd compares against then too (it reads the operand by the target's field).

use tonic::Status;

use super::etcdserverpb as pb;
use super::mvccpb;
use crate::store::mvcc;

/// etcd's `ErrGRPCInvalidSortOption`.
pub const INVALID_SORT_OPTION: &str = "etcdserver: invalid sort option";

pub fn kv(kv: mvcc::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn event(e: mvcc::Event) -> mvccpb::Event {
    let kind = match e.kind {
        mvcc::EventKind::Put => mvccpb::event::EventType::Put,
        mvcc::EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event { r#type: kind as i32, kv: Some(kv(e.kv)), prev_kv: e.prev_kv.map(kv) }
}

fn sort_order(value: i32) -> Result<mvcc::SortOrder, Status> {
    use pb::range_request::SortOrder as P;
    match P::try_from(value) {
        Ok(P::None) => Ok(mvcc::SortOrder::None),
        Ok(P::Ascend) => Ok(mvcc::SortOrder::Ascend),
        Ok(P::Descend) => Ok(mvcc::SortOrder::Descend),
        Err(_) => Err(Status::invalid_argument(INVALID_SORT_OPTION)),
    }
}

fn sort_target(value: i32) -> Result<mvcc::SortTarget, Status> {
    use pb::range_request::SortTarget as P;
    match P::try_from(value) {
        Ok(P::Key) => Ok(mvcc::SortTarget::Key),
        Ok(P::Version) => Ok(mvcc::SortTarget::Version),
        Ok(P::Create) => Ok(mvcc::SortTarget::Create),
        Ok(P::Mod) => Ok(mvcc::SortTarget::Mod),
        Ok(P::Value) => Ok(mvcc::SortTarget::Value),
        Err(_) => Err(Status::invalid_argument(INVALID_SORT_OPTION)),
    }
}

pub fn range_request(r: pb::RangeRequest) -> Result<mvcc::RangeRequest, Status> {
    Ok(mvcc::RangeRequest {
        sort_order: sort_order(r.sort_order)?,
        sort_target: sort_target(r.sort_target)?,
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

pub fn put_request(r: pb::PutRequest) -> mvcc::PutRequest {
    mvcc::PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub fn delete_request(r: pb::DeleteRangeRequest) -> mvcc::DeleteRangeRequest {
    mvcc::DeleteRangeRequest { key: r.key, range_end: r.range_end, prev_kv: r.prev_kv }
}

fn compare(c: pb::Compare) -> Result<mvcc::Compare, Status> {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match R::try_from(c.result) {
        Ok(R::Equal) => mvcc::CompareResult::Equal,
        Ok(R::Greater) => mvcc::CompareResult::Greater,
        Ok(R::Less) => mvcc::CompareResult::Less,
        Ok(R::NotEqual) => mvcc::CompareResult::NotEqual,
        Err(_) => return Err(Status::invalid_argument(format!("unknown compare result {}", c.result))),
    };
    let operand = c.target_union;
    let int = |want: fn(&U) -> Option<i64>| operand.as_ref().and_then(want).unwrap_or(0);
    let target = match T::try_from(c.target) {
        Ok(T::Version) => mvcc::CompareTarget::Version(int(|u| matches_int(u, 4))),
        Ok(T::Create) => mvcc::CompareTarget::Create(int(|u| matches_int(u, 5))),
        Ok(T::Mod) => mvcc::CompareTarget::Mod(int(|u| matches_int(u, 6))),
        Ok(T::Lease) => mvcc::CompareTarget::Lease(int(|u| matches_int(u, 8))),
        Ok(T::Value) => mvcc::CompareTarget::Value(match operand {
            Some(U::Value(v)) => v,
            _ => Vec::new(),
        }),
        Err(_) => return Err(Status::invalid_argument(format!("unknown compare target {}", c.target))),
    };
    Ok(mvcc::Compare { key: c.key, range_end: c.range_end, result, target })
}

/// The integer operand of a `target_union` when it is the variant of field `tag`.
fn matches_int(u: &pb::compare::TargetUnion, tag: u32) -> Option<i64> {
    use pb::compare::TargetUnion as U;
    match (u, tag) {
        (U::Version(v), 4) | (U::CreateRevision(v), 5) | (U::ModRevision(v), 6) | (U::Lease(v), 8) => Some(*v),
        _ => None,
    }
}

fn request_op(op: pb::RequestOp) -> Result<mvcc::RequestOp, Status> {
    use pb::request_op::Request as R;
    match op.request {
        Some(R::RequestRange(r)) => Ok(mvcc::RequestOp::Range(range_request(r)?)),
        Some(R::RequestPut(r)) => Ok(mvcc::RequestOp::Put(put_request(r))),
        Some(R::RequestDeleteRange(r)) => Ok(mvcc::RequestOp::DeleteRange(delete_request(r))),
        Some(R::RequestTxn(r)) => Ok(mvcc::RequestOp::Txn(txn_request(r)?)),
        None => Err(Status::invalid_argument("a txn operation holds no request")),
    }
}

pub fn txn_request(t: pb::TxnRequest) -> Result<mvcc::TxnRequest, Status> {
    Ok(mvcc::TxnRequest {
        compare: t.compare.into_iter().map(compare).collect::<Result<_, _>>()?,
        success: t.success.into_iter().map(request_op).collect::<Result<_, _>>()?,
        failure: t.failure.into_iter().map(request_op).collect::<Result<_, _>>()?,
    })
}

/// Only the revision, as etcd fills the headers of a txn's inner answers; the service fills the
/// top-level header (`Grpc::own_header`).
fn revision_header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader { revision, ..Default::default() })
}

pub fn range_response(r: mvcc::RangeResponse) -> pb::RangeResponse {
    pb::RangeResponse {
        header: revision_header(r.revision),
        kvs: r.kvs.into_iter().map(kv).collect(),
        more: r.more,
        count: r.count,
    }
}

pub fn put_response(r: mvcc::PutResponse) -> pb::PutResponse {
    pb::PutResponse { header: revision_header(r.revision), prev_kv: r.prev_kv.map(kv) }
}

pub fn delete_response(r: mvcc::DeleteRangeResponse) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: revision_header(r.revision),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv).collect(),
    }
}

pub fn txn_response(t: mvcc::TxnResponse) -> pb::TxnResponse {
    use pb::response_op::Response as R;
    let responses = t
        .responses
        .into_iter()
        .map(|op| pb::ResponseOp {
            response: Some(match op {
                mvcc::ResponseOp::Range(r) => R::ResponseRange(range_response(r)),
                mvcc::ResponseOp::Put(r) => R::ResponsePut(put_response(r)),
                mvcc::ResponseOp::DeleteRange(r) => R::ResponseDeleteRange(delete_response(r)),
                mvcc::ResponseOp::Txn(r) => R::ResponseTxn(txn_response(r)),
            }),
        })
        .collect();
    pb::TxnResponse { header: revision_header(t.revision), succeeded: t.succeeded, responses }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_sort_option_is_refused_with_etcds_message() {
        let asked = pb::RangeRequest { key: b"a".to_vec(), sort_order: 7, ..Default::default() };
        let refused = range_request(asked).expect_err("sort order 7 does not exist");
        assert_eq!((refused.code(), refused.message()), (tonic::Code::InvalidArgument, INVALID_SORT_OPTION));
    }

    #[test]
    fn a_compare_takes_the_operand_of_its_target_and_zero_for_another() {
        use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
        let make = |target: T, union: Option<U>| pb::Compare {
            result: R::Equal as i32,
            target: target as i32,
            key: b"k".to_vec(),
            range_end: Vec::new(),
            target_union: union,
        };
        let txn = pb::TxnRequest {
            compare: vec![
                make(T::Mod, Some(U::ModRevision(9))),
                make(T::Mod, Some(U::Version(9))),
                make(T::Value, Some(U::Value(b"v".to_vec()))),
            ],
            ..Default::default()
        };
        let targets: Vec<mvcc::CompareTarget> =
            txn_request(txn).expect("valid").compare.into_iter().map(|c| c.target).collect();
        assert_eq!(
            targets,
            vec![mvcc::CompareTarget::Mod(9), mvcc::CompareTarget::Mod(0), mvcc::CompareTarget::Value(b"v".to_vec())]
        );
    }
}
