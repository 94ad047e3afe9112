//! `kuberaft kv put|get|del|list`: the key-value commands. Values are bytes end to end: `put`
//! takes them from the argument or stdin (`-`), `get` writes them to stdout unchanged, and
//! `list -w json` keeps them base64 as the API sends them. `get --rev` and `list --rev` read
//! the past; `list` has etcdctl's range options (`--limit`, `--from-key`, `--keys-only`,
//! `--sort-by`, `--order`).

use std::ffi::OsString;
use std::io::{IsTerminal, Read};

use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};

use super::table::{bytes_cell, render, text_cell};
use super::{to_json_line, write_stderr, write_stdout, CliError, ClientArgs, OutputFormat};
use crate::base::wire::{ListResponse, DEFAULT_MAX_VALUE_BYTES, MAX_LIST_LIMIT};

use crate::client::{decode_base64, Consistency, ListOptions, ListSort};

/// The most `kv put KEY -` reads from stdin: far above the server's default value limit, so the
/// server (which knows its `--max-value-bytes`) is the one that refuses a large value.
const MAX_STDIN_VALUE_BYTES: u64 = 64 * DEFAULT_MAX_VALUE_BYTES as u64;

#[derive(Debug, Args)]
pub struct KvCommand {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: KvAction,
}

#[derive(Debug, Subcommand)]
pub enum KvAction {
    /// Write a value ("-" reads it from stdin); prints OK.
    Put {
        key: String,
        /// The value bytes, or "-" to read them from stdin.
        value: OsString,
        /// Only if the key is at this mod revision (0: only if it does not exist).
        #[arg(long, conflicts_with = "lease")]
        prev_revision: Option<u64>,
        /// Attach the key to this lease (hex id, as `lease grant` prints): it is deleted when
        /// the lease expires or is revoked.
        #[arg(long, value_parser = super::lease::parse_lease_id)]
        lease: Option<i64>,
    },
    /// Print a value's bytes; exit 1 when the key does not exist.
    Get {
        key: String,
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
        /// Print the key's mod revision on a line of its own before the value.
        #[arg(long)]
        print_revision: bool,
        /// The value the key had at this store revision (compacted revisions cannot be read).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        rev: Option<i64>,
    },
    /// Delete a key; prints how many keys were deleted (0 or 1).
    #[command(alias = "delete", alias = "rm")]
    Del {
        key: String,
        /// Only if the key is at this mod revision.
        #[arg(long)]
        prev_revision: Option<u64>,
    },
    /// List keys with a prefix (all keys without one), in key order unless --sort-by says.
    #[command(alias = "ls")]
    List {
        #[arg(default_value = "")]
        prefix: String,
        /// At most this many keys (default 1000, at most 10000 a page).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_LIST_LIMIT as u64))]
        limit: Option<u64>,
        /// Start after this key (the last key of the previous page).
        #[arg(long)]
        start_after: Option<String>,
        /// Every key from PREFIX on (in key order), not only those that start with it.
        #[arg(long)]
        from_key: bool,
        /// Only the keys and their revisions, no values.
        #[arg(long)]
        keys_only: bool,
        /// Sort the keys by this.
        #[arg(long, value_enum)]
        sort_by: Option<SortByArg>,
        /// The order of --sort-by (ascend unless given).
        #[arg(long, value_enum, requires = "sort_by")]
        order: Option<OrderArg>,
        /// The keys as they were at this store revision.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        rev: Option<i64>,
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
        #[arg(short = 'w', long = "write-out", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

/// `--sort-by` of `kv list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortByArg {
    Key,
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    Value,
}

impl From<SortByArg> for ListSort {
    fn from(arg: SortByArg) -> Self {
        match arg {
            SortByArg::Key => ListSort::Key,
            SortByArg::Version => ListSort::Version,
            SortByArg::Create => ListSort::Create,
            SortByArg::Mod => ListSort::Mod,
            SortByArg::Value => ListSort::Value,
        }
    }
}

/// `--order` of `kv list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OrderArg {
    Ascend,
    Descend,
}

/// `--consistency` of `kv get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// Through the leader: never stale.
    Linearizable,
    /// From the member asked: fast, possibly stale.
    Serializable,
}

impl From<ConsistencyArg> for Consistency {
    fn from(arg: ConsistencyArg) -> Self {
        match arg {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Serializable => Consistency::Serializable,
        }
    }
}

