//! Why a migration failed: what went wrong, where (which device or peer)
//! and in which phase — and, on the source, what state it was left in.

use crate::format::StreamError;
use crate::progress::Phase;
use crate::report::MigrationReport;
use thiserror::Error;
use vfio_migrate_backend::BackendError;

/// A failed migration step.
#[derive(Debug, Error)]
pub enum EngineError {
    /// A device refused or its channel failed.
    #[error("{phase}: device {device}: {source}")]
    Device {
        phase: Phase,
        device: String,
        #[source]
        source: BackendError,
    },
    /// The stream (socket or file) failed or held bad data.
    #[error("{phase}: stream {peer}: {source}")]
    Stream {
        phase: Phase,
        peer: String,
        #[source]
        source: StreamError,
    },
    /// The destination refused the migration at setup.
    #[error("{phase}: the destination {peer} refused the migration: {reason}")]
    Refused {
        phase: Phase,
        peer: String,
        reason: String,
    },
    /// The destination reported a failure after accepting.
    #[error("{phase}: the destination {peer} failed: {reason}")]
    DestinationFailed {
        phase: Phase,
        peer: String,
        reason: String,
    },
    /// The source gave up (seen on the destination).
    #[error("{phase}: the source {peer} aborted the migration: {reason}")]
    SourceAborted {
        phase: Phase,
        peer: String,
        reason: String,
    },
    /// The peer did not answer in time.
    #[error("{phase}: {peer} did not answer within {secs} s (waiting for {what})")]
    Timeout {
        phase: Phase,
        peer: String,
        what: &'static str,
        secs: u64,
    },
    /// Cancelled by the caller (Ctrl-C).
    #[error("{phase}: cancelled by the user")]
    Cancelled { phase: Phase },
    /// Guest RAM could not be read or written.
    #[error("{phase}: guest RAM: {source}")]
    Guest {
        phase: Phase,
        #[source]
        source: std::io::Error,
    },
    /// The request cannot be carried out as given (incompatible devices,
    /// a device in the wrong state, a verification mismatch, …).
    #[error("{phase}: {what}")]
    Invalid { phase: Phase, what: String },
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
            | EngineError::Cancelled { phase }
            | EngineError::Guest { phase, .. }
            | EngineError::Invalid { phase, .. } => *phase,
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

    /// A request that cannot be carried out.
    pub fn invalid(phase: Phase, what: impl Into<String>) -> Self {
        EngineError::Invalid {
            phase,
            what: what.into(),
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
#[error("{error}; {}", describe(.state))]
pub struct SourceFailure {
    /// What failed.
    #[source]
    pub error: EngineError,
    /// What the source was left as.
    pub state: SourceState,
    /// Figures up to the failure (`status` = `failed`).
    pub report: Box<MigrationReport>,
}

fn describe(s: &SourceState) -> String {
    match s {
        SourceState::Restored => "the source was rolled back and is RUNNING".into(),
        SourceState::RollbackIncomplete(p) => format!("rolling the source back failed: {}", p.join("; ")),
        SourceState::Committed => {
            "the destination had already been told to run, so the source is left stopped: check the destination".into()
        }
    }
}
