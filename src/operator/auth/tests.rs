use std::collections::BTreeMap;

use super::*;
use crate::operator::crd::RaftClusterSpec;

fn cluster(spec: serde_json::Value, status: Option<serde_json::Value>) -> RaftCluster {
    let spec: RaftClusterSpec = serde_json::from_value(spec).expect("a spec");
    let mut cluster = RaftCluster::new("etcd", spec);
    cluster.metadata.namespace = Some("ns".to_string());
    cluster.metadata.uid = Some("5a1b2c3d-0000-4000-8000-000000000001".to_string());
    cluster.status = status.map(|s| serde_json::from_value(s).expect("a status"));
    cluster
}

fn with_auth() -> RaftCluster {
    cluster(serde_json::json!({"auth": {"rootPasswordSecret": {"name": "etcd-root"}}}), None)
}

fn secret(data: &[(&str, &[u8])]) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some("etcd-root".to_string());
    secret.data = Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect::<BTreeMap<_, _>>());
    secret
}

#[test]
fn the_operator_manages_auth_from_spec_auth_until_auth_is_off_after_its_removal() {
    let on = with_auth();
    let reference = root_secret(&on).expect("spec.auth's Secret");
    assert_eq!((reference.name.as_str(), reference.key.as_str()), ("etcd-root", "password"));
    assert_eq!(wanted(&on), Some(true));

    // Removed while the status says auth is on with a Secret: still the operator's, to turn off.
    let recorded = serde_json::json!({"auth": {"enabled": true, "rootPasswordSecret": {"name": "old", "key": "pw"}}});
    let removed = cluster(serde_json::json!({}), Some(recorded));
    assert_eq!(root_secret(&removed).map(|r| r.name.as_str()), Some("old"));
    assert_eq!(wanted(&removed), Some(false));

    // Off again, never set, or turned on by hand: not the operator's.
    let off = cluster(serde_json::json!({}), Some(serde_json::json!({"auth": {"enabled": false}})));
    assert_eq!((root_secret(&off), wanted(&off)), (None, None));
    let never = cluster(serde_json::json!({}), None);
    assert_eq!((root_secret(&never), wanted(&never)), (None, None));
    let by_hand = cluster(serde_json::json!({}), Some(serde_json::json!({"auth": {"enabled": true}})));
    assert_eq!((root_secret(&by_hand), wanted(&by_hand)), (None, None));
}

#[test]
fn roots_password_is_read_from_the_secret_or_the_error_names_what_to_fix() {
    let reference = with_auth().spec.auth.expect("auth").root_password_secret;
    assert_eq!(credentials(None, &reference), Ok(None), "no Secret yet");
    let read = credentials(Some(&secret(&[("password", b"s3cret\n")])), &reference).expect("read");
    assert_eq!(read, Some(Credentials { name: "root".to_string(), password: "s3cret\n".to_string() }), "as it is");
    for (data, expected) in [
        (vec![("other", b"x".as_slice())], "Secret etcd-root has no key \"password\" for root's password"),
        (vec![("password", b"".as_slice())], "Secret etcd-root: root's password under \"password\" is empty"),
        (
            vec![("password", b"\xff\xfe".as_slice())],
            "Secret etcd-root: root's password under \"password\" is not UTF-8",
        ),
    ] {
        assert_eq!(credentials(Some(&secret(&data)), &reference), Err(expected.to_string()));
    }
}

#[test]
fn a_generated_secret_holds_a_random_password_under_the_key_and_belongs_to_the_cluster() {
    let cluster = with_auth();
    let reference = SecretKeyRef { name: "etcd-root".to_string(), key: "pw".to_string() };
    let first = generated_secret(&cluster, &reference).expect("a Secret");
    let second = generated_secret(&cluster, &reference).expect("another");
    assert_eq!(first.metadata.name.as_deref(), Some("etcd-root"));
    assert_eq!(first.metadata.namespace.as_deref(), Some("ns"));
    let owner = &first.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("RaftCluster", "etcd"));
    let password = |s: &Secret| credentials(Some(s), &reference).expect("readable").expect("there").password;
    let (a, b) = (password(&first), password(&second));
    assert_eq!(a.len(), GENERATED_PASSWORD_CHARS);
    assert!(a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
    assert_ne!(a, b, "each is random");
}

#[test]
fn status_auth_reports_the_leaders_word_and_keeps_the_secret_while_auth_is_on() {
    let on = with_auth();
    let none = RaftClusterStatus::default();
    let secret = Some(SecretKeyRef { name: "etcd-root".to_string(), key: "password".to_string() });
    assert_eq!(
        status(&on, &none, Some(false)),
        Some(AuthStatus { enabled: false, root_password_secret: secret.clone() })
    );
    let enabled = status(&on, &none, Some(true)).expect("a status");
    assert_eq!(enabled, AuthStatus { enabled: true, root_password_secret: secret.clone() });
    let previous = RaftClusterStatus { auth: Some(enabled.clone()), ..RaftClusterStatus::default() };
    assert_eq!(status(&on, &previous, None).as_ref(), Some(&enabled), "no leader: as before");

    // spec.auth removed: the Secret stays named until the leader reports auth off.
    let removed = cluster(serde_json::json!({}), None);
    assert_eq!(status(&removed, &previous, Some(true)).as_ref(), Some(&enabled));
    assert_eq!(
        status(&removed, &previous, Some(false)),
        Some(AuthStatus { enabled: false, root_password_secret: None })
    );
    assert_eq!(status(&removed, &none, Some(false)), None, "never the operator's: nothing to say");
}
