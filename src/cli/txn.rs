//! `kuberaft txn FILE` and `kuberaft compact REV`: etcd's Txn and Compact through the HTTP API.
//!
//! A txn file holds one `TxnRequest` in the JSON shape of `POST /v1/txn` (DESIGN.md §4), as JSON
//! or YAML ("-" reads it from stdin); a file whose first non-blank character is `{` is read as
//! JSON, anything else as YAML. The answer is printed as JSON. Exit codes: 0 when the txn
//! applied, whichever branch ran (`"succeeded": false` says that the compares did not hold and
//! the `failure` ops ran: a normal outcome that the txn itself chose, as etcdctl treats it); 1
//! when it was refused (nothing applied) or its outcome is unknown; 2 when the file cannot be
//! read or is not a txn.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;

use super::{to_json_line, write_stdout, CliError, ClientArgs};
use crate::base::wire::kv::TxnRequest;

/// The most a txn file may hold: far above what a member accepts (`--max-value-bytes` plus
/// 1 MiB), so that the member, which knows its limit, is the one that refuses a large txn.
const MAX_TXN_FILE_BYTES: u64 = 256 << 20;

#[derive(Debug, Args)]
pub struct TxnArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The txn as JSON or YAML (`compare`, `success`, `failure`; see the README), or "-" for stdin.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Discard the key history below this store revision; reads below it fail from then on.
    #[arg(value_parser = clap::value_parser!(i64).range(1..))]
    pub revision: i64,
    /// Answer only once the member that applied it has reclaimed the space of the discarded
    /// history, as etcdctl's `--physical` (give it a long enough `--timeout-ms`).
    #[arg(long)]
    pub physical: bool,
}

pub async fn run_txn(args: TxnArgs) -> Result<(), CliError> {
    let text = read_file(&args.file)?;
    let request = parse_txn(&text)?;
    let client = args.client.client()?;
    let answer = client.txn(&request).await?;
    write_stdout(to_json_line(&answer)?.as_bytes())
}

pub async fn run_compact(args: CompactArgs) -> Result<(), CliError> {
    let client = args.client.client()?;
    client.compact(args.revision, args.physical).await?;
    write_stdout(format!("compacted revision {}\n", args.revision).as_bytes())
}

/// The file's text ("-": stdin), bounded.
fn read_file(path: &PathBuf) -> Result<String, CliError> {
    let name = path.display().to_string();
    let mut bytes = Vec::new();
    let read = if name == "-" {
        std::io::stdin().lock().take(MAX_TXN_FILE_BYTES + 1).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|file| file.take(MAX_TXN_FILE_BYTES + 1).read_to_end(&mut bytes))
    };
    let shown = if name == "-" { "stdin".to_string() } else { name };
    read.map_err(|err| CliError::Usage(format!("cannot read the txn from {shown}: {err}")))?;
    if bytes.len() as u64 > MAX_TXN_FILE_BYTES {
        return Err(CliError::Usage(format!("the txn in {shown} is larger than {MAX_TXN_FILE_BYTES} bytes")));
    }
    String::from_utf8(bytes).map_err(|_| CliError::Usage(format!("the txn in {shown} is not UTF-8 text")))
}

/// A txn from JSON (text starting with `{`) or YAML.
pub fn parse_txn(text: &str) -> Result<TxnRequest, CliError> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|err| CliError::Usage(format!("the txn is not valid JSON of a txn: {err}")))
    } else {
        serde_saphyr::from_str(text)
            .map_err(|err| CliError::Usage(format!("the txn is not valid YAML of a txn: {err}")))
    }
}
