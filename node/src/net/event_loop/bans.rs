//! The event loop's side of offences and bans: counting an offence against a peer
//! and against its address ([`AddressOffences`]), banning a peer id (the block list,
//! the DHT, the view, subscriptions) or an address (the
//! [`ConnectionGuard`](super::super::guard::ConnectionGuard) and every peer on it),
//! and lifting bans when they end. Called from the loop's handlers and its tick.

use std::time::Instant;

use libp2p::PeerId;

use super::super::codec::Offence;
use super::super::offences::{BAN_TIME, OFFENCE_THRESHOLD};
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
        // Loopback is one address for every local node (see `GuardConfig`).
        let Some(ip) = self
            .book
            .observed_ip(&peer)
            .filter(|ip| !(ip.is_loopback() && self.config.guard.exempt_loopback))
        else {
            return;
        };
        let ip = super::super::guard::canonical(ip);
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
