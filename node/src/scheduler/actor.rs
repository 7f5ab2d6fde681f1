//! The scheduler actor: owns every job's live state, places replicas, verifies
//! results, and writes every change through to the database before it is
//! acknowledged. See the module docs of [`scheduler`](super) for the message flow.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::job::{
    Chunk, ChunkState, Job, JobSpec, JobState, Replica, ReplicaState, Verdict, agreement_key,
    is_deterministic,
};
use super::reputation::Reputation;
use super::trust::{Standing, TrustPolicy};
use super::{
    ChunkEvidence, ChunkFailure, JobStatus, MAX_EVIDENCE, Msg, PeerTally, ReplicaEvidence,
    SchedulerContext, job_id_hex,
};
use crate::net::protocol::{
    Assignment, BlobHash, ChunkResult, JobId, PROTOCOL_VERSION, Payload, RejectReason, ResultAck,
    TaskReply, TaskRequest, WireOutcome, result_signed_bytes, verify_result_signature,
};
use crate::store::db::{ChunkRow, JobRow, ReplicaRow, Write, now_ms};
use crate::worker::QUEUE_FACTOR;

/// How often the actor re-dispatches even when nothing happened (timeouts, peers
/// that left or joined).
const TICK: Duration = Duration::from_millis(250);
/// A peer that refused or failed an offer is skipped for this long.
const PEER_BACKOFF: Duration = Duration::from_secs(1);
/// Outputs up to this size are kept in the database rather than as blob files.
const DB_OUTPUT: usize = 64 * 1024;
/// Progress is published to watchers at most this often per job.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// Failures with evidence kept in a status.
const MAX_FAILURES_SHOWN: usize = 10;
/// Runs this node does at once itself (witnesses and spot checks).
const LOCAL_RUNS: usize = 2;
/// Planted chunks waiting for a trusted peer with room.
const MAX_PLANTS_QUEUED: usize = 1000;

/// A candidate worker in one dispatch.
struct Candidate {
    peer: PeerId,
    memory: u64,
    room: i64,
    score: f64,
    standing: Standing,
    group: Option<String>,
    source: Option<String>,
}

/// A peer's standing, this node being always trusted.
fn standing_of(
    reputation: &Reputation,
    trust: &TrustPolicy,
    local: &PeerId,
    peer: &PeerId,
) -> Standing {
    if peer == local {
        Standing::Trusted
    } else {
        reputation
            .row(peer)
            .map_or(Standing::Probation, |row| trust.standing(row))
    }
}

pub(super) struct Actor {
    ctx: SchedulerContext,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    shutdown: CancellationToken,
    jobs: BTreeMap<JobId, Job>,
    watchers: HashMap<JobId, watch::Sender<JobStatus>>,
    reputation: Reputation,
    backoff: HashMap<PeerId, Instant>,
    fetching: HashSet<BlobHash>,
    dirty: HashSet<JobId>,
    /// When each job's status was last published (publishing is throttled).
    published: HashMap<JobId, Instant>,
    /// Chunks whose state changed since the last dispatch; a light dispatch looks
    /// only at these, a full one (every tick) at every chunk.
    attention: HashMap<JobId, BTreeSet<u32>>,
    kick: bool,
    full: bool,
    local: PeerId,
    rng: StdRng,
    /// Per peer, the chunks verified on its word alone (newest last, bounded by
    /// the policy's window): re-verified if it is ever found wrong.
    solo_index: HashMap<PeerId, VecDeque<(JobId, u32)>>,
    /// Verified chunks to plant with a trusted peer.
    plants: VecDeque<(JobId, u32)>,
    /// Runs this node is doing itself now.
    /// Runs this node is doing itself now (job, chunk, attempt). One that outlives
    /// the job's soft timeout stops counting, so a stuck run cannot block the rest.
    local_runs: HashMap<(JobId, u32, u32), Instant>,
    /// Peer -> (network group, discovery source), from the last dispatch's view.
    groups: HashMap<PeerId, (Option<String>, Option<String>)>,
    /// Live replicas per peer across running jobs: recounted by every full dispatch,
    /// kept up to date in between (a light dispatch must not walk every replica).
    inflight: HashMap<PeerId, u32>,
    /// The capacity view as of the last full dispatch.
    view: std::sync::Arc<Vec<(PeerId, crate::net::PeerInfo)>>,
    /// Peers in that view with an advert or a connection (and this node).
    alive: HashSet<PeerId>,
}

/// Marks a replica lost (it will be replaced) and returns its row to write.
fn lose(
    inflight: &mut HashMap<PeerId, u32>,
    replica: &mut Replica,
    job: JobId,
    chunk: u32,
) -> Write {
    if replica.state.is_live() {
        landed(inflight, &replica.peer);
    }
    replica.state = ReplicaState::Lost;
    Write::Replica(job, replica_row(chunk, replica))
}

/// One replica fewer in flight on `peer`.
fn landed(inflight: &mut HashMap<PeerId, u32>, peer: &PeerId) {
    if let Some(n) = inflight.get_mut(peer) {
        *n = n.saturating_sub(1);
    }
}

fn encode_outcome(o: &WireOutcome) -> Vec<u8> {
    postcard::to_allocvec(o).unwrap_or_default()
}

fn decode_outcome(bytes: Option<&[u8]>) -> Option<WireOutcome> {
    bytes.and_then(|b| postcard::from_bytes(b).ok())
}

/// A short human description of an outcome.
pub(super) fn describe(o: &WireOutcome) -> String {
    match o {
        WireOutcome::Ok => "ok".into(),
        WireOutcome::Trap { kind, message } => format!("trap ({kind}): {message}"),
        WireOutcome::OutOfFuel => "out of fuel".into(),
        WireOutcome::MemoryLimit => "memory limit reached".into(),
        WireOutcome::Timeout => "timed out on the worker".into(),
        WireOutcome::Invalid(r) => format!("invalid module: {r}"),
        WireOutcome::Withdrawn => "withdrawn by the worker (its owner needed the machine)".into(),
    }
}

fn replica_row(chunk: u32, r: &Replica) -> ReplicaRow {
    let (issued_ms, outcome, output, fuel, output_data, signature) = match &r.state {
        ReplicaState::Issued(at) | ReplicaState::TimedOut(at) => {
            (*at, None, None, None, None, None)
        }
        ReplicaState::Returned {
            outcome,
            output,
            fuel,
            data,
            signature,
            ..
        } => (
            0,
            Some(encode_outcome(outcome)),
            Some(*output),
            Some(*fuel),
            data.clone(),
            Some(signature.clone()),
        ),
        ReplicaState::Offered | ReplicaState::Lost => (0, None, None, None, None, None),
    };
    ReplicaRow {
        chunk,
        attempt: r.attempt,
        peer: r.peer.to_string(),
        state: r.state.as_str().into(),
        issued_ms,
        outcome,
        output,
        output_data,
        fuel,
        signature,
    }
}

