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
            state: crate::types::ChunkStatus::Pending,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::job::JobState;
    use crate::scheduler::testkit::{adaptive, job, peer, returned, state, verified};

    #[test]
    fn a_peer_found_wrong_has_its_solo_chunks_reopened_even_in_a_finished_job() {
        let mut done = job(1, 3, adaptive());
        done.state = JobState::Done;
        done.finished_ms = Some(9);
        for (i, c) in done.chunks.iter_mut().enumerate() {
            c.replicas = vec![returned(5, 0, b"a")];
            c.state = verified(b"a");
            // Chunk 2 was later confirmed by others: no longer on 5's word alone.
            c.solo = (i < 2).then(|| peer(5));
        }
        let mut st = state(vec![done], &[5]);
        for i in 0..3 {
            st.remember_solo(peer(5), JobId([1; 16]), i);
        }
        // A job that left memory: kept for later.
        st.remember_solo(peer(5), JobId([9; 16]), 0);
        let mut txn = Txn::new(&st);
        assert_eq!(reverify(&mut txn, peer(5)), 2);
        let mut ch = txn.finish();
        assert_eq!(ch.reverify_later, vec![peer(5)]);
        assert!(ch.writes.iter().any(|w| matches!(w,
            Write::JobState { state, .. } if *state == JobState::Running)));
        st.apply(&mut ch);
        let job = &st.jobs[&JobId([1; 16])];
        assert_eq!(job.state, JobState::Running, "a finished job runs again");
        assert_eq!(job.result, None);
        assert_eq!(job.trust.reverified, 2);
        let states: Vec<bool> = job
            .chunks
            .iter()
            .map(|c| c.state == ChunkState::Pending)
            .collect();
        assert_eq!(states, vec![true, true, false]);
        assert_eq!(job.counts.pending, 2);
        assert_eq!(
            st.solo_index[&peer(5)].iter().copied().collect::<Vec<_>>(),
            vec![(JobId([9; 16]), 0)],
            "only the chunk still to look at stays indexed"
        );
    }

    #[test]
    fn plants_go_to_a_trusted_peer_with_room_that_never_ran_the_chunk() {
        let mut j = job(1, 1, adaptive());
        j.chunks[0].replicas = vec![returned(5, 0, b"a")];
        j.chunks[0].state = verified(b"a");
        let mut st = state(vec![j], &[5, 6]);
        st.plants.push_back((JobId([1; 16]), 0));
        let cand = |n, room| Candidate {
            peer: peer(n),
            memory: 1 << 30,
            room,
            score: 1.0,
            standing: Standing::Trusted,
            group: None,
            source: None,
        };
        let mut candidates = vec![cand(5, 9), cand(7, 0), cand(6, 1)];
        let mut offers = Offers::new();
        let mut txn = Txn::new(&st);
        place_plants(&mut txn, &mut candidates, &mut offers);
        let mut ch = txn.finish();
        st.apply(&mut ch);
        assert_eq!(
            offers.keys().map(|(_, p)| *p).collect::<Vec<_>>(),
            vec![peer(6)]
        );
        let r = &st.jobs[&JobId([1; 16])].chunks[0].replicas[1];
        assert!(r.check && r.peer == peer(6));
        assert!(st.plants.is_empty());
        assert_eq!(st.jobs[&JobId([1; 16])].trust.plants, 1);
    }
}
