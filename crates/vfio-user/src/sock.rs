//! Byte transport of vfio-user messages over an `AF_UNIX` stream socket:
//! one `sendmsg` per message (iovecs plus `SCM_RIGHTS`), partial reads and
//! writes looped, file descriptors collected from every `recvmsg` of a
//! message, and an optional cancel fd (the server's shutdown pipe) that
//! aborts any wait.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};
use vfio_migrate_sys as sys;

/// Most file descriptors one received message may carry; more is reported
/// as truncation (the extra ones are closed by the kernel or by us).
pub const MAX_RECV_FDS: usize = 16;

/// Most file descriptors one sent message may carry.
pub const MAX_SEND_FDS: usize = 64;

/// File descriptors that arrived with a message.
#[derive(Debug, Default)]
pub struct RecvFds {
    /// The descriptors, in arrival order (closed on drop).
    pub fds: Vec<OwnedFd>,
    /// True when the sender attached more than fit (`MSG_CTRUNC`) or more
    /// than [`MAX_RECV_FDS`].
    pub truncated: bool,
}

/// How a wait ended without data.
fn cancelled() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "server shutting down")
}

/// A connected stream socket with optional cancellation and stall timeout.
#[derive(Debug)]
pub struct Conn {
    fd: OwnedFd,
    cancel: Option<RawFd>,
    stall: Option<Duration>,
}

impl Conn {
    /// Wraps a blocking socket (client side: every call blocks until done).
    pub fn blocking(fd: OwnedFd) -> Self {
        Self {
            fd,
            cancel: None,
            stall: None,
        }
    }

    /// Wraps a socket for the server: non-blocking, every wait also watches
    /// `cancel` (readable = shut down) and, once a message has started, gives
    /// up after `stall` without progress.
    pub fn cancellable(fd: OwnedFd, cancel: RawFd, stall: Duration) -> io::Result<Self> {
        set_nonblocking(fd.as_fd())?;
        Ok(Self {
            fd,
            cancel: Some(cancel),
            stall: Some(stall),
        })
    }

    /// The socket.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Waits for `events` on the socket. `idle` = waiting for the start of a
    /// message (no stall timeout).
    fn wait(&self, events: libc::c_short, idle: bool, since: Instant) -> io::Result<()> {
        let Some(cancel) = self.cancel else {
            return Ok(());
        };
        loop {
            let timeout_ms = match (idle, self.stall) {
                (false, Some(d)) => {
                    let left = d.saturating_sub(since.elapsed());
                    if left.is_zero() {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "peer stalled for {} s in the middle of a message",
                                d.as_secs()
                            ),
                        ));
                    }
                    left.as_millis().min(i32::MAX as u128) as i32
                }
                _ => -1,
            };
            let mut p = [
                libc::pollfd {
                    fd: self.fd.as_raw_fd(),
                    events,
                    revents: 0,
                },
                libc::pollfd {
                    fd: cancel,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            match sys::fd::poll(&mut p, timeout_ms) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if p[1].revents != 0 {
                return Err(cancelled());
            }
            if p[0].revents != 0 {
                return Ok(());
            }
        }
    }

    /// Reads exactly `buf.len()` bytes, collecting fds into `fds`. Returns
    /// `Ok(false)` on a clean end of stream before the first byte when
    /// `idle` (waiting for a new message), `UnexpectedEof` after it.
    pub fn recv_exact(&self, buf: &mut [u8], fds: &mut RecvFds, idle: bool) -> io::Result<bool> {
        let mut got = 0usize;
        let since = Instant::now();
        while got < buf.len() {
            match self.recv_some(&mut buf[got..], fds) {
                Ok(0) => {
                    if got == 0 && idle {
                        return Ok(false);
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "peer closed the connection {got} bytes into a {}-byte read",
                            buf.len()
                        ),
                    ));
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(libc::POLLIN, idle && got == 0, since)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Reads and throws away `n` bytes (padding, or a payload nobody takes).
    pub fn discard(&self, mut n: usize, fds: &mut RecvFds) -> io::Result<()> {
        let mut scratch = [0u8; 4096];
        while n > 0 {
            let k = n.min(scratch.len());
            self.recv_exact(&mut scratch[..k], fds, false)?;
            n -= k;
        }
        Ok(())
    }

    /// One `recvmsg`; fds from its control message are appended to `fds`.
    fn recv_some(&self, buf: &mut [u8], fds: &mut RecvFds) -> io::Result<usize> {
        let r = sys::sock::recv_with_fds(self.fd.as_fd(), buf, &mut fds.fds, MAX_RECV_FDS)?;
        if r.truncated {
            fds.truncated = true;
        }
        Ok(r.bytes)
    }

    /// Sends `parts` as one message: a single `sendmsg` carrying all
    /// iovecs and `fds`; a partial write is continued (without the fds,
    /// which went with the first byte).
    pub fn send(&self, parts: &[&[u8]], fds: &[RawFd]) -> io::Result<()> {
        if fds.len() > MAX_SEND_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} fds in one message, at most {MAX_SEND_FDS}", fds.len()),
            ));
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut sent = 0usize;
        let since = Instant::now();
        let mut first = true;
        while sent < total || first {
            let mut iovs: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len());
            let mut skip = sent;
            for p in parts {
                if skip >= p.len() {
                    skip -= p.len();
                    continue;
                }
                iovs.push(IoSlice::new(&p[skip..]));
                skip = 0;
            }
            let with = if first { fds } else { &[] };
            let n = match sys::sock::send_with_fds(self.fd.as_fd(), &iovs, with) {
                Ok(n) => n,
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => {
                        self.wait(libc::POLLOUT, false, since)?;
                        continue;
                    }
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                },
            };
            first = false;
            sent += n;
        }
        Ok(())
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Sets `O_NONBLOCK`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    sys::fd::set_nonblocking(fd)
}

