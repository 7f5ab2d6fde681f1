//! Per-peer bounds for the inbound [dispatcher](super): no one peer may take more
//! than its share of a backlog ([`Shares`]), nor send offers or cancels faster than
//! a rate ([`Buckets`]). Pure (time is passed in) and bounded: both tables hold only
//! peers with work in flight or recent requests.

use libp2p::PeerId;
use std::collections::HashMap;
use tokio::time::Instant;

/// A backlog shared by all peers, each taking at most `per_peer` of `total`.
#[derive(Debug)]
pub(super) struct Shares {
    per_peer: HashMap<PeerId, usize>,
    held: usize,
    total: usize,
    max_per_peer: usize,
}

impl Shares {
    pub(super) fn new(total: usize, max_per_peer: usize) -> Self {
        Self {
            per_peer: HashMap::new(),
            held: 0,
            total,
            max_per_peer,
        }
    }

    /// Takes a place for `peer`; false when the backlog, or the peer's share of
    /// it, is full.
    pub(super) fn admit(&mut self, peer: PeerId) -> bool {
        let mine = self.per_peer.get(&peer).copied().unwrap_or(0);
        if self.held >= self.total || mine >= self.max_per_peer {
            return false;
        }
        self.held += 1;
        *self.per_peer.entry(peer).or_default() += 1;
        true
    }

    /// Returns `peer`'s place.
    pub(super) fn done(&mut self, peer: PeerId) {
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n -= 1;
            self.held -= 1;
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }
}

/// Whether a request may go on.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Allow {
    /// Within the peer's rate.
    Yes,
    /// Over it: refused; `offence` once every [`DROPS_PER_OFFENCE`] refusals.
    No { offence: bool },
}

/// Refusals of one peer's requests that count as one offence: an honest peer
/// that is refused backs off; one that floods is banned after a few thousand.
pub(super) const DROPS_PER_OFFENCE: u32 = 256;

/// Most peers remembered (only peers that asked recently are).
const MAX_PEERS: usize = 4096;

/// A token bucket per peer: `rate` requests per second, bursts of `burst`.
#[derive(Debug)]
pub(super) struct Buckets {
    peers: HashMap<PeerId, Bucket>,
    rate: f64,
    burst: f64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    drops: u32,
}

impl Buckets {
    pub(super) fn new(rate: u32, burst: u32) -> Self {
        Self {
            peers: HashMap::new(),
            rate: f64::from(rate),
            burst: f64::from(burst),
        }
    }

    /// Takes a token of `peer`'s bucket at `now`.
    pub(super) fn allow(&mut self, peer: PeerId, now: Instant) -> Allow {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEERS {
            // Forget the buckets that are full again (peers quiet for a while).
            let (rate, burst) = (self.rate, self.burst);
            self.peers.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
            if self.peers.len() >= MAX_PEERS {
                return Allow::No { offence: false };
            }
        }
        let b = self.peers.entry(peer).or_insert(Bucket {
            tokens: self.burst,
            at: now,
            drops: 0,
        });
        let elapsed = now.saturating_duration_since(b.at);
        b.tokens = (b.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Allow::Yes;
        }
        b.drops += 1;
        Allow::No {
            offence: b.drops.is_multiple_of(DROPS_PER_OFFENCE),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn one_peer_takes_at_most_its_share_of_a_backlog() {
        let mut s = Shares::new(10, 4);
        let (flood, honest) = (PeerId::random(), PeerId::random());
        assert_eq!((0..100).filter(|_| s.admit(flood)).count(), 4);
        assert!(s.admit(honest), "the flood leaves room for others");
        s.done(flood);
        assert!(s.admit(flood), "a finished request frees its place");
        assert!(!s.admit(flood));
        // The whole backlog still bounds everyone.
        let others: usize = (0..20).filter(|_| s.admit(PeerId::random())).count();
        assert_eq!(others, 10 - 4 - 1);
        s.done(PeerId::random()); // not holding anything: no effect
        assert!(!s.admit(PeerId::random()));
    }

    #[test]
    fn a_flood_is_cut_to_the_rate_and_counted_as_offences_others_are_not_affected() {
        let mut b = Buckets::new(10, 20);
        let (flood, honest) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let mut allowed = 0;
        let mut offences = 0;
        for _ in 0..20 + DROPS_PER_OFFENCE * 2 {
            match b.allow(flood, t0) {
                Allow::Yes => allowed += 1,
                Allow::No { offence } => offences += u32::from(offence),
            }
        }
        assert_eq!(allowed, 20, "the burst");
        assert_eq!(offences, 2);
        assert_eq!(b.allow(honest, t0), Allow::Yes);
        // A second later, `rate` more.
        let t1 = t0 + Duration::from_secs(1);
        let later = (0..100)
            .filter(|_| b.allow(flood, t1) == Allow::Yes)
            .count();
        assert_eq!(later, 10);
    }
}
