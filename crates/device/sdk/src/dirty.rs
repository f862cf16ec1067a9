//! Dirty-page tracking of a device's **own** memory (framebuffers, device
//! RAM): an atomic bitmap with one bit per page.
//!
//! Writers (the device's engine threads) call [`DirtyBitmap::mark`] and
//! readers (the save stream) take bits with [`DirtyBitmap::take_next`] or
//! [`DirtyBitmap::drain`], which clear each bit atomically as they return it.
//!
//! # Ordering rule
//!
//! A writer must **write the memory first and mark afterwards**; the save
//! stream must **take the bit first and copy afterwards**. Then no write is
//! ever lost between a scan and a copy:
//!
//! - the mark lands before the take: the copy that follows the take sees
//!   the written data (the mark is a release, the take an acquire);
//! - the mark lands after the take: the bit is set again and the page is
//!   sent once more in a later pass, whatever the copy saw.
//!
//! (Marking *before* writing would lose a write that lands between the
//! take and the copy.)

use crate::error::{DeviceError, DeviceResult};
use std::sync::atomic::{AtomicU64, Ordering};

/// An atomic dirty bitmap over `len` bytes of memory at `page_size`
/// granularity.
#[derive(Debug)]
pub struct DirtyBitmap {
    page_size: u64,
    len: u64,
    pages: u64,
    words: Box<[AtomicU64]>,
}

