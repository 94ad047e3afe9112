//! etcd's v3 gRPC API (issue 15) through the Rust `etcd-client` crate (built with
//! `--features etcd`): its example flows (KV, watch, lease, lock, election) against kuberaft,
//! and differential testing: random operation sequences through the same `etcd-client` code to a
//! real etcd 3.4 and to a 3-member kuberaft cluster, every answer compared field by field with
//! the cluster and member ids and the term taken out.
//!
//! `DIFF_OPS=N` sets the number of operations (CI: 400), `DIFF_SEED=S` the seed.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, LockOptions,
    ProclaimOptions, PutOptions, ResignOptions, SortOrder, SortTarget, Txn, TxnOp, WatchOptions,
};
use kuberaft::base::rng::Rng;

use crate::harness::{Cluster, Etcd};
use crate::ELECTION;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

async fn connect(endpoints: &[String]) -> Client {
    let options = etcd_client::ConnectOptions::new()
        .with_timeout(Duration::from_secs(10))
        .with_connect_timeout(Duration::from_secs(3));
    Client::connect(endpoints, Some(options)).await.expect("connect")
}

/// Debug text of an answer with the cluster and member ids and the term taken out.
fn scrub(text: String) -> String {
    let mut out = text;
    for field in ["cluster_id: ", "member_id: ", "raft_term: "] {
        let mut done = String::new();
        let mut rest = out.as_str();
        while let Some(at) = rest.find(field) {
            done.push_str(&rest[..at + field.len()]);
            rest = &rest[at + field.len()..];
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            done.push('_');
            rest = &rest[digits..];
        }
        done.push_str(rest);
        out = done;
    }
    out
}

/// An answer or an error, as compared: the answer's scrubbed Debug, or the error's code and
/// message (its metadata differs by server).
fn outcome<T: std::fmt::Debug>(result: Result<T, etcd_client::Error>) -> String {
    match result {
        Ok(answer) => scrub(format!("{answer:?}")),
        Err(etcd_client::Error::GRpcStatus(status)) => format!("error {:?}: {}", status.code(), status.message()),
        Err(other) => format!("error: {other}"),
    }
}

