//! Every example job gives its known answer in the sandbox, the same bytes as its
//! native build, and the same output and fuel in two separately built engines.

use peergrid_node::sandbox::{Limits, Outcome, TrapKind};
use peergrid_tests::{run_example_in_sandbox, run_example_natively, sandbox};

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).expect("result is JSON")
}

/// Runs in the sandbox (two engines, compared byte for byte and fuel for fuel) and
/// natively; returns the result after checking all three agree.
fn run_everywhere(name: &str, params: &str) -> Vec<u8> {
    let (a, fuel_a) = run_example_in_sandbox(&sandbox(), name, params).expect(name);
    let (b, fuel_b) = run_example_in_sandbox(&sandbox(), name, params).expect(name);
    assert_eq!(a, b, "{name}: two engines disagree on the output");
    assert_eq!(
        fuel_a, fuel_b,
        "{name}: two engines disagree on the fuel used"
    );
    assert!(fuel_a.iter().all(|&f| f > 0));
    let native = run_example_natively(name, params).expect(name);
    assert_eq!(a, native, "{name}: sandbox and native disagree");
    a
}

#[test]
fn primes_counts_known_values() {
    for (limit, count) in [(10u64, 4u64), (100, 25), (1_000_000, 78_498)] {
        let params = format!(r#"{{"limit": {limit}, "chunks": 7}}"#);
        let result = json(&run_everywhere("primes", &params));
        assert_eq!(result["primes_below_limit"], count, "π below {limit}");
    }
}

#[test]
fn primes_below_ten_million_in_the_sandbox() {
    let (result, _) =
        run_example_in_sandbox(&sandbox(), "primes", r#"{"limit": 10000000}"#).expect("runs");
    assert_eq!(json(&result)["primes_below_limit"], 664_579);
}

#[test]
fn mandelbrot_merges_into_a_png_of_the_right_size() {
    let params = r#"{"width": 96, "height": 64, "max_iter": 200, "rows_per_chunk": 10}"#;
    let png_bytes = run_everywhere("mandelbrot", params);
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let reader = decoder.read_info().expect("a valid PNG");
    let info = reader.info();
    assert_eq!((info.width, info.height), (96, 64));
}

#[test]
fn montecarlo_is_deterministic_and_close_to_pi() {
    let params = r#"{"samples": 1000000, "chunks": 5, "seed": 7}"#;
    let result = json(&run_everywhere("montecarlo", params));
    let estimate = result["pi_estimate"].as_f64().expect("a number");
    assert!((estimate - std::f64::consts::PI).abs() < 0.01, "{estimate}");
    let other = json(&run_everywhere(
        "montecarlo",
        r#"{"samples": 1000000, "chunks": 5, "seed": 8}"#,
    ));
    assert_ne!(result["hits"], other["hits"], "the seed must matter");
}

#[test]
fn pow_finds_a_nonce_that_meets_the_difficulty() {
    let params =
        r#"{"data": "peergrid", "difficulty": 12, "max_nonce": 200000, "chunk_size": 4096}"#;
    let result = json(&run_everywhere("pow", params));
    let nonce = result["nonce"].as_u64().expect("found a nonce");
    let mut preimage = b"peergrid".to_vec();
    preimage.extend_from_slice(&nonce.to_le_bytes());
    let hash = blake3::hash(&preimage);
    assert_eq!(result["hash"], hash.to_hex().as_str());
    assert!(
        hash.as_bytes()[0] == 0 && hash.as_bytes()[1] >> 4 == 0,
        "12 zero bits"
    );
}

#[test]
fn every_example_splits_its_default_params() {
    let sandbox = sandbox();
    for example in &peergrid_jobs::EXAMPLES {
        let module = sandbox.load(example.wasm).expect(example.name);
        assert!(module.has_split && module.has_merge, "{}", example.name);
        let (exec, inputs) = sandbox.split(
            &module,
            example.default_params.as_bytes(),
            &Limits::SUBMITTER,
        );
        assert!(
            inputs.is_some_and(|i| !i.is_empty()),
            "{}: {}",
            example.name,
            exec.outcome
        );
    }
}

#[test]
fn bad_params_are_refused_by_split_with_the_jobs_message() {
    let sandbox = sandbox();
    let module = sandbox
        .load(peergrid_jobs::find("primes").expect("primes").wasm)
        .expect("loads");
    let (exec, inputs) = sandbox.split(&module, br#"{"limit": 0}"#, &Limits::SUBMITTER);
    assert!(inputs.is_none());
    match exec.outcome {
        Outcome::Trap {
            kind: TrapKind::JobError,
            message,
        } => assert!(message.contains("limit"), "{message}"),
        other => panic!("expected the job's error, got {other:?}"),
    }
    let (exec, _) = sandbox.split(&module, br#"{"limt": 5}"#, &Limits::SUBMITTER);
    assert!(
        exec.outcome.to_string().contains("unknown field"),
        "{}",
        exec.outcome
    );
}

#[test]
fn a_rust_guest_panic_is_a_trap_with_its_message() {
    let sandbox = sandbox();
    let module = sandbox
        .load(peergrid_jobs::FAULTS.wasm)
        .expect("faults loads");
    let (_, inputs) = sandbox.split(
        &module,
        br#"{"chunks": 2, "mode": "panic", "only": 1}"#,
        &Limits::SUBMITTER,
    );
    let inputs = inputs.expect("split");
    assert_eq!(
        sandbox
            .run_chunk(&module, &inputs[0], &Limits::CHUNK)
            .outcome,
        Outcome::Ok(peergrid_sdk::bytes::encode(&0u32).expect("encodes"))
    );
    match sandbox
        .run_chunk(&module, &inputs[1], &Limits::CHUNK)
        .outcome
    {
        Outcome::Trap {
            kind: TrapKind::Panic,
            message,
        } => assert!(message.contains("chunk 1 panicked on purpose"), "{message}"),
        other => panic!("expected a panic trap, got {other:?}"),
    }
}

#[test]
fn a_rust_guest_memory_bomb_and_recursion_are_contained() {
    let sandbox = sandbox();
    let module = sandbox.load(peergrid_jobs::FAULTS.wasm).expect("loads");
    let limits = Limits {
        memory_bytes: 64 * 1024 * 1024,
        ..Limits::CHUNK
    };
    for (mode, expect) in [("alloc", "memory_limit"), ("recurse", "trap")] {
        let params = format!(r#"{{"chunks": 1, "mode": "{mode}"}}"#);
        let (_, inputs) = sandbox.split(&module, params.as_bytes(), &Limits::SUBMITTER);
        let exec = sandbox.run_chunk(&module, &inputs.expect("split")[0], &limits);
        assert_eq!(exec.outcome.label(), expect, "{mode}: {}", exec.outcome);
    }
}
