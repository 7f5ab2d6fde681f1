//! Jobs across the grid with real nodes on loopback: redundant execution, quorum
//! verification, liars, workers and submitters that die, cancels, waiting for peers,
//! and submissions refused before anything is sent.

use std::time::Duration;

use peergrid_node::Seams;
use peergrid_node::scheduler::{JobSpec, JobState, Replication};
use peergrid_tests::{TestNet, local_result, wait_for};

const MANDELBROT_200: &str =
    r#"{"width": 64, "height": 200, "max_iter": 200, "rows_per_chunk": 1}"#;

/// Fixed replication: these tests are about quorum, outvoting and exclusion (the
/// adaptive rules have tests of their own in `trust.rs`).
fn spec() -> JobSpec {
    JobSpec {
        soft_timeout: Duration::from_secs(30),
        replication: Replication::Fixed,
        ..JobSpec::default()
    }
}

/// For the tests where a worker dies: its replicas are replaced because its
/// connection closes, not by the soft timeout. A replica that times out keeps its
/// peer and network counted for that chunk (so a late answer cannot rejoin the
/// quorum), and on a machine loaded by other builds a 30 s timeout can expire on a
/// surviving worker's queued chunks; with one worker gone, a chunk could then have no
/// eligible peer left and wait (saying why) instead of finishing.
fn spec_for_a_dying_worker() -> JobSpec {
    JobSpec {
        soft_timeout: Duration::from_secs(600),
        ..spec()
    }
}

/// Node 0 lends nothing, so every replica goes to the workers (liars included)
/// and they get enough chunks for their lies to show.
fn submit_only(i: usize, config: &mut peergrid_node::settings::NodeConfig) {
    if i == 0 {
        config.cpus = 0;
    }
}

