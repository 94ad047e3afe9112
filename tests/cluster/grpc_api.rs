//! etcd's v3 gRPC API (issue 15), driven by etcdctl 3.4 (Debian's `etcd-client`, which
//! scripts/test installs): the same commands against a 3-member kuberaft cluster, through each
//! member in turn, and against a real etcd 3.4, with the outputs compared once the member and
//! cluster ids, lease ids and the client's own log lines are taken out. Commands etcd cannot
//! run as one member (promoting a started learner, moving leadership) run on kuberaft alone,
//! with their outputs checked.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{wait_for, Cluster, Etcd, EtcdMembers, OutputLines};
use crate::ELECTION;
use crate::{metric, metric_at};

/// What one etcdctl run printed.
#[derive(Debug)]
pub struct Ctl {
    pub ok: bool,
    pub out: String,
    /// Standard error without the client's own JSON log lines (their time stamps and client
    /// ids differ from run to run).
    pub err: String,
}

pub fn etcdctl_available() -> bool {
    crate::require::available(
        Command::new("etcdctl").arg("version").env("ETCDCTL_API", "3").output().is_ok_and(|o| o.status.success()),
        "etcdctl 3.4 (`etcdctl`, Debian's etcd-client)",
    )
}

/// Runs `etcdctl --endpoints <endpoints> <args>` with `input` on its standard input; it is
/// killed after `limit` (a watch runs until then).
pub fn ctl(endpoints: &str, args: &[&str], input: &str, limit: Duration) -> Ctl {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--command-timeout", "10s", "--dial-timeout", "3s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start etcdctl");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let pipe = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = p {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = pipe(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = pipe(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for etcdctl") {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = err.join().unwrap_or_default();
    let err = err.lines().filter(|l| !l.starts_with("{\"level\"")).collect::<Vec<_>>().join("\n");
    Ctl { ok: status.is_some_and(|s| s.success()), out: out.join().unwrap_or_default(), err }
}

/// A JSON answer with the member-specific parts of its headers taken out (cluster and member
/// ids, the term), at any depth.
fn without_ids(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for name in ["cluster_id", "member_id", "raft_term", "ClusterID", "MemberID", "RaftTerm"] {
                    map.remove(name);
                }
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// etcdctl's output with each JSON line's ids taken out, and `replace` applied.
fn normalized(text: &str, replace: &[(String, &str)]) -> String {
    let mut out = Vec::new();
    for line in text.lines() {
        // `-w fields` prints the header's ids one per line.
        if ["\"ClusterID\"", "\"MemberID\"", "\"RaftTerm\""].iter().any(|f| line.starts_with(f)) {
            continue;
        }
        let mut line = match serde_json::from_str::<Value>(line) {
            Ok(v @ Value::Object(_)) => without_ids(v).to_string(),
            _ => line.to_string(),
        };
        for (from, to) in replace {
            if !from.is_empty() {
                line = line.replace(from.as_str(), to);
            }
        }
        out.push(line);
    }
    out.join("\n")
}

/// The lease id etcdctl printed in "lease <hex> granted with TTL(...)".
pub fn granted_lease(out: &str) -> String {
    out.split_whitespace().nth(1).unwrap_or_default().to_string()
}

/// "remaining(NNs)" varies with timing: made "remaining(*)" when NN is within 2 s of `ttl`.
fn remaining_normalized(text: &str, ttl: i64) -> String {
    let Some(at) = text.find("remaining(") else { return text.to_string() };
    let rest = &text[at + "remaining(".len()..];
    let Some(end) = rest.find("s)") else { return text.to_string() };
    match rest[..end].parse::<i64>() {
        Ok(n) if (ttl - 2..=ttl).contains(&n) => format!("{}remaining(*){}", &text[..at], &rest[end + 2..]),
        _ => text.to_string(),
    }
}

/// The same etcdctl command on kuberaft (through `ours`) and on etcd: both outputs, normalized.
pub struct Pair<'a> {
    pub ours: &'a str,
    pub etcd: &'a str,
}

impl Pair<'_> {
    pub fn both(&self, args: &[&str], input: &str, limit: Duration) -> (Ctl, Ctl) {
        (ctl(self.ours, args, input, limit), ctl(self.etcd, args, input, limit))
    }

    /// Runs `args` on both and checks that they print the same and both succeed or both fail;
    /// returns kuberaft's output.
    pub fn same(&self, args: &[&str], input: &str) -> String {
        let limit = if args.first() == Some(&"watch") { Duration::from_secs(3) } else { Duration::from_secs(20) };
        let (ours, etcd) = self.both(args, input, limit);
        let (o, e) = (normalized(&ours.out, &[]), normalized(&etcd.out, &[]));
        assert_eq!(o, e, "etcdctl {args:?} prints the same on kuberaft ({}) as on etcd ({})", self.ours, self.etcd);
        assert_eq!(
            normalized(&ours.err, &[]),
            normalized(&etcd.err, &[]),
            "etcdctl {args:?} reports the same error on kuberaft as on etcd"
        );
        if args.first() != Some(&"watch") {
            assert_eq!(ours.ok, etcd.ok, "etcdctl {args:?}: kuberaft {ours:?}, etcd {etcd:?}");
        }
        o
    }
}

