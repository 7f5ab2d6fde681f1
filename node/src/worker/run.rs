//! One assignment from admission to its result in the outbox: wait for a slot, load
//! the module (fetched from the submitter, compiled once, kept by hash), fetch a
//! large input, execute on the chunk [`pool`](super::pool), sign the result, and
//! hand it to [`delivery`](super::delivery).
//!
//! Started by [`admission`](super::admission) as one task per taken assignment;
//! cancellation and withdrawal come through the chunk's [`ChunkControl`], set by a
//! cancel or by the politeness loop.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use libp2p::PeerId;

use super::{INLINE_OUTPUT, Worker};
use crate::net::fetch::{FetchError, fetch_blob, fetch_blob_max};
use crate::net::protocol::{
    Assignment, BlobHash, ChunkResult, JobId, Payload, ResultContext, WireOutcome,
};
use crate::sandbox::{ChunkControl, Execution, JobModule, ModuleError, Outcome};

/// Modules kept loaded (by blob hash); the cache is emptied when full.
const MODULE_CACHE: usize = 32;
/// Modules remembered as refused (by blob hash), so that a bad module is neither
/// fetched nor parsed again at every offer; the oldest is forgotten first.
const REFUSED_MODULES: usize = 1024;
/// Longest reason kept for a refused module (it goes back to submitters).
const REFUSED_REASON: usize = 256;

/// Modules this worker refused, newest last (bounded by [`REFUSED_MODULES`]): why,
/// and whether offering one is an offence.
#[derive(Debug, Default)]
pub(super) struct RefusedModules {
    why: HashMap<BlobHash, (String, bool)>,
    order: std::collections::VecDeque<BlobHash>,
}
/// How often a chunk waiting for a slot looks whether it was cancelled.
const CANCEL_CHECK: Duration = Duration::from_millis(200);

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

enum LoadError {
    /// The module is bad: a deterministic outcome.
    Invalid(String),
    /// The module is one no honest peer sends (over a size or shape cap, or text:
    /// a peergrid submitter refuses those at submit): an offence too.
    Hostile(String),
    /// It could not be fetched: not this chunk's fault.
    Unavailable(String),
}

