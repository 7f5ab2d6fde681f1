//! Volunteer controls: how much of the machine the worker may use right now, and why.
//!
//! # What it owns
//! The volunteer's [`Preferences`] (from flags / `peergrid.toml`, changed at run time
//! through the control API), the manual pause (`peergrid pause [--for]`), both kept in
//! `volunteer.json` in the data dir so they survive a restart, the CPU monitor that
//! measures what *other* programs use (from the OS, through `sysinfo`), and the pure
//! rule [`decide`] that turns all of that into a [`Decision`]: how many chunks may run,
//! at what duty cycle, or why none may.
//!
//! # Message flow
//! - The worker's politeness loop ([`super::Worker`]) calls [`Politeness::tick`] every
//!   sample interval and at once after a change (pause, resume, new preferences). A
//!   tick samples the CPU monitor, reads the [`Clock`], decides, and sets the sandbox
//!   [`Gate`](crate::sandbox::Gate) accordingly: running chunks over the allowance
//!   pause at their next epoch tick and go on when it rises again.
//! - The worker advertises only the slots the decision allows, refuses offers with
//!   `Suspended` while it allows none, and withdraws chunks paused longer than
//!   `withdraw_after` (their submitters reissue them elsewhere).
//! - The control API reads [`Politeness::status`] for `peergrid status`, which says
//!   why the node works or not.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Most CPU slots one node may lend.
pub const MAX_CPUS: u32 = 1024;
/// Samples in a row below the limits before a worker that stepped aside for other
/// programs comes back.
pub const CALM_SAMPLES: usize = 3;

/// The volunteer's computing preferences (BOINC's, and a few more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preferences {
    /// Chunk slots lent at most (one per core).
    pub cpus: u32,
    /// Share of the machine's cores used at most, in percent (1–100).
    pub max_cpu_percent: u8,
    /// Share of the time a running chunk computes, in percent (1–100): below 100,
    /// chunks run in a duty cycle.
    pub cpu_time_percent: u8,
    /// Suspend while other programs use more than this share of the machine's CPU,
    /// in percent; 0 never suspends for that.
    pub suspend_above_percent: u8,
    /// Work only during these hours (local time); `None`: always.
    pub active_hours: Option<ActiveHours>,
    /// Memory all running chunks may use together, in bytes (bounds the slots by
    /// total / per-chunk limit); `None`: no bound besides the per-chunk limit.
    pub memory_total: Option<u64>,
    /// Lend every slot whatever other programs use (no spare-capacity tracking).
    pub lend_when_busy: bool,
}

impl Preferences {
    /// Lend `cpus` slots, with nothing else limited.
    pub fn lend(cpus: u32) -> Self {
        Self {
            cpus,
            max_cpu_percent: 100,
            cpu_time_percent: 100,
            suspend_above_percent: 0,
            active_hours: None,
            memory_total: None,
            lend_when_busy: false,
        }
    }

    /// Whether the CPU use of other programs must be measured.
    pub fn watches_cpu(&self) -> bool {
        !self.lend_when_busy || self.suspend_above_percent > 0
    }

    /// Checks the numbers are in range.
    pub fn check(&self) -> Result<(), String> {
        if self.cpus > MAX_CPUS {
            return Err(format!(
                "--cpus must be between 0 (lend nothing) and {MAX_CPUS}, got {}",
                self.cpus
            ));
        }
        for (name, v) in [
            ("max-cpu-percent", self.max_cpu_percent),
            ("cpu-time-percent", self.cpu_time_percent),
        ] {
            if !(1..=100).contains(&v) {
                return Err(format!("--{name} must be between 1 and 100, got {v}"));
            }
        }
        if self.suspend_above_percent > 100 {
            return Err(format!(
                "--suspend-above-percent must be between 0 (never) and 100, got {}",
                self.suspend_above_percent
            ));
        }
        Ok(())
    }

    /// These preferences with `changes` applied, checked.
    pub fn with(&self, changes: &PreferenceChanges) -> Result<Preferences, String> {
        let mut p = self.clone();
        if let Some(v) = changes.cpus {
            p.cpus = v;
        }
        if let Some(v) = changes.max_cpu_percent {
            p.max_cpu_percent = v;
        }
        if let Some(v) = changes.cpu_time_percent {
            p.cpu_time_percent = v;
        }
        if let Some(v) = changes.suspend_above_percent {
            p.suspend_above_percent = v;
        }
        if let Some(v) = &changes.active_hours {
            p.active_hours = parse_active_hours(v)?;
        }
        if let Some(v) = &changes.memory_total {
            p.memory_total = parse_memory_total(v)?;
        }
        if let Some(v) = changes.lend_when_busy {
            p.lend_when_busy = v;
        }
        p.check()?;
        Ok(p)
    }
}

