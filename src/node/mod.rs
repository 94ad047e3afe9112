//! The runtime that drives the consensus core: the Raft loop (ticks, Ready handling, apply),
//! the peer transport, and the HTTP servers; `run` starts a member from its flags.

pub mod args;
pub mod handle;
pub mod ids;
pub mod runtime;
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
use transport::{PeerMembers, PeerServer, Transport, MEMBERS_PATH};

use crate::api::server::{client_router, Api};
use crate::raft::{Config, InitialState, Raft, RawNode, Role};
use crate::store::command::{encode, MemberInfo};
use crate::store::{read_meta, write_meta, KvStore, MemberMeta, Storage};

/// A start-up problem, said plainly; the process exits non-zero with it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StartError {
    message: String,
    /// The member's data is gone while the cluster counts on it: it exits with [`EXIT_DATA_LOST`].
    data_lost: bool,
}

impl From<String> for StartError {
    fn from(message: String) -> Self {
        StartError { message, data_lost: false }
    }
}

impl From<&str> for StartError {
    fn from(message: &str) -> Self {
        StartError::from(message.to_string())
    }
}

impl StartError {
    fn data_lost(message: String) -> Self {
        StartError { message, data_lost: true }
    }
}

/// The exit code of a member that refuses to start because its data is lost while its cluster
/// has already replicated to it (DESIGN.md §6). The operator reads it from the pod's last state
/// and replaces the member; any other failure exits with 1.
pub const EXIT_DATA_LOST: u8 = 3;

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
            if e.data_lost {
                ExitCode::from(EXIT_DATA_LOST)
            } else {
                ExitCode::FAILURE
            }
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
    let (storage, durable) = Storage::open(&args.data_dir).map_err(|e| StartError::from(e.to_string()))?;
    let meta = read_meta(&args.data_dir).map_err(|e| StartError::from(e.to_string()))?;
    let stored_meta = meta.clone();

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
                runtime.block_on(refuse_if_forgotten(
                    &initial,
                    &advertise_peer_url,
                    given_cluster_id,
                    meta.member_id,
                ))?;
                let state = InitialState::bootstrap(&voters);
                (meta, state)
            }
            ClusterState::Existing => {
                let meta = runtime.block_on(discover(&args, &initial, &advertise_peer_url))?;
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
        }),
        kv: RwLock::new(kv),
        applied: applied_tx,
        addresses: RwLock::new(addresses),
        errors: RwLock::new(
            problems.into_iter().map(|p| ("flags".to_string(), (p, std::time::Instant::now()))).collect(),
        ),
        metrics: Metrics::default(),
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
    let peer = PeerServer { shared: shared.clone(), loop_tx: tx.clone() };
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
        let mut stop_client = stop_rx.clone();
        let mut stop_peer = stop_rx.clone();
        // Small requests and answers go out at once (no Nagle delay behind an unacknowledged
        // segment): a round trip of the Raft loop is a few of them in a row.
        let nodelay = |tcp: &mut tokio::net::TcpStream| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY: {e}");
            }
        };
        let client_listener = axum::serve::ListenerExt::tap_io(client_listener, nodelay);
        let peer_listener = axum::serve::ListenerExt::tap_io(peer_listener, nodelay);
        let client_server = tokio::spawn(async move {
            axum::serve(client_listener, client_router(api))
                .with_graceful_shutdown(async move {
                    let _ = stop_client.wait_for(|s| *s).await;
                })
                .await
        });
        let peer_server = tokio::spawn(async move {
            axum::serve(peer_listener, transport::peer_router(peer))
                .with_graceful_shutdown(async move {
                    let _ = stop_peer.wait_for(|s| *s).await;
                })
                .await
        });
        wait_for_signal().await;
        tracing::info!("stopping: handing off leadership if leading");
        node.shutdown().await;
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), client_server).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), peer_server).await;
        Ok::<(), StartError>(())
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

