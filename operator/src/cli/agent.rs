//! `kube-nft agent apply`: compile one node's share of the manifests (policy
//! and Service NAT) and apply it once to a network namespace, or print the
//! `nft` script it would send.

use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};

use crate::agent::{dry_run_script, Agent, AgentInput};
use crate::policy::compile_node;

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub what: AgentCommand,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Compile NODE's share of the manifests' policies and enforce it once.
    Apply(AgentApplyArgs),
}

#[derive(Debug, Args)]
pub struct AgentApplyArgs {
    /// The node whose pods to enforce (pods' `spec.nodeName`).
    #[arg(long, value_name = "NAME")]
    pub node: String,
    /// Manifest file or directory (recursive). Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub files: Vec<PathBuf>,
    /// Network namespace to program (e.g. /run/netns/NAME); default: this one.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Print the `nft` script of the batch instead of sending it.
    #[arg(long)]
    pub dry_run: bool,
    /// Fail on any bad or unknown document instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    pub nat: super::NatArgs,
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    match args.what {
        AgentCommand::Apply(a) => apply(a),
    }
}

fn apply(args: AgentApplyArgs) -> anyhow::Result<()> {
    let cluster = super::load_manifests(&args.files, args.strict)?;
    // Manifests have no EndpointSlice controller: derive the slices of
    // Services that come without them, as the lab does.
    let with_slices = crate::service::with_synthesized_slices(&cluster);
    let input = AgentInput::for_cluster(
        &with_slices,
        &compile_node(&cluster, &args.node),
        &args.node,
        &args.nat.config(),
    );
    if let Some(services) = &input.services {
        for e in &services.errors {
            eprintln!("error (skipped): {e}");
        }
    }
    let mut out = std::io::stdout().lock();
    if args.dry_run {
        // Diff against what the kernel holds when it can be read; without
        // privileges (or a namespace) the script loads the table from scratch.
        let committed = match Agent::open(&args.node, args.netns.as_deref()) {
            Ok(agent) => agent.committed().cloned(),
            Err(e) if args.netns.is_some() => return Err(e.into()),
            Err(e) => {
                eprintln!("note: cannot read the kernel's table ({e}); showing a full load");
                None
            }
        };
        write!(out, "{}", dry_run_script(committed.as_ref(), &input))?;
        return Ok(());
    }
    if input.policy.pods.is_empty() && !cluster.nodes().contains_key(&args.node) {
        let known = cluster
            .pods()
            .values()
            .any(|p| crate::cluster::pod_node(p) == Some(args.node.as_str()));
        if !known {
            bail!(
                "no Node and no pod named node `{}` in the manifests (pods' spec.nodeName)",
                args.node
            );
        }
    }
    let mut agent = Agent::open(&args.node, args.netns.as_deref())?;
    let report = agent.sync(&input)?;
    writeln!(
        out,
        "node {}: {} pods isolated, {} Service frontends; {} ops, {} elements, {} transactions in {:.1} ms",
        report.node,
        input.policy.pods.len(),
        input.services.as_ref().map_or(0, |s| s.entries.len()),
        report.ops,
        report.elements,
        report.transactions,
        report.elapsed.as_secs_f64() * 1000.0
    )?;
    Ok(())
}
