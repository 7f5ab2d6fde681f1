//! `peergrid bench grid`: what distributing and verifying work costs, measured on
//! in-process grids on loopback through the real network, store and scheduler code.
//! Every figure is a rate or a ratio taken within the same run.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::local;
use crate::local_grid::LocalGrid;
use crate::sandbox::Limits;
use crate::scheduler::{JobSpec, JobState, JobStatus, Replication, SubmitRequest};

/// Options of `bench grid`.
#[derive(Debug, clap::Args)]
pub struct GridBench {
    /// Workers in the overhead and efficiency grids.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub peers: usize,
    /// No-op chunks in the throughput job (enough that the start-up ramp of about
    /// 0.1 s does not weigh on the rate).
    #[arg(long, default_value_t = 5000, value_name = "N")]
    pub chunks: u32,
    /// Workers in the scale grid (0 skips the scale measurement).
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub scale_peers: usize,
    /// One-chunk jobs timed for the latency figures.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub latency_jobs: usize,
    /// Params of the CPU-bound primes job used for efficiency.
    #[arg(
        long,
        default_value = r#"{"limit": 4000000000, "chunks": 24}"#,
        value_name = "JSON"
    )]
    pub cpu_params: String,
    /// Rounds of the efficiency measurement: each runs the sandbox alone, then the
    /// grid at redundancy 1 and 2; each side's best round counts, as in `bench
    /// sandbox`, so that a neighbour's burst on a shared machine weighs on neither.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub rounds: usize,
    /// Print one JSON object with every figure.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Overhead {
    peers: usize,
    chunks: u32,
    seconds: f64,
    verified_chunks_per_sec: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct Efficiency {
    cores: usize,
    chunks: usize,
    /// Rounds run; each time below is the best of them.
    rounds: usize,
    sandbox_alone_s: f64,
    grid_r1_s: f64,
    grid_r2_s: f64,
    efficiency_r1: f64,
    efficiency_r2: f64,
}

#[derive(Debug, Serialize)]
struct Scale {
    small_peers: usize,
    large_peers: usize,
    small_chunks_per_sec: f64,
    large_chunks_per_sec: f64,
    ratio: f64,
    rss_per_peer_mb: f64,
}

#[derive(Debug, Serialize)]
struct Figures {
    overhead: Overhead,
    efficiency: Efficiency,
    scale: Option<Scale>,
}

