//! When pre-copy stops: [`Convergence`] decides after each round's
//! estimate — switch over, run another round, or give up — and says when
//! rounds stopped shrinking, which is when the engine raises the devices'
//! throttle ([`next_throttle`], the device-side analogue of QEMU's
//! auto-converge).

use crate::metrics::{ms, Estimate};
use std::time::Duration;

/// What to do after a round's estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Run another round.
    Continue,
    /// Switch over now: the estimate fits the limit.
    Switch,
    /// The rounds or the time ran out and the estimate still does not fit
    /// (or the destination has not acknowledged the devices' initial
    /// data): what happens is `--on-no-converge`.
    GiveUp,
}

/// What happens when pre-copy does not converge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoConverge {
    /// Fail the migration; the source keeps running (the default).
    #[default]
    Abort,
    /// Switch over anyway, with the longer downtime.
    Force,
}

/// A remainder that takes less than this to send at the measured
/// bandwidth is not worth another round.
const TINY_MS: f64 = 0.1;

/// The switchover rule. A switch needs the estimate within the limit and
/// the destination's acknowledgement of every device's initial data;
/// then it comes as soon as more rounds stop paying off — the remainder no
/// longer shrinks by a fifth, or takes under `TINY_MS` (0.1 ms) to send at the
/// measured bandwidth, or is empty. (A small final transfer does not reach
/// the bulk bandwidth the estimate uses: with the spliced data path a
/// remainder of "1 ms" cost the demo 0.4–0.6 ms more downtime than one
/// more round, and once the path reached ~1.5 GiB/s one of "0.25 ms" still
/// cost 0.2 ms more.) Round 0 never switches (nothing was measured yet). After
/// `max_iterations` rounds or the time limit it gives up unless the
/// estimate fits.
#[derive(Debug, Clone)]
pub struct Convergence {
    limit_ms: f64,
    max_iterations: u32,
    timeout: Option<Duration>,
    prev_remaining: u64,
    stalled: bool,
}

impl Convergence {
    /// The rule for a downtime limit, a round cap and a time limit.
    pub fn new(limit: Duration, max_iterations: u32, timeout: Option<Duration>) -> Self {
        Self {
            limit_ms: ms(limit),
            max_iterations,
            timeout,
            prev_remaining: u64::MAX,
            stalled: false,
        }
    }

    /// Decides after round `iteration`'s estimate, `elapsed` into
    /// pre-copy, with `remaining` bytes still to send; `acked` when every
    /// device's initial data was acknowledged (or nobody acknowledges).
    pub fn decide(
        &mut self,
        iteration: u32,
        elapsed: Duration,
        remaining: u64,
        est: Estimate,
        acked: bool,
    ) -> Decision {
        let shrinking = (remaining as f64) < self.prev_remaining as f64 * 0.8;
        self.prev_remaining = remaining;
        // Nothing pending and nothing ever moved to measure a bandwidth
        // with: what is left is stop-copy data no round can reduce.
        let fits = est.total_ms() <= self.limit_ms
            || (remaining == 0 && iteration >= 1 && !est.transfer_ms.is_finite());
        self.stalled = iteration >= 1 && !fits && !shrinking;
        if iteration >= 1
            && fits
            && acked
            && (!shrinking || est.transfer_ms < TINY_MS || remaining == 0)
        {
            return Decision::Switch;
        }
        let out_of_time = self.timeout.is_some_and(|t| elapsed >= t);
        if iteration >= self.max_iterations || out_of_time {
            return if fits && acked {
                Decision::Switch
            } else {
                Decision::GiveUp
            };
        }
        Decision::Continue
    }

    /// The last decision found the estimate above the limit and the
    /// remainder no longer shrinking: the time to throttle.
    pub fn stalled(&self) -> bool {
        self.stalled
    }
}

