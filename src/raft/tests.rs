//! The consensus core checked rule by rule, in the manner of etcd-io/raft's
//! `raft_paper_test.go`: each test is named after the rule it checks and cites where the rule
//! is stated — the Raft paper (Ongaro & Ousterhout, "In Search of an Understandable Consensus
//! Algorithm", §5–§8) or Ongaro's thesis ("Consensus: Bridging Theory and Practice").
//!
//! The harness at the top is a small in-memory `Network` of `RawNode`s driven exactly as a
//! host drives them (persist, send, apply, advance). On every `Ready` it also checks what must
//! hold in every run: messages promise only what is already durable, at most one leader per
//! term (§5.2 Election Safety), and no two members apply different entries at one index
//! (§5.4.3 State Machine Safety).

use std::collections::{btree_map, BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::*;

// ===================================================================================
// Harness
// ===================================================================================

/// `stabilize` gives up (and fails the test) after this many rounds.
const MAX_ROUNDS: usize = 10_000;

/// Decides whether the network loses a message (true: dropped).
type DropRule = Box<dyn FnMut(&Message) -> bool>;

/// A member's durable storage as its host keeps it: whatever each `Ready` asked to persist.
type Storage = MemoryStorage;

/// One member: its node, its durable storage and its state machine.
struct Peer {
    node: RawNode,
    cfg: Config,
    storage: Storage,
    /// The replicated state machine: the commands applied so far, in order.
    state: Vec<Bytes>,
    /// Every entry applied since the state machine was last rebuilt.
    applied: Vec<Entry>,
    applied_index: Index,
    read_states: Vec<ReadState>,
    aborted_reads: Vec<u64>,
    snapshots_installed: usize,
    /// The host is still busy with an earlier `Ready` (a slow disk): the node keeps stepping
    /// messages, but `stabilize` does not collect its next `Ready`.
    busy: bool,
}

/// The state-machine image a snapshot carries: the commands, comma-separated.
fn encode_state(state: &[Bytes]) -> Bytes {
    let parts: Vec<&[u8]> = state.iter().map(|c| c.as_ref()).collect();
    Bytes::from(parts.join(&b','))
}

fn decode_state(data: &Bytes) -> Vec<Bytes> {
    if data.is_empty() {
        return Vec::new();
    }
    data.split(|b| *b == b',').map(Bytes::copy_from_slice).collect()
}

/// What every message promises must already be durable when it is sent (Figure 2's
/// persistent state; thesis §10.2.1 for acknowledgements).
fn check_durable_before_send(id: NodeId, storage: &Storage, m: &Message) {
    match m.body {
        // A pre-vote carries the term the sender would campaign in; it promises nothing.
        MessageBody::PreVote { .. } | MessageBody::PreVoteResp { .. } => {}
        _ => assert!(m.term <= storage.hard_state.term, "member {id} sent {m:?} before its term was durable"),
    }
    match m.body {
        MessageBody::VoteResp { granted: true } => assert!(
            storage.hard_state.term == m.term && storage.hard_state.vote == Some(m.to),
            "member {id} granted a vote before recording it durably: {m:?}, durable {:?}",
            storage.hard_state
        ),
        MessageBody::AppendResp { index, reject: None } if index > 0 => assert!(
            storage.last_index() >= index,
            "member {id} acknowledged index {index} with only {} durable",
            storage.last_index()
        ),
        _ => {}
    }
}

/// An in-memory network of members with ids 1..=n.
struct Network {
    peers: BTreeMap<NodeId, Peer>,
    /// Directed links (from, to) that lose every message.
    cut: BTreeSet<(NodeId, NodeId)>,
    drop_rule: Option<DropRule>,
    in_flight: VecDeque<Message>,
    /// Every message any member sent, delivered or not, in order.
    trace: Vec<Message>,
    /// Every entry applied anywhere, by index.
    applied_entries: BTreeMap<Index, Entry>,
    /// The leader seen in each term.
    leaders_by_term: BTreeMap<Term, NodeId>,
}

impl Network {
    /// A new cluster of `size` voters with default settings (seed = id).
    fn new(size: u64) -> Network {
        Network::with_config(size, |_| {})
    }

    /// A new cluster of `size` voters bootstrapped with `InitialState::bootstrap`; `tweak`
    /// adjusts each member's settings.
    fn with_config(size: u64, tweak: impl Fn(&mut Config)) -> Network {
        let voters: Vec<(NodeId, Bytes)> = (1..=size).map(|id| (id, Bytes::new())).collect();
        let members = (1..=size)
            .map(|id| {
                let mut cfg = Config::new(id);
                tweak(&mut cfg);
                (cfg, InitialState::bootstrap(&voters))
            })
            .collect();
        Network::from_states(members)
    }

    /// A cluster of members started from the given states; one round of `ready`/`advance`
    /// applies what they already committed (the bootstrap configuration).
    fn from_states(members: Vec<(Config, InitialState)>) -> Network {
        let mut net = Network {
            peers: BTreeMap::new(),
            cut: BTreeSet::new(),
            drop_rule: None,
            in_flight: VecDeque::new(),
            trace: Vec::new(),
            applied_entries: BTreeMap::new(),
            leaders_by_term: BTreeMap::new(),
        };
        for (cfg, state) in members {
            net.add_member(cfg, state);
        }
        net.stabilize();
        net
    }

    fn add_member(&mut self, cfg: Config, state: InitialState) {
        let id = cfg.id;
        let storage = Storage::from_initial(&state);
        let sm_state = state.snapshot.as_ref().map(|s| decode_state(&s.data)).unwrap_or_default();
        let raft = Raft::new(cfg.clone(), state).expect("a valid test configuration");
        let applied_index = raft.applied_index();
        let peer = Peer {
            node: RawNode::new(raft),
            cfg,
            storage,
            state: sm_state,
            applied: Vec::new(),
            applied_index,
            read_states: Vec::new(),
            aborted_reads: Vec::new(),
            snapshots_installed: 0,
            busy: false,
        };
        self.peers.insert(id, peer);
    }

    /// The member crashes and restarts from what it made durable.
    fn restart(&mut self, id: NodeId) {
        let peer = self.peers.remove(&id).expect("a member");
        self.add_member(peer.cfg, peer.storage.restart_state());
    }

    fn ids(&self) -> Vec<NodeId> {
        self.peers.keys().copied().collect()
    }

    fn peer(&self, id: NodeId) -> &Peer {
        self.peers.get(&id).unwrap_or_else(|| panic!("no member {id}"))
    }

    fn peer_mut(&mut self, id: NodeId) -> &mut Peer {
        self.peers.get_mut(&id).unwrap_or_else(|| panic!("no member {id}"))
    }

    fn raft(&self, id: NodeId) -> &Raft {
        &self.peer(id).node.raft
    }

    fn raft_mut(&mut self, id: NodeId) -> &mut Raft {
        &mut self.peer_mut(id).node.raft
    }

    fn step(&mut self, id: NodeId, m: Message) {
        self.peer_mut(id).node.step(m);
    }

    // ----- links -----

    fn cut(&mut self, a: NodeId, b: NodeId) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.cut(id, other);
            }
        }
    }

    /// Cuts every link between `side` and the other members.
    fn partition(&mut self, side: &[NodeId]) {
        for a in side {
            for b in self.ids() {
                if !side.contains(&b) {
                    self.cut(*a, b);
                }
            }
        }
    }

    fn reconnect(&mut self, id: NodeId) {
        self.cut.retain(|(a, b)| *a != id && *b != id);
    }

    fn drop_when(&mut self, rule: impl FnMut(&Message) -> bool + 'static) {
        self.drop_rule = Some(Box::new(rule));
    }

    fn heal(&mut self) {
        self.cut.clear();
        self.drop_rule = None;
    }

    // ----- time -----

    fn tick(&mut self, id: NodeId, times: u32) {
        for _ in 0..times {
            self.peer_mut(id).node.tick();
        }
    }

    /// Every member ticks once, then the network settles; `times` over.
    fn tick_all(&mut self, times: u32) {
        for _ in 0..times {
            for peer in self.peers.values_mut() {
                peer.node.tick();
            }
            self.stabilize();
        }
    }

    /// Ticks every member, one tick at a time, until `done` holds; panics after `max_ticks`.
    fn tick_all_until(&mut self, max_ticks: u32, what: &str, done: impl Fn(&Network) -> bool) -> u32 {
        for ticks in 0..max_ticks {
            if done(self) {
                return ticks;
            }
            self.tick_all(1);
        }
        assert!(done(self), "{what} did not happen within {max_ticks} ticks");
        max_ticks
    }

    /// Ticks until `id`'s election timer fires.
    fn ticks_to_timeout(&self, id: NodeId) -> u32 {
        let raft = self.raft(id);
        raft.randomized_election_timeout().saturating_sub(raft.election_elapsed).max(1)
    }

    /// Lets `id`'s election timer fire, then lets the network settle; `id` must win.
    fn elect(&mut self, id: NodeId) {
        let ticks = self.ticks_to_timeout(id);
        self.tick(id, ticks);
        self.stabilize();
        assert_eq!(self.raft(id).role(), Role::Leader, "member {id} won the election");
    }

    /// Lets the leader's heartbeat timer fire, then lets the network settle.
    fn heartbeat(&mut self, leader: NodeId) {
        let interval = self.peer(leader).cfg.heartbeat_interval_ticks;
        self.tick(leader, interval);
        self.stabilize();
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.peers.iter().filter(|(_, p)| p.node.raft.role() == Role::Leader).map(|(id, _)| *id).collect()
    }

    // ----- Ready handling -----

    /// Handles every `Ready` and delivers every message until nothing is left to do.
    fn stabilize(&mut self) {
        for _ in 0..MAX_ROUNDS {
            let ready: Vec<NodeId> =
                self.peers.iter().filter(|(_, p)| !p.busy && p.node.has_ready()).map(|(id, _)| *id).collect();
            if ready.is_empty() && self.in_flight.is_empty() {
                return;
            }
            for id in ready {
                let rd = self.peer_mut(id).node.ready();
                self.process_ready(id, rd, true);
            }
            while let Some(m) = self.in_flight.pop_front() {
                self.deliver(m);
            }
        }
        panic!("the network did not settle within {MAX_ROUNDS} rounds");
    }

    fn deliver(&mut self, m: Message) {
        if self.cut.contains(&(m.from, m.to)) {
            return;
        }
        if let Some(rule) = self.drop_rule.as_mut() {
            if rule(&m) {
                return;
            }
        }
        if let Some(peer) = self.peers.get_mut(&m.to) {
            peer.node.step(m);
        }
    }

    /// Puts messages on the wire.
    fn post(&mut self, messages: impl IntoIterator<Item = Message>) {
        for m in messages {
            self.trace.push(m.clone());
            self.in_flight.push_back(m);
        }
    }

    /// Takes one `Ready` of `id` and handles it, but returns its messages instead of sending them.
    fn ready_messages(&mut self, id: NodeId) -> Vec<Message> {
        if !self.peer(id).node.has_ready() {
            return Vec::new();
        }
        let rd = self.peer_mut(id).node.ready();
        self.process_ready(id, rd, false)
    }

    /// Does what a host does with a `Ready`, in the order `ready.rs` prescribes: persist, send,
    /// apply, advance. With `send` false the messages are returned instead.
    fn process_ready(&mut self, id: NodeId, mut rd: Ready, send: bool) -> Vec<Message> {
        let mut messages = std::mem::take(&mut rd.messages);
        messages.append(&mut rd.persisted_messages);
        let peer = self.peers.get_mut(&id).expect("a member");
        // 1. Persist.
        assert!(peer.storage.persist(&rd), "entries to persist continue the durable log");
        // 2. Send, but only what is backed by durable state.
        for m in &messages {
            check_durable_before_send(id, &peer.storage, m);
        }
        // 3. Apply.
        if let Some(snapshot) = &rd.snapshot {
            peer.state = decode_state(&snapshot.data);
            peer.applied_index = snapshot.meta.index;
            peer.snapshots_installed += 1;
        }
        for entry in &rd.committed_entries {
            assert_eq!(entry.index, peer.applied_index + 1, "member {id} applies in order, without gaps");
            if let EntryPayload::Command(data) = &entry.payload {
                peer.state.push(data.clone());
            }
            peer.applied.push(entry.clone());
            peer.applied_index = entry.index;
            match self.applied_entries.entry(entry.index) {
                btree_map::Entry::Occupied(first) => assert_eq!(
                    first.get(),
                    entry,
                    "§5.4.3 State Machine Safety: member {id} applied a different entry at {}",
                    entry.index
                ),
                btree_map::Entry::Vacant(slot) => {
                    slot.insert(entry.clone());
                }
            }
        }
        peer.read_states.extend(rd.read_states);
        peer.aborted_reads.extend(rd.aborted_reads);
        // 4. Advance.
        peer.node.advance();

        let raft = &peer.node.raft;
        assert!(raft.commit_index() <= raft.log().last_index(), "member {id} committed past its log");
        assert!(raft.applied_index() <= raft.commit_index(), "member {id} applied past its commit index");
        if raft.role() == Role::Leader {
            let first = *self.leaders_by_term.entry(raft.term()).or_insert(id);
            assert_eq!(first, id, "§5.2 Election Safety: two leaders in term {}", raft.term());
        }
        if send {
            self.post(messages);
            Vec::new()
        } else {
            messages
        }
    }

    // ----- clients -----

    fn propose(&mut self, id: NodeId, command: &str) -> Index {
        match self.raft_mut(id).propose(data(command)) {
            Ok((index, _)) => index,
            Err(e) => panic!("member {id} refused a proposal: {e}"),
        }
    }

    fn propose_conf_change(&mut self, id: NodeId, kind: ConfChangeKind, node_id: NodeId) -> Index {
        match self.raft_mut(id).propose_conf_change(conf_change(kind, node_id)) {
            Ok((index, _)) => index,
            Err(e) => panic!("member {id} refused a membership change: {e}"),
        }
    }

    /// Folds everything `id` applied into a snapshot, as a host does after applying.
    fn compact(&mut self, id: NodeId) -> SnapshotMeta {
        let peer = self.peer_mut(id);
        let image = encode_state(&peer.state);
        let meta = peer.node.raft.compact(image.clone()).expect("something to compact");
        peer.storage.entries.retain(|e| e.index > meta.index);
        peer.storage.snapshot = Some(Snapshot { meta: meta.clone(), data: image });
        meta
    }

    /// The state machine of `id`, as strings.
    fn commands(&self, id: NodeId) -> Vec<String> {
        self.peer(id).state.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect()
    }

    fn log_entries(&self, id: NodeId) -> Vec<Entry> {
        self.raft(id).log().entries().to_vec()
    }

    /// The messages sent from `from` to `to` so far, of the given kind.
    fn sent(&self, from: NodeId, to: NodeId, kind: &str) -> Vec<&Message> {
        self.trace.iter().filter(|m| m.from == from && m.to == to && m.body.kind() == kind).collect()
    }
}

