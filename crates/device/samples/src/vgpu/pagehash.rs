//! Incremental digests of device memory: a hash per page, kept as pages
//! are saved (the bytes just copied into the stream) and loaded (the bytes
//! just written), so reading the DIGEST register after a migration hashes
//! only the pages that changed since they were last saved or loaded, not
//! all of device memory.
//!
//! The memory part of the digest is the wrapping sum over pages of
//! [`page_term`] — the page's CRC32C (the CPU's CRC instruction: cheap
//! next to the copy that saves or loads the page) mixed with its index —
//! so it does not depend on which pages came from the cache and which were
//! hashed now: [`full_memory_digest`] (every page hashed from memory, the
//! DIGEST_FULL register) gives the same value whenever the cache is right.
//! A changed page goes unnoticed with probability 2^-32 (a CRC32C
//! collision), as in the engine's guest-RAM hash.
//!
//! A cached term is used only while its page is known and **not dirty**:
//! the save stream takes a page's dirty bit before copying it and the
//! engines mark after writing (see [`vfio_migrate_device::dirty`]), so any
//! write after the copy leaves the page dirty and its term unused. Whoever
//! clears dirty bits without hashing the pages (a new save stream, a reset,
//! a new load) forgets the cache first. Writes through a client's mmap of
//! BAR2 are not tracked (as for migration itself); DIGEST_FULL sees them.

use crate::hash::mix64;
use crate::mem::SharedMemory;
use std::sync::{Mutex, OnceLock};
use vfio_migrate_device::dirty::DirtyBitmap;

use super::engines::PAGE;

/// Seed of every page term (the vgpu ID, so other devices' digests differ).
const SEED: u64 = super::regs::ID_VALUE;

/// The digest term of page `page` whose bytes have CRC32C `crc`.
pub fn term_of_crc(page: u64, crc: u32) -> u64 {
    mix64(SEED ^ mix64(page.wrapping_add(1)) ^ u64::from(crc))
}

/// CRC32C of `a ‖ page` from `crc` = CRC32C(a) and `page_crc` = CRC32C of
/// one page: what the save stream's record CRC needs, without reading the
/// page a second time (CRC32C(a ‖ b) = S(CRC32C(a)) ⊕ CRC32C(b), with S
/// the linear operator "append one page of zeros", applied here byte by
/// byte from tables).
pub fn append_page_crc(crc: u32, page_crc: u32) -> u32 {
    static TABLES: OnceLock<[[u32; 256]; 4]> = OnceLock::new();
    let t = TABLES.get_or_init(|| {
        let mut t = [[0u32; 256]; 4];
        for (k, table) in t.iter_mut().enumerate() {
            for (b, v) in table.iter_mut().enumerate() {
                *v = vfio_migrate_abi::crc::shift((b as u32) << (8 * k), PAGE as usize);
            }
        }
        t
    });
    let shifted = t[0][(crc & 0xff) as usize]
        ^ t[1][((crc >> 8) & 0xff) as usize]
        ^ t[2][((crc >> 16) & 0xff) as usize]
        ^ t[3][(crc >> 24) as usize];
    shifted ^ page_crc
}

/// The digest term of page `page` holding `data` (one page).
pub fn page_term(page: u64, data: &[u8]) -> u64 {
    term_of_crc(page, crc32c::crc32c(data))
}

#[derive(Debug)]
struct Cache {
    terms: Vec<u64>,
    /// One bit per page: `terms` holds the page's term as last saved or
    /// loaded.
    known: Vec<u64>,
    /// Pages known, and the (wrapping) sum of their terms: once every page
    /// is known, a digest only visits the dirty bitmap.
    known_pages: u64,
    sum: u64,
}

/// The per-page terms of one device memory.
#[derive(Debug)]
pub struct PageHashes {
    pages: u64,
    cache: Mutex<Cache>,
}

