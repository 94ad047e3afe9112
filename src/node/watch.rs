//! Watches (etcd v3's Watch): every member tells its watchers of each change to their keys,
//! from its own applied state, in revision order, each revision exactly once (DESIGN.md §3).
//!
//! - One **feed** per member: after each apply, one reader (the publisher) reads the new
//!   revisions from the store's history (`ReadView::events`, with previous versions) into a
//!   ring of the latest revisions, bounded in revisions and bytes. Writers never wait for it.
//!   While the member has no watcher it reads nothing, and only moves the published revision.
//! - Each **watcher** is a task with a position (`next`, the revision it needs next). It takes
//!   revisions from the feed while its position is inside it, and reads them from the history
//!   otherwise: a watcher that fell behind the feed (a slow reader, or one that started in the
//!   past) catches up from history, as etcd's unsynced watchers do, holding at most one page.
//!   A position at or below the compacted revision cancels the watcher with
//!   `compact_revision`, so the client can list again.
//! - A **stream** holds watchers and one bounded queue of responses to its client. A client
//!   that does not read fills the queue; then its watchers wait, and nothing else does.
//!
//! All events of one revision (one txn) go out in one response. A revision larger than the
//! bound of one response (`fragment` asked: [`FRAGMENT_BYTES`]; otherwise
//! [`RESPONSE_BYTES`]) goes out in parts, all but the last marked `fragment`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::shared::{lock, read, Shared};
use crate::store::mvcc::check::KeySpan;
use crate::store::mvcc::{Event, EventBounds, EventKind, HistoryPos, MvccError, ReadError, Revision};

/// The most revisions the feed keeps.
pub const FEED_REVISIONS: usize = 8192;
/// The most bytes of keys and values the feed keeps; a revision larger than a quarter of it is
/// not kept (its watchers read it from history).
pub const FEED_BYTES: usize = 16 << 20;
/// The most revisions a watcher takes from the feed at once (what it holds while its client
/// does not read).
const FEED_TAKE: usize = 64;
/// One history read: entries looked at, bytes collected.
const PAGE: EventBounds = EventBounds { scan: 4096, bytes: 1 << 20 };
/// The most bytes of events in one response when the watch asked for `fragment`.
pub const FRAGMENT_BYTES: usize = 1 << 20;
/// The most bytes of events in one response otherwise (a revision past it is still split).
pub const RESPONSE_BYTES: usize = 4 << 20;
/// Responses queued per stream for its client.
pub const STREAM_QUEUE: usize = 16;
/// The most watchers one stream may hold.
pub const MAX_WATCHERS_PER_STREAM: usize = 10_000;

/// The reasons a watch ends, as etcd words them.
pub const COMPACTED: &str = "mvcc: required revision has been compacted";
pub const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
pub const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
pub const TOO_MANY: &str = "kuberaft: too many watchers on this stream";

/// etcd's `WatchCreateRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchSpec {
    /// Empty: `"\0"`, the smallest key.
    pub key: Vec<u8>,
    /// As a range's; `"\0"`: every key from `key` on.
    pub range_end: Vec<u8>,
    /// The first revision to report; 0 (or less): the next one.
    pub start_revision: Revision,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
    pub fragment: bool,
    /// 0: the stream picks the id.
    pub watch_id: i64,
}

/// etcd's `WatchResponse`. `revision` is the header's: for events, the revision they belong
/// to; for a progress notification, the revision every earlier event was sent for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchResponse {
    pub watch_id: i64,
    pub revision: Revision,
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: Revision,
    pub cancel_reason: String,
    pub fragment: bool,
    pub events: Vec<Event>,
}

/// The events of one revision.
#[derive(Debug)]
pub struct RevisionEvents {
    pub revision: Revision,
    pub events: Vec<Event>,
    bytes: usize,
}

