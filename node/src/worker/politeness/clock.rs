//! Where the worker reads the time: [`Clock`], the seam that lets tests drive the
//! politeness rule (active hours, timed pauses) with a clock they set
//! (`TestClock` in tests), while nodes use the machine's [`SystemClock`].
//!
//! Read by [`super::Politeness`] at every tick and by `Reason`'s text.

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

/// A clock a test sets by hand (Unix ms and the local minute).
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct TestClock {
    /// Milliseconds since the Unix epoch.
    pub(crate) ms: std::sync::atomic::AtomicU64,
    /// Minutes after local midnight.
    pub(crate) minute: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn local_minute(&self) -> u16 {
        self.minute.load(std::sync::atomic::Ordering::Relaxed) as u16
    }
}
