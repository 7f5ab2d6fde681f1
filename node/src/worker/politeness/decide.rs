//! The rule: given the [`Preferences`], the machine (cores, the latest
//! [`CpuSample`]), the time and a manual [`Pause`], how many chunks may run now and
//! at what duty cycle, or the [`Reason`] none may ([`decide()`]). Pure: no clock, no
//! OS, so it is tested with tables of any load and time.
//!
//! Called by [`super::Politeness::tick`]; its [`Decision`] sets the sandbox gate
//! (through the worker) and its [`Reason`] is what `peergrid status` shows.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::clock::{Clock, SystemClock};
use super::cpu::CpuSample;
use super::preferences::Preferences;

/// Samples in a row below the limits before a worker that stepped aside for other
/// programs comes back.
pub const CALM_SAMPLES: usize = 3;

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
    /// Whether the pause still holds at `now_ms` (Unix ms).
    pub fn in_force(&self, now_ms: u64) -> bool {
        match self {
            Self::Indefinitely => true,
            Self::Until(t) => now_ms < *t,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn sample(other_percent: f32) -> Option<CpuSample> {
        Some(CpuSample {
            other_percent,
            peergrid_percent: 0.0,
        })
    }

    /// What, preferences, cores, sample, local minute, pause, now (Unix ms) -> chunks
    /// allowed and the reason's kind.
    type Case<'a> = (
        &'a str,
        &'a Preferences,
        u32,
        Option<CpuSample>,
        u16,
        Option<Pause>,
        u64,
        u32,
        Option<&'a str>,
    );

    #[test]
    fn the_rule_follows_pause_hours_load_and_shares() {
        let lend4 = Preferences::lend(4);
        let suspend40 = Preferences {
            suspend_above_percent: 40,
            ..Preferences::lend(4)
        };
        let half_cpu = Preferences {
            max_cpu_percent: 50,
            ..Preferences::lend(4)
        };
        let mem = |total| Preferences {
            memory_total: Some(total),
            ..half_cpu.clone()
        };
        let nights = Preferences {
            active_hours: Some("22:00-07:00".parse().unwrap()),
            ..Preferences::lend(2)
        };
        let busy_ok = Preferences {
            lend_when_busy: true,
            ..Preferences::lend(4)
        };
        let until = Some(Pause::Until(1_000));
        #[rustfmt::skip]
        let table: [Case<'_>; 14] = [
            ("an idle machine lends every slot", &lend4, 4, sample(5.0), 720, None, 0, 4, None),
            ("no sample yet: the preferences alone", &lend4, 4, None, 0, None, 0, 4, None),
            ("half the machine busy: two cores spare", &lend4, 4, sample(50.0), 0, None, 0, 2, None),
            ("every core busy: none spare", &lend4, 4, sample(97.0), 0, None, 0, 0, Some("no_spare_core")),
            ("lend when busy ignores the load", &busy_ok, 4, sample(97.0), 0, None, 0, 4, None),
            ("above the suspend limit", &suspend40, 4, sample(50.0), 0, None, 0, 0, Some("busy")),
            ("below the suspend limit", &suspend40, 4, sample(30.0), 0, None, 0, 3, None),
            ("a share of the cores", &half_cpu, 4, None, 0, None, 0, 2, None),
            ("memory for one chunk", &mem(512 * MIB), 4, None, 0, None, 0, 1, None),
            ("memory for none", &mem(100 * MIB), 4, None, 0, None, 0, 0, Some("nothing_lent")),
            ("outside the active hours", &nights, 2, None, 12 * 60, None, 0, 0, Some("outside_active_hours")),
            ("inside the active hours", &nights, 2, None, 23 * 60, None, 0, 2, None),
            ("a timed pause holds until its end", &lend4, 4, None, 0, until, 999, 0, Some("paused")),
            ("and ends by itself", &lend4, 4, None, 0, until, 1_000, 4, None),
        ];
        for (what, prefs, cores, sample, minute, pause, now, allowed, reason) in table {
            let d = decide(prefs, cores, 512 * MIB, sample.as_ref(), minute, pause, now);
            let kind = d.reason.as_ref().map(|r| match r {
                Reason::Paused { .. } => "paused",
                Reason::OutsideActiveHours { .. } => "outside_active_hours",
                Reason::Busy { .. } => "busy",
                Reason::NoSpareCore { .. } => "no_spare_core",
                Reason::NothingLent => "nothing_lent",
            });
            assert_eq!((d.allowed, kind), (allowed, reason), "{what}: {d:?}");
        }
        let indefinitely = decide(&lend4, 4, MIB, None, 0, Some(Pause::Indefinitely), u64::MAX);
        assert_eq!(
            indefinitely.allowed, 0,
            "an indefinite pause never ends by itself"
        );
        let busy = decide(&suspend40, 4, MIB, sample(50.0).as_ref(), 0, None, 0);
        assert_eq!(
            busy.reason.unwrap().to_string(),
            "other processes use 50 % CPU, above the 40 % limit"
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
}
