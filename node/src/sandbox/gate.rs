//! The run gate: how many chunk calls may run at once right now, and at what duty
//! cycle. It is how a worker steps aside for the volunteer without killing work.
//!
//! The worker's politeness loop (`worker::politeness`) sets the gate
//! ([`Gate::set`]): `allowed` calls may run (0 suspends them all) and each runs
//! `duty_percent` of the wall time. Chunk calls meet the gate on their own (wasm)
//! thread: once before the module runs ([`Gate::enter`]) and between two fuel slices
//! ([`Ticket::checkpoint`], from the driver in `exec.rs`). A call over the
//! allowance gives up its place and blocks on a condition variable until there is
//! room again (re-checking cancellation), so its state stays in memory and it goes on
//! where it stopped; a throttled call sleeps after each slice so that run time / wall
//! time ≈ the duty cycle. The time a call spends blocked or sleeping is returned to
//! the caller, which extends the call's wall-clock deadline by it.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::limits::ChunkControl;

/// Longest wait between two looks at cancellation while blocked.
const RECHECK: Duration = Duration::from_millis(100);
/// Longest single throttling sleep.
const MAX_NAP: Duration = Duration::from_secs(1);

/// Shared by the worker and every chunk call it starts.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<GateState>,
    wake: Condvar,
}

#[derive(Debug, Clone, Copy)]
struct GateState {
    allowed: u32,
    duty_percent: u8,
    running: u32,
    waiting: u32,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new(u32::MAX, 100)
    }
}

impl Gate {
    /// A gate letting `allowed` calls run at `duty_percent` % of the time.
    pub fn new(allowed: u32, duty_percent: u8) -> Self {
        Self {
            state: Mutex::new(GateState {
                allowed,
                duty_percent: duty_percent.clamp(1, 100),
                running: 0,
                waiting: 0,
            }),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets `allowed` calls run, each `duty_percent` % (1–100) of the time. Calls
    /// over the allowance block at the end of their slice; blocked ones go on when there is
    /// room.
    pub fn set(&self, allowed: u32, duty_percent: u8) {
        let mut s = self.lock();
        s.allowed = allowed;
        s.duty_percent = duty_percent.clamp(1, 100);
        drop(s);
        self.wake.notify_all();
    }

    /// Calls running now (not blocked).
    pub fn running(&self) -> u32 {
        self.lock().running
    }

    /// Calls blocked at the gate now (paused, or waiting for a place).
    pub fn waiting(&self) -> u32 {
        self.lock().waiting
    }

    /// Calls allowed to run now.
    pub fn allowed(&self) -> u32 {
        self.lock().allowed
    }

    /// Takes a place for a call, blocking until there is one. `None` when the call
    /// was cancelled while waiting. Also returns how long it waited.
    pub fn enter(
        self: &std::sync::Arc<Self>,
        control: Option<&ChunkControl>,
    ) -> Option<(Ticket, Duration)> {
        let mut ticket = Ticket {
            gate: self.clone(),
            holding: false,
            awake_since: Instant::now(),
        };
        let waited = ticket.take_place(control)?;
        Some((ticket, waited))
    }
}

/// A call's place at the gate; given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    gate: std::sync::Arc<Gate>,
    holding: bool,
    awake_since: Instant,
}

impl Ticket {
    /// Blocks until the call may run; `None` if it was cancelled meanwhile.
    fn take_place(&mut self, control: Option<&ChunkControl>) -> Option<Duration> {
        let gate = self.gate.clone();
        let mut s = gate.lock();
        if self.holding && s.running <= s.allowed {
            return Some(Duration::ZERO);
        }
        if self.holding {
            // Over the allowance: give the place up and wait like the others.
            s.running -= 1;
            self.holding = false;
            gate.wake.notify_all();
        }
        if s.running < s.allowed {
            s.running += 1;
            self.holding = true;
            return Some(Duration::ZERO);
        }
        let started = Instant::now();
        s.waiting += 1;
        if let Some(c) = control {
            c.mark_paused(true);
        }
        let result = loop {
            if control.is_some_and(|c| c.is_cancelled()) {
                break None;
            }
            if s.running < s.allowed {
                s.running += 1;
                self.holding = true;
                break Some(started.elapsed());
            }
            s = match gate.wake.wait_timeout(s, RECHECK) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        };
        s.waiting -= 1;
        if let Some(c) = control {
            c.mark_paused(false);
        }
        self.awake_since = Instant::now();
        result
    }