/// Issue 15, must-show 1, with etcd side by side: key-value, txn, watch, lease, compaction and
/// the errors, the same through each of the three members (`host:port` and `http://host:port`
/// forms alternating) as on a real etcd 3.4.
#[test]
fn etcdctl_prints_what_etcd_prints_through_every_member() {
    if !etcdctl_available()
        || !crate::require::available(Command::new("etcd").arg("--version").output().is_ok(), "etcd 3.4 (`etcd`)")
    {
        return;
    }
    let mut c = Cluster::new(129, 3);
    c.bootstrap();
    c.wait_leader(ELECTION);
    let etcd_ip = "127.130.0.1";
    let _etcd = Etcd::start(etcd_ip, &["--election-timeout", "1000", "--heartbeat-interval", "100"]);
    for round in 0..3 {
        // The forms etcdctl is given an endpoint in: with and without the scheme.
        let (ours, etcd) = if round % 2 == 0 {
            (format!("{}:2379", c.members[round].ip), format!("{etcd_ip}:2379"))
        } else {
            (c.members[round].client_url(), format!("http://{etcd_ip}:2379"))
        };
        let pair = Pair { ours: &ours, etcd: &etcd };
        let p = |k: &str| format!("r{round}/{k}");
        for k in ["ka", "kb", "kc", "kd"] {
            pair.same(&["put", &p(k), &format!("v-{k}")], "");
        }
        let put = pair.same(&["put", &p("ke"), "v-ke", "-w", "json"], "");
        let revision = serde_json::from_str::<Value>(&put).expect("put -w json")["header"]["revision"]
            .as_i64()
            .expect("a revision");
        let prefix = p("k");
        let before_last = (revision - 1).to_string();
        for args in [
            vec!["get", "--prefix", &prefix],
            vec!["get", "--from-key", &p("kc")],
            vec!["get", "--prefix", &prefix, &format!("--rev={before_last}")],
            vec!["get", "--prefix", &prefix, "--limit", "2"],
            vec!["get", "--prefix", &prefix, "--keys-only"],
            vec!["get", "--prefix", &prefix, "--order", "DESCEND", "--sort-by", "MODIFY"],
            vec!["get", "--prefix", &prefix, "--order", "ASCEND", "--sort-by", "VALUE"],
            vec!["get", "--prefix", &prefix, "--consistency=s", "--print-value-only"],
            vec!["get", "--prefix", &prefix, "-w", "json"],
            vec!["get", &p("ka"), &p("kc"), "-w", "fields"],
            vec!["get", &p("none")],
        ] {
            pair.same(&args, "");
        }
        pair.same(&["del", &p("ka"), "--prev-kv"], "");
        pair.same(&["del", "--prefix", &p("kb"), "--prev-kv", "-w", "json"], "");
        // A txn in interactive mode: compares, then the success and the failure requests.
        let txn =
            format!("mod(\"{}\") > \"0\"\n\nput {} t1\nget {}\n\nput {} t2\n\n", p("kc"), p("kc"), p("kd"), p("kx"));
        pair.same(&["txn", "-i"], &txn);
        pair.same(&["txn", "-i", "-w", "json"], &txn.replace("> \"0\"", "= \"1\""));
        // Watch from a past revision, over a prefix, with previous values (ended after 3 s).
        pair.same(&["watch", &format!("--rev={before_last}"), "--prefix", &p(""), "--prev-kv"], "");
        // Leases: grant, attach, keep alive once, time to live with keys, revoke.
        let (ours_grant, etcd_grant) = pair.both(&["lease", "grant", "100"], "", Duration::from_secs(20));
        assert!(ours_grant.ok && etcd_grant.ok, "{ours_grant:?} {etcd_grant:?}");
        let (lo, le) = (granted_lease(&ours_grant.out), granted_lease(&etcd_grant.out));
        let (ours_ids, etcd_ids) = ([(lo.clone(), "<lease>")], [(le.clone(), "<lease>")]);
        assert_eq!(normalized(&ours_grant.out, &ours_ids), normalized(&etcd_grant.out, &etcd_ids));
        let o = ctl(&ours, &["put", &p("leased"), "x", &format!("--lease={lo}")], "", Duration::from_secs(20));
        let e = ctl(&etcd, &["put", &p("leased"), "x", &format!("--lease={le}")], "", Duration::from_secs(20));
        assert!(o.ok && e.ok, "{o:?} {e:?}");
        for (args_ours, args_etcd) in [
            (vec!["lease", "keep-alive", "--once", &lo], vec!["lease", "keep-alive", "--once", &le]),
            (vec!["lease", "timetolive", &lo, "--keys"], vec!["lease", "timetolive", &le, "--keys"]),
            (vec!["get", &p("leased"), "-w", "json"], vec!["get", &p("leased"), "-w", "json"]),
            (vec!["lease", "revoke", &lo], vec!["lease", "revoke", &le]),
            (vec!["get", &p("leased")], vec!["get", &p("leased")]),
            (vec!["lease", "timetolive", &lo], vec!["lease", "timetolive", &le]),
            (vec!["lease", "revoke", &lo], vec!["lease", "revoke", &le]),
        ] {
            let (o, e) = (
                ctl(&ours, &args_ours, "", Duration::from_secs(20)),
                ctl(&etcd, &args_etcd, "", Duration::from_secs(20)),
            );
            let (o_out, e_out) = (normalized(&o.out, &ours_ids), normalized(&e.out, &etcd_ids));
            // The lease id is in the value's JSON as a number: compare with it taken out too.
            let (o_out, e_out) = (
                remaining_normalized(
                    &o_out.replace(&i64::from_str_radix(&lo, 16).unwrap_or(0).to_string(), "<id>"),
                    100,
                ),
                remaining_normalized(
                    &e_out.replace(&i64::from_str_radix(&le, 16).unwrap_or(0).to_string(), "<id>"),
                    100,
                ),
            );
            assert_eq!(o_out, e_out, "etcdctl {args_ours:?}");
            assert_eq!(normalized(&o.err, &ours_ids), normalized(&e.err, &etcd_ids), "etcdctl {args_ours:?}");
            assert_eq!(o.ok, e.ok, "etcdctl {args_ours:?}: {o:?} {e:?}");
        }
        // Errors, with etcd's messages: a future revision, an empty key, a bad lease.
        pair.same(&["get", &p("ka"), "--rev=100000"], "");
        pair.same(&["put", "", "v"], "");
        pair.same(&["put", &p("k"), "v", "--lease=1234"], "");
        pair.same(&["lease", "keep-alive", "--once", "1234"], "");
        // Compaction, and reads below it.
        pair.same(&["compaction", &before_last], "");
        pair.same(&["compaction", &before_last], "");
        pair.same(&["get", &p("kc"), &format!("--rev={}", revision - 2)], "");
        pair.same(&["watch", &format!("--rev={}", revision - 2), &p("kc")], "");
    }
}