fn data(command: &str) -> Bytes {
    Bytes::copy_from_slice(command.as_bytes())
}

fn conf_change(kind: ConfChangeKind, node_id: NodeId) -> ConfChange {
    ConfChange { kind, node_id, context: Bytes::new() }
}

fn voters(size: u64) -> ConfState {
    ConfState { voters: (1..=size).collect(), learners: BTreeSet::new() }
}

/// A member's durable state written by hand, as earlier terms left it: one entry per element of
/// `terms` (index i+1 holds the command "i+1@term"), the current `term`, and entries up to
/// `commit` committed and applied in a cluster of `size` voters.
fn state_with_log(size: u64, terms: &[Term], term: Term, commit: Index) -> InitialState {
    let entries = terms
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let index = i as u64 + 1;
            Entry { index, term: *t, payload: EntryPayload::Command(data(&format!("{index}@{t}"))) }
        })
        .collect();
    InitialState {
        hard_state: HardState { term, vote: None, commit },
        // The configuration comes from the snapshot base (index 0) and the log.
        snapshot: Some(Snapshot { meta: SnapshotMeta { index: 0, term: 0, conf: voters(size) }, data: Bytes::new() }),
        entries,
        applied: commit,
    }
}

fn msg(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Message {
    Message { from, to, term, body }
}

fn vote_request(from: NodeId, to: NodeId, term: Term, last_index: Index, last_term: Term) -> Message {
    msg(from, to, term, MessageBody::Vote { last_index, last_term, transfer: false })
}

fn no_pre_vote(cfg: &mut Config) {
    cfg.pre_vote = false;
}

// ===================================================================================
// §5.2 Leader election
// ===================================================================================

/// §5.2: "Raft uses randomized election timeouts ... chosen randomly from a fixed interval",
/// and "each candidate restarts its randomized election timeout at the start of an election".
#[test]
fn section_5_2_election_timeouts_are_random_in_min_max_and_redrawn_for_every_election() {
    let mut drawn = BTreeSet::new();
    for seed in 0..1000 {
        let cfg = Config { seed, ..Config::new(1) };
        let (min, max) = (cfg.election_timeout_min_ticks, cfg.election_timeout_max_ticks);
        let raft = Raft::new(cfg, InitialState::default()).expect("valid config");
        let timeout = raft.randomized_election_timeout();
        assert!((min..max).contains(&timeout), "seed {seed}: timeout {timeout} outside [{min}, {max})");
        drawn.insert(timeout);
    }
    assert_eq!(drawn.len(), 15, "every timeout in [15, 30) is drawn for some seed: {drawn:?}");

    // A candidate that cannot win (its peers are unreachable) waits exactly its current timeout,
    // then starts a new election with a freshly drawn one.
    let mut net = Network::with_config(3, no_pre_vote);
    net.isolate(1);
    let mut timeouts = Vec::new();
    for election in 0..20u64 {
        let timeout = net.raft(1).randomized_election_timeout();
        assert!((15..30).contains(&timeout));
        net.tick(1, timeout - 1);
        assert_eq!(net.raft(1).term(), 1 + election, "no new election one tick before the timeout");
        net.tick(1, 1);
        assert_eq!(net.raft(1).term(), 2 + election, "a new election exactly at the timeout");
        assert_eq!(net.raft(1).role(), Role::Candidate);
        net.stabilize();
        timeouts.push(timeout);
    }
    let distinct: BTreeSet<u32> = timeouts.iter().copied().collect();
    assert!(distinct.len() >= 8, "successive elections use fresh random timeouts: {timeouts:?}");
}

/// §5.2: "If a follower receives no communication over a period of time called the election
/// timeout, then it ... begins an election": it increments its term, votes for itself and
/// issues RequestVote to every other server.
#[test]
fn section_5_2_follower_campaigns_after_its_election_timeout_and_not_before() {
    let mut net = Network::with_config(3, no_pre_vote);
    let timeout = net.raft(1).randomized_election_timeout();
    net.tick(1, timeout - 1);
    assert_eq!(net.raft(1).role(), Role::Follower);
    assert_eq!(net.raft(1).term(), 1);
    assert!(net.ready_messages(1).is_empty(), "nothing is sent before the timeout");

    net.tick(1, 1);
    assert_eq!(net.raft(1).role(), Role::Candidate);
    assert_eq!(net.raft(1).term(), 2);
    assert_eq!(net.raft(1).vote(), Some(1), "a candidate votes for itself");
    let expected: Vec<Message> = [2, 3].iter().map(|to| vote_request(1, *to, 2, 3, 1)).collect();
    assert_eq!(net.ready_messages(1), expected);
}

/// Thesis §9.6: with pre-vote, a timed-out follower first asks whether it could win, with the
/// term it would use, and changes neither its term nor its vote.
#[test]
fn thesis_9_6_with_pre_vote_a_timed_out_follower_asks_first_without_changing_its_term() {
    let mut net = Network::new(3);
    let timeout = net.raft(1).randomized_election_timeout();
    net.tick(1, timeout);
    assert_eq!(net.raft(1).role(), Role::PreCandidate);
    assert_eq!(net.raft(1).term(), 1);
    assert_eq!(net.raft(1).vote(), None);
    let expected: Vec<Message> =
        [2, 3].iter().map(|to| msg(1, *to, 2, MessageBody::PreVote { last_index: 3, last_term: 1 })).collect();
    assert_eq!(net.ready_messages(1), expected);
}

/// §5.2: "Each server will vote for at most one candidate in a given term, on a
/// first-come-first-served basis"; a repeated request from the same candidate is granted
/// again (it may have lost the reply), and (Figure 2) a server that grants a vote resets its
/// election timer.
#[test]
fn section_5_2_a_voter_grants_one_vote_per_term_first_come_first_served() {
    let mut net = Network::with_config(3, no_pre_vote);
    net.step(3, vote_request(1, 3, 2, 3, 1));
    assert_eq!(net.ready_messages(3), vec![msg(3, 1, 2, MessageBody::VoteResp { granted: true })]);
    assert_eq!(net.raft(3).vote(), Some(1));
    assert_eq!(net.peer(3).storage.hard_state, HardState { term: 2, vote: Some(1), commit: 3 });

    net.tick(3, 5);
    assert_eq!(net.raft(3).election_elapsed, 5);
    net.step(3, vote_request(2, 3, 2, 3, 1));
    assert_eq!(
        net.ready_messages(3),
        vec![msg(3, 2, 2, MessageBody::VoteResp { granted: false })],
        "a second candidate in the same term is refused"
    );
    assert_eq!(net.raft(3).vote(), Some(1));
    assert_eq!(net.raft(3).election_elapsed, 5, "refusing a vote does not reset the election timer");

    net.step(3, vote_request(1, 3, 2, 3, 1));
    assert_eq!(
        net.ready_messages(3),
        vec![msg(3, 1, 2, MessageBody::VoteResp { granted: true })],
        "a duplicate request from the candidate voted for is granted again"
    );
    assert_eq!(net.raft(3).election_elapsed, 0, "granting a vote resets the election timer");
}

/// §5.4.1: "the voter denies its vote if its own log is more up-to-date than that of the
/// candidate": compare the terms of the last entries; with equal terms, the longer log wins.
#[test]
fn section_5_4_1_a_voter_refuses_a_candidate_whose_log_is_less_up_to_date() {
    // The voter's log: terms 1, 1, 1, 2, 3 (last entry: index 5, term 3).
    let mut voter =
        Raft::new(Config { pre_vote: false, ..Config::new(1) }, state_with_log(3, &[1, 1, 1, 2, 3], 3, 3)).unwrap();
    let mut ask = |term: Term, last_index: Index, last_term: Term| -> bool {
        voter.step(vote_request(2, 1, term, last_index, last_term));
        let replies = std::mem::take(&mut voter.msgs);
        assert_eq!(replies.len(), 1);
        assert_eq!(voter.term(), term, "a higher-term request moves the voter to that term");
        match replies[0].body {
            MessageBody::VoteResp { granted } => granted,
            ref other => panic!("unexpected reply {other:?}"),
        }
    };
    assert!(!ask(4, 10, 2), "a lower last term loses, even with a longer log");
    assert!(!ask(5, 4, 3), "the same last term with a shorter log loses");
    assert!(ask(6, 5, 3), "the same last entry is up-to-date");
    assert!(ask(7, 2, 4), "a higher last term wins, even with a shorter log");
}

/// §5.2: "if many followers become candidates at the same time, votes could be split so that
/// no candidate obtains a majority. When this happens, each candidate will time out and start
/// a new election by incrementing its term".
#[test]
fn section_5_2_a_split_vote_is_resolved_by_a_new_election_in_a_higher_term() {
    let mut net = Network::with_config(4, no_pre_vote);
    // Members 1 and 2 time out together; member 3's vote reaches only 1, member 4's only 2.
    net.cut(1, 4);
    net.cut(2, 3);
    let t1 = net.ticks_to_timeout(1);
    net.tick(1, t1);
    let t2 = net.ticks_to_timeout(2);
    net.tick(2, t2);
    net.stabilize();
    for id in [1, 2] {
        assert_eq!(net.raft(id).role(), Role::Candidate, "member {id} is still a candidate");
        assert_eq!(net.raft(id).term(), 2);
    }
    assert_eq!(net.raft(3).vote(), Some(1));
    assert_eq!(net.raft(4).vote(), Some(2));
    assert!(net.leaders().is_empty(), "two votes of four is not a majority");

    net.heal();
    net.tick_all_until(100, "a new election", |net| !net.leaders().is_empty());
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 1, "exactly one leader: {leaders:?}");
    let leader = leaders[0];
    assert_eq!(net.raft(leader).term(), 3, "the new election ran in the next term");
    for id in net.ids() {
        assert_eq!(net.raft(id).term(), 3);
        assert_eq!(net.raft(id).leader(), Some(leader));
    }
}