/// The throttle after `current` when rounds stop shrinking: 20 % first,
/// then 10 % more each time, up to `max` (QEMU's auto-converge steps).
pub fn next_throttle(current: u32, max: u32) -> u32 {
    if current == 0 {
        20.min(max)
    } else {
        (current + 10).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(ms: f64) -> Estimate {
        Estimate {
            transfer_ms: ms,
            fixed_ms: 0.0,
        }
    }

    const T: Duration = Duration::ZERO;

    #[test]
    fn switches_when_the_estimate_fits_and_rounds_stop_paying() {
        let mut c = Convergence::new(Duration::from_millis(300), 30, None);
        // Round 0 never switches: nothing was measured yet.
        assert_eq!(c.decide(0, T, 1000, est(10.0), true), Decision::Continue);
        // Still shrinking fast and above a millisecond: keep going.
        assert_eq!(c.decide(1, T, 500, est(10.0), true), Decision::Continue);
        // No longer shrinking by a fifth: switch.
        assert_eq!(c.decide(2, T, 450, est(9.0), true), Decision::Switch);
    }

    #[test]
    fn a_shrinking_remainder_pays_one_more_round_until_it_is_tiny() {
        let mut c = Convergence::new(Duration::from_millis(300), 30, None);
        c.decide(0, T, 4000, est(4.0), true);
        assert_eq!(c.decide(1, T, 1000, est(0.9), true), Decision::Continue);
        assert_eq!(c.decide(2, T, 200, est(0.2), true), Decision::Continue);
        assert_eq!(c.decide(3, T, 40, est(0.05), true), Decision::Switch);
    }

    #[test]
    fn fixed_costs_count_against_the_limit() {
        let mut c = Convergence::new(Duration::from_millis(5), 30, None);
        c.decide(0, T, 1000, est(1.0), true);
        let e = Estimate {
            transfer_ms: 0.5,
            fixed_ms: 6.0,
        };
        assert_eq!(c.decide(1, T, 1000, e, true), Decision::Continue);
        assert!(c.stalled());
    }

    #[test]
    fn never_switches_above_the_limit_and_gives_up_at_the_cap() {
        let mut c = Convergence::new(Duration::from_millis(5), 3, None);
        for i in 0..3 {
            assert_eq!(c.decide(i, T, 1000, est(50.0), true), Decision::Continue);
        }
        assert!(c.stalled());
        assert_eq!(c.decide(3, T, 1000, est(50.0), true), Decision::GiveUp);
        // At the cap an estimate that fits still switches.
        assert_eq!(c.decide(3, T, 1000, est(1.0), true), Decision::Switch);
    }

    #[test]
    fn the_time_limit_gives_up() {
        let mut c = Convergence::new(Duration::from_millis(5), 100, Some(Duration::from_secs(2)));
        assert_eq!(
            c.decide(1, Duration::from_secs(1), 10, est(50.0), true),
            Decision::Continue
        );
        assert_eq!(
            c.decide(2, Duration::from_secs(2), 10, est(50.0), true),
            Decision::GiveUp
        );
    }

    #[test]
    fn waits_for_the_switchover_ack() {
        let mut c = Convergence::new(Duration::from_millis(300), 30, None);
        c.decide(0, T, 0, est(0.0), false);
        assert_eq!(c.decide(1, T, 0, est(0.0), false), Decision::Continue);
        assert_eq!(c.decide(2, T, 0, est(0.0), true), Decision::Switch);
        let mut c = Convergence::new(Duration::from_millis(300), 2, None);
        assert_eq!(c.decide(2, T, 0, est(0.0), false), Decision::GiveUp);
    }

    #[test]
    fn nothing_to_measure_and_nothing_pending_switches() {
        let mut c = Convergence::new(Duration::from_millis(300), 30, None);
        assert_eq!(
            c.decide(0, T, 0, est(f64::INFINITY), true),
            Decision::Continue
        );
        assert_eq!(
            c.decide(1, T, 0, est(f64::INFINITY), true),
            Decision::Switch
        );
        // Pending data without a measured bandwidth: keep measuring.
        let mut c = Convergence::new(Duration::from_millis(300), 30, None);
        c.decide(0, T, 10, est(f64::INFINITY), true);
        assert_eq!(
            c.decide(1, T, 10, est(f64::INFINITY), true),
            Decision::Continue
        );
    }

    #[test]
    fn an_empty_remainder_switches_at_once() {
        let mut c = Convergence::new(Duration::from_millis(300), 30, None);
        assert_eq!(c.decide(0, T, 0, est(0.0), true), Decision::Continue);
        assert_eq!(c.decide(1, T, 0, est(0.0), true), Decision::Switch);
    }

    #[test]
    fn throttle_steps() {
        assert_eq!(next_throttle(0, 99), 20);
        assert_eq!(next_throttle(20, 99), 30);
        assert_eq!(next_throttle(95, 99), 99);
        assert_eq!(next_throttle(99, 99), 99);
    }
}
