//! The simulated population of `bench trust`: honest peers as real ones behave
//! (finite slots, refusing offers when full; varied answer latencies; some leave for
//! a while and come back) and adversaries playing the [`Strategy`]s they were given.
//!
//! Everything here is the bench's: no adversary code is in the node's daemon paths.
//! Time is counted in *rounds* of the delivery task (one per turn it gets on the
//! bench's single thread), so a seeded run takes the same turns every time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use libp2p::identity::Keypair;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::net::protocol::{
    Assignment, BlobHash, CapacityAdvert, ChunkResult, MAX_ADVERT_SLOTS, PROTOCOL_VERSION, Payload,
    ResultContext, TaskReply, TaskRequest, WireOutcome,
};
use crate::net::sim::SimulatedPeers;
use crate::net::{PeerInfo, RequestError};
use crate::sandbox::{JobModule, Limits, Sandbox};
use crate::types::JobId;

/// What an adversary does. Several compose: a peer given `a,b` plays both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Wrong at `--lie-rate`, each in its own way.
    Liar,
    /// Wrong at `--lie-rate`, all the same way on the same chunks.
    Colluder,
    /// Accepts work and never answers.
    Lazy,
    /// Advertises the most slots a real peer could (65 536) to win placement.
    Inflate,
    /// Colluders that lie only when they hold every replica of a chunk given so far
    /// (at least two) and none of them has answered it honestly: they never
    /// contradict an honest answer they could know of.
    CoPlaced,
    /// Honest until it has a long record, then lies at `--lie-rate`.
    TrustThenLie,
    /// Withdraws at `--lie-rate`, then sends a late lie for the withdrawn attempt.
    WithdrawLate,
    /// Colluders under fresh identities every few hundred offers, in one /24 (or
    /// spread with `--sybil-spread`).
    SybilChurn,
    /// Colluders that always lie on re-issued chunks (witnesses, plants), to get
    /// the honest peers that check them blamed.
    PlantPoison,
    /// Accepts everything (advertising 65 536 slots) and withdraws or stalls it.
    JobKiller,
}

impl Strategy {
    /// Every strategy, in order.
    pub const ALL: [Strategy; 10] = [
        Self::Liar,
        Self::Colluder,
        Self::Lazy,
        Self::Inflate,
        Self::CoPlaced,
        Self::TrustThenLie,
        Self::WithdrawLate,
        Self::SybilChurn,
        Self::PlantPoison,
        Self::JobKiller,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Liar => "liar",
            Self::Colluder => "colluder",
            Self::Lazy => "lazy",
            Self::Inflate => "inflate",
            Self::CoPlaced => "co-placed",
            Self::TrustThenLie => "trust-then-lie",
            Self::WithdrawLate => "withdraw-late",
            Self::SybilChurn => "sybil-churn",
            Self::PlantPoison => "plant-poison",
            Self::JobKiller => "job-killer",
        }
    }
}

/// Offers a Sybil identity takes before it is replaced by a fresh one.
const SYBIL_LIFETIME: u32 = 300;
/// Results a trust-then-lie peer answers honestly first.
const TRUST_FIRST: u32 = 100;
/// Rounds an honest or lying answer takes, at most (per peer, drawn).
const MAX_LATENCY: u64 = 6;
/// Rounds after which a stalled replica frees its slot on the peer.
const STALL: u64 = 400;
/// Rounds per churn epoch; an honest peer is away for an epoch with [`AWAY`].
const EPOCH: u64 = 2_000;
const AWAY: f64 = 0.05;

/// One simulated peer.
struct Peer {
    key: Keypair,
    id: PeerId,
    /// Empty: honest.
    plays: Vec<Strategy>,
    slots: u32,
    latency: u64,
    ip: String,
    /// Replicas held now.
    held: u32,
    /// Results answered so far.
    answered: u32,
    /// Offers seen under this identity.
    offers: u32,
    generation: u64,
}

