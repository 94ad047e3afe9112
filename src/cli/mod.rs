//! The `kuberaft` command line (DESIGN.md §5): clap definitions of every subcommand and the
//! dispatch to them. Client commands (`kv`, `txn`, `compact`, `watch`, `member`, `endpoint`, `leader`) share `ClientArgs`
//! and go through `crate::client`; `node` hands over to `crate::process::run`; `dev` runs a local
//! cluster of node processes. Every failure ends as `error: <message>` on stderr and a non-zero
//! exit code: 2 for usage errors, 1 for everything else.

pub mod backup;
pub mod dev;
pub mod endpoint;
pub mod kubectl;
pub mod kv;
pub mod lease;
pub mod member;
pub mod recipes;
pub mod render;
pub mod snapshot;
pub mod table;
#[cfg(test)]
mod tests;
pub mod txn;
pub mod watch;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::base::wire::{parse_id, DEFAULT_CLIENT_PORT};
use crate::client::{Client, ClientConfig, ClientError, SecurityArgs, DEFAULT_REQUEST_TIMEOUT};

pub use crate::base::output::{to_json_line, write_stderr, write_stdout, CliError};
pub use dev::DevArgs;
pub use endpoint::EndpointCommand;
pub use kv::KvCommand;
pub use member::{LeaderCommand, MemberCommand};

/// The environment variable that holds the default endpoint list of client commands.
pub const ENDPOINTS_ENV: &str = "KUBERAFT_ENDPOINTS";
pub use crate::client::{CACERT_ENV, CERT_ENV, KEY_ENV, PASSWORD_ENV, USER_ENV};

#[derive(Debug, Parser)]
#[command(name = "kuberaft", version, about = "A Raft-replicated key-value store and its Kubernetes operator")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Run a Raft member.
    Node(Box<crate::process::NodeArgs>),
    /// Run a local cluster of real members on 127.0.0.1, with a live status; Ctrl-C stops it.
    Dev(DevArgs),
    /// Read and write keys.
    Kv(KvCommand),
    /// Apply an etcd transaction (compares, then success or failure ops) from a JSON or YAML file ("-": stdin).
    Txn(txn::TxnArgs),
    /// Hold a lock while a command runs (etcd's lock recipe: one lease-bound key per contender).
    Lock(recipes::LockArgs),
    /// Campaign for leadership of NAME with PROPOSAL and hold it, or --listen to the leader.
    Elect(recipes::ElectArgs),
    /// Grant, revoke, keep alive and list leases (keys attached to a lease go with it).
    Lease(lease::LeaseCommand),
    /// Print every change of a key or prefix as it happens, from now or from a past revision.
    Watch(watch::WatchArgs),
    /// Discard the key history below a store revision.
    Compact(txn::CompactArgs),
    /// List and change the cluster's members.
    Member(MemberCommand),
    /// Ask each endpoint about itself.
    Endpoint(EndpointCommand),
    /// Move leadership.
    Leader(LeaderCommand),
    /// Save a member's state into a file, make new members' data from one, or say what one holds.
    Snapshot(snapshot::SnapshotCommand),
    /// Backups in a directory: take one (pruning the oldest), or delete one (the operator's Jobs run these).
    Backup(backup::BackupCommand),
    /// Print the CustomResourceDefinitions (RaftCluster, RaftSnapshot) as YAML (`kuberaft crd | kubectl apply -f -`).
    Crd(CrdArgs),
    /// Print the objects the operator would create for the RaftClusters in a file (like `helm template`).
    Render(render::RenderArgs),
    /// Run the operator: reconcile RaftCluster resources into running clusters.
    Operator(crate::operator::controller::OperatorArgs),
    /// The kubectl plugin (`kubectl raft ...`): RaftClusters through the Kubernetes API.
    Kubectl(kubectl::KubectlCommand),
    /// Load a kuberaft (or etcd) cluster and report throughput and latency percentiles.
    Bench(crate::bench::BenchArgs),
    /// Print the version.
    Version,
}

/// The flags every client command takes. Global, so they may come before or after the action
/// (`kuberaft kv --endpoints X get k` and `kuberaft kv get k --endpoints X`).
#[derive(Clone, Debug, Args)]
pub struct ClientArgs {
    /// Client URLs of members, comma-separated; any subset of the cluster will do.
    #[arg(long, global = true, env = ENDPOINTS_ENV, value_delimiter = ',', default_values_t = [default_endpoint()])]
    pub endpoints: Vec<String>,
    /// Timeout of one request to one endpoint, in milliseconds (failover may try a few).
    #[arg(
        long,
        global = true,
        env = "KUBERAFT_TIMEOUT_MS",
        default_value_t = DEFAULT_REQUEST_TIMEOUT.as_millis() as u64,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub security: SecurityArgs,
}

