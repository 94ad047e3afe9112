//! kuberaft: a Kubernetes operator with its own bundled Raft key-value store.

pub mod check;
pub mod raft;
