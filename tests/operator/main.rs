//! The operator's tests that need more than its pure parts: reconcile scenarios against a fake
//! API server, the generated objects against the official schemas, and a cluster of real member
//! processes run as the generated StatefulSet says, driven by the real planner and reconcile;
//! the operator run whole (its page and metrics), and `kubectl raft` against real members.

/// The operator's allocator, as in the binary (`src/main.rs`), so that `cost` measures the memory
/// the operator's process would hold.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod chart;
mod cost;
mod fake_api;
#[path = "../support/http.rs"]
mod http_support;
mod plugin;
mod pods;
#[path = "../support/require.rs"]
mod require;
mod s3;
mod scenarios;
mod snapshots;
mod ui;
mod validate;
