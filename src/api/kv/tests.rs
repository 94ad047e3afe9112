//! The pure parts of the key-value endpoints: requests checked and turned into the store's
//! types, what is refused before Raft, and answers cut to their bounds.

use super::*;

fn text(s: &str) -> Option<String> {
    Some(s.to_string())
}

fn range_of(r: wire::RangeRequest) -> Result<mvcc::RangeRequest, (StatusCode, &'static str, String)> {
    range_request(&r).map_err(|e| (e.status, e.code, e.message))
}

#[test]
fn a_range_selects_one_key_a_range_a_prefix_or_everything_from_a_key() {
    let one = range_of(wire::RangeRequest { key: text("a"), ..Default::default() }).unwrap();
    assert_eq!((one.key, one.range_end), (b"a".to_vec(), Vec::new()));
    let between =
        range_of(wire::RangeRequest { key: text("a"), range_end_base64: text("Yg=="), ..Default::default() }).unwrap();
    assert_eq!((between.key, between.range_end), (b"a".to_vec(), b"b".to_vec()));
    let prefix = range_of(wire::RangeRequest { key: text("ab"), prefix: true, ..Default::default() }).unwrap();
    assert_eq!((prefix.key, prefix.range_end), (b"ab".to_vec(), b"ac".to_vec()));
    let high = range_of(wire::RangeRequest { key_base64: text("/w=="), prefix: true, ..Default::default() }).unwrap();
    assert_eq!((high.key, high.range_end), (vec![0xff], vec![0]), "no key ends a prefix of 0xff: from the key on");
    let from = range_of(wire::RangeRequest { key: text("k"), from_key: true, ..Default::default() }).unwrap();
    assert_eq!((from.key, from.range_end), (b"k".to_vec(), vec![0]));
    for everything in [
        wire::RangeRequest { prefix: true, ..Default::default() },
        wire::RangeRequest { from_key: true, ..Default::default() },
    ] {
        let all = range_of(everything).unwrap();
        assert_eq!((all.key, all.range_end), (vec![0], vec![0]));
    }
    // An empty key alone is left to the store, which answers etcd's "key is not provided".
    let empty = range_of(wire::RangeRequest::default()).unwrap();
    assert_eq!(empty.key, Vec::<u8>::new());
}

#[test]
fn a_range_with_two_ends_a_long_key_or_bad_base64_is_refused() {
    let (status, code, message) =
        range_of(wire::RangeRequest { key: text("a"), range_end: text("b"), prefix: true, ..Default::default() })
            .unwrap_err();
    assert_eq!((status, code), (StatusCode::BAD_REQUEST, "bad_request"));
    assert!(message.contains("at most one of"), "{message}");
    assert!(
        range_of(wire::RangeRequest { key: text("a"), prefix: true, from_key: true, ..Default::default() }).is_err()
    );
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    let (status, code, _) = range_of(wire::RangeRequest { key: Some(long), ..Default::default() }).unwrap_err();
    assert_eq!((status, code), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"));
    let (status, _, message) =
        range_of(wire::RangeRequest { key_base64: text("???"), ..Default::default() }).unwrap_err();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("keyBase64"), "{message}");
}

/// The store is asked for at most one answer of keys, and asked so that the keys that come
/// first are the ones etcd would put first.
#[test]
fn a_range_asks_the_store_for_at_most_one_answer_without_changing_which_keys_come_first() {
    let cap = MAX_LIST_LIMIT as i64;
    let ask = |limit, order, target| mvcc::RangeRequest {
        key: b"a".to_vec(),
        limit,
        sort_order: order,
        sort_target: target,
        ..Default::default()
    };
    use mvcc::SortOrder::{Ascend, Descend, None as Unsorted};
    use mvcc::SortTarget::{Key, Mod};
    // No limit: the cap, `more` says the rest.
    assert_eq!(capped(ask(0, Unsorted, Key)).limit, cap);
    assert_eq!(capped(ask(-5, Descend, Mod)).limit, cap);
    // Under the cap: as asked.
    assert_eq!(capped(ask(7, Unsorted, Key)), ask(7, Unsorted, Key));
    assert_eq!(capped(ask(7, Unsorted, Mod)), ask(7, Unsorted, Mod), "etcd's partial sort of the first 8 keys kept");
    // Above it: the cap, unless the order is NONE with another target, where etcd sorts the
    // first `limit + 1` keys: then the limit stays and the answer is cut afterwards.
    assert_eq!(capped(ask(cap + 5, Ascend, Mod)).limit, cap);
    assert_eq!(capped(ask(cap + 5, Unsorted, Mod)), ask(cap + 5, Unsorted, Mod));
    // No limit, order NONE, another target: etcd sorts all of them ascending, so that is asked.
    assert_eq!(capped(ask(0, Unsorted, Mod)), ask(cap, Ascend, Mod));
}

