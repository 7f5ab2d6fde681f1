//! The scheduler's metrics: recorded by the actor (replicas, reissues, verification
//! time) and reputation (verdicts, exclusions); job and chunk gauges are sampled at
//! scrape.

#![allow(unused_imports)]
use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use crate::metrics::{
    EXEC_BUCKETS, FAST_BUCKETS, JOB_BUCKETS, counter, counter_vec, gauge, gauge_vec, histogram,
};

/// The `state` label of jobs (`JobState::as_str`).
pub const JOB_STATES: [&str; 5] = ["running", "merging", "done", "failed", "cancelled"];
/// The `state` label of chunks of unfinished jobs.
pub const CHUNK_STATES: [&str; 3] = ["pending", "verified", "failed"];
/// The `verdict` label of results, as verification judged them.
pub const VERDICTS: [&str; 4] = ["agreed", "disagreed", "caught", "error"];
/// The `reason` label of reissued replicas.
pub const REISSUE_REASONS: [&str; 2] = ["timed_out", "lost"];
/// Why a result was dropped before any check (see `scheduler::screen`): a copy
/// within its batch, already stored, or for a replica that is not live or not ours.
pub const SCREENED: [&str; 3] = ["copy", "stored", "not_live"];

/// The scheduler's metrics.
#[derive(Debug, Clone)]
pub struct SchedulerMetrics {
    /// Jobs this node submitted, by state.
    pub jobs: IntGaugeVec,
    /// Chunks of unfinished jobs, by state.
    pub chunks: IntGaugeVec,
    /// Replicas accepted by workers.
    pub replicas_issued: IntCounter,
    /// Results judged by verification, by verdict.
    pub results: IntCounterVec,
    /// Replicas issued again, by reason.
    pub reissues: IntCounterVec,
    /// Time from a job's submission to each of its chunks' verification.
    pub submit_to_verified: Histogram,
    /// Peers no longer given work because of their reputation.
    pub peers_excluded: IntGauge,
    /// Results dropped before any hash or signature check, by reason ([`SCREENED`]).
    pub results_screened: IntCounterVec,
}

impl SchedulerMetrics {
    /// The scheduler's metrics in `registry`.
    pub fn new(registry: &Registry) -> Self {
        Self {
            jobs: gauge_vec(
                registry,
                "peergrid_scheduler_jobs",
                "Jobs submitted through this node, by state.",
                &["state"],
                &[&JOB_STATES],
            ),
            chunks: gauge_vec(
                registry,
                "peergrid_scheduler_chunks",
                "Chunks of this node's unfinished jobs, by state.",
                &["state"],
                &[&CHUNK_STATES],
            ),
            replicas_issued: counter(
                registry,
                "peergrid_scheduler_replicas_issued_total",
                "Chunk replicas accepted by workers.",
            ),
            results: counter_vec(
                registry,
                "peergrid_scheduler_results_total",
                "Workers' results as verification judged them: agreed with the verified outcome, disagreed (a minority), error (unusable or non-deterministic).",
                &["verdict"],
                &[&VERDICTS],
            ),
            reissues: counter_vec(
                registry,
                "peergrid_scheduler_reissues_total",
                "Replicas issued again because the first timed out or its peer left.",
                &["reason"],
                &[&REISSUE_REASONS],
            ),
            submit_to_verified: histogram(
                registry,
                "peergrid_scheduler_submit_to_verified_seconds",
                "Time from a job's submission to the verification of each of its chunks.",
                JOB_BUCKETS,
            ),
            peers_excluded: gauge(
                registry,
                "peergrid_scheduler_peers_excluded",
                "Peers this submitter no longer gives work to, because of their reputation.",
            ),
            results_screened: counter_vec(
                registry,
                "peergrid_scheduler_results_screened_total",
                "Results acknowledged and dropped before any hash or signature check: copies within a batch, results already stored, results for replicas that are not live or not this peer's.",
                &["reason"],
                &[&SCREENED],
            ),
        }
    }

    /// A result judged (`verdict`: one of [`VERDICTS`]).
    pub fn verdict(&self, verdict: &'static str) {
        self.results.with_label_values(&[verdict]).inc();
    }

    /// Sets the job gauges (every job by state) and the chunk gauges (chunks of
    /// unfinished jobs by state) from the counts the scheduler keeps.
    pub fn set_counts(
        &self,
        jobs: &std::collections::HashMap<crate::scheduler::JobState, i64>,
        chunks: &crate::scheduler::job::ChunkCounts,
    ) {
        for state in [
            crate::scheduler::JobState::Running,
            crate::scheduler::JobState::Merging,
            crate::scheduler::JobState::Done,
            crate::scheduler::JobState::Failed,
            crate::scheduler::JobState::Cancelled,
        ] {
            let n = jobs.get(&state).copied().unwrap_or(0).max(0);
            self.jobs.with_label_values(&[state.as_str()]).set(n);
        }
        self.chunks
            .with_label_values(&["pending"])
            .set(i64::from(chunks.pending));
        self.chunks
            .with_label_values(&["verified"])
            .set(i64::from(chunks.verified));
        self.chunks
            .with_label_values(&["failed"])
            .set(i64::from(chunks.failed));
    }
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        Self::new(&Registry::new())
    }
}
