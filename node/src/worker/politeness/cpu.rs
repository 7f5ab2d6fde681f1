//! Measuring the machine: [`CpuMonitor`] reads from the OS (through `sysinfo`) what
//! share of the CPU *other* programs use, as a [`CpuSample`]: the machine's total use
//! minus that of every peergrid process.
//!
//! Owned by [`super::Politeness`], which samples it at every tick (on a blocking
//! thread: it reads the process table); the sample feeds [`super::decide()`].

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What other programs and peergrid use of the machine, in percent of all cores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CpuSample {
    /// Used by programs other than peergrid.
    pub other_percent: f32,
    /// Used by peergrid processes (this one and any others on the machine).
    pub peergrid_percent: f32,
}

/// Measures, from the OS, what share of the machine's CPU other programs use: the
/// machine's total use minus that of every peergrid process (this node's chunks,
/// and other peergrid nodes on the machine, which yield to each other anyway).
pub struct CpuMonitor {
    system: sysinfo::System,
    cores: u32,
    /// CPU time (ms) of each peergrid process at the last sample.
    peergrid: HashMap<sysinfo::Pid, u64>,
    last: Option<Instant>,
    own_name: std::ffi::OsString,
}

impl std::fmt::Debug for CpuMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuMonitor")
            .field("cores", &self.cores)
            .finish()
    }
}

impl CpuMonitor {
    /// A monitor; `None` when the OS gives no CPU figures (the worker then lends
    /// by its preferences alone).
    pub fn new() -> Option<Self> {
        let system = sysinfo::System::new().ok()?;
        let pid = sysinfo::get_current_pid().ok()?;
        let mut monitor = Self {
            cores: 1,
            system,
            peergrid: HashMap::new(),
            last: None,
            own_name: std::ffi::OsString::new(),
        };
        monitor.system.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::Some(&[pid]),
            true,
            sysinfo::ProcessRefreshKind::nothing(),
        );
        monitor.own_name = monitor.system.process(pid)?.name().to_owned();
        monitor.system.refresh_cpu_usage();
        monitor.cores = (monitor.system.cpus().len() as u32).max(1);
        Some(monitor)
    }

    /// Cores the OS reports.
    pub fn cores(&self) -> u32 {
        self.cores
    }

    /// Takes a sample: the use since the previous call (`None` the first time).
    pub fn sample(&mut self) -> Option<CpuSample> {
        self.system.refresh_cpu_usage();
        self.system.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::All,
            true,
            sysinfo::ProcessRefreshKind::nothing().with_cpu(),
        );
        let now = Instant::now();
        let mut times = HashMap::new();
        let mut used_ms = 0u64;
        for (pid, process) in self.system.processes() {
            if process.name() != self.own_name.as_os_str() {
                continue;
            }
            let t = process.accumulated_cpu_time();
            if let Some(before) = self.peergrid.get(pid) {
                used_ms += t.saturating_sub(*before);
            }
            times.insert(*pid, t);
        }
        self.peergrid = times;
        let last = self.last.replace(now)?;
        let wall_ms = now.duration_since(last).as_secs_f64() * 1000.0;
        if wall_ms < 1.0 {
            return None;
        }
        Some(CpuSample::split(
            self.system.global_cpu_usage(),
            used_ms,
            wall_ms,
            self.cores,
        ))
    }
}

impl CpuSample {
    /// The machine's `total_percent` use split into peergrid's and others': peergrid
    /// processes used `peergrid_ms` of CPU time in `wall_ms` on `cores` cores.
    pub fn split(total_percent: f32, peergrid_ms: u64, wall_ms: f64, cores: u32) -> Self {
        let total = total_percent.clamp(0.0, 100.0);
        let capacity_ms = wall_ms.max(1.0) * f64::from(cores.max(1));
        let peergrid = (peergrid_ms as f64 / capacity_ms * 100.0).clamp(0.0, 100.0) as f32;
        Self {
            other_percent: (total - peergrid).max(0.0),
            peergrid_percent: peergrid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_peergrid_uses_is_not_counted_as_other_programs_use() {
        // (machine total %, peergrid CPU ms, wall ms, cores) -> (other %, peergrid %)
        for (total, ms, wall, cores, other, ours) in [
            (0.0, 0, 1000.0, 4, 0.0, 0.0),
            // One core of four busy with a chunk: all of it peergrid's.
            (25.0, 1000, 1000.0, 4, 0.0, 25.0),
            // Another program on a second core.
            (50.0, 1000, 1000.0, 4, 25.0, 25.0),
            // Clock skew between the two figures never gives negative use.
            (10.0, 1000, 1000.0, 4, 0.0, 25.0),
            // Figures out of range are clamped.
            (150.0, 8000, 1000.0, 2, 0.0, 100.0),
            (-5.0, 0, 1000.0, 2, 0.0, 0.0),
        ] {
            let s = CpuSample::split(total, ms, wall, cores);
            assert_eq!(
                (s.other_percent, s.peergrid_percent),
                (other, ours),
                "total {total} %, {ms} ms in {wall} ms on {cores} cores"
            );
        }
    }

    #[test]
    fn the_monitor_gives_samples_in_range_from_the_second_call() {
        // What it measures depends on the machine (see the `politeness` bench for the
        // figures); here only that it works and stays in range.
        let Some(mut monitor) = CpuMonitor::new() else {
            return;
        };
        assert!(monitor.cores() >= 1);
        assert_eq!(monitor.sample(), None, "no sample before a baseline");
        // A sample needs a millisecond of wall time since the baseline: wait for it.
        let sample = loop {
            if let Some(s) = monitor.sample() {
                break s;
            }
            std::thread::yield_now();
        };
        assert!((0.0..=100.0).contains(&sample.other_percent), "{sample:?}");
        assert!(
            (0.0..=100.0).contains(&sample.peergrid_percent),
            "{sample:?}"
        );
    }
}
