//! Plaintext sockets that payloads are spliced into and out of through a
//! pipe (the kernel moves page references; nothing is copied through this
//! process), with the link's deadlines: [`SpliceSink`] and its [`Pipe`].

use super::{wait_fd, Deadlines, Sock};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

/// A pipe that spliced payloads go through (one record at a time).
pub(crate) struct Pipe {
    /// The read end.
    pub r: std::os::fd::OwnedFd,
    /// The write end.
    pub w: File,
    /// Its capacity: the largest record that fits.
    pub cap: usize,
}

impl Pipe {
    /// A pipe of (at most) `want` bytes; a smaller one (a low
    /// pipe-max-size) just means smaller records go through it.
    pub fn new(want: usize) -> io::Result<Self> {
        let (r, w) = vfio_migrate_sys::fd::pipe(libc::O_CLOEXEC)?;
        let _ = vfio_migrate_sys::fd::set_pipe_size(w.as_fd(), want);
        let cap = vfio_migrate_sys::fd::pipe_size(w.as_fd())?;
        Ok(Self {
            r,
            w: File::from(w),
            cap,
        })
    }
}

/// A plaintext live socket that a payload can be spliced into from a pipe
/// (the kernel moves page references; nothing is copied through this
/// process), with the link's deadlines.
#[derive(Clone)]
pub(crate) struct SpliceSink {
    pub(super) sock: Arc<Sock>,
    pub(super) d: Deadlines,
    pub(super) peer: String,
}

impl SpliceSink {
    /// Moves `len` bytes from the pipe `from` into the socket, waiting
    /// (stall deadline, cancel) while the socket is full.
    pub fn splice_in(&self, from: BorrowedFd<'_>, mut len: usize) -> io::Result<()> {
        while len > 0 {
            let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE | libc::SPLICE_F_NONBLOCK;
            match vfio_migrate_sys::fd::splice(from, self.sock.fd(), len, flags) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the pipe ran dry before the record's end",
                    ))
                }
                Ok(n) => len -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let t = self.d.stall;
                    wait_fd(self.sock.fd(), libc::POLLOUT, &self.d.cancel, t, &|| {
                        format!(
                            "nothing accepted by {} for {} s (the peer process, its host or the network stopped)",
                            self.peer,
                            t.as_secs_f64().round()
                        )
                    })?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Moves between 1 and `max` bytes from the socket into the empty
    /// pipe `to`, waiting (stall deadline, cancel) while nothing has
    /// arrived; returns how many.
    pub fn fill_pipe(&self, to: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        loop {
            let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE | libc::SPLICE_F_NONBLOCK;
            match vfio_migrate_sys::fd::splice(self.sock.fd(), to, max, flags) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} closed the connection inside a record", self.peer),
                    ))
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let t = self.d.stall;
                    wait_fd(self.sock.fd(), libc::POLLIN, &self.d.cancel, t, &|| {
                        format!(
                            "nothing received from {} for {} s (the peer process, its host or the network stopped)",
                            self.peer,
                            t.as_secs_f64().round()
                        )
                    })?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