/// `always` (or `off`) for no window, else a window such as `22:00-07:00`.
pub fn parse_active_hours(s: &str) -> Result<Option<ActiveHours>, String> {
    match s.trim() {
        "always" | "off" | "" => Ok(None),
        other => other.parse().map(Some),
    }
}

/// `off` for no total, else a size such as `4GiB`.
pub fn parse_memory_total(s: &str) -> Result<Option<u64>, String> {
    match s.trim() {
        "off" | "" => Ok(None),
        other => crate::config::parse_size(other).map(Some),
    }
}

/// A change of some preferences: the body of `PUT /v1/preferences`, and what
/// `volunteer.json` keeps (run-time changes win over flags and `peergrid.toml`
/// until `peergrid prefs --reset`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct PreferenceChanges {
    /// See [`Preferences::cpus`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// See [`Preferences::max_cpu_percent`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cpu_percent: Option<u8>,
    /// See [`Preferences::cpu_time_percent`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_time_percent: Option<u8>,
    /// See [`Preferences::suspend_above_percent`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend_above_percent: Option<u8>,
    /// `22:00-07:00`, or `always`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_hours: Option<String>,
    /// A size such as `4GiB`, or `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_total: Option<String>,
    /// See [`Preferences::lend_when_busy`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lend_when_busy: Option<bool>,
}

impl PreferenceChanges {
    /// `self` with `later` on top.
    pub fn merged(mut self, later: &PreferenceChanges) -> PreferenceChanges {
        let later = later.clone();
        self.cpus = later.cpus.or(self.cpus);
        self.max_cpu_percent = later.max_cpu_percent.or(self.max_cpu_percent);
        self.cpu_time_percent = later.cpu_time_percent.or(self.cpu_time_percent);
        self.suspend_above_percent = later.suspend_above_percent.or(self.suspend_above_percent);
        self.active_hours = later.active_hours.or(self.active_hours);
        self.memory_total = later.memory_total.or(self.memory_total);
        self.lend_when_busy = later.lend_when_busy.or(self.lend_when_busy);
        self
    }
}

/// Hours of the day (local time) the worker may compute, e.g. `22:00-07:00`; a
/// window whose end is before its start runs over midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveHours {
    /// Start, in minutes after midnight (included).
    pub start: u16,
    /// End, in minutes after midnight (excluded).
    pub end: u16,
}

impl ActiveHours {
    /// Whether the worker may compute at `minute` (minutes after midnight).
    pub fn allows(&self, minute: u16) -> bool {
        let minute = minute % (24 * 60);
        match self.start.cmp(&self.end) {
            std::cmp::Ordering::Equal => true,
            std::cmp::Ordering::Less => self.start <= minute && minute < self.end,
            std::cmp::Ordering::Greater => minute >= self.start || minute < self.end,
        }
    }
}

impl std::str::FromStr for ActiveHours {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a window of hours such as 22:00-07:00 (or 'always')");
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 || h == 24 && m == 0).then_some((h * 60 + m) % (24 * 60))
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        Ok(Self {
            start: minute(a).ok_or_else(bad)?,
            end: minute(b).ok_or_else(bad)?,
        })
    }
}

impl std::fmt::Display for ActiveHours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

impl Serialize for ActiveHours {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ActiveHours {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where the worker reads the time: the system clock, or a controlled one in tests.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Minutes after local midnight.
    fn local_minute(&self) -> u16;
}

/// The machine's clock, in its time zone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn local_minute(&self) -> u16 {
        let time = jiff::Zoned::now().time();
        time.hour() as u16 * 60 + time.minute() as u16
    }
}

/// A manual pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pause {
    /// Until `peergrid resume`.
    Indefinitely,
    /// Until this time (Unix ms), or `peergrid resume`.
    Until(u64),
}

impl Pause {
    fn in_force(&self, now_ms: u64) -> bool {
        match self {
            Self::Indefinitely => true,
            Self::Until(t) => now_ms < *t,
        }
    }
}