impl Actor {
    /// Loads jobs from the database.
    pub(super) fn load(
        ctx: SchedulerContext,
        tx: mpsc::Sender<Msg>,
        rx: mpsc::Receiver<Msg>,
        shutdown: CancellationToken,
    ) -> Self {
        let reputation = Reputation::load(ctx.db.reputations().unwrap_or_default())
            .with_metrics(ctx.metrics.clone());
        let ctx_local = ctx.net.local_peer_id();
        let mut actor = Self {
            ctx,
            tx,
            rx,
            shutdown,
            jobs: BTreeMap::new(),
            watchers: HashMap::new(),
            reputation,
            backoff: HashMap::new(),
            fetching: HashSet::new(),
            dirty: HashSet::new(),
            published: HashMap::new(),
            attention: HashMap::new(),
            kick: true,
            full: true,
            local: ctx_local,
            rng: rand::make_rng(),
            solo_index: HashMap::new(),
            plants: VecDeque::new(),
            local_runs: HashMap::new(),
            groups: HashMap::new(),
            inflight: HashMap::new(),
            view: Default::default(),
            alive: HashSet::new(),
        };
        match actor.ctx.db.jobs(None) {
            Ok(rows) => {
                for row in rows {
                    match actor.load_job(row) {
                        Ok(job) => {
                            actor.dirty.insert(job.id);
                            for (idx, chunk) in job.chunks.iter().enumerate() {
                                if let (Some(peer), ChunkState::Verified { .. }) =
                                    (chunk.solo, &chunk.state)
                                {
                                    actor.remember_solo(peer, job.id, idx as u32);
                                }
                            }
                            actor.jobs.insert(job.id, job);
                        }
                        Err(e) => tracing::error!("cannot load a job: {e}"),
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot load jobs"),
        }
        let resumed = actor.jobs.values().filter(|j| !j.state.is_final()).count();
        if resumed > 0 {
            tracing::info!(jobs = resumed, "resuming unfinished jobs");
        }
        actor
    }

    fn load_job(&self, row: JobRow) -> Result<Job, String> {
        let spec = JobSpec::decode(&row.spec)?;
        let state = JobState::parse(&row.state).ok_or("unknown job state")?;
        let chunk_rows = self.ctx.db.chunks(row.id).map_err(|e| e.to_string())?;
        let replica_rows = self.ctx.db.replicas(row.id).map_err(|e| e.to_string())?;
        let mut chunks: Vec<Chunk> = chunk_rows
            .into_iter()
            .map(|c: ChunkRow| {
                let state = match c.state.as_str() {
                    "verified" => match (decode_outcome(c.outcome.as_deref()), c.output) {
                        (Some(outcome), Some(output)) => ChunkState::Verified {
                            key: agreement_key(&outcome, &output),
                            outcome,
                            output,
                        },
                        _ => ChunkState::Failed("stored verification is unreadable".into()),
                    },
                    "failed" => ChunkState::Failed(
                        c.outcome
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                            .unwrap_or_default(),
                    ),
                    _ => ChunkState::Pending,
                };
                Chunk {
                    input: match c.input_data {
                        Some(bytes) => Payload::Inline(bytes),
                        None => Payload::Blob {
                            hash: c.input,
                            size: c.input_size,
                        },
                    },
                    input_hash: c.input,
                    state,
                    replicas: Vec::new(),
                    solo: c.solo.and_then(|p| p.parse().ok()),
                }
            })
            .collect();
        for r in replica_rows {
            let Some(chunk) = chunks.get_mut(r.chunk as usize) else {
                continue;
            };
            let Ok(peer) = r.peer.parse::<PeerId>() else {
                continue;
            };
            let state = match r.state.as_str() {
                "issued" => ReplicaState::Issued(r.issued_ms),
                "timed_out" => ReplicaState::TimedOut(r.issued_ms),
                "returned" => match (decode_outcome(r.outcome.as_deref()), r.output) {
                    (Some(outcome), Some(output)) => ReplicaState::Returned {
                        key: agreement_key(&outcome, &output),
                        outcome,
                        output,
                        fuel: r.fuel.unwrap_or(0),
                        data: r.output_data,
                        signature: r.signature.unwrap_or_default(),
                    },
                    _ => ReplicaState::Lost,
                },
                _ => ReplicaState::Lost,
            };
            chunk.replicas.push(Replica {
                attempt: r.attempt,
                peer,
                state,
                check: false,
            });
        }
        Ok(Job {
            id: row.id,
            name: row.name,
            module: row.module,
            spec,
            state,
            chunks,
            created_ms: row.created_ms,
            finished_ms: row.finished_ms,
            result: row.result,
            error: row.error,
            why: None,
            trust: Default::default(),
        })
    }

    pub(super) async fn run(mut self) {
        // Jobs interrupted while merging merge again.
        let merging: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Merging)
            .map(|j| j.id)
            .collect();
        for id in merging {
            self.start_merge(id);
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.on_message(msg),
                    None => break,
                },
                _ = tick.tick() => {
                    self.kick = true;
                    self.full = true;
                }
            }
            if self.kick {
                self.kick = false;
                let full = std::mem::take(&mut self.full);
                self.dispatch(full).await;
            }
            self.publish();
        }
    }

