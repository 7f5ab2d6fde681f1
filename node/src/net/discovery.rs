//! Capacity discovery whose idle cost does not grow with the grid (protocol version 3;
//! the design, its costs and the simulation are in `docs/PROTOCOL.md`, *Discovery*).
//!
//! - A worker answers capacity **queries** and remembers the askers that
//!   **subscribe**, at most [`DiscoveryConfig::max_subscribers`] of them, each for
//!   [`DiscoveryConfig::subscription_ttl`]. It **pushes** its advert to the connected
//!   ones when it changes and every advert interval: its cost is bounded by the
//!   subscriber cap, not by the size of the grid.
//! - A node subscribes to the peers it is connected to (bounded by the connection
//!   limit and [`DiscoveryConfig::max_view`]), so a small grid still sees everyone.
//!   Without demand it takes its few ([`DiscoveryConfig::idle_view`]) once its first
//!   DHT lookup has settled, and the **nearest** to it in the DHT's key space first
//!   ([`nearest`]), not the first to connect: every node meets its bootstrap peers
//!   first, so taking those made a bootstrap node everyone's subscription (34
//!   subscribers at 100 processes, against about 8 on average).
//! - **Demand** (the scheduler asking for candidates) makes a node walk the DHT
//!   towards random keys and query the peers found there, until it holds
//!   [`DiscoveryConfig::want`] candidates that lend something. The keys are drawn by
//!   the asker, so the sample is uniform over the DHT's members, not whoever answers
//!   first; an update is accepted only from a peer the node subscribed to.
//!
//! This module holds the decisions (pure functions of state and `now`); the event
//! loop performs them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Discovery's numbers. The defaults are sized in `docs/PROTOCOL.md`.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// Candidates (fresh adverts lending at least one slot) a node with demand
    /// wants in its view before it stops sampling.
    pub want: usize,
    /// Most adverts a node asks for while it has demand; beyond it only known ones
    /// are renewed.
    pub max_view: usize,
    /// Most adverts a node without demand asks for: an idle node's subscriptions
    /// (and the connections they keep open) stay this few, whatever the grid.
    pub idle_view: usize,
    /// Most peers a worker pushes its advert to.
    pub max_subscribers: usize,
    /// How long a subscription lasts without renewal.
    pub subscription_ttl: Duration,
    /// How long one request for candidates counts as demand.
    pub demand_hold: Duration,
    /// Least time between two random walks; doubled (up to `max_walk_gap`) after a
    /// walk that found nobody new.
    pub walk_gap: Duration,
    /// Most time between two random walks while there is demand.
    pub max_walk_gap: Duration,
    /// Random walks in flight at once.
    pub max_walks: usize,
    /// Capacity queries in flight at once.
    pub max_queries: usize,
    /// Peers a walk may dial.
    pub dials_per_walk: usize,
    /// Below this many connections, peers the DHT's own upkeep finds are dialled.
    pub dial_target: usize,
    /// How long after its first connection an idle node waits for its first DHT
    /// lookup before it takes idle subscriptions anyway.
    pub settle: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            want: 64,
            max_view: 256,
            idle_view: 8,
            max_subscribers: 64,
            subscription_ttl: Duration::from_secs(600),
            demand_hold: Duration::from_secs(10),
            walk_gap: Duration::from_millis(250),
            max_walk_gap: Duration::from_secs(30),
            max_walks: 2,
            max_queries: 32,
            dials_per_walk: 20,
            dial_target: 8,
            settle: Duration::from_secs(5),
        }
    }
}

/// The state of discovery: subscribers, demand, walks and queries in flight.
#[derive(Debug)]
pub(crate) struct Discovery {
    config: DiscoveryConfig,
    /// Who subscribed to this node's advert, and until when.
    subscribers: HashMap<PeerId, Instant>,
    demand_until: Option<Instant>,
    walks: usize,
    next_walk: Option<Instant>,
    gap: Duration,
    queries: usize,
    /// When the first DHT lookup ended (or the settle time ran out): idle
    /// subscriptions wait for it, so that they go to the nearest peers, not the
    /// bootstrap peers every node meets first.
    settled: bool,
    /// The first connection's time, for the settle fallback.
    first_connected: Option<Instant>,
}

