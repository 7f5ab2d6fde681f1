//! Read models: a job's [`JobStatus`] and the evidence of its disagreements, as
//! `peergrid status` shows them. Pure functions of a [`Job`] and each peer's standing;
//! the [actor](super::actor) calls them for jobs in memory and for finished jobs it
//! reads back from the database on request.

use std::collections::{BTreeMap, BTreeSet};

use libp2p::PeerId;

use super::job::{ChunkState, Job, ReplicaState, agreement_key};
use super::rows::decode_outcome;
use super::trust::Standing;
use super::{
    ChunkEvidence, ChunkFailure, JobStatus, MAX_EVIDENCE, PeerTally, ReplicaEvidence, job_id_hex,
};
use crate::net::protocol::{result_signed_bytes, verify_result_signature};
use crate::store::db::ReplicaRow;
use crate::types::{WireOutcome, now_ms};

/// Failures with evidence kept in a status.
const MAX_FAILURES_SHOWN: usize = 10;

/// A short human description of an outcome.
pub(super) fn describe(o: &WireOutcome) -> String {
    match o {
        WireOutcome::Ok => "ok".into(),
        WireOutcome::Trap { kind, message } => format!("trap ({kind}): {message}"),
        WireOutcome::OutOfFuel => "out of fuel".into(),
        WireOutcome::MemoryLimit => "memory limit reached".into(),
        WireOutcome::Timeout => "timed out on the worker".into(),
        WireOutcome::Invalid(r) => format!("invalid module: {r}"),
        WireOutcome::Withdrawn => "withdrawn by the worker (its owner needed the machine)".into(),
    }
}

/// Where a job is, with per-peer tallies and the first failures.
pub(super) fn status(job: &Job, standing: &dyn Fn(&PeerId) -> Standing) -> JobStatus {
    let mut tallies: BTreeMap<PeerId, PeerTally> = BTreeMap::new();
    let (mut verified, mut failed, mut issued, mut results, mut disagreements, mut reissues) =
        (0, 0, 0, 0, 0, 0);
    let mut failures = Vec::new();
    for (i, c) in job.chunks.iter().enumerate() {
        let verified_key = match &c.state {
            ChunkState::Verified { key, .. } => {
                verified += 1;
                Some(*key)
            }
            ChunkState::Failed(_) => {
                failed += 1;
                None
            }
            ChunkState::Pending => None,
        };
        if c.groups(standing).len() > 1 {
            disagreements += 1;
        }
        for r in &c.replicas {
            let tally = tallies.entry(r.peer).or_insert_with(|| {
                let standing = standing(&r.peer);
                PeerTally {
                    peer: r.peer.to_string(),
                    agreed: 0,
                    disagreed: 0,
                    in_flight: 0,
                    excluded: standing == Standing::Excluded,
                    standing: Some(standing),
                }
            });
            match &r.state {
                ReplicaState::Offered => {}
                ReplicaState::Issued(_) => {
                    issued += 1;
                    tally.in_flight += 1;
                }
                ReplicaState::Returned { key, .. } => {
                    issued += 1;
                    results += 1;
                    match verified_key {
                        Some(v) if v == *key => tally.agreed += 1,
                        Some(_) => tally.disagreed += 1,
                        None => {}
                    }
                }
                ReplicaState::TimedOut(_) | ReplicaState::Lost => {
                    issued += 1;
                    reissues += 1;
                }
            }
        }
        let failure = match &c.state {
            ChunkState::Failed(reason) => Some(reason.clone()),
            ChunkState::Verified { outcome, .. } if *outcome != WireOutcome::Ok => {
                Some(format!("verified failure: {}", describe(outcome)))
            }
            _ => None,
        };
        if let Some(reason) = failure
            && failures.len() < MAX_FAILURES_SHOWN
        {
            failures.push(ChunkFailure {
                chunk: i as u32,
                reason,
                evidence: c
                    .replicas
                    .iter()
                    .filter_map(|r| match &r.state {
                        ReplicaState::Returned {
                            outcome, output, ..
                        } => Some((
                            r.peer.to_string(),
                            format!("{} (output {:?})", describe(outcome), output),
                        )),
                        _ => None,
                    })
                    .collect(),
            });
        }
    }
    let end = job.finished_ms.unwrap_or_else(now_ms);
    JobStatus {
        id: job_id_hex(&job.id),
        name: job.name.clone(),
        state: job.state,
        chunks_total: job.chunks.len() as u32,
        chunks_verified: verified,
        chunks_failed: failed,
        replicas_issued: issued,
        results,
        disagreements,
        reissues,
        why: job.why.clone(),
        error: job.error.clone(),
        result: job.result.map(|h| h.to_hex()),
        elapsed_s: end.saturating_sub(job.created_ms) as f64 / 1000.0,
        peers: tallies.into_values().collect(),
        failures,
        trust: job.trust,
        replication: job.spec.replication,
    }
}

