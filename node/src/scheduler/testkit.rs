//! Fixtures for the scheduler's unit tests: fixed peer keys, jobs in memory, signed
//! results. Test-only.

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::identity::Keypair;

use super::job::{
    Chunk, ChunkCounts, ChunkState, Job, JobSpec, JobState, Replica, ReplicaCounts, ReplicaState,
};
use super::reputation::Reputation;
use super::staged::State;
use super::trust::TrustPolicy;
use crate::store::db::ReputationRow;
use crate::types::{BlobHash, ChunkResult, JobId, Payload, ResultContext, WireOutcome};

/// A fixed key per number.
pub(super) fn key(n: u8) -> Keypair {
    Keypair::ed25519_from_bytes([n.max(1); 32]).expect("a valid key")
}

/// A fixed peer per number.
pub(super) fn peer(n: u8) -> PeerId {
    key(n).public().to_peer_id()
}

/// The node itself in these tests.
pub(super) const LOCAL: u8 = 200;

/// An adaptive spec (quorum 2 of 2, up to 5).
pub(super) fn adaptive() -> JobSpec {
    JobSpec {
        soft_timeout: Duration::from_secs(10),
        ..JobSpec::default()
    }
}

/// A running job with `n` pending chunks.
pub(super) fn job(id: u8, n: usize, spec: JobSpec) -> Job {
    let chunks: Vec<Chunk> = (0..n)
        .map(|i| {
            let input = (i as u32).to_le_bytes().to_vec();
            Chunk {
                input_hash: BlobHash::of(&input),
                input: Arc::new(Payload::Inline(input)),
                state: ChunkState::Pending,
                replicas: Vec::new(),
                solo: None,
            }
        })
        .collect();
    Job {
        id: JobId([id; 16]),
        name: "t".into(),
        module: BlobHash::of(b"module"),
        spec,
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
    }
}

/// A state holding `jobs`, with `trusted` peers trusted (a long streak).
pub(super) fn state(jobs: Vec<Job>, trusted: &[u8]) -> State {
    let rows = trusted
        .iter()
        .map(|&n| ReputationRow {
            peer: peer(n).to_string(),
            agreed: 1000,
            consecutive: 1000,
            ..ReputationRow::default()
        })
        .collect();
    let mut state = State::new(Reputation::load(rows), TrustPolicy::default(), peer(LOCAL));
    for mut job in jobs {
        job.counts = ChunkCounts::of(&job.chunks);
        job.replicas = ReplicaCounts::of(&job.chunks);
        state.jobs.insert(job.id, job);
    }
    state
}

/// A replica issued to peer `n`.
pub(super) fn issued(n: u8, attempt: u32) -> Replica {
    Replica {
        attempt,
        peer: peer(n),
        state: ReplicaState::Issued(1),
        check: false,
    }
}

/// A result from peer `n`, signed with its key.
pub(super) fn result(n: u8, job: u8, chunk: u32, attempt: u32, output: &[u8]) -> ChunkResult {
    let mut r = ChunkResult {
        job_id: JobId([job; 16]),
        chunk,
        attempt,
        outcome: WireOutcome::Ok,
        output_hash: BlobHash::of(output),
        output: (!output.is_empty()).then(|| Payload::Inline(output.to_vec())),
        fuel_used: 1,
        exec_micros: 1,
        signature: Vec::new(),
    };
    sign(n, &mut r);
    r
}

/// What a result for chunk `chunk` of a [`job`] is signed over.
pub(super) fn ctx(chunk: u32) -> ResultContext {
    ResultContext {
        submitter: peer(LOCAL),
        module: BlobHash::of(b"module"),
        input: BlobHash::of(&chunk.to_le_bytes()),
    }
}

/// Signs `r` (again) as peer `n`.
pub(super) fn sign(n: u8, r: &mut ChunkResult) {
    r.signature = key(n).sign(&r.signed_bytes(&ctx(r.chunk))).expect("signs");
}

/// A replica of peer `n` that returned `output`.
pub(super) fn returned(n: u8, attempt: u32, output: &[u8]) -> Replica {
    let hash = BlobHash::of(output);
    Replica {
        attempt,
        peer: peer(n),
        state: ReplicaState::Returned {
            key: super::job::agreement_key(&WireOutcome::Ok, &hash),
            outcome: WireOutcome::Ok,
            output: hash,
            fuel: 1,
            data: Some(output.to_vec()),
            signature: Vec::new(),
        },
        check: false,
    }
}

/// A chunk verified to `output`.
pub(super) fn verified(output: &[u8]) -> ChunkState {
    let hash = BlobHash::of(output);
    ChunkState::Verified {
        key: super::job::agreement_key(&WireOutcome::Ok, &hash),
        outcome: WireOutcome::Ok,
        output: hash,
    }
}
