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

use crate::harness::{wait_for, Cluster, Etcd};
use crate::ELECTION;

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
    let mut pipe = |p: Option<Box<dyn Read + Send>>| {
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
fn granted_lease(out: &str) -> String {
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
struct Pair<'a> {
    ours: &'a str,
    etcd: &'a str,
}

impl Pair<'_> {
    fn both(&self, args: &[&str], input: &str, limit: Duration) -> (Ctl, Ctl) {
        (ctl(self.ours, args, input, limit), ctl(self.etcd, args, input, limit))
    }

    /// Runs `args` on both and checks that they print the same (`replace` applied to each side's
    /// output: its own lease ids, say) and both succeed or both fail; returns kuberaft's output.
    fn same(&self, args: &[&str], input: &str, replace: (&[(String, &str)], &[(String, &str)])) -> String {
        let limit = if args.first() == Some(&"watch") { Duration::from_secs(3) } else { Duration::from_secs(20) };
        let (ours, etcd) = self.both(args, input, limit);
        let (o, e) = (normalized(&ours.out, replace.0), normalized(&etcd.out, replace.1));
        assert_eq!(o, e, "etcdctl {args:?} prints the same on kuberaft ({}) as on etcd ({})", self.ours, self.etcd);
        assert_eq!(
            normalized(&ours.err, replace.0),
            normalized(&etcd.err, replace.1),
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
    let none: &[(String, &str)] = &[];
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
            pair.same(&["put", &p(k), &format!("v-{k}")], "", (none, none));
        }
        let put = pair.same(&["put", &p("ke"), "v-ke", "-w", "json"], "", (none, none));
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
            pair.same(&args, "", (none, none));
        }
        pair.same(&["del", &p("ka"), "--prev-kv"], "", (none, none));
        pair.same(&["del", "--prefix", &p("kb"), "--prev-kv", "-w", "json"], "", (none, none));
        // A txn in interactive mode: compares, then the success and the failure requests.
        let txn = format!("mod(\"{}\") > \"0\"\n\nput {} t1\nget {}\n\nput {} t2\n\n", p("kc"), p("kc"), p("kd"), p("kx"));
        pair.same(&["txn", "-i"], &txn, (none, none));
        pair.same(&["txn", "-i", "-w", "json"], &txn.replace("> \"0\"", "= \"1\""), (none, none));
        // Watch from a past revision, over a prefix, with previous values (ended after 3 s).
        pair.same(&["watch", &format!("--rev={before_last}"), "--prefix", &p(""), "--prev-kv"], "", (none, none));
        // Leases: grant, attach, keep alive once, time to live with keys, revoke.
        let (ours_grant, etcd_grant) = pair.both(&["lease", "grant", "100"], "", Duration::from_secs(20));
        assert!(ours_grant.ok && etcd_grant.ok, "{ours_grant:?} {etcd_grant:?}");
        let (lo, le) = (granted_lease(&ours_grant.out), granted_lease(&etcd_grant.out));
        let ids: (&[(String, &str)], &[(String, &str)]) = (&[(lo.clone(), "<lease>")], &[(le.clone(), "<lease>")]);
        assert_eq!(normalized(&ours_grant.out, ids.0), normalized(&etcd_grant.out, ids.1));
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
            let (o, e) =
                (ctl(&ours, &args_ours, "", Duration::from_secs(20)), ctl(&etcd, &args_etcd, "", Duration::from_secs(20)));
            let (o_out, e_out) = (normalized(&o.out, ids.0), normalized(&e.out, ids.1));
            // The lease id is in the value's JSON as a number: compare with it taken out too.
            let (o_out, e_out) = (
                remaining_normalized(&o_out.replace(&i64::from_str_radix(&lo, 16).unwrap_or(0).to_string(), "<id>"), 100),
                remaining_normalized(&e_out.replace(&i64::from_str_radix(&le, 16).unwrap_or(0).to_string(), "<id>"), 100),
            );
            assert_eq!(o_out, e_out, "etcdctl {args_ours:?}");
            assert_eq!(normalized(&o.err, ids.0), normalized(&e.err, ids.1), "etcdctl {args_ours:?}");
            assert_eq!(o.ok, e.ok, "etcdctl {args_ours:?}: {o:?} {e:?}");
        }
        // Errors, with etcd's messages: a future revision, an empty key, a bad lease.
        pair.same(&["get", &p("ka"), "--rev=100000"], "", (none, none));
        pair.same(&["put", "", "v"], "", (none, none));
        pair.same(&["put", &p("k"), "v", "--lease=1234"], "", (none, none));
        pair.same(&["lease", "keep-alive", "--once", "1234"], "", (none, none));
        // Compaction, and reads below it.
        pair.same(&["compaction", &before_last], "", (none, none));
        pair.same(&["compaction", &before_last], "", (none, none));
        pair.same(&["get", &p("kc"), &format!("--rev={}", revision - 2)], "", (none, none));
        pair.same(&["watch", &format!("--rev={}", revision - 2), &p("kc")], "", (none, none));
    }
}
