//! The actor against a failing store: persist, then apply. A result batch whose
//! write fails is not acknowledged and changes nothing; sent again once the store
//! recovers it is written, then acknowledged. A cancellation that cannot be stored
//! is reported to the caller and the job goes on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;

use super::testkit::{adaptive, job, key, peer, result};
use super::*;
use crate::net::protocol::{
    CapacityAdvert, PROTOCOL_VERSION, RejectReason, TaskReply, TaskRequest,
};
use crate::net::sim::SimulatedPeers;
use crate::net::{PeerInfo, RequestError};
use crate::sandbox::SandboxConfig;

/// Two peers that take every offer and never answer by themselves; the offers they
/// took are recorded (peer, chunk, attempt).
struct Takers(Arc<Mutex<Vec<(PeerId, u32, u32)>>>);

impl SimulatedPeers for Takers {
    fn peers(&mut self) -> Vec<PeerInfo> {
        [1u8, 2]
            .iter()
            .map(|&n| PeerInfo {
                path: None,
                via: None,
                peer_id: peer(n).to_string(),
                addrs: Vec::new(),
                connected: true,
                rtt_ms: None,
                agent: None,
                foreign_version: None,
                advert: Some(CapacityAdvert {
                    version: PROTOCOL_VERSION,
                    seq: 1,
                    slots_total: 4,
                    slots_free: 4,
                    cores: 4,
                    memory_limit: 1 << 30,
                    fuel_per_sec: 1,
                    features: Vec::new(),
                }),
                advert_age_s: Some(0.0),
                offences: 0,
                ip: Some(format!("10.0.{n}.1")),
                discovered: None,
            })
            .collect()
    }

    fn task(&mut self, peer: PeerId, request: TaskRequest) -> Result<TaskReply, RequestError> {
        match request {
            TaskRequest::Offer { assignments, .. } => {
                let mut taken = self.0.lock().unwrap();
                taken.extend(assignments.iter().map(|a| (peer, a.chunk, a.attempt)));
                Ok(TaskReply::Offer {
                    accepted: assignments.iter().map(|a| (a.chunk, a.attempt)).collect(),
                    rejected: Vec::new(),
                })
            }
            TaskRequest::Cancel { .. } => Ok(TaskReply::Cancelled),
        }
    }
}

/// What [`start`] gives a test: the handle, the actor's task, its shutdown, the
/// store, and the offers taken.
type Started = (
    Scheduler,
    tokio::task::JoinHandle<()>,
    CancellationToken,
    Arc<Db>,
    Arc<Mutex<Vec<(PeerId, u32, u32)>>>,
);

/// A scheduler's context over a fresh store in `dir` and the simulated `peers`.
fn context(dir: &std::path::Path, peers: impl SimulatedPeers) -> SchedulerContext {
    SchedulerContext {
        net: NetClient::simulated(&key(200), peers),
        blobs: BlobStore::open(dir.join("blobs")).unwrap(),
        db: Arc::new(Db::open(&dir.join("db.sqlite")).unwrap()),
        sandbox: Sandbox::new(SandboxConfig {
            cache_dir: None,
            ..SandboxConfig::default()
        })
        .unwrap(),
        metrics: Default::default(),
        local_worker: None,
        trust: Default::default(),
        placement: Default::default(),
        seed: None,
    }
}

/// A scheduler over a fresh store whose two simulated peers take every offer.
fn start(dir: &std::path::Path) -> Started {
    let taken = Arc::new(Mutex::new(Vec::new()));
    let ctx = context(dir, Takers(taken.clone()));
    let db = ctx.db.clone();
    let shutdown = CancellationToken::new();
    let (scheduler, task) = Scheduler::start(ctx, shutdown.clone());
    (scheduler, task, shutdown, db, taken)
}

/// A scheduler over a fresh store and the simulated `peers`, running job 1 of
/// `chunks` chunks with fixed replication.
async fn start_fixed_job(
    dir: &std::path::Path,
    peers: impl SimulatedPeers,
    chunks: usize,
) -> (Scheduler, tokio::task::JoinHandle<()>, CancellationToken) {
    let shutdown = CancellationToken::new();
    let (scheduler, task) = Scheduler::start(context(dir, peers), shutdown.clone());
    let spec = JobSpec {
        replication: Replication::Fixed,
        ..adaptive()
    };
    scheduler
        .ask(|tx| Msg::Insert(Box::new(job(1, chunks, spec)), tx))
        .await
        .unwrap()
        .unwrap();
    (scheduler, task, shutdown)
}

