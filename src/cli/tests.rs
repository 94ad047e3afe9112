//! Command-line parsing of every subcommand, and the pure pieces of output and of `dev`
//! (tables, the port plan, the node arguments). Nothing here starts a node.

use std::path::Path;
use std::time::Duration;

use clap::Parser;

use super::dev::{self, DevArgs, DevMember, MemberView};
use super::endpoint::{status_reports, status_table};
use super::kv::{keys_table, list_table, more_hint, ConsistencyArg, KvAction, OrderArg, SortByArg};
use super::member::{members_table, LeaderAction, MemberAction};
use super::{Cli, CliError, ClientArgs, Commands, CrdArgs, OutputFormat, ENDPOINTS_ENV};
use crate::base::wire::{KvItem, ListResponse, Member, MembersResponse, Status};
use crate::client::{encode_base64, ClientError};

fn parse(args: &[&str]) -> Commands {
    match Cli::try_parse_from(std::iter::once("kuberaft").chain(args.iter().copied())) {
        Ok(cli) => cli.command,
        Err(err) => panic!("{args:?} should parse: {err}"),
    }
}

fn parse_fails(args: &[&str]) -> clap::Error {
    match Cli::try_parse_from(std::iter::once("kuberaft").chain(args.iter().copied())) {
        Ok(cli) => panic!("{args:?} should not parse, got {:?}", cli.command),
        Err(err) => err,
    }
}

fn kv(args: &[&str]) -> (ClientArgs, KvAction) {
    match parse(args) {
        Commands::Kv(command) => (command.client, command.action),
        other => panic!("expected kv, got {other:?}"),
    }
}

fn status(name: &str, role: &str, term: u64) -> Status {
    Status {
        name: name.to_string(),
        id: format!("{:x}", name.len() * 17),
        role: serde_json::from_value(serde_json::json!(role)).expect("a role"),
        term,
        leader: "etcd-0".to_string(),
        leader_id: "33".to_string(),
        commit_index: 42,
        applied_index: 41,
        revision: 7,
        members: Vec::new(),
        membership_hash: "h".to_string(),
        cluster_id: "c".to_string(),
        errors: Vec::new(),
        auth_enabled: Some(false),
        last_log_term: term,
        last_log_index: 42,
    }
}

/// etcdctl's TLS flags, before or after the action, beside a command's own KEY argument; a
/// certificate without its key is a usage error.
#[test]
fn client_commands_take_etcdctls_tls_flags() {
    let (client, action) = kv(&["kv", "--cacert", "ca.pem", "put", "k", "v", "--cert", "c.pem", "--key", "k.pem"]);
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    assert_eq!(
        (path(&client.security.cacert), path(&client.security.cert), path(&client.security.key)),
        (Some("ca.pem".into()), Some("c.pem".into()), Some("k.pem".into()))
    );
    assert!(matches!(action, KvAction::Put { key, .. } if key == "k"));
    let err = parse_fails(&["kv", "get", "k", "--cert", "c.pem"]);
    assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{err}");
}

#[test]
fn kv_put_takes_key_value_and_prev_revision() {
    let (_, action) = kv(&["kv", "put", "k", "v", "--prev-revision", "0"]);
    match action {
        KvAction::Put { key, value, prev_revision, lease } => {
            assert_eq!((key.as_str(), value.to_str(), prev_revision, lease), ("k", Some("v"), Some(0), None));
        }
        other => panic!("{other:?}"),
    }
    let (_, action) = kv(&["kv", "put", "k", "-"]);
    assert!(matches!(action, KvAction::Put { value, .. } if value == "-"));
    parse_fails(&["kv", "put", "k"]);
}

#[test]
fn kv_get_defaults_to_linearizable() {
    let (_, action) = kv(&["kv", "get", "k"]);
    assert!(matches!(action, KvAction::Get { consistency: ConsistencyArg::Linearizable, print_revision: false, .. }));
    let (_, action) = kv(&["kv", "get", "k", "--consistency", "serializable", "--print-revision"]);
    assert!(matches!(action, KvAction::Get { consistency: ConsistencyArg::Serializable, print_revision: true, .. }));
    parse_fails(&["kv", "get", "k", "--consistency", "eventual"]);
}

