//! [`MmapRegion`]: one owned memory mapping, every `unsafe` about it in
//! this file.
//!
//! The memory behind a mapping is usually shared: with other threads of
//! this process (device engine threads, a simulated vCPU), with other
//! processes that map the same fd (a vfio-user client and server), or with
//! the hardware (an IOMMU mapping of guest RAM). Rust cannot order those
//! writers, so the shared accessors never form a Rust reference to mapped
//! bytes: they are bounds-checked raw copies (`memcpy`/`memmove`/`memset`),
//! the same thing a DMA engine does. A slice view exists only through
//! `&mut self`, where this process has exclusive access to the mapping
//! object; what a *peer process* may do to the bytes meanwhile is the
//! protocol's business (the bytes are plain `u8`s, valid in any state, and
//! every reader treats them as untrusted input).
//!
//! A file shrunk under a `MAP_SHARED` mapping makes an access to the lost
//! pages raise `SIGBUS`: the process dies, memory is never silently
//! corrupted.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

/// An owned mapping of `len` bytes, unmapped on drop.
#[derive(Debug)]
pub struct MmapRegion {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the region owns its mapping outright (nothing else unmaps it;
// it is unmapped once, in `drop`), and the raw pointer is only an address
// into it: moving the owner to another thread moves nothing the old thread
// could still reach.
unsafe impl Send for MmapRegion {}
// SAFETY: `&self` methods only do bounds-checked raw copies into or out
// of the mapping (no `&`/`&mut` to mapped bytes is ever formed from
// `&self`), so concurrent callers race only on plain bytes, exactly as
// concurrent DMA or a peer process mapping the same fd does; slices exist
// only through `&mut self`, which excludes every other accessor.
unsafe impl Sync for MmapRegion {}

#[cold]
fn out_of_bounds(offset: usize, len: usize, size: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{offset:#x}+{len:#x} is outside the {size:#x}-byte mapping"),
    )
}

impl MmapRegion {
    /// `MAP_SHARED` of `len` bytes of `fd` from `offset`: writes reach the
    /// file and every other mapping of it. Read-write when `writable`.
    pub fn shared(fd: BorrowedFd<'_>, offset: u64, len: usize, writable: bool) -> io::Result<Self> {
        Self::map(Some(fd), offset, len, writable, libc::MAP_SHARED)
    }

    /// `MAP_PRIVATE` of `len` bytes of `fd` from `offset`: writes stay in
    /// this mapping (copy on write).
    pub fn private(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        writable: bool,
    ) -> io::Result<Self> {
        Self::map(Some(fd), offset, len, writable, libc::MAP_PRIVATE)
    }

    /// `len` bytes of private, zero-filled, read-write anonymous memory.
    pub fn anonymous(len: usize) -> io::Result<Self> {
        Self::map(None, 0, len, true, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)
    }

    fn map(
        fd: Option<BorrowedFd<'_>>,
        offset: u64,
        len: usize,
        writable: bool,
        flags: libc::c_int,
    ) -> io::Result<Self> {
        let off = libc::off_t::try_from(offset).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("mapping offset {offset:#x} is too large"),
            )
        })?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let raw_fd = fd.map_or(-1, |f| f.as_raw_fd());
        // SAFETY: a fresh mapping at an address the kernel picks (no hint,
        // no MAP_FIXED), so no existing memory is replaced; the kernel
        // validates fd, offset and length, and the result is checked
        // before use.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, raw_fd, off) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Self { ptr, len, writable })
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-byte mapping (the kernel refuses those, so never).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when the mapping may be written.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Address of the first byte, for handing the mapping to the kernel
    /// (e.g. `VFIO_IOMMU_MAP_DMA`'s `vaddr`). Using it as a pointer is up
    /// to whoever receives it; it stays valid while `self` lives.
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Checks that `[offset, offset + len)` lies inside the mapping and
    /// returns a pointer to its first byte.
    #[inline]
    fn at(&self, offset: usize, len: usize) -> io::Result<*mut u8> {
        match offset.checked_add(len) {
            // SAFETY: offset ≤ end ≤ self.len, so the result points into
            // (or one past the end of) the live mapping.
            Some(end) if end <= self.len => Ok(unsafe { self.ptr.as_ptr().add(offset) }),
            _ => Err(out_of_bounds(offset, len, self.len)),
        }
    }

