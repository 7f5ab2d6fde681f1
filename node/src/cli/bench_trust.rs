//! `peergrid bench trust`: how many wrong results the real scheduler and
//! verification code accept against strategic adversaries, whether any honest peer
//! is blamed, whether the job gets done, and how much extra work the grid pays for
//! that safety.
//!
//! The scheduler runs as in a node (its actor, SQLite store, sandbox, trust and
//! placement rules), in lockstep with one seed, but its network is a
//! [simulation](crate::net::sim) of a [population](population): honest peers with
//! finite slots, varied latencies and churn, and adversaries playing the
//! [`Strategy`]s given with `--strategy` (composable: `--strategy co-placed,inflate`).
//! Honest answers are the real module's, run once per input in the sandbox; every
//! result is signed with its peer's own key, as on the wire.

mod population;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use libp2p::PeerId;
use serde::Serialize;

pub use self::population::Strategy;
use self::population::{Honest, Mix, Population, Shared, seeded_key};
use crate::net::NetClient;
use crate::net::protocol::{BlobHash, ResultBatch};
use crate::sandbox::{Limits, Sandbox, SandboxConfig};
use crate::scheduler::{
    JobSpec, JobState, PlacementPolicy, Replication, Scheduler, SchedulerContext, SubmitRequest,
    TrustPolicy, WaitError,
};
use crate::store::{BlobStore, Db};

/// Options of `bench trust`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrustBench {
    /// Simulated peers.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub peers: usize,
    /// Chunks in the job.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub chunks: u32,
    /// What the adversaries do, comma-separated (each adversary plays them all):
    /// liar, colluder, lazy, inflate, co-placed, trust-then-lie, withdraw-late,
    /// sybil-churn, plant-poison, job-killer.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub strategy: Vec<Strategy>,
    /// Fraction of the peers that are adversaries (with --strategy).
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    pub adversaries: f64,
    /// Fraction of peers that are independent liars (same as --strategy liar).
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    pub liars: f64,
    /// Fraction of peers that collude (same as --strategy colluder).
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    pub colluders: f64,
    /// Fraction of peers that accept work and never answer (same as --strategy lazy).
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    pub lazy: f64,
    /// How often lying strategies lie (1: whenever they would; lower: honest in
    /// between, to earn trust).
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub lie_rate: f64,
    /// Sybil identities in random networks instead of one /24.
    #[arg(long)]
    pub sybil_spread: bool,
    /// Put every colluder in one /24 (kept for older scripts: colluders then play
    /// sybil-churn too).
    #[arg(long)]
    pub sybil: bool,
    /// Fixed replication instead of adaptive (BOINC's fixed quorum 2, for comparison).
    #[arg(long)]
    pub fixed: bool,
    /// Run the table: no adversaries, then every strategy at 10, 20 and 30 %.
    #[arg(long)]
    pub table: bool,
    /// Seed of the population and the scheduler (which peers lie, and when).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub seed: u64,
    /// Print one JSON object per run, one per line.
    #[arg(long)]
    pub json: bool,
}

