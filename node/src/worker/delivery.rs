//! The outbox: finished results are written there first ([`Worker::store_result`]),
//! then delivered to their submitters by the delivery task until acknowledged.
//!
//! The run task ([`run`](super::run)) writes results; the delivery loop wakes when
//! one is written, and every [`RETRY_EVERY`] while the outbox is not empty. A round
//! reads the outbox in pages (keyset order, bounded by rows and bytes, see
//! `Db::outbox_page`), skipping submitters it is backing off from, and sends each
//! submitter's results in batches that fit a message. This node's own results go
//! to its scheduler directly ([`LocalResults`](super::LocalResults)). Every database
//! call runs through [`Db::run`](crate::store::Db::run), off the async threads.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;

use super::Worker;
use crate::net::protocol::{ChunkResult, MAX_RESULT_BYTES, ResultBatch};
use crate::store::OutboxKey;
use crate::store::db::{OutboxRow, Write};
use crate::types::JobId;

/// Results per delivery batch, at most.
const DELIVERY_BATCH: usize = 64;
/// Bytes of encoded results per batch, at most: a message's limit less room for the
/// envelope. A result larger than this goes alone.
const BATCH_BYTES: usize = MAX_RESULT_BYTES - 64 * 1024;
/// Outbox entries read at a time.
const PAGE_ROWS: usize = 256;
/// Bytes of results read at a time (a page stops once it holds this much).
const PAGE_BYTES: usize = 16 * 1024 * 1024;
/// While results wait, a delivery round starts at least this often.
pub(super) const RETRY_EVERY: Duration = Duration::from_secs(1);
/// After a failed delivery, wait this long before trying that submitter again; the
/// wait doubles with each failure in a row, up to [`MAX_BACKOFF`].
const DELIVERY_BACKOFF: Duration = Duration::from_secs(2);
/// The longest wait between tries to one submitter.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Submitters not tried until a time, with the wait that got them there.
type Backoff = HashMap<String, (Instant, Duration)>;

impl Worker {
    /// Writes a result to the outbox and wakes the delivery task. A result that
    /// cannot be written is lost (and said so): its submitter reissues the chunk.
    pub(super) async fn store_result(&self, submitter: PeerId, result: ChunkResult) {
        let Ok(bytes) = postcard::to_allocvec(&result) else {
            return;
        };
        let row = OutboxRow {
            job_id: result.job_id,
            chunk: result.chunk,
            attempt: result.attempt,
            submitter: submitter.to_string(),
            result: bytes,
        };
        match self
            .inner
            .db
            .run(move |db| db.apply(&[Write::OutboxPut(row)]))
            .await
        {
            Ok(()) => {
                self.inner.outbox_len.fetch_add(1, Ordering::Relaxed);
                self.inner.deliver.notify_one();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write a result to the outbox; it is lost")
            }
        }
    }

    /// Counts the outbox again (after deliveries and cancels).
    pub(super) async fn refresh_outbox_len(&self) {
        match self.inner.db.run(|db| db.outbox_len()).await {
            Ok(n) => self.inner.outbox_len.store(n, Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "cannot count the outbox"),
        }
    }

    /// Sends outbox entries to their submitters until shutdown; an entry leaves the
    /// outbox only when acknowledged.
    ///
    /// A notification (a result was stored) always starts a round, whatever
    /// `outbox_len` says: the count is refreshed from the database after each round,
    /// and a refresh that read the table just before a new row was written can store
    /// a stale 0 after the row's own increment. Gating the round on that count lost
    /// the row until the next result arrived (a one-chunk job waited for its soft
    /// timeout, 120 s, seen in `bench grid` under load).
    pub(super) async fn deliver_loop(&self) {
        self.refresh_outbox_len().await;
        let mut backoff = Backoff::new();
        loop {
            let waiting = self.inner.outbox_len.load(Ordering::Relaxed) > 0;
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => break,
                _ = self.inner.deliver.notified() => {}
                _ = tokio::time::sleep(RETRY_EVERY), if waiting => {}
            }
            let now = Instant::now();
            backoff.retain(|_, (until, _)| *until > now);
            self.deliver_round(&mut backoff).await;
            self.refresh_outbox_len().await;
        }
    }

    /// One pass over the outbox, a page at a time.
    async fn deliver_round(&self, backoff: &mut Backoff) {
        let mut after: Option<OutboxKey> = None;
        loop {
            let skip: Vec<String> = backoff.keys().cloned().collect();
            let page = match self
                .inner
                .db
                .run(move |db| db.outbox_page(after, &skip, PAGE_ROWS, PAGE_BYTES))
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the outbox");
                    return;
                }
            };
            let Some(last) = page.last() else {
                return;
            };
            after = Some((
                last.submitter.clone(),
                last.job_id,
                last.chunk,
                last.attempt,
            ));
            let mut by_submitter: Vec<(String, Vec<OutboxRow>)> = Vec::new();
            for row in page {
                if backoff.contains_key(&row.submitter) {
                    continue;
                }
                match by_submitter.iter_mut().find(|(s, _)| *s == row.submitter) {
                    Some((_, rows)) => rows.push(row),
                    None => by_submitter.push((row.submitter.clone(), vec![row])),
                }
            }
            for (submitter, rows) in by_submitter {
                if let Err(e) = self.deliver_to(&submitter, rows).await {
                    tracing::debug!(%submitter, error = %e, "result delivery failed; will retry");
                    let wait = backoff
                        .get(&submitter)
                        .map_or(DELIVERY_BACKOFF, |(_, w)| (*w * 2).min(MAX_BACKOFF));
                    backoff.insert(submitter, (Instant::now() + wait, wait));
                }
            }
        }
    }

    /// Sends `rows` to `submitter` in batches that fit a message, and drops what it
    /// acknowledges from the outbox. Rows that can never be delivered (a malformed
    /// submitter or result) are dropped with a warning.
    async fn deliver_to(&self, submitter: &str, rows: Vec<OutboxRow>) -> Result<(), String> {
        let Ok(peer) = submitter.parse::<PeerId>() else {
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
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut rows = rows.into_iter().peekable();
        while let Some(row) = rows.next() {
            match postcard::from_bytes::<ChunkResult>(&row.result) {
                Ok(result) => {
                    bytes += row.result.len();
                    batch.push(result);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dropping an outbox entry that does not decode");
                    self.delete(submitter, vec![(row.job_id, row.chunk, row.attempt)])
                        .await;
                }
            }
            let full = rows.peek().is_none_or(|next| {
                batch.len() >= DELIVERY_BATCH || bytes + next.result.len() > BATCH_BYTES
            });
            if full && !batch.is_empty() {
                self.send(peer, std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
        }
        Ok(())
    }

    /// Sends one batch and drops what the submitter acknowledged.
    async fn send(&self, peer: PeerId, results: Vec<ChunkResult>) -> Result<(), String> {
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
        self.delete(&peer.to_string(), ack.stored).await;
        Ok(())
    }

    /// Drops `submitter`'s acknowledged (or undeliverable) results.
    async fn delete(&self, submitter: &str, keys: Vec<(JobId, u32, u32)>) {
        if keys.is_empty() {
            return;
        }
        let writes: Vec<Write> = keys
            .into_iter()
            .map(|(j, c, a)| Write::OutboxDelete(submitter.to_string(), j, c, a))
            .collect();
        if let Err(e) = self.inner.db.run(move |db| db.apply(&writes)).await {
            tracing::warn!(error = %e, "cannot clear acknowledged results");
        }
    }
}
