//! The key index of the store's format 2, in memory: for each key, the revisions at which the
//! `hist` table holds a record of it, oldest first, each with its place in that revision (`sub`)
//! and whether it is a tombstone. etcd keeps the same in its `treeIndex`, and keys its bbolt
//! bucket by revision for the same reason: a batch of puts then appends to the end of one table
//! instead of rewriting one B-tree leaf per key (`benches/store_apply.rs`, DESIGN.md §3).
//!
//! The index is persistent (imbl's B-tree map shares its nodes between copies, and a key's
//! versions are one entry inline or a shared deque copied on its first change in a copy), so a
//! copy costs O(1): a read view keeps the copy that matches its database snapshot while the
//! writer changes its own. The index is rebuilt from `hist` when the store is opened.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::VecDeque;
use std::ops::{Bound, Deref};
use std::sync::Arc;

use imbl::OrdMap;

use super::check::KeySpan;
use super::types::Revision;

/// Where one version of a key is: `hist` row `(main, sub)`; and, for a live version, its create
/// revision and version, as its record holds them (etcd's `keyIndex` keeps both in its
/// generations), so that a put or a compare on those fields needs no read of the row. A
/// tombstone has 0 for both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub main: Revision,
    pub create: Revision,
    pub version: i64,
    pub sub: u32,
    pub tombstone: bool,
}

impl Entry {
    /// A placeholder, never stored.
    const NONE: Entry = Entry { main: 0, create: 0, version: 0, sub: 0, tombstone: true };

    /// The tombstone at row `(main, sub)`.
    pub(crate) fn tombstone(main: Revision, sub: u32) -> Entry {
        Entry { main, create: 0, version: 0, sub, tombstone: true }
    }

    /// The live version at row `(main, sub)`, created at `create`, the `version`th of its
    /// generation.
    pub(crate) fn live(main: Revision, sub: u32, create: Revision, version: i64) -> Entry {
        Entry { main, create, version, sub, tombstone: false }
    }
}

/// A key's versions, oldest first; never empty while the key is in the index. One version (most
/// keys, once compacted) is held inline. A few (up to `LONG`) are a deque shared between copies
/// of the index, copied when one copy changes it (32 bytes a version). A long history (a key put
/// again and again between compactions: a lock, a lease holder's record, a counter) is a
/// persistent vector, whose copy on change takes one chunk of it: a deque there would make every
/// batch that changes the key copy all its history, so a put would cost more the longer the key
/// went without compaction (`benches/store_apply.rs`, `mvcc_apply_hot_key`). Short histories stay
/// deques, which hold what they need, where the vector keeps chunks of 64 versions. The vector is
/// behind a shared pointer as the deque is, so every form takes the room of one version in the
/// index's nodes (the vector itself takes 64 bytes), which a batch copies and a read walks.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Versions {
    One(Entry),
    /// Two to `LONG`.
    Few(Arc<VecDeque<Entry>>),
    /// More than `SHORT`.
    Long(Arc<imbl::Vector<Entry>>),
}

/// A history longer than this is a persistent vector ...
pub(crate) const LONG: usize = 128;
/// ... until compaction leaves this many versions or fewer.
const SHORT: usize = 64;