impl Peer {
    fn plays(&self, s: Strategy) -> bool {
        self.plays.contains(&s)
    }

    fn honest(&self) -> bool {
        self.plays.is_empty()
    }
}

/// What happens to an accepted replica when its round comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Answer,
    Withdraw,
    /// A late (lying) answer for an attempt withdrawn before.
    LateLie,
    /// Never answered: the slot frees.
    Stall,
}

struct Pending {
    peer: usize,
    generation: u64,
    job: JobId,
    assignment: Assignment,
    action: Action,
}

/// Honest answers, computed in the real sandbox once per input.
pub(super) struct Honest {
    pub sandbox: Sandbox,
    pub module: JobModule,
    pub cache: Mutex<HashMap<BlobHash, (WireOutcome, Vec<u8>)>>,
}

impl Honest {
    /// The honest outcome and output for `input`, whose hash is `hash`.
    pub(super) fn answer(
        &self,
        input: &[u8],
        hash: BlobHash,
        limits: &Limits,
    ) -> (WireOutcome, Vec<u8>) {
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
        {
            return hit.clone();
        }
        let exec = self.sandbox.run_chunk(&self.module, input, limits);
        let answer =
            crate::worker::wire_outcome(exec.outcome).unwrap_or((WireOutcome::Timeout, Vec::new()));
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, answer.clone());
        answer
    }
}

/// Who plays what: (fraction of the peers, strategies).
pub(super) type Mix = Vec<(f64, Vec<Strategy>)>;

/// The population's state, shared by the simulated network and the delivery task.
pub(super) struct Population {
    peers: Vec<Peer>,
    by_id: HashMap<PeerId, usize>,
    honest: Arc<Honest>,
    lie_rate: f64,
    rng: StdRng,
    seed: u64,
    submitter: PeerId,
    sybil_spread: bool,
    pending: BTreeMap<(u64, u64), Pending>,
    next: u64,
    round: u64,
    /// Adversaries offered each input (for co-placement).
    holders: HashMap<BlobHash, HashSet<usize>>,
    /// Inputs an adversary answered honestly (the coalition knows its own answers).
    answered_honestly: HashSet<BlobHash>,
    /// Identities that ever lied or played (for the figures).
    pub adversary_ids: HashSet<PeerId>,
    /// Honest identities.
    pub honest_ids: Vec<PeerId>,
}

/// A key drawn from the seed (`index` 0 is the submitter).
pub(super) fn seeded_key(seed: u64, index: u64, generation: u64) -> Keypair {
    let mut h = blake3::Hasher::new();
    h.update(b"peergrid bench trust key");
    h.update(&seed.to_le_bytes());
    h.update(&index.to_le_bytes());
    h.update(&generation.to_le_bytes());
    let bytes: [u8; 32] = *h.finalize().as_bytes();
    Keypair::ed25519_from_bytes(bytes).unwrap_or_else(|_| Keypair::generate_ed25519())
}

fn roll(seed: u64, tag: &[u8], data: &[u8]) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(tag);
    h.update(data);
    let bytes: [u8; 8] = h.finalize().as_bytes()[..8].try_into().unwrap_or([0; 8]);
    u64::from_le_bytes(bytes) as f64 / u64::MAX as f64
}

