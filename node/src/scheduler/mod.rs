//! The submitter side: planning jobs, placing replicas, verifying results.
//!
//! # Message flow
//! - The control API calls [`Scheduler::submit`]: the module is validated and the job
//!   planned (the module's `split` in the sandbox, or the given inputs) *before*
//!   anything is sent to anyone; then the job goes to the actor, which writes it to
//!   the database.
//! - The [actor](actor) owns every job's live state. On each dispatch (after any
//!   change, and every tick) it reads the capacity view from the network, reissues
//!   replicas that timed out or whose peer left, and offers chunks that need replicas
//!   to eligible peers (fresh advert, capacity, memory, not excluded by reputation,
//!   never a peer already used for that chunk), batched into one offer per peer.
//!   This node's own worker is one of the candidates (offered directly).
//! - Workers' result batches arrive through the node's dispatcher
//!   ([`Scheduler::results`]); each result is checked (its replica, its output hash),
//!   written to the database with its output blob, and only then acknowledged. A chunk
//!   is verified when `quorum` distinct peers agree on outcome and output; on
//!   disagreement another replica is issued, up to `max_replicas`, after which the
//!   chunk fails with the evidence kept. Reputation is updated at verification.
//! - When every chunk is verified, `merge` runs on a blocking thread and the result
//!   is stored. Progress is published on a `watch` channel per job (the API streams it).
//! - On start, unfinished jobs are loaded back: verified chunks are never run again.
//!   Finished jobs leave memory (after their soft timeout) and are read back from the
//!   database when asked about.
//!
//! # Layout
//! The actor is the message loop only; its decisions are pure functions of
//! its state (`staged::State`) and one seeded RNG, staged on a `staged::Txn` that
//! collects the database writes: `dispatch` (the dispatch plan), [`placement`]
//! (candidate choice), `verify` (result intake, verdicts), `trust_ops`
//! (re-verification, plants, this node's own runs), `report` (status, evidence).
//! The actor writes what a core staged, then applies it: a failed write changes
//! nothing and is reported (results unacknowledged, a cancel answers an error).
//! `rows` maps state to database rows; `local` is the blocking work (merge, own runs).

mod actor;
mod dispatch;
pub mod job;
mod local;
pub mod metrics;
pub mod placement;
mod report;
pub mod reputation;
mod rows;
mod screen;
mod staged;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
pub mod trust;
mod trust_ops;
mod verify;

use std::sync::Arc;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

#[doc(hidden)]
pub use self::dispatch::DispatchFixture;
pub use self::job::{JobSpec, JobState, Replication};
pub use self::placement::PlacementPolicy;
pub use self::trust::{Standing, TrustPolicy};
use crate::net::NetClient;
use crate::net::protocol::{BlobHash, JobId, Payload, ResultAck, ResultBatch};
use crate::sandbox::{Limits, Sandbox};
use crate::store::{BlobStore, Db};

/// Why [`Scheduler::wait_final`] returned without a final status.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The scheduler does not know the job.
    #[error("the job vanished")]
    Vanished,
    /// The scheduler stopped; the last status seen.
    #[error("the scheduler stopped")]
    Stopped(Box<JobStatus>),
    /// The job had not ended within the limit; its last status.
    #[error("the job had not ended in time")]
    TimedOut(Box<JobStatus>),
}

/// Inputs up to this size travel inline in offers (and are kept in the database);
/// larger ones are blobs that workers fetch.
pub const INLINE_INPUT: usize = 64 * 1024;
/// Most chunks in one job.
pub const MAX_CHUNKS: usize = 1_000_000;
/// Most chunks `peergrid status JOB --evidence` lists.
pub const MAX_EVIDENCE: usize = 1000;
/// Capacity of the actor's inbox.
const INBOX: usize = 1024;

