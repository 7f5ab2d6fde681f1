//! Criterion benches of the node's hot paths (issue 7): `cargo bench -p peergrid-node
//! --bench hot_paths`.
//!
//! - `codec`: postcard encode + decode (the crate's own `codec::encode`/`decode`, with
//!   the protocol's size limits) of a task offer of N assignments and of a result
//!   batch of N results: what every submitter and worker does per request.
//! - `store`: the scheduler's writes for 100 results (a returned replica and a
//!   verified chunk each) to a real SQLite file in a temp dir, in one transaction
//!   (as the scheduler's actor does for a result batch) and as 100 transactions.
//! - `scheduler`: planning a 10 000-chunk job (the real `plan`: module validation
//!   and the module's `split` in the sandbox), and evaluating the replicas of
//!   10 000 chunks (the verification rule run after every result).
//! - `dispatch`: the scheduler's pure dispatch plan over 10 000 fresh chunks and 50
//!   candidate peers (a fifth trusted), as a full dispatch (every tick) does it:
//!   with the room workers really have (16 replicas each, so most chunks wait) and
//!   with room for every replica (placement and the solo draw for every chunk).
//!
//! Each bench measures for about two seconds, so the whole run takes about a minute.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use libp2p::PeerId;
use peergrid_node::net::codec;
use peergrid_node::net::protocol::*;
use peergrid_node::sandbox::{Limits, Sandbox, SandboxConfig};
use peergrid_node::scheduler::job::{Chunk, ChunkState, Replica, ReplicaState, agreement_key};
use peergrid_node::scheduler::{DispatchFixture, JobSpec, plan};
use peergrid_node::store::db::{ChunkRow, JobRow, ReplicaRow};
use peergrid_node::store::{BlobStore, Db, Write};

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

// ---------------------------------------------------------------------------------
// codec

fn offer(n: u32) -> TaskRequest {
    TaskRequest::Offer {
        job_id: JobId([7; 16]),
        assignments: (0..n)
            .map(|chunk| Assignment {
                chunk,
                attempt: 1,
                module: BlobHash::of(b"module"),
                input: Payload::Inline(chunk.to_le_bytes().repeat(16)),
                limits: Limits::CHUNK,
                soft_deadline_ms: 120_000,
            })
            .collect(),
    }
}

/// The one place this file builds a [`ChunkResult`] (so a new field is added once).
fn result(chunk: u32) -> ChunkResult {
    let output = chunk.to_le_bytes().repeat(8);
    ChunkResult {
        job_id: JobId([7; 16]),
        chunk,
        attempt: 1,
        outcome: WireOutcome::Ok,
        output_hash: BlobHash::of(&output),
        output: Some(Payload::Inline(output)),
        fuel_used: 1_234_567,
        exec_micros: 89_000,
        signature: vec![0xa5; 64],
    }
}

fn batch(n: u32) -> ResultBatch {
    ResultBatch {
        results: (0..n).map(result).collect(),
    }
}

