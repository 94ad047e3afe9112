//! `kubectl raft` (DESIGN.md §5, "The kubectl plugin"): the same binary run as `kubectl-raft`
//! (the name of the file it was started as; Krew installs it so), or as `kuberaft kubectl`.
//! It talks to the Kubernetes API server only, as kubectl does (the kubeconfig, `--context`,
//! `--kubeconfig`, `-n`): the RaftCluster and RaftSnapshot resources, and the members through
//! the API server's pod proxy (`/api/v1/namespaces/NS/pods/POD:2379/proxy/v1/status`;
//! `https:POD:2379` for a cluster with `spec.tls`). Nothing needs a port-forward or a route to
//! the pods.
//!
//! - `status CLUSTER`: the resource's phase, leader, term, conditions and members, as the
//!   operator reports them;
//! - `members CLUSTER`: each member as it reports itself;
//! - `endpoints CLUSTER`: the endpoint list each member holds, and whether they agree;
//! - `snapshot CLUSTER [NAME]`: a RaftSnapshot, one backup now;
//! - `transfer-leader CLUSTER [--to MEMBER]`: `POST /v1/leader/transfer` on the leader;
//! - `pause CLUSTER` / `resume CLUSTER`: `spec.paused` (the operator changes nothing while
//!   paused, and keeps the status current).
//!
//! Exit codes are kuberaft's: 0 ok, 1 failed (a missing cluster, a member that did not answer,
//! members that disagree), 2 usage.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Limited};
use hyper::{Method, Request};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::table::{clean_cell, or_dash, render};
use super::{to_json_line, write_stdout, CliError, OutputFormat};
use crate::base::wire::{AuthenticateRequest, AuthenticateResponse, Member, Status, TransferRequest};
use crate::base::wire::{TransferResponse, DEFAULT_CLIENT_PORT};
use crate::operator::crd::snapshot::{DeletionPolicy, RaftSnapshot, RaftSnapshotSpec};
use crate::operator::crd::RaftCluster;
use crate::operator::{builders, member_ordinal};

/// The file name the binary answers to as a kubectl plugin (`kubectl raft ...`).
pub const PLUGIN_NAME: &str = "kubectl-raft";
/// The most bytes read of one member's answer through the proxy.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Whether the binary was started as the plugin: `argv[0]`'s file name is `kubectl-raft`.
pub fn invoked_as_plugin(argv0: Option<&OsString>) -> bool {
    argv0
        .map(Path::new)
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.strip_suffix(".exe").unwrap_or(name) == PLUGIN_NAME)
}

/// `kubectl raft ...` on its own: the same command as `kuberaft kubectl ...`, with kubectl's
/// name in its help and errors.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl raft",
    bin_name = "kubectl raft",
    version,
    about = "kuberaft's RaftClusters: status, members, endpoints, snapshots, leadership, pause"
)]
pub struct PluginCli {
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(subcommand)]
    pub action: KubectlAction,
}

/// Runs the plugin from its command line (`argv[0]` is `kubectl-raft`).
pub fn run_plugin(argv: Vec<OsString>) -> ExitCode {
    let cli = PluginCli::parse_from(argv);
    super::run(super::Cli { command: super::Commands::Kubectl(KubectlCommand { kube: cli.kube, action: cli.action }) })
}

/// `kuberaft kubectl ...`.
#[derive(Debug, Args)]
pub struct KubectlCommand {
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(subcommand)]
    pub action: KubectlAction,
}

