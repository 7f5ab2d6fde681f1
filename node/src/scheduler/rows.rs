//! Between the scheduler's live state ([`job`](super::job)) and the database's rows
//! ([`store::db`](crate::store::db)): a job loaded back from its rows, a new job's
//! rows, a replica's row, outcomes encoded. Pure; the [actor](super::actor) reads
//! and writes the rows through [`Db::run`](crate::store::Db::run).

use std::sync::Arc;

use libp2p::PeerId;

use super::job::{
    Chunk, ChunkCounts, ChunkState, Job, JobSpec, JobState, Replica, ReplicaCounts, ReplicaState,
    agreement_key,
};
use crate::store::Db;
use crate::store::db::{ChunkRow, DbError, JobRow, ReplicaRow, Write};
use crate::types::{ChunkStatus, Payload, ReplicaStatus, WireOutcome};

/// An outcome as stored.
pub(super) fn encode_outcome(o: &WireOutcome) -> Vec<u8> {
    postcard::to_allocvec(o).unwrap_or_default()
}

/// A stored outcome, if readable.
pub(super) fn decode_outcome(bytes: Option<&[u8]>) -> Option<WireOutcome> {
    bytes.and_then(|b| postcard::from_bytes(b).ok())
}

/// A replica's row.
pub(super) fn replica_row(chunk: u32, r: &Replica) -> ReplicaRow {
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
        ReplicaState::Offered | ReplicaState::Lost | ReplicaState::Withdrawn => {
            (0, None, None, None, None, None)
        }
    };
    ReplicaRow {
        chunk,
        attempt: r.attempt,
        peer: r.peer.to_string(),
        state: r.state.status(),
        issued_ms,
        outcome,
        output,
        output_data,
        fuel,
        signature,
    }
}

/// The write that stores a new job and its chunks.
pub(super) fn insert_job(job: &Job) -> Write {
    let row = JobRow {
        id: job.id,
        name: job.name.clone(),
        module: job.module,
        params: Vec::new(),
        spec: postcard::to_allocvec(&job.spec).unwrap_or_default(),
        state: job.state,
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
            input_size: match &*c.input {
                Payload::Inline(b) => b.len() as u64,
                Payload::Blob { size, .. } => *size,
            },
            input_data: match &*c.input {
                Payload::Inline(b) => Some(b.clone()),
                Payload::Blob { .. } => None,
            },
            state: ChunkStatus::Pending,
            outcome: None,
            output: None,
            solo: None,
        })
        .collect();
    Write::InsertJob(row, chunks)
}

/// Reads one job back from the database (blocking: call it inside
/// [`Db::run`](crate::store::Db::run)).
pub(super) fn read_job(db: &Db, row: JobRow) -> Result<Job, DbError> {
    let chunks = db.chunks(row.id)?;
    let replicas = db.replicas(row.id)?;
    job_from_rows(row, chunks, replicas).map_err(DbError::Corrupt)
}

/// Reads the jobs in `states` back (blocking).
pub(super) fn read_jobs(db: &Db, states: &[JobState]) -> Result<Vec<Job>, DbError> {
    let mut jobs = Vec::new();
    for row in db.jobs(Some(states))? {
        let id = row.id;
        match read_job(db, row) {
            Ok(job) => jobs.push(job),
            Err(e) => tracing::error!(job = %id, "cannot load a job: {e}"),
        }
    }
    Ok(jobs)
}

/// A job from its rows.
pub(super) fn job_from_rows(
    row: JobRow,
    chunk_rows: Vec<ChunkRow>,
    replica_rows: Vec<ReplicaRow>,
) -> Result<Job, String> {
    let spec = JobSpec::decode(&row.spec)?;
    let state = row.state;
    let mut chunks: Vec<Chunk> = chunk_rows
        .into_iter()
        .map(|c: ChunkRow| {
            let state = match c.state {
                ChunkStatus::Verified => match (decode_outcome(c.outcome.as_deref()), c.output) {
                    (Some(outcome), Some(output)) => ChunkState::Verified {
                        key: agreement_key(&outcome, &output),
                        outcome,
                        output,
                    },
                    _ => ChunkState::Failed("stored verification is unreadable".into()),
                },
                ChunkStatus::Failed => ChunkState::Failed(
                    c.outcome
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default(),
                ),
                ChunkStatus::Pending => ChunkState::Pending,
            };
            Chunk {
                input: Arc::new(match c.input_data {
                    Some(bytes) => Payload::Inline(bytes),
                    None => Payload::Blob {
                        hash: c.input,
                        size: c.input_size,
                    },
                }),
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
        let state = match r.state {
            ReplicaStatus::Issued => ReplicaState::Issued(r.issued_ms),
            ReplicaStatus::TimedOut => ReplicaState::TimedOut(r.issued_ms),
            ReplicaStatus::Withdrawn => ReplicaState::Withdrawn,
            ReplicaStatus::Returned => match (decode_outcome(r.outcome.as_deref()), r.output) {
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
            // An offer whose answer was never stored is not held by anyone.
            ReplicaStatus::Offered | ReplicaStatus::Lost => ReplicaState::Lost,
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
        counts: ChunkCounts::of(&chunks),
        replicas: ReplicaCounts::of(&chunks),
        chunks,
        created_ms: row.created_ms,
        finished_ms: row.finished_ms,
        result: row.result,
        error: row.error,
        why: None,
        trust: Default::default(),
    })
}