impl Worker {
    /// Runs one assignment to its result in the outbox.
    pub(super) async fn run(
        &self,
        submitter: PeerId,
        job_id: JobId,
        a: Assignment,
        control: Arc<ChunkControl>,
    ) {
        let key = (submitter, job_id, a.chunk, a.attempt);
        let ctx = ResultContext {
            submitter,
            module: a.module,
            input: a.input.hash(),
        };
        let execution = tokio::select! {
            _ = self.inner.shutdown.cancelled() => {
                // Stops the call on the pool at the end of its current fuel slice.
                control.cancel();
                None
            }
            e = self.execute(submitter, &a, control.clone()) => e,
        };
        if let Some(e) = &execution {
            self.inner.metrics.executed(e);
        }
        let result = if control.is_withdrawn() {
            let mut result = withdrawn_result(job_id, &a);
            result.signature = self.inner.net.sign(&result.signed_bytes(&ctx));
            Some(result)
        } else {
            match execution.filter(|_| !control.is_cancelled()) {
                Some(e) => self.to_result(&ctx, job_id, &a, e).await,
                None => None,
            }
        };
        if let Some(result) = result {
            self.store_result(submitter, result).await;
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
        // A large input is fetched before a slot is taken: a submitter that serves
        // its input slowly (or a large one) holds no slot meanwhile.
        let fetched = match &a.input {
            Payload::Inline(_) => None,
            Payload::Blob { hash, .. } => Some(self.fetch_input(submitter, *hash).await?),
        };
        // Wait for a slot, looking at cancellation (or withdrawal) now and then.
        let _slot = loop {
            tokio::select! {
                slot = self.inner.exec.clone().acquire_owned() => break slot.ok()?,
                _ = tokio::time::sleep(CANCEL_CHECK) => {
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
            Err(LoadError::Invalid(reason) | LoadError::Hostile(reason)) => {
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
        let input = match (&a.input, fetched) {
            (Payload::Inline(bytes), _) => bytes.clone(),
            (Payload::Blob { .. }, Some(fetched)) => self.read_input(submitter, fetched).await?,
            (Payload::Blob { .. }, None) => return None,
        };
        let executor = self.inner.executor.clone();
        let limits = a.limits;
        // What the executor logs carries the chunk's span (and the node's).
        let span = tracing::Span::current();
        // The slot is held until the call returns: the pool never queues more
        // calls than it has threads.
        let exec = self
            .inner
            .pool
            .run(move || span.in_scope(|| executor.execute(&module, &input, &limits, control)))
            .await;
        self.inner.executed.fetch_add(1, Ordering::Relaxed);
        self.inner.changed.notify_waiters();
        match exec {
            Ok(exec) => Some(exec),
            Err(e) => {
                tracing::error!(error = %e, "a chunk could not run");
                None
            }
        }
    }

    /// Fetches a chunk's input into the blob store (before the chunk takes a slot);
    /// [`read_input`](Self::read_input) reads it once the chunk has one.
    async fn fetch_input(&self, submitter: PeerId, hash: BlobHash) -> Option<FetchedInput> {
        let used = InputUse::start(self, hash);
        let blobs = self.inner.blobs.clone();
        let had = tokio::task::spawn_blocking(move || blobs.contains(&hash))
            .await
            .unwrap_or(true);
        if let Err(e) = fetch_blob(&self.inner.net, &self.inner.blobs, hash, &[submitter]).await {
            tracing::warn!(%submitter, "cannot fetch a chunk input: {e}");
            return None;
        }
        Some(FetchedInput { used, had })
    }

    /// Reads a fetched input into memory. An input this node did not hold before (a
    /// submitter's data, used once here) leaves the blob store as soon as it is
    /// read, unless another chunk here is using it: inputs take disk only between
    /// their fetch and their chunk's start, so a submitter cannot fill a
    /// volunteer's disk with them (the blob cache's limit still bounds the rest).
    async fn read_input(&self, submitter: PeerId, fetched: FetchedInput) -> Option<Vec<u8>> {
        let (worker, blobs) = (self.clone(), self.inner.blobs.clone());
        let read = tokio::task::spawn_blocking(move || {
            let hash = fetched.used.hash;
            let read = blobs.get(&hash);
            let inputs = worker.inputs();
            if !fetched.had && inputs.get(&hash).is_none_or(|n| *n <= 1) {
                let _ = blobs.remove(&hash);
            }
            drop(inputs);
            drop(fetched);
            read
        })
        .await;
        match read {
            Ok(Ok(Some(bytes))) => Some(bytes),
            Ok(Ok(None)) => {
                tracing::warn!(%submitter, "a chunk input vanished from the store");
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(%submitter, error = %e, "cannot read a chunk input");
                None
            }
            Err(_) => None,
        }
    }

    fn inputs(&self) -> std::sync::MutexGuard<'_, HashMap<BlobHash, u32>> {
        self.inner.inputs.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn load_module(&self, submitter: PeerId, hash: BlobHash) -> Result<JobModule, LoadError> {
        if let Some(module) = self.modules().get(&hash) {
            return Ok(module.clone());
        }
        if let Some((why, _)) = self.refused_module(&hash) {
            return Err(LoadError::Invalid(why));
        }
        let module = match self.fetch_and_load(submitter, hash).await {
            Err(LoadError::Invalid(why)) => {
                tracing::info!(%submitter, module = %hash, "refusing a module: {why}");
                self.refuse_module(hash, &why, false);
                return Err(LoadError::Invalid(why));
            }
            Err(LoadError::Hostile(why)) => {
                tracing::info!(%submitter, module = %hash, "refusing a module: {why}");
                self.refuse_module(hash, &why, true);
                if submitter != self.inner.net.local_peer_id() {
                    self.inner
                        .net
                        .penalize(submitter, format!("offered module {hash}: {why}"))
                        .await;
                }
                return Err(LoadError::Invalid(why));
            }
            other => other?,
        };
        let mut modules = self.modules();
        if modules.len() >= MODULE_CACHE {
            modules.clear();
        }
        modules.insert(hash, module.clone());
        Ok(module)
    }

    /// Why `hash` was refused here, if it was (recently), and whether offering it is
    /// an offence.
    pub(super) fn refused_module(&self, hash: &BlobHash) -> Option<(String, bool)> {
        let refused = self
            .inner
            .refused_modules
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        refused.why.get(hash).cloned()
    }

    fn refuse_module(&self, hash: BlobHash, why: &str, hostile: bool) {
        let mut why: String = why.chars().take(REFUSED_REASON).collect();
        why.shrink_to_fit();
        let mut refused = self
            .inner
            .refused_modules
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if refused.why.insert(hash, (why, hostile)).is_none() {
            refused.order.push_back(hash);
        }
        while refused.order.len() > REFUSED_MODULES {
            if let Some(old) = refused.order.pop_front() {
                refused.why.remove(&old);
            }
        }
    }

    fn modules(&self) -> std::sync::MutexGuard<'_, HashMap<BlobHash, JobModule>> {
        self.inner.modules.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn fetch_and_load(
        &self,
        submitter: PeerId,
        hash: BlobHash,
    ) -> Result<JobModule, LoadError> {
        let max = self.inner.sandbox.caps().max_bytes as u64;
        match fetch_blob_max(&self.inner.net, &self.inner.blobs, hash, &[submitter], max).await {
            Ok(()) => {}
            Err(e @ FetchError::TooLarge { .. }) => return Err(LoadError::Hostile(e.to_string())),
            Err(e) => return Err(LoadError::Unavailable(e.to_string())),
        }
        let blobs = self.inner.blobs.clone();
        let sandbox = self.inner.sandbox.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = blobs
                .get(&hash)
                .map_err(|e| LoadError::Unavailable(e.to_string()))?
                .ok_or_else(|| LoadError::Unavailable("module vanished from the store".into()))?;
            // A binary only, checked against the caps before compiling.
            sandbox.load_from_peer(&bytes).map_err(|e| match e {
                ModuleError::TooLarge(_) | ModuleError::TextFromPeer => {
                    LoadError::Hostile(e.to_string())
                }
                // This node's engine, not the module: never remembered as refused.
                ModuleError::Sandbox(_) => LoadError::Unavailable(e.to_string()),
                e => LoadError::Invalid(e.to_string()),
            })
        })
        .await
        .map_err(|e| LoadError::Unavailable(e.to_string()))?
    }

    /// Turns an execution into the signed result to report (`None` for
    /// cancellations, and when a large output cannot be stored).
    async fn to_result(
        &self,
        ctx: &ResultContext,
        job_id: JobId,
        a: &Assignment,
        exec: Execution,
    ) -> Option<ChunkResult> {
        let (outcome, output) = wire_outcome(exec.outcome)?;
        let output_hash = BlobHash::of(&output);
        let payload = if output.is_empty() {
            None
        } else if output.len() <= INLINE_OUTPUT {
            Some(Payload::Inline(output))
        } else {
            let size = output.len() as u64;
            let blobs = self.inner.blobs.clone();
            match tokio::task::spawn_blocking(move || blobs.put(&output)).await {
                Ok(Ok(hash)) => Some(Payload::Blob { hash, size }),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot store a large output; dropping the result");
                    return None;
                }
                Err(_) => return None,
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
        result.signature = self.inner.net.sign(&result.signed_bytes(ctx));
        Some(result)
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

/// An input fetched for a chunk: its use, and whether this node held it before.
struct FetchedInput {
    used: InputUse,
    had: bool,
}

/// A chunk's use of an input blob, counted from its fetch until it is read
/// ([`Worker::fetch_input`], [`Worker::read_input`]); the count drops when this
/// does, even if the chunk is cancelled meanwhile.
struct InputUse {
    worker: Worker,
    hash: BlobHash,
}

impl InputUse {
    fn start(worker: &Worker, hash: BlobHash) -> Self {
        *worker.inputs().entry(hash).or_default() += 1;
        Self {
            worker: worker.clone(),
            hash,
        }
    }
}

impl Drop for InputUse {
    fn drop(&mut self) {
        let mut inputs = self.worker.inputs();
        if let Some(n) = inputs.get_mut(&self.hash) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inputs.remove(&self.hash);
            }
        }
    }
}
