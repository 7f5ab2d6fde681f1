//! The dispatch plan, staged on a [`Txn`]: replicas that timed out or whose peer left
//! are reissued, chunks that need replicas get them ([`placement::choose`]), a fresh
//! chunk may go to one trusted peer alone (the solo draw), a chunk that needs a
//! witness no trusted peer can give is run by this node, and queued plants go out.
//! Also the answer to an offer ([`offer_reply`]).
//!
//! Pure: the [actor](super::actor) builds the [`Candidate`]s from the network's view
//! and its own worker, calls [`plan`], writes what it staged, applies it, and only
//! then sends the [`Plan::offers`].

use std::collections::{BTreeSet, HashMap, HashSet};

use libp2p::PeerId;
use rand::rngs::StdRng;

use super::job::{ChunkState, JobState, Replica, ReplicaState, Verdict};
use super::placement::{self, Candidate, Need, Offers};
use super::reputation::Mark;
use super::rows::replica_row;
use super::staged::{Event, State, Txn};
use super::trust::Standing;
use super::{trust_ops, verify};
use crate::store::db::Write;
use crate::types::JobId;

/// What the actor knows about the world for one dispatch.
#[derive(Debug)]
pub(super) struct Inputs<'a> {
    /// Walk every chunk (every tick), not just the changed ones.
    pub full: bool,
    /// Now (unix ms).
    pub now_ms: u64,
    /// Peers with an advert or a connection (and this node).
    pub alive: &'a HashSet<PeerId>,
    /// Peer -> (network group, discovery source).
    pub groups: &'a HashMap<PeerId, (Option<String>, Option<String>)>,
    /// Slots this node's own worker lends (0: witnesses run here, outside it).
    pub local_slots: u32,
    /// Peers known (for the "waiting for peers" message).
    pub known: usize,
    /// Peers excluded by reputation (for the same message).
    pub excluded: usize,
}

/// What the actor sends once the plan is stored.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Per (job, peer), the (chunk, attempt) pairs to offer.
    pub offers: Offers,
    /// Changed chunks not looked at (no room): still changed.
    pub attention: HashMap<JobId, BTreeSet<u32>>,
}

/// Live replicas per peer across running jobs (a full dispatch's recount).
pub(super) fn recount(state: &State) -> HashMap<PeerId, u32> {
    let mut inflight: HashMap<PeerId, u32> = HashMap::new();
    for job in state.jobs.values().filter(|j| j.state == JobState::Running) {
        for c in &job.chunks {
            for r in c.replicas.iter().filter(|r| r.state.is_live()) {
                *inflight.entry(r.peer).or_default() += 1;
            }
        }
    }
    inflight
}

