//! The etcd store over HTTP and the CLI (issue 13 item 7), against real 3-member clusters:
//! ranges with every option and at past revisions, txns with every compare target, a transfer
//! between two keys, the refusals etcd makes, compaction, and `kuberaft kv|txn|compact`.
//! Blocks 127.113-115.0.0/16. Revisions follow etcd: an empty store is at 1, the first write 2.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{wait_for, Cluster};
use crate::ELECTION;

/// (status, JSON body) of a POST with a JSON body to member `i`.
pub fn post(c: &Cluster, i: usize, path: &str, body: &Value) -> (u16, Value) {
    let url = format!("{}{path}", c.members[i].client_url());
    let resp = c.http.post(url).json(body).send().unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path} answered {status}, not JSON ({e}): {text}")),
    )
}

/// A range through member `i` that must succeed.
fn range(c: &Cluster, i: usize, body: Value) -> Value {
    let (status, answer) = post(c, i, "/v1/range", &body);
    assert_eq!(status, 200, "range {body}: {answer}");
    answer
}

/// A txn through member `i` that must apply.
fn txn(c: &Cluster, i: usize, body: Value) -> Value {
    let (status, answer) = post(c, i, "/v1/txn", &body);
    assert_eq!(status, 200, "txn {body}: {answer}");
    answer
}

/// The keys of a range answer, in order.
fn keys(answer: &Value) -> Vec<String> {
    answer["kvs"]
        .as_array()
        .map(|kvs| kvs.iter().map(|kv| kv["key"].as_str().unwrap_or("?").to_string()).collect())
        .unwrap_or_default()
}

/// The values of a range answer, in order.
fn values(answer: &Value) -> Vec<String> {
    answer["kvs"]
        .as_array()
        .map(|kvs| kvs.iter().map(|kv| kv["value"].as_str().unwrap_or("?").to_string()).collect())
        .unwrap_or_default()
}

/// An API error: its status, code and message must be these.
fn assert_error(got: (u16, Value), status: u16, code: &str, message: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert_eq!(got.1["error"]["message"], message, "{}", got.1);
}

fn store_revision(c: &Cluster, i: usize) -> u64 {
    c.status(i).and_then(|s| s["revision"].as_u64()).expect("a status with a revision")
}

/// (status, body) of a GET.
fn get(c: &Cluster, i: usize, path_and_query: &str) -> (u16, String) {
    let resp = c.http.get(format!("{}{path_and_query}", c.members[i].client_url())).send().expect("GET");
    (resp.status().as_u16(), resp.text().unwrap_or_default())
}

/// A 3-member cluster with a leader: (cluster, leader, a follower).
pub fn started(net: u8) -> (Cluster, usize, usize) {
    let mut c = Cluster::new(net, 3);
    c.bootstrap();
    let (leader, _) = c.wait_leader(ELECTION);
    (c, leader, (leader + 1) % 3)
}