/// The latest revisions, for watchers that are caught up.
#[derive(Default)]
struct Feed {
    /// Consecutive revisions, oldest first; every revision from `first` to the published one.
    revisions: VecDeque<Arc<RevisionEvents>>,
    bytes: usize,
    /// The oldest revision the feed can answer for (all from it to the published one).
    first: Revision,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct WatchMetrics {
    pub watchers: AtomicI64,
    pub streams: AtomicI64,
    pub events_sent: AtomicU64,
    /// Times a watcher read from history because it was behind the feed.
    pub history_reads: AtomicU64,
    /// Watchers cancelled because their history was compacted.
    pub compacted: AtomicU64,
}

/// Every member's watches: the feed, its publisher and the counters.
pub struct WatchHub {
    shared: Arc<Shared>,
    feed: Mutex<Feed>,
    /// The newest revision published (the feed, or history, answers for every one up to it).
    published: watch::Sender<Revision>,
    pub metrics: WatchMetrics,
    progress_interval: Duration,
}

impl WatchHub {
    /// A hub over the member's state machine, publishing from its current revision on. Run
    /// [`WatchHub::publish`] to keep it fed.
    pub fn new(shared: Arc<Shared>, progress_interval: Duration) -> Arc<WatchHub> {
        let current = read(&shared.kv).current_revision();
        Arc::new(WatchHub {
            shared,
            feed: Mutex::new(Feed { first: current + 1, ..Feed::default() }),
            published: watch::channel(current).0,
            metrics: WatchMetrics::default(),
            progress_interval: progress_interval.max(Duration::from_millis(10)),
        })
    }

    /// The store's current revision.
    pub fn current_revision(&self) -> Revision {
        read(&self.shared.kv).current_revision()
    }

    /// Publishes each applied revision, until the member stops (abort the task).
    pub async fn publish(self: Arc<WatchHub>) {
        let mut applied = self.shared.applied.subscribe();
        loop {
            self.publish_new();
            if applied.changed().await.is_err() {
                return;
            }
        }
    }

    /// Reads the revisions applied since the last call into the feed.
    fn publish_new(&self) {
        let published = *self.published.borrow();
        let (current, view) = {
            let kv = read(&self.shared.kv);
            (kv.current_revision(), kv.read_view())
        };
        if current <= published {
            return;
        }
        if self.metrics.watchers.load(Ordering::Relaxed) == 0 {
            // Nobody to feed: a watcher that starts later reads these revisions from history
            // (the feed only saves reads). Reading them here cost every write a history read.
            return self.skip_to(current);
        }
        let view = match view {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!("watch feed: cannot read the state machine: {e}");
                return self.skip_to(current);
            }
        };
        let everything = KeySpan::From(b"");
        let mut pos: HistoryPos = (published + 1, 0);
        let mut building: Option<RevisionEvents> = None;
        let mut skipping: Option<Revision> = None;
        // Bounded: each page moves `pos` on, and pages end at `current`.
        while pos.0 <= current {
            let page = match view.events(&everything, pos, current, true, PAGE) {
                Ok(page) => page,
                Err(ReadError::Mvcc(_)) => return self.skip_to(current),
                Err(ReadError::Storage(e)) => {
                    tracing::warn!("watch feed: cannot read the history: {e}");
                    return self.skip_to(current);
                }
            };
            for event in page.events {
                let rev = event.kv.mod_revision;
                if skipping == Some(rev) {
                    continue;
                }
                if building.as_ref().is_some_and(|b| b.revision != rev) {
                    self.push(building.take());
                }
                let b = building.get_or_insert(RevisionEvents { revision: rev, events: Vec::new(), bytes: 0 });
                b.bytes += event.size();
                b.events.push(event);
                if b.bytes > FEED_BYTES / 4 {
                    // Too large to keep: its watchers read it from history.
                    building = None;
                    skipping = Some(rev);
                    self.skip_to(rev);
                }
            }
            if page.next <= pos {
                break;
            }
            pos = page.next;
        }
        self.push(building.take());
        self.skip_to(current);
    }

    /// Adds a whole revision to the feed and publishes it.
    fn push(&self, revision: Option<RevisionEvents>) {
        let Some(revision) = revision else { return };
        let rev = revision.revision;
        {
            let mut feed = lock(&self.feed);
            if rev != feed.first + feed.revisions.len() as Revision {
                // A gap (a revision skipped): the feed starts over after it.
                feed.revisions.clear();
                feed.bytes = 0;
                feed.first = rev;
            }
            feed.bytes += revision.bytes;
            feed.revisions.push_back(Arc::new(revision));
            while feed.revisions.len() > FEED_REVISIONS || (feed.bytes > FEED_BYTES && feed.revisions.len() > 1) {
                if let Some(old) = feed.revisions.pop_front() {
                    feed.bytes -= old.bytes;
                    feed.first += 1;
                }
            }
        }
        self.published.send_if_modified(|p| {
            let newer = rev > *p;
            *p = (*p).max(rev);
            newer
        });
    }

