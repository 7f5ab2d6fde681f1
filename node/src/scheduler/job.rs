//! A job's live state on its submitter, and the verification rule.
//!
//! Pure data and functions (no I/O): the actor mutates these and writes the changes
//! through to the database. [`Chunk::evaluate`] decides, from the replicas returned
//! so far, whether a chunk is verified, needs more replicas, or has failed.

use std::time::Duration;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::trust::Standing;
use crate::net::protocol::{BlobHash, JobId, Payload, WireOutcome};
use crate::sandbox::Limits;

/// How many replicas a chunk gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Replication {
    /// Always `redundancy` replicas, and any `quorum` distinct peers verify.
    Fixed,
    /// Trusted peers run most chunks alone; peers on probation never verify each
    /// other (see [`trust`](super::trust)). `redundancy` and `quorum` apply to the
    /// chunks that are replicated.
    #[default]
    Adaptive,
}

/// How a job is run: replication and limits. Stored with the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Replicas issued for each chunk at first.
    pub redundancy: u32,
    /// Matching results from distinct peers needed to accept an outcome.
    pub quorum: u32,
    /// Most replicas with a (deterministic) result per chunk before it fails.
    pub max_replicas: u32,
    /// Limits each chunk runs under.
    pub limits: Limits,
    /// A replica not returned after this is reissued elsewhere (a late result still
    /// counts).
    pub soft_timeout: Duration,
    /// Fixed or adaptive replication.
    #[serde(default)]
    pub replication: Replication,
}

/// The spec as stored before adaptive replication existed (decoded as fixed).
#[derive(Deserialize)]
struct JobSpecV1 {
    redundancy: u32,
    quorum: u32,
    max_replicas: u32,
    limits: Limits,
    soft_timeout: Duration,
}

impl Default for JobSpec {
    fn default() -> Self {
        Self {
            redundancy: 2,
            quorum: 2,
            max_replicas: 5,
            limits: Limits::CHUNK,
            soft_timeout: Duration::from_secs(120),
            replication: Replication::Adaptive,
        }
    }
}

impl JobSpec {
    /// Decodes a stored spec, including those stored before `replication` existed.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        match postcard::from_bytes::<Self>(bytes) {
            Ok(spec) => Ok(spec),
            Err(e) => match postcard::from_bytes::<JobSpecV1>(bytes) {
                Ok(v1) => Ok(Self {
                    redundancy: v1.redundancy,
                    quorum: v1.quorum,
                    max_replicas: v1.max_replicas,
                    limits: v1.limits,
                    soft_timeout: v1.soft_timeout,
                    replication: Replication::Fixed,
                }),
                Err(_) => Err(e.to_string()),
            },
        }
    }

    /// Whether the trust rules apply: adaptive, and a quorum of at least two.
    pub fn adaptive(&self) -> bool {
        self.replication == Replication::Adaptive && self.quorum >= 2
    }

    /// Checks the numbers make sense together.
    pub fn check(&self) -> Result<(), String> {
        if self.quorum == 0 || self.redundancy == 0 {
            return Err("--redundancy and --quorum must be at least 1".into());
        }
        if self.quorum > self.redundancy {
            return Err(format!(
                "--quorum {} is more than --redundancy {}: a chunk could never be accepted",
                self.quorum, self.redundancy
            ));
        }
        if self.max_replicas < self.redundancy || self.max_replicas > 16 {
            return Err(format!(
                "--max-replicas must be between --redundancy ({}) and 16, got {}",
                self.redundancy, self.max_replicas
            ));
        }
        Ok(())
    }
}

pub use crate::types::JobState;

/// A verified (or given-up) chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkState {
    /// Still being worked on.
    Pending,
    /// `quorum` distinct peers agreed on this outcome.
    Verified {
        /// The outcome.
        outcome: WireOutcome,
        /// Hash of the agreed output (stored as a blob when not empty).
        output: BlobHash,
        /// The agreement key (outcome + output hash).
        key: [u8; 32],
    },
    /// No agreement within `max_replicas`.
    Failed(String),
}

