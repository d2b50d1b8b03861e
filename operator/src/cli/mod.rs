//! The `kube-nft` command line: argument definitions and the commands.

pub mod agent;
pub mod args;
mod explain;
pub mod lab;
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
