//! The consensus core alone: how many 256-byte entries per second a 3-member group commits
//! when messages are handed over in memory (no disk, no network). A baseline for later work.

use std::collections::VecDeque;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kuberaft::raft::{Config, InitialState, Message, Raft, RawNode, Role};

const ENTRY_BYTES: usize = 256;
/// Batches committed per measured iteration.
const ROUNDS: u64 = 16;

struct Group {
    nodes: Vec<RawNode>,
    inbox: VecDeque<Message>,
}

impl Group {
    fn new() -> Group {
        let voters: Vec<(u64, Bytes)> = (1..=3).map(|id| (id, Bytes::new())).collect();
        let initial = InitialState::bootstrap(&voters);
        let nodes = (1..=3)
            .map(|id| RawNode::new(Raft::new(Config::new(id), initial.clone()).expect("valid config")))
            .collect();
        let mut group = Group { nodes, inbox: VecDeque::new() };
        group.settle();
        // Elect node 1: tick until it campaigns and wins.
        for _ in 0..100 {
            if group.nodes[0].raft.role() == Role::Leader {
                break;
            }
            group.nodes[0].tick();
            group.settle();
        }
        assert_eq!(group.nodes[0].raft.role(), Role::Leader, "node 1 became leader");
        group
    }

    /// Runs every Ready loop and delivers every message until nothing is left to do.
    fn settle(&mut self) {
        loop {
            let mut progressed = false;
            for node in &mut self.nodes {
                while node.has_ready() {
                    let rd = node.ready();
                    self.inbox.extend(rd.messages);
                    self.inbox.extend(rd.persisted_messages);
                    node.advance();
                    progressed = true;
                }
            }
            while let Some(m) = self.inbox.pop_front() {
                self.nodes[(m.to - 1) as usize].step(m);
                progressed = true;
            }
            if !progressed {
                return;
            }
        }
    }

    fn commit_batch(&mut self, payload: &Bytes, batch: usize) {
        let target = self.nodes[0].raft.log().last_index() + batch as u64;
        for _ in 0..batch {
            self.nodes[0].raft.propose(payload.clone()).expect("leader accepts proposals");
        }
        self.settle();
        assert!(self.nodes[0].raft.commit_index() >= target, "batch committed");
    }
}

fn commit_throughput(c: &mut Criterion) {
    let payload = Bytes::from(vec![7u8; ENTRY_BYTES]);
    let mut group = c.benchmark_group("raft_core_3_members_256B");
    for batch in [1usize, 64] {
        group.throughput(Throughput::Elements(ROUNDS * batch as u64));
        group.bench_function(format!("batch_{batch}"), |b| {
            b.iter_batched_ref(
                Group::new,
                |g| {
                    for _ in 0..ROUNDS {
                        g.commit_batch(&payload, batch);
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, commit_throughput);
criterion_main!(benches);
