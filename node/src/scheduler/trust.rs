//! How far this submitter trusts each peer, and what that buys: adaptive
//! replication, spot checks and planted chunks. Pure rules; the [actor](super::actor)
//! applies them, `peergrid bench trust` measures them.
//!
//! - A peer is on **probation** until it has [`TrustPolicy::trust_after`] consecutive
//!   results that agreed with a *witnessed* verification (one whose agreeing group
//!   held a trusted peer, or this node itself). Peers on probation never verify each
//!   other: in an adaptive job, a quorum made only of them waits for a witness.
//! - A **trusted** peer given a fresh chunk runs it alone with probability
//!   `1 - q`, where `q` ([`TrustPolicy::replication_probability`]) falls as its
//!   streak grows, never below [`TrustPolicy::min_replication`]. A result on one
//!   trusted peer's word is remembered, so that any later disagreement by that peer
//!   resets its streak and re-verifies those results.
//! - **Spot checks**: a sample of every kind of verified result (on one word or a
//!   quorum's) is re-run by this node; **planted** chunks (answers already verified)
//!   are re-issued to trusted peers as if new. Both are judged against this node's own
//!   run only (a plant that disagrees makes this node run the chunk). A peer whose
//!   signed answer contradicts this node's run is excluded for good, and every chunk
//!   it vouched for is re-verified.
//! - **Disputes** (replicas that disagree) over chunks under
//!   [`TrustPolicy::referee_fuel`] are decided by this node's own run (see
//!   `job::Chunk::judge`). The threat model is `docs/TRUST.md`.
//!
//! Standing comes from the reputation rows ([`ReputationRow`]), so it survives
//! restarts and is per submitter: there is no global trust.

use rand::RngExt;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::reputation::is_excluded;
use crate::store::db::ReputationRow;

/// Where a peer stands with this submitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// Never given work; its results are ignored.
    Excluded,
    /// New or recently wrong: its results need a trusted peer's agreement.
    Probation,
    /// A long enough streak of agreed results: may run chunks alone.
    Trusted,
}

impl Standing {
    /// The name status shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Excluded => "excluded",
            Self::Probation => "probation",
            Self::Trusted => "trusted",
        }
    }
}

/// The numbers of adaptive replication. The defaults are what `peergrid node` uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrustPolicy {
    /// Consecutive witnessed agreements that end probation (BOINC uses about 10).
    pub trust_after: u64,
    /// The least probability that a trusted peer's chunk is still replicated.
    pub min_replication: f64,
    /// Fraction of results accepted on one peer's word that this node re-runs.
    pub spot_check_rate: f64,
    /// Fraction of witnessed verifications re-issued to a trusted peer as a plant.
    pub plant_rate: f64,
    /// Chunks a peer vouched for (alone or in a quorum) remembered per peer, for
    /// re-verification once it is caught.
    pub recheck_window: usize,
    /// Disputes (replicas that disagree) over chunks that used at most this much
    /// fuel are refereed by this node's own run; 0: never (a quorum decides).
    pub referee_fuel: u64,
}

impl Default for TrustPolicy {
    fn default() -> Self {
        Self {
            trust_after: 10,
            min_replication: 0.05,
            spot_check_rate: 0.02,
            plant_rate: 0.01,
            recheck_window: 10_000,
            // About a second of one core: a dispute costs the submitter at most that.
            referee_fuel: 1_000_000_000,
        }
    }
}

impl TrustPolicy {
    /// The streak a peer needs to be trusted: `trust_after`, doubled for each
    /// time it was ever in a minority (up to 64×), so that a peer that lies now and
    /// then rarely earns trust back.
    pub fn streak_needed(&self, row: &ReputationRow) -> u64 {
        self.trust_after << row.disagreed.min(6)
    }

    /// A peer's standing from its reputation row.
    pub fn standing(&self, row: &ReputationRow) -> Standing {
        if is_excluded(row) {
            Standing::Excluded
        } else if row.consecutive >= self.streak_needed(row) {
            Standing::Trusted
        } else {
            Standing::Probation
        }
    }

    /// The probability that a chunk given to this peer is replicated anyway: 1 on
    /// probation, then `(trust_after / streak)²`, never below `min_replication`.
    /// The square makes it fall fast once a streak is established: at twice the
    /// threshold a quarter of the chunks are replicated, at 4.5× the floor of 5 %.
    pub fn replication_probability(&self, row: &ReputationRow) -> f64 {
        if self.standing(row) != Standing::Trusted {
            return 1.0;
        }
        let ratio = self.streak_needed(row).max(1) as f64 / row.consecutive.max(1) as f64;
        (ratio * ratio).clamp(self.min_replication, 1.0)
    }

    /// Draws whether a fresh chunk for this trusted peer runs on its word alone.
    pub fn runs_alone(&self, row: &ReputationRow, rng: &mut StdRng) -> bool {
        self.standing(row) == Standing::Trusted
            && !rng.random_bool(self.replication_probability(row))
    }

    /// Draws whether a verified result (on one word, or a quorum's) is re-run by
    /// this node.
    pub fn spot_check(&self, rng: &mut StdRng) -> bool {
        rng.random_bool(self.spot_check_rate.clamp(0.0, 1.0))
    }

    /// Draws whether a witnessed verification is planted with a trusted peer.
    pub fn plant(&self, rng: &mut StdRng) -> bool {
        rng.random_bool(self.plant_rate.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn row(consecutive: u64, agreed: u64, disagreed: u64) -> ReputationRow {
        ReputationRow {
            peer: "p".into(),
            agreed,
            consecutive,
            disagreed,
            ..ReputationRow::default()
        }
    }

    #[test]
    fn trust_needs_a_streak_and_replication_falls_with_it_but_never_to_zero() {
        let policy = TrustPolicy::default();
        assert_eq!(policy.standing(&row(0, 0, 0)), Standing::Probation);
        assert_eq!(policy.standing(&row(9, 9, 0)), Standing::Probation);
        assert_eq!(policy.standing(&row(10, 10, 0)), Standing::Trusted);
        assert_eq!(
            policy.standing(&row(10, 100, 1)),
            Standing::Probation,
            "once wrong, twice the streak"
        );
        assert_eq!(policy.standing(&row(20, 100, 1)), Standing::Trusted);
        assert_eq!(policy.replication_probability(&row(5, 5, 0)), 1.0);
        let q20 = policy.replication_probability(&row(20, 20, 0));
        let q40 = policy.replication_probability(&row(40, 40, 0));
        assert!(q20 > q40 && q40 > policy.min_replication, "{q20} {q40}");
        assert_eq!(
            policy.replication_probability(&row(1_000_000, 1_000_000, 0)),
            policy.min_replication
        );
        let mut rng = StdRng::seed_from_u64(7);
        let replicated = (0..10_000)
            .filter(|_| !policy.runs_alone(&row(1_000_000, 1_000_000, 0), &mut rng))
            .count();
        assert!((300..700).contains(&replicated), "{replicated} of 10000");
    }

    #[test]
    fn an_excluded_peer_is_never_trusted_whatever_its_streak() {
        let policy = TrustPolicy::default();
        let caught = ReputationRow {
            caught: 1,
            ..row(500, 500, 1)
        };
        assert_eq!(policy.standing(&caught), Standing::Excluded);
        let mut rng = StdRng::seed_from_u64(1);
        assert!(!policy.runs_alone(&caught, &mut rng));
    }
}
