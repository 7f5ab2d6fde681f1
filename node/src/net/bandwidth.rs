//! Bandwidth caps for volunteers (`--max-upload`, `--max-download`, `peergrid prefs`):
//! token buckets that pace blob pieces (served: upload; fetched: download) and
//! result batches (sent: upload).
//!
//! [`NetClient`](super::NetClient) holds one [`Bandwidth`] and takes from it around
//! the requests it sends and answers, so the event loop never waits. A bucket holds at
//! most one second of its rate; a transfer larger than that goes into debt and the
//! next one waits it off, so the average over any few seconds stays under the cap
//! whatever the message sizes. Rates change at run time (the worker's controls loop
//! applies the volunteer's preferences).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One direction's cap.
#[derive(Debug)]
struct Bucket {
    /// Bytes per second; 0: no cap.
    rate: AtomicU64,
    /// (tokens, when last refilled). Tokens may go negative (debt).
    state: Mutex<(f64, Instant)>,
    /// Bytes counted through this bucket.
    total: AtomicU64,
}

impl Bucket {
    fn new(rate: Option<u64>) -> Self {
        Self {
            rate: AtomicU64::new(rate.unwrap_or(0)),
            state: Mutex::new((0.0, Instant::now())),
            total: AtomicU64::new(0),
        }
    }

    /// How long a transfer of `bytes` must wait, its tokens taken (pure but for the
    /// lock; `now` injected for tests).
    fn reserve(&self, bytes: u64, now: Instant) -> Duration {
        self.total.fetch_add(bytes, Ordering::Relaxed);
        let rate = self.rate.load(Ordering::Relaxed);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if rate == 0 {
            *state = (0.0, now);
            return Duration::ZERO;
        }
        let rate = rate as f64;
        let (tokens, at) = *state;
        let refilled = (tokens + now.saturating_duration_since(at).as_secs_f64() * rate).min(rate);
        let left = refilled - bytes as f64;
        *state = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / rate)
        }
    }

    async fn take(&self, bytes: u64) {
        let wait = self.reserve(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The volunteer's caps, in bytes per second (`None`: no cap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BandwidthCaps {
    /// Most bytes per second sent (blob pieces served, results sent).
    pub max_upload: Option<u64>,
    /// Most bytes per second received (blob pieces fetched).
    pub max_download: Option<u64>,
}

/// What `status` shows: the caps and the bytes counted under them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BandwidthStatus {
    /// The caps now.
    pub caps: BandwidthCaps,
    /// Bytes sent under the upload cap since start.
    pub uploaded: u64,
    /// Bytes received under the download cap since start.
    pub downloaded: u64,
}

/// Both directions' caps (no cap by default).
#[derive(Debug)]
pub struct Bandwidth {
    up: Bucket,
    down: Bucket,
}

impl Default for Bandwidth {
    fn default() -> Self {
        Self::new(BandwidthCaps::default())
    }
}

impl Bandwidth {
    /// Caps of `caps`.
    pub fn new(caps: BandwidthCaps) -> Self {
        Self {
            up: Bucket::new(caps.max_upload),
            down: Bucket::new(caps.max_download),
        }
    }

    /// Changes the caps (takes effect from the next transfer).
    pub fn set(&self, caps: BandwidthCaps) {
        self.up
            .rate
            .store(caps.max_upload.unwrap_or(0), Ordering::Relaxed);
        self.down
            .rate
            .store(caps.max_download.unwrap_or(0), Ordering::Relaxed);
    }

    /// Waits until `bytes` may be sent.
    pub async fn upload(&self, bytes: u64) {
        self.up.take(bytes).await;
    }

    /// Counts `bytes` received; waits off any debt (so the next request is paced).
    pub async fn download(&self, bytes: u64) {
        self.down.take(bytes).await;
    }

    /// The caps and counters.
    pub fn status(&self) -> BandwidthStatus {
        let rate = |b: &Bucket| Some(b.rate.load(Ordering::Relaxed)).filter(|r| *r > 0);
        BandwidthStatus {
            caps: BandwidthCaps {
                max_upload: rate(&self.up),
                max_download: rate(&self.down),
            },
            uploaded: self.up.total.load(Ordering::Relaxed),
            downloaded: self.down.total.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_cap_never_waits() {
        let b = Bucket::new(None);
        assert_eq!(b.reserve(u64::MAX / 2, Instant::now()), Duration::ZERO);
    }

    #[test]
    fn a_transfer_larger_than_a_second_of_the_cap_is_paid_off_before_the_next() {
        let b = Bucket::new(Some(1000));
        // The bucket's own clock start: no refill before the first transfer.
        let t0 = b.state.lock().unwrap().1;
        // An empty bucket: 5000 bytes at 1000 B/s wait 5 s.
        assert_eq!(b.reserve(5000, t0), Duration::from_secs(5));
        // The next transfer waits for the debt and its own size.
        assert_eq!(b.reserve(1000, t0), Duration::from_secs(6));
        // Later, the debt is paid and tokens refill up to one second's worth.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.reserve(1000, later), Duration::ZERO);
        assert_eq!(b.reserve(500, later), Duration::from_millis(500));
    }

    #[test]
    fn the_average_rate_stays_under_the_cap() {
        // 100 transfers of 4 KiB at 16 KiB/s, each starting when the previous may:
        // the last may start no earlier than (total - one second's burst) / rate.
        let b = Bucket::new(Some(16 * 1024));
        let mut now = Instant::now();
        let start = now;
        for _ in 0..100 {
            now += b.reserve(4096, now);
        }
        let took = now.duration_since(start).as_secs_f64();
        let expected = (100.0 * 4096.0 - 16.0 * 1024.0) / (16.0 * 1024.0);
        assert!(took >= expected - 0.01, "{took} s for 400 KiB at 16 KiB/s");
    }

    #[test]
    fn caps_change_at_run_time_and_status_shows_them() {
        let b = Bandwidth::new(BandwidthCaps::default());
        assert_eq!(b.status().caps, BandwidthCaps::default());
        let caps = BandwidthCaps {
            max_upload: Some(1 << 20),
            max_download: None,
        };
        b.set(caps);
        assert_eq!(b.status().caps, caps);
        assert!(!b.up.reserve(1 << 22, Instant::now()).is_zero());
        assert_eq!(b.status().uploaded, 1 << 22);
    }
}