/// The chunks whose peers disagreed (or that failed), at most [`MAX_EVIDENCE`].
pub(super) fn evidence_chunks(job: &Job, standing: &dyn Fn(&PeerId) -> Standing) -> BTreeSet<u32> {
    job.chunks
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            matches!(c.state, ChunkState::Failed(_))
                || c.replicas.iter().any(|r| {
                    matches!(&r.state, ReplicaState::Returned { key, .. }
                        if matches!(&c.state, ChunkState::Verified { key: v, .. } if v != key))
                })
                || c.groups(standing).len() > 1
        })
        .map(|(i, _)| i as u32)
        .take(MAX_EVIDENCE)
        .collect()
}

/// Each of `chunks` with every answer (from the replica `rows`, which keep the
/// signatures) and whether each signature checks out.
pub(super) fn evidence(
    job: &Job,
    chunks: &BTreeSet<u32>,
    rows: Vec<ReplicaRow>,
) -> Vec<ChunkEvidence> {
    let mut out: BTreeMap<u32, ChunkEvidence> = chunks
        .iter()
        .filter_map(|&i| {
            let c = job.chunks.get(i as usize)?;
            let (state, accepted) = match &c.state {
                ChunkState::Verified { output, .. } => ("verified", Some(output.to_hex())),
                ChunkState::Failed(_) => ("failed", None),
                ChunkState::Pending => ("pending", None),
            };
            Some((
                i,
                ChunkEvidence {
                    chunk: i,
                    state: state.into(),
                    accepted,
                    replicas: Vec::new(),
                },
            ))
        })
        .collect();
    for row in rows {
        let Some(ev) = out.get_mut(&row.chunk) else {
            continue;
        };
        let outcome = decode_outcome(row.outcome.as_deref());
        let signature_valid = match (&outcome, row.output, &row.signature, row.peer.parse()) {
            (Some(o), Some(h), Some(sig), Ok(peer)) => verify_result_signature(
                &peer,
                &result_signed_bytes(&job.id, row.chunk, row.attempt, o, &h),
                sig,
            ),
            _ => false,
        };
        let verified = match job.chunks.get(row.chunk as usize).map(|c| &c.state) {
            Some(ChunkState::Verified { key, .. }) => Some(*key),
            _ => None,
        };
        ev.replicas.push(ReplicaEvidence {
            peer: row.peer,
            state: row.state.as_str().into(),
            agrees: match (&outcome, row.output, verified) {
                (Some(o), Some(h), Some(v)) => Some(agreement_key(o, &h) == v),
                _ => None,
            },
            outcome: outcome.as_ref().map(describe),
            output: row.output.map(|h| h.to_hex()),
            signature: row
                .signature
                .as_ref()
                .map(|s| s.iter().map(|b| format!("{b:02x}")).collect()),
            signature_valid,
        });
    }
    out.into_values().collect()
}
