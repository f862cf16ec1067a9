//! `--bandwidth-limit`: a token bucket that holds the sender back to a
//! rate, so a migration does not starve the host's other traffic. Waits
//! are cancel-aware.

use crate::cancel::Cancel;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Paces writes to `rate` bytes per second.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    /// Bytes that may go now without waiting (negative: owed).
    tokens: f64,
    /// Most tokens saved up across quiet periods.
    burst: f64,
    last: Instant,
}

impl Pacer {
    /// A pacer for `rate` bytes per second (`rate` > 0).
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(1) as f64;
        // Up to 20 ms of rate may go at once after a quiet period (at least
        // 64 KiB): short bursts, a long-term average at the rate.
        let burst = (rate / 50.0).max(64.0 * 1024.0);
        Self {
            rate,
            tokens: burst,
            burst,
            last: Instant::now(),
        }
    }

    /// Accounts for `bytes` about to be (or just) sent and waits until the
    /// rate allows them. Returns `false` when `cancel` fired during the
    /// wait.
    pub fn pace(&mut self, bytes: u64, cancel: &Cancel) -> bool {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst) - bytes as f64;
        if self.tokens >= 0.0 {
            return true;
        }
        let wait = Duration::from_secs_f64(-self.tokens / self.rate);
        let until = now + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            let mut p = [libc::pollfd {
                fd: cancel.watch_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let ms = left.as_millis().clamp(1, 100) as i32;
            if matches!(vfio_migrate_sys::fd::poll(&mut p, ms), Ok(n) if n > 0) {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_long_term_rate() {
        let c = Cancel::new();
        let mut p = Pacer::new(20 << 20);
        let t = Instant::now();
        for _ in 0..40 {
            assert!(p.pace(256 << 10, &c));
        }
        // 10 MiB at 20 MiB/s: 0.5 s, less the initial burst.
        let e = t.elapsed().as_secs_f64();
        assert!((0.4..0.7).contains(&e), "{e} s");
    }

    #[test]
    fn a_cancel_ends_the_wait() {
        let c = Cancel::new();
        let mut p = Pacer::new(1024);
        c.cancel();
        let t = Instant::now();
        assert!(!p.pace(1 << 20, &c));
        assert!(t.elapsed() < Duration::from_millis(200));
    }
}
