//! The operator's page, `/ui` on `--metrics-addr` (DESIGN.md §6, "The operator's metrics and
//! page"): one HTML table of every RaftCluster this replica manages (phase, conditions, leader,
//! term, members, the last events the operator published about it, and how to open the
//! cluster's own member view), and `/ui/v1/clusters`, the same as JSON, which the page fetches
//! to refresh itself.
//!
//! Everything comes from the operator's memory ([`super::book`]) and the controller's cache: a
//! request makes no call to the API server or to a member. The page is rendered on the server
//! (it reads without JavaScript) and its script and style are embedded in the binary and served
//! from here, so nothing is loaded from elsewhere (the Content-Security-Policy says so too).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::book::{Book, RecordedEvent, Tracked};
use super::builders::client_service_name_of;
use super::crd::MemberStatus;
use super::reconcile::Context;
use crate::base::wire::DEFAULT_CLIENT_PORT;

const PAGE: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/ui.js");
const STYLE: &str = include_str!("ui/ui.css");

/// What `/ui/v1/clusters` answers.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    /// When this answer was made (RFC 3339).
    pub generated_at: String,
    /// Whether this replica holds the lease (a standby reconciles nothing and knows no cluster).
    pub leading: bool,
    /// By namespace, then name.
    pub clusters: Vec<ClusterView>,
}

/// One RaftCluster.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    pub namespace: String,
    pub name: String,
    /// `status.phase`; absent before the first reconcile.
    pub phase: Option<String>,
    /// `spec.paused`.
    pub paused: bool,
    /// `spec.replicas`.
    pub replicas: u32,
    pub ready_replicas: Option<u32>,
    pub leader: Option<String>,
    pub term: Option<u64>,
    /// `status.members`.
    pub members: Vec<MemberStatus>,
    pub conditions: Vec<ConditionView>,
    /// The last events the operator published about the cluster, newest first.
    pub events: Vec<RecordedEvent>,
    /// When its last reconcile succeeded (RFC 3339).
    pub last_reconcile: Option<String>,
    /// How to open the cluster's own page (a member serves `/ui` on its client port).
    pub member_view: MemberView,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    /// `kubectl port-forward -n NS svc/NAME-client 2379:2379`.
    pub port_forward: String,
    /// `http://localhost:2379/ui` (`https://` with `spec.tls`).
    pub url: String,
    /// What else it takes (with `spec.tls`: a client certificate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// How to reach the member view of cluster `name` in `namespace`.
pub fn member_view(namespace: &str, name: &str, tls: bool) -> MemberView {
    let port = DEFAULT_CLIENT_PORT;
    let service = client_service_name_of(name);
    MemberView {
        port_forward: format!("kubectl port-forward -n {namespace} svc/{service} {port}:{port}"),
        url: format!("{}://localhost:{port}/ui", if tls { "https" } else { "http" }),
        note: tls.then(|| {
            format!(
                "the members require a client certificate of the cluster's CA: the Secret {} holds one \
                 (tls.crt, tls.key) and the CA (ca.crt)",
                super::certs::client_secret_name_of(name)
            )
        }),
    }
}

fn view(tracked: Tracked) -> ClusterView {
    let status = tracked.status().cloned().unwrap_or_default();
    let mut conditions: Vec<ConditionView> = status
        .conditions
        .iter()
        .map(|c| ConditionView {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_transition_time: c.last_transition_time.0.to_string(),
        })
        .collect();
    conditions.sort_by_key(|c| condition_rank(&c.type_));
    ClusterView {
        phase: status.phase.clone(),
        paused: tracked.paused(),
        replicas: tracked.replicas(),
        ready_replicas: status.ready_replicas,
        leader: status.leader.clone(),
        term: status.term,
        members: status.members.clone(),
        conditions,
        events: tracked.entry.events.iter().rev().cloned().collect(),
        last_reconcile: tracked.entry.last_success.and_then(|s| Timestamp::from_second(s).ok()).map(|t| t.to_string()),
        member_view: member_view(&tracked.namespace, &tracked.name, tracked.tls()),
        namespace: tracked.namespace,
        name: tracked.name,
    }
}

