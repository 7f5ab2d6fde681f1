//! The event loop's NAT side: what AutoNAT, UPnP, the relay (client and server) and
//! DCUtR report, turned into the reachability verdict ([`Reachability`]), relay
//! reservations ([`Relays`]) and the path of each connection ([`Paths`]).
//!
//! - A node is *public* while it has a direct external address (declared with
//!   `--external-addr`, confirmed by an AutoNAT v2 dial-back or a UPnP mapping); only
//!   then does its relay server advertise and accept reservations.
//! - Otherwise it reserves a slot on up to `relays_wanted` relays it is connected to
//!   (bootstrap peers, peers found on the DHT that offer the hop protocol); the relay
//!   client confirms each circuit address, which identify pushes to peers.
//! - A relayed connection is upgraded by DCUtR when it can be; once a direct
//!   connection to the peer exists, the relayed ones are closed, so requests take
//!   the direct path. A request for a blob piece to a peer reached only through a
//!   relay waits up to `direct_wait` for that upgrade, and says so in the log.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use libp2p::core::ConnectedPoint;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, autonat, dcutr, identify, relay, upnp};

use super::super::behaviour::BehaviourEvent;
use super::super::peers::PeerInfo;
use super::super::reachability::{Reachability, ReachabilityStatus, Verdict};
use super::super::relay::{NatConfig, Path, Paths, Relays};
use super::{BlobReply, BlobRequest, EventLoop, IDENTIFY_PROTOCOL, Reply};

/// Most blob requests held back waiting for a direct connection (more go at once).
const MAX_PARKED: usize = 256;
/// How long a relayed connection stays open beside a new direct one (requests
/// already on it finish).
const CLOSE_RELAYED_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// A blob request waiting for a direct connection.
struct Parked {
    until: Instant,
    peer: PeerId,
    request: BlobRequest,
    reply: Reply<BlobReply>,
}

/// The NAT state the event loop keeps.
pub(super) struct NatState {
    reach: Reachability,
    relays: Relays,
    paths: Paths,
    /// Relay listeners: which relay each circuit listener is on.
    listeners: HashMap<libp2p::core::transport::ListenerId, PeerId>,
    /// The address this node dialled each directly connected peer at.
    dialed: HashMap<PeerId, Multiaddr>,
    parked: VecDeque<Parked>,
    /// Relayed connections to close once a direct one is established.
    close_relayed: Vec<(Instant, PeerId)>,
    /// When the relayed connection to a peer opened (for the time to direct).
    relayed_since: HashMap<PeerId, Instant>,
    /// Peers whose hole punch failed: blob requests do not wait for them.
    punch_failed: HashSet<PeerId>,
    /// Peers the log was told about waiting for (once per relayed connection).
    told_wait: HashSet<PeerId>,
    relaying: bool,
    verdict: Verdict,
    config: NatConfig,
    /// The bootstrap peers are dialled once this node listens (see `nat_bootstrap`).
    bootstrap_pending: bool,
}

impl std::fmt::Debug for NatState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatState")
            .field("verdict", &self.verdict)
            .finish_non_exhaustive()
    }
}

impl NatState {
    pub(super) fn new(config: &NatConfig) -> Self {
        Self {
            reach: Reachability::new(&config.external_addrs, config.lab_global),
            relays: Relays::default(),
            paths: Paths::default(),
            listeners: HashMap::new(),
            dialed: HashMap::new(),
            parked: VecDeque::new(),
            close_relayed: Vec::new(),
            relayed_since: HashMap::new(),
            punch_failed: HashSet::new(),
            told_wait: HashSet::new(),
            relaying: false,
            verdict: Verdict::Unknown,
            config: config.clone(),
            bootstrap_pending: true,
        }
    }
}

