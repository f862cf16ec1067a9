//! What a source-side migration measures while it runs — clocks of its
//! phases, bytes by kind, the bandwidth estimate — kept apart from the
//! logic that moves data, and turned into the [`MigrationReport`] at the
//! end.

use crate::report::MigrationReport;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Milliseconds of a duration, as reports show them.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The measurements of one source-side migration.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// When the migration started.
    pub t0: Instant,
    /// Pre-copy started (setup done).
    pub precopy_start: Option<Instant>,
    /// The stop began (vCPUs paused, devices quiescing).
    pub stop_start: Option<Instant>,
    /// Every device reached STOP_COPY.
    pub stopped: Option<Instant>,
    /// The last byte of the stream was sent.
    pub sent: Option<Instant>,
    /// The destination ran (or, for a snapshot, the source ran again).
    pub resumed: Option<Instant>,
    /// Time the pre-copy rounds spent moving data, and what they moved:
    /// the bandwidth estimate.
    busy: Duration,
    busy_bytes: u64,
    /// Guest RAM page bytes sent (re-sent pages count again).
    pub ram_bytes: u64,
    /// Guest pages sent as zero runs.
    pub ram_zero_pages: u64,
    /// Guest RAM page bytes sent while stopped.
    pub ram_bytes_stopped: u64,
    /// Device data bytes sent.
    pub device_bytes: u64,
    /// Device data bytes sent while stopped.
    pub device_bytes_stopped: u64,
    /// Pre-copy rounds completed.
    pub rounds: u32,
    /// The switchover came from the estimate.
    pub converged: bool,
    /// Expected downtime at the switchover, ms.
    pub expected_downtime_ms: f64,
    /// The destination's time reading digests, ms.
    pub dest_digest_ms: f64,
    /// Hashing the source RAM after the destination ran, ms.
    pub verify_ms: f64,
    /// Per pre-copy round: what was sent, what remained, the estimate and
    /// the throttle.
    pub rounds_log: Vec<RoundStat>,
    /// The estimate the switchover was decided on.
    pub estimate: Estimate,
    /// Measured costs the estimate adds to the transfer time.
    pub fixed: FixedCosts,
    /// Where the downtime went (parts add up to the downtime).
    pub breakdown: DowntimeBreakdown,
    /// The part of the downtime the next [`Metrics::lap`] ends.
    lap_from: Option<Instant>,
    /// The switchover came although the estimate did not fit the limit
    /// (`--on-no-converge force`).
    pub forced: bool,
    /// Highest device throttle reached, percent.
    pub max_throttle: u32,
    /// Devices that re-initialised their pre-copy data (REINIT reports).
    pub reinits: u32,
}

/// One pre-copy round, as measured before it ran.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoundStat {
    /// Round number (0 first).
    pub iteration: u32,
    /// Milliseconds since the migration started.
    pub at_ms: f64,
    /// Stream bytes sent by the previous round (0 before round 0).
    pub sent_bytes: u64,
    /// Bytes still to send at this round's start: dirty RAM and pending
    /// device data.
    pub remaining_bytes: u64,
    /// Bytes dirtied per second since the last round.
    pub dirty_rate: f64,
    /// Measured bandwidth, bytes per second.
    pub bandwidth: f64,
    /// Expected downtime if the switchover came now, ms (infinite before
    /// anything was measured).
    pub expected_downtime_ms: f64,
    /// The device throttle in force during this round, percent.
    pub throttle_percent: u32,
}

/// The expected downtime: what is left over the measured bandwidth, plus
/// the measured fixed costs ([`FixedCosts`]).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Estimate {
    /// RAM and device bytes a stop would move now, over the bandwidth, ms.
    pub transfer_ms: f64,
    /// [`FixedCosts::total_ms`].
    pub fixed_ms: f64,
}

impl Estimate {
    /// The whole expected downtime, ms.
    pub fn total_ms(&self) -> f64 {
        self.transfer_ms + self.fixed_ms
    }
}

