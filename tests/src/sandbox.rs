//! Running the example jobs end to end, in the sandbox and natively.

use peergrid_node::sandbox::{Limits, Outcome, Sandbox, SandboxConfig};

/// A fresh sandbox with no disk cache.
pub fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig::default()).expect("the engine builds")
}

/// Runs a built-in example end to end in the sandbox with `params`, returning the
/// merged result bytes and the fuel each chunk used.
pub fn run_example_in_sandbox(
    sandbox: &Sandbox,
    name: &str,
    params: &str,
) -> Result<(Vec<u8>, Vec<u64>), String> {
    let example = peergrid_jobs::find(name).ok_or_else(|| format!("no example {name}"))?;
    let module = sandbox.load(example.wasm).map_err(|e| e.to_string())?;
    let (split, inputs) = sandbox.split(&module, params.as_bytes(), &Limits::SUBMITTER);
    let inputs = inputs.ok_or_else(|| format!("split: {}", split.outcome))?;
    let mut outputs = Vec::new();
    let mut fuel = Vec::new();
    for input in &inputs {
        let exec = sandbox.run_chunk(&module, input, &Limits::CHUNK);
        fuel.push(exec.fuel_used);
        match exec.outcome {
            Outcome::Ok(out) => outputs.push(out),
            other => return Err(format!("chunk: {other}")),
        }
    }
    match sandbox.merge(&module, &outputs, &Limits::SUBMITTER).outcome {
        Outcome::Ok(result) => Ok((result, fuel)),
        other => Err(format!("merge: {other}")),
    }
}

/// Runs a built-in example end to end natively (same bytes in and out as the sandbox).
pub fn run_example_natively(name: &str, params: &str) -> Result<Vec<u8>, String> {
    let example = peergrid_jobs::find(name).ok_or_else(|| format!("no example {name}"))?;
    example.native.run_all(params.as_bytes())
}

/// The merged result `peergrid run` gives for a built-in job: what a grid must give.
pub fn local_result(job: &str, params: &str) -> Vec<u8> {
    let sandbox = sandbox();
    let module = sandbox
        .load(peergrid_jobs::find(job).expect("built-in").wasm)
        .expect("loads");
    peergrid_node::local::run_job(
        &sandbox,
        &module,
        params.as_bytes(),
        &peergrid_node::local::LocalOptions::default(),
        &|_| {},
        &|| {},
    )
    .expect("runs locally")
    .result()
    .expect("a result")
    .to_vec()
}
