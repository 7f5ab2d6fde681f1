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

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::net::RequestError;
use crate::net::protocol::{BLOB_PROTOCOL, CAPACITY_TOPIC, RESULT_PROTOCOL, TASK_PROTOCOL};
use crate::sandbox::{Entry, Execution, Outcome};

/// The `protocol` label: the three request-response protocols and the capacity topic.
pub const PROTOCOLS: [&str; 4] = ["task", "result", "blob", "capacity"];
/// Request-response protocols only (the `protocol` label of request outcomes).
pub const REQUEST_PROTOCOLS: [&str; 3] = ["task", "result", "blob"];
/// The `direction` label.
pub const DIRECTIONS: [&str; 2] = ["in", "out"];
/// The `outcome` label of outbound requests.
pub const REQUEST_OUTCOMES: [&str; 6] = [
    "ok",
    "timeout",
    "unreachable",
    "connection_closed",
    "unsupported",
    "io",
];
/// The `kind` label of undecodable messages.
pub const DECODE_KINDS: [&str; 3] = ["oversized", "garbled", "invalid"];
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
/// The `state` label of the capacity view's slots.
pub const VIEW_SLOT_STATES: [&str; 2] = ["total", "free"];
/// The `state` label of jobs (`JobState::as_str`).
pub const JOB_STATES: [&str; 5] = ["running", "merging", "done", "failed", "cancelled"];
/// The `state` label of chunks of unfinished jobs.
pub const CHUNK_STATES: [&str; 3] = ["pending", "verified", "failed"];
/// The `verdict` label of results, as verification judged them.
pub const VERDICTS: [&str; 3] = ["agreed", "disagreed", "error"];
/// The `reason` label of reissued replicas.
pub const REISSUE_REASONS: [&str; 2] = ["timed_out", "lost"];

/// Every metric of one node, in its own registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every subsystem's metrics in it.
    pub fn new() -> Self {
        let registry = Registry::new();
        Self {
            node: NodeMetrics::new(&registry),
            net: NetMetrics::new(&registry),
            worker: WorkerMetrics::new(&registry),
            sandbox: SandboxMetrics::new(&registry),
            scheduler: SchedulerMetrics::new(&registry),
            store: StoreMetrics::new(&registry),
            registry,
        }
    }

    /// The registry (for tests that inspect it).
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
fn register<C: Collector + Clone + 'static>(registry: &Registry, metric: C) -> C {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names in metrics.rs are valid and unique");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).expect("valid metric name"),
    )
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(
        registry,
        IntGauge::new(name, help).expect("valid metric name"),
    )
}

/// A counter with labels, every combination of `values` created at zero.
fn counter_vec(
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
fn gauge_vec(
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

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
            .expect("valid metric name and buckets"),
    )
}

/// Every combination of one value per label, in order.
fn combinations<'a>(values: &[&[&'a str]]) -> Vec<Vec<&'a str>> {
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
const FAST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Chunk executions and compiles (1 ms to 5 min).
const EXEC_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Submission to verification (50 ms to 4 h).
const JOB_BUCKETS: &[f64] = &[
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

/// The network's metrics.
#[derive(Debug, Clone)]
pub struct NetMetrics {
    /// Peers with an open connection.
    pub connected_peers: IntGauge,
    /// Peers in the peer book.
    pub known_peers: IntGauge,
    /// Peers with a fresh capacity advert.
    pub view_peers: IntGauge,
    /// Slots in the fresh adverts, by state (total, free).
    pub view_slots: IntGaugeVec,
    /// Messages by protocol and direction.
    pub messages: IntCounterVec,
    /// Message bytes by protocol and direction.
    pub bytes: IntCounterVec,
    /// Outbound requests by protocol and outcome.
    pub requests: IntCounterVec,
    /// Messages that broke the wire rules, by protocol and kind.
    pub decode_errors: IntCounterVec,
    /// Offences counted against peers.
    pub penalties: IntCounter,
    /// Peers banned.
    pub bans: IntCounter,
    /// Peers banned now.
    pub banned_peers: IntGauge,
    /// Inbound requests dropped because the node was busy.
    pub inbound_dropped: IntCounter,
    /// Ping round trips.
    pub ping_rtt: Histogram,
}

impl NetMetrics {
    /// The network's metrics in `registry`.
    pub fn new(registry: &Registry) -> Self {
        Self {
            connected_peers: gauge(
                registry,
                "peergrid_net_connected_peers",
                "Peers with an open connection.",
            ),
            known_peers: gauge(
                registry,
                "peergrid_net_known_peers",
                "Peers this node remembers (bounded by the peer book).",
            ),
            view_peers: gauge(
                registry,
                "peergrid_net_capacity_view_peers",
                "Peers with a fresh capacity advert in this node's view.",
            ),
            view_slots: gauge_vec(
                registry,
                "peergrid_net_capacity_view_slots",
                "Slots advertised by the peers in this node's capacity view, by state (total, free).",
                &["state"],
                &[&VIEW_SLOT_STATES],
            ),
            messages: counter_vec(
                registry,
                "peergrid_net_messages_total",
                "Messages sent (out) and received (in), by protocol.",
                &["protocol", "direction"],
                &[&PROTOCOLS, &DIRECTIONS],
            ),
            bytes: counter_vec(
                registry,
                "peergrid_net_message_bytes_total",
                "Encoded message bytes sent (out) and received (in), by protocol.",
                &["protocol", "direction"],
                &[&PROTOCOLS, &DIRECTIONS],
            ),
            requests: counter_vec(
                registry,
                "peergrid_net_requests_total",
                "Outbound requests by protocol and outcome.",
                &["protocol", "outcome"],
                &[&REQUEST_PROTOCOLS, &REQUEST_OUTCOMES],
            ),
            decode_errors: counter_vec(
                registry,
                "peergrid_net_decode_errors_total",
                "Messages from peers that broke the wire rules (oversized, garbled, invalid), by protocol.",
                &["protocol", "kind"],
                &[&PROTOCOLS, &DECODE_KINDS],
            ),
            penalties: counter(
                registry,
                "peergrid_net_penalties_total",
                "Offences counted against peers.",
            ),
            bans: counter(
                registry,
                "peergrid_net_bans_total",
                "Peers disconnected and banned for repeated offences.",
            ),
            banned_peers: gauge(registry, "peergrid_net_banned_peers", "Peers banned now."),
            inbound_dropped: counter(
                registry,
                "peergrid_net_inbound_dropped_total",
                "Inbound requests dropped because the node was too busy to take them.",
            ),
            ping_rtt: histogram(
                registry,
                "peergrid_net_ping_rtt_seconds",
                "Round-trip time of pings to connected peers.",
                FAST_BUCKETS,
            ),
        }
    }

    /// One message of `bytes` on `protocol` (a stream protocol or the capacity topic).
    pub fn message(&self, protocol: &str, direction: Direction, bytes: usize) {
        let labels = [protocol_label(protocol), direction.as_str()];
        self.messages.with_label_values(&labels).inc();
        self.bytes.with_label_values(&labels).inc_by(bytes as u64);
    }

    /// How an outbound request on `protocol` ended.
    pub fn request(&self, protocol: &str, outcome: Result<(), &RequestError>) {
        let outcome = match outcome {
            Ok(()) => "ok",
            Err(RequestError::Timeout) => "timeout",
            Err(RequestError::Unreachable) => "unreachable",
            Err(RequestError::ConnectionClosed) => "connection_closed",
            Err(RequestError::Unsupported) => "unsupported",
            Err(RequestError::Io(_) | RequestError::Shutdown) => "io",
        };
        self.requests
            .with_label_values(&[protocol_label(protocol), outcome])
            .inc();
    }

    /// A message on `protocol` that broke the rules (`kind`: one of [`DECODE_KINDS`]).
    pub fn decode_error(&self, protocol: &str, kind: &'static str) {
        self.decode_errors
            .with_label_values(&[protocol_label(protocol), kind])
            .inc();
    }
}

impl Default for NetMetrics {
    fn default() -> Self {
        Self::new(&Registry::new())
    }
}

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received.
    In,
    /// Sent.
    Out,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }
}

