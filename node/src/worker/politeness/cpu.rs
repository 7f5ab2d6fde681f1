//! Measuring the machine: [`CpuMonitor`] reads from the OS what share of the CPU
//! *other* programs use, as a [`CpuSample`], in O(1) per sample: the machine's
//! counters and this process's, never the process table.
//!
//! On Linux it reads two files per sample: `/proc/stat` (the machine's busy, idle
//! and *nice* time) and `/proc/self/stat` (this process's CPU time). Chunks run at
//! nice 19, so the time of every niced program (this node's chunks, other peergrid
//! nodes' chunks, other background work that yields anyway) is in the *nice*
//! counter and does not count as other programs' use; neither does this process's
//! own un-niced time. Elsewhere it asks `sysinfo` for the machine's use and this
//! process's only.
//!
//! Owned by [`super::Politeness`], which samples it at every tick (on a blocking
//! thread); the sample feeds [`super::decide()`].

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What other programs and this node use of the machine, in percent of all cores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CpuSample {
    /// Used by programs other than peergrid (niced programs excluded).
    pub other_percent: f32,
    /// Used by this node's process (its chunks included).
    pub peergrid_percent: f32,
}

/// The machine's CPU counters (`/proc/stat`'s first line), in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MachineTimes {
    /// Busy time of programs that are not niced (user, system, irq, softirq, steal).
    pub busy: u64,
    /// Busy time of niced programs (user mode).
    pub nice: u64,
    /// Idle time (idle, iowait).
    pub idle: u64,
}

impl MachineTimes {
    /// Parses `/proc/stat`'s aggregate `cpu` line.
    pub fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        if f.len() < 4 {
            return None;
        }
        Some(Self {
            // user, system, irq, softirq, steal (guest time is inside user).
            busy: at(0) + at(2) + at(5) + at(6) + at(7),
            nice: at(1),
            idle: at(3) + at(4),
        })
    }

    fn total(&self) -> u64 {
        self.busy + self.nice + self.idle
    }
}

/// Parses this process's CPU time (utime + stime, clock ticks) from `/proc/self/stat`.
pub fn parse_process_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line: 11 and 12 after the state (field 3).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

impl CpuSample {
    /// The sample between two readings of the machine's and this process's counters
    /// (all in clock ticks); `None` when no time passed.
    pub fn between(before: (MachineTimes, u64), after: (MachineTimes, u64)) -> Option<Self> {
        let (m0, p0) = before;
        let (m1, p1) = after;
        let total = m1.total().saturating_sub(m0.total());
        if total == 0 {
            return None;
        }
        let pct = |ticks: u64| (ticks as f64 / total as f64 * 100.0).clamp(0.0, 100.0);
        let busy = m1.busy.saturating_sub(m0.busy);
        let nice = m1.nice.saturating_sub(m0.nice);
        let own = p1.saturating_sub(p0);
        // This process's un-niced time (and its chunks' system time) is in `busy`;
        // its chunks' user time is in `nice`. What it used beyond the nice time is
        // its own share of `busy`.
        let other = busy.saturating_sub(own.saturating_sub(nice));
        Some(Self {
            other_percent: pct(other) as f32,
            peergrid_percent: pct(own) as f32,
        })
    }
}

/// How the monitor reads the counters.
enum Source {
    /// `/proc/stat` and `/proc/self/stat` (Linux).
    Proc { last: Option<(MachineTimes, u64)> },
    /// `sysinfo`: the machine's use and this process's only.
    Sysinfo {
        system: Box<sysinfo::System>,
        pid: sysinfo::Pid,
        last: Option<(Instant, u64)>,
    },
}

/// Measures, from the OS, what share of the machine's CPU other programs use, in
/// O(1) per sample (see the module doc).
pub struct CpuMonitor {
    source: Source,
    cores: u32,
}

impl std::fmt::Debug for CpuMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuMonitor")
            .field("cores", &self.cores)
            .finish()
    }
}

