//! The exit codes of a member that the operator reads from a pod's last state
//! (CONTRACTS.md; DESIGN.md §3 and §6). Any other failure exits with [`EXIT_FAILED`].

/// Any start-up or run failure not listed below.
pub const EXIT_FAILED: u8 = 1;

/// The exit code of a member that refuses to start because its data is lost while its cluster
/// has already replicated to it, or because its data directory holds `member.json` without its
/// log (DESIGN.md §6). The operator reads it from the pod's last state and replaces the member.
pub const EXIT_DATA_LOST: u8 = 3;

/// The exit code of a member that refuses to start because its durable data is damaged in a way
/// no crash or power cut explains (a bad record in synced data, a missing snapshot or segment, a
/// log without `member.json`; DESIGN.md §3). The operator replaces the member, as for
/// [`EXIT_DATA_LOST`].
pub const EXIT_CORRUPT: u8 = 4;

/// The exit code of a member that refuses to start because its data was written in a format
/// newer than this binary reads (an image older than the one that wrote it; DESIGN.md §3). The
/// data is intact and must be kept: the operator never replaces such a member, it stops the
/// roll and says so (DESIGN.md §6); running the newer image again starts it.
pub const EXIT_NEWER_FORMAT: u8 = 5;
