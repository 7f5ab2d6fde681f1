//! The connection guard: a [`NetworkBehaviour`] that refuses inbound connections by
//! the remote address, before and after the handshake. libp2p's `connection_limits`
//! counts connections in total and per peer id, and a peer id costs nothing to
//! make; this counts them per IP address and per network (IPv4 /24, IPv6 /48), and
//! refuses every connection from an address the event loop banned, whatever
//! identity it presents.
//!
//! It also caps the handshakes one address holds open at once
//! ([`MAX_PENDING_PER_IP`], whatever its other limits): a connection that never says a
//! word holds one of the node's [`MAX_PENDING_INBOUND`] pending slots until the
//! handshake timeout ([`HANDSHAKE_TIMEOUT`]), and one address must never hold them all.
//!
//! Owned by the [`Behaviour`](super::behaviour::Behaviour); the event loop bans and
//! unbans addresses through [`ConnectionGuard::ban`] / [`ConnectionGuard::unban`].
//! Outbound connections (this node's own dials) are never counted here (only those
//! to a banned address are refused):
//! with the inbound limit below the total (`NetConfig::max_connections`), they keep
//! their reserved share however many strangers knock (no eclipse).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::{ConnectionClosed, ListenFailure};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

use super::metrics::NetMetrics;

/// Most inbound connections still in their handshake at once, from everyone
/// (libp2p's `connection_limits`, set in `behaviour.rs`).
pub(crate) const MAX_PENDING_INBOUND: u32 = 64;
/// Most inbound handshakes one address holds at once, counted for every address
/// (the [exempt](GuardConfig::exempt_loopback) ones too): half the pending slots,
/// so silent sockets from one address never take them all.
pub(crate) const MAX_PENDING_PER_IP: u32 = MAX_PENDING_INBOUND / 2;
/// How long a connection may take to finish its handshake (TCP or QUIC, Noise and
/// Yamux) before it is dropped, both ways (the swarm's connection timeout, set in
/// `net/mod.rs`). An honest peer takes a few round trips; a socket that says
/// nothing frees its pending slot after this, and counts as an offence against its
/// address (see `event_loop/bans.rs`).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections refused from one address (over its per-IP, per-network or pending
/// limits) that make one offence against it: an honest peer that finds a node full
/// dials again after minutes, a flood hundreds of times a second.
pub(crate) const REFUSALS_PER_OFFENCE: u32 = 256;
/// Most addresses whose refusals are counted at once (the table is cleared when full).
const MAX_REFUSING: usize = 4096;

/// What the guard tells the event loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GuardEvent {
    /// Another [`REFUSALS_PER_OFFENCE`] connections from this address were refused:
    /// an offence against it.
    Flooding(IpAddr),
}

/// The inbound limits by address. Volunteers set them in `peergrid.toml` /
/// flags (see `example.config.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardConfig {
    /// Most inbound connections (pending and established) from one IP address.
    pub per_ip: u32,
    /// Most inbound connections from one network (IPv4 /24, IPv6 /48).
    pub per_subnet: u32,
    /// 127.0.0.1 and ::1 are not counted per address or network, nor do offences
    /// add up against them. On by default: every connection between nodes on one
    /// machine comes from 127.0.0.1 (the kernel's source for a loopback dial that
    /// did not bind one; tests, `demo` and `bench` run dozens of nodes there). The
    /// rest of 127.0.0.0/8 is counted as any address is: it is a source only for a
    /// process that binds it on purpose. The totals (`max_connections`,
    /// `max_inbound`), the pending handshakes per address and bans still apply.
    pub exempt_loopback: bool,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            per_ip: 4,
            per_subnet: 16,
            exempt_loopback: true,
        }
    }
}

/// The network an address is in, as the guard counts them (IPv4 /24, IPv6 /48;
/// an IPv4-mapped IPv6 address counts as its IPv4 address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Subnet {
    V4(u32),
    V6(u128),
}

impl Subnet {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => Self::V4(u32::from(v4) & 0xffff_ff00),
            IpAddr::V6(v6) => Self::V6(u128::from(v6) & !((1u128 << 80) - 1)),
        }
    }
}

