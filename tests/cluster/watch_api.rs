//! Watches (issue 14) against real 3-member clusters: `POST /v1/watch` as a full-duplex stream
//! (creates, filters, previous values, a txn's events in one response, progress, cancel,
//! compaction, refusals), resuming on another member with `last + 1`, a watcher that does not
//! read while writes go on, and `kuberaft watch` following the cluster through a member that
//! dies and one that is paused, and a member that stops ending the streams it serves. Blocks
//! 127.117-120.0.0/16, 127.122.0.0/16 and 127.163.0.0/16.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{wait_for, Cluster, OutputLines, CLIENT_PORT};
use crate::mvcc_api::{post, started};
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
        let mut w = RawWatch::connect(ip, "/v1/watch", "application/x-ndjson", headers);
        w.send(first);
        w.status = w.read_head();
        w
    }

    /// Opens `POST path` on `ip` as a stream and sends `first` as its first request.
    pub fn open_at(ip: &str, path: &str, first: &Value) -> RawWatch {
        let mut w = RawWatch::connect(ip, path, "application/x-ndjson", "");
        w.send(first);
        w.status = w.read_head();
        w
    }

    /// Ends the request body (the answer ends once the server has answered what came).
    pub fn end_body(&mut self) {
        self.stream.write_all(b"0\r\n\r\n").expect("end the body");
    }

    /// Opens a stream that sends `requests` and ends its body.
    pub fn open_all(ip: &str, path: &str, requests: &[Value]) -> RawWatch {
        let mut w = RawWatch::connect(ip, path, "application/json", "");
        for r in requests {
            w.send(r);
        }
        w.stream.write_all(b"0\r\n\r\n").expect("end the body");
        w.status = w.read_head();
        w
    }

    /// Connects and sends the head of a chunked POST to `path` (`headers`: `name: value\r\n` each).
    fn connect(ip: &str, path: &str, content_type: &str, headers: &str) -> RawWatch {
        let stream = TcpStream::connect((ip, CLIENT_PORT)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut w = RawWatch { stream, reader, body: Vec::new(), lines: VecDeque::new(), status: 0 };
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {ip}\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n{headers}\r\n"
        );
        w.stream.write_all(head.as_bytes()).expect("send head");
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

/// Every change, in revision order, with etcd's shapes: a txn's events in one answer in the
/// order of its writes, previous values, NOPUT, progress after the events it covers, cancel;
/// the same history read again on another member from `last + 1`; compacted starts cancelled
/// with the compact revision; refusals.
#[test]
fn a_watch_sees_every_change_in_order_and_resumes_on_another_member_from_the_next_revision() {
    let (c, leader, follower) = started(117);
    assert_eq!(c.put_ok(leader, "a", "1"), 2);
    assert_eq!(c.put_ok(leader, "b", "1"), 3);
    // A watch reports the revision of the member it is on: the follower's, once it applied 3.
    wait_for("the follower to apply 3", ELECTION, || (c.status(follower)?["revision"].as_i64()? >= 3).then_some(()));

    let mut w = RawWatch::open(
        &c.members[follower].ip,
        &json!({"createRequest": {"key": "", "prefix": true, "startRevision": 2, "prevKv": true}}),
    );
    assert_eq!(w.status, 200);
    let created = w.next();
    assert_eq!(
        (created["watchId"].clone(), created["created"].clone(), created["header"]["revision"].clone()),
        (json!(0), json!(true), json!(3)),
        "{created}"
    );
    assert!(
        created["header"]["memberId"].is_string() && created["header"]["raftTerm"].as_u64() >= Some(2),
        "{created}"
    );
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
    let (status, _) = post(
        &c,
        leader,
        "/v1/txn",
        &json!({"success": [
            {"requestPut": {"key": "c", "value": "1"}},
            {"requestDeleteRange": {"key": "b"}},
            {"requestPut": {"key": "a", "value": "2"}},
        ]}),
    );
    assert_eq!(status, 200);
    let txn = w.next_events();
    assert_eq!((txn["watchId"].clone(), txn["header"]["revision"].clone()), (json!(0), json!(4)), "{txn}");
    assert_eq!(events(&txn), [ev("PUT", "c", 4, "1", "-"), ev("DELETE", "b", 4, "", "1"), ev("PUT", "a", 4, "2", "1")]);
    assert_eq!(txn["events"][2]["kv"]["version"], 2);
    assert_eq!(
        txn["events"][1]["kv"],
        json!({"key": "b", "createRevision": 0, "modRevision": 4, "version": 0, "value": "", "lease": 0})
    );

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

    // NODELETE: puts only.
    let mut puts_only = RawWatch::open(
        &c.members[leader].ip,
        &json!({"createRequest": {"key": "a", "startRevision": 4, "filters": ["NODELETE"]}}),
    );
    assert_eq!(puts_only.next()["created"], true);
    assert_eq!(events(&puts_only.next_events()), [ev("PUT", "a", 4, "2", "-")]);
    assert_eq!(events(&puts_only.next_events()), [ev("PUT", "a", 6, "3", "-")], "the delete at 5 is left out");

    // Resume elsewhere from last seen + 1: exactly the same events, none before.
    let mut again = RawWatch::open(
        &c.members[leader].ip,
        &json!({"createRequest": {"key": "", "prefix": true, "startRevision": 4, "prevKv": true}}),
    );
    assert_eq!(again.next()["created"], true);
    let mut replay = Vec::new();
    while replay.len() < 5 {
        replay.extend(events(&again.next_events()));
    }
    assert_eq!(
        replay,
        [
            ev("PUT", "c", 4, "1", "-"),
            ev("DELETE", "b", 4, "", "1"),
            ev("PUT", "a", 4, "2", "1"),
            ev("DELETE", "a", 5, "", "2"),
            ev("PUT", "a", 6, "3", "-"),
        ]
    );
    assert_eq!(events(&again.next_events()), [ev("PUT", "ab", 7, "1", "-")]);

    // Compaction: a start at or below the compacted revision is cancelled with it.
    let (status, _) = post(&c, leader, "/v1/compact", &json!({"revision": 5}));
    assert_eq!(status, 200);
    let third = (leader + 2) % 3;
    wait_for("the compaction applied everywhere", ELECTION, || {
        (0..3)
            .all(|i| {
                let (status, answer) =
                    post(&c, i, "/v1/range", &json!({"key": "a", "revision": 4, "serializable": true}));
                status == 400 && answer["error"]["code"] == "compacted"
            })
            .then_some(())
    });
    for start in [3, 5] {
        let mut late =
            RawWatch::open(&c.members[third].ip, &json!({"createRequest": {"key": "a", "startRevision": start}}));
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
    assert!(
        two["canceled"] == true && two["cancelReason"].as_str().is_some_and(|r| r.contains("exactly one")),
        "{two}"
    );
    // The watch made before goes on.
    c.put_ok(leader, "a", "4");
    let line = refusals.next_events();
    assert_eq!((line["watchId"].clone(), events(&line)), (json!(7), vec![ev("PUT", "a", 8, "4", "-")]));

    // A member left without a leader: a stream that requires one ends (etcd's
    // WithRequireLeader), one that does not goes on serving what the member has.
    let mut c = c;
    let mut requiring = RawWatch::open_with(
        &c.members[third].ip,
        &json!({"createRequest": {"key": "a"}}),
        "x-kuberaft-require-leader: true\r\n",
    );
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
    assert_eq!(
        (progress["watchId"].clone(), progress["header"]["revision"].clone()),
        (json!(-1), json!(8)),
        "the stream without the header goes on: {progress}"
    );
}

/// `kuberaft watch` as a child whose output lines are collected by a thread; killed on drop.
struct CliWatch {
    out: OutputLines,
}

impl CliWatch {
    fn start(args: &[String]) -> CliWatch {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kuberaft"));
        command.arg("watch").args(args).stderr(Stdio::inherit());
        CliWatch { out: OutputLines::start(&mut command, "kuberaft watch") }
    }

    /// The revisions and keys of the events printed, until `count` of them arrived (each
    /// within `within`).
    fn events(&self, count: usize, within: Duration) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        while out.len() < count {
            let line = self
                .out
                .lines
                .recv_timeout(within)
                .unwrap_or_else(|_| panic!("event {} of {count} within {within:?} (got {out:?})", out.len() + 1));
            let answer: Value = serde_json::from_str(&line).expect("a JSON line");
            for e in answer["events"].as_array().expect("events") {
                out.push((
                    e["kv"]["modRevision"].as_i64().expect("revision"),
                    e["kv"]["key"].as_str().expect("key").to_string(),
                ));
            }
        }
        out
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
    let watch = CliWatch::start(&[
        "w-".to_string(),
        "--prefix".into(),
        "-w".into(),
        "json".into(),
        "--endpoints".into(),
        endpoints,
    ]);
    let mut written = Vec::new();
    // The first write is retried until the watch has printed it: then the stream is open.
    wait_for("the watch to start", Duration::from_secs(20), || {
        written.push((c.put_ok(leader, "w-0", "x") as i64, "w-0".to_string()));
        watch.out.lines.recv_timeout(Duration::from_millis(500)).ok()
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
    // `--rev` replays the history from that revision, here every write of the test.
    let endpoints = [first, leader].map(|i| c.members[i].client_url()).join(",");
    let from = written[0].0.to_string();
    let replay = CliWatch::start(&[
        "w-".to_string(),
        "--prefix".into(),
        "--rev".into(),
        from,
        "-w".into(),
        "json".into(),
        "--endpoints".into(),
        endpoints,
    ]);
    assert_eq!(replay.events(written.len(), Duration::from_secs(15)), written);
}

/// A watcher that never reads while writes go on: the writes are not held back (they all
/// complete), the watcher holds no backlog of them, and once it reads it gets every revision,
/// in order, caught up from history. `SLOW_WATCH_WRITES` sets the number of writes (default
/// 20,000 of 4 KiB: five times the feed's byte bound).
///
/// What shows there is no backlog is the catch-up counter: a watcher that queued its events
/// (an unbounded queue anywhere between it and the socket) would never fall behind the feed,
/// so it would never read from history. The member's memory is checked too, against what the
/// design lets one stream hold (the feed, and a full queue of the largest responses) above the
/// other follower, which does the same work without the watcher. Two followers' RSS differ by
/// up to 60 MiB from run to run on their own (allocator retention), so a tighter bound there
/// failed once in CI without any backlog.
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
                    let put = || {
                        http.put(format!("{url}/v1/kv/s-{n}"))
                            .body(value.clone())
                            .send()
                            .ok()
                            .filter(|r| r.status().is_success())
                    };
                    // A put whose answer was lost may have applied: count revisions, not puts.
                    let _ = wait_for(&format!("put s-{n}"), Duration::from_secs(30), put);
                }
            });
        }
    });
    let rss: Vec<u64> =
        (0..3).map(|i| kuberaft::bench::observe::rss_kib(c.members[i].child.as_ref().expect("running").id())).collect();
    // Compared with the other follower, which does the same work without the watcher.
    let other = 3 - leader - follower;
    eprintln!("RSS after {writes} writes, a watcher that does not read on member {follower}: {rss:?} KiB");
    let held_kib = (kuberaft::node::watch::FEED_BYTES
        + kuberaft::node::watch::STREAM_QUEUE * kuberaft::node::watch::RESPONSE_BYTES) as u64
        / 1024;
    assert!(
        rss[follower] <= rss[other] + held_kib,
        "the watched member holds more than its feed and one full queue ({held_kib} KiB): RSS {rss:?} KiB \
         (watched {follower}, the other follower {other})"
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
    let metrics = c
        .http
        .get(format!("{}/metrics", c.members[follower].client_url()))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    let catch_ups: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kuberaft_watch_slow_catch_ups_total "))
        .and_then(|v| v.parse().ok())
        .expect("the catch-up counter");
    assert!(catch_ups >= 1, "the watcher fell behind the feed and caught up from history: {metrics}");
}

