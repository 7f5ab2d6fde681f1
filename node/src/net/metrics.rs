//! The network's metrics: recorded by the event loop (peers, adverts, request
//! outcomes, offences, bans) and the codec (messages and bytes by protocol).

#![allow(unused_imports)]
use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::RequestError;
use super::protocol::{BLOB_PROTOCOL, CAPACITY_TOPIC, RESULT_PROTOCOL, TASK_PROTOCOL};
use crate::metrics::{
    EXEC_BUCKETS, FAST_BUCKETS, JOB_BUCKETS, counter, counter_vec, gauge, gauge_vec, histogram,
};

/// The `protocol` label: the request-response protocols (capacity is one since
/// version 3).
pub const PROTOCOLS: [&str; 4] = ["task", "result", "blob", "capacity"];
/// The `protocol` label of request outcomes.
pub const REQUEST_PROTOCOLS: [&str; 4] = ["task", "result", "blob", "capacity"];
/// The `direction` label.
pub const DIRECTIONS: [&str; 2] = ["in", "out"];
/// The `outcome` label of outbound requests.
pub const REQUEST_OUTCOMES: [&str; 6] = [
    "ok",
    "timeout",
    "unreachable",
    "connection_closed",
    "unsupported",
    "io",
];
/// The `kind` label of undecodable messages.
pub const DECODE_KINDS: [&str; 3] = ["oversized", "garbled", "invalid"];
/// The `state` label of the capacity view's slots.
pub const VIEW_SLOT_STATES: [&str; 2] = ["total", "free"];
/// Why an inbound connection was refused by address (see `net::guard`).
pub const DENIED_REASONS: [&str; 4] = ["banned_ip", "per_ip", "per_subnet", "pending_per_ip"];
/// The network's metrics.
#[derive(Debug, Clone)]
pub struct NetMetrics {
    /// Peers with an open connection.
    pub connected_peers: IntGauge,
    /// Connected peers whose connections are kept open when idle (subscriptions
    /// either way, recent work; see `net::keep_alive`).
    pub kept_peers: IntGauge,
    /// Peers subscribed to this node's advert.
    pub subscribers: IntGauge,
    /// Peers in the peer book.
    pub known_peers: IntGauge,
    /// Peers with a fresh capacity advert.
    pub view_peers: IntGauge,
    /// Slots in the fresh adverts, by state (total, free).
    pub view_slots: IntGaugeVec,
    /// Messages by protocol and direction.
    pub messages: IntCounterVec,
    /// Message bytes by protocol and direction.
    pub bytes: IntCounterVec,
    /// Outbound requests by protocol and outcome.
    pub requests: IntCounterVec,
    /// Messages that broke the wire rules, by protocol and kind.
    pub decode_errors: IntCounterVec,
    /// Offences counted against peers.
    pub penalties: IntCounter,
    /// Peers banned.
    pub bans: IntCounter,
    /// Peers banned now.
    pub banned_peers: IntGauge,
    /// Inbound requests dropped because the node was busy.
    pub inbound_dropped: IntCounter,
    /// Ping round trips.
    pub ping_rtt: Histogram,
    /// Inbound connections refused by address, by reason ([`DENIED_REASONS`]).
    pub connections_denied: IntCounterVec,
    /// Bytes of inbound requests being read or held (see `net::held`).
    pub inbound_held_bytes: IntGauge,
    /// Reachability, paths, hole punching and relaying.
    pub nat: super::nat_metrics::NatMetrics,
}

