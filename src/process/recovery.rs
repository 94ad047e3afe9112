//! `--quorum-recovery ID:SURVIVOR`: a member's half of the operator's quorum-loss recovery
//! (DESIGN.md §6). Every member of the cluster starts with the same value; what each does
//! depends on its name and on whether its data directory went through recovery ID already (the
//! marker `store::RECOVERY_MARKER_FILE`):
//! - the survivor starts once as with `--force-new-cluster`, keeping its log, as the only member;
//! - every other member sets its data aside and starts empty, so that it joins as the new
//!   learner the operator adds for it, never with a log of the old cluster;
//! - a directory marked with ID starts as usual: the recovery acts once per directory, and a
//!   member that restarts later, or joins later with a new volume, is not forced or wiped again.

use super::args::NodeArgs;
use super::error::StartError;
use crate::store::wal::{recovery_marker, set_aside_for_recovery, write_recovery_marker};

/// The longest recovery id (the operator's are 16 hex digits).
const MAX_ID_LEN: usize = 64;

/// A parsed `--quorum-recovery`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumRecovery {
    pub id: String,
    pub survivor: String,
}

impl QuorumRecovery {
    /// `ID:SURVIVOR`; empty is none. The id is letters, digits and `-` (it names a directory).
    pub fn parse(text: &str) -> Result<Option<QuorumRecovery>, StartError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let bad = || {
            StartError::from(format!(
                "--quorum-recovery {text:?}: expected ID:SURVIVOR, an id of at most {MAX_ID_LEN} letters, digits and '-', and a member name"
            ))
        };
        let (id, survivor) = text.split_once(':').ok_or_else(bad)?;
        let id_ok =
            !id.is_empty() && id.len() <= MAX_ID_LEN && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !id_ok || survivor.is_empty() || survivor.contains(':') {
            return Err(bad());
        }
        Ok(Some(QuorumRecovery { id: id.to_string(), survivor: survivor.to_string() }))
    }
}

/// What this start does for the recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// No recovery, or this directory went through it already.
    Nothing,
    /// This member is the survivor: it starts with `--force-new-cluster`, and [`finish`] marks
    /// the directory once that start is recorded.
    Force(QuorumRecovery),
    /// This member's data was set aside (or it had none) and its directory is marked: it starts
    /// empty.
    Emptied,
}

/// Before the data directory is opened: sets a non-survivor's data aside, or tells the survivor
/// to force a new cluster.
pub fn prepare(args: &NodeArgs) -> Result<Prepared, StartError> {
    let Some(recovery) = QuorumRecovery::parse(&args.quorum_recovery)? else { return Ok(Prepared::Nothing) };
    if recovery_marker(&args.data_dir).as_deref() == Some(recovery.id.as_str()) {
        return Ok(Prepared::Nothing);
    }
    if recovery.survivor == args.name {
        tracing::warn!(
            "quorum-loss recovery {}: {} is the survivor; it starts as the only member of its cluster, with its whole log (--force-new-cluster)",
            recovery.id,
            args.name
        );
        return Ok(Prepared::Force(recovery));
    }
    let moved = set_aside_for_recovery(&args.data_dir, &recovery.id)
        .map_err(|e| StartError::from(format!("quorum-loss recovery {}: {e}", recovery.id)))?;
    match moved {
        Some(aside) => tracing::warn!(
            "quorum-loss recovery {}: {} is not the survivor ({}); its data was set aside in {} and it starts empty, to join again as a new learner",
            recovery.id,
            args.name,
            recovery.survivor,
            aside.display()
        ),
        None => tracing::info!(
            "quorum-loss recovery {}: {} holds no data; it starts empty, to join as a new learner",
            recovery.id,
            args.name
        ),
    }
    Ok(Prepared::Emptied)
}

/// After the start is durable: the survivor's directory is marked, so later starts are plain.
pub fn finish(args: &NodeArgs, prepared: &Prepared) -> Result<(), StartError> {
    if let Prepared::Force(recovery) = prepared {
        write_recovery_marker(&args.data_dir, &recovery.id)
            .map_err(|e| StartError::from(format!("quorum-loss recovery {}: {e}", recovery.id)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_recovery_is_id_colon_survivor_or_nothing() {
        assert_eq!(QuorumRecovery::parse("").expect("none"), None);
        assert_eq!(QuorumRecovery::parse("  ").expect("none"), None);
        assert_eq!(
            QuorumRecovery::parse("0123abcd:etcd-1").expect("one"),
            Some(QuorumRecovery { id: "0123abcd".into(), survivor: "etcd-1".into() })
        );
        for bad in
            ["etcd-1", ":etcd-1", "ab:", "a/b:etcd-1", "../x:etcd-1", "ab:etcd:1", &format!("{}:e", "a".repeat(65))]
        {
            let err = QuorumRecovery::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("expected ID:SURVIVOR"), "{bad}: {err}");
        }
    }
}
