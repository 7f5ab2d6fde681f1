//! The node's SQLite database (WAL): jobs, chunks, replicas, peer reputation (the
//! submitter's side) and the outbox of finished results (the worker's side).
//!
//! The scheduler and the worker keep their live state in memory and write through
//! here; on restart they load it back. Writes come as a batch of [`Write`]s applied in
//! one transaction, so a batch of results costs one commit, and a result is durable
//! before it is acknowledged. Schema changes are numbered migrations
//! (`PRAGMA user_version`).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

pub use crate::types::now_ms;
use crate::types::{BlobHash, ChunkStatus, JobId, JobState, ReplicaStatus};

/// Errors from the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said no (full disk, corruption, locked).
    #[error("database: {0} (check free disk space and permissions of the data dir)")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value could not be decoded.
    #[error("database holds a value it cannot decode: {0}")]
    Corrupt(String),
    /// The blocking task running a database call failed (the node is shutting down).
    #[error("database task: {0}")]
    Task(String),
}

pub use super::rows::{
    ChunkRow, JobRow, OutboxRow, ReplicaRow, ReputationRow, StoredOutput, Write,
};

/// A chunk's state, stored outcome and output ([`Db::chunk_verdict`]).
pub type ChunkVerdict = (ChunkStatus, Option<Vec<u8>>, StoredOutput);

/// A write batch commits on the calling thread when it has at most this many rows
/// ([`Db::write`])...
const INLINE_ROWS: usize = 32;
/// ... and at most this many bytes of payloads.
const INLINE_BYTES: usize = 64 * 1024;
/// Commits between two WAL checkpoints. SQLite's own automatic checkpoint is off:
/// it ran inside whichever commit crossed 1 000 pages of log, with an fsync, and
/// that write's caller waited for it (the slowest one-chunk jobs of `bench grid`,
/// 3-5 ms). Instead a blocking thread checkpoints once this many commits went by,
/// on the same connection, after the commit that made it due has let go of it; a
/// write meanwhile finds the connection busy and goes to the blocking pool. (A
/// second connection that checkpointed while writes went on cost 10 % of `bench
/// grid`'s no-op throughput: 1 878 against 2 300 chunks/s.)
const CHECKPOINT_EVERY: u32 = 256;

/// The database. One connection behind a mutex: writes are short transactions.
#[derive(Debug)]
pub struct Db {
    conn: std::sync::Arc<Mutex<Connection>>,
    /// Commits since the last WAL checkpoint.
    since_checkpoint: std::sync::atomic::AtomicU32,
    metrics: super::metrics::StoreMetrics,
    /// Test seam: this many next write batches fail (see [`Db::fail_writes_for_test`]).
    #[cfg(any(test, feature = "test-utils"))]
    fail_writes: std::sync::atomic::AtomicU32,
}

fn job_id(bytes: Vec<u8>) -> Result<JobId, DbError> {
    <[u8; 16]>::try_from(bytes.as_slice())
        .map(JobId)
        .map_err(|_| DbError::Corrupt("job id".into()))
}

fn hash(bytes: Vec<u8>) -> Result<BlobHash, DbError> {
    <[u8; 32]>::try_from(bytes.as_slice())
        .map(BlobHash)
        .map_err(|_| DbError::Corrupt("blob hash".into()))
}

fn opt_hash(bytes: Option<Vec<u8>>) -> Result<Option<BlobHash>, DbError> {
    bytes.map(hash).transpose()
}

