//! The worker: runs other peers' chunks within the slots this node lends.
//!
//! # Message flow
//! - The node's dispatcher hands it task offers ([`Worker::offer`], in
//!   `admission.rs`). Admission is immediate and bounded: an assignment is taken while
//!   fewer than `slots × QUEUE_FACTOR` are active and the outbox has room, and refused
//!   with a reason otherwise (`NoFreeSlots`, `LimitsTooHigh`).
//! - Each taken assignment becomes a task (`run.rs`) that waits for a slot (a
//!   semaphore of `slots` permits), fetches the module and a large input from the
//!   submitter as blobs, and runs the chunk through the [`Executor`] on the worker's
//!   own chunk [`pool`]: threads at the lowest OS priority (nice 19) that nothing
//!   else uses, so the volunteer's own programs come first and the node's other
//!   blocking work (merges, blob serving, the database) does not inherit that
//!   priority.
//! - The finished [`ChunkResult`](crate::types::ChunkResult) is written to the
//!   outbox (SQLite, on a blocking thread) before anything else, then the delivery
//!   task (`delivery.rs`) sends it to the submitter in batches bounded by count and
//!   bytes, reading the outbox in pages; only an acknowledgement removes a result. A
//!   worker that restarts still delivers.
//! - Cancels ([`Worker::cancel`]) stop running chunks at the end of their current fuel slice (a few ms) and drop
//!   queued ones and undelivered results.
//! - The politeness loop (`controls.rs`) ticks the volunteer controls
//!   ([`politeness`]) every sample interval and after every pause, resume or change
//!   of preferences: it sets the sandbox [`Gate`] (how many chunks run, at what duty
//!   cycle; chunks over the allowance pause inside the sandbox and go on later),
//!   wakes the advertiser when the slots it may lend change, and withdraws chunks
//!   paused longer than `withdraw_after`: they end with a `Withdrawn` result, so
//!   their submitters reissue them elsewhere at no cost to this worker's standing.
//!
//! Nothing here blocks an async thread: database calls go through
//! [`Db::run`](crate::store::Db::run) (small write batches through
//! [`Db::write`](crate::store::Db::write)), blob files through `spawn_blocking`, chunks
//! through the pool.

mod admission;
mod controls;
mod delivery;
pub mod executor;
pub mod limits;
pub mod metrics;
pub mod politeness;
pub mod pool;
mod run;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use libp2p::PeerId;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use self::executor::{Executor, LyingExecutor, SandboxExecutor};
pub use self::limits::WorkerLimits;
use self::politeness::{Politeness, SystemClock, VolunteerConfig};
use self::pool::ChunkPool;
pub use self::run::wire_outcome;
use crate::net::NetClient;
use crate::net::protocol::{BlobHash, JobId, ResultAck, ResultBatch};
use crate::sandbox::{ChunkControl, Gate, JobModule, Sandbox};
use crate::store::BlobStore;
use crate::store::db::Db;

pub use crate::types::QUEUE_FACTOR;

/// Where results of this node's own jobs go: straight to its scheduler, not over the
/// network (set by the node, so the worker need not know the scheduler).
#[derive(Clone)]
pub struct LocalResults(pub Arc<LocalResultsFn>);

/// The function behind [`LocalResults`].
pub type LocalResultsFn =
    dyn Fn(PeerId, ResultBatch) -> futures::future::BoxFuture<'static, ResultAck> + Send + Sync;

impl std::fmt::Debug for LocalResults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalResults")
    }
}

/// Outputs up to this size travel inline; larger ones as blobs.
pub const INLINE_OUTPUT: usize = 4 * 1024 * 1024;

/// A chunk replica on this worker: (submitter, job, chunk, attempt). Two submitters
/// may pick the same job id; neither can touch the other's chunks.
type Key = (PeerId, JobId, u32, u32);