/// How to reach the API server, as kubectl takes it.
#[derive(Clone, Debug, Args)]
pub struct KubeArgs {
    /// The RaftCluster's namespace (the context's namespace when not given, else "default").
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// The kubeconfig context (the current context when not given).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The kubeconfig file (else $KUBECONFIG, else ~/.kube/config, else the in-cluster config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// table (the default) or json.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// How long one call may take, to the API server or to a member through it: 10s, 500ms, 1m.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_timeout)]
    pub request_timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum KubectlAction {
    /// The RaftCluster's phase, leader, term, conditions and members, as the operator reports them.
    Status { cluster: String },
    /// Each member as it reports itself: id, role, term, leader, commit and applied index, health.
    Members { cluster: String },
    /// The endpoint list each member holds, and whether they agree (with each other and the operator's).
    Endpoints { cluster: String },
    /// Create a RaftSnapshot of CLUSTER (one backup now, into its spec.backup destination).
    Snapshot {
        cluster: String,
        /// The RaftSnapshot's name (CLUSTER-<UTC time> when not given).
        name: Option<String>,
        /// Whether deleting the RaftSnapshot deletes the stored backup too.
        #[arg(long, value_enum, default_value_t = Policy::Retain)]
        deletion_policy: Policy,
    },
    /// Move leadership to MEMBER (a name such as etcd-2, or a hex id), else to the most caught-up voter.
    TransferLeader {
        cluster: String,
        #[arg(long)]
        to: Option<String>,
    },
    /// Set spec.paused: the operator changes nothing in the cluster (and keeps its status current).
    Pause { cluster: String },
    /// Clear spec.paused: the operator goes on reconciling the cluster.
    Resume { cluster: String },
}

/// `--deletion-policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    Retain,
    Delete,
}

/// `10s`, `500ms`, `2m`, or plain seconds; more than zero.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| format!("'{text}' is not a duration such as 10s, 500ms or 1m"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("'{text}': the unit must be ms, s or m")),
    };
    if duration.is_zero() {
        return Err("the timeout must be more than zero".to_string());
    }
    Ok(duration)
}

fn failed(message: impl Into<String>) -> CliError {
    CliError::Failed(message.into())
}

/// A kube error as a message that says what was asked.
fn kube_error(what: &str, err: kube::Error) -> CliError {
    match err {
        kube::Error::Api(status) if status.code == 403 => {
            failed(format!("{what}: forbidden (check your RBAC): {}", status.message))
        }
        kube::Error::Api(status) => failed(format!("{what}: {} (HTTP {})", status.message, status.code)),
        other => failed(format!("{what}: cannot reach the Kubernetes API: {other}")),
    }
}

impl KubeArgs {
    /// Clients as kubectl would make them: one for the API (retrying what kube retries: 429,
    /// 503, 504), and one for the members through the pod proxy, which never retries (the API
    /// server answers 503 for a pod it cannot reach, which is the answer); and the namespace.
    pub async fn connect(&self) -> Result<(Client, Client, String), CliError> {
        crate::base::tls::install_default_provider();
        let options = KubeConfigOptions { context: self.context.clone(), cluster: None, user: None };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let file =
                    Kubeconfig::read_from(path).map_err(|e| failed(format!("--kubeconfig {}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(file, &options).await.map_err(|e| match &self.context {
                    Some(context) => failed(format!("--context {context} (in {}): {e}", path.display())),
                    None => failed(format!("--kubeconfig {}: {e}", path.display())),
                })?
            }
            (None, Some(context)) => {
                Config::from_kubeconfig(&options).await.map_err(|e| failed(format!("--context {context}: {e}")))?
            }
            (None, None) => Config::infer().await.map_err(|e| {
                failed(format!("no Kubernetes configuration (kubeconfig, $KUBECONFIG or in-cluster): {e}"))
            })?,
        };
        let mut config = config;
        config.connect_timeout = Some(self.request_timeout);
        config.read_timeout = Some(self.request_timeout);
        config.write_timeout = Some(self.request_timeout);
        let namespace = self.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
        let client_of = |config: Config| {
            Client::try_from(config).map_err(|e| failed(format!("cannot make a Kubernetes client: {e}")))
        };
        let mut once = config.clone();
        once.default_retry = false;
        Ok((client_of(config)?, client_of(once)?, namespace))
    }
}

/// Runs one action.
pub async fn run(command: KubectlCommand) -> Result<(), CliError> {
    let (client, proxy, namespace) = command.kube.connect().await?;
    let tool = Tool { client, proxy, namespace, output: command.kube.output, timeout: command.kube.request_timeout };
    match command.action {
        KubectlAction::Status { cluster } => tool.status(&cluster).await,
        KubectlAction::Members { cluster } => tool.members(&cluster).await,
        KubectlAction::Endpoints { cluster } => tool.endpoints(&cluster).await,
        KubectlAction::Snapshot { cluster, name, deletion_policy } => {
            tool.snapshot(&cluster, name, deletion_policy).await
        }
        KubectlAction::TransferLeader { cluster, to } => tool.transfer_leader(&cluster, to.as_deref()).await,
        KubectlAction::Pause { cluster } => tool.pause(&cluster, true).await,
        KubectlAction::Resume { cluster } => tool.pause(&cluster, false).await,
    }
}

