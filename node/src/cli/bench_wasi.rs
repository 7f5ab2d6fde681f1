//! `bench sandbox`'s rows for the wasi-v1 examples (`jobs/wasi/`): each example's
//! chunks in the production sandbox and, where a native build of the same source
//! exists (C, Go, Rust; built by `jobs/wasi/native-build.sh DIR` and found through
//! `PEERGRID_WASI_NATIVE=DIR`), as native processes speaking the same protocol
//! (argv names the entry, stdin in, stdout out). Both sides must give the same bytes;
//! each side's best of the alternating rounds counts. A native chunk's time includes
//! starting its process (about a millisecond), which the long chunks make small.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::sandbox::{Limits, Outcome, Sandbox};

/// Params whose chunks are long (tenths of a second of native work or more).
fn long_params(job: &str) -> &'static str {
    match job {
        "collatz" => r#"{"limit": 2000000, "chunks": 2}"#,
        "nqueens" => r#"{"n": 15}"#,
        "amicable" => r#"{"limit": 1000000, "chunks": 4}"#,
        "totient" => r#"{"n": 3000000, "chunks": 2}"#,
        _ => "{}",
    }
}

/// One wasi-v1 example's figures.
#[derive(Debug, serde::Serialize)]
pub(super) struct WasiFigures {
    job: &'static str,
    lang: &'static str,
    params: &'static str,
    chunks: usize,
    /// Every production setting on.
    wasm_s: f64,
    /// `None` without a native build (AssemblyScript, or `PEERGRID_WASI_NATIVE` unset).
    native_s: Option<f64>,
    ratio: Option<f64>,
    fuel: u64,
    /// The module's size, and the time its first load took (the NaN rewrite,
    /// Cranelift, resolving imports) and the NaN rewrite alone.
    module_bytes: usize,
    load_ms: f64,
    nan_rewrite_ms: f64,
    /// Scalar NaN-producing operators, and those canonicalised (see `bench sandbox`).
    nan_scalar_sites: u64,
    nan_scalar_canonicalised: u64,
}

/// Runs the wasi-v1 examples named in `jobs` (all when empty).
pub(super) fn bench(
    sandbox: &Sandbox,
    jobs: &[String],
    rounds: usize,
) -> anyhow::Result<Vec<WasiFigures>> {
    let native_dir = std::env::var_os("PEERGRID_WASI_NATIVE").map(PathBuf::from);
    let limits = Limits {
        timeout: Duration::from_secs(3600),
        ..Limits::CHUNK
    };
    let mut rows = Vec::new();
    for example in &peergrid_jobs::WASI_EXAMPLES {
        if !jobs.is_empty() && !jobs.iter().any(|j| j == example.name) {
            continue;
        }
        let params = long_params(example.name);
        let started = Instant::now();
        let module = sandbox.load(example.wasm).context(example.name)?;
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        let started = Instant::now();
        let sites = Sandbox::nan_summary(example.wasm)?;
        let nan_rewrite_ms = started.elapsed().as_secs_f64() * 1e3;
        let (split, inputs) = sandbox.split(&module, params.as_bytes(), &Limits::SUBMITTER);
        let inputs =
            inputs.with_context(|| format!("{}: split: {}", example.name, split.outcome))?;
        let native = native_dir
            .as_deref()
            .map(|dir| dir.join(example.name))
            .filter(|p| p.is_file());
        let (mut wasm_best, mut native_best) = (f64::MAX, f64::MAX);
        let mut fuel = 0;
        for _ in 0..rounds.max(1) {
            let started = Instant::now();
            let mut outputs = Vec::new();
            fuel = 0;
            for input in &inputs {
                let exec = sandbox.run_chunk(&module, input, &limits);
                fuel += exec.fuel_used;
                match exec.outcome {
                    Outcome::Ok(out) => outputs.push(out),
                    other => bail!("{}: a chunk failed in the sandbox: {other}", example.name),
                }
            }
            wasm_best = wasm_best.min(started.elapsed().as_secs_f64());
            if let Some(program) = &native {
                let started = Instant::now();
                for (input, expected) in inputs.iter().zip(&outputs) {
                    let out = run_native(program, input)?;
                    if &out != expected {
                        bail!(
                            "{}: the native build and the sandbox disagree on a chunk",
                            example.name
                        );
                    }
                }
                native_best = native_best.min(started.elapsed().as_secs_f64());
            }
        }
        let native_s = native.is_some().then_some(native_best);
        rows.push(WasiFigures {
            job: example.name,
            lang: example.lang,
            params,
            chunks: inputs.len(),
            wasm_s: wasm_best,
            native_s,
            ratio: native_s.map(|n| wasm_best / n.max(1e-9)),
            fuel,
            module_bytes: example.wasm.len(),
            load_ms,
            nan_rewrite_ms,
            nan_scalar_sites: sites.scalar_sites,
            nan_scalar_canonicalised: sites.scalar_canonicalised,
        });
    }
    Ok(rows)
}

/// Runs one chunk through a native build: `program run` with the input on stdin.
fn run_native(program: &Path, input: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new(program)
        .arg("run")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input)?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{} run failed: {}", program.display(), out.status);
    }
    Ok(out.stdout)
}

/// Prints the rows as a table.
pub(super) fn print(rows: &[WasiFigures]) {
    println!(
        "\nwasi-v1 examples (production sandbox vs the same source built natively; \
         PEERGRID_WASI_NATIVE=DIR from jobs/wasi/native-build.sh DIR):"
    );
    println!(
        "{:<11} {:<15} {:>7} {:>9} {:>9} {:>7} {:>9}",
        "job", "lang", "chunks", "wasm s", "native s", "ratio", "fuel G"
    );
    for r in rows {
        let dash = || "-".to_string();
        println!(
            "{:<11} {:<15} {:>7} {:>9.3} {:>9} {:>7} {:>9.2}",
            r.job,
            r.lang,
            r.chunks,
            r.wasm_s,
            r.native_s.map_or_else(dash, |s| format!("{s:.3}")),
            r.ratio.map_or_else(dash, |s| format!("{s:.3}")),
            r.fuel as f64 / 1e9,
        );
    }
}
