//! The outbox: finished results are written there first ([`Worker::store_result`]),
//! then delivered to their submitters by the delivery task until acknowledged.
//!
//! The run task ([`run`](super::run)) writes results; the delivery loop wakes when
//! one is written, when a delivery ends, and every [`RETRY_EVERY`] while the outbox
//! is not empty. It starts one delivery task per submitter with results waiting, at
//! most [`DELIVERY_CONCURRENCY`] at once, skipping submitters it is backing off from:
//! a slow or silent submitter holds one task, never the others' deliveries. Each
//! task reads only its submitter's results, in keyset pages bounded by rows and
//! bytes (`Db::outbox_page_of`), and sends them in batches that fit a message; only
//! an acknowledgement removes a result. A submitter that answers a batch but takes
//! none of it is backed off from like one that does not answer (2 s, doubling up
//! to a minute), so one that never acknowledges is not sent its outbox again and
//! again. Every [`EXPIRE_EVERY`] the loop drops
//! results older than the worker's `outbox_expiry`. The counts admission and the
//! loop read (rows and bytes per submitter, [`OutboxCounts`]) change only together
//! with the rows they count (under the worker's outbox gate): grown by each result
//! written, shrunk by each acknowledged batch as it is deleted, and recounted from
//! the database now and then (see [`Worker::deliver_loop`]).
//! This node's own results go to its scheduler directly
//! ([`LocalResults`](super::LocalResults)). Reads run through
//! [`Db::run`](crate::store::Db::run), off the async threads; writes through
//! [`Db::write`](crate::store::Db::write), which never waits on one.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use libp2p::PeerId;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Worker;
use crate::net::protocol::{ChunkResult, MAX_RESULT_BYTES, Payload, ResultBatch};
use crate::store::db::{OutboxRow, Write};
use crate::types::{JobId, now_ms};

/// Results per delivery batch, at most.
const DELIVERY_BATCH: usize = 64;
/// Bytes of encoded results per batch, at most: a message's limit less room for the
/// envelope (the batch's length prefix and the request framing: a few bytes). A
/// result larger than this goes alone; none is, since inline outputs are at most
/// [`INLINE_OUTPUT`](super::INLINE_OUTPUT) (4 MiB) and larger ones travel as blobs.
pub(super) const BATCH_BYTES: usize = MAX_RESULT_BYTES - 64 * 1024;
/// Outbox entries read at a time.
const PAGE_ROWS: usize = 256;
/// Bytes of results read at a time (a page stops once it holds this much).
const PAGE_BYTES: usize = 16 * 1024 * 1024;
/// Recounts of the outbox asked for by notifications are at least this far apart.
const RECOUNT_GAP: Duration = Duration::from_millis(100);
/// Submitters delivered to at once.
pub(super) const DELIVERY_CONCURRENCY: usize = 8;
/// While results wait, a delivery round starts at least this often.
pub(super) const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How often results older than the expiry are dropped.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);
/// After a failed delivery, wait this long before trying that submitter again; the
/// wait doubles with each failure in a row, up to [`MAX_BACKOFF`].
const DELIVERY_BACKOFF: Duration = Duration::from_secs(2);
/// The longest wait between tries to one submitter.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Submitters not tried until a time, with the wait that got them there.
type Backoff = HashMap<String, (Instant, Duration)>;

/// What the outbox holds: per submitter (rows, bytes), and in all. Bounded by the
/// outbox's own rows. Changed only under the outbox gate, together with the rows.
#[derive(Debug, Default)]
pub(super) struct OutboxCounts {
    per: HashMap<String, (u64, u64)>,
    rows: u64,
    bytes: u64,
}

impl OutboxCounts {
    /// (rows, bytes) in all, and (rows, bytes) of `submitter`.
    pub(super) fn usage(&self, submitter: &str) -> ((u64, u64), (u64, u64)) {
        (
            (self.rows, self.bytes),
            self.per.get(submitter).copied().unwrap_or_default(),
        )
    }
}

/// What one delivery removed from the outbox: how many results were sent and
/// acknowledged (their counts went with them), and whether it dropped others
/// (undeliverable) so that only a recount knows the counts.
#[derive(Debug, Default)]
pub(super) struct Removed {
    rows: u64,
    recount: bool,
}

/// A delivery task's end: to whom, what it removed, and how it ended.
type Delivered = (String, Removed, Result<(), String>);