impl Population {
    /// `n` peers; the mix's fractions of them are adversaries, drawn from the seed.
    pub(super) fn new(
        n: usize,
        mix: &Mix,
        lie_rate: f64,
        sybil_spread: bool,
        seed: u64,
        submitter: PeerId,
        honest: Arc<Honest>,
    ) -> Self {
        let mut plays: Vec<Vec<Strategy>> = Vec::new();
        for (fraction, strategies) in mix {
            let count = (fraction * n as f64).round() as usize;
            plays.extend(std::iter::repeat_n(strategies.clone(), count));
        }
        plays.truncate(n);
        plays.resize(n, Vec::new());
        let mut rng = StdRng::seed_from_u64(seed);
        for i in (1..plays.len()).rev() {
            plays.swap(i, rng.random_range(0..=i));
        }
        let mut peers = Vec::new();
        for (i, plays) in plays.into_iter().enumerate() {
            let key = seeded_key(seed, i as u64 + 1, 0);
            let honest = plays.is_empty();
            let slots = if honest {
                [1, 2, 4, 8][rng.random_range(0..4)]
            } else if plays.contains(&Strategy::Inflate) || plays.contains(&Strategy::JobKiller) {
                MAX_ADVERT_SLOTS
            } else {
                4
            };
            let latency = rng.random_range(1..=MAX_LATENCY);
            let mut peer = Peer {
                id: key.public().to_peer_id(),
                key,
                plays,
                slots,
                latency,
                ip: String::new(),
                held: 0,
                answered: 0,
                offers: 0,
                generation: 0,
            };
            peer.ip = ip_of(&peer, i, sybil_spread, &mut rng);
            peers.push(peer);
        }
        let adversary_ids = peers.iter().filter(|p| !p.honest()).map(|p| p.id).collect();
        let honest_ids = peers.iter().filter(|p| p.honest()).map(|p| p.id).collect();
        Self {
            by_id: peers.iter().enumerate().map(|(i, p)| (p.id, i)).collect(),
            peers,
            honest,
            lie_rate: lie_rate.clamp(0.0, 1.0),
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            seed,
            submitter,
            sybil_spread,
            pending: BTreeMap::new(),
            next: 0,
            round: 0,
            holders: HashMap::new(),
            answered_honestly: HashSet::new(),
            adversary_ids,
            honest_ids,
        }
    }

    /// Whether honest peer `i` is away this epoch (churn).
    fn away(&self, i: usize) -> bool {
        let p = &self.peers[i];
        p.honest() && {
            let epoch = self.round / EPOCH;
            let data = [(i as u64).to_le_bytes(), epoch.to_le_bytes()].concat();
            roll(self.seed, b"away", &data) < AWAY
        }
    }

    /// Whether colluders lie about this input: the same decision for all of them.
    fn colluders_lie(&self, input: &[u8]) -> bool {
        roll(self.seed, b"collude", input) < self.lie_rate
    }

    fn coin(&mut self) -> bool {
        self.rng.random_bool(self.lie_rate)
    }

