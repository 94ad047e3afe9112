//! `kuberaft endpoint status`: asks every endpoint for its own status, like etcdctl, one row
//! per endpoint whether it answered or not. Exits 1 when any endpoint failed, after printing.

use clap::{Args, Subcommand};
use serde::Serialize;

use super::table::{clean_cell, or_dash, render};
use super::{to_json_line, write_stdout, CliError, ClientArgs, OutputFormat};
use crate::base::wire::Status;
use crate::client::ClientError;

#[derive(Debug, Args)]
pub struct EndpointCommand {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: EndpointAction,
}

#[derive(Debug, Subcommand)]
pub enum EndpointAction {
    /// One row per endpoint: name, id, role, term, leader, commit and applied index, revision.
    Status {
        #[arg(short = 'w', long = "write-out", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

/// One endpoint in `-w json`: its status, or why there is none.
#[derive(Debug, Serialize)]
pub struct EndpointReport<'a> {
    pub endpoint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'a Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub async fn run(command: EndpointCommand) -> Result<(), CliError> {
    let client = command.client.client()?;
    match command.action {
        EndpointAction::Status { output } => {
            let statuses = client.statuses().await;
            let text = match output {
                OutputFormat::Json => to_json_line(&status_reports(&statuses))?,
                OutputFormat::Table => status_table(&statuses),
            };
            write_stdout(text.as_bytes())?;
            let failed = statuses.iter().filter(|(_, status)| status.is_err()).count();
            if failed > 0 {
                return Err(CliError::Failed(format!("{failed} of {} endpoints did not answer", statuses.len())));
            }
            Ok(())
        }
    }
}

pub fn status_reports(statuses: &[(String, Result<Status, ClientError>)]) -> Vec<EndpointReport<'_>> {
    statuses
        .iter()
        .map(|(endpoint, status)| EndpointReport {
            endpoint,
            status: status.as_ref().ok(),
            error: status.as_ref().err().map(|err| error_text(endpoint, err)),
        })
        .collect()
}

/// ENDPOINT, NAME, ID, ROLE, TERM, LEADER, COMMIT, APPLIED, REVISION, ERRORS. An endpoint that
/// did not answer gets dashes and its error; one that answered shows the errors it reports.
pub fn status_table(statuses: &[(String, Result<Status, ClientError>)]) -> String {
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|(endpoint, status)| match status {
            Ok(status) => vec![
                endpoint.clone(),
                or_dash(&status.name),
                or_dash(&status.id),
                status.role.to_string(),
                status.term.to_string(),
                or_dash(&status.leader),
                status.commit_index.to_string(),
                status.applied_index.to_string(),
                status.revision.to_string(),
                clean_cell(&status.errors.join("; ")),
            ],
            Err(err) => {
                let mut row = vec![endpoint.clone()];
                row.extend(std::iter::repeat_n("-".to_string(), 8));
                row.push(clean_cell(&error_text(endpoint, err)));
                row
            }
        })
        .collect();
    render(&["ENDPOINT", "NAME", "ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "REVISION", "ERRORS"], &rows)
}

/// The error of one endpoint, without repeating the endpoint (its row already names it).
fn error_text(endpoint: &str, err: &ClientError) -> String {
    match err {
        ClientError::Unavailable { attempts } if attempts.len() == 1 => {
            let attempt = &attempts[0];
            attempt.strip_prefix(endpoint).and_then(|rest| rest.strip_prefix(": ")).unwrap_or(attempt).to_string()
        }
        other => other.to_string(),
    }
}
