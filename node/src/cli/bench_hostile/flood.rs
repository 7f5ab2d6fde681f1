//! Floods of `bench hostile`: attacks on the network side of the target (its
//! connections, streams, buffers, peer book and dispatcher) from the attacker's one
//! loopback address. Each runs until `env.stop` fires and reports what the target
//! let through.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use tokio::net::TcpSocket;
use tokio::task::JoinSet;

use super::peer::{HostilePeer, Msg, Pace, PeerSetup, Proto};
use super::{Env, Findings};
use crate::net::protocol::{
    BlobRequest, CapacityAdvert, CapacityRequest, JobId, MAX_ADVERT_SLOTS, MAX_FEATURES,
    MAX_RESULT_BYTES, MAX_TASK_BYTES, PROTOCOL_VERSION, TaskRequest,
};

/// How long a flooding task waits after the target refused to connect to it.
const REFUSED_PAUSE: Duration = Duration::from_millis(50);

/// How a set of requests ended: answered, or failed (by reason), or still open.
#[derive(Debug, Default)]
pub(super) struct Tally {
    sent: AtomicU64,
    answered: AtomicU64,
    failed: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    /// Sends `msg` and counts how it ends.
    ///
    /// A request that fails because the target refuses to connect at all (the
    /// attacker's address banned) is followed by a pause of [`REFUSED_PAUSE`]:
    /// all an attacker can then do is open TCP connections the target closes at
    /// once, a flood for the kernel (a firewall rule), and this attacker shares the
    /// machine, and its process, with the honest nodes. Spinning on refused dials
    /// (a million in a 20 s round, 64 tasks) measured the attacker's own CPU use,
    /// which a real one spends on its own machine.
    pub(super) async fn send(&self, peer: &HostilePeer, env: &Env, proto: Proto, msg: Msg) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        match peer.request(env.target, proto, msg).await {
            Ok(_) => {
                self.answered.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.fail(&e);
                if e.contains("Failed to dial") {
                    tokio::time::sleep(REFUSED_PAUSE).await;
                }
            }
        }
    }

    fn fail(&self, reason: &str) {
        // Stream and request numbers make every reason unique: count them as one.
        let normal: Vec<&str> = reason
            .split_whitespace()
            .map(|w| {
                if w.contains(|c: char| c.is_ascii_digit()) {
                    "#"
                } else {
                    w
                }
            })
            .collect();
        let normal = normal.join(" ");
        let reason: String = normal.chars().take(70).collect();
        *self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// "N sent, A answered, F failed (reason ×n, …), O still open".
    pub(super) fn summary(&self) -> String {
        let sent = self.sent.load(Ordering::Relaxed);
        let answered = self.answered.load(Ordering::Relaxed);
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let n_failed: u64 = failed.values().sum();
        let reasons: Vec<String> = failed.iter().map(|(r, n)| format!("{r} ×{n}")).collect();
        format!(
            "{sent} sent, {answered} answered, {n_failed} failed{}, {} still open",
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join("; "))
            },
            sent.saturating_sub(answered + n_failed)
        )
    }
}

/// How long a flood may take to build up before the attack counts as under way.
const BUILD_UP: Duration = Duration::from_secs(40);

/// Starts `count` hostile identities on the attacker's address and connects each
/// to the target, `batch` at a time, for at most [`BUILD_UP`]; returns them with
/// how many connected.
async fn identities(
    env: &Env,
    count: usize,
    batch: usize,
    setup: impl Fn() -> PeerSetup,
) -> (Vec<HostilePeer>, usize) {
    let mut peers = Vec::new();
    let mut connected = 0;
    let started = tokio::time::Instant::now();
    while peers.len() < count && !env.stop.is_cancelled() && started.elapsed() < BUILD_UP {
        let wave: Vec<HostilePeer> = (0..batch.min(count - peers.len()))
            .filter_map(|_| HostilePeer::spawn(setup()).ok())
            .collect();
        if wave.is_empty() {
            break;
        }
        let results = join_all(wave.iter().map(|p| p.connect(&env.addr, env.target))).await;
        connected += results.iter().filter(|r| r.is_ok()).count();
        peers.extend(wave);
    }
    (peers, connected)
}

