//! The worker's metrics: recorded after each execution (outcome, time, fuel); the
//! capacity and volunteer gauges are sampled at scrape.

#![allow(unused_imports)]
use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use crate::metrics::{
    EXEC_BUCKETS, FAST_BUCKETS, JOB_BUCKETS, counter, counter_vec, gauge, gauge_vec, histogram,
    register,
};
use crate::sandbox::Execution;
use crate::sandbox::metrics::{EXEC_OUTCOMES, outcome_label};

/// The `state` label of worker slots.
pub const SLOT_STATES: [&str; 2] = ["busy", "free"];
/// The `reason` label of a suspended worker (see `worker::politeness::Reason`).
pub const SUSPEND_REASONS: [&str; 5] = [
    "paused",
    "outside_active_hours",
    "busy",
    "no_spare_core",
    "nothing_lent",
];
/// The `reason` label of refused assignments.
pub const REFUSE_REASONS: [&str; 6] = [
    "no_free_slots",
    "fair_share",
    "suspended",
    "limits_too_high",
    "bad_module",
    "outbox_full",
];
/// The worker's metrics.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    /// Lent slots by state (busy, free).
    pub slots: IntGaugeVec,
    /// Assignments taken and waiting for a slot.
    pub queue_length: IntGauge,
    /// Results waiting for the submitter's acknowledgement.
    pub outbox: IntGauge,
    /// Measured fuel per second of one slot, as advertised.
    pub fuel_per_second: IntGauge,
    /// Chunks executed, by outcome.
    pub executed: IntCounterVec,
    /// Execution time of chunks.
    pub execution_seconds: Histogram,
    /// Fuel burnt by chunks.
    pub fuel: IntCounter,
    /// 1 for the reason the worker is suspended, 0 for the others.
    pub suspended: IntGaugeVec,
    /// Slots the volunteer controls allow now.
    pub slots_allowed: IntGauge,
    /// Chunks paused inside the sandbox.
    pub chunks_paused: IntGauge,
    /// Share of the machine's CPU other programs use (0–1).
    pub other_cpu_ratio: Gauge,
    /// Chunks withdrawn after a long pause.
    pub withdrawn: IntCounter,
    /// Assignments refused, by reason.
    pub refused: IntCounterVec,
    /// Undelivered results dropped after the outbox expiry.
    pub expired: IntCounter,
}

impl WorkerMetrics {
    /// The worker's metrics in `registry`.
    pub fn new(registry: &Registry) -> Self {
        Self {
            slots: gauge_vec(
                registry,
                "peergrid_worker_slots",
                "Slots this node lends, by state (busy: running a chunk, free).",
                &["state"],
                &[&SLOT_STATES],
            ),
            queue_length: gauge(
                registry,
                "peergrid_worker_queue_length",
                "Assignments accepted and waiting for a free slot.",
            ),
            outbox: gauge(
                registry,
                "peergrid_worker_outbox_results",
                "Finished results waiting for their submitter's acknowledgement.",
            ),
            fuel_per_second: gauge(
                registry,
                "peergrid_worker_advertised_fuel_per_second",
                "Fuel one slot burns per second on this machine (measured at start, advertised).",
            ),
            executed: counter_vec(
                registry,
                "peergrid_worker_chunks_executed_total",
                "Chunks executed for other peers, by outcome.",
                &["outcome"],
                &[&EXEC_OUTCOMES],
            ),
            execution_seconds: histogram(
                registry,
                "peergrid_worker_execution_seconds",
                "Wall time of chunk executions.",
                EXEC_BUCKETS,
            ),
            fuel: counter(
                registry,
                "peergrid_worker_fuel_consumed_total",
                "Fuel consumed by executed chunks.",
            ),
            suspended: gauge_vec(
                registry,
                "peergrid_worker_suspended",
                "1 while the worker runs no chunk for this reason (paused by hand, outside the active hours, other programs busy, no spare core, nothing lent).",
                &["reason"],
                &[&SUSPEND_REASONS],
            ),
            slots_allowed: gauge(
                registry,
                "peergrid_worker_slots_allowed",
                "Chunks the volunteer controls let run now (spare cores, preferences).",
            ),
            chunks_paused: gauge(
                registry,
                "peergrid_worker_chunks_paused",
                "Chunks paused inside the sandbox because the machine is not spare.",
            ),
            other_cpu_ratio: register(
                registry,
                Gauge::new(
                    "peergrid_worker_other_cpu_ratio",
                    "Share of the machine's CPU used by programs other than peergrid (0-1), as last sampled.",
                )
                .expect("valid metric name"),
            ),
            withdrawn: counter(
                registry,
                "peergrid_worker_chunks_withdrawn_total",
                "Chunks withdrawn after a long pause (their submitters reissue them).",
            ),
            refused: counter_vec(
                registry,
                "peergrid_worker_assignments_refused_total",
                "Assignments offered to this worker and refused, by reason.",
                &["reason"],
                &[&REFUSE_REASONS],
            ),
            expired: counter(
                registry,
                "peergrid_worker_outbox_expired_total",
                "Undelivered results dropped because their submitter never took them.",
            ),
        }
    }

    /// Records the state of the volunteer controls.
    pub fn volunteer(&self, status: &crate::worker::politeness::VolunteerStatus) {
        use crate::worker::politeness::Reason;
        let current = status.reason.as_ref().map(|r| match r {
            Reason::Paused { .. } => "paused",
            Reason::OutsideActiveHours { .. } => "outside_active_hours",
            Reason::Busy { .. } => "busy",
            Reason::NoSpareCore { .. } => "no_spare_core",
            Reason::NothingLent => "nothing_lent",
        });
        for reason in SUSPEND_REASONS {
            self.suspended
                .with_label_values(&[reason])
                .set(i64::from(current == Some(reason)));
        }
        self.slots_allowed.set(status.slots_allowed.into());
        if let Some(cpu) = &status.cpu {
            self.other_cpu_ratio
                .set(f64::from(cpu.other_percent) / 100.0);
        }
    }

    /// One chunk finished executing.
    pub fn executed(&self, execution: &Execution) {
        self.executed
            .with_label_values(&[outcome_label(&execution.outcome)])
            .inc();
        self.execution_seconds
            .observe(execution.elapsed.as_secs_f64());
        self.fuel.inc_by(execution.fuel_used);
    }

    /// Samples the capacity gauges from the worker's status.
    pub fn sample(&self, status: &crate::worker::WorkerStatus, fuel_per_second: u64) {
        let busy = status.slots_total.saturating_sub(status.slots_free);
        self.slots.with_label_values(&["busy"]).set(busy.into());
        self.slots
            .with_label_values(&["free"])
            .set(status.slots_free.into());
        self.queue_length
            .set(status.active.saturating_sub(busy + status.paused).into());
        self.chunks_paused.set(status.paused.into());
        self.outbox
            .set(i64::try_from(status.outbox).unwrap_or(i64::MAX));
        self.fuel_per_second
            .set(i64::try_from(fuel_per_second).unwrap_or(i64::MAX));
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new(&Registry::new())
    }
}
