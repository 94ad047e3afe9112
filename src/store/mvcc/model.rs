//! An in-memory model of etcd v3's MVCC key-value semantics (etcd 3.4): the reference that the
//! real store is property-tested against. It favours clarity over speed: every key keeps its
//! history as a map from revision to value (or tombstone), and every read walks it.
//!
//! What it follows, and where in etcd 3.4 it comes from:
//! - request checks done before Raft (`etcdserver/api/v3rpc/key.go`: `checkRangeRequest`,
//!   `checkPutRequest`, `checkTxnRequest`, `checkIntervals`);
//! - how ranges, puts, deletes, txns and compares are applied (`etcdserver/apply.go`);
//! - revisions, ranges at a revision and compaction (`mvcc/kvstore.go`, `mvcc/kvstore_txn.go`,
//!   `mvcc/key_index.go`).
//!
//! Revisions are `i64`, as in etcd's protobufs: users compare against them in txns (a compare
//! against a negative number is legal and must mean what it means in etcd), and the store
//! starts at revision 1 like etcd's, so the first write is revision 2. Leases are stored as
//! given; whether a lease exists is not checked here (leases come in a later issue).
//!
//! Where this model knowingly differs from etcd 3.4:
//! - etcd's sorts are not stable, so the order of entries with equal sort values is
//!   unspecified there; here they stay in ascending key order.
//! - a nested txn's response carries the revision seen after its ops; etcd 3.4 leaves it 0.
//! - etcd 3.4's duplicate-key check does not see a put under a from-key delete (`range_end`
//!   "\0") in the same txn; such a txn is accepted here as there. If its put then has
//!   `ignore_value`/`ignore_lease` for a key that delete removed, etcd 3.4 panics the server;
//!   here the whole txn fails with [`MvccError::KeyNotFound`] and changes nothing.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A store revision (etcd's `int64` main revision).
pub type Revision = i64;

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// One version of a key, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    /// The revision of the put that created the key (since its last delete).
    pub create_revision: Revision,
    /// The revision of the last put of the key.
    pub mod_revision: Revision,
    /// How many puts since creation, 1 for a new key.
    pub version: i64,
    pub value: Vec<u8>,
    /// The lease id, 0 for none.
    pub lease: i64,
}

/// The errors the model returns, with etcd's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MvccError {
    /// The requested revision is below the compacted revision.
    Compacted,
    /// The requested revision is above the current revision.
    FutureRev,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    KeyNotFound,
    /// An empty key in a range, put, delete or compare.
    EmptyKey,
    /// A value given together with `ignore_value`.
    ValueProvided,
    /// A lease given together with `ignore_lease`.
    LeaseProvided,
    /// A txn that writes a key twice (see [`Model::txn`]).
    DuplicateKey,
    /// A txn with more than `max_txn_ops` compares or ops on one level.
    TooManyOps,
}

impl fmt::Display for MvccError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MvccError::Compacted => "mvcc: required revision has been compacted",
            MvccError::FutureRev => "mvcc: required revision is a future revision",
            MvccError::KeyNotFound => "etcdserver: key not found",
            MvccError::EmptyKey => "etcdserver: key is not provided",
            MvccError::ValueProvided => "etcdserver: value is provided",
            MvccError::LeaseProvided => "etcdserver: lease is provided",
            MvccError::DuplicateKey => "etcdserver: duplicate key given in txn request",
            MvccError::TooManyOps => "etcdserver: too many operations in txn request",
        })
    }
}

impl std::error::Error for MvccError {}

/// The order of a range's results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Key order; but with a target other than [`SortTarget::Key`] it means ascending.
    #[default]
    None,
    Ascend,
    Descend,
}

