//! The operator's control loop (`kube-nft operator`): watches Namespaces,
//! Pods, NetworkPolicies and Nodes, compiles them incrementally into the
//! policy IR and writes it as [`NodePolicyShare`]s and [`AddressSetShard`]s.
//!
//! * **Every replica watches and compiles**, so a standby's caches are warm
//!   and it takes over in the time of one Lease poll; **only the leader
//!   writes** ([`leader`]). `/readyz` turns ready once every watcher has
//!   listed its kind, leader or not.
//! * **Events are batched**: after the first event the loop keeps taking
//!   events until none came for [`QUIET`] (at most [`MAX_BATCH`]), then
//!   writes once for the batch. Each event recompiles only what it touches
//!   ([`index`]); the nodes and sets it touched are the only objects
//!   recomputed and compared ([`desired`]), and an object whose spec equals
//!   the last one applied is not written.
//! * **On becoming leader** the loop lists the objects carrying its
//!   managed-by label, compares everything and deletes what has no source any
//!   more (nodes gone, sets no rule names); from then on it remembers what it
//!   applied.
//! * **Invalid objects** (a NetworkPolicy field the engine cannot use) get a
//!   Warning Event on the object, once per `resourceVersion`, from the leader;
//!   the previous valid version stays enforced. (A process that starts while
//!   the current version is invalid knows no earlier one: that policy is not
//!   enforced, and the Event says so.) The compiler itself has no "cannot
//!   enforce" outcome: every object validation accepts compiles as written.
//! * **Shutdown** (SIGTERM/SIGINT): the write in flight completes, no new one
//!   starts, the Lease is released so the standby takes over at once, and the
//!   process exits 0.
//!
//! [`NodePolicyShare`]: kube_nft_crds::resources::NodePolicyShare
//! [`AddressSetShard`]: kube_nft_crds::resources::AddressSetShard

pub mod desired;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod writer;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, NodeStatus, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::ListParams;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use kube_nft_crds::resources::{AddressSetShard, NodePolicyShare};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::http;
use desired::{Applied, Dirty, Inputs, MANAGER};
use index::{Input, Key, Kind, State};
use leader::{Leadership, LeaseConfig};
use metrics::Metrics;
use writer::KubeStore;

/// A batch ends once no event came for this long… (short: it is most of the
/// event→kernel latency; the events of a burst, e.g. a rollout, come closer
/// together than this and still share a batch, and each write is incremental)
pub const QUIET: Duration = Duration::from_millis(10);
/// …or after this long in any case.
pub const MAX_BATCH: Duration = Duration::from_millis(250);
/// Watch events queued between the watchers and the loop.
const QUEUE: usize = 4096;
/// Pause before retrying failed writes, doubling up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
// Short: after an API outage the first write should follow the server back.
const MAX_RETRY: Duration = Duration::from_secs(5);
/// Longest Event note the API accepts.
const MAX_NOTE: usize = 1024;

/// `kube-nft operator`'s settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the Lease lives.
    pub namespace: String,
    /// This replica's name in the Lease (the pod name in a cluster).
    pub identity: String,
    pub lease_name: String,
    pub lease_duration: Duration,
    pub metrics_addr: SocketAddr,
    pub max_shard_elements: usize,
}