/// A result's size as the outbox counts it: encoded, plus a large output's blob.
fn counted_bytes(encoded: usize, result: &ChunkResult) -> u64 {
    let blob = match &result.output {
        Some(Payload::Blob { size, .. }) => *size,
        _ => 0,
    };
    (encoded as u64).saturating_add(blob)
}

impl Worker {
    /// Writes a result to the outbox and wakes the delivery task. A result that
    /// cannot be written is lost (and said so): its submitter reissues the chunk.
    pub(super) async fn store_result(&self, submitter: PeerId, result: ChunkResult) {
        let Ok(bytes) = postcard::to_allocvec(&result) else {
            return;
        };
        let size = counted_bytes(bytes.len(), &result);
        let row = OutboxRow {
            job_id: result.job_id,
            chunk: result.chunk,
            attempt: result.attempt,
            submitter: submitter.to_string(),
            result: bytes,
        };
        let who = row.submitter.clone();
        let gate = self.inner.outbox_gate.lock().await;
        match self.inner.db.write(vec![Write::OutboxPut(row)]).await {
            Ok(()) => {
                {
                    let mut counts = self.outbox_counts();
                    let mine = counts.per.entry(who).or_default();
                    mine.0 += 1;
                    mine.1 = mine.1.saturating_add(size);
                    counts.rows += 1;
                    counts.bytes = counts.bytes.saturating_add(size);
                    self.inner.outbox_len.store(counts.rows, Ordering::Relaxed);
                }
                drop(gate);
                self.inner.deliver.notify_one();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write a result to the outbox; it is lost")
            }
        }
    }

    pub(super) fn outbox_counts(&self) -> std::sync::MutexGuard<'_, OutboxCounts> {
        self.inner.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the outbox again, per submitter (at start, after expiry, cancels and
    /// rows dropped as undeliverable). Under the outbox gate: no write or
    /// acknowledged delete lands between the read and the new counts.
    pub(super) async fn refresh_outbox_len(&self) {
        let _gate = self.inner.outbox_gate.lock().await;
        match self.inner.db.run(|db| db.outbox_usage()).await {
            Ok(usage) => {
                let mut counts = OutboxCounts::default();
                for u in usage {
                    counts.rows += u.rows;
                    counts.bytes = counts.bytes.saturating_add(u.bytes);
                    counts.per.insert(u.submitter, (u.rows, u.bytes));
                }
                self.inner.outbox_len.store(counts.rows, Ordering::Relaxed);
                *self.outbox_counts() = counts;
            }
            Err(e) => tracing::warn!(error = %e, "cannot count the outbox"),
        }
    }

    /// Sends outbox entries to their submitters until shutdown; an entry leaves the
    /// outbox only when acknowledged (or expired).
    ///
    /// Whom to deliver to comes from the counts per submitter. They change only
    /// under the outbox gate, together with the rows: a result's count is added
    /// with its write (before its notification), an acknowledged batch's counts are
    /// taken off with its delete, and a recount reads the table and replaces the
    /// counts without a write or delete in between. (They once moved apart: a
    /// delivery took its rows off at its end, after a recount had already read the
    /// table without them, so another waiting result was counted out; with the
    /// outbox looking empty nothing woke the loop and the result was never
    /// delivered.) The loop still recounts at start, every [`RETRY_EVERY`] while
    /// results wait, after an expiry, a cancel or rows dropped as undeliverable, and
    /// when a notification finds nobody to deliver to (at most every
    /// [`RECOUNT_GAP`]), so that a count gone wrong any other way costs a moment,
    /// not a result.
    pub(super) async fn deliver_loop(&self) {
        self.refresh_outbox_len().await;
        let mut last_recount = Instant::now();
        let mut recount_at: Option<Instant> = None;
        let mut backoff = Backoff::new();
        let mut running: JoinSet<Delivered> = JoinSet::new();
        let mut busy: HashSet<String> = HashSet::new();
        // Submitters whose last delivery found nothing although counted: not tried
        // again before the next recount.
        let mut idle: HashSet<String> = HashSet::new();
        let mut expired_at: Option<Instant> = None;
        loop {
            let waiting = self.inner.outbox_len.load(Ordering::Relaxed) > 0;
            let mut notified = false;
            tokio::select! {
                biased;
                _ = self.inner.shutdown.cancelled() => break,
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok((submitter, removed, outcome)) = done {
                        busy.remove(&submitter);
                        if removed.recount {
                            recount_at.get_or_insert_with(Instant::now);
                        }
                        match outcome {
                            Ok(()) => {
                                backoff.remove(&submitter);
                                if removed.rows == 0 && !removed.recount {
                                    recount_at.get_or_insert(last_recount + RECOUNT_GAP);
                                    idle.insert(submitter);
                                }
                            }
                            Err(e) => {
                                tracing::debug!(%submitter, error = %e, "result delivery failed; will retry");
                                let wait = backoff
                                    .get(&submitter)
                                    .map_or(DELIVERY_BACKOFF, |(_, w)| (*w * 2).min(MAX_BACKOFF));
                                backoff.insert(submitter, (Instant::now() + wait, wait));
                            }
                        }
                    }
                }
                _ = self.inner.deliver.notified() => notified = true,
                _ = tokio::time::sleep(RETRY_EVERY), if waiting => {
                    recount_at = Some(Instant::now());
                }
                _ = tokio::time::sleep_until(recount_at.unwrap_or_else(Instant::now)), if recount_at.is_some() => {}
            }
            if notified {
                // A new result may be for a submitter found empty a moment ago (its
                // count ran ahead of the table when a delivery took a row before the
                // row's own count was added): it must not wait for the recount.
                idle.clear();
            }
            if expired_at.is_none_or(|at| at.elapsed() >= EXPIRE_EVERY) {
                expired_at = Some(Instant::now());
                if self.expire().await {
                    recount_at = Some(Instant::now());
                }
            }
            if self.inner.outbox_stale.swap(false, Ordering::AcqRel) {
                recount_at.get_or_insert(last_recount + RECOUNT_GAP);
            }
            if recount_at.is_some_and(|at| at <= Instant::now()) {
                self.refresh_outbox_len().await;
                last_recount = Instant::now();
                recount_at = None;
                idle.clear();
            }
            let now = Instant::now();
            // A submitter's wait is remembered past its end (so the next failure
            // doubles it) until a delivery succeeds, or a longest wait after.
            backoff.retain(|_, (until, _)| *until + MAX_BACKOFF > now);
            let started = self.start_deliveries(&mut running, &mut busy, &idle, &backoff, now);
            if notified && started == 0 && recount_at.is_none() {
                // Nothing to do for a new result: the counts may be stale.
                recount_at = Some((last_recount + RECOUNT_GAP).max(now));
            }
        }
        // Results stay in the outbox until acknowledged: an interrupted delivery is
        // sent again after a restart (the submitter takes a result once).
        running.abort_all();
        while running.join_next().await.is_some() {}
    }