/// A member that joins an existing cluster with empty data asks the listed peers who it is. It
/// waits (bounded) for the leader's answer, which alone knows whether the cluster has replicated
/// to this member before: then its data is lost, and it refuses to start (it would count toward
/// majorities with an empty log) until it is removed and added back under a new id.
async fn discover(
    args: &NodeArgs,
    initial: &[ids::InitialMember],
    advertise_peer_url: &str,
) -> Result<MemberMeta, StartError> {
    const ATTEMPTS: usize = 30;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| StartError::from(e.to_string()))?;
    let mut answers = Vec::new();
    let mut found: Option<MemberMeta> = None;
    for attempt in 0..ATTEMPTS {
        answers.clear();
        for m in initial.iter().filter(|m| m.peer_url != advertise_peer_url) {
            let list = match http.get(format!("{}{MEMBERS_PATH}", m.peer_url)).send().await {
                Ok(resp) if resp.status().is_success() => match resp.json::<PeerMembers>().await {
                    Ok(list) => list,
                    Err(e) => {
                        answers.push(format!("{}: {e}", m.peer_url));
                        continue;
                    }
                },
                Ok(resp) => {
                    answers.push(format!("{}: HTTP {}", m.peer_url, resp.status()));
                    continue;
                }
                Err(e) => {
                    answers.push(format!("{}: {e}", m.peer_url));
                    continue;
                }
            };
            let Some(me) = list.members.iter().find(|x| x.peer_url == advertise_peer_url) else {
                answers.push(format!("{}: not a member yet", m.peer_url));
                continue;
            };
            if me.name != args.name && !me.name.is_empty() {
                return Err(StartError::from(format!(
                    "the cluster knows {advertise_peer_url} as member '{}', not '{}'",
                    me.name, args.name
                )));
            }
            let member_id =
                u64::from_str_radix(&me.id, 16).map_err(|_| StartError::from("peer sent a bad member id"))?;
            let cluster_id = u64::from_str_radix(&list.cluster_id, 16)
                .map_err(|_| StartError::from("peer sent a bad cluster id"))?;
            if list.leader && me.matched > 0 {
                return Err(StartError::data_lost(format!(
                    "this member's data directory is empty, but the cluster already replicated {} entries to it as member {member_id:x} (its data is lost); \
                     it will not count toward majorities with an empty log. Remove it (`kuberaft member remove {member_id:x}`) and add it back \
                     (`kuberaft member add ...`); the operator does this by itself",
                    me.matched
                )));
            }
            found = Some(MemberMeta { cluster_id, member_id, name: args.name.clone() });
            if list.leader {
                return Ok(MemberMeta { cluster_id, member_id, name: args.name.clone() });
            }
        }
        // Known to a follower, but no leader answered: ask again, and settle for the follower's
        // word if no leader answers for half the attempts.
        if let Some(meta) = found.take() {
            if attempt >= ATTEMPTS / 2 {
                tracing::warn!("no leader answered; joining as member {:x} on a follower's word", meta.member_id);
                return Ok(meta);
            }
        }
        if attempt + 1 < ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    answers.truncate(6);
    Err(StartError::from(format!(
        "cannot join: no peer knows this member ({advertise_peer_url}); add it first with `kuberaft member add {} --peer-url {advertise_peer_url} ...` ({})",
        args.name,
        answers.join("; ")
    )))
}

/// A member that starts with empty data under `new` while its cluster runs and has heard from
/// it before lost its data: it must not bootstrap again (it would vote with an empty log and
/// could help elect a leader missing committed entries). It refuses to start until it has been
/// removed and added back as a new member.
async fn refuse_if_forgotten(
    initial: &[ids::InitialMember],
    advertise_peer_url: &str,
    cluster_id: u64,
    member_id: u64,
) -> Result<(), StartError> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(1))
        .build()
        .map_err(|e| StartError::from(e.to_string()))?;
    for m in initial.iter().filter(|m| m.peer_url != advertise_peer_url) {
        let Ok(resp) = http.get(format!("{}{MEMBERS_PATH}", m.peer_url)).send().await else { continue };
        let Ok(list) = resp.json::<PeerMembers>().await else { continue };
        if list.cluster_id != format!("{cluster_id:x}") {
            continue;
        }
        let me = format!("{member_id:x}");
        if list.members.iter().any(|x| x.id == me && x.matched > 0) {
            return Err(StartError::data_lost(format!(
                "this member's data directory is empty, but the running cluster already replicated to it (its data is lost); \
                 it will not vote with an empty log. Remove it (`kuberaft member remove {me}`), add it back \
                 (`kuberaft member add ...`) and start it with --initial-cluster-state existing"
            )));
        }
    }
    Ok(())
}
