//! A discrete-event model of discovery (protocol version 3) for grids of thousands of
//! peers, run by `peergrid bench scale --simulate`. The model and its assumptions
//! are in `docs/PROTOCOL.md`, *Discovery at scale: the simulation*.
//!
//! What is simulated, per peer: a real Kademlia routing table (64-bit ids, k-buckets
//! of 20 filled from the whole population, stale entries for peers that churned
//! away), iterative lookups (α = 3, k = 20) with a latency per message drawn from a
//! log-normal distribution and a timeout for dead peers, connections (each peer dials
//! up to 8 others, inbound up to 256), subscriptions (8 per idle peer, at most 64
//! subscribers each),
//! and every periodic message of an idle peer as a timer with a random phase:
//! pings, advert refreshes to subscribers, subscription renewals, identify, DHT
//! refreshes, and churn (leaves and joins, each join with its bootstrap, dials,
//! identify and capacity queries). A job start is an event-driven run of the
//! protocol from the submitter's side: demand, random walks, dials, identify,
//! capacity answers, the scheduler's one-second dispatch and the offers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

/// The model's parameters (defaults as the node's, latencies as the internet's).
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Peers in the grid.
    pub peers: usize,
    /// Seed of everything random.
    pub seed: u64,
    /// Simulated idle window, seconds.
    pub window_s: f64,
    /// Peers each peer dials (the node's `dial_target`).
    pub dial_target: usize,
    /// Most connections per peer.
    pub max_connections: usize,
    /// Most subscribers a worker pushes to.
    pub max_subscribers: usize,
    /// Most adverts a peer asks for.
    pub max_view: usize,
    /// Most adverts an idle peer asks for.
    pub idle_view: usize,
    /// Candidates wanted before sampling stops.
    pub want: usize,
    /// Advert refresh (the advert interval), seconds.
    pub advert_interval_s: f64,
    /// Ping interval per connection, seconds.
    pub ping_s: f64,
    /// Subscription renewal (half the subscription), seconds.
    pub renew_s: f64,
    /// identify's periodic exchange per connection, seconds.
    pub identify_s: f64,
    /// The DHT's periodic refresh, seconds.
    pub kad_refresh_s: f64,
    /// Mean session length of a peer (exponential), seconds.
    pub session_s: f64,
    /// Median round trip between two peers, milliseconds.
    pub rtt_median_ms: f64,
    /// Spread (sigma of the log) of round trips.
    pub rtt_sigma: f64,
    /// Time to give up on a dead peer, milliseconds.
    pub dead_timeout_ms: f64,
    /// Share of peers that lend at least one slot.
    pub lending: f64,
    /// Share of peers that submit a job during the loaded window.
    pub submitters: f64,
}

impl SimConfig {
    /// The defaults for `peers` peers.
    pub fn new(peers: usize, seed: u64) -> Self {
        Self {
            peers,
            seed,
            window_s: 600.0,
            dial_target: 8,
            max_connections: 256,
            max_subscribers: 64,
            max_view: 256,
            idle_view: 8,
            want: 64,
            advert_interval_s: 60.0,
            ping_s: 60.0,
            renew_s: 300.0,
            identify_s: 300.0,
            kad_refresh_s: 300.0,
            session_s: 3600.0,
            rtt_median_ms: 80.0,
            rtt_sigma: 0.6,
            dead_timeout_ms: 2000.0,
            lending: 0.9,
            submitters: 0.01,
        }
    }
}

/// Bytes on the wire of each message kind (payload plus stream negotiation, Yamux
/// and Noise framing), as assumed by the model.
mod size {
    pub(super) const PING: u64 = 100;
    pub(super) const QUERY: u64 = 90;
    pub(super) const ADVERT: u64 = 160;
    pub(super) const ACK: u64 = 60;
    pub(super) const IDENTIFY: u64 = 700;
    pub(super) const FIND_NODE: u64 = 110;
    pub(super) const NODES: u64 = 1_400;
    pub(super) const HANDSHAKE: u64 = 1_600;
    pub(super) const OFFER_PER_CHUNK: u64 = 300;
    pub(super) const RESULT: u64 = 300;
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// Peers in the grid.
    pub peers: usize,
    /// Messages received per peer per second when idle: mean.
    pub idle_msgs_per_s: f64,
    /// ... the busiest peer's.
    pub idle_msgs_per_s_max: f64,
    /// Bytes received per peer per second when idle: mean.
    pub idle_bytes_per_s: f64,
    /// Messages received per peer per second with `submitters` of the peers
    /// running a 1 000-chunk job each: mean.
    pub load_msgs_per_s: f64,
    /// ... bytes.
    pub load_bytes_per_s: f64,
    /// Messages one DHT lookup costs (mean).
    pub lookup_msgs: f64,
    /// How long a lookup takes (mean), seconds.
    pub lookup_s: f64,
    /// Time to place a job's first 100 chunks (2 replicas) from a peer that has
    /// been up a while (its subscriptions warm), seconds: median of the runs.
    pub warm_start_s: f64,
    /// ... from a peer that has just joined (one bootstrap connection): median.
    pub cold_start_s: f64,
    /// ... the slowest cold start.
    pub cold_start_s_max: f64,
}

