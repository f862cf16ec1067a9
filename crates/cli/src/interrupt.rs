//! Ctrl-C: a SIGINT handler that only sets a flag, which the engine polls
//! (through [`vfio_migrate_engine::Cancel`]) and answers by rolling back.

use std::sync::atomic::{AtomicBool, Ordering};
use vfio_migrate_engine::Cancel;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler (SIGINT and SIGTERM) and returns the cancel flag
/// it sets.
pub fn install() -> anyhow::Result<Cancel> {
    vfio_migrate_sys::signal::set_flag_on(&[libc::SIGINT, libc::SIGTERM], &INTERRUPTED)
        .map_err(|e| anyhow::anyhow!("installing the signal handler: {e}"))?;
    Ok(Cancel::with_static(&INTERRUPTED))
}

/// True once SIGINT/SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