    /// Like [`at`](Self::at), and refuses a read-only mapping.
    #[inline]
    fn at_mut(&self, offset: usize, len: usize) -> io::Result<*mut u8> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the mapping is read-only",
            ));
        }
        self.at(offset, len)
    }

    /// Copies `buf.len()` bytes at `offset` into `buf` (one `memcpy`).
    #[inline]
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        let src = self.at(offset, buf.len())?;
        // SAFETY: `at` checked that `src..src+len` lies inside the live
        // mapping; `buf` is a distinct, writable buffer of that length
        // (a Rust slice cannot alias mapped bytes: none is ever formed
        // from `&self`).
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` to `offset` (one `memcpy`). Refused on a read-only
    /// mapping.
    #[inline]
    pub fn write(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        let dst = self.at_mut(offset, data.len())?;
        // SAFETY: `at_mut` checked that `dst..dst+len` lies inside the
        // live, writable mapping; `data` is a distinct readable buffer of
        // that length.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    /// Sets `[offset, offset + len)` to `byte` (one `memset`).
    #[inline]
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> io::Result<()> {
        let dst = self.at_mut(offset, len)?;
        // SAFETY: `at_mut` checked that the range lies inside the live,
        // writable mapping.
        unsafe { std::ptr::write_bytes(dst, byte, len) };
        Ok(())
    }

    /// Copies `len` bytes at `offset` into `dst` at `dst_offset`, mapping
    /// to mapping with one `memmove` (no bounce buffer). `dst` may be this
    /// mapping, or another mapping of the same memory.
    #[inline]
    pub fn copy_to(
        &self,
        offset: usize,
        dst: &MmapRegion,
        dst_offset: usize,
        len: usize,
    ) -> io::Result<()> {
        let from = self.at(offset, len)?;
        let to = dst.at_mut(dst_offset, len)?;
        // SAFETY: both ranges were checked against their live mappings
        // (the destination writable); `copy` is a memmove, correct even
        // when both ranges are the same memory.
        unsafe { std::ptr::copy(from, to, len) };
        Ok(())
    }

    /// Allocates and maps every page of `[offset, offset + len)` now
    /// (`madvise(MADV_POPULATE_WRITE)`, Linux 5.14+), so later accesses
    /// take no first-touch fault: no page allocation, zeroing or page-table
    /// fill while a device is being migrated. The contents do not change.
    /// Refused on a read-only mapping; `EINVAL` from kernels without it.
    pub fn populate(&self, offset: usize, len: usize) -> io::Result<()> {
        let p = self.at_mut(offset, len)?;
        let page = 4096usize;
        let start = (p as usize) & !(page - 1);
        let end = p as usize + len;
        // SAFETY: the range was checked against our live, writable
        // mapping (rounded down to its page, which belongs to the same
        // page-aligned mapping); MADV_POPULATE_WRITE only faults pages
        // in, as a write of their current contents would, and changes no
        // byte.
        let r = unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                end - start,
                libc::MADV_POPULATE_WRITE,
            )
        };
        crate::cvt(r)?;
        Ok(())
    }

    /// The whole mapping as a slice: exclusive access through `&mut self`
    /// (e.g. to let a producer write straight into the mapping).
    ///
    /// Panics on a read-only mapping.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        assert!(self.writable, "as_mut_slice of a read-only mapping");
        // SAFETY: ptr/len describe our live, writable mapping, and
        // `&mut self` excludes every other accessor of this region for the
        // slice's lifetime; the bytes are plain `u8`s, valid whatever a
        // peer process writes into them.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for MmapRegion {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from the successful mmap owned by `self`,
        // unmapped exactly once, here; no slice into it can outlive `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn anonymous_copies_fill_and_bounds() {
        let m = MmapRegion::anonymous(8192).unwrap();
        assert_eq!(m.len(), 8192);
        assert!(!m.is_empty() && m.is_writable());
        let mut b = [1u8; 4];
        m.read(8188, &mut b).unwrap();
        assert_eq!(b, [0; 4], "anonymous memory starts zeroed");
        m.write(100, b"abcd").unwrap();
        m.read(100, &mut b).unwrap();
        assert_eq!(&b, b"abcd");
        m.fill(101, 2, b'x').unwrap();
        m.read(100, &mut b).unwrap();
        assert_eq!(&b, b"axxd");
        m.copy_to(100, &m, 102, 4).unwrap();
        let mut c = [0u8; 6];
        m.read(100, &mut c).unwrap();
        assert_eq!(&c, b"axaxxd", "overlapping copy is a memmove");
        assert!(m.read(8189, &mut b).is_err());
        assert!(m.write(usize::MAX, b"a").is_err());
        assert!(m.fill(8192, 1, 0).is_err());
        m.read(8192, &mut []).unwrap();
        assert!(MmapRegion::anonymous(0).is_err());
    }

    #[test]
    fn shared_mappings_of_one_memfd_see_each_other() {
        let fd = crate::memfd::create_sized(c"mmap-test", 3 * 4096).unwrap();
        let a = MmapRegion::shared(fd.as_fd(), 0, 3 * 4096, true).unwrap();
        let ro = MmapRegion::shared(fd.as_fd(), 4096, 4096, false).unwrap();
        let p = MmapRegion::private(fd.as_fd(), 4096, 4096, true).unwrap();
        a.write(4096 + 8, b"shared").unwrap();
        let mut b = [0u8; 6];
        ro.read(8, &mut b).unwrap();
        assert_eq!(&b, b"shared");
        assert_eq!(
            ro.write(0, b"x").unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        assert!(a.copy_to(0, &ro, 0, 1).is_err());
        p.write(8, b"privat").unwrap();
        a.read(4096 + 8, &mut b).unwrap();
        assert_eq!(&b, b"shared", "a private mapping keeps its writes");
        a.copy_to(4096 + 8, &p, 0, 6).unwrap();
        p.read(0, &mut b).unwrap();
        assert_eq!(&b, b"shared");
        assert_ne!(a.addr(), ro.addr());
    }

    #[test]
    fn exclusive_slice_and_threads() {
        let mut m = MmapRegion::anonymous(4096).unwrap();
        m.as_mut_slice()[..3].copy_from_slice(b"abc");
        let m = std::sync::Arc::new(m);
        let t = {
            let m = m.clone();
            std::thread::spawn(move || m.write(3, b"d").unwrap())
        };
        t.join().unwrap();
        let mut b = [0u8; 4];
        m.read(0, &mut b).unwrap();
        assert_eq!(&b, b"abcd");
    }

    #[test]
    #[should_panic(expected = "read-only")]
    fn no_mutable_slice_of_read_only_memory() {
        let fd = crate::memfd::create_sized(c"mmap-ro", 4096).unwrap();
        let mut m = MmapRegion::shared(fd.as_fd(), 0, 4096, false).unwrap();
        m.as_mut_slice();
    }
}
