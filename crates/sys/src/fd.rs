//! File descriptors: pipes, eventfds, flags, `fstat`, positioned and plain
//! I/O on a borrowed fd, `splice`, `poll`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::cvt;

/// A new pipe `(read end, write end)`; `flags` are `pipe2` flags
/// (`O_CLOEXEC`, `O_NONBLOCK`, `O_DIRECT`).
pub fn pipe(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut p = [-1 as libc::c_int; 2];
    // SAFETY: pipe2 writes two ints into the two-element array, which
    // lives for the call.
    cvt(unsafe { libc::pipe2(p.as_mut_ptr(), flags) })?;
    // SAFETY: on success both are new fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) })
}

/// A new eventfd with counter 0 (close-on-exec).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes integers only.
    let raw = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
    // SAFETY: a non-negative result is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Sets `O_NONBLOCK` on `fd` (keeping its other status flags).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl(F_GETFL) takes no argument and passes no memory.
    let fl = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: fcntl(F_SETFL) with an integer argument.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) })?;
    Ok(())
}

/// `fstat` of `fd`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the stat struct it is pointed at, which lives
    // for the call.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it initialised the whole struct.
    Ok(unsafe { st.assume_init() })
}

fn off_t(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file offset {offset:#x} is too large"),
        )
    })
}

/// One `pread`: reads up to `buf.len()` bytes at `offset` (the file
/// position does not move); returns the count, 0 at the end of the file.
pub fn read_at(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let off = off_t(offset)?;
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`,
    // which is valid and writable for the call.
    let n = cvt(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off) })?;
    Ok(n as usize)
}

/// One `pwrite`: writes up to `data.len()` bytes at `offset`; returns the
/// count.
pub fn write_at(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> io::Result<usize> {
    let off = off_t(offset)?;
    // SAFETY: the kernel reads at most `data.len()` bytes from `data`,
    // which is valid for the call.
    let n = cvt(unsafe { libc::pwrite(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), off) })?;
    Ok(n as usize)
}

/// One `write`; returns the count.
pub fn write(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `data.len()` bytes from `data`,
    // which is valid for the call.
    let n = cvt(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })?;
    Ok(n as usize)
}

/// Asks for a pipe buffer of `bytes` (`F_SETPIPE_SZ`); returns the size
/// granted. Unprivileged callers are capped at `/proc/sys/fs/pipe-max-size`.
pub fn set_pipe_size(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl(F_SETPIPE_SZ) with an integer argument.
    let n = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, want) })?;
    Ok(n as usize)
}

/// The pipe's buffer size (`F_GETPIPE_SZ`).
pub fn pipe_size(fd: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: fcntl(F_GETPIPE_SZ) takes no argument.
    let n = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) })?;
    Ok(n as usize)
}

/// One `splice` of up to `len` bytes from `from` to `to` (one of them a
/// pipe), at the current positions; `flags` are `SPLICE_F_*`. Returns the
/// count, 0 at the end of the input. `EINTR` is returned, not retried.
pub fn splice(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    len: usize,
    flags: libc::c_uint,
) -> io::Result<usize> {
    splice_at(from, None, to, len, flags)
}

/// One `splice` of up to `len` bytes of the file `from` at `offset` (its
/// position is not used or moved) into the pipe `to`. From a memfd the
/// pipe takes references to the file's pages: no copy. Returns the count
/// (0 past the end of the file). `EINTR` is returned, not retried.
pub fn splice_from_offset(
    from: BorrowedFd<'_>,
    offset: u64,
    to: BorrowedFd<'_>,
    len: usize,
    flags: libc::c_uint,
) -> io::Result<usize> {
    let off = libc::loff_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    splice_at(from, Some(off), to, len, flags)
}

fn splice_at(
    from: BorrowedFd<'_>,
    offset: Option<libc::loff_t>,
    to: BorrowedFd<'_>,
    len: usize,
    flags: libc::c_uint,
) -> io::Result<usize> {
    let mut off = offset.unwrap_or(0);
    let off_in: *mut libc::loff_t = match offset {
        Some(_) => &mut off,
        None => std::ptr::null_mut(),
    };
    // SAFETY: splice between two fds; `off_in` is null (the current
    // position) or points to `off`, a local that lives for the call and
    // that the kernel reads and advances. The kernel moves data between
    // the files only, never through our memory.
    let n = cvt(unsafe {
        libc::splice(
            from.as_raw_fd(),
            off_in,
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            flags,
        )
    })?;
    Ok(n as usize)
}

/// One `poll` over `fds` for at most `timeout_ms` (-1: no limit); returns
/// how many have events in `revents`. `EINTR` is returned, not retried.
///
/// The entries name raw fd numbers: an fd that is not open reports
/// `POLLNVAL`, nothing worse.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, writable array of `fds.len()` pollfd for
    // the call; the kernel only writes their `revents`.
    let n = cvt(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) })?;
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn pipe_poll_write_and_splice() {
        let (r, w) = pipe(libc::O_CLOEXEC | libc::O_NONBLOCK).unwrap();
        let mut p = [libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        assert_eq!(poll(&mut p, 0).unwrap(), 0);
        assert_eq!(write(w.as_fd(), b"xy").unwrap(), 2);
        assert_eq!(poll(&mut p, 0).unwrap(), 1);
        assert!(p[0].revents & libc::POLLIN != 0);
        let size = pipe_size(w.as_fd()).unwrap();
        assert!(size >= 4096);
        let _ = set_pipe_size(w.as_fd(), 1 << 16);
        let (r2, w2) = pipe(libc::O_CLOEXEC).unwrap();
        assert_eq!(splice(r.as_fd(), w2.as_fd(), 2, 0).unwrap(), 2);
        let mut b = [0u8; 2];
        assert_eq!(
            std::io::Read::read(&mut std::fs::File::from(r2), &mut b).unwrap(),
            2
        );
        assert_eq!(&b, b"xy");
    }

    #[test]
    fn eventfd_nonblocking_and_fstat() {
        let e = eventfd().unwrap();
        set_nonblocking(e.as_fd()).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(
            read_at(e.as_fd(), &mut b, 0).unwrap_err().raw_os_error(),
            Some(libc::ESPIPE)
        );
        assert_eq!(write(e.as_fd(), &1u64.to_ne_bytes()).unwrap(), 8);
        let st = fstat(e.as_fd()).unwrap();
        assert_ne!(st.st_mode & libc::S_IFMT, libc::S_IFREG);
        let m = crate::memfd::create_sized(c"fd-test", 100).unwrap();
        assert_eq!(write_at(m.as_fd(), b"abc", 10).unwrap(), 3);
        assert_eq!(read_at(m.as_fd(), &mut b[..3], 10).unwrap(), 3);
        assert_eq!(&b[..3], b"abc");
        assert_eq!(read_at(m.as_fd(), &mut b, 100).unwrap(), 0);
        assert!(read_at(m.as_fd(), &mut b, u64::MAX).is_err());
        let st = fstat(m.as_fd()).unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFREG);
        assert_eq!(st.st_size, 100);
    }
}