/// The ids and JSON of `etcdctl endpoint status -w json` through `endpoints`.
fn endpoint_status(endpoints: &str, cluster: bool) -> Vec<Value> {
    let mut args = vec!["endpoint", "status", "-w", "json"];
    if cluster {
        args.push("--cluster");
    }
    let got = ctl(endpoints, &args, "", Duration::from_secs(20));
    assert!(got.ok, "endpoint status: {got:?}");
    serde_json::from_str::<Vec<Value>>(&got.out).unwrap_or_else(|e| panic!("{e}: {}", got.out))
}

/// Issue 15, must-show 1, the commands a one-member etcd cannot show: membership (add a learner,
/// start it, promote it, update its peer URL, remove it), endpoint status and health with
/// `--cluster`, move-leader, defrag, alarm list, snapshot save, lock and elect, on a 3-member
/// kuberaft cluster through each member and both endpoint forms.
#[test]
fn etcdctl_runs_the_cluster_and_maintenance_commands() {
    if !etcdctl_available() {
        return;
    }
    let mut c = Cluster::new(131, 3);
    c.bootstrap();
    let (leader, _) = c.wait_leader(ELECTION);
    let all: Vec<String> = c.members.iter().map(|m| format!("{}:2379", m.ip)).collect();
    let all = all.join(",");
    let ids: Vec<u64> =
        (0..3).map(|i| u64::from_str_radix(&c.member_id(i).expect("a member id"), 16).expect("hex id")).collect();

    // Each member lists every member's client URL once the leader has recorded what the
    // members say of themselves (as etcd's members publish theirs when they start).
    for i in 0..3 {
        wait_for("every member lists every client URL", ELECTION, || {
            let listed =
                ctl(&c.members[i].client_url(), &["member", "list", "-w", "json"], "", Duration::from_secs(20));
            let members: Value = serde_json::from_str(&listed.out).ok()?;
            let members = members["members"].as_array()?.clone();
            let urls: Vec<String> =
                members.iter().filter_map(|m| m["clientURLs"][0].as_str().map(String::from)).collect();
            let names: Vec<&str> = members.iter().filter_map(|m| m["name"].as_str()).collect();
            (urls.len() == 3 && names.len() == 3).then_some(())
        });
    }
    // Endpoint status, through each form and with --cluster: three members, one leader, the
    // API version, the same raft term, no errors.
    for endpoints in [all.clone(), c.members[1].client_url()] {
        for statuses in [endpoint_status(&endpoints, true), endpoint_status(&all, false)] {
            assert_eq!(statuses.len(), 3, "{statuses:?}");
            let leaders: Vec<u64> = statuses.iter().map(|s| s["Status"]["leader"].as_u64().unwrap_or(0)).collect();
            assert!(leaders.iter().all(|l| *l == ids[leader]), "{statuses:?}");
            for s in &statuses {
                assert_eq!(s["Status"]["version"], "3.4.0", "{s}");
                assert!(s["Status"]["dbSize"].as_i64().unwrap_or(0) > 0, "{s}");
                assert!(s["Status"].get("errors").is_none(), "{s}");
            }
        }
    }
    let health = ctl(&c.members[2].client_url(), &["endpoint", "health", "--cluster"], "", Duration::from_secs(20));
    assert!(health.ok, "{health:?}");
    assert_eq!(health.err.matches("is healthy: successfully committed proposal").count(), 3, "{health:?}");

    // Membership: a learner added through a follower, started, promoted, moved, removed.
    let follower = (leader + 1) % 3;
    let slot = c.add_member_slot(3);
    let peer = c.members[slot].peer_url();
    let added = ctl(
        &c.members[follower].client_url(),
        &["member", "add", "etcd-3", &format!("--peer-urls={peer}"), "--learner"],
        "",
        Duration::from_secs(20),
    );
    assert!(added.ok, "{added:?}");
    assert!(
        added.out.contains("added to cluster") && added.out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{added:?}"
    );
    let listed = ctl(&all, &["member", "list", "-w", "json"], "", Duration::from_secs(20));
    let members: Value = serde_json::from_str(&listed.out).expect("member list -w json");
    let learner = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["peerURLs"][0] == peer.as_str())
        .unwrap_or_else(|| panic!("the learner is listed: {members}"))
        .clone();
    assert_eq!(learner["isLearner"], true, "{learner}");
    let learner_id = learner["ID"].as_u64().expect("an ID");
    let hex = format!("{learner_id:x}");
    // Promoting a learner that has not started: etcd's refusal.
    let early = ctl(&all, &["member", "promote", &hex], "", Duration::from_secs(20));
    assert!(
        !early.ok && early.err.contains("can only promote a learner member which is in sync with leader"),
        "{early:?}"
    );
    let initial = format!("{},etcd-3={peer}", c.initial_cluster(&[0, 1, 2]));
    c.start(slot, &initial, "existing");
    wait_for("the learner is promoted", ELECTION, || {
        let promoted =
            ctl(&c.members[follower].client_url(), &["member", "promote", &hex], "", Duration::from_secs(20));
        promoted.out.contains("promoted in cluster").then_some(())
    });
    let listed = ctl(&all, &["member", "list"], "", Duration::from_secs(20));
    assert!(listed.out.lines().any(|l| l.starts_with(&hex) && l.ends_with("false")), "a voter now: {listed:?}");
    // Its peer URL recorded anew (the same address with a trailing path-free form), then back.
    let updated = ctl(&all, &["member", "update", &hex, &format!("--peer-urls={peer}")], "", Duration::from_secs(20));
    assert!(updated.ok && updated.out.contains("updated in cluster"), "{updated:?}");
    let missing = ctl(&all, &["member", "update", "1234", &format!("--peer-urls={peer}")], "", Duration::from_secs(20));
    assert!(!missing.ok && missing.err.contains("etcdserver: member not found"), "{missing:?}");
    let removed = ctl(&c.members[2].client_url(), &["member", "remove", &hex], "", Duration::from_secs(20));
    assert!(removed.ok && removed.out.contains("removed from cluster"), "{removed:?}");
    let listed = ctl(&all, &["member", "list"], "", Duration::from_secs(20));
    assert_eq!(listed.out.lines().count(), 3, "{listed:?}");
    c.kill(slot);

    // move-leader: refused by a follower with etcd's message, done by the leader.
    let (leader, _) = c.wait_leader(ELECTION);
    let target = (leader + 1) % 3;
    let to = format!("{:x}", ids[target]);
    let refused = ctl(&c.members[target].client_url(), &["move-leader", &to], "", Duration::from_secs(20));
    assert!(!refused.ok, "{refused:?}");
    let moved = ctl(&all, &["move-leader", &to], "", Duration::from_secs(20));
    assert!(
        moved.ok && moved.out.contains(&format!("Leadership transferred from {:x} to {to}", ids[leader])),
        "{moved:?}"
    );
    wait_for("the target leads", ELECTION, || (c.wait_leader(ELECTION).0 == target).then_some(()));

    // Compaction and defragment: deleted values' space is given back to the file system.
    let big = "x".repeat(64 << 10);
    for i in 0..64 {
        let put = ctl(&all, &["put", &format!("big/{i:03}"), &big], "", Duration::from_secs(20));
        assert!(put.ok, "{put:?}");
    }
    let deleted = ctl(&all, &["del", "--prefix", "big/", "-w", "json"], "", Duration::from_secs(20));
    let revision = serde_json::from_str::<Value>(&deleted.out).expect("del -w json")["header"]["revision"]
        .as_i64()
        .expect("a revision");
    let compacted = ctl(&all, &["compaction", "--physical", &revision.to_string()], "", Duration::from_secs(60));
    assert!(compacted.ok && compacted.out.contains(&format!("compacted revision {revision}")), "{compacted:?}");
    let sizes = || -> Vec<i64> {
        endpoint_status(&all, false).iter().map(|s| s["Status"]["dbSize"].as_i64().unwrap_or(0)).collect()
    };
    let before = sizes();
    let defrag = ctl(&all, &["defrag"], "", Duration::from_secs(60));
    assert!(defrag.ok && defrag.out.matches("Finished defragmenting etcd member").count() == 3, "{defrag:?}");
    let after = sizes();
    for (b, a) in before.iter().zip(&after) {
        assert!(a < b, "defragment shrinks each member's file: before {before:?}, after {after:?}");
    }
    // The members still agree on the history, as HashKV shows.
    for i in 0..3 {
        assert!(ctl(&all, &["put", &format!("after/{i}"), "v"], "", Duration::from_secs(20)).ok);
    }
    // (A follower may apply the last put a moment after the leader.)
    wait_for("the three members' HashKV agree", ELECTION, || {
        let hashes = ctl(&all, &["endpoint", "hashkv", "-w", "json"], "", Duration::from_secs(20));
        let hashes: Vec<Value> = serde_json::from_str(&hashes.out).expect("endpoint hashkv -w json");
        let values: Vec<u64> = hashes.iter().map(|h| h["HashKV"]["hash"].as_u64().unwrap_or(0)).collect();
        (values.len() == 3 && values.iter().all(|h| *h == values[0] && *h != 0)).then_some(())
    });

    // No alarm on a healthy cluster (NOSPACE: the disk-full tests).
    let alarms = ctl(&all, &["alarm", "list"], "", Duration::from_secs(20));
    assert!(alarms.ok && alarms.out.trim().is_empty(), "{alarms:?}");

    // snapshot save: the member's state, framed as etcdctl checks (512-byte multiple + SHA-256).
    let file = c.dir.path().join("snapshot.db");
    let saved = ctl(
        &c.members[follower].client_url(),
        &["snapshot", "save", file.to_str().expect("a path")],
        "",
        Duration::from_secs(60),
    );
    assert!(saved.ok && saved.out.contains("Snapshot saved at"), "{saved:?}");
    let bytes = std::fs::read(&file).expect("the snapshot file");
    assert_eq!(bytes.len() % 512, 32, "etcd's framing");
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    use sha2::Digest;
    assert_eq!(sha2::Sha256::digest(body).as_slice(), sum, "the SHA-256 of the body ends the file");
    assert!(body.starts_with(b"KRMVCC\x00\x01"), "kuberaft's MVCC snapshot format");

    // lock: the command runs while the lock is held; a second holder waits for it.
    let locked = ctl(&c.members[0].client_url(), &["lock", "grpc-lock", "echo", "held"], "", Duration::from_secs(20));
    assert!(locked.ok && locked.out.trim() == "held", "{locked:?}");
    let first = ctl(&all, &["lock", "grpc-lock"], "", Duration::from_secs(3));
    assert!(first.out.starts_with("grpc-lock/"), "the lock's key is printed once held: {first:?}");
    // elect: a campaigner leads with its proposal; an observer sees it.
    let campaign = std::thread::spawn({
        let endpoint = c.members[1].client_url();
        move || ctl(&endpoint, &["elect", "grpc-election", "p1"], "", Duration::from_secs(6))
    });
    std::thread::sleep(Duration::from_secs(2));
    let observed = ctl(&c.members[2].client_url(), &["elect", "--listen", "grpc-election"], "", Duration::from_secs(3));
    let lines: Vec<&str> = observed.out.lines().collect();
    assert!(lines.len() >= 2 && lines[0].starts_with("grpc-election/") && lines[1] == "p1", "{observed:?}");
    let campaigned = campaign.join().expect("the campaign");
    assert!(campaigned.out.starts_with("grpc-election/") && campaigned.out.contains("p1"), "{campaigned:?}");
}