/// What a switchover costs whatever it moves, measured during this
/// migration: round trips to the destination (END → READY and GO →
/// RUNNING) and device state changes (two at the source, two at the
/// destination, and one register read each side for the digests, each
/// costed as the source devices' measured RUNNING → PRE_COPY change).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FixedCosts {
    /// Shortest time from a round marker to its acknowledgement, ms (the
    /// link's round trip plus the destination's turnaround).
    pub round_trip_ms: f64,
    /// Sum over devices of one measured state change, ms.
    pub device_change_ms: f64,
}

impl FixedCosts {
    /// Round trips and device steps of a switchover, ms.
    pub fn total_ms(&self) -> f64 {
        2.0 * self.round_trip_ms + 6.0 * self.device_change_ms
    }

    /// A round marker was acknowledged `took` after it was sent.
    pub fn round_trip(&mut self, took: Duration) {
        let t = ms(took);
        if self.round_trip_ms == 0.0 || t < self.round_trip_ms {
            self.round_trip_ms = t;
        }
    }
}

/// Where the downtime went, ms. Measured at the source from the stop to
/// the destination's RUNNING, part after part, so the parts add up to
/// the downtime; the destination's share is split with the times it
/// reports in READY.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct DowntimeBreakdown {
    /// Pausing the vCPUs and moving devices through P2P to STOP_COPY.
    pub stop_ms: f64,
    /// Reading the devices' stop-copy data and sending it.
    pub device_stop_copy_ms: f64,
    /// Fetching the final dirty logs (vCPU and device DMA).
    pub final_dirty_ms: f64,
    /// Sending the final dirty pages and the end marker.
    pub final_ram_ms: f64,
    /// Reading the source devices' digests (incremental: only pages
    /// dirtied since they were sent are hashed).
    pub source_digest_ms: f64,
    /// The destination finishing the load of what was sent while stopped,
    /// and the link (what is left of the wait for READY).
    pub dest_load_ms: f64,
    /// The destination devices leaving RESUMING for STOP (validation).
    pub dest_validate_ms: f64,
    /// The destination reading its digests.
    pub dest_digest_ms: f64,
    /// Comparing digests, GO, the destination devices to RUNNING, and its
    /// RUNNING answer.
    pub resume_ms: f64,
}

/// A part of the downtime ([`DowntimeBreakdown`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// [`DowntimeBreakdown::stop_ms`].
    Stop,
    /// [`DowntimeBreakdown::device_stop_copy_ms`].
    DeviceStopCopy,
    /// [`DowntimeBreakdown::final_dirty_ms`].
    FinalDirty,
    /// [`DowntimeBreakdown::final_ram_ms`].
    FinalRam,
    /// [`DowntimeBreakdown::source_digest_ms`].
    SourceDigest,
    /// Waiting for READY: split into load, validate and digests.
    Destination,
    /// [`DowntimeBreakdown::resume_ms`].
    Resume,
}

impl DowntimeBreakdown {
    /// Sum of the parts, ms.
    pub fn total_ms(&self) -> f64 {
        self.stop_ms
            + self.device_stop_copy_ms
            + self.final_dirty_ms
            + self.final_ram_ms
            + self.source_digest_ms
            + self.dest_load_ms
            + self.dest_validate_ms
            + self.dest_digest_ms
            + self.resume_ms
    }

    fn add(&mut self, part: Part, t: f64) {
        let f = match part {
            Part::Stop => &mut self.stop_ms,
            Part::DeviceStopCopy => &mut self.device_stop_copy_ms,
            Part::FinalDirty => &mut self.final_dirty_ms,
            Part::FinalRam => &mut self.final_ram_ms,
            Part::SourceDigest => &mut self.source_digest_ms,
            Part::Destination => &mut self.dest_load_ms,
            Part::Resume => &mut self.resume_ms,
        };
        *f += t;
    }

    /// Splits the wait for the destination with what it reported: its
    /// validation and digest times (each at most what is left of the
    /// wait), the rest being the load and the link.
    pub fn split_destination(&mut self, validate_ms: f64, digest_ms: f64) {
        let wait = self.dest_load_ms;
        let v = validate_ms.clamp(0.0, wait);
        let d = digest_ms.clamp(0.0, wait - v);
        self.dest_validate_ms = v;
        self.dest_digest_ms = d;
        self.dest_load_ms = wait - v - d;
    }
}

