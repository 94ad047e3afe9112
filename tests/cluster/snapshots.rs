//! Snapshots to keep (issue 17, part 1): `kuberaft snapshot save|status|restore`, and etcdctl's
//! `snapshot save` of a kuberaft member, side by side with etcd 3.4 and etcdctl's own
//! `snapshot save|restore`: the same writes go to both, both are saved, written to again and
//! restored into new clusters, and the restored clusters hold the same keys at the same
//! revisions (what etcdctl reads back) and nothing written after the save.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use kuberaft::base::base64::encode_base64;
use kuberaft::client::encode_component;
use serde_json::{json, Value};

use crate::grpc_api::{ctl, etcdctl_available};
use crate::harness::{wait_for, Cluster};

const ELECTION: Duration = Duration::from_secs(10);

/// `kuberaft <args>`: (exit code, stdout, stderr).
fn kuberaft(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kuberaft")).args(args).output().expect("run kuberaft");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `kuberaft snapshot restore FILE --data-dir DIR --name NAME --initial-cluster LIST [more]`.
fn restore(file: &Path, data_dir: &Path, name: &str, initial: &str, more: &[&str]) -> (Option<i32>, String, String) {
    let (file, data_dir) = (file.to_str().expect("path"), data_dir.to_str().expect("path"));
    let mut args =
        vec!["snapshot", "restore", file, "--data-dir", data_dir, "--name", name, "--initial-cluster", initial];
    args.extend_from_slice(more);
    kuberaft(&args)
}

/// An etcd 3.4 member on `ip` from a data directory (one `etcdctl snapshot restore` made).
struct RestoredEtcd(Child);

impl RestoredEtcd {
    fn start(ip: &str, data_dir: &Path) -> RestoredEtcd {
        let (client, peer) = (format!("http://{ip}:2379"), format!("http://{ip}:2380"));
        RestoredEtcd(crate::harness::etcd_member("e0", data_dir, &client, &peer, &format!("e0={peer}"), &[]))
    }
}

impl Drop for RestoredEtcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every key as etcdctl reads it (`get "" --prefix -w json`): the header's revision, and each
/// key's value, create and mod revisions and version.
pub fn everything(endpoint: &str) -> (i64, Vec<Value>) {
    let out = wait_for("etcdctl get --prefix", Duration::from_secs(15), || {
        let out = ctl(endpoint, &["get", "", "--prefix", "-w", "json"], "", Duration::from_secs(10));
        out.ok.then_some(out.out)
    });
    let answer: Value = serde_json::from_str(&out).expect("etcdctl's JSON");
    let kvs = answer["kvs"].as_array().cloned().unwrap_or_default();
    let kvs = kvs
        .into_iter()
        .map(|kv| json!([kv["key"], kv["value"], kv["create_revision"], kv["mod_revision"], kv["version"]]))
        .collect();
    (answer["header"]["revision"].as_i64().expect("a revision"), kvs)
}

/// Sends a kuberaft write until it is answered with anything but 503, which says it was not
/// applied (a member that has not heard of the leader yet): any other retry could apply twice,
/// and the revisions are compared.
fn once(what: &str, send: impl Fn() -> reqwest::Result<reqwest::blocking::Response>) {
    let status = wait_for(what, Duration::from_secs(10), || {
        let status = send().expect(what).status();
        (status != reqwest::StatusCode::SERVICE_UNAVAILABLE).then_some(status)
    });
    assert!(status.is_success(), "{what}: {status}");
}

/// One write to kuberaft (the JSON API through member `via`) and to etcd (its gateway).
fn put_both(c: &Cluster, via: usize, etcd: &str, key: &str, value: &str) {
    let url = format!("{}/v1/kv/{}", c.members[via].client_url(), encode_component(key));
    once(&format!("put {key} to kuberaft"), || c.http.put(&url).body(value.to_string()).send());
    let body = json!({"key": encode_base64(key.as_bytes()), "value": encode_base64(value.as_bytes())});
    let theirs = c.http.post(format!("{etcd}/v3/kv/put")).json(&body).send();
    assert!(theirs.expect("put to etcd").status().is_success(), "put {key} to etcd");
}

fn delete_both(c: &Cluster, via: usize, etcd: &str, key: &str) {
    let url = format!("{}/v1/kv/{}", c.members[via].client_url(), encode_component(key));
    once(&format!("delete {key} in kuberaft"), || c.http.delete(&url).send());
    let body = json!({"key": encode_base64(key.as_bytes())});
    let theirs = c.http.post(format!("{etcd}/v3/kv/deleterange")).json(&body).send();
    assert!(theirs.expect("delete in etcd").status().is_success(), "delete {key} in etcd");
}

#[test]
fn a_saved_snapshot_restores_into_a_new_cluster_with_the_keys_and_revisions_etcd_restores() {
    if !etcdctl_available()
        || !crate::require::available(Command::new("etcd").arg("--version").output().is_ok(), "etcd 3.4 (`etcd`)")
    {
        return;
    }
    let mut c = Cluster::new(151, 3);
    c.bootstrap();
    let (leader, _) = c.wait_leader(ELECTION);
    let follower = (leader + 1) % 3;
    let etcd_ip = "127.153.0.1";
    let _etcd = crate::harness::Etcd::start(etcd_ip, &["--election-timeout", "1000", "--heartbeat-interval", "100"]);
    let etcd = format!("http://{etcd_ip}:2379");

    // History: 60 keys, a third of them written again, every fifth deleted.
    for i in 0..60 {
        put_both(&c, i % 3, &etcd, &format!("app/k{i:02}"), &format!("v{i}"));
    }
    for i in (0..60).step_by(3) {
        put_both(&c, i % 3, &etcd, &format!("app/k{i:02}"), &format!("w{i}"));
    }
    for i in (0..60).step_by(5) {
        delete_both(&c, i % 3, &etcd, &format!("app/k{i:02}"));
    }
    let ours_before = everything(&c.members[follower].client_url());
    let etcd_before = everything(&etcd);
    assert_eq!(ours_before, etcd_before, "the same history on both before the save");
    let dir = c.dir.path().to_path_buf();

    // kuberaft's save from a follower, and etcdctl's of kuberaft and of etcd.
    let ours = dir.join("ours.db");
    let follower_url = c.members[follower].client_url();
    let (code, out, err) = kuberaft(&["snapshot", "save", ours.to_str().expect("path"), "--endpoints", &follower_url]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with(&format!("Snapshot saved at {}", ours.display())), "{out}");
    assert!(!dir.join("ours.db.part").exists(), "the part file is renamed");
    let via_etcdctl = dir.join("etcdctl-of-kuberaft.db");
    let saved =
        ctl(&follower_url, &["snapshot", "save", via_etcdctl.to_str().expect("path")], "", Duration::from_secs(20));
    assert!(saved.ok, "etcdctl snapshot save of a kuberaft member: {} {}", saved.out, saved.err);
    let theirs = dir.join("etcd.db");
    let saved = ctl(&etcd, &["snapshot", "save", theirs.to_str().expect("path")], "", Duration::from_secs(20));
    assert!(saved.ok, "etcdctl snapshot save of etcd: {}", saved.err);

    // Both files of kuberaft say what they hold: the revision and the live keys.
    let status = |file: &Path| -> Value {
        let (code, out, err) = kuberaft(&["snapshot", "status", file.to_str().expect("path"), "-w", "json"]);
        assert_eq!(code, Some(0), "{err}");
        serde_json::from_str(&out).expect("status JSON")
    };
    let etcd_status =
        ctl(&etcd, &["snapshot", "status", theirs.to_str().expect("path"), "-w", "json"], "", Duration::from_secs(10));
    let etcd_status: Value = serde_json::from_str(&etcd_status.out).expect("etcdctl's status JSON");
    for file in [&ours, &via_etcdctl] {
        let s = status(file);
        assert_eq!(s["revision"], etcd_status["revision"], "{}: the revision etcd's file has", file.display());
        assert_eq!(s["totalKey"], ours_before.1.len(), "{}", file.display());
        assert_eq!(s["format"], 2, "the stream format of the store's format 2");
        let names: Vec<&str> =
            s["members"].as_array().expect("members").iter().filter_map(|m| m["name"].as_str()).collect();
        assert_eq!(names.len(), 3, "{s}");
    }
    let (code, table, _) = kuberaft(&["snapshot", "status", ours.to_str().expect("path")]);
    assert_eq!(code, Some(0));
    assert!(table.starts_with("HASH"), "{table}");

    // Writes after the save, to both: no restored cluster may have them.
    for i in 0..10 {
        put_both(&c, leader, &etcd, &format!("app/late{i}"), "after");
    }
    put_both(&c, leader, &etcd, "app/k01", "changed after");

    // kuberaft: a new cluster of three from the file; etcd: one member from its own.
    let mut restored = Cluster::new(152, 3);
    restored.token = "restored".to_string();
    let all = [0, 1, 2];
    let initial = restored.initial_cluster(&all);
    for i in all {
        let data_dir = restored.members[i].data_dir.clone();
        let name = restored.members[i].name.clone();
        let (code, out, err) = restore(&ours, &data_dir, &name, &initial, &["--initial-cluster-token", "restored"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains(&format!("member {name}")), "{out}");
    }
    for i in all {
        restored.start(i, &initial, "new");
    }
    let etcd_restored_dir = dir.join("etcd-restored");
    let restore = ctl(
        &etcd,
        &[
            "snapshot",
            "restore",
            theirs.to_str().expect("path"),
            "--data-dir",
            etcd_restored_dir.to_str().expect("path"),
            "--name",
            "e0",
            "--initial-cluster",
            "e0=http://127.154.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.154.0.1:2380",
        ],
        "",
        Duration::from_secs(20),
    );
    assert!(restore.ok, "etcdctl snapshot restore: {}", restore.err);
    let _etcd_restored = RestoredEtcd::start("127.154.0.1", &etcd_restored_dir);
    restored.wait_leader(ELECTION);

    // The same keys at the same revisions as etcd's restore, and as before the save.
    let ours_after = everything(&restored.members[0].client_url());
    let etcd_after = everything("http://127.154.0.1:2379");
    assert_eq!(ours_after, etcd_after, "kuberaft's restore holds what etcd's does");
    assert_eq!(ours_after, ours_before, "and exactly what was saved: nothing written after it");

    // A new cluster: its own id and members; it takes writes at the next revision.
    let old = c.status(follower).expect("a status");
    let new = restored.status(1).expect("a status");
    assert_ne!(old["clusterId"], new["clusterId"], "a new cluster id");
    let mut names: Vec<&str> =
        new["members"].as_array().expect("members").iter().filter_map(|m| m["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["etcd-0", "etcd-1", "etcd-2"]);
    let next = restored.put_ok(2, "new", "x");
    assert_eq!(next as i64, ours_before.0 + 1, "the revision goes on from the snapshot's");
}

/// A damaged, cut or foreign file is refused with its reason, by `status` and `restore` alike,
/// and `restore` leaves no data directory behind; a data directory in use is never written.
#[test]
fn damaged_files_and_used_data_directories_are_refused_and_nothing_is_written() {
    let mut c = Cluster::new(155, 1);
    c.bootstrap();
    c.wait_leader(ELECTION);
    for i in 0..20 {
        c.put_ok(0, &format!("k{i}"), "v");
    }
    let dir = c.dir.path().to_path_buf();
    let good = dir.join("good.db");
    let endpoint = c.members[0].client_url();
    let (code, _, err) = kuberaft(&["snapshot", "save", good.to_str().expect("path"), "--endpoints", &endpoint]);
    assert_eq!(code, Some(0), "{err}");
    // etcdctl's rule and words: a snapshot is of one member.
    let two = format!("{endpoint},{endpoint}");
    let (code, _, err) =
        kuberaft(&["snapshot", "save", dir.join("two.db").to_str().expect("path"), "--endpoints", &two]);
    assert_eq!((code, err.trim()), (Some(2), "error: snapshot must be requested to one selected node, not multiple"));
    assert!(!dir.join("two.db").exists());

    let bytes = std::fs::read(&good).expect("the file");
    let mut flipped = bytes.clone();
    flipped[40] ^= 0x01;
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("flipped.db", flipped, "its SHA-256 does not match"),
        ("cut.db", bytes[..bytes.len() - 512].to_vec(), "its SHA-256 does not match"),
        ("short.db", bytes[..100].to_vec(), "is not a snapshot's length"),
        ("foreign.db", vec![7u8; 544], "its SHA-256 does not match"),
    ];
    for (name, content, why) in cases {
        let file = dir.join(name);
        std::fs::write(&file, content).expect("write");
        let (code, _, err) = kuberaft(&["snapshot", "status", file.to_str().expect("path")]);
        assert_eq!(code, Some(1), "{name}");
        assert!(err.contains(why), "{name}: {err}");
        let target = dir.join(format!("{name}.restored"));
        let (code, _, err) = restore(&file, &target, "n", "n=http://127.155.0.9:2380", &[]);
        assert_eq!(code, Some(1), "{name}");
        assert!(err.contains(why), "{name}: {err}");
        assert!(
            !target.exists() && !dir.join(format!("{name}.restored.restoring")).exists(),
            "{name}: nothing written"
        );
    }

    // A stream whose SHA-256 matches but whose records are damaged: the CRC-32 finds it.
    let mut resealed = bytes.clone();
    resealed[40] ^= 0x01;
    let body = resealed.len() - 32;
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(&resealed[..body])
    };
    resealed[body..].copy_from_slice(&sha);
    let file = dir.join("resealed.db");
    std::fs::write(&file, resealed).expect("write");
    let (code, _, err) = kuberaft(&["snapshot", "status", file.to_str().expect("path")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("MVCC snapshot"), "{err}");

    // The running member's own directory, and a name the list does not have.
    let used = c.members[0].data_dir.clone();
    let listing = || std::fs::read_dir(&used).expect("list").count();
    let before = listing();
    let (code, _, err) = restore(&good, &used, "etcd-0", &c.initial_cluster(&[0]), &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("exists and is not empty"), "{err}");
    assert_eq!(listing(), before);
    let (code, _, err) = restore(&good, &dir.join("other"), "nobody", "n=http://127.155.0.9:2380", &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("does not list this member's name 'nobody'"), "{err}");

    // As an init container runs it (`spec.bootstrap.restore`): a member that joins restores
    // nothing; a second run keeps what the first made; a volume of another cluster is refused.
    let initial = "n=http://127.155.0.9:2380";
    let target = dir.join("init");
    let joining = ["--keep-existing", "--initial-cluster-state", "existing"];
    let (code, out, err) = restore(&good, &target, "n", initial, &joining);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("nothing restored: --initial-cluster-state is existing"), "{out}");
    assert!(!target.exists(), "nothing written for a member that joins");
    let (code, out, err) = restore(&good, &target, "n", initial, &["--keep-existing"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("restored the snapshot of revision"), "{out}");
    let meta = std::fs::read(target.join("member.json")).expect("member.json");
    let (code, out, err) = restore(&good, &target, "n", initial, &["--keep-existing"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("already holds member n of cluster"), "{out}");
    assert_eq!(std::fs::read(target.join("member.json")).expect("member.json"), meta, "kept as it was");
    let other_token = ["--keep-existing", "--initial-cluster-token", "another-cluster"];
    let (code, _, err) = restore(&good, &target, "n", initial, &other_token);
    assert_eq!(code, Some(1));
    assert!(err.contains("the volume of an earlier cluster? Delete it to restore into it"), "{err}");
    assert_eq!(std::fs::read(target.join("member.json")).expect("member.json"), meta, "left alone");
    // Without --keep-existing a used directory is refused, as before.
    let (code, _, err) = restore(&good, &target, "n", initial, &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("exists and is not empty"), "{err}");
    // An s3:// file needs its endpoint and credentials, and says so before reading anything.
    let (code, _, err) = restore(Path::new("s3://backups/a.snap"), &dir.join("s3"), "n", initial, &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("an s3:// snapshot needs --s3-endpoint"), "{err}");
    assert!(!dir.join("s3").exists());
}
