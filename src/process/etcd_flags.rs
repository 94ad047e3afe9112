//! `kuberaft node` started the way etcd is started (issue 15): etcd's flag names and its
//! `ETCD_*` environment variables are translated into `kuberaft node`'s own flags before they
//! are parsed, so a script or chart that starts etcd can start kuberaft.
//!
//! - etcd's flags that kuberaft has under another name or shape are rewritten: the URL lists
//!   (`--listen-client-urls`, ...) to its one URL each (a list of several is refused: a member
//!   listens on one client and one peer URL), `--election-timeout E` to the range `E-2E` (etcd's
//!   timeouts are randomized in `[E, 2E)`), `--snapshot-count`, `--max-request-bytes`.
//! - etcd's flags with the same name and meaning (`--name`, `--data-dir`, `--initial-cluster*`,
//!   `--auto-compaction-*`, `--log-level`, ...) pass as they are.
//! - `--logger zap` and `--log-outputs stderr` name what kuberaft does anyway, and are accepted.
//! - Every other etcd flag is refused with a message naming it: never ignored.
//! - `ETCD_<FLAG>` variables become the flag when the command line does not give it (as etcd
//!   lets flags override the environment); one for a flag that is refused is refused too; one
//!   that names no etcd flag is warned about, as etcd warns about it.

use std::ffi::OsString;

/// etcd's flags and what they become: `Some(kuberaft's flag)`, or `None` for a flag that passes
/// under its own name.
const TRANSLATED: &[(&str, Option<&str>)] = &[
    ("listen-client-urls", Some("listen-client-url")),
    ("advertise-client-urls", Some("advertise-client-url")),
    ("listen-peer-urls", Some("listen-peer-url")),
    ("initial-advertise-peer-urls", Some("advertise-peer-url")),
    ("heartbeat-interval", Some("heartbeat-interval-ms")),
    ("snapshot-count", Some("snapshot-threshold")),
    ("max-request-bytes", Some("max-value-bytes")),
    ("election-timeout", Some("election-timeout-ms")),
    ("name", None),
    ("data-dir", None),
    ("initial-cluster", None),
    ("initial-cluster-state", None),
    ("initial-cluster-token", None),
    ("auto-compaction-mode", None),
    ("auto-compaction-retention", None),
    ("experimental-watch-progress-notify-interval", None),
    ("log-level", None),
    ("listen-metrics-urls", None),
    ("cert-file", None),
    ("key-file", None),
    ("trusted-ca-file", None),
    ("client-cert-auth", None),
    ("peer-cert-file", None),
    ("peer-key-file", None),
    ("peer-trusted-ca-file", None),
    ("peer-client-cert-auth", None),
    ("auth-token", None),
    ("auth-token-ttl", None),
    ("bcrypt-cost", None),
    ("force-new-cluster", None),
];

/// etcd's flags that are booleans: given alone they mean `true`, and take no value after them.
const BOOLEAN: &[&str] = &["client-cert-auth", "peer-client-cert-auth", "force-new-cluster"];

/// etcd's flags that name what kuberaft does anyway, with the only values that do.
const ACCEPTED: &[(&str, &[&str])] = &[("logger", &["zap"]), ("log-outputs", &["stderr", "default"])];

/// etcd 3.4's other flags: refused by name, with what to do instead when there is something.
const REFUSED: &[(&str, &str)] = &[
    ("quota-backend-bytes", "kuberaft has no backend quota; a full disk raises NOSPACE"),
    ("auto-tls", "give --cert-file and --key-file"),
    ("peer-auto-tls", "give --peer-cert-file, --peer-key-file and --peer-trusted-ca-file"),
    ("discovery", "members are listed with --initial-cluster"),
    ("discovery-srv", "members are listed with --initial-cluster"),
    ("discovery-proxy", "members are listed with --initial-cluster"),
    ("discovery-fallback", "members are listed with --initial-cluster"),
    ("enable-v2", "kuberaft serves etcd's v3 API only"),
    ("enable-pprof", ""),
    ("metrics", ""),
    ("wal-dir", "the log lives in --data-dir"),
    ("max-snapshots", ""),
    ("max-wals", ""),
    ("max-txn-ops", ""),
    ("grpc-keepalive-min-time", ""),
    ("grpc-keepalive-interval", ""),
    ("grpc-keepalive-timeout", ""),
    ("strict-reconfig-check", ""),
    ("pre-vote", "pre-vote is always on"),
    ("proxy", "kuberaft has no proxy mode"),
    ("cors", ""),
    ("host-whitelist", ""),
    ("initial-election-tick-advance", ""),
    ("backend-batch-interval", ""),
    ("backend-batch-limit", ""),
    ("cipher-suites", ""),
    ("client-crl-file", ""),
    ("peer-crl-file", ""),
    ("peer-cert-allowed-cn", ""),
    ("peer-cert-allowed-hostname", ""),
    ("enable-grpc-gateway", "kuberaft's JSON API is its own (DESIGN.md §4)"),
    ("debug", "use --log-level debug"),
    ("log-package-levels", "use --log-level"),
    ("config-file", "give the flags, or ETCD_* variables"),
];

