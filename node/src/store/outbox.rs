//! The worker's outbox, read without loading it whole: keyset pages on
//! `(submitter, job_id, chunk, attempt)` bounded by rows and bytes (all submitters,
//! or one), the usage per submitter (rows and bytes, for quotas), and expiry by age.
//! Each row keeps its size (the encoded result plus a large output's blob) and that
//! blob's hash beside the result, so neither needs decoding again.
//!
//! Read by the worker's delivery task and admission (`worker::delivery`,
//! `worker::admission`) through [`Db::run`](super::Db::run); written through
//! [`Write`](super::Write)s (`OutboxPut` lands in [`put`]).

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::db::{Db, DbError, OutboxRow};
use crate::types::{ChunkResult, JobId, Payload, now_ms};

/// An outbox entry's key: (submitter, job, chunk, attempt).
pub type OutboxKey = (String, JobId, u32, u32);

/// One submitter's share of the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxUsage {
    /// The submitter (a peer id, as stored).
    pub submitter: String,
    /// Its results waiting.
    pub rows: u64,
    /// Their size in bytes (large outputs included).
    pub bytes: u64,
}

/// Most submitters named in one page query's skip list; the caller filters any
/// others itself.
const MAX_SKIPPED: usize = 256;
/// Rows read at a time while filling in sizes after the migration.
const BACKFILL_PAGE: usize = 256;

/// A result's size as the outbox counts it, and the blob its output lives in.
fn size_of(result: &[u8]) -> (u64, Option<Vec<u8>>) {
    let blob = match postcard::from_bytes::<ChunkResult>(result) {
        Ok(ChunkResult {
            output: Some(Payload::Blob { hash, size }),
            ..
        }) => Some((hash, size)),
        _ => None,
    };
    let bytes = (result.len() as u64).saturating_add(blob.map_or(0, |(_, size)| size));
    (bytes, blob.map(|(hash, _)| hash.0.to_vec()))
}

/// Writes one outbox row (with its size and output blob).
pub(super) fn put(tx: &Transaction<'_>, o: &OutboxRow) -> Result<(), DbError> {
    let (bytes, blob) = size_of(&o.result);
    tx.prepare_cached(
        "INSERT OR REPLACE INTO outbox (job_id, chunk, attempt, submitter, result, created_ms, bytes, output_blob)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        o.job_id.0.as_slice(),
        o.chunk,
        o.attempt,
        o.submitter,
        o.result,
        now_ms(),
        i64::try_from(bytes).unwrap_or(i64::MAX),
        blob
    ])?;
    Ok(())
}