impl PageHashes {
    /// An empty cache for `pages` pages.
    pub fn new(pages: u64) -> Self {
        Self {
            pages,
            cache: Mutex::new(Cache {
                terms: vec![0; pages as usize],
                known: vec![0; pages.div_ceil(64) as usize],
                known_pages: 0,
                sum: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every term (the dirty bits are about to be cleared without
    /// the pages being hashed).
    pub fn forget_all(&self) {
        let mut c = self.lock();
        c.known.fill(0);
        c.known_pages = 0;
        c.sum = 0;
    }

    /// Records the terms of pages just saved or loaded.
    pub fn set(&self, entries: &[(u64, u64)]) {
        let mut c = self.lock();
        for &(p, t) in entries {
            if p < self.pages {
                let (w, b) = ((p / 64) as usize, 1u64 << (p % 64));
                if c.known[w] & b != 0 {
                    c.sum = c.sum.wrapping_sub(c.terms[p as usize]);
                } else {
                    c.known[w] |= b;
                    c.known_pages += 1;
                }
                c.terms[p as usize] = t;
                c.sum = c.sum.wrapping_add(t);
            }
        }
    }

    /// The memory part of the digest: cached terms of known, clean pages,
    /// the others hashed from `mem` now. Returns `(sum, pages hashed now)`.
    pub fn memory_digest(&self, mem: &SharedMemory, dirty: &DirtyBitmap) -> (u64, u64) {
        let c = self.lock();
        let mut page = vec![0u8; PAGE as usize];
        if c.known_pages == self.pages {
            // Every page known: only dirty pages change the kept sum, and
            // finding them costs one word per 64 pages.
            let mut sum = c.sum;
            let mut hashed = 0u64;
            for w in 0..c.known.len() {
                let mut d = dirty.word(w);
                while d != 0 {
                    let p = w as u64 * 64 + u64::from(d.trailing_zeros());
                    d &= d - 1;
                    if p >= self.pages {
                        break;
                    }
                    mem.read(p * PAGE, &mut page).expect("page inside memory");
                    sum = sum
                        .wrapping_sub(c.terms[p as usize])
                        .wrapping_add(page_term(p, &page));
                    hashed += 1;
                }
            }
            return (sum, hashed);
        }
        let mut sum = 0u64;
        let mut hashed = 0u64;
        for (w, &known) in c.known.iter().enumerate() {
            let base = w as u64 * 64;
            let n = (self.pages - base).min(64);
            let all = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            let good = known & !dirty.word(w) & all;
            let mut stale = all & !good;
            let mut g = good;
            while g != 0 {
                let b = g.trailing_zeros() as u64;
                g &= g - 1;
                sum = sum.wrapping_add(c.terms[(base + b) as usize]);
            }
            while stale != 0 {
                let b = stale.trailing_zeros() as u64;
                stale &= stale - 1;
                let p = base + b;
                mem.read(p * PAGE, &mut page).expect("page inside memory");
                sum = sum.wrapping_add(page_term(p, &page));
                hashed += 1;
            }
        }
        (sum, hashed)
    }
}

/// The memory part of the digest with every page hashed from memory (in
/// fixed shards, on two threads: the result does not depend on that).
pub fn full_memory_digest(mem: &SharedMemory) -> u64 {
    let pages = mem.len() / PAGE;
    let half = pages / 2;
    let sum_range = |from: u64, to: u64| -> u64 {
        let mut chunk = vec![0u8; 64 * PAGE as usize];
        let mut sum = 0u64;
        let mut p = from;
        while p < to {
            let n = (to - p).min(64);
            let b = &mut chunk[..(n * PAGE) as usize];
            mem.read(p * PAGE, b).expect("pages inside memory");
            for (i, page) in b.chunks_exact(PAGE as usize).enumerate() {
                sum = sum.wrapping_add(page_term(p + i as u64, page));
            }
            p += n;
        }
        sum
    };
    std::thread::scope(|s| {
        let back = s.spawn(|| sum_range(half, pages));
        let front = sum_range(0, half);
        front.wrapping_add(back.join().expect("digest thread"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_crcs_append_like_one_pass() {
        let mut rec = vec![0u8; 3 * (4 + PAGE as usize)];
        crate::hash::fill_pseudo_random(3, &mut rec);
        let head = b"record header";
        let mut crc = crc32c::crc32c(head);
        for e in rec.chunks_exact(4 + PAGE as usize) {
            crc = crc32c::crc32c_append(crc, &e[..4]);
            crc = append_page_crc(crc, crc32c::crc32c(&e[4..]));
        }
        assert_eq!(crc, crc32c::crc32c_append(crc32c::crc32c(head), &rec));
    }

    #[test]
    fn cached_digest_equals_full_rehash() {
        let mem = SharedMemory::new("t", 64 * 3 * PAGE).unwrap();
        let dirty = DirtyBitmap::new(mem.len(), PAGE).unwrap();
        let pages = mem.len() / PAGE;
        let h = PageHashes::new(pages);
        // Nothing known: everything is hashed now.
        assert_eq!(
            h.memory_digest(&mem, &dirty),
            (full_memory_digest(&mem), pages)
        );
        let mut buf = vec![0u8; PAGE as usize];
        let mut entries = Vec::new();
        for p in 0..pages {
            buf.fill(p as u8);
            mem.write(p * PAGE, &buf).unwrap();
            entries.push((p, page_term(p, &buf)));
        }
        h.set(&entries);
        assert_eq!(h.memory_digest(&mem, &dirty), (full_memory_digest(&mem), 0));
        // A page saved again replaces its term in the kept sum.
        buf.fill(0xee);
        mem.write(3 * PAGE, &buf).unwrap();
        h.set(&[(3, page_term(3, &buf))]);
        assert_eq!(h.memory_digest(&mem, &dirty), (full_memory_digest(&mem), 0));
        // A write marked dirty is hashed again; an untracked write is not
        // seen by the cache but is by the full re-hash.
        mem.write(5 * PAGE, &[7u8; 16]).unwrap();
        dirty.mark_page(5).unwrap();
        assert_eq!(h.memory_digest(&mem, &dirty), (full_memory_digest(&mem), 1));
        mem.write(9 * PAGE, &[7u8; 16]).unwrap();
        assert_ne!(h.memory_digest(&mem, &dirty).0, full_memory_digest(&mem));
        h.forget_all();
        assert_eq!(
            h.memory_digest(&mem, &dirty),
            (full_memory_digest(&mem), pages)
        );
        // Same bytes at another page give another term.
        assert_ne!(page_term(1, &buf), page_term(2, &buf));
    }
}
