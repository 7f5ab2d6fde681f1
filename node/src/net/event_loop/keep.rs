//! The event loop's side of which connections stay open ([`KeepAlive`]): a
//! connection is kept while it carries something this node needs, and closes after
//! the idle timeout otherwise. Kept: the peers this node is subscribed to (their
//! pushes must reach it), its subscribers (its pushes must reach them), and peers it
//! exchanged work with (offers, results, blob pieces) within [`WORK_HOLD`]. So an
//! idle node keeps about its idle view plus its subscribers, whatever the grid, and
//! the connections Kademlia's lookups open close once they are done.
//!
//! Marked at once when a subscription is made or work is exchanged, and swept every
//! tick (what stopped being needed is let go). After connections close, the heap's
//! free pages go back to the OS (at most once a minute).
//!
//! [`KeepAlive`]: super::super::keep_alive::KeepAlive

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::EventLoop;

/// How long a connection that carried work stays kept after its last message:
/// the idle timeout connections had before they were kept on purpose.
pub(super) const WORK_HOLD: Duration = Duration::from_secs(300);

/// Least time between two returns of freed heap memory to the OS...
const TRIM_EVERY: Duration = Duration::from_secs(60);
/// ... or, after a burst of at least [`TRIM_BURST`] connections closed, this long.
const TRIM_AFTER_BURST: Duration = Duration::from_secs(10);
/// Connections closed that make a burst worth trimming after soon.
const TRIM_BURST: usize = 8;

/// Hands the heap's free pages back to the OS. glibc's allocator keeps what a
/// burst of connections freed (their buffers, handlers, the Kademlia lookups'
/// state) for reuse, so an idle node's resident memory stayed at its peak: after a
/// start on 40 processes, about 1 MB of 7 MB of anonymous memory (measured with
/// `malloc_trim` called from gdb).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: `malloc_trim` only walks and madvises the allocator's own free
    // lists, under its locks; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

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
        self.metrics
            .subscribers
            .set(self.discovery.subscriber_count(now) as i64);
        self.swarm.behaviour_mut().keep_alive.set_kept(&kept);
        // Connections closed since the heap was last trimmed: give back what they
        // freed, at most once a [`TRIM_EVERY`], or a [`TRIM_AFTER_BURST`] after a
        // burst (a fraction of a millisecond on an idle node's heap). A node that
        // joined a grid of 100 had its start-up burst (its lookups' connections)
        // closed just after a trim and kept 1-2 MB more than the others until the
        // next.
        let since = self.last_trim.elapsed();
        if self.closed_since_trim > 0
            && (since >= TRIM_EVERY
                || (self.closed_since_trim >= TRIM_BURST && since >= TRIM_AFTER_BURST))
        {
            self.closed_since_trim = 0;
            self.last_trim = now;
            trim_heap();
        }
    }
}
