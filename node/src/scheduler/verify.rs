//! Result intake and verification, staged on a [`Txn`]: each result of a batch is
//! judged (not ours, a duplicate, a bad signature, withdrawn, unusable, late, a
//! check's answer), chunks are verified or failed, reputation and the trust counters
//! follow, and a job whose chunks have all ended goes to merge or fails.
//!
//! Pure: the [actor](super::actor) does the I/O first (large outputs into the blob
//! store, which blobs are present), calls [`intake`], writes what it staged and only
//! then applies it and acknowledges the results that were stored.

use std::collections::{BTreeSet, HashSet};

use libp2p::PeerId;
use rand::rngs::StdRng;

use super::job::{ChunkState, JobState, ReplicaState, Verdict, agreement_key, is_deterministic};
use super::report::describe;
use super::reputation::Mark;
use super::rows::{encode_outcome, replica_row};
use super::staged::{Event, Txn};
use super::trust::Standing;
use super::trust_ops;
use crate::net::protocol::MAX_BLOB_BYTES;
use crate::store::db::Write;
use crate::types::{BlobHash, ChunkResult, JobId, Payload, WireOutcome};

/// Outputs up to this size are kept in the database rather than as blob files.
pub(super) const DB_OUTPUT: usize = 64 * 1024;

/// What the actor does after a batch commits.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Intake {
    /// The results stored (or not ours to keep): the worker may forget them.
    pub stored: Vec<(JobId, u32, u32)>,
    /// Outputs to fetch from the sender before its retry can be taken.
    pub fetch: Vec<BlobHash>,
    /// Outputs fetched earlier, now taken.
    pub fetched: Vec<BlobHash>,
    /// Results whose signature was not the sender's (an offence, counted by the
    /// actor against the peer and its address).
    pub bad_signatures: usize,
}

/// Which results of a batch carry a large output the actor must store as a blob
/// before [`intake`]: those for a replica the sender holds and has not returned.
pub(super) fn large_outputs<'r>(
    txn: &Txn<'_>,
    peer: PeerId,
    results: &'r [ChunkResult],
) -> Vec<&'r [u8]> {
    results
        .iter()
        .filter(|r| {
            txn.chunk(r.job_id, r.chunk).is_some_and(|c| {
                c.replicas.iter().any(|x| {
                    x.attempt == r.attempt
                        && x.peer == peer
                        && !matches!(x.state, ReplicaState::Returned { .. })
                })
            })
        })
        .filter_map(|r| match &r.output {
            Some(Payload::Inline(bytes))
                if bytes.len() > DB_OUTPUT && BlobHash::of(bytes) == r.output_hash =>
            {
                Some(bytes.as_slice())
            }
            _ => None,
        })
        .collect()
}

/// Marks a replica lost (it will be replaced) and stages its row.
fn lose(txn: &mut Txn<'_>, state: &mut ReplicaState, peer: PeerId) {
    if state.is_live() {
        txn.add_inflight(peer, -1);
    }
    *state = ReplicaState::Lost;
}

