//! `kuberaft watch KEY [--prefix] [--rev N] [--prev-kv]`: prints each change as it comes, as
//! etcdctl's `watch` does (the event type, then the key and the value on lines of their own, the
//! previous key and value first with `--prev-kv`), or one JSON `WatchResponse` per revision with
//! `-w json`. When its member fails it goes on from another, from the revision after the last
//! one printed: nothing is missed or printed twice; it leaves a member that has no leader (cut
//! off, so its state is stale) or that stops answering. It runs until stopped, or until the
//! history it needs is compacted (exit 1, with the compacted revision).

use clap::Args;

use super::{write_stderr, write_stdout, CliError, ClientArgs, OutputFormat};
use crate::base::wire::kv::KeyValue;
use crate::base::wire::watch::{EventType, WatchCreateRequest, WatchResponse};
use crate::client::ClientError;

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The key to watch (with --prefix: every key that starts with it).
    pub key: String,
    /// Watch every key that starts with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// Start at this store revision (inclusive), replaying the history from there.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub rev: Option<i64>,
    /// Print each key's previous value too.
    #[arg(long)]
    pub prev_kv: bool,
    /// `table`: etcdctl's lines; `json`: one WatchResponse per line.
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

fn key_value_lines(kv: &KeyValue, out: &mut Vec<u8>) {
    out.extend(kv.key_bytes().unwrap_or_default());
    out.push(b'\n');
    out.extend(kv.value_bytes().unwrap_or_default());
    out.push(b'\n');
}

/// etcdctl's simple form of one response.
pub fn event_lines(response: &WatchResponse) -> Vec<u8> {
    let mut out = Vec::new();
    for event in &response.events {
        out.extend_from_slice(match event.kind {
            EventType::Put => b"PUT\n",
            EventType::Delete => b"DELETE\n",
        });
        if let Some(prev) = &event.prev_kv {
            key_value_lines(prev, &mut out);
        }
        key_value_lines(&event.kv, &mut out);
    }
    out
}

pub async fn run(args: WatchArgs) -> Result<(), CliError> {
    let client = args.client.client()?;
    let request = WatchCreateRequest {
        key: Some(args.key.clone()),
        prefix: args.prefix,
        start_revision: args.rev.unwrap_or(0),
        prev_kv: args.prev_kv,
        ..WatchCreateRequest::default()
    };
    let mut watch = client.watch(request).await?;
    // Runs until stopped: each round waits for the next revision (reconnecting as needed; when
    // no member can be reached, trying again every second).
    loop {
        let response = match watch.next().await {
            Ok(response) => response,
            Err(ClientError::Unavailable { attempts }) => {
                write_stderr(&format!("no member to watch from ({}); trying again\n", attempts.join("; ")));
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if response.events.is_empty() {
            continue;
        }
        match args.output {
            OutputFormat::Json => {
                let mut line =
                    serde_json::to_vec(&response).map_err(|e| CliError::Failed(format!("encode JSON: {e}")))?;
                line.push(b'\n');
                write_stdout(&line)?
            }
            OutputFormat::Table => write_stdout(&event_lines(&response))?,
        }
    }
}
