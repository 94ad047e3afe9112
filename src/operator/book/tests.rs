use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::{reflector, watcher};

use super::*;
use crate::operator::crd::{BackupFailure, BackupRecord, BackupStatus, RaftClusterSpec};

fn cluster(name: &str, uid: &str, spec: serde_json::Value) -> RaftCluster {
    let spec: RaftClusterSpec = serde_json::from_value(spec).expect("a spec");
    let mut cluster = RaftCluster::new(name, spec);
    cluster.metadata.namespace = Some("ns".to_string());
    cluster.metadata.uid = Some(uid.to_string());
    cluster
}

fn backup_spec() -> serde_json::Value {
    serde_json::json!({"backup": {"schedule": "0 * * * *", "destination": {"persistentVolumeClaim": {"claimName": "b"}}}})
}

fn backup_condition(ok: bool) -> Condition {
    Condition {
        type_: "BackupSucceeded".to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: if ok { "BackupSucceeded" } else { "EndpointUnreachable" }.to_string(),
        message: String::new(),
        observed_generation: None,
        last_transition_time: Time(Timestamp::now()),
    }
}

fn event(reason: &str, note: &str) -> Event {
    Event {
        type_: EventType::Normal,
        reason: reason.to_string(),
        note: Some(note.to_string()),
        action: "Reconcile".to_string(),
        secondary: None,
    }
}

/// The sample lines of `text` (no comments).
fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

#[test]
fn each_cluster_gets_its_reconcile_backup_and_certificate_gauges_with_its_labels() {
    let book = Book::default();
    let plain = cluster("plain", "u1", serde_json::json!({}));
    let backed = cluster("backed", "u2", backup_spec());
    book.reconciled(&plain, 1_700_000_000);
    book.reconciled(&backed, 1_700_000_100);
    book.certificates(&plain, BTreeMap::from([("plain-0-tls".to_string(), 1_800_000_000)]));

    // No backup yet: configured, so 0 failed, and no success timestamp.
    book.observed(&backed, &RaftClusterStatus::default());
    let text = render_cluster_metrics(&book.tracked());
    for family in [
        "kuberaft_operator_reconcile_last_success_timestamp_seconds",
        "kuberaft_operator_backup_last_success_timestamp_seconds",
        "kuberaft_operator_backup_last_failed",
        "kuberaft_operator_certificate_expiry_timestamp_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {family} gauge\n")), "{family} in\n{text}");
    }
    assert_eq!(
        samples(&text),
        [
            r#"kuberaft_operator_reconcile_last_success_timestamp_seconds{namespace="ns",raftcluster="backed"} 1700000100"#,
            r#"kuberaft_operator_reconcile_last_success_timestamp_seconds{namespace="ns",raftcluster="plain"} 1700000000"#,
            r#"kuberaft_operator_backup_last_failed{namespace="ns",raftcluster="backed"} 0"#,
            r#"kuberaft_operator_certificate_expiry_timestamp_seconds{namespace="ns",raftcluster="plain",secret="plain-0-tls"} 1800000000"#,
        ]
    );

    // A backup succeeds: its finishing time; then the next fails: 1, and the success stays.
    let success = BackupRecord { time: "2024-01-02T03:04:05Z".to_string(), ..BackupRecord::default() };
    let mut status = RaftClusterStatus {
        backup: Some(BackupStatus { last_success: Some(success), ..BackupStatus::default() }),
        conditions: vec![backup_condition(true)],
        ..RaftClusterStatus::default()
    };
    book.observed(&backed, &status);
    let text = render_cluster_metrics(&book.tracked());
    let success_line =
        r#"kuberaft_operator_backup_last_success_timestamp_seconds{namespace="ns",raftcluster="backed"} 1704164645"#;
    assert!(samples(&text).contains(&success_line), "{text}");
    assert!(samples(&text).contains(&r#"kuberaft_operator_backup_last_failed{namespace="ns",raftcluster="backed"} 0"#));
    status.backup.as_mut().expect("backup").last_failure = Some(BackupFailure::default());
    status.conditions = vec![backup_condition(false)];
    book.observed(&backed, &status);
    let text = render_cluster_metrics(&book.tracked());
    assert!(samples(&text).contains(&success_line), "{text}");
    assert!(samples(&text).contains(&r#"kuberaft_operator_backup_last_failed{namespace="ns",raftcluster="backed"} 1"#));

    // Backups turned off: no backup series at all.
    book.reconciled(&cluster("backed", "u2", serde_json::json!({})), 1_700_000_200);
    let text = render_cluster_metrics(&book.tracked());
    assert!(!text.contains(r#"backup_last_failed{"#) && !text.contains("backup_last_success_timestamp_seconds{"));
}

#[test]
fn a_deleted_cluster_loses_its_series_and_a_cluster_made_again_starts_anew() {
    let book = Book::default();
    let (reader, mut writer) = reflector::store();
    let a = cluster("a", "ua", serde_json::json!({}));
    let b = cluster("b", "ub", serde_json::json!({}));
    writer.apply_watcher_event(&watcher::Event::Apply(a.clone()));
    writer.apply_watcher_event(&watcher::Event::Apply(b.clone()));
    book.watch(reader);
    book.reconciled(&a, 10);
    book.reconciled(&b, 20);
    book.event(&b, &event("Bootstrap", "created"));
    let names = |book: &Book| book.tracked().into_iter().map(|t| t.name).collect::<Vec<_>>();
    assert_eq!(names(&book), ["a", "b"]);
    assert!(render_cluster_metrics(&book.tracked()).contains(r#"raftcluster="b"} 20"#));

    writer.apply_watcher_event(&watcher::Event::Delete(b.clone()));
    assert_eq!(names(&book), ["a"]);
    let text = render_cluster_metrics(&book.tracked());
    assert!(!text.contains(r#"raftcluster="b""#), "{text}");
    assert_eq!(lock(&book.entries).len(), 1, "the entry is gone, not only hidden");

    // b made again (a new uid): nothing of the old one shows, not even its events.
    let again = cluster("b", "ub2", serde_json::json!({}));
    writer.apply_watcher_event(&watcher::Event::Apply(again.clone()));
    book.event(&b, &event("Late", "a reconcile of the old b that finished after it was deleted"));
    let tracked = book.tracked();
    let b_again = tracked.iter().find(|t| t.name == "b").expect("b is back");
    assert!(b_again.entry.events.is_empty() && b_again.entry.last_success.is_none(), "{b_again:?}");
    book.reconciled(&again, 30);
    assert!(render_cluster_metrics(&book.tracked()).contains(r#"raftcluster="b"} 30"#));
}

#[test]
fn events_are_kept_newest_last_bounded_in_count_and_length() {
    let book = Book::default();
    let a = cluster("a", "ua", serde_json::json!({}));
    for i in 0..(MAX_EVENTS + 5) {
        book.event(&a, &event(&format!("R{i}"), &"x".repeat(i * 100)));
    }
    let entry = book.tracked().remove(0).entry;
    assert_eq!(entry.events.len(), MAX_EVENTS);
    assert_eq!(entry.events.front().map(|e| e.reason.as_str()), Some("R5"));
    assert_eq!(entry.events.back().map(|e| e.reason.as_str()), Some(format!("R{}", MAX_EVENTS + 4).as_str()));
    assert!(entry.events.iter().all(|e| e.note.chars().count() <= MAX_NOTE_CHARS + 1 && e.type_ == "Normal"));
}

#[test]
fn label_values_are_escaped() {
    assert_eq!(label(r#"a"b\c"#), r#"a\"b\\c"#);
    assert_eq!(label("a\nb"), "a\\nb");
}
