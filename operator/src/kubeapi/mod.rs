//! The edge to the Kubernetes API server, shared by the operator, the agent,
//! live `explain` and the lab's cluster mode: how a client is made, and how
//! EndpointSlices are read from servers that serve `discovery.k8s.io/v1` and
//! from older ones (v1.20) that serve only `v1beta1`.

pub mod endpoint_slices;
pub mod snapshot;

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

/// How long a watcher waits before retrying after an error: doubling from
/// 250 ms up to 4 s, reset by the next success. kube's default climbs to 30 s,
/// which after an API-server outage leaves a component blind for up to half a
/// minute once the server is back; a watch retry costs the server one request,
/// so a short cap is cheap.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: std::time::Duration,
}

impl WatchBackoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(250);
    const MAX: std::time::Duration = std::time::Duration::from_secs(4);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = std::time::Duration;
    fn next(&mut self) -> Option<std::time::Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;
    use std::time::Duration;

    #[test]
    fn watch_backoff_doubles_to_its_cap_and_resets() {
        let mut b = WatchBackoff::default();
        let first: Vec<Duration> = b.by_ref().take(6).collect();
        let ms: Vec<u128> = first.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [250, 500, 1000, 2000, 4000, 4000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(250)));
    }
}
