//! `kube-nft lab run`: load manifests and a scenario, run the lab, print the
//! truth tables (or JSON); non-zero exit on any mismatch or disagreement.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use ipnet::{Ipv4Net, Ipv6Net};

use crate::lab::apiserver::ApiServerOptions;
use crate::lab::run::{run as run_lab, RunOptions};
use crate::lab::{report, scenario};

#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(subcommand)]
    pub what: LabCommand,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build namespaces for nodes and pods, enforce the policies with one agent
    /// per node, probe pod to pod with real connections, print the truth table.
    Run(LabRunArgs),
}

#[derive(Debug, Args)]
pub struct LabRunArgs {
    /// Manifest file or directory (recursive). Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub files: Vec<PathBuf>,
    /// Scenario (YAML `steps:` of apply/delete/probe); default: probe every
    /// declared port and expect explain's verdict.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    #[arg(short, long, value_enum, default_value_t = LabOutput::Table)]
    pub output: LabOutput,
    /// Per connection attempt, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Nodes to create when the manifests hold no Node.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub nodes: usize,
    /// Where generated nodes get their /24 pod CIDRs.
    #[arg(long, value_name = "CIDR", default_value = "10.244.0.0/16")]
    pub pod_cidr: Ipv4Net,
    /// Dual-stack: where nodes without an IPv6 entry in `spec.podCIDRs` get a
    /// /64 (e.g. fd00:10:244::/48); every pod then gets an IPv6 address too.
    /// Default: none (IPv4 only, unless Nodes give IPv6 pod CIDRs).
    #[arg(long, value_name = "CIDR")]
    pub pod_cidr_v6: Option<Ipv6Net>,
    /// Fail on any bad or unknown document instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Default `--cluster-cidr`: the lab nodes' pod CIDRs.
    #[command(flatten)]
    pub nat: super::NatArgs,
    /// Use this API server as the control plane (admin credentials): the lab
    /// writes Nodes, Namespaces, Pods, Services and the scenario's objects
    /// through it, runs `kube-nft operator` and one `kube-nft agent run` per
    /// lab node as processes with deploy/'s ServiceAccounts, and probes as
    /// without it. Meant for a throwaway API server without kubelets
    /// (scripts/apiserver-run).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// With --kubeconfig: how long one change may take to reach every
    /// node's kernel, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 60,
        requires = "kubeconfig"
    )]
    pub enforce_timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LabOutput {
    Table,
    Json,
}

pub fn run(args: LabArgs) -> anyhow::Result<()> {
    match args.what {
        LabCommand::Run(a) => run_once(a),
    }
}

fn run_once(args: LabRunArgs) -> anyhow::Result<()> {
    let scenario = args
        .scenario
        .as_ref()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            scenario::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        })
        .transpose()?;
    let cluster = super::load_manifests(&args.files, args.strict)?;
    let options = RunOptions {
        nodes: args.nodes,
        pod_cidr: args.pod_cidr,
        pod_cidr_v6: args.pod_cidr_v6,
        timeout: Duration::from_millis(args.timeout_ms),
        cluster_cidrs: args.nat.cluster_cidrs.clone(),
        no_masquerade_cidrs: args.nat.no_masquerade_cidrs.clone(),
        api_server: args.kubeconfig.clone().map(|kubeconfig| ApiServerOptions {
            kubeconfig,
            binary: None,
            timeout: Duration::from_secs(args.enforce_timeout),
        }),
    };
    let report = run_lab(cluster, scenario, &options)?;
    let mut out = std::io::stdout().lock();
    match args.output {
        LabOutput::Json => writeln!(out, "{}", serde_json::to_string(&report)?)?,
        LabOutput::Table => {
            let colour = std::io::stdout().is_terminal();
            write!(out, "{}", report::render_table(&report, colour))?;
        }
    }
    out.flush()?;
    if !report.ok {
        bail!(
            "{} mismatch(es), {} disagreement(s) with explain",
            report.mismatches.len(),
            report.disagreements.len()
        );
    }
    Ok(())
}
