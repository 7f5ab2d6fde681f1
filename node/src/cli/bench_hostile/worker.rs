//! Hostile workers of `bench hostile`: attacks on the target as a submitter (its
//! result intake, and what its CLI prints of the strings peers send). The target is
//! given a small job of its own through its control API; the hostile peer
//! advertises capacity, takes the target's offers and answers them as the attack
//! wants.

use std::sync::Arc;
use std::time::Duration;

use libp2p::identity;
use tokio::sync::mpsc;

use super::flood::Tally;
use super::peer::{HostilePeer, Msg, Offer, PeerSetup, Proto};
use super::target::run_cli;
use super::{Env, Findings};
use crate::cli::client::ApiClient;
use crate::config::DataDir;
use crate::net::protocol::{
    Assignment, BlobHash, CapacityAdvert, ChunkResult, JobId, PROTOCOL_VERSION, Payload,
    RejectReason, ResultBatch, ResultContext, TaskReply, WireOutcome,
};
use crate::sandbox::{JobModule, Sandbox};
use crate::scheduler::{JobSpec, Replication, SubmitRequest};

/// The job the target is given: a small montecarlo, two replicas. Another example
/// than the honest job's, so that the target has not compiled that one already.
const TARGET_JOB: (&str, &str) = (
    "montecarlo",
    r#"{"samples": 200000, "chunks": 4, "seed": 7}"#,
);

/// An advert a modest worker would send.
fn modest_advert() -> CapacityAdvert {
    CapacityAdvert {
        version: PROTOCOL_VERSION,
        seq: 1,
        slots_total: 4,
        slots_free: 4,
        cores: 4,
        memory_limit: 512 << 20,
        fuel_per_sec: 1_000_000_000,
        features: Vec::new(),
    }
}

/// Starts a hostile worker (it answers capacity queries and hands offers to the
/// attack) and connects it to the target.
async fn hostile_worker(
    env: &Env,
    setup: PeerSetup,
) -> anyhow::Result<(Arc<HostilePeer>, mpsc::Receiver<Offer>)> {
    let (tx, rx) = mpsc::channel(64);
    let peer = HostilePeer::spawn(PeerSetup {
        advert: Some(modest_advert()),
        offers: Some(tx),
        ..setup
    })?;
    peer.connect(&env.addr, env.target)
        .await
        .map_err(|e| anyhow::anyhow!("connecting: {e}"))?;
    Ok((Arc::new(peer), rx))
}

/// Submits [`TARGET_JOB`] to the target through its control API.
async fn target_job(env: &Env) -> anyhow::Result<JobId> {
    let data_dir = env.data_dir.clone();
    tokio::task::spawn_blocking(move || {
        let client = ApiClient::connect(&DataDir::resolve(Some(data_dir)))?;
        let wasm = peergrid_jobs::find(TARGET_JOB.0)
            .ok_or_else(|| anyhow::anyhow!("the {} example", TARGET_JOB.0))?
            .wasm;
        let blob: serde_json::Value = client.post_bytes("/v1/blobs", wasm)?;
        let module = blob["hash"].as_str().unwrap_or_default().to_string();
        let job: serde_json::Value = client.post_json(
            "/v1/jobs",
            &SubmitRequest {
                name: TARGET_JOB.0.into(),
                module,
                params: Some(serde_json::from_str(TARGET_JOB.1)?),
                inputs: None,
                spec: Some(JobSpec {
                    replication: Replication::Fixed,
                    soft_timeout: Duration::from_secs(600),
                    ..JobSpec::default()
                }),
            },
        )?;
        job["id"]
            .as_str()
            .and_then(crate::scheduler::parse_job_id)
            .ok_or_else(|| anyhow::anyhow!("the target refused the job: {job}"))
    })
    .await?
}

/// The target job's module, loaded in a sandbox of the attacker's own.
async fn target_module() -> anyhow::Result<(Sandbox, JobModule)> {
    tokio::task::spawn_blocking(|| {
        let sandbox = Sandbox::new(Default::default())?;
        let wasm = peergrid_jobs::find(TARGET_JOB.0)
            .ok_or_else(|| anyhow::anyhow!("the {} example", TARGET_JOB.0))?
            .wasm;
        let module = sandbox.load(wasm)?;
        anyhow::Ok((sandbox, module))
    })
    .await?
}

