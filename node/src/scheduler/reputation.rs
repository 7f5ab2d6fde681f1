//! Peer reputation, local to this submitter and kept in the database.
//!
//! Per peer: results that agreed with the verified outcome (and how many in a row),
//! results in a minority, errors, timeouts, and lies caught by a spot check or a
//! planted chunk. A peer caught in a minority loses its streak (and so its trust, see
//! [`trust`](super::trust)); past the thresholds of [`is_excluded`] it is no longer
//! chosen.

use std::collections::HashMap;

use libp2p::PeerId;

use crate::store::db::{ReputationRow, Write};

/// Whether a peer is no longer given work: it was caught lying by a check whose
/// answer was known, or it was in a minority at least twice and for more than a tenth
/// of its verified results, or it failed to deliver (errors, timeouts) at least five
/// times and more often than it agreed.
pub fn is_excluded(r: &ReputationRow) -> bool {
    if r.caught > 0 {
        return true;
    }
    let minority = r.disagreed >= 2 && r.disagreed * 10 > r.agreed;
    let unreliable = r.errors + r.timeouts >= 5 && r.errors + r.timeouts > r.agreed;
    minority || unreliable
}

/// A score for ordering peers (higher is better), in 0..1.
pub fn score(r: &ReputationRow) -> f64 {
    (r.agreed as f64 + 1.0)
        / (r.agreed as f64 + 5.0 * r.disagreed as f64 + (r.errors + r.timeouts) as f64 + 2.0)
}

/// What one judged result (or a replica never returned) does to its peer's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The result agreed with the verified outcome. Only a `witnessed` verification
    /// (one a trusted peer or this node took part in) extends the streak: peers on
    /// probation cannot vouch for each other.
    Agreed {
        /// Whether a trusted peer was in the agreeing group.
        witnessed: bool,
    },
    /// A check whose answer was known (a plant, or this node's own re-run) got
    /// something else: excluded.
    Caught,
    /// The result was in a minority.
    Disagreed,
    /// Something unusable, or a non-deterministic failure.
    Error,
    /// The replica was not returned in time.
    Timeout,
}

impl Mark {
    /// Changes `row` accordingly.
    pub fn apply(self, r: &mut ReputationRow) {
        match self {
            Self::Agreed { witnessed } => {
                r.agreed += 1;
                if witnessed {
                    r.consecutive += 1;
                }
            }
            Self::Caught => {
                r.caught += 1;
                r.disagreed += 1;
                r.consecutive = 0;
            }
            Self::Disagreed => {
                r.disagreed += 1;
                r.consecutive = 0;
            }
            Self::Error => {
                r.errors += 1;
                r.consecutive = 0;
            }
            Self::Timeout => {
                r.timeouts += 1;
                r.consecutive = 0;
            }
        }
    }

    /// The verdict label counted in the metrics (none for a timeout).
    pub fn label(self) -> Option<&'static str> {
        match self {
            Self::Agreed { .. } => Some("agreed"),
            Self::Caught => Some("caught"),
            Self::Disagreed => Some("disagreed"),
            Self::Error => Some("error"),
            Self::Timeout => None,
        }
    }
}

/// Every peer's standing.
#[derive(Debug, Default)]
pub struct Reputation {
    rows: HashMap<PeerId, ReputationRow>,
    metrics: super::metrics::SchedulerMetrics,
}

impl Reputation {
    /// From the stored rows.
    pub fn load(rows: Vec<ReputationRow>) -> Self {
        Self {
            rows: rows
                .into_iter()
                .filter_map(|r| r.peer.parse().ok().map(|p| (p, r)))
                .collect(),
            metrics: Default::default(),
        }
    }

    /// Records verdicts and exclusions in `metrics` (the node's).
    pub fn with_metrics(mut self, metrics: super::metrics::SchedulerMetrics) -> Self {
        let excluded = self.rows.values().filter(|r| is_excluded(r)).count();
        metrics.peers_excluded.set(excluded as i64);
        self.metrics = metrics;
        self
    }

