//! `kube-nft agent run`: the DaemonSet's control loop.
//!
//! ```text
//!  watchers ──Update──► State ──input::build──► AgentInput ──Worker──► kernel
//!  (share, shards,        (pure)      (pure)                (diff, one batch)
//!   Services, slices,                                            │
//!   own Node)                                  status::Reporter ◄┘ NodePolicyShare status
//! ```
//!
//! - Nothing is enforced before every watcher delivered its first complete
//!   list; a share still missing then means "nothing isolated here" (the
//!   operator has not written it). `/readyz` turns 200 after that first sync.
//! - Events are coalesced (a few ms) into one sync: render the whole table,
//!   diff against the committed copy, send the difference (the lab's path).
//!   The time from the oldest event not yet enforced to the kernel's commit
//!   goes to `kube_nft_agent_sync_latency_seconds`.
//! - A failed sync leaves the previous ruleset in the kernel (one atomic
//!   transaction), sets `Enforced=False` and is retried with backoff.
//! - While the API server is unreachable the watchers retry and the kernel
//!   keeps enforcing the last state; their relist on reconnect replaces the
//!   stores and the next sync sends only the difference.
//! - Every `--drift-interval` the ruleset generation id is compared with the
//!   one after our last commit; when someone else changed our table it is
//!   restored (logged, `kube_nft_agent_drift_repairs_total`).
//! - A restarted agent takes over the kernel's table (read once at start), so
//!   its first sync sends only what changed meanwhile: established
//!   connections survive an agent restart or upgrade.

#[cfg(test)]
mod fixtures;
pub mod input;
mod metrics;
pub mod state;
pub mod status;
mod watch;
mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube_nft_crds::ir::AddressSet;
use kube_nft_crds::resources::NodePolicyShareStatus;
use nft::dataplane::Drift;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use self::input::Built;
use self::metrics::Metrics;
use self::state::{State, Update};
use self::status::{Outcome, Reporter};
use self::watch::Watchers;
use self::worker::{TableSize, Worker};
use crate::http;
use crate::service::ServiceConfig;

/// After an event, wait this long for more before syncing: a burst (a
/// rollout, a relist) becomes one sync.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// A steady stream of events still syncs at least this often.
const MAX_DELAY: Duration = Duration::from_millis(200);
/// Retry delays after a failed sync.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What `kube-nft agent run` was asked to do.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    /// Enforce in this network namespace; the API connection and the metrics
    /// server stay in the caller's.
    pub netns: Option<PathBuf>,
    pub metrics_addr: SocketAddr,
    /// Service NAT settings; `None` leaves Service NAT out (policy only).
    pub services: Option<ServiceConfig>,
    pub drift_interval: Duration,
}

/// Runs the agent until `shutdown` completes. The table stays in the kernel
/// when it returns: the next agent takes it over.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (metrics, registry) = Metrics::new();
    let health = http::Status::new(registry);
    let addr = http::serve(config.metrics_addr, health.clone())
        .await
        .with_context(|| format!("serving metrics on {}", config.metrics_addr))?;
    tracing::info!(node = %config.node, %addr, "serving /metrics, /healthz, /readyz");

    let node = config.node.clone();
    let netns = config.netns.clone();
    // Opening reads the kernel's table once: off the async threads.
    let worker = tokio::task::spawn_blocking(move || Worker::spawn(&node, netns))
        .await
        .context("opening the dataplane")??;
    let (tx, rx) = mpsc::unbounded_channel();
    let watchers = Watchers::start(
        client.clone(),
        &config.node,
        config.services.is_some(),
        tx,
        metrics.clone(),
    );
    let daemon = Daemon {
        state: State::new(&config.node, config.services.is_some()),
        reporter: Reporter::spawn(client, &config.node),
        config,
        worker,
        watchers,
        metrics,
        health,
        pending: None,
        retry: None,
        first_sync_done: false,
        last_good: BTreeMap::new(),
        reported: None,
        problems: BTreeSet::new(),
    };
    daemon.run(rx, shutdown).await;
    Ok(())
}

/// Changes not yet in the kernel.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The oldest event not yet enforced.
    since: Instant,
    /// The newest one (the debounce counts from it).
    last: Instant,
}

struct Daemon {
    config: Config,
    state: State,
    worker: Worker,
    watchers: Watchers,
    reporter: Reporter,
    metrics: Metrics,
    health: Arc<http::Status>,
    pending: Option<Pending>,
    /// After a failed sync: when to try again, and the delay after that.
    retry: Option<(Instant, Duration)>,
    first_sync_done: bool,
    /// Address sets as last enforced (kept while a shard chain is broken).
    last_good: BTreeMap<String, AddressSet>,
    /// The status last handed to the reporter, for the share with this uid.
    reported: Option<(Option<String>, NodePolicyShareStatus)>,
    /// Problems logged at the last sync (each is logged once, when it appears).
    problems: BTreeSet<String>,
}

