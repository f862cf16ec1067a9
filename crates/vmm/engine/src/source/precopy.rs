//! Pre-copy: rounds of dirty guest pages interleaved with device pre-copy
//! data while everything runs, and [`Convergence`], the rule that decides
//! when to stop iterating and switch over.

use super::{Source, RAM_RUN_BYTES};
use crate::error::EngineError;
use crate::format::{self, Kind, NO_DEVICE};
use crate::metrics::ms;
use crate::progress::Phase;
use std::time::{Duration, Instant};
use vfio_migrate_backend::MigrationDevice;

/// Pause between pre-copy rounds that found nothing to send.
const IDLE_ROUND: Duration = Duration::from_millis(5);

/// What to do after a round's estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Run another round.
    Continue,
    /// Switch over now; `converged` when the estimate fits the limit.
    Switch {
        /// The switchover came from the estimate (not from the round cap).
        converged: bool,
    },
}

/// The switchover rule: once the expected downtime is under the limit,
/// switch as soon as more rounds stop paying off — the remainder no longer
/// shrinks by a fifth, or is below a millisecond of bandwidth, or is empty;
/// switch anyway after `max_iterations` rounds.
#[derive(Debug, Clone)]
pub struct Convergence {
    limit_ms: f64,
    max_iterations: u32,
    prev_remaining: u64,
}

impl Convergence {
    /// The rule for a downtime limit and a round cap.
    pub fn new(limit: Duration, max_iterations: u32) -> Self {
        Self {
            limit_ms: ms(limit),
            max_iterations,
            prev_remaining: u64::MAX,
        }
    }

    /// Decides after round `iteration`'s estimate: `remaining` bytes still
    /// to send, `expected_ms` downtime if the switch happened now.
    pub fn decide(&mut self, iteration: u32, remaining: u64, expected_ms: f64) -> Decision {
        let shrinking = (remaining as f64) < self.prev_remaining as f64 * 0.8;
        self.prev_remaining = remaining;
        if iteration >= 1
            && expected_ms <= self.limit_ms
            && (!shrinking || expected_ms < 1.0 || remaining == 0)
        {
            return Decision::Switch { converged: true };
        }
        if iteration >= self.max_iterations {
            return Decision::Switch { converged: false };
        }
        Decision::Continue
    }
}

/// Most bytes one pre-copy round reads from a device that cannot tell
/// how much it has pending.
const UNSIZED_ROUND_BYTES: u64 = 64 << 20;

