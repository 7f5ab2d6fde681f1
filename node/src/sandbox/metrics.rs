//! The sandbox's metrics: compile-cache lookups and compile time (`load`), and
//! calls by entry point and outcome (`call`).

#![allow(unused_imports)]
use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use std::time::Duration;

use super::{Entry, Execution, Outcome};
use crate::metrics::{
    EXEC_BUCKETS, FAST_BUCKETS, JOB_BUCKETS, counter, counter_vec, gauge, gauge_vec, histogram,
};

/// The `outcome` label of executions.
pub const EXEC_OUTCOMES: [&str; 7] = [
    "ok",
    "trap",
    "out_of_fuel",
    "memory_limit",
    "timeout",
    "invalid",
    "cancelled",
];
/// The `entry` label of sandbox calls.
pub const ENTRIES: [&str; 3] = ["run", "split", "merge"];
/// The `result` label of compile-cache lookups.
pub const CACHE_RESULTS: [&str; 3] = ["memory_hit", "disk_hit", "miss"];
/// The `outcome` label of an execution.
pub fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ok(_) => "ok",
        Outcome::Trap { .. } => "trap",
        Outcome::OutOfFuel => "out_of_fuel",
        Outcome::MemoryLimit => "memory_limit",
        Outcome::Timeout => "timeout",
        Outcome::Invalid(_) => "invalid",
        Outcome::Cancelled => "cancelled",
    }
}

/// The sandbox's metrics.
#[derive(Debug, Clone)]
pub struct SandboxMetrics {
    /// Module loads by where the compiled module came from.
    pub cache: IntCounterVec,
    /// Time to compile a module (cache misses only).
    pub compile_seconds: Histogram,
    /// Entry-point calls by entry and outcome.
    pub calls: IntCounterVec,
}

impl SandboxMetrics {
    /// The sandbox's metrics in `registry`.
    pub fn new(registry: &Registry) -> Self {
        Self {
            cache: counter_vec(
                registry,
                "peergrid_sandbox_compile_cache_lookups_total",
                "Module loads by result: memory_hit, disk_hit (compiled artifact on disk), miss (compiled now).",
                &["result"],
                &[&CACHE_RESULTS],
            ),
            compile_seconds: histogram(
                registry,
                "peergrid_sandbox_compile_seconds",
                "Time to compile a module to machine code (cache misses).",
                EXEC_BUCKETS,
            ),
            calls: counter_vec(
                registry,
                "peergrid_sandbox_calls_total",
                "Calls of a module's entry points (run, split, merge), by outcome.",
                &["entry", "outcome"],
                &[&ENTRIES, &EXEC_OUTCOMES],
            ),
        }
    }

    /// A module load (`result`: one of [`CACHE_RESULTS`]).
    pub fn lookup(&self, result: &'static str) {
        self.cache.with_label_values(&[result]).inc();
    }

    /// A module compiled in `took`.
    pub fn compiled(&self, took: Duration) {
        self.lookup("miss");
        self.compile_seconds.observe(took.as_secs_f64());
    }

    /// An entry point returned.
    pub fn call(&self, entry: Entry, execution: &Execution) {
        let entry = match entry {
            Entry::Run => "run",
            Entry::Split => "split",
            Entry::Merge => "merge",
        };
        self.calls
            .with_label_values(&[entry, outcome_label(&execution.outcome)])
            .inc();
    }
}

impl Default for SandboxMetrics {
    fn default() -> Self {
        Self::new(&Registry::new())
    }
}
