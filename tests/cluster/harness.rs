//! Real `kuberaft node` processes on loopback for integration tests. Each member gets its own
//! 127.x.y.z address (so network rules can cut one member off) and its own data directory.
//! Every process is killed when the `Cluster` is dropped, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kuberaft::base::pki::{Authority, Issued};
use serde_json::Value;

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
/// `--listen-metrics-urls` of members whose client port requires certificates (`with_tls`).
pub const METRICS_PORT: u16 = 2381;

pub struct Member {
    pub name: String,
    pub ip: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub extra_args: Vec<String>,
    /// The peer port speaks TLS (`--peer-cert-file` and the rest are in `extra_args`).
    pub peer_tls: bool,
    /// The client port speaks TLS (`--cert-file` and the rest are in `extra_args`); the
    /// harness's own HTTP calls (`status`, `put_ok`, ...) then do not reach it.
    pub client_tls: bool,
}

impl Member {
    pub fn client_url(&self) -> String {
        let scheme = if self.client_tls { "https" } else { "http" };
        format!("{scheme}://{}:{CLIENT_PORT}", self.ip)
    }
    pub fn peer_url(&self) -> String {
        let scheme = if self.peer_tls { "https" } else { "http" };
        format!("{scheme}://{}:{PEER_PORT}", self.ip)
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
        let http = crate::http_support::blocking()
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
            peer_tls: false,
            client_tls: false,
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
        self.members[i].child.take().is_none_or(terminate)
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

// ----- disk faults -----

impl Cluster {
    /// Puts member `i`'s data in `dir` (e.g. a `DiskMount`) instead of the cluster's temp dir.
    pub fn set_data_dir(&mut self, i: usize, dir: &Path) {
        self.members[i].data_dir = dir.to_path_buf();
    }

    /// (status code, body) of the member's `/readyz`; (0, error) when it does not answer.
    pub fn readyz(&self, i: usize) -> (u16, String) {
        match self.http.get(format!("{}/readyz", self.members[i].client_url())).send() {
            Ok(resp) => (resp.status().as_u16(), resp.text().unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }

    /// Waits (bounded) for member `i`'s process to exit by itself; its exit status, or None
    /// if it still runs (it is then left running).
    /// How member `i` exited, if it has (without waiting).
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let status = self.members[i].child.as_mut()?.try_wait().ok()??;
        self.members[i].child = None;
        Some(status)
    }

    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            let child = self.members[i].child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.members[i].child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The member's id (hex), from its status.
    pub fn member_id(&self, i: usize) -> Option<String> {
        self.status(i)?["id"].as_str().map(str::to_string)
    }

    /// How far the leader `leader` knows member `i`'s log to match its own: what `i` has
    /// acknowledged (from the peer port's member list).
    pub fn matched(&self, leader: usize, i: usize) -> Option<u64> {
        let url = format!("{}/raft/v1/members", self.members[leader].peer_url());
        let list: Value = self.http.get(url).send().ok()?.json().ok()?;
        let name = self.members[i].name.as_str();
        list["members"].as_array()?.iter().find(|m| m["name"] == name)?["matched"].as_u64()
    }

    /// Waits until the leader's own bookkeeping is done: every member is recorded as holding
    /// data (`joined`), every member has acknowledged the whole committed log, and the commit
    /// index then stays put for a second (longer than the leader's checks for client URLs to
    /// publish). After this, the log moves only for what the test itself asks.
    pub fn wait_settled(&self, leader: usize, timeout: Duration) {
        let url = format!("{}/raft/v1/members", self.members[leader].peer_url());
        wait_for("the leader to settle its own entries", timeout, || {
            let commit = |c: &Cluster| c.status(leader).and_then(|s| s["commitIndex"].as_u64());
            let before = commit(self)?;
            let list: Value = self.http.get(&url).send().ok()?.json().ok()?;
            let members = list["members"].as_array()?;
            let done = members.iter().all(|m| m["joined"] == true && m["matched"].as_u64() == Some(before));
            if !done {
                return None;
            }
            std::thread::sleep(Duration::from_secs(1));
            (commit(self)? == before).then_some(())
        })
    }

    /// Moves leadership to member `to` (asked through member `via`); waits until all agree.
    pub fn transfer_leader(&self, via: usize, to: usize, timeout: Duration) {
        let id = self.member_id(to).expect("member id");
        wait_for(&format!("leadership moves to {}", self.members[to].name), timeout, || {
            let _ = self
                .http
                .post(format!("{}/v1/leader/transfer", self.members[via].client_url()))
                .json(&serde_json::json!({ "to": id }))
                .send();
            (self.wait_leader(Duration::from_secs(5)).0 == to).then_some(())
        });
    }
}

/// A file system mounted for one member's data directory: a size-limited tmpfs (to fill up),
/// or an ext4 image on a loop device mounted with `errors=remount-ro` (which the kernel turns
/// read-only on a disk error). Unmounted on drop, also when a test fails. Declare it BEFORE
/// the `Cluster` that uses it: locals drop in reverse order, so the members are killed first
/// and the mount is no longer busy (a busy one is detached lazily).
pub struct DiskMount {
    /// The mount point: the member's data directory.
    pub dir: PathBuf,
    /// The ext4 image, for `repair`.
    image: Option<PathBuf>,
    mounted: bool,
    _parent: tempfile::TempDir,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{program} {}: {}{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl DiskMount {
    /// Whether this process may mount file systems (root outside a locked-down container).
    pub fn permitted() -> bool {
        DiskMount::tmpfs_checked(16).is_ok()
    }

    /// A tmpfs of `size_kib` KiB.
    pub fn tmpfs(size_kib: u64) -> DiskMount {
        DiskMount::tmpfs_checked(size_kib).expect("mount a tmpfs")
    }

    fn tmpfs_checked(size_kib: u64) -> Result<DiskMount, String> {
        let parent = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = parent.path().join("data");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let path = dir.to_str().ok_or("temp path is not UTF-8")?;
        run("mount", &["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs", path])?;
        Ok(DiskMount { dir, image: None, mounted: true, _parent: parent })
    }

    /// An ext4 file system of `size_mib` MiB in an image file, on a loop device, mounted with
    /// `errors=remount-ro`. Err when the tools or loop devices are missing.
    pub fn ext4(size_mib: u64) -> Result<DiskMount, String> {
        let parent = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = parent.path().join("disk.img");
        let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        file.set_len(size_mib << 20).map_err(|e| e.to_string())?;
        let image_path = image.to_str().ok_or("temp path is not UTF-8")?.to_string();
        run("mkfs.ext4", &["-q", "-F", &image_path])?;
        let dir = parent.path().join("data");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let mut disk = DiskMount { dir, image: Some(image), mounted: false, _parent: parent };
        disk.mount_image()?;
        Ok(disk)
    }

    fn mount_image(&mut self) -> Result<(), String> {
        let image = self.image.as_ref().and_then(|p| p.to_str()).ok_or("not an image mount")?;
        let dir = self.dir.to_str().ok_or("temp path is not UTF-8")?;
        run("mount", &["-o", "loop,errors=remount-ro", image, dir])?;
        self.mounted = true;
        Ok(())
    }

    /// Fills the file system with a file (written until ENOSPC and synced); returns its path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).expect("create filler");
        let chunk = vec![0x5au8; 64 * 1024];
        // Bounded: tests mount at most a few MiB.
        for _ in 0..10_000 {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        let _ = file.sync_all();
        path
    }

    /// The ext4 device's kernel error trigger: the kernel handles the "error" as a real one
    /// and, under `errors=remount-ro`, makes the file system read-only at once (open files
    /// included), until it is unmounted.
    pub fn force_read_only(&self) {
        let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
        let dir = self.dir.to_str().expect("UTF-8 path");
        let device = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 1 && f[1] == dir)
            .map(|f| f[0].rsplit('/').next().unwrap_or("").to_string())
            .expect("the image is mounted");
        std::fs::write(format!("/sys/fs/ext4/{device}/trigger_fs_error"), "kuberaft test: simulated disk error")
            .expect("trigger an ext4 error");
        let probe = self.dir.join("probe");
        let result = std::fs::write(&probe, b"x");
        assert_eq!(
            result.as_ref().map_err(|e| e.raw_os_error()),
            Err(Some(libc::EROFS)),
            "the file system is read-only now"
        );
    }

    /// What an operator does with a file system the kernel made read-only after an error:
    /// unmount (the member must be stopped), check and repair, mount read-write again.
    pub fn repair(&mut self) {
        let dir = self.dir.to_str().expect("UTF-8 path").to_string();
        run("umount", &[&dir]).expect("unmount for repair");
        self.mounted = false;
        let image = self.image.as_ref().and_then(|p| p.to_str()).expect("an image mount").to_string();
        // e2fsck exits 1 or 2 when it fixed something.
        let out = Command::new("e2fsck").args(["-f", "-y", &image]).output().expect("run e2fsck");
        assert!(matches!(out.status.code(), Some(0..=2)), "e2fsck: {}", String::from_utf8_lossy(&out.stdout));
        self.mount_image().expect("mount again");
    }
}

impl Drop for DiskMount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        let dir = self.dir.to_string_lossy().to_string();
        if run("umount", &[&dir]).is_err() {
            // Still busy (a process we could not stop): detach now, freed when it exits.
            if let Err(e) = run("umount", &["-l", &dir]) {
                eprintln!("cannot unmount {dir}: {e}");
            }
        }
    }
}

/// A child process whose standard output lines a thread collects as they come; killed when
/// dropped, also when the test fails.
pub struct OutputLines {
    child: Child,
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl OutputLines {
    /// Starts `command` with its standard input closed and its output piped (`what` names it).
    pub fn start(command: &mut Command, what: &str) -> OutputLines {
        let mut child =
            command.stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        OutputLines { child, lines }
    }
}

impl Drop for OutputLines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM, then waits (10 s at most) for the process to exit; whether it exited by itself
/// (else it is killed).
pub fn terminate(mut child: Child) -> bool {
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

/// A real etcd 3.4 of one member on `ip` (the side-by-side tests), answering on its client port
/// once `start` returns; stopped when dropped, also when the test fails.
pub struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts it with `extra` flags and waits (bounded) until its gateway answers a range.
    pub fn start(ip: &str, extra: &[&str]) -> Etcd {
        let etcd = Etcd::spawn(ip, "http", extra);
        let client = format!("http://{ip}:{CLIENT_PORT}");
        let http = crate::http_support::blocking().timeout(Duration::from_secs(2)).build().expect("client");
        wait_for("etcd to answer", Duration::from_secs(15), || {
            http.post(format!("{client}/v3/kv/range"))
                .json(&serde_json::json!({"key": "eA=="}))
                .send()
                .ok()
                .filter(|r| r.status().is_success())
        });
        etcd
    }

    /// Starts it with `extra` flags, its URLs in `scheme` (`https` wants the TLS flags in
    /// `extra`), without waiting for it.
    pub fn spawn(ip: &str, scheme: &str, extra: &[&str]) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (format!("{scheme}://{ip}:{CLIENT_PORT}"), format!("{scheme}://{ip}:{PEER_PORT}"));
        let child = etcd_member("e0", &dir.path().join("e0"), &client, &peer, &format!("e0={peer}"), extra);
        Etcd { child, _dir: dir }
    }
}

/// One etcd 3.4 member `name` with its data in `data_dir`, listening on and advertising its
/// `client` and `peer` URLs, started with `--initial-cluster initial` and `extra` flags, its
/// output discarded (errors only). The caller stops it.
pub fn etcd_member(name: &str, data_dir: &Path, client: &str, peer: &str, initial: &str, extra: &[&str]) -> Child {
    Command::new("etcd")
        .args(["--name", name, "--data-dir"])
        .arg(data_dir)
        .args(["--listen-client-urls", client, "--advertise-client-urls", client])
        .args(["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer])
        .args(["--initial-cluster", initial])
        .args(["--logger", "zap", "--log-level", "error"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three etcd 3.4 members on 127.NET.0.1-3, each started and killed by the test (killed when
/// dropped, also when it fails).
pub struct EtcdMembers<const NET: u8> {
    dir: tempfile::TempDir,
    children: Vec<Option<Child>>,
}

impl<const NET: u8> EtcdMembers<NET> {
    pub fn new() -> EtcdMembers<NET> {
        EtcdMembers { dir: tempfile::tempdir().expect("tempdir"), children: (0..3).map(|_| None).collect() }
    }

    pub fn peer(i: usize) -> String {
        format!("http://127.{NET}.0.{}:2380", i + 1)
    }

    pub fn client(i: usize) -> String {
        format!("http://127.{NET}.0.{}:2379", i + 1)
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("e{i}"))
    }

    pub fn initial(members: &[usize]) -> String {
        members.iter().map(|&i| format!("e{i}={}", Self::peer(i))).collect::<Vec<_>>().join(",")
    }

    pub fn start(&mut self, i: usize, initial: &str, state: &str, extra: &[&str]) {
        let mut flags = vec!["--initial-cluster-state", state, "--initial-cluster-token", "etcd-members"];
        flags.extend(["--election-timeout", "1000", "--heartbeat-interval", "100"]);
        flags.extend_from_slice(extra);
        let (name, client, peer) = (format!("e{i}"), Self::client(i), Self::peer(i));
        self.children[i] = Some(etcd_member(&name, &self.data_dir(i), &client, &peer, initial, &flags));
    }

    /// SIGTERM, then wait (bounded) for the member to exit; whether it exited by itself.
    pub fn terminate(&mut self, i: usize) -> bool {
        self.children[i].take().is_none_or(terminate)
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl<const NET: u8> Drop for EtcdMembers<NET> {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// etcd's TLS flags of one port, which members take too: certificate, key, trusted CA, and
/// client certificates required. etcd names the two ports' flags alike: `prefix` is "" for the
/// client port (`--cert-file`), "peer-" for the peer port (`--peer-cert-file`).
pub fn tls_flags(prefix: &str, cert: &Path, key: &Path, ca: &Path) -> [String; 7] {
    [
        format!("--{prefix}cert-file"),
        cert.display().to_string(),
        format!("--{prefix}key-file"),
        key.display().to_string(),
        format!("--{prefix}trusted-ca-file"),
        ca.display().to_string(),
        format!("--{prefix}client-cert-auth"),
    ]
}

/// The files `write_issued` writes for `name` in `dir`: `<name>.pem` and `<name>-key.pem`.
pub fn issued_files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")))
}

/// Writes `issued` as `<name>.pem` and `<name>-key.pem` in `dir`.
pub fn write_issued(dir: &Path, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    let (cert, key) = issued_files(dir, name);
    std::fs::write(&cert, &issued.cert_pem).expect("write cert");
    std::fs::write(&key, &issued.key_pem).expect("write key");
    (cert, key)
}

impl Cluster {
    /// Gives every member a certificate of `ca` for its address, and the peer flags with
    /// `--peer-client-cert-auth` (and the client port's with `--client-cert-auth` and a plain
    /// `--listen-metrics-urls` when `clients`); returns the CA's file.
    pub fn with_tls(&mut self, ca: &Authority, clients: bool) -> PathBuf {
        let dir = self.pki();
        std::fs::create_dir_all(&dir).expect("pki dir");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).expect("write ca");
        for m in &mut self.members {
            let issued = ca.issue(&m.name, &[&m.ip]).expect("issue");
            let (cert, key) = write_issued(&dir, &m.name, &issued);
            let flags = |prefix: &str| tls_flags(prefix, &cert, &key, &ca_file);
            m.peer_tls = true;
            m.extra_args.extend(flags("peer-"));
            if clients {
                m.client_tls = true;
                m.extra_args.extend(["--listen-metrics-urls".into(), format!("http://{}:{METRICS_PORT}", m.ip)]);
                m.extra_args.extend(flags(""));
            }
        }
        ca_file
    }

    /// Where `with_tls` writes the CA and the members' certificates (`issued_files`).
    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// A client certificate of `ca` for user `root`, written beside the members' as `client`:
    /// its certificate and key files.
    pub fn issue_client(&self, ca: &Authority) -> (PathBuf, PathBuf) {
        write_issued(&self.pki(), "client", &ca.issue("root", &[]).expect("issue"))
    }

    /// Makes `http` a client of the members' TLS client ports (`with_tls(.., true)`): trusting
    /// `ca`, presenting `cert` and `key`.
    pub fn client_tls(&mut self, ca: &Path, cert: &Path, key: &Path) -> rustls::ClientConfig {
        let config = kuberaft::base::tls::caller_config(ca, Some((cert, key)), &[b"http/1.1"]).expect("client TLS");
        self.http = crate::http_support::blocking()
            .tls_backend_preconfigured(config.clone())
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_millis(500))
            .build()
            .expect("http client");
        config
    }
}