/// A result for `a`, signed by `key` for the target, with the given outcome.
fn signed(
    key: &identity::Keypair,
    env: &Env,
    job_id: JobId,
    a: &Assignment,
    outcome: WireOutcome,
    output: Vec<u8>,
) -> ChunkResult {
    let mut result = ChunkResult {
        job_id,
        chunk: a.chunk,
        attempt: a.attempt,
        outcome,
        output_hash: BlobHash::of(&output),
        output: (!output.is_empty()).then_some(Payload::Inline(output)),
        fuel_used: 1,
        exec_micros: 1,
        signature: Vec::new(),
    };
    let ctx = ResultContext {
        submitter: env.target,
        module: a.module,
        input: a.input.hash(),
    };
    result.signature = key.sign(&result.signed_bytes(&ctx)).unwrap_or_default();
    result
}

/// Takes every assignment of `offer` and answers each with `answer`'s result, in
/// one batch; returns the results. Offers from anyone but the target (the honest
/// submitter finds the hostile worker through the target's DHT) are refused: the
/// attack is on the target alone.
async fn take(
    peer: &HostilePeer,
    env: &Env,
    offer: Offer,
    answer: impl Fn(&Assignment) -> (WireOutcome, Vec<u8>) + Send + 'static,
) -> Vec<ChunkResult> {
    if offer.from != env.target {
        let rejected = offer
            .assignments
            .iter()
            .map(|a| (a.chunk, a.attempt, RejectReason::NotAccepting))
            .collect();
        let _ = offer.reply.send(TaskReply::Offer {
            accepted: Vec::new(),
            rejected,
        });
        return Vec::new();
    }
    let accepted = offer
        .assignments
        .iter()
        .map(|a| (a.chunk, a.attempt))
        .collect();
    let _ = offer.reply.send(TaskReply::Offer {
        accepted,
        rejected: Vec::new(),
    });
    let (key, env2, job_id, assignments) = (
        peer.key.clone(),
        env.clone(),
        offer.job_id,
        offer.assignments,
    );
    let results = tokio::task::spawn_blocking(move || {
        assignments
            .iter()
            .map(|a| {
                let (outcome, output) = answer(a);
                signed(&key, &env2, job_id, a, outcome, output)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let batch = ResultBatch {
        results: results.clone(),
    };
    let _ = peer
        .request(env.target, Proto::Result, Msg::encode(&batch))
        .await;
    results
}

/// Runs an assignment honestly in `sandbox`.
fn honestly(sandbox: &Sandbox, module: &JobModule, a: &Assignment) -> (WireOutcome, Vec<u8>) {
    let input = match &a.input {
        Payload::Inline(bytes) => bytes.clone(),
        Payload::Blob { .. } => Vec::new(),
    };
    let exec = sandbox.run_chunk(module, &input, &a.limits);
    crate::worker::wire_outcome(exec.outcome)
        .unwrap_or((WireOutcome::Invalid("cancelled".into()), Vec::new()))
}

/// `result-replay`: a worker that takes the target's offers, answers them honestly
/// (its results are right and signed), then sends one of its signed results again,
/// 100 000 times, in batches as large as a message allows. Tests that duplicate and
/// no-longer-live results are dropped before any signature check and that the
/// replayer is banned; the target's work as a worker (the honest job) must not
/// suffer.
pub(super) async fn result_replay(env: Env) -> anyhow::Result<Findings> {
    let copies = env.n(100_000, 2_000);
    let per_batch = env.n(10_000, 500);
    let (peer, mut offers) = hostile_worker(&env, PeerSetup::on(env.ip)).await?;
    let (sandbox, module) = target_module().await?;
    let job = target_job(&env).await?;
    env.engage();
    let mut first = None;
    while first.is_none() {
        tokio::select! {
            Some(offer) = offers.recv() => {
                let (s, m) = (sandbox.clone(), module.clone());
                first = take(&peer, &env, offer, move |a| honestly(&s, &m, a)).await.into_iter().next();
            }
            _ = env.stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(60)) => break,
        }
    }
    let Some(first) = first else {
        return Ok(Findings {
            detail: "the target never offered this worker a chunk: nothing to replay".into(),
            offenders: vec![peer.id],
            bound_held: None,
        });
    };
    // Later offers are answered honestly too, so the target's job can finish.
    let server = {
        let (peer, env2) = (peer.clone(), env.clone());
        tokio::spawn(async move {
            while let Some(offer) = offers.recv().await {
                let (s, m) = (sandbox.clone(), module.clone());
                take(&peer, &env2, offer, move |a| honestly(&s, &m, a)).await;
            }
        })
    };
    let batch = Msg::encode(&ResultBatch {
        results: vec![first; per_batch],
    });
    let tally = Tally::default();
    let mut sent = 0;
    while sent < copies && !env.stop.is_cancelled() {
        tally.send(&peer, &env, Proto::Result, batch.clone()).await;
        sent += per_batch;
    }
    env.stop.cancelled().await;
    server.abort();
    Ok(Findings {
        detail: format!(
            "job {}: {sent} copies of one signed result in batches of {per_batch} ({:.1} MB each): {}",
            crate::scheduler::job_id_hex(&job),
            batch.bytes.len() as f64 / 1e6,
            tally.summary()
        ),
        offenders: vec![peer.id],
        bound_held: None,
    })
}

/// Terminal escapes (clear screen, set the window title, colours) and a bell.
const ESCAPES: &str = "\u{1b}[2J\u{1b}[H\u{1b}]0;pwned\u{7}\u{1b}[31m";

/// `terminal-escape`: a worker whose agent string, listen address and trap
/// messages carry terminal escapes and kilobytes of text, and a peer whose protocol
/// version does too; then `peergrid peers`, `status`, `jobs` and the target job's
/// `status` and `--evidence` are run against the target. Tests that peer strings
/// are escaped and capped in the CLI: no escape byte and no line over 2 kB in what
/// they print (`bound_held`).
pub(super) async fn terminal_escape(env: Env) -> anyhow::Result<Findings> {
    // identify messages are at most 4 KiB: the agent string fits in that.
    let agent = format!("{ESCAPES}agent{}", "A".repeat(3000));
    let external = format!("/dns4/{}evil.example/tcp/1", "\u{1b}[2J")
        .parse()
        .into_iter()
        .collect();
    let (peer, mut offers) = hostile_worker(
        &env,
        PeerSetup {
            agent,
            external,
            ..PeerSetup::on(env.ip)
        },
    )
    .await?;
    let foreign = HostilePeer::spawn(PeerSetup {
        identify_version: format!("/peergrid/9.0.0{ESCAPES}{}", "V".repeat(2000)),
        ..PeerSetup::on(env.ip)
    })?;
    let _ = foreign.connect(&env.addr, env.target).await;
    let job = target_job(&env).await?;
    env.engage();
    let message = format!("{ESCAPES}trap{}", "T".repeat(10_000));
    let mut answered = 0;
    loop {
        tokio::select! {
            Some(offer) = offers.recv() => {
                let message = message.clone();
                answered += take(&peer, &env, offer, move |a| {
                    let outcome = if a.chunk % 2 == 0 {
                        WireOutcome::Trap { kind: format!("{ESCAPES}panic"), message: message.clone() }
                    } else {
                        WireOutcome::Invalid(message.clone())
                    };
                    (outcome, Vec::new())
                }).await.len();
            }
            _ = env.stop.cancelled() => break,
        }
    }
    let id = crate::scheduler::job_id_hex(&job);
    let (binary, data_dir) = (env.binary.clone(), env.data_dir.clone());
    let checks = tokio::task::spawn_blocking(move || {
        let commands: [&[&str]; 5] = [
            &["peers"],
            &["status"],
            &["jobs"],
            &["status", &id],
            &["status", &id, "--evidence"],
        ];
        commands
            .iter()
            .map(|args| {
                let out = run_cli(&binary, &data_dir, args, Duration::from_secs(30));
                (args.join(" "), out)
            })
            .collect::<Vec<_>>()
    })
    .await?;
    let mut clean = true;
    let mut notes = Vec::new();
    for (command, out) in checks {
        match out {
            Ok(bytes) => {
                let escapes = bytes.iter().filter(|b| **b == 0x1b || **b == 0x07).count();
                let longest = bytes
                    .split(|b| *b == b'\n')
                    .map(<[u8]>::len)
                    .max()
                    .unwrap_or(0);
                if escapes > 0 || longest > 2048 {
                    clean = false;
                }
                notes.push(format!(
                    "`{command}`: {escapes} escape bytes, longest line {longest} B"
                ));
            }
            Err(e) => {
                clean = false;
                notes.push(format!("`{command}`: {e}"));
            }
        }
    }
    Ok(Findings {
        detail: format!("{answered} nasty results sent; {}", notes.join("; ")),
        offenders: vec![peer.id, foreign.id],
        bound_held: Some(clean),
    })
}