impl Metrics {
    /// Measurements of a migration starting now.
    pub fn start() -> Self {
        Self {
            t0: Instant::now(),
            precopy_start: None,
            stop_start: None,
            stopped: None,
            sent: None,
            resumed: None,
            busy: Duration::ZERO,
            busy_bytes: 0,
            ram_bytes: 0,
            ram_zero_pages: 0,
            ram_bytes_stopped: 0,
            device_bytes: 0,
            device_bytes_stopped: 0,
            rounds: 0,
            converged: false,
            expected_downtime_ms: 0.0,
            dest_digest_ms: 0.0,
            verify_ms: 0.0,
            rounds_log: Vec::new(),
            estimate: Estimate::default(),
            fixed: FixedCosts::default(),
            breakdown: DowntimeBreakdown::default(),
            lap_from: None,
            forced: false,
            max_throttle: 0,
            reinits: 0,
        }
    }

    /// The downtime starts now (the first part starts).
    pub fn stop_now(&mut self) {
        let now = Instant::now();
        self.stop_start = Some(now);
        self.lap_from = Some(now);
    }

    /// The downtime part `part` ends now (the next one starts).
    pub fn lap(&mut self, part: Part) {
        let now = Instant::now();
        if let Some(from) = self.lap_from.replace(now) {
            self.breakdown
                .add(part, ms(now.saturating_duration_since(from)));
        }
    }

    /// A round moved `bytes` in `took`.
    pub fn busy(&mut self, bytes: u64, took: Duration) {
        self.busy += took;
        self.busy_bytes += bytes;
    }

    /// Measured bandwidth, bytes/s (0 = not measured yet).
    pub fn bandwidth(&self) -> f64 {
        if self.busy.is_zero() {
            0.0
        } else {
            self.busy_bytes as f64 / self.busy.as_secs_f64()
        }
    }

    fn between(a: Option<Instant>, b: Option<Instant>) -> f64 {
        match (a, b) {
            (Some(a), Some(b)) if b >= a => ms(b - a),
            _ => 0.0,
        }
    }

    /// Writes the figures into `r` (`transferred` stream bytes in all).
    pub fn fill(&self, r: &mut MigrationReport, transferred: u64) {
        let total = self.t0.elapsed();
        r.total_ms = ms(total);
        r.setup_ms = Self::between(Some(self.t0), self.precopy_start);
        r.precopy_ms = Self::between(self.precopy_start, self.stop_start);
        r.stop_ms = Self::between(self.stop_start, self.stopped);
        r.final_transfer_ms = Self::between(self.stopped, self.sent);
        r.resume_ms = Self::between(self.sent, self.resumed);
        r.downtime_ms = Self::between(self.stop_start, self.resumed);
        r.dest_digest_ms = self.dest_digest_ms;
        r.verify_ms = self.verify_ms;
        r.precopy_iterations = self.rounds;
        r.converged = self.converged;
        r.expected_downtime_ms = self.expected_downtime_ms;
        r.expected_transfer_ms = self.estimate.transfer_ms;
        r.expected_fixed_ms = self.estimate.fixed_ms;
        r.downtime_breakdown = self.breakdown;
        r.rounds = self.rounds_log.clone();
        r.forced = self.forced;
        r.max_throttle_percent = self.max_throttle;
        r.reinits = self.reinits;
        // A promise only pre-copy can keep.
        r.downtime_limit_exceeded =
            r.precopy && self.stop_start.is_some() && r.downtime_ms > r.downtime_limit_ms;
        r.transferred_bytes = transferred;
        r.ram_bytes = self.ram_bytes;
        r.ram_zero_pages = self.ram_zero_pages;
        r.ram_bytes_stopped = self.ram_bytes_stopped;
        r.device_bytes = self.device_bytes;
        r.device_bytes_stopped = self.device_bytes_stopped;
        r.throughput_bytes_per_sec = transferred as f64 / total.as_secs_f64().max(1e-9);
        r.bandwidth_bytes_per_sec = self.bandwidth();
    }
}