/// Ranges through a follower (forwarded to the leader, linearizable) with every option of
/// etcd's RangeRequest, at the current and at past revisions; the list and single-key GETs
/// with theirs; binary keys in base64; compaction and the errors of compacted and future
/// revisions, with etcd's messages.
#[test]
fn ranges_take_every_etcd_option_read_the_past_and_refuse_compacted_and_future_revisions() {
    let (c, leader, follower) = started(113);
    assert_eq!(store_revision(&c, leader), 1, "an empty store is at revision 1, as etcd's");
    let writes = [("a", "1"), ("b", "22"), ("c", "333"), ("a", "4444")];
    for (n, (key, value)) in writes.iter().enumerate() {
        assert_eq!(c.put_ok(follower, key, value), n as u64 + 2, "the first write is revision 2");
    }
    let deleted = c.http.delete(format!("{}/v1/kv/b", c.members[follower].client_url())).send().expect("delete");
    assert_eq!(deleted.json::<Value>().expect("JSON")["revision"], 6);
    assert_eq!(c.put_ok(follower, "d", "55555"), 7);
    assert_eq!(c.put_ok(follower, "b", "0"), 8, "b is created again");
    // Now: a (created 2, mod 5, version 2), b (8, 8, 1), c (4, 4, 1), d (7, 7, 1).

    let all = range(&c, follower, json!({"key": "", "prefix": true}));
    assert_eq!(keys(&all), ["a", "b", "c", "d"]);
    assert_eq!(
        (all["count"].clone(), all["more"].clone(), all["header"]["revision"].clone()),
        (json!(4), json!(false), json!(8))
    );
    let header = &all["header"];
    assert!(
        header["clusterId"].is_string() && header["memberId"].is_string() && header["raftTerm"].as_u64() >= Some(2),
        "{header}"
    );
    assert_eq!(
        range(&c, follower, json!({"key": "a"}))["kvs"][0],
        json!({"key": "a", "createRevision": 2, "modRevision": 5, "version": 2, "value": "4444", "lease": 0})
    );
    let page = range(&c, follower, json!({"key": "", "prefix": true, "limit": 2}));
    assert_eq!(
        (keys(&page), page["more"].clone(), page["count"].clone()),
        (vec!["a".to_string(), "b".into()], json!(true), json!(4))
    );

    // The past.
    let at4 = range(&c, follower, json!({"key": "a", "rangeEnd": "z", "revision": 4}));
    assert_eq!(
        (keys(&at4), values(&at4)),
        (vec!["a".into(), "b".into(), "c".into()], vec!["1".into(), "22".into(), "333".into()])
    );
    assert_eq!(
        (at4["count"].clone(), at4["header"]["revision"].clone()),
        (json!(3), json!(8)),
        "the header is the current revision"
    );
    assert_eq!(
        keys(&range(&c, follower, json!({"key": "a", "rangeEnd": "z", "revision": 6}))),
        ["a", "c"],
        "b deleted at 6"
    );

    // Keys only, count only.
    let only_keys = range(&c, follower, json!({"key": "a", "rangeEnd": "z", "keysOnly": true}));
    assert_eq!(
        (keys(&only_keys), values(&only_keys)),
        (vec!["a".into(), "b".into(), "c".into(), "d".into()], vec![String::new(); 4])
    );
    let counted = range(&c, follower, json!({"key": "a", "rangeEnd": "z", "countOnly": true}));
    assert_eq!((keys(&counted).len(), counted["count"].clone()), (0, json!(4)));

    // Every sort target, both orders; ties stay in key order.
    let sorted = |target: &str, order: &str| {
        keys(&range(&c, follower, json!({"key": "", "prefix": true, "sortTarget": target, "sortOrder": order})))
    };
    assert_eq!(sorted("VALUE", "DESCEND"), ["d", "a", "c", "b"]);
    assert_eq!(sorted("MOD", "ASCEND"), ["c", "a", "d", "b"]);
    assert_eq!(sorted("CREATE", "DESCEND"), ["b", "d", "c", "a"]);
    assert_eq!(sorted("VERSION", "ASCEND"), ["b", "c", "d", "a"]);
    assert_eq!(sorted("KEY", "DESCEND"), ["d", "c", "b", "a"]);
    // etcd's snake_case names say the same.
    assert_eq!(
        keys(&range(
            &c,
            follower,
            json!({"key": "a", "range_end": "z", "sort_target": "MOD", "sort_order": "DESCEND", "limit": 1})
        )),
        ["b"]
    );

    // Revision filters: applied after counting, as etcd does.
    let by_mod = range(&c, follower, json!({"key": "", "prefix": true, "minModRevision": 5, "maxModRevision": 7}));
    assert_eq!((keys(&by_mod), by_mod["count"].clone()), (vec!["a".to_string(), "d".into()], json!(4)));
    assert_eq!(
        keys(&range(&c, follower, json!({"key": "", "prefix": true, "minCreateRevision": 4, "maxCreateRevision": 7}))),
        ["c", "d"]
    );

    // From a key on; an explicit end.
    assert_eq!(keys(&range(&c, follower, json!({"key": "c", "fromKey": true}))), ["c", "d"]);
    assert_eq!(keys(&range(&c, follower, json!({"key": "a", "rangeEnd": "c"}))), ["a", "b"]);

    // Serializable: the follower answers from its own state (it catches up within a bound).
    wait_for("the follower's serializable range sees revision 8", ELECTION, || {
        let local = range(&c, follower, json!({"key": "", "prefix": true, "serializable": true}));
        (local["header"]["revision"] == 8 && keys(&local) == ["a", "b", "c", "d"]).then_some(())
    });
    let (status, local) = post(&c, follower, "/v1/range?consistency=serializable", &json!({"key": "d"}));
    assert_eq!((status, values(&local)), (200, vec!["55555".to_string()]));

    // Errors, with etcd's messages.
    let future = "mvcc: required revision is a future revision";
    assert_error(post(&c, follower, "/v1/range", &json!({"key": "a", "revision": 9})), 400, "future_revision", future);
    assert_error(
        post(&c, follower, "/v1/range", &json!({"key": ""})),
        400,
        "empty_key",
        "etcdserver: key is not provided",
    );
    let (status, answer) = post(&c, follower, "/v1/range", &json!({"key": "a", "limt": 1}));
    assert_eq!((status, answer["error"]["code"].clone()), (400, json!("bad_request")), "{answer}");
    let (status, answer) = post(&c, follower, "/v1/range", &json!({"key": "a", "rangeEnd": "b", "prefix": true}));
    assert_eq!((status, answer["error"]["code"].clone()), (400, json!("bad_request")), "{answer}");

    // The single-key GET at a revision.
    assert_eq!(get(&c, follower, "/v1/kv/a?rev=2"), (200, "1".to_string()));
    assert_eq!(get(&c, follower, "/v1/kv/a?rev=4&consistency=serializable"), (200, "1".to_string()));
    assert_eq!(get(&c, follower, "/v1/kv/b?rev=4"), (200, "22".to_string()));
    assert_eq!(get(&c, follower, "/v1/kv/b?rev=6").0, 404, "b did not exist at 6");
    assert_eq!(get(&c, follower, "/v1/kv/a"), (200, "4444".to_string()));
    let past = c.http.get(format!("{}/v1/kv/a?rev=3", c.members[follower].client_url())).send().expect("GET");
    assert_eq!(past.headers()["x-kuberaft-mod-revision"], "2");
    assert_eq!(past.headers()["x-kuberaft-revision"], "8");
    let (status, body) = get(&c, follower, "/v1/kv/a?rev=9");
    assert_eq!(status, 400);
    assert_eq!(serde_json::from_str::<Value>(&body).expect("JSON")["error"]["code"], "future_revision");

    // The list's options.
    let list = |query: &str| -> Value {
        let (status, body) = get(&c, follower, &format!("/v1/kv?{query}"));
        assert_eq!(status, 200, "{query}: {body}");
        serde_json::from_str(&body).expect("a list")
    };
    let listed = list("sortBy=value&sortOrder=descend&keysOnly=true");
    assert_eq!(
        (keys(&listed), values(&listed), listed["count"].clone()),
        (vec!["d".into(), "a".into(), "c".into(), "b".into()], vec![String::new(); 4], json!(4))
    );
    let listed = list("rev=4&limit=2");
    assert_eq!(
        (keys(&listed), values(&listed), listed["more"].clone(), listed["count"].clone()),
        (vec!["a".into(), "b".into()], vec!["MQ==".into(), "MjI=".into()], json!(true), json!(3))
    );
    assert_eq!(keys(&list("prefix=c&fromKey=true")), ["c", "d"]);
    assert_eq!(keys(&list("sortBy=create")), ["a", "c", "d", "b"], "ascending unless told");
    assert_eq!(keys(&list("prefix=a&startAfter=a")), Vec::<String>::new());

    // A binary key and value, written and read back in base64.
    let put = txn(&c, follower, json!({"success": [{"requestPut": {"keyBase64": "AP8=", "valueBase64": "AQI="}}]}));
    assert_eq!(put["header"]["revision"], 9);
    let binary = range(&c, follower, json!({"keyBase64": "AP8="}));
    assert_eq!(
        (binary["kvs"][0]["keyBase64"].clone(), binary["kvs"][0]["valueBase64"].clone()),
        (json!("AP8="), json!("AQI="))
    );
    assert!(binary["kvs"][0].get("key").is_none(), "{binary}");
    let listed = list("limit=1");
    assert_eq!(
        (listed["kvs"][0]["keyBase64"].clone(), listed["kvs"][0]["value"].clone()),
        (json!("AP8="), json!("AQI="))
    );

    // Compaction, asked of a follower: reads below it fail, at it and above they do not.
    let (status, compacted) = post(&c, follower, "/v1/compact", &json!({"revision": 6}));
    assert_eq!((status, compacted["header"]["revision"].clone()), (200, json!(9)), "{compacted}");
    let gone = "mvcc: required revision has been compacted";
    for reader in 0..3 {
        let (status, answer) = wait_for("the compaction applied on every member", ELECTION, || {
            let answer = post(&c, reader, "/v1/range?consistency=serializable", &json!({"key": "a", "revision": 4}));
            (answer.0 == 400).then_some(answer)
        });
        assert_eq!(
            (status, answer["error"]["code"].clone(), answer["error"]["message"].clone()),
            (400, json!("compacted"), json!(gone))
        );
        assert_eq!(answer["error"]["compactRevision"], 6, "{answer}");
    }
    assert_eq!(keys(&range(&c, follower, json!({"key": "a", "rangeEnd": "z", "revision": 6}))), ["a", "c"]);
    let (status, body) = get(&c, leader, "/v1/kv/a?rev=5");
    assert_eq!(status, 400);
    assert_eq!(serde_json::from_str::<Value>(&body).expect("JSON")["error"]["code"], "compacted");
    assert_eq!(get(&c, leader, "/v1/kv/a?rev=6"), (200, "4444".to_string()));
    assert_eq!(get(&c, leader, "/v1/kv?rev=5").0, 400);
    assert_error(post(&c, follower, "/v1/compact", &json!({"revision": 6})), 400, "compacted", gone);
    assert_error(post(&c, follower, "/v1/compact", &json!({"revision": 100})), 400, "future_revision", future);
    let (status, answer) = post(&c, follower, "/v1/compact", &json!({"rev": 7}));
    assert_eq!((status, answer["error"]["code"].clone()), (400, json!("bad_request")), "{answer}");
    assert_eq!(store_revision(&c, leader), 9, "compaction writes no revision");
}

