//! Real member processes, started exactly as the generated StatefulSet's pod template says, driven
//! by the real reconcile (planner, executor, status) through 3 → 5 → 3 members and through the
//! loss of one member's data.
//!
//! The test plays the parts Kubernetes would: the API server is the fake of `fake_api`; a small
//! kubelet here reads the StatefulSet, runs one process per pod, restarts processes that exit,
//! probes `/readyz`, and reports each pod's readiness and exit codes back as Pod objects. A pod:
//! - runs the template's command (`kuberaft`, which the image has on its PATH, is this build's
//!   binary) and args with exactly the template's environment, `$(VAR)` references, downward API
//!   fields and ConfigMap keys resolved as the kubelet resolves them, when the container starts;
//! - gets its own mount namespace, in which `/etc/hosts` maps every pod's DNS name
//!   (`etcd-0.etcd.ns.svc`) to that pod's loopback address, its volume is mounted at the
//!   template's mount path, and the root file system is read-only when the template says so;
//! - has its own loopback address, 127.60.0.<ordinal+1>, standing in for its network namespace:
//!   the one change made to what the template says is that the wildcard listen address 0.0.0.0
//!   becomes that address (in a pod, the wildcard means the pod's own interfaces).
//!
//! Needs root (mount namespaces), like the cluster tests' nftables; under `CI=true` it fails
//! without, elsewhere it says it did not run.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, PodSpec, PodTemplateSpec, Secret};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::runtime::events::Reporter;
use kuberaft::base::wire::kv::RangeRequest;
use kuberaft::client::{Client, ClientConfig, Consistency, Credentials};
use kuberaft::operator::builders::EXIT_DATA_LOST;
use kuberaft::operator::certs;
use kuberaft::operator::crd::RaftCluster;
use kuberaft::operator::reconcile::{self, Context, HttpMembers};
use serde_json::{json, Value};

use crate::fake_api::*;

const NET: u8 = 60;
/// The tests here share the pods' addresses (127.60.0.x): one runs at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const CLUSTER: &str = "etcd";
/// The most pods this test runs (hosts are mapped for all of them).
const MAX_PODS: u32 = 9;
/// The scratch file system every volume is mounted under, in the pod's mount namespace (the
/// members need nothing of the host's /var).
const SCRATCH: &str = "/var";
/// A crashed container is started again after this long (the kubelet backs off longer).
const RESTART_BACKOFF: Duration = Duration::from_millis(500);

fn pod_name(ordinal: u32) -> String {
    format!("{CLUSTER}-{ordinal}")
}

fn pod_ip(ordinal: u32) -> String {
    format!("127.{NET}.0.{}", ordinal + 1)
}

fn pod_host(ordinal: u32) -> String {
    format!("{}.{CLUSTER}.{NS}.svc", pod_name(ordinal))
}

/// The pod name to loopback address table: in every pod's /etc/hosts, and in the test's own
/// HTTP clients.
fn resolve_table() -> Vec<(String, SocketAddr)> {
    (0..MAX_PODS)
        .flat_map(|i| {
            let ip: std::net::IpAddr = pod_ip(i).parse().expect("an address");
            [(pod_host(i), SocketAddr::new(ip, 2379)), (pod_host(i), SocketAddr::new(ip, 2380))]
        })
        .collect()
}

/// One pod's container as the kubelet keeps it.
struct Pod {
    ordinal: u32,
    child: Option<Child>,
    /// Exit code of the last run that ended.
    last_exit: Option<i32>,
    restarts: u32,
    not_before: Instant,
    ready: bool,
    /// Why the container could not be created (a ConfigMap key missing...).
    waiting: Option<String>,
    /// How many of the template's init containers ran to success; the one running while
    /// fewer than all did (`child` is then that one).
    initialized: usize,
    /// The StatefulSet's template when the pod was made: a pod keeps it until it is deleted,
    /// whatever the StatefulSet says later.
    template: PodTemplateSpec,
    /// Its Pod object was written: once it is gone from the API, the pod was deleted (evicted).
    published: bool,
}

impl Pod {
    fn spec(&self) -> PodSpec {
        self.template.spec.clone().unwrap_or_default()
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.spec().termination_grace_period_seconds.unwrap_or(30).unsigned_abs())
    }
}

/// A pod as [`Kubelet::spawn`] starts it: a member's (with its ordinal) or a Job's.
struct PodRef {
    name: String,
    ordinal: Option<u32>,
    volumes: Vec<k8s_openapi::api::core::v1::Volume>,
    /// Where its termination message is kept on the host (a Job's).
    result: Option<PathBuf>,
}

