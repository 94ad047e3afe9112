//! Issue 16: members that speak TLS to each other and authenticate each other. A process
//! without the cluster's certificate, with a certificate of another cluster's CA, or with one of
//! the cluster's CA issued for another host, can neither join nor move the term; the same forged
//! message that moves the term of a plain cluster.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use kuberaft::base::pki::{Authority, Issued};
use kuberaft::node::transport::{
    encode_messages, HEADER_CLUSTER_ID, HEADER_FROM, HEADER_PEER_URL, JOIN_PATH, MESSAGES_PATH, PEER_CONTENT_TYPE,
};
use kuberaft::raft::{Message, MessageBody};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::harness::{issued_files, wait_for, write_issued, Cluster, METRICS_PORT, PEER_PORT};
use crate::ELECTION;

/// A TLS client's configuration trusting `server_ca` and presenting `cert` (if any).
fn tls_client_config(server_ca: &str, cert: Option<&Issued>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(server_ca.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("ca");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    match cert {
        Some(issued) => {
            let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes()).map(|c| c.expect("pem")).collect();
            let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key");
            builder.with_client_auth_cert(chain, key).expect("client cert")
        }
        None => builder.with_no_client_auth(),
    }
}

/// How a forger talks to a peer port: in plain HTTP, or in TLS trusting `server_ca` and
/// presenting `cert` (if any).
enum Forger<'a> {
    Plain,
    Tls { server_ca: &'a str, cert: Option<&'a Issued> },
}

/// POSTs `body` to `path` on `ip`'s peer port as `from` of `cluster` would; the answer's status
/// line, or why there is none.
/// `from` may carry further header lines after the id (`"7\r\nx-kuberaft-peer-url: ..."`).
fn forge(forger: &Forger<'_>, ip: &str, path: &str, cluster: &str, from: &str, body: &[u8]) -> Result<String, String> {
    let content_type = if path == JOIN_PATH { "application/json" } else { PEER_CONTENT_TYPE };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {ip}:{PEER_PORT}\r\nContent-Type: {content_type}\r\n\
         {HEADER_CLUSTER_ID}: {cluster}\r\n{HEADER_FROM}: {from}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    let mut tcp = TcpStream::connect((ip, PEER_PORT)).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    match forger {
        Forger::Plain => {
            tcp.write_all(&request).map_err(|e| format!("write: {e}"))?;
            let _ = tcp.read_to_end(&mut answer);
        }
        Forger::Tls { server_ca, cert } => {
            let name = ServerName::try_from(ip.to_string()).expect("name");
            let config = tls_client_config(server_ca, *cert);
            let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            tls.write_all(&request).map_err(|e| format!("TLS: {e}"))?;
            tls.read_to_end(&mut answer).map_err(|e| format!("TLS: {e}"))?;
        }
    }
    let text = String::from_utf8_lossy(&answer).to_string();
    match text.lines().next() {
        Some(line) if line.starts_with("HTTP/1.1") => Ok(text),
        _ => Err(format!("no HTTP answer ({} bytes)", answer.len())),
    }
}

/// A heartbeat of a term 10 past `term` from `from` to `to`: a follower that takes it moves to
/// that term and follows the forger.
fn forged_heartbeat(from: u64, to: u64, term: u64) -> Vec<u8> {
    let body = MessageBody::Heartbeat { commit: 0, read_seq: 0 };
    encode_messages(&[Message { from, to, term: term + 10, body }]).expect("encode")
}

fn ids(c: &Cluster) -> (String, Vec<u64>) {
    let status = c.status(0).expect("status");
    let cluster = status["clusterId"].as_str().expect("cluster id").to_string();
    let ids = (0..c.members.len())
        .map(|i| u64::from_str_radix(&c.member_id(i).expect("member id"), 16).expect("hex id"))
        .collect();
    (cluster, ids)
}

fn term_of(c: &Cluster, i: usize) -> u64 {
    c.status(i).and_then(|s| s["term"].as_u64()).unwrap_or(0)
}