/// The Rust client's own example flows (its `examples/`: KV, watch, lease, lock, election),
/// against kuberaft through a follower: each does what the example shows.
#[test]
fn etcd_client_example_flows_work_against_kuberaft() {
    let mut c = Cluster::new(133, 3);
    c.bootstrap();
    let (leader, _) = c.wait_leader(ELECTION);
    let follower = c.members[(leader + 1) % 3].client_url();
    runtime().block_on(async move {
        let mut client = connect(&[follower]).await;
        // KV: put, get, get with a prefix, delete, txn.
        client.put("foo", "bar", None).await.expect("put");
        let got = client.get("foo", None).await.expect("get");
        assert_eq!(got.kvs()[0].value(), b"bar");
        client.put("foo/1", "a", None).await.expect("put");
        let all = client.get("foo", Some(GetOptions::new().with_prefix())).await.expect("get prefix");
        assert_eq!(all.count(), 2);
        let deleted = client.delete("foo/1", Some(DeleteOptions::new().with_prev_key())).await.expect("delete");
        assert_eq!((deleted.deleted(), deleted.prev_kvs()[0].value()), (1, &b"a"[..]));
        let txn = Txn::new()
            .when([Compare::value("foo", CompareOp::Equal, "bar")])
            .and_then([TxnOp::put("foo", "baz", None)])
            .or_else([TxnOp::get("foo", None)]);
        assert!(client.txn(txn).await.expect("txn").succeeded());
        // Watch: a put after the watch is seen, with its value.
        let mut watch = client.watch("watched", None).await.expect("watch");
        let created = watch.message().await.expect("created").expect("a response");
        assert!(created.created());
        client.put("watched", "1", None).await.expect("put");
        let event = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.expect("in time");
        let event = event.expect("an event").expect("a response");
        assert_eq!(event.events()[0].kv().map(|kv| kv.value().to_vec()), Some(b"1".to_vec()));
        // Lease: grant, attach, keep alive, time to live, revoke (and the key goes with it).
        let lease = client.lease_grant(60, None).await.expect("grant").id();
        client.put("leased", "x", Some(PutOptions::new().with_lease(lease))).await.expect("put with lease");
        let (mut keeper, mut stream) = client.lease_keep_alive(lease).await.expect("keep alive");
        keeper.keep_alive().await.expect("send");
        let renewed = stream.message().await.expect("renewed").expect("a response");
        assert_eq!((renewed.id(), renewed.ttl()), (lease, 60));
        let ttl = client.lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys())).await.expect("ttl");
        assert_eq!((ttl.granted_ttl(), ttl.keys().to_vec()), (60, vec![b"leased".to_vec()]));
        client.lease_revoke(lease).await.expect("revoke");
        assert_eq!(client.get("leased", None).await.expect("get").count(), 0);
        // Lock: held by one, then released.
        let lease = client.lease_grant(60, None).await.expect("grant").id();
        let locked = client.lock("lock-test", Some(LockOptions::new().with_lease(lease))).await.expect("lock");
        let key = locked.key().to_vec();
        assert!(key.starts_with(b"lock-test/"));
        client.unlock(key.clone()).await.expect("unlock");
        assert_eq!(client.get(key, None).await.expect("get").count(), 0);
        // Election: campaign, leader, observe, proclaim, resign.
        let lease = client.lease_grant(60, None).await.expect("grant").id();
        let won = client.campaign("election-test", "first", lease).await.expect("campaign");
        let leader_key = won.leader().expect("a leader key").clone();
        let now = client.leader("election-test").await.expect("leader");
        assert_eq!(now.kv().map(|kv| kv.value().to_vec()), Some(b"first".to_vec()));
        let mut observe = client.observe("election-test").await.expect("observe");
        let seen = observe.message().await.expect("observed").expect("a leader");
        assert_eq!(seen.kv().map(|kv| kv.value().to_vec()), Some(b"first".to_vec()));
        client
            .proclaim("second", Some(ProclaimOptions::new().with_leader(leader_key.clone())))
            .await
            .expect("proclaim");
        let seen = tokio::time::timeout(Duration::from_secs(5), observe.message()).await.expect("in time");
        let seen = seen.expect("observed").expect("a leader");
        assert_eq!(seen.kv().map(|kv| kv.value().to_vec()), Some(b"second".to_vec()));
        client.resign(Some(ResignOptions::new().with_leader(leader_key))).await.expect("resign");
        let gone = client.leader("election-test").await;
        assert!(outcome(gone).contains("election: no leader"));
    });
}

/// One random operation, run on both systems; the outcomes compared.
struct Differ {
    ours: Vec<Client>,
    etcd: Client,
    rng: Rng,
    /// Lease ids granted (the same explicit ids on both).
    leases: Vec<i64>,
    next_lease: i64,
    compacted: i64,
    revision: i64,
}

impl Differ {
    fn key(&mut self) -> String {
        format!("k/{:02}", self.rng.range(0, 24))
    }

    fn value(&mut self) -> String {
        format!("v{}", self.rng.range(0, 1000))
    }

