//! The scheduler actor: the message loop over the pure cores.
//!
//! It receives a message (a submission, a result batch, an offer's answer, a merge
//! or local run that ended, a question), does the I/O the decision needs first (blob
//! files, the capacity view), calls a pure core ([`verify`](super::verify),
//! [`dispatch`](super::dispatch), [`trust_ops`](super::trust_ops)) on a [`Txn`] over
//! its [`State`], writes the staged [`Write`]s in one transaction through
//! [`Db::run`](crate::store::Db::run) (off the async threads), and only then applies
//! the changes to memory and acts on them (acks, offers, runs, merges). A write
//! that fails changes nothing in memory and is reported to whoever asked: a result
//! batch is not acknowledged (the worker retries), a cancel answers an error.
//!
//! Only unfinished jobs live in memory; a job leaves when it ends (after its final
//! status is published), and finished jobs are read back from the database when
//! asked about. See the module docs of [`scheduler`](super) for the message flow.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::job::{Job, JobState};
use super::placement::Candidate;
use super::reputation::Reputation;
use super::staged::{Changes, Event, State, Txn};
use super::trust::Standing;
use super::{
    ChunkEvidence, JobStatus, Msg, SchedulerContext, TrustCounts, dispatch, local, report, rows,
    trust_ops, verify,
};
use crate::net::protocol::{
    Assignment, PROTOCOL_VERSION, RejectReason, ResultAck, TaskReply, TaskRequest,
    result_signed_bytes,
};
use crate::store::db::{DbError, Write};
use crate::types::{BlobHash, ChunkResult, JobId, Payload, QUEUE_FACTOR, now_ms};

/// How often the actor re-dispatches even when nothing happened (timeouts, peers
/// that left or joined).
const TICK: Duration = Duration::from_millis(250);
/// A peer that refused or failed an offer is skipped for this long.
const PEER_BACKOFF: Duration = Duration::from_secs(1);
/// Progress is published to watchers at most this often per job.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// Finished jobs whose trust counters are remembered (they are not stored).
const FINISHED_TRUST: usize = 10_000;

pub(super) struct Actor {
    ctx: SchedulerContext,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    shutdown: CancellationToken,
    state: State,
    rng: StdRng,
    watchers: HashMap<JobId, watch::Sender<JobStatus>>,
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
    /// Peer -> (network group, discovery source), from the last full dispatch's view.
    groups: HashMap<PeerId, (Option<String>, Option<String>)>,
    /// The capacity view as of the last full dispatch.
    view: std::sync::Arc<Vec<(PeerId, crate::net::PeerInfo)>>,
    /// Peers in that view with an advert or a connection (and this node).
    alive: HashSet<PeerId>,
    /// Jobs not in memory, by state (for the metrics gauges).
    finished: HashMap<JobState, i64>,
    /// Trust counters of finished jobs (they live in memory only), newest last.
    finished_trust: (HashMap<JobId, TrustCounts>, std::collections::VecDeque<JobId>),
    /// Peers whose re-verification waits for finished jobs to be read back.
    reverify_later: HashSet<PeerId>,
}

