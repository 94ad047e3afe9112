use super::*;
use crate::operator::planner::{MemberHealth, Phase};

fn at(text: &str) -> Timestamp {
    text.parse().expect("a timestamp")
}

#[test]
fn a_backup_is_due_once_per_time_of_the_schedule_that_passed() {
    let every_six_hours = parse_schedule("0 */6 * * *").expect("a schedule");
    let created = at("2026-12-03T01:30:00Z");
    assert_eq!(due(&every_six_hours, created, at("2026-12-03T05:59:59Z")), None, "not yet");
    assert_eq!(due(&every_six_hours, created, at("2026-12-03T06:00:00Z")), Some(at("2026-12-03T06:00:00Z")));
    let last = at("2026-12-03T06:00:00Z");
    assert_eq!(due(&every_six_hours, last, at("2026-12-03T11:00:00Z")), None, "taken for 06:00 already");
    // Missed times (the operator was down) give one backup, for the latest of them.
    assert_eq!(due(&every_six_hours, last, at("2026-12-04T01:00:00Z")), Some(at("2026-12-04T00:00:00Z")));
    assert_eq!(next(&every_six_hours, at("2026-12-03T06:00:00Z")), Some(at("2026-12-03T12:00:00Z")));
    for bad in ["", "* * * *", "* * * * * *", "61 * * * *", "every day"] {
        assert!(parse_schedule(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn names_sort_by_time_and_only_the_clusters_own_backups_beyond_the_retention_are_pruned() {
    let name = object_name("etcd", at("2026-12-03T06:00:01.234Z"), 42);
    assert_eq!(name, "etcd-20261203T060001.234Z-r42.snap");
    let stored = |hour: u32| Stored {
        name: object_name("etcd", at(&format!("2026-12-03T{hour:02}:00:00Z")), 10),
        size: 1,
        modified: at(&format!("2026-12-03T{hour:02}:00:00Z")).as_second(),
    };
    let mut all: Vec<Stored> = (1..=5).map(stored).collect();
    all.push(Stored { name: "etcd-other-notes.txt".into(), size: 1, modified: 0 });
    all.push(Stored { name: "etcd2-20261203T000000.000Z-r1.snap".into(), size: 1, modified: 0 });
    let now = at("2026-12-03T06:00:00Z");
    let names = |hours: &[u32]| hours.iter().map(|h| stored(*h).name).collect::<Vec<_>>();
    let count = |count| RetentionSpec { count, max_age_hours: None };
    assert_eq!(to_prune("etcd", &all, &count(3), now), names(&[2, 1]));
    assert_eq!(to_prune("etcd", &all, &count(7), now), Vec::<String>::new());
    let aged = RetentionSpec { count: 7, max_age_hours: Some(3) };
    assert_eq!(to_prune("etcd", &all, &aged, now), names(&[2, 1]), "older than 3 hours");
    let all_old = RetentionSpec { count: 7, max_age_hours: Some(1) };
    assert_eq!(to_prune("etcd", &all, &all_old, at("2026-12-09T00:00:00Z")), names(&[4, 3, 2, 1]), "the newest stays");
}

fn member(name: &str, role: Role, healthy: bool, applied: u64) -> MemberHealth {
    MemberHealth {
        name: name.into(),
        id: None,
        role: Some(role),
        voter: true,
        healthy,
        applied_index: Some(applied),
        lag: Some(0),
    }
}

#[test]
fn backups_come_from_the_healthy_follower_furthest_ahead_and_from_the_leader_only_without_one() {
    let mut health = ClusterHealth {
        phase: Phase::Running,
        leader: Some("etcd-0".into()),
        term: 2,
        commit_index: 10,
        replicas: 3,
        ready_replicas: 3,
        members: vec![
            member("etcd-0", Role::Leader, true, 10),
            member("etcd-1", Role::Follower, true, 9),
            member("etcd-2", Role::Follower, true, 10),
        ],
        endpoints: Vec::new(),
        endpoints_hash: None,
        membership_hash: None,
        auth_enabled: None,
        available: true,
        quorum_lost: false,
        membership_consistent: true,
    };
    assert_eq!(source(&health).as_deref(), Some("etcd-2"));
    health.members[2].healthy = false;
    assert_eq!(source(&health).as_deref(), Some("etcd-1"));
    health.members[1].healthy = false;
    assert_eq!(source(&health).as_deref(), Some("etcd-0"), "the leader when no follower is healthy");
    health.leader = None;
    assert_eq!(source(&health), None, "no leader: no backup");
}
