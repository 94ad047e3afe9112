//! What every command-line command shares (the `kuberaft` subcommands and `kuberaft bench`):
//! its error and exit code (2 for a wrong command line, 1 for work that failed), and writing
//! its output without panicking when the reader has gone away.

use std::io::Write;

/// Why a command failed, and so its exit code.
#[derive(Debug, PartialEq, Eq)]
pub enum CliError {
    /// The command line was wrong: exit 2.
    Usage(String),
    /// The command could not do its work: exit 1.
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failed(_) => 1,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            CliError::Usage(message) | CliError::Failed(message) => message,
        }
    }
}

/// Writes to stdout without panicking (`println!` panics when the reader has gone away, as in
/// `kuberaft kv list | head`); a closed pipe just ends the output.
pub fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(err) => Err(CliError::Failed(format!("cannot write to stdout: {err}"))),
    }
}

/// Writes a note to stderr (best effort: there is nowhere else to report a failure).
pub fn write_stderr(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// Pretty JSON of `value` followed by a newline.
pub fn to_json_line<T: serde::Serialize>(value: &T) -> Result<String, CliError> {
    let mut text =
        serde_json::to_string_pretty(value).map_err(|err| CliError::Failed(format!("encode JSON: {err}")))?;
    text.push('\n');
    Ok(text)
}
