//! Volunteer controls: how much of the machine the worker may use right now, and why.
//!
//! # What it owns
//! The volunteer's [`Preferences`] (from flags / `peergrid.toml`, changed at run time
//! through the control API), the manual pause (`peergrid pause [--for]`), both kept in
//! `volunteer.json` in the data dir so they survive a restart, the CPU monitor that
//! measures what *other* programs use (from the OS, through `sysinfo`), and the pure
//! rule [`decide()`] that turns all of that into a [`Decision`]: how many chunks may run,
//! at what duty cycle, or why none may.
//!
//! # Message flow
//! - The worker's politeness loop ([`super::Worker`]) calls [`Politeness::tick`] every
//!   sample interval and at once after a change (pause, resume, new preferences). A
//!   tick samples the CPU monitor, reads the [`Clock`], decides, and sets the sandbox
//!   [`Gate`](crate::sandbox::Gate) accordingly: running chunks over the allowance
//!   pause at the end of their current fuel slice (a few ms) and go on when it rises again.
//! - The worker advertises only the slots the decision allows, refuses offers with
//!   `Suspended` while it allows none, and withdraws chunks paused longer than
//!   `withdraw_after` (their submitters reissue them elsewhere).
//! - The control API reads [`Politeness::status`] for `peergrid status`, which says
//!   why the node works or not.
//!
//! # Layout
//! - [`preferences`]: what the volunteer lends, run-time changes, parsing.
//! - [`clock`]: the [`Clock`] seam (the system clock; a settable one in tests).
//! - [`cpu`]: the [`CpuMonitor`] and its [`CpuSample`]s.
//! - [`decide`](mod@decide): the pure rule, [`decide()`], and its [`Decision`].
//! - here: [`Politeness`], the state that ties them together and its persistence in
//!   `volunteer.json`.

pub mod clock;
pub mod cpu;
pub mod decide;
pub mod preferences;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::clock::{Clock, SystemClock};
pub use self::cpu::{CpuMonitor, CpuSample};
pub use self::decide::{CALM_SAMPLES, Decision, Pause, Reason, busiest_recent, decide};
pub use self::preferences::{
    ActiveHours, MAX_CPUS, PreferenceChanges, Preferences, parse_active_hours, parse_memory_total,
    parse_rate,
};

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

    /// The memory limit of one chunk, which bounds the slots by
    /// [`Preferences::memory_total`].
    pub fn memory_per_chunk(&self) -> u64 {
        self.memory_per_chunk
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
    use std::sync::atomic::Ordering;

    use self::clock::TestClock;

    const MIB: u64 = 1 << 20;

    fn at(h: u16, m: u16) -> u16 {
        h * 60 + m
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
}
