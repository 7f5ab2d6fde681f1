//! The first, cheap look at a result batch, before any output is hashed or stored
//! and before any signature is checked: copies of a result within the batch, and
//! results for replicas that are not live (already returned, timed out, lost,
//! withdrawn, or not this peer's), are acknowledged and dropped here. Only what
//! remains costs the scheduler a BLAKE3 hash and an ed25519 check.
//!
//! Pure, called by the [actor](super::actor) first thing when a batch arrives; it
//! reads the state through a [`Txn`] and changes nothing. Whether the batch was a
//! replay (an offence, [`Screened::offence`]) is decided here too.

use std::collections::HashSet;

use libp2p::PeerId;

use super::job::ReplicaState;
use super::staged::Txn;
use crate::types::{ChunkResult, JobId};

/// The most results an honest worker sends in one batch (its delivery batches are
/// at most 64 results), so the most results an honest re-send (after a lost ack)
/// can repeat.
pub(super) const HONEST_BATCH: usize = 64;

/// What [`screen`] left of a batch.
#[derive(Debug, Default)]
pub(super) struct Screened {
    /// Results for live replicas of the sender, each once, in the batch's order:
    /// these go on to [`verify::intake`](super::verify::intake).
    pub keep: Vec<ChunkResult>,
    /// Keys acknowledged without judgement (not ours, not live, already stored).
    pub stored: Vec<(JobId, u32, u32)>,
    /// Results whose key came earlier in the same batch.
    pub duplicates: usize,
    /// Results for replicas this peer already returned.
    pub replays: usize,
    /// Results in the batch.
    pub total: usize,
}

impl Screened {
    /// Why the batch counts as an offence, if it does: more than half of it repeats
    /// results, and either some repeat within the batch (an honest worker's outbox
    /// never holds a key twice) or more were re-sent than an honest worker's whole
    /// batch (a worker whose ack was lost re-sends one batch, at most
    /// [`HONEST_BATCH`] results).
    pub(super) fn offence(&self) -> Option<String> {
        let repeated = self.duplicates + self.replays;
        (repeated * 2 > self.total && (self.duplicates > 0 || self.replays > HONEST_BATCH)).then(
            || {
                format!(
                    "a result batch of replays ({} copies within it, {} already stored, of {})",
                    self.duplicates, self.replays, self.total
                )
            },
        )
    }
}

/// Splits a batch from `peer` into what intake must judge and what is acknowledged
/// as it is. Costs a set insert and a lookup per result.
pub(super) fn screen(txn: &Txn<'_>, peer: PeerId, results: Vec<ChunkResult>) -> Screened {
    let mut out = Screened {
        total: results.len(),
        ..Screened::default()
    };
    let mut seen = HashSet::with_capacity(results.len().min(4 * HONEST_BATCH));
    for result in results {
        let key = (result.job_id, result.chunk, result.attempt);
        if !seen.insert(key) {
            out.duplicates += 1;
            continue;
        }
        let state = txn.chunk(key.0, key.1).and_then(|c| {
            c.replicas
                .iter()
                .find(|r| r.attempt == key.2 && r.peer == peer)
                .map(|r| &r.state)
        });
        match state {
            Some(state) if state.is_live() => out.keep.push(result),
            Some(ReplicaState::Returned { .. }) => {
                out.replays += 1;
                out.stored.push(key);
            }
            // Not ours (a job this node forgot, or another peer's replica), or given
            // up on: acknowledged so the worker forgets it, never counted.
            _ => out.stored.push(key),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::job::JobSpec;
    use crate::scheduler::testkit::{adaptive, issued, job, result, returned, state};

    fn spec() -> JobSpec {
        adaptive()
    }

    #[test]
    fn copies_and_results_for_dead_replicas_are_dropped_before_intake() {
        let mut j = job(1, 3, spec());
        j.chunks[0].replicas = vec![issued(1, 0)];
        j.chunks[1].replicas = vec![returned(1, 0, b"a")];
        j.chunks[2].replicas = vec![issued(2, 0)];
        let st = state(vec![j], &[]);
        let txn = Txn::new(&st);
        let live = result(1, 1, 0, 0, b"x");
        let mut batch = vec![live.clone(); 1000];
        batch.push(result(1, 1, 1, 0, b"a")); // already returned
        batch.push(result(1, 1, 2, 0, b"b")); // another peer's replica
        batch.push(result(1, 9, 0, 0, b"c")); // a job this node does not know
        let s = screen(&txn, crate::scheduler::testkit::peer(1), batch);
        assert_eq!(s.keep, vec![live], "the live result, once");
        assert_eq!((s.duplicates, s.replays, s.total), (999, 1, 1003));
        assert_eq!(s.stored.len(), 3);
        assert!(s.offence().is_some(), "a batch of copies is an offence");
    }

    #[test]
    fn an_honest_resend_after_a_lost_ack_is_no_offence() {
        let mut j = job(1, HONEST_BATCH + 1, spec());
        for c in &mut j.chunks {
            c.replicas = vec![returned(1, 0, b"a")];
        }
        let st = state(vec![j], &[]);
        let txn = Txn::new(&st);
        let resend = |n: usize| {
            (0..n as u32)
                .map(|i| result(1, 1, i, 0, b"a"))
                .collect::<Vec<_>>()
        };
        let peer = crate::scheduler::testkit::peer(1);
        let s = screen(&txn, peer, resend(HONEST_BATCH));
        assert_eq!((s.replays, s.keep.len()), (HONEST_BATCH, 0));
        assert_eq!(s.offence(), None);
        let s = screen(&txn, peer, resend(HONEST_BATCH + 1));
        assert!(s.offence().is_some(), "more than a batch re-sent");
        // Half copies or fewer: not an offence.
        let s = Screened {
            duplicates: 2,
            total: 4,
            ..Screened::default()
        };
        assert_eq!(s.offence(), None);
    }
}