/// Kills its process when dropped, also when the test fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 15, build item 5: `kuberaft node` started as a script starts etcd, with etcd's flag
/// names and `ETCD_*` variables, serves etcdctl; an etcd flag it does not support is refused by
/// name (exit 2), not ignored.
#[test]
fn node_starts_with_etcds_flags_and_environment() {
    if !etcdctl_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ip = "127.132.0.1";
    let (client, peer) = (format!("http://{ip}:2379"), format!("http://{ip}:2380"));
    let start = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kuberaft"));
        command
            .args(["node", "--name", "e0", "--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--election-timeout", "500", "--heartbeat-interval", "50"])
            .args(["--logger", "zap"])
            .args(extra)
            .env("ETCD_DATA_DIR", dir.path().join("e0"))
            .env("ETCD_INITIAL_ADVERTISE_PEER_URLS", &peer)
            .env("ETCD_INITIAL_CLUSTER", format!("e0={peer}"))
            .env("ETCD_INITIAL_CLUSTER_STATE", "new")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    };
    let refused = start(&["--quota-backend-bytes", "8589934592"]).output().expect("run kuberaft node");
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("etcd's --quota-backend-bytes is not supported by kuberaft"),
        "{refused:?}"
    );
    let _node = Killed(start(&[]).stderr(Stdio::null()).spawn().expect("start kuberaft node"));
    wait_for("the member serves etcdctl", ELECTION, || {
        ctl(&client, &["put", "started", "like-etcd"], "", Duration::from_secs(5)).ok.then_some(())
    });
    let got = ctl(&client, &["get", "started", "--print-value-only"], "", Duration::from_secs(10));
    assert_eq!(got.out.trim(), "like-etcd", "{got:?}");
    let status = endpoint_status(&client, false);
    assert_eq!(status[0]["Endpoint"], client.as_str(), "{status:?}");
}