/// What the scheduler needs from the node.
#[derive(Debug, Clone)]
pub struct SchedulerContext {
    /// The network.
    pub net: NetClient,
    /// The blob store (modules, inputs, outputs, results).
    pub blobs: BlobStore,
    /// The database.
    pub db: Arc<Db>,
    /// The sandbox (split and merge run here).
    pub sandbox: Sandbox,
    /// The scheduler's metrics.
    pub metrics: metrics::SchedulerMetrics,
    /// This node's own worker: a submitter that lends slots runs replicas of its
    /// own jobs too (it trusts its own results), offered directly, not over the
    /// network.
    pub local_worker: Option<crate::worker::Worker>,
    /// Adaptive replication and spot checks.
    pub trust: TrustPolicy,
    /// Which peers may share a chunk.
    pub placement: PlacementPolicy,
    /// Seed of the scheduler's one random source (placement draws, solo draws, spot
    /// checks, plants): `None` (production) seeds it from the OS; benches and tests
    /// give one to be reproducible.
    pub seed: Option<u64>,
}

impl SchedulerContext {
    /// Slots this node's own worker lends (0 when it lends none).
    pub fn local_worker_slots(&self) -> u32 {
        self.local_worker.as_ref().map_or(0, |w| w.capacity().0)
    }
}

/// A job to submit. The module (and any input files) must already be in the blob
/// store (the control API's `POST /v1/blobs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// A name for people (the module's file name, or the example's).
    pub name: String,
    /// The module's blob hash (hex).
    pub module: String,
    /// JSON params for `split`; ignored when `inputs` is given.
    #[serde(default)]
    pub params: Option<serde_json::Value>,
    /// Chunk inputs as blob hashes (hex), in chunk order; `None` to use `split`.
    #[serde(default)]
    pub inputs: Option<Vec<String>>,
    /// Replication and limits.
    #[serde(default)]
    pub spec: Option<JobSpec>,
}

/// Why a submission was refused (before anything was sent to anyone).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The module is not in the blob store.
    #[error("module {0} was not uploaded")]
    NoModule(String),
    /// The module failed validation.
    #[error(transparent)]
    Module(#[from] crate::sandbox::ModuleError),
    /// `split` refused the params or failed.
    #[error("split failed: {0}")]
    Split(String),
    /// The inputs are missing or empty.
    #[error("{0}")]
    Inputs(String),
    /// The spec is inconsistent.
    #[error("{0}")]
    Spec(String),
    /// Storage failed.
    #[error("storing the job: {0}")]
    Store(String),
    /// The scheduler is shutting down.
    #[error("the node is shutting down")]
    Shutdown,
}

/// Why a cancellation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// The cancellation could not be stored; the job goes on.
    #[error("{0} (check free disk space and permissions of the data dir, then try again)")]
    Store(String),
    /// The scheduler is shutting down.
    #[error("the node is shutting down")]
    Shutdown,
}

/// How one peer did on a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerTally {
    /// The peer.
    pub peer: String,
    /// Its results that matched the verified outcome.
    pub agreed: u32,
    /// Its results in a minority.
    pub disagreed: u32,
    /// Replicas it holds now.
    pub in_flight: u32,
    /// Whether this submitter no longer chooses it.
    pub excluded: bool,
    /// Its standing with this submitter (`trusted`, `probation`, `excluded`).
    #[serde(default)]
    pub standing: Option<Standing>,
}

/// What adaptive replication did for a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustCounts {
    /// Chunks verified on one trusted peer's word alone.
    pub unreplicated: u32,
    /// Results re-run by this node to check a peer's word.
    pub spot_checks: u32,
    /// Verified chunks re-issued to a trusted peer as if new.
    pub plants: u32,
    /// Runs this node did itself to witness peers on probation or referee a dispute.
    pub witness_runs: u32,
    /// Peers caught lying by a spot check or a plant.
    pub caught: u32,
    /// Chunks re-opened because the peer whose word they rested on lost trust.
    pub reverified: u32,
    /// Results refused because their signature did not match the sender.
    pub bad_signatures: u32,
    /// Disputes decided by this node's own run.
    #[serde(default)]
    pub refereed: u32,
    /// Replicas handed back by their workers.
    #[serde(default)]
    pub withdrawn: u32,
}