fn put(key: &str, value: &str) -> wire::RequestOp {
    wire::RequestOp::RequestPut(wire::PutRequest { key: text(key), value: text(value), ..Default::default() })
}

fn compare_json(value: serde_json::Value) -> Result<mvcc::Compare, String> {
    let c: wire::Compare = serde_json::from_value(value).map_err(|e| e.to_string())?;
    compare(&c, 1024).map_err(|e| e.message)
}

#[test]
fn a_compare_takes_the_operand_its_target_names() {
    let c = compare_json(serde_json::json!({"key": "k", "target": "VERSION", "result": "GREATER", "version": 2}));
    assert_eq!(
        c.unwrap(),
        mvcc::Compare {
            key: b"k".to_vec(),
            range_end: Vec::new(),
            result: mvcc::CompareResult::Greater,
            target: mvcc::CompareTarget::Version(2)
        }
    );
    let c = compare_json(
        serde_json::json!({"key": "k", "prefix": true, "target": "VALUE", "result": "NOT_EQUAL", "valueBase64": "AP8="}),
    )
    .unwrap();
    assert_eq!((c.range_end, c.target), (b"l".to_vec(), mvcc::CompareTarget::Value(vec![0, 0xff])));
    let c = compare_json(serde_json::json!({"key": "k", "target": "CREATE", "result": "EQUAL", "createRevision": 0}));
    assert_eq!(c.unwrap().target, mvcc::CompareTarget::Create(0));
    let c = compare_json(serde_json::json!({"key": "k", "target": "MOD", "result": "LESS", "modRevision": 3}));
    assert_eq!(c.unwrap().target, mvcc::CompareTarget::Mod(3));
    let c = compare_json(serde_json::json!({"key": "k", "target": "LEASE", "result": "EQUAL", "lease": 0}));
    assert_eq!(c.unwrap().target, mvcc::CompareTarget::Lease(0));
    let wrong = compare_json(serde_json::json!({"key": "k", "target": "VERSION", "result": "EQUAL", "modRevision": 2}));
    assert_eq!(wrong.unwrap_err(), "a compare on VERSION takes `version`, not `modRevision`");
    let missing = compare_json(serde_json::json!({"key": "k", "target": "VALUE", "result": "EQUAL"}));
    assert_eq!(missing.unwrap_err(), "a compare on VALUE needs `value`");
}

