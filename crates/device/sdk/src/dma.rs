//! Guest memory as a device sees it through DMA: windows the VMM maps (by
//! fd, mmap'ed here), bounds-checked reads and writes, and the DMA dirty
//! log (`DMA_LOGGING_START/REPORT/STOP`) that records every write.
//!
//! A [`DmaSpace`] is shared (`Arc`) between the device's own engine threads
//! and the server thread; logging bits are atomic, so a DMA write never
//! takes a write lock.

use crate::error::{DeviceError, DeviceResult};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use vfio_migrate_backend::IovaRange;
use vfio_migrate_sys::MmapRegion;

/// Largest number of ranges one DMA_LOGGING_START may name.
pub const MAX_LOG_RANGES: usize = 1024;
/// Largest number of pages the dirty log may track in total (1 TiB at 4 KiB).
pub const MAX_LOG_PAGES: u64 = 1 << 28;

/// Maps a DMA window of `len` bytes of `fd` from `offset` (shared, so the
/// device's writes land in guest memory).
fn map_window(fd: &OwnedFd, offset: u64, len: u64, writable: bool) -> DeviceResult<MmapRegion> {
    let len_us = usize::try_from(len).map_err(|_| DeviceError::inval("DMA window too large"))?;
    libc::off_t::try_from(offset).map_err(|_| DeviceError::inval("DMA map offset too large"))?;
    MmapRegion::shared(fd.as_fd(), offset, len_us, writable).map_err(|e| {
        DeviceError::new(
            e.raw_os_error().unwrap_or(libc::EINVAL),
            format!("cannot mmap DMA window fd: {e}"),
        )
    })
}

/// One DMA window.
struct Window {
    size: u64,
    readable: bool,
    writable: bool,
    mem: Option<MmapRegion>,
}

/// One logged IOVA range with a bit per page.
struct LoggedRange {
    iova: u64,
    length: u64,
    bits: Vec<AtomicU64>,
}

struct DirtyLog {
    page_size: u64,
    ranges: Vec<LoggedRange>,
}

