//! Migration data through a pipe without a copy through this process
//! ([`DataSplice`]), with our server's checksummed transfers
//! (`FEATURE_MIG_DATA_CRC`): a MIG_DATA_READ reply's head and checksum
//! are read, and its data is spliced from the socket into the caller's
//! pipe (the caller frames it with the checksum and splices it on); a
//! MIG_DATA_WRITE's head and checksum are sent, and its data is spliced
//! from the caller's pipe into the socket (the server checks it before
//! the device takes it).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;
use vfio_migrate_abi::vfio_user::{Command, Header, MigData, HEADER_SIZE, TYPE_COMMAND};
use vfio_migrate_backend::{BackendError, DataSplice, Result, Spliced};
use vfio_migrate_vfio_user::ext::{FEATURE_MIG_DATA_CRC, MIG_DATA_CRC_SIZE};
use vfio_migrate_vfio_user::sock::RecvFds;

use super::Client;
use vfio_migrate_sys as sys;

/// Spliced MIG_DATA_WRITEs that may be unanswered at once.
pub const WRITES_IN_FLIGHT: usize = 2;

impl Client {
    /// Asks the server for checksummed MIG_DATA_READ replies (once per
    /// connection); false when it does not offer them.
    pub fn enable_mig_data_crc(&mut self) -> Result<bool> {
        if self.mig_crc {
            return Ok(true);
        }
        if !self.peer_is_vfio_migrate()
            || !self.feature_probe(FEATURE_MIG_DATA_CRC, vfio_migrate_abi::kernel::FEATURE_SET)?
        {
            return Ok(false);
        }
        let mut on = [0u8; 8];
        on[..4].copy_from_slice(&1u32.to_le_bytes());
        self.feature_set(FEATURE_MIG_DATA_CRC, &on)?;
        self.mig_crc = true;
        Ok(true)
    }