/// Plans one dispatch. A `full` one (every tick, and for a new job) looks at every
/// chunk; a light one (after results and offer replies) only at the chunks in
/// `attention`, and stops when no peer has room.
pub(super) fn plan(
    txn: &mut Txn<'_>,
    candidates: &mut [Candidate],
    inputs: &Inputs<'_>,
    mut attention: HashMap<JobId, BTreeSet<u32>>,
    rng: &mut StdRng,
) -> Plan {
    let mut total_room: i64 = candidates.iter().map(|c| c.room.max(0)).sum();
    let mut offers = Offers::new();
    let ids: Vec<JobId> = txn.base.jobs.keys().copied().collect();
    for id in ids {
        let (mut unplaced, mut touched, mut deferred) = (0u32, Vec::new(), Vec::new());
        let mut changed = attention.remove(&id).unwrap_or_default();
        if !inputs.full && changed.is_empty() {
            continue;
        }
        let Some(job) = txn.job(id) else {
            continue;
        };
        if txn.job_state(id) != Some(JobState::Running) {
            continue;
        }
        debug_assert!(
            !inputs.full || job.replicas == super::job::ReplicaCounts::of(&job.chunks),
            "a job's replica counts drifted from its chunks"
        );
        let (spec, n_chunks) = (job.spec, job.chunks.len());
        let mut networks = Networks::of(job, inputs.groups, placement::network_cap(total_room));
        let mut cursor = 0usize;
        loop {
            // A full dispatch walks every chunk; a light one only the changed ones,
            // and stops when no peer has room (the rest stay changed).
            let idx = if inputs.full {
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
            if inputs.full && idx >= n_chunks {
                break;
            }
            match place_chunk(txn, candidates, inputs, id, idx as u32, &mut networks, rng) {
                Placed::Ended => touched.push(idx as u32),
                Placed::Skip => {}
                Placed::Referee => {
                    // A dispute this node decides by running the chunk itself.
                    if !trust_ops::local_run(txn, id, idx as u32, false, inputs.now_ms) {
                        txn.attend(id, idx as u32);
                    }
                }
                Placed::Witness => {
                    // No trusted peer with room, and no local worker: witness it here.
                    if !trust_ops::local_run(txn, id, idx as u32, false, inputs.now_ms) {
                        txn.attend(id, idx as u32);
                    }
                }
                Placed::Offered {
                    placed,
                    wanted,
                    items,
                } => {
                    for (peer, attempt) in items {
                        offers
                            .entry((id, peer))
                            .or_default()
                            .push((idx as u32, attempt));
                    }
                    total_room -= placed.1;
                    unplaced += wanted.saturating_sub(placed.0);
                    if placed.0 < wanted {
                        deferred.push(idx as u32);
                    }
                }
            }
        }
        for idx in touched {
            verify::evaluate_chunk(txn, id, idx, rng, inputs.now_ms);
        }
        if !changed.is_empty() {
            attention.entry(id).or_default().append(&mut changed);
        }
        if !deferred.is_empty() {
            attention.entry(id).or_default().extend(deferred);
        }
        if (inputs.full || unplaced > 0)
            && let Some(mut head) = txn.head(id)
        {
            let why = (unplaced > 0).then(|| {
                format!(
                    "waiting for peers: {unplaced} replicas need a distinct peer (in another network than the chunk's other replicas) with free slots and {} MiB per chunk; {} peers advertise capacity, {} known, {} excluded by reputation{}",
                    spec.limits.memory_bytes / (1024 * 1024),
                    candidates.len(),
                    inputs.known,
                    inputs.excluded,
                    refusals(txn.base.refused.get(&id))
                )
            });
            if why != head.why {
                head.why = why;
                txn.put_head(id, head);
            }
        }
        verify::check_done(txn, id, inputs.now_ms);
    }
    trust_ops::place_plants(txn, candidates, &mut offers);
    Plan { offers, attention }
}

/// Why peers refused a job for good, for its "waiting" message: how many refuse its
/// limits (and the largest maxima one of them lends) and how many its module (and
/// one reason); empty when none refused.
pub(super) fn refusals(
    refused: Option<&HashMap<PeerId, crate::net::protocol::RejectReason>>,
) -> String {
    use crate::net::protocol::RejectReason;
    let Some(refused) = refused else {
        return String::new();
    };
    let limits: Vec<&crate::types::Limits> = refused
        .values()
        .filter_map(|r| match r {
            RejectReason::LimitsTooHigh(most) => Some(most),
            _ => None,
        })
        .collect();
    let module = refused.values().find_map(|r| match r {
        RejectReason::BadModule(why) => Some(why),
        _ => None,
    });
    let mut out = String::new();
    if !limits.is_empty() {
        let most =
            |f: fn(&crate::types::Limits) -> u64| limits.iter().map(|l| f(l)).max().unwrap_or(0);
        out.push_str(&format!(
            "; {} peers refuse this job's limits (the most any of them lends: fuel {}, {} MiB memory, timeout {} s, output {} MiB)",
            limits.len(),
            most(|l| l.fuel),
            most(|l| l.memory_bytes) / (1024 * 1024),
            most(|l| l.timeout.as_secs()),
            most(|l| l.max_output_bytes) / (1024 * 1024),
        ));
    }
    if let Some(why) = module {
        let n = refused
            .values()
            .filter(|r| matches!(r, RejectReason::BadModule(_)))
            .count();
        // The reason comes from a peer: capped, and escaped by `{:?}`.
        let why: String = why.chars().take(200).collect();
        out.push_str(&format!("; {n} peers refuse this job's module: {why:?}"));
    }
    out
}

/// What [`place_chunk`] did.
enum Placed {
    /// Not pending, or waiting: nothing to do.
    Skip,
    /// The chunk's verdict ends it (verified or failed): evaluate it.
    Ended,
    /// It needs a witness and only this node can give it.
    Witness,
    /// Its replicas disagree: this node runs it and decides.
    Referee,
    /// Replicas offered: (placed, room used), wanted, and (peer, attempt) pairs.
    Offered {
        placed: (u32, i64),
        wanted: u32,
        items: Vec<(PeerId, u32)>,
    },
}

/// Reaps one chunk's lost and timed-out replicas and places the replicas it needs.
fn place_chunk(
    txn: &mut Txn<'_>,
    candidates: &mut [Candidate],
    inputs: &Inputs<'_>,
    id: JobId,
    idx: u32,
    networks: &mut Networks,
    rng: &mut StdRng,
) -> Placed {
    let Some(spec) = txn.job(id).map(|j| j.spec) else {
        return Placed::Skip;
    };
    let timeout_ms = spec.soft_timeout.as_millis() as u64;
    let now = inputs.now_ms;
    let Some(current) = txn.chunk(id, idx) else {
        return Placed::Skip;
    };
    if current.state != ChunkState::Pending {
        return Placed::Skip;
    }
    let reap = current.replicas.iter().any(|r| match r.state {
        ReplicaState::Issued(at) => {
            now.saturating_sub(at) > timeout_ms || !inputs.alive.contains(&r.peer)
        }
        _ => false,
    });
    let mut staged = None;
    if reap {
        let mut chunk = current.clone();
        for r in chunk.replicas.iter_mut() {
            let lost = match r.state {
                ReplicaState::Issued(at) if now.saturating_sub(at) > timeout_ms => {
                    let key = (id, idx, r.attempt);
                    if txn.base.local_runs.contains_key(&key) {
                        tracing::warn!(job = %id, chunk = idx, "a run on this node took longer than the soft timeout");
                        txn.ch.local_runs_ended.push(key);
                    }
                    r.state = ReplicaState::TimedOut(at);
                    txn.mark(r.peer, Mark::Timeout);
                    true
                }
                ReplicaState::Issued(_) if !inputs.alive.contains(&r.peer) => {
                    r.state = ReplicaState::Lost;
                    true
                }
                _ => false,
            };
            if lost {
                txn.add_inflight(r.peer, -1);
                txn.ch.events.push(Event::Reissue(r.state.as_str()));
                tracing::debug!(job = %id, chunk = idx, peer = %r.peer, state = r.state.as_str(), "replica reissued");
                txn.ch.writes.push(Write::Replica(id, replica_row(idx, r)));
            }
        }
        staged = Some(chunk);
    }
    let referee = verify::referee(txn);
    let verdict = match &staged {
        Some(c) => c.judge(&spec, &|p| txn.standing(p), Some(&referee)),
        None => current_verdict(txn, id, idx, &spec),
    };
    let (n, witness) = match verdict {
        Verdict::Need(n) => (n, false),
        Verdict::NeedWitness => (1, true),
        Verdict::Verified(_) | Verdict::Failed(_) => {
            if let Some(c) = staged {
                txn.put_chunk(id, idx, c);
            }
            return Placed::Ended;
        }
        Verdict::Wait => {
            if let Some(c) = staged {
                txn.put_chunk(id, idx, c);
            }
            return Placed::Skip;
        }
        Verdict::Referee => {
            if let Some(c) = staged {
                txn.put_chunk(id, idx, c);
            }
            return Placed::Referee;
        }
    };
    let Some(mut chunk) = staged.or_else(|| txn.take_chunk(id, idx)) else {
        return Placed::Skip;
    };
    let adaptive = spec.adaptive();
    // Never a peer, a network or (if asked) a discovery source twice.
    let mut need = Need {
        n,
        witness,
        memory: spec.limits.memory_bytes,
        used: chunk
            .used_peers()
            .chain(txn.base.refused.get(&id).into_iter().flat_map(|r| r.keys()))
            .copied()
            .collect(),
        want_trusted: adaptive && !chunk.has_trusted(&|p| txn.standing(p)),
        blocked: Some(&networks.blocked),
        ..Need::default()
    };
    // Every replica's network stays counted for the chunk, replaced ones too: a
    // second identity in a network whose replica was withdrawn or timed out must not
    // join the quorum.
    for r in &chunk.replicas {
        if let Some((group, source)) = inputs.groups.get(&r.peer) {
            need.used_groups.extend(group.as_deref());
            need.used_sources.extend(source.as_deref());
        }
    }
    let mut picks = placement::choose(candidates, &need, rng);
    if adaptive && !witness && chunk.replicas.is_empty() && chunk.solo.is_none() {
        // The solo draw: a fresh chunk whose best peer is trusted may run on it alone.
        if let Some(&first) = picks.first() {
            let peer = candidates[first].peer;
            let alone = candidates[first].standing == Standing::Trusted
                && txn
                    .row(&peer)
                    .is_some_and(|row| txn.base.trust.runs_alone(row, rng));
            if alone {
                chunk.solo = Some(peer);
                picks.truncate(1);
            }
        }
    }
    let (mut placed, mut room_used, mut items) = (0u32, 0i64, Vec::new());
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
            room_used += 1;
        }
        choice.room -= 1;
        let peer = choice.peer;
        if let Some((Some(group), _)) = inputs.groups.get(&peer) {
            networks.placed(group);
        }
        txn.add_inflight(peer, 1);
        items.push((peer, attempt));
        placed += 1;
    }
    let wanted = if chunk.solo.is_some() && placed == 1 {
        1
    } else {
        n
    };
    txn.put_chunk(id, idx, chunk);
    if witness && placed == 0 && inputs.local_slots == 0 {
        return Placed::Witness;
    }
    Placed::Offered {
        placed: (placed, room_used),
        wanted,
        items,
    }
}

