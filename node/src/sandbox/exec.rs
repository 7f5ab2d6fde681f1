//! The per-call path every entry point takes: a fresh `Store` with every limit
//! installed ([`new_store`]), the module run in fuel slices with the wall-clock guard,
//! cancellation and the worker's gate checked between slices ([`run_guarded`]), and
//! the end classified into one [`Outcome`] ([`classify`]). The ABI v1 call sequence
//! (`abi_v1.rs`) is one body run on this path; the `wasi-v1` sequence will be another.
//!
//! # One interruption mechanism
//! Fuel decides outcomes, and the same fuel counter carries the wall-clock guard,
//! pause and cancel: the store's fuel is handed to the guest in slices of
//! [`SandboxConfig::fuel_slice`](super::SandboxConfig) (wasmtime's
//! `fuel_async_yield_interval`). When a slice is used up the guest *suspends* (wasmtime
//! runs every call on its own fiber stack), this thread checks the guard, cancellation
//! and the gate ([`Watch::between_slices`]), and resumes it with the next slice, or
//! drops it (which unwinds the guest). Calls stay synchronous: the future is polled on
//! the calling thread with a no-op waker ([`drive`]); nothing here needs an async
//! runtime. Slicing does not change where a call stops: the total fuel is the
//! limit, and the fuel used is the same whatever the slice size (tested in
//! `tests/all/examples.rs` with two slice sizes).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::{Caller, Engine, Extern, Linker, Store};

use super::gate::Ticket;
use super::limits::{ChunkControl, Limits, MemoryCap};
use super::outcome::{Execution, Outcome, TrapKind};
use super::{Guard, Inner};

/// One epoch tick, for engines guarded by epochs (measured by `bench sandbox` only).
const TICK: Duration = Duration::from_millis(10);
/// Longest log line kept, in bytes; longer lines are cut.
const MAX_LOG_LINE: usize = 1024;
/// Most log lines kept per call; later ones are counted and dropped.
const MAX_LOG_LINES: usize = 64;
/// Longest panic or job error message kept, in bytes.
pub(crate) const MAX_MESSAGE: usize = 4096;

/// Why the driver stopped a call between two slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The wall-clock guard.
    Timeout,
    /// [`ChunkControl::cancel`], directly or while waiting at the gate.
    Cancelled,
}

/// The per-call state a `Store` carries: what the guest's host calls and the limiter
/// touch. (What the driver checks between slices lives in [`Watch`], outside the store.)
pub(crate) struct HostState {
    pub(crate) memory: MemoryCap,
    pub(crate) logs: Vec<String>,
    pub(crate) dropped_logs: usize,
    pub(crate) panic: Option<String>,
    /// The call's WASI state, for a wasi-v1 call (see `wasi`).
    pub(crate) wasi: Option<Box<super::wasi::WasiState>>,
}

impl HostState {
    fn new(limits: &Limits) -> Self {
        Self {
            memory: MemoryCap {
                max_bytes: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
                hit: false,
            },
            logs: Vec::new(),
            dropped_logs: 0,
            panic: None,
            wasi: None,
        }
    }

    pub(crate) fn record_log(&mut self, level: u32, line: String) {
        if level == peergrid_sdk::level::PANIC {
            self.panic = Some(truncate(line, MAX_MESSAGE));
        } else if self.logs.len() < MAX_LOG_LINES {
            self.logs.push(line);
        } else {
            self.dropped_logs += 1;
        }
    }

    /// The call's log, with a note of the lines dropped.
    pub(crate) fn into_logs(mut self) -> Vec<String> {
        if self.dropped_logs > 0 {
            self.logs
                .push(format!("({} more log lines dropped)", self.dropped_logs));
        }
        self.logs
    }
}

pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Builds the linker with the one host call an ABI v1 module may import
/// (`peergrid.log`) and the deterministic `wasi_snapshot_preview1` functions of
/// wasi-v1. Validation decides which of them a module may use.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    linker.func_wrap(
        "peergrid",
        "log",
        |mut caller: Caller<'_, HostState>, level: u32, ptr: u32, len: u32| {
            let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                return;
            };
            let limit = if level == peergrid_sdk::level::PANIC {
                MAX_MESSAGE
            } else {
                MAX_LOG_LINE
            };
            let mut buf = vec![0u8; (len as usize).min(limit)];
            let line = match memory.read(&caller, ptr as usize, &mut buf) {
                Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
                Err(_) => "(log line outside the module's memory)".to_string(),
            };
            caller.data_mut().record_log(level, line);
        },
    )?;
    super::wasi::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// A fresh store with every limit installed: fuel (handed out in slices, see the
