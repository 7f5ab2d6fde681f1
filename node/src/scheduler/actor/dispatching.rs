//! The actor's dispatch: the capacity view and the candidates, the plan stored and
//! applied, offers sent and their answers; and cancellation.

use super::*;

/// An offer's answer as it reaches the actor: job, peer, the (chunk, attempt)
/// pairs offered, the reply.
pub(super) type OfferReplyMsg = (
    JobId,
    PeerId,
    Vec<(u32, u32)>,
    Result<TaskReply, crate::net::RequestError>,
);

impl Actor {
    /// Cancels a job durably: `Ok(None)` for an unknown job, `Err` when the
    /// cancellation could not be stored (nothing changed).
    pub(super) async fn cancel(&mut self, id: JobId) -> Result<Option<()>, String> {
        let Some(job) = self.state.jobs.get(&id) else {
            return match self.db(move |db| db.job(id)).await {
                Ok(row) => Ok(row.map(|_| ())),
                Err(e) => Err(e.to_string()),
            };
        };
        if job.state.is_final() {
            return Ok(Some(()));
        }
        let holders: HashSet<PeerId> = job
            .chunks
            .iter()
            .flat_map(|c| c.replicas.iter())
            .filter(|r| r.state.is_live())
            .map(|r| r.peer)
            .collect();
        let mut txn = Txn::new(&self.state);
        if let Some(mut head) = txn.head(id) {
            head.state = JobState::Cancelled;
            head.finished_ms = Some(self.now());
            head.result = None;
            head.error = None;
            txn.ch.writes.push(head.write(id));
            txn.put_head(id, head);
        }
        let ch = txn.finish();
        self.persist_then_apply(ch)
            .await
            .map_err(|e| format!("the cancellation could not be stored: {e}"))?;
        tracing::info!(job = %id, "job cancelled");
        for peer in holders {
            let net = self.ctx.net.clone();
            tokio::spawn(tracing::Instrument::in_current_span(async move {
                let cancel = TaskRequest::Cancel {
                    job_id: id,
                    chunks: Vec::new(),
                };
                let _ = net.send_task(peer, cancel).await;
            }));
        }
        Ok(Some(()))
    }

    /// One offer's answer; see [`on_offer_replies`](Self::on_offer_replies).
    pub(super) async fn on_offer_reply(
        &mut self,
        id: JobId,
        peer: PeerId,
        offered: Vec<(u32, u32)>,
        reply: Result<TaskReply, crate::net::RequestError>,
    ) {
        self.on_offer_replies(vec![(id, peer, offered, reply)])
            .await;
    }

    /// Offers' answers, one or several (those that queued while the actor was
    /// busy): the accepted replicas stay offered, the refused ones go back to
    /// pending, all in one transaction.
    pub(super) async fn on_offer_replies(&mut self, replies: Vec<OfferReplyMsg>) {
        let mut answered = Vec::with_capacity(replies.len());
        for (id, peer, offered, reply) in replies {
            if !self.state.jobs.contains_key(&id) {
                continue;
            }
            let accepted = self.accepted_of(id, peer, reply);
            answered.push((id, peer, offered, accepted));
        }
        if answered.is_empty() {
            return;
        }
        let now = self.now();
        let mut txn = Txn::new(&self.state);
        for (id, peer, offered, accepted) in &answered {
            dispatch::offer_reply(&mut txn, *id, *peer, offered, accepted, now);
        }
        let ch = txn.finish();
        if self.persist_then_apply(ch).await.is_err() {
            // The refused replicas need no write: forget them. The accepted ones stay
            // offered; the worker's result is still taken when it comes.
            let mut txn = Txn::new(&self.state);
            for (id, peer, offered, accepted) in answered {
                let refused: Vec<(u32, u32)> = offered
                    .into_iter()
                    .filter(|o| !accepted.contains(o))
                    .collect();
                dispatch::offer_reply(&mut txn, id, peer, &refused, &HashSet::new(), now);
            }
            self.apply(txn.finish());
        }
    }