/// Whether `ip` is the loopback address local dials come from (127.0.0.1, ::1),
/// which [`GuardConfig::exempt_loopback`] exempts.
pub(crate) fn is_local_source(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => v6 == std::net::Ipv6Addr::LOCALHOST,
    }
}

/// An IPv4-mapped IPv6 address as IPv4; other addresses unchanged.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The IP a connection comes from, when it names one directly (a relayed
/// connection's address is the relay's, and is not the peer's: not counted).
fn remote_ip(addr: &Multiaddr) -> Option<IpAddr> {
    let mut ip = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(v4) if ip.is_none() => ip = Some(IpAddr::V4(v4)),
            Protocol::Ip6(v6) if ip.is_none() => ip = Some(IpAddr::V6(v6)),
            Protocol::P2pCircuit => return None,
            _ => {}
        }
    }
    ip.map(canonical)
}

/// Why the guard refused a connection (what the dialler's swarm reports, and the
/// label of `peergrid_net_connections_denied_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The address is banned (offences from it, under any identity).
    Banned,
    /// Too many connections from this IP.
    PerIp(u32),
    /// Too many connections from this network.
    PerSubnet(u32),
    /// Too many handshakes under way from this IP.
    PendingPerIp(u32),
}

impl Denied {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Banned => "banned_ip",
            Self::PerIp(_) => "per_ip",
            Self::PerSubnet(_) => "per_subnet",
            Self::PendingPerIp(_) => "pending_per_ip",
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Banned => write!(f, "this address is banned for offences"),
            Self::PerIp(n) => write!(f, "at most {n} connections per IP address"),
            Self::PerSubnet(n) => write!(f, "at most {n} connections per /24 (IPv6: /48)"),
            Self::PendingPerIp(n) => write!(f, "at most {n} handshakes at once per IP address"),
        }
    }
}

impl std::error::Error for Denied {}

/// The behaviour (see the module docs).
pub(crate) struct ConnectionGuard {
    config: GuardConfig,
    /// Inbound connections counted, pending or established, by id.
    inbound: HashMap<ConnectionId, IpAddr>,
    per_ip: HashMap<IpAddr, u32>,
    per_subnet: HashMap<Subnet, u32>,
    /// Inbound connections still in their handshake, by id (every address).
    pending: HashMap<ConnectionId, IpAddr>,
    pending_per_ip: HashMap<IpAddr, u32>,
    /// Connections refused by address, since its last offence.
    refused: HashMap<IpAddr, u32>,
    /// Offences for the event loop (bounded: one per address at most, see `refuse`).
    events: VecDeque<GuardEvent>,
    banned: HashSet<IpAddr>,
    metrics: NetMetrics,
}

impl ConnectionGuard {
    pub(crate) fn new(config: GuardConfig, metrics: NetMetrics) -> Self {
        Self {
            config,
            inbound: HashMap::new(),
            per_ip: HashMap::new(),
            per_subnet: HashMap::new(),
            pending: HashMap::new(),
            pending_per_ip: HashMap::new(),
            refused: HashMap::new(),
            events: VecDeque::new(),
            banned: HashSet::new(),
            metrics,
        }
    }

    /// Refuses every new connection from `ip` (under any peer id) until
    /// [`unban`](Self::unban). Open ones are closed by the event loop.
    pub(crate) fn ban(&mut self, ip: IpAddr) {
        self.banned.insert(canonical(ip));
    }

    /// Lifts a ban.
    pub(crate) fn unban(&mut self, ip: IpAddr) {
        self.banned.remove(&canonical(ip));
    }

    /// Inbound connections counted from `ip` now.
    #[cfg(test)]
    pub(crate) fn count(&self, ip: IpAddr) -> u32 {
        self.per_ip.get(&canonical(ip)).copied().unwrap_or(0)
    }

