//! The worker: runs other peers' chunks within the slots this node lends.
//!
//! # Message flow
//! - The node's dispatcher hands it task offers ([`Worker::offer`]). Admission is
//!   immediate and bounded: an assignment is taken while fewer than
//!   `slots × QUEUE_FACTOR` are active and the outbox has room, and refused with a
//!   reason otherwise (`NoFreeSlots`, `LimitsTooHigh`).
//! - Each taken assignment becomes a task that waits for a slot (a semaphore of
//!   `slots` permits), fetches the module and a large input from the submitter as
//!   blobs, and runs the chunk through the [`Executor`] on a blocking thread at low
//!   OS priority (nice 19), so the volunteer's own programs come first.
//! - The finished [`ChunkResult`] is written to the outbox (SQLite) before anything
//!   else, then the delivery task sends it to the submitter in batches; only an
//!   acknowledgement removes it. A worker that restarts still delivers.
//! - Cancels ([`Worker::cancel`]) stop running chunks within an epoch tick and drop
//!   queued ones and undelivered results.
//! - The politeness loop ticks the volunteer controls ([`politeness`]) every sample
//!   interval and after every pause, resume or change of preferences: it sets the
//!   sandbox [`Gate`] (how many chunks run, at what duty cycle; chunks over the
//!   allowance pause inside the sandbox and go on later), wakes the advertiser when
//!   the slots it may lend change, and withdraws chunks paused longer than
//!   `withdraw_after`: they end with a `Withdrawn` result, so their submitters
//!   reissue them elsewhere at no cost to this worker's standing.

pub mod executor;
pub mod metrics;
pub mod politeness;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::executor::{Executor, LyingExecutor, SandboxExecutor};
use self::politeness::{
    Decision, Pause, Politeness, PreferenceChanges, PreferenceError, Preferences, SystemClock,
    VolunteerConfig, VolunteerStatus,
};
use crate::net::NetClient;
use crate::net::fetch::fetch_blob;
use crate::net::protocol::{
    Assignment, BlobHash, ChunkResult, JobId, Payload, RejectReason, ResultBatch, TaskReply,
    WireOutcome,
};
use crate::sandbox::{ChunkControl, Execution, Gate, Outcome, Sandbox};
use crate::store::BlobStore;
use crate::store::db::{Db, OutboxRow, Write};

pub use crate::types::QUEUE_FACTOR;

/// Where results of this node's own jobs go: straight to its scheduler, not over the
/// network (set by the node, so the worker need not know the scheduler).
#[derive(Clone)]
pub struct LocalResults(pub std::sync::Arc<LocalResultsFn>);

/// The function behind [`LocalResults`].
pub type LocalResultsFn = dyn Fn(PeerId, ResultBatch) -> futures::future::BoxFuture<'static, crate::net::protocol::ResultAck>
    + Send
    + Sync;

impl std::fmt::Debug for LocalResults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalResults")
    }
}

/// Most undelivered results kept; beyond it, offers are refused.
pub const MAX_OUTBOX: u64 = 10_000;
/// Outputs up to this size travel inline; larger ones as blobs.
pub const INLINE_OUTPUT: usize = 4 * 1024 * 1024;
/// Modules kept loaded (by blob hash); the cache is emptied when full.
const MODULE_CACHE: usize = 32;
/// Results per delivery batch.
const DELIVERY_BATCH: usize = 64;
/// After a failed delivery, wait this long before trying that submitter again.
const DELIVERY_BACKOFF: Duration = Duration::from_secs(2);

type Key = (JobId, u32, u32);