/// Judges a batch of results from `peer`. `present`: outputs in the blob store.
pub(super) fn intake(
    txn: &mut Txn<'_>,
    peer: PeerId,
    results: Vec<ChunkResult>,
    present: &HashSet<BlobHash>,
    rng: &mut StdRng,
    now_ms: u64,
) -> Intake {
    let mut out = Intake::default();
    let mut touched: Vec<(JobId, u32)> = Vec::new();
    // Peers found wrong: the results they vouched for are re-verified.
    let mut caught: Vec<PeerId> = Vec::new();
    // Verified chunks this node's own run found wrong, and those it must run.
    let mut reopen: Vec<(JobId, u32)> = Vec::new();
    let mut referee: Vec<(JobId, u32)> = Vec::new();
    let local = txn.base.local;
    for result in results {
        let (id, idx) = (result.job_id, result.chunk);
        let key = (id, idx, result.attempt);
        let Some(mut chunk) = txn.take_chunk(id, idx) else {
            out.stored.push(key);
            continue;
        };
        let Some(ri) = chunk
            .replicas
            .iter()
            .position(|r| r.attempt == result.attempt && r.peer == peer)
        else {
            // Not a replica this peer holds: nothing to keep.
            out.stored.push(key);
            continue;
        };
        if !chunk.replicas[ri].state.is_live() {
            // A duplicate (stored the first time), or a result for a replica the chunk
            // gave up on (timed out, lost, withdrawn): never counted, so that a
            // withdraw-then-lie, or a second identity in the same network, cannot
            // join the quorum late.
            if matches!(chunk.replicas[ri].state, ReplicaState::Withdrawn) {
                tracing::debug!(%peer, job = %id, chunk = idx, "ignored a result for a withdrawn replica");
            }
            txn.put_chunk(id, idx, chunk);
            out.stored.push(key);
            continue;
        }
        // The answer must be this peer's own, signed with its identity key, for this
        // submitter, module and input. (This node's own results come straight from
        // its worker, not the network.)
        let ctx = crate::types::ResultContext {
            submitter: local,
            module: txn.job(id).map(|j| j.module).unwrap_or(BlobHash([0; 32])),
            input: chunk.input_hash,
        };
        if peer != local
            && !crate::net::protocol::verify_result_signature(
                &peer,
                &result.signed_bytes(&ctx),
                &result.signature,
            )
        {
            tracing::warn!(%peer, job = %id, chunk = idx,
                "refused a result whose signature is not the sending peer's");
            lose(txn, &mut chunk.replicas[ri].state, peer);
            txn.ch
                .writes
                .push(Write::Replica(id, replica_row(idx, &chunk.replicas[ri])));
            txn.count(id, |t| t.bad_signatures += 1);
            txn.mark(peer, Mark::Error);
            out.bad_signatures += 1;
            txn.put_chunk(id, idx, chunk);
            out.stored.push(key);
            touched.push((id, idx));
            continue;
        }
        if result.outcome == WireOutcome::Withdrawn {
            // The worker's owner needed the machine: run it elsewhere. It costs the
            // chunk nothing; the peer's withdrawals are counted (a budget).
            lose(txn, &mut chunk.replicas[ri].state, peer);
            chunk.replicas[ri].state = ReplicaState::Withdrawn;
            txn.mark(peer, Mark::Withdrawn);
            txn.ch
                .writes
                .push(Write::Replica(id, replica_row(idx, &chunk.replicas[ri])));
            txn.ch.events.push(Event::Reissue("lost"));
            txn.count(id, |t| t.withdrawn += 1);
            txn.put_chunk(id, idx, chunk);
            out.stored.push(key);
            touched.push((id, idx));
            continue;
        }
        // The output must be stored (and match its hash) before the ack: small ones
        // go into the database with the replica, larger ones into blobs (the actor
        // stored those before calling this).
        let mut data = None;
        let usable = match &result.output {
            None => result.output_hash == BlobHash::of(b""),
            Some(Payload::Inline(bytes)) if BlobHash::of(bytes) != result.output_hash => false,
            Some(Payload::Inline(bytes)) if bytes.len() <= DB_OUTPUT => {
                data = Some(bytes.clone());
                true
            }
            Some(Payload::Inline(_)) => present.contains(&result.output_hash),
            Some(Payload::Blob { hash, size }) => {
                if *hash != result.output_hash || *size > MAX_BLOB_BYTES {
                    false
                } else if present.contains(hash) {
                    out.fetched.push(*hash);
                    true
                } else {
                    // Fetch it, and take the result when the worker retries.
                    out.fetch.push(*hash);
                    continue;
                }
            }
        };
        if !usable {
            tracing::warn!(%peer, job = %id, chunk = idx, "unusable result (output does not match its hash)");
            lose(txn, &mut chunk.replicas[ri].state, peer);
            txn.ch
                .writes
                .push(Write::Replica(id, replica_row(idx, &chunk.replicas[ri])));
            txn.mark(peer, Mark::Error);
            txn.put_chunk(id, idx, chunk);
            out.stored.push(key);
            touched.push((id, idx));
            continue;
        }
        if !is_deterministic(&result.outcome) {
            txn.mark(peer, Mark::Error);
        }
        if chunk.replicas[ri].state.is_live() {
            txn.add_inflight(peer, -1);
        }
        let key_of = agreement_key(&result.outcome, &result.output_hash);
        let deterministic = is_deterministic(&result.outcome);
        chunk.replicas[ri].state = ReplicaState::Returned {
            key: key_of,
            outcome: result.outcome,
            output: result.output_hash,
            fuel: result.fuel_used,
            data,
            signature: result.signature,
        };
        txn.ch
            .writes
            .push(Write::Replica(id, replica_row(idx, &chunk.replicas[ri])));
        // A result for a chunk already verified (a late replica, a plant, a spot
        // check) is judged against this node's own run only, never against the
        // answer the grid verified: a verified lie must not get an honest peer
        // blamed.
        if let ChunkState::Verified { key: verified, .. } = &chunk.state
            && deterministic
        {
            let verified = *verified;
            let own = own_key(&chunk, local);
            if peer == local {
                // This node re-ran a verified chunk: it judges every answer.
                for r in &chunk.replicas {
                    if let ReplicaState::Returned {
                        key: k, outcome, ..
                    } = &r.state
                        && r.peer != local
                        && is_deterministic(outcome)
                        && *k != key_of
                        && txn.standing(&r.peer) != Standing::Excluded
                    {
                        tracing::warn!(peer = %r.peer, job = %id, chunk = idx,
                            "this node's own run contradicts the peer's signed answer; excluding it");
                        txn.count(id, |t| t.caught += 1);
                        txn.mark(r.peer, Mark::Caught);
                        caught.push(r.peer);
                    }
                }
                if let Some(solo) = chunk.solo
                    && key_of == verified
                {
                    txn.mark(solo, Mark::Agreed { witnessed: true });
                }
                if key_of != verified {
                    tracing::warn!(job = %id, chunk = idx,
                        "a verified result was wrong: this node's own run decides it again");
                    reopen.push((id, idx));
                }
            } else if let Some(own) = own {
                if key_of == own {
                    txn.mark(peer, Mark::Agreed { witnessed: true });
                } else {
                    tracing::warn!(%peer, job = %id, chunk = idx,
                        "an answer contradicts this node's own run; excluding the peer");
                    txn.count(id, |t| t.caught += 1);
                    txn.mark(peer, Mark::Caught);
                    caught.push(peer);
                }
            } else if key_of == verified {
                txn.mark(peer, Mark::Agreed { witnessed: true });
            } else {
                // Someone lies, the peer or those the grid believed: this node runs
                // it and decides.
                referee.push((id, idx));
            }
        }
        txn.put_chunk(id, idx, chunk);
        out.stored.push(key);
        touched.push((id, idx));
    }
    for (id, idx) in reopen {
        trust_ops::reopen(txn, id, idx);
    }
    for peer in caught {
        trust_ops::reverify(txn, peer);
    }
    for (id, idx) in referee {
        if !trust_ops::local_run(txn, id, idx, true, now_ms) {
            // This node is busy: a trusted peer checks it meanwhile.
            txn.plant(id, idx);
        }
    }
    for (id, idx) in touched {
        evaluate_chunk(txn, id, idx, rng, now_ms);
        txn.attend(id, idx);
    }
    let ids: BTreeSet<JobId> = out.stored.iter().map(|k| k.0).collect();
    for id in ids {
        check_done(txn, id, now_ms);
    }
    out
}