impl DirtyBitmap {
    /// A clean bitmap for `len` bytes of memory. `page_size` must be a power
    /// of two; `len` must be a non-zero multiple of it.
    pub fn new(len: u64, page_size: u64) -> DeviceResult<Self> {
        if !page_size.is_power_of_two() {
            return Err(DeviceError::inval(format!(
                "dirty bitmap page size {page_size} is not a power of two"
            )));
        }
        if len == 0 || !len.is_multiple_of(page_size) {
            return Err(DeviceError::inval(format!(
                "dirty bitmap over {len} bytes: must be a non-zero multiple of the page size {page_size}"
            )));
        }
        let pages = len / page_size;
        let nwords = usize::try_from(pages.div_ceil(64)).map_err(|_| {
            DeviceError::inval(format!("dirty bitmap over {len} bytes is too large"))
        })?;
        Ok(Self {
            page_size,
            len,
            pages,
            words: (0..nwords).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Page size in bytes.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Number of pages tracked.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Bytes of memory tracked.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: a bitmap tracks at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn set_bits(&self, first: u64, last: u64) {
        let mut p = first;
        while p <= last {
            let w = (p / 64) as usize;
            let lo = p % 64;
            let hi = (last - (p - lo)).min(63);
            let mask = if hi - lo == 63 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo + 1)) - 1) << lo
            };
            self.words[w].fetch_or(mask, Ordering::Release);
            p = p - lo + 64;
        }
    }

    /// Marks every page that `[offset, offset+len)` touches. A range outside
    /// the memory is refused (EINVAL) and marks nothing; `len == 0` marks
    /// nothing.
    pub fn mark(&self, offset: u64, len: u64) -> DeviceResult<()> {
        if len == 0 {
            return Ok(());
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {
                self.set_bits(offset / self.page_size, (end - 1) / self.page_size);
                Ok(())
            }
            _ => Err(DeviceError::inval(format!(
                "dirty mark {offset:#x}+{len:#x} is outside the {:#x} bytes tracked",
                self.len
            ))),
        }
    }

    /// Marks page `page` (EINVAL past the end).
    pub fn mark_page(&self, page: u64) -> DeviceResult<()> {
        self.check_page(page)?;
        self.set_bits(page, page);
        Ok(())
    }

    /// Marks every page.
    pub fn mark_all(&self) {
        self.set_bits(0, self.pages - 1);
    }

    /// Clears every page.
    pub fn clear_all(&self) {
        for w in self.words.iter() {
            w.store(0, Ordering::Release);
        }
    }

    fn check_page(&self, page: u64) -> DeviceResult<()> {
        if page < self.pages {
            Ok(())
        } else {
            Err(DeviceError::inval(format!(
                "page {page} is outside the {} pages tracked",
                self.pages
            )))
        }
    }

    /// True when `page` is dirty (false past the end).
    pub fn is_dirty(&self, page: u64) -> bool {
        page < self.pages
            && self.words[(page / 64) as usize].load(Ordering::Acquire) & (1 << (page % 64)) != 0
    }

    /// Clears `page` and says whether it was dirty (false past the end).
    pub fn take(&self, page: u64) -> bool {
        if page >= self.pages {
            return false;
        }
        let mask = 1u64 << (page % 64);
        let w = &self.words[(page / 64) as usize];
        // Skip the read-modify-write when the bit is clear (the common case
        // in a scan).
        w.load(Ordering::Relaxed) & mask != 0 && w.fetch_and(!mask, Ordering::AcqRel) & mask != 0
    }

    /// Finds the first dirty page at or after `from`, clears it and returns
    /// it; `None` when no page from `from` on is dirty.
    pub fn take_next(&self, from: u64) -> Option<u64> {
        let mut p = from;
        while p < self.pages {
            let wi = (p / 64) as usize;
            let w = &self.words[wi];
            let bits = w.load(Ordering::Relaxed) & (u64::MAX << (p % 64));
            if bits == 0 {
                p = (p | 63) + 1;
                continue;
            }
            let bit = bits.trailing_zeros() as u64;
            let page = wi as u64 * 64 + bit;
            if page >= self.pages {
                return None;
            }
            let mask = 1u64 << bit;
            if w.fetch_and(!mask, Ordering::AcqRel) & mask != 0 {
                return Some(page);
            }
            // Another taker won this bit; look further.
            p = page + 1;
        }
        None
    }

    /// Like [`take_next`](Self::take_next) but wraps around to page 0 once,
    /// so repeated calls with the returned page + 1 visit pages round-robin.
    pub fn take_next_wrapping(&self, from: u64) -> Option<u64> {
        let from = if from >= self.pages { 0 } else { from };
        self.take_next(from)
            .or_else(|| if from == 0 { None } else { self.take_next(0) })
    }

    /// The dirty bits of pages `64 * w .. 64 * w + 64` (bit n = page
    /// `64 * w + n`; 0 past the end). Reading does not clear them.
    pub fn word(&self, w: usize) -> u64 {
        self.words.get(w).map_or(0, |x| x.load(Ordering::Acquire))
    }

    /// Number of dirty pages.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
            .sum()
    }

    /// Number of dirty pages in `[start, end)` (page indices, clamped to the
    /// pages tracked).
    pub fn count_range(&self, start: u64, end: u64) -> u64 {
        let end = end.min(self.pages);
        if start >= end {
            return 0;
        }
        let mut n = 0u64;
        let mut p = start;
        while p < end {
            let wi = (p / 64) as usize;
            let lo = p % 64;
            let hi = (end - (p - lo)).min(64);
            let mut bits = self.words[wi].load(Ordering::Relaxed) >> lo;
            let width = hi - lo;
            if width < 64 {
                bits &= (1u64 << width) - 1;
            }
            n += bits.count_ones() as u64;
            p = p - lo + 64;
        }
        n
    }

    /// Takes and clears every dirty page, in ascending order, a 64-page
    /// word at a time. Pages marked while the iterator runs are returned
    /// when their word has not been reached yet, and otherwise stay dirty.
    pub fn drain(&self) -> Drain<'_> {
        Drain {
            map: self,
            word: 0,
            bits: 0,
        }
    }
}

/// Iterator returned by [`DirtyBitmap::drain`].
#[derive(Debug)]
pub struct Drain<'a> {
    map: &'a DirtyBitmap,
    word: usize,
    bits: u64,
}