pub async fn run(command: KvCommand) -> Result<(), CliError> {
    let client = command.client.client()?;
    match command.action {
        KvAction::Put { key, value, prev_revision, lease } => {
            let value = value_bytes(value)?;
            match lease {
                // Through etcd's txn, which carries the lease (the plain PUT does not).
                Some(lease) => {
                    let (value, value_base64) = crate::base::wire::kv::bytes_field(value.to_vec());
                    let put = crate::base::wire::kv::PutRequest {
                        key: Some(key),
                        value,
                        value_base64,
                        lease,
                        ..Default::default()
                    };
                    let txn = crate::base::wire::kv::TxnRequest {
                        success: vec![crate::base::wire::kv::RequestOp::RequestPut(put)],
                        ..Default::default()
                    };
                    client.txn(&txn).await?;
                }
                None => {
                    client.put(&key, value, prev_revision).await?;
                }
            }
            write_stdout(b"OK\n")
        }
        KvAction::Get { key, consistency, print_revision, rev } => {
            let Some(found) = client.get_at(&key, rev, consistency.into()).await? else {
                return Err(CliError::Failed(match rev {
                    Some(rev) => format!("key not found at revision {rev}: {key}"),
                    None => format!("key not found: {key}"),
                }));
            };
            let mut out = Vec::with_capacity(found.value.len() + 24);
            if print_revision {
                out.extend_from_slice(format!("{}\n", found.mod_revision).as_bytes());
            }
            out.extend_from_slice(&found.value);
            // Raw bytes for pipes; a terminal gets its prompt back on a line of its own.
            if std::io::stdout().is_terminal() && !found.value.ends_with(b"\n") {
                out.push(b'\n');
            }
            write_stdout(&out)
        }
        KvAction::Del { key, prev_revision } => {
            let deleted = client.delete(&key, prev_revision).await?;
            write_stdout(format!("{}\n", deleted.deleted).as_bytes())
        }
        KvAction::List {
            prefix,
            limit,
            start_after,
            from_key,
            keys_only,
            sort_by,
            order,
            rev,
            consistency,
            output,
        } => {
            let options = ListOptions {
                prefix,
                limit: limit.and_then(|l| usize::try_from(l).ok()),
                start_after,
                from_key,
                keys_only,
                sort_by: sort_by.map(ListSort::from),
                descending: order == Some(OrderArg::Descend),
                revision: rev,
                consistency: consistency.into(),
            };
            let listed = client.list_with(&options).await?;
            let text = match output {
                OutputFormat::Json => to_json_line(&listed)?,
                OutputFormat::Table if keys_only => keys_table(&listed),
                OutputFormat::Table => list_table(&listed),
            };
            write_stdout(text.as_bytes())?;
            if listed.more && output == OutputFormat::Table {
                let last = listed.kvs.last().map(|kv| kv.key.as_str()).unwrap_or_default();
                write_stderr(&more_hint(sort_by, order, last));
            }
            Ok(())
        }
    }
}

/// What `kv list` says on stderr when a page is cut by `--limit`. `--start-after` continues a
/// page only in ascending key order; in any other order there is no key to continue after.
pub(crate) fn more_hint(sort_by: Option<SortByArg>, order: Option<OrderArg>, last: &str) -> String {
    let by_key = sort_by.is_none_or(|s| s == SortByArg::Key);
    if by_key && order != Some(OrderArg::Descend) {
        format!("(more keys follow; continue with --start-after '{last}')\n")
    } else {
        "(more keys follow; raise --limit to see them)\n".to_string()
    }
}

/// The bytes of a `put` value: the argument as given (any bytes on Unix), or stdin for "-".
fn value_bytes(value: OsString) -> Result<Bytes, CliError> {
    if value == "-" {
        let mut bytes = Vec::new();
        // Bounded, and never cut silently: a longer stdin is refused, not truncated.
        std::io::stdin()
            .lock()
            .take(MAX_STDIN_VALUE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|err| CliError::Failed(format!("cannot read the value from stdin: {err}")))?;
        if bytes.len() as u64 > MAX_STDIN_VALUE_BYTES {
            return Err(CliError::Failed(format!("the value on stdin is larger than {MAX_STDIN_VALUE_BYTES} bytes")));
        }
        return Ok(Bytes::from(bytes));
    }
    Ok(Bytes::from(os_bytes(value)))
}

#[cfg(unix)]
fn os_bytes(value: OsString) -> Vec<u8> {
    use std::os::unix::ffi::OsStringExt;
    value.into_vec()
}

#[cfg(not(unix))]
fn os_bytes(value: OsString) -> Vec<u8> {
    value.to_string_lossy().into_owned().into_bytes()
}

/// KEY, CREATE, MOD, VERSION (`--keys-only`).
pub fn keys_table(listed: &ListResponse) -> String {
    let rows: Vec<Vec<String>> = listed
        .kvs
        .iter()
        .map(|item| {
            vec![
                text_cell(&item.key),
                item.create_revision.to_string(),
                item.mod_revision.to_string(),
                item.version.to_string(),
            ]
        })
        .collect();
    render(&["KEY", "CREATE", "MOD", "VERSION"], &rows)
}

/// KEY, VALUE, CREATE, MOD, VERSION; values shown as text when printable.
pub fn list_table(listed: &ListResponse) -> String {
    let rows: Vec<Vec<String>> = listed
        .kvs
        .iter()
        .map(|item| {
            let value = match decode_base64(&item.value) {
                Some(bytes) => bytes_cell(&bytes),
                None => "<undecodable>".to_string(),
            };
            vec![
                text_cell(&item.key),
                value,
                item.create_revision.to_string(),
                item.mod_revision.to_string(),
                item.version.to_string(),
            ]
        })
        .collect();
    render(&["KEY", "VALUE", "CREATE", "MOD", "VERSION"], &rows)
}