/// Where one replica is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaState {
    /// Offered; waiting for the worker's reply.
    Offered,
    /// Accepted by the worker at this time (unix ms).
    Issued(u64),
    /// Result received.
    Returned {
        /// Agreement key.
        key: [u8; 32],
        /// The outcome.
        outcome: WireOutcome,
        /// Output hash.
        output: BlobHash,
        /// Fuel reported.
        fuel: u64,
        /// The output itself when small, kept until the chunk is verified (then in
        /// the database only).
        data: Option<Vec<u8>>,
        /// The worker's signature over the result.
        signature: Vec<u8>,
    },
    /// Not returned within the soft timeout. It is no longer live: a late result
    /// is acknowledged and ignored (a second identity must not be able to join the
    /// quorum through a replica the chunk gave up on).
    TimedOut(u64),
    /// The worker left, refused, or sent something unusable.
    Lost,
    /// The worker handed it back (`WireOutcome::Withdrawn`). Not counted against the
    /// chunk's replica budget (withdrawals have budgets of their own, per peer and per
    /// network); a late result for it is ignored.
    Withdrawn,
}

impl ReplicaState {
    /// The stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Offered => "offered",
            Self::Issued(_) => "issued",
            Self::Returned { .. } => "returned",
            Self::TimedOut(_) => "timed_out",
            Self::Lost => "lost",
            Self::Withdrawn => "withdrawn",
        }
    }

    /// The state as stored (without its payload).
    pub fn status(&self) -> crate::types::ReplicaStatus {
        use crate::types::ReplicaStatus;
        match self {
            Self::Offered => ReplicaStatus::Offered,
            Self::Issued(_) => ReplicaStatus::Issued,
            Self::Returned { .. } => ReplicaStatus::Returned,
            Self::TimedOut(_) => ReplicaStatus::TimedOut,
            Self::Lost => ReplicaStatus::Lost,
            Self::Withdrawn => ReplicaStatus::Withdrawn,
        }
    }

    /// Whether a result may still come (offered or issued).
    pub fn is_live(&self) -> bool {
        matches!(self, Self::Offered | Self::Issued(_))
    }
}

/// One replica of a chunk on one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Attempt number (index among the chunk's replicas).
    pub attempt: u32,
    /// The worker.
    pub peer: PeerId,
    /// Where it is.
    pub state: ReplicaState,
    /// A check of a chunk already verified (a plant, or this node's spot check): a
    /// different answer is proof of a lie.
    pub check: bool,
}

/// One chunk.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Its input (shared: a chunk is copied when a change to it is staged, its input
    /// never is).
    pub input: std::sync::Arc<Payload>,
    /// Hash of the input.
    pub input_hash: BlobHash,
    /// Where it is.
    pub state: ChunkState,
    /// Every replica ever issued.
    pub replicas: Vec<Replica>,
    /// Set when the chunk was given to one trusted peer alone (adaptive replication);
    /// once verified, the result rests on that peer's word.
    pub solo: Option<PeerId>,
}

/// What [`Chunk::evaluate`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `quorum` distinct peers agree on the outcome with this key.
    Verified([u8; 32]),
    /// Issue this many more replicas (to peers not yet used for this chunk).
    Need(u32),
    /// Peers agree, but none of them is trusted: one replica on a trusted peer (or
    /// this node itself) is needed to witness it.
    NeedWitness,
    /// Wait for replicas in flight.
    Wait,
    /// No agreement is possible within the limits.
    Failed(String),
    /// Replicas disagree and the chunk is cheap enough: this node runs it and its
    /// own answer decides (the [`Referee`]).
    Referee,
}

