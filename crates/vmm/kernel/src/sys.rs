//! Thin wrappers over the VFIO ioctls the backend needs. Every `unsafe`
//! block of the crate lives here; everything else the crate needs from the
//! OS (the mapping of guest memory below) comes safe from
//! `vfio-migrate-sys`.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use vfio_migrate_sys::MmapRegion;

/// `ioctl(fd, req, arg)` with an integer argument; returns the result.
pub fn ioctl_val(f: &impl AsRawFd, req: u32, arg: libc::c_ulong) -> io::Result<i32> {
    // SAFETY: the request takes an integer argument (no pointer is passed),
    // so the kernel reads nothing from our memory.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req as libc::c_ulong, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `ioctl(fd, req, buf)` where the kernel reads and writes at most
/// `buf.len()` bytes (the struct's `argsz` never exceeds the buffer).
pub fn ioctl_buf(f: &impl AsRawFd, req: u32, buf: &mut [u8]) -> io::Result<i32> {
    // SAFETY: `buf` is a valid, writable buffer for the whole call and the
    // caller encodes an `argsz` no larger than `buf.len()`, which bounds
    // what the kernel accesses.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req as libc::c_ulong, buf.as_mut_ptr()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `ioctl(fd, req, ptr)` for a NUL-terminated string argument
/// (`VFIO_GROUP_GET_DEVICE_FD`). Returns the new fd as a `File`.
pub fn ioctl_str_fd(f: &impl AsRawFd, req: u32, s: &std::ffi::CStr) -> io::Result<File> {
    // SAFETY: `s` is a valid NUL-terminated string that outlives the call;
    // the kernel only reads it.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req as libc::c_ulong, s.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a non-negative result is a new fd that we now own.
    Ok(unsafe { File::from_raw_fd(r) })
}

/// `ioctl(fd, req, &int_fd)`, used by `VFIO_GROUP_SET_CONTAINER`.
pub fn ioctl_fd_ptr(f: &impl AsRawFd, req: u32, fd: i32) -> io::Result<()> {
    let v: libc::c_int = fd;
    // SAFETY: the kernel reads one int from `&v`, which lives for the call.
    let r = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            req as libc::c_ulong,
            &v as *const libc::c_int,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Takes ownership of an fd number the kernel returned inside a struct.
pub fn own_fd(fd: i32) -> File {
    // SAFETY: the kernel just created `fd` for us (MIG_DEVICE_STATE
    // data_fd); nothing else owns it.
    unsafe { File::from_raw_fd(fd) }
}

/// A shared memory mapping kept alive while an IOMMU mapping uses it.
pub struct Mapping {
    /// Address of the first byte (the IOMMU mapping's `vaddr`).
    pub ptr: usize,
    _map: MmapRegion,
}

impl Mapping {
    /// mmap(MAP_SHARED) of `len` bytes of `fd` at `offset`.
    pub fn new(fd: &impl AsFd, offset: u64, len: u64, writable: bool) -> io::Result<Self> {
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let map = MmapRegion::shared(fd.as_fd(), offset, len, writable)?;
        Ok(Self {
            ptr: map.addr(),
            _map: map,
        })
    }
}
