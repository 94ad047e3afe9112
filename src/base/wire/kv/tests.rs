//! The JSON shapes of ranges, txns and compaction: etcd's field and enum names, text or base64
//! bytes, refusals of what is not a request.

use serde_json::json;

use super::*;
use crate::base::wire::{ErrorDetail, KvItem, ListResponse};

fn range(value: serde_json::Value) -> Result<RangeRequest, String> {
    serde_json::from_value(value).map_err(|e| e.to_string())
}

#[test]
fn a_range_request_reads_etcds_field_names_in_camel_and_snake_case() {
    let camel = range(json!({
        "key": "a", "rangeEnd": "b", "limit": 2, "revision": 3, "sortOrder": "DESCEND", "sortTarget": "MOD",
        "serializable": true, "keysOnly": true, "countOnly": true, "minModRevision": 4, "maxModRevision": 5,
        "minCreateRevision": 6, "maxCreateRevision": 7
    }))
    .unwrap();
    let snake = range(json!({
        "key": "a", "range_end": "b", "limit": 2, "revision": 3, "sort_order": "DESCEND", "sort_target": "MOD",
        "serializable": true, "keys_only": true, "count_only": true, "min_mod_revision": 4, "max_mod_revision": 5,
        "min_create_revision": 6, "max_create_revision": 7
    }))
    .unwrap();
    let expected = RangeRequest {
        key: Some("a".into()),
        range_end: Some("b".into()),
        limit: 2,
        revision: 3,
        sort_order: SortOrder::Descend,
        sort_target: SortTarget::Mod,
        serializable: true,
        keys_only: true,
        count_only: true,
        min_mod_revision: 4,
        max_mod_revision: 5,
        min_create_revision: 6,
        max_create_revision: 7,
        ..RangeRequest::default()
    };
    assert_eq!(camel, expected);
    assert_eq!(snake, expected);
    // And back: camelCase, defaults left out.
    let text =
        serde_json::to_value(RangeRequest { key: Some("k".into()), prefix: true, ..Default::default() }).unwrap();
    assert_eq!(text, json!({"key": "k", "prefix": true}));
}

#[test]
fn every_sort_and_compare_enum_has_etcds_name() {
    let orders = [(SortOrder::None, "NONE"), (SortOrder::Ascend, "ASCEND"), (SortOrder::Descend, "DESCEND")];
    for (order, name) in orders {
        assert_eq!(serde_json::to_value(order).unwrap(), json!(name));
    }
    let targets = [
        (SortTarget::Key, "KEY"),
        (SortTarget::Version, "VERSION"),
        (SortTarget::Create, "CREATE"),
        (SortTarget::Mod, "MOD"),
        (SortTarget::Value, "VALUE"),
    ];
    for (target, name) in targets {
        assert_eq!(serde_json::to_value(target).unwrap(), json!(name));
    }
    let compare_targets = [
        (CompareTarget::Version, "VERSION"),
        (CompareTarget::Create, "CREATE"),
        (CompareTarget::Mod, "MOD"),
        (CompareTarget::Value, "VALUE"),
        (CompareTarget::Lease, "LEASE"),
    ];
    for (target, name) in compare_targets {
        assert_eq!(serde_json::to_value(target).unwrap(), json!(name));
    }
    let results = [
        (CompareResult::Equal, "EQUAL"),
        (CompareResult::Greater, "GREATER"),
        (CompareResult::Less, "LESS"),
        (CompareResult::NotEqual, "NOT_EQUAL"),
    ];
    for (result, name) in results {
        assert_eq!(serde_json::to_value(result).unwrap(), json!(name));
        assert_eq!(serde_json::from_value::<CompareResult>(json!(name)).unwrap(), result);
    }
}

#[test]
fn misspelt_fields_unknown_enum_names_and_ambiguous_ops_are_refused() {
    assert!(range(json!({"key": "a", "limt": 2})).unwrap_err().contains("limt"));
    assert!(range(json!({"key": "a", "sortOrder": "UP"})).is_err());
    assert!(range(json!({"key": "a", "sortOrder": "descend"})).is_err(), "enum names are etcd's, upper case");
    assert!(range(json!({"key": 5})).is_err(), "a key is a string");
    let op = |value| serde_json::from_value::<RequestOp>(value).map_err(|e| e.to_string());
    assert!(op(json!({"requestPutt": {"key": "a"}})).is_err());
    assert!(op(json!({"requestPut": {"key": "a"}, "requestRange": {"key": "a"}})).is_err(), "one op per entry");
    assert!(op(json!({"requestPut": {"key": "a", "prevKV": true}})).is_err());
    let compare = |value| serde_json::from_value::<Compare>(value).map_err(|e| e.to_string());
    assert!(compare(json!({"key": "a", "result": "EQUAL", "version": 1})).unwrap_err().contains("target"));
    assert!(compare(json!({"key": "a", "target": "VERSION", "version": 1})).unwrap_err().contains("result"));
    let txn = |value| serde_json::from_value::<TxnRequest>(value).map_err(|e| e.to_string());
    assert!(txn(json!({"compares": []})).is_err());
}

