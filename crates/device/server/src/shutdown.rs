//! Clean shutdown: a pipe whose read end every server wait watches, written
//! by [`Shutdown::trigger`] or by a SIGTERM/SIGINT handler.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

/// Write end used by the signal handler (-1 = none installed).
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_sig: libc::c_int) {
    let fd = SIGNAL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = 1u8;
        // SAFETY: write(2) is async-signal-safe; the fd is the pipe's
        // write end, kept open while the handler is installed; a full pipe
        // just means a shutdown is already pending.
        unsafe {
            libc::write(fd, &b as *const u8 as *const libc::c_void, 1);
        }
    }
}

/// A shutdown request channel. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Shutdown {
    r: Arc<OwnedFd>,
    w: Arc<OwnedFd>,
}

impl Shutdown {
    /// A new, untriggered channel.
    pub fn new() -> io::Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills the two-element array on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Self {
            r: Arc::new(r),
            w: Arc::new(w),
        })
    }

    /// Asks the server to stop (idempotent).
    pub fn trigger(&self) {
        let b = 1u8;
        // SAFETY: writing one byte from a live local to our own pipe.
        unsafe {
            libc::write(
                self.w.as_raw_fd(),
                &b as *const u8 as *const libc::c_void,
                1,
            );
        }
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    /// The fd that becomes readable on shutdown (for poll).
    pub fn watch_fd(&self) -> RawFd {
        self.r.as_raw_fd()
    }

    /// Triggers this channel on SIGTERM and SIGINT (process-wide; the last
    /// channel installed wins).
    pub fn on_signals(&self) -> io::Result<()> {
        SIGNAL_FD.store(self.w.as_raw_fd(), Ordering::Relaxed);
        for sig in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: a zeroed sigaction with a handler that only calls
            // write(2); sigemptyset initialises the mask before use.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                sa.sa_flags = libc::SA_RESTART;
                if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        // Keep the write end open for as long as the process may get a
        // signal: leak one reference.
        std::mem::forget(self.w.clone());
        Ok(())
    }
}