impl Iterator for Drain<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        loop {
            if self.bits != 0 {
                let b = self.bits.trailing_zeros() as u64;
                self.bits &= self.bits - 1;
                return Some((self.word as u64 - 1) * 64 + b);
            }
            let w = self.map.words.get(self.word)?;
            self.word += 1;
            if w.load(Ordering::Relaxed) != 0 {
                self.bits = w.swap(0, Ordering::AcqRel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_geometry() {
        assert!(DirtyBitmap::new(4096, 3000).is_err());
        assert!(DirtyBitmap::new(0, 4096).is_err());
        let e = DirtyBitmap::new(5000, 4096).unwrap_err();
        assert!(e.message.contains("multiple of the page size 4096"), "{e}");
    }

    #[test]
    fn mark_covers_touched_pages_only() {
        let m = DirtyBitmap::new(64 * 4096 * 3, 4096).unwrap();
        m.mark(4095, 2).unwrap(); // pages 0 and 1
        m.mark(10 * 4096, 4096).unwrap(); // page 10 only
        m.mark(60 * 4096, 10 * 4096).unwrap(); // pages 60..=69, across a word
        let got: Vec<u64> = m.drain().collect();
        let mut want = vec![0, 1, 10];
        want.extend(60..70);
        assert_eq!(got, want);
        assert_eq!(m.count(), 0);
    }

    #[test]
    fn mark_out_of_range_is_refused_and_marks_nothing() {
        let m = DirtyBitmap::new(8 * 4096, 4096).unwrap();
        let e = m.mark(7 * 4096, 4097).unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
        assert!(e.message.contains("outside"), "{e}");
        assert!(m.mark(u64::MAX, 2).is_err());
        assert!(m.mark_page(8).is_err());
        assert_eq!(m.count(), 0);
        m.mark(0, 0).unwrap();
        assert_eq!(m.count(), 0);
    }

    #[test]
    fn mark_all_respects_page_count() {
        let m = DirtyBitmap::new(100 * 4096, 4096).unwrap();
        m.mark_all();
        assert_eq!(m.count(), 100);
        assert_eq!(m.drain().count(), 100);
        m.mark_all();
        m.clear_all();
        assert_eq!(m.count(), 0);
    }

    #[test]
    fn take_and_take_next_clear() {
        let m = DirtyBitmap::new(200 * 4096, 4096).unwrap();
        for p in [3, 64, 65, 199] {
            m.mark_page(p).unwrap();
        }
        assert!(m.is_dirty(64));
        assert!(m.take(64));
        assert!(!m.take(64));
        assert!(!m.is_dirty(64));
        assert_eq!(m.take_next(4), Some(65));
        assert_eq!(m.take_next(66), Some(199));
        assert_eq!(m.take_next(0), Some(3));
        assert_eq!(m.take_next(0), None);
        assert!(!m.take(1000));
    }

    #[test]
    fn take_next_wrapping_round_robin() {
        let m = DirtyBitmap::new(10 * 4096, 4096).unwrap();
        m.mark_page(2).unwrap();
        m.mark_page(8).unwrap();
        assert_eq!(m.take_next_wrapping(5), Some(8));
        assert_eq!(m.take_next_wrapping(9), Some(2));
        assert_eq!(m.take_next_wrapping(3), None);
        m.mark_page(0).unwrap();
        assert_eq!(m.take_next_wrapping(10), Some(0));
    }

    #[test]
    fn count_range_matches_naive() {
        let m = DirtyBitmap::new(300 * 4096, 4096).unwrap();
        let mut x = 12345u64;
        let mut dirty = vec![false; 300];
        for _ in 0..120 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let p = (x >> 33) % 300;
            m.mark_page(p).unwrap();
            dirty[p as usize] = true;
        }
        for (s, e) in [
            (0, 300),
            (0, 1),
            (5, 70),
            (63, 64),
            (64, 128),
            (100, 299),
            (250, 400),
            (7, 7),
        ] {
            let want = (s..e.min(300)).filter(|&p| dirty[p as usize]).count() as u64;
            assert_eq!(m.count_range(s, e), want, "{s}..{e}");
        }
        assert_eq!(m.count(), dirty.iter().filter(|d| **d).count() as u64);
    }

    #[test]
    fn concurrent_marks_are_never_lost() {
        use std::sync::Arc;
        let m = Arc::new(DirtyBitmap::new(4096 * 4096, 4096).unwrap());
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for p in (t..4096u64).step_by(2) {
                        m.mark_page(p).unwrap();
                    }
                })
            })
            .collect();
        let mut seen = vec![false; 4096];
        let mut taken = 0;
        while taken < 4096 {
            for p in m.drain() {
                assert!(!seen[p as usize], "page {p} taken twice");
                seen[p as usize] = true;
                taken += 1;
            }
        }
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(m.count(), 0);
    }
}