// ----- side by side with a real etcd 3.4 -----

/// One event, the same way for both stores: type, key, value, create, mod, version, previous value.
type Norm = (String, String, String, i64, i64, i64, Option<String>);

/// A watch answer, the same way for both stores.
#[derive(Debug, PartialEq)]
struct Answer {
    watch_id: i64,
    revision: i64,
    created: bool,
    canceled: bool,
    compact_revision: i64,
    cancel_reason: String,
    events: Vec<Norm>,
}

/// kuberaft's HTTP API, or etcd's JSON gateway (base64 bytes, snake_case, numbers as strings,
/// defaults left out, each answer under `result`).
#[derive(Clone, Copy, PartialEq)]
enum Store {
    Kuberaft,
    Etcd,
}

pub(crate) fn b64(s: &str) -> String {
    kuberaft::base::base64::encode_base64(s.as_bytes())
}

pub(crate) fn unb64(v: &Value) -> String {
    String::from_utf8(kuberaft::base::base64::decode_base64(v.as_str().unwrap_or("")).expect("base64")).expect("UTF-8")
}

/// An int64 as either store writes it (number or string); absent is 0.
pub(crate) fn num(v: &Value) -> i64 {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or(0)
}

impl Store {
    fn post(self, http: &reqwest::blocking::Client, ip: &str, path: &str, body: &Value) -> Value {
        let path = match (self, path) {
            (Store::Kuberaft, p) => format!("/v1/{p}"),
            (Store::Etcd, "compact") => "/v3/kv/compaction".to_string(),
            (Store::Etcd, p) => format!("/v3/kv/{p}"),
        };
        let resp = http.post(format!("http://{ip}:{CLIENT_PORT}{path}")).json(body).send().expect("POST");
        assert!(resp.status().is_success(), "{path} {body}: {}", resp.status());
        resp.json().expect("JSON")
    }

