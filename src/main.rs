//! The `kuberaft` binary. Today it carries the consensus core only; the node, the client
//! commands, `dev`, the operator and the benchmarks arrive with their issues (see README).

use std::process::ExitCode;

const USAGE: &str = "\
kuberaft — a Raft-replicated key-value store and its Kubernetes operator

usage: kuberaft <command>

commands available in this build:
  version    print the version
  help       print this help

The node, client, dev-cluster and operator commands (DESIGN.md §5) are not built yet.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("version") | Some("--version") | Some("-V") => {
            println!("kuberaft {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        None | Some("help") | Some("--help") | Some("-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("kuberaft: unknown command '{other}'\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
