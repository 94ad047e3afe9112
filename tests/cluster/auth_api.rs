//! etcd's users, roles and permissions (issue 16, must-show 4): etcdctl 3.4's `user`, `role`
//! and `auth` commands on a 3-member kuberaft cluster, through each member in turn, and on a
//! real etcd 3.4, side by side with the same etcdctl: the same output and errors. Then a user
//! with read on a prefix reads there and nowhere else, writes nowhere and watches nothing
//! outside it, over gRPC (etcdctl) and over the JSON API, also through followers, whose
//! forwarded calls keep the caller.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::grpc_api::{ctl, etcdctl_available, Pair};
use crate::harness::{wait_for, Cluster, Etcd};
use crate::ELECTION;

const ROOT: &str = "--user=root:rootpw";
const ALICE: &str = "--user=alice:alicepw";

/// Issue 16, must-show 4.
#[test]
fn etcdctl_manages_users_and_roles_as_etcd_does_and_permissions_hold_over_grpc_and_http() {
    if !etcdctl_available()
        || !crate::require::available(Command::new("etcd").arg("--version").output().is_ok(), "etcd 3.4 (`etcd`)")
    {
        return;
    }
    let mut c = Cluster::new(145, 3);
    c.bootstrap();
    let (leader, _) = c.wait_leader(ELECTION);
    let etcd_ip = "127.146.0.1";
    let _etcd = Etcd::start(etcd_ip, &["--election-timeout", "1000", "--heartbeat-interval", "100"]);
    let etcd = format!("{etcd_ip}:2379");
    // Each step goes through another member: the leader and both followers serve every call.
    let ours = |step: usize| format!("{}:2379", c.members[(leader + step) % 3].ip);
    let mut step = 0;
    let mut same = |args: &[&str]| {
        step += 1;
        let endpoint = ours(step);
        Pair { ours: &endpoint, etcd: &etcd }.same(args, "")
    };

    // Management while auth is off, and the errors of bad management.
    assert_eq!(same(&["user", "add", "root:rootpw"]), "User root created");
    same(&["user", "add", "root:again"]);
    assert_eq!(same(&["role", "add", "reader"]), "Role reader created");
    same(&["role", "add", "reader"]);
    assert_eq!(same(&["role", "grant-permission", "reader", "read", "/pub/", "--prefix"]), "Role reader updated");
    same(&["role", "grant-permission", "writer", "write", "/pub/", "--prefix"]);
    same(&["role", "add", "scratch"]);
    same(&["role", "grant-permission", "scratch", "readwrite", "/tmp/a", "/tmp/z"]);
    same(&["role", "grant-permission", "scratch", "write", "one"]);
    same(&["role", "grant-permission", "scratch", "read", "from", "--from-key"]);
    same(&["role", "get", "scratch"]);
    same(&["role", "revoke-permission", "scratch", "one"]);
    same(&["role", "revoke-permission", "scratch", "never"]);
    same(&["role", "delete", "scratch"]);
    assert_eq!(same(&["user", "add", "alice:alicepw"]), "User alice created");
    assert_eq!(same(&["user", "grant-role", "alice", "reader"]), "Role reader is granted to user alice");
    same(&["user", "grant-role", "alice", "nosuchrole"]);
    same(&["user", "grant-role", "nobody", "reader"]);
    same(&["user", "revoke-role", "alice", "nosuchrole"]);
    same(&["user", "get", "alice"]);
    same(&["user", "get", "alice", "--detail"]);
    same(&["user", "list"]);
    same(&["role", "list"]);
    same(&["role", "get", "reader"]);
    same(&["user", "add", "carol", "--no-password"]);
    same(&["user", "delete", "carol"]);
    same(&["user", "delete", "carol"]);
    // Without credentials while auth is off, all works; Authenticate is refused, which
    // etcdctl ignores.
    same(&[ALICE, "put", "/priv/b", "secret"]);
    same(&["put", "/pub/a", "public"]);

    // `auth enable` makes the root role and grants it to root (etcdctl does), then enables.
    assert_eq!(same(&["auth", "enable"]), "Authentication Enabled");
    same(&["auth", "enable"]);

    // alice: reads /pub/, nothing else; writes nothing.
    same(&[ALICE, "get", "/pub/a"]);
    same(&[ALICE, "get", "/pub/", "--prefix"]);
    same(&[ALICE, "get", "/priv/b"]);
    same(&[ALICE, "get", "/", "--prefix"]);
    same(&[ALICE, "put", "/pub/a", "mine"]);
    same(&[ALICE, "put", "/priv/b", "mine"]);
    same(&[ALICE, "del", "/pub/a"]);
    same(&[ALICE, "txn"]);
    // Compaction is root's here; etcd 3.4 before 3.4.42 let any user compact
    // (COMPATIBILITY.md), so only kuberaft's answer is checked.
    let compaction = ctl(&ours(0), &[ALICE, "compaction", "1"], "", Duration::from_secs(20));
    assert_eq!((compaction.ok, compaction.err.trim()), (false, "Error: etcdserver: permission denied"));
    same(&[ALICE, "user", "add", "mallory:x"]);
    same(&[ALICE, "user", "get", "alice"]);
    same(&[ALICE, "user", "get", "root"]);
    same(&[ALICE, "role", "get", "reader"]);
    same(&[ALICE, "role", "list"]);
    same(&[ALICE, "member", "add", "x", "--peer-urls=http://127.146.9.9:2380"]);
    // Without credentials, and with wrong ones.
    same(&["get", "/pub/a"]);
    same(&["put", "/pub/a", "anon"]);
    same(&["--user=alice:wrong", "get", "/pub/a"]);
    same(&["--user=nobody:pw", "get", "/pub/a"]);
    // root may do anything; root itself cannot be taken apart while auth is on.
    same(&[ROOT, "put", "/pub/a", "by-root"]);
    same(&[ROOT, "get", "/", "--prefix"]);
    same(&[ROOT, "user", "delete", "root"]);
    same(&[ROOT, "user", "revoke-role", "root", "root"]);
    same(&[ROOT, "role", "delete", "root"]);
    same(&[ROOT, "user", "list"]);

    // Calls a follower hands to the leader whole (a put whose answer carries the previous
    // value, a lease's time to live) keep their caller.
    for endpoint in [ours(1), ours(2)] {
        let put = ctl(&endpoint, &[ROOT, "put", "/pub/a", "by-root", "--prev-kv"], "", Duration::from_secs(20));
        assert!(put.ok && put.out.contains("OK"), "through {endpoint}: {put:?}");
        let put = ctl(&endpoint, &[ALICE, "put", "/pub/a", "mine", "--prev-kv"], "", Duration::from_secs(20));
        assert_eq!(put.err.trim(), "Error: etcdserver: permission denied", "through {endpoint}: {put:?}");
    }

    // Leases (etcd 3.4.42's rules; 3.4.23 lets anyone revoke or renew any lease, so only
    // kuberaft's answers are checked): a lease holding a key alice may not write is not hers to
    // revoke or renew, nor are its keys hers to list; an anonymous caller may not grant one.
    let grant = ctl(&ours(0), &[ROOT, "lease", "grant", "100"], "", Duration::from_secs(20));
    assert!(grant.ok, "{grant:?}");
    let lease = crate::grpc_api::granted_lease(&grant.out);
    let attach =
        ctl(&ours(0), &[ROOT, "put", "/priv/leased", "x", &format!("--lease={lease}")], "", Duration::from_secs(20));
    assert!(attach.ok, "{attach:?}");
    for endpoint in [ours(0), ours(1), ours(2)] {
        for args in [
            vec![ALICE, "lease", "revoke", &lease],
            vec![ALICE, "lease", "keep-alive", "--once", &lease],
            vec![ALICE, "lease", "timetolive", &lease, "--keys"],
        ] {
            let refused = ctl(&endpoint, &args, "", Duration::from_secs(20));
            assert!(
                !refused.ok && refused.err.contains("etcdserver: permission denied"),
                "{args:?} through {endpoint}: {refused:?}"
            );
        }
        let anonymous = ctl(&endpoint, &["lease", "grant", "100"], "", Duration::from_secs(20));
        assert!(anonymous.err.contains("etcdserver: user name is empty"), "through {endpoint}: {anonymous:?}");
        let granted = ctl(&endpoint, &[ALICE, "lease", "grant", "100"], "", Duration::from_secs(20));
        assert!(granted.ok, "alice may grant a lease through {endpoint}: {granted:?}");
    }
    let renewed = ctl(&ours(1), &[ROOT, "lease", "keep-alive", "--once", &lease], "", Duration::from_secs(20));
    assert!(renewed.ok, "{renewed:?}");

    // Watches: inside the permission a watch is made; outside it is refused at once and the
    // stream stays open (etcd 3.4.8 and later).
    let watched =
        |endpoint: &str, key: &str| ctl(endpoint, &[ALICE, "watch", key, "--prefix"], "", Duration::from_secs(3));
    for endpoint in [ours(1), ours(2)] {
        let (o, e) = (watched(&endpoint, "/priv/"), watched(&etcd, "/priv/"));
        assert_eq!((o.out.as_str(), o.err.as_str()), (e.out.as_str(), e.err.as_str()), "a refused watch");
    }

    // The same permissions over the JSON API, through every member.
    json_api_keeps_alices_permissions(&c, leader);

    // The CLI's --user (and --password), over the JSON API.
    let cli = |args: &[&str]| crate::mvcc_api::cli(&c, args, None);
    let read = cli(&["kv", "get", "/pub/a", "--user", "alice:alicepw"]);
    assert!(read.0 == Some(0) && String::from_utf8_lossy(&read.1).contains("by-root"), "{read:?}");
    let read = cli(&["kv", "get", "/pub/a", "--user", "alice", "--password", "alicepw"]);
    assert_eq!(read.0, Some(0), "{read:?}");
    let write = cli(&["kv", "put", "/pub/a", "mine", "--user", "alice:alicepw"]);
    assert!(write.0 != Some(0) && write.2.contains("etcdserver: permission denied"), "{write:?}");
    let anonymous = cli(&["kv", "get", "/pub/a"]);
    assert!(anonymous.0 != Some(0) && anonymous.2.contains("etcdserver: user name is empty"), "{anonymous:?}");
    let wrong = cli(&["kv", "get", "/pub/a", "--user", "alice:nope"]);
    assert!(wrong.0 != Some(0) && wrong.2.contains("authentication failed"), "{wrong:?}");
    let root = cli(&["kv", "put", "/priv/c", "by-cli", "--user", "root:rootpw"]);
    assert_eq!(root.0, Some(0), "{root:?}");

    // The lock and election services run as their caller: alice may not write a lock's keys
    // under /pub/, root may (etcd runs them with the caller's token too).
    same(&[ALICE, "lock", "/pub/l", "echo", "held"]);
    let locked = ctl(&ours(2), &[ROOT, "lock", "/pub/l", "echo", "held"], "", Duration::from_secs(20));
    assert!(locked.ok && locked.out.contains("held"), "{locked:?}");

    assert_eq!(same(&[ROOT, "auth", "disable"]), "Authentication Disabled");
    same(&["get", "/priv/b"]);
}

