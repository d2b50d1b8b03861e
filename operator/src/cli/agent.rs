//! `kube-nft agent apply`: compile one node's share of the manifests (policy
//! and Service NAT) and apply it once to a network namespace, or print the
//! `nft` script it would send.
//!
//! `kube-nft agent run`: the DaemonSet's control loop ([`crate::agent::daemon`]).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Enforce NODE's share of the cluster's policies and its Service NAT,
    /// continuously, from the API server (what the DaemonSet runs).
    Run(AgentRunArgs),
}

#[derive(Debug, Args)]
pub struct AgentRunArgs {
    /// This node's name (its NodePolicyShare and Node are named so).
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node: String,
    #[command(flatten)]
    pub kube: crate::kubeapi::KubeArgs,
    /// Enforce in this network namespace (e.g. /run/netns/NAME); the API
    /// connection and the metrics server stay in this one.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9473")]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub nat: super::NatArgs,
    /// How often to check that nobody changed the table behind the agent's
    /// back (and restore it).
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub drift_interval: u64,
    /// Enforce NetworkPolicy only: no Service NAT (e.g. next to kube-proxy).
    #[arg(long)]
    pub no_services: bool,
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
        AgentCommand::Run(a) => run_daemon(a),
    }
}

fn run_daemon(args: AgentRunArgs) -> anyhow::Result<()> {
    super::init_logging();
    let config = crate::agent::daemon::Config {
        node: args.node,
        netns: args.netns,
        metrics_addr: args.metrics_addr,
        services: (!args.no_services).then(|| args.nat.config()),
        drift_interval: Duration::from_secs(args.drift_interval),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = args.kube.client().await?;
        crate::agent::daemon::run(client, config, shutdown_signal()).await
    })
}

/// SIGTERM (the kubelet stopping the pod) or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the default action (exit) applies.
        _ => std::future::pending().await,
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
