//! `kubectl raft` (the binary started as `kubectl-raft`, and as `kuberaft kubectl`) against the
//! fake API server on a loopback port, through a kubeconfig as kubectl users have one, with a
//! RaftCluster whose members are real member processes (`kuberaft node` on 127.63.0.x): the API
//! server's pod proxy forwards to them, as the real one forwards to the pods.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fake_api::*;

const NET: u8 = 63;
const MEMBERS: usize = 3;

fn ip(i: usize) -> String {
    format!("127.{NET}.0.{}", i + 1)
}

fn client_url(i: usize) -> String {
    format!("http://{}:2379", ip(i))
}

/// Three real members, stopped (killed) when dropped.
struct Members {
    children: Vec<Option<Child>>,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Drop for Members {
    fn drop(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Members {
    fn start() -> Members {
        let dir = tempfile::tempdir().expect("tempdir");
        let initial: Vec<String> = (0..MEMBERS).map(|i| format!("etcd-{i}=http://{}:2380", ip(i))).collect();
        let mut members = Members {
            children: Vec::new(),
            http: crate::http_support::client().timeout(Duration::from_secs(2)).build().expect("http client"),
            dir,
        };
        for i in 0..MEMBERS {
            let log = std::fs::File::create(members.dir.path().join(format!("etcd-{i}.log"))).expect("log");
            let child = Command::new(env!("CARGO_BIN_EXE_kuberaft"))
                .arg("node")
                .args(["--name", &format!("etcd-{i}")])
                .arg("--data-dir")
                .arg(members.dir.path().join(format!("etcd-{i}")))
                .args(["--listen-client-url", &client_url(i), "--advertise-client-url", &client_url(i)])
                .args(["--listen-peer-url", &format!("http://{}:2380", ip(i))])
                .args(["--advertise-peer-url", &format!("http://{}:2380", ip(i))])
                .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "plugin-test"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start kuberaft node");
            members.children.push(Some(child));
        }
        members
    }

    async fn status(&self, i: usize) -> Option<Value> {
        let answer = self.http.get(format!("{}/v1/status", client_url(i))).send().await.ok()?;
        answer.json().await.ok()
    }

    /// Waits until every running member names one leader in one term and knows every member's
    /// client URL (a member learns the others' from the log, a moment after they start):
    /// (leader, term, statuses).
    async fn leader(&self) -> (String, u64, Vec<Value>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut statuses = Vec::new();
            for i in (0..MEMBERS).filter(|i| self.children[*i].is_some()) {
                statuses.extend(self.status(i).await);
            }
            let leader = statuses.first().and_then(|s| s["leader"].as_str()).unwrap_or_default().to_string();
            let term = statuses.first().and_then(|s| s["term"].as_u64()).unwrap_or(0);
            let running = self.children.iter().filter(|c| c.is_some()).count();
            if !leader.is_empty()
                && statuses.len() == running
                && statuses.iter().all(|s| s["leader"] == leader.as_str() && s["term"] == term)
                && statuses.iter().all(|s| {
                    s["members"].as_array().is_some_and(|ms| {
                        ms.len() == MEMBERS && ms.iter().all(|m| m["clientURL"].as_str().is_some_and(|u| !u.is_empty()))
                    })
                })
            {
                return (leader, term, statuses);
            }
            assert!(Instant::now() < deadline, "no leader within 30 s: {statuses:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn logs(&self) -> String {
        (0..MEMBERS)
            .map(|i| {
                let text = std::fs::read_to_string(self.dir.path().join(format!("etcd-{i}.log"))).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!("--- etcd-{i}\n{}", lines[lines.len().saturating_sub(10)..].join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What one run of the plugin printed.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The plugin as kubectl starts it: the binary under the name `kubectl-raft`, with a kubeconfig.
struct Plugin {
    dir: tempfile::TempDir,
}

impl Plugin {
    /// A kubeconfig of the fake at `server`: context `fake` (namespace `ns`, the current one)
    /// and `elsewhere` (namespace `other-ns`).
    fn new(server: std::net::SocketAddr) -> Plugin {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kuberaft"), dir.path().join("kubectl-raft")).expect("symlink");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{server}\n\
             users:\n- name: tester\n  user:\n    token: not-checked\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: {NS}\n\
             - name: elsewhere\n  context:\n    cluster: fake\n    user: tester\n    namespace: other-ns\n"
        );
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig).expect("kubeconfig");
        Plugin { dir }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    async fn run_program(&self, program: &Path, args: &[&str]) -> Run {
        let output = tokio::process::Command::new(program)
            .args(args)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(60), output)
            .await
            .unwrap_or_else(|_| panic!("{args:?} did not end within 60 s"))
            .expect("run the plugin");
        let run = Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        // Shown when the test fails (or with --nocapture): what each command printed.
        eprintln!("$ {} {}  # exit {}\n{}{}", program.display(), args.join(" "), run.code, run.stdout, run.stderr);
        run
    }

    /// `kubectl raft ARGS`.
    async fn run(&self, args: &[&str]) -> Run {
        self.run_program(&self.dir.path().join("kubectl-raft"), args).await
    }

    /// `kuberaft kubectl ARGS`.
    async fn run_subcommand(&self, args: &[&str]) -> Run {
        let mut all = vec!["kubectl"];
        all.extend_from_slice(args);
        self.run_program(Path::new(env!("CARGO_BIN_EXE_kuberaft")), &all).await
    }
}

/// The RaftCluster `etcd` as the operator would have written it for these members.
fn put_cluster(api: &FakeApi, leader: &str, term: u64, statuses: &[Value]) {
    let members: Vec<Value> = statuses
        .iter()
        .map(|s| {
            json!({"name": s["name"], "id": s["id"], "role": s["role"], "healthy": true,
                   "appliedIndex": s["appliedIndex"], "lag": 0})
        })
        .collect();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastTransitionTime": "2025-01-01T00:00:00Z"})
    };
    api.put(
        &cluster_path("etcd"),
        json!({
            "apiVersion": "kuberaft.io/v1alpha1", "kind": "RaftCluster",
            "metadata": {"name": "etcd", "namespace": NS, "uid": "uid-etcd", "generation": 1},
            "spec": {"replicas": 3},
            "status": {
                "phase": "Running", "leader": leader, "term": term, "commitIndex": 5,
                "replicas": 3, "readyReplicas": 3, "members": members,
                "endpoints": (0..MEMBERS).map(client_url).collect::<Vec<_>>(),
                "conditions": [
                    condition("Available", "True", "LeaderElected", &format!("{leader} leads with a majority of the voters")),
                    condition("Progressing", "False", "Reconciled", "the cluster is what the spec asks for"),
                    condition("Degraded", "False", "Healthy", "every voter is healthy"),
                    condition("MembershipConsistent", "True", "Consistent", "every healthy member reports the membership"),
                ],
            },
        }),
    );
}

fn proxied_paths(api: &FakeApi) -> Vec<String> {
    api.lock().history.iter().filter(|c| c.path.contains("/proxy/")).map(|c| c.path.clone()).collect()
}

/// Issue 18, part 6: every command of the plugin against the fake API server and real members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_raft_reads_and_changes_a_raft_cluster_through_the_api_server() {
    let mut members = Members::start();
    let (leader, term, statuses) = members.leader().await;
    let api = FakeApi::default();
    for i in 0..MEMBERS {
        let to: std::net::SocketAddr = format!("{}:2379", ip(i)).parse().expect("an address");
        api.proxy_to(&format!("etcd-{i}"), 2379, to);
    }
    put_cluster(&api, &leader, term, &statuses);
    let served = api.serve().await;
    let plugin = Plugin::new(served.addr);

    // status: the operator's view, from the resource.
    let run = plugin.run(&["status", "etcd"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    for expected in [
        "Name:       ns/etcd\n".to_string(),
        "Phase:      Running\n".to_string(),
        format!("Leader:     {leader}\n"),
        format!("Term:       {term}\n"),
        "Replicas:   3 desired, 3 ready\n".to_string(),
        "Paused:     no\n".to_string(),
        format!("Endpoints:  {},{},{}\n", client_url(0), client_url(1), client_url(2)),
        "CONDITION              STATUS   REASON          MESSAGE\n".to_string(),
        format!("Available              True     LeaderElected   {leader} leads with a majority of the voters\n"),
        "MEMBER   ID".to_string(),
    ] {
        assert!(run.stdout.contains(&expected), "{expected:?} in\n{}", run.stdout);
    }
    assert_eq!(run.stdout.lines().filter(|l| l.starts_with("etcd-")).count(), 3, "{}", run.stdout);
    // The same as `kuberaft kubectl`, and as JSON.
    let same = plugin.run_subcommand(&["status", "etcd"]).await;
    assert_eq!((same.code, &same.stdout), (0, &run.stdout), "{same:?}");
    let run = plugin.run(&["status", "etcd", "-o", "json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let json: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(
        (json["status"]["leader"].as_str(), json["status"]["term"].as_u64()),
        (Some(leader.as_str()), Some(term))
    );
    assert_eq!(json["namespace"], NS);

    // members: each member as it reports itself, through the pod proxy.
    let run = plugin.run(&["members", "etcd"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("NAME     ID"), "{}", run.stdout);
    assert!(lines[0].ends_with("COMMIT   APPLIED   HEALTH"), "{}", run.stdout);
    for (i, status) in statuses.iter().enumerate() {
        let row = lines.iter().find(|l| l.starts_with(&format!("etcd-{i} "))).expect("a row per member");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1], status["id"].as_str().expect("id"), "{row}");
        assert_eq!(cells[2], if status["name"] == leader.as_str() { "leader" } else { "follower" }, "{row}");
        assert_eq!(cells[3], term.to_string(), "{row}");
        assert_eq!(cells[4], leader, "{row}");
        assert_eq!(cells[7], "healthy", "{row}");
    }
    let proxied = proxied_paths(&api);
    for i in 0..MEMBERS {
        let path = format!("/api/v1/namespaces/{NS}/pods/etcd-{i}:2379/proxy/v1/status");
        assert!(proxied.contains(&path), "{path} in {proxied:?}");
    }

    // endpoints: every member holds the operator's list.
    let run = plugin.run(&["endpoints", "etcd"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("Agree: the 3 members hold the same list of 3, as the operator's."), "{}", run.stdout);
    let all = format!("{},{},{}", client_url(0), client_url(1), client_url(2));
    assert_eq!(run.stdout.lines().filter(|l| l.starts_with("etcd-") && l.ends_with(&all)).count(), 3, "{}", run.stdout);
    // An operator's list that differs: said, and exit 1.
    let mut object = api.get(&cluster_path("etcd")).expect("the cluster");
    object["status"]["endpoints"] = json!([client_url(0), client_url(1)]);
    api.put(&cluster_path("etcd"), object);
    let run = plugin.run(&["endpoints", "etcd"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("Disagree: the members' list differs from the operator's"), "{}", run.stdout);
    let operators_row = format!("(operator)   -                  {},{}\n", client_url(0), client_url(1));
    assert!(run.stdout.contains(&operators_row), "{}", run.stdout);
    let why = format!("(status.endpoints): the operator's does not list {}\n", client_url(2));
    assert!(run.stderr.ends_with(&why), "{}", run.stderr);
    put_cluster(&api, &leader, term, &statuses);

    // transfer-leader: to a follower named, through the leader's pod proxy.
    let follower = (0..MEMBERS).map(|i| format!("etcd-{i}")).find(|n| *n != leader).expect("a follower");
    let run = plugin.run(&["transfer-leader", "etcd", "--to", &follower]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with(&format!("leadership moved from {leader} to {follower} (term ")), "{}", run.stdout);
    let (now_leading, new_term, _) = members.leader().await;
    assert_eq!(now_leading, follower);
    assert!(new_term > term);
    let transfer = format!("/api/v1/namespaces/{NS}/pods/{leader}:2379/proxy/v1/leader/transfer");
    assert!(proxied_paths(&api).contains(&transfer), "{transfer}");
    let run = plugin.run(&["transfer-leader", "etcd", "--to", "etcd-7"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.starts_with("error: no member etcd-7 in RaftCluster etcd (members: etcd-0, etcd-1, etcd-2)"),
        "{}",
        run.stderr
    );

    // snapshot: refused without a destination; then a RaftSnapshot, once per name.
    let run = plugin.run(&["snapshot", "etcd", "before-upgrade"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("has no spec.backup"), "{}", run.stderr);
    assert!(api.get(&snapshot_path("before-upgrade")).is_none());
    let mut object = api.get(&cluster_path("etcd")).expect("the cluster");
    object["spec"]["backup"] =
        json!({"schedule": "0 3 * * *", "destination": {"persistentVolumeClaim": {"claimName": "backups"}}});
    api.put(&cluster_path("etcd"), object);
    let run = plugin.run(&["snapshot", "etcd", "before-upgrade", "--deletion-policy", "delete"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("raftsnapshot.kuberaft.io/before-upgrade created for RaftCluster etcd"),
        "{}",
        run.stdout
    );
    let snapshot = api.get(&snapshot_path("before-upgrade")).expect("the RaftSnapshot");
    assert_eq!(snapshot["kind"], "RaftSnapshot");
    assert_eq!(snapshot["spec"], json!({"clusterName": "etcd", "deletionPolicy": "Delete"}));
    let run = plugin.run(&["snapshot", "etcd", "before-upgrade"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("RaftSnapshot before-upgrade exists already"), "{}", run.stderr);
    let run = plugin.run(&["snapshot", "etcd"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let named = api.lock().objects.keys().filter(|p| p.starts_with(&snapshot_path("etcd-2"))).count();
    assert_eq!(named, 1, "a name of the cluster and the time");
    let run = plugin.run(&["snapshot", "etcd", "Not_A_Name"]).await;
    assert_eq!(run.code, 2, "{run:?}");

    // pause and resume: spec.paused.
    let run = plugin.run(&["pause", "etcd"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("raftcluster.kuberaft.io/etcd paused: the operator changes nothing"),
        "{}",
        run.stdout
    );
    assert_eq!(api.get(&cluster_path("etcd")).expect("cluster")["spec"]["paused"], true);
    assert_eq!(api.get(&cluster_path("etcd")).expect("cluster")["spec"]["replicas"], 3, "the rest of the spec stays");
    let run = plugin.run(&["pause", "etcd"]).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "raftcluster.kuberaft.io/etcd paused already\n"), "{run:?}");
    let run = plugin.run(&["status", "etcd"]).await;
    assert!(run.stdout.contains("Paused:     yes\n"), "{}", run.stdout);
    let run = plugin.run(&["resume", "etcd"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(api.get(&cluster_path("etcd")).expect("cluster")["spec"]["paused"], false);

    // A cluster that is not there, the namespace of another context, and -n over it.
    let run = plugin.run(&["status", "nope"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stdout, "");
    assert!(run.stderr.starts_with("error: RaftCluster nope in namespace ns not found"), "{}", run.stderr);
    let run = plugin.run(&["--context", "elsewhere", "members", "etcd"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.starts_with("error: RaftCluster etcd in namespace other-ns not found"), "{}", run.stderr);
    let run = plugin.run(&["--context", "elsewhere", "-n", NS, "status", "etcd"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let run = plugin.run(&["--context", "nowhere", "status", "etcd"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.starts_with("error: --context nowhere (in "), "{}", run.stderr);

    // Usage errors are 2; help is 0 and says kubectl raft.
    let run = plugin.run(&["status"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    let run = plugin.run(&["--help"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("Usage: kubectl raft [OPTIONS] <COMMAND>"), "{}", run.stdout);

    // A member that does not answer: its row says so, and the command fails after printing.
    let down = (0..MEMBERS).find(|i| format!("etcd-{i}") != follower).expect("a member that does not lead");
    members.kill(down);
    let run = plugin.run(&["members", "etcd"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let row = run.stdout.lines().find(|l| l.starts_with(&format!("etcd-{down} "))).expect("its row");
    let refused =
        format!("unreachable: HTTP 503: error trying to reach service: {}:2379: Connection refused", ip(down));
    assert!(row.contains(&refused), "{row}");
    assert!(run.stderr.starts_with("error: 1 of 3 members did not answer"), "{}", run.stderr);
    assert_eq!(run.stdout.lines().filter(|l| l.ends_with("healthy")).count(), 2, "{}", run.stdout);

    // With spec.tls the proxy is asked for https:POD:2379, and a failure says why it may fail.
    let mut object = api.get(&cluster_path("etcd")).expect("the cluster");
    object["spec"]["tls"] = json!({"auto": {}});
    api.put(&cluster_path("etcd"), object);
    let run = plugin.run(&["members", "etcd"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let path = format!("/api/v1/namespaces/{NS}/pods/https:etcd-0:2379/proxy/v1/status");
    assert!(proxied_paths(&api).contains(&path), "{path}");
    assert!(run.stderr.contains("require a client certificate, which the API server's pod proxy does not present"));
}

/// The Krew manifest: this version, the four platforms, each the release's archive with the
/// binary linked as `kubectl-raft` (the name the binary answers to as the plugin).
#[test]
fn the_krew_manifest_names_this_version_and_its_four_platforms() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/plugins/krew/raft.yaml");
    let text = std::fs::read_to_string(path).expect("plugins/krew/raft.yaml");
    let manifest: Value = serde_saphyr::from_str(&text).expect("YAML");
    assert_eq!(manifest["apiVersion"], "krew.googlecontainertools.github.com/v1alpha2");
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(manifest["metadata"]["name"], "raft", "kubectl raft");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(manifest["spec"]["version"], format!("v{version}"));
    for field in ["homepage", "shortDescription", "description", "caveats"] {
        assert!(manifest["spec"][field].as_str().is_some_and(|t| !t.trim().is_empty()), "{field}");
    }
    let platforms = manifest["spec"]["platforms"].as_array().expect("platforms");
    let mut seen = Vec::new();
    for platform in platforms {
        let labels = &platform["selector"]["matchLabels"];
        let (os, arch) = (labels["os"].as_str().expect("os"), labels["arch"].as_str().expect("arch"));
        seen.push(format!("{os}/{arch}"));
        assert_eq!(
            platform["uri"],
            format!("https://github.com/kuberaft/kuberaft/releases/download/v{version}/kuberaft-v{version}-{os}-{arch}.tar.gz")
        );
        let sha = platform["sha256"].as_str().expect("sha256");
        assert!(sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{sha}");
        assert_eq!(platform["files"], json!([{"from": "kuberaft", "to": "kubectl-raft"}]));
        assert_eq!(platform["bin"], PLUGIN_BIN);
    }
    seen.sort();
    assert_eq!(seen, ["darwin/amd64", "darwin/arm64", "linux/amd64", "linux/arm64"]);
}

/// The file name Krew links, which the binary recognises.
const PLUGIN_BIN: &str = kuberaft::cli::kubectl::PLUGIN_NAME;
