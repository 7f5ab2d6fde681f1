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
    net.shutdown().await;
}
