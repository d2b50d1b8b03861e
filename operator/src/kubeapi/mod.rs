//! The edge to the Kubernetes API server, shared by the operator, the agent,
//! live `explain` and the lab's cluster mode: how a client is made, and how
//! EndpointSlices are read from servers that serve `discovery.k8s.io/v1` and
//! from older ones (v1.20) that serve only `v1beta1`.

pub mod endpoint_slices;

use std::path::Path;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A client from `kubeconfig` when given, else the usual inference: the
/// `KUBECONFIG` variable, `~/.kube/config`, or the in-cluster service account.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => Config::infer().await.context(
            "no kubeconfig given and none found (KUBECONFIG, ~/.kube/config, in-cluster)",
        )?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// The `--kubeconfig` flag of the commands that talk to a cluster.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KubeArgs {
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<std::path::PathBuf>,
}

impl KubeArgs {
    pub async fn client(&self) -> anyhow::Result<Client> {
        client(self.kubeconfig.as_deref()).await
    }
}
