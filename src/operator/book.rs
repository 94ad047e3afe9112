//! What the operator remembers of each `RaftCluster` between reconciles, for `/metrics` and the
//! `/ui` page (DESIGN.md §6, "The operator's metrics and page"): when its last reconcile
//! succeeded, the status it last computed, its certificates' expiry, and the last events it
//! published about it. Nothing here is read from the API server: reconciles write it, and the
//! controller's own cache of RaftClusters (the reflector stores it registers with [`Book::watch`])
//! says which clusters still exist.
//!
//! Memory is bounded: one entry per live cluster, each with at most [`MAX_EVENTS`] events of at
//! most [`MAX_NOTE_CHARS`] characters. An entry whose cluster is gone from every registered store
//! (deleted, or deleted and made again under a new uid) is dropped at the next look, so a deleted
//! cluster's series disappear from `/metrics`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use serde::Serialize;

use super::crd::{RaftCluster, RaftClusterStatus};

/// The most events kept per cluster (the newest).
pub const MAX_EVENTS: usize = 10;
/// The longest event note kept, in characters.
pub const MAX_NOTE_CHARS: usize = 300;

/// One event the operator published about a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedEvent {
    /// When it was published (RFC 3339).
    pub time: String,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub action: String,
    pub note: String,
}

/// What is remembered of one cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entry {
    /// The uid of the cluster the entry is about: a cluster made again under the same name is
    /// another cluster.
    pub uid: Option<String>,
    /// Unix seconds of the last reconcile that succeeded.
    pub last_success: Option<i64>,
    /// The status the last reconcile computed (written, or unchanged and so not written).
    pub status: Option<RaftClusterStatus>,
    /// The spec as of that reconcile: backups configured, TLS, paused, replicas.
    pub backup_configured: bool,
    pub tls: bool,
    pub paused: bool,
    pub replicas: u32,
    /// The notAfter (unix seconds) of each certificate of the cluster, by its Secret.
    pub certificates: BTreeMap<String, i64>,
    /// The newest events, oldest first.
    pub events: VecDeque<RecordedEvent>,
}

/// One cluster as `/metrics` and `/ui` show it: from the controller's cache when it is known
/// there, and what the reconciles remembered.
#[derive(Clone, Debug)]
pub struct Tracked {
    pub namespace: String,
    pub name: String,
    /// The object as the controller's cache holds it (`None` when no cache is registered, as in
    /// tests that run reconciles without a controller).
    pub cluster: Option<Arc<RaftCluster>>,
    pub entry: Entry,
}

impl Tracked {
    /// The status to show: the one the operator computed last, else the cached object's.
    pub fn status(&self) -> Option<&RaftClusterStatus> {
        self.entry.status.as_ref().or_else(|| self.cluster.as_ref().and_then(|c| c.status.as_ref()))
    }

    pub fn backup_configured(&self) -> bool {
        self.cluster.as_ref().map_or(self.entry.backup_configured, |c| c.spec.backup.is_some())
    }

    pub fn tls(&self) -> bool {
        self.cluster.as_ref().map_or(self.entry.tls, |c| c.spec.tls.is_some())
    }

    pub fn paused(&self) -> bool {
        self.cluster.as_ref().map_or(self.entry.paused, |c| c.spec.paused)
    }

    pub fn replicas(&self) -> u32 {
        self.cluster.as_ref().map_or(self.entry.replicas, |c| c.spec.replicas)
    }
}

type Key = (String, String);

fn key_of(cluster: &RaftCluster) -> Key {
    (cluster.namespace().unwrap_or_default(), cluster.name_any())
}