    /// A txn of puts (`(k, Some(v))`) and deletes (`(k, None)`, with range end `end`).
    fn txn(self, http: &reqwest::blocking::Client, ip: &str, ops: &[(&str, Option<&str>, &str)]) -> i64 {
        let ops: Vec<Value> = ops
            .iter()
            .map(|(k, v, end)| match (self, v) {
                (Store::Kuberaft, Some(v)) => json!({"requestPut": {"key": k, "value": v}}),
                (Store::Etcd, Some(v)) => json!({"request_put": {"key": b64(k), "value": b64(v)}}),
                (Store::Kuberaft, None) if end.is_empty() => json!({"requestDeleteRange": {"key": k}}),
                (Store::Kuberaft, None) => json!({"requestDeleteRange": {"key": k, "rangeEndBase64": b64(end)}}),
                (Store::Etcd, None) => json!({"request_delete_range": {"key": b64(k), "range_end": b64(end)}}),
            })
            .collect();
        num(&self.post(http, ip, "txn", &json!({"success": ops}))["header"]["revision"])
    }

    fn put(self, http: &reqwest::blocking::Client, ip: &str, k: &str, v: &str) -> i64 {
        self.txn(http, ip, &[(k, Some(v), "")])
    }

    fn create(self, key: &str, end: &str, start: i64, prev_kv: bool, noput: bool) -> Value {
        match self {
            Store::Kuberaft => {
                let mut c = json!({"keyBase64": b64(key), "startRevision": start, "prevKv": prev_kv});
                if !end.is_empty() {
                    c["rangeEndBase64"] = json!(b64(end));
                }
                if noput {
                    c["filters"] = json!(["NOPUT"]);
                }
                json!({"createRequest": c})
            }
            Store::Etcd => {
                let mut c = json!({"key": b64(key), "start_revision": start, "prev_kv": prev_kv});
                if !end.is_empty() {
                    c["range_end"] = json!(b64(end));
                }
                if noput {
                    c["filters"] = json!(["NOPUT"]);
                }
                json!({"create_request": c})
            }
        }
    }