    /// A peer's row (zeros for a newcomer).
    pub fn get(&self, peer: &PeerId) -> ReputationRow {
        self.rows
            .get(peer)
            .cloned()
            .unwrap_or_else(|| ReputationRow {
                peer: peer.to_string(),
                ..ReputationRow::default()
            })
    }

    /// A peer's row, if it has one.
    pub fn row(&self, peer: &PeerId) -> Option<&ReputationRow> {
        self.rows.get(peer)
    }

    /// Whether the peer is excluded.
    pub fn excluded(&self, peer: &PeerId) -> bool {
        self.rows.get(peer).is_some_and(is_excluded)
    }

    /// The peer's score.
    pub fn score(&self, peer: &PeerId) -> f64 {
        score(&self.get(peer))
    }

    /// Stores a peer's new row (a staged change being committed), recording when
    /// it crosses the exclusion line either way.
    pub fn set(&mut self, peer: PeerId, row: ReputationRow) {
        let before = self.rows.get(&peer).is_some_and(is_excluded);
        if !before && is_excluded(&row) {
            tracing::warn!(%peer, agreed = row.agreed, disagreed = row.disagreed,
                errors = row.errors, timeouts = row.timeouts, "peer excluded by reputation");
            self.metrics.peers_excluded.inc();
        } else if before && !is_excluded(&row) {
            self.metrics.peers_excluded.dec();
        }
        self.rows.insert(peer, row);
    }

    /// Counts a judged result in the metrics (once its change is committed).
    pub fn record(&self, mark: Mark) {
        if let Some(label) = mark.label() {
            self.metrics.verdict(label);
        }
    }

    /// Applies `mark` to the peer's row at once; returns the row to write.
    pub fn mark(&mut self, peer: PeerId, mark: Mark) -> Write {
        let mut row = self.get(&peer);
        mark.apply(&mut row);
        self.record(mark);
        self.set(peer, row.clone());
        Write::Reputation(row)
    }

    /// The peer's result agreed with the verified outcome (see [`Mark::Agreed`]).
    pub fn agreed(&mut self, peer: PeerId, witnessed: bool) -> Write {
        self.mark(peer, Mark::Agreed { witnessed })
    }

    /// The peer was caught by a check whose answer was known.
    pub fn caught(&mut self, peer: PeerId) -> Write {
        self.mark(peer, Mark::Caught)
    }

    /// The peer's result was in a minority.
    pub fn disagreed(&mut self, peer: PeerId) -> Write {
        self.mark(peer, Mark::Disagreed)
    }

    /// Every row, for status.
    pub fn all(&self) -> impl Iterator<Item = (&PeerId, &ReputationRow)> {
        self.rows.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_always_liar_is_excluded_after_two_minorities_and_honest_peers_never() {
        let mut rep = Reputation::default();
        let (honest, liar) = (PeerId::random(), PeerId::random());
        for _ in 0..100 {
            rep.agreed(honest, true);
        }
        rep.disagreed(liar);
        assert!(!rep.excluded(&liar), "one minority can be bad luck");
        rep.disagreed(liar);
        assert!(rep.excluded(&liar));
        assert!(!rep.excluded(&honest));
        assert!(rep.score(&honest) > rep.score(&liar));
    }

    #[test]
    fn an_occasional_liar_is_excluded_too() {
        let mut rep = Reputation::default();
        let peer = PeerId::random();
        for i in 0..30 {
            if i % 4 == 0 {
                rep.disagreed(peer);
            } else {
                rep.agreed(peer, true);
            }
        }
        assert!(rep.excluded(&peer));
    }

    #[test]
    fn one_caught_lie_excludes_even_a_long_standing_peer() {
        let mut rep = Reputation::default();
        let peer = PeerId::random();
        for _ in 0..1000 {
            rep.agreed(peer, true);
        }
        rep.caught(peer);
        assert!(rep.excluded(&peer));
        assert_eq!(rep.get(&peer).consecutive, 0);
    }

    #[test]
    fn unwitnessed_agreement_counts_but_builds_no_streak() {
        let mut rep = Reputation::default();
        let peer = PeerId::random();
        for _ in 0..50 {
            rep.agreed(peer, false);
        }
        let row = rep.get(&peer);
        assert_eq!((row.agreed, row.consecutive), (50, 0));
    }
}
