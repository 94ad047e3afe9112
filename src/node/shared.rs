//! State shared between the Raft loop (the only writer) and the HTTP handlers (readers):
//! the state machine, a status snapshot, the address book of peers, errors to report, metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::raft::{Index, NodeId, Role, Term};
use crate::store::command::MemberInfo;
use crate::store::mvcc::snapshot::SnapshotReader;
use crate::store::KvStore;

/// Locks that survive a panicked holder: the data is still consistent for our purposes
/// (every writer completes its update before anything can panic).
pub fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}
pub fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}
pub fn lock<T>(lock: &Mutex<T>) -> MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the Raft loop last published about itself.
#[derive(Clone, Debug)]
pub struct LoopStatus {
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: Index,
    pub applied_index: Index,
    pub last_index: Index,
    /// The term of the entry at `last_index`.
    pub last_term: Term,
    pub voter: bool,
    /// Leader only: each member's match index.
    pub matched: BTreeMap<NodeId, Index>,
    /// Leader only: it has committed an entry of its term, so its view is current.
    pub committed_in_term: bool,
}

impl LoopStatus {
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// The role as the status API names it: leader, candidate, follower or learner.
    pub fn api_role(&self) -> crate::base::wire::Role {
        use crate::base::wire::Role as Api;
        match self.role {
            Role::Leader => Api::Leader,
            Role::Candidate | Role::PreCandidate => Api::Candidate,
            Role::Follower if !self.voter => Api::Learner,
            Role::Follower => Api::Follower,
        }
    }
}

/// Where to reach each member, learned from the initial list, the membership entries of the log
/// and the headers of peers' messages; every update goes through [`AddressBook::learn`].
#[derive(Default)]
pub struct AddressBook(RwLock<BTreeMap<NodeId, MemberInfo>>);

impl AddressBook {
    pub fn get(&self, id: NodeId) -> Option<MemberInfo> {
        read(&self.0).get(&id).cloned()
    }

    /// Records what is known of member `id`: each non-empty field replaces what was known, an
    /// empty one keeps it (a membership entry may carry no client URL; a peer's header may
    /// carry only URLs).
    pub fn learn(&self, id: NodeId, name: &str, peer_url: &str, client_url: &str) {
        let news = |new: &str, old: &str| !new.is_empty() && new != old;
        let changes = read(&self.0)
            .get(&id)
            .is_none_or(|a| news(name, &a.name) || news(peer_url, &a.peer_url) || news(client_url, &a.client_url));
        if changes {
            let mut book = write(&self.0);
            let entry = book.entry(id).or_insert_with(|| MemberInfo { id, ..MemberInfo::default() });
            for (field, new) in
                [(&mut entry.name, name), (&mut entry.peer_url, peer_url), (&mut entry.client_url, client_url)]
            {
                if !new.is_empty() {
                    *field = new.to_string();
                }
            }
        }
    }

    /// Member `id` moved to `peer_url` (a committed MemberUpdate), whatever was known before.
    pub fn set_peer_url(&self, id: NodeId, peer_url: &str) {
        let mut book = write(&self.0);
        book.entry(id).or_insert_with(|| MemberInfo { id, ..MemberInfo::default() }).peer_url = peer_url.to_string();
    }
}

/// Histogram buckets of fsync latency, in seconds.
pub const FSYNC_BUCKETS: [f64; 12] =
    [0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024];