/// The `n` peers of `peers` nearest `local` in the DHT's key space (XOR distance of
/// their Kademlia keys), nearest first. Keys are hashes of peer ids, so whom a node
/// picks is spread evenly over the grid, whatever order peers connected in, and no
/// peer is picked by many nodes more than chance allows: each has about as many
/// subscribers as each node has subscriptions.
pub(crate) fn nearest(local: &PeerId, mut peers: Vec<PeerId>, n: usize) -> Vec<PeerId> {
    let local = libp2p::kad::KBucketKey::from(*local);
    peers.sort_by_cached_key(|p| local.distance(&libp2p::kad::KBucketKey::from(*p)));
    peers.truncate(n);
    peers
}

/// Whether an idle node should move one subscription nearer: the connected peer
/// (of `candidates`, not subscribed to) nearest `local`, if it is nearer than the
/// farthest of `subscribed`; then (the one to drop, the one to take). Each swap
/// makes the subscriptions strictly nearer, so they settle (no back and forth) on
/// the nearest peers the node meets, as the grid grows around it: a grid that
/// grows node by node otherwise leaves its first nodes subscribed to by most
/// later ones (each joiner's nearest among the few nodes up then).
pub(crate) fn swap(
    local: &PeerId,
    subscribed: &[PeerId],
    candidates: &[PeerId],
) -> Option<(PeerId, PeerId)> {
    let local = libp2p::kad::KBucketKey::from(*local);
    let distance = |p: &PeerId| local.distance(&libp2p::kad::KBucketKey::from(*p));
    let farthest = subscribed.iter().max_by_key(|p| distance(p))?;
    let nearest = candidates
        .iter()
        .filter(|p| !subscribed.contains(p))
        .min_by_key(|p| distance(p))?;
    (distance(nearest) < distance(farthest)).then_some((*farthest, *nearest))
}

impl Discovery {
    pub(crate) fn new(config: DiscoveryConfig) -> Self {
        Self {
            gap: config.walk_gap,
            config,
            subscribers: HashMap::new(),
            demand_until: None,
            walks: 0,
            next_walk: None,
            queries: 0,
            settled: false,
            first_connected: None,
        }
    }

    /// A connection was established (the settle fallback counts from the first).
    pub(crate) fn connected(&mut self, now: Instant) {
        self.first_connected.get_or_insert(now);
    }

    /// The first DHT lookup (the bootstrap towards this node's own id) ended: the
    /// node is now connected to its nearest peers.
    pub(crate) fn lookup_settled(&mut self) {
        self.settled = true;
    }

    /// Whether idle subscriptions may be taken: the first lookup ended, or
    /// [`DiscoveryConfig::settle`] passed since the first connection.
    pub(crate) fn is_settled(&mut self, now: Instant) -> bool {
        if !self.settled
            && self
                .first_connected
                .is_some_and(|at| now.saturating_duration_since(at) >= self.config.settle)
        {
            self.settled = true;
        }
        self.settled
    }

    pub(crate) fn config(&self) -> &DiscoveryConfig {
        &self.config
    }

    /// Records (or renews) a subscription; when full, the subscription that expires
    /// first makes room.
    pub(crate) fn subscribe(&mut self, peer: PeerId, now: Instant) {
        let until = now + self.config.subscription_ttl;
        if !self.subscribers.contains_key(&peer)
            && self.subscribers.len() >= self.config.max_subscribers
        {
            self.subscribers.retain(|_, u| *u > now);
            if self.subscribers.len() >= self.config.max_subscribers
                && let Some(oldest) = self
                    .subscribers
                    .iter()
                    .min_by_key(|(_, u)| **u)
                    .map(|(p, _)| *p)
            {
                self.subscribers.remove(&oldest);
            }
        }
        self.subscribers.insert(peer, until);
    }

    /// Forgets a subscriber (banned, or of another version).
    pub(crate) fn unsubscribe(&mut self, peer: &PeerId) {
        self.subscribers.remove(peer);
    }

    /// Whether `peer` is a live subscriber.
    pub(crate) fn is_subscriber(&self, peer: &PeerId, now: Instant) -> bool {
        self.subscribers.get(peer).is_some_and(|u| *u > now)
    }

    /// How many subscriptions to this node are live.
    pub(crate) fn subscriber_count(&self, now: Instant) -> usize {
        self.subscribers.values().filter(|u| **u > now).count()
    }

    /// The live subscribers (expired ones are dropped).
    pub(crate) fn subscribers(&mut self, now: Instant) -> Vec<PeerId> {
        self.subscribers.retain(|_, u| *u > now);
        self.subscribers.keys().copied().collect()
    }