    fn persist(&self, writes: &[Write]) -> bool {
        // A batch of results updates the same peers' reputation many times: only the
        // last row of each peer needs writing.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, w) in writes.iter().enumerate() {
            if let Write::Reputation(row) = w {
                last.insert(row.peer.as_str(), i);
            }
        }
        let result =
            self.ctx
                .db
                .apply_each(writes.iter().enumerate().filter_map(|(i, w)| match w {
                    Write::Reputation(row) if last.get(row.peer.as_str()) != Some(&i) => None,
                    _ => Some(w),
                }));
        match result {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot write scheduler state");
                false
            }
        }
    }

    fn on_message(&mut self, msg: Msg) {
        match msg {
            Msg::Insert(job, reply) => {
                let row = JobRow {
                    id: job.id,
                    name: job.name.clone(),
                    module: job.module,
                    params: Vec::new(),
                    spec: postcard::to_allocvec(&job.spec).unwrap_or_default(),
                    state: job.state.as_str().into(),
                    chunks_total: job.chunks.len() as u32,
                    created_ms: job.created_ms,
                    finished_ms: None,
                    result: None,
                    error: None,
                };
                let chunks = job
                    .chunks
                    .iter()
                    .enumerate()
                    .map(|(i, c)| ChunkRow {
                        idx: i as u32,
                        input: c.input_hash,
                        input_size: match &c.input {
                            Payload::Inline(b) => b.len() as u64,
                            Payload::Blob { size, .. } => *size,
                        },
                        input_data: match &c.input {
                            Payload::Inline(b) => Some(b.clone()),
                            Payload::Blob { .. } => None,
                        },
                        state: "pending".into(),
                        outcome: None,
                        output: None,
                        solo: None,
                    })
                    .collect();
                let result = self
                    .ctx
                    .db
                    .apply(&[Write::InsertJob(row, chunks)])
                    .map_err(|e| e.to_string());
                if result.is_ok() {
                    tracing::info!(job = %job.id, name = %job.name, chunks = job.chunks.len(), "job submitted");
                    self.dirty.insert(job.id);
                    self.jobs.insert(job.id, *job);
                    self.kick = true;
                    self.full = true;
                }
                let _ = reply.send(result);
            }
            Msg::Cancel(id, reply) => {
                let _ = reply.send(self.cancel(id));
            }
            Msg::Results(peer, batch, reply) => {
                let ack = self.on_results(peer, batch.results);
                let _ = reply.send(ack);
                self.kick = true;
            }
            Msg::OfferReply {
                job,
                peer,
                offered,
                reply,
            } => {
                self.on_offer_reply(job, peer, offered, reply);
                self.kick = true;
            }
            Msg::Merged(id, result) => self.on_merged(id, result),
            Msg::LocalRun(id, idx, attempt, result) => self.on_local_run(id, idx, attempt, result),
            Msg::Status(id, reply) => {
                let statuses = match id {
                    Some(id) => self
                        .jobs
                        .get(&id)
                        .map(|j| self.status(j))
                        .into_iter()
                        .collect(),
                    None => self.jobs.values().map(|j| self.status(j)).collect(),
                };
                let _ = reply.send(statuses);
            }
            Msg::Subscribe(id, reply) => {
                let status = self.jobs.get(&id).map(|job| self.status(job));
                let rx = status.map(|status| {
                    self.watchers
                        .entry(id)
                        .or_insert_with(|| watch::channel(status).0)
                        .subscribe()
                });
                let _ = reply.send(rx);
            }
            Msg::Evidence(id, reply) => {
                let _ = reply.send(self.evidence(id));
            }
            Msg::Output(id, chunk, reply) => {
                let output = self
                    .jobs
                    .get(&id)
                    .and_then(|j| j.chunks.get(chunk as usize))
                    .and_then(|c| match &c.state {
                        ChunkState::Verified {
                            outcome: WireOutcome::Ok,
                            output,
                            ..
                        } => Some(*output),
                        _ => None,
                    });
                let _ = reply.send(output);
            }
        }
    }

    fn cancel(&mut self, id: JobId) -> Option<()> {
        let job = self.jobs.get_mut(&id)?;
        if job.state.is_final() {
            return Some(());
        }
        job.state = JobState::Cancelled;
        job.finished_ms = Some(now_ms());
        let mut holders: HashSet<PeerId> = HashSet::new();
        for chunk in &job.chunks {
            for r in &chunk.replicas {
                if r.state.is_live() {
                    holders.insert(r.peer);
                }
            }
        }
        let write = Write::JobState {
            id,
            state: JobState::Cancelled.as_str().into(),
            finished_ms: job.finished_ms,
            result: None,
            error: None,
        };
        self.persist(&[write]);
        tracing::info!(job = %id, "job cancelled");
        for peer in holders {
            let net = self.ctx.net.clone();
            tokio::spawn(async move {
                let _ = net
                    .send_task(
                        peer,
                        TaskRequest::Cancel {
                            job_id: id,
                            chunks: Vec::new(),
                        },
                    )
                    .await;
            });
        }
        self.dirty.insert(id);
        Some(())
    }

    fn on_offer_reply(
        &mut self,
        id: JobId,
        peer: PeerId,
        offered: Vec<(u32, u32)>,
        reply: Result<TaskReply, crate::net::RequestError>,
    ) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let accepted: HashSet<(u32, u32)> = match reply {
            Ok(TaskReply::Offer { accepted, rejected }) => {
                if rejected.iter().any(|r| r.2 == RejectReason::NoFreeSlots) {
                    self.backoff.insert(peer, Instant::now() + PEER_BACKOFF);
                }
                accepted.into_iter().collect()
            }
            Ok(TaskReply::Cancelled) | Err(_) => {
                self.backoff.insert(peer, Instant::now() + PEER_BACKOFF);
                HashSet::new()
            }
        };
        let now = now_ms();
        let mut writes = Vec::new();
        for (chunk_idx, attempt) in offered {
            let Some(chunk) = job.chunks.get_mut(chunk_idx as usize) else {
                continue;
            };
            let Some(r) = chunk
                .replicas
                .iter_mut()
                .find(|r| r.attempt == attempt && r.peer == peer)
            else {
                continue;
            };
            if r.state != ReplicaState::Offered {
                continue;
            }
            if accepted.contains(&(chunk_idx, attempt)) {
                r.state = ReplicaState::Issued(now);
                self.ctx.metrics.replicas_issued.inc();
                writes.push(Write::Replica(id, replica_row(chunk_idx, r)));
            } else {
                // Refused or unanswered: forget it, the peer may be asked again later.
                landed(&mut self.inflight, &peer);
                self.attention.entry(id).or_default().insert(chunk_idx);
                let pos = chunk
                    .replicas
                    .iter()
                    .position(|x| x.attempt == attempt && x.peer == peer);
                if let Some(pos) = pos {
                    chunk.replicas.remove(pos);
                }
            }
        }
        self.persist(&writes);
        self.dirty.insert(id);
    }

    /// Records results; returns the ack naming those stored (or not ours to keep).
    fn on_results(&mut self, peer: PeerId, results: Vec<ChunkResult>) -> ResultAck {
        let mut stored = Vec::new();
        let mut writes = Vec::new();
        let mut touched: Vec<(JobId, u32)> = Vec::new();
        // Peers found wrong: their results on their word alone are re-verified.
        let mut caught: Vec<PeerId> = Vec::new();
        for result in results {
            let key = (result.job_id, result.chunk, result.attempt);
            let Some(job) = self.jobs.get_mut(&result.job_id) else {
                stored.push(key);
                continue;
            };
            let Some(chunk) = job.chunks.get_mut(result.chunk as usize) else {
                stored.push(key);
                continue;
            };
            let Some(replica) = chunk
                .replicas
                .iter_mut()
                .find(|r| r.attempt == result.attempt && r.peer == peer)
            else {
                // Not a replica this peer holds: nothing to keep.
                stored.push(key);
                continue;
            };
            if matches!(replica.state, ReplicaState::Returned { .. }) {
                stored.push(key);
                continue;
            }
            // The answer must be this peer's own, signed with its identity key.
            // (This node's own results come straight from its worker, not the network.)
            if peer != self.local
                && !verify_result_signature(&peer, &result.signed_bytes(), &result.signature)
            {
                tracing::warn!(%peer, job = %result.job_id, chunk = result.chunk,
                    "refused a result whose signature is not the sending peer's");
                writes.push(lose(
                    &mut self.inflight,
                    replica,
                    result.job_id,
                    result.chunk,
                ));
                job.trust.bad_signatures += 1;
                writes.push(self.reputation.error(peer));
                stored.push(key);
                touched.push((result.job_id, result.chunk));
                continue;
            }
            if result.outcome == WireOutcome::Withdrawn {
                // The worker's owner needed the machine: run it elsewhere, no penalty.
                writes.push(lose(
                    &mut self.inflight,
                    replica,
                    result.job_id,
                    result.chunk,
                ));
                self.ctx.metrics.reissues.with_label_values(&["lost"]).inc();
                stored.push(key);
                touched.push((result.job_id, result.chunk));
                continue;
            }
            // The output must be stored (and match its hash) before the ack: small
            // ones go into the database with the replica, larger ones into blobs.
            let mut data = None;
            let usable = match &result.output {
                None => result.output_hash == BlobHash::of(b""),
                Some(Payload::Inline(bytes)) if BlobHash::of(bytes) != result.output_hash => false,
                Some(Payload::Inline(bytes)) if bytes.len() <= DB_OUTPUT => {
                    data = Some(bytes.clone());
                    true
                }
                Some(Payload::Inline(bytes)) => self.ctx.blobs.put(bytes).is_ok(),
                Some(Payload::Blob { hash, size }) => {
                    if *hash != result.output_hash || *size > crate::net::protocol::MAX_BLOB_BYTES {
                        false
                    } else if self.ctx.blobs.contains(hash) {
                        true
                    } else {
                        // Fetch it, and take the result when the worker retries.
                        if self.fetching.insert(*hash) {
                            let (net, blobs, hash) =
                                (self.ctx.net.clone(), self.ctx.blobs.clone(), *hash);
                            tokio::spawn(async move {
                                if let Err(e) =
                                    crate::net::fetch::fetch_blob(&net, &blobs, hash, &[peer]).await
                                {
                                    tracing::warn!(%peer, "cannot fetch a result output: {e}");
                                }
                            });
                        }
                        continue;
                    }
                }
            };
            if !usable {
                tracing::warn!(%peer, job = %result.job_id, chunk = result.chunk, "unusable result (output does not match its hash)");
                writes.push(lose(
                    &mut self.inflight,
                    replica,
                    result.job_id,
                    result.chunk,
                ));
                writes.push(self.reputation.error(peer));
                stored.push(key);
                touched.push((result.job_id, result.chunk));
                continue;
            }
            if let Payload::Blob { hash, .. } = result
                .output
                .as_ref()
                .unwrap_or(&Payload::Inline(Vec::new()))
            {
                self.fetching.remove(hash);
            }
            if !is_deterministic(&result.outcome) {
                writes.push(self.reputation.error(peer));
            }
            if replica.state.is_live() {
                landed(&mut self.inflight, &peer);
            }
            replica.state = ReplicaState::Returned {
                key: agreement_key(&result.outcome, &result.output_hash),
                outcome: result.outcome,
                output: result.output_hash,
                fuel: result.fuel_used,
                data,
                signature: result.signature,
            };
            writes.push(Write::Replica(
                result.job_id,
                replica_row(result.chunk, replica),
            ));
            // A late result for a chunk already verified still tells on its peer; a
            // check (plant or spot check) tells on the peer whose word was taken.
            if let ChunkState::Verified { key: verified, .. } = &chunk.state
                && let ReplicaState::Returned { key, outcome, .. } = &replica.state
                && is_deterministic(outcome)
            {
                let (agrees, check, solo) = (key == verified, replica.check, chunk.solo);
                match (check, solo) {
                    // This node re-ran a chunk taken on one peer's word.
                    (true, Some(solo)) if peer == self.local => {
                        if agrees {
                            writes.push(self.reputation.agreed(solo, true));
                        } else {
                            tracing::warn!(peer = %solo, job = %result.job_id, chunk = result.chunk,
                                "spot check: a trusted peer's answer was wrong; excluding it");
                            job.trust.caught += 1;
                            writes.push(self.reputation.caught(solo));
                            caught.push(solo);
                        }
                    }
                    // A plant: the answer was known.
                    (true, _) if !agrees => {
                        tracing::warn!(%peer, job = %result.job_id, chunk = result.chunk,
                            "planted chunk answered wrongly; excluding the peer");
                        job.trust.caught += 1;
                        writes.push(self.reputation.caught(peer));
                        caught.push(peer);
                    }
                    (_, _) if agrees => writes.push(self.reputation.agreed(peer, true)),
                    (_, _) => {
                        writes.push(self.reputation.disagreed(peer));
                        caught.push(peer);
                    }
                }
            }
            stored.push(key);
            touched.push((result.job_id, result.chunk));
        }
        for peer in caught {
            writes.extend(self.reverify(peer));
        }
        for (id, idx) in touched {
            writes.extend(self.evaluate_chunk(id, idx));
            self.attention.entry(id).or_default().insert(idx);
            self.dirty.insert(id);
        }
        if !self.persist(&writes) {
            // Nothing was stored: acknowledge nothing, the worker will retry.
            return ResultAck { stored: Vec::new() };
        }
        let ids: HashSet<JobId> = stored.iter().map(|k| k.0).collect();
        for id in ids {
            if let Some(w) = self.check_done(id) {
                self.persist(&[w]);
            }
        }
        ResultAck { stored }
    }

    /// Applies a verdict that ends a chunk (verified or failed); returns the writes.
    fn evaluate_chunk(&mut self, id: JobId, idx: u32) -> Vec<Write> {
        let Some(job) = self.jobs.get_mut(&id) else {
            return Vec::new();
        };
        if job.state != JobState::Running {
            return Vec::new();
        }
        let spec = job.spec;
        let created_ms = job.created_ms;
        let Some(chunk) = job.chunks.get_mut(idx as usize) else {
            return Vec::new();
        };
        if chunk.state != ChunkState::Pending {
            return Vec::new();
        }
        let mut writes = Vec::new();
        let local = self.local;
        let standing = |p: &PeerId| standing_of(&self.reputation, &self.ctx.trust, &local, p);
        let verdict = chunk.evaluate(&spec, &standing);
        match verdict {
            Verdict::Verified(key) => {
                let winner = chunk.replicas.iter().find_map(|r| match &r.state {
                    ReplicaState::Returned {
                        key: k,
                        outcome,
                        output,
                        data,
                        ..
                    } if *k == key => Some((outcome.clone(), *output, data.clone(), r.attempt)),
                    _ => None,
                });
                let Some((outcome, output, mut output_data, attempt)) = winner else {
                    return writes;
                };
                if output_data.is_none() && !self.ctx.blobs.contains(&output) {
                    // Verified again after a re-open: the copy in memory was freed,
                    // the replica's row still has it.
                    output_data =
                        self.ctx
                            .db
                            .replica_output(id, idx, attempt)
                            .unwrap_or_else(|e| {
                                tracing::error!(error = %e, "cannot read a replica's output");
                                None
                            });
                }
                let agreeing: Vec<PeerId> = chunk
                    .groups(&standing)
                    .into_iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, peers)| peers)
                    .unwrap_or_default();
                // Taken on one trusted peer's word (adaptive replication)?
                let on_word = spec.adaptive() && chunk.solo.is_some_and(|solo| agreeing == [solo]);
                let witnessed = agreeing.iter().any(|p| standing(p) == Standing::Trusted);
                if !on_word {
                    chunk.solo = None;
                }
                // The verified output now lives in the chunk's row; free the copies.
                for r in chunk.replicas.iter_mut() {
                    if let ReplicaState::Returned { data, .. } = &mut r.state {
                        *data = None;
                    }
                }
                let mut wrong = Vec::new();
                if !on_word {
                    for r in &chunk.replicas {
                        if let ReplicaState::Returned {
                            key: k, outcome, ..
                        } = &r.state
                            && is_deterministic(outcome)
                        {
                            writes.push(if *k == key {
                                self.reputation.agreed(r.peer, witnessed)
                            } else {
                                wrong.push(r.peer);
                                self.reputation.disagreed(r.peer)
                            });
                        }
                    }
                }
                writes.push(Write::ChunkState {
                    job: id,
                    idx,
                    state: "verified".into(),
                    outcome: Some(encode_outcome(&outcome)),
                    output: Some(output),
                    output_data,
                    solo: chunk.solo.filter(|_| on_word).map(|p| p.to_string()),
                });
                chunk.state = ChunkState::Verified {
                    outcome,
                    output,
                    key,
                };
                let solo = chunk.solo;
                let waited = now_ms().saturating_sub(created_ms) as f64 / 1000.0;
                self.ctx.metrics.submit_to_verified.observe(waited);
                if on_word {
                    job.trust.unreplicated += 1;
                }
                let plant = spec.adaptive() && witnessed && self.ctx.trust.plant(&mut self.rng);
                let spot = on_word && self.ctx.trust.spot_check(&mut self.rng);
                if let (true, Some(solo)) = (on_word, solo) {
                    self.remember_solo(solo, id, idx);
                }
                if plant && self.plants.len() < MAX_PLANTS_QUEUED {
                    self.plants.push_back((id, idx));
                }
                if spot {
                    self.start_local_run(id, idx, true);
                }
                for peer in wrong {
                    writes.extend(self.reverify(peer));
                }
            }
            Verdict::Failed(reason) => {
                writes.push(Write::ChunkState {
                    job: id,
                    idx,
                    state: "failed".into(),
                    outcome: Some(reason.clone().into_bytes()),
                    output: None,
                    output_data: None,
                    solo: None,
                });
                chunk.state = ChunkState::Failed(reason);
            }
            Verdict::Need(_) | Verdict::NeedWitness | Verdict::Wait => {}
        }
        writes
    }

    /// Remembers a chunk verified on `peer`'s word alone (bounded per peer).
    fn remember_solo(&mut self, peer: PeerId, id: JobId, idx: u32) {
        let list = self.solo_index.entry(peer).or_default();
        list.push_back((id, idx));
        while list.len() > self.ctx.trust.recheck_window {
            list.pop_front();
        }
    }

    /// `peer` was found wrong: every chunk verified on its word alone is opened
    /// again (a finished job runs again for those chunks, then merges again).
    fn reverify(&mut self, peer: PeerId) -> Vec<Write> {
        let Some(list) = self.solo_index.remove(&peer) else {
            return Vec::new();
        };
        let mut writes = Vec::new();
        let mut reopened = 0usize;
        for (id, idx) in list {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            if matches!(job.state, JobState::Cancelled | JobState::Failed) {
                continue;
            }
            let Some(chunk) = job.chunks.get_mut(idx as usize) else {
                continue;
            };
            if chunk.solo != Some(peer) || !matches!(chunk.state, ChunkState::Verified { .. }) {
                continue;
            }
            chunk.state = ChunkState::Pending;
            chunk.solo = None;
            writes.push(Write::ChunkState {
                job: id,
                idx,
                state: "pending".into(),
                outcome: None,
                output: None,
                output_data: None,
                solo: None,
            });
            job.trust.reverified += 1;
            reopened += 1;
            if job.state != JobState::Running {
                tracing::warn!(job = %id, %peer, "a finished job runs again: a result it rested on is being re-verified");
                job.state = JobState::Running;
                job.result = None;
                job.finished_ms = None;
                job.error = None;
                writes.push(Write::JobState {
                    id,
                    state: JobState::Running.as_str().into(),
                    finished_ms: None,
                    result: None,
                    error: None,
                });
            }
            self.attention.entry(id).or_default().insert(idx);
            self.dirty.insert(id);
        }
        if reopened > 0 {
            tracing::warn!(%peer, chunks = reopened, "re-verifying results taken on the word of a peer found wrong");
            self.kick = true;
        }
        writes
    }

    /// When every chunk has ended: merge (all verified ok) or fail the job.
    fn check_done(&mut self, id: JobId) -> Option<Write> {
        let job = self.jobs.get_mut(&id)?;
        if job.state != JobState::Running
            || job.chunks.iter().any(|c| c.state == ChunkState::Pending)
        {
            return None;
        }
        let problems: Vec<String> = job
            .chunks
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match &c.state {
                ChunkState::Verified {
                    outcome: WireOutcome::Ok,
                    ..
                } => None,
                ChunkState::Verified { outcome, .. } => Some(format!(
                    "chunk {i}: verified failure: {}",
                    describe(outcome)
                )),
                ChunkState::Failed(reason) => Some(format!("chunk {i}: {reason}")),
                ChunkState::Pending => None,
            })
            .collect();
        self.dirty.insert(id);
        // Nothing waits for peers any more.
        job.why = None;
        if problems.is_empty() {
            job.state = JobState::Merging;
            let write = Write::JobState {
                id,
                state: JobState::Merging.as_str().into(),
                finished_ms: None,
                result: None,
                error: None,
            };
            self.start_merge(id);
            return Some(write);
        }
        let total = problems.len();
        let mut error: String = problems.into_iter().take(5).collect::<Vec<_>>().join("; ");
        if total > 5 {
            error.push_str(&format!("; and {} more chunks", total - 5));
        }
        tracing::warn!(job = %id, "job failed: {error}");
        job.state = JobState::Failed;
        job.finished_ms = Some(now_ms());
        job.error = Some(error.clone());
        Some(Write::JobState {
            id,
            state: JobState::Failed.as_str().into(),
            finished_ms: job.finished_ms,
            result: None,
            error: Some(error),
        })
    }

    /// Runs merge on a blocking thread; the result comes back as `Msg::Merged`.
    fn start_merge(&self, id: JobId) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let (blobs, db, sandbox, module, tx) = (
            self.ctx.blobs.clone(),
            self.ctx.db.clone(),
            self.ctx.sandbox.clone(),
            job.module,
            self.tx.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let result = merge(&blobs, &db, &sandbox, module, id);
            let _ = tx.blocking_send(Msg::Merged(id, result));
        });
    }

    fn on_merged(&mut self, id: JobId, result: Result<Option<BlobHash>, String>) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if job.state != JobState::Merging {
            return;
        }
        job.finished_ms = Some(now_ms());
        match result {
            Ok(hash) => {
                job.state = JobState::Done;
                job.result = hash;
                tracing::info!(job = %id, "job done");
            }
            Err(e) => {
                job.state = JobState::Failed;
                job.error = Some(format!("merge failed: {e}"));
                tracing::warn!(job = %id, "merge failed: {e}");
            }
        }
        let write = Write::JobState {
            id,
            state: job.state.as_str().into(),
            finished_ms: job.finished_ms,
            result: job.result,
            error: job.error.clone(),
        };
        self.persist(&[write]);
        self.dirty.insert(id);
    }

    /// Reissues lost and timed-out replicas and offers chunks that need replicas to
    /// eligible peers, one offer per peer and job. A `full` dispatch (every tick, and
    /// for a new job) looks at every chunk; a light one (after results and offer
    /// replies) only at the chunks that changed.
    async fn dispatch(&mut self, full: bool) {
        if !self.jobs.values().any(|j| j.state == JobState::Running) {
            return;
        }
        let now = Instant::now();
        self.backoff.retain(|_, until| *until > now);
        let local = self.local;
        let placement = self.ctx.placement;
        if full || self.view.is_empty() {
            // The capacity view changes at advert pace; light dispatches (after every
            // result batch) use the one read by the last full dispatch.
            let view: Vec<(PeerId, crate::net::PeerInfo)> = self
                .ctx
                .net
                .peers()
                .await
                .into_iter()
                .filter_map(|p| Some((p.peer_id.parse().ok()?, p)))
                .collect();
            let mut alive: HashSet<PeerId> = view
                .iter()
                .filter(|(_, p)| p.advert.is_some() || p.connected)
                .map(|(peer, _)| *peer)
                .collect();
            alive.insert(local);
            for (peer, p) in &view {
                self.groups.insert(
                    *peer,
                    (placement.group(p), placement.source(p).map(str::to_string)),
                );
            }
            if self.groups.len() > 2 * crate::net::peers::MAX_PEERS {
                self.groups.retain(|peer, _| alive.contains(peer));
            }
            self.view = std::sync::Arc::new(view);
            self.alive = alive;
        }
        let view = self.view.clone();
        let alive = self.alive.clone();
        // Live replicas per peer, across jobs.
        if full {
            // Spot checks of verified chunks are not reaped with the pending ones.
            let jobs = &self.jobs;
            self.local_runs.retain(|(id, _, _), started| {
                jobs.get(id)
                    .is_some_and(|j| started.elapsed() <= j.spec.soft_timeout)
            });
            let mut inflight: HashMap<PeerId, u32> = HashMap::new();
            for job in self.jobs.values().filter(|j| j.state == JobState::Running) {
                for c in &job.chunks {
                    for r in c.replicas.iter().filter(|r| r.state.is_live()) {
                        *inflight.entry(r.peer).or_default() += 1;
                    }
                }
            }
            self.inflight = inflight;
        }
        let inflight = &self.inflight;
        // Capacity per eligible peer.
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut excluded = 0;
        for (peer, p) in view.iter() {
            let (Some(advert), peer) = (&p.advert, *peer) else {
                continue;
            };
            if advert.version != PROTOCOL_VERSION || self.backoff.contains_key(&peer) {
                continue;
            }
            if self.reputation.excluded(&peer) {
                excluded += 1;
                continue;
            }
            let room = i64::from(advert.slots_total * QUEUE_FACTOR)
                - i64::from(inflight.get(&peer).copied().unwrap_or(0));
            candidates.push(Candidate {
                peer,
                memory: advert.memory_limit,
                room,
                score: self.reputation.score(&peer),
                standing: standing_of(&self.reputation, &self.ctx.trust, &local, &peer),
                group: placement.group(p),
                source: placement.source(p).map(str::to_string),
            });
        }
        // This node's own worker, offered directly.
        if let Some(worker) = &self.ctx.local_worker
            && !self.backoff.contains_key(&local)
            && worker.capacity().0 > 0
        {
            let (slots, memory) = worker.capacity();
            let room = i64::from(slots * QUEUE_FACTOR)
                - i64::from(inflight.get(&local).copied().unwrap_or(0));
            candidates.push(Candidate {
                peer: local,
                memory,
                room,
                score: 1.0,
                standing: Standing::Trusted,
                group: None,
                source: None,
            });
        }
        let known = view
            .iter()
            .filter(|(_, p)| p.foreign_version.is_none())
            .count();
        let mut total_room: i64 = candidates.iter().map(|c| c.room.max(0)).sum();
        let now_ms = now_ms();
        let mut writes = Vec::new();
        let mut offers: HashMap<(JobId, PeerId), Vec<(u32, u32)>> = HashMap::new();
        let mut local_runs: Vec<(JobId, u32)> = Vec::new();
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        let mut attention = std::mem::take(&mut self.attention);
        for id in ids {
            let mut unplaced = 0u32;
            let mut touched = Vec::new();
            let mut deferred = Vec::new();
            let mut changed = attention.remove(&id).unwrap_or_default();
            if !full && changed.is_empty() {
                continue;
            }
            let mut cursor = 0usize;
            {
                let Some(job) = self.jobs.get_mut(&id) else {
                    continue;
                };
                if job.state != JobState::Running {
                    continue;
                }
                let spec = job.spec;
                let timeout_ms = spec.soft_timeout.as_millis() as u64;
                loop {
                    // A full dispatch walks every chunk; a light one only the changed
                    // ones, and stops when no peer has room (the rest stay changed).
                    let idx = if full {
                        cursor += 1;
                        cursor - 1
                    } else {
                        match changed.first() {
                            Some(&i) if total_room > 0 => {
                                changed.pop_first();
                                i as usize
                            }
                            _ => break,
                        }
                    };
                    if full && idx >= job.chunks.len() {
                        break;
                    }
                    let Some(chunk) = job.chunks.get_mut(idx) else {
                        continue;
                    };
                    if chunk.state != ChunkState::Pending {
                        continue;
                    }
                    for r in chunk.replicas.iter_mut() {
                        let lost = match r.state {
                            ReplicaState::Issued(at) if now_ms.saturating_sub(at) > timeout_ms => {
                                if self
                                    .local_runs
                                    .remove(&(id, idx as u32, r.attempt))
                                    .is_some()
                                {
                                    tracing::warn!(job = %id, chunk = idx, "a run on this node took longer than the soft timeout");
                                }
                                r.state = ReplicaState::TimedOut(at);
                                writes.push(self.reputation.timeout(r.peer));
                                true
                            }
                            ReplicaState::Issued(_) if !alive.contains(&r.peer) => {
                                r.state = ReplicaState::Lost;
                                true
                            }
                            _ => false,
                        };
                        if lost {
                            landed(&mut self.inflight, &r.peer);
                            self.ctx
                                .metrics
                                .reissues
                                .with_label_values(&[r.state.as_str()])
                                .inc();
                            tracing::debug!(job = %id, chunk = idx, peer = %r.peer, state = r.state.as_str(), "replica reissued");
                            writes.push(Write::Replica(id, replica_row(idx as u32, r)));
                        }
                    }
                    let standing =
                        |p: &PeerId| standing_of(&self.reputation, &self.ctx.trust, &local, p);
                    let verdict = chunk.evaluate(&spec, &standing);
                    let (n, witness) = match verdict {
                        Verdict::Need(n) => (n, false),
                        Verdict::NeedWitness => (1, true),
                        Verdict::Verified(_) | Verdict::Failed(_) => {
                            touched.push(idx as u32);
                            continue;
                        }
                        Verdict::Wait => continue,
                    };
                    // Never a peer, a network or (if asked) a discovery source twice.
                    let used: HashSet<PeerId> = chunk.used_peers().copied().collect();
                    let mut used_groups: HashSet<&str> = HashSet::new();
                    let mut used_sources: HashSet<&str> = HashSet::new();
                    for r in &chunk.replicas {
                        if matches!(r.state, ReplicaState::Lost | ReplicaState::TimedOut(_)) {
                            continue;
                        }
                        if let Some((group, source)) = self.groups.get(&r.peer) {
                            used_groups.extend(group.as_deref());
                            used_sources.extend(source.as_deref());
                        }
                    }
                    let mut choices: Vec<usize> = (0..candidates.len())
                        .filter(|&i| {
                            let c = &candidates[i];
                            c.room > 0
                                && c.memory >= spec.limits.memory_bytes
                                && !used.contains(&c.peer)
                                && c.group.as_deref().is_none_or(|g| !used_groups.contains(g))
                                && c.source
                                    .as_deref()
                                    .is_none_or(|s| !used_sources.contains(s))
                                && (!witness || c.standing == Standing::Trusted)
                        })
                        .collect();
                    // Most room first, then the best standing.
                    choices.sort_by(|&a, &b| {
                        let (a, b) = (&candidates[a], &candidates[b]);
                        b.room.cmp(&a.room).then(b.score.total_cmp(&a.score))
                    });
                    let mut picks: Vec<usize> = Vec::new();
                    for &i in &choices {
                        if picks.len() as u32 == n {
                            break;
                        }
                        // Two picks may not share a network or source either.
                        let c = &candidates[i];
                        let clash = picks.iter().any(|&j| {
                            let o = &candidates[j];
                            (c.group.is_some() && c.group == o.group)
                                || (c.source.is_some() && c.source == o.source)
                        });
                        if !clash {
                            picks.push(i);
                        }
                    }
                    let adaptive = spec.adaptive();
                    if adaptive && !witness && !chunk.has_trusted(&standing) {
                        // Peers on probation cannot verify each other: if a trusted
                        // peer fits, let it hold the last replica of the quorum.
                        let has_trusted = picks
                            .iter()
                            .any(|&i| candidates[i].standing == Standing::Trusted);
                        if !has_trusted
                            && let Some(&last) = picks.last()
                            && let Some(&t) = choices.iter().find(|&&i| {
                                let c = &candidates[i];
                                c.standing == Standing::Trusted
                                    && !picks.contains(&i)
                                    && picks.iter().filter(|&&j| j != last).all(|&j| {
                                        let o = &candidates[j];
                                        !(c.group.is_some() && c.group == o.group)
                                    })
                            })
                            && let Some(slot) = picks.last_mut()
                        {
                            *slot = t;
                        }
                    }
                    if adaptive && !witness && chunk.replicas.is_empty() && chunk.solo.is_none() {
                        // A fresh chunk whose best peer is trusted may run on it alone.
                        if let Some(&first) = picks.first() {
                            let peer = candidates[first].peer;
                            let alone = candidates[first].standing == Standing::Trusted
                                && self.reputation.row(&peer).is_some_and(|row| {
                                    self.ctx.trust.runs_alone(row, &mut self.rng)
                                });
                            if alone {
                                chunk.solo = Some(peer);
                                picks.truncate(1);
                            }
                        }
                    }
                    let mut placed = 0;
                    for i in picks {
                        let choice = &mut candidates[i];
                        let attempt = chunk.next_attempt();
                        chunk.replicas.push(Replica {
                            attempt,
                            peer: choice.peer,
                            state: ReplicaState::Offered,
                            check: false,
                        });
                        if choice.room > 0 {
                            total_room -= 1;
                        }
                        choice.room -= 1;
                        *self.inflight.entry(choice.peer).or_default() += 1;
                        offers
                            .entry((id, choice.peer))
                            .or_default()
                            .push((idx as u32, attempt));
                        placed += 1;
                    }
                    let wanted = if chunk.solo.is_some() && placed == 1 {
                        1
                    } else {
                        n
                    };
                    if witness && placed == 0 && self.ctx.local_worker_slots() == 0 {
                        // No trusted peer with room, and no local worker: witness it here.
                        local_runs.push((id, idx as u32));
                        continue;
                    }
                    unplaced += wanted.saturating_sub(placed);
                    if placed < wanted {
                        deferred.push(idx as u32);
                    }
                }
            }
            for idx in touched {
                writes.extend(self.evaluate_chunk(id, idx));
            }
            if !changed.is_empty() {
                // Not looked at (no room): still changed.
                match self.attention.entry(id) {
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(changed);
                    }
                    std::collections::hash_map::Entry::Occupied(mut e) => {
                        e.get_mut().append(&mut changed)
                    }
                }
            }
            if !deferred.is_empty() {
                self.attention.entry(id).or_default().extend(deferred);
            }
            if let Some(job) = self.jobs.get_mut(&id)
                && (full || unplaced > 0)
            {
                let why = (unplaced > 0).then(|| {
                    format!(
                        "waiting for peers: {unplaced} replicas need a distinct peer (in another network than the chunk's other replicas) with free slots and {} MiB per chunk; {} peers advertise capacity, {} known, {} excluded by reputation",
                        job.spec.limits.memory_bytes / (1024 * 1024),
                        candidates.len(),
                        known,
                        excluded
                    )
                });
                if why != job.why {
                    job.why = why;
                    self.dirty.insert(id);
                }
            }
            if let Some(w) = self.check_done(id) {
                writes.push(w);
            }
        }
        self.place_plants(&mut candidates, &mut offers);
        self.persist(&writes);
        for (id, idx) in local_runs {
            if !self.start_local_run(id, idx, false) {
                self.attention.entry(id).or_default().insert(idx);
            }
        }
        for ((id, peer), items) in offers {
            self.dirty.insert(id);
            if peer == local
                && let Some(worker) = self.ctx.local_worker.clone()
            {
                let reply = worker.offer(local, id, self.assignments(id, &items));
                self.on_offer_reply(id, peer, items, Ok(reply));
                continue;
            }
            self.send_offer(id, peer, items);
        }
    }

    /// Offers queued plants (verified chunks, answer known) to trusted peers that
    /// have room and have not run them.
    fn place_plants(
        &mut self,
        candidates: &mut [Candidate],
        offers: &mut HashMap<(JobId, PeerId), Vec<(u32, u32)>>,
    ) {
        let mut kept = VecDeque::new();
        while let Some((id, idx)) = self.plants.pop_front() {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            let Some(chunk) = job.chunks.get_mut(idx as usize) else {
                continue;
            };
            if !matches!(chunk.state, ChunkState::Verified { .. }) {
                continue;
            }
            let used: HashSet<PeerId> = chunk.used_peers().copied().collect();
            let Some(choice) = candidates.iter_mut().find(|c| {
                c.standing == Standing::Trusted
                    && c.peer != self.local
                    && c.room > 0
                    && c.memory >= job.spec.limits.memory_bytes
                    && !used.contains(&c.peer)
            }) else {
                kept.push_back((id, idx));
                continue;
            };
            let attempt = chunk.next_attempt();
            chunk.replicas.push(Replica {
                attempt,
                peer: choice.peer,
                state: ReplicaState::Offered,
                check: true,
            });
            choice.room -= 1;
            *self.inflight.entry(choice.peer).or_default() += 1;
            job.trust.plants += 1;
            offers
                .entry((id, choice.peer))
                .or_default()
                .push((idx, attempt));
        }
        self.plants = kept;
    }

    /// Runs a chunk on this node's own sandbox: a witness for peers on probation, or
    /// (`check`) a spot check of a result taken on one peer's word. Returns false
    /// when it cannot start now.
    fn start_local_run(&mut self, id: JobId, idx: u32, check: bool) -> bool {
        if self.local_runs.len() >= LOCAL_RUNS {
            return false;
        }
        let local = self.local;
        let Some(job) = self.jobs.get_mut(&id) else {
            return false;
        };
        let (module, limits) = (job.module, job.spec.limits);
        let Some(chunk) = job.chunks.get_mut(idx as usize) else {
            return false;
        };
        if chunk.used_peers().any(|p| *p == local) {
            return false;
        }
        let attempt = chunk.next_attempt();
        chunk.replicas.push(Replica {
            attempt,
            peer: local,
            state: ReplicaState::Issued(now_ms()),
            check,
        });
        if check {
            job.trust.spot_checks += 1;
        } else {
            job.trust.witness_runs += 1;
        }
        let input = chunk.input.clone();
        self.local_runs.insert((id, idx, attempt), Instant::now());
        let (blobs, sandbox, net, tx) = (
            self.ctx.blobs.clone(),
            self.ctx.sandbox.clone(),
            self.ctx.net.clone(),
            self.tx.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let result =
                run_locally(&blobs, &sandbox, module, &input, &limits).map(|(outcome, output)| {
                    let output_hash = BlobHash::of(&output);
                    let signature = net.sign(&result_signed_bytes(
                        &id,
                        idx,
                        attempt,
                        &outcome,
                        &output_hash,
                    ));
                    ChunkResult {
                        job_id: id,
                        chunk: idx,
                        attempt,
                        outcome,
                        output_hash,
                        output: (!output.is_empty()).then_some(Payload::Inline(output)),
                        fuel_used: 0,
                        exec_micros: 0,
                        signature,
                    }
                });
            let _ = tx.blocking_send(Msg::LocalRun(id, idx, attempt, result));
        });
        true
    }

    /// A local run ended: its result is recorded like any peer's.
    fn on_local_run(
        &mut self,
        id: JobId,
        idx: u32,
        attempt: u32,
        result: Result<ChunkResult, String>,
    ) {
        self.local_runs.remove(&(id, idx, attempt));
        match result {
            Ok(result) => {
                self.on_results(self.local, vec![result]);
            }
            Err(e) => {
                tracing::warn!(job = %id, chunk = idx, "this node could not run a chunk itself: {e}");
                let local = self.local;
                if let Some(r) = self
                    .jobs
                    .get_mut(&id)
                    .and_then(|j| j.chunks.get_mut(idx as usize))
                    .and_then(|c| {
                        c.replicas
                            .iter_mut()
                            .find(|r| r.attempt == attempt && r.peer == local)
                    })
                {
                    r.state = ReplicaState::Lost;
                    let row = replica_row(idx, r);
                    self.persist(&[Write::Replica(id, row)]);
                }
            }
        }
        self.attention.entry(id).or_default().insert(idx);
        self.dirty.insert(id);
        self.kick = true;
    }

    /// The assignments for (chunk, attempt) pairs of a job.
    fn assignments(&self, id: JobId, items: &[(u32, u32)]) -> Vec<Assignment> {
        let Some(job) = self.jobs.get(&id) else {
            return Vec::new();
        };
        let deadline = job.spec.soft_timeout.as_millis() as u64;
        items
            .iter()
            .filter_map(|&(chunk, attempt)| {
                let c = job.chunks.get(chunk as usize)?;
                Some(Assignment {
                    chunk,
                    attempt,
                    module: job.module,
                    input: c.input.clone(),
                    limits: job.spec.limits,
                    soft_deadline_ms: deadline,
                })
            })
            .collect()
    }

    fn send_offer(&self, id: JobId, peer: PeerId, items: Vec<(u32, u32)>) {
        let assignments = self.assignments(id, &items);
        let (net, tx) = (self.ctx.net.clone(), self.tx.clone());
        tokio::spawn(async move {
            let reply = net
                .send_task(
                    peer,
                    TaskRequest::Offer {
                        job_id: id,
                        assignments,
                    },
                )
                .await;
            let _ = tx
                .send(Msg::OfferReply {
                    job: id,
                    peer,
                    offered: items,
                    reply,
                })
                .await;
        });
    }

    fn status(&self, job: &Job) -> JobStatus {
        let standing = |p: &PeerId| standing_of(&self.reputation, &self.ctx.trust, &self.local, p);
        let mut tallies: BTreeMap<PeerId, PeerTally> = BTreeMap::new();
        let (mut verified, mut failed, mut issued, mut results, mut disagreements, mut reissues) =
            (0, 0, 0, 0, 0, 0);
        let mut failures = Vec::new();
        for (i, c) in job.chunks.iter().enumerate() {
            let verified_key = match &c.state {
                ChunkState::Verified { key, .. } => {
                    verified += 1;
                    Some(*key)
                }
                ChunkState::Failed(_) => {
                    failed += 1;
                    None
                }
                ChunkState::Pending => None,
            };
            if c.groups(&standing).len() > 1 {
                disagreements += 1;
            }
            for r in &c.replicas {
                let tally = tallies.entry(r.peer).or_insert_with(|| PeerTally {
                    peer: r.peer.to_string(),
                    agreed: 0,
                    disagreed: 0,
                    in_flight: 0,
                    excluded: self.reputation.excluded(&r.peer),
                    standing: Some(standing(&r.peer)),
                });
                match &r.state {
                    ReplicaState::Offered => {}
                    ReplicaState::Issued(_) => {
                        issued += 1;
                        tally.in_flight += 1;
                    }
                    ReplicaState::Returned { key, .. } => {
                        issued += 1;
                        results += 1;
                        match verified_key {
                            Some(v) if v == *key => tally.agreed += 1,
                            Some(_) => tally.disagreed += 1,
                            None => {}
                        }
                    }
                    ReplicaState::TimedOut(_) | ReplicaState::Lost => {
                        issued += 1;
                        reissues += 1;
                    }
                }
            }
            let failure = match &c.state {
                ChunkState::Failed(reason) => Some(reason.clone()),
                ChunkState::Verified { outcome, .. } if *outcome != WireOutcome::Ok => {
                    Some(format!("verified failure: {}", describe(outcome)))
                }
                _ => None,
            };
            if let Some(reason) = failure
                && failures.len() < MAX_FAILURES_SHOWN
            {
                failures.push(ChunkFailure {
                    chunk: i as u32,
                    reason,
                    evidence: c
                        .replicas
                        .iter()
                        .filter_map(|r| match &r.state {
                            ReplicaState::Returned {
                                outcome, output, ..
                            } => Some((
                                r.peer.to_string(),
                                format!("{} (output {:?})", describe(outcome), output),
                            )),
                            _ => None,
                        })
                        .collect(),
                });
            }
        }
        let end = job.finished_ms.unwrap_or_else(now_ms);
        JobStatus {
            id: job_id_hex(&job.id),
            name: job.name.clone(),
            state: job.state,
            chunks_total: job.chunks.len() as u32,
            chunks_verified: verified,
            chunks_failed: failed,
            replicas_issued: issued,
            results,
            disagreements,
            reissues,
            why: job.why.clone(),
            error: job.error.clone(),
            result: job.result.map(|h| h.to_hex()),
            elapsed_s: end.saturating_sub(job.created_ms) as f64 / 1000.0,
            peers: tallies.into_values().collect(),
            failures,
            trust: job.trust,
            replication: job.spec.replication,
        }
    }

    /// Every chunk whose peers disagreed (or that failed), with each answer and its
    /// signature, read from the database (replica rows keep them).
    fn evidence(&self, id: JobId) -> Option<Vec<ChunkEvidence>> {
        let job = self.jobs.get(&id)?;
        let standing = |p: &PeerId| standing_of(&self.reputation, &self.ctx.trust, &self.local, p);
        let chunks: BTreeSet<u32> = job
            .chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                matches!(c.state, ChunkState::Failed(_))
                    || c.replicas.iter().any(|r| {
                        matches!(&r.state, ReplicaState::Returned { key, .. }
                            if matches!(&c.state, ChunkState::Verified { key: v, .. } if v != key))
                    })
                    || c.groups(&standing).len() > 1
            })
            .map(|(i, _)| i as u32)
            .take(MAX_EVIDENCE)
            .collect();
        let rows = match self.ctx.db.replicas_of_chunks(id, &chunks) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "cannot read replicas for evidence");
                Vec::new()
            }
        };
        let mut out: BTreeMap<u32, ChunkEvidence> = chunks
            .iter()
            .map(|&i| {
                let c = &job.chunks[i as usize];
                let (state, accepted) = match &c.state {
                    ChunkState::Verified { output, .. } => ("verified", Some(output.to_hex())),
                    ChunkState::Failed(_) => ("failed", None),
                    ChunkState::Pending => ("pending", None),
                };
                (
                    i,
                    ChunkEvidence {
                        chunk: i,
                        state: state.into(),
                        accepted,
                        replicas: Vec::new(),
                    },
                )
            })
            .collect();
        for row in rows {
            let Some(ev) = out.get_mut(&row.chunk) else {
                continue;
            };
            let outcome = decode_outcome(row.outcome.as_deref());
            let signature_valid = match (&outcome, row.output, &row.signature, row.peer.parse()) {
                (Some(o), Some(h), Some(sig), Ok(peer)) => verify_result_signature(
                    &peer,
                    &result_signed_bytes(&id, row.chunk, row.attempt, o, &h),
                    sig,
                ),
                _ => false,
            };
            let verified = match &job.chunks[row.chunk as usize].state {
                ChunkState::Verified { key, .. } => Some(*key),
                _ => None,
            };
            ev.replicas.push(ReplicaEvidence {
                peer: row.peer,
                state: row.state,
                agrees: match (&outcome, row.output, verified) {
                    (Some(o), Some(h), Some(v)) => Some(agreement_key(o, &h) == v),
                    _ => None,
                },
                outcome: outcome.as_ref().map(describe),
                output: row.output.map(|h| h.to_hex()),
                signature: row
                    .signature
                    .as_ref()
                    .map(|s| s.iter().map(|b| format!("{b:02x}")).collect()),
                signature_valid,
            });
        }
        Some(out.into_values().collect())
    }

    /// Sends fresh statuses to watchers of jobs that changed, at most every
    /// [`PUBLISH_EVERY`] per job (at once when the job ends).
    fn publish(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let now = Instant::now();
        let dirty: Vec<JobId> = self.dirty.iter().copied().collect();
        for id in dirty {
            let Some(job) = self.jobs.get(&id) else {
                self.dirty.remove(&id);
                continue;
            };
            let recent = self
                .published
                .get(&id)
                .is_some_and(|at| now.duration_since(*at) < PUBLISH_EVERY);
            if recent && !job.state.is_final() {
                continue;
            }
            self.dirty.remove(&id);
            self.published.insert(id, now);
            if let Some(tx) = self.watchers.get(&id) {
                if tx.receiver_count() == 0 {
                    self.watchers.remove(&id);
                    continue;
                }
                let status = self.status(job);
                tx.send_replace(status);
            }
        }
    }
}

