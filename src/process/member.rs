//! `kuberaft node`: a member from its flags, in named steps. [`run`] reads like the list of
//! them; each step says what it decides and fails with a [`StartError`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::runtime::Runtime;
use tokio::sync::watch;

use super::args::{ClusterState, NodeArgs};
use super::error::StartError;
use super::join::{bootstrap_when_unformed, join_existing};
use crate::api::auth::AuthSettings;
use crate::api::server::{client_router, metrics_router, render_error as render_client_error, Api};
use crate::base::ids::{
    cluster_id, host_port, initial_member_id, is_https, parse_initial_cluster, validate_url, IdGenerator, InitialMember,
};
use crate::base::logging::init_logging;
use crate::base::signal::wait_for_signal;
use crate::base::tls::{TlsError, TlsFiles};
use crate::http::client::{Dial, HttpClient};
use crate::http::serve::{serve, PortStats, CLIENT_PORT, METRICS_PORT, PEER_PORT};
use crate::http::tls::{ClientTls, ServerTls};
use crate::node::compactor::{self, Retention};
use crate::node::join::Joiner;
use crate::node::join::{PeerMember, PeerView};
use crate::node::runtime::{input_queue, Input, RaftLoop, INPUT_QUEUE, TICK_MS};
use crate::node::shared::{AddressBook, LoopStatus, Metrics, Shared};
use crate::node::transport::{self, PeerLimits, PeerServer, Transport, MEMBERS_PATH};
use crate::node::watch::WatchHub;
use crate::node::NodeHandle;
use crate::raft::{Config, InitialState, Raft, RawNode, Role};
use crate::store::auth::Tokens;
use crate::store::command::{encode, MemberInfo};
use crate::store::kv::{is_staging_file, staging_path};
use crate::store::{open_data_dir, write_meta, DataDir, DurableState, KvStore, MemberMeta, Storage};

/// The member's tokio runtime: one worker thread for each CPU this process may use, as
/// `std::thread::available_parallelism` counts them (its CPU affinity and its cgroup's CPU quota,
/// so a pod's CPU limit), at least one. The Raft loop and the serving of both ports share these
/// workers; the writer's thread is its own. A member limited to one CPU then runs one worker, not
/// two threads that take turns on it (each hand-over a context switch); one on a machine of its
/// own uses all of it. `TOKIO_WORKER_THREADS` is not read.
fn member_runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(usable_cpus()).enable_all().build()
}