/// A sandbox outcome as reported on the wire, with the output bytes beside it
/// (`None` for a cancelled run, which has nothing to report).
pub fn wire_outcome(outcome: Outcome) -> Option<(WireOutcome, Vec<u8>)> {
    Some(match outcome {
        Outcome::Ok(bytes) => (WireOutcome::Ok, bytes),
        Outcome::Trap { kind, message } => (
            WireOutcome::Trap {
                kind: kind.as_str().into(),
                message,
            },
            Vec::new(),
        ),
        Outcome::OutOfFuel => (WireOutcome::OutOfFuel, Vec::new()),
        Outcome::MemoryLimit => (WireOutcome::MemoryLimit, Vec::new()),
        Outcome::Timeout => (WireOutcome::Timeout, Vec::new()),
        Outcome::Invalid(reason) => (WireOutcome::Invalid(reason), Vec::new()),
        Outcome::Cancelled => return None,
    })
}

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
    exec: Arc<Semaphore>,
    gate: Arc<Gate>,
    politeness: Arc<Politeness>,
    /// Wakes the politeness loop after a pause, resume or change of preferences.
    politeness_changed: Notify,
    active: Mutex<HashMap<Key, Arc<ChunkControl>>>,
    /// This node's scheduler: results of its own jobs are delivered to it directly.
    local_scheduler: std::sync::OnceLock<LocalResults>,
    /// Modules loaded by blob hash, so a chunk costs no disk read or hashing.
    modules: Mutex<HashMap<BlobHash, crate::sandbox::JobModule>>,
    outbox_len: std::sync::atomic::AtomicU64,
    deliver: Notify,
    changed: Notify,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    executed: std::sync::atomic::AtomicU64,
    withdrawn: std::sync::atomic::AtomicU64,
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
        state_file: Option<PathBuf>,
        shutdown: CancellationToken,
        metrics: metrics::WorkerMetrics,
    ) -> Self {
        let outbox_len = db.outbox_len().unwrap_or(0);
        let politeness = Arc::new(Politeness::new(
            volunteer,
            memory_limit,
            state_file,
            Arc::new(SystemClock),
        ));
        // Preferences may raise the slots at run time up to the cores (or the
        // slots given at start, if more).
        let slots_max = politeness.preferences().cpus.max(politeness.cores());
        let first = politeness.decision();
        let worker = Self {
            inner: Arc::new(Inner {
                net,
                blobs,
                db,
                sandbox,
                executor,
                slots_max,
                memory_limit,
                exec: Arc::new(Semaphore::new(slots_max as usize)),
                gate: Arc::new(Gate::new(first.allowed, first.duty_percent)),
                politeness,
                politeness_changed: Notify::new(),
                active: Mutex::new(HashMap::new()),
                modules: Mutex::new(HashMap::new()),
                local_scheduler: std::sync::OnceLock::new(),
                outbox_len: outbox_len.into(),
                deliver: Notify::new(),
                changed: Notify::new(),
                tasks: TaskTracker::new(),
                shutdown,
                executed: 0.into(),
                withdrawn: 0.into(),
                metrics,
            }),
        };
        let delivery = worker.clone();
        worker
            .inner
            .tasks
            .spawn(async move { delivery.deliver_loop().await });
        let polite = worker.clone();
        worker
            .inner
            .tasks
            .spawn(async move { polite.politeness_loop().await });
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
            withdrawn: self
                .inner
                .withdrawn
                .load(std::sync::atomic::Ordering::Relaxed),
            active: self.active().len() as u32,
            outbox: self
                .inner
                .outbox_len
                .load(std::sync::atomic::Ordering::Relaxed),
            executed: self
                .inner
                .executed
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<ChunkControl>>> {
        self.inner.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes what it can of an offer from `submitter`, refusing the rest with a reason.
    pub fn offer(
        &self,
        submitter: PeerId,
        job_id: JobId,
        assignments: Vec<Assignment>,
    ) -> TaskReply {
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        let allowed = self.inner.gate.allowed();
        let capacity = (allowed * QUEUE_FACTOR) as usize;
        let busy = if allowed == 0 && self.inner.politeness.decision().reason.is_some() {
            RejectReason::Suspended
        } else {
            RejectReason::NoFreeSlots
        };
        let outbox_full = self
            .inner
            .outbox_len
            .load(std::sync::atomic::Ordering::Relaxed)
            >= MAX_OUTBOX;
        let mut taken = Vec::new();
        {
            let mut active = self.active();
            for a in assignments {
                let key = (job_id, a.chunk, a.attempt);
                if active.contains_key(&key) {
                    accepted.push((a.chunk, a.attempt));
                } else if a.limits.memory_bytes > self.inner.memory_limit {
                    rejected.push((a.chunk, a.attempt, RejectReason::LimitsTooHigh));
                } else if outbox_full {
                    rejected.push((a.chunk, a.attempt, RejectReason::NoFreeSlots));
                } else if active.len() >= capacity {
                    rejected.push((a.chunk, a.attempt, busy.clone()));
                } else {
                    let control = Arc::new(ChunkControl::gated(self.inner.gate.clone()));
                    active.insert(key, control.clone());
                    accepted.push((a.chunk, a.attempt));
                    taken.push((a, control));
                }
            }
        }
        for (assignment, control) in taken {
            let worker = self.clone();
            self.inner.tasks.spawn(async move {
                worker.run(submitter, job_id, assignment, control).await;
            });
        }
        TaskReply::Offer { accepted, rejected }
    }

    /// Stops the given chunks of a job (all of them when `chunks` is empty) and drops
    /// their undelivered results.
    pub fn cancel(&self, job_id: JobId, chunks: &[u32]) {
        let wanted: HashSet<u32> = chunks.iter().copied().collect();
        let mut writes = Vec::new();
        for ((job, chunk, attempt), control) in self.active().iter() {
            if *job == job_id && (wanted.is_empty() || wanted.contains(chunk)) {
                control.cancel();
                writes.push(Write::OutboxDelete(*job, *chunk, *attempt));
            }
        }
        if wanted.is_empty() {
            writes.push(Write::OutboxDeleteJob(job_id));
        }
        if let Err(e) = self.inner.db.apply(&writes) {
            tracing::warn!(error = %e, "could not drop cancelled results from the outbox");
        }
        self.refresh_outbox_len();
    }

    fn refresh_outbox_len(&self) {
        if let Ok(n) = self.inner.db.outbox_len() {
            self.inner
                .outbox_len
                .store(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Runs one assignment to its result in the outbox.
    async fn run(
        &self,
        submitter: PeerId,
        job_id: JobId,
        a: Assignment,
        control: Arc<ChunkControl>,
    ) {
        let key = (job_id, a.chunk, a.attempt);
        let execution = tokio::select! {
            _ = self.inner.shutdown.cancelled() => None,
            e = self.execute(submitter, &a, control.clone()) => e,
        };
        if let Some(e) = &execution {
            self.inner.metrics.executed(e);
        }
        let result = if control.is_withdrawn() {
            let mut result = withdrawn_result(job_id, &a);
            result.signature = self.inner.net.sign(&result.signed_bytes());
            Some(result)
        } else {
            execution
                .filter(|_| !control.is_cancelled())
                .and_then(|e| self.to_result(job_id, &a, e))
        };
        if let Some(result) = result {
            self.store_result(submitter, result);
        }
        self.active().remove(&key);
    }

    /// Waits for a slot, fetches what the chunk needs, and executes it. `None` when
    /// it cannot be run here (its inputs are unavailable, or it was cancelled).
    async fn execute(
        &self,
        submitter: PeerId,
        a: &Assignment,
        control: Arc<ChunkControl>,
    ) -> Option<Execution> {
        // Wait for a slot, looking at cancellation (or withdrawal) now and then.
        let _slot = loop {
            tokio::select! {
                slot = self.inner.exec.clone().acquire_owned() => break slot.ok()?,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if control.is_cancelled() {
                        return None;
                    }
                }
            }
        };
        self.inner.changed.notify_waiters();
        if control.is_cancelled() {
            return None;
        }
        let module = match self.load_module(submitter, a.module).await {
            Ok(module) => module,
            Err(LoadError::Invalid(reason)) => {
                return Some(Execution {
                    outcome: Outcome::Invalid(reason),
                    fuel_used: 0,
                    elapsed: Duration::ZERO,
                    logs: Vec::new(),
                });
            }
            Err(LoadError::Unavailable(reason)) => {
                tracing::warn!(%submitter, "cannot run a chunk: {reason}");
                return None;
            }
        };
        let input = match &a.input {
            Payload::Inline(bytes) => bytes.clone(),
            Payload::Blob { hash, .. } => {
                if let Err(e) =
                    fetch_blob(&self.inner.net, &self.inner.blobs, *hash, &[submitter]).await
                {
                    tracing::warn!(%submitter, "cannot fetch a chunk input: {e}");
                    return None;
                }
                self.inner.blobs.get(hash).ok().flatten()?
            }
        };
        let executor = self.inner.executor.clone();
        let limits = a.limits;
        let exec = tokio::task::spawn_blocking(move || {
            lower_thread_priority();
            executor.execute(&module, &input, &limits, control)
        })
        .await
        .ok();
        self.inner
            .executed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.changed.notify_waiters();
        exec
    }

    async fn load_module(
        &self,
        submitter: PeerId,
        hash: BlobHash,
    ) -> Result<crate::sandbox::JobModule, LoadError> {
        if let Some(module) = self.modules().get(&hash) {
            return Ok(module.clone());
        }
        let module = self.fetch_and_load(submitter, hash).await?;
        let mut modules = self.modules();
        if modules.len() >= MODULE_CACHE {
            modules.clear();
        }
        modules.insert(hash, module.clone());
        Ok(module)
    }

    fn modules(&self) -> std::sync::MutexGuard<'_, HashMap<BlobHash, crate::sandbox::JobModule>> {
        self.inner.modules.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn fetch_and_load(
        &self,
        submitter: PeerId,
        hash: BlobHash,
    ) -> Result<crate::sandbox::JobModule, LoadError> {
        fetch_blob(&self.inner.net, &self.inner.blobs, hash, &[submitter])
            .await
            .map_err(|e| LoadError::Unavailable(e.to_string()))?;
        let blobs = self.inner.blobs.clone();
        let sandbox = self.inner.sandbox.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = blobs
                .get(&hash)
                .map_err(|e| LoadError::Unavailable(e.to_string()))?
                .ok_or_else(|| LoadError::Unavailable("module vanished from the store".into()))?;
            sandbox
                .load(&bytes)
                .map_err(|e| LoadError::Invalid(e.to_string()))
        })
        .await
        .map_err(|e| LoadError::Unavailable(e.to_string()))?
    }

    /// Turns an execution into the result to report (`None` for cancellations).
    fn to_result(&self, job_id: JobId, a: &Assignment, exec: Execution) -> Option<ChunkResult> {
        let (outcome, output) = wire_outcome(exec.outcome)?;
        let output_hash = BlobHash::of(&output);
        let payload = if output.is_empty() {
            None
        } else if output.len() <= INLINE_OUTPUT {
            Some(Payload::Inline(output))
        } else {
            match self.inner.blobs.put(&output) {
                Ok(hash) => Some(Payload::Blob {
                    hash,
                    size: output.len() as u64,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot store a large output; dropping the result");
                    return None;
                }
            }
        };
        let mut result = ChunkResult {
            job_id,
            chunk: a.chunk,
            attempt: a.attempt,
            outcome,
            output_hash,
            output: payload,
            fuel_used: exec.fuel_used,
            exec_micros: exec.elapsed.as_micros() as u64,
            signature: Vec::new(),
        };
        result.signature = self.inner.net.sign(&result.signed_bytes());
        Some(result)
    }

    fn store_result(&self, submitter: PeerId, result: ChunkResult) {
        let Ok(bytes) = postcard::to_allocvec(&result) else {
            return;
        };
        let row = OutboxRow {
            job_id: result.job_id,
            chunk: result.chunk,
            attempt: result.attempt,
            submitter: submitter.to_string(),
            result: bytes,
        };
        match self.inner.db.apply(&[Write::OutboxPut(row)]) {
            Ok(()) => {
                self.inner
                    .outbox_len
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.inner.deliver.notify_one();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write a result to the outbox; it is lost")
            }
        }
    }

    /// Pauses work by hand for `duration` (`None`: until [`resume`](Self::resume));
    /// running chunks pause inside the sandbox. Kept across restarts.
    pub fn pause(&self, duration: Option<Duration>) -> std::io::Result<Pause> {
        let pause = self.inner.politeness.pause(duration)?;
        self.apply(self.inner.politeness.tick(false));
        Ok(pause)
    }

    /// Ends a manual pause.
    pub fn resume(&self) -> std::io::Result<()> {
        self.inner.politeness.resume()?;
        self.apply(self.inner.politeness.tick(false));
        Ok(())
    }

    /// The volunteer's preferences in force.
    pub fn preferences(&self) -> Preferences {
        self.inner.politeness.preferences()
    }

    /// Changes preferences at run time (kept across restarts); `reset` first drops
    /// earlier run-time changes, back to the flags and `peergrid.toml`.
    pub fn set_preferences(
        &self,
        changes: &PreferenceChanges,
        reset: bool,
    ) -> Result<Preferences, PreferenceError> {
        let prefs = self.inner.politeness.set_preferences(changes, reset)?;
        self.apply(self.inner.politeness.tick(false));
        self.inner.politeness_changed.notify_one();
        Ok(prefs)
    }

    /// Whether the worker works now, and why not when it does not.
    pub fn volunteer_status(&self) -> VolunteerStatus {
        self.inner.politeness.status(self.inner.gate.running())
    }

    /// Sets the gate to `decision`; wakes the advertiser when the slots changed.
    fn apply(&self, decision: Decision) {
        let before = self.inner.gate.allowed();
        self.inner.gate.set(
            decision.allowed.min(self.inner.slots_max),
            decision.duty_percent,
        );
        if before != self.inner.gate.allowed() {
            match &decision.reason {
                Some(reason) => tracing::info!(slots = decision.allowed, "suspended: {reason}"),
                None => tracing::info!(
                    slots = decision.allowed,
                    "lending {} slots",
                    decision.allowed
                ),
            }
            self.inner.changed.notify_waiters();
        }
    }

    /// Ticks the volunteer controls until shutdown (see the module docs).
    async fn politeness_loop(&self) {
        let interval = self.inner.politeness.sample_interval();
        let withdraw_after = self.inner.politeness.withdraw_after();
        let mut suspended_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => break,
                _ = self.inner.politeness_changed.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
            let politeness = self.inner.politeness.clone();
            // Sampling reads the OS's process table: off the async threads.
            let Ok(decision) = tokio::task::spawn_blocking(move || politeness.tick(true)).await
            else {
                continue;
            };
            let suspended = decision.allowed == 0;
            self.apply(decision);
            self.inner
                .metrics
                .volunteer(&self.inner.politeness.status(self.inner.gate.running()));
            let since = if suspended {
                *suspended_since.get_or_insert_with(Instant::now)
            } else {
                suspended_since = None;
                Instant::now()
            };
            self.withdraw_stalled(since.elapsed() >= withdraw_after, withdraw_after);
        }
    }

    /// Withdraws chunks paused longer than `after` (every active one when `all`):
    /// they stop and their submitters are told to run them elsewhere.
    fn withdraw_stalled(&self, all: bool, after: Duration) {
        let mut n = 0u64;
        for control in self.active().values() {
            if control.is_cancelled() {
                continue;
            }
            if all || control.paused_for().is_some_and(|p| p >= after) {
                control.withdraw();
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(
                chunks = n,
                "withdrew chunks paused too long; their submitters will reissue them"
            );
            self.inner
                .withdrawn
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            self.inner.metrics.withdrawn.inc_by(n);
        }
    }

    /// Sends outbox entries to their submitters until shutdown; an entry leaves the
    /// outbox only when acknowledged.
    async fn deliver_loop(&self) {
        let mut backoff: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => break,
                _ = self.inner.deliver.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let rows = match self.inner.db.outbox() {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the outbox");
                    continue;
                }
            };
            let mut by_submitter: HashMap<String, Vec<OutboxRow>> = HashMap::new();
            for row in rows {
                by_submitter
                    .entry(row.submitter.clone())
                    .or_default()
                    .push(row);
            }
            let now = Instant::now();
            backoff.retain(|_, until| *until > now);
            for (submitter, rows) in by_submitter {
                if backoff.contains_key(&submitter) {
                    continue;
                }
                let Ok(peer) = submitter.parse::<PeerId>() else {
                    continue;
                };
                for batch in rows.chunks(DELIVERY_BATCH) {
                    let results: Vec<ChunkResult> = batch
                        .iter()
                        .filter_map(|r| postcard::from_bytes(&r.result).ok())
                        .collect();
                    let batch = ResultBatch { results };
                    let sent = match self.inner.local_scheduler.get() {
                        Some(local) if peer == self.inner.net.local_peer_id() => {
                            Ok((local.0)(peer, batch).await)
                        }
                        _ => self.inner.net.send_results(peer, batch).await,
                    };
                    match sent {
                        Ok(ack) => {
                            let writes: Vec<Write> = ack
                                .stored
                                .iter()
                                .map(|(j, c, a)| Write::OutboxDelete(*j, *c, *a))
                                .collect();
                            if let Err(e) = self.inner.db.apply(&writes) {
                                tracing::warn!(error = %e, "cannot clear acknowledged results");
                            }
                        }
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "result delivery failed; will retry");
                            backoff.insert(submitter.clone(), Instant::now() + DELIVERY_BACKOFF);
                            break;
                        }
                    }
                }
            }
            self.refresh_outbox_len();
        }
    }

    /// Waits for the worker's tasks after the shutdown token fired.
    pub async fn join(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

/// The result that tells a submitter a chunk was withdrawn (not run here), unsigned.
fn withdrawn_result(job_id: JobId, a: &Assignment) -> ChunkResult {
    ChunkResult {
        job_id,
        chunk: a.chunk,
        attempt: a.attempt,
        outcome: WireOutcome::Withdrawn,
        output_hash: BlobHash::of(b""),
        output: None,
        fuel_used: 0,
        exec_micros: 0,
        signature: Vec::new(),
    }
}

enum LoadError {
    /// The module is bad: a deterministic outcome.
    Invalid(String),
    /// It could not be fetched: not this chunk's fault.
    Unavailable(String),
}

/// Lowers the calling thread's scheduling priority to the lowest (nice 19), once per
/// thread, so chunks yield to the volunteer's own programs.
fn lower_thread_priority() {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    LOWERED.with(|done| {
        if !done.get() {
            #[cfg(target_os = "linux")]
            // SAFETY: setpriority on the calling thread (who = 0) has no memory effects.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            }
            done.set(true);
        }
    });
}
