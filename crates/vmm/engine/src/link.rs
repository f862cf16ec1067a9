//! Transports. A live migration runs over a bidirectional byte stream (TCP
//! or a UNIX socket): records forward, replies back. A snapshot is a file:
//! no back channel, checked when restored.
//!
//! Nothing here waits forever. Every read and write of a live link is a
//! non-blocking call followed, when it would block, by a `poll` on the
//! socket and the [`Cancel`] wake-up fd with a deadline:
//!
//! - a cancel ends the wait at once (an error carrying
//!   [`crate::cancel::Cancelled`]);
//! - no byte moving for the stall timeout ends it (`ErrorKind::TimedOut`);
//!   both sides keep a quiet link alive with heartbeat records, so only a
//!   peer that is gone, stopped or cut off runs into it;
//! - TCP sockets also get keepalive probes and `TCP_USER_TIMEOUT`, so the
//!   kernel itself gives up on data nobody acknowledges.
//!
//! [`connect_tcp`] and [`accept_tcp`] wait the same way.

use crate::cancel::Cancel;
use socket2::{SockRef, TcpKeepalive};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vfio_migrate_sys::fd::poll;

/// Default time to connect and get the peer's first answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time without any byte moving after which a live link fails.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the waits of a live link may last.
#[derive(Clone, Debug)]
pub struct Deadlines {
    /// Connecting, and waiting for the peer's first bytes.
    pub connect: Duration,
    /// Any later wait with no byte moving.
    pub stall: Duration,
    /// Ends every wait at once.
    pub cancel: Cancel,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            connect: CONNECT_TIMEOUT,
            stall: STALL_TIMEOUT,
            cancel: Cancel::new(),
        }
    }
}

impl Deadlines {
    /// How often a side sends a heartbeat on a quiet link: well inside the
    /// stall timeout, at least every second.
    pub fn heartbeat(&self) -> Duration {
        (self.stall / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Sock::Tcp(s) => s.as_fd(),
            Sock::Unix(s) => s.as_fd(),
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            Sock::Tcp(s) => s.shutdown(Shutdown::Both),
            Sock::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

/// Waits until `fd` is ready for `events`, the cancel fd fires, or
/// `timeout` passes.
pub(crate) fn wait_fd(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    cancel: &Cancel,
    timeout: Duration,
    what: &dyn Fn() -> String,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, what()));
        }
        let mut p = [
            libc::pollfd {
                fd: fd.as_raw_fd(),
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: cancel.watch_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        match poll(&mut p, ms) {
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

fn cancelled() -> io::Error {
    crate::cancel::Cancelled::io()
}

/// One direction of a live link, with the deadlines of [`Deadlines`].
struct Half {
    sock: Arc<Sock>,
    /// TLS state shared by both directions (rustls is one object for
    /// both): locked only around non-blocking calls.
    tls: Option<Arc<Mutex<rustls::Connection>>>,
    d: Deadlines,
    peer: String,
    /// Reading: the first read waits up to the connect deadline.
    first: bool,
}

impl Half {
    fn raw_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match &*self.sock {
            Sock::Tcp(s) => (&*s).read(buf),
            Sock::Unix(s) => (&*s).read(buf),
        }
    }

    fn raw_write(&self, buf: &[u8]) -> io::Result<usize> {
        match &*self.sock {
            Sock::Tcp(s) => (&*s).write(buf),
            Sock::Unix(s) => (&*s).write(buf),
        }
    }

    /// Reads plaintext: what rustls has decrypted, else more ciphertext
    /// from the socket (`WouldBlock` when none is there yet).
    fn tls_read(&self, tls: &Mutex<rustls::Connection>, buf: &mut [u8]) -> io::Result<usize> {
        let mut c = tls.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let r = c.reader().read(buf);
            match r {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(self.tls_io(e, &c)),
            }
            let sock = &*self.sock;
            let n = match sock {
                Sock::Tcp(s) => c.read_tls(&mut &*s)?,
                Sock::Unix(s) => c.read_tls(&mut &*s)?,
            };
            if n == 0 {
                // The peer closed without close_notify: the reader says
                // so on the next call (UnexpectedEof), or 0 after one.
                return match c.reader().read(buf) {
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    Err(e) => Err(e),
                };
            }
            if let Err(e) = c.process_new_packets() {
                let server = matches!(&*c, rustls::Connection::Server(_));
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    crate::tls::explain(&e, server),
                ));
            }
        }
    }

