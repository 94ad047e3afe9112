//! etcd v3 multi-version key-value semantics. `types` holds etcd's request and response shapes;
//! `check` etcd's pure request checks; `model` is a plain in-memory reference of the semantics
//! (etcd 3.4), kept small and obviously correct; `engine` is the store on disk (redb) that is
//! property-tested against it, and `snapshot` streams an engine's state out and in.

pub mod check;
mod coalesce;
pub mod engine;
#[cfg(test)]
mod engine_tests;
pub mod events;
#[cfg(test)]
mod history_script;
mod index;
pub mod model;
pub mod snapshot;
pub mod types;

pub use engine::{Batch, HashKv, MvccStore, ReadError, ReadView};
pub use events::{EventBounds, EventsPage, HistoryPos};
pub use snapshot::{ChunkReader, SnapshotReader};
pub use types::*;