impl NetMetrics {
    /// The network's metrics in `registry`.
    pub fn new(registry: &Registry) -> Self {
        Self {
            connected_peers: gauge(
                registry,
                "peergrid_net_connected_peers",
                "Peers with an open connection.",
            ),
            kept_peers: gauge(
                registry,
                "peergrid_net_kept_peers",
                "Connected peers whose connections stay open when idle: subscribed to, subscribing, or exchanging work; the others close after the idle timeout.",
            ),
            subscribers: gauge(
                registry,
                "peergrid_net_subscribers",
                "Peers subscribed to this node's capacity advert (it pushes its changes to them); at most 64, about 8 on average in a grid.",
            ),
            known_peers: gauge(
                registry,
                "peergrid_net_known_peers",
                "Peers this node remembers (bounded by the peer book).",
            ),
            view_peers: gauge(
                registry,
                "peergrid_net_capacity_view_peers",
                "Peers with a fresh capacity advert in this node's view.",
            ),
            view_slots: gauge_vec(
                registry,
                "peergrid_net_capacity_view_slots",
                "Slots advertised by the peers in this node's capacity view, by state (total, free).",
                &["state"],
                &[&VIEW_SLOT_STATES],
            ),
            messages: counter_vec(
                registry,
                "peergrid_net_messages_total",
                "Messages sent (out) and received (in), by protocol.",
                &["protocol", "direction"],
                &[&PROTOCOLS, &DIRECTIONS],
            ),
            bytes: counter_vec(
                registry,
                "peergrid_net_message_bytes_total",
                "Encoded message bytes sent (out) and received (in), by protocol.",
                &["protocol", "direction"],
                &[&PROTOCOLS, &DIRECTIONS],
            ),
            requests: counter_vec(
                registry,
                "peergrid_net_requests_total",
                "Outbound requests by protocol and outcome.",
                &["protocol", "outcome"],
                &[&REQUEST_PROTOCOLS, &REQUEST_OUTCOMES],
            ),
            decode_errors: counter_vec(
                registry,
                "peergrid_net_decode_errors_total",
                "Messages from peers that broke the wire rules (oversized, garbled, invalid), by protocol.",
                &["protocol", "kind"],
                &[&PROTOCOLS, &DECODE_KINDS],
            ),
            penalties: counter(
                registry,
                "peergrid_net_penalties_total",
                "Offences counted against peers.",
            ),
            bans: counter(
                registry,
                "peergrid_net_bans_total",
                "Peers disconnected and banned for repeated offences.",
            ),
            banned_peers: gauge(registry, "peergrid_net_banned_peers", "Peers banned now."),
            inbound_dropped: counter(
                registry,
                "peergrid_net_inbound_dropped_total",
                "Inbound requests dropped because the node was too busy to take them.",
            ),
            ping_rtt: histogram(
                registry,
                "peergrid_net_ping_rtt_seconds",
                "Round-trip time of pings to connected peers.",
                FAST_BUCKETS,
            ),
            connections_denied: counter_vec(
                registry,
                "peergrid_net_connections_denied_total",
                "Inbound connections refused by the remote address: banned, over the per-IP or per-network limit, or over the handshakes one IP may hold open.",
                &["reason"],
                &[&DENIED_REASONS],
            ),
            inbound_held_bytes: gauge(
                registry,
                "peergrid_net_inbound_held_bytes",
                "Bytes of inbound requests being read, queued or handled (bounded by the inbound byte budget).",
            ),
            nat: super::nat_metrics::NatMetrics::new(registry),
        }
    }

    /// One message of `bytes` on `protocol` (a stream protocol or the capacity topic).
    pub fn message(&self, protocol: &str, direction: Direction, bytes: usize) {
        let labels = [protocol_label(protocol), direction.as_str()];
        self.messages.with_label_values(&labels).inc();
        self.bytes.with_label_values(&labels).inc_by(bytes as u64);
    }

    /// How an outbound request on `protocol` ended.
    pub fn request(&self, protocol: &str, outcome: Result<(), &RequestError>) {
        let outcome = match outcome {
            Ok(()) => "ok",
            Err(RequestError::Timeout) => "timeout",
            Err(RequestError::Unreachable) => "unreachable",
            Err(RequestError::ConnectionClosed) => "connection_closed",
            Err(RequestError::Unsupported) => "unsupported",
            Err(RequestError::Io(_) | RequestError::Shutdown) => "io",
        };
        self.requests
            .with_label_values(&[protocol_label(protocol), outcome])
            .inc();
    }

    /// A message on `protocol` that broke the rules (`kind`: one of [`DECODE_KINDS`]).
    pub fn decode_error(&self, protocol: &str, kind: &'static str) {
        self.decode_errors
            .with_label_values(&[protocol_label(protocol), kind])
            .inc();
    }
}

impl Default for NetMetrics {
    fn default() -> Self {
        Self::new(&Registry::new())
    }
}

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received.
    In,
    /// Sent.
    Out,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }
}

/// The `protocol` label of a stream protocol or topic name. Only the names this node
/// speaks reach here (libp2p negotiates them), so the label set stays fixed.
pub fn protocol_label(protocol: &str) -> &'static str {
    match protocol {
        TASK_PROTOCOL => "task",
        RESULT_PROTOCOL => "result",
        BLOB_PROTOCOL => "blob",
        CAPACITY_TOPIC => "capacity",
        _ => "other",
    }
}
