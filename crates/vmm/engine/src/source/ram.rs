//! Guest RAM on the source: the set of pages still to send (one bit per
//! page), refreshed from the vCPU dirty log and every device's DMA dirty
//! log, and walked round-robin into page runs — never-written memory as
//! zero runs, unread.

use super::{Source, RAM_RUN_BYTES};
use crate::error::EngineError;
use crate::format::{Kind, RamRun, NO_DEVICE};
use crate::guest::GuestRam;
use crate::verify::{term_of_crc, zero_page_crc};
use vfio_migrate_backend::MigrationDevice;

/// The pages of guest RAM still to send, and where the walk is.
pub(super) struct RamWalk<'a> {
    guest: &'a dyn GuestRam,
    /// One bit per page: still to send.
    pending: Vec<u64>,
    /// One device's DMA report, as bytes.
    dma_scratch: Vec<u8>,
    /// Next page to look at (round-robin with device data).
    cursor: u64,
    /// Page data of one run.
    buf: Vec<u8>,
    /// The RAM hash ([`crate::verify`]) kept as pages are sent: each
    /// page's CRC32C as last sent, which pages were sent, and the XOR of
    /// their terms — so at the end nothing needs hashing again.
    crcs: Vec<u32>,
    sent: Vec<u64>,
    sent_pages: u64,
    hash: u64,
    zero_crc: u32,
}

impl<'a> RamWalk<'a> {
    pub fn new(guest: &'a dyn GuestRam) -> Self {
        let words = guest.pages().div_ceil(64) as usize;
        Self {
            guest,
            pending: vec![0; words],
            dma_scratch: vec![0u8; words * 8],
            cursor: 0,
            buf: vec![0u8; RAM_RUN_BYTES.max(guest.page_size()) as usize],
            crcs: vec![0; guest.pages() as usize],
            sent: vec![0; words],
            sent_pages: 0,
            hash: 0,
            zero_crc: zero_page_crc(guest.page_size()),
        }
    }

    /// Page `page` was sent holding data of CRC32C `crc`.
    fn note_sent(&mut self, page: u64, crc: u32) {
        let (w, b) = ((page / 64) as usize, 1u64 << (page % 64));
        if self.sent[w] & b != 0 {
            self.hash ^= term_of_crc(page, self.crcs[page as usize]);
        } else {
            self.sent[w] |= b;
            self.sent_pages += 1;
        }
        self.crcs[page as usize] = crc;
        self.hash ^= term_of_crc(page, crc);
    }

    /// The RAM hash of what was sent, once every page was sent.
    pub fn hash(&self) -> Option<u64> {
        (self.sent_pages == self.guest.pages()).then_some(self.hash)
    }

    /// Every page must go at least once; the vCPU log restarts now.
    pub fn mark_all(&mut self) {
        let mut scratch = vec![0u64; self.pending.len()];
        self.guest.take_dirty(&mut scratch);
        self.pending.fill(u64::MAX);
        let extra = (self.pending.len() as u64 * 64) - self.guest.pages();
        if extra > 0 {
            let last = self.pending.len() - 1;
            self.pending[last] >>= extra;
        }
    }

    /// Pages still to send.
    pub fn pending_pages(&self) -> u64 {
        self.pending.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Page size.
    pub fn page_size(&self) -> u64 {
        self.guest.page_size()
    }
}

impl<D: MigrationDevice> Source<'_, D> {
    /// Merges the vCPU dirty log and every logging device's DMA dirty
    /// report into the pending set.
    pub(super) fn sync_dirty(&mut self) -> Result<(), EngineError> {
        let Some(ram) = self.ram.as_mut() else {
            return Ok(());
        };
        let g = ram.guest;
        g.take_dirty(&mut ram.pending);
        let range = g.dma_range();
        for d in self.devs.iter_mut().filter(|d| d.logging) {
            let Some(log) = d.h.dma_log() else {
                return Err(EngineError::NoDmaLogging {
                    phase: self.phase,
                    device: d.name.clone(),
                });
            };
            log.dma_logging_report(
                range.iova,
                range.length,
                g.page_size(),
                &mut ram.dma_scratch,
            )
            .map_err(|e| EngineError::device(self.phase, d.name.clone(), e))?;
            for (w, b) in ram.pending.iter_mut().zip(ram.dma_scratch.chunks_exact(8)) {
                *w |= u64::from_le_bytes(b.try_into().expect("8 bytes"));
            }
        }
        Ok(())
    }

    /// Sends dirty pages from the cursor on, up to about `budget` bytes.
    /// Returns the stream bytes written (0: nothing was pending).
    pub(super) fn send_ram(&mut self, budget: u64) -> Result<u64, EngineError> {
        let Some(mut ram) = self.ram.take() else {
            return Ok(0);
        };
        let r = self.send_ram_from(&mut ram, budget);
        self.ram = Some(ram);
        r
    }

