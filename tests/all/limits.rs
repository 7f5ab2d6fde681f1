//! A worker's own bounds seen from the grid: limits over a worker's maxima are
//! refused with those maxima, and the submitter places the job elsewhere and says
//! why while it waits.

use std::time::Duration;

use peergrid_node::scheduler::{JobSpec, JobState, Replication};
use peergrid_tests::{TestNet, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_limits_over_its_maxima_and_the_job_goes_elsewhere() {
    // Node 0 submits only; node 2 lends at most 1 M fuel a chunk.
    let mut net = TestNet::spawn_with(3, |i, c| match i {
        0 => c.cpus = 0,
        2 => c.max_fuel = Some(1_000_000),
        _ => {}
    })
    .await;
    net.wait_for_adverts(0, 2).await;
    let spec = JobSpec {
        soft_timeout: Duration::from_secs(30),
        replication: Replication::Fixed,
        ..JobSpec::default()
    };
    let id = net
        .submit(0, "primes", r#"{"limit": 100000, "chunks": 4}"#, spec)
        .await
        .expect("submitted");
    // Redundancy 2 and one willing worker: the job waits, and says why.
    let why = wait_for(
        "the job to say that a worker refuses its limits",
        Duration::from_secs(30),
        || async {
            net.status(0, id)
                .await
                .why
                .filter(|w| w.contains("refuse this job's limits"))
        },
    )
    .await;
    assert!(
        why.contains("1 peers refuse") && why.contains("fuel 1000000"),
        "{why}"
    );
    net.add_node().await;
    let status = net.wait_job(0, id, Duration::from_secs(60)).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let refuser = net.node(2).peer_id().to_string();
    assert!(
        status.peers.iter().all(|p| p.peer != refuser),
        "the refusing worker ran nothing: {:?}",
        status.peers
    );
    assert_eq!(net.node(2).state().worker().status().executed, 0);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_in_wat_text_is_refused_at_submit_since_workers_take_binaries_only() {
    let net = TestNet::spawn(1).await;
    let text = br#"(module
      (import "peergrid" "log" (func (param i32 i32 i32)))
      (memory (export "memory") 1)
      (func (export "peergrid_abi_v1"))
      (func (export "peergrid_alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "peergrid_run") (param i32 i32) (result i32) (i32.const 0)))"#;
    let spec = JobSpec::default();
    let err = net
        .submit_module(0, "text", text, None, Some(vec![vec![1]]), spec)
        .await
        .expect_err("text is refused");
    assert!(err.to_string().contains("WAT text"), "{err}");
    let binary = wat::parse_bytes(text).expect("valid WAT").into_owned();
    net.submit_module(0, "binary", &binary, None, Some(vec![vec![1]]), spec)
        .await
        .expect("the same module as a binary is taken");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_disk_keeps_no_chunk_input_after_the_chunk_read_it() {
    // Node 0 submits only; nodes 1 and 2 run each chunk (redundancy 2). Each input
    // is 100 KiB (over the inline limit), so it travels as a blob the workers fetch.
    let net = TestNet::spawn_with(3, |i, c| {
        if i == 0 {
            c.cpus = 0;
        }
    })
    .await;
    net.wait_for_adverts(0, 2).await;
    // The faults job's input: (index, mode Ok) in postcard, then padding it ignores.
    let inputs: Vec<Vec<u8>> = (0..4u8)
        .map(|i| {
            let mut input = vec![i, 0];
            input.resize(100 * 1024, 7);
            input
        })
        .collect();
    let hashes: Vec<_> = inputs
        .iter()
        .map(|b| peergrid_node::net::protocol::BlobHash::of(b))
        .collect();
    let spec = JobSpec {
        soft_timeout: Duration::from_secs(60),
        replication: Replication::Fixed,
        ..JobSpec::default()
    };
    let wasm = peergrid_jobs::find("faults").expect("faults").wasm;
    let id = net
        .submit_module(0, "faults", wasm, None, Some(inputs), spec)
        .await
        .expect("submitted");
    let status = net.wait_job(0, id, Duration::from_secs(120)).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    for worker in [1, 2] {
        let state = net.node(worker).state();
        assert_eq!(
            state.worker().status().executed,
            4,
            "node {worker} ran every chunk"
        );
        for hash in &hashes {
            assert!(
                !state.blobs().contains(hash),
                "node {worker} still holds a chunk input after running it"
            );
        }
    }
    // The submitter keeps its own inputs.
    assert!(
        hashes
            .iter()
            .all(|h| net.node(0).state().blobs().contains(h))
    );
    net.shutdown().await;
}