async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Submits a job of two chunks at fixed redundancy 2, answers each chunk's first
/// replica (`answer`; a chunk's second replica goes out only then), and returns its
/// id once both replicas of both chunks are issued, with each chunk's second
/// replica (peer, chunk, attempt), chunk 0 first.
async fn two_chunks_offered_to_both(
    scheduler: &Scheduler,
    taken: &Mutex<Vec<(PeerId, u32, u32)>>,
) -> (JobId, Vec<(PeerId, u32, u32)>) {
    let spec = JobSpec {
        replication: Replication::Fixed,
        ..adaptive()
    };
    let j = job(1, 2, spec);
    let id = j.id;
    scheduler
        .ask(|tx| Msg::Insert(Box::new(j), tx))
        .await
        .unwrap()
        .unwrap();
    let first = wait_for("the first replicas", async || {
        let taken = taken.lock().unwrap().clone();
        (taken.len() == 2).then_some(taken)
    })
    .await;
    wait_for("the first replicas issued", async || {
        let s = scheduler.status(Some(id)).await.pop()?;
        (s.replicas_issued == 2).then_some(())
    })
    .await;
    for &(p, chunk, attempt) in &first {
        let n = (1..=2u8).find(|&n| peer(n) == p).unwrap();
        let batch = ResultBatch {
            results: vec![result(n, 1, chunk, attempt, b"answer")],
        };
        assert_eq!(scheduler.results(p, batch).await.stored.len(), 1);
    }
    let mut second = wait_for("the second replicas", async || {
        let taken = taken.lock().unwrap().clone();
        (taken.len() == 4).then(|| taken[2..].to_vec())
    })
    .await;
    second.sort_by_key(|&(_, chunk, _)| chunk);
    for (c, (p, chunk, _)) in second.iter().enumerate() {
        assert_eq!(*chunk, c as u32);
        assert!(
            first.iter().any(|f| f.1 == *chunk && f.0 != *p),
            "the other peer"
        );
    }
    wait_for("the replicas issued", async || {
        let s = scheduler.status(Some(id)).await.pop()?;
        (s.replicas_issued == 4).then_some(())
    })
    .await;
    (id, second)
}