/// What this submitter brings to a chunk's verdict: its own runs decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Referee {
    /// This node: a deterministic result of its own settles the chunk.
    pub local: PeerId,
    /// Disputes over chunks that used at most this much fuel (the least any replica
    /// reported) are refereed by this node's own run; 0: never.
    pub fuel_budget: u64,
}

/// The key results are compared by: the outcome and the output hash together.
pub fn agreement_key(outcome: &WireOutcome, output: &BlobHash) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&postcard::to_allocvec(outcome).unwrap_or_default());
    h.update(&output.0);
    *h.finalize().as_bytes()
}

/// Whether honest peers always agree on this outcome (so it can be verified).
/// A worker's wall-clock timeout depends on its machine; `Invalid` means the worker
/// could not instantiate a module the submitter itself validated, so it is the
/// worker's fault. Neither is ever accepted as the chunk's answer.
pub fn is_deterministic(outcome: &WireOutcome) -> bool {
    !matches!(
        outcome,
        WireOutcome::Timeout | WireOutcome::Invalid(_) | WireOutcome::Withdrawn
    )
}

impl Chunk {
    /// Groups of distinct peers by agreement key, over deterministic returned
    /// results of peers not excluded. A chunk has a handful of replicas, so a vector
    /// beats a map here.
    pub fn groups(&self, standing: &dyn Fn(&PeerId) -> Standing) -> Vec<([u8; 32], Vec<PeerId>)> {
        let mut groups: Vec<([u8; 32], Vec<PeerId>)> = Vec::new();
        for r in &self.replicas {
            if let ReplicaState::Returned { key, outcome, .. } = &r.state
                && is_deterministic(outcome)
                && standing(&r.peer) != Standing::Excluded
            {
                match groups.iter_mut().find(|(k, _)| k == key) {
                    Some((_, peers)) if !peers.contains(&r.peer) => peers.push(r.peer),
                    Some(_) => {}
                    None => groups.push((*key, vec![r.peer])),
                }
            }
        }
        groups
    }

    /// Decides what the chunk needs next, given each peer's standing (this node
    /// itself is always trusted). Replicas with a deterministic result and those in
    /// flight count towards `max_replicas`; replicas that were lost or timed out are
    /// replaced, up to twice `max_replicas` replicas in all. Results of excluded
    /// peers are ignored.
    ///
    /// In an adaptive job, a chunk given to one trusted peer alone ([`Chunk::solo`])
    /// is verified by that peer's result; any other chunk needs `quorum` agreeing
    /// peers of which at least one is trusted.
    ///
    /// Until one replica has answered, a chunk with a quorum of two or more has at
    /// most one out: the first answer is given blind (see the comment at the end of
    /// [`Chunk::judge`]).
    pub fn evaluate(&self, spec: &JobSpec, standing: &dyn Fn(&PeerId) -> Standing) -> Verdict {
        self.judge(spec, standing, None)
    }