    fn send_ram_from(&mut self, ram: &mut RamWalk<'_>, budget: u64) -> Result<u64, EngineError> {
        let g = ram.guest;
        let ps = g.page_size();
        let pages = g.pages();
        let max_run = (RAM_RUN_BYTES / ps).max(1);
        let mut sent = 0u64;
        let mut p = ram.cursor;
        while sent < budget {
            self.check_cancel()?;
            self.poll_replies()?;
            // Next dirty page at or after p.
            let Some(first) = next_set(&ram.pending, p, pages) else {
                p = pages;
                break;
            };
            // Never-written memory goes as a zero run, unread.
            let zeros = g.zero_pages_at(first);
            let cap = if zeros > 0 {
                zeros.min(u64::from(u32::MAX))
            } else {
                max_run.min(g.data_pages_at(first).max(1))
            };
            let mut n = 0u64;
            while n < cap && first + n < pages && bit(&ram.pending, first + n) {
                clear(&mut ram.pending, first + n);
                n += 1;
            }
            let bytes = (n * ps) as usize;
            let run = RamRun {
                first_page: first,
                count: n as u32,
                reserved: 0,
            };
            let zero = zeros > 0 || {
                g.read_pages(first, &mut ram.buf[..bytes])
                    .map_err(|e| self.guest_err(e))?;
                is_zero(&ram.buf[..bytes])
            };
            if zero {
                let z = ram.zero_crc;
                for page in first..first + n {
                    ram.note_sent(page, z);
                }
            } else {
                let buf = std::mem::take(&mut ram.buf);
                for (k, data) in buf[..bytes].chunks_exact(ps as usize).enumerate() {
                    ram.note_sent(first + k as u64, crc32c::crc32c(data));
                }
                ram.buf = buf;
            }
            if zero {
                self.write(Kind::RamZero, NO_DEVICE, &[&run.to_bytes()])?;
                self.metrics.ram_zero_pages += n;
                sent += 32;
            } else {
                self.write(
                    Kind::RamPages,
                    NO_DEVICE,
                    &[&run.to_bytes(), &ram.buf[..bytes]],
                )?;
                sent += 32 + bytes as u64;
                if self.guest_paused {
                    self.metrics.ram_bytes_stopped += bytes as u64;
                }
                self.metrics.ram_bytes += bytes as u64;
            }
            p = first + n;
        }
        ram.cursor = if p >= pages { 0 } else { p };
        Ok(sent)
    }
}

/// True when every byte is zero (64-byte blocks OR-ed together: the
/// compiler vectorises it, and it needs no alignment).
fn is_zero(b: &[u8]) -> bool {
    let blocks = b.chunks_exact(64);
    let tail = blocks.remainder();
    blocks
        .into_iter()
        .all(|blk| blk.iter().fold(0u8, |acc, x| acc | x) == 0)
        && tail.iter().all(|x| *x == 0)
}

fn bit(bm: &[u64], p: u64) -> bool {
    bm[(p / 64) as usize] & (1 << (p % 64)) != 0
}

fn clear(bm: &mut [u64], p: u64) {
    bm[(p / 64) as usize] &= !(1 << (p % 64));
}

/// First set bit at or after `from`, below `limit`.
fn next_set(bm: &[u64], from: u64, limit: u64) -> Option<u64> {
    let mut w = (from / 64) as usize;
    if w >= bm.len() {
        return None;
    }
    let mut word = bm[w] & (u64::MAX << (from % 64));
    loop {
        if word != 0 {
            let p = w as u64 * 64 + u64::from(word.trailing_zeros());
            return (p < limit).then_some(p);
        }
        w += 1;
        if w >= bm.len() {
            return None;
        }
        word = bm[w];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_set_finds_bits() {
        let mut bm = vec![0u64; 3];
        assert_eq!(next_set(&bm, 0, 192), None);
        bm[1] = 1 << 5;
        bm[2] = 1;
        assert_eq!(next_set(&bm, 0, 192), Some(69));
        assert_eq!(next_set(&bm, 70, 192), Some(128));
        assert_eq!(next_set(&bm, 70, 100), None);
        clear(&mut bm, 69);
        assert!(!bit(&bm, 69));
        let mut b = vec![0u8; 4099];
        assert!(is_zero(&b[1..]));
        b[4098] = 1;
        assert!(!is_zero(&b[1..]));
        b[4098] = 0;
        b[7] = 1;
        assert!(!is_zero(&b[1..]));
    }
}
