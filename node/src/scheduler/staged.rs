//! The scheduler's state, and changes to it staged before they are written.
//!
//! [`State`] is everything the pure cores ([`dispatch`](super::dispatch),
//! [`verify`](super::verify), [`trust_ops`](super::trust_ops)) read: the jobs in
//! memory, reputation, the solo index, queued plants, replicas in flight per peer and
//! this node's own runs. A core never changes it: it works on a [`Txn`], which reads
//! through to the state and keeps its own copies of whatever it changes (a chunk, a
//! job's head, a peer's reputation row), and collects the database [`Write`]s those
//! changes need. The [actor](super::actor) writes them in one transaction and only
//! then applies the [`Changes`] to the state ([`State::apply`]): if the write fails,
//! memory is as it was (persist, then apply).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use libp2p::PeerId;

use super::TrustCounts;
use super::job::{Chunk, Job, JobState};
use super::reputation::{Mark, Reputation};
use super::trust::{Standing, TrustPolicy};
use crate::store::db::{ReputationRow, Write};
use crate::types::{BlobHash, JobId};

/// Planted chunks waiting for a trusted peer with room.
pub(super) const MAX_PLANTS_QUEUED: usize = 1000;

/// Everything the cores decide from.
#[derive(Debug)]
pub(super) struct State {
    /// Unfinished jobs (and finished ones only while a re-verification needs them).
    pub jobs: BTreeMap<JobId, Job>,
    /// Every peer's reputation with this submitter.
    pub reputation: Reputation,
    /// The trust rules.
    pub trust: TrustPolicy,
    /// This node (always trusted).
    pub local: PeerId,
    /// Per peer, the chunks verified on its word alone (newest last, bounded by the
    /// policy's window): re-verified if it is ever found wrong.
    pub solo_index: HashMap<PeerId, VecDeque<(JobId, u32)>>,
    /// Verified chunks to plant with a trusted peer.
    pub plants: VecDeque<(JobId, u32)>,
    /// Live replicas per peer across running jobs: recounted by every full dispatch,
    /// kept up to date in between.
    pub inflight: HashMap<PeerId, u32>,
    /// Runs this node is doing itself now (job, chunk, attempt). One that outlives
    /// the job's soft timeout stops counting, so a stuck run cannot block the rest.
    /// (When each started, unix ms.)
    pub local_runs: HashMap<(JobId, u32, u32), u64>,
    /// Per job, the peers that refused it for good (its limits over their maxima, or
    /// its module), with their reason: never offered that job again (memory only; a
    /// restarted submitter asks once more).
    pub refused: HashMap<JobId, HashMap<PeerId, crate::net::protocol::RejectReason>>,
}

/// A peer's standing, this node being always trusted.
pub(super) fn standing_of(
    row: Option<&ReputationRow>,
    trust: &TrustPolicy,
    local: &PeerId,
    peer: &PeerId,
) -> Standing {
    if peer == local {
        Standing::Trusted
    } else {
        row.map_or(Standing::Probation, |row| trust.standing(row))
    }
}

impl State {
    /// An empty state.
    pub(super) fn new(reputation: Reputation, trust: TrustPolicy, local: PeerId) -> Self {
        Self {
            jobs: BTreeMap::new(),
            reputation,
            trust,
            local,
            solo_index: HashMap::new(),
            plants: VecDeque::new(),
            inflight: HashMap::new(),
            local_runs: HashMap::new(),
            refused: HashMap::new(),
        }
    }

    /// A peer's standing as committed.
    pub(super) fn standing(&self, peer: &PeerId) -> Standing {
        standing_of(self.reputation.row(peer), &self.trust, &self.local, peer)
    }

    /// Remembers a chunk verified on `peer`'s word alone (bounded per peer).
    pub(super) fn remember_solo(&mut self, peer: PeerId, id: JobId, idx: u32) {
        let list = self.solo_index.entry(peer).or_default();
        list.push_back((id, idx));
        while list.len() > self.trust.recheck_window {
            list.pop_front();
        }
    }

    /// Applies committed changes.
    pub(super) fn apply(&mut self, changes: &mut Changes) {
        for ((id, idx), chunk) in changes.chunks.drain() {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            if let Some(slot) = job.chunks.get_mut(idx as usize) {
                job.counts.add(&slot.state, -1);
                job.counts.add(&chunk.state, 1);
                job.replicas.add(slot, -1);
                job.replicas.add(&chunk, 1);
                *slot = chunk;
            }
        }
        for (id, head) in changes.heads.drain() {
            if let Some(job) = self.jobs.get_mut(&id) {
                head.apply_to(job);
            }
        }
        for mark in changes.marks.drain(..) {
            self.reputation.record(mark);
        }
        for (peer, row) in changes.rows.drain() {
            self.reputation.set(peer, row);
        }
        for peer in changes.solo_taken.drain() {
            self.solo_index.remove(&peer);
        }
        for (peer, (id, idx)) in changes.solo_add.drain(..) {
            self.remember_solo(peer, id, idx);
        }
        if let Some(plants) = changes.plants.take() {
            self.plants = plants;
        }
        for plant in changes.plant_push.drain(..) {
            if self.plants.len() < MAX_PLANTS_QUEUED {
                self.plants.push_back(plant);
            }
        }
        for (peer, n) in changes.inflight.drain() {
            self.inflight.insert(peer, n);
        }
        for key in changes.local_runs_ended.drain(..) {
            self.local_runs.remove(&key);
        }
    }
}