#[tokio::test]
async fn a_result_whose_write_fails_is_not_acknowledged_and_is_kept_when_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (scheduler, task, shutdown, db, taken) = start(dir.path());
    // Both chunks go to both peers; each has one answer in.
    let (id, second) = two_chunks_offered_to_both(&scheduler, &taken).await;
    let (holder, _, attempt) = second[0];
    let n = (1..=2u8).find(|&n| peer(n) == holder).unwrap();
    let batch = ResultBatch {
        results: vec![result(n, 1, 0, attempt, b"answer")],
    };

    // The store fails: nothing is acknowledged, nothing changes.
    db.fail_writes_for_test(u32::MAX);
    let ack = scheduler.results(holder, batch.clone()).await;
    assert!(
        ack.stored.is_empty(),
        "acknowledged a result it did not store"
    );
    let status = scheduler.status(Some(id)).await.pop().unwrap();
    assert_eq!(
        (status.results, status.chunks_verified),
        (2, 0),
        "memory changed although the write failed"
    );

    // A cancellation that cannot be stored is reported, and the job goes on.
    let err = scheduler.cancel(id).await.unwrap_err();
    assert!(err.to_string().contains("could not be stored"), "{err}");
    let status = scheduler.status(Some(id)).await.pop().unwrap();
    assert_eq!(status.state, JobState::Running);

    // The store recovers: the worker's retry is written, then acknowledged.
    db.fail_writes_for_test(0);
    let ack = scheduler.results(holder, batch).await;
    assert_eq!(ack.stored, vec![(id, 0, attempt)]);
    let row = db
        .replicas(id)
        .unwrap()
        .into_iter()
        .find(|r| r.chunk == 0 && r.attempt == attempt)
        .unwrap();
    assert_eq!(row.state, crate::types::ReplicaStatus::Returned);
    assert_eq!(row.output_data.as_deref(), Some(&b"answer"[..]));
    let status = scheduler.status(Some(id)).await.pop().unwrap();
    assert_eq!((status.results, status.chunks_verified), (3, 1));

    // And now a cancellation is stored.
    assert_eq!(scheduler.cancel(id).await.unwrap(), Some(()));
    assert_eq!(db.job(id).unwrap().unwrap().state, JobState::Cancelled);
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
// The store's lock is held on purpose across awaits: it is what keeps the actor busy.
#[allow(clippy::await_holding_lock)]
async fn result_batches_that_queue_together_are_judged_together() {
    let dir = tempfile::tempdir().unwrap();
    let (scheduler, task, shutdown, db, taken) = start(dir.path());
    let (id, second) = two_chunks_offered_to_both(&scheduler, &taken).await;
    // The second replica of chunk `c`: its peer and its result.
    let holder = |c: usize| second[c].0;
    let attempt = |c: usize| second[c].2;
    let batch = |c: usize| {
        let n = (1..=2u8).find(|&n| peer(n) == holder(c)).unwrap();
        ResultBatch {
            results: vec![result(n, 1, c as u32, attempt(c), b"answer")],
        }
    };

    // The actor is held in a database call (the store's lock is taken here) while
    // the second results of both chunks queue behind it: it takes them as one burst.
    let queued = || scheduler.tx.max_capacity() - scheduler.tx.capacity();
    let conn = db.conn();
    let (held, cancelled) = tokio::sync::oneshot::channel();
    scheduler
        .tx
        .send(Msg::Cancel(JobId([9; 16]), held))
        .await
        .unwrap();
    wait_for("the actor to take the cancel", async || {
        (queued() == 0).then_some(())
    })
    .await;
    let first = tokio::spawn({
        let (scheduler, b, p) = (scheduler.clone(), batch(0), holder(0));
        async move { scheduler.results(p, b).await }
    });
    let other = tokio::spawn({
        let (scheduler, b, p) = (scheduler.clone(), batch(1), holder(1));
        async move { scheduler.results(p, b).await }
    });
    wait_for("both batches queued", async || {
        (queued() == 2).then_some(())
    })
    .await;
    drop(conn);

    assert_eq!(cancelled.await.unwrap(), Ok(None), "an unknown job");
    assert_eq!(first.await.unwrap().stored, vec![(id, 0, attempt(0))]);
    assert_eq!(other.await.unwrap().stored, vec![(id, 1, attempt(1))]);
    let status = scheduler.status(Some(id)).await.pop().unwrap();
    assert_eq!(status.results, 4);
    assert_eq!(
        status.chunks_verified, 2,
        "each chunk's two matching results verify it"
    );
    let rows = db.replicas(id).unwrap();
    let returned = rows
        .iter()
        .filter(|r| r.state == crate::types::ReplicaStatus::Returned)
        .count();
    assert_eq!(returned, 4, "every result is stored");
    shutdown.cancel();
    task.await.unwrap();
}

/// Peer 1 holds one replica at a time (a worker whose other places another
/// submitter holds) and refuses the rest for want of room; peer 2 refuses the job
/// (so each chunk's first replica waits for peer 1). Peer 1's accepted offers are
/// recorded with when they came.
#[derive(Clone, Default)]
struct Narrow {
    held: Arc<Mutex<Option<(u32, u32)>>>,
    offers: Arc<Mutex<Vec<(u32, u32, tokio::time::Instant)>>>,
}

impl SimulatedPeers for Narrow {
    fn peers(&mut self) -> Vec<PeerInfo> {
        Takers(Arc::default()).peers()
    }

    fn task(&mut self, peer: PeerId, request: TaskRequest) -> Result<TaskReply, RequestError> {
        let TaskRequest::Offer { assignments, .. } = request else {
            return Ok(TaskReply::Cancelled);
        };
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        let mut held = self.held.lock().unwrap();
        for a in assignments {
            if peer != self::peer(1) {
                rejected.push((a.chunk, a.attempt, RejectReason::NotAccepting));
            } else if held.is_none() {
                *held = Some((a.chunk, a.attempt));
                self.offers
                    .lock()
                    .unwrap()
                    .push((a.chunk, a.attempt, tokio::time::Instant::now()));
                accepted.push((a.chunk, a.attempt));
            } else {
                rejected.push((a.chunk, a.attempt, RejectReason::NoFreeSlots));
            }
        }
        Ok(TaskReply::Offer { accepted, rejected })
    }
}

