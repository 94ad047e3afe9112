use super::*;
use crate::operator::crd::RaftClusterSpec;

fn cluster(tls: serde_json::Value) -> RaftCluster {
    let spec: RaftClusterSpec = serde_json::from_value(serde_json::json!({ "tls": tls })).expect("a spec");
    let mut cluster = RaftCluster::new("etcd", spec);
    cluster.metadata.namespace = Some("ns".to_string());
    cluster.metadata.uid = Some("5a1b2c3d-0000-4000-8000-000000000001".to_string());
    cluster
}

fn der(secret: &Secret) -> CertificateDer<'static> {
    let pem = text(secret, KEY_CERT).expect("a certificate");
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem").into_owned()
}

const NOW: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

#[test]
fn every_member_gets_a_certificate_for_its_own_names_and_no_other_members() {
    let cluster = cluster(serde_json::json!({"auto": {}}));
    let requests = requests(&cluster).expect("requests");
    assert_eq!(requests.len(), MAX_REPLICAS as usize + 2, "a member each, the client, the operator");
    let (ca, _) = mint_ca(&cluster, NOW).expect("ca");
    let first = issue(&cluster, &ca, &requests[0], NOW).expect("issue");
    assert_eq!(first.name_any(), "etcd-0-tls");
    assert_eq!(first.type_.as_deref(), Some(SECRET_TYPE_TLS));
    let cert = der(&first);
    assert_eq!(crate::base::tls::common_name(&cert).as_deref(), Some("etcd-0"));
    for host in ["etcd-0.etcd.ns.svc", "etcd-0.etcd.ns.svc.cluster.local", "etcd-client.ns.svc", "127.0.0.1"] {
        crate::base::tls::certificate_names(&cert, host).unwrap_or_else(|e| panic!("{host}: {e}"));
    }
    for other in ["etcd-1.etcd.ns.svc", "etcd-0.etcd.other.svc", "etcd-0.other.ns.svc"] {
        assert!(crate::base::tls::certificate_names(&cert, other).is_err(), "{other}");
    }
    let client = requests.iter().find(|r| r.secret == "etcd-client-tls").expect("the client's");
    assert_eq!(client.common_name, CLIENT_USER);
    let operator = requests.iter().find(|r| r.secret == "etcd-operator-tls").expect("the operator's");
    assert_eq!(operator.common_name, OPERATOR_USER);
}

#[test]
fn a_certificate_is_due_when_missing_foreign_renamed_or_with_a_third_of_its_life_left() {
    let cluster = cluster(serde_json::json!({"auto": {"certificateDays": 90}}));
    let requests = requests(&cluster).expect("requests");
    let request = &requests[1];
    let (ca, ca_secret) = mint_ca(&cluster, NOW).expect("ca");
    let fresh = issue(&cluster, &ca, request, NOW).expect("issue");
    assert_eq!(due(Some(&fresh), request, ca.cert_pem(), NOW), None);
    assert_eq!(due(None, request, ca.cert_pem(), NOW).as_deref(), Some("missing"));
    // 90 days: renewed from day 60 on, not before.
    assert_eq!(due(Some(&fresh), request, ca.cert_pem(), NOW + 59 * DAY), None);
    let late = due(Some(&fresh), request, ca.cert_pem(), NOW + 61 * DAY).expect("due");
    assert!(late.starts_with("expiring"), "{late}");
    assert_eq!(renew_at(0, 90 * DAY), 60 * DAY);

    let (other, _) = mint_ca(&cluster, NOW).expect("another ca");
    let foreign = issue(&cluster, &other, request, NOW).expect("issue");
    assert_eq!(due(Some(&foreign), request, ca.cert_pem(), NOW).as_deref(), Some("issued by another CA"));
    let renamed = CertRequest { names: vec!["etcd-1.etcd.ns.svc".into(), "new.example".into()], ..request.clone() };
    assert_eq!(due(Some(&fresh), &renamed, ca.cert_pem(), NOW).as_deref(), Some("not issued for new.example"));
    let other_member = &requests[2];
    assert_eq!(due(Some(&fresh), other_member, ca.cert_pem(), NOW).as_deref(), Some("issued to another name"));
    let mut broken = fresh.clone();
    broken.data.as_mut().expect("data").remove(KEY_KEY);
    assert_eq!(due(Some(&broken), request, ca.cert_pem(), NOW).as_deref(), Some("incomplete"));

    // The CA is read back from its Secret; a damaged one is an error, never replaced.
    let again = read_ca(Some(&ca_secret)).expect("readable").expect("a CA");
    assert_eq!(again.cert_pem(), ca.cert_pem());
    assert!(read_ca(None).expect("no secret").is_none());
    let mut damaged = ca_secret.clone();
    damaged.data.as_mut().expect("data").insert(KEY_CA_KEY.into(), ByteString(other.key_pem().as_bytes().to_vec()));
    let e = read_ca(Some(&damaged)).err().expect("a foreign key");
    assert!(e.contains("etcd-ca") && e.contains("not the key of the CA certificate"), "{e}");
    damaged.data.as_mut().expect("data").remove(KEY_CA_KEY);
    assert!(read_ca(Some(&damaged)).err().expect("no key").contains("lacks"));

    let identity = identity(&fresh).expect("an identity");
    assert!(identity.ca.origin.to_string_lossy().contains("etcd-1-tls"));
    assert!(crate::base::tls::caller_config_pem(&identity.ca, Some((&identity.cert, &identity.key)), &[]).is_ok());
}

