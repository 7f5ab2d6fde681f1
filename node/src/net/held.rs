//! The byte bound on inbound requests held in memory. The codec takes a share of
//! one [`Budget`] for the bytes of each request it is reading (so slow streams
//! trickling big messages hold at most the budget, however many there are), and
//! returns it once the request is decoded. Every request the event loop then hands
//! up (a [`NetEvent`](super::NetEvent)) carries a [`Held`] share of one
//! [`Budget`], sized by [`Weigh::weight`]: the *decoded* message's size (a result
//! batch's rows are several times their wire size), not its count. The share is
//! returned when the request is dropped (answered, refused, or done with), so the
//! bound covers the event queue and the dispatcher's tasks together. A request
//! that does not fit is dropped unanswered, as when the queue is full: the peer
//! sees a failed request and retries later.
//!
//! The last [`SMALL_RESERVE`] bytes of the budget are kept for small shares (at most
//! [`SMALL_SHARE`]: capacity queries, blob requests, cancels, the offers and result
//! batches of small jobs): big messages being read or held, however many peers send
//! them, never take the whole budget, so a stranger stalling streams of nearly 8 MiB
//! cannot starve the queries and offers that every honest job begins with.
//!
//! Created by [`start`](super::start); the event loop takes shares, whoever holds a
//! `NetEvent` returns them by dropping it.

use std::mem::size_of;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::protocol::{BlobRequest, ResultBatch, TaskRequest};
use crate::types::{ChunkResult, Payload, WireOutcome};

/// Most bytes of decoded inbound requests held at once: 16 full-size task offers or
/// result batches (8 MiB on the wire each, more decoded), whatever the count.
pub const MAX_HELD_BYTES: usize = 128 * 1024 * 1024;
/// Shares this small may use the last [`SMALL_RESERVE`] bytes of the budget: a
/// message under the small protocols' limit (64 KiB) and its read buffer.
pub const SMALL_SHARE: usize = 128 * 1024;
/// The bytes of the budget only small shares may take: 128 small messages at the
/// largest, far more at their usual size (a capacity query is a few bytes).
pub const SMALL_RESERVE: usize = 16 * 1024 * 1024;

/// The shared budget.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    used: Arc<AtomicUsize>,
    max: usize,
}

/// A share of the [`Budget`], returned on drop.
#[derive(Debug)]
pub struct Held {
    used: Arc<AtomicUsize>,
    max: usize,
    bytes: usize,
}

impl Held {
    /// The bytes this share holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Grows (or shrinks) the share to `bytes`; false, unchanged, when growing
    /// would take the budget over its max.
    pub(crate) fn resize(&mut self, bytes: usize) -> bool {
        if bytes <= self.bytes {
            self.used.fetch_sub(self.bytes - bytes, Ordering::AcqRel);
            self.bytes = bytes;
            return true;
        }
        let (extra, max) = (bytes - self.bytes, limit(self.max, bytes));
        let grown = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(extra).filter(|n| *n <= max)
            })
            .is_ok();
        if grown {
            self.bytes = bytes;
        }
        grown
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Budget {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A share of `bytes`, or `None` when it would take the budget over its max
    /// (for a share over [`SMALL_SHARE`], over its max less [`SMALL_RESERVE`]).
    pub(crate) fn take(&self, bytes: usize) -> Option<Held> {
        let max = limit(self.max, bytes);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|n| *n <= max)
            })
            .ok()?;
        Some(Held {
            used: self.used.clone(),
            max: self.max,
            bytes,
        })
    }

    /// Bytes held now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// How much of a budget of `max` bytes may be in use once a share is `bytes` long:
/// all of it for a small share, all but the reserve for a big one (a budget too
/// small for a reserve, as in tests, has none).
fn limit(max: usize, bytes: usize) -> usize {
    if bytes <= SMALL_SHARE || max < 2 * SMALL_RESERVE {
        max
    } else {
        max - SMALL_RESERVE
    }
}

/// The memory a decoded message takes: its own size and what it owns on the heap.
pub(crate) trait Weigh {
    fn weight(&self) -> usize;
}

fn payload(p: &Payload) -> usize {
    match p {
        Payload::Inline(bytes) => bytes.len(),
        Payload::Blob { .. } => 0,
    }
}

impl Weigh for ChunkResult {
    fn weight(&self) -> usize {
        let outcome = match &self.outcome {
            WireOutcome::Trap { kind, message } => kind.len() + message.len(),
            WireOutcome::Invalid(why) => why.len(),
            _ => 0,
        };
        size_of::<Self>() + outcome + self.output.as_ref().map_or(0, payload) + self.signature.len()
    }
}

impl Weigh for ResultBatch {
    fn weight(&self) -> usize {
        size_of::<Self>() + self.results.iter().map(Weigh::weight).sum::<usize>()
    }
}