    /// [`Chunk::evaluate`] on a submitter that referees: a deterministic result of
    /// its own run decides the chunk (whatever the peers said), and a dispute (two
    /// deterministic answers) over a chunk cheap enough is sent to it
    /// ([`Verdict::Referee`]) before any quorum is counted, so that a majority of
    /// liars never outvotes an honest peer.
    pub fn judge(
        &self,
        spec: &JobSpec,
        standing: &dyn Fn(&PeerId) -> Standing,
        referee: Option<&Referee>,
    ) -> Verdict {
        let adaptive = spec.adaptive();
        let groups = self.groups(standing);
        if let Some(referee) = referee {
            let own = self.replicas.iter().filter(|r| r.peer == referee.local);
            let mut ran = false;
            // In a fixed job, this node's own worker is one replica of the quorum
            // like any other, until there is a dispute.
            let disputed = groups.len() >= 2;
            for r in own {
                ran = true;
                match &r.state {
                    ReplicaState::Returned { key, outcome, .. }
                        if is_deterministic(outcome)
                            && (adaptive || groups.iter().any(|(k, _)| k != key)) =>
                    {
                        return Verdict::Verified(*key);
                    }
                    s if s.is_live() && (adaptive || disputed) => return Verdict::Wait,
                    _ => {}
                }
            }
            if !ran && groups.len() >= 2 && referee.fuel_budget > 0 {
                let fuel = self
                    .replicas
                    .iter()
                    .filter_map(|r| match &r.state {
                        ReplicaState::Returned { fuel, outcome, .. }
                            if is_deterministic(outcome) =>
                        {
                            Some(*fuel)
                        }
                        _ => None,
                    })
                    .min()
                    .unwrap_or(u64::MAX);
                if fuel <= referee.fuel_budget {
                    return Verdict::Referee;
                }
            }
        }
        if adaptive
            && let Some(solo) = self.solo
            && standing(&solo) == Standing::Trusted
        {
            if let Some((key, _)) = groups.iter().find(|(_, peers)| peers.contains(&solo)) {
                return Verdict::Verified(*key);
            }
            if self
                .replicas
                .iter()
                .any(|r| r.peer == solo && r.state.is_live())
            {
                return Verdict::Wait;
            }
            // Lost, timed out or failed non-deterministically: replicate it.
        }
        let witnessed = |peers: &Vec<PeerId>| {
            !adaptive || peers.iter().any(|p| standing(p) == Standing::Trusted)
        };
        if let Some((key, _)) = groups
            .iter()
            .filter(|(_, peers)| peers.len() as u32 >= spec.quorum && witnessed(peers))
            .max_by_key(|(_, peers)| peers.len())
        {
            return Verdict::Verified(*key);
        }
        let live = self.replicas.iter().filter(|r| r.state.is_live()).count() as u32;
        let returned: u32 = groups.iter().map(|(_, p)| p.len() as u32).sum();
        let room = spec.max_replicas.saturating_sub(live + returned);
        // Withdrawn replicas do not use up the chunk's budget (a withdrawer could
        // otherwise fail any chunk); their own budgets bound them.
        let spent = self
            .replicas
            .iter()
            .filter(|r| r.state != ReplicaState::Withdrawn)
            .count() as u32;
        let total_room = (spec.max_replicas * 2).saturating_sub(spent);
        if groups
            .iter()
            .any(|(_, peers)| peers.len() as u32 >= spec.quorum)
        {
            // Agreement without a trusted peer in it (adaptive only).
            let witness_live = self
                .replicas
                .iter()
                .any(|r| r.state.is_live() && standing(&r.peer) == Standing::Trusted);
            if witness_live {
                return Verdict::Wait;
            }
            if room.min(total_room) > 0 {
                return Verdict::NeedWitness;
            }
            if live == 0 {
                return Verdict::Failed(format!(
                    "{} peers on probation agreed but no trusted peer confirmed it within {} replicas",
                    spec.quorum,
                    self.replicas.len()
                ));
            }
            return Verdict::Wait;
        }
        let best = groups
            .iter()
            .map(|(_, p)| p.len() as u32)
            .max()
            .unwrap_or(0);
        let needed = spec
            .redundancy
            .saturating_sub(live + returned)
            .max(spec.quorum.saturating_sub(best + live));
        let can = needed.min(room).min(total_room);
        // Until one replica has answered, only one is out at a time: the peer that
        // answers first cannot know whether anyone else will hold the chunk, so a
        // coalition cannot wait until it holds every replica to lie. It must lie
        // blind, and meets an honest answer (and the referee) unless every later
        // replica is its own too. Once an answer is in, every other is judged
        // against it, and the rest go out together.
        // (An answer that counts: an excluded peer's does not.)
        // With a quorum of one, one answer decides anyway and there is no quorum to
        // wait for: the replicas asked for beyond it race for speed, and go out
        // together.
        let blind = returned == 0 && spec.quorum >= 2;
        let can = match (blind, live) {
            (false, _) => can,
            (true, 0) => can.min(1),
            (true, _) => 0,
        };
        if can > 0 {
            return Verdict::Need(can);
        }
        if needed > 0 && live == 0 {
            return Verdict::Failed(format!(
                "no {} matching results after {} replicas ({} distinct outcomes)",
                spec.quorum,
                self.replicas.len(),
                groups.len()
            ));
        }
        Verdict::Wait
    }