    /// What a peer accepted of an offer; backs off a full or failing peer and
    /// remembers one that refuses the job for good.
    fn accepted_of(
        &mut self,
        id: JobId,
        peer: PeerId,
        reply: Result<TaskReply, crate::net::RequestError>,
    ) -> HashSet<(u32, u32)> {
        match reply {
            Ok(TaskReply::Offer { accepted, rejected }) => {
                // Every refusal but one for good (limits, module) backs the peer
                // off: a worker that advertises room and refuses everything
                // (`NotAccepting`, `Suspended`) was offered replicas again at every
                // dispatch, and they waited there instead of going elsewhere.
                if rejected.iter().any(|r| {
                    matches!(
                        r.2,
                        RejectReason::NoFreeSlots
                            | RejectReason::OutboxFull { .. }
                            | RejectReason::NotAccepting
                            | RejectReason::Suspended
                    )
                }) {
                    self.backoff
                        .insert(peer, self.now() + PEER_BACKOFF.as_millis() as u64);
                }
                if let Some(reason) = rejected.iter().find_map(|r| match &r.2 {
                    RejectReason::LimitsTooHigh(_) | RejectReason::BadModule(_) => {
                        Some(r.2.clone())
                    }
                    _ => None,
                }) {
                    self.refused_for_good(id, peer, reason);
                }
                accepted.into_iter().collect()
            }
            Ok(TaskReply::Cancelled) | Err(_) => {
                self.backoff
                    .insert(peer, self.now() + PEER_BACKOFF.as_millis() as u64);
                HashSet::new()
            }
        }
    }

    /// `peer` refused `id` for good (its limits, or its module). The job is never
    /// offered to it again (placement skips it), and its status says why.
    fn refused_for_good(&mut self, id: JobId, peer: PeerId, reason: RejectReason) {
        let Some(job) = self.state.jobs.get(&id) else {
            return;
        };
        let asked = job.spec.limits;
        let refused = self.state.refused.entry(id).or_default();
        // Bounded by the peers that can be offered anything (the peer book's size).
        if refused.len() >= 2 * crate::net::peers::MAX_PEERS || refused.contains_key(&peer) {
            return;
        }
        match &reason {
            RejectReason::LimitsTooHigh(most) => tracing::info!(
                job = %id,
                %peer,
                ?asked,
                ?most,
                "a worker refuses this job's limits; not offering it this job again"
            ),
            other => tracing::info!(
                job = %id,
                %peer,
                reason = ?other,
                "a worker refuses this job's module; not offering it this job again"
            ),
        }
        refused.insert(peer, reason);
    }

    /// Reads the capacity view (on a full dispatch) and builds the candidates.
    pub(super) async fn candidates(&mut self, full: bool) -> (Vec<Candidate>, usize, usize) {
        let placement = self.ctx.placement;
        let local = self.state.local;
        if full || self.view.is_empty() {
            // The capacity view changes at advert pace; light dispatches (after every
            // result batch) use the one read by the last full dispatch.
            let view: Vec<(PeerId, crate::net::PeerInfo)> = self
                .ctx
                .net
                .peers()
                .await
                .into_iter()
                .filter_map(|p| Some((p.peer_id.parse().ok()?, p)))
                .collect();
            let mut alive: HashSet<PeerId> = view
                .iter()
                .filter(|(_, p)| p.advert.is_some() || p.connected)
                .map(|(peer, _)| *peer)
                .collect();
            alive.insert(local);
            for (peer, p) in &view {
                self.groups.insert(
                    *peer,
                    (placement.group(p), placement.source(p).map(str::to_string)),
                );
            }
            if self.groups.len() > 2 * crate::net::peers::MAX_PEERS {
                self.groups.retain(|peer, _| alive.contains(peer));
            }
            self.view = std::sync::Arc::new(view);
            self.alive = alive;
        }
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut excluded = 0;
        let inflight =
            |peer: &PeerId| i64::from(self.state.inflight.get(peer).copied().unwrap_or(0));
        for (peer, p) in self.view.iter() {
            let (Some(advert), peer) = (&p.advert, *peer) else {
                continue;
            };
            if advert.version != PROTOCOL_VERSION || self.backoff.contains_key(&peer) {
                continue;
            }
            if self.state.reputation.excluded(&peer) {
                excluded += 1;
                continue;
            }
            // Room and weight come from what this node measured of the peer; its
            // advert only bounds them (see `placement`).
            let row = self.state.reputation.row(&peer);
            let advertised = i64::from(advert.slots_total.saturating_mul(QUEUE_FACTOR));
            candidates.push(Candidate {
                peer,
                memory: advert.memory_limit,
                room: advertised.min(crate::scheduler::placement::measured_room(row)),
                score: crate::scheduler::placement::measured_weight(row),
                standing: self.state.standing(&peer),
                group: placement.group(p),
                source: placement.source(p).map(str::to_string),
            });
        }
        // No peer holds much more than a typical one; then less what each holds.
        let mut rooms: Vec<i64> = candidates.iter().map(|c| c.room).collect();
        crate::scheduler::placement::bound_rooms(&mut rooms);
        for (c, room) in candidates.iter_mut().zip(rooms) {
            c.room = room - inflight(&c.peer);
        }
        // This node's own worker, offered directly.
        if let Some(worker) = &self.ctx.local_worker
            && !self.backoff.contains_key(&local)
            && worker.capacity().0 > 0
        {
            let (slots, memory) = worker.capacity();
            candidates.push(Candidate {
                peer: local,
                memory,
                room: i64::from(slots * QUEUE_FACTOR) - inflight(&local),
                score: 1.0,
                standing: Standing::Trusted,
                group: None,
                source: None,
            });
        }
        let known = self
            .view
            .iter()
            .filter(|(_, p)| p.foreign_version.is_none())
            .count();
        (candidates, known, excluded)
    }

