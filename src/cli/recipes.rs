//! `kuberaft lock NAME [-- COMMAND ...]` and `kuberaft elect NAME [PROPOSAL] [--listen]`, as
//! etcdctl's `lock` and `elect`, on `client::concurrency`: a session lease kept alive, a key per
//! contender under NAME, ordered by create revision.
//!
//! `lock` prints the key that holds the lock once it is held. With a command, it runs it while
//! holding the lock (with `ETCD_LOCK_KEY` and `ETCD_LOCK_REV` set, as etcdctl does), releases it
//! and exits with the command's code; without, it holds until stopped (Ctrl-C, SIGTERM). `elect`
//! campaigns with PROPOSAL and prints the key and the proposal once it leads, then holds until
//! stopped (resigning); `--listen` prints each new leader's proposal instead.
//!
//! If the session's lease ends while the lock or the leadership is held (this process could not
//! renew it within its TTL), another contender may take over: both say so on stderr and exit
//! with an error ("session expired", as etcdctl), `lock` once its command has ended (the command
//! is not killed; it learns nothing, as under etcdctl, but the exit code tells).

use clap::Args;

use super::{write_stdout, CliError, ClientArgs};
use crate::base::signal::wait_for_signal;
use crate::base::wire::watch::WatchCreateRequest;
use crate::client::concurrency::{campaign, leader, text, Mutex, Session};

#[derive(Debug, Args)]
pub struct LockArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The lock's name (a key prefix).
    pub name: String,
    /// The session's TTL in seconds: how long the lock outlives this process if it dies.
    #[arg(long, default_value_t = 10)]
    pub ttl: i64,
    /// The command to run while holding the lock.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ElectArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The election's name (a key prefix).
    pub name: String,
    /// What this contender proposes (its value once it leads).
    pub proposal: Option<String>,
    /// Print each leader's proposal as it changes, without campaigning.
    #[arg(long, conflicts_with = "proposal")]
    pub listen: bool,
    /// The session's TTL in seconds.
    #[arg(long, default_value_t = 10)]
    pub ttl: i64,
}

pub async fn run_lock(args: LockArgs) -> Result<(), CliError> {
    let client = args.client.client()?;
    let session = Session::new(&client, args.ttl).await?;
    let held = Mutex::lock(&client, &session, &args.name).await?;
    write_stdout(format!("{}\n", held.key()).as_bytes())?;
    let code = match args.command.split_first() {
        Some((program, rest)) => {
            let mut child = tokio::process::Command::new(program)
                .args(rest)
                .env("ETCD_LOCK_KEY", held.key())
                .env("ETCD_LOCK_REV", held.revision.to_string())
                .spawn()
                .map_err(|e| CliError::Failed(format!("cannot run {program}: {e}")))?;
            let status = child.wait().await.map_err(|e| CliError::Failed(format!("{program}: {e}")))?;
            status.code().unwrap_or(1)
        }
        None => {
            tokio::select! {
                _ = wait_for_signal() => {}
                _ = session.done() => {}
            }
            0
        }
    };
    if session.is_lost() {
        return Err(CliError::Failed(format!(
            "session expired: the lease of {} ended while the lock was held; another may have held it since",
            held.key()
        )));
    }
    let _ = held.unlock(&client).await;
    let _ = session.close().await;
    if code == 0 {
        Ok(())
    } else {
        Err(CliError::Failed(format!("the command exited with code {code}")))
    }
}

pub async fn run_elect(args: ElectArgs) -> Result<(), CliError> {
    let client = args.client.client()?;
    if args.listen {
        let mut last: Option<String> = None;
        let request = WatchCreateRequest { key: Some(format!("{}/", args.name)), prefix: true, ..Default::default() };
        let mut watch = client.watch(request).await?;
        // Until stopped: print the leader whenever it changes.
        loop {
            if let (Some(kv), _) = leader(&client, &args.name).await? {
                let (key, proposal) = (text(kv.key_bytes()), text(kv.value_bytes()));
                if last.as_deref() != Some(key.as_str()) {
                    write_stdout(format!("{key}\n{proposal}\n").as_bytes())?;
                    last = Some(key);
                }
            }
            watch.next().await?;
        }
    }
    let proposal = args.proposal.ok_or_else(|| CliError::Usage("give a PROPOSAL, or --listen".into()))?;
    let session = Session::new(&client, args.ttl).await?;
    campaign(&client, &session, &args.name, &proposal).await?;
    write_stdout(format!("{}/{:x}\n{proposal}\n", args.name, session.lease).as_bytes())?;
    tokio::select! {
        _ = wait_for_signal() => {}
        _ = session.done() => {
            return Err(CliError::Failed("session expired: this contender's lease ended, so it no longer leads".into()));
        }
    }
    let _ = session.close().await;
    Ok(())
}
