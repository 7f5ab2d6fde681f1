//! Relays and connection paths: the NAT settings ([`NatConfig`]), the limits a
//! public peer relays under ([`RelayLimits`], circuit relay v2), which relays a NATed
//! peer reserves a slot on ([`Relays`]), and whether each connection to a peer is
//! direct or goes through a relay ([`Paths`]).
//!
//! The event loop (`event_loop/nat.rs`) owns one `Relays` and one `Paths` and feeds
//! them swarm events; their decisions are plain functions of their state, tested
//! below. A relayed connection is closed once a direct one to the same peer exists
//! (hole punched by DCUtR), so requests take the direct path.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, relay};
use serde::{Deserialize, Serialize};

use super::reachability::is_relayed;

/// How much a public peer relays for others (circuit relay v2). The defaults fit a
/// chunk's offer and its result (each at most 8 MiB) in one circuit, and leave
/// bulk blobs to a direct connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Most circuits relayed at once (0: relay for nobody).
    pub max_circuits: usize,
    /// Most circuits at once per peer.
    pub max_circuits_per_peer: usize,
    /// Most bytes one circuit carries (both ways) before it is closed.
    pub max_circuit_bytes: u64,
    /// Longest a circuit lasts before it is closed.
    pub max_circuit_duration: Duration,
    /// Most peers holding a reservation at once.
    pub max_reservations: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_circuits: 64,
            max_circuits_per_peer: 8,
            max_circuit_bytes: 24 * 1024 * 1024,
            max_circuit_duration: Duration::from_secs(15 * 60),
            max_reservations: 256,
        }
    }
}

impl RelayLimits {
    /// The relay server's config: these limits, and rate limits per peer and per IP
    /// so that one peer cannot churn circuits or reservations.
    pub(crate) fn server_config(&self) -> relay::Config {
        let per_minute = |n: u32| NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
        relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(30 * 60),
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: self.max_circuit_duration,
            max_circuit_bytes: self.max_circuit_bytes,
            reservation_rate_limiters: Vec::new(),
            circuit_src_rate_limiters: Vec::new(),
        }
        .reservation_rate_per_peer(per_minute(10), Duration::from_secs(60))
        .reservation_rate_per_ip(per_minute(30), Duration::from_secs(60))
        .circuit_src_per_peer(per_minute(60), Duration::from_secs(60))
        .circuit_src_per_ip(per_minute(120), Duration::from_secs(60))
    }
}

/// Settings for peers behind NAT: reachability, relays, hole punching, port mapping.
#[derive(Debug, Clone)]
pub struct NatConfig {
    /// Addresses the operator declares this node reachable at (a VPS's public
    /// address): public from the start, so it relays and answers AutoNAT.
    pub external_addrs: Vec<Multiaddr>,
    /// Ask the home router for a port mapping (UPnP IGD).
    pub upnp: bool,
    /// Relay for others while this node is public.
    pub relay_server: bool,
    /// The relay's limits.
    pub relay: RelayLimits,
    /// Relays a NATed node keeps a reservation on.
    pub relays_wanted: usize,
    /// How long a request for a blob piece waits for a direct connection (hole
    /// punching) before it goes through the relay.
    pub direct_wait: Duration,
    /// Count the documentation ranges as global addresses (NAT labs only).
    pub lab_global: bool,
}

impl Default for NatConfig {
    fn default() -> Self {
        Self {
            external_addrs: Vec::new(),
            upnp: true,
            relay_server: true,
            relay: RelayLimits::default(),
            relays_wanted: 2,
            direct_wait: Duration::from_secs(5),
            lab_global: false,
        }
    }
}

/// Most relays remembered as candidates.
const MAX_CANDIDATES: usize = 64;
/// How long a relay whose reservation ended waits before this node asks it again.
const RESERVE_COOLDOWN: Duration = Duration::from_secs(30);

/// The relays a NATed node knows of, and those it holds (or asked for) a
/// reservation on.
#[derive(Debug, Default)]
pub(crate) struct Relays {
    /// Peers that offer to relay (identify lists the hop protocol), with the
    /// address this node reaches them at directly.
    candidates: BTreeMap<PeerId, Multiaddr>,
    /// Reservations asked for or held: the circuit address listened on.
    reserved: BTreeMap<PeerId, Multiaddr>,
    /// Relays whose reservation ended, not asked again before this instant.
    cooldown: BTreeMap<PeerId, Instant>,
}