/// module doc), and the memory and table caps. The wall-clock guard, cancellation
/// and the gate are checked by the driver between slices ([`Watch`]).
fn new_store(inner: &Inner, limits: &Limits) -> wasmtime::Result<Store<HostState>> {
    let engine = &inner
        .built()
        .map_err(|e| wasmtime::Error::msg(e.to_string()))?
        .engine;
    let mut store = Store::new(engine, HostState::new(limits));
    store.limiter(|state| &mut state.memory);
    if inner.fuel {
        store.set_fuel(limits.fuel)?;
    }
    match inner.guard {
        Guard::FuelSlices if inner.fuel => {
            store.fuel_async_yield_interval(Some(inner.fuel_slice))?;
        }
        Guard::Epochs => {
            store.epoch_deadline_async_yield_and_update(1);
            store.set_epoch_deadline(1);
        }
        Guard::FuelSlices | Guard::Off => {}
    }
    Ok(store)
}

/// What the driver checks between two slices of a call.
struct Watch {
    deadline: Instant,
    control: Option<Arc<ChunkControl>>,
    /// The call's place at the worker's gate (pause, throttle), when it has one.
    ticket: Option<Ticket>,
}

impl Watch {
    /// Cancellation, then the gate (blocking while the call is paused or throttled;
    /// time spent there moves the deadline on, so it does not count towards the
    /// wall-clock guard), then the guard.
    fn between_slices(&mut self) -> Option<Stop> {
        if self.control.as_ref().is_some_and(|c| c.is_cancelled()) {
            return Some(Stop::Cancelled);
        }
        if let Some(ticket) = self.ticket.as_mut() {
            match ticket.checkpoint(self.control.as_deref()) {
                Some(idle) => self.deadline += idle,
                None => return Some(Stop::Cancelled),
            }
        }
        (Instant::now() >= self.deadline).then_some(Stop::Timeout)
    }
}

/// Polls `call` to completion on this thread, running `between` each time the guest
/// suspends (a fuel slice used up, or an epoch tick); stops early when it says so.
/// Dropping the future unwinds the suspended guest.
fn drive<F: Future>(call: F, mut between: impl FnMut() -> Option<Stop>) -> Result<F::Output, Stop> {
    let mut call = pin!(call);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = call.as_mut().poll(&mut cx) {
            return Ok(out);
        }
        if let Some(stop) = between() {
            return Err(stop);
        }
    }
}

/// How a guarded call ended, before classification.
pub(crate) struct Ran<R> {
    /// The body's result, or why the driver stopped it.
    pub(crate) result: Result<wasmtime::Result<R>, Stop>,
    /// Fuel used (0 when fuel is off).
    pub(crate) fuel_used: u64,
    /// The store's state: logs, panic message, whether the memory cap was hit.
    pub(crate) state: HostState,
}

/// The per-call path shared by every kind of entry (ABI v1 now, `wasi-v1` next):
/// waits for a place at the worker's gate and a slot of the instance pool, builds the
/// store, runs `body` on it in fuel slices with the checks between slices, and
/// returns what happened. `Err(Cancelled)` before anything ran means the call was
/// cancelled while waiting at the gate.
pub(crate) fn run_guarded<R>(
    inner: &Inner,
    limits: &Limits,
    control: Option<Arc<ChunkControl>>,
    body: impl AsyncFnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
) -> Result<Ran<R>, SetupError> {
    // Wait for a place at the worker's gate before anything runs (a suspended
    // worker starts nothing).
    let ticket = match control.as_ref().and_then(|c| c.gate().cloned()) {
        Some(gate) => match gate.enter(control.as_deref()) {
            Some((ticket, _)) => Some(ticket),
            None => return Err(SetupError::Cancelled),
        },
        None => None,
    };
    let _slot = inner.slots.acquire();
    let _ticking = inner.ticker().map(Ticker::enter);
    let mut store = new_store(inner, limits).map_err(SetupError::Store)?;
    let now = Instant::now();
    let mut watch = Watch {
        deadline: now
            .checked_add(limits.timeout)
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600)),
        control,
        ticket,
    };
    let result = drive(body(&mut store), || watch.between_slices());
    let fuel_used = if inner.fuel {
        limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0))
    } else {
        0
    };
    Ok(Ran {
        result,
        fuel_used,
        state: store.into_data(),
    })
}