    fn watch_path(self) -> &'static str {
        match self {
            Store::Kuberaft => "/v1/watch",
            Store::Etcd => "/v3/watch",
        }
    }

    fn progress(self) -> Value {
        match self {
            Store::Kuberaft => json!({"progressRequest": {}}),
            Store::Etcd => json!({"progress_request": {}}),
        }
    }

    fn answer(self, line: Value) -> Answer {
        let r = if self == Store::Etcd { line["result"].clone() } else { line };
        let text = |kv: &Value, field: &str| match self {
            Store::Kuberaft => {
                kv[field].as_str().map(str::to_string).unwrap_or_else(|| unb64(&kv[format!("{field}Base64")]))
            }
            Store::Etcd => unb64(&kv[field]),
        };
        let field = |camel: &str, snake: &str| if self == Store::Etcd { r[snake].clone() } else { r[camel].clone() };
        let norm = |kv: &Value| {
            let g = |camel: &str, snake: &str| num(if self == Store::Etcd { &kv[snake] } else { &kv[camel] });
            (
                text(kv, "key"),
                text(kv, "value"),
                g("createRevision", "create_revision"),
                g("modRevision", "mod_revision"),
                g("version", "version"),
            )
        };
        let events = r["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .map(|e| {
                        let (key, value, create, m, version) = norm(&e["kv"]);
                        let kind = e["type"].as_str().unwrap_or("PUT").to_string();
                        let prev = if self == Store::Etcd { &e["prev_kv"] } else { &e["prevKv"] };
                        let prev = prev.is_object().then(|| norm(prev).1);
                        (kind, key, value, create, m, version, prev)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Answer {
            watch_id: num(&field("watchId", "watch_id")),
            revision: num(&r["header"]["revision"]),
            created: field("created", "created") == true,
            canceled: field("canceled", "canceled") == true,
            compact_revision: num(&field("compactRevision", "compact_revision")),
            cancel_reason: field("cancelReason", "cancel_reason").as_str().unwrap_or("").to_string(),
            events,
        }
    }
}

