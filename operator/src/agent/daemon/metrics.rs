//! The agent's Prometheus metrics (served on `/metrics` by [`crate::http`]).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label of the per-watcher counters.
pub type ResourceLabel = [(&'static str, &'static str); 1];

/// Cheap to clone: every field is a handle on the registered metric.
#[derive(Clone)]
pub struct Metrics {
    /// From the oldest watch event not yet enforced to the kernel's commit.
    pub sync_latency: Histogram,
    pub syncs: Counter,
    pub sync_errors: Counter,
    /// Kernel objects (rules, set elements, headers) changed by syncs; a
    /// restarted agent taking over an up-to-date table adds 0.
    pub changed_objects: Counter,
    pub drift_repairs: Counter,
    pub drift_check_errors: Counter,
    pub watch_errors: Family<ResourceLabel, Counter>,
    /// Rules in the enforced table.
    pub rules: Gauge,
    /// Elements of the table's sets and maps (not counting what the kernel
    /// adds to dynamic sets).
    pub set_elements: Gauge,
    /// Unix time of the last successful sync.
    pub last_sync: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    /// The metrics, registered in a new registry under `kube_nft_agent_`.
    pub fn new() -> (Metrics, Registry) {
        let mut registry = Registry::with_prefix("kube_nft_agent");
        let m = Metrics {
            // 0.5 ms … ~16 s.
            sync_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            syncs: Counter::default(),
            sync_errors: Counter::default(),
            changed_objects: Counter::default(),
            drift_repairs: Counter::default(),
            drift_check_errors: Counter::default(),
            watch_errors: Family::default(),
            rules: Gauge::default(),
            set_elements: Gauge::default(),
            last_sync: Gauge::default(),
        };
        registry.register(
            "sync_latency_seconds",
            "Time from the oldest watch event not yet enforced to the kernel's commit",
            m.sync_latency.clone(),
        );
        registry.register(
            "syncs",
            "Syncs committed (or found nothing to change)",
            m.syncs.clone(),
        );
        registry.register(
            "sync_errors",
            "Syncs that failed (the kernel kept the previous ruleset)",
            m.sync_errors.clone(),
        );
        registry.register(
            "changed_objects",
            "Kernel objects (rules, set elements, headers) changed by syncs",
            m.changed_objects.clone(),
        );
        registry.register(
            "drift_repairs",
            "Times the table was found changed behind the agent's back and restored",
            m.drift_repairs.clone(),
        );
        registry.register(
            "drift_check_errors",
            "Drift checks that could not read or restore the table",
            m.drift_check_errors.clone(),
        );
        registry.register(
            "watch_errors",
            "Watch errors by resource (the watcher retries with backoff)",
            m.watch_errors.clone(),
        );
        registry.register("rules", "Rules in the enforced table", m.rules.clone());
        registry.register(
            "set_elements",
            "Elements of the enforced table's sets and maps",
            m.set_elements.clone(),
        );
        registry.register(
            "last_sync_timestamp_seconds",
            "Unix time of the last successful sync",
            m.last_sync.clone(),
        );
        (m, registry)
    }

    pub fn watch_error(&self, resource: &'static str) {
        self.watch_errors
            .get_or_create(&[("resource", resource)])
            .inc();
    }
}