impl EventLoop {
    /// At start: the declared external addresses, the relay server off until this
    /// node is known to be public, and its byte counts read by the metrics.
    pub(super) fn nat_start(&mut self) {
        if let Some(relay) = self.swarm.behaviour_mut().relay.as_mut() {
            relay.set_status(Some(relay::Status::Disable));
            self.metrics.nat.circuit_bytes.count(relay.circuit_bytes());
        }
        for addr in self.nat.config.external_addrs.clone() {
            self.swarm.add_external_address(addr);
        }
        self.update_reachability();
    }

    /// The reachability part of `status`.
    pub(super) fn reachability(&self) -> ReachabilityStatus {
        self.nat.reach.status(self.nat.relaying)
    }

    /// Fills each peer's path (direct, or relayed via whom).
    pub(super) fn annotate_paths(&self, peers: &mut [PeerInfo]) {
        for p in peers {
            if let Some(info) = p
                .peer_id
                .parse::<PeerId>()
                .ok()
                .and_then(|id| self.nat.paths.info(&id))
            {
                p.path = Some(info.path);
                p.via = info.via;
            }
        }
    }

    pub(super) fn nat_connected(&mut self, peer: PeerId, id: ConnectionId, at: &ConnectedPoint) {
        let path = Path::of(at);
        let now = Instant::now();
        match path {
            Path::Direct => {
                if let ConnectedPoint::Dialer { address, .. } = at {
                    self.nat.dialed.insert(peer, address.clone());
                }
                if let Some(since) = self.nat.relayed_since.remove(&peer) {
                    let took = now.saturating_duration_since(since);
                    self.metrics.nat.time_to_direct.observe(took.as_secs_f64());
                    tracing::info!(%peer, ms = took.as_millis() as u64, "direct connection (it was relayed before)");
                    self.nat
                        .close_relayed
                        .push((now + CLOSE_RELAYED_AFTER, peer));
                }
                self.send_parked(|p| p.peer == peer, "over the new direct connection");
            }
            Path::Relayed(via) => {
                if !self.nat.paths.has_direct(&peer) {
                    self.nat.relayed_since.entry(peer).or_insert(now);
                }
                tracing::debug!(%peer, relay = ?via, "relayed connection");
            }
        }
        let remote = match at {
            ConnectedPoint::Dialer { address, .. } => address.clone(),
            ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr.clone(),
        };
        self.nat.paths.opened(peer, id, path, remote);
    }

    pub(super) fn nat_closed(&mut self, peer: PeerId, id: ConnectionId) {
        self.nat.paths.closed(&peer, id);
        if self.nat.paths.info(&peer).is_none() {
            self.nat.dialed.remove(&peer);
            self.nat.relayed_since.remove(&peer);
            self.nat.punch_failed.remove(&peer);
            self.nat.told_wait.remove(&peer);
            self.nat.relays.released(&peer, Instant::now());
        }
    }

    /// Drops the listen addresses a peer announced that are narrower than the
    /// connection it announced them on (its loopback and LAN addresses, seen from the
    /// internet): they would reach another peer, or this one, and fail the dial.
    pub(super) fn nat_filter_identify(
        &self,
        peer: PeerId,
        conn: ConnectionId,
        mut info: identify::Info,
    ) -> identify::Info {
        if let Some(remote) = self.nat.paths.remote(&peer, conn) {
            let lab = self.nat.config.lab_global;
            info.listen_addrs
                .retain(|a| super::super::reachability::dialable(a, remote, lab));
        }
        info
    }