/// alice over the JSON API: a token from `/v1/auth/authenticate`, sent as `Authorization`.
fn json_api_keeps_alices_permissions(c: &Cluster, leader: usize) {
    let authenticate = |i: usize, name: &str, password: &str| {
        c.http
            .post(format!("{}/v1/auth/authenticate", c.members[i].client_url()))
            .json(&serde_json::json!({"name": name, "password": password}))
            .send()
            .expect("authenticate")
    };
    let wrong = authenticate(leader, "alice", "wrong");
    assert_eq!(wrong.status().as_u16(), 401);
    let body: Value = wrong.json().expect("json");
    assert_eq!(body["error"]["message"], "etcdserver: authentication failed, invalid user ID or password");

    let root: Value = authenticate(leader, "root", "rootpw").json().expect("json");
    let root_token = root["token"].as_str().expect("root's token").to_string();
    for step in 0..3 {
        let i = (leader + step) % 3;
        let base = c.members[i].client_url();
        let answer: Value = authenticate(i, "alice", "alicepw").json().expect("json");
        let token = answer["token"].as_str().expect("a token").to_string();
        let (prefix, index) = token.split_once('.').expect("<letters>.<index>");
        assert!(prefix.len() == 16 && prefix.chars().all(|ch| ch.is_ascii_alphabetic()), "{token}");
        assert!(index.parse::<u64>().is_ok(), "{token}");

        let get = |key: &str, token: Option<&str>| {
            let mut request = c.http.get(format!("{base}/v1/kv/{key}"));
            if let Some(token) = token {
                request = request.header("authorization", token);
            }
            let answer = request.send().expect("get");
            (answer.status().as_u16(), answer.text().unwrap_or_default())
        };
        assert_eq!(get("%2Fpub%2Fa", Some(&token)), (200, "by-root".to_string()), "through member {i}");
        let (status, body) = get("%2Fpriv%2Fb", Some(&token));
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("etcdserver: permission denied"), "{body}");
        let (status, body) = get("%2Fpub%2Fa", None);
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("etcdserver: user name is empty"), "{body}");
        let (status, body) = get("%2Fpub%2Fa", Some("AAAAAAAAAAAAAAAA.1"));
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("etcdserver: invalid auth token"), "{body}");

        // A write: refused on the leader, whether it is served here or forwarded.
        let put = c
            .http
            .put(format!("{base}/v1/kv/%2Fpub%2Fa"))
            .header("authorization", &token)
            .body("mine")
            .send()
            .expect("put");
        assert_eq!(put.status().as_u16(), 403, "a write through member {i}");
        let txn = c
            .http
            .post(format!("{base}/v1/txn"))
            .header("authorization", &token)
            .json(&serde_json::json!({"success": [{"requestRange": {"key": "/priv/", "rangeEnd": "/priv0"}}]}))
            .send()
            .expect("txn");
        assert_eq!(txn.status().as_u16(), 403, "a txn that reads outside through member {i}");
        let range = c
            .http
            .post(format!("{base}/v1/range"))
            .header("authorization", &token)
            .json(&serde_json::json!({"key": "/pub/", "rangeEnd": "/pub0"}))
            .send()
            .expect("range");
        assert_eq!(range.status().as_u16(), 200, "a range inside through member {i}");

        // Leases over the JSON API: alice may grant, not revoke one that holds others' keys.
        let lease = |path: &str, body: Value| {
            let answer = c
                .http
                .post(format!("{base}/v1/lease/{path}"))
                .header("authorization", &token)
                .json(&body)
                .send()
                .expect("lease call");
            (answer.status().as_u16(), answer.text().unwrap_or_default())
        };
        let (status, granted) = lease("grant", serde_json::json!({"ttl": 100}));
        assert_eq!(status, 200, "{granted}");
        let held: Value = c
            .http
            .post(format!("{base}/v1/range"))
            .json(&serde_json::json!({"key": "/priv/leased"}))
            .header("authorization", &root_token)
            .send()
            .expect("range")
            .json()
            .expect("json");
        let held = held["kvs"][0]["lease"].as_i64().expect("a leased key");
        let (status, body) = lease("revoke", serde_json::json!({"id": held}));
        assert_eq!(status, 403, "{body}");
        let (status, body) = lease("timetolive", serde_json::json!({"id": held, "keys": true}));
        assert_eq!(status, 403, "{body}");
        let (status, body) = lease("keepalive", serde_json::json!({"id": held}));
        assert_eq!(status, 403, "{body}");

        // A watch outside: a refused create, with etcd's reason; inside: created.
        let first = first_watch_line(&c.members[i].ip, &token, "/priv/");
        assert_eq!(first["canceled"], true, "{first}");
        assert_eq!(first["created"], true, "{first}");
        assert_eq!(
            first["cancelReason"], "rpc error: code = PermissionDenied desc = etcdserver: permission denied",
            "{first}"
        );
        let inside = first_watch_line(&c.members[i].ip, &token, "/pub/");
        assert_eq!(
            (inside["created"].clone(), inside["canceled"].clone()),
            (Value::Bool(true), Value::Null),
            "{inside}"
        );
    }
}