/// The CPUs the calling thread may use, as `available_parallelism` counts them; at least one.
fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Runs a member until SIGTERM/SIGINT. Blocking; builds its own runtime.
pub fn run(args: NodeArgs) -> ExitCode {
    init_logging(args.log_format, &args.log_level);
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn start(mut args: NodeArgs) -> Result<(), StartError> {
    let flags = Flags::check(&args)?;
    let recovery = super::recovery::prepare(&args)?;
    if matches!(recovery, super::recovery::Prepared::Force(_)) {
        args.force_new_cluster = true;
    }
    let runtime = member_runtime().map_err(|e| StartError::from(format!("cannot start the async runtime: {e}")))?;
    let DataDir { storage, durable, meta: stored_meta } = open_storage(&args)?;
    let start = decide_start(&args, &flags, &runtime, &storage, durable, stored_meta.clone())?;
    let storage = record_start(&args, storage, stored_meta.as_ref(), &start)?;
    super::recovery::finish(&args, &recovery)?;
    let mut kv = restore_state_machine(&args, &start.state)?;
    kv.set_tokens(Arc::new(Tokens::new(flags.token_ttl)));
    let cfg = raft_config(start.meta.member_id, &args)?;
    let peer_limits = PeerLimits::new(cfg.max_msg_bytes, args.max_value_bytes);
    let raw = RawNode::new(Raft::new(cfg, start.state).map_err(|e| StartError::from(e.to_string()))?);
    let committed_at_start = raw.raft.commit_index();
    let shared = Arc::new(shared_state(&args, &flags, &start.meta, start.problems, &start.known, &raw, kv));

    // The Raft loop's task, and its peer transport.
    let (tx, rx) = input_queue(INPUT_QUEUE);
    let transport = Transport::new(
        shared.clone(),
        runtime.handle().clone(),
        tx.clone(),
        flags.dial_from,
        flags.tls.peer_calls.clone(),
    )
    .with_streams(args.peer_streams);
    let raft_loop = RaftLoop::new(raw, storage, shared.clone(), Box::new(transport), rx, args.snapshot_threshold)
        .with_writer_thread(tx.clone())
        .map_err(|e| StartError::from(format!("cannot start the raft writer: {e}")))?;
    // The writer thread holds a sender of the loop's queue, so the loop never sees the queue
    // close: after the servers stop, it is told to stop.
    let stop_loop = tx.clone();
    let raft_loop = runtime.spawn(raft_loop.run());

    let node = NodeHandle { shared: shared.clone(), tx: tx.clone() };
    let peer = PeerServer::new(shared.clone(), tx.clone(), peer_limits).requiring_identity(flags.tls.peer_identity);
    drop(tx);
    let result = runtime.block_on(async move {
        let result = serve_until_stopped(&flags, node, peer, committed_at_start).await;
        // The loop has usually stopped by now (a graceful stop hands leadership away first);
        // otherwise it is told to, and waited for a bounded while. Fails only if it has
        // stopped already.
        let (reply, _stopped) = tokio::sync::oneshot::channel();
        let _ = stop_loop.try_send(Input::Shutdown { reply });
        drop(stop_loop);
        let _ = tokio::time::timeout(Duration::from_secs(3), raft_loop).await;
        result
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The flags, checked before anything is touched.
struct Flags {
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    /// `--listen-metrics-urls`: plain listeners for probes and metrics.
    metrics_addrs: Vec<SocketAddr>,
    advertise_client_url: String,
    advertise_peer_url: String,
    initial: Vec<InitialMember>,
    /// The cluster id that `--initial-cluster` and its token give.
    cluster_id: u64,
    /// The member's own peer address, which it dials its peers from (so that network rules on
    /// member addresses cut both directions).
    dial_from: Option<IpAddr>,
    /// What automatic compaction keeps of the key history.
    retention: Retention,
    /// How often watches that asked for it hear their revision.
    watch_progress_interval: Duration,
    tls: Tls,
    /// How callers are authenticated.
    auth: AuthSettings,
    /// `--auth-token-ttl`.
    token_ttl: Duration,
}

/// TLS as the flags set it up (issue 16); `None` where a port or a kind of call is plain.
#[derive(Default)]
struct Tls {
    /// The client port (`--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`).
    client: Option<Arc<ServerTls>>,
    /// Calls to the leader's client port, forwarding clients' requests: HTTP/1.1 and h2. They
    /// check the leader's certificate against `--trusted-ca-file` and present `--cert-file`.
    leader_calls: Option<Arc<ClientTls>>,
    leader_calls_h2: Option<Arc<ClientTls>>,
    /// The lock and election services' calls to this member's own client port: the same files.
    own_calls: Option<TlsFiles>,
    /// The peer port (`--peer-*`).
    peer: Option<Arc<ServerTls>>,
    /// Calls to other members' peer ports, presenting `--peer-cert-file`.
    peer_calls: Option<Arc<ClientTls>>,
    /// `--peer-client-cert-auth`.
    peer_identity: bool,
}

impl Tls {
    fn check(args: &NodeArgs) -> Result<Tls, StartError> {
        let failed =
            |what: &'static str| move |e: TlsError| StartError::from(format!("cannot set up TLS for {what}: {e}"));
        let files = |cert: &Option<PathBuf>, key: &Option<PathBuf>, ca: &Option<PathBuf>, auth: bool| {
            Some(TlsFiles { cert: cert.clone()?, key: key.clone()?, trusted_ca: ca.clone(), client_cert_auth: auth })
        };
        let mut tls = Tls { peer_identity: args.peer_client_cert_auth, ..Tls::default() };
        match files(&args.cert_file, &args.key_file, &args.trusted_ca_file, args.client_cert_auth) {
            Some(files) => {
                tls.client = Some(Arc::new(ServerTls::server(files.clone()).map_err(failed("clients"))?));
                if files.trusted_ca.is_none() {
                    return Err(StartError::from(
                        "--cert-file needs --trusted-ca-file too: followers forward requests to the leader's client \
                         port, and check its certificate against that CA",
                    ));
                }
                tls.own_calls = Some(files.clone());
                tls.leader_calls =
                    Some(Arc::new(ClientTls::http1(files.clone()).map_err(failed("calls to the leader"))?));
                tls.leader_calls_h2 = Some(Arc::new(ClientTls::h2(files).map_err(failed("calls to the leader"))?));
            }
            None if args.client_cert_auth => {
                return Err(StartError::from("--client-cert-auth needs --cert-file, --key-file and --trusted-ca-file"))
            }
            None => {}
        }
        let peer = &args.peer_trusted_ca_file;
        if let Some(files) = files(&args.peer_cert_file, &args.peer_key_file, peer, args.peer_client_cert_auth) {
            tls.peer = Some(Arc::new(ServerTls::server(files.clone()).map_err(failed("peers"))?));
            tls.peer_calls = Some(Arc::new(ClientTls::http1(files).map_err(failed("calls to peers"))?));
        }
        Ok(tls)
    }
}

/// A URL's scheme must say whether its port speaks TLS: `https://` exactly when `tls`.
fn check_scheme(url: &str, tls: bool, flag: &str, files: &str) -> Result<(), StartError> {
    match (is_https(url), tls) {
        (true, true) | (false, false) => Ok(()),
        (true, false) => Err(StartError::from(format!("{flag} {url} is https://, which needs {files}"))),
        (false, true) => Err(StartError::from(format!("{flag} {url} is http://, but {files} are given: use https://"))),
    }
}

impl Flags {
    fn check(args: &NodeArgs) -> Result<Flags, StartError> {
        let client_addr = socket_addr(&args.listen_client_url, "--listen-client-url")?;
        let peer_addr = socket_addr(&args.listen_peer_url, "--listen-peer-url")?;
        let metrics_addrs = args
            .listen_metrics_urls
            .iter()
            .filter(|url| !url.trim().is_empty())
            .map(|url| {
                if is_https(url) {
                    return Err(StartError::from(format!(
                        "--listen-metrics-urls {url}: probes and metrics are served in plain HTTP only (http://)"
                    )));
                }
                socket_addr(url, "--listen-metrics-urls")
            })
            .collect::<Result<Vec<_>, _>>()?;
        validate_url(&args.advertise_client_url)
            .map_err(|e| StartError::from(format!("--advertise-client-url: {e}")))?;
        validate_url(&args.advertise_peer_url).map_err(|e| StartError::from(format!("--advertise-peer-url: {e}")))?;
        let initial = parse_initial_cluster(&args.initial_cluster).map_err(StartError::from)?;
        let tls = Tls::check(args)?;
        const CLIENT_FILES: &str = "--cert-file and --key-file";
        const PEER_FILES: &str = "--peer-cert-file, --peer-key-file and --peer-trusted-ca-file";
        check_scheme(&args.listen_client_url, tls.client.is_some(), "--listen-client-url", CLIENT_FILES)?;
        check_scheme(&args.advertise_client_url, tls.client.is_some(), "--advertise-client-url", CLIENT_FILES)?;
        check_scheme(&args.listen_peer_url, tls.peer.is_some(), "--listen-peer-url", PEER_FILES)?;
        check_scheme(&args.advertise_peer_url, tls.peer.is_some(), "--advertise-peer-url", PEER_FILES)?;
        for member in &initial {
            let flag = format!("--initial-cluster ({})", member.name);
            check_scheme(&member.peer_url, tls.peer.is_some(), &flag, PEER_FILES)?;
        }
        if args.max_value_bytes == 0 {
            return Err(StartError::from("--max-value-bytes must be at least 1"));
        }
        let retention =
            Retention::parse(args.auto_compaction_mode, &args.auto_compaction_retention).map_err(StartError::from)?;
        let interval = &args.experimental_watch_progress_notify_interval;
        let watch_progress_interval =
            compactor::parse_duration(interval.trim()).filter(|d| !d.is_zero()).ok_or_else(|| {
                StartError::from(format!(
                    "--experimental-watch-progress-notify-interval '{interval}' is not a duration such as 10m or 5s"
                ))
            })?;
        if args.auth_token != "simple" {
            return Err(StartError::from(format!(
                "--auth-token {}: kuberaft makes simple tokens only (--auth-token simple); JWT is not supported",
                args.auth_token
            )));
        }
        if args.auth_token_ttl == 0 {
            return Err(StartError::from("--auth-token-ttl must be at least 1 (seconds)"));
        }
        if !(4..=31).contains(&args.bcrypt_cost) {
            return Err(StartError::from(format!("--bcrypt-cost {} is outside 4 to 31", args.bcrypt_cost)));
        }
        let auth = AuthSettings { bcrypt_cost: args.bcrypt_cost, client_cert_auth: args.client_cert_auth };
        Ok(Flags {
            auth,
            token_ttl: Duration::from_secs(args.auth_token_ttl),
            retention,
            watch_progress_interval,
            client_addr,
            peer_addr,
            metrics_addrs,
            advertise_client_url: args.advertise_client_url.trim_end_matches('/').to_string(),
            advertise_peer_url: args.advertise_peer_url.trim_end_matches('/').to_string(),
            cluster_id: cluster_id(&initial, &args.initial_cluster_token),
            initial,
            dial_from: Some(peer_addr.ip()).filter(|ip| !ip.is_unspecified()),
            tls,
        })
    }

    /// How this member calls other members' peer ports.
    fn peer_dial(&self) -> Dial {
        Dial::peer(self.dial_from).with_tls(self.tls.peer_calls.clone())
    }
}

/// Opens `--data-dir` (creating it), refusing a partial one (member.json without its log, a
/// log without member.json).
fn open_storage(args: &NodeArgs) -> Result<DataDir, StartError> {
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| StartError::from(format!("cannot create --data-dir {}: {e}", args.data_dir.display())))?;
    Ok(open_data_dir(&args.data_dir)?)
}

/// How this member starts: who it is, the core's initial state, and problems to report.
struct Start {
    meta: MemberMeta,
    state: InitialState,
    problems: Vec<String>,
    /// Members known before the log says (a joining member: the leader's view it joined through).
    known: Vec<PeerMember>,
    /// `--force-new-cluster`: the entries that leave this member alone, to make durable first.
    forced: Vec<crate::raft::Entry>,
}

/// The bootstrap policy. With data, the durable state is the truth and the flags only matter
/// at the first start; with empty data, `new` bootstraps once a majority of the initial list
/// confirms the cluster has not formed, and `existing` joins as the learner the leader lists
/// for it (`process::join`, `node::join`).
fn decide_start(
    args: &NodeArgs,
    flags: &Flags,
    runtime: &Runtime,
    storage: &Storage,
    durable: DurableState,
    meta: Option<MemberMeta>,
) -> Result<Start, StartError> {
    if args.force_new_cluster && (meta.is_none() || storage.is_fresh()) {
        tracing::warn!(
            "--force-new-cluster: {} holds no data, so there is nothing to keep: this member starts as it would without the flag (as etcd does)",
            args.data_dir.display()
        );
    }
    match meta {
        Some(meta) if !storage.is_fresh() => {
            let mut problems = Vec::new();
            if meta.cluster_id != flags.cluster_id && args.initial_cluster_state == ClusterState::New {
                let why = format!(
                    "--initial-cluster/--initial-cluster-token describe cluster {:x}, but this member's data belongs to cluster {:x}; the data wins and the flags are ignored",
                    flags.cluster_id, meta.cluster_id
                );
                tracing::warn!("{why}");
                problems.push(why);
            }
            if meta.name != args.name {
                return Err(StartError::from(format!(
                    "the data in {} belongs to member '{}', not '{}'",
                    args.data_dir.display(),
                    meta.name,
                    args.name
                )));
            }
            let mut state = InitialState::restart(durable.hard_state, durable.snapshot, durable.entries);
            let forced = if args.force_new_cluster { force_new_cluster(&meta, &mut state)? } else { Vec::new() };
            Ok(Start { meta, state, problems, known: Vec::new(), forced })
        }
        _ => match args.initial_cluster_state {
            ClusterState::New => bootstrap(args, flags, runtime),
            ClusterState::Existing => {
                let joiner = Joiner { name: args.name.clone(), peer_url: flags.advertise_peer_url.clone() };
                let (meta, known) =
                    while_answering_peers(runtime, flags.peer_addr, flags.tls.peer.clone(), flags.cluster_id, async {
                        join_existing(&joiner, &flags.initial, flags.peer_dial()).await
                    })?;
                Ok(Start { meta, state: InitialState::default(), problems: Vec::new(), known, forced: Vec::new() })
            }
        },
    }
}

/// `new` with empty data: the bootstrap entries, once a majority of the initial members (this
/// one included) confirmed the cluster has not formed.
fn bootstrap(args: &NodeArgs, flags: &Flags, runtime: &Runtime) -> Result<Start, StartError> {
    let me = flags.initial.iter().find(|m| m.name == args.name).ok_or_else(|| {
        StartError::from(format!("--initial-cluster does not list this member's name '{}'", args.name))
    })?;
    if me.peer_url != flags.advertise_peer_url {
        return Err(StartError::from(format!(
            "--initial-cluster lists {}={} but --advertise-peer-url is {}",
            me.name, me.peer_url, flags.advertise_peer_url
        )));
    }
    // Every initial member writes the same bootstrap entries (Raft's log matching assumes
    // equal entries at an equal index and term), so they carry only what every member knows:
    // no client URLs, which members learn from each other's messages. A member that wrote its
    // own here had a membership (and hash) of its own, and the operator never saw the members
    // agree.
    let voters = bootstrap_voters(&flags.initial, flags.cluster_id);
    let meta = MemberMeta {
        cluster_id: flags.cluster_id,
        member_id: initial_member_id(flags.cluster_id, me),
        name: args.name.clone(),
    };
    let member_id = meta.member_id;
    while_answering_peers(runtime, flags.peer_addr, flags.tls.peer.clone(), flags.cluster_id, async {
        bootstrap_when_unformed(
            &flags.initial,
            &flags.advertise_peer_url,
            flags.cluster_id,
            member_id,
            flags.peer_dial(),
        )
        .await
    })?;
    Ok(Start {
        meta,
        state: InitialState::bootstrap(&voters),
        problems: Vec::new(),
        known: Vec::new(),
        forced: Vec::new(),
    })
}

/// `--force-new-cluster` on this member's data (`InitialState::force_new_cluster`): it stays
/// the only member of its cluster, with its id and its whole log. Returns the entries to make
/// durable before it starts.
fn force_new_cluster(meta: &MemberMeta, state: &mut InitialState) -> Result<Vec<crate::raft::Entry>, StartError> {
    let forced = state.force_new_cluster(meta.member_id).map_err(|e| {
        StartError::from(format!(
            "--force-new-cluster: {e}: this member's own log has removed it, so its data cannot start a cluster; use the data of a member that is still listed"
        ))
    })?;
    if forced.is_empty() {
        tracing::info!("--force-new-cluster: {} is the only member already; nothing to change", meta.name);
    } else {
        let removed: Vec<String> = forced
            .iter()
            .filter_map(|entry| match &entry.payload {
                crate::raft::EntryPayload::ConfChange(cc) if cc.kind == crate::raft::ConfChangeKind::Remove => {
                    Some(crate::base::wire::format_id(cc.node_id))
                }
                _ => None,
            })
            .collect();
        tracing::warn!(
            "--force-new-cluster: {} is now the only member of cluster {:x}, with its whole log up to index {} (term {}); removed {}. Start it without the flag from now on, and add the other members back with empty data",
            meta.name,
            meta.cluster_id,
            state.hard_state.commit,
            state.hard_state.term,
            removed.join(", ")
        );
    }
    Ok(forced)
}

/// The voters of a new cluster's bootstrap entries (`InitialState::bootstrap`), each with the
/// member it adds: the same on every initial member, and in a restored one (`restore`).
pub(super) fn bootstrap_voters(initial: &[InitialMember], cluster_id: u64) -> Vec<(u64, Bytes)> {
    initial
        .iter()
        .map(|m| {
            let id = initial_member_id(cluster_id, m);
            let info = MemberInfo { id, name: m.name.clone(), peer_url: m.peer_url.clone(), client_url: String::new() };
            (id, encode(&info))
        })
        .collect()
}

/// Writes `member.json` (only when it changed: a restart must not need free space, so that a
/// member on a full disk starts, reports it in /readyz and recovers when space returns) and
/// the bootstrap entries, before anything else happens.
fn record_start(
    args: &NodeArgs,
    mut storage: Storage,
    stored_meta: Option<&MemberMeta>,
    start: &Start,
) -> Result<Storage, StartError> {
    if stored_meta != Some(&start.meta) {
        write_meta(&args.data_dir, &start.meta).map_err(|e| StartError::from(e.to_string()))?;
    }
    let state = &start.state;
    if storage.is_fresh() && !state.entries.is_empty() {
        storage
            .persist(Some(&state.hard_state), None, &state.entries)
            .map_err(|e| StartError::from(format!("cannot write the initial state: {e}")))?;
    }
    if !start.forced.is_empty() {
        storage
            .persist(Some(&state.hard_state), None, &start.forced)
            .map_err(|e| StartError::from(format!("--force-new-cluster: cannot write the new configuration: {e}")))?;
    }
    Ok(storage)
}

/// The state machine's database in the data directory.
pub const STATE_FILE: &str = "kv.db";

/// Opens the state machine's database (`STATE_FILE`). A data directory of kuberaft 0.1 or 0.2
/// has none: its state machine is the durable snapshot's data, carried over into a new database
/// once. A database that applied less than the log's snapshot covers, or a missing one where
/// the log was compacted into it, cannot go on: the entries it lacks are gone from the log, so
/// the member's data is lost (exit code 3: replace it). A state machine staged from a leader
/// but never installed is thrown away.
fn restore_state_machine(args: &NodeArgs, state: &InitialState) -> Result<KvStore, StartError> {
    let path = args.data_dir.join(STATE_FILE);
    let listed = std::fs::read_dir(&args.data_dir)
        .map_err(|e| StartError::from(format!("cannot list {}: {e}", args.data_dir.display())))?;
    for entry in listed.flatten() {
        let name = entry.file_name();
        if is_staging_file(STATE_FILE, &name.to_string_lossy()) {
            let leftover = entry.path();
            std::fs::remove_file(&leftover)
                .map_err(|e| StartError::from(format!("cannot remove {}: {e}", leftover.display())))?;
        }
    }
    let snapshot = state.snapshot.as_ref();
    let cannot = |e: String| StartError::from(format!("cannot start: the state machine in {} {e}", path.display()));
    let unreadable = |s: &crate::raft::Snapshot, e: String| {
        StartError::from(format!(
            "cannot start: the durable snapshot of index {} (term {}) in {} cannot be loaded: {e}. \
             Run a kuberaft version that reads it, or replace this member (remove it, clear its data \
             directory, add it back)",
            s.meta.index,
            s.meta.term,
            args.data_dir.display()
        ))
    };
    let mut kv = if path.exists() {
        KvStore::open(&path).map_err(|e| cannot(format!("cannot be opened: {e}")))?
    } else {
        match snapshot {
            Some(s) if s.meta.index > 0 && s.data.is_empty() => {
                return Err(StartError::data_lost(format!(
                    "the state machine's database {} is missing, and the log before index {} is compacted into \
                     it: this member's data is lost; remove it from the cluster and add it back",
                    path.display(),
                    s.meta.index
                )))
            }
            _ => KvStore::open(&path).map_err(|e| cannot(format!("cannot be created: {e}")))?,
        }
    };
    let Some(s) = snapshot.filter(|s| kv.applied_index() < s.meta.index) else { return Ok(kv) };
    if s.data.is_empty() {
        return Err(StartError::data_lost(format!(
            "the state machine {} applied up to index {}, but the log before index {} is compacted: \
             this member's data is lost; remove it from the cluster and add it back",
            path.display(),
            kv.applied_index(),
            s.meta.index
        )));
    }
    // A snapshot whose state travels in it (kuberaft 0.1 or 0.2, or one such a leader sent):
    // carried into a new database, which replaces the one behind it.
    let staged = staging_path(&path);
    let carried = KvStore::from_legacy_snapshot(Some(&staged), s).map_err(|e| {
        let _ = std::fs::remove_file(&staged);
        unreadable(s, e.to_string())
    })?;
    drop(kv);
    kv = KvStore::replace_with(Some(&path), carried).map_err(|e| cannot(format!("cannot be replaced: {e}")))?;
    Ok(kv)
}

/// What the Raft loop, the transport and the servers share, with the address book filled from
/// the initial list, the members `known` before the log says, the restored membership and this
/// member's own flags.
fn shared_state(
    args: &NodeArgs,
    flags: &Flags,
    meta: &MemberMeta,
    problems: Vec<String>,
    known: &[PeerMember],
    raw: &RawNode,
    kv: KvStore,
) -> Shared {
    let addresses = AddressBook::default();
    for m in &flags.initial {
        addresses.learn(initial_member_id(meta.cluster_id, m), &m.name, &m.peer_url, "");
    }
    for m in known {
        addresses.learn(m.id, &m.name, &m.peer_url, "");
    }
    for (info, _) in kv.members() {
        addresses.learn(info.id, &info.name, &info.peer_url, &info.client_url);
    }
    addresses.learn(meta.member_id, &args.name, &flags.advertise_peer_url, &flags.advertise_client_url);
    let (applied_tx, _) = watch::channel(kv.applied_index());
    // Clients are served once what the log holds committed is applied (`serve_until_stopped`);
    // entries past that commit may include writes this member answered before a crash.
    let replayed_at_start = raw.raft.log().last_index() <= raw.raft.commit_index().max(kv.applied_index());
    Shared {
        id: meta.member_id,
        name: args.name.clone(),
        cluster_id: meta.cluster_id,
        advertise_client_url: flags.advertise_client_url.clone(),
        advertise_peer_url: flags.advertise_peer_url.clone(),
        max_value_bytes: args.max_value_bytes,
        // etcd: minTTL = ceil(3 * electionTicks / 2 * heartbeat) seconds.
        min_lease_ttl_s: i64::try_from(
            (u64::from(raw.raft.config().election_timeout_max_ticks) * crate::node::runtime::TICK_MS * 3 / 2)
                .div_ceil(1000),
        )
        .unwrap_or(1)
        .max(1),
        ids: IdGenerator::starting_now(meta.member_id),
        status: RwLock::new(LoopStatus {
            role: Role::Follower,
            term: raw.raft.term(),
            leader: None,
            commit_index: raw.raft.commit_index(),
            applied_index: kv.applied_index(),
            last_index: raw.raft.log().last_index(),
            last_term: raw.raft.log().last_term(),
            voter: raw.raft.conf().voters.contains(&meta.member_id),
            matched: Default::default(),
            committed_in_term: false,
        }),
        kv: RwLock::new(kv),
        applied: applied_tx,
        addresses,
        errors: RwLock::new(problems.into_iter().map(|p| ("flags".to_string(), (p, Instant::now()))).collect()),
        metrics: Metrics::default(),
        data_lost: watch::channel(None).0,
        stopping: watch::channel(false).0,
        unreachable: Default::default(),
        outgoing_snapshots: Default::default(),
        staged: Default::default(),
        lessor: std::sync::Mutex::new(crate::node::lessor::Lessor::new(
            crate::node::lessor::DEFAULT_CHECKPOINT_INTERVAL_MS,
        )),
        lease_clock: Instant::now(),
        forward: crate::node::forward::Forwarder::new(flags.dial_from, flags.tls.peer_calls.clone()),
        timeline: Default::default(),
        latency: Default::default(),
        replayed: std::sync::atomic::AtomicBool::new(replayed_at_start),
    }
}

/// Serves the client and peer ports until SIGTERM/SIGINT (then hands leadership away) or until
/// the member learns its data is lost (exit 3); then lets requests in flight finish (bounded),
/// and ends the streams that would go on for as long as their other side wants.
/// Clients are served once the state machine has applied what the log held committed at start
/// (`committed_at_start`), as etcd serves them only once it is ready: until then it holds what
/// its database last made durable, which may be older than what this member served (and listed
/// as members) before it stopped. Their connections wait in the listener's backlog meanwhile.
async fn serve_until_stopped(
    flags: &Flags,
    node: NodeHandle,
    peer: PeerServer,
    committed_at_start: crate::raft::Index,
) -> Result<(), StartError> {
    let shared = node.shared.clone();
    let (client_addr, peer_addr) = (flags.client_addr, flags.peer_addr);
    let leader_dial = Dial::leader(Some(client_addr.ip()).filter(|ip| !ip.is_unspecified()));
    let http = HttpClient::new(leader_dial.clone().with_tls(flags.tls.leader_calls.clone()));
    let leader_dial = leader_dial.with_tls(flags.tls.leader_calls_h2.clone());
    let watch = WatchHub::new(shared.clone(), flags.watch_progress_interval);
    let publisher = tokio::spawn(watch.clone().publish());
    let api = Api {
        node: node.clone(),
        http,
        watch,
        leader_dial,
        own_tls: flags.tls.own_calls.clone(),
        auth: flags.auth,
        ui: Default::default(),
    };
    let client_listener = tokio::net::TcpListener::bind(client_addr)
        .await
        .map_err(|e| StartError::from(format!("cannot listen for clients on {client_addr}: {e}")))?;
    let peer_listener = tokio::net::TcpListener::bind(peer_addr)
        .await
        .map_err(|e| StartError::from(format!("cannot listen for peers on {peer_addr}: {e}")))?;
    let mut metrics_listeners = Vec::new();
    for addr in &flags.metrics_addrs {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::from(format!("cannot listen for probes and metrics on {addr}: {e}")))?;
        metrics_listeners.push(listener);
    }
    tracing::info!(
        name = %shared.name,
        id = %format!("{:x}", shared.id),
        cluster = %format!("{:x}", shared.cluster_id),
        %client_addr,
        %peer_addr,
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "member started"
    );
    // Every server stops on it, and the streams they serve end on it (`Shared::stopping`).
    let stop_rx = shared.stopping.subscribe();
    let client_stats = shared.metrics.client_port.clone();
    let peer_stats = shared.metrics.peer_port.clone();
    let metrics_servers: Vec<_> = metrics_listeners
        .into_iter()
        .map(|listener| {
            let router = metrics_router(api.clone());
            let stats = Arc::default();
            tokio::spawn(serve(listener, router, METRICS_PORT, render_client_error, stats, None, stop_rx.clone()))
        })
        .collect();
    let client_server = tokio::spawn({
        let (shared, client_tls, mut stop) = (shared.clone(), flags.tls.client.clone(), stop_rx.clone());
        async move {
            tokio::select! {
                () = replayed(&shared, committed_at_start) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            let router = client_router(api);
            serve(client_listener, router, CLIENT_PORT, render_client_error, client_stats, client_tls, stop).await;
        }
    });
    let peer_server = tokio::spawn(serve(
        peer_listener,
        transport::peer_router(peer),
        PEER_PORT,
        transport::render_error,
        peer_stats,
        flags.tls.peer.clone(),
        stop_rx,
    ));
    let compactor = tokio::spawn(compactor::run(node.clone(), flags.retention));
    let mut data_lost = shared.data_lost.subscribe();
    let lost = tokio::select! {
        _ = wait_for_signal() => None,
        lost = data_lost.wait_for(|lost| lost.is_some()) => lost.ok().and_then(|l| l.clone()),
    };
    if lost.is_none() {
        tracing::info!("stopping: handing off leadership if leading");
        node.shutdown().await;
    }
    compactor.abort();
    publisher.abort();
    shared.stopping.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), client_server).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), peer_server).await;
    for server in metrics_servers {
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    }
    match lost {
        Some(why) => Err(StartError::data_lost(why)),
        None => Ok(()),
    }
}

