//! Hostile submitters of `bench hostile`: attacks on the target as a worker (its
//! admission, slots, outbox, module loading and blob fetching). The hostile peer
//! serves its modules and inputs on the blob protocol and offers chunks the way a
//! submitter does, round after round, until `env.stop` fires.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::modules;
use super::peer::{Acks, Blobs, HostilePeer, Msg, PeerSetup, Proto, serve};
use super::{Env, Findings};
use crate::net::protocol::{
    Assignment, BlobHash, JobId, Limits, Payload, RejectReason, TaskReply, TaskRequest,
};
use crate::types::now_ms;

/// A hostile submitter: one identity, the blobs it serves, one job of its own, and
/// what the target answered to its offers.
struct Submitter {
    peer: Arc<HostilePeer>,
    blobs: Blobs,
    job: JobId,
    next_chunk: u32,
    accepted: u64,
    rejected: BTreeMap<String, u64>,
    failed: BTreeMap<String, u64>,
}

impl Submitter {
    async fn start(env: &Env, acks: Acks) -> anyhow::Result<Self> {
        let blobs = Blobs::default();
        let peer = HostilePeer::spawn(PeerSetup {
            blobs: blobs.clone(),
            acks,
            ..PeerSetup::on(env.ip)
        })?;
        peer.connect(&env.addr, env.target)
            .await
            .map_err(|e| anyhow::anyhow!("connecting: {e}"))?;
        Ok(Self {
            peer: Arc::new(peer),
            blobs,
            job: JobId(rand::random()),
            next_chunk: 0,
            accepted: 0,
            rejected: BTreeMap::new(),
            failed: BTreeMap::new(),
        })
    }

    /// Offers `count` new chunks of `module` with these inputs and limits; returns
    /// how many the target took.
    async fn offer(
        &mut self,
        env: &Env,
        module: BlobHash,
        inputs: impl IntoIterator<Item = Payload>,
        limits: Limits,
    ) -> u64 {
        let assignments: Vec<Assignment> = inputs
            .into_iter()
            .map(|input| {
                self.next_chunk += 1;
                Assignment {
                    chunk: self.next_chunk,
                    attempt: 0,
                    module,
                    input,
                    limits,
                    soft_deadline_ms: now_ms() + 60_000,
                }
            })
            .collect();
        let request = TaskRequest::Offer {
            job_id: self.job,
            assignments,
        };
        let reply = self
            .peer
            .request(env.target, Proto::Task, Msg::encode(&request))
            .await
            .and_then(|b| postcard::from_bytes::<TaskReply>(&b).map_err(|e| e.to_string()));
        match reply {
            Ok(TaskReply::Offer { accepted, rejected }) => {
                self.accepted += accepted.len() as u64;
                for (_, _, reason) in rejected {
                    *self.rejected.entry(reason_name(&reason)).or_default() += 1;
                }
                accepted.len() as u64
            }
            Ok(other) => {
                *self.failed.entry(format!("{other:?}")).or_default() += 1;
                0
            }
            Err(e) => {
                *self.failed.entry(e.chars().take(60).collect()).or_default() += 1;
                0
            }
        }
    }

    fn results(&self) -> u64 {
        self.peer.stats.results.load(Ordering::Relaxed)
    }