struct Grid {
    cfg: SimConfig,
    ids: Vec<u64>,
    /// Peer indices sorted by id.
    /// k-buckets per peer (flattened: every entry, any bucket).
    table: Vec<Vec<usize>>,
    /// Stale entries: peers that churned away (their replacement has another id).
    dead: HashSet<usize>,
    conns: Vec<Vec<usize>>,
    slots: Vec<u32>,
    rng: StdRng,
}

const K: usize = 20;
const ALPHA: usize = 3;

impl Grid {
    fn new(cfg: SimConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let n = cfg.peers;
        let ids: Vec<u64> = (0..n).map(|_| rng.random::<u64>()).collect();
        let mut sorted: Vec<usize> = (0..n).collect();
        sorted.sort_by_key(|&i| ids[i]);
        let sorted_ids: Vec<u64> = sorted.iter().map(|&i| ids[i]).collect();
        // Each bucket: the peers sharing exactly `l` leading bits with this one, a
        // contiguous range in id order; up to K of them at random.
        let mut table = vec![Vec::new(); n];
        for (p, entries) in table.iter_mut().enumerate() {
            let me = ids[p];
            for l in 0..64u32 {
                let shift = 63 - l;
                let lo = ((me >> shift) ^ 1) << shift;
                let hi = lo | ((1u64 << shift) - 1);
                let a = sorted_ids.partition_point(|&x| x < lo);
                let b = sorted_ids.partition_point(|&x| x <= hi);
                if a >= b {
                    continue;
                }
                let range = &sorted[a..b];
                if range.len() <= K {
                    entries.extend_from_slice(range);
                } else {
                    let mut picked: Vec<usize> = (0..K)
                        .map(|_| range[rng.random_range(0..range.len())])
                        .collect();
                    picked.sort_unstable();
                    picked.dedup();
                    entries.extend(picked);
                }
            }
        }
        // Stale entries: a peer that left since the holder's last refresh.
        let stale = (cfg.kad_refresh_s / (2.0 * cfg.session_s)).clamp(0.0, 0.5);
        let dead: HashSet<usize> = (0..n).filter(|_| rng.random_bool(stale)).collect();
        let mut conns = vec![Vec::new(); n];
        for p in 0..n {
            let mut tries = 0;
            while conns[p].len() < cfg.dial_target.min(n - 1) && tries < 4 * cfg.dial_target {
                tries += 1;
                let q = rng.random_range(0..n);
                if q == p || conns[p].contains(&q) || conns[q].len() >= cfg.max_connections {
                    continue;
                }
                conns[p].push(q);
                conns[q].push(p);
            }
        }
        let slots = (0..n)
            .map(|_| {
                if rng.random_bool(cfg.lending) {
                    rng.random_range(1..=8)
                } else {
                    0
                }
            })
            .collect();
        Self {
            cfg,
            ids,
            table,
            dead,
            conns,
            slots,
            rng,
        }
    }

    fn rtt(&mut self) -> f64 {
        // Log-normal: median × e^(σ·z), z standard normal (Box-Muller).
        let (u1, u2): (f64, f64) = (self.rng.random::<f64>().max(1e-12), self.rng.random());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        self.cfg.rtt_median_ms * (self.cfg.rtt_sigma * z).exp()
    }

    /// The K entries of `p`'s table closest to `target`.
    fn closest(&self, p: usize, target: u64) -> Vec<usize> {
        let mut e: Vec<usize> = self.table[p].clone();
        e.sort_by_key(|&q| self.ids[q] ^ target);
        e.truncate(K);
        e
    }