    /// Dials the bootstrap peers once this node listens on TCP (so that the dial
    /// reuses the listening port, which NATs map and peers observe), or after a
    /// second.
    pub(super) fn nat_bootstrap(&mut self, started: Instant) {
        if !self.nat.bootstrap_pending {
            return;
        }
        let tcp = |a: &Multiaddr| {
            a.iter()
                .any(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_)))
        };
        let tcp_up = self.swarm.listeners().any(tcp);
        let tcp_wanted = self.config.listen.iter().any(tcp);
        if tcp_up || !tcp_wanted || started.elapsed() >= std::time::Duration::from_secs(1) {
            self.nat.bootstrap_pending = false;
            for addr in self.config.bootstrap.clone() {
                self.dial_addr(addr, None);
            }
        }
    }

    /// A peer said what it speaks: a peer offering the hop protocol on a direct
    /// connection is a relay this node may reserve on.
    pub(super) fn nat_identified(&mut self, peer: PeerId, info: &identify::Info) {
        if info.protocol_version != IDENTIFY_PROTOCOL {
            return;
        }
        let hop = info.protocols.contains(&relay::HOP_PROTOCOL_NAME);
        match (hop, self.nat.dialed.get(&peer)) {
            (true, Some(addr)) => self.nat.relays.candidate(peer, addr.clone()),
            (true, None) => {}
            (false, _) => self.nat.relays.gone(&peer),
        }
        self.reserve_relays();
    }

    /// Sends a blob request now, or holds it back while the peer is reached only
    /// through a relay and a hole punch may still give a direct connection.
    pub(super) fn send_blob_piece(
        &mut self,
        peer: PeerId,
        request: BlobRequest,
        reply: Reply<BlobReply>,
    ) {
        let wait = self.nat.config.direct_wait;
        let waiting = !self.nat.paths.has_direct(&peer)
            && !self.nat.paths.relayed(&peer).is_empty()
            && !self.nat.punch_failed.contains(&peer)
            && self
                .nat
                .relayed_since
                .get(&peer)
                .is_some_and(|since| since.elapsed() < wait)
            && self.nat.parked.len() < MAX_PARKED;
        if !waiting {
            self.send_blob_now(peer, request, reply);
            return;
        }
        if self.nat.told_wait.insert(peer) {
            tracing::info!(%peer, "peer reached through a relay: waiting up to {wait:?} for a direct connection before fetching blob pieces through the relay");
        }
        let until = self
            .nat
            .relayed_since
            .get(&peer)
            .map_or_else(Instant::now, |since| *since + wait);
        self.nat.parked.push_back(Parked {
            until,
            peer,
            request,
            reply,
        });
    }

    fn send_blob_now(&mut self, peer: PeerId, request: BlobRequest, reply: Reply<BlobReply>) {
        let id = self
            .swarm
            .behaviour_mut()
            .blob
            .send_request(&peer, Ok(request));
        self.pending_blob.insert(id, reply);
    }

    /// Sends the held-back blob requests that `due` picks, saying how they go.
    fn send_parked(&mut self, due: impl Fn(&Parked) -> bool, how: &str) {
        let mut told = HashSet::new();
        let mut keep = VecDeque::new();
        while let Some(p) = self.nat.parked.pop_front() {
            if !due(&p) {
                keep.push_back(p);
                continue;
            }
            if told.insert(p.peer) {
                let via = self.nat.paths.info(&p.peer).and_then(|i| i.via);
                tracing::info!(peer = %p.peer, relay = via.as_deref().unwrap_or("-"), "fetching blob pieces {how}");
            }
            self.send_blob_now(p.peer, p.request, p.reply);
        }
        self.nat.parked = keep;
    }

    /// Every tick: held-back requests whose wait is over, relayed connections
    /// beside direct ones, reservations, and the gauges.
    pub(super) fn nat_tick(&mut self) {
        let now = Instant::now();
        let wait = self.nat.config.direct_wait;
        let direct: HashSet<PeerId> = self
            .nat
            .parked
            .iter()
            .filter(|p| self.nat.paths.has_direct(&p.peer))
            .map(|p| p.peer)
            .collect();
        self.send_parked(|p| direct.contains(&p.peer), "over the direct connection");
        let failed = self.nat.punch_failed.clone();
        self.send_parked(
            |p| failed.contains(&p.peer),
            "through the relay: hole punching failed (within the relay's limits)",
        );
        self.send_parked(
            |p| p.until <= now,
            &format!(
                "through the relay: no direct connection after {wait:?} (within the relay's limits)"
            ),
        );
        let (due, later): (Vec<_>, Vec<_>) = self
            .nat
            .close_relayed
            .drain(..)
            .partition(|(at, _)| *at <= now);
        self.nat.close_relayed = later;
        for (_, peer) in due {
            if self.nat.paths.has_direct(&peer) {
                for conn in self.nat.paths.relayed(&peer) {
                    tracing::debug!(%peer, "closing the relayed connection: a direct one is open");
                    self.swarm.close_connection(conn);
                }
            }
        }
        self.reserve_relays();
        let (d, r) = self.nat.paths.counts();
        let m = &self.metrics.nat;
        m.connections.with_label_values(&["direct"]).set(d as i64);
        m.connections.with_label_values(&["relayed"]).set(r as i64);
        m.reservations_held.set(self.nat.relays.held() as i64);
    }

    /// Asks for reservations on relays while this node is not public.
    fn reserve_relays(&mut self) {
        let public = self.nat.reach.is_public();
        let wanted = self.nat.config.relays_wanted;
        let now = Instant::now();
        while let Some((relay, circuit)) = {
            let swarm = &self.swarm;
            self.nat
                .relays
                .next(public, wanted, now, |p| swarm.is_connected(p))
        } {
            match self.swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    tracing::info!(%relay, %circuit, "asking a relay for a reservation");
                    self.nat.listeners.insert(id, relay);
                    self.nat.relays.reserving(relay, circuit);
                }
                Err(e) => {
                    tracing::warn!(%relay, %circuit, error = %e, "could not listen through the relay");
                    self.nat.relays.gone(&relay);
                }
            }
        }
    }

    /// Recomputes the verdict: the relay server follows it, the log and the metric
    /// say when it changes.
    fn update_reachability(&mut self) {
        let public = self.nat.reach.is_public();
        self.swarm.behaviour_mut().autonat_server.set_open(public);
        if let Some(relay) = self.swarm.behaviour_mut().relay.as_mut()
            && public != self.nat.relaying
        {
            relay.set_status(Some(if public {
                relay::Status::Enable
            } else {
                relay::Status::Disable
            }));
            self.nat.relaying = public;
            tracing::info!(
                relaying = public,
                "relay server {}",
                if public {
                    "on: this node is public"
                } else {
                    "off"
                }
            );
        }
        let status = self.nat.reach.status(self.nat.relaying);
        if status.verdict != self.nat.verdict {
            tracing::info!("reachability: {}", status.text);
            self.nat.verdict = status.verdict;
        }
        self.metrics.nat.verdict(status.verdict);
    }

    /// Swarm events the rest of the loop does not handle.
    pub(super) fn on_nat_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
                self.nat.reach.confirmed(address);
                self.update_reachability();
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                tracing::info!(%address, "external address expired");
                self.nat.reach.expired(&address);
                self.update_reachability();
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some(relay) = self.nat.listeners.remove(&listener_id) {
                    tracing::info!(%relay, ?reason, "relay reservation ended");
                    self.nat.relays.released(&relay, Instant::now());
                }
            }
            SwarmEvent::NewExternalAddrCandidate { address } => {
                tracing::debug!(%address, "external address candidate (observed by a peer)");
            }
            _ => {}
        }
    }

    /// Behaviour events of the NAT protocols.
    pub(super) fn on_nat_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Autonat(e) => self.on_autonat(e),
            BehaviourEvent::Dcutr(e) => self.on_dcutr(e),
            BehaviourEvent::Relay(e) => self.on_relay_server(e),
            BehaviourEvent::RelayClient(e) => self.on_relay_client(e),
            BehaviourEvent::Upnp(e) => self.on_upnp(e),
            BehaviourEvent::AutonatServer(e) => {
                tracing::debug!(client = %e.client, addr = %e.tested_addr, ok = e.result.is_ok(), "AutoNAT: tested a peer's address");
            }
            _ => {}
        }
    }

    fn on_autonat(&mut self, e: autonat::v2::client::Event) {
        let m = &self.metrics.nat.autonat_tests;
        match e.result {
            Ok(()) => {
                m.with_label_values(&["reachable"]).inc();
                tracing::info!(addr = %e.tested_addr, server = %e.server, "AutoNAT: reachable");
            }
            // A relayed connection's observed address (`/p2p/…`) or a circuit
            // address says nothing about this node's own reachability.
            Err(err)
                if super::super::reachability::is_relayed(&e.tested_addr)
                    || super::super::peers::ip_of(&e.tested_addr).is_none() =>
            {
                tracing::debug!(addr = %e.tested_addr, "AutoNAT: not reachable ({err}), not a direct address");
            }
            Err(err) => {
                m.with_label_values(&["unreachable"]).inc();
                tracing::info!(addr = %e.tested_addr, server = %e.server, "AutoNAT: not reachable ({err})");
                self.nat.reach.test_failed();
                self.update_reachability();
            }
        }
    }

    fn on_dcutr(&mut self, e: dcutr::Event) {
        let peer = e.remote_peer_id;
        match e.result {
            Ok(_) => {
                self.metrics
                    .nat
                    .holepunches
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!(%peer, "hole punched: direct connection");
            }
            Err(err) => {
                self.metrics
                    .nat
                    .holepunches
                    .with_label_values(&["failure"])
                    .inc();
                tracing::info!(%peer, "hole punching failed, staying relayed: {err}");
                self.nat.punch_failed.insert(peer);
                let failed = peer;
                self.send_parked(
                    |p| p.peer == failed,
                    "through the relay: hole punching failed (within the relay's limits)",
                );
            }
        }
    }

    #[allow(deprecated)] // the *Failed variants: logged inside libp2p from 0.58 on
    fn on_relay_server(&mut self, e: relay::Event) {
        let m = &self.metrics.nat;
        match e {
            relay::Event::ReservationReqAccepted {
                src_peer_id,
                renewed: false,
            } => {
                m.reservations_served.inc();
                tracing::debug!(peer = %src_peer_id, "relay: reservation accepted");
            }
            relay::Event::ReservationClosed { .. } | relay::Event::ReservationTimedOut { .. } => {
                m.reservations_served.dec();
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                m.circuits_served.inc();
                m.circuits_open.inc();
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, "relay: circuit open");
            }
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status,
            } => {
                m.circuits_denied.inc();
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, ?status, "relay: circuit refused");
            }
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                error,
            } => {
                m.circuits_open.dec();
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, ?error, "relay: circuit closed");
            }
            _ => {}
        }
    }

    fn on_relay_client(&mut self, e: relay::client::Event) {
        match e {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal: false,
                limit,
            } => {
                tracing::info!(relay = %relay_peer_id, ?limit, "relay reservation accepted: reachable through it");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                tracing::debug!(peer = %src_peer_id, "a peer reached this node through a relay");
            }
            _ => {}
        }
    }

    fn on_upnp(&mut self, e: upnp::Event) {
        match e {
            upnp::Event::NewExternalAddr {
                local_addr,
                external_addr,
            } => {
                tracing::info!(%local_addr, %external_addr, "UPnP: the router mapped a port");
            }
            upnp::Event::ExpiredExternalAddr { external_addr, .. } => {
                tracing::info!(%external_addr, "UPnP: port mapping expired");
            }
            upnp::Event::GatewayNotFound => {
                tracing::debug!("UPnP: no gateway on this network");
            }
            upnp::Event::NonRoutableGateway => {
                tracing::info!(
                    "UPnP: the router's own address is not public (a NAT behind a NAT?)"
                );
            }
        }
    }
}