    /// "A accepted, refused: reason ×n …, failed: …, R results received".
    fn summary(&self) -> String {
        let list = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "none".to_string()
            } else {
                m.iter()
                    .map(|(r, n)| format!("{r} ×{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        format!(
            "{} chunks accepted; refused: {}; offers failed: {}; {} results received ({:.1} MB)",
            self.accepted,
            list(&self.rejected),
            list(&self.failed),
            self.results(),
            self.peer.stats.result_bytes.load(Ordering::Relaxed) as f64 / 1e6
        )
    }
}

fn reason_name(reason: &RejectReason) -> String {
    match reason {
        RejectReason::BadModule(why) => {
            format!("BadModule({})", why.chars().take(40).collect::<String>())
        }
        // The variant's name: counted by kind, not by the numbers it carries.
        other => format!("{other:?}")
            .split(['(', ' ', '{'])
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

/// Limits an honest submitter would ask for these small chunks.
const MODEST: Limits = Limits {
    fuel: 1_000_000_000,
    memory_bytes: 64 << 20,
    timeout: Duration::from_secs(60),
    max_output_bytes: 16 << 20,
};

/// Sleeps `d` unless the attack is stopped first; false when stopped.
async fn pause(env: &Env, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = env.stop.cancelled() => false,
    }
}

/// `outbox-fill`: a submitter that never acknowledges a result: it keeps offering
/// chunks whose outputs are large (inline) and answers every result batch with an
/// empty acknowledgement, so they stay in the target's outbox. Tests the
/// per-submitter outbox quota and expiry, and that the outbox is not read whole into
/// memory: the honest job must still be taken and delivered.
pub(super) async fn outbox_fill(env: Env) -> anyhow::Result<Findings> {
    let size: u32 = env.n(128 << 10, 16 << 10);
    let engage_at = env.n(1000, 100);
    let most = env.n(12_000, 2_000);
    let mut s = Submitter::start(&env, Acks::Never).await?;
    let module = serve(&s.blobs, modules::sized_output());
    let started = tokio::time::Instant::now();
    let mut engaged = false;
    while !env.stop.is_cancelled() {
        if s.accepted < most {
            let salt = s.next_chunk as u64;
            let inputs = (0..16).map(|i| Payload::Inline(modules::sized_input(size, salt + i)));
            s.offer(&env, module, inputs, MODEST).await;
        }
        // Under way once its outbox quota is full (its offers are refused as
        // `OutboxFull`: the most it can hold there), or after many results.
        if !engaged
            && (s.rejected.contains_key("OutboxFull")
                || s.accepted >= engage_at
                || started.elapsed() > Duration::from_secs(env.n(40, 20)))
        {
            env.engage();
            engaged = true;
        }
        if !pause(&env, Duration::from_millis(50)).await {
            break;
        }
    }
    env.engage();
    let outbox = env.metric("peergrid_worker_outbox_results").await;
    Ok(Findings {
        detail: format!(
            "{} B outputs never acknowledged: {}; the target's outbox held {} results",
            size,
            s.summary(),
            outbox.map_or("?".into(), |o| o.to_string())
        ),
        offenders: vec![s.peer.id],
        bound_held: None,
    })
}

/// `oversized-batches`: a submitter (acknowledging honestly) whose chunks each
/// return just under the largest inline output (4 MiB), many at once: a batch of 64
/// of them would be 256 MiB, far over the 8 MiB message limit. Tests size-aware
/// batching: every result must reach it (`bound_held`), and the honest job too.
pub(super) async fn oversized_batches(env: Env) -> anyhow::Result<Findings> {
    let size = (crate::worker::INLINE_OUTPUT - 4096) as u32;
    let count = env.n(24, 6);
    let mut s = Submitter::start(&env, Acks::All).await?;
    let module = serve(&s.blobs, modules::sized_output());
    let mut engaged = false;
    while !env.stop.is_cancelled() {
        if s.accepted < count {
            let salt = s.next_chunk as u64;
            let want = (count - s.accepted).min(8);
            let inputs = (0..want).map(|i| Payload::Inline(modules::sized_input(size, salt + i)));
            s.offer(&env, module, inputs, MODEST).await;
        } else if !engaged {
            env.engage();
            engaged = true;
        }
        if !pause(&env, Duration::from_millis(200)).await {
            break;
        }
    }
    env.engage();
    // The honest job is over: give the last results time to arrive (the target
    // may still be running the last chunks on its one slot).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while s.results() < s.accepted && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Findings {
        detail: format!("{size} B outputs: {}", s.summary()),
        offenders: vec![s.peer.id],
        bound_held: Some(s.accepted > 0 && s.results() >= s.accepted),
    })
}

/// `greedy-limits`: offers of a module that never returns, with `u64::MAX` fuel, a
/// timeout of `u64::MAX` seconds and `u64::MAX` output bytes (memory within what
/// the worker lends), again and again. Tests worker-side maximum limits: the target
/// must refuse them with `LimitsTooHigh` (`bound_held`); a slot taken is held for
/// ever, and the honest job cannot run there.
pub(super) async fn greedy_limits(env: Env) -> anyhow::Result<Findings> {
    let per_offer = env.n(16, 4);
    let mut s = Submitter::start(&env, Acks::All).await?;
    let module = serve(&s.blobs, modules::endless());
    let greedy = Limits {
        fuel: u64::MAX,
        memory_bytes: 64 << 20,
        timeout: Duration::from_secs(u64::MAX),
        max_output_bytes: u64::MAX,
    };
    let mut rounds = 0;
    while !env.stop.is_cancelled() {
        let inputs = (0..per_offer).map(|i| Payload::Inline(vec![i as u8]));
        s.offer(&env, module, inputs, greedy).await;
        rounds += 1;
        if rounds == 2 {
            env.engage();
        }
        if !pause(&env, Duration::from_millis(500)).await {
            break;
        }
    }
    env.engage();
    let refused_right = s.rejected.get("LimitsTooHigh").copied().unwrap_or(0);
    Ok(Findings {
        detail: format!("endless chunks with u64::MAX limits: {}", s.summary()),
        offenders: vec![s.peer.id],
        bound_held: Some(s.accepted == 0 && refused_right > 0),
    })
}

