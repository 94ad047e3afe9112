//! The lease keep-alive stream, the lease metrics, and etcd's recipes as `kuberaft lock` and
//! `kuberaft elect` processes against a real 3-member cluster. Blocks 127.127-128.0.0/16.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{wait_for, Cluster};
use crate::mvcc_api::{post, started};
use crate::watch_api::RawWatch;
use crate::{metric, ELECTION};

/// A `kuberaft` client process in its own process group, killed with everything it started
/// (a lock's command) when dropped, also when the test fails.
struct Proc(Child);

impl Proc {
    fn kill_all(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn endpoints(c: &Cluster) -> String {
    c.members.iter().map(|m| m.client_url()).collect::<Vec<_>>().join(",")
}

fn kuberaft(c: &Cluster, args: &[&str]) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_kuberaft"))
        .process_group(0)
        .args(args)
        .env("KUBERAFT_ENDPOINTS", endpoints(c))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kuberaft");
    Proc(child)
}

/// The lines a process prints, read on a thread (so a test waits for one with a deadline).
fn lines(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (bounded) for a process to exit; its exit code.
fn exit_code(p: &mut Proc, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = p.0.try_wait() {
            return Some(status.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Keep-alive as etcd's stream: several requests on one request body through a follower, each
/// answered as it arrives (the next is sent only after the answer came); a lease that does not
/// exist answers TTL 0; the answer ends with the body. And the lease metrics: the lease count
/// on every member, renewals and expiries counted on the leader.
#[test]
fn keep_alive_streams_one_answer_per_request_and_the_metrics_count_leases() {
    let (c, leader, follower) = started(127);
    let (status, granted) = post(&c, leader, "/v1/lease/grant", &json!({"TTL": 30}));
    assert_eq!(status, 200, "{granted}");
    let id = granted["ID"].as_i64().expect("an id");
    let renewals_before = metric(&c, leader, "kuberaft_lease_renewals_total");
    let mut stream = RawWatch::open_at(&c.members[follower].ip, "/v1/lease/keepalive", &json!({"ID": id}));
    assert_eq!(stream.status, 200);
    for round in 0..3 {
        let answer = stream.next_within(Duration::from_secs(10)).expect("an answer to each keep-alive");
        assert_eq!((answer["ID"].as_i64(), answer["TTL"].as_i64()), (Some(id), Some(30)), "round {round}: {answer}");
        assert!(answer["header"]["revision"].as_i64().is_some(), "{answer}");
        stream.send(&json!({"ID": id}));
    }
    stream.next_within(Duration::from_secs(10)).expect("the fourth answer");
    stream.send(&json!({"ID": id + 1}));
    let missing = stream.next_within(Duration::from_secs(10)).expect("an answer for a missing lease");
    assert_eq!(missing["TTL"], 0, "{missing}");
    stream.end_body();
    assert!(stream.next_within(Duration::from_secs(10)).is_none(), "the answer ends with the request body");
    assert!(
        metric(&c, leader, "kuberaft_lease_renewals_total") >= renewals_before + 4,
        "the leader counted the renewals"
    );
    // A single request is answered as the other endpoints: a JSON object, or an error status.
    let (status, once) = post(&c, follower, "/v1/lease/keepalive", &json!({"ID": id}));
    assert_eq!((status, once["TTL"].as_i64()), (200, Some(30)), "{once}");
    let (status, bad) = post(&c, follower, "/v1/lease/keepalive", &json!({"lease": id}));
    assert_eq!(status, 400, "{bad}");
    // The count of leases on every member; an expiry counted by the leader.
    let expired_before = metric(&c, leader, "kuberaft_lease_expired_total");
    let (_, short) = post(&c, leader, "/v1/lease/grant", &json!({"TTL": 1}));
    assert_eq!(short["TTL"], 1, "{short}");
    for i in 0..3 {
        wait_for("every member counts two leases", ELECTION, || (metric(&c, i, "kuberaft_leases") == 2).then_some(()));
    }
    wait_for("the short lease expired", ELECTION, || {
        (metric(&c, leader, "kuberaft_lease_expired_total") > expired_before).then_some(())
    });
    for i in 0..3 {
        wait_for("every member counts one lease", ELECTION, || (metric(&c, i, "kuberaft_leases") == 1).then_some(()));
    }
}

/// Three `kuberaft lock NAME -- COMMAND` at once: the commands run one at a time (each writes
/// enter and leave lines to a shared file; they never interleave), each with ETCD_LOCK_KEY set,
/// and each process exits 0. A holder killed without releasing keeps the lock only until its
/// session's lease expires. `kuberaft elect` campaigns and prints the leader; `--listen`
/// follows it, and a new leader takes over when the first resigns (SIGTERM).
#[test]
fn kuberaft_lock_runs_commands_one_at_a_time_and_elect_follows_the_leader() {
    let (c, _, _) = started(128);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("held");
    let script = format!(
        "echo \"enter $ETCD_LOCK_KEY\" >> {log}; sleep 0.4; echo \"leave $ETCD_LOCK_KEY\" >> {log}",
        log = log.display()
    );
    let mut lockers: Vec<Proc> =
        (0..3).map(|_| kuberaft(&c, &["lock", "jobs", "--ttl", "5", "--", "sh", "-c", &script])).collect();
    for (i, p) in lockers.iter_mut().enumerate() {
        assert_eq!(exit_code(p, Duration::from_secs(60)), Some(0), "locker {i} exits with its command's code");
    }
    let text = std::fs::read_to_string(&log).expect("the commands wrote");
    let held: Vec<&str> = text.lines().collect();
    assert_eq!(held.len(), 6, "three commands ran: {held:?}");
    for pair in held.chunks(2) {
        let (enter, leave) = (pair[0], pair[1]);
        assert!(enter.starts_with("enter jobs/"), "{held:?}");
        assert_eq!(enter.replace("enter", "leave"), leave, "one command at a time: {held:?}");
    }

    // A holder dies without releasing: the next gets the lock once its 2 s lease expired.
    let mut dead = kuberaft(&c, &["lock", "dies", "--ttl", "2", "--", "sleep", "60"]);
    let first = lines(dead.0.stdout.take().expect("stdout"));
    let key = first.recv_timeout(Duration::from_secs(20)).expect("the first holder prints its key");
    assert!(key.starts_with("dies/"), "{key}");
    let mut next = kuberaft(&c, &["lock", "dies", "--ttl", "2"]);
    let waiting = lines(next.0.stdout.take().expect("stdout"));
    assert!(waiting.recv_timeout(Duration::from_secs(1)).is_err(), "held by the first: the second waits");
    dead.kill_all();
    let killed = Instant::now();
    let second = waiting.recv_timeout(Duration::from_secs(20)).expect("the second gets the lock");
    assert!(second.starts_with("dies/") && second != key, "{second}");
    assert!(killed.elapsed() >= Duration::from_millis(500), "not before the first's lease could expire");
    drop(next);

    // An election: the first campaigner leads; a listener prints it; a second waits, and
    // leads once the first resigns.
    let mut one = kuberaft(&c, &["elect", "boss", "one", "--ttl", "5"]);
    let one_out = lines(one.0.stdout.take().expect("stdout"));
    let one_key = one_out.recv_timeout(Duration::from_secs(20)).expect("the first leads");
    assert_eq!(one_out.recv_timeout(Duration::from_secs(5)).as_deref(), Ok("one"));
    let mut listen = kuberaft(&c, &["elect", "boss", "--listen"]);
    let heard = lines(listen.0.stdout.take().expect("stdout"));
    assert_eq!(heard.recv_timeout(Duration::from_secs(20)).as_deref(), Ok(one_key.as_str()));
    assert_eq!(heard.recv_timeout(Duration::from_secs(5)).as_deref(), Ok("one"));
    let mut two = kuberaft(&c, &["elect", "boss", "two", "--ttl", "5"]);
    let two_out = lines(two.0.stdout.take().expect("stdout"));
    assert!(two_out.recv_timeout(Duration::from_secs(1)).is_err(), "the second waits while the first leads");
    // SIGTERM: the first resigns (revokes its lease) and exits 0.
    let pid = one.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
    assert_eq!(exit_code(&mut one, Duration::from_secs(20)), Some(0));
    let two_key = two_out.recv_timeout(Duration::from_secs(20)).expect("the second leads once the first resigned");
    assert_eq!(two_out.recv_timeout(Duration::from_secs(5)).as_deref(), Ok("two"));
    assert_eq!(heard.recv_timeout(Duration::from_secs(20)).as_deref(), Ok(two_key.as_str()), "the listener follows");
    assert_eq!(heard.recv_timeout(Duration::from_secs(5)).as_deref(), Ok("two"));
    drop((two, listen));
}