/// The translated command line of `kuberaft node` (anything else passes as it is), and the
/// warnings to log; `Err` names a flag or variable that kuberaft refuses.
pub fn translate(
    argv: Vec<OsString>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Vec<OsString>, Vec<String>), String> {
    if argv.get(1).and_then(|a| a.to_str()) != Some("node") {
        return Ok((argv, Vec::new()));
    }
    let mut out: Vec<OsString> = argv[..2].to_vec();
    let mut warnings = Vec::new();
    let mut given: Vec<String> = Vec::new();
    let mut rest = argv[2..].iter();
    // Bounded by the arguments: each round takes one or two.
    while let Some(arg) = rest.next() {
        let Some(text) = arg.to_str().filter(|t| t.starts_with("--")) else {
            out.push(arg.clone());
            continue;
        };
        let (name, inline) = match text[2..].split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (text[2..].to_string(), None),
        };
        if !is_etcd_flag(&name) {
            out.push(arg.clone());
            given.push(name);
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None if BOOLEAN.contains(&name.as_str()) => "true".to_string(),
            None => match rest.next().and_then(|v| v.to_str()) {
                Some(v) => v.to_string(),
                None => return Err(format!("etcd's flag --{name} needs a value")),
            },
        };
        given.push(canonical(&name).to_string());
        out.extend(flag(&name, &value, &format!("--{name}"))?);
    }
    let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with("ETCD_")).collect();
    env.sort();
    for (var, value) in env {
        let name = var["ETCD_".len()..].to_ascii_lowercase().replace('_', "-");
        if !is_etcd_flag(&name) {
            warnings.push(format!("{var} names no etcd flag kuberaft knows; it is not used (etcd also skips it)"));
            continue;
        }
        if given.iter().any(|g| g == canonical(&name)) {
            continue;
        }
        out.extend(flag(&name, &value, &var)?);
    }
    Ok((out, warnings))
}

fn is_etcd_flag(name: &str) -> bool {
    TRANSLATED.iter().any(|(n, _)| *n == name)
        || ACCEPTED.iter().any(|(n, _)| *n == name)
        || REFUSED.iter().any(|(n, _)| *n == name)
}

/// The kuberaft flag an etcd flag becomes (its own name when it passes as it is).
fn canonical(name: &str) -> &str {
    TRANSLATED.iter().find(|(n, _)| *n == name).and_then(|(_, to)| *to).unwrap_or(name)
}

