//! `peergrid bench`: measurements taken as ratios within one run, because the
//! machines this runs on are shared and noisy.
//!
//! `bench sandbox` runs every example's chunks natively and in the sandbox (fuel and
//! every limit on, as the grid runs them), alternating rounds and keeping each side's
//! best round, and also with fuel and/or epochs off to show what each costs.
//!
//! `bench grid` starts in-process grids on loopback (real network, store and
//! scheduler code) and measures the overhead of distributing and verifying work:
//! no-op chunks per second at redundancy 2, one-chunk submit→verified latency, the
//! efficiency of a CPU-bound job against the sandbox alone, and how throughput and
//! memory change with the number of peers.
//!
//! `bench trust` runs the real scheduler against a simulated population of honest
//! peers, liars, colluders and lazy peers, and counts wrong results accepted and
//! replicas per chunk.
//!
//! `bench scale` starts separate node processes on loopback and measures what an
//! idle node costs (CPU, bytes, memory) as their number grows, how soon a submitter
//! sees enough candidates, and a job's time to done; `--simulate` runs the
//! discrete-event model of discovery for thousands of peers.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::GlobalOpts;
use crate::sandbox::{JobModule, Limits, Outcome, Sandbox, SandboxConfig};

/// Benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Native vs sandboxed time for each example job, and the cost of fuel and epochs.
    Sandbox(SandboxBench),
    /// Overhead, efficiency and scale of the grid on loopback.
    Grid(super::bench_grid::GridBench),
    /// Wrong results accepted and replicas per chunk with liars and colluders, on the
    /// real scheduler against a simulated population.
    Trust(super::bench_trust::TrustBench),
    /// An idle node's cost as the grid grows: separate node processes on loopback,
    /// or (`--simulate`) a discrete-event model of thousands of peers.
    Scale(super::bench_scale::ScaleBench),
}

impl BenchCmd {
    pub(super) fn execute(self, _global: &GlobalOpts) -> anyhow::Result<ExitCode> {
        match self {
            Self::Sandbox(b) => b.execute(),
            Self::Grid(b) => b.execute(),
            Self::Trust(b) => b.execute(),
            Self::Scale(b) => b.execute(),
        }
    }
}

/// Options of `bench sandbox`.
#[derive(Debug, clap::Args)]
pub struct SandboxBench {
    /// Only these examples (default: all).
    #[arg(long, value_name = "NAME")]
    pub job: Vec<String>,
    /// Keep measuring each job until its native side has run this long in total.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = crate::config::parse_duration)]
    pub min_time: Duration,
    /// Print one JSON object: {"sandbox":[{"job","native_s","wasm_s","ratio",…}]}.
    #[arg(long)]
    pub json: bool,
}

/// The four engine variants measured.
struct Variants {
    full: Sandbox,
    fuel_only: Sandbox,
    epochs_only: Sandbox,
    bare: Sandbox,
}

impl Variants {
    fn new() -> anyhow::Result<Self> {
        let make = |fuel, epochs| {
            Sandbox::new(SandboxConfig {
                cache_dir: None,
                fuel,
                epochs,
            })
        };
        Ok(Self {
            full: make(true, true)?,
            fuel_only: make(true, false)?,
            epochs_only: make(false, true)?,
            bare: make(false, false)?,
        })
    }
}

#[derive(Debug, serde::Serialize)]
struct JobFigures {
    job: &'static str,
    chunks: usize,
    rounds: usize,
    native_s: f64,
    wasm_s: f64,
    ratio: f64,
    wasm_fuel_only_s: f64,
    wasm_epochs_only_s: f64,
    wasm_bare_s: f64,
    fuel_cost: f64,
    epoch_cost: f64,
    fuel: u64,
}

