//! Generates the gRPC server code of etcd's v3 API (issue 15) from `proto/`, with protox (a
//! protobuf compiler in Rust): building kuberaft needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["proto/etcdserverpb/rpc.proto"], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_transport(false).compile_fds(descriptors)?;
    Ok(())
}
