//! The scheduler actor: the message loop over the pure cores.
//!
//! It receives a message (a submission, a result batch, an offer's answer, a merge
//! or local run that ended, a question), does the I/O the decision needs first (blob
//! files, the capacity view), calls a pure core ([`verify`](super::verify),
//! [`dispatch`](super::dispatch), [`trust_ops`](super::trust_ops)) on a [`Txn`] over
//! its [`State`], writes the staged [`Write`]s in one transaction through
//! [`Db::write`](crate::store::Db::write) (never waiting on an async thread), and only then applies
//! the changes to memory and acts on them (acks, offers, runs, merges). A write
//! that fails changes nothing in memory and is reported to whoever asked: a result
//! batch is not acknowledged (the worker retries), a cancel answers an error.
//!
//! Only unfinished jobs live in memory; a job leaves when it ends (after its final
//! status is published), and finished jobs are read back from the database when
//! asked about. See the module docs of [`scheduler`](super) for the message flow.

use std::collections::VecDeque;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

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
    screen, trust_ops, verify,
};
use crate::net::protocol::{
    Assignment, PROTOCOL_VERSION, RejectReason, ResultAck, ResultContext, TaskReply, TaskRequest,
    result_signed_bytes,
};
use crate::store::Db;
use crate::store::db::{DbError, Write};
use crate::types::{BlobHash, ChunkResult, JobId, Payload, QUEUE_FACTOR, now_ms};

mod dispatching;
mod reads;
mod runs;

/// How often the actor re-dispatches even when nothing happened (timeouts, peers
/// that left or joined).
const TICK: Duration = Duration::from_millis(250);
/// A peer that refused or failed an offer is skipped for this long, or until
/// results come from it (they free room there).
pub(super) const PEER_BACKOFF: Duration = Duration::from_secs(1);
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
    /// Peers skipped until this time (ms, [`Actor::now`]).
    backoff: HashMap<PeerId, u64>,
    fetching: HashSet<BlobHash>,
    dirty: HashSet<JobId>,
    /// When each job's status was last published (ms; publishing is throttled).
    published: HashMap<JobId, u64>,
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
    finished_trust: (
        HashMap<JobId, TrustCounts>,
        std::collections::VecDeque<JobId>,
    ),
    /// Peers whose re-verification waits for finished jobs to be read back.
    reverify_later: HashSet<PeerId>,
    /// Lockstep (a seeded scheduler, `bench trust`): a logical clock that moves one
    /// tick whenever everything else is idle, and blocking work done inline, so that
    /// a single-threaded run is the same every time. `None`: the wall clock.
    logical_ms: Option<u64>,
    /// Messages from work done inline (lockstep), taken before the inbox.
    inline: VecDeque<Msg>,
}

/// What the loop does next (a transient value: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Step {
    Stop,
    Message(Msg),
    Tick,
}

/// At most this many queued messages are taken at once before the next dispatch.
const BURST: usize = 64;

/// Yields to the other tasks before a lockstep actor calls everything idle.
const LOCKSTEP_YIELDS: usize = 64;