/// `connection-flood`: from one address, hundreds of fresh identities that
/// complete the handshake and stay connected, and raw TCP connections that never
/// say a word (each holds a pending handshake until the target drops it), kept up
/// without pause: every closed one is opened again. Tests the per-IP and pending
/// handshake limits, the handshake timeout and the slots kept for others: the
/// honest submitter (from another address) must still get in and finish its job,
/// and the address must be refused, then banned.
pub(super) async fn connection_flood(env: Env) -> anyhow::Result<Findings> {
    let raw_n = env.n(512, 40);
    let ids_n = env.n(300, 20);
    // Identities first (they take established slots), then the silent sockets
    // (they take the pending ones).
    let (peers, connected) = identities(&env, ids_n, 25, || PeerSetup::on(env.ip)).await;
    let mut raw = RawFlood::default();
    raw.refill(&env, raw_n).await;
    env.engage();
    loop {
        tokio::select! {
            _ = env.stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => raw.refill(&env, raw_n).await,
        }
    }
    raw.sweep();
    let still = peers.iter().filter(|p| p.stats.open() > 0).count();
    Ok(Findings {
        detail: format!(
            "from {}: {} raw TCP connections opened ({} at once at most, {raw_n} wanted), {} still open at the end; \
             {connected}/{ids_n} identities connected, {still} still connected at the end",
            env.ip,
            raw.opened,
            raw.most_open,
            raw.sockets.len(),
        ),
        offenders: peers.iter().map(|p| p.id).collect(),
        bound_held: None,
    })
}

/// Silent TCP connections from the attacker's address, kept up.
#[derive(Default)]
struct RawFlood {
    sockets: Vec<tokio::net::TcpStream>,
    opened: usize,
    most_open: usize,
}

impl RawFlood {
    /// Forgets the connections the target closed.
    fn sweep(&mut self) {
        self.sockets.retain(|s| {
            let mut buf = [0u8; 64];
            matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        });
    }

    /// Opens connections until `n` are open, at most 64 a round (so the flood
    /// costs the shared machine little beside what it costs the target).
    async fn refill(&mut self, env: &Env, n: usize) {
        self.sweep();
        let want = n.saturating_sub(self.sockets.len()).min(64);
        for _ in 0..want {
            if env.stop.is_cancelled() {
                return;
            }
            let Ok(socket) = TcpSocket::new_v4() else {
                return;
            };
            if socket.bind((env.ip, 0).into()).is_err() {
                return;
            }
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_secs(2), socket.connect(env.sock.into())).await
            {
                self.sockets.push(s);
                self.opened += 1;
            }
        }
        self.most_open = self.most_open.max(self.sockets.len());
    }
}

/// `slow-streams`: one identity opens, on each of the four protocols, more streams
/// than a connection allows, and trickles one byte every half second on each,
/// never finishing a message. Tests the stream limits and read timeouts: the target
/// must drop them and serve the honest job meanwhile.
pub(super) async fn slow_streams(env: Env) -> anyhow::Result<Findings> {
    let per = env.n(80, 16);
    let peer = Arc::new(HostilePeer::spawn(PeerSetup::on(env.ip))?);
    peer.connect(&env.addr, env.target)
        .await
        .map_err(|e| anyhow::anyhow!("connecting: {e}"))?;
    let tally = Arc::new(Tally::default());
    let bytes = Arc::new(vec![0u8; 4096]);
    let mut tasks = JoinSet::new();
    for proto in Proto::ALL {
        for _ in 0..per {
            let (peer, tally, env2) = (peer.clone(), tally.clone(), env.clone());
            let msg = Msg {
                bytes: bytes.clone(),
                pace: Pace::Trickle(Duration::from_millis(500)),
            };
            tasks.spawn(async move { tally.send(&peer, &env2, proto, msg).await });
        }
    }
    env.engage();
    env.stop.cancelled().await;
    tasks.abort_all();
    Ok(Findings {
        detail: format!(
            "one identity, {per} trickling streams on each of 4 protocols: {}",
            tally.summary()
        ),
        offenders: vec![peer.id],
        bound_held: None,
    })
}

