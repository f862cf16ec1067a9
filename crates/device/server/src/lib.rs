//! # vfio-migrate-server
//!
//! The vfio-user server (device side): serves one [`Device`] on a UNIX socket, client
//! after client. The device (a [`DeviceCore`]) survives disconnects; DMA
//! windows, DMA logging and IRQ eventfds are per client and dropped when it
//! goes.
//!
//! Layout: [`Server::serve`] accepts; the connection loop frames messages
//! (header, size cap, payload, fds) and sends replies with one `sendmsg`;
//! [`dispatch::dispatch`] turns one message into one reply without touching
//! sockets; one file per command group does the work. A [`Session`] is one
//! client's state; devices plug in their own regions and commands through
//! [`RegionHandler`] and [`CommandHandler`] — [`migregion`] uses them to
//! serve the v1 and seed migration regions and the old `DIRTY_PAGES`
//! command next to v2. [`Shutdown`] ends the server cleanly on request or
//! on SIGTERM/SIGINT.

#![forbid(unsafe_code)]

pub mod dispatch;
pub mod session;
pub mod shutdown;

mod dma;
mod feature;
mod irq;
mod migdata;
pub mod migregion;
mod region;

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use vfio_migrate_abi::vfio_user::{Header, FLAG_ERROR, HEADER_SIZE, TYPE_REPLY};
use vfio_migrate_device::{Device, DeviceCore};

pub use dispatch::dispatch;
pub use session::{CommandHandler, Extensions, RegionHandler, Reply, Session};
pub use shutdown::Shutdown;
use vfio_migrate_sys as sys;
use vfio_migrate_vfio_user::sock::{set_send_buffer, Conn, RecvFds};

/// Room for a command's own structs on top of `max_data_xfer_size` when
/// capping `msg_size` (DMA_LOGGING_START with 1024 ranges is 16 KiB).
pub const HEADER_ALLOWANCE: u32 = 64 << 10;

/// Why the server could not start or keep running.
#[derive(Debug, Error)]
pub enum ServerError {
    /// Something else is already listening on the socket path.
    #[error(
        "{path}: another server is already listening there; stop it or pick another --socket path"
    )]
    InUse {
        /// The socket path a live server answers on.
        path: PathBuf,
    },
    /// The path exists and is not a socket: we will not delete it.
    #[error("{path}: exists and is not a socket; remove it or pick another --socket path")]
    NotASocket {
        /// The path that is in the way.
        path: PathBuf,
    },
    /// A socket call failed.
    #[error("{step} {path}: {source}")]
    Socket {
        /// What was being done, e.g. `binding` or `removing stale socket`.
        step: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Limits the server announces and enforces.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest data count of one message, both directions (VERSION
    /// `max_data_xfer_size`).
    pub max_data_xfer_size: u32,
    /// Most fds one incoming message may carry (VERSION `max_msg_fds`).
    pub max_msg_fds: u32,
    /// A client that stops sending in the middle of a message is dropped
    /// after this long.
    pub stall_timeout: Duration,
    /// Socket send buffer to ask for (fewer wake-ups per large reply).
    pub socket_buffer: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_data_xfer_size: 8 << 20,
            max_msg_fds: 8,
            stall_timeout: Duration::from_secs(30),
            socket_buffer: 4 << 20,
        }
    }
}

impl ServerConfig {
    /// Largest `msg_size` accepted.
    pub fn msg_size_cap(&self) -> u32 {
        self.max_data_xfer_size.saturating_add(HEADER_ALLOWANCE)
    }
}

/// A listening socket that removes its path when dropped.
#[derive(Debug)]
pub struct Listener {
    inner: UnixListener,
    path: PathBuf,
}