/// The same writes and watches on kuberaft and on a real etcd 3.4 (Debian's, which scripts/test
/// installs), through each one's HTTP API: the same answers, but for the two differences
/// docs/COMPATIBILITY.md lists (a key written twice in one txn gives one event; a watch from
/// exactly the compacted revision is cancelled).
#[test]
fn watches_answer_as_a_real_etcd_does_side_by_side() {
    if !crate::require::available(
        std::process::Command::new("etcd").arg("--version").output().is_ok(),
        "etcd 3.4 (`etcd`)",
    ) {
        return;
    }
    let mut c = Cluster::new(120, 1);
    c.bootstrap();
    c.wait_leader(ELECTION);
    let etcd_ip = "127.121.0.1";
    let _etcd = crate::harness::Etcd::start(etcd_ip, &[]);
    // etcd's gateway answers a watch only once the request body has ended, so each stream
    // sends all its requests at once here.
    let mut answers: Vec<Vec<Answer>> = Vec::new();
    for (store, ip) in [(Store::Kuberaft, c.members[0].ip.clone()), (Store::Etcd, etcd_ip.to_string())] {
        let http = &c.http;
        let mut got = Vec::new();
        assert_eq!(store.put(http, &ip, "a", "1"), 2);
        assert_eq!(store.put(http, &ip, "b", "1"), 3);
        // Two watches on one stream: everything from "a" on, from revision 2, with previous
        // values; [a, b) from now, deletes only.
        let mut w = RawWatch::open_all(
            &ip,
            store.watch_path(),
            &[store.create("a", "\0", 2, true, false), store.create("a", "b", 0, false, true)],
        );
        // etcd sends a catch-up of several revisions in one answer, kuberaft one answer per
        // revision: the events are compared, flattened.
        let mut first: Vec<Answer> = Vec::new();
        while first.iter().filter(|a| a.created).count() < 2 || first.iter().map(|a| a.events.len()).sum::<usize>() < 2
        {
            first.push(store.answer(w.next()));
        }
        let (created, history): (Vec<Answer>, Vec<Answer>) = first.into_iter().partition(|a| a.created);
        let mut created = created;
        created.sort_by_key(|a| a.watch_id);
        got.extend(created);
        let flat: Vec<Norm> = history.iter().flat_map(|a| a.events.clone()).collect();
        assert!(history.iter().all(|a| a.watch_id == 0));
        got.push(Answer {
            watch_id: 0,
            revision: 3,
            created: false,
            canceled: false,
            compact_revision: 0,
            cancel_reason: String::new(),
            events: flat,
        });
        // Three writes in one txn, in this order.
        assert_eq!(store.txn(http, &ip, &[("c", Some("1"), ""), ("b", None, ""), ("a", Some("2"), "")]), 4);
        got.push(store.answer(w.next()));
        assert_eq!(store.txn(http, &ip, &[("a", None, "")]), 5);
        let mut two = vec![store.answer(w.next()), store.answer(w.next())];
        two.sort_by_key(|a| a.watch_id);
        got.extend(two);
        assert_eq!(store.put(http, &ip, "a", "3"), 6);
        got.push(store.answer(w.next()));
        // The txn that writes one key twice (etcd lets a from-key delete and a put of a key in
        // it through): etcd reports both changes of `a`, kuberaft the last (COMPATIBILITY.md).
        assert_eq!(store.txn(http, &ip, &[("a", None, "\0"), ("a", Some("4"), "")]), 7);
        let mut twice = vec![store.answer(w.next())];
        if store == Store::Etcd {
            twice.push(store.answer(w.next()));
        }
        twice.sort_by_key(|a| a.watch_id);
        let kinds: Vec<(String, String)> = twice[0].events.iter().map(|e| (e.0.clone(), e.1.clone())).collect();
        match store {
            Store::Etcd => {
                assert_eq!(
                    kinds,
                    [("DELETE".into(), "a".into()), ("DELETE".into(), "c".into()), ("PUT".into(), "a".into())]
                );
                assert_eq!(
                    twice[1].events.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
                    ["DELETE"],
                    "the deletes-only watch"
                );
            }
            Store::Kuberaft => assert_eq!(kinds, [("PUT".to_string(), "a".to_string()), ("DELETE".into(), "c".into())]),
        }
        // Progress on a stream whose watch is caught up; an empty range.
        let mut p =
            RawWatch::open_all(&ip, store.watch_path(), &[store.create("zz", "", 0, false, false), store.progress()]);
        got.push(store.answer(p.next()));
        got.push(store.answer(p.next()));
        let mut e = RawWatch::open_all(&ip, store.watch_path(), &[store.create("b", "a", 0, false, false)]);
        got.push(store.answer(e.next()));
        // Compaction: a start below the compacted revision is cancelled with it.
        store.post(http, &ip, "compact", &json!({"revision": 5, "physical": true}));
        let mut late = RawWatch::open_all(&ip, store.watch_path(), &[store.create("a", "", 4, false, false)]);
        got.push(store.answer(late.next()));
        got.push(store.answer(late.next()));
        let mut at = RawWatch::open_all(&ip, store.watch_path(), &[store.create("a", "", 5, false, false)]);
        let created = store.answer(at.next());
        let then = at.next_within(Duration::from_secs(2)).map(|l| store.answer(l));
        match store {
            // etcd serves what compaction left of revision 5; kuberaft cancels (COMPATIBILITY.md).
            Store::Etcd => assert!(created.created && !then.as_ref().is_some_and(|t| t.canceled), "{then:?}"),
            Store::Kuberaft => assert!(
                created.created && then.as_ref().is_some_and(|t| t.canceled && t.compact_revision == 5),
                "{then:?}"
            ),
        }
        answers.push(got);
    }
    let (ours, etcds) = (&answers[0], &answers[1]);
    for (i, (a, b)) in ours.iter().zip(etcds).enumerate() {
        // etcd gives no reason for a compacted cancel; kuberaft names it.
        let a_cmp = Answer {
            cancel_reason: if b.compact_revision > 0 { String::new() } else { a.cancel_reason.clone() },
            events: a.events.clone(),
            ..*a
        };
        assert_eq!(a_cmp, *b, "answer {i}: kuberaft {a:?}, etcd {b:?}");
    }
    assert_eq!(ours.len(), etcds.len());
}

