//! `peergrid bench trust`: how many wrong results the real scheduler and
//! verification code accept when some peers lie, alone or together, and how much
//! extra work the grid pays for that safety.
//!
//! The scheduler runs as in a node (its actor, SQLite store, sandbox, trust and
//! placement rules), but its network is a [simulation](crate::net::sim) of a
//! population of peers: honest ones, independent liars (each wrong in its own way),
//! colluders (all wrong the same way, on the same chunks) and lazy peers that accept
//! work and never answer. Honest answers are the real module's, run once per chunk in
//! the sandbox; every result is signed with its peer's own key, as on the wire.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::net::protocol::{
    BlobHash, CapacityAdvert, ChunkResult, PROTOCOL_VERSION, Payload, ResultBatch, TaskReply,
    TaskRequest, WireOutcome,
};
use crate::net::sim::SimulatedPeers;
use crate::net::{NetClient, PeerInfo, RequestError};
use crate::sandbox::{JobModule, Limits, Sandbox, SandboxConfig};
use crate::scheduler::{
    JobSpec, JobState, PlacementPolicy, Replication, Scheduler, SchedulerContext, SubmitRequest,
    TrustPolicy,
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
    /// Fraction of peers that are independent liars.
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    pub liars: f64,
    /// Fraction of peers that collude (the same wrong answer on the same chunks).
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    pub colluders: f64,
    /// Fraction of peers that accept work and never answer.
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    pub lazy: f64,
    /// How often liars and colluders lie (1: on every chunk; lower: they answer
    /// honestly in between to earn trust).
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub lie_rate: f64,
    /// Put every colluder in one /24 (Sybils on one network).
    #[arg(long)]
    pub sybil: bool,
    /// Fixed replication instead of adaptive (BOINC's fixed quorum 2, for comparison).
    #[arg(long)]
    pub fixed: bool,
    /// Run the table: colluders at 5, 10, 20 and 30 %, liars at 20 %, and no liars.
    #[arg(long)]
    pub table: bool,
    /// Seed of the population (which peers lie, and when).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub seed: u64,
    /// Print one JSON object (with --table: a list).
    #[arg(long)]
    pub json: bool,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct TrustFigures {
    /// Chunks in the job.
    pub chunks: u32,
    /// Simulated peers.
    pub peers: usize,
    /// Fraction of independent liars.
    pub liars: f64,
    /// Fraction of colluders.
    pub colluders: f64,
    /// Fraction of lazy peers.
    pub lazy: f64,
    /// How often liars lie.
    pub lie_rate: f64,
    /// `adaptive` or `fixed`.
    pub replication: &'static str,
    /// Chunks whose accepted output differs from the honest one.
    pub wrong_accepted: u32,
    /// `wrong_accepted / chunks`.
    pub wrong_rate: f64,
    /// Chunks that could not be verified.
    pub chunks_failed: u32,
    /// Replicas issued to peers, plus runs by the submitter itself, per chunk.
    pub replicas_per_chunk: f64,
    /// The same over the second half of the chunks (after warm-up).
    pub replicas_per_chunk_after_warmup: f64,
    /// Replicas issued to peers per chunk.
    pub peer_replicas_per_chunk: f64,
    /// Runs the submitter did itself (witnesses and spot checks) per chunk.
    pub submitter_runs_per_chunk: f64,
    /// Chunks verified on one trusted peer's word.
    pub unreplicated: u32,
    /// Spot checks run by the submitter.
    pub spot_checks: u32,
    /// Planted chunks issued.
    pub plants: u32,
    /// Chunks re-verified after their peer was found wrong.
    pub reverified: u32,
    /// Lying peers (liars and colluders) excluded by the end.
    pub liars_excluded: usize,
    /// Lying peers in all.
    pub liars_total: usize,
    /// How the job ended (a wrong output accepted can make its merge fail).
    pub job_state: JobState,
    /// Why it failed, if it did.
    pub job_error: Option<String>,
    /// Wall time of the run.
    pub seconds: f64,
}

/// What a simulated peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Honest,
    Liar,
    Colluder,
    Lazy,
}

struct SimPeer {
    key: Keypair,
    id: PeerId,
    kind: Kind,
    info: PeerInfo,
}

