//! etcd's v3 gRPC API on the client port (issue 15), in the client API's room beside the
//! HTTP endpoints: the code generated from `proto/` by build.rs, and the services on the node.

pub mod convert;

/// etcd's `mvccpb` messages.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's `etcdserverpb` messages and service traits.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
