//! Why a migration failed: what went wrong, where (which device or peer)
//! and in which phase — and, on the source, what state it was left in.
//! Every failure is a variant a caller can match.

use crate::format::{Kind, StreamError};
use crate::progress::Phase;
use crate::report::MigrationReport;
use thiserror::Error;
use vfio_migrate_backend::{BackendError, MigState};

/// A failed migration step.
#[derive(Debug, Error)]
pub enum EngineError {
    /// A device refused or its channel failed.
    #[error("{phase}: device {device}: {source}")]
    Device {
        /// Where the migration was.
        phase: Phase,
        /// The device's name.
        device: String,
        /// What the backend reported.
        #[source]
        source: BackendError,
    },
    /// The stream (socket or file) failed or held bad data.
    #[error("{phase}: stream {peer}: {source}")]
    Stream {
        /// Where the migration was.
        phase: Phase,
        /// The other end.
        peer: String,
        /// What was wrong.
        #[source]
        source: StreamError,
    },
    /// The destination refused the migration at setup.
    #[error("{phase}: the destination {peer} refused the migration: {reason}")]
    Refused {
        /// Where the migration was.
        phase: Phase,
        /// The destination.
        peer: String,
        /// Its reason.
        reason: String,
    },
    /// The destination reported a failure after accepting.
    #[error("{phase}: the destination {peer} failed: {reason}")]
    DestinationFailed {
        /// Where the migration was.
        phase: Phase,
        /// The destination.
        peer: String,
        /// Its reason.
        reason: String,
    },
    /// The source gave up (seen on the destination).
    #[error("{phase}: the source {peer} aborted the migration: {reason}")]
    SourceAborted {
        /// Where the migration was.
        phase: Phase,
        /// The source.
        peer: String,
        /// Its reason.
        reason: String,
    },
    /// The peer did not answer in time.
    #[error("{phase}: {peer} did not answer within {secs} s (waiting for {what})")]
    Timeout {
        /// Where the migration was.
        phase: Phase,
        /// Who did not answer.
        peer: String,
        /// What was awaited.
        what: &'static str,
        /// The deadline, seconds.
        secs: u64,
    },
    /// Nothing moved on the link for the stall timeout: the peer process,
    /// its host or the network stopped.
    #[error("{phase}: {detail}; giving up (see --stall-timeout)")]
    Stalled {
        /// Where the migration was.
        phase: Phase,
        /// The peer.
        peer: String,
        /// What did not move, and for how long.
        detail: String,
    },
    /// A parallel data channel could not be set up, broke, or carried
    /// something out of place (`--channels`).
    #[error("{phase}: {detail}")]
    Channel {
        /// Where the migration was.
        phase: Phase,
        /// Which channel, its peer, and what happened.
        detail: String,
    },
    /// Cancelled by the caller (Ctrl-C).
    #[error("{phase}: cancelled by the user")]
    Cancelled {
        /// Where the migration was.
        phase: Phase,
    },
    /// Guest RAM could not be read or written.
    #[error("{phase}: guest RAM: {source}")]
    Guest {
        /// Where the migration was.
        phase: Phase,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Nothing to migrate.
    #[error("setup: no device to migrate")]
    NoDevices,
    /// More devices than one stream carries.
    #[error("setup: {count} devices; one stream carries at most {max}")]
    TooManyDevices {
        /// Devices given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A source device is in a state a migration cannot start from.
    #[error("setup: device {device} is in {state}; a migration source must be RUNNING (or STOP)")]
    NotASource {
        /// The device.
        device: String,
        /// Its state.
        state: MigState,
    },
    /// The source device was migrated out already and is stopped: its
    /// state went to a destination that may be running it.
    #[error("setup: device {device} was migrated out already and has not run since: a destination may be running its state, and migrating it again would make two running copies. If the destination did not take over, resume it (vfio-migrate device {device} set-state RUNNING); --force migrates it anyway")]
    AlreadyMigrated {
        /// The device.
        device: String,
    },
    /// A device descriptor does not fit in a record.
    #[error("setup: device {device}: descriptor of {bytes} bytes is too large")]
    DescriptorTooLarge {
        /// The device.
        device: String,
        /// Its size.
        bytes: usize,
    },
    /// The guest RAM page size cannot be carried.
    #[error("setup: guest page size {page_size} is not a power of two up to 2 MiB")]
    BadPageSize {
        /// The page size.
        page_size: u64,
    },
    /// Pre-copy with guest RAM needs every device to log its DMA writes.
    #[error("{phase}: device {device} cannot log its DMA writes, so guest RAM it writes during pre-copy would be lost; migrate it with pre-copy off")]
    NoDmaLogging {
        /// Where the migration was.
        phase: Phase,
        /// The device.
        device: String,
    },
    /// The peer sent a message that is valid but not expected now.
    #[error("{phase}: the destination {peer} answered out of turn (a {got} record)")]
    OutOfTurn {
        /// Where the migration was.
        phase: Phase,
        /// The peer.
        peer: String,
        /// What it sent.
        got: Kind,
    },
    /// The destination cannot take the state (seen on the destination).
    #[error("setup: incompatible: {reason}")]
    Incompatible {
        /// Every mismatch.
        reason: String,
    },
    /// A destination device left RESUMING while loading.
    #[error("{phase}: device {device} left RESUMING (it is {state}): someone else is using it")]
    LeftResuming {
        /// Where the migration was.
        phase: Phase,
        /// The device.
        device: String,
        /// Its state now.
        state: MigState,
    },
    /// A device's digest differs between source and destination.
    #[error("{phase}: device {device}: digest {source_digest:#018x} at the source, {dest_digest:#018x} at the destination; the destination was not started")]
    DigestMismatch {
        /// Where the migration was.
        phase: Phase,
        /// The device.
        device: String,
        /// At the source.
        source_digest: u64,
        /// At the destination.
        dest_digest: u64,
    },
    /// The destination reported digests for another number of devices.
    #[error("{phase}: the destination reported {got} device digests for {expected} devices")]
    DigestCount {
        /// Where the migration was.
        phase: Phase,
        /// Devices migrated.
        expected: usize,
        /// Digests reported.
        got: usize,
    },
    /// Guest RAM differs between source and destination.
    #[error("{phase}: guest RAM differs: source hash {source_hash:#018x}, destination hash {dest_hash:#018x}")]
    RamMismatch {
        /// Where the migration was.
        phase: Phase,
        /// At the source.
        source_hash: u64,
        /// At the destination.
        dest_hash: u64,
    },
    /// Pre-copy could not bring the expected downtime under the limit
    /// within the rounds or the time allowed (`--on-no-converge abort`).
    #[error("pre-copy: did not converge after {rounds} round(s) in {secs:.1} s: {}; the source keeps running", if *unacked { "the destination never acknowledged that it loaded the devices' initial data (switchover-ack), and the source does not stop before it does".to_string() } else { format!("the expected downtime is {expected_ms:.1} ms, above the limit of {limit_ms:.0} ms, because the guest and devices dirty {} while the link moves {}{} (raise --downtime-limit, --max-iterations or --converge-timeout, slow the workload, or pass --on-no-converge force to switch over anyway)", rate(*dirty_rate), rate(*bandwidth), if *throttle > 0 { format!(" (with the devices throttled by {throttle}%)") } else { String::new() }) })]
    NoConvergence {
        /// Rounds run.
        rounds: u32,
        /// Time in pre-copy, seconds.
        secs: f64,
        /// The last estimate, ms.
        expected_ms: f64,
        /// The limit, ms.
        limit_ms: f64,
        /// Bytes dirtied per second in the last round.
        dirty_rate: f64,
        /// Measured bandwidth, bytes per second.
        bandwidth: f64,
        /// Device throttle reached, percent.
        throttle: u32,
        /// The destination had not acknowledged every device's initial
        /// data.
        unacked: bool,
    },
    /// An incremental hash differs from the full re-hash of the same
    /// memory (`--full-verify`): the incremental bookkeeping missed a
    /// change.
    #[error("{phase}: {what}: the incremental hash {incremental:#018x} differs from the full re-hash {full:#018x}")]
    IncrementalMismatch {
        /// Where the migration was.
        phase: Phase,
        /// What was hashed.
        what: String,
        /// Kept as pages moved.
        incremental: u64,
        /// Hashed whole.
        full: u64,
    },
    /// After a snapshot, the source could not be put back as it was.
    #[error("cleanup: {}", .problems.join("; "))]
    RestoreFailed {
        /// What could not be restored.
        problems: Vec<String>,
    },
}

/// A byte rate for messages: `12.3 MiB/s`.
fn rate(bps: f64) -> String {
    if !bps.is_finite() || bps <= 0.0 {
        return "an unmeasured rate".into();
    }
    format!("{:.1} MiB/s", bps / (1024.0 * 1024.0))
}

impl EngineError {
    /// The phase the failure happened in.
    pub fn phase(&self) -> Phase {
        match self {
            EngineError::Device { phase, .. }
            | EngineError::Stream { phase, .. }
            | EngineError::Refused { phase, .. }
            | EngineError::DestinationFailed { phase, .. }
            | EngineError::SourceAborted { phase, .. }
            | EngineError::Timeout { phase, .. }
            | EngineError::Stalled { phase, .. }
            | EngineError::Channel { phase, .. }
            | EngineError::Cancelled { phase }
            | EngineError::Guest { phase, .. }
            | EngineError::NoDmaLogging { phase, .. }
            | EngineError::OutOfTurn { phase, .. }
            | EngineError::LeftResuming { phase, .. }
            | EngineError::DigestMismatch { phase, .. }
            | EngineError::DigestCount { phase, .. }
            | EngineError::RamMismatch { phase, .. }
            | EngineError::IncrementalMismatch { phase, .. } => *phase,
            EngineError::NoConvergence { .. } => Phase::PreCopy,
            EngineError::NoDevices
            | EngineError::TooManyDevices { .. }
            | EngineError::NotASource { .. }
            | EngineError::AlreadyMigrated { .. }
            | EngineError::DescriptorTooLarge { .. }
            | EngineError::BadPageSize { .. }
            | EngineError::Incompatible { .. } => Phase::Setup,
            EngineError::RestoreFailed { .. } => Phase::Cleanup,
        }
    }

    /// A device error in `phase`.
    pub fn device(phase: Phase, device: impl Into<String>, source: BackendError) -> Self {
        EngineError::Device {
            phase,
            device: device.into(),
            source,
        }
    }

    /// A stream error in `phase`: a wait the link gave up on becomes
    /// [`EngineError::Stalled`], one a cancel ended [`EngineError::Cancelled`].
    pub fn stream(phase: Phase, peer: impl Into<String>, source: StreamError) -> Self {
        if let StreamError::Io { source: io, .. } = &source {
            if crate::cancel::Cancelled::is(io) {
                return EngineError::Cancelled { phase };
            }
            if io.kind() == std::io::ErrorKind::TimedOut {
                return EngineError::Stalled {
                    phase,
                    peer: peer.into(),
                    detail: io.to_string(),
                };
            }
        }
        EngineError::Stream {
            phase,
            peer: peer.into(),
            source,
        }
    }
}

/// What the source was left as after a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    /// Rolled back: every device in its original state (RUNNING), DMA
    /// logging off, vCPUs running.
    Restored,
    /// Rolling back failed for some devices; each entry says which and why.
    RollbackIncomplete(Vec<String>),
    /// The destination had been told to run: the source stays stopped so
    /// that two copies never run; the destination's state is unknown.
    Committed,
}

/// A failed source-side migration.
#[derive(Debug, Error)]
#[error("{error}; {}", describe(.state, .devices))]
pub struct SourceFailure {
    /// What failed.
    #[source]
    pub error: EngineError,
    /// What the source was left as.
    pub state: SourceState,
    /// Each source device and the state it was read back in afterwards
    /// (`None`: it could not be read).
    pub devices: Vec<(String, Option<MigState>)>,
    /// Figures up to the failure (`status` = `failed`).
    pub report: Box<MigrationReport>,
}

fn states(devices: &[(String, Option<MigState>)]) -> String {
    let v: Vec<String> = devices
        .iter()
        .map(|(n, s)| match s {
            Some(s) => format!("{n} is {s}"),
            None => format!("{n} did not answer (its state is unknown)"),
        })
        .collect();
    v.join(", ")
}

fn describe(s: &SourceState, devices: &[(String, Option<MigState>)]) -> String {
    match s {
        SourceState::Restored if devices.is_empty() => {
            "nothing at the source was changed".to_string()
        }
        SourceState::Restored => format!("the source was rolled back: {}", states(devices)),
        SourceState::RollbackIncomplete(p) => format!(
            "rolling the source back failed: {} ({})",
            p.join("; "),
            states(devices)
        ),
        SourceState::Committed => format!(
            "the destination was told to run but did not confirm it did: the outcome is unknown. The source is kept stopped so that two copies never run ({}). Check the destination; if it is not running, resume the source with `vfio-migrate device SOURCE set-state RUNNING`",
            states(devices)
        ),
    }
}
