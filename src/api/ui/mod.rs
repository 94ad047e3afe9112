//! The live view (`GET /ui`, DESIGN.md §4.9): one page, its assets embedded in the binary, that
//! shows the cluster as this member sees it and as each member it can reach says of itself.
//!
//! - `GET /ui`, `/ui/app.js`, `/ui/app.css`: the page. It loads nothing else from anywhere.
//! - `GET /ui/v1/member`: what this member says of itself (`MemberView`): its status (the
//!   same as `/v1/status`, with the endpoint list it holds), the match index of each member
//!   when it leads, its timeline (`node::timeline`) and its rate samples, both only what is
//!   newer than `?since=` and `?samplesSince=`.
//! - `GET /ui/v1/stream`: server-sent events, one `cluster` event a second: this member's view
//!   and each other member's, asked for by this member over the client port (so the browser
//!   talks to one member only). Each event carries only the timeline events and samples the
//!   stream has not sent yet. A member that does not answer is listed with the error.
//!
//! The key browser of the page uses the JSON API (`/v1/range`, `/v1/watch`) directly.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, Method};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::server::{build_status, parse_query, Api, ApiResult};
use crate::base::wire::{format_id, Status};
use crate::http::client;
use crate::node::shared::lock;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// How often the rates are sampled and the stream sends; how many samples are kept (five
/// minutes).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
pub const SAMPLES_KEPT: usize = 300;
/// How long the stream waits for another member's view.
const PEER_TIMEOUT: Duration = Duration::from_millis(900);
/// The largest view a peer may answer with: a status with its member list, the timeline's
/// whole ring and every sample, with room to spare.
const MAX_PEER_VIEW_BYTES: usize = 4 << 20;

/// The counters of one second, as the rate charts need them (rates are the differences of
/// successive samples).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub at_ms: u64,
    pub proposals_committed: u64,
    pub proposals_failed: u64,
    pub commit_index: u64,
    /// The last index of this member's log: with a leader's samples, how long ago it held an
    /// index tells a follower's lag in time.
    pub last_index: u64,
    pub fsync_count: u64,
    pub fsync_micros_sum: u64,
    pub watch_events: u64,
    pub leases_expired: u64,
}

/// The newest `SAMPLES_KEPT` samples.
#[derive(Default)]
pub struct Samples(Mutex<VecDeque<Sample>>);

impl Samples {
    fn push(&self, sample: Sample) {
        let mut ring = lock(&self.0);
        if ring.len() == SAMPLES_KEPT {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// The samples taken after `at_ms`, oldest first.
    pub fn since(&self, at_ms: u64) -> Vec<Sample> {
        lock(&self.0).iter().filter(|s| s.at_ms > at_ms).copied().collect()
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn sample(api: &Api) -> Sample {
    let shared = &api.node.shared;
    let m = &shared.metrics;
    let status = shared.status();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    Sample {
        at_ms: now_ms(),
        proposals_committed: load(&m.proposals_committed),
        proposals_failed: load(&m.proposals_failed),
        commit_index: status.commit_index,
        last_index: status.last_index,
        fsync_count: load(&m.fsync_count),
        fsync_micros_sum: load(&m.fsync_micros_sum),
        watch_events: load(&api.watch.metrics.events_sent),
        leases_expired: load(&m.leases_expired),
    }
}

/// Samples the rates once a second for as long as the member's API lives.
pub fn start_sampler(api: &Api) {
    let samples: Weak<Samples> = Arc::downgrade(&api.ui);
    let api = Api { ui: Arc::new(Samples::default()), ..api.clone() };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            let Some(samples) = samples.upgrade() else { return };
            samples.push(sample(&api));
        }
    });
}

/// What one member says of itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    pub status: Status,
    /// While it leads: each member's match index, by hex id.
    #[serde(default)]
    pub matched: BTreeMap<String, u64>,
    /// Its timeline, after the `since` asked for.
    #[serde(default)]
    pub timeline: Vec<serde_json::Value>,
    #[serde(default)]
    pub samples: Vec<Sample>,
    /// Its clock when it answered, milliseconds since the Unix epoch.
    pub now_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Since {
    /// The newest timeline event the reader has (its `seq`).
    pub since: u64,
    /// The newest sample the reader has (its `at_ms`).
    pub samples_since: u64,
}

pub fn member_view(api: &Api, since: Since) -> MemberView {
    let shared = &api.node.shared;
    let matched = shared.status().matched.into_iter().map(|(id, index)| (format_id(id), index)).collect();
    let timeline = shared.timeline.since(since.since).iter().filter_map(|e| serde_json::to_value(e).ok()).collect();
    MemberView {
        status: build_status(api),
        matched,
        timeline,
        samples: api.ui.since(since.samples_since),
        now_ms: now_ms(),
    }
}

/// One member in the stream's event: its view, or why there is none.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberEntry {
    pub id: String,
    pub name: String,
    pub client_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<MemberView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The stream's event: the cluster as this member sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterEvent {
    /// The member serving the stream (hex id).
    pub served_by: String,
    pub at_ms: u64,
    pub members: Vec<MemberEntry>,
}

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/ui", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/ui/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/ui/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/ui/v1/member", get(member))
        .route("/ui/v1/stream", get(stream))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // The page uses only itself and this member: no other origin, no inline script.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'"),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

