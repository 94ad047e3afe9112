//! The client and admin HTTP API on the client port (DESIGN.md §4): routes, handlers, errors,
//! forwarding to the leader. Talks to the member only through `crate::node`'s handle (it never
//! builds a log command or touches the core); its JSON shapes live in `crate::base::wire`,
//! which the client shares.

pub mod auth;
pub mod grpc;
pub mod kv;
pub mod lease;
pub mod server;
pub mod snapshot;
pub mod ui;
pub mod users;
pub mod watch;