/// The population, answering offers at once.
struct Population {
    peers: Vec<SimPeer>,
    by_id: HashMap<PeerId, usize>,
    honest: Arc<Honest>,
    lie_rate: f64,
    rng: StdRng,
    seed: u64,
    results: mpsc::UnboundedSender<(PeerId, ChunkResult)>,
}

/// Honest answers, computed in the real sandbox once per input.
struct Honest {
    sandbox: Sandbox,
    module: JobModule,
    cache: Mutex<HashMap<BlobHash, (WireOutcome, Vec<u8>)>>,
}

impl Honest {
    fn answer(&self, input: &[u8], limits: &Limits) -> (WireOutcome, Vec<u8>) {
        let hash = BlobHash::of(input);
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
        {
            return hit.clone();
        }
        let exec = self.sandbox.run_chunk(&self.module, input, limits);
        let answer =
            crate::worker::wire_outcome(exec.outcome).unwrap_or((WireOutcome::Timeout, Vec::new()));
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, answer.clone());
        answer
    }
}

impl Population {
    /// Whether colluders lie about this input: the same decision for all of them.
    fn colluders_lie(&self, input: &[u8]) -> bool {
        let mut h = blake3::Hasher::new();
        h.update(&self.seed.to_le_bytes());
        h.update(b"collude");
        h.update(input);
        let roll = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or([0; 8]));
        (roll as f64 / u64::MAX as f64) < self.lie_rate
    }
}

impl SimulatedPeers for Population {
    fn peers(&mut self) -> Vec<PeerInfo> {
        self.peers.iter().map(|p| p.info.clone()).collect()
    }

    fn task(&mut self, peer: PeerId, request: TaskRequest) -> Result<TaskReply, RequestError> {
        let Some(&i) = self.by_id.get(&peer) else {
            return Err(RequestError::Unreachable);
        };
        let (job_id, assignments) = match request {
            TaskRequest::Offer {
                job_id,
                assignments,
            } => (job_id, assignments),
            TaskRequest::Cancel { .. } => return Ok(TaskReply::Cancelled),
        };
        let kind = self.peers[i].kind;
        let mut accepted = Vec::new();
        for a in assignments {
            accepted.push((a.chunk, a.attempt));
            if kind == Kind::Lazy {
                continue;
            }
            let Payload::Inline(input) = &a.input else {
                continue;
            };
            let (outcome, mut output) = self.honest.answer(input, &a.limits);
            let lies = match kind {
                Kind::Liar => self.rng.random_bool(self.lie_rate.clamp(0.0, 1.0)),
                Kind::Colluder => self.colluders_lie(input),
                Kind::Honest | Kind::Lazy => false,
            };
            if lies {
                let mut h = blake3::Hasher::new();
                h.update(&output);
                match kind {
                    // Each liar is wrong in its own way, every time.
                    Kind::Liar => h.update(&self.rng.random::<u64>().to_le_bytes()),
                    // Colluders agree on one wrong answer.
                    _ => h.update(b"the colluders' answer"),
                };
                output = h.finalize().as_bytes().to_vec();
            }
            let output_hash = BlobHash::of(&output);
            let mut result = ChunkResult {
                job_id,
                chunk: a.chunk,
                attempt: a.attempt,
                outcome,
                output_hash,
                output: (!output.is_empty()).then_some(Payload::Inline(output)),
                fuel_used: 1,
                exec_micros: 1,
                signature: Vec::new(),
            };
            result.signature = self.peers[i]
                .key
                .sign(&result.signed_bytes())
                .unwrap_or_default();
            let _ = self.results.send((peer, result));
        }
        Ok(TaskReply::Offer {
            accepted,
            rejected: Vec::new(),
        })
    }
}

/// A peer's key drawn from the seed (`index` 0 is the submitter), so that a run is
/// the same peers every time.
fn seeded_key(seed: u64, index: u64) -> Keypair {
    let mut h = blake3::Hasher::new();
    h.update(b"peergrid bench trust key");
    h.update(&seed.to_le_bytes());
    h.update(&index.to_le_bytes());
    let bytes: [u8; 32] = *h.finalize().as_bytes();
    Keypair::ed25519_from_bytes(bytes).unwrap_or_else(|_| Keypair::generate_ed25519())
}