struct Kubelet {
    api: FakeApi,
    /// Jobs whose pod runs (the child and its termination message file), and those done.
    jobs: BTreeMap<String, (Child, PathBuf)>,
    jobs_done: BTreeSet<String>,
    /// Every Job's exit code, in order.
    job_exits: Vec<(String, i32)>,
    root: tempfile::TempDir,
    hosts: PathBuf,
    pods: BTreeMap<u32, Pod>,
    http: reqwest::Client,
    /// Every exit code seen, by pod.
    exits: BTreeMap<u32, Vec<i32>>,
    /// Every failed init container's exit code, by pod.
    init_failures: BTreeMap<u32, Vec<i32>>,
    /// Pods deleted and made again from the current template, in order: evicted by the
    /// operator, or replaced by the StatefulSet controller's `RollingUpdate`.
    replaced: Vec<u32>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for (child, _) in self.jobs.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pod in self.pods.values_mut() {
            if let Some(mut child) = pod.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// `$(VAR)` expanded from the variables defined before, as the kubelet does (`$$` escapes; an
/// undefined reference stays as it is).
fn expand(text: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(reference) = after.strip_prefix('(').and_then(|r| r.find(')').map(|end| &r[..end])) {
            match defined.get(reference) {
                Some(value) => out.push_str(value),
                None => out.push_str(&format!("$({reference})")),
            }
            rest = &after[reference.len() + 2..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn check(result: libc::c_int) -> std::io::Result<()> {
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in the path")
}

impl Kubelet {
    fn new(api: FakeApi) -> Kubelet {
        let root = tempfile::tempdir().expect("tempdir");
        let hosts = root.path().join("hosts");
        let mut table = String::from("127.0.0.1 localhost\n");
        for i in 0..MAX_PODS {
            table.push_str(&format!("{} {} {}\n", pod_ip(i), pod_host(i), pod_name(i)));
        }
        std::fs::write(&hosts, table).expect("write hosts");
        std::fs::create_dir_all(root.path().join("volumes")).expect("volumes");
        std::fs::create_dir_all(root.path().join("logs")).expect("logs");
        let http = crate::http_support::client().timeout(Duration::from_millis(500)).no_proxy().build().expect("http");
        Kubelet {
            api,
            root,
            hosts,
            pods: BTreeMap::new(),
            http,
            exits: BTreeMap::new(),
            init_failures: BTreeMap::new(),
            replaced: Vec::new(),
            jobs: BTreeMap::new(),
            jobs_done: BTreeSet::new(),
            job_exits: Vec::new(),
        }
    }

    fn volume(&self, ordinal: u32) -> PathBuf {
        self.root.path().join("volumes").join(format!("data-{}", pod_name(ordinal)))
    }

    /// The directory of the claim `name` (one the test makes, as an administrator would).
    fn claim(&self, name: &str) -> PathBuf {
        self.root.path().join("volumes").join("claims").join(name)
    }

    /// The name of the StatefulSet's volume claim template (its volume is the claim's).
    fn claim_name(&self) -> String {
        self.stateful_set()
            .and_then(|sts| sts.spec?.volume_claim_templates?.first()?.metadata.name.clone())
            .unwrap_or_default()
    }

    /// The files of the projected volume `name` of the pod template, written (again) to the
    /// pod's directory for it as the kubelet does: a file changes by a rename, so a reader sees
    /// the old or the new, and only when its content changed. A missing Secret that is not
    /// optional keeps the container from being created.
    fn projected(&self, ordinal: u32, name: &str) -> Result<PathBuf, String> {
        let sts = self.stateful_set().ok_or("no StatefulSet")?;
        let pod = sts.spec.and_then(|s| s.template.spec).ok_or("no pod template")?;
        let volume = pod.volumes.unwrap_or_default().into_iter().find(|v| v.name == name);
        let sources = volume
            .and_then(|v| v.projected)
            .and_then(|p| p.sources)
            .ok_or(format!("volume {name}: not a projected volume"))?;
        let dir = self.root.path().join("projected").join(pod_name(ordinal)).join(name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for source in sources {
            let projection = source.secret.ok_or("a projected source other than a Secret")?;
            let secret: Option<Secret> =
                self.api.get(&secret_path(&projection.name)).and_then(|v| serde_json::from_value(v).ok());
            let Some(secret) = secret else {
                if projection.optional == Some(true) {
                    continue;
                }
                return Err(format!("ContainerCreating: secret {} not found", projection.name));
            };
            let data = secret.data.unwrap_or_default();
            for item in projection.items.unwrap_or_default() {
                let bytes = data.get(&item.key).ok_or(format!("secret {} has no key {}", projection.name, item.key))?;
                let path = dir.join(&item.path);
                if std::fs::read(&path).ok().as_deref() != Some(bytes.0.as_slice()) {
                    let staged = dir.join(format!(".{}.new", item.path));
                    std::fs::write(&staged, &bytes.0).map_err(|e| e.to_string())?;
                    std::fs::rename(&staged, &path).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(dir)
    }

    /// The port the template's readiness probe asks, by its name in the container's ports.
    fn readiness_port(container: &Container) -> u16 {
        let probe = container.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).map(|h| h.port.clone());
        match probe {
            Some(IntOrString::Int(port)) => u16::try_from(port).unwrap_or(0),
            Some(IntOrString::String(name)) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .unwrap_or(0),
            None => 0,
        }
    }

    fn log(&self, ordinal: u32) -> PathBuf {
        self.root.path().join("logs").join(format!("{}.log", pod_name(ordinal)))
    }

    fn stateful_set(&self) -> Option<StatefulSet> {
        self.api.get(&sts_path(CLUSTER)).and_then(|v| serde_json::from_value(v).ok())
    }

    fn config_map(&self, name: &str) -> Option<ConfigMap> {
        self.api.get(&cm_path(name)).and_then(|v| serde_json::from_value(v).ok())
    }

    /// The container's environment as the kubelet would give it, or why it cannot be created.
    fn environment(&self, ordinal: u32, env: &[EnvVar]) -> Result<Vec<(String, String)>, String> {
        let mut defined: BTreeMap<String, String> = BTreeMap::new();
        let mut out = Vec::new();
        for var in env {
            let value = match (&var.value, &var.value_from) {
                (Some(value), _) => expand(value, &defined),
                (None, Some(source)) => {
                    if let Some(field) = &source.field_ref {
                        match field.field_path.as_str() {
                            "metadata.name" => pod_name(ordinal),
                            "metadata.namespace" => NS.to_string(),
                            "status.podIP" => pod_ip(ordinal),
                            other => return Err(format!("field {other} is not supported here")),
                        }
                    } else if let Some(key) = &source.config_map_key_ref {
                        let data = self.config_map(&key.name).and_then(|cm| cm.data).unwrap_or_default();
                        data.get(&key.key).cloned().ok_or_else(|| {
                            format!("CreateContainerConfigError: configmap {} has no key {}", key.name, key.key)
                        })?
                    } else if let Some(key) = &source.secret_key_ref {
                        let secret: Option<Secret> =
                            self.api.get(&secret_path(&key.name)).and_then(|v| serde_json::from_value(v).ok());
                        let secret = secret
                            .ok_or_else(|| format!("CreateContainerConfigError: secret {} not found", key.name))?;
                        let bytes = secret.data.unwrap_or_default().get(&key.key).map(|b| b.0.clone());
                        let bytes = bytes.ok_or_else(|| {
                            format!("CreateContainerConfigError: secret {} has no key {}", key.name, key.key)
                        })?;
                        String::from_utf8(bytes)
                            .map_err(|_| format!("secret {} key {}: not UTF-8", key.name, key.key))?
                    } else {
                        return Err(format!("{}: an env source this kubelet does not know", var.name));
                    }
                }
                (None, None) => String::new(),
            };
            // The pod's own address stands in for the wildcard (module docs).
            let value = value.replace("0.0.0.0", &pod_ip(ordinal));
            defined.insert(var.name.clone(), value.clone());
            out.push((var.name.clone(), value));
        }
        Ok(out)
    }

    fn start(&self, ordinal: u32, container: &Container) -> Result<Child, String> {
        let volumes = self.stateful_set().and_then(|s| s.spec?.template.spec?.volumes).unwrap_or_default();
        let pod = PodRef { name: pod_name(ordinal), ordinal: Some(ordinal), volumes, result: None };
        self.spawn(&pod, container, &self.log(ordinal))
    }

    /// Starts `container` of `pod` as the kubelet would: its environment, its volumes at their
    /// mount paths (and its termination message file, when it has one to keep) in a mount
    /// namespace of its own.
    fn spawn(&self, pod: &PodRef, container: &Container, log: &Path) -> Result<Child, String> {
        // A Job's pod has no ordinal: an address beyond the members' stands in for its own.
        let ordinal = pod.ordinal.unwrap_or(MAX_PODS);
        let read_only_root =
            container.security_context.as_ref().and_then(|s| s.read_only_root_filesystem).unwrap_or(false);
        let env = self.environment(ordinal, container.env.as_deref().unwrap_or_default())?;
        let command = container.command.clone().unwrap_or_default();
        let program = match command.first().map(String::as_str) {
            Some("kuberaft") => PathBuf::from(env!("CARGO_BIN_EXE_kuberaft")),
            other => return Err(format!("the image has no command {other:?}")),
        };
        let defined: BTreeMap<String, String> = env.iter().cloned().collect();
        let args: Vec<String> = command[1..]
            .iter()
            .chain(container.args.as_deref().unwrap_or_default())
            .map(|arg| expand(arg, &defined))
            .collect();
        // Each mount's source on the host: the claim template's directory, another claim's
        // (`claim(NAME)`), or the projected volume's files.
        let volumes = &pod.volumes;
        let mut binds: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mut read_only: Vec<PathBuf> = Vec::new();
        for mount in container.volume_mounts.clone().unwrap_or_default() {
            let claim = volumes.iter().find(|v| v.name == mount.name).and_then(|v| v.persistent_volume_claim.clone());
            let source = if mount.name == self.claim_name() && pod.ordinal.is_some() {
                let volume = self.volume(ordinal);
                std::fs::create_dir_all(&volume).map_err(|e| e.to_string())?;
                volume
            } else if let Some(claim) = claim {
                let volume = self.claim(&claim.claim_name);
                if !volume.is_dir() {
                    return Err(format!("ContainerCreating: claim {} not found", claim.claim_name));
                }
                if claim.read_only == Some(true) || mount.read_only == Some(true) {
                    read_only.push(PathBuf::from(&mount.mount_path));
                }
                volume
            } else {
                self.projected(ordinal, &mount.name)?
            };
            if !mount.mount_path.starts_with(SCRATCH) {
                return Err(format!("this kubelet mounts volumes under {SCRATCH} only, not {}", mount.mount_path));
            }
            binds.push((source, PathBuf::from(&mount.mount_path)));
        }
        if binds.is_empty() {
            return Err("the template mounts no volume".to_string());
        }
        // The termination message: a file of the host at the container's path.
        let mut files: Vec<(PathBuf, PathBuf)> = Vec::new();
        if let Some(result) = &pod.result {
            let path = container.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into());
            if !path.starts_with(SCRATCH) {
                return Err(format!("this kubelet keeps termination messages under {SCRATCH} only, not {path}"));
            }
            std::fs::write(result, b"").map_err(|e| e.to_string())?;
            files.push((result.clone(), PathBuf::from(path)));
        }
        // The directories to make on the scratch file system, parents first.
        let mut dirs: Vec<PathBuf> = Vec::new();
        let targets = binds.iter().map(|(_, to)| to.as_path()).chain(files.iter().filter_map(|(_, to)| to.parent()));
        for target in targets {
            let mut chain: Vec<PathBuf> =
                target.ancestors().take_while(|a| *a != Path::new(SCRATCH)).map(Path::to_path_buf).collect();
            chain.reverse();
            for dir in chain {
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| e.to_string())?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;

        let (hosts, etc_hosts) = (cstring(&self.hosts), cstring(Path::new("/etc/hosts")));
        let binds: Vec<(CString, CString)> = binds.iter().map(|(from, to)| (cstring(from), cstring(to))).collect();
        let read_only: Vec<CString> = read_only.iter().map(|path| cstring(path)).collect();
        let files: Vec<(CString, CString)> = files.iter().map(|(from, to)| (cstring(from), cstring(to))).collect();
        let dirs: Vec<CString> = dirs.iter().map(|d| cstring(d)).collect();
        let scratch = cstring(Path::new(SCRATCH));
        let (root_path, none, tmpfs) = (CString::from(c"/"), CString::from(c"none"), CString::from(c"tmpfs"));
        let mut cmd = Command::new(program);
        cmd.args(args).env_clear().envs(env).env("HOSTNAME", &pod.name);
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
        // SAFETY: only system calls between fork and exec, on strings prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    none.as_ptr(),
                    root_path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    hosts.as_ptr(),
                    etc_hosts.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                // The volumes at the template's mount paths, on a scratch file system so that
                // nothing on the host changes.
                check(libc::mount(tmpfs.as_ptr(), scratch.as_ptr(), tmpfs.as_ptr(), 0, std::ptr::null()))?;
                for dir in &dirs {
                    check(libc::mkdir(dir.as_ptr(), 0o755))?;
                }
                for (from, to) in &binds {
                    check(libc::mount(from.as_ptr(), to.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()))?;
                }
                for (from, to) in &files {
                    let fd = libc::open(to.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
                    check(if fd < 0 { -1 } else { libc::close(fd) })?;
                    check(libc::mount(from.as_ptr(), to.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()))?;
                }
                for path in &read_only {
                    let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
                    check(libc::mount(std::ptr::null(), path.as_ptr(), std::ptr::null(), flags, std::ptr::null()))?;
                }
                if read_only_root {
                    check(libc::mount(
                        std::ptr::null(),
                        root_path.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                        std::ptr::null(),
                    ))?;
                }
                Ok(())
            });
        }
        cmd.spawn().map_err(|e| format!("start {}: {e}", pod.name))
    }

    /// The Job controller and the kubelet for Jobs: each Job's pod runs once, to its end; then
    /// its Pod object carries the container's termination message (the file, or the log's tail
    /// when it failed with `FallbackToLogsOnError` and wrote none), and the Job its outcome. A
    /// Job deleted while its pod runs has its pod stopped.
    fn sync_jobs(&mut self) {
        let prefix = format!("{}/", jobs_path());
        let listed: Vec<Value> =
            self.api.lock().objects.iter().filter(|(p, _)| p.starts_with(&prefix)).map(|(_, v)| v.clone()).collect();
        let names: BTreeSet<String> =
            listed.iter().filter_map(|j| j["metadata"]["name"].as_str().map(str::to_string)).collect();
        let gone: Vec<String> = self.jobs.keys().filter(|n| !names.contains(*n)).cloned().collect();
        for name in gone {
            if let Some(mut running) = self.jobs.remove(&name) {
                let _ = running.0.kill();
                let _ = running.0.wait();
            }
        }
        // The garbage collector: a deleted Job's pod goes with it.
        self.api.lock().objects.retain(|path, object| {
            let job = object["metadata"]["labels"]["job-name"].as_str();
            !(path.starts_with(&pods_path()) && job.is_some_and(|job| !names.contains(job)))
        });
        for object in listed {
            let job: Job = serde_json::from_value(object.clone()).expect("a Job");
            let name = job.metadata.name.clone().unwrap_or_default();
            // A Job made again under the same name is another Job.
            let made = format!("{name}@{}", job.metadata.resource_version.clone().unwrap_or_default());
            if self.jobs_done.contains(&made) {
                continue;
            }
            let pod_spec = job.spec.clone().and_then(|s| s.template.spec).expect("a pod template");
            let container = pod_spec.containers[0].clone();
            if let Some((child, result)) = self.jobs.get_mut(&name) {
                let Ok(Some(exit)) = child.try_wait() else { continue };
                let code = exit.code().unwrap_or(-1);
                let mut message = std::fs::read_to_string(&*result).unwrap_or_default();
                let log = std::fs::read_to_string(self.job_log(&name)).unwrap_or_default();
                if message.is_empty()
                    && code != 0
                    && container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
                {
                    message =
                        log.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                }
                self.jobs.remove(&name);
                self.jobs_done.insert(made);
                self.job_exits.push((name.clone(), code));
                let pod = format!("{name}-x7k2p");
                self.api.put(
                    &pod_path(&pod),
                    json!({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": pod, "namespace": NS, "labels": {"job-name": name}},
                           "status": {"containerStatuses": [{"name": container.name, "ready": false, "restartCount": 0,
                                      "image": "kuberaft", "imageID": "",
                                      "state": {"terminated": {"exitCode": code, "message": message}}}]}}),
                );
                let mut object = object;
                object["status"] = if code == 0 {
                    json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
                } else {
                    json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]})
                };
                self.api.put(&format!("{prefix}{name}"), object);
                continue;
            }
            let result = self.root.path().join("jobs").join(format!("{name}.result"));
            std::fs::create_dir_all(result.parent().expect("a parent")).expect("the jobs directory");
            let pod = PodRef {
                name: format!("{name}-x7k2p"),
                ordinal: None,
                volumes: pod_spec.volumes.unwrap_or_default(),
                result: Some(result.clone()),
            };
            let child =
                self.spawn(&pod, &container, &self.job_log(&name)).unwrap_or_else(|e| panic!("the Job {name}: {e}"));
            self.jobs.insert(name, (child, result));
        }
    }

    fn job_log(&self, name: &str) -> PathBuf {
        self.root.path().join("logs").join(format!("job-{name}.log"))
    }

    fn stop(&mut self, ordinal: u32, grace: Duration) {
        let Some(pod) = self.pods.get_mut(&ordinal) else { return };
        if let Some(mut child) = pod.child.take() {
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// One pass of the kubelet (and the StatefulSet controller): pods to the StatefulSet's size,
    /// crashed containers restarted, readiness probed, Pod objects written back.
    async fn sync(&mut self) {
        self.sync_jobs();
        let Some(sts) = self.stateful_set() else {
            // Deleted (with its owner): its pods go, their claims stay (`whenDeleted: Retain`).
            let ordinals: Vec<u32> = self.pods.keys().copied().collect();
            for ordinal in ordinals {
                self.stop(ordinal, Duration::from_secs(30));
                self.pods.remove(&ordinal);
                self.api.lock().objects.remove(&pod_path(&pod_name(ordinal)));
            }
            return;
        };
        let spec = sts.spec.clone().expect("a StatefulSet spec");
        let replicas = u32::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
        let delete_claims = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .and_then(|p| p.when_scaled.as_deref())
            .is_some_and(|w| w == "Delete");

        // Deleted pods (an eviction): stopped within their grace period; made again below, from
        // the current template.
        let deleted: Vec<u32> = self
            .pods
            .values()
            .filter(|p| p.published && self.api.get(&pod_path(&pod_name(p.ordinal))).is_none())
            .map(|p| p.ordinal)
            .collect();
        for ordinal in deleted {
            self.delete(ordinal);
        }
        // The controller's `RollingUpdate` (the default strategy): once every pod is ready, the
        // highest ordinal whose template is not the current one is deleted, one at a time.
        let strategy = spec.update_strategy.as_ref().and_then(|s| s.type_.clone());
        if strategy.as_deref() != Some("OnDelete") && (0..replicas).all(|o| self.pods.get(&o).is_some_and(|p| p.ready))
        {
            let outdated = self.pods.values().rev().find(|p| p.template != spec.template).map(|p| p.ordinal);
            if let Some(ordinal) = outdated {
                self.api.lock().objects.remove(&pod_path(&pod_name(ordinal)));
                self.delete(ordinal);
            }
        }

        // Scale down: the highest ordinals go, and with them their claims when the policy says so.
        let extra: Vec<u32> = self.pods.keys().copied().filter(|&o| o >= replicas).collect();
        for ordinal in extra {
            let grace = self.pods[&ordinal].grace();
            self.stop(ordinal, grace);
            self.pods.remove(&ordinal);
            self.api.lock().objects.remove(&pod_path(&pod_name(ordinal)));
            if delete_claims {
                let _ = std::fs::remove_dir_all(self.volume(ordinal));
            }
        }
        let now = Instant::now();
        for ordinal in 0..replicas {
            let pod = self.pods.entry(ordinal).or_insert(Pod {
                ordinal,
                child: None,
                last_exit: None,
                restarts: 0,
                not_before: now,
                ready: false,
                waiting: None,
                initialized: 0,
                template: spec.template.clone(),
                published: false,
            });
            // Init containers run in order before the container, each to success, once per pod
            // (not again when the container restarts).
            let inits = pod.spec().init_containers.unwrap_or_default().len();
            if let Some(child) = &mut pod.child {
                if let Ok(Some(exit)) = child.try_wait() {
                    let code = exit.code().unwrap_or(-1);
                    pod.child = None;
                    if pod.initialized < inits {
                        // An init container: the next one on success, this one again on failure.
                        if code == 0 {
                            pod.initialized += 1;
                        } else {
                            pod.not_before = now + RESTART_BACKOFF;
                            self.init_failures.entry(ordinal).or_default().push(code);
                        }
                    } else {
                        pod.last_exit = Some(code);
                        pod.restarts += 1;
                        pod.not_before = now + RESTART_BACKOFF;
                        self.exits.entry(ordinal).or_default().push(code);
                    }
                }
            }
        }
        let to_start: Vec<u32> =
            self.pods.values().filter(|p| p.child.is_none() && p.not_before <= now).map(|p| p.ordinal).collect();
        for ordinal in to_start {
            let pod_spec = self.pods[&ordinal].spec();
            let inits = pod_spec.init_containers.unwrap_or_default();
            let next = inits.get(self.pods[&ordinal].initialized).unwrap_or(&pod_spec.containers[0]);
            let started = self.start(ordinal, next);
            let pod = self.pods.get_mut(&ordinal).expect("the pod");
            match started {
                Ok(child) => {
                    pod.child = Some(child);
                    pod.waiting = None;
                }
                Err(why) => {
                    pod.waiting = Some(why);
                    pod.not_before = now + RESTART_BACKOFF;
                }
            }
        }
        let ordinals: Vec<u32> = self.pods.keys().copied().collect();
        for ordinal in ordinals {
            let pod_spec = self.pods[&ordinal].spec();
            let container = pod_spec.containers[0].clone();
            let probe_port = Kubelet::readiness_port(&container);
            let initializing = self.pods[&ordinal].initialized < pod_spec.init_containers.unwrap_or_default().len();
            let running = self.pods[&ordinal].child.is_some() && !initializing;
            if running {
                // The kubelet keeps projected volumes current in running pods (certificate
                // rotation); a failure here shows in the member's own log.
                for mount in container.volume_mounts.iter().flatten().filter(|m| m.name != self.claim_name()) {
                    let _ = self.projected(ordinal, &mount.name);
                }
            }
            let ready = running && {
                let url = format!("http://{}:{probe_port}/readyz", pod_ip(ordinal));
                matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
            };
            let pod = self.pods.get_mut(&ordinal).expect("the pod");
            pod.ready = ready;
            let state = if running {
                json!({"running": {}})
            } else if initializing {
                json!({"waiting": {"reason": pod.waiting.clone().unwrap_or_else(|| "PodInitializing".to_string())}})
            } else {
                json!({"waiting": {"reason": pod.waiting.clone().map_or("CrashLoopBackOff".to_string(), |w| w)}})
            };
            let mut status = json!({"name": "kuberaft", "ready": ready, "restartCount": pod.restarts, "image": "kuberaft",
                                    "imageID": "", "state": state});
            if let Some(code) = pod.last_exit {
                status["lastState"] = json!({"terminated": {"exitCode": code}});
            }
            let metadata = pod.template.metadata.clone().unwrap_or_default();
            pod.published = true;
            let object = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name(ordinal), "namespace": NS,
                             "labels": metadata.labels, "annotations": metadata.annotations},
                "status": {"podIP": pod_ip(ordinal),
                           "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                           "containerStatuses": [status]},
            });
            self.api.put(&pod_path(&pod_name(ordinal)), object);
        }
    }

    /// A deleted pod: its container stopped within the grace period, the pod gone; its
    /// volume stays (the StatefulSet makes it again with the same claim).
    fn delete(&mut self, ordinal: u32) {
        let grace = self.pods[&ordinal].grace();
        self.stop(ordinal, grace);
        self.pods.remove(&ordinal);
        self.replaced.push(ordinal);
    }

    /// The last lines of every pod's log, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for ordinal in self.pods.keys() {
            let text = std::fs::read_to_string(self.log(*ordinal)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                pod_name(*ordinal),
                lines[lines.len().saturating_sub(8)..].join("\n")
            ));
        }
        out
    }
}

