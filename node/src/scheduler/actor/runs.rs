//! The actor's intake and its own work: result batches (blob I/O first, then
//! [`verify::intake`](super::super::verify::intake), persist, apply, acknowledge), merges,
//! this node's witness and spot-check runs, and re-verifications waiting for finished jobs.

use super::*;

/// A result batch as it reaches the actor: sender, results, where the ack goes.
pub(super) type ResultsMsg = (
    PeerId,
    Vec<ChunkResult>,
    tokio::sync::oneshot::Sender<ResultAck>,
);

/// A screened batch: answered already, or ready for intake.
enum Prepared {
    Answered(ResultAck),
    Ready(ReadyResults),
}

/// Results that passed screening, with their files in place.
struct ReadyResults {
    /// Acknowledged whatever happens (copies, replicas that are not live).
    acked: Vec<(JobId, u32, u32)>,
    results: Vec<ChunkResult>,
    /// Output blobs present in the store.
    present: HashSet<BlobHash>,
}

impl Actor {
    /// Records result batches, one or several (those that queued while the actor
    /// was busy), and answers each with the ack naming those stored (or not ours to
    /// keep). All of them are judged in one [`Txn`] and written in one transaction,
    /// so a burst of batches costs one commit. Nothing is acknowledged unless its
    /// write committed.
    pub(super) async fn on_result_batches(&mut self, batches: Vec<ResultsMsg>) {
        let mut ready = Vec::with_capacity(batches.len());
        for (peer, results, reply) in batches {
            // Results free room at their worker: one backed off for refusing an
            // offer for want of room is offered again now, not when the backoff
            // ends (a worker sharing its slots with another submitter took half
            // of each offer, then sat a second idle for this one).
            self.backoff.remove(&peer);
            match self.prepare_results(peer, results).await {
                Prepared::Answered(ack) => {
                    let _ = reply.send(ack);
                }
                Prepared::Ready(r) => ready.push((peer, r, reply)),
            }
        }
        if ready.is_empty() {
            return;
        }
        let now = self.now();
        let mut txn = Txn::new(&self.state);
        let mut judged = Vec::with_capacity(ready.len());
        for (peer, r, reply) in ready {
            let intake = verify::intake(&mut txn, peer, r.results, &r.present, &mut self.rng, now);
            judged.push((peer, r.acked, intake, reply));
        }
        let ch = txn.finish();
        for (peer, _, intake, _) in &judged {
            let peer = *peer;
            if intake.bad_signatures > 0 {
                let why = format!(
                    "{} results signed with another key than the sender's",
                    intake.bad_signatures
                );
                self.ctx.net.penalize(peer, why).await;
            }
            for hash in &intake.fetch {
                if self.fetching.insert(*hash) {
                    let (net, blobs, hash) = (self.ctx.net.clone(), self.ctx.blobs.clone(), *hash);
                    tokio::spawn(tracing::Instrument::in_current_span(async move {
                        if let Err(e) =
                            crate::net::fetch::fetch_blob(&net, &blobs, hash, &[peer]).await
                        {
                            tracing::warn!(%peer, "cannot fetch a result output: {e}");
                        }
                    }));
                }
            }
        }
        // Nothing judged was stored when the write fails: acknowledge only what
        // needed no write (the workers retry the rest).
        let stored = self.persist_then_apply(ch).await.is_ok();
        for (_, mut acked, intake, reply) in judged {
            if stored {
                for hash in &intake.fetched {
                    self.fetching.remove(hash);
                }
                acked.extend(intake.stored);
            }
            let _ = reply.send(ResultAck { stored: acked });
        }
    }

    /// Records one batch; returns its ack.
    pub(super) async fn on_results(
        &mut self,
        peer: PeerId,
        results: Vec<ChunkResult>,
    ) -> ResultAck {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.on_result_batches(vec![(peer, results, tx)]).await;
        rx.await.unwrap_or(ResultAck { stored: Vec::new() })
    }