impl ClientArgs {
    pub fn client(&self) -> Result<Client, CliError> {
        // "a,b," and "a,,b" leave empty entries; they are typos, not endpoints.
        let endpoints: Vec<String> = self.endpoints.iter().filter(|e| !e.trim().is_empty()).cloned().collect();
        let config = ClientConfig {
            tls: self.security.tls(),
            user: self.security.credentials()?,
            ..ClientConfig::with_request_timeout(Duration::from_millis(self.timeout_ms))
        };
        Ok(Client::with_config(endpoints, config)?)
    }
}

fn default_endpoint() -> String {
    format!("http://127.0.0.1:{DEFAULT_CLIENT_PORT}")
}

/// `-w table|json`, as etcdctl spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

/// Member ids on the command line are hex, as `member list` prints them.
pub fn parse_member_id(text: &str) -> Result<u64, String> {
    parse_id(text.trim().trim_start_matches("0x"))
        .ok_or_else(|| format!("'{text}' is not a member id (a non-zero hex number, as `member list` prints)"))
}

impl From<ClientError> for CliError {
    fn from(err: ClientError) -> Self {
        match err {
            ClientError::InvalidEndpoint { .. } | ClientError::InvalidKey(_) => CliError::Usage(err.to_string()),
            other => CliError::Failed(other.to_string()),
        }
    }
}

/// Runs a parsed command line to its exit code. Blocking: client commands and `dev` run on a
/// current-thread runtime built here; `node` builds its own.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Commands::Node(args) => return crate::process::run(*args),
        Commands::Version => write_stdout(format!("kuberaft {}\n", env!("CARGO_PKG_VERSION")).as_bytes()),
        Commands::Crd(args) => print_crd(&args),
        Commands::Render(args) => render::run(args),
        Commands::Bench(args) => block_on_multi(crate::bench::run(args)),
        Commands::Operator(args) => return crate::operator::controller::run(args),
        // `dev` spawns its children from this (the main) thread; see `dev::spawn_member`.
        Commands::Dev(args) => block_on(dev::run(args)),
        Commands::Kv(command) => block_on(kv::run(command)),
        Commands::Txn(args) => block_on(txn::run_txn(args)),
        Commands::Compact(args) => block_on(txn::run_compact(args)),
        Commands::Watch(args) => block_on(watch::run(args)),
        Commands::Lease(command) => block_on(lease::run(command)),
        Commands::Lock(args) => block_on(recipes::run_lock(args)),
        Commands::Elect(args) => block_on(recipes::run_elect(args)),
        Commands::Member(command) => block_on(member::run_member(command)),
        Commands::Endpoint(command) => block_on(endpoint::run(command)),
        Commands::Leader(command) => block_on(member::run_leader(command)),
        Commands::Snapshot(command) => block_on(snapshot::run(command)),
        Commands::Backup(command) => block_on(backup::run(command)),
        Commands::Kubectl(command) => block_on(kubectl::run(command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Nothing useful is left to do if stderr is gone too.
            let _ = writeln!(std::io::stderr(), "error: {}", err.message());
            ExitCode::from(err.exit_code())
        }
    }
}

/// `kuberaft crd [NAME]`.
#[derive(Clone, Debug, clap::Args)]
pub struct CrdArgs {
    /// Only this CRD, by its plural: raftclusters or raftsnapshots (every one when not given).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(crate::operator::crd::CRD_NAMES))]
    pub name: Option<String>,
}

fn print_crd(args: &CrdArgs) -> Result<(), CliError> {
    let names: Vec<&str> = match &args.name {
        Some(name) => vec![name.as_str()],
        None => crate::operator::crd::CRD_NAMES.to_vec(),
    };
    let files: Result<Vec<String>, String> = names.into_iter().map(crate::operator::crd::crd_file).collect();
    let yaml = files.map_err(CliError::Failed)?.join("---\n");
    write_stdout(yaml.as_bytes())
}

/// Like `block_on`, on two worker threads: the benchmark's workers must not share one.
fn block_on_multi<F: std::future::Future<Output = Result<(), CliError>>>(future: F) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|err| CliError::Failed(format!("cannot start the async runtime: {err}")))?;
    runtime.block_on(future)
}

fn block_on<F: std::future::Future<Output = Result<(), CliError>>>(future: F) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| CliError::Failed(format!("cannot start the async runtime: {err}")))?;
    runtime.block_on(future)
}