fn current_verdict(txn: &Txn<'_>, id: JobId, idx: u32, spec: &super::job::JobSpec) -> Verdict {
    match txn.chunk(id, idx) {
        Some(c) => c.judge(spec, &|p| txn.standing(p), Some(&verify::referee(txn))),
        None => Verdict::Wait,
    }
}

/// What each network group holds of one job: live replicas and withdrawals, and
/// the groups that may take no more of it (at [`placement::network_cap`], or over
/// [`placement::NETWORK_WITHDRAW_BUDGET`]).
#[derive(Debug, Default)]
pub(super) struct Networks {
    live: HashMap<String, u32>,
    cap: u32,
    /// Groups that take no more of this job.
    pub blocked: HashSet<String>,
}

impl Networks {
    /// Counts `job`'s replicas by network group (from its per-peer counts).
    pub(super) fn of(
        job: &super::job::Job,
        groups: &HashMap<PeerId, (Option<String>, Option<String>)>,
        cap: u32,
    ) -> Self {
        let mut live: HashMap<String, u32> = HashMap::new();
        let mut withdrawn: HashMap<&str, u32> = HashMap::new();
        for (peer, n) in &job.replicas.live {
            if let Some((Some(group), _)) = groups.get(peer) {
                *live.entry(group.clone()).or_default() += n;
            }
        }
        for (peer, n) in &job.replicas.withdrawn {
            if let Some((Some(group), _)) = groups.get(peer) {
                *withdrawn.entry(group.as_str()).or_default() += n;
            }
        }
        let mut blocked: HashSet<String> = live
            .iter()
            .filter(|(_, n)| **n >= cap)
            .map(|(g, _)| g.clone())
            .collect();
        blocked.extend(
            withdrawn
                .into_iter()
                .filter(|(_, n)| *n >= placement::NETWORK_WITHDRAW_BUDGET)
                .map(|(g, _)| g.to_string()),
        );
        Self { live, cap, blocked }
    }

