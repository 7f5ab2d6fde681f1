//! Prometheus metrics: one [`Registry`] per node, one struct of metrics per subsystem.
//!
//! # Who records what
//! [`Metrics::new`] makes the node's registry and every subsystem's struct in it; the
//! node hands each subsystem its own struct (cheap to clone: every metric is shared):
//!
//! | struct | owner | recorded where |
//! |---|---|---|
//! | [`NetMetrics`] | `net` | the event loop (peers, adverts, request outcomes, offences, bans) and the codec (messages and bytes by protocol) |
//! | [`WorkerMetrics`] | `worker` | each finished execution (outcome, time, fuel); capacity gauges are sampled at scrape |
//! | [`SandboxMetrics`] | `sandbox` | `load` (compile cache), `call` (entry points by outcome) |
//! | [`SchedulerMetrics`] | `scheduler` | the actor (replicas, reissues, verification time) and reputation (verdicts, exclusions); job and chunk gauges are sampled at scrape |
//! | [`StoreMetrics`] | `store` | `Db::apply` (write latency, failures) |
//! | [`NodeMetrics`] | the node | at start (version, start time) |
//!
//! The `/metrics` listener ([`crate::api::metrics`]) samples the gauges that are
//! snapshots of state (worker slots, queue and outbox, jobs and chunks by state) and
//! then encodes the registry in the text format.
//!
//! # Rules
//! Names are `peergrid_<subsystem>_*` with the unit in the name (`_seconds`,
//! `_bytes`, `_total` for counters). Labels take values from small fixed sets (the
//! consts below), never a job, chunk or peer id, so a node exports a bounded number of
//! series however much work it sees. Every labelled series is created at zero when the
//! registry is built, so a dashboard shows 0 rather than "no data" for events that
//! have not happened yet.
//!
//! Each struct also implements `Default`: the same metrics in a private registry
//! nobody scrapes, for a subsystem used outside a node (the CLI's sandbox, unit tests).

use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// One node's registry. Each subsystem makes its own metrics struct in it
/// (`NetMetrics::new(metrics.registry())`, ...), so the registry knows no subsystem.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A fresh, empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registry, for subsystems to register their metrics in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "could not encode metrics");
        }
        out
    }

    /// The content type of [`encode`](Self::encode)'s output.
    pub fn content_type() -> &'static str {
        prometheus::TEXT_FORMAT
    }
}

/// Registers a metric. Names are fixed in this file and unique (a unit test builds
/// the whole registry), so a failure here is a bug in this file, found by every test.
pub(crate) fn register<C: Collector + Clone + 'static>(registry: &Registry, metric: C) -> C {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names in metrics.rs are valid and unique");
    metric
}

pub(crate) fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).expect("valid metric name"),
    )
}

pub(crate) fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(
        registry,
        IntGauge::new(name, help).expect("valid metric name"),
    )
}

/// A counter with labels, every combination of `values` created at zero.
pub(crate) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    values: &[&[&str]],
) -> IntCounterVec {
    let metric = register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name"),
    );
    for combination in combinations(values) {
        metric.with_label_values(&combination);
    }
    metric
}

/// A gauge with labels, every combination of `values` created at zero.
pub(crate) fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    values: &[&[&str]],
) -> IntGaugeVec {
    let metric = register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric name"),
    );
    for combination in combinations(values) {
        metric.with_label_values(&combination);
    }
    metric
}

pub(crate) fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
            .expect("valid metric name and buckets"),
    )
}

/// Every combination of one value per label, in order.
pub(crate) fn combinations<'a>(values: &[&[&'a str]]) -> Vec<Vec<&'a str>> {
    values.iter().fold(vec![Vec::new()], |acc, options| {
        acc.into_iter()
            .flat_map(|prefix| {
                options.iter().map(move |v| {
                    let mut next = prefix.clone();
                    next.push(*v);
                    next
                })
            })
            .collect()
    })
}

/// Short times: store writes, ping round trips (100 µs to 2.5 s).
pub(crate) const FAST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Chunk executions and compiles (1 ms to 5 min).
pub(crate) const EXEC_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Submission to verification (50 ms to 4 h).
pub(crate) const JOB_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

/// The node itself.
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    /// 1, labelled with the version.
    pub info: IntGaugeVec,
    /// When the node started (unix seconds).
    pub start_time: Gauge,
}

impl NodeMetrics {
    /// The node's metrics in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let info = gauge_vec(
            registry,
            "peergrid_node_info",
            "Always 1; the version label says which peergrid this node runs.",
            &["version"],
            &[&[env!("CARGO_PKG_VERSION")]],
        );
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let start_time = register(
            registry,
            Gauge::new(
                "peergrid_node_start_time_seconds",
                "When the node started, in seconds since the Unix epoch.",
            )
            .expect("valid metric name"),
        );
        start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        Self { info, start_time }
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new(&Registry::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_combinations_cover_every_pair() {
        assert_eq!(combinations(&[&["a", "b"], &["x", "y", "z"]]).len(), 6);
    }
}