impl Weigh for TaskRequest {
    fn weight(&self) -> usize {
        size_of::<Self>()
            + match self {
                TaskRequest::Offer { assignments, .. } => assignments
                    .iter()
                    .map(|a| size_of_val(a) + payload(&a.input))
                    .sum(),
                TaskRequest::Cancel { chunks, .. } => chunks.len() * size_of::<u32>(),
            }
    }
}

impl Weigh for BlobRequest {
    fn weight(&self) -> usize {
        size_of::<Self>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::codec;
    use crate::net::protocol::{MAX_RESULT_BYTES, RESULT_PROTOCOL};
    use crate::types::{BlobHash, JobId};

    #[test]
    fn shares_are_bounded_and_returned_on_drop() {
        let budget = Budget::new(100);
        let a = budget.take(60).expect("fits");
        assert!(budget.take(41).is_none(), "over the max");
        let b = budget.take(40).expect("fits exactly");
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(budget.take(60).is_some());
        drop(b);
        assert_eq!(budget.used(), 0);
        let mut c = budget.take(10).expect("fits");
        assert!(c.resize(100) && budget.used() == 100);
        assert!(
            !c.resize(101) && c.bytes() == 100,
            "unchanged when it does not fit"
        );
        assert!(c.resize(5) && budget.used() == 5);
        drop(c);
        assert_eq!(budget.used(), 0);
        assert!(budget.take(usize::MAX).is_none(), "no overflow");
    }

    /// Big shares (messages of up to 8 MiB, read or decoded) take all the budget
    /// they may, from as many streams as like: small ones (a capacity query, an
    /// offer of a small job) still fit, in the reserve.
    #[test]
    fn big_shares_never_take_the_reserve_kept_for_small_ones() {
        let budget = Budget::new(MAX_HELD_BYTES);
        let big = 8 * 1024 * 1024;
        let mut stalled = Vec::new();
        while let Some(share) = budget.take(big) {
            stalled.push(share);
        }
        // One share grown a piece at a time, as the codec reads, stops there too.
        let mut growing = budget.take(0).expect("an empty share");
        let mut size = 256;
        while growing.resize(size) {
            size *= 2;
        }
        assert_eq!(growing.bytes(), SMALL_SHARE, "it grows no further");
        drop(growing);
        assert!(budget.used() <= MAX_HELD_BYTES - SMALL_RESERVE);
        assert!(budget.used() > MAX_HELD_BYTES - SMALL_RESERVE - big);
        let small: Vec<Held> = (0..SMALL_RESERVE / SMALL_SHARE)
            .map(|_| budget.take(SMALL_SHARE).expect("a small share fits"))
            .collect();
        assert!(
            budget.take(SMALL_SHARE).is_none(),
            "the reserve is bounded too"
        );
        drop(small);
        // A small share may not grow into a big one inside the reserve.
        let mut query = budget.take(4096).expect("fits");
        assert!(!query.resize(SMALL_SHARE + 1));
        assert!(query.resize(SMALL_SHARE));
    }

    /// Measured: a full-size batch of the smallest results decodes to several times
    /// its wire size, so a bound by count (512 queued events) is not one by bytes;
    /// the weight counts the decoded size.
    #[test]
    fn a_batch_of_tiny_results_weighs_what_it_decodes_to_not_its_wire_size() {
        let result = ChunkResult {
            job_id: JobId([1; 16]),
            chunk: 0,
            attempt: 0,
            outcome: WireOutcome::Ok,
            output_hash: BlobHash([0; 32]),
            output: None,
            fuel_used: 0,
            exec_micros: 0,
            signature: Vec::new(),
        };
        let one = codec::encode(
            &ResultBatch {
                results: vec![result.clone()],
            },
            MAX_RESULT_BYTES,
        )
        .expect("encodes")
        .len();
        let n = MAX_RESULT_BYTES / one;
        let batch = ResultBatch {
            results: vec![result; n],
        };
        let wire = codec::encode(&batch, usize::MAX).expect("encodes").len();
        let decoded: ResultBatch = codec::decode(
            &codec::encode(&batch, usize::MAX).expect("encodes"),
            RESULT_PROTOCOL,
        )
        .expect("decodes");
        let weight = decoded.weight();
        assert!(wire <= MAX_RESULT_BYTES + one, "{wire}");
        assert!(
            weight >= 3 * wire,
            "decoded {weight} bytes from {wire} on the wire: the ratio the byte bound is for"
        );
        assert!(
            weight >= n * size_of::<ChunkResult>(),
            "the weight is at least the rows' size"
        );
        // So the budget holds at most a few such batches.
        assert!(MAX_HELD_BYTES / weight < 16);
    }
}