/// Txns through a follower (applied by the leader, as one revision): compares on VALUE,
/// VERSION, CREATE and MOD pick the branch; a transfer between two keys moves both or
/// neither and conserves the total; nested txns, previous values, deletes over a range,
/// `ignoreValue`. What etcd refuses is refused with its message, changing nothing.
#[test]
fn txns_compare_every_target_transfer_atomically_and_refuse_what_etcd_refuses() {
    let (c, leader, follower) = started(114);
    let url = format!("{}/v1/txn", c.members[follower].client_url());
    let setup = json!({"success": [
        {"requestPut": {"key": "acct/a", "value": "100"}},
        {"requestPut": {"key": "acct/b", "value": "0"}}
    ]});
    let resp = c.http.post(&url).json(&setup).send().expect("txn");
    assert_eq!(
        resp.headers().get("x-kuberaft-leader").map(|v| v.to_str().unwrap_or("").to_string()),
        Some(c.members[leader].client_url()),
        "the follower forwarded it to the leader"
    );
    let answer: Value = resp.json().expect("JSON");
    assert_eq!(
        (answer["succeeded"].clone(), answer["header"]["revision"].clone()),
        (json!(true), json!(2)),
        "{answer}"
    );
    assert_eq!(answer["responses"][1]["responsePut"]["header"]["revision"], 2, "one revision for the whole txn");
    assert_eq!(answer["header"]["memberId"], c.status(leader).expect("status")["id"], "the leader answered");
    assert_eq!(store_revision(&c, leader), 2);

    // One compare per target, each way. An absent key has version, create and mod 0.
    let cases = [
        (json!({"key": "acct/a", "target": "VALUE", "result": "EQUAL", "value": "100"}), true),
        (json!({"key": "acct/a", "target": "VALUE", "result": "GREATER", "value": "2"}), false),
        (json!({"key": "acct/a", "target": "VALUE", "result": "EQUAL", "valueBase64": "MTAw"}), true),
        (json!({"key": "acct/a", "target": "VERSION", "result": "EQUAL", "version": 1}), true),
        (json!({"key": "acct/a", "target": "VERSION", "result": "GREATER", "version": 1}), false),
        (json!({"key": "acct/", "prefix": true, "target": "CREATE", "result": "EQUAL", "createRevision": 2}), true),
        (json!({"key": "acct/a", "target": "CREATE", "result": "LESS", "createRevision": 2}), false),
        (json!({"key": "absent", "target": "CREATE", "result": "EQUAL", "createRevision": 0}), true),
        (json!({"key": "acct/b", "target": "MOD", "result": "EQUAL", "modRevision": 2}), true),
        (json!({"key": "acct/b", "target": "MOD", "result": "NOT_EQUAL", "modRevision": 2}), false),
        (json!({"key": "absent", "target": "VALUE", "result": "NOT_EQUAL", "value": "x"}), false),
    ];
    for (compare, holds) in cases {
        let answer = txn(
            &c,
            follower,
            json!({
                "compare": [compare.clone()],
                "success": [{"requestRange": {"key": "acct/a"}}],
                "failure": [{"requestRange": {"key": "acct/b"}}]
            }),
        );
        assert_eq!(answer["succeeded"], holds, "{compare}: {answer}");
        let read = &answer["responses"][0]["responseRange"];
        assert_eq!(keys(read), [if holds { "acct/a" } else { "acct/b" }], "{compare}: {answer}");
        assert_eq!(answer["header"]["revision"], 2, "a read-only txn writes no revision");
    }

    // A transfer of 30 from a to b, guarded by both keys' mod revisions.
    let transfer = |from_mod: i64, to_mod: i64, a: &str, b: &str| {
        json!({
            "compare": [
                {"key": "acct/a", "target": "MOD", "result": "EQUAL", "modRevision": from_mod},
                {"key": "acct/b", "target": "MOD", "result": "EQUAL", "modRevision": to_mod}
            ],
            "success": [
                {"requestPut": {"key": "acct/a", "value": a, "prevKv": true}},
                {"requestPut": {"key": "acct/b", "value": b}}
            ],
            "failure": [{"requestRange": {"key": "acct/", "prefix": true}}]
        })
    };
    let moved = txn(&c, follower, transfer(2, 2, "70", "30"));
    assert_eq!((moved["succeeded"].clone(), moved["header"]["revision"].clone()), (json!(true), json!(3)), "{moved}");
    assert_eq!(moved["responses"][0]["responsePut"]["prevKv"]["value"], "100");
    let accounts = range(&c, leader, json!({"key": "acct/", "prefix": true}));
    assert_eq!(values(&accounts), ["70", "30"]);
    for kv in accounts["kvs"].as_array().expect("kvs") {
        assert_eq!(kv["modRevision"], 3, "both keys changed in the one revision: {accounts}");
    }
    // The same transfer again, with the old revisions: refused by its compares, nothing moves.
    let stale = txn(&c, follower, transfer(2, 2, "40", "60"));
    assert_eq!((stale["succeeded"].clone(), stale["header"]["revision"].clone()), (json!(false), json!(3)), "{stale}");
    assert_eq!(values(&stale["responses"][0]["responseRange"]), ["70", "30"]);
    let total: i64 = values(&range(&c, follower, json!({"key": "acct/", "prefix": true})))
        .iter()
        .map(|v| v.parse::<i64>().expect("a number"))
        .sum();
    assert_eq!(total, 100, "the transfer conserved the total");

    // Create-if-absent (CREATE == 0), as a lock.
    let lock = json!({
        "compare": [{"key": "lock", "target": "CREATE", "result": "EQUAL", "createRevision": 0}],
        "success": [{"requestPut": {"key": "lock", "value": "me"}}],
        "failure": [{"requestRange": {"key": "lock"}}]
    });
    assert_eq!(txn(&c, follower, lock.clone())["succeeded"], true);
    let second = txn(&c, leader, lock);
    assert_eq!(
        (second["succeeded"].clone(), values(&second["responses"][0]["responseRange"])),
        (json!(false), vec!["me".to_string()])
    );

    // A nested txn, reads that see the txn's own earlier writes, ignoreValue.
    let nested = txn(
        &c,
        follower,
        json!({"success": [
            {"requestPut": {"key": "tmp/1", "value": "x"}},
            {"requestTxn": {
                "compare": [{"key": "acct/a", "target": "VALUE", "result": "EQUAL", "value": "70"}],
                "success": [{"requestPut": {"key": "tmp/2", "value": "y"}}, {"requestRange": {"key": "tmp/", "prefix": true}}]
            }},
            {"requestPut": {"key": "acct/a", "ignoreValue": true}}
        ]}),
    );
    let revision = nested["header"]["revision"].as_i64().expect("revision");
    assert_eq!(revision, 5, "{nested}");
    let inner = &nested["responses"][1]["responseTxn"];
    assert_eq!(
        (inner["succeeded"].clone(), keys(&inner["responses"][1]["responseRange"])),
        (json!(true), vec!["tmp/1".to_string(), "tmp/2".into()])
    );
    let a = range(&c, follower, json!({"key": "acct/a"}));
    assert_eq!(
        (values(&a), a["kvs"][0]["version"].clone(), a["kvs"][0]["modRevision"].clone()),
        (vec!["70".to_string()], json!(3), json!(5))
    );

    // A delete over a range with its previous values.
    let removed = txn(
        &c,
        follower,
        json!({"success": [{"requestDeleteRange": {"key": "tmp/", "prefix": true, "prevKv": true}}]}),
    );
    let delete = &removed["responses"][0]["responseDeleteRange"];
    assert_eq!(
        (delete["deleted"].clone(), keys(&json!({"kvs": delete["prevKvs"]}))),
        (json!(2), vec!["tmp/1".to_string(), "tmp/2".into()])
    );
    assert_eq!(removed["header"]["revision"], 6);

    // Refusals: etcd's codes and messages, the store unchanged, through either member.
    let before = store_revision(&c, leader);
    let refusals = [
        (
            json!({"success": [{"requestPut": {"key": "x", "value": "1"}}, {"requestPut": {"key": "x", "value": "2"}}]}),
            "duplicate_key",
            "etcdserver: duplicate key given in txn request",
        ),
        (
            json!({"success": [{"requestDeleteRange": {"key": "acct/", "prefix": true}}, {"requestPut": {"key": "acct/a", "value": "1"}}]}),
            "duplicate_key",
            "etcdserver: duplicate key given in txn request",
        ),
        (
            json!({"success": (0..129).map(|i| json!({"requestPut": {"key": format!("many/{i}"), "value": "v"}})).collect::<Vec<_>>()}),
            "too_many_ops",
            "etcdserver: too many operations in txn request",
        ),
        (
            json!({"success": [{"requestPut": {"key": "", "value": "1"}}]}),
            "empty_key",
            "etcdserver: key is not provided",
        ),
        (
            json!({"success": [{"requestPut": {"key": "acct/a", "value": "1", "ignoreValue": true}}]}),
            "value_provided",
            "etcdserver: value is provided",
        ),
    ];
    // Those etcd refuses before its log (and bodies that are not txns at all) never reach the
    // log either: the commit index stays where it was.
    let commit_index = || c.status(leader).and_then(|s| s["commitIndex"].as_u64()).expect("a commit index");
    // The leader's own entries (a late member's `Seen`, a client URL published) would move it too.
    c.wait_settled(leader, Duration::from_secs(20));
    let committed = commit_index();
    for (body, code, message) in refusals {
        for via in [follower, leader] {
            assert_error(post(&c, via, "/v1/txn", &body), 400, code, message);
        }
    }
    for body in
        [json!({"succes": []}), json!({"success": [{"requestPut": {"key": "a", "valueBase64": "%%%"}}]}), json!([1])]
    {
        let (status, answer) = post(&c, follower, "/v1/txn", &body);
        assert_eq!((status, answer["error"]["code"].clone()), (400, json!("bad_request")), "{body}: {answer}");
    }
    let raw = c.http.post(&url).body("{").send().expect("txn");
    assert_eq!(raw.status().as_u16(), 400);
    assert_eq!(commit_index(), committed, "nothing refused before the log reached it");
    // Those etcd finds only when it applies: refused all the same, with no revision written.
    let applied_refusals = [
        (
            json!({"success": [{"requestPut": {"key": "missing", "ignoreValue": true}}]}),
            "key_not_found",
            "etcdserver: key not found",
        ),
        (
            json!({"success": [{"requestRange": {"key": "acct/a", "revision": 1000}}]}),
            "future_revision",
            "mvcc: required revision is a future revision",
        ),
    ];
    for (body, code, message) in applied_refusals {
        for via in [follower, leader] {
            assert_error(post(&c, via, "/v1/txn", &body), 400, code, message);
        }
    }
    assert_eq!(store_revision(&c, leader), before, "no refused txn wrote anything");
    assert_eq!(values(&range(&c, leader, json!({"key": "acct/", "prefix": true}))), ["70", "30"]);
    assert_eq!(range(&c, leader, json!({"key": "missing"}))["count"], 0);

    // Every member applied the same.
    for i in 0..3 {
        wait_for("every member at the same revision", ELECTION, || (store_revision(&c, i) == before).then_some(()));
        let local = range(&c, i, json!({"key": "acct/", "prefix": true, "serializable": true}));
        assert_eq!(values(&local), ["70", "30"], "member {i}");
    }
}

