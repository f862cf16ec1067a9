//! Ctrl-C: a SIGINT handler that only sets a flag, which the engine polls
//! (through [`vfio_migrate_engine::Cancel`]) and answers by rolling back.

use std::sync::atomic::{AtomicBool, Ordering};
use vfio_migrate_engine::Cancel;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handler (SIGINT and SIGTERM) and returns the cancel flag
/// it sets.
pub fn install() -> anyhow::Result<Cancel> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a handler that only stores to an
        // atomic (async-signal-safe); the return value is checked.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                anyhow::bail!(
                    "installing the signal handler: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    Ok(Cancel::with_static(&INTERRUPTED))
}

/// True once SIGINT/SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