impl Listener {
    /// Binds `path` with mode 0600 and listens. A stale socket file (nobody
    /// listening) is replaced; a live one or a non-socket is refused.
    pub fn bind(path: &Path) -> Result<Self, ServerError> {
        let sock_err = |step, source| ServerError::Socket {
            step,
            path: path.to_path_buf(),
            source,
        };
        if let Ok(md) = std::fs::symlink_metadata(path) {
            if !md.file_type().is_socket() {
                return Err(ServerError::NotASocket { path: path.into() });
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse { path: path.into() });
            }
            std::fs::remove_file(path).map_err(|e| sock_err("removing stale socket", e))?;
        }
        let fd = bind_0600(path).map_err(|e| sock_err("binding", e))?;
        let inner = UnixListener::from(fd);
        inner
            .set_nonblocking(true)
            .map_err(|e| sock_err("configuring", e))?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// socket + bind + chmod 0600 + listen, so no client can connect before the
/// mode is set.
fn bind_0600(path: &Path) -> io::Result<OwnedFd> {
    let fd = sys::sock::unix_stream_socket()?;
    sys::sock::bind_unix(fd.as_fd(), path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    sys::sock::listen(fd.as_fd(), 16)?;
    Ok(fd)
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client went away (or broke framing); accept the next one.
    Client,
    /// Shutdown was requested.
    Shutdown,
}

/// A vfio-user server for one device.
pub struct Server<D: Device> {
    core: Arc<Mutex<DeviceCore<D>>>,
    ext: Extensions<D>,
    config: ServerConfig,
}

impl<D: Device> Server<D> {
    /// Serves `core` with the default limits.
    pub fn new(core: DeviceCore<D>) -> Self {
        Self::with_config(core, ServerConfig::default())
    }

    /// Serves `core` with `config`.
    pub fn with_config(core: DeviceCore<D>, config: ServerConfig) -> Self {
        Self {
            core: Arc::new(Mutex::new(core)),
            ext: Extensions::default(),
            config,
        }
    }

    /// The device, shared with the connections.
    pub fn core(&self) -> &Arc<Mutex<DeviceCore<D>>> {
        &self.core
    }

    /// The limits in force.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Adds a device-specific region (index ≥ 9).
    pub fn add_region(&mut self, h: Box<dyn RegionHandler<D>>) {
        self.ext.regions.push(h);
    }

    /// Offers (default) or withholds the v2 migration interface. Withheld,
    /// the migration DEVICE_FEATUREs answer `ENOTTY` (as on a device without
    /// migration) and MIG_DATA_READ/WRITE `ENOTSUP`, so a client can only
    /// migrate through the v1 or seed region.
    pub fn set_v2_migration(&mut self, on: bool) {
        self.ext.v2_migration = on;
    }

    /// Adds the v1 migration region (index [`migregion::V1_REGION_INDEX`])
    /// with a `section`-byte data section and the `DIRTY_PAGES` command.
    pub fn add_v1_region(&mut self, section: u64) -> vfio_migrate_device::DeviceResult<()> {
        let r = vfio_migrate_device::region::V1Region::new(migregion::V1_REGION_INDEX, section)?;
        self.add_region(Box::new(migregion::V1Handler(r)));
        self.add_command(Box::new(migregion::DirtyPagesHandler {
            max_bitmap: self.config.max_data_xfer_size as usize,
        }));
        Ok(())
    }

    /// Adds the seed migration region (index
    /// [`migregion::SEED_REGION_INDEX`]) with a `section`-byte data section.
    pub fn add_seed_region(&mut self, section: u64) -> vfio_migrate_device::DeviceResult<()> {
        let r =
            vfio_migrate_device::region::SeedRegion::new(migregion::SEED_REGION_INDEX, section)?;
        self.add_region(Box::new(migregion::SeedHandler(r)));
        Ok(())
    }

    /// Adds a device-specific command.
    pub fn add_command(&mut self, h: Box<dyn CommandHandler<D>>) {
        self.ext.commands.push(h);
    }

    /// A session for driving [`dispatch()`] without a socket (tests, fuzzing).
    pub fn session(&mut self) -> Session<'_, D> {
        Session::new(&self.core, &mut self.ext, &self.config)
    }

    /// Accepts and serves clients one after another until `shutdown`.
    /// A client that connects while another is served gets an `EBUSY`
    /// error reply and is closed.
    pub fn serve(&mut self, listener: &Listener, shutdown: &Shutdown) -> io::Result<()> {
        tracing::info!(path = %listener.path.display(), "serving");
        loop {
            if poll_any(&[shutdown.watch_fd(), listener.inner.as_raw_fd()])? == 0 {
                return Ok(());
            }
            match listener.inner.accept() {
                Ok((stream, _)) => {
                    let holder = describe_peer(&stream);
                    tracing::info!(client = %holder, "client connected");
                    let end = self.serve_connection(stream, listener, shutdown, &holder);
                    tracing::info!(?end, "client gone");
                    if end == End::Shutdown {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    fn serve_connection(
        &mut self,
        stream: UnixStream,
        listener: &Listener,
        shutdown: &Shutdown,
        holder: &str,
    ) -> End {
        let conn = match Conn::cancellable(
            stream.into(),
            shutdown.watch_fd(),
            self.config.stall_timeout,
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot configure the client socket");
                return End::Client;
            }
        };
        set_send_buffer(conn.as_fd(), self.config.socket_buffer);
        let cap = self.config.msg_size_cap();
        let mut session = Session::new(&self.core, &mut self.ext, &self.config);
        let mut inbuf: Vec<u8> = Vec::new();
        let mut reply = Reply::new();
        let end = loop {
            let ready = match poll_ready(&[
                shutdown.watch_fd(),
                conn.raw_fd(),
                listener.inner.as_raw_fd(),
            ]) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "poll failed");
                    break End::Client;
                }
            };
            if ready[0] {
                break End::Shutdown;
            }
            if ready[2] {
                // A client is waiting: refused at once while the current
                // one is alive, even if it keeps us busy with requests.
                // If the current one is closing (its EOF pending, or due
                // within a moment), the newcomer is taken after it.
                if !closing(std::os::fd::AsFd::as_fd(&conn)) {
                    refuse_busy(listener, holder);
                }
            }
            if !ready[1] {
                continue;
            }
            match serve_message(&conn, &mut session, cap, &mut inbuf, &mut reply) {
                Ok(true) => {}
                Ok(false) => break End::Client,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => break End::Shutdown,
                Err(e) => {
                    tracing::warn!(error = %e, "connection dropped");
                    break End::Client;
                }
            }
        };
        session.close();
        end
    }
}

/// Reads one message, dispatches it, replies. `Ok(false)` = the client
/// closed the connection cleanly or the connection must close.
fn serve_message<D: Device>(
    conn: &Conn,
    session: &mut Session<'_, D>,
    cap: u32,
    inbuf: &mut Vec<u8>,
    reply: &mut Reply,
) -> io::Result<bool> {
    let mut hb = [0u8; HEADER_SIZE];
    let mut fds = RecvFds::default();
    if !conn.recv_exact(&mut hb, &mut fds, true)? {
        return Ok(false);
    }
    let hdr = Header::decode(&hb).expect("16-byte header");
    if (hdr.msg_size as usize) < HEADER_SIZE {
        reply.reset();
        reply.fail(
            libc::EINVAL,
            format!(
                "msg_size {} is smaller than the 16-byte header",
                hdr.msg_size
            ),
        );
        tracing::debug!(cmd = hdr.cmd, "{}", reply.message);
        send_reply(conn, &hdr, &mut *reply)?;
        return Ok(true);
    }
    if hdr.msg_size > cap {
        reply.reset();
        reply.fail(
            libc::EMSGSIZE,
            format!(
                "msg_size {} exceeds this server's cap of {cap}",
                hdr.msg_size
            ),
        );
        tracing::warn!(cmd = hdr.cmd, "{}; closing the connection", reply.message);
        send_reply(conn, &hdr, &mut *reply)?;
        return Ok(false);
    }
    let plen = hdr.msg_size as usize - HEADER_SIZE;
    if inbuf.len() < plen {
        inbuf.resize(plen, 0);
    }
    conn.recv_exact(&mut inbuf[..plen], &mut fds, false)?;
    dispatch(session, &hdr, &inbuf[..plen], fds, reply);
    if hdr.no_reply() {
        if reply.errno != 0 {
            log_unanswered_refusal(session, &hdr, reply);
        }
        return Ok(!reply.close);
    }
    send_reply(conn, &hdr, &mut *reply)?;
    Ok(!reply.close)
}

/// How many refused NO_REPLY messages per connection are logged as
/// warnings; later ones go to the debug log.
const UNANSWERED_WARNINGS: u64 = 16;

/// A refused message the client asked no reply for (QEMU posts its BAR
/// writes so): nobody else will ever hear of it, so it is logged as a
/// warning — the first [`UNANSWERED_WARNINGS`] of a connection, then at
/// debug level (a guest could otherwise flood the log).
fn log_unanswered_refusal<D: Device>(session: &mut Session<'_, D>, hdr: &Header, reply: &Reply) {
    session.refused_unanswered += 1;
    let n = session.refused_unanswered;
    if n <= UNANSWERED_WARNINGS {
        tracing::warn!(
            cmd = hdr.cmd,
            errno = reply.errno,
            "refused a message sent without reply (a posted write: the client cannot \
             learn of it): {}{}",
            reply.message,
            if n == UNANSWERED_WARNINGS {
                "; further ones on this connection are logged at debug level"
            } else {
                ""
            }
        );
    } else {
        tracing::debug!(
            cmd = hdr.cmd,
            errno = reply.errno,
            "refused without reply: {}",
            reply.message
        );
    }
}

/// Sends the reply to `req` (one sendmsg: header + payload + fds).
fn send_reply(conn: &Conn, req: &Header, reply: &mut Reply) -> io::Result<()> {
    let spliced = if reply.spliced && reply.errno == 0 {
        reply.pieces.len()
    } else {
        0
    };
    let payload = reply.payload();
    let mut flags = TYPE_REPLY;
    if reply.errno != 0 {
        flags |= FLAG_ERROR;
    }
    let h = Header {
        msg_id: req.msg_id,
        cmd: req.cmd,
        msg_size: (HEADER_SIZE + payload.len() + spliced) as u32,
        flags,
        error_no: reply.errno as u32,
    }
    .to_bytes();
    let fds: Vec<RawFd> = reply.fds.iter().map(|f| f.as_raw_fd()).collect();
    conn.send(&[&h, payload], &fds)?;
    if spliced > 0 {
        migdata::send_pieces(conn, reply)?;
    }
    Ok(())
}

/// How long a newcomer waits for the current client to finish before it is
/// refused with `EBUSY`.
const BUSY_GRACE: Duration = Duration::from_millis(50);

/// `pid N (command line)` of a connected client, for messages.
fn describe_peer(s: &UnixStream) -> String {
    use std::os::fd::AsFd;
    match vfio_migrate_sys::sock::peer_pid(s.as_fd()) {
        Ok(pid) if pid > 0 => {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    let words: Vec<String> = b
                        .split(|c| *c == 0)
                        .filter(|w| !w.is_empty())
                        .take(6)
                        .map(|w| String::from_utf8_lossy(w).into_owned())
                        .collect();
                    words.join(" ")
                })
                .unwrap_or_default();
            if cmd.is_empty() {
                format!("pid {pid}")
            } else {
                format!("pid {pid} ({cmd})")
            }
        }
        _ => "another client".into(),
    }
}