    /// One round of the delivery task: the results due now, signed, by peer.
    pub(super) fn round(&mut self) -> BTreeMap<PeerId, Vec<ChunkResult>> {
        self.round += 1;
        let mut out: BTreeMap<PeerId, Vec<ChunkResult>> = BTreeMap::new();
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 > self.round {
                break;
            }
            let p = entry.remove();
            let i = p.peer;
            if self.peers[i].generation != p.generation {
                continue;
            }
            if p.action != Action::LateLie {
                self.peers[i].held = self.peers[i].held.saturating_sub(1);
            }
            if self.away(i) {
                continue;
            }
            if let Some(result) = self.result(&p) {
                out.entry(self.peers[i].id).or_default().push(result);
            }
        }
        out
    }

    /// Whether anything is still to come.
    pub(super) fn idle(&self) -> bool {
        self.pending.is_empty()
    }

    fn result(&mut self, p: &Pending) -> Option<ChunkResult> {
        let i = p.peer;
        let a = &p.assignment;
        let Payload::Inline(input) = &a.input else {
            return None;
        };
        // Hashed once per answer: the honest cache, the coalition's bookkeeping and
        // the signed context all key on it.
        let input_hash = BlobHash::of(input);
        let (outcome, output) = match p.action {
            Action::Stall => return None,
            Action::Withdraw => (WireOutcome::Withdrawn, Vec::new()),
            Action::Answer | Action::LateLie => {
                let (outcome, honest) = self.honest.answer(input, input_hash, &a.limits);
                let lie = p.action == Action::LateLie || self.lies(i, input, input_hash, a.attempt);
                self.peers[i].answered += 1;
                if !lie && !self.peers[i].honest() {
                    self.answered_honestly.insert(input_hash);
                }
                if lie {
                    let mut h = blake3::Hasher::new();
                    h.update(&honest);
                    if self.peers[i].plays == [Strategy::Liar] {
                        // Each liar is wrong in its own way, every time.
                        h.update(&self.rng.random::<u64>().to_le_bytes());
                    } else {
                        h.update(b"the colluders' answer");
                    }
                    (outcome, h.finalize().as_bytes().to_vec())
                } else {
                    (outcome, honest)
                }
            }
        };
        let mut result = ChunkResult {
            job_id: p.job,
            chunk: a.chunk,
            attempt: a.attempt,
            outcome,
            output_hash: BlobHash::of(&output),
            output: (!output.is_empty()).then_some(Payload::Inline(output)),
            fuel_used: 1,
            exec_micros: 1,
            signature: Vec::new(),
        };
        let ctx = ResultContext {
            submitter: self.submitter,
            module: a.module,
            input: input_hash,
        };
        result.signature = self.peers[i]
            .key
            .sign(&result.signed_bytes(&ctx))
            .unwrap_or_default();
        Some(result)
    }

    /// Whether adversary `i` lies about this input now.
    fn lies(&mut self, i: usize, input: &[u8], key: BlobHash, attempt: u32) -> bool {
        let peer = &self.peers[i];
        if peer.honest() {
            return false;
        }
        let plays: Vec<Strategy> = peer.plays.clone();
        let answered = peer.answered;
        // Every replica so far (attempts 0..=this one) is the coalition's, and none
        // of it answered honestly: a lie now meets no answer it knows of.
        let co_placed = self
            .holders
            .get(&key)
            .is_some_and(|h| h.len() >= 2 && h.len() as u64 > u64::from(attempt))
            && !self.answered_honestly.contains(&key);
        let mut lie = false;
        for s in plays {
            lie |= match s {
                Strategy::Liar => self.coin(),
                Strategy::Colluder | Strategy::SybilChurn => self.colluders_lie(input),
                Strategy::CoPlaced => co_placed && self.colluders_lie(input),
                Strategy::TrustThenLie => answered >= TRUST_FIRST && self.coin(),
                Strategy::PlantPoison => attempt >= 2 || self.colluders_lie(input),
                Strategy::Lazy
                | Strategy::Inflate
                | Strategy::WithdrawLate
                | Strategy::JobKiller => false,
            };
        }
        lie
    }

    fn queue(&mut self, due: u64, peer: usize, job: JobId, assignment: Assignment, action: Action) {
        self.next += 1;
        let generation = self.peers[peer].generation;
        self.pending.insert(
            (due, self.next),
            Pending {
                peer,
                generation,
                job,
                assignment,
                action,
            },
        );
    }

    /// A Sybil that has used up its identity takes a fresh one.
    fn churn_identity(&mut self, i: usize) {
        let p = &mut self.peers[i];
        if !p.plays(Strategy::SybilChurn) || p.offers < SYBIL_LIFETIME {
            return;
        }
        self.by_id.remove(&p.id);
        p.generation += 1;
        p.key = seeded_key(self.seed, i as u64 + 1, p.generation);
        p.id = p.key.public().to_peer_id();
        p.offers = 0;
        p.held = 0;
        p.answered = 0;
        let ip = ip_of(p, i, self.sybil_spread, &mut self.rng);
        let p = &mut self.peers[i];
        p.ip = ip;
        self.adversary_ids.insert(p.id);
        self.by_id.insert(p.id, i);
    }

    fn offer(&mut self, i: usize, job: JobId, assignments: Vec<Assignment>) -> TaskReply {
        let (mut accepted, mut rejected) = (Vec::new(), Vec::new());
        for a in assignments {
            let peer = &self.peers[i];
            let greedy = peer.plays(Strategy::Inflate) || peer.plays(Strategy::JobKiller);
            if !greedy && peer.held >= peer.slots * crate::types::QUEUE_FACTOR {
                rejected.push((
                    a.chunk,
                    a.attempt,
                    crate::net::protocol::RejectReason::NoFreeSlots,
                ));
                continue;
            }
            accepted.push((a.chunk, a.attempt));
            let (due, honest) = (self.round + peer.latency, peer.honest());
            let (killer, lazy, withdraws) = (
                peer.plays(Strategy::JobKiller),
                peer.plays(Strategy::Lazy),
                peer.plays(Strategy::WithdrawLate),
            );
            let action = if killer {
                if self.rng.random_bool(0.5) {
                    Action::Withdraw
                } else {
                    Action::Stall
                }
            } else if lazy {
                Action::Stall
            } else if withdraws && self.coin() {
                Action::Withdraw
            } else {
                Action::Answer
            };
            if !honest {
                self.holders.entry(a.input.hash()).or_default().insert(i);
            }
            let late = action == Action::Withdraw && self.peers[i].plays(Strategy::WithdrawLate);
            let due = if action == Action::Stall {
                self.round + STALL
            } else {
                due
            };
            self.peers[i].held += 1;
            self.peers[i].offers += 1;
            if late {
                self.queue(due + 2, i, job, a.clone(), Action::LateLie);
            }
            self.queue(due, i, job, a, action);
        }
        self.churn_identity(i);
        TaskReply::Offer { accepted, rejected }
    }

    fn info(&self, i: usize) -> PeerInfo {
        let p = &self.peers[i];
        let away = self.away(i);
        PeerInfo {
            path: None,
            via: None,
            peer_id: p.id.to_string(),
            addrs: Vec::new(),
            connected: !away,
            rtt_ms: None,
            agent: None,
            foreign_version: None,
            advert: (!away).then(|| CapacityAdvert {
                version: PROTOCOL_VERSION,
                seq: 1,
                slots_total: p.slots,
                slots_free: p.slots,
                cores: p.slots,
                memory_limit: 1 << 30,
                fuel_per_sec: 1_000_000_000,
                features: Vec::new(),
            }),
            advert_age_s: Some(0.0),
            offences: 0,
            ip: Some(p.ip.clone()),
            discovered: Some("dht".into()),
        }
    }
}