/// Today's hole, as a control: over plain HTTP, anyone who can reach the peer port and read
/// the cluster id can move a member's term with one forged message.
#[test]
fn a_forged_message_moves_the_term_of_a_plain_cluster() {
    let mut c = Cluster::new(138, 3);
    c.bootstrap();
    let (leader, term) = c.wait_leader(ELECTION);
    let follower = (leader + 1) % 3;
    let (cluster, ids) = ids(&c);
    let body = forged_heartbeat(ids[leader], ids[follower], term);
    let answer =
        forge(&Forger::Plain, &c.members[follower].ip, MESSAGES_PATH, &cluster, &format!("{:x}", ids[leader]), &body);
    assert!(answer.as_deref().is_ok_and(|a| a.starts_with("HTTP/1.1 204")), "{answer:?}");
    wait_for("the follower to take the forged term", Duration::from_secs(5), || {
        (term_of(&c, follower) >= term + 10).then_some(())
    });
}

/// With peer TLS and `--peer-client-cert-auth`, the same forged message is refused however it
/// comes: in plain HTTP, in TLS without a certificate, with a certificate of another cluster's
/// CA, and with a certificate of this cluster's CA issued for another host (one member's
/// certificate speaking for another included). Each is refused with its reason, and the leader
/// and term stay as they were.
#[test]
fn forged_and_foreign_peers_are_refused_and_move_nothing() {
    let ca = Authority::new("cluster-ca").expect("ca");
    let mut c = Cluster::new(139, 3);
    c.with_tls(&ca, false);
    c.bootstrap();
    let (leader, term) = c.wait_leader(ELECTION);
    c.put_ok(leader, "before", "1");
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let (cluster, ids) = ids(&c);
    let from = format!("{:x}", ids[leader]);
    let body = forged_heartbeat(ids[leader], ids[follower], term);
    let ip = c.members[follower].ip.clone();

    // Plain HTTP: the port speaks TLS only.
    let plain = forge(&Forger::Plain, &ip, MESSAGES_PATH, &cluster, &from, &body);
    assert!(plain.is_err(), "{plain:?}");

    // TLS without a certificate: the handshake is refused.
    let no_cert =
        forge(&Forger::Tls { server_ca: ca.cert_pem(), cert: None }, &ip, MESSAGES_PATH, &cluster, &from, &body);
    assert!(no_cert.as_ref().is_err_and(|e| e.contains("TLS")), "{no_cert:?}");

    // Another cluster's CA: this side refuses the member's certificate, the member refuses ours.
    let foreign = Authority::new("another-ca").expect("ca");
    let foreign_cert = foreign.issue("etcd-x", &[&c.members[leader].ip]).expect("issue");
    let refused = forge(
        &Forger::Tls { server_ca: foreign.cert_pem(), cert: Some(&foreign_cert) },
        &ip,
        MESSAGES_PATH,
        &cluster,
        &from,
        &body,
    );
    assert!(refused.as_ref().is_err_and(|e| e.contains("UnknownIssuer")), "{refused:?}");
    let trusting = forge(
        &Forger::Tls { server_ca: ca.cert_pem(), cert: Some(&foreign_cert) },
        &ip,
        MESSAGES_PATH,
        &cluster,
        &from,
        &body,
    );
    assert!(trusting.is_err(), "a certificate of another CA is refused: {trusting:?}");

    // This cluster's CA, but issued for a host that is no member: a 403 naming why.
    let stray = ca.issue("stray", &["127.139.0.99"]).expect("issue");
    let tls = Forger::Tls { server_ca: ca.cert_pem(), cert: Some(&stray) };
    let answer = forge(&tls, &ip, MESSAGES_PATH, &cluster, &from, &body).expect("an HTTP answer");
    assert!(answer.starts_with("HTTP/1.1 403") && answer.contains("not issued for"), "{answer}");
    // ... nor under an id no member has, claiming its own host as its peer URL,
    let unknown = format!("abc\r\n{HEADER_PEER_URL}: https://127.139.0.99:{PEER_PORT}");
    let answer = forge(&tls, &ip, MESSAGES_PATH, &cluster, &unknown, &forged_heartbeat(0xabc, ids[follower], term))
        .expect("an HTTP answer");
    assert!(answer.starts_with("HTTP/1.1 403") && answer.contains("knows the peer URL of"), "{answer}");
    // ... nor naming no sender at all.
    let answer = forge(&tls, &ip, MESSAGES_PATH, &cluster, "", &body).expect("an HTTP answer");
    assert!(answer.starts_with("HTTP/1.1 403") && answer.contains("names no sending member"), "{answer}");
    // One member's own certificate speaking for another member (the leader).
    let others = ca.issue("etcd-other", &[&c.members[other].ip]).expect("issue");
    let tls = Forger::Tls { server_ca: ca.cert_pem(), cert: Some(&others) };
    let answer = forge(&tls, &ip, MESSAGES_PATH, &cluster, &from, &body).expect("an HTTP answer");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // Nor can it claim another member's id to join.
    let join = format!(r#"{{"clusterId":"{cluster}","id":"{from}"}}"#);
    let answer = forge(&tls, &c.members[leader].ip, JOIN_PATH, &cluster, &from, join.as_bytes());
    assert!(answer.as_deref().is_ok_and(|a| a.starts_with("HTTP/1.1 403")), "{answer:?}");

    // The member said why, and nothing moved: same leader, same term, writes still commit.
    let log = c.log_text(follower);
    assert!(log.contains("TLS handshake failed"), "the member logs refused handshakes");
    assert!(log.contains("is not issued for") || log.contains("not its own"), "the member logs refused identities");
    assert_eq!(c.wait_leader(ELECTION), (leader, term), "the leader and term did not change");
    c.put_ok(follower, "after", "2");
    assert_eq!(term_of(&c, follower), term);
}

/// A member that joins a cluster with `--peer-client-cert-auth` takes messages from a leader
/// that was added after the bootstrap: it knows the leader's id and peer URL from the leader's
/// view it joined through, before its log tells it the configuration. (Its `--initial-cluster`
/// names the leader too, but under the id the bootstrap would have given it, which is not the
/// id the leader was added with.)
#[test]
fn a_member_joining_a_tls_cluster_takes_messages_from_a_leader_added_after_the_bootstrap() {
    let ca = Authority::new("cluster-ca").expect("ca");
    let mut c = Cluster::new(141, 3);
    for i in 3..5 {
        c.add_member_slot(i);
    }
    c.with_tls(&ca, false);
    let initial = c.initial_cluster(&[0, 1, 2]);
    for i in 0..3 {
        c.start(i, &initial, "new");
    }
    let (leader, _) = c.wait_leader(ELECTION);
    c.put_ok(leader, "k", "v");
    for i in 3..5 {
        let (leader, _) = c.wait_leader(ELECTION);
        let id = crate::add_member(&c, leader, i, true);
        let everyone: Vec<usize> = (0..=i).collect();
        c.start(i, &c.initial_cluster(&everyone), "existing");
        wait_for(&format!("etcd-{i} catches up"), ELECTION, || {
            (c.get(i, "k", "serializable") == (200, "v".into())).then_some(())
        });
        if i == 3 {
            wait_for("etcd-3 is promoted", ELECTION, || {
                let url = format!("{}/v1/members/{id}/promote", c.members[leader].client_url());
                c.http.post(url).send().ok()?.status().is_success().then_some(())
            });
            c.transfer_leader(leader, 3, ELECTION);
        }
    }
    c.put_ok(3, "k2", "w");
    wait_for("etcd-4 applies the added leader's writes", ELECTION, || {
        (c.get(4, "k2", "serializable") == (200, "w".into())).then_some(())
    });
    let log = c.log_text(4);
    assert!(!log.contains("not a member this one knows"), "etcd-4 refused the leader: {}", c.log_tail(4));
}

/// etcdctl 3.4 over TLS with a client certificate, through every member of a cluster whose
/// both ports require certificates: writes and reads through followers (which reach the leader
/// over the peer port's TLS, and, for a put that asks for the previous value, over the leader's
/// TLS client port), and a lock (the member's lock service calls its own TLS client port).
/// Without a certificate of the CA, etcdctl is refused. kuberaft's own CLI takes etcdctl's
/// `--cacert`, `--cert` and `--key`, and says what is missing without them. Probes and metrics
/// are read in plain HTTP on `--listen-metrics-urls`.
#[test]
fn etcdctl_and_the_cli_speak_to_a_cluster_with_tls_on_both_ports() {
    if !crate::grpc_api::etcdctl_available() {
        return;
    }
    let ca = Authority::new("cluster-ca").expect("ca");
    let mut c = Cluster::new(140, 3);
    let ca_file = c.with_tls(&ca, true);
    let (cert, key) = c.issue_client(&ca);
    c.bootstrap();
    let flags = [
        format!("--cacert={}", ca_file.display()),
        format!("--cert={}", cert.display()),
        format!("--key={}", key.display()),
    ];
    let run = |i: usize, args: &[&str]| {
        let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
        all.extend(args);
        crate::grpc_api::ctl(&c.members[i].client_url(), &all, "", Duration::from_secs(15))
    };
    wait_for("a leader, seen through etcdctl over TLS", ELECTION, || {
        let status = run(0, &["endpoint", "status", "-w", "json"]);
        (status.ok && status.out.contains("\"leader\":") && !status.out.contains("\"leader\":0")).then_some(())
    });
    for i in 0..3 {
        let key = format!("k{i}");
        let put = run(i, &["put", &key, "v"]);
        assert!(put.ok && put.out.trim() == "OK", "put through etcd-{i}: {put:?}");
        let get = run(i, &["get", &key, "--print-value-only"]);
        assert_eq!((get.ok, get.out.trim()), (true, "v"), "get through etcd-{i}: {get:?}");
        let again = run(i, &["put", &key, "w", "--prev-kv"]);
        assert!(
            again.ok && again.out.contains("OK") && again.out.contains(&key),
            "put --prev-kv through etcd-{i}: {again:?}"
        );
    }
    let lock = run(1, &["lock", "tls-lock", "echo", "held"]);
    assert!(lock.ok && lock.out.contains("held"), "etcdctl lock over TLS: {lock:?}");

    let paths = [ca_file.display().to_string(), cert.display().to_string(), key.display().to_string()];
    let tls = ["--cacert", &paths[0], "--cert", &paths[1], "--key", &paths[2]];
    let with_tls = |args: &[&str]| crate::mvcc_api::cli(&c, &[args, &tls[..]].concat(), None);
    let put = with_tls(&["kv", "put", "cli", "yes"]);
    assert_eq!(put.0, Some(0), "kuberaft kv put over TLS: {}", put.2);
    let get = with_tls(&["kv", "get", "cli"]);
    assert!(get.0 == Some(0) && String::from_utf8_lossy(&get.1).contains("yes"), "kuberaft kv get over TLS: {get:?}");
    let plain = crate::mvcc_api::cli(&c, &["kv", "get", "cli"], None);
    assert!(plain.0 != Some(0) && plain.2.contains("need --cacert"), "{plain:?}");
    let anonymous = crate::mvcc_api::cli(&c, &["kv", "get", "cli", "--cacert", &paths[0]], None);
    assert!(anonymous.0 != Some(0), "a client without a certificate is refused: {anonymous:?}");

    // Probes and scrapes need no certificate: `--listen-metrics-urls` serves them, and only them,
    // in plain HTTP, while the client port refuses plain HTTP.
    for m in &c.members {
        let url = |path: &str| format!("http://{}:{METRICS_PORT}{path}", m.ip);
        let get =
            |path: &str| c.http.get(url(path)).send().map(|r| (r.status().as_u16(), r.text().unwrap_or_default()));
        assert_eq!(get("/readyz").map(|(status, _)| status).ok(), Some(200), "{}: /readyz", m.name);
        assert_eq!(get("/healthz").map(|(status, _)| status).ok(), Some(200), "{}: /healthz", m.name);
        let metrics = get("/metrics").expect("metrics");
        assert!(metrics.0 == 200 && metrics.1.contains("kuberaft_term"), "{}: /metrics {metrics:?}", m.name);
        assert_eq!(get("/v1/kv/k0").map(|(status, _)| status).ok(), Some(404), "{}: only probes", m.name);
        let plain = c.http.get(format!("http://{}:{}/readyz", m.ip, crate::harness::CLIENT_PORT)).send();
        assert!(plain.as_ref().map_or(true, |r| !r.status().is_success()), "{}: {plain:?}", m.name);
    }

    // Trusting the CA is not enough: the port wants a certificate of it.
    let anonymous =
        crate::grpc_api::ctl(&c.members[0].client_url(), &[&flags[0], "get", "k0"], "", Duration::from_secs(15));
    assert!(!anonymous.ok, "{anonymous:?}");
    let foreign = Authority::new("another-ca").expect("ca");
    let (fcert, fkey) = write_issued(&c.pki(), "foreign", &foreign.issue("root", &[]).expect("issue"));
    let stranger = crate::grpc_api::ctl(
        &c.members[0].client_url(),
        &[&flags[0], &format!("--cert={}", fcert.display()), &format!("--key={}", fkey.display()), "get", "k0"],
        "",
        Duration::from_secs(15),
    );
    assert!(!stranger.ok, "{stranger:?}");

    // Issue 16, must-show 4 with client certificates: with auth on, a certificate's common
    // name is its user (`root` above, `alice` here), through every member (followers forward
    // with the caller they resolved).
    let (alice_cert, alice_key) = write_issued(&c.pki(), "alice", &ca.issue("alice", &[]).expect("issue"));
    for args in [
        &["user", "add", "root", "--no-password"][..],
        &["user", "add", "alice", "--no-password"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "/pub/", "--prefix"],
        &["user", "grant-role", "alice", "reader"],
        &["put", "/pub/a", "public"],
        &["auth", "enable"],
    ] {
        let done = run(0, args);
        assert!(done.ok, "etcdctl {args:?} as root's certificate: {done:?}");
    }
    let alice_flags =
        [flags[0].clone(), format!("--cert={}", alice_cert.display()), format!("--key={}", alice_key.display())];
    let as_alice = |i: usize, args: &[&str]| {
        let mut all: Vec<&str> = alice_flags.iter().map(String::as_str).collect();
        all.extend(args);
        crate::grpc_api::ctl(&c.members[i].client_url(), &all, "", Duration::from_secs(15))
    };
    for i in 0..3 {
        let read = as_alice(i, &["get", "/pub/a", "--print-value-only"]);
        assert_eq!((read.ok, read.out.trim()), (true, "public"), "alice reads /pub/ through etcd-{i}: {read:?}");
        let write = as_alice(i, &["put", "/pub/a", "mine"]);
        assert_eq!(write.err.trim(), "Error: etcdserver: permission denied", "through etcd-{i}: {write:?}");
        let elsewhere = as_alice(i, &["get", "k0"]);
        assert_eq!(elsewhere.err.trim(), "Error: etcdserver: permission denied", "through etcd-{i}: {elsewhere:?}");
        let admin = as_alice(i, &["user", "list"]);
        assert_eq!(admin.err.trim(), "Error: etcdserver: permission denied", "through etcd-{i}: {admin:?}");
        let root = run(i, &["user", "list"]);
        assert_eq!((root.ok, root.out.trim()), (true, "alice\nroot"), "root's certificate through etcd-{i}");
    }
    // The JSON API over TLS, with the client certificate: every member's status, one leader.
    c.client_tls(&ca_file, &cert, &key);
    let (leader, _) = c.wait_leader(ELECTION);
    assert_eq!(c.get(leader, "cli", "linearizable").0, 200, "a read through the HTTP API over TLS");

    // The JSON API takes the certificate's user too.
    c.client_tls(&ca_file, &alice_cert, &alice_key);
    assert_eq!(c.get(leader, "k0", "linearizable").0, 403, "alice's certificate cannot read k0");
    let plain = c.http.get(format!("{}/v1/kv/%2Fpub%2Fa", c.members[(leader + 1) % 3].client_url())).send();
    assert_eq!(
        plain.map(|r| r.status().as_u16()).ok(),
        Some(200),
        "alice's certificate reads /pub/a through a follower"
    );
}

/// A `kuberaft dev` process, stopped (SIGTERM, then SIGKILL) when dropped, also when a test
/// fails; its stdout collected as it comes.
pub(crate) struct Dev {
    child: std::process::Child,
    out: Arc<std::sync::Mutex<String>>,
}

impl Dev {
    fn start(args: &[&str]) -> Dev {
        Dev::start_with_env(args, &[])
    }

    pub(crate) fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Dev {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kuberaft"))
            .arg("dev")
            .args(args)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start kuberaft dev");
        let out = Arc::new(std::sync::Mutex::new(String::new()));
        for pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        ] {
            let (out, mut pipe) = (out.clone(), pipe.expect("pipe"));
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap_or_else(|e| e.into_inner()).push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Dev { child, out }
    }

    pub(crate) fn text(&self) -> String {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// SIGTERM, then waits (bounded) for the exit; whether it exited with success.
    pub(crate) fn stop(&mut self) -> bool {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// `kuberaft dev --tls`: three members on 127.0.0.1 that require certificates of a throwaway CA
/// on both ports; the banner's exports are all a client needs, and without the client
/// certificate the cluster answers nothing. Ports 23379-23400 of 127.0.0.1.
#[test]
fn kuberaft_dev_tls_runs_a_cluster_that_only_its_certificates_reach() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data").display().to_string();
    let mut dev = Dev::start(&["--tls", "--replicas", "3", "--base-port", "23379", "--data-dir", &data]);
    let exports: Vec<(String, String)> = wait_for("the banner's exports", Duration::from_secs(30), || {
        let text = dev.text();
        let line = text.lines().find(|l| l.trim_start().starts_with("export KUBERAFT_CACERT="))?;
        let endpoints = text.lines().find_map(|l| l.trim_start().strip_prefix("export KUBERAFT_ENDPOINTS="))?;
        let mut pairs = vec![("KUBERAFT_ENDPOINTS".to_string(), endpoints.trim().to_string())];
        for pair in line.trim_start().trim_start_matches("export ").split_whitespace() {
            let (k, v) = pair.split_once('=')?;
            pairs.push((k.to_string(), v.to_string()));
        }
        Some(pairs)
    });
    assert!(exports[0].1.starts_with("https://127.0.0.1:23379,"), "{exports:?}");
    let cli = |args: &[&str], env: &[(String, String)]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_kuberaft"))
            .args(args)
            .env_remove("KUBERAFT_CERT")
            .env_remove("KUBERAFT_KEY")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run kuberaft");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    wait_for("a write through the banner's exports", Duration::from_secs(30), || {
        cli(&["kv", "put", "hello", "world"], &exports).0.then_some(())
    });
    let get = cli(&["kv", "get", "hello"], &exports);
    assert!(get.0 && get.1.contains("world"), "{get:?}");
    let without_cert: Vec<(String, String)> =
        exports.iter().filter(|(k, _)| k == "KUBERAFT_ENDPOINTS" || k == "KUBERAFT_CACERT").cloned().collect();
    let refused = cli(&["kv", "get", "hello"], &without_cert);
    assert!(!refused.0, "no client certificate, no answer: {refused:?}");
    assert!(dev.stop(), "dev stops cleanly: {}", dev.text());
    assert!(dev.text().contains("stopped every member"), "{}", dev.text());
}

/// The leaf certificate the TLS port at `ip:port` presents to a new connection, made trusting
/// `ca_pem` and presenting `identity`.
fn presented_certificate(ip: &str, port: u16, ca_pem: &str, identity: &Issued) -> Result<Vec<u8>, String> {
    let config = tls_client_config(ca_pem, Some(identity));
    let name = ServerName::try_from(ip.to_string()).map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut tcp = TcpStream::connect((ip, port)).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    // Bounded: each round trip waits at most the read timeout; a handshake takes two or three.
    for _ in 0..10 {
        if !conn.is_handshaking() {
            break;
        }
        conn.complete_io(&mut tcp).map_err(|e| format!("handshake: {e}"))?;
    }
    let leaf = conn.peer_certificates().and_then(|chain| chain.first()).ok_or("no certificate presented")?;
    Ok(leaf.as_ref().to_vec())
}

fn der(issued: &Issued) -> Vec<u8> {
    CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem").as_ref().to_vec()
}

/// Rotation under load (issue 16, must-show 3): every member's certificate and key are replaced
/// on disk (each file by a rename, as a Secret's projection swaps them) while a client writes
/// through every member over TLS. No write fails but with an error the client may retry, writes
/// go on being acknowledged, and new connections to both ports of every member get the new
/// certificates.
#[test]
fn certificates_rotate_under_load() {
    let ca = Authority::new("cluster-ca").expect("ca");
    let mut c = Cluster::new(142, 3);
    let ca_file = c.with_tls(&ca, true);
    let pki = c.pki();
    let (cert, key) = c.issue_client(&ca);
    c.bootstrap();
    let endpoints: Vec<String> = c.members.iter().map(|m| m.client_url()).collect();
    let tls = kuberaft::client::TlsOptions { cacert: Some(ca_file), cert: Some(cert), key: Some(key), inline: None };
    let config = kuberaft::client::ClientConfig { tls, ..Default::default() };
    // A client's connections belong to the runtime it first ran in: one client, one runtime.
    let client = kuberaft::client::Client::with_config(endpoints, config).expect("client");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, writing) = (stop.clone(), writing.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let first = (0..300).find_map(|_| {
                let put = runtime.block_on(client.put("first", bytes::Bytes::from_static(b"1"), None));
                put.map_err(|_| std::thread::sleep(Duration::from_millis(50))).ok()
            });
            assert!(first.is_some(), "a first write over TLS");
            writing.store(true, std::sync::atomic::Ordering::Relaxed);
            let (mut acked, mut refused) = (Vec::new(), Vec::new());
            for n in 0..100_000u64 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let value = bytes::Bytes::from(n.to_string());
                match runtime.block_on(client.put(&format!("k{}", n % 50), value, None)) {
                    Ok(_) => acked.push(std::time::Instant::now()),
                    Err(e) => refused.push(e),
                }
            }
            (acked, refused)
        })
    };
    wait_for("the writer's first write", Duration::from_secs(20), || {
        (writing.load(std::sync::atomic::Ordering::Relaxed) || writer.is_finished()).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    let rotated_at = std::time::Instant::now();
    let mut new_certs = Vec::new();
    for m in &c.members {
        let issued = ca.issue(&m.name, &[&m.ip]).expect("issue");
        let (cert, key) = issued_files(&pki, &m.name);
        for (path, text) in [(&key, &issued.key_pem), (&cert, &issued.cert_pem)] {
            let staged = path.with_extension("new");
            std::fs::write(&staged, text).expect("write");
            std::fs::rename(&staged, path).expect("rename");
        }
        new_certs.push(issued);
    }
    for (m, issued) in c.members.iter().zip(&new_certs) {
        for port in [crate::harness::CLIENT_PORT, PEER_PORT] {
            wait_for(&format!("{}:{port} to present its new certificate", m.name), Duration::from_secs(10), || {
                (presented_certificate(&m.ip, port, ca.cert_pem(), issued).ok()? == der(issued)).then_some(())
            });
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, refused) = writer.join().expect("the writer");
    let after = acked.iter().filter(|at| **at > rotated_at).count();
    assert!(after > 10, "writes go on being acknowledged after the rotation ({after} of {}): {refused:?}", acked.len());
    let retryable = |e: &kuberaft::client::ClientError| {
        e.is_outcome_unknown()
            || matches!(e.status(), Some(503))
            || matches!(e, kuberaft::client::ClientError::Unavailable { .. })
    };
    let fatal: Vec<String> = refused.iter().filter(|e| !retryable(e)).map(|e| e.to_string()).collect();
    assert!(fatal.is_empty(), "writes failed with errors that are not retryable: {fatal:?}");
    println!(
        "rotation under load: {} writes acknowledged ({after} after the rotation), {} refused (all retryable)",
        acked.len(),
        refused.len()
    );
}

/// `kuberaft bench` speaks TLS with a client certificate to both targets (issue 16, must-show 6:
/// `TLS=1 scripts/bench-vs-etcd`): its own driver and the etcd-client driver against a kuberaft
/// cluster with certificates required on both ports, and the etcd-client driver against a real
/// etcd started with its own TLS flags and the same CA. An https:// endpoint without `--cacert`
/// is a usage error (exit 2) that names the flag.
#[cfg(feature = "etcd")]
#[test]
fn bench_speaks_tls_to_kuberaft_and_to_etcd() {
    let ca = Authority::new("bench-ca").expect("ca");
    let mut c = Cluster::new(144, 3);
    let ca_file = c.with_tls(&ca, true);
    let (cert, key) = c.issue_client(&ca);
    c.client_tls(&ca_file, &cert, &key);
    c.bootstrap();
    c.wait_leader(ELECTION);

    let etcd_ip = "127.144.1.1";
    let (etcd_cert, etcd_key) = write_issued(&c.pki(), "etcd", &ca.issue("etcd", &[etcd_ip]).expect("issue"));
    let flags: Vec<String> = ["", "peer-"]
        .iter()
        .flat_map(|prefix| crate::harness::tls_flags(prefix, &etcd_cert, &etcd_key, &ca_file))
        .collect();
    let _etcd = crate::harness::Etcd::spawn(etcd_ip, "https", &flags.iter().map(String::as_str).collect::<Vec<_>>());
    let client_url = format!("https://{etcd_ip}:2379");

    let tls = [
        "--cacert".to_string(),
        ca_file.display().to_string(),
        "--cert".to_string(),
        cert.display().to_string(),
        "--key".to_string(),
        key.display().to_string(),
    ];
    let bench = |target: &str, endpoints: &str, tls: &[String]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kuberaft"))
            .args(["bench", "--target", target, "--endpoints", endpoints, "--scenario", "put"])
            .args(["--clients", "4", "--conns", "2", "--total", "200", "--timeout-ms", "2000", "-w", "json", "--quiet"])
            .args(tls)
            .output()
            .expect("run kuberaft bench")
    };
    let members: Vec<String> = c.members.iter().map(|m| m.client_url()).collect();
    let members = members.join(",");
    // etcd is up once a run through it succeeds (bounded).
    wait_for("etcd answers over TLS", ELECTION, || bench("etcd", &client_url, &tls).status.success().then_some(()));
    for (target, endpoints) in [("kuberaft", &members), ("etcd", &members), ("etcd", &client_url)] {
        let output = bench(target, endpoints, &tls);
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{target} driver against {endpoints}: {said}");
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
        assert_eq!((report["requests"].as_u64(), report["errors"].as_u64()), (Some(200), Some(0)), "{report}");
        let output = bench(target, endpoints, &[]);
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{target} driver against {endpoints} without --cacert: {said}");
        assert!(said.contains("--cacert"), "it names the flag: {said}");
    }
}
