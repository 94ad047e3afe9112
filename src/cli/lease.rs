//! `kuberaft lease grant|revoke|keep-alive|ttl|list`: etcd's leases, printed as etcdctl prints
//! them (ids in hex). `keep-alive` renews every third of the TTL until stopped (`--once`: once).

use clap::{Args, Subcommand};

use super::{write_stdout, CliError, ClientArgs};

#[derive(Debug, Args)]
pub struct LeaseCommand {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: LeaseAction,
}

/// A lease id as etcdctl prints it: hex.
pub fn parse_lease_id(text: &str) -> Result<i64, String> {
    u64::from_str_radix(text.trim().trim_start_matches("0x"), 16)
        .ok()
        .filter(|id| *id != 0)
        .map(|id| id as i64)
        .ok_or_else(|| format!("'{text}' is not a lease id (a non-zero hex number, as `lease grant` prints)"))
}

#[derive(Debug, Subcommand)]
pub enum LeaseAction {
    /// Grant a lease of TTL seconds; prints its id.
    Grant {
        ttl: i64,
        /// Ask for this id (hex) instead of one the cluster picks.
        #[arg(long, value_parser = parse_lease_id)]
        id: Option<i64>,
    },
    /// Revoke a lease: the keys attached to it are deleted.
    Revoke {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// Keep a lease alive until stopped.
    KeepAlive {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// The remaining TTL of a lease (and its keys, with --keys).
    #[command(alias = "timetolive")]
    Ttl {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        #[arg(long)]
        keys: bool,
    },
    /// Every lease's id.
    List,
}

pub async fn run(command: LeaseCommand) -> Result<(), CliError> {
    let client = command.client.client()?;
    match command.action {
        LeaseAction::Grant { ttl, id } => {
            let granted = client.lease_grant(ttl, id.unwrap_or(0)).await?;
            write_stdout(format!("lease {:016x} granted with TTL({}s)\n", granted.id, granted.ttl).as_bytes())
        }
        LeaseAction::Revoke { id } => {
            client.lease_revoke(id).await?;
            write_stdout(format!("lease {id:016x} revoked\n").as_bytes())
        }
        LeaseAction::KeepAlive { id, once } => {
            // Runs until stopped or the lease is gone: each round sleeps a third of the TTL.
            loop {
                let renewed = client.lease_keep_alive(id).await?;
                if renewed.ttl <= 0 {
                    return Err(CliError::Failed(format!("lease {id:016x} expired or revoked")));
                }
                write_stdout(format!("lease {id:016x} keepalived with TTL({})\n", renewed.ttl).as_bytes())?;
                if once {
                    return Ok(());
                }
                let pause = std::time::Duration::from_millis(u64::try_from(renewed.ttl).unwrap_or(1) * 1000 / 3);
                tokio::time::sleep(pause.max(std::time::Duration::from_millis(100))).await;
            }
        }
        LeaseAction::Ttl { id, keys } => {
            let ttl = client.lease_time_to_live(id, keys).await?;
            if ttl.ttl == -1 {
                return write_stdout(format!("lease {id:016x} already expired\n").as_bytes());
            }
            let mut line = format!("lease {id:016x} granted with TTL({}s), remaining({}s)", ttl.granted_ttl, ttl.ttl);
            if keys {
                let names: Vec<String> = ttl
                    .keys
                    .iter()
                    .map(|k| k.key.clone().unwrap_or_else(|| k.key_base64.clone().unwrap_or_default()))
                    .collect();
                line.push_str(&format!(", attached keys([{}])", names.join(" ")));
            }
            line.push('\n');
            write_stdout(line.as_bytes())
        }
        LeaseAction::List => {
            let leases = client.leases().await?;
            let mut out = format!("found {} leases\n", leases.leases.len());
            for l in leases.leases {
                out.push_str(&format!("{:016x}\n", l.id));
            }
            write_stdout(out.as_bytes())
        }
    }
}
