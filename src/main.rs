//! The `kuberaft` binary: one executable for the node, the client commands and the local dev
//! cluster (DESIGN.md §5). Parsing and dispatch live in `kuberaft::cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Usage errors make clap print `error: ...` and exit 2; --help and --version exit 0.
    kuberaft::cli::run(kuberaft::cli::Cli::parse())
}
