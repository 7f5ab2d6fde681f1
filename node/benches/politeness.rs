//! Criterion bench of the worker's CPU monitor (`worker::politeness::CpuMonitor`):
//! `cargo bench -p peergrid-node --bench politeness`.
//!
//! - `cpu_monitor/sample`: the cost of one sample (it reads the OS's process table
//!   every sample interval).
//! - The figure the monitor exists for, printed once before the timing: while one
//!   thread of this process spins for half a second, the share of the machine the
//!   monitor gives to peergrid (this process is named like peergrid for it) and to
//!   other programs. On an idle machine with N cores, peergrid's share is near
//!   100 / N % and other programs' near 0 %. A figure, not a test: it depends on the
//!   machine and what else runs on it.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use peergrid_node::worker::politeness::CpuMonitor;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// What the monitor sees while one thread spins.
fn spinning_thread_share() {
    let Some(mut monitor) = CpuMonitor::new() else {
        eprintln!("cpu_monitor: the OS gives no CPU figures here");
        return;
    };
    let _ = monitor.sample();
    let stop = Arc::new(AtomicBool::new(false));
    let spinning = stop.clone();
    let spinner = std::thread::spawn(move || {
        while !spinning.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let sample = monitor.sample();
    stop.store(true, Ordering::Relaxed);
    let _ = spinner.join();
    match sample {
        Some(s) => eprintln!(
            "cpu_monitor: one spinning thread on {} cores: peergrid {:.1} %, other programs {:.1} %",
            monitor.cores(),
            s.peergrid_percent,
            s.other_percent
        ),
        None => eprintln!("cpu_monitor: no second sample"),
    }
}

fn cpu_monitor(c: &mut Criterion) {
    spinning_thread_share();
    let Some(mut monitor) = CpuMonitor::new() else {
        return;
    };
    let _ = monitor.sample();
    c.bench_function("cpu_monitor/sample", |b| {
        b.iter(|| black_box(monitor.sample()))
    });
}

criterion_group! {
    name = benches;
    config = config();
    targets = cpu_monitor
}
criterion_main!(benches);