/// One peer's answer for a chunk, as `peergrid status JOB --evidence` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaEvidence {
    /// The peer.
    pub peer: String,
    /// The replica's state.
    pub state: String,
    /// Its outcome, described.
    pub outcome: Option<String>,
    /// Its output hash (hex).
    pub output: Option<String>,
    /// Its signature over submitter, module, input, job, chunk, attempt, outcome
    /// and output hash (hex).
    pub signature: Option<String>,
    /// Whether the signature checks out against the peer's key.
    pub signature_valid: bool,
    /// Whether it matches the accepted answer.
    pub agrees: Option<bool>,
}

/// A chunk whose peers did not all agree, with every answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkEvidence {
    /// The chunk.
    pub chunk: u32,
    /// `verified`, `failed` or `pending`.
    pub state: String,
    /// The accepted answer's output hash (hex), if any.
    pub accepted: Option<String>,
    /// Every replica's answer.
    pub replicas: Vec<ReplicaEvidence>,
}

/// A chunk that did not verify to a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkFailure {
    /// The chunk.
    pub chunk: u32,
    /// Why.
    pub reason: String,
    /// Evidence: each peer and what it answered.
    pub evidence: Vec<(String, String)>,
}

/// Where a job is, as `peergrid status JOB` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job id (hex).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: JobState,
    /// Chunks in all.
    pub chunks_total: u32,
    /// Chunks verified (to a result or a verified failure).
    pub chunks_verified: u32,
    /// Chunks that could not be verified.
    pub chunks_failed: u32,
    /// Replicas issued (accepted by workers).
    pub replicas_issued: u32,
    /// Results received.
    pub results: u32,
    /// Chunks where peers disagreed.
    pub disagreements: u32,
    /// Replicas that timed out or were lost.
    pub reissues: u32,
    /// Why nothing moves, when that is so.
    pub why: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The result blob (hex), when done.
    pub result: Option<String>,
    /// Seconds since submission (until the end, once ended).
    pub elapsed_s: f64,
    /// Per-peer tallies.
    pub peers: Vec<PeerTally>,
    /// The first failed chunks, with evidence.
    pub failures: Vec<ChunkFailure>,
    /// What adaptive replication did.
    #[serde(default)]
    pub trust: TrustCounts,
    /// Fixed or adaptive.
    #[serde(default)]
    pub replication: Replication,
}

pub(crate) enum Msg {
    Insert(Box<job::Job>, oneshot::Sender<Result<(), String>>),
    Cancel(JobId, oneshot::Sender<Result<Option<()>, String>>),
    Results(PeerId, ResultBatch, oneshot::Sender<ResultAck>),
    OfferReply {
        job: JobId,
        peer: PeerId,
        offered: Vec<(u32, u32)>,
        reply: Result<crate::net::protocol::TaskReply, crate::net::RequestError>,
    },
    Merged(JobId, Result<Option<BlobHash>, String>),
    Status(Option<JobId>, oneshot::Sender<Vec<JobStatus>>),
    Subscribe(JobId, oneshot::Sender<Option<watch::Receiver<JobStatus>>>),
    Evidence(JobId, oneshot::Sender<Option<Vec<ChunkEvidence>>>),
    Counts(oneshot::Sender<Vec<(JobState, u64)>>),
    /// A run this node did itself (witness or spot check) ended.
    LocalRun(
        JobId,
        u32,
        u32,
        Result<crate::net::protocol::ChunkResult, String>,
    ),
}

/// A handle to the scheduler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Scheduler {
    tx: mpsc::Sender<Msg>,
    ctx: SchedulerContext,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

/// Parses a job id given in hex (the first 16 bytes).
pub fn parse_job_id(s: &str) -> Option<JobId> {
    let s = s.trim();
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(JobId(id))
}