/// The operator's memory of its clusters. See the module docs.
#[derive(Default)]
pub struct Book {
    entries: Mutex<BTreeMap<Key, Entry>>,
    stores: Mutex<Vec<Store<RaftCluster>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Book {
    /// Registers a controller's cache of RaftClusters: from now on only clusters in a registered
    /// cache are shown, and entries of the others are dropped.
    pub fn watch(&self, store: Store<RaftCluster>) {
        lock(&self.stores).push(store);
    }

    /// The entry of `cluster`, made (or made anew, for a new uid) when needed.
    fn with_entry(&self, cluster: &RaftCluster, change: impl FnOnce(&mut Entry)) {
        let mut entries = lock(&self.entries);
        let entry = entries.entry(key_of(cluster)).or_default();
        let uid = cluster.uid();
        if uid.is_some() && entry.uid.is_some() && entry.uid != uid {
            *entry = Entry::default();
        }
        if uid.is_some() {
            entry.uid = uid;
        }
        entry.backup_configured = cluster.spec.backup.is_some();
        entry.tls = cluster.spec.tls.is_some();
        entry.paused = cluster.spec.paused;
        entry.replicas = cluster.spec.replicas;
        change(entry);
    }

    /// A reconcile of `cluster` succeeded at `now` (unix seconds).
    pub fn reconciled(&self, cluster: &RaftCluster, now: i64) {
        self.with_entry(cluster, |entry| entry.last_success = Some(now));
        self.prune();
    }

    /// The status a reconcile computed for `cluster`.
    pub fn observed(&self, cluster: &RaftCluster, status: &RaftClusterStatus) {
        self.with_entry(cluster, |entry| entry.status = Some(status.clone()));
    }

    /// The notAfter of each of `cluster`'s certificates, by Secret (empty without TLS).
    pub fn certificates(&self, cluster: &RaftCluster, expiries: BTreeMap<String, i64>) {
        self.with_entry(cluster, |entry| entry.certificates = expiries);
    }

    /// An event published about `cluster`; the oldest goes beyond [`MAX_EVENTS`].
    pub fn event(&self, cluster: &RaftCluster, event: &Event) {
        let mut note = event.note.clone().unwrap_or_default();
        if let Some((cut, _)) = note.char_indices().nth(MAX_NOTE_CHARS) {
            note.truncate(cut);
            note.push('…');
        }
        let recorded = RecordedEvent {
            time: Timestamp::now().to_string(),
            type_: match event.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_string(),
            reason: event.reason.clone(),
            action: event.action.clone(),
            note,
        };
        self.with_entry(cluster, |entry| {
            entry.events.push_back(recorded);
            while entry.events.len() > MAX_EVENTS {
                entry.events.pop_front();
            }
        });
    }

    /// Drops the entries of clusters that no registered cache holds (when one is registered).
    fn prune(&self) {
        let Some(live) = self.live() else { return };
        lock(&self.entries).retain(|key, entry| {
            live.get(key).is_some_and(|cluster| entry.uid.is_none() || cluster.uid() == entry.uid)
        });
    }

    /// Every cluster in the registered caches, by key; `None` when none is registered.
    fn live(&self) -> Option<BTreeMap<Key, Arc<RaftCluster>>> {
        let stores = lock(&self.stores).clone();
        if stores.is_empty() {
            return None;
        }
        Some(stores.iter().flat_map(Store::state).map(|cluster| (key_of(&cluster), cluster)).collect())
    }

    /// Every cluster to show, by namespace and name: those of the registered caches with what
    /// was remembered of them; without a cache, every remembered one.
    pub fn tracked(&self) -> Vec<Tracked> {
        self.prune();
        let entries = lock(&self.entries).clone();
        match self.live() {
            Some(live) => live
                .into_iter()
                .map(|((namespace, name), cluster)| {
                    let entry = entries.get(&(namespace.clone(), name.clone())).cloned().unwrap_or_default();
                    Tracked { namespace, name, cluster: Some(cluster), entry }
                })
                .collect(),
            None => entries
                .into_iter()
                .map(|((namespace, name), entry)| Tracked { namespace, name, cluster: None, entry })
                .collect(),
        }
    }
}

/// Unix seconds of an RFC 3339 time.
fn seconds(time: &str) -> Option<i64> {
    time.parse::<Timestamp>().ok().map(|t| t.as_second())
}

/// A label value in the text format: `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Whether the latest scheduled backup failed: the `BackupSucceeded` condition is False (the
/// condition is set by each scheduled backup, true or false, and absent before the first).
pub fn backup_failed(status: &RaftClusterStatus) -> bool {
    status.conditions.iter().any(|c| c.type_ == super::backup::run::CONDITION_BACKUP && c.status == "False")
}

/// The per-cluster gauges in the Prometheus text format (HELP and TYPE always, a sample per
/// cluster that has the fact):
/// - `kuberaft_operator_reconcile_last_success_timestamp_seconds{namespace,raftcluster}`
/// - `kuberaft_operator_backup_last_success_timestamp_seconds{namespace,raftcluster}`
/// - `kuberaft_operator_backup_last_failed{namespace,raftcluster}`
/// - `kuberaft_operator_certificate_expiry_timestamp_seconds{namespace,raftcluster,secret}`
pub fn render_cluster_metrics(tracked: &[Tracked]) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let labels = |t: &Tracked| format!("namespace=\"{}\",raftcluster=\"{}\"", label(&t.namespace), label(&t.name));
    gauge(
        "kuberaft_operator_reconcile_last_success_timestamp_seconds",
        "Unix time of the last successful reconcile of the RaftCluster.",
        tracked.iter().filter_map(|t| Some((labels(t), t.entry.last_success?.to_string()))).collect(),
    );
    gauge(
        "kuberaft_operator_backup_last_success_timestamp_seconds",
        "Unix time the last scheduled backup of the RaftCluster that succeeded was finished.",
        tracked
            .iter()
            .filter(|t| t.backup_configured())
            .filter_map(|t| {
                let time = &t.status()?.backup.as_ref()?.last_success.as_ref()?.time;
                Some((labels(t), seconds(time)?.to_string()))
            })
            .collect(),
    );
    gauge(
        "kuberaft_operator_backup_last_failed",
        "1 when the latest scheduled backup of the RaftCluster failed, else 0 (clusters with spec.backup).",
        tracked
            .iter()
            .filter(|t| t.backup_configured())
            .map(|t| (labels(t), u8::from(t.status().is_some_and(backup_failed)).to_string()))
            .collect(),
    );
    gauge(
        "kuberaft_operator_certificate_expiry_timestamp_seconds",
        "Unix time (notAfter) at which a certificate of the RaftCluster expires, by its Secret.",
        tracked
            .iter()
            .flat_map(|t| {
                t.entry
                    .certificates
                    .iter()
                    .map(move |(secret, not_after)| {
                        (format!("{},secret=\"{}\"", labels(t), label(secret)), not_after.to_string())
                    })
                    .collect::<Vec<_>>()
            })
            .collect(),
    );
    out
}

#[cfg(test)]
mod tests;
