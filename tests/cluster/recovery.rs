//! Quorum-loss recovery on the member (issue 17, part 4): etcd's `--force-new-cluster`, side by
//! side with etcd 3.4 through etcdctl. Both 3-member clusters take the same writes and lose all
//! their members; the first is started again with the flag. Each comes back as a one-member
//! cluster under the member's own id, with every key at its revision, takes writes from the
//! next revision, stays so when started with the flag again, and grows back through a learner
//! added with empty data and promoted, which holds kuberaft's survivor's data (etcd's is
//! reported: etcd 3.4 drops log entries its database may have applied, COMPATIBILITY.md).

use std::time::Duration;

use serde_json::Value;

use crate::grpc_api::{ctl, etcdctl_available};
use crate::harness::{wait_for, Cluster, EtcdMembers};
use crate::snapshots::everything;

const ELECTION: Duration = Duration::from_secs(10);
const ETCD_NET: u8 = 157;

/// Three etcd 3.4 members on 127.157.0.1-3.
type Etcds = EtcdMembers<ETCD_NET>;

/// `etcdctl <args> -w json` through `endpoint`, retried (bounded) until it succeeds.
fn json(endpoint: &str, args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-w", "json"]);
    let out = wait_for(&format!("etcdctl {args:?} at {endpoint}"), Duration::from_secs(20), || {
        let out = ctl(endpoint, &all, "", Duration::from_secs(10));
        out.ok.then_some(out.out)
    });
    serde_json::from_str(&out).expect("etcdctl's JSON")
}

