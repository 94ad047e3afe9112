//! The Raft loop's writer: makes each Ready's hard state, snapshot and entries durable, in the
//! order the core handed them out (`RawNode::set_async_writes`).
//!
//! A member runs it on its own thread, so that the loop goes on while the disk syncs: a leader
//! takes its followers' acknowledgements, commits, applies and answers while its own write of
//! later entries is under way, and a follower takes the next append. Writes that queue up while
//! one syncs are merged and made durable with one fsync (group commit across Readies). The
//! loop learns what is durable from `Done`, and only then sends the messages that promise it.
//!
//! A write that fails (a full disk, an I/O error) is retried every `STORAGE_RETRY` until it
//! succeeds, and nothing after it is written meanwhile; the loop hears `Done::Failed` and
//! refuses work until a write succeeds again.
//!
//! The messages that promise a write (a follower's acknowledgement of an append, a vote) go
//! with it when the loop has a [`Courier`]: the writer's thread sends them the moment the write
//! is durable, before it reports to the loop, so that an acknowledgement does not wait for the
//! loop to wake and hear (issue 19). Without one, or for a snapshot, the loop sends them when
//! it hears.
//!
//! Tests that drive the loop by hand use the inline writer: the same writes, done by the loop
//! itself when it polls.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::runtime::{Input, InputSender};
use super::shared::lock;
use crate::raft::{Entry, HardState, Index, Message, Snapshot};
use crate::store::Storage;

/// While storage fails, a write is retried this often: not in a tight loop against the failing
/// disk.
pub const STORAGE_RETRY: Duration = Duration::from_millis(100);
/// At most this many Readies' writes merged into one.
const MAX_MERGED: usize = 1024;

/// One Ready's write.
#[derive(Debug, Default)]
pub struct Write {
    pub number: u64,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    /// Sent by the writer's thread once this write and every one before it are durable.
    pub messages: Vec<Message>,
    /// When the follower's appends that `messages` acknowledge arrived (`node::latency`).
    pub append_since: Vec<Instant>,
}

/// Sends messages from the writer's thread (the transport's peer queues).
pub trait Courier: Send + Sync {
    /// Sends `messages`, whose writes are durable; `appends`: when the appends they acknowledge
    /// arrived.
    fn deliver(&self, messages: Vec<Message>, appends: &[Instant]);
}

impl Write {
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none() && self.snapshot.is_none() && self.entries.is_empty()
    }

    /// Adds a later write to this one: its hard state replaces this one's, and its entries
    /// replace any here at or after their first index (a conflict the core resolved meanwhile).
    /// Only writes without a snapshot merge.
    fn absorb(&mut self, later: Write) {
        self.number = later.number;
        if later.hard_state.is_some() {
            self.hard_state = later.hard_state;
        }
        if let Some(first) = later.entries.first() {
            self.entries.retain(|e| e.index < first.index);
        }
        self.entries.extend(later.entries);
        self.messages.extend(later.messages);
        self.append_since.extend(later.append_since);
    }
}

/// What the writer reports.
#[derive(Debug)]
pub enum Done {
    /// Every write up to Ready `number` is durable. `last_entry` is the last entry index
    /// written, `synced` how long the write took when it synced the disk.
    Written { number: u64, last_entry: Option<Index>, synced: Option<Duration> },
    /// A write failed; it is retried, and nothing after it is written meanwhile.
    Failed(String),
}

/// Merges consecutive writes into as few as possible: a write with a snapshot stays alone.
fn merge(writes: impl IntoIterator<Item = Write>) -> Vec<Write> {
    let mut out: Vec<Write> = Vec::new();
    for w in writes {
        match out.last_mut() {
            Some(last) if last.snapshot.is_none() && w.snapshot.is_none() => last.absorb(w),
            _ => out.push(w),
        }
    }
    out
}

/// Writes one merged write.
fn write(storage: &Mutex<Storage>, w: &Write) -> Done {
    if w.is_empty() {
        return Done::Written { number: w.number, last_entry: None, synced: None };
    }
    let started = Instant::now();
    let mut storage = lock(storage);
    match storage.persist(w.hard_state.as_ref(), w.snapshot.as_ref(), &w.entries) {
        Ok(()) => Done::Written {
            number: w.number,
            last_entry: w.entries.last().map(|e| e.index),
            synced: storage.last_persist_synced().then(|| started.elapsed()),
        },
        Err(e) => Done::Failed(e.to_string()),
    }
}

pub struct Writer {
    storage: Arc<Mutex<Storage>>,
    mode: Mode,
}

enum Mode {
    /// Writes in the loop's task when it polls; a failed write waits for `retry_at`.
    Inline { queue: VecDeque<Write>, retry_at: Instant },
    Thread {
        tx: Option<Sender<Write>>,
        done: Receiver<Done>,
        /// The thread sends each write's `messages` itself.
        delivers: bool,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    },
}

impl Writer {
    pub fn inline(storage: Storage) -> Writer {
        let storage = Arc::new(Mutex::new(storage));
        Writer { storage, mode: Mode::Inline { queue: VecDeque::new(), retry_at: Instant::now() } }
    }

