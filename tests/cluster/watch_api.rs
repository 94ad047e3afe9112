//! Watches (issue 14) against real 3-member clusters: `POST /v1/watch` as a full-duplex stream
//! (creates, filters, previous values, a txn's events in one response, progress, cancel,
//! compaction, refusals), resuming on another member with `last + 1`, a watcher that does not
//! read while writes go on, and `kuberaft watch` following the cluster through a member that
//! dies and one that is paused. Blocks 127.117-119.0.0/16.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{wait_for, Cluster, CLIENT_PORT};
use crate::ELECTION;

/// One watch stream over a raw socket: the request body is sent in chunks as the test goes
/// (full duplex), the chunked answer is read line by line with a deadline.
pub struct RawWatch {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    /// Bytes of the answer's body not yet split into lines.
    body: Vec<u8>,
    lines: VecDeque<Value>,
    pub status: u16,
}

impl RawWatch {
    /// Opens `POST /v1/watch` on `ip` and sends `first` as the first request.
    pub fn open(ip: &str, first: &Value) -> RawWatch {
        RawWatch::open_with(ip, first, "")
    }

    /// The same with more request headers (`name: value\r\n` each).
    pub fn open_with(ip: &str, first: &Value, headers: &str) -> RawWatch {
        let stream = TcpStream::connect((ip, CLIENT_PORT)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut w = RawWatch { stream, reader, body: Vec::new(), lines: VecDeque::new(), status: 0 };
        let head = format!(
            "POST /v1/watch HTTP/1.1\r\nhost: {ip}\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n{headers}\r\n"
        );
        w.stream.write_all(head.as_bytes()).expect("send head");
        w.send(first);
        w.status = w.read_head();
        w
    }

    /// Sends one more request on the stream.
    pub fn send(&mut self, request: &Value) {
        let line = format!("{request}\n");
        let chunk = format!("{:x}\r\n{line}\r\n", line.len());
        self.stream.write_all(chunk.as_bytes()).expect("send a request");
    }

    /// Reads the status line and headers (within 10 s); returns the status.
    fn read_head(&mut self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            assert!(Instant::now() < deadline, "no answer head: {head:?}");
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => panic!("closed before the head: {head:?}"),
                Ok(_) => head.push_str(&line),
                Err(_) => continue,
            }
        }
        head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status")
    }

    /// Reads one chunk of the answer into `body`; false at its end.
    fn read_chunk(&mut self, deadline: Instant) -> Option<bool> {
        let mut size = String::new();
        // Bounded by the deadline: each read waits at most the socket's 200 ms.
        loop {
            if Instant::now() >= deadline {
                return None;
            }
            match self.reader.read_line(&mut size) {
                Ok(0) => return Some(false),
                Ok(_) if size.ends_with("\r\n") => break,
                Ok(_) => continue,
                Err(_) => continue,
            }
        }
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            return Some(false);
        }
        let mut data = vec![0; size + 2];
        let mut got = 0;
        while got < data.len() {
            assert!(Instant::now() < deadline + Duration::from_secs(10), "a chunk never completed");
            match self.reader.read(&mut data[got..]) {
                Ok(0) => return Some(false),
                Ok(n) => got += n,
                Err(_) => continue,
            }
        }
        self.body.extend_from_slice(&data[..size]);
        while let Some(at) = self.body.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.body.drain(..=at).collect();
            self.lines.push_back(serde_json::from_slice(&line).expect("a JSON line"));
        }
        Some(true)
    }

    /// The next answer line, or None if none comes within `within`.
    pub fn next_within(&mut self, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        while self.lines.is_empty() {
            match self.read_chunk(deadline) {
                Some(true) => {}
                Some(false) | None => return None,
            }
        }
        self.lines.pop_front()
    }

    /// The next answer line, which must come within 10 s.
    pub fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(10)).expect("a watch answer within 10 s")
    }

    /// The next answer with events (skipping progress answers).
    pub fn next_events(&mut self) -> Value {
        for _ in 0..100 {
            let line = self.next();
            if line["events"].is_array() {
                return line;
            }
        }
        panic!("no events in 100 answers")
    }
}