impl Db {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoints run on a blocking thread (see `CHECKPOINT_EVERY`), never inside
        // a commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in super::schema::MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        if version < 4 {
            super::outbox::backfill(&conn)?;
        }
        Ok(Self {
            conn: std::sync::Arc::new(Mutex::new(conn)),
            since_checkpoint: std::sync::atomic::AtomicU32::new(0),
            metrics: super::metrics::StoreMetrics::default(),
            #[cfg(any(test, feature = "test-utils"))]
            fail_writes: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Records write latency and failures in `metrics` (a node's).
    pub fn with_metrics(mut self, metrics: super::metrics::StoreMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` against the database on a blocking thread, never on the async
    /// runtime's own threads: the rule for every caller in async code (the scheduler
    /// actor, the worker, the dispatcher, the API), except that write batches go
    /// through [`write`](Self::write), which commits small ones inline when it can
    /// do so without waiting. Reads, long calls and waits for the connection then
    /// cannot stall the network.
    pub async fn run<R: Send + 'static>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&Db) -> Result<R, DbError> + Send + 'static,
    ) -> Result<R, DbError> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Commits `writes` in one transaction (all of them or none) from async code.
    ///
    /// The rule: a small batch (at most [`INLINE_ROWS`] rows and [`INLINE_BYTES`]
    /// of payloads) commits on the calling thread **if the connection is free right
    /// now**; anything else goes through [`run`](Self::run). Such a commit is
    /// bounded: in WAL mode with `synchronous = NORMAL` it appends a few pages to
    /// the WAL without an fsync (tens of microseconds; see
    /// `peergrid_store_write_seconds`), it never waits for the lock (another
    /// caller's long read holds it: the batch goes to the blocking pool), and
    /// checkpoints, which do fsync, run on a blocking thread
    /// ([`CHECKPOINT_EVERY`]). The hop to a
    /// blocking thread and back costs more than such a commit (about 50 µs on a
    /// 2-core machine): a one-chunk job passes eight of them between submit and
    /// verified, which put its latency 0.3 ms behind the first wave's.
    pub async fn write(self: &std::sync::Arc<Self>, writes: Vec<Write>) -> Result<(), DbError> {
        let (rows, bytes) = writes.iter().fold((0usize, 0usize), |(r, b), w| {
            let (wr, wb) = w.weight();
            (r.saturating_add(wr), b.saturating_add(wb))
        });
        if rows <= INLINE_ROWS
            && bytes <= INLINE_BYTES
            && let Ok(mut conn) = self.conn.try_lock()
        {
            let due = self.commit_on(&mut conn, writes.iter());
            drop(conn);
            return self.checkpoint_if(due);
        }
        self.run(move |db| db.apply(&writes)).await
    }

    /// Applies every write in one transaction: all of them or none. Blocking: from
    /// async code use [`write`](Self::write) or [`run`](Self::run).
    pub fn apply(&self, writes: &[Write]) -> Result<(), DbError> {
        self.apply_each(writes.iter())
    }

    /// [`apply`](Self::apply) over borrowed writes.
    pub fn apply_each<'a>(
        &self,
        writes: impl IntoIterator<Item = &'a Write>,
    ) -> Result<(), DbError> {
        let mut conn = self.conn();
        let due = self.commit_on(&mut conn, writes);
        drop(conn);
        self.checkpoint_if(due)
    }

    /// Passes a commit's result on, after starting the checkpoint it made due.
    fn checkpoint_if(&self, committed: Result<bool, DbError>) -> Result<(), DbError> {
        if committed? {
            self.checkpoint();
        }
        Ok(())
    }

    /// Checkpoints the WAL: on a blocking thread when called from the runtime
    /// (nobody waits for it), here otherwise. Never called with the connection held.
    fn checkpoint(&self) {
        let conn = self.conn.clone();
        let run = move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            // PASSIVE: copies what no reader needs and waits for nobody. A failure
            // only leaves the log longer until the next one.
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "cannot checkpoint the database's log");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(run)),
            Err(_) => run(),
        }
    }

    /// Commits `writes` on a locked connection, counting the commit and its time;
    /// whether a checkpoint is due (to start once the connection is let go).
    fn commit_on<'a>(
        &self,
        conn: &mut Connection,
        writes: impl IntoIterator<Item = &'a Write>,
    ) -> Result<bool, DbError> {
        let mut writes = writes.into_iter().peekable();
        if writes.peek().is_none() {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        let result = self.apply_all(conn, writes);
        self.metrics
            .write_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                let since = self
                    .since_checkpoint
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let due = since + 1 >= CHECKPOINT_EVERY;
                if due {
                    self.since_checkpoint
                        .store(0, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(due)
            }
            Err(e) => {
                self.metrics.write_errors.inc();
                Err(e)
            }
        }
    }

    /// Makes the next `n` write batches fail as a full disk would (nothing of them is
    /// written): the failing-store seam of the scheduler's persist-then-apply tests.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn fail_writes_for_test(&self, n: u32) {
        self.fail_writes
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    fn apply_all<'a>(
        &self,
        conn: &mut Connection,
        writes: impl Iterator<Item = &'a Write>,
    ) -> Result<(), DbError> {
        #[cfg(any(test, feature = "test-utils"))]
        if self
            .fail_writes
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok()
        {
            return Err(DbError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                Some("injected by fail_writes_for_test".into()),
            )));
        }
        let tx = conn.transaction()?;
        for write in writes {
            super::apply::apply_one(&tx, write)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Jobs, oldest first; only those in `states` when given.
    pub fn jobs(&self, states: Option<&[JobState]>) -> Result<Vec<JobRow>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, name, module, params, spec, state, chunks_total, created_ms, finished_ms, result, error
             FROM jobs ORDER BY created_ms",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, JobState>(5)?,
                r.get::<_, u32>(6)?,
                r.get::<_, u64>(7)?,
                r.get::<_, Option<u64>>(8)?,
                r.get::<_, Option<Vec<u8>>>(9)?,
                r.get::<_, Option<String>>(10)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                name,
                module,
                params,
                spec,
                state,
                chunks_total,
                created_ms,
                finished_ms,
                result,
                error,
            ) = row?;
            if states.is_some_and(|s| !s.contains(&state)) {
                continue;
            }
            out.push(JobRow {
                id: job_id(id)?,
                name,
                module: hash(module)?,
                params,
                spec,
                state,
                chunks_total,
                created_ms,
                finished_ms,
                result: opt_hash(result)?,
                error,
            });
        }
        Ok(out)
    }

    /// One job, if stored.
    pub fn job(&self, id: JobId) -> Result<Option<JobRow>, DbError> {
        // Jobs are few next to chunks; one reader for all keeps the mapping in one place.
        Ok(self.jobs(None)?.into_iter().find(|j| j.id == id))
    }

    /// How many jobs are in each state (`running`, `done`, ...).
    pub fn job_counts(&self) -> Result<Vec<(JobState, u64)>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One chunk's state, outcome and output, if stored.
    pub fn chunk_verdict(&self, job: JobId, idx: u32) -> Result<Option<ChunkVerdict>, DbError> {
        let row = self
            .conn()
            .query_row(
                "SELECT state, outcome, output, output_data FROM chunks WHERE job_id = ?1 AND idx = ?2",
                params![job.0.as_slice(), idx],
                |r| {
                    Ok((
                        r.get::<_, ChunkStatus>(0)?,
                        r.get::<_, Option<Vec<u8>>>(1)?,
                        r.get::<_, Option<Vec<u8>>>(2)?,
                        r.get::<_, Option<Vec<u8>>>(3)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(state, outcome, output, data)| Ok((state, outcome, (opt_hash(output)?, data))))
            .transpose()
    }

    /// Every chunk verified on one peer's word alone: (job, chunk, peer), oldest job
    /// first (the scheduler's re-verification index, rebuilt at start).
    pub fn solo_chunks(&self) -> Result<Vec<(JobId, u32, String)>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT c.job_id, c.idx, c.solo_peer FROM chunks c JOIN jobs j ON j.id = c.job_id
             WHERE c.solo_peer IS NOT NULL AND c.state = 'verified'
             ORDER BY j.created_ms, c.idx",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (job, idx, peer) = row?;
            Ok((job_id(job)?, idx, peer))
        })
        .collect()
    }

    /// A job's chunks in index order.
    pub fn chunks(&self, job: JobId) -> Result<Vec<ChunkRow>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT idx, input, input_size, input_data, state, outcome, output, solo_peer
             FROM chunks WHERE job_id = ?1 ORDER BY idx",
        )?;
        let rows = stmt.query_map(params![job.0.as_slice()], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, u64>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
                r.get::<_, ChunkStatus>(4)?,
                r.get::<_, Option<Vec<u8>>>(5)?,
                r.get::<_, Option<Vec<u8>>>(6)?,
                r.get::<_, Option<String>>(7)?,
            ))
        })?;
        rows.map(|row| {
            let (idx, input, input_size, input_data, state, outcome, output, solo) = row?;
            Ok(ChunkRow {
                idx,
                input: hash(input)?,
                input_size,
                input_data,
                state,
                outcome,
                output: opt_hash(output)?,
                solo,
            })
        })
        .collect()
    }

    /// A job's replicas.
    pub fn replicas(&self, job: JobId) -> Result<Vec<ReplicaRow>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {REPLICA_COLUMNS} FROM replicas WHERE job_id = ?1 ORDER BY chunk, attempt"
        ))?;
        let rows = stmt.query_map(params![job.0.as_slice()], raw_replica)?;
        rows.map(|row| replica_row(row?)).collect()
    }

    /// The replicas of some chunks of a job, without their output bytes (evidence).
    pub fn replicas_of_chunks(
        &self,
        job: JobId,
        chunks: &std::collections::BTreeSet<u32>,
    ) -> Result<Vec<ReplicaRow>, DbError> {
        let conn = self.conn();
        let columns = REPLICA_COLUMNS.replace("output_data", "NULL");
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {columns} FROM replicas WHERE job_id = ?1 AND chunk = ?2 ORDER BY attempt"
        ))?;
        let mut out = Vec::new();
        for &chunk in chunks {
            for row in stmt.query_map(params![job.0.as_slice(), chunk], raw_replica)? {
                out.push(replica_row(row?)?);
            }
        }
        Ok(out)
    }

    /// The output bytes a replica returned, when kept in the database.
    pub fn replica_output(
        &self,
        job: JobId,
        chunk: u32,
        attempt: u32,
    ) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT output_data FROM replicas WHERE job_id = ?1 AND chunk = ?2 AND attempt = ?3",
                params![job.0.as_slice(), chunk, attempt],
                |r| r.get::<_, Option<Vec<u8>>>(0),
            )
            .optional()?
            .flatten())
    }

    /// Each verified chunk's output, in chunk order: its bytes when kept in the
    /// database, else its blob hash.
    pub fn chunk_outputs(&self, job: JobId) -> Result<Vec<StoredOutput>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT output, output_data FROM chunks WHERE job_id = ?1 ORDER BY idx",
        )?;
        let rows = stmt.query_map(params![job.0.as_slice()], |r| {
            Ok((
                r.get::<_, Option<Vec<u8>>>(0)?,
                r.get::<_, Option<Vec<u8>>>(1)?,
            ))
        })?;
        rows.map(|row| {
            let (output, data) = row?;
            Ok((opt_hash(output)?, data))
        })
        .collect()
    }

    /// Every peer's reputation.
    pub fn reputations(&self) -> Result<Vec<ReputationRow>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT peer, agreed, consecutive, disagreed, errors, timeouts, caught, withdrawn FROM reputation",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ReputationRow {
                peer: r.get(0)?,
                agreed: r.get(1)?,
                consecutive: r.get(2)?,
                disagreed: r.get(3)?,
                errors: r.get(4)?,
                timeouts: r.get(5)?,
                caught: r.get(6)?,
                withdrawn: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every blob this node's state refers to: the modules, inputs, verified outputs
    /// and merged results of its own jobs (finished ones too), the outputs returned
    /// for chunks not yet decided, and the large outputs waiting in the outbox. The
    /// blob cache never evicts these; a losing replica's output is not among them.
    pub fn referenced_blobs(&self) -> Result<std::collections::HashSet<BlobHash>, DbError> {
        let conn = self.conn();
        let mut pinned = std::collections::HashSet::new();
        for query in [
            "SELECT module FROM jobs",
            "SELECT result FROM jobs WHERE result IS NOT NULL",
            "SELECT input FROM chunks",
            "SELECT output FROM chunks WHERE output IS NOT NULL",
            // Replicas' outputs only while their chunk is open: once it is decided,
            // the chunk's own output is pinned, and the losers' can go.
            "SELECT r.output FROM replicas r JOIN chunks c ON c.job_id = r.job_id AND c.idx = r.chunk
             WHERE r.output IS NOT NULL AND c.state = 'pending'",
            "SELECT output_blob FROM outbox WHERE output_blob IS NOT NULL",
        ] {
            let mut stmt = conn.prepare(query)?;
            let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            for row in rows {
                if let Ok(hash) = <[u8; 32]>::try_from(row?.as_slice()) {
                    pinned.insert(BlobHash(hash));
                }
            }
        }
        Ok(pinned)
    }
}

/// The columns [`raw_replica`] reads, in its order.
const REPLICA_COLUMNS: &str =
    "chunk, attempt, peer, state, issued_ms, outcome, output, fuel, output_data, signature";

/// A replica row as SQLite gives it.
type RawReplica = (
    u32,
    u32,
    String,
    ReplicaStatus,
    u64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<u64>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

fn raw_replica(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawReplica> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn replica_row(
    (chunk, attempt, peer, state, issued_ms, outcome, output, fuel, output_data, signature): RawReplica,
) -> Result<ReplicaRow, DbError> {
    Ok(ReplicaRow {
        chunk,
        attempt,
        peer,
        state,
        issued_ms,
        outcome,
        output: opt_hash(output)?,
        output_data,
        fuel,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn job(id: u8) -> JobRow {
        JobRow {
            id: JobId([id; 16]),
            name: "t".into(),
            module: BlobHash::of(b"m"),
            params: b"{}".to_vec(),
            spec: vec![1, 2],
            state: JobState::Running,
            chunks_total: 2,
            created_ms: u64::from(id),
            finished_ms: None,
            result: None,
            error: None,
        }
    }

    fn chunk(idx: u32) -> ChunkRow {
        ChunkRow {
            idx,
            input: BlobHash::of(&idx.to_le_bytes()),
            input_size: 4,
            input_data: Some(idx.to_le_bytes().to_vec()),
            state: ChunkStatus::Pending,
            outcome: None,
            output: None,
            solo: None,
        }
    }

    #[test]
    fn every_blob_of_the_nodes_own_jobs_and_outbox_is_referenced() {
        use crate::types::{ChunkResult, Payload, WireOutcome};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let merged = BlobHash::of(b"merged");
        let large = BlobHash::of(b"a large output");
        let result = ChunkResult {
            job_id: JobId([9; 16]),
            chunk: 0,
            attempt: 0,
            outcome: WireOutcome::Ok,
            output_hash: large,
            output: Some(Payload::Blob {
                hash: large,
                size: 14,
            }),
            fuel_used: 1,
            exec_micros: 1,
            signature: Vec::new(),
        };
        db.apply(&[
            Write::InsertJob(job(1), vec![chunk(0), chunk(1)]),
            Write::JobState {
                id: JobId([1; 16]),
                state: JobState::Done,
                finished_ms: Some(9),
                result: Some(merged),
                error: None,
            },
            Write::OutboxPut(OutboxRow {
                job_id: JobId([9; 16]),
                chunk: 0,
                attempt: 0,
                submitter: "p".into(),
                result: postcard::to_allocvec(&result).unwrap(),
            }),
        ])
        .unwrap();
        // Chunk 0 is open: both answers count. Chunk 1 was verified on "right":
        // the loser's "wrong" output may go.
        let answer = |idx: u32, attempt: u32, output: &[u8]| {
            Write::Replica(
                JobId([1; 16]),
                ReplicaRow {
                    chunk: idx,
                    attempt,
                    peer: format!("p{attempt}"),
                    state: ReplicaStatus::Returned,
                    issued_ms: 1,
                    outcome: Some(vec![0]),
                    output: Some(BlobHash::of(output)),
                    output_data: None,
                    fuel: Some(1),
                    signature: None,
                },
            )
        };
        db.apply(&[
            answer(0, 0, b"open a"),
            answer(0, 1, b"open b"),
            answer(1, 0, b"right"),
            answer(1, 1, b"wrong"),
            answer(1, 2, b"right"),
            Write::ChunkState {
                job: JobId([1; 16]),
                idx: 1,
                state: ChunkStatus::Verified,
                outcome: Some(vec![0]),
                output: Some(BlobHash::of(b"right")),
                output_data: None,
                solo: None,
            },
        ])
        .unwrap();
        let pinned = db.referenced_blobs().unwrap();
        for hash in [
            BlobHash::of(b"m"),
            merged,
            chunk(0).input,
            chunk(1).input,
            large,
            BlobHash::of(b"open a"),
            BlobHash::of(b"open b"),
            BlobHash::of(b"right"),
        ] {
            assert!(pinned.contains(&hash), "{hash:?} is not pinned");
        }
        assert!(!pinned.contains(&BlobHash::of(b"someone else's module")));
        assert!(
            !pinned.contains(&BlobHash::of(b"wrong")),
            "a losing replica's output is not pinned"
        );
    }

    #[test]
    fn writes_survive_reopening_and_a_failed_batch_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let db = Db::open(&path).unwrap();
            db.apply(&[Write::InsertJob(job(1), vec![chunk(0), chunk(1)])])
                .unwrap();
            db.apply(&[
                Write::Replica(
                    JobId([1; 16]),
                    ReplicaRow {
                        chunk: 0,
                        attempt: 0,
                        peer: "p".into(),
                        state: ReplicaStatus::Issued,
                        issued_ms: 5,
                        outcome: None,
                        output: None,
                        output_data: None,
                        fuel: None,
                        signature: Some(vec![7; 64]),
                    },
                ),
                Write::ChunkState {
                    job: JobId([1; 16]),
                    idx: 1,
                    state: ChunkStatus::Verified,
                    outcome: Some(vec![0]),
                    output: Some(BlobHash::of(b"o")),
                    output_data: Some(b"o".to_vec()),
                    solo: Some("trusted-peer".into()),
                },
            ])
            .unwrap();
            // The second insert of the same job fails: the whole batch is rolled back.
            let err = db.apply(&[
                Write::Reputation(ReputationRow {
                    peer: "p".into(),
                    agreed: 1,
                    ..Default::default()
                }),
                Write::InsertJob(job(1), vec![]),
            ]);
            assert!(err.is_err());
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(db.jobs(None).unwrap(), vec![job(1)]);
        let chunks = db.chunks(JobId([1; 16])).unwrap();
        assert_eq!(chunks[1].state, ChunkStatus::Verified);
        assert_eq!(chunks[1].solo.as_deref(), Some("trusted-peer"));
        let replicas = db.replicas(JobId([1; 16])).unwrap();
        assert_eq!(replicas.len(), 1);
        assert_eq!(replicas[0].signature, Some(vec![7; 64]));
        let some = db
            .replicas_of_chunks(JobId([1; 16]), &[0, 1].into_iter().collect())
            .unwrap();
        assert_eq!(some.len(), 1);
        assert_eq!(
            (some[0].chunk, some[0].signature.as_deref()),
            (0, Some(&[7u8; 64][..]))
        );
        assert!(
            db.replicas_of_chunks(JobId([1; 16]), &[1].into_iter().collect())
                .unwrap()
                .is_empty()
        );
        assert!(db.reputations().unwrap().is_empty(), "rolled back");
        assert!(db.jobs(Some(&[JobState::Done])).unwrap().is_empty());
    }

    fn outbox_row(i: u32, bytes: usize) -> Write {
        Write::OutboxPut(OutboxRow {
            job_id: JobId([9; 16]),
            chunk: i,
            attempt: 0,
            submitter: "s".into(),
            result: vec![7; bytes],
        })
    }

    /// `Db::write` commits a small batch on the calling thread only when the
    /// connection is free: while another call holds it (a long read on a blocking
    /// thread), the batch waits on the blocking pool and the runtime's one thread
    /// goes on running other tasks. Small, large and waiting batches all commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_write_never_holds_the_runtime_while_the_database_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(Db::open(&dir.path().join("db.sqlite")).unwrap());
        db.write(vec![outbox_row(0, 16)]).await.unwrap();
        let large: Vec<Write> = (1..=INLINE_ROWS as u32 + 1)
            .map(|i| outbox_row(i, 16))
            .collect();
        db.write(large).await.unwrap();

        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let db = db.clone();
            std::thread::spawn(move || {
                let _conn = db.conn();
                held_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            })
        };
        held_rx.recv().unwrap();
        let write = tokio::spawn({
            let db = db.clone();
            async move { db.write(vec![outbox_row(99, 16)]).await }
        });
        // The runtime's only thread is free: another task runs while the write waits.
        // (Waited for on this thread, which is not the runtime's: a blocked runtime
        // fails the test instead of hanging it.)
        let (ran_tx, ran_rx) = std::sync::mpsc::channel();
        tokio::spawn(async move { ran_tx.send(42) });
        let ran = ran_rx.recv_timeout(Duration::from_secs(10));
        let waiting = !write.is_finished();
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(ran, Ok(42), "the runtime's thread was blocked by the write");
        assert!(waiting, "the write waits for the connection");
        write.await.unwrap().unwrap();
        let usage = db.outbox_usage().unwrap();
        assert_eq!(
            usage.iter().map(|u| u.rows).sum::<u64>(),
            INLINE_ROWS as u64 + 3
        );
    }

    /// SQLite's automatic checkpoint is off (it fsynced inside whichever commit
    /// crossed it); the checkpoint every `CHECKPOINT_EVERY` commits keeps the log
    /// bounded instead.
    #[test]
    fn the_log_stays_bounded_without_sqlites_automatic_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let db = Db::open(&path).unwrap();
        let wal = dir.path().join("db.sqlite-wal");
        let mut largest = 0;
        for i in 0..CHECKPOINT_EVERY * 8 {
            db.apply(&[outbox_row(i, 4096)]).unwrap();
            db.apply(&[Write::OutboxDelete("s".into(), JobId([9; 16]), i, 0)])
                .unwrap();
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        // 4 096 commits of a 4 KiB row each: some 40 MB of log without checkpoints.
        // With one every 256 commits the log restarts from its beginning, and holds
        // at most about 256 commits' pages.
        assert!(largest > 0, "the database is in WAL mode");
        assert!(
            largest < 8 << 20,
            "the log grew to {largest} bytes: it is not checkpointed"
        );
    }

    #[test]
    fn outbox_put_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let row = OutboxRow {
            job_id: JobId([2; 16]),
            chunk: 3,
            attempt: 1,
            submitter: "s".into(),
            result: vec![9; 10],
        };
        db.apply(&[Write::OutboxPut(row.clone())]).unwrap();
        assert_eq!(db.outbox().unwrap(), vec![row]);
        assert_eq!(db.outbox_len().unwrap(), 1);
        // Another submitter's delete of the same (job, chunk, attempt) changes nothing.
        db.apply(&[Write::OutboxDelete("t".into(), JobId([2; 16]), 3, 1)])
            .unwrap();
        db.apply(&[Write::OutboxDeleteJob("t".into(), JobId([2; 16]))])
            .unwrap();
        assert_eq!(db.outbox_len().unwrap(), 1);
        db.apply(&[Write::OutboxDelete("s".into(), JobId([2; 16]), 3, 1)])
            .unwrap();
        assert!(db.outbox().unwrap().is_empty());
    }
}
