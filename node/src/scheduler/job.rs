//! A job's live state on its submitter, and the verification rule.
//!
//! Pure data and functions (no I/O): the actor mutates these and writes the changes
//! through to the database. [`Chunk::evaluate`] decides, from the replicas returned
//! so far, whether a chunk is verified, needs more replicas, or has failed.

use std::time::Duration;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::net::protocol::{BlobHash, JobId, Payload, WireOutcome};
use crate::sandbox::Limits;

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
}

impl Default for JobSpec {
    fn default() -> Self {
        Self {
            redundancy: 2,
            quorum: 2,
            max_replicas: 5,
            limits: Limits::CHUNK,
            soft_timeout: Duration::from_secs(120),
        }
    }
}

impl JobSpec {
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

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Chunks are being run and verified.
    Running,
    /// Every chunk verified; merge running.
    Merging,
    /// Done: the result is stored.
    Done,
    /// Ended without a result (a chunk failed or was verified as failing).
    Failed,
    /// Cancelled by its submitter.
    Cancelled,
}

impl JobState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Merging => "merging",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => Self::Running,
            "merging" => Self::Merging,
            "done" => Self::Done,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

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
    },
    /// Not returned within the soft timeout (a late result still counts).
    TimedOut(u64),
    /// The worker left, refused, or sent something unusable.
    Lost,
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
}

/// One chunk.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Its input.
    pub input: Payload,
    /// Hash of the input.
    pub input_hash: BlobHash,
    /// Where it is.
    pub state: ChunkState,
    /// Every replica ever issued.
    pub replicas: Vec<Replica>,
}

/// What [`Chunk::evaluate`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `quorum` distinct peers agree on the outcome with this key.
    Verified([u8; 32]),
    /// Issue this many more replicas (to peers not yet used for this chunk).
    Need(u32),
    /// Wait for replicas in flight.
    Wait,
    /// No agreement is possible within the limits.
    Failed(String),
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
    /// results. A chunk has a handful of replicas, so a vector beats a map here.
    pub fn groups(&self) -> Vec<([u8; 32], Vec<PeerId>)> {
        let mut groups: Vec<([u8; 32], Vec<PeerId>)> = Vec::new();
        for r in &self.replicas {
            if let ReplicaState::Returned { key, outcome, .. } = &r.state
                && is_deterministic(outcome)
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

    /// Decides what the chunk needs next. Replicas with a deterministic result and
    /// those in flight count towards `max_replicas`; replicas that were lost or timed
    /// out are replaced, up to twice `max_replicas` replicas in all.
    pub fn evaluate(&self, spec: &JobSpec) -> Verdict {
        let groups = self.groups();
        if let Some((key, _)) = groups
            .iter()
            .filter(|(_, peers)| peers.len() as u32 >= spec.quorum)
            .max_by_key(|(_, peers)| peers.len())
        {
            return Verdict::Verified(*key);
        }
        let best = groups
            .iter()
            .map(|(_, p)| p.len() as u32)
            .max()
            .unwrap_or(0);
        let live = self.replicas.iter().filter(|r| r.state.is_live()).count() as u32;
        let returned: u32 = groups.iter().map(|(_, p)| p.len() as u32).sum();
        let needed = spec
            .redundancy
            .saturating_sub(live + returned)
            .max(spec.quorum.saturating_sub(best + live));
        let room = spec.max_replicas.saturating_sub(live + returned);
        let total_room = (spec.max_replicas * 2).saturating_sub(self.replicas.len() as u32);
        let can = needed.min(room).min(total_room);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk() -> Chunk {
        Chunk {
            input: Payload::Inline(vec![]),
            input_hash: BlobHash::of(b""),
            state: ChunkState::Pending,
            replicas: Vec::new(),
        }
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
            },
        }
    }

    fn issued(peer: PeerId) -> Replica {
        Replica {
            attempt: 0,
            peer,
            state: ReplicaState::Issued(0),
        }
    }

    #[test]
    fn a_fresh_chunk_needs_redundancy_replicas() {
        assert_eq!(chunk().evaluate(&JobSpec::default()), Verdict::Need(2));
    }

    #[test]
    fn two_agreeing_peers_verify_and_one_peer_twice_does_not() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut c = chunk();
        c.replicas = vec![returned(a, b"x"), returned(a, b"x")];
        assert_ne!(
            std::mem::discriminant(&c.evaluate(&JobSpec::default())),
            std::mem::discriminant(&Verdict::Verified([0; 32]))
        );
        c.replicas.push(returned(b, b"x"));
        assert!(matches!(
            c.evaluate(&JobSpec::default()),
            Verdict::Verified(_)
        ));
    }

    #[test]
    fn disagreement_asks_for_one_more_then_gives_up_at_the_cap() {
        let spec = JobSpec {
            max_replicas: 3,
            ..JobSpec::default()
        };
        let mut c = chunk();
        c.replicas = vec![
            returned(PeerId::random(), b"x"),
            returned(PeerId::random(), b"y"),
        ];
        assert_eq!(c.evaluate(&spec), Verdict::Need(1));
        c.replicas.push(issued(PeerId::random()));
        assert_eq!(c.evaluate(&spec), Verdict::Wait);
        c.replicas.pop();
        c.replicas.push(returned(PeerId::random(), b"z"));
        assert!(matches!(c.evaluate(&spec), Verdict::Failed(_)));
        c.replicas.pop();
        c.replicas.push(returned(PeerId::random(), b"x"));
        assert!(matches!(c.evaluate(&spec), Verdict::Verified(_)));
    }

    #[test]
    fn lost_replicas_are_replaced_but_not_forever() {
        let spec = JobSpec::default();
        let mut c = chunk();
        for _ in 0..(spec.max_replicas * 2) {
            assert!(matches!(c.evaluate(&spec), Verdict::Need(_)));
            c.replicas.push(Replica {
                attempt: 0,
                peer: PeerId::random(),
                state: ReplicaState::Lost,
            });
        }
        assert!(matches!(c.evaluate(&spec), Verdict::Failed(_)));
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
}
