//! The worker on one machine: a simulated network (no peer answers), a real store,
//! blob directory and sandbox, and an executor that reports where and how it ran.
//! Results of "own" jobs go to a [`LocalResults`] closure that records them.
//! Time-dependent tests run on tokio's paused clock and the politeness [`Clock`]
//! seam: nothing sleeps for real.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::{PeerId, identity};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::politeness::clock::TestClock;
use super::politeness::{Clock, VolunteerConfig};
use super::pool::{CHUNK_NICE, thread_nice};
use super::{Executor, LocalResults, Worker, WorkerLimits};
use crate::net::protocol::ResultBatch;
use crate::net::protocol::{
    Assignment, BlobHash, ChunkResult, JobId, Payload, RejectReason, ResultAck, TaskReply,
    WireOutcome,
};
use crate::net::sim::SimulatedPeers;
use crate::net::{NetClient, RequestError};
use crate::sandbox::{ChunkControl, Execution, JobModule, Limits, Outcome, Sandbox, SandboxConfig};
use crate::store::db::{OutboxRow, Write};
use crate::store::{BlobStore, Db};

/// No peer is reachable.
struct Nobody;

impl SimulatedPeers for Nobody {}

/// Echoes the input; records the nice value and name of the thread it ran on; while
/// `hold` is set, waits (like a chunk paused at the gate) until it is cancelled.
#[derive(Debug, Default)]
struct Probe {
    threads: Mutex<Vec<(i32, Option<String>)>>,
    hold: AtomicBool,
}

impl Executor for Probe {
    fn execute(
        &self,
        _module: &JobModule,
        input: &[u8],
        _limits: &Limits,
        control: Arc<ChunkControl>,
    ) -> Execution {
        let thread = std::thread::current();
        self.threads
            .lock()
            .unwrap()
            .push((thread_nice(), thread.name().map(String::from)));
        while self.hold.load(Ordering::Relaxed) && !control.is_cancelled() {
            std::thread::park_timeout(Duration::from_millis(1));
        }
        Execution {
            outcome: if control.is_cancelled() {
                Outcome::Cancelled
            } else {
                Outcome::Ok(input.to_vec())
            },
            fuel_used: 1,
            elapsed: Duration::ZERO,
            logs: Vec::new(),
        }
    }
}

