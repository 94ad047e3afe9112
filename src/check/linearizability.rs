//! A linearizability checker for recorded client histories: the Wing–Gong search with Lowe's
//! memoisation (the algorithm of the Porcupine checker), over two models:
//! - registers (`check_registers`), checked per key (P-compositionality: a history is
//!   linearizable iff each key's sub-history is);
//! - a whole store with revisions (`check_store`): puts, gets, multi-key reads at one revision
//!   and etcd-style txns (compares on mod_revision, puts as one revision), such as transfers
//!   between accounts and CAS. Every write moves the store revision that all keys share, so it
//!   is one partition, meant for small key sets.
//!
//! Both searches are bounded by a budget of steps; past it the verdict is `Unknown`.
//!
//! An operation whose outcome is unknown (the client timed out or its server crashed) has no
//! return time: it may be linearized anywhere after its call, or — by placing it after every
//! other operation — effectively never.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::rc::Rc;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Clone + Debug;
    type Output: Clone + Debug;
    fn init(&self) -> Self::State;
    /// The state after `input` if it could have produced `output` (`None`: the outcome is
    /// unknown, accept whatever the operation would have done); `None` if it could not.
    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State>;
    /// A fast path of `step` for operations that leave the state as it is (a read, a compare
    /// that failed): `Some(could)` when `step` would return the state unchanged if it could
    /// have produced `output` and `None` otherwise; `None` to ask `step`. Saves the search a
    /// copy of the state. It must agree with `step`.
    fn unchanged(&self, _state: &Self::State, _input: &Self::Input, _output: Option<&Self::Output>) -> Option<bool> {
        None
    }
    /// Whether the completed operation (`input`, `output`) can be explained neither in `state`
    /// nor in any state reachable from it (say, a read naming a revision the store has
    /// passed): the search then drops the branch at once instead of trying everything else
    /// first. Must be sound: `true` only when no later state explains it.
    fn hopeless(&self, _state: &Self::State, _input: &Self::Input, _output: &Self::Output) -> bool {
        false
    }
    /// Whether an excerpt that keeps the operation (`input`, `output`) must keep `writer` too
    /// to be read sensibly (the write of a value that it observed). Only shapes excerpts.
    fn observes(&self, _input: &Self::Input, _output: Option<&Self::Output>, _writer: &Self::Input) -> bool {
        false
    }
}

/// One client operation. Times are any monotonic clock shared by all clients.
#[derive(Clone, Debug)]
pub struct Operation<I, O> {
    pub client: u64,
    pub input: I,
    /// `None` when the outcome is unknown.
    pub output: Option<O>,
    pub call: u64,
    /// `None` when the outcome is unknown.
    pub ret: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// The sub-history of one partition that no sequential order explains.
    Violation {
        partition: String,
        operations: Vec<String>,
    },
    /// The search exceeded its budget; nothing was proven either way.
    Unknown {
        partition: String,
    },
}

/// An operation of model `M`'s history.
pub type OperationOf<M> = Operation<<M as Model>::Input, <M as Model>::Output>;

const NIL: usize = usize::MAX;

/// The memo's hasher: the multiply-rotate step of rustc's FxHasher, a word at a time. Not
/// resistant to chosen collisions, which a search over our own recorded histories does not
/// need; several times faster than the default SipHash on these small keys (the hashing was
/// most of the search's time).
#[derive(Default)]
struct MemoHasher(u64);

impl MemoHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for MemoHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(n.into());
    }

    fn write_u16(&mut self, n: u16) {
        self.add(n.into());
    }

    fn write_u32(&mut self, n: u32) {
        self.add(n.into());
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Clone, Copy)]
struct Node {
    op: usize,
    is_call: bool,
    /// For a call: its return node.
    partner: usize,
    prev: usize,
    next: usize,
}

/// The set of operations linearized so far, one bit per operation.
type Linearized = Rc<[u64]>;

/// Lowe's memo: the (linearized set, state) pairs the search has reached.
type Memo<S> = HashSet<(Linearized, Rc<S>), BuildHasherDefault<MemoHasher>>;

/// Checks one partition's operations. `budget` bounds the number of search steps.
pub fn check_operations<M: Model>(model: &M, ops: &[Operation<M::Input, M::Output>], budget: u64) -> Option<bool> {
    // Event list: index 0 is the head sentinel; then calls and returns in time order, calls
    // before returns at equal times (equal times are treated as concurrent).
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, 0, i));
        events.push((op.ret.unwrap_or(u64::MAX), 1, i));
    }
    events.sort();
    let mut nodes = vec![Node { op: NIL, is_call: false, partner: NIL, prev: NIL, next: NIL }];
    let mut call_node = vec![NIL; ops.len()];
    for (_, kind, op) in &events {
        let id = nodes.len();
        let prev = id - 1;
        nodes[prev].next = id;
        nodes.push(Node { op: *op, is_call: *kind == 0, partner: NIL, prev, next: NIL });
        if *kind == 0 {
            call_node[*op] = id;
        } else {
            nodes[call_node[*op]].partner = id;
        }
    }

    let words = ops.len().div_ceil(64);
    // States and sets of linearized operations are shared between the memo, the current
    // point and the stack of calls to undo, not copied.
    let mut linearized: Linearized = vec![0u64; words].into();
    let mut cache: Memo<M::State> = HashSet::default();
    // Per linearized call: its node, and the state and set before it.
    let mut calls: Vec<(usize, Rc<M::State>, Linearized)> = Vec::new();
    let mut state = Rc::new(model.init());
    let mut entry = nodes[0].next;
    let mut steps = 0u64;
    while nodes[0].next != NIL {
        steps += 1;
        if steps > budget {
            return None;
        }
        if entry == NIL {
            // Cannot happen: the list always ends with a return. Treat as not linearizable.
            return Some(false);
        }
        let node = nodes[entry];
        if node.is_call {
            let op = &ops[node.op];
            let next_state = match model.unchanged(&state, &op.input, op.output.as_ref()) {
                Some(true) => Some(Rc::clone(&state)),
                Some(false) => None,
                None => model.step(&state, &op.input, op.output.as_ref()).map(Rc::new),
            };
            if let Some(next_state) = next_state {
                let (word, bit) = (node.op / 64, 1u64 << (node.op % 64));
                let next_lin: Linearized =
                    linearized.iter().enumerate().map(|(i, w)| if i == word { w | bit } else { *w }).collect();
                if cache.insert((Rc::clone(&next_lin), Rc::clone(&next_state))) {
                    let previous = std::mem::replace(&mut state, next_state);
                    let previous_lin = std::mem::replace(&mut linearized, next_lin);
                    calls.push((entry, previous, previous_lin));
                    lift(&mut nodes, entry);
                    entry = nodes[0].next;
                    if !dead_end(model, ops, &nodes, &state) {
                        continue;
                    }
                    // A completed operation that must still be linearized no longer can be
                    // (with several writes of unknown outcome pending, the search would
                    // otherwise try their every subset here first): undo at once, as below.
                    let Some((call, previous, previous_lin)) = calls.pop() else { return Some(false) };
                    state = previous;
                    linearized = previous_lin;
                    unlift(&mut nodes, call);
                    entry = nodes[call].next;
                    continue;
                }
            }
            entry = node.next;
        } else {
            // We reached the return of an operation we could not linearize before it: undo.
            let Some((call, previous, previous_lin)) = calls.pop() else { return Some(false) };
            state = previous;
            linearized = previous_lin;
            unlift(&mut nodes, call);
            entry = nodes[call].next;
        }
    }
    Some(true)
}

