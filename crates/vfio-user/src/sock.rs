//! Byte transport of vfio-user messages over an `AF_UNIX` stream socket:
//! one `sendmsg` per message (iovecs plus `SCM_RIGHTS`), partial reads and
//! writes looped, file descriptors collected from every `recvmsg` of a
//! message. Waits have deadlines and a wake-up fd: the server's shutdown
//! pipe aborts any wait; a client's cancel fd shortens every wait to a
//! grace period, so a live server still answers the requests that roll a
//! migration back while a dead one is given up on at once.

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

/// The send/receive timeout of a client socket between deadline checks.
const SLICE: Duration = Duration::from_millis(100);

/// How a wait ended without data.
fn cancelled() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "server shutting down")
}

/// What a readable cancel fd does to a wait.
#[derive(Debug, Clone, Copy)]
enum OnCancel {
    /// End the wait at once (`ConnectionAborted`).
    Abort,
    /// Keep waiting, at most this long from when the cancel was seen.
    Grace(Duration),
}

/// A connected stream socket with optional cancellation and deadlines.
#[derive(Debug)]
pub struct Conn {
    fd: OwnedFd,
    cancel: Option<RawFd>,
    /// A cancel fd this connection owns (a client's duplicate).
    _cancel_owned: Option<OwnedFd>,
    on_cancel: OnCancel,
    /// Once a message has started: longest wait without progress.
    stall: Option<Duration>,
    /// Before a message starts (a client waiting for a reply): longest wait.
    idle: Option<Duration>,
    /// When a cancel was first seen (grace mode).
    cancelled_at: std::cell::Cell<Option<Instant>>,
    /// A blocking socket whose calls time out after a short slice
    /// (`SO_RCVTIMEO`/`SO_SNDTIMEO`): a wait only checks deadlines and the
    /// cancel between slices, so the common path is one syscall per
    /// wake-up, as with a plain blocking socket.
    sliced: bool,
    /// The failure that left the byte stream unusable (a message cut by a
    /// timeout, an error mid-message): later calls fail at once with it.
    broken: std::cell::RefCell<Option<(io::ErrorKind, String)>>,
}