#[test]
fn cert_manager_certificates_name_the_issuer_the_secret_and_the_hosts() {
    let cluster =
        cluster(serde_json::json!({"certManager": {"issuerRef": {"name": "ca-issuer", "kind": "ClusterIssuer"}}}));
    let requests = requests(&cluster).expect("requests");
    let issuer = &cluster.spec.tls.as_ref().and_then(|t| t.cert_manager.as_ref()).expect("cm").issuer_ref;
    let cert = certificate(&cluster, &requests[0], issuer).expect("a Certificate");
    assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
    assert_eq!(cert["kind"], "Certificate");
    assert_eq!(cert["metadata"]["name"], "etcd-0-tls");
    assert_eq!(cert["metadata"]["ownerReferences"][0]["kind"], "RaftCluster");
    assert_eq!(cert["spec"]["secretName"], "etcd-0-tls");
    assert_eq!(cert["spec"]["commonName"], "etcd-0");
    assert_eq!(
        cert["spec"]["issuerRef"],
        serde_json::json!({"name": "ca-issuer", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    assert_eq!(cert["spec"]["ipAddresses"], serde_json::json!(["127.0.0.1"]));
    let dns = cert["spec"]["dnsNames"].as_array().expect("dns names");
    assert!(dns.contains(&serde_json::json!("etcd-0.etcd.ns.svc")) && !dns.contains(&serde_json::json!("127.0.0.1")));
    assert_eq!(cert["spec"]["secretTemplate"]["labels"]["app.kubernetes.io/instance"], "etcd");
    let client = certificate(&cluster, &requests[MAX_REPLICAS as usize], issuer).expect("the client's");
    assert_eq!(client["spec"]["commonName"], CLIENT_USER);
    assert!(client["spec"].get("dnsNames").is_none(), "a client certificate names no host");
}

#[test]
fn expiries_name_each_certificate_and_the_ca_by_secret_with_their_not_after() {
    let cluster = cluster(serde_json::json!({"auto": {"certificateDays": 30}}));
    let requests = requests(&cluster).expect("requests");
    let (ca, ca_secret) = mint_ca(&cluster, NOW).expect("ca");
    let member = issue(&cluster, &ca, &requests[0], NOW).expect("issue");
    let operator = issue(&cluster, &ca, requests.last().expect("the operator's"), NOW - DAY).expect("issue");
    let mut broken = member.clone();
    broken.metadata.name = Some("etcd-1-tls".to_string());
    broken.data.as_mut().expect("data").insert(KEY_CERT.to_string(), ByteString(b"not a certificate".to_vec()));
    let stranger = Secret {
        metadata: kube::api::ObjectMeta { name: Some("other".into()), ..Default::default() },
        ..member.clone()
    };
    let secrets = by_name(vec![ca_secret, member, operator, broken, stranger]);
    let found = expiries(&cluster, &secrets);
    assert_eq!(
        found,
        BTreeMap::from([
            ("etcd-0-tls".to_string(), NOW + 30 * DAY),
            ("etcd-ca".to_string(), NOW + CA_SECONDS),
            ("etcd-operator-tls".to_string(), NOW - DAY + 30 * DAY),
        ]),
        "an unreadable certificate and a Secret of no request are left out"
    );
    assert!(expiries(&cluster, &BTreeMap::new()).is_empty());
}