    /// Range options; with `tie_sorts`, sorts by a target other than the key too. etcd's sort
    /// is not stable (Go's sort.Sort): keys with equal values come in any order
    /// (COMPATIBILITY.md), so such a range has no limit, and its ties are compared in key order
    /// (`ties_in_key_order`), with the target returned for that.
    fn get_options(&mut self, tie_sorts: bool) -> (GetOptions, Option<SortTarget>) {
        let mut o = GetOptions::new();
        let mut tie_target = None;
        match self.rng.range(0, 4) {
            0 => o = o.with_prefix(),
            1 => o = o.with_from_key(),
            2 => o = o.with_range(format!("k/{:02}", self.rng.range(0, 30))),
            _ => {}
        }
        if self.rng.chance(0.3) && self.revision > self.compacted + 1 {
            o = o.with_revision(self.rng.range((self.compacted + 1) as u64, (self.revision + 1) as u64) as i64);
        }
        if tie_sorts && self.rng.chance(0.3) {
            let targets =
                [SortTarget::Key, SortTarget::Version, SortTarget::Create, SortTarget::Mod, SortTarget::Value];
            let orders = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend];
            let (t, ord) = (self.rng.range(0, 5) as usize, self.rng.range(0, 3) as usize);
            o = o.with_sort(targets[t], orders[ord]);
            tie_target = Some(targets[t]);
        } else if self.rng.chance(0.3) {
            o = o.with_limit(self.rng.range(0, 5) as i64);
            if self.rng.chance(0.3) {
                let order = if self.rng.chance(0.5) { SortOrder::Ascend } else { SortOrder::Descend };
                o = o.with_sort(SortTarget::Key, order);
            }
        }
        if self.rng.chance(0.2) {
            o = o.with_keys_only();
        }
        if self.rng.chance(0.1) {
            o = o.with_count_only();
        }
        if self.rng.chance(0.2) {
            o = o.with_min_mod_revision(self.rng.range(0, (self.revision + 1) as u64) as i64);
        }
        if self.rng.chance(0.2) {
            o = o.with_max_create_revision(self.rng.range(0, (self.revision + 1) as u64) as i64);
        }
        (o, tie_target)
    }

    fn compare(&mut self) -> Compare {
        let key = self.key();
        let ops = [CompareOp::Equal, CompareOp::Greater, CompareOp::Less, CompareOp::NotEqual];
        let op = ops[self.rng.range(0, 4) as usize];
        let n = self.rng.range(0, (self.revision + 2) as u64) as i64;
        match self.rng.range(0, 5) {
            0 => Compare::version(key, op, n % 4),
            1 => Compare::create_revision(key, op, n),
            2 => Compare::mod_revision(key, op, n),
            3 => {
                let value = self.value();
                Compare::value(key, op, value)
            }
            _ => Compare::lease(key, op, self.leases.first().copied().unwrap_or(0)),
        }
    }

    fn txn_op(&mut self, used: &mut Vec<String>) -> TxnOp {
        let mut key = self.key();
        // etcd refuses a txn that writes a key twice (both refuse it the same way: sometimes).
        if used.contains(&key) && self.rng.chance(0.9) {
            key = format!("t/{}", used.len());
        }
        match self.rng.range(0, 3) {
            0 => {
                used.push(key.clone());
                let value = self.value();
                TxnOp::put(key, value, Some(PutOptions::new().with_prev_key()))
            }
            1 => {
                let (options, _) = self.get_options(false);
                TxnOp::get(key, Some(options))
            }
            _ => {
                used.push(key.clone());
                TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()))
            }
        }
    }

    /// Runs `f` on the etcd client and on a random kuberaft member's client: both outcomes.
    async fn both<T, F, Fut>(&mut self, f: F) -> (String, String)
    where
        T: std::fmt::Debug,
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let member = self.rng.range(0, self.ours.len() as u64) as usize;
        let ours = outcome(f(self.ours[member].clone()).await);
        let etcd = outcome(f(self.etcd.clone()).await);
        (ours, etcd)
    }

    async fn step(&mut self, n: u64) -> (String, String, String) {
        let choice = self.rng.range(0, 100);
        let (what, (ours, etcd)) = if choice < 25 {
            let (key, (options, tie_target)) = (self.key(), self.get_options(true));
            let what = format!("get {key} {options:?}");
            (
                what,
                self.both(|mut c| {
                    let (key, options) = (key.clone(), options.clone());
                    async move { c.get(key, Some(options)).await.map(|r| ties_in_key_order(&r, tie_target)) }
                })
                .await,
            )
        } else if choice < 50 {
            let (key, value) = (self.key(), self.value());
            let mut options = PutOptions::new().with_prev_key();
            if self.rng.chance(0.2) && !self.leases.is_empty() {
                options = options.with_lease(self.leases[self.rng.range(0, self.leases.len() as u64) as usize]);
            }
            if self.rng.chance(0.05) {
                options = options.with_ignore_value();
            }
            let what = format!("put {key} {value} {options:?}");
            (
                what,
                self.both(|mut c| {
                    let (key, value, options) = (key.clone(), value.clone(), options.clone());
                    async move { c.put(key, value, Some(options)).await }
                })
                .await,
            )
        } else if choice < 60 {
            let key = self.key();
            let options = if self.rng.chance(0.5) {
                DeleteOptions::new().with_prev_key()
            } else {
                DeleteOptions::new().with_prefix().with_prev_key()
            };
            let what = format!("delete {key} {options:?}");
            (
                what,
                self.both(|mut c| {
                    let (key, options) = (key.clone(), options.clone());
                    async move { c.delete(key, Some(options)).await }
                })
                .await,
            )
        } else if choice < 80 {
            let compares: Vec<Compare> = (0..self.rng.range(0, 3)).map(|_| self.compare()).collect();
            let mut used = Vec::new();
            let success: Vec<TxnOp> = (0..self.rng.range(0, 4)).map(|_| self.txn_op(&mut used)).collect();
            let mut used_else = Vec::new();
            let failure: Vec<TxnOp> = (0..self.rng.range(0, 3)).map(|_| self.txn_op(&mut used_else)).collect();
            let txn = Txn::new().when(compares).and_then(success).or_else(failure);
            let what = format!("txn {txn:?}");
            (
                what,
                self.both(|mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await,
            )
        } else if choice < 82 {
            // A compaction, now and then, to a revision at or below the current one.
            // Mostly well below the current revision, so that watches have history to replay.
            let to = self.rng.range(0, (self.revision - self.revision / 4 + 3) as u64) as i64;
            let what = format!("compact {to}");
            (what, self.both(|mut c| async move { c.compact(to, None).await }).await)
        } else if choice < 92 {
            // A watch from a past revision (above the compacted one), over a prefix, with
            // previous values: the events up to the current revision.
            let start = self.rng.range((self.compacted + 1) as u64, (self.revision + 2) as u64) as i64;
            let upto = self.revision;
            let what = format!("watch k/ from {start} to {upto}");
            (what, self.both(|c| async move { watch_events(c, start, upto).await }).await)
        } else if choice < 96 {
            let id = self.next_lease;
            self.next_lease += 1;
            self.leases.push(id);
            let what = format!("lease grant {id}");
            (
                what,
                self.both(|mut c| async move { c.lease_grant(600, Some(LeaseGrantOptions::new().with_id(id))).await })
                    .await,
            )
        } else {
            let id = if self.leases.is_empty() || self.rng.chance(0.2) { 999 } else { self.leases.remove(0) };
            let what = format!("lease revoke {id}");
            (
                what,
                self.both(|mut c| async move {
                    c.lease_revoke(id).await.map(|r| format!("{:?}", r.header().map(|h| h.revision())))
                })
                .await,
            )
        };
        // Track the revisions from etcd's answers (the same on both when they agree).
        if let Some(at) = etcd.find("revision: ") {
            let digits: String = etcd[at + 10..].chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(r) = digits.parse::<i64>() {
                self.revision = self.revision.max(r);
            }
        }
        if what.starts_with("compact") && !etcd.starts_with("error") {
            self.compacted = self.compacted.max(what[8..].parse().unwrap_or(0));
        }
        (format!("#{n} {what}"), ours, etcd)
    }
}