impl Daemon {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Update>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut drift = tokio::time::interval(self.config.drift_interval);
        drift.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.health.set_not_ready(self.waiting_reason());
        loop {
            let due = self.sync_due();
            tokio::select! {
                _ = &mut shutdown => break,
                update = rx.recv() => match update {
                    Some(u) => self.on_update(u),
                    None => break,
                },
                _ = sleep_until(due), if due.is_some() => self.sync().await,
                _ = drift.tick(), if self.first_sync_done => self.check_drift().await,
            }
        }
        tracing::info!(node = %self.config.node, "stopping; the table stays in the kernel for the next agent");
    }

    fn on_update(&mut self, update: Update) {
        let effect = self.state.apply(update);
        for p in &effect.problems {
            tracing::warn!(node = %self.config.node, "{p}");
        }
        if let Some(watch) = &effect.restart_shards {
            tracing::info!(selector = ?watch.selector, "watching the address sets the share references");
            self.watchers.watch_shards(watch);
        }
        // Before the first sync every event counts (the first sync happens
        // even if nothing "changed": it is what makes the agent ready).
        if effect.changed || !self.first_sync_done {
            let now = Instant::now();
            let since = self.pending.map_or(now, |p| p.since);
            self.pending = Some(Pending { since, last: now });
        }
        if !self.first_sync_done {
            self.health.set_not_ready(self.waiting_reason());
        }
    }

    fn waiting_reason(&self) -> String {
        let waiting = self.state.waiting_for();
        if waiting.is_empty() {
            return "first sync in progress".to_string();
        }
        let kinds: Vec<&str> = waiting.iter().map(|k| k.as_str()).collect();
        format!(
            "waiting for the first complete list of {}",
            kinds.join(", ")
        )
    }

    /// When the next sync should run, if one is due.
    fn sync_due(&self) -> Option<Instant> {
        if !self.state.is_complete() {
            return None;
        }
        let p = self.pending?;
        let at = (p.last + DEBOUNCE).min(p.since + MAX_DELAY);
        Some(self.retry.map_or(at, |(retry_at, _)| retry_at.max(at)))
    }

    async fn sync(&mut self) {
        let Some(pending) = self.pending else { return };
        let built = input::build(&self.state, &self.last_good, self.config.services.as_ref());
        self.log_problems(&built);
        let Built {
            input,
            generation,
            sets,
            incomplete,
        } = built;
        match self.worker.sync(input).await {
            Ok((report, size)) => {
                self.pending = None;
                self.retry = None;
                self.last_good = sets;
                let m = &self.metrics;
                m.syncs.inc();
                m.changed_objects.inc_by(report.elements as u64);
                self.set_size(size);
                if self.first_sync_done {
                    m.sync_latency
                        .observe(pending.since.elapsed().as_secs_f64());
                }
                let first = !self.first_sync_done;
                if first || report.elements > 0 {
                    tracing::info!(
                        node = %self.config.node,
                        first,
                        generation,
                        changes = report.elements,
                        transactions = report.transactions,
                        rules = size.rules,
                        elements = size.elements,
                        took_ms = report.elapsed.as_secs_f64() * 1000.0,
                        "synced"
                    );
                }
                if first {
                    self.first_sync_done = true;
                    self.health.set_ready();
                }
                let outcome = if incomplete.is_empty() {
                    Outcome::Enforced
                } else {
                    Outcome::Incomplete(incomplete)
                };
                self.report(generation, &outcome);
            }
            Err(e) => {
                self.metrics.sync_errors.inc();
                let delay = self
                    .retry
                    .map_or(RETRY_MIN, |(_, d)| (d * 2).min(RETRY_MAX));
                tracing::error!(node = %self.config.node, error = %e, retry_in_s = delay.as_secs(), "sync failed; the kernel keeps the previous ruleset");
                self.retry = Some((Instant::now() + delay, delay));
                self.report(generation, &Outcome::Failed(format!("{e:#}")));
            }
        }
    }

    /// Logs each problem of the input once, when it appears.
    fn log_problems(&mut self, built: &Built) {
        let mut now: BTreeSet<String> = built.incomplete.iter().cloned().collect();
        if let Some(services) = &built.input.services {
            now.extend(services.errors.iter().map(|e| format!("skipped: {e}")));
        }
        for p in now.difference(&self.problems) {
            tracing::warn!(node = %self.config.node, "{p}");
        }
        self.problems = now;
    }

    fn set_size(&self, size: TableSize) {
        self.metrics.rules.set(size.rules as i64);
        self.metrics.set_elements.set(size.elements as i64);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.metrics.last_sync.set(now.as_secs_f64());
    }

    /// Hands the share's new status to the reporter when it changed.
    fn report(&mut self, generation: Option<i64>, outcome: &Outcome) {
        let (Some(share), Some(generation)) = (self.state.share(), generation) else {
            return;
        };
        let uid = share.metadata.uid.clone();
        // What we wrote last for this object, else what it carries (a
        // restarted agent continues the previous one's status).
        let prev = match &self.reported {
            Some((u, s)) if *u == uid => s.clone(),
            _ => share.status.clone().unwrap_or_default(),
        };
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let next = status::next(&prev, generation, outcome, &now);
        let unchanged = matches!(&self.reported, Some((u, s)) if *u == uid && *s == next)
            || share.status.as_ref() == Some(&next);
        if !unchanged {
            self.reporter.report(next.clone());
        }
        self.reported = Some((uid, next));
    }

    async fn check_drift(&mut self) {
        match self.worker.check_drift().await {
            Ok((Drift::Repaired(report), size)) => {
                self.metrics.drift_repairs.inc();
                self.set_size(size);
                tracing::warn!(
                    node = %self.config.node,
                    changes = report.changes,
                    transactions = report.transactions,
                    "the table was changed behind the agent's back (flushed, deleted or edited); restored"
                );
            }
            Ok((Drift::Clean, _)) => {
                tracing::debug!(node = %self.config.node, "ruleset generation moved; our table is intact")
            }
            Ok((Drift::Unchanged, _)) => {}
            Err(e) => {
                self.metrics.drift_check_errors.inc();
                tracing::warn!(node = %self.config.node, error = %e, "drift check failed; syncing again");
                // A repair the kernel refused leaves the copy at what the
                // kernel holds: a sync (retried with backoff) restores it.
                let now = Instant::now();
                self.pending.get_or_insert(Pending {
                    since: now,
                    last: now,
                });
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
