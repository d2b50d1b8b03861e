//! The operator's Prometheus metrics (prefix `kube_nft_operator`), served on
//! `/metrics` by [`crate::http`].

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: String,
    /// `apply` or `delete`.
    pub op: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The kind of object (or `Lease`, `Event`) the failed call was about.
    pub kind: String,
    /// `watch`, `invalid` (rejected by validation), `write`, `list`, `lease`,
    /// `event`.
    pub reason: String,
}

/// Handles to every metric; cheap to clone (they share their values).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Objects held in the watch caches, by kind.
    pub watched: Family<KindLabel, Gauge>,
    /// Time to take a batch of events into the model and compile, and plan
    /// the writes.
    pub compile_seconds: Histogram,
    /// Successful writes, by kind and op.
    pub writes: Family<WriteLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    /// 1 while this replica holds the Lease.
    pub leader: Gauge,
}

impl Metrics {
    /// The metrics and the registry that exposes them.
    pub fn new() -> (Metrics, Registry) {
        let metrics = Metrics {
            watched: Family::default(),
            // 100 µs … ~52 s.
            compile_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 20)),
            writes: Family::default(),
            errors: Family::default(),
            leader: Gauge::default(),
        };
        let mut registry = Registry::with_prefix("kube_nft_operator");
        registry.register(
            "watched_objects",
            "Objects in the watch caches, by kind",
            metrics.watched.clone(),
        );
        registry.register(
            "compile_duration_seconds",
            "Time to apply a batch of watch events to the model, compile and plan the writes",
            metrics.compile_seconds.clone(),
        );
        registry.register(
            "writes",
            "Objects written to the API server, by kind and op (apply, delete)",
            metrics.writes.clone(),
        );
        registry.register(
            "errors",
            "Failures, by kind of object and reason (watch, invalid, list, write, lease, event)",
            metrics.errors.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and writes",
            metrics.leader.clone(),
        );
        (metrics, registry)
    }

    pub fn set_watched(&self, kind: &str, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.watched
            .get_or_create(&KindLabel { kind: kind.into() })
            .set(n);
    }

    pub fn wrote(&self, kind: &str, op: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.into(),
                op: op.into(),
            })
            .inc();
    }

    pub fn error(&self, kind: &str, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind: kind.into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub fn compiled(&self, took: Duration) {
        self.compile_seconds.observe(took.as_secs_f64());
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }
}