/// §5.2: "Leaders send periodic heartbeats (AppendEntries RPCs that carry no log entries) to
/// all followers in order to maintain their authority" — here every heartbeat interval.
#[test]
fn section_5_2_leader_sends_heartbeats_every_heartbeat_interval_and_not_in_between() {
    let mut net = Network::new(3);
    net.elect(1);
    let interval = net.peer(1).cfg.heartbeat_interval_ticks;
    net.trace.clear();
    for tick in 1..=4 * interval {
        net.tick(1, 1);
        net.stabilize();
        let heartbeats: Vec<NodeId> = std::mem::take(&mut net.trace)
            .into_iter()
            .filter(|m| m.from == 1 && matches!(m.body, MessageBody::Heartbeat { .. }))
            .map(|m| m.to)
            .collect();
        if tick % interval == 0 {
            assert_eq!(heartbeats, vec![2, 3], "tick {tick}: one heartbeat to every follower");
        } else {
            assert!(heartbeats.is_empty(), "tick {tick}: no heartbeat between intervals");
        }
    }
    assert_eq!(net.raft(1).role(), Role::Leader);
}

/// Thesis §6.2 (and §9.6): with check-quorum, "a leader steps down if an election timeout
/// elapses without a successful round of heartbeats to a majority of its cluster", and then
/// serves neither writes nor reads.
#[test]
fn thesis_6_2_check_quorum_a_leader_cut_off_from_the_majority_steps_down_and_stops_serving() {
    let mut net = Network::new(3);
    net.elect(1);
    let term = net.raft(1).term();
    let min = net.peer(1).cfg.election_timeout_min_ticks;
    net.isolate(1);
    let mut ticks = 0;
    while net.raft(1).role() == Role::Leader {
        net.tick(1, 1);
        net.stabilize();
        ticks += 1;
        assert!(ticks <= 2 * min, "the leader stepped down within two election timeouts");
    }
    assert!(ticks >= min, "the leader kept its role for a full election timeout (stepped down after {ticks})");
    assert_eq!(net.raft(1).role(), Role::Follower);
    assert_eq!(net.raft(1).term(), term, "stepping down does not change the term");
    assert_eq!(net.raft(1).leader(), None);
    assert_eq!(net.raft_mut(1).propose(data("x")), Err(ProposeError::NotLeader { leader: None }));
    assert_eq!(net.raft_mut(1).read_index(7), Err(ProposeError::NotLeader { leader: None }));
}

// ===================================================================================
// §5.3 Log replication, §5.4 Safety
// ===================================================================================

/// §5.3: "A log entry is committed once the leader that created the entry has replicated it on
/// a majority of the servers" — and not before.
#[test]
fn section_5_3_an_entry_commits_once_a_majority_holds_it_and_not_before() {
    // Three members: the leader and one follower are a majority.
    let mut net = Network::new(3);
    net.elect(1);
    net.isolate(1);
    let index = net.propose(1, "x");
    net.stabilize();
    assert_eq!(net.peer(1).storage.last_index(), index, "durable on the leader");
    assert!(net.raft(1).commit_index() < index, "the leader alone is no majority");

    net.reconnect(1);
    net.cut(1, 3);
    net.heartbeat(1);
    assert_eq!(net.peer(2).storage.last_index(), index, "durable on follower 2");
    assert_eq!(net.raft(1).commit_index(), index, "leader + follower 2 of three commit");
    assert!(net.raft(3).log().term(index).is_none(), "follower 3 never got it");
    assert_eq!(net.commands(1), ["x"]);
    assert_eq!(net.raft(2).commit_index(), index, "§5.3: followers learn the commit index");
    assert_eq!(net.commands(2), ["x"]);

    // Five members: the leader and one follower are not a majority; a third holder is.
    let mut net = Network::new(5);
    net.elect(1);
    for id in [3, 4, 5] {
        net.cut(1, id);
    }
    let index = net.propose(1, "y");
    net.stabilize();
    assert_eq!(net.raft(2).log().term(index), Some(net.raft(1).term()));
    assert!(net.raft(1).commit_index() < index, "two of five do not commit");
    net.reconnect(3);
    net.heartbeat(1);
    assert_eq!(net.raft(1).commit_index(), index, "three of five commit");
}

/// Thesis §10.2.1: the leader may send entries before its own write finishes, but counts
/// itself toward a commit only once they are durable.
#[test]
fn thesis_10_2_1_a_leader_counts_itself_toward_a_commit_only_once_its_log_is_durable() {
    let mut net = Network::new(3);
    net.elect(1);
    net.cut(1, 3);
    let index = net.propose(1, "x");
    // The host sends the appends while its own disk write is still running.
    let rd = net.peer_mut(1).node.ready();
    assert_eq!(rd.entries.last().map(|e| e.index), Some(index));
    let appends = rd.messages.clone();
    net.post(appends);
    net.peer_mut(1).busy = true;
    net.stabilize();
    assert_eq!(net.raft(1).progress(2).map(|p| p.matched), Some(index), "follower 2 acknowledged");
    assert!(net.raft(1).commit_index() < index, "one durable copy of three is not a majority");

    // The write finishes.
    net.peer_mut(1).busy = false;
    net.process_ready(1, rd, false);
    assert_eq!(net.raft(1).commit_index(), index);
    net.stabilize();
    assert_eq!(net.commands(1), ["x"]);
    assert_eq!(net.commands(2), ["x"]);
}