/// `module-bomb`: offers chunks of bomb modules (megabytes of straight-line code,
/// tens of thousands of nested blocks, a hundred thousand functions, WAT text),
/// each importing a forbidden function, each round a freshly salted copy and the
/// first copy again. Tests size and shape caps checked by the parser before
/// compiling, no WAT from peers, the cache of refused hashes and the bounded compile
/// cache: refused at once, with memory, disk and the honest job's time unharmed.
pub(super) async fn module_bomb(env: Env) -> anyhow::Result<Findings> {
    let (bytes, depth, functions) = env.n((7_000_000, 100_000, 100_000), (300_000, 2_000, 3_000));
    let bombs =
        tokio::task::spawn_blocking(move || modules::bombs(bytes, depth, functions)).await?;
    let mut s = Submitter::start(&env, Acks::All).await?;
    let first: Vec<BlobHash> = bombs
        .iter()
        .map(|(_, m)| serve(&s.blobs, m.clone()))
        .collect();
    let mut round = 0u64;
    while !env.stop.is_cancelled() {
        round += 1;
        for (i, (_, module)) in bombs.iter().enumerate() {
            let salted = serve(&s.blobs, modules::salted(module, round));
            for hash in [salted, first[i]] {
                s.offer(&env, hash, [Payload::Inline(vec![0; 8])], MODEST)
                    .await;
            }
        }
        if round == 1 {
            env.engage();
        }
        if !pause(&env, Duration::from_secs(1)).await {
            break;
        }
    }
    env.engage();
    let sizes: Vec<String> = bombs
        .iter()
        .map(|(name, m)| format!("{name} {:.1} MB", m.len() as f64 / 1e6))
        .collect();
    Ok(Findings {
        detail: format!(
            "{round} rounds of bombs ({}): {}; {:.0} MB of modules served",
            sizes.join(", "),
            s.summary(),
            s.peer.stats.blob_bytes.load(Ordering::Relaxed) as f64 / 1e6
        ),
        offenders: vec![s.peer.id],
        bound_held: None,
    })
}

/// `blob-flood`: offers chunks whose inputs are distinct multi-megabyte blobs, so
/// the target fetches and stores each, and meanwhile keeps requests for 1 MiB pieces
/// of the honest job's module (and of random hashes) in flight. Tests the
/// free-space check and the blob cache limit, the fetch concurrency, and that
/// serving blobs does not delay offers and results.
pub(super) async fn blob_flood(env: Env) -> anyhow::Result<Findings> {
    let size = env.n(4 << 20, 512 << 10);
    let inputs_n = env.n(40, 4);
    let in_flight = env.n(32, 4);
    let mut s = Submitter::start(&env, Acks::All).await?;
    let module = serve(&s.blobs, modules::sized_output());
    let inputs: Vec<Payload> = (0..inputs_n)
        .map(|i| {
            let mut bytes = modules::sized_input(16, i as u64);
            bytes.resize(size, (i % 251) as u8);
            let hash = serve(&s.blobs, bytes);
            Payload::Blob {
                hash,
                size: size as u64,
            }
        })
        .collect();
    let requests = {
        let (env2, peer, hash) = (env.clone(), s.peer.clone(), env.honest_module);
        tokio::spawn(async move { super::flood::blob_requests(&env2, peer, hash, in_flight).await })
    };
    let mut next = 0;
    let mut engaged = false;
    while !env.stop.is_cancelled() {
        if next < inputs.len() {
            let batch: Vec<Payload> = inputs[next..(next + 4).min(inputs.len())].to_vec();
            let taken = s.offer(&env, module, batch, MODEST).await;
            next += taken as usize;
        }
        if !engaged {
            env.engage();
            engaged = true;
        }
        if !pause(&env, Duration::from_millis(500)).await {
            break;
        }
    }
    env.engage();
    let requests = requests.await.unwrap_or_default();
    Ok(Findings {
        detail: format!(
            "{next} inputs of {size} B offered: {}; {:.0} MB served to the target; piece requests: {requests}",
            s.summary(),
            s.peer.stats.blob_bytes.load(Ordering::Relaxed) as f64 / 1e6
        ),
        offenders: vec![s.peer.id],
        bound_held: None,
    })
}