    /// MIG_DATA_READ of up to `max` bytes whose data goes from the socket
    /// into the pipe `pipe` and on, without passing through this process:
    /// `each` is told the data's length and CRC32C (as the server computed
    /// it) first, then — as often as needed — how many bytes are in the
    /// pipe, which it must move out before returning (the pipe's slots, not
    /// its bytes, may run out first: a chunk can take several pipefuls).
    /// Returns the count and the CRC. Needs [`Client::enable_mig_data_crc`].
    ///
    /// `ahead`: how many more reads of the same size to keep in flight
    /// behind this one, so the server fills the next reply while this one
    /// is spliced on (the protocol lets a client send before it is
    /// answered; our server answers in order). The first call answers the
    /// oldest read in flight instead of sending one. Whoever sends ahead
    /// must collect: call again (with `ahead` 0 at the end) while
    /// [`Client::reads_ahead`] is not 0 — every reply may carry stream
    /// data. Any other command first answers and drops them (an abandoned
    /// stream: abort and rollback). When `each` fails, the rest of the
    /// reply is drained and the reads ahead dropped, so the connection
    /// stays usable for the rollback.
    pub fn mig_data_read_spliced(
        &mut self,
        pipe: BorrowedFd<'_>,
        max: usize,
        ahead: usize,
        each: &mut dyn FnMut(Spliced) -> io::Result<()>,
    ) -> Result<(usize, u32)> {
        let step = "MIG_DATA_READ";
        if !self.mig_crc {
            return Err(BackendError::unsupported(
                step,
                "checksummed replies are not on for this connection",
            ));
        }
        let size = max.min(self.max_recv_chunk());
        while self.ahead.len() < 1 + ahead {
            let req = match self.send_mig_data_read(step, size, true) {
                Ok(req) => req,
                Err(e) => {
                    // Leave the connection as it was for the rollback.
                    let _ = self.drop_reads_ahead();
                    return Err(e);
                }
            };
            self.ahead.push_back((req, size));
        }
        let (req, size) = self.ahead.pop_front().expect("one at least");
        let mut r = match self.mig_data_read_reply(step, &req, size) {
            Ok(r) => r,
            Err(e) => {
                let _ = self.drop_reads_ahead();
                return Err(e);
            }
        };
        let io = |e| BackendError::io(step, e);
        let crc = r.crc.expect("checksummed replies are on");
        let got = r.got;
        let mut left = got;
        let mut moved = if got > 0 {
            each(Spliced::Head { len: got, crc })
        } else {
            Ok(())
        };
        let mut in_pipe = 0usize;
        let mut moving = Instant::now();
        while left > 0 && moved.is_ok() {
            let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE | libc::SPLICE_F_NONBLOCK;
            match sys::fd::splice(self.conn.as_fd(), pipe, left, flags) {
                Ok(0) => {
                    return Err(io(self.conn.poison(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "socket closed during splice",
                    ))))
                }
                Ok(k) => {
                    left -= k;
                    in_pipe += k;
                    moving = Instant::now();
                }
                // The pipe is full, or the socket has nothing yet: move
                // what the pipe holds on first; an empty pipe means the
                // socket is waited for.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if in_pipe > 0 {
                        moved = each(Spliced::Data(std::mem::take(&mut in_pipe)));
                    } else {
                        self.conn.wait_ready(libc::POLLIN, moving).map_err(io)?
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The rest of the reply is still on the socket: unusable.
                Err(e) => return Err(io(self.conn.poison(e))),
            }
        }
        if in_pipe > 0 && moved.is_ok() {
            moved = each(Spliced::Data(in_pipe));
        }
        if let Err(e) = moved {
            // Keep the connection in step for the rollback: the rest of
            // this reply and the reads ahead are drained.
            self.conn
                .discard(r.rest - (got - left), &mut r.rf)
                .map_err(io)?;
            let _ = self.drop_reads_ahead();
            return Err(io(e));
        }
        self.conn.discard(r.rest - got, &mut r.rf).map_err(io)?;
        Ok((got, crc))
    }

    /// MIG_DATA_READs sent ahead and not answered yet.
    pub fn reads_ahead(&self) -> usize {
        self.ahead.len()
    }

    /// Answers the reads sent ahead and drops their data (the stream was
    /// abandoned); says how much was dropped.
    pub(crate) fn drop_reads_ahead(&mut self) -> Result<()> {
        let step = "MIG_DATA_READ (sent ahead)";
        let mut dropped = 0usize;
        while let Some((req, size)) = self.ahead.pop_front() {
            match self.mig_data_read_reply(step, &req, size) {
                Ok(mut r) => {
                    dropped += r.got;
                    self.conn
                        .discard(r.rest, &mut r.rf)
                        .map_err(|e| BackendError::io(step, e))?;
                }
                // A refusal was answered and consumed.
                Err(BackendError::Refused { .. }) => {}
                Err(e) => {
                    self.ahead.clear();
                    return Err(e);
                }
            }
        }
        if dropped > 0 {
            tracing::debug!(
                device = %self.name,
                dropped,
                "migration data read ahead was dropped (the stream was abandoned)"
            );
        }
        Ok(())
    }
}

impl Client {
    /// MIG_DATA_WRITE of `len` bytes that go through the pipe `pipe`
    /// (refilled by `fill`, see [`DataSplice::write_data_spliced`]) into
    /// the socket; the server checks them against `crc` before the device
    /// takes them. Needs [`Client::enable_mig_data_crc`].
    ///
    /// Returns once the data is on the socket, without waiting for the
    /// answer: up to [`WRITES_IN_FLIGHT`] writes stay unanswered, so the
    /// next one moves while the server loads this one. A refusal is
    /// reported by a later write (one that waits for the oldest answer to
    /// make room; it is then not sent) or by [`Client::flush_writes`],
    /// which whoever relies on the device having taken everything calls
    /// first.
    /// A failure once the head went leaves the message half sent: the
    /// connection is then unusable (every later call fails at once).
    pub fn mig_data_write_spliced(
        &mut self,
        pipe: BorrowedFd<'_>,
        len: usize,
        crc: u32,
        fill: &mut dyn FnMut(usize) -> io::Result<usize>,
    ) -> Result<()> {
        let step = "MIG_DATA_WRITE";
        if !self.ahead.is_empty() {
            self.drop_reads_ahead()?;
        }
        if !self.mig_crc || len > self.max_send_chunk() {
            return Err(BackendError::unsupported(
                step,
                "checksummed transfers are not on, or the write is too large",
            ));
        }
        if let Some(e) = self.write_error.take() {
            return Err(e);
        }
        while self.writes.len() >= WRITES_IN_FLIGHT {
            self.collect_write()?;
        }
        let h = Header {
            msg_id: self.next_id(),
            cmd: Command::MigDataWrite as u16,
            msg_size: (HEADER_SIZE + MigData::SIZE + MIG_DATA_CRC_SIZE + len) as u32,
            flags: TYPE_COMMAND,
            error_no: 0,
        };
        let head = MigData {
            argsz: super::mig_commands::mig_write_argsz(len),
            size: len as u32,
        };
        let mut block = [0u8; MIG_DATA_CRC_SIZE];
        block[..4].copy_from_slice(&crc.to_le_bytes());
        let io = |e| BackendError::io(step, e);
        self.conn
            .send(&[&h.to_bytes(), &head.to_bytes(), &block], &[])
            .map_err(io)?;
        self.pump(pipe, len, fill)
            .map_err(|e| io(self.conn.poison(e)))?;
        self.writes.push_back(h);
        Ok(())
    }

