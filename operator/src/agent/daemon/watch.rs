//! The watchers: one kube-runtime watcher per kind, each forwarding its
//! events to the control loop as [`Update`]s. Errors (API server unreachable,
//! expired resource versions) are logged and counted; the watcher retries
//! with backoff and lists again when it must, which the loop applies as a
//! replace of that kind's store. Nothing is flushed meanwhile.

use std::pin::pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use kube_nft_crds::resources::{AddressSetShard, NodePolicyShare};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use super::metrics::Metrics;
use super::state::{Kind, ShardWatch, Update};
use crate::kubeapi::endpoint_slices;

/// The running watchers; dropping this stops them.
pub struct Watchers {
    client: Client,
    tx: UnboundedSender<Update>,
    metrics: Metrics,
    fixed: Vec<JoinHandle<()>>,
    shards: Option<JoinHandle<()>>,
}

impl Watchers {
    /// Watches `node`'s share and Node, and (with `services`) every Service
    /// and EndpointSlice. The address-set shards follow the share: see
    /// [`Watchers::watch_shards`].
    pub fn start(
        client: Client,
        node: &str,
        services: bool,
        tx: UnboundedSender<Update>,
        metrics: Metrics,
    ) -> Watchers {
        let by_name = watcher::Config::default().fields(&format!("metadata.name={node}"));
        let mut fixed = vec![
            forward(
                watcher(Api::<NodePolicyShare>::all(client.clone()), by_name.clone()),
                Kind::Share,
                Update::Share,
                tx.clone(),
                metrics.clone(),
            ),
            forward(
                watcher(Api::<Node>::all(client.clone()), by_name),
                Kind::Node,
                Update::Node,
                tx.clone(),
                metrics.clone(),
            ),
        ];
        if services {
            fixed.push(forward(
                watcher(Api::<Service>::all(client.clone()), Default::default()),
                Kind::Services,
                Update::Service,
                tx.clone(),
                metrics.clone(),
            ));
            fixed.push(tokio::spawn(watch_slices(
                client.clone(),
                tx.clone(),
                metrics.clone(),
            )));
        }
        Watchers {
            client,
            tx,
            metrics,
            fixed,
            shards: None,
        }
    }

    /// (Re)starts the address-set shard watcher as `watch` says; the previous
    /// one stops (its events still in flight carry the old epoch and are
    /// ignored).
    pub fn watch_shards(&mut self, watch: &ShardWatch) {
        if let Some(old) = self.shards.take() {
            old.abort();
        }
        let Some(selector) = &watch.selector else {
            return;
        };
        let epoch = watch.epoch;
        let api = Api::<AddressSetShard>::all(self.client.clone());
        self.shards = Some(forward(
            watcher(api, watcher::Config::default().labels(selector)),
            Kind::Shards,
            move |event| Update::Shards { epoch, event },
            self.tx.clone(),
            self.metrics.clone(),
        ));
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for task in self.fixed.iter().chain(&self.shards) {
            task.abort();
        }
    }
}

/// Feeds one watcher's events to the loop, on a task of its own.
fn forward<K, S>(
    stream: S,
    kind: Kind,
    wrap: impl Fn(Event<K>) -> Update + Send + 'static,
    tx: UnboundedSender<Update>,
    metrics: Metrics,
) -> JoinHandle<()>
where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    tokio::spawn(pump(stream, kind, wrap, tx, metrics))
}

/// Feeds one watcher's events to the loop until the loop is gone.
async fn pump<K, S>(
    stream: S,
    kind: Kind,
    wrap: impl Fn(Event<K>) -> Update,
    tx: UnboundedSender<Update>,
    metrics: Metrics,
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut stream = pin!(stream.backoff(crate::kubeapi::WatchBackoff::default()));
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if tx.send(wrap(event)).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(resource = kind.as_str(), error = %e, "watch failed; retrying with backoff");
                metrics.watch_error(kind.as_str());
            }
        }
    }
}

/// EndpointSlices in the version the server serves (v1.20: only v1beta1),
/// asked once the server answers.
async fn watch_slices(client: Client, tx: UnboundedSender<Update>, metrics: Metrics) {
    let kind = Kind::EndpointSlices;
    let mut delay = Duration::from_millis(500);
    let version = loop {
        match endpoint_slices::served_version(&client).await {
            Ok(v) => break v,
            Err(e) => {
                tracing::warn!(resource = kind.as_str(), error = %e, "asking which EndpointSlice version is served; retrying");
                metrics.watch_error(kind.as_str());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    tracing::info!(version = version.as_str(), "watching EndpointSlices");
    let stream = endpoint_slices::watch(client, version, Default::default());
    // On this task, so stopping it stops the watch.
    pump(stream, kind, Update::EndpointSlice, tx, metrics).await;
}
