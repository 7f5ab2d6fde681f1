//! The event loop's side of which connections stay open ([`KeepAlive`]): a
//! connection is kept while it carries something this node needs, and closes after
//! the idle timeout otherwise. Kept: the peers this node is subscribed to (their
//! pushes must reach it), its subscribers (its pushes must reach them), and peers it
//! exchanged work with (offers, results, blob pieces) within [`WORK_HOLD`]. So an
//! idle node keeps about its idle view plus its subscribers, whatever the grid, and
//! the connections Kademlia's lookups open close once they are done.
//!
//! Marked at once when a subscription is made or work is exchanged, and swept every
//! tick (what stopped being needed is let go).
//!
//! [`KeepAlive`]: super::super::keep_alive::KeepAlive

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::EventLoop;

/// How long a connection that carried work stays kept after its last message:
/// the idle timeout connections had before they were kept on purpose.
pub(super) const WORK_HOLD: Duration = Duration::from_secs(300);

impl EventLoop {
    /// Keeps `peer`'s connections open from now (a subscription, or work).
    pub(super) fn keep(&mut self, peer: PeerId) {
        self.swarm.behaviour_mut().keep_alive.set(peer, true);
    }

    /// `peer` exchanged work with this node: kept for [`WORK_HOLD`].
    pub(super) fn worked_with(&mut self, peer: PeerId, now: Instant) {
        if self.swarm.is_connected(&peer) {
            self.work.insert(peer, now);
            self.keep(peer);
        }
    }

    /// Recomputes the kept set: connected peers subscribed to or subscribing, or
    /// that exchanged work within [`WORK_HOLD`]. Its size is bounded by the
    /// connections open.
    pub(super) fn sweep_kept(&mut self, now: Instant) {
        self.work
            .retain(|_, at| now.saturating_duration_since(*at) < WORK_HOLD);
        let ttl = self.discovery.config().subscription_ttl;
        let kept: HashSet<PeerId> = self
            .swarm
            .connected_peers()
            .filter(|p| {
                self.book.subscribed_to(p, now, ttl)
                    || self.discovery.is_subscriber(p, now)
                    || self.work.contains_key(p)
            })
            .copied()
            .collect();
        self.metrics.kept_peers.set(kept.len() as i64);
        self.swarm.behaviour_mut().keep_alive.set_kept(&kept);
    }
}