impl Versions {
    /// The versions, oldest first.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &Entry> {
        let (head, long) = match self {
            Versions::One(e) => ((std::slice::from_ref(e), &[][..]), None),
            Versions::Few(d) => (d.as_slices(), None),
            Versions::Long(v) => ((&[][..], &[][..]), Some(v.iter())),
        };
        head.0.iter().chain(head.1.iter()).chain(long.into_iter().flatten())
    }

    fn len(&self) -> usize {
        match self {
            Versions::One(_) => 1,
            Versions::Few(d) => d.len(),
            Versions::Long(v) => v.len(),
        }
    }

    fn last(&self) -> Entry {
        match self {
            Versions::One(e) => *e,
            // Few and Long hold two or more.
            Versions::Few(d) => d.back().copied().unwrap_or(Entry::NONE),
            Versions::Long(v) => v.back().copied().unwrap_or(Entry::NONE),
        }
    }

    fn first(&self) -> Entry {
        match self {
            Versions::One(e) => *e,
            Versions::Few(d) => d.front().copied().unwrap_or(Entry::NONE),
            Versions::Long(v) => v.front().copied().unwrap_or(Entry::NONE),
        }
    }

    fn set_last(&mut self, entry: Entry) {
        let last = match self {
            Versions::One(e) => Some(e),
            Versions::Few(d) => Arc::make_mut(d).back_mut(),
            Versions::Long(v) => Arc::make_mut(v).back_mut(),
        };
        if let Some(last) = last {
            *last = entry;
        }
    }

    fn push(&mut self, entry: Entry) {
        match self {
            Versions::One(e) => *self = Versions::Few(Arc::new(VecDeque::from([*e, entry]))),
            Versions::Few(d) if d.len() >= LONG => {
                let mut long: imbl::Vector<Entry> = d.iter().copied().collect();
                long.push_back(entry);
                *self = Versions::Long(Arc::new(long));
            }
            Versions::Few(d) => Arc::make_mut(d).push_back(entry),
            Versions::Long(v) => Arc::make_mut(v).push_back(entry),
        }
    }

    /// Without its first (`front`) or last version; `None` when that was the only one.
    fn without(self, front: bool) -> Option<Versions> {
        let rest = match self {
            Versions::One(_) => return None,
            Versions::Few(mut d) => {
                let deque = Arc::make_mut(&mut d);
                if front {
                    deque.pop_front();
                } else {
                    deque.pop_back();
                }
                Versions::Few(d)
            }
            Versions::Long(mut v) => {
                let vector = Arc::make_mut(&mut v);
                if front {
                    vector.pop_front();
                } else {
                    vector.pop_back();
                }
                Versions::Long(v)
            }
        };
        Some(match rest.len() {
            1 => Versions::One(rest.first()),
            n if n <= SHORT && matches!(rest, Versions::Long(_)) => {
                Versions::Few(Arc::new(rest.iter().copied().collect()))
            }
            _ => rest,
        })
    }
}

/// A key as the index holds it: its bytes in the entry itself when they fit (`INLINE` bytes or
/// fewer), else shared. The index's B-tree nodes hold their entries side by side, so a short key
/// is compared, copied (a batch's first change under a node copies the node the published index
/// shares) and dropped with the node, where a shared key is a pointer to follow on every
/// comparison, and an atomic count to raise on every copy and lower on every drop: on 100,000
/// keys those were most of the index's cost (DESIGN.md §5, stop 61). Long keys (Kubernetes'
/// `/registry/...` paths) stay shared, as every key was before: copying them would cost more
/// than counting them. Either way it reads as the key's bytes, and orders as they do.
#[derive(Clone)]
pub(crate) struct IndexKey(Repr);

/// `IndexKey`'s two forms; `Inline`'s `len` is at most `INLINE` (`IndexKey::from`).
#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<[u8]>),
}

/// The longest key held inline: what fits in the 24 bytes that a shared key takes with the
/// variant's tag and the length.
pub(crate) const INLINE: usize = 22;

impl From<&[u8]> for IndexKey {
    fn from(key: &[u8]) -> IndexKey {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= INLINE => {
                let mut bytes = [0u8; INLINE];
                bytes[..key.len()].copy_from_slice(key);
                IndexKey(Repr::Inline { len, bytes })
            }
            _ => IndexKey(Repr::Shared(Arc::from(key))),
        }
    }
}

impl Deref for IndexKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            // `len` is at most INLINE (`from`); `get` keeps a wrong one from panicking.
            Repr::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(bytes),
            Repr::Shared(key) => key,
        }
    }
}

impl Borrow<[u8]> for IndexKey {
    fn borrow(&self) -> &[u8] {
        self
    }
}

impl PartialEq for IndexKey {
    fn eq(&self, other: &IndexKey) -> bool {
        **self == **other
    }
}

impl Eq for IndexKey {}

impl PartialOrd for IndexKey {
    fn partial_cmp(&self, other: &IndexKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IndexKey {
    fn cmp(&self, other: &IndexKey) -> Ordering {
        (**self).cmp(&**other)
    }
}

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self))
    }
}

/// The key index (see the module's documentation). `commit` is the number of the database
/// commit it matches (the `mvcc` table's `commit`), checked whenever a copy is paired with a
/// database transaction.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct KeyIndex {
    keys: OrdMap<IndexKey, Versions>,
    pub(crate) commit: i64,
}