/// Returns once the state machine has applied through `commit`, or cannot go on: it stopped
/// applying, or storage fails (then the client port serves, and its `/readyz` and errors say
/// why, as they did before this wait).
async fn replayed(shared: &Shared, commit: crate::raft::Index) {
    let mut applied = shared.applied.subscribe();
    let blocked = || shared.halted() || shared.storage_failed();
    while *applied.borrow_and_update() < commit && !blocked() {
        // Woken by each apply; the timeout notices a halt or a storage failure, which send nothing.
        let _ = tokio::time::timeout(Duration::from_millis(100), applied.changed()).await;
    }
}

/// `MIN-MAX` milliseconds.
fn parse_timeout_range(text: &str) -> Result<(u64, u64), StartError> {
    let bad =
        || StartError::from(format!("--election-timeout-ms '{text}' must be MIN-MAX in milliseconds, e.g. 150-300"));
    let (min, max) = text.split_once('-').ok_or_else(bad)?;
    let (min, max) = (min.trim().parse::<u64>().map_err(|_| bad())?, max.trim().parse::<u64>().map_err(|_| bad())?);
    Ok((min, max))
}

/// The core's settings from the flags (milliseconds to ticks).
pub fn raft_config(id: u64, args: &NodeArgs) -> Result<Config, StartError> {
    let (min_ms, max_ms) = parse_timeout_range(&args.election_timeout_ms)?;
    let mut cfg = Config::new(id);
    cfg.election_timeout_min_ticks = (min_ms / TICK_MS) as u32;
    cfg.election_timeout_max_ticks = (max_ms / TICK_MS) as u32;
    cfg.heartbeat_interval_ticks = (args.heartbeat_interval_ms / TICK_MS).max(1) as u32;
    cfg.seed = id
        ^ std::process::id() as u64
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0));
    cfg.validate().map_err(|e| {
        StartError::from(format!(
            "{e} (--election-timeout-ms {} --heartbeat-interval-ms {})",
            args.election_timeout_ms, args.heartbeat_interval_ms
        ))
    })?;
    Ok(cfg)
}

