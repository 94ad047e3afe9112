//! Leases (issue 14) against real 3-member clusters: grant, attach, keep-alive and revoke
//! through any member; expiry carried out by the leader through the log (every member deletes
//! the key at the same revision, with a DELETE event); a leader failover neither shortens a
//! lease nor lets it live on. Blocks 127.123-124.0.0/16.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::wait_for;
use crate::mvcc_api::{post, started};
use crate::watch_api::RawWatch;
use crate::ELECTION;

fn grant(c: &crate::harness::Cluster, i: usize, ttl: i64) -> i64 {
    let (status, answer) = post(c, i, "/v1/lease/grant", &json!({"TTL": ttl}));
    assert_eq!(status, 200, "{answer}");
    answer["ID"].as_i64().expect("an id")
}

fn keep_alive(c: &crate::harness::Cluster, i: usize, id: i64) -> i64 {
    let (status, answer) = post(c, i, "/v1/lease/keepalive", &json!({"ID": id}));
    assert_eq!(status, 200, "{answer}");
    answer["TTL"].as_i64().expect("a TTL")
}

fn exists(c: &crate::harness::Cluster, i: usize, key: &str) -> bool {
    let (status, answer) = post(c, i, "/v1/range", &json!({"key": key}));
    assert_eq!(status, 200, "{answer}");
    answer["count"] == 1
}

/// Grant through a follower, attach, keep alive, then stop: the key lives while renewed and
/// goes within the TTL plus an election timeout once renewals stop, as one revision on every
/// member, seen by a watch; etcd's refusals; revoke deletes at once.
#[test]
fn a_lease_holds_its_key_while_renewed_and_its_expiry_deletes_it_everywhere() {
    let (c, leader, follower) = started(123);
    let id = grant(&c, follower, 2);
    assert!(id > 0);
    let (status, answer) = post(
        &c,
        follower,
        "/v1/txn",
        &json!({"success": [{"requestPut": {"key": "held", "value": "x", "lease": id}}]}),
    );
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = post(
        &c,
        follower,
        "/v1/txn",
        &json!({"success": [{"requestPut": {"key": "other", "value": "x", "lease": id + 1}}]}),
    );
    assert_eq!(
        (status, answer["error"]["message"].clone()),
        (400, json!("etcdserver: requested lease not found")),
        "{answer}"
    );
    let (_, answer) = post(&c, follower, "/v1/lease/timetolive", &json!({"ID": id, "keys": true}));
    assert_eq!(
        (answer["grantedTTL"].clone(), answer["keys"].clone()),
        (json!(2), json!([{"key": "held"}])),
        "{answer}"
    );
    let mut w = RawWatch::open(&c.members[follower].ip, &json!({"createRequest": {"key": "held"}}));
    assert_eq!(w.next()["created"], true);
    // Renewed every 500 ms for 4 s (twice the TTL): the key stays.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        assert_eq!(keep_alive(&c, follower, id), 2);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(exists(&c, leader, "held"), "renewed, so alive");
    let stopped = Instant::now();
    let deleted = w.next_events();
    let gone_after = stopped.elapsed();
    assert_eq!(deleted["events"][0]["type"], "DELETE", "{deleted}");
    let revision = deleted["header"]["revision"].as_i64().expect("revision");
    assert!(gone_after >= Duration::from_millis(1500), "not before its TTL: {gone_after:?}");
    assert!(
        gone_after <= Duration::from_millis(2000 + 300 + 1500),
        "within TTL + election timeout (+ margin): {gone_after:?}"
    );
    for i in 0..3 {
        wait_for("every member applied the expiry", ELECTION, || {
            (c.status(i)?["revision"].as_i64()? >= revision).then_some(())
        });
        let (_, before) =
            post(&c, i, "/v1/range", &json!({"key": "held", "revision": revision - 1, "serializable": true}));
        let (_, at) = post(&c, i, "/v1/range", &json!({"key": "held", "revision": revision, "serializable": true}));
        assert_eq!((before["count"].clone(), at["count"].clone()), (json!(1), json!(0)), "member {i}");
    }
    assert_eq!(keep_alive(&c, follower, id), 0, "an expired lease answers TTL 0");
    let (_, answer) = post(&c, follower, "/v1/lease/timetolive", &json!({"ID": id}));
    assert_eq!(answer["TTL"], -1, "{answer}");
    // Revoke deletes at once.
    let id = grant(&c, leader, 60);
    post(
        &c,
        leader,
        "/v1/txn",
        &json!({"success": [{"requestPut": {"key": "r1", "value": "x", "lease": id}}, {"requestPut": {"key": "r2", "value": "x", "lease": id}}]}),
    );
    let (status, answer) = post(&c, follower, "/v1/lease/revoke", &json!({"ID": id}));
    assert_eq!(status, 200, "{answer}");
    assert!(!exists(&c, leader, "r1") && !exists(&c, leader, "r2"));
    let (status, answer) = post(&c, follower, "/v1/lease/revoke", &json!({"ID": id}));
    assert_eq!((status, answer["error"]["message"].clone()), (400, json!("etcdserver: requested lease not found")));
    let (_, listed) = post(&c, follower, "/v1/lease/leases", &json!({}));
    assert_eq!(listed["leases"], json!([]), "{listed}");
}

/// A leader dies just after acknowledging a keep-alive: the new leader must not expire the
/// lease before the TTL counted from that acknowledgement, and must expire it within the TTL
/// plus an election timeout once it leads.
#[test]
fn a_failover_neither_shortens_a_lease_nor_keeps_it_alive() {
    let (mut c, leader, _) = started(124);
    let id = grant(&c, leader, 4);
    post(&c, leader, "/v1/txn", &json!({"success": [{"requestPut": {"key": "held", "value": "x", "lease": id}}]}));
    assert_eq!(keep_alive(&c, leader, id), 4);
    let acked = Instant::now();
    c.kill(leader);
    let (new_leader, _) = c.wait_leader(ELECTION);
    assert_ne!(new_leader, leader);
    let led = Instant::now();
    // Alive until the acknowledged TTL (less a margin for this test's own delays) ...
    while acked.elapsed() < Duration::from_millis(3_500) {
        assert!(exists(&c, new_leader, "held"), "expired {:?} after the acknowledgement", acked.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    // ... and gone within TTL + the election timeout after the new leader took over.
    wait_for("the expiry under the new leader", Duration::from_secs(10), || {
        (!exists(&c, new_leader, "held")).then_some(())
    });
    assert!(led.elapsed() <= Duration::from_millis(4_000 + 300 + 1_500), "{:?} after the new leader", led.elapsed());
}