/// The worker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    net: NetClient,
    blobs: BlobStore,
    db: Arc<Db>,
    sandbox: Sandbox,
    executor: Arc<dyn Executor>,
    /// Most chunks that may hold a thread at once (the gate decides how many run).
    slots_max: u32,
    memory_limit: u64,
    /// What a chunk and a submitter may have here at most (`max_fuel` aside).
    limits: WorkerLimits,
    /// The most fuel a chunk may ask for: `limits.max_fuel` at start; with
    /// `--max-fuel auto`, the node raises it once the fuel speed is measured
    /// ([`Worker::set_max_fuel`]).
    max_fuel: AtomicU64,
    /// Slots: a chunk holds one while it runs (or waits at the gate) on the pool.
    exec: Arc<Semaphore>,
    /// The threads chunks run on (`slots_max` at most).
    pool: ChunkPool,
    gate: Arc<Gate>,
    politeness: Arc<Politeness>,
    /// Wakes the politeness loop after a pause, resume or change of preferences.
    politeness_changed: Notify,
    active: Mutex<HashMap<Key, Arc<ChunkControl>>>,
    /// Submitters refused for want of room, and when (the fair share's "waiting").
    waiting: Mutex<HashMap<PeerId, tokio::time::Instant>>,
    /// This node's scheduler: results of its own jobs are delivered to it directly.
    local_scheduler: OnceLock<LocalResults>,
    /// Modules loaded by blob hash, so a chunk costs no disk read or hashing.
    modules: Mutex<HashMap<BlobHash, JobModule>>,
    /// Modules refused here (over a cap, WAT, invalid), by blob hash.
    refused_modules: Mutex<run::RefusedModules>,
    /// Chunk inputs (blobs) being fetched or read now, with how many chunks use each.
    inputs: Mutex<HashMap<BlobHash, u32>>,
    /// Results in the outbox, as last counted (plus those written since).
    outbox_len: AtomicU64,
    /// The same per submitter, with bytes (for the quotas).
    outbox: Mutex<delivery::OutboxCounts>,
    /// Taken around every change to the outbox's rows together with the change to
    /// their counts, and around a recount: the counts move only with the rows.
    outbox_gate: tokio::sync::Mutex<()>,
    /// Set when rows left the outbox uncounted (a cancel): the delivery loop
    /// counts again.
    outbox_stale: std::sync::atomic::AtomicBool,
    /// Tests only: take every offer and advertise the most slots a peer may claim
    /// (an inflating peer; see `Seams::inflater`).
    #[cfg(feature = "test-utils")]
    greedy: std::sync::atomic::AtomicBool,
    deliver: Notify,
    changed: Notify,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    executed: AtomicU64,
    withdrawn: AtomicU64,
    metrics: metrics::WorkerMetrics,
}

/// What the worker is doing, for status and adverts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerStatus {
    /// Slots lent now: the preferences' slots, fewer when other programs need the
    /// machine, 0 while suspended.
    pub slots_total: u32,
    /// Of those, slots not running a chunk.
    pub slots_free: u32,
    /// Slots the preferences lend when the machine is spare (`--cpus`).
    pub slots_lent: u32,
    /// Chunks computing inside the sandbox now (not paused, not still fetching).
    pub running: u32,
    /// Chunks paused inside the sandbox (suspended, or over the slots lent now).
    pub paused: u32,
    /// Chunks withdrawn since start (paused too long; reissued by their submitters).
    pub withdrawn: u64,
    /// Assignments taken and not finished (running + queued).
    pub active: u32,
    /// Results waiting for acknowledgement.
    pub outbox: u64,
    /// Chunks executed since start.
    pub executed: u64,
}