/// A job's changeable fields.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Head {
    /// Where it is.
    pub state: JobState,
    /// When it ended.
    pub finished_ms: Option<u64>,
    /// The merged result.
    pub result: Option<BlobHash>,
    /// Why it failed.
    pub error: Option<String>,
    /// Why nothing moves.
    pub why: Option<String>,
    /// What adaptive replication did.
    pub trust: TrustCounts,
}

impl Head {
    fn of(job: &Job) -> Self {
        Self {
            state: job.state,
            finished_ms: job.finished_ms,
            result: job.result,
            error: job.error.clone(),
            why: job.why.clone(),
            trust: job.trust,
        }
    }

    fn apply_to(self, job: &mut Job) {
        job.state = self.state;
        job.finished_ms = self.finished_ms;
        job.result = self.result;
        job.error = self.error;
        job.why = self.why;
        job.trust = self.trust;
    }

    /// The write that stores the job's state.
    pub(super) fn write(&self, id: JobId) -> Write {
        Write::JobState {
            id,
            state: self.state,
            finished_ms: self.finished_ms,
            result: self.result,
            error: self.error.clone(),
        }
    }
}

/// A metric to record once the change is committed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Event {
    /// A replica was accepted by its worker.
    Issued,
    /// A replica is reissued (`timed_out` or `lost`).
    Reissue(&'static str),
    /// A chunk verified this long after its job was submitted.
    Verified(f64),
}

/// What a core changed: applied by [`State::apply`] once [`Changes::writes`] are
/// stored; the rest ([`Changes::offers`], runs to start, ...) the actor acts on.
#[derive(Debug, Default)]
pub(super) struct Changes {
    /// The database writes, in order.
    pub writes: Vec<Write>,
    chunks: HashMap<(JobId, u32), Chunk>,
    heads: HashMap<JobId, Head>,
    rows: HashMap<PeerId, ReputationRow>,
    marks: Vec<Mark>,
    solo_add: Vec<(PeerId, (JobId, u32))>,
    solo_taken: HashSet<PeerId>,
    plants: Option<VecDeque<(JobId, u32)>>,
    plant_push: Vec<(JobId, u32)>,
    inflight: HashMap<PeerId, u32>,
    /// This node's runs that ended or stopped counting.
    pub local_runs_ended: Vec<(JobId, u32, u32)>,
    /// Runs for this node to start (job, chunk, attempt), their replicas staged.
    pub local_runs: Vec<(JobId, u32, u32)>,
    /// Jobs to merge.
    pub merges: Vec<JobId>,
    /// Chunks to look at in the next light dispatch.
    pub attention: Vec<(JobId, u32)>,
    /// Jobs whose status changed.
    pub dirty: HashSet<JobId>,
    /// Metrics to record.
    pub events: Vec<Event>,
    /// Peers whose re-verification needs jobs that are not in memory.
    pub reverify_later: Vec<PeerId>,
    /// Something changed that a dispatch should act on.
    pub kick: bool,
}

/// Staged changes over a [`State`]: reads see them, the state does not.
#[derive(Debug)]
pub(super) struct Txn<'a> {
    /// The committed state.
    pub base: &'a State,
    /// What changed.
    pub ch: Changes,
}

impl<'a> Txn<'a> {
    /// Nothing staged yet.
    pub(super) fn new(base: &'a State) -> Self {
        Self {
            base,
            ch: Changes::default(),
        }
    }

    /// The changes, to persist and then apply.
    pub(super) fn finish(self) -> Changes {
        self.ch
    }