/// What other programs and peergrid use of the machine, in percent of all cores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CpuSample {
    /// Used by programs other than peergrid.
    pub other_percent: f32,
    /// Used by peergrid processes (this one and any others on the machine).
    pub peergrid_percent: f32,
}

/// Why the worker runs no chunk now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Paused by hand (`peergrid pause`).
    Paused {
        /// Until when (Unix ms); `None`: until `peergrid resume`.
        until_ms: Option<u64>,
    },
    /// Outside the active hours.
    OutsideActiveHours {
        /// The window.
        hours: String,
    },
    /// Other programs use more CPU than the limit.
    Busy {
        /// What they use, percent.
        other_percent: f32,
        /// The limit, percent.
        limit_percent: u8,
    },
    /// Other programs use every core.
    NoSpareCore {
        /// What they use, percent.
        other_percent: f32,
    },
    /// The preferences lend no slot (`--cpus 0`, or too little memory).
    NothingLent,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Paused { until_ms: None } => {
                write!(f, "paused by hand (peergrid resume to go on)")
            }
            Self::Paused { until_ms: Some(t) } => {
                let left = t.saturating_sub(SystemClock.now_ms()) / 1000;
                write!(
                    f,
                    "paused by hand for another {} (peergrid resume to go on now)",
                    humantime::format_duration(Duration::from_secs(left))
                )
            }
            Self::OutsideActiveHours { hours } => {
                write!(f, "outside the active hours {hours} (local time)")
            }
            Self::Busy {
                other_percent,
                limit_percent,
            } => write!(
                f,
                "other processes use {other_percent:.0} % CPU, above the {limit_percent} % limit"
            ),
            Self::NoSpareCore { other_percent } => write!(
                f,
                "other processes use {other_percent:.0} % CPU: no core is spare"
            ),
            Self::NothingLent => write!(f, "this node lends no CPU (--cpus 0)"),
        }
    }
}

/// What the worker may do now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Chunks that may run at once.
    pub allowed: u32,
    /// Percent of the time each computes.
    pub duty_percent: u8,
    /// Why none may run (when `allowed` is 0).
    pub reason: Option<Reason>,
}

/// Cores not used by other programs, rounded to the nearest whole core.
fn spare_cores(cores: u32, other_percent: f32) -> u32 {
    let other = f64::from(other_percent.clamp(0.0, 100.0)) / 100.0 * f64::from(cores);
    (f64::from(cores) - other).round().max(0.0) as u32
}

/// The rule: how many chunks may run given the preferences, the machine (`cores`,
/// the latest CPU sample), the time and a manual pause. Pure, so it is tested with
/// any clock and load.
pub fn decide(
    prefs: &Preferences,
    cores: u32,
    memory_per_chunk: u64,
    sample: Option<&CpuSample>,
    local_minute: u16,
    pause: Option<Pause>,
    now_ms: u64,
) -> Decision {
    let suspended = |reason| Decision {
        allowed: 0,
        duty_percent: prefs.cpu_time_percent,
        reason: Some(reason),
    };
    if let Some(p) = pause.filter(|p| p.in_force(now_ms)) {
        return suspended(Reason::Paused {
            until_ms: match p {
                Pause::Indefinitely => None,
                Pause::Until(t) => Some(t),
            },
        });
    }
    if let Some(hours) = prefs.active_hours
        && !hours.allows(local_minute)
    {
        return suspended(Reason::OutsideActiveHours {
            hours: hours.to_string(),
        });
    }
    let by_share = (u64::from(cores) * u64::from(prefs.max_cpu_percent)).div_ceil(100) as u32;
    let mut limit = prefs.cpus.min(by_share.max(1));
    if let Some(total) = prefs.memory_total {
        let fit = total / memory_per_chunk.max(1);
        limit = limit.min(u32::try_from(fit).unwrap_or(u32::MAX));
    }
    if limit == 0 {
        return suspended(Reason::NothingLent);
    }
    if let Some(s) = sample {
        if prefs.suspend_above_percent > 0
            && s.other_percent > f32::from(prefs.suspend_above_percent)
        {
            return suspended(Reason::Busy {
                other_percent: s.other_percent,
                limit_percent: prefs.suspend_above_percent,
            });
        }
        let spare = if prefs.lend_when_busy {
            limit
        } else {
            spare_cores(cores, s.other_percent)
        };
        if spare == 0 {
            return suspended(Reason::NoSpareCore {
                other_percent: s.other_percent,
            });
        }
        limit = limit.min(spare);
    }
    Decision {
        allowed: limit,
        duty_percent: prefs.cpu_time_percent,
        reason: None,
    }
}