/// Runs the operator until `shutdown` resolves; see the module doc.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (metrics, registry) = Metrics::new();
    let status = http::Status::new(registry);
    status.set_not_ready("watch caches not synced yet");
    let addr = http::serve(config.metrics_addr, status.clone())
        .await
        .with_context(|| format!("serving metrics on {}", config.metrics_addr))?;
    tracing::info!(%addr, identity = %config.identity, "serving /metrics, /healthz, /readyz");

    let (tx, rx) = mpsc::channel(QUEUE);
    let watchers = vec![
        spawn_watcher(
            Api::<Namespace>::all(client.clone()),
            Kind::Namespace,
            Input::Namespace,
            strip_namespace,
            tx.clone(),
            metrics.clone(),
        ),
        spawn_watcher(
            Api::<Pod>::all(client.clone()),
            Kind::Pod,
            Input::Pod,
            strip_pod,
            tx.clone(),
            metrics.clone(),
        ),
        spawn_watcher(
            Api::<NetworkPolicy>::all(client.clone()),
            Kind::NetworkPolicy,
            Input::NetworkPolicy,
            strip_policy,
            tx.clone(),
            metrics.clone(),
        ),
        spawn_watcher(
            Api::<Node>::all(client.clone()),
            Kind::Node,
            Input::Node,
            strip_node,
            tx,
            metrics.clone(),
        ),
    ];

    let (leader_tx, leader_rx) = watch::channel(None);
    let (release_tx, release_rx) = watch::channel(false);
    let lease = LeaseConfig {
        name: config.lease_name.clone(),
        identity: config.identity.clone(),
        duration: config.lease_duration,
    };
    let elector = tokio::spawn(leader::run(
        Api::namespaced(client.clone(), &config.namespace),
        lease,
        leader_tx,
        release_rx,
        metrics.clone(),
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: Some(config.identity.clone()),
    };
    let mut control = Control {
        state: State::new(),
        applied: None,
        pending: Dirty::default(),
        store: KubeStore::new(client.clone()),
        recorder: Recorder::new(client.clone(), reporter),
        client,
        told: BTreeMap::new(),
        compile_time: Duration::ZERO,
        retry_at: None,
        retry_backoff: FIRST_RETRY,
        metrics,
        status,
        config,
    };
    let result = control.run(rx, leader_rx, stop_rx).await;

    // The loop has finished its last write: now let the standby in.
    let _ = release_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(5), elector)
        .await
        .is_err()
    {
        tracing::warn!("the lease was not released in time");
    }
    for w in watchers {
        w.abort();
    }
    result
}

/// The loop's state.
struct Control {
    state: State,
    /// What the API server holds of ours, while leading (`None`: not leading,
    /// or not listed yet).
    applied: Option<Applied>,
    /// Nodes and sets to recompute at the next pass.
    pending: Dirty,
    store: KubeStore,
    recorder: Recorder,
    client: Client,
    /// Rejected objects told about (Event posted), at which version.
    told: BTreeMap<Key, Option<String>>,
    /// Compile time of the current batch, observed once it is planned.
    compile_time: Duration,
    retry_at: Option<Instant>,
    retry_backoff: Duration,
    metrics: Metrics,
    status: Arc<http::Status>,
    config: Config,
}