impl Worker {
    /// A worker lending slots of at most `memory_limit` bytes each as `volunteer`
    /// says; `state_file` keeps a pause and run-time preferences across restarts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        net: NetClient,
        blobs: BlobStore,
        db: Arc<Db>,
        sandbox: Sandbox,
        executor: Arc<dyn Executor>,
        volunteer: VolunteerConfig,
        memory_limit: u64,
        limits: WorkerLimits,
        state_file: Option<PathBuf>,
        shutdown: CancellationToken,
        metrics: metrics::WorkerMetrics,
    ) -> Self {
        let politeness =
            Politeness::new(volunteer, memory_limit, state_file, Arc::new(SystemClock));
        Self::with_politeness(
            net, blobs, db, sandbox, executor, politeness, limits, shutdown, metrics,
        )
    }

    /// [`new`](Self::new) with the volunteer controls read from `clock` (tests).
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn with_clock(
        net: NetClient,
        blobs: BlobStore,
        db: Arc<Db>,
        sandbox: Sandbox,
        executor: Arc<dyn Executor>,
        volunteer: VolunteerConfig,
        memory_limit: u64,
        limits: WorkerLimits,
        clock: Arc<dyn politeness::Clock>,
        shutdown: CancellationToken,
    ) -> Self {
        let politeness = Politeness::new(volunteer, memory_limit, None, clock);
        Self::with_politeness(
            net,
            blobs,
            db,
            sandbox,
            executor,
            politeness,
            limits,
            shutdown,
            metrics::WorkerMetrics::default(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn with_politeness(
        net: NetClient,
        blobs: BlobStore,
        db: Arc<Db>,
        sandbox: Sandbox,
        executor: Arc<dyn Executor>,
        politeness: Politeness,
        limits: WorkerLimits,
        shutdown: CancellationToken,
        metrics: metrics::WorkerMetrics,
    ) -> Self {
        let politeness = Arc::new(politeness);
        // Preferences may raise the slots at run time up to the cores (or the
        // slots given at start, if more).
        let slots_max = politeness.preferences().cpus.max(politeness.cores());
        let first = politeness.decision();
        let memory_limit = politeness.memory_per_chunk();
        let worker = Self {
            inner: Arc::new(Inner {
                net,
                blobs,
                db,
                sandbox,
                executor,
                slots_max,
                memory_limit,
                limits,
                max_fuel: limits.max_fuel.into(),
                exec: Arc::new(Semaphore::new(slots_max as usize)),
                pool: ChunkPool::new(slots_max as usize),
                gate: Arc::new(Gate::new(first.allowed, first.duty_percent)),
                politeness,
                politeness_changed: Notify::new(),
                active: Mutex::new(HashMap::new()),
                waiting: Mutex::new(HashMap::new()),
                modules: Mutex::new(HashMap::new()),
                refused_modules: Mutex::default(),
                inputs: Mutex::default(),
                local_scheduler: OnceLock::new(),
                // Counted by the delivery task as it starts (off the async threads).
                outbox_len: 0.into(),
                outbox: Mutex::default(),
                outbox_gate: tokio::sync::Mutex::new(()),
                outbox_stale: false.into(),
                #[cfg(feature = "test-utils")]
                greedy: false.into(),
                deliver: Notify::new(),
                changed: Notify::new(),
                tasks: TaskTracker::new(),
                shutdown,
                executed: 0.into(),
                withdrawn: 0.into(),
                metrics,
            }),
        };
        // The worker's tasks carry the caller's span (the node's).
        let delivery = worker.clone();
        worker
            .inner
            .tasks
            .spawn(async move { delivery.deliver_loop().await }.in_current_span());
        let polite = worker.clone();
        worker
            .inner
            .tasks
            .spawn(async move { polite.politeness_loop().await }.in_current_span());
        worker
    }

    /// Lets results of this node's own jobs go straight to its scheduler.
    pub fn set_local_scheduler(&self, scheduler: LocalResults) {
        let _ = self.inner.local_scheduler.set(scheduler);
    }

    /// Slots lent now (0 while suspended) and the memory limit per chunk.
    pub fn capacity(&self) -> (u32, u64) {
        (self.inner.gate.allowed(), self.inner.memory_limit)
    }

    /// What a chunk and a submitter may have here at most.
    pub fn limits(&self) -> WorkerLimits {
        WorkerLimits {
            max_fuel: self.inner.max_fuel.load(Ordering::Relaxed),
            ..self.inner.limits
        }
    }

    /// Sets the most fuel a chunk may ask for (`--max-fuel auto`, once the node has
    /// measured its fuel speed). Offers already taken keep what they were given.
    pub fn set_max_fuel(&self, fuel: u64) {
        self.inner.max_fuel.store(fuel, Ordering::Relaxed);
    }

    /// Resolves when the worker's capacity changed (a chunk started or ended).
    pub async fn capacity_changed(&self) {
        self.inner.changed.notified().await;
    }

    /// What the worker is doing now.
    pub fn status(&self) -> WorkerStatus {
        let allowed = self.inner.gate.allowed();
        let paused = self.inner.gate.waiting();
        let holding = self.inner.slots_max as usize - self.inner.exec.available_permits();
        let running = (holding as u32).saturating_sub(paused);
        WorkerStatus {
            slots_total: allowed,
            slots_free: allowed.saturating_sub(running),
            slots_lent: self.inner.politeness.preferences().cpus,
            running: self.inner.gate.running(),
            paused,
            withdrawn: self.inner.withdrawn.load(Ordering::Relaxed),
            active: self.active().len() as u32,
            outbox: self.inner.outbox_len.load(Ordering::Relaxed),
            executed: self.inner.executed.load(Ordering::Relaxed),
        }
    }

    /// Tests only: from now on take every offer and advertise
    /// [`MAX_ADVERT_SLOTS`](crate::net::protocol::MAX_ADVERT_SLOTS) (an inflating
    /// peer, which the submitters' placement must not reward).
    #[cfg(feature = "test-utils")]
    pub fn inflate_for_tests(&self) {
        self.inner
            .greedy
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this worker inflates (tests only; always false in a release build).
    pub fn inflates(&self) -> bool {
        #[cfg(feature = "test-utils")]
        {
            self.inner.greedy.load(std::sync::atomic::Ordering::Relaxed)
        }
        #[cfg(not(feature = "test-utils"))]
        {
            false
        }
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<ChunkControl>>> {
        self.inner.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the worker's tasks after the shutdown token fired.
    pub async fn join(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}