    /// Whether the chunk's replicas hold a trusted peer (live or returned).
    pub fn has_trusted(&self, standing: &dyn Fn(&PeerId) -> Standing) -> bool {
        self.replicas.iter().any(|r| {
            !matches!(
                r.state,
                ReplicaState::Lost | ReplicaState::TimedOut(_) | ReplicaState::Withdrawn
            ) && standing(&r.peer) == Standing::Trusted
        })
    }

    /// The attempt number of the next replica.
    pub fn next_attempt(&self) -> u32 {
        self.replicas
            .iter()
            .map(|r| r.attempt + 1)
            .max()
            .unwrap_or(0)
    }

    /// Peers already used for this chunk (replicas of a chunk never share a peer).
    pub fn used_peers(&self) -> impl Iterator<Item = &PeerId> {
        self.replicas.iter().map(|r| &r.peer)
    }
}

/// A job on its submitter.
#[derive(Debug)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// A name for people.
    pub name: String,
    /// The module blob.
    pub module: BlobHash,
    /// How it runs.
    pub spec: JobSpec,
    /// Where it is.
    pub state: JobState,
    /// Its chunks.
    pub chunks: Vec<Chunk>,
    /// When it was submitted (unix ms).
    pub created_ms: u64,
    /// When it ended.
    pub finished_ms: Option<u64>,
    /// The merged result.
    pub result: Option<BlobHash>,
    /// Why it failed.
    pub error: Option<String>,
    /// Why nothing moves, when that is the case.
    pub why: Option<String>,
    /// What adaptive replication did (since this node started).
    pub trust: super::TrustCounts,
    /// Its chunks by state, kept as chunks change (for the metrics gauges).
    pub counts: ChunkCounts,
    /// Its live and withdrawn replicas per peer, kept as chunks change (placement's
    /// per-network caps read them without walking every chunk).
    pub replicas: ReplicaCounts,
}

/// Chunks of a job by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkCounts {
    /// Still being worked on.
    pub pending: u32,
    /// Verified (to a result or a verified failure).
    pub verified: u32,
    /// Given up.
    pub failed: u32,
}

impl ChunkCounts {
    /// Counts `chunks`.
    pub fn of(chunks: &[Chunk]) -> Self {
        let mut counts = Self::default();
        for c in chunks {
            counts.add(&c.state, 1);
        }
        counts
    }

    /// Adds (`n = 1`) or removes (`n = -1`) a chunk in `state`.
    pub fn add(&mut self, state: &ChunkState, n: i32) {
        let slot = match state {
            ChunkState::Pending => &mut self.pending,
            ChunkState::Verified { .. } => &mut self.verified,
            ChunkState::Failed(_) => &mut self.failed,
        };
        *slot = slot.saturating_add_signed(n);
    }
}

/// A job's replicas per peer: those live (offered, issued or running) and those
/// withdrawn. [`State::apply`](super::staged::State::apply) keeps it as chunks
/// change, so a dispatch reads it in time proportional to the peers, not the chunks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaCounts {
    /// Live replicas per peer.
    pub live: std::collections::HashMap<PeerId, u32>,
    /// Withdrawn replicas per peer.
    pub withdrawn: std::collections::HashMap<PeerId, u32>,
}

impl ReplicaCounts {
    /// Counts the replicas of `chunks`.
    pub fn of(chunks: &[Chunk]) -> Self {
        let mut counts = Self::default();
        for c in chunks {
            counts.add(c, 1);
        }
        counts
    }

