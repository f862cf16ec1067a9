//! Cancelling a migration from outside (Ctrl-C, SIGTERM, a caller's
//! timeout, a control socket): a flag the engine checks between steps and
//! a wake-up fd that every blocking wait (socket reads and writes,
//! connects, accepts, device replies) polls beside its own fd, so a
//! cancel interrupts a wait at once instead of after it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vfio_migrate_sys::fd::{pipe, poll, write};

/// The error inside an `io::Error` from a wait that a cancel ended (not
/// `ErrorKind::Interrupted`, which readers retry as EINTR).
#[derive(Debug, Clone, Copy)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}

impl Cancelled {
    /// An `io::Error` carrying [`Cancelled`].
    pub fn io() -> io::Error {
        io::Error::other(Cancelled)
    }

    /// True when `e` came from a cancelled wait.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|x| x.is::<Cancelled>())
    }
}

struct Inner {
    flag: AtomicBool,
    /// Read end: readable once cancelled (never drained).
    r: OwnedFd,
    /// Write end: one byte is written on cancel (also by a signal handler,
    /// for which it must live as long as the process).
    w: WriteEnd,
    /// Installed for signals: which one came is asked of the handler.
    signals: bool,
}

enum WriteEnd {
    Owned(OwnedFd),
    Static(&'static OwnedFd),
}

impl WriteEnd {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            WriteEnd::Owned(f) => f.as_fd(),
            WriteEnd::Static(f) => f.as_fd(),
        }
    }
}

/// A cancel flag with a wake-up fd. Clones share it. Cancelling before
/// the destination is told to run rolls the source back; after that it
/// has no effect on the source.
#[derive(Clone)]
pub struct Cancel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Default for Cancel {
    fn default() -> Self {
        Self::new()
    }
}

impl Cancel {
    /// A fresh, uncancelled flag.
    ///
    /// # Panics
    ///
    /// When the process is out of file descriptors (the wake-up pipe
    /// cannot be made); [`Cancel::try_new`] reports that instead.
    pub fn new() -> Self {
        Self::try_new().expect("creating the cancel pipe")
    }

    /// A fresh, uncancelled flag, or why its wake-up pipe could not be
    /// made.
    pub fn try_new() -> io::Result<Self> {
        Self::make(false)
    }

    fn make(signals: bool) -> io::Result<Self> {
        let (r, w) = pipe(libc::O_CLOEXEC | libc::O_NONBLOCK)?;
        // For signals the write end lives for the process: a handler may
        // write to it at any time, so it must never be closed.
        let w = if signals {
            WriteEnd::Static(Box::leak(Box::new(w)))
        } else {
            WriteEnd::Owned(w)
        };
        Ok(Self {
            inner: Arc::new(Inner {
                flag: AtomicBool::new(false),
                r,
                w,
                signals,
            }),
        })
    }

    /// A flag that SIGINT and SIGTERM also cancel. A second such signal
    /// ends the process at once (status 128 + signal); [`Cancel::signal`]
    /// tells which signal cancelled.
    pub fn on_signals() -> io::Result<Self> {
        let c = Self::make(true)?;
        let WriteEnd::Static(w) = c.inner.w else {
            unreachable!("made for signals")
        };
        vfio_migrate_sys::signal::cancel_on(&[libc::SIGINT, libc::SIGTERM], w.as_fd())?;
        Ok(c)
    }

    /// Requests cancellation: every wait that watches
    /// [`Cancel::watch_fd`] wakes up.
    pub fn cancel(&self) {
        if !self.inner.flag.swap(true, Ordering::SeqCst) {
            let _ = write(self.inner.w.fd(), &[1]);
        }
    }

    /// True once cancellation was requested (by [`Cancel::cancel`] or a
    /// signal).
    pub fn is_cancelled(&self) -> bool {
        if self.inner.flag.load(Ordering::SeqCst) {
            return true;
        }
        let mut p = [libc::pollfd {
            fd: self.inner.r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if matches!(poll(&mut p, 0), Ok(n) if n > 0) {
            self.inner.flag.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// An fd that becomes readable (and stays so) once cancelled: poll it
    /// beside the fd a wait is for.
    pub fn watch_fd(&self) -> BorrowedFd<'_> {
        self.inner.r.as_fd()
    }

    /// A duplicate of [`Cancel::watch_fd`] that lives on its own (for a
    /// component that cannot hold a `Cancel`, such as a device client).
    pub fn watch_fd_owned(&self) -> io::Result<OwnedFd> {
        self.inner.r.try_clone()
    }

    /// The signal that cancelled, when this flag was made with
    /// [`Cancel::on_signals`] and a signal came.
    pub fn signal(&self) -> Option<i32> {
        if self.inner.signals {
            vfio_migrate_sys::signal::cancel_signal()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_wakes_the_watch_fd_and_sticks() {
        let c = Cancel::new();
        let d = c.clone();
        assert!(!c.is_cancelled());
        let mut p = [libc::pollfd {
            fd: c.watch_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        assert_eq!(poll(&mut p, 0).unwrap(), 0);
        d.cancel();
        d.cancel();
        assert!(c.is_cancelled());
        assert_eq!(poll(&mut p, 0).unwrap(), 1);
        assert_eq!(c.signal(), None);
        // A duplicate of the watch fd sees it too.
        let owned = c.watch_fd_owned().unwrap();
        let mut q = [libc::pollfd {
            fd: owned.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        assert_eq!(poll(&mut q, 0).unwrap(), 1);
    }
}