    /// Publishes up to `rev` without feeding it: those revisions are read from history.
    fn skip_to(&self, rev: Revision) {
        {
            let mut feed = lock(&self.feed);
            if feed.first + (feed.revisions.len() as Revision) <= rev {
                feed.revisions.clear();
                feed.bytes = 0;
                feed.first = rev + 1;
            }
        }
        self.published.send_if_modified(|p| {
            let newer = rev > *p;
            *p = (*p).max(rev);
            newer
        });
    }

    /// Revisions from `next` on (at most [`FEED_TAKE`]), or `None` when the feed no
    /// longer (or not yet) holds `next`, or `next` was compacted.
    fn take_from_feed(&self, next: Revision) -> Option<Vec<Arc<RevisionEvents>>> {
        if next <= read(&self.shared.kv).compacted_revision() {
            // Compacted since it was fed: the history says so, and the watcher is cancelled.
            return None;
        }
        let feed = lock(&self.feed);
        if next < feed.first {
            return None;
        }
        let skip = usize::try_from(next - feed.first).ok()?;
        Some(feed.revisions.iter().skip(skip).take(FEED_TAKE).cloned().collect())
    }

    /// A new stream of watches that sends its responses to `out`.
    pub fn stream(self: &Arc<WatchHub>, out: mpsc::Sender<WatchResponse>) -> WatchStream {
        self.metrics.streams.fetch_add(1, Ordering::Relaxed);
        WatchStream { hub: self.clone(), out, watchers: BTreeMap::new(), next_id: 0 }
    }

    /// The feed's size, for tests and metrics: revisions and bytes.
    pub fn feed_size(&self) -> (usize, usize) {
        let feed = lock(&self.feed);
        (feed.revisions.len(), feed.bytes)
    }
}

/// A stream's watcher: its task and how far it has sent.
struct WatcherHandle {
    task: JoinHandle<()>,
    /// Every event up to this revision has been queued to the client.
    sent: Arc<AtomicI64>,
}

/// A client's stream of watches (one HTTP watch request, one gRPC Watch call).
pub struct WatchStream {
    hub: Arc<WatchHub>,
    out: mpsc::Sender<WatchResponse>,
    watchers: BTreeMap<i64, WatcherHandle>,
    next_id: i64,
}