struct Tool {
    client: Client,
    /// The client of the pod proxy (no retries).
    proxy: Client,
    namespace: String,
    output: OutputFormat,
    timeout: Duration,
}

/// One member's answer through the proxy.
type Answer = Result<Status, String>;

/// What the API server's proxy said to one call: HTTP status and body.
struct Proxied {
    status: u16,
    body: Vec<u8>,
}

/// The message of an error answer: the member's (`{"error": {"message"}}`), the API server's
/// (a `Status`), or the text.
fn error_message(answer: &Proxied) -> String {
    let value: Option<serde_json::Value> = serde_json::from_slice(&answer.body).ok();
    let message = value
        .as_ref()
        .and_then(|v| v["error"]["message"].as_str().or_else(|| v["message"].as_str()))
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).trim().chars().take(300).collect());
    format!("HTTP {}: {message}", answer.status)
}

impl Tool {
    fn clusters(&self) -> Api<RaftCluster> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The RaftCluster, or a clear error when there is none.
    async fn cluster(&self, name: &str) -> Result<RaftCluster, CliError> {
        let what = format!("RaftCluster {name} in namespace {}", self.namespace);
        match self.clusters().get_opt(name).await {
            Ok(Some(cluster)) => Ok(cluster),
            Ok(None) => Err(failed(format!(
                "{what} not found (kubectl get raftclusters -n {} lists the namespace's)",
                self.namespace
            ))),
            Err(err) => Err(kube_error(&what, err)),
        }
    }

    /// The path of `rest` on `pod`'s client port through the API server's pod proxy.
    fn proxy_path(&self, cluster: &RaftCluster, pod: &str, rest: &str) -> String {
        let scheme = if cluster.spec.tls.is_some() { "https:" } else { "" };
        format!("/api/v1/namespaces/{}/pods/{scheme}{pod}:{DEFAULT_CLIENT_PORT}/proxy{rest}", self.namespace)
    }

