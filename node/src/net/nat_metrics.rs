//! The NAT side of the network's metrics: reachability, direct and relayed
//! connections, hole punching, and the circuits this node relays for others.
//! Recorded by the event loop (`event_loop/nat.rs`); part of [`NetMetrics`](super::metrics::NetMetrics).

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::reachability::Verdict;
use crate::metrics::{counter, counter_vec, gauge, gauge_vec, histogram};

/// The `path` label of connections.
pub const PATHS: [&str; 2] = ["direct", "relayed"];
/// The `outcome` label of hole punches.
pub const PUNCH_OUTCOMES: [&str; 2] = ["success", "failure"];
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