impl Control {
    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Input>,
        mut leader_rx: watch::Receiver<Leadership>,
        mut stop_rx: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        loop {
            let retry_at = self.retry_at;
            tokio::select! {
                biased;
                _ = stop_rx.changed() => {
                    tracing::info!("shutting down");
                    return Ok(());
                }
                input = rx.recv() => match input {
                    Some(input) => self.take_batch(input, &mut rx).await,
                    None => anyhow::bail!("every watcher stopped"),
                },
                r = leader_rx.changed() => if r.is_err() {
                    anyhow::bail!("leader election stopped");
                },
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    self.retry_at = None;
                }
            }
            self.pass(&leader_rx, &stop_rx).await;
        }
    }

    /// Takes `first` and whatever follows it closely (see [`QUIET`]).
    async fn take_batch(&mut self, first: Input, rx: &mut mpsc::Receiver<Input>) {
        let started = Instant::now();
        let mut n = 1;
        self.ingest(first);
        loop {
            let left = MAX_BATCH.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(QUIET.min(left), rx.recv()).await {
                Ok(Some(input)) => {
                    self.ingest(input);
                    n += 1;
                }
                Ok(None) | Err(_) => break,
            }
        }
        tracing::debug!(events = n, "batch");
        for (kind, count) in self.state.counts() {
            self.metrics.set_watched(kind.as_str(), count);
        }
        if self.state.is_live() && !self.status.is_ready() {
            let [ns, pods, policies, nodes] = self.state.counts().map(|(_, n)| n);
            tracing::info!(
                namespaces = ns,
                pods,
                networkpolicies = policies,
                nodes,
                "caches synced; compiled"
            );
            self.status.set_ready();
        } else if !self.state.is_live() {
            let missing: Vec<&str> = self.state.unsynced().iter().map(|k| k.as_str()).collect();
            self.status.set_not_ready(format!(
                "waiting for the first list of {}",
                missing.join(", ")
            ));
        }
    }

    fn ingest(&mut self, input: Input) {
        let t = Instant::now();
        let dirty = self.state.ingest(input);
        self.compile_time += t.elapsed();
        self.pending.merge(dirty);
    }

    /// Writes what is pending if leading, and tells about rejected objects.
    async fn pass(
        &mut self,
        leader_rx: &watch::Receiver<Leadership>,
        stop_rx: &watch::Receiver<bool>,
    ) {
        let leading = leader::may_write(&leader_rx.borrow());
        self.metrics.set_leader(leading);
        if !leading {
            if self.applied.take().is_some() {
                tracing::info!("standing by");
            }
            // A new leader compares everything anyway.
            self.pending = Dirty::default();
            self.observe_compile(Duration::ZERO);
            return;
        }
        if !self.state.is_live() {
            return;
        }
        if self.applied.is_none() {
            match self.list_applied().await {
                Ok(applied) => {
                    tracing::info!(
                        shares = applied.shares.len(),
                        shards = applied.shards.len(),
                        "leading: comparing with what the API server holds"
                    );
                    self.applied = Some(applied);
                    self.pending = Dirty::all();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listing the objects written before failed");
                    self.schedule_retry();
                    return;
                }
            }
        }
        let mut planned = Duration::ZERO;
        if !self.pending.is_empty() {
            let dirty = std::mem::take(&mut self.pending);
            let (Some(ir), Some(applied)) = (self.state.ir(), self.applied.as_mut()) else {
                return;
            };
            let t = Instant::now();
            let inputs = Inputs {
                ir,
                node_addresses: self.state.node_addresses(),
                max_elements: self.config.max_shard_elements,
            };
            let plan = desired::plan(&inputs, &dirty, applied);
            planned = t.elapsed();
            if !plan.is_empty() {
                tracing::debug!(writes = plan.len(), "writing");
            }
            let go_on = || leader::may_write(&leader_rx.borrow()) && !*stop_rx.borrow();
            let outcome = writer::execute(&self.store, plan, applied, &self.metrics, &go_on).await;
            if outcome.written > 0 || outcome.failed > 0 {
                tracing::info!(
                    written = outcome.written,
                    failed = outcome.failed,
                    "pass done"
                );
            }
            if outcome.interrupted {
                self.pending.merge(dirty);
            }
            let failed = !outcome.retry.is_empty();
            self.pending.merge(outcome.retry);
            if failed {
                self.schedule_retry();
            } else {
                self.retry_backoff = FIRST_RETRY;
            }
        }
        self.observe_compile(planned);
        self.tell_rejections().await;
    }

    fn observe_compile(&mut self, plus: Duration) {
        let took = std::mem::take(&mut self.compile_time) + plus;
        if !took.is_zero() {
            self.metrics.compiled(took);
        }
    }

    fn schedule_retry(&mut self) {
        self.retry_at = Some(Instant::now() + self.retry_backoff);
        self.retry_backoff = (self.retry_backoff * 2).min(MAX_RETRY);
    }

    async fn list_applied(&self) -> anyhow::Result<Applied> {
        let lp = ListParams::default().labels(&desired::managed_selector());
        let shares = Api::<NodePolicyShare>::all(self.client.clone())
            .list(&lp)
            .await
            .inspect_err(|_| self.metrics.error("NodePolicyShare", "list"))
            .context("listing NodePolicyShares")?;
        let shards = Api::<AddressSetShard>::all(self.client.clone())
            .list(&lp)
            .await
            .inspect_err(|_| self.metrics.error("AddressSetShard", "list"))
            .context("listing AddressSetShards")?;
        Ok(Applied::from_objects(shares.items, shards.items))
    }

    /// A Warning Event on each rejected object not told about at its current
    /// version (the leader only: the standby would say it twice).
    async fn tell_rejections(&mut self) {
        let rejected = self.state.rejected();
        self.told.retain(|k, _| rejected.contains_key(k));
        let due: Vec<(Key, index::Rejection)> = rejected
            .iter()
            .filter(|(k, r)| self.told.get(*k).map(|v| v.as_deref()) != Some(r.resource_version()))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        for (key, rejection) in due {
            self.metrics.error(key.0.as_str(), "invalid");
            tracing::warn!(error = %rejection.error, "object rejected");
            let event = KubeEvent {
                type_: EventType::Warning,
                reason: match key.0 {
                    Kind::NetworkPolicy => "InvalidPolicy".into(),
                    _ => "InvalidObject".into(),
                },
                note: Some(note(&rejection)),
                action: "Compile".into(),
                secondary: None,
            };
            match self.recorder.publish(&event, &rejection.reference).await {
                Ok(()) => {
                    self.told
                        .insert(key, rejection.resource_version().map(str::to_string));
                }
                Err(e) => {
                    self.metrics.error("Event", "event");
                    tracing::warn!(error = %e, "posting an Event failed");
                }
            }
        }
    }
}

