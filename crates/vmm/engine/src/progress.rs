//! Phases of a migration and the progress figures reported while it runs.

use serde::Serialize;
use std::time::{Duration, Instant};

/// Where a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Connecting, probing, compatibility check, DMA logging on.
    Setup,
    /// Pre-copy rounds while everything runs.
    PreCopy,
    /// Guest and devices stopped; final data moving.
    StopCopy,
    /// The destination validates, verifies and starts.
    Resume,
    /// Logging off, source devices parked.
    Cleanup,
    /// Finished.
    Done,
}

impl Phase {
    /// Name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::PreCopy => "pre-copy",
            Phase::StopCopy => "stop-copy",
            Phase::Resume => "resume",
            Phase::Cleanup => "cleanup",
            Phase::Done => "done",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A progress report, emitted at every pre-copy round boundary and phase
/// change (`tick` false), and in between at least every
/// [`TICK_INTERVAL`] while data moves (`tick` true).
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// The phase the migration is in.
    pub phase: Phase,
    /// Pre-copy rounds completed.
    pub iteration: u32,
    /// Bytes still to send: dirty RAM plus the devices' pending data.
    pub remaining_bytes: u64,
    /// Bytes sent so far (stream bytes).
    pub transferred_bytes: u64,
    /// Bytes dirtied per second (RAM and devices) in the last round.
    pub dirty_rate: f64,
    /// Measured stream bandwidth, bytes per second (0 = not measured yet).
    pub bandwidth: f64,
    /// Expected downtime if the switchover happened now, ms (transfer
    /// plus measured fixed costs, like QEMU's expected downtime).
    pub expected_downtime_ms: f64,
    /// Device throttle in force, percent (0: none).
    pub throttle_percent: u32,
    /// Time since the migration started.
    #[serde(skip)]
    pub elapsed: Duration,
    /// An update inside a round or phase (bytes moved since the last
    /// boundary), not a boundary itself.
    pub tick: bool,
}

/// How often progress is reported while data moves inside a round.
pub const TICK_INTERVAL: Duration = Duration::from_millis(250);

/// Turns the last boundary report into in-between updates: the remaining
/// bytes shrink by what was sent since.
#[derive(Debug, Clone)]
pub(crate) struct Ticker {
    last: Instant,
    base: Option<Progress>,
    base_sent: u64,
}

impl Ticker {
    pub(crate) fn new() -> Self {
        Self {
            last: Instant::now(),
            base: None,
            base_sent: 0,
        }
    }

    /// A boundary report was emitted.
    pub(crate) fn boundary(&mut self, p: &Progress) {
        self.last = Instant::now();
        self.base_sent = p.transferred_bytes;
        self.base = Some(p.clone());
    }

    /// An in-between update when one is due: `sent` stream bytes so far.
    pub(crate) fn due(&mut self, sent: u64, elapsed: Duration) -> Option<Progress> {
        if self.last.elapsed() < TICK_INTERVAL {
            return None;
        }
        let base = self.base.as_ref()?;
        self.last = Instant::now();
        let moved = sent.saturating_sub(self.base_sent);
        Some(Progress {
            remaining_bytes: base.remaining_bytes.saturating_sub(moved),
            transferred_bytes: sent,
            elapsed,
            tick: true,
            ..base.clone()
        })
    }
}

/// A progress callback.
pub type ProgressFn = Box<dyn FnMut(&Progress) + Send>;