/// Adds a sample of other programs' use to `recent` (the last [`CALM_SAMPLES`])
/// and returns the highest of them: busy at once, calm only after a calm while.
pub fn busiest_recent(recent: &mut std::collections::VecDeque<f32>, other: f32) -> f32 {
    if recent.len() >= CALM_SAMPLES {
        recent.pop_front();
    }
    recent.push_back(other);
    recent.iter().copied().fold(0.0, f32::max)
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
        let total = self.system.global_cpu_usage().clamp(0.0, 100.0);
        let peergrid =
            ((used_ms as f64 / wall_ms / f64::from(self.cores)) * 100.0).clamp(0.0, 100.0) as f32;
        Some(CpuSample {
            other_percent: (total - peergrid).max(0.0),
            peergrid_percent: peergrid,
        })
    }
}

/// What `volunteer.json` in the data dir holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Saved {
    /// The manual pause, if any.
    pub pause: Option<Pause>,
    /// Preferences changed at run time (they win over flags and `peergrid.toml`).
    pub preferences: PreferenceChanges,
}

/// Settings of the volunteer controls that only flags and `peergrid.toml` set.
#[derive(Debug, Clone)]
pub struct VolunteerConfig {
    /// The preferences from flags and the file.
    pub preferences: Preferences,
    /// How often the CPU use of other programs is sampled.
    pub sample_interval: Duration,
    /// A chunk paused longer than this is withdrawn (its submitter reissues it).
    pub withdraw_after: Duration,
}

impl VolunteerConfig {
    /// Lend `cpus` slots with the default controls.
    pub fn lend(cpus: u32) -> Self {
        Self {
            preferences: Preferences::lend(cpus),
            sample_interval: Duration::from_secs(1),
            withdraw_after: Duration::from_secs(300),
        }
    }
}

/// The state of the volunteer controls, for `peergrid status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolunteerStatus {
    /// `working` (chunks running), `idle` (may work, nothing to do) or `suspended`.
    pub state: String,
    /// Why it is suspended (also when idle with fewer slots than lent: `None`).
    pub reason: Option<Reason>,
    /// The reason in words.
    pub reason_text: Option<String>,
    /// Chunks that may run now.
    pub slots_allowed: u32,
    /// The latest CPU sample.
    pub cpu: Option<CpuSample>,
    /// Preferences in force.
    pub preferences: Preferences,
    /// The manual pause, if any.
    pub pause: Option<Pause>,
}

/// The volunteer controls of one worker (see the module docs).
#[derive(Debug)]
pub struct Politeness {
    base: Preferences,
    config: VolunteerConfig,
    file: Option<PathBuf>,
    saved: Mutex<Saved>,
    prefs: Mutex<Preferences>,
    last: Mutex<(Decision, Option<CpuSample>)>,
    monitor: Mutex<Option<CpuMonitor>>,
    /// Other programs' use in the last few samples: the rule sees the highest, so
    /// the worker steps aside at the first busy sample and comes back only after
    /// [`CALM_SAMPLES`] calm ones (no flapping around a limit).
    recent_other: Mutex<std::collections::VecDeque<f32>>,
    cores: u32,
    memory_per_chunk: u64,
    clock: std::sync::Arc<dyn Clock>,
}

