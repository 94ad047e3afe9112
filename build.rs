//! Generates the gRPC code of etcd's v3 API (issue 15) from `proto/`: the services, and the clients
//! a member forwards calls to its leader with. protox (a
//! protobuf compiler in Rust): building kuberaft needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(
        ["proto/etcdserverpb/rpc.proto", "proto/v3lockpb/v3lock.proto", "proto/v3electionpb/v3election.proto"],
        ["proto"],
    )?;
    tonic_prost_build::configure().build_client(true).build_transport(false).compile_fds(descriptors)?;
    Ok(())
}
