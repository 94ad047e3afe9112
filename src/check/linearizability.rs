//! A linearizability checker for recorded client histories: the Wing–Gong search with Lowe's
//! memoisation (the algorithm of the Porcupine checker), run per key (P-compositionality:
//! a history is linearizable iff each key's sub-history is).
//!
//! An operation whose outcome is unknown (the client timed out or its server crashed) has no
//! return time: it may be linearized anywhere after its call, or — by placing it after every
//! other operation — effectively never.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Clone + Debug;
    type Output: Clone + Debug;
    fn init(&self) -> Self::State;
    /// The state after `input` if it could have produced `output` (`None`: the outcome is
    /// unknown, accept whatever the operation would have done); `None` if it could not.
    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State>;
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

#[derive(Clone, Copy)]
struct Node {
    op: usize,
    is_call: bool,
    /// For a call: its return node.
    partner: usize,
    prev: usize,
    next: usize,
}

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
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut calls: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
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
            if let Some(next_state) = model.step(&state, &op.input, op.output.as_ref()) {
                let mut next_lin = linearized.clone();
                next_lin[node.op / 64] |= 1 << (node.op % 64);
                if cache.insert((next_lin.clone(), next_state.clone())) {
                    calls.push((entry, state));
                    state = next_state;
                    linearized = next_lin;
                    lift(&mut nodes, entry);
                    entry = nodes[0].next;
                    continue;
                }
            }
            entry = node.next;
        } else {
            // We reached the return of an operation we could not linearize before it: undo.
            let Some((call, previous)) = calls.pop() else { return Some(false) };
            state = previous;
            let op = nodes[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut nodes, call);
            entry = nodes[call].next;
        }
    }
    Some(true)
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