    /// Someone asked for candidates: demand lasts `demand_hold`. Demand that starts
    /// anew resets the walk back-off.
    pub(crate) fn demand(&mut self, now: Instant) {
        if !self.has_demand(now) {
            self.gap = self.config.walk_gap;
            self.next_walk = None;
        }
        self.demand_until = Some(now + self.config.demand_hold);
    }

    pub(crate) fn has_demand(&self, now: Instant) -> bool {
        self.demand_until.is_some_and(|u| u > now)
    }

    /// Whether to start a random walk now, given how many candidates the view holds.
    pub(crate) fn should_walk(&self, now: Instant, candidates: usize) -> bool {
        self.has_demand(now)
            && candidates < self.config.want
            && self.walks < self.config.max_walks
            && self.next_walk.is_none_or(|at| at <= now)
    }

    pub(crate) fn walk_started(&mut self, now: Instant) {
        self.walks += 1;
        self.next_walk = Some(now + self.gap);
    }

    /// A walk ended having found `new` peers not known before: a walk that found
    /// nobody new doubles the gap before the next (the grid is small, or sampled).
    pub(crate) fn walk_done(&mut self, new: usize) {
        self.walks = self.walks.saturating_sub(1);
        self.gap = if new == 0 {
            (self.gap * 2).min(self.config.max_walk_gap)
        } else {
            self.config.walk_gap
        };
    }

    #[cfg(test)]
    pub(crate) fn walks_in_flight(&self) -> usize {
        self.walks
    }

    /// Whether another capacity query may start.
    pub(crate) fn may_query(&self) -> bool {
        self.queries < self.config.max_queries
    }

    pub(crate) fn query_started(&mut self) {
        self.queries += 1;
    }

    /// Capacity queries sent and not yet answered.
    pub(crate) fn queries_in_flight(&self) -> usize {
        self.queries
    }

    pub(crate) fn query_done(&mut self) {
        self.queries = self.queries.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DiscoveryConfig {
        DiscoveryConfig {
            max_subscribers: 3,
            ..DiscoveryConfig::default()
        }
    }

    #[test]
    fn subscribers_are_bounded_and_expire() {
        let mut d = Discovery::new(config());
        let t0 = Instant::now();
        let peers: Vec<PeerId> = (0..10).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            d.subscribe(*p, t0 + Duration::from_secs(i as u64));
        }
        let live = d.subscribers(t0 + Duration::from_secs(10));
        assert_eq!(live.len(), 3, "at most max_subscribers");
        for p in &peers[7..] {
            assert!(live.contains(p), "the latest subscriptions stay");
        }
        // A renewal keeps a subscriber; the rest expire.
        let late = t0 + Duration::from_secs(9) + config().subscription_ttl;
        d.subscribe(peers[9], late);
        assert_eq!(d.subscribers(late), vec![peers[9]]);
    }

    #[test]
    fn walks_follow_demand_and_back_off_when_they_find_nobody_new() {
        let c = config();
        let mut d = Discovery::new(c.clone());
        let t0 = Instant::now();
        assert!(!d.should_walk(t0, 0), "no demand, no walk");
        d.demand(t0);
        assert!(d.should_walk(t0, 0));
        assert!(!d.should_walk(t0, c.want), "enough candidates, no walk");
        d.walk_started(t0);
        assert!(!d.should_walk(t0, 0), "the gap between walks");
        let t1 = t0 + c.walk_gap;
        assert!(d.should_walk(t1, 0));
        d.walk_started(t1);
        assert!(
            !d.should_walk(t1 + c.walk_gap, 0),
            "at most max_walks in flight"
        );
        d.walk_done(0);
        d.walk_done(0);
        assert_eq!(d.walks_in_flight(), 0);
        // Two fruitless walks: the next waits 4 x walk_gap.
        let t2 = t1 + c.walk_gap;
        d.walk_started(t2);
        d.walk_done(0);
        assert!(!d.should_walk(t2 + c.walk_gap * 3, 0));
        assert!(d.should_walk(t2 + c.walk_gap * 4, 0));
        // Demand ends: no walks; new demand resets the back-off.
        let t3 = t2 + c.demand_hold * 2;
        assert!(!d.should_walk(t3, 0));
        d.demand(t3);
        assert!(d.should_walk(t3, 0));
        d.walk_started(t3);
        d.walk_done(5);
        assert!(d.should_walk(t3 + c.walk_gap, 0));
    }

