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

use serde::{Deserialize, Serialize};

use super::check::{check_intervals, check_put, check_txn, KeySpan};
pub use super::types::*;

/// The model store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    /// Each key's history: revision → the key's value from that revision on, `None` for a
    /// delete (tombstone). A revision holds at most one entry per key: the last change made
    /// to the key in that revision.
    history: BTreeMap<Vec<u8>, BTreeMap<Revision, Option<KeyValue>>>,
    /// The keys each revision changed, in the order of their first change in it (what watches
    /// report); revisions at or below the compacted one are dropped.
    changed: BTreeMap<Revision, Vec<Vec<u8>>>,
    /// Leases by id.
    leases: BTreeMap<i64, Lease>,
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

/// The state of one write txn (a standalone put or delete is a txn of one op): every write
/// goes to revision `begin + 1`; reads see `begin`, or `begin + 1` once something changed.
struct WriteCtx {
    begin: Revision,
    changed: bool,
    /// Keys written, to undo the txn if it fails part-way.
    touched: BTreeSet<Vec<u8>>,
    /// The same keys in the order of their first write.
    order: Vec<Vec<u8>>,
}

impl WriteCtx {
    fn write(&mut self, key: &[u8]) {
        if self.touched.insert(key.to_vec()) {
            self.order.push(key.to_vec());
        }
        self.changed = true;
    }

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
        Model {
            history: BTreeMap::new(),
            changed: BTreeMap::new(),
            leases: BTreeMap::new(),
            current: 1,
            compacted: -1,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
        }
    }

    /// The same with another limit on ops per txn level (etcd's `--max-txn-ops`).
    pub fn with_max_txn_ops(max_txn_ops: usize) -> Self {
        Model { max_txn_ops, ..Model::new() }
    }

    /// A store at `revision` that holds `latest` (each key's current version) and no history
    /// before it: reads below `revision` get [`MvccError::Compacted`]. How a store of an
    /// earlier kuberaft, which kept only the latest versions, is carried over.
    pub fn from_latest(latest: Vec<KeyValue>, revision: Revision) -> Result<Self, String> {
        let mut model = Model { current: revision.max(1), ..Model::new() };
        model.compacted = model.current;
        for kv in latest {
            let consistent = !kv.key.is_empty()
                && kv.version >= 1
                && kv.create_revision >= 1
                && kv.create_revision <= kv.mod_revision
                && kv.mod_revision <= model.current;
            if !consistent {
                return Err(format!("key {:?} has impossible revisions", String::from_utf8_lossy(&kv.key)));
            }
            let key = kv.key.clone();
            model.history.entry(key).or_default().insert(kv.mod_revision, Some(kv));
        }
        Ok(model)
    }

    /// Whether a deserialized model keeps the invariants its operations rely on: every key has
    /// history, no revision lies beyond the current one, and a value is filed under its key
    /// and mod revision.
    pub fn check(&self) -> Result<(), String> {
        if self.current < 1 || self.compacted > self.current {
            return Err(format!("revision {} compacted at {}", self.current, self.compacted));
        }
        for (key, history) in &self.history {
            let bad = history.is_empty()
                || history.iter().any(|(rev, kv)| {
                    *rev < 1
                        || *rev > self.current
                        || kv.as_ref().is_some_and(|kv| {
                            kv.key != *key || kv.mod_revision != *rev || kv.create_revision > *rev || kv.version < 1
                        })
                });
            if bad {
                return Err(format!("key {:?} has impossible history", String::from_utf8_lossy(key)));
            }
        }
        Ok(())
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
        newest_live(self.history.get(key)?, rev)
    }

    /// The keys live at `rev` in `span`, in key order.
    fn live_at(&self, span: &KeySpan<'_>, rev: Revision) -> Vec<&KeyValue> {
        let found = |(_, h)| newest_live(h, rev);
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
        WriteCtx { begin: self.current, changed: false, touched: BTreeSet::new(), order: Vec::new() }
    }

    /// Commits the txn's writes if `res` is Ok and something changed; undoes them otherwise.
    fn finish<T>(&mut self, ctx: WriteCtx, res: Result<T, MvccError>) -> Result<T, MvccError> {
        if res.is_ok() {
            self.current = ctx.view();
            if ctx.changed {
                self.changed.insert(self.current, ctx.order);
            }
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
        // etcd's Put looks the lease up first.
        if req.lease != 0 && !self.leases.contains_key(&req.lease) {
            return Err(MvccError::LeaseNotFound);
        }
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
        ctx.write(&req.key);
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
            ctx.write(&kv.key);
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
                RequestOp::Put(p) if p.lease != 0 && !self.leases.contains_key(&p.lease) => {
                    return Err(MvccError::LeaseNotFound)
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
        self.changed = self.changed.split_off(&(rev + 1));
        Ok(CompactResponse { revision: self.current })
    }

    // ----- Leases -----

    /// etcd's lease grant, as applied: id 0 is refused (the server picks an id before it
    /// proposes), an existing id too, and a TTL over etcd's maximum.
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<(), MvccError> {
        if id == 0 {
            return Err(MvccError::LeaseNotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(MvccError::LeaseTtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(MvccError::LeaseExists);
        }
        self.leases.insert(id, Lease { id, ttl, remaining_ms: 0 });
        Ok(())
    }

    /// etcd's revoke: the lease goes, and every key whose current version carries it is
    /// deleted, in key order, as one revision (none if it had no keys). Returns the store's
    /// revision after it.
    pub fn lease_revoke(&mut self, id: i64) -> Result<Revision, MvccError> {
        if self.leases.remove(&id).is_none() {
            return Err(MvccError::LeaseNotFound);
        }
        let keys: Vec<Vec<u8>> = self
            .history
            .iter()
            .filter(|(_, h)| newest_live(h, self.current).is_some_and(|kv| kv.lease == id))
            .map(|(k, _)| k.clone())
            .collect();
        let mut ctx = self.begin_write();
        let rev = ctx.begin + 1;
        for key in keys {
            self.history.entry(key.clone()).or_default().insert(rev, None);
            ctx.write(&key);
        }
        self.finish(ctx, Ok(()))?;
        Ok(self.current)
    }

    /// etcd's checkpoint: the remaining TTL of a lease that exists (others are ignored).
    pub fn lease_checkpoint(&mut self, id: i64, remaining_ms: i64) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.remaining_ms = remaining_ms;
        }
    }

    /// Every lease, by id.
    pub fn leases(&self) -> Vec<Lease> {
        self.leases.values().copied().collect()
    }

    /// The keys whose current version carries lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        if id == 0 {
            return Vec::new();
        }
        self.history
            .iter()
            .filter(|(_, h)| newest_live(h, self.current).is_some_and(|kv| kv.lease == id))
            .map(|(k, _)| k.clone())
            .collect()
    }

    // ----- History -----

    /// The changes of the keys in `span` at revisions `from..=to` (`to` past the current
    /// revision reads to it), in revision order and, within a revision, in the order the keys
    /// were first changed in it; each with the key's previous version when it is kept. A key
    /// changed twice in one revision gives one event, its last change (see DESIGN.md §3).
    /// Refused for `from` at or below the compacted revision: that history is gone.
    pub fn events(&self, span: &KeySpan<'_>, from: Revision, to: Revision) -> Result<Vec<Event>, MvccError> {
        if from <= self.compacted {
            return Err(MvccError::Compacted);
        }
        let mut events = Vec::new();
        if from > to {
            return Ok(events);
        }
        for (rev, keys) in self.changed.range(from..=to) {
            for key in keys.iter().filter(|k| span.contains(k)) {
                let history = &self.history[key];
                let prev_kv = history.range(..*rev).next_back().and_then(|(_, kv)| kv.clone());
                let event = match &history[rev] {
                    Some(kv) => Event { kind: EventKind::Put, kv: kv.clone(), prev_kv },
                    None => Event {
                        kind: EventKind::Delete,
                        kv: KeyValue { key: key.clone(), mod_revision: *rev, ..KeyValue::default() },
                        prev_kv,
                    },
                };
                events.push(event);
            }
        }
        Ok(events)
    }
}