/// A follower serves writes and linearizable reads as etcd's followers do (`node::forward`):
/// it proposes small writes through the leader, batched when clients write at once, and reads
/// at the leader's read index from its own state, and renews lease keep-alives through the
/// leader one by one, as etcd's followers do. A client that reads back through the member
/// it wrote through, serializably too, sees its write; the answers carry the follower's
/// header. A write whose answer holds key-values (a txn with a range) and an older leader's
/// followers go the old way: the whole call forwarded.
#[test]
fn followers_propose_through_the_leader_and_read_at_its_read_index() {
    use kuberaft::api::grpc::etcdserverpb::{self as pb, kv_client::KvClient, lease_client::LeaseClient};
    use kuberaft::http::client::{h2_client, Dial};

    let mut c = Cluster::new(137, 3);
    c.bootstrap();
    let (leader, _) = c.wait_leader(ELECTION);
    let follower = (leader + 1) % 3;
    let follower_id = u64::from_str_radix(&c.member_id(follower).expect("a member id"), 16).expect("hex id");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let h2 = h2_client::<tonic::body::Body>(Dial::leader(None));
    let client = |i: usize| {
        let origin = c.members[i].client_url().parse().expect("a URI");
        KvClient::with_origin(h2.clone(), origin)
    };
    let key = |k: &str| k.as_bytes().to_vec();
    let get = |client: &mut KvClient<_>, k: &str, serializable: bool| {
        let request = pb::RangeRequest { key: key(k), serializable, ..Default::default() };
        let answer = runtime.block_on(client.range(request)).expect("range").into_inner();
        let value = answer.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).to_string());
        (value, answer.header.map_or(0, |h| h.member_id))
    };
    let mut via_follower = client(follower);
    let mut via_leader = client(leader);

    // Read your writes through the follower, one write at a time.
    for i in 0..40 {
        let put =
            pb::PutRequest { key: key(&format!("k{i}")), value: format!("v{i}").into_bytes(), ..Default::default() };
        let answer = runtime.block_on(via_follower.put(put)).expect("put").into_inner();
        assert_eq!(answer.header.as_ref().map(|h| h.member_id), Some(follower_id), "the follower answers");
        assert_eq!(get(&mut via_follower, &format!("k{i}"), true), (Some(format!("v{i}")), follower_id));
    }
    let proposed = metric(&c, follower, "kuberaft_forwarded_proposals_total");
    assert!(proposed >= 40, "the follower proposed its writes through the leader ({proposed})");

    // Many clients at once share requests to the leader.
    let batches_before = metric(&c, follower, "kuberaft_forwarded_proposal_batches_total");
    let streamed_before = metric(&c, follower, "kuberaft_streamed_proposal_batches_total");
    let writers: Vec<_> = (0..64)
        .map(|w| {
            let mut kv = client(follower);
            runtime.spawn(async move {
                for n in 0..20 {
                    let put = pb::PutRequest {
                        key: format!("w{w}").into_bytes(),
                        value: n.to_string().into_bytes(),
                        ..Default::default()
                    };
                    kv.put(put).await.expect("put");
                }
            })
        })
        .collect();
    for writer in writers {
        runtime.block_on(writer).expect("writer");
    }
    let proposals = metric(&c, follower, "kuberaft_forwarded_proposals_total") - proposed;
    let batches = metric(&c, follower, "kuberaft_forwarded_proposal_batches_total") - batches_before;
    let streamed = metric(&c, follower, "kuberaft_streamed_proposal_batches_total") - streamed_before;
    assert_eq!(proposals, 64 * 20, "every write went through the leader");
    assert_eq!(streamed, batches, "every batch went on the peer stream, as etcd's MsgProp");
    assert!(batches < proposals, "{proposals} writes in {batches} requests: batched");
    for w in 0..64 {
        assert_eq!(get(&mut via_leader, &format!("w{w}"), false).0, Some("19".into()), "writer {w}'s last write");
    }

    // Linearizable reads through the follower see what the leader acknowledged, and are
    // answered by the follower at the leader's read index.
    let reads_before = metric(&c, follower, "kuberaft_forwarded_reads_total");
    for i in 0..20 {
        let put = pb::PutRequest { key: key("fresh"), value: format!("f{i}").into_bytes(), ..Default::default() };
        runtime.block_on(via_leader.put(put)).expect("put");
        assert_eq!(get(&mut via_follower, "fresh", false), (Some(format!("f{i}")), follower_id));
    }
    let reads = metric(&c, follower, "kuberaft_forwarded_reads_total") - reads_before;
    assert!(reads >= 20, "the follower read at the leader's read index ({reads})");

    // Leases: granted through the leader, each keep-alive of a stream renewed through it.
    let origin: tonic::codegen::http::Uri = c.members[follower].client_url().parse().expect("a URI");
    let mut leases = LeaseClient::with_origin(h2.clone(), origin);
    let grant = pb::LeaseGrantRequest { ttl: 30, id: 0 };
    let granted = runtime.block_on(leases.lease_grant(grant)).expect("grant").into_inner();
    assert!(granted.id > 0 && granted.ttl == 30, "{granted:?}");
    let renewed_before = metric(&c, follower, "kuberaft_forwarded_lease_renewals_total");
    let requests = futures::stream::iter((0..5).map(move |_| pb::LeaseKeepAliveRequest { id: granted.id }));
    let answers: Vec<_> = runtime.block_on(async {
        let stream = leases.lease_keep_alive(requests).await.expect("keep-alive").into_inner();
        futures::StreamExt::collect::<Vec<_>>(stream).await
    });
    assert_eq!(answers.len(), 5, "{answers:?}");
    for answer in answers {
        let answer = answer.expect("renewed");
        assert_eq!((answer.id, answer.ttl), (granted.id, 30), "{answer:?}");
        assert_eq!(answer.header.map(|h| h.member_id), Some(follower_id));
    }
    let renewed = metric(&c, follower, "kuberaft_forwarded_lease_renewals_total") - renewed_before;
    assert_eq!(renewed, 5, "each keep-alive renewed through the leader");

    // A txn whose answer holds key-values is forwarded whole, and answered all the same.
    let before = metric(&c, follower, "kuberaft_forwarded_proposals_total");
    let range = pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest { key: key("k1"), ..Default::default() })),
    };
    let txn = pb::TxnRequest { success: vec![range], ..Default::default() };
    let answer = runtime.block_on(via_follower.txn(txn)).expect("txn").into_inner();
    assert!(answer.succeeded, "{answer:?}");
    assert_eq!(answer.header.as_ref().map(|h| h.member_id), Some(follower_id));
    match answer.responses.first().and_then(|r| r.response.as_ref()) {
        Some(pb::response_op::Response::ResponseRange(r)) => assert_eq!(r.kvs[0].value, b"v1"),
        other => panic!("a txn's range answered {other:?}"),
    }
    assert_eq!(metric(&c, follower, "kuberaft_forwarded_proposals_total"), before, "not proposed by the follower");
}