impl<D: MigrationDevice> Source<'_, D> {
    /// Pre-copy rounds until [`Convergence`] says switch.
    pub(super) fn precopy(&mut self) -> Result<(), EngineError> {
        self.phase = Phase::PreCopy;
        let ps = self.ram.as_ref().map_or(4096, |r| r.page_size());
        let mut rule = Convergence::new(self.opts.downtime_limit, self.opts.max_iterations);
        let mut last_sync = Instant::now();
        loop {
            self.check_cancel()?;
            self.poll_replies()?;
            let since = last_sync.elapsed().as_secs_f64().max(1e-6);
            let before = self.ram.as_ref().map_or(0, |r| r.pending_pages());
            self.sync_dirty()?;
            last_sync = Instant::now();
            let after = self.ram.as_ref().map_or(0, |r| r.pending_pages());
            let ram_remaining = after * ps;
            let new_ram = (after - before) * ps;
            self.estimate_devices()?;
            let dev_pending: u64 = self.devs.iter().map(|d| d.pending).sum();
            let stop_bytes: u64 =
                ram_remaining + self.devs.iter().map(|d| d.stop_estimate).sum::<u64>();
            let iteration = self.metrics.rounds;
            let dirty_rate = if iteration == 0 {
                0.0
            } else {
                (new_ram
                    + self
                        .devs
                        .iter()
                        .filter(|d| d.precopy)
                        .map(|d| d.pending)
                        .sum::<u64>()) as f64
                    / since
            };
            let bw = self.metrics.bandwidth();
            let expected_ms = if bw > 0.0 {
                stop_bytes as f64 / bw * 1000.0
            } else {
                f64::INFINITY
            };
            let remaining = ram_remaining + dev_pending;
            self.emit(remaining, dirty_rate, expected_ms);
            if let Decision::Switch { converged } = rule.decide(iteration, remaining, expected_ms) {
                self.metrics.converged = converged;
                self.metrics.expected_downtime_ms = expected_ms;
                return Ok(());
            }
            self.round()?;
        }
    }

    /// One round: RAM runs interleaved with device chunks, then a round
    /// marker; waits until the destination loaded it (live).
    fn round(&mut self) -> Result<(), EngineError> {
        let iteration = self.metrics.rounds;
        let t = Instant::now();
        let mut moved = 0u64;
        let mut dev_budget: Vec<u64> = self
            .devs
            .iter()
            .map(|d| match (d.precopy, d.unsized_precopy) {
                (false, _) => 0,
                // Read until the device has nothing more right now.
                (true, true) => UNSIZED_ROUND_BYTES,
                (true, false) => d.pending.max(1),
            })
            .collect();
        for d in self.devs.iter_mut() {
            d.last_round_bytes = 0;
        }
        self.channel_epoch_begin(false)?;
        loop {
            let r = self.send_ram(4 * RAM_RUN_BYTES)?;
            moved += r;
            let mut dev_moved = 0;
            for (i, budget) in dev_budget.iter_mut().enumerate() {
                if *budget == 0 {
                    continue;
                }
                let (n, exhausted) =
                    self.send_device(i, Kind::DevicePrecopy, (*budget).min(4 * RAM_RUN_BYTES))?;
                self.devs[i].report.precopy_bytes += n;
                self.devs[i].last_round_bytes += n;
                if self.devs[i].unsized_precopy {
                    self.devs[i].precopy_dry = exhausted && n == 0;
                }
                self.metrics.device_bytes += n;
                *budget = if exhausted {
                    0
                } else {
                    budget.saturating_sub(n)
                };
                dev_moved += n;
            }
            moved += dev_moved;
            if r == 0 && dev_budget.iter().all(|b| *b == 0) {
                break;
            }
            self.check_cancel()?;
        }
        self.channel_epoch_end(false)?;
        let round = format::Round {
            iteration: u64::from(iteration),
        };
        self.write(Kind::Round, NO_DEVICE, &[&round.to_bytes()])?;
        self.round_sent(u64::from(iteration));
        self.flush()?;
        // One round in flight at most: the bandwidth is what the
        // destination took, and the stop never waits for a backlog.
        self.wait_drained()?;
        if moved > 0 {
            self.metrics.busy(moved, t.elapsed());
        } else {
            std::thread::sleep(IDLE_ROUND);
        }
        self.metrics.rounds = iteration + 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_when_the_estimate_fits_and_rounds_stop_paying() {
        let mut c = Convergence::new(Duration::from_millis(300), 30);
        // Round 0 never switches: nothing was measured yet.
        assert_eq!(c.decide(0, 1000, 10.0), Decision::Continue);
        // Still shrinking fast and above a millisecond: keep going.
        assert_eq!(c.decide(1, 500, 10.0), Decision::Continue);
        // No longer shrinking by a fifth: switch.
        assert_eq!(c.decide(2, 450, 9.0), Decision::Switch { converged: true });
    }

    #[test]
    fn never_switches_above_the_limit_until_the_cap() {
        let mut c = Convergence::new(Duration::from_millis(5), 3);
        for i in 0..3 {
            assert_eq!(c.decide(i, 1000, 50.0), Decision::Continue);
        }
        assert_eq!(
            c.decide(3, 1000, 50.0),
            Decision::Switch { converged: false }
        );
    }

    #[test]
    fn an_empty_remainder_switches_at_once() {
        let mut c = Convergence::new(Duration::from_millis(300), 30);
        assert_eq!(c.decide(0, 0, 0.0), Decision::Continue);
        assert_eq!(c.decide(1, 0, 0.0), Decision::Switch { converged: true });
    }
}