    /// One call to a member through the pod proxy.
    async fn proxy(
        &self,
        cluster: &RaftCluster,
        pod: &str,
        method: Method,
        rest: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
    ) -> Result<Proxied, String> {
        let mut request = Request::builder().method(method).uri(self.proxy_path(cluster, pod, rest));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        if let Some(token) = token {
            // The API server keeps `Authorization` for itself; members also take `token`.
            request = request.header("token", token);
        }
        let request = request.body(kube::client::Body::from(body.unwrap_or_default())).map_err(|e| e.to_string())?;
        let call = async {
            let response = self.proxy.send(request).await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes()
                .to_vec();
            Ok(Proxied { status, body })
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// A JSON answer of a member through the pod proxy.
    async fn proxy_json<T: DeserializeOwned>(
        &self,
        cluster: &RaftCluster,
        pod: &str,
        method: Method,
        rest: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
    ) -> Result<T, String> {
        let answer = self.proxy(cluster, pod, method, rest, body, token).await?;
        if !(200..300).contains(&answer.status) {
            return Err(error_message(&answer));
        }
        serde_json::from_slice(&answer.body).map_err(|e| format!("not a member's answer: {e}"))
    }

    /// The cluster's members by name, in ordinal order: the membership the operator reports,
    /// or, before it reported one, the cluster's pods.
    async fn member_names(&self, cluster: &RaftCluster) -> Result<Vec<String>, CliError> {
        let name = cluster.name_any();
        let mut names: Vec<String> =
            cluster.status.iter().flat_map(|s| s.members.iter().map(|m| m.name.clone())).collect();
        if names.is_empty() {
            let selector = builders::selector_labels(cluster)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let pods = Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| kube_error(&format!("the pods of RaftCluster {name}"), e))?;
            names = pods.items.iter().map(|p| p.name_any()).collect();
        }
        names.retain(|n| member_ordinal(&name, n).is_some());
        names.sort_by_key(|n| member_ordinal(&name, n));
        names.dedup();
        if names.is_empty() {
            return Err(failed(format!("RaftCluster {name} has no members yet (no status and no pods)")));
        }
        Ok(names)
    }

    /// Every member's `/v1/status`, asked at once.
    async fn statuses(&self, cluster: &RaftCluster) -> Result<Vec<(String, Answer)>, CliError> {
        let names = self.member_names(cluster).await?;
        let asks =
            names.iter().map(|name| self.proxy_json::<Status>(cluster, name, Method::GET, "/v1/status", None, None));
        let answers = futures::future::join_all(asks).await;
        Ok(names.into_iter().zip(answers).collect())
    }

    /// Why members may not answer through the proxy, when that is the likely reason.
    fn hint(cluster: &RaftCluster) -> String {
        if cluster.spec.tls.is_some() {
            format!(
                "; the members of a cluster with spec.tls require a client certificate, which the API server's \
                 pod proxy does not present: use `kubectl raft status {0}` (the operator's view), or \
                 `kubectl port-forward svc/{1} 2379` and `kuberaft endpoint status` with the Secret {2}",
                cluster.name_any(),
                builders::client_service_name(cluster),
                crate::operator::certs::client_secret_name(cluster)
            )
        } else {
            String::new()
        }
    }

    fn print_json<T: Serialize>(&self, value: &T) -> Result<(), CliError> {
        write_stdout(to_json_line(value)?.as_bytes())
    }

    async fn status(&self, name: &str) -> Result<(), CliError> {
        let cluster = self.cluster(name).await?;
        let status = cluster.status.clone().unwrap_or_default();
        if self.output == OutputFormat::Json {
            return self.print_json(&json!({
                "namespace": self.namespace,
                "name": cluster.name_any(),
                "replicas": cluster.spec.replicas,
                "paused": cluster.spec.paused,
                "status": status,
            }));
        }
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
        let mut out = String::new();
        let mut line = |key: &str, value: String| out.push_str(&format!("{key:<12}{}\n", clean_cell(&value)));
        line("Name:", format!("{}/{}", self.namespace, cluster.name_any()));
        line("Phase:", status.phase.clone().unwrap_or_else(|| "(not reconciled yet)".to_string()));
        line("Leader:", dash(status.leader.clone()));
        line("Term:", dash(status.term.map(|t| t.to_string())));
        line("Commit:", dash(status.commit_index.map(|c| c.to_string())));
        line(
            "Replicas:",
            format!("{} desired, {} ready", cluster.spec.replicas, dash(status.ready_replicas.map(|r| r.to_string()))),
        );
        line("Paused:", if cluster.spec.paused { "yes".to_string() } else { "no".to_string() });
        line("Endpoints:", if status.endpoints.is_empty() { "-".to_string() } else { status.endpoints.join(",") });
        if cluster.spec.backup.is_some() {
            let backup = status.backup.clone().unwrap_or_default();
            let success = backup.last_success.map_or("none".to_string(), |s| {
                format!("{} {} (revision {}, {} bytes)", s.time, s.location, s.revision, s.size)
            });
            line("Backup:", format!("last success {success}"));
            if let Some(failure) = backup.last_failure {
                line("", format!("last failure {} {}: {}", failure.time, failure.reason, failure.message));
            }
        }
        if let Some(recovery) = &status.recovery {
            line("Recovery:", format!("{} ({}): {}", recovery.phase, recovery.request, recovery.message));
        }
        out.push('\n');
        let conditions: Vec<Vec<String>> = status
            .conditions
            .iter()
            .map(|c| vec![c.type_.clone(), c.status.clone(), or_dash(&c.reason), clean_cell(&c.message)])
            .collect();
        if conditions.is_empty() {
            out.push_str("No conditions yet.\n");
        } else {
            out.push_str(&render(&["CONDITION", "STATUS", "REASON", "MESSAGE"], &conditions));
        }
        out.push('\n');
        let members: Vec<Vec<String>> = status
            .members
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    or_dash(&m.id),
                    or_dash(&m.role),
                    if m.healthy { "yes" } else { "no" }.to_string(),
                    m.applied_index.to_string(),
                    m.lag.to_string(),
                ]
            })
            .collect();
        if members.is_empty() {
            out.push_str("No members reported yet.\n");
        } else {
            out.push_str(&render(&["MEMBER", "ID", "ROLE", "HEALTHY", "APPLIED", "LAG"], &members));
        }
        write_stdout(out.as_bytes())
    }

    async fn members(&self, name: &str) -> Result<(), CliError> {
        let cluster = self.cluster(name).await?;
        let answers = self.statuses(&cluster).await?;
        if self.output == OutputFormat::Json {
            let reports: Vec<serde_json::Value> = answers
                .iter()
                .map(|(member, answer)| match answer {
                    Ok(status) => json!({"member": member, "status": status}),
                    Err(error) => json!({"member": member, "error": error}),
                })
                .collect();
            self.print_json(&reports)?;
        } else {
            let rows: Vec<Vec<String>> = answers
                .iter()
                .map(|(member, answer)| match answer {
                    Ok(status) => vec![
                        member.clone(),
                        or_dash(&status.id),
                        status.role.to_string(),
                        status.term.to_string(),
                        or_dash(&status.leader),
                        status.commit_index.to_string(),
                        status.applied_index.to_string(),
                        if status.errors.is_empty() {
                            "healthy".to_string()
                        } else {
                            clean_cell(&format!("unhealthy: {}", status.errors.join("; ")))
                        },
                    ],
                    Err(error) => {
                        let mut row = vec![member.clone()];
                        row.extend(std::iter::repeat_n("-".to_string(), 6));
                        row.push(clean_cell(&format!("unreachable: {error}")));
                        row
                    }
                })
                .collect();
            let headers = ["NAME", "ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "HEALTH"];
            write_stdout(render(&headers, &rows).as_bytes())?;
        }
        let silent = answers.iter().filter(|(_, a)| a.is_err()).count();
        if silent > 0 {
            return Err(failed(format!(
                "{silent} of {} members did not answer{}",
                answers.len(),
                Self::hint(&cluster)
            )));
        }
        Ok(())
    }

    async fn endpoints(&self, name: &str) -> Result<(), CliError> {
        let cluster = self.cluster(name).await?;
        let answers = self.statuses(&cluster).await?;
        let listed = |members: &[Member]| -> Vec<String> {
            let mut urls: Vec<String> = members.iter().map(|m| m.client_url.clone()).collect();
            urls.sort();
            urls
        };
        let operators: Vec<String> = {
            let mut urls = cluster.status.as_ref().map(|s| s.endpoints.clone()).unwrap_or_default();
            urls.sort();
            urls
        };
        // Each member's (sorted client URLs, membership hash), or why it did not answer.
        type Held<'a> = Result<(Vec<String>, String), &'a String>;
        let lists: Vec<(&String, Held)> = answers
            .iter()
            .map(|(member, answer)| (member, answer.as_ref().map(|s| (listed(&s.members), s.membership_hash.clone()))))
            .collect();
        let answered: Vec<&(Vec<String>, String)> = lists.iter().filter_map(|(_, l)| l.as_ref().ok()).collect();
        let silent: Vec<&str> = lists.iter().filter(|(_, l)| l.is_err()).map(|(m, _)| m.as_str()).collect();
        let agree_with_each_other = answered.windows(2).all(|pair| pair[0] == pair[1]);
        let agree_with_operator = answered.iter().all(|(urls, _)| *urls == operators);
        let agree = silent.is_empty() && !answered.is_empty() && agree_with_each_other && agree_with_operator;

        let mut problems = Vec::new();
        if !silent.is_empty() {
            problems.push(format!("{} did not answer", silent.join(", ")));
        }
        if !agree_with_each_other {
            problems.push("the members hold different lists".to_string());
        }
        if !answered.is_empty() && agree_with_each_other && !agree_with_operator {
            let held = &answered[0].0;
            let missing: Vec<&str> = operators.iter().filter(|u| !held.contains(u)).map(String::as_str).collect();
            let extra: Vec<&str> = held.iter().filter(|u| !operators.contains(u)).map(String::as_str).collect();
            let mut differences = Vec::new();
            if !missing.is_empty() {
                differences.push(format!("the members do not hold {}", missing.join(",")));
            }
            if !extra.is_empty() {
                differences.push(format!("the operator's does not list {}", extra.join(",")));
            }
            problems.push(format!(
                "the members' list differs from the operator's (status.endpoints): {}",
                differences.join(", and ")
            ));
        }
        if self.output == OutputFormat::Json {
            let members: Vec<serde_json::Value> = answers
                .iter()
                .map(|(member, answer)| match answer {
                    Ok(status) => json!({
                        "member": member,
                        "membershipHash": status.membership_hash,
                        "members": status.members,
                    }),
                    Err(error) => json!({"member": member, "error": error}),
                })
                .collect();
            self.print_json(&json!({
                "members": members,
                "operatorEndpoints": cluster.status.as_ref().map(|s| s.endpoints.clone()).unwrap_or_default(),
                "agree": agree,
                "problems": problems,
            }))?;
        } else {
            let mut rows: Vec<Vec<String>> = lists
                .iter()
                .map(|(member, list)| match list {
                    Ok((urls, hash)) => vec![member.to_string(), or_dash(hash), clean_cell(&urls.join(","))],
                    Err(error) => {
                        vec![member.to_string(), "-".to_string(), clean_cell(&format!("unreachable: {error}"))]
                    }
                })
                .collect();
            // The operator's list (what the ConfigMap names), in the same columns.
            rows.push(vec!["(operator)".to_string(), "-".to_string(), clean_cell(&operators.join(","))]);
            let mut out = render(&["MEMBER", "MEMBERSHIP HASH", "ENDPOINTS (CLIENT URLS)"], &rows);
            if agree {
                out.push_str(&format!(
                    "\nAgree: the {} members hold the same list of {}, as the operator's.\n",
                    answered.len(),
                    operators.len()
                ));
            } else {
                out.push_str(&format!("\nDisagree: {}.\n", problems.join("; ")));
            }
            write_stdout(out.as_bytes())?;
        }
        if agree {
            Ok(())
        } else {
            let hint = if silent.is_empty() { String::new() } else { Self::hint(&cluster) };
            Err(failed(format!("the endpoint lists do not agree: {}{hint}", problems.join("; "))))
        }
    }

    async fn snapshot(&self, cluster_name: &str, name: Option<String>, policy: Policy) -> Result<(), CliError> {
        let name = match name {
            Some(name) => {
                if !valid_name(&name) {
                    return Err(CliError::Usage(format!(
                        "'{name}' is not a resource name (lowercase letters, digits, '-' and '.', at most 253)"
                    )));
                }
                name
            }
            None => format!("{cluster_name}-{}", Timestamp::now().strftime("%Y%m%d-%H%M%S")),
        };
        let cluster = self.cluster(cluster_name).await?;
        if cluster.spec.backup.is_none() {
            return Err(failed(format!(
                "RaftCluster {cluster_name} has no spec.backup, so a RaftSnapshot has no destination to go to: \
                 add spec.backup, or apply a RaftSnapshot with its own spec.destination \
                 (examples/snapshots/raftsnapshot.yaml)"
            )));
        }
        let spec = RaftSnapshotSpec {
            cluster_name: cluster_name.to_string(),
            destination: None,
            deletion_policy: match policy {
                Policy::Retain => DeletionPolicy::Retain,
                Policy::Delete => DeletionPolicy::Delete,
            },
        };
        let snapshot = RaftSnapshot::new(&name, spec);
        let api: Api<RaftSnapshot> = Api::namespaced(self.client.clone(), &self.namespace);
        let created = match api.create(&PostParams::default(), &snapshot).await {
            Ok(created) => created,
            Err(kube::Error::Api(status)) if status.code == 409 => {
                return Err(failed(format!("RaftSnapshot {name} exists already in namespace {}", self.namespace)));
            }
            Err(err) => return Err(kube_error(&format!("creating RaftSnapshot {name}"), err)),
        };
        if self.output == OutputFormat::Json {
            return self.print_json(&created);
        }
        write_stdout(
            format!(
                "raftsnapshot.kuberaft.io/{name} created for RaftCluster {cluster_name}; \
                 follow it with: kubectl get raftsnapshot {name} -n {} -w\n",
                self.namespace
            )
            .as_bytes(),
        )
    }

    async fn pause(&self, name: &str, paused: bool) -> Result<(), CliError> {
        let cluster = self.cluster(name).await?;
        let word = if paused { "paused" } else { "resumed" };
        if cluster.spec.paused != paused {
            let patch = Patch::Merge(json!({"spec": {"paused": paused}}));
            self.clusters()
                .patch(name, &PatchParams::default(), &patch)
                .await
                .map_err(|e| kube_error(&format!("setting spec.paused of RaftCluster {name}"), e))?;
        }
        let text = match (cluster.spec.paused == paused, paused) {
            (true, _) => format!("raftcluster.kuberaft.io/{name} {word} already\n"),
            (false, true) => format!(
                "raftcluster.kuberaft.io/{name} paused: the operator changes nothing in it until \
                 `kubectl raft resume {name}`, and keeps its status current\n"
            ),
            (false, false) => format!("raftcluster.kuberaft.io/{name} resumed: the operator reconciles it again\n"),
        };
        if self.output == OutputFormat::Json {
            return self.print_json(&json!({"name": name, "namespace": self.namespace, "paused": paused}));
        }
        write_stdout(text.as_bytes())
    }

    /// root's token, when the cluster has auth on (the operator's Secret holds the password).
    async fn root_token(&self, cluster: &RaftCluster, leader: &str) -> Result<Option<String>, CliError> {
        let Some(auth) = cluster.status.as_ref().and_then(|s| s.auth.as_ref()).filter(|a| a.enabled) else {
            return Ok(None);
        };
        let Some(reference) = &auth.root_password_secret else {
            return Err(failed("auth is on, and the status names no Secret with root's password"));
        };
        let what = format!("Secret {} (root's password)", reference.name);
        let secret = Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
            .get(&reference.name)
            .await
            .map_err(|e| kube_error(&what, e))?;
        let password = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&reference.key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or_else(|| failed(format!("{what} has no key {:?}", reference.key)))?;
        let request = AuthenticateRequest { name: crate::operator::auth::ROOT.to_string(), password };
        let body = serde_json::to_vec(&request).map_err(|e| failed(e.to_string()))?;
        let answer: AuthenticateResponse = self
            .proxy_json(cluster, leader, Method::POST, "/v1/auth/authenticate", Some(body), None)
            .await
            .map_err(|e| failed(format!("authenticating as root on {leader}: {e}")))?;
        Ok(Some(answer.token))
    }

    async fn transfer_leader(&self, name: &str, to: Option<&str>) -> Result<(), CliError> {
        let cluster = self.cluster(name).await?;
        let answers = self.statuses(&cluster).await?;
        let Some((leader, leader_status)) =
            answers.iter().find_map(|(member, a)| a.as_ref().ok().filter(|s| s.name == s.leader).map(|s| (member, s)))
        else {
            let said: Vec<String> = answers
                .iter()
                .map(|(member, a)| match a {
                    Ok(s) => format!("{member}: leader {}", if s.leader.is_empty() { "unknown" } else { &s.leader }),
                    Err(e) => format!("{member}: {e}"),
                })
                .collect();
            return Err(failed(format!(
                "no member answers as the leader ({}){}",
                said.join("; "),
                Self::hint(&cluster)
            )));
        };
        let members = &leader_status.members;
        let by_id = |id: &str| members.iter().find(|m| m.id == id).map(|m| m.name.clone());
        let target = match to {
            None => None,
            Some(wanted) => {
                let wanted_id = wanted.trim().trim_start_matches("0x").to_lowercase();
                let Some(member) = members.iter().find(|m| m.name == wanted || m.id == wanted_id) else {
                    let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
                    names.sort_by_key(|n| (member_ordinal(name, n), n.to_string()));
                    return Err(failed(format!(
                        "no member {wanted} in RaftCluster {name} (members: {})",
                        names.join(", ")
                    )));
                };
                if !member.voter {
                    return Err(failed(format!("{} is a learner: only a voter can lead", member.name)));
                }
                if member.name == *leader {
                    return self.print_transfer(leader, leader, leader_status.term, true);
                }
                Some(member.id.clone())
            }
        };
        let token = self.root_token(&cluster, leader).await?;
        let body = serde_json::to_vec(&TransferRequest { to: target }).map_err(|e| failed(e.to_string()))?;
        let moved: TransferResponse = self
            .proxy_json(&cluster, leader, Method::POST, "/v1/leader/transfer", Some(body), token.as_deref())
            .await
            .map_err(|e| failed(format!("transferring leadership on {leader}: {e}{}", Self::hint(&cluster))))?;
        let new_leader = by_id(&moved.leader).unwrap_or(moved.leader.clone());
        // The term the new leader leads in, as it says (best effort: the move is done already).
        let term = match self.proxy_json::<Status>(&cluster, &new_leader, Method::GET, "/v1/status", None, None).await {
            Ok(status) if status.leader == new_leader => status.term,
            _ => leader_status.term + 1,
        };
        self.print_transfer(leader, &new_leader, term, false)
    }

    fn print_transfer(&self, from: &str, to: &str, term: u64, already: bool) -> Result<(), CliError> {
        if self.output == OutputFormat::Json {
            return self.print_json(&json!({"from": from, "leader": to, "term": term, "moved": !already}));
        }
        let text = if already {
            format!("{to} leads already (term {term}); nothing to do\n")
        } else {
            format!("leadership moved from {from} to {to} (term {term})\n")
        };
        write_stdout(text.as_bytes())
    }
}