impl Politeness {
    /// Controls from `config`, with the run-time state kept in `file` (none: not
    /// kept). A state file that cannot be read is reported and ignored.
    pub fn new(
        config: VolunteerConfig,
        memory_per_chunk: u64,
        file: Option<PathBuf>,
        clock: std::sync::Arc<dyn Clock>,
    ) -> Self {
        let saved: Saved = file
            .as_ref()
            .and_then(|f| match std::fs::read(f) {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| tracing::warn!(file = %f.display(), error = %e, "ignoring unreadable volunteer state"))
                    .ok(),
                Err(_) => None,
            })
            .unwrap_or_default();
        let base = config.preferences.clone();
        let prefs = base.with(&saved.preferences).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring saved preferences");
            base.clone()
        });
        let monitor = if prefs.watches_cpu() {
            CpuMonitor::new()
        } else {
            None
        };
        let cores = monitor.as_ref().map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            CpuMonitor::cores,
        );
        let first = decide(
            &prefs,
            cores,
            memory_per_chunk,
            None,
            clock.local_minute(),
            saved.pause,
            clock.now_ms(),
        );
        Self {
            base,
            config,
            file,
            saved: Mutex::new(saved),
            prefs: Mutex::new(prefs),
            last: Mutex::new((first, None)),
            monitor: Mutex::new(monitor),
            recent_other: Mutex::new(std::collections::VecDeque::new()),
            cores,
            memory_per_chunk,
            clock,
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How often to tick.
    pub fn sample_interval(&self) -> Duration {
        self.config.sample_interval
    }

    /// A chunk paused longer than this is withdrawn.
    pub fn withdraw_after(&self) -> Duration {
        self.config.withdraw_after
    }

    /// Cores of the machine.
    pub fn cores(&self) -> u32 {
        self.cores
    }

    /// Samples the CPU use (when `sample`, else keeps the last sample), decides and
    /// returns the decision.
    pub fn tick(&self, sample: bool) -> Decision {
        // One lock at a time (never two held together), so no order to get wrong.
        let prefs = self.preferences();
        let pause = Self::lock(&self.saved).pause;
        let watch = prefs.watches_cpu();
        let fresh = if sample {
            let mut monitor = Self::lock(&self.monitor);
            if !watch {
                *monitor = None;
            } else if monitor.is_none() {
                *monitor = CpuMonitor::new();
            }
            monitor.as_mut().and_then(CpuMonitor::sample)
        } else {
            None
        };
        let fresh = fresh.map(|s| CpuSample {
            other_percent: busiest_recent(&mut Self::lock(&self.recent_other), s.other_percent),
            ..s
        });
        let mut last = Self::lock(&self.last);
        let sample = if watch { fresh.or(last.1) } else { None };
        let decision = decide(
            &prefs,
            self.cores,
            self.memory_per_chunk,
            sample.as_ref(),
            self.clock.local_minute(),
            pause,
            self.clock.now_ms(),
        );
        *last = (decision.clone(), sample);
        decision
    }

    /// The latest decision.
    pub fn decision(&self) -> Decision {
        Self::lock(&self.last).0.clone()
    }

    /// Pauses for `duration` (`None`: until resumed). Kept across restarts.
    pub fn pause(&self, duration: Option<Duration>) -> Result<Pause, std::io::Error> {
        let pause = match duration {
            None => Pause::Indefinitely,
            Some(d) => Pause::Until(
                self.clock
                    .now_ms()
                    .saturating_add(d.as_millis().min(u128::from(u64::MAX)) as u64),
            ),
        };
        self.update(|s| s.pause = Some(pause))?;
        Ok(pause)
    }

    /// Ends a manual pause.
    pub fn resume(&self) -> Result<(), std::io::Error> {
        self.update(|s| s.pause = None)
    }

    /// The preferences in force.
    pub fn preferences(&self) -> Preferences {
        Self::lock(&self.prefs).clone()
    }

    /// Applies and keeps `changes`; `reset` first forgets earlier run-time changes.
    pub fn set_preferences(
        &self,
        changes: &PreferenceChanges,
        reset: bool,
    ) -> Result<Preferences, PreferenceError> {
        let mut saved = Self::lock(&self.saved);
        let kept = if reset {
            changes.clone()
        } else {
            saved.preferences.clone().merged(changes)
        };
        let prefs = self.base.with(&kept).map_err(PreferenceError::Invalid)?;
        let mut next = saved.clone();
        next.preferences = kept;
        self.write(&next).map_err(PreferenceError::Io)?;
        *saved = next;
        *Self::lock(&self.prefs) = prefs.clone();
        Ok(prefs)
    }

    fn update(&self, change: impl FnOnce(&mut Saved)) -> Result<(), std::io::Error> {
        let mut saved = Self::lock(&self.saved);
        let mut next = saved.clone();
        change(&mut next);
        self.write(&next)?;
        *saved = next;
        Ok(())
    }

    fn write(&self, saved: &Saved) -> Result<(), std::io::Error> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let json = serde_json::to_vec_pretty(saved).map_err(std::io::Error::other)?;
        crate::files::write_private_file(file, &json)
    }

    /// The state for `peergrid status`; `running` is how many chunks run now.
    pub fn status(&self, running: u32) -> VolunteerStatus {
        let (decision, cpu) = Self::lock(&self.last).clone();
        let pause = Self::lock(&self.saved)
            .pause
            .filter(|p| p.in_force(self.clock.now_ms()));
        let state = if decision.reason.is_some() {
            "suspended"
        } else if running > 0 {
            "working"
        } else {
            "idle"
        };
        VolunteerStatus {
            state: state.into(),
            reason_text: decision.reason.as_ref().map(ToString::to_string),
            reason: decision.reason,
            slots_allowed: decision.allowed,
            cpu,
            preferences: self.preferences(),
            pause,
        }
    }
}