    /// Adds (`n = 1`) or removes (`n = -1`) the replicas of `chunk`.
    pub fn add(&mut self, chunk: &Chunk, n: i32) {
        for r in &chunk.replicas {
            let map = if r.state.is_live() {
                &mut self.live
            } else if r.state == ReplicaState::Withdrawn {
                &mut self.withdrawn
            } else {
                continue;
            };
            if n > 0 {
                *map.entry(r.peer).or_default() += 1;
            } else if let Some(count) = map.get_mut(&r.peer) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    map.remove(&r.peer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk() -> Chunk {
        Chunk {
            input: std::sync::Arc::new(Payload::Inline(vec![])),
            input_hash: BlobHash::of(b""),
            state: ChunkState::Pending,
            replicas: Vec::new(),
            solo: None,
        }
    }

    fn fixed() -> JobSpec {
        JobSpec {
            replication: Replication::Fixed,
            ..JobSpec::default()
        }
    }

    fn all_trusted(_: &PeerId) -> Standing {
        Standing::Trusted
    }

    fn returned(peer: PeerId, output: &[u8]) -> Replica {
        let output = BlobHash::of(output);
        Replica {
            attempt: 0,
            peer,
            state: ReplicaState::Returned {
                key: agreement_key(&WireOutcome::Ok, &output),
                outcome: WireOutcome::Ok,
                output,
                fuel: 1,
                data: None,
                signature: Vec::new(),
            },
            check: false,
        }
    }

    fn issued(peer: PeerId) -> Replica {
        Replica {
            attempt: 0,
            peer,
            state: ReplicaState::Issued(0),
            check: false,
        }
    }

    #[test]
    fn a_fresh_chunk_gets_one_replica_then_the_rest_once_it_answered() {
        let spec = JobSpec {
            redundancy: 3,
            max_replicas: 4,
            ..fixed()
        };
        // One at a time until an answer is in: whoever answers first cannot know
        // whether anyone else will hold the chunk.
        let mut c = chunk();
        assert_eq!(c.evaluate(&spec, &all_trusted), Verdict::Need(1));
        c.replicas.push(issued(PeerId::random()));
        assert_eq!(c.evaluate(&spec, &all_trusted), Verdict::Wait);
        // Lost before it answered: the next goes out alone too.
        c.replicas[0].state = ReplicaState::TimedOut(0);
        assert_eq!(c.evaluate(&spec, &all_trusted), Verdict::Need(1));
        // An excluded peer's answer does not count as one.
        let x = PeerId::random();
        c.replicas.push(returned(x, b"lie"));
        let excluded = |p: &PeerId| {
            if *p == x {
                Standing::Excluded
            } else {
                Standing::Trusted
            }
        };
        assert_eq!(c.evaluate(&spec, &excluded), Verdict::Need(1));
        // Once an answer counts, the rest of the redundancy goes out together.
        assert_eq!(c.evaluate(&spec, &all_trusted), Verdict::Need(2));
    }

    #[test]
    fn with_a_quorum_of_one_every_replica_goes_out_at_once() {
        // Redundancy 2, quorum 1: the submitter races two peers and takes the first
        // answer; holding the second back until the first answered would defeat it.
        let spec = JobSpec {
            redundancy: 2,
            quorum: 1,
            ..fixed()
        };
        let mut c = chunk();
        assert_eq!(c.evaluate(&spec, &all_trusted), Verdict::Need(2));
        c.replicas.push(issued(PeerId::random()));
        assert_eq!(c.evaluate(&spec, &all_trusted), Verdict::Need(1));
        c.replicas.push(issued(PeerId::random()));
        assert_eq!(c.evaluate(&spec, &all_trusted), Verdict::Wait);
    }

    #[test]
    fn two_agreeing_peers_verify_and_one_peer_twice_does_not() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut c = chunk();
        c.replicas = vec![returned(a, b"x"), returned(a, b"x")];
        assert_ne!(
            std::mem::discriminant(&c.evaluate(&fixed(), &all_trusted)),
            std::mem::discriminant(&Verdict::Verified([0; 32]))
        );
        c.replicas.push(returned(b, b"x"));
        assert!(matches!(
            c.evaluate(&fixed(), &all_trusted),
            Verdict::Verified(_)
        ));
    }

    #[test]
    fn disagreement_asks_for_one_more_then_gives_up_at_the_cap() {
        let spec = JobSpec {
            max_replicas: 3,
            ..fixed()
        };
        let mut c = chunk();
        c.replicas = vec![
            returned(PeerId::random(), b"x"),
            returned(PeerId::random(), b"y"),
        ];
        assert_eq!(c.evaluate(&spec, &all_trusted), Verdict::Need(1));
        c.replicas.push(issued(PeerId::random()));
        assert_eq!(c.evaluate(&spec, &all_trusted), Verdict::Wait);
        c.replicas.pop();
        c.replicas.push(returned(PeerId::random(), b"z"));
        assert!(matches!(
            c.evaluate(&spec, &all_trusted),
            Verdict::Failed(_)
        ));
        c.replicas.pop();
        c.replicas.push(returned(PeerId::random(), b"x"));
        assert!(matches!(
            c.evaluate(&spec, &all_trusted),
            Verdict::Verified(_)
        ));
    }

    #[test]
    fn lost_replicas_are_replaced_but_not_forever() {
        let spec = fixed();
        let mut c = chunk();
        for _ in 0..(spec.max_replicas * 2) {
            assert!(matches!(c.evaluate(&spec, &all_trusted), Verdict::Need(_)));
            c.replicas.push(Replica {
                attempt: 0,
                peer: PeerId::random(),
                state: ReplicaState::Lost,
                check: false,
            });
        }
        assert!(matches!(
            c.evaluate(&spec, &all_trusted),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn disputes_go_to_the_referee_whose_own_run_decides() {
        let (a, b, c, me) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let referee = Referee {
            local: me,
            fuel_budget: 10,
        };
        let spec = fixed();
        // Two liars agree, one honest peer disagrees: no quorum is counted, the
        // dispute is refereed.
        let mut ch = chunk();
        ch.replicas = vec![
            returned(a, b"lie"),
            returned(b, b"lie"),
            returned(c, b"truth"),
        ];
        assert_eq!(
            ch.judge(&spec, &all_trusted, Some(&referee)),
            Verdict::Referee
        );
        // Without a referee (or over its budget) the majority would have won.
        assert!(matches!(
            ch.evaluate(&spec, &all_trusted),
            Verdict::Verified(_)
        ));
        let stingy = Referee {
            fuel_budget: 0,
            ..referee
        };
        assert!(matches!(
            ch.judge(&spec, &all_trusted, Some(&stingy)),
            Verdict::Verified(_)
        ));
        // While this node runs it, wait; its deterministic answer decides.
        ch.replicas.push(issued(me));
        assert_eq!(ch.judge(&spec, &all_trusted, Some(&referee)), Verdict::Wait);
        ch.replicas.pop();
        ch.replicas.push(returned(me, b"truth"));
        let truth = agreement_key(&WireOutcome::Ok, &BlobHash::of(b"truth"));
        assert_eq!(
            ch.judge(&spec, &all_trusted, Some(&referee)),
            Verdict::Verified(truth)
        );
        // In a fixed job with no dispute, this node's own worker is one replica of
        // the quorum, not the judge.
        let mut alone = chunk();
        alone.replicas = vec![returned(me, b"truth")];
        assert_eq!(
            alone.judge(&spec, &all_trusted, Some(&referee)),
            Verdict::Need(1)
        );
    }

    #[test]
    fn withdrawals_never_use_up_a_chunks_replica_budget() {
        let spec = fixed();
        let mut c = chunk();
        for _ in 0..spec.max_replicas * 4 {
            c.replicas.push(Replica {
                attempt: c.next_attempt(),
                peer: PeerId::random(),
                state: ReplicaState::Withdrawn,
                check: false,
            });
        }
        assert_eq!(c.evaluate(&spec, &all_trusted), Verdict::Need(1));
        c.replicas.push(returned(PeerId::random(), b"x"));
        assert_eq!(c.evaluate(&spec, &all_trusted), Verdict::Need(1));
    }

    #[test]
    fn specs_are_checked() {
        assert!(JobSpec::default().check().is_ok());
        let bad = JobSpec {
            quorum: 3,
            ..JobSpec::default()
        };
        assert!(bad.check().unwrap_err().contains("quorum"));
        let single = JobSpec {
            redundancy: 1,
            quorum: 1,
            max_replicas: 1,
            ..JobSpec::default()
        };
        assert!(single.check().is_ok());
    }

    #[test]
    fn peers_on_probation_never_verify_each_other() {
        let (a, b, t) = (PeerId::random(), PeerId::random(), PeerId::random());
        let standing = move |p: &PeerId| {
            if *p == t {
                Standing::Trusted
            } else {
                Standing::Probation
            }
        };
        let spec = JobSpec::default();
        let mut c = chunk();
        c.replicas = vec![returned(a, b"x"), returned(b, b"x")];
        assert_eq!(c.evaluate(&spec, &standing), Verdict::NeedWitness);
        c.replicas.push(issued(t));
        assert_eq!(c.evaluate(&spec, &standing), Verdict::Wait);
        c.replicas.pop();
        c.replicas.push(returned(t, b"x"));
        assert!(matches!(c.evaluate(&spec, &standing), Verdict::Verified(_)));
        // The same two under fixed replication verify on their own.
        c.replicas.pop();
        assert!(matches!(
            c.evaluate(&fixed(), &standing),
            Verdict::Verified(_)
        ));
    }

    #[test]
    fn a_solo_chunk_rests_on_its_trusted_peer_until_that_peer_loses_trust() {
        let t = PeerId::random();
        let mut c = chunk();
        c.solo = Some(t);
        c.replicas = vec![issued(t)];
        let spec = JobSpec::default();
        assert_eq!(c.evaluate(&spec, &all_trusted), Verdict::Wait);
        c.replicas = vec![returned(t, b"x")];
        assert!(matches!(
            c.evaluate(&spec, &all_trusted),
            Verdict::Verified(_)
        ));
        // Demoted to probation: its answer is one vote, and needs a trusted second.
        let probation = |_: &PeerId| Standing::Probation;
        assert_eq!(c.evaluate(&spec, &probation), Verdict::Need(1));
        // Excluded: its answer does not count at all (and the chunk starts again
        // with one replica).
        let excluded = |_: &PeerId| Standing::Excluded;
        assert_eq!(c.evaluate(&spec, &excluded), Verdict::Need(1));
    }

    #[test]
    fn specs_stored_before_adaptive_replication_decode_as_fixed() {
        #[derive(Serialize)]
        struct Old {
            redundancy: u32,
            quorum: u32,
            max_replicas: u32,
            limits: Limits,
            soft_timeout: Duration,
        }
        let bytes = postcard::to_allocvec(&Old {
            redundancy: 3,
            quorum: 2,
            max_replicas: 6,
            limits: Limits::CHUNK,
            soft_timeout: Duration::from_secs(9),
        })
        .unwrap();
        let spec = JobSpec::decode(&bytes).unwrap();
        assert_eq!((spec.redundancy, spec.replication), (3, Replication::Fixed));
        let new = postcard::to_allocvec(&JobSpec::default()).unwrap();
        assert_eq!(JobSpec::decode(&new).unwrap(), JobSpec::default());
        assert!(JobSpec::decode(b"\xff").is_err());
    }
}