#[test]
fn kv_del_and_list() {
    let (_, action) = kv(&["kv", "del", "k", "--prev-revision", "9"]);
    assert!(matches!(action, KvAction::Del { key, prev_revision: Some(9) } if key == "k"));
    let (_, action) = kv(&["kv", "list"]);
    assert!(
        matches!(action, KvAction::List { prefix, limit: None, start_after: None, output: OutputFormat::Table, from_key: false, keys_only: false, sort_by: None, order: None, rev: None, consistency: ConsistencyArg::Linearizable } if prefix.is_empty())
    );
    let (_, action) = kv(&["kv", "list", "app/", "--limit", "5", "-w", "json"]);
    assert!(
        matches!(action, KvAction::List { prefix, limit: Some(5), start_after: None, output: OutputFormat::Json, .. } if prefix == "app/")
    );
    let (_, action) = kv(&["kv", "list", "app/", "--start-after", "app/7"]);
    assert!(matches!(action, KvAction::List { start_after: Some(after), .. } if after == "app/7"));
}

#[test]
fn kv_get_and_list_read_the_past_and_list_takes_etcds_range_options() {
    let (_, action) = kv(&["kv", "get", "k", "--rev", "5"]);
    assert!(matches!(action, KvAction::Get { rev: Some(5), .. }));
    let (_, action) = kv(&["kv", "get", "k"]);
    assert!(matches!(action, KvAction::Get { rev: None, .. }));
    parse_fails(&["kv", "get", "k", "--rev", "0"]);
    parse_fails(&["kv", "get", "k", "--rev", "x"]);
    let (_, action) = kv(&[
        "kv",
        "list",
        "app/",
        "--limit",
        "3",
        "--from-key",
        "--keys-only",
        "--sort-by",
        "mod",
        "--order",
        "descend",
        "--rev",
        "4",
        "--consistency",
        "serializable",
    ]);
    assert!(matches!(
        action,
        KvAction::List {
            limit: Some(3),
            from_key: true,
            keys_only: true,
            sort_by: Some(SortByArg::Mod),
            order: Some(OrderArg::Descend),
            rev: Some(4),
            consistency: ConsistencyArg::Serializable,
            ..
        }
    ));
    for target in ["key", "version", "create", "mod", "value"] {
        let (_, action) = kv(&["kv", "list", "--sort-by", target]);
        assert!(matches!(action, KvAction::List { sort_by: Some(_), order: None, .. }), "{target}");
    }
    parse_fails(&["kv", "list", "--order", "ascend"]);
    parse_fails(&["kv", "list", "--sort-by", "size"]);
    parse_fails(&["kv", "list", "--limit", "0"]);
    parse_fails(&["kv", "list", "--limit", "10001"]);
}

