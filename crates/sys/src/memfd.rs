//! Anonymous memory files (`memfd_create`): the shared memory of the
//! project (guest RAM, device BARs, migration data sections) is a memfd
//! that every party maps, and passes by fd.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::cvt;

fn off_t(v: u64, what: &str) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} {v:#x} is too large for a file"),
        )
    })
}

/// A new, empty memfd named `name` (close-on-exec).
pub fn create(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string that outlives the
    // call; the kernel only reads it.
    let raw = cvt(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: a non-negative result is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A new memfd of `len` zero bytes (sparse: no memory until written).
pub fn create_sized(name: &CStr, len: u64) -> io::Result<OwnedFd> {
    let fd = create(name)?;
    set_len(fd.as_fd(), len)?;
    Ok(fd)
}

/// Sets the size of the file behind `fd` (`ftruncate`): growing adds zero
/// bytes (holes), shrinking drops data.
pub fn set_len(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = off_t(len, "file size")?;
    // SAFETY: ftruncate takes an fd and an integer; no memory is passed.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) })?;
    Ok(())
}

fn seek(fd: BorrowedFd<'_>, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    let off = off_t(offset, "seek offset")?;
    // SAFETY: lseek takes an fd and integers and only reports (and sets)
    // the file position.
    let r = cvt(unsafe { libc::lseek(fd.as_raw_fd(), off, whence) })?;
    Ok(r as u64)
}

/// Offset of the first byte at or after `offset` that holds data
/// (`lseek(SEEK_DATA)`); `ENXIO` when only holes follow up to the end.
/// Moves the file position.
pub fn seek_data(fd: BorrowedFd<'_>, offset: u64) -> io::Result<u64> {
    seek(fd, offset, libc::SEEK_DATA)
}

/// Offset of the first hole at or after `offset` (`lseek(SEEK_HOLE)`; the
/// end of the file counts as a hole). Moves the file position.
pub fn seek_hole(fd: BorrowedFd<'_>, offset: u64) -> io::Result<u64> {
    seek(fd, offset, libc::SEEK_HOLE)
}

/// Zeroes `[offset, offset + len)` by releasing its pages
/// (`fallocate(PUNCH_HOLE | KEEP_SIZE)`); the size stays. Fails on files
/// that cannot punch holes.
pub fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let off = off_t(offset, "hole offset")?;
    let len = off_t(len, "hole length")?;
    // SAFETY: fallocate takes an fd and integers; no memory is passed.
    cvt(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_data_and_punching() {
        let fd = create_sized(c"memfd-test", 16 * 4096).unwrap();
        let f = fd.as_fd();
        assert_eq!(
            seek_data(f, 0).unwrap_err().raw_os_error(),
            Some(libc::ENXIO)
        );
        assert_eq!(seek_hole(f, 0).unwrap(), 0);
        crate::fd::write_at(f, &[1u8; 4096], 5 * 4096).unwrap();
        assert_eq!(seek_data(f, 0).unwrap(), 5 * 4096);
        assert_eq!(seek_hole(f, 5 * 4096).unwrap(), 6 * 4096);
        punch_hole(f, 0, 16 * 4096).unwrap();
        assert!(seek_data(f, 0).is_err());
        let mut b = [9u8; 8];
        crate::fd::read_at(f, &mut b, 5 * 4096).unwrap();
        assert_eq!(b, [0; 8]);
        set_len(f, 4096).unwrap();
        assert_eq!(crate::fd::fstat(f).unwrap().st_size, 4096);
        assert!(set_len(f, u64::MAX).is_err());
        assert!(create(c"x").is_ok());
    }
}