fn codec_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for n in [1u32, 64, 1024] {
        group.throughput(Throughput::Elements(u64::from(n)));
        let offer = offer(n);
        group.bench_with_input(BenchmarkId::new("offer", n), &offer, |b, offer| {
            b.iter(|| {
                let bytes = codec::encode(offer, MAX_TASK_BYTES).expect("fits");
                let back: TaskRequest = codec::decode(&bytes, TASK_PROTOCOL).expect("decodes");
                black_box(back)
            })
        });
        let batch = batch(n);
        group.bench_with_input(BenchmarkId::new("result_batch", n), &batch, |b, batch| {
            b.iter(|| {
                let bytes = codec::encode(batch, MAX_RESULT_BYTES).expect("fits");
                let back: ResultBatch = codec::decode(&bytes, RESULT_PROTOCOL).expect("decodes");
                black_box(back)
            })
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------
// store

const RESULTS: u32 = 100;

/// A database in a temp dir holding one job of [`RESULTS`] chunks.
fn db_with_job(dir: &std::path::Path) -> (Db, JobId) {
    let db = Db::open(&dir.join("peergrid.db")).expect("opens");
    let id = JobId([3; 16]);
    let job = JobRow {
        id,
        name: "bench".into(),
        module: BlobHash::of(b"module"),
        params: b"{}".to_vec(),
        spec: Vec::new(),
        state: peergrid_node::types::JobState::Running,
        chunks_total: RESULTS,
        created_ms: 0,
        finished_ms: None,
        result: None,
        error: None,
    };
    let chunks = (0..RESULTS)
        .map(|idx| ChunkRow {
            idx,
            input: BlobHash::of(&idx.to_le_bytes()),
            input_size: 4,
            input_data: Some(idx.to_le_bytes().to_vec()),
            state: peergrid_node::types::ChunkStatus::Pending,
            outcome: None,
            output: None,
            solo: None,
        })
        .collect();
    db.apply(&[Write::InsertJob(job, chunks)])
        .expect("job stored");
    (db, id)
}

/// What the scheduler writes for one result that verifies its chunk: the returned
/// replica (with its small output inline) and the chunk's new state.
fn result_writes(job: JobId, chunk: u32, peer: &str) -> [Write; 2] {
    let output = chunk.to_le_bytes().repeat(64);
    let hash = BlobHash::of(&output);
    let outcome = postcard::to_allocvec(&WireOutcome::Ok).expect("encodes");
    [
        Write::Replica(
            job,
            ReplicaRow {
                chunk,
                attempt: 1,
                peer: peer.to_string(),
                state: peergrid_node::types::ReplicaStatus::Returned,
                issued_ms: 1,
                outcome: Some(outcome.clone()),
                output: Some(hash),
                output_data: Some(output.clone()),
                fuel: Some(1_234_567),
                signature: Some(vec![0xa5; 64]),
            },
        ),
        Write::ChunkState {
            job,
            idx: chunk,
            state: peergrid_node::types::ChunkStatus::Verified,
            outcome: Some(outcome),
            output: Some(hash),
            output_data: Some(output),
            solo: None,
        },
    ]
}

fn store_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, job) = db_with_job(dir.path());
    let peer = PeerId::random().to_string();
    let writes: Vec<[Write; 2]> = (0..RESULTS)
        .map(|chunk| result_writes(job, chunk, &peer))
        .collect();
    let all: Vec<Write> = writes.iter().flatten().cloned().collect();

    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(u64::from(RESULTS)));
    group.bench_function("100_results_one_transaction", |b| {
        b.iter(|| db.apply(black_box(&all)).expect("stored"))
    });
    group.bench_function("100_results_100_transactions", |b| {
        b.iter(|| {
            for w in &writes {
                db.apply(black_box(w)).expect("stored");
            }
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------
// scheduler

const CHUNKS: u32 = 10_000;

fn chunks_with_replicas(second: impl Fn(PeerId, &Replica) -> Replica) -> Vec<Chunk> {
    let peers: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
    (0..CHUNKS)
        .map(|i| {
            let output = BlobHash::of(&i.to_le_bytes());
            let first = Replica {
                attempt: 0,
                peer: peers[i as usize % 8],
                state: ReplicaState::Returned {
                    key: agreement_key(&WireOutcome::Ok, &output),
                    outcome: WireOutcome::Ok,
                    output,
                    fuel: 1,
                    data: None,
                    signature: Vec::new(),
                },
                check: false,
            };
            let other = second(peers[(i as usize + 1) % 8], &first);
            Chunk {
                input: std::sync::Arc::new(Payload::Inline(i.to_le_bytes().to_vec())),
                input_hash: BlobHash::of(&i.to_le_bytes()),
                state: ChunkState::Pending,
                replicas: vec![first, other],
                solo: None,
            }
        })
        .collect()
}

fn scheduler_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler");
    group.throughput(Throughput::Elements(u64::from(CHUNKS)));

    // plan: the real montecarlo module split into 10 000 chunks.
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = BlobStore::open(dir.path().join("blobs")).expect("blob store");
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: None,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let module = peergrid_jobs::find("montecarlo").expect("montecarlo").wasm;
    let hash = blobs.put(module).expect("module stored");
    let params = format!(
        r#"{{"samples": {}, "chunks": {CHUNKS}, "seed": 1}}"#,
        100 * CHUNKS
    );
    let planned = plan(&blobs, &sandbox, hash, params.as_bytes(), None).expect("plans");
    assert_eq!(planned.len(), CHUNKS as usize);
    group.bench_function("plan_10000_chunks", |b| {
        b.iter(|| plan(&blobs, &sandbox, hash, black_box(params.as_bytes()), None).expect("plans"))
    });

    // evaluate: every chunk with two agreeing replicas (verified), and with one
    // returned and one in flight (wait).
    let spec = JobSpec::default();
    let agreeing = chunks_with_replicas(|peer, first| Replica {
        attempt: 1,
        peer,
        state: first.state.clone(),
        check: false,
    });
    let waiting = chunks_with_replicas(|peer, _| Replica {
        attempt: 1,
        peer,
        state: ReplicaState::Issued(1),
        check: false,
    });
    // Every peer trusted: the adaptive rules' witness check runs on each chunk.
    let standing = |_: &PeerId| peergrid_node::scheduler::Standing::Trusted;
    for (name, chunks) in [
        ("evaluate_10000_verified", &agreeing),
        ("evaluate_10000_waiting", &waiting),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                chunks
                    .iter()
                    .map(|c| black_box(c.evaluate(&spec, &standing)))
                    .filter(|v| matches!(v, peergrid_node::scheduler::job::Verdict::Verified(_)))
                    .count()
            })
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------
// dispatch

fn dispatch_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    group.throughput(Throughput::Elements(10_000));
    for (name, room) in [
        ("10000_chunks_50_peers_16_room", 16),
        ("10000_chunks_50_peers_all_room", 1_000),
    ] {
        let fixture = DispatchFixture::new(10_000, 50, room);
        assert!(fixture.plan(1) > 0, "the plan offers replicas");
        group.bench_function(name, |b| b.iter(|| black_box(fixture.plan(black_box(1)))));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = codec_benches, store_benches, scheduler_benches, dispatch_benches
}
criterion_main!(benches);
