//! etcd v3 multi-version key-value semantics. `model` is a plain in-memory reference of those
//! semantics (etcd 3.4), kept small and obviously correct so that the on-disk store can be
//! property-tested against it.

pub mod model;