async fn member(
    State(api): State<Api>,
    since: Result<Query<Since>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<MemberView>> {
    Ok(Json(member_view(&api, parse_query(since)?)))
}

/// What one stream has sent of each member: the newest event and sample.
type Sent = BTreeMap<String, Since>;

async fn stream(State(api): State<Api>) -> impl IntoResponse {
    let state = (api, Sent::new(), true);
    let events = futures::stream::unfold(state, |(api, mut sent, first)| async move {
        if !first {
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        let event = cluster_event(&api, &mut sent).await;
        let data = serde_json::to_string(&event).unwrap_or_else(|_| "{}".into());
        Some((Ok::<_, Infallible>(SseEvent::default().event("cluster").data(data)), (api, sent, false)))
    });
    let mut response = Sse::new(events).keep_alive(KeepAlive::default()).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// This member's view and every other member's it can reach, each with only what `sent` says
/// the reader lacks; `sent` then records what this event carries.
pub async fn cluster_event(api: &Api, sent: &mut Sent) -> ClusterEvent {
    let me = format_id(api.node.shared.id);
    let own = member_view(api, sent.get(&me).copied().unwrap_or_default());
    let others: Vec<_> = own.status.members.iter().filter(|m| m.id != me).cloned().collect();
    let asks = others.iter().map(|m| {
        let since = sent.get(&m.id).copied().unwrap_or_default();
        peer_view(api, m.client_url.clone(), since)
    });
    let answers = futures::future::join_all(asks).await;
    let mut members = vec![MemberEntry {
        id: me.clone(),
        name: own.status.name.clone(),
        client_url: api.node.shared.advertise_client_url.clone(),
        view: Some(own),
        error: None,
    }];
    for (m, answer) in others.into_iter().zip(answers) {
        let (view, error) = match answer {
            Ok(view) => (Some(view), None),
            Err(e) => (None, Some(e)),
        };
        members.push(MemberEntry { id: m.id, name: m.name, client_url: m.client_url, view, error });
    }
    for entry in &members {
        if let Some(view) = &entry.view {
            let seen = sent.entry(entry.id.clone()).or_default();
            if let Some(seq) = view.timeline.last().and_then(|e| e.get("seq")).and_then(|s| s.as_u64()) {
                seen.since = seen.since.max(seq);
            }
            if let Some(s) = view.samples.last() {
                seen.samples_since = seen.samples_since.max(s.at_ms);
            }
        }
    }
    ClusterEvent { served_by: me, at_ms: now_ms(), members }
}

async fn peer_view(api: &Api, client_url: String, since: Since) -> Result<MemberView, String> {
    if client_url.is_empty() {
        return Err("its client URL is not known yet".into());
    }
    let url = format!("{client_url}/ui/v1/member?since={}&samplesSince={}", since.since, since.samples_since);
    let request = axum::http::Request::builder().method(Method::GET).uri(url).body(client::full(bytes::Bytes::new()));
    let answer = api.http.call(request, PEER_TIMEOUT, MAX_PEER_VIEW_BYTES).await.map_err(|e| e.to_string())?;
    if !answer.status.is_success() {
        return Err(format!("it answered {}", answer.status));
    }
    serde_json::from_slice(&answer.body).map_err(|e| format!("its answer is not a view: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_samples_keep_five_minutes_and_answer_what_is_newer() {
        let samples = Samples::default();
        for at_ms in 1..=(SAMPLES_KEPT as u64 + 5) {
            samples.push(Sample { at_ms, ..Sample::default() });
        }
        let all = samples.since(0);
        assert_eq!(all.len(), SAMPLES_KEPT);
        assert_eq!(all[0].at_ms, 6);
        assert_eq!(
            samples.since(SAMPLES_KEPT as u64 + 3).iter().map(|s| s.at_ms).collect::<Vec<_>>(),
            [SAMPLES_KEPT as u64 + 4, SAMPLES_KEPT as u64 + 5]
        );
    }

    #[test]
    fn the_page_refers_only_to_its_own_assets() {
        // Offline clusters: nothing may come from another origin.
        for (name, text) in [("index.html", INDEX_HTML), ("app.js", APP_JS), ("app.css", APP_CSS)] {
            // SVG's namespace is a name, not a place anything is loaded from.
            let text = text.replace("\"http://www.w3.org/2000/svg\"", "");
            for scheme in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(scheme), "{name} refers to {scheme}");
            }
        }
        assert!(INDEX_HTML.contains("src=\"/ui/app.js\"") && INDEX_HTML.contains("href=\"/ui/app.css\""));
    }
}