/// The usual conditions first, in the order users read them; others after, as they come.
fn condition_rank(type_: &str) -> usize {
    const ORDER: [&str; 5] = ["Available", "Progressing", "Degraded", "MembershipConsistent", "BackupSucceeded"];
    ORDER.iter().position(|t| *t == type_).unwrap_or(ORDER.len())
}

/// What `/ui/v1/clusters` answers now.
pub fn overview(book: &Book, leading: bool) -> Overview {
    Overview {
        generated_at: Timestamp::now().to_string(),
        leading,
        clusters: book.tracked().into_iter().map(view).collect(),
    }
}

/// Text for HTML (element content and quoted attribute values).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The CSS class of a phase: `phase-ok`, `phase-warn`, `phase-bad` or `phase-none` (ui.js
/// `phaseClass` says the same).
fn phase_class(phase: Option<&str>) -> &'static str {
    match phase {
        Some("Running") => "phase-ok",
        Some("Bootstrapping" | "Scaling" | "Paused") => "phase-warn",
        Some(_) => "phase-bad",
        None => "phase-none",
    }
}

/// A condition is good when it is True, except Degraded, which is good when False.
fn condition_good(condition: &ConditionView) -> bool {
    (condition.status == "True") != (condition.type_ == "Degraded")
}

/// One row of the table (ui.js `row` renders the same from the JSON).
pub fn row(c: &ClusterView) -> String {
    let key = format!("{}/{}", c.namespace, c.name);
    let phase = c.phase.as_deref().unwrap_or("Unknown");
    let paused = if c.paused && c.phase.as_deref() != Some("Paused") { " (paused)" } else { "" };
    let members = if c.members.is_empty() {
        "<span class=\"none\">none reported</span>".to_string()
    } else {
        let items: String = c
            .members
            .iter()
            .map(|m| {
                let health = if m.healthy { "healthy" } else { "unhealthy" };
                format!(
                    "<li><span class=\"member\">{}</span> <span class=\"role role-{}\">{}</span> \
                     <span class=\"{}\">{}</span> <span class=\"index\">applied {} lag {}</span></li>",
                    escape(&m.name),
                    escape(&m.role),
                    escape(&m.role),
                    health,
                    health,
                    m.applied_index,
                    m.lag
                )
            })
            .collect();
        format!("<ul class=\"members\">{items}</ul>")
    };
    let conditions = if c.conditions.is_empty() {
        "<span class=\"none\">none yet</span>".to_string()
    } else {
        let items: String = c
            .conditions
            .iter()
            .map(|k| {
                format!(
                    "<li class=\"{}\"><span class=\"cond\">{}: {}</span> <span class=\"reason\">{}</span>\
                     <span class=\"message\">{}</span></li>",
                    if condition_good(k) { "good" } else { "bad" },
                    escape(&k.type_),
                    escape(&k.status),
                    escape(&k.reason),
                    escape(&k.message)
                )
            })
            .collect();
        format!("<ul class=\"conditions\">{items}</ul>")
    };
    let events = if c.events.is_empty() {
        "<span class=\"none\">none since the operator started</span>".to_string()
    } else {
        let items: String = c
            .events
            .iter()
            .map(|e| {
                format!(
                    "<li class=\"event-{}\"><time datetime=\"{}\">{}</time> <span class=\"reason\">{}</span> \
                     <span class=\"message\">{}</span></li>",
                    escape(&e.type_.to_lowercase()),
                    escape(&e.time),
                    escape(&e.time),
                    escape(&e.reason),
                    escape(&e.note)
                )
            })
            .collect();
        format!(
            "<details data-key=\"{}\"><summary>{} event{}, newest first</summary><ol class=\"events\">{items}</ol></details>",
            escape(&key),
            c.events.len(),
            if c.events.len() == 1 { "" } else { "s" }
        )
    };
    let note = c
        .member_view
        .note
        .as_ref()
        .map(|n| format!("<span class=\"message\">{}</span>", escape(n)))
        .unwrap_or_default();
    let view = format!(
        "<code>{}</code> <button type=\"button\" class=\"copy\" data-copy=\"{}\">Copy command</button> \
         then open <a href=\"{}\">{}</a>{note}",
        escape(&c.member_view.port_forward),
        escape(&c.member_view.port_forward),
        escape(&c.member_view.url),
        escape(&c.member_view.url)
    );
    let term = c.term.map(|t| t.to_string()).unwrap_or_else(|| "-".to_string());
    let ready = c.ready_replicas.map(|r| r.to_string()).unwrap_or_else(|| "-".to_string());
    format!(
        "<tr data-key=\"{key}\">\
         <th scope=\"row\" data-label=\"Cluster\"><span class=\"ns\">{ns}/</span>{name}\
         <span class=\"replicas\">{ready}/{replicas} ready</span></th>\
         <td data-label=\"Phase\"><span class=\"phase {class}\">{phase}</span>{paused}</td>\
         <td data-label=\"Leader\">{leader}</td>\
         <td data-label=\"Term\">{term}</td>\
         <td data-label=\"Members\">{members}</td>\
         <td data-label=\"Conditions\">{conditions}</td>\
         <td data-label=\"Recent events\">{events}</td>\
         <td data-label=\"Member view\">{view}</td>\
         </tr>",
        key = escape(&key),
        ns = escape(&c.namespace),
        name = escape(&c.name),
        replicas = c.replicas,
        class = phase_class(c.phase.as_deref()),
        phase = escape(phase),
        leader = escape(c.leader.as_deref().unwrap_or("-")),
    )
}