impl Actor {
    /// An actor with nothing loaded yet ([`Actor::run`] loads the unfinished jobs).
    pub(super) fn new(
        ctx: SchedulerContext,
        tx: mpsc::Sender<Msg>,
        rx: mpsc::Receiver<Msg>,
        shutdown: CancellationToken,
    ) -> Self {
        let lockstep = ctx.seed.is_some();
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
            logical_ms: lockstep.then(now_ms),
            inline: VecDeque::new(),
        }
    }

    /// Now (unix ms): the wall clock, or the logical one in lockstep.
    pub(super) fn now(&self) -> u64 {
        self.logical_ms.unwrap_or_else(now_ms)
    }

    /// Runs a database call on a blocking thread ([`Db::run`]); inline in lockstep.
    pub(super) async fn db<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<R, DbError> + Send + 'static,
    ) -> Result<R, DbError> {
        if self.logical_ms.is_some() {
            return f(&self.ctx.db);
        }
        self.ctx.db.run(f).await
    }

    /// Runs blocking work (blob files, the sandbox) on a blocking thread; inline in
    /// lockstep.
    pub(super) async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        if self.logical_ms.is_some() {
            return Some(f());
        }
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(f))
            .await
            .ok()
    }

    /// Starts blocking work whose end comes back as a message: on a blocking thread,
    /// or (lockstep) at once, its message queued before the inbox.
    pub(super) fn spawn_work(&mut self, f: impl FnOnce() -> Msg + Send + 'static) {
        if self.logical_ms.is_some() {
            let msg = f();
            self.inline.push_back(msg);
            return;
        }
        let (tx, span) = (self.tx.clone(), tracing::Span::current());
        tokio::task::spawn_blocking(move || {
            let _ = tx.blocking_send(span.in_scope(f));
        });
    }

    /// The next step in lockstep: queued inline messages, then the inbox; when the
    /// other tasks have had their turns and sent nothing, a tick of the logical clock
    /// (if a job is running; else wait for a message).
    async fn next_lockstep(&mut self) -> Step {
        if let Some(msg) = self.inline.pop_front() {
            return Step::Message(msg);
        }
        for _ in 0..LOCKSTEP_YIELDS {
            match self.rx.try_recv() {
                Ok(msg) => return Step::Message(msg),
                Err(mpsc::error::TryRecvError::Disconnected) => return Step::Stop,
                Err(mpsc::error::TryRecvError::Empty) => tokio::task::yield_now().await,
            }
            if self.shutdown.is_cancelled() {
                return Step::Stop;
            }
        }
        if self.state.jobs.values().any(|j| !j.state.is_final()) {
            if let Some(ms) = &mut self.logical_ms {
                *ms += TICK.as_millis() as u64;
            }
            return Step::Tick;
        }
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Step::Stop,
            msg = self.rx.recv() => msg.map_or(Step::Stop, Step::Message),
        }
    }

    /// Loads reputation, the unfinished jobs and the re-verification index.
    async fn load(&mut self) {
        let loaded = self
            .db(|db| {
                Ok((
                    db.reputations()?,
                    rows::read_jobs(db, &[JobState::Running, JobState::Merging])?,
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
            *self.finished.entry(state).or_default() += n as i64;
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
            let step = if self.logical_ms.is_some() {
                self.next_lockstep().await
            } else {
                tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => Step::Stop,
                    msg = self.rx.recv() => msg.map_or(Step::Stop, Step::Message),
                    _ = tick.tick() => Step::Tick,
                }
            };
            match step {
                Step::Stop => break,
                Step::Message(msg) => {
                    // What queued while the actor was busy is taken now, before the
                    // next dispatch: one dispatch (and one write) for the burst, and
                    // runs of result batches judged and committed together.
                    let mut burst = vec![msg];
                    if self.logical_ms.is_none() {
                        while burst.len() < BURST
                            && let Ok(msg) = self.rx.try_recv()
                        {
                            burst.push(msg);
                        }
                    }
                    self.on_burst(burst).await;
                }
                Step::Tick => {
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
        let result = if self.logical_ms.is_some() {
            self.ctx.db.apply(&writes)
        } else {
            self.ctx.db.write(writes).await
        };
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

    /// Handles messages in order; consecutive result batches go to
    /// [`on_result_batches`](Self::on_result_batches) together.
    async fn on_burst(&mut self, burst: Vec<Msg>) {
        let mut results: Vec<runs::ResultsMsg> = Vec::new();
        let mut replies: Vec<dispatching::OfferReplyMsg> = Vec::new();
        for msg in burst {
            match msg {
                Msg::Results(peer, batch, reply) => {
                    if !replies.is_empty() {
                        self.on_offer_replies(std::mem::take(&mut replies)).await;
                    }
                    results.push((peer, batch.results, reply));
                    self.kick = true;
                }
                Msg::OfferReply {
                    job,
                    peer,
                    offered,
                    reply,
                } => {
                    if !results.is_empty() {
                        self.on_result_batches(std::mem::take(&mut results)).await;
                    }
                    replies.push((job, peer, offered, reply));
                    self.kick = true;
                }
                other => {
                    if !results.is_empty() {
                        self.on_result_batches(std::mem::take(&mut results)).await;
                    }
                    if !replies.is_empty() {
                        self.on_offer_replies(std::mem::take(&mut replies)).await;
                    }
                    self.on_message(other).await;
                }
            }
        }
        if !results.is_empty() {
            self.on_result_batches(results).await;
        }
        if !replies.is_empty() {
            self.on_offer_replies(replies).await;
        }
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
            Msg::Results(..) | Msg::OfferReply { .. } => {
                unreachable!("on_burst takes result batches and offer answers")
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
            Msg::Counts(reply) => {
                let _ = reply.send(self.job_counts());
            }
            Msg::Evidence(id, reply) => {
                let _ = reply.send(self.evidence(id).await);
            }
        }
    }

    /// Jobs by state: those in memory, and the counts of those that left it.
    fn job_counts(&self) -> Vec<(JobState, u64)> {
        let mut by_state = self.finished.clone();
        for job in self.state.jobs.values() {
            *by_state.entry(job.state).or_default() += 1;
        }
        by_state
            .into_iter()
            .map(|(state, n)| (state, n.max(0) as u64))
            .collect()
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
        let now = self.now();
        let dirty: Vec<JobId> = self.dirty.iter().copied().collect();
        for id in dirty {
            let Some(job) = self.state.jobs.get(&id) else {
                self.dirty.remove(&id);
                continue;
            };
            let recent = self
                .published
                .get(&id)
                .is_some_and(|at| now.saturating_sub(*at) < PUBLISH_EVERY.as_millis() as u64);
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
        let now = self.now();
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