impl WatchStream {
    /// etcd's create: answers `created` (with the id, or cancelled with the reason), then the
    /// watcher's events follow. Returns the id, or `None` when the watch was refused or the
    /// client has gone.
    pub async fn create(&mut self, spec: WatchSpec) -> Option<i64> {
        self.watchers.retain(|_, w| !w.task.is_finished());
        let current = self.hub.current_revision();
        let refuse = |reason: &str| WatchResponse {
            watch_id: -1,
            revision: current,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..WatchResponse::default()
        };
        let key = if spec.key.is_empty() { vec![0] } else { spec.key.clone() };
        let range_end = spec.range_end.clone();
        let empty = !range_end.is_empty() && range_end != [0] && key >= range_end;
        let id = if spec.watch_id != 0 { spec.watch_id } else { self.free_id() };
        let refused = if empty {
            Some(EMPTY_RANGE)
        } else if self.watchers.contains_key(&id) || id < 0 {
            Some(DUPLICATE_ID)
        } else if self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            Some(TOO_MANY)
        } else {
            None
        };
        if let Some(reason) = refused {
            let _ = self.out.send(refuse(reason)).await;
            return None;
        }
        let created = WatchResponse { watch_id: id, revision: current, created: true, ..WatchResponse::default() };
        self.out.send(created).await.ok()?;
        let start = if spec.start_revision > 0 { spec.start_revision } else { current + 1 };
        let sent = Arc::new(AtomicI64::new(start - 1));
        let watcher =
            Watcher { hub: self.hub.clone(), out: self.out.clone(), id, key, range_end, spec, sent: sent.clone() };
        self.hub.metrics.watchers.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(watcher.run(start));
        self.watchers.insert(id, WatcherHandle { task, sent });
        Some(id)
    }

    fn free_id(&mut self) -> i64 {
        while self.watchers.contains_key(&self.next_id) {
            self.next_id += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// etcd's cancel: the watcher stops and `canceled` is answered; an unknown id is ignored.
    pub async fn cancel(&mut self, id: i64) {
        if let Some(w) = self.watchers.remove(&id) {
            w.task.abort();
            let _ = w.task.await;
            let response = WatchResponse {
                watch_id: id,
                revision: self.hub.current_revision(),
                canceled: true,
                ..WatchResponse::default()
            };
            let _ = self.out.send(response).await;
        }
    }

    /// etcd's progress request: once every watcher of the stream has sent all events up to
    /// the store's current revision, answers that revision (watch id -1, for all of them).
    /// Runs beside the watchers; the answer comes after their events.
    pub fn request_progress(&self) -> JoinHandle<()> {
        let target = self.hub.current_revision();
        let sents: Vec<Arc<AtomicI64>> = self.watchers.values().map(|w| w.sent.clone()).collect();
        let out = self.out.clone();
        let mut published = self.hub.published.subscribe();
        tokio::spawn(async move {
            loop {
                if sents.iter().all(|s| s.load(Ordering::Acquire) >= target) {
                    let _ =
                        out.send(WatchResponse { watch_id: -1, revision: target, ..WatchResponse::default() }).await;
                    return;
                }
                // A watcher moves on when something is published, or while it works through a
                // backlog; look again at either.
                let _ = tokio::time::timeout(Duration::from_millis(20), published.changed()).await;
            }
        })
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        for w in self.watchers.values() {
            w.task.abort();
        }
        self.hub.metrics.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One watcher's task.
struct Watcher {
    hub: Arc<WatchHub>,
    out: mpsc::Sender<WatchResponse>,
    id: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    spec: WatchSpec,
    sent: Arc<AtomicI64>,
}

/// However a watcher's task ends (aborted included): one watcher fewer, and it no longer holds
/// back a progress answer.
struct Counted(Arc<WatchHub>, Arc<AtomicI64>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.metrics.watchers.fetch_sub(1, Ordering::Relaxed);
        self.1.store(Revision::MAX, Ordering::Release);
    }
}

/// The events of one revision being gathered for a watcher.
struct Pending {
    revision: Revision,
    events: Vec<Event>,
    bytes: usize,
    /// Part of this revision already went out.
    fragmented: bool,
}

impl Watcher {
    fn wants(&self, event: &Event) -> bool {
        let span = KeySpan::new(&self.key, &self.range_end);
        span.contains(&event.kv.key)
            && !(self.spec.no_put && event.kind == EventKind::Put)
            && !(self.spec.no_delete && event.kind == EventKind::Delete)
    }

    fn limit(&self) -> usize {
        if self.spec.fragment {
            FRAGMENT_BYTES
        } else {
            RESPONSE_BYTES
        }
    }

    async fn run(self, start: Revision) {
        let _counted = Counted(self.hub.clone(), self.sent.clone());
        let mut published = self.hub.published.subscribe();
        let mut next = start;
        let mut heard = true;
        let mut ticker = tokio::time::interval(self.hub.progress_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            let top = *published.borrow_and_update();
            if next > top {
                tokio::select! {
                    changed = published.changed() => if changed.is_err() { return },
                    _ = ticker.tick(), if self.spec.progress_notify => {
                        if !heard && next > *published.borrow() {
                            let progress = WatchResponse { watch_id: self.id, revision: next - 1, ..WatchResponse::default() };
                            if self.out.send(progress).await.is_err() {
                                return;
                            }
                        }
                        heard = false;
                    }
                }
                continue;
            }
            let sent_any = match self.hub.take_from_feed(next) {
                Some(batch) if !batch.is_empty() => {
                    let mut any = false;
                    for revision in batch {
                        let Some(sent) = self.send_revision(revision.revision, &revision.events).await else { return };
                        any |= sent;
                        next = revision.revision + 1;
                        self.sent.store(next - 1, Ordering::Release);
                    }
                    any
                }
                _ => {
                    self.hub.metrics.history_reads.fetch_add(1, Ordering::Relaxed);
                    match self.catch_up(next, top).await {
                        Some(Ok((after, any))) => {
                            next = after;
                            any
                        }
                        Some(Err(response)) => {
                            let _ = self.out.send(response).await;
                            return;
                        }
                        None => return,
                    }
                }
            };
            heard |= sent_any;
        }
    }

    /// Sends the wanted events of one whole revision; whether it sent any, `None` once the
    /// client has gone.
    async fn send_revision(&self, revision: Revision, events: &[Event]) -> Option<bool> {
        let mut pending = Pending { revision, events: Vec::new(), bytes: 0, fragmented: false };
        for event in events.iter().filter(|e| self.wants(e)) {
            self.add(&mut pending, event.clone()).await?;
        }
        self.finish(pending).await
    }

    /// Adds an event, sending a fragment first when the response would pass its bound.
    async fn add(&self, pending: &mut Pending, mut event: Event) -> Option<()> {
        if !self.spec.prev_kv {
            event.prev_kv = None;
        }
        let size = event.size();
        if !pending.events.is_empty() && pending.bytes + size > self.limit() {
            let part = WatchResponse {
                watch_id: self.id,
                revision: pending.revision,
                fragment: true,
                events: std::mem::take(&mut pending.events),
                ..WatchResponse::default()
            };
            self.deliver(part).await?;
            pending.bytes = 0;
            pending.fragmented = true;
        }
        pending.bytes += size;
        pending.events.push(event);
        Some(())
    }

    /// Sends the rest of a revision (nothing if it had no wanted events); whether it sent.
    async fn finish(&self, pending: Pending) -> Option<bool> {
        if pending.events.is_empty() && !pending.fragmented {
            return Some(false);
        }
        let last = WatchResponse {
            watch_id: self.id,
            revision: pending.revision,
            events: pending.events,
            ..WatchResponse::default()
        };
        self.deliver(last).await?;
        Some(true)
    }

    async fn deliver(&self, response: WatchResponse) -> Option<()> {
        let count = response.events.len() as u64;
        self.out.send(response).await.ok()?;
        self.hub.metrics.events_sent.fetch_add(count, Ordering::Relaxed);
        Some(())
    }

    /// Reads revisions `next..=top` from history, one page at a time, and sends them. `Ok`
    /// with the next revision needed and whether anything was sent; `Err` with the response
    /// that ends the watch; `None` once the client has gone.
    async fn catch_up(&self, next: Revision, top: Revision) -> Option<Result<(Revision, bool), WatchResponse>> {
        let span = KeySpan::new(&self.key, &self.range_end);
        let mut pos: HistoryPos = (next, 0);
        let mut pending: Option<Pending> = None;
        let mut any = false;
        // Each round reads one bounded page and moves `pos` on; it ends at `top`, or when the
        // feed holds the rest (checked between pages).
        loop {
            let page = {
                let view = read(&self.hub.shared.kv).read_view();
                view.map_err(ReadError::from).and_then(|view| view.events(&span, pos, top, self.spec.prev_kv, PAGE))
            };
            let page = match page {
                Ok(page) => page,
                Err(ReadError::Mvcc(MvccError::Compacted)) => {
                    self.hub.metrics.compacted.fetch_add(1, Ordering::Relaxed);
                    let compacted = read(&self.hub.shared.kv).compacted_revision();
                    // etcd's header of this answer carries no revision (0).
                    return Some(Err(WatchResponse {
                        watch_id: self.id,
                        revision: 0,
                        canceled: true,
                        compact_revision: compacted,
                        cancel_reason: COMPACTED.to_string(),
                        ..WatchResponse::default()
                    }));
                }
                Err(e) => {
                    return Some(Err(WatchResponse {
                        watch_id: self.id,
                        revision: self.hub.current_revision(),
                        canceled: true,
                        cancel_reason: format!("etcdserver: cannot read the history: {e}"),
                        ..WatchResponse::default()
                    }));
                }
            };
            for event in page.events.into_iter().filter(|e| self.wants(e)) {
                let rev = event.kv.mod_revision;
                if let Some(p) = pending.take_if(|p| p.revision != rev) {
                    any |= self.finish(p).await?;
                    self.sent.store(rev - 1, Ordering::Release);
                }
                let p =
                    pending.get_or_insert(Pending { revision: rev, events: Vec::new(), bytes: 0, fragmented: false });
                self.add(p, event).await?;
            }
            // Every revision before `page.next.0` is whole now.
            if let Some(p) = pending.take_if(|p| p.revision < page.next.0) {
                any |= self.finish(p).await?;
            }
            let done = page.next.0 - 1;
            if pending.is_none() {
                self.sent.store(done.max(next - 1), Ordering::Release);
            }
            pos = page.next;
            if pos.0 > top {
                return Some(Ok((top + 1, any)));
            }
            if pos.1 == 0 && pending.is_none() && self.hub.take_from_feed(pos.0).is_some_and(|b| !b.is_empty()) {
                return Some(Ok((pos.0, any)));
            }
            tokio::task::yield_now().await;
        }
    }
}
