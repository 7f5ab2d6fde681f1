//! What one peer may make this node serve of its blobs: the per-peer budget the
//! [dispatcher](super) puts every blob piece through before it is read.
//!
//! - **Bytes per second**: each peer has a token bucket of [`RATE`] bytes a second
//!   and bursts of [`BURST`]. A piece is charged what was read (at least
//!   [`MIN_CHARGE`], so that requests for pieces this node does not hold, or for
//!   tiny ones, are not free); the bucket may go into debt, and the peer's next
//!   piece waits until the debt is paid. A fetch of a whole module (up to 64 MiB)
//!   goes at full speed; a peer that keeps asking gets [`RATE`], not the machine.
//! - **At once**: at most [`SERVING_PER_PEER`] of one peer's pieces are read and
//!   sent at a time (a fetch keeps 4 in flight), so the dispatcher's servers are
//!   always free for others.
//! - **Repeats**: an honest fetcher asks for each piece once per fetch, and fetches
//!   a blob at most once per chunk it starts. A peer served the same piece again and
//!   again is asking for data it does not need: every [`REPEATS_PER_OFFENCE`]
//!   repeats within [`REPEAT_WINDOW`] are an offence (5 ban it).
//!
//! Pure where it decides (time is passed in, [`Budget`]); shared by the
//! dispatcher's tasks behind a mutex held only to decide. Bounded: the table holds
//! peers with pieces in flight or a bucket still refilling, at most [`MAX_PEERS`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::net::protocol::BlobHash;

/// Bytes of blob pieces served to one peer per second, sustained.
pub(crate) const RATE: f64 = 16.0 * 1024.0 * 1024.0;
/// Bytes served to one peer at full speed before [`RATE`] applies: a whole module
/// at the largest a worker takes (64 MiB).
pub(crate) const BURST: f64 = 64.0 * 1024.0 * 1024.0;
/// The least a request is charged, whatever it returned (a piece this node does
/// not hold costs a file lookup, a stream and a reply): at [`RATE`], 256 requests a
/// second.
pub(crate) const MIN_CHARGE: u64 = 64 * 1024;
/// One peer's pieces read and sent at once.
pub(crate) const SERVING_PER_PEER: usize = 4;
/// Repeated pieces (the same blob and offset served to the same peer again, among
/// its last [`RECENT`] pieces) that count as one offence.
pub(crate) const REPEATS_PER_OFFENCE: u32 = 1024;
/// Repeats are counted in windows this long.
pub(crate) const REPEAT_WINDOW: Duration = Duration::from_secs(60);
/// Pieces remembered per peer to tell a repeat.
const RECENT: usize = 32;
/// Peers remembered at most (those with pieces in flight or a bucket refilling).
const MAX_PEERS: usize = 4096;

/// One peer's state.
#[derive(Debug)]
struct Peer {
    /// Bytes it may take now (negative: its debt).
    tokens: f64,
    at: Instant,
    /// Its pieces being served, at most [`SERVING_PER_PEER`].
    serving: Arc<Semaphore>,
    recent: VecDeque<(BlobHash, u64)>,
    repeats: u32,
    window: Instant,
}

impl Peer {
    fn new(now: Instant) -> Self {
        Self {
            tokens: BURST,
            at: now,
            serving: Arc::new(Semaphore::new(SERVING_PER_PEER)),
            recent: VecDeque::with_capacity(RECENT),
            repeats: 0,
            window: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * RATE).min(BURST);
        self.at = now;
    }

    /// Idle: nothing in flight and the bucket full again (forgetting it loses
    /// nothing but its repeat count, which a quiet minute resets anyway).
    fn idle(&self, now: Instant) -> bool {
        let tokens = self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * RATE;
        tokens >= BURST
            && self.serving.available_permits() == SERVING_PER_PEER
            && now.saturating_duration_since(self.window) >= REPEAT_WINDOW
    }
}

/// The per-peer table.
#[derive(Debug, Default)]
pub(super) struct Budget {
    peers: HashMap<PeerId, Peer>,
}

/// What serving a piece to a peer is allowed, now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Turn {
    /// Go on: the peer's bucket is not in debt.
    Go,
    /// Wait this long (its debt, at [`RATE`]) and ask again.
    Wait(Duration),
}

impl Budget {
    /// The semaphore bounding `peer`'s pieces served at once; `None` when the table
    /// is full of busy peers (the request is refused).
    pub(super) fn slots(&mut self, peer: PeerId, now: Instant) -> Option<Arc<Semaphore>> {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEERS {
            self.peers.retain(|_, p| !p.idle(now));
            if self.peers.len() >= MAX_PEERS {
                return None;
            }
        }
        Some(
            self.peers
                .entry(peer)
                .or_insert_with(|| Peer::new(now))
                .serving
                .clone(),
        )
    }

    /// Whether `peer` may be served now, or how long to wait.
    pub(super) fn turn(&mut self, peer: PeerId, now: Instant) -> Turn {
        let p = self.peers.entry(peer).or_insert_with(|| Peer::new(now));
        p.refill(now);
        if p.tokens >= 0.0 {
            Turn::Go
        } else {
            // At least a millisecond: a debt of a few bytes is not a busy loop.
            Turn::Wait(Duration::from_secs_f64(-p.tokens / RATE).max(Duration::from_millis(1)))
        }
    }

