//! Pre-copy: rounds of dirty guest pages interleaved with device pre-copy
//! data while everything runs. Before each round the downtime a stop would
//! cost now is estimated (what is left over the measured bandwidth, plus
//! the measured fixed costs) and [`Convergence`] decides; the devices are
//! throttled while rounds stop shrinking.

use super::converge::{next_throttle, Convergence, Decision, NoConverge};
use super::{Source, RAM_RUN_BYTES};
use crate::error::EngineError;
use crate::format::{self, Kind, NO_DEVICE};
use crate::metrics::{ms, Estimate, RoundStat};
use crate::progress::Phase;
use std::time::{Duration, Instant};
use vfio_migrate_backend::{MigrationDevice, MAX_THROTTLE};

/// Pause between pre-copy rounds that found nothing to send.
const IDLE_ROUND: Duration = Duration::from_millis(5);

/// Rounds pre-copy goes on past its limits while the destination has not
/// acknowledged the devices' initial data yet.
const ACK_GRACE_ROUNDS: u32 = 10;

/// Most bytes one pre-copy round reads from a device that cannot tell
/// how much it has pending.
pub(super) const UNSIZED_ROUND_BYTES: u64 = 64 << 20;

impl<D: MigrationDevice> Source<'_, D> {
    /// Pre-copy rounds until [`Convergence`] says switch (or, when it
    /// gives up, what `--on-no-converge` says).
    pub(super) fn precopy(&mut self) -> Result<(), EngineError> {
        self.phase = Phase::PreCopy;
        if self.ram.is_none() && !self.devs.iter().any(|d| d.precopy) {
            // Nothing can be sent ahead: every device is stop-copy only.
            return Ok(());
        }
        let ps = self.ram.as_ref().map_or(4096, |r| r.page_size());
        let mut rule = Convergence::new(
            self.opts.downtime_limit,
            self.opts.max_iterations,
            self.opts.converge_timeout,
        );
        let started = Instant::now();
        let mut last_sync = Instant::now();
        let mut sent_before = self.sent_bytes();
        let mut grace = 0;
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
            self.send_initial_markers()?;
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
            let est = Estimate {
                transfer_ms: if bw > 0.0 {
                    stop_bytes as f64 / bw * 1000.0
                } else {
                    f64::INFINITY
                },
                fixed_ms: self.metrics.fixed.total_ms(),
            };
            let remaining = ram_remaining + dev_pending;
            let now = self.sent_bytes();
            self.metrics.rounds_log.push(RoundStat {
                iteration,
                at_ms: ms(self.metrics.t0.elapsed()),
                sent_bytes: now - sent_before,
                remaining_bytes: remaining,
                dirty_rate,
                bandwidth: bw,
                expected_downtime_ms: est.total_ms(),
                throttle_percent: self.throttle,
            });
            sent_before = now;
            self.emit(remaining, dirty_rate, est.total_ms());
            let acked = self.initial_acked();
            match rule.decide(iteration, started.elapsed(), remaining, est, acked) {
                Decision::Continue => {}
                Decision::Switch => {
                    self.switch_on(est, true);
                    return Ok(());
                }
                // The source never stops before the destination loaded the
                // devices' initial data: a few more rounds for it.
                Decision::GiveUp if !acked && grace < ACK_GRACE_ROUNDS => grace += 1,
                Decision::GiveUp => match self.opts.on_no_converge {
                    NoConverge::Force if acked => {
                        tracing::warn!(
                            expected_ms = est.total_ms(),
                            "pre-copy did not converge: switching over anyway (--on-no-converge force)"
                        );
                        self.metrics.forced = true;
                        self.switch_on(est, false);
                        return Ok(());
                    }
                    NoConverge::Force | NoConverge::Abort => {
                        return Err(EngineError::NoConvergence {
                            rounds: iteration,
                            secs: started.elapsed().as_secs_f64(),
                            expected_ms: est.total_ms(),
                            limit_ms: ms(self.opts.downtime_limit),
                            dirty_rate,
                            bandwidth: bw,
                            throttle: self.throttle,
                            unacked: !acked,
                        })
                    }
                },
            }
            if rule.stalled() && self.opts.auto_converge {
                self.raise_throttle()?;
            }
            self.round()?;
        }
    }

    /// Notes the estimate the switchover is decided on.
    fn switch_on(&mut self, est: Estimate, converged: bool) {
        self.metrics.converged = converged;
        self.metrics.estimate = est;
        self.metrics.expected_downtime_ms = est.total_ms();
    }

    /// Rounds stopped shrinking: every device that can throttle its
    /// dirtying work is asked to withhold more of it.
    fn raise_throttle(&mut self) -> Result<(), EngineError> {
        let next = next_throttle(self.throttle, MAX_THROTTLE);
        if next == self.throttle {
            return Ok(());
        }
        let mut any = false;
        for i in 0..self.devs.len() {
            if !self.devs[i].precopy {
                continue;
            }
            let Some(t) = self.devs[i].h.throttle() else {
                continue;
            };
            t.set_throttle(next).map_err(|e| self.dev_err(i, e))?;
            self.devs[i].throttled = true;
            any = true;
        }
        if any {
            tracing::info!(
                percent = next,
                "rounds stopped shrinking: devices throttled"
            );
            self.throttle = next;
            self.metrics.max_throttle = next;
        }
        Ok(())
    }

    /// Releases every device throttle (after the stop or on rollback; a
    /// failure is only warned about: the device releases it by itself
    /// when it leaves pre-copy).
    pub(super) fn release_throttle(&mut self) {
        for d in self.devs.iter_mut().filter(|d| d.throttled) {
            if let Some(t) = d.h.throttle() {
                if let Err(e) = t.set_throttle(0) {
                    tracing::warn!(device = %d.name, error = %e, "releasing the device throttle");
                }
            }
            d.throttled = false;
        }
        self.throttle = 0;
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
        let marker = Instant::now();
        self.wait_drained()?;
        if self.mode.is_live() {
            self.metrics.fixed.round_trip(marker.elapsed());
        }
        if moved > 0 {
            self.metrics.busy(moved, t.elapsed());
        } else {
            std::thread::sleep(IDLE_ROUND);
        }
        self.metrics.rounds = iteration + 1;
        for d in self.devs.iter_mut().filter(|d| d.precopy) {
            d.init_data.rounds += 1;
        }
        Ok(())
    }
}