/// A worker lending `cpus` slots, and what its own scheduler receives.
struct Fixture {
    worker: Worker,
    probe: Arc<Probe>,
    /// While set, this node's own scheduler takes results only very slowly.
    stall: Arc<AtomicBool>,
    db: Arc<Db>,
    module: BlobHash,
    /// This node's peer id: chunks offered by it are "own" jobs.
    local: PeerId,
    /// Each batch delivered to the local scheduler.
    batches: mpsc::UnboundedReceiver<Vec<ChunkResult>>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

const WAT: &str = r#"(module
  (import "peergrid" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (func (export "peergrid_abi_v1"))
  (func (export "peergrid_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "peergrid_run") (param i32 i32) (result i32) (i32.const 0)))"#;

impl Fixture {
    /// A worker with identity `key` over a database that already holds `outbox`.
    fn new(
        volunteer: VolunteerConfig,
        clock: Arc<dyn Clock>,
        key: &identity::Keypair,
        outbox: Vec<OutboxRow>,
    ) -> Self {
        Self::with_limits(volunteer, clock, key, outbox, WorkerLimits::default())
    }

    /// [`new`](Self::new) with the worker's bounds given.
    fn with_limits(
        volunteer: VolunteerConfig,
        clock: Arc<dyn Clock>,
        key: &identity::Keypair,
        outbox: Vec<OutboxRow>,
        limits: WorkerLimits,
    ) -> Self {
        Self::build(volunteer, clock, key, outbox, limits, Nobody)
    }

    /// [`with_limits`](Self::with_limits) with the peers the network reaches.
    fn build(
        volunteer: VolunteerConfig,
        clock: Arc<dyn Clock>,
        key: &identity::Keypair,
        outbox: Vec<OutboxRow>,
        limits: WorkerLimits,
        peers: impl SimulatedPeers,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("db.sqlite")).unwrap());
        db.apply(&outbox.into_iter().map(Write::OutboxPut).collect::<Vec<_>>())
            .unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        // Peers send binaries (WAT text is refused from the network).
        let module = blobs.put(&wat::parse_str(WAT).unwrap()).unwrap();
        let net = NetClient::simulated(key, peers);
        let local = net.local_peer_id();
        let probe = Arc::new(Probe::default());
        let shutdown = CancellationToken::new();
        let worker = Worker::with_clock(
            net,
            blobs,
            db.clone(),
            Sandbox::new(SandboxConfig::default()).unwrap(),
            probe.clone(),
            volunteer,
            Limits::CHUNK.memory_bytes,
            limits,
            clock,
            shutdown.clone(),
        );
        let (tx, batches) = mpsc::unbounded_channel();
        let stall = Arc::new(AtomicBool::new(false));
        let stalled = stall.clone();
        worker.set_local_scheduler(LocalResults(Arc::new(move |_peer, batch| {
            let stored = batch
                .results
                .iter()
                .map(|r| (r.job_id, r.chunk, r.attempt))
                .collect();
            let (tx, stalled) = (tx.clone(), stalled.clone());
            Box::pin(async move {
                // A slow submitter: answers only once the test lets it.
                while stalled.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let _ = tx.send(batch.results);
                ResultAck { stored }
            })
        })));
        Self {
            worker,
            probe,
            stall,
            db,
            module,
            local,
            batches,
            shutdown,
            _dir: dir,
        }
    }

    fn assignment(&self, chunk: u32) -> Assignment {
        Assignment {
            chunk,
            attempt: 0,
            module: self.module,
            input: Payload::Inline(vec![chunk as u8]),
            limits: Limits::CHUNK,
            soft_deadline_ms: 0,
        }
    }

    fn offer(&self, chunks: std::ops::Range<u32>) -> TaskReply {
        let assignments = chunks.map(|c| self.assignment(c)).collect();
        self.worker.offer(self.local, JOB, assignments)
    }

    /// The batches delivered to the local scheduler until they hold `n` results.
    /// The guard is in real time (a thread), so a paused tokio clock cannot fire it
    /// while a chunk computes on the pool.
    async fn batches(&mut self, n: usize) -> Vec<Vec<ChunkResult>> {
        let (tx, mut expired) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(60));
            let _ = tx.send(());
        });
        let mut batches = Vec::new();
        let mut got = 0;
        while got < n {
            tokio::select! {
                batch = self.batches.recv() => {
                    let batch = batch.expect("the worker runs");
                    got += batch.len();
                    batches.push(batch);
                }
                _ = &mut expired => panic!("{got} of {n} results delivered in 60 s"),
            }
        }
        batches
    }

    /// The next `n` results delivered to the local scheduler.
    async fn delivered(&mut self, n: usize) -> Vec<ChunkResult> {
        self.batches(n).await.into_iter().flatten().collect()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.worker.join().await;
    }
}

const JOB: JobId = JobId([7; 16]);

fn local_key() -> identity::Keypair {
    identity::Keypair::generate_ed25519()
}

fn lend(cpus: u32) -> VolunteerConfig {
    let mut config = VolunteerConfig::lend(cpus);
    config.preferences.lend_when_busy = true;
    config
}

/// Waits (in tokio's time, paused or not) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

