//! Leases (issue 14) against real 3-member clusters: grant, attach, keep-alive and revoke
//! through any member; expiry carried out by the leader through the log (every member deletes
//! the key at the same revision, with a DELETE event); a leader failover neither shortens a
//! lease nor lets it live on; the same requests answered as a real etcd 3.4 answers them, side by
//! side (kuberaft on 127.125, etcd on 127.126). Blocks 127.123-126.0.0/16.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{wait_for, CLIENT_PORT};
use crate::mvcc_api::{post, started};
use crate::watch_api::{b64, num, unb64, RawWatch};
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
    let put_at = answer["header"]["revision"].as_i64().expect("the put's revision");
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
    // From after the put: the follower may not have applied it yet, and a watch from "now"
    // there would begin before it.
    let mut w = RawWatch::open(
        &c.members[follower].ip,
        &json!({"createRequest": {"key": "held", "startRevision": put_at + 1}}),
    );
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

// ----- side by side with a real etcd 3.4 -----

/// kuberaft's `/v1` API, or etcd 3.4's JSON gateway (base64 bytes, snake_case, int64 numbers as
/// strings, zero values left out, a keep-alive's answer under `result`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Store {
    Kuberaft,
    Etcd,
}

/// A key-value, the same way for both stores: key, value, create, mod, version, lease.
type Kv = (String, String, i64, i64, i64, i64);

/// An answer, the same way for both stores: a field an answer leaves out is etcd's zero value;
/// the header only by its revision (ids and terms differ between any two clusters).
#[derive(Clone, Debug, Default, PartialEq)]
struct Answer {
    revision: i64,
    id: i64,
    ttl: i64,
    granted_ttl: i64,
    keys: Vec<String>,
    leases: Vec<i64>,
    count: i64,
    kvs: Vec<Kv>,
}

/// What a request got: an answer, or a refusal by etcd's message and gRPC code. The HTTP status
/// is not compared: kuberaft answers etcd's store errors 400 with a code name of its own
/// (DESIGN.md §4, the `/v1` error shape of docs/COMPATIBILITY.md), etcd's gateway with the status
/// of the gRPC code (404 not found, 412 exists, 400 too large).
#[derive(Clone, Debug, PartialEq)]
enum Reply {
    Ok(Answer),
    Refused {
        message: String,
        code: i64,
    },
    /// A watch's events, flattened: (type, key, mod revision).
    Events(Vec<(String, String, i64)>),
}

impl Reply {
    fn answer(&self) -> &Answer {
        match self {
            Reply::Ok(a) => a,
            other => panic!("not an answer: {other:?}"),
        }
    }
}

/// The gRPC code etcd gives kuberaft's code name (etcd's rpctypes: ErrGRPCLeaseNotFound is
/// NotFound, ErrGRPCLeaseExist FailedPrecondition, ErrGRPCLeaseTTLTooLarge OutOfRange).
fn grpc_code(name: &str) -> i64 {
    match name {
        "lease_not_found" => 5,
        "lease_exists" => 9,
        "lease_ttl_too_large" => 11,
        _ => -1,
    }
}

impl Store {
    fn url(self, ip: &str, op: &str) -> String {
        let path = match (self, op) {
            (Store::Kuberaft, "txn" | "range") => format!("/v1/{op}"),
            (Store::Kuberaft, op) => format!("/v1/lease/{op}"),
            (Store::Etcd, "txn" | "range") => format!("/v3/kv/{op}"),
            (Store::Etcd, "revoke" | "timetolive") => format!("/v3/kv/lease/{op}"),
            (Store::Etcd, op) => format!("/v3/lease/{op}"),
        };
        format!("http://{ip}:{CLIENT_PORT}{path}")
    }