fn socket_addr(url: &str, flag: &str) -> Result<SocketAddr, StartError> {
    validate_url(url).map_err(|e| StartError::from(format!("{flag}: {e}")))?;
    let hp = host_port(url).unwrap_or_default();
    hp.parse::<SocketAddr>().map_err(|_| StartError::from(format!("{flag}: '{url}' must name an IP address and port")))
}

/// Runs `decide` (a member with empty data deciding how to start) while the peer port answers
/// `GET /raft/v1/members` as a blank member of `cluster_id`, so that the members of a new
/// cluster, all waiting like this one, can count each other. Stops on SIGTERM too.
fn while_answering_peers<T>(
    runtime: &tokio::runtime::Runtime,
    peer_addr: SocketAddr,
    tls: Option<Arc<ServerTls>>,
    cluster_id: u64,
    decide: impl std::future::Future<Output = Result<T, StartError>>,
) -> Result<T, StartError> {
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(peer_addr)
            .await
            .map_err(|e| StartError::from(format!("cannot listen for peers on {peer_addr}: {e}")))?;
        let answer = PeerView { cluster_id, blank: true, ..PeerView::default() };
        let router = axum::Router::new()
            .route(MEMBERS_PATH, axum::routing::get(move || std::future::ready(axum::Json(answer.clone()))))
            .fallback(|| std::future::ready((axum::http::StatusCode::SERVICE_UNAVAILABLE, "this member is starting")));
        // Bounded like the real peer port (connections, header and request timeouts).
        let (stop_tx, stop_rx) = watch::channel(false);
        let stats = Arc::new(PortStats::default());
        let server = tokio::spawn(serve(listener, router, PEER_PORT, transport::render_error, stats, tls, stop_rx));
        let outcome = tokio::select! {
            outcome = decide => outcome,
            _ = wait_for_signal() => Err(StartError::from("stopped before this member started")),
        };
        let _ = stop_tx.send(true);
        let mut server = server;
        if tokio::time::timeout(Duration::from_secs(2), &mut server).await.is_err() {
            // The real peer server binds the same address next: release it now.
            server.abort();
            let _ = server.await;
        }
        outcome
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// The CPUs the calling thread may run on.
    fn allowed_cpus() -> Vec<usize> {
        // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity fills it for this thread.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        assert_eq!(rc, 0, "sched_getaffinity: {}", std::io::Error::last_os_error());
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
    }

    /// The number of workers of a member's runtime built on a thread held to `cpus`.
    fn workers_on(cpus: Vec<usize>) -> usize {
        std::thread::spawn(move || {
            // SAFETY: the set is built from CPUs this process may use; the call affects only this
            // thread.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            for cpu in cpus {
                unsafe { libc::CPU_SET(cpu, &mut set) };
            }
            let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
            assert_eq!(rc, 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
            member_runtime().expect("runtime").metrics().num_workers()
        })
        .join()
        .expect("the thread that built the runtime")
    }

    /// A member's runtime has one worker for each CPU it may use: held to one CPU (as a pod
    /// limited to one CPU is), one worker; free to use what this machine gives the tests, as many
    /// as that.
    #[test]
    fn the_runtime_has_a_worker_for_each_cpu_the_member_may_use() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty(), "this thread may run on no CPU");
        assert_eq!(workers_on(vec![cpus[0]]), 1);
        let all = usable_cpus();
        assert_eq!(workers_on(cpus), all);
    }

    #[derive(Parser)]
    struct Node {
        #[command(flatten)]
        args: NodeArgs,
    }

    /// `Flags::check`'s refusal of these flags (on top of a plain three-member start), or "ok".
    fn refusal(dir: &std::path::Path, extra: &[&str], scheme: &str) -> String {
        let mut argv: Vec<String> = ["kuberaft", "--name", "a", "--data-dir", dir.to_str().expect("path")]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let url = |port: u16| format!("{scheme}://127.0.0.1:{port}");
        argv.extend(["--listen-client-url".into(), url(2379), "--advertise-client-url".into(), url(2379)]);
        argv.extend(["--listen-peer-url".into(), url(2380), "--advertise-peer-url".into(), url(2380)]);
        argv.extend(["--initial-cluster".into(), format!("a={}", url(2380))]);
        argv.extend(extra.iter().map(|s| s.to_string()));
        let node = Node::try_parse_from(argv).expect("parses");
        match Flags::check(&node.args) {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    /// `--listen-metrics-urls`: plain URLs of an IP address and port, several allowed.
    #[test]
    fn metrics_urls_are_plain_addresses() {
        let dir = tempfile::tempdir().expect("dir");
        let two = ["--listen-metrics-urls", "http://127.0.0.1:2381,http://127.0.0.2:2381"];
        assert_eq!(refusal(dir.path(), &two, "http"), "ok");
        let e = refusal(dir.path(), &["--listen-metrics-urls", "https://127.0.0.1:2381"], "http");
        assert!(e.contains("plain HTTP only"), "{e}");
        let e = refusal(dir.path(), &["--listen-metrics-urls", "http://localhost:2381"], "http");
        assert!(e.contains("--listen-metrics-urls") && e.contains("IP address and port"), "{e}");
    }

    #[test]
    fn tls_flags_and_url_schemes_must_agree() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = crate::base::pki::Authority::new("ca").expect("ca");
        let files = crate::base::tls::test_files(dir.path(), "a", &ca, false);
        let path = |p: &std::path::Path| p.display().to_string();
        let (c, k) = (path(&files.cert), path(&files.key));
        let ca = path(files.trusted_ca.as_deref().expect("ca"));
        let client = ["--cert-file", &c, "--key-file", &k, "--trusted-ca-file", &ca];
        let peer = ["--peer-cert-file", &c, "--peer-key-file", &k, "--peer-trusted-ca-file", &ca];
        let both: Vec<&str> = client.iter().chain(peer.iter()).copied().collect();

        assert_eq!(refusal(dir.path(), &[], "http"), "ok");
        assert_eq!(refusal(dir.path(), &both, "https"), "ok");
        let e = refusal(dir.path(), &[], "https");
        assert!(e.contains("--listen-client-url https://127.0.0.1:2379 is https://, which needs --cert-file"), "{e}");
        let e = refusal(dir.path(), &client, "http");
        assert!(e.contains("is http://, but --cert-file and --key-file are given: use https://"), "{e}");
        let e = refusal(dir.path(), &peer, "http");
        assert!(e.contains("--listen-peer-url http://127.0.0.1:2380 is http://, but --peer-cert-file"), "{e}");
        let e = refusal(dir.path(), &["--cert-file", &c, "--key-file", &k], "https");
        assert!(e.contains("--cert-file needs --trusted-ca-file"), "{e}");
        let e = refusal(dir.path(), &["--client-cert-auth"], "http");
        assert!(e.contains("--client-cert-auth needs --cert-file"), "{e}");
        let missing = path(&dir.path().join("missing.pem"));
        let e = refusal(dir.path(), &["--cert-file", &missing, "--key-file", &k, "--trusted-ca-file", &ca], "https");
        assert!(e.starts_with("cannot set up TLS for clients: ") && e.contains("missing.pem"), "{e}");
    }
}
