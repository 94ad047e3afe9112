//! `kuberaft backup take|delete` (DESIGN.md §5): backups into a directory, as the operator's
//! Job for a PersistentVolumeClaim destination runs them (DESIGN.md §6) and as a CronJob of
//! your own may. `take` streams a snapshot of one member into `DIR/<NAME>-<UTC time>-r<revision>.snap`
//! with the operator's own code for object storage (`operator::backup::upload`, here on
//! `object_store`'s local file system), checked on the way and synced, then prunes the oldest of
//! `NAME`'s files beyond the retention. Both print one JSON line, and with `--result FILE` write
//! it there too (the Job's termination message, which the operator reads): what was kept and
//! pruned, or why it failed.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use k8s_openapi::jiff::Timestamp;

use super::{write_stdout, CliError, ClientArgs};
use crate::operator::backup::job::BackupResult;
use crate::operator::backup::objects::{Failure, Objects};
use crate::operator::backup::{object_name, to_prune, upload, Incoming};
use crate::operator::crd::RetentionSpec;

#[derive(Debug, Args)]
pub struct BackupCommand {
    #[command(subcommand)]
    pub action: BackupAction,
}

#[derive(Debug, Subcommand)]
pub enum BackupAction {
    /// Take a snapshot of one member (one --endpoints) into DIR, then prune NAME's oldest files.
    Take {
        /// The directory the file goes to (made when missing).
        #[arg(long)]
        dir: PathBuf,
        /// The files are `<NAME>-<UTC time>-r<revision>.snap`.
        #[arg(long)]
        name: String,
        /// Keep the newest KEEP of NAME's files and delete the rest (none is deleted when not given).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        keep: Option<u32>,
        /// Delete NAME's files older than this many hours too, but never the newest.
        #[arg(long, requires = "keep", value_parser = clap::value_parser!(u32).range(1..))]
        max_age_hours: Option<u32>,
        /// Also write the result (JSON) to this file, such as a container's termination message.
        #[arg(long)]
        result: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete FILE (a path under DIR, as `take` reported it); one that is not there is no error.
    Delete {
        #[arg(long)]
        dir: PathBuf,
        file: String,
        #[arg(long)]
        result: Option<PathBuf>,
    },
}

pub async fn run(command: BackupCommand) -> Result<(), CliError> {
    let (result, to) = match command.action {
        BackupAction::Take { dir, name, keep, max_age_hours, result, client } => {
            let retention = keep.map(|count| RetentionSpec { count, max_age_hours });
            (take(&dir, &name, retention.as_ref(), &client).await, result)
        }
        BackupAction::Delete { dir, file, result } => (delete(&dir, &file).await, result),
    };
    let report = match &result {
        Ok(report) => report.clone(),
        Err(failure) => BackupResult::failed(failure),
    };
    let line = serde_json::to_string(&report).map_err(|e| CliError::Failed(e.to_string()))? + "\n";
    if let Some(path) = to {
        std::fs::write(&path, &line)
            .map_err(|e| CliError::Failed(format!("cannot write the result to {}: {e}", path.display())))?;
    }
    match result {
        Ok(_) => write_stdout(line.as_bytes()),
        Err(failure) => Err(CliError::Failed(failure.to_string())),
    }
}

/// Opens DIR (made when missing) as a store of files.
fn open(dir: &Path) -> Result<Objects, Failure> {
    std::fs::create_dir_all(dir).map_err(|e| Failure::Failed(format!("cannot make {}: {e}", dir.display())))?;
    Objects::local(dir)
}

async fn take(
    dir: &Path,
    name: &str,
    retention: Option<&RetentionSpec>,
    args: &ClientArgs,
) -> Result<BackupResult, Failure> {
    check_name(name)?;
    let endpoints: Vec<&String> = args.endpoints.iter().filter(|e| !e.trim().is_empty()).collect();
    let [endpoint] = endpoints.as_slice() else {
        return Err(Failure::Failed("a backup is taken from one member: give one --endpoints".to_string()));
    };
    let objects = open(dir)?;
    let client = args.client().map_err(|e| Failure::Failed(e.message().to_string()))?;
    let snapshot = client
        .snapshot(endpoint)
        .await
        .map_err(|e| Failure::Failed(format!("cannot take a snapshot of {endpoint}: {e}")))?;
    let incoming = Incoming::from(snapshot);
    let file = object_name(name, Timestamp::now(), incoming.revision);
    let revision = incoming.revision;
    let (size, sha256) = upload(&objects, &file, incoming).await?;
    sync(&dir.join(&file), dir)?;
    let mut result = BackupResult {
        file: Some(file),
        revision: Some(revision),
        size: Some(size),
        sha256: Some(sha256),
        time: Some(Timestamp::now().to_string()),
        ..BackupResult::default()
    };
    if let Some(retention) = retention {
        let stored = objects.list().await;
        let pruned = async {
            for old in to_prune(name, &stored?, retention, Timestamp::now()) {
                objects.delete(&old).await?;
                result.pruned.push(old);
            }
            Ok::<_, Failure>(())
        }
        .await;
        result.prune_error = pruned.err().map(|e| e.to_string());
    }
    Ok(result)
}

/// A name the files can start with: one path component (the retention prunes by it).
fn check_name(name: &str) -> Result<(), Failure> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.len() > 200 {
        return Err(Failure::Failed(format!("--name {name:?} is not a file name (no '/', at most 200 bytes)")));
    }
    Ok(())
}

/// The file and its directory to the disk: a backup reported kept survives a crash.
fn sync(file: &Path, dir: &Path) -> Result<(), Failure> {
    let cannot = |path: &Path, e: std::io::Error| Failure::Failed(format!("cannot sync {}: {e}", path.display()));
    std::fs::File::open(file).and_then(|f| f.sync_all()).map_err(|e| cannot(file, e))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| cannot(dir, e))
}

async fn delete(dir: &Path, file: &str) -> Result<BackupResult, Failure> {
    if !crate::operator::crd::valid_volume_path(file) {
        return Err(Failure::Failed(format!("{file:?} is not a relative path inside {}", dir.display())));
    }
    let objects = Objects::local(dir)?;
    objects.delete(file).await?;
    Ok(BackupResult { file: Some(file.to_string()), ..BackupResult::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_path_component_and_deletes_stay_inside_the_directory() {
        assert!(check_name("etcd").is_ok());
        for bad in ["", "a/b", "..", "/etc"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        let dir = tempfile::tempdir().expect("a directory");
        let outside = dir.path().join("keep.snap");
        std::fs::write(&outside, b"x").expect("write");
        let inner = dir.path().join("backups");
        std::fs::create_dir(&inner).expect("mkdir");
        for escape in ["../keep.snap", "/tmp/x", "a//b"] {
            let refused = runtime.block_on(delete(&inner, escape)).expect_err(escape);
            assert!(refused.message().contains("is not a relative path inside"), "{refused}");
        }
        assert!(outside.exists(), "nothing outside the directory is touched");
        std::fs::write(inner.join("old.snap"), b"x").expect("write");
        let deleted = runtime.block_on(delete(&inner, "old.snap")).expect("deleted");
        assert_eq!(deleted.file.as_deref(), Some("old.snap"));
        assert!(!inner.join("old.snap").exists());
        runtime.block_on(delete(&inner, "old.snap")).expect("a file that is not there is no error");
    }
}
