//! Admission: which assignments of an offer the worker takes ([`Worker::offer`]),
//! and cancels ([`Worker::cancel`]).
//!
//! Called by the node's dispatcher (offers and cancels from the network) and by this
//! node's scheduler (its own chunks). Both answer at once: admission only looks at
//! counters and the active set; a cancel's outbox deletion is written by a task.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use libp2p::PeerId;
use tokio::time::{Duration, Instant};
use tracing::Instrument;

use super::metrics::REFUSE_REASONS;
use super::{QUEUE_FACTOR, Worker};
use crate::net::protocol::{Assignment, JobId, RejectReason, TaskReply};
use crate::sandbox::ChunkControl;
use crate::store::db::Write;

/// How long a submitter refused for want of room counts as waiting.
pub(super) const WAITING: Duration = Duration::from_secs(30);
/// Most submitters remembered as waiting (the oldest are forgotten first by age).
const MAX_WAITING: usize = 256;

impl Worker {
    /// Takes what it can of an offer from `submitter`, refusing the rest with a reason.
    pub fn offer(
        &self,
        submitter: PeerId,
        job_id: JobId,
        assignments: Vec<Assignment>,
    ) -> TaskReply {
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        let allowed = self.inner.gate.allowed();
        let capacity = if self.inflates() {
            usize::MAX
        } else {
            (allowed * QUEUE_FACTOR) as usize
        };
        let busy = if allowed == 0 && self.inner.politeness.decision().reason.is_some() {
            RejectReason::Suspended
        } else {
            RejectReason::NoFreeSlots
        };
        let limits = self.limits();
        let memory = self.inner.memory_limit;
        // The outbox: full in all refuses everyone; a submitter over its quota (its
        // results not taken) is refused alone.
        let ((rows, bytes), (mine, my_bytes)) = self.outbox_counts().usage(&submitter.to_string());
        let outbox_full = rows >= limits.outbox_results || bytes >= limits.outbox_bytes;
        let quota_full = mine >= limits.outbox_results_per_submitter
            || my_bytes >= limits.outbox_bytes_per_submitter;
        if quota_full {
            tracing::debug!(%submitter, results = mine, bytes = my_bytes, "refusing offers: this submitter's undelivered results fill its outbox quota");
        }
        let mut taken = Vec::new();
        let mut over_limits = false;
        let mut refused_for_room = false;
        let mut over_share = 0u64;
        // One offence per offer at most (a module no honest submitter sends).
        let mut offence: Option<String> = None;
        {
            let mut active = self.active();
            // The fair share: while another submitter holds or waits for a slot,
            // this one may hold at most its share of what the worker takes.
            let mut held = active.keys().filter(|k| k.0 == submitter).count();
            let others = active.keys().any(|k| k.0 != submitter) || self.others_wait(submitter);
            let share = if self.inflates() {
                usize::MAX
            } else {
                limits.share(capacity, others)
            };
            for a in assignments {
                let key = (submitter, job_id, a.chunk, a.attempt);
                if active.contains_key(&key) {
                    accepted.push((a.chunk, a.attempt));
                } else if !limits.fits(&a.limits, memory) {
                    let most = limits.maxima(memory);
                    if !over_limits {
                        over_limits = true;
                        tracing::info!(
                            %submitter,
                            job = %job_id,
                            asked = ?a.limits,
                            most = ?most,
                            "refusing chunks over this node's limits (--max-fuel, --max-timeout, --max-output, --memory)"
                        );
                    }
                    rejected.push((a.chunk, a.attempt, RejectReason::LimitsTooHigh(most)));
                } else if let Some((why, hostile)) = self.refused_module(&a.module) {
                    if hostile && offence.is_none() {
                        offence = Some(format!("offered module {} again: {why}", a.module));
                    }
                    rejected.push((a.chunk, a.attempt, RejectReason::BadModule(why)));
                } else if quota_full {
                    rejected.push((
                        a.chunk,
                        a.attempt,
                        RejectReason::OutboxFull {
                            rows: mine,
                            bytes: my_bytes,
                        },
                    ));
                } else if outbox_full {
                    rejected.push((a.chunk, a.attempt, RejectReason::NoFreeSlots));
                } else if active.len() >= capacity || held >= share {
                    refused_for_room = true;
                    if active.len() < capacity {
                        over_share += 1;
                    }
                    rejected.push((a.chunk, a.attempt, busy.clone()));
                } else {
                    let control = Arc::new(ChunkControl::gated(self.inner.gate.clone()));
                    active.insert(key, control.clone());
                    held += 1;
                    accepted.push((a.chunk, a.attempt));
                    taken.push((a, control));
                }
            }
        }
        if refused_for_room {
            self.waits(submitter);
        }
        self.count_refusals(&rejected, over_share);
        if let Some(reason) = offence.filter(|_| submitter != self.inner.net.local_peer_id()) {
            let net = self.inner.net.clone();
            self.inner
                .tasks
                .spawn(async move { net.penalize(submitter, reason).await }.in_current_span());
        }
        for (assignment, control) in taken {
            let worker = self.clone();
            let span = tracing::info_span!(
                "chunk",
                job = %job_id,
                chunk = assignment.chunk,
                attempt = assignment.attempt
            );
            self.inner.tasks.spawn(
                async move {
                    worker.run(submitter, job_id, assignment, control).await;
                }
                .instrument(span),
            );
        }
        TaskReply::Offer { accepted, rejected }
    }

