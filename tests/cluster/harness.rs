//! Real `kuberaft node` processes on loopback for integration tests. Each member gets its own
//! 127.x.y.z address (so network rules can cut one member off) and its own data directory.
//! Every process is killed when the `Cluster` is dropped, also when a test fails.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

pub struct Member {
    pub name: String,
    pub ip: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub extra_args: Vec<String>,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("http://{}:{CLIENT_PORT}", self.ip)
    }
    pub fn peer_url(&self) -> String {
        format!("http://{}:{PEER_PORT}", self.ip)
    }
}

pub struct Cluster {
    pub members: Vec<Member>,
    pub token: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::blocking::Client,
    net: u8,
}

/// A bounded wait: polls `f` every 50 ms until it returns Some, or fails after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Cluster {
    /// `net` picks the 127.<net>.0.0/16 block, unique per test so that tests run in parallel.
    pub fn new(net: u8, size: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_millis(500))
            .build()
            .expect("http client");
        let mut cluster = Cluster { members: Vec::new(), token: format!("test-{net}"), dir, http, net };
        for i in 0..size {
            cluster.add_member_slot(i);
        }
        cluster
    }

    /// Adds (but does not start) member `i`: name `etcd-i`, address 127.<net>.0.<i+1>.
    pub fn add_member_slot(&mut self, i: usize) -> usize {
        let name = format!("etcd-{i}");
        let data_dir = self.dir.path().join(&name);
        let log = self.dir.path().join(format!("{name}.log"));
        self.members.push(Member {
            name,
            ip: format!("127.{}.0.{}", self.net, i + 1),
            data_dir,
            log,
            child: None,
            extra_args: Vec::new(),
        });
        self.members.len() - 1
    }

    /// `--initial-cluster` for the members with these indexes.
    pub fn initial_cluster(&self, which: &[usize]) -> String {
        which
            .iter()
            .map(|i| format!("{}={}", self.members[*i].name, self.members[*i].peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn start(&mut self, i: usize, initial: &str, state: &str) {
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&m.log).expect("log file");
        let log2 = log.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_kuberaft"))
            .arg("node")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-url", &m.client_url()])
            .args(["--listen-peer-url", &m.peer_url()])
            .args(["--advertise-client-url", &m.client_url()])
            .args(["--advertise-peer-url", &m.peer_url()])
            .args(["--initial-cluster", initial])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--log-level", "info"])
            .args(&m.extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("start kuberaft node");
        m.child = Some(child);
    }

    /// Starts members 0..n as a new cluster.
    pub fn bootstrap(&mut self) {
        let all: Vec<usize> = (0..self.members.len()).collect();
        let initial = self.initial_cluster(&all);
        for i in all {
            self.start(i, &initial, "new");
        }
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for the process to exit; returns whether it exited by itself.
    pub fn terminate(&mut self, i: usize) -> bool {
        let Some(mut child) = self.members[i].child.take() else { return true };
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|i| self.members[*i].child.is_some()).collect()
    }

    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.members[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }

    pub fn status(&self, i: usize) -> Option<Value> {
        let resp = self.http.get(format!("{}/v1/status", self.members[i].client_url())).send().ok()?;
        resp.json().ok()
    }

    /// Waits until every running member reports the same leader and term; returns the
    /// leader's index and the term.
    pub fn wait_leader(&self, timeout: Duration) -> (usize, u64) {
        let running = self.running();
        wait_for("one leader in one term", timeout, || {
            let statuses: Vec<Value> = running.iter().map(|i| self.status(*i)).collect::<Option<_>>()?;
            let leader = statuses[0]["leader"].as_str()?.to_string();
            let term = statuses[0]["term"].as_u64()?;
            if leader.is_empty() || statuses.iter().any(|s| s["leader"] != leader.as_str() || s["term"] != term) {
                return None;
            }
            let idx = self.members.iter().position(|m| m.name == leader)?;
            running.contains(&idx).then_some((idx, term))
        })
    }

    /// Retries a put through member `i` until it is acknowledged (bounded).
    pub fn put_ok(&self, i: usize, key: &str, value: &str) -> u64 {
        wait_for(&format!("put {key} via {}", self.members[i].name), Duration::from_secs(15), || {
            let resp = self
                .http
                .put(format!("{}/v1/kv/{key}", self.members[i].client_url()))
                .body(value.to_string())
                .send()
                .ok()?;
            if !resp.status().is_success() {
                return None;
            }
            resp.json::<Value>().ok()?["revision"].as_u64()
        })
    }

    /// (status code, body) of a GET.
    pub fn get(&self, i: usize, key: &str, consistency: &str) -> (u16, String) {
        match self.http.get(format!("{}/v1/kv/{key}?consistency={consistency}", self.members[i].client_url())).send() {
            Ok(resp) => (resp.status().as_u16(), resp.text().unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            for i in 0..self.members.len() {
                eprintln!("---- log of {} ----\n{}", self.members[i].name, self.log_tail(i));
            }
        }
    }
}