impl DirtyLog {
    fn mark(&self, iova: u64, len: u64) {
        if len == 0 {
            return;
        }
        let ps = self.page_size;
        let last = iova.saturating_add(len - 1);
        for r in &self.ranges {
            let r_end = r.iova + r.length - 1;
            if last < r.iova || iova > r_end {
                continue;
            }
            let s = iova.max(r.iova);
            let e = last.min(r_end);
            let first_page = (s - r.iova) / ps;
            let last_page = (e - r.iova) / ps;
            for p in first_page..=last_page {
                // Release: a reader that takes the bit (AcqRel) sees the
                // data this DMA wrote before marking.
                r.bits[(p / 64) as usize].fetch_or(1 << (p % 64), Ordering::Release);
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    windows: BTreeMap<u64, Window>,
    log: Option<DirtyLog>,
}

/// The device's view of guest memory.
#[derive(Default)]
pub struct DmaSpace {
    inner: RwLock<Inner>,
}

fn end_of(iova: u64, size: u64) -> DeviceResult<u64> {
    iova.checked_add(size)
        .ok_or_else(|| DeviceError::inval(format!("range {iova:#x}+{size:#x} overflows")))
}

impl DmaSpace {
    /// An empty space.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[iova, iova+size)`, backed by `fd` at `offset` when given.
    /// Overlapping an existing window is EEXIST.
    pub fn map(
        &self,
        iova: u64,
        size: u64,
        fd: Option<OwnedFd>,
        offset: u64,
        readable: bool,
        writable: bool,
    ) -> DeviceResult<()> {
        if size == 0 {
            return Err(DeviceError::inval("DMA map of 0 bytes"));
        }
        let end = end_of(iova, size)?;
        let mut g = self.inner.write().unwrap();
        if let Some((&a, w)) = g.windows.range(..end).next_back() {
            if a + w.size > iova {
                return Err(DeviceError::new(
                    libc::EEXIST,
                    format!(
                        "DMA window {iova:#x}+{size:#x} overlaps the mapped window {a:#x}+{:#x}",
                        w.size
                    ),
                ));
            }
        }
        let mem = match fd {
            Some(fd) => Some(map_window(&fd, offset, size, writable)?),
            None => None,
        };
        g.windows.insert(
            iova,
            Window {
                size,
                readable,
                writable,
                mem,
            },
        );
        Ok(())
    }

    /// Unmaps the window that starts at `iova` and is `size` long (ENOENT
    /// when there is none).
    pub fn unmap(&self, iova: u64, size: u64) -> DeviceResult<()> {
        let mut g = self.inner.write().unwrap();
        match g.windows.get(&iova) {
            Some(w) if w.size == size => {
                g.windows.remove(&iova);
                Ok(())
            }
            _ => Err(DeviceError::new(
                libc::ENOENT,
                format!("no DMA window {iova:#x}+{size:#x} is mapped"),
            )),
        }
    }

    /// Removes every window and stops logging (client disconnect).
    pub fn clear(&self) {
        let mut g = self.inner.write().unwrap();
        g.windows.clear();
        g.log = None;
    }

    /// Mapped windows as ranges.
    pub fn windows(&self) -> Vec<IovaRange> {
        let g = self.inner.read().unwrap();
        g.windows
            .iter()
            .map(|(&iova, w)| IovaRange {
                iova,
                length: w.size,
            })
            .collect()
    }

    /// Runs `f` on each piece of `[iova, iova+len)` with its window's
    /// mapping and the piece's offset and length in it; every byte must be
    /// mapped with the access.
    fn access(
        g: &Inner,
        iova: u64,
        len: u64,
        write: bool,
        mut f: impl FnMut(&MmapRegion, usize, usize) -> std::io::Result<()>,
    ) -> DeviceResult<()> {
        let end = end_of(iova, len)?;
        // Two passes: check every byte first, so that an access that runs
        // into an unmapped or read-only window changes nothing (a write
        // that partly landed would also go unlogged).
        for copy in [false, true] {
            let mut at = iova;
            while at < end {
                let (&a, w) = g
                    .windows
                    .range(..=at)
                    .next_back()
                    .filter(|(&a, w)| at < a + w.size)
                    .ok_or_else(|| {
                        DeviceError::fault(format!("DMA to unmapped address {at:#x}"))
                    })?;
                if (write && !w.writable) || (!write && !w.readable) {
                    return Err(DeviceError::new(
                        libc::EPERM,
                        format!(
                            "DMA {} at {at:#x}: window not {}",
                            if write { "write" } else { "read" },
                            if write { "writable" } else { "readable" }
                        ),
                    ));
                }
                let mem = w.mem.as_ref().ok_or_else(|| {
                    DeviceError::fault(format!("DMA window at {a:#x} has no memory fd"))
                })?;
                let off = (at - a) as usize;
                let n = ((a + w.size).min(end) - at) as usize;
                debug_assert!(off + n <= mem.len());
                if copy {
                    f(mem, off, n)
                        .map_err(|e| DeviceError::fault(format!("DMA at {at:#x}: {e}")))?;
                }
                at += n as u64;
            }
        }
        Ok(())
    }

    /// DMA write of `data` at `iova`; logged when dirty logging is on.
    pub fn write(&self, iova: u64, data: &[u8]) -> DeviceResult<()> {
        let g = self.inner.read().unwrap();
        let mut done = 0usize;
        Self::access(&g, iova, data.len() as u64, true, |mem, off, n| {
            mem.write(off, &data[done..done + n])?;
            done += n;
            Ok(())
        })?;
        if let Some(log) = &g.log {
            log.mark(iova, data.len() as u64);
        }
        Ok(())
    }

    /// DMA read into `buf` from `iova`.
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> DeviceResult<()> {
        let g = self.inner.read().unwrap();
        let mut done = 0usize;
        Self::access(&g, iova, buf.len() as u64, false, |mem, off, n| {
            mem.read(off, &mut buf[done..done + n])?;
            done += n;
            Ok(())
        })
    }

    /// True while DMA dirty logging is on.
    pub fn logging(&self) -> bool {
        self.inner.read().unwrap().log.is_some()
    }

    /// The page size DMA logging runs at; `None` while logging is off.
    pub fn logging_page_size(&self) -> Option<u64> {
        self.inner.read().unwrap().log.as_ref().map(|l| l.page_size)
    }

    /// Starts DMA dirty logging at `page_size` over `ranges` (empty = every
    /// mapped window, widened to whole pages). Page size must be a power of
    /// two between 4 KiB and 1 GiB; ranges must start on a page boundary, be
    /// non-empty and disjoint. Already logging: EBUSY.
    pub fn logging_start(&self, page_size: u64, ranges: &[IovaRange]) -> DeviceResult<()> {
        if !page_size.is_power_of_two() || !(4096..=(1 << 30)).contains(&page_size) {
            return Err(DeviceError::inval(format!(
                "DMA logging page size {page_size} is not a power of two between 4096 and 1 GiB"
            )));
        }
        if ranges.len() > MAX_LOG_RANGES {
            return Err(DeviceError::new(
                libc::E2BIG,
                format!(
                    "{} DMA logging ranges, at most {MAX_LOG_RANGES}",
                    ranges.len()
                ),
            ));
        }
        let mut g = self.inner.write().unwrap();
        if g.log.is_some() {
            return Err(DeviceError::new(libc::EBUSY, "DMA logging is already on"));
        }
        let mut rs: Vec<IovaRange> = if ranges.is_empty() {
            // Every mapped window, widened to whole pages and merged where
            // the widened windows touch.
            let mut v: Vec<IovaRange> = Vec::new();
            for (&iova, w) in &g.windows {
                let start = iova & !(page_size - 1);
                let end = end_of(iova, w.size)?
                    .checked_next_multiple_of(page_size)
                    .unwrap_or(!(page_size - 1));
                match v.last_mut() {
                    Some(last) if last.iova + last.length >= start => {
                        last.length = end.max(last.iova + last.length) - last.iova;
                    }
                    _ => v.push(IovaRange {
                        iova: start,
                        length: end - start,
                    }),
                }
            }
            v
        } else {
            if let Some(r) = ranges.iter().find(|r| !r.iova.is_multiple_of(page_size)) {
                return Err(DeviceError::inval(format!(
                    "DMA logging range {:#x}+{:#x} does not start on a {page_size}-byte page \
                     boundary",
                    r.iova, r.length
                )));
            }
            ranges.to_vec()
        };
        if rs.is_empty() {
            return Err(DeviceError::inval(
                "DMA logging over nothing: no ranges and no mapped windows",
            ));
        }
        rs.sort_by_key(|r| r.iova);
        let mut pages_total = 0u64;
        let mut prev_end = 0u64;
        for (i, r) in rs.iter().enumerate() {
            if r.length == 0 {
                return Err(DeviceError::inval(format!(
                    "DMA logging range {:#x} is empty",
                    r.iova
                )));
            }
            let end = end_of(r.iova, r.length)?;
            if i > 0 && r.iova < prev_end {
                return Err(DeviceError::inval(format!(
                    "DMA logging range {:#x}+{:#x} overlaps another",
                    r.iova, r.length
                )));
            }
            prev_end = end;
            pages_total += r.length.div_ceil(page_size);
            if pages_total > MAX_LOG_PAGES {
                return Err(DeviceError::new(
                    libc::E2BIG,
                    format!("DMA logging ranges cover more than {MAX_LOG_PAGES} pages"),
                ));
            }
        }
        let ranges = rs
            .into_iter()
            .map(|r| {
                let pages = r.length.div_ceil(page_size);
                LoggedRange {
                    iova: r.iova,
                    length: r.length,
                    bits: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
                }
            })
            .collect();
        g.log = Some(DirtyLog { page_size, ranges });
        Ok(())
    }

    /// Stops DMA dirty logging (no error when it was off).
    pub fn logging_stop(&self) {
        self.inner.write().unwrap().log = None;
    }

    /// Reads and clears the dirty bits of `[iova, iova+length)` into
    /// `bitmap` (bit n = page n, LSB first, u64 little-endian words). The
    /// whole range must be logged, at the logging page size.
    pub fn logging_report(
        &self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u8],
    ) -> DeviceResult<()> {
        let g = self.inner.read().unwrap();
        let log = g
            .log
            .as_ref()
            .ok_or_else(|| DeviceError::inval("DMA logging report while logging is off"))?;
        if page_size != log.page_size {
            return Err(DeviceError::inval(format!(
                "report page size {page_size} differs from the logging page size {}",
                log.page_size
            )));
        }
        if length == 0 || !iova.is_multiple_of(page_size) {
            return Err(DeviceError::inval(format!(
                "report range {iova:#x}+{length:#x} is empty or not page-aligned"
            )));
        }
        let end = end_of(iova, length)?;
        let pages = length.div_ceil(page_size);
        let need = pages.div_ceil(64) * 8;
        if (bitmap.len() as u64) < need {
            return Err(DeviceError::inval(format!(
                "report bitmap has {} bytes, {need} needed",
                bitmap.len()
            )));
        }
        // Every page must lie in a logged range (ranges are sorted and
        // disjoint).
        let find = |at: u64| {
            let i = log.ranges.partition_point(|r| r.iova <= at);
            i.checked_sub(1)
                .map(|i| &log.ranges[i])
                .filter(|r| at < r.iova + r.length)
                .ok_or_else(|| {
                    DeviceError::inval(format!(
                        "report range {iova:#x}+{length:#x} includes {at:#x}, which is not logged"
                    ))
                })
        };
        let mut at = iova;
        while at < end {
            at = find(at).map(|r| r.iova + r.length)?;
        }
        bitmap[..need as usize].fill(0);
        let mut at = iova;
        while at < end {
            let r = find(at)?;
            let stop = end.min(r.iova + r.length);
            // Both `at` and `r.iova` are page-aligned, so report page p and
            // range page rp cover the same bytes.
            let mut rp = (at - r.iova) / page_size;
            let mut p = (at - iova) / page_size;
            while r.iova + rp * page_size < stop {
                let word = &r.bits[(rp / 64) as usize];
                let mask = 1u64 << (rp % 64);
                // AcqRel: pairs with the Release of the marking DMA write.
                if word.load(Ordering::Relaxed) & mask != 0
                    && word.fetch_and(!mask, Ordering::AcqRel) & mask != 0
                {
                    bitmap[(p / 8) as usize] |= 1 << (p % 8);
                }
                rp += 1;
                p += 1;
            }
            at = r.iova + rp * page_size;
        }
        Ok(())
    }
}