/// The newest of `versions` at or below `rev`.
pub(crate) fn newest_in(versions: &Versions, rev: Revision) -> Option<Entry> {
    /// The newest of versions in revision order, at or below `rev`: `at(i)` is the `i`th of
    /// them, `search` a binary search by revision.
    fn newest(
        last: Option<&Entry>,
        rev: Revision,
        search: impl FnOnce() -> Result<usize, usize>,
        at: impl Fn(usize) -> Option<Entry>,
    ) -> Option<Entry> {
        match last {
            None => return None,
            Some(last) if last.main <= rev => return Some(*last),
            Some(_) => {}
        }
        match search() {
            Ok(i) => at(i),
            Err(0) => None,
            Err(i) => at(i - 1),
        }
    }
    match versions {
        Versions::One(e) => (e.main <= rev).then_some(*e),
        Versions::Few(d) => newest(d.back(), rev, || d.binary_search_by(|e| e.main.cmp(&rev)), |i| d.get(i).copied()),
        Versions::Long(v) => newest(v.back(), rev, || v.binary_search_by(|e| e.main.cmp(&rev)), |i| v.get(i).copied()),
    }
}

impl KeyIndex {
    /// How many keys have a version (a tombstone counts until compaction reclaims it).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The most versions any key holds (for tests).
    #[cfg(test)]
    pub(crate) fn longest(&self) -> usize {
        self.keys.values().map(Versions::len).max().unwrap_or(0)
    }

    /// The newest version of `key` at or below `rev`.
    pub(crate) fn newest(&self, key: &[u8], rev: Revision) -> Option<Entry> {
        self.keys.get(key).and_then(|v| newest_in(v, rev))
    }