#[tokio::test(start_paused = true)]
async fn a_worker_refusing_for_room_is_offered_again_as_soon_as_its_results_free_room() {
    let dir = tempfile::tempdir().unwrap();
    let narrow = Narrow::default();
    let (scheduler, task, shutdown) = start_fixed_job(dir.path(), narrow.clone(), 3).await;
    // Peer 1 takes one chunk and refuses the others (it is backed off).
    for n in 1..=3 {
        let (chunk, attempt, _) = wait_for("peer 1 to take a chunk", async || {
            narrow.offers.lock().unwrap().get(n - 1).copied()
        })
        .await;
        // It runs it and returns its result, which frees its place.
        *narrow.held.lock().unwrap() = None;
        let returned = tokio::time::Instant::now();
        let batch = ResultBatch {
            results: vec![result(1, 1, chunk, attempt, b"answer")],
        };
        assert_eq!(
            scheduler.results(peer(1), batch).await.stored,
            vec![(JobId([1; 16]), chunk, attempt)]
        );
        if n == 3 {
            break;
        }
        let (_, _, offered) = wait_for("peer 1's next chunk", async || {
            narrow.offers.lock().unwrap().get(n).copied()
        })
        .await;
        // Offered again as its result came, not when the backoff ran out (the
        // actor's backoff is in wall-clock time, which hardly moves while tokio's
        // paused clock runs ahead: without results clearing it, this times out).
        assert!(
            offered - returned < actor::PEER_BACKOFF / 2,
            "peer 1 waited {:?} for its next chunk",
            offered - returned
        );
    }
    shutdown.cancel();
    task.await.unwrap();
}

/// Peer 1 advertises room and refuses every offer (`NotAccepting`); peer 2 takes
/// everything. Counts the offers peer 1 got.
#[derive(Clone, Default)]
struct Refuser(Arc<Mutex<u32>>);

impl SimulatedPeers for Refuser {
    fn peers(&mut self) -> Vec<PeerInfo> {
        Takers(Arc::default()).peers()
    }

    fn task(&mut self, peer: PeerId, request: TaskRequest) -> Result<TaskReply, RequestError> {
        let TaskRequest::Offer { assignments, .. } = request else {
            return Ok(TaskReply::Cancelled);
        };
        if peer != self::peer(1) {
            return Ok(TaskReply::Offer {
                accepted: assignments.iter().map(|a| (a.chunk, a.attempt)).collect(),
                rejected: Vec::new(),
            });
        }
        *self.0.lock().unwrap() += 1;
        Ok(TaskReply::Offer {
            accepted: Vec::new(),
            rejected: assignments
                .iter()
                .map(|a| (a.chunk, a.attempt, RejectReason::NotAccepting))
                .collect(),
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_advertises_room_and_refuses_everything_is_backed_off() {
    let dir = tempfile::tempdir().unwrap();
    let refuser = Refuser::default();
    // The handle is held to the end of the test, as in the others. Eight chunks: a
    // chunk's first replica goes out alone, and peer 2 (a newcomer, room 4) cannot
    // take all eight, so peer 1 is offered some in the first dispatch. (With four,
    // all could go to peer 2, which never answers, and peer 1 would never be asked.)
    let (_scheduler, task, shutdown) = start_fixed_job(dir.path(), refuser.clone(), 8).await;
    wait_for("peer 1's first refusal", async || {
        (*refuser.0.lock().unwrap() > 0).then_some(())
    })
    .await;
    // Many dispatches later (a tick is 250 ms of tokio's paused clock; the
    // backoff is a second of wall-clock time, which hardly moves meanwhile), it
    // was not offered the refused replicas again and again. A guard in real time:
    // an actor that never idles never lets the paused clock move.
    let (tx, mut guard) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        let _ = tx.send(());
    });
    let window = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(window);
    loop {
        let offers = *refuser.0.lock().unwrap();
        assert!(offers <= 2, "a refusing peer was offered {offers} times");
        tokio::select! {
            _ = &mut window => break,
            _ = &mut guard => break,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    let offers = *refuser.0.lock().unwrap();
    assert!(offers <= 2, "a refusing peer was offered {offers} times");
    shutdown.cancel();
    task.await.unwrap();
}