/// Runs `kuberaft` with these arguments against the cluster; (exit code, stdout, stderr).
pub(crate) fn cli(c: &Cluster, args: &[&str], stdin: Option<&[u8]>) -> (Option<i32>, Vec<u8>, String) {
    let endpoints: Vec<String> = c.members.iter().map(|m| m.client_url()).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kuberaft"))
        .args(args)
        .args(["--endpoints", &endpoints.join(",")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kuberaft");
    if let Some(mut pipe) = child.stdin.take() {
        if let Some(input) = stdin {
            pipe.write_all(input).expect("write stdin");
        }
    }
    // The client's own deadlines bound the run (a few request timeouts).
    let output = child.wait_with_output().expect("kuberaft output");
    (output.status.code(), output.stdout, String::from_utf8_lossy(&output.stderr).into_owned())
}

fn json_out(out: &(Option<i32>, Vec<u8>, String)) -> Value {
    assert_eq!(out.0, Some(0), "stderr: {}", out.2);
    serde_json::from_slice(&out.1).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.1)))
}

fn item_keys(list: &Value) -> Vec<String> {
    keys(list)
}

/// The CLI: `kv get --rev`, `kv list` with etcd's range options, `txn` from a YAML file and
/// from JSON on stdin (exit 0 for either branch, 1 when refused, 2 for a bad file), and
/// `compact`, after which the compacted past cannot be read.
#[test]
fn the_cli_reads_the_past_lists_with_range_options_runs_txns_and_compacts() {
    let (c, _leader, _follower) = started(115);
    for (key, value) in [("k", "v1"), ("k", "v2"), ("j", "x")] {
        let (code, out, err) = cli(&c, &["kv", "put", key, value], None);
        assert_eq!((code, out.as_slice()), (Some(0), &b"OK\n"[..]), "{err}");
    }
    // k: created 2, mod 3, version 2; j: 4.
    let (code, out, err) = cli(&c, &["kv", "get", "k", "--rev", "2"], None);
    assert_eq!((code, out.as_slice()), (Some(0), &b"v1"[..]), "{err}");
    let (code, out, _) = cli(&c, &["kv", "get", "k", "--print-revision"], None);
    assert_eq!((code, out.as_slice()), (Some(0), &b"3\nv2"[..]));
    let (code, _, err) = cli(&c, &["kv", "get", "j", "--rev", "3"], None);
    assert_eq!(code, Some(1));
    assert!(err.contains("key not found at revision 3: j"), "{err}");
    let (code, _, err) = cli(&c, &["kv", "get", "k", "--rev", "99"], None);
    assert_eq!(code, Some(1));
    assert!(err.contains("mvcc: required revision is a future revision") && err.contains("future_revision"), "{err}");

    let listed = json_out(&cli(&c, &["kv", "list", "--limit", "1", "-w", "json"], None));
    assert_eq!(
        (item_keys(&listed), listed["more"].clone(), listed["count"].clone()),
        (vec!["j".to_string()], json!(true), json!(2))
    );
    let listed = json_out(&cli(&c, &["kv", "list", "--keys-only", "-w", "json"], None));
    assert_eq!(values(&listed), ["", ""]);
    // Every order here differs from key order (j, k), so each one shows that it sorted.
    let listed = json_out(&cli(&c, &["kv", "list", "--sort-by", "mod", "-w", "json"], None));
    assert_eq!(item_keys(&listed), ["k", "j"], "ascending unless told: k mod 3, j 4");
    let listed = json_out(&cli(&c, &["kv", "list", "--sort-by", "version", "--order", "descend", "-w", "json"], None));
    assert_eq!(item_keys(&listed), ["k", "j"], "k has version 2, j 1");
    let listed = json_out(&cli(&c, &["kv", "list", "--sort-by", "create", "--order", "ascend", "-w", "json"], None));
    assert_eq!(item_keys(&listed), ["k", "j"], "k created 2, j 4");
    let listed = json_out(&cli(&c, &["kv", "list", "--sort-by", "key", "--order", "descend", "-w", "json"], None));
    assert_eq!(item_keys(&listed), ["k", "j"], "by key, descending");
    let listed = json_out(&cli(&c, &["kv", "list", "j", "--from-key", "-w", "json"], None));
    assert_eq!(item_keys(&listed), ["j", "k"]);
    let listed = json_out(&cli(&c, &["kv", "list", "--rev", "2", "-w", "json"], None));
    assert_eq!((item_keys(&listed), values(&listed)), (vec!["k".to_string()], vec!["djE=".to_string()]));
    let (code, table, _) = cli(&c, &["kv", "list", "--keys-only"], None);
    assert_eq!(code, Some(0));
    assert_eq!(
        String::from_utf8_lossy(&table),
        "KEY   CREATE   MOD   VERSION\nj     4        4     1\nk     2        3     2\n"
    );

    // A txn from a YAML file: the compare holds the first time, not the second.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("swap.yaml");
    std::fs::write(
        &file,
        "compare:\n  - {key: k, target: VALUE, result: EQUAL, value: v2}\nsuccess:\n  - requestPut: {key: k, value: v3}\n  - requestPut: {key: j, value: y}\nfailure:\n  - requestRange: {key: k}\n",
    )
    .expect("write the txn file");
    let path = file.to_str().expect("a UTF-8 path");
    let first = json_out(&cli(&c, &["txn", path], None));
    assert_eq!((first["succeeded"].clone(), first["header"]["revision"].clone()), (json!(true), json!(5)), "{first}");
    let again = cli(&c, &["txn", path], None);
    assert_eq!(again.0, Some(0), "a failed compare is an answer, not an error: {}", again.2);
    let again = json_out(&again);
    assert_eq!(
        (again["succeeded"].clone(), values(&again["responses"][0]["responseRange"])),
        (json!(false), vec!["v3".to_string()])
    );
    // JSON on stdin; refused with etcd's message and exit 1, nothing applied.
    let duplicate =
        br#"{"success": [{"requestPut": {"key": "z", "value": "1"}}, {"requestPut": {"key": "z", "value": "2"}}]}"#;
    let (code, _, err) = cli(&c, &["txn", "-"], Some(duplicate));
    assert_eq!(code, Some(1));
    assert!(err.contains("etcdserver: duplicate key given in txn request"), "{err}");
    let ok = br#"{"success": [{"requestDeleteRange": {"key": "j", "prevKv": true}}]}"#;
    let deleted = json_out(&cli(&c, &["txn", "-"], Some(ok)));
    assert_eq!(deleted["responses"][0]["responseDeleteRange"]["deleted"], 1);
    assert_eq!(deleted["header"]["revision"], 6);
    // A file that is not a txn, or no file: usage errors.
    std::fs::write(&file, "success:\n  - requestPot: {key: k}\n").expect("write");
    let (code, _, err) = cli(&c, &["txn", path], None);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, _) = cli(&c, &["txn", dir.path().join("absent.json").to_str().expect("path")], None);
    assert_eq!(code, Some(2));

    // Compaction.
    let (code, out, err) = cli(&c, &["compact", "3"], None);
    assert_eq!((code, String::from_utf8_lossy(&out).as_ref()), (Some(0), "compacted revision 3\n"), "{err}");
    let (code, _, err) = cli(&c, &["kv", "get", "k", "--rev", "2"], None);
    assert_eq!(code, Some(1));
    assert!(err.contains("mvcc: required revision has been compacted (compacted at revision 3)"), "{err}");
    let (code, out, _) = cli(&c, &["kv", "get", "k", "--rev", "3"], None);
    assert_eq!((code, out.as_slice()), (Some(0), &b"v2"[..]));
    let (code, _, err) = cli(&c, &["compact", "2"], None);
    assert_eq!(code, Some(1), "{err}");
    let (code, _, err) = cli(&c, &["kv", "list", "--rev", "2"], None);
    assert_eq!(code, Some(1), "{err}");
}