/// Asynchronous writes (issue 19, raft-rs's async storage writes): the host takes the next
/// `Ready` while the leader's own write runs. The followers' two durable copies commit the entry
/// without the leader's (a majority of three, thesis §10.2.1), but the leader hands it out to
/// apply only once its own write is durable, and hands out its entries to write only once.
#[test]
fn async_writes_commit_from_followers_during_the_leaders_write_and_apply_once_it_is_durable() {
    let mut net = Network::new(3);
    net.elect(1);
    net.peer_mut(1).node.set_async_writes(true);
    let index = net.propose(1, "x");
    let first = net.peer_mut(1).node.ready();
    assert_eq!(first.entries.last().map(|e| e.index), Some(index));
    net.post(first.messages.clone());
    net.peer_mut(1).busy = true;
    net.stabilize();
    assert_eq!(net.raft(1).commit_index(), index, "two durable copies of three commit");
    assert_eq!(net.raft(1).log().stable, index - 1, "the leader's own write is still running");

    // The next Ready while the write runs: the commit index to write, but neither the entry
    // again nor anything to apply.
    let second = net.peer_mut(1).node.ready();
    assert!(second.entries.is_empty(), "entries are handed out to write once");
    assert!(second.committed_entries.is_empty(), "nothing applies before it is durable here");
    net.post(second.messages.clone());
    net.peer_mut(1).node.advance_apply();
    assert!(net.commands(1).is_empty());

    // Both writes finish; only now is the entry applied.
    let peer = net.peer_mut(1);
    assert!(peer.storage.persist(&first) && peer.storage.persist(&second));
    peer.node.persisted(second.number);
    peer.busy = false;
    assert_eq!(net.raft(1).log().stable, index);
    net.stabilize();
    assert_eq!(net.commands(1), ["x"]);
    assert_eq!(net.commands(2), ["x"]);
}

/// With the planted bug `LeaderCountsUnwritten` the leader counts its own entries once handed
/// out: with one follower's copy it commits an entry that only that follower holds durably.
#[test]
fn planted_leader_counts_unwritten_commits_with_one_durable_copy_of_three() {
    let mut net = Network::with_config(3, |cfg| cfg.planted = Some(PlantedBug::LeaderCountsUnwritten));
    net.elect(1);
    net.peer_mut(1).node.set_async_writes(true);
    net.cut(1, 3);
    let index = net.propose(1, "x");
    let first = net.peer_mut(1).node.ready();
    net.post(first.messages.clone());
    net.peer_mut(1).busy = true;
    net.stabilize();
    assert_eq!(net.raft(1).commit_index(), index, "the bug: one durable copy of three committed");
}

/// §5.4.2, Figure 8 (c): "Raft never commits log entries from previous terms by counting
/// replicas. Only log entries from the leader's current term are committed by counting
/// replicas"; earlier entries commit indirectly, through an entry of the current term.
#[test]
fn section_5_4_2_never_commit_an_entry_of_a_previous_term_by_counting_replicas() {
    // Member 1 led term 2 and wrote index 2; member 5 led term 3 and wrote another index 2.
    let cfg = |id| Config { max_msg_bytes: 1, ..Config::new(id) };
    let mut net = Network::from_states(vec![
        (cfg(1), state_with_log(5, &[1, 2], 3, 1)),
        (cfg(2), state_with_log(5, &[1], 3, 1)),
        (cfg(3), state_with_log(5, &[1], 3, 1)),
        (cfg(4), state_with_log(5, &[1], 3, 1)),
        (cfg(5), state_with_log(5, &[1, 3], 3, 1)),
    ]);
    // Acknowledgements of the new leader's no-op (index 3) are lost, so the leader learns that
    // the others hold index 2, and nothing more.
    net.drop_when(|m| matches!(m.body, MessageBody::AppendResp { index, reject: None } if index >= 3));
    net.elect(1);
    assert_eq!(net.raft(1).term(), 4);
    assert_eq!(net.raft(1).log().term(3), Some(4), "the new leader's no-op");
    for id in 2..=5 {
        assert_eq!(net.raft(id).log().term(2), Some(2), "member {id} holds the term-2 entry");
        assert_eq!(net.raft(1).progress(id).map(|p| p.matched), Some(2));
    }
    assert_eq!(net.raft(1).commit_index(), 1, "an entry of term 2 on every member is still not committed in term 4");
    assert!(!net.applied_entries.contains_key(&2), "nobody applied index 2");

    // Once an entry of the current term is known to be on a majority, both commit.
    net.heal();
    net.heartbeat(1);
    assert_eq!(net.raft(1).commit_index(), 3);
    for id in 1..=5 {
        assert_eq!(net.commands(id), ["2@2"], "member {id} applied the term-2 entry");
    }
}

/// §5.4.2, Figure 8 (d): why the rule above is needed. An entry of an earlier term stored on
/// a majority can still be overwritten by a leader whose log ends in a later term.
#[test]
fn section_5_4_2_figure_8_an_old_term_entry_on_a_majority_can_still_be_overwritten() {
    let mut net = Network::from_states(vec![
        (Config::new(1), state_with_log(5, &[1, 2], 4, 1)),
        (Config::new(2), state_with_log(5, &[1, 2], 4, 1)),
        (Config::new(3), state_with_log(5, &[1, 2], 4, 1)),
        (Config::new(4), state_with_log(5, &[1], 4, 1)),
        (Config::new(5), state_with_log(5, &[1, 3], 4, 1)),
    ]);
    // Member 1, which wrote index 2 in term 2, has crashed; member 5 campaigns.
    net.isolate(1);
    net.elect(5);
    assert_eq!(net.raft(5).term(), 5, "2, 3 and 4 voted for a log ending in term 3");
    for id in 2..=5 {
        assert_eq!(net.raft(id).log().term(2), Some(3), "member {id}'s index 2 is now the term-3 entry");
        assert_eq!(net.commands(id), ["2@3"]);
    }
    // Member 1 comes back and its entry is replaced too.
    net.heal();
    net.heartbeat(5);
    assert_eq!(net.log_entries(1), net.log_entries(5));
    assert_eq!(net.commands(1), ["2@3"]);
}

/// §5.3/§5.4: "the leader handles inconsistencies by forcing the followers' logs to duplicate
/// its own"; uncommitted entries of a leader cut off from the majority are rolled back when the
/// partition heals, and never applied anywhere. The stale leader steps down on seeing the
/// newer term (§5.1).
#[test]
fn section_5_3_uncommitted_entries_of_a_partitioned_leader_are_rolled_back_when_it_heals() {
    let mut net = Network::new(5);
    net.elect(1);
    let old_term = net.raft(1).term();
    net.partition(&[1, 2]);
    let lost_a = net.propose(1, "lost-a");
    let lost_b = net.propose(1, "lost-b");
    net.stabilize();
    assert_eq!(net.raft(2).log().term(lost_b), Some(old_term), "the minority holds the entries");
    assert!(net.raft(1).commit_index() < lost_a, "but cannot commit them");

    net.tick_all_until(200, "an election in the majority", |net| net.leaders().iter().any(|id| [3, 4, 5].contains(id)));
    let new_leader = *net.leaders().iter().find(|id| [3, 4, 5].contains(*id)).expect("a new leader");
    let new_term = net.raft(new_leader).term();
    assert!(new_term > old_term);
    net.propose(new_leader, "new-a");
    let new_b = net.propose(new_leader, "new-b");
    net.stabilize();
    assert_eq!(net.raft(new_leader).commit_index(), new_b, "the majority commits without the old leader");
    assert_eq!(net.raft(1).log().term(lost_a), Some(old_term), "the old leader still holds its entries");

    net.heal();
    net.tick_all_until(200, "the old leader rejoining", |net| {
        (1..=5)
            .all(|id| net.raft(id).leader() == Some(new_leader) && net.log_entries(id) == net.log_entries(new_leader))
    });
    assert_eq!(net.raft(1).role(), Role::Follower);
    assert_eq!(net.raft(1).term(), new_term);
    assert_ne!(net.raft(1).log().entry(lost_a).map(|e| &e.payload), Some(&EntryPayload::Command(data("lost-a"))));
    for id in 1..=5 {
        assert_eq!(net.commands(id), ["new-a", "new-b"], "member {id}'s state machine");
    }
    let lost = [data("lost-a"), data("lost-b")];
    for id in 1..=5 {
        for entry in &net.peer(id).applied {
            let is_lost = matches!(&entry.payload, EntryPayload::Command(c) if lost.contains(c));
            assert!(!is_lost, "member {id} applied {entry:?}");
        }
    }
}

/// §5.3: "the follower can include the term of the conflicting entry and the first index it
/// stores for that term. With this information, the leader can decrement nextIndex to bypass
/// all of the conflicting entries in that term; one AppendEntries RPC will be required for
/// each term with conflicting entries, rather than one RPC per entry."
#[test]
fn section_5_3_a_long_divergent_follower_log_is_repaired_in_few_round_trips() {
    let leader_log: Vec<Term> = [1, 1, 1].into_iter().chain([3; 10]).collect();
    let divergent_log: Vec<Term> = [1, 1, 1].into_iter().chain([2; 50]).collect();
    let mut net = Network::from_states(vec![
        (Config::new(1), state_with_log(3, &leader_log, 3, 13)),
        (Config::new(2), state_with_log(3, &leader_log, 3, 13)),
        (Config::new(3), state_with_log(3, &divergent_log, 2, 3)),
    ]);
    net.elect(1);
    let rejections = net
        .sent(3, 1, "append_resp")
        .iter()
        .filter(|m| matches!(m.body, MessageBody::AppendResp { reject: Some(_), .. }))
        .count();
    assert!(rejections <= 2, "50 divergent entries repaired with {rejections} rejected appends");
    assert_eq!(net.log_entries(3), net.log_entries(1));
    assert_eq!(net.raft(3).log().last_index(), 14);
    assert_eq!(net.raft(3).commit_index(), 14);
}

