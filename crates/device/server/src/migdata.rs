//! MIG_DATA_READ and MIG_DATA_WRITE: the migration data stream, read
//! straight into the reply buffer and written straight from the request;
//! with `FEATURE_MIG_DATA_CRC` on, a read's reply also carries the data's
//! CRC32C, and a write carries one that is checked first. With it on, a
//! stopped device that describes its data
//! ([`vfio_migrate_device::Device::save_pieces`]) has it spliced from its
//! memory into the socket ([`send_pieces`]).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use vfio_migrate_abi::vfio_user::MigData;
use vfio_migrate_device::{Device, DeviceError, DeviceResult};
use vfio_migrate_vfio_user::ext::MIG_DATA_CRC_SIZE;
use vfio_migrate_vfio_user::sock::Conn;

use super::dispatch::{decode, no_fds};
use super::session::{Reply, Session};

/// MIG_DATA_READ: fills up to `size` bytes (asking the device until it has
/// nothing more right now), so a short reply in STOP_COPY means the end of
/// the state, as the spec says.
pub(crate) fn read<D: Device>(
    s: &mut Session<'_, D>,
    payload: &[u8],
    fds: &[OwnedFd],
    reply: &mut Reply,
) -> DeviceResult<()> {
    no_fds("MIG_DATA_READ", fds)?;
    let req = decode(payload, "MIG_DATA_READ", MigData::SIZE, MigData::decode)?;
    let limit = s.max_out();
    if req.size as usize > limit {
        return Err(DeviceError::new(
            libc::E2BIG,
            format!(
                "MIG_DATA_READ of {} bytes exceeds max_data_xfer_size {limit}",
                req.size
            ),
        ));
    }
    let crc = s.mig_data_crc;
    let extra = if crc { MIG_DATA_CRC_SIZE } else { 0 };
    let need = (MigData::SIZE + extra) as u64 + req.size as u64;
    if (req.argsz as u64) < need {
        return Err(DeviceError::inval(format!(
            "MIG_DATA_READ argsz {} is smaller than the {need}-byte reply",
            req.argsz
        )));
    }
    let mut core = s.lock();
    if crc {
        // A stopped device may describe its data instead: it is spliced
        // from its memory into the socket, and its checksum comes from
        // the device's own (no copy, no pass here).
        if let Some(n) = core.read_data_pieces(req.size as usize, &mut reply.pieces)? {
            let head = MigData {
                argsz: (MigData::SIZE + extra + n) as u32,
                size: n as u32,
            };
            reply.put(&head.to_bytes());
            let mut block = [0u8; MIG_DATA_CRC_SIZE];
            block[..4].copy_from_slice(&reply.pieces.crc().to_le_bytes());
            reply.put(&block);
            reply.set_spliced();
            return Ok(());
        }
    }
    reply.grow(MigData::SIZE + extra);
    let buf = reply.grow(req.size as usize);
    let mut got = 0usize;
    while got < buf.len() {
        match core.read_data(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            // Keep what was read; the next read reports the error.
            Err(e) if got > 0 => {
                tracing::debug!(error = %e, got, "device save stopped mid-reply");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    reply.truncate(MigData::SIZE + extra + got);
    let p = reply.payload_mut();
    p[..MigData::SIZE].copy_from_slice(
        &MigData {
            argsz: (MigData::SIZE + extra + got) as u32,
            size: got as u32,
        }
        .to_bytes(),
    );
    if crc {
        // While the data is still in cache: one pass, so the client need
        // not read it.
        let (head, data) = p.split_at_mut(MigData::SIZE + extra);
        let c = crc32c::crc32c(data);
        head[MigData::SIZE..MigData::SIZE + 4].copy_from_slice(&c.to_le_bytes());
        head[MigData::SIZE + 4..].fill(0);
    }
    Ok(())
}

/// MIG_DATA_WRITE: exactly `size` data bytes must follow the head.
pub(crate) fn write<D: Device>(
    s: &mut Session<'_, D>,
    payload: &[u8],
    fds: &[OwnedFd],
) -> DeviceResult<()> {
    no_fds("MIG_DATA_WRITE", fds)?;
    let req = decode(payload, "MIG_DATA_WRITE", MigData::SIZE, MigData::decode)?;
    let mut data = &payload[MigData::SIZE..];
    if s.mig_data_crc {
        // The data's checksum comes first: the client may not have read
        // the data (it spliced it), so it is checked here, before the
        // device takes any of it.
        if data.len() < MIG_DATA_CRC_SIZE {
            return Err(DeviceError::inval(
                "MIG_DATA_WRITE without its checksum block (checksummed transfers are on)",
            ));
        }
        let want = u32::from_le_bytes(data[..4].try_into().expect("4 bytes"));
        data = &data[MIG_DATA_CRC_SIZE..];
        let got = crc32c::crc32c(data);
        if got != want {
            return Err(DeviceError::new(
                libc::EILSEQ,
                format!(
                    "MIG_DATA_WRITE data does not match its checksum (sent {want:#010x}, computed {got:#010x}): corrupted in transit; nothing was loaded"
                ),
            ));
        }
    }
    if data.len() != req.size as usize {
        return Err(DeviceError::inval(format!(
            "MIG_DATA_WRITE size is {} but {} data bytes follow",
            req.size,
            data.len()
        )));
    }
    s.lock().write_data(data)
}

/// Sends the pieces of a MIG_DATA_READ reply after its head: bytes as
/// they are, file ranges by splice through the reply's pipe (the socket
/// takes the file's pages; nothing passes through this process). A failure
/// leaves the reply half sent: the connection is closed.
pub(crate) fn send_pieces(conn: &Conn, reply: &mut Reply) -> io::Result<()> {
    use vfio_migrate_device::Piece;
    use vfio_migrate_sys::fd;
    if reply.pipe.is_none() {
        let (r, w) = fd::pipe(libc::O_CLOEXEC)?;
        let _ = fd::set_pipe_size(w.as_fd(), PIPE);
        reply.pipe = Some((r, w));
    }
    let (pr, pw) = reply.pipe.as_ref().expect("made");
    let cap = fd::pipe_size(pw.as_fd()).unwrap_or(64 << 10);
    // Into the pipe: it is empty at every fill, so this never waits for
    // the pipe (a swapped-out page is read in). Out of it: the socket is
    // non-blocking and waited for with the deadlines.
    let fill = libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE;
    let flags = fill | libc::SPLICE_F_NONBLOCK;
    for piece in reply.pieces.pieces() {
        match piece {
            Piece::Bytes(r) => conn.send(&[&reply.pieces.bytes()[r.clone()]], &[])?,
            Piece::File { fd: f, offset, len } => {
                let (mut at, mut left) = (*offset, *len);
                while left > 0 {
                    // The pipe is empty here: fill it, then drain it.
                    let k = match fd::splice_from_offset(
                        f.as_fd(),
                        at,
                        pw.as_fd(),
                        left.min(cap),
                        fill,
                    ) {
                        Ok(0) => {
                            return Err(conn.poison(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "device memory ended inside a MIG_DATA_READ reply",
                            )))
                        }
                        Ok(k) => k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(conn.poison(e)),
                    };
                    at += k as u64;
                    left -= k;
                    let mut d = k;
                    let mut moving = std::time::Instant::now();
                    while d > 0 {
                        match fd::splice(pr.as_fd(), conn.as_fd(), d, flags) {
                            Ok(n) => {
                                d -= n;
                                moving = std::time::Instant::now();
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                conn.wait_ready(libc::POLLOUT, moving)?
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(conn.poison(e)),
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The reply pipe's size: a 1 MiB chunk of device memory in one fill.
const PIPE: usize = 1 << 20;