/// Runs one population through the real scheduler and counts what it accepted.
pub async fn run(opts: &TrustBench, policy: TrustPolicy) -> anyhow::Result<TrustFigures> {
    if opts.peers < 3 {
        bail!("--peers must be at least 3");
    }
    for (name, f) in [
        ("--liars", opts.liars),
        ("--colluders", opts.colluders),
        ("--lazy", opts.lazy),
        ("--lie-rate", opts.lie_rate),
    ] {
        if !(0.0..=1.0).contains(&f) {
            bail!("{name} must be a fraction between 0 and 1, got {f}");
        }
    }
    if opts.liars + opts.colluders + opts.lazy > 1.0 {
        bail!("--liars, --colluders and --lazy add up to more than all peers");
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

    // The population: which peers are what is drawn from the seed.
    let n = opts.peers;
    let count = |f: f64| (f * n as f64).round() as usize;
    let (liars, colluders, lazy) = (count(opts.liars), count(opts.colluders), count(opts.lazy));
    let mut kinds: Vec<Kind> = std::iter::repeat_n(Kind::Liar, liars)
        .chain(std::iter::repeat_n(Kind::Colluder, colluders))
        .chain(std::iter::repeat_n(Kind::Lazy, lazy))
        .collect();
    kinds.resize(n.max(kinds.len()), Kind::Honest);
    let mut rng = StdRng::seed_from_u64(opts.seed);
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.random_range(0..=i));
    }
    let mut peers = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let key = seeded_key(opts.seed, i as u64 + 1);
        let id = key.public().to_peer_id();
        let ip = if opts.sybil && *kind == Kind::Colluder {
            format!("10.66.66.{}", 1 + i % 250)
        } else {
            format!("10.{}.{}.1", 1 + i / 250, i % 250)
        };
        let info = PeerInfo {
            peer_id: id.to_string(),
            addrs: Vec::new(),
            connected: true,
            rtt_ms: None,
            agent: None,
            foreign_version: None,
            advert: Some(CapacityAdvert {
                version: PROTOCOL_VERSION,
                seq: 1,
                slots_total: 4,
                slots_free: 4,
                cores: 4,
                memory_limit: 1 << 30,
                fuel_per_sec: 1_000_000_000,
                features: Vec::new(),
            }),
            advert_age_s: Some(0.0),
            offences: 0,
            ip: Some(ip),
            discovered: Some("dht".into()),
        };
        peers.push(SimPeer {
            key,
            id,
            kind: *kind,
            info,
        });
    }
    let lying: Vec<PeerId> = peers
        .iter()
        .filter(|p| matches!(p.kind, Kind::Liar | Kind::Colluder))
        .map(|p| p.id)
        .collect();
    let (results_tx, mut results_rx) = mpsc::unbounded_channel();
    let population = Population {
        by_id: peers.iter().enumerate().map(|(i, p)| (p.id, i)).collect(),
        peers,
        honest: honest.clone(),
        lie_rate: opts.lie_rate,
        rng: StdRng::seed_from_u64(opts.seed ^ 0x5eed),
        seed: opts.seed,
        results: results_tx,
    };
    let local = seeded_key(opts.seed, 0);
    let net = NetClient::simulated(&local, population);
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
    // Results go back to the scheduler in per-peer batches, as workers send them.
    let deliver = {
        let scheduler = scheduler.clone();
        tokio::spawn(async move {
            while let Some(first) = results_rx.recv().await {
                // Ordered by peer: the same deliveries in the same order every run.
                let mut batches: std::collections::BTreeMap<PeerId, Vec<ChunkResult>> =
                    Default::default();
                batches.entry(first.0).or_default().push(first.1);
                while let Ok((peer, result)) = results_rx.try_recv() {
                    batches.entry(peer).or_default().push(result);
                }
                for (peer, results) in batches {
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
            }
        })
    };

    let started = Instant::now();
    let module_hash = blobs.put(example.wasm)?;
    let spec = JobSpec {
        soft_timeout: Duration::from_secs(1),
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
    let mut watch = scheduler
        .subscribe(id)
        .await
        .context("the job disappeared")?;
    let status = tokio::time::timeout(Duration::from_secs(900), async {
        loop {
            let status = watch.borrow_and_update().clone();
            if status.state.is_final() {
                return Ok(status);
            }
            if watch.changed().await.is_err() {
                return Err(anyhow::anyhow!("the scheduler stopped: {status:?}"));
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("the job did not finish in 15 minutes"))??;
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
        let (_, honest_output) = honest.answer(input, &spec.limits);
        if *hash != Some(BlobHash::of(&honest_output)) {
            wrong += 1;
        }
    }
    let local_id = local.public().to_peer_id().to_string();
    let (mut peer_runs, mut own_runs, mut late_runs) = (0u64, 0u64, 0u64);
    let half = opts.chunks / 2;
    for r in db.replicas(id)? {
        if r.state == crate::types::ReplicaStatus::Offered {
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
    let liars_excluded = lying
        .iter()
        .filter(|p| {
            reputations
                .iter()
                .any(|r| r.peer == p.to_string() && crate::scheduler::reputation::is_excluded(r))
        })
        .count();
    shutdown.cancel();
    let _ = task.await;
    deliver.abort();
    let chunks = f64::from(opts.chunks.max(1));
    Ok(TrustFigures {
        chunks: opts.chunks,
        peers: n,
        liars: opts.liars,
        colluders: opts.colluders,
        lazy: opts.lazy,
        lie_rate: opts.lie_rate,
        replication: if opts.fixed { "fixed" } else { "adaptive" },
        wrong_accepted: wrong,
        wrong_rate: f64::from(wrong) / chunks,
        chunks_failed: status.chunks_failed,
        replicas_per_chunk: (peer_runs + own_runs) as f64 / chunks,
        replicas_per_chunk_after_warmup: late_runs as f64 / f64::from((opts.chunks - half).max(1)),
        peer_replicas_per_chunk: peer_runs as f64 / chunks,
        submitter_runs_per_chunk: own_runs as f64 / chunks,
        unreplicated: status.trust.unreplicated,
        spot_checks: status.trust.spot_checks,
        plants: status.trust.plants,
        reverified: status.trust.reverified,
        liars_excluded,
        liars_total: lying.len(),
        job_state: status.state,
        job_error: status.error.clone(),
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
            let mut runs = vec![TrustBench {
                liars: 0.0,
                colluders: 0.0,
                ..self.clone()
            }];
            runs.push(TrustBench {
                liars: 0.2,
                colluders: 0.0,
                ..self.clone()
            });
            for f in [0.05, 0.1, 0.2, 0.3] {
                runs.push(TrustBench {
                    liars: 0.0,
                    colluders: f,
                    ..self.clone()
                });
            }
            runs
        } else {
            vec![self.clone()]
        };
        let mut all = Vec::new();
        for opts in &runs {
            let figures = runtime.block_on(run(opts, TrustPolicy::default()))?;
            if !self.json {
                print_figures(&figures);
            }
            all.push(figures);
        }
        if self.json {
            if self.table {
                println!("{}", serde_json::to_string(&all)?);
            } else if let Some(f) = all.first() {
                println!("{}", serde_json::to_string(f)?);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn print_figures(f: &TrustFigures) {
    println!(
        "{} chunks, {} peers ({:.0} % liars, {:.0} % colluders, {:.0} % lazy, lie rate {}), {} replication:",
        f.chunks,
        f.peers,
        f.liars * 100.0,
        f.colluders * 100.0,
        f.lazy * 100.0,
        f.lie_rate,
        f.replication
    );
    println!(
        "  wrong accepted {} ({:.4} %), failed {}, replicas/chunk {:.3} (after warm-up {:.3}; peers {:.3}, submitter {:.3})",
        f.wrong_accepted,
        f.wrong_rate * 100.0,
        f.chunks_failed,
        f.replicas_per_chunk,
        f.replicas_per_chunk_after_warmup,
        f.peer_replicas_per_chunk,
        f.submitter_runs_per_chunk
    );
    println!(
        "  unreplicated {}, spot checks {}, plants {}, re-verified {}, liars excluded {}/{}, {:.1} s",
        f.unreplicated,
        f.spot_checks,
        f.plants,
        f.reverified,
        f.liars_excluded,
        f.liars_total,
        f.seconds
    );
    if let Some(error) = &f.job_error {
        println!("  the job ended {:?}: {error}", f.job_state);
    }
}