impl Conn {
    /// Wraps a blocking socket: every call blocks until done (tests and
    /// tools that need no deadline).
    pub fn blocking(fd: OwnedFd) -> Self {
        Self {
            fd,
            cancel: None,
            _cancel_owned: None,
            on_cancel: OnCancel::Abort,
            stall: None,
            idle: None,
            cancelled_at: std::cell::Cell::new(None),
            sliced: false,
            broken: std::cell::RefCell::new(None),
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
            _cancel_owned: None,
            on_cancel: OnCancel::Abort,
            stall: Some(stall),
            idle: None,
            cancelled_at: std::cell::Cell::new(None),
            sliced: false,
            broken: std::cell::RefCell::new(None),
        })
    }

    /// Wraps a socket for a client: every wait — a reply that does not
    /// start, a message that stops in the middle, a send the server does
    /// not take — gives up after `timeout`. Once `cancel` becomes readable,
    /// waits last at most `grace` more. The socket stays blocking, with
    /// 100 ms send and receive timeouts between which deadlines and the
    /// cancel are checked.
    pub fn client(
        stream: std::os::unix::net::UnixStream,
        timeout: Duration,
        cancel: Option<OwnedFd>,
        grace: Duration,
    ) -> io::Result<Self> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(SLICE))?;
        stream.set_write_timeout(Some(SLICE))?;
        Ok(Self {
            fd: stream.into(),
            cancel: cancel.as_ref().map(|c| c.as_raw_fd()),
            _cancel_owned: cancel,
            on_cancel: OnCancel::Grace(grace),
            stall: Some(timeout),
            idle: Some(timeout),
            cancelled_at: std::cell::Cell::new(None),
            sliced: true,
            broken: std::cell::RefCell::new(None),
        })
    }

    /// The socket.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Waits for `events` on the socket. `idle` = waiting for the start of a
    /// message (bounded by the idle deadline, if any), otherwise by the
    /// stall deadline from `since`.
    fn wait(&self, events: libc::c_short, idle: bool, since: Instant) -> io::Result<()> {
        if self.cancel.is_none() && self.stall.is_none() && self.idle.is_none() {
            // A blocking socket: the call itself waited.
            return Ok(());
        }
        if self.sliced {
            // A caller whose own call does not wait (a non-blocking
            // splice) is held here for up to a slice, so it never spins.
            let mut p = [libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events,
                revents: 0,
            }];
            if matches!(sys::fd::poll(&mut p, SLICE.as_millis() as i32), Ok(n) if n > 0) {
                return Ok(());
            }
            return self.between_slices(idle, since);
        }
        loop {
            let limit = if idle { self.idle } else { self.stall };
            let mut deadline = limit.map(|d| since + d);
            if let (OnCancel::Grace(g), Some(at)) = (self.on_cancel, self.cancelled_at.get()) {
                let g = at + g;
                deadline = Some(deadline.map_or(g, |d| d.min(g)));
            }
            let timeout_ms = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(self.timed_out(idle, limit));
                    }
                    left.as_millis().clamp(1, i32::MAX as u128) as i32
                }
                None => -1,
            };
            // In grace mode a cancel already seen is not watched again (it
            // stays readable).
            let watch_cancel = match (self.cancel, self.on_cancel) {
                (None, _) => None,
                (Some(c), OnCancel::Abort) => Some(c),
                (Some(c), OnCancel::Grace(_)) => self.cancelled_at.get().is_none().then_some(c),
            };
            let mut p = [
                libc::pollfd {
                    fd: self.fd.as_raw_fd(),
                    events,
                    revents: 0,
                },
                libc::pollfd {
                    fd: watch_cancel.unwrap_or(-1),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let n = if watch_cancel.is_some() { 2 } else { 1 };
            match sys::fd::poll(&mut p[..n], timeout_ms) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if p[0].revents != 0 {
                return Ok(());
            }
            if n == 2 && p[1].revents != 0 {
                match self.on_cancel {
                    OnCancel::Abort => return Err(cancelled()),
                    OnCancel::Grace(_) => self.cancelled_at.set(Some(Instant::now())),
                }
            }
        }
    }

    /// Waits until the socket is ready for `events` (`POLLIN`, `POLLOUT`),
    /// for callers that move bytes with their own calls (e.g. `splice`)
    /// and get `WouldBlock`. `since`: when bytes last moved — the stall
    /// deadline counts from it, so a peer that stops mid-message is given
    /// up on however often the caller retries.
    pub fn wait_ready(&self, events: libc::c_short, since: Instant) -> io::Result<()> {
        self.check_usable()?;
        self.wait(events, false, since).map_err(|e| self.poison(e))
    }

    /// Changes the deadlines of a client connection (e.g. from the connect
    /// deadline to the stall timeout once VERSION is done).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.stall = Some(timeout);
        self.idle = Some(timeout);
    }

    /// Fails at once when an earlier failure left the stream unusable.
    fn check_usable(&self) -> io::Result<()> {
        match &*self.broken.borrow() {
            Some((kind, msg)) => Err(io::Error::new(
                *kind,
                format!("the connection is unusable since an earlier failure: {msg}"),
            )),
            None => Ok(()),
        }
    }

    /// Remembers `e` as what broke the stream (every later call fails at
    /// once), and returns it: for a caller that left a message half sent.
    pub fn poison(&self, e: io::Error) -> io::Error {
        let mut b = self.broken.borrow_mut();
        if b.is_none() {
            *b = Some((e.kind(), e.to_string()));
        }
        e
    }

    /// A sliced socket's call timed out: notes a cancel, and fails once a
    /// deadline passed; otherwise the caller retries (and the call waits
    /// one more slice).
    fn between_slices(&self, idle: bool, since: Instant) -> io::Result<()> {
        if let (Some(c), None) = (self.cancel, self.cancelled_at.get()) {
            let mut p = [libc::pollfd {
                fd: c,
                events: libc::POLLIN,
                revents: 0,
            }];
            if matches!(sys::fd::poll(&mut p, 0), Ok(n) if n > 0) {
                match self.on_cancel {
                    OnCancel::Abort => return Err(cancelled()),
                    OnCancel::Grace(_) => self.cancelled_at.set(Some(Instant::now())),
                }
            }
        }
        let limit = if idle { self.idle } else { self.stall };
        let mut deadline = limit.map(|d| since + d);
        if let (OnCancel::Grace(g), Some(at)) = (self.on_cancel, self.cancelled_at.get()) {
            let g = at + g;
            deadline = Some(deadline.map_or(g, |d| d.min(g)));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(self.timed_out(idle, limit));
        }
        Ok(())
    }

    fn timed_out(&self, idle: bool, limit: Option<Duration>) -> io::Error {
        let secs = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64());
        let msg = match (self.cancelled_at.get(), idle) {
            (Some(_), _) => {
                "no answer within the grace period after the migration was cancelled".to_string()
            }
            (None, true) => format!(
                "no answer from the peer within {:.0} s (is it stopped or hung?)",
                secs(limit)
            ),
            (None, false) => format!(
                "peer stalled for {:.0} s in the middle of a message",
                secs(limit)
            ),
        };
        io::Error::new(io::ErrorKind::TimedOut, msg)
    }

    /// Reads exactly `buf.len()` bytes, collecting fds into `fds`. Returns
    /// `Ok(false)` on a clean end of stream before the first byte when
    /// `idle` (waiting for a new message), `UnexpectedEof` after it.
    pub fn recv_exact(&self, buf: &mut [u8], fds: &mut RecvFds, idle: bool) -> io::Result<bool> {
        self.check_usable()?;
        self.recv_exact_inner(buf, fds, idle)
            .map_err(|e| self.poison(e))
    }

    fn recv_exact_inner(&self, buf: &mut [u8], fds: &mut RecvFds, idle: bool) -> io::Result<bool> {
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
        self.check_usable()?;
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
                        self.wait(libc::POLLOUT, false, since)
                            .map_err(|e| self.poison(e))?;
                        continue;
                    }
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(self.poison(e)),
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
        // The stream lost its framing: it stays unusable.
        let e = b.recv_exact(&mut buf, &mut fds, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("unusable"), "{e}");
        // A clean end between messages is not an error.
        let (a, b) = pair();
        drop(a);
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