#[test]
fn txn_takes_a_file_and_compact_a_revision() {
    match parse(&["txn", "ops.yaml", "--endpoints", "http://a:1"]) {
        Commands::Txn(args) => {
            assert_eq!(args.file, Path::new("ops.yaml"));
            assert_eq!(args.client.endpoints, ["http://a:1"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(parse(&["txn", "-"]), Commands::Txn(args) if args.file == Path::new("-")));
    parse_fails(&["txn"]);
    assert!(matches!(parse(&["compact", "12"]), Commands::Compact(args) if args.revision == 12 && !args.physical));
    assert!(matches!(parse(&["compact", "12", "--physical"]), Commands::Compact(args) if args.physical));
    parse_fails(&["compact"]);
    parse_fails(&["compact", "0"]);
    parse_fails(&["compact", "ten"]);
}

/// A txn file in YAML reads as the same txn as its JSON; a file that is not a txn is a usage
/// error that says which format it was read as.
#[test]
fn a_txn_file_is_json_or_yaml() {
    use crate::base::wire::kv::{CompareResult, CompareTarget, RequestOp};
    let json = r#"{"compare": [{"key": "a", "target": "VALUE", "result": "EQUAL", "value": "10"}],
                   "success": [{"requestPut": {"key": "a", "value": "5"}},
                               {"requestTxn": {"success": [{"requestRange": {"key": "a", "prefix": true}}]}}],
                   "failure": [{"requestRange": {"key": "a"}}]}"#;
    let yaml = r#"
compare:
  - key: a
    target: VALUE
    result: EQUAL
    value: "10"
success:
  - requestPut: {key: a, value: "5"}
  - requestTxn:
      success:
        - requestRange: {key: a, prefix: true}
failure:
  - requestRange:
      key: a
"#;
    let from_json = super::txn::parse_txn(json).expect("JSON");
    let from_yaml = super::txn::parse_txn(yaml).expect("YAML");
    assert_eq!(from_json, from_yaml);
    let unquoted = super::txn::parse_txn(&yaml.replace("\"10\"", "10").replace("\"5\"", "5")).expect("YAML");
    assert_eq!(unquoted, from_json, "plain scalars are strings where a string is expected");
    assert_eq!(
        (from_json.compare[0].target, from_json.compare[0].result),
        (CompareTarget::Value, CompareResult::Equal)
    );
    assert!(matches!(&from_json.success[1], RequestOp::RequestTxn(t) if t.success.len() == 1));
    match super::txn::parse_txn(r#"{"succes": []}"#) {
        Err(CliError::Usage(message)) => assert!(message.contains("JSON") && message.contains("succes"), "{message}"),
        other => panic!("{other:?}"),
    }
    match super::txn::parse_txn(
        "success:
  - requestPot: {key: a}
",
    ) {
        Err(CliError::Usage(message)) => assert!(message.contains("YAML"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn endpoints_come_from_the_flag_before_or_after_the_action() {
    let (client, _) = kv(&["kv", "--endpoints", "http://a:1,http://b:2", "get", "k", "--timeout-ms", "250"]);
    assert_eq!(client.endpoints, ["http://a:1", "http://b:2"]);
    assert_eq!(client.timeout_ms, 250);
    let (client, _) = kv(&["kv", "get", "k", "--endpoints", "http://c:3"]);
    assert_eq!(client.endpoints, ["http://c:3"]);
    parse_fails(&["kv", "get", "k", "--timeout-ms", "0"]);
}

/// The only test that touches KUBERAFT_ENDPOINTS (tests run in parallel; every other test that
/// looks at endpoints passes --endpoints, which wins over the environment).
#[test]
fn endpoints_default_to_localhost_and_come_from_kuberaft_endpoints() {
    std::env::remove_var(ENDPOINTS_ENV);
    let (client, _) = kv(&["kv", "get", "k"]);
    assert_eq!(client.endpoints, ["http://127.0.0.1:2379"]);
    assert_eq!(client.timeout_ms, 5000);

    std::env::set_var(ENDPOINTS_ENV, "http://x:2379,http://y:2379");
    let (from_env, _) = kv(&["kv", "get", "k"]);
    let (from_flag, _) = kv(&["kv", "get", "k", "--endpoints", "http://z:2379"]);
    let member_env = match parse(&["member", "list"]) {
        Commands::Member(command) => command.client.endpoints,
        other => panic!("{other:?}"),
    };
    std::env::remove_var(ENDPOINTS_ENV);
    assert_eq!(from_env.endpoints, ["http://x:2379", "http://y:2379"]);
    assert_eq!(member_env, ["http://x:2379", "http://y:2379"]);
    assert_eq!(from_flag.endpoints, ["http://z:2379"]);
}

#[test]
fn empty_entries_in_the_endpoint_list_are_ignored_and_bad_ones_are_usage_errors() {
    let (client, _) = kv(&["kv", "get", "k", "--endpoints", "http://a:1,,http://b:2,"]);
    assert_eq!(client.client().expect("valid").endpoints(), ["http://a:1", "http://b:2"]);
    let (client, _) = kv(&["kv", "get", "k", "--endpoints", "a:1"]);
    assert!(matches!(client.client(), Err(CliError::Usage(_))));
}

#[test]
fn member_commands_take_hex_ids() {
    match parse(&["member", "list", "-w", "json"]) {
        Commands::Member(command) => {
            assert!(matches!(command.action, MemberAction::List { output: OutputFormat::Json }))
        }
        other => panic!("{other:?}"),
    }
    match parse(&[
        "member",
        "add",
        "etcd-3",
        "--peer-url",
        "http://p:2380",
        "--client-url",
        "http://c:2379",
        "--learner",
    ]) {
        Commands::Member(command) => match command.action {
            MemberAction::Add { name, peer_url, client_url, learner } => {
                assert_eq!(
                    (name.as_str(), peer_url.as_str(), client_url.as_str(), learner),
                    ("etcd-3", "http://p:2380", "http://c:2379", true)
                );
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    match parse(&["member", "promote", "1a2b"]) {
        Commands::Member(command) => assert!(matches!(command.action, MemberAction::Promote { id: 0x1a2b })),
        other => panic!("{other:?}"),
    }
    match parse(&["member", "remove", "0xff"]) {
        Commands::Member(command) => assert!(matches!(command.action, MemberAction::Remove { id: 0xff })),
        other => panic!("{other:?}"),
    }
    parse_fails(&["member", "remove", "zz"]);
    parse_fails(&["member", "remove", "0"]);
    parse_fails(&["member", "add", "etcd-3", "--peer-url", "http://p:2380"]);
}

#[test]
fn endpoint_status_leader_transfer_and_version() {
    match parse(&["endpoint", "status", "-w", "json"]) {
        Commands::Endpoint(command) => {
            assert!(matches!(command.action, super::endpoint::EndpointAction::Status { output: OutputFormat::Json }));
        }
        other => panic!("{other:?}"),
    }
    match parse(&["leader", "transfer", "--to", "beef"]) {
        Commands::Leader(command) => assert!(matches!(command.action, LeaderAction::Transfer { to: Some(0xbeef) })),
        other => panic!("{other:?}"),
    }
    match parse(&["leader", "transfer"]) {
        Commands::Leader(command) => assert!(matches!(command.action, LeaderAction::Transfer { to: None })),
        other => panic!("{other:?}"),
    }
    assert!(matches!(parse(&["version"]), Commands::Version));
    assert!(matches!(parse(&["crd"]), Commands::Crd(CrdArgs { name: None })));
    assert!(
        matches!(parse(&["crd", "raftsnapshots"]), Commands::Crd(CrdArgs { name: Some(n) }) if n == "raftsnapshots")
    );
    parse_fails(&["endpoint", "status", "-w", "yaml"]);
    parse_fails(&["crd", "raftnothings"]);
}

#[test]
fn node_flags_reach_node_args() {
    let args = [
        "node",
        "--name",
        "etcd-0",
        "--advertise-client-url",
        "http://127.0.0.1:2379",
        "--advertise-peer-url",
        "http://127.0.0.1:2380",
        "--initial-cluster",
        "etcd-0=http://127.0.0.1:2380",
    ];
    match parse(&args) {
        Commands::Node(node) => {
            assert_eq!(node.name, "etcd-0");
            assert_eq!(node.initial_cluster, "etcd-0=http://127.0.0.1:2380");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    let usage: CliError =
        ClientError::InvalidEndpoint { endpoint: "x".to_string(), reason: "no scheme".to_string() }.into();
    assert_eq!(usage.exit_code(), 2);
    let failed: CliError = ClientError::Unavailable { attempts: vec!["a: refused".to_string()] }.into();
    assert_eq!(failed.exit_code(), 1);
    assert!(failed.message().contains("a: refused"));
}

#[test]
fn dev_defaults_and_replica_bounds() {
    match parse(&["dev"]) {
        Commands::Dev(args) => {
            assert_eq!((args.replicas, args.base_port, args.data_dir, args.log_dir), (3, 2379, None, None));
        }
        other => panic!("{other:?}"),
    }
    match parse(&["dev", "--replicas", "9", "--data-dir", "/tmp/d", "--base-port", "3000", "--log-dir", "/tmp/l"]) {
        Commands::Dev(args) => {
            assert_eq!(args.replicas, 9);
            assert_eq!(args.data_dir.as_deref(), Some(Path::new("/tmp/d")));
            assert_eq!(dev::validate(&args).expect("valid").len(), 9);
        }
        other => panic!("{other:?}"),
    }
    for bad in ["0", "10", "-1", "three"] {
        let err = parse_fails(&["dev", "--replicas", bad]);
        assert_eq!(err.exit_code(), 2, "{bad}");
    }
}

#[test]
fn dev_refuses_ports_past_the_end_of_the_range() {
    assert!(matches!(dev::plan_members(3, 65_520), Err(CliError::Usage(_))));
    assert!(matches!(dev::plan_members(1, 65_535), Err(CliError::Usage(_))));
    assert!(matches!(dev::plan_members(1, 0), Err(CliError::Usage(_))));
    assert!(matches!(dev::plan_members(0, 2379), Err(CliError::Usage(_))));
    assert!(matches!(dev::plan_members(10, 2379), Err(CliError::Usage(_))));
    let last = dev::plan_members(1, 65_534).expect("client 65534, peer 65535");
    assert_eq!((last[0].client_port, last[0].peer_port), (65_534, 65_535));
}

#[test]
fn dev_members_get_etcd_names_and_ports_ten_apart() {
    let members = dev::plan_members(3, 2379).expect("valid");
    let ports: Vec<(&str, u16, u16)> = members.iter().map(|m| (m.name.as_str(), m.client_port, m.peer_port)).collect();
    assert_eq!(ports, [("etcd-0", 2379, 2380), ("etcd-1", 2389, 2390), ("etcd-2", 2399, 2400)]);
    assert_eq!(
        dev::initial_cluster(&members),
        "etcd-0=http://127.0.0.1:2380,etcd-1=http://127.0.0.1:2390,etcd-2=http://127.0.0.1:2400"
    );
    assert_eq!(dev::endpoints(&members), ["http://127.0.0.1:2379", "http://127.0.0.1:2389", "http://127.0.0.1:2399"]);
}

#[test]
fn dev_node_arguments_parse_as_a_node_command() {
    let members = dev::plan_members(2, 4000).expect("valid");
    let cluster = dev::initial_cluster(&members);
    let args = dev::node_args(&members[1], &cluster, Path::new("/tmp/dev/etcd-1"), None);
    let cli = Cli::try_parse_from(std::iter::once("kuberaft".into()).chain(args)).expect("node arguments parse");
    match cli.command {
        Commands::Node(node) => {
            assert_eq!(node.name, "etcd-1");
            assert_eq!(node.data_dir, Path::new("/tmp/dev/etcd-1"));
            assert_eq!(node.listen_client_url, "http://127.0.0.1:4010");
            assert_eq!(node.advertise_client_url, "http://127.0.0.1:4010");
            assert_eq!(node.listen_peer_url, "http://127.0.0.1:4011");
            assert_eq!(node.advertise_peer_url, "http://127.0.0.1:4011");
            assert_eq!(node.initial_cluster, cluster);
            assert_eq!(node.initial_cluster_state, crate::process::args::ClusterState::New);
            assert_eq!(node.initial_cluster_token, dev::DEV_CLUSTER_TOKEN);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn dev_banner_names_the_endpoints_to_export() {
    let members = dev::plan_members(2, 2379).expect("valid");
    let banner = dev::banner(&members, "/tmp/x (temporary)", Path::new("/tmp/x"), None);
    assert!(banner.contains("export KUBERAFT_ENDPOINTS=http://127.0.0.1:2379,http://127.0.0.1:2389\n"), "{banner}");
    assert!(banner.contains("kuberaft kv put hello world"), "{banner}");
    let second = banner.lines().nth(1).unwrap_or_default();
    assert_eq!(second, "live view: http://127.0.0.1:2379/ui", "the view's URL at the top: {banner}");
}

/// `dev --open`: `$BROWSER` first (each ':'-separated command; `%s` is the URL, else the URL
/// is appended), then the platform's opener.
#[test]
fn dev_open_tries_browser_then_the_platform_opener() {
    let url = "http://127.0.0.1:2379/ui";
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    assert_eq!(dev::browser_commands(url, None), [vec![opener.to_string(), url.to_string()]]);
    assert_eq!(
        dev::browser_commands(url, Some("firefox --new-tab:chromium %s --incognito")),
        [
            vec!["firefox".to_string(), "--new-tab".into(), url.into()],
            vec!["chromium".to_string(), url.into(), "--incognito".into()],
            vec![opener.to_string(), url.to_string()],
        ]
    );
}

/// `dev --tls`: https:// URLs, each member's own certificate on both ports with the dev CA
/// required of clients and peers, and a banner that says how a client connects.
#[test]
fn dev_tls_members_get_their_certificates_and_the_banner_says_how_to_connect() {
    let dir = tempfile::tempdir().expect("dir");
    let args = DevArgs { replicas: 2, data_dir: None, base_port: 4000, log_dir: None, tls: true, open: false };
    let members = dev::validate(&args).expect("valid");
    let pki = dev::DevPki::mint(&dir.path().join("pki"), &members).expect("mint");
    let cluster = dev::initial_cluster(&members);
    assert_eq!(cluster, "etcd-0=https://127.0.0.1:4001,etcd-1=https://127.0.0.1:4011");
    let args = dev::node_args(&members[1], &cluster, Path::new("/tmp/dev/etcd-1"), Some(&pki));
    let cli = Cli::try_parse_from(std::iter::once("kuberaft".into()).chain(args)).expect("node arguments parse");
    let Commands::Node(node) = cli.command else { panic!("a node command") };
    assert_eq!(node.listen_client_url, "https://127.0.0.1:4010");
    assert_eq!(node.cert_file.as_deref(), Some(pki.cert("etcd-1").as_path()));
    assert_eq!(node.peer_key_file.as_deref(), Some(pki.key("etcd-1").as_path()));
    assert_eq!(node.trusted_ca_file.as_deref(), Some(pki.ca().as_path()));
    assert!(node.client_cert_auth && node.peer_client_cert_auth);
    for file in [pki.ca(), pki.cert("etcd-1"), pki.key("etcd-1"), pki.cert(dev::DEV_CLIENT)] {
        assert!(file.is_file(), "{} was written", file.display());
    }
    let banner = dev::banner(&members, "d", Path::new("/tmp/x"), Some(&pki));
    let ca = pki.ca().display().to_string();
    assert!(banner.contains(&format!("export KUBERAFT_CACERT={ca} KUBERAFT_CERT=")), "{banner}");
    assert!(banner.contains(&format!("--cacert={ca}")), "{banner}");
}

/// A kept data directory resumes only as it ran: with or without `--tls`.
#[test]
fn dev_resumes_a_data_directory_only_as_it_ran() {
    let dir = tempfile::tempdir().expect("dir");
    let plain = dev::plan_members(1, 4000).expect("valid");
    let tls: Vec<DevMember> = plain.iter().map(|m| DevMember { tls: true, ..m.clone() }).collect();
    assert!(dev::check_resume(dir.path(), &tls).is_ok(), "a new directory takes either");
    std::fs::create_dir_all(dir.path().join("etcd-0")).expect("dir");
    std::fs::write(dir.path().join("etcd-0").join("member.json"), "{}").expect("write");
    assert!(dev::check_resume(dir.path(), &plain).is_ok());
    let e = dev::check_resume(dir.path(), &tls).expect_err("ran without --tls");
    assert!(e.message().contains("ran without --tls"), "{}", e.message());
    std::fs::create_dir_all(dir.path().join("pki")).expect("dir");
    assert!(dev::check_resume(dir.path(), &tls).is_ok());
    let e = dev::check_resume(dir.path(), &plain).expect_err("ran with --tls");
    assert!(e.message().contains("ran with --tls"), "{}", e.message());
}

#[test]
fn dev_table_marks_members_that_do_not_answer_as_down() {
    let members: Vec<DevMember> = dev::plan_members(3, 2379).expect("valid");
    let views = vec![
        MemberView::Up(Box::new(status("etcd-0", "leader", 2))),
        MemberView::Unreachable("not answering (yet)".to_string()),
        MemberView::Exited("exited (exit status: 1)".to_string()),
    ];
    let expected = "\
MEMBER   ROLE     TERM   LEADER   COMMIT   APPLIED   NOTE
etcd-0   leader   2      etcd-0   42       41
etcd-1   down     -      -        -        -         not answering (yet)
etcd-2   down     -      -        -        -         exited (exit status: 1)
";
    assert_eq!(dev::status_table(&members, &views), expected);
    assert_eq!(
        dev::status_line(Duration::from_secs(12), &members, &views),
        "[   12s] etcd-0 leader term=2 commit=42 applied=41 | etcd-1 down | etcd-2 down\n"
    );
}

#[test]
fn log_tail_keeps_the_last_lines() {
    assert_eq!(dev::tail_lines("a\nb\nc\n", 2), ["b", "c"]);
    assert_eq!(dev::tail_lines("a", 5), ["a"]);
    assert!(dev::tail_lines("", 5).is_empty());
}

#[test]
fn endpoint_status_table_has_a_row_per_endpoint_including_failures() {
    let statuses = vec![
        ("http://127.0.0.1:2379".to_string(), Ok(status("etcd-0", "leader", 3))),
        (
            "http://127.0.0.1:2389".to_string(),
            Err(ClientError::Unavailable {
                attempts: vec!["http://127.0.0.1:2389: cannot connect: Connection refused".to_string()],
            }),
        ),
        ("http://127.0.0.1:2399".to_string(), Ok(status("etcd-22", "follower", 3))),
    ];
    let expected = "\
ENDPOINT                NAME      ID   ROLE       TERM   LEADER   COMMIT   APPLIED   REVISION   ERRORS
http://127.0.0.1:2379   etcd-0    66   leader     3      etcd-0   42       41        7
http://127.0.0.1:2389   -         -    -          -      -        -        -         -          cannot connect: Connection refused
http://127.0.0.1:2399   etcd-22   77   follower   3      etcd-0   42       41        7
";
    assert_eq!(status_table(&statuses), expected);

    let json = serde_json::to_value(status_reports(&statuses)).expect("serialize");
    let reports = json.as_array().expect("an array");
    assert_eq!(reports.len(), 3);
    assert_eq!(reports[0]["endpoint"], "http://127.0.0.1:2379");
    assert_eq!(reports[0]["status"]["commitIndex"], 42);
    assert!(reports[0].get("error").is_none());
    assert_eq!(reports[1]["error"], "cannot connect: Connection refused");
    assert!(reports[1].get("status").is_none());
}

#[test]
fn member_table_shows_voters_and_learners() {
    let member = |id: &str, name: &str, voter: bool| Member {
        id: id.to_string(),
        name: name.to_string(),
        peer_url: format!("http://{name}:2380"),
        client_url: format!("http://{name}:2379"),
        voter,
    };
    let members = MembersResponse { members: vec![member("a1", "etcd-0", true), member("b2", "etcd-1", false)] };
    let expected = "\
ID   NAME     ROLE      PEER URL             CLIENT URL
a1   etcd-0   voter     http://etcd-0:2380   http://etcd-0:2379
b2   etcd-1   learner   http://etcd-1:2380   http://etcd-1:2379
";
    assert_eq!(members_table(&members), expected);
}

#[test]
fn list_table_decodes_values_and_hides_binary() {
    let item = |key: &str, value: &[u8]| KvItem {
        key: key.to_string(),
        key_base64: None,
        value: encode_base64(value),
        create_revision: 2,
        mod_revision: 3,
        version: 1,
    };
    let listed = ListResponse {
        revision: 3,
        kvs: vec![item("a", b"hello"), item("b", &[0, 159, 146, 150])],
        more: false,
        count: None,
    };
    let expected = "\
KEY   VALUE       CREATE   MOD   VERSION
a     hello       2        3     1
b     <4 bytes>   2        3     1
";
    assert_eq!(list_table(&listed), expected);
}

#[test]
fn keys_only_table_has_no_value_column() {
    let listed = ListResponse {
        revision: 3,
        kvs: vec![KvItem {
            key: "a".to_string(),
            key_base64: None,
            value: String::new(),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
        }],
        more: false,
        count: Some(1),
    };
    let expected = "\
KEY   CREATE   MOD   VERSION
a     2        3     2
";
    assert_eq!(keys_table(&listed), expected);
}

const ONE_CLUSTER: &str =
    "apiVersion: kuberaft.io/v1alpha1\nkind: RaftCluster\nmetadata:\n  name: etcd\nspec:\n  replicas: 3\n";

#[test]
fn render_reads_every_document_skips_empty_ones_and_emits_yaml_that_reads_back() {
    let text = format!("---\n{ONE_CLUSTER}---\n---\n{}", ONE_CLUSTER.replace("name: etcd", "name: other"));
    let out = super::render::render(&text, "ns").expect("two clusters render");
    let objects: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&out).expect("the rendered objects are YAML documents");
    let names = |kind: &str| -> Vec<&str> {
        objects.iter().filter(|o| o["kind"] == kind).filter_map(|o| o["metadata"]["name"].as_str()).collect()
    };
    assert_eq!(names("StatefulSet"), ["etcd", "other"], "{out}");
    assert!(objects.iter().all(|o| o["metadata"]["namespace"] == "ns"), "{out}");
}

#[test]
fn render_refuses_other_kinds_and_bad_yaml_naming_the_document() {
    let other_kind = format!("{ONE_CLUSTER}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n");
    match super::render::render(&other_kind, "ns") {
        Err(CliError::Usage(message)) => {
            assert!(message.starts_with("document 2:") && message.contains("ConfigMap"), "{message}")
        }
        other => panic!("a ConfigMap must be refused: {other:?}"),
    }
    match super::render::render(&format!("{ONE_CLUSTER}---\nkind: [RaftCluster\n"), "ns") {
        Err(CliError::Usage(message)) => assert!(message.starts_with("document 2: not YAML"), "{message}"),
        other => panic!("bad YAML must be refused: {other:?}"),
    }
    assert!(matches!(super::render::render("---\n---\n", "ns"), Err(CliError::Usage(_))), "no RaftCluster at all");
}

#[test]
fn the_paging_hint_continues_after_the_last_key_only_in_ascending_key_order() {
    let continues = "(more keys follow; continue with --start-after 'app/7')\n";
    assert_eq!(more_hint(None, None, "app/7"), continues);
    assert_eq!(more_hint(Some(SortByArg::Key), Some(OrderArg::Ascend), "app/7"), continues);
    let no_key = "(more keys follow; raise --limit to see them)\n";
    assert_eq!(more_hint(None, Some(OrderArg::Descend), "app/7"), no_key, "descending: the rest is before app/7");
    assert_eq!(more_hint(Some(SortByArg::Key), Some(OrderArg::Descend), "app/7"), no_key);
    assert_eq!(more_hint(Some(SortByArg::Value), None, "app/7"), no_key);
}