/// Flow control (etcd's progress tracking; thesis §10.2.2 pipelining): in replicate state a
/// leader keeps at most `max_inflight_msgs` appends outstanding to a follower that does not
/// acknowledge, and resumes when it answers.
#[test]
fn replication_flow_control_keeps_at_most_max_inflight_msgs_appends_outstanding() {
    let mut net = Network::with_config(3, |cfg| cfg.max_inflight_msgs = 3);
    net.elect(1);
    assert_eq!(net.raft(1).progress(2).map(|p| p.state), Some(ProgressState::Replicate));
    net.isolate(2);
    net.trace.clear();
    let mut last = 0;
    for i in 0..10 {
        last = net.propose(1, &format!("c{i}"));
        net.stabilize();
    }
    let with_entries = |net: &Network| {
        net.sent(1, 2, "append")
            .iter()
            .filter(|m| matches!(&m.body, MessageBody::Append { entries, .. } if !entries.is_empty()))
            .count()
    };
    assert_eq!(with_entries(&net), 3, "three appends outstanding, then the leader waits");
    let progress = net.raft(1).progress(2).expect("progress of 2");
    assert_eq!(progress.inflights.len(), 3);
    assert!(progress.is_paused());
    assert_eq!(net.raft(1).commit_index(), last, "the other follower kept commits going");

    net.heal();
    net.tick_all_until(100, "follower 2 catching up", |net| net.log_entries(2) == net.log_entries(1));
    assert_eq!(net.commands(2).len(), 10);
}

// ===================================================================================
// §6.4 / §8 Read-only queries
// ===================================================================================

/// §8: "a leader must have the latest information on which entries are committed ... Raft
/// handles this by having each leader commit a blank no-op entry into the log at the start of
/// its term"; a ReadIndex request is answered only after that, with the commit index then.
#[test]
fn section_8_a_new_leader_answers_read_index_only_after_committing_an_entry_of_its_term() {
    let mut net = Network::new(3);
    net.drop_when(|m| m.from == 1 && matches!(m.body, MessageBody::Append { .. }));
    net.elect(1);
    assert!(!net.raft(1).committed_in_current_term());
    net.raft_mut(1).read_index(42).expect("the leader accepts the read");
    net.stabilize();
    net.heartbeat(1);
    assert!(net.peer(1).read_states.is_empty(), "no answer while the no-op is uncommitted");

    net.heal();
    net.heartbeat(1);
    assert!(net.raft(1).committed_in_current_term());
    let commit = net.raft(1).commit_index();
    assert_eq!(commit, 4, "the no-op");
    assert_eq!(net.peer(1).read_states, [ReadState { ctx: 42, index: commit }]);
}

/// §6.4 (thesis §6.4): the leader records its commit index as the read index, confirms it is
/// still leader with a round of heartbeats, then answers with that index.
#[test]
fn section_6_4_read_index_is_the_commit_index_once_a_heartbeat_round_confirms_leadership() {
    let mut net = Network::new(3);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    let commit = net.raft(1).commit_index();
    net.trace.clear();
    net.raft_mut(1).read_index(7).unwrap();
    assert!(net.peer(1).read_states.is_empty());
    net.stabilize();
    assert_eq!(net.peer(1).read_states, [ReadState { ctx: 7, index: commit }]);
    assert_eq!(net.sent(1, 2, "heartbeat").len(), 1, "a heartbeat round confirmed leadership");
}

/// §6.4: a leader that cannot reach a majority must not answer a read (it may have been
/// deposed); the read is aborted when it steps down. Followers refuse ReadIndex.
#[test]
fn section_6_4_a_leader_cut_off_from_the_majority_never_answers_a_read_and_aborts_it() {
    let mut net = Network::new(3);
    net.elect(1);
    assert_eq!(net.raft_mut(2).read_index(1), Err(ProposeError::NotLeader { leader: Some(1) }));

    net.isolate(1);
    net.raft_mut(1).read_index(9).unwrap();
    net.tick_all_until(100, "the leader stepping down", |net| net.raft(1).role() != Role::Leader);
    assert!(net.peer(1).read_states.is_empty(), "no read state without a majority");
    assert_eq!(net.peer(1).aborted_reads, [9]);
}

/// §8: a read served from a member's local state (a serializable read) may be stale: a
/// follower cut off from the leader keeps its old applied state while the leader commits more.
#[test]
fn section_8_serializable_reads_on_a_follower_may_lag_the_leaders_commit() {
    let mut net = Network::new(3);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    let applied_before = net.raft(3).applied_index();
    net.isolate(3);
    net.propose(1, "b");
    net.propose(1, "c");
    net.stabilize();
    assert_eq!(net.commands(1), ["a", "b", "c"]);
    assert_eq!(net.commands(3), ["a"], "what member 3 can serve locally is stale");
    assert_eq!(net.raft(3).applied_index(), applied_before);
    assert!(net.raft(3).applied_index() < net.raft(1).commit_index());
    net.heal();
    net.heartbeat(1);
    assert_eq!(net.commands(3), ["a", "b", "c"]);
}

// ===================================================================================
// Thesis §9.6 pre-vote, §4.2.3 disruptive servers
// ===================================================================================

/// Thesis §9.6: "a candidate must first ... learn whether its log is up-to-date enough to win
/// an election before incrementing its term": a member partitioned away for many election
/// timeouts keeps its term, and rejoining does not depose the leader. Without pre-vote the
/// same member's term would climb.
#[test]
fn thesis_9_6_pre_vote_a_partitioned_member_neither_inflates_its_term_nor_disrupts_on_return() {
    let mut net = Network::new(3);
    net.elect(1);
    let term = net.raft(1).term();
    net.isolate(3);
    net.tick_all(300);
    assert_eq!(net.raft(3).term(), term, "ten election timeouts later, still the same term");
    net.heal();
    net.tick_all(100);
    assert_eq!(net.leaders(), [1]);
    for id in 1..=3 {
        assert_eq!(net.raft(id).term(), term);
        assert_eq!(net.raft(id).leader(), Some(1));
    }

    let mut net = Network::with_config(3, no_pre_vote);
    net.elect(1);
    let term = net.raft(1).term();
    net.isolate(3);
    net.tick_all(300);
    assert!(net.raft(3).term() > term + 5, "without pre-vote the isolated member's term climbs");
}

/// Thesis §4.2.3: "if a server receives a RequestVote request within the minimum election
/// timeout of hearing from a current leader, it does not update its term or grant its vote".
#[test]
fn thesis_4_2_3_a_member_that_hears_from_a_leader_ignores_higher_term_vote_requests() {
    let mut net = Network::new(3);
    net.elect(1);
    let term = net.raft(1).term();
    let last_index = net.raft(1).log().last_index();
    for id in [1, 2] {
        net.step(id, vote_request(3, id, term + 5, last_index, term));
        assert!(net.ready_messages(id).is_empty(), "member {id} does not answer");
        assert_eq!(net.raft(id).term(), term, "member {id} keeps its term");
    }
    assert_eq!(net.leaders(), [1]);

    // Once the minimum election timeout passes without word from the leader, it may vote.
    let min = net.peer(2).cfg.election_timeout_min_ticks;
    net.raft_mut(2).election_elapsed = min;
    net.step(2, vote_request(3, 2, term + 5, last_index, term));
    assert_eq!(net.ready_messages(2), [msg(2, 3, term + 5, MessageBody::VoteResp { granted: true })]);
}

/// Thesis §4.2.3: removed servers "can disrupt the cluster" by timing out and starting
/// elections with new term numbers; with the leader lease they are ignored, and the leader
/// keeps its term and keeps committing.
#[test]
fn thesis_4_2_3_a_removed_member_does_not_disturb_the_cluster() {
    // The removed member does not even use pre-vote: the lease alone must suffice.
    let mut net = Network::with_config(3, |cfg| cfg.pre_vote = cfg.id != 3);
    net.elect(1);
    let term = net.raft(1).term();
    net.isolate(3);
    net.propose_conf_change(1, ConfChangeKind::Remove, 3);
    net.stabilize();
    assert_eq!(net.raft(1).conf().voters, BTreeSet::from([1, 2]));
    assert!(net.raft(3).conf().voters.contains(&3), "member 3 never learned of its removal");

    net.heal();
    net.tick_all(300);
    assert!(net.raft(3).term() > term, "the removed member kept campaigning");
    assert_eq!(net.leaders(), [1]);
    assert_eq!(net.raft(1).term(), term);
    assert_eq!(net.raft(2).term(), term);
    let index = net.propose(1, "still-working");
    net.stabilize();
    assert_eq!(net.raft(1).commit_index(), index);
}

// ===================================================================================
// Membership changes (§6; thesis §4)
// ===================================================================================

