//! The event loop's side of offences and bans: counting an offence against a peer
//! and against its address ([`AddressOffences`]), banning a peer id (the block list,
//! the DHT, the view, subscriptions) or an address (the
//! [`ConnectionGuard`](super::super::guard::ConnectionGuard) and every peer on it),
//! and lifting bans when they end; an inbound handshake that never finishes, and
//! connections refused by the hundred, count against their address. Called from the loop's handlers and its tick.

use std::net::IpAddr;
use std::time::Instant;

use libp2p::core::transport::TransportError;
use libp2p::core::transport::timeout::TransportTimeoutError;
use libp2p::swarm::ListenError;
use libp2p::{Multiaddr, PeerId};

use super::super::codec::Offence;
use super::super::guard::{HANDSHAKE_TIMEOUT, REFUSALS_PER_OFFENCE, canonical, is_local_source};
use super::super::offences::{BAN_TIME, BANNED_RETRIES_PER_OFFENCE, OFFENCE_THRESHOLD};
use super::EventLoop;

impl EventLoop {
    /// Lifts the bans (of peer ids and of addresses) that ended by `now`.
    pub(super) fn expire_bans(&mut self, now: Instant) {
        let expired: Vec<PeerId> = self
            .bans
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            self.bans.remove(&peer);
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            self.book.forgive(&peer);
        }
        for ip in self.address_offences.expire(now) {
            self.swarm.behaviour_mut().guard.unban(ip);
        }
    }

    /// Counts an offence against the peer and against the address it connects
    /// from; past a threshold the peer, or the address with every peer on it, is
    /// disconnected and banned.
    pub(super) fn penalize(&mut self, peer: PeerId, reason: &str) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        let count = self.book.offence(peer);
        self.metrics.penalties.inc();
        tracing::warn!(%peer, offences = count, "peer misbehaved: {reason}");
        if count >= OFFENCE_THRESHOLD && !self.bans.contains_key(&peer) {
            self.ban(peer);
        }
        if let Some(ip) = self.book.observed_ip(&peer) {
            self.address_offence(ip);
        }
    }

    /// Counts an offence against an address (under any identity, or none); past
    /// the threshold every peer on it is disconnected and banned, and new
    /// connections from it are refused. The local source (127.0.0.1, ::1) is one
    /// address for every local node, and is not counted (see `GuardConfig`).
    pub(super) fn address_offence(&mut self, ip: IpAddr) {
        if self.config.guard.exempt_loopback && is_local_source(ip) {
            return;
        }
        let ip = canonical(ip);
        if self.address_offences.offence(ip, Instant::now()) {
            tracing::warn!(%ip, "disconnecting and banning every peer at this address for {BAN_TIME:?}");
            self.swarm.behaviour_mut().guard.ban(ip);
            for other in self.book.peers_at(ip) {
                if !self.bans.contains_key(&other) {
                    self.ban(other);
                }
            }
        }
    }

    /// The guard refused another [`REFUSALS_PER_OFFENCE`] connections from `ip`
    /// over its limits: a flood, an offence against the address.
    pub(super) fn on_flooding(&mut self, ip: IpAddr) {
        self.metrics.penalties.inc();
        tracing::warn!(%ip, "refused {REFUSALS_PER_OFFENCE} more connections from this address over its limits");
        self.address_offence(ip);
    }

    /// An inbound connection that failed before it was established: one that never
    /// finished its handshake within [`HANDSHAKE_TIMEOUT`] (a silent socket
    /// holding a pending slot; an honest peer takes a few round trips) is an
    /// offence against its address, and so is every
    /// [`BANNED_RETRIES_PER_OFFENCE`]th connection of a banned peer id from one
    /// address (each costs a full handshake before the block list denies it; a
    /// banned flooder reconnected hundreds of times a second). Refusals and broken
    /// handshakes are not.
    pub(super) fn on_incoming_error(&mut self, from: &Multiaddr, error: &ListenError) {
        if let ListenError::Denied { cause } = error
            && cause
                .downcast_ref::<libp2p::allow_block_list::Blocked>()
                .is_some()
        {
            let Some(ip) = super::super::peers::ip_of(from) else {
                return;
            };
            if !(self.config.guard.exempt_loopback && is_local_source(ip))
                && self.address_offences.banned_retry(ip, Instant::now())
            {
                self.metrics.penalties.inc();
                tracing::warn!(%ip, "banned peers connected {BANNED_RETRIES_PER_OFFENCE} more times from this address");
                self.address_offence(ip);
            }
            return;
        }
        let ListenError::Transport(TransportError::Other(e)) = error else {
            return;
        };
        let timed_out = e
            .get_ref()
            .and_then(|e| e.downcast_ref::<TransportTimeoutError<std::io::Error>>())
            .is_some_and(|e| matches!(e, TransportTimeoutError::Timeout));
        let Some(ip) = super::super::peers::ip_of(from) else {
            return;
        };
        if timed_out {
            self.metrics.penalties.inc();
            tracing::warn!(%ip, "a connection from this address sent no handshake in {HANDSHAKE_TIMEOUT:?}");
            self.address_offence(ip);
        }
    }

    /// Disconnects and bans one peer id.
    pub(super) fn ban(&mut self, peer: PeerId) {
        tracing::warn!(%peer, "disconnecting and banning peer for {BAN_TIME:?}");
        self.bans.insert(peer, Instant::now() + BAN_TIME);
        self.metrics.bans.inc();
        self.metrics.banned_peers.set(self.bans.len() as i64);
        self.swarm.behaviour_mut().blocked.block_peer(peer);
        self.swarm.behaviour_mut().kad.remove_peer(&peer);
        self.book.forget_advert(&peer);
        self.discovery.unsubscribe(&peer);
    }

    /// Penalises a peer whose request or response broke the wire rules.
    pub(super) fn on_failure(&mut self, peer: PeerId, error: &std::io::Error) {
        if let Some(offence) = Offence::from_io(error) {
            self.on_offence(peer, offence);
        }
    }

    /// Counts a wire offence (as a decode error and against the peer).
    pub(super) fn on_offence(&mut self, peer: PeerId, offence: &Offence) {
        let (protocol, kind) = match offence {
            Offence::Oversized { protocol, .. } => (protocol, "oversized"),
            Offence::Garbled { protocol, .. } => (protocol, "garbled"),
        };
        self.metrics.decode_error(protocol, kind);
        self.penalize(peer, &offence.to_string());
    }
}
