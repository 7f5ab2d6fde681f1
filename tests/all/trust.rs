//! Trust under attack, with real nodes on loopback: peers on probation need a
//! witness, a trusted peer that turns liar is caught by a spot check, a
//! disagreement resets trust and re-verifies what rested on that peer's word,
//! placement keeps replicas of a chunk out of one subnet, and results signed with
//! another key than the sender's are refused.

use std::collections::HashMap;
use std::time::Duration;

use peergrid_node::Seams;
use peergrid_node::scheduler::{JobSpec, JobState, JobStatus, Replication, Standing, TrustPolicy};
use peergrid_node::settings::NodeConfig;
use peergrid_node::types::ReplicaStatus;
use peergrid_tests::{TestNet, local_result};

/// 240 chunks: enough for a liar that is honest for 30 of them to be trusted first.
const LONG_PARAMS: &str = r#"{"width": 48, "height": 240, "max_iter": 60, "rows_per_chunk": 1}"#;

fn spec(replication: Replication) -> JobSpec {
    JobSpec {
        soft_timeout: Duration::from_secs(30),
        replication,
        ..JobSpec::default()
    }
}

/// Node 0 submits and lends nothing, with this trust policy.
fn submitter(policy: TrustPolicy) -> impl Fn(usize, &mut NodeConfig) {
    move |i, config| {
        if i == 0 {
            config.cpus = 0;
            config.trust = policy;
        }
    }
}

/// A submitter with `policy`, two honest workers and node 3, which answers its first
/// `honest` chunks honestly and then lies; an adaptive job of `params` submitted.
async fn submit_with_a_patient_liar(
    policy: TrustPolicy,
    honest: u64,
    params: &str,
) -> (TestNet, String, peergrid_node::net::protocol::JobId) {
    let net = TestNet::spawn_full(4, submitter(policy), |i| {
        if i == 3 {
            Seams::patient_liar(honest, 3)
        } else {
            Seams::default()
        }
    })
    .await;
    net.wait_for_adverts(0, 3).await;
    let liar = net.node(3).peer_id().to_string();
    let id = net
        .submit(0, "mandelbrot", params, spec(Replication::Adaptive))
        .await
        .expect("submitted");
    (net, liar, id)
}