    /// Plans a dispatch ([`dispatch::plan`]), stores it, applies it, then sends the
    /// offers.
    pub(super) async fn dispatch(&mut self, full: bool) {
        if !self
            .state
            .jobs
            .values()
            .any(|j| j.state == JobState::Running)
        {
            return;
        }
        let now = self.now();
        self.backoff.retain(|_, until| *until > now);
        let jobs = &self.state.jobs;
        self.state.refused.retain(|id, _| jobs.contains_key(id));
        if full {
            // Spot checks of verified chunks are not reaped with the pending ones.
            let jobs = &self.state.jobs;
            self.state.local_runs.retain(|(id, _, _), started| {
                jobs.get(id).is_some_and(|j| {
                    now.saturating_sub(*started) <= j.spec.soft_timeout.as_millis() as u64
                })
            });
            self.state.inflight = dispatch::recount(&self.state);
        }
        let (mut candidates, known, excluded) = self.candidates(full).await;
        let alive = std::mem::take(&mut self.alive);
        let groups = std::mem::take(&mut self.groups);
        let inputs = dispatch::Inputs {
            full,
            now_ms: self.now(),
            alive: &alive,
            groups: &groups,
            local_slots: self.ctx.local_worker_slots(),
            known,
            excluded,
        };
        let attention = std::mem::take(&mut self.attention);
        let mut txn = Txn::new(&self.state);
        let plan = dispatch::plan(&mut txn, &mut candidates, &inputs, attention, &mut self.rng);
        let ch = txn.finish();
        (self.alive, self.groups) = (alive, groups);
        for (id, mut chunks) in plan.attention {
            self.attention.entry(id).or_default().append(&mut chunks);
        }
        if self.persist_then_apply(ch).await.is_err() {
            // Nothing was offered; the next tick plans again.
            return;
        }
        let local = self.state.local;
        for ((id, peer), items) in plan.offers {
            self.dirty.insert(id);
            if peer == local
                && let Some(worker) = self.ctx.local_worker.clone()
            {
                let reply = worker.offer(local, id, self.assignments(id, &items));
                Box::pin(self.on_offer_reply(id, peer, items, Ok(reply))).await;
                continue;
            }
            self.send_offer(id, peer, items);
        }
    }

    /// The assignments for (chunk, attempt) pairs of a job.
    pub(super) fn assignments(&self, id: JobId, items: &[(u32, u32)]) -> Vec<Assignment> {
        let Some(job) = self.state.jobs.get(&id) else {
            return Vec::new();
        };
        let deadline = job.spec.soft_timeout.as_millis() as u64;
        items
            .iter()
            .filter_map(|&(chunk, attempt)| {
                let c = job.chunks.get(chunk as usize)?;
                Some(Assignment {
                    chunk,
                    attempt,
                    module: job.module,
                    input: (*c.input).clone(),
                    limits: job.spec.limits,
                    soft_deadline_ms: deadline,
                })
            })
            .collect()
    }

