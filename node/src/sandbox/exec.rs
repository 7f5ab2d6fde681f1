//! Running one entry point in a fresh `Store`: limits, the ABI v1 call sequence,
//! the `peergrid.log` host call, the epoch ticker, and classification of how it ended.
//!
//! The call sequence (see `docs/ABI.md`): `peergrid_alloc(len)` returns a buffer the
//! host fills with the input; the entry point takes `(ptr, len)` and returns a pointer
//! to a 12-byte descriptor `[status, ptr, len]` (little-endian u32s); status 0 means the
//! bytes are the output, 1 that they are the job's error message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::{Caller, Engine, Extern, Linker, Store, UpdateDeadline};

use super::gate::Ticket;
use super::limits::{ChunkControl, Limits, MemoryCap};
use super::outcome::{Execution, Outcome, TrapKind};
use super::{Inner, JobModule};

/// One epoch tick. The wall-clock guard and cancellation act within a tick or two.
const TICK: Duration = Duration::from_millis(10);
/// Longest log line kept, in bytes; longer lines are cut.
const MAX_LOG_LINE: usize = 1024;
/// Most log lines kept per call; later ones are counted and dropped.
const MAX_LOG_LINES: usize = 64;
/// Longest panic or job error message kept, in bytes.
const MAX_MESSAGE: usize = 4096;

/// Which ABI v1 entry point to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `peergrid_run`: one chunk.
    Run,
    /// `peergrid_split`: params to chunk inputs.
    Split,
    /// `peergrid_merge`: chunk outputs to the result.
    Merge,
}

impl Entry {
    /// The export's name.
    pub fn export_name(self) -> &'static str {
        match self {
            Self::Run => "peergrid_run",
            Self::Split => "peergrid_split",
            Self::Merge => "peergrid_merge",
        }
    }

    fn present_in(self, module: &JobModule) -> bool {
        match self {
            Self::Run => true,
            Self::Split => module.has_split,
            Self::Merge => module.has_merge,
        }
    }
}

/// Why the epoch callback stopped a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Timeout,
    Cancelled,
}

/// The per-call state a `Store` carries.
pub(crate) struct HostState {
    memory: MemoryCap,
    logs: Vec<String>,
    dropped_logs: usize,
    panic: Option<String>,
    deadline: Instant,
    control: Option<Arc<ChunkControl>>,
    /// The call's place at the worker's gate (pause, throttle), when it has one.
    ticket: Option<Ticket>,
    stop: Option<Stop>,
}

impl HostState {
    fn record_log(&mut self, level: u32, line: String) {
        if level == peergrid_sdk::level::PANIC {
            self.panic = Some(truncate(line, MAX_MESSAGE));
        } else if self.logs.len() < MAX_LOG_LINES {
            self.logs.push(line);
        } else {
            self.dropped_logs += 1;
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
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

/// Builds the linker with the one host call a module may import: `peergrid.log`.
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
    Ok(linker)
}

/// A fresh store with every limit installed: fuel, memory and table caps, the
/// wall-clock guard, cancellation and the worker's gate (all three through the epoch
/// callback). Time spent paused or throttled at the gate does not count towards
/// the wall-clock guard: the deadline moves on by it.
fn new_store(
    inner: &Inner,
    limits: &Limits,
    control: Option<Arc<ChunkControl>>,
    ticket: Option<Ticket>,
) -> wasmtime::Result<Store<HostState>> {
    let now = Instant::now();
    let state = HostState {
        memory: MemoryCap {
            max_bytes: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
            hit: false,
        },
        logs: Vec::new(),
        dropped_logs: 0,
        panic: None,
        deadline: now
            .checked_add(limits.timeout)
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600)),
        control,
        ticket,
        stop: None,
    };
    let mut store = Store::new(&inner.engine, state);
    store.limiter(|state| &mut state.memory);
    if inner.fuel {
        store.set_fuel(limits.fuel)?;
    }
    if !inner.epochs {
        return Ok(store);
    }
    store.epoch_deadline_callback(|mut ctx| {
        let state = ctx.data_mut();
        if state.control.as_ref().is_some_and(|c| c.is_cancelled()) {
            state.stop = Some(Stop::Cancelled);
            return Ok(UpdateDeadline::Interrupt);
        }
        if let Some(ticket) = state.ticket.as_mut() {
            match ticket.checkpoint(state.control.as_deref()) {
                Some(idle) => state.deadline += idle,
                None => {
                    state.stop = Some(Stop::Cancelled);
                    return Ok(UpdateDeadline::Interrupt);
                }
            }
        }
        if Instant::now() >= state.deadline {
            state.stop = Some(Stop::Timeout);
            return Ok(UpdateDeadline::Interrupt);
        }
        Ok(UpdateDeadline::Continue(1))
    });
    store.set_epoch_deadline(1);
    Ok(store)
}