    /// Moves the writes to a thread of their own; `wake` is the loop's input queue, which the
    /// thread pokes after each report; with a `courier` it sends each write's `messages` itself.
    /// Writes already submitted are written first, inline.
    pub fn start_thread(&mut self, wake: InputSender, courier: Option<Arc<dyn Courier>>) -> std::io::Result<()> {
        if let Mode::Inline { queue, .. } = &self.mode {
            if !queue.is_empty() {
                return Err(std::io::Error::other("writes are queued inline; poll them first"));
            }
        }
        let (tx, rx) = mpsc::channel::<Write>();
        let (done_tx, done) = mpsc::channel::<Done>();
        let stop = Arc::new(AtomicBool::new(false));
        let storage = self.storage.clone();
        let stopping = stop.clone();
        let delivers = courier.is_some();
        let thread = std::thread::Builder::new()
            .name("raft-writer".into())
            .spawn(move || run(&storage, &rx, &done_tx, &wake, courier.as_deref(), &stopping))?;
        self.mode = Mode::Thread { tx: Some(tx), done, delivers, stop, thread: Some(thread) };
        Ok(())
    }

    /// Whether the writer sends the `messages` of the writes it is handed.
    pub fn delivers(&self) -> bool {
        matches!(self.mode, Mode::Thread { delivers: true, .. })
    }

    /// The storage, for what the loop does with it besides writing (compaction).
    pub fn storage(&self) -> &Mutex<Storage> {
        &self.storage
    }

    pub fn submit(&mut self, w: Write) {
        match &mut self.mode {
            Mode::Inline { queue, .. } => queue.push_back(w),
            Mode::Thread { tx, .. } => {
                // The thread lives as long as the writer; a send fails only if it panicked, and
                // then nothing becomes durable any more, which the loop sees as a write that
                // never completes.
                if let Some(tx) = tx {
                    let _ = tx.send(w);
                }
            }
        }
    }

    /// What the writer has done since the last poll. The inline writer writes now (or, after a
    /// failure, once the retry is due).
    pub fn poll(&mut self) -> Vec<Done> {
        match &mut self.mode {
            Mode::Inline { queue, retry_at } => {
                if queue.is_empty() || Instant::now() < *retry_at {
                    return Vec::new();
                }
                let mut out = Vec::new();
                let mut merged: VecDeque<Write> = merge(queue.drain(..)).into();
                while let Some(w) = merged.pop_front() {
                    let done = write(&self.storage, &w);
                    let failed = matches!(done, Done::Failed(_));
                    out.push(done);
                    if failed {
                        merged.push_front(w);
                        queue.extend(merged);
                        *retry_at = Instant::now() + STORAGE_RETRY;
                        break;
                    }
                }
                out
            }
            Mode::Thread { done, .. } => done.try_iter().collect(),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Mode::Thread { tx, stop, thread, .. } = &mut self.mode {
            // Writes already queued finish (a clean stop keeps what was handed out); a failing
            // one is not retried any more.
            stop.store(true, Ordering::Relaxed);
            tx.take();
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn run(
    storage: &Mutex<Storage>,
    rx: &Receiver<Write>,
    done: &Sender<Done>,
    wake: &InputSender,
    courier: Option<&dyn Courier>,
    stop: &AtomicBool,
) {
    while let Ok(first) = rx.recv() {
        let mut writes = vec![first];
        writes.extend(rx.try_iter().take(MAX_MERGED - 1));
        for mut w in merge(writes) {
            loop {
                let report = write(storage, &w);
                let failed = matches!(report, Done::Failed(_));
                if let Some(courier) = courier.filter(|_| !failed && !w.messages.is_empty()) {
                    courier.deliver(std::mem::take(&mut w.messages), &w.append_since);
                }
                if done.send(report).is_err() {
                    return;
                }
                // A full queue means the loop is busy and polls soon anyway.
                let _ = wake.try_send(Input::Wake);
                if !failed {
                    break;
                }
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(STORAGE_RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::EntryPayload;

    fn w(number: u64, entries: std::ops::RangeInclusive<Index>, term: u64) -> Write {
        let entries = entries.map(|index| Entry { index, term, payload: EntryPayload::Noop }).collect();
        let hard_state = Some(HardState { term, vote: None, commit: number });
        Write { number, hard_state, entries, ..Write::default() }
    }

    #[test]
    fn merged_writes_keep_the_last_hard_state_and_replace_conflicting_entries() {
        let snap = Write { number: 4, snapshot: Some(Snapshot::default()), ..Write::default() };
        let merged = merge([w(1, 1..=5, 1), w(2, 4..=6, 2), w(3, 7..=7, 2), snap, w(5, 8..=8, 2)]);
        assert_eq!(merged.len(), 3, "a snapshot's write stays alone");
        let first = &merged[0];
        assert_eq!(first.number, 3);
        assert_eq!(first.hard_state.map(|hs| hs.commit), Some(3));
        let got: Vec<(Index, u64)> = first.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2), (7, 2)]);
        assert!(merged[1].snapshot.is_some());
        assert_eq!(merged[2].number, 5);
    }
}
