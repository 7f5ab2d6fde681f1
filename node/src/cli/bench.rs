//! `peergrid bench`: measurements taken as ratios within one run, because the
//! machines this runs on are shared and noisy.
//!
//! `bench sandbox` runs every example's chunks natively and in the sandbox (every
//! production setting on, as the grid runs them) on long chunks (≥ 0.25 s of native
//! work each, so per-call setup does not weigh on the ratio), alternating rounds and
//! keeping each side's best round; it also runs them with NaN canonicalisation, fuel,
//! or all checks off, with Cranelift's canonicalisation of every NaN-producing
//! instruction instead of the rewrite, with epochs as the guard, with fuel charged
//! only at branches and calls, with epochs and no fuel, and without loop unrolling,
//! to show what each costs;
//! and it times an empty call (instantiation and teardown) with and without the
//! instance pool.
//!
//! `bench grid` starts in-process grids on loopback (real network, store and
//! scheduler code) and measures the overhead of distributing and verifying work:
//! no-op chunks per second at redundancy 2, one-chunk submit→verified latency, the
//! efficiency of a CPU-bound job against the sandbox alone (each side's best of
//! alternating rounds), and how throughput and
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
//!
//! `bench hostile` runs each attack of issue 15 against a real node process while an
//! honest job runs through it, and reports the job's slowdown, the node's memory and
//! disk, and whether it banned the offender.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::GlobalOpts;
use super::bench_variants::{PerVariant, Variant, Variants};
use crate::sandbox::{JobModule, Limits, Outcome, Sandbox};

/// Benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Native vs sandboxed time for each example job on long chunks, the per-call
    /// overhead, and what NaN canonicalisation, fuel and epochs cost.
    Sandbox(SandboxBench),
    /// Overhead, efficiency and scale of the grid on loopback.
    Grid(super::bench_grid::GridBench),
    /// Wrong results accepted and replicas per chunk with liars and colluders, on the
    /// real scheduler against a simulated population.
    Trust(super::bench_trust::TrustBench),
    /// An idle node's cost as the grid grows: separate node processes on loopback,
    /// or (`--simulate`) a discrete-event model of thousands of peers.
    Scale(super::bench_scale::ScaleBench),
    /// Can hostile peers exhaust a node? Each attack against a real node process
    /// while an honest job runs through it: slowdown, memory, disk, bans.
    Hostile(super::bench_hostile::HostileBench),
}

impl BenchCmd {
    pub(super) fn execute(self, _global: &GlobalOpts) -> anyhow::Result<ExitCode> {
        match self {
            Self::Sandbox(b) => b.execute(),
            Self::Grid(b) => b.execute(),
            Self::Trust(b) => b.execute(),
            Self::Scale(b) => b.execute(),
            Self::Hostile(b) => b.execute(),
        }
    }
}

/// Options of `bench sandbox`.
#[derive(Debug, clap::Args)]
pub struct SandboxBench {
    /// Only these examples (default: all).
    #[arg(long, value_name = "NAME")]
    pub job: Vec<String>,
    /// Rounds per job: each round runs every chunk natively and in every sandbox
    /// variant, alternating; each side's best round counts.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub rounds: usize,
    /// Params (JSON) for the jobs instead of the built-in long-chunk ones; with one
    /// `--job`, to measure it on other chunks.
    #[arg(long, value_name = "JSON")]
    pub params: Option<String>,
    /// Print one JSON object: {"sandbox":[{"job","ratio","call_overhead_us",…}],…}.
    #[arg(long)]
    pub json: bool,
}

/// The shortest native time of a "long" chunk: the compute ratio is measured on chunks
/// at least this long, so per-call setup does not weigh on it.
const LONG_CHUNK_S: f64 = 0.25;