/// The value a key's history gives it at `rev`: `None` if it did not exist or was deleted.
fn newest_live(history: &BTreeMap<Revision, Option<KeyValue>>, rev: Revision) -> Option<&KeyValue> {
    history.range(..=rev).next_back()?.1.as_ref()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn put(m: &mut Model, k: &str, v: &str) -> Revision {
        m.put(&PutRequest { key: b(k), value: b(v), ..Default::default() }).unwrap().revision
    }

    fn put_op(k: &str, v: &str) -> RequestOp {
        RequestOp::Put(PutRequest { key: b(k), value: b(v), ..Default::default() })
    }

    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp::DeleteRange(DeleteRangeRequest { key: b(k), range_end: b(end), prev_kv: false })
    }

    fn range_op(k: &str, end: &str) -> RequestOp {
        RequestOp::Range(rq(k, end))
    }

    fn rq(k: &str, end: &str) -> RangeRequest {
        RangeRequest { key: b(k), range_end: b(end), ..Default::default() }
    }

    fn keys(r: &RangeResponse) -> Vec<String> {
        r.kvs.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()).collect()
    }

    fn get(m: &Model, k: &str) -> Option<KeyValue> {
        m.range(&rq(k, "")).unwrap().kvs.into_iter().next()
    }

    fn cmp(k: &str, result: CompareResult, target: CompareTarget) -> Compare {
        Compare { key: b(k), range_end: Vec::new(), result, target }
    }

    /// a b c d, each put once, at revisions 2..=5.
    fn abcd() -> Model {
        let mut m = Model::new();
        for k in ["a", "b", "c", "d"] {
            put(&mut m, k, k);
        }
        m
    }

    #[test]
    fn store_starts_at_revision_one_and_each_put_is_the_next_revision() {
        let mut m = Model::new();
        assert_eq!(m.revision(), 1);
        assert_eq!(put(&mut m, "a", "1"), 2);
        let kv = get(&m, "a").unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
        assert_eq!(put(&mut m, "a", "2"), 3);
        let kv = get(&m, "a").unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version, kv.value), (2, 3, 2, b("2")));
        assert_eq!(m.range(&rq("a", "")).unwrap().revision, 3);
    }

    #[test]
    fn range_end_forms() {
        let mut m = abcd();
        put(&mut m, "ab", "x");
        assert_eq!(keys(&m.range(&rq("a", "")).unwrap()), ["a"], "empty range_end is one key");
        assert_eq!(keys(&m.range(&rq("a", "b")).unwrap()), ["a", "ab"], "key+1 is a prefix");
        assert_eq!(keys(&m.range(&rq("b", "d")).unwrap()), ["b", "c"], "end is exclusive");
        assert_eq!(keys(&m.range(&rq("c", "\0")).unwrap()), ["c", "d"], "\\0 is from key on");
        assert_eq!(keys(&m.range(&rq("\0", "\0")).unwrap()), ["a", "ab", "b", "c", "d"], "both \\0 is all");
        assert!(m.range(&rq("d", "a")).unwrap().kvs.is_empty(), "an end before the key is empty");
        assert!(m.range(&rq("zz", "")).unwrap().kvs.is_empty());
        assert_eq!(m.range(&rq("", "")), Err(MvccError::EmptyKey));
        assert_eq!(MvccError::EmptyKey.to_string(), "etcdserver: key is not provided");
    }

    #[test]
    fn limit_more_and_count() {
        let m = abcd();
        let r = m.range(&RangeRequest { limit: 2, ..rq("\0", "\0") }).unwrap();
        assert_eq!((keys(&r), r.more, r.count), (vec!["a".to_string(), "b".to_string()], true, 4));
        let r = m.range(&RangeRequest { limit: 4, ..rq("\0", "\0") }).unwrap();
        assert_eq!((r.kvs.len(), r.more, r.count), (4, false, 4), "exactly limit keys: no more");
        let r = m.range(&RangeRequest { limit: 0, ..rq("\0", "\0") }).unwrap();
        assert_eq!((r.kvs.len(), r.more), (4, false), "limit 0 is no limit");
        let r = m.range(&RangeRequest { count_only: true, limit: 1, ..rq("b", "\0") }).unwrap();
        assert_eq!((r.kvs.len(), r.more, r.count), (0, false, 3));
        let r = m.range(&RangeRequest { keys_only: true, ..rq("a", "") }).unwrap();
        assert_eq!((r.kvs[0].key.clone(), r.kvs[0].value.clone(), r.kvs[0].version), (b("a"), b(""), 1));
    }

    #[test]
    fn each_sort_target_and_order() {
        let mut m = Model::new();
        put(&mut m, "b", "3"); // rev 2
        put(&mut m, "a", "1"); // rev 3
        put(&mut m, "c", "2"); // rev 4
        put(&mut m, "c", "2"); // rev 5: c version 2
        put(&mut m, "b", "3"); // rev 6: b version 2
        put(&mut m, "b", "3"); // rev 7: b version 3
        let sorted = |order, target| {
            keys(&m.range(&RangeRequest { sort_order: order, sort_target: target, ..rq("\0", "\0") }).unwrap())
        };
        use SortOrder::*;
        use SortTarget::*;
        assert_eq!(sorted(None, Key), ["a", "b", "c"]);
        assert_eq!(sorted(Ascend, Key), ["a", "b", "c"]);
        assert_eq!(sorted(Descend, Key), ["c", "b", "a"]);
        // create: b 2, a 3, c 4
        assert_eq!(sorted(Ascend, Create), ["b", "a", "c"]);
        assert_eq!(sorted(Descend, Create), ["c", "a", "b"]);
        // mod: a 3, c 5, b 7
        assert_eq!(sorted(Ascend, Mod), ["a", "c", "b"]);
        assert_eq!(sorted(Descend, Mod), ["b", "c", "a"]);
        // version: a 1, c 2, b 3
        assert_eq!(sorted(Ascend, Version), ["a", "c", "b"]);
        assert_eq!(sorted(Descend, Version), ["b", "c", "a"]);
        // value: a "1", c "2", b "3"
        assert_eq!(sorted(Ascend, Value), ["a", "c", "b"]);
        assert_eq!(sorted(Descend, Value), ["b", "c", "a"]);
        // NONE with a target other than KEY is ascending
        assert_eq!(sorted(None, Mod), ["a", "c", "b"]);
        assert_eq!(sorted(None, Create), ["b", "a", "c"]);
    }

    #[test]
    fn sort_with_limit_sorts_all_matches_but_order_none_sorts_only_the_first_limit_plus_one_keys() {
        let mut m = Model::new();
        put(&mut m, "c", "x"); // mod 2
        put(&mut m, "b", "x"); // mod 3
        put(&mut m, "a", "x"); // mod 4
        let r = m
            .range(&RangeRequest {
                sort_order: SortOrder::Ascend,
                sort_target: SortTarget::Mod,
                limit: 1,
                ..rq("\0", "\0")
            })
            .unwrap();
        assert_eq!((keys(&r), r.more), (vec!["c".to_string()], true), "ASCEND sorts every match, then limits");
        // etcd: order NONE fetches limit+1 keys in key order (a, b), sorts those by mod (b 3, a 4)
        let r = m.range(&RangeRequest { sort_target: SortTarget::Mod, limit: 1, ..rq("\0", "\0") }).unwrap();
        assert_eq!((keys(&r), r.more), (vec!["b".to_string()], true));
    }

    #[test]
    fn each_revision_filter_and_count_before_filters() {
        let mut m = abcd(); // a 2, b 3, c 4, d 5 (create = mod)
        put(&mut m, "a", "again"); // a: create 2, mod 6
        let f = |r: RangeRequest| keys(&m.range(&r).unwrap());
        let all = rq("\0", "\0");
        assert_eq!(f(RangeRequest { min_mod_revision: 4, ..all.clone() }), ["a", "c", "d"]);
        assert_eq!(f(RangeRequest { max_mod_revision: 4, ..all.clone() }), ["b", "c"]);
        assert_eq!(f(RangeRequest { min_create_revision: 4, ..all.clone() }), ["c", "d"]);
        assert_eq!(f(RangeRequest { max_create_revision: 3, ..all.clone() }), ["a", "b"]);
        assert_eq!(f(RangeRequest { min_mod_revision: 3, max_mod_revision: 5, ..all.clone() }), ["b", "c", "d"]);
        let r = m.range(&RangeRequest { min_mod_revision: 6, ..all.clone() }).unwrap();
        assert_eq!((keys(&r), r.count), (vec!["a".to_string()], 4), "count is taken before the filters");
        // a filter makes etcd fetch everything, so more is exact after filtering
        let r = m.range(&RangeRequest { min_create_revision: 3, limit: 2, ..all.clone() }).unwrap();
        assert_eq!((keys(&r), r.more), (vec!["b".to_string(), "c".to_string()], true));
        let r = m.range(&RangeRequest { min_create_revision: 4, limit: 2, ..all }).unwrap();
        assert_eq!((keys(&r), r.more), (vec!["c".to_string(), "d".to_string()], false));
    }

    #[test]
    fn reads_at_past_revisions() {
        let mut m = Model::new();
        put(&mut m, "a", "1"); // 2
        put(&mut m, "b", "1"); // 3
        put(&mut m, "a", "2"); // 4
        m.delete_range(&DeleteRangeRequest { key: b("b"), ..Default::default() }).unwrap(); // 5
        let at = |rev| m.range(&RangeRequest { revision: rev, ..rq("\0", "\0") }).unwrap();
        assert_eq!(keys(&at(1)), Vec::<String>::new());
        assert_eq!(keys(&at(2)), ["a"]);
        assert_eq!(keys(&at(3)), ["a", "b"]);
        assert_eq!(at(3).kvs[0].value, b("1"));
        assert_eq!(at(4).kvs[0].value, b("2"));
        assert_eq!(keys(&at(5)), ["a"]);
        assert_eq!(at(3).revision, 5, "the header carries the current revision, not the one read");
        assert_eq!(keys(&at(0)), ["a"], "revision 0 is the current one");
    }

    #[test]
    fn compacted_and_future_revisions_are_refused() {
        let mut m = abcd(); // rev 5
        let at = |m: &Model, rev| m.range(&RangeRequest { revision: rev, ..rq("a", "") });
        assert_eq!(at(&m, 6), Err(MvccError::FutureRev));
        assert_eq!(MvccError::FutureRev.to_string(), "mvcc: required revision is a future revision");
        m.compact(3).unwrap();
        assert_eq!(at(&m, 2), Err(MvccError::Compacted));
        assert_eq!(MvccError::Compacted.to_string(), "mvcc: required revision has been compacted");
        assert!(at(&m, 3).is_ok(), "the compacted revision itself can still be read");
        assert_eq!(m.compact(3), Err(MvccError::Compacted));
        assert_eq!(m.compact(2), Err(MvccError::Compacted));
        assert_eq!(m.compact(6), Err(MvccError::FutureRev));
        assert_eq!(m.compact(5).unwrap().revision, 5);
        assert_eq!(m.compacted_revision(), 5);
    }

    #[test]
    fn delete_is_a_tombstone_and_recreate_restarts_the_version() {
        let mut m = Model::new();
        put(&mut m, "a", "1"); // 2
        put(&mut m, "a", "2"); // 3
        let d = m.delete_range(&DeleteRangeRequest { key: b("a"), prev_kv: true, ..Default::default() }).unwrap();
        assert_eq!((d.revision, d.deleted, d.prev_kvs.len(), d.prev_kvs[0].version), (4, 1, 1, 2));
        assert_eq!(get(&m, "a"), None);
        put(&mut m, "a", "3"); // 5
        let kv = get(&m, "a").unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
        assert_eq!(m.kept_revisions(b"a".as_slice()), [2, 3, 4, 5]);
    }

    #[test]
    fn deleting_nothing_creates_no_revision_and_ranges_delete_each_key() {
        let mut m = abcd(); // rev 5
        let d = m.delete_range(&DeleteRangeRequest { key: b("x"), ..Default::default() }).unwrap();
        assert_eq!((d.deleted, d.revision, m.revision()), (0, 5, 5));
        let d = m.delete_range(&DeleteRangeRequest { key: b("b"), range_end: b("\0"), prev_kv: false }).unwrap();
        assert_eq!((d.deleted, d.revision, d.prev_kvs.len()), (3, 6, 0));
        assert_eq!(keys(&m.range(&rq("\0", "\0")).unwrap()), ["a"]);
        assert_eq!(m.delete_range(&DeleteRangeRequest::default()), Err(MvccError::EmptyKey));
    }

    #[test]
    fn put_options() {
        let mut m = Model::new();
        let ign = |k: &str| PutRequest { key: b(k), ignore_value: true, ..Default::default() };
        assert_eq!(m.put(&ign("a")), Err(MvccError::KeyNotFound));
        assert_eq!(MvccError::KeyNotFound.to_string(), "etcdserver: key not found");
        assert_eq!(m.put(&PutRequest { ignore_lease: true, ..ign("a") }), Err(MvccError::KeyNotFound));
        assert_eq!(m.revision(), 1, "a refused put changes nothing");
        let leased = PutRequest { key: b("a"), value: b("v"), lease: 7, ..Default::default() };
        assert_eq!(m.put(&leased), Err(MvccError::LeaseNotFound), "a lease must exist");
        assert_eq!(MvccError::LeaseNotFound.to_string(), "etcdserver: requested lease not found");
        m.lease_grant(7, 10).unwrap();
        m.lease_grant(9, 10).unwrap();
        assert_eq!(m.lease_grant(9, 10), Err(MvccError::LeaseExists));
        m.put(&leased).unwrap();
        let r = m.put(&PutRequest { prev_kv: true, ..ign("a") }).unwrap();
        assert_eq!(r.prev_kv.unwrap().value, b("v"));
        let kv = get(&m, "a").unwrap();
        assert_eq!((kv.value, kv.lease, kv.version), (b("v"), 0, 2), "ignore_value keeps the value only");
        m.put(&PutRequest { key: b("a"), value: b("w"), ignore_lease: true, ..Default::default() }).unwrap();
        m.put(&PutRequest { key: b("a"), lease: 9, ignore_value: true, ..Default::default() }).unwrap();
        m.put(&PutRequest { key: b("a"), value: b("z"), ignore_lease: true, ..Default::default() }).unwrap();
        let kv = get(&m, "a").unwrap();
        assert_eq!((kv.value, kv.lease), (b("z"), 9));
        let r = m.put(&PutRequest { key: b("b"), value: b("1"), prev_kv: true, ..Default::default() }).unwrap();
        assert_eq!(r.prev_kv, None);
        assert_eq!(m.put(&PutRequest { value: b("1"), ..ign("a") }), Err(MvccError::ValueProvided));
        assert_eq!(
            m.put(&PutRequest { key: b("a"), lease: 1, ignore_lease: true, ..Default::default() }),
            Err(MvccError::LeaseProvided)
        );
        assert_eq!(m.put(&PutRequest::default()), Err(MvccError::EmptyKey));
    }

    #[test]
    fn txn_writes_are_one_revision_and_reads_see_earlier_writes() {
        let mut m = abcd(); // rev 5
        let t = TxnRequest {
            compare: vec![],
            success: vec![
                range_op("a", ""),
                put_op("a", "new"),
                range_op("a", ""),
                del_op("b", ""),
                range_op("\0", "\0"),
                put_op("e", "e"),
            ],
            failure: vec![],
        };
        let r = m.txn(&t).unwrap();
        assert!(r.succeeded);
        assert_eq!(r.revision, 6);
        assert_eq!(m.revision(), 6, "all writes are one revision");
        let ResponseOp::Range(first) = &r.responses[0] else { panic!() };
        assert_eq!((first.kvs[0].value.clone(), first.revision), (b("a"), 5));
        let ResponseOp::Range(second) = &r.responses[2] else { panic!() };
        assert_eq!((second.kvs[0].value.clone(), second.revision), (b("new"), 6));
        let ResponseOp::Range(all) = &r.responses[4] else { panic!() };
        assert_eq!(keys(all), ["a", "c", "d"], "the txn's delete is seen, its later put not yet");
        for k in ["a", "e"] {
            assert_eq!(get(&m, k).unwrap().mod_revision, 6);
        }
        assert_eq!(m.kept_revisions(b"b".as_slice()), [3, 6]);
        // a txn without writes (or whose only delete deletes nothing) creates no revision
        let r = m.txn(&TxnRequest { success: vec![range_op("a", ""), del_op("zz", "")], ..Default::default() });
        assert_eq!((r.unwrap().revision, m.revision()), (6, 6));
    }

    #[test]
    fn txn_compares_pick_the_branch() {
        let mut m = abcd(); // a: create 2 mod 2 version 1 value "a"
        let run = |m: &mut Model, c: Compare| {
            m.txn(&TxnRequest { compare: vec![c], success: vec![], failure: vec![] }).unwrap().succeeded
        };
        use CompareResult::*;
        assert!(run(&mut m, cmp("a", Equal, CompareTarget::Value(b("a")))));
        assert!(!run(&mut m, cmp("a", Equal, CompareTarget::Value(b("b")))));
        assert!(run(&mut m, cmp("a", Less, CompareTarget::Value(b("b")))));
        assert!(run(&mut m, cmp("a", Greater, CompareTarget::Value(b("")))));
        assert!(run(&mut m, cmp("a", NotEqual, CompareTarget::Value(b("b")))));
        assert!(run(&mut m, cmp("a", Equal, CompareTarget::Version(1))));
        assert!(run(&mut m, cmp("b", Equal, CompareTarget::Create(3))));
        assert!(run(&mut m, cmp("b", Greater, CompareTarget::Mod(2))));
        assert!(!run(&mut m, cmp("b", Greater, CompareTarget::Mod(3))));
        assert!(run(&mut m, cmp("b", Equal, CompareTarget::Lease(0))));
        // a range compare must hold for every key in it
        let range = |c: Compare, end: &str| Compare { range_end: b(end), ..c };
        assert!(run(&mut m, range(cmp("a", Less, CompareTarget::Mod(5)), "d")));
        assert!(!run(&mut m, range(cmp("a", Less, CompareTarget::Mod(4)), "d")));
        assert!(!run(&mut m, range(cmp("a", Less, CompareTarget::Mod(5)), "\0")));
        // the chosen branch runs
        let t = TxnRequest {
            compare: vec![cmp("a", Equal, CompareTarget::Value(b("zzz")))],
            success: vec![put_op("s", "1")],
            failure: vec![put_op("f", "1")],
        };
        let r = m.txn(&t).unwrap();
        assert!(!r.succeeded);
        assert!(get(&m, "f").is_some() && get(&m, "s").is_none());
    }

    #[test]
    fn compares_on_missing_keys() {
        let mut m = abcd();
        let run = |m: &mut Model, c: Compare| {
            m.txn(&TxnRequest { compare: vec![c], ..Default::default() }).unwrap().succeeded
        };
        use CompareResult::*;
        // value on a missing key is false whatever the operator
        assert!(!run(&mut m, cmp("x", Equal, CompareTarget::Value(b("")))));
        assert!(!run(&mut m, cmp("x", NotEqual, CompareTarget::Value(b("v")))));
        // the others compare 0
        assert!(run(&mut m, cmp("x", Equal, CompareTarget::Version(0))));
        assert!(run(&mut m, cmp("x", Equal, CompareTarget::Create(0))));
        assert!(run(&mut m, cmp("x", Less, CompareTarget::Mod(1))));
        assert!(run(&mut m, cmp("x", Greater, CompareTarget::Lease(-1))));
        assert!(!run(&mut m, cmp("x", Greater, CompareTarget::Version(0))));
        // a deleted key is missing
        m.delete_range(&DeleteRangeRequest { key: b("a"), ..Default::default() }).unwrap();
        assert!(run(&mut m, cmp("a", Equal, CompareTarget::Create(0))));
        // an empty range counts as missing too
        let empty = Compare { range_end: b("y"), ..cmp("x", Equal, CompareTarget::Version(0)) };
        assert!(run(&mut m, empty));
    }

    #[test]
    fn nested_txn_compares_see_the_store_before_the_txn() {
        let mut m = abcd();
        let inner = TxnRequest {
            compare: vec![cmp("a", CompareResult::Equal, CompareTarget::Value(b("a")))],
            success: vec![put_op("inner_saw_old", "1")],
            failure: vec![put_op("inner_saw_new", "1")],
        };
        let t = TxnRequest {
            compare: vec![],
            success: vec![put_op("a", "changed"), RequestOp::Txn(inner)],
            failure: vec![],
        };
        let r = m.txn(&t).unwrap();
        assert_eq!(m.revision(), 6);
        assert!(get(&m, "inner_saw_old").is_some());
        let ResponseOp::Txn(nested) = &r.responses[1] else { panic!() };
        assert!(nested.succeeded);
    }

    #[test]
    fn txn_writing_a_key_twice_is_refused() {
        let mut m = abcd();
        let txn = |success: Vec<RequestOp>| TxnRequest { compare: vec![], success, failure: vec![] };
        let nested = |success: Vec<RequestOp>, failure: Vec<RequestOp>| {
            RequestOp::Txn(TxnRequest { compare: vec![], success, failure })
        };
        let refused = |m: &mut Model, t: TxnRequest| m.txn(&t) == Err(MvccError::DuplicateKey);
        assert!(refused(&mut m, txn(vec![put_op("a", "1"), put_op("a", "2")])));
        assert!(refused(&mut m, txn(vec![put_op("b", "1"), del_op("a", "c")])));
        assert!(refused(&mut m, txn(vec![del_op("b", ""), put_op("b", "1")])));
        assert!(refused(&mut m, txn(vec![put_op("a", "1"), nested(vec![put_op("a", "2")], vec![])])));
        assert!(
            refused(&mut m, txn(vec![put_op("a", "1"), nested(vec![], vec![put_op("a", "2")])])),
            "both branches are checked"
        );
        assert!(refused(&mut m, txn(vec![del_op("a", "b"), nested(vec![put_op("a", "2")], vec![])])));
        assert!(refused(&mut m, txn(vec![nested(vec![del_op("a", "")], vec![]), put_op("a", "2")])));
        assert!(refused(
            &mut m,
            txn(vec![nested(vec![put_op("a", "1")], vec![]), nested(vec![], vec![put_op("a", "2")])])
        ));
        // the failure list is checked on its own, too
        let t = TxnRequest { compare: vec![], success: vec![], failure: vec![put_op("a", "1"), put_op("a", "2")] };
        assert!(refused(&mut m, t));
        assert_eq!(MvccError::DuplicateKey.to_string(), "etcdserver: duplicate key given in txn request");
        assert_eq!(m.revision(), 5, "refused txns change nothing");
        // allowed: the same key in the success and the failure list, in both branches of one
        // nested txn, overlapping deletes, a put at a delete's exclusive end
        let t = TxnRequest { compare: vec![], success: vec![put_op("a", "s")], failure: vec![put_op("a", "f")] };
        assert!(m.txn(&t).is_ok());
        assert!(m.txn(&txn(vec![nested(vec![put_op("a", "1")], vec![put_op("a", "2")])])).is_ok());
        assert!(m.txn(&txn(vec![del_op("a", "c"), del_op("b", "d")])).is_ok());
        assert!(m.txn(&txn(vec![del_op("a", "c"), put_op("c", "1")])).is_ok());
    }

    #[test]
    fn what_etcd_3_4_duplicate_check_lets_through_applies_in_order() {
        let mut m = abcd(); // rev 5
                            // a from-key delete ("\0") is not seen by the check: delete then put in one revision
        let t = TxnRequest { compare: vec![], success: vec![del_op("a", "\0"), put_op("b", "new")], failure: vec![] };
        m.txn(&t).unwrap();
        assert_eq!(m.revision(), 6);
        let kv = get(&m, "b").unwrap();
        assert_eq!((kv.create_revision, kv.version, kv.value), (6, 1, b("new")), "recreated in the txn");
        assert_eq!(keys(&m.range(&rq("\0", "\0")).unwrap()), ["b"]);
        // a put in an earlier nested txn and a delete in a later one: put then delete
        let nested = |op| RequestOp::Txn(TxnRequest { compare: vec![], success: vec![op], failure: vec![] });
        let t = TxnRequest {
            compare: vec![],
            success: vec![nested(put_op("p", "1")), nested(del_op("p", ""))],
            failure: vec![],
        };
        m.txn(&t).unwrap();
        assert_eq!((m.revision(), get(&m, "p")), (7, None));
        // an ignore_value put on a key the from-key delete removed: etcd 3.4 panics; here the
        // txn fails and changes nothing
        let ign = RequestOp::Put(PutRequest { key: b("b"), ignore_value: true, ..Default::default() });
        let t = TxnRequest { compare: vec![], success: vec![del_op("a", "\0"), ign], failure: vec![] };
        assert_eq!(m.txn(&t), Err(MvccError::KeyNotFound));
        assert_eq!((m.revision(), get(&m, "b").unwrap().value), (7, b("new")));
        assert_eq!(m.kept_revisions(b"b".as_slice()), [3, 6]);
    }

    #[test]
    fn txn_checks_before_applying() {
        let mut m = abcd(); // rev 5
                            // ignore_value on a missing key, on the taken branch only
        let ign = RequestOp::Put(PutRequest { key: b("x"), ignore_value: true, ..Default::default() });
        let t = TxnRequest { compare: vec![], success: vec![put_op("a", "1"), ign.clone()], failure: vec![] };
        assert_eq!(m.txn(&t), Err(MvccError::KeyNotFound));
        let t = TxnRequest { compare: vec![], success: vec![put_op("a", "1")], failure: vec![ign] };
        assert!(m.txn(&t).is_ok());
        assert_eq!(m.revision(), 6);
        // ranges at future or compacted revisions fail the whole txn
        let at = |rev| RequestOp::Range(RangeRequest { revision: rev, ..rq("a", "") });
        let t = TxnRequest { compare: vec![], success: vec![put_op("a", "2"), at(7)], failure: vec![] };
        assert_eq!(m.txn(&t), Err(MvccError::FutureRev), "the txn's own revision is still the future");
        m.compact(4).unwrap();
        let t = TxnRequest { compare: vec![], success: vec![put_op("a", "2"), at(3)], failure: vec![] };
        assert_eq!(m.txn(&t), Err(MvccError::Compacted));
        assert_eq!((m.revision(), get(&m, "a").unwrap().value), (6, b("1")));
        // empty keys anywhere, on either branch
        let t = TxnRequest { compare: vec![], success: vec![], failure: vec![range_op("", "")] };
        assert_eq!(m.txn(&t), Err(MvccError::EmptyKey));
        let t = TxnRequest {
            compare: vec![cmp("", CompareResult::Equal, CompareTarget::Version(0))],
            ..Default::default()
        };
        assert_eq!(m.txn(&t), Err(MvccError::EmptyKey));
    }

    #[test]
    fn too_many_ops_per_txn() {
        let mut m = Model::new();
        let puts = |n: usize| (0..n).map(|i| put_op(&format!("k{i}"), "v")).collect::<Vec<_>>();
        assert!(m.txn(&TxnRequest { success: puts(DEFAULT_MAX_TXN_OPS), ..Default::default() }).is_ok());
        let t = TxnRequest { failure: puts(DEFAULT_MAX_TXN_OPS + 1), ..Default::default() };
        assert_eq!(m.txn(&t), Err(MvccError::TooManyOps));
        assert_eq!(MvccError::TooManyOps.to_string(), "etcdserver: too many operations in txn request");
        // a nested txn gets what its parent left: 2 - 1 = 1 op
        let mut m = Model::with_max_txn_ops(2);
        let nested = |n| RequestOp::Txn(TxnRequest { success: puts(n), ..Default::default() });
        assert!(m.txn(&TxnRequest { success: vec![nested(1)], ..Default::default() }).is_ok());
        assert_eq!(m.txn(&TxnRequest { success: vec![nested(2)], ..Default::default() }), Err(MvccError::TooManyOps));
    }

    #[test]
    fn compaction_keeps_the_newest_live_entry_at_or_below_and_everything_above() {
        let mut m = Model::new();
        put(&mut m, "a", "1"); // 2
        put(&mut m, "a", "2"); // 3
        put(&mut m, "b", "1"); // 4
        m.delete_range(&DeleteRangeRequest { key: b("b"), ..Default::default() }).unwrap(); // 5
        put(&mut m, "c", "1"); // 6
        m.delete_range(&DeleteRangeRequest { key: b("c"), ..Default::default() }).unwrap(); // 7
        put(&mut m, "c", "2"); // 8
        put(&mut m, "a", "3"); // 9
        let before: Vec<_> =
            (6..=9).map(|rev| m.range(&RangeRequest { revision: rev, ..rq("\0", "\0") }).unwrap()).collect();
        m.compact(7).unwrap();
        assert_eq!(m.kept_revisions(b"a".as_slice()), [3, 9], "newest at or below 7 is kept, and later ones");
        assert_eq!(m.kept_revisions(b"b".as_slice()), Vec::<Revision>::new(), "a key deleted at or below is gone");
        assert_eq!(m.kept_revisions(b"c".as_slice()), [8], "the tombstone at 7 is dropped, the later put kept");
        for (rev, was) in (6..=9).zip(before) {
            let now = m.range(&RangeRequest { revision: rev, ..rq("\0", "\0") });
            if rev < 7 {
                assert_eq!(now, Err(MvccError::Compacted));
            } else {
                assert_eq!(now.unwrap(), was, "reads at {rev} are unchanged by compaction");
            }
        }
        // recreated key keeps its create_revision and version after compaction
        let kv = get(&m, "a").unwrap();
        assert_eq!((kv.create_revision, kv.version), (2, 3));
    }

    /// A small deterministic generator (xorshift64), so the random test needs no dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }

        fn key(&mut self) -> String {
            ["a", "b", "c", "d", "e"][self.below(5) as usize].to_string()
        }
    }

    #[test]
    fn random_histories_keep_the_invariants_and_compaction_changes_no_read_at_or_above_it() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut m = Model::new();
        let all_at = |m: &Model, rev| m.range(&RangeRequest { revision: rev, ..rq("\0", "\0") });
        for step in 0..3000 {
            let before = m.revision();
            match rng.below(10) {
                0..=3 => {
                    put(&mut m, &rng.key(), &step.to_string());
                }
                4..=5 => {
                    let (k, end) = (rng.key(), if rng.below(2) == 0 { String::new() } else { rng.key() });
                    m.delete_range(&DeleteRangeRequest { key: b(&k), range_end: b(&end), prev_kv: false }).unwrap();
                }
                6..=8 => {
                    let k = rng.key();
                    let mod_rev = get(&m, &k).map_or(0, |kv| kv.mod_revision);
                    let t = TxnRequest {
                        compare: vec![cmp(&k, CompareResult::Equal, CompareTarget::Mod(mod_rev))],
                        success: vec![put_op(&k, "s"), range_op("\0", "\0")],
                        failure: vec![put_op(&k, "f")],
                    };
                    let r = m.txn(&t).unwrap();
                    assert!(r.succeeded, "a CAS on the mod revision just read succeeds");
                    assert_eq!(m.revision(), before + 1);
                }
                _ => {
                    let floor = m.compacted_revision().max(0) + 1;
                    let target = floor + rng.below((before - floor + 1).max(1) as u64) as i64;
                    if target <= before {
                        let seen: Vec<_> = (target..=before).map(|rev| all_at(&m, rev).unwrap()).collect();
                        m.compact(target).unwrap();
                        for (rev, was) in (target..=before).zip(seen) {
                            assert_eq!(all_at(&m, rev).unwrap(), was, "read at {rev} after compacting to {target}");
                        }
                        if target > 1 {
                            assert_eq!(all_at(&m, target - 1), Err(MvccError::Compacted));
                        }
                    }
                }
            }
            assert!(m.revision() - before <= 1, "one op is at most one revision");
            for kv in all_at(&m, 0).unwrap().kvs {
                assert!(kv.version >= 1 && kv.create_revision <= kv.mod_revision && kv.mod_revision <= m.revision());
            }
        }
    }
}