/// The agreement key of this node's own deterministic result on the chunk, if any.
pub(super) fn own_key(chunk: &super::job::Chunk, local: PeerId) -> Option<[u8; 32]> {
    chunk.replicas.iter().find_map(|r| match &r.state {
        ReplicaState::Returned { key, outcome, .. }
            if r.peer == local && is_deterministic(outcome) =>
        {
            Some(*key)
        }
        _ => None,
    })
}

/// How this submitter referees (see [`super::job::Chunk::judge`]).
pub(super) fn referee(txn: &Txn<'_>) -> super::job::Referee {
    super::job::Referee {
        local: txn.base.local,
        fuel_budget: txn.base.trust.referee_fuel,
    }
}

/// Applies a verdict that ends a chunk (verified or failed).
pub(super) fn evaluate_chunk(
    txn: &mut Txn<'_>,
    id: JobId,
    idx: u32,
    rng: &mut StdRng,
    now_ms: u64,
) {
    let Some(job) = txn.job(id) else {
        return;
    };
    if txn.job_state(id) != Some(JobState::Running) {
        return;
    }
    let (spec, created_ms) = (job.spec, job.created_ms);
    let Some(mut chunk) = txn.take_chunk(id, idx) else {
        return;
    };
    if chunk.state != ChunkState::Pending {
        return;
    }
    let verdict = chunk.judge(&spec, &|p| txn.standing(p), Some(&referee(txn)));
    match verdict {
        Verdict::Verified(key) => {
            let winner = chunk.replicas.iter().find_map(|r| match &r.state {
                ReplicaState::Returned {
                    key: k,
                    outcome,
                    output,
                    data,
                    ..
                } if *k == key => Some((outcome.clone(), *output, data.clone(), r.attempt)),
                _ => None,
            });
            let Some((outcome, output, output_data, attempt)) = winner else {
                return;
            };
            let agreeing: Vec<PeerId> = chunk
                .groups(&|p| txn.standing(p))
                .into_iter()
                .find(|(k, _)| *k == key)
                .map(|(_, peers)| peers)
                .unwrap_or_default();
            // Taken on one trusted peer's word (adaptive replication)?
            let on_word = spec.adaptive() && chunk.solo.is_some_and(|solo| agreeing == [solo]);
            let witnessed = agreeing
                .iter()
                .any(|p| txn.standing(p) == Standing::Trusted);
            if !on_word {
                chunk.solo = None;
            }
            // The verified output now lives in the chunk's row; free the copies.
            for r in chunk.replicas.iter_mut() {
                if let ReplicaState::Returned { data, .. } = &mut r.state {
                    *data = None;
                }
            }
            let local = txn.base.local;
            // Decided by this node's own run: a different signed answer is a lie.
            let refereed = own_key(&chunk, local) == Some(key);
            let disputed = chunk.groups(&|p| txn.standing(p)).len() > 1;
            let mut wrong = Vec::new();
            if !on_word {
                for r in &chunk.replicas {
                    if let ReplicaState::Returned {
                        key: k, outcome, ..
                    } = &r.state
                        && is_deterministic(outcome)
                        && r.peer != local
                    {
                        if *k == key {
                            txn.mark(r.peer, Mark::Agreed { witnessed });
                        } else if txn.standing(&r.peer) == Standing::Excluded {
                            // Already excluded (its answer was not counted).
                        } else if refereed {
                            tracing::warn!(peer = %r.peer, job = %id, chunk = idx,
                                "refereed: the peer's signed answer differs from this node's own run; excluding it");
                            txn.count(id, |t| t.caught += 1);
                            txn.mark(r.peer, Mark::Caught);
                            wrong.push(r.peer);
                        } else {
                            wrong.push(r.peer);
                            txn.mark(r.peer, Mark::Disagreed);
                        }
                    }
                }
            }
            if refereed && disputed {
                txn.count(id, |t| t.refereed += 1);
            }
            let reread = output_data.is_none();
            txn.ch.writes.push(Write::ChunkState {
                job: id,
                idx,
                state: crate::types::ChunkStatus::Verified,
                outcome: Some(encode_outcome(&outcome)),
                output: Some(output),
                output_data,
                solo: chunk.solo.filter(|_| on_word).map(|p| p.to_string()),
            });
            if reread {
                // Verified again after a re-open (the copy in memory was freed), or
                // kept as a blob: the winning replica's row has what there is.
                txn.ch.writes.push(Write::ChunkOutputFromReplica {
                    job: id,
                    idx,
                    attempt,
                });
            }
            chunk.state = ChunkState::Verified {
                outcome,
                output,
                key,
            };
            let solo = chunk.solo;
            txn.put_chunk(id, idx, chunk);
            let waited = now_ms.saturating_sub(created_ms) as f64 / 1000.0;
            txn.ch.events.push(Event::Verified(waited));
            if on_word {
                txn.count(id, |t| t.unreplicated += 1);
            }
            let policy = txn.base.trust;
            let plant = spec.adaptive() && witnessed && policy.plant(rng);
            // Every kind of verified chunk is sampled (witnessed quorums too), except
            // those this node ran itself.
            let spot = !refereed && policy.spot_check(rng);
            if let (true, Some(solo)) = (on_word, solo) {
                txn.remember_solo(solo, id, idx);
            } else {
                // Every peer that vouched for the answer: re-verified if it is caught.
                for p in agreeing.iter().filter(|p| **p != local) {
                    txn.remember_solo(*p, id, idx);
                }
            }
            if plant {
                txn.plant(id, idx);
            }
            if spot {
                trust_ops::local_run(txn, id, idx, true, now_ms);
            }
            for peer in wrong {
                trust_ops::reverify(txn, peer);
            }
        }
        Verdict::Failed(reason) => {
            txn.ch.writes.push(Write::ChunkState {
                job: id,
                idx,
                state: crate::types::ChunkStatus::Failed,
                outcome: Some(reason.clone().into_bytes()),
                output: None,
                output_data: None,
                solo: None,
            });
            chunk.state = ChunkState::Failed(reason);
            txn.put_chunk(id, idx, chunk);
        }
        Verdict::Need(_) | Verdict::NeedWitness | Verdict::Wait | Verdict::Referee => {}
    }
}