/// `etcdctl watch` as a child whose output lines a thread collects; killed when dropped.
struct CtlWatch {
    out: OutputLines,
    seen: Vec<String>,
}

impl CtlWatch {
    fn start(endpoints: &str, key: &str, from: u64) -> CtlWatch {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(["--dial-timeout", "3s", "watch", key])
            .arg(format!("--rev={from}"))
            .stderr(Stdio::null());
        CtlWatch { out: OutputLines::start(&mut command, "etcdctl watch"), seen: Vec::new() }
    }

    /// The values of the PUT events printed so far (etcdctl prints each event as three lines:
    /// PUT, the key, the value), once `last` is among them or 20 s have passed.
    fn values_until(&mut self, last: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let values: Vec<String> = self.seen.windows(3).filter(|w| w[0] == "PUT").map(|w| w[2].clone()).collect();
            let now = Instant::now();
            if values.iter().any(|v| v == last) || now >= deadline {
                return values;
            }
            if let Ok(line) = self.out.lines.recv_timeout(deadline - now) {
                self.seen.push(line);
            }
        }
    }
}

/// Watches `w` with etcdctl through all of `endpoints` (three members), writes 1, stops the
/// member whose /metrics show the watch stream (`stop`, which says whether it exited by itself),
/// writes 2-5 through the others once they answer a linearizable read, and returns the values
/// the watch printed.
fn watch_through_a_stop(endpoints: &[String], mut stop: impl FnMut(usize) -> bool) -> Vec<String> {
    let all = endpoints.join(",");
    let put = |endpoints: &str, value: &str| {
        let out = ctl(endpoints, &["put", "w", value], "", Duration::from_secs(15));
        assert!(out.ok, "put w {value} through {endpoints}: {}", out.err);
    };
    let written = wait_for("the cluster to take a write", Duration::from_secs(20), || {
        let out = ctl(&all, &["put", "w", "0", "-w", "json"], "", Duration::from_secs(10));
        out.ok.then(|| serde_json::from_str::<Value>(&out.out).ok()).flatten()
    });
    let revision = written["header"]["revision"].as_u64().expect("the put's revision");
    // From the next revision, so that no write is missed while the watch is being created.
    let mut watch = CtlWatch::start(&all, "w", revision + 1);
    let http = crate::http_support::blocking().timeout(Duration::from_secs(2)).build().expect("client");
    // Which member serves the stream: its gauge of watch streams (kuberaft's or etcd's).
    let streams = |i: usize| {
        metric_at(&http, &endpoints[i], "kuberaft_watch_streams")
            + metric_at(&http, &endpoints[i], "etcd_debugging_mvcc_watch_stream_total")
    };
    let serving = wait_for("the member serving the watch", Duration::from_secs(10), || {
        (0..endpoints.len()).find(|&i| streams(i) >= 1.0)
    });
    put(&all, "1");
    assert_eq!(watch.values_until("1"), ["1"], "the watch is running");
    assert!(stop(serving), "the member serving the watch exits by itself after SIGTERM");
    let others: Vec<&str> = (0..endpoints.len()).filter(|&i| i != serving).map(|i| endpoints[i].as_str()).collect();
    let others = others.join(",");
    wait_for("a leader among the others", Duration::from_secs(20), || {
        ctl(&others, &["get", "w"], "", Duration::from_secs(5)).ok.then_some(())
    });
    for value in ["2", "3", "4", "5"] {
        put(&others, value);
    }
    watch.values_until("5")
}

