//! # primes: count the primes below a limit
//!
//! Counts the primes `p < limit` (π(limit − 1), so `limit = 10` counts 2, 3, 5, 7) and
//! finds the largest of them.
//!
//! **Params** (JSON, every field optional):
//! - `limit`: count the primes strictly below this; `2 ..= 10^12` (default `10000000`).
//! - `chunks`: how many ranges to split `0..limit` into; `1 ..= 100000` (default `16`).
//!   Fewer chunks are made when `limit` is smaller than `chunks`.
//!
//! **Split**: `0..limit` into `chunks` contiguous half-open ranges of nearly equal
//! length ([`peergrid_sdk::ranges`]); one [`Input`] `{lo, hi}` per range.
//!
//! **Run**: a segmented sieve of Eratosthenes over `[lo, hi)`. The chunk first sieves
//! the odd base primes up to `√(hi − 1)` itself (at most 78 498 of them, below 10^6),
//! then sieves only the odd numbers of its range, in L1-sized segments of
//! [`SEGMENT_BYTES`] bytes (one byte per odd number), so memory stays small whatever the
//! range. The prime 2 is counted separately. Outputs an [`Output`]: the range, the number
//! of primes in it and the largest one (if any).
//!
//! **Merge**: checks the ranges tile `0..limit` exactly, in order, and sums the counts
//! into [`Summary`] as JSON, e.g.
//! `{"limit": 10000000, "primes_below_limit": 664579, "largest_prime_below_limit": 9999991}`.

use peergrid_sdk::Json;
use serde::{Deserialize, Serialize};

/// One line about the job.
pub const ABOUT: &str =
    "Counts the primes below a limit with a segmented, odd-only sieve of Eratosthenes";

/// The default params, as JSON.
pub const DEFAULT_PARAMS: &str = r#"{"limit": 10000000, "chunks": 16}"#;

/// One line per param: `name: meaning (default)`.
pub const PARAMS_HELP: &str = "\
limit: count the primes strictly below this, 2 to 10^12 (10000000)
chunks: number of ranges to split 0..limit into, 1 to 100000 (16)";

/// The largest `limit` accepted (10^12): base primes stay below 10^6, and every product
/// the sieve forms stays far from `u64::MAX`.
pub const MAX_LIMIT: u64 = 1_000_000_000_000;

/// The most chunks a job may be split into.
pub const MAX_CHUNKS: u64 = 100_000;

/// Bytes per sieve segment: one byte per odd number, so a segment covers twice as many
/// integers. Sized to sit in a typical 32 KiB L1 data cache.
pub const SEGMENT_BYTES: usize = 32 * 1024;

/// The job's params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Count the primes strictly below this.
    pub limit: u64,
    /// Number of ranges to split `0..limit` into.
    pub chunks: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            limit: 10_000_000,
            chunks: 16,
        }
    }
}

/// One chunk: the half-open range `[lo, hi)` to sieve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    /// First number of the range.
    pub lo: u64,
    /// One past the last number of the range.
    pub hi: u64,
}

/// What one chunk found in `[lo, hi)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// First number of the range.
    pub lo: u64,
    /// One past the last number of the range.
    pub hi: u64,
    /// Number of primes in `[lo, hi)`.
    pub count: u64,
    /// The largest prime in `[lo, hi)`, if there is one.
    pub largest: Option<u64>,
}

/// The job's result (written as JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The limit the primes were counted below.
    pub limit: u64,
    /// π(limit − 1): the number of primes `p < limit`.
    pub primes_below_limit: u64,
    /// The largest prime below `limit` (none when `limit` is 2).
    pub largest_prime_below_limit: Option<u64>,
}