/// The JSON of a txn with every kind of op, as a client sends it, is etcd's JSON with camelCase
/// names, and reads back the same; the snake_case spelling reads the same too.
#[test]
fn a_txn_request_has_etcds_shape() {
    let mut compare = Compare::new("balance/a", CompareTarget::Mod, CompareResult::Less);
    compare.mod_revision = Some(9);
    let txn = TxnRequest {
        compare: vec![compare],
        success: vec![
            RequestOp::RequestPut(PutRequest {
                key: Some("balance/a".into()),
                value: Some("10".into()),
                prev_kv: true,
                ..Default::default()
            }),
            RequestOp::RequestDeleteRange(DeleteRangeRequest {
                key: Some("tmp/".into()),
                prefix: true,
                ..Default::default()
            }),
            RequestOp::RequestRange(RangeRequest { key_base64: Some("AP8=".into()), ..Default::default() }),
            RequestOp::RequestTxn(TxnRequest::default()),
        ],
        failure: vec![RequestOp::RequestPut(PutRequest {
            key: Some("k".into()),
            ignore_value: true,
            ignore_lease: true,
            lease: 0,
            ..Default::default()
        })],
    };
    let expected = json!({
        "compare": [{"key": "balance/a", "target": "MOD", "result": "LESS", "modRevision": 9}],
        "success": [
            {"requestPut": {"key": "balance/a", "value": "10", "prevKv": true}},
            {"requestDeleteRange": {"key": "tmp/", "prefix": true}},
            {"requestRange": {"keyBase64": "AP8="}},
            {"requestTxn": {}}
        ],
        "failure": [{"requestPut": {"key": "k", "ignoreValue": true, "ignoreLease": true}}]
    });
    assert_eq!(serde_json::to_value(&txn).unwrap(), expected);
    assert_eq!(serde_json::from_value::<TxnRequest>(expected).unwrap(), txn);
    let snake = json!({
        "compare": [{"key": "balance/a", "target": "MOD", "result": "LESS", "mod_revision": 9}],
        "success": [
            {"request_put": {"key": "balance/a", "value": "10", "prev_kv": true}},
            {"request_delete_range": {"key": "tmp/", "prefix": true}},
            {"request_range": {"keyBase64": "AP8="}},
            {"request_txn": {}}
        ],
        "failure": [{"request_put": {"key": "k", "ignore_value": true, "ignore_lease": true}}]
    });
    assert_eq!(serde_json::from_value::<TxnRequest>(snake).unwrap(), txn);
}

#[test]
fn an_answer_carries_bytes_as_text_when_they_are_text_and_base64_otherwise() {
    let text = KeyValue::new(b"a/b".to_vec(), "line 1\n\tline \"2\" é".as_bytes().to_vec(), 2, 3, 1);
    assert_eq!(
        serde_json::to_value(&text).unwrap(),
        json!({"key": "a/b", "createRevision": 2, "modRevision": 3, "version": 1,
               "value": "line 1\n\tline \"2\" é", "lease": 0})
    );
    let binary = KeyValue::new(vec![0, 0xff], vec![0x01, b'a'], 2, 3, 1);
    assert_eq!(
        serde_json::to_value(&binary).unwrap(),
        json!({"keyBase64": "AP8=", "createRevision": 2, "modRevision": 3, "version": 1,
               "valueBase64": "AWE=", "lease": 0})
    );
    // A reader gets the bytes back either way; an empty value is text "".
    assert_eq!(binary.key_bytes(), Some(vec![0, 0xff]));
    assert_eq!(binary.value_bytes(), Some(vec![0x01, b'a']));
    assert_eq!(text.value_bytes(), Some("line 1\n\tline \"2\" é".as_bytes().to_vec()));
    let empty = KeyValue::new(b"k".to_vec(), Vec::new(), 2, 2, 1);
    assert_eq!(empty.value.as_deref(), Some(""));
    assert_eq!(KeyValue { value: None, ..empty }.value_bytes(), Some(Vec::new()));
}