    /// Takes `rows` results of `bytes` off `submitter`'s counts (called under the
    /// outbox gate, with their deletion).
    fn uncount(&self, submitter: &str, rows: u64, bytes: u64) {
        if rows == 0 {
            return;
        }
        let mut counts = self.outbox_counts();
        let mut gone = false;
        if let Some(mine) = counts.per.get_mut(submitter) {
            mine.0 = mine.0.saturating_sub(rows);
            mine.1 = mine.1.saturating_sub(bytes);
            gone = mine.0 == 0;
        }
        if gone {
            counts.per.remove(submitter);
        }
        counts.rows = counts.rows.saturating_sub(rows);
        counts.bytes = counts.bytes.saturating_sub(bytes);
        self.inner.outbox_len.store(counts.rows, Ordering::Relaxed);
    }

    /// Starts a delivery task for each submitter with results waiting that is not
    /// being delivered to or backed off from, up to [`DELIVERY_CONCURRENCY`].
    /// Returns how many it started.
    fn start_deliveries(
        &self,
        running: &mut JoinSet<Delivered>,
        busy: &mut HashSet<String>,
        idle: &HashSet<String>,
        backoff: &Backoff,
        now: Instant,
    ) -> usize {
        if running.len() >= DELIVERY_CONCURRENCY {
            return 0;
        }
        let waiting: Vec<String> = self
            .outbox_counts()
            .per
            .iter()
            .filter(|(s, (rows, _))| {
                *rows > 0
                    && !busy.contains(*s)
                    && !idle.contains(*s)
                    && backoff.get(*s).is_none_or(|(until, _)| *until <= now)
            })
            .map(|(s, _)| s.clone())
            .take(DELIVERY_CONCURRENCY - running.len())
            .collect();
        let started = waiting.len();
        for submitter in waiting {
            busy.insert(submitter.clone());
            let worker = self.clone();
            running.spawn(tracing::Instrument::in_current_span(async move {
                let mut removed = Removed::default();
                let outcome = worker.deliver_submitter(&submitter, &mut removed).await;
                (submitter, removed, outcome)
            }));
        }
        started
    }

