//! The limits a call runs under, and the memory cap that enforces one of them.
//!
//! [`Limits`] travels with every assignment (later on the wire), so its fields are
//! plain numbers. [`exec::new_store`](super::exec) installs all of them in one place.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::gate::Gate;

use serde::{Deserialize, Serialize};

/// Everything a call into a module is limited by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Fuel (roughly, wasm instructions) the call may burn. Deterministic: the same
    /// module and input stop at the same point on every peer.
    pub fuel: u64,
    /// Largest linear memory the module may have, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock guard: a call still running after this is stopped (`Timeout`).
    /// Not deterministic, so it only guards against runaways; fuel decides.
    pub timeout: Duration,
    /// Largest output the call may return, in bytes.
    pub max_output_bytes: u64,
}

impl Limits {
    /// Defaults for one chunk (`run`): 100 G fuel, 256 MiB, 10 min, 16 MiB out.
    pub const CHUNK: Limits = Limits {
        fuel: 100_000_000_000,
        memory_bytes: 256 * 1024 * 1024,
        timeout: Duration::from_secs(600),
        max_output_bytes: 16 * 1024 * 1024,
    };

    /// Defaults for `split` and `merge` on the submitter: more memory and output,
    /// since they see the whole job.
    pub const SUBMITTER: Limits = Limits {
        fuel: 200_000_000_000,
        memory_bytes: 1024 * 1024 * 1024,
        timeout: Duration::from_secs(600),
        max_output_bytes: 256 * 1024 * 1024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::CHUNK
    }
}

/// Lets other threads steer a running call: stop it (cancel), and make it wait at
/// the worker's [`Gate`] (pause, throttle). Checked at every epoch tick.
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

    /// Asks the call to stop; it ends with `Outcome::Cancelled` within a tick or two.
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
const MAX_TABLE_ELEMENTS: usize = 1 << 16;

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