/// A job id in full hex.
pub fn job_id_hex(id: &JobId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

impl Scheduler {
    /// Starts the actor, loading unfinished jobs from the database.
    pub fn start(
        ctx: SchedulerContext,
        shutdown: CancellationToken,
    ) -> (Scheduler, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(INBOX);
        let actor = actor::Actor::new(ctx.clone(), tx.clone(), rx, shutdown);
        let task = tokio::spawn(tracing::Instrument::in_current_span(actor.run()));
        (Scheduler { tx, ctx }, task)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Msg) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Validates and plans a job, then hands it to the actor. Nothing is sent to any
    /// peer unless this succeeds.
    pub async fn submit(&self, req: SubmitRequest) -> Result<JobId, SubmitError> {
        let spec = req.spec.unwrap_or_default();
        spec.check().map_err(SubmitError::Spec)?;
        let module_hash = BlobHash::from_hex(&req.module)
            .ok_or_else(|| SubmitError::NoModule(req.module.clone()))?;
        let blobs = self.ctx.blobs.clone();
        let sandbox = self.ctx.sandbox.clone();
        let params = req
            .params
            .as_ref()
            .map(|p| p.to_string().into_bytes())
            .unwrap_or_else(|| b"{}".to_vec());
        let inputs = req.inputs.clone();
        let planned = tokio::task::spawn_blocking(move || {
            plan(&blobs, &sandbox, module_hash, &params, inputs.as_deref())
        })
        .await
        .map_err(|e| SubmitError::Store(e.to_string()))??;
        let planned_len = planned.len() as u32;
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| SubmitError::Store(e.to_string()))?;
        let job = job::Job {
            id: JobId(id),
            name: req.name.chars().take(128).collect(),
            module: module_hash,
            spec,
            state: JobState::Running,
            chunks: planned,
            created_ms: crate::store::db::now_ms(),
            finished_ms: None,
            result: None,
            error: None,
            why: None,
            trust: Default::default(),
            counts: job::ChunkCounts {
                pending: planned_len,
                ..Default::default()
            },
            replicas: Default::default(),
        };
        self.ask(|tx| Msg::Insert(Box::new(job), tx))
            .await
            .ok_or(SubmitError::Shutdown)?
            .map_err(SubmitError::Store)?;
        Ok(JobId(id))
    }

    /// Cancels a job durably; workers holding its chunks are told to stop.
    /// `Ok(None)` for an unknown job; an error when the cancellation could not be
    /// stored (the job goes on).
    pub async fn cancel(&self, id: JobId) -> Result<Option<()>, CancelError> {
        self.ask(|tx| Msg::Cancel(id, tx))
            .await
            .ok_or(CancelError::Shutdown)?
            .map_err(CancelError::Store)
    }

    /// Records a batch of results from `peer`; the ack names those now stored.
    pub async fn results(&self, peer: PeerId, batch: ResultBatch) -> ResultAck {
        self.ask(|tx| Msg::Results(peer, batch, tx))
            .await
            .unwrap_or(ResultAck { stored: Vec::new() })
    }

    /// Status of one job, or of all.
    pub async fn status(&self, id: Option<JobId>) -> Vec<JobStatus> {
        self.ask(|tx| Msg::Status(id, tx)).await.unwrap_or_default()
    }

    /// How many jobs are in each state, from the counts the scheduler keeps (cheap:
    /// no status is built).
    pub async fn counts(&self) -> Vec<(JobState, u64)> {
        self.ask(Msg::Counts).await.unwrap_or_default()
    }

    /// The evidence of every disagreement in a job (at most
    /// [`MAX_EVIDENCE`] chunks); `None` for an unknown job.
    pub async fn evidence(&self, id: JobId) -> Option<Vec<ChunkEvidence>> {
        self.ask(|tx| Msg::Evidence(id, tx)).await.flatten()
    }

    /// A live view of a job's status.
    pub async fn subscribe(&self, id: JobId) -> Option<watch::Receiver<JobStatus>> {
        self.ask(|tx| Msg::Subscribe(id, tx)).await.flatten()
    }

    /// Follows a job until it ends (done, failed or cancelled), at most `limit`.
    /// The one wait the benches share: `Err` says why it did not end, with the
    /// last status seen when there was one.
    pub async fn wait_final(
        &self,
        id: JobId,
        limit: std::time::Duration,
    ) -> Result<JobStatus, WaitError> {
        let mut rx = self.subscribe(id).await.ok_or(WaitError::Vanished)?;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let status = rx.borrow_and_update().clone();
            if status.state.is_final() {
                return Ok(status);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(WaitError::Stopped(Box::new(status))),
                Err(_) => return Err(WaitError::TimedOut(Box::new(status))),
            }
        }
    }

    /// The verified output of one chunk (`None` unless it verified to a result),
    /// read from the database (which holds what the scheduler committed).
    pub async fn chunk_output(&self, id: JobId, chunk: u32) -> Option<Vec<u8>> {
        let blobs = self.ctx.blobs.clone();
        self.ctx
            .db
            .run(move |db| {
                let Some((state, outcome, output)) = db.chunk_verdict(id, chunk)? else {
                    return Ok(None);
                };
                let ok = state == crate::types::ChunkStatus::Verified
                    && postcard::from_bytes::<crate::types::WireOutcome>(
                        outcome.as_deref().unwrap_or_default(),
                    )
                    .is_ok_and(|o| o == crate::types::WireOutcome::Ok);
                Ok(ok
                    .then(|| local::read_output(&blobs, output).ok())
                    .flatten())
            })
            .await
            .ok()
            .flatten()
    }
}

