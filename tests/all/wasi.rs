//! The wasi-v1 examples (C, Go, AssemblyScript, Rust for wasm32-wasip1): each gives
//! its known answer in the sandbox, the same output bytes and fuel in two engines
//! built differently (see `examples.rs::other_engine`), and the same answer on a
//! grid of real nodes.

use std::time::Duration;

use peergrid_jobs::{WASI_EXAMPLES, WasiExample};
use peergrid_node::sandbox::{Abi, Limits, Outcome, Sandbox, SandboxConfig};
use peergrid_node::scheduler::{JobSpec, JobState, Replication};
use peergrid_tests::{TestNet, sandbox};

fn other_engine() -> Sandbox {
    Sandbox::new(SandboxConfig {
        fuel_slice: 9_973,
        pooling: false,
        ..SandboxConfig::default()
    })
    .expect("the engine builds")
}

/// Split, every chunk, merge: the result and the fuel of every call (split, each
/// chunk, merge).
fn run_in(sandbox: &Sandbox, example: &WasiExample, params: &str) -> (Vec<u8>, Vec<u64>) {
    let module = sandbox.load(example.wasm).expect(example.name);
    assert_eq!(module.abi, Abi::WasiV1, "{}", example.name);
    assert!(module.has_split && module.has_merge, "{}", example.name);
    let (split, inputs) = sandbox.split(&module, params.as_bytes(), &Limits::SUBMITTER);
    let inputs = inputs.unwrap_or_else(|| panic!("{}: split: {}", example.name, split.outcome));
    let mut fuel = vec![split.fuel_used];
    let outputs: Vec<Vec<u8>> = inputs
        .iter()
        .map(|input| {
            let exec = sandbox.run_chunk(&module, input, &Limits::CHUNK);
            fuel.push(exec.fuel_used);
            match exec.outcome {
                Outcome::Ok(out) => out,
                other => panic!("{}: chunk: {other} (logs {:?})", example.name, exec.logs),
            }
        })
        .collect();
    let merge = sandbox.merge(&module, &outputs, &Limits::SUBMITTER);
    fuel.push(merge.fuel_used);
    match merge.outcome {
        Outcome::Ok(result) => (result, fuel),
        other => panic!("{}: merge: {other}", example.name),
    }
}

#[test]
fn every_wasi_example_gives_its_known_answer_and_two_engines_agree() {
    let (a, b) = (sandbox(), other_engine());
    for example in &WASI_EXAMPLES {
        let (result, fuel) = run_in(&a, example, example.test_params);
        assert_eq!(
            String::from_utf8_lossy(&result),
            example.test_result,
            "{} ({})",
            example.name,
            example.lang
        );
        let (again, fuel_again) = run_in(&b, example, example.test_params);
        assert_eq!(
            result, again,
            "{}: two engines disagree on output",
            example.name
        );
        assert_eq!(
            fuel, fuel_again,
            "{}: two engines disagree on fuel",
            example.name
        );
        assert!(fuel.iter().all(|&f| f > 0), "{}: {fuel:?}", example.name);
    }
}

#[test]
fn wasi_examples_refuse_bad_input_with_a_job_error_not_a_crash() {
    let sandbox = sandbox();
    for example in &WASI_EXAMPLES {
        let module = sandbox.load(example.wasm).expect(example.name);
        let exec = sandbox.run_chunk(&module, b"not numbers", &Limits::CHUNK);
        assert!(
            matches!(exec.outcome, Outcome::Trap { .. }),
            "{}: {:?}",
            example.name,
            exec.outcome
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_wasi_example_gives_its_known_answer_on_a_grid() {
    let net = TestNet::spawn(3).await;
    net.wait_for_adverts(0, 2).await;
    for example in &WASI_EXAMPLES {
        let spec = JobSpec {
            soft_timeout: Duration::from_secs(60),
            replication: Replication::Fixed,
            ..JobSpec::default()
        };
        let id = net
            .submit_module(
                0,
                example.name,
                example.wasm,
                Some(example.test_params),
                None,
                spec,
            )
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", example.name));
        let status = net.wait_job(0, id, Duration::from_secs(180)).await;
        assert_eq!(status.state, JobState::Done, "{}: {status:?}", example.name);
        assert_eq!(
            String::from_utf8_lossy(&net.result(0, &status)),
            example.test_result,
            "{}",
            example.name
        );
    }
    net.shutdown().await;
}