/// Waits until node 0's status of the job satisfies `done`; fails with the status
/// if the job ends first (or after four minutes on a slow machine).
async fn until(
    net: &TestNet,
    id: peergrid_node::net::protocol::JobId,
    what: &str,
    done: impl Fn(&JobStatus) -> bool,
) -> JobStatus {
    let started = std::time::Instant::now();
    loop {
        let status = net.status(0, id).await;
        if done(&status) {
            return status;
        }
        assert!(
            !status.state.is_final() && started.elapsed() < Duration::from_secs(240),
            "gave up waiting for {what}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_on_probation_never_verify_each_other_the_submitter_witnesses() {
    let net = TestNet::spawn_with(3, submitter(TrustPolicy::default())).await;
    net.wait_for_adverts(0, 2).await;
    let params = r#"{"width": 32, "height": 16, "max_iter": 50, "rows_per_chunk": 1}"#;
    let id = net
        .submit(0, "mandelbrot", params, spec(Replication::Adaptive))
        .await
        .expect("submitted");
    let status = net.wait_job(0, id, Duration::from_secs(240)).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    assert_eq!(net.result(0, &status), local_result("mandelbrot", params));
    // Two fresh workers agreeing is not enough: node 0 ran witnesses itself.
    assert!(status.trust.witness_runs > 0, "{:?}", status.trust);
    assert_eq!(
        status.trust.unreplicated, 0,
        "nobody was trusted yet at first"
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_peer_that_turns_liar_is_caught_by_a_spot_check() {
    let policy = TrustPolicy {
        trust_after: 1,
        min_replication: 0.001,
        spot_check_rate: 1.0,
        plant_rate: 0.0,
        ..TrustPolicy::default()
    };
    // Honest for 30 chunks: by then its streak makes nearly all its chunks solo
    // (q = (1/streak)²), so its first lie is one a spot check sees.
    let (net, liar, id) = submit_with_a_patient_liar(policy, 30, LONG_PARAMS).await;
    let caught = until(&net, id, "the liar to be caught", |s| s.trust.caught > 0).await;
    let tally = caught.peers.iter().find(|p| p.peer == liar).expect("liar");
    assert!(tally.excluded, "{tally:?}");
    assert_eq!(tally.standing, Some(Standing::Excluded));
    // Everything it answered alone is verified again; the result is right.
    let status = net.wait_job(0, id, Duration::from_secs(240)).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    assert!(
        status.trust.spot_checks > 0 && status.trust.reverified > 0,
        "{:?}",
        status.trust
    );
    assert_eq!(
        net.result(0, &status),
        local_result("mandelbrot", LONG_PARAMS)
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disagreement_resets_trust_and_re_verifies_what_rested_on_that_word() {
    let policy = TrustPolicy {
        trust_after: 1,
        min_replication: 0.3,
        spot_check_rate: 0.0,
        plant_rate: 0.0,
        ..TrustPolicy::default()
    };
    // Honest for 30 chunks: long enough to be trusted and given chunks alone (at
    // first every worker's queue fills before anyone has earned trust).
    let (net, liar, id) = submit_with_a_patient_liar(policy, 30, LONG_PARAMS).await;
    until(&net, id, "the liar to lose trust", |s| {
        s.trust.reverified > 0
            && s.peers
                .iter()
                .any(|p| p.peer == liar && p.standing != Some(Standing::Trusted))
    })
    .await;
    let status = net.wait_job(0, id, Duration::from_secs(240)).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    assert!(status.trust.unreplicated > 0, "{:?}", status.trust);
    assert_eq!(
        net.result(0, &status),
        local_result("mandelbrot", LONG_PARAMS),
        "no lie stands"
    );
    let row = net
        .node(0)
        .state()
        .db()
        .reputations()
        .expect("reputations")
        .into_iter()
        .find(|r| r.peer == liar)
        .expect("the liar has a row");
    // (A late honest answer from before it turned may have started a new streak.)
    assert!(row.disagreed > 0, "{row:?}");
    assert_ne!(policy.standing(&row), Standing::Trusted, "{row:?}");
    // The evidence names the liar's signed wrong answers.
    let evidence = net
        .node(0)
        .state()
        .scheduler()
        .evidence(id)
        .await
        .expect("the job is known");
    let lies: Vec<_> = evidence
        .iter()
        .flat_map(|c| &c.replicas)
        .filter(|r| r.peer == liar && r.agrees == Some(false))
        .collect();
    assert!(!lies.is_empty(), "{evidence:?}");
    assert!(lies.iter().all(|r| r.signature_valid), "{lies:?}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_never_gives_two_replicas_of_a_chunk_to_one_subnet() {
    // Workers 1 and 2 share 127.0.201.0/24; worker 3 is alone in 127.0.202.0/24.
    let net = TestNet::spawn_with(4, |i, config| {
        let listen = match i {
            0 => {
                config.cpus = 0;
                return;
            }
            1 => "/ip4/127.0.201.1/tcp/0",
            2 => "/ip4/127.0.201.2/tcp/0",
            _ => "/ip4/127.0.202.1/tcp/0",
        };
        config.net.listen = vec![listen.parse().expect("multiaddr")];
    })
    .await;
    net.wait_for_adverts(0, 3).await;
    let peers = net.node(0).state().net().peers().await;
    let ip_of = |i: usize| {
        let id = net.node(i).peer_id().to_string();
        peers
            .iter()
            .find(|p| p.peer_id == id)
            .and_then(|p| p.ip.clone())
    };
    assert_eq!(ip_of(1).as_deref(), Some("127.0.201.1"));
    assert_eq!(ip_of(3).as_deref(), Some("127.0.202.1"));
    let params = r#"{"width": 32, "height": 30, "max_iter": 50, "rows_per_chunk": 1}"#;
    let id = net
        .submit(0, "mandelbrot", params, spec(Replication::Fixed))
        .await
        .expect("submitted");
    let status = net.wait_job(0, id, Duration::from_secs(240)).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let (a, b) = (
        net.node(1).peer_id().to_string(),
        net.node(2).peer_id().to_string(),
    );
    let mut by_chunk: HashMap<u32, Vec<String>> = HashMap::new();
    for r in net.node(0).state().db().replicas(id).expect("replicas") {
        by_chunk.entry(r.chunk).or_default().push(r.peer);
    }
    assert_eq!(by_chunk.len(), 30);
    for (chunk, peers) in &by_chunk {
        assert!(
            !(peers.contains(&a) && peers.contains(&b)),
            "chunk {chunk} went twice to 127.0.201.0/24: {peers:?}"
        );
    }
    assert_eq!(net.result(0, &status), local_result("mandelbrot", params));
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_signed_with_another_key_than_the_senders_are_refused() {
    let net = TestNet::spawn_full(
        4,
        |i, config| {
            if i == 0 {
                config.cpus = 0;
            }
        },
        |i| {
            if i == 3 {
                Seams::forger()
            } else {
                Seams::default()
            }
        },
    )
    .await;
    net.wait_for_adverts(0, 3).await;
    let forger = net.node(3).peer_id().to_string();
    let params = r#"{"width": 32, "height": 24, "max_iter": 50, "rows_per_chunk": 1}"#;
    let id = net
        .submit(0, "mandelbrot", params, spec(Replication::Fixed))
        .await
        .expect("submitted");
    let status = net.wait_job(0, id, Duration::from_secs(240)).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    assert_eq!(net.result(0, &status), local_result("mandelbrot", params));
    assert!(status.trust.bad_signatures > 0, "{:?}", status.trust);
    if let Some(tally) = status.peers.iter().find(|p| p.peer == forger) {
        assert_eq!(tally.agreed, 0, "a forged result counted: {tally:?}");
    }
    // A bad signature is an offence against the sender, not only an error.
    let client = net.node(0).state().net().clone();
    peergrid_tests::wait_for("the forger's offences", Duration::from_secs(60), || {
        let (client, forger) = (client.clone(), forger.clone());
        async move {
            let peers = client.peers().await;
            peers
                .iter()
                .any(|p| p.peer_id == forger && p.offences > 0)
                .then_some(())
        }
    })
    .await;
    net.shutdown().await;
}

/// A fixed job with one replica per chunk (one worker is enough).
fn single(soft_timeout: Duration) -> JobSpec {
    JobSpec {
        redundancy: 1,
        quorum: 1,
        max_replicas: 1,
        soft_timeout,
        replication: Replication::Fixed,
        ..JobSpec::default()
    }
}

/// Waits until `check` holds (polling a node's state; fails after four minutes).
async fn until_true(what: &str, check: impl Fn() -> bool) {
    peergrid_tests::wait_for(what, Duration::from_secs(240), || {
        let ok = check();
        async move { ok.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_cancel_from_another_peer_changes_nothing() {
    use peergrid_node::net::protocol::{TaskReply, TaskRequest};
    // Node 0 submits, node 1 works, node 2 lends nothing and forges a cancel.
    let net = TestNet::spawn_with(3, |i, config| {
        if i != 1 {
            config.cpus = 0;
        }
    })
    .await;
    net.wait_for_adverts(0, 2).await;
    let params = r#"{"width": 64, "height": 24, "max_iter": 4000, "rows_per_chunk": 1}"#;
    let id = net
        .submit(0, "mandelbrot", params, single(Duration::from_secs(120)))
        .await
        .expect("submitted");
    let worker = net.node(1).state().worker().clone();
    until_true("node 1 to hold chunks", || worker.status().active > 0).await;
    // Its chunks wait at the gate while it is paused: nothing ends by itself.
    worker.pause(None).await.expect("pauses");
    let held = worker.status().active;
    let reply = net
        .node(2)
        .state()
        .net()
        .send_task(
            net.node(1).peer_id(),
            TaskRequest::Cancel {
                job_id: id,
                chunks: Vec::new(),
            },
        )
        .await
        .expect("the worker answers");
    assert_eq!(reply, TaskReply::Cancelled, "a prober learns nothing");
    assert_eq!(
        worker.status().active,
        held,
        "a forged cancel stopped chunks"
    );
    worker.resume().await.expect("resumes");
    let status = net.wait_job(0, id, Duration::from_secs(240)).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    assert_eq!(net.result(0, &status), local_result("mandelbrot", params));
    let node1 = net.node(1).peer_id().to_string();
    let rows = net.node(0).state().db().replicas(id).expect("replicas");
    assert!(
        rows.iter()
            .filter(|r| r.peer == node1)
            .all(|r| r.state == ReplicaStatus::Returned),
        "node 1 lost chunks: {:?}",
        rows.iter().map(|r| &r.state).collect::<Vec<_>>()
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_lie_for_a_withdrawn_replica_is_not_counted() {
    use peergrid_node::net::protocol::{
        BlobHash, ChunkResult, Payload, ResultBatch, ResultContext, WireOutcome,
    };
    // Node 0 submits; nodes 1 and 2 are honest; node 3 withdraws what it holds as
    // soon as it is paused, then sends a lie for a withdrawn attempt.
    let net = TestNet::spawn_with(4, |i, config| {
        if i == 0 {
            config.cpus = 0;
        }
        if i == 3 {
            config.volunteer.withdraw_after = Duration::from_millis(1);
            config.volunteer.sample_interval = Duration::from_millis(50);
        }
    })
    .await;
    net.wait_for_adverts(0, 3).await;
    let params = r#"{"width": 64, "height": 24, "max_iter": 4000, "rows_per_chunk": 1}"#;
    let id = net
        .submit(0, "mandelbrot", params, spec(Replication::Fixed))
        .await
        .expect("submitted");
    let withdrawer = net.node(3).state().worker().clone();
    until_true("node 3 to hold chunks", || withdrawer.status().active > 0).await;
    withdrawer.pause(None).await.expect("pauses");
    let node3 = net.node(3).peer_id();
    let db = net.node(0).state().db().clone();
    let withdrawn = peergrid_tests::wait_for(
        "a withdrawn replica on the submitter",
        Duration::from_secs(240),
        || {
            let rows = db.replicas(id).expect("replicas");
            let found = rows
                .into_iter()
                .find(|r| r.peer == node3.to_string() && r.state == ReplicaStatus::Withdrawn);
            async move { found }
        },
    )
    .await;
    // The lie, signed properly for this submitter, module and input.
    let job = db.job(id).expect("job").expect("the job is stored");
    let chunk = db
        .chunks(id)
        .expect("chunks")
        .into_iter()
        .find(|c| c.idx == withdrawn.chunk)
        .expect("the chunk");
    let output = b"a late lie".to_vec();
    let mut lie = ChunkResult {
        job_id: id,
        chunk: withdrawn.chunk,
        attempt: withdrawn.attempt,
        outcome: WireOutcome::Ok,
        output_hash: BlobHash::of(&output),
        output: Some(Payload::Inline(output)),
        fuel_used: 1,
        exec_micros: 1,
        signature: Vec::new(),
    };
    let ctx = ResultContext {
        submitter: net.node(0).peer_id(),
        module: job.module,
        input: chunk.input,
    };
    lie.signature = net.node(3).state().net().sign(&lie.signed_bytes(&ctx));
    let ack = net
        .node(3)
        .state()
        .net()
        .send_results(net.node(0).peer_id(), ResultBatch { results: vec![lie] })
        .await
        .expect("the submitter answers");
    assert_eq!(
        ack.stored,
        [(id, withdrawn.chunk, withdrawn.attempt)],
        "acknowledged (so it is not resent), and ignored"
    );
    let status = net.wait_job(0, id, Duration::from_secs(240)).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    assert_eq!(net.result(0, &status), local_result("mandelbrot", params));
    let row = db
        .replicas(id)
        .expect("replicas")
        .into_iter()
        .find(|r| r.chunk == withdrawn.chunk && r.attempt == withdrawn.attempt)
        .expect("the replica");
    assert_eq!(
        row.state,
        ReplicaStatus::Withdrawn,
        "the late lie was counted: {row:?}"
    );
    let rep = db
        .reputations()
        .expect("reputations")
        .into_iter()
        .find(|r| r.peer == node3.to_string())
        .expect("node 3 has a row");
    assert!(rep.withdrawn > 0, "{rep:?}");
    assert_eq!(rep.disagreed, 0, "{rep:?}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_advertising_65536_slots_gets_no_more_than_its_measured_share() {
    // Node 0 submits; nodes 1 and 2 lend 2 slots honestly; node 3 has the same
    // 2 slots but advertises 65 536 and takes every offer.
    let net = TestNet::spawn_full(4, submitter(TrustPolicy::default()), |i| {
        if i == 3 {
            Seams::inflater()
        } else {
            Seams::default()
        }
    })
    .await;
    net.wait_for_adverts(0, 3).await;
    let params = r#"{"width": 48, "height": 160, "max_iter": 200, "rows_per_chunk": 1}"#;
    let id = net
        .submit(0, "mandelbrot", params, spec(Replication::Adaptive))
        .await
        .expect("submitted");
    let status = net.wait_job(0, id, Duration::from_secs(240)).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    assert_eq!(net.result(0, &status), local_result("mandelbrot", params));
    let mut runs: HashMap<String, usize> = HashMap::new();
    for r in net.node(0).state().db().replicas(id).expect("replicas") {
        if r.state == ReplicaStatus::Returned {
            *runs.entry(r.peer).or_default() += 1;
        }
    }
    let count = |i: usize| {
        runs.get(&net.node(i).peer_id().to_string())
            .copied()
            .unwrap_or(0)
    };
    // Its room grows only with what it delivered (the same 2 slots as the others, so
    // a queue it keeps full): never the lion's share its advert asks for.
    let honest = count(1).max(count(2)) as f64;
    let inflater = count(3) as f64;
    assert!(
        inflater <= 2.0 * honest,
        "the inflating peer ran {inflater} replicas, the honest ones {} and {}",
        count(1),
        count(2)
    );
    net.shutdown().await;
}