impl Relays {
    /// A peer offers to relay, reachable at `addr` (a direct address).
    pub(crate) fn candidate(&mut self, peer: PeerId, addr: Multiaddr) {
        if is_relayed(&addr) {
            return;
        }
        if self.candidates.len() >= MAX_CANDIDATES && !self.candidates.contains_key(&peer) {
            return;
        }
        self.candidates.insert(peer, addr);
    }

    /// A peer no longer relays (it left, or stopped offering).
    pub(crate) fn gone(&mut self, peer: &PeerId) {
        self.candidates.remove(peer);
        self.reserved.remove(peer);
        self.cooldown.remove(peer);
    }

    /// The reservation on `peer` ended (refused, expired, connection closed): it
    /// may be asked again after a while.
    pub(crate) fn released(&mut self, peer: &PeerId, now: Instant) {
        if self.reserved.remove(peer).is_some() && self.candidates.contains_key(peer) {
            self.cooldown.insert(*peer, now + RESERVE_COOLDOWN);
        }
    }

    /// How many reservations are asked for or held.
    pub(crate) fn held(&self) -> usize {
        self.reserved.len()
    }

    /// Which relay to reserve on next, and the circuit address to listen on: none
    /// while this node is public or holds `wanted` reservations; else a candidate
    /// it holds none on yet, among those `connected` (a reservation lives on a
    /// connection).
    pub(crate) fn next(
        &self,
        public: bool,
        wanted: usize,
        now: Instant,
        connected: impl Fn(&PeerId) -> bool,
    ) -> Option<(PeerId, Multiaddr)> {
        if public || self.reserved.len() >= wanted {
            return None;
        }
        self.candidates
            .iter()
            .find(|(p, _)| {
                !self.reserved.contains_key(p)
                    && self.cooldown.get(p).is_none_or(|until| *until <= now)
                    && connected(p)
            })
            .map(|(p, a)| (*p, circuit_addr(a, *p)))
    }

    /// Records a reservation asked for.
    pub(crate) fn reserving(&mut self, peer: PeerId, circuit: Multiaddr) {
        self.reserved.insert(peer, circuit);
    }
}

/// `addr/p2p/<relay>/p2p-circuit`: the address to listen on through a relay.
pub(crate) fn circuit_addr(addr: &Multiaddr, relay: PeerId) -> Multiaddr {
    let mut base: Multiaddr = addr
        .iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect();
    base.push(Protocol::P2p(relay));
    base.push(Protocol::P2pCircuit);
    base
}

/// The relay in a circuit address (the peer id before `/p2p-circuit`).
pub(crate) fn relay_in(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(id) => last = Some(id),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

/// How a connection reaches its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    Direct,
    /// Through this relay (`None` when the address does not name it).
    Relayed(Option<PeerId>),
}

impl Path {
    /// The path of a connection, from its endpoint.
    pub(crate) fn of(endpoint: &ConnectedPoint) -> Self {
        if !endpoint.is_relayed() {
            return Path::Direct;
        }
        let addr = match endpoint {
            ConnectedPoint::Dialer { address, .. } => address,
            ConnectedPoint::Listener { local_addr, .. } => local_addr,
        };
        Path::Relayed(relay_in(addr))
    }
}

/// How `peers --json` shows a peer's connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathInfo {
    /// `direct` or `relayed`.
    pub path: String,
    /// The relay, when relayed.
    pub via: Option<String>,
}

/// The open connections of every peer and their paths. Bounded by the connection
/// limits (at most a few per peer, a few hundred in all).
#[derive(Debug, Default)]
pub(crate) struct Paths {
    conns: HashMap<PeerId, Vec<(ConnectionId, Path, Multiaddr)>>,
}

impl Paths {
    /// A connection opened, reaching the peer at `remote`.
    pub(crate) fn opened(&mut self, peer: PeerId, id: ConnectionId, path: Path, remote: Multiaddr) {
        self.conns.entry(peer).or_default().push((id, path, remote));
    }

    /// The address a connection reaches its peer at.
    pub(crate) fn remote(&self, peer: &PeerId, id: ConnectionId) -> Option<&Multiaddr> {
        self.conns
            .get(peer)?
            .iter()
            .find(|(c, _, _)| *c == id)
            .map(|(_, _, a)| a)
    }

