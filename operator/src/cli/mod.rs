//! The `kube-nft` command line: argument definitions and the commands.

pub mod agent;
pub mod args;
mod explain;
pub mod lab;
mod table;

pub use args::Cli;

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        args::Command::Explain(a) => explain::run(a),
        args::Command::Lab(a) => lab::run(a),
        args::Command::Agent(a) => agent::run(a),
    }
}