/// Why a call could not start.
#[derive(Debug)]
pub(crate) enum SetupError {
    /// Cancelled while waiting at the gate.
    Cancelled,
    /// The store could not be set up.
    Store(wasmtime::Error),
}

impl SetupError {
    /// The outcome to report.
    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            Self::Cancelled => Outcome::Cancelled,
            Self::Store(e) => Outcome::Invalid(format!("could not set up the call: {e}")),
        }
    }
}

/// Turns a guarded call's end into an outcome. Only deterministic facts go into a
/// trap's message: the trap's own description or the guest's panic message.
pub(crate) fn classify<R>(
    result: Result<wasmtime::Result<R>, Stop>,
    state: &HostState,
) -> Result<R, Outcome> {
    let error = match result {
        Ok(Ok(r)) => return Ok(r),
        Err(Stop::Timeout) => return Err(Outcome::Timeout),
        Err(Stop::Cancelled) => return Err(Outcome::Cancelled),
        Ok(Err(error)) => error,
    };
    if state.memory.hit {
        return Err(Outcome::MemoryLimit);
    }
    let Some(trap) = error.downcast_ref::<wasmtime::Trap>().copied() else {
        return Err(Outcome::Invalid(format!("{error}")));
    };
    Err(match trap {
        wasmtime::Trap::OutOfFuel => Outcome::OutOfFuel,
        // Only an epoch-guarded engine without async yields interrupts; not used.
        wasmtime::Trap::Interrupt => Outcome::Timeout,
        wasmtime::Trap::UnreachableCodeReached if state.panic.is_some() => Outcome::Trap {
            kind: TrapKind::Panic,
            message: state.panic.clone().unwrap_or_default(),
        },
        other => Outcome::Trap {
            kind: TrapKind::from_wasmtime(other),
            message: other.to_string(),
        },
    })
}

/// Turns a guarded call into an [`Execution`], mapping a successful body's result
/// with `finish` (which may still fail the call, e.g. with an ABI violation).
pub(crate) fn execution<R>(
    started: Instant,
    ran: Result<Ran<R>, SetupError>,
    finish: impl FnOnce(R) -> Outcome,
) -> Execution {
    match ran {
        Err(e) => Execution {
            outcome: e.outcome(),
            fuel_used: 0,
            elapsed: started.elapsed(),
            logs: Vec::new(),
        },
        Ok(Ran {
            result,
            fuel_used,
            state,
        }) => {
            let outcome = match classify(result, &state) {
                Ok(r) => finish(r),
                Err(outcome) => outcome,
            };
            Execution {
                outcome,
                fuel_used,
                elapsed: started.elapsed(),
                logs: state.into_logs(),
            }
        }
    }
}

/// A counting semaphore over the instance pool's slots: a call waits for a free slot
/// rather than failing when more calls run at once than the pool holds.
#[derive(Debug)]
pub(crate) struct Slots {
    free: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

impl Slots {
    pub(crate) fn new(total: usize) -> Self {
        Self {
            free: std::sync::Mutex::new(total),
            freed: std::sync::Condvar::new(),
        }
    }

    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        SlotGuard { slots: self }
    }
}

struct SlotGuard<'a> {
    slots: &'a Slots,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.slots.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.slots.freed.notify_one();
    }
}

/// Increments the engine's epoch every [`TICK`] while at least one call runs, and
/// sleeps (parked) while none does. Only for engines guarded by epochs, which only
/// `bench sandbox` builds (to measure what epochs would cost).
pub(crate) struct Ticker {
    shared: Arc<TickerShared>,
    thread: Option<JoinHandle<()>>,
}

struct TickerShared {
    active: AtomicUsize,
    stop: AtomicBool,
}

impl Ticker {
    pub(crate) fn start(engine: Engine) -> Self {
        let shared = Arc::new(TickerShared {
            active: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("peergrid-epoch".into())
            .spawn(move || {
                while !thread_shared.stop.load(Ordering::Acquire) {
                    if thread_shared.active.load(Ordering::Acquire) == 0 {
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        Self { shared, thread }
    }

    /// Marks a call as running until the guard drops.
    fn enter(&self) -> TickGuard<'_> {
        self.shared.active.fetch_add(1, Ordering::AcqRel);
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
        TickGuard { ticker: self }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Keeps the ticker running while a call is in progress.
struct TickGuard<'a> {
    ticker: &'a Ticker,
}

impl Drop for TickGuard<'_> {
    fn drop(&mut self) {
        self.ticker.shared.active.fetch_sub(1, Ordering::AcqRel);
    }
}