    /// An iterative lookup from `from` towards `target`, event by event. Returns
    /// (peers found alive, messages sent, milliseconds).
    fn lookup(
        &mut self,
        from: usize,
        target: u64,
        connected: &HashSet<usize>,
    ) -> (Vec<usize>, u64, f64) {
        #[derive(Clone, Copy, PartialEq)]
        enum St {
            New,
            Asked,
            Ok,
            Failed,
        }
        let mut known: BTreeMap<u64, (usize, St)> = BTreeMap::new();
        for q in self.closest(from, target) {
            known.insert(self.ids[q] ^ target, (q, St::New));
        }
        let mut events: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
        let mut now = 0.0f64;
        let mut inflight = 0;
        let mut msgs = 0u64;
        loop {
            // Ask the closest un-asked peers among the K closest not failed.
            let mut to_ask = Vec::new();
            for (_, (q, st)) in known
                .iter()
                .filter(|(_, (_, st))| *st != St::Failed)
                .take(K)
            {
                if inflight + to_ask.len() >= ALPHA {
                    break;
                }
                if *st == St::New {
                    to_ask.push(*q);
                }
            }
            for q in to_ask {
                let d = self.ids[q] ^ target;
                if let Some(e) = known.get_mut(&d) {
                    e.1 = St::Asked;
                }
                inflight += 1;
                msgs += 1;
                let rtt = self.rtt();
                let t = if self.dead.contains(&q) {
                    now + self.cfg.dead_timeout_ms
                } else if connected.contains(&q) {
                    now + rtt
                } else {
                    // TCP, Noise and multistream before the request.
                    now + 3.0 * rtt
                };
                events.push(Reverse(((t * 1000.0) as u64, q)));
            }
            let Some(Reverse((t, q))) = events.pop() else {
                break;
            };
            now = t as f64 / 1000.0;
            inflight -= 1;
            let d = self.ids[q] ^ target;
            if self.dead.contains(&q) {
                if let Some(e) = known.get_mut(&d) {
                    e.1 = St::Failed;
                }
                continue;
            }
            msgs += 1;
            if let Some(e) = known.get_mut(&d) {
                e.1 = St::Ok;
            }
            for r in self.closest(q, target) {
                if r != from {
                    known.entry(self.ids[r] ^ target).or_insert((r, St::New));
                }
            }
            // Done when the K closest alive-or-unknown are all answered.
            let done = known
                .values()
                .filter(|(_, st)| *st != St::Failed)
                .take(K)
                .all(|(_, st)| *st == St::Ok);
            if done && inflight == 0 {
                break;
            }
        }
        let found = known
            .values()
            .filter(|(_, st)| *st == St::Ok)
            .map(|(q, _)| *q)
            .collect();
        (found, msgs, now)
    }

    /// Time to place 100 chunks × 2 replicas from `submitter`; `cold`: it has just
    /// joined with one connection, else its subscriptions are warm.
    fn job_start(&mut self, submitter: usize, cold: bool) -> (f64, u64) {
        const REPLICAS: u32 = 200;
        const QUEUE_FACTOR: u32 = 4;
        let mut msgs = 0u64;
        // (time candidate is known, peer)
        let mut candidates: Vec<(f64, usize)> = Vec::new();
        let connected: HashSet<usize> = if cold {
            std::iter::once(self.conns[submitter][0]).collect()
        } else {
            self.conns[submitter].iter().copied().collect()
        };
        if !cold {
            for &q in &self.conns[submitter] {
                if self.slots[q] > 0 && candidates.len() < self.cfg.max_view {
                    candidates.push((0.0, q));
                }
            }
        }
        // Demand: walks (2 in flight, 250 ms apart) until `want` candidates; each
        // walk's peers are dialled (3 RTT), identified (1 RTT) and queried (1 RTT).
        let mut seen: HashSet<usize> = candidates.iter().map(|c| c.1).collect();
        let mut walk_at = [0.0f64, 0.25];
        let count_by = |t: f64, c: &[(f64, usize)]| c.iter().filter(|(at, _)| *at <= t).count();
        let mut walks = 0;
        while count_by(walk_at[0].min(walk_at[1]), &candidates) < self.cfg.want && walks < 40 {
            let slot = if walk_at[0] <= walk_at[1] { 0 } else { 1 };
            let start = walk_at[slot];
            let target = self.rng.random::<u64>();
            let (found, m, dur) = self.lookup(submitter, target, &connected);
            msgs += m;
            walks += 1;
            for q in found.into_iter().take(20) {
                if !seen.insert(q) {
                    continue;
                }
                msgs += 4;
                let known_at = start + (dur + 5.0 * self.rtt()) / 1000.0;
                if self.slots[q] > 0 {
                    candidates.push((known_at, q));
                }
            }
            walk_at[slot] = (start + dur / 1000.0).max(start + 0.25);
        }
        // Dispatch every second: offers to the candidates known by then (one RTT,
        // plus the module's fetch: a connection is open, 2 RTT and 100 KiB at 20
        // Mbit/s); each takes up to slots × QUEUE_FACTOR replicas, one per chunk.
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut placed = 0u32;
        let mut offered: HashSet<usize> = HashSet::new();
        let mut tick = 0.0;
        let mut done_at = f64::INFINITY;
        while tick < 120.0 && placed < REPLICAS {
            let mut latest: f64 = 0.0;
            for &(_, q) in candidates.iter().filter(|(at, _)| *at <= tick) {
                if placed >= REPLICAS || !offered.insert(q) {
                    continue;
                }
                let take = (self.slots[q] * QUEUE_FACTOR)
                    .min(REPLICAS - placed)
                    .min(100);
                placed += take;
                msgs += 2;
                let t = tick + (3.0 * self.rtt()) / 1000.0 + 100.0 * 1024.0 * 8.0 / 20e6;
                latest = latest.max(t);
            }
            if placed >= REPLICAS {
                done_at = latest;
            }
            tick += 1.0;
        }
        (done_at, msgs)
    }
}

