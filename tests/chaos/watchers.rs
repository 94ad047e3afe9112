//! Watchers beside the chaos clients (issue 14): one per member at first, each watching every
//! key from revision 2 through `kuberaft::client`'s watch, which moves to another member when
//! its stream breaks (a member killed, paused, cut off, removed) and resumes from the revision
//! after the last it returned. At the end each must have received every revision of the
//! store exactly once, in order (every revision changes a key, and they watch all keys), all
//! of them the same events; and a sample of revisions is read back from the final cluster at
//! that revision, which must show each event's key as the event left it.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kuberaft::base::rng::Rng;
use kuberaft::base::wire::watch::{EventType, WatchCreateRequest, WatchResponse};
use kuberaft::client::{Client, ClientConfig, ClientError};
use serde_json::{json, Value};

/// One event as a watcher keeps it: delete?, key, value, version.
type Kept = (bool, String, String, i64);

/// What one watcher received.
pub struct Seen {
    /// Each revision received, in the order received, with a hash of its events.
    pub revisions: Vec<(i64, u64)>,
    /// The events themselves (kept by the first watcher only).
    pub events: BTreeMap<i64, Vec<Kept>>,
    pub connections: u64,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

fn kept(response: &WatchResponse) -> Vec<Kept> {
    response
        .events
        .iter()
        .map(|e| {
            let key = String::from_utf8_lossy(&e.kv.key_bytes().unwrap_or_default()).into_owned();
            let value = String::from_utf8_lossy(&e.kv.value_bytes().unwrap_or_default()).into_owned();
            (e.kind == EventType::Delete, key, value, e.kv.version)
        })
        .collect()
}

/// Watches everything from revision 2 through `urls` (tried from `first` on) until it has
/// received revision `until` (0: not known yet) or `give_up` is set.
pub fn watcher(first: usize, urls: &[String], keep: bool, until: Arc<AtomicI64>, give_up: Arc<AtomicBool>) -> Seen {
    let endpoints: Vec<String> = urls[first..].iter().chain(&urls[..first]).cloned().collect();
    let mut seen = Seen { revisions: Vec::new(), events: BTreeMap::new(), connections: 0, error: None };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let client =
            Client::with_config(endpoints, ClientConfig::with_request_timeout(Duration::from_secs(3))).expect("client");
        let request =
            WatchCreateRequest { key: Some(String::new()), prefix: true, start_revision: 2, ..Default::default() };
        let mut watch: Option<kuberaft::client::Watch> = None;
        // Bounded by `give_up`, which the run sets at its end: every round returns within the
        // client's deadline (a stream answers progress every couple of seconds).
        while !give_up.load(Ordering::Relaxed) {
            let target = until.load(Ordering::Relaxed);
            if target > 0 && watch.as_ref().is_some_and(|w| w.next_revision() > target) {
                break;
            }
            let w = match &mut watch {
                Some(w) => w,
                None => {
                    let mut from = request.clone();
                    from.start_revision = seen.revisions.last().map_or(2, |(r, _)| r + 1);
                    match client.watch(from).await {
                        Ok(w) => watch.insert(w),
                        Err(e) => {
                            seen.error = Some(format!("cannot start: {e}"));
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    }
                }
            };
            match w.next().await {
                Ok(response) if response.events.is_empty() => {}
                Ok(response) => {
                    let events = kept(&response);
                    let mut h = DefaultHasher::new();
                    events.hash(&mut h);
                    seen.revisions.push((response.header.revision, h.finish()));
                    if keep {
                        seen.events.insert(response.header.revision, events);
                    }
                }
                Err(ClientError::Unavailable { .. }) => {
                    // No member reachable for the client's deadline: the watch goes on from
                    // where it was at the next call.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    seen.error = Some(e.to_string());
                    break;
                }
            }
            seen.connections = seen.connections.max(w.connections());
        }
        seen.error =
            seen.error.take().filter(|_| seen.revisions.last().map(|r| r.0) < Some(until.load(Ordering::Relaxed)));
    });
    seen
}

/// The checks of the watchers' records against each other and the final cluster; the problems
/// found (empty: clean) and a report line.
pub fn check(
    seen: &[Seen],
    first: i64,
    last: i64,
    http: &reqwest::blocking::Client,
    url: &str,
    seed: u64,
) -> (Vec<String>, String) {
    let mut problems = Vec::new();
    for (i, s) in seen.iter().enumerate() {
        if let Some(e) = &s.error {
            problems.push(format!("watcher {i} stopped: {e}"));
        }
        let revs: Vec<i64> = s.revisions.iter().map(|r| r.0).collect();
        let want: Vec<i64> = (first..=last).collect();
        if revs != want {
            let gap = want.iter().find(|r| !revs.contains(r));
            let twice = revs.windows(2).find(|w| w[1] <= w[0]);
            problems.push(format!(
                "watcher {i}: {} revisions received for {}..={last} (first missing: {gap:?}; out of order or twice: {twice:?})",
                revs.len(),
                first
            ));
        }
    }
    if let Some((base, rest)) = seen.split_first() {
        let base: BTreeMap<i64, u64> = base.revisions.iter().copied().collect();
        for (i, s) in rest.iter().enumerate() {
            if let Some((rev, _)) = s.revisions.iter().find(|(rev, h)| base.get(rev).is_some_and(|b| b != h)) {
                problems.push(format!("watcher {} received other events than watcher 0 at revision {rev}", i + 1));
            }
        }
    }
    // A sample of revisions read back at that revision.
    let mut rng = Rng::new(seed);
    let revisions: Vec<i64> = seen.first().map(|s| s.events.keys().copied().collect()).unwrap_or_default();
    let sample = 2_000.min(revisions.len());
    let started = Instant::now();
    let mut read = 0;
    for _ in 0..sample {
        let rev = revisions[rng.range(0, revisions.len() as u64) as usize];
        for (deleted, key, value, version) in &seen[0].events[&rev] {
            let body = json!({"key": key, "revision": rev, "serializable": true});
            let answer: Option<Value> =
                http.post(format!("{url}/v1/range")).json(&body).send().ok().and_then(|r| r.json().ok());
            let Some(answer) = answer else {
                problems.push(format!("cannot read {key} at {rev}"));
                continue;
            };
            read += 1;
            let kv = &answer["kvs"][0];
            let matches = if *deleted {
                answer["kvs"].as_array().is_some_and(|k| k.is_empty())
            } else {
                kv["modRevision"] == rev && kv["value"] == value.as_str() && kv["version"] == *version
            };
            if !matches {
                problems.push(format!(
                    "revision {rev}: the watch said {key} = {value:?} (deleted: {deleted}), the store says {answer}"
                ));
            }
        }
    }
    let connections: Vec<u64> = seen.iter().map(|s| s.connections).collect();
    let report = format!(
        "watchers: {} watching every key, {} revisions ({first}..={last}) each, streams opened per watcher {connections:?}, \
         {read} events of {sample} sampled revisions read back in {:.1} s: {}\n",
        seen.len(),
        last - first + 1,
        started.elapsed().as_secs_f64(),
        if problems.is_empty() { "exactly the committed history".to_string() } else { format!("{} PROBLEMS", problems.len()) }
    );
    (problems, report)
}