/// Splits `0..limit` into contiguous ranges.
pub fn split(p: Params) -> Result<Vec<Input>, String> {
    if !(2..=MAX_LIMIT).contains(&p.limit) {
        return Err(format!(
            "limit must be at least 2 and at most 10^12, got {}",
            p.limit
        ));
    }
    if !(1..=MAX_CHUNKS).contains(&p.chunks) {
        return Err(format!(
            "chunks must be at least 1 and at most {MAX_CHUNKS}, got {}",
            p.chunks
        ));
    }
    Ok(peergrid_sdk::ranges(p.limit, p.chunks)
        .into_iter()
        .map(|(lo, hi)| Input { lo, hi })
        .collect())
}

/// Counts the primes in `[lo, hi)`.
pub fn run(i: Input) -> Result<Output, String> {
    let Input { lo, hi } = i;
    if lo >= hi || hi > MAX_LIMIT {
        return Err(format!("invalid range [{lo}, {hi}): need lo < hi <= 10^12"));
    }
    let (count, largest) = count_primes(lo, hi);
    Ok(Output {
        lo,
        hi,
        count,
        largest,
    })
}

/// Checks the ranges tile `0..limit` and adds up the counts.
pub fn merge(outputs: Vec<Output>) -> Result<Json<Summary>, String> {
    if outputs.is_empty() {
        return Err("no chunk outputs to merge".to_string());
    }
    let mut next = 0u64;
    let mut total = 0u64;
    let mut largest = None;
    for (k, o) in outputs.iter().enumerate() {
        if o.lo != next || o.hi <= o.lo {
            return Err(format!(
                "chunk {k} covers [{}, {}) but the next range should start at {next}: \
                 ranges are missing, overlapping or out of order",
                o.lo, o.hi
            ));
        }
        if let Some(p) = o.largest
            && !(o.lo..o.hi).contains(&p)
        {
            return Err(format!(
                "chunk {k} reports largest prime {p} outside its range [{}, {})",
                o.lo, o.hi
            ));
        }
        if o.count > o.hi - o.lo || (o.count == 0) != o.largest.is_none() {
            return Err(format!(
                "chunk {k} reports an inconsistent count {} for [{}, {})",
                o.count, o.lo, o.hi
            ));
        }
        total += o.count; // at most hi - lo each, so the sum is at most limit
        largest = o.largest.or(largest);
        next = o.hi;
    }
    Ok(Json(Summary {
        limit: next,
        primes_below_limit: total,
        largest_prime_below_limit: largest,
    }))
}

peergrid_sdk::export!(run: run, split: split, merge: merge);

/// The odd primes `p` with `p * p <= n` (`n <= 10^12`, so `p < 10^6` fits a u32).
fn odd_base_primes(n: u64) -> Vec<u32> {
    let root = n.isqrt() as usize; // <= 10^6
    // is_composite[k] describes the odd number 2k + 1 (index root / 2 is >= root).
    let len = root / 2 + 1;
    let mut is_composite = vec![false; len];
    let mut primes = Vec::new();
    let mut k = 1;
    while k < len {
        let p = 2 * k + 1;
        if p > root {
            break;
        }
        if !is_composite[k] {
            primes.push(p as u32);
            let mut j = p * p / 2;
            while j < len {
                is_composite[j] = true;
                j += p;
            }
        }
        k += 1;
    }
    primes
}