    /// A job's fixed fields (spec, module, chunk count).
    pub(super) fn job(&self, id: JobId) -> Option<&'a Job> {
        self.base.jobs.get(&id)
    }

    /// A chunk as staged.
    pub(super) fn chunk(&self, id: JobId, idx: u32) -> Option<&Chunk> {
        match self.ch.chunks.get(&(id, idx)) {
            Some(c) => Some(c),
            None => self.base.jobs.get(&id)?.chunks.get(idx as usize),
        }
    }

    /// A copy of a chunk to change (then [`Txn::put_chunk`] it back).
    pub(super) fn take_chunk(&self, id: JobId, idx: u32) -> Option<Chunk> {
        self.chunk(id, idx).cloned()
    }

    /// How many chunks are staged.
    pub(super) fn staged_chunks(&self) -> usize {
        self.ch.chunks.len()
    }

    /// Stages a changed chunk.
    pub(super) fn put_chunk(&mut self, id: JobId, idx: u32, chunk: Chunk) {
        self.ch.chunks.insert((id, idx), chunk);
    }

    /// A job's head as staged.
    pub(super) fn head(&self, id: JobId) -> Option<Head> {
        match self.ch.heads.get(&id) {
            Some(h) => Some(h.clone()),
            None => self.base.jobs.get(&id).map(Head::of),
        }
    }

    /// A job's state as staged.
    pub(super) fn job_state(&self, id: JobId) -> Option<JobState> {
        match self.ch.heads.get(&id) {
            Some(h) => Some(h.state),
            None => self.base.jobs.get(&id).map(|j| j.state),
        }
    }

    /// Stages a changed head.
    pub(super) fn put_head(&mut self, id: JobId, head: Head) {
        self.ch.dirty.insert(id);
        self.ch.heads.insert(id, head);
    }

    /// Changes a job's trust counters.
    pub(super) fn count(&mut self, id: JobId, change: impl FnOnce(&mut TrustCounts)) {
        if let Some(mut head) = self.head(id) {
            change(&mut head.trust);
            self.put_head(id, head);
        }
    }

    /// A peer's reputation row as staged.
    pub(super) fn row(&self, peer: &PeerId) -> Option<&ReputationRow> {
        self.ch
            .rows
            .get(peer)
            .or_else(|| self.base.reputation.row(peer))
    }

    /// A peer's standing as staged (this node is always trusted).
    pub(super) fn standing(&self, peer: &PeerId) -> Standing {
        standing_of(self.row(peer), &self.base.trust, &self.base.local, peer)
    }

    /// Stages a judgement of a peer; returns nothing (the write is collected).
    pub(super) fn mark(&mut self, peer: PeerId, mark: Mark) {
        let mut row = self.row(&peer).cloned().unwrap_or_else(|| ReputationRow {
            peer: peer.to_string(),
            ..ReputationRow::default()
        });
        mark.apply(&mut row);
        self.ch.marks.push(mark);
        self.ch.writes.push(Write::Reputation(row.clone()));
        self.ch.rows.insert(peer, row);
    }

    /// Replicas in flight on `peer`, as staged.
    pub(super) fn inflight(&self, peer: &PeerId) -> u32 {
        self.ch
            .inflight
            .get(peer)
            .or_else(|| self.base.inflight.get(peer))
            .copied()
            .unwrap_or(0)
    }

    /// One replica more (`n = 1`) or fewer (`n = -1`) in flight on `peer`. Fewer
    /// only counts a peer that has a count (as the full recount would).
    pub(super) fn add_inflight(&mut self, peer: PeerId, n: i32) {
        if n < 0 && !self.ch.inflight.contains_key(&peer) && !self.base.inflight.contains_key(&peer)
        {
            return;
        }
        let now = self.inflight(&peer).saturating_add_signed(n);
        self.ch.inflight.insert(peer, now);
    }

    /// Chunks verified on `peer`'s word alone, as staged (taken: the peer's list is
    /// dropped when this commits).
    pub(super) fn take_solo(&mut self, peer: PeerId) -> Vec<(JobId, u32)> {
        let mut list: Vec<(JobId, u32)> = if self.ch.solo_taken.insert(peer) {
            self.base
                .solo_index
                .get(&peer)
                .map(|l| l.iter().copied().collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ch.solo_add)
            .into_iter()
            .partition(|(p, _)| *p == peer);
        self.ch.solo_add = others;
        list.extend(mine.into_iter().map(|(_, c)| c));
        list
    }

    /// Remembers a chunk verified on `peer`'s word alone.
    pub(super) fn remember_solo(&mut self, peer: PeerId, id: JobId, idx: u32) {
        self.ch.solo_add.push((peer, (id, idx)));
    }

    /// The plant queue as staged (taken: put the rest back with [`Txn::set_plants`]).
    pub(super) fn take_plants(&mut self) -> VecDeque<(JobId, u32)> {
        let mut queue = self
            .ch
            .plants
            .take()
            .unwrap_or_else(|| self.base.plants.clone());
        for plant in self.ch.plant_push.drain(..) {
            if queue.len() < MAX_PLANTS_QUEUED {
                queue.push_back(plant);
            }
        }
        queue
    }

    /// Sets the plant queue.
    pub(super) fn set_plants(&mut self, queue: VecDeque<(JobId, u32)>) {
        self.ch.plants = Some(queue);
    }

    /// Queues a plant.
    pub(super) fn plant(&mut self, id: JobId, idx: u32) {
        self.ch.plant_push.push((id, idx));
    }

    /// This node's runs in progress, as staged.
    pub(super) fn local_runs(&self) -> usize {
        (self.base.local_runs.len() + self.ch.local_runs.len())
            .saturating_sub(self.ch.local_runs_ended.len())
    }

    /// Marks a chunk for the next light dispatch.
    pub(super) fn attend(&mut self, id: JobId, idx: u32) {
        self.ch.attention.push((id, idx));
        self.ch.dirty.insert(id);
    }
}
