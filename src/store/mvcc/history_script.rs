//! A fixed history of writes (tests only): puts, deletes, txns that change several keys in one
//! revision, leases, a compaction whose reclaiming stopped part-way, and writes after it. The
//! store of format 1 in `tests/fixtures/mvcc-format-1.redb` was written by this script with the
//! format-1 engine (kuberaft before format 2), so a test can replay it on the current engine
//! and compare the two stores read for read.

use super::engine::MvccStore;
use super::types::*;

fn put(key: &str, value: &str, lease: i64) -> PutRequest {
    PutRequest { key: key.as_bytes().to_vec(), value: value.as_bytes().to_vec(), lease, ..Default::default() }
}

/// Applies the script to an empty `store`, one batch per step, all commits durable.
pub(crate) fn write_history(store: &MvccStore) {
    let step = |f: &mut dyn FnMut(&mut super::engine::Batch)| {
        let mut batch = store.begin().expect("begin");
        f(&mut batch);
        batch.commit(true).expect("commit");
    };
    step(&mut |b| {
        b.lease_grant(7, 600).unwrap().unwrap();
        b.lease_grant(9, 60).unwrap().unwrap();
    });
    for round in 0..6 {
        step(&mut |b| {
            for k in 0..40 {
                let lease = if k % 7 == 0 {
                    7
                } else if k % 11 == 0 {
                    9
                } else {
                    0
                };
                let value = format!("v{round}-{k}-{}", "x".repeat(k % 5));
                b.put(&put(&format!("key/{k:02}"), &value, lease)).unwrap().unwrap();
            }
        });
        step(&mut |b| {
            let end = format!("key/{:02}", 3 + round * 5);
            let del = DeleteRangeRequest {
                key: format!("key/{:02}", round * 5).into_bytes(),
                range_end: end.into_bytes(),
                prev_kv: false,
            };
            b.delete_range(&del).unwrap().unwrap();
            // One revision that changes three keys, not in key order.
            let txn = TxnRequest {
                compare: vec![Compare {
                    key: b"key/39".to_vec(),
                    range_end: Vec::new(),
                    target: CompareTarget::Version(0),
                    result: CompareResult::Greater,
                }],
                success: vec![
                    RequestOp::Put(put(&format!("txn/{round}/b"), "1", 0)),
                    RequestOp::Put(put(&format!("txn/{round}/a"), "2", 0)),
                    RequestOp::Put(put(&format!("txn/{round}/c"), "3", 0)),
                ],
                failure: Vec::new(),
            };
            assert!(b.txn(&txn).unwrap().unwrap().succeeded);
        });
    }
    step(&mut |b| {
        b.lease_revoke(9).unwrap().unwrap();
    });
    // Compacted at a revision in the middle; one chunk reclaimed of several.
    let middle = store.revision() / 2;
    step(&mut |b| {
        b.compact(middle).unwrap().unwrap();
    });
    step(&mut |b| {
        assert!(b.compact_step().unwrap(), "more than one chunk to reclaim");
    });
    step(&mut |b| {
        for k in (0..40).step_by(3) {
            b.put(&put(&format!("key/{k:02}"), "after", 0)).unwrap().unwrap();
        }
        b.lease_checkpoint(7, 12_345).unwrap();
    });
}