/// What a range sorts by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// etcd's `RangeRequest`. `range_end`: empty = the one key `key`; `"\0"` = every key from
/// `key` on; otherwise the keys in `[key, range_end)`. Revisions and limits <= 0 mean "none".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub limit: i64,
    pub revision: Revision,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    /// Accepted and ignored: the model has one copy, so every read is linearizable.
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: Revision,
    pub max_mod_revision: Revision,
    pub min_create_revision: Revision,
    pub max_create_revision: Revision,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// The store's revision seen by the read (etcd's header.revision), not the one read at.
    pub revision: Revision,
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` let through.
    pub more: bool,
    /// How many keys are in the range at the revision read, regardless of `limit` and of the
    /// min/max revision filters (etcd counts before it filters).
    pub count: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    pub revision: Revision,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeRequest {
    pub key: Vec<u8>,
    /// As in [`RangeRequest::range_end`].
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeResponse {
    pub revision: Revision,
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

/// What a compare looks at, with the operand to compare it against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    Value(Vec<u8>),
    Version(i64),
    Create(Revision),
    Mod(Revision),
    Lease(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// etcd's `Compare`: true when `<field of each key in range> <result> <operand>` holds for every
/// key in the range. On a range with no keys a value compare is false and the others compare
/// 0 (version, create, mod and lease of a missing key) against the operand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    /// As in [`RangeRequest::range_end`].
    pub range_end: Vec<u8>,
    pub result: CompareResult,
    pub target: CompareTarget,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    /// The store's revision after the txn (for a nested txn: as seen after its ops).
    pub revision: Revision,
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactResponse {
    pub revision: Revision,
}

/// The model store.
#[derive(Clone, Debug)]
pub struct Model {
    /// Each key's history: revision → the key's value from that revision on, `None` for a
    /// delete (tombstone). A revision holds at most one entry per key: the last change made
    /// to the key in that revision.
    history: BTreeMap<Vec<u8>, BTreeMap<Revision, Option<KeyValue>>>,
    current: Revision,
    /// Reads below this revision fail; -1 until the first compaction, as etcd's
    /// `compactMainRev`.
    compacted: Revision,
    max_txn_ops: usize,
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

/// The keys `[key, end)` selected by a request's `key` and `range_end` (after etcd's
/// `mkGteRange`: `"\0"` becomes "no upper bound").
#[derive(Clone, Debug)]
enum KeySpan<'a> {
    One(&'a [u8]),
    From(&'a [u8]),
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeySpan<'a> {
    fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeySpan::One(key),
            [0] => KeySpan::From(key),
            end => KeySpan::Between(key, end),
        }
    }

    fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeySpan::One(key) => k == *key,
            KeySpan::From(key) => k >= *key,
            KeySpan::Between(key, end) => k >= *key && k < *end,
        }
    }
}

/// The state of one write txn (a standalone put or delete is a txn of one op): every write
/// goes to revision `begin + 1`; reads see `begin`, or `begin + 1` once something changed.
struct WriteCtx {
    begin: Revision,
    changed: bool,
    /// Keys written, to undo the txn if it fails part-way.
    touched: BTreeSet<Vec<u8>>,
}

impl WriteCtx {
    fn view(&self) -> Revision {
        if self.changed {
            self.begin + 1
        } else {
            self.begin
        }
    }
}

impl Model {
    /// An empty store at revision 1, etcd's starting revision.
    pub fn new() -> Self {
        Model { history: BTreeMap::new(), current: 1, compacted: -1, max_txn_ops: DEFAULT_MAX_TXN_OPS }
    }

    /// The same with another limit on ops per txn level (etcd's `--max-txn-ops`).
    pub fn with_max_txn_ops(max_txn_ops: usize) -> Self {
        Model { max_txn_ops, ..Model::new() }
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.current
    }

    /// The revision of the last compaction, or -1 if there was none.
    pub fn compacted_revision(&self) -> Revision {
        self.compacted
    }

    /// The revisions kept for `key` (tombstones included), oldest first; shows what a
    /// compaction dropped.
    pub fn kept_revisions(&self, key: &[u8]) -> Vec<Revision> {
        self.history.get(key).map(|h| h.keys().copied().collect()).unwrap_or_default()
    }

    /// The live value of `key` at `rev`.
    fn get_at(&self, key: &[u8], rev: Revision) -> Option<&KeyValue> {
        self.history.get(key)?.range(..=rev).next_back()?.1.as_ref()
    }

    /// The keys live at `rev` in `span`, in key order.
    fn live_at(&self, span: &KeySpan<'_>, rev: Revision) -> Vec<&KeyValue> {
        let found = |(_, h): (&Vec<u8>, &BTreeMap<Revision, Option<KeyValue>>)| {
            h.range(..=rev).next_back().and_then(|(_, v)| v.as_ref())
        };
        match span {
            KeySpan::One(key) => self.get_at(key, rev).into_iter().collect(),
            KeySpan::From(key) => self.history.range(key.to_vec()..).filter_map(found).collect(),
            KeySpan::Between(key, end) if key < end => {
                self.history.range(key.to_vec()..end.to_vec()).filter_map(found).collect()
            }
            KeySpan::Between(..) => Vec::new(),
        }
    }

    // ----- Range -----

    /// A range outside any txn.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        self.range_in_view(req, self.current)
    }

    /// etcd's `applierV3backend.Range` over mvcc's `rangeKeys`, reading a store whose current
    /// revision is `cur` (inside a txn: the txn's view).
    fn range_in_view(&self, req: &RangeRequest, cur: Revision) -> Result<RangeResponse, MvccError> {
        if req.revision > cur {
            return Err(MvccError::FutureRev);
        }
        let rev = if req.revision <= 0 { cur } else { req.revision };
        if rev < self.compacted {
            return Err(MvccError::Compacted);
        }
        let all = self.live_at(&KeySpan::new(&req.key, &req.range_end), rev);
        let count = all.len() as i64;
        if req.count_only {
            return Ok(RangeResponse { revision: cur, kvs: Vec::new(), more: false, count });
        }
        // etcd fetches everything when it sorts or filters, else limit + 1 keys in key order
        // (so a target other than KEY with order NONE sorts only those).
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let fetch = if req.sort_order != SortOrder::None || filtered || req.limit <= 0 {
            all.len()
        } else {
            usize::try_from(req.limit.saturating_add(1)).unwrap_or(usize::MAX)
        };
        let mut kvs: Vec<KeyValue> = all
            .into_iter()
            .take(fetch)
            .filter(|kv| req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            .filter(|kv| req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            .filter(|kv| req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
            .filter(|kv| req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
            .cloned()
            .collect();
        let order = match (req.sort_order, req.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (order, _) => order,
        };
        if order != SortOrder::None {
            let by = |a: &KeyValue, b: &KeyValue| -> Ordering {
                match req.sort_target {
                    SortTarget::Key => a.key.cmp(&b.key),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                    SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                    SortTarget::Value => a.value.cmp(&b.value),
                }
            };
            if order == SortOrder::Descend {
                kvs.sort_by(|a, b| by(b, a));
            } else {
                kvs.sort_by(by);
            }
        }
        let mut more = false;
        if let Ok(limit) = usize::try_from(req.limit) {
            if limit > 0 && kvs.len() > limit {
                kvs.truncate(limit);
                more = true;
            }
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse { revision: cur, kvs, more, count })
    }

    // ----- Put and DeleteRange -----

    /// A put outside any txn: always one new revision.
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        check_put(req)?;
        let mut ctx = self.begin_write();
        let res = self.put_in(&mut ctx, req);
        self.finish(ctx, res)
    }

    /// A delete outside any txn: one new revision if it deleted a key, else none.
    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let mut ctx = self.begin_write();
        let res = Ok(self.delete_in(&mut ctx, req));
        self.finish(ctx, res)
    }

    fn begin_write(&self) -> WriteCtx {
        WriteCtx { begin: self.current, changed: false, touched: BTreeSet::new() }
    }

    /// Commits the txn's writes if `res` is Ok and something changed; undoes them otherwise.
    fn finish<T>(&mut self, ctx: WriteCtx, res: Result<T, MvccError>) -> Result<T, MvccError> {
        if res.is_ok() {
            self.current = ctx.view();
        } else {
            let rev = ctx.begin + 1;
            for key in ctx.touched {
                if let Some(h) = self.history.get_mut(&key) {
                    h.remove(&rev);
                    if h.is_empty() {
                        self.history.remove(&key);
                    }
                }
            }
        }
        res
    }

    /// etcd's `applierV3backend.Put` over mvcc's `storeTxnWrite.put`.
    fn put_in(&mut self, ctx: &mut WriteCtx, req: &PutRequest) -> Result<PutResponse, MvccError> {
        let prev = self.get_at(&req.key, ctx.view()).cloned();
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let rev = ctx.begin + 1;
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev, 1),
        };
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision,
            mod_revision: rev,
            version,
            value: match (&prev, req.ignore_value) {
                (Some(p), true) => p.value.clone(),
                _ => req.value.clone(),
            },
            lease: match (&prev, req.ignore_lease) {
                (Some(p), true) => p.lease,
                _ => req.lease,
            },
        };
        self.history.entry(req.key.clone()).or_default().insert(rev, Some(kv));
        ctx.changed = true;
        ctx.touched.insert(req.key.clone());
        Ok(PutResponse { revision: ctx.view(), prev_kv: if req.prev_kv { prev } else { None } })
    }

    /// etcd's `applierV3backend.DeleteRange` over mvcc's `storeTxnWrite.deleteRange`: puts a
    /// tombstone on every key live in the txn's view.
    fn delete_in(&mut self, ctx: &mut WriteCtx, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let span = KeySpan::new(&req.key, &req.range_end);
        let gone: Vec<KeyValue> = self.live_at(&span, ctx.view()).into_iter().cloned().collect();
        let rev = ctx.begin + 1;
        for kv in &gone {
            self.history.entry(kv.key.clone()).or_default().insert(rev, None);
            ctx.touched.insert(kv.key.clone());
            ctx.changed = true;
        }
        DeleteRangeResponse {
            revision: ctx.view(),
            deleted: gone.len() as i64,
            prev_kvs: if req.prev_kv { gone } else { Vec::new() },
        }
    }

    // ----- Txn -----

    /// A txn, checked and applied as etcd 3.4 does:
    /// 1. statically, over both branches at every level: at most `max_txn_ops` compares,
    ///    success ops or failure ops on the top level (a nested level gets what its parent
    ///    left); no empty key; no value/lease with `ignore_value`/`ignore_lease`;
    /// 2. statically, etcd's `checkIntervals` on `success` and on `failure`: refused if a put's
    ///    key is put again or falls under a delete on the same branch (nested txns included;
    ///    a key put in both branches of one nested txn is fine). Deletes may overlap deletes.
    ///    As in etcd, a put in an earlier nested txn under a delete in a later sibling nested
    ///    txn is not caught, and a from-key delete (`range_end` "\0") catches no put;
    /// 3. all compares, nested ones too, are decided on the store as it was before the txn;
    /// 4. on the branches taken: `ignore_*` puts on missing keys and ranges at compacted or
    ///    future revisions (again against the store before the txn) fail the whole txn;
    /// 5. the ops run in order; reads see the txn's earlier writes; all writes are one new
    ///    revision, and a txn that changed nothing does not create one.
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        check_txn(req, self.max_txn_ops)?;
        check_intervals(&req.success)?;
        check_intervals(&req.failure)?;
        let before = self.current;
        self.check_taken_puts(req, before)?;
        self.check_taken_ranges(req, before)?;
        let mut ctx = self.begin_write();
        let res = self.txn_in(&mut ctx, req);
        let mut resp = self.finish(ctx, res)?;
        resp.revision = self.current;
        Ok(resp)
    }

    fn compares_hold(&self, compares: &[Compare], rev: Revision) -> bool {
        compares.iter().all(|c| self.compare_holds(c, rev))
    }

    /// etcd's `applyCompare`.
    fn compare_holds(&self, c: &Compare, rev: Revision) -> bool {
        let kvs = self.live_at(&KeySpan::new(&c.key, &c.range_end), rev);
        if kvs.is_empty() {
            if matches!(c.target, CompareTarget::Value(_)) {
                return false;
            }
            return compare_kv(c, &KeyValue::default());
        }
        kvs.into_iter().all(|kv| compare_kv(c, kv))
    }

    fn taken<'r>(&self, req: &'r TxnRequest, before: Revision) -> &'r [RequestOp] {
        if self.compares_hold(&req.compare, before) {
            &req.success
        } else {
            &req.failure
        }
    }

    /// etcd's `checkRequestPut` over the taken path.
    fn check_taken_puts(&self, req: &TxnRequest, before: Revision) -> Result<(), MvccError> {
        for op in self.taken(req, before) {
            match op {
                RequestOp::Put(p) if (p.ignore_value || p.ignore_lease) && self.get_at(&p.key, before).is_none() => {
                    return Err(MvccError::KeyNotFound)
                }
                RequestOp::Txn(t) => self.check_taken_puts(t, before)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// etcd's `checkRequestRange` over the taken path.
    fn check_taken_ranges(&self, req: &TxnRequest, before: Revision) -> Result<(), MvccError> {
        for op in self.taken(req, before) {
            match op {
                RequestOp::Range(r) if r.revision > before => return Err(MvccError::FutureRev),
                RequestOp::Range(r) if r.revision != 0 && r.revision < self.compacted => {
                    return Err(MvccError::Compacted)
                }
                RequestOp::Txn(t) => self.check_taken_ranges(t, before)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn txn_in(&mut self, ctx: &mut WriteCtx, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let succeeded = self.compares_hold(&req.compare, ctx.begin);
        let ops = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range_in_view(r, ctx.view())?),
                RequestOp::Put(p) => ResponseOp::Put(self.put_in(ctx, p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete_in(ctx, d)),
                RequestOp::Txn(t) => ResponseOp::Txn(self.txn_in(ctx, t)?),
            });
        }
        Ok(TxnResponse { revision: ctx.view(), succeeded, responses })
    }

    // ----- Compaction -----

    /// etcd's `Compact`: afterwards reads below `rev` fail with [`MvccError::Compacted`]. Each
    /// key keeps its newest entry at or below `rev` unless that is a tombstone, and all its
    /// entries above `rev`; a key left with nothing is gone. Reads at `rev` or later see the
    /// same as before.
    pub fn compact(&mut self, rev: Revision) -> Result<CompactResponse, MvccError> {
        if rev <= self.compacted {
            return Err(MvccError::Compacted);
        }
        if rev > self.current {
            return Err(MvccError::FutureRev);
        }
        self.history.retain(|_, h| {
            let newest_at_or_below = h.range(..=rev).next_back().map(|(r, v)| (*r, v.is_some()));
            if let Some((kept, live)) = newest_at_or_below {
                let mut later = h.split_off(&kept);
                if !live {
                    later.remove(&kept);
                }
                *h = later;
            }
            !h.is_empty()
        });
        self.compacted = rev;
        Ok(CompactResponse { revision: self.current })
    }
}

/// etcd's `compareKV`.
fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match &c.target {
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Version(n) => kv.version.cmp(n),
        CompareTarget::Create(n) => kv.create_revision.cmp(n),
        CompareTarget::Mod(n) => kv.mod_revision.cmp(n),
        CompareTarget::Lease(n) => kv.lease.cmp(n),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

/// etcd's `checkPutRequest`.
fn check_put(req: &PutRequest) -> Result<(), MvccError> {
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
fn check_txn(req: &TxnRequest, max_ops: usize) -> Result<(), MvccError> {
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

/// etcd's `checkIntervals` for one list of ops: returns the keys put and the deletes in it
/// (nested txns included), or [`MvccError::DuplicateKey`].
fn check_intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<DeleteSpan>), MvccError> {
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
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
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
