//! `kuberaft snapshot restore FILE --data-dir D --name N --initial-cluster L`: the data
//! directory of one member of a new cluster, made from a snapshot file (`store::backup`), as
//! etcdctl's `snapshot restore` makes one. Run it once per member with the same file, list and
//! token; then start every member with those flags.
//!
//! The directory is that of a member that bootstrapped the new cluster and applied the
//! snapshot's state: `member.json` with the new cluster's id (from `--initial-cluster` and
//! `--initial-cluster-token`, as at any bootstrap) and this member's id; a log holding the same
//! bootstrap entries every initial member writes; and the state machine installed from the
//! snapshot with its keys, revisions, leases and auth, but with none of the old cluster's
//! members or Raft indexes (`KvStore::restore`). At the first start the bootstrap entries apply
//! on top and make the new member table, and the members elect a leader as a new cluster does.
//!
//! Nothing is written before the whole file checked out (SHA-256, every record, CRC-32), and the
//! directory is built beside `--data-dir` and renamed into place once complete and durable, so
//! a failure leaves no partial data directory behind.

use std::path::{Path, PathBuf};

use clap::Args;

use super::args::ClusterState;
use super::error::StartError;
use super::member::{bootstrap_voters, STATE_FILE};
use crate::base::ids::{cluster_id, initial_member_id, parse_initial_cluster, validate_url};
use crate::raft::InitialState;
use crate::store::backup::restore_state_machine;
pub use crate::store::backup::{check_file, FileStatus};
use crate::store::{open_data_dir, read_meta, write_meta, MemberMeta};

#[derive(Clone, Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot file (`kuberaft snapshot save`, or etcdctl's `snapshot save` from a kuberaft
    /// member).
    pub file: PathBuf,
    /// The member's data directory to make; it must not exist, or be empty.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// This member's name in `--initial-cluster`.
    #[arg(long)]
    pub name: String,
    /// `name=peerURL,...` of every member of the new cluster, as each will start with.
    #[arg(long)]
    pub initial_cluster: String,
    /// Part of the new cluster's id: give the new cluster its own, so that it never talks to the
    /// old one (`kuberaft node`'s default, `etcd`, otherwise).
    #[arg(long, default_value = "etcd")]
    pub initial_cluster_token: String,
    /// This member's peer URL; it must be the one `--initial-cluster` lists for `--name`
    /// (default: that one). etcd's `--initial-advertise-peer-urls`.
    #[arg(long, alias = "initial-advertise-peer-urls")]
    pub advertise_peer_url: Option<String>,
    /// `existing`: this member joins a cluster that has formed and gets its data from the
    /// leader, so nothing is restored (for an init container, which runs for every member).
    #[arg(long, value_enum, default_value = "new")]
    pub initial_cluster_state: ClusterState,
    /// A `--data-dir` that already holds this member's data of the cluster being restored is
    /// kept as it is, instead of refused (an init container runs again whenever its pod is made
    /// again). Data of another cluster is still refused.
    #[arg(long)]
    pub keep_existing: bool,
}

/// What `restore` made.
#[derive(Clone, Debug)]
pub struct Restored {
    pub snapshot: FileStatus,
    pub cluster_id: u64,
    pub member_id: u64,
    pub members: usize,
}

/// Why there is nothing to restore (`--initial-cluster-state existing`, or `--keep-existing`
/// and the data directory already holds this member of the cluster being restored), or `None`
/// when [`restore`] should run. Data of another cluster is an error: a volume left by an
/// earlier cluster must not start in place of the backup.
pub fn nothing_to_do(args: &RestoreArgs) -> Result<Option<String>, StartError> {
    if args.initial_cluster_state == ClusterState::Existing {
        return Ok(Some(format!(
            "nothing restored: --initial-cluster-state is existing, so member {} joins the cluster and gets its data from the leader",
            args.name
        )));
    }
    if !args.keep_existing {
        return Ok(None);
    }
    let Some(meta) = read_meta(&args.data_dir)? else { return Ok(None) };
    let initial = parse_initial_cluster(&args.initial_cluster).map_err(StartError::from)?;
    let cluster = cluster_id(&initial, &args.initial_cluster_token);
    if meta.cluster_id == cluster && meta.name == args.name {
        return Ok(Some(format!(
            "nothing restored: {} already holds member {} of cluster {cluster:x}, kept as it is",
            args.data_dir.display(),
            args.name
        )));
    }
    Err(StartError::from(format!(
        "--data-dir {} holds member {} of cluster {:x}, not member {} of the cluster being restored ({cluster:x}): the volume of an earlier cluster? Delete it to restore into it",
        args.data_dir.display(),
        meta.name,
        meta.cluster_id,
        args.name
    )))
}