/// Thesis §4.2.1: a new server joins as a non-voting member (learner): it receives the log but
/// neither campaigns, nor is asked for votes, nor counts toward commitment — until promoted.
#[test]
fn thesis_4_2_1_a_learner_gets_the_log_but_neither_votes_nor_counts_until_promoted() {
    let mut net = Network::new(3);
    net.elect(1);
    for learner in [4, 5] {
        net.add_member(Config::new(learner), InitialState::default());
        net.propose_conf_change(1, ConfChangeKind::AddLearner, learner);
        net.stabilize();
    }
    net.heartbeat(1);
    for learner in [4, 5] {
        assert_eq!(net.log_entries(learner), net.log_entries(1), "learner {learner} received the whole log");
        assert_eq!(net.raft(learner).conf().learners, BTreeSet::from([4, 5]));
        assert_eq!(net.raft(learner).conf().voters, BTreeSet::from([1, 2, 3]));
    }

    // It never campaigns...
    let term = net.raft(4).term();
    net.isolate(4);
    net.tick(4, 300);
    net.stabilize();
    assert_eq!(net.raft(4).role(), Role::Follower);
    assert_eq!(net.raft(4).term(), term);
    assert!(net.trace.iter().all(|m| m.from != 4 || !matches!(m.body.kind(), "pre_vote" | "vote")));
    net.heal();

    // ... nor is asked for a vote ...
    net.raft_mut(1).transfer_leader(Some(2)).unwrap();
    net.stabilize();
    assert_eq!(net.leaders(), [2]);
    assert_eq!(net.sent(2, 1, "vote").len(), 1);
    assert!(net.sent(2, 4, "vote").is_empty() && net.sent(2, 5, "vote").is_empty());

    // ... nor counts: with the other voters cut off, the leader and both learners hold a new
    // entry — three of five members, but one of three voters.
    net.isolate(1);
    net.isolate(3);
    for learner in [4, 5] {
        net.reconnect(learner);
    }
    let index = net.propose(2, "x");
    net.stabilize();
    assert!(net.raft(4).log().term(index).is_some() && net.raft(5).log().term(index).is_some());
    assert!(net.raft(2).commit_index() < index, "learners do not count toward a majority");
    net.heal();
    net.heartbeat(2);
    assert_eq!(net.raft(2).commit_index(), index);

    // Promoted, it counts: with 3 and 4 cut off, leader 2 and member 1 are two of four voters
    // (learner 5 holding the entry does not help); member 4's acknowledgement makes three.
    net.propose_conf_change(2, ConfChangeKind::Promote, 4);
    net.stabilize();
    for id in 1..=5 {
        assert_eq!(net.raft(id).conf().voters, BTreeSet::from([1, 2, 3, 4]), "member {id}");
    }
    net.isolate(3);
    net.isolate(4);
    net.reconnect(5);
    let index = net.propose(2, "y");
    net.stabilize();
    assert!(net.raft(2).commit_index() < index, "two of four voters do not commit");
    net.reconnect(4);
    net.cut(3, 4);
    net.heartbeat(2);
    assert_eq!(net.raft(2).commit_index(), index, "members 1, 2 and 4 commit");
}

/// Thesis §4.1: membership changes one server at a time; "a new configuration ... cannot be
/// proposed until the previous one has been applied". A removed member stops being replicated to.
#[test]
fn thesis_4_1_one_membership_change_at_a_time() {
    let mut net = Network::new(3);
    net.elect(1);
    net.propose_conf_change(1, ConfChangeKind::Remove, 3);
    assert_eq!(
        net.raft_mut(1).propose_conf_change(conf_change(ConfChangeKind::AddLearner, 5)),
        Err(ProposeError::ConfChangePending)
    );
    net.stabilize();
    for id in [1, 2] {
        assert_eq!(net.raft(id).conf().voters, BTreeSet::from([1, 2]), "member {id}");
    }
    assert!(net.raft(1).progress(3).is_none(), "the leader stopped tracking member 3");
    assert_eq!(
        net.raft_mut(1).propose_conf_change(conf_change(ConfChangeKind::Remove, 3)),
        Err(ProposeError::InvalidConfChange(ConfChangeError::NotAMember(3)))
    );
    net.propose_conf_change(1, ConfChangeKind::AddLearner, 5);
    net.trace.clear();
    let index = net.propose(1, "after");
    net.stabilize();
    assert_eq!(net.raft(1).commit_index(), index);
    assert!(net.sent(1, 3, "append").is_empty(), "nothing more is sent to the removed member");
}

/// Thesis §4.1: "a server always uses the latest configuration in its log, regardless of
/// whether the entry is committed"; when a new leader removes such an uncommitted entry, the
/// member falls back to the configuration before it.
#[test]
fn thesis_4_1_the_newest_configuration_in_the_log_applies_at_once_and_reverts_if_rolled_back() {
    let mut net = Network::new(5);
    net.elect(1);
    net.partition(&[1, 2]);
    let index = net.propose_conf_change(1, ConfChangeKind::AddLearner, 6);
    net.stabilize();
    for id in [1, 2] {
        assert!(net.raft(id).commit_index() < index);
        assert_eq!(net.raft(id).conf().learners, BTreeSet::from([6]), "member {id} uses the uncommitted change");
    }
    assert!(net.raft(3).conf().learners.is_empty(), "members without the entry do not");

    net.tick_all_until(200, "an election in the majority", |net| net.leaders().iter().any(|id| [3, 4, 5].contains(id)));
    let leader = *net.leaders().iter().find(|id| [3, 4, 5].contains(*id)).expect("a new leader");
    net.propose(leader, "majority");
    net.stabilize();
    net.heal();
    net.tick_all_until(200, "the minority rejoining", |net| {
        (1..=5).all(|id| net.log_entries(id) == net.log_entries(leader))
    });
    for id in 1..=5 {
        assert_eq!(net.raft(id).conf(), &voters(5), "member {id} is back to the committed configuration");
    }
    let at_index = net.raft(1).log().entry(index).map(|e| e.payload.clone());
    assert!(!matches!(at_index, Some(EntryPayload::ConfChange(_))), "the change was rolled back: {at_index:?}");
}

/// Thesis §4.2.2: a leader removed from the configuration keeps managing the cluster until the
/// removal commits, then steps down. Here it also hands leadership to a caught-up remaining
/// voter (TimeoutNow, thesis §3.10), so nobody waits for an election timeout; the removed
/// member never campaigns again.
#[test]
fn thesis_4_2_2_a_leader_that_removes_itself_steps_down_once_the_removal_commits() {
    let mut net = Network::new(3);
    net.elect(1);
    let term = net.raft(1).term();
    let index = net.propose_conf_change(1, ConfChangeKind::Remove, 1);
    assert_eq!(net.raft(1).role(), Role::Leader, "it leads while its removal is uncommitted");
    net.stabilize();
    assert_eq!(net.raft(1).commit_index(), index);
    assert_eq!(net.raft(1).role(), Role::Follower);
    let leaders = net.leaders();
    assert!(leaders == [2] || leaders == [3], "a remaining voter took over without a timeout: {leaders:?}");
    let leader = leaders[0];
    assert_eq!(net.raft(leader).term(), term + 1);
    for id in 1..=3 {
        assert_eq!(net.raft(id).conf().voters, BTreeSet::from([2, 3]), "member {id}");
    }
    net.trace.clear();
    net.tick_all(300);
    assert!(net.trace.iter().all(|m| m.from != 1), "the removed leader stays silent");
    assert_eq!(net.leaders(), [leader]);
    let index = net.propose(leader, "without-1");
    net.stabilize();
    assert_eq!(net.raft(leader).commit_index(), index);
    assert_eq!(net.commands(leader), ["without-1"]);
}

// ===================================================================================
// Thesis §3.10 leadership transfer
// ===================================================================================

/// Thesis §3.10: the leader stops accepting requests, and once the target's log matches, sends
/// it TimeoutNow; the target starts an election at once (no election timeout) in a higher term.
#[test]
fn thesis_3_10_leader_transfer_to_an_up_to_date_voter_elects_it_without_a_timeout() {
    let mut net = Network::new(3);
    net.elect(1);
    let term = net.raft(1).term();
    assert_eq!(net.raft_mut(1).transfer_leader(Some(2)), Ok(2));
    assert_eq!(net.raft_mut(1).propose(data("x")), Err(ProposeError::TransferInProgress));
    net.stabilize();
    assert_eq!(net.leaders(), [2], "no tick was needed");
    for id in 1..=3 {
        assert_eq!(net.raft(id).term(), term + 1);
        assert_eq!(net.raft(id).leader(), Some(2));
    }
    let index = net.propose(2, "y");
    net.stabilize();
    assert_eq!(net.raft(1).commit_index(), index);
}

/// Thesis §3.10: "the prior leader sends its log entries to the target server" before
/// TimeoutNow, so a lagging target first catches up and can then win.
#[test]
fn thesis_3_10_leader_transfer_to_a_lagging_follower_first_catches_it_up() {
    let mut net = Network::new(3);
    net.elect(1);
    net.isolate(3);
    for c in ["a", "b", "c"] {
        net.propose(1, c);
    }
    net.stabilize();
    let last = net.raft(1).log().last_index();
    assert!(net.raft(3).log().last_index() < last);
    net.heal();
    net.trace.clear();
    net.raft_mut(1).transfer_leader(Some(3)).unwrap();
    net.stabilize();
    assert_eq!(net.leaders(), [3]);
    let timeout_now = net.trace.iter().position(|m| m.body == MessageBody::TimeoutNow).expect("a TimeoutNow");
    let caught_up = net
        .trace
        .iter()
        .position(|m| m.from == 3 && m.body == MessageBody::AppendResp { index: last, reject: None })
        .expect("member 3 acknowledged the whole log");
    assert!(caught_up < timeout_now, "TimeoutNow only after member 3 caught up");
    assert_eq!(net.commands(3), ["a", "b", "c"]);
}

// ===================================================================================
// §7 Log compaction
// ===================================================================================

/// §7: "the leader must occasionally send snapshots to followers that lag behind ... when it
/// has already discarded the next log entry that it needs to send"; the follower installs it and
/// then continues with later entries.
#[test]
fn section_7_a_follower_behind_the_compacted_log_catches_up_through_install_snapshot() {
    let mut net = Network::new(3);
    net.elect(1);
    net.isolate(3);
    for c in ["a", "b", "c", "d", "e"] {
        net.propose(1, c);
    }
    net.stabilize();
    let meta = net.compact(1);
    assert_eq!(meta.index, net.raft(1).commit_index());
    assert_eq!(meta.conf, voters(3));
    assert!(net.raft(3).log().last_index() < meta.index, "member 3 needs compacted entries");
    assert_eq!(net.raft(1).log().first_index(), meta.index + 1);

    // Member 3 was down; it restarts from its disk and rejoins.
    net.restart(3);
    net.heal();
    net.heartbeat(1);
    assert_eq!(net.sent(1, 3, "install_snapshot").len(), 1);
    assert_eq!(net.peer(3).snapshots_installed, 1, "the snapshot came in a Ready");
    assert_eq!(net.raft(3).log().base().index, meta.index);
    assert_eq!(net.commands(3), ["a", "b", "c", "d", "e"]);

    net.propose(1, "f");
    net.propose(1, "g");
    net.stabilize();
    assert_eq!(net.raft(3).applied_index(), net.raft(1).applied_index());
    assert_eq!(net.commands(3), net.commands(1));
    assert_eq!(net.log_entries(3), net.log_entries(1));
    assert_eq!(net.peer(3).storage.snapshot.as_ref().map(|s| s.meta.index), Some(meta.index));
}