/// Progress notifications every interval (a member started with 300 ms), only when asked; a
/// bad interval refused at start. Large revisions: a txn of 100 values of 15 KiB reaches a watch with `fragment` in parts of at
/// most 1 MiB (all but the last marked `fragment`), and one without in one answer; a delete of
/// 300 such keys with previous values (4.5 MiB, more than the feed keeps of one revision) is read
/// from history, in parts, and `kuberaft watch` joins the parts into one line.
#[test]
fn large_revisions_come_in_fragments_and_the_client_joins_them() {
    let mut c = Cluster::new(122, 1);
    c.members[0].extra_args = vec!["--experimental-watch-progress-notify-interval".into(), "300ms".into()];
    c.bootstrap();
    c.wait_leader(ELECTION);
    let ip = c.members[0].ip.clone();
    // Periodic progress: a quiet watch that asked for it hears its revision every interval; one
    // that did not hears nothing.
    let current = c.status(0).and_then(|s| s["revision"].as_i64()).expect("revision");
    let mut notified = RawWatch::open(&ip, &json!({"createRequest": {"key": "quiet", "progressNotify": true}}));
    let mut silent = RawWatch::open(&ip, &json!({"createRequest": {"key": "quiet"}}));
    assert_eq!(notified.next()["created"], true);
    assert_eq!(silent.next()["created"], true);
    for _ in 0..2 {
        let progress = notified.next_within(Duration::from_secs(5)).expect("a progress notification");
        assert_eq!(
            (progress["watchId"].clone(), progress["header"]["revision"].clone(), progress.get("events").is_none()),
            (json!(0), json!(current), true),
            "{progress}"
        );
    }
    assert!(silent.next_within(Duration::from_secs(1)).is_none(), "no notification unasked");
    // A bad interval is refused at start, with the flag's name.
    let refused = Command::new(env!("CARGO_BIN_EXE_kuberaft"))
        .args(["node", "--name", "x", "--advertise-client-url", "http://127.122.0.9:2379"])
        .args(["--advertise-peer-url", "http://127.122.0.9:2380", "--initial-cluster", "x=http://127.122.0.9:2380"])
        .args(["--experimental-watch-progress-notify-interval", "soon"])
        .output()
        .expect("run kuberaft node");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--experimental-watch-progress-notify-interval 'soon'"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let value = "f".repeat(15 * 1024);
    let mut fragmented = RawWatch::open(
        &ip,
        &json!({"createRequest": {"key": "big-", "prefix": true, "fragment": true, "prevKv": true}}),
    );
    let mut whole = RawWatch::open(&ip, &json!({"createRequest": {"key": "big-", "prefix": true}}));
    assert_eq!(fragmented.next()["created"], true);
    assert_eq!(whole.next()["created"], true);
    let cli = CliWatch::start(&[
        "big-".to_string(),
        "--prefix".into(),
        "--prev-kv".into(),
        "-w".into(),
        "json".into(),
        "--endpoints".into(),
        c.members[0].client_url(),
    ]);
    std::thread::sleep(Duration::from_millis(500));
    for batch in 0..3 {
        let puts: Vec<Value> =
            (0..100).map(|i| json!({"requestPut": {"key": format!("big-{batch}-{i:03}"), "value": value}})).collect();
        let (status, answer) = post(&c, 0, "/v1/txn", &json!({"success": puts}));
        assert_eq!(status, 200, "{answer}");
    }
    let (status, answer) =
        post(&c, 0, "/v1/txn", &json!({"success": [{"requestDeleteRange": {"key": "big-", "prefix": true}}]}));
    assert_eq!(status, 200, "{answer}");
    // (events, fragment flags) of each revision as the raw streams saw them.
    let revision_parts = |w: &mut RawWatch| -> Vec<(usize, Vec<bool>)> {
        let mut out = Vec::new();
        let mut current = (0, Vec::new());
        while out.len() < 4 {
            let line = w.next_events();
            current.0 += line["events"].as_array().map_or(0, |e| e.len());
            let more = line["fragment"] == true;
            current.1.push(more);
            if !more {
                out.push(std::mem::take(&mut current));
            }
        }
        out
    };
    let parts = revision_parts(&mut fragmented);
    for (events, flags) in &parts[..3] {
        assert_eq!(*events, 100);
        assert_eq!(flags, &[true, false], "1.5 MiB of puts with previous values: two parts of at most 1 MiB");
    }
    assert_eq!(parts[3].0, 300);
    assert!(parts[3].1.len() >= 5, "4.5 MiB of previous values in parts of 1 MiB: {:?}", parts[3].1);
    assert!(parts[3].1[..parts[3].1.len() - 1].iter().all(|f| *f) && !parts[3].1[parts[3].1.len() - 1]);
    let unfragmented = revision_parts(&mut whole);
    assert_eq!(unfragmented, [(100, vec![false]), (100, vec![false]), (100, vec![false]), (300, vec![false])]);
    let joined: Vec<usize> = (0..4)
        .map(|_| {
            let line = cli.out.lines.recv_timeout(Duration::from_secs(10)).expect("a line from kuberaft watch");
            let answer: Value = serde_json::from_str(&line).expect("JSON");
            assert!(answer.get("fragment").is_none(), "joined: {}", &line[..200.min(line.len())]);
            answer["events"].as_array().map_or(0, |e| e.len())
        })
        .collect();
    assert_eq!(joined, [100, 100, 100, 300]);
    let metrics =
        c.http.get(format!("{}/metrics", c.members[0].client_url())).send().and_then(|r| r.text()).expect("metrics");
    let catch_ups: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kuberaft_watch_slow_catch_ups_total "))
        .and_then(|v| v.parse().ok())
        .expect("the catch-up counter");
    assert!(
        catch_ups >= 3,
        "the 4.5 MiB revision was not kept in the feed: each watcher read it from history ({catch_ups})"
    );
}