fn read_proc() -> Option<(MachineTimes, u64)> {
    let machine = MachineTimes::parse(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let own = parse_process_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    Some((machine, own))
}

impl CpuMonitor {
    /// A monitor; `None` when the OS gives no CPU figures (the worker then lends
    /// by its preferences alone).
    pub fn new() -> Option<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        if read_proc().is_some() {
            return Some(Self {
                source: Source::Proc { last: None },
                cores,
            });
        }
        let mut system = sysinfo::System::new().ok()?;
        let pid = sysinfo::get_current_pid().ok()?;
        system.refresh_cpu_usage();
        let cores = (system.cpus().len() as u32).max(1);
        Some(Self {
            source: Source::Sysinfo {
                system: Box::new(system),
                pid,
                last: None,
            },
            cores,
        })
    }

    /// Cores the OS reports.
    pub fn cores(&self) -> u32 {
        self.cores
    }

    /// Takes a sample: the use since the previous call (`None` the first time).
    pub fn sample(&mut self) -> Option<CpuSample> {
        match &mut self.source {
            Source::Proc { last } => {
                let now = read_proc()?;
                let before = last.replace(now)?;
                CpuSample::between(before, now)
            }
            Source::Sysinfo { system, pid, last } => {
                system.refresh_cpu_usage();
                system.refresh_processes_specifics(
                    sysinfo::ProcessesToUpdate::Some(&[*pid]),
                    true,
                    sysinfo::ProcessRefreshKind::nothing().with_cpu(),
                );
                let now = Instant::now();
                let own = system.process(*pid)?.accumulated_cpu_time();
                let (at, before) = last.replace((now, own))?;
                let wall_ms = now.duration_since(at).as_secs_f64() * 1000.0;
                if wall_ms < 1.0 {
                    return None;
                }
                Some(CpuSample::split(
                    system.global_cpu_usage(),
                    own.saturating_sub(before),
                    wall_ms,
                    self.cores,
                ))
            }
        }
    }
}

impl CpuSample {
    /// The machine's `total_percent` use split into this node's and others': this
    /// process used `peergrid_ms` of CPU time in `wall_ms` on `cores` cores.
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
    fn proc_counters_parse_and_niced_work_is_not_other_programs_use() {
        let stat = "cpu  100 50 30 800 20 0 0 0 0 0\ncpu0 50 25 15 400 10 0 0 0 0 0\n";
        let m = MachineTimes::parse(stat).expect("parses");
        assert_eq!((m.busy, m.nice, m.idle), (130, 50, 820));
        assert_eq!(MachineTimes::parse("intr 1 2 3\n"), None);
        let own = "4242 (peergrid node (x)) S 1 2 3 0 -1 0 0 0 0 0 17 5 0 0 20 0 9 0";
        assert_eq!(parse_process_ticks(own), Some(22));
        assert_eq!(parse_process_ticks("garbage"), None);

        let m = |busy, nice, idle| MachineTimes { busy, nice, idle };
        // (machine delta, own delta) -> (other %, own %), 1000 ticks in all.
        for (busy, nice, own, other, ours) in [
            // Idle machine.
            (0, 0, 0, 0.0, 0.0),
            // Our chunks busy (niced): nobody else.
            (10, 500, 510, 0.0, 51.0),
            // Another program beside our chunks.
            (260, 500, 510, 25.0, 51.0),
            // Only our event loop, un-niced.
            (20, 0, 20, 0.0, 2.0),
            // Another peergrid node's chunks (niced, not ours): not other programs.
            (0, 400, 0, 0.0, 0.0),
        ] {
            let s = CpuSample::between((m(0, 0, 0), 0), (m(busy, nice, 1000 - busy - nice), own))
                .expect("time passed");
            assert_eq!(
                (s.other_percent, s.peergrid_percent),
                (other, ours),
                "busy {busy}, nice {nice}, own {own}"
            );
        }
        assert_eq!(CpuSample::between((m(1, 1, 1), 0), (m(1, 1, 1), 0)), None);
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
