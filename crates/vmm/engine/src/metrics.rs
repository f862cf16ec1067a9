//! What a source-side migration measures while it runs — clocks of its
//! phases, bytes by kind, the bandwidth estimate — kept apart from the
//! logic that moves data, and turned into the [`MigrationReport`] at the
//! end.

use crate::report::MigrationReport;
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