/// A range's answer with the keys of equal sort values (by `target`, when it sorted by one
/// other than the key) put in key order: etcd's sort leaves their order unspecified.
fn ties_in_key_order(r: &etcd_client::GetResponse, target: Option<SortTarget>) -> String {
    let mut kvs: Vec<etcd_client::KeyValue> = r.kvs().to_vec();
    if let Some(target) = target {
        let value = |kv: &etcd_client::KeyValue| -> Vec<u8> {
            match target {
                SortTarget::Version => kv.version().to_be_bytes().to_vec(),
                SortTarget::Create => kv.create_revision().to_be_bytes().to_vec(),
                SortTarget::Mod => kv.mod_revision().to_be_bytes().to_vec(),
                SortTarget::Value => kv.value().to_vec(),
                SortTarget::Key => kv.key().to_vec(),
            }
        };
        let mut start = 0;
        while start < kvs.len() {
            let mut end = start + 1;
            while end < kvs.len() && value(&kvs[end]) == value(&kvs[start]) {
                end += 1;
            }
            kvs[start..end].sort_by(|a, b| a.key().cmp(b.key()));
            start = end;
        }
    }
    format!("{:?} {kvs:?} more={} count={}", r.header(), r.more(), r.count())
}

/// The events of a watch over `k/` from `start` up to revision `upto` (ends after 3 s without
/// one), each with its revision, type, key-value and previous one.
async fn watch_events(mut client: Client, start: i64, upto: i64) -> Result<String, etcd_client::Error> {
    let options = WatchOptions::new().with_prefix().with_start_revision(start).with_prev_key();
    let mut stream = client.watch("k/", Some(options)).await?;
    let mut seen = Vec::new();
    let mut at = start - 1;
    while at < upto {
        match tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
            Ok(Ok(Some(answer))) => {
                if answer.canceled() {
                    seen.push(format!(
                        "canceled compact={} reason={}",
                        answer.compact_revision(),
                        answer.cancel_reason()
                    ));
                    break;
                }
                for e in answer.events() {
                    at = at.max(e.kv().map_or(0, |kv| kv.mod_revision()));
                    if at <= upto {
                        seen.push(format!("{:?} {:?} {:?}", e.event_type(), e.kv(), e.prev_kv()));
                    }
                }
                if answer.events().is_empty() && !answer.created() {
                    break;
                }
            }
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(e)) => return Err(e),
        }
    }
    Ok(seen.join("\n"))
}

