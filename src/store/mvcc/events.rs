//! The history of changes, read back as etcd's watch events: what a watch catching up from a
//! past revision receives (etcd's unsynced watchers read the same from their key bucket).
//!
//! `hist` holds, for each revision, the keys it changed with their records, in the order of
//! their first change. A read walks `hist` from a position `(main, sub)` on and turns each row
//! of a key in the span into an event, with the key's previous version (from the key index) if
//! asked. It stops at the end of the asked revisions, after `scan` entries, or once
//! the events hold `bytes` (at least one event): the caller resumes from `next`, so no read
//! holds more than its bounds in memory however long the history or large the revision.

use std::ops::Bound;

use super::check::KeySpan;
use super::engine::{
    key_value, newest_entry, read_state, split_row, At, Hist, ReadError, ReadView, Record, HIST, READ, STATE,
};
use super::types::*;

/// A position in the history: `(main revision, sub)`, the `hist` row to read next.
pub type HistoryPos = (Revision, u32);

/// How much one history read may take on.
#[derive(Clone, Copy, Debug)]
pub struct EventBounds {
    /// The most `hist` rows looked at (in the span or not).
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
        let rows = self.txn.open_table(HIST).at(place, READ)?;
        let hist = Hist { index: &self.index, rows: &rows };
        let mut bytes = 0usize;
        let range =
            rows.range::<HistoryPos>((Bound::Included(from), Bound::Included((to, u32::MAX)))).at(place, READ)?;
        for (scanned, entry) in range.enumerate() {
            let (pos, row) = entry.at(place, READ)?;
            let (rev, sub) = pos.value();
            if scanned >= bounds.scan.max(1) || (bytes >= bounds.bytes && !page.events.is_empty()) {
                page.next = (rev, sub);
                return Ok(page);
            }
            let (key, record) =
                split_row(row.value()).map_err(|detail| place.corrupt(format!("revision {rev} ({sub}): {detail}")))?;
            if !span.contains(key) {
                continue;
            }
            let decoded = Record::decode(record).map_err(|detail| {
                place.corrupt(format!("key {:?} at revision {rev}: {detail}", String::from_utf8_lossy(key)))
            })?;
            let prev_kv = match with_prev {
                true => match newest_entry(&hist, place, key, rev - 1)? {
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
                    kv: key_value(place, key, rev, record, true)?
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