/// What etcd's flag `name` with `value` (given as `source`) becomes.
fn flag(name: &str, value: &str, source: &str) -> Result<Vec<OsString>, String> {
    if let Some((_, values)) = ACCEPTED.iter().find(|(n, _)| *n == name) {
        return if values.contains(&value) {
            Ok(Vec::new())
        } else {
            Err(format!("{source}={value} is not supported: kuberaft logs to standard error only"))
        };
    }
    if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == name) {
        let why = if why.is_empty() { String::new() } else { format!(" ({why})") };
        return Err(format!("etcd's {source} is not supported by kuberaft{why}; remove it"));
    }
    let to = canonical(name);
    let value = if name.ends_with("-urls") {
        let urls: Vec<&str> = value.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
        match urls.as_slice() {
            [one] => one.to_string(),
            _ => return Err(format!("{source}={value}: kuberaft takes exactly one URL here")),
        }
    } else if name == "election-timeout" {
        let ms: u64 = value.parse().map_err(|_| format!("{source}={value}: not a number of milliseconds"))?;
        format!("{ms}-{}", ms.saturating_mul(2))
    } else {
        value.to_string()
    };
    Ok(vec![OsString::from(format!("--{to}")), OsString::from(value)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn run(list: &[&str], env: &[(&str, &str)]) -> Result<(Vec<String>, Vec<String>), String> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        translate(args(list), env).map(|(a, w)| (a.into_iter().map(|a| a.into_string().unwrap()).collect(), w))
    }

    #[test]
    fn etcds_flags_become_kuberafts() {
        let (got, warnings) = run(
            &[
                "kuberaft",
                "node",
                "--name",
                "etcd-0",
                "--listen-client-urls=http://0.0.0.0:2379",
                "--advertise-client-urls",
                "http://etcd-0.etcd:2379",
                "--listen-peer-urls",
                "http://0.0.0.0:2380",
                "--initial-advertise-peer-urls",
                "http://etcd-0.etcd:2380",
                "--election-timeout",
                "1000",
                "--heartbeat-interval",
                "100",
                "--snapshot-count",
                "5000",
                "--logger",
                "zap",
                "--log-level",
                "info",
            ],
            &[],
        )
        .expect("translates");
        assert_eq!(
            got,
            [
                "kuberaft",
                "node",
                "--name",
                "etcd-0",
                "--listen-client-url",
                "http://0.0.0.0:2379",
                "--advertise-client-url",
                "http://etcd-0.etcd:2379",
                "--listen-peer-url",
                "http://0.0.0.0:2380",
                "--advertise-peer-url",
                "http://etcd-0.etcd:2380",
                "--election-timeout-ms",
                "1000-2000",
                "--heartbeat-interval-ms",
                "100",
                "--snapshot-threshold",
                "5000",
                "--log-level",
                "info",
            ]
        );
        assert!(warnings.is_empty());
        // kuberaft's own flags and other commands pass as they are.
        let own = ["kuberaft", "node", "--listen-client-url", "http://0.0.0.0:2379", "--data-dir", "/d"];
        assert_eq!(run(&own, &[]).unwrap().0, own);
        let other = ["kuberaft", "kv", "get", "--listen-client-urls", "x"];
        assert_eq!(run(&other, &[("ETCD_NAME", "x")]).unwrap().0, other);
    }

    #[test]
    fn etcds_environment_fills_what_the_command_line_does_not_give() {
        let (got, warnings) = run(
            &["kuberaft", "node", "--name", "from-flag"],
            &[
                ("ETCD_NAME", "from-env"),
                ("ETCD_DATA_DIR", "/var/lib/etcd"),
                ("ETCD_LISTEN_CLIENT_URLS", "http://0.0.0.0:2379"),
                ("ETCD_INITIAL_CLUSTER_STATE", "existing"),
                ("ETCD_VOLUME_DIR", "/bitnami"),
                ("ETCDCTL_API", "3"),
            ],
        )
        .expect("translates");
        assert_eq!(
            got,
            [
                "kuberaft",
                "node",
                "--name",
                "from-flag",
                "--data-dir",
                "/var/lib/etcd",
                "--initial-cluster-state",
                "existing",
                "--listen-client-url",
                "http://0.0.0.0:2379",
            ]
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("ETCD_VOLUME_DIR names no etcd flag"), "{warnings:?}");
    }

    #[test]
    fn etcds_tls_and_metrics_flags_pass_and_its_booleans_stand_alone() {
        let (got, _) = run(
            &[
                "kuberaft",
                "node",
                "--cert-file=/tls/c.pem",
                "--client-cert-auth",
                "--peer-client-cert-auth=false",
                "--name",
                "etcd-0",
            ],
            &[
                ("ETCD_PEER_CLIENT_CERT_AUTH", "true"),
                ("ETCD_TRUSTED_CA_FILE", "/tls/ca.pem"),
                ("ETCD_LISTEN_METRICS_URLS", "http://0.0.0.0:2381"),
            ],
        )
        .expect("translates");
        assert_eq!(
            got,
            [
                "kuberaft",
                "node",
                "--cert-file",
                "/tls/c.pem",
                "--client-cert-auth",
                "true",
                "--peer-client-cert-auth",
                "false",
                "--name",
                "etcd-0",
                "--listen-metrics-urls",
                "http://0.0.0.0:2381",
                "--trusted-ca-file",
                "/tls/ca.pem",
            ]
        );
    }

    #[test]
    fn unsupported_etcd_flags_are_refused_by_name() {
        for (list, env, says) in [
            (vec!["--quota-backend-bytes", "8589934592"], vec![], "etcd's --quota-backend-bytes is not supported"),
            (vec!["--enable-v2=true"], vec![], "etcd's --enable-v2 is not supported"),
            (vec![], vec![("ETCD_WAL_DIR", "/wal")], "etcd's ETCD_WAL_DIR is not supported"),
            (vec!["--peer-auto-tls=true"], vec![], "etcd's --peer-auto-tls is not supported"),
            (vec!["--logger", "capnslog"], vec![], "--logger=capnslog is not supported"),
            (
                vec!["--listen-client-urls", "http://127.0.0.1:2379,http://10.0.0.1:2379"],
                vec![],
                "kuberaft takes exactly one URL here",
            ),
            (vec!["--election-timeout", "1s"], vec![], "not a number of milliseconds"),
            (vec!["--snapshot-count"], vec![], "needs a value"),
        ] {
            let mut argv = vec!["kuberaft", "node"];
            argv.extend(list);
            let refused = run(&argv, &env).expect_err("refused");
            assert!(refused.contains(says), "{refused}");
        }
    }
}