    /// Called between two fuel slices: pauses while the call is over the allowance and
    /// throttles it to the duty cycle. Returns the time spent not running, or `None`
    /// when the call was cancelled meanwhile.
    pub fn checkpoint(&mut self, control: Option<&ChunkControl>) -> Option<Duration> {
        let mut idle = self.take_place(control)?;
        let duty = u32::from(self.gate.lock().duty_percent);
        if duty < 100 {
            let ran = self.awake_since.elapsed();
            let nap = (ran * (100 - duty) / duty).min(MAX_NAP);
            let started = Instant::now();
            let gate = self.gate.clone();
            let mut s = gate.lock();
            // Sleep on the condition variable so a change of settings wakes it.
            while started.elapsed() < nap && s.duty_percent < 100 {
                if control.is_some_and(|c| c.is_cancelled()) {
                    return None;
                }
                let left = nap.saturating_sub(started.elapsed());
                s = match gate.wake.wait_timeout(s, left) {
                    Ok((guard, _)) => guard,
                    Err(p) => p.into_inner().0,
                };
            }
            drop(s);
            idle += started.elapsed();
            self.awake_since = Instant::now();
        }
        Some(idle)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.holding {
            let mut s = self.gate.lock();
            s.running = s.running.saturating_sub(1);
            drop(s);
            self.gate.wake.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_closed_gate_blocks_until_opened_and_counts_the_wait() {
        let gate = Arc::new(Gate::new(0, 100));
        let control = Arc::new(ChunkControl::default());
        let (g, c) = (gate.clone(), control.clone());
        let waiter = std::thread::spawn(move || g.enter(Some(&c)).map(|(_, d)| d));
        let deadline = Instant::now() + Duration::from_secs(10);
        while gate.waiting() == 0 {
            assert!(Instant::now() < deadline, "the call never waited");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(control.paused_for().is_some(), "the chunk shows as paused");
        std::thread::sleep(Duration::from_millis(50));
        gate.set(1, 100);
        let waited = waiter.join().expect("joins").expect("not cancelled");
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert_eq!(gate.waiting(), 0);
        assert!(control.paused_for().is_none());
    }

    #[test]
    fn a_waiting_call_can_be_cancelled() {
        let gate = Arc::new(Gate::new(0, 100));
        let control = Arc::new(ChunkControl::default());
        let (g, c) = (gate.clone(), control.clone());
        let waiter = std::thread::spawn(move || g.enter(Some(&c)).is_none());
        while gate.waiting() == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        control.cancel();
        assert!(waiter.join().expect("joins"), "cancelled while waiting");
    }

    #[test]
    fn calls_over_the_allowance_give_up_their_place() {
        let gate = Arc::new(Gate::new(2, 100));
        let (mut a, _) = gate.enter(None).expect("a place");
        let (b, _) = gate.enter(None).expect("a place");
        assert_eq!(gate.running(), 2);
        gate.set(1, 100);
        drop(b);
        // One running, allowance one: the checkpoint keeps its place.
        assert_eq!(a.checkpoint(None), Some(Duration::ZERO));
        assert_eq!(gate.running(), 1);
        drop(a);
        assert_eq!(gate.running(), 0);
    }

    #[test]
    fn a_throttled_call_naps_in_proportion_to_its_run() {
        let gate = Arc::new(Gate::new(1, 50));
        let (mut t, _) = gate.enter(None).expect("a place");
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {}
        let idle = t.checkpoint(None).expect("not cancelled");
        // Ran ≥ 20 ms at 50 %: naps about as long (never less).
        assert!(idle >= Duration::from_millis(20), "{idle:?}");
    }
}