/// The members etcdctl lists: (id, name, is learner), by name.
fn members(endpoint: &str) -> Vec<(u64, String, bool)> {
    let list = json(endpoint, &["member", "list"]);
    let mut out: Vec<(u64, String, bool)> = list["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["ID"].as_u64().unwrap_or_default(),
                m["name"].as_str().unwrap_or_default().to_string(),
                m["isLearner"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// The revision a put made.
fn put(endpoint: &str, key: &str, value: &str) -> i64 {
    json(endpoint, &["put", key, value])["header"]["revision"].as_i64().expect("a revision")
}

#[test]
fn force_new_cluster_keeps_the_survivors_data_and_leaves_it_alone_as_etcd_does() {
    if !etcdctl_available() {
        return;
    }
    let mut c = Cluster::new(156, 3);
    c.bootstrap();
    c.wait_leader(ELECTION);
    let mut etcd = Etcds::new();
    for i in 0..3 {
        etcd.start(i, &Etcds::initial(&[0, 1, 2]), "new", &[]);
    }
    let ours = |c: &Cluster, i: usize| c.members[i].client_url();
    let theirs = Etcds::client;
    for k in 0..20 {
        let (key, value) = (format!("key-{k:02}"), format!("value-{k}"));
        assert_eq!(put(&ours(&c, k % 3), &key, &value), put(&theirs(k % 3), &key, &value), "{key}");
    }
    let before_ours = members(&ours(&c, 0));
    let before_theirs = members(&theirs(0));
    assert_eq!(before_ours.len(), 3);
    assert_eq!(before_theirs.len(), 3);
    let (our_data, their_data) = (everything(&ours(&c, 0)), everything(&theirs(0)));
    assert_eq!(our_data, their_data, "the same writes, the same keys and revisions");

    // Every member is lost; the first is started again, alone, from its data.
    for i in 0..3 {
        c.kill(i);
        etcd.kill(i);
    }
    c.members[0].extra_args.push("--force-new-cluster".to_string());
    let initial = c.initial_cluster(&[0, 1, 2]);
    c.start(0, &initial, "existing");
    etcd.start(0, &Etcds::initial(&[0, 1, 2]), "new", &["--force-new-cluster"]);
    let mut kept_revisions = Vec::new();
    for (what, endpoint, before, data) in
        [("kuberaft", ours(&c, 0), &before_ours, &our_data), ("etcd", theirs(0), &before_theirs, &their_data)]
    {
        let kept = everything(&endpoint);
        if what == "kuberaft" {
            assert_eq!(&kept, data, "{what}: every key at its revision");
        } else {
            // etcd's survivor keeps the log only up to the commit index it had persisted, and
            // its last commit-only hard state may have been in its WAL's buffer when it was
            // killed (COMPATIBILITY.md): what it keeps is a prefix of what it had.
            assert!(kept.0 <= data.0 && kept.0 >= data.0 - 3, "{what}: revision {} of {}", kept.0, data.0);
            let prefix: Vec<Value> = data.1.iter().filter(|kv| kv[3].as_i64() <= Some(kept.0)).cloned().collect();
            assert_eq!(kept.1, prefix, "{what}: every key up to its revision {}", kept.0);
        }
        let alone = members(&endpoint);
        assert_eq!(alone, vec![before[0].clone()], "{what}: the first member alone, under its own id");
        assert_eq!(put(&endpoint, "after", "1"), kept.0 + 1, "{what}: writes go on from the next revision");
        kept_revisions.push(kept.0);
    }

    // Started with the flag again: it is alone already, nothing changes.
    c.kill(0);
    etcd.kill(0);
    c.start(0, &initial, "existing");
    etcd.start(0, &Etcds::initial(&[0, 1, 2]), "new", &["--force-new-cluster"]);
    for ((what, endpoint, before), kept) in
        [("kuberaft", ours(&c, 0), &before_ours), ("etcd", theirs(0), &before_theirs)].into_iter().zip(&kept_revisions)
    {
        assert_eq!(members(&endpoint), vec![before[0].clone()], "{what}");
        assert_eq!(everything(&endpoint).0, kept + 1, "{what}: the write after is there");
    }

    // Back to two members: the second is added as a learner and starts from empty data, then
    // is promoted once it caught up.
    c.kill(0);
    c.members[0].extra_args.clear();
    c.start(0, &initial, "existing");
    std::fs::remove_dir_all(&c.members[1].data_dir).expect("wipe etcd-1");
    std::fs::remove_dir_all(etcd.data_dir(1)).expect("wipe e1");
    let our_peer = c.members[1].peer_url();
    json(&ours(&c, 0), &["member", "add", "etcd-1", &format!("--peer-urls={our_peer}"), "--learner"]);
    json(&theirs(0), &["member", "add", "e1", &format!("--peer-urls={}", Etcds::peer(1)), "--learner"]);
    let two = c.initial_cluster(&[0, 1]);
    c.start(1, &two, "existing");
    etcd.start(1, &Etcds::initial(&[0, 1]), "existing", &[]);
    for (what, endpoint, learner) in [("kuberaft", ours(&c, 0), "etcd-1"), ("etcd", theirs(0), "e1")] {
        // etcd lists a member without a name until it has started: found as the learner.
        let id = wait_for(&format!("{what}: {learner} listed as a learner"), Duration::from_secs(20), || {
            members(&endpoint).iter().find(|m| m.2).map(|m| m.0)
        });
        let hex = format!("{id:x}");
        wait_for(&format!("{what}: promote {learner}"), Duration::from_secs(30), || {
            ctl(&endpoint, &["member", "promote", &hex], "", Duration::from_secs(10)).ok.then_some(())
        });
        let now = members(&endpoint);
        assert_eq!(now.len(), 2, "{what}: {now:?}");
        assert!(now.iter().all(|m| !m.2), "{what}: both vote: {now:?}");
        // Its name is listed once the member has said it (etcd: published through the log).
        wait_for(&format!("{what}: {learner} listed by name"), Duration::from_secs(20), || {
            members(&endpoint).iter().any(|m| m.1 == learner).then_some(())
        });
    }
    // kuberaft's new member holds what the survivor holds: every write, the one after included.
    let survivor = everything(&ours(&c, 0));
    assert_eq!(survivor.0, our_data.0 + 1);
    assert_eq!(everything(&ours(&c, 1)), survivor, "the new member holds the survivor's data");
    // etcd's may not: its survivor discards the log's entries past the commit index it had
    // persisted, which its database may already have applied (COMPATIBILITY.md). Reported,
    // not asserted: it depends on when etcd last wrote its hard state.
    let (etcd_survivor, etcd_new) = (everything(&theirs(0)), everything(&theirs(1)));
    eprintln!(
        "etcd after --force-new-cluster: the survivor at revision {} with {} keys, the member added after at revision {} with {} keys{}",
        etcd_survivor.0,
        etcd_survivor.1.len(),
        etcd_new.0,
        etcd_new.1.len(),
        if etcd_survivor == etcd_new { "" } else { ": they differ" }
    );
}
