//! `kuberaft snapshot save|restore|status` (DESIGN.md §5): a member's state machine into a file
//! you keep, a new member's data directory out of one, and what one holds. The file is
//! `store::backup`'s: kuberaft's MVCC stream framed as etcd frames its snapshots, so etcdctl's
//! `snapshot save` of a kuberaft member writes the same file.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Serialize;

use super::table::render;
use super::{to_json_line, write_stdout, CliError, ClientArgs, OutputFormat};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::operator::backup::objects::{self, Objects, S3Target};
use crate::operator::builders::{ENV_ACCESS_KEY_ID, ENV_SECRET_ACCESS_KEY};
use crate::process::restore::{check_file, nothing_to_do, restore, FileStatus, RestoreArgs};

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
    /// FILE may be `s3://<bucket>/<key>`, an object of an S3-compatible store (with
    /// --s3-endpoint; the credentials are read from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).
    Restore {
        #[command(flatten)]
        args: RestoreArgs,
        #[command(flatten)]
        s3: S3Flags,
    },
    /// Check a snapshot file whole and print what it holds.
    Status {
        file: PathBuf,
        #[arg(short = 'w', long = "write-out", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

/// Where `snapshot restore` reads an `s3://` FILE.
#[derive(Debug, Args)]
pub struct S3Flags {
    /// The S3-compatible store's URL, for FILE `s3://<bucket>/<key>`.
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// The region requests are signed for.
    #[arg(long, default_value = "us-east-1")]
    pub s3_region: String,
    /// Path-style requests (`<endpoint>/<bucket>/<key>`); `false`: virtual-hosted style.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_path_style: bool,
}

pub async fn run(command: SnapshotCommand) -> Result<(), CliError> {
    match command.action {
        SnapshotAction::Save { file, client } => save(&file, &client).await,
        SnapshotAction::Restore { args, s3 } => {
            let failed = |e: crate::process::StartError| CliError::Failed(e.to_string());
            if let Some(why) = nothing_to_do(&args).map_err(failed)? {
                return write_stdout(format!("{why}\n").as_bytes());
            }
            let fetched = match args.file.to_str().and_then(|f| f.strip_prefix("s3://")) {
                Some(location) => Some(fetch(location, &s3, &part_path(&args.data_dir)).await?),
                None => None,
            };
            let file = fetched.clone().unwrap_or_else(|| args.file.clone());
            let restored = restore(&RestoreArgs { file, ..args.clone() });
            if let Some(path) = fetched {
                let _ = std::fs::remove_file(path);
            }
            let restored = restored.map_err(failed)?;
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

/// Downloads the object `<bucket>/<key>` (`location`) into `to`, beside the data directory
/// it will restore (the same volume, so nothing else needs the room), durably.
async fn fetch(location: &str, flags: &S3Flags, to: &Path) -> Result<PathBuf, CliError> {
    let (bucket, key) = location
        .split_once('/')
        .filter(|(bucket, key)| !bucket.is_empty() && !key.is_empty())
        .ok_or_else(|| CliError::Usage(format!("s3://{location} is not s3://<bucket>/<key>")))?;
    let endpoint = flags
        .s3_endpoint
        .clone()
        .ok_or_else(|| CliError::Usage("an s3:// snapshot needs --s3-endpoint".to_string()))?;
    let credential = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| CliError::Usage(format!("an s3:// snapshot needs the credentials in {name}")))
    };
    let target = S3Target {
        endpoint,
        bucket: bucket.to_string(),
        region: flags.s3_region.clone(),
        prefix: String::new(),
        path_style: flags.s3_path_style,
        access_key_id: credential(ENV_ACCESS_KEY_ID)?,
        secret_access_key: credential(ENV_SECRET_ACCESS_KEY)?,
    };
    let cannot = |e: &dyn std::fmt::Display| CliError::Failed(format!("cannot read s3://{location}: {e}"));
    let objects = Objects::s3(&target).map_err(|e| cannot(&e))?;
    let written = async {
        let mut chunks = objects.read(key).await.map_err(|e| cannot(&e))?;
        let mut out = tokio::fs::File::create(to)
            .await
            .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", to.display())))?;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| cannot(&objects::classify(&e)))?;
            out.write_all(&chunk).await.map_err(|e| CliError::Failed(format!("cannot write {}: {e}", to.display())))?;
        }
        out.sync_all().await.map_err(|e| CliError::Failed(format!("cannot sync {}: {e}", to.display())))
    }
    .await;
    match written {
        Ok(()) => Ok(to.to_path_buf()),
        Err(e) => {
            let _ = std::fs::remove_file(to);
            Err(e)
        }
    }
}

/// Where `save` writes before the file is checked (etcdctl's name for it too), and where
/// `restore` downloads an `s3://` one.
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