    #[test]
    fn idle_subscriptions_go_to_the_nearest_peers_not_the_first_connected() {
        let local = PeerId::random();
        let peers: Vec<PeerId> = (0..50).map(|_| PeerId::random()).collect();
        let picked = nearest(&local, peers.clone(), 8);
        assert_eq!(picked.len(), 8);
        let key = libp2p::kad::KBucketKey::from(local);
        let d = |p: &PeerId| key.distance(&libp2p::kad::KBucketKey::from(*p));
        let farthest_picked = picked.iter().map(d).max().unwrap();
        for p in peers.iter().filter(|p| !picked.contains(p)) {
            assert!(d(p) > farthest_picked, "a nearer peer was left out");
        }
        // The order peers arrive in does not matter.
        let mut reversed = peers.clone();
        reversed.reverse();
        assert_eq!(nearest(&local, reversed, 8), picked);
        assert_eq!(nearest(&local, peers[..3].to_vec(), 8).len(), 3);

        // Over a grid where every node knows the same two bootstrap peers and a
        // handful of others, nobody is picked by many: the most subscribers any
        // node gets stays near the average of 8 (16 at most in 300 simulated grids),
        // where taking the first to connect gives the two bootstrap peers everyone.
        let grid: Vec<PeerId> = (0..200).map(|_| PeerId::random()).collect();
        let mut subscribers: HashMap<PeerId, usize> = HashMap::new();
        for node in &grid {
            // What a node is connected to when it settles: its bootstrap peers and
            // the 20 nearest it found by its lookup.
            let others: Vec<PeerId> = grid.iter().filter(|p| *p != node).copied().collect();
            let mut known = nearest(node, others, 20);
            for b in &grid[..2] {
                if b != node && !known.contains(b) {
                    known.insert(0, *b);
                }
            }
            for p in nearest(node, known, 8) {
                *subscribers.entry(p).or_default() += 1;
            }
        }
        let most = subscribers.values().copied().max().unwrap();
        assert!(most <= 24, "the busiest node has {most} subscribers");
    }

    #[test]
    fn an_idle_node_moves_a_subscription_only_to_a_nearer_peer() {
        let local = PeerId::random();
        let mut peers: Vec<PeerId> = (0..12).map(|_| PeerId::random()).collect();
        let key = libp2p::kad::KBucketKey::from(local);
        peers.sort_by_key(|p| key.distance(&libp2p::kad::KBucketKey::from(*p)));
        // Subscribed to the 4 farthest; the nearest connected peer replaces the
        // farthest subscription.
        let subscribed = peers[8..].to_vec();
        assert_eq!(
            swap(&local, &subscribed, &peers),
            Some((peers[11], peers[0]))
        );
        // Already on the nearest: nothing moves, whoever else is connected.
        let subscribed = peers[..4].to_vec();
        assert_eq!(swap(&local, &subscribed, &peers), None);
        assert_eq!(swap(&local, &subscribed, &peers[4..]), None);
        assert_eq!(swap(&local, &[], &peers), None, "nothing to move");
        // Swapping until nothing moves ends on the nearest of those met.
        let mut subscribed = peers[6..10].to_vec();
        let mut moves = 0;
        while let Some((drop, take)) = swap(&local, &subscribed, &peers) {
            subscribed.retain(|p| *p != drop);
            subscribed.push(take);
            moves += 1;
            assert!(moves <= 4, "each swap is strictly nearer");
        }
        subscribed.sort_by_key(|p| key.distance(&libp2p::kad::KBucketKey::from(*p)));
        assert_eq!(subscribed, peers[..4].to_vec());
    }

    #[test]
    fn idle_subscriptions_wait_for_the_first_lookup_or_the_settle_time() {
        let c = config();
        let mut d = Discovery::new(c.clone());
        let t0 = Instant::now();
        assert!(
            !d.is_settled(t0 + c.settle * 2),
            "not connected: nothing to wait for"
        );
        d.connected(t0);
        d.connected(t0 + c.settle);
        assert!(!d.is_settled(t0 + c.settle / 2));
        assert!(
            d.is_settled(t0 + c.settle),
            "counted from the first connection"
        );
        let mut d = Discovery::new(c.clone());
        d.connected(t0);
        d.lookup_settled();
        assert!(d.is_settled(t0));
    }

    #[test]
    fn queries_in_flight_are_bounded() {
        let mut d = Discovery::new(config());
        for _ in 0..config().max_queries {
            assert!(d.may_query());
            d.query_started();
        }
        assert!(!d.may_query());
        d.query_done();
        assert!(d.may_query());
    }
}