    /// Whether a new inbound connection from `ip` is allowed; counts it when it is.
    fn admit(&mut self, id: ConnectionId, ip: IpAddr) -> Result<(), Denied> {
        if self.banned.contains(&ip) {
            return Err(Denied::Banned);
        }
        if self.pending_per_ip.get(&ip).copied().unwrap_or(0) >= MAX_PENDING_PER_IP {
            return Err(Denied::PendingPerIp(MAX_PENDING_PER_IP));
        }
        self.pending.insert(id, ip);
        *self.pending_per_ip.entry(ip).or_default() += 1;
        if self.config.exempt_loopback && is_local_source(ip) {
            return Ok(());
        }
        let subnet = Subnet::of(ip);
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= self.config.per_ip {
            self.handshake_over(id);
            return Err(Denied::PerIp(self.config.per_ip));
        }
        if self.per_subnet.get(&subnet).copied().unwrap_or(0) >= self.config.per_subnet {
            self.handshake_over(id);
            return Err(Denied::PerSubnet(self.config.per_subnet));
        }
        self.inbound.insert(id, ip);
        *self.per_ip.entry(ip).or_default() += 1;
        *self.per_subnet.entry(subnet).or_default() += 1;
        Ok(())
    }

    /// A connection's handshake ended (it is established, or it failed).
    fn handshake_over(&mut self, id: ConnectionId) {
        let Some(ip) = self.pending.remove(&id) else {
            return;
        };
        if let Some(n) = self.pending_per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.pending_per_ip.remove(&ip);
            }
        }
    }

    /// Forgets a connection (closed, or refused by another behaviour).
    fn release(&mut self, id: ConnectionId) {
        self.handshake_over(id);
        let Some(ip) = self.inbound.remove(&id) else {
            return;
        };
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        let subnet = Subnet::of(ip);
        if let Some(n) = self.per_subnet.get_mut(&subnet) {
            *n -= 1;
            if *n == 0 {
                self.per_subnet.remove(&subnet);
            }
        }
    }

    /// Counts a refusal of `ip` over its limits; every [`REFUSALS_PER_OFFENCE`]
    /// makes an offence.
    fn refuse(&mut self, ip: IpAddr) {
        if self.refused.len() >= MAX_REFUSING && !self.refused.contains_key(&ip) {
            self.refused.clear();
        }
        let n = self.refused.entry(ip).or_default();
        *n += 1;
        if *n >= REFUSALS_PER_OFFENCE {
            self.refused.remove(&ip);
            if self.events.len() < MAX_REFUSING {
                self.events.push_back(GuardEvent::Flooding(ip));
            }
        }
    }

    fn deny(&self, why: Denied) -> ConnectionDenied {
        self.metrics
            .connections_denied
            .with_label_values(&[why.label()])
            .inc();
        ConnectionDenied::new(why)
    }
}

