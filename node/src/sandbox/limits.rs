//! The limits a call runs under, and the memory cap that enforces one of them.
//!
//! [`Limits`] travels with every assignment (later on the wire), so its fields are
//! plain numbers. [`exec::new_store`](super::exec) installs all of them in one place.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::gate::Gate;

pub use crate::types::Limits;

/// Lets other threads steer a running call: stop it (cancel), and make it wait at
/// the worker's [`Gate`] (pause, throttle). Checked between two fuel slices of the call.
#[derive(Debug, Default)]
pub struct ChunkControl {
    cancelled: AtomicBool,
    withdrawn: AtomicBool,
    /// When the call started waiting at the gate (ms since `born`), 0 when not.
    paused_at: AtomicU64,
    born: OnceInstant,
    gate: Option<Arc<Gate>>,
}

/// An `Instant` with a `Default` (now), so `ChunkControl` stays `Default`.
#[derive(Debug)]
struct OnceInstant(Instant);

impl Default for OnceInstant {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl ChunkControl {
    /// A control whose call waits at `gate` (paused or throttled by the worker).
    pub fn gated(gate: Arc<Gate>) -> Self {
        Self {
            gate: Some(gate),
            ..Self::default()
        }
    }

    /// The gate the call waits at, if any.
    pub fn gate(&self) -> Option<&Arc<Gate>> {
        self.gate.as_ref()
    }

    /// Asks the call to stop; it ends with `Outcome::Cancelled` at the end of its
    /// current fuel slice (a few milliseconds).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Stops the call because it was paused too long here: its submitter is told to
    /// run it elsewhere.
    pub fn withdraw(&self) {
        self.withdrawn.store(true, Ordering::Relaxed);
        self.cancel();
    }

    /// Whether [`withdraw`](Self::withdraw) was called.
    pub fn is_withdrawn(&self) -> bool {
        self.withdrawn.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_paused(&self, paused: bool) {
        let at = if paused {
            (self.born.0.elapsed().as_millis() as u64).max(1)
        } else {
            0
        };
        self.paused_at.store(at, Ordering::Relaxed);
    }

    /// How long the call has been waiting at the gate, when it is.
    pub fn paused_for(&self) -> Option<Duration> {
        match self.paused_at.load(Ordering::Relaxed) {
            0 => None,
            at => Some(
                self.born
                    .0
                    .elapsed()
                    .saturating_sub(Duration::from_millis(at)),
            ),
        }
    }
}

/// Caps linear memory and tables; remembers whether the cap was hit so a trap that
/// follows (a Rust guest aborts when allocation fails) is classified `MemoryLimit`.
#[derive(Debug)]
pub(crate) struct MemoryCap {
    pub(crate) max_bytes: usize,
    pub(crate) hit: bool,
}

/// Tables are small in real jobs; this bounds what a hostile module can make us allocate.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 1 << 16;

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }

    fn memories(&self) -> usize {
        1
    }
}
