//! Time: waiting for a condition, asserting a duration, quantiles of samples, and a
//! wall-clock reading.

use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(mut cond: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts `elapsed` lies within `[lo, hi]`.
pub fn assert_between(what: &str, elapsed: Duration, lo: Duration, hi: Duration) {
    assert!(
        elapsed >= lo && elapsed <= hi,
        "{what}: took {elapsed:?}, expected between {lo:?} and {hi:?}"
    );
}

/// The `q`-quantile (0..=1) of `samples` (sorted in place); zero if empty.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i.min(samples.len() - 1)]
}

/// Microseconds since the Unix epoch (message ids are seeded from this).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}