/// Issue 15, must-show 2: the same random operations (range with every option, put, delete,
/// txn with compares, compact, watch from past revisions, lease grant, attach and revoke)
/// through the same `etcd-client` code to a real etcd 3.4 and to kuberaft (a random member for
/// each), every answer the same once ids and terms are taken out.
#[test]
fn etcd_client_differential_against_a_real_etcd() {
    if !crate::require::available(
        std::process::Command::new("etcd").arg("--version").output().is_ok(),
        "etcd 3.4 (`etcd`)",
    ) {
        return;
    }
    let ops: u64 = std::env::var("DIFF_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let seed: u64 = std::env::var("DIFF_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(15);
    let mut c = Cluster::new(134, 3);
    c.bootstrap();
    c.wait_leader(ELECTION);
    let etcd_ip = "127.135.0.1";
    let _etcd = Etcd::start(etcd_ip, &["--election-timeout", "1000", "--heartbeat-interval", "100"]);
    let ours: Vec<String> = c.members.iter().map(|m| m.client_url()).collect();
    runtime().block_on(async move {
        let mut clients = Vec::new();
        for endpoint in &ours {
            clients.push(connect(std::slice::from_ref(endpoint)).await);
        }
        let etcd = connect(&[format!("http://{etcd_ip}:2379")]).await;
        let mut differ = Differ {
            ours: clients,
            etcd,
            rng: Rng::new(seed),
            leases: Vec::new(),
            next_lease: 1000,
            compacted: 0,
            revision: 1,
        };
        // Per kind of operation: how many answered, how many were errors (the same on both).
        let mut kinds: std::collections::BTreeMap<String, (u64, u64)> = std::collections::BTreeMap::new();
        let mut events = 0usize;
        for n in 0..ops {
            let (what, ours, etcd) = differ.step(n).await;
            assert_eq!(ours, etcd, "seed {seed}, {what}: kuberaft answered differently from etcd");
            let kind = what.split_whitespace().nth(1).unwrap_or("?").to_string();
            let entry = kinds.entry(kind.clone()).or_default();
            entry.0 += 1;
            entry.1 += u64::from(ours.starts_with("error"));
            if kind == "watch" {
                // The answer is the Debug of the events' text: one escaped line break between two.
                if ours.starts_with("\"Put") || ours.starts_with("\"Delete") {
                    events += ours.matches("\\n").count() + 1;
                }
            }
        }
        eprintln!(
            "differential: {ops} operations from seed {seed}, every answer the same; revision {}; \
             (answers, errors) per kind {kinds:?}; {events} watch events",
            differ.revision
        );
        // The comparison is of real answers: most operations succeed, and watches see events.
        let errors: u64 = kinds.values().map(|(_, e)| e).sum();
        assert!(errors * 4 < ops, "too many errors to compare answers: {kinds:?}");
        assert!(ops < 100 || (events > 0 && differ.revision > (ops / 4) as i64), "{kinds:?}, {events} events");
    });
}
