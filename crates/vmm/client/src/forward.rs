//! Server-to-server migration data on one host without copying it through
//! this process: each MIG_DATA_READ reply's data is spliced from the
//! source socket through a pipe into a MIG_DATA_WRITE to the destination
//! (the kernel moves page references, not bytes), and the next read is
//! asked for before the destination's reply is awaited, so source and
//! destination work at the same time.
//!
//! Used only when the destination is a vfio-migrate server: the write's
//! header and its data leave in separate calls, which a peer that does not
//! loop on partial reads could not take. Otherwise it falls back to a
//! buffered read/write loop.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use vfio_migrate_abi::vfio_user::{Command, Header, MigData, HEADER_SIZE, TYPE_COMMAND};
use vfio_migrate_backend::{BackendError, Result};

use super::Client;
use vfio_migrate_sys as sys;
use vfio_migrate_vfio_user::sock::RecvFds;

/// A pipe used as the splice buffer.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    cap: usize,
}

impl Pipe {
    fn new(want: usize) -> io::Result<Self> {
        let (r, w) = sys::fd::pipe(libc::O_CLOEXEC)?;
        // A refusal just leaves the default size, which F_GETPIPE_SZ then
        // reports.
        let _ = sys::fd::set_pipe_size(w.as_fd(), want);
        let cap = sys::fd::pipe_size(w.as_fd())?;
        Ok(Self { r, w, cap })
    }
}

/// One blocking `splice` call, retried on EINTR; 0 bytes from a socket is
/// its end.
fn splice(
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    len: usize,
) -> io::Result<usize> {
    loop {
        let n = match sys::fd::splice(from, to, len, libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "socket closed during splice",
            ));
        }
        return Ok(n);
    }
}

/// Moves migration data from `src` (PRE_COPY or STOP_COPY) to `dst`
/// (RESUMING) until `src` has nothing more (a 0-byte read), in chunks of
/// at most `chunk` bytes. Returns the bytes moved.
pub fn forward_mig_data(src: &mut Client, dst: &mut Client, chunk: usize) -> Result<u64> {
    let chunk = chunk
        .min(src.max_recv_chunk())
        .min(dst.max_send_chunk())
        .max(1);
    if !dst.peer_is_vfio_migrate() || src.mig_crc {
        return forward_buffered(src, dst, chunk);
    }
    let step = "forward migration data";
    let pipe = Pipe::new(1 << 20).map_err(|e| BackendError::io(step, e))?;
    let read_req = |c: &mut Client| -> Result<Header> {
        let head = MigData {
            argsz: (MigData::SIZE + chunk) as u32,
            size: chunk as u32,
        };
        c.send(
            "MIG_DATA_READ",
            Command::MigDataRead as u16,
            &[&head.to_bytes()],
            &[],
        )
    };
    let mut pending = read_req(src)?;
    let mut total = 0u64;
    loop {
        let mut rf = RecvFds::default();
        let h = src.recv_header("MIG_DATA_READ", &pending, &mut rf)?;
        if h.is_error() {
            return Err(src.refused("MIG_DATA_READ", &h, &mut rf));
        }
        let plen = h.msg_size as usize - HEADER_SIZE;
        let mut hb = [0u8; MigData::SIZE];
        if plen < hb.len() {
            src.conn
                .discard(plen, &mut rf)
                .map_err(|e| BackendError::io(step, e))?;
            return Err(BackendError::protocol(
                "MIG_DATA_READ",
                format!("reply of {plen} bytes has no head"),
            ));
        }
        src.conn
            .recv_exact(&mut hb, &mut rf, false)
            .map_err(|e| BackendError::io(step, e))?;
        let n = MigData::decode(&hb).expect("8 bytes").size as usize;
        if n > chunk || n > plen - hb.len() {
            src.conn
                .discard(plen - hb.len(), &mut rf)
                .map_err(|e| BackendError::io(step, e))?;
            return Err(BackendError::protocol(
                "MIG_DATA_READ",
                format!("reply claims {n} bytes for a {chunk}-byte read"),
            ));
        }
        if n == 0 {
            src.conn
                .discard(plen - hb.len(), &mut rf)
                .map_err(|e| BackendError::io(step, e))?;
            return Ok(total);
        }
        // The write's header and head, then its data straight from the
        // source socket.
        let wh = Header {
            msg_id: dst.next_id(),
            cmd: Command::MigDataWrite as u16,
            msg_size: (HEADER_SIZE + MigData::SIZE + n) as u32,
            flags: TYPE_COMMAND,
            error_no: 0,
        };
        let whead = MigData {
            argsz: super::mig_commands::mig_write_argsz(n),
            size: n as u32,
        };
        dst.conn
            .send(&[&wh.to_bytes(), &whead.to_bytes()], &[])
            .map_err(|e| BackendError::io("MIG_DATA_WRITE", e))?;
        let mut left = n;
        let mut moving = std::time::Instant::now();
        while left > 0 {
            // The sockets are non-blocking: wait (with their deadlines)
            // whenever a splice would block.
            let k = match splice(src.conn.as_fd(), pipe.w.as_fd(), left.min(pipe.cap)) {
                Ok(0) => {
                    return Err(BackendError::io(
                        step,
                        std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the source server closed the connection mid-reply",
                        ),
                    ))
                }
                Ok(k) => {
                    moving = std::time::Instant::now();
                    k
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    src.conn
                        .wait_ready(libc::POLLIN, moving)
                        .map_err(|e| BackendError::io(step, e))?;
                    continue;
                }
                Err(e) => return Err(BackendError::io(step, e)),
            };
            let mut out = k;
            while out > 0 {
                match splice(pipe.r.as_fd(), dst.conn.as_fd(), out) {
                    Ok(m) => {
                        out -= m;
                        moving = std::time::Instant::now();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => dst
                        .conn
                        .wait_ready(libc::POLLOUT, moving)
                        .map_err(|e| BackendError::io("MIG_DATA_WRITE", e))?,
                    Err(e) => return Err(BackendError::io("MIG_DATA_WRITE", e)),
                }
            }
            left -= k;
        }
        src.conn
            .discard(plen - hb.len() - n, &mut rf)
            .map_err(|e| BackendError::io(step, e))?;
        total += n as u64;
        // Ask for the next chunk while the destination loads this one.
        pending = read_req(src)?;
        let mut df = RecvFds::default();
        let r = dst.recv_header("MIG_DATA_WRITE", &wh, &mut df)?;
        let rlen = r.msg_size as usize - HEADER_SIZE;
        if r.is_error() {
            let e = dst.refused("MIG_DATA_WRITE", &r, &mut df);
            // Keep the source connection in step: take the answer to the
            // read already asked for.
            let mut sf = RecvFds::default();
            if let Ok(h) = src.recv_header("MIG_DATA_READ", &pending, &mut sf) {
                let _ = src.conn.discard(h.msg_size as usize - HEADER_SIZE, &mut sf);
            }
            return Err(e);
        }
        dst.conn
            .discard(rlen, &mut df)
            .map_err(|e| BackendError::io("MIG_DATA_WRITE", e))?;
    }
}

/// The plain loop: read a chunk into a buffer, write it.
fn forward_buffered(src: &mut Client, dst: &mut Client, chunk: usize) -> Result<u64> {
    let mut buf = vec![0u8; chunk];
    let mut total = 0u64;
    loop {
        let n = src.mig_data_read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        dst.mig_data_write(&buf[..n])?;
        total += n as u64;
    }
}