/// Why preferences could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum PreferenceError {
    /// A value is out of range or malformed.
    #[error("{0}")]
    Invalid(String),
    /// `volunteer.json` could not be written.
    #[error("could not keep the preferences in the data dir: {0}")]
    Io(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock the test sets.
    #[derive(Debug, Default)]
    struct TestClock {
        ms: AtomicU64,
        minute: AtomicU64,
    }

    impl Clock for TestClock {
        fn now_ms(&self) -> u64 {
            self.ms.load(Ordering::Relaxed)
        }
        fn local_minute(&self) -> u16 {
            self.minute.load(Ordering::Relaxed) as u16
        }
    }

    const MIB: u64 = 1 << 20;

    fn at(h: u16, m: u16) -> u16 {
        h * 60 + m
    }

    #[test]
    fn active_hours_parse_and_wrap_over_midnight() {
        let night: ActiveHours = "22:00-07:00".parse().unwrap();
        assert_eq!(night.to_string(), "22:00-07:00");
        assert!(night.allows(at(22, 0)));
        assert!(night.allows(at(23, 59)));
        assert!(night.allows(at(0, 0)));
        assert!(night.allows(at(6, 59)));
        assert!(!night.allows(at(7, 0)));
        assert!(!night.allows(at(12, 0)));
        assert!(!night.allows(at(21, 59)));
        let day: ActiveHours = "9:30-17:00".parse().unwrap();
        assert!(!day.allows(at(9, 29)) && day.allows(at(9, 30)) && !day.allows(at(17, 0)));
        let all: ActiveHours = "00:00-24:00".parse().unwrap();
        assert!(all.allows(at(13, 0)));
        for bad in ["22-07", "25:00-01:00", "10:60-11:00", "nope", "10:00"] {
            assert!(bad.parse::<ActiveHours>().is_err(), "{bad}");
        }
        assert_eq!(parse_active_hours("always"), Ok(None));
    }

    #[test]
    fn the_rule_follows_pause_hours_load_and_shares() {
        let mut p = Preferences::lend(4);
        let idle = CpuSample {
            other_percent: 5.0,
            peergrid_percent: 50.0,
        };
        let d = decide(&p, 4, 512 * MIB, Some(&idle), at(12, 0), None, 0);
        assert_eq!((d.allowed, d.reason), (4, None));
        // Half the machine used by others: two cores spare.
        let half = CpuSample {
            other_percent: 50.0,
            peergrid_percent: 0.0,
        };
        assert_eq!(decide(&p, 4, 512 * MIB, Some(&half), 0, None, 0).allowed, 2);
        // Every core used by others: none spare.
        let full = CpuSample {
            other_percent: 97.0,
            peergrid_percent: 1.0,
        };
        let d = decide(&p, 4, 512 * MIB, Some(&full), 0, None, 0);
        assert!(matches!(d.reason, Some(Reason::NoSpareCore { .. })));
        // Above the suspend limit.
        p.suspend_above_percent = 40;
        let d = decide(&p, 4, 512 * MIB, Some(&half), 0, None, 0);
        assert_eq!(d.allowed, 0);
        assert_eq!(
            d.reason.unwrap().to_string(),
            "other processes use 50 % CPU, above the 40 % limit"
        );
        // Shares of cores and memory.
        p.suspend_above_percent = 0;
        p.max_cpu_percent = 50;
        assert_eq!(decide(&p, 4, 512 * MIB, None, 0, None, 0).allowed, 2);
        p.memory_total = Some(512 * MIB);
        assert_eq!(decide(&p, 4, 512 * MIB, None, 0, None, 0).allowed, 1);
        p.memory_total = Some(100 * MIB);
        assert_eq!(
            decide(&p, 4, 512 * MIB, None, 0, None, 0).reason,
            Some(Reason::NothingLent)
        );
        // A timed pause ends by itself; an indefinite one does not.
        let p = Preferences::lend(2);
        let until = Some(Pause::Until(1_000));
        assert_eq!(decide(&p, 2, MIB, None, 0, until, 999).allowed, 0);
        assert_eq!(decide(&p, 2, MIB, None, 0, until, 1_000).allowed, 2);
        assert_eq!(
            decide(&p, 2, MIB, None, 0, Some(Pause::Indefinitely), u64::MAX).allowed,
            0
        );
    }

    #[test]
    fn the_worker_steps_aside_at_once_and_comes_back_after_calm_samples() {
        let mut recent = std::collections::VecDeque::new();
        assert_eq!(busiest_recent(&mut recent, 10.0), 10.0);
        assert_eq!(busiest_recent(&mut recent, 90.0), 90.0, "busy at once");
        assert_eq!(busiest_recent(&mut recent, 5.0), 90.0);
        assert_eq!(busiest_recent(&mut recent, 5.0), 90.0);
        assert_eq!(
            busiest_recent(&mut recent, 5.0),
            5.0,
            "calm after 3 calm samples"
        );
    }

    #[test]
    fn active_hours_are_honoured_with_a_controlled_clock() {
        let clock = Arc::new(TestClock::default());
        let mut config = VolunteerConfig::lend(2);
        config.preferences.lend_when_busy = true;
        config.preferences.active_hours = Some("22:00-07:00".parse().unwrap());
        let politeness = Politeness::new(config, MIB, None, clock.clone());
        for (minute, works) in [
            (at(21, 59), false),
            (at(22, 0), true),
            (at(3, 0), true),
            (at(7, 0), false),
            (at(12, 0), false),
        ] {
            clock.minute.store(u64::from(minute), Ordering::Relaxed);
            let d = politeness.tick(true);
            assert_eq!(d.allowed > 0, works, "at minute {minute}: {d:?}");
            if !works {
                assert_eq!(
                    d.reason.unwrap().to_string(),
                    "outside the active hours 22:00-07:00 (local time)"
                );
            }
        }
    }

    #[test]
    fn pause_and_preferences_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("volunteer.json");
        let clock = Arc::new(TestClock::default());
        let config = || {
            let mut c = VolunteerConfig::lend(2);
            c.preferences.lend_when_busy = true;
            c
        };
        let p = Politeness::new(config(), MIB, Some(file.clone()), clock.clone());
        assert_eq!(p.tick(true).allowed, 2);
        p.pause(Some(Duration::from_secs(60))).unwrap();
        p.set_preferences(
            &PreferenceChanges {
                cpu_time_percent: Some(50),
                ..Default::default()
            },
            false,
        )
        .unwrap();
        assert!(
            p.set_preferences(
                &PreferenceChanges {
                    cpu_time_percent: Some(0),
                    ..Default::default()
                },
                false
            )
            .is_err()
        );
        drop(p);
        let p = Politeness::new(config(), MIB, Some(file.clone()), clock.clone());
        let d = p.tick(true);
        assert_eq!((d.allowed, d.duty_percent), (0, 50));
        clock.ms.store(61_000, Ordering::Relaxed);
        assert_eq!(p.tick(true).allowed, 2, "the timed pause ended");
        p.pause(None).unwrap();
        drop(p);
        let p = Politeness::new(config(), MIB, Some(file.clone()), clock.clone());
        assert_eq!(p.tick(true).allowed, 0);
        p.resume().unwrap();
        p.set_preferences(&PreferenceChanges::default(), true)
            .unwrap();
        drop(p);
        let p = Politeness::new(config(), MIB, Some(file), clock);
        let d = p.tick(true);
        assert_eq!((d.allowed, d.duty_percent), (2, 100));
    }

    #[test]
    fn the_cpu_monitor_sees_a_busy_thread_as_peergrid_not_other() {
        let Some(mut monitor) = CpuMonitor::new() else {
            return;
        };
        let _ = monitor.sample();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let spinner = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        let sample = monitor.sample().expect("a second sample");
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        // The monitor counts processes named like its own (this test binary) as
        // peergrid: the spinning thread is not "other" use.
        assert!(
            (0.0..=100.0).contains(&sample.other_percent) && sample.peergrid_percent > 5.0,
            "{sample:?}"
        );
    }
}