/// The `protocol` label of a stream protocol or topic name. Only the names this node
/// speaks reach here (libp2p negotiates them), so the label set stays fixed.
pub fn protocol_label(protocol: &str) -> &'static str {
    match protocol {
        TASK_PROTOCOL => "task",
        RESULT_PROTOCOL => "result",
        BLOB_PROTOCOL => "blob",
        CAPACITY_TOPIC => "capacity",
        _ => "other",
    }
}

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
        }
    }

    /// A result judged (`verdict`: one of [`VERDICTS`]).
    pub fn verdict(&self, verdict: &'static str) {
        self.results.with_label_values(&[verdict]).inc();
    }

    /// Samples the job and chunk gauges from the jobs' statuses.
    pub fn sample(&self, jobs: &[crate::scheduler::JobStatus]) {
        let mut by_state = [0i64; JOB_STATES.len()];
        let (mut pending, mut verified, mut failed) = (0i64, 0i64, 0i64);
        for job in jobs {
            let state = job.state.as_str();
            if let Some(i) = JOB_STATES.iter().position(|s| *s == state) {
                by_state[i] += 1;
            }
            if !job.state.is_final() {
                let done = i64::from(job.chunks_verified) + i64::from(job.chunks_failed);
                pending += i64::from(job.chunks_total) - done;
                verified += i64::from(job.chunks_verified);
                failed += i64::from(job.chunks_failed);
            }
        }
        for (state, n) in JOB_STATES.iter().zip(by_state) {
            self.jobs.with_label_values(&[state]).set(n);
        }
        self.chunks.with_label_values(&["pending"]).set(pending);
        self.chunks.with_label_values(&["verified"]).set(verified);
        self.chunks.with_label_values(&["failed"]).set(failed);
    }
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        Self::new(&Registry::new())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_labelled_series_start_at_zero() {
        let metrics = Metrics::new();
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
        let (a, b) = (Metrics::new(), Metrics::new());
        a.net.penalties.inc();
        assert_eq!(a.net.penalties.get(), 1);
        assert_eq!(b.net.penalties.get(), 0);
    }

    #[test]
    fn labels_come_from_fixed_sets() {
        assert_eq!(protocol_label(TASK_PROTOCOL), "task");
        assert_eq!(protocol_label(CAPACITY_TOPIC), "capacity");
        assert_eq!(protocol_label("/somebody/else/1"), "other");
        assert_eq!(combinations(&[&["a", "b"], &["x", "y", "z"]]).len(), 6);
        let m = NetMetrics::default();
        m.message(BLOB_PROTOCOL, Direction::Out, 100);
        assert_eq!(m.bytes.with_label_values(&["blob", "out"]).get(), 100);
        m.request(TASK_PROTOCOL, Err(&RequestError::Timeout));
        assert_eq!(m.requests.with_label_values(&["task", "timeout"]).get(), 1);
    }
}