    /// Drops results older than the expiry; whether it dropped any.
    async fn expire(&self) -> bool {
        let expiry = self.inner.limits.outbox_expiry;
        let before = now_ms().saturating_sub(expiry.as_millis() as u64);
        match self.inner.db.run(move |db| db.outbox_expire(before)).await {
            Ok(0) => false,
            Ok(n) => {
                self.inner.metrics.expired.inc_by(n as u64);
                tracing::info!(
                    expired = n,
                    after = %humantime::format_duration(expiry),
                    "dropped results their submitters never took"
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot expire old results");
                false
            }
        }
    }

    /// Delivers `submitter`'s results, a page at a time, until none is left or a
    /// send fails.
    async fn deliver_submitter(
        &self,
        submitter: &str,
        removed: &mut Removed,
    ) -> Result<(), String> {
        let mut after: Option<(JobId, u32, u32)> = None;
        loop {
            let who = submitter.to_string();
            let page = self
                .inner
                .db
                .run(move |db| db.outbox_page_of(&who, after, PAGE_ROWS, PAGE_BYTES))
                .await
                .map_err(|e| format!("cannot read the outbox: {e}"))?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some((last.job_id, last.chunk, last.attempt));
            self.deliver_to(submitter, page, removed).await?;
        }
    }

    /// Sends `rows` to `submitter` in batches that fit a message, and drops what it
    /// acknowledges from the outbox. Rows that can never be delivered (a malformed
    /// submitter or result) are dropped with a warning.
    async fn deliver_to(
        &self,
        submitter: &str,
        rows: Vec<OutboxRow>,
        removed: &mut Removed,
    ) -> Result<(), String> {
        let Ok(peer) = submitter.parse::<PeerId>() else {
            removed.recount = true;
            tracing::warn!(%submitter, "dropping results for a malformed submitter id");
            self.delete(
                submitter,
                rows.iter()
                    .map(|r| (r.job_id, r.chunk, r.attempt))
                    .collect(),
            )
            .await;
            return Ok(());
        };
        let (rows, oversized): (Vec<OutboxRow>, Vec<OutboxRow>) = rows
            .into_iter()
            .partition(|r| r.result.len() <= BATCH_BYTES);
        if !oversized.is_empty() {
            // Cannot happen (outputs over 4 MiB travel as blobs; messages are capped),
            // but such a row could never be sent: it must not wedge the rest.
            tracing::warn!(%submitter, n = oversized.len(), "dropping results too large for any message");
            removed.recount = true;
            self.delete(
                submitter,
                oversized
                    .iter()
                    .map(|r| (r.job_id, r.chunk, r.attempt))
                    .collect(),
            )
            .await;
        }
        for batch in batches(rows) {
            let mut results = Vec::with_capacity(batch.len());
            let mut sizes = HashMap::with_capacity(batch.len());
            for row in batch {
                match postcard::from_bytes::<ChunkResult>(&row.result) {
                    Ok(result) => {
                        let key = (result.job_id, result.chunk, result.attempt);
                        sizes.insert(key, counted_bytes(row.result.len(), &result));
                        results.push(result);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "dropping an outbox entry that does not decode");
                        removed.recount = true;
                        self.delete(submitter, vec![(row.job_id, row.chunk, row.attempt)])
                            .await;
                    }
                }
            }
            if !results.is_empty() {
                let sent = results.len();
                let acknowledged = self.send(peer, results).await?;
                // Only what was sent and acknowledged leaves the outbox, and its
                // counts with it.
                let mut gone = Vec::with_capacity(acknowledged.len());
                let (mut rows, mut bytes) = (0u64, 0u64);
                for key in acknowledged {
                    if let Some(size) = sizes.remove(&key) {
                        gone.push(key);
                        rows += 1;
                        bytes = bytes.saturating_add(size);
                    }
                }
                if gone.is_empty() {
                    // It answered but took nothing of this batch (its store failed,
                    // it never takes anything, or it acknowledged other keys): a
                    // failure like no answer, backed off from, not a batch to send
                    // again at once (a submitter that acknowledged nothing had a
                    // worker send it its whole outbox several times a second).
                    return Err(format!("the submitter took none of {sent} results"));
                }
                let _gate = self.inner.outbox_gate.lock().await;
                if self.delete(submitter, gone).await {
                    self.uncount(submitter, rows, bytes);
                    removed.rows += rows;
                }
            }
        }
        Ok(())
    }