    /// The versions of the keys in `span`, in key order.
    pub(crate) fn span<'a>(
        &'a self,
        span: &KeySpan<'_>,
    ) -> Box<dyn Iterator<Item = (&'a IndexKey, &'a Versions)> + 'a> {
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = match *span {
            KeySpan::One(key) => (Bound::Included(key), Bound::Included(key)),
            KeySpan::From(key) => (Bound::Included(key), Bound::Unbounded),
            KeySpan::Between(key, end) if key < end => (Bound::Included(key), Bound::Excluded(end)),
            KeySpan::Between(..) => return Box::new(std::iter::empty()),
        };
        Box::new(self.keys.range::<_, [u8]>(bounds))
    }

    /// Every key's versions, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&IndexKey, &Versions)> {
        self.keys.iter()
    }

    /// Records a version of `key` at `entry.main`. A version already at that revision (the key
    /// changed twice in one txn) is replaced, keeping its `sub`. Returns the entry recorded and
    /// the one it replaced, if any. Revisions only grow: an entry below the key's newest is
    /// refused (`None`).
    pub(crate) fn record(&mut self, key: &[u8], entry: Entry) -> Option<(Entry, Option<Entry>)> {
        self.record_with(key, |_| entry)
    }

    /// `record` of the entry that `make` gives from the key's versions as they are (`None`: the
    /// key has none), in one walk of the index for a key it holds, where a lookup and then a
    /// `record` take two (a new key costs the walk that misses and the insert, as `record`
    /// always did): a put's create revision and version come from the newest version before it
    /// (`Writer::put`).
    pub(crate) fn record_with(
        &mut self,
        key: &[u8],
        make: impl FnOnce(Option<&Versions>) -> Entry,
    ) -> Option<(Entry, Option<Entry>)> {
        match self.keys.get_mut(key) {
            Some(versions) => {
                let entry = make(Some(versions));
                let last = versions.last();
                if last.main == entry.main {
                    let kept = Entry { sub: last.sub, ..entry };
                    versions.set_last(kept);
                    Some((kept, Some(last)))
                } else if last.main > entry.main {
                    None
                } else {
                    versions.push(entry);
                    Some((entry, None))
                }
            }
            None => {
                let entry = make(None);
                self.keys.insert(IndexKey::from(key), Versions::One(entry));
                Some((entry, None))
            }
        }
    }

    /// Undoes a `record` of `key` that returned `replaced`: puts back the version it replaced,
    /// or drops the one it added.
    pub(crate) fn unrecord(&mut self, key: &[u8], replaced: Option<Entry>) {
        match replaced {
            Some(previous) => {
                if let Some(versions) = self.keys.get_mut(key) {
                    versions.set_last(previous);
                }
            }
            None => self.drop_end(key, false),
        }
    }

    fn drop_end(&mut self, key: &[u8], front: bool) {
        let Some(versions) = self.keys.get_mut(key) else { return };
        let placeholder = Versions::One(Entry::NONE);
        match std::mem::replace(versions, placeholder).without(front) {
            Some(rest) => *versions = rest,
            None => {
                self.keys.remove(key);
            }
        }
    }

    /// Drops the oldest version of `key`, which must be the one at `main` (compaction reclaims
    /// in revision order); the key leaves the index with its last version. False if the oldest
    /// version is not that one.
    pub(crate) fn drop_oldest(&mut self, key: &[u8], main: Revision) -> bool {
        match self.keys.get(key) {
            Some(versions) if versions.first().main == main => {
                self.drop_end(key, true);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(main: Revision, tombstone: bool) -> Entry {
        if tombstone {
            Entry::tombstone(main, 0)
        } else {
            Entry::live(main, 0, 1, main)
        }
    }

    #[test]
    fn the_newest_version_at_a_revision_is_found_among_many() {
        let mut idx = KeyIndex::default();
        for main in (2..200).step_by(3) {
            assert!(idx.record(b"k", e(main, main % 2 == 0)).is_some());
        }
        assert_eq!(idx.newest(b"k", 1), None);
        assert_eq!(idx.newest(b"k", 2), Some(e(2, true)));
        assert_eq!(idx.newest(b"k", 4), Some(e(2, true)));
        assert_eq!(idx.newest(b"k", 5), Some(e(5, false)));
        assert_eq!(idx.newest(b"k", 1000), Some(e(197, false)));
        assert_eq!(idx.newest(b"other", 1000), None);
        // Only forward: a version below the newest is refused.
        assert_eq!(idx.record(b"k", e(100, false)), None);
    }

    #[test]
    fn a_second_change_in_one_revision_replaces_the_first_and_keeps_its_place() {
        let mut idx = KeyIndex::default();
        idx.record(b"k", e(2, false));
        let first = Entry::live(4, 7, 2, 2);
        idx.record(b"k", first);
        let kept = Entry::tombstone(4, 7);
        assert_eq!(idx.record(b"k", Entry::tombstone(4, 9)), Some((kept, Some(first))));
        assert_eq!(idx.newest(b"k", 4), Some(kept));
        idx.unrecord(b"k", Some(first));
        assert_eq!(idx.newest(b"k", 4), Some(first));
        idx.unrecord(b"k", None);
        assert_eq!(idx.newest(b"k", 4), Some(e(2, false)));
        idx.unrecord(b"k", None);
        assert_eq!(idx.len(), 0);
    }

    #[test]
    fn a_copy_does_not_see_later_changes() {
        let mut idx = KeyIndex::default();
        idx.record(b"a", e(2, false));
        let copy = idx.clone();
        idx.record(b"a", e(3, true));
        idx.record(b"b", e(3, false));
        assert!(idx.drop_oldest(b"a", 2));
        assert_eq!(copy.newest(b"a", 10), Some(e(2, false)));
        assert_eq!(copy.len(), 1);
        assert_eq!(idx.newest(b"a", 2), None);
        assert_eq!(idx.len(), 2);
    }

    #[test]
    fn keys_inline_and_shared_order_and_read_as_their_bytes() {
        // A shared key is 16 bytes; the inline form must not make an entry larger than 24. A
        // key's versions take the room of one version (`Versions`).
        assert_eq!(std::mem::size_of::<IndexKey>(), 24);
        assert_eq!(std::mem::size_of::<Versions>(), std::mem::size_of::<Entry>());
        // Keys of every length up to past the inline limit, many with a common prefix, so that
        // inline keys meet shared ones in the order.
        let mut rng = crate::base::rng::Rng::new(61);
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for len in 0..=(INLINE + 10) {
            keys.push(vec![b'k'; len]);
            keys.push((0..len).map(|_| rng.range(0, 3) as u8).collect());
            keys.push((0..len).map(|i| if i + 1 == len { 0xff } else { b'k' }).collect());
        }
        let mut idx = KeyIndex::default();
        for (i, k) in keys.iter().enumerate() {
            let stored = IndexKey::from(&k[..]);
            assert_eq!(&*stored, &k[..]);
            assert_eq!(matches!(stored.0, Repr::Inline { .. }), k.len() <= INLINE, "{k:?}");
            idx.record(k, e(i as Revision + 1, false));
        }
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        let held: Vec<Vec<u8>> = idx.iter().map(|(k, _)| k.to_vec()).collect();
        assert_eq!(held, sorted);
        for k in &keys {
            assert!(idx.newest(k, Revision::MAX).is_some(), "{k:?} is found by its bytes");
        }
        for (a, b) in sorted.iter().zip(sorted.iter().skip(1)) {
            let (ka, kb) = (IndexKey::from(&a[..]), IndexKey::from(&b[..]));
            assert_eq!(ka.cmp(&kb), Ordering::Less, "{a:?} < {b:?}");
            assert!(ka != kb && ka == IndexKey::from(&a[..]));
        }
    }

    #[test]
    fn spans_are_in_key_order_and_bounded() {
        let mut idx = KeyIndex::default();
        for (i, k) in [&b"b"[..], b"a", b"a\0", b"c", b"\xff"].iter().enumerate() {
            idx.record(k, e(i as Revision + 2, false));
        }
        let keys = |span: KeySpan<'_>| idx.span(&span).map(|(k, _)| k.to_vec()).collect::<Vec<_>>();
        assert_eq!(keys(KeySpan::One(b"a")), vec![b"a".to_vec()]);
        assert_eq!(keys(KeySpan::One(b"zz")), Vec::<Vec<u8>>::new());
        assert_eq!(keys(KeySpan::From(b"b")), vec![b"b".to_vec(), b"c".to_vec(), b"\xff".to_vec()]);
        assert_eq!(keys(KeySpan::Between(b"a", b"b")), vec![b"a".to_vec(), b"a\0".to_vec()]);
        assert_eq!(keys(KeySpan::Between(b"c", b"a")), Vec::<Vec<u8>>::new());
    }

    /// A history grown past `LONG` (a persistent vector), changed in copies, compacted back to
    /// a few versions and to one: every form answers as a plain list of the same versions, and a
    /// copy never sees what is done to another.
    #[test]
    fn a_long_history_answers_as_a_short_one_through_every_form_and_copy() {
        fn form(idx: &KeyIndex) -> &'static str {
            match idx.keys.get(&b"k"[..]) {
                Some(Versions::One(_)) => "one",
                Some(Versions::Few(_)) => "few",
                Some(Versions::Long(_)) => "long",
                None => "none",
            }
        }
        fn check(idx: &KeyIndex, model: &[Entry]) {
            let held: Vec<Entry> = idx.keys.get(&b"k"[..]).map(|v| v.iter().copied().collect()).unwrap_or_default();
            assert_eq!(held, model);
            let reversed: Vec<Entry> =
                idx.keys.get(&b"k"[..]).map(|v| v.iter().rev().copied().collect()).unwrap_or_default();
            assert_eq!(reversed, model.iter().rev().copied().collect::<Vec<_>>());
            let top = model.last().map_or(0, |e| e.main) + 2;
            for rev in 0..=top {
                let want = model.iter().rev().find(|e| e.main <= rev).copied();
                assert_eq!(idx.newest(b"k", rev), want, "revision {rev}");
            }
        }
        let mut idx = KeyIndex::default();
        let mut model = Vec::new();
        let mut copies = Vec::new();
        let mut main = 2;
        for n in 0..(LONG + 40) {
            let entry = e(main, n % 5 == 0);
            assert_eq!(idx.record(b"k", entry), Some((entry, None)));
            model.push(entry);
            main += 3;
            if n % 37 == 0 {
                copies.push((idx.clone(), model.clone()));
            }
        }
        assert_eq!(form(&idx), "long");
        // A second change in the revision of the last one replaces it; undone, it comes back.
        let last = *model.last().unwrap();
        let kept = Entry::tombstone(last.main, last.sub);
        assert_eq!(idx.record(b"k", Entry::tombstone(last.main, 9)), Some((kept, Some(last))));
        *model.last_mut().unwrap() = kept;
        check(&idx, &model);
        idx.unrecord(b"k", Some(last));
        *model.last_mut().unwrap() = last;
        idx.unrecord(b"k", None);
        model.pop();
        check(&idx, &model);
        // Compaction takes the oldest, through the forms.
        let mut forms = Vec::new();
        while let Some(oldest) = model.first().copied() {
            if model.len() % 17 == 0 {
                copies.push((idx.clone(), model.clone()));
            }
            assert!(idx.drop_oldest(b"k", oldest.main));
            model.remove(0);
            check(&idx, &model);
            if forms.last() != Some(&form(&idx)) {
                forms.push(form(&idx));
            }
        }
        assert_eq!(forms, ["long", "few", "one", "none"]);
        for (copy, model) in &copies {
            check(copy, model);
        }
    }

    #[test]
    fn only_the_oldest_version_is_dropped_and_the_last_takes_the_key() {
        let mut idx = KeyIndex::default();
        idx.record(b"k", e(2, false));
        idx.record(b"k", e(5, true));
        assert!(!idx.drop_oldest(b"k", 5), "not the oldest");
        assert!(!idx.drop_oldest(b"x", 2), "no such key");
        assert!(idx.drop_oldest(b"k", 2));
        assert!(idx.drop_oldest(b"k", 5));
        assert_eq!(idx.len(), 0);
    }
}
