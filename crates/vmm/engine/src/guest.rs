//! Guest memory as the engine sees it ([`GuestRam`]), and [`MemfdRam`]:
//! RAM in a memfd that devices map for DMA. (The demo's simulated guest,
//! a vCPU thread dirtying such RAM, is in `vfio-migrate-harness`.)

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use vfio_migrate_backend::IovaRange;
use vfio_migrate_sys::{memfd, MmapRegion};

/// Guest RAM: what the engine needs to migrate it.
///
/// RAM is one range of guest-physical memory starting at [`GuestRam::iova`]
/// (the address devices DMA to), split into pages of
/// [`GuestRam::page_size`] bytes.
pub trait GuestRam: Send + Sync {
    /// Size in bytes (a multiple of the page size).
    fn size(&self) -> u64;

    /// Page size of the dirty log.
    fn page_size(&self) -> u64 {
        4096
    }

    /// I/O virtual address of the first byte (where devices see it).
    fn iova(&self) -> u64 {
        0
    }

    /// Copies pages `[first, first + buf.len() / page_size)` into `buf`.
    fn read_pages(&self, first: u64, buf: &mut [u8]) -> std::io::Result<()>;

    /// Writes whole pages starting at page `first`.
    fn write_pages(&self, first: u64, data: &[u8]) -> std::io::Result<()>;

    /// Fetches and clears the vCPU dirty log: sets bit `n` of `bitmap`
    /// (u64 words, LSB first) for every page `n` the vCPUs wrote since the
    /// last call. Bits already set stay set.
    fn take_dirty(&self, bitmap: &mut [u64]);

    /// Pauses the vCPUs; returns once no vCPU write is in flight.
    fn pause(&self);

    /// Resumes the vCPUs.
    fn resume(&self);

    /// How many pages from `page` on are known to read as zero without
    /// being touched (never written, e.g. a hole in a memfd); 0 when `page`
    /// holds data or nobody knows. Lets the engine send zero runs without
    /// reading (and so allocating) untouched memory.
    fn zero_pages_at(&self, page: u64) -> u64 {
        let _ = page;
        0
    }

    /// How many pages from `page` on may hold data (up to the next known
    /// zero page); `u64::MAX` when nobody knows.
    fn data_pages_at(&self, page: u64) -> u64 {
        let _ = page;
        u64::MAX
    }

    /// Pages in RAM.
    fn pages(&self) -> u64 {
        self.size() / self.page_size()
    }

    /// The IOVA range devices log DMA writes over.
    fn dma_range(&self) -> IovaRange {
        IovaRange {
            iova: self.iova(),
            length: self.size(),
        }
    }
}

/// Guest RAM in a memfd, mapped here and shareable with devices by fd.
pub struct MemfdRam {
    fd: OwnedFd,
    map: MmapRegion,
}

impl MemfdRam {
    /// `size` bytes of zeroed RAM (rounded up to 4 KiB).
    pub fn new(name: &str, size: u64) -> std::io::Result<Self> {
        let size = size.div_ceil(4096) * 4096;
        if size == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "guest RAM size must be at least one page",
            ));
        }
        let len = usize::try_from(size).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "guest RAM too large")
        })?;
        let cname = std::ffi::CString::new(name).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in memfd name")
        })?;
        let fd = memfd::create(&cname)?;
        memfd::set_len(fd.as_fd(), size)?;
        let map = MmapRegion::shared(fd.as_fd(), 0, len, true)?;
        Ok(Self { fd, map })
    }

    /// The memfd (for `DMA_MAP`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Never empty (construction refuses 0 bytes).
    pub fn is_empty(&self) -> bool {
        false
    }

    fn check(&self, offset: u64, n: usize) -> std::io::Result<usize> {
        match offset.checked_add(n as u64) {
            Some(end) if end <= self.len() => Ok(offset as usize),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{offset:#x}+{n:#x} is outside guest RAM ({:#x} bytes)",
                    self.len()
                ),
            )),
        }
    }

    /// Bytes from `offset` on that are a hole (never written: zero, with no
    /// memory behind them), by `lseek(SEEK_DATA)`.
    pub fn hole_at(&self, offset: u64) -> u64 {
        if offset >= self.len() {
            return 0;
        }
        match memfd::seek_data(self.fd.as_fd(), offset) {
            Ok(r) => r.saturating_sub(offset),
            // No data from here to the end.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => self.len() - offset,
            Err(_) => 0,
        }
    }

    /// Bytes from `offset` on that hold data (up to the next hole), by
    /// `lseek(SEEK_HOLE)`.
    pub fn data_at(&self, offset: u64) -> u64 {
        if offset >= self.len() {
            return 0;
        }
        match memfd::seek_hole(self.fd.as_fd(), offset) {
            Ok(r) => r.saturating_sub(offset),
            Err(_) => self.len() - offset,
        }
    }

    /// Copies `buf.len()` bytes at byte `offset` into `buf`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let off = self.check(offset, buf.len())?;
        self.map.read(off, buf)
    }

    /// Copies `data` to byte `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let off = self.check(offset, data.len())?;
        self.map.write(off, data)
    }
}

fn check_whole_pages(n: usize) -> std::io::Result<()> {
    if !n.is_multiple_of(4096) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{n} bytes is not a whole number of 4096-byte pages"),
        ));
    }
    Ok(())
}

impl GuestRam for MemfdRam {
    fn size(&self) -> u64 {
        self.len()
    }
    fn read_pages(&self, first: u64, buf: &mut [u8]) -> std::io::Result<()> {
        check_whole_pages(buf.len())?;
        self.read_at(first.saturating_mul(4096), buf)
    }
    fn write_pages(&self, first: u64, data: &[u8]) -> std::io::Result<()> {
        check_whole_pages(data.len())?;
        self.write_at(first.saturating_mul(4096), data)
    }
    fn zero_pages_at(&self, page: u64) -> u64 {
        self.hole_at(page.saturating_mul(4096)) / 4096
    }
    fn data_pages_at(&self, page: u64) -> u64 {
        self.data_at(page.saturating_mul(4096)).div_ceil(4096)
    }
    /// A bare memfd has no vCPUs: nothing is ever dirtied by one.
    fn take_dirty(&self, _bitmap: &mut [u64]) {}
    fn pause(&self) {}
    fn resume(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_found_without_touching_memory() {
        let r = MemfdRam::new("t", 64 << 10).unwrap();
        assert_eq!(r.zero_pages_at(0), 16);
        r.write_pages(5, &[1u8; 4096]).unwrap();
        assert_eq!(r.zero_pages_at(0), 5);
        assert_eq!(r.zero_pages_at(5), 0);
        assert_eq!(r.zero_pages_at(6), 10);
        assert_eq!(r.zero_pages_at(16), 0);
        assert_eq!(r.data_pages_at(5), 1);
        assert_eq!(r.data_pages_at(4), 0);
    }

    #[test]
    fn out_of_range_access_is_refused() {
        let r = MemfdRam::new("t", 8192).unwrap();
        assert!(r.read_pages(2, &mut [0u8; 4096]).is_err());
        assert!(r.write_pages(1, &[0u8; 8192]).is_err());
        assert!(r.write_pages(0, &[0u8; 100]).is_err());
    }
}
