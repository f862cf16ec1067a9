//! Cancelling a migration from outside (Ctrl-C, a caller's timeout).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A cancel flag the engine polls between steps. Cancelling before the
/// destination is told to run rolls the source back; after that it has no
/// effect.
#[derive(Clone, Default)]
pub struct Cancel {
    flag: Arc<AtomicBool>,
    external: Option<&'static AtomicBool>,
}

impl Cancel {
    /// A fresh, uncancelled flag.
    pub fn new() -> Self {
        Self::default()
    }

    /// A flag that is also cancelled when `external` becomes true (e.g. set
    /// by a signal handler, which can only touch a static).
    pub fn with_static(external: &'static AtomicBool) -> Self {
        Self {
            flag: Arc::default(),
            external: Some(external),
        }
    }

    /// Requests cancellation.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    /// True once cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst) || self.external.is_some_and(|e| e.load(Ordering::SeqCst))
    }
}