    /// Sends the offer of `items` to `peer`, in as many messages as its size needs
    /// ([`offer_batches`]); each reply comes back for the items it carried.
    pub(super) fn send_offer(&self, id: JobId, peer: PeerId, items: Vec<(u32, u32)>) {
        let assignments = self.assignments(id, &items);
        let mut batches = offer_batches(assignments);
        // An item without an assignment (cannot happen) is answered as refused.
        let carried: HashSet<(u32, u32)> = batches
            .iter()
            .flatten()
            .map(|a| (a.chunk, a.attempt))
            .collect();
        let mut orphans: Vec<(u32, u32)> =
            items.into_iter().filter(|i| !carried.contains(i)).collect();
        if batches.is_empty() && !orphans.is_empty() {
            batches.push(Vec::new());
        }
        for assignments in batches {
            let mut offered: Vec<(u32, u32)> =
                assignments.iter().map(|a| (a.chunk, a.attempt)).collect();
            offered.append(&mut orphans);
            let (net, tx) = (self.ctx.net.clone(), self.tx.clone());
            tokio::spawn(tracing::Instrument::in_current_span(async move {
                let reply = if assignments.is_empty() {
                    Ok(TaskReply::Offer {
                        accepted: Vec::new(),
                        rejected: Vec::new(),
                    })
                } else {
                    let offer = TaskRequest::Offer {
                        job_id: id,
                        assignments,
                    };
                    net.send_task(peer, offer).await
                };
                let _ = tx
                    .send(Msg::OfferReply {
                        job: id,
                        peer,
                        offered,
                        reply,
                    })
                    .await;
            }));
        }
    }
}

/// Bytes an assignment takes on the wire besides its inline input, at most: chunk
/// and attempt (5 each), module hash (32), the payload's tag and length or a blob's
/// hash and size (43), the limits (45), the soft deadline (10).
const ASSIGNMENT_OVERHEAD: usize = 160;
/// Room kept in an offer message for the request's tag, the job id and the list's
/// length.
const OFFER_ENVELOPE: usize = 1024;

/// Splits an offer's assignments into messages of at most
/// [`MAX_TASK_BYTES`](crate::net::protocol::MAX_TASK_BYTES) each, in order: a peer
/// with many slots and chunks with large inline inputs (up to 64 KiB each) would
/// otherwise need a message over the limit, refused at every try.
pub(super) fn offer_batches(assignments: Vec<Assignment>) -> Vec<Vec<Assignment>> {
    let max = crate::net::protocol::MAX_TASK_BYTES - OFFER_ENVELOPE;
    crate::net::protocol::split_by_size(assignments, usize::MAX, max, |a| {
        ASSIGNMENT_OVERHEAD
            + match &a.input {
                crate::net::protocol::Payload::Inline(b) => b.len(),
                crate::net::protocol::Payload::Blob { .. } => 0,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::protocol::{BlobHash, Limits, MAX_TASK_BYTES, Payload};

    #[test]
    fn offers_are_split_to_fit_a_message_whatever_the_peers_room() {
        let assignment = |chunk: u32, input: usize| Assignment {
            chunk,
            attempt: u32::MAX,
            module: BlobHash::of(b"m"),
            input: Payload::Inline(vec![7; input]),
            limits: Limits {
                fuel: u64::MAX,
                memory_bytes: u64::MAX,
                timeout: std::time::Duration::MAX,
                max_output_bytes: u64::MAX,
            },
            soft_deadline_ms: u64::MAX,
        };
        // 300 chunks of the largest inline input (64 KiB): 19 MiB in all.
        let all: Vec<Assignment> = (0..300).map(|c| assignment(c, 64 * 1024)).collect();
        let batches = offer_batches(all.clone());
        assert!(batches.len() >= 3, "{}", batches.len());
        for batch in &batches {
            let bytes = postcard::to_allocvec(&TaskRequest::Offer {
                job_id: JobId([0xff; 16]),
                assignments: batch.clone(),
            })
            .unwrap();
            assert!(bytes.len() <= MAX_TASK_BYTES, "{} bytes", bytes.len());
        }
        assert_eq!(batches.concat(), all, "every assignment once, in order");
        // Small ones go in one message.
        let small: Vec<Assignment> = (0..256).map(|c| assignment(c, 8)).collect();
        assert_eq!(offer_batches(small).len(), 1);
        assert!(offer_batches(Vec::new()).is_empty());
    }
}