    /// Screens a batch and does its file I/O (off the runtime): either the answer
    /// at once (nothing left to judge), or the results ready for intake.
    async fn prepare_results(&mut self, peer: PeerId, results: Vec<ChunkResult>) -> Prepared {
        // Copies and results for replicas that are not live go first, before any
        // hash or signature is checked (see `screen`); a batch of replays is an
        // offence.
        let screened = screen::screen(&Txn::new(&self.state), peer, results);
        let m = &self.ctx.metrics.results_screened;
        m.with_label_values(&["copy"])
            .inc_by(screened.duplicates as u64);
        m.with_label_values(&["stored"])
            .inc_by(screened.replays as u64);
        m.with_label_values(&["not_live"])
            .inc_by((screened.stored.len() - screened.replays) as u64);
        if let Some(why) = screened.offence() {
            self.ctx.net.penalize(peer, why).await;
        }
        let acked = screened.stored;
        let results = screened.keep;
        if results.is_empty() {
            return Prepared::Answered(ResultAck { stored: acked });
        }
        // The I/O first, off the runtime: large outputs into the blob store, and which
        // fetched outputs are there.
        let large: Vec<usize> = {
            let txn = Txn::new(&self.state);
            let wanted = verify::large_outputs(&txn, peer, &results);
            results
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    matches!(&r.output, Some(Payload::Inline(b))
                        if wanted.iter().any(|w| std::ptr::eq(w.as_ptr(), b.as_ptr())))
                })
                .map(|(i, _)| i)
                .collect()
        };
        let blobs = self.ctx.blobs.clone();
        let no_files = large.is_empty()
            && !results
                .iter()
                .any(|r| matches!(r.output, Some(Payload::Blob { .. })));
        let io = if no_files {
            // Small outputs only (the common case): nothing to do off the runtime.
            Some((results, HashSet::new()))
        } else {
            self.blocking(move || {
                let mut present = HashSet::new();
                for i in large {
                    if let Some(Payload::Inline(bytes)) = &results[i].output
                        && blobs.put(bytes).is_ok()
                    {
                        present.insert(results[i].output_hash);
                    }
                }
                for r in &results {
                    if let Some(Payload::Blob { hash, .. }) = &r.output
                        && blobs.contains(hash)
                    {
                        present.insert(*hash);
                    }
                }
                (results, present)
            })
            .await
        };
        match io {
            Some((results, present)) => Prepared::Ready(ReadyResults {
                acked,
                results,
                present,
            }),
            None => Prepared::Answered(ResultAck { stored: acked }),
        }
    }

    /// Re-verifications that wait for finished jobs: reads them back, then re-opens
    /// the chunks the peers found wrong vouched for.
    pub(super) async fn reverify_pending(&mut self) {
        let peers: Vec<PeerId> = self.reverify_later.drain().collect();
        let missing: BTreeSet<JobId> = peers
            .iter()
            .filter_map(|p| self.state.solo_index.get(p))
            .flatten()
            .map(|(id, _)| *id)
            .filter(|id| !self.state.jobs.contains_key(id))
            .collect();
        for id in missing {
            match self.read_finished(id).await {
                Some(job) => {
                    *self.finished.entry(job.state).or_default() -= 1;
                    self.dirty.insert(id);
                    self.state.jobs.insert(id, job);
                }
                None => self.state.solo_index.values_mut().for_each(|l| {
                    l.retain(|(j, _)| *j != id);
                }),
            }
        }
        let mut txn = Txn::new(&self.state);
        for peer in peers {
            trust_ops::reverify(&mut txn, peer);
        }
        let ch = txn.finish();
        if self.persist_then_apply(ch).await.is_err() {
            tracing::warn!("a re-verification could not be stored; it is retried");
        }
    }

    /// Runs merge on a blocking thread; the result comes back as `Msg::Merged`.
    pub(super) fn start_merge(&mut self, id: JobId) {
        let Some(job) = self.state.jobs.get(&id) else {
            return;
        };
        let (blobs, db, sandbox, module) = (
            self.ctx.blobs.clone(),
            self.ctx.db.clone(),
            self.ctx.sandbox.clone(),
            job.module,
        );
        self.spawn_work(move || Msg::Merged(id, local::merge(&blobs, &db, &sandbox, module, id)));
    }

    pub(super) async fn on_merged(&mut self, id: JobId, result: Result<Option<BlobHash>, String>) {
        let mut txn = Txn::new(&self.state);
        let Some(mut head) = txn.head(id) else {
            return;
        };
        if head.state != JobState::Merging {
            return;
        }
        head.finished_ms = Some(self.now());
        match &result {
            Ok(hash) => {
                head.state = JobState::Done;
                head.result = *hash;
                tracing::info!(job = %id, "job done");
            }
            Err(e) => {
                head.state = JobState::Failed;
                head.error = Some(format!("merge failed: {e}"));
                tracing::warn!(job = %id, "merge failed: {e}");
            }
        }
        txn.ch.writes.push(head.write(id));
        txn.put_head(id, head);
        let ch = txn.finish();
        if self.persist_then_apply(ch).await.is_err() {
            // Still merging in memory and on disk: store the outcome again shortly.
            let tx = self.tx.clone();
            tokio::spawn(tracing::Instrument::in_current_span(async move {
                tokio::time::sleep(TICK).await;
                let _ = tx.send(Msg::Merged(id, result)).await;
            }));
        }
    }

    /// Starts a run staged by a core (its replica is committed) on a blocking thread.
    pub(super) fn spawn_local_run(&mut self, id: JobId, idx: u32, attempt: u32) {
        let Some(job) = self.state.jobs.get(&id) else {
            return;
        };
        let Some(chunk) = job.chunks.get(idx as usize) else {
            return;
        };
        let (module, limits, input) = (job.module, job.spec.limits, chunk.input.clone());
        let ctx = ResultContext {
            submitter: self.state.local,
            module,
            input: chunk.input_hash,
        };
        let now = self.now();
        self.state.local_runs.insert((id, idx, attempt), now);
        let (blobs, sandbox, net) = (
            self.ctx.blobs.clone(),
            self.ctx.sandbox.clone(),
            self.ctx.net.clone(),
        );
        self.spawn_work(move || {
            let result = local::run_locally(&blobs, &sandbox, module, &input, &limits).map(
                |(outcome, output)| {
                    let output_hash = BlobHash::of(&output);
                    let signed =
                        result_signed_bytes(&ctx, &id, idx, attempt, &outcome, &output_hash);
                    ChunkResult {
                        job_id: id,
                        chunk: idx,
                        attempt,
                        outcome,
                        output_hash,
                        output: (!output.is_empty()).then_some(Payload::Inline(output)),
                        fuel_used: 0,
                        exec_micros: 0,
                        signature: net.sign(&signed),
                    }
                },
            );
            Msg::LocalRun(id, idx, attempt, result)
        });
    }

    /// A local run ended: its result is recorded like any peer's.
    pub(super) async fn on_local_run(
        &mut self,
        id: JobId,
        idx: u32,
        attempt: u32,
        result: Result<ChunkResult, String>,
    ) {
        self.state.local_runs.remove(&(id, idx, attempt));
        match result {
            Ok(result) => {
                Box::pin(self.on_results(self.state.local, vec![result])).await;
            }
            Err(e) => {
                tracing::warn!(job = %id, chunk = idx, "this node could not run a chunk itself: {e}");
                let local = self.state.local;
                let mut txn = Txn::new(&self.state);
                if let Some(mut chunk) = txn.take_chunk(id, idx)
                    && let Some(r) = chunk
                        .replicas
                        .iter_mut()
                        .find(|r| r.attempt == attempt && r.peer == local)
                {
                    r.state = crate::scheduler::job::ReplicaState::Lost;
                    let row = rows::replica_row(idx, r);
                    txn.ch.writes.push(Write::Replica(id, row));
                    txn.put_chunk(id, idx, chunk);
                }
                let ch = txn.finish();
                let _ = self.persist_then_apply(ch).await;
            }
        }
        self.attention.entry(id).or_default().insert(idx);
        self.dirty.insert(id);
        self.kick = true;
    }
}