impl NetworkBehaviour for ConnectionGuard {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = GuardEvent;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = remote_ip(remote) else {
            return Ok(());
        };
        self.admit(id, ip).map_err(|why| {
            if why != Denied::Banned {
                self.refuse(ip);
            }
            self.deny(why)
        })
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Counted when pending; a ban may have come during the handshake.
        self.handshake_over(id);
        if remote_ip(remote).is_some_and(|ip| self.banned.contains(&ip)) {
            return Err(self.deny(Denied::Banned));
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _id: ConnectionId,
        _peer: Option<PeerId>,
        _addresses: &[Multiaddr],
        _role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        Ok(Vec::new())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _id: ConnectionId,
        _peer: PeerId,
        addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Never counted; but a banned address is not dialled into either (a walk
        // may find its new identities in the DHT).
        if remote_ip(addr).is_some_and(|ip| self.banned.contains(&ip)) {
            return Err(self.deny(Denied::Banned));
        }
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.release(connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.events.pop_front() {
            Some(event) => Poll::Ready(ToSwarm::GenerateEvent(event)),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().expect("multiaddr")
    }

    struct Knock {
        guard: ConnectionGuard,
        next: usize,
        metrics: NetMetrics,
    }

    fn why(e: ConnectionDenied) -> String {
        e.downcast_ref::<Denied>()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    impl Knock {
        fn new(config: GuardConfig) -> Self {
            let metrics = NetMetrics::default();
            Self {
                guard: ConnectionGuard::new(config, metrics.clone()),
                next: 0,
                metrics,
            }
        }

        /// A new inbound connection from `remote`: its id when admitted.
        fn from(&mut self, remote: &str) -> Result<ConnectionId, String> {
            self.next += 1;
            let id = ConnectionId::new_unchecked(self.next);
            let (local, remote) = (addr("/ip4/192.0.2.1/tcp/7946"), addr(remote));
            self.guard
                .handle_pending_inbound_connection(id, &local, &remote)
                .map_err(why)?;
            self.guard
                .handle_established_inbound_connection(id, PeerId::random(), &local, &remote)
                .map_err(why)?;
            Ok(id)
        }

        fn denied(&self, reason: &str) -> u64 {
            self.metrics
                .connections_denied
                .with_label_values(&[reason])
                .get()
        }
    }

    #[test]
    fn fresh_identities_from_one_address_get_per_ip_connections_and_no_more() {
        let mut k = Knock::new(GuardConfig::default());
        let ids: Vec<_> = (0..128)
            .filter_map(|i| k.from(&format!("/ip4/203.0.113.7/tcp/{}", 1000 + i)).ok())
            .collect();
        assert_eq!(ids.len(), 4, "128 identities from one host, 4 connections");
        assert_eq!(k.denied("per_ip"), 124);
        assert!(
            k.from("/ip4/203.0.113.7/udp/1/quic-v1")
                .unwrap_err()
                .contains("at most 4 connections per IP"),
            "QUIC counts too"
        );
        // A closed connection frees its place.
        k.guard.release(ids[0]);
        assert_eq!(k.guard.count("203.0.113.7".parse().unwrap()), 3);
        assert!(k.from("/ip4/203.0.113.7/tcp/9").is_ok());
    }

    #[test]
    fn one_network_gets_per_subnet_connections_and_others_are_not_affected() {
        let mut k = Knock::new(GuardConfig::default());
        let admitted = (1..=40)
            .filter(|host| k.from(&format!("/ip4/198.51.100.{host}/tcp/1")).is_ok())
            .count();
        assert_eq!(admitted, 16);
        assert_eq!(k.denied("per_subnet"), 24);
        assert!(k.from("/ip4/198.51.101.1/tcp/1").is_ok(), "the next /24");
        // IPv6: one /48 is one network, however many /64s it hands out.
        let v6 = (0..40)
            .filter(|i| k.from(&format!("/ip6/2001:db8:1:{i:x}::1/tcp/1")).is_ok())
            .count();
        assert_eq!(v6, 16);
        assert!(k.from("/ip6/2001:db8:2::1/tcp/1").is_ok());
        // An IPv4-mapped IPv6 address is its IPv4 address.
        assert!(k.from("/ip6/::ffff:198.51.100.200/tcp/1").is_err());
    }

    #[test]
    fn only_the_local_source_is_exempt_by_default_and_it_is_counted_when_asked() {
        let mut k = Knock::new(GuardConfig::default());
        assert!((0..100).all(|_| k.from("/ip4/127.0.0.1/tcp/1").is_ok()));
        assert!((0..100).all(|_| k.from("/ip6/::1/tcp/1").is_ok()));
        // Another loopback address is a source only for a process that binds it:
        // counted as any address is (the hostile bench's attacker is one).
        assert_eq!(
            (0..100)
                .filter(|_| k.from("/ip4/127.0.0.66/tcp/1").is_ok())
                .count(),
            4
        );
        let mut k = Knock::new(GuardConfig {
            exempt_loopback: false,
            ..GuardConfig::default()
        });
        assert_eq!(
            (0..100)
                .filter(|_| k.from("/ip4/127.0.0.1/tcp/1").is_ok())
                .count(),
            4
        );
    }

    /// Silent sockets (a handshake that never starts) from one address, even an
    /// exempt one: it holds at most half the node's pending slots, and others still
    /// start theirs; one that finishes its handshake frees its pending place.
    #[test]
    fn one_address_never_holds_every_pending_handshake() {
        let mut k = Knock::new(GuardConfig {
            per_ip: 1000,
            per_subnet: 1000,
            ..GuardConfig::default()
        });
        let local = addr("/ip4/192.0.2.1/tcp/7946");
        let knock = |guard: &mut ConnectionGuard, n: usize, remote: &str| {
            guard
                .handle_pending_inbound_connection(
                    ConnectionId::new_unchecked(n),
                    &local,
                    &addr(remote),
                )
                .map_err(why)
        };
        for remote in ["/ip4/127.0.0.1/tcp/1", "/ip4/203.0.113.7/tcp/1"] {
            let base = if remote.contains("127") { 0 } else { 10_000 };
            let held = (0..MAX_PENDING_INBOUND as usize)
                .filter(|i| knock(&mut k.guard, base + i, remote).is_ok())
                .count();
            assert_eq!(held, MAX_PENDING_PER_IP as usize, "{remote}");
            assert!(
                knock(&mut k.guard, base + 999, remote)
                    .unwrap_err()
                    .contains("handshakes at once")
            );
        }
        assert_eq!(k.denied("pending_per_ip"), 2 * 33);
        // Another address still starts its handshake.
        assert!(knock(&mut k.guard, 20_000, "/ip4/198.51.100.1/tcp/1").is_ok());
        // A handshake that ends (established, or timed out and released) frees one.
        k.guard
            .handle_established_inbound_connection(
                ConnectionId::new_unchecked(0),
                PeerId::random(),
                &local,
                &addr("/ip4/127.0.0.1/tcp/1"),
            )
            .expect("established");
        k.guard.release(ConnectionId::new_unchecked(10_000));
        assert!(knock(&mut k.guard, 30_000, "/ip4/127.0.0.1/tcp/1").is_ok());
        assert!(knock(&mut k.guard, 30_001, "/ip4/203.0.113.7/tcp/1").is_ok());
        assert!(knock(&mut k.guard, 30_002, "/ip4/127.0.0.1/tcp/1").is_err());
    }

    /// A flood of connections from one address, refused over its limit, adds up
    /// to offences against it; refusals of a banned address do not count again.
    #[test]
    fn refusals_by_the_hundred_are_an_offence_of_the_address() {
        let mut k = Knock::new(GuardConfig::default());
        let n = 4 + 2 * REFUSALS_PER_OFFENCE as usize + 10;
        for _ in 0..n {
            let _ = k.from("/ip4/203.0.113.7/tcp/1");
        }
        let _ = k.from("/ip4/203.0.113.8/tcp/1");
        let flood = GuardEvent::Flooding("203.0.113.7".parse().unwrap());
        assert_eq!(
            Vec::from(k.guard.events.clone()),
            vec![flood.clone(), flood]
        );
        k.guard.events.clear();
        k.guard.ban("203.0.113.7".parse().unwrap());
        for _ in 0..n {
            let _ = k.from("/ip4/203.0.113.7/tcp/1");
        }
        assert!(k.guard.events.is_empty());
    }

    #[test]
    fn a_banned_address_is_refused_under_any_identity_until_unbanned() {
        let mut k = Knock::new(GuardConfig::default());
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        k.guard.ban(ip);
        assert!(
            k.from("/ip4/203.0.113.9/tcp/1")
                .unwrap_err()
                .contains("banned")
        );
        assert!(
            k.from("/ip4/203.0.113.10/tcp/1").is_ok(),
            "only that address"
        );
        // Loopback exemption does not cover bans.
        k.guard.ban("127.0.0.1".parse().unwrap());
        assert!(k.from("/ip4/127.0.0.1/tcp/1").is_err());
        assert_eq!(k.denied("banned_ip"), 2);
        // A ban that comes during the handshake refuses the connection at its end.
        let (local, remote) = (
            addr("/ip4/192.0.2.1/tcp/1"),
            addr("/ip4/203.0.113.11/tcp/1"),
        );
        let id = ConnectionId::new_unchecked(10_000);
        assert!(
            k.guard
                .handle_pending_inbound_connection(id, &local, &remote)
                .is_ok()
        );
        k.guard.ban("203.0.113.11".parse().unwrap());
        assert!(
            k.guard
                .handle_established_inbound_connection(id, PeerId::random(), &local, &remote)
                .is_err()
        );
        k.guard.unban(ip);
        assert!(k.from("/ip4/203.0.113.9/tcp/1").is_ok());
    }

    #[test]
    fn relayed_connections_are_not_counted_against_the_relay() {
        let mut k = Knock::new(GuardConfig::default());
        let relayed = "/ip4/203.0.113.1/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit";
        assert!((0..10).all(|_| k.from(relayed).is_ok()));
    }
}
