//! Exit codes, the same for every command (documented in `--help` and the
//! README).
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done (and verified, where verification applies) |
//! | 1 | failed; the source device is back in the state it started in |
//! | 2 | usage error: nothing was done |
//! | 3 | outcome unknown: the destination was told to run but did not confirm; the source is kept stopped |
//! | 4 | failed, and putting the source back failed too (the message says where each device is) |
//! | 130, 143 | cancelled by SIGINT / SIGTERM; the source was rolled back |

use vfio_migrate_engine::{Cancel, SourceFailure, SourceState};

/// Failed, the source restored.
pub const FAILED: i32 = 1;
/// Bad arguments.
pub const USAGE: i32 = 2;
/// Outcome unknown, the source kept stopped.
pub const UNKNOWN: i32 = 3;
/// Failed and the rollback failed.
pub const ROLLBACK_FAILED: i32 = 4;

/// Text for `--help`.
pub const HELP: &str = "Exit status: 0 done; 1 failed, the source device is back in the state it started in; \
2 usage error; 3 outcome unknown: the destination was told to run but did not confirm, the source is kept \
stopped (check the destination before resuming the source); 4 failed and the rollback failed too; \
130/143 cancelled by SIGINT/SIGTERM (rolled back). A second Ctrl-C exits at once.";

/// The status for a failed source-side migration.
pub fn for_source_failure(f: &SourceFailure, cancel: &Cancel) -> i32 {
    match &f.state {
        SourceState::Committed => UNKNOWN,
        SourceState::RollbackIncomplete(_) => ROLLBACK_FAILED,
        SourceState::Restored => cancelled(cancel).unwrap_or(FAILED),
    }
}

/// The status for an error that ended a command before (or outside) the
/// engine's own report: a usage error, a cancel by SIGINT/SIGTERM (the
/// error is then the wait that the signal ended, e.g. a connect or a TLS
/// handshake: nothing was started, nothing to roll back), else a failure.
pub fn for_error(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<Usage>().is_some() {
        USAGE
    } else if let Some(sig) = vfio_migrate_sys::signal::cancel_signal() {
        128 + sig
    } else {
        FAILED
    }
}

/// 128 + the signal that cancelled, if a signal did.
pub fn cancelled(cancel: &Cancel) -> Option<i32> {
    if cancel.is_cancelled() {
        Some(128 + cancel.signal().unwrap_or(libc::SIGINT))
    } else {
        None
    }
}

/// A mistake in the command line: reported and exits with [`USAGE`].
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Wraps any error as a usage error.
pub fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Usage(format!("{e:#}")))
}