/// Makes `--data-dir` from the snapshot (module docs).
pub fn restore(args: &RestoreArgs) -> Result<Restored, StartError> {
    let initial = parse_initial_cluster(&args.initial_cluster).map_err(StartError::from)?;
    let me = initial.iter().find(|m| m.name == args.name).ok_or_else(|| {
        StartError::from(format!("--initial-cluster does not list this member's name '{}'", args.name))
    })?;
    if let Some(url) = &args.advertise_peer_url {
        validate_url(url).map_err(|e| StartError::from(format!("--advertise-peer-url: {e}")))?;
        if url.trim_end_matches('/') != me.peer_url {
            return Err(StartError::from(format!(
                "--initial-cluster lists {}={} but --advertise-peer-url is {url}",
                me.name, me.peer_url
            )));
        }
    }
    check_target(&args.data_dir)?;
    let snapshot = check_file(&args.file).map_err(|e| StartError::from(format!("cannot restore: {e}")))?;
    let cluster_id = cluster_id(&initial, &args.initial_cluster_token);
    let meta = MemberMeta { cluster_id, member_id: initial_member_id(cluster_id, me), name: args.name.clone() };
    let building = building_path(&args.data_dir);
    let built = build(&building, &args.file, &snapshot, &meta, &bootstrap_voters(&initial, cluster_id));
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&building);
        return Err(e);
    }
    std::fs::rename(&building, &args.data_dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&building);
        StartError::from(format!("cannot rename {} to {}: {e}", building.display(), args.data_dir.display()))
    })?;
    sync_parent(&args.data_dir)?;
    Ok(Restored { snapshot, cluster_id, member_id: meta.member_id, members: initial.len() })
}

/// The data directory must not exist, or be an empty directory (a volume's mount point).
fn check_target(dir: &Path) -> Result<(), StartError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(StartError::from(format!(
                "--data-dir {} exists and is not empty: restore makes a new member's data directory",
                dir.display()
            ))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StartError::from(format!("--data-dir {}: {e}", dir.display()))),
    }
}

/// Where the directory is built: beside it, so that the rename stays on one file system.
fn building_path(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".restoring");
    PathBuf::from(name)
}

fn build(
    dir: &Path,
    file: &Path,
    snapshot: &FileStatus,
    meta: &MemberMeta,
    voters: &[(u64, bytes::Bytes)],
) -> Result<(), StartError> {
    if dir.exists() {
        // Left by a restore that stopped part way.
        std::fs::remove_dir_all(dir).map_err(|e| StartError::from(format!("cannot remove {}: {e}", dir.display())))?;
    }
    // The order of a first start (`store::wal::data_dir`): the log's first segment, then
    // member.json, then the entries.
    let data = open_data_dir(dir)?;
    write_meta(dir, meta)?;
    let state = InitialState::bootstrap(voters);
    let mut storage = data.storage;
    storage
        .persist(Some(&state.hard_state), None, &state.entries)
        .map_err(|e| StartError::from(format!("cannot write the bootstrap entries: {e}")))?;
    drop(storage);
    restore_state_machine(file, snapshot, &dir.join(STATE_FILE))
        .map_err(|e| StartError::from(format!("cannot restore the state machine: {e}")))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StartError::from(format!("cannot sync {}: {e}", dir.display())))
}

fn sync_parent(dir: &Path) -> Result<(), StartError> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| StartError::from(format!("cannot sync {}: {e}", parent.display())))
}
