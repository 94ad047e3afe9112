//! The runtime that drives the consensus core: the Raft loop (ticks, Ready handling, apply),
//! the peer transport, and the HTTP servers; `run` starts a member from its flags.

pub mod args;
pub mod handle;
pub mod ids;
pub mod join;
pub mod runtime;
pub mod serve;
pub mod shared;
pub mod transport;

#[cfg(test)]
mod fuzz_tests;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use args::ClusterState;
pub use args::{LogFormat, NodeArgs};
use handle::NodeHandle;
use ids::{cluster_id, host_port, initial_member_id, parse_initial_cluster, validate_url};
use runtime::{RaftLoop, INPUT_QUEUE, TICK_MS};
use shared::{Address, LoopStatus, Metrics, Shared};
use transport::{JoinAnswer, JoinRequest, PeerMembers, PeerServer, Transport, JOIN_PATH, MEMBERS_PATH};

use crate::api::server::{client_router, Api};
use crate::raft::{Config, InitialState, Raft, RawNode, Role};
use crate::store::command::{encode, MemberInfo};
use crate::store::{open_data_dir, write_meta, DataDir, KvStore, MemberMeta};

/// A start-up problem, said plainly; the process exits non-zero with it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StartError {
    message: String,
    /// Which exit code it gets.
    kind: StartFailure,
}

/// What kind of start-up failure, which decides the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StartFailure {
    /// Anything else: exit 1.
    Failed,
    /// The member's data is gone while the cluster counts on it: [`EXIT_DATA_LOST`].
    DataLost,
    /// The member's data is damaged (beyond what a crash or power cut leaves): [`EXIT_CORRUPT`].
    Corrupt,
}

impl From<String> for StartError {
    fn from(message: String) -> Self {
        StartError { message, kind: StartFailure::Failed }
    }
}

impl From<&str> for StartError {
    fn from(message: &str) -> Self {
        StartError::from(message.to_string())
    }
}

impl From<crate::store::StoreError> for StartError {
    fn from(error: crate::store::StoreError) -> Self {
        let kind = if error.is_data_lost() {
            StartFailure::DataLost
        } else if error.is_corrupt() {
            StartFailure::Corrupt
        } else {
            StartFailure::Failed
        };
        StartError { message: error.to_string(), kind }
    }
}

impl StartError {
    fn data_lost(message: String) -> Self {
        StartError { message, kind: StartFailure::DataLost }
    }

    /// The process's exit code for this failure.
    fn exit_code(&self) -> u8 {
        match self.kind {
            StartFailure::Failed => 1,
            StartFailure::DataLost => EXIT_DATA_LOST,
            StartFailure::Corrupt => EXIT_CORRUPT,
        }
    }
}

/// The exit code of a member that refuses to start because its data is lost while its cluster
/// has already replicated to it, or because its data directory holds `member.json` without its
/// log (DESIGN.md §6). The operator reads it from the pod's last state and replaces the member;
/// any other failure exits with 1 (or [`EXIT_CORRUPT`]).
pub const EXIT_DATA_LOST: u8 = 3;

/// The exit code of a member that refuses to start because its durable data is damaged in a way
/// no crash or power cut explains (a bad record in synced data, a missing snapshot or segment, a
/// log without `member.json`; DESIGN.md §3). The operator replaces the member, as for
/// [`EXIT_DATA_LOST`].
pub const EXIT_CORRUPT: u8 = 4;

fn init_logging(args: &NodeArgs) {
    init_logging_with(args.log_format, &args.log_level);
}