/// Runs merge over the verified outputs (in chunk order) and stores the result.
/// Without a merge export the job's result is its chunk outputs (`Ok(None)`).
fn merge(
    blobs: &crate::store::BlobStore,
    db: &crate::store::Db,
    sandbox: &crate::sandbox::Sandbox,
    module_hash: BlobHash,
    job: JobId,
) -> Result<Option<BlobHash>, String> {
    let bytes = blobs
        .get(&module_hash)
        .map_err(|e| e.to_string())?
        .ok_or("the module is no longer in the blob store")?;
    let module = sandbox.load(&bytes).map_err(|e| e.to_string())?;
    if !module.has_merge {
        return Ok(None);
    }
    let data: Vec<Vec<u8>> = db
        .chunk_outputs(job)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|output| read_output(blobs, output))
        .collect::<Result<_, String>>()?;
    let exec = sandbox.merge(&module, &data, &crate::sandbox::Limits::SUBMITTER);
    match exec.outcome {
        crate::sandbox::Outcome::Ok(result) => {
            blobs.put(&result).map(Some).map_err(|e| e.to_string())
        }
        other => Err(other.to_string()),
    }
}

/// Runs one chunk on this node's sandbox (a witness or a spot check): the outcome
/// and output as a worker would report them.
fn run_locally(
    blobs: &crate::store::BlobStore,
    sandbox: &crate::sandbox::Sandbox,
    module_hash: BlobHash,
    input: &Payload,
    limits: &crate::sandbox::Limits,
) -> Result<(WireOutcome, Vec<u8>), String> {
    let bytes = blobs
        .get(&module_hash)
        .map_err(|e| e.to_string())?
        .ok_or("the module is no longer in the blob store")?;
    let module = sandbox.load(&bytes).map_err(|e| e.to_string())?;
    let input = match input {
        Payload::Inline(bytes) => bytes.clone(),
        Payload::Blob { hash, .. } => blobs
            .get(hash)
            .map_err(|e| e.to_string())?
            .ok_or("the chunk's input is no longer in the blob store")?,
    };
    let exec = sandbox.run_chunk(&module, &input, limits);
    crate::worker::wire_outcome(exec.outcome).ok_or_else(|| "the run was cancelled".to_string())
}

/// A verified output's bytes: from the database when kept there, else its blob.
pub(super) fn read_output(
    blobs: &crate::store::BlobStore,
    (hash, data): (Option<BlobHash>, Option<Vec<u8>>),
) -> Result<Vec<u8>, String> {
    match (data, hash) {
        (Some(bytes), _) => Ok(bytes),
        (None, Some(h)) if h == BlobHash::of(b"") => Ok(Vec::new()),
        (None, Some(h)) => blobs
            .get(&h)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("verified output {h:?} is missing from the blob store")),
        (None, None) => Err("a chunk has no verified output".into()),
    }
}
