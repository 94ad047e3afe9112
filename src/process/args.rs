//! The flags of `kuberaft node` (DESIGN.md §3). Each is also read from the environment as
//! `KUBERAFT_<FLAG_IN_CAPS>`, so a StatefulSet can set them from a ConfigMap.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::base::logging::LogFormat;
use crate::node::compactor::CompactionMode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClusterState {
    /// Bootstrap a new cluster from `--initial-cluster`.
    New,
    /// Join a running cluster that already added this member.
    Existing,
}

#[derive(Clone, Debug, Args)]
pub struct NodeArgs {
    /// Member name (the pod name), unique in the cluster.
    #[arg(long, env = "KUBERAFT_NAME")]
    pub name: String,
    /// Durable state; one directory per member.
    #[arg(long, env = "KUBERAFT_DATA_DIR", default_value = "/var/lib/kuberaft")]
    pub data_dir: PathBuf,
    #[arg(long, env = "KUBERAFT_LISTEN_CLIENT_URL", default_value = "http://0.0.0.0:2379")]
    pub listen_client_url: String,
    #[arg(long, env = "KUBERAFT_LISTEN_PEER_URL", default_value = "http://0.0.0.0:2380")]
    pub listen_peer_url: String,
    /// Plain HTTP listeners (comma-separated URLs) serving only /healthz, /readyz and /metrics,
    /// for probes and Prometheus when the client port requires certificates (etcd's flag).
    #[arg(long, env = "KUBERAFT_LISTEN_METRICS_URLS", value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,
    /// The client URL other members and clients use to reach this member.
    #[arg(long, env = "KUBERAFT_ADVERTISE_CLIENT_URL")]
    pub advertise_client_url: String,
    /// The peer URL other members use to reach this member.
    #[arg(long, env = "KUBERAFT_ADVERTISE_PEER_URL")]
    pub advertise_peer_url: String,
    /// `name=peerURL,...` for every initial member (this one included).
    #[arg(long, env = "KUBERAFT_INITIAL_CLUSTER")]
    pub initial_cluster: String,
    #[arg(long, env = "KUBERAFT_INITIAL_CLUSTER_STATE", value_enum, default_value = "new")]
    pub initial_cluster_state: ClusterState,
    /// etcd's `--force-new-cluster`, to recover a cluster whose majority is lost for good: with
    /// data, this member starts as the only member of its cluster, keeping its data and id
    /// (every other member is removed, DESIGN.md §2). Start it once so, then without the flag:
    /// members added later are removed again by every start with it. Without data it does
    /// nothing (as in etcd).
    #[arg(long, env = "KUBERAFT_FORCE_NEW_CLUSTER", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub force_new_cluster: bool,
    /// A quorum-loss recovery, `ID:SURVIVOR`, as the operator sets it for every member
    /// (DESIGN.md §6): once per data directory and ID, the member named SURVIVOR starts as with
    /// `--force-new-cluster`, and every other member sets its data aside (renamed to
    /// `<data-dir>.before-recovery-ID`, never read again) and starts empty, to join again as a
    /// new learner. A data directory that went through recovery ID starts as usual.
    #[arg(long, env = "KUBERAFT_QUORUM_RECOVERY", default_value = "")]
    pub quorum_recovery: String,
    /// Part of the cluster id; clusters with different tokens never talk to each other.
    #[arg(long, env = "KUBERAFT_INITIAL_CLUSTER_TOKEN", default_value = "etcd")]
    pub initial_cluster_token: String,
    /// Election timeout range in milliseconds, `MIN-MAX`.
    #[arg(long, env = "KUBERAFT_ELECTION_TIMEOUT_MS", default_value = "150-300")]
    pub election_timeout_ms: String,
    #[arg(long, env = "KUBERAFT_HEARTBEAT_INTERVAL_MS", default_value_t = 50)]
    pub heartbeat_interval_ms: u64,
    /// Largest accepted value.
    #[arg(long, env = "KUBERAFT_MAX_VALUE_BYTES", default_value_t = crate::base::wire::DEFAULT_MAX_VALUE_BYTES)]
    pub max_value_bytes: usize,
    /// Take a snapshot and compact the log after this many applied entries (or sooner, once those
    /// entries hold 64 MiB).
    #[arg(long, env = "KUBERAFT_SNAPSHOT_THRESHOLD", default_value_t = 10_000)]
    pub snapshot_threshold: u64,
    /// Send Raft messages to each peer on two long-lived streams (DESIGN.md §3); `false` posts
    /// one request per batch, each waiting for its answer, as kuberaft did before: to compare
    /// the two, and a way back should something between the members not pass streams.
    #[arg(long, env = "KUBERAFT_PEER_STREAMS", num_args = 0..=1, default_value_t = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub peer_streams: bool,
    /// etcd's `--auto-compaction-mode`: `periodic` keeps a time span of history, `revision` a
    /// number of revisions (see `--auto-compaction-retention`).
    #[arg(long, env = "KUBERAFT_AUTO_COMPACTION_MODE", value_enum, default_value = "periodic")]
    pub auto_compaction_mode: CompactionMode,
    /// etcd's `--auto-compaction-retention`: a duration (`30m`, `1h`) or a number of hours for
    /// `periodic`, a number of revisions for `revision`; `0` keeps all history. The default keeps
    /// one hour (etcd's default, 0, keeps everything).
    #[arg(long, env = "KUBERAFT_AUTO_COMPACTION_RETENTION", default_value = "1h")]
    pub auto_compaction_retention: String,
    /// etcd's `--experimental-watch-progress-notify-interval`: how often a watch that asked for
    /// progress notifications hears the revision it is at, when it heard nothing else.
    #[arg(long, env = "KUBERAFT_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m")]
    pub experimental_watch_progress_notify_interval: String,
    /// etcd's `--cert-file`: the client port serves HTTPS (and gRPC over TLS) with this
    /// certificate chain (PEM, leaf first); `--advertise-client-url` is then `https://`.
    #[arg(long, env = "KUBERAFT_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// etcd's `--key-file`: the private key of `--cert-file` (PEM).
    #[arg(long, env = "KUBERAFT_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// etcd's `--trusted-ca-file`: the CA clients' certificates must chain to (with
    /// `--client-cert-auth`).
    #[arg(long, env = "KUBERAFT_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// etcd's `--client-cert-auth`: every client must present a certificate from
    /// `--trusted-ca-file`.
    #[arg(long, env = "KUBERAFT_CLIENT_CERT_AUTH", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,
    /// etcd's `--peer-cert-file`: the peer port serves HTTPS with this chain, and this member
    /// presents it when it calls other members; peer URLs are then `https://`.
    #[arg(long, env = "KUBERAFT_PEER_CERT_FILE", requires_all = ["peer_key_file", "peer_trusted_ca_file"])]
    pub peer_cert_file: Option<PathBuf>,
    /// etcd's `--peer-key-file`: the private key of `--peer-cert-file`.
    #[arg(long, env = "KUBERAFT_PEER_KEY_FILE", requires = "peer_cert_file")]
    pub peer_key_file: Option<PathBuf>,
    /// etcd's `--peer-trusted-ca-file`: the cluster's CA. Other members' certificates must chain
    /// to it, when this member calls them and (with `--peer-client-cert-auth`) when they call.
    #[arg(long, env = "KUBERAFT_PEER_TRUSTED_CA_FILE", requires = "peer_cert_file")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// etcd's `--peer-client-cert-auth`: a member that calls must present a certificate from
    /// `--peer-trusted-ca-file` issued for the host of its peer URL in the configuration.
    #[arg(long, env = "KUBERAFT_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set, requires = "peer_cert_file")]
    pub peer_client_cert_auth: bool,
    /// etcd's `--auth-token`: how clients' tokens are made. Only `simple` (etcd's default):
    /// random tokens each member keeps in memory.
    #[arg(long, env = "KUBERAFT_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// etcd's `--auth-token-ttl`: seconds a simple token lives after its last use.
    #[arg(long, env = "KUBERAFT_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// etcd's `--bcrypt-cost`: the cost of the passwords' bcrypt hashes (4 to 31).
    #[arg(long, env = "KUBERAFT_BCRYPT_COST", default_value_t = 10)]
    pub bcrypt_cost: u32,
    #[arg(long, env = "KUBERAFT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// A tracing filter, e.g. `info` or `kuberaft=debug`.
    #[arg(long, env = "KUBERAFT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}
