//! The `kube-nft` command line: argument definitions and the commands.

pub mod agent;
pub mod args;
pub mod crds;
mod explain;
pub mod lab;
pub mod operator;
mod table;

pub use args::Cli;

use std::path::PathBuf;

use anyhow::Context;

use crate::cluster::load::{load_paths, LoadOptions};
use crate::cluster::Cluster;

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        args::Command::Explain(a) => explain::run(a),
        args::Command::Lab(a) => lab::run(a),
        args::Command::Agent(a) => agent::run(a),
        args::Command::Crds(a) => crds::run(a),
        args::Command::Operator(a) => operator::run(a),
    }
}

/// Loads manifests for a command, reporting each skipped or suspicious document
/// on stderr (with `strict`, the first bad document is an error instead).
fn load_manifests(files: &[PathBuf], strict: bool) -> anyhow::Result<Cluster> {
    let loaded = load_paths(files, LoadOptions { strict }).context("loading manifests")?;
    for p in &loaded.problems {
        let level = if p.warning {
            "warning"
        } else {
            "error (skipped)"
        };
        eprintln!("{level}: {p}");
    }
    Ok(loaded.cluster)
}

/// Service NAT settings shared by `agent apply` and `lab run`.
#[derive(Debug, Clone, clap::Args)]
pub struct NatArgs {
    /// The cluster's pod address range (repeatable, e.g. one per family):
    /// clients outside it reaching a ClusterIP, and pod traffic leaving it,
    /// are masqueraded.
    #[arg(long = "cluster-cidr", value_name = "CIDR")]
    pub cluster_cidrs: Vec<ipnet::IpNet>,
    /// A destination range pods reach with their own address although it is
    /// outside the cluster CIDR (repeatable).
    #[arg(long = "no-masquerade-cidr", value_name = "CIDR")]
    pub no_masquerade_cidrs: Vec<ipnet::IpNet>,
}

impl NatArgs {
    pub fn config(&self) -> crate::service::ServiceConfig {
        crate::service::ServiceConfig {
            cluster_cidrs: self.cluster_cidrs.clone(),
            no_masquerade_cidrs: self.no_masquerade_cidrs.clone(),
            ..Default::default()
        }
    }
}

/// Logs of the long-running commands (operator, agent) to stderr; `RUST_LOG`
/// filters (default `info`, e.g. `kube_nft=debug`). Colours only on a terminal,
/// so files and container logs stay plain text.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Another command in the same process may have set it up already.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