    /// Waits for the answers to every spliced write in flight; the first
    /// refusal among them (or one answered earlier) is returned once all
    /// are answered.
    pub fn flush_writes(&mut self) -> Result<()> {
        let mut first = self.write_error.take();
        while !self.writes.is_empty() {
            match self.collect_write() {
                Ok(()) => {}
                Err(e @ BackendError::Refused { .. }) => {
                    first.get_or_insert(e);
                }
                Err(e) => {
                    self.writes.clear();
                    return Err(first.unwrap_or(e));
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Reads the answer to the oldest spliced write in flight.
    fn collect_write(&mut self) -> Result<()> {
        let step = "MIG_DATA_WRITE";
        let Some(h) = self.writes.pop_front() else {
            return Ok(());
        };
        let mut rf = RecvFds::default();
        let r = self.recv_header(step, &h, &mut rf)?;
        if r.is_error() {
            return Err(corrupted(self.refused(step, &r, &mut rf)));
        }
        self.conn
            .discard(r.msg_size as usize - HEADER_SIZE, &mut rf)
            .map_err(|e| BackendError::io(step, e))
    }

    /// Moves `len` bytes into the socket through the pipe: refilled by
    /// `fill` whenever it is empty, drained into the socket (waiting,
    /// with the connection's deadlines, while the socket is full).
    fn pump(
        &self,
        pipe: BorrowedFd<'_>,
        len: usize,
        fill: &mut dyn FnMut(usize) -> io::Result<usize>,
    ) -> io::Result<()> {
        let mut left = len;
        let mut in_pipe = 0usize;
        let mut moving = Instant::now();
        while left > 0 {
            if in_pipe == 0 {
                in_pipe = fill(left)?.min(left);
            }
            // Never more than the pipe holds, so only the socket can be
            // full (and is waited for).
            let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE | libc::SPLICE_F_NONBLOCK;
            match sys::fd::splice(pipe, self.conn.as_fd(), in_pipe, flags) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the pipe ran dry inside a MIG_DATA_WRITE",
                    ))
                }
                Ok(k) => {
                    in_pipe -= k;
                    left -= k;
                    moving = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.conn.wait_ready(libc::POLLOUT, moving)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Our server refuses a checksummed MIG_DATA_WRITE whose data does not
/// match its checksum with `EILSEQ`: says what that means.
pub(crate) fn corrupted(e: BackendError) -> BackendError {
    match e {
        BackendError::Refused {
            step,
            errno: libc::EILSEQ,
            detail,
        } if detail.is_empty() => BackendError::refused(
            step,
            libc::EILSEQ,
            "the data does not match the checksum it came with (corrupted on the way): the device took none of it",
        ),
        e => e,
    }
}

impl DataSplice for Client {
    fn read_data_spliced(
        &mut self,
        pipe: BorrowedFd<'_>,
        max: usize,
        ahead: usize,
        each: &mut dyn FnMut(Spliced) -> io::Result<()>,
    ) -> Result<Option<(usize, u32)>> {
        if !self.enable_mig_data_crc()? {
            return Ok(None);
        }
        self.mig_data_read_spliced(pipe, max, ahead, each).map(Some)
    }

    fn reads_ahead(&self) -> usize {
        self.ahead.len()
    }

    fn write_data_spliced(
        &mut self,
        pipe: BorrowedFd<'_>,
        len: usize,
        crc: u32,
        fill: &mut dyn FnMut(usize) -> io::Result<usize>,
    ) -> Result<bool> {
        if len > self.max_send_chunk() || !self.enable_mig_data_crc()? {
            return Ok(false);
        }
        self.mig_data_write_spliced(pipe, len, crc, fill)
            .map(|()| true)
    }

    fn flush_writes(&mut self) -> Result<()> {
        Client::flush_writes(self)
    }
}