    /// Charges `peer` for a piece of `hash` at `offset` that returned `bytes`;
    /// true when this makes an offence (a run of repeats).
    pub(super) fn charge(
        &mut self,
        peer: PeerId,
        hash: BlobHash,
        offset: u64,
        bytes: u64,
        now: Instant,
    ) -> bool {
        let p = self.peers.entry(peer).or_insert_with(|| Peer::new(now));
        p.refill(now);
        p.tokens -= bytes.max(MIN_CHARGE) as f64;
        if now.saturating_duration_since(p.window) >= REPEAT_WINDOW {
            p.window = now;
            p.repeats = 0;
        }
        let key = (hash, offset);
        if p.recent.contains(&key) {
            p.repeats += 1;
            return p.repeats.is_multiple_of(REPEATS_PER_OFFENCE);
        }
        if p.recent.len() == RECENT {
            p.recent.pop_front();
        }
        p.recent.push_back(key);
        false
    }

    /// Forgets idle peers (called now and then by the dispatcher).
    pub(super) fn prune(&mut self, now: Instant) {
        self.peers.retain(|_, p| !p.idle(now));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.peers.len()
    }
}

/// The budget shared by the dispatcher's serving tasks.
pub(super) type Shared = Arc<Mutex<Budget>>;

/// Locks the budget (a poisoned lock still holds valid counters).
pub(super) fn lock(budget: &Shared) -> std::sync::MutexGuard<'_, Budget> {
    budget.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn a_peer_over_its_rate_waits_its_debt_and_others_do_not() {
        let mut b = Budget::default();
        let (flood, honest) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let hash = BlobHash([7; 32]);
        // The burst goes at full speed: a whole 64 MiB module, piece by piece.
        for i in 0..64 {
            assert_eq!(b.turn(flood, t0), Turn::Go, "piece {i}");
            assert!(!b.charge(flood, hash, i * MIB, MIB, t0));
        }
        assert_eq!(b.turn(flood, t0), Turn::Go, "exactly spent, not in debt");
        b.charge(flood, hash, 64 * MIB, MIB, t0);
        // 1 MiB of debt: a sixteenth of a second at 16 MiB/s.
        assert_eq!(
            b.turn(flood, t0),
            Turn::Wait(Duration::from_millis(62_500) / 1000)
        );
        assert_eq!(b.turn(honest, t0), Turn::Go, "another peer is not affected");
        let later = t0 + Duration::from_millis(63);
        assert_eq!(b.turn(flood, later), Turn::Go, "the debt is paid");
        // Sustained: RATE a second.
        let mut served = 0u64;
        let mut now = later;
        let end = later + Duration::from_secs(2);
        while now < end {
            match b.turn(flood, now) {
                Turn::Go => {
                    b.charge(flood, hash, 1000 * MIB + served, MIB, now);
                    served += MIB;
                }
                Turn::Wait(d) => now += d,
            }
        }
        let rate = served as f64 / 2.0;
        assert!((rate - RATE).abs() <= 2.0 * MIB as f64, "{rate}");
    }

    #[test]
    fn requests_for_nothing_are_charged_too() {
        let mut b = Budget::default();
        let peer = PeerId::random();
        let t0 = Instant::now();
        let n = (BURST as u64 / MIN_CHARGE) as usize;
        for i in 0..n {
            assert_eq!(b.turn(peer, t0), Turn::Go);
            b.charge(peer, BlobHash([i as u8; 32]), i as u64, 0, t0);
        }
        b.charge(peer, BlobHash([1; 32]), 1, 0, t0);
        assert!(matches!(b.turn(peer, t0), Turn::Wait(_)));
    }

    #[test]
    fn the_same_piece_asked_again_and_again_is_an_offence_distinct_pieces_are_not() {
        let mut b = Budget::default();
        let (flood, honest) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let module = BlobHash([1; 32]);
        let offences = (0..=2 * REPEATS_PER_OFFENCE)
            .filter(|_| b.charge(flood, module, 0, 120_000, t0))
            .count();
        assert_eq!(offences, 2, "the first is not a repeat; then one per run");
        // An honest worker fetching many distinct blobs, and re-fetching one input
        // a few times (once per chunk it starts), never offends.
        let mut offended = false;
        for i in 0..100_000u32 {
            let hash = BlobHash([(i % 200) as u8; 32]);
            offended |= b.charge(honest, hash, u64::from(i / 200) * MIB, MIB, t0);
        }
        assert!(!offended);
        // Repeats are counted per window: a slow trickle of repeats never adds up.
        let mut now = t0;
        let mut trickle = false;
        for _ in 0..10 * REPEATS_PER_OFFENCE {
            now += REPEAT_WINDOW / (REPEATS_PER_OFFENCE / 2);
            trickle |= b.charge(honest, BlobHash([9; 32]), 0, MIB, now);
        }
        assert!(!trickle);
    }

    #[test]
    fn the_table_forgets_idle_peers_and_is_bounded() {
        let mut b = Budget::default();
        let t0 = Instant::now();
        for _ in 0..MAX_PEERS {
            let peer = PeerId::random();
            assert!(b.slots(peer, t0).is_some());
            b.charge(peer, BlobHash([0; 32]), 0, MIB, t0);
        }
        assert!(
            b.slots(PeerId::random(), t0).is_none(),
            "full of peers still refilling"
        );
        let later = t0 + REPEAT_WINDOW;
        assert!(b.slots(PeerId::random(), later).is_some());
        b.prune(later + REPEAT_WINDOW);
        assert_eq!(b.len(), 0);
    }
}