    /// Sends one batch; returns what the submitter acknowledged.
    async fn send(
        &self,
        peer: PeerId,
        results: Vec<ChunkResult>,
    ) -> Result<Vec<(JobId, u32, u32)>, String> {
        let batch = ResultBatch { results };
        let ack = match self.inner.local_scheduler.get() {
            Some(local) if peer == self.inner.net.local_peer_id() => (local.0)(peer, batch).await,
            _ => self
                .inner
                .net
                .send_results(peer, batch)
                .await
                .map_err(|e| e.to_string())?,
        };
        Ok(ack.stored)
    }

    /// Drops `submitter`'s acknowledged (or undeliverable) results; whether they
    /// are gone.
    async fn delete(&self, submitter: &str, keys: Vec<(JobId, u32, u32)>) -> bool {
        if keys.is_empty() {
            return true;
        }
        let writes: Vec<Write> = keys
            .into_iter()
            .map(|(j, c, a)| Write::OutboxDelete(submitter.to_string(), j, c, a))
            .collect();
        match self.inner.db.write(writes).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot clear acknowledged results");
                false
            }
        }
    }
}

/// Splits rows into batches of at most [`DELIVERY_BATCH`] results and
/// [`BATCH_BYTES`] encoded bytes; a row larger than that alone goes in a batch of
/// its own.
pub(super) fn batches(rows: Vec<OutboxRow>) -> Vec<Vec<OutboxRow>> {
    crate::net::protocol::split_by_size(rows, DELIVERY_BATCH, BATCH_BYTES, |r| r.result.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::protocol::{BlobHash, WireOutcome};

    fn row(chunk: u32, output: usize) -> (OutboxRow, ChunkResult) {
        let result = ChunkResult {
            job_id: JobId([0xff; 16]),
            chunk,
            attempt: u32::MAX,
            outcome: WireOutcome::Ok,
            output_hash: BlobHash::of(b""),
            output: Some(Payload::Inline(vec![0xff; output])),
            fuel_used: u64::MAX,
            exec_micros: u64::MAX,
            signature: vec![0xff; crate::types::MAX_SIGNATURE_BYTES],
        };
        let row = OutboxRow {
            job_id: result.job_id,
            chunk,
            attempt: result.attempt,
            submitter: "s".into(),
            result: postcard::to_allocvec(&result).unwrap(),
        };
        (row, result)
    }

    #[test]
    fn result_batches_fit_a_message_with_outputs_near_the_limits() {
        let inline = super::super::INLINE_OUTPUT;
        // The largest inline outputs (each alone or in pairs at most), outputs just
        // over a third of a batch, and many small ones.
        let sizes = [
            inline,
            inline,
            inline - 1,
            BATCH_BYTES / 3 + 1,
            BATCH_BYTES / 3 + 1,
        ]
        .into_iter()
        .chain(std::iter::repeat_n(BATCH_BYTES / 3 - 300, 3))
        .chain(std::iter::repeat_n(10, 200));
        let (rows, results): (Vec<OutboxRow>, Vec<ChunkResult>) =
            sizes.enumerate().map(|(i, n)| row(i as u32, n)).unzip();
        let batches = batches(rows);
        let mut next = 0;
        for batch in &batches {
            assert!(!batch.is_empty() && batch.len() <= DELIVERY_BATCH);
            let sent: Vec<ChunkResult> = results[next..next + batch.len()].to_vec();
            next += batch.len();
            assert_eq!(
                batch.iter().map(|r| r.chunk).collect::<Vec<_>>(),
                sent.iter().map(|r| r.chunk).collect::<Vec<_>>(),
                "in order, every result once"
            );
            let bytes = postcard::to_allocvec(&ResultBatch { results: sent }).unwrap();
            assert!(bytes.len() <= MAX_RESULT_BYTES, "{} bytes", bytes.len());
        }
        assert_eq!(next, results.len());
        // Two largest inline outputs fit one message; a third does not.
        assert_eq!(batches[0].len(), 1, "4 MiB + 4 MiB is over a batch");
        // No batch is cut short: the next result would not have fitted.
        for pair in batches.windows(2) {
            let bytes: usize = pair[0].iter().map(|r| r.result.len()).sum();
            assert!(
                pair[0].len() == DELIVERY_BATCH || bytes + pair[1][0].result.len() > BATCH_BYTES,
                "a batch of {} ({bytes} bytes) could have taken the next",
                pair[0].len()
            );
        }
    }
}