/// A Kubernetes object name (RFC 1123 subdomain).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_is_recognised_by_its_file_name_only() {
        let yes = |s: &str| invoked_as_plugin(Some(&OsString::from(s)));
        assert!(yes("kubectl-raft"));
        assert!(yes("/home/u/.krew/bin/kubectl-raft"));
        assert!(yes("kubectl-raft.exe"));
        assert!(!yes("kuberaft"));
        assert!(!yes("/usr/bin/kubectl-raft-other"));
        assert!(!yes("/kubectl-raft/kuberaft"));
        assert!(!invoked_as_plugin(None));
    }

    #[test]
    fn timeouts_take_kubectls_units() {
        assert_eq!(parse_timeout("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("7"), Ok(Duration::from_secs(7)));
        for bad in ["0", "0s", "1h", "s", "-1s", "1.5s", ""] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn snapshot_names_are_kubernetes_names() {
        for good in ["etcd-before-upgrade", "a", "a.b-c", "etcd-20250101-120000"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "Etcd", "a_b", "-a", "a-", "a..b", "a/b", &"x".repeat(254)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_plugin_and_the_subcommand_take_the_same_command_line() {
        use clap::CommandFactory;
        PluginCli::command().debug_assert();
        let cli =
            PluginCli::try_parse_from(["kubectl-raft", "status", "etcd", "-n", "ns", "--context", "c", "-o", "json"])
                .expect("parses");
        assert_eq!(cli.kube.namespace.as_deref(), Some("ns"));
        assert_eq!(cli.kube.context.as_deref(), Some("c"));
        assert_eq!(cli.kube.output, OutputFormat::Json);
        assert!(matches!(cli.action, KubectlAction::Status { ref cluster } if cluster == "etcd"));
        let cli = super::super::Cli::try_parse_from([
            "kuberaft",
            "kubectl",
            "-n",
            "ns",
            "transfer-leader",
            "etcd",
            "--to",
            "etcd-2",
        ])
        .expect("parses");
        match cli.command {
            super::super::Commands::Kubectl(KubectlCommand {
                kube,
                action: KubectlAction::TransferLeader { cluster, to },
            }) => {
                assert_eq!(
                    (kube.namespace.as_deref(), cluster.as_str(), to.as_deref()),
                    (Some("ns"), "etcd", Some("etcd-2"))
                );
            }
            other => panic!("{other:?}"),
        }
        let err = PluginCli::try_parse_from(["kubectl-raft", "status"]).expect_err("a cluster is needed");
        assert_eq!(err.exit_code(), 2);
    }
}