/// The first line the JSON watch endpoint answers to a create of `prefix` with `token`.
fn first_watch_line(ip: &str, token: &str, prefix: &str) -> Value {
    let body = serde_json::json!({"createRequest": {"key": prefix, "prefix": true}}).to_string();
    let mut stream = TcpStream::connect(format!("{ip}:2379")).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let request = format!(
        "POST /v1/watch HTTP/1.1\r\nHost: {ip}:2379\r\nAuthorization: {token}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\n\r\n",
        body.len() + 1
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut reader = BufReader::new(stream);
    wait_for("the watch's first line", Duration::from_secs(5), || {
        let mut line = String::new();
        // Bounded by the read timeout; headers and chunk sizes are skipped.
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => panic!("the watch stream ended before a line"),
            Ok(_) => serde_json::from_str::<Value>(line.trim()).ok().filter(|v| v.is_object()),
        }
    })
}

/// The JSON API's auth changes (what the operator turns auth on with): `enable`, `disable`,
/// `user/add`, `user/changepw`, `user/grant` and `authenticate`, sent to kuberaft's
/// `/v1/auth/*` through each member in turn and to etcd 3.4's gateway `/v3/auth/*`, side by side
/// with the same client and bodies: the same outcomes and error messages. Members report auth
/// in `/v1/status` (`authEnabled`); a malformed request changes nothing.
#[test]
fn json_auth_changes_answer_as_etcds_gateway_does() {
    if !etcdctl_available()
        || !crate::require::available(Command::new("etcd").arg("--version").output().is_ok(), "etcd 3.4 (`etcd`)")
    {
        return;
    }
    let mut c = Cluster::new(149, 3);
    c.bootstrap();
    let (leader, _) = c.wait_leader(ELECTION);
    let etcd_ip = "127.150.0.1";
    let _etcd = Etcd::start(etcd_ip, &["--election-timeout", "1000", "--heartbeat-interval", "100"]);
    let etcd = format!("http://{etcd_ip}:2379/v3/auth");
    let mut step = 0;
    // One call to both: (succeeded, error message) of each, asserted equal; kuberaft's answer.
    let mut same = |path: &str, body: Value, tokens: (Option<&str>, Option<&str>)| {
        step += 1;
        let ours = format!("{}/v1/auth", c.members[(leader + step) % 3].client_url());
        let answer = |base: &str, token: Option<&str>| {
            let mut request = c.http.post(format!("{base}/{path}")).json(&body);
            if let Some(token) = token {
                request = request.header("authorization", token);
            }
            let reply = request.send().expect("an auth call");
            let ok = reply.status().is_success();
            let body: Value = reply.json().expect("a JSON answer");
            // kuberaft: {"error": {"code", "message"}}; etcd's gateway: {"error", "message", "code"}.
            let message = body["error"]["message"].as_str().or(body["message"].as_str()).unwrap_or("").to_string();
            (ok, message, body)
        };
        let (o, e) = (answer(&ours, tokens.0), answer(&etcd, tokens.1));
        assert_eq!((o.0, &o.1), (e.0, &e.1), "{path} {body}: kuberaft {}, etcd {}", o.2, e.2);
        o
    };
    let none = (None, None);
    let refused = |message: &str| (false, message.to_string());
    let outcome = |o: (bool, String, Value)| (o.0, o.1);

    assert_eq!(outcome(same("enable", json!({}), none)), refused("etcdserver: root user does not exist"));
    assert!(same("user/add", json!({"name": "root", "password": "rootpw"}), none).0);
    assert_eq!(
        outcome(same("user/add", json!({"name": "root", "password": "other"}), none)),
        refused("etcdserver: user name already exists")
    );
    assert_eq!(outcome(same("enable", json!({}), none)), refused("etcdserver: root user does not have root role"));
    assert_eq!(
        outcome(same("user/grant", json!({"user": "root", "role": "reader"}), none)),
        refused("etcdserver: role name not found")
    );
    assert!(same("user/grant", json!({"user": "root", "role": "root"}), none).0);
    assert!(same("user/add", json!({"name": "alice", "password": "alicepw"}), none).0);
    for i in 0..3 {
        assert_eq!(c.status(i).expect("a status")["authEnabled"], false, "member {i}");
    }
    assert!(same("enable", json!({}), none).0);
    // Once on, enabling is root's like every other change.
    assert_eq!(outcome(same("enable", json!({}), none)), refused("etcdserver: user name is empty"));
    for i in 0..3 {
        wait_for("auth on in every member's status", Duration::from_secs(5), || {
            (c.status(i)?["authEnabled"] == true).then_some(())
        });
    }

    // While auth is on: changes are root's.
    let token = |ours: bool, name: &str, password: &str| {
        let base = if ours { format!("{}/v1/auth", c.members[leader].client_url()) } else { etcd.clone() };
        let reply = c.http.post(format!("{base}/authenticate")).json(&json!({"name": name, "password": password}));
        let body: Value = reply.send().expect("authenticate").json().expect("json");
        body["token"].as_str().unwrap_or_else(|| panic!("a token for {name}: {body}")).to_string()
    };
    let alice = (token(true, "alice", "alicepw"), token(false, "alice", "alicepw"));
    let alice = (Some(alice.0.as_str()), Some(alice.1.as_str()));
    assert_eq!(
        outcome(same("user/add", json!({"name": "bob", "password": "b"}), none)),
        refused("etcdserver: user name is empty")
    );
    assert_eq!(
        outcome(same("user/add", json!({"name": "bob", "password": "b"}), alice)),
        refused("etcdserver: permission denied")
    );
    assert_eq!(outcome(same("disable", json!({}), alice)), refused("etcdserver: permission denied"));
    assert_eq!(
        outcome(same("user/changepw", json!({"name": "root", "password": "x"}), alice)),
        refused("etcdserver: permission denied")
    );
    let root = (token(true, "root", "rootpw"), token(false, "root", "rootpw"));
    let root = (Some(root.0.as_str()), Some(root.1.as_str()));
    // A snapshot is root's, as etcd's Maintenance.Snapshot is (the file: tests/cluster/snapshots.rs).
    let snapshot = |token: Option<&str>| {
        let mut request = c.http.get(format!("{}/v1/snapshot", c.members[(leader + 1) % 3].client_url()));
        if let Some(token) = token {
            request = request.header("authorization", token);
        }
        let reply = request.send().expect("a snapshot call");
        (reply.status().as_u16(), reply.bytes().expect("a body").len())
    };
    assert_eq!(snapshot(None).0, 401, "no user");
    assert_eq!(snapshot(alice.0).0, 403, "not root");
    let (status, size) = snapshot(root.0);
    assert!(status == 200 && size > 512 && (size - 32) % 512 == 0, "root's: {status}, {size} bytes");
    assert!(same("user/add", json!({"name": "bob", "password": "b"}), root).0);
    assert_eq!(
        outcome(same("user/changepw", json!({"name": "nobody", "password": "x"}), root)),
        refused("etcdserver: user name not found")
    );
    assert!(same("user/changepw", json!({"name": "root", "password": "newpw"}), root).0);
    assert_eq!(
        outcome(same("authenticate", json!({"name": "root", "password": "rootpw"}), none)),
        refused("etcdserver: authentication failed, invalid user ID or password")
    );

    // Changing a password ends its user's tokens (etcd's `invalidateUser`).
    assert_eq!(
        outcome(same("user/add", json!({"name": "carol", "password": "c"}), root)),
        refused("etcdserver: invalid auth token")
    );
    let root = (token(true, "root", "newpw"), token(false, "root", "newpw"));
    let root = (Some(root.0.as_str()), Some(root.1.as_str()));

    // A malformed request is refused and changes nothing.
    let bad = c
        .http
        .post(format!("{}/v1/auth/user/add", c.members[leader].client_url()))
        .header("authorization", root.0.expect("root's token"))
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .expect("a malformed user add");
    assert_eq!(bad.status().as_u16(), 400);
    let listed = ctl(&format!("{}:2379", c.members[leader].ip), &["--user=root:newpw", "user", "list"], "", ELECTION);
    assert_eq!(listed.out.trim(), "alice\nbob\nroot", "{listed:?}");

    assert!(same("disable", json!({}), root).0);
    assert!(same("disable", json!({}), none).0, "disabling again changes nothing");
    for i in 0..3 {
        wait_for("auth off in every member's status", Duration::from_secs(5), || {
            (c.status(i)?["authEnabled"] == false).then_some(())
        });
    }
}
