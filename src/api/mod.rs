//! The client and admin HTTP API (DESIGN.md §4).

pub mod base64;
pub mod server;
pub mod types;