#[test]
fn a_request_field_is_text_or_base64_never_both() {
    assert_eq!(field_bytes("key", &Some("é".into()), &None), Ok("é".as_bytes().to_vec()));
    assert_eq!(field_bytes("key", &None, &Some("AP8=".into())), Ok(vec![0, 0xff]));
    assert_eq!(field_bytes("key", &None, &None), Ok(Vec::new()));
    assert_eq!(
        field_bytes("rangeEnd", &Some("a".into()), &Some("YQ==".into())),
        Err("give `rangeEnd` or `rangeEndBase64`, not both".to_string())
    );
    assert!(field_bytes("value", &None, &Some("not base64!".into())).unwrap_err().contains("valueBase64"));
}

#[test]
fn a_txn_response_has_etcds_shape_and_reads_back() {
    let kv = KeyValue::new(b"k".to_vec(), b"old".to_vec(), 2, 4, 3);
    let answer = TxnResponse {
        header: ResponseHeader { cluster_id: "c1".into(), member_id: "a2".into(), revision: 5, raft_term: 3 },
        succeeded: true,
        responses: vec![
            ResponseOp::ResponsePut(PutResponse {
                header: ResponseHeader { revision: 5, ..Default::default() },
                prev_kv: Some(kv.clone()),
            }),
            ResponseOp::ResponseRange(RangeResponse {
                header: ResponseHeader { revision: 5, ..Default::default() },
                kvs: vec![kv.clone()],
                more: true,
                count: 7,
            }),
            ResponseOp::ResponseDeleteRange(DeleteRangeResponse {
                header: ResponseHeader { revision: 5, ..Default::default() },
                deleted: 2,
                prev_kvs: Vec::new(),
            }),
            ResponseOp::ResponseTxn(TxnResponse {
                header: ResponseHeader { revision: 5, ..Default::default() },
                succeeded: false,
                ..Default::default()
            }),
        ],
        truncated: false,
    };
    let kv_json = json!({"key": "k", "createRevision": 2, "modRevision": 4, "version": 3, "value": "old", "lease": 0});
    let expected = json!({
        "header": {"clusterId": "c1", "memberId": "a2", "revision": 5, "raftTerm": 3},
        "succeeded": true,
        "responses": [
            {"responsePut": {"header": {"revision": 5}, "prevKv": kv_json}},
            {"responseRange": {"header": {"revision": 5}, "kvs": [kv_json], "more": true, "count": 7}},
            {"responseDeleteRange": {"header": {"revision": 5}, "deleted": 2}},
            {"responseTxn": {"header": {"revision": 5}, "succeeded": false, "responses": []}}
        ]
    });
    assert_eq!(serde_json::to_value(&answer).unwrap(), expected);
    assert_eq!(serde_json::from_value::<TxnResponse>(expected).unwrap(), answer);
    let cut = TxnResponse { truncated: true, ..TxnResponse::default() };
    assert_eq!(serde_json::to_value(cut).unwrap()["truncated"], json!(true));
}

#[test]
fn compaction_shapes() {
    let request: CompactionRequest = serde_json::from_value(json!({"revision": 7, "physical": true})).unwrap();
    assert_eq!(request, CompactionRequest { revision: 7, physical: true });
    assert!(serde_json::from_value::<CompactionRequest>(json!({})).is_err(), "the revision is required");
    let answer = CompactionResponse { header: ResponseHeader { revision: 9, ..Default::default() } };
    assert_eq!(serde_json::to_value(answer).unwrap(), json!({"header": {"revision": 9}}));
}

/// What issue 13 added to older shapes is optional both ways: an older member's list and error
/// read as before, and the new fields appear only when set.
#[test]
fn the_list_and_error_shapes_stay_compatible() {
    let old_list = json!({"revision": 3, "more": false,
        "kvs": [{"key": "a", "value": "aGk=", "createRevision": 2, "modRevision": 3, "version": 2}]});
    let list: ListResponse = serde_json::from_value(old_list.clone()).unwrap();
    assert_eq!(list.count, None);
    assert_eq!(list.kvs[0].key_base64, None);
    assert_eq!(serde_json::to_value(&list).unwrap(), old_list, "nothing new appears unless set");
    let item = KvItem {
        key: "\u{fffd}".into(),
        key_base64: Some("/w==".into()),
        value: String::new(),
        create_revision: 2,
        mod_revision: 2,
        version: 1,
    };
    assert_eq!(serde_json::to_value(&item).unwrap()["keyBase64"], json!("/w=="));

    let plain = ErrorDetail::new("not_found", "gone");
    assert_eq!(serde_json::to_value(&plain).unwrap(), json!({"code": "not_found", "message": "gone"}));
    let compacted = ErrorDetail { compact_revision: Some(5), ..ErrorDetail::new("compacted", "m") };
    assert_eq!(serde_json::to_value(&compacted).unwrap()["compactRevision"], json!(5));
    let read: ErrorDetail = serde_json::from_value(json!({"code": "x", "message": "y"})).unwrap();
    assert_eq!(read.compact_revision, None);
}
