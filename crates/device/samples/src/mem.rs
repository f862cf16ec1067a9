//! Memfd-backed shared memory: device memory that a device maps and that a
//! client can map too (the fd travels with `Region::mmap` or a DMA map).
//!
//! All access is by bounds-checked copies (`vfio_migrate_sys::MmapRegion`):
//! the memory is shared with other threads and processes that may write it
//! at any time (like device memory written by a guest through a BAR
//! mapping), so no Rust reference to it is ever formed.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use vfio_migrate_device::error::{DeviceError, DeviceResult};
use vfio_migrate_sys::{memfd, MmapRegion};

/// A MAP_SHARED mapping of a whole memfd (or of any mappable fd).
#[derive(Debug)]
pub struct SharedMemory {
    map: MmapRegion,
    fd: Arc<OwnedFd>,
    /// Every page is kept allocated and mapped ([`SharedMemory::populated`]).
    populated: bool,
}

fn os_err(what: &str, e: std::io::Error) -> DeviceError {
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
        let fd = memfd::create(&cname).map_err(|e| os_err("memfd_create", e))?;
        if libc::off_t::try_from(len).is_err() {
            return Err(DeviceError::inval(format!(
                "shared memory of {len} bytes is too large"
            )));
        }
        memfd::set_len(fd.as_fd(), len)
            .map_err(|e| os_err(&format!("sizing memfd {name} to {len} bytes"), e))?;
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
        let map = MmapRegion::shared(fd.as_fd(), 0, len_us, true)
            .map_err(|e| os_err(&format!("mmap of {len} bytes of shared memory"), e))?;
        Ok(Self {
            map,
            fd,
            populated: false,
        })
    }

    /// Like [`SharedMemory::new`], with every page allocated and mapped
    /// at once (and again after [`SharedMemory::zero_all`]), as a real
    /// device's memory is: nothing touched later pays a first-touch fault
    /// (page allocation, zeroing, page-table fill). A migration writes
    /// every page of a destination's memory and reads every page of a
    /// source's; with sparse memory each of those faults would fall in the
    /// migration (and in its downtime). Costs the whole size in RSS from
    /// the start.
    pub fn populated(name: &str, len: u64) -> DeviceResult<Self> {
        let mut m = Self::new(name, len)?;
        m.populate()?;
        m.populated = true;
        Ok(m)
    }

    fn populate(&self) -> DeviceResult<()> {
        self.map
            .populate(0, self.map.len())
            .map_err(|e| os_err(&format!("populating {} bytes of memory", self.len()), e))
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Always false (a zero-sized mapping cannot be made).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The backing fd, to share with a client.
    pub fn fd(&self) -> &Arc<OwnedFd> {
        &self.fd
    }

    #[inline]
    fn check(&self, offset: u64, len: usize) -> DeviceResult<usize> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len() => Ok(offset as usize),
            _ => Err(DeviceError::fault(format!(
                "memory access {offset:#x}+{len:#x} is outside the {:#x} bytes",
                self.len()
            ))),
        }
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    #[inline]
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        let at = self.check(offset, buf.len())?;
        self.map.read(at, buf).map_err(|e| os_err("memory read", e))
    }

    /// Copies `data` to `offset`.
    #[inline]
    pub fn write(&self, offset: u64, data: &[u8]) -> DeviceResult<()> {
        let at = self.check(offset, data.len())?;
        self.map
            .write(at, data)
            .map_err(|e| os_err("memory write", e))
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
        self.map
            .copy_to(from, &dst.map, to, len)
            .map_err(|e| os_err("memory copy", e))
    }

    /// Fills `[offset, offset+len)` with `byte`.
    pub fn fill(&self, offset: u64, len: usize, byte: u8) -> DeviceResult<()> {
        let at = self.check(offset, len)?;
        self.map
            .fill(at, len, byte)
            .map_err(|e| os_err("memory fill", e))
    }

    /// Zeroes everything, releasing the pages (a hole punched in the memfd;
    /// falls back to writing zeros when the fd cannot punch holes).
    pub fn zero_all(&self) -> DeviceResult<()> {
        if memfd::punch_hole(self.fd.as_fd(), 0, self.len()).is_err() {
            self.fill(0, self.map.len(), 0)?;
        } else if self.populated {
            self.populate()?;
        }
        Ok(())
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
    fn populated_memory_is_resident_and_zero() {
        use std::os::unix::fs::MetadataExt;
        let resident = |m: &SharedMemory| {
            let f = std::fs::File::from(m.fd().as_ref().try_clone().unwrap());
            f.metadata().unwrap().blocks() * 512
        };
        let a = SharedMemory::populated("t", 4 << 20).unwrap();
        assert_eq!(resident(&a), 4 << 20, "every page allocated up front");
        let mut buf = vec![1u8; 4 << 20];
        a.read(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&x| x == 0));
        a.write(0, b"x").unwrap();
        a.zero_all().unwrap();
        assert_eq!(resident(&a), 4 << 20, "allocated again after a reset");
        a.read(0, &mut buf[..1]).unwrap();
        assert_eq!(buf[0], 0);
        let s = SharedMemory::new("t", 4 << 20).unwrap();
        assert_eq!(resident(&s), 0, "plain memory stays sparse");
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