fn outbox_row(submitter: PeerId, chunk: u32, output: Vec<u8>) -> OutboxRow {
    let result = ChunkResult {
        job_id: JOB,
        chunk,
        attempt: 0,
        outcome: WireOutcome::Ok,
        output_hash: BlobHash::of(&output),
        output: Some(Payload::Inline(output)),
        fuel_used: 1,
        exec_micros: 1,
        signature: Vec::new(),
    };
    OutboxRow {
        job_id: JOB,
        chunk,
        attempt: 0,
        submitter: submitter.to_string(),
        result: postcard::to_allocvec(&result).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_run_at_nice_19_and_the_runtimes_blocking_threads_keep_their_priority() {
    let normal = tokio::task::spawn_blocking(thread_nice).await.unwrap();
    let mut f = Fixture::new(
        lend(2),
        Arc::new(TestClock::default()),
        &local_key(),
        Vec::new(),
    );
    let TaskReply::Offer { accepted, .. } = f.offer(0..4) else {
        panic!("an offer gets an offer reply");
    };
    assert_eq!(accepted.len(), 4);
    let results = f.delivered(4).await;
    assert!(results.iter().all(|r| r.outcome == WireOutcome::Ok));
    let threads = f.probe.threads.lock().unwrap().clone();
    assert_eq!(threads.len(), 4);
    for (nice, name) in &threads {
        if cfg!(target_os = "linux") {
            assert_eq!(*nice, CHUNK_NICE, "a chunk ran at nice {nice}");
        }
        assert!(
            name.as_deref()
                .is_some_and(|n| n.starts_with("peergrid-chunk-")),
            "a chunk ran on {name:?}"
        );
    }
    // Merges, splits, blob serving and the database run on tokio's blocking
    // threads afterwards: none of them was reniced.
    for _ in 0..8 {
        assert_eq!(
            tokio::task::spawn_blocking(thread_nice).await.unwrap(),
            normal
        );
    }
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_paused_longer_than_withdraw_after_hands_its_chunks_back() {
    let mut volunteer = lend(2);
    volunteer.withdraw_after = Duration::from_secs(300);
    let mut f = Fixture::new(
        volunteer,
        Arc::new(TestClock::default()),
        &local_key(),
        Vec::new(),
    );
    f.probe.hold.store(true, Ordering::Relaxed);
    let started = tokio::time::Instant::now();
    let TaskReply::Offer { accepted, .. } = f.offer(0..3) else {
        panic!("an offer gets an offer reply");
    };
    assert_eq!(accepted.len(), 3, "two run and one waits for a slot");
    f.worker.pause(None).await.unwrap();
    assert_eq!(f.worker.capacity().0, 0, "a paused worker lends nothing");
    let TaskReply::Offer { rejected, .. } = f.offer(10..11) else {
        panic!("an offer gets an offer reply");
    };
    assert_eq!(rejected, [(10, 0, RejectReason::Suspended)]);
    let results = f.delivered(3).await;
    assert!(
        results.iter().all(|r| r.outcome == WireOutcome::Withdrawn),
        "{results:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(300),
        "withdrawn only after withdraw_after: {:?}",
        started.elapsed()
    );
    assert_eq!(f.worker.status().withdrawn, 3);
    until("the withdrawn chunks to leave", || {
        f.worker.status().active == 0
    })
    .await;
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_worker_lends_only_during_its_active_hours() {
    let clock = Arc::new(TestClock::default());
    clock.minute.store(12 * 60, Ordering::Relaxed);
    let mut volunteer = lend(2);
    volunteer.preferences.active_hours = Some("22:00-07:00".parse().unwrap());
    let mut f = Fixture::new(volunteer, clock.clone(), &local_key(), Vec::new());
    assert_eq!(f.worker.capacity().0, 0);
    let reason = f.worker.volunteer_status().reason_text.unwrap_or_default();
    assert!(reason.contains("outside the active hours"), "{reason}");
    let TaskReply::Offer { rejected, .. } = f.offer(0..1) else {
        panic!("an offer gets an offer reply");
    };
    assert_eq!(rejected, [(0, 0, RejectReason::Suspended)]);
    // 23:00: the next tick lends again.
    clock.minute.store(23 * 60, Ordering::Relaxed);
    until("the worker to lend at 23:00", || f.worker.capacity().0 == 2).await;
    let TaskReply::Offer { accepted, .. } = f.offer(0..1) else {
        panic!("an offer gets an offer reply");
    };
    assert_eq!(accepted, [(0, 0)]);
    assert_eq!(f.delivered(1).await[0].outcome, WireOutcome::Ok);
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_outbox_is_delivered_in_pages_and_batches_and_an_unreachable_submitter_waits() {
    let key = local_key();
    let own = key.public().to_peer_id();
    let unreachable = PeerId::random();
    // More results than a page holds for this node's own scheduler, a few for a
    // submitter that cannot be reached, and three large ones (two fit a message).
    let mut rows: Vec<OutboxRow> = (0..300).map(|c| outbox_row(own, c, vec![1])).collect();
    rows.extend((1000..1005).map(|c| outbox_row(unreachable, c, vec![2])));
    rows.extend((2000..2003).map(|c| outbox_row(own, c, vec![3; 3 << 20])));
    let mut f = Fixture::new(lend(1), Arc::new(TestClock::default()), &key, rows);
    let batches = f.batches(303).await;
    let mut chunks: Vec<u32> = batches.iter().flatten().map(|r| r.chunk).collect();
    assert_eq!(chunks.len(), 303, "every own result once");
    chunks.sort_unstable();
    chunks.dedup();
    assert_eq!(chunks.len(), 303, "every own result once");
    assert!(
        batches.iter().all(|b| b.len() <= 64),
        "batches of 64 at most"
    );
    let large: Vec<usize> = batches
        .iter()
        .map(|b| b.iter().filter(|r| r.chunk >= 2000).count())
        .filter(|n| *n > 0)
        .collect();
    assert_eq!(
        large,
        [2, 1],
        "two large results fit a message, the third goes alone"
    );
    until(
        "the outbox to hold only the unreachable submitter's results",
        || f.worker.status().outbox == 5,
    )
    .await;
    let left = f.db.outbox_page(None, &[], 100, usize::MAX).unwrap();
    assert_eq!(left.len(), 5);
    assert!(left.iter().all(|r| r.submitter == unreachable.to_string()));
    f.stop().await;
}

/// A result written while the outbox count reads 0 (a refresh that raced the write)
/// is still delivered when its notification comes: the count never gates a round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_result_is_delivered_even_when_the_outbox_count_is_stale() {
    let key = local_key();
    let own = key.public().to_peer_id();
    let mut f = Fixture::new(lend(1), Arc::new(TestClock::default()), &key, Vec::new());
    // One chunk run and delivered: the loop is running and has emptied the outbox.
    assert!(matches!(f.offer(0..1), TaskReply::Offer { .. }));
    assert_eq!(f.delivered(1).await[0].chunk, 0);
    until("the worker to count an empty outbox", || {
        f.worker.status().outbox == 0
    })
    .await;
    f.db.apply(&[Write::OutboxPut(outbox_row(own, 9, vec![1]))])
        .unwrap();
    // What the racing refresh leaves behind: the row is stored, the count says 0.
    f.worker.inner.outbox_len.store(0, Ordering::Relaxed);
    f.worker.inner.deliver.notify_one();
    let results = f.delivered(1).await;
    assert_eq!(results[0].chunk, 9);
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn only_the_jobs_submitter_can_cancel_its_chunks() {
    let f = Fixture::new(
        lend(2),
        Arc::new(TestClock::default()),
        &local_key(),
        Vec::new(),
    );
    f.probe.hold.store(true, Ordering::Relaxed);
    let TaskReply::Offer { accepted, .. } = f.offer(0..2) else {
        panic!("an offer gets an offer reply");
    };
    assert_eq!(accepted.len(), 2);
    // Another peer that learnt the job id: nothing stops.
    let stranger = identity::Keypair::generate_ed25519().public().to_peer_id();
    f.worker.cancel(stranger, JOB, &[]);
    f.worker.cancel(stranger, JOB, &[0]);
    assert_eq!(
        f.worker.status().active,
        2,
        "a forged cancel changes nothing"
    );
    // The same job id offered by another submitter is a separate chunk.
    let TaskReply::Offer { accepted, .. } = f.worker.offer(stranger, JOB, vec![f.assignment(0)])
    else {
        panic!("an offer gets an offer reply");
    };
    assert_eq!(accepted, [(0, 0)]);
    assert_eq!(f.worker.status().active, 3);
    // The submitter's own cancel stops its chunks, and only those.
    f.worker.cancel(f.local, JOB, &[]);
    until("the submitter's chunks to stop", || {
        f.worker.status().active == 1
    })
    .await;
    f.probe.hold.store(false, Ordering::Relaxed);
    f.worker.cancel(stranger, JOB, &[]);
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn limits_over_the_workers_maxima_are_refused_with_the_maxima() {
    let limits = WorkerLimits {
        max_fuel: 1_000_000,
        max_timeout: Duration::from_secs(60),
        max_output_bytes: 1024,
        ..WorkerLimits::default()
    };
    let mut f = Fixture::with_limits(
        lend(2),
        Arc::new(TestClock::default()),
        &local_key(),
        Vec::new(),
        limits,
    );
    let submitter = PeerId::random();
    let fits = Limits {
        fuel: 1_000_000,
        memory_bytes: Limits::CHUNK.memory_bytes,
        timeout: Duration::from_secs(60),
        max_output_bytes: 1024,
    };
    let most = TaskReply::Offer {
        accepted: vec![],
        rejected: (1..6)
            .map(|c| (c, 0, RejectReason::LimitsTooHigh(fits)))
            .collect(),
    };
    let with = |chunk: u32, limits: Limits| Assignment {
        limits,
        ..f.assignment(chunk)
    };
    let over = vec![
        with(
            1,
            Limits {
                fuel: u64::MAX,
                ..fits
            },
        ),
        with(
            2,
            Limits {
                timeout: Duration::from_secs(61),
                ..fits
            },
        ),
        with(
            3,
            Limits {
                max_output_bytes: 1025,
                ..fits
            },
        ),
        with(
            4,
            Limits {
                memory_bytes: Limits::CHUNK.memory_bytes + 1,
                ..fits
            },
        ),
        with(5, Limits::CHUNK),
    ];
    assert_eq!(f.worker.offer(submitter, JOB, over), most);
    let metrics = &f.worker.inner.metrics.refused;
    assert_eq!(metrics.with_label_values(&["limits_too_high"]).get(), 5);
    assert_eq!(
        f.worker.status().active,
        0,
        "nothing over a maximum was taken"
    );
    // Exactly the maxima are taken.
    let TaskReply::Offer { accepted, rejected } = f.worker.offer(f.local, JOB, vec![with(0, fits)])
    else {
        panic!("an offer gets an offer reply");
    };
    assert_eq!((accepted, rejected), (vec![(0, 0)], vec![]));
    assert_eq!(f.delivered(1).await[0].outcome, WireOutcome::Ok);
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_module_over_a_cap_or_in_text_is_refused_once_and_then_at_admission() {
    let mut f = Fixture::new(
        lend(2),
        Arc::new(TestClock::default()),
        &local_key(),
        Vec::new(),
    );
    let blobs = BlobStore::open(f._dir.path().join("blobs")).unwrap();
    let huge = format!("(module {})", "(func)".repeat(100_001));
    let bad = [
        (
            blobs.put(&wat::parse_str(&huge).unwrap()).unwrap(),
            "functions: 100001",
        ),
        (blobs.put(WAT.as_bytes()).unwrap(), "WAT text"),
    ];
    for (chunk, (module, why)) in (0u32..).zip(bad) {
        let a = Assignment {
            module,
            ..f.assignment(chunk)
        };
        let TaskReply::Offer { accepted, .. } = f.worker.offer(f.local, JOB, vec![a.clone()])
        else {
            panic!("an offer gets an offer reply");
        };
        assert_eq!(accepted, [(chunk, 0)]);
        let result = f.delivered(1).await.remove(0);
        match &result.outcome {
            WireOutcome::Invalid(reason) => assert!(reason.contains(why), "{reason}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
        // Remembered: the next offer of that module is refused at once.
        let again = Assignment { attempt: 1, ..a };
        let TaskReply::Offer { accepted, rejected } = f.worker.offer(f.local, JOB, vec![again])
        else {
            panic!("an offer gets an offer reply");
        };
        assert!(accepted.is_empty());
        assert!(
            matches!(&rejected[..], [(c, 1, RejectReason::BadModule(r))] if *c == chunk && r.contains(why)),
            "{rejected:?}"
        );
    }
    assert!(f.probe.threads.lock().unwrap().is_empty(), "nothing ran");
    f.stop().await;
}

/// Takes every result batch sent to it, and records which peer got what, and the
/// offences counted against peers.
#[derive(Clone, Default)]
struct Takers(
    Arc<Mutex<Vec<(PeerId, u32)>>>,
    Arc<Mutex<Vec<(PeerId, String)>>>,
);

impl SimulatedPeers for Takers {
    fn penalize(&mut self, peer: PeerId, reason: String) {
        self.1.lock().unwrap().push((peer, reason));
    }

    fn results(&mut self, peer: PeerId, batch: ResultBatch) -> Result<ResultAck, RequestError> {
        let mut got = self.0.lock().unwrap();
        got.extend(batch.results.iter().map(|r| (peer, r.chunk)));
        Ok(ResultAck {
            stored: batch
                .results
                .iter()
                .map(|r| (r.job_id, r.chunk, r.attempt))
                .collect(),
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_submitter_does_not_hold_up_delivery_to_the_others() {
    let key = local_key();
    let own = key.public().to_peer_id();
    let others: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
    let mut rows: Vec<OutboxRow> = (0..3).map(|c| outbox_row(own, c, vec![1])).collect();
    for (i, peer) in others.iter().enumerate() {
        rows.extend((0..3).map(|c| outbox_row(*peer, 100 * (i as u32 + 1) + c, vec![2])));
    }
    let takers = Takers::default();
    let mut f = Fixture::build(
        lend(1),
        Arc::new(TestClock::default()),
        &key,
        rows,
        WorkerLimits::default(),
        takers.clone(),
    );
    // This node's own scheduler stalls on the first batch it is sent.
    f.stall.store(true, Ordering::Relaxed);
    until("the other submitters to take their results", || {
        takers.0.lock().unwrap().len() == 9
    })
    .await;
    until("their results to leave the outbox", || {
        f.worker.status().outbox == 3
    })
    .await;
    assert!(
        f.batches.try_recv().is_err(),
        "the slow submitter took nothing yet"
    );
    f.stall.store(false, Ordering::Relaxed);
    assert_eq!(f.delivered(3).await.len(), 3);
    until("the outbox to empty", || f.worker.status().outbox == 0).await;
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_submitter_over_its_outbox_quota_is_refused_alone_and_old_results_expire() {
    let key = local_key();
    let hoarder = PeerId::random();
    // Five results the hoarder never takes (it cannot be reached).
    let rows: Vec<OutboxRow> = (0..5)
        .map(|c| outbox_row(hoarder, c, vec![7; 100]))
        .collect();
    let limits = WorkerLimits {
        outbox_results_per_submitter: 5,
        ..WorkerLimits::default()
    };
    let f = Fixture::with_limits(
        lend(2),
        Arc::new(TestClock::default()),
        &key,
        rows.clone(),
        limits,
    );
    until("the outbox to be counted", || f.worker.status().outbox == 5).await;
    let TaskReply::Offer { accepted, rejected } =
        f.worker.offer(hoarder, JOB, vec![f.assignment(10)])
    else {
        panic!("an offer gets an offer reply");
    };
    assert!(accepted.is_empty());
    assert!(
        matches!(&rejected[..], [(10, 0, RejectReason::OutboxFull { rows: 5, bytes })] if *bytes > 500),
        "{rejected:?}"
    );
    // Anyone else is still served.
    let TaskReply::Offer { accepted, .. } = f.offer(0..1) else {
        panic!("an offer gets an offer reply");
    };
    assert_eq!(accepted, [(0, 0)]);
    f.stop().await;

    // Results older than the expiry are dropped.
    let limits = WorkerLimits {
        outbox_expiry: Duration::from_millis(1),
        ..WorkerLimits::default()
    };
    let f = Fixture::with_limits(lend(2), Arc::new(TestClock::default()), &key, rows, limits);
    // Real time (the rows' age is wall-clock); the worker's tasks have not run yet.
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(f.db.outbox_len().unwrap(), 5);
    until("the old results to expire", || {
        f.db.outbox_len().unwrap() == 0
    })
    .await;
    until("the outbox to be counted again", || {
        f.worker.status().outbox == 0
    })
    .await;
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn one_submitter_holds_at_most_half_the_slots_while_another_waits() {
    // 2 slots: the worker takes 8 assignments at once.
    let f = Fixture::new(
        lend(2),
        Arc::new(TestClock::default()),
        &local_key(),
        Vec::new(),
    );
    f.probe.hold.store(true, Ordering::Relaxed);
    let (a, b) = (PeerId::random(), PeerId::random());
    let offer = |peer: PeerId, chunks: std::ops::Range<u32>| {
        let TaskReply::Offer { accepted, rejected } =
            f.worker
                .offer(peer, JOB, chunks.map(|c| f.assignment(c)).collect())
        else {
            panic!("an offer gets an offer reply");
        };
        assert!(
            rejected.iter().all(|r| r.2 == RejectReason::NoFreeSlots),
            "{rejected:?}"
        );
        accepted.len()
    };
    assert_eq!(offer(a, 0..10), 8, "alone, a submitter may take everything");
    assert_eq!(offer(b, 0..4), 0, "full: the other waits");
    // `a` gives back five; while `b` waits, `a` holds at most half (4).
    f.worker.cancel(a, JOB, &[0, 1, 2, 3, 4]);
    until("a's cancelled chunks to stop", || {
        f.worker.status().active == 3
    })
    .await;
    assert_eq!(offer(a, 20..23), 1, "a is capped at its share");
    let refused = |reason: &str| {
        f.worker
            .inner
            .metrics
            .refused
            .with_label_values(&[reason])
            .get()
    };
    assert_eq!(refused("fair_share"), 2);
    assert_eq!(
        refused("no_free_slots"),
        2 + 4,
        "a's 2 over capacity, then b's 4"
    );
    assert_eq!(offer(b, 0..10), 4, "b gets its share");
    assert_eq!(f.worker.status().active, 8);
    // Once nobody else waits (30 s without a refusal), `a` may take it all again.
    f.worker.cancel(b, JOB, &[]);
    until("b's chunks to stop", || f.worker.status().active == 4).await;
    tokio::time::sleep(super::admission::WAITING).await;
    assert_eq!(offer(a, 30..40), 4);
    f.probe.hold.store(false, Ordering::Relaxed);
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_module_no_honest_peer_sends_is_an_offence_and_a_merely_invalid_one_is_not() {
    let takers = Takers::default();
    let f = Fixture::build(
        lend(2),
        Arc::new(TestClock::default()),
        &local_key(),
        Vec::new(),
        WorkerLimits::default(),
        takers.clone(),
    );
    let blobs = BlobStore::open(f._dir.path().join("blobs")).unwrap();
    let huge = format!("(module {})", "(func)".repeat(100_001));
    let bomb = blobs.put(&wat::parse_str(&huge).unwrap()).unwrap();
    let no_abi = blobs.put(&wat::parse_str("(module)").unwrap()).unwrap();
    let stranger = PeerId::random();
    let offer = |chunk: u32, module: BlobHash| {
        let a = Assignment {
            module,
            ..f.assignment(chunk)
        };
        f.worker.offer(stranger, JOB, vec![a])
    };
    let penalties = || takers.1.lock().unwrap().len();
    let results = || takers.0.lock().unwrap().len();
    assert!(matches!(offer(0, bomb), TaskReply::Offer { accepted, .. } if accepted.len() == 1));
    until("the bomb's Invalid result to be delivered", || {
        results() == 1
    })
    .await;
    assert_eq!(penalties(), 1);
    assert!(takers.1.lock().unwrap()[0].1.contains("functions: 100001"));
    // Offered again: refused at once, and counted again.
    assert!(matches!(offer(1, bomb), TaskReply::Offer { rejected, .. } if rejected.len() == 1));
    until("the second offence", || penalties() == 2).await;
    // A module that fails the ABI is refused too, but is no offence.
    assert!(matches!(offer(2, no_abi), TaskReply::Offer { accepted, .. } if accepted.len() == 1));
    until("the invalid module's result", || results() == 2).await;
    assert!(matches!(offer(3, no_abi), TaskReply::Offer { rejected, .. } if rejected.len() == 1));
    assert_eq!(penalties(), 2);
    assert!(takers.1.lock().unwrap().iter().all(|(p, _)| *p == stranger));
    f.stop().await;
}

/// Answers every result batch and takes none of it; records when each came.
#[derive(Clone, Default)]
struct Hoarder(Arc<Mutex<Vec<tokio::time::Instant>>>);

impl SimulatedPeers for Hoarder {
    fn results(&mut self, _peer: PeerId, _batch: ResultBatch) -> Result<ResultAck, RequestError> {
        self.0.lock().unwrap().push(tokio::time::Instant::now());
        Ok(ResultAck { stored: Vec::new() })
    }
}

#[tokio::test(start_paused = true)]
async fn a_submitter_that_takes_none_of_its_results_is_backed_off_not_sent_them_again_and_again() {
    let hoarder = PeerId::random();
    let rows: Vec<OutboxRow> = (0..3)
        .map(|c| outbox_row(hoarder, c, vec![7; 100]))
        .collect();
    let sends = Hoarder::default();
    let f = Fixture::build(
        lend(1),
        Arc::new(TestClock::default()),
        &local_key(),
        rows,
        WorkerLimits::default(),
        sends.clone(),
    );
    until("five deliveries to the hoarder", || {
        sends.0.lock().unwrap().len() >= 5
    })
    .await;
    let at = sends.0.lock().unwrap().clone();
    // 2 s after the first, then 4, 8, 16: not every second (or faster), as when
    // an answer that took nothing counted as a delivery done.
    for (i, pair) in at.windows(2).take(4).enumerate() {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_secs(2 << i),
            "delivery {} came {gap:?} after the one before",
            i + 2
        );
    }
    assert_eq!(f.worker.status().outbox, 3, "nothing was taken");
    f.stop().await;
}