// ===================================================================================
// Durability and robustness
// ===================================================================================

/// §5.1, Figure 2 ("updated on stable storage before responding to RPCs"): the Ready that
/// carries a granted vote also carries the hard state with that vote, and the Ready that
/// carries a successful append acknowledgement carries the entries it acknowledges.
#[test]
fn figure_2_a_ready_persists_what_its_messages_promise() {
    let mut net = Network::with_config(3, no_pre_vote);
    let t = net.ticks_to_timeout(1);
    net.tick(1, t);
    let requests = net.ready_messages(1);
    let to_2 = requests.into_iter().find(|m| m.to == 2).expect("a vote request to 2");
    net.step(2, to_2);
    let rd = net.peer_mut(2).node.ready();
    assert_eq!(rd.hard_state, Some(HardState { term: 2, vote: Some(1), commit: 3 }));
    assert!(rd.messages.is_empty(), "a vote waits for its durable record");
    assert_eq!(rd.persisted_messages, [msg(2, 1, 2, MessageBody::VoteResp { granted: true })]);
    net.process_ready(2, rd, true);
    net.stabilize();
    assert_eq!(net.leaders(), [1]);

    let index = net.propose(1, "x");
    let appends = net.ready_messages(1);
    let to_2 = appends.into_iter().find(|m| m.to == 2).expect("an append to 2");
    net.step(2, to_2);
    let rd = net.peer_mut(2).node.ready();
    assert_eq!(rd.entries.last().map(|e| e.index), Some(index));
    assert!(rd.messages.is_empty(), "an acknowledgement waits for the entries to be durable");
    assert_eq!(rd.persisted_messages, [msg(2, 1, 2, MessageBody::AppendResp { index, reject: None })]);
    net.process_ready(2, rd, true);
}

/// §5.1, Figure 2: currentTerm and votedFor survive a crash, so a restarted member does not
/// vote twice in a term.
#[test]
fn figure_2_a_restarted_member_keeps_its_term_and_vote() {
    let mut net = Network::with_config(3, no_pre_vote);
    net.step(3, vote_request(1, 3, 2, 3, 1));
    assert_eq!(net.ready_messages(3), [msg(3, 1, 2, MessageBody::VoteResp { granted: true })]);
    net.restart(3);
    net.stabilize();
    assert_eq!(net.raft(3).term(), 2);
    assert_eq!(net.raft(3).vote(), Some(1));
    net.step(3, vote_request(2, 3, 2, 3, 1));
    assert_eq!(net.ready_messages(3), [msg(3, 2, 2, MessageBody::VoteResp { granted: false })]);
}

/// Malformed or hostile input from the network must never panic nor corrupt the log: wrong
/// addressees, id 0, absurd indexes, entries that do not follow `prev_index`, unknown senders,
/// empty snapshots.
#[test]
fn bad_input_from_peers_never_panics_or_corrupts_the_log() {
    let mut net = Network::new(3);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    let term = net.raft(1).term();
    let last = net.raft(1).log().last_index();
    let follower_log = net.log_entries(2);
    let entry = |index: Index| Entry { index, term, payload: EntryPayload::Command(data("evil")) };
    let append = |prev_index: Index, prev_term: Term, entries: Vec<Entry>, commit: Index| MessageBody::Append {
        prev_index,
        prev_term,
        entries,
        commit,
    };
    let snapshot = |index: Index| MessageBody::InstallSnapshot {
        snapshot: Snapshot { meta: SnapshotMeta { index, term, conf: ConfState::default() }, data: Bytes::new() },
    };

    let to_follower = vec![
        msg(1, 9, term, MessageBody::Heartbeat { commit: u64::MAX, read_seq: 0 }),
        msg(0, 2, term + 9, vote_request(0, 2, term + 9, u64::MAX, u64::MAX).body),
        msg(2, 2, term + 9, MessageBody::TimeoutNow),
        msg(1, 2, term, append(1_000_000, term, vec![], u64::MAX)),
        msg(1, 2, term, append(u64::MAX, u64::MAX, vec![entry(7)], u64::MAX)),
        msg(1, 2, term, append(last, term, vec![entry(last + 5)], u64::MAX)),
        msg(1, 2, term, append(last, term, vec![entry(last + 1), entry(last + 1)], 0)),
        msg(1, 2, term, append(last, term, vec![entry(2)], 0)),
        msg(1, 2, term, MessageBody::Heartbeat { commit: u64::MAX, read_seq: u64::MAX }),
        msg(1, 2, term, snapshot(0)),
        msg(1, 2, term, snapshot(1)),
        msg(9, 2, 0, MessageBody::AppendResp { index: u64::MAX, reject: None }),
    ];
    for m in to_follower {
        net.step(2, m.clone());
        net.stabilize();
        assert_eq!(net.log_entries(2), follower_log, "after {m:?}");
        assert!(net.raft(2).commit_index() <= net.raft(2).log().last_index());
    }

    let to_leader = vec![
        msg(9, 1, term, MessageBody::AppendResp { index: 3, reject: None }),
        msg(9, 1, term, MessageBody::HeartbeatResp { read_seq: 1 }),
        msg(2, 1, term, MessageBody::AppendResp { index: u64::MAX, reject: None }),
        msg(
            2,
            1,
            term,
            MessageBody::AppendResp { index: u64::MAX, reject: Some(RejectHint { index: u64::MAX, term: u64::MAX }) },
        ),
        msg(3, 1, term, MessageBody::AppendResp { index: 0, reject: Some(RejectHint { index: 0, term: 0 }) }),
        msg(2, 1, term, snapshot(0)),
        msg(3, 1, term, MessageBody::VoteResp { granted: true }),
    ];
    for m in to_leader {
        net.step(1, m.clone());
        net.stabilize();
        assert_eq!(net.raft(1).role(), Role::Leader, "after {m:?}");
        assert_eq!(net.raft(1).commit_index(), last, "after {m:?}");
    }

    // The cluster still works, and every log is the leader's.
    net.heartbeat(1);
    let index = net.propose(1, "b");
    net.stabilize();
    for id in 1..=3 {
        assert_eq!(net.raft(id).commit_index(), index, "member {id}");
        assert_eq!(net.log_entries(id), net.log_entries(1), "member {id}");
        assert_eq!(net.commands(id), ["a", "b"], "member {id}");
    }
}

// ===================================================================================
// Lost data (issue 11): a blank member never acts as a voter it cannot prove it is
// ===================================================================================

fn blank(id: NodeId) -> RawNode {
    RawNode::new(Raft::new(Config::new(id), InitialState::default()).expect("valid config"))
}

fn member_change(index: Index, kind: ConfChangeKind, node_id: NodeId) -> Entry {
    Entry { index, term: 1, payload: EntryPayload::ConfChange(conf_change(kind, node_id)) }
}

fn all_messages(rd: &Ready) -> Vec<Message> {
    rd.messages.iter().chain(&rd.persisted_messages).cloned().collect()
}

/// A member with no log may have lost its data after promising entries; its vote could elect a
/// candidate that lacks them, so it grants none, pre-vote or vote.
#[test]
fn a_member_with_an_empty_log_grants_no_vote() {
    let mut node = blank(3);
    node.step(msg(1, 3, 5, MessageBody::PreVote { last_index: 0, last_term: 0 }));
    node.step(vote_request(2, 3, 5, 0, 0));
    let rd = node.ready();
    let granted: Vec<Message> = all_messages(&rd)
        .into_iter()
        .filter(|m| {
            matches!(m.body, MessageBody::VoteResp { granted: true } | MessageBody::PreVoteResp { granted: true })
        })
        .collect();
    assert!(granted.is_empty(), "no vote from an empty log: {:?}", all_messages(&rd));
    assert_eq!(rd.hard_state.map(|h| h.vote), Some(None), "the term moves, the vote stays empty");

    // With the guard planted away, the same member grants the vote (so the test above can fail).
    let mut cfg = Config::new(3);
    cfg.planted = Some(PlantedBug::VoteFromEmptyLog);
    let mut node = RawNode::new(Raft::new(cfg, InitialState::default()).expect("valid config"));
    node.step(vote_request(2, 3, 5, 0, 0));
    let rd = node.ready();
    assert!(all_messages(&rd).iter().any(|m| m.body == MessageBody::VoteResp { granted: true }));
}

/// A blank member that is sent a log in which it is a voter it was never added as a learner
/// (an initial member whose data directory was wiped) takes none of it, acknowledges nothing
/// and reports its data lost.
#[test]
fn a_blank_member_sent_a_log_that_counts_it_as_a_voter_reports_data_lost() {
    let mut node = blank(3);
    let entries: Vec<Entry> = (1..=3).map(|id| member_change(id, ConfChangeKind::AddVoter, id)).collect();
    node.step(msg(1, 3, 4, MessageBody::Append { prev_index: 0, prev_term: 0, entries, commit: 3 }));
    assert_eq!(node.raft.data_lost(), Some(DataLoss::BlankVoter));
    assert!(node.raft.is_blank(), "nothing was appended");
    let rd = node.ready();
    assert!(rd.entries.is_empty());
    assert!(!all_messages(&rd).iter().any(|m| matches!(m.body, MessageBody::AppendResp { .. })), "no acknowledgement");
    // It stays inert: a later vote request or append changes nothing.
    node.advance();
    node.step(vote_request(2, 3, 6, 9, 4));
    assert!(!node.has_ready() || all_messages(&node.ready()).is_empty());

    // The same member joining as a learner (added, then promoted) takes the log.
    let mut node = blank(3);
    let mut entries: Vec<Entry> = (1..=2).map(|id| member_change(id, ConfChangeKind::AddVoter, id)).collect();
    entries.push(member_change(3, ConfChangeKind::AddLearner, 3));
    entries.push(member_change(4, ConfChangeKind::Promote, 3));
    node.step(msg(1, 3, 4, MessageBody::Append { prev_index: 0, prev_term: 0, entries, commit: 3 }));
    assert!(node.raft.data_lost().is_none());
    let rd = node.ready();
    assert_eq!(rd.entries.len(), 4);
    assert!(rd.persisted_messages.iter().any(|m| m.body == MessageBody::AppendResp { index: 4, reject: None }));
}

