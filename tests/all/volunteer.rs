//! Volunteer controls across a real grid on loopback: a worker whose owner pauses it
//! for longer than `withdraw-after` hands its chunks back, the submitter runs them
//! elsewhere (no penalty), and the result equals the local run.

use std::time::Duration;

use peergrid_node::scheduler::{JobSpec, JobState};
use peergrid_tests::{TestNet, local_result, wait_for};

const PRIMES: &str = r#"{"limit": 3000000000, "chunks": 24}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_too_long_withdraws_its_chunks_and_the_job_completes_elsewhere() {
    let net = TestNet::spawn_with(4, |i, config| {
        if i == 0 {
            config.cpus = 0;
        }
        config.volunteer.withdraw_after = Duration::from_secs(1);
        config.volunteer.sample_interval = Duration::from_millis(200);
    })
    .await;
    net.wait_for_adverts(0, 3).await;
    let spec = JobSpec {
        soft_timeout: Duration::from_secs(120),
        ..JobSpec::default()
    };
    let id = net
        .submit(0, "primes", PRIMES, spec)
        .await
        .expect("submitted");
    let worker = net.node(1).state().worker();
    wait_for("node 1 to run chunks", Duration::from_secs(60), || async {
        (worker.status().active > 0).then_some(())
    })
    .await;
    worker.pause(None).await.expect("paused");
    assert_eq!(
        worker.status().slots_total,
        0,
        "a paused worker lends nothing"
    );
    wait_for(
        "node 1 to withdraw its chunks",
        Duration::from_secs(30),
        || async { (worker.status().withdrawn > 0).then_some(()) },
    )
    .await;
    let status = net.wait_job(0, id, Duration::from_secs(300)).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    assert_eq!(net.result(0, &status), local_result("primes", PRIMES));
    let withdrawn = worker.status().withdrawn;
    assert!(
        u64::from(status.reissues) >= withdrawn,
        "withdrawn chunks were reissued: {withdrawn} withdrawn, {} reissued",
        status.reissues
    );
    // Withdrawn chunks leave the worker once their results are written.
    wait_for(
        "nothing left on the paused worker",
        Duration::from_secs(30),
        || async { (worker.status().active == 0).then_some(()) },
    )
    .await;
    net.shutdown().await;
}
