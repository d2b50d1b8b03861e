//! Command-line arguments (clap derive). Only subcommands that work are listed.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cluster::ObjectKey;
use crate::policy::{Endpoint, Family, PortProto};

/// kube-nft enforces Kubernetes NetworkPolicy and implements Service NAT and
/// masquerade with nftables.
///
/// `explain` evaluates NetworkPolicy semantics straight from the API definition
/// over a set of manifests and tells, in plain sentences, why traffic is allowed
/// or dropped, and what kube-nft does with a Service.
#[derive(Debug, Parser)]
#[command(name = "kube-nft", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Explain NetworkPolicy verdicts (for a pod, a flow, or all pod pairs) and
    /// Services.
    Explain(ExplainArgs),
    /// Enforce NetworkPolicy and Services on real packets on this machine:
    /// network namespaces as nodes and pods, one agent per node, truth tables.
    Lab(super::lab::LabArgs),
    /// The node agent: enforce one node's share of the policies and its Service
    /// NAT with nftables.
    Agent(super::agent::AgentArgs),
    /// Print the CustomResourceDefinitions of cluster mode (or write deploy/crds/).
    Crds(super::crds::CrdsArgs),
    /// The operator (cluster mode): watch Namespaces, Pods, NetworkPolicies
    /// and Nodes, and write the compiled NodePolicyShares and AddressSetShards.
    Operator(super::operator::OperatorArgs),
}

#[derive(Debug, Args)]
// `--kubeconfig` may follow the subcommand, as `-f` may.
#[command(mut_arg("kubeconfig", |a| a.global(true)))]
pub struct ExplainArgs {
    /// Manifest file or directory (recursive: *.yaml, *.yml, *.json). Repeatable.
    /// Pods need `status.podIP` to take part in policy. Without -f, the live
    /// cluster is read (--kubeconfig, $KUBECONFIG, ~/.kube/config or in-cluster).
    #[arg(short = 'f', long = "filename", value_name = "PATH", global = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub kube: crate::kubeapi::KubeArgs,
    /// Fail on any bad or unknown document instead of skipping it.
    #[arg(long, global = true)]
    pub strict: bool,
    #[command(subcommand)]
    pub what: ExplainCommand,
}

#[derive(Debug, Subcommand)]
pub enum ExplainCommand {
    /// The policies that select a pod, and what may reach it and what it may reach.
    Pod {
        /// NAMESPACE/NAME
        pod: ObjectKey,
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// The verdict on one flow, with a step-by-step walkthrough.
    Flow {
        /// Source: NAMESPACE/POD or an IP address.
        #[arg(long)]
        from: Endpoint,
        /// Destination: NAMESPACE/POD or an IP address.
        #[arg(long)]
        to: Endpoint,
        /// Destination PORT[/PROTOCOL] (TCP when omitted).
        #[arg(long)]
        port: PortProto,
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// What kube-nft does with a Service on each node: frontends, endpoints,
    /// reject/drop, masquerade, affinity (ExternalName: DNS only).
    Service {
        /// NAMESPACE/NAME
        service: ObjectKey,
        #[command(flatten)]
        nat: super::NatArgs,
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// The pod-to-pod truth table.
    Matrix {
        /// PORT[/PROTOCOL] to probe (repeatable); default: every port pods declare.
        #[arg(long = "port")]
        ports: Vec<PortProto>,
        /// Judge every pair between the pods' addresses of this family (IPv4 or
        /// IPv6), leaving out pods without one; default: the first family both
        /// pods have, as `explain flow` does.
        #[arg(long, value_parser = parse_family)]
        family: Option<Family>,
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

fn parse_family(s: &str) -> Result<Family, String> {
    Family::parse(s).ok_or_else(|| format!("unknown address family {s:?}: use IPv4 or IPv6"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}
