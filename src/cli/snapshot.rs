//! `kuberaft snapshot save|restore|status` (DESIGN.md §5): a member's state machine into a file
//! you keep, a new member's data directory out of one, and what one holds. The file is
//! `store::backup`'s: kuberaft's MVCC stream framed as etcd frames its snapshots, so etcdctl's
//! `snapshot save` of a kuberaft member writes the same file.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Serialize;

use super::table::render;
use super::{to_json_line, write_stdout, CliError, ClientArgs, OutputFormat};
use crate::process::restore::{check_file, restore, FileStatus, RestoreArgs};

#[derive(Debug, Args)]
pub struct SnapshotCommand {
    #[command(subcommand)]
    pub action: SnapshotAction,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotAction {
    /// Save a snapshot of one member (one --endpoints) into FILE, checked before it is kept.
    Save {
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a new member's data directory from a snapshot (run once per member of the new cluster).
    Restore(RestoreArgs),
    /// Check a snapshot file whole and print what it holds.
    Status {
        file: PathBuf,
        #[arg(short = 'w', long = "write-out", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

pub async fn run(command: SnapshotCommand) -> Result<(), CliError> {
    match command.action {
        SnapshotAction::Save { file, client } => save(&file, &client).await,
        SnapshotAction::Restore(args) => {
            let restored = restore(&args).map_err(|e| CliError::Failed(e.to_string()))?;
            let snapshot = &restored.snapshot.stream;
            let text = format!(
                "restored the snapshot of revision {} ({} keys) into {}: member {} (id {:x}) of cluster {:x} with {} members\n",
                snapshot.revision,
                snapshot.keys,
                args.data_dir.display(),
                args.name,
                restored.member_id,
                restored.cluster_id,
                restored.members
            );
            write_stdout(text.as_bytes())
        }
        SnapshotAction::Status { file, output } => {
            let status = check_file(&file).map_err(|e| CliError::Failed(e.to_string()))?;
            let text = match output {
                OutputFormat::Json => to_json_line(&StatusReport::of(&status))?,
                OutputFormat::Table => status_table(&status),
            };
            write_stdout(text.as_bytes())
        }
    }
}

/// Where `save` writes before the file is checked (etcdctl's name for it too).
fn part_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

async fn save(file: &Path, args: &ClientArgs) -> Result<(), CliError> {
    let endpoints: Vec<&String> = args.endpoints.iter().filter(|e| !e.trim().is_empty()).collect();
    let [endpoint] = endpoints.as_slice() else {
        // etcdctl's words.
        return Err(CliError::Usage("snapshot must be requested to one selected node, not multiple".to_string()));
    };
    let client = args.client()?;
    let part = part_path(file);
    let written = async {
        let mut out = tokio::fs::File::create(&part)
            .await
            .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", part.display())))?;
        let saved = client.snapshot_to(endpoint, &mut out).await?;
        out.sync_all().await.map_err(|e| CliError::Failed(format!("cannot sync {}: {e}", part.display())))?;
        drop(out);
        let status =
            check_file(&part).map_err(|e| CliError::Failed(format!("the snapshot received is not sound: {e}")))?;
        Ok::<_, CliError>((saved, status))
    }
    .await;
    let (saved, status) = match written {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    std::fs::rename(&part, file)
        .map_err(|e| CliError::Failed(format!("cannot rename {} to {}: {e}", part.display(), file.display())))?;
    let text = format!(
        "Snapshot saved at {} (revision {}, {} keys, {} bytes)\n",
        file.display(),
        saved.revision,
        status.stream.keys,
        status.size
    );
    write_stdout(text.as_bytes())
}

/// `snapshot status -w json`: etcdctl's fields (`hash`, `revision`, `totalKey`, `totalSize`),
/// then kuberaft's.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// The stream's CRC-32.
    pub hash: u32,
    pub revision: i64,
    pub total_key: u64,
    pub total_size: u64,
    pub compact_revision: i64,
    pub versions: u64,
    pub format: u32,
    pub sha256: String,
    pub members: Vec<MemberReport>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberReport {
    pub id: String,
    pub name: String,
    #[serde(rename = "peerURL")]
    pub peer_url: String,
    pub is_learner: bool,
}

impl StatusReport {
    pub fn of(status: &FileStatus) -> StatusReport {
        let s = &status.stream;
        StatusReport {
            hash: s.checksum,
            revision: s.revision,
            total_key: s.keys,
            total_size: status.size,
            compact_revision: s.compacted,
            versions: s.versions,
            format: s.format,
            sha256: status.sha256.clone(),
            members: status
                .members
                .iter()
                .map(|(m, voter)| MemberReport {
                    id: format!("{:x}", m.id),
                    name: m.name.clone(),
                    peer_url: m.peer_url.clone(),
                    is_learner: !voter,
                })
                .collect(),
        }
    }
}

/// etcdctl's columns (HASH, REVISION, TOTAL KEYS, TOTAL SIZE), then the format and the members.
pub fn status_table(status: &FileStatus) -> String {
    let s = &status.stream;
    let members: Vec<String> = status
        .members
        .iter()
        .map(|(m, voter)| if *voter { m.name.clone() } else { format!("{} (learner)", m.name) })
        .collect();
    let row = vec![
        format!("{:x}", s.checksum),
        s.revision.to_string(),
        s.keys.to_string(),
        status.size.to_string(),
        s.format.to_string(),
        members.join(","),
    ];
    render(&["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE", "FORMAT", "MEMBERS"], &[row])
}