/// The page, with the table as of `overview`.
pub fn page(overview: &Overview) -> String {
    let rows: String = overview.clusters.iter().map(row).collect();
    let empty = if overview.clusters.is_empty() { "" } else { " hidden" };
    let standby = if overview.leading { " hidden" } else { "" };
    PAGE.replace("{{ROWS}}", &rows)
        .replace("{{EMPTY_HIDDEN}}", empty)
        .replace("{{STANDBY_HIDDEN}}", standby)
        .replace("{{COUNT}}", &overview.clusters.len().to_string())
        .replace("{{GENERATED}}", &escape(&overview.generated_at))
}

/// Headers of every answer here: no caching, no sniffing, nothing from elsewhere.
const SECURITY_HEADERS: [(header::HeaderName, &str); 4] = [
    (header::CACHE_CONTROL, "no-store"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
];

fn answer(content_type: &'static str, body: String) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    for (name, value) in SECURITY_HEADERS {
        response.headers_mut().insert(name, header::HeaderValue::from_static(value));
    }
    response
}

/// `/ui`, `/ui/v1/clusters` and the page's assets. Paths in the page are relative (`ui/...`),
/// so it works behind a proxy that adds a prefix (`kubectl proxy`, the API server's service
/// proxy) too.
pub fn router(ctx: Arc<Context>, leading: Arc<AtomicBool>) -> axum::Router {
    use axum::routing::get;
    let (page_ctx, page_leading) = (ctx.clone(), leading.clone());
    axum::Router::new()
        .route(
            "/ui",
            get(move || {
                let body = page(&overview(&page_ctx.book, page_leading.load(Ordering::Relaxed)));
                async move { answer("text/html; charset=utf-8", body) }
            }),
        )
        .route("/ui/", get(|| async { axum::response::Redirect::permanent("../ui") }))
        .route(
            "/ui/v1/clusters",
            get(move || {
                let body = serde_json::to_string(&overview(&ctx.book, leading.load(Ordering::Relaxed)))
                    .unwrap_or_else(|e| format!("{{\"error\": {{\"code\": \"encode\", \"message\": \"{e}\"}}}}"));
                async move { answer("application/json", body) }
            }),
        )
        .route("/ui/assets/ui.js", get(|| async { answer("text/javascript; charset=utf-8", SCRIPT.to_string()) }))
        .route("/ui/assets/ui.css", get(|| async { answer("text/css; charset=utf-8", STYLE.to_string()) }))
}

#[cfg(test)]
mod tests;
