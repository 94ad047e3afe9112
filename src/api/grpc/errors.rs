//! The gRPC API's errors, with the codes and exact messages of etcd 3.4's `rpctypes`
//! (`etcdserver/api/v3rpc/rpctypes/error.go`): clients match the messages (etcd's Go client
//! turns them back into typed errors), so they are etcd's, word for word.

use tonic::Status;

use crate::node::NodeError;
use crate::store::auth::{AuthError, AuthErrorClass};
use crate::store::mvcc::MvccError;

pub const NO_LEADER: &str = "etcdserver: no leader";
pub const TIMEOUT: &str = "etcdserver: request timed out";
pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
pub const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";

/// etcd's error for a store refusal.
pub fn mvcc_status(e: MvccError) -> Status {
    match e {
        MvccError::Compacted => Status::out_of_range(COMPACTED),
        MvccError::FutureRev => Status::out_of_range(FUTURE_REV),
        MvccError::LeaseNotFound => Status::not_found(e.to_string()),
        MvccError::LeaseExists => Status::failed_precondition(e.to_string()),
        MvccError::LeaseTtlTooLarge => Status::out_of_range(e.to_string()),
        // The rest are etcd's messages already ("etcdserver: key is not provided", ...).
        MvccError::KeyNotFound
        | MvccError::EmptyKey
        | MvccError::ValueProvided
        | MvccError::LeaseProvided
        | MvccError::DuplicateKey
        | MvccError::TooManyOps => Status::invalid_argument(e.to_string()),
    }
}

/// etcd's error for a failure of the member. A write whose outcome is unknown is etcd's
/// "request timed out" (Unavailable), as etcd answers a proposal that did not apply in time;
/// the reason goes to the log, not to the client, whose libraries match the message.
pub fn node_status(e: NodeError) -> Status {
    match e {
        NodeError::NotLeader { .. } => Status::unavailable(NO_LEADER),
        NodeError::Unavailable(reason) => {
            tracing::debug!("gRPC call unavailable: {reason}");
            Status::unavailable(TIMEOUT)
        }
        NodeError::OutcomeUnknown(reason) => {
            tracing::debug!("gRPC call outcome unknown: {reason}");
            Status::unavailable(TIMEOUT)
        }
        NodeError::BadRequest(m) => Status::invalid_argument(m),
        NodeError::NotFound(m) => Status::not_found(m),
        NodeError::Mvcc(e) => mvcc_status(e),
        NodeError::Auth(e) => auth_status(e),
    }
}

/// etcd's error for an auth refusal (`rpctypes`; unmapped ones are `Unknown` with the raw
/// message, as etcd's `togRPCError` leaves them).
pub fn auth_status(e: AuthError) -> Status {
    let message = e.to_string();
    match e.class() {
        AuthErrorClass::InvalidArgument => Status::invalid_argument(message),
        AuthErrorClass::FailedPrecondition => Status::failed_precondition(message),
        AuthErrorClass::PermissionDenied => Status::permission_denied(message),
        AuthErrorClass::Unauthenticated => Status::unauthenticated(message),
        AuthErrorClass::Unknown => Status::unknown(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages and codes clients match, as etcd 3.4's rpctypes has them.
    #[test]
    fn store_refusals_carry_etcds_codes_and_messages() {
        let cases = [
            (MvccError::Compacted, tonic::Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted"),
            (MvccError::FutureRev, tonic::Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision"),
            (MvccError::EmptyKey, tonic::Code::InvalidArgument, "etcdserver: key is not provided"),
            (MvccError::KeyNotFound, tonic::Code::InvalidArgument, "etcdserver: key not found"),
            (MvccError::ValueProvided, tonic::Code::InvalidArgument, "etcdserver: value is provided"),
            (MvccError::LeaseProvided, tonic::Code::InvalidArgument, "etcdserver: lease is provided"),
            (MvccError::TooManyOps, tonic::Code::InvalidArgument, "etcdserver: too many operations in txn request"),
            (MvccError::DuplicateKey, tonic::Code::InvalidArgument, "etcdserver: duplicate key given in txn request"),
            (MvccError::LeaseNotFound, tonic::Code::NotFound, "etcdserver: requested lease not found"),
            (MvccError::LeaseExists, tonic::Code::FailedPrecondition, "etcdserver: lease already exists"),
            (MvccError::LeaseTtlTooLarge, tonic::Code::OutOfRange, "etcdserver: too large lease TTL"),
        ];
        for (e, code, message) in cases {
            let status = mvcc_status(e);
            assert_eq!((status.code(), status.message()), (code, message), "{e:?}");
        }
    }
}