    /// One more live replica in `group`.
    fn placed(&mut self, group: &str) {
        let n = self.live.entry(group.to_string()).or_default();
        *n += 1;
        if *n >= self.cap {
            self.blocked.insert(group.to_string());
        }
    }
}

/// A worker answered an offer: the accepted replicas are issued, the others
/// forgotten (the peer may be asked again later).
pub(super) fn offer_reply(
    txn: &mut Txn<'_>,
    id: JobId,
    peer: PeerId,
    offered: &[(u32, u32)],
    accepted: &HashSet<(u32, u32)>,
    now_ms: u64,
) {
    for &(idx, attempt) in offered {
        let Some(mut chunk) = txn.take_chunk(id, idx) else {
            continue;
        };
        let Some(pos) = chunk
            .replicas
            .iter()
            .position(|r| r.attempt == attempt && r.peer == peer)
        else {
            continue;
        };
        if chunk.replicas[pos].state != ReplicaState::Offered {
            continue;
        }
        if accepted.contains(&(idx, attempt)) {
            chunk.replicas[pos].state = ReplicaState::Issued(now_ms);
            txn.ch.events.push(Event::Issued);
            txn.ch
                .writes
                .push(Write::Replica(id, replica_row(idx, &chunk.replicas[pos])));
        } else {
            txn.add_inflight(peer, -1);
            txn.attend(id, idx);
            chunk.replicas.remove(pos);
        }
        txn.put_chunk(id, idx, chunk);
    }
    txn.ch.dirty.insert(id);
}

