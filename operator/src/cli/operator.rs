//! `kube-nft operator`: the Deployment's control loop (see
//! [`crate::controller`]).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use kube_nft_crds::shard::DEFAULT_MAX_ELEMENTS;

use crate::controller::{self, Config};
use crate::kubeapi::KubeArgs;

#[derive(Debug, Args)]
pub struct OperatorArgs {
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-nft")]
    pub namespace: String,
    /// This replica's name in the Lease; unique per replica (default: the
    /// host name, which is the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, default_value = "kube-nft-operator")]
    pub lease_name: String,
    /// Lease term in seconds: a standby takes over this long after the
    /// leader stops renewing (at once when the leader shuts down cleanly).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_duration: u64,
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Most elements in one AddressSetShard.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_ELEMENTS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_shard_elements: usize,
}

pub fn run(args: OperatorArgs) -> anyhow::Result<()> {
    super::init_logging();
    let identity = match args.identity {
        Some(id) if !id.is_empty() => id,
        _ => hostname().context("no --identity given and no host name to use instead")?,
    };
    let config = Config {
        namespace: args.namespace,
        identity,
        lease_name: args.lease_name,
        lease_duration: Duration::from_secs(args.lease_duration),
        metrics_addr: args.metrics_addr,
        max_shard_elements: args.max_shard_elements,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let client = args.kube.client().await?;
        controller::run(client, config, shutdown_signal()).await
    })
}

/// Resolves on SIGTERM (what the kubelet sends) or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot catch SIGTERM; only SIGINT stops cleanly");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn hostname() -> anyhow::Result<String> {
    if let Ok(h) = std::env::var("HOSTNAME") {
        if !h.is_empty() {
            return Ok(h);
        }
    }
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    let h = h.trim();
    anyhow::ensure!(!h.is_empty(), "the host name is empty");
    Ok(h.to_string())
}
