//! How each [`Write`] lands in SQL: the statements of one transaction, run by
//! [`Db`](super::Db)'s commits (inline or on the blocking pool; see `Db::write`).
//! Nothing else writes the scheduler's tables.

use rusqlite::params;

use super::db::DbError;
use super::rows::Write;

pub(super) fn apply_one(tx: &rusqlite::Transaction<'_>, write: &Write) -> Result<(), DbError> {
    match write {
        Write::InsertJob(job, chunks) => {
            tx.execute(
                "INSERT INTO jobs (id, name, module, params, spec, state, chunks_total, created_ms, finished_ms, result, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    job.id.0.as_slice(),
                    job.name,
                    job.module.0.as_slice(),
                    job.params,
                    job.spec,
                    job.state,
                    job.chunks_total,
                    job.created_ms,
                    job.finished_ms,
                    job.result.map(|h| h.0.to_vec()),
                    job.error,
                ],
            )?;
            let mut stmt = tx.prepare_cached(
                "INSERT INTO chunks (job_id, idx, input, input_size, input_data, state, outcome, output)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for c in chunks {
                stmt.execute(params![
                    job.id.0.as_slice(),
                    c.idx,
                    c.input.0.as_slice(),
                    c.input_size,
                    c.input_data,
                    c.state,
                    c.outcome,
                    c.output.map(|h| h.0.to_vec()),
                ])?;
            }
        }
        Write::JobState {
            id,
            state,
            finished_ms,
            result,
            error,
        } => {
            tx.execute(
                "UPDATE jobs SET state = ?2, finished_ms = ?3, result = ?4, error = ?5 WHERE id = ?1",
                params![
                    id.0.as_slice(),
                    state,
                    finished_ms,
                    result.map(|h| h.0.to_vec()),
                    error
                ],
            )?;
        }
        Write::ChunkState {
            job,
            idx,
            state,
            outcome,
            output,
            output_data,
            solo,
        } => {
            tx.prepare_cached(
                "UPDATE chunks SET state = ?3, outcome = ?4, output = ?5, output_data = ?6, solo_peer = ?7
                 WHERE job_id = ?1 AND idx = ?2",
            )?
            .execute(params![
                job.0.as_slice(),
                idx,
                state,
                outcome,
                output.map(|h| h.0.to_vec()),
                output_data,
                solo
            ])?;
        }
        Write::ChunkOutputFromReplica { job, idx, attempt } => {
            tx.prepare_cached(
                "UPDATE chunks SET output_data = (SELECT output_data FROM replicas
                     WHERE job_id = ?1 AND chunk = ?2 AND attempt = ?3)
                 WHERE job_id = ?1 AND idx = ?2 AND output_data IS NULL",
            )?
            .execute(params![job.0.as_slice(), idx, attempt])?;
        }
        Write::Replica(job, r) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO replicas (job_id, chunk, attempt, peer, state, issued_ms, outcome, output, fuel, output_data, signature)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                job.0.as_slice(),
                r.chunk,
                r.attempt,
                r.peer,
                r.state,
                r.issued_ms,
                r.outcome,
                r.output.map(|h| h.0.to_vec()),
                r.fuel,
                r.output_data,
                r.signature
            ])?;
        }
        Write::Reputation(r) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO reputation (peer, agreed, consecutive, disagreed, errors, timeouts, caught, withdrawn)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                r.peer,
                r.agreed,
                r.consecutive,
                r.disagreed,
                r.errors,
                r.timeouts,
                r.caught,
                r.withdrawn
            ])?;
        }
        Write::OutboxPut(o) => super::outbox::put(tx, o)?,
        Write::OutboxDelete(submitter, job, chunk, attempt) => {
            tx.prepare_cached(
                "DELETE FROM outbox WHERE submitter = ?1 AND job_id = ?2 AND chunk = ?3 AND attempt = ?4",
            )?
            .execute(params![submitter, job.0.as_slice(), chunk, attempt])?;
        }
        Write::OutboxDeleteJob(submitter, job) => {
            tx.execute(
                "DELETE FROM outbox WHERE submitter = ?1 AND job_id = ?2",
                params![submitter, job.0.as_slice()],
            )?;
        }
    }
    Ok(())
}
