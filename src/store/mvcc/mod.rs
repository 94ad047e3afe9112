//! etcd v3 multi-version key-value semantics. `types` holds etcd's request and response shapes;
//! `model` is a plain in-memory reference of the semantics (etcd 3.4), kept small and obviously
//! correct so that the on-disk store can be property-tested against it.

pub mod model;
pub mod types;

pub use types::*;