    /// A rustls error inside an I/O error, said in words.
    fn tls_io(&self, e: io::Error, c: &rustls::Connection) -> io::Error {
        match e.get_ref().and_then(|x| x.downcast_ref::<rustls::Error>()) {
            Some(t) => {
                let server = matches!(c, rustls::Connection::Server(_));
                io::Error::new(e.kind(), crate::tls::explain(t, server))
            }
            None => e,
        }
    }

    /// Plaintext into rustls (up to its buffer limit), then as much of its
    /// ciphertext out as the socket takes now; when rustls is full, waits
    /// for the socket first.
    fn tls_write(&self, t: &Mutex<rustls::Connection>, buf: &[u8]) -> io::Result<usize> {
        loop {
            let n = {
                let mut c = t.lock().unwrap_or_else(|p| p.into_inner());
                let r = c.writer().write(buf);
                r.map_err(|e| self.tls_io(e, &c))?
            };
            if n > 0 {
                self.tls_push(t, false)?;
                return Ok(n);
            }
            self.tls_push(t, true)?;
        }
    }

    /// Sends rustls' queued ciphertext: what the socket takes now, or
    /// (`wait`) all of it, waiting with the stall deadline and the cancel.
    fn tls_push(&self, t: &Mutex<rustls::Connection>, wait: bool) -> io::Result<()> {
        loop {
            let r = {
                let mut c = t.lock().unwrap_or_else(|p| p.into_inner());
                self.tls_flush(&mut c)
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wait {
                        return Ok(());
                    }
                    let st = self.d.stall;
                    wait_fd(self.sock.fd(), libc::POLLOUT, &self.d.cancel, st, &|| {
                        self.stalled("accepted by", st)
                    })?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends what rustls has queued (ciphertext); `WouldBlock` leaves the
    /// rest queued.
    fn tls_flush(&self, c: &mut rustls::Connection) -> io::Result<()> {
        while c.wants_write() {
            match &*self.sock {
                Sock::Tcp(s) => c.write_tls(&mut &*s)?,
                Sock::Unix(s) => c.write_tls(&mut &*s)?,
            };
        }
        Ok(())
    }
}

impl Half {
    fn stalled(&self, doing: &str, t: Duration) -> String {
        format!(
            "nothing {doing} {} for {} s (the peer process, its host or the network stopped)",
            self.peer,
            t.as_secs_f64().round()
        )
    }
}

impl Read for Half {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let r = match &self.tls {
                Some(t) => self.tls_read(t, buf),
                None => self.raw_read(buf),
            };
            match r {
                Ok(n) => {
                    self.first = false;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let t = if self.first {
                        self.d.connect
                    } else {
                        self.d.stall
                    };
                    wait_fd(self.sock.fd(), libc::POLLIN, &self.d.cancel, t, &|| {
                        self.stalled("received from", t)
                    })?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for Half {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // After a cancel, writes that fit still go out (the ABORT that tells
        // the peer why); a write that would wait ends at once.
        if let Some(t) = self.tls.clone() {
            return self.tls_write(&t, buf);
        }
        loop {
            let r = self.raw_write(buf);
            match r {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let t = self.d.stall;
                    wait_fd(self.sock.fd(), libc::POLLOUT, &self.d.cancel, t, &|| {
                        self.stalled("accepted by", t)
                    })?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.tls.clone() {
            Some(t) => self.tls_push(&t, true),
            None => Ok(()),
        }
    }
}

mod splice;
pub(crate) use splice::{Pipe, SpliceSink};

type Closer = Box<dyn Fn() + Send>;

/// The source's end: where records go, and where replies come from.
pub struct Link {
    pub(crate) tx: Box<dyn Write + Send>,
    pub(crate) rx: Option<Box<dyn Read + Send>>,
    pub(crate) close: Option<Closer>,
    pub(crate) peer: String,
    pub(crate) heartbeat: Option<Duration>,
    /// Plaintext sockets: where payloads may be spliced to.
    pub(crate) splice: Option<SpliceSink>,
}

/// The destination's end: where records come from, and where replies go.
pub struct DestLink {
    pub(crate) rx: Box<dyn Read + Send>,
    pub(crate) tx: Option<Box<dyn Write + Send>>,
    pub(crate) close: Option<Closer>,
    pub(crate) peer: String,
    pub(crate) heartbeat: Option<Duration>,
    /// Plaintext sockets: where payloads may be spliced from.
    pub(crate) splice: Option<SpliceSink>,
}

/// Both directions of a live socket (TLS when `tls`), and a closer that
/// shuts it down.
fn halves(
    sock: Sock,
    tls: Option<rustls::Connection>,
    peer: &str,
    d: &Deadlines,
) -> io::Result<(Half, Half, Closer, Option<SpliceSink>)> {
    match &sock {
        Sock::Tcp(s) => {
            s.set_nonblocking(true)?;
            s.set_nodelay(true)?;
            tune_tcp(s, d.stall)?;
        }
        Sock::Unix(s) => s.set_nonblocking(true)?,
    }
    let sock = Arc::new(sock);
    let tls = tls.map(|c| Arc::new(Mutex::new(c)));
    let half = |first| Half {
        sock: sock.clone(),
        tls: tls.clone(),
        d: d.clone(),
        peer: peer.to_string(),
        first,
    };
    let (r, w) = (half(true), half(false));
    let splice = tls.is_none().then(|| SpliceSink {
        sock: sock.clone(),
        d: d.clone(),
        peer: peer.to_string(),
    });
    let s = sock.clone();
    let t = tls.clone();
    Ok((
        r,
        w,
        Box::new(move || {
            // A TLS peer learns it was a clean close (close_notify).
            if let Some(t) = &t {
                let mut c = t.lock().unwrap_or_else(|p| p.into_inner());
                c.send_close_notify();
                let _ = match &*s {
                    Sock::Tcp(x) => c.write_tls(&mut &*x),
                    Sock::Unix(x) => c.write_tls(&mut &*x),
                };
            }
            s.shutdown()
        }),
        splice,
    ))
}

/// Keepalive probes after a few idle seconds, and `TCP_USER_TIMEOUT`: data
/// the peer does not acknowledge within `stall` fails the socket (a cut
/// link or a crashed host), whatever the retransmission timer says.
fn tune_tcp(s: &TcpStream, stall: Duration) -> io::Result<()> {
    let sr = SockRef::from(s);
    let idle = (stall / 3).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let ka = TcpKeepalive::new()
        .with_time(idle)
        .with_interval(Duration::from_secs(1).min(idle))
        .with_retries(3);
    sr.set_tcp_keepalive(&ka)?;
    sr.set_tcp_user_timeout(Some(stall.max(Duration::from_secs(1))))?;
    Ok(())
}

impl Link {
    /// A live link over TCP to `peer`.
    pub fn tcp(s: TcpStream, peer: impl Into<String>, d: &Deadlines) -> io::Result<Self> {
        Self::live(Sock::Tcp(s), None, peer.into(), d)
    }

    /// A live link over TCP to `peer` after a TLS handshake
    /// ([`crate::tls::handshake`]).
    pub fn tcp_tls(
        s: TcpStream,
        tls: crate::tls::Established,
        peer: impl Into<String>,
        d: &Deadlines,
    ) -> io::Result<Self> {
        Self::live(Sock::Tcp(s), Some(tls.conn), peer.into(), d)
    }

    /// A live link over a UNIX stream socket.
    pub fn unix(s: UnixStream, peer: impl Into<String>, d: &Deadlines) -> io::Result<Self> {
        Self::live(Sock::Unix(s), None, peer.into(), d)
    }

    fn live(
        sock: Sock,
        tls: Option<rustls::Connection>,
        peer: String,
        d: &Deadlines,
    ) -> io::Result<Self> {
        let (r, w, close, splice) = halves(sock, tls, &peer, d)?;
        Ok(Self {
            tx: Box::new(w),
            rx: Some(Box::new(r)),
            close: Some(close),
            peer,
            heartbeat: Some(d.heartbeat()),
            splice,
        })
    }

    /// A snapshot file (no back channel).
    pub fn file(f: File, peer: impl Into<String>) -> Self {
        Self::writer(f, peer)
    }

    /// Any writer, without a back channel (e.g. for tests and benches).
    pub fn writer(w: impl Write + Send + 'static, peer: impl Into<String>) -> Self {
        Self {
            tx: Box::new(w),
            rx: None,
            close: None,
            peer: peer.into(),
            heartbeat: None,
            splice: None,
        }
    }

    /// True for live links (there is a back channel).
    pub fn is_live(&self) -> bool {
        self.rx.is_some()
    }

    /// Where the stream goes.
    pub fn peer(&self) -> &str {
        &self.peer
    }
}

impl DestLink {
    /// A live link over TCP from `peer`.
    pub fn tcp(s: TcpStream, peer: impl Into<String>, d: &Deadlines) -> io::Result<Self> {
        Self::live(Sock::Tcp(s), None, peer.into(), d)
    }

    /// A live link over TCP from `peer` after a TLS handshake
    /// ([`crate::tls::handshake`]).
    pub fn tcp_tls(
        s: TcpStream,
        tls: crate::tls::Established,
        peer: impl Into<String>,
        d: &Deadlines,
    ) -> io::Result<Self> {
        Self::live(Sock::Tcp(s), Some(tls.conn), peer.into(), d)
    }

    /// A live link over a UNIX stream socket.
    pub fn unix(s: UnixStream, peer: impl Into<String>, d: &Deadlines) -> io::Result<Self> {
        Self::live(Sock::Unix(s), None, peer.into(), d)
    }

    /// The reading end (to look at the first bytes of a connection before
    /// it is taken for a migration; see [`DestLink::with_prefix`]).
    pub fn rx(&mut self) -> &mut (dyn Read + Send) {
        &mut *self.rx
    }

    /// Puts `bytes` (already read from the link, e.g. to check the first
    /// bytes of a connection) back in front of what is read next.
    pub fn with_prefix(mut self, bytes: Vec<u8>) -> Self {
        self.rx = Box::new(io::Cursor::new(bytes).chain(self.rx));
        self
    }

    fn live(
        sock: Sock,
        tls: Option<rustls::Connection>,
        peer: String,
        d: &Deadlines,
    ) -> io::Result<Self> {
        let (r, w, close, splice) = halves(sock, tls, &peer, d)?;
        Ok(Self {
            rx: Box::new(r),
            tx: Some(Box::new(w)),
            close: Some(close),
            peer,
            heartbeat: Some(d.heartbeat()),
            splice,
        })
    }

    /// A snapshot file being restored.
    pub fn file(f: File, peer: impl Into<String>) -> Self {
        Self::reader(f, peer)
    }

    /// Any reader, without a back channel.
    pub fn reader(r: impl Read + Send + 'static, peer: impl Into<String>) -> Self {
        Self {
            rx: Box::new(r),
            tx: None,
            close: None,
            peer: peer.into(),
            heartbeat: None,
            splice: None,
        }
    }

    /// True for live links.
    pub fn is_live(&self) -> bool {
        self.tx.is_some()
    }

    /// Where the stream comes from.
    pub fn peer(&self) -> &str {
        &self.peer
    }
}

/// Connects to `addr` (`host:port`, every resolved address in turn) within
/// `d.connect`; a cancel ends the attempt at once.
pub fn connect_tcp(addr: &str, d: &Deadlines) -> io::Result<TcpStream> {
    let deadline = Instant::now() + d.connect;
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{addr} resolves to no address"),
    );
    for a in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match connect_one(a, left, &d.cancel) {
            Ok(s) => return Ok(s),
            Err(e) if crate::cancel::Cancelled::is(&e) => return Err(e),
            Err(e) => last = e,
        }
    }
    if last.kind() == io::ErrorKind::TimedOut {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no answer from {addr} within {} s (a host that drops packets, or a firewall)",
                d.connect.as_secs()
            ),
        ));
    }
    Err(last)
}

fn connect_one(a: SocketAddr, t: Duration, cancel: &Cancel) -> io::Result<TcpStream> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(a),
        socket2::Type::STREAM.cloexec(),
        None,
    )?;
    s.set_nonblocking(true)?;
    match s.connect(&a.into()) {
        Ok(()) => {}
        Err(e)
            if e.raw_os_error() == Some(libc::EINPROGRESS)
                || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    wait_fd(s.as_fd(), libc::POLLOUT, cancel, t, &|| {
        format!("connecting to {a}")
    })?;
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    let s: TcpStream = s.into();
    s.set_nonblocking(false)?;
    Ok(s)
}

/// Accepts one connection on `l`, waiting at most `wait` (`None`: until
/// cancelled).
pub fn accept_tcp(
    l: &TcpListener,
    wait: Option<Duration>,
    cancel: &Cancel,
) -> io::Result<(TcpStream, SocketAddr)> {
    l.set_nonblocking(true)?;
    let t = wait.unwrap_or(Duration::from_secs(u64::from(u32::MAX)));
    loop {
        match l.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false)?;
                return Ok((s, a));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_fd(l.as_fd(), libc::POLLIN, cancel, t, &|| {
                    format!("no sender connected within {} s", t.as_secs())
                })?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(stall_ms: u64) -> Deadlines {
        Deadlines {
            connect: Duration::from_millis(stall_ms),
            stall: Duration::from_millis(stall_ms),
            cancel: Cancel::new(),
        }
    }

    #[test]
    fn a_silent_peer_times_out_and_a_cancel_wakes_a_blocked_read() {
        let (a, _b) = UnixStream::pair().unwrap();
        let d = quick(100);
        let mut l = DestLink::unix(a, "peer", &d).unwrap();
        let t = Instant::now();
        let e = l.rx.read(&mut [0u8; 4]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(t.elapsed() >= Duration::from_millis(100));

        let (a, _b) = UnixStream::pair().unwrap();
        let d = Deadlines {
            stall: Duration::from_secs(30),
            connect: Duration::from_secs(30),
            cancel: Cancel::new(),
        };
        let mut l = DestLink::unix(a, "peer", &d).unwrap();
        let c = d.cancel.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c.cancel();
        });
        let t = Instant::now();
        let e = l.rx.read(&mut [0u8; 4]).unwrap_err();
        assert!(crate::cancel::Cancelled::is(&e), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        h.join().unwrap();
    }

    #[test]
    fn a_peer_that_stops_reading_times_the_writer_out() {
        let (a, _b) = UnixStream::pair().unwrap();
        let d = quick(200);
        let mut l = Link::unix(a, "peer", &d).unwrap();
        let chunk = vec![0u8; 1 << 20];
        let e = loop {
            if let Err(e) = l.tx.write_all(&chunk) {
                break e;
            }
        };
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }

    #[test]
    fn connect_and_accept_have_deadlines() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let d = quick(100);
        let e = accept_tcp(&l, Some(Duration::from_millis(100)), &d.cancel).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let addr = l.local_addr().unwrap().to_string();
        let s = connect_tcp(&addr, &d).unwrap();
        let (t, _) = accept_tcp(&l, None, &d.cancel).unwrap();
        drop((s, t));
        // Nothing listens on a closed port: refused at once.
        drop(l);
        assert!(connect_tcp(&addr, &d).is_err());
    }
}