impl Actor {
    /// An actor with nothing loaded yet ([`Actor::run`] loads the unfinished jobs).
    pub(super) fn new(
        ctx: SchedulerContext,
        tx: mpsc::Sender<Msg>,
        rx: mpsc::Receiver<Msg>,
        shutdown: CancellationToken,
    ) -> Self {
        let rng = match ctx.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => rand::make_rng(),
        };
        let local = ctx.net.local_peer_id();
        let state = State::new(Reputation::default(), ctx.trust, local);
        Self {
            ctx,
            tx,
            rx,
            shutdown,
            state,
            rng,
            watchers: HashMap::new(),
            backoff: HashMap::new(),
            fetching: HashSet::new(),
            dirty: HashSet::new(),
            published: HashMap::new(),
            attention: HashMap::new(),
            kick: true,
            full: true,
            groups: HashMap::new(),
            view: Default::default(),
            alive: HashSet::new(),
            finished: HashMap::new(),
            finished_trust: Default::default(),
            reverify_later: HashSet::new(),
        }
    }

    /// Loads reputation, the unfinished jobs and the re-verification index.
    async fn load(&mut self) {
        let loaded = self
            .ctx
            .db
            .run(|db| {
                Ok((
                    db.reputations()?,
                    rows::read_jobs(db, &["running", "merging"])?,
                    db.job_counts()?,
                    db.solo_chunks()?,
                ))
            })
            .await;
        let (reputations, jobs, counts, solo) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(error = %e, "cannot load the scheduler's state");
                return;
            }
        };
        self.state.reputation =
            Reputation::load(reputations).with_metrics(self.ctx.metrics.clone());
        for (state, n) in counts {
            if let Some(state) = JobState::parse(&state) {
                *self.finished.entry(state).or_default() += n as i64;
            }
        }
        for job in jobs {
            *self.finished.entry(job.state).or_default() -= 1;
            self.dirty.insert(job.id);
            self.state.jobs.insert(job.id, job);
        }
        for (id, idx, peer) in solo {
            if let Ok(peer) = peer.parse() {
                self.state.remember_solo(peer, id, idx);
            }
        }
        if !self.state.jobs.is_empty() {
            tracing::info!(jobs = self.state.jobs.len(), "resuming unfinished jobs");
        }
    }

    pub(super) async fn run(mut self) {
        self.load().await;
        // Jobs interrupted while merging merge again.
        let merging: Vec<JobId> = self
            .state
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
                    Some(msg) => self.on_message(msg).await,
                    None => break,
                },
                _ = tick.tick() => {
                    self.kick = true;
                    self.full = true;
                    self.sweep();
                    self.sample();
                    if !self.reverify_later.is_empty() {
                        self.reverify_pending().await;
                    }
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

    /// Writes `writes` in one transaction, on a blocking thread.
    async fn persist(&self, writes: Vec<Write>) -> Result<(), DbError> {
        if writes.is_empty() {
            return Ok(());
        }
        // A batch of results updates the same peers' reputation many times: only the
        // last row of each peer needs writing.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, w) in writes.iter().enumerate() {
            if let Write::Reputation(row) = w {
                last.insert(row.peer.as_str(), i);
            }
        }
        let keep: Vec<bool> = writes
            .iter()
            .enumerate()
            .map(|(i, w)| match w {
                Write::Reputation(row) => last.get(row.peer.as_str()) == Some(&i),
                _ => true,
            })
            .collect();
        let writes: Vec<Write> = writes
            .into_iter()
            .zip(keep)
            .filter_map(|(w, keep)| keep.then_some(w))
            .collect();
        let result = self.ctx.db.run(move |db| db.apply(&writes)).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "cannot write scheduler state; nothing was changed");
        }
        result
    }

    /// Persists staged changes, then applies them. On failure memory is unchanged.
    async fn persist_then_apply(&mut self, mut ch: Changes) -> Result<(), DbError> {
        self.persist(std::mem::take(&mut ch.writes)).await?;
        self.apply(ch);
        Ok(())
    }

    /// Applies committed changes and acts on them.
    fn apply(&mut self, mut ch: Changes) {
        self.state.apply(&mut ch);
        let m = &self.ctx.metrics;
        for event in ch.events.drain(..) {
            match event {
                Event::Issued => m.replicas_issued.inc(),
                Event::Reissue(why) => m.reissues.with_label_values(&[why]).inc(),
                Event::Verified(waited) => m.submit_to_verified.observe(waited),
            }
        }
        for (id, idx) in ch.attention.drain(..) {
            self.attention.entry(id).or_default().insert(idx);
        }
        self.dirty.extend(ch.dirty.drain());
        for id in ch.merges.drain(..) {
            self.start_merge(id);
        }
        for (id, idx, attempt) in ch.local_runs.drain(..) {
            self.spawn_local_run(id, idx, attempt);
        }
        self.reverify_later.extend(ch.reverify_later.drain(..));
        self.kick |= ch.kick;
    }

    async fn on_message(&mut self, msg: Msg) {
        match msg {
            Msg::Insert(job, reply) => {
                let result = self
                    .persist(vec![rows::insert_job(&job)])
                    .await
                    .map_err(|e| e.to_string());
                if result.is_ok() {
                    tracing::info!(job = %job.id, name = %job.name, chunks = job.chunks.len(), "job submitted");
                    self.dirty.insert(job.id);
                    self.state.jobs.insert(job.id, *job);
                    self.kick = true;
                    self.full = true;
                }
                let _ = reply.send(result);
            }
            Msg::Cancel(id, reply) => {
                let _ = reply.send(self.cancel(id).await);
            }
            Msg::Results(peer, batch, reply) => {
                let ack = self.on_results(peer, batch.results).await;
                let _ = reply.send(ack);
                self.kick = true;
            }
            Msg::OfferReply {
                job,
                peer,
                offered,
                reply,
            } => {
                self.on_offer_reply(job, peer, offered, reply).await;
                self.kick = true;
            }
            Msg::Merged(id, result) => self.on_merged(id, result).await,
            Msg::LocalRun(id, idx, attempt, result) => {
                self.on_local_run(id, idx, attempt, result).await;
            }
            Msg::Status(id, reply) => {
                let statuses = self.statuses(id).await;
                let _ = reply.send(statuses);
            }
            Msg::Subscribe(id, reply) => {
                let rx = match self.state.jobs.get(&id) {
                    Some(job) => {
                        let status = report::status(job, &|p| self.state.standing(p));
                        Some(
                            self.watchers
                                .entry(id)
                                .or_insert_with(|| watch::channel(status).0)
                                .subscribe(),
                        )
                    }
                    // A finished job: its final status, once.
                    None => self
                        .read_finished(id)
                        .await
                        .map(|job| watch::channel(self.status_of(&job)).1),
                };
                let _ = reply.send(rx);
            }
            Msg::Evidence(id, reply) => {
                let _ = reply.send(self.evidence(id).await);
            }
        }
    }

    /// A finished job read back from the database (with the trust counters this
    /// node remembers for it).
    async fn read_finished(&self, id: JobId) -> Option<Job> {
        let read = self
            .ctx
            .db
            .run(move |db| match db.job(id)? {
                Some(row) => rows::read_job(db, row).map(Some),
                None => Ok(None),
            })
            .await;
        match read {
            Ok(Some(mut job)) => {
                job.trust = self
                    .finished_trust
                    .0
                    .get(&id)
                    .copied()
                    .unwrap_or_default();
                Some(job)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(job = %id, error = %e, "cannot read a finished job");
                None
            }
        }
    }

    fn status_of(&self, job: &Job) -> JobStatus {
        report::status(job, &|p| self.state.standing(p))
    }

    /// Status of one job, or of all (finished ones read from the database).
    async fn statuses(&self, id: Option<JobId>) -> Vec<JobStatus> {
        if let Some(id) = id {
            return match self.state.jobs.get(&id) {
                Some(job) => vec![self.status_of(job)],
                None => self
                    .read_finished(id)
                    .await
                    .map(|job| self.status_of(&job))
                    .into_iter()
                    .collect(),
            };
        }
        let read = self
            .ctx
            .db
            .run(|db| rows::read_jobs(db, &["done", "failed", "cancelled"]))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read finished jobs");
                Vec::new()
            });
        let mut all: Vec<(JobId, JobStatus)> = self
            .state
            .jobs
            .values()
            .map(|j| (j.id, self.status_of(j)))
            .collect();
        for mut job in read {
            if self.state.jobs.contains_key(&job.id) {
                continue;
            }
            job.trust = self
                .finished_trust
                .0
                .get(&job.id)
                .copied()
                .unwrap_or_default();
            all.push((job.id, self.status_of(&job)));
        }
        all.sort_by_key(|(id, _)| *id);
        all.into_iter().map(|(_, s)| s).collect()
    }

    /// Every disagreement of a job, with each answer read from the database.
    async fn evidence(&self, id: JobId) -> Option<Vec<ChunkEvidence>> {
        let loaded;
        let job = match self.state.jobs.get(&id) {
            Some(job) => job,
            None => {
                loaded = self.read_finished(id).await?;
                &loaded
            }
        };
        let chunks = report::evidence_chunks(job, &|p| self.state.standing(p));
        let wanted = chunks.clone();
        let rows = self
            .ctx
            .db
            .run(move |db| db.replicas_of_chunks(id, &wanted))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read replicas for evidence");
                Vec::new()
            });
        Some(report::evidence(job, &chunks, rows))
    }

    /// Cancels a job durably: `Ok(None)` for an unknown job, `Err` when the
    /// cancellation could not be stored (nothing changed).
    async fn cancel(&mut self, id: JobId) -> Result<Option<()>, String> {
        let Some(job) = self.state.jobs.get(&id) else {
            return match self.ctx.db.run(move |db| db.job(id)).await {
                Ok(row) => Ok(row.map(|_| ())),
                Err(e) => Err(e.to_string()),
            };
        };
        if job.state.is_final() {
            return Ok(Some(()));
        }
        let holders: HashSet<PeerId> = job
            .chunks
            .iter()
            .flat_map(|c| c.replicas.iter())
            .filter(|r| r.state.is_live())
            .map(|r| r.peer)
            .collect();
        let mut txn = Txn::new(&self.state);
        if let Some(mut head) = txn.head(id) {
            head.state = JobState::Cancelled;
            head.finished_ms = Some(now_ms());
            head.result = None;
            head.error = None;
            txn.ch.writes.push(head.write(id));
            txn.put_head(id, head);
        }
        let ch = txn.finish();
        self.persist_then_apply(ch)
            .await
            .map_err(|e| format!("the cancellation could not be stored: {e}"))?;
        tracing::info!(job = %id, "job cancelled");
        for peer in holders {
            let net = self.ctx.net.clone();
            tokio::spawn(async move {
                let cancel = TaskRequest::Cancel {
                    job_id: id,
                    chunks: Vec::new(),
                };
                let _ = net.send_task(peer, cancel).await;
            });
        }
        Ok(Some(()))
    }

    async fn on_offer_reply(
        &mut self,
        id: JobId,
        peer: PeerId,
        offered: Vec<(u32, u32)>,
        reply: Result<TaskReply, crate::net::RequestError>,
    ) {
        if !self.state.jobs.contains_key(&id) {
            return;
        }
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
        let mut txn = Txn::new(&self.state);
        dispatch::offer_reply(&mut txn, id, peer, &offered, &accepted, now_ms());
        let ch = txn.finish();
        if self.persist_then_apply(ch).await.is_err() {
            // The refused replicas need no write: forget them. The accepted ones stay
            // offered; the worker's result is still taken when it comes.
            let refused: Vec<(u32, u32)> = offered
                .into_iter()
                .filter(|o| !accepted.contains(o))
                .collect();
            let mut txn = Txn::new(&self.state);
            dispatch::offer_reply(&mut txn, id, peer, &refused, &HashSet::new(), now_ms());
            self.apply(txn.finish());
        }
    }

    /// Records results; returns the ack naming those stored (or not ours to keep).
    /// Nothing is acknowledged unless its write committed.
    async fn on_results(&mut self, peer: PeerId, results: Vec<ChunkResult>) -> ResultAck {
        // The I/O first, off the runtime: large outputs into the blob store, and which
        // fetched outputs are there.
        let large: Vec<usize> = {
            let txn = Txn::new(&self.state);
            let wanted = verify::large_outputs(&txn, peer, &results);
            results
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    matches!(&r.output, Some(Payload::Inline(b))
                        if wanted.iter().any(|w| std::ptr::eq(w.as_ptr(), b.as_ptr())))
                })
                .map(|(i, _)| i)
                .collect()
        };
        let blobs = self.ctx.blobs.clone();
        let io = tokio::task::spawn_blocking(move || {
            let mut present = HashSet::new();
            for i in large {
                if let Some(Payload::Inline(bytes)) = &results[i].output
                    && blobs.put(bytes).is_ok()
                {
                    present.insert(results[i].output_hash);
                }
            }
            for r in &results {
                if let Some(Payload::Blob { hash, .. }) = &r.output
                    && blobs.contains(hash)
                {
                    present.insert(*hash);
                }
            }
            (results, present)
        })
        .await;
        let Ok((results, present)) = io else {
            return ResultAck { stored: Vec::new() };
        };
        let mut txn = Txn::new(&self.state);
        let intake = verify::intake(&mut txn, peer, results, &present, &mut self.rng, now_ms());
        let ch = txn.finish();
        for hash in &intake.fetch {
            if self.fetching.insert(*hash) {
                let (net, blobs, hash) = (self.ctx.net.clone(), self.ctx.blobs.clone(), *hash);
                tokio::spawn(async move {
                    if let Err(e) = crate::net::fetch::fetch_blob(&net, &blobs, hash, &[peer]).await
                    {
                        tracing::warn!(%peer, "cannot fetch a result output: {e}");
                    }
                });
            }
        }
        if self.persist_then_apply(ch).await.is_err() {
            // Nothing was stored: acknowledge nothing, the worker will retry.
            return ResultAck { stored: Vec::new() };
        }
        for hash in &intake.fetched {
            self.fetching.remove(hash);
        }
        ResultAck {
            stored: intake.stored,
        }
    }

    /// Re-verifications that wait for finished jobs: reads them back, then re-opens
    /// the chunks the peers found wrong vouched for.
    async fn reverify_pending(&mut self) {
        let peers: Vec<PeerId> = self.reverify_later.drain().collect();
        let missing: BTreeSet<JobId> = peers
            .iter()
            .filter_map(|p| self.state.solo_index.get(p))
            .flatten()
            .map(|(id, _)| *id)
            .filter(|id| !self.state.jobs.contains_key(id))
            .collect();
        for id in missing {
            match self.read_finished(id).await {
                Some(job) => {
                    *self.finished.entry(job.state).or_default() -= 1;
                    self.dirty.insert(id);
                    self.state.jobs.insert(id, job);
                }
                None => self.state.solo_index.values_mut().for_each(|l| {
                    l.retain(|(j, _)| *j != id);
                }),
            }
        }
        let mut txn = Txn::new(&self.state);
        for peer in peers {
            trust_ops::reverify(&mut txn, peer);
        }
        let ch = txn.finish();
        if self.persist_then_apply(ch).await.is_err() {
            tracing::warn!("a re-verification could not be stored; it is retried");
        }
    }

    /// Reads the capacity view (on a full dispatch) and builds the candidates.
    async fn candidates(&mut self, full: bool) -> (Vec<Candidate>, usize, usize) {
        let placement = self.ctx.placement;
        let local = self.state.local;
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
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut excluded = 0;
        let inflight = |peer: &PeerId| i64::from(self.state.inflight.get(peer).copied().unwrap_or(0));
        for (peer, p) in self.view.iter() {
            let (Some(advert), peer) = (&p.advert, *peer) else {
                continue;
            };
            if advert.version != PROTOCOL_VERSION || self.backoff.contains_key(&peer) {
                continue;
            }
            if self.state.reputation.excluded(&peer) {
                excluded += 1;
                continue;
            }
            candidates.push(Candidate {
                peer,
                memory: advert.memory_limit,
                room: i64::from(advert.slots_total * QUEUE_FACTOR) - inflight(&peer),
                score: self.state.reputation.score(&peer),
                standing: self.state.standing(&peer),
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
            candidates.push(Candidate {
                peer: local,
                memory,
                room: i64::from(slots * QUEUE_FACTOR) - inflight(&local),
                score: 1.0,
                standing: Standing::Trusted,
                group: None,
                source: None,
            });
        }
        let known = self
            .view
            .iter()
            .filter(|(_, p)| p.foreign_version.is_none())
            .count();
        (candidates, known, excluded)
    }

    /// Plans a dispatch ([`dispatch::plan`]), stores it, applies it, then sends the
    /// offers.
    async fn dispatch(&mut self, full: bool) {
        if !self
            .state
            .jobs
            .values()
            .any(|j| j.state == JobState::Running)
        {
            return;
        }
        let now = Instant::now();
        self.backoff.retain(|_, until| *until > now);
        if full {
            // Spot checks of verified chunks are not reaped with the pending ones.
            let jobs = &self.state.jobs;
            self.state.local_runs.retain(|(id, _, _), started| {
                jobs.get(id)
                    .is_some_and(|j| started.elapsed() <= j.spec.soft_timeout)
            });
            self.state.inflight = dispatch::recount(&self.state);
        }
        let (mut candidates, known, excluded) = self.candidates(full).await;
        let alive = std::mem::take(&mut self.alive);
        let groups = std::mem::take(&mut self.groups);
        let inputs = dispatch::Inputs {
            full,
            now_ms: now_ms(),
            alive: &alive,
            groups: &groups,
            local_slots: self.ctx.local_worker_slots(),
            known,
            excluded,
        };
        let attention = std::mem::take(&mut self.attention);
        let mut txn = Txn::new(&self.state);
        let plan = dispatch::plan(&mut txn, &mut candidates, &inputs, attention, &mut self.rng);
        let ch = txn.finish();
        (self.alive, self.groups) = (alive, groups);
        for (id, mut chunks) in plan.attention {
            self.attention.entry(id).or_default().append(&mut chunks);
        }
        if self.persist_then_apply(ch).await.is_err() {
            // Nothing was offered; the next tick plans again.
            return;
        }
        let local = self.state.local;
        for ((id, peer), items) in plan.offers {
            self.dirty.insert(id);
            if peer == local
                && let Some(worker) = self.ctx.local_worker.clone()
            {
                let reply = worker.offer(local, id, self.assignments(id, &items));
                Box::pin(self.on_offer_reply(id, peer, items, Ok(reply))).await;
                continue;
            }
            self.send_offer(id, peer, items);
        }
    }

    /// Runs merge on a blocking thread; the result comes back as `Msg::Merged`.
    fn start_merge(&self, id: JobId) {
        let Some(job) = self.state.jobs.get(&id) else {
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
            let result = local::merge(&blobs, &db, &sandbox, module, id);
            let _ = tx.blocking_send(Msg::Merged(id, result));
        });
    }

    async fn on_merged(&mut self, id: JobId, result: Result<Option<BlobHash>, String>) {
        let mut txn = Txn::new(&self.state);
        let Some(mut head) = txn.head(id) else {
            return;
        };
        if head.state != JobState::Merging {
            return;
        }
        head.finished_ms = Some(now_ms());
        match &result {
            Ok(hash) => {
                head.state = JobState::Done;
                head.result = *hash;
                tracing::info!(job = %id, "job done");
            }
            Err(e) => {
                head.state = JobState::Failed;
                head.error = Some(format!("merge failed: {e}"));
                tracing::warn!(job = %id, "merge failed: {e}");
            }
        }
        txn.ch.writes.push(head.write(id));
        txn.put_head(id, head);
        let ch = txn.finish();
        if self.persist_then_apply(ch).await.is_err() {
            // Still merging in memory and on disk: store the outcome again shortly.
            let tx = self.tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(TICK).await;
                let _ = tx.send(Msg::Merged(id, result)).await;
            });
        }
    }

    /// Starts a run staged by a core (its replica is committed) on a blocking thread.
    fn spawn_local_run(&mut self, id: JobId, idx: u32, attempt: u32) {
        let Some(job) = self.state.jobs.get(&id) else {
            return;
        };
        let Some(chunk) = job.chunks.get(idx as usize) else {
            return;
        };
        let (module, limits, input) = (job.module, job.spec.limits, chunk.input.clone());
        self.state
            .local_runs
            .insert((id, idx, attempt), Instant::now());
        let (blobs, sandbox, net, tx) = (
            self.ctx.blobs.clone(),
            self.ctx.sandbox.clone(),
            self.ctx.net.clone(),
            self.tx.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let result = local::run_locally(&blobs, &sandbox, module, &input, &limits).map(
                |(outcome, output)| {
                    let output_hash = BlobHash::of(&output);
                    let signed = result_signed_bytes(&id, idx, attempt, &outcome, &output_hash);
                    ChunkResult {
                        job_id: id,
                        chunk: idx,
                        attempt,
                        outcome,
                        output_hash,
                        output: (!output.is_empty()).then_some(Payload::Inline(output)),
                        fuel_used: 0,
                        exec_micros: 0,
                        signature: net.sign(&signed),
                    }
                },
            );
            let _ = tx.blocking_send(Msg::LocalRun(id, idx, attempt, result));
        });
    }

    /// A local run ended: its result is recorded like any peer's.
    async fn on_local_run(
        &mut self,
        id: JobId,
        idx: u32,
        attempt: u32,
        result: Result<ChunkResult, String>,
    ) {
        self.state.local_runs.remove(&(id, idx, attempt));
        match result {
            Ok(result) => {
                Box::pin(self.on_results(self.state.local, vec![result])).await;
            }
            Err(e) => {
                tracing::warn!(job = %id, chunk = idx, "this node could not run a chunk itself: {e}");
                let local = self.state.local;
                let mut txn = Txn::new(&self.state);
                if let Some(mut chunk) = txn.take_chunk(id, idx)
                    && let Some(r) = chunk
                        .replicas
                        .iter_mut()
                        .find(|r| r.attempt == attempt && r.peer == local)
                {
                    r.state = super::job::ReplicaState::Lost;
                    let row = rows::replica_row(idx, r);
                    txn.ch.writes.push(Write::Replica(id, row));
                    txn.put_chunk(id, idx, chunk);
                }
                let ch = txn.finish();
                let _ = self.persist_then_apply(ch).await;
            }
        }
        self.attention.entry(id).or_default().insert(idx);
        self.dirty.insert(id);
        self.kick = true;
    }

    /// The assignments for (chunk, attempt) pairs of a job.
    fn assignments(&self, id: JobId, items: &[(u32, u32)]) -> Vec<Assignment> {
        let Some(job) = self.state.jobs.get(&id) else {
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
                    input: (*c.input).clone(),
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
            let offer = TaskRequest::Offer {
                job_id: id,
                assignments,
            };
            let reply = net.send_task(peer, offer).await;
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

    /// Sets the job and chunk gauges from the jobs in memory and the counts of
    /// those that left it.
    fn sample(&self) {
        let mut by_state = self.finished.clone();
        let mut chunks = super::job::ChunkCounts::default();
        for job in self.state.jobs.values() {
            *by_state.entry(job.state).or_default() += 1;
            if !job.state.is_final() {
                chunks.pending += job.counts.pending;
                chunks.verified += job.counts.verified;
                chunks.failed += job.counts.failed;
            }
        }
        self.ctx.metrics.set_counts(&by_state, &chunks);
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
            let Some(job) = self.state.jobs.get(&id) else {
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
                } else {
                    tx.send_replace(self.status_of(job));
                }
            }
        }
    }

    /// Finished jobs leave memory once their soft timeout has passed since they
    /// ended (late results, spot checks and plants of their last chunks still
    /// count until then).
    fn sweep(&mut self) {
        let now = now_ms();
        let done: Vec<JobId> = self
            .state
            .jobs
            .values()
            .filter(|j| {
                j.state.is_final()
                    && !self.dirty.contains(&j.id)
                    && j.finished_ms.is_some_and(|at| {
                        now.saturating_sub(at) > j.spec.soft_timeout.as_millis() as u64
                    })
            })
            .map(|j| j.id)
            .collect();
        for id in done {
            self.evict(id);
        }
    }

    /// A finished job leaves memory (its rows stay; status reads them back).
    fn evict(&mut self, id: JobId) {
        let Some(job) = self.state.jobs.remove(&id) else {
            return;
        };
        *self.finished.entry(job.state).or_default() += 1;
        let (trust, order) = &mut self.finished_trust;
        if trust.insert(id, job.trust).is_none() {
            order.push_back(id);
        }
        while order.len() > FINISHED_TRUST {
            if let Some(old) = order.pop_front() {
                trust.remove(&old);
            }
        }
        self.watchers.remove(&id);
        self.published.remove(&id);
        self.attention.remove(&id);
        self.state.plants.retain(|(j, _)| *j != id);
    }
}