struct Harness {
    api: FakeApi,
    ctx: Arc<Context>,
    kubelet: Kubelet,
    /// Every Progressing reason and phase the status went through.
    reasons: BTreeSet<String>,
    phases: BTreeSet<String>,
    /// Each (term, leader) the status reported, in order, repeats left out.
    leaders: Vec<(u64, String)>,
}

impl Harness {
    fn status(&self) -> Value {
        self.api.get(&cluster_path(CLUSTER)).and_then(|c| c.get("status").cloned()).unwrap_or(Value::Null)
    }

    fn condition(&self, type_: &str) -> String {
        let status = self.status();
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
            .map(|c| c["status"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    }

    fn set_replicas(&self, replicas: u32) {
        self.set_spec(|spec| spec["replicas"] = json!(replicas));
    }

    /// A change of the RaftCluster's spec, as `kubectl edit` makes it: a new generation.
    fn set_spec(&self, change: impl FnOnce(&mut Value)) {
        let mut object = self.api.get(&cluster_path(CLUSTER)).expect("stored");
        change(&mut object["spec"]);
        let generation = object["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        object["metadata"]["generation"] = json!(generation);
        self.api.put(&cluster_path(CLUSTER), object);
    }

    async fn step(&mut self) {
        let cluster: RaftCluster =
            serde_json::from_value(self.api.get(&cluster_path(CLUSTER)).expect("stored")).expect("a RaftCluster");
        if let Err(err) = reconcile::reconcile(Arc::new(cluster), self.ctx.clone()).await {
            eprintln!("reconcile: {err}");
        }
        // Nobody edits the objects here: the operator's own writes never look like drift to it.
        let drift: Vec<Value> =
            self.api.lock().events.iter().filter(|e| e["reason"] == "DriftReverted").cloned().collect();
        assert!(drift.is_empty(), "drift found where nobody edited: {drift:?}");
        self.kubelet.sync().await;
        let status = self.status();
        if let Some(reason) = status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing"))
            .and_then(|c| c["reason"].as_str())
        {
            self.reasons.insert(reason.to_string());
        }
        if let Some(phase) = status["phase"].as_str() {
            self.phases.insert(phase.to_string());
        }
        if let (Some(term), Some(leader)) = (status["term"].as_u64(), status["leader"].as_str()) {
            if self.leaders.last().is_none_or(|(t, l)| *t != term || l != leader) {
                self.leaders.push((term, leader.to_string()));
            }
        }
    }

    /// Runs reconcile and kubelet passes until the status shows `replicas` healthy voters,
    /// consistent with the ConfigMap and the StatefulSet. Bounded in passes and time.
    async fn converge(&mut self, what: &str, replicas: u32) {
        let started = Instant::now();
        for _ in 0..600 {
            self.step().await;
            if self.converged(replicas) {
                eprintln!("{what}: converged in {:?}", started.elapsed());
                return;
            }
            if started.elapsed() > Duration::from_secs(120) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "{what}: no convergence in {:?}\nstatus: {:#}\nconfigmap: {:#}\nexits: {:?}\n{}",
            started.elapsed(),
            self.status(),
            self.api.get(&cm_path("etcd-members")).map(|c| c["data"].clone()).unwrap_or_default(),
            self.kubelet.exits,
            self.kubelet.logs()
        );
    }

    fn converged(&self, replicas: u32) -> bool {
        let status = self.status();
        let names: Vec<String> = (0..replicas).map(pod_name).collect();
        let members = status["members"].as_array().cloned().unwrap_or_default();
        let cm = self.api.get(&cm_path("etcd-members")).unwrap_or_default();
        let sts = self.api.get(&sts_path(CLUSTER)).unwrap_or_default();
        // Auth as the spec asks (off without `spec.auth`).
        let auth_wanted = self.spec().get("auth").is_some();
        let paused = self.spec()["paused"] == true;
        (status["phase"] == "Running" || paused && status["phase"] == "Paused")
            && status["auth"]["enabled"].as_bool().unwrap_or(false) == auth_wanted
            && status["leader"].is_string()
            && self.condition("Available") == "True"
            && self.condition("MembershipConsistent") == "True"
            && self.condition("Degraded") == "False"
            && members.len() == replicas as usize
            && members.iter().all(|m| m["healthy"] == true && m["role"] != "learner")
            && members.iter().map(|m| m["name"].as_str().unwrap_or_default().to_string()).eq(names.iter().cloned())
            && cm["data"]["members"] == names.join(",")
            && sts["spec"]["replicas"] == replicas
            && self.kubelet.pods.len() == replicas as usize
            && self.rolled()
    }

    /// Every pod runs the StatefulSet's current template.
    fn rolled(&self) -> bool {
        let template = self.kubelet.stateful_set().and_then(|sts| sts.spec).map(|spec| spec.template);
        self.kubelet.pods.values().all(|pod| Some(&pod.template) == template.as_ref())
    }

    /// A client of the cluster through the pods' DNS names.
    /// The client URL of a member: `https://` once the cluster has TLS.
    fn url(&self, ordinal: u32) -> String {
        let scheme = if self.tls() { "https" } else { "http" };
        format!("{scheme}://{}:2379", pod_host(ordinal))
    }

    /// The ordinal of the member the status names as the leader.
    fn leader_ordinal(&self) -> u32 {
        let leader = self.status()["leader"].as_str().unwrap_or_default().to_string();
        (0..MAX_PODS).find(|&o| pod_name(o) == leader).unwrap_or_else(|| panic!("the leader {leader:?} is a pod"))
    }

    fn spec(&self) -> Value {
        self.api.get(&cluster_path(CLUSTER)).map(|c| c["spec"].clone()).unwrap_or_default()
    }

    fn tls(&self) -> bool {
        self.spec().get("tls").is_some()
    }

    /// With `spec.auth`: root's credentials, from the Secret it names.
    fn root(&self) -> Option<Credentials> {
        let reference = self.spec()["auth"]["rootPasswordSecret"].clone();
        let name = reference["name"].as_str()?.to_string();
        let key = reference["key"].as_str().unwrap_or("password").to_string();
        let secret = self.secret(&name).unwrap_or_else(|| panic!("root's password Secret {name}"));
        let password = secret.data.as_ref().and_then(|d| d.get(&key)).expect("root's password").0.clone();
        Some(Credentials { name: "root".to_string(), password: String::from_utf8(password).expect("UTF-8") })
    }

    /// A Secret as stored.
    fn secret(&self, name: &str) -> Option<Secret> {
        self.api.get(&secret_path(name)).and_then(|v| serde_json::from_value(v).ok())
    }

    /// A client of the cluster through the pods' DNS names; with TLS, an application's, with the
    /// client Secret the status names.
    fn client(&self, members: &[u32]) -> Client {
        let mut config = ClientConfig::with_request_timeout(Duration::from_secs(3));
        config.resolve = resolve_table();
        if self.tls() {
            let name = self.status()["clientSecret"].as_str().unwrap_or_default().to_string();
            let secret = self.secret(&name).unwrap_or_else(|| panic!("the client Secret {name:?}"));
            config.tls.inline = Some(Arc::new(certs::identity(&secret).expect("a client identity")));
        }
        config.user = self.root();
        Client::with_config(members.iter().map(|&i| self.url(i)).collect(), config).expect("a client")
    }

    /// The membership each listed member reports, by name: (names of voters, names of learners).
    async fn raft_membership(&self, ordinal: u32) -> (Vec<String>, Vec<String>) {
        let status = self.client(&[ordinal]).status_of(&self.url(ordinal)).await;
        let status = status.unwrap_or_else(|e| panic!("{}: {e}", pod_name(ordinal)));
        let mut voters: Vec<String> = status.members.iter().filter(|m| m.voter).map(|m| m.name.clone()).collect();
        let mut learners: Vec<String> = status.members.iter().filter(|m| !m.voter).map(|m| m.name.clone()).collect();
        voters.sort();
        learners.sort();
        (voters, learners)
    }

    async fn assert_membership(&self, replicas: u32) {
        let expected: Vec<String> = (0..replicas).map(pod_name).collect();
        for ordinal in 0..replicas {
            assert_eq!(self.raft_membership(ordinal).await, (expected.clone(), vec![]), "{}", pod_name(ordinal));
        }
    }

    async fn assert_data(&self, members: &[u32], keys: usize) {
        for &ordinal in members {
            let client = self.client(&[ordinal]);
            for k in 0..keys {
                let got = client.get(&format!("key-{k}"), Consistency::Serializable).await;
                let value = got.unwrap_or_else(|e| panic!("{}: key-{k}: {e}", pod_name(ordinal)));
                assert_eq!(
                    value.map(|v| v.value),
                    Some(Bytes::from(format!("value-{k}"))),
                    "{} key-{k}",
                    pod_name(ordinal)
                );
            }
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Harness {
    /// The cluster `etcd` with `spec`, its operator and its kubelet, started.
    fn start(spec: Value) -> Harness {
        let api = FakeApi::default();
        api.put(
            &cluster_path(CLUSTER),
            json!({
                "apiVersion": "kuberaft.io/v1alpha1", "kind": "RaftCluster",
                "metadata": {"name": CLUSTER, "namespace": NS, "uid": "9d3c1c2e-1111-4222-8333-444455556666", "generation": 1},
                "spec": spec,
            }),
        );
        let members = Arc::new(HttpMembers { resolve: resolve_table() });
        let reporter = Reporter { controller: "kuberaft-operator".to_string(), instance: Some("test".to_string()) };
        let ctx = Arc::new(Context::new(api.client(), members, reporter));
        let kubelet = Kubelet::new(api.clone());
        Harness { api, ctx, kubelet, reasons: BTreeSet::new(), phases: BTreeSet::new(), leaders: Vec::new() }
    }

    /// Bootstrap 3 with 20 keys written, then 3 → 5 → 3, checking membership and data at each.
    async fn bootstrap_and_scale_3_5_3(&mut self) {
        let h = self;
        h.converge("bootstrap 3", 3).await;
        h.assert_membership(3).await;
        assert!(h.phases.contains("Bootstrapping"), "{:?}", h.phases);
        let cm = h.api.get(&cm_path("etcd-members")).expect("cm");
        assert_eq!(cm["data"]["initial-cluster-state"], "existing", "formed");
        let writer = h.client(&[0, 1, 2]);
        for k in 0..20 {
            writer.put(&format!("key-{k}"), Bytes::from(format!("value-{k}")), None).await.expect("a write");
        }
        let term_after_bootstrap = h.status()["term"].as_u64().unwrap_or(0);
        assert!(term_after_bootstrap >= 1);

        // 3 → 5: learners first, then their pods, then promotion; the data reaches the new members.
        h.set_replicas(5);
        h.converge("scale 3 to 5", 5).await;
        h.assert_membership(5).await;
        for reason in ["AddLearner", "UpdateEndpoints", "ResizeStatefulSet", "Promote"] {
            assert!(h.reasons.contains(reason), "{reason} in {:?}", h.reasons);
        }
        h.assert_data(&[3, 4], 20).await;
        assert!(h.kubelet.exits.is_empty(), "no pod crashed: {:?}\n{}", h.kubelet.exits, h.kubelet.logs());

        // 5 → 3: membership first (leadership moved away if needed), then the list, then the pods,
        // whose claims go with them.
        h.reasons.clear();
        h.set_replicas(3);
        h.converge("scale 5 to 3", 3).await;
        h.assert_membership(3).await;
        assert!(h.reasons.contains("RemoveMember"), "{:?}", h.reasons);
        assert!(!h.kubelet.volume(3).exists() && !h.kubelet.volume(4).exists(), "claims deleted when scaled");
        h.assert_data(&[0, 1, 2], 20).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_run_as_the_pod_template_says_through_3_to_5_to_3_and_a_lost_data_directory() {
    if !crate::require::available(is_root(), "root (for mount namespaces)") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut h = Harness::start(json!({"replicas": 3, "image": "kuberaft:test"}));
    h.bootstrap_and_scale_3_5_3().await;
    // The leader's data is lost: its pod restarts with an empty volume (under `existing`, as the
    // ConfigMap says once the cluster formed), the other two elect a new leader, whose word makes
    // it refuse to rejoin (exit 3); the operator replaces it under a new id.
    let victim = h.leader_ordinal();
    let old_id = h.status()["members"][victim as usize]["id"].as_str().unwrap_or_default().to_string();
    let term_before = h.status()["term"].as_u64().unwrap_or(0);
    if let Some(mut child) = h.kubelet.pods.get_mut(&victim).and_then(|p| p.child.take()) {
        let _ = child.kill();
        let _ = child.wait();
    }
    std::fs::remove_dir_all(h.kubelet.volume(victim)).expect("wipe the volume");
    h.reasons.clear();
    h.phases.clear();
    h.converge("replace the member whose data was lost", 3).await;
    h.assert_membership(3).await;
    assert!(
        h.kubelet.exits.get(&victim).is_some_and(|codes| codes.contains(&i32::from(EXIT_DATA_LOST))),
        "the member refused to rejoin with empty data: {:?}\n{}",
        h.kubelet.exits,
        h.kubelet.logs()
    );
    for reason in ["ReplaceMember", "AddLearner", "Promote"] {
        assert!(h.reasons.contains(reason), "{reason} in {:?}", h.reasons);
    }
    assert!(h.phases.contains("Degraded"), "{:?}", h.phases);
    let new_id = h.status()["members"][victim as usize]["id"].as_str().unwrap_or_default().to_string();
    assert_ne!(new_id, old_id, "a new member id");
    assert!(h.status()["term"].as_u64().unwrap_or(0) >= term_before);
    h.assert_data(&[victim], 20).await;
    let leader = h.status()["leader"].as_str().unwrap_or_default().to_string();
    assert!((0..3).any(|i| pod_name(i) == leader), "the status names a leader: {leader}");
}

/// The certificate a member presents on `port` to a new connection, as PEM-decoded DER.
async fn served_certificate(ordinal: u32, port: u16, identity: &kuberaft::client::InlineTls) -> Vec<u8> {
    let config = kuberaft::base::tls::caller_config_pem(&identity.ca, Some((&identity.cert, &identity.key)), &[])
        .expect("a TLS config");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect((pod_ip(ordinal).as_str(), port)).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(pod_host(ordinal)).expect("a server name");
    let stream = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("a handshake in time")
        .expect("a handshake");
    stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()).expect("a certificate").to_vec()
}

fn certificate_der(secret: &Secret) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let pem = &secret.data.as_ref().and_then(|d| d.get(certs::KEY_CERT)).expect("tls.crt").0;
    rustls::pki_types::CertificateDer::from_pem_slice(pem).expect("PEM").to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_of_the_auto_issuer_scales_3_to_5_to_3_and_rotates_its_certificates_without_a_restart() {
    if !crate::require::available(is_root(), "root (for mount namespaces)") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut h = Harness::start(json!({"replicas": 3, "image": "kuberaft:test", "tls": {"auto": {}}}));
    h.bootstrap_and_scale_3_5_3().await;

    // What the operator issued, and what the status tells applications.
    assert_eq!(h.status()["clientSecret"], "etcd-client-tls");
    assert!(h.status()["endpoints"][0].as_str().is_some_and(|e| e.starts_with("https://")), "{}", h.status());
    for name in ["etcd-ca", "etcd-0-tls", "etcd-8-tls", "etcd-client-tls", "etcd-operator-tls"] {
        assert!(h.secret(name).is_some(), "Secret {name}");
    }
    // A client without a certificate of the cluster's CA is refused (--client-cert-auth).
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = dir.path().join("ca.crt");
    let client_secret = h.secret("etcd-client-tls").expect("client secret");
    std::fs::write(&ca_file, &client_secret.data.as_ref().expect("data")[certs::KEY_CA].0).expect("write");
    let mut config = ClientConfig::with_request_timeout(Duration::from_secs(2));
    config.resolve = resolve_table();
    config.tls.cacert = Some(ca_file);
    let anonymous = Client::with_config(vec![h.url(0)], config).expect("a client");
    assert!(anonymous.put("anonymous", Bytes::from("x"), None).await.is_err(), "no certificate, no write");

    // Rotation: every certificate is replaced by one of the same CA with a tenth of its life left,
    // as if 80 of its 90 days had passed. The operator renews them all; the kubelet updates the
    // mounted files; the members take them for new connections without a restart.
    let ca_secret = h.secret("etcd-ca").expect("the CA Secret");
    let text = |s: &Secret, key: &str| String::from_utf8(s.data.as_ref().expect("data")[key].0.clone()).expect("utf-8");
    let ca = kuberaft::base::pki::Authority::from_pem(&text(&ca_secret, certs::KEY_CA), &text(&ca_secret, "ca.key"))
        .expect("the cluster's CA");
    let cluster: RaftCluster =
        serde_json::from_value(h.api.get(&cluster_path(CLUSTER)).expect("stored")).expect("cluster");
    let now = kuberaft::operator::builders::now_seconds();
    let aging = kuberaft::base::pki::Validity { not_before: now - 80 * 86_400, not_after: now + 10 * 86_400 };
    let mut old = BTreeMap::new();
    for request in certs::requests(&cluster).expect("requests") {
        let names: Vec<&str> = request.names.iter().map(String::as_str).collect();
        let issued = ca.issue_for(&request.common_name, &names, Some(aging)).expect("issue");
        let mut object = h.api.get(&secret_path(&request.secret)).expect("stored");
        object["data"]["tls.crt"] = json!(kuberaft::base::base64::encode_base64(issued.cert_pem.as_bytes()));
        object["data"]["tls.key"] = json!(kuberaft::base::base64::encode_base64(issued.key_pem.as_bytes()));
        h.api.put(&secret_path(&request.secret), object);
        old.insert(request.secret.clone(), certificate_der(&h.secret(&request.secret).expect("replaced")));
    }
    let term_before = h.status()["term"].as_u64().unwrap_or(0);

    // Clients write throughout.
    let writer = h.client(&[0, 1, 2]);
    let load = tokio::spawn(async move {
        let (mut acked, mut failed) = (0u32, Vec::new());
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            match writer.put(&format!("rotation-{acked}"), Bytes::from("v"), None).await {
                Ok(_) => acked += 1,
                Err(e) => failed.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (acked, failed)
    });

    let operator = certs::identity(&h.secret("etcd-operator-tls").expect("the operator's")).expect("identity");
    let started = Instant::now();
    let mut rotated = false;
    for _ in 0..300 {
        h.step().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut all_new = true;
        for ordinal in 0..3 {
            let secret = h.secret(&format!("etcd-{ordinal}-tls")).expect("member secret");
            let current = certificate_der(&secret);
            if current == old[&format!("etcd-{ordinal}-tls")] {
                all_new = false;
                break;
            }
            for port in [2379, 2380] {
                if served_certificate(ordinal, port, &operator).await != current {
                    all_new = false;
                }
            }
        }
        if all_new {
            rotated = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    assert!(rotated, "every member serves its renewed certificate on both ports\n{}", h.kubelet.logs());
    let events: Vec<Value> = h.api.take_events();
    assert!(events.iter().any(|e| e["reason"] == "CertificatesIssued"), "an event says what was issued");
    for request in certs::requests(&cluster).expect("requests") {
        let current = certificate_der(&h.secret(&request.secret).expect("secret"));
        assert_ne!(current, old[&request.secret], "{} renewed", request.secret);
    }
    let (acked, failed) = load.await.expect("the writer");
    assert!(acked > 0 && failed.is_empty(), "{acked} writes acknowledged, failures: {failed:?}");
    assert!(h.kubelet.exits.is_empty(), "no member restarted: {:?}", h.kubelet.exits);
    h.converge("after the rotation", 3).await;
    assert_eq!(h.status()["term"].as_u64().unwrap_or(0), term_before, "no election: nobody restarted");
    // A new application client (the renewed client certificate) works.
    h.assert_data(&[0, 1, 2], 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_auth_turns_auth_on_as_root_holds_through_3_to_5_to_3_and_goes_off_when_removed() {
    if !crate::require::available(is_root(), "root (for mount namespaces)") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let auth = json!({"rootPasswordSecret": {"name": "etcd-root"}});
    let mut h = Harness::start(json!({"replicas": 3, "image": "kuberaft:test", "auth": auth}));
    // Convergence includes auth on; the writes go as root, and so do the operator's membership
    // changes while it scales.
    h.bootstrap_and_scale_3_5_3().await;
    let reasons: Vec<String> =
        h.api.take_events().iter().map(|e| e["reason"].as_str().unwrap_or_default().to_string()).collect();
    for reason in ["RootPasswordGenerated", "EnableAuth", "AddLearner", "RemoveMember"] {
        assert!(reasons.iter().any(|r| r == reason), "{reason} in {reasons:?}");
    }
    assert_eq!(
        h.status()["auth"],
        json!({"enabled": true, "rootPasswordSecret": {"name": "etcd-root", "key": "password"}})
    );
    let root = h.root().expect("root");
    assert_eq!(root.password.len(), 32, "a generated password");

    // Every member has auth on: without a user, or with a wrong password, nothing is written.
    let mut anonymous = ClientConfig::with_request_timeout(Duration::from_secs(3));
    anonymous.resolve = resolve_table();
    for ordinal in 0..3 {
        let url = h.url(ordinal);
        let client = Client::with_config(vec![url.clone()], anonymous.clone()).expect("a client");
        let status = client.status_of(&url).await.expect("a status");
        assert_eq!(status.auth_enabled, Some(true), "{}", pod_name(ordinal));
        let refused = client.put("anonymous", Bytes::from("x"), None).await.expect_err("no user");
        assert!(refused.to_string().contains("etcdserver: user name is empty"), "{refused}");
    }
    let mut wrong = anonymous.clone();
    wrong.user = Some(Credentials { name: "root".to_string(), password: format!("{}x", root.password) });
    let client = Client::with_config(vec![h.url(0)], wrong).expect("a client");
    let refused = client.put("wrong", Bytes::from("x"), None).await.expect_err("a wrong password");
    assert!(refused.to_string().contains("authentication failed"), "{refused}");

    // spec.auth removed: the operator turns auth off (as root, from the Secret status.auth names).
    h.set_spec(|spec| {
        spec.as_object_mut().expect("spec").remove("auth");
    });
    h.converge("auth off", 3).await;
    assert_eq!(h.status()["auth"], json!({"enabled": false}));
    let client = Client::with_config(vec![h.url(1)], anonymous).expect("a client");
    client.put("anonymous", Bytes::from("x"), None).await.expect("a write without a user");
    h.assert_data(&[0, 1, 2], 20).await;
}

/// Every key under `prefix` at `revision` (0: now), read from `client` in pages: key → (value,
/// create revision, mod revision, version). Also the revision read.
async fn all_keys(client: &Client, prefix: &str, revision: i64) -> (BTreeMap<String, (String, i64, i64, i64)>, i64) {
    all_keys_read(client, prefix, revision, Consistency::Linearizable).await
}

/// [`all_keys`], read as `consistency` says (serializable: from the member asked, leader or not).
async fn all_keys_read(
    client: &Client,
    prefix: &str,
    revision: i64,
    consistency: Consistency,
) -> (BTreeMap<String, (String, i64, i64, i64)>, i64) {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("a prefix") += 1;
    let end = String::from_utf8(end).expect("ASCII");
    let mut found = BTreeMap::new();
    let mut from = prefix.to_string();
    let mut read_at = revision;
    for _ in 0..1000 {
        let request = RangeRequest {
            key: Some(from.clone()),
            range_end: Some(end.clone()),
            limit: 1000,
            revision: read_at,
            ..RangeRequest::default()
        };
        let page = client.range(&request, consistency).await.expect("a range");
        read_at = page.header.revision;
        for kv in &page.kvs {
            let key = kv.key.clone().expect("a text key");
            let value = kv.value.clone().expect("a text value");
            found.insert(key, (value, kv.create_revision, kv.mod_revision, kv.version));
        }
        match (page.more, page.kvs.last()) {
            (true, Some(last)) => from = format!("{}\0", last.key.clone().expect("a key")),
            _ => return (found, read_at),
        }
    }
    panic!("more than 1000 pages under {prefix}");
}

/// Issue 17, must-show 2: 10,000 keys, a backup to S3, more writes, the RaftCluster deleted;
/// a new one from the backup has every key of the backup at its revision and nothing after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_cluster_with_every_key_at_its_revision_and_nothing_written_after() {
    if !crate::require::available(is_root(), "root (for mount namespaces)") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let s3 = crate::s3::S3Server::start("backups").await;
    let mut h = Harness::backed_up_to(&s3).await;

    // 10,000 keys, the first hundred written twice (versions 2), then a backup.
    let writer = h.client(&[0, 1, 2]);
    let puts = (0..10_000).chain(0..100).map(|k| {
        let writer = writer.clone();
        async move {
            let key = format!("key-{k:05}");
            writer.put(&key, Bytes::from(format!("value-{k}")), None).await.map_err(|e| format!("{key}: {e}"))
        }
    });
    let written: Vec<_> = futures::stream::iter(puts).buffered(64).collect().await;
    let failed: Vec<&String> = written.iter().filter_map(|w| w.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} writes failed: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    let (kept, revision) = all_keys(&writer, "key-", 0).await;
    assert_eq!(kept.len(), 10_000);
    assert_eq!(kept["key-00007"].3, 2);

    let mut object = h.api.get(&cluster_path(CLUSTER)).expect("stored");
    object["status"]["backup"]["lastScheduleTime"] = json!("2000-01-01T00:00:00Z");
    h.api.put(&cluster_path(CLUSTER), object);
    for _ in 0..100 {
        h.step().await;
        if h.status()["backup"]["lastSuccess"].is_object() || h.status()["backup"]["lastFailure"].is_object() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let success = h.status()["backup"]["lastSuccess"].clone();
    assert_eq!(success["revision"], revision, "the backup holds the keys written: {:#}", h.status()["backup"]);
    let location = success["location"].as_str().expect("a location").to_string();
    let key = location.strip_prefix("s3://backups/").expect("in the bucket").to_string();

    // Writes after the backup: changed, deleted and new keys.
    for k in 0..50 {
        writer.put(&format!("key-{k:05}"), Bytes::from("after the backup"), None).await.expect("a write");
        writer.delete(&format!("key-{:05}", 5000 + k), None).await.expect("a delete");
        writer.put(&format!("late-{k}"), Bytes::from("after the backup"), None).await.expect("a write");
    }
    drop(writer);

    // The RaftCluster is deleted, and a new cluster of the same name made from the backup. The
    // claims of the old one are still there: the restore refuses to start over them, and says why.
    h.delete_cluster().await;
    h.create_cluster(json!({"replicas": 3, "image": "kuberaft:test",
                            "bootstrap": {"restore": {"s3": {"endpoint": s3.endpoint, "bucket": "backups", "key": key,
                                                             "credentialsSecret": {"name": "s3-creds"}}}}}));
    let started = Instant::now();
    while h.kubelet.init_failures.len() < 3 && started.elapsed() < Duration::from_secs(60) {
        h.step().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(h.kubelet.init_failures.len(), 3, "every restore refused the old volume\n{}", h.kubelet.logs());
    assert!(h.kubelet.logs().contains("the volume of an earlier cluster?"), "{}", h.kubelet.logs());
    assert!(h.kubelet.exits.is_empty(), "no member started over the old data: {:?}", h.kubelet.exits);
    for ordinal in 0..3 {
        std::fs::remove_dir_all(h.kubelet.volume(ordinal)).expect("delete the old claim");
    }
    h.converge("restored 3", 3).await;
    h.assert_membership(3).await;

    // Every key of the backup, at its revisions and version; nothing written after it.
    for ordinal in 0..3 {
        let reader = h.client(&[ordinal]);
        let (restored, now) = all_keys(&reader, "key-", 0).await;
        assert_eq!(now, revision, "{}: the restored revision", pod_name(ordinal));
        assert!(restored == kept, "{}: the keys differ from the backup's", pod_name(ordinal));
        let (late, _) = all_keys(&reader, "late-", 0).await;
        assert!(late.is_empty(), "{}: written after the backup: {late:?}", pod_name(ordinal));
    }
    let reader = h.client(&[0, 1, 2]);
    let put = reader.put("key-00000", Bytes::from("new"), None).await.expect("a write");
    assert_eq!(put.revision as i64, revision + 1, "revisions go on from the backup's");
}

impl Harness {
    /// Three members converged, backed up (yearly) to the bucket `backups` of `s3`.
    async fn backed_up_to(s3: &crate::s3::S3Server) -> Harness {
        let store = json!({"endpoint": s3.endpoint, "bucket": "backups", "credentialsSecret": {"name": "s3-creds"}});
        let backup = json!({"schedule": "0 0 1 1 *", "destination": {"s3": store}});
        let mut h = Harness::start(json!({"replicas": 3, "image": "kuberaft:test", "backup": backup}));
        h.put_s3_secret();
        h.converge("bootstrap 3", 3).await;
        h
    }

    /// Passes of the snapshot controller over the RaftSnapshot `name` (and of the kubelet, for
    /// its Jobs) until it is gone or `done` says so of its status, for at most 20 s.
    async fn drive_snapshot(&mut self, name: &str, done: impl Fn(&Value) -> bool) {
        for _ in 0..100 {
            let Some(seen) = self.api.get(&snapshot_path(name)) else { return };
            if done(&seen["status"]) {
                return;
            }
            let seen = serde_json::from_value(seen).expect("a RaftSnapshot");
            let _ = kuberaft::operator::backup::snapshot::reconcile(Arc::new(seen), self.ctx.clone()).await;
            self.kubelet.sync().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The Secret `s3-creds` with the test S3 server's credentials.
    fn put_s3_secret(&self) {
        let encode = |text: &str| kuberaft::base::base64::encode_base64(text.as_bytes());
        self.api.put(
            &secret_path("s3-creds"),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": NS},
                   "data": {"accessKeyId": encode(crate::s3::ACCESS_KEY),
                            "secretAccessKey": encode(crate::s3::SECRET_KEY)}}),
        );
    }

    /// `kubectl delete raft etcd`: its owned objects go with it (the garbage collector), and so
    /// do its pods; the claims stay.
    async fn delete_cluster(&mut self) {
        {
            let mut api = self.api.lock();
            api.objects.retain(|path, _| {
                !(path.contains("/raftclusters/")
                    || path.contains("/statefulsets/")
                    || path.contains("/configmaps/")
                    || path.contains("/services/")
                    || path.contains("/poddisruptionbudgets/")
                    || path.contains("/networkpolicies/"))
            });
        }
        self.kubelet.sync().await;
        assert!(self.kubelet.pods.is_empty(), "the pods went with the StatefulSet");
    }

    /// A new RaftCluster of the harness's name with `spec` (after [`Harness::delete_cluster`]).
    fn create_cluster(&mut self, spec: Value) {
        let uid = format!("5e1f0a9b-2222-4333-8444-{:012}", self.api.lock().history.len());
        self.api.put(
            &cluster_path(CLUSTER),
            json!({
                "apiVersion": "kuberaft.io/v1alpha1", "kind": "RaftCluster",
                "metadata": {"name": CLUSTER, "namespace": NS, "uid": uid, "generation": 1},
                "spec": spec,
            }),
        );
        self.reasons.clear();
        self.phases.clear();
    }
}

/// Issue 17: `spec.bootstrap.restore` names a RaftSnapshot, or a file on a claim.
/// - Naming a RaftSnapshot that has not succeeded, the new cluster waits: no StatefulSet,
///   Progressing `RestoreSourceNotReady`. Once it has, the members restore its object, and
///   `status.restoreSource` keeps it: the RaftSnapshot may go, and nothing changes.
/// - From a claim's file (what `kuberaft snapshot save` wrote there), the init container mounts
///   the claim read-only and the members start with its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_restores_a_raft_snapshot_named_or_a_file_on_a_claim() {
    if !crate::require::available(is_root(), "root (for mount namespaces)") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let s3 = crate::s3::S3Server::start("backups").await;
    let mut h = Harness::backed_up_to(&s3).await;
    let writer = h.client(&[0, 1, 2]);
    for k in 0..100 {
        writer.put(&format!("key-{k:03}"), Bytes::from(format!("value-{k}")), None).await.expect("a write");
    }
    let (kept, revision) = all_keys(&writer, "key-", 0).await;

    // A RaftSnapshot, taken by its controller.
    h.api.put(
        &snapshot_path("before"),
        json!({"apiVersion": "kuberaft.io/v1alpha1", "kind": "RaftSnapshot",
               "metadata": {"name": "before", "namespace": NS, "uid": "uid-before", "resourceVersion": "1"},
               "spec": {"clusterName": CLUSTER}}),
    );
    h.drive_snapshot("before", |status| matches!(status["phase"].as_str(), Some("Succeeded" | "Failed"))).await;
    let taken = h.api.get(&snapshot_path("before")).expect("stored")["status"].clone();
    assert_eq!((taken["phase"].as_str(), taken["revision"].as_i64()), (Some("Succeeded"), Some(revision)), "{taken:#}");

    // A file on a claim: what `kuberaft snapshot save` wrote there.
    let claim = h.kubelet.claim("restore-src");
    std::fs::create_dir_all(claim.join("saved")).expect("the claim");
    let saved = std::process::Command::new(env!("CARGO_BIN_EXE_kuberaft"))
        .args(["snapshot", "save"])
        .arg(claim.join("saved/etcd.snap"))
        .args(["--endpoints", &format!("http://{}:2379", pod_ip(1))])
        .output()
        .expect("run kuberaft");
    assert!(saved.status.success(), "{}", String::from_utf8_lossy(&saved.stderr));
    let file = std::fs::read(claim.join("saved/etcd.snap")).expect("the file");
    for k in 0..20 {
        writer.put(&format!("late-{k}"), Bytes::from("after the snapshots"), None).await.expect("a write");
    }
    drop(writer);
    let wipe = |h: &Harness| {
        for ordinal in 0..3 {
            std::fs::remove_dir_all(h.kubelet.volume(ordinal)).expect("delete the old claim");
        }
    };
    let assert_restored = |h: &Harness, from: &'static str| {
        let readers: Vec<Client> = (0..3).map(|ordinal| h.client(&[ordinal])).collect();
        let kept = kept.clone();
        async move {
            for (ordinal, reader) in readers.iter().enumerate() {
                let (restored, now) = all_keys(reader, "key-", 0).await;
                assert_eq!(now, revision, "etcd-{ordinal}: the revision of {from}");
                assert!(restored == kept, "etcd-{ordinal}: the keys differ from {from}'s");
                let (late, _) = all_keys(reader, "late-", 0).await;
                assert!(late.is_empty(), "etcd-{ordinal}: written after {from}: {late:?}");
            }
        }
    };

    // From the RaftSnapshot by name, which has not succeeded yet: the cluster waits.
    h.delete_cluster().await;
    wipe(&h);
    let mut pending = h.api.get(&snapshot_path("before")).expect("stored");
    pending["status"]["phase"] = json!("Running");
    h.api.put(&snapshot_path("before"), pending);
    h.create_cluster(json!({"replicas": 3, "image": "kuberaft:test",
                            "bootstrap": {"restore": {"snapshot": {"name": "before"}}}}));
    for _ in 0..3 {
        h.step().await;
    }
    assert!(h.api.get(&sts_path(CLUSTER)).is_none(), "no members before the snapshot has a file");
    assert_eq!(h.reasons, BTreeSet::from(["RestoreSourceNotReady".to_string()]));
    let progressing = h.status()["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing").cloned())
        .unwrap_or_default();
    let message = progressing["message"].as_str().unwrap_or_default();
    assert!(message.contains("RaftSnapshot before has not succeeded (phase Running)"), "{progressing}");
    let mut succeeded = h.api.get(&snapshot_path("before")).expect("stored");
    succeeded["status"] = taken.clone();
    h.api.put(&snapshot_path("before"), succeeded);
    h.converge("restored from RaftSnapshot before", 3).await;
    assert_eq!(h.status()["restoreSource"]["s3"], taken["s3"], "the object it named, kept");
    assert_restored(&h, "the RaftSnapshot").await;
    // The RaftSnapshot goes: the cluster keeps what it named, and its pods stay as they are.
    let template = h.api.get(&sts_path(CLUSTER)).expect("the StatefulSet")["spec"]["template"].clone();
    h.api.lock().objects.remove(&snapshot_path("before"));
    h.reasons.clear();
    for _ in 0..3 {
        h.step().await;
    }
    assert_eq!(h.api.get(&sts_path(CLUSTER)).expect("the StatefulSet")["spec"]["template"], template);
    assert!(h.converged(3) && !h.reasons.contains("RestoreSourceNotReady"), "{:?}", h.reasons);

    // From the claim's file, mounted read-only.
    h.delete_cluster().await;
    wipe(&h);
    h.create_cluster(json!({"replicas": 3, "image": "kuberaft:test",
                            "bootstrap": {"restore": {"persistentVolumeClaim":
                                {"claimName": "restore-src", "path": "saved/etcd.snap"}}}}));
    h.converge("restored from the claim", 3).await;
    assert_restored(&h, "the claim's file").await;
    assert_eq!(std::fs::read(claim.join("saved/etcd.snap")).expect("the file"), file, "the claim's file as it was");
}

/// Issue 17: backups onto a PersistentVolumeClaim, with the operator's Jobs run as it makes
/// them (the image's binary, the claim mounted, the termination message read back):
/// - a scheduled backup lands on the claim, whole (`kuberaft snapshot status` reads its
///   revision), and the next prunes it (retention 1);
/// - a RaftSnapshot lands there too, and a new cluster restores it by name, from the claim;
/// - deleting the RaftSnapshot (`Delete`) deletes its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_onto_a_claim_are_taken_by_jobs_and_a_new_cluster_restores_one() {
    if !crate::require::available(is_root(), "root (for mount namespaces)") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let backup = json!({"schedule": "0 0 1 1 *", "retention": {"count": 1},
                        "destination": {"persistentVolumeClaim": {"claimName": "etcd-backups"}}});
    let mut h = Harness::start(json!({"replicas": 3, "image": "kuberaft:test", "backup": backup}));
    let claim = h.kubelet.claim("etcd-backups");
    std::fs::create_dir_all(&claim).expect("the claim");
    h.converge("bootstrap 3", 3).await;
    let writer = h.client(&[0, 1, 2]);
    for k in 0..50 {
        writer.put(&format!("key-{k:03}"), Bytes::from(format!("value-{k}")), None).await.expect("a write");
    }

    // A scheduled backup, twice: each a file of the claim, the older pruned.
    let mut files = Vec::new();
    for round in 0..2 {
        writer.put("round", Bytes::from(format!("{round}")), None).await.expect("a write");
        let (_, revision) = all_keys(&writer, "key-", 0).await;
        let mut object = h.api.get(&cluster_path(CLUSTER)).expect("stored");
        object["status"]["backup"]["lastScheduleTime"] = json!("2000-01-01T00:00:00Z");
        h.api.put(&cluster_path(CLUSTER), object);
        let before = h.status()["backup"]["lastSuccess"]["location"].clone();
        for _ in 0..100 {
            h.step().await;
            let backup = h.status()["backup"].clone();
            if backup["lastSuccess"]["location"] != before || backup["lastFailure"].is_object() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let backup = h.status()["backup"].clone();
        assert!(backup["lastFailure"].is_null(), "{backup:#}\n{:?}", h.kubelet.job_exits);
        let success = &backup["lastSuccess"];
        assert_eq!(success["revision"], revision, "{backup:#}");
        let location = success["location"].as_str().expect("a location");
        let path = location.strip_prefix("pvc://etcd-backups/").expect("on the claim").to_string();
        assert!(path.starts_with("ns/etcd/etcd-"), "{path}");
        let checked = std::process::Command::new(env!("CARGO_BIN_EXE_kuberaft"))
            .args(["snapshot", "status", "-w", "json"])
            .arg(claim.join(&path))
            .output()
            .expect("run kuberaft");
        assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
        let report: Value = serde_json::from_slice(&checked.stdout).expect("JSON");
        assert_eq!(report["revision"], revision);
        assert_eq!(report["sha256"], success["sha256"]);
        files.push(path);
    }
    assert!(!claim.join(&files[0]).exists(), "the retention (1) pruned {}", files[0]);
    assert!(claim.join(&files[1]).exists());
    assert!(h.api.lock().objects.keys().all(|p| !p.contains("/jobs/")), "every Job deleted once read");
    assert!(h.kubelet.job_exits.iter().all(|(_, code)| *code == 0), "{:?}", h.kubelet.job_exits);
    let (kept, revision) = all_keys(&writer, "key-", 0).await;
    drop(writer);

    // A RaftSnapshot onto the claim (the cluster's destination), to be deleted with its file.
    h.api.put(
        &snapshot_path("nightly"),
        json!({"apiVersion": "kuberaft.io/v1alpha1", "kind": "RaftSnapshot",
               "metadata": {"name": "nightly", "namespace": NS, "uid": "uid-nightly", "resourceVersion": "1"},
               "spec": {"clusterName": CLUSTER, "deletionPolicy": "Delete"}}),
    );
    let snapshot = |h: &Harness| h.api.get(&snapshot_path("nightly"));
    h.drive_snapshot("nightly", |status| matches!(status["phase"].as_str(), Some("Succeeded" | "Failed"))).await;
    let taken = snapshot(&h).expect("stored")["status"].clone();
    assert_eq!(taken["phase"], "Succeeded", "{taken:#}\n{:?}", h.kubelet.job_exits);
    let path = taken["persistentVolumeClaim"]["path"].as_str().expect("a path").to_string();
    assert!(path.starts_with("ns/etcd/snapshots/nightly-") && claim.join(&path).exists(), "{path}");

    // A new cluster from it, by name: restored from the claim.
    h.delete_cluster().await;
    for ordinal in 0..3 {
        std::fs::remove_dir_all(h.kubelet.volume(ordinal)).expect("delete the old claim");
    }
    h.create_cluster(json!({"replicas": 3, "image": "kuberaft:test",
                            "bootstrap": {"restore": {"snapshot": {"name": "nightly"}}}}));
    h.converge("restored from RaftSnapshot nightly", 3).await;
    assert_eq!(h.status()["restoreSource"]["persistentVolumeClaim"]["path"], path.as_str());
    for ordinal in 0..3 {
        let (restored, now) = all_keys(&h.client(&[ordinal]), "key-", 0).await;
        assert_eq!(now, revision, "etcd-{ordinal}: the snapshot's revision");
        assert!(restored == kept, "etcd-{ordinal}: the keys differ from the snapshot's");
    }

    // Deleted (Delete): a Job deletes the file, then the resource goes.
    let mut object = snapshot(&h).expect("stored");
    object["metadata"]["deletionTimestamp"] = json!("2026-12-03T12:00:00Z");
    h.api.put(&snapshot_path("nightly"), object);
    h.drive_snapshot("nightly", |_| false).await;
    assert!(snapshot(&h).is_none(), "the resource went with its file\n{:?}", h.kubelet.job_exits);
    assert!(!claim.join(&path).exists(), "{path} deleted");
    assert!(claim.join(&files[1]).exists(), "the scheduled backup is not the snapshot's to delete");
}

/// What one rolling restart under writes showed.
struct Roll {
    /// Pods deleted and made again, in order.
    replaced: Vec<u32>,
    /// The leader and term before and after, and each leader the status reported between.
    before: (u64, String),
    after: (u64, String),
    leaders: Vec<(u64, String)>,
    /// Writes acknowledged while the pods restarted, and the longest time between two.
    acked: usize,
    longest_gap: Duration,
    took: Duration,
    /// The errors the writers saw, retryable ones (no endpoint could serve; outcome unknown; a
    /// 503 or 504) and others.
    retryable: Vec<String>,
    other: Vec<String>,
}

impl Roll {
    fn summary(&self) -> String {
        format!(
            "{} writes acknowledged in {:.1} s, longest gap between two {} ms, term {} -> {}, {} leader change(s), \
             pods replaced in the order {:?}, {} retryable error(s), {} other",
            self.acked,
            self.took.as_secs_f64(),
            self.longest_gap.as_millis(),
            self.before.0,
            self.after.0,
            self.leaders.len().saturating_sub(1),
            self.replaced,
            self.retryable.len(),
            self.other.len()
        )
    }
}

/// Acknowledged writes (key, when) and errors (retryable?, text) of one writer.
type WriterLog = (Vec<(String, Instant)>, Vec<(bool, String)>);

/// A writer of keys `{prefix}{writer}-{n}` (each value is its key) until `stop`; bounded in count.
async fn write_until(
    client: Client,
    prefix: String,
    writer: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> WriterLog {
    use kuberaft::client::ClientError;
    let (mut acked, mut errors) = (Vec::new(), Vec::new());
    for n in 0..200_000 {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let key = format!("{prefix}{writer}-{n:06}");
        match client.put(&key, Bytes::from(key.clone()), None).await {
            Ok(_) => acked.push((key, Instant::now())),
            Err(err) => {
                let retryable = matches!(
                    err,
                    ClientError::Unavailable { .. }
                        | ClientError::OutcomeUnknown { .. }
                        | ClientError::Api { status: 503 | 504, .. }
                );
                errors.push((retryable, err.to_string()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    (acked, errors)
}

impl Harness {
    /// `change` starts a rolling restart of all `replicas` pods; runs it to the end with 4
    /// writers writing all along, and checks that every acknowledged write is there.
    async fn roll_under_writes(
        &mut self,
        what: &str,
        replicas: u32,
        prefix: &str,
        change: impl FnOnce(&Harness),
    ) -> Roll {
        let before = self.leaders.last().cloned().expect("a leader before");
        let leaders_before = self.leaders.len() - 1;
        let replaced_before = self.kubelet.replaced.len();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let all: Vec<u32> = (0..replicas).collect();
        let writers: Vec<_> =
            (0..4).map(|w| tokio::spawn(write_until(self.client(&all), prefix.to_string(), w, stop.clone()))).collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        change(self);
        self.converge(what, replicas).await;
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut acked, mut retryable, mut other) = (Vec::new(), Vec::new(), Vec::new());
        for writer in writers {
            let (keys, errors) = writer.await.expect("a writer");
            acked.extend(keys);
            for (is_retryable, text) in errors {
                if is_retryable {
                    retryable.push(text)
                } else {
                    other.push(text)
                }
            }
        }
        // No acknowledged write lost: each is there, with its value.
        let (stored, _) = all_keys(&self.client(&all), prefix, 0).await;
        for (key, _) in &acked {
            assert_eq!(stored.get(key).map(|v| v.0.as_str()), Some(key.as_str()), "{what}: acknowledged {key} lost");
        }
        // The longest time without an acknowledgement while the pods restarted.
        let mut times: Vec<Instant> = acked.iter().map(|(_, at)| *at).filter(|at| *at >= started).collect();
        times.sort();
        let mut edges = vec![started];
        edges.extend(times.iter().copied().filter(|at| *at <= started + took));
        edges.push(started + took);
        let longest_gap = edges.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
        Roll {
            replaced: self.kubelet.replaced[replaced_before..].to_vec(),
            before,
            after: self.leaders.last().cloned().expect("a leader after"),
            leaders: self.leaders[leaders_before..].to_vec(),
            acked: times.len(),
            longest_gap,
            took,
            retryable,
            other,
        }
    }
}

/// Issue 17, must-show 4: an image change restarts 5 members one at a time, followers first
/// (highest ordinal first), the leader last after one handover, each once the one before runs
/// again and has caught up, while 4 writers write: the term moves by exactly one, no
/// acknowledged write is lost, and the writers see only retryable errors. The same change made
/// by the StatefulSet controller's own `RollingUpdate` (the operator paused) is reported beside
/// it (no wall-clock assertion: the machine is shared).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_change_restarts_five_members_one_at_a_time_the_leader_last_while_writes_go_on() {
    if !crate::require::available(is_root(), "root (for mount namespaces)") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut h = Harness::start(json!({"replicas": 5, "image": "kuberaft:test"}));
    h.converge("bootstrap 5", 5).await;
    let leader_ordinal = h.leader_ordinal();
    let leader = pod_name(leader_ordinal);
    h.reasons.clear();

    let roll = h
        .roll_under_writes("the operator's leader-last roll", 5, "roll-a/", |h| {
            h.set_spec(|spec| spec["image"] = json!("kuberaft:next"));
        })
        .await;
    eprintln!("operator, leader last: {}", roll.summary());
    let mut expected: Vec<u32> = (0..5).rev().filter(|&o| o != leader_ordinal).collect();
    expected.push(leader_ordinal);
    assert_eq!(roll.replaced, expected, "followers first, the highest ordinal first, the leader last");
    assert_eq!(roll.before.1, leader);
    assert_eq!(roll.after.0, roll.before.0 + 1, "one term: the handover's ({:?})", roll.leaders);
    assert_ne!(roll.after.1, leader, "the old leader handed over");
    assert_eq!(roll.leaders.len(), 2, "one leader change: {:?}", roll.leaders);
    assert!(roll.acked > 0, "writes went on while the pods restarted");
    assert!(roll.other.is_empty(), "only retryable errors: {:?}", roll.other);
    for reason in ["RestartMember", "TransferLeadership"] {
        assert!(h.reasons.contains(reason), "{reason} in {:?}", h.reasons);
    }
    let expected_names: Vec<String> = expected.iter().map(|&o| pod_name(o)).collect();
    assert_eq!(h.evictions(), expected_names, "through evictions, which the PodDisruptionBudget guards");
    assert!(h.kubelet.exits.is_empty(), "no member crashed: {:?}\n{}", h.kubelet.exits, h.kubelet.logs());

    // The same change by the StatefulSet controller, in ordinal order, for comparison.
    h.set_spec(|spec| spec["paused"] = json!(true));
    h.step().await;
    let controller = h
        .roll_under_writes("the StatefulSet controller's RollingUpdate", 5, "roll-b/", |h| {
            let mut sts = h.api.get(&sts_path(CLUSTER)).expect("the StatefulSet");
            sts["spec"]["template"]["spec"]["containers"][0]["image"] = json!("kuberaft:after");
            sts["spec"]["updateStrategy"] = json!({"type": "RollingUpdate"});
            h.api.put(&sts_path(CLUSTER), sts);
        })
        .await;
    eprintln!("StatefulSet RollingUpdate: {}", controller.summary());
    assert_eq!(controller.replaced, vec![4, 3, 2, 1, 0], "the controller's ordinal order");
    assert!(controller.other.is_empty(), "{:?}", controller.other);
}

impl Harness {
    /// An annotation on the RaftCluster, as `kubectl annotate --overwrite` sets it (no new
    /// generation: annotations are metadata).
    fn annotate(&self, key: &str, value: &str) {
        let mut object = self.api.get(&cluster_path(CLUSTER)).expect("stored");
        object["metadata"]["annotations"][key] = json!(value);
        self.api.put(&cluster_path(CLUSTER), object);
    }

    /// The pods evicted so far, by name, in order: the evictions the disruption budget allowed
    /// (one it refused is tried again at a later pass, and is counted once it goes through).
    fn evictions(&self) -> Vec<String> {
        let evicted = &self.api.lock().evicted;
        evicted.iter().map(|path| path.rsplit('/').next().unwrap_or_default().to_string()).collect()
    }

    /// The reasons of the events published so far.
    fn event_reasons(&self) -> Vec<String> {
        self.api.lock().events.iter().filter_map(|e| e["reason"].as_str().map(str::to_string)).collect()
    }

    /// Reconcile and kubelet passes until `done` holds; bounded in passes and time.
    async fn until(&mut self, what: &str, done: impl Fn(&Harness) -> bool) {
        let started = Instant::now();
        for _ in 0..300 {
            self.step().await;
            if done(self) {
                return;
            }
            if started.elapsed() > Duration::from_secs(60) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{what}: not within {:?}\nstatus: {:#}\n{}", started.elapsed(), self.status(), self.kubelet.logs());
    }
}

/// Issue 17, must-show 3: 5 members, and 3 of them (the leader among them) lose their data for
/// good, after one of the other two fell behind. While a majority answers the operator refuses to
/// recover; once only 2 answer, the annotation recovers a 5-member cluster from the member with
/// the most complete log (not the lowest ordinal, which fell behind): it keeps
/// its log and id, the other 4 are added back under new ids, and every key the survivor held is
/// on every member with its value and revisions. The evictions pass the PodDisruptionBudget as
/// the API server applies it, while no member is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_majority_of_five_is_recovered_on_request_from_the_most_complete_survivor() {
    use kuberaft::operator::builders::RECOVER_QUORUM_ANNOTATION;
    if !crate::require::available(is_root(), "root (for mount namespaces)") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut h = Harness::start(json!({"replicas": 5, "image": "kuberaft:test"}));
    h.converge("bootstrap 5", 5).await;
    let all: Vec<u32> = (0..5).collect();
    let writer = h.client(&all);
    for k in 0..300 {
        writer.put(&format!("keep/{k:04}"), Bytes::from(format!("value-{k}")), None).await.expect("a write");
    }

    // Asked while the cluster is healthy: refused, audited, and nothing changes.
    let term = h.status()["term"].as_u64().unwrap_or(0);
    h.annotate(RECOVER_QUORUM_ANNOTATION, "too-early");
    h.step().await;
    let record = h.status()["recovery"].clone();
    assert_eq!(
        (record["request"].as_str(), record["phase"].as_str()),
        (Some("too-early"), Some("Refused")),
        "{record:#}"
    );
    assert!(record["message"].as_str().unwrap_or_default().contains("leads with a majority"), "{record:#}");
    assert!(h.event_reasons().contains(&"QuorumRecoveryRefused".to_string()));
    assert!(h.evictions().is_empty(), "nothing restarted");
    assert!(record.get("survivor").is_none());
    h.converge("still as it was", 5).await;
    assert_eq!(h.status()["term"].as_u64(), Some(term));

    // The leader and the two highest other ordinals will lose their data. First the lower of the
    // two others falls behind: its process is killed while 50 more keys are written, so the
    // survivor with the most complete log is the higher ordinal, not the first in line. (Killed,
    // not stopped: a stopped process's sockets still take what the leader streams to it, and it
    // would read those appends once it runs again.)
    let leader_ordinal = h.leader_ordinal();
    let mut lost: Vec<u32> = vec![leader_ordinal];
    lost.extend((0..5).rev().filter(|&o| o != leader_ordinal).take(2));
    let survivors: Vec<u32> = (0..5).filter(|o| !lost.contains(o)).collect();
    let (behind, ahead) = (survivors[0], survivors[1]);
    let mut killed = h.kubelet.pods.get_mut(&behind).and_then(|p| p.child.take()).expect("it runs");
    let _ = killed.kill();
    let _ = killed.wait();
    let to_leader = h.client(&[leader_ordinal]);
    for k in 300..350 {
        let written = to_leader.put(&format!("keep/{k:04}"), Bytes::from(format!("value-{k}")), None).await;
        if let Err(e) = written {
            panic!("a write with one member down: {e}");
        }
    }
    // A write is acknowledged once three of the four running members hold it, and the others
    // learn that it committed with the leader's next message. Losing the majority right after
    // the last acknowledgement could leave the survivor without it, or with it not yet applied
    // (this happened once in CI: 349 keys). Raft promises a survivor nothing there, so the
    // scenario waits until the one ahead applied every acknowledged key.
    let from_ahead = h.client(&[ahead]);
    let mut caught_up = 0;
    for _ in 0..100 {
        caught_up = all_keys_read(&from_ahead, "keep/", 0, Consistency::Serializable).await.0.len();
        if caught_up == 350 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(caught_up, 350, "the member ahead applies every acknowledged key while the leader runs");
    // Their processes die and their volumes are wiped; restarted empty, they cannot join a
    // cluster without a leader. The killed member is started again (the kubelet's next sync),
    // behind.
    for &ordinal in &lost {
        if let Some(mut child) = h.kubelet.pods.get_mut(&ordinal).and_then(|p| p.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        std::fs::remove_dir_all(h.kubelet.volume(ordinal)).expect("wipe the volume");
    }
    h.until("the status says the quorum is lost", |h| h.status()["phase"] == "QuorumLost").await;

    // What each survivor holds: its log's end, and its keys (read from it alone).
    let mut held = Vec::new();
    for &ordinal in &survivors {
        let client = h.client(&[ordinal]);
        // The killed one answers once the kubelet started it again and it replayed its log.
        let mut answer = client.status_of(&h.url(ordinal)).await;
        for _ in 0..100 {
            if answer.is_ok() {
                break;
            }
            h.step().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            answer = client.status_of(&h.url(ordinal)).await;
        }
        let status = answer.expect("a survivor answers");
        let (keys, _) = all_keys_read(&client, "keep/", 0, Consistency::Serializable).await;
        held.push((ordinal, status.last_log_term, status.last_log_index, status.id.clone(), keys));
    }
    let best = held
        .iter()
        .min_by_key(|(ordinal, term, index, _, _)| (std::cmp::Reverse((*term, *index)), *ordinal))
        .expect("survivors");
    let (survivor, survivor_id, survivor_keys) = (best.0, best.3.clone(), best.4.clone());
    let logs: Vec<(u32, u64, u64)> = held.iter().map(|(o, term, index, _, _)| (*o, *term, *index)).collect();
    assert_eq!(survivor, ahead, "the member that did not fall behind: (ordinal, last term, last index) {logs:?}");
    assert!(held[1].2 > held[0].2, "its log is longer");
    assert_eq!((held[0].4.len(), survivor_keys.len()), (300, 350), "the survivor held every acknowledged key");

    h.annotate(RECOVER_QUORUM_ANNOTATION, "2026-12-03T14:00:00Z");
    h.converge("recover from the lost majority", 5).await;
    let record = h.status()["recovery"].clone();
    eprintln!("status.recovery: {record:#}\nevictions: {:?}", h.evictions());
    assert_eq!(record["phase"], "Completed", "{record:#}");
    assert_eq!(record["survivor"], pod_name(survivor), "the most complete log: {record:#}");
    assert_eq!(record["survivorLastLogIndex"].as_u64(), Some(best.2), "{record:#}");
    let replaced: Vec<String> = (0..5).filter(|&o| o != survivor).map(pod_name).collect();
    assert_eq!(record["replaced"], json!(replaced));
    assert!(record["message"].as_str().unwrap_or_default().contains("are lost"), "{record:#}");
    let reasons = h.event_reasons();
    for reason in ["QuorumRecoveryStarted", "QuorumRecovered"] {
        assert!(reasons.contains(&reason.to_string()), "{reason} in {reasons:?}");
    }
    // The survivor restarted first, then the others from the highest ordinal, through evictions
    // that the budget allowed while no member was ready.
    let mut order = vec![pod_name(survivor)];
    order.extend((0..5).rev().filter(|&o| o != survivor).map(pod_name));
    assert_eq!(h.evictions(), order);

    // The survivor kept its id; every other member is new; all 5 vote.
    h.assert_membership(5).await;
    let members = h.status()["members"].as_array().cloned().unwrap_or_default();
    for (ordinal, member) in members.iter().enumerate() {
        let id = member["id"].as_str().unwrap_or_default();
        if ordinal as u32 == survivor {
            assert_eq!(id, survivor_id, "the survivor keeps its id");
        } else {
            assert!(held.iter().all(|(_, _, _, old, _)| old != id), "{} is a new member", pod_name(ordinal as u32));
        }
    }
    // Every key the survivor held, on every member, with its value and revisions.
    for ordinal in 0..5 {
        let (keys, _) = all_keys_read(&h.client(&[ordinal]), "keep/", 0, Consistency::Serializable).await;
        assert_eq!(keys, survivor_keys, "{}", pod_name(ordinal));
    }
    // The other survivor's old data is set aside in its volume, never read again.
    let other = survivors.iter().find(|&&o| o != survivor).copied().expect("two survivors");
    let id = record["id"].as_str().unwrap_or_default();
    let aside = h.kubelet.volume(other).join(format!("data.before-recovery-{id}"));
    assert!(aside.join("member.json").is_file(), "{} set aside", aside.display());
    // And the cluster takes writes again.
    let writer = h.client(&all);
    writer.put("after/recovery", Bytes::from_static(b"yes"), None).await.expect("a write after the recovery");
    assert!(h.kubelet.exits.keys().all(|o| lost.contains(o)), "only the wiped members crashed: {:?}", h.kubelet.exits);
}