/// Runs one entry point and classifies how it ended.
pub(crate) fn call(
    inner: &Inner,
    module: &JobModule,
    entry: Entry,
    input: &[u8],
    limits: &Limits,
    control: Option<Arc<ChunkControl>>,
) -> Execution {
    let started = Instant::now();
    if !entry.present_in(module) {
        return Execution {
            outcome: Outcome::Invalid(format!(
                "the module does not export {}",
                entry.export_name()
            )),
            fuel_used: 0,
            elapsed: started.elapsed(),
            logs: Vec::new(),
        };
    }
    // Wait for a place at the worker's gate before anything runs (a suspended
    // worker starts nothing).
    let ticket = match control.as_ref().and_then(|c| c.gate().cloned()) {
        Some(gate) => match gate.enter(control.as_deref()) {
            Some((ticket, _)) => Some(ticket),
            None => {
                return Execution {
                    outcome: Outcome::Cancelled,
                    fuel_used: 0,
                    elapsed: started.elapsed(),
                    logs: Vec::new(),
                };
            }
        },
        None => None,
    };
    let _ticking = inner.ticker.enter();
    let mut store = match new_store(inner, limits, control, ticket) {
        Ok(store) => store,
        Err(e) => {
            return Execution {
                outcome: Outcome::Invalid(format!("could not set up the call: {e}")),
                fuel_used: 0,
                elapsed: started.elapsed(),
                logs: Vec::new(),
            };
        }
    };
    let result = invoke(&inner.linker, &mut store, module, entry, input, limits);
    let fuel_used = if inner.fuel {
        limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0))
    } else {
        0
    };
    let mut state = store.into_data();
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(error) => classify(&error, &state),
    };
    if state.dropped_logs > 0 {
        state
            .logs
            .push(format!("({} more log lines dropped)", state.dropped_logs));
    }
    Execution {
        outcome,
        fuel_used,
        elapsed: started.elapsed(),
        logs: state.logs,
    }
}

fn abi_violation(message: impl Into<String>) -> Outcome {
    Outcome::Trap {
        kind: TrapKind::AbiViolation,
        message: message.into(),
    }
}

/// The ABI v1 call sequence. `Err` is a trap or instantiation error, classified by
/// the caller; ABI violations are returned as outcomes directly.
fn invoke(
    linker: &Linker<HostState>,
    store: &mut Store<HostState>,
    module: &JobModule,
    entry: Entry,
    input: &[u8],
    limits: &Limits,
) -> wasmtime::Result<Outcome> {
    let Ok(len) = u32::try_from(input.len()) else {
        return Ok(Outcome::Invalid(format!(
            "input of {} bytes is larger than a 32-bit module can address",
            input.len()
        )));
    };
    let instance = linker.instantiate(&mut *store, &module.module)?;
    let Some(memory) = instance.get_memory(&mut *store, "memory") else {
        return Ok(abi_violation("the module exports no memory"));
    };
    let alloc = instance.get_typed_func::<u32, u32>(&mut *store, "peergrid_alloc")?;
    let func = instance.get_typed_func::<(u32, u32), u32>(&mut *store, entry.export_name())?;

    let ptr = alloc.call(&mut *store, len)?;
    if memory.write(&mut *store, ptr as usize, input).is_err() {
        return Ok(abi_violation(format!(
            "peergrid_alloc({len}) returned {ptr:#x}, outside the module's memory"
        )));
    }
    let descriptor = func.call(&mut *store, (ptr, len))?;
    let mut words = [0u8; 12];
    if memory
        .read(&*store, descriptor as usize, &mut words)
        .is_err()
    {
        return Ok(abi_violation(format!(
            "{} returned descriptor {descriptor:#x}, outside the module's memory",
            entry.export_name()
        )));
    }
    let word = |i: usize| u32::from_le_bytes([words[i], words[i + 1], words[i + 2], words[i + 3]]);
    let (status, out_ptr, out_len) = (word(0), word(4), word(8));
    if u64::from(out_len) > limits.max_output_bytes {
        return Ok(Outcome::Trap {
            kind: TrapKind::OutputTooLarge,
            message: format!(
                "{} returned {out_len} bytes, over the limit of {} bytes",
                entry.export_name(),
                limits.max_output_bytes
            ),
        });
    }
    let mut out = vec![0u8; out_len as usize];
    if memory.read(&*store, out_ptr as usize, &mut out).is_err() {
        return Ok(abi_violation(format!(
            "{} returned {out_len} bytes at {out_ptr:#x}, outside the module's memory",
            entry.export_name()
        )));
    }
    Ok(match status {
        0 => Outcome::Ok(out),
        1 => Outcome::Trap {
            kind: TrapKind::JobError,
            message: truncate(String::from_utf8_lossy(&out).into_owned(), MAX_MESSAGE),
        },
        other => abi_violation(format!(
            "{} returned status word {other}; ABI v1 knows 0 (ok) and 1 (error)",
            entry.export_name()
        )),
    })
}

/// Turns a wasmtime error into an outcome. Only deterministic facts go into the
/// message: the trap's own description or the guest's panic message.
fn classify(error: &wasmtime::Error, state: &HostState) -> Outcome {
    if state.memory.hit {
        return Outcome::MemoryLimit;
    }
    let Some(trap) = error.downcast_ref::<wasmtime::Trap>().copied() else {
        return Outcome::Invalid(format!("{error}"));
    };
    match trap {
        wasmtime::Trap::OutOfFuel => Outcome::OutOfFuel,
        wasmtime::Trap::Interrupt => match state.stop {
            Some(Stop::Cancelled) => Outcome::Cancelled,
            _ => Outcome::Timeout,
        },
        wasmtime::Trap::UnreachableCodeReached if state.panic.is_some() => Outcome::Trap {
            kind: TrapKind::Panic,
            message: state.panic.clone().unwrap_or_default(),
        },
        other => Outcome::Trap {
            kind: TrapKind::from_wasmtime(other),
            message: other.to_string(),
        },
    }
}

/// Increments the engine's epoch every [`TICK`] while at least one call runs, and
/// sleeps (parked) while none does, so an idle node costs no wake-ups.
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
    pub(crate) fn enter(&self) -> TickGuard<'_> {
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
pub(crate) struct TickGuard<'a> {
    ticker: &'a Ticker,
}

impl Drop for TickGuard<'_> {
    fn drop(&mut self) {
        self.ticker.shared.active.fetch_sub(1, Ordering::AcqRel);
    }
}
