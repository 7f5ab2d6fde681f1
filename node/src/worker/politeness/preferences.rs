//! The volunteer's preferences: what they lend (`--cpus`, shares of CPU and memory,
//! active hours, suspend limits), how run-time changes ([`PreferenceChanges`], from
//! `PUT /v1/preferences`) apply on top of flags and `peergrid.toml`, and parsing of
//! the human forms (`22:00-07:00`, `4GiB`).
//!
//! Read by the pure rule ([`super::decide()`]) and kept by [`super::Politeness`];
//! the settings resolver (`settings.rs`) and the control API parse into these types.

use serde::{Deserialize, Serialize};

/// Most CPU slots one node may lend.
pub const MAX_CPUS: u32 = 1024;

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
    /// Most bytes per second sent (blob pieces served, results sent); `None`: no cap.
    #[serde(default)]
    pub max_upload: Option<u64>,
    /// Most bytes per second received (blob pieces fetched); `None`: no cap.
    #[serde(default)]
    pub max_download: Option<u64>,
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
            max_upload: None,
            max_download: None,
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
        if let Some(v) = &changes.max_upload {
            p.max_upload = parse_rate(v).map_err(|e| format!("max-upload: {e}"))?;
        }
        if let Some(v) = &changes.max_download {
            p.max_download = parse_rate(v).map_err(|e| format!("max-download: {e}"))?;
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

/// `off` for no cap, else bytes per second as a size such as `2MiB` (a trailing
/// `/s` is allowed).
pub fn parse_rate(s: &str) -> Result<Option<u64>, String> {
    match s.trim().trim_end_matches("/s") {
        "off" | "" => Ok(None),
        other => match crate::config::parse_size(other)? {
            0 => Err("a rate of 0 would stop every transfer: use off for no cap".into()),
            n => Ok(Some(n)),
        },
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
    /// Bytes per second such as `2MiB`, or `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_upload: Option<String>,
    /// Bytes per second such as `2MiB`, or `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_download: Option<String>,
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
        self.max_upload = later.max_upload.or(self.max_upload);
        self.max_download = later.max_download.or(self.max_download);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
