//! Backups onto a PersistentVolumeClaim (`destination.persistentVolumeClaim`, DESIGN.md §6).
//! The operator cannot mount a claim, so a Job does the work: its pod mounts the claim and runs
//! `kuberaft backup take` against the member [`super::source`] picks (or `kuberaft backup
//! delete` for a RaftSnapshot's file), with the operator's own access to the members (its
//! client certificate, root's password) from their Secrets. The result comes back as the
//! container's termination message ([`BackupResult`], one JSON line); the operator
//! reads it from the Job's pod, records it as it records a transfer into a bucket, and deletes
//! the Job.
//!
//! Builders and readers are pure; the calls to the API server are the `start`, `finished` and
//! `remove` functions.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, Pod, PodSpec, PodTemplateSpec, SecretKeySelector, SecretVolumeSource, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use super::objects::Failure;
use crate::operator::builders::{self, claim_volume, container_security_context, pod_security_context};
use crate::operator::crd::{RaftCluster, RetentionSpec};
use crate::operator::reconcile::ReconcileError;

/// Where the Job's pod mounts the claim.
pub const MOUNT_PATH: &str = "/var/lib/kuberaft-backup";
/// The claim's volume, and the operator's certificate's.
pub const VOLUME: &str = "backups";
pub const TLS_VOLUME: &str = "operator-tls";
pub const TLS_MOUNT_PATH: &str = "/var/run/secrets/kuberaft/operator";
/// Where the container writes its result: its termination message.
pub const RESULT_PATH: &str = "/var/run/kuberaft/result";
/// The label of every backup Job (and its pod) with the cluster's name, and the one with what it does.
pub const LABEL_CLUSTER: &str = "kuberaft.io/backup-of";
pub const LABEL_TASK: &str = "kuberaft.io/backup-task";
/// The component label of a backup pod (never `member`: it is not selected as one).
pub const COMPONENT_BACKUP: &str = "backup";
/// The schedule's time a scheduled backup Job is for, the member it takes it from, and the
/// claim and directory it writes to (what the result's file is relative to).
pub const ANNOTATION_SCHEDULED: &str = "kuberaft.io/scheduled";
pub const ANNOTATION_MEMBER: &str = "kuberaft.io/member";
pub const ANNOTATION_CLAIM: &str = "kuberaft.io/claim";
pub const ANNOTATION_DIR: &str = "kuberaft.io/dir";
/// A Job gives up after this long; a finished one is removed by the API server after a day if
/// the operator has not read it by then.
const DEADLINE_SECONDS: i64 = 3600;
const TTL_AFTER_FINISHED_SECONDS: i32 = 86_400;

/// What `take` and `delete` report (one JSON line): on success the file (relative to the
/// directory) and what it holds, on failure the reason and message (`Failure`'s).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// When it was kept (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<String>,
    /// Why pruning stopped, if it did (the backup itself was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_error: Option<String>,
    /// Why it failed: a `Failure` reason (`BackupFailed`, `NoMember`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl BackupResult {
    pub fn failed(failure: &Failure) -> BackupResult {
        BackupResult {
            reason: Some(failure.reason().to_string()),
            message: Some(failure.message().to_string()),
            ..BackupResult::default()
        }
    }
}

/// What a Job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// A scheduled backup (`spec.backup`).
    Scheduled,
    /// A RaftSnapshot's.
    Snapshot,
    /// Deleting a RaftSnapshot's file (`deletionPolicy: Delete`).
    Delete,
}

impl Task {
    pub fn label(self) -> &'static str {
        match self {
            Task::Scheduled => "scheduled",
            Task::Snapshot => "snapshot",
            Task::Delete => "delete",
        }
    }
}

/// The labels of the backup pods of `cluster` (the NetworkPolicy lets them reach the client port).
pub fn pod_labels(cluster_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (builders::LABEL_NAME.to_string(), builders::APP_NAME.to_string()),
        (builders::LABEL_INSTANCE.to_string(), cluster_name.to_string()),
        (builders::LABEL_COMPONENT.to_string(), COMPONENT_BACKUP.to_string()),
    ])
}

/// A Job name: `<base>-<suffix>`, the base cut so that it stays a label value (63 characters).
pub fn job_name(base: &str, suffix: &str) -> String {
    let room = 63usize.saturating_sub(suffix.len() + 1);
    let base: String = base.chars().take(room).collect();
    format!("{}-{suffix}", base.trim_end_matches('-'))
}