/// Whether a completed operation among the candidates (the calls before the first return) is
/// hopeless in `state`: it must be linearized later, and no later state explains it.
fn dead_end<M: Model>(model: &M, ops: &[OperationOf<M>], nodes: &[Node], state: &M::State) -> bool {
    let mut entry = nodes[0].next;
    while entry != NIL && nodes[entry].is_call {
        let op = &ops[nodes[entry].op];
        if op.output.as_ref().is_some_and(|output| model.hopeless(state, &op.input, output)) {
            return true;
        }
        entry = nodes[entry].next;
    }
    false
}

fn lift(nodes: &mut [Node], call: usize) {
    let (prev, next) = (nodes[call].prev, nodes[call].next);
    nodes[prev].next = next;
    if next != NIL {
        nodes[next].prev = prev;
    }
    let ret = nodes[call].partner;
    let (prev, next) = (nodes[ret].prev, nodes[ret].next);
    nodes[prev].next = next;
    if next != NIL {
        nodes[next].prev = prev;
    }
}

fn unlift(nodes: &mut [Node], call: usize) {
    let ret = nodes[call].partner;
    let (prev, next) = (nodes[ret].prev, nodes[ret].next);
    nodes[prev].next = ret;
    if next != NIL {
        nodes[next].prev = ret;
    }
    let (prev, next) = (nodes[call].prev, nodes[call].next);
    nodes[prev].next = call;
    if next != NIL {
        nodes[next].prev = call;
    }
}

/// Splits `ops` by `partition` and checks each part; the first failing part is reported.
pub fn check_partitioned<M, K>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    partition: impl Fn(&M::Input) -> K,
    budget: u64,
) -> Verdict
where
    M: Model,
    K: Ord + Debug,
{
    let mut parts: BTreeMap<K, Vec<OperationOf<M>>> = BTreeMap::new();
    for op in ops {
        parts.entry(partition(&op.input)).or_default().push(op.clone());
    }
    for (key, part) in parts {
        match check_operations(model, &part, budget) {
            Some(true) => {}
            Some(false) => {
                let mut excerpt = minimize(model, part, budget);
                excerpt.sort_by_key(|o| o.call);
                return Verdict::Violation {
                    partition: format!("{key:?}"),
                    operations: excerpt.iter().map(describe).collect(),
                };
            }
            None => return Verdict::Unknown { partition: format!("{key:?}") },
        }
    }
    Verdict::Linearizable
}