/// True when the client on `fd` is closing: its end of stream is next to
/// read, now or within [`BUSY_GRACE`]. Pending requests mean it is alive.
fn closing(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    // Hung up (requests it sent may still be queued before its end).
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    if matches!(sys::fd::poll(std::slice::from_mut(&mut p), 0), Ok(n) if n > 0)
        && p.revents & (libc::POLLHUP | libc::POLLRDHUP) != 0
    {
        return true;
    }
    let peek = || {
        let mut one = [0u8; 1];
        sys::sock::recv(fd, &mut one, libc::MSG_PEEK | libc::MSG_DONTWAIT)
    };
    let gone = |r: io::Result<usize>| match r {
        Ok(n) => Some(n == 0),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        // Reset or broken: it is gone.
        Err(_) => Some(true),
    };
    if let Some(g) = gone(peek()) {
        return g;
    }
    // Nothing pending: an idle client stays; one about to close shows
    // its end within the grace.
    readable_within(fd.as_raw_fd(), BUSY_GRACE) && gone(peek()).unwrap_or(false)
}

/// True when `fd` becomes readable (data, EOF or hang-up) within `t`.
fn readable_within(fd: RawFd, t: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    matches!(
        sys::fd::poll(std::slice::from_mut(&mut p), t.as_millis() as libc::c_int),
        Ok(n) if n > 0
    )
}

