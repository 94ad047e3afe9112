//! The Kubernetes operator (DESIGN.md §6): it turns a `RaftCluster` into a running cluster, changes
//! Raft membership one safe step at a time while the cluster scales, and reports the leader and
//! the term in the resource's status.
//!
//! The operator is built from pure parts around one thin controller, so that most of it is tested
//! without an API server: the [`crd`] types of `RaftCluster` (the CRD that `kuberaft crd` prints
//! is derived from them), the membership [`planner`]: what the next step is, and what the
//! cluster's health is, from one observation, and the [`builders`] of the owned objects. Around
//! them, [`reconcile`] observes, takes the planned step and writes the status, and [`controller`]
//! is the process: watches, leader election, metrics, shutdown. What the operator remembers of
//! each cluster for its metrics and its page ([`ui`]) is in [`book`].
//!
//! Facts that several parts share (member names, the replica range) live here. It talks to
//! members only through `crate::client` (their HTTP API) and shares only `crate::base` with
//! them (ids, exit codes, wire types): never the node, the store or the core.

pub mod auth;
pub mod backup;
pub mod book;
pub mod builders;
pub mod cache;
pub mod certs;
pub mod controller;
pub mod crd;
pub mod planner;
pub mod reconcile;
pub mod recovery;
pub mod ui;

/// The smallest and largest `spec.replicas` a `RaftCluster` accepts (the CRD schema says the same).
pub const MIN_REPLICAS: u32 = 1;
pub const MAX_REPLICAS: u32 = 9;

/// The name of the member (and of its pod, which the StatefulSet names) at `ordinal`: `etcd-0`.
pub fn member_name(cluster: &str, ordinal: u32) -> String {
    format!("{cluster}-{ordinal}")
}

/// The ordinal of a member name of this cluster (`etcd-2` → 2); `None` for any other name,
/// including `etcd-02`, which no StatefulSet pod can have.
pub fn member_ordinal(cluster: &str, name: &str) -> Option<u32> {
    let suffix = name.strip_prefix(cluster)?.strip_prefix('-')?;
    let ordinal: u32 = suffix.parse().ok()?;
    (ordinal.to_string() == suffix).then_some(ordinal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_round_trip_through_ordinals() {
        assert_eq!(member_name("etcd", 4), "etcd-4");
        assert_eq!(member_ordinal("etcd", "etcd-4"), Some(4));
        assert_eq!(member_ordinal("my-etcd", "my-etcd-0"), Some(0));
        for other in ["etcd", "etcd-", "etcd-x", "etcd-01", "etcd-+1", "etcd--1", "other-1", "etcd-1-2"] {
            assert_eq!(member_ordinal("etcd", other), None, "{other}");
        }
    }
}
