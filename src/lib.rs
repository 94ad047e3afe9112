//! kuberaft: a Kubernetes operator with its own bundled Raft key-value store.

pub mod api;
pub mod base;
pub mod bench;
pub mod check;
pub mod cli;
pub mod client;
pub mod http;
pub mod node;
pub mod operator;
pub mod process;
pub mod raft;
pub mod store;

#[cfg(test)]
mod layering;