/// Accepts a client while another one is served: tells it EBUSY (as the
/// reply to the VERSION it is about to send) and closes it.
fn refuse_busy(listener: &Listener, holder: &str) {
    if let Ok((s, _)) = listener.inner.accept() {
        let who = describe_peer(&s);
        tracing::warn!(
            client = %who,
            "a second client connected while {holder} is served: refused with EBUSY"
        );
        // The reason rides in the error reply's payload (NUL-terminated
        // text); clients that do not look at it see EBUSY.
        let mut reason = format!("the device is in use by {holder}").into_bytes();
        reason.push(0);
        let mut h = Header {
            msg_id: 0,
            cmd: vfio_migrate_abi::vfio_user::Command::Version as u16,
            msg_size: (HEADER_SIZE + reason.len()) as u32,
            flags: TYPE_REPLY | FLAG_ERROR,
            error_no: libc::EBUSY as u32,
        }
        .to_bytes();
        h.extend_from_slice(&reason);
        let _ = s.set_nonblocking(true);
        use std::io::Write;
        let _ = (&s).write_all(&h);
    }
}

/// Waits until one of `fds` is readable (or hung up); returns which are.
fn poll_ready(fds: &[RawFd]) -> io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        match sys::fd::poll(&mut p, -1) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if p.iter().any(|x| x.revents != 0) {
            return Ok(p.iter().map(|x| x.revents != 0).collect());
        }
    }
}

/// Waits until one of `fds` is readable (or hung up); returns the lowest
/// such index.
fn poll_any(fds: &[RawFd]) -> io::Result<usize> {
    let ready = poll_ready(fds)?;
    Ok(ready
        .iter()
        .position(|&r| r)
        .expect("poll_ready returns with one ready"))
}

#[cfg(test)]
mod testdev;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz_tests;