/// The events of an answer without their headers: `(type, key, modRevision, value, prev value)`.
fn events(answer: &Value) -> Vec<(String, String, i64, String, String)> {
    answer["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    (
                        e["type"].as_str().unwrap_or("?").to_string(),
                        e["kv"]["key"].as_str().unwrap_or("?").to_string(),
                        e["kv"]["modRevision"].as_i64().unwrap_or(-1),
                        e["kv"]["value"].as_str().unwrap_or("").to_string(),
                        e["prevKv"]["value"].as_str().unwrap_or("-").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn ev(kind: &str, key: &str, rev: i64, value: &str, prev: &str) -> (String, String, i64, String, String) {
    (kind.to_string(), key.to_string(), rev, value.to_string(), prev.to_string())
}

fn post(c: &Cluster, i: usize, path: &str, body: &Value) -> (u16, Value) {
    let resp = c.http.post(format!("{}{path}", c.members[i].client_url())).json(body).send().expect("POST");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn started(net: u8) -> (Cluster, usize, usize) {
    let mut c = Cluster::new(net, 3);
    c.bootstrap();
    let (leader, _) = c.wait_leader(ELECTION);
    (c, leader, (leader + 1) % 3)
}

/// Every change, in revision order, with etcd's shapes: a txn's events in one answer in the
/// order of its writes, previous values, NOPUT, progress after the events it covers, cancel;
/// the same history read again on another member from `last + 1`; compacted starts cancelled
/// with the compact revision; refusals.
#[test]
fn a_watch_sees_every_change_in_order_and_resumes_on_another_member_from_the_next_revision() {
    let (c, leader, follower) = started(117);
    assert_eq!(c.put_ok(leader, "a", "1"), 2);
    assert_eq!(c.put_ok(leader, "b", "1"), 3);

    let mut w = RawWatch::open(&c.members[follower].ip, &json!({"createRequest": {"key": "", "prefix": true, "startRevision": 2, "prevKv": true}}));
    assert_eq!(w.status, 200);
    let created = w.next();
    assert_eq!((created["watchId"].clone(), created["created"].clone(), created["header"]["revision"].clone()), (json!(0), json!(true), json!(3)), "{created}");
    assert!(created["header"]["memberId"].is_string() && created["header"]["raftTerm"].as_u64() >= Some(2), "{created}");
    w.send(&json!({"createRequest": {"key": "a", "prefix": true, "filters": ["NOPUT"]}}));
    // The history from 2 and the second watch's creation arrive in some order.
    let mut seen = Vec::new();
    let mut second = None;
    while seen.len() < 2 || second.is_none() {
        let line = w.next();
        if line["created"] == true {
            second = Some(line);
        } else {
            assert_eq!(line["watchId"], 0, "{line}");
            seen.extend(events(&line));
        }
    }
    assert_eq!(second.expect("created")["watchId"], 1);
    assert_eq!(seen, [ev("PUT", "a", 2, "1", "-"), ev("PUT", "b", 3, "1", "-")]);

    // One txn, one answer: its events in the order of its writes (a key written twice in it
    // gives one event, its last change: see docs/COMPATIBILITY.md).
    let (status, _) = post(&c, leader, "/v1/txn", &json!({"success": [
        {"requestPut": {"key": "c", "value": "1"}},
        {"requestDeleteRange": {"key": "b"}},
        {"requestPut": {"key": "a", "value": "2"}},
    ]}));
    assert_eq!(status, 200);
    let txn = w.next_events();
    assert_eq!((txn["watchId"].clone(), txn["header"]["revision"].clone()), (json!(0), json!(4)), "{txn}");
    assert_eq!(events(&txn), [ev("PUT", "c", 4, "1", "-"), ev("DELETE", "b", 4, "", "1"), ev("PUT", "a", 4, "2", "1")]);
    assert_eq!(txn["events"][2]["kv"]["version"], 2);
    assert_eq!(txn["events"][1]["kv"], json!({"key": "b", "createRevision": 0, "modRevision": 4, "version": 0, "value": "", "lease": 0}));

    // A delete under watch 1 (NOPUT): both watches hear it; then progress, after the events.
    let deleted = c.http.delete(format!("{}/v1/kv/a", c.members[leader].client_url())).send().expect("delete");
    assert_eq!(deleted.json::<Value>().expect("JSON")["revision"], 5);
    // Progress covers what the member applied when asked: ask once it has applied 5.
    wait_for("the follower to apply 5", ELECTION, || (c.status(follower)?["revision"].as_i64()? >= 5).then_some(()));
    w.send(&json!({"progressRequest": {}}));
    let mut got = Vec::new();
    let progress = loop {
        let line = w.next();
        if line["watchId"] == -1 {
            break line;
        }
        got.push((line["watchId"].as_i64(), events(&line)));
    };
    got.sort();
    assert_eq!(got, [(Some(0), vec![ev("DELETE", "a", 5, "", "2")]), (Some(1), vec![ev("DELETE", "a", 5, "", "-")])]);
    assert_eq!(progress["header"]["revision"], 5, "{progress}");
    assert!(progress.get("events").is_none(), "{progress}");

    // Cancel watch 1: answered, and it hears nothing more.
    w.send(&json!({"cancelRequest": {"watchId": 1}}));
    let canceled = w.next();
    assert_eq!((canceled["watchId"].clone(), canceled["canceled"].clone()), (json!(1), json!(true)), "{canceled}");
    c.put_ok(leader, "a", "3");
    c.put_ok(leader, "ab", "1");
    for rev in [6, 7] {
        let line = w.next_events();
        assert_eq!((line["watchId"].clone(), line["header"]["revision"].clone()), (json!(0), json!(rev)), "{line}");
    }
    assert!(w.next_within(Duration::from_millis(500)).is_none(), "nothing else: watch 1 is cancelled");

    // Resume elsewhere from last seen + 1: exactly the same events, none before.
    let mut again = RawWatch::open(&c.members[leader].ip, &json!({"createRequest": {"key": "", "prefix": true, "startRevision": 4, "prevKv": true}}));
    assert_eq!(again.next()["created"], true);
    let mut replay = Vec::new();
    while replay.len() < 5 {
        replay.extend(events(&again.next_events()));
    }
    assert_eq!(replay, [
        ev("PUT", "c", 4, "1", "-"), ev("DELETE", "b", 4, "", "1"), ev("PUT", "a", 4, "2", "1"),
        ev("DELETE", "a", 5, "", "2"), ev("PUT", "a", 6, "3", "-"),
    ]);
    assert_eq!(events(&again.next_events()), [ev("PUT", "ab", 7, "1", "-")]);

    // Compaction: a start at or below the compacted revision is cancelled with it.
    let (status, _) = post(&c, leader, "/v1/compact", &json!({"revision": 5}));
    assert_eq!(status, 200);
    let third = (leader + 2) % 3;
    wait_for("the compaction applied everywhere", ELECTION, || {
        (0..3).all(|i| {
            let (status, answer) = post(&c, i, "/v1/range", &json!({"key": "a", "revision": 4, "serializable": true}));
            status == 400 && answer["error"]["code"] == "compacted"
        }).then_some(())
    });
    for start in [3, 5] {
        let mut late = RawWatch::open(&c.members[third].ip, &json!({"createRequest": {"key": "a", "startRevision": start}}));
        assert_eq!(late.next()["created"], true);
        let cancel = late.next();
        assert_eq!(
            (cancel["canceled"].clone(), cancel["compactRevision"].clone(), cancel["cancelReason"].clone()),
            (json!(true), json!(5), json!("mvcc: required revision has been compacted")),
            "start {start}: {cancel}"
        );
    }
    let mut after = RawWatch::open(&c.members[third].ip, &json!({"createRequest": {"key": "a", "startRevision": 6}}));
    assert_eq!(after.next()["created"], true);
    assert_eq!(events(&after.next_events()), [ev("PUT", "a", 6, "3", "-")]);

    // Refusals: a malformed first request is a 400; an empty range, a duplicate id and a
    // malformed later request are cancelled creates with the reason.
    let bad = RawWatch::open(&c.members[third].ip, &json!({"createRequest": {"key": "a", "bogus": 1}}));
    assert_eq!(bad.status, 400);
    let mut refusals = RawWatch::open(&c.members[third].ip, &json!({"createRequest": {"key": "b", "rangeEnd": "a"}}));
    let empty = refusals.next();
    assert_eq!(
        (empty["created"].clone(), empty["canceled"].clone(), empty["watchId"].clone(), empty["cancelReason"].clone()),
        (json!(true), json!(true), json!(-1), json!("mvcc: watcher range is empty")),
        "{empty}"
    );
    refusals.send(&json!({"createRequest": {"key": "a", "watchId": 7}}));
    assert_eq!(refusals.next()["watchId"], 7);
    refusals.send(&json!({"createRequest": {"key": "b", "watchId": 7}}));
    assert_eq!(refusals.next()["cancelReason"], "mvcc: duplicate watch ID provided on the WatchStream");
    refusals.send(&json!({"createRequest": {"key": "a"}, "cancelRequest": {"watchId": 7}}));
    let two = refusals.next();
    assert!(two["canceled"] == true && two["cancelReason"].as_str().is_some_and(|r| r.contains("exactly one")), "{two}");
    // The watch made before goes on.
    c.put_ok(leader, "a", "4");
    let line = refusals.next_events();
    assert_eq!((line["watchId"].clone(), events(&line)), (json!(7), vec![ev("PUT", "a", 8, "4", "-")]));

    // A member left without a leader: a stream that requires one ends (etcd's
    // WithRequireLeader), one that does not goes on serving what the member has.
    let mut c = c;
    let mut requiring = RawWatch::open_with(&c.members[third].ip, &json!({"createRequest": {"key": "a"}}), "x-kuberaft-require-leader: true\r\n");
    assert_eq!(requiring.next()["created"], true);
    c.kill(leader);
    c.kill(follower);
    let end = requiring.next_within(Duration::from_secs(15)).expect("the stream ends");
    assert_eq!(
        (end["watchId"].clone(), end["canceled"].clone(), end["cancelReason"].clone()),
        (json!(-1), json!(true), json!("etcdserver: no leader")),
        "{end}"
    );
    assert!(requiring.next_within(Duration::from_secs(2)).is_none(), "nothing after the end");
    after.send(&json!({"progressRequest": {}}));
    assert_eq!(events(&after.next_events()), [ev("PUT", "a", 8, "4", "-")]);
    let progress = after.next();
    assert_eq!((progress["watchId"].clone(), progress["header"]["revision"].clone()), (json!(-1), json!(8)), "the stream without the header goes on: {progress}");
}

/// `kuberaft watch` as a child whose output lines are collected by a thread; killed on drop.
struct CliWatch {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl CliWatch {
    fn start(args: &[String]) -> CliWatch {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kuberaft"))
            .arg("watch")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kuberaft watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        CliWatch { child, lines }
    }

    /// The revisions and keys of the events printed, until `count` of them arrived (each
    /// within `within`).
    fn events(&self, count: usize, within: Duration) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        while out.len() < count {
            let line = self.lines.recv_timeout(within).unwrap_or_else(|_| panic!("event {} of {count} within {within:?} (got {out:?})", out.len() + 1));
            let answer: Value = serde_json::from_str(&line).expect("a JSON line");
            for e in answer["events"].as_array().expect("events") {
                out.push((e["kv"]["modRevision"].as_i64().expect("revision"), e["kv"]["key"].as_str().expect("key").to_string()));
            }
        }
        out
    }
}

impl Drop for CliWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(c: &Cluster, i: usize, sig: i32) {
    let pid = c.members[i].child.as_ref().expect("running").id() as i32;
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "signal {sig} to {}", c.members[i].name);
}

/// `kuberaft watch` prints every write once, in order, while the member it streams from is
/// paused (it gives that stream up after `SILENCE_LIMIT` of silence) and while a member dies.
#[test]
fn kuberaft_watch_follows_the_cluster_through_a_paused_member_and_a_dead_one() {
    let (mut c, leader, first) = started(118);
    let other = 3 - leader - first;
    let endpoints = [first, other, leader].map(|i| c.members[i].client_url()).join(",");
    let watch = CliWatch::start(&["w-".to_string(), "--prefix".into(), "-w".into(), "json".into(), "--endpoints".into(), endpoints]);
    let mut written = Vec::new();
    // The first write is retried until the watch has printed it: then the stream is open.
    wait_for("the watch to start", Duration::from_secs(20), || {
        written.push((c.put_ok(leader, "w-0", "x") as i64, "w-0".to_string()));
        watch.lines.recv_timeout(Duration::from_millis(500)).ok()
    });
    let already = written.len() - 1;
    let mut put = |c: &Cluster, n: usize| {
        let key = format!("w-{n}");
        written.push((c.put_ok(leader, &key, "x") as i64, key));
    };
    for n in 1..=5 {
        put(&c, n);
    }
    signal(&c, first, libc::SIGSTOP);
    for n in 6..=10 {
        put(&c, n);
    }
    let during_pause = watch.events(10, kuberaft::client::SILENCE_LIMIT + Duration::from_secs(15));
    signal(&c, first, libc::SIGCONT);
    c.kill(other);
    for n in 11..=15 {
        put(&c, n);
    }
    let after_kill = watch.events(5, kuberaft::client::SILENCE_LIMIT + Duration::from_secs(15));
    let printed: Vec<(i64, String)> = during_pause.into_iter().chain(after_kill).collect();
    // Every write after the one that showed the watch was open, once, in order (the first
    // printed line was the last of the start-up writes).
    assert_eq!(printed, written[already + 1..].to_vec());
    assert!(printed.windows(2).all(|w| w[0].0 < w[1].0), "in revision order: {printed:?}");
}

/// A watcher that never reads while writes go on: the writes are not held back (they all
/// complete), the member's memory stays within a bound of its peers' (the watcher falls
/// behind the feed and holds no backlog), and once it reads it gets every revision, in
/// order, caught up from history. `SLOW_WATCH_WRITES` sets the number of writes (default
/// 20,000 of 4 KiB: five times the feed's byte bound).
#[test]
fn a_watcher_that_does_not_read_holds_no_backlog_and_catches_up_from_history() {
    let (c, leader, follower) = started(119);
    let writes: usize = std::env::var("SLOW_WATCH_WRITES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let mut slow = RawWatch::open(&c.members[follower].ip, &json!({"createRequest": {"key": "s-", "prefix": true}}));
    let created = slow.next();
    let start = created["header"]["revision"].as_i64().expect("revision") + 1;
    let value = "v".repeat(4096);
    let url = c.members[leader].client_url();
    let threads = 8;
    std::thread::scope(|s| {
        for t in 0..threads {
            let (http, url, value) = (&c.http, &url, &value);
            s.spawn(move || {
                for n in (t..writes).step_by(threads) {
                    let put = || http.put(format!("{url}/v1/kv/s-{n}")).body(value.clone()).send().ok().filter(|r| r.status().is_success());
                    // A put whose answer was lost may have applied: count revisions, not puts.
                    let _ = wait_for(&format!("put s-{n}"), Duration::from_secs(30), put);
                }
            });
        }
    });
    let rss: Vec<u64> = (0..3).map(|i| crate::flood::rss_kib(c.members[i].child.as_ref().expect("running").id())).collect();
    // Compared with the other follower, which does the same work without the watcher.
    let other = 3 - leader - follower;
    eprintln!("RSS after {writes} writes, a watcher that does not read on member {follower}: {rss:?} KiB");
    assert!(
        rss[follower] <= rss[other] + 48 * 1024,
        "the watched member holds a backlog: RSS {rss:?} KiB (watched {follower}, the other follower {other})"
    );
    let last = c.status(leader).and_then(|s| s["revision"].as_i64()).expect("revision");
    let mut next = start;
    while next <= last {
        let answer = slow.next_events();
        for e in answer["events"].as_array().expect("events") {
            let rev = e["kv"]["modRevision"].as_i64().expect("revision");
            assert_eq!(rev, next, "every revision once, in order");
            next += 1;
        }
    }
    assert!(next - start >= writes as i64, "{} events for {writes} writes", next - start);
    let metrics = c.http.get(format!("{}/metrics", c.members[follower].client_url())).send().and_then(|r| r.text()).expect("metrics");
    let catch_ups: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kuberaft_watch_slow_catch_ups_total "))
        .and_then(|v| v.parse().ok())
        .expect("the catch-up counter");
    assert!(catch_ups >= 1, "the watcher fell behind the feed and caught up from history: {metrics}");
}