impl TrustBench {
    /// Who plays what.
    fn mix(&self) -> Mix {
        let mut mix = Mix::new();
        if !self.strategy.is_empty() && self.adversaries > 0.0 {
            let mut s = self.strategy.clone();
            s.sort();
            s.dedup();
            mix.push((self.adversaries, s));
        }
        let colluder = if self.sybil {
            vec![Strategy::Colluder, Strategy::SybilChurn]
        } else {
            vec![Strategy::Colluder]
        };
        for (f, s) in [
            (self.liars, vec![Strategy::Liar]),
            (self.colluders, colluder),
            (self.lazy, vec![Strategy::Lazy]),
        ] {
            if f > 0.0 {
                mix.push((f, s));
            }
        }
        mix
    }
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct TrustFigures {
    /// The strategies the adversaries played (`a,b`), or `none`.
    pub strategy: String,
    /// Fraction of the peers that are adversaries.
    pub adversaries: f64,
    /// How often they lie.
    pub lie_rate: f64,
    /// The seed.
    pub seed: u64,
    /// Sybils spread over networks.
    pub sybil_spread: bool,
    /// Chunks in the job.
    pub chunks: u32,
    /// Simulated peers.
    pub peers: usize,
    /// `adaptive` or `fixed`.
    pub replication: &'static str,
    /// Chunks whose accepted output differs from the honest one.
    pub wrong_accepted: u32,
    /// `wrong_accepted / chunks`.
    pub wrong_rate: f64,
    /// Chunks that could not be verified.
    pub chunks_failed: u32,
    /// How the job ended.
    pub job_state: JobState,
    /// Why it failed, if it did.
    pub job_error: Option<String>,
    /// Honest peers excluded by the end (blamed).
    pub honest_excluded: usize,
    /// Honest peers.
    pub honest_total: usize,
    /// Adversary identities excluded by the end.
    pub adversaries_excluded: usize,
    /// Adversary identities (Sybils count each identity).
    pub adversaries_total: usize,
    /// Replicas run by peers, plus runs by the submitter itself, per chunk.
    pub replicas_per_chunk: f64,
    /// The same over the second half of the chunks (after warm-up).
    pub replicas_per_chunk_after_warmup: f64,
    /// Replicas run by peers per chunk.
    pub peer_replicas_per_chunk: f64,
    /// Runs the submitter did itself (witnesses, referees, spot checks) per chunk.
    pub submitter_runs_per_chunk: f64,
    /// Chunks verified on one trusted peer's word.
    pub unreplicated: u32,
    /// Spot checks run by the submitter.
    pub spot_checks: u32,
    /// Planted chunks issued.
    pub plants: u32,
    /// Disputes decided by the submitter's own run.
    pub refereed: u32,
    /// Lies caught with signed evidence.
    pub caught: u32,
    /// Chunks re-verified after a peer that vouched for them was caught.
    pub reverified: u32,
    /// Replicas withdrawn by their workers.
    pub withdrawn: u32,
    /// Wall time of the run (the only figure that differs between two runs with
    /// the same seed).
    pub seconds: f64,
}

/// Runs one population through the real scheduler and counts what it accepted.
pub async fn run(opts: &TrustBench, policy: TrustPolicy) -> anyhow::Result<TrustFigures> {
    if opts.peers < 3 {
        bail!("--peers must be at least 3");
    }
    for (name, f) in [
        ("--adversaries", opts.adversaries),
        ("--liars", opts.liars),
        ("--colluders", opts.colluders),
        ("--lazy", opts.lazy),
        ("--lie-rate", opts.lie_rate),
    ] {
        if !(0.0..=1.0).contains(&f) {
            bail!("{name} must be a fraction between 0 and 1, got {f}");
        }
    }
    if opts.adversaries > 0.0 && opts.strategy.is_empty() {
        bail!("--adversaries needs --strategy (e.g. --strategy colluder,inflate)");
    }
    let mix = opts.mix();
    if mix.iter().map(|(f, _)| f).sum::<f64>() > 1.0 {
        bail!("the adversaries add up to more than all peers");
    }
    let dir = tempfile::tempdir().context("creating a scratch dir")?;
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let blobs = BlobStore::open(dir.path().join("blobs"))?;
    let db = Arc::new(Db::open(&dir.path().join("bench.sqlite"))?);
    let example = peergrid_jobs::find("faults").context("the faults job is built in")?;
    let module = sandbox.load(example.wasm)?;
    let honest = Arc::new(Honest {
        sandbox: sandbox.clone(),
        module,
        cache: Mutex::new(HashMap::new()),
    });

    let local = seeded_key(opts.seed, 0, 0);
    let population = Arc::new(Mutex::new(Population::new(
        opts.peers,
        &mix,
        opts.lie_rate,
        opts.sybil_spread,
        opts.seed,
        local.public().to_peer_id(),
        honest.clone(),
    )));
    let wake = Arc::new(tokio::sync::Notify::new());
    let net = NetClient::simulated(
        &local,
        Shared {
            pop: population.clone(),
            wake: wake.clone(),
        },
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (scheduler, task) = Scheduler::start(
        SchedulerContext {
            net,
            blobs: blobs.clone(),
            db: db.clone(),
            sandbox: sandbox.clone(),
            metrics: Default::default(),
            local_worker: None,
            trust: policy,
            placement: PlacementPolicy::default(),
            seed: Some(opts.seed),
        },
        shutdown.clone(),
    );
    // Results go back to the scheduler in per-peer batches, as workers send them,
    // a round at a time (see `population`).
    let deliver = {
        let (scheduler, population, wake) = (scheduler.clone(), population.clone(), wake.clone());
        tokio::spawn(async move {
            loop {
                let (due, idle) = {
                    let mut pop = population.lock().unwrap_or_else(|p| p.into_inner());
                    (pop.round(), pop.idle())
                };
                for (peer, results) in due {
                    for batch in results.chunks(256) {
                        scheduler
                            .results(
                                peer,
                                ResultBatch {
                                    results: batch.to_vec(),
                                },
                            )
                            .await;
                    }
                }
                if idle {
                    wake.notified().await;
                } else {
                    tokio::task::yield_now().await;
                }
            }
        })
    };

    let started = Instant::now();
    let module_hash = blobs.put(example.wasm)?;
    let spec = JobSpec {
        soft_timeout: Duration::from_secs(2),
        replication: if opts.fixed {
            Replication::Fixed
        } else {
            Replication::Adaptive
        },
        limits: Limits::CHUNK,
        ..JobSpec::default()
    };
    let id = scheduler
        .submit(SubmitRequest {
            name: "faults".into(),
            module: module_hash.to_hex(),
            params: Some(serde_json::json!({ "chunks": opts.chunks })),
            inputs: None,
            spec: Some(spec),
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Wait on the job's live status (no polling: nothing but the work itself reaches
    // the scheduler, so a seeded run takes the same turns every time).
    let status = match scheduler.wait_final(id, Duration::from_secs(1800)).await {
        Ok(status) => status,
        Err(WaitError::TimedOut(_)) => bail!("the job did not finish in 30 minutes"),
        Err(WaitError::Stopped(status)) => bail!("the scheduler stopped: {status:?}"),
        Err(WaitError::Vanished) => bail!("the job disappeared"),
    };
    let seconds = started.elapsed().as_secs_f64();

    // Count what was accepted against the honest answers.
    let chunk_rows = db.chunks(id)?;
    let outputs = db.chunk_outputs(id)?;
    let mut wrong = 0u32;
    for (row, (hash, _)) in chunk_rows.iter().zip(&outputs) {
        if row.state != crate::types::ChunkStatus::Verified {
            continue;
        }
        let Some(input) = &row.input_data else {
            continue;
        };
        let (_, honest_output) = honest.answer(input, BlobHash::of(input), &spec.limits);
        if *hash != Some(BlobHash::of(&honest_output)) {
            wrong += 1;
        }
    }
    let local_id = local.public().to_peer_id().to_string();
    let (mut peer_runs, mut own_runs, mut late_runs) = (0u64, 0u64, 0u64);
    let half = opts.chunks / 2;
    for r in db.replicas(id)? {
        // Offered and never taken, or handed back unrun: no work done.
        if matches!(
            r.state,
            crate::types::ReplicaStatus::Offered | crate::types::ReplicaStatus::Withdrawn
        ) {
            continue;
        }
        if r.peer == local_id {
            own_runs += 1;
        } else {
            peer_runs += 1;
        }
        if r.chunk >= half {
            late_runs += 1;
        }
    }
    let reputations = db.reputations()?;
    let excluded = |p: &PeerId| {
        reputations
            .iter()
            .any(|r| r.peer == p.to_string() && crate::scheduler::reputation::is_excluded(r))
    };
    let (honest_ids, adversary_ids) = {
        let pop = population.lock().unwrap_or_else(|p| p.into_inner());
        (pop.honest_ids.clone(), pop.adversary_ids.clone())
    };
    shutdown.cancel();
    let _ = task.await;
    deliver.abort();
    let chunks = f64::from(opts.chunks.max(1));
    let mut names: Vec<&str> = mix
        .iter()
        .flat_map(|(_, s)| s.iter().map(|s| s.name()))
        .collect();
    names.dedup();
    Ok(TrustFigures {
        strategy: if names.is_empty() {
            "none".into()
        } else {
            names.join(",")
        },
        adversaries: mix.iter().fold(0.0, |sum, (f, _)| sum + f),
        lie_rate: opts.lie_rate,
        seed: opts.seed,
        sybil_spread: opts.sybil_spread,
        chunks: opts.chunks,
        peers: opts.peers,
        replication: if opts.fixed { "fixed" } else { "adaptive" },
        wrong_accepted: wrong,
        wrong_rate: f64::from(wrong) / chunks,
        chunks_failed: status.chunks_failed,
        job_state: status.state,
        job_error: status.error.clone(),
        honest_excluded: honest_ids.iter().filter(|p| excluded(p)).count(),
        honest_total: honest_ids.len(),
        adversaries_excluded: adversary_ids.iter().filter(|p| excluded(p)).count(),
        adversaries_total: adversary_ids.len(),
        replicas_per_chunk: (peer_runs + own_runs) as f64 / chunks,
        replicas_per_chunk_after_warmup: late_runs as f64 / f64::from((opts.chunks - half).max(1)),
        peer_replicas_per_chunk: peer_runs as f64 / chunks,
        submitter_runs_per_chunk: own_runs as f64 / chunks,
        unreplicated: status.trust.unreplicated,
        spot_checks: status.trust.spot_checks,
        plants: status.trust.plants,
        refereed: status.trust.refereed,
        caught: status.trust.caught,
        reverified: status.trust.reverified,
        withdrawn: status.trust.withdrawn,
        seconds,
    })
}

impl TrustBench {
    pub(super) fn execute(self) -> anyhow::Result<ExitCode> {
        // One thread: the scheduler, the simulated peers and the deliveries take turns
        // in the same order every run (with --seed, the draws are the same too).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let runs: Vec<TrustBench> = if self.table {
            let none = TrustBench {
                strategy: Vec::new(),
                adversaries: 0.0,
                liars: 0.0,
                colluders: 0.0,
                lazy: 0.0,
                ..self.clone()
            };
            let mut runs = vec![none.clone()];
            for s in Strategy::ALL {
                for f in [0.1, 0.2, 0.3] {
                    runs.push(TrustBench {
                        strategy: vec![s],
                        adversaries: f,
                        ..none.clone()
                    });
                }
            }
            runs
        } else {
            vec![self.clone()]
        };
        let mut ok = true;
        for opts in &runs {
            let figures = runtime.block_on(run(opts, TrustPolicy::default()))?;
            ok &= figures.wrong_accepted == 0
                && figures.honest_excluded == 0
                && figures.job_state == JobState::Done;
            if self.json {
                println!("{}", serde_json::to_string(&figures)?);
            } else {
                print_figures(&figures);
            }
        }
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        })
    }
}

fn print_figures(f: &TrustFigures) {
    println!(
        "{} chunks, {} peers, {:.0} % adversaries playing {} (lie rate {}), seed {}, {} replication:",
        f.chunks,
        f.peers,
        f.adversaries * 100.0,
        f.strategy,
        f.lie_rate,
        f.seed,
        f.replication
    );
    println!(
        "  wrong accepted {}, honest excluded {}/{}, job {:?}, failed chunks {}",
        f.wrong_accepted, f.honest_excluded, f.honest_total, f.job_state, f.chunks_failed
    );
    println!(
        "  replicas/chunk {:.3} (after warm-up {:.3}; peers {:.3}, submitter {:.3})",
        f.replicas_per_chunk,
        f.replicas_per_chunk_after_warmup,
        f.peer_replicas_per_chunk,
        f.submitter_runs_per_chunk
    );
    println!(
        "  unreplicated {}, spot checks {}, plants {}, refereed {}, caught {}, re-verified {}, withdrawn {}, adversaries excluded {}/{}, {:.1} s",
        f.unreplicated,
        f.spot_checks,
        f.plants,
        f.refereed,
        f.caught,
        f.reverified,
        f.withdrawn,
        f.adversaries_excluded,
        f.adversaries_total,
        f.seconds
    );
    if let Some(error) = &f.job_error {
        println!("  the job ended {:?}: {error}", f.job_state);
    }
}