/// Runs the model for `cfg.peers` peers.
pub fn simulate(cfg: SimConfig) -> SimReport {
    let mut g = Grid::new(cfg.clone());
    let n = cfg.peers;
    let mut recv = vec![0u64; n];
    let mut bytes = vec![0u64; n];
    let w = cfg.window_s;
    let deliver = |recv: &mut Vec<u64>, bytes: &mut Vec<u64>, to: usize, b: u64| {
        recv[to] += 1;
        bytes[to] += b;
    };
    // DHT lookups: a sample measures their cost at this size.
    let sample = 60.min(n);
    let (mut lookup_msgs, mut lookup_ms) = (0u64, 0.0);
    for i in 0..sample {
        let p = (i * 7919) % n;
        let conn: HashSet<usize> = g.conns[p].iter().copied().collect();
        let target = g.rng.random::<u64>();
        let (_, m, t) = g.lookup(p, target, &conn);
        lookup_msgs += m;
        lookup_ms += t;
    }
    let per_lookup = lookup_msgs as f64 / sample as f64;
    // A refresh is two lookups: towards its own id and towards a random one.
    let lookups_per_refresh = 2.0;

    // The idle window: every periodic timer of every peer, each with a random phase.
    let times = |period: f64, phase: f64| -> u64 {
        if phase >= w {
            0
        } else {
            ((w - phase) / period).floor() as u64 + 1
        }
    };
    // Each idle peer subscribes to `idle_view` of its connections; a worker keeps
    // at most `max_subscribers`.
    let mut subscribers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for q in 0..n {
        for &p in g.conns[q].iter().take(cfg.idle_view) {
            if subscribers[p].len() < cfg.max_subscribers {
                subscribers[p].push(q);
            }
        }
    }
    for (p, subscribed) in subscribers.iter().enumerate() {
        let phase = g.rng.random::<f64>();
        // Pings: each side pings each connection.
        let pings = times(cfg.ping_s, phase * cfg.ping_s);
        for &q in &g.conns[p].clone() {
            for _ in 0..pings {
                deliver(&mut recv, &mut bytes, q, size::PING);
                deliver(&mut recv, &mut bytes, p, size::PING);
            }
        }
        // Advert refreshes to subscribers, and their acks.
        let pushes = times(cfg.advert_interval_s, phase * cfg.advert_interval_s);
        for &q in subscribed {
            for _ in 0..pushes {
                deliver(&mut recv, &mut bytes, q, size::ADVERT);
                deliver(&mut recv, &mut bytes, p, size::ACK);
            }
        }
        // Renewals of this peer's subscriptions (to its connections, up to
        // `idle_view` when idle).
        let renewals = times(cfg.renew_s, phase * cfg.renew_s);
        for &q in g.conns[p].clone().iter().take(cfg.idle_view) {
            for _ in 0..renewals {
                deliver(&mut recv, &mut bytes, q, size::QUERY);
                deliver(&mut recv, &mut bytes, p, size::ADVERT);
            }
        }
        // identify on each connection.
        let ids = times(cfg.identify_s, phase * cfg.identify_s);
        for &q in &g.conns[p].clone() {
            for _ in 0..ids {
                deliver(&mut recv, &mut bytes, q, size::IDENTIFY);
                deliver(&mut recv, &mut bytes, p, size::IDENTIFY);
            }
        }
        // DHT refreshes: requests land on peers across the DHT.
        let refreshes = times(cfg.kad_refresh_s, phase * cfg.kad_refresh_s);
        let reqs = (refreshes as f64 * lookups_per_refresh * per_lookup / 2.0).round() as u64;
        for _ in 0..reqs {
            let q = g.rng.random_range(0..n);
            deliver(&mut recv, &mut bytes, q, size::FIND_NODE);
            deliver(&mut recv, &mut bytes, p, size::NODES);
        }
    }
    // Churn: peers leave and are replaced; a join is a bootstrap, a refresh's
    // lookups, dials, identify and capacity queries both ways.
    let joins = (n as f64 * w / cfg.session_s).round() as usize;
    for _ in 0..joins {
        let p = g.rng.random_range(0..n);
        let reqs = (lookups_per_refresh * per_lookup / 2.0).round() as u64;
        for _ in 0..reqs {
            let q = g.rng.random_range(0..n);
            deliver(&mut recv, &mut bytes, q, size::FIND_NODE);
            deliver(&mut recv, &mut bytes, p, size::NODES);
        }
        for &q in &g.conns[p].clone() {
            for (to, b) in [
                (q, size::HANDSHAKE),
                (p, size::HANDSHAKE),
                (q, size::IDENTIFY),
                (p, size::IDENTIFY),
                (q, size::QUERY),
                (p, size::ADVERT),
                (p, size::QUERY),
                (q, size::ADVERT),
            ] {
                deliver(&mut recv, &mut bytes, to, b);
            }
        }
    }
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / n as f64 / w;
    let idle_msgs = mean(&recv);
    let idle_max = *recv.iter().max().unwrap_or(&0) as f64 / w;
    let idle_bytes = mean(&bytes);

    // Job starts: warm and cold, from a few submitters.
    let runs = 15.min(n);
    let mut warm = Vec::new();
    let mut cold = Vec::new();
    for i in 0..runs {
        let p = (i * 104_729 + 13) % n;
        warm.push(g.job_start(p, false).0);
        cold.push(g.job_start(p, true).0);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let cold_max = cold.iter().copied().fold(0.0, f64::max);

    // Load: `submitters` of the peers each run a 1 000-chunk job (2 replicas) in
    // the window, starting cold: discovery, offers (batched per peer and second),
    // results and acks.
    let jobs = ((n as f64 * cfg.submitters).round() as usize).max(1);
    for j in 0..jobs {
        let p = (j * 7 + 1) % n;
        let (_, m) = g.job_start(p, true);
        // Discovery's messages land on the peers it sampled.
        for _ in 0..m {
            let q = g.rng.random_range(0..n);
            deliver(&mut recv, &mut bytes, q, size::QUERY);
            deliver(&mut recv, &mut bytes, p, size::ADVERT);
        }
        for _ in 0..2_000 {
            let q = g.rng.random_range(0..n);
            deliver(&mut recv, &mut bytes, q, size::OFFER_PER_CHUNK);
            deliver(&mut recv, &mut bytes, p, size::RESULT);
            deliver(&mut recv, &mut bytes, q, size::ACK);
        }
    }
    SimReport {
        peers: n,
        idle_msgs_per_s: idle_msgs,
        idle_msgs_per_s_max: idle_max,
        idle_bytes_per_s: idle_bytes,
        load_msgs_per_s: mean(&recv),
        load_bytes_per_s: mean(&bytes),
        lookup_msgs: per_lookup,
        lookup_s: lookup_ms / sample as f64 / 1000.0,
        warm_start_s: median(&mut warm),
        cold_start_s: median(&mut cold),
        cold_start_s_max: cold_max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_cost_is_flat_and_a_job_starts_quickly_in_a_small_model() {
        let small = simulate(SimConfig {
            window_s: 120.0,
            ..SimConfig::new(300, 1)
        });
        let large = simulate(SimConfig {
            window_s: 120.0,
            ..SimConfig::new(1_200, 1)
        });
        assert!(
            large.idle_msgs_per_s < small.idle_msgs_per_s * 1.5,
            "{small:?} vs {large:?}"
        );
        assert!(large.cold_start_s.is_finite(), "{large:?}");
        assert!(large.warm_start_s <= large.cold_start_s, "{large:?}");
        // The same seed gives the same figures.
        let again = simulate(SimConfig {
            window_s: 120.0,
            ..SimConfig::new(300, 1)
        });
        assert_eq!(format!("{small:?}"), format!("{again:?}"));
    }
}
