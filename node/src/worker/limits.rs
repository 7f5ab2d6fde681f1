//! What this worker lends at most: per chunk (fuel, wall time, output, memory), per
//! submitter (a fair share of the slots, a quota of undelivered results) and in all
//! (the outbox). The volunteer sets them (`peergrid.toml`, flags); `settings.rs`
//! resolves them into a [`WorkerLimits`], which the node hands to the worker.
//!
//! Admission (`admission.rs`) asks the pure functions here whether an assignment
//! fits; delivery (`delivery.rs`) expires old results with [`WorkerLimits::outbox_expiry`].
//! A submitter never chooses these numbers: an offer over them is refused with the
//! worker's maximum ([`RejectReason::LimitsTooHigh`](crate::net::protocol::RejectReason)).

use std::time::Duration;

use crate::types::Limits;

/// Fuel lent per chunk by default: this many seconds at the calibrated rate...
pub const DEFAULT_FUEL_SECONDS: u64 = 300;
/// ...and never less than a default job asks for ([`Limits::CHUNK`]), so a job with
/// default limits runs on every worker with default settings, however slow.
pub const MIN_DEFAULT_FUEL: u64 = Limits::CHUNK.fuel;

/// The worker's bounds, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLimits {
    /// Most fuel one chunk may ask for.
    pub max_fuel: u64,
    /// Longest wall-clock timeout one chunk may ask for.
    pub max_timeout: Duration,
    /// Largest output one chunk may ask to return, in bytes.
    pub max_output_bytes: u64,
    /// Most undelivered results kept for one submitter; beyond it, that submitter's
    /// offers are refused (`OutboxFull`).
    pub outbox_results_per_submitter: u64,
    /// Most bytes of undelivered results (large outputs included) kept for one
    /// submitter.
    pub outbox_bytes_per_submitter: u64,
    /// Most undelivered results kept in all; beyond it, every offer is refused.
    pub outbox_results: u64,
    /// Most bytes of undelivered results kept in all.
    pub outbox_bytes: u64,
    /// An undelivered result older than this is dropped (its submitter has long
    /// reissued the chunk).
    pub outbox_expiry: Duration,
    /// While another submitter waits, one submitter may hold at most this share of
    /// the assignments the worker takes, in percent (at least one).
    pub submitter_share_percent: u32,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        Self {
            max_fuel: MIN_DEFAULT_FUEL,
            max_timeout: Limits::CHUNK.timeout,
            max_output_bytes: Limits::CHUNK.max_output_bytes,
            outbox_results_per_submitter: 2_000,
            // 64 MiB: one submitter that never takes its results may make a
            // volunteer's disk grow this much, not more (bench hostile's
            // outbox-fill grew it 267 MB under 512 MiB).
            outbox_bytes_per_submitter: 64 * 1024 * 1024,
            outbox_results: 10_000,
            outbox_bytes: 2 * 1024 * 1024 * 1024,
            outbox_expiry: Duration::from_secs(24 * 3600),
            submitter_share_percent: 50,
        }
    }
}

/// The default fuel maximum for a machine that burns `fuel_per_sec` in one slot:
/// [`DEFAULT_FUEL_SECONDS`] of it, at least [`MIN_DEFAULT_FUEL`].
pub fn default_max_fuel(fuel_per_sec: u64) -> u64 {
    fuel_per_sec
        .saturating_mul(DEFAULT_FUEL_SECONDS)
        .max(MIN_DEFAULT_FUEL)
}

impl WorkerLimits {
    /// The most a chunk may ask for here, as the [`Limits`] a refusal carries.
    pub fn maxima(&self, memory_bytes: u64) -> Limits {
        Limits {
            fuel: self.max_fuel,
            memory_bytes,
            timeout: self.max_timeout,
            max_output_bytes: self.max_output_bytes,
        }
    }

    /// Whether `asked` fits under the maxima (with `memory_bytes` per chunk).
    pub fn fits(&self, asked: &Limits, memory_bytes: u64) -> bool {
        asked.fuel <= self.max_fuel
            && asked.memory_bytes <= memory_bytes
            && asked.timeout <= self.max_timeout
            && asked.max_output_bytes <= self.max_output_bytes
    }

    /// Most assignments one submitter may hold when the worker takes `capacity` in
    /// all: all of them when nobody else waits, else its share (at least one).
    pub fn share(&self, capacity: usize, others_waiting: bool) -> usize {
        if !others_waiting {
            return capacity;
        }
        (capacity.saturating_mul(self.submitter_share_percent as usize) / 100).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_fits_only_under_every_maximum() {
        let w = WorkerLimits {
            max_fuel: 1_000,
            max_timeout: Duration::from_secs(60),
            max_output_bytes: 1 << 20,
            ..WorkerLimits::default()
        };
        let ok = Limits {
            fuel: 1_000,
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(60),
            max_output_bytes: 1 << 20,
        };
        assert!(w.fits(&ok, 64 << 20), "exactly the maxima fit");
        for over in [
            Limits { fuel: 1_001, ..ok },
            Limits {
                memory_bytes: (64 << 20) + 1,
                ..ok
            },
            Limits {
                timeout: Duration::from_millis(60_001),
                ..ok
            },
            Limits {
                max_output_bytes: (1 << 20) + 1,
                ..ok
            },
            Limits {
                fuel: u64::MAX,
                timeout: Duration::MAX,
                ..ok
            },
        ] {
            assert!(!w.fits(&over, 64 << 20), "{over:?}");
        }
        assert_eq!(w.maxima(64 << 20), ok);
    }

    #[test]
    fn default_fuel_is_minutes_of_this_machine_never_below_a_default_job() {
        assert_eq!(default_max_fuel(0), Limits::CHUNK.fuel);
        assert_eq!(default_max_fuel(1_000_000), Limits::CHUNK.fuel);
        assert_eq!(default_max_fuel(2_000_000_000), 600_000_000_000);
        assert_eq!(default_max_fuel(u64::MAX), u64::MAX);
        let w = WorkerLimits::default();
        assert!(w.fits(&Limits::CHUNK, Limits::CHUNK.memory_bytes));
    }

    #[test]
    fn a_submitter_gets_everything_alone_and_its_share_when_others_wait() {
        let w = WorkerLimits::default();
        let table = [
            // (capacity, others waiting, share)
            (8, false, 8),
            (8, true, 4),
            (1, true, 1),
            (3, true, 1),
            (0, true, 1),
            (0, false, 0),
        ];
        for (capacity, waiting, share) in table {
            assert_eq!(w.share(capacity, waiting), share, "{capacity} {waiting}");
        }
        let all = WorkerLimits {
            submitter_share_percent: 100,
            ..w
        };
        assert_eq!(all.share(8, true), 8);
    }
}
