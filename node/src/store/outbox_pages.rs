//! The worker's outbox read in pages: keyset order on `(submitter, job_id, chunk, attempt)`,
//! bounded by rows and bytes, skipping submitters the worker is backing off from.
//!
//! Read by the worker's delivery task (`worker::delivery`) through
//! [`Db::run`](super::Db::run), a page at a time, only while the outbox holds
//! results.

use rusqlite::types::Value;

use super::db::{Db, DbError, OutboxRow};
use crate::types::JobId;

/// An outbox entry's key: (submitter, job, chunk, attempt).
pub type OutboxKey = (String, JobId, u32, u32);

/// Most submitters named in one page query's skip list; the caller filters any
/// others itself.
const MAX_SKIPPED: usize = 256;

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
        let mut page = Vec::new();
        let mut bytes = 0usize;
        while bytes < max_bytes
            && let Some(row) = rows.next()?
        {
            let job: Vec<u8> = row.get(0)?;
            let result: Vec<u8> = row.get(4)?;
            bytes += result.len();
            page.push(OutboxRow {
                job_id: <[u8; 16]>::try_from(job.as_slice())
                    .map(JobId)
                    .map_err(|_| DbError::Corrupt("job id in the outbox".into()))?,
                chunk: row.get(1)?,
                attempt: row.get(2)?,
                submitter: row.get(3)?,
                result,
            });
        }
        Ok(page)
    }
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
}
