//! The client and admin HTTP API (DESIGN.md §4).

pub mod types;
pub mod server;