/// `big-messages`: identities each open 64 streams on the task and on the result
/// protocol and send one byte short of the 8 MiB limit on each, then hold the
/// stream open without finishing (1 GiB buffered per identity if the target keeps
/// reading every stream); meanwhile fresh identities from the same address send
/// messages one byte over the limit (an offence each), one identity after another
/// as the target bans them. Tests byte-bounded buffering (the budget, its reserve
/// for small messages, fewer streams on the large protocols) and that oversized
/// messages are punished, even while the budget is spent.
pub(super) async fn big_messages(env: Env) -> anyhow::Result<Findings> {
    let ids = env.n(3, 1);
    let streams = env.n(64, 6);
    let stalled = Arc::new(vec![0x5a; MAX_TASK_BYTES.min(MAX_RESULT_BYTES) - 1]);
    let oversized = Arc::new(vec![0x5a; MAX_TASK_BYTES.max(MAX_RESULT_BYTES) + 1]);
    let (peers, connected) = identities(&env, ids, ids, || PeerSetup::on(env.ip)).await;
    let peers: Vec<Arc<HostilePeer>> = peers.into_iter().map(Arc::new).collect();
    let held = Arc::new(Tally::default());
    let mut tasks = JoinSet::new();
    for peer in &peers {
        for proto in [Proto::Task, Proto::Result] {
            for _ in 0..streams {
                let (peer, tally, env2) = (peer.clone(), held.clone(), env.clone());
                let msg = Msg {
                    bytes: stalled.clone(),
                    pace: Pace::Stall,
                };
                tasks.spawn(async move { tally.send(&peer, &env2, proto, msg).await });
            }
        }
    }
    // Let the stalled messages arrive before the honest job starts.
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(env.n(8, 2))) => {}
        _ = env.stop.cancelled() => {}
    }
    env.engage();
    // Oversized messages, from one fresh identity after another (a stalled
    // identity's streams are all taken: its own would never be read).
    let over = Tally::default();
    let mut offenders: Vec<_> = peers.iter().map(|p| p.id).collect();
    let mut refused = 0;
    for _ in 0..ids + 1 {
        if env.stop.is_cancelled() {
            break;
        }
        let peer = HostilePeer::spawn(PeerSetup::on(env.ip))?;
        if peer.connect(&env.addr, env.target).await.is_err() {
            refused += 1;
            continue;
        }
        offenders.push(peer.id);
        for i in 0..6 {
            if env.stop.is_cancelled() {
                break;
            }
            let proto = if i % 2 == 0 {
                Proto::Task
            } else {
                Proto::Result
            };
            let msg = Msg {
                bytes: oversized.clone(),
                pace: Pace::Whole,
            };
            over.send(&peer, &env, proto, msg).await;
        }
    }
    env.stop.cancelled().await;
    tasks.abort_all();
    Ok(Findings {
        detail: format!(
            "{connected}/{ids} identities; stalled {}-byte messages ({streams} per protocol each): {}; \
             oversized messages: {}; {refused} fresh identities refused",
            stalled.len(),
            held.summary(),
            over.summary()
        ),
        offenders,
        bound_held: None,
    })
}

/// An advert that claims everything: the most slots, huge memory and speed, every
/// feature slot filled.
fn greedy_advert() -> CapacityAdvert {
    CapacityAdvert {
        version: PROTOCOL_VERSION,
        seq: 1,
        slots_total: MAX_ADVERT_SLOTS,
        slots_free: MAX_ADVERT_SLOTS,
        cores: 4096,
        memory_limit: 1 << 40,
        fuel_per_sec: u64::MAX / 4,
        features: vec!["x".repeat(64); MAX_FEATURES],
    }
}

