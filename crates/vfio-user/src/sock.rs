//! Byte transport of vfio-user messages over an `AF_UNIX` stream socket:
//! one `sendmsg` per message (iovecs plus `SCM_RIGHTS`), partial reads and
//! writes looped, file descriptors collected from every `recvmsg` of a
//! message, and an optional cancel fd (the server's shutdown pipe) that
//! aborts any wait.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Most file descriptors one received message may carry; more is reported
/// as truncation (the extra ones are closed by the kernel or by us).
pub const MAX_RECV_FDS: usize = 16;

/// Most file descriptors one sent message may carry.
pub const MAX_SEND_FDS: usize = 64;

/// Control-message buffer (u64 aligned): room for [`MAX_SEND_FDS`] fds, and
/// on receive for more than [`MAX_RECV_FDS`] so an excess is seen and
/// closed rather than left to the kernel.
const CMSG_SPACE_WORDS: usize = 64;

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
        set_nonblocking(fd.as_raw_fd())?;
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
            // SAFETY: `p` is a valid array of two pollfd for the duration of
            // the call.
            let r = unsafe { libc::poll(p.as_mut_ptr(), 2, timeout_ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
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
        let mut cmsg = [0u64; CMSG_SPACE_WORDS];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is a valid empty header.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cmsg.as_mut_ptr() as *mut libc::c_void;
        mh.msg_controllen = std::mem::size_of_val(&cmsg) as _;
        // SAFETY: `mh` points at `iov` (valid for `buf.len()` bytes) and at
        // `cmsg`, both alive for the call; MSG_CMSG_CLOEXEC keeps received
        // fds from leaking into children.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut mh, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if mh.msg_flags & libc::MSG_CTRUNC != 0 {
            fds.truncated = true;
        }
        // SAFETY: the CMSG_* macros walk the control buffer the kernel just
        // filled, bounded by msg_controllen; each SCM_RIGHTS payload is an
        // array of ints that we take ownership of exactly once.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&mh);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c) as *const libc::c_int;
                    let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let count = len / std::mem::size_of::<libc::c_int>();
                    for i in 0..count {
                        let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                        if fds.fds.len() < MAX_RECV_FDS {
                            fds.fds.push(fd);
                        } else {
                            fds.truncated = true;
                            drop(fd);
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&mh, c);
            }
        }
        Ok(n as usize)
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
            let mut iovs: Vec<libc::iovec> = Vec::with_capacity(parts.len());
            let mut skip = sent;
            for p in parts {
                if skip >= p.len() {
                    skip -= p.len();
                    continue;
                }
                iovs.push(libc::iovec {
                    iov_base: p[skip..].as_ptr() as *mut libc::c_void,
                    iov_len: p.len() - skip,
                });
                skip = 0;
            }
            let mut cmsg = [0u64; CMSG_SPACE_WORDS];
            // SAFETY: an all-zero msghdr is a valid empty header.
            let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
            mh.msg_iov = iovs.as_mut_ptr();
            mh.msg_iovlen = iovs.len() as _;
            if first && !fds.is_empty() {
                let bytes = std::mem::size_of_val(fds);
                // SAFETY: CMSG_SPACE/CMSG_LEN are pure size computations.
                let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
                debug_assert!(space <= std::mem::size_of_val(&cmsg));
                mh.msg_control = cmsg.as_mut_ptr() as *mut libc::c_void;
                mh.msg_controllen = space as _;
                // SAFETY: the control buffer is large enough for one header
                // with `fds.len()` ints (checked above); we write inside it.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&mh);
                    (*c).cmsg_level = libc::SOL_SOCKET;
                    (*c).cmsg_type = libc::SCM_RIGHTS;
                    (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as _;
                    std::ptr::copy_nonoverlapping(
                        fds.as_ptr() as *const u8,
                        libc::CMSG_DATA(c),
                        bytes,
                    );
                }
            }
            // SAFETY: `mh` references iovecs into `parts` and the control
            // buffer, all alive for the call; MSG_NOSIGNAL turns a closed
            // peer into EPIPE instead of SIGPIPE.
            let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &mh, libc::MSG_NOSIGNAL) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => {
                        self.wait(libc::POLLOUT, false, since)?;
                        continue;
                    }
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            first = false;
            sent += n as usize;
        }
        Ok(())
    }
}

/// Sets `O_NONBLOCK`.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a valid fd with integer arguments.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the socket's send buffer (best effort: the kernel caps it at
/// `wmem_max`). Large buffers let one multi-MiB message go out in few
/// wake-ups.
pub fn set_send_buffer(fd: RawFd, bytes: usize) {
    let v: libc::c_int = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
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