/// Sets the socket's send buffer (best effort: the kernel caps it at
/// `wmem_max`). Large buffers let one multi-MiB message go out in few
/// wake-ups.
pub fn set_send_buffer(fd: BorrowedFd<'_>, bytes: usize) {
    let _ = sys::sock::set_send_buffer(fd, bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Conn, Conn) {
        let (a, b) = UnixStream::pair().unwrap();
        (Conn::blocking(a.into()), Conn::blocking(b.into()))
    }

    #[test]
    fn message_with_fds_arrives_whole() {
        let (a, b) = pair();
        let (p, _q) = UnixStream::pair().unwrap();
        let big = vec![7u8; 3 << 20];
        let t = std::thread::spawn(move || {
            a.send(&[b"head", &big], &[p.as_fd().as_raw_fd()]).unwrap();
        });
        let mut head = [0u8; 4];
        let mut fds = RecvFds::default();
        assert!(b.recv_exact(&mut head, &mut fds, true).unwrap());
        let mut body = vec![0u8; 3 << 20];
        b.recv_exact(&mut body, &mut fds, false).unwrap();
        t.join().unwrap();
        assert_eq!(&head, b"head");
        assert!(body.iter().all(|&x| x == 7));
        assert_eq!(fds.fds.len(), 1);
        assert!(!fds.truncated);
    }

    #[test]
    fn eof_between_and_inside_messages() {
        let (a, b) = pair();
        a.send(&[b"ab"], &[]).unwrap();
        drop(a);
        let mut buf = [0u8; 4];
        let mut fds = RecvFds::default();
        let e = b.recv_exact(&mut buf, &mut fds, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(!b.recv_exact(&mut buf, &mut fds, true).unwrap());
    }

    #[test]
    fn cancel_fd_aborts_a_wait() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = UnixStream::pair().unwrap();
        let c = Conn::cancellable(b.into(), r.as_raw_fd(), Duration::from_secs(5)).unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            use std::io::Write;
            (&w).write_all(b"x").unwrap();
            w
        });
        let mut buf = [0u8; 4];
        let e = c
            .recv_exact(&mut buf, &mut RecvFds::default(), true)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
        t.join().unwrap();
        drop(a);
    }

    #[test]
    fn stall_in_a_message_times_out() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, _w) = UnixStream::pair().unwrap();
        let c = Conn::cancellable(b.into(), r.as_raw_fd(), Duration::from_millis(100)).unwrap();
        use std::io::Write;
        (&a).write_all(b"ab").unwrap();
        let mut buf = [0u8; 4];
        let e = c
            .recv_exact(&mut buf, &mut RecvFds::default(), true)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