    /// POSTs `body` (the lease requests' bodies are the same for both: `ID`, `TTL`, `keys`).
    fn call(self, http: &reqwest::blocking::Client, ip: &str, op: &str, body: &Value) -> Reply {
        let resp = http.post(self.url(ip, op)).json(body).send().unwrap_or_else(|e| panic!("{self:?} {op}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        // etcd's keep-alive is a stream: one JSON object a line, each answer under `result`.
        let line = text.lines().next().unwrap_or("");
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{self:?} {op} {body}: {status} {e}: {text}"));
        let v = if v["result"].is_object() { v["result"].clone() } else { v };
        if !v["error"].is_null() {
            assert!((400..500).contains(&status), "{self:?} {op} {body}: {status} {text}");
            return match self {
                Store::Kuberaft => {
                    assert_eq!(status, 400, "etcd's store errors are 400 in /v1 (DESIGN.md §4): {text}");
                    Reply::Refused {
                        message: v["error"]["message"].as_str().unwrap_or("").to_string(),
                        code: grpc_code(v["error"]["code"].as_str().unwrap_or("")),
                    }
                }
                Store::Etcd => {
                    Reply::Refused { message: v["message"].as_str().unwrap_or("").to_string(), code: num(&v["code"]) }
                }
            };
        }
        assert_eq!(status, 200, "{self:?} {op} {body}: {text}");
        Reply::Ok(self.normalise(&v))
    }

    fn normalise(self, v: &Value) -> Answer {
        let text = |kv: &Value, field: &str| match self {
            Store::Kuberaft => {
                kv[field].as_str().map(str::to_string).unwrap_or_else(|| unb64(&kv[format!("{field}Base64")]))
            }
            Store::Etcd => unb64(&kv[field]),
        };
        let int = |kv: &Value, camel: &str, snake: &str| num(if self == Store::Etcd { &kv[snake] } else { &kv[camel] });
        let list = |field: &str| v[field].as_array().cloned().unwrap_or_default();
        Answer {
            revision: num(&v["header"]["revision"]),
            id: num(&v["ID"]),
            ttl: num(&v["TTL"]),
            granted_ttl: num(&v["grantedTTL"]),
            keys: list("keys")
                .iter()
                .map(|k| match self {
                    Store::Kuberaft => text(k, "key"),
                    Store::Etcd => unb64(k),
                })
                .collect(),
            leases: list("leases").iter().map(|l| num(&l["ID"])).collect(),
            count: num(&v["count"]),
            kvs: list("kvs")
                .iter()
                .map(|kv| {
                    (
                        text(kv, "key"),
                        text(kv, "value"),
                        int(kv, "createRevision", "create_revision"),
                        int(kv, "modRevision", "mod_revision"),
                        int(kv, "version", "version"),
                        int(kv, "lease", "lease"),
                    )
                })
                .collect(),
        }
    }

    /// A txn putting each key with value "v" under `lease`.
    fn put_body(self, keys: &[&str], lease: i64) -> Value {
        let puts: Vec<Value> = keys
            .iter()
            .map(|k| match self {
                Store::Kuberaft => json!({"requestPut": {"key": k, "value": "v", "lease": lease}}),
                Store::Etcd => json!({"request_put": {"key": b64(k), "value": b64("v"), "lease": lease}}),
            })
            .collect();
        json!({ "success": puts })
    }

    /// A range of the keys from `key` up to `end` (exclusive), at `revision` (0: now).
    fn range_body(self, key: &str, end: &str, revision: i64) -> Value {
        match self {
            Store::Kuberaft => json!({"key": key, "rangeEnd": end, "revision": revision}),
            Store::Etcd => json!({"key": b64(key), "range_end": b64(end), "revision": revision}),
        }
    }

    /// A watch of [key, end) from `start`.
    fn watch(self, ip: &str, key: &str, end: &str, start: i64) -> RawWatch {
        match self {
            Store::Kuberaft => RawWatch::open_all(
                ip,
                "/v1/watch",
                &[json!({"createRequest": {"key": key, "rangeEnd": end, "startRevision": start}})],
            ),
            Store::Etcd => RawWatch::open_all(
                ip,
                "/v3/watch",
                &[json!({"create_request": {"key": b64(key), "range_end": b64(end), "start_revision": start}})],
            ),
        }
    }
}

/// The same lease requests against kuberaft (one member) and a real etcd 3.4 (Debian's, which
/// scripts/test installs), both with a 1 s election timeout so that the minimum TTL is 2 s on
/// both: grants (a chosen id, TTLs below the minimum raised, an existing id and a too large TTL
/// refused), a put with a missing lease refused, time-to-live with keys, keep-alives of a lease
/// and of a missing one, the list, revokes of a missing and of a live lease (its key goes), and an
/// expiry: both delete the lease's keys within TTL + 2 s, in one revision, seen by a watch. The
/// answers are compared field by field: the header by its revision, int64 strings as numbers,
/// base64 as text, refusals by etcd's message and gRPC code. The remaining TTL is compared within
/// a second and, when both were asked less than 900 ms after the grant, exactly: etcd rounds it
/// down, kuberaft (so far) up, and this test fails on that until it is decided.
#[test]
fn leases_answer_as_a_real_etcd_does_side_by_side() {
    if !crate::require::available(Command::new("etcd").arg("--version").output().is_ok(), "etcd 3.4 (`etcd`)") {
        return;
    }
    // etcd's defaults, spelled out on both: a heartbeat of 100 ms, an election timeout of 1 s
    // (kuberaft's is a range; the minimum TTL follows its top: ceil(1.5 × 1 s) = 2 s).
    let mut c = crate::harness::Cluster::new(125, 1);
    c.members[0].extra_args =
        ["--election-timeout-ms", "500-1000", "--heartbeat-interval-ms", "100"].map(String::from).to_vec();
    c.bootstrap();
    c.wait_leader(ELECTION);
    let etcd_ip = "127.126.0.1";
    let _etcd = crate::harness::Etcd::start(etcd_ip, &["--election-timeout", "1000", "--heartbeat-interval", "100"]);
    let mut answers: Vec<Vec<(&str, Reply)>> = Vec::new();
    // Per store: whether its time-to-live of lease 42 came within 900 ms of asking for the grant.
    let mut prompt: Vec<bool> = Vec::new();
    for (store, ip) in [(Store::Kuberaft, c.members[0].ip.clone()), (Store::Etcd, etcd_ip.to_string())] {
        let http = &c.http;
        let call = |op: &str, body: Value| store.call(http, &ip, op, &body);
        let mut got: Vec<(&str, Reply)> = Vec::new();
        // Grants: a chosen id with a TTL below the minimum, and a negative id with a negative TTL
        // (etcd takes any id but 0), both raised to 2 s; the existing id and a TTL over
        // 9,000,000,000 s refused. A revoke of a lease without keys writes no revision.
        let granting = Instant::now();
        got.push(("grant 42, TTL 1", call("grant", json!({"ID": 42, "TTL": 1}))));
        got.push(("grant 42 again", call("grant", json!({"ID": 42, "TTL": 5}))));
        got.push(("grant TTL 9000000001", call("grant", json!({"ID": 43, "TTL": 9_000_000_001_i64}))));
        got.push(("grant -3, TTL -5", call("grant", json!({"ID": -3, "TTL": -5}))));
        got.push(("revoke -3 (no keys)", call("revoke", json!({"ID": -3}))));
        // Puts: with a missing lease refused; with lease 42, revision 2.
        got.push(("put with missing lease 44", call("txn", store.put_body(&["other"], 44))));
        got.push(("put held with lease 42", call("txn", store.put_body(&["held"], 42))));
        got.push(("range held", call("range", store.range_body("held", "", 0))));
        // Time to live: the remaining TTL counts down on each store's own clock, so it is
        // compared within a second, apart from the rest of the answer (and exactly below).
        let mut ttl = call("timetolive", json!({"ID": 42, "keys": true}));
        prompt.push(granting.elapsed() < Duration::from_millis(900));
        let remaining = match &mut ttl {
            Reply::Ok(a) => std::mem::take(&mut a.ttl),
            other => panic!("{store:?} timetolive 42: {other:?}"),
        };
        got.push(("timetolive 42 with keys (TTL aside)", ttl));
        got.push((
            "remaining TTL of 42, to the nearest second",
            Reply::Ok(Answer { ttl: remaining, ..Answer::default() }),
        ));
        got.push(("timetolive missing 44", call("timetolive", json!({"ID": 44, "keys": true}))));
        got.push(("keepalive 42", call("keepalive", json!({"ID": 42}))));
        got.push(("keepalive missing 44", call("keepalive", json!({"ID": 44}))));
        got.push(("leases", call("leases", json!({}))));
        // Revokes: a missing lease refused; lease 42 deletes its key in revision 3.
        got.push(("revoke missing 44", call("revoke", json!({"ID": 44}))));
        got.push(("revoke 42", call("revoke", json!({"ID": 42}))));
        got.push(("range held after the revoke", call("range", store.range_body("held", "", 0))));
        got.push(("timetolive 42 after the revoke", call("timetolive", json!({"ID": 42}))));
        got.push(("keepalive 42 after the revoke", call("keepalive", json!({"ID": 42}))));
        // Expiry: the minimum TTL, two keys, no renewal. Both keys go within TTL + 2 s, not
        // before the TTL less a second (each store rounds and checks on its own clock), in one
        // revision, which a watch opened before sees as two DELETEs.
        got.push(("grant 50, TTL 2", call("grant", json!({"ID": 50, "TTL": 2}))));
        let put = call("txn", store.put_body(&["gone/1", "gone/2"], 50));
        let attached = Instant::now();
        let put_revision = put.answer().revision;
        got.push(("put gone/1 and gone/2 with lease 50", put));
        let mut w = store.watch(&ip, "gone/", "gone0", put_revision);
        let mut deleted_after = None;
        while attached.elapsed() < Duration::from_secs(2 + 2) {
            if call("range", store.range_body("gone/", "gone0", 0)).answer().count == 0 {
                deleted_after = Some(attached.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let deleted_after = deleted_after.unwrap_or_else(|| {
            panic!("{store:?}: the keys of lease 50 are still there {:?} after", attached.elapsed())
        });
        assert!(deleted_after >= Duration::from_secs(1), "{store:?}: expired before its TTL: {deleted_after:?}");
        eprintln!("{store:?}: lease 50 (TTL 2 s) deleted its keys {deleted_after:?} after the put");
        got.push(("range gone/ after the expiry", call("range", store.range_body("gone/", "gone0", 0))));
        got.push(("range gone/ at the put", call("range", store.range_body("gone/", "gone0", put_revision))));
        got.push(("timetolive 50 after the expiry", call("timetolive", json!({"ID": 50, "keys": true}))));
        got.push(("keepalive 50 after the expiry", call("keepalive", json!({"ID": 50}))));
        got.push(("leases at the end", call("leases", json!({}))));
        // The watch: etcd may send several revisions in one answer, kuberaft one answer per
        // revision, so the events are compared flattened, as (type, key, mod revision).
        let mut events: Vec<(String, String, i64)> = Vec::new();
        let mut created = false;
        for _ in 0..10 {
            if events.len() >= 4 {
                break;
            }
            let line = w.next();
            let line = if line["result"].is_object() { line["result"].clone() } else { line };
            created |= line["created"] == true;
            for e in line["events"].as_array().cloned().unwrap_or_default() {
                let kv = &e["kv"];
                let key = match store {
                    Store::Kuberaft => {
                        kv["key"].as_str().map(str::to_string).unwrap_or_else(|| unb64(&kv["keyBase64"]))
                    }
                    Store::Etcd => unb64(&kv["key"]),
                };
                let m = num(if store == Store::Etcd { &kv["mod_revision"] } else { &kv["modRevision"] });
                events.push((e["type"].as_str().unwrap_or("PUT").to_string(), key, m));
            }
        }
        assert!(created, "{store:?}: the watch was created");
        let after = w.next_within(Duration::from_millis(500));
        assert!(after.as_ref().is_none_or(|l| l["events"].is_null()), "{store:?}: nothing more: {after:?}");
        got.push(("watch of gone/ from the put", Reply::Events(events)));
        answers.push(got);
    }
    let (ours, etcds) = (&answers[0], &answers[1]);
    let mut differences = Vec::new();
    for ((what, a), (_, b)) in ours.iter().zip(etcds) {
        let same = match (what.starts_with("remaining TTL"), a, b) {
            (true, Reply::Ok(a), Reply::Ok(b)) => (a.ttl - b.ttl).abs() <= 1 && a.ttl > 0,
            _ => a == b,
        };
        if !same {
            differences.push(format!("{what}:\n  kuberaft {a:?}\n  etcd     {b:?}"));
        }
    }
    assert_eq!(ours.len(), etcds.len());
    // The remaining TTL exactly: etcd 3.4 answers int64(lease.Remaining().Seconds()), whole
    // seconds rounded down, so a lease of 2 s asked less than a second after its grant shows 1 on
    // both stores when they round alike. Only when both answers came that soon.
    let remaining = |answers: &[(&str, Reply)]| {
        answers.iter().find(|(w, _)| w.starts_with("remaining TTL")).map(|(_, r)| r.answer().ttl).expect("asked")
    };
    let (our_remaining, etcd_remaining) = (remaining(ours), remaining(etcds));
    if prompt.iter().all(|p| *p) {
        assert_eq!(etcd_remaining, 1, "etcd rounds the remaining 1.x s of lease 42 down");
        if our_remaining != etcd_remaining {
            differences.push(format!(
                "DIFFERENCE remaining TTL of lease 42 (granted 2 s) less than 900 ms after its grant, rounded:\n  \
                 kuberaft {our_remaining} (Lessor::remaining_s)\n  \
                 etcd     {etcd_remaining} (int64(Remaining().Seconds()) rounds down)"
            ));
        }
    } else {
        eprintln!("the remaining TTLs came late ({prompt:?}): compared within a second only");
    }
    // What the two agreed on is what etcd answers (as checked by hand), not a shared mistake.
    let etcd = |what: &str| etcds.iter().find(|(w, _)| *w == what).map(|(_, r)| r.clone()).expect(what);
    assert_eq!(etcd("grant 42, TTL 1").answer().ttl, 2, "the minimum TTL of a 1 s election timeout");
    assert_eq!(
        etcd("revoke missing 44"),
        Reply::Refused { message: "etcdserver: requested lease not found".into(), code: 5 }
    );
    assert_eq!(
        etcd("watch of gone/ from the put"),
        Reply::Events(
            [("PUT", "gone/1", 4), ("PUT", "gone/2", 4), ("DELETE", "gone/1", 5), ("DELETE", "gone/2", 5)]
                .map(|(t, k, m)| (t.to_string(), k.to_string(), m))
                .to_vec()
        ),
        "the expiry is one revision, right after the put"
    );
    assert!(differences.is_empty(), "kuberaft answers differently from etcd 3.4:\n{}", differences.join("\n"));
}
