//! The volunteer controls as the worker applies them: manual pause and resume,
//! run-time preferences, and the politeness loop that ticks
//! [`Politeness`](super::politeness::Politeness) and acts on its decision (sets the
//! sandbox gate, wakes the advertiser, withdraws chunks paused too long).
//!
//! Called by the control API (`peergrid pause`, `resume`, `prefs`, `status`); the
//! loop runs as one of the worker's tasks until shutdown. Its timing uses tokio's
//! clock, so tests drive it with `tokio::time::pause()`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::Worker;
use super::politeness::{
    Decision, Pause, PreferenceChanges, PreferenceError, Preferences, VolunteerStatus,
};

impl Worker {
    /// Pauses work by hand for `duration` (`None`: until [`resume`](Self::resume));
    /// running chunks pause inside the sandbox. Kept across restarts: the state file
    /// is written on a blocking thread, never on the caller's async one.
    pub async fn pause(&self, duration: Option<Duration>) -> std::io::Result<Pause> {
        let politeness = self.inner.politeness.clone();
        let pause = tokio::task::spawn_blocking(move || politeness.pause(duration))
            .await
            .map_err(std::io::Error::other)??;
        self.apply(self.inner.politeness.tick(false));
        Ok(pause)
    }

    /// Ends a manual pause (written like [`pause`](Self::pause)).
    pub async fn resume(&self) -> std::io::Result<()> {
        let politeness = self.inner.politeness.clone();
        tokio::task::spawn_blocking(move || politeness.resume())
            .await
            .map_err(std::io::Error::other)??;
        self.apply(self.inner.politeness.tick(false));
        Ok(())
    }

    /// The volunteer's preferences in force.
    pub fn preferences(&self) -> Preferences {
        self.inner.politeness.preferences()
    }

    /// Changes preferences at run time (kept across restarts, written like
    /// [`pause`](Self::pause)); `reset` first drops earlier run-time changes, back to
    /// the flags and `peergrid.toml`.
    pub async fn set_preferences(
        &self,
        changes: &PreferenceChanges,
        reset: bool,
    ) -> Result<Preferences, PreferenceError> {
        let (politeness, changes) = (self.inner.politeness.clone(), changes.clone());
        let prefs =
            tokio::task::spawn_blocking(move || politeness.set_preferences(&changes, reset))
                .await
                .map_err(|e| PreferenceError::Io(std::io::Error::other(e)))??;
        self.apply_bandwidth(&prefs);
        self.apply(self.inner.politeness.tick(false));
        self.inner.politeness_changed.notify_one();
        Ok(prefs)
    }

    /// Whether the worker works now, and why not when it does not.
    pub fn volunteer_status(&self) -> VolunteerStatus {
        self.inner.politeness.status(self.inner.gate.running())
    }

    /// Sets the gate to `decision`; wakes the advertiser when the slots changed.
    fn apply(&self, decision: Decision) {
        let before = self.inner.gate.allowed();
        self.inner.gate.set(
            decision.allowed.min(self.inner.slots_max),
            decision.duty_percent,
        );
        if before != self.inner.gate.allowed() {
            match &decision.reason {
                Some(reason) => tracing::info!(slots = decision.allowed, "suspended: {reason}"),
                None => tracing::info!(
                    slots = decision.allowed,
                    "lending {} slots",
                    decision.allowed
                ),
            }
            self.inner.changed.notify_waiters();
        }
    }

    /// Hands the volunteer's bandwidth caps to the network.
    fn apply_bandwidth(&self, prefs: &Preferences) {
        self.inner
            .net
            .set_bandwidth(crate::net::bandwidth::BandwidthCaps {
                max_upload: prefs.max_upload,
                max_download: prefs.max_download,
            });
    }

    /// Ticks the volunteer controls until shutdown (see the module docs).
    pub(super) async fn politeness_loop(&self) {
        self.apply_bandwidth(&self.inner.politeness.preferences());
        let interval = self.inner.politeness.sample_interval();
        let withdraw_after = self.inner.politeness.withdraw_after();
        let mut suspended_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => break,
                _ = self.inner.politeness_changed.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
            let politeness = self.inner.politeness.clone();
            // Sampling reads the OS's process table: off the async threads.
            let Ok(decision) = tokio::task::spawn_blocking(move || politeness.tick(true)).await
            else {
                continue;
            };
            let suspended = decision.allowed == 0;
            self.apply(decision);
            self.inner
                .metrics
                .volunteer(&self.inner.politeness.status(self.inner.gate.running()));
            let since = if suspended {
                *suspended_since.get_or_insert_with(Instant::now)
            } else {
                suspended_since = None;
                Instant::now()
            };
            self.withdraw_stalled(since.elapsed() >= withdraw_after, withdraw_after);
        }
    }

    /// Withdraws chunks paused longer than `after` (every active one when `all`):
    /// they stop and their submitters are told to run them elsewhere.
    fn withdraw_stalled(&self, all: bool, after: Duration) {
        let mut n = 0u64;
        for control in self.active().values() {
            if control.is_cancelled() {
                continue;
            }
            if all || control.paused_for().is_some_and(|p| p >= after) {
                control.withdraw();
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(
                chunks = n,
                "withdrew chunks paused too long; their submitters will reissue them"
            );
            self.inner.withdrawn.fetch_add(n, Ordering::Relaxed);
            self.inner.metrics.withdrawn.inc_by(n);
        }
    }
}