/// The Event's text: the error (naming the field) and what is enforced now.
fn note(r: &index::Rejection) -> String {
    let consequence = if r.kept_previous {
        "kube-nft keeps enforcing the previous valid version until this is fixed"
    } else {
        "kube-nft ignores the object until this is fixed"
    };
    let mut text = format!("{}: {}; {consequence}", r.error.field, r.error.message);
    if text.len() > MAX_NOTE {
        let mut cut = MAX_NOTE - 3;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// A watcher of `K` feeding the loop; errors are counted, logged and retried
/// with [`crate::kubeapi::WatchBackoff`].
fn spawn_watcher<K>(
    api: Api<K>,
    kind: Kind,
    wrap: fn(watcher::Event<K>) -> Input,
    strip: fn(&mut K),
    tx: mpsc::Sender<Input>,
    metrics: Metrics,
) -> JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default())
            .backoff(crate::kubeapi::WatchBackoff::default()));
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    if tx.send(wrap(event.modify(strip))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    metrics.error(kind.as_str(), "watch");
                    tracing::warn!(%kind, error = %e, "watch failed; retrying");
                }
            }
        }
    })
}

// What the caches keep: only what the compiler reads (plus names and
// versions), so large fields such as managed fields, annotations (kubectl's
// last-applied copy) or a Node's image list do not sit in memory.

fn strip_namespace(ns: &mut Namespace) {
    ns.metadata.managed_fields = None;
    ns.metadata.annotations = None;
    ns.spec = None;
    ns.status = None;
}

fn strip_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.owner_references = None;
    if let Some(status) = &mut pod.status {
        status.conditions = None;
        status.container_statuses = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
    }
}

fn strip_policy(policy: &mut NetworkPolicy) {
    policy.metadata.managed_fields = None;
    policy.metadata.annotations = None;
}

fn strip_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
    node.metadata.labels = None;
    node.spec = None;
    node.status = node.status.take().map(|s| NodeStatus {
        addresses: s.addresses,
        ..NodeStatus::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ValidationError;
    use k8s_openapi::api::core::v1::ObjectReference;

    #[test]
    fn notes_name_the_field_and_stay_under_the_api_limit() {
        let r = |message: String, kept_previous| index::Rejection {
            reference: ObjectReference::default(),
            error: ValidationError {
                object: "NetworkPolicy x/p".into(),
                field: "spec.ingress[0].from[0].ipBlock.except[0]".into(),
                message,
            },
            kept_previous,
        };
        let n = note(&r(
            "10.0.0.0/8 is not inside the ipBlock cidr 10.0.0.0/16".into(),
            true,
        ));
        assert!(
            n.starts_with("spec.ingress[0].from[0].ipBlock.except[0]: 10.0.0.0/8"),
            "{n}"
        );
        assert!(n.contains("previous valid version"), "{n}");
        let long = note(&r("é".repeat(2000), false));
        assert!(
            long.len() <= MAX_NOTE && long.ends_with("..."),
            "{}",
            long.len()
        );
    }
}
