//! The trust operations of adaptive replication, staged on a [`Txn`]:
//! re-verifying the chunks a peer found wrong vouched for alone, planting verified
//! chunks with trusted peers, and this node's own runs (witnesses and spot checks).
//! Pure: the [actor](super::actor) writes what they stage, then applies it (and only
//! then starts the runs). The rules themselves (who is trusted, the draws) are in
//! [`trust`](super::trust).

use libp2p::PeerId;

use super::job::{ChunkState, JobState, Replica, ReplicaState};
use super::placement::{Candidate, Offers};
use super::staged::Txn;
use super::trust::Standing;
use crate::store::db::Write;
use crate::types::JobId;

/// Runs this node does at once itself (witnesses and spot checks).
pub(super) const LOCAL_RUNS: usize = 2;

/// `peer` was found wrong: every chunk verified on its word alone is opened again
/// (a finished job runs again for those chunks, then merges again). Chunks of jobs
/// not in memory are kept for later ([`Changes::reverify_later`]); returns how many
/// chunks were opened.
///
/// [`Changes::reverify_later`]: super::staged::Changes::reverify_later
pub(super) fn reverify(txn: &mut Txn<'_>, peer: PeerId) -> usize {
    let list = txn.take_solo(peer);
    let mut reopened = 0usize;
    let mut later = false;
    for (id, idx) in list {
        let Some(mut head) = txn.head(id) else {
            // A finished job that left memory: the actor loads it and comes back.
            txn.remember_solo(peer, id, idx);
            later = true;
            continue;
        };
        if matches!(head.state, JobState::Cancelled | JobState::Failed) {
            continue;
        }
        let Some(mut chunk) = txn.take_chunk(id, idx) else {
            continue;
        };
        if chunk.solo != Some(peer) || !matches!(chunk.state, ChunkState::Verified { .. }) {
            continue;
        }
        chunk.state = ChunkState::Pending;
        chunk.solo = None;
        txn.put_chunk(id, idx, chunk);
        txn.ch.writes.push(Write::ChunkState {
            job: id,
            idx,
            state: "pending".into(),
            outcome: None,
            output: None,
            output_data: None,
            solo: None,
        });
        head.trust.reverified += 1;
        reopened += 1;
        if head.state != JobState::Running {
            tracing::warn!(job = %id, %peer, "a finished job runs again: a result it rested on is being re-verified");
            head.state = JobState::Running;
            head.result = None;
            head.finished_ms = None;
            head.error = None;
            txn.ch.writes.push(head.write(id));
        }
        txn.put_head(id, head);
        txn.attend(id, idx);
    }
    if later {
        txn.ch.reverify_later.push(peer);
    }
    if reopened > 0 {
        tracing::warn!(%peer, chunks = reopened, "re-verifying results taken on the word of a peer found wrong");
        txn.ch.kick = true;
    }
    reopened
}

/// Offers queued plants (verified chunks, answer known) to trusted peers that have
/// room and have not run them.
pub(super) fn place_plants(txn: &mut Txn<'_>, candidates: &mut [Candidate], offers: &mut Offers) {
    let mut queue = txn.take_plants();
    let mut kept = std::collections::VecDeque::new();
    let local = txn.base.local;
    while let Some((id, idx)) = queue.pop_front() {
        let (Some(job), Some(mut chunk)) = (txn.job(id), txn.take_chunk(id, idx)) else {
            continue;
        };
        if !matches!(chunk.state, ChunkState::Verified { .. }) {
            continue;
        }
        let memory = job.spec.limits.memory_bytes;
        let Some(choice) = candidates.iter_mut().find(|c| {
            c.standing == Standing::Trusted
                && c.peer != local
                && c.room > 0
                && c.memory >= memory
                && !chunk.used_peers().any(|p| *p == c.peer)
        }) else {
            kept.push_back((id, idx));
            continue;
        };
        let attempt = chunk.next_attempt();
        chunk.replicas.push(Replica {
            attempt,
            peer: choice.peer,
            state: ReplicaState::Offered,
            check: true,
        });
        choice.room -= 1;
        let peer = choice.peer;
        txn.put_chunk(id, idx, chunk);
        txn.add_inflight(peer, 1);
        txn.count(id, |t| t.plants += 1);
        offers.entry((id, peer)).or_default().push((idx, attempt));
    }
    txn.set_plants(kept);
}

/// Stages a run of a chunk on this node's own sandbox: a witness for peers on
/// probation, or (`check`) a spot check of a result taken on one peer's word. The
/// actor starts it once this commits. Returns false when it cannot run now.
pub(super) fn local_run(txn: &mut Txn<'_>, id: JobId, idx: u32, check: bool, now_ms: u64) -> bool {
    if txn.local_runs() >= LOCAL_RUNS {
        return false;
    }
    let local = txn.base.local;
    let Some(mut chunk) = txn.take_chunk(id, idx) else {
        return false;
    };
    if chunk.used_peers().any(|p| *p == local) {
        return false;
    }
    let attempt = chunk.next_attempt();
    chunk.replicas.push(Replica {
        attempt,
        peer: local,
        state: ReplicaState::Issued(now_ms),
        check,
    });
    txn.put_chunk(id, idx, chunk);
    txn.count(id, |t| {
        if check {
            t.spot_checks += 1;
        } else {
            t.witness_runs += 1;
        }
    });
    txn.ch.local_runs.push((id, idx, attempt));
    true
}
