//! What the control API's handlers and the node's own tasks share: [`NodeState`]
//! (built by `Node::spawn`, read here), and [`AllMetrics`], every subsystem's metrics
//! in one registry. The API sits above every subsystem and below the node, so it may
//! name them all; no subsystem names it.

use std::sync::Arc;
use std::time::Instant;

use crate::metrics::{Metrics, NodeMetrics};
use crate::net::NetClient;
use crate::net::metrics::NetMetrics;
use crate::net::protocol::{CapacityAdvert, PROTOCOL_VERSION};
use crate::sandbox::metrics::SandboxMetrics;
use crate::scheduler::Scheduler;
use crate::scheduler::metrics::SchedulerMetrics;
use crate::settings::NodeConfig;
use crate::store::metrics::StoreMetrics;
use crate::store::{BlobStore, Db};
use crate::worker::Worker;
use crate::worker::metrics::WorkerMetrics;

/// One node's registry with every subsystem's metrics in it. `Node::spawn` hands
/// each subsystem its own struct (cheap to clone: every metric is shared).
#[derive(Debug, Clone)]
pub struct AllMetrics {
    /// The registry `/metrics` encodes.
    pub registry: Metrics,
    /// The node itself.
    pub node: NodeMetrics,
    /// The network.
    pub net: NetMetrics,
    /// The worker.
    pub worker: WorkerMetrics,
    /// The sandbox.
    pub sandbox: SandboxMetrics,
    /// The scheduler (submitter side).
    pub scheduler: SchedulerMetrics,
    /// The database.
    pub store: StoreMetrics,
}

impl Default for AllMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AllMetrics {
    /// A fresh registry with every subsystem's metrics in it.
    pub fn new() -> Self {
        let registry = Metrics::new();
        let r = registry.registry();
        Self {
            node: NodeMetrics::new(r),
            net: NetMetrics::new(r),
            worker: WorkerMetrics::new(r),
            sandbox: SandboxMetrics::new(r),
            scheduler: SchedulerMetrics::new(r),
            store: StoreMetrics::new(r),
            registry,
        }
    }

    /// Every metric in the Prometheus text format.
    pub fn encode(&self) -> String {
        self.registry.encode()
    }
}

/// What the control API and the node's tasks share.
#[derive(Debug)]
pub struct NodeState {
    /// The network.
    pub(crate) net: NetClient,
    /// The blob store.
    pub(crate) blobs: BlobStore,
    /// The database.
    pub(crate) db: Arc<Db>,
    /// The worker side.
    pub(crate) worker: Worker,
    /// The submitter side.
    pub(crate) scheduler: Scheduler,
    /// The resolved configuration.
    pub(crate) config: NodeConfig,
    /// Measured fuel per CPU second of one slot: `None` until measured (a first
    /// start measures in the background, see `node/speed.rs`).
    pub(crate) fuel_speed: tokio::sync::watch::Receiver<Option<u64>>,
    /// When the node started.
    pub(crate) started: Instant,
    /// The node's metrics (its own registry).
    pub(crate) metrics: AllMetrics,
}

impl NodeState {
    /// The network.
    pub fn net(&self) -> &NetClient {
        &self.net
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The worker side.
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// The submitter side.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The resolved configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &AllMetrics {
        &self.metrics
    }

    /// The database, for tests that check what was written.
    #[cfg(feature = "test-utils")]
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// Measured fuel per CPU second of one slot; 0 until measured.
    pub fn fuel_per_sec(&self) -> u64 {
        self.fuel_speed.borrow().unwrap_or(0)
    }

    /// The advert this node publishes now.
    pub fn advert(&self, seq: u64) -> CapacityAdvert {
        let worker = self.worker.status();
        let (slots_total, slots_free) = if self.worker.inflates() {
            let max = crate::net::protocol::MAX_ADVERT_SLOTS;
            (max, max)
        } else {
            (worker.slots_total, worker.slots_free)
        };
        CapacityAdvert {
            version: PROTOCOL_VERSION,
            seq,
            slots_total,
            slots_free,
            cores: self.config.cpus,
            memory_limit: self.config.memory_per_chunk,
            fuel_per_sec: self.fuel_per_sec(),
            features: vec!["abi-v1".into()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::RequestError;
    use crate::net::metrics::Direction;
    use crate::net::protocol::{BLOB_PROTOCOL, CAPACITY_TOPIC, TASK_PROTOCOL};

    #[test]
    fn every_metric_registers_and_labelled_series_start_at_zero() {
        let metrics = AllMetrics::new();
        let text = metrics.encode();
        for name in [
            "peergrid_node_info",
            "peergrid_net_connected_peers",
            "peergrid_worker_slots",
            "peergrid_sandbox_compile_cache_lookups_total",
            "peergrid_scheduler_submit_to_verified_seconds_bucket",
            "peergrid_store_write_seconds_count",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(
            text.contains(r#"peergrid_net_decode_errors_total{kind="garbled",protocol="blob"} 0"#)
        );
        assert!(text.contains(r#"peergrid_scheduler_jobs{state="done"} 0"#));
        // Every sample is a peergrid metric, and no label can carry an id.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("peergrid_"), "{line}");
        }
    }

    #[test]
    fn nodes_in_one_process_have_separate_registries() {
        let (a, b) = (AllMetrics::new(), AllMetrics::new());
        a.net.penalties.inc();
        assert_eq!(a.net.penalties.get(), 1);
        assert_eq!(b.net.penalties.get(), 0);
    }

    #[test]
    fn labels_come_from_fixed_sets() {
        use crate::net::metrics::protocol_label;
        assert_eq!(protocol_label(TASK_PROTOCOL), "task");
        assert_eq!(protocol_label(CAPACITY_TOPIC), "capacity");
        assert_eq!(protocol_label("/somebody/else/1"), "other");
        let m = NetMetrics::default();
        m.message(BLOB_PROTOCOL, Direction::Out, 100);
        assert_eq!(m.bytes.with_label_values(&["blob", "out"]).get(), 100);
        m.request(TASK_PROTOCOL, Err(&RequestError::Timeout));
        assert_eq!(m.requests.with_label_values(&["task", "timeout"]).get(), 1);
    }
}
