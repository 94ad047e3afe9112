//! HTTP with bounded resources, for the client port and the peer port alike: serving
//! (connections, header and body timeouts, request limits) and calling other members (a pooled
//! client that dials from a chosen address, with deadlines and answer limits). Knows nothing of
//! Raft or the store.

pub mod authority;
pub mod client;
pub mod serve;
pub mod tls;