/// Histogram buckets of the time taken to snapshot the state machine, in seconds.
pub const SNAPSHOT_BUCKETS: [f64; 14] =
    [0.001, 0.004, 0.016, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

#[derive(Default)]
pub struct Metrics {
    pub leader_changes: AtomicU64,
    pub proposals_committed: AtomicU64,
    pub proposals_failed: AtomicU64,
    pub peer_messages_dropped: AtomicU64,
    pub peer_messages_rejected: AtomicU64,
    pub fsync_count: AtomicU64,
    pub fsync_micros_sum: AtomicU64,
    pub fsync_buckets: [AtomicU64; FSYNC_BUCKETS.len()],
    pub snapshots_sent: AtomicU64,
    /// Leases revoked because they expired (proposed by this member as leader).
    pub leases_expired: AtomicU64,
    /// Keep-alives this member renewed as leader.
    pub lease_renewals: AtomicU64,
    pub snapshots_received: AtomicU64,
    /// The longest one pass of the Raft loop's Ready cycles took (`drive`: persisting, applying,
    /// snapshotting), in microseconds: how long the loop answered nothing, at worst.
    pub raft_loop_longest_stall_micros: AtomicU64,
    /// The Raft loop's time at work (taking input, passes), in microseconds.
    pub raft_loop_busy_micros: AtomicU64,
    /// Snapshots of the state machine taken (`maybe_snapshot`): count, total time, buckets.
    pub snapshot_count: AtomicU64,
    pub snapshot_micros_sum: AtomicU64,
    pub snapshot_buckets: [AtomicU64; SNAPSHOT_BUCKETS.len()],
    /// Background writebacks of the state machine's file started (`runtime::Writeback`).
    pub writebacks: AtomicU64,
    /// A follower's writes proposed through the leader, and the requests that carried them
    /// (`node::forward`).
    pub forwarded_proposals: AtomicU64,
    pub forwarded_proposal_batches: AtomicU64,
    /// Of those batches, the ones sent on the peer stream (`MessageBody::Propose`).
    pub streamed_proposal_batches: AtomicU64,
    /// A follower's linearizable reads served with the leader's read index, and the read-index
    /// requests they shared.
    pub forwarded_reads: AtomicU64,
    pub read_index_requests: AtomicU64,
    /// A follower's lease keep-alives renewed through the leader.
    pub forwarded_renewals: AtomicU64,
    /// Connections of the client and the peer port (`serve`).
    pub client_port: std::sync::Arc<crate::http::serve::PortStats>,
    pub peer_port: std::sync::Arc<crate::http::serve::PortStats>,
}

/// `took` in whole microseconds, saturating.
fn micros(took: Duration) -> u64 {
    u64::try_from(took.as_micros()).unwrap_or(u64::MAX)
}

impl Metrics {
    pub fn observe_fsync(&self, seconds: f64) {
        self.fsync_count.fetch_add(1, Ordering::Relaxed);
        self.fsync_micros_sum.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        for (bucket, upper) in self.fsync_buckets.iter().zip(FSYNC_BUCKETS) {
            if seconds <= upper {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// One pass of the Raft loop took `took`: kept if it is the longest yet.
    pub fn observe_loop_pass(&self, took: Duration) {
        self.raft_loop_longest_stall_micros.fetch_max(micros(took), Ordering::Relaxed);
    }

    /// The Raft loop was at work for `took` (one round: its input and its pass).
    pub fn observe_loop_busy(&self, took: Duration) {
        self.raft_loop_busy_micros.fetch_add(micros(took), Ordering::Relaxed);
    }

    pub fn observe_snapshot(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        self.snapshot_count.fetch_add(1, Ordering::Relaxed);
        self.snapshot_micros_sum.fetch_add(micros(took), Ordering::Relaxed);
        for (bucket, upper) in self.snapshot_buckets.iter().zip(SNAPSHOT_BUCKETS) {
            if seconds <= upper {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The Raft loop's series in Prometheus' text format: `kuberaft_raft_loop_longest_stall_seconds`,
    /// `kuberaft_raft_loop_busy_seconds_total` and the histogram `kuberaft_snapshot_duration_seconds`.
    pub fn render_raft_loop(&self) -> String {
        let mut out = String::new();
        let name = "kuberaft_raft_loop_longest_stall_seconds";
        out.push_str(&format!(
            "# HELP {name} The longest one pass of the Raft loop took (persist, apply, snapshot).\n# TYPE {name} gauge\n"
        ));
        out.push_str(&format!("{name} {}\n", self.raft_loop_longest_stall_micros.load(Ordering::Relaxed) as f64 / 1e6));
        let name = "kuberaft_raft_loop_busy_seconds_total";
        out.push_str(&format!(
            "# HELP {name} Time the Raft loop spent at work (taking input, passes), not waiting for input.\n# TYPE {name} counter\n"
        ));
        out.push_str(&format!("{name} {}\n", self.raft_loop_busy_micros.load(Ordering::Relaxed) as f64 / 1e6));
        let name = "kuberaft_snapshot_duration_seconds";
        out.push_str(&format!(
            "# HELP {name} Time to snapshot the state machine and compact the log.\n# TYPE {name} histogram\n"
        ));
        for (bucket, upper) in self.snapshot_buckets.iter().zip(SNAPSHOT_BUCKETS) {
            out.push_str(&format!("{name}_bucket{{le=\"{upper}\"}} {}\n", bucket.load(Ordering::Relaxed)));
        }
        let count = self.snapshot_count.load(Ordering::Relaxed);
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {count}\n"));
        out.push_str(&format!("{name}_sum {}\n", self.snapshot_micros_sum.load(Ordering::Relaxed) as f64 / 1e6));
        out.push_str(&format!("{name}_count {count}\n"));
        let name = "kuberaft_state_machine_writebacks_total";
        out.push_str(&format!(
            "# HELP {name} Background writebacks of the state machine's file started.\n# TYPE {name} counter\n"
        ));
        out.push_str(&format!("{name} {}\n", self.writebacks.load(Ordering::Relaxed)));
        out
    }
}

/// Error kinds that are events rather than lasting conditions: shown for `ERROR_EVENT_TTL`
/// after the last occurrence.
const EXPIRING_ERRORS: [&str; 1] = ["peers"];
const ERROR_EVENT_TTL: Duration = Duration::from_secs(30);

/// A received snapshot's state machine and the snapshot it belongs to.
pub struct StagedSnapshot {
    pub index: Index,
    pub term: Term,
    pub kv: KvStore,
}

pub struct Shared {
    pub id: NodeId,
    pub name: String,
    pub cluster_id: u64,
    pub advertise_client_url: String,
    pub advertise_peer_url: String,
    pub max_value_bytes: usize,
    /// etcd's minimum lease TTL: 1.5 × the longest election timeout, in whole seconds.
    pub min_lease_ttl_s: i64,
    /// The ids this member picks: for leases granted with id 0.
    pub ids: crate::base::ids::IdGenerator,
    pub kv: RwLock<KvStore>,
    pub status: RwLock<LoopStatus>,
    /// The applied index, for readers waiting on a ReadIndex.
    pub applied: watch::Sender<Index>,
    pub addresses: AddressBook,
    /// Conditions that keep this member from serving, by kind (storage, peers, ...).
    /// By kind: the message and when it was last reported. Conditions that are reported
    /// while they last (storage) are cleared explicitly; events (rejected peers) expire.
    pub errors: RwLock<BTreeMap<String, (String, Instant)>>,
    pub metrics: Metrics,
    /// Set once when the member must stop for good (its data is lost): why. The process exits
    /// with code 3 when it is set.
    pub data_lost: watch::Sender<Option<String>>,
    /// Turns true once when the member begins to stop: its servers take no more connections,
    /// and the streams they serve for as long as the other side wants (a leader's message
    /// stream, watches, lease keep-alives) end then, as etcd's do, rather than hold the stop.
    pub stopping: watch::Sender<bool>,
    /// The peers this member's transport last failed to reach (`transport::PeerLink::report`):
    /// a leader that stops does not offer them its leadership (`RaftLoop::hand_off`).
    pub unreachable: Mutex<BTreeSet<NodeId>>,
    /// Snapshot streams the Raft loop prepared for the transport, one per follower (the newest
    /// replaces an older one, so at most one read view per follower is held).
    pub outgoing_snapshots: Mutex<BTreeMap<NodeId, SnapshotReader>>,
    /// A state machine received from a leader and built beside the live one, waiting for the
    /// core to accept its snapshot (`RaftLoop::install`).
    pub staged: Mutex<Option<StagedSnapshot>>,
    /// The leases' deadlines (leader only): the Raft loop feeds it what applies and promotes
    /// or demotes it; keep-alives renew through it (`NodeHandle::lease_keep_alive`).
    pub lessor: Mutex<crate::node::lessor::Lessor>,
    /// The clock of the lessor: milliseconds since this instant (monotonic).
    pub lease_clock: Instant,
    /// A follower's way to its leader for writes and linearizable reads (`node::forward`).
    pub forward: crate::node::forward::Forwarder,
    /// What this member saw happen (`node::timeline`), for the live view.
    pub timeline: crate::node::timeline::Timeline,
    /// Where requests' time goes (`node::latency`), for `/metrics`.
    pub latency: crate::node::latency::Latency,
    /// Whether this member may serve serializable reads from what it applied: at once when it
    /// started with nothing in its log past its commit index (which it applies before it serves
    /// clients), else once it has applied up to a read index that a quorum confirmed after it
    /// started (`NodeHandle::serializable_point`).
    /// A member answers a write once it applied it, which may be before the commit index that
    /// covers it is durable; after a crash it applies those entries again only once it learns a
    /// commit past them, and until then its state lacks writes it answered. etcd serves nothing
    /// after a restart until it has applied its own `publish` entry (DESIGN.md §2, "Serving
    /// after a restart").
    pub replayed: AtomicBool,
}

impl Shared {
    /// A copy of what the loop last published. Hot paths use the accessors below, which copy
    /// nothing (a leader's status holds a map of its members).
    pub fn status(&self) -> LoopStatus {
        read(&self.status).clone()
    }

    /// The leader as last published, if one is known.
    pub fn leader(&self) -> Option<NodeId> {
        read(&self.status).leader
    }

    /// The term as last published.
    pub fn term(&self) -> Term {
        read(&self.status).term
    }

    /// Whether this member led when the loop last published.
    pub fn is_leader(&self) -> bool {
        read(&self.status).is_leader()
    }

    /// Now on the lessor's clock, in milliseconds.
    pub fn lease_now_ms(&self) -> u64 {
        u64::try_from(self.lease_clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn address(&self, id: NodeId) -> Option<MemberInfo> {
        self.addresses.get(id)
    }

    /// Whether the state machine stopped applying (`runtime::HALT_ERROR`).
    pub fn halted(&self) -> bool {
        read(&self.errors).contains_key(crate::node::runtime::HALT_ERROR)
    }

    /// Whether writing to storage fails now (`runtime::STORAGE_ERROR`).
    pub fn storage_failed(&self) -> bool {
        read(&self.errors).contains_key(crate::node::runtime::STORAGE_ERROR)
    }

    /// Sets or clears the condition `kind`; the timeline records when one begins, changes its
    /// message or ends (not every repeat of the same report).
    pub fn set_error(&self, kind: &str, message: Option<String>) {
        let term = self.term();
        let mut errors = write(&self.errors);
        let news = match message {
            Some(m) => {
                let news = errors.get(kind).is_none_or(|(old, _)| *old != m).then(|| m.clone());
                errors.insert(kind.to_string(), (m, Instant::now()));
                news.map(Some)
            }
            None => errors.remove(kind).map(|_| None),
        };
        drop(errors);
        if let Some(message) = news {
            let condition = kind.to_string();
            self.timeline.record(term, crate::node::timeline::EventKind::Error { condition, message });
        }
    }

    pub fn errors(&self) -> Vec<String> {
        read(&self.errors)
            .iter()
            .filter(|(kind, (_, at))| !EXPIRING_ERRORS.contains(&kind.as_str()) || at.elapsed() < ERROR_EVENT_TTL)
            .map(|(kind, (message, _))| format!("{kind}: {message}"))
            .collect()
    }
}

#[cfg(test)]
impl Shared {
    /// A follower's shared state with nothing applied yet, for unit tests of the loop and the
    /// peer port.
    pub(crate) fn for_tests(id: NodeId, name: &str, term: Term, advertise_ip: &str) -> Shared {
        let url =
            |port: u16| if advertise_ip.is_empty() { String::new() } else { format!("http://{advertise_ip}:{port}") };
        Shared {
            id,
            name: name.into(),
            cluster_id: 7,
            advertise_client_url: url(2379),
            advertise_peer_url: url(2380),
            max_value_bytes: 1 << 20,
            min_lease_ttl_s: 1,
            ids: crate::base::ids::IdGenerator::new(id, 0),
            kv: RwLock::new(KvStore::new()),
            status: RwLock::new(LoopStatus {
                role: Role::Follower,
                term,
                leader: None,
                commit_index: 0,
                applied_index: 0,
                last_index: 0,
                last_term: 0,
                voter: true,
                matched: BTreeMap::new(),
                committed_in_term: false,
            }),
            applied: watch::channel(0).0,
            addresses: AddressBook::default(),
            errors: RwLock::new(BTreeMap::new()),
            metrics: Metrics::default(),
            data_lost: watch::channel(None).0,
            stopping: watch::channel(false).0,
            unreachable: Default::default(),
            outgoing_snapshots: Default::default(),
            staged: Default::default(),
            lessor: Mutex::new(crate::node::lessor::Lessor::new(crate::node::lessor::DEFAULT_CHECKPOINT_INTERVAL_MS)),
            lease_clock: Instant::now(),
            forward: crate::node::forward::Forwarder::new(None, None),
            timeline: Default::default(),
            latency: Default::default(),
            replayed: AtomicBool::new(true),
        }
    }
}