/// A prepared dispatch for the `dispatch` bench (`node/benches/hot_paths.rs`): one
/// adaptive job of `chunks` fresh chunks, `candidates` peers (a fifth of them
/// trusted, each in its own network) with `room` replicas of room each. Not an API.
#[doc(hidden)]
#[derive(Debug)]
pub struct DispatchFixture {
    state: State,
    candidates: Vec<Candidate>,
    alive: HashSet<PeerId>,
    groups: HashMap<PeerId, (Option<String>, Option<String>)>,
}

impl DispatchFixture {
    /// Builds the state.
    pub fn new(chunks: u32, candidates: u32, room: i64) -> Self {
        use std::sync::Arc;

        use super::job::{Chunk, ChunkCounts, Job, JobSpec, ReplicaCounts};
        use super::reputation::Reputation;
        use crate::store::db::ReputationRow;
        use crate::types::{BlobHash, Payload};

        let peer = |i: u32| {
            let mut seed = [7u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            libp2p::identity::Keypair::ed25519_from_bytes(seed)
                .map(|k| k.public().to_peer_id())
                .unwrap_or_else(|_| PeerId::random())
        };
        let peers: Vec<PeerId> = (1..=candidates).map(peer).collect();
        let rows = peers
            .iter()
            .step_by(5)
            .map(|p| ReputationRow {
                peer: p.to_string(),
                agreed: 100,
                consecutive: 100,
                ..ReputationRow::default()
            })
            .collect();
        let mut state = State::new(Reputation::load(rows), Default::default(), peer(0));
        let chunks: Vec<Chunk> = (0..chunks)
            .map(|i| {
                let input = i.to_le_bytes().to_vec();
                Chunk {
                    input_hash: BlobHash::of(&input),
                    input: Arc::new(Payload::Inline(input)),
                    state: ChunkState::Pending,
                    replicas: Vec::new(),
                    solo: None,
                }
            })
            .collect();
        let job = Job {
            id: JobId([1; 16]),
            name: "bench".into(),
            module: BlobHash::of(b"module"),
            spec: JobSpec::default(),
            state: JobState::Running,
            counts: ChunkCounts::of(&chunks),
            replicas: ReplicaCounts::of(&chunks),
            chunks,
            created_ms: 0,
            finished_ms: None,
            result: None,
            error: None,
            why: None,
            trust: Default::default(),
        };
        state.jobs.insert(job.id, job);
        let group = |i: usize| Some(format!("10.{}.{}.0/24", i / 250, i % 250));
        let candidates = peers
            .iter()
            .enumerate()
            .map(|(i, p)| Candidate {
                peer: *p,
                memory: 1 << 30,
                room,
                score: 0.5,
                standing: state.standing(p),
                group: group(i),
                source: None,
            })
            .collect();
        Self {
            alive: peers.iter().copied().collect(),
            groups: peers
                .iter()
                .enumerate()
                .map(|(i, p)| (*p, (group(i), None)))
                .collect(),
            state,
            candidates,
        }
    }

    /// Plans one full dispatch (nothing is applied); returns the replicas offered.
    pub fn plan(&self, seed: u64) -> usize {
        use rand::SeedableRng;
        let mut candidates = self.candidates.clone();
        let inputs = Inputs {
            full: true,
            now_ms: 1,
            alive: &self.alive,
            groups: &self.groups,
            local_slots: 0,
            known: self.alive.len(),
            excluded: 0,
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let mut txn = Txn::new(&self.state);
        let plan = plan(&mut txn, &mut candidates, &inputs, HashMap::new(), &mut rng);
        plan.offers.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::scheduler::job::JobSpec;
    use crate::scheduler::testkit::{LOCAL, adaptive, issued, job, peer, returned, state};

    fn cand(n: u8, room: i64, standing: Standing) -> Candidate {
        Candidate {
            peer: peer(n),
            memory: 1 << 30,
            room,
            score: 0.5,
            standing,
            group: Some(format!("10.0.{n}.0/24")),
            source: None,
        }
    }

    struct World {
        alive: HashSet<PeerId>,
        groups: HashMap<PeerId, (Option<String>, Option<String>)>,
    }

    fn world(peers: &[u8]) -> World {
        World {
            alive: peers.iter().map(|&n| peer(n)).collect(),
            groups: peers
                .iter()
                .map(|&n| (peer(n), (Some(format!("10.0.{n}.0/24")), None)))
                .collect(),
        }
    }

    fn inputs(w: &World, now_ms: u64, local_slots: u32) -> Inputs<'_> {
        Inputs {
            full: true,
            now_ms,
            alive: &w.alive,
            groups: &w.groups,
            local_slots,
            known: w.alive.len(),
            excluded: 0,
        }
    }

    /// Plans once over `st`, applies the result, returns the offers.
    fn run(
        st: &mut State,
        candidates: &mut [Candidate],
        inputs: &Inputs<'_>,
        seed: u64,
    ) -> (Offers, Vec<(JobId, u32, u32)>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut txn = Txn::new(st);
        let plan = plan(&mut txn, candidates, inputs, HashMap::new(), &mut rng);
        let mut ch = txn.finish();
        let runs = ch.local_runs.clone();
        st.apply(&mut ch);
        (plan.offers, runs)
    }

    #[test]
    fn the_solo_draw_gives_most_fresh_chunks_to_a_trusted_peer_alone_and_is_seeded() {
        let plan_with = |seed| {
            let mut st = state(vec![job(1, 40, adaptive())], &[1]);
            let w = world(&[1, 2, 3]);
            // Weights as measured: a long-trusted peer and two newcomers.
            let mut candidates = vec![
                cand(1, 1000, Standing::Trusted),
                cand(2, 100, Standing::Probation),
                cand(3, 100, Standing::Probation),
            ];
            candidates[0].score = 20.0;
            run(&mut st, &mut candidates, &inputs(&w, 5, 1), seed);
            st.jobs[&JobId([1; 16])]
                .chunks
                .iter()
                .map(|c| (c.solo, c.replicas.len()))
                .collect::<Vec<_>>()
        };
        let chunks = plan_with(7);
        let solo = chunks.iter().filter(|(s, _)| s.is_some()).count();
        assert!(
            solo >= 30,
            "a long-trusted peer runs most chunks alone: {solo} of 40"
        );
        assert!(solo < 40, "but never all: {solo} of 40");
        for (s, n) in &chunks {
            // Solo or not, one replica until it answers: nobody can tell which.
            assert_eq!(*n, 1);
            assert!(s.is_none_or(|p| p == peer(1)));
        }
        assert_eq!(chunks, plan_with(7), "the same seed, the same plan");
    }

    #[test]
    fn dispatch_reissues_and_places_by_the_table() {
        // The peer seed 1 draws first among two equal candidates.
        const FIRST: u8 = 2;
        fn two_on_probation() -> Vec<Candidate> {
            vec![
                cand(2, 4, Standing::Probation),
                cand(3, 4, Standing::Probation),
            ]
        }
        struct Case {
            name: &'static str,
            spec: JobSpec,
            before: fn(&mut crate::scheduler::job::Chunk),
            alive: &'static [u8],
            candidates: fn() -> Vec<Candidate>,
            local_slots: u32,
            /// Replica states afterwards, by attempt.
            replicas: &'static [&'static str],
            /// Peers offered to.
            offered: &'static [u8],
            /// Runs this node starts itself.
            local_runs: usize,
            /// Timeouts charged to peer 1.
            timeouts: u64,
        }
        let cases = vec![
            Case {
                name: "a fresh chunk gets one replica: the first answer is given blind",
                spec: JobSpec {
                    replication: crate::scheduler::job::Replication::Fixed,
                    ..adaptive()
                },
                before: |_| {},
                alive: &[2, 3],
                candidates: two_on_probation,
                local_slots: 1,
                replicas: &["offered"],
                offered: &[FIRST],
                local_runs: 0,
                timeouts: 0,
            },
            Case {
                name: "once it answered, the next goes to another peer in another network",
                spec: JobSpec {
                    replication: crate::scheduler::job::Replication::Fixed,
                    ..adaptive()
                },
                before: |c| c.replicas = vec![returned(2, 0, b"a")],
                alive: &[2, 3],
                candidates: two_on_probation,
                local_slots: 1,
                replicas: &["returned", "offered"],
                offered: &[3],
                local_runs: 0,
                timeouts: 0,
            },
            Case {
                name: "timed out: charged to its peer and replaced",
                spec: JobSpec {
                    replication: crate::scheduler::job::Replication::Fixed,
                    ..adaptive()
                },
                before: |c| c.replicas = vec![issued(1, 0), returned(2, 1, b"a")],
                alive: &[1, 2, 3],
                candidates: || vec![cand(3, 4, Standing::Probation)],
                local_slots: 1,
                replicas: &["timed_out", "returned", "offered"],
                offered: &[3],
                local_runs: 0,
                timeouts: 1,
            },
            Case {
                name: "its peer left: lost (no charge) and replaced",
                spec: JobSpec {
                    soft_timeout: std::time::Duration::from_secs(3600),
                    replication: crate::scheduler::job::Replication::Fixed,
                    ..adaptive()
                },
                before: |c| c.replicas = vec![issued(1, 0), returned(2, 1, b"a")],
                alive: &[2, 3],
                candidates: || vec![cand(3, 4, Standing::Probation)],
                local_slots: 1,
                replicas: &["lost", "returned", "offered"],
                offered: &[3],
                local_runs: 0,
                timeouts: 0,
            },
            Case {
                name: "a withdrawn replica's network stays counted: no second identity from it",
                spec: JobSpec {
                    replication: crate::scheduler::job::Replication::Fixed,
                    ..adaptive()
                },
                before: |c| {
                    c.replicas = vec![issued(1, 0), returned(2, 1, b"a")];
                    c.replicas[0].state = ReplicaState::Withdrawn;
                },
                alive: &[1, 2, 3, 9],
                candidates: || {
                    let mut sybil = cand(9, 4, Standing::Probation);
                    sybil.group = Some("10.0.1.0/24".into());
                    vec![sybil, cand(3, 4, Standing::Probation)]
                },
                local_slots: 1,
                replicas: &["withdrawn", "returned", "offered"],
                offered: &[3],
                local_runs: 0,
                timeouts: 0,
            },
            Case {
                name: "replicas disagree: this node referees",
                spec: adaptive(),
                before: |c| c.replicas = vec![returned(1, 0, b"a"), returned(2, 1, b"b")],
                alive: &[1, 2, 3],
                candidates: || vec![cand(3, 4, Standing::Trusted)],
                local_slots: 1,
                replicas: &["returned", "returned", "issued"],
                offered: &[],
                local_runs: 1,
                timeouts: 0,
            },
            Case {
                name: "two on probation agree, no trusted peer: this node witnesses",
                spec: adaptive(),
                before: |c| c.replicas = vec![returned(1, 0, b"a"), returned(2, 1, b"a")],
                alive: &[1, 2, 3],
                candidates: || vec![cand(3, 4, Standing::Probation)],
                local_slots: 0,
                replicas: &["returned", "returned", "issued"],
                offered: &[],
                local_runs: 1,
                timeouts: 0,
            },
            Case {
                name: "two on probation agree: a trusted peer witnesses",
                spec: adaptive(),
                before: |c| c.replicas = vec![returned(1, 0, b"a"), returned(2, 1, b"a")],
                alive: &[1, 2, 3, 4],
                candidates: || {
                    vec![
                        cand(3, 9, Standing::Probation),
                        cand(4, 1, Standing::Trusted),
                    ]
                },
                local_slots: 0,
                replicas: &["returned", "returned", "offered"],
                offered: &[4],
                local_runs: 0,
                timeouts: 0,
            },
        ];
        for case in cases {
            let mut j = job(1, 1, case.spec);
            (case.before)(&mut j.chunks[0]);
            let mut st = state(vec![j], &[4]);
            st.inflight = recount(&st);
            let w = world(case.alive);
            let mut candidates = (case.candidates)();
            let (offers, runs) = run(
                &mut st,
                &mut candidates,
                &inputs(&w, 60_000, case.local_slots),
                1,
            );
            let chunk = &st.jobs[&JobId([1; 16])].chunks[0];
            let states: Vec<&str> = chunk.replicas.iter().map(|r| r.state.as_str()).collect();
            assert_eq!(states, case.replicas, "{}", case.name);
            let mut offered: Vec<PeerId> = offers.keys().map(|(_, p)| *p).collect();
            offered.sort();
            let mut want: Vec<PeerId> = case.offered.iter().map(|&n| peer(n)).collect();
            want.sort();
            assert_eq!(offered, want, "{}: offers", case.name);
            assert_eq!(runs.len(), case.local_runs, "{}: local runs", case.name);
            assert_eq!(
                st.reputation.get(&peer(1)).timeouts,
                case.timeouts,
                "{}: timeouts",
                case.name
            );
            if case.local_runs > 0 {
                assert_eq!(chunk.replicas.last().map(|r| r.peer), Some(peer(LOCAL)));
            }
        }
    }

    #[test]
    fn one_network_holds_at_most_its_share_of_a_job() {
        let spec = JobSpec {
            replication: crate::scheduler::job::Replication::Fixed,
            ..adaptive()
        };
        let mut st = state(vec![job(1, 60, spec)], &[]);
        // 20 Sybils in one /24 with room 4 each, and two honest peers elsewhere.
        let sybils: Vec<u8> = (10..30).collect();
        let mut w = world(&[1, 2]);
        let mut candidates = vec![
            cand(1, 4, Standing::Probation),
            cand(2, 4, Standing::Probation),
        ];
        for &n in &sybils {
            w.alive.insert(peer(n));
            w.groups
                .insert(peer(n), (Some("10.66.66.0/24".into()), None));
            let mut c = cand(n, 4, Standing::Probation);
            c.group = Some("10.66.66.0/24".into());
            c.score = 50.0;
            candidates.push(c);
        }
        let (offers, _) = run(&mut st, &mut candidates, &inputs(&w, 5, 1), 3);
        let to_sybils: usize = offers
            .iter()
            .filter(|((_, p), _)| sybils.iter().any(|&n| peer(n) == *p))
            .map(|(_, items)| items.len())
            .sum();
        let total_room = 22 * 4;
        assert_eq!(
            to_sybils as u32,
            placement::network_cap(total_room),
            "the Sybils' network is capped (and full)"
        );
        assert!(offers.keys().any(|(_, p)| *p == peer(1)));
    }

    #[test]
    fn a_network_over_its_withdrawal_budget_gets_no_more_of_the_job() {
        let spec = JobSpec {
            replication: crate::scheduler::job::Replication::Fixed,
            ..adaptive()
        };
        let mut j = job(1, 40, spec);
        // Peer 1's network withdrew one replica of each of the first 32 chunks.
        for c in j
            .chunks
            .iter_mut()
            .take(placement::NETWORK_WITHDRAW_BUDGET as usize)
        {
            c.replicas = vec![issued(1, 0)];
            c.replicas[0].state = ReplicaState::Withdrawn;
        }
        let mut st = state(vec![j], &[]);
        let w = world(&[1, 2, 3, 4]);
        let mut candidates: Vec<Candidate> = [1, 2, 3, 4]
            .iter()
            .map(|&n| cand(n, 100, Standing::Probation))
            .collect();
        let (offers, _) = run(&mut st, &mut candidates, &inputs(&w, 5, 1), 9);
        assert!(
            !offers.keys().any(|(_, p)| *p == peer(1)),
            "the withdrawing network was offered more"
        );
        assert!(offers.keys().any(|(_, p)| *p == peer(2)));
        // Its withdrawals did not use up any chunk's budget: every chunk is placed
        // (one replica each, until it answers).
        let placed: usize = offers.values().map(Vec::len).sum();
        assert_eq!(placed, 40);
    }

    #[test]
    fn an_offer_answer_issues_the_accepted_and_forgets_the_refused() {
        let mut j = job(1, 2, adaptive());
        for c in &mut j.chunks {
            c.replicas = vec![crate::scheduler::job::Replica {
                attempt: 0,
                peer: peer(1),
                state: ReplicaState::Offered,
                check: false,
            }];
        }
        let mut st = state(vec![j], &[]);
        st.inflight = recount(&st);
        let mut txn = Txn::new(&st);
        let accepted: HashSet<(u32, u32)> = [(0, 0)].into_iter().collect();
        offer_reply(
            &mut txn,
            JobId([1; 16]),
            peer(1),
            &[(0, 0), (1, 0)],
            &accepted,
            9,
        );
        let mut ch = txn.finish();
        assert_eq!(ch.writes.len(), 1, "only the issued replica is written");
        st.apply(&mut ch);
        let chunks = &st.jobs[&JobId([1; 16])].chunks;
        assert_eq!(chunks[0].replicas[0].state, ReplicaState::Issued(9));
        assert!(chunks[1].replicas.is_empty());
        assert_eq!(st.inflight[&peer(1)], 1);
    }
}