/// When every chunk of a running job has ended: merge (all verified ok) or fail it.
pub(super) fn check_done(txn: &mut Txn<'_>, id: JobId, now_ms: u64) {
    let (Some(job), Some(mut head)) = (txn.job(id), txn.head(id)) else {
        return;
    };
    if head.state != JobState::Running || job.counts.pending as usize > txn.staged_chunks() {
        // (More chunks pending than changed here: some are still pending.)
        return;
    }
    let mut problems: Vec<String> = Vec::new();
    for i in 0..job.chunks.len() as u32 {
        match txn.chunk(id, i).map(|c| &c.state) {
            Some(ChunkState::Pending) | None => return,
            Some(ChunkState::Verified {
                outcome: WireOutcome::Ok,
                ..
            }) => {}
            Some(ChunkState::Verified { outcome, .. }) => problems.push(format!(
                "chunk {i}: verified failure: {}",
                describe(outcome)
            )),
            Some(ChunkState::Failed(reason)) => problems.push(format!("chunk {i}: {reason}")),
        }
    }
    // Nothing waits for peers any more.
    head.why = None;
    if problems.is_empty() {
        head.state = JobState::Merging;
        txn.ch.writes.push(head.write(id));
        txn.ch.merges.push(id);
        txn.put_head(id, head);
        return;
    }
    let total = problems.len();
    let mut error: String = problems.into_iter().take(5).collect::<Vec<_>>().join("; ");
    if total > 5 {
        error.push_str(&format!("; and {} more chunks", total - 5));
    }
    tracing::warn!(job = %id, "job failed: {error}");
    head.state = JobState::Failed;
    head.finished_ms = Some(now_ms);
    head.error = Some(error);
    txn.ch.writes.push(head.write(id));
    txn.put_head(id, head);
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::scheduler::job::{JobSpec, Replication};
    use crate::scheduler::testkit::{
        LOCAL, adaptive, issued, job, peer, result, returned, state, verified,
    };

    struct Case {
        name: &'static str,
        spec: JobSpec,
        /// The chunk's state and replicas before.
        before: fn(&mut crate::scheduler::job::Chunk),
        /// Who sends, and what.
        from: u8,
        batch: fn() -> Vec<ChunkResult>,
        /// Whether the batch is acknowledged.
        acked: bool,
        /// The sender's replica afterwards.
        replica: &'static str,
        /// The chunk afterwards.
        chunk: &'static str,
        /// (peer, agreed, disagreed, errors, caught) afterwards.
        rep: (u8, u64, u64, u64, u64),
        /// Chunks re-opened.
        reverified: u32,
    }

    fn fixed() -> JobSpec {
        JobSpec {
            replication: Replication::Fixed,
            ..adaptive()
        }
    }

    fn chunk_state(c: &crate::scheduler::job::Chunk) -> &'static str {
        match c.state {
            ChunkState::Pending => "pending",
            ChunkState::Verified { .. } => "verified",
            ChunkState::Failed(_) => "failed",
        }
    }

    #[test]
    fn results_are_judged_by_the_table() {
        let cases = vec![
            Case {
                name: "not a replica the sender holds: acknowledged, nothing kept",
                spec: fixed(),
                before: |c| c.replicas = vec![issued(2, 0)],
                from: 1,
                batch: || vec![result(1, 1, 0, 0, b"a")],
                acked: true,
                replica: "none",
                chunk: "pending",
                rep: (1, 0, 0, 0, 0),
                reverified: 0,
            },
            Case {
                name: "duplicate: acknowledged again, judged once",
                spec: fixed(),
                before: |c| c.replicas = vec![returned(1, 0, b"a"), issued(2, 1)],
                from: 1,
                batch: || vec![result(1, 1, 0, 0, b"b")],
                acked: true,
                replica: "returned",
                chunk: "pending",
                rep: (1, 0, 0, 0, 0),
                reverified: 0,
            },
            Case {
                name: "signed by someone else: refused, an error",
                spec: fixed(),
                before: |c| c.replicas = vec![issued(1, 0), issued(2, 1)],
                from: 1,
                batch: || vec![result(3, 1, 0, 0, b"a")],
                acked: true,
                replica: "lost",
                chunk: "pending",
                rep: (1, 0, 0, 1, 0),
                reverified: 0,
            },
            Case {
                name: "withdrawn: no penalty, the chunk's budget untouched",
                spec: fixed(),
                before: |c| c.replicas = vec![issued(1, 0), issued(2, 1)],
                from: 1,
                batch: || {
                    let mut r = result(1, 1, 0, 0, b"");
                    r.outcome = WireOutcome::Withdrawn;
                    crate::scheduler::testkit::sign(1, &mut r);
                    vec![r]
                },
                acked: true,
                replica: "withdrawn",
                chunk: "pending",
                rep: (1, 0, 0, 0, 0),
                reverified: 0,
            },
            Case {
                name: "output not matching its hash: unusable, an error",
                spec: fixed(),
                before: |c| c.replicas = vec![issued(1, 0), issued(2, 1)],
                from: 1,
                batch: || {
                    let mut r = result(1, 1, 0, 0, b"a");
                    r.output = Some(Payload::Inline(b"not a".to_vec()));
                    vec![r]
                },
                acked: true,
                replica: "lost",
                chunk: "pending",
                rep: (1, 0, 0, 1, 0),
                reverified: 0,
            },
            Case {
                name: "first of two: stored, the chunk waits",
                spec: fixed(),
                before: |c| c.replicas = vec![issued(1, 0), issued(2, 1)],
                from: 1,
                batch: || vec![result(1, 1, 0, 0, b"a")],
                acked: true,
                replica: "returned",
                chunk: "pending",
                rep: (1, 0, 0, 0, 0),
                reverified: 0,
            },
            Case {
                name: "agreement: verified, both agreed",
                spec: fixed(),
                before: |c| c.replicas = vec![issued(1, 0), returned(2, 1, b"a")],
                from: 1,
                batch: || vec![result(1, 1, 0, 0, b"a")],
                acked: true,
                replica: "returned",
                chunk: "verified",
                rep: (1, 1, 0, 0, 0),
                reverified: 0,
            },
            Case {
                name: "disagreement: no verdict yet, nobody judged",
                spec: fixed(),
                before: |c| c.replicas = vec![issued(1, 0), returned(2, 1, b"a")],
                from: 1,
                batch: || vec![result(1, 1, 0, 0, b"b")],
                acked: true,
                replica: "returned",
                chunk: "pending",
                rep: (1, 0, 0, 0, 0),
                reverified: 0,
            },
            Case {
                name: "late result for a timed-out replica: acknowledged, never counted",
                spec: fixed(),
                before: |c| {
                    c.replicas = vec![returned(2, 0, b"a"), issued(1, 1)];
                    c.replicas[1].state = ReplicaState::TimedOut(1);
                },
                from: 1,
                batch: || vec![result(1, 1, 0, 1, b"a")],
                acked: true,
                replica: "timed_out",
                chunk: "pending",
                rep: (1, 0, 0, 0, 0),
                reverified: 0,
            },
            Case {
                name: "withdraw, then lie late: never counted",
                spec: fixed(),
                before: |c| {
                    c.replicas = vec![returned(2, 0, b"a"), issued(1, 1)];
                    c.replicas[1].state = ReplicaState::Withdrawn;
                },
                from: 1,
                batch: || vec![result(1, 1, 0, 1, b"a")],
                acked: true,
                replica: "withdrawn",
                chunk: "pending",
                rep: (1, 0, 0, 0, 0),
                reverified: 0,
            },
            Case {
                name: "a live replica agreeing with the verified answer",
                spec: fixed(),
                before: |c| {
                    c.replicas = vec![returned(2, 0, b"a"), returned(3, 1, b"a"), issued(1, 2)];
                    c.state = verified(b"a");
                },
                from: 1,
                batch: || vec![result(1, 1, 0, 2, b"a")],
                acked: true,
                replica: "returned",
                chunk: "verified",
                rep: (1, 1, 0, 0, 0),
                reverified: 0,
            },
            Case {
                name: "disagreeing with a verified answer: nobody judged until this node's own run",
                spec: fixed(),
                before: |c| {
                    c.replicas = vec![returned(2, 0, b"a"), returned(3, 1, b"a"), issued(1, 2)];
                    c.state = verified(b"a");
                },
                from: 1,
                batch: || vec![result(1, 1, 0, 2, b"b")],
                acked: true,
                replica: "returned",
                chunk: "verified",
                rep: (1, 0, 0, 0, 0),
                reverified: 0,
            },
            Case {
                name: "a plant answered differently: never judged against the grid's answer",
                spec: adaptive(),
                before: |c| {
                    c.replicas = vec![returned(2, 0, b"a"), returned(3, 1, b"a"), issued(1, 2)];
                    c.replicas[2].check = true;
                    c.state = verified(b"a");
                },
                from: 1,
                batch: || vec![result(1, 1, 0, 2, b"b")],
                acked: true,
                replica: "returned",
                chunk: "verified",
                rep: (1, 0, 0, 0, 0),
                reverified: 0,
            },
            Case {
                name: "a plant differs and this node's own run agrees with it: the vouchers are caught",
                spec: adaptive(),
                before: |c| {
                    c.replicas = vec![
                        returned(2, 0, b"a"),
                        returned(3, 1, b"a"),
                        returned(1, 2, b"b"),
                        issued(LOCAL, 3),
                    ];
                    c.replicas[2].check = true;
                    c.replicas[3].check = true;
                    c.state = verified(b"a");
                },
                from: LOCAL,
                batch: || vec![result(LOCAL, 1, 0, 3, b"b")],
                acked: true,
                replica: "returned",
                chunk: "verified",
                rep: (2, 0, 1, 0, 1),
                reverified: 1,
            },
            Case {
                name: "a plant differs and this node's own run agrees with the grid: the plant's peer is caught",
                spec: adaptive(),
                before: |c| {
                    c.replicas = vec![
                        returned(2, 0, b"a"),
                        returned(3, 1, b"a"),
                        returned(1, 2, b"b"),
                        issued(LOCAL, 3),
                    ];
                    c.replicas[2].check = true;
                    c.replicas[3].check = true;
                    c.state = verified(b"a");
                },
                from: LOCAL,
                batch: || vec![result(LOCAL, 1, 0, 3, b"a")],
                acked: true,
                replica: "returned",
                chunk: "verified",
                rep: (1, 0, 1, 0, 1),
                reverified: 0,
            },
            Case {
                name: "a spot check finds the solo peer wrong: caught, its chunk re-opened",
                spec: adaptive(),
                before: |c| {
                    c.replicas = vec![returned(5, 0, b"a"), issued(LOCAL, 1)];
                    c.replicas[1].check = true;
                    c.solo = Some(peer(5));
                    c.state = verified(b"a");
                },
                from: LOCAL,
                batch: || vec![result(LOCAL, 1, 0, 1, b"b")],
                acked: true,
                replica: "returned",
                chunk: "verified",
                rep: (5, 1000, 1, 0, 1),
                reverified: 1,
            },
        ];
        for case in cases {
            let mut j = job(1, 1, case.spec);
            (case.before)(&mut j.chunks[0]);
            j.counts = crate::scheduler::job::ChunkCounts::of(&j.chunks);
            let mut st = state(vec![j], &[5]);
            st.remember_solo(peer(5), JobId([1; 16]), 0);
            let mut rng = StdRng::seed_from_u64(1);
            let mut txn = Txn::new(&st);
            let intake = intake(
                &mut txn,
                peer(case.from),
                (case.batch)(),
                &HashSet::new(),
                &mut rng,
                5,
            );
            let mut ch = txn.finish();
            st.apply(&mut ch);
            assert_eq!(
                !intake.stored.is_empty(),
                case.acked,
                "{}: acked",
                case.name
            );
            let job = &st.jobs[&JobId([1; 16])];
            let chunk = &job.chunks[0];
            let replica = chunk
                .replicas
                .iter()
                .find(|r| r.peer == peer(case.from) && r.attempt == (case.batch)()[0].attempt)
                .map_or("none", |r| r.state.as_str());
            assert_eq!(replica, case.replica, "{}: replica", case.name);
            assert_eq!(chunk_state(chunk), case.chunk, "{}: chunk", case.name);
            let row = st.reputation.get(&peer(case.rep.0));
            let (_, agreed, disagreed, errors, caught) = case.rep;
            assert_eq!(
                (row.agreed, row.disagreed, row.errors, row.caught),
                (agreed, disagreed, errors, caught),
                "{}: reputation",
                case.name
            );
            assert_eq!(job.trust.reverified, case.reverified, "{}", case.name);
            assert_eq!(
                job.counts,
                crate::scheduler::job::ChunkCounts::of(&job.chunks),
                "{}: counts kept",
                case.name
            );
        }
    }

    #[test]
    fn a_large_output_waits_for_its_blob_and_an_unfetched_one_is_not_acknowledged() {
        let mut j = job(1, 1, fixed());
        j.chunks[0].replicas = vec![issued(1, 0), issued(2, 1)];
        let st = state(vec![j], &[]);
        let big = vec![7u8; DB_OUTPUT + 1];
        let mut r = result(1, 1, 0, 0, &big);
        let hash = r.output_hash;
        r.output = Some(Payload::Blob {
            hash,
            size: big.len() as u64,
        });
        crate::scheduler::testkit::sign(1, &mut r);
        let mut rng = StdRng::seed_from_u64(1);
        let mut txn = Txn::new(&st);
        let out = intake(
            &mut txn,
            peer(1),
            vec![r.clone()],
            &HashSet::new(),
            &mut rng,
            5,
        );
        assert!(out.stored.is_empty(), "not stored until fetched");
        assert_eq!(out.fetch, vec![hash]);
        let mut txn = Txn::new(&st);
        let present: HashSet<BlobHash> = [hash].into_iter().collect();
        let out = intake(&mut txn, peer(1), vec![r], &present, &mut rng, 5);
        assert_eq!(out.stored.len(), 1);
        assert_eq!(out.fetched, vec![hash]);
    }
}