/// Shrinks a non-linearizable history to a small excerpt that is still not linearizable:
/// first the shortest prefix (by call time) that fails, then the latest start that still
/// fails, then dropping single operations while it keeps failing. Bounded in work.
pub fn minimize<M: Model>(model: &M, ops: Vec<OperationOf<M>>, budget: u64) -> Vec<OperationOf<M>> {
    let fails = |part: &[OperationOf<M>]| check_operations(model, part, budget) == Some(false);
    let mut ops = ops;
    ops.sort_by_key(|o| o.call);
    // Shortest failing prefix: operations called after the violation cannot be needed... but
    // an operation still open may be; keep the search honest by checking each candidate.
    let (mut low, mut high) = (1, ops.len());
    while low < high {
        let mid = (low + high) / 2;
        if fails(&ops[..mid]) {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    if fails(&ops[..high]) {
        ops.truncate(high);
    }
    // Latest start that still fails (keeping the writes of values the rest observed).
    let suffix = |from: usize| -> Vec<OperationOf<M>> {
        let mut part: Vec<OperationOf<M>> = ops[..from]
            .iter()
            .filter(|w| ops[from..].iter().any(|o| model.observes(&o.input, o.output.as_ref(), &w.input)))
            .cloned()
            .collect();
        part.extend_from_slice(&ops[from..]);
        part
    };
    let (mut low, mut high) = (0, ops.len().saturating_sub(1));
    while low < high {
        let mid = (low + high).div_ceil(2);
        if fails(&suffix(mid)) {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    if low > 0 && fails(&suffix(low)) {
        ops = suffix(low);
    }
    // Drop single operations while the excerpt keeps failing (bounded); never the write of a
    // value that a remaining operation observed, so that the excerpt tells the story.
    if ops.len() <= 400 {
        let mut i = 0;
        while i < ops.len() {
            let needed = ops
                .iter()
                .enumerate()
                .any(|(j, o)| j != i && model.observes(&o.input, o.output.as_ref(), &ops[i].input));
            if needed {
                i += 1;
                continue;
            }
            let mut candidate = ops.clone();
            candidate.remove(i);
            if fails(&candidate) {
                ops = candidate;
            } else {
                i += 1;
            }
        }
    }
    ops
}

fn describe<I: Debug, O: Debug>(op: &Operation<I, O>) -> String {
    let ret = op.ret.map_or("?".to_string(), |t| t.to_string());
    let out = op.output.as_ref().map_or("unknown".to_string(), |o| format!("{o:?}"));
    format!("[{:>8} .. {:>8}] client {} {:?} -> {}", op.call, ret, op.client, op.input, out)
}

/// A register per key: writes, reads, and compare-and-swap on the value.
#[derive(Clone, Copy, Debug, Default)]
pub struct RegisterModel<K>(std::marker::PhantomData<K>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterInput<K> {
    Write {
        key: K,
        value: u64,
    },
    Read {
        key: K,
    },
    /// Succeeds, writing `new`, iff the current value is `expect`.
    Cas {
        key: K,
        expect: Option<u64>,
        new: u64,
    },
}

impl<K> RegisterInput<K> {
    pub fn key(&self) -> &K {
        match self {
            RegisterInput::Write { key, .. } | RegisterInput::Read { key } | RegisterInput::Cas { key, .. } => key,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOutput {
    Written,
    Value(Option<u64>),
    Swapped(bool),
}

impl<K: Clone + Debug> Model for RegisterModel<K> {
    type State = Option<u64>;
    type Input = RegisterInput<K>;
    type Output = RegisterOutput;

    fn init(&self) -> Self::State {
        None
    }

    fn step(
        &self,
        state: &Option<u64>,
        input: &RegisterInput<K>,
        output: Option<&RegisterOutput>,
    ) -> Option<Option<u64>> {
        match (input, output) {
            (RegisterInput::Write { value, .. }, _) => Some(Some(*value)),
            (RegisterInput::Read { .. }, None) => Some(*state),
            (RegisterInput::Read { .. }, Some(RegisterOutput::Value(seen))) => (seen == state).then_some(*state),
            (RegisterInput::Cas { expect, new, .. }, None) => Some(if state == expect { Some(*new) } else { *state }),
            (RegisterInput::Cas { expect, new, .. }, Some(RegisterOutput::Swapped(true))) => {
                (state == expect).then_some(Some(*new))
            }
            (RegisterInput::Cas { expect, .. }, Some(RegisterOutput::Swapped(false))) => {
                (state != expect).then_some(*state)
            }
            _ => None,
        }
    }

    fn unchanged(
        &self,
        state: &Option<u64>,
        input: &RegisterInput<K>,
        output: Option<&RegisterOutput>,
    ) -> Option<bool> {
        match (input, output) {
            (RegisterInput::Read { .. }, Some(RegisterOutput::Value(seen))) => Some(seen == state),
            (RegisterInput::Cas { expect, .. }, Some(RegisterOutput::Swapped(false))) => Some(state != expect),
            _ => None,
        }
    }

    fn observes(&self, input: &RegisterInput<K>, output: Option<&RegisterOutput>, writer: &RegisterInput<K>) -> bool {
        let seen = match (input, output) {
            (RegisterInput::Read { .. }, Some(RegisterOutput::Value(Some(v)))) => *v,
            (RegisterInput::Cas { expect: Some(v), .. }, _) => *v,
            _ => return false,
        };
        matches!(writer, RegisterInput::Write { value, .. } | RegisterInput::Cas { new: value, .. } if *value == seen)
    }
}

/// Checks a history of register operations, per key.
pub fn check_registers<K: Clone + Debug + Ord>(
    ops: &[Operation<RegisterInput<K>, RegisterOutput>],
    budget: u64,
) -> Verdict {
    check_partitioned(&RegisterModel::<K>(std::marker::PhantomData), ops, |input| input.key().clone(), budget)
}

/// The state of [`StoreModel`]: etcd's key-value store reduced to values and mod revisions.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoreState<K: Ord> {
    /// The store revision: bumped once by every write (a put, or a txn that puts), as etcd's.
    pub revision: u64,
    /// Each present key's (value, mod_revision).
    pub keys: BTreeMap<K, (u64, u64)>,
}

/// A whole store as one sequential object: single-key puts and gets, multi-key reads at one
/// revision, and etcd-style txns that compare mod revisions and put several keys as one
/// revision. Every write moves the revision every key's next write gets, so the store is not
/// P-compositional by key: it is checked as one partition, meant for small key sets.
#[derive(Clone, Debug)]
pub struct StoreModel<K: Ord> {
    pub initial: StoreState<K>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreInput<K> {
    /// A put of one key: a new revision.
    Put { key: K, value: u64 },
    /// A read of these keys at one revision (a get is a read of one key; a read-all, of all).
    Read { keys: Vec<K> },
    /// etcd's txn with mod_revision EQUAL compares (0: the key is absent) and put success ops:
    /// if every compare holds, every put takes effect as one new revision (none if `puts` is
    /// empty); otherwise nothing changes. A transfer compares and puts two keys, a CAS one.
    /// The keys of `puts` are distinct (etcd refuses a txn that writes a key twice).
    Txn { compares: Vec<(K, u64)>, puts: Vec<(K, u64)> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOutput {
    /// The revision the put created (etcd's response header revision).
    Put { revision: u64 },
    /// Whether the compares held, and the store revision after the txn.
    Txn { succeeded: bool, revision: u64 },
    /// Per key read, in the order asked: (value, mod_revision), or `None` when absent; and the
    /// store revision of the read.
    Read { revision: u64, kvs: Vec<Option<(u64, u64)>> },
}

impl<K: Clone + Debug + Ord + Hash> Model for StoreModel<K> {
    type State = StoreState<K>;
    type Input = StoreInput<K>;
    type Output = StoreOutput;

    fn init(&self) -> StoreState<K> {
        self.initial.clone()
    }

    fn unchanged(&self, state: &StoreState<K>, input: &StoreInput<K>, output: Option<&StoreOutput>) -> Option<bool> {
        match (input, output) {
            (StoreInput::Read { keys }, Some(StoreOutput::Read { revision, kvs })) => Some(
                *revision == state.revision
                    && kvs.len() == keys.len()
                    && keys.iter().zip(kvs).all(|(k, seen)| state.keys.get(k) == seen.as_ref()),
            ),
            (StoreInput::Txn { compares, .. }, Some(StoreOutput::Txn { succeeded: false, revision })) => {
                Some(*revision == state.revision && !Self::holds(state, compares))
            }
            _ => None,
        }
    }

    /// The store's revision never goes back: an answer naming a revision the state has passed
    /// (or, for a write, reached) fits no later state.
    fn hopeless(&self, state: &StoreState<K>, input: &StoreInput<K>, output: &StoreOutput) -> bool {
        match (input, output) {
            (StoreInput::Put { .. }, StoreOutput::Put { revision }) => *revision <= state.revision,
            (StoreInput::Txn { puts, .. }, StoreOutput::Txn { succeeded: true, revision }) if !puts.is_empty() => {
                *revision <= state.revision
            }
            (_, StoreOutput::Txn { revision, .. } | StoreOutput::Read { revision, .. }) => *revision < state.revision,
            _ => false,
        }
    }

    fn step(
        &self,
        state: &StoreState<K>,
        input: &StoreInput<K>,
        output: Option<&StoreOutput>,
    ) -> Option<StoreState<K>> {
        match input {
            StoreInput::Put { key, value } => {
                let revision = state.revision + 1;
                if output.is_some_and(|o| *o != StoreOutput::Put { revision }) {
                    return None;
                }
                let mut next = state.clone();
                next.revision = revision;
                next.keys.insert(key.clone(), (*value, revision));
                Some(next)
            }
            StoreInput::Read { keys } => match output {
                None => Some(state.clone()),
                Some(StoreOutput::Read { revision, kvs }) => (*revision == state.revision
                    && kvs.len() == keys.len()
                    && keys.iter().zip(kvs).all(|(k, seen)| state.keys.get(k) == seen.as_ref()))
                .then(|| state.clone()),
                Some(_) => None,
            },
            StoreInput::Txn { compares, puts } => {
                let holds = Self::holds(state, compares);
                let mut next = state.clone();
                if holds && !puts.is_empty() {
                    next.revision += 1;
                    for (k, v) in puts {
                        next.keys.insert(k.clone(), (*v, next.revision));
                    }
                }
                match output {
                    None => Some(next),
                    Some(StoreOutput::Txn { succeeded, revision }) => {
                        (*succeeded == holds && *revision == next.revision).then_some(next)
                    }
                    Some(_) => None,
                }
            }
        }
    }
}

impl<K: Ord> StoreModel<K> {
    /// Whether every mod_revision compare holds (0: the key is absent).
    fn holds(state: &StoreState<K>, compares: &[(K, u64)]) -> bool {
        compares.iter().all(|(k, expect)| state.keys.get(k).map_or(0, |(_, modified)| *modified) == *expect)
    }
}

/// The partition name of [`check_store`]'s verdicts.
pub const WHOLE_STORE: &str = "the whole store";

/// How many operations a store violation's excerpt shows at most.
const STORE_EXCERPT: usize = 16;

/// Checks a history of store operations (one partition: see [`StoreModel`]) from `initial`.
/// `budget` bounds each search; past it the verdict is `Unknown`, never a guess.
///
/// A violation is reported at the earliest cut that already fails: the operations called up
/// to some time T, those still open at T counted as of unknown outcome (sound: if the whole
/// history has an order, every such cut has one). The excerpt is the cut's last operations by
/// call time; the operation whose return at T made it fail is marked `*`.
pub fn check_store<K: Clone + Debug + Ord + Hash>(
    initial: StoreState<K>,
    ops: &[Operation<StoreInput<K>, StoreOutput>],
    budget: u64,
) -> Verdict {
    let model = StoreModel { initial };
    match check_operations(&model, ops, budget) {
        Some(true) => Verdict::Linearizable,
        None => Verdict::Unknown { partition: WHOLE_STORE.to_string() },
        Some(false) => {
            Verdict::Violation { partition: WHOLE_STORE.to_string(), operations: store_excerpt(&model, ops, budget) }
        }
    }
}

/// The operations called up to `t`; those still open at `t` with an unknown outcome.
fn cut_at<I: Clone, O: Clone>(ops: &[Operation<I, O>], t: u64) -> Vec<Operation<I, O>> {
    ops.iter()
        .filter(|o| o.call <= t)
        .map(|o| {
            let mut o = o.clone();
            if o.ret.is_none_or(|r| r > t) {
                o.ret = None;
                o.output = None;
            }
            o
        })
        .collect()
}

fn store_excerpt<K: Clone + Debug + Ord + Hash>(
    model: &StoreModel<K>,
    ops: &[Operation<StoreInput<K>, StoreOutput>],
    budget: u64,
) -> Vec<String> {
    let mut times: Vec<u64> = ops.iter().filter_map(|o| o.ret).collect();
    times.sort_unstable();
    times.dedup();
    // The earliest failing cut (cuts only fail more as they grow); a cut whose search exceeds
    // the budget counts as not failing, so the worst case is the whole history.
    let fails = |t: u64| check_operations(model, &cut_at(ops, t), budget) == Some(false);
    let (mut low, mut high) = (0, times.len());
    while low < high {
        let mid = (low + high) / 2;
        if fails(times[mid]) {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    let (mut cut, at) = match times.get(low) {
        Some(&t) => (cut_at(ops, t), Some(t)),
        None => (ops.to_vec(), None),
    };
    cut.sort_by_key(|o| o.call);
    let skipped = cut.len().saturating_sub(STORE_EXCERPT);
    let mut lines = Vec::with_capacity(STORE_EXCERPT + 1);
    if skipped > 0 {
        lines.push(format!("... {skipped} earlier operations"));
    }
    for op in &cut[skipped..] {
        let mark = if op.ret.is_some() && op.ret == at { "*" } else { " " };
        lines.push(format!("{mark}{}", describe(op)));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    type Op = Operation<RegisterInput<&'static str>, RegisterOutput>;

    fn write(client: u64, key: &'static str, value: u64, call: u64, ret: Option<u64>) -> Op {
        let output = ret.map(|_| RegisterOutput::Written);
        Operation { client, input: RegisterInput::Write { key, value }, output, call, ret }
    }

    fn read(client: u64, key: &'static str, seen: Option<u64>, call: u64, ret: u64) -> Op {
        Operation {
            client,
            input: RegisterInput::Read { key },
            output: Some(RegisterOutput::Value(seen)),
            call,
            ret: Some(ret),
        }
    }

    const BUDGET: u64 = 1_000_000;

    #[test]
    fn sequential_and_concurrent_histories_that_have_an_order_pass() {
        let ops = vec![
            write(1, "x", 1, 0, Some(10)),
            read(2, "x", Some(1), 11, 20),
            // Concurrent write and read: the read may see either value.
            write(1, "x", 2, 21, Some(40)),
            read(2, "x", Some(1), 22, 30),
            read(3, "x", Some(2), 25, 35),
            read(2, "y", None, 0, 50),
        ];
        assert_eq!(check_registers(&ops, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_fails() {
        // The write of 2 finished before the read began, yet the read saw 1.
        let ops = vec![write(1, "x", 1, 0, Some(10)), write(1, "x", 2, 11, Some(20)), read(2, "x", Some(1), 21, 30)];
        assert!(matches!(check_registers(&ops, BUDGET), Verdict::Violation { .. }));
    }

    #[test]
    fn a_lost_write_fails() {
        // An acknowledged write that no later read reflects.
        let ops = vec![write(1, "x", 1, 0, Some(10)), read(2, "x", None, 11, 20)];
        assert!(matches!(check_registers(&ops, BUDGET), Verdict::Violation { .. }));
    }

    #[test]
    fn reordered_writes_fail() {
        // 1 then 2 sequentially, but readers see 2 and then 1.
        let ops = vec![
            write(1, "x", 1, 0, Some(10)),
            write(1, "x", 2, 11, Some(20)),
            read(2, "x", Some(2), 21, 30),
            read(2, "x", Some(1), 31, 40),
        ];
        assert!(matches!(check_registers(&ops, BUDGET), Verdict::Violation { .. }));
    }

    #[test]
    fn a_timed_out_write_may_have_happened_or_not() {
        let happened = vec![write(1, "x", 1, 0, None), read(2, "x", Some(1), 50, 60)];
        assert_eq!(check_registers(&happened, BUDGET), Verdict::Linearizable);
        let did_not = vec![write(1, "x", 1, 0, None), read(2, "x", None, 50, 60)];
        assert_eq!(check_registers(&did_not, BUDGET), Verdict::Linearizable);
        // But it cannot take effect before it was called.
        let too_early = vec![read(2, "x", Some(1), 0, 10), write(1, "x", 1, 20, None)];
        assert!(matches!(check_registers(&too_early, BUDGET), Verdict::Violation { .. }));
        // Nor flicker: seen, then unseen, then seen again is impossible.
        let flicker = vec![write(1, "x", 1, 0, None), read(2, "x", Some(1), 10, 20), read(2, "x", None, 30, 40)];
        assert!(matches!(check_registers(&flicker, BUDGET), Verdict::Violation { .. }));
    }

    #[test]
    fn compare_and_swap_follows_the_register() {
        let cas = |client, expect, new, ok, call, ret| Op {
            client,
            input: RegisterInput::Cas { key: "x", expect, new },
            output: Some(RegisterOutput::Swapped(ok)),
            call,
            ret: Some(ret),
        };
        let good =
            vec![write(1, "x", 1, 0, Some(5)), cas(2, Some(1), 2, true, 6, 10), cas(3, Some(1), 3, false, 11, 15)];
        assert_eq!(check_registers(&good, BUDGET), Verdict::Linearizable);
        let bad = vec![write(1, "x", 1, 0, Some(5)), cas(2, Some(1), 2, true, 6, 10), cas(3, Some(1), 3, true, 11, 15)];
        assert!(matches!(check_registers(&bad, BUDGET), Verdict::Violation { .. }));
    }

    #[test]
    fn a_violation_is_reported_as_its_smallest_excerpt() {
        // Many harmless operations, then a stale read: the excerpt keeps only what shows it.
        let mut ops = Vec::new();
        for i in 0..50u64 {
            ops.push(write(1, "x", i, i * 10, Some(i * 10 + 1)));
            ops.push(read(2, "x", Some(i), i * 10 + 2, i * 10 + 3));
        }
        ops.push(read(3, "x", Some(3), 600, 601));
        match check_registers(&ops, BUDGET) {
            Verdict::Violation { operations, .. } => {
                // The write of 3, one later write, and the read that still saw 3.
                assert_eq!(operations.len(), 3, "{operations:#?}");
                assert!(operations.iter().any(|o| o.contains("value: 3 }")), "{operations:#?}");
                assert!(operations.iter().any(|o| o.contains("Value(Some(3))")), "{operations:#?}");
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn the_violation_names_the_key_and_its_operations() {
        let ops = vec![write(1, "k", 7, 0, Some(1)), read(2, "k", Some(8), 2, 3), read(2, "other", None, 0, 1)];
        match check_registers(&ops, BUDGET) {
            Verdict::Violation { partition, operations } => {
                assert_eq!(partition, "\"k\"");
                assert!(operations.len() <= 2);
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;

    type Op = Operation<StoreInput<u8>, StoreOutput>;

    const A: u8 = 10;
    const B: u8 = 11;
    const X: u8 = 0;
    const BUDGET: u64 = 1_000_000;

    /// Two accounts of 100 each, written at revision 1.
    fn initial() -> StoreState<u8> {
        StoreState { revision: 1, keys: BTreeMap::from([(A, (100, 1)), (B, (100, 1))]) }
    }

    fn op(client: u64, input: StoreInput<u8>, output: Option<StoreOutput>, call: u64, ret: Option<u64>) -> Op {
        Operation { client, input, output, call, ret }
    }

    /// A transfer: compares both accounts' mod revisions, puts both new balances.
    fn transfer(client: u64, mods: (u64, u64), new: (u64, u64), out: Option<(bool, u64)>, call: u64, ret: u64) -> Op {
        let input = StoreInput::Txn { compares: vec![(A, mods.0), (B, mods.1)], puts: vec![(A, new.0), (B, new.1)] };
        let output = out.map(|(succeeded, revision)| StoreOutput::Txn { succeeded, revision });
        let ret = output.as_ref().map(|_| ret);
        op(client, input, output, call, ret)
    }

    fn read_all(client: u64, a: (u64, u64), b: (u64, u64), revision: u64, call: u64, ret: u64) -> Op {
        let output = StoreOutput::Read { revision, kvs: vec![Some(a), Some(b)] };
        op(client, StoreInput::Read { keys: vec![A, B] }, Some(output), call, Some(ret))
    }

    fn put(client: u64, value: u64, revision: u64, call: u64, ret: u64) -> Op {
        op(client, StoreInput::Put { key: X, value }, Some(StoreOutput::Put { revision }), call, Some(ret))
    }

    fn get(client: u64, seen: Option<(u64, u64)>, revision: u64, call: u64, ret: u64) -> Op {
        let output = StoreOutput::Read { revision, kvs: vec![seen] };
        op(client, StoreInput::Read { keys: vec![X] }, Some(output), call, Some(ret))
    }

    fn cas(client: u64, expect: u64, new: u64, succeeded: bool, revision: u64, call: u64, ret: u64) -> Op {
        let input = StoreInput::Txn { compares: vec![(X, expect)], puts: vec![(X, new)] };
        op(client, input, Some(StoreOutput::Txn { succeeded, revision }), call, Some(ret))
    }

    fn is_violation(v: &Verdict) -> bool {
        matches!(v, Verdict::Violation { partition, .. } if partition == WHOLE_STORE)
    }

    #[test]
    fn a_store_history_that_has_an_order_passes() {
        let ops = vec![
            read_all(1, (100, 1), (100, 1), 1, 0, 10),
            transfer(1, (1, 1), (70, 130), Some((true, 2)), 11, 20),
            // Concurrent, on the same balances: it must come second, its compare failing.
            transfer(2, (1, 1), (90, 110), Some((false, 2)), 12, 25),
            // Concurrent with the transfer: sees it whole.
            read_all(3, (70, 2), (130, 2), 2, 13, 22),
            put(2, 7, 3, 26, 30),
            get(3, Some((7, 3)), 3, 31, 35),
            cas(1, 3, 8, true, 4, 36, 40),
            cas(2, 3, 9, false, 4, 41, 45),
            get(3, Some((8, 4)), 4, 46, 50),
            // A CAS on an absent key compares mod_revision 0.
            op(
                1,
                StoreInput::Txn { compares: vec![(1, 0)], puts: vec![(1, 5)] },
                Some(StoreOutput::Txn { succeeded: true, revision: 5 }),
                51,
                Some(55),
            ),
            op(
                2,
                StoreInput::Read { keys: vec![1, 2] },
                Some(StoreOutput::Read { revision: 5, kvs: vec![Some((5, 5)), None] }),
                56,
                Some(60),
            ),
        ];
        assert_eq!(check_store(initial(), &ops, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn a_read_concurrent_with_a_transfer_may_see_it_or_not() {
        let before =
            vec![transfer(1, (1, 1), (70, 130), Some((true, 2)), 0, 20), read_all(2, (100, 1), (100, 1), 1, 5, 15)];
        assert_eq!(check_store(initial(), &before, BUDGET), Verdict::Linearizable);
        let after =
            vec![transfer(1, (1, 1), (70, 130), Some((true, 2)), 0, 20), read_all(2, (70, 2), (130, 2), 2, 5, 15)];
        assert_eq!(check_store(initial(), &after, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn a_lost_transfer_fails() {
        // Acknowledged at revision 2, yet a later read sees neither account changed.
        let ops =
            vec![transfer(1, (1, 1), (70, 130), Some((true, 2)), 0, 10), read_all(2, (100, 1), (100, 1), 1, 11, 20)];
        assert!(is_violation(&check_store(initial(), &ops, BUDGET)));
    }

    #[test]
    fn a_torn_transfer_fails() {
        // One account moved, the other did not: even concurrently no order explains it.
        let ops =
            vec![transfer(1, (1, 1), (70, 130), Some((true, 2)), 0, 20), read_all(2, (70, 2), (100, 1), 2, 5, 15)];
        assert!(is_violation(&check_store(initial(), &ops, BUDGET)));
        // Nor when the transfer's outcome is unknown.
        let unknown = vec![transfer(1, (1, 1), (70, 130), None, 0, 0), read_all(2, (70, 2), (100, 1), 2, 5, 15)];
        assert!(is_violation(&check_store(initial(), &unknown, BUDGET)));
    }

    #[test]
    fn a_transfer_of_unknown_outcome_may_have_happened_or_not() {
        let happened = vec![transfer(1, (1, 1), (70, 130), None, 0, 0), read_all(2, (70, 2), (130, 2), 2, 30, 40)];
        assert_eq!(check_store(initial(), &happened, BUDGET), Verdict::Linearizable);
        let did_not = vec![transfer(1, (1, 1), (70, 130), None, 0, 0), read_all(2, (100, 1), (100, 1), 1, 30, 40)];
        assert_eq!(check_store(initial(), &did_not, BUDGET), Verdict::Linearizable);
        // But not before it was called.
        let too_early = vec![read_all(2, (70, 2), (130, 2), 2, 0, 10), transfer(1, (1, 1), (70, 130), None, 20, 0)];
        assert!(is_violation(&check_store(initial(), &too_early, BUDGET)));
    }

    #[test]
    fn a_stale_read_fails() {
        // The put finished before the get began, yet the get saw the key absent.
        let ops = vec![put(1, 5, 2, 0, 10), get(2, None, 1, 11, 20)];
        assert!(is_violation(&check_store(initial(), &ops, BUDGET)));
        // The same for a read-all after a completed transfer that sees the balances before it.
        let ops = vec![
            transfer(1, (1, 1), (70, 130), Some((true, 2)), 0, 10),
            read_all(2, (70, 2), (130, 2), 2, 11, 20),
            read_all(3, (100, 1), (100, 1), 1, 21, 30),
        ];
        assert!(is_violation(&check_store(initial(), &ops, BUDGET)));
    }

    #[test]
    fn a_read_must_name_the_revision_it_read_at() {
        // The values are right, but a put of another key made the store's revision 2.
        let ops = vec![put(1, 5, 2, 0, 10), read_all(2, (100, 1), (100, 1), 1, 11, 20)];
        assert!(is_violation(&check_store(initial(), &ops, BUDGET)));
        let ops = vec![put(1, 5, 2, 0, 10), read_all(2, (100, 1), (100, 1), 2, 11, 20)];
        assert_eq!(check_store(initial(), &ops, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn a_cas_that_succeeded_against_the_wrong_revision_fails() {
        // The key was written at 2 and again at 3: a CAS expecting 2 cannot succeed after that.
        let ops = vec![put(1, 5, 2, 0, 10), put(1, 6, 3, 11, 20), cas(2, 2, 7, true, 4, 21, 30)];
        assert!(is_violation(&check_store(initial(), &ops, BUDGET)));
        // Nor may a CAS against the current revision fail.
        let ops = vec![put(1, 5, 2, 0, 10), cas(2, 2, 7, false, 2, 11, 20)];
        assert!(is_violation(&check_store(initial(), &ops, BUDGET)));
        // And a successful one writes at a new revision, which the reply must name.
        let ops = vec![put(1, 5, 2, 0, 10), cas(2, 2, 7, true, 2, 11, 20)];
        assert!(is_violation(&check_store(initial(), &ops, BUDGET)));
        let ops = vec![put(1, 5, 2, 0, 10), cas(2, 2, 7, true, 3, 11, 20), get(1, Some((7, 3)), 3, 21, 30)];
        assert_eq!(check_store(initial(), &ops, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn writes_of_unknown_outcome_that_never_happened_do_not_blow_up_the_search() {
        // Twelve puts whose clients never heard back, none of which took effect, then 100
        // sequential puts and gets whose revisions count none of them. Without the hopeless
        // rule the search would try subsets of the twelve before a read that no extra write can
        // explain (a revision once passed never comes back).
        let mut ops: Vec<Op> =
            (0..12).map(|i| op(9, StoreInput::Put { key: 100 + i as u8, value: i }, None, i, None)).collect();
        let mut revision = 1;
        let mut t = 100;
        for i in 0..100u64 {
            revision += 1;
            ops.push(put(1, i, revision, t, t + 1));
            ops.push(get(2, Some((i, revision)), revision, t + 2, t + 3));
            t += 4;
        }
        assert_eq!(check_store(initial(), &ops, 10_000), Verdict::Linearizable);
        // And one of them that did take effect, seen by the last read, is found as well.
        let last = ops.len() - 1;
        ops[last] = op(
            2,
            StoreInput::Read { keys: vec![X, 105] },
            Some(StoreOutput::Read {
                revision: revision + 1,
                kvs: vec![Some((99, revision)), Some((5, revision + 1))],
            }),
            t - 2,
            Some(t - 1),
        );
        assert_eq!(check_store(initial(), &ops, 10_000), Verdict::Linearizable);
    }

    #[test]
    fn the_store_check_says_unknown_past_its_budget() {
        let ops = vec![put(1, 5, 2, 0, 10), get(2, Some((5, 2)), 2, 11, 20), put(1, 6, 3, 21, 30)];
        assert_eq!(check_store(initial(), &ops, 2), Verdict::Unknown { partition: WHOLE_STORE.to_string() });
        assert_eq!(check_store(initial(), &ops, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn a_store_violation_is_shown_at_its_earliest_failing_cut() {
        // 40 good puts and gets, a stale get, then 40 more: the excerpt ends at the stale get
        // (marked), shows at most STORE_EXCERPT operations and nothing called after it.
        let mut ops = Vec::new();
        let mut revision = 1;
        let mut t = 0;
        for i in 0..40u64 {
            revision += 1;
            ops.push(put(1, i, revision, t, t + 1));
            ops.push(get(2, Some((i, revision)), revision, t + 2, t + 3));
            t += 4;
        }
        ops.push(get(3, Some((38, revision - 1)), revision - 1, t, t + 1));
        let stale_at = t;
        t += 2;
        for i in 40..80u64 {
            revision += 1;
            ops.push(put(1, i, revision, t, t + 1));
            t += 2;
        }
        match check_store(initial(), &ops, BUDGET) {
            Verdict::Violation { partition, operations } => {
                assert_eq!(partition, WHOLE_STORE);
                assert_eq!(operations.len(), STORE_EXCERPT + 1, "{operations:#?}");
                assert!(operations[0].starts_with("... 65 earlier operations"), "{operations:#?}");
                let last = operations.last().cloned().unwrap_or_default();
                assert!(last.starts_with('*') && last.contains(&format!("{stale_at:>8} ..")), "{operations:#?}");
                assert_eq!(operations.iter().filter(|o| o.starts_with('*')).count(), 1, "{operations:#?}");
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;

    /// A small deterministic generator (the check room uses nothing of ours).
    struct Gen(u64);

    impl Gen {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Where a model offers the fast path, it says what `step` says: unchanged state when the
    /// output fits, no step when it does not.
    fn agrees<M: Model>(model: &M, state: &M::State, input: &M::Input, output: Option<&M::Output>) -> bool {
        match model.unchanged(state, input, output) {
            None => true,
            Some(true) => model.step(state, input, output).as_ref() == Some(state),
            Some(false) => model.step(state, input, output).is_none(),
        }
    }

    #[test]
    fn the_store_models_fast_path_agrees_with_its_step() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let model = StoreModel { initial: StoreState { revision: 1, keys: BTreeMap::new() } };
        let (mut fast, mut total) = (0, 0);
        for _ in 0..20_000 {
            let mut state = StoreState { revision: 1 + g.below(4), keys: BTreeMap::new() };
            for k in 0..3u8 {
                if g.below(3) > 0 {
                    state.keys.insert(k, (g.below(3), g.below(state.revision + 1)));
                }
            }
            let key = |g: &mut Gen| g.below(3) as u8;
            let input = match g.below(3) {
                0 => StoreInput::Put { key: key(&mut g), value: g.below(3) },
                1 => StoreInput::Read { keys: (0..1 + g.below(3)).map(|_| key(&mut g)).collect() },
                _ => StoreInput::Txn {
                    compares: (0..g.below(3)).map(|_| (key(&mut g), g.below(5))).collect(),
                    puts: (0..g.below(3)).map(|_| (key(&mut g), g.below(3))).collect(),
                },
            };
            let kv = |g: &mut Gen| (g.below(3) > 0).then(|| (g.below(3), g.below(5)));
            let output = match g.below(4) {
                0 => None,
                1 => Some(StoreOutput::Put { revision: g.below(6) }),
                2 => Some(StoreOutput::Txn { succeeded: g.below(2) == 0, revision: g.below(6) }),
                _ => Some(StoreOutput::Read {
                    revision: g.below(6),
                    kvs: (0..1 + g.below(3)).map(|_| kv(&mut g)).collect(),
                }),
            };
            total += 1;
            fast += usize::from(model.unchanged(&state, &input, output.as_ref()).is_some());
            assert!(agrees(&model, &state, &input, output.as_ref()), "{state:?} {input:?} {output:?}");
        }
        // The generator reaches the fast path often, both ways.
        assert!(fast > total / 10, "{fast} of {total}");
    }

    #[test]
    fn the_store_models_hopeless_rule_is_sound() {
        // Whenever it calls an answer hopeless, no state reached by further writes explains it.
        let mut g = Gen(0x2545_f491_4f6c_dd1d);
        let model = StoreModel { initial: StoreState { revision: 1, keys: BTreeMap::new() } };
        let key = |g: &mut Gen| g.below(3) as u8;
        let (mut hopeless, mut total) = (0, 0);
        for _ in 0..5_000 {
            let mut state = StoreState { revision: 1 + g.below(4), keys: BTreeMap::new() };
            for k in 0..3u8 {
                if g.below(3) > 0 {
                    state.keys.insert(k, (g.below(3), g.below(state.revision + 1)));
                }
            }
            let input = match g.below(3) {
                0 => StoreInput::Put { key: key(&mut g), value: g.below(3) },
                1 => StoreInput::Read { keys: vec![key(&mut g)] },
                _ => StoreInput::Txn {
                    compares: (0..g.below(2)).map(|_| (key(&mut g), g.below(5))).collect(),
                    puts: (0..g.below(2)).map(|_| (key(&mut g), g.below(3))).collect(),
                },
            };
            let revision = g.below(7);
            let output = match &input {
                StoreInput::Put { .. } => StoreOutput::Put { revision },
                StoreInput::Txn { .. } => StoreOutput::Txn { succeeded: g.below(2) == 0, revision },
                StoreInput::Read { .. } => StoreOutput::Read { revision, kvs: vec![state.keys.get(&0).copied()] },
            };
            total += 1;
            if !model.hopeless(&state, &input, &output) {
                continue;
            }
            hopeless += 1;
            for _ in 0..6 {
                assert!(model.step(&state, &input, Some(&output)).is_none(), "{state:?} {input:?} {output:?}");
                let write = if g.below(2) == 0 {
                    StoreInput::Put { key: key(&mut g), value: g.below(3) }
                } else {
                    StoreInput::Txn { compares: vec![(key(&mut g), g.below(5))], puts: vec![(key(&mut g), g.below(3))] }
                };
                state = model.step(&state, &write, None).unwrap_or(state);
            }
        }
        assert!(hopeless > total / 10, "{hopeless} of {total}");
    }

    #[test]
    fn the_register_models_fast_path_agrees_with_its_step() {
        let model = RegisterModel::<u8>(std::marker::PhantomData);
        let values = [None, Some(1), Some(2)];
        for state in values {
            for expect in values {
                for seen in values {
                    let read = RegisterInput::Read { key: 0 };
                    assert!(agrees(&model, &state, &read, Some(&RegisterOutput::Value(seen))));
                }
                for swapped in [false, true] {
                    let cas = RegisterInput::Cas { key: 0, expect, new: 3 };
                    assert!(agrees(&model, &state, &cas, Some(&RegisterOutput::Swapped(swapped))));
                    assert!(agrees(&model, &state, &cas, None));
                }
            }
        }
    }
}