/// `kuberaft compact --physical` answers only once the member that took the request has applied
/// the compaction and reclaimed the discarded history (etcd's physical compaction): its
/// `kuberaft_state_machine_compaction_pending` gauge reads 0 at once, on the leader and on a
/// follower (which has the leader compact, then waits for its own reclaim). 20,000 revisions
/// over 16 keys are about 160 reclaim chunks, more than one of the Raft loop's bounded slices, so
/// without the wait the answer comes while the gauge still reads 1 (it did, when the wait was
/// taken out).
#[test]
fn a_physical_compaction_answers_once_the_space_is_reclaimed() {
    let (c, _, _) = started(116);
    let endpoints: Vec<String> = c.members.iter().map(|m| m.client_url()).collect();
    let load = |total: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_kuberaft"))
            .args(["bench", "--target", "kuberaft", "--scenario", "put", "--clients", "32", "--conns", "32"])
            .args(["--total", total, "--key-space", "16", "--val-size", "256", "--quiet", "--endpoints"])
            .arg(endpoints.join(","))
            .output()
            .expect("run kuberaft bench");
        assert!(out.status.success(), "the load failed: {}", String::from_utf8_lossy(&out.stderr));
    };
    let compact = |member: usize, rev: i64| {
        let out = Command::new(env!("CARGO_BIN_EXE_kuberaft"))
            .args(["compact", &rev.to_string(), "--physical", "--timeout-ms", "60000", "--endpoints"])
            .arg(c.members[member].client_url())
            .output()
            .expect("run kuberaft compact");
        assert_eq!(
            (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned()),
            (Some(0), format!("compacted revision {rev}\n")),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pending = crate::metric(&c, member, "kuberaft_state_machine_compaction_pending");
        assert_eq!(pending, 0, "member {member} reclaimed when it answered");
    };

    load("20000");
    // The member that applies the compaction and answers it: writes go to the leader.
    let (leader, _) = c.wait_leader(ELECTION);
    let rev = i64::try_from(store_revision(&c, leader)).expect("a revision");
    assert!(rev > 20_000, "at revision {rev}");
    compact(leader, rev);
    let (code, _, err) = cli(&c, &["kv", "list", "--rev", &(rev - 1).to_string()], None);
    assert_eq!(code, Some(1));
    assert!(err.contains("mvcc: required revision has been compacted"), "{err}");

    // Through a follower: it waits for its own reclaim, not the leader's.
    load("20000");
    let (leader, _) = c.wait_leader(ELECTION);
    let rev = i64::try_from(store_revision(&c, leader)).expect("a revision");
    assert!(rev > 40_000, "at revision {rev}");
    compact((leader + 1) % 3, rev);
}