/// Fills in the size and output blob of rows written before they were kept (once,
/// after the migration that added them), a page at a time.
pub(super) fn backfill(conn: &Connection) -> Result<(), DbError> {
    loop {
        // (result, submitter, job, chunk, attempt)
        type Unsized = (Vec<u8>, String, Vec<u8>, u32, u32);
        let page: Vec<Unsized> = {
            let mut stmt = conn.prepare(
                "SELECT result, submitter, job_id, chunk, attempt FROM outbox WHERE bytes = 0 LIMIT ?1",
            )?;
            let rows = stmt.query_map([BACKFILL_PAGE as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        if page.is_empty() {
            return Ok(());
        }
        for (result, submitter, job, chunk, attempt) in page {
            let (bytes, blob) = size_of(&result);
            conn.execute(
                "UPDATE outbox SET bytes = ?1, output_blob = ?2
                 WHERE submitter = ?3 AND job_id = ?4 AND chunk = ?5 AND attempt = ?6",
                params![
                    i64::try_from(bytes.max(1)).unwrap_or(i64::MAX),
                    blob,
                    submitter,
                    job,
                    chunk,
                    attempt
                ],
            )?;
        }
    }
}

fn row(r: &rusqlite::Row<'_>) -> Result<OutboxRow, DbError> {
    let job: Vec<u8> = r.get(0)?;
    Ok(OutboxRow {
        job_id: <[u8; 16]>::try_from(job.as_slice())
            .map(JobId)
            .map_err(|_| DbError::Corrupt("job id in the outbox".into()))?,
        chunk: r.get(1)?,
        attempt: r.get(2)?,
        submitter: r.get(3)?,
        result: r.get(4)?,
    })
}

impl Db {
    /// Outbox entries after `after` in key order (from the first when `None`), not
    /// addressed to a submitter in `skip`: at most `max_rows`, and no more once
    /// their results reach `max_bytes` (at least one entry when any is left).
    pub fn outbox_page(
        &self,
        after: Option<OutboxKey>,
        skip: &[String],
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<OutboxRow>, DbError> {
        let skip = &skip[..skip.len().min(MAX_SKIPPED)];
        let (submitter, job, chunk, attempt) = match after {
            Some((submitter, job, chunk, attempt)) => (
                submitter,
                job.0.to_vec(),
                i64::from(chunk),
                i64::from(attempt),
            ),
            // Before every key: job ids are 16 bytes, chunks and attempts >= 0.
            None => (String::new(), Vec::new(), -1, -1),
        };
        let mut params = vec![
            Value::Text(submitter),
            Value::Blob(job),
            Value::Integer(chunk),
            Value::Integer(attempt),
        ];
        params.push(Value::Integer(i64::try_from(max_rows).unwrap_or(i64::MAX)));
        let mut sql = String::from(
            "SELECT job_id, chunk, attempt, submitter, result FROM outbox \
             WHERE (submitter, job_id, chunk, attempt) > (?1, ?2, ?3, ?4)",
        );
        if !skip.is_empty() {
            let marks: Vec<String> = (0..skip.len()).map(|i| format!("?{}", i + 6)).collect();
            sql.push_str(&format!(" AND submitter NOT IN ({})", marks.join(", ")));
            params.extend(skip.iter().map(|s| Value::Text(s.clone())));
        }
        sql.push_str(" ORDER BY submitter, job_id, chunk, attempt LIMIT ?5");
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        read_page(&mut rows, max_bytes)
    }

    /// One submitter's entries after (job, chunk, attempt) `after` in key order,
    /// bounded like [`outbox_page`](Self::outbox_page).
    pub fn outbox_page_of(
        &self,
        submitter: &str,
        after: Option<(JobId, u32, u32)>,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<OutboxRow>, DbError> {
        let (job, chunk, attempt) = match after {
            Some((job, chunk, attempt)) => (job.0.to_vec(), i64::from(chunk), i64::from(attempt)),
            None => (Vec::new(), -1, -1),
        };
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT job_id, chunk, attempt, submitter, result FROM outbox \
             WHERE submitter = ?1 AND (job_id, chunk, attempt) > (?2, ?3, ?4) \
             ORDER BY job_id, chunk, attempt LIMIT ?5",
        )?;
        let limit = i64::try_from(max_rows).unwrap_or(i64::MAX);
        let mut rows = stmt.query(params![submitter, job, chunk, attempt, limit])?;
        read_page(&mut rows, max_bytes)
    }

    /// Rows and bytes waiting per submitter (one row per submitter with results).
    pub fn outbox_usage(&self) -> Result<Vec<OutboxUsage>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT submitter, COUNT(*), COALESCE(SUM(bytes), 0) FROM outbox GROUP BY submitter",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(OutboxUsage {
                submitter: r.get(0)?,
                rows: r.get::<_, i64>(1)?.max(0) as u64,
                bytes: r.get::<_, i64>(2)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Drops entries written before `before_ms` (unix ms); returns how many.
    pub fn outbox_expire(&self, before_ms: u64) -> Result<usize, DbError> {
        let before = i64::try_from(before_ms).unwrap_or(i64::MAX);
        Ok(self
            .conn()
            .execute("DELETE FROM outbox WHERE created_ms < ?1", [before])?)
    }

    /// Entries in the outbox.
    pub fn outbox_len(&self) -> Result<u64, DbError> {
        Ok(self
            .conn()
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    /// The whole outbox, in key order (tests only: a node never reads it whole).
    #[cfg(test)]
    pub fn outbox(&self) -> Result<Vec<OutboxRow>, DbError> {
        self.outbox_page(None, &[], usize::MAX, usize::MAX)
    }
}

/// Reads outbox rows until `max_bytes` of results are in the page (the last row
/// may pass it) or the query ends: pages are bounded in bytes, whatever the LIMIT.
fn read_page(rows: &mut rusqlite::Rows<'_>, max_bytes: usize) -> Result<Vec<OutboxRow>, DbError> {
    let mut page = Vec::new();
    let mut bytes = 0usize;
    while bytes < max_bytes
        && let Some(r) = rows.next()?
    {
        let entry = row(r)?;
        bytes += entry.result.len();
        page.push(entry);
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::Write;

    fn row(job: u8, chunk: u32, submitter: &str, size: usize) -> OutboxRow {
        OutboxRow {
            job_id: JobId([job; 16]),
            chunk,
            attempt: 0,
            submitter: submitter.into(),
            result: vec![job; size],
        }
    }

    fn keys(rows: &[OutboxRow]) -> Vec<(u8, u32)> {
        rows.iter().map(|r| (r.job_id.0[0], r.chunk)).collect()
    }

    #[test]
    fn pages_follow_the_key_order_skip_submitters_and_stop_at_their_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let rows = [
            row(2, 0, "a", 10),
            row(1, 1, "b", 10),
            row(1, 0, "a", 10),
            row(2, 1, "b", 100),
            row(3, 0, "a", 10),
        ];
        db.apply(
            &rows
                .iter()
                .cloned()
                .map(Write::OutboxPut)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let all = db.outbox_page(None, &[], 100, usize::MAX).unwrap();
        // By submitter first: one submitter's entries together.
        assert_eq!(keys(&all), [(1, 0), (2, 0), (3, 0), (1, 1), (2, 1)]);
        assert_eq!(all[0], rows[2], "rows come back whole");
        // Keyset: the next page starts after the last key seen.
        let first = db.outbox_page(None, &[], 2, usize::MAX).unwrap();
        assert_eq!(keys(&first), [(1, 0), (2, 0)]);
        let last = first
            .last()
            .map(|r| (r.submitter.clone(), r.job_id, r.chunk, r.attempt));
        let next = db.outbox_page(last.clone(), &[], 2, usize::MAX).unwrap();
        assert_eq!(keys(&next), [(3, 0), (1, 1)]);
        // Submitters being backed off from are skipped.
        let only_a = db
            .outbox_page(None, &["b".into()], 100, usize::MAX)
            .unwrap();
        assert_eq!(keys(&only_a), [(1, 0), (2, 0), (3, 0)]);
        // The byte budget: rows until it is reached, and always one.
        let budget = db.outbox_page(None, &[], 100, 25).unwrap();
        assert_eq!(keys(&budget), [(1, 0), (2, 0), (3, 0)]);
        let one = db.outbox_page(last, &[], 100, 1).unwrap();
        assert_eq!(keys(&one), [(3, 0)]);
        // Past the end: empty.
        let end = Some(("b".to_string(), JobId([2; 16]), 1, 0));
        assert!(
            db.outbox_page(end, &[], 100, usize::MAX)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn usage_per_submitter_counts_large_outputs_and_survives_the_migration() {
        use crate::types::{BlobHash, ChunkResult, Payload, WireOutcome};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let result = |output: Option<Payload>| ChunkResult {
            job_id: JobId([1; 16]),
            chunk: 0,
            attempt: 0,
            outcome: WireOutcome::Ok,
            output_hash: BlobHash::of(b"x"),
            output,
            fuel_used: 1,
            exec_micros: 1,
            signature: vec![],
        };
        let blob = BlobHash::of(b"large");
        let large = postcard::to_allocvec(&result(Some(Payload::Blob {
            hash: blob,
            size: 10 << 20,
        })))
        .unwrap();
        let small = postcard::to_allocvec(&result(Some(Payload::Inline(vec![1; 100])))).unwrap();
        let mut rows = vec![row(1, 0, "a", 0), row(1, 1, "a", 0), row(1, 0, "b", 0)];
        rows[0].result = large.clone();
        rows[1].result = small.clone();
        rows[2].result = small.clone();
        db.apply(&rows.into_iter().map(Write::OutboxPut).collect::<Vec<_>>())
            .unwrap();
        let usage = db.outbox_usage().unwrap();
        let expected = vec![
            OutboxUsage {
                submitter: "a".into(),
                rows: 2,
                bytes: (large.len() + small.len()) as u64 + (10 << 20),
            },
            OutboxUsage {
                submitter: "b".into(),
                rows: 1,
                bytes: small.len() as u64,
            },
        ];
        assert_eq!(usage, expected);
        assert!(
            db.referenced_blobs().unwrap().contains(&blob),
            "the large output is pinned"
        );
        // One submitter's pages only.
        let a = db.outbox_page_of("a", None, 1, usize::MAX).unwrap();
        assert_eq!(keys(&a), [(1, 0)]);
        let next = db
            .outbox_page_of("a", Some((JobId([1; 16]), 0, 0)), 10, usize::MAX)
            .unwrap();
        assert_eq!(keys(&next), [(1, 1)]);
        // Rows written before sizes were kept are filled in once, at open.
        db.conn()
            .execute("UPDATE outbox SET bytes = 0, output_blob = NULL", [])
            .unwrap();
        backfill(&db.conn()).unwrap();
        assert_eq!(db.outbox_usage().unwrap(), expected);
        assert!(db.referenced_blobs().unwrap().contains(&blob));
        // Expiry by age.
        assert_eq!(db.outbox_expire(0).unwrap(), 0);
        assert_eq!(db.outbox_expire(u64::MAX).unwrap(), 3);
        assert!(db.outbox_usage().unwrap().is_empty());
    }
}