/// Counts the primes in `[lo, hi)` (`lo < hi <= 10^12`) and finds the largest.
fn count_primes(lo: u64, hi: u64) -> (u64, Option<u64>) {
    let mut count = 0u64;
    let mut largest = None;
    if lo <= 2 && 2 < hi {
        count = 1;
        largest = Some(2);
    }
    // The odd numbers first, first + 2, ... below hi; 1 is not prime, so start at 3.
    let first = lo.max(3) | 1;
    if first >= hi {
        return (count, largest);
    }
    let odd_count = (hi - first).div_ceil(2); // odd numbers in [first, hi)

    let primes = odd_base_primes(hi - 1);
    // offsets[k]: index, relative to the current segment, of the next odd multiple of
    // primes[k] to cross off. Only the first `active` primes (those with p² below the
    // segment's end) have one; the rest start later, so offsets stay below p + segment.
    let mut offsets: Vec<u32> = Vec::with_capacity(primes.len());
    let mut active = 0usize;
    let mut segment = vec![0u8; SEGMENT_BYTES];

    let mut seg_start = 0u64; // index (in odd numbers from `first`) of the segment's start
    while seg_start < odd_count {
        let len = (odd_count - seg_start).min(SEGMENT_BYTES as u64) as usize;
        let seg_lo = first + 2 * seg_start; // the odd number at index 0 of the segment
        let seg_end = seg_lo + 2 * len as u64; // past the last odd number of the segment

        // Activate the primes whose square falls before the end of this segment.
        while let Some(&p) = primes.get(active) {
            let p = u64::from(p);
            if p * p >= seg_end {
                break;
            }
            // First odd multiple of p that is >= max(p², seg_lo).
            let mut m = if p * p >= seg_lo {
                p * p
            } else {
                seg_lo.div_ceil(p) * p
            };
            if m.is_multiple_of(2) {
                m += p;
            }
            // m < seg_end + 2p, so the offset is below SEGMENT_BYTES + p: fits u32.
            offsets.push(((m - seg_lo) / 2) as u32);
            active += 1;
        }

        let seg = &mut segment[..len];
        seg.fill(0);
        for (&p, off) in primes.iter().zip(offsets.iter_mut()) {
            let p = p as usize;
            let mut j = *off as usize;
            while j < seg.len() {
                seg[j] = 1;
                j += p;
            }
            *off = (j - seg.len()) as u32;
        }

        count += seg.iter().filter(|&&b| b == 0).count() as u64;
        if let Some(k) = seg.iter().rposition(|&b| b == 0) {
            largest = Some(seg_lo + 2 * k as u64);
        }
        seg_start += len as u64;
    }
    (count, largest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the job exactly as the sandbox does: JSON params -> split -> run each chunk
    /// over postcard bytes -> merge -> JSON result bytes.
    fn run_job(params: &str) -> Result<serde_json::Value, String> {
        let result = PEERGRID_JOB.run_all(params.as_bytes())?;
        Ok(serde_json::from_slice(&result).unwrap())
    }

    fn pi_of(limit: u64, chunks: u64) -> u64 {
        let v = run_job(&format!(r#"{{"limit": {limit}, "chunks": {chunks}}}"#)).unwrap();
        assert_eq!(v["limit"], limit);
        v["primes_below_limit"].as_u64().unwrap()
    }

    fn is_prime_naive(n: u64) -> bool {
        n >= 2
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    }

    #[test]
    fn defaults_match() {
        let parsed: Params = serde_json::from_str(DEFAULT_PARAMS).unwrap();
        assert_eq!(parsed, Params::default());
        let empty: Params = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, Params::default());
        assert_eq!(PARAMS_HELP.lines().count(), 2);
    }

    #[test]
    fn known_small_answers() {
        assert_eq!(pi_of(2, 1), 0);
        assert_eq!(pi_of(3, 1), 1);
        assert_eq!(pi_of(10, 1), 4);
        assert_eq!(pi_of(10, 16), 4);
        assert_eq!(pi_of(11, 3), 4); // 11 itself is not below the limit
        assert_eq!(pi_of(12, 3), 5);
        assert_eq!(pi_of(100, 1), 25);
        assert_eq!(pi_of(100, 7), 25);
        assert_eq!(pi_of(100, 100_000), 25);
        assert_eq!(pi_of(1000, 9), 168);
    }

    #[test]
    fn known_large_answers() {
        assert_eq!(pi_of(1_000_000, 1), 78_498);
        assert_eq!(pi_of(1_000_000, 16), 78_498);
        assert_eq!(pi_of(2_000_000, 5), 148_933);
    }

    #[test]
    fn default_params_give_pi_of_ten_million() {
        // The default job: π(10^7) = 664579, largest prime below 10^7 is 9999991.
        let v = run_job("").unwrap();
        assert_eq!(v["limit"], 10_000_000);
        assert_eq!(v["primes_below_limit"], 664_579);
        assert_eq!(v["largest_prime_below_limit"], 9_999_991);
    }

    #[test]
    fn every_small_range_matches_trial_division() {
        for lo in 0..60u64 {
            for hi in lo + 1..140 {
                let out = run(Input { lo, hi }).unwrap();
                let naive: Vec<u64> = (lo..hi).filter(|&n| is_prime_naive(n)).collect();
                assert_eq!(out.count, naive.len() as u64, "[{lo}, {hi})");
                assert_eq!(out.largest, naive.last().copied(), "[{lo}, {hi})");
            }
        }
    }

    #[test]
    fn ranges_across_segments_match_trial_division() {
        // Spans several segments, with base primes whose squares start mid-range.
        let (lo, hi) = (1_234_567u64, 1_234_567 + 3 * 2 * SEGMENT_BYTES as u64 + 11);
        let out = run(Input { lo, hi }).unwrap();
        let naive = (lo..hi).filter(|&n| is_prime_naive(n)).count() as u64;
        assert_eq!(out.count, naive);
    }

    #[test]
    fn near_the_cap() {
        // The largest prime below 10^12 is 999999999989.
        let out = run(Input {
            lo: MAX_LIMIT - 1000,
            hi: MAX_LIMIT,
        })
        .unwrap();
        assert_eq!(out.largest, Some(999_999_999_989));
        let naive = (MAX_LIMIT - 1000..MAX_LIMIT)
            .filter(|&n| is_prime_naive(n))
            .count() as u64;
        assert_eq!(out.count, naive);
        // The whole-job path accepts the cap too (split only; running it is too slow).
        let inputs = split(Params {
            limit: MAX_LIMIT,
            chunks: MAX_CHUNKS,
        })
        .unwrap();
        assert_eq!(inputs.len() as u64, MAX_CHUNKS);
        assert_eq!(inputs.last().unwrap().hi, MAX_LIMIT);
    }

    #[test]
    fn bad_params_are_rejected() {
        let err = run_job(r#"{"limit": 0}"#).unwrap_err();
        assert_eq!(err, "limit must be at least 2 and at most 10^12, got 0");
        assert!(run_job(r#"{"limit": 1000000000001}"#).is_err());
        assert!(run_job(r#"{"chunks": 0}"#).unwrap_err().contains("chunks"));
        assert!(run_job(r#"{"chunks": 100001}"#).is_err());
        assert!(
            run_job(r#"{"limit": -5}"#)
                .unwrap_err()
                .contains("invalid params")
        );
        assert!(
            run_job(r#"{"limt": 5}"#)
                .unwrap_err()
                .contains("unknown field")
        );
    }

    #[test]
    fn bad_inputs_and_outputs_are_rejected() {
        assert!(run(Input { lo: 5, hi: 5 }).is_err());
        assert!(
            run(Input {
                lo: 0,
                hi: u64::MAX
            })
            .is_err()
        );
        assert!((PEERGRID_JOB.run)(&[0xff, 0xff]).is_err());
        assert!((PEERGRID_JOB.run)(&[]).is_err());

        let a = run(Input { lo: 0, hi: 50 }).unwrap();
        let b = run(Input { lo: 50, hi: 100 }).unwrap();
        assert_eq!(merge(vec![a, b]).unwrap().0.primes_below_limit, 25);
        assert!(merge(vec![]).is_err());
        assert!(merge(vec![b]).is_err()); // missing [0, 50)
        assert!(merge(vec![b, a]).is_err()); // out of order
        let c = run(Input { lo: 40, hi: 100 }).unwrap();
        assert!(merge(vec![a, c]).unwrap_err().contains("overlapping"));
        let lying = Output { count: 99, ..b };
        assert!(merge(vec![a, lying]).is_err());
    }
}
