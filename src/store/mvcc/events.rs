//! The history of changes, read back as etcd's watch events: what a watch catching up from a
//! past revision receives (etcd's unsynced watchers read the same from their key bucket).
//!
//! `revs` lists, for each revision, the keys it changed in the order of their first change;
//! `kv` holds each key's record at that revision. A read walks `revs` from a position
//! `(main, sub)` on and turns each entry in the span into an event, with the key's previous
//! version if asked. It stops at the end of the asked revisions, after `scan` entries, or once
//! the events hold `bytes` (at least one event): the caller resumes from `next`, so no read
//! holds more than its bounds in memory however long the history or large the revision.

use std::ops::Bound;

use super::check::KeySpan;
use super::engine::{key_value, newest_entry, read_state, At, ReadError, ReadView, Record, KV, READ, REVS, STATE};
use super::types::*;

/// A position in the history: `(main revision, sub)`, the `revs` entry to read next.
pub type HistoryPos = (Revision, u32);

/// How much one history read may take on.
#[derive(Clone, Copy, Debug)]
pub struct EventBounds {
    /// The most `revs` entries looked at (in the span or not).
    pub scan: usize,
    /// The most bytes of keys and values collected (at least one event is).
    pub bytes: usize,
}

/// One history read.
#[derive(Debug, PartialEq, Eq)]
pub struct EventsPage {
    /// The events found, in order.
    pub events: Vec<Event>,
    /// Where the next read starts: `(to + 1, 0)` once every asked revision was read.
    pub next: HistoryPos,
    /// The store's revision in this view.
    pub revision: Revision,
}

impl ReadView {
    /// The changes of the keys in `span` from `from` up to revision `to` (at most the view's
    /// revision), each with its previous version when `with_prev` (and that is still kept).
    /// [`MvccError::Compacted`] if `from` is at or below the compacted revision.
    pub fn events(
        &self,
        span: &KeySpan<'_>,
        from: HistoryPos,
        to: Revision,
        with_prev: bool,
        bounds: EventBounds,
    ) -> Result<EventsPage, ReadError> {
        let place = &self.place;
        let state = self.txn.open_table(STATE).at(place, READ)?;
        let (current, compacted) =
            read_state(&state, place)?.ok_or_else(|| place.corrupt("the MVCC state (revision, format) is missing"))?;
        if from.0 <= compacted {
            return Err(MvccError::Compacted.into());
        }
        let to = to.min(current);
        let mut page = EventsPage { events: Vec::new(), next: (to + 1, 0), revision: current };
        if from.0 > to {
            page.next = from;
            return Ok(page);
        }
        let revs = self.txn.open_table(REVS).at(place, READ)?;
        let kv = self.txn.open_table(KV).at(place, READ)?;
        let mut bytes = 0usize;
        let range =
            revs.range::<HistoryPos>((Bound::Included(from), Bound::Included((to, u32::MAX)))).at(place, READ)?;
        for (scanned, entry) in range.enumerate() {
            let (pos, key) = entry.at(place, READ)?;
            let (rev, sub) = pos.value();
            if scanned >= bounds.scan.max(1) || (bytes >= bounds.bytes && !page.events.is_empty()) {
                page.next = (rev, sub);
                return Ok(page);
            }
            let key = key.value();
            if !span.contains(key) {
                continue;
            }
            let record = kv.get((key, rev)).at(place, READ)?.ok_or_else(|| {
                place.corrupt(format!(
                    "revision {rev} lists key {:?}, which has no entry there",
                    String::from_utf8_lossy(key)
                ))
            })?;
            let decoded = Record::decode(record.value()).map_err(|detail| {
                place.corrupt(format!("key {:?} at revision {rev}: {detail}", String::from_utf8_lossy(key)))
            })?;
            let prev_kv = match with_prev {
                true => match newest_entry(&kv, place, key, rev - 1)? {
                    Some((r, v)) => key_value(place, key, r, v.value(), true)?,
                    None => None,
                },
                false => None,
            };
            let event = match decoded {
                Record::Tombstone => Event {
                    kind: EventKind::Delete,
                    kv: KeyValue { key: key.to_vec(), mod_revision: rev, ..KeyValue::default() },
                    prev_kv,
                },
                Record::Live { .. } => Event {
                    kind: EventKind::Put,
                    kv: key_value(place, key, rev, record.value(), true)?
                        .ok_or_else(|| place.corrupt("a live record decoded as a tombstone"))?,
                    prev_kv,
                },
            };
            bytes += event.size();
            page.events.push(event);
        }
        Ok(page)
    }
}