#[test]
fn a_blank_member_sent_a_snapshot_that_counts_it_as_a_voter_reports_data_lost() {
    let snapshot = |conf: ConfState| MessageBody::InstallSnapshot {
        snapshot: Snapshot { meta: SnapshotMeta { index: 10, term: 2, conf }, data: Bytes::new() },
    };
    let mut node = blank(3);
    node.step(msg(1, 3, 4, snapshot(voters(3))));
    assert_eq!(node.raft.data_lost(), Some(DataLoss::BlankVoter));
    assert!(node.ready().snapshot.is_none());

    let mut node = blank(3);
    let conf = ConfState { voters: (1..=2).collect(), learners: [3].into() };
    node.step(msg(1, 3, 4, snapshot(conf)));
    assert!(node.raft.data_lost().is_none());
    assert!(node.ready().snapshot.is_some(), "a learner takes the snapshot");
}

/// The leader's heartbeat carries a commit index no higher than what the follower acknowledged
/// as durable. A follower whose log ends before it has lost entries it acknowledged (a disk
/// that lost writes it reported done, or a data directory put back from an older copy): it
/// reports its data lost and answers nothing more, where it would otherwise wait forever for
/// entries the leader takes it to hold (its rejections of what follows look stale to the
/// leader), and could vote with a log shorter than the one it vouched for. A follower that is
/// merely behind, because it never acknowledged the entries, catches up as before.
#[test]
fn a_follower_that_lost_entries_it_acknowledged_reports_its_data_lost() {
    let mut net = Network::new(3);
    net.elect(1);
    let kept = net.propose(1, "a");
    net.stabilize();
    let older_copy = net.peer(3).storage.clone();
    let last = ["b", "c", "d"].iter().map(|c| net.propose(1, c)).last().expect("proposed");
    net.stabilize();
    assert_eq!(net.raft(1).progress(3).map(|p| p.matched), Some(last), "member 3 acknowledged them");
    net.peer_mut(3).storage = older_copy;
    net.restart(3);
    assert_eq!(net.raft(3).log().last_index(), kept);
    net.heartbeat(1);
    assert_eq!(net.raft(3).data_lost(), Some(DataLoss::Acknowledged { acknowledged: last, holds: kept }));
    assert_eq!(net.raft(3).log().last_index(), kept, "it takes nothing more");
    net.propose(1, "e");
    net.heartbeat(1);
    assert_eq!(net.raft(3).log().last_index(), kept, "it stays out");
    assert_eq!(net.raft(1).role(), Role::Leader, "the others go on");

    // Behind without having acknowledged anything: no loss, and it catches up.
    let mut net = Network::new(3);
    net.elect(1);
    net.cut(1, 3);
    let last = ["b", "c", "d"].iter().map(|c| net.propose(1, c)).last().expect("proposed");
    net.stabilize();
    net.restart(3);
    net.reconnect(3);
    net.heartbeat(1);
    assert_eq!(net.raft(3).data_lost(), None);
    assert_eq!(net.raft(3).log().last_index(), last);
    assert_eq!(net.raft(3).commit_index(), last);
}

/// A single voter wins its election at once, in a term that is not on disk yet: its first
/// messages (here, appends to a learner) must wait until that term is durable. Later appends of
/// a durable term may leave while the leader writes them (thesis §10.2.1).
#[test]
fn a_leader_sends_nothing_of_a_term_before_that_term_is_durable() {
    let state = InitialState {
        hard_state: HardState { term: 1, vote: None, commit: 2 },
        entries: vec![member_change(1, ConfChangeKind::AddVoter, 1), member_change(2, ConfChangeKind::AddLearner, 2)],
        ..InitialState::default()
    };
    let check = |planted: Option<PlantedBug>| {
        let mut cfg = Config::new(1);
        cfg.planted = planted;
        let mut node = RawNode::new(Raft::new(cfg, state.clone()).expect("valid config"));
        for _ in 0..100 {
            node.tick();
            if node.raft.role() == Role::Leader {
                break;
            }
        }
        assert_eq!(node.raft.role(), Role::Leader);
        let rd = node.ready();
        assert_eq!(rd.hard_state.map(|h| h.term), Some(2));
        (rd.messages.clone(), rd.persisted_messages.clone(), node)
    };
    let (early, later, mut node) = check(None);
    assert!(early.is_empty(), "nothing leaves before term 2 is durable: {early:?}");
    assert!(later.iter().any(|m| m.to == 2 && m.term == 2), "the appends leave once it is: {later:?}");
    node.advance();
    node.step(msg(2, 1, 2, MessageBody::AppendResp { index: 3, reject: None }));
    if node.has_ready() {
        node.ready();
        node.advance();
    }
    node.raft.propose(data("x")).expect("leader");
    let rd = node.ready();
    assert!(rd.hard_state.is_none_or(|h| h.term == 2));
    assert!(rd.messages.iter().any(|m| m.to == 2), "with the term durable, appends leave early");

    let (early, _, _) = check(Some(PlantedBug::SendTermBeforePersist));
    assert!(!early.is_empty(), "the planted bug sends before persisting");
}

/// etcd's `--force-new-cluster` (quorum-loss recovery): a survivor of a 5-member cluster whose
/// other members are gone for good becomes a one-member cluster with its whole log, the entry
/// it held uncommitted included; it elects itself and takes writes; a second force changes
/// nothing; a member that is not in its own configuration is refused.
#[test]
fn force_new_cluster_keeps_the_whole_log_and_leaves_this_member_alone() {
    let mut net = Network::new(5);
    net.elect(1);
    net.propose(1, "a");
    net.stabilize();
    // "b" reaches member 2 only: held by 1 and 2, committed nowhere.
    for to in [3, 4, 5] {
        net.cut(1, to);
    }
    let b = net.propose(1, "b");
    net.stabilize();
    assert!(net.raft(2).log().last_index() >= b && net.raft(2).commit_index() < b);
    let old_term = net.raft(2).term();

    // 1, 3, 4 and 5 are lost; 2 is forced into a cluster of its own.
    let mut state = net.peer(2).storage.restart_state();
    let appended = state.force_new_cluster(2).expect("2 is a voter");
    let removed: Vec<NodeId> = appended
        .iter()
        .map(|e| match &e.payload {
            EntryPayload::ConfChange(cc) if cc.kind == ConfChangeKind::Remove => cc.node_id,
            other => panic!("only removals: {other:?}"),
        })
        .collect();
    assert_eq!(removed, [1, 3, 4, 5]);
    assert!(appended.iter().all(|e| e.term == old_term + 1), "a term no lost member wrote in");
    assert_eq!(appended[0].index, b + 1);
    assert_eq!(state.hard_state.commit, b + 4, "the whole log is committed");
    assert_eq!(state.last_conf(), ConfState { voters: BTreeSet::from([2]), learners: BTreeSet::new() });

    let mut alone = Network::from_states(vec![(Config::new(2), state)]);
    alone.elect(2);
    alone.propose(2, "c");
    alone.stabilize();
    assert_eq!(alone.peer(2).state, [data("a"), data("b"), data("c")], "every write it held, then new ones");
    assert_eq!(alone.raft(2).conf().voters, BTreeSet::from([2]));
    assert!(alone.raft(2).term() > old_term);

    // Forcing again: it is alone already, nothing changes.
    let mut again = alone.peer(2).storage.restart_state();
    let before = again.hard_state;
    assert_eq!(again.force_new_cluster(2), Ok(Vec::new()));
    assert_eq!(again.hard_state, before);
    // A member its own log does not list (removed) is refused.
    assert_eq!(again.force_new_cluster(7), Err(ConfChangeError::NotAMember(7)));

    // A learner's log: it is promoted as it removes the others.
    let mut net = Network::new(3);
    net.elect(1);
    net.add_member(Config::new(4), InitialState::default());
    net.propose_conf_change(1, ConfChangeKind::AddLearner, 4);
    net.stabilize();
    net.heartbeat(1);
    let mut state = net.peer(4).storage.restart_state();
    let appended = state.force_new_cluster(4).expect("4 is a learner");
    let kinds: Vec<(ConfChangeKind, NodeId)> = appended
        .iter()
        .filter_map(|e| match &e.payload {
            EntryPayload::ConfChange(cc) => Some((cc.kind, cc.node_id)),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (ConfChangeKind::Promote, 4),
            (ConfChangeKind::Remove, 1),
            (ConfChangeKind::Remove, 2),
            (ConfChangeKind::Remove, 3)
        ]
    );
    assert_eq!(state.last_conf(), ConfState { voters: BTreeSet::from([4]), learners: BTreeSet::new() });
}

/// The campaigns a member started are counted with their kind and the term they asked for:
/// a timeout with pre-vote on starts a pre-vote round, whose win starts the election; a
/// transfer starts an election of its own kind; a member that never campaigned counts none.
#[test]
fn campaigns_are_counted_with_their_kind_and_term() {
    let mut net = Network::with_config(3, |cfg| cfg.pre_vote = true);
    net.elect(1);
    let term = net.raft(1).term();
    assert_eq!(net.raft(1).campaigns(), Campaigns { count: 2, last: Some((Campaign::Election, term)) });
    assert_eq!(net.raft(2).campaigns(), Campaigns::default());
    net.raft_mut(1).transfer_leader(Some(2)).unwrap();
    net.stabilize();
    assert_eq!(net.raft(2).campaigns(), Campaigns { count: 1, last: Some((Campaign::Transfer, term + 1)) });

    let mut net = Network::with_config(3, |cfg| cfg.pre_vote = false);
    net.elect(3);
    assert_eq!(net.raft(3).campaigns(), Campaigns { count: 1, last: Some((Campaign::Election, net.raft(3).term())) });
}
