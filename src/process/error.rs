//! How a member's start fails, said plainly, and the exit code each failure gets
//! (`crate::base::exit`).

use crate::base::exit::{EXIT_CORRUPT, EXIT_DATA_LOST, EXIT_FAILED, EXIT_NEWER_FORMAT};
use crate::store::StoreError;

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
    /// The member's data is of a newer format than this binary reads: [`EXIT_NEWER_FORMAT`].
    NewerFormat,
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

impl From<StoreError> for StartError {
    fn from(error: StoreError) -> Self {
        let kind = if error.is_data_lost() {
            StartFailure::DataLost
        } else if error.is_corrupt() {
            StartFailure::Corrupt
        } else if error.is_newer_format() {
            StartFailure::NewerFormat
        } else {
            StartFailure::Failed
        };
        StartError { message: error.to_string(), kind }
    }
}

impl StartError {
    pub(super) fn data_lost(message: String) -> Self {
        StartError { message, kind: StartFailure::DataLost }
    }

    /// The process's exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            StartFailure::Failed => EXIT_FAILED,
            StartFailure::DataLost => EXIT_DATA_LOST,
            StartFailure::Corrupt => EXIT_CORRUPT,
            StartFailure::NewerFormat => EXIT_NEWER_FORMAT,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn each_kind_of_store_error_gets_its_exit_code_and_newer_data_is_never_lost_or_corrupt() {
        let path = PathBuf::from("/data");
        let cases = [
            (StoreError::NewerFormat { path: path.clone(), detail: "d".into() }, EXIT_NEWER_FORMAT),
            (StoreError::corrupt(&path, 0, "d"), EXIT_CORRUPT),
            (StoreError::Inconsistent { path: path.clone(), detail: "d".into() }, EXIT_CORRUPT),
            (
                StoreError::DataLost { path: path.clone(), member_id: 1, name: "n".into(), detail: "d".into() },
                EXIT_DATA_LOST,
            ),
            (StoreError::Locked { path }, EXIT_FAILED),
        ];
        for (error, code) in cases {
            let text = error.to_string();
            assert_eq!(StartError::from(error).exit_code(), code, "{text}");
        }
    }
}