/// Logs to stderr, as text or JSON, filtered by `level` (a tracing filter; `info` if it is bad).
pub fn init_logging_with(format: LogFormat, level: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
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

/// Runs a member until SIGTERM/SIGINT. Blocking; builds its own runtime.
pub fn run(args: NodeArgs) -> ExitCode {
    init_logging(&args);
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn start(args: NodeArgs) -> Result<(), StartError> {
    let client_addr = socket_addr(&args.listen_client_url, "--listen-client-url")?;
    let peer_addr = socket_addr(&args.listen_peer_url, "--listen-peer-url")?;
    validate_url(&args.advertise_client_url).map_err(|e| StartError::from(format!("--advertise-client-url: {e}")))?;
    validate_url(&args.advertise_peer_url).map_err(|e| StartError::from(format!("--advertise-peer-url: {e}")))?;
    let advertise_peer_url = args.advertise_peer_url.trim_end_matches('/').to_string();
    let advertise_client_url = args.advertise_client_url.trim_end_matches('/').to_string();
    let initial = parse_initial_cluster(&args.initial_cluster).map_err(StartError::from)?;
    let given_cluster_id = cluster_id(&initial, &args.initial_cluster_token);
    if args.max_value_bytes == 0 {
        return Err(StartError::from("--max-value-bytes must be at least 1"));
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| StartError::from(format!("cannot start the async runtime: {e}")))?;

    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| StartError::from(format!("cannot create --data-dir {}: {e}", args.data_dir.display())))?;
    // Refuses a partial data directory (member.json without its log, a log without member.json).
    let DataDir { storage, durable, meta } = open_data_dir(&args.data_dir)?;
    let stored_meta = meta.clone();

    let dial_from: Option<IpAddr> = Some(peer_addr.ip()).filter(|ip| !ip.is_unspecified());
    let mut problems = Vec::new();
    let (meta, state) = match meta {
        Some(meta) if !storage.is_fresh() => {
            // Durable state is the truth; the flags only matter at the first start.
            if meta.cluster_id != given_cluster_id && args.initial_cluster_state == ClusterState::New {
                let why = format!(
                    "--initial-cluster/--initial-cluster-token describe cluster {given_cluster_id:x}, but this member's data belongs to cluster {:x}; the data wins and the flags are ignored",
                    meta.cluster_id
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
            let state = InitialState::restart(durable.hard_state, durable.snapshot.clone(), durable.entries);
            (meta, state)
        }
        _ => match args.initial_cluster_state {
            ClusterState::New => {
                let me = initial.iter().find(|m| m.name == args.name).ok_or_else(|| {
                    StartError::from(format!("--initial-cluster does not list this member's name '{}'", args.name))
                })?;
                if me.peer_url != advertise_peer_url {
                    return Err(StartError::from(format!(
                        "--initial-cluster lists {}={} but --advertise-peer-url is {advertise_peer_url}",
                        me.name, me.peer_url
                    )));
                }
                // Every initial member writes the same bootstrap entries (Raft's log matching
                // assumes equal entries at an equal index and term), so they carry only what
                // every member knows: no client URLs, which members learn from each other's
                // messages. A member that wrote its own here had a membership (and hash) of its
                // own, and the operator never saw the members agree.
                let voters: Vec<(u64, Bytes)> = initial
                    .iter()
                    .map(|m| {
                        let id = initial_member_id(given_cluster_id, m);
                        let info = MemberInfo {
                            id,
                            name: m.name.clone(),
                            peer_url: m.peer_url.clone(),
                            client_url: String::new(),
                        };
                        (id, encode(&info))
                    })
                    .collect();
                let meta = MemberMeta {
                    cluster_id: given_cluster_id,
                    member_id: initial_member_id(given_cluster_id, me),
                    name: args.name.clone(),
                };
                let member_id = meta.member_id;
                let decided = while_answering_peers(&runtime, peer_addr, given_cluster_id, async {
                    bootstrap_when_unformed(&initial, &advertise_peer_url, given_cluster_id, member_id, dial_from).await
                });
                decided?;
                let state = InitialState::bootstrap(&voters);
                (meta, state)
            }
            ClusterState::Existing => {
                let joiner = join::Joiner { name: args.name.clone(), peer_url: advertise_peer_url.clone() };
                let meta = while_answering_peers(&runtime, peer_addr, given_cluster_id, async {
                    join_existing(&joiner, &initial, dial_from).await
                })?;
                (meta, InitialState::default())
            }
        },
    };
    // Only when it changed: a restart must not need free space, so that a member on a full
    // disk starts, reports it in /readyz and recovers when space returns (no crash loop).
    if stored_meta.as_ref() != Some(&meta) {
        write_meta(&args.data_dir, &meta).map_err(|e| StartError::from(e.to_string()))?;
    }

    // Persist the bootstrap entries before anything else happens.
    let mut storage = storage;
    if storage.is_fresh() && !state.entries.is_empty() {
        storage
            .persist(Some(&state.hard_state), None, &state.entries)
            .map_err(|e| StartError::from(format!("cannot write the initial state: {e}")))?;
    }

    // The state machine starts from the durable snapshot, checked against its metadata. One
    // that cannot be loaded (a newer format, damage, or a snapshot the member received but
    // could not install before it stopped) stops the start: the log after it cannot apply.
    let kv = match &state.snapshot {
        Some(s) => KvStore::restore_snapshot(s).map_err(|e| {
            StartError::from(format!(
                "cannot start: the durable snapshot of index {} (term {}) in {} cannot be loaded: {e}. \
                 Run a kuberaft version that reads it, or replace this member (remove it, clear its data \
                 directory, add it back)",
                s.meta.index,
                s.meta.term,
                args.data_dir.display()
            ))
        })?,
        None => KvStore::new(),
    };
    let cfg = raft_config(meta.member_id, &args)?;
    let peer_limits = transport::PeerLimits::new(cfg.max_msg_bytes, args.max_value_bytes);
    let raft = Raft::new(cfg, state).map_err(|e| StartError::from(e.to_string()))?;
    let raw = RawNode::new(raft);

    let mut addresses = BTreeMap::new();
    for m in &initial {
        let id = initial_member_id(meta.cluster_id, m);
        addresses.insert(id, Address { name: m.name.clone(), peer_url: m.peer_url.clone(), client_url: String::new() });
    }
    for (info, _) in kv.members() {
        addresses.insert(info.id, Address { name: info.name, peer_url: info.peer_url, client_url: info.client_url });
    }
    addresses.insert(
        meta.member_id,
        Address {
            name: args.name.clone(),
            peer_url: advertise_peer_url.clone(),
            client_url: advertise_client_url.clone(),
        },
    );
    let (applied_tx, _) = watch::channel(kv.applied_index());
    let shared = Arc::new(Shared {
        id: meta.member_id,
        name: args.name.clone(),
        cluster_id: meta.cluster_id,
        advertise_client_url,
        advertise_peer_url,
        max_value_bytes: args.max_value_bytes,
        status: RwLock::new(LoopStatus {
            role: Role::Follower,
            term: raw.raft.term(),
            leader: None,
            commit_index: raw.raft.commit_index(),
            applied_index: kv.applied_index(),
            last_index: raw.raft.log().last_index(),
            voter: raw.raft.conf().voters.contains(&meta.member_id),
            matched: BTreeMap::new(),
            committed_in_term: false,
        }),
        kv: RwLock::new(kv),
        applied: applied_tx,
        addresses: RwLock::new(addresses),
        errors: RwLock::new(
            problems.into_iter().map(|p| ("flags".to_string(), (p, std::time::Instant::now()))).collect(),
        ),
        metrics: Metrics::default(),
        data_lost: watch::channel(None).0,
    });

    let (tx, rx) = std::sync::mpsc::sync_channel(INPUT_QUEUE);
    let local_ip: Option<IpAddr> = Some(peer_addr.ip()).filter(|ip| !ip.is_unspecified());
    let transport = Transport::new(shared.clone(), runtime.handle().clone(), tx.clone(), local_ip)
        .map_err(|e| StartError::from(format!("cannot build the peer client: {e}")))?;
    let raft_loop = RaftLoop::new(raw, storage, shared.clone(), Box::new(transport), rx, args.snapshot_threshold);
    let loop_thread = std::thread::Builder::new()
        .name("raft-loop".into())
        .spawn(move || raft_loop.run())
        .map_err(|e| StartError::from(format!("cannot start the raft loop: {e}")))?;

    let node = NodeHandle { shared: shared.clone(), tx: tx.clone() };
    let http = reqwest::Client::builder()
        .local_address(Some(client_addr.ip()).filter(|ip| !ip.is_unspecified()))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .map_err(|e| StartError::from(format!("cannot build the forwarding client: {e}")))?;
    let api = Api { node: node.clone(), http };
    let peer = PeerServer::new(shared.clone(), tx.clone(), peer_limits);
    drop(tx);

    let result = runtime.block_on(async move {
        let client_listener = tokio::net::TcpListener::bind(client_addr)
            .await
            .map_err(|e| StartError::from(format!("cannot listen for clients on {client_addr}: {e}")))?;
        let peer_listener = tokio::net::TcpListener::bind(peer_addr)
            .await
            .map_err(|e| StartError::from(format!("cannot listen for peers on {peer_addr}: {e}")))?;
        tracing::info!(
            name = %shared.name,
            id = %format!("{:x}", shared.id),
            cluster = %format!("{:x}", shared.cluster_id),
            %client_addr,
            %peer_addr,
            "member started"
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let client_stats = shared.metrics.client_port.clone();
        let peer_stats = shared.metrics.peer_port.clone();
        let client_server = tokio::spawn(serve::serve(
            client_listener,
            client_router(api),
            serve::CLIENT_PORT,
            crate::api::server::render_error,
            client_stats,
            stop_rx.clone(),
        ));
        let peer_server = tokio::spawn(serve::serve(
            peer_listener,
            transport::peer_router(peer),
            serve::PEER_PORT,
            transport::render_error,
            peer_stats,
            stop_rx,
        ));
        let mut data_lost = shared.data_lost.subscribe();
        let lost = tokio::select! {
            _ = wait_for_signal() => None,
            lost = data_lost.wait_for(|lost| lost.is_some()) => lost.ok().and_then(|l| l.clone()),
        };
        if lost.is_none() {
            tracing::info!("stopping: handing off leadership if leading");
            node.shutdown().await;
        }
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), client_server).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), peer_server).await;
        match lost {
            Some(why) => Err(StartError::data_lost(why)),
            None => Ok::<(), StartError>(()),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let _ = loop_thread.join();
    result
}

/// Resolves on SIGTERM or Ctrl-C (Ctrl-C only, if SIGTERM cannot be watched).
pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Runs `decide` (a member with empty data deciding how to start) while the peer port answers
/// `GET /raft/v1/members` as a blank member of `cluster_id`, so that the members of a new
/// cluster, all waiting like this one, can count each other. Stops on SIGTERM too.
fn while_answering_peers<T>(
    runtime: &tokio::runtime::Runtime,
    peer_addr: SocketAddr,
    cluster_id: u64,
    decide: impl std::future::Future<Output = Result<T, StartError>>,
) -> Result<T, StartError> {
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(peer_addr)
            .await
            .map_err(|e| StartError::from(format!("cannot listen for peers on {peer_addr}: {e}")))?;
        let answer = PeerMembers { cluster_id: format!("{cluster_id:x}"), blank: true, ..PeerMembers::default() };
        let router = axum::Router::new()
            .route(MEMBERS_PATH, axum::routing::get(move || std::future::ready(axum::Json(answer.clone()))))
            .fallback(|| std::future::ready((axum::http::StatusCode::SERVICE_UNAVAILABLE, "this member is starting")));
        // Bounded like the real peer port (connections, header and request timeouts).
        let (stop_tx, stop_rx) = watch::channel(false);
        let stats = Arc::new(serve::PortStats::default());
        let server =
            tokio::spawn(serve::serve(listener, router, serve::PEER_PORT, transport::render_error, stats, stop_rx));
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

/// Asks every listed peer (but this member) what it knows of the cluster.
async fn ask_peers(
    http: &reqwest::Client,
    initial: &[ids::InitialMember],
    me: &str,
) -> (Vec<join::PeerView>, Vec<String>) {
    let mut views = Vec::new();
    let mut failures = Vec::new();
    for m in initial.iter().filter(|m| m.peer_url != me) {
        let answer = match http.get(format!("{}{MEMBERS_PATH}", m.peer_url)).send().await {
            Ok(resp) if resp.status().is_success() => resp.json::<PeerMembers>().await.map_err(|e| e.to_string()),
            Ok(resp) => Err(format!("HTTP {}", resp.status())),
            Err(e) => Err(e.to_string()),
        };
        match answer.map(|a| a.view(&m.peer_url)) {
            Ok(Some(view)) => views.push(view),
            Ok(None) => failures.push(format!("{}: a malformed answer", m.peer_url)),
            Err(e) => failures.push(format!("{}: {e}", m.peer_url)),
        }
    }
    (views, failures)
}

/// Dials from `local_ip` (the member's peer address), as the peer transport does.
fn join_client(local_ip: Option<IpAddr>) -> Result<reqwest::Client, StartError> {
    reqwest::Client::builder()
        .local_address(local_ip)
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(6))
        .build()
        .map_err(|e| StartError::from(e.to_string()))
}

/// `new` with empty data: bootstraps once a majority of the initial members (this one
/// included) confirms that the cluster has not formed; refuses if it has (`join::decide_new`).
/// Waits as long as it takes (a new cluster cannot elect before a majority runs anyway).
async fn bootstrap_when_unformed(
    initial: &[ids::InitialMember],
    me: &str,
    cluster_id: u64,
    member_id: u64,
    local_ip: Option<IpAddr>,
) -> Result<(), StartError> {
    let http = join_client(local_ip)?;
    let mut last_logged: Option<std::time::Instant> = None;
    loop {
        let (views, failures) = ask_peers(&http, initial, me).await;
        match join::decide_new(member_id, cluster_id, initial.len(), &views) {
            join::Decision::Bootstrap => return Ok(()),
            join::Decision::Refuse { data_lost: true, reason } => return Err(StartError::data_lost(reason)),
            join::Decision::Refuse { reason, .. } => return Err(StartError::from(reason)),
            join::Decision::Wait(why) => {
                if last_logged.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::info!(unreachable = ?failures, "waiting to bootstrap: {why}");
                    last_logged = Some(std::time::Instant::now());
                }
            }
            other => return Err(StartError::from(format!("unexpected join decision {other:?}"))),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `existing` with empty data: joins as the learner the leader lists under this member's peer
/// URL, once the leader has recorded the start (`join::decide_existing`, `Command::Join`).
/// Never on a follower's word; a member whose id voted or started before is refused as data
/// lost. Gives up after 30 s without a decision (the pod restarts and asks again).
async fn join_existing(
    me: &join::Joiner,
    initial: &[ids::InitialMember],
    local_ip: Option<IpAddr>,
) -> Result<MemberMeta, StartError> {
    const ATTEMPTS: usize = 60;
    let http = join_client(local_ip)?;
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        let (views, failures) = ask_peers(&http, initial, &me.peer_url).await;
        match join::decide_existing(me, &views, None) {
            join::Decision::Claim { via, cluster_id, id } => {
                let request = JoinRequest { cluster_id: format!("{cluster_id:x}"), id: format!("{id:x}") };
                match http.post(format!("{via}{JOIN_PATH}")).json(&request).send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        match resp.json::<JoinAnswer>().await {
                            Ok(answer) if answer.joined => {
                                tracing::info!(id = %format!("{id:x}"), leader = %via, "joining as a new learner");
                                return Ok(MemberMeta { cluster_id, member_id: id, name: me.name.clone() });
                            }
                            Ok(answer) if status == reqwest::StatusCode::CONFLICT && answer.data_lost => {
                                return Err(StartError::data_lost(answer.reason))
                            }
                            Ok(answer) if status == reqwest::StatusCode::CONFLICT => {
                                return Err(StartError::from(answer.reason))
                            }
                            _ => last = format!("{via} could not record the join ({status})"),
                        }
                    }
                    Err(e) => last = format!("{via}: {e}"),
                }
            }
            join::Decision::Refuse { data_lost: true, reason } => return Err(StartError::data_lost(reason)),
            join::Decision::Refuse { reason, .. } => return Err(StartError::from(reason)),
            join::Decision::Wait(why) => last = why,
            other => last = format!("unexpected join decision {other:?}"),
        }
        if attempt % 10 == 0 {
            tracing::info!(unreachable = ?failures, "waiting to join: {last}");
        }
        if attempt + 1 < ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Err(StartError::from(format!(
        "cannot join: {last}. A member with empty data joins as a learner added for it (`kuberaft member add {} --peer-url {} --learner`), \
         on the leader's word",
        me.name, me.peer_url
    )))
}
