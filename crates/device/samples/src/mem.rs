//! Memfd-backed shared memory: device memory that a device maps and that a
//! client can map too (the fd travels with `Region::mmap` or a DMA map).
//!
//! All access is by bounds-checked copies through raw pointers: the memory
//! is shared with other threads and processes that may write it at any
//! time (like device memory written by a guest through a BAR mapping), so
//! no Rust reference to it is ever formed.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use vfio_migrate_device::error::{DeviceError, DeviceResult};

/// A MAP_SHARED mapping of a whole memfd (or of any mappable fd).
#[derive(Debug)]
pub struct SharedMemory {
    ptr: *mut u8,
    len: usize,
    fd: Arc<OwnedFd>,
}

// SAFETY: the mapping is plain shared memory owned by this struct and
// unmapped only on drop; every access is a bounds-checked raw copy, which
// is what concurrent device/DMA access to shared memory is anyway.
unsafe impl Send for SharedMemory {}
// SAFETY: as above; no `&`/`&mut` to the mapped bytes is ever created.
unsafe impl Sync for SharedMemory {}

fn os_err(what: &str) -> DeviceError {
    let e = std::io::Error::last_os_error();
    DeviceError::new(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("{what}: {e}"),
    )
}

impl SharedMemory {
    /// A new zero-filled memfd named `name` of `len` bytes, mapped
    /// read-write.
    pub fn new(name: &str, len: u64) -> DeviceResult<Self> {
        if len == 0 {
            return Err(DeviceError::inval("shared memory of 0 bytes"));
        }
        let cname = CString::new(name)
            .map_err(|_| DeviceError::inval(format!("memfd name {name:?} contains NUL")))?;
        // SAFETY: memfd_create with a valid NUL-terminated name; the result
        // is checked before use.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(os_err("memfd_create"));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let off = libc::off_t::try_from(len).map_err(|_| {
            DeviceError::inval(format!("shared memory of {len} bytes is too large"))
        })?;
        // SAFETY: ftruncate on the fd we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), off) } != 0 {
            return Err(os_err(&format!("sizing memfd {name} to {len} bytes")));
        }
        Self::map(Arc::new(fd), len)
    }

    /// Maps `len` bytes of an existing fd (e.g. a BAR's region fd) from
    /// offset 0, read-write.
    pub fn map(fd: Arc<OwnedFd>, len: u64) -> DeviceResult<Self> {
        let len_us = usize::try_from(len)
            .map_err(|_| DeviceError::inval(format!("mapping of {len} bytes is too large")))?;
        if len_us == 0 {
            return Err(DeviceError::inval("mapping of 0 bytes"));
        }
        // SAFETY: mapping a valid fd; the kernel validates the length and
        // the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_us,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(os_err(&format!("mmap of {len} bytes of shared memory")));
        }
        Ok(Self {
            ptr: ptr as *mut u8,
            len: len_us,
            fd,
        })
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Always false (a zero-sized mapping cannot be made).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The backing fd, to share with a client.
    pub fn fd(&self) -> &Arc<OwnedFd> {
        &self.fd
    }

    fn check(&self, offset: u64, len: usize) -> DeviceResult<usize> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len as u64 => Ok(offset as usize),
            _ => Err(DeviceError::fault(format!(
                "memory access {offset:#x}+{len:#x} is outside the {:#x} bytes",
                self.len
            ))),
        }
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        let at = self.check(offset, buf.len())?;
        // SAFETY: `check` proved [at, at+len) lies inside the live mapping;
        // `buf` is a distinct, valid destination of that length.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(at), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` to `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> DeviceResult<()> {
        let at = self.check(offset, data.len())?;
        // SAFETY: `check` proved [at, at+len) lies inside the live mapping;
        // `data` is a distinct, valid source of that length.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(at), data.len()) };
        Ok(())
    }

    /// Copies `len` bytes at `offset` into `dst` at `dst_offset` with one
    /// memcpy (mapping to mapping, no bounce buffer).
    pub fn copy_to(
        &self,
        offset: u64,
        dst: &SharedMemory,
        dst_offset: u64,
        len: usize,
    ) -> DeviceResult<()> {
        let from = self.check(offset, len)?;
        let to = dst.check(dst_offset, len)?;
        // SAFETY: both ranges were checked against their live mappings;
        // `copy` (memmove) is used because `dst` may map the same memory.
        unsafe { std::ptr::copy(self.ptr.add(from), dst.ptr.add(to), len) };
        Ok(())
    }

    /// Fills `[offset, offset+len)` with `byte`.
    pub fn fill(&self, offset: u64, len: usize, byte: u8) -> DeviceResult<()> {
        let at = self.check(offset, len)?;
        // SAFETY: `check` proved the range lies inside the live mapping.
        unsafe { std::ptr::write_bytes(self.ptr.add(at), byte, len) };
        Ok(())
    }

    /// Zeroes everything, releasing the pages (a hole punched in the memfd;
    /// falls back to writing zeros when the fd cannot punch holes).
    pub fn zero_all(&self) -> DeviceResult<()> {
        // SAFETY: fallocate on the fd we own; the range is the whole file.
        let r = unsafe {
            libc::fallocate(
                self.fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                self.len as libc::off_t,
            )
        };
        if r != 0 {
            self.fill(0, self.len, 0)?;
        }
        Ok(())
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap owned by self.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mappings_share_bytes() {
        let a = SharedMemory::new("t", 1 << 20).unwrap();
        let b = SharedMemory::map(a.fd().clone(), 1 << 20).unwrap();
        a.write(4096, b"hello").unwrap();
        let mut buf = [0u8; 5];
        b.read(4096, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        a.zero_all().unwrap();
        b.read(4096, &mut buf).unwrap();
        assert_eq!(buf, [0; 5]);
    }

    #[test]
    fn bounds_are_checked() {
        let a = SharedMemory::new("t", 8192).unwrap();
        let mut buf = [0u8; 2];
        let e = a.read(8191, &mut buf).unwrap_err();
        assert_eq!(e.errno, libc::EFAULT);
        assert!(a.write(u64::MAX, &[1]).is_err());
        assert!(a.fill(8192, 1, 0).is_err());
        assert!(SharedMemory::new("t", 0).is_err());
    }
}
