//! The database's row types and the [`Write`]s that change them: what the
//! scheduler (jobs, chunks, replicas, reputation) and the worker (outbox) read and
//! write through [`Db`](super::Db). Plain data; no SQL here.

use crate::types::{BlobHash, ChunkStatus, JobId, JobState, ReplicaStatus};

/// A verified output as stored: its blob hash, and its bytes when kept in the
/// database.
pub type StoredOutput = (Option<BlobHash>, Option<Vec<u8>>);

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    /// Its id.
    pub id: JobId,
    /// A name for people.
    pub name: String,
    /// The module blob.
    pub module: BlobHash,
    /// The params it was split with (JSON), empty for input files.
    pub params: Vec<u8>,
    /// The job spec, postcard-encoded by the scheduler.
    pub spec: Vec<u8>,
    /// Where it is.
    pub state: JobState,
    /// How many chunks.
    pub chunks_total: u32,
    /// When it was submitted (unix ms).
    pub created_ms: u64,
    /// When it ended (unix ms).
    pub finished_ms: Option<u64>,
    /// The merged result blob.
    pub result: Option<BlobHash>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A chunk as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkRow {
    /// Its index.
    pub idx: u32,
    /// The input blob.
    pub input: BlobHash,
    /// Its size.
    pub input_size: u64,
    /// The input itself when small (kept in the database, not as a blob file).
    pub input_data: Option<Vec<u8>>,
    /// Where it is.
    pub state: ChunkStatus,
    /// The verified outcome (postcard `WireOutcome`), or the failure reason.
    pub outcome: Option<Vec<u8>>,
    /// The verified output blob.
    pub output: Option<BlobHash>,
    /// When verified on one trusted peer's word alone (adaptive replication): that peer.
    pub solo: Option<String>,
}

/// A replica as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaRow {
    /// Chunk index.
    pub chunk: u32,
    /// Attempt number.
    pub attempt: u32,
    /// The worker.
    pub peer: String,
    /// Where it is.
    pub state: ReplicaStatus,
    /// When it was accepted (unix ms).
    pub issued_ms: u64,
    /// The outcome it returned (postcard `WireOutcome`).
    pub outcome: Option<Vec<u8>>,
    /// The output hash it returned.
    pub output: Option<BlobHash>,
    /// The output itself when small (kept here, not as a blob file).
    pub output_data: Option<Vec<u8>>,
    /// Fuel it reported.
    pub fuel: Option<u64>,
    /// The worker's signature over the result (evidence).
    pub signature: Option<Vec<u8>>,
}

/// A peer's standing with this submitter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReputationRow {
    /// The peer.
    pub peer: String,
    /// Results that agreed with the verified outcome.
    pub agreed: u64,
    /// Agreements since the last disagreement.
    pub consecutive: u64,
    /// Results in a minority.
    pub disagreed: u64,
    /// Undeliverable or non-deterministic failures.
    pub errors: u64,
    /// Replicas it never returned in time.
    pub timeouts: u64,
    /// Times it was caught lying by a spot check or a planted chunk (excluded).
    pub caught: u64,
    /// Replicas it accepted and then withdrew (a budget: see `reputation`).
    pub withdrawn: u64,
}

/// A finished result waiting for its submitter's acknowledgement.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// The job.
    pub job_id: JobId,
    /// The chunk.
    pub chunk: u32,
    /// The replica.
    pub attempt: u32,
    /// Who to deliver to.
    pub submitter: String,
    /// The `ChunkResult`, postcard-encoded.
    pub result: Vec<u8>,
}

/// One change, applied with others in a single transaction by [`Db::apply`].
#[derive(Debug, Clone)]
pub enum Write {
    /// A new job with its chunks.
    InsertJob(JobRow, Vec<ChunkRow>),
    /// A job's state changed.
    JobState {
        /// The job.
        id: JobId,
        /// New state.
        state: JobState,
        /// When it ended.
        finished_ms: Option<u64>,
        /// The result blob.
        result: Option<BlobHash>,
        /// Why it failed.
        error: Option<String>,
    },
    /// A chunk was verified or failed.
    ChunkState {
        /// The job.
        job: JobId,
        /// The chunk.
        idx: u32,
        /// New state.
        state: ChunkStatus,
        /// Its outcome.
        outcome: Option<Vec<u8>>,
        /// Its output.
        output: Option<BlobHash>,
        /// The output itself when small.
        output_data: Option<Vec<u8>>,
        /// The peer whose word alone it rests on, if any.
        solo: Option<String>,
    },
    /// A chunk verified again (after a re-verification) takes the output bytes its
    /// winning replica's row kept (the copy in memory was freed at the first
    /// verification). Goes after the chunk's [`Write::ChunkState`].
    ChunkOutputFromReplica {
        /// The job.
        job: JobId,
        /// The chunk.
        idx: u32,
        /// The winning replica.
        attempt: u32,
    },
    /// A replica was accepted, returned, timed out or lost (insert or replace).
    Replica(JobId, ReplicaRow),
    /// A peer's reputation changed.
    Reputation(ReputationRow),
    /// A result entered the outbox.
    OutboxPut(OutboxRow),
    /// A result was acknowledged: (submitter, job, chunk, attempt).
    OutboxDelete(String, JobId, u32, u32),
    /// Every outbox entry of one submitter's job (cancelled by that submitter).
    OutboxDeleteJob(String, JobId),
}

impl Write {
    /// What this write adds to a transaction: (rows, bytes of its payloads). Decides
    /// whether a batch is small enough to commit inline (see `Db::write`).
    pub fn weight(&self) -> (usize, usize) {
        let len = |v: &Option<Vec<u8>>| v.as_ref().map_or(0, Vec::len);
        match self {
            Write::InsertJob(_, chunks) => (
                1 + chunks.len(),
                chunks
                    .iter()
                    .map(|c| len(&c.input_data) + len(&c.outcome))
                    .sum(),
            ),
            Write::JobState { error, .. } => (1, error.as_ref().map_or(0, String::len)),
            Write::ChunkState {
                outcome,
                output_data,
                ..
            } => (1, len(outcome) + len(output_data)),
            Write::Replica(_, r) => (1, len(&r.outcome) + len(&r.output_data) + len(&r.signature)),
            Write::OutboxPut(row) => (1, row.result.len()),
            Write::ChunkOutputFromReplica { .. }
            | Write::Reputation(_)
            | Write::OutboxDelete(..) => (1, 0),
            // Deletes every row of a job's outbox: as many as there are.
            Write::OutboxDeleteJob(..) => (usize::MAX, 0),
        }
    }
}

/// Stored states are their names (`running`, `verified`, `timed_out`, ...), so the
/// database stays readable with the `sqlite3` shell and older rows keep decoding.
macro_rules! stored_as_name {
    ($($ty:ty),*) => {$(
        impl rusqlite::types::ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl rusqlite::types::FromSql for $ty {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                let name = value.as_str()?;
                <$ty>::parse(name).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(
                        format!("unknown {} '{name}'", stringify!($ty)).into(),
                    )
                })
            }
        }
    )*};
}

stored_as_name!(JobState, ChunkStatus, ReplicaStatus);