/// A member that stops ends the streams it serves at once, each saying why, instead of holding
/// its stop until their clients leave (etcd's members end them too; its clients then go on
/// through another member): a JSON watch's last line is the stream-ending response, reason
/// "etcdserver: server stopped"; a JSON keep-alive stream's last line the error of a 503; gRPC
/// watch and keep-alive streams end with Unavailable and that message. The streams are opened
/// on a follower (its keep-alives go on to the leader), which then gets SIGTERM.
#[test]
fn a_stopping_member_ends_its_watch_and_keep_alive_streams_saying_why() {
    use kuberaft::api::grpc::etcdserverpb::{self as pb, lease_client::LeaseClient, watch_client::WatchClient};
    use kuberaft::http::client::{h2_client, Dial};

    let mut c = Cluster::new(163, 3);
    c.bootstrap();
    let (leader, _) = c.wait_leader(ELECTION);
    let follower = (leader + 1) % 3;
    let ip = c.members[follower].ip.clone();
    c.put_ok(leader, "a", "1");
    let (status, granted) = post(&c, leader, "/v1/lease/grant", &json!({"TTL": 60}));
    assert_eq!(status, 200, "{granted}");
    let lease = granted["ID"].as_i64().expect("a lease id");

    // The JSON streams.
    let mut watch = RawWatch::open(&ip, &json!({"createRequest": {"key": "a"}}));
    assert_eq!((watch.status, watch.next()["created"].clone()), (200, json!(true)));
    let mut keep_alive = RawWatch::open_at(&ip, "/v1/lease/keepalive", &json!({"ID": lease}));
    assert_eq!(keep_alive.status, 200);
    assert_eq!(keep_alive.next()["ID"], lease);

    // The gRPC streams, their requests left open.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let h2 = h2_client::<tonic::body::Body>(Dial::leader(None));
    let origin: tonic::codegen::http::Uri = c.members[follower].client_url().parse().expect("a URI");
    let (watch_requests, requests) = futures::channel::mpsc::unbounded();
    let create = pb::WatchCreateRequest { key: b"a".to_vec(), ..Default::default() };
    watch_requests
        .unbounded_send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
        })
        .expect("send");
    let mut grpc_watch = runtime.block_on(async {
        let mut client = WatchClient::with_origin(h2.clone(), origin.clone());
        client.watch(requests).await.expect("watch").into_inner()
    });
    let created = runtime.block_on(grpc_watch.message()).expect("an answer").expect("one");
    assert!(created.created, "{created:?}");
    let (renewals, requests) = futures::channel::mpsc::unbounded();
    renewals.unbounded_send(pb::LeaseKeepAliveRequest { id: lease }).expect("send");
    let mut grpc_keep_alive = runtime.block_on(async {
        let mut client = LeaseClient::with_origin(h2.clone(), origin.clone());
        client.lease_keep_alive(requests).await.expect("keep-alive").into_inner()
    });
    let renewed = runtime.block_on(grpc_keep_alive.message()).expect("an answer").expect("one");
    assert_eq!((renewed.id, renewed.ttl), (lease, 60));

    signal(&c, follower, libc::SIGTERM);
    let end = watch.next_within(Duration::from_secs(10)).expect("the watch's last line");
    assert_eq!(
        (end["watchId"].clone(), end["canceled"].clone(), end["cancelReason"].clone()),
        (json!(-1), json!(true), json!("etcdserver: server stopped")),
        "{end}"
    );
    let end = keep_alive.next_within(Duration::from_secs(10)).expect("the keep-alive stream's last line");
    assert_eq!(end, json!({"error": {"code": "unavailable", "message": "etcdserver: server stopped"}}));
    for (what, ended) in [
        ("watch", runtime.block_on(grpc_watch.message()).map(|_| ())),
        ("keep-alive", runtime.block_on(grpc_keep_alive.message()).map(|_| ())),
    ] {
        let status = ended.expect_err(what);
        assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::Unavailable, "etcdserver: server stopped"),
            "{what}"
        );
    }
    let exit = c.wait_exit(follower, Duration::from_secs(10)).expect("the member exits");
    assert!(exit.success(), "{exit:?}");
    // The cluster goes on without it.
    let mut again = RawWatch::open(&c.members[leader].ip, &json!({"createRequest": {"key": "a"}}));
    assert_eq!(again.next()["created"], true);
    c.put_ok(leader, "a", "2");
    let line = again.next_events();
    assert_eq!(events(&line).last().map(|e| e.3.clone()), Some("2".to_string()), "{line}");
    drop((watch_requests, renewals));
}
