//! The pure request checks of etcd 3.4 (`etcdserver/api/v3rpc/key.go`: `checkPutRequest`,
//! `checkTxnRequest`, `checkIntervals`) and the reading of a request's `key`/`range_end`,
//! shared by the model and the on-disk engine so that both refuse exactly the same requests.

use std::collections::BTreeSet;

use super::types::*;

/// The keys `[key, end)` selected by a request's `key` and `range_end` (after etcd's
/// `mkGteRange`: `"\0"` becomes "no upper bound").
#[derive(Clone, Debug)]
pub enum KeySpan<'a> {
    One(&'a [u8]),
    From(&'a [u8]),
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeySpan<'a> {
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeySpan::One(key),
            [0] => KeySpan::From(key),
            end => KeySpan::Between(key, end),
        }
    }

    /// Whether `key` is one of the span's keys.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeySpan::One(one) => key == *one,
            KeySpan::From(from) => key >= *from,
            KeySpan::Between(from, end) => key >= *from && key < *end,
        }
    }
}

/// etcd's `checkPutRequest`.
pub fn check_put(req: &PutRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

/// etcd's `checkTxnRequest`: `max_ops` bounds the compares, the success ops and the failure
/// ops of this level each; a nested txn gets `max_ops` minus the largest of the three.
pub fn check_txn(req: &TxnRequest, max_ops: usize) -> Result<(), MvccError> {
    let used = req.compare.len().max(req.success.len()).max(req.failure.len());
    if used > max_ops {
        return Err(MvccError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(MvccError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        match op {
            RequestOp::Range(r) if r.key.is_empty() => return Err(MvccError::EmptyKey),
            RequestOp::Range(_) => {}
            RequestOp::Put(p) => check_put(p)?,
            RequestOp::DeleteRange(d) if d.key.is_empty() => return Err(MvccError::EmptyKey),
            RequestOp::DeleteRange(_) => {}
            RequestOp::Txn(t) => check_txn(t, max_ops - used)?,
        }
    }
    Ok(())
}

/// A delete's keys as etcd's `checkIntervals` sees them: one key, or `[key, range_end)` with
/// `range_end` compared as plain bytes (so `"\0"` covers no key).
enum DeleteSpan {
    Point(Vec<u8>),
    Interval(Vec<u8>, Vec<u8>),
}

impl DeleteSpan {
    fn covers(&self, k: &[u8]) -> bool {
        match self {
            DeleteSpan::Point(d) => d.as_slice() == k,
            DeleteSpan::Interval(begin, end) => begin.as_slice() <= k && k < end.as_slice(),
        }
    }
}

fn covered(dels: &[DeleteSpan], k: &[u8]) -> bool {
    dels.iter().any(|d| d.covers(k))
}

/// etcd's `checkIntervals` for one list of ops (`success` or `failure` of a txn):
/// [`MvccError::DuplicateKey`] if a put's key is put again or falls under a delete in it
/// (nested txns included).
pub fn check_intervals(ops: &[RequestOp]) -> Result<(), MvccError> {
    intervals(ops).map(|_| ())
}

/// The keys put and the deletes in `ops` (nested txns included), or
/// [`MvccError::DuplicateKey`].
fn intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<DeleteSpan>), MvccError> {
    let mut dels: Vec<DeleteSpan> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) if d.range_end.is_empty() => Some(DeleteSpan::Point(d.key.clone())),
            RequestOp::DeleteRange(d) => Some(DeleteSpan::Interval(d.key.clone(), d.range_end.clone())),
            _ => None,
        })
        .collect();
    let mut puts = BTreeSet::new();
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let (puts_then, dels_then) = intervals(&t.success)?;
        let (puts_else, dels_else) = intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || covered(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
        }
        puts.extend(puts_then.iter().cloned());
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || covered(&dels, &k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if puts.contains(&p.key) || covered(&dels, &p.key) {
            return Err(MvccError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}
