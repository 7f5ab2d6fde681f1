//! The NAT side of the network's metrics: reachability, direct and relayed
//! connections, hole punching, and the circuits this node relays for others.
//! Recorded by the event loop (`event_loop/nat.rs`); part of [`NetMetrics`](super::metrics::NetMetrics).
//! The bytes relayed are the exception: the relay server counts them itself as its
//! handlers copy them ([`CircuitBytes`]), and each scrape reads those counts.

use std::sync::{Arc, Mutex, PoisonError};

use libp2p::relay;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::reachability::Verdict;
use crate::metrics::{counter, counter_vec, gauge, gauge_vec, histogram, register};

/// The `path` label of connections.
pub const PATHS: [&str; 2] = ["direct", "relayed"];
/// The `outcome` label of hole punches.
pub const PUNCH_OUTCOMES: [&str; 2] = ["success", "failure"];
/// The `direction` label of the bytes relayed: from the peer that opened a circuit
/// (its source) to the peer holding the reservation (its destination), and back.
pub const CIRCUIT_DIRECTIONS: [&str; 2] = ["src_to_dst", "dst_to_src"];
/// Buckets of the time from a relayed connection to a direct one, in seconds.
const DIRECT_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// The NAT metrics.
#[derive(Debug, Clone)]
pub struct NatMetrics {
    /// 1 for this node's reachability verdict, 0 for the others.
    pub reachability: IntGaugeVec,
    /// Open connections by path (direct, relayed).
    pub connections: IntGaugeVec,
    /// Hole punches (DCUtR upgrades of a relayed connection) by outcome.
    pub holepunches: IntCounterVec,
    /// Seconds from a relayed connection to a direct one with the same peer.
    pub time_to_direct: Histogram,
    /// AutoNAT tests of this node's addresses by outcome (reachable or not).
    pub autonat_tests: IntCounterVec,
    /// Relay reservations this node holds on relays.
    pub reservations_held: IntGauge,
    /// Circuits this node relayed for others (accepted).
    pub circuits_served: IntCounter,
    /// Circuits this node refused to relay (limits).
    pub circuits_denied: IntCounter,
    /// Circuits open through this node now.
    pub circuits_open: IntGauge,
    /// Reservations this node serves now.
    pub reservations_served: IntGauge,
    /// Bytes the circuits this node relays have forwarded, by direction.
    pub circuit_bytes: CircuitBytes,
}

impl NatMetrics {
    /// The NAT metrics in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let verdicts: Vec<&str> = Verdict::ALL.iter().map(|v| v.as_str()).collect();
        Self {
            reachability: gauge_vec(
                registry,
                "peergrid_net_reachability",
                "1 for this node's reachability verdict (public, relayed, private, local, unknown), 0 for the others.",
                &["verdict"],
                &[&verdicts],
            ),
            connections: gauge_vec(
                registry,
                "peergrid_net_connections",
                "Open connections by path: direct, or relayed through a relay.",
                &["path"],
                &[&PATHS],
            ),
            holepunches: counter_vec(
                registry,
                "peergrid_net_holepunches_total",
                "Hole punches (a relayed connection upgraded to a direct one by DCUtR), by outcome.",
                &["outcome"],
                &[&PUNCH_OUTCOMES],
            ),
            time_to_direct: histogram(
                registry,
                "peergrid_net_time_to_direct_seconds",
                "Time from a relayed connection to a direct one with the same peer.",
                DIRECT_BUCKETS,
            ),
            autonat_tests: counter_vec(
                registry,
                "peergrid_net_autonat_tests_total",
                "AutoNAT tests of this node's addresses, by outcome (reachable, unreachable).",
                &["outcome"],
                &[&["reachable", "unreachable"]],
            ),
            reservations_held: gauge(
                registry,
                "peergrid_net_relay_reservations_held",
                "Relay reservations this node holds (it is reachable through them).",
            ),
            circuits_served: counter(
                registry,
                "peergrid_net_relay_circuits_served_total",
                "Circuits this node relayed for other peers.",
            ),
            circuits_denied: counter(
                registry,
                "peergrid_net_relay_circuits_denied_total",
                "Circuits this node refused to relay (limits, or not relaying).",
            ),
            circuits_open: gauge(
                registry,
                "peergrid_net_relay_circuits_open",
                "Circuits open through this node now.",
            ),
            reservations_served: gauge(
                registry,
                "peergrid_net_relay_reservations_served",
                "Peers holding a reservation on this node now.",
            ),
            circuit_bytes: CircuitBytes::new(registry),
        }
    }

    /// Sets the reachability gauge to `verdict`.
    pub fn verdict(&self, verdict: Verdict) {
        for v in Verdict::ALL {
            self.reachability
                .with_label_values(&[v.as_str()])
                .set(i64::from(v == verdict));
        }
    }
}

/// `peergrid_net_relay_circuit_bytes_total`: the relay server's own counts
/// ([`relay::CircuitBytes`], kept by its handlers as they copy), read at each scrape.
/// Zero on a node that does not relay.
#[derive(Debug, Clone)]
pub struct CircuitBytes {
    counter: IntCounterVec,
    /// The relay server's counts, once it is built.
    source: Arc<Mutex<Option<relay::CircuitBytes>>>,
}

impl CircuitBytes {
    fn new(registry: &Registry) -> Self {
        let counter = IntCounterVec::new(
            Opts::new(
                "peergrid_net_relay_circuit_bytes_total",
                "Bytes the circuits this node relays have forwarded, by direction: src_to_dst from the peer that opened a circuit to the peer it reaches (which holds a reservation here), dst_to_src back.",
            ),
            &["direction"],
        )
        .expect("valid metric name");
        for direction in CIRCUIT_DIRECTIONS {
            counter.with_label_values(&[direction]);
        }
        register(
            registry,
            Self {
                counter,
                source: Arc::default(),
            },
        )
    }

    /// Reads the bytes relayed from `source` (the relay server's handle) from now on.
    pub(crate) fn count(&self, source: relay::CircuitBytes) {
        *self.source.lock().unwrap_or_else(PoisonError::into_inner) = Some(source);
    }

    /// Brings the counter up to the relay's counts (under the lock, so that two
    /// scrapes at once add each byte once).
    fn sync(&self) {
        let source = self.source.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(source) = source.as_ref() else {
            return;
        };
        for (direction, total) in CIRCUIT_DIRECTIONS
            .iter()
            .zip([source.src_to_dst(), source.dst_to_src()])
        {
            let counter = self.counter.with_label_values(&[direction]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// Bytes relayed so far, in both directions.
    pub fn total(&self) -> u64 {
        self.sync();
        CIRCUIT_DIRECTIONS
            .iter()
            .map(|d| self.counter.with_label_values(&[d]).get())
            .sum()
    }
}

impl Collector for CircuitBytes {
    fn desc(&self) -> Vec<&Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.sync();
        self.counter.collect()
    }
}