/// etcdctl's watch through three members goes on when the member serving it stops (SIGTERM),
/// every change once and in order, against kuberaft as against etcd 3.4: the stopping member
/// ends the stream with Unavailable (kuberaft's says `etcdserver: server stopped`; etcd's
/// connection closes), and etcd's client watches again through another member from the next
/// revision. A stream ended with any other code would end etcdctl's watch instead.
#[test]
fn etcdctl_watch_goes_on_when_its_member_stops_as_with_etcd() {
    if !etcdctl_available() {
        return;
    }
    let expected = ["1", "2", "3", "4", "5"];
    // Each system gets a second fresh cluster if its first trial fails. In CI runs under load
    // etcdctl's watch has stayed silent for 20 s after its member stopped, though the writes had
    // been taken through the other two members: once against etcd 3.4 (kuberaft's trial of that
    // run passed) and once against kuberaft (in the next run), in about 14 runs; it never
    // happened in 22 runs alone or beside busy loops. The same client failing against both
    // systems the same way points at the client; a system whose watch does not go on fails both.
    let twice = |what: &str, first: &dyn Fn() -> Vec<String>, second: &dyn Fn() -> Vec<String>| {
        let seen = first();
        if seen == expected {
            return seen;
        }
        eprintln!("{what}: etcdctl's watch printed {seen:?}; once more, with a fresh cluster");
        second()
    };
    let ours = twice("kuberaft", &|| kuberaft_watch_through_a_stop(165), &|| kuberaft_watch_through_a_stop(168));
    assert_eq!(ours, expected, "kuberaft");
    let theirs = twice("etcd 3.4", &etcd_watch_through_a_stop::<166>, &etcd_watch_through_a_stop::<167>);
    assert_eq!(theirs, expected, "etcd 3.4");
}

/// `watch_through_a_stop` against a fresh three-member kuberaft on 127.`net`.0.x.
fn kuberaft_watch_through_a_stop(net: u8) -> Vec<String> {
    let mut c = Cluster::new(net, 3);
    c.bootstrap();
    c.wait_leader(ELECTION);
    let ours: Vec<String> = (0..3).map(|i| c.members[i].client_url()).collect();
    watch_through_a_stop(&ours, |i| c.terminate(i))
}

/// `watch_through_a_stop` against a fresh three-member etcd 3.4 on 127.NET.0.x.
fn etcd_watch_through_a_stop<const NET: u8>() -> Vec<String> {
    let mut etcd = EtcdMembers::<NET>::new();
    for i in 0..3 {
        etcd.start(i, &EtcdMembers::<NET>::initial(&[0, 1, 2]), "new", &[]);
    }
    let theirs: Vec<String> = (0..3).map(EtcdMembers::<NET>::client).collect();
    watch_through_a_stop(&theirs, |i| etcd.terminate(i))
}
