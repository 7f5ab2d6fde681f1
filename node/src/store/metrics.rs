//! The database's metrics: write latency and failures, recorded by `Db::apply`.

#![allow(unused_imports)]
use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use crate::metrics::{
    EXEC_BUCKETS, FAST_BUCKETS, JOB_BUCKETS, counter, counter_vec, gauge, gauge_vec, histogram,
};

/// The database's metrics.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// Time to apply one batch of writes (one transaction).
    pub write_seconds: Histogram,
    /// Batches that failed.
    pub write_errors: IntCounter,
}

impl StoreMetrics {
    /// The store's metrics in `registry`.
    pub fn new(registry: &Registry) -> Self {
        Self {
            write_seconds: histogram(
                registry,
                "peergrid_store_write_seconds",
                "Time to commit one batch of database writes (one transaction).",
                FAST_BUCKETS,
            ),
            write_errors: counter(
                registry,
                "peergrid_store_write_errors_total",
                "Batches of database writes that failed.",
            ),
        }
    }
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self::new(&Registry::new())
    }
}