/// Resident memory of this process, in bytes (Linux), when known.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Submits a built-in job to the grid's submitter and waits until it ends.
async fn run_job(
    grid: &LocalGrid,
    job: &str,
    params: &str,
    spec: JobSpec,
) -> anyhow::Result<(JobStatus, Duration)> {
    let wasm = peergrid_jobs::find(job).context("built-in job")?.wasm;
    let state = grid.submitter.state();
    let module = state.blobs.put(wasm)?;
    let started = Instant::now();
    let id = state
        .scheduler
        .submit(SubmitRequest {
            name: job.into(),
            module: module.to_hex(),
            params: Some(serde_json::from_str(params)?),
            inputs: None,
            spec: Some(spec),
        })
        .await?;
    let mut rx = state
        .scheduler
        .subscribe(id)
        .await
        .context("job vanished")?;
    loop {
        let status = rx.borrow_and_update().clone();
        if status.state.is_final() {
            if status.state != JobState::Done {
                bail!(
                    "the benchmark job ended {:?}: {:?}",
                    status.state,
                    status.error
                );
            }
            return Ok((status, started.elapsed()));
        }
        tokio::time::timeout(Duration::from_secs(300), rx.changed())
            .await
            .context("the benchmark job stalled")??;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn noop_spec() -> JobSpec {
    JobSpec {
        limits: Limits {
            fuel: 10_000_000,
            memory_bytes: 64 * 1024 * 1024,
            ..Limits::CHUNK
        },
        // The overhead of redundancy 2 itself: every chunk runs twice.
        replication: Replication::Fixed,
        ..JobSpec::default()
    }
}

async fn throughput(peers: usize, chunks: u32) -> anyhow::Result<(f64, f64, u64)> {
    let before = rss_bytes().unwrap_or(0);
    let grid = LocalGrid::start(peers, 0, 2).await?;
    grid.wait_for_workers(Duration::from_secs(60)).await?;
    let after = rss_bytes().unwrap_or(0);
    let params = format!(r#"{{"chunks": {chunks}}}"#);
    // Warm up (module compiled and cached everywhere), then measure.
    run_job(&grid, "faults", r#"{"chunks": 20}"#, noop_spec()).await?;
    let (_, took) = run_job(&grid, "faults", &params, noop_spec()).await?;
    grid.shutdown().await;
    Ok((
        took.as_secs_f64(),
        f64::from(chunks) / took.as_secs_f64(),
        after.saturating_sub(before),
    ))
}

impl GridBench {
    pub(super) fn execute(self) -> anyhow::Result<ExitCode> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let figures = runtime.block_on(self.measure())?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&figures)?);
            return Ok(ExitCode::SUCCESS);
        }
        let o = &figures.overhead;
        println!(
            "overhead    {} no-op chunks at redundancy 2 over {} peers: {:.0} verified chunks/s",
            o.chunks, o.peers, o.verified_chunks_per_sec
        );
        println!(
            "latency     one-chunk job submit→verified: p50 {:.1} ms, p99 {:.1} ms",
            o.latency_p50_ms, o.latency_p99_ms
        );
        let e = &figures.efficiency;
        println!(
            "efficiency  {} CPU-bound chunks on {} cores: redundancy 1 {:.2}, redundancy 2 {:.2} (ideal 1.0 / 0.5)",
            e.chunks, e.cores, e.efficiency_r1, e.efficiency_r2
        );
        if let Some(s) = &figures.scale {
            println!(
                "scale       {} → {} peers: {:.0} → {:.0} chunks/s (×{:.2}); {:.1} MB resident per peer",
                s.small_peers,
                s.large_peers,
                s.small_chunks_per_sec,
                s.large_chunks_per_sec,
                s.ratio,
                s.rss_per_peer_mb
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn measure(&self) -> anyhow::Result<Figures> {
        // 1. Overhead: no-op chunks, and one-chunk latency.
        let (seconds, rate, _) = throughput(self.peers, self.chunks).await?;
        let grid = LocalGrid::start(self.peers, 0, 2).await?;
        grid.wait_for_workers(Duration::from_secs(60)).await?;
        run_job(&grid, "faults", r#"{"chunks": 2}"#, noop_spec()).await?;
        let mut latencies = Vec::with_capacity(self.latency_jobs);
        for _ in 0..self.latency_jobs {
            let (_, took) = run_job(&grid, "faults", r#"{"chunks": 1}"#, noop_spec()).await?;
            latencies.push(took.as_secs_f64() * 1000.0);
        }
        latencies.sort_by(f64::total_cmp);
        grid.shutdown().await;
        let overhead = Overhead {
            peers: self.peers,
            chunks: self.chunks,
            seconds,
            verified_chunks_per_sec: rate,
            latency_p50_ms: percentile(&latencies, 0.5),
            latency_p99_ms: percentile(&latencies, 0.99),
        };

        // 2. Efficiency: a CPU-bound job against the sandbox alone, back to back.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let sandbox = crate::sandbox::Sandbox::new(Default::default())?;
        let primes = peergrid_jobs::find("primes").context("primes")?;
        let module = sandbox.load(primes.wasm)?;
        let (_, inputs) = local::split(
            &sandbox,
            &module,
            self.cpu_params.as_bytes(),
            &Limits::SUBMITTER,
        )?;
        // One slot per core in all: `cores` workers with one slot each.
        let grid = LocalGrid::start(cores, 0, 1).await?;
        grid.wait_for_workers(Duration::from_secs(60)).await?;
        run_job(
            &grid,
            "primes",
            r#"{"limit": 1000000, "chunks": 4}"#,
            JobSpec::default(),
        )
        .await?;
        let single = JobSpec {
            redundancy: 1,
            quorum: 1,
            max_replicas: 2,
            ..JobSpec::default()
        };
        let double = JobSpec {
            replication: Replication::Fixed,
            ..JobSpec::default()
        };
        let rounds = self.rounds.max(1);
        let (mut alone, mut r1, mut r2) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
        for _ in 0..rounds {
            // The sandbox alone on one thread, then the grid: back to back.
            let sandbox_alone = tokio::task::block_in_place(|| {
                let started = Instant::now();
                local::run_chunks(&sandbox, &module, &inputs, &Limits::CHUNK, 1, &|| {});
                started.elapsed()
            });
            alone = alone.min(sandbox_alone.as_secs_f64());
            let (_, took) = run_job(&grid, "primes", &self.cpu_params, single).await?;
            r1 = r1.min(took.as_secs_f64());
            let (_, took) = run_job(&grid, "primes", &self.cpu_params, double).await?;
            r2 = r2.min(took.as_secs_f64());
        }
        grid.shutdown().await;
        let efficiency = Efficiency {
            cores,
            chunks: inputs.len(),
            rounds,
            sandbox_alone_s: alone,
            grid_r1_s: r1,
            grid_r2_s: r2,
            efficiency_r1: alone / (r1 * cores as f64),
            efficiency_r2: alone / (r2 * cores as f64),
        };

        // 3. Scale: the same throughput job over many peers, and memory per peer.
        let scale = if self.scale_peers > 0 {
            let (_, large, grown) = throughput(self.scale_peers, self.chunks).await?;
            Some(Scale {
                small_peers: self.peers,
                large_peers: self.scale_peers,
                small_chunks_per_sec: rate,
                large_chunks_per_sec: large,
                ratio: large / rate,
                rss_per_peer_mb: grown as f64 / (self.scale_peers + 1) as f64 / 1e6,
            })
        } else {
            None
        };
        Ok(Figures {
            overhead,
            efficiency,
            scale,
        })
    }
}
