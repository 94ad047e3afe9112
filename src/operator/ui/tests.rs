use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::{Event, EventType};

use super::*;
use crate::operator::crd::{RaftCluster, RaftClusterSpec, RaftClusterStatus};

fn cluster(name: &str, spec: serde_json::Value) -> RaftCluster {
    let spec: RaftClusterSpec = serde_json::from_value(spec).expect("a spec");
    let mut cluster = RaftCluster::new(name, spec);
    cluster.metadata.namespace = Some("team-a".to_string());
    cluster.metadata.uid = Some(format!("uid-{name}"));
    cluster
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: None,
        last_transition_time: Time(Timestamp::from_second(1_700_000_000).expect("a time")),
    }
}

fn book() -> Book {
    let book = Book::default();
    let etcd = cluster("etcd", serde_json::json!({"replicas": 3}));
    let status = RaftClusterStatus {
        phase: Some("Running".to_string()),
        leader: Some("etcd-1".to_string()),
        term: Some(7),
        ready_replicas: Some(3),
        members: ["etcd-0", "etcd-1", "etcd-2"]
            .iter()
            .map(|name| MemberStatus {
                name: name.to_string(),
                id: format!("id-{name}"),
                role: if *name == "etcd-1" { "leader" } else { "follower" }.to_string(),
                healthy: *name != "etcd-2",
                applied_index: 41,
                lag: 0,
            })
            .collect(),
        conditions: vec![
            condition("Degraded", "True", "MemberUnhealthy", "unhealthy: etcd-2"),
            condition("Available", "True", "LeaderElected", "etcd-1 leads with a majority of the voters"),
        ],
        ..RaftClusterStatus::default()
    };
    book.observed(&etcd, &status);
    book.reconciled(&etcd, 1_700_000_100);
    let note = |text: &str| Event {
        type_: EventType::Warning,
        reason: "QuorumLost".to_string(),
        note: Some(text.to_string()),
        action: "Observe".to_string(),
        secondary: None,
    };
    book.event(&etcd, &note("first"));
    book.event(&etcd, &note("<script>alert(1)</script> & more"));
    book.reconciled(&cluster("secure", serde_json::json!({"tls": {"auto": {}}, "paused": true})), 1_700_000_200);
    book
}

#[test]
fn the_json_names_each_cluster_with_its_status_events_and_member_view() {
    let overview = overview(&book(), true);
    let json = serde_json::to_value(&overview).expect("json");
    assert_eq!(json["leading"], true);
    let etcd = &json["clusters"][0];
    assert_eq!(etcd["namespace"], "team-a");
    assert_eq!(etcd["name"], "etcd");
    assert_eq!(etcd["phase"], "Running");
    assert_eq!(etcd["leader"], "etcd-1");
    assert_eq!(etcd["term"], 7);
    assert_eq!(etcd["readyReplicas"], 3);
    assert_eq!(etcd["members"][1]["role"], "leader");
    assert_eq!(etcd["members"][2]["healthy"], false);
    assert_eq!(etcd["conditions"][0]["type"], "Available", "the usual order, whatever the status's");
    assert_eq!(etcd["conditions"][1]["type"], "Degraded");
    assert_eq!(etcd["events"][0]["note"], "<script>alert(1)</script> & more", "newest first");
    assert_eq!(etcd["events"][1]["note"], "first");
    assert_eq!(etcd["events"][0]["type"], "Warning");
    assert_eq!(etcd["lastReconcile"], "2023-11-14T22:15:00Z");
    assert_eq!(etcd["memberView"]["portForward"], "kubectl port-forward -n team-a svc/etcd-client 2379:2379");
    assert_eq!(etcd["memberView"]["url"], "http://localhost:2379/ui");
    assert!(etcd["memberView"].get("note").is_none());

    let secure = &json["clusters"][1];
    assert_eq!(secure["name"], "secure");
    assert!(secure["phase"].is_null(), "no status yet");
    assert_eq!(secure["paused"], true);
    assert_eq!(secure["memberView"]["url"], "https://localhost:2379/ui");
    assert!(secure["memberView"]["note"].as_str().is_some_and(|n| n.contains("secure-client-tls")));
}

#[test]
fn the_page_has_one_row_per_cluster_with_everything_escaped() {
    let overview = overview(&book(), true);
    let html = page(&overview);
    assert!(!html.contains("{{"), "every placeholder filled");
    assert_eq!(html.matches("<tr data-key=").count(), 2);
    for expected in [
        "<th scope=\"row\" data-label=\"Cluster\"><span class=\"ns\">team-a/</span>etcd",
        "<span class=\"phase phase-ok\">Running</span>",
        "<td data-label=\"Leader\">etcd-1</td>",
        "<td data-label=\"Term\">7</td>",
        "<span class=\"member\">etcd-2</span> <span class=\"role role-follower\">follower</span> <span class=\"unhealthy\">",
        "<li class=\"bad\"><span class=\"cond\">Degraded: True</span>",
        "<li class=\"good\"><span class=\"cond\">Available: True</span>",
        "2 events, newest first",
        "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more",
        "<code>kubectl port-forward -n team-a svc/etcd-client 2379:2379</code>",
        "<a href=\"http://localhost:2379/ui\">",
        "<span class=\"phase phase-none\">Unknown</span> (paused)",
        "2 clusters, as of",
    ] {
        assert!(html.contains(expected), "{expected} in\n{html}");
    }
    assert!(!html.contains("<script>alert"), "no markup from the data");
    assert!(
        html.contains("<p id=\"standby\" class=\"notice\" hidden>"),
        "a leading replica says nothing of standing by"
    );
    assert!(html.contains("<p id=\"empty\" class=\"notice\" hidden>"));

    let standby = page(&Overview { generated_at: "now".into(), leading: false, clusters: vec![] });
    assert!(standby.contains("<p id=\"standby\" class=\"notice\">"));
    assert!(standby.contains("<p id=\"empty\" class=\"notice\">"));
}

#[test]
fn the_page_loads_nothing_from_elsewhere() {
    for asset in [PAGE, SCRIPT, STYLE] {
        for remote in ["http://", "https://", "//cdn", "@import"] {
            let found: Vec<&str> = asset.lines().filter(|l| l.contains(remote)).collect();
            assert!(found.is_empty(), "{remote}: {found:?}");
        }
    }
    assert!(PAGE.contains("<link rel=\"stylesheet\" href=\"ui/assets/ui.css\">"));
    assert!(PAGE.contains("<script src=\"ui/assets/ui.js\" defer></script>"));
    assert!(SCRIPT.contains("fetch(\"ui/v1/clusters\""));
}

#[test]
fn escape_covers_what_html_needs() {
    assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
}