    /// Records refusals by reason (`over_share` of the `NoFreeSlots` ones were for
    /// the fair share).
    fn count_refusals(&self, rejected: &[(u32, u32, RejectReason)], over_share: u64) {
        let mut counts = [0u64; REFUSE_REASONS.len()];
        for (_, _, reason) in rejected {
            let label = match reason {
                RejectReason::NoFreeSlots | RejectReason::NotAccepting => 0,
                RejectReason::Suspended => 2,
                RejectReason::LimitsTooHigh(_) => 3,
                RejectReason::BadModule(_) => 4,
                RejectReason::OutboxFull { .. } => 5,
            };
            counts[label] += 1;
        }
        let share = over_share.min(counts[0]);
        counts[0] -= share;
        counts[1] += share;
        for (label, n) in REFUSE_REASONS.iter().zip(counts) {
            if n > 0 {
                self.inner
                    .metrics
                    .refused
                    .with_label_values(&[label])
                    .inc_by(n);
            }
        }
    }

    /// `submitter` was refused for want of room: it waits, and the others hold only
    /// their share for [`WAITING`] (it retries sooner, and is remembered again).
    fn waits(&self, submitter: PeerId) {
        let now = Instant::now();
        let mut waiting = self.inner.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|_, at| now.duration_since(*at) < WAITING);
        if waiting.len() < MAX_WAITING || waiting.contains_key(&submitter) {
            waiting.insert(submitter, now);
        }
    }

    /// Whether a submitter other than `submitter` waited for room recently.
    fn others_wait(&self, submitter: PeerId) -> bool {
        let now = Instant::now();
        let waiting = self.inner.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting
            .iter()
            .any(|(peer, at)| *peer != submitter && now.duration_since(*at) < WAITING)
    }

    /// Stops the given chunks of `submitter`'s job (all of them when `chunks` is
    /// empty) and drops their undelivered results. Only chunks that `submitter`
    /// offered are touched: a cancel from any other peer changes nothing. The chunks
    /// stop at once; the outbox is cleared by a task, off the caller's thread.
    pub fn cancel(&self, submitter: PeerId, job_id: JobId, chunks: &[u32]) {
        let wanted: HashSet<u32> = chunks.iter().copied().collect();
        let mut writes = Vec::new();
        let who = submitter.to_string();
        for ((from, job, chunk, attempt), control) in self.active().iter() {
            if *from == submitter && *job == job_id && (wanted.is_empty() || wanted.contains(chunk))
            {
                control.cancel();
                writes.push(Write::OutboxDelete(who.clone(), *job, *chunk, *attempt));
            }
        }
        if wanted.is_empty() {
            writes.push(Write::OutboxDeleteJob(who, job_id));
        }
        if writes.is_empty() {
            return;
        }
        let worker = self.clone();
        self.inner.tasks.spawn(
            async move {
                if let Err(e) = worker.inner.db.write(writes).await {
                    tracing::warn!(error = %e, "could not drop cancelled results from the outbox");
                }
                // The delivery loop counts again (a recount there never races a
                // delivery's own count of what it removed).
                worker.inner.outbox_stale.store(true, Ordering::Release);
                worker.inner.deliver.notify_one();
            }
            .in_current_span(),
        );
    }
}