    pub(crate) fn closed(&mut self, peer: &PeerId, id: ConnectionId) {
        if let Some(list) = self.conns.get_mut(peer) {
            list.retain(|(c, _, _)| *c != id);
            if list.is_empty() {
                self.conns.remove(peer);
            }
        }
    }

    /// Whether a direct connection to `peer` is open.
    pub(crate) fn has_direct(&self, peer: &PeerId) -> bool {
        self.conns
            .get(peer)
            .is_some_and(|l| l.iter().any(|(_, p, _)| *p == Path::Direct))
    }

    /// The relayed connections to `peer`.
    pub(crate) fn relayed(&self, peer: &PeerId) -> Vec<ConnectionId> {
        self.conns
            .get(peer)
            .map(|l| {
                l.iter()
                    .filter(|(_, p, _)| matches!(p, Path::Relayed(_)))
                    .map(|(c, _, _)| *c)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `direct` when any connection to `peer` is, else `relayed` via its relay.
    pub(crate) fn info(&self, peer: &PeerId) -> Option<PathInfo> {
        let list = self.conns.get(peer)?;
        if list.iter().any(|(_, p, _)| *p == Path::Direct) {
            return Some(PathInfo {
                path: "direct".into(),
                via: None,
            });
        }
        let via = list.iter().find_map(|(_, p, _)| match p {
            Path::Relayed(r) => *r,
            Path::Direct => None,
        });
        Some(PathInfo {
            path: "relayed".into(),
            via: via.map(|v| v.to_string()),
        })
    }

    /// Connections by path: (direct, relayed).
    pub(crate) fn counts(&self) -> (usize, usize) {
        self.conns
            .values()
            .flatten()
            .fold((0, 0), |(d, r), (_, p, _)| match p {
                Path::Direct => (d + 1, r),
                Path::Relayed(_) => (d, r + 1),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nated_node_reserves_on_connected_relays_until_it_has_enough() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut relays = Relays::default();
        relays.candidate(a, "/ip4/198.51.100.2/tcp/7946".parse().unwrap());
        relays.candidate(b, "/ip4/198.51.100.3/tcp/7946".parse().unwrap());
        relays.candidate(
            c,
            "/ip4/1.2.3.4/tcp/1/p2p-circuit".parse().unwrap(), // relayed: never a relay
        );
        let now = Instant::now();
        assert_eq!(
            relays.next(true, 2, now, |_| true),
            None,
            "public: no relay"
        );
        assert_eq!(relays.next(false, 2, now, |_| false), None, "not connected");
        let (first, circuit) = relays.next(false, 2, now, |_| true).unwrap();
        assert_eq!(relay_in(&circuit), Some(first));
        assert!(is_relayed(&circuit));
        relays.reserving(first, circuit);
        let (second, c2) = relays.next(false, 2, now, |_| true).unwrap();
        assert_ne!(first, second);
        relays.reserving(second, c2);
        assert_eq!(relays.held(), 2);
        assert_eq!(relays.next(false, 2, now, |_| true), None, "enough");
        relays.released(&first, now);
        assert_eq!(relays.next(false, 2, now, |_| true), None, "cooling down");
        let later = now + RESERVE_COOLDOWN;
        assert_eq!(
            relays.next(false, 2, later, |_| true).map(|x| x.0),
            Some(first)
        );
        relays.gone(&first);
        assert_eq!(relays.next(false, 2, later, |_| true), None);
    }

    #[test]
    fn paths_say_direct_when_any_connection_is() {
        let (p, r) = (PeerId::random(), PeerId::random());
        let mut paths = Paths::default();
        let (c1, c2) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        let addr: Multiaddr = "/ip4/1.2.3.4/tcp/1".parse().unwrap();
        paths.opened(p, c1, Path::Relayed(Some(r)), addr.clone());
        let info = paths.info(&p).unwrap();
        assert_eq!(info.path, "relayed");
        assert_eq!(info.via, Some(r.to_string()));
        assert!(!paths.has_direct(&p));
        paths.opened(p, c2, Path::Direct, addr.clone());
        assert_eq!(paths.remote(&p, c2), Some(&addr));
        assert_eq!(paths.info(&p).unwrap().path, "direct");
        assert_eq!(paths.relayed(&p), vec![c1]);
        assert_eq!(paths.counts(), (1, 1));
        paths.closed(&p, c1);
        paths.closed(&p, c2);
        assert_eq!(paths.info(&p), None);
    }
}
