//! The volunteer's `--cpu-time-percent`, measured: how much of a core a chunk really
//! uses when its gate runs it at a duty cycle of 50 %, against the same chunk at
//! 100 % in the same run. `cargo bench -p peergrid-node --bench duty_cycle`.
//!
//! The figure is the CPU time the OS charged to the calling thread per second of
//! wall time (`CLOCK_THREAD_CPUTIME_ID`), so it is what a volunteer's machine sees.
//! It is a benchmark, not a test: a loaded machine moves it, so it is printed, with
//! the ratio of the two runs, for a person (or a later session) to judge. The
//! process test `cpu_time_percent_50_is_in_force_and_work_goes_on` checks what can
//! be checked exactly (the preference in force, the job moving on).

use std::sync::Arc;
use std::time::{Duration, Instant};

use peergrid_node::sandbox::{ChunkControl, Entry, Gate, Limits, Sandbox, SandboxConfig};

/// CPU time charged to this thread so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the
    // kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs chunks of `primes` for about `window` under a gate at `duty` percent and
/// returns the share of a core used.
fn share(sandbox: &Sandbox, duty: u8, window: Duration) -> f64 {
    let example = peergrid_jobs::find("primes").expect("the primes example");
    let module = sandbox.load(example.wasm).expect("primes loads");
    let inputs = sandbox
        .split(
            &module,
            br#"{"limit":2000000000,"chunks":8}"#,
            &Limits::SUBMITTER,
        )
        .1
        .expect("primes splits");
    let gate = Arc::new(Gate::new(1, duty));
    let (cpu, wall) = (thread_cpu(), Instant::now());
    let mut calls = 0usize;
    while wall.elapsed() < window {
        let control = Arc::new(ChunkControl::gated(gate.clone()));
        let input = &inputs[calls % inputs.len()];
        let exec = sandbox.call(&module, Entry::Run, input, &Limits::CHUNK, Some(control));
        assert!(
            matches!(exec.outcome, peergrid_node::sandbox::Outcome::Ok(_)),
            "a primes chunk failed: {}",
            exec.outcome
        );
        calls += 1;
    }
    (thread_cpu() - cpu).as_secs_f64() / wall.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and
    // only wants to know the bench builds and starts.
    let quick = !std::env::args().any(|a| a == "--bench");
    let window = if quick {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(5)
    };
    let sandbox = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    let full = share(&sandbox, 100, window);
    let half = share(&sandbox, 50, window);
    println!(
        "duty_cycle: CPU time per wall second of one chunk thread: {half:.3} at \
         --cpu-time-percent 50, {full:.3} at 100 (ratio {:.3}; 0.5 is the promise)",
        half / full
    );
}