/// Validates the module and makes the chunks: from `inputs` (blob hashes) or from the
/// module's `split`. Blocking (runs the sandbox). Public for the planning bench.
pub fn plan(
    blobs: &BlobStore,
    sandbox: &Sandbox,
    module_hash: BlobHash,
    params: &[u8],
    inputs: Option<&[String]>,
) -> Result<Vec<job::Chunk>, SubmitError> {
    let bytes = blobs
        .get(&module_hash)
        .map_err(|e| SubmitError::Store(e.to_string()))?
        .ok_or_else(|| SubmitError::NoModule(module_hash.to_hex()))?;
    let module = sandbox.load(&bytes)?;
    // Workers take binaries only (the CLI compiles WAT before uploading).
    if !bytes.starts_with(b"\0asm") {
        return Err(SubmitError::Module(
            crate::sandbox::ModuleError::TextFromPeer,
        ));
    }
    let raw: Vec<Vec<u8>> = match inputs {
        Some(list) => {
            if list.is_empty() {
                return Err(SubmitError::Inputs(
                    "no chunk inputs: the inputs directory or file is empty".into(),
                ));
            }
            list.iter()
                .map(|h| {
                    let hash = BlobHash::from_hex(h)
                        .ok_or_else(|| SubmitError::Inputs(format!("'{h}' is not a blob hash")))?;
                    blobs
                        .get(&hash)
                        .map_err(|e| SubmitError::Store(e.to_string()))?
                        .ok_or_else(|| SubmitError::Inputs(format!("input {h} was not uploaded")))
                })
                .collect::<Result<_, _>>()?
        }
        None => {
            if !module.has_split {
                return Err(SubmitError::Split(
                    "the module exports no peergrid_split; give chunk inputs with --inputs".into(),
                ));
            }
            match sandbox.split(&module, params, &Limits::SUBMITTER) {
                (_, Some(inputs)) if inputs.is_empty() => {
                    return Err(SubmitError::Split(
                        "split returned no chunks; check the params".into(),
                    ));
                }
                (_, Some(inputs)) => inputs,
                (exec, None) => return Err(SubmitError::Split(exec.outcome.to_string())),
            }
        }
    };
    if raw.len() > MAX_CHUNKS {
        return Err(SubmitError::Inputs(format!(
            "{} chunks is more than the {MAX_CHUNKS} a job may have",
            raw.len()
        )));
    }
    raw.into_iter()
        .map(|input| {
            let input_hash = BlobHash::of(&input);
            let payload = if input.len() <= INLINE_INPUT {
                Payload::Inline(input)
            } else {
                let size = input.len() as u64;
                blobs
                    .put(&input)
                    .map_err(|e| SubmitError::Store(e.to_string()))?;
                Payload::Blob {
                    hash: input_hash,
                    size,
                }
            };
            Ok(job::Chunk {
                input: Arc::new(payload),
                input_hash,
                state: job::ChunkState::Pending,
                replicas: Vec::new(),
                solo: None,
            })
        })
        .collect()
}