impl SandboxBench {
    fn execute(self) -> anyhow::Result<ExitCode> {
        let variants = Variants::new()?;
        let mut rows = Vec::new();
        for example in &peergrid_jobs::EXAMPLES {
            if !self.job.is_empty() && !self.job.iter().any(|j| j == example.name) {
                continue;
            }
            rows.push(self.bench_one(&variants, example)?);
        }
        if rows.is_empty() {
            bail!(
                "no example matched --job (built-in: {})",
                peergrid_jobs::names().join(", ")
            );
        }
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "sandbox": rows }))?
            );
        } else {
            println!(
                "{:<11} {:>6} {:>10} {:>10} {:>7} {:>10} {:>10}",
                "job", "chunks", "native s", "sandbox s", "ratio", "fuel cost", "epoch cost"
            );
            for r in &rows {
                println!(
                    "{:<11} {:>6} {:>10.4} {:>10.4} {:>7.3} {:>9.1}% {:>9.1}%",
                    r.job,
                    r.chunks,
                    r.native_s,
                    r.wasm_s,
                    r.ratio,
                    r.fuel_cost * 100.0,
                    r.epoch_cost * 100.0
                );
            }
            println!(
                "\nratio = sandbox (fuel + epochs + all limits) / native, best of alternating \
                 rounds;\nfuel/epoch cost = time with only that mechanism on / time with both \
                 off, minus 1"
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    fn bench_one(
        &self,
        variants: &Variants,
        example: &'static peergrid_jobs::Example,
    ) -> anyhow::Result<JobFigures> {
        let native = example.native;
        let split = native.split.context("example without split")?;
        let list = split(example.default_params.as_bytes())
            .map_err(|e| anyhow::anyhow!("{}: split failed natively: {e}", example.name))?;
        let inputs: Vec<Vec<u8>> = peergrid_sdk::bytes::decode_list(&list)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        let load = |s: &Sandbox| s.load(example.wasm).context(example.name);
        let modules = [
            load(&variants.full)?,
            load(&variants.fuel_only)?,
            load(&variants.epochs_only)?,
            load(&variants.bare)?,
        ];
        let sandboxes = [
            &variants.full,
            &variants.fuel_only,
            &variants.epochs_only,
            &variants.bare,
        ];
        let limits = Limits {
            timeout: Duration::from_secs(3600),
            ..Limits::CHUNK
        };

        let mut best = [f64::INFINITY; 5];
        let mut native_total = 0.0;
        let mut rounds = 0;
        let mut fuel = 0;
        while rounds < 3 || (native_total < self.min_time.as_secs_f64() && rounds < 50) {
            let started = Instant::now();
            let native_out: Vec<Vec<u8>> = inputs
                .iter()
                .map(|i| (native.run)(i))
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("{}: native run failed: {e}", example.name))?;
            let t = started.elapsed().as_secs_f64();
            native_total += t;
            best[0] = best[0].min(t);
            for (k, (sandbox, module)) in sandboxes.iter().zip(&modules).enumerate() {
                let (t, out, used) = time_sandbox(sandbox, module, &inputs, &limits)?;
                best[k + 1] = best[k + 1].min(t);
                if k == 0 {
                    fuel = used;
                    if out != native_out {
                        bail!(
                            "{}: the sandbox and native code disagree on the output",
                            example.name
                        );
                    }
                }
            }
            rounds += 1;
        }
        let [native_s, wasm_s, fuel_only, epochs_only, bare] = best;
        Ok(JobFigures {
            job: example.name,
            chunks: inputs.len(),
            rounds,
            native_s,
            wasm_s,
            ratio: wasm_s / native_s,
            wasm_fuel_only_s: fuel_only,
            wasm_epochs_only_s: epochs_only,
            wasm_bare_s: bare,
            fuel_cost: fuel_only / bare - 1.0,
            epoch_cost: epochs_only / bare - 1.0,
            fuel,
        })
    }
}

/// Runs every input through one sandbox variant, back to back on this thread.
fn time_sandbox(
    sandbox: &Sandbox,
    module: &JobModule,
    inputs: &[Vec<u8>],
    limits: &Limits,
) -> anyhow::Result<(f64, Vec<Vec<u8>>, u64)> {
    let started = Instant::now();
    let mut outputs = Vec::with_capacity(inputs.len());
    let mut fuel = 0;
    for input in inputs {
        let exec = sandbox.run_chunk(module, input, limits);
        fuel += exec.fuel_used;
        match exec.outcome {
            Outcome::Ok(out) => outputs.push(out),
            other => bail!("a chunk failed in the sandbox: {other}"),
        }
    }
    Ok((started.elapsed().as_secs_f64(), outputs, fuel))
}
