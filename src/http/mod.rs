//! Serving HTTP with bounded resources (connections, header and body timeouts, request limits),
//! for the client port and the peer port alike. Knows nothing of Raft or the store.

pub mod serve;