/// `advert-flood`: thousands of fresh identities from one address, in waves (the
/// honest job starts when half of them have come and gone): each
/// connects, answers the target's capacity queries with an advert claiming the
/// most of everything, pushes unsolicited updates, and leaves. Tests the peer book's
/// and view's caps (honest peers are not evicted), advert acceptance (only from
/// identified peers that were asked) and memory.
pub(super) async fn advert_flood(env: Env) -> anyhow::Result<Findings> {
    let total = env.n(2000, 60);
    let wave = env.n(100, 20);
    let pushes = Tally::default();
    let mut sent = 0;
    let mut connected = 0;
    let mut offenders = Vec::new();
    while sent < total && !env.stop.is_cancelled() {
        let (peers, ok) = identities(&env, wave, wave, || PeerSetup {
            advert: Some(greedy_advert()),
            ..PeerSetup::on(env.ip)
        })
        .await;
        connected += ok;
        sent += peers.len();
        join_all(peers.iter().map(|p| async {
            for seq in 1..=3 {
                let update = CapacityRequest::Update(CapacityAdvert {
                    seq,
                    ..greedy_advert()
                });
                pushes
                    .send(p, &env, Proto::Capacity, Msg::encode(&update))
                    .await;
            }
        }))
        .await;
        offenders.extend(peers.iter().map(|p| p.id).take(50));
        // Stay a moment so the target may query them, then leave.
        tokio::time::sleep(Duration::from_millis(500)).await;
        if sent >= total / 2 {
            env.engage();
        }
    }
    env.engage();
    let known = env.metric("peergrid_net_known_peers").await;
    let view = env.metric("peergrid_net_capacity_view_peers").await;
    env.stop.cancelled().await;
    Ok(Findings {
        detail: format!(
            "{connected}/{sent} identities connected; unsolicited updates: {}; the target then knew {} peers, {} in its capacity view",
            pushes.summary(),
            known.map_or("?".into(), |k| k.to_string()),
            view.map_or("?".into(), |k| k.to_string()),
        ),
        offenders,
        bound_held: None,
    })
}

/// `cancel-flood`: one identity keeps cancels in flight without pause: for the
/// honest job (all its chunks: it is not this peer's job, so nothing must change)
/// and for random jobs with long chunk lists. Tests that cancels are obeyed only
/// from a job's submitter and that the dispatcher stays free for offers and results.
pub(super) async fn cancel_flood(env: Env) -> anyhow::Result<Findings> {
    let in_flight = env.n(64, 8);
    let peer = Arc::new(HostilePeer::spawn(PeerSetup::on(env.ip))?);
    peer.connect(&env.addr, env.target)
        .await
        .map_err(|e| anyhow::anyhow!("connecting: {e}"))?;
    let tally = Arc::new(Tally::default());
    let mut tasks = JoinSet::new();
    for i in 0..in_flight {
        let (peer, tally, env2) = (peer.clone(), tally.clone(), env.clone());
        tasks.spawn(async move {
            let mut n = i as u64;
            while !env2.stop.is_cancelled() {
                n += 1;
                let honest = *env2.honest_job.borrow();
                let request = match honest {
                    Some(job_id) if n.is_multiple_of(2) => TaskRequest::Cancel {
                        job_id,
                        chunks: Vec::new(),
                    },
                    _ => TaskRequest::Cancel {
                        job_id: JobId(rand::random()),
                        chunks: (0..10_000).collect(),
                    },
                };
                tally
                    .send(&peer, &env2, Proto::Task, Msg::encode(&request))
                    .await;
            }
        });
    }
    env.engage();
    env.stop.cancelled().await;
    tasks.abort_all();
    Ok(Findings {
        detail: format!("{in_flight} cancels in flight: {}", tally.summary()),
        offenders: vec![peer.id],
        bound_held: None,
    })
}

/// Keeps `in_flight` requests for 1 MiB pieces of `hash` (and of random hashes)
/// in flight until `env.stop`; for `blob-flood`.
pub(super) async fn blob_requests(
    env: &Env,
    peer: Arc<HostilePeer>,
    hash: crate::net::protocol::BlobHash,
    in_flight: usize,
) -> String {
    let tally = Arc::new(Tally::default());
    let mut tasks = JoinSet::new();
    for i in 0..in_flight {
        let (peer, tally, env2) = (peer.clone(), tally.clone(), env.clone());
        tasks.spawn(async move {
            let mut n = i as u64;
            while !env2.stop.is_cancelled() {
                n += 1;
                let request = BlobRequest {
                    hash: if n.is_multiple_of(4) {
                        crate::net::protocol::BlobHash(rand::random())
                    } else {
                        hash
                    },
                    offset: 0,
                    len: crate::net::protocol::BLOB_PIECE_BYTES,
                };
                tally
                    .send(&peer, &env2, Proto::Blob, Msg::encode(&request))
                    .await;
            }
        });
    }
    env.stop.cancelled().await;
    tasks.abort_all();
    tally.summary()
}
