//! `kuberaft member list|add|promote|remove` and `kuberaft leader transfer`: the membership and
//! leadership commands. Member ids are hex on the way in and out, as etcd prints them.

use clap::{Args, Subcommand};

use super::table::{render, text_cell};
use super::{parse_member_id, to_json_line, write_stdout, CliError, ClientArgs, OutputFormat};
use crate::base::wire::{format_id, AddMemberRequest, MembersResponse};
use crate::client::normalize_endpoint;

#[derive(Debug, Args)]
pub struct MemberCommand {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: MemberAction,
}

#[derive(Debug, Subcommand)]
pub enum MemberAction {
    /// List the members of the committed configuration.
    #[command(alias = "ls")]
    List {
        #[arg(short = 'w', long = "write-out", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Add a member (start it afterwards with --initial-cluster-state existing); prints its id.
    Add {
        /// The new member's name (its pod name in Kubernetes).
        name: String,
        /// The URL the other members reach it on, e.g. http://etcd-3.etcd:2380.
        #[arg(long)]
        peer_url: String,
        /// The URL clients reach it on, e.g. http://etcd-3.etcd:2379.
        #[arg(long)]
        client_url: String,
        /// Add it as a learner (a non-voter until promoted): the safe way to grow a cluster.
        #[arg(long)]
        learner: bool,
    },
    /// Make a learner a voter.
    Promote {
        /// Hex member id.
        #[arg(value_parser = parse_member_id)]
        id: u64,
    },
    /// Remove a member.
    #[command(alias = "rm")]
    Remove {
        /// Hex member id.
        #[arg(value_parser = parse_member_id)]
        id: u64,
    },
}

#[derive(Debug, Args)]
pub struct LeaderCommand {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: LeaderAction,
}

#[derive(Debug, Subcommand)]
pub enum LeaderAction {
    /// Hand leadership to a voter; prints the new leader's id.
    Transfer {
        /// Hex id of the voter to hand over to (default: the most caught-up one).
        #[arg(long, value_parser = parse_member_id)]
        to: Option<u64>,
    },
}

pub async fn run_member(command: MemberCommand) -> Result<(), CliError> {
    let client = command.client.client()?;
    match command.action {
        MemberAction::List { output } => {
            let members = client.members().await?;
            let text = match output {
                OutputFormat::Json => to_json_line(&members)?,
                OutputFormat::Table => members_table(&members),
            };
            write_stdout(text.as_bytes())
        }
        MemberAction::Add { name, peer_url, client_url, learner } => {
            // Same URL rules as endpoints: a typo is cheaper to catch here than in a running cluster.
            let request = AddMemberRequest {
                name,
                peer_url: normalize_endpoint(&peer_url)?,
                client_url: normalize_endpoint(&client_url)?,
                learner,
            };
            let added = client.add_member(&request).await?;
            write_stdout(format!("{}\n", added.id).as_bytes())
        }
        MemberAction::Promote { id } => {
            client.promote(id).await?;
            write_stdout(format!("promoted {}\n", format_id(id)).as_bytes())
        }
        MemberAction::Remove { id } => {
            client.remove_member(id).await?;
            write_stdout(format!("removed {}\n", format_id(id)).as_bytes())
        }
    }
}

pub async fn run_leader(command: LeaderCommand) -> Result<(), CliError> {
    let client = command.client.client()?;
    match command.action {
        LeaderAction::Transfer { to } => {
            let moved = client.transfer_leader(to).await?;
            write_stdout(format!("{}\n", moved.leader).as_bytes())
        }
    }
}

/// ID, NAME, ROLE (voter or learner), PEER URL, CLIENT URL.
pub fn members_table(members: &MembersResponse) -> String {
    let rows: Vec<Vec<String>> = members
        .members
        .iter()
        .map(|member| {
            vec![
                text_cell(&member.id),
                text_cell(&member.name),
                if member.voter { "voter" } else { "learner" }.to_string(),
                text_cell(&member.peer_url),
                text_cell(&member.client_url),
            ]
        })
        .collect();
    render(&["ID", "NAME", "ROLE", "PEER URL", "CLIENT URL"], &rows)
}