fn ip_of(p: &Peer, i: usize, spread: bool, rng: &mut StdRng) -> String {
    if p.plays(Strategy::SybilChurn) {
        if spread {
            format!(
                "172.{}.{}.{}",
                16 + rng.random_range(0..16),
                rng.random_range(0..256),
                1 + i % 250
            )
        } else {
            format!("10.66.66.{}", 1 + i % 250)
        }
    } else {
        format!("10.{}.{}.1", 1 + i / 250, i % 250)
    }
}

/// The handle the simulated network holds.
pub(super) struct Shared {
    pub pop: Arc<Mutex<Population>>,
    pub wake: Arc<tokio::sync::Notify>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Population> {
        self.pop.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SimulatedPeers for Shared {
    fn peers(&mut self) -> Vec<PeerInfo> {
        let pop = self.lock();
        (0..pop.peers.len()).map(|i| pop.info(i)).collect()
    }

    fn task(&mut self, peer: PeerId, request: TaskRequest) -> Result<TaskReply, RequestError> {
        let mut pop = self.lock();
        let Some(&i) = pop.by_id.get(&peer) else {
            return Err(RequestError::Unreachable);
        };
        if pop.away(i) {
            return Err(RequestError::Unreachable);
        }
        let reply = match request {
            TaskRequest::Offer {
                job_id,
                assignments,
            } => pop.offer(i, job_id, assignments),
            TaskRequest::Cancel { .. } => TaskReply::Cancelled,
        };
        drop(pop);
        self.wake.notify_one();
        Ok(reply)
    }
}