fn liars(from: usize, probability: f64) -> impl Fn(usize) -> Seams {
    move |i| {
        if i >= from {
            Seams::liar(probability, i as u64)
        } else {
            Seams::default()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_chunk_job_over_5_peers_gives_exactly_the_local_result() {
    let net = TestNet::spawn(6).await;
    net.wait_for_adverts(0, 5).await;
    let id = net
        .submit(0, "mandelbrot", MANDELBROT_200, spec())
        .await
        .expect("submitted");
    let status = net.wait_job(0, id, Duration::from_secs(180)).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    assert_eq!(status.chunks_verified, 200);
    assert!(
        status.replicas_issued >= 400,
        "every chunk ran at least twice"
    );
    assert!(status.peers.len() >= 2);
    assert!(status.why.is_none(), "a finished job waits for nothing");
    assert!(net.result(0, &status) == local_result("mandelbrot", MANDELBROT_200));
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_always_lies_is_outvoted_excluded_and_no_longer_chosen() {
    let net = TestNet::spawn_full(6, submit_only, liars(5, 1.0)).await;
    net.wait_for_adverts(0, 5).await;
    let liar = net.node(5).peer_id().to_string();
    let params = r#"{"width": 64, "height": 100, "max_iter": 100, "rows_per_chunk": 1}"#;
    let id = net
        .submit(0, "mandelbrot", params, spec())
        .await
        .expect("submitted");
    let status = net.wait_job(0, id, Duration::from_secs(180)).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    assert!(
        net.result(0, &status) == local_result("mandelbrot", params),
        "zero wrong outputs accepted"
    );
    let tally = status
        .peers
        .iter()
        .find(|p| p.peer == liar)
        .expect("the liar got work");
    assert_eq!(tally.agreed, 0);
    assert!(tally.disagreed >= 2 && tally.excluded, "{tally:?}");

    // A second job: the liar is not chosen at all.
    let id = net
        .submit(0, "mandelbrot", params, spec())
        .await
        .expect("submitted");
    let status = net.wait_job(0, id, Duration::from_secs(180)).await;
    assert_eq!(status.state, JobState::Done);
    assert!(
        status.peers.iter().all(|p| p.peer != liar),
        "the excluded liar got replicas"
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_lie_sometimes_are_caught_too() {
    let net = TestNet::spawn_full(7, submit_only, liars(5, 0.3)).await;
    net.wait_for_adverts(0, 6).await;
    let params = r#"{"width": 64, "height": 150, "max_iter": 100, "rows_per_chunk": 1}"#;
    let id = net
        .submit(0, "mandelbrot", params, spec())
        .await
        .expect("submitted");
    let status = net.wait_job(0, id, Duration::from_secs(180)).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    assert!(
        net.result(0, &status) == local_result("mandelbrot", params),
        "zero wrong outputs accepted"
    );
    for i in [5, 6] {
        let peer = net.node(i).peer_id().to_string();
        let tally = status
            .peers
            .iter()
            .find(|p| p.peer == peer)
            .expect("liar got work");
        assert!(tally.disagreed > 0 && tally.excluded, "liar {i}: {tally:?}");
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_mid_job_loses_nothing() {
    let mut net = TestNet::spawn(4).await;
    net.wait_for_adverts(0, 3).await;
    let params = r#"{"limit": 4000000000, "chunks": 120}"#;
    let id = net
        .submit(0, "primes", params, spec_for_a_dying_worker())
        .await
        .expect("submitted");
    net.wait_verified(0, id, 10).await;
    let victim = net.nodes.remove(1);
    assert!(
        victim.node.state().worker().status().active > 0
            || net.status(0, id).await.state.is_final()
    );
    victim.node.shutdown().await;
    let status = net.wait_job(0, id, Duration::from_secs(180)).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let result: serde_json::Value = serde_json::from_slice(&net.result(0, &status)).expect("JSON");
    assert_eq!(result["primes_below_limit"], 189_961_812);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_chunk_always_traps_ends_as_a_verified_failure() {
    let net = TestNet::spawn(4).await;
    net.wait_for_adverts(0, 3).await;
    let id = net
        .submit(
            0,
            "faults",
            r#"{"chunks": 6, "mode": "panic", "only": 3}"#,
            spec(),
        )
        .await
        .expect("submitted");
    let status = net.wait_job(0, id, Duration::from_secs(60)).await;
    assert_eq!(status.state, JobState::Failed, "{status:?}");
    let error = status.error.clone().unwrap_or_default();
    assert!(
        error.contains("chunk 3: verified failure")
            && error.contains("chunk 3 panicked on purpose"),
        "{error}"
    );
    assert_eq!(status.failures.len(), 1);
    assert_eq!(
        status.failures[0].evidence.len(),
        2,
        "two replicas agreed; no retry loop"
    );
    assert_eq!(status.chunks_verified, 6);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_workers_and_stays_cancelled_across_a_restart() {
    // The submitter lends nothing here, so the chunks run on the two workers.
    // The workers lend all the fuel a chunk may ask for (it loops until cancelled).
    let mut net = TestNet::spawn_with(3, |i, c| {
        c.max_fuel = Some(u64::MAX);
        if i == 0 {
            c.cpus = 0
        }
    })
    .await;
    net.wait_for_adverts(0, 2).await;
    let spec = JobSpec {
        limits: peergrid_node::sandbox::Limits {
            fuel: u64::MAX / 2,
            ..JobSpec::default().limits
        },
        ..spec()
    };
    let id = net
        .submit(0, "faults", r#"{"chunks": 2, "mode": "loop"}"#, spec)
        .await
        .expect("submitted");
    // Each chunk's first replica runs (the second would go out only once it answered,
    // which a looping chunk never does); both may be on one worker.
    wait_for(
        "the workers to run the chunks",
        Duration::from_secs(30),
        || async {
            let running: u32 = (1..3)
                .map(|i| net.node(i).state().worker().status().active)
                .sum();
            (running >= 2).then_some(())
        },
    )
    .await;
    net.node(0)
        .state()
        .scheduler()
        .cancel(id)
        .await
        .expect("cancelled");
    wait_for("the workers to stop", Duration::from_secs(10), || async {
        let idle = (1..3).all(|i| net.node(i).state().worker().status().active == 0);
        idle.then_some(())
    })
    .await;
    net.restart(0).await.expect("restarts");
    assert_eq!(net.status(0, id).await.state, JobState::Cancelled);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_peers_the_job_waits_says_why_and_proceeds_when_peers_join() {
    // The submitter lends nothing: one worker is one peer too few for redundancy 2.
    let mut net = TestNet::spawn_with(2, |i, c| {
        if i == 0 {
            c.cpus = 0
        }
    })
    .await;
    net.wait_for_adverts(0, 1).await;
    let params = r#"{"limit": 100000, "chunks": 4}"#;
    let id = net
        .submit(0, "primes", params, spec())
        .await
        .expect("submitted");
    let why = wait_for(
        "the job to say why it waits",
        Duration::from_secs(20),
        || async { net.status(0, id).await.why },
    )
    .await;
    assert!(
        why.contains("waiting for peers") && why.contains("1 peers advertise"),
        "{why}"
    );
    net.add_node().await;
    let status = net.wait_job(0, id, Duration::from_secs(60)).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    assert!(status.why.is_none());
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitter_that_lends_slots_verifies_with_its_own_worker() {
    // Three nodes; one worker dies mid-job: the submitter and the survivor are the
    // two distinct peers every chunk still gets.
    let mut net = TestNet::spawn(3).await;
    net.wait_for_adverts(0, 2).await;
    let params = r#"{"limit": 3000000000, "chunks": 60}"#;
    let id = net
        .submit(0, "primes", params, spec_for_a_dying_worker())
        .await
        .expect("submitted");
    net.wait_verified(0, id, 5).await;
    net.nodes.remove(2).node.shutdown().await;
    let status = net.wait_job(0, id, Duration::from_secs(180)).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let me = net.node(0).peer_id().to_string();
    assert!(status.peers.iter().any(|p| p.peer == me && p.agreed > 0));
    let result: serde_json::Value = serde_json::from_slice(&net.result(0, &status)).expect("JSON");
    assert_eq!(result["primes_below_limit"], 144_449_537);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_are_refused_before_anything_is_sent() {
    let net = TestNet::spawn(2).await;
    net.wait_for_adverts(0, 1).await;
    let not_abi = br#"(module (import "env" "now" (func)) (memory (export "memory") 1))"#;
    let err = net
        .submit_module(0, "bad", not_abi, Some("{}"), None, spec())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("env.now"), "{err}");
    let err = net
        .submit(0, "primes", r#"{"limit": 1}"#, spec())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("split failed") && err.to_string().contains("limit"),
        "{err}"
    );
    let primes = peergrid_jobs::find("primes").expect("primes").wasm;
    let err = net
        .submit_module(0, "empty", primes, None, Some(Vec::new()), spec())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let bad_spec = JobSpec {
        quorum: 3,
        ..spec()
    };
    let err = net.submit(0, "primes", "{}", bad_spec).await.unwrap_err();
    assert!(err.to_string().contains("quorum"), "{err}");
    // Nothing was recorded, and the worker was offered nothing.
    assert!(
        net.node(0)
            .state()
            .scheduler()
            .status(None)
            .await
            .is_empty()
    );
    assert_eq!(net.node(1).state().worker().status().executed, 0);
    net.shutdown().await;
}