#[test]
fn a_txn_with_a_value_over_the_limit_is_too_large() {
    let txn = wire::TxnRequest { success: vec![put("k", &"v".repeat(11))], ..Default::default() };
    let e = txn_request(&txn, 10).unwrap_err();
    assert_eq!((e.status, e.code), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"));
    assert!(txn_request(&txn, 11).is_ok());
    let nested = wire::TxnRequest { failure: vec![wire::RequestOp::RequestTxn(txn)], ..Default::default() };
    assert_eq!(txn_request(&nested, 10).unwrap_err().code, "too_large", "nested txns are checked too");
}

fn checked(txn: wire::TxnRequest) -> Result<(), MvccError> {
    static_check(&txn_request(&txn, 1 << 20).expect("a well-formed txn"))
}

/// What etcd refuses before Raft is refused before a log entry; what depends on the data is
/// left to the state machine.
#[test]
fn the_static_check_refuses_what_etcd_refuses_before_raft_and_only_that() {
    let twice = wire::TxnRequest { success: vec![put("k", "1"), put("k", "2")], ..Default::default() };
    assert_eq!(checked(twice), Err(MvccError::DuplicateKey));
    let under_delete = wire::TxnRequest {
        failure: vec![
            wire::RequestOp::RequestDeleteRange(wire::DeleteRangeRequest {
                key: text("a"),
                prefix: true,
                ..Default::default()
            }),
            put("ab", "1"),
        ],
        ..Default::default()
    };
    assert_eq!(checked(under_delete), Err(MvccError::DuplicateKey), "checked on the branch not taken too");
    let empty = wire::TxnRequest { success: vec![put("", "1")], ..Default::default() };
    assert_eq!(checked(empty), Err(MvccError::EmptyKey));
    let value_and_ignore = wire::TxnRequest {
        success: vec![wire::RequestOp::RequestPut(wire::PutRequest {
            key: text("k"),
            value: text("v"),
            ignore_value: true,
            ..Default::default()
        })],
        ..Default::default()
    };
    assert_eq!(checked(value_and_ignore), Err(MvccError::ValueProvided));
    let many = wire::TxnRequest {
        success: (0..=mvcc::DEFAULT_MAX_TXN_OPS).map(|i| put(&format!("k{i}"), "v")).collect(),
        ..Default::default()
    };
    assert_eq!(checked(many), Err(MvccError::TooManyOps));
    // Depends on the data: the state machine decides.
    let ignore_missing = wire::TxnRequest {
        success: vec![wire::RequestOp::RequestPut(wire::PutRequest {
            key: text("k"),
            ignore_value: true,
            ..Default::default()
        })],
        ..Default::default()
    };
    assert_eq!(checked(ignore_missing), Ok(()));
    let future = wire::TxnRequest {
        success: vec![wire::RequestOp::RequestRange(wire::RangeRequest {
            key: text("k"),
            revision: 1000,
            ..Default::default()
        })],
        ..Default::default()
    };
    assert_eq!(checked(future), Ok(()));
    let fine = wire::TxnRequest { success: vec![put("a", "1"), put("b", "2")], ..Default::default() };
    assert_eq!(checked(fine), Ok(()));
}

#[test]
fn every_store_error_has_its_own_code() {
    let all = [
        MvccError::Compacted,
        MvccError::FutureRev,
        MvccError::KeyNotFound,
        MvccError::EmptyKey,
        MvccError::ValueProvided,
        MvccError::LeaseProvided,
        MvccError::DuplicateKey,
        MvccError::TooManyOps,
    ];
    let codes: std::collections::BTreeSet<&str> = all.iter().map(|e| mvcc_code(*e)).collect();
    assert_eq!(codes.len(), all.len());
    assert_eq!(mvcc_code(MvccError::Compacted), "compacted");
    let e: ApiError = NodeError::Mvcc(MvccError::DuplicateKey).into();
    assert_eq!(
        (e.status, e.code, e.message.as_str()),
        (StatusCode::BAD_REQUEST, "duplicate_key", "etcdserver: duplicate key given in txn request")
    );
}

fn kv(key: &str, value_len: usize) -> mvcc::KeyValue {
    mvcc::KeyValue {
        key: key.as_bytes().to_vec(),
        create_revision: 2,
        mod_revision: 2,
        version: 1,
        value: vec![b'v'; value_len],
        lease: 0,
    }
}

fn range_result(count: usize, value_len: usize) -> mvcc::ResponseOp {
    mvcc::ResponseOp::Range(mvcc::RangeResponse {
        revision: 9,
        kvs: (0..count).map(|i| kv(&format!("k{i:05}"), value_len)).collect(),
        more: false,
        count: count as i64,
    })
}

/// A txn's JSON answer within the bounds of one answer, and whether it was cut.
fn bounded_txn(done: mvcc::TxnResponse) -> (wire::TxnResponse, bool) {
    let (done, cut) = bound_txn(done, &mut Budget::new());
    (txn_answer(done, cut), cut)
}

/// A range's JSON answer within the bounds of one answer, and whether it was cut.
fn bounded_range(found: mvcc::RangeResponse) -> (wire::RangeResponse, bool) {
    let (found, cut) = bound_range(found, &mut Budget::new());
    (range_answer(found), cut)
}

/// A txn's answer holds at most one answer's worth of key-values across all its results:
/// ranges past the bound say `more`, previous values are left out, and `truncated` says so.
#[test]
fn a_txn_answer_is_cut_to_the_bounds_of_one_answer() {
    let half = MAX_LIST_LIMIT / 2 + 10;
    let done = mvcc::TxnResponse {
        revision: 9,
        succeeded: true,
        responses: vec![
            range_result(half, 0),
            range_result(half, 0),
            mvcc::ResponseOp::Put(mvcc::PutResponse { revision: 9, prev_kv: Some(kv("p", 1)) }),
        ],
    };
    let (answer, truncated) = bounded_txn(done);
    assert!(truncated && answer.truncated);
    let ranges: Vec<&wire::RangeResponse> = answer
        .responses
        .iter()
        .filter_map(|r| match r {
            wire::ResponseOp::ResponseRange(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!((ranges[0].kvs.len(), ranges[0].more, ranges[0].count), (half, false, half as i64));
    assert_eq!((ranges[1].kvs.len(), ranges[1].more, ranges[1].count), (MAX_LIST_LIMIT - half, true, half as i64));
    match &answer.responses[2] {
        wire::ResponseOp::ResponsePut(p) => assert_eq!(p.prev_kv, None, "no room left for the previous value"),
        other => panic!("{other:?}"),
    }

    // Values: the first always fits, then up to the page's bytes.
    let big = MAX_LIST_PAGE_BYTES / 2 + 1;
    let done = mvcc::TxnResponse {
        revision: 9,
        succeeded: false,
        responses: vec![mvcc::ResponseOp::DeleteRange(mvcc::DeleteRangeResponse {
            revision: 9,
            deleted: 3,
            prev_kvs: vec![kv("a", big), kv("b", big), kv("c", 1)],
        })],
    };
    let (answer, truncated) = bounded_txn(done);
    assert!(truncated);
    match &answer.responses[0] {
        wire::ResponseOp::ResponseDeleteRange(d) => assert_eq!((d.deleted, d.prev_kvs.len()), (3, 1)),
        other => panic!("{other:?}"),
    }

    // Within bounds nothing is cut or flagged.
    let small = mvcc::TxnResponse { revision: 9, succeeded: true, responses: vec![range_result(3, 10)] };
    let (answer, truncated) = bounded_txn(small);
    assert!(!truncated && !answer.truncated);
    assert!(serde_json::to_value(&answer).unwrap().get("truncated").is_none());
}

#[test]
fn a_range_answer_ends_once_its_values_pass_the_page_bytes() {
    let big = MAX_LIST_PAGE_BYTES / 3;
    let found = mvcc::RangeResponse {
        revision: 9,
        kvs: (0..5).map(|i| kv(&format!("k{i}"), big)).collect(),
        more: false,
        count: 5,
    };
    let (answer, cut) = bounded_range(found);
    assert!(cut);
    assert_eq!((answer.kvs.len(), answer.more, answer.count), (3, true, 5));
    let one_huge =
        mvcc::RangeResponse { revision: 9, kvs: vec![kv("k", MAX_LIST_PAGE_BYTES * 2)], more: false, count: 1 };
    let (answer, cut) = bounded_range(one_huge);
    assert_eq!((answer.kvs.len(), answer.more, cut), (1, false, false), "a page always holds one key");
}

fn list_params(query: &str) -> ListParams {
    let Query(params) =
        Query::<ListParams>::try_from_uri(&format!("http://x/v1/kv?{query}").parse().unwrap()).expect("a list query");
    params
}

#[test]
fn a_list_query_becomes_a_range() {
    let r = list_request(&list_params("prefix=a%2F&startAfter=a%2Fb"), 10);
    assert_eq!((r.key, r.range_end, r.limit), (b"a/b\0".to_vec(), b"a0".to_vec(), 10));
    assert_eq!(
        (r.sort_order, r.sort_target, r.revision, r.keys_only),
        (mvcc::SortOrder::None, mvcc::SortTarget::Key, 0, false)
    );
    let r = list_request(&list_params("prefix=k&fromKey=true&keysOnly=true&rev=4"), 10);
    assert_eq!((r.key, r.range_end, r.revision, r.keys_only), (b"k".to_vec(), vec![0], 4, true));
    let r = list_request(&list_params("sortBy=mod"), 10);
    assert_eq!((r.key, r.range_end), (vec![0], vec![0]), "no prefix: every key");
    assert_eq!(
        (r.sort_order, r.sort_target),
        (mvcc::SortOrder::Ascend, mvcc::SortTarget::Mod),
        "ascending unless told"
    );
    let r = list_request(&list_params("sort_by=VERSION&sort_order=descend&from_key=true&keys_only=true"), 10);
    assert_eq!(
        (r.sort_order, r.sort_target, r.range_end),
        (mvcc::SortOrder::Descend, mvcc::SortTarget::Version, vec![0])
    );
    assert!(Query::<ListParams>::try_from_uri(&"http://x/v1/kv?sortBy=size".parse().unwrap()).is_err());
}

#[test]
fn a_list_item_keeps_a_binary_key_exact_in_base64() {
    let item = list_item(mvcc::KeyValue { key: vec![b'a', 0xff], value: vec![1, 2], ..kv("", 0) });
    assert_eq!(
        (item.key.as_str(), item.key_base64.as_deref(), item.value.as_str()),
        ("a\u{fffd}", Some("Yf8="), "AQI=")
    );
    let item = list_item(kv("plain", 0));
    assert_eq!((item.key.as_str(), item.key_base64), ("plain", None));
}