/// Params that make each example's chunks long (≥ [`LONG_CHUNK_S`] of native work on
/// this machine class); the bench reports the shortest chunk it saw.
fn long_params(job: &str) -> Option<&'static str> {
    Some(match job {
        // A view on the boundary near the seahorse valley, where most points take
        // hundreds to thousands of iterations (interior points end early: cardioid
        // test, cycle detection).
        "mandelbrot" => {
            r#"{"width": 3072, "height": 1536, "max_iter": 20000, "center_x": -0.7436, "center_y": 0.1318, "scale": 0.002, "rows_per_chunk": 768}"#
        }
        "primes" => r#"{"limit": 1500000000, "chunks": 2}"#,
        "montecarlo" => r#"{"samples": 500000000, "chunks": 2, "seed": 42}"#,
        "pow" => {
            r#"{"data": "peergrid", "difficulty": 40, "max_nonce": 6291456, "chunk_size": 3145728}"#
        }
        _ => return None,
    })
}

/// Calls timed for the per-call overhead (the median counts).
const OVERHEAD_CALLS: usize = 301;

#[derive(Debug, serde::Serialize)]
struct JobFigures {
    job: &'static str,
    params: String,
    chunks: usize,
    rounds: usize,
    /// The shortest chunk's native time (the ratio is meant for chunks ≥ 0.25 s).
    shortest_chunk_native_s: f64,
    native_s: f64,
    /// Every production setting on.
    wasm_s: f64,
    ratio: f64,
    /// Fuel + epochs as the guard (the mechanism before issue 18).
    wasm_epochs_s: f64,
    ratio_epochs: f64,
    wasm_no_nan_canon_s: f64,
    /// Production with Cranelift's canonicalisation of every NaN-producing
    /// instruction instead of the rewrite.
    wasm_every_op_s: f64,
    ratio_every_op: f64,
    wasm_no_fuel_s: f64,
    wasm_bare_s: f64,
    ratio_bare: f64,
    /// wasm_s / wasm_no_nan_canon_s − 1: what production's NaN canonicalisation (the
    /// rewrite: only where a NaN's bits can be seen) costs against none.
    nan_canon_cost: f64,
    /// wasm_every_op_s / wasm_no_nan_canon_s − 1: what Cranelift's canonicalisation
    /// after every NaN-producing instruction costs against none.
    nan_every_op_cost: f64,
    /// The job module's NaN-producing operators: scalar ones, scalar ones the rewrite
    /// canonicalises (their bits can be seen), SIMD ones (always canonicalised).
    nan_scalar_sites: u64,
    nan_scalar_canonicalised: u64,
    nan_simd_sites: u64,
    /// The job module's first load in production (the three rewrites, Cranelift,
    /// resolving imports).
    load_ms: f64,
    /// The same load without unrolling loops.
    load_no_unroll_ms: f64,
    /// The NaN rewrite alone (with counting its sites).
    nan_rewrite_ms: f64,
    /// wasm_s / wasm_no_fuel_s − 1 (fuel metering and its slice checks).
    fuel_cost: f64,
    /// wasm_epochs_s / wasm_s − 1: what epochs added on top of fuel.
    epoch_cost: f64,
    /// Production with fuel charged only at branches and calls (most per-block fuel
    /// updates gone, the loop-header checks kept); not the grid's fuel.
    wasm_branch_fuel_s: f64,
    /// wasm_branch_fuel_s / wasm_no_fuel_s − 1, to set against `fuel_cost`.
    branch_fuel_cost: f64,
    /// No fuel, epochs as the guard: a check at every loop header and function entry,
    /// nothing else.
    wasm_epochs_only_s: f64,
    /// wasm_epochs_only_s / wasm_no_fuel_s − 1, to set against `fuel_cost`.
    epochs_only_cost: f64,
    /// Production without loop unrolling (a fuel check at every loop header).
    wasm_no_unroll_s: f64,
    ratio_no_unroll: f64,
    /// wasm_s / wasm_no_unroll_s − 1: what unrolling gains (negative: faster).
    unroll_gain: f64,
    /// The job module's innermost loops that loop, and those unrolled.
    innermost_loops: u64,
    loops_unrolled: u64,
    /// Bytes unrolling adds to the module as sent.
    unroll_bytes_added: u64,
    /// Fuel used by all chunks without unrolling (checked equal to `fuel`: unrolling
    /// changes no fuel count).
    fuel_without_unroll: u64,
    /// Production with explicit bounds checks on every memory access (no guard
    /// regions).
    wasm_bounds_checked_s: f64,
    /// wasm_bounds_checked_s / wasm_s − 1: what the guard regions save.
    bounds_check_cost: f64,
    /// Fuel used by all chunks (the same in every fuelled variant that runs the
    /// rewritten module, checked).
    fuel: u64,
    /// Fuel used without the NaN rewrite (the no-canonicalisation and every-op
    /// variants, checked equal; loops unrolled and multiplies rewritten as in
    /// production): the NaN rewrite's inserted operators are fuel − this.
    fuel_without_rewrite: u64,
    /// Median time of a call that does nothing (the job's `run` on empty input,
    /// which fails to decode at once): instantiation, the ABI sequence, teardown.
    call_overhead_us: f64,
    /// The same without the instance pool.
    call_overhead_no_pool_us: f64,
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
        let wasi = super::bench_wasi::bench(variants.production(), &self.job, self.rounds)?;
        if rows.is_empty() && wasi.is_empty() {
            bail!(
                "no example matched --job (built-in: {})",
                peergrid_jobs::names().join(", ")
            );
        }
        let empty = [
            empty_call_us(variants.production())?,
            empty_call_us(&variants.no_pool)?,
        ];
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "sandbox": rows,
                    "wasi": wasi,
                    "empty_module_call_us": empty[0],
                    "empty_module_call_no_pool_us": empty[1],
                }))?
            );
        } else {
            println!(
                "{:<11} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
                "job",
                "chunk s",
                "ratio",
                "epochs",
                "bare",
                "nan",
                "nan all",
                "fuel",
                "+epochs",
                "+bounds",
                "br fuel",
                "ep only",
                "unroll",
                "call µs",
                "no pool"
            );
            for r in &rows {
                println!(
                    "{:<11} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.1}% {:>7.1}% {:>7.1}% {:>7.1}% {:>7.1}% {:>7.1}% {:>7.1}% {:>7.1}% {:>9.1} {:>9.1}",
                    r.job,
                    r.shortest_chunk_native_s,
                    r.ratio,
                    r.ratio_epochs,
                    r.ratio_bare,
                    r.nan_canon_cost * 100.0,
                    r.nan_every_op_cost * 100.0,
                    r.fuel_cost * 100.0,
                    r.epoch_cost * 100.0,
                    r.bounds_check_cost * 100.0,
                    r.branch_fuel_cost * 100.0,
                    r.epochs_only_cost * 100.0,
                    r.unroll_gain * 100.0,
                    r.call_overhead_us,
                    r.call_overhead_no_pool_us,
                );
            }
            println!(
                "empty module: {:.1} µs per call ({:.1} µs without the pool)",
                empty[0], empty[1]
            );
            println!(
                "\nratio = sandbox with every production setting / native, best of {} \
                 alternating rounds;\nepochs = the same with fuel + epochs (the guard before \
                 issue 18); bare = no fuel, no guard, no rewrite of the module;\nnan/fuel = \
                 what each adds to production (nan: canonicalisation where a NaN can be seen, \
                 against none);\nnan all = what Cranelift's canonicalisation of every \
                 NaN-producing instruction adds instead; +epochs = what epochs would add on top of \
                 fuel;\n+bounds = what explicit bounds checks would add (no guard regions);\nbr fuel = \
                 what fuel charged only at branches and calls costs against none (fuel: \
                 production's table);\nep only = what epochs alone (no fuel) cost against none;\nunroll = what \
                 unrolling small innermost loops changes in production (negative: faster);\ncall µs = median time of the job's `run` on empty input (no pool: \
                 fresh mappings per call)",
                self.rounds
            );
            super::bench_wasi::print(&wasi);
        }
        Ok(ExitCode::SUCCESS)
    }

    fn bench_one(
        &self,
        variants: &Variants,
        example: &'static peergrid_jobs::Example,
    ) -> anyhow::Result<JobFigures> {
        let native = example.native;
        let params = match &self.params {
            Some(p) => p.as_str(),
            None => long_params(example.name).unwrap_or(example.default_params),
        };
        let split = native.split.context("example without split")?;
        let list = split(params.as_bytes())
            .map_err(|e| anyhow::anyhow!("{}: split failed natively: {e}", example.name))?;
        let inputs: Vec<Vec<u8>> = peergrid_sdk::bytes::decode_list(&list)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        // Each variant's first load (a compile: the bench's sandboxes have no disk
        // cache), in ms.
        let mut load_ms = PerVariant::filled(0.0);
        let modules = PerVariant::try_new(|v| {
            let started = Instant::now();
            let module = variants.timed[v].load(example.wasm).context(example.name)?;
            load_ms[v] = started.elapsed().as_secs_f64() * 1e3;
            Ok(module)
        })?;
        let limits = Limits {
            timeout: Duration::from_secs(3600),
            ..Limits::CHUNK
        };

        let mut native_s = f64::INFINITY;
        let mut best = PerVariant::filled(f64::INFINITY);
        let mut shortest_chunk = f64::INFINITY;
        let mut fuel = 0;
        let mut fuel_without_rewrite = 0;
        let mut fuel_without_unroll = 0;
        for _ in 0..self.rounds.max(1) {
            let mut native_out = Vec::with_capacity(inputs.len());
            let mut total = 0.0;
            for input in &inputs {
                let started = Instant::now();
                let out = (native.run)(input)
                    .map_err(|e| anyhow::anyhow!("{}: native run failed: {e}", example.name))?;
                let t = started.elapsed().as_secs_f64();
                shortest_chunk = shortest_chunk.min(t);
                total += t;
                native_out.push(out);
            }
            native_s = native_s.min(total);
            for (v, module) in modules.iter() {
                let (t, out, used) = time_sandbox(&variants.timed[v], module, &inputs, &limits)?;
                best[v] = best[v].min(t);
                if out != native_out {
                    bail!(
                        "{}: the sandbox ({v:?}) and native code disagree on the output",
                        example.name
                    );
                }
                // The same module and inputs must use the same fuel whatever the
                // guard, and with loops rolled or unrolled: the metered variants that
                // run the NaN rewrite agree with production, and the two that leave
                // NaNs to Cranelift (none, every op) agree with each other. BranchFuel
                // meters with another table; NoFuel, Bare and EpochsOnly do not meter.
                match v {
                    Variant::Production => fuel = used,
                    Variant::Epochs | Variant::BoundsChecked if used != fuel => bail!(
                        "{}: {v:?} used {used} fuel, production {fuel}",
                        example.name
                    ),
                    Variant::NoNanCanon => fuel_without_rewrite = used,
                    Variant::EveryOp if used != fuel_without_rewrite => bail!(
                        "{}: every-op canonicalisation used {used} fuel, none {fuel_without_rewrite}",
                        example.name
                    ),
                    Variant::NoUnroll if used != fuel => bail!(
                        "{}: without unrolling the chunks used {used} fuel, production {fuel}",
                        example.name
                    ),
                    Variant::NoUnroll => fuel_without_unroll = used,
                    _ => {}
                }
            }
        }
        if shortest_chunk < LONG_CHUNK_S {
            eprintln!(
                "warning: {}: a chunk took {shortest_chunk:.3} s natively, under {LONG_CHUNK_S} s; \
                 per-call setup weighs on its ratio",
                example.name
            );
        }
        let wasm_s = best[Variant::Production];
        let epochs = best[Variant::Epochs];
        let no_nan_canon = best[Variant::NoNanCanon];
        let no_fuel = best[Variant::NoFuel];
        let bare = best[Variant::Bare];
        let bounds = best[Variant::BoundsChecked];
        let every_op = best[Variant::EveryOp];
        let branch_fuel = best[Variant::BranchFuel];
        let epochs_only = best[Variant::EpochsOnly];
        let no_unroll = best[Variant::NoUnroll];
        let started = Instant::now();
        let sites = Sandbox::nan_summary(example.wasm)?;
        let nan_rewrite_ms = started.elapsed().as_secs_f64() * 1e3;
        let loops = Sandbox::unroll_summary(example.wasm)?;
        Ok(JobFigures {
            job: example.name,
            params: params.to_string(),
            chunks: inputs.len(),
            rounds: self.rounds.max(1),
            shortest_chunk_native_s: shortest_chunk,
            native_s,
            wasm_s,
            ratio: wasm_s / native_s,
            wasm_epochs_s: epochs,
            ratio_epochs: epochs / native_s,
            wasm_no_nan_canon_s: no_nan_canon,
            wasm_no_fuel_s: no_fuel,
            wasm_bare_s: bare,
            ratio_bare: bare / native_s,
            wasm_every_op_s: every_op,
            ratio_every_op: every_op / native_s,
            nan_canon_cost: wasm_s / no_nan_canon - 1.0,
            nan_every_op_cost: every_op / no_nan_canon - 1.0,
            nan_scalar_sites: sites.scalar_sites,
            nan_scalar_canonicalised: sites.scalar_canonicalised,
            nan_simd_sites: sites.simd_sites,
            load_ms: load_ms[Variant::Production],
            load_no_unroll_ms: load_ms[Variant::NoUnroll],
            nan_rewrite_ms,
            fuel_cost: wasm_s / no_fuel - 1.0,
            epoch_cost: epochs / wasm_s - 1.0,
            wasm_branch_fuel_s: branch_fuel,
            branch_fuel_cost: branch_fuel / no_fuel - 1.0,
            wasm_epochs_only_s: epochs_only,
            epochs_only_cost: epochs_only / no_fuel - 1.0,
            wasm_no_unroll_s: no_unroll,
            ratio_no_unroll: no_unroll / native_s,
            unroll_gain: wasm_s / no_unroll - 1.0,
            innermost_loops: loops.loops,
            loops_unrolled: loops.unrolled,
            unroll_bytes_added: loops.bytes_added,
            fuel_without_unroll,
            wasm_bounds_checked_s: bounds,
            bounds_check_cost: bounds / wasm_s - 1.0,
            fuel,
            fuel_without_rewrite,
            call_overhead_us: overhead_us(variants.production(), &modules[Variant::Production]),
            call_overhead_no_pool_us: overhead_us(
                &variants.no_pool,
                &variants.no_pool.load(example.wasm)?,
            ),
        })
    }
}

/// Median time of `run` on empty input (decoding fails at once), in µs.
fn overhead_us(sandbox: &Sandbox, module: &JobModule) -> f64 {
    let mut times: Vec<f64> = (0..OVERHEAD_CALLS)
        .map(|_| {
            let exec = sandbox.run_chunk(module, b"", &Limits::CHUNK);
            exec.elapsed.as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Median time of a call to a module that only returns: the sandbox's own floor.
fn empty_call_us(sandbox: &Sandbox) -> anyhow::Result<f64> {
    const EMPTY: &str = r#"(module
      (import "peergrid" "log" (func (param i32 i32 i32)))
      (memory (export "memory") 1)
      (func (export "peergrid_abi_v1"))
      (func (export "peergrid_alloc") (param i32) (result i32) (i32.const 64))
      (func (export "peergrid_run") (param i32 i32) (result i32) (i32.const 0)))"#;
    let module = sandbox.load(EMPTY.as_bytes())?;
    Ok(overhead_us(sandbox, &module))
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
