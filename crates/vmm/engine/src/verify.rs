//! Proving nothing was lost: the device-digest hook the caller supplies
//! ([`Verifier`]) and the guest-RAM hash ([`ram_hash`], [`RamHash`]).
//!
//! The RAM hash is an XOR over pages of a 64-bit mix of (page number,
//! CRC32C of the page), so the destination can keep it up to date page by
//! page as pages arrive — no full pass over RAM while the guest is stopped —
//! and the source computes it once over its frozen RAM after the
//! destination runs.

use crate::guest::GuestRam;
use std::sync::Arc;
use vfio_migrate_backend::{BackendError, DeviceDescriptor, MigrationDevice};

/// Reads a digest of a stopped device's complete state, or `None` when the
/// caller does not know how for this device. Called on the source while it
/// is in STOP_COPY and on the destination after RESUMING → STOP.
pub type Verifier = Arc<
    dyn Fn(&DeviceDescriptor, &mut dyn MigrationDevice) -> Option<Result<u64, BackendError>>
        + Send
        + Sync,
>;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash term of page `page` holding `data`.
pub fn page_term(page: u64, data: &[u8]) -> u64 {
    term_of_crc(page, crc32c::crc32c(data))
}

/// The hash term of page `page` whose data has CRC32C `crc`.
pub fn term_of_crc(page: u64, crc: u32) -> u64 {
    mix(page.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(crc) ^ (1 << 63))
}

/// CRC32C of a zero page of `page_size` bytes.
pub fn zero_page_crc(page_size: u64) -> u32 {
    let z = [0u8; 4096];
    let mut c = 0;
    let mut left = page_size;
    while left > 0 {
        let n = left.min(4096);
        c = crc32c::crc32c_append(c, &z[..n as usize]);
        left -= n;
    }
    c
}

/// A RAM hash kept up to date as pages are replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RamHash(pub u64);

impl RamHash {
    /// Page `page` changed from `old` to `new`.
    pub fn replace(&mut self, page: u64, old: &[u8], new: &[u8]) {
        self.0 ^= page_term(page, old) ^ page_term(page, new);
    }

    /// Page `page` changed from `old` to zero (`zero_crc` from
    /// [`zero_page_crc`]).
    pub fn replace_with_zero(&mut self, page: u64, old: &[u8], zero_crc: u32) {
        self.0 ^= page_term(page, old) ^ term_of_crc(page, zero_crc);
    }
}

/// Hashes all of `ram`, 1 MiB at a time; known-zero pages (holes) are
/// hashed without being read.
pub fn ram_hash(ram: &dyn GuestRam) -> std::io::Result<RamHash> {
    let ps = ram.page_size();
    let per = ((1 << 20) / ps).max(1);
    let zero_crc = zero_page_crc(ps);
    let mut buf = vec![0u8; (per * ps) as usize];
    let mut h = 0u64;
    let mut p = 0u64;
    while p < ram.pages() {
        let zeros = ram.zero_pages_at(p).min(ram.pages() - p);
        if zeros > 0 {
            for z in p..p + zeros {
                h ^= term_of_crc(z, zero_crc);
            }
            p += zeros;
            continue;
        }
        let n = per.min(ram.pages() - p).min(ram.data_pages_at(p).max(1));
        let b = &mut buf[..(n * ps) as usize];
        ram.read_pages(p, b)?;
        for (i, page) in b.chunks_exact(ps as usize).enumerate() {
            h ^= page_term(p + i as u64, page);
        }
        p += n;
    }
    Ok(RamHash(h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::MemfdRam;

    #[test]
    fn incremental_hash_matches_full_hash() {
        let ram = MemfdRam::new("t", 64 << 10).unwrap();
        let mut h = ram_hash(&ram).unwrap();
        let mut old = vec![0u8; 4096];
        for (p, v) in [(3u64, 1u8), (7, 2), (3, 9)] {
            ram.read_pages(p, &mut old).unwrap();
            let new = vec![v; 4096];
            ram.write_pages(p, &new).unwrap();
            h.replace(p, &old, &new);
        }
        assert_eq!(h, ram_hash(&ram).unwrap());
        // Holes hash like zero pages that were written.
        let written = MemfdRam::new("w", 64 << 10).unwrap();
        written.write_pages(0, &vec![0u8; 64 << 10]).unwrap();
        assert_eq!(written.zero_pages_at(0), 0);
        assert_eq!(
            ram_hash(&written).unwrap(),
            ram_hash(&MemfdRam::new("z", 64 << 10).unwrap()).unwrap()
        );
        let mut z = h;
        ram.read_pages(7, &mut old).unwrap();
        z.replace_with_zero(7, &old, zero_page_crc(4096));
        ram.write_pages(7, &[0u8; 4096]).unwrap();
        assert_eq!(z, ram_hash(&ram).unwrap());
        // Same content at another page gives another hash.
        let other = MemfdRam::new("u", 64 << 10).unwrap();
        other.write_pages(4, &[9u8; 4096]).unwrap();
        other.write_pages(7, &[2u8; 4096]).unwrap();
        assert_ne!(ram_hash(&other).unwrap(), h);
    }
}