/// `kuberaft backup take` of `member` into `dir` (under the claim), files named `name`, pruned
/// by `retention` when given.
pub fn take_args(
    cluster: &RaftCluster,
    member: &str,
    dir: &str,
    name: &str,
    retention: Option<&RetentionSpec>,
) -> Vec<String> {
    let namespace = cluster.namespace().unwrap_or_default();
    let mut args: Vec<String> = [
        "backup",
        "take",
        "--endpoints",
        &builders::client_url(cluster, &namespace, member),
        "--dir",
        &in_claim(dir),
        "--name",
        name,
        "--result",
        RESULT_PATH,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    if let Some(retention) = retention {
        args.extend(["--keep".to_string(), retention.count.to_string()]);
        if let Some(hours) = retention.max_age_hours {
            args.extend(["--max-age-hours".to_string(), hours.to_string()]);
        }
    }
    args
}

/// `kuberaft backup delete` of `path` (in the claim).
pub fn delete_args(path: &str) -> Vec<String> {
    ["backup", "delete", "--dir", MOUNT_PATH, path, "--result", RESULT_PATH].iter().map(|a| a.to_string()).collect()
}

/// A directory of the claim, where the Job's pod sees it.
fn in_claim(dir: &str) -> String {
    let dir = dir.trim_matches('/');
    if dir.is_empty() {
        MOUNT_PATH.to_string()
    } else {
        format!("{MOUNT_PATH}/{dir}")
    }
}

/// The Job `name` that runs `args` with `claim` mounted, for `cluster`, owned by `owner`.
pub fn build(
    cluster: &RaftCluster,
    name: &str,
    task: Task,
    claim: &str,
    args: Vec<String>,
    owner: Option<OwnerReference>,
    annotations: BTreeMap<String, String>,
) -> Job {
    let cluster_name = cluster.name_any();
    let mut labels = pod_labels(&cluster_name);
    labels.insert(builders::LABEL_MANAGED_BY.to_string(), builders::MANAGED_BY.to_string());
    labels.insert(LABEL_CLUSTER.to_string(), cluster_name.clone());
    labels.insert(LABEL_TASK.to_string(), task.label().to_string());
    let mut env = Vec::new();
    let mut mounts =
        vec![VolumeMount { name: VOLUME.to_string(), mount_path: MOUNT_PATH.to_string(), ..VolumeMount::default() }];
    let mut volumes = vec![claim_volume(VOLUME, claim, false)];
    // The operator's own access to the members: its client certificate and root's password.
    if cluster.spec.tls.is_some() {
        use crate::operator::certs::{operator_secret_name, KEY_CA, KEY_CERT, KEY_KEY};
        volumes.push(Volume {
            name: TLS_VOLUME.to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(operator_secret_name(cluster)),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: TLS_VOLUME.to_string(),
            mount_path: TLS_MOUNT_PATH.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        for (var, key) in [
            (crate::client::CACERT_ENV, KEY_CA),
            (crate::client::CERT_ENV, KEY_CERT),
            (crate::client::KEY_ENV, KEY_KEY),
        ] {
            env.push(EnvVar {
                name: var.to_string(),
                value: Some(format!("{TLS_MOUNT_PATH}/{key}")),
                value_from: None,
            });
        }
    }
    if let Some(secret) = crate::operator::auth::root_secret(cluster) {
        env.push(EnvVar {
            name: crate::client::USER_ENV.to_string(),
            value: Some(crate::operator::auth::ROOT.to_string()),
            value_from: None,
        });
        env.push(EnvVar {
            name: crate::client::PASSWORD_ENV.to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        });
    }
    let container = Container {
        name: COMPONENT_BACKUP.to_string(),
        image: Some(cluster.spec.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        command: Some(vec![builders::CONTAINER_COMMAND.to_string()]),
        args: Some(args),
        env: (!env.is_empty()).then_some(env),
        volume_mounts: Some(mounts),
        security_context: Some(container_security_context()),
        termination_message_path: Some(RESULT_PATH.to_string()),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Container::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: cluster.namespace(),
            labels: Some(labels.clone()),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(DEADLINE_SECONDS),
            ttl_seconds_after_finished: Some(TTL_AFTER_FINISHED_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_string()),
                    containers: vec![container],
                    volumes: Some(volumes),
                    security_context: Some(pod_security_context()),
                    enable_service_links: Some(false),
                    node_selector: cluster.spec.node_selector.clone(),
                    tolerations: cluster.spec.tolerations.clone(),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// Whether the Job has finished, and how: `Some(true)` succeeded, `Some(false)` failed.
pub fn outcome(job: &Job) -> Option<bool> {
    let status = job.status.as_ref()?;
    if status.succeeded.unwrap_or(0) > 0 {
        return Some(true);
    }
    let failed_condition = status.conditions.iter().flatten().any(|c| c.type_ == "Failed" && c.status == "True");
    (status.failed.unwrap_or(0) > 0 || failed_condition).then_some(false)
}

/// What a finished Job's pod reported: its termination message, or why there is none.
pub fn result(job: &Job, pods: &[Pod]) -> Result<BackupResult, Failure> {
    let name = job.name_any();
    let terminated = pods.iter().find_map(|pod| {
        let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
        statuses.iter().find_map(|s| s.state.as_ref()?.terminated.clone())
    });
    let Some(terminated) = terminated else {
        let why = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Failed"))
            .map(|c| format!("{}: {}", c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default()));
        return Err(Failure::Failed(format!(
            "the Job {name} left no result{}",
            why.map(|w| format!(" ({w})")).unwrap_or_default()
        )));
    };
    let message = terminated.message.unwrap_or_default();
    let parsed = message.lines().rev().find_map(|line| serde_json::from_str::<BackupResult>(line).ok());
    match parsed {
        Some(result) if result.reason.is_some() => Err(failure_of(&result)),
        Some(result) if terminated.exit_code == 0 => Ok(result),
        _ => {
            let tail: String = message.chars().rev().take(400).collect::<Vec<_>>().into_iter().rev().collect();
            Err(Failure::Failed(format!("the Job {name} exited {}: {}", terminated.exit_code, tail.trim())))
        }
    }
}

/// A result's failure, with its reason.
fn failure_of(result: &BackupResult) -> Failure {
    let message = result.message.clone().unwrap_or_default();
    match result.reason.as_deref() {
        Some("NoMember") => Failure::NoMember(message),
        _ => Failure::Failed(message),
    }
}

/// Creates the Job (one that already exists under the name is left as it is).
pub async fn start(client: &kube::Client, namespace: &str, job: &Job) -> Result<(), ReconcileError> {
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    match api.create(&PostParams::default(), job).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The Jobs of `cluster` for `task`.
pub async fn list(
    client: &kube::Client,
    namespace: &str,
    cluster: &str,
    task: Task,
) -> Result<Vec<Job>, ReconcileError> {
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{LABEL_CLUSTER}={cluster},{LABEL_TASK}={}", task.label());
    let mut jobs = api.list(&ListParams::default().labels(&selector)).await?.items;
    // The fake API server of the tests ignores selectors; a real one has done this already.
    jobs.retain(|j| {
        let labels = j.labels();
        labels.get(LABEL_CLUSTER).map(String::as_str) == Some(cluster)
            && labels.get(LABEL_TASK).map(String::as_str) == Some(task.label())
    });
    Ok(jobs)
}

/// The Job `name`, if it exists.
pub async fn get(client: &kube::Client, namespace: &str, name: &str) -> Result<Option<Job>, ReconcileError> {
    Ok(Api::<Job>::namespaced(client.clone(), namespace).get_opt(name).await?)
}

/// A finished Job's result, read from its pod.
pub async fn finished(client: &kube::Client, namespace: &str, job: &Job) -> Result<BackupResult, ReconcileError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("job-name={}", job.name_any());
    let mut pods = api.list(&ListParams::default().labels(&selector)).await?.items;
    pods.retain(|p| p.labels().get("job-name") == Some(&job.name_any()));
    Ok(result(job, &pods).unwrap_or_else(|failure| BackupResult::failed(&failure)))
}

/// Deletes the Job and its pod, once read.
pub async fn remove(client: &kube::Client, namespace: &str, name: &str) -> Result<(), ReconcileError> {
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    let params = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..DeleteParams::default() };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The annotations of a Job that takes a backup of `member` into `dir` of `claim`.
pub fn annotations(claim: &str, dir: &str, member: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ANNOTATION_CLAIM.to_string(), claim.to_string()),
        (ANNOTATION_DIR.to_string(), dir.to_string()),
        (ANNOTATION_MEMBER.to_string(), member.to_string()),
    ])
}

/// Where a Job's result file is: (claim, path in the claim, member), from its annotations.
pub fn written(job: &Job, file: &str) -> (String, String, String) {
    let get = |key: &str| job.annotations().get(key).cloned().unwrap_or_default();
    let dir = get(ANNOTATION_DIR);
    let path = if dir.is_empty() { file.to_string() } else { format!("{}/{file}", dir.trim_end_matches('/')) };
    (get(ANNOTATION_CLAIM), path, get(ANNOTATION_MEMBER))
}

/// A result as a `Result`: the kept file, or the failure.
pub fn into_result(result: BackupResult) -> Result<BackupResult, Failure> {
    if result.reason.is_some() {
        Err(failure_of(&result))
    } else {
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobStatus;

    fn cluster(spec: serde_json::Value) -> RaftCluster {
        let mut cluster = RaftCluster::new("etcd", serde_json::from_value(spec).expect("a spec"));
        cluster.metadata.namespace = Some("ns".to_string());
        cluster
    }

    fn env_of(job: &Job) -> BTreeMap<String, EnvVar> {
        let container = &job.spec.as_ref().expect("spec").template.spec.as_ref().expect("pod").containers[0];
        container.env.iter().flatten().map(|e| (e.name.clone(), e.clone())).collect()
    }

    /// With TLS and auth, the Job reaches the members as the operator does: its client
    /// certificate mounted read-only, root's password from its Secret. Without, neither.
    #[test]
    fn a_job_has_the_operators_access_to_the_members_and_nothing_more() {
        let plain = build(&cluster(serde_json::json!({})), "j", Task::Scheduled, "c", vec![], None, BTreeMap::new());
        assert!(env_of(&plain).is_empty());
        let pod = plain.spec.as_ref().expect("spec").template.spec.clone().expect("pod");
        assert_eq!(pod.volumes.expect("volumes").len(), 1, "the claim only");

        let secured = cluster(serde_json::json!({
            "tls": {"auto": {}},
            "auth": {"rootPasswordSecret": {"name": "etcd-root", "key": "pw"}},
        }));
        let job = build(&secured, "j", Task::Scheduled, "c", vec![], None, BTreeMap::new());
        let env = env_of(&job);
        assert_eq!(env[crate::client::CACERT_ENV].value.as_deref(), Some("/var/run/secrets/kuberaft/operator/ca.crt"));
        assert_eq!(env[crate::client::CERT_ENV].value.as_deref(), Some("/var/run/secrets/kuberaft/operator/tls.crt"));
        assert_eq!(env[crate::client::USER_ENV].value.as_deref(), Some("root"));
        let password =
            env[crate::client::PASSWORD_ENV].value_from.clone().and_then(|v| v.secret_key_ref).expect("a Secret");
        assert_eq!((password.name.as_str(), password.key.as_str()), ("etcd-root", "pw"));
        let pod = job.spec.as_ref().expect("spec").template.spec.clone().expect("pod");
        let tls = pod.volumes.expect("volumes").into_iter().find(|v| v.name == TLS_VOLUME).expect("the certificate");
        assert_eq!(tls.secret.and_then(|s| s.secret_name).as_deref(), Some("etcd-operator-tls"));
        let mount = pod.containers[0].volume_mounts.iter().flatten().find(|m| m.name == TLS_VOLUME).cloned();
        assert_eq!(mount.and_then(|m| m.read_only), Some(true));
    }

    #[test]
    fn job_names_stay_label_values() {
        assert_eq!(job_name("etcd-backup", "1767225600"), "etcd-backup-1767225600");
        let long = job_name(&"a-".repeat(40), "snapshot");
        assert!(long.len() <= 63 && long.ends_with("-snapshot") && !long.contains("--"), "{long}");
    }

    fn finished(code: i32, message: &str) -> (Job, Vec<Pod>) {
        let job = Job {
            metadata: ObjectMeta { name: Some("j".into()), ..ObjectMeta::default() },
            status: Some(JobStatus {
                failed: (code != 0).then_some(1),
                succeeded: (code == 0).then_some(1),
                ..JobStatus::default()
            }),
            ..Job::default()
        };
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j-x", "labels": {"job-name": "j"}},
            "status": {"containerStatuses": [{"name": "backup", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                                              "state": {"terminated": {"exitCode": code, "message": message}}}]},
        }))
        .expect("a pod");
        (job, vec![pod])
    }

    /// The result is the message's last JSON line; a failure's reason is kept; a container that
    /// died before writing one (its log's tail, `FallbackToLogsOnError`) fails with that tail.
    #[test]
    fn a_jobs_result_is_its_termination_message() {
        assert_eq!(outcome(&finished(0, "").0), Some(true));
        assert_eq!(outcome(&finished(1, "").0), Some(false));
        assert_eq!(outcome(&Job::default()), None, "still running");

        let (job, pods) = finished(0, "{\"file\": \"etcd-1.snap\", \"revision\": 7}\n");
        let kept = result(&job, &pods).expect("kept");
        assert_eq!((kept.file.as_deref(), kept.revision), (Some("etcd-1.snap"), Some(7)));
        let (job, pods) = finished(1, "{\"reason\": \"NoMember\", \"message\": \"no leader\"}");
        assert_eq!(result(&job, &pods), Err(Failure::NoMember("no leader".into())));
        let (job, pods) = finished(137, "thread 'main' panicked\nout of memory");
        let failure = result(&job, &pods).expect_err("failed");
        assert!(failure.message().contains("exited 137") && failure.message().contains("out of memory"), "{failure}");
        // A zero exit without a result is no success.
        let (job, pods) = finished(0, "nothing here");
        assert!(result(&job, &pods).is_err());
        assert!(result(&job, &[]).expect_err("no pod").message().contains("left no result"));
    }
}
