//! Clean shutdown: a pipe whose read end every server wait watches, written
//! by [`Shutdown::trigger`] or by a SIGTERM/SIGINT handler.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use vfio_migrate_sys as sys;

/// A shutdown request channel. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Shutdown {
    r: Arc<OwnedFd>,
    w: Arc<OwnedFd>,
}

impl Shutdown {
    /// A new, untriggered channel.
    pub fn new() -> io::Result<Self> {
        let (r, w) = sys::fd::pipe(libc::O_CLOEXEC | libc::O_NONBLOCK)?;
        Ok(Self {
            r: Arc::new(r),
            w: Arc::new(w),
        })
    }

    /// Asks the server to stop (idempotent: a full pipe means a request is
    /// already pending).
    pub fn trigger(&self) {
        let _ = sys::fd::write(self.w.as_fd(), &[1]);
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        let mut p = [libc::pollfd {
            fd: self.r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        matches!(sys::fd::poll(&mut p, 0), Ok(1))
    }

    /// The fd that becomes readable on shutdown (for poll).
    pub fn watch_fd(&self) -> RawFd {
        self.r.as_raw_fd()
    }

    /// Triggers this channel on SIGTERM and SIGINT (process-wide; the last
    /// channel installed wins).
    pub fn on_signals(&self) -> io::Result<()> {
        // The handler writes to the pipe for as long as the process may get
        // a signal: keep the write end open forever (leak one reference).
        let w: &'static Arc<OwnedFd> = Box::leak(Box::new(self.w.clone()));
        sys::signal::write_byte_on(&[libc::SIGTERM, libc::SIGINT], w.as_fd())
    }
}
